//! [`Change`]: one row of the audit trail, as stored in Bemi's `changes` table.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::row::Row;
use crate::Lsn;

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    /// INSERT.
    Create,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// TRUNCATE (one change per truncated table; `before` and `after` are empty).
    Truncate,
    /// Not a row change: a record of the tracker itself, with empty `schema`, `table`, `before`
    /// and `after`. The only one today is an accepted gap in the trail (see [`Change::gap`]).
    Message,
}

impl Operation {
    /// The text stored in the `operation` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Truncate => "TRUNCATE",
            Operation::Message => "MESSAGE",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "CREATE" => Operation::Create,
            "UPDATE" => Operation::Update,
            "DELETE" => Operation::Delete,
            "TRUNCATE" => Operation::Truncate,
            "MESSAGE" => Operation::Message,
            other => {
                return Err(crate::Error::config(format!(
                    "unknown operation {other:?}; expected CREATE, UPDATE, DELETE, TRUNCATE or \
                     MESSAGE"
                )))
            }
        })
    }
}

/// The stitched application context of a change: the JSON object text of a `_bemi` message,
/// shared by all the changes it applies to.
#[derive(Clone, PartialEq, Eq)]
pub struct ContextJson(Arc<str>);

impl ContextJson {
    /// The empty context `{}`.
    pub fn empty() -> Self {
        ContextJson(Arc::from("{}"))
    }

    /// Wraps JSON object text that the caller has validated.
    pub(crate) fn from_validated(text: String) -> Self {
        ContextJson(Arc::from(text))
    }

    /// The JSON object text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The context as a `serde_json::Value`.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or_default()
    }
}

impl Default for ContextJson {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for ContextJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ContextJson {
    /// A JSON object, kept as its text.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        if !raw.get().starts_with('{') {
            return Err(serde::de::Error::custom("a context must be a JSON object"));
        }
        Ok(ContextJson::from_validated(raw.get().to_owned()))
    }
}

impl Serialize for ContextJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// One change of the audit trail, compatible with a row of Bemi's `changes` table, plus its
/// idempotency key.
///
/// The key `(commit_lsn, ordinal)` is unique for every change ever made: the LSN of the
/// transaction's commit record and the change's position within the transaction, counting
/// from 0. A change's own `position` is not unique (every row of a COPY shares one).
///
/// Its JSON form (`serde_json::to_string`) reads back into the same change (the rows and the
/// context keep their exact JSON text), for sinks that hand changes to other processes.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Change {
    /// The changed row's primary key as text; composite keys as a JSON array (`[1,"a"]`).
    pub primary_key: Option<String>,
    /// The row before the change (`{}` for CREATE and TRUNCATE).
    pub before: Row,
    /// The row after the change (`{}` for DELETE and TRUNCATE).
    pub after: Row,
    /// The stitched application context (`{}` when the transaction carried none).
    pub context: ContextJson,
    /// The source database.
    pub database: String,
    /// The table's schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// What happened.
    pub operation: Operation,
    /// When the source transaction committed (µs).
    pub committed_at: DateTime<Utc>,
    /// When the tracker received the change.
    pub queued_at: DateTime<Utc>,
    /// The source transaction id.
    pub transaction_id: u32,
    /// The WAL position of the change.
    pub position: Lsn,
    /// The LSN of the transaction's commit record (first half of the idempotency key).
    pub commit_lsn: Lsn,
    /// The change's position within its transaction, from 0 (second half of the key).
    pub ordinal: u32,
}

/// The ordinal of a gap record: no transaction holds 2^31 - 1 changes (the sink refuses more
/// than 2^31), so a gap never takes the key of a real change at the same position.
const GAP_ORDINAL: u32 = i32::MAX as u32;

impl Change {
    /// The record of an accepted gap: changes committed between `from` (the sink's last stored
    /// position) and `to` (where the slot resumes) are not in the trail and never will be. An
    /// operator accepted this explicitly; the record keeps the trail honest about it.
    ///
    /// Stored as a `MESSAGE` row with empty `schema` and `table` and the context
    /// `{"_bemi_gap": {"from": "…", "to": "…", "reason": "…"}}`, keyed on `to`.
    pub fn gap(database: &str, from: Lsn, to: Lsn, reason: &str, at: DateTime<Utc>) -> Change {
        let context = serde_json::json!({
            "_bemi_gap": {"from": from.to_string(), "to": to.to_string(), "reason": reason}
        });
        Change {
            primary_key: None,
            before: Row::empty(),
            after: Row::empty(),
            context: ContextJson::from_validated(context.to_string()),
            database: database.to_owned(),
            schema: String::new(),
            table: String::new(),
            operation: Operation::Message,
            committed_at: at,
            queued_at: at,
            transaction_id: 0,
            position: to,
            commit_lsn: to,
            ordinal: GAP_ORDINAL,
        }
    }
}
