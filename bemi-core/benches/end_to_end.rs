//! The tracker end to end as users see it, against references measured in the same run, on one
//! throwaway PostgreSQL with production durability (`fsync`, `full_page_writes` and
//! `synchronous_commit` on). The tracker stores into the default `changes` table (partitioned by
//! month, Bemi's indexes) of another database of the same server. Each timed measurement starts
//! right after a `CHECKPOINT`, with `max_wal_size` large enough that no checkpoint starts during
//! one (each pays the full-page writes after a checkpoint alike; none pays for a checkpoint that
//! another's WAL started).
//!
//! 1. **Backlog drain.** `BEMI_BENCH_BACKLOG` one-row transactions (default 50,000), committed
//!    by 8 connections while no consumer runs, onto two slots made just before them:
//!    `pg_recvlogical` drains one (to `/dev/null`), then the tracker drains the other into
//!    `changes`; `BEMI_BENCH_ROUNDS` times (default 3; the table grows by the backlog each
//!    round). Reported as the tracker's rate over `pg_recvlogical`'s per round and as their mean
//!    ± half its 95 % confidence interval, with this process's peak RSS (the tracker, its
//!    decoder and sink, the runtime; not the server) once it is done. The physical reference
//!    drains a third such slot: a live `pg_recvlogical` streams it (its walsender reading the
//!    new WAL as it comes, like the tracker's) while one audit row like the tracker's per
//!    transaction, made beforehand, is copied into `changes` by binary `COPY`, a batch of the
//!    tracker's size at a time on as many connections as the tracker writes on — the least any
//!    tracker storing into `changes` on this server has to do — timed until every row is
//!    stored and the walsender has sent the backlog's end; reported against the tracker and
//!    against `pg_recvlogical` (the ceiling).
//!    The CPU of each process during both drains is read from `/proc` (the tracker's process,
//!    `pg_recvlogical`, the walsender, the sink's backends, the server's other processes).
//! 2. **One large transaction.** `BEMI_BENCH_LARGE` rows in one transaction (default 300,000):
//!    `pg_recvlogical` drains it from a slot made before it, the tracker stores it into
//!    `changes`, and the same rows are copied from `changes` into a table made like it (the same
//!    partitions and indexes) with a binary `COPY`: the end-to-end rate against the rate at which
//!    the server takes those rows at all; `BEMI_BENCH_LARGE_ROUNDS` times (default 3, each with
//!    a new transaction, tracker and `COPY` taking turns), per round and as mean ± half its 95 %
//!    confidence interval.
//! 3. **Latency.** With the tracker caught up, `BEMI_BENCH_WRITERS` connections (default 4) commit
//!    one-row transactions at a steady `BEMI_BENCH_RATE` a second in all (default 1,000) for
//!    `BEMI_BENCH_SECONDS` (default 30): the p50, p99 and maximum of `created_at - committed_at`
//!    of their rows in `changes` (commit on the source → the sink's transaction that stores it).
//! 4. **Application throughput.** `BEMI_BENCH_CLIENTS` connections (default 8) commit one-row
//!    transactions as fast as they can for `BEMI_BENCH_TPS_SECONDS` (default 10) with no
//!    consumer, with a bare `pg_recvlogical` streaming, with the tracker's physical reference
//!    (a bare `pg_recvlogical` streaming while a bare writer stores one audit row like the
//!    tracker's into `changes` for each committed transaction, by one durable `INSERT … SELECT`
//!    every 10 ms with the values made by the server), and with the tracker storing into
//!    `changes`, in `BEMI_BENCH_TPS_ROUNDS` rounds (default 5) of rotating order: the TPS with
//!    each consumer over the TPS with none, per round and as mean ± half its 95 % confidence
//!    interval, and the mean size of the audit rows each writer stored. Each round's consumers
//!    stream from slots made at its start, so none starts with a backlog.
//!
//! `BEMI_BENCH_BATCH_SIZE`, `BEMI_BENCH_CONCURRENT_WRITES` and `BEMI_BENCH_LINGER_MS` set the
//! tracker's [`batch_size`](bemi_core::TrackerBuilder::batch_size),
//! [`concurrent_writes`](bemi_core::TrackerBuilder::concurrent_writes) and
//! [`linger`](bemi_core::TrackerBuilder::linger) (defaults 1,000, 2 and 5 ms, the tracker's own).
//!
//! `BEMI_BENCH_WITHOUT_GIN=1` adds to each drain round a second physical reference that copies
//! the rows into `changes_without_gin`, a table like `changes` (not partitioned) without its
//! three GIN indexes: the drain's ceiling with a recent partition that gets its GIN indexes only
//! once it is sealed.
//!
//! `BEMI_BENCH_GIN_OPTIONS` (say `fastupdate = off`, or `gin_pending_list_limit = 256`) is set
//! on every GIN index of the table (`ALTER INDEX … SET (…)`) before the tracker starts, to
//! compare with the table as the sink creates it.
//!
//! ```text
//! cargo bench -p bemi-core --bench end_to_end
//! BEMI_BENCH_BACKLOG=5000 BEMI_BENCH_SECONDS=5 cargo bench -p bemi-core --bench end_to_end
//! ```
//!
//! Without `--bench` (as under `cargo test --benches`) it makes a short smoke run.
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bemi_core::setup::SourceSetup;
use bemi_core::sink::{ChangeSink, PostgresSink, SourceInfo};
use bemi_core::{ConnectOptions, Tracker, TrackerBuilder};
use bemi_temp_postgres::TempPostgres;
use bemi_testkit::cpu::{self, CpuMeter, CpuUsage};
use bemi_testkit::drain::{self, rate};
use bemi_testkit::overhead::ratio_spread;
use futures_util::{SinkExt as _, TryStreamExt as _};

