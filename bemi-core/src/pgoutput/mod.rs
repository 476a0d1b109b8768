//! The `pgoutput` logical decoding output format, protocol version 1 plus logical messages.
//!
//! Pure: bytes in, typed messages out, no I/O. [`decode`] reads the payload of one XLogData into
//! a [`Message`]; names and values share the received buffer instead of being copied. See
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.
//!
//! The replication client asks for `proto_version '1'` (with `messages 'true'`), so the server
//! never sends the streaming (`S`, `E`, `c`, `A`), two-phase or parallel-apply messages of
//! protocol versions 2 to 4: their tags are decoding errors here, like any unknown tag.
//! Malformed input (truncated, unknown markers, negative lengths, leftover bytes, strings that
//! are not UTF-8 or not NUL-terminated) is a [`DecodeError`], never a panic.

mod decode;
mod encode;
mod message;
#[cfg(test)]
mod proptests;

pub use decode::{decode, DecodeError};
pub use encode::encode;
pub use message::{
    Begin, ColumnValue, Commit, Delete, Insert, LogicalMessage, Message, OldTuple, Origin, PgStr,
    PgTimestamp, Relation, RelationColumn, ReplicaIdentity, Truncate, TupleData, TypeMessage,
    Update,
};
