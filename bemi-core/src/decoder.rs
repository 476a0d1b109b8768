//! The conversion of pgoutput messages to [`RowEvent`]s, keeping the relation cache.
//!
//! Relation messages update the cache (see [`crate::relation`]), with the primary key from a
//! [`KeyLookup`]. Type messages, sent before a Relation message for the user-defined types of
//! its columns, name array types (`_mood`, `_citext`): their values become JSON arrays. A text
//! value that is not valid UTF-8 (a `SQL_ASCII` database passes bytes through unconverted) is
//! kept as bytea-style hex text (`"\\x636166e9"`) with a warning, rather than stopping the
//! stream.
//!
//! The [`Rules`] are compiled for each table at its Relation message and applied while its rows
//! are converted: changes of untracked tables and unrecorded operations are dropped before any
//! value is converted, ignored columns are never converted, masked and hashed ones never
//! reach a [`Row`].

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;

use crate::change::Operation;
use crate::error::{Error, Result};
use crate::keys::{CatalogKeys, KeyLookup};
use crate::pgoutput::{ColumnValue, Message, OldTuple, PgTimestamp, TupleData};
use crate::relation::RelationInfo;
use crate::row::{Row, RowEvent};
use crate::rules::{ColumnRule, RelationRules, Rules, MASKED};
use crate::value::{push_json_string, text_to_json, user_array_to_json};
use crate::{Lsn, Oid};

/// Turns pgoutput messages into row events, keeping the relation cache.
///
/// Pure apart from the primary-key lookup: `K` is [`CatalogKeys`] in the tracker, a closure in
/// tests and benchmarks (see [`KeyLookup`]).
#[derive(Debug)]
pub struct RowDecoder<K = CatalogKeys> {
    keys: K,
    relations: HashMap<Oid, Table>,
    rules: Arc<Rules>,
    /// User-defined types the stream's Type messages named as arrays (`_…`).
    user_arrays: HashSet<Oid>,
    /// The commit LSN of the transaction being decoded (its Begin's final LSN).
    commit_lsn: Lsn,
    /// Tables whose changes are never recorded, by (schema, name), whatever the rules.
    ignored_tables: Vec<(String, String)>,
}

/// A table as the stream described it, with its rules compiled.
#[derive(Debug)]
struct Table {
    info: Arc<RelationInfo>,
    rules: RelationRules,
}

impl<K: KeyLookup> RowDecoder<K> {
    /// A decoder that looks primary keys up through `keys`.
    pub fn new(keys: K) -> Self {
        RowDecoder {
            keys,
            relations: HashMap::new(),
            rules: Arc::new(Rules::new()),
            user_arrays: HashSet::new(),
            commit_lsn: Lsn::ZERO,
            ignored_tables: Vec::new(),
        }
    }

    /// Applies `rules` to the tables described from now on (see [`crate::rules`]).
    pub fn rules(mut self, rules: Arc<Rules>) -> Self {
        self.rules = rules;
        self
    }

    /// Never records changes of this table (the tracker's own `changes` table, for one), nor of
    /// its partitions as [`changes_table`](crate::changes_table) names them: they are dropped
    /// before their values are converted, so a sink writing into the tracked
    /// database does not pay for decoding its own writes.
    pub fn ignore_table(mut self, schema: impl Into<String>, table: impl Into<String>) -> Self {
        self.ignored_tables.push((schema.into(), table.into()));
        self
    }

    /// The primary-key lookup.
    pub fn keys(&self) -> &K {
        &self.keys
    }

    /// The cached description of a table, if a Relation message for it has arrived.
    pub fn relation(&self, oid: Oid) -> Option<&Arc<RelationInfo>> {
        self.relations.get(&oid).map(|table| &table.info)
    }

