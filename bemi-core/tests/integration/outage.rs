//! Outages: the source server restarting mid-stream, and the destination database unreachable
//! for 10 s, both end with every change stored exactly once and no manual step; a destination
//! that crashes keeps every write the sink reported stored.

use std::time::{Duration, Instant};

use bemi_core::sink::PostgresSink;
use bemi_core::{ConnectOptions, Tracker, TrackerHandle};
use bemi_temp_postgres::TempPostgres;
use bemi_testkit::TestDatabase;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(120);

async fn server() -> TempPostgres {
    tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("throwaway server")
}

fn admin(pg: &TempPostgres) -> ConnectOptions {
    pg.url("postgres").parse().unwrap()
}

async fn schema(db: &TestDatabase) -> Client {
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE items (id int PRIMARY KEY, txn int NOT NULL)")
        .await
        .unwrap();
    sql
}

/// Transactions `from..to`, each inserting 5 rows with its own context.
async fn write(sql: &Client, from: i32, to: i32) {
    for txn in from..to {
        sql.batch_execute(&format!(
            "BEGIN; SELECT pg_logical_emit_message(true, '_bemi', '{{\"txn\": {txn}}}');
             INSERT INTO items SELECT {txn} * 5 + g, {txn} FROM generate_series(0, 4) g; COMMIT;"
        ))
        .await
        .unwrap();
    }
}

/// Counts on a fresh connection each time, so a restarted destination is seen.
async fn stored(destination: &ConnectOptions) -> Option<i64> {
    let sql = destination.connect().await.ok()?;
    sql.query_one("SELECT count(*) FROM changes", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

async fn wait_for(destination: &ConnectOptions, expected: i64, tracker: &TrackerHandle) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(n) = stored(destination).await {
            if n >= expected {
                return;
            }
        }
        assert!(
            !tracker.is_finished(),
            "the tracker stopped: {:?}",
            tracker.progress()
        );
        assert!(
            Instant::now() < deadline,
            "{:?} of {expected} rows; {:?}",
            stored(destination).await,
            tracker.progress()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Exactly `rows` rows, each once, each with its own transaction's context.
async fn assert_exactly_once(destination: &ConnectOptions, rows: i64) {
    let sql = destination.connect().await.unwrap();
    let row = sql
        .query_one(
            "SELECT count(*), count(DISTINCT primary_key),
                    count(*) FILTER (WHERE (context->>'txn')::int = (after->>'txn')::int)
             FROM changes",
            &[],
        )
        .await
        .unwrap();
    let (total, distinct, matching): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(total, rows, "rows");
    assert_eq!(distinct, rows, "distinct keys");
    assert_eq!(matching, rows, "rows with their own context");
}

#[tokio::test]
async fn a_source_restart_mid_stream_loses_nothing() {
    let pg = server().await;
    let db = TestDatabase::create_on(&admin(&pg)).await.unwrap();
    let sql = schema(&db).await;
    let tracker = Tracker::builder(db.options(), PostgresSink::connect(&db.options()).unwrap())
        .slot(db.slot())
        .publication(db.publication())
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .spawn();
    tracker.wait_for(|p| p.connected).await;

    write(&sql, 0, 1000).await;
    // One large transaction (context {"txn": -1}), so the restart lands mid-stream.
    sql.batch_execute(
        "BEGIN; SELECT pg_logical_emit_message(true, '_bemi', '{\"txn\": -1}');
         INSERT INTO items SELECT 1000000 + g, -1 FROM generate_series(0, 19999) g; COMMIT;",
    )
    .await
    .unwrap();
    let in_flight = stored(&db.options()).await.unwrap_or(0);
    assert!(in_flight < 25_000, "the restart should land mid-stream");
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart().expect("pg_ctl restart -m fast");
        pg
    })
    .await
    .unwrap();

    let sql = db.connect().await.unwrap();
    write(&sql, 1000, 1200).await;
    wait_for(&db.options(), 26_000, &tracker).await;
    let progress = tracker.progress();
    tracker.shutdown().await.unwrap();
    assert!(progress.reconnects >= 1, "{progress:?}");
    assert_exactly_once(&db.options(), 26_000).await;
    drop(pg);
}

#[tokio::test]
async fn an_unreachable_destination_for_ten_seconds_loses_nothing() {
    let source_pg = server().await;
    let destination_pg = server().await;
    let db = TestDatabase::create_on(&admin(&source_pg)).await.unwrap();
    let sql = schema(&db).await;
    let destination = admin(&destination_pg);
    let tracker = Tracker::builder(db.options(), PostgresSink::connect(&destination).unwrap())
        .slot(db.slot())
        .publication(db.publication())
        .backoff(Duration::from_millis(100), Duration::from_secs(2))
        .spawn();
    tracker.wait_for(|p| p.connected).await;
    write(&sql, 0, 100).await;
    wait_for(&destination, 500, &tracker).await;

    let destination_pg = tokio::task::spawn_blocking(move || {
        destination_pg.stop().expect("pg_ctl stop");
        destination_pg
    })
    .await
    .unwrap();
    let down = Instant::now();
    write(&sql, 100, 600).await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    assert!(
        stored(&destination).await.is_none(),
        "the destination is down"
    );
    assert!(!tracker.is_finished(), "{:?}", tracker.progress());
    let destination_pg = tokio::task::spawn_blocking(move || {
        destination_pg.start_again().expect("pg_ctl start");
        destination_pg
    })
    .await
    .unwrap();

    write(&sql, 600, 700).await;
    wait_for(&destination, 3500, &tracker).await;
    let progress = tracker.progress();
    tracker.shutdown().await.unwrap();
    assert!(progress.reconnects >= 1, "{progress:?}");
    assert_exactly_once(&destination, 3500).await;
    drop(destination_pg);
}

#[tokio::test]
async fn a_destination_crash_keeps_every_write_even_with_synchronous_commit_off() {
    let source = server().await;
    // A destination whose commits do not wait for the disk, and whose WAL writer waits 10 s
    // between flushes: a write committed there only reaches the disk if the sink asks for it.
    let destination = tokio::task::spawn_blocking(|| {
        TempPostgres::builder()
            .setting("synchronous_commit", "off")
            .setting("wal_writer_delay", "10s")
            .start()
    })
    .await
    .unwrap()
    .expect("throwaway destination server");
    let db = TestDatabase::create_on(&admin(&source)).await.unwrap();
    let sql = schema(&db).await;
    let store = admin(&destination);
    let tracker = Tracker::builder(db.options(), PostgresSink::connect(&store).unwrap())
        .slot(db.slot())
        .publication(db.publication())
        .spawn();
    tracker.wait_for(|p| p.connected).await;
    // the tables the sink made are on disk; from here only the sink's writes are not
    store
        .connect()
        .await
        .unwrap()
        .batch_execute("CHECKPOINT")
        .await
        .unwrap();

    write(&sql, 0, 20).await;
    wait_for(&store, 100, &tracker).await;
    let destination = tokio::task::spawn_blocking(move || {
        destination.crash().expect("pg_ctl stop -m immediate");
        destination.start_again().expect("pg_ctl start");
        destination
    })
    .await
    .unwrap();
    tracker.shutdown().await.unwrap();
    assert_eq!(
        stored(&store).await,
        Some(100),
        "rows stored before the crash"
    );
    drop(destination);
}
