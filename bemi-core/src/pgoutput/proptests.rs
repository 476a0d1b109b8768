//! Property tests: the decoder inverts the test encoder for every kind of message, and no input
//! (truncated, extended or random) makes it panic.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use super::encode::encode;
use super::*;
use crate::{Lsn, Oid, Xid};

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn timestamp() -> impl Strategy<Value = PgTimestamp> {
    any::<i64>().prop_map(PgTimestamp)
}

fn oid() -> impl Strategy<Value = Oid> {
    any::<u32>().prop_map(Oid)
}

/// Any string without NUL (which would end it on the wire), including non-ASCII ones.
fn pg_str() -> impl Strategy<Value = PgStr> {
    prop_oneof![
        "[a-z_][a-z0-9_]{0,20}",
        "[^\u{0}]{0,12}",
        Just(String::new()),
        Just("tâche_été_日本".to_owned()),
    ]
    .prop_map(PgStr::from)
}

fn raw_bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn column_value() -> impl Strategy<Value = ColumnValue> {
    prop_oneof![
        Just(ColumnValue::Null),
        Just(ColumnValue::UnchangedToast),
        raw_bytes().prop_map(ColumnValue::Text),
        raw_bytes().prop_map(ColumnValue::Binary),
    ]
}

fn tuple() -> impl Strategy<Value = TupleData> {
    vec(column_value(), 0..8).prop_map(|columns| TupleData { columns })
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple().prop_map(OldTuple::Key),
        tuple().prop_map(OldTuple::Full)
    ]
}

fn replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn relation_column() -> impl Strategy<Value = RelationColumn> {
    (any::<u8>(), pg_str(), oid(), any::<i32>()).prop_map(
        |(flags, name, type_oid, type_modifier)| RelationColumn {
            flags,
            name,
            type_oid,
            type_modifier,
        },
    )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (lsn(), timestamp(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            Message::Begin(Begin {
                final_lsn,
                commit_time,
                xid: Xid(xid),
            })
        }),
        (any::<u8>(), lsn(), lsn(), timestamp()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time)| {
                Message::Commit(Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                })
            }
        ),
        (lsn(), pg_str())
            .prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name })),
        (
            oid(),
            pg_str(),
            pg_str(),
            replica_identity(),
            vec(relation_column(), 0..6)
        )
            .prop_map(|(oid, namespace, name, replica_identity, columns)| {
                Message::Relation(Relation {
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (oid(), pg_str(), pg_str()).prop_map(|(oid, namespace, name)| {
            Message::Type(TypeMessage {
                oid,
                namespace,
                name,
            })
        }),
        (oid(), tuple()).prop_map(|(relation, new)| Message::Insert(Insert { relation, new })),
        (oid(), proptest::option::of(old_tuple()), tuple())
            .prop_map(|(relation, old, new)| Message::Update(Update { relation, old, new })),
        (oid(), old_tuple()).prop_map(|(relation, old)| Message::Delete(Delete { relation, old })),
        (any::<u8>(), vec(oid(), 0..6))
            .prop_map(|(options, relations)| Message::Truncate(Truncate { options, relations })),
        (any::<bool>(), lsn(), pg_str(), raw_bytes()).prop_map(
            |(transactional, lsn, prefix, content)| {
                Message::Message(LogicalMessage {
                    transactional,
                    lsn,
                    prefix,
                    content,
                })
            }
        ),
    ]
}

proptest! {
    #[test]
    fn decode_inverts_encode(message in message()) {
        prop_assert_eq!(decode(encode(&message)).ok(), Some(message));
    }

    #[test]
    fn every_strict_prefix_is_an_error(message in message()) {
        let data = encode(&message);
        for len in 0..data.len() {
            prop_assert!(decode(data.slice(..len)).is_err(), "prefix of {} bytes decoded", len);
        }
    }

    #[test]
    fn extra_bytes_are_an_error(message in message(), extra in vec(any::<u8>(), 1..8)) {
        let mut data = encode(&message).to_vec();
        data.extend_from_slice(&extra);
        let is_trailing_bytes = matches!(
            decode(Bytes::from(data)),
            Err(DecodeError::TrailingBytes { count, .. }) if count == extra.len()
        );
        prop_assert!(is_trailing_bytes);
    }

    #[test]
    fn random_bytes_never_panic(data in vec(any::<u8>(), 0..256)) {
        let _ = decode(Bytes::from(data));
    }

    #[test]
    fn random_bodies_after_a_known_tag_never_panic(
        tag in proptest::sample::select(&b"BCORYIUDTM"[..]),
        body in vec(any::<u8>(), 0..256),
    ) {
        let mut data = vec![tag];
        data.extend_from_slice(&body);
        let _ = decode(Bytes::from(data));
    }
}