    /// Decodes one message. Relation, Type and Origin messages update state and give `None`.
    pub async fn decode(&mut self, message: Message) -> Result<Option<RowEvent>> {
        let event = match message {
            Message::Relation(relation) => {
                let primary_key = self.keys.primary_key(relation.oid, self.commit_lsn).await?;
                let info = RelationInfo::new(&relation, &primary_key, &self.user_arrays);
                // A partition of an ignored `changes` table, published under its own name
                // (without publish_via_partition_root), is ignored with it.
                let parent = crate::changes_table::partition_parent(&info.table);
                let ignored = self.ignored_tables.iter().any(|(schema, table)| {
                    *schema == info.schema
                        && (*table == info.table || parent == Some(table.as_str()))
                });
                let mut rules = match ignored {
                    true => RelationRules::everything(),
                    false => RelationRules::compile(&self.rules, &info),
                };
                rules.tracked &= !ignored;
                if rules.tracked && info.primary_key.is_empty() {
                    tracing::warn!(
                        table = %format_args!("{}.{}", info.schema, info.table),
                        looked_up = ?primary_key,
                        full_identity = info.full_identity,
                        commit_lsn = %self.commit_lsn,
                        "no primary key is known for this table as of this transaction: its \
                         changes are stored with primary_key NULL"
                    );
                }
                let table = Table {
                    info: Arc::new(info),
                    rules,
                };
                self.relations.insert(relation.oid, table);
                return Ok(None);
            }
            Message::Type(user_type) => {
                if user_type.name.as_str().starts_with('_') {
                    self.user_arrays.insert(user_type.oid);
                } else {
                    self.user_arrays.remove(&user_type.oid);
                }
                return Ok(None);
            }
            Message::Begin(begin) => {
                self.commit_lsn = begin.final_lsn;
                RowEvent::Begin {
                    xid: begin.xid,
                    final_lsn: begin.final_lsn,
                    commit_time: time(begin.commit_time)?,
                }
            }
            Message::Commit(commit) => RowEvent::Commit {
                commit_lsn: commit.commit_lsn,
                end_lsn: commit.end_lsn,
                commit_time: time(commit.commit_time)?,
            },
            Message::Insert(insert) => {
                let Some(table) = self.recorded(insert.relation, Operation::Create)? else {
                    return Ok(None);
                };
                let new = row(&table.info, &table.rules, &insert.new, None, false)?;
                RowEvent::Insert {
                    primary_key: key_text(&table.info, &new),
                    relation: Arc::clone(&table.info),
                    new,
                }
            }
            Message::Update(update) => {
                let Some(table) = self.recorded(update.relation, Operation::Update)? else {
                    return Ok(None);
                };
                if let Some(OldTuple::Full(old)) = &update.old {
                    if table.rules.skips_update(old, &update.new) {
                        return Ok(None);
                    }
                }
                let old = update
                    .old
                    .as_ref()
                    .map(|old| old_row(table, old))
                    .transpose()?;
                let new = row(&table.info, &table.rules, &update.new, old.as_ref(), false)?;
                RowEvent::Update {
                    primary_key: key_text(&table.info, &new),
                    relation: Arc::clone(&table.info),
                    old,
                    new,
                }
            }
            Message::Delete(delete) => {
                let Some(table) = self.recorded(delete.relation, Operation::Delete)? else {
                    return Ok(None);
                };
                let old = old_row(table, &delete.old)?;
                RowEvent::Delete {
                    primary_key: key_text(&table.info, &old),
                    relation: Arc::clone(&table.info),
                    old,
                }
            }
            Message::Truncate(truncate) => {
                let mut relations = Vec::with_capacity(truncate.relations.len());
                for &oid in &truncate.relations {
                    if let Some(table) = self.recorded(oid, Operation::Truncate)? {
                        relations.push(Arc::clone(&table.info));
                    }
                }
                RowEvent::Truncate {
                    relations,
                    cascade: truncate.cascade(),
                    restart_identity: truncate.restart_identity(),
                }
            }
            Message::Message(message) => RowEvent::Message {
                transactional: message.transactional,
                lsn: message.lsn,
                prefix: message.prefix.as_str().to_owned(),
                content: message.content,
            },
            _ => return Ok(None),
        };
        Ok(Some(event))
    }

    /// The table `oid`, when its changes of `operation` are recorded.
    fn recorded(&self, oid: Oid, operation: Operation) -> Result<Option<&Table>> {
        let table = self.relations.get(&oid).ok_or_else(|| {
            Error::protocol(format!(
                "a change refers to relation {oid}, which no Relation message described"
            ))
        })?;
        Ok(Some(table).filter(|table| table.rules.records(operation)))
    }
}

