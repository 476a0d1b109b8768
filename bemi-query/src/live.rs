//! The live rows of a tracked table, as the tracker would have stored them.
//!
//! Time travel needs the rows that never changed since tracking began, which only the table
//! itself holds. Each column is read as text under the output settings the tracker pins on its
//! replication connection and converted with [`text_to_json`], so a live row and a stored row
//! of the same values are the same JSON.
//!
//! The settings are pinned by the same statement that reads the rows (`set_config(…, true)`,
//! local to the transaction), so any connection of a pool can run it: outside a transaction
//! they end with the statement; inside one they last until it ends.

use std::collections::HashSet;

use serde_json::value::RawValue;

use crate::key::LiveTable;
use crate::statement::{Row, Statement};
use crate::Database;
use bemi_core::sql::quote_identifier;
use bemi_core::value::{push_json_string, text_to_json, user_array_to_json};
use bemi_core::{Error, ErrorKind, Result};

/// The session settings the tracker's replication connection pins (`PINNED_OPTIONS` in
/// `replication/connection.rs`: keep both the same), which decide how values print.
const OUTPUT_SETTINGS: [(&str, &str); 5] = [
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("IntervalStyle", "iso_8601"),
    ("bytea_output", "hex"),
];

/// The rows of `live` as JSON objects, in the tracker's form: every row, or with `key` (a JSON
/// object of the key columns, for `jsonb_populate_record`) the one row with that key. Rows whose
/// key text (by `key_of`) is in `skip` are left out.
pub(super) async fn live_rows<D: Database>(
    db: &mut D,
    live: &LiveTable,
    key: Option<&str>,
    skip: &HashSet<String>,
    key_of: impl Fn(&RawValue) -> Option<String>,
) -> Result<Vec<(String, Box<RawValue>)>> {
    let mut statement = Statement::default();
    let settings: serde_json::Map<String, serde_json::Value> = OUTPUT_SETTINGS
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).into()))
        .collect();
    let settings = statement.text(serde_json::Value::Object(settings).to_string());
    // Each value is printed only once the settings are pinned: it depends on their result.
    let values: Vec<String> = live
        .writable_columns
        .iter()
        .map(|c| {
            format!(
                "CASE WHEN _bemi_pin.pinned IS NOT NULL THEN _bemi_cur.{}::text END",
                quote_identifier(c)
            )
        })
        .collect();
    let mut sql = format!(
        "SELECT to_json(ARRAY[{}]::text[])::text AS _bemi_row \
         FROM (SELECT string_agg(set_config(s.key, s.value, true), ',') AS pinned \
               FROM jsonb_each_text({settings}::jsonb) AS s) AS _bemi_pin \
         CROSS JOIN {} AS _bemi_cur",
        values.join(", "),
        live.qualified()
    );
    if let Some(key) = key {
        let matches: Vec<String> = live
            .key_columns
            .iter()
            .map(|c| {
                let c = quote_identifier(c);
                format!("_bemi_cur.{c} = _bemi_key.{c}")
            })
            .collect();
        let key = statement.text(key);
        sql.push_str(&format!(
            " CROSS JOIN jsonb_populate_record(NULL::{}, {key}::jsonb) AS _bemi_key WHERE {}",
            live.qualified(),
            matches.join(" AND ")
        ));
    }
    statement.set_sql(sql);
    let mut out = Vec::new();
    for text in db.rows(&statement).await? {
        let text = text.ok_or_else(|| Error::new(ErrorKind::Protocol, "a live row is null"))?;
        let json = row_json(live, &Row::parse(&text)?)?;
        if let Some(primary_key) = key_of(&json).filter(|k| !skip.contains(k)) {
            out.push((primary_key, json));
        }
    }
    Ok(out)
}

/// One live row (its writable columns as text) as a JSON object.
fn row_json(live: &LiveTable, row: &Row<'_>) -> Result<Box<RawValue>> {
    if row.len() != live.writable_columns.len() {
        return Err(Error::new(
            ErrorKind::Protocol,
            "a live row does not have the table's columns",
        ));
    }
    let mut json = String::from("{");
    for (i, (name, (type_oid, user_array))) in live
        .writable_columns
        .iter()
        .zip(&live.column_types)
        .enumerate()
    {
        if i > 0 {
            json.push(',');
        }
        push_json_string(name, &mut json);
        json.push(':');
        match row.get::<Option<String>>(i)? {
            None => json.push_str("null"),
            Some(text) if *user_array => user_array_to_json(&text, &mut json),
            Some(text) => text_to_json(*type_oid, &text, &mut json),
        }
    }
    json.push('}');
    RawValue::from_string(json)
        .map_err(|e| Error::new(ErrorKind::Db, "a live row did not convert to JSON").with_source(e))
}
