//! Catch-up: a backlog read through SQL (`pg_logical_slot_peek_binary_changes`) in chunks
//! before streaming, into a JSON-lines file that keeps its position.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use bemi_core::sink::JsonLinesFileSink;
use bemi_core::{Change, Lsn, Tracker, TrackerHandle};
use bemi_testkit::TestDatabase;

const WAIT: Duration = Duration::from_secs(120);

fn read_file(path: &Path) -> Vec<Change> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a change per line"))
        .collect()
}

async fn wait_for_lines(path: &Path, expected: usize, tracker: &TrackerHandle) -> Vec<Change> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let changes = read_file(path);
        if changes.len() >= expected {
            return changes;
        }
        assert!(
            !tracker.is_finished() && std::time::Instant::now() < deadline,
            "{} of {expected} changes; progress {:?}",
            changes.len(),
            tracker.progress()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tracker(db: &TestDatabase, path: &Path) -> TrackerHandle {
    Tracker::builder(db.options(), JsonLinesFileSink::new(path).fsync(false))
        .slot(db.slot())
        .publication(db.publication())
        .batch_size(100)
        .catch_up(0)
        // Small chunks: transactions and their contexts straddle chunk ends.
        .catch_up_chunk(64 * 1024)
        .spawn()
}

/// Exactly once, in commit order, each with its context: keys unique and ascending.
fn check(changes: &[Change]) {
    let keys: Vec<(Lsn, u32)> = changes.iter().map(|c| (c.commit_lsn, c.ordinal)).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys ascend");
    for change in changes.iter().filter(|c| c.table == "items") {
        let id: i64 = serde_json::from_str::<serde_json::Value>(change.after.as_json()).unwrap()
            ["id"]
            .as_i64()
            .unwrap();
        let txn: serde_json::Value = serde_json::from_str(change.context.as_str()).unwrap();
        let expected = match id {
            20_000.. => 2_000,
            10_000.. => 1_000,
            id => id / 10,
        };
        assert_eq!(txn["txn"].as_i64(), Some(expected), "{change:?}");
    }
}

#[tokio::test]
async fn a_backlog_is_read_through_sql_then_streamed_exactly_once() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE items (id int8 PRIMARY KEY, note text)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("changes.jsonl");

    // The first start creates the slot; the backlog is committed while no tracker runs.
    let first = tracker(&db, &path);
    first.wait_for(|p| p.connected).await;
    first.shutdown().await.unwrap();
    for txn in 0..300_i64 {
        sql.batch_execute(&format!(
            "BEGIN; SELECT pg_logical_emit_message(true, '_bemi', '{{\"txn\": {txn}}}');
             INSERT INTO items SELECT {txn} * 10 + g, repeat('x', 100) FROM generate_series(0, 9) g;
             COMMIT;"
        ))
        .await
        .unwrap();
        if txn == 150 {
            // A new column half way: its Relation message comes again in every later chunk.
            sql.batch_execute("ALTER TABLE items ADD COLUMN extra int DEFAULT 7")
                .await
                .unwrap();
        }
    }
    // One transaction larger than many chunks and batches.
    sql.batch_execute(
        "BEGIN; SELECT pg_logical_emit_message(true, '_bemi', '{\"txn\": 1000}');
         INSERT INTO items SELECT 10000 + g, repeat('y', 100) FROM generate_series(0, 4999) g;
         COMMIT;",
    )
    .await
    .unwrap();

    let second = tracker(&db, &path);
    let caught_up = second
        .wait_for(|p| p.catching_up || p.last_error.is_some())
        .await;
    assert!(caught_up.catching_up, "{caught_up:?}");
    wait_for_lines(&path, 3_000, &second).await;
    second
        .wait_for(|p| (p.connected && !p.catching_up) || p.last_error.is_some())
        .await;
    // Streaming now: a change committed after the switch arrives too.
    sql.batch_execute(
        "BEGIN; SELECT pg_logical_emit_message(true, '_bemi', '{\"txn\": 2000}');
         INSERT INTO items VALUES (20000, 'z'); COMMIT;",
    )
    .await
    .unwrap();
    let changes = wait_for_lines(&path, 8_001, &second).await;
    second.shutdown().await.unwrap();

    assert_eq!(changes.len(), 8_001);
    check(&changes);
    let ids: HashSet<i64> = changes
        .iter()
        .map(|c| {
            serde_json::from_str::<serde_json::Value>(c.after.as_json()).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 8_001);
    let late = &changes[1_600];
    assert!(late.after.as_json().contains("\"extra\":7"), "{late:?}");

    // The slot was advanced to what the file holds, not further.
    let slot: String = sql
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot()],
        )
        .await
        .unwrap()
        .get(0);
    let position: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("changes.jsonl.position")).unwrap())
            .unwrap();
    let stored: Lsn = position["durable_through"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        slot.parse::<Lsn>().unwrap() <= stored,
        "slot {slot}, file {stored}"
    );
}
