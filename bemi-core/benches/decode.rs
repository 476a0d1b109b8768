//! Micro-benchmarks of the decode path without a server: pgoutput messages, value conversion,
//! a transaction through the row decoder and the stitcher, and the same transaction under ten
//! filter rules against none, in the same run.
//!
//! ```text
//! cargo bench -p bemi-core --bench decode
//! cargo bench -p bemi-core --bench decode -- rules/   # the rules alone
//! ```
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use std::sync::Arc;

use bemi_core::pgoutput::{
    decode, encode, Begin, ColumnValue, Commit, Insert, LogicalMessage, Message, PgTimestamp,
    Relation, RelationColumn, ReplicaIdentity, TupleData,
};
use bemi_core::rules::{HashKey, Rules, TableRule};
use bemi_core::stitch::Stitcher;
use bemi_core::value::text_to_json;
use bemi_core::{Change, Lsn, Oid, Operation, RowDecoder, Xid};

const TABLE: Oid = Oid(16_384);

/// An `orders` row of ten columns, as text: (name, type OID, value).
const ORDER: [(&str, u32, &str); 10] = [
    ("id", 20, "90210"),
    ("customer_id", 23, "4711"),
    ("status", 25, "paid"),
    ("total", 1700, "1234.50"),
    ("created_at", 1184, "2026-11-30 09:15:27.123456+00"),
    ("updated_at", 1184, "2026-12-01 17:02:11.5+00"),
    ("tags", 1009, "{gift,express,\"two words\"}"),
    (
        "meta",
        3802,
        r#"{"channel": "web", "coupon": null, "items": [1, 2, 3]}"#,
    ),
    ("note", 25, "leave at the \"back\" door\nthanks"),
    ("active", 16, "t"),
];

fn relation() -> Message {
    Message::Relation(Relation {
        oid: TABLE,
        namespace: "public".into(),
        name: "orders".into(),
        replica_identity: ReplicaIdentity::Full,
        columns: ORDER
            .iter()
            .map(|&(name, type_oid, _)| RelationColumn {
                flags: 1,
                name: name.into(),
                type_oid: Oid(type_oid),
                type_modifier: -1,
            })
            .collect(),
    })
}

fn insert() -> Message {
    Message::Insert(Insert {
        relation: TABLE,
        new: TupleData {
            columns: ORDER
                .iter()
                .map(|&(_, _, text)| ColumnValue::Text(Bytes::from_static(text.as_bytes())))
                .collect(),
        },
    })
}

/// One transaction as the server sends it: Begin, a context message, `rows` Inserts, Commit.
fn transaction(rows: usize, final_lsn: u64) -> Vec<Bytes> {
    let time = PgTimestamp(817_000_000_000_000);
    let mut messages = vec![
        Message::Begin(Begin {
            final_lsn: Lsn(final_lsn),
            commit_time: time,
            xid: Xid(731),
        }),
        Message::Message(LogicalMessage {
            transactional: true,
            lsn: Lsn(final_lsn - 1_000),
            prefix: "_bemi".into(),
            content: Bytes::from_static(br#"{"user_id": 42, "endpoint": "POST /orders"}"#),
        }),
    ];
    messages.extend((0..rows).map(|_| insert()));
    messages.push(Message::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn(final_lsn),
        end_lsn: Lsn(final_lsn + 48),
        commit_time: time,
    }));
    messages.iter().map(encode).collect()
}

fn pgoutput(c: &mut Criterion) {
    let bytes = encode(&insert());
    let mut group = c.benchmark_group("pgoutput");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("decode an Insert of 10 columns", |b| {
        b.iter(|| decode(bytes.clone()).expect("valid"))
    });
    group.finish();
}

fn values(c: &mut Criterion) {
    let mut group = c.benchmark_group("value");
    let mut out = String::with_capacity(256);
    for &(name, type_oid, text) in &ORDER {
        group.bench_function(format!("{name} ({type_oid})"), |b| {
            b.iter(|| {
                out.clear();
                text_to_json(Oid(type_oid), text, &mut out);
            })
        });
    }
    group.finish();
}

