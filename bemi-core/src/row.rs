//! Decoded rows and row-level events, the tracker's input to stitching.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::relation::RelationInfo;
use crate::Lsn;
use crate::Xid;

/// A row as a JSON object (column name → value), built once while decoding.
///
/// Values follow the conversion table of [`crate::value`]. A column whose value the stream did
/// not carry (an unchanged TOAST value without the old row) is left out of the object, never
/// set to `null`.
///
/// Rows compare by their JSON text. A row read back from JSON (a [`Change`](crate::Change)
/// deserialized) has its text only: [`Row::value`] finds nothing in it.
#[derive(Clone)]
pub struct Row {
    json: String,
    /// Per column of the relation: where its value sits in `json`, and its text form for key
    /// columns.
    values: Vec<Option<Range<usize>>>,
}

impl Row {
    pub(crate) fn new(json: String, values: Vec<Option<Range<usize>>>) -> Self {
        Row { json, values }
    }

    /// An empty row (`{}`), for the missing side of a CREATE, DELETE or TRUNCATE.
    pub fn empty() -> Self {
        Row {
            json: "{}".to_owned(),
            values: Vec::new(),
        }
    }

    /// The JSON object text.
    pub fn as_json(&self) -> &str {
        &self.json
    }

    /// The JSON text of the value of column `index` (relation order), if present.
    pub fn value(&self, index: usize) -> Option<&str> {
        let range = self.values.get(index)?.clone()?;
        self.json.get(range)
    }

    /// Parses the row into a `serde_json::Value` (numbers wider than `f64` lose precision
    /// unless serde_json's `arbitrary_precision` feature is on; [`Row::as_json`] never does).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.json).unwrap_or_default()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.json
            .strip_prefix('{')
            .and_then(|inner| inner.strip_suffix('}'))
            .is_some_and(|inner| inner.trim().is_empty())
    }
}

impl PartialEq for Row {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl Eq for Row {}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.json)
    }
}

impl serde::Serialize for Row {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(&self.json).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Row {
    /// A JSON object, kept as its text.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        if !raw.get().starts_with('{') {
            return Err(serde::de::Error::custom("a row must be a JSON object"));
        }
        Ok(Row {
            json: raw.get().to_owned(),
            values: Vec::new(),
        })
    }
}

/// One decoded event, in stream order, with rows converted to JSON.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RowEvent {
    /// A transaction starts.
    Begin {
        /// The transaction id.
        xid: Xid,
        /// The LSN of its commit record.
        final_lsn: Lsn,
        /// When it committed.
        commit_time: DateTime<Utc>,
    },
    /// A row was inserted.
    Insert {
        /// The table.
        relation: Arc<RelationInfo>,
        /// The new row.
        new: Row,
        /// The primary key text of the new row.
        primary_key: Option<String>,
    },
    /// A row was updated.
    Update {
        /// The table.
        relation: Arc<RelationInfo>,
        /// The old row: complete with `REPLICA IDENTITY FULL`; only the key columns when the
        /// key changed otherwise; `None` when the server sent no old row.
        old: Option<Row>,
        /// The new row (unchanged TOAST values filled from the old row when it has them).
        new: Row,
        /// The primary key text of the new row.
        primary_key: Option<String>,
    },
    /// A row was deleted.
    Delete {
        /// The table.
        relation: Arc<RelationInfo>,
        /// The old row (complete with `REPLICA IDENTITY FULL`, else the key columns).
        old: Row,
        /// The primary key text of the deleted row.
        primary_key: Option<String>,
    },
    /// Tables were truncated.
    Truncate {
        /// The tables.
        relations: Vec<Arc<RelationInfo>>,
        /// `TRUNCATE … CASCADE`.
        cascade: bool,
        /// `TRUNCATE … RESTART IDENTITY`.
        restart_identity: bool,
    },
    /// A logical message (`pg_logical_emit_message`).
    Message {
        /// Emitted with `transactional = true` (part of the transaction).
        transactional: bool,
        /// The LSN the server reports for the message.
        lsn: Lsn,
        /// The prefix (`_bemi` for context).
        prefix: String,
        /// The payload bytes.
        content: bytes::Bytes,
    },
    /// A transaction committed.
    Commit {
        /// The LSN of the commit record.
        commit_lsn: Lsn,
        /// The end of the commit record: the position to confirm once stored.
        end_lsn: Lsn,
        /// When it committed.
        commit_time: DateTime<Utc>,
    },
}