/// Connections that commit the backlog.
const BACKLOG_WRITERS: u64 = 8;

/// What to measure, from the environment.
struct Options {
    backlog: u64,
    rounds: u64,
    large: u64,
    large_rounds: u64,
    rate: f64,
    seconds: f64,
    writers: u64,
    clients: u64,
    tps_seconds: f64,
    tps_rounds: u64,
    gin_options: Option<String>,
    without_gin: bool,
    batch_size: usize,
    concurrent_writes: usize,
    linger: Duration,
}

impl Options {
    fn from_env() -> Options {
        let smoke = !std::env::args().any(|arg| arg == "--bench");
        let number = |name: &str, default: f64| -> f64 {
            std::env::var(name).map_or(default, |v| {
                v.replace(['_', ','], "")
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: a number"))
            })
        };
        let (backlog, large, seconds, tps_seconds) = if smoke {
            (200.0, 1_000.0, 0.5, 0.5)
        } else {
            (50_000.0, 300_000.0, 30.0, 10.0)
        };
        Options {
            backlog: number("BEMI_BENCH_BACKLOG", backlog) as u64,
            rounds: (number("BEMI_BENCH_ROUNDS", 3.0) as u64).max(1),
            large: (number("BEMI_BENCH_LARGE", large) as u64).max(1),
            large_rounds: (number("BEMI_BENCH_LARGE_ROUNDS", 3.0) as u64).max(1),
            rate: number("BEMI_BENCH_RATE", 1_000.0),
            seconds: number("BEMI_BENCH_SECONDS", seconds),
            writers: (number("BEMI_BENCH_WRITERS", 4.0) as u64).max(1),
            clients: (number("BEMI_BENCH_CLIENTS", 8.0) as u64).max(1),
            tps_seconds: number("BEMI_BENCH_TPS_SECONDS", tps_seconds),
            tps_rounds: (number("BEMI_BENCH_TPS_ROUNDS", 5.0) as u64).max(1),
            gin_options: std::env::var("BEMI_BENCH_GIN_OPTIONS").ok(),
            without_gin: std::env::var("BEMI_BENCH_WITHOUT_GIN").is_ok_and(|v| v == "1"),
            batch_size: number("BEMI_BENCH_BATCH_SIZE", 1_000.0) as usize,
            concurrent_writes: number("BEMI_BENCH_CONCURRENT_WRITES", 2.0) as usize,
            linger: Duration::from_secs_f64(number("BEMI_BENCH_LINGER_MS", 5.0) / 1000.0),
        }
    }
}

impl Options {
    /// The tracker of every measurement, on `slot` of the publication `bench`.
    fn tracker(
        &self,
        source: &ConnectOptions,
        sink: PostgresSink,
        slot: &str,
    ) -> TrackerBuilder<PostgresSink> {
        Tracker::builder(source.clone(), sink)
            .slot(slot)
            .publication("bench")
            .batch_size(self.batch_size)
            .concurrent_writes(self.concurrent_writes)
            .linger(self.linger)
    }
}

fn main() {
    let options = Options::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(options));
}

