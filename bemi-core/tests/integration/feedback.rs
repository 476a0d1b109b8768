//! Standby status updates: a slow consumer keeps its stream, and confirmed positions reach the
//! slot.

use std::time::{Duration, Instant};

use bemi_core::{ConnectOptions, Lsn, RowEvent};
use bemi_temp_postgres::TempPostgres;
use bemi_testkit::{EventTap, TestDatabase};

async fn walsender_pid(sql: &tokio_postgres::Client, slot: &str) -> Option<i32> {
    sql.query_one(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .expect("slot row")
    .get(0)
}

#[tokio::test]
async fn a_slow_consumer_keeps_its_stream_and_confirmed_positions_reach_the_slot() {
    let pg = tokio::task::spawn_blocking(|| {
        TempPostgres::builder()
            .setting("wal_sender_timeout", "5s")
            .start()
    })
    .await
    .unwrap()
    .expect("server with wal_sender_timeout = 5s");
    let admin: ConnectOptions = pg.url("postgres").parse().unwrap();
    let db = TestDatabase::create_on(&admin).await.expect("database");
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY, payload text)")
        .await
        .unwrap();
    let mut tap = EventTap::start(&db).await.expect("tap");
    let pid = walsender_pid(&sql, &db.slot())
        .await
        .expect("an active walsender");

    // Enough data to fill the socket buffers, then 10 s of not reading at all: twice the
    // walsender's timeout (5 s, not less, so that a loaded machine's scheduling hiccup is not
    // taken for a dead consumer).
    sql.batch_execute("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
        .await
        .unwrap();
    let stalled = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(stalled.elapsed() >= Duration::from_secs(10));

    let events = tap
        .next_transaction(Duration::from_secs(60))
        .await
        .expect("the stream survived");
    let inserts = events
        .iter()
        .filter(|e| matches!(e, RowEvent::Insert { .. }))
        .count();
    assert_eq!(inserts, 20000);
    assert_eq!(
        walsender_pid(&sql, &db.slot()).await,
        Some(pid),
        "the walsender was replaced: the server dropped the slow consumer"
    );

    // confirm(lsn) moves confirmed_flush_lsn to that LSN.
    let Some(RowEvent::Commit { end_lsn, .. }) = events.last() else {
        panic!("a transaction ends with its commit");
    };
    tap.stream().confirm(*end_lsn);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let confirmed: String = sql
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.slot()],
            )
            .await
            .unwrap()
            .get(0);
        let confirmed: Lsn = confirmed.parse().unwrap();
        if confirmed >= *end_lsn {
            assert_eq!(confirmed, *end_lsn);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn stayed at {confirmed}, expected {end_lsn}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
