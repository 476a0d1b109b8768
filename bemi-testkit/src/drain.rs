//! What the end-to-end benchmarks time a slot's backlog against: `pg_recvlogical` draining it
//! (the reference: the walsender's own limit), a tracker draining it into a sink, and the peak
//! memory of the benchmark's process.

use std::process::Command;
use std::time::{Duration, Instant};

use bemi_core::sink::ChangeSink;
use bemi_core::{ConnectOptions, Tracker, TrackerBuilder};
use bemi_temp_postgres::TempPostgres;

/// The server's current end of WAL (`pg_current_wal_lsn()`), as text for `pg_recvlogical -E`.
///
/// # Panics
///
/// When the query fails.
pub async fn wal_end(sql: &tokio_postgres::Client) -> String {
    sql.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("pg_current_wal_lsn()")
        .get(0)
}

/// How long `pg_recvlogical` takes to stream `slot` of `database` (a `pgoutput` slot) up to
/// `end` with `publication`, writing the output to `/dev/null`.
///
/// # Panics
///
/// When `pg_recvlogical` cannot run or fails.
pub fn pg_recvlogical(
    pg: &TempPostgres,
    database: &str,
    slot: &str,
    publication: &str,
    end: &str,
) -> Duration {
    run_to_end(pg_recvlogical_to(pg, database, slot, publication, end))
}

/// The `pg_recvlogical` of [`pg_recvlogical`], not started: for running it beside other work
/// (through [`run_to_end`]).
pub fn pg_recvlogical_to(
    pg: &TempPostgres,
    database: &str,
    slot: &str,
    publication: &str,
    end: &str,
) -> Command {
    let mut command = pg_recvlogical_command(pg, database, slot, publication);
    command.args(["-E", end]);
    command
}

/// Runs a [`pg_recvlogical_to`] to its end. Returns how long it took.
///
/// # Panics
///
/// When `pg_recvlogical` cannot run or fails.
pub fn run_to_end(mut command: Command) -> Duration {
    let started = Instant::now();
    let status = command.status().expect("pg_recvlogical runs");
    assert!(status.success(), "pg_recvlogical failed");
    started.elapsed()
}

/// `pg_recvlogical` streaming `slot` of `database` with `publication` to `/dev/null`.
fn pg_recvlogical_command(
    pg: &TempPostgres,
    database: &str,
    slot: &str,
    publication: &str,
) -> Command {
    let mut command = Command::new(pg.bindir().join("pg_recvlogical"));
    command
        .args(["-d", &pg.connection_string(database), "-S", slot, "--start"])
        .args(["-o", "proto_version=1"])
        .args(["-o", &format!("publication_names={publication}")])
        .args(["-f", "/dev/null", "--no-loop"]);
    command
}

/// How long a tracker on `slot` and `publication` of `source` takes from its start until `sink`
/// has stored `changes` changes; then stops it.
///
/// # Panics
///
/// When the tracker stops with an error first, or does not stop cleanly.
pub async fn tracker(
    source: &ConnectOptions,
    slot: &str,
    publication: &str,
    sink: impl ChangeSink,
    changes: u64,
) -> Duration {
    let builder = Tracker::builder(source.clone(), sink)
        .slot(slot)
        .publication(publication);
    tracked(builder, changes).await
}

/// Like [`tracker`], for a tracker built with settings of its own.
///
/// # Panics
///
/// When the tracker stops with an error first, or does not stop cleanly.
pub async fn tracked(builder: TrackerBuilder<impl ChangeSink>, changes: u64) -> Duration {
    let started = Instant::now();
    let tracker = builder.spawn();
    let progress = tracker
        .wait_for(|p| p.changes >= changes || p.last_error.is_some())
        .await;
    let elapsed = started.elapsed();
    tracker.shutdown().await.expect("clean stop");
    assert_eq!(progress.changes, changes, "{progress:?}");
    elapsed
}

/// This process's peak resident memory (`VmHWM` of `/proc/self/status`) in KiB, 0 where Linux's
/// `/proc` is missing.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Starts [`peak_rss_kib`] over from the current resident memory (writes 5 to
/// `/proc/self/clear_refs`; nothing where Linux's `/proc` is missing), so that a measurement
/// leaves out what the process held before it.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `changes` per second over `took`.
pub fn rate(changes: u64, took: Duration) -> f64 {
    changes as f64 / took.as_secs_f64().max(1e-9)
}

/// `pg_recvlogical` streaming `slot` of `database` with `publication` to `/dev/null` until
/// [`stop`]ped: a bare consumer, the reference for what streaming costs the server.
///
/// # Panics
///
/// When `pg_recvlogical` cannot start.
pub fn pg_recvlogical_live(
    pg: &TempPostgres,
    database: &str,
    slot: &str,
    publication: &str,
) -> std::process::Child {
    pg_recvlogical_command(pg, database, slot, publication)
        .spawn()
        .expect("pg_recvlogical starts")
}

/// Stops a [`pg_recvlogical_live`] and waits for it to end.
///
/// # Panics
///
/// When it cannot be signalled or waited for.
pub fn stop(child: &mut std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "SIGTERM to pg_recvlogical");
    child.wait().expect("pg_recvlogical ends");
}

/// Drops `slot` once no walsender holds it any more (a consumer that just stopped may still be
/// releasing it), waiting at most 10 seconds.
///
/// # Panics
///
/// When the slot is still held after that, or cannot be dropped.
pub async fn drop_slot_when_free(sql: &tokio_postgres::Client, slot: &str) {
    wait_until_slot_free(sql, slot).await;
    sql.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .expect("drop the slot");
}

/// Waits until no walsender holds `slot` (the walsender of a consumer that just stopped ends a
/// moment after it), at most 10 seconds.
///
/// # Panics
///
/// When the slot is still held after that.
pub async fn wait_until_slot_free(sql: &tokio_postgres::Client, slot: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held: bool = sql
            .query_one(
                "SELECT active_pid IS NOT NULL FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("the slot")
            .get(0);
        if !held {
            break;
        }
        assert!(Instant::now() < deadline, "slot {slot} still held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A throwaway server with production durability (`fsync`, `full_page_writes` and
/// `synchronous_commit` on, `shared_buffers` 128 MB), plus `settings`: the benchmarks' server.
///
/// # Panics
///
/// When the server cannot start.
pub async fn durable_server(settings: &[(&str, &str)]) -> TempPostgres {
    let mut builder = TempPostgres::builder()
        .setting("fsync", "on")
        .setting("full_page_writes", "on")
        .setting("synchronous_commit", "on")
        .setting("shared_buffers", "128MB");
    for (name, value) in settings {
        builder = builder.setting(*name, *value);
    }
    tokio::task::spawn_blocking(move || builder.start())
        .await
        .expect("join")
        .expect("throwaway PostgreSQL")
}