async fn run(options: Options) {
    // Checkpoints come when the benchmark asks (see `checkpoint`), not by WAL volume.
    let pg = drain::durable_server(&[("max_wal_size", "8GB")]).await;
    let source: ConnectOptions = pg.url("postgres").parse().expect("url");
    let sql = source.connect().await.expect("connect");
    // One statement each: CREATE DATABASE cannot run in the implicit transaction of a batch.
    for statement in [
        "CREATE DATABASE audit",
        "CREATE TABLE backlog (id int8 PRIMARY KEY, label text, n int4, at timestamptz)",
        "CREATE TABLE steady (id int8 PRIMARY KEY, label text, n int4, at timestamptz)",
        "CREATE TABLE app (id bigserial PRIMARY KEY, label text, n int4, at timestamptz)",
    ] {
        sql.batch_execute(statement).await.expect(statement);
    }
    let destination = source.clone().with_dbname("audit");
    create_changes_table(&destination, "changes", options.gin_options.as_deref()).await;
    if options.without_gin {
        create_table_without_gin(&destination).await;
    }
    // The publication, before any change it publishes.
    fresh_slot(&sql, &drain_slot(0)).await;
    let postmaster = cpu::postmaster_pid(&pg.data_dir());
    println!(
        "PostgreSQL {}, fsync and synchronous_commit on; GIN options: {}",
        pg.version(),
        options
            .gin_options
            .as_deref()
            .unwrap_or("as the sink creates them")
    );

    // 1. The backlog, round by round.
    let (mut ratios, mut physical_ratios, mut ceilings) = (Vec::new(), Vec::new(), Vec::new());
    let mut ceilings_without_gin = Vec::new();
    let mut peak_rss = 0;
    for round in 0..options.rounds {
        // Both slots are made just before the backlog, so that both consumers read the same
        // WAL from the same start (a slot left by an earlier round would make its walsender
        // read again the WAL since its last restart point, the sink's included).
        let slot = drain_slot(round);
        fresh_slot(&sql, &slot).await;
        let (reference, physical) = (format!("reference_{round}"), format!("physical_{round}"));
        let without_gin = format!("without_gin_{round}");
        let mut references = vec![&reference, &physical];
        if options.without_gin {
            references.push(&without_gin);
        }
        for reference in &references {
            sql.execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[reference],
            )
            .await
            .expect("the reference slot");
        }
        let first = (round * options.backlog) as i64;
        commit_paced(
            &source,
            "backlog",
            first,
            BACKLOG_WRITERS,
            None,
            options.backlog,
        )
        .await;
        let end = drain::wal_end(&sql).await;
        checkpoint(&sql).await;
        let meter = CpuMeter::start(postmaster);
        let recvlogical = drain::pg_recvlogical(&pg, "postgres", &reference, "bench", &end);
        let recvlogical_cpu = meter.stop();
        let (stored, physical_cpu) = physical_drain(
            &pg,
            &sql,
            &destination,
            &physical,
            "changes",
            &end,
            &options,
        )
        .await;
        if options.without_gin {
            let (stored, cpu) = physical_drain(
                &pg,
                &sql,
                &destination,
                &without_gin,
                "changes_without_gin",
                &end,
                &options,
            )
            .await;
            let ceiling = rate(options.backlog, stored) / rate(options.backlog, recvlogical);
            ceilings_without_gin.push(ceiling);
            println!(
                "  the physical reference into a table without the GIN indexes: {stored:.2?}, \
                 {ceiling:.2}× pg_recvlogical; CPU: {cpu}"
            );
        }
        for reference in &references {
            drain::drop_slot_when_free(&sql, reference).await;
        }
        let sink = PostgresSink::connect(&destination).expect("sink");
        checkpoint(&sql).await;
        drain::reset_peak_rss();
        let meter = CpuMeter::start(postmaster);
        let tracker = options.tracker(&source, sink, &slot);
        let tracked = drain::tracked(tracker, options.backlog).await;
        let tracked_cpu = meter.stop();
        peak_rss = peak_rss.max(drain::peak_rss_kib());
        drain::drop_slot_when_free(&sql, &slot).await;
        let [recvlogical_rate, stored_rate, tracked_rate] =
            [recvlogical, stored, tracked].map(|took| rate(options.backlog, took));
        ratios.push(tracked_rate / recvlogical_rate);
        physical_ratios.push(tracked_rate / stored_rate);
        ceilings.push(stored_rate / recvlogical_rate);
        println!(
            "backlog of {} one-row transactions, round {}: pg_recvlogical {recvlogical:.2?} \
             ({recvlogical_rate:.0}/s); pg_recvlogical beside a bare writer of the rows \
             {stored:.2?} ({stored_rate:.0}/s); tracker → changes {tracked:.2?} \
             ({tracked_rate:.0}/s): {:.2}× pg_recvlogical, {:.2}× the physical reference",
            options.backlog,
            round + 1,
            tracked_rate / recvlogical_rate,
            tracked_rate / stored_rate,
        );
        println!("  CPU, pg_recvlogical's drain: {recvlogical_cpu}");
        println!("  CPU, the physical reference: {physical_cpu}");
        println!("  CPU, the tracker's drain: {tracked_cpu}");
    }
    println!(
        "backlog drain (mean of {} rounds): tracker → changes {} × pg_recvlogical, {} × the \
         physical reference, which reaches {} × pg_recvlogical",
        ratios.len(),
        mean_spread(&ratios),
        mean_spread(&physical_ratios),
        mean_spread(&ceilings),
    );
    if options.without_gin {
        println!(
            "the physical reference into a table without the GIN indexes (mean of {} rounds): \
             {} × pg_recvlogical",
            ceilings_without_gin.len(),
            mean_spread(&ceilings_without_gin),
        );
    }
    println!(
        "peak RSS of the tracker's process: {:.1} MiB",
        peak_rss as f64 / 1024.0
    );

    // 2. One large transaction, in rounds.
    create_changes_table(
        &destination,
        "copy_reference",
        options.gin_options.as_deref(),
    )
    .await;
    let (mut to_recvlogical, mut to_copy, mut peak_rss) = (Vec::new(), Vec::new(), 0.0f64);
    for round in 0..options.large_rounds {
        let (recvlogical, copy, rss) = large_transaction(
            &pg,
            &sql,
            &source,
            &destination,
            postmaster,
            &options,
            round,
        )
        .await;
        to_recvlogical.push(recvlogical);
        to_copy.push(copy);
        peak_rss = peak_rss.max(rss);
    }
    println!(
        "one transaction of {} rows (mean of {} rounds): tracker → changes {} × \
         pg_recvlogical; end to end {} × COPY {to_copy:.2?}; peak RSS of the tracker's \
         process {peak_rss:.1} MiB",
        options.large,
        options.large_rounds,
        mean_spread(&to_recvlogical),
        mean_spread(&to_copy),
    );

    // 3. Latency at a steady rate.
    fresh_slot(&sql, "tracker").await;
    let sink = PostgresSink::connect(&destination).expect("sink");
    let tracker = options.tracker(&source, sink, "tracker").spawn();
    tracker.sync().await.expect("caught up");
    let began = Instant::now();
    let deadline = began + Duration::from_secs_f64(options.seconds);
    let committed = commit_paced(
        &source,
        "steady",
        0,
        options.writers,
        Some((options.rate, deadline)),
        u64::MAX,
    )
    .await;
    let achieved = rate(committed, began.elapsed());
    tracker.sync().await.expect("stored");
    tracker.shutdown().await.expect("clean stop");
    let audit = destination.connect().await.expect("destination");
    let row = audit
        .query_one(
            "SELECT count(*), \
                    percentile_disc(0.5) WITHIN GROUP (ORDER BY ms), \
                    percentile_disc(0.99) WITHIN GROUP (ORDER BY ms), max(ms) \
             FROM (SELECT extract(epoch FROM created_at - committed_at)::float8 * 1000 AS ms \
                   FROM changes WHERE \"table\" = 'steady') latency",
            &[],
        )
        .await
        .expect("latency");
    let stored: i64 = row.get(0);
    assert_eq!(stored as u64, committed, "every steady transaction stored");
    let (p50, p99, max): (f64, f64, f64) = (row.get(1), row.get(2), row.get(3));
    println!(
        "latency at {achieved:.0} tx/s ({committed} one-row transactions by {} connections): \
         created_at - committed_at p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        options.writers
    );
    sql.execute("SELECT pg_drop_replication_slot('tracker')", &[])
        .await
        .expect("drop the tracker's slot");

    // 4. The application's throughput with each consumer.
    application_throughput(&pg, &sql, &source, &destination, postmaster, &options).await;
    row_sizes(&destination).await;
}

