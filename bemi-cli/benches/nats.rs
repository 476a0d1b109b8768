//! Capture → NATS JetStream → `bemi store`, against references measured in the same run:
//! the tracker publishing to JetStream against `pg_recvlogical` draining the same WAL through
//! its own slot (one-row transactions, then one bulk transaction) and against JetStream taking
//! the very messages the tracker published from a bare publisher (the server's own limit on
//! this machine) and against the tracker writing the same changes as JSON lines to nowhere (its
//! own limit: decoding and stitching, the sink costing next to nothing), and the `bemi` binary's
//! `store` draining the stream into a `changes` table against the tracker storing the same
//! changes directly (`PostgresSink`).
//!
//! ```text
//! cargo bench -p bemi-cli --bench nats                  # 20,000 one-row transactions, 200,000-row bulk
//! cargo bench -p bemi-cli --bench nats -- 5000 50000    # a quicker run
//! ```
#![allow(clippy::print_stdout)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bemi_core::reexports::async_nats::{self, jetstream};
use bemi_core::setup::SourceSetup;
use bemi_core::sink::{JsonLinesSink, NatsOptions, NatsSink, PostgresSink};
use bemi_core::ConnectOptions;
use bemi_temp_postgres::TempPostgres;
use bemi_testkit::drain::{self, rate};
use bemi_testkit::nats::NatsServer;

fn main() {
    let numbers: Vec<i64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let one_row = numbers.first().copied().unwrap_or(20_000);
    let bulk = numbers.get(1).copied().unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(one_row, bulk));
}

async fn run(one_row: i64, bulk: i64) {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .expect("join")
        .expect("throwaway PostgreSQL");
    let nats = NatsServer::start();
    let source: ConnectOptions = pg.url("postgres").parse().expect("url");
    let sql = source.connect().await.expect("connect");
    // One statement each: CREATE DATABASE cannot run in the implicit transaction of a batch.
    for statement in [
        "CREATE DATABASE direct",
        "CREATE DATABASE stored",
        "CREATE TABLE t (id int8 PRIMARY KEY, label text, n int4, at timestamptz)",
    ] {
        sql.batch_execute(statement).await.expect(statement);
    }
    // The direct reference reads everything, from before the first workload.
    SourceSetup::new("direct", "bench")
        .prepare(&sql)
        .await
        .expect("slot");

    let mut rows = Vec::new();
    for (name, slot, count, is_bulk) in [
        ("one-row transactions", "one_row", one_row, false),
        ("one bulk transaction", "bulk", bulk, true),
    ] {
        for tracker_slot in [format!("nats_{slot}"), format!("nowhere_{slot}")] {
            SourceSetup::new(tracker_slot, "bench")
                .prepare(&sql)
                .await
                .expect("slot");
        }
        sql.query(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&format!("reference_{slot}")],
        )
        .await
        .expect("reference slot");
        let first: i64 = sql
            .query_one("SELECT coalesce(max(id), 0) FROM t", &[])
            .await
            .expect("max")
            .get(0);
        if is_bulk {
            sql.batch_execute(&format!(
                "BEGIN; SELECT pg_logical_emit_message(true, '_bemi', '{{\"job\": \"import\"}}');
                 INSERT INTO t SELECT g, md5(g::text), g::int4, now()
                 FROM generate_series({}, {}) g; COMMIT;",
                first + 1,
                first + count
            ))
            .await
            .expect("bulk");
        } else {
            let insert = sql
                .prepare("INSERT INTO t VALUES ($1::int8, md5($1::int8::text), 1, now())")
                .await
                .expect("prepare");
            for id in first + 1..=first + count {
                sql.execute(&insert, &[&id]).await.expect("insert");
            }
        }
        let end = drain::wal_end(&sql).await;
        let reference =
            drain::pg_recvlogical(&pg, "postgres", &format!("reference_{slot}"), "bench", &end);

        let published = drain::tracker(
            &source,
            &format!("nats_{slot}"),
            "bench",
            NatsSink::new(NatsOptions::new(nats.url())),
            count as u64,
        )
        .await;
        let ingest = time_bare_publisher(&nats.url(), slot, count as usize).await;
        let nowhere = drain::tracker(
            &source,
            &format!("nowhere_{slot}"),
            "bench",
            JsonLinesSink::new(tokio::io::sink()),
            count as u64,
        )
        .await;
        rows.push((name, count, reference, published, ingest, nowhere));
    }

    let total = one_row + bulk;
    let direct_db = source.clone().with_dbname("direct");
    let direct = drain::tracker(
        &source,
        "direct",
        "bench",
        PostgresSink::connect(&direct_db).expect("sink"),
        total as u64,
    )
    .await;
    assert_eq!(count(&direct_db).await, total);

    let stored_db = source.clone().with_dbname("stored");
    let store = Instant::now();
    let mut process = Command::new(env!("CARGO_BIN_EXE_bemi"))
        .args(["store", "--from", &nats.url(), "--destination-url"])
        .arg(pg.url("stored"))
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("bemi store starts");
    while count(&stored_db).await < total {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let store = store.elapsed();
    let _ = process.kill();
    let _ = process.wait();
    assert_eq!(count(&stored_db).await, total);

    for (name, changes, reference, published, ingest, nowhere) in rows {
        println!(
            "{name}: {changes} changes; pg_recvlogical {:.2?} ({:.0}/s); JetStream from a bare \
             publisher {:.2?} ({:.0}/s); tracker → JSON lines to nowhere {:.2?} ({:.0}/s); \
             tracker → JetStream {:.2?} ({:.0}/s): {:.2}× pg_recvlogical, {:.2}× the bare \
             publisher, {:.2}× the tracker to nowhere",
            reference,
            rate(changes as u64, reference),
            ingest,
            rate(changes as u64, ingest),
            nowhere,
            rate(changes as u64, nowhere),
            published,
            rate(changes as u64, published),
            rate(changes as u64, published) / rate(changes as u64, reference),
            rate(changes as u64, published) / rate(changes as u64, ingest),
            rate(changes as u64, published) / rate(changes as u64, nowhere),
        );
    }
    println!(
        "into changes, {total} changes: tracker → PostgresSink {:.2?} ({:.0}/s); bemi store from \
         JetStream {:.2?} ({:.0}/s): {:.2}× the direct rate",
        direct,
        rate(total as u64, direct),
        store,
        rate(total as u64, store),
        rate(total as u64, store) / rate(total as u64, direct)
    );
}