fn rows(c: &mut Criterion) {
    const ROWS: usize = 100;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let keys = |_: Oid, _: Lsn| vec!["id".to_owned()];
    let mut group = c.benchmark_group("rows");
    group.throughput(Throughput::Elements(ROWS as u64));

    group.bench_function("decode a transaction of 100 rows", |b| {
        let mut decoder = RowDecoder::new(keys);
        runtime
            .block_on(decoder.decode(relation()))
            .expect("relation");
        let messages = transaction(ROWS, 0x1_0000_0000);
        b.iter(|| {
            runtime.block_on(async {
                for bytes in &messages {
                    let message = decode(bytes.clone()).expect("valid");
                    decoder.decode(message).await.expect("decodes");
                }
            })
        })
    });

    group.bench_function("decode and stitch a transaction of 100 rows", |b| {
        let mut decoder = RowDecoder::new(keys);
        runtime
            .block_on(decoder.decode(relation()))
            .expect("relation");
        let mut final_lsn = 0x1_0000_0000;
        let received_at = chrono::Utc::now();
        b.iter_batched(
            || {
                // Each transaction commits after the previous one, as in the stream.
                final_lsn += 0x10_0000;
                (
                    transaction(ROWS, final_lsn),
                    Lsn(final_lsn),
                    Stitcher::new("shop"),
                    Vec::<Change>::with_capacity(ROWS),
                )
            },
            |(messages, position, mut stitcher, mut out)| {
                runtime.block_on(async {
                    for bytes in messages {
                        let message = decode(bytes).expect("valid");
                        if let Some(event) = decoder.decode(message).await.expect("decodes") {
                            stitcher.push(event, position, received_at, &mut out);
                        }
                    }
                });
                assert_eq!(out.len(), ROWS);
                out
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// What the rules do to the `orders` rows.
#[derive(Clone, Copy)]
enum Orders {
    /// Nothing: the rules matching `orders` name columns it does not have.
    Unchanged,
    /// `updated_at` ignored, `note` masked.
    Filtered,
    /// Filtered, and `customer_id` hashed.
    Hashed,
}

/// Ten rules, as a deployment might have them: tables tracked and ignored by globs, and rules
/// for several tables, three of which match `orders` (see [`Orders`]).
fn ten_rules(orders: Orders) -> Rules {
    let (ignored, masked) = match orders {
        Orders::Unchanged => ("deleted_at", "secret"),
        Orders::Filtered | Orders::Hashed => ("updated_at", "note"),
    };
    let hashed = match orders {
        Orders::Hashed => "customer_id",
        Orders::Unchanged | Orders::Filtered => "email",
    };
    Rules::new()
        .track("public.*")
        .track("billing.*")
        .ignore_table("public.sessions")
        .ignore_table("public.*_cache")
        .table(TableRule::new("public.orders").ignore([ignored]))
        .table(TableRule::new("public.ord*").mask([masked]).hash([hashed]))
        .table(TableRule::new("public.*").operations([
            Operation::Create,
            Operation::Update,
            Operation::Delete,
        ]))
        .table(
            TableRule::new("public.users")
                .mask(["password_digest"])
                .hash(["email"]),
        )
        .table(TableRule::new("billing.*").mask(["card_*"]))
        .table(TableRule::new("*.audit_log").operations([Operation::Create]))
        .hash_key(HashKey::new("a benchmark key of 32 bytes ....").expect("a key"))
}

/// Decodes the messages of one transaction; returns how many events came out.
fn decode_all<K: bemi_core::KeyLookup>(
    runtime: &tokio::runtime::Runtime,
    decoder: &mut RowDecoder<K>,
    messages: &[Bytes],
) -> usize {
    runtime.block_on(async {
        let mut events = 0;
        for bytes in messages {
            let message = decode(bytes.clone()).expect("valid");
            events += usize::from(decoder.decode(message).await.expect("decodes").is_some());
        }
        events
    })
}

/// A transaction of 100 rows through the decoder with no rules and with ten rules (leaving the
/// rows as they are, filtering two columns, also hashing one): each in criterion, then all in
/// rotating rounds of the same run, printing the throughput of each against no rules (the
/// median of the rounds' ratios, which a machine's drift between benchmarks does not skew).
fn rules(c: &mut Criterion) {
    const ROWS: usize = 100;
    const ROUNDS: usize = 41;
    const TRANSACTIONS_PER_ROUND: usize = 100;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let keys = |_: Oid, _: Lsn| vec!["id".to_owned()];
    let messages = transaction(ROWS, 0x1_0000_0000);
    let cases = [
        ("no rules", Rules::new()),
        ("ten rules, rows unchanged", ten_rules(Orders::Unchanged)),
        (
            "ten rules, a column ignored and one masked",
            ten_rules(Orders::Filtered),
        ),
        ("ten rules, also a column hashed", ten_rules(Orders::Hashed)),
    ];
    let mut decoders: Vec<(&str, RowDecoder<_>)> = cases
        .into_iter()
        .map(|(name, rules)| {
            let mut decoder = RowDecoder::new(keys).rules(Arc::new(rules));
            runtime
                .block_on(decoder.decode(relation()))
                .expect("relation");
            (name, decoder)
        })
        .collect();
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(ROWS as u64));
    for (name, decoder) in &mut decoders {
        group.bench_function(format!("decode a transaction of 100 rows, {name}"), |b| {
            b.iter(|| assert_eq!(decode_all(&runtime, decoder, &messages), ROWS + 3))
        });
    }
    group.finish();

    let mut ratios = vec![Vec::with_capacity(ROUNDS); decoders.len()];
    for _ in 0..ROUNDS {
        let times: Vec<f64> = decoders
            .iter_mut()
            .map(|(_, decoder)| {
                let began = std::time::Instant::now();
                for _ in 0..TRANSACTIONS_PER_ROUND {
                    decode_all(&runtime, decoder, &messages);
                }
                began.elapsed().as_secs_f64()
            })
            .collect();
        for (ratios, time) in ratios.iter_mut().zip(&times) {
            ratios.push(times[0] / time);
        }
    }
    println!("rules: throughput against no rules, median of {ROUNDS} rotating rounds:");
    for ((name, _), mut ratios) in decoders.iter().zip(ratios).skip(1) {
        ratios.sort_by(f64::total_cmp);
        println!("  {name}: {:.3}x", ratios[ROUNDS / 2]);
    }
}

criterion_group!(benches, pgoutput, values, rows, rules);
criterion_main!(benches);