/// Prints the mean size of the audit rows the tracker and the bare writers stored, table by
/// table (the references store rows like the tracker's), and for the application's rows how
/// many each write stored on average (rows over distinct `created_at`, the time of the storing
/// transaction).
async fn row_sizes(destination: &ConnectOptions) {
    let audit = destination.connect().await.expect("destination");
    for row in audit
        .query(
            "SELECT \"table\"::text, system_id = 0, avg(pg_column_size(c.*))::float8, \
                    (count(*)::float8 / count(DISTINCT created_at)) \
             FROM changes c WHERE \"table\" IN ('backlog', 'app') GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await
        .expect("row sizes")
    {
        let (table, bare, size, per_write): (String, bool, f64, f64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let writer = if bare {
            "the bare writer"
        } else {
            "the tracker"
        };
        // The rows of `backlog` also hold the large transaction's, stored apart.
        let writes = match table.as_str() {
            "app" => format!(", {per_write:.1} a write"),
            _ => String::new(),
        };
        println!("audit rows of `{table}` stored by {writer}: {size:.0} bytes on average{writes}");
    }
}

/// Writes the rows of `query` as binary `COPY` data into the file `path`.
async fn copy_out(client: &tokio_postgres::Client, query: &str, path: &std::path::Path) {
    use std::io::Write as _;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("a file"));
    let rows = client
        .copy_out(&format!("COPY ({query}) TO STDOUT (FORMAT binary)"))
        .await
        .expect("COPY out");
    futures_util::pin_mut!(rows);
    while let Some(chunk) = rows.try_next().await.expect("the rows") {
        file.write_all(&chunk).expect("write the rows");
    }
    file.flush().expect("write the rows");
}

/// Copies the binary `COPY` data of the file `path` into `target` (a table and its columns),
/// 1 MiB a message, as the sink sends it. Returns the rows copied.
async fn copy_in(client: &tokio_postgres::Client, target: &str, path: &std::path::Path) -> u64 {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).expect("the rows");
    let copy = client
        .copy_in(&format!("COPY {target} FROM STDIN (FORMAT binary)"))
        .await
        .expect("COPY in");
    futures_util::pin_mut!(copy);
    loop {
        let mut chunk = Vec::with_capacity(1 << 20);
        let read = (&mut file)
            .take(1 << 20)
            .read_to_end(&mut chunk)
            .expect("read the rows");
        if read == 0 {
            break;
        }
        copy.send(bytes::Bytes::from(chunk))
            .await
            .expect("COPY data");
    }
    copy.finish().await.expect("COPY")
}

/// The slot the tracker drains round `round`'s backlog from.
fn drain_slot(round: u64) -> String {
    format!("drain_{round}")
}

