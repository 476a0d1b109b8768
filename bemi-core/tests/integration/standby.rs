//! In-app trackers on one slot: the second waits as a standby (and `start()` returns for it),
//! then takes over when the first shuts down, storing every change once.

use std::time::Duration;

use bemi_testkit::TestDatabase;

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_second_tracker_on_the_slot_stands_by_then_takes_over() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let active = db.tracker_builder().unwrap().start().await.unwrap();
    let standby = db
        .tracker_builder()
        .unwrap()
        .standby_interval(Duration::from_millis(100))
        .start();
    let standby = tokio::time::timeout(WAIT, standby)
        .await
        .expect("start() returns for a standby")
        .unwrap();
    let progress = standby.progress();
    assert!(progress.standby && !progress.connected, "{progress:?}");
    assert!(progress.last_error.is_none(), "{progress:?}");

    sql.batch_execute("INSERT INTO items SELECT generate_series(1, 5)")
        .await
        .unwrap();
    db.wait_for_changes(5, &active, WAIT).await.unwrap();
    assert!(standby.progress().standby);
    assert_eq!(standby.progress().changes, 0, "the standby stores nothing");

    active.shutdown().await.unwrap();
    let took_over = tokio::time::timeout(WAIT, standby.wait_for(|p| p.connected))
        .await
        .unwrap();
    assert!(!took_over.standby, "{took_over:?}");
    sql.batch_execute("INSERT INTO items SELECT generate_series(6, 10)")
        .await
        .unwrap();
    db.wait_for_changes(10, &standby, WAIT).await.unwrap();
    standby.shutdown().await.unwrap();
    let row = sql
        .query_one(
            "SELECT count(*), count(DISTINCT primary_key) FROM changes",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (10, 10));
}
