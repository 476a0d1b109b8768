//! One large transaction end to end: time and peak memory of the tracker storing it into a
//! `changes` table, against `pg_recvlogical` draining the same WAL through its own slot.
//!
//! ```text
//! cargo bench -p bemi-core --bench large_transaction            # 1,000,000 rows
//! cargo bench -p bemi-core --bench large_transaction -- 200000  # fewer rows
//! ```
//!
//! Peak memory is this process's high-water mark (`VmHWM`): the tracker, its decoder and sink,
//! and the runtime. The server is a separate process and is not counted.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use bemi_core::setup::SourceSetup;
use bemi_core::sink::{JsonLinesSink, PostgresSink};
use bemi_core::ConnectOptions;
use bemi_temp_postgres::TempPostgres;
use bemi_testkit::drain;

fn main() {
    let rows: i64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(rows));
}

async fn run(rows: i64) {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .expect("join")
        .expect("throwaway PostgreSQL");
    let source: ConnectOptions = pg.url("postgres").parse().expect("url");
    let sql = source.connect().await.expect("connect");
    sql.batch_execute("CREATE DATABASE audit")
        .await
        .expect("database");
    sql.batch_execute(
        "CREATE TABLE big (id int8 PRIMARY KEY, label text, n int4, at timestamptz, amount numeric);",
    )
    .await
    .expect("schema");
    SourceSetup::new("bench", "bench")
        .prepare(&sql)
        .await
        .expect("tracker slot");
    SourceSetup::new("decode_only", "bench")
        .prepare(&sql)
        .await
        .expect("decode-only slot");
    sql.query(
        "SELECT pg_create_logical_replication_slot('reference', 'pgoutput')",
        &[],
    )
    .await
    .expect("reference slot");

    let write = Instant::now();
    sql.batch_execute(&format!(
        "BEGIN;
         SELECT pg_logical_emit_message(true, '_bemi', '{{\"job\": \"import\"}}');
         INSERT INTO big SELECT g, md5(g::text), g::int4, now(), g * 1.25 FROM generate_series(1, {rows}) g;
         COMMIT;"
    ))
    .await
    .expect("the large transaction");
    let end = drain::wal_end(&sql).await;
    println!(
        "wrote {rows} rows in one transaction in {:.1?}",
        write.elapsed()
    );

    // Reference: pg_recvlogical decodes the same WAL and throws it away.
    let reference = drain::pg_recvlogical(&pg, "postgres", "reference", "bench", &end);

    // The tracker without storage: decode and stitch, then discard (JSON lines to nowhere).
    let nowhere = JsonLinesSink::new(tokio::io::sink());
    let decode_only = drain::tracker(&source, "decode_only", "bench", nowhere, rows as u64).await;

    // The tracker: decode, stitch and store every row into audit.public.changes.
    let destination = source.clone().with_dbname("audit");
    let sink = PostgresSink::connect(&destination).expect("sink");
    let tracked = drain::tracker(&source, "bench", "bench", sink, rows as u64).await;
    let stored: i64 = destination
        .connect()
        .await
        .expect("destination")
        .query_one("SELECT count(*) FROM changes", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, rows);

    let peak = drain::peak_rss_kib();
    println!(
        "pg_recvlogical: {:.1?} ({:.0} rows/s)",
        reference,
        rows as f64 / secs(reference)
    );
    println!(
        "tracker -> discard (decode, stitch, serialize): {:.1?} ({:.0} rows/s), {:.2}x the reference",
        decode_only,
        rows as f64 / secs(decode_only),
        secs(decode_only) / secs(reference)
    );
    println!(
        "tracker -> changes table: {:.1?} ({:.0} rows/s), {:.1}x the reference",
        tracked,
        rows as f64 / secs(tracked),
        secs(tracked) / secs(reference)
    );
    println!(
        "peak RSS of the tracker process: {:.1} MiB",
        peak as f64 / 1024.0
    );
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}