/// Makes the tracker's slot `slot` (and the publication `bench`, if missing) as its setup does.
async fn fresh_slot(sql: &tokio_postgres::Client, slot: &str) {
    SourceSetup::new(slot, "bench")
        .prepare(sql)
        .await
        .expect("the tracker's slot");
}

/// Round `round` of one transaction of `options.large` rows: `pg_recvlogical`, the tracker into
/// `changes`, and a binary `COPY` of the rows the tracker stored into `copy_reference`, a table
/// made like `changes`. Returns the tracker's rate over `pg_recvlogical`'s and over `COPY`'s, and
/// the peak RSS (MiB) of the tracker's run.
async fn large_transaction(
    pg: &TempPostgres,
    sql: &tokio_postgres::Client,
    source: &ConnectOptions,
    destination: &ConnectOptions,
    postmaster: u32,
    options: &Options,
    round: u64,
) -> (f64, f64, f64) {
    let rows = options.large;
    // A slot of its own each round: the sink's progress is kept per slot, and a new slot past
    // the progress stored for its name is a gap.
    let slot = format!("tracker_large_{round}");
    fresh_slot(sql, &slot).await;
    sql.execute(
        "SELECT pg_create_logical_replication_slot('reference_large', 'pgoutput')",
        &[],
    )
    .await
    .expect("the reference slot");
    let first = (options.rounds * options.backlog + round * rows) as i64;
    sql.execute(
        "INSERT INTO backlog SELECT g, md5(g::text), 1, now() \
         FROM generate_series($1::int8, $2::int8) g",
        &[&first, &(first + rows as i64 - 1)],
    )
    .await
    .expect("the large transaction");
    let end = drain::wal_end(sql).await;
    checkpoint(sql).await;
    let meter = CpuMeter::start(postmaster);
    let recvlogical = drain::pg_recvlogical(pg, "postgres", "reference_large", "bench", &end);
    let recvlogical_cpu = meter.stop();
    sql.execute("SELECT pg_drop_replication_slot('reference_large')", &[])
        .await
        .expect("drop the reference slot");
    let sink = PostgresSink::connect(destination).expect("sink");
    checkpoint(sql).await;
    drain::reset_peak_rss();
    let meter = CpuMeter::start(postmaster);
    let tracked = drain::tracked(options.tracker(source, sink, &slot), rows).await;
    let tracked_cpu = meter.stop();
    drain::drop_slot_when_free(sql, &slot).await;
    let peak_rss = drain::peak_rss_kib() as f64 / 1024.0;

    // The reference: the rows the tracker stored, copied into a table made like `changes`
    // (through a file, so that this process's memory stays as small as before the next round).
    let audit = destination.connect().await.expect("destination");
    let columns = "id, primary_key, before, after, context, database, schema, \"table\", \
                   operation, committed_at, queued_at, created_at, transaction_id, position, \
                   system_id, commit_lsn, ordinal";
    let file = std::env::temp_dir().join(format!("bemi-bench-{}-large", std::process::id()));
    copy_out(
        &audit,
        &format!(
            "SELECT {columns} FROM changes \
             WHERE commit_lsn = (SELECT max(commit_lsn) FROM changes)"
        ),
        &file,
    )
    .await;
    checkpoint(sql).await;
    let started = Instant::now();
    let copied_rows = copy_in(&audit, &format!("copy_reference ({columns})"), &file).await;
    let copy = started.elapsed();
    std::fs::remove_file(&file).expect("remove the copied rows");
    assert_eq!(copied_rows, rows, "the transaction's rows copied");

    let (recvlogical_rate, tracked_rate, copy_rate) = (
        rate(rows, recvlogical),
        rate(rows, tracked),
        rate(rows, copy),
    );
    println!(
        "one transaction of {rows} rows, round {}: pg_recvlogical {recvlogical:.2?} ({recvlogical_rate:.0}/s); \
         tracker → changes {tracked:.2?} ({tracked_rate:.0}/s): {:.2}× pg_recvlogical; \
         binary COPY of the same rows into a table with the same indexes {copy:.2?} \
         ({copy_rate:.0}/s): end to end {:.2}× COPY",
        round + 1,
        tracked_rate / recvlogical_rate,
        tracked_rate / copy_rate
    );
    println!("  CPU, pg_recvlogical: {recvlogical_cpu}");
    println!("  CPU, the tracker: {tracked_cpu}");
    println!("  peak RSS of the tracker's process: {peak_rss:.1} MiB");
    (
        tracked_rate / recvlogical_rate,
        tracked_rate / copy_rate,
        peak_rss,
    )
}

/// Who streams the changes while the application commits.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Consumer {
    None,
    PgRecvlogical,
    /// The physical reference of the tracker: a bare `pg_recvlogical` streaming, and a bare
    /// writer storing one audit row per committed transaction into `changes`.
    PgRecvlogicalAndInsert,
    Tracker,
}