/// Converts an old tuple: a full old row (`O`), or only the replica identity columns (`K`,
/// whose other columns the server sends as nulls that mean "not sent").
fn old_row(table: &Table, old: &OldTuple) -> Result<Row> {
    match old {
        OldTuple::Full(tuple) => row(&table.info, &table.rules, tuple, None, false),
        OldTuple::Key(tuple) => row(&table.info, &table.rules, tuple, None, true),
    }
}

/// Appends `bytes` as a JSON string of bytea's hex text, `"\\x00ff"`.
fn push_hex(bytes: &[u8], json: &mut String) {
    json.push_str("\"\\\\x");
    for byte in bytes {
        let _ = write!(json, "{byte:02x}");
    }
    json.push('"');
}

/// Converts a tuple to a JSON object row under the table's `rules`. Unchanged TOAST values are
/// taken from `old` (converted under the same rules) when it has them and left out otherwise;
/// with `key_only`, non-key columns are left out.
fn row(
    relation: &RelationInfo,
    rules: &RelationRules,
    tuple: &TupleData,
    old: Option<&Row>,
    key_only: bool,
) -> Result<Row> {
    if tuple.columns.len() != relation.columns.len() {
        return Err(Error::protocol(format!(
            "a row of {}.{} has {} columns, but its Relation message described {}",
            relation.schema,
            relation.table,
            tuple.columns.len(),
            relation.columns.len()
        )));
    }
    let mut json = String::with_capacity(16 * tuple.columns.len() + 2);
    let mut values = Vec::with_capacity(tuple.columns.len());
    json.push('{');
    for (index, (column, value)) in relation.columns.iter().zip(&tuple.columns).enumerate() {
        let rule = rules.column(index);
        if rule == ColumnRule::Drop || (key_only && !column.replica_key) {
            values.push(None);
            continue;
        }
        let carried = match value {
            ColumnValue::UnchangedToast => match old.and_then(|old| old.value(index)) {
                Some(text) => Some(text),
                None => {
                    values.push(None);
                    continue;
                }
            },
            _ => None,
        };
        if json.len() > 1 {
            json.push(',');
        }
        push_json_string(&column.name, &mut json);
        json.push(':');
        let start = json.len();
        match (value, carried) {
            (_, Some(text)) => json.push_str(text),
            (ColumnValue::Null, _) => json.push_str("null"),
            (ColumnValue::Text(bytes) | ColumnValue::Binary(bytes), _)
                if rule != ColumnRule::Keep =>
            {
                match rules.hash_key().filter(|_| rule == ColumnRule::Hash) {
                    Some(key) => key.push_hash(bytes, &mut json),
                    None => json.push_str(MASKED),
                }
            }
            (ColumnValue::Text(bytes), _) => match std::str::from_utf8(bytes) {
                Ok(text) if column.user_array => user_array_to_json(text, &mut json),
                Ok(text) => text_to_json(column.type_oid, text, &mut json),
                Err(_) => {
                    // A database with encoding SQL_ASCII passes bytes through unconverted.
                    // Failing would stop the tracker at this change for good; the bytes are
                    // kept instead, losslessly, as bytea-style hex text.
                    tracing::warn!(
                        column = %column.name,
                        table = %format!("{}.{}", relation.schema, relation.table),
                        "a text value is not valid UTF-8; storing its bytes as hex (\\x…)"
                    );
                    push_hex(bytes, &mut json);
                }
            },
            // Only text format is requested; keep binary data lossless as bytea hex text.
            (ColumnValue::Binary(bytes), _) => push_hex(bytes, &mut json),
            (ColumnValue::UnchangedToast, None) => {}
        }
        values.push(Some(start..json.len()));
    }
    json.push('}');
    if json.len() > MAX_ROW_JSON_BYTES {
        let table = format!("{}.{}", relation.schema, relation.table);
        return Ok(fit_row(&json, &values, MAX_ROW_JSON_BYTES, &table));
    }
    Ok(Row::new(json, values))
}

/// The largest row JSON stored as it is. `jsonb` holds at most 256 MiB per document (and a
/// message to the server at most 1 GiB), so a larger row could never be written and would
/// stop the tracker at it for good.
const MAX_ROW_JSON_BYTES: usize = 200 * 1024 * 1024;

/// How much of an oversized value its marker keeps.
const OVERSIZED_PREFIX_CHARS: usize = 1_000;

