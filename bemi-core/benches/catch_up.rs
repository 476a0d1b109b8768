//! Catch-up after downtime into a JSON-lines file, against `pg_recvlogical` draining the same
//! WAL, on one throwaway PostgreSQL with production durability (`fsync`, `full_page_writes`
//! and `synchronous_commit` on).
//!
//! A backlog of `BEMI_BENCH_CHANGES` inserted rows (default 1,000,000) in transactions of
//! `BEMI_BENCH_ROWS_PER_TRANSACTION` (default 1, the workload of the end-to-end benchmark),
//! committed by 8 connections while no consumer
//! runs, onto two slots created before it. Then, each timed:
//!
//! 1. `pg_recvlogical` drains one slot to `/dev/null` (the walsender's rate: the reference);
//! 2. the server alone: `COPY (SELECT … FROM pg_logical_slot_peek_binary_changes(…)) TO
//!    '/dev/null'` on the other slot (what catch-up cannot beat);
//! 3. the tracker with [`catch_up`](bemi_core::TrackerBuilder::catch_up) drains the other slot
//!    into a [`JsonLinesFileSink`] (fsync per batch, batches of `BEMI_BENCH_BATCH`, default
//!    10,000), until the file holds the backlog.
//!
//! Reported: the rates, the tracker's over `pg_recvlogical`'s, and this process's peak RSS (the
//! tracker, its decoder and sink, the runtime; not the server).
//!
//! ```text
//! cargo bench -p bemi-core --bench catch_up
//! BEMI_BENCH_ROWS_PER_TRANSACTION=10 cargo bench -p bemi-core --bench catch_up
//! BEMI_BENCH_CHANGES=100000 cargo bench -p bemi-core --bench catch_up
//! ```
//!
//! Without `--bench` (as under `cargo test --benches`) it makes a short smoke run.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use bemi_core::sink::JsonLinesFileSink;
use bemi_core::{ConnectOptions, Tracker};
use bemi_testkit::drain::{self, rate};

/// Connections that commit the backlog.
const BACKLOG_WRITERS: u64 = 8;

fn main() {
    let smoke = !std::env::args().any(|arg| arg == "--bench");
    let number = |name: &str, default: u64| -> u64 {
        std::env::var(name).map_or(default, |v| {
            v.replace(['_', ','], "")
                .parse()
                .unwrap_or_else(|_| panic!("{name}: a number"))
        })
    };
    let changes = number("BEMI_BENCH_CHANGES", if smoke { 2_000 } else { 1_000_000 });
    let per_transaction = number("BEMI_BENCH_ROWS_PER_TRANSACTION", 1).max(1);
    let batch = number("BEMI_BENCH_BATCH", 10_000) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(changes, per_transaction, batch));
}

async fn run(changes: u64, per_transaction: u64, batch: usize) {
    let pg = drain::durable_server(&[("max_wal_size", "4GB")]).await;
    let source: ConnectOptions = pg.url("postgres").parse().expect("url");
    let sql = source.connect().await.expect("connect");
    // One statement each: a slot cannot be created in a transaction that wrote.
    for statement in [
        "CREATE TABLE backlog (id int8 PRIMARY KEY, label text, n int4, at timestamptz)",
        "CREATE PUBLICATION bench FOR TABLE backlog",
        "SELECT pg_create_logical_replication_slot('reference', 'pgoutput')",
        "SELECT pg_create_logical_replication_slot('tracker', 'pgoutput')",
    ] {
        sql.batch_execute(statement).await.expect(statement);
    }
    println!(
        "PostgreSQL {}, fsync and synchronous_commit on; {changes} changes in transactions of \
         {per_transaction}",
        pg.version()
    );

    let began = Instant::now();
    commit_backlog(&source, changes, per_transaction).await;
    let end = drain::wal_end(&sql).await;
    println!(
        "backlog committed in {:.1?} (WAL to {end})",
        began.elapsed()
    );

    let reference = tokio::task::block_in_place(|| {
        drain::pg_recvlogical(&pg, "postgres", "reference", "bench", &end)
    });
    println!(
        "pg_recvlogical: {:.2?}, {:.0} changes/s",
        reference,
        rate(changes, reference)
    );

    let peek = peek_to_dev_null(&sql, &end).await;
    println!(
        "the server alone (peek into /dev/null): {:.2?}, {:.0} changes/s",
        peek,
        rate(changes, peek)
    );

    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("changes.jsonl");
    let started = Instant::now();
    let tracker = Tracker::builder(source.clone(), JsonLinesFileSink::new(&path))
        .slot("tracker")
        .publication("bench")
        .batch_size(batch)
        .create_missing(false)
        .catch_up(0)
        .spawn();
    let progress = tracker
        .wait_for(|p| p.changes >= changes || p.last_error.is_some())
        .await;
    let took = started.elapsed();
    tracker.shutdown().await.expect("clean stop");
    assert_eq!(progress.changes, changes, "{progress:?}");
    let bytes = std::fs::metadata(&path).expect("the file").len();
    println!(
        "catch-up into JSON lines: {took:.2?}, {:.0} changes/s ({:.0} MB written)",
        rate(changes, took),
        bytes as f64 / 1e6
    );
    println!(
        "catch-up / pg_recvlogical: ×{:.2}; peak RSS {:.1} MB",
        reference.as_secs_f64() / took.as_secs_f64(),
        drain::peak_rss_kib() as f64 / 1024.0
    );
}

/// Commits `changes` rows into `backlog` in transactions of `per_transaction`, from 8
/// connections.
async fn commit_backlog(source: &ConnectOptions, changes: u64, per_transaction: u64) {
    let transactions = changes.div_ceil(per_transaction);
    let writers = (0..BACKLOG_WRITERS).map(|writer| {
        let source = source.clone();
        tokio::spawn(async move {
            let sql = source.connect().await.expect("connect");
            let insert = sql
                .prepare(
                    "INSERT INTO backlog SELECT g, md5(g::text), 1, now() \
                     FROM generate_series($1::int8, $2::int8) g",
                )
                .await
                .expect("prepare");
            let mut txn = writer;
            while txn < transactions {
                let first = (txn * per_transaction) as i64;
                let last = (((txn + 1) * per_transaction).min(changes) - 1) as i64;
                sql.execute(&insert, &[&first, &last])
                    .await
                    .expect("insert");
                txn += BACKLOG_WRITERS;
            }
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.expect("writer");
    }
}

/// How long the server takes to decode the tracker's slot up to `end` and write the messages
/// to `/dev/null` itself (a peek: the slot does not move).
async fn peek_to_dev_null(sql: &tokio_postgres::Client, end: &str) -> Duration {
    let started = Instant::now();
    sql.batch_execute(&format!(
        "COPY (SELECT lsn, data FROM pg_logical_slot_peek_binary_changes('tracker', '{end}', \
         NULL, 'proto_version', '1', 'publication_names', 'bench', 'messages', 'true')) \
         TO '/dev/null'"
    ))
    .await
    .expect("peek");
    started.elapsed()
}