/// The application's TPS with no consumer, a bare `pg_recvlogical`, a bare `pg_recvlogical`
/// with the same number of audit rows stored by a bare writer, and the tracker, in rounds of
/// rotating order.
async fn application_throughput(
    pg: &TempPostgres,
    sql: &tokio_postgres::Client,
    source: &ConnectOptions,
    destination: &ConnectOptions,
    postmaster: u32,
    options: &Options,
) {
    let consumers = [
        Consumer::None,
        Consumer::PgRecvlogical,
        Consumer::PgRecvlogicalAndInsert,
        Consumer::Tracker,
    ];
    let mut ratios = vec![Vec::new(); consumers.len()];
    for round in 0..options.tps_rounds {
        let mut tps = [0.0; 4];
        for turn in 0..consumers.len() {
            let index = (turn + round as usize) % consumers.len();
            let consumer = consumers[index];
            let slot = format!("tps_{index}_{round}");
            if consumer != Consumer::None {
                sql.execute(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&slot],
                )
                .await
                .expect("the round's slot");
            }
            let mut recvlogical = matches!(
                consumer,
                Consumer::PgRecvlogical | Consumer::PgRecvlogicalAndInsert
            )
            .then(|| drain::pg_recvlogical_live(pg, "postgres", &slot, "bench"));
            let tracker = (consumer == Consumer::Tracker).then(|| {
                let sink = PostgresSink::connect(destination).expect("sink");
                options.tracker(source, sink, &slot).spawn()
            });
            if let Some(tracker) = &tracker {
                tracker.sync().await.expect("the tracker streams");
            }
            let counter = Arc::new(AtomicU64::new(0));
            let (done, stopped) = tokio::sync::oneshot::channel();
            let writer = (consumer == Consumer::PgRecvlogicalAndInsert).then(|| {
                tokio::spawn(insert_audit_rows(
                    destination.clone(),
                    Arc::clone(&counter),
                    stopped,
                ))
            });
            checkpoint(sql).await;
            let began = Instant::now();
            let meter = CpuMeter::start(postmaster);
            let committed =
                commit_app(source, options.clients, options.tps_seconds, &counter).await;
            let cpu = meter.stop();
            tps[index] = rate(committed, began.elapsed());
            let behind = Instant::now();
            if let Some(writer) = writer {
                done.send(()).expect("the writer runs");
                let inserted = writer.await.expect("the writer");
                assert_eq!(inserted, committed, "one audit row per transaction");
            }
            if let Some(tracker) = tracker {
                tracker.sync().await.expect("stored");
                tracker.shutdown().await.expect("clean stop");
            }
            let caught_up = behind.elapsed();
            if let Some(child) = &mut recvlogical {
                drain::stop(child);
            }
            if consumer != Consumer::None {
                drain::drop_slot_when_free(sql, &slot).await;
            }
            println!(
                "  application, round {}, {consumer:?}: {:.0} tx/s ({committed} by {} \
                 connections; caught up {caught_up:.2?} after); CPU: {cpu}",
                round + 1,
                tps[index],
                options.clients
            );
        }
        for (index, ratios) in ratios.iter_mut().enumerate() {
            ratios.push(tps[index] / tps[0]);
        }
    }
    println!("application TPS ÷ TPS with no consumer:");
    for (consumer, ratios) in consumers.iter().zip(&ratios).skip(1) {
        println!("  {consumer:?} {} {ratios:.2?}", mean_spread(ratios));
    }
}

/// `ratios` as their mean ± half its 95 % confidence interval.
fn mean_spread(ratios: &[f64]) -> String {
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    format!("{mean:.2} ± {:.2}", ratio_spread(ratios.iter().copied()))
}