/// Replaces the largest values of a row whose JSON is over `limit` bytes with a marker,
/// `{"_bemi_oversized": {"bytes": <size of the value's JSON>, "prefix": "<its first 1,000
/// characters>"}}`, until the row fits. The value is then visibly unknown, never silently
/// wrong, and the change itself is kept.
fn fit_row(json: &str, values: &[Option<Range<usize>>], limit: usize, table: &str) -> Row {
    let size = |i: usize| values[i].as_ref().map_or(0, |range| range.len());
    // A marker takes at most this much (its prefix fully escaped); smaller values stay.
    let marker_bytes = OVERSIZED_PREFIX_CHARS * 6 + 64;
    let mut largest: Vec<usize> = (0..values.len())
        .filter(|&i| size(i) > marker_bytes)
        .collect();
    largest.sort_by_key(|&i| std::cmp::Reverse(size(i)));
    let mut total = json.len();
    let mut oversized = vec![false; values.len()];
    for i in largest {
        if total <= limit {
            break;
        }
        total -= size(i) - marker_bytes;
        oversized[i] = true;
    }
    let mut out = String::with_capacity(total.min(json.len()));
    let mut fitted = Vec::with_capacity(values.len());
    let mut copied = 0;
    for (i, range) in values.iter().enumerate() {
        let Some(range) = range else {
            fitted.push(None);
            continue;
        };
        out.push_str(&json[copied..range.start]);
        let start = out.len();
        let value = &json[range.clone()];
        if oversized[i] {
            tracing::warn!(%table, bytes = value.len(), "a value is too large to store; keeping a marker with its size and first characters");
            let prefix: String = value.chars().take(OVERSIZED_PREFIX_CHARS).collect();
            let _ = write!(
                out,
                "{{\"_bemi_oversized\":{{\"bytes\":{},\"prefix\":",
                value.len()
            );
            push_json_string(&prefix, &mut out);
            out.push_str("}}");
        } else {
            out.push_str(value);
        }
        fitted.push(Some(start..out.len()));
        copied = range.end;
    }
    out.push_str(&json[copied..]);
    Row::new(out, fitted)
}

/// The primary key as text: the value itself for a single column (strings unquoted), or a JSON
/// array of the values for a composite key (`[1,"a"]`). `None` without a key or a key value.
fn key_text(relation: &RelationInfo, row: &Row) -> Option<String> {
    crate::changes_table::format_key(
        relation
            .primary_key
            .iter()
            .map(|&i| row.value(i).map(Cow::Borrowed)),
    )
}

