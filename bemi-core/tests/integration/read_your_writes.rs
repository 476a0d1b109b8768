//! Read-your-writes: `TrackerWatch::sync` returns only once every transaction committed before
//! it is in `changes`, fails at once on a stopped tracker, and the progress serializes.

use std::time::Duration;

use bemi_core::setup::Tables;
use bemi_core::sink::PostgresSink;
use bemi_core::sql::TableName;
use bemi_core::{ErrorKind, Lsn, Tracker};
use bemi_testkit::TestDatabase;

/// A bound on each wait, so that a broken `sync` fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn sync_returns_once_every_earlier_commit_is_stored() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE tracked (id int PRIMARY KEY, n int);
         CREATE TABLE untracked (id int);",
    )
    .await
    .unwrap();
    let sink = PostgresSink::connect(&db.options()).unwrap();
    let tracker = Tracker::builder(db.options(), sink)
        .slot(db.slot())
        .publication(db.publication())
        .tables(Tables::Only(vec![TableName::new("tracked")]))
        .start()
        .await
        .unwrap();
    let watch = tracker.watch();
    let stored = || async {
        let n: i64 = sql
            .query_one("SELECT count(*) FROM changes", &[])
            .await
            .unwrap()
            .get(0);
        n
    };
    let mut expected = 0;
    for round in 0..30 {
        // Transactions of every size, some followed by untracked writes (WAL the tracker reads
        // without storing anything), each read back right after sync, never polled.
        let rows = 1 + (round * 37) % 200;
        sql.batch_execute(&format!(
            "INSERT INTO tracked SELECT {round} * 1000 + g, g FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
        expected += i64::from(rows);
        if round % 3 == 0 {
            sql.batch_execute("INSERT INTO untracked VALUES (1)")
                .await
                .unwrap();
        }
        // From a clone in another task, as a request handler would call it.
        let clone = watch.clone();
        let reached = tokio::time::timeout(WAIT, tokio::spawn(async move { clone.sync().await }))
            .await
            .expect("sync waited too long")
            .unwrap()
            .unwrap();
        assert_eq!(stored().await, expected, "round {round}");
        assert!(watch.progress().stored_lsn >= reached);
    }
    // An idle source: sync still returns.
    let reached = tokio::time::timeout(WAIT, tracker.sync())
        .await
        .expect("sync waited too long on an idle source")
        .unwrap();
    assert_eq!(stored().await, expected);

    // The progress, serialized for a status endpoint.
    let json = serde_json::to_value(tracker.progress()).unwrap();
    let stored_lsn: Lsn = json["stored_lsn"].as_str().unwrap().parse().unwrap();
    assert!(stored_lsn >= reached, "{json}");
    assert_eq!(json["changes"], expected);
    assert_eq!(json["connected"], true);
    assert!(json.get("stored_in_session").is_none(), "{json}");

    tracker.shutdown().await.unwrap();
    // Stopped: every clone fails at once, without waiting and without a query.
    assert!(watch.is_stopped());
    let error = tokio::time::timeout(Duration::from_secs(5), watch.sync())
        .await
        .expect("sync waited on a stopped tracker")
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Stopped, "{}", error.report());
    let error = watch.wait_stored(Lsn(1)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Stopped);
}

#[tokio::test]
async fn a_tracker_stopped_by_an_error_fails_sync_with_that_error() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let tracker = db.tracker_builder().unwrap().start().await.unwrap();
    let watch = tracker.watch();
    // Something stored, so that a missing slot is a gap the tracker refuses to paper over.
    sql.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    tokio::time::timeout(WAIT, watch.sync())
        .await
        .unwrap()
        .unwrap();
    // A waiting sync ends when the tracker stops: the slot is dropped under it, which the
    // tracker does not retry.
    let waiting = tokio::spawn({
        let watch = watch.clone();
        async move { watch.wait_stored(Lsn(u64::MAX >> 1)).await }
    });
    // The tracker reconnects after its walsender is terminated; drop the slot in between.
    let mut dropped = false;
    for _ in 0..500 {
        sql.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active",
            &[&db.slot()],
        )
        .await
        .unwrap();
        // Fails while a reconnected walsender holds the slot: then again.
        if sql
            .execute("SELECT pg_drop_replication_slot($1)", &[&db.slot()])
            .await
            .is_ok()
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(dropped, "the slot could not be dropped");
    let error = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiting sync did not end")
        .unwrap()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Stopped, "{}", error.report());
    let cause = std::error::Error::source(&error).expect("the cause");
    assert!(cause.to_string().contains("slot"), "{}", error.report());
    let json = serde_json::to_value(watch.progress()).unwrap();
    assert_eq!(json["last_error"]["kind"], "SlotMissing", "{json}");
    assert!(tracker.join().await.is_err());
}