/// The drain's physical reference: a live `pg_recvlogical` streams `slot` while one audit row
/// per backlog transaction, made beforehand (see [`copy_pieces`]), is copied into `table` (the
/// audit database's `changes`, or a table made like it) a batch (the tracker's batch size) at a time by binary `COPY` on as many connections as the
/// tracker writes on: the least any tracker storing into `changes` on this server has to do,
/// with the walsender reading the rows' WAL as it comes like the tracker's. Returns how long
/// until every row is stored and the walsender has sent `end`, the backlog's end, and the CPU
/// of the server's processes and this one's in that time.
async fn physical_drain(
    pg: &TempPostgres,
    sql: &tokio_postgres::Client,
    destination: &ConnectOptions,
    slot: &str,
    table: &str,
    end: &str,
    options: &Options,
) -> (Duration, CpuUsage) {
    let dir = std::env::temp_dir().join(format!("bemi-bench-{}", std::process::id()));
    let pieces = copy_pieces(
        destination,
        options.backlog,
        options.batch_size as u64,
        &dir,
    )
    .await;
    let pieces = Arc::new(std::sync::Mutex::new(pieces));
    let mut writers = Vec::new();
    for _ in 0..options.concurrent_writes.max(1) {
        writers.push(destination.connect().await.expect("destination"));
    }
    checkpoint(sql).await;
    let meter = CpuMeter::start(cpu::postmaster_pid(&pg.data_dir()));
    let started = Instant::now();
    let mut recvlogical = drain::pg_recvlogical_live(pg, "postgres", slot, "bench");
    let writers: Vec<_> = writers
        .into_iter()
        .map(|writer| {
            let pieces = Arc::clone(&pieces);
            let target = format!(
                "{table} (id, primary_key, before, after, context, database, schema, \"table\", \
                 operation, committed_at, queued_at, transaction_id, position, system_id, \
                 commit_lsn, ordinal)"
            );
            tokio::spawn(async move {
                loop {
                    let Some(piece) = pieces.lock().expect("pieces").pop() else {
                        return;
                    };
                    copy_in(&writer, &target, &piece).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    loop {
        let sent: bool = sql
            .query_one(
                "SELECT coalesce(bool_or(r.sent_lsn >= $1::text::pg_lsn), false) \
                 FROM pg_stat_replication r \
                 JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $2",
                &[&end, &slot],
            )
            .await
            .expect("the walsender's position")
            .get(0);
        if sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    let cpu = meter.stop();
    drain::stop(&mut recvlogical);
    std::fs::remove_dir_all(&dir).expect("remove the pieces");
    (took, cpu)
}

/// `rows` audit rows shaped like the tracker's rows of one-row inserts into `backlog`, made by
/// the server as binary `COPY` data of `batch` rows each (the columns of [`physical_drain`]'s
/// `COPY`), in files of `dir` (so that they take no memory of the process whose peak RSS is
/// measured). Their `system_id` is 0 and their `commit_lsn`s negative, from a sequence, so they
/// meet none of the tracker's.
async fn copy_pieces(
    destination: &ConnectOptions,
    rows: u64,
    batch: u64,
    dir: &std::path::Path,
) -> Vec<std::path::PathBuf> {
    std::fs::create_dir_all(dir).expect("a directory for the pieces");
    let audit = destination.connect().await.expect("destination");
    audit
        .batch_execute(BARE_WRITER_SEQUENCE)
        .await
        .expect("the sequence");
    let mut pieces = Vec::new();
    let mut left = rows;
    while left > 0 {
        let rows = left.min(batch);
        left -= rows;
        let path = dir.join(pieces.len().to_string());
        copy_out(
            &audit,
            &format!(
                "SELECT gen_random_uuid(), n::text::varchar, '{{}}'::jsonb, \
                        jsonb_build_object('id', n, 'label', md5(n::text), 'n', 1, 'at', now()), \
                        '{{}}'::jsonb, 'postgres'::varchar, 'public'::varchar, \
                        'backlog'::varchar, 'CREATE'::text, now(), now(), n, n, 0::int8, -n, \
                        0::int4 \
                 FROM (SELECT nextval('bare_writer') AS n FROM generate_series(1, {rows})) g"
            ),
            &path,
        )
        .await;
        pieces.push(path);
    }
    pieces
}

/// Ends the server's current checkpoint now: every measurement starts just after one (with
/// `max_wal_size` large enough that none starts during it), so that none pays for a
/// checkpoint that another's WAL started.
async fn checkpoint(sql: &tokio_postgres::Client) {
    sql.batch_execute("CHECKPOINT").await.expect("checkpoint");
}

/// The sequence the bare writers number their rows by (negative `commit_lsn`s).
const BARE_WRITER_SEQUENCE: &str = "CREATE SEQUENCE IF NOT EXISTS bare_writer";

/// A bare writer of audit rows into `changes`, shaped like the tracker's rows of a one-row
/// insert into a table `(id, label, n, at)`: each [`store`](Self::store) is one durable
/// `INSERT … SELECT` whose values the server makes, nothing sent or parsed. Its rows have
/// `system_id` 0 and negative `commit_lsn`s from a sequence, so they meet none of the tracker's.
struct BareWriter {
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
}

impl BareWriter {
    /// Rows of changes of `table`.
    async fn connect(destination: &ConnectOptions, table: &str) -> BareWriter {
        let client = destination.connect().await.expect("destination");
        client
            .batch_execute(BARE_WRITER_SEQUENCE)
            .await
            .expect("the sequence");
        let insert = client
            .prepare(&format!(
                "INSERT INTO changes (primary_key, after, database, schema, \"table\", operation, \
                                      committed_at, queued_at, transaction_id, position, \
                                      system_id, commit_lsn, ordinal) \
                 SELECT n::text, \
                        jsonb_build_object('id', n, 'label', md5(n::text), 'n', 1, 'at', now()), \
                        'postgres', 'public', '{table}', 'CREATE', now(), now(), n, n, 0, -n, 0 \
                 FROM (SELECT nextval('bare_writer') AS n FROM generate_series(1, $1::int8)) g"
            ))
            .await
            .expect("prepare");
        BareWriter { client, insert }
    }

    /// Stores `rows` rows in one statement.
    async fn store(&self, rows: u64) {
        let stored = self
            .client
            .execute(&self.insert, &[&(rows as i64)])
            .await
            .expect("insert");
        assert_eq!(stored, rows, "rows stored");
    }
}

/// The bare writer of [`Consumer::PgRecvlogicalAndInsert`]: every 10 ms, one audit row for
/// each transaction the application committed since (`committed`); once `stopped`, the rest.
/// Returns how many rows.
async fn insert_audit_rows(
    destination: ConnectOptions,
    committed: Arc<AtomicU64>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) -> u64 {
    let writer = BareWriter::connect(&destination, "app").await;
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let mut inserted = 0;
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = &mut stopped => true,
        };
        let now = committed.load(Ordering::Relaxed);
        if now > inserted {
            writer.store(now - inserted).await;
            inserted = now;
        }
        if last {
            return inserted;
        }
    }
}

/// Commits one-row transactions into `app` from `clients` connections, each as fast as it
/// can, for `seconds`, adding each to `counter` as it commits. Returns how many.
async fn commit_app(
    source: &ConnectOptions,
    clients: u64,
    seconds: f64,
    counter: &Arc<AtomicU64>,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let source = source.clone();
        let counter = Arc::clone(counter);
        tasks.push(tokio::spawn(async move {
            let sql = source.connect().await.expect("connect");
            let insert = sql
                .prepare("INSERT INTO app (label, n, at) VALUES (md5(random()::text), 1, now())")
                .await
                .expect("prepare");
            let mut done = 0;
            while Instant::now() < deadline {
                sql.execute(&insert, &[]).await.expect("insert");
                counter.fetch_add(1, Ordering::Relaxed);
                done += 1;
            }
            done
        }));
    }
    let mut committed = 0;
    for task in tasks {
        committed += task.await.expect("client");
    }
    committed
}

/// Commits one-row transactions into `table` from `writers` connections, with ids from `first`
/// on: `total` of them as fast as they go, or at a steady rate a second in all until a deadline.
/// Returns how many.
async fn commit_paced(
    source: &ConnectOptions,
    table: &str,
    first: i64,
    writers: u64,
    pace: Option<(f64, Instant)>,
    total: u64,
) -> u64 {
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let source = source.clone();
        let insert =
            format!("INSERT INTO {table} VALUES ($1::int8, md5($1::int8::text), 1, now())");
        // Writer w commits ids first + w, first + w + writers, first + w + 2 × writers, …
        let quota = total / writers + u64::from(writer < total % writers);
        tasks.push(tokio::spawn(async move {
            let sql = source.connect().await.expect("connect");
            let insert = sql.prepare(&insert).await.expect("prepare");
            let mut ticks = pace.map(|(rate, _)| {
                let mut ticks =
                    tokio::time::interval(Duration::from_secs_f64(writers as f64 / rate));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                ticks
            });
            let mut done = 0;
            while done < quota && pace.is_none_or(|(_, deadline)| Instant::now() < deadline) {
                if let Some(ticks) = &mut ticks {
                    ticks.tick().await;
                }
                let id = first + (done * writers + writer) as i64;
                sql.execute(&insert, &[&id]).await.expect("insert");
                done += 1;
            }
            done
        }));
    }
    let mut committed = 0;
    for task in tasks {
        committed += task.await.expect("writer");
    }
    committed
}

/// Creates `changes_without_gin` in the audit database: the columns, defaults and indexes of
/// `changes` but not its GIN indexes, and no partitions — a recent partition as it would be
/// before it is sealed and gets them.
async fn create_table_without_gin(destination: &ConnectOptions) {
    let sql = destination.connect().await.expect("destination");
    sql.batch_execute(
        "CREATE TABLE changes_without_gin (LIKE changes INCLUDING DEFAULTS INCLUDING INDEXES)",
    )
    .await
    .expect("changes_without_gin");
    let gin = sql
        .query(
            "SELECT i.indexrelid::regclass::text FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam \
             WHERE i.indrelid = 'changes_without_gin'::regclass AND a.amname = 'gin'",
            &[],
        )
        .await
        .expect("its GIN indexes");
    assert_eq!(gin.len(), 3, "the three GIN indexes of changes, copied");
    for index in gin {
        let index: String = index.get(0);
        sql.batch_execute(&format!("DROP INDEX {index}"))
            .await
            .expect("DROP INDEX");
    }
}

/// Creates the changes table `table` as the tracker's sink does at its start (so that no
/// timing includes it), then sets `gin_options`, if any, on each GIN index of the database
/// (those of partitions: a partitioned index has no storage options).
async fn create_changes_table(
    destination: &ConnectOptions,
    table: &str,
    gin_options: Option<&str>,
) {
    let mut sink = PostgresSink::connect(destination)
        .expect("sink")
        .table(table);
    sink.open(&SourceInfo::new("0", "postgres", "setup"))
        .await
        .expect("the changes table");
    let Some(options) = gin_options else {
        return;
    };
    let sql = destination.connect().await.expect("destination");
    let indexes = sql
        .query(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_am a ON a.oid = c.relam \
             WHERE a.amname = 'gin' AND c.relkind = 'i'",
            &[],
        )
        .await
        .expect("GIN indexes");
    for index in indexes {
        let index: String = index.get(0);
        sql.batch_execute(&format!("ALTER INDEX {index} SET ({options})"))
            .await
            .expect("ALTER INDEX");
    }
}