fn time(timestamp: PgTimestamp) -> Result<chrono::DateTime<chrono::Utc>> {
    timestamp
        .to_utc()
        .ok_or_else(|| Error::protocol(format!("commit time {} is out of range", timestamp.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relation::ColumnInfo;
    use bytes::Bytes;

    fn relation() -> RelationInfo {
        let column = |name: &str, type_oid: u32| ColumnInfo {
            name: name.to_owned(),
            type_oid: Oid(type_oid),
            replica_key: true,
            user_array: false,
        };
        RelationInfo {
            oid: Oid(1),
            schema: "public".to_owned(),
            table: "t".to_owned(),
            columns: vec![column("id", 23), column("name", 25)],
            full_identity: true,
            primary_key: vec![0],
        }
    }

    fn relation_message(oid: u32, table: &'static str) -> Message {
        Message::Relation(crate::pgoutput::Relation {
            oid: Oid(oid),
            namespace: "public".into(),
            name: table.into(),
            replica_identity: crate::pgoutput::ReplicaIdentity::Full,
            columns: vec![crate::pgoutput::RelationColumn {
                flags: 1,
                name: "id".into(),
                type_oid: Oid(23),
                type_modifier: -1,
            }],
        })
    }

    #[tokio::test]
    async fn changes_of_ignored_tables_are_dropped_before_their_values_are_converted() {
        let mut decoder = RowDecoder::new(|_: Oid, _: Lsn| vec!["id".to_owned()])
            .ignore_table("public", "changes");
        for message in [
            relation_message(1, "t"),
            relation_message(2, "changes"),
            relation_message(3, "changes_p20261101"),
            relation_message(4, "changes_default"),
            relation_message(5, "changes_log"),
        ] {
            assert_eq!(decoder.decode(message).await.unwrap(), None);
        }
        // Two values for a one-column table: converting it would be an error.
        let malformed = |relation: u32| {
            Message::Insert(crate::pgoutput::Insert {
                relation: Oid(relation),
                new: TupleData {
                    columns: vec![ColumnValue::Null, ColumnValue::Null],
                },
            })
        };
        // The table, its partitions: dropped. Others, even one that looks like a partition: not.
        for ignored in [2, 3, 4] {
            assert_eq!(decoder.decode(malformed(ignored)).await.unwrap(), None);
        }
        for kept in [1, 5] {
            assert!(decoder.decode(malformed(kept)).await.is_err());
        }
        let truncate = Message::Truncate(crate::pgoutput::Truncate {
            options: 0,
            relations: vec![Oid(1), Oid(2)],
        });
        let Some(RowEvent::Truncate { relations, .. }) = decoder.decode(truncate).await.unwrap()
        else {
            panic!("a truncate event");
        };
        let tables: Vec<&str> = relations.iter().map(|r| r.table.as_str()).collect();
        assert_eq!(tables, ["t"]);
    }

    #[test]
    fn text_that_is_not_utf8_is_kept_as_hex_instead_of_stopping_the_stream() {
        let tuple = TupleData {
            columns: vec![
                ColumnValue::Text(Bytes::from_static(b"7")),
                // "café" in LATIN1, as a SQL_ASCII database passes it through
                ColumnValue::Text(Bytes::from_static(b"caf\xe9")),
            ],
        };
        let row = row(
            &relation(),
            &RelationRules::everything(),
            &tuple,
            None,
            false,
        )
        .unwrap();
        assert_eq!(row.as_json(), r#"{"id":7,"name":"\\x636166e9"}"#);
    }

    #[test]
    fn binary_values_are_hex_and_a_column_count_mismatch_is_an_error() {
        let tuple = TupleData {
            columns: vec![
                ColumnValue::Text(Bytes::from_static(b"7")),
                ColumnValue::Binary(Bytes::from_static(&[0, 255])),
            ],
        };
        let row = row(
            &relation(),
            &RelationRules::everything(),
            &tuple,
            None,
            false,
        )
        .unwrap();
        assert_eq!(row.as_json(), r#"{"id":7,"name":"\\x00ff"}"#);
        let short = TupleData {
            columns: vec![ColumnValue::Null],
        };
        assert!(super::row(
            &relation(),
            &RelationRules::everything(),
            &short,
            None,
            false
        )
        .is_err());
    }

    #[test]
    fn an_oversized_row_keeps_a_marker_for_its_largest_values() {
        let big = "x".repeat(20_000);
        let json = format!("{{\"id\":1,\"a\":\"{big}\",\"b\":\"small\",\"c\":\"{big}\"}}");
        let find = |needle: &str| {
            let start = json.find(needle).unwrap() + needle.len();
            let end = start + json[start..].find([',', '}']).unwrap();
            Some(start..end)
        };
        let values = vec![
            find("\"id\":"),
            find("\"a\":"),
            find("\"b\":"),
            None,
            find("\"c\":"),
        ];
        let row = fit_row(&json, &values, 30_000, "public.t");
        let parsed: serde_json::Value = serde_json::from_str(row.as_json()).unwrap();
        assert_eq!(parsed["id"], 1);
        assert_eq!(parsed["b"], "small");
        // One of the two large values had to go; the other fits beside the marker.
        let markers = ["a", "c"]
            .iter()
            .filter(|k| parsed[**k].get("_bemi_oversized").is_some())
            .count();
        assert_eq!(markers, 1, "{parsed}");
        let marker = if parsed["a"].is_object() {
            &parsed["a"]
        } else {
            &parsed["c"]
        };
        assert_eq!(marker["_bemi_oversized"]["bytes"], 20_002);
        assert_eq!(
            marker["_bemi_oversized"]["prefix"].as_str().unwrap().len(),
            OVERSIZED_PREFIX_CHARS
        );
        assert!(row.as_json().len() <= 30_000);
        assert_eq!(row.value(0), Some("1"));
        assert_eq!(row.value(2), Some("\"small\""));
        assert_eq!(row.value(3), None);
    }
}
