//! Primary keys of tracked tables: the key columns from the live catalog, and a row's key text
//! read out of its JSON, in the form the tracker stores in `primary_key`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::statement::{Row, Statement};
use crate::{Database, TableName};
use bemi_core::sql::quote_qualified;
use bemi_core::Oid;
use bemi_core::{Error, ErrorKind, Result};
use serde_json::value::RawValue;

/// A live table as the catalog describes it.
#[derive(Debug, Clone)]
pub(super) struct LiveTable {
    /// The schema (resolved through the search path when the name had none).
    pub(super) schema: String,
    /// The table name.
    pub(super) name: String,
    /// The primary key columns, in key order.
    pub(super) key_columns: Vec<String>,
    /// The columns an INSERT may set (not dropped, not generated), in table order: the columns
    /// logical replication sends (PostgreSQL 15's pgoutput never sends generated columns).
    pub(super) writable_columns: Vec<String>,
    /// How the tracker converts each of `writable_columns`: its type, and whether that is a
    /// user-defined array type (see [`ColumnInfo::user_array`](bemi_core::ColumnInfo)).
    pub(super) column_types: Vec<(Oid, bool)>,
    /// The `GENERATED ALWAYS AS IDENTITY` columns, which an UPDATE cannot set.
    pub(super) identity_always: Vec<String>,
}

impl LiveTable {
    /// Reads the table from the catalog of the database `client` is connected to; fails when
    /// it does not exist or has no primary key.
    pub(super) async fn load<D: Database>(db: &mut D, table: &TableName) -> Result<LiveTable> {
        let Some(live) = Self::find(db, table).await? else {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "table {table} does not exist in the database; its primary key columns \
                     are needed to tell rows apart (pass them explicitly when the table is gone \
                     or lives in another database)"
                ),
            ));
        };
        if live.key_columns.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "table {}.{} has no primary key, so its rows cannot be told apart; add one \
                     (ALTER TABLE … ADD PRIMARY KEY)",
                    live.schema, live.name
                ),
            ));
        }
        Ok(live)
    }

    /// Reads the table from the catalog of the database `client` is connected to, if it exists.
    pub(super) async fn find<D: Database>(
        db: &mut D,
        table: &TableName,
    ) -> Result<Option<LiveTable>> {
        let mut statement = Statement::default();
        let name = statement.text(quote_qualified(table.schema.as_deref(), &table.name));
        // User-defined array types are those the stream names `_…` in a Type message, which
        // pgoutput sends for types from FirstGenbkiObjectId (10000) on.
        statement.set_sql(format!(
            "SELECT json_build_array(n.nspname::text, c.relname::text, \
                   ARRAY(SELECT a.attname::text FROM pg_index i \
                         CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                         WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord), \
                   ARRAY(SELECT a.attname::text FROM pg_attribute a \
                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                           AND a.attgenerated = '' ORDER BY a.attnum), \
                   ARRAY(SELECT a.attname::text FROM pg_attribute a \
                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                           AND a.attidentity = 'a' ORDER BY a.attnum), \
                   ARRAY(SELECT a.atttypid::int8 FROM pg_attribute a \
                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                           AND a.attgenerated = '' ORDER BY a.attnum), \
                   ARRAY(SELECT a.atttypid >= 10000 AND t.typname LIKE '\\_%' \
                         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                           AND a.attgenerated = '' ORDER BY a.attnum))::text \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = to_regclass({name})"
        ));
        let rows = db.rows(&statement).await?;
        let Some(Some(text)) = rows.first() else {
            return Ok(None);
        };
        let row = Row::parse(text)?;
        let type_oids: Vec<u32> = row.get(5)?;
        let user_arrays: Vec<bool> = row.get(6)?;
        Ok(Some(LiveTable {
            schema: row.get(0)?,
            name: row.get(1)?,
            key_columns: row.get(2)?,
            writable_columns: row.get(3)?,
            identity_always: row.get(4)?,
            column_types: type_oids.into_iter().map(Oid).zip(user_arrays).collect(),
        }))
    }

    /// `"schema"."table"`.
    pub(super) fn qualified(&self) -> String {
        quote_qualified(Some(&self.schema), &self.name)
    }
}

/// The primary key columns of `table`, in key order, from the catalog of the database `client`
/// is connected to (the tracked database). Fails when the table does not exist or has no
/// primary key. Useful with [`TimeTravel::key_columns`](super::TimeTravel::key_columns) when
/// `changes` lives in another database.
pub async fn primary_key_columns<D: Database>(mut db: D, table: &TableName) -> Result<Vec<String>> {
    Ok(LiveTable::load(&mut db, table).await?.key_columns)
}

/// The primary key text of a row given as column → JSON value text, in the tracker's form:
/// the value itself for one column (a string unquoted, anything else as JSON), a compact JSON
/// array for several (`[7,"x"]`). `None` when a key column is missing or the key is null.
pub(super) fn key_of(row: &BTreeMap<String, &RawValue>, key_columns: &[String]) -> Option<String> {
    bemi_core::changes_table::format_key(
        key_columns
            .iter()
            .map(|c| row.get(c).map(|v| Cow::Owned(minify(v.get())))),
    )
}

