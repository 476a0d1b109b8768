//! The decoded pgoutput messages and the small value types they carry.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::Lsn;
use crate::{Oid, Xid};

// Message tags (the first byte of every pgoutput message).
pub(super) const BEGIN_TAG: u8 = b'B';
pub(super) const COMMIT_TAG: u8 = b'C';
pub(super) const ORIGIN_TAG: u8 = b'O';
pub(super) const RELATION_TAG: u8 = b'R';
pub(super) const TYPE_TAG: u8 = b'Y';
pub(super) const INSERT_TAG: u8 = b'I';
pub(super) const UPDATE_TAG: u8 = b'U';
pub(super) const DELETE_TAG: u8 = b'D';
pub(super) const TRUNCATE_TAG: u8 = b'T';
pub(super) const MESSAGE_TAG: u8 = b'M';

// Markers in front of a TupleData inside Insert, Update and Delete.
pub(super) const NEW_TUPLE_MARKER: u8 = b'N';
pub(super) const KEY_TUPLE_MARKER: u8 = b'K';
pub(super) const OLD_TUPLE_MARKER: u8 = b'O';

// Column kinds inside a TupleData.
pub(super) const NULL_COLUMN: u8 = b'n';
pub(super) const UNCHANGED_TOAST_COLUMN: u8 = b'u';
pub(super) const TEXT_COLUMN: u8 = b't';
pub(super) const BINARY_COLUMN: u8 = b'b';

// `pg_class.relreplident` values.
pub(super) const REPLICA_IDENTITY_DEFAULT: u8 = b'd';
pub(super) const REPLICA_IDENTITY_NOTHING: u8 = b'n';
pub(super) const REPLICA_IDENTITY_FULL: u8 = b'f';
pub(super) const REPLICA_IDENTITY_INDEX: u8 = b'i';

/// One pgoutput message: the payload of one XLogData.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// `B`: a transaction starts.
    Begin(Begin),
    /// `C`: the transaction started by the last [`Begin`] committed.
    Commit(Commit),
    /// `O`: the transaction came from another node (replication origin).
    Origin(Origin),
    /// `R`: the shape of a relation, sent before its first change in a session and after it
    /// changes.
    Relation(Relation),
    /// `Y`: a data type, sent before the first [`Relation`] that uses a non-built-in type.
    Type(TypeMessage),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: relations were truncated.
    Truncate(Truncate),
    /// `M`: a logical decoding message (`pg_logical_emit_message`).
    Message(LogicalMessage),
}

/// The start of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
    /// The transaction id.
    pub xid: Xid,
}

/// The end of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Unused by the server so far (always 0).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record: the position to confirm once the transaction is
    /// durable.
    pub end_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
}

/// The replication origin of the current transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: PgStr,
}

/// The shape of a relation (table) as of this point in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation's OID, which later change messages refer to.
    pub oid: Oid,
    /// The schema; empty for `pg_catalog`.
    pub namespace: PgStr,
    /// The relation's name.
    pub name: PgStr,
    /// Which old values Update and Delete messages carry.
    pub replica_identity: ReplicaIdentity,
    /// The columns in tuple order (dropped columns are absent).
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Flag 1: the column is part of the replica identity key (see [`Self::is_key`]).
    pub flags: u8,
    /// The column's name.
    pub name: PgStr,
    /// The OID of the column's data type.
    pub type_oid: Oid,
    /// The type modifier (`atttypmod`), -1 when there is none.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// Whether the column is part of the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// A relation's `REPLICA IDENTITY` setting: which old values Update and Delete carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// The primary key, if any (`d`).
    Default,
    /// No old values (`n`).
    Nothing,
    /// The whole old row (`f`).
    Full,
    /// The columns of a chosen unique index (`i`).
    Index,
}

/// A data type used by a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    /// The type's OID.
    pub oid: Oid,
    /// The schema; empty for `pg_catalog`.
    pub namespace: PgStr,
    /// The type's name.
    pub name: PgStr,
}

/// An inserted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The OID of the relation, described by an earlier [`Relation`].
    pub relation: Oid,
    /// The new row.
    pub new: TupleData,
}

/// An updated row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The OID of the relation, described by an earlier [`Relation`].
    pub relation: Oid,
    /// The old key or row, present when the replica identity is `FULL` or the key changed.
    pub old: Option<OldTuple>,
    /// The new row; unchanged out-of-line values are [`ColumnValue::UnchangedToast`].
    pub new: TupleData,
}

/// A deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The OID of the relation, described by an earlier [`Relation`].
    pub relation: Oid,
    /// The old key or row.
    pub old: OldTuple,
}

/// The old values sent with an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only the replica identity key columns are set, the others are null.
    Key(TupleData),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

impl OldTuple {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }
}

/// Relations truncated together by one `TRUNCATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Flag 1: `CASCADE`; flag 2: `RESTART IDENTITY`.
    pub options: u8,
    /// The OIDs of the truncated relations.
    pub relations: Vec<Oid>,
}

impl Truncate {
    /// Whether `TRUNCATE … CASCADE` was used.
    pub fn cascade(&self) -> bool {
        self.options & 1 != 0
    }

    /// Whether `TRUNCATE … RESTART IDENTITY` was used.
    pub fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }
}

/// A message written with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Whether it was emitted inside a transaction (it then arrives between Begin and Commit,
    /// and only if the transaction commits). A non-transactional message arrives on its own.
    pub transactional: bool,
    /// The LSN of the message record.
    pub lsn: Lsn,
    /// The prefix given by the emitter, which says who the message is for.
    pub prefix: PgStr,
    /// The content, uninterpreted.
    pub content: Bytes,
}

/// The column values of one row, in the order of the [`Relation`]'s columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData {
    /// One value per column.
    pub columns: Vec<ColumnValue>,
}

/// One column value in a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an out-of-line (TOAST) value the Update did not change; the server does not send it.
    UnchangedToast,
    /// `t`: the value in the type's text format (output function), in the server encoding.
    Text(Bytes),
    /// `b`: the value in the type's binary format (only with the `binary` option).
    Binary(Bytes),
}

/// A string from the stream (a name or a prefix): valid UTF-8, without its NUL terminator,
/// sharing the received buffer.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PgStr(Bytes);

impl PgStr {
    /// Wraps `bytes` after checking that they are UTF-8.
    pub(super) fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(PgStr(bytes))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // The bytes were checked when the `PgStr` was made. Without `unsafe` (forbidden in this
        // crate) the check runs again here; names and prefixes are short, so it is cheap.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Deref for PgStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for PgStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for PgStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_str().fmt(f)
    }
}

impl fmt::Debug for PgStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_str().fmt(f)
    }
}

impl PartialEq<str> for PgStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for PgStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<&'static str> for PgStr {
    fn from(value: &'static str) -> Self {
        PgStr(Bytes::from_static(value.as_bytes()))
    }
}

impl From<String> for PgStr {
    fn from(value: String) -> Self {
        PgStr(Bytes::from(value))
    }
}

/// A PostgreSQL timestamp: microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

/// 2000-01-01 00:00:00 UTC in microseconds since the Unix epoch.
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl PgTimestamp {
    /// The timestamp as a UTC date and time, or `None` outside chrono's range (which includes
    /// PostgreSQL's `infinity` and `-infinity`).
    pub fn to_utc(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.0.checked_add(POSTGRES_EPOCH_UNIX_MICROS)?)
    }
}

impl From<DateTime<Utc>> for PgTimestamp {
    fn from(value: DateTime<Utc>) -> Self {
        PgTimestamp(value.timestamp_micros() - POSTGRES_EPOCH_UNIX_MICROS)
    }
}
