//! The source failing over under a running tracker: the server is stopped, started again as a
//! standby (`standby.signal`) and promoted, so it comes back on a new timeline at the same
//! address, as a promoted replica would. With its slot gone (a replica before PostgreSQL 17
//! has no copy of it) the tracker stops and says what was lost; with the slot there (a
//! PostgreSQL 17 failover slot) it goes on and stores every change once.

use std::time::Duration;

use bemi_core::{ConnectOptions, ErrorKind, TrackerHandle};
use bemi_temp_postgres::TempPostgres;
use bemi_testkit::TestDatabase;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(120);

/// A server of its own. A fast shutdown waits for the tracker to confirm the end of WAL, which
/// it cannot do while its destination (the same server) shuts down: the walsender gives up
/// after `wal_sender_timeout`, shortened here from 60 s.
async fn server() -> TempPostgres {
    tokio::task::spawn_blocking(|| {
        TempPostgres::builder()
            .setting("wal_sender_timeout", "2s")
            .start()
    })
    .await
    .unwrap()
    .expect("throwaway server")
}

/// A tracker of a new database on `pg`, streaming, with 5 changes stored.
async fn tracking(pg: &TempPostgres) -> (TestDatabase, TrackerHandle) {
    let admin: ConnectOptions = pg.url("postgres").parse().unwrap();
    let db = TestDatabase::create_on(&admin).await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let tracker = db
        .tracker_builder()
        .unwrap()
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    insert(&sql, 0).await;
    db.wait_for_changes(5, &tracker, WAIT).await.unwrap();
    (db, tracker)
}

async fn insert(sql: &Client, from: i32) {
    sql.batch_execute(&format!(
        "INSERT INTO items SELECT g FROM generate_series({from}, {from} + 4) g"
    ))
    .await
    .unwrap();
}

/// Stops `pg`, lets `while_stopped` change its data directory, and brings it back as a
/// standby promoted to a new timeline.
async fn fail_over(pg: &TempPostgres, while_stopped: impl FnOnce(&std::path::Path)) {
    pg.stop().unwrap();
    let data = pg.data_dir();
    while_stopped(&data);
    std::fs::write(data.join("standby.signal"), "").unwrap();
    pg.start_again().unwrap();
    let admin: ConnectOptions = pg.url("postgres").parse().unwrap();
    let sql = admin.connect().await.unwrap();
    let promoted: bool = sql
        .query_one("SELECT pg_promote()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(promoted);
}

/// The timeline of the current WAL file (the first 8 hex digits of its name).
async fn timeline(sql: &Client) -> i32 {
    sql.query_one(
        "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn a_failover_to_a_server_without_the_slot_stops_the_tracker_saying_what_was_lost() {
    let pg = server().await;
    let (db, tracker) = tracking(&pg).await;
    let slot = db.slot();
    fail_over(&pg, |data| {
        std::fs::remove_dir_all(data.join("pg_replslot").join(&slot)).unwrap();
    })
    .await;

    let stopped = tokio::time::timeout(WAIT, tracker.join())
        .await
        .expect("the tracker stops");
    let error = stopped.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::SourceChanged, "{}", error.report());
    let message = error.message();
    assert!(message.contains("timeline 1 → 2"), "{message}");
    assert!(message.contains("Lost from the trail"), "{message}");
    assert!(message.contains("--accept-gap"), "{message}");
    assert!(
        error.report().contains("is missing"),
        "the cause: {}",
        error.report()
    );
}

#[tokio::test]
async fn a_failover_to_a_server_with_the_slot_goes_on_and_stores_every_change_once() {
    let pg = server().await;
    let (db, tracker) = tracking(&pg).await;
    fail_over(&pg, |_| {}).await;
    let sql = db.connect().await.unwrap();
    assert_eq!(timeline(&sql).await, 2);
    insert(&sql, 5).await;
    db.wait_for_changes(10, &tracker, WAIT).await.unwrap();
    tracker.shutdown().await.unwrap();
    let row = sql
        .query_one(
            "SELECT count(*), count(DISTINCT primary_key) FROM changes",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (10, 10));
}
