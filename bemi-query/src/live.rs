//! The live rows of a tracked table, as the tracker would have stored them.
//!
//! Time travel needs the rows that never changed since tracking began, which only the table
//! itself holds. Each column is read as text under the output settings the tracker pins on its
//! replication connection and converted with [`text_to_json`], so a live row and a stored row
//! of the same values are the same JSON.

use std::collections::HashSet;

use futures_util::TryStreamExt as _;
use serde_json::value::RawValue;
use tokio_postgres::GenericClient;

use crate::key::LiveTable;
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
pub(super) async fn live_rows<C>(
    client: &C,
    live: &LiveTable,
    key: Option<&str>,
    skip: &HashSet<String>,
    key_of: impl Fn(&RawValue) -> Option<String>,
) -> Result<Vec<(String, Box<RawValue>)>>
where
    C: GenericClient + Sync,
{
    let select: Vec<String> = live
        .writable_columns
        .iter()
        .map(|c| format!("_bemi_cur.{}::text", quote_identifier(c)))
        .collect();
    let mut sql = format!(
        "SELECT {} FROM {} AS _bemi_cur",
        select.join(", "),
        live.qualified()
    );
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
    if let Some(key) = &key {
        let matches: Vec<String> = live
            .key_columns
            .iter()
            .map(|c| {
                let c = quote_identifier(c);
                format!("_bemi_cur.{c} = _bemi_key.{c}")
            })
            .collect();
        sql.push_str(&format!(
            ", jsonb_populate_record(NULL::{}, $1::text::jsonb) AS _bemi_key WHERE {}",
            live.qualified(),
            matches.join(" AND ")
        ));
        params.push(key);
    }
    let saved = pin_output_settings(client).await?;
    let read = async {
        let rows = client.query_raw(sql.as_str(), params).await?;
        futures_util::pin_mut!(rows);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let json = row_json(live, &row)?;
            if let Some(primary_key) = key_of(&json).filter(|k| !skip.contains(k)) {
                out.push((primary_key, json));
            }
        }
        Ok(out)
    };
    let result: Result<Vec<_>> = read.await;
    restore_settings(client, &saved).await?;
    result
}

/// One live row (its writable columns as text) as a JSON object.
fn row_json(live: &LiveTable, row: &tokio_postgres::Row) -> Result<Box<RawValue>> {
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
        match row.try_get::<_, Option<&str>>(i)? {
            None => json.push_str("null"),
            Some(text) if *user_array => user_array_to_json(text, &mut json),
            Some(text) => text_to_json(*type_oid, text, &mut json),
        }
    }
    json.push('}');
    RawValue::from_string(json)
        .map_err(|e| Error::new(ErrorKind::Db, "a live row did not convert to JSON").with_source(e))
}

/// Sets [`OUTPUT_SETTINGS`] for the session and returns the values they replace.
async fn pin_output_settings<C>(client: &C) -> Result<Vec<String>>
where
    C: GenericClient + Sync,
{
    let names: Vec<&str> = OUTPUT_SETTINGS.iter().map(|(name, _)| *name).collect();
    let values: Vec<&str> = OUTPUT_SETTINGS.iter().map(|(_, value)| *value).collect();
    let saved: Vec<String> = client
        .query_one(
            "SELECT array_agg(current_setting(n) ORDER BY i) \
             FROM unnest($1::text[]) WITH ORDINALITY AS s(n, i)",
            &[&names],
        )
        .await?
        .try_get(0)?;
    set_settings(client, &names, &values).await?;
    Ok(saved)
}

async fn restore_settings<C>(client: &C, saved: &[String]) -> Result<()>
where
    C: GenericClient + Sync,
{
    let names: Vec<&str> = OUTPUT_SETTINGS.iter().map(|(name, _)| *name).collect();
    let values: Vec<&str> = saved.iter().map(String::as_str).collect();
    set_settings(client, &names, &values).await
}

async fn set_settings<C>(client: &C, names: &[&str], values: &[&str]) -> Result<()>
where
    C: GenericClient + Sync,
{
    client
        .execute(
            "SELECT set_config(n, v, false) FROM unnest($1::text[], $2::text[]) AS s(n, v)",
            &[&names, &values],
        )
        .await?;
    Ok(())
}