/// Brings a primary key text given by a user to the form the tracker stores in `primary_key`,
/// for a table whose primary key has `key_columns` columns: a composite key (a JSON array)
/// loses its insignificant whitespace, `["a b", 7]` → `["a b",7]`; a single-column key stays
/// as given.
///
/// ```
/// assert_eq!(bemi_query::canonical_key(r#"["a b", 7]"#, 2), r#"["a b",7]"#);
/// assert_eq!(bemi_query::canonical_key("[a, b]", 1), "[a, b]");
/// ```
pub fn canonical_key(key: &str, key_columns: usize) -> String {
    match key_columns {
        0 | 1 => key.to_owned(),
        _ => minify(key),
    }
}

/// The JSON objects a row with primary key `key` has for its key columns, to find it with
/// `@>`: a single-column key that reads as a JSON number or boolean could be stored as that
/// or as a string, so both are given.
pub(super) fn key_objects(key: &str, key_columns: &[String]) -> Vec<String> {
    let object = |values: &[&str]| {
        let mut text = String::from("{");
        for (i, (column, value)) in key_columns.iter().zip(values).enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&serde_json::Value::from(column.as_str()).to_string());
            text.push(':');
            text.push_str(value);
        }
        text.push('}');
        text
    };
    match key_columns {
        [_] => {
            let quoted = serde_json::Value::from(key).to_string();
            let mut objects = vec![object(&[&quoted])];
            let is_scalar = serde_json::from_str::<&RawValue>(key)
                .is_ok_and(|raw| !raw.get().starts_with(['"', '[', '{']) && raw.get() != "null");
            if is_scalar {
                objects.push(object(&[key]));
            }
            objects
        }
        _ => match serde_json::from_str::<Vec<&RawValue>>(key) {
            Ok(values) if values.len() == key_columns.len() => {
                let values: Vec<&str> = values.iter().map(|v| v.get()).collect();
                vec![object(&values)]
            }
            _ => Vec::new(),
        },
    }
}

/// JSON text without whitespace outside strings.
pub(super) fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Orders key texts naturally: integers by value, anything else as text, component by
/// component for composite keys.
pub(super) fn compare_keys(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |key: &str| -> Vec<String> {
        match serde_json::from_str::<Vec<&RawValue>>(key) {
            Ok(values) if key.starts_with('[') => {
                values.iter().map(|v| v.get().to_owned()).collect()
            }
            _ => vec![key.to_owned()],
        }
    };
    let (a, b) = (parts(a), parts(b));
    for (x, y) in a.iter().zip(&b) {
        let order = compare_part(x, y);
        if order.is_ne() {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

fn compare_part(a: &str, b: &str) -> std::cmp::Ordering {
    fn integer(text: &str) -> Option<(bool, &str)> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(digits) => (true, digits),
            None => (false, text),
        };
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| (negative, digits.trim_start_matches('0')))
    }
    match (integer(a), integer(b)) {
        (Some((an, ad)), Some((bn, bd))) => {
            let magnitude = ad.len().cmp(&bd.len()).then_with(|| ad.cmp(bd));
            match (an, bn) {
                (false, false) => magnitude,
                (true, true) => magnitude.reverse(),
                (true, false) => std::cmp::Ordering::Less,
                (false, true) => std::cmp::Ordering::Greater,
            }
        }
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(json: &str) -> BTreeMap<String, &RawValue> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn keys_read_like_the_tracker_writes_them() {
        let cols = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let r = row(r#"{"id": 7, "name": "x", "tags": [1, 2]}"#);
        assert_eq!(key_of(&r, &cols(&["id"])).as_deref(), Some("7"));
        assert_eq!(key_of(&r, &cols(&["name"])).as_deref(), Some("x"));
        assert_eq!(
            key_of(&r, &cols(&["id", "name"])).as_deref(),
            Some(r#"[7,"x"]"#)
        );
        assert_eq!(key_of(&r, &cols(&["tags"])).as_deref(), Some("[1,2]"));
        assert_eq!(key_of(&r, &cols(&["missing"])), None);
        assert_eq!(key_of(&row(r#"{"id": null}"#), &cols(&["id"])), None);
        assert_eq!(canonical_key(r#"[7, "a b"]"#, 2), r#"[7,"a b"]"#);
    }

    #[test]
    fn key_objects_cover_both_spellings_of_a_scalar() {
        let id = vec!["id".to_owned()];
        assert_eq!(key_objects("7", &id), vec![r#"{"id":"7"}"#, r#"{"id":7}"#]);
        assert_eq!(key_objects("alice", &id), vec![r#"{"id":"alice"}"#]);
        let pair = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(key_objects(r#"[7,"x"]"#, &pair), vec![r#"{"a":7,"b":"x"}"#]);
        assert!(key_objects("7", &pair).is_empty());
    }

    #[test]
    fn keys_sort_naturally() {
        let mut keys = vec!["10", "9", "-3", "b", "a", "100"];
        keys.sort_by(|a, b| compare_keys(a, b));
        assert_eq!(keys, vec!["-3", "9", "10", "100", "a", "b"]);
        let mut keys = vec![r#"[2,"a"]"#, r#"[10,"a"]"#, r#"[2,"0"]"#];
        keys.sort_by(|a, b| compare_keys(a, b));
        assert_eq!(keys, vec![r#"[2,"0"]"#, r#"[2,"a"]"#, r#"[10,"a"]"#]);
    }
}
