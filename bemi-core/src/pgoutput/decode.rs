//! Reading one pgoutput message from bytes.

use bytes::{Buf, Bytes};

use super::message::*;
use crate::Lsn;
use crate::{Oid, Xid};

/// A pgoutput message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The data ended before the message did.
    #[error("truncated {message} message: needed {needed} more bytes but only {remaining} remain")]
    Truncated {
        /// The kind of message being decoded.
        message: &'static str,
        /// How many bytes the next field needs.
        needed: usize,
        /// How many bytes were left.
        remaining: usize,
    },
    /// The first byte is not the tag of a supported message.
    #[error(
        "unknown pgoutput message tag {tag:?} (0x{0:02x}): expected one of B, C, O, R, Y, I, U, D, \
         T or M (protocol version 1; streaming and two-phase messages are not supported)",
        tag = char::from(*.0)
    )]
    UnknownTag(u8),
    /// Bytes were left over after a complete message.
    #[error("{count} unexpected bytes after the end of the {message} message")]
    TrailingBytes {
        /// The kind of message decoded.
        message: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// A string is not valid UTF-8 (the server encoding should be UTF-8).
    #[error("string in {message} message is not valid UTF-8")]
    InvalidUtf8 {
        /// The kind of message being decoded.
        message: &'static str,
        /// Where the bytes stopped being UTF-8.
        #[source]
        source: std::str::Utf8Error,
    },
    /// A string runs to the end of the data without a NUL terminator.
    #[error("string in {message} message has no NUL terminator")]
    MissingNul {
        /// The kind of message being decoded.
        message: &'static str,
    },
    /// A byte that selects between alternatives has none of the known values.
    #[error(
        "invalid {what} {:?} (0x{value:02x}) in {message} message: expected {expected}",
        char::from(*.value)
    )]
    InvalidValue {
        /// The kind of message being decoded.
        message: &'static str,
        /// What the byte is (`"tuple marker"`, `"column kind"`, …).
        what: &'static str,
        /// The byte received.
        value: u8,
        /// The values allowed there.
        expected: &'static str,
    },
    /// A count or length is negative.
    #[error("negative {what} {value} in {message} message")]
    NegativeLength {
        /// The kind of message being decoded.
        message: &'static str,
        /// What the number counts (`"column count"`, `"value length"`, …).
        what: &'static str,
        /// The number received.
        value: i32,
    },
}

/// Decodes one pgoutput message: the payload of one XLogData.
///
/// Values are slices of `data`, not copies. Streaming and two-phase messages (protocol version
/// 2 and later) are rejected as [`DecodeError::UnknownTag`]: the replication client asks for
/// protocol version 1, which never sends them.
pub fn decode(data: Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader {
        buf: data,
        message: "pgoutput",
    };
    let message = match r.u8()? {
        BEGIN_TAG => Message::Begin(begin(r.named("Begin"))?),
        COMMIT_TAG => Message::Commit(commit(r.named("Commit"))?),
        ORIGIN_TAG => Message::Origin(origin(r.named("Origin"))?),
        RELATION_TAG => Message::Relation(relation(r.named("Relation"))?),
        TYPE_TAG => Message::Type(type_message(r.named("Type"))?),
        INSERT_TAG => Message::Insert(insert(r.named("Insert"))?),
        UPDATE_TAG => Message::Update(update(r.named("Update"))?),
        DELETE_TAG => Message::Delete(delete(r.named("Delete"))?),
        TRUNCATE_TAG => Message::Truncate(truncate(r.named("Truncate"))?),
        MESSAGE_TAG => Message::Message(logical_message(r.named("Message"))?),
        tag => return Err(DecodeError::UnknownTag(tag)),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::TrailingBytes {
            message: r.message,
            count: r.buf.len(),
        });
    }
    Ok(message)
}

fn begin(r: &mut Reader) -> Result<Begin, DecodeError> {
    Ok(Begin {
        final_lsn: r.lsn()?,
        commit_time: r.timestamp()?,
        xid: Xid(r.u32()?),
    })
}