/// How long JetStream takes to store the last `changes` messages of the tracker's stream when a
/// bare publisher sends them (same subjects under another prefix, same headers and message ids,
/// batches of the tracker's size with every acknowledgement awaited) into a stream made like
/// the tracker's: the server's own limit for this workload on this machine.
async fn time_bare_publisher(url: &str, name: &str, changes: usize) -> Duration {
    let client = async_nats::connect(url).await.expect("NATS");
    let js = jetstream::new(client);
    let mut stream = js.get_stream("BEMI").await.expect("the tracker's stream");
    let last = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: last + 1 - changes as u64,
            },
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = Vec::with_capacity(changes);
    while messages.len() < changes {
        let mut batch = consumer
            .fetch()
            .max_messages((changes - messages.len()).min(10_000))
            .messages()
            .await
            .expect("fetch");
        while let Some(message) = futures_util::StreamExt::next(&mut batch).await {
            messages.push(message.expect("message").message);
        }
    }
    let prefix = format!("bare_{name}");
    js.create_stream(jetstream::stream::Config {
        name: prefix.to_uppercase(),
        subjects: vec![format!("{prefix}.>")],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("stream");

    let started = Instant::now();
    for batch in messages.chunks(1_000) {
        let mut acks = Vec::with_capacity(batch.len());
        for message in batch {
            let subject = message.subject.replacen("bemi", &prefix, 1);
            let mut publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(message.payload.clone());
            for (header, values) in message.headers.iter().flat_map(|h| h.iter()) {
                for value in values {
                    publish = publish.header(header.clone(), value.clone());
                }
            }
            acks.push(js.send_publish(subject, publish).await.expect("publish"));
        }
        for ack in acks {
            ack.await.expect("acknowledged");
        }
    }
    started.elapsed()
}

async fn count(db: &ConnectOptions) -> i64 {
    let client = db.connect().await.expect("connect");
    client
        .query_one("SELECT count(*) FROM changes", &[])
        .await
        .map_or(0, |row| row.get(0))
}
