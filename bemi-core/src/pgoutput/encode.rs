//! The encoder: writes a [`Message`] the way pgoutput does. The decoder's tests and
//! property tests check it against this, and benchmarks and users' own tests of code that
//! consumes the stream build their input with it.

use bytes::{BufMut, Bytes, BytesMut};

use super::message::*;

/// The bytes of `message`, as the server would send them: [`decode`](super::decode) of them
/// gives `message` back.
///
/// ```
/// use bemi_core::pgoutput::{decode, encode, Begin, Message, PgTimestamp};
/// use bemi_core::{Lsn, Xid};
///
/// let begin = Message::Begin(Begin {
///     final_lsn: Lsn(0x16B3F28),
///     commit_time: PgTimestamp(0),
///     xid: Xid(731),
/// });
/// assert_eq!(decode(encode(&begin)).unwrap(), begin);
/// ```
pub fn encode(message: &Message) -> Bytes {
    let mut buf = BytesMut::new();
    match message {
        Message::Begin(m) => {
            buf.put_u8(BEGIN_TAG);
            buf.put_u64(m.final_lsn.0);
            buf.put_i64(m.commit_time.0);
            buf.put_u32(m.xid.0);
        }
        Message::Commit(m) => {
            buf.put_u8(COMMIT_TAG);
            buf.put_u8(m.flags);
            buf.put_u64(m.commit_lsn.0);
            buf.put_u64(m.end_lsn.0);
            buf.put_i64(m.commit_time.0);
        }
        Message::Origin(m) => {
            buf.put_u8(ORIGIN_TAG);
            buf.put_u64(m.commit_lsn.0);
            put_string(&mut buf, &m.name);
        }
        Message::Relation(m) => {
            buf.put_u8(RELATION_TAG);
            buf.put_u32(m.oid.0);
            put_string(&mut buf, &m.namespace);
            put_string(&mut buf, &m.name);
            buf.put_u8(match m.replica_identity {
                ReplicaIdentity::Default => REPLICA_IDENTITY_DEFAULT,
                ReplicaIdentity::Nothing => REPLICA_IDENTITY_NOTHING,
                ReplicaIdentity::Full => REPLICA_IDENTITY_FULL,
                ReplicaIdentity::Index => REPLICA_IDENTITY_INDEX,
            });
            buf.put_i16(count(m.columns.len()));
            for column in &m.columns {
                buf.put_u8(column.flags);
                put_string(&mut buf, &column.name);
                buf.put_u32(column.type_oid.0);
                buf.put_i32(column.type_modifier);
            }
        }
        Message::Type(m) => {
            buf.put_u8(TYPE_TAG);
            buf.put_u32(m.oid.0);
            put_string(&mut buf, &m.namespace);
            put_string(&mut buf, &m.name);
        }
        Message::Insert(m) => {
            buf.put_u8(INSERT_TAG);
            buf.put_u32(m.relation.0);
            buf.put_u8(NEW_TUPLE_MARKER);
            put_tuple(&mut buf, &m.new);
        }
        Message::Update(m) => {
            buf.put_u8(UPDATE_TAG);
            buf.put_u32(m.relation.0);
            if let Some(old) = &m.old {
                put_old_tuple(&mut buf, old);
            }
            buf.put_u8(NEW_TUPLE_MARKER);
            put_tuple(&mut buf, &m.new);
        }
        Message::Delete(m) => {
            buf.put_u8(DELETE_TAG);
            buf.put_u32(m.relation.0);
            put_old_tuple(&mut buf, &m.old);
        }
        Message::Truncate(m) => {
            buf.put_u8(TRUNCATE_TAG);
            buf.put_i32(count(m.relations.len()));
            buf.put_u8(m.options);
            for oid in &m.relations {
                buf.put_u32(oid.0);
            }
        }
        Message::Message(m) => {
            buf.put_u8(MESSAGE_TAG);
            buf.put_u8(u8::from(m.transactional));
            buf.put_u64(m.lsn.0);
            put_string(&mut buf, &m.prefix);
            buf.put_i32(count(m.content.len()));
            buf.put_slice(&m.content);
        }
    }
    buf.freeze()
}

fn put_string(buf: &mut BytesMut, s: &PgStr) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

fn put_old_tuple(buf: &mut BytesMut, old: &OldTuple) {
    buf.put_u8(match old {
        OldTuple::Key(_) => KEY_TUPLE_MARKER,
        OldTuple::Full(_) => OLD_TUPLE_MARKER,
    });
    put_tuple(buf, old.tuple());
}

fn put_tuple(buf: &mut BytesMut, tuple: &TupleData) {
    buf.put_i16(count(tuple.columns.len()));
    for column in &tuple.columns {
        match column {
            ColumnValue::Null => buf.put_u8(NULL_COLUMN),
            ColumnValue::UnchangedToast => buf.put_u8(UNCHANGED_TOAST_COLUMN),
            ColumnValue::Text(value) => put_value(buf, TEXT_COLUMN, value),
            ColumnValue::Binary(value) => put_value(buf, BINARY_COLUMN, value),
        }
    }
}

fn put_value(buf: &mut BytesMut, kind: u8, value: &Bytes) {
    buf.put_u8(kind);
    buf.put_i32(count(value.len()));
    buf.put_slice(value);
}

/// A length as the wire's signed integer; test messages are far below the limits.
fn count<T: TryFrom<usize>>(len: usize) -> T {
    T::try_from(len).unwrap_or_else(|_| panic!("length {len} does not fit the wire format"))
}