fn commit(r: &mut Reader) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8()?,
        commit_lsn: r.lsn()?,
        end_lsn: r.lsn()?,
        commit_time: r.timestamp()?,
    })
}

fn origin(r: &mut Reader) -> Result<Origin, DecodeError> {
    Ok(Origin {
        commit_lsn: r.lsn()?,
        name: r.string()?,
    })
}

fn relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let oid = r.oid()?;
    let namespace = r.string()?;
    let name = r.string()?;
    let replica_identity = match r.u8()? {
        REPLICA_IDENTITY_DEFAULT => ReplicaIdentity::Default,
        REPLICA_IDENTITY_NOTHING => ReplicaIdentity::Nothing,
        REPLICA_IDENTITY_FULL => ReplicaIdentity::Full,
        REPLICA_IDENTITY_INDEX => ReplicaIdentity::Index,
        other => return Err(r.invalid("replica identity", other, "d, n, f or i")),
    };
    let count = r.count16("column count")?;
    let mut columns = Vec::with_capacity(count.min(r.buf.len()));
    for _ in 0..count {
        columns.push(RelationColumn {
            flags: r.u8()?,
            name: r.string()?,
            type_oid: r.oid()?,
            type_modifier: r.i32()?,
        });
    }
    Ok(Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn type_message(r: &mut Reader) -> Result<TypeMessage, DecodeError> {
    Ok(TypeMessage {
        oid: r.oid()?,
        namespace: r.string()?,
        name: r.string()?,
    })
}

fn insert(r: &mut Reader) -> Result<Insert, DecodeError> {
    let relation = r.oid()?;
    let marker = r.u8()?;
    if marker != NEW_TUPLE_MARKER {
        return Err(r.invalid("tuple marker", marker, "N"));
    }
    Ok(Insert {
        relation,
        new: tuple(r)?,
    })
}

fn update(r: &mut Reader) -> Result<Update, DecodeError> {
    let relation = r.oid()?;
    let old = match r.u8()? {
        KEY_TUPLE_MARKER => Some(OldTuple::Key(tuple(r)?)),
        OLD_TUPLE_MARKER => Some(OldTuple::Full(tuple(r)?)),
        NEW_TUPLE_MARKER => None,
        other => return Err(r.invalid("tuple marker", other, "K, O or N")),
    };
    if old.is_some() {
        let marker = r.u8()?;
        if marker != NEW_TUPLE_MARKER {
            return Err(r.invalid("tuple marker", marker, "N"));
        }
    }
    Ok(Update {
        relation,
        old,
        new: tuple(r)?,
    })
}

fn delete(r: &mut Reader) -> Result<Delete, DecodeError> {
    let relation = r.oid()?;
    let old = match r.u8()? {
        KEY_TUPLE_MARKER => OldTuple::Key(tuple(r)?),
        OLD_TUPLE_MARKER => OldTuple::Full(tuple(r)?),
        other => return Err(r.invalid("tuple marker", other, "K or O")),
    };
    Ok(Delete { relation, old })
}

fn truncate(r: &mut Reader) -> Result<Truncate, DecodeError> {
    let count = r.count32("relation count")?;
    let options = r.u8()?;
    let mut relations = Vec::with_capacity(count.min(r.buf.len() / 4));
    for _ in 0..count {
        relations.push(r.oid()?);
    }
    Ok(Truncate { options, relations })
}

fn logical_message(r: &mut Reader) -> Result<LogicalMessage, DecodeError> {
    let flags = r.u8()?;
    let lsn = r.lsn()?;
    let prefix = r.string()?;
    let length = r.count32("content length")?;
    Ok(LogicalMessage {
        transactional: flags & 1 != 0,
        lsn,
        prefix,
        content: r.bytes(length)?,
    })
}

fn tuple(r: &mut Reader) -> Result<TupleData, DecodeError> {
    let count = r.count16("column count")?;
    let mut columns = Vec::with_capacity(count.min(r.buf.len()));
    for _ in 0..count {
        let value = match r.u8()? {
            NULL_COLUMN => ColumnValue::Null,
            UNCHANGED_TOAST_COLUMN => ColumnValue::UnchangedToast,
            TEXT_COLUMN => ColumnValue::Text(r.value()?),
            BINARY_COLUMN => ColumnValue::Binary(r.value()?),
            other => return Err(r.invalid("column kind", other, "n, u, t or b")),
        };
        columns.push(value);
    }
    Ok(TupleData { columns })
}

/// The unread part of a message, and the message's name for errors.
struct Reader {
    buf: Bytes,
    message: &'static str,
}

impl Reader {
    fn named(&mut self, message: &'static str) -> &mut Self {
        self.message = message;
        self
    }

    fn truncated(&self, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            message: self.message,
            needed,
            remaining: self.buf.len(),
        }
    }

    fn invalid(&self, what: &'static str, value: u8, expected: &'static str) -> DecodeError {
        DecodeError::InvalidValue {
            message: self.message,
            what,
            value,
            expected,
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.buf
            .try_get_u8()
            .map_err(|e| self.truncated(e.requested))
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        self.buf
            .try_get_i16()
            .map_err(|e| self.truncated(e.requested))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.buf
            .try_get_i32()
            .map_err(|e| self.truncated(e.requested))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.buf
            .try_get_u32()
            .map_err(|e| self.truncated(e.requested))
    }

    fn oid(&mut self) -> Result<Oid, DecodeError> {
        self.u32().map(Oid)
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        self.buf
            .try_get_u64()
            .map(Lsn)
            .map_err(|e| self.truncated(e.requested))
    }

    fn timestamp(&mut self) -> Result<PgTimestamp, DecodeError> {
        self.buf
            .try_get_i64()
            .map(PgTimestamp)
            .map_err(|e| self.truncated(e.requested))
    }

    /// An Int16 count, which must not be negative.
    fn count16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let count = self.i16()?;
        self.non_negative(what, count.into())
    }

    /// An Int32 count or length, which must not be negative.
    fn count32(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let count = self.i32()?;
        self.non_negative(what, count)
    }

    fn non_negative(&self, what: &'static str, value: i32) -> Result<usize, DecodeError> {
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            message: self.message,
            what,
            value,
        })
    }

    /// The next `len` bytes, shared with the input.
    fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(self.truncated(len));
        }
        Ok(self.buf.split_to(len))
    }

    /// A `t` or `b` column value: Int32 length, then the bytes.
    fn value(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.count32("value length")?;
        self.bytes(len)
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self) -> Result<PgStr, DecodeError> {
        let message = self.message;
        let len = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::MissingNul { message })?;
        let mut text = self.buf.split_to(len + 1);
        text.truncate(len);
        PgStr::from_utf8(text).map_err(|source| DecodeError::InvalidUtf8 { message, source })
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    /// Decodes a fixture written as one byte string per field.
    fn decode_parts(parts: &[&[u8]]) -> Result<Message, DecodeError> {
        decode(Bytes::from(parts.concat()))
    }

    fn text(value: &'static str) -> ColumnValue {
        ColumnValue::Text(Bytes::from_static(value.as_bytes()))
    }

    fn tuple(columns: Vec<ColumnValue>) -> TupleData {
        TupleData { columns }
    }

    const LSN: &[u8] = b"\x00\x00\x00\x16\xB3\x74\xD8\x48"; // 16/B374D848
    /// 2024-01-02 03:04:05.678901 UTC.
    const TIME: &[u8] = b"\x00\x02\xB0\xEC\x85\x20\x4F\x35";
    const USERS: &[u8] = b"\x00\x00\x40\x01"; // OID 16385

    #[test]
    fn begin() {
        let message = decode_parts(&[b"B", LSN, TIME, b"\x00\x00\x02\xEA"]).unwrap();
        let expected = Begin {
            final_lsn: Lsn(0x16_B374_D848),
            commit_time: PgTimestamp(757_479_845_678_901),
            xid: Xid(746),
        };
        assert_eq!(message, Message::Begin(expected.clone()));
        let utc = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::microseconds(678_901);
        assert_eq!(expected.commit_time.to_utc(), Some(utc));
        assert_eq!(PgTimestamp::from(utc), expected.commit_time);
    }

    #[test]
    fn commit() {
        let end = b"\x00\x00\x00\x16\xB3\x74\xD8\x78";
        let message = decode_parts(&[b"C", b"\x00", LSN, end, TIME]).unwrap();
        assert_eq!(
            message,
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: Lsn(0x16_B374_D878),
                commit_time: PgTimestamp(757_479_845_678_901),
            })
        );
    }

    #[test]
    fn origin() {
        let message = decode_parts(&[b"O", LSN, b"node_a\0"]).unwrap();
        assert_eq!(
            message,
            Message::Origin(Origin {
                commit_lsn: Lsn(0x16_B374_D848),
                name: "node_a".into(),
            })
        );
    }

    #[test]
    fn relation() {
        let message = decode_parts(&[
            b"R",
            USERS,
            b"public\0",
            b"users\0",
            b"f",
            b"\x00\x03",
            b"\x01",
            b"id\0",
            b"\x00\x00\x00\x14", // int8
            b"\xFF\xFF\xFF\xFF",
            b"\x00",
            b"name\0",
            b"\x00\x00\x04\x13", // varchar(64)
            b"\x00\x00\x00\x44",
            b"\x00",
            b"bio\0",
            b"\x00\x00\x00\x19", // text
            b"\xFF\xFF\xFF\xFF",
        ])
        .unwrap();
        let Message::Relation(relation) = message else {
            panic!("not a Relation: {message:?}");
        };
        let column = |flags, name, type_oid, type_modifier| RelationColumn {
            flags,
            name: PgStr::from(name),
            type_oid: Oid(type_oid),
            type_modifier,
        };
        assert_eq!(
            relation,
            Relation {
                oid: Oid(16385),
                namespace: "public".into(),
                name: "users".into(),
                replica_identity: ReplicaIdentity::Full,
                columns: vec![
                    column(1, "id", 20, -1),
                    column(0, "name", 1043, 68),
                    column(0, "bio", 25, -1),
                ],
            }
        );
        let keys: Vec<bool> = relation
            .columns
            .iter()
            .map(RelationColumn::is_key)
            .collect();
        assert_eq!(keys, [true, false, false]);
        assert_eq!(relation.namespace, "public");
        assert_eq!(relation.name.to_string(), "users");
    }

    #[test]
    fn relation_replica_identities() {
        for (byte, identity) in [
            (b"d", ReplicaIdentity::Default),
            (b"n", ReplicaIdentity::Nothing),
            (b"f", ReplicaIdentity::Full),
            (b"i", ReplicaIdentity::Index),
        ] {
            let message = decode_parts(&[b"R", USERS, b"\0", b"t\0", byte, b"\x00\x00"]).unwrap();
            let Message::Relation(relation) = message else {
                panic!("not a Relation: {message:?}");
            };
            assert_eq!(relation.replica_identity, identity);
            assert_eq!(relation.namespace, "");
        }
    }

    #[test]
    fn type_message() {
        let message = decode_parts(&[b"Y", b"\x00\x00\x40\x10", b"public\0", b"mood\0"]).unwrap();
        assert_eq!(
            message,
            Message::Type(TypeMessage {
                oid: Oid(16400),
                namespace: "public".into(),
                name: "mood".into(),
            })
        );
    }

    #[test]
    fn insert_with_text_null_and_unchanged_toast_columns() {
        let message = decode_parts(&[
            b"I",
            USERS,
            b"N",
            b"\x00\x03",
            b"t\x00\x00\x00\x01",
            b"7",
            b"n",
            b"u",
        ])
        .unwrap();
        assert_eq!(
            message,
            Message::Insert(Insert {
                relation: Oid(16385),
                new: tuple(vec![
                    text("7"),
                    ColumnValue::Null,
                    ColumnValue::UnchangedToast
                ]),
            })
        );
    }

    #[test]
    fn insert_with_binary_column_and_empty_tuple() {
        let binary = decode_parts(&[b"I", USERS, b"N", b"\x00\x01", b"b\x00\x00\x00\x02\xCA\xFE"]);
        assert_eq!(
            binary.unwrap(),
            Message::Insert(Insert {
                relation: Oid(16385),
                new: tuple(vec![ColumnValue::Binary(Bytes::from_static(b"\xCA\xFE"))]),
            })
        );
        let empty = decode_parts(&[b"I", USERS, b"N", b"\x00\x00"]);
        assert_eq!(
            empty.unwrap(),
            Message::Insert(Insert {
                relation: Oid(16385),
                new: tuple(vec![]),
            })
        );
    }

    #[test]
    fn update_with_old_row() {
        let message = decode_parts(&[
            b"U",
            USERS,
            b"O",
            b"\x00\x03",
            b"t\x00\x00\x00\x01",
            b"7",
            b"t\x00\x00\x00\x05",
            b"alice",
            b"t\x00\x00\x00\x03",
            b"old",
            b"N",
            b"\x00\x03",
            b"t\x00\x00\x00\x01",
            b"7",
            b"t\x00\x00\x00\x03",
            b"bob",
            b"u",
        ])
        .unwrap();
        let Message::Update(update) = message else {
            panic!("not an Update: {message:?}");
        };
        let old = tuple(vec![text("7"), text("alice"), text("old")]);
        assert_eq!(
            update,
            Update {
                relation: Oid(16385),
                old: Some(OldTuple::Full(old.clone())),
                new: tuple(vec![text("7"), text("bob"), ColumnValue::UnchangedToast]),
            }
        );
        assert_eq!(update.old.as_ref().map(OldTuple::tuple), Some(&old));
    }

    #[test]
    fn update_with_old_key_or_without_old_values() {
        let key = decode_parts(&[
            b"U",
            USERS,
            b"K",
            b"\x00\x02",
            b"t\x00\x00\x00\x01",
            b"7",
            b"n",
            b"N",
            b"\x00\x01",
            b"t\x00\x00\x00\x01",
            b"8",
        ]);
        assert_eq!(
            key.unwrap(),
            Message::Update(Update {
                relation: Oid(16385),
                old: Some(OldTuple::Key(tuple(vec![text("7"), ColumnValue::Null]))),
                new: tuple(vec![text("8")]),
            })
        );
        let new_only = decode_parts(&[b"U", USERS, b"N", b"\x00\x01", b"n"]);
        assert_eq!(
            new_only.unwrap(),
            Message::Update(Update {
                relation: Oid(16385),
                old: None,
                new: tuple(vec![ColumnValue::Null]),
            })
        );
    }

    #[test]
    fn delete_with_key() {
        let message = decode_parts(&[
            b"D",
            USERS,
            b"K",
            b"\x00\x03",
            b"t\x00\x00\x00\x01",
            b"7",
            b"n",
            b"n",
        ])
        .unwrap();
        assert_eq!(
            message,
            Message::Delete(Delete {
                relation: Oid(16385),
                old: OldTuple::Key(tuple(vec![text("7"), ColumnValue::Null, ColumnValue::Null])),
            })
        );
    }

    #[test]
    fn truncate_two_relations() {
        let message = decode_parts(&[
            b"T",
            b"\x00\x00\x00\x02",
            b"\x03",
            USERS,
            b"\x00\x00\x40\x02",
        ])
        .unwrap();
        let Message::Truncate(truncate) = message else {
            panic!("not a Truncate: {message:?}");
        };
        assert_eq!(truncate.relations, [Oid(16385), Oid(16386)]);
        assert!(truncate.cascade());
        assert!(truncate.restart_identity());
        let plain = Truncate {
            options: 0,
            relations: vec![],
        };
        assert!(!plain.cascade() && !plain.restart_identity());
    }

    #[test]
    fn transactional_message() {
        let content = br#"{"user_id":42}"#;
        let message =
            decode_parts(&[b"M", b"\x01", LSN, b"_bemi\0", b"\x00\x00\x00\x0E", content]).unwrap();
        assert_eq!(
            message,
            Message::Message(LogicalMessage {
                transactional: true,
                lsn: Lsn(0x16_B374_D848),
                prefix: "_bemi".into(),
                content: Bytes::from_static(content),
            })
        );
    }

    #[test]
    fn non_transactional_message() {
        let message = decode_parts(&[b"M", b"\x00", LSN, b"app\0", b"\x00\x00\x00\x00"]).unwrap();
        assert_eq!(
            message,
            Message::Message(LogicalMessage {
                transactional: false,
                lsn: Lsn(0x16_B374_D848),
                prefix: "app".into(),
                content: Bytes::new(),
            })
        );
    }

    #[test]
    fn values_share_the_input_buffer() {
        let data = Bytes::from([&b"I"[..], USERS, b"N\x00\x01t\x00\x00\x00\x03abc"].concat());
        let Ok(Message::Insert(insert)) = decode(data.clone()) else {
            panic!("not an Insert");
        };
        let [ColumnValue::Text(value)] = insert.new.columns.as_slice() else {
            panic!("not one text column: {insert:?}");
        };
        assert_eq!(value.as_ptr() as usize, data.as_ptr() as usize + 13);
    }

    #[test]
    fn error_messages() {
        let cases: [(&[&[u8]], &str); 10] = [
            (
                &[],
                "truncated pgoutput message: needed 1 more bytes but only 0 remain",
            ),
            (
                &[b"B", b"\x00\x00"],
                "truncated Begin message: needed 8 more bytes but only 2 remain",
            ),
            (
                &[b"S\x00\x00\x00\x01"],
                "unknown pgoutput message tag 'S' (0x53): expected one of B, C, O, R, Y, I, U, \
                 D, T or M (protocol version 1; streaming and two-phase messages are not \
                 supported)",
            ),
            (
                &[b"B", LSN, TIME, b"\x00\x00\x02\xEA", b"\x00"],
                "1 unexpected bytes after the end of the Begin message",
            ),
            (
                &[b"O", LSN, b"no terminator"],
                "string in Origin message has no NUL terminator",
            ),
            (
                &[b"O", LSN, b"\xFF\0"],
                "string in Origin message is not valid UTF-8",
            ),
            (
                &[b"I", USERS, b"N", b"\x00\x01", b"x"],
                "invalid column kind 'x' (0x78) in Insert message: expected n, u, t or b",
            ),
            (
                &[b"D", USERS, b"N", b"\x00\x00"],
                "invalid tuple marker 'N' (0x4e) in Delete message: expected K or O",
            ),
            (
                &[b"R", USERS, b"\0", b"t\0", b"x", b"\x00\x00"],
                "invalid replica identity 'x' (0x78) in Relation message: expected d, n, f or i",
            ),
            (
                &[b"I", USERS, b"N", b"\x00\x01", b"t\xFF\xFF\xFF\xFF"],
                "negative value length -1 in Insert message",
            ),
        ];
        for (parts, expected) in cases {
            let error = decode_parts(parts).unwrap_err();
            assert_eq!(error.to_string(), expected, "{error:?}");
        }
    }

    #[test]
    fn huge_counts_are_truncation_errors() {
        let truncate = decode_parts(&[b"T", b"\x7F\xFF\xFF\xFF", b"\x00"]);
        assert_eq!(
            truncate.unwrap_err(),
            DecodeError::Truncated {
                message: "Truncate",
                needed: 4,
                remaining: 0
            }
        );
        let tuple = decode_parts(&[b"I", USERS, b"N", b"\x7F\xFF", b"n"]).unwrap_err();
        assert!(matches!(tuple, DecodeError::Truncated { .. }), "{tuple:?}");
    }
}
