//! The tracker end to end on a real server, storing into the `changes` table.

use std::time::{Duration, Instant};

use bemi_core::setup::Tables;
use bemi_core::sink::{ChannelSink, PostgresSink};
use bemi_core::sql::TableName;
use bemi_core::{Operation, Tracker};
use bemi_testkit::TestDatabase;
use futures_util::StreamExt as _;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(120);

async fn scalar(sql: &Client, query: &str) -> i64 {
    sql.query_one(query, &[]).await.expect(query).get(0)
}

#[tokio::test]
async fn thousand_transactions_with_their_own_context_give_exactly_ten_thousand_rows() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, txn int NOT NULL, n int NOT NULL);
         ALTER TABLE items REPLICA IDENTITY FULL;",
    )
    .await
    .unwrap();
    let tracker = db.spawn_tracker().unwrap();
    tracker.wait_for(|p| p.connected).await;

    // Each transaction: its context, 5 inserts, 3 updates, 2 deletes.
    for txn in 0..1000 {
        let base = txn * 10;
        sql.batch_execute(&format!(
            "BEGIN;
             SELECT pg_logical_emit_message(true, '_bemi', '{{\"txn\": {txn}, \"user\": \"u{txn}\"}}');
             INSERT INTO items SELECT {base} + g, {txn}, 0 FROM generate_series(0, 4) g;
             UPDATE items SET n = 1 WHERE id BETWEEN {base} AND {base} + 2;
             DELETE FROM items WHERE id IN ({base} + 3, {base} + 4);
             COMMIT;"
        ))
        .await
        .unwrap();
    }
    db.wait_for_changes(10_000, &tracker, WAIT).await.unwrap();
    // The progress counts them too (published as batches are stored, not per transaction).
    let progress = tokio::time::timeout(WAIT, tracker.wait_for(|p| p.transactions >= 1000))
        .await
        .expect("the progress counts every transaction");
    assert_eq!(progress.changes, 10_000, "{progress:?}");
    tracker.shutdown().await.unwrap();

    assert_eq!(scalar(&sql, "SELECT count(*) FROM changes").await, 10_000);
    // Every row carries its own transaction's context, and only that.
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(*) FROM changes WHERE context = jsonb_build_object(
               'txn', coalesce(after->'txn', before->'txn'),
               'user', 'u' || coalesce(after->>'txn', before->>'txn'))"
        )
        .await,
        10_000
    );
    assert_eq!(
        scalar(&sql, "SELECT count(DISTINCT context) FROM changes").await,
        1000
    );
    // Operations with the right before/after and primary key.
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(*) FROM changes WHERE operation = 'CREATE' AND before = '{}'
               AND after->>'n' = '0' AND after->>'id' = primary_key"
        )
        .await,
        5000
    );
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(*) FROM changes WHERE operation = 'UPDATE' AND before->>'n' = '0'
               AND after->>'n' = '1' AND before->'id' = after->'id' AND after->>'id' = primary_key"
        )
        .await,
        3000
    );
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(*) FROM changes WHERE operation = 'DELETE' AND after = '{}'
               AND before->>'n' = '0' AND before->>'id' = primary_key"
        )
        .await,
        2000
    );
    // Keys are unique and complete: 10 ordinals per transaction.
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(DISTINCT (commit_lsn, ordinal)) FROM changes"
        )
        .await,
        10_000
    );
    assert_eq!(
        scalar(&sql, "SELECT count(*) FROM (SELECT commit_lsn FROM changes GROUP BY commit_lsn HAVING array_agg(ordinal ORDER BY ordinal) = ARRAY[0,1,2,3,4,5,6,7,8,9]) t").await,
        1000
    );
    // The tracker's own writes to changes were never recorded.
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(*) FROM changes WHERE \"table\" <> 'items'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn each_statement_keeps_its_own_context_and_bemi_row_triggers_are_stitched_row_by_row() {
    let db = TestDatabase::create().await.unwrap();
    let mut sql = db.connect().await.unwrap();
    // Bemi's ORM packages append /*Bemi <json> Bemi*/ to each write; a row trigger reads it
    // from current_query() and emits it before each row's change.
    sql.batch_execute(
        "CREATE TABLE todo (id int PRIMARY KEY, task text, done bool NOT NULL DEFAULT false);
         ALTER TABLE todo REPLICA IDENTITY FULL;
         CREATE FUNCTION _bemi_row_trigger_func() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE
           context text := split_part(split_part(current_query(), '/*Bemi ', 2), ' Bemi*/', 1);
         BEGIN
           IF context <> '' THEN
             PERFORM pg_logical_emit_message(true, '_bemi', context);
           END IF;
           IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER _bemi_row_trigger BEFORE INSERT OR UPDATE OR DELETE ON todo
           FOR EACH ROW EXECUTE FUNCTION _bemi_row_trigger_func();",
    )
    .await
    .unwrap();
    let tracker = db.spawn_tracker().unwrap();
    tracker.wait_for(|p| p.connected).await;

    // Two contexts in one transaction, each before its own writes.
    sql.batch_execute(
        "BEGIN;
         SELECT pg_logical_emit_message(true, '_bemi', '{\"step\": \"create\"}');
         INSERT INTO todo VALUES (1, 'a'), (2, 'b');
         SELECT pg_logical_emit_message(true, '_bemi', '{\"step\": \"finish\"}');
         UPDATE todo SET done = true WHERE id = 1;
         COMMIT;",
    )
    .await
    .unwrap();

    // Bemi-style comments, one statement at a time so current_query() is that statement.
    let tx = sql.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO todo VALUES (3, 'c'), (4, 'd') /*Bemi {\"endpoint\": \"/todos\", \"user\": 7} Bemi*/",
        &[],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE todo SET done = true WHERE id = 3 /*Bemi {\"endpoint\": \"/todos/3\", \"user\": 8} Bemi*/",
        &[],
    )
    .await
    .unwrap();
    tx.execute(
        "DELETE FROM todo WHERE id = 4 /*Bemi {\"endpoint\": \"/todos/4\", \"user\": 9} Bemi*/",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    db.wait_for_changes(7, &tracker, WAIT).await.unwrap();
    tracker.shutdown().await.unwrap();
    let rows = sql
        .query(
            "SELECT operation, primary_key, context::text FROM changes ORDER BY commit_lsn, ordinal",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expected = [
        ("CREATE", "1", r#"{"step": "create"}"#),
        ("CREATE", "2", r#"{"step": "create"}"#),
        ("UPDATE", "1", r#"{"step": "finish"}"#),
        ("CREATE", "3", r#"{"user": 7, "endpoint": "/todos"}"#),
        ("CREATE", "4", r#"{"user": 7, "endpoint": "/todos"}"#),
        ("UPDATE", "3", r#"{"user": 8, "endpoint": "/todos/3"}"#),
        ("DELETE", "4", r#"{"user": 9, "endpoint": "/todos/4"}"#),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn unusable_contexts_never_stop_the_tracker_and_are_recorded() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let tracker = db.spawn_tracker().unwrap();
    tracker.wait_for(|p| p.connected).await;
    let payloads: [(&str, &str); 7] = [
        ("1", "'not json'"),
        ("2", "'[1, 2]'"),
        ("3", "'\\xff7b7d'::bytea"),
        ("4", "'{\"a\": \"\\u0000\"}'"),
        ("5", "'{\"big\": \"' || repeat('x', 1000000) || '\"}'"),
        ("6", "'{\"fine\": \"*/ /* \\\\ ''quoted'' ünïcödé\"}'"),
        ("7", "'{\"tiny\": 1e-20000}'"),
    ];
    for (id, payload) in payloads {
        sql.batch_execute(&format!(
            "BEGIN; SELECT pg_logical_emit_message(true, '_bemi', {payload});
             INSERT INTO t VALUES ({id}); COMMIT;"
        ))
        .await
        .unwrap();
    }
    db.wait_for_changes(6, &tracker, WAIT).await.unwrap();
    tracker.shutdown().await.unwrap();
    let rows = sql
        .query(
            "SELECT primary_key, context->'_bemi_invalid'->>'error', \
                    length(context->'_bemi_invalid'->>'raw'), context \
             FROM changes ORDER BY primary_key",
            &[],
        )
        .await
        .unwrap();
    let errors: Vec<Option<String>> = rows.iter().map(|r| r.get(1)).collect();
    let error = |i: usize| errors[i].clone().unwrap_or_default();
    assert!(error(0).contains("not valid JSON"), "{errors:?}");
    assert!(error(1).contains("not a JSON object"), "{errors:?}");
    assert!(error(2).contains("not valid UTF-8"), "{errors:?}");
    assert!(error(3).contains("\\u0000"), "{errors:?}");
    assert!(error(4).contains("over the limit"), "{errors:?}");
    assert_eq!(errors[5], None);
    assert!(error(6).contains("range of numeric"), "{errors:?}");
    let raw_len: Option<i32> = rows[4].get(2);
    assert_eq!(
        raw_len,
        Some(1000),
        "an oversized payload keeps its first 1,000 characters"
    );
    let raw: serde_json::Value = rows[0].get(3);
    assert_eq!(raw["_bemi_invalid"]["raw"], "not json");
    let fine: serde_json::Value = rows[5].get(3);
    assert_eq!(fine["fine"], "*/ /* \\ 'quoted' ünïcödé");
}

#[tokio::test]
async fn a_json_value_jsonb_cannot_hold_is_stored_as_text_and_the_tracker_goes_on() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY, j json)")
        .await
        .unwrap();
    let tracker = db.spawn_tracker().unwrap();
    tracker.wait_for(|p| p.connected).await;
    // `json` keeps this number; `jsonb` (the `changes` columns) refuses it
    sql.batch_execute(
        r#"INSERT INTO t VALUES (1, '{"tiny": 1e-20000}');
           INSERT INTO t VALUES (2, '{"fine": 0.5}');"#,
    )
    .await
    .unwrap();
    db.wait_for_changes(2, &tracker, WAIT).await.unwrap();
    tracker.shutdown().await.unwrap();
    let rows = sql
        .query("SELECT after->'j' FROM changes ORDER BY primary_key", &[])
        .await
        .unwrap();
    let values: Vec<serde_json::Value> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        values,
        [
            serde_json::json!(r#"{"tiny": 1e-20000}"#),
            serde_json::json!({"fine": 0.5})
        ]
    );
}

#[tokio::test]
async fn a_channel_sink_streams_changes_to_the_application() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); ALTER TABLE t REPLICA IDENTITY FULL;",
    )
    .await
    .unwrap();
    let (sink, mut changes) = ChannelSink::new(16);
    let tracker = Tracker::builder(db.options(), sink)
        .slot(db.slot())
        .publication(db.publication())
        .spawn();
    tracker.wait_for(|p| p.connected).await;
    sql.batch_execute(
        "BEGIN; SELECT pg_logical_emit_message(true, '_bemi', '{\"who\": \"me\"}');
         INSERT INTO t VALUES (1, 'a'); UPDATE t SET v = 'b'; DELETE FROM t; COMMIT;",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let change = tokio::time::timeout(WAIT, changes.next())
            .await
            .expect("a change")
            .expect("stream open");
        got.push(change);
    }
    let ops: Vec<Operation> = got.iter().map(|c| c.operation).collect();
    assert_eq!(
        ops,
        [Operation::Create, Operation::Update, Operation::Delete]
    );
    assert!(got.iter().all(|c| c.context.as_str() == r#"{"who": "me"}"#));
    assert_eq!(got[1].before.as_json(), r#"{"id":1,"v":"a"}"#);
    assert_eq!(got[1].after.as_json(), r#"{"id":1,"v":"b"}"#);
    tracker.shutdown().await.unwrap();
}

/// A committed transaction goes to the sink as soon as nothing more waits in the stream: the
/// flush interval (an hour here, whose first tick passes as the session starts) and the batch
/// size are upper bounds, not something each change waits for.
#[tokio::test]
async fn a_commit_is_stored_without_waiting_for_the_flush_interval_or_a_full_batch() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let tracker = db
        .tracker_builder()
        .unwrap()
        .flush_interval(Duration::from_secs(3600))
        .batch_size(1_000)
        .spawn();
    tracker.wait_for(|p| p.connected).await;
    for id in 1..=3 {
        sql.execute("INSERT INTO t VALUES ($1, 'v')", &[&id])
            .await
            .unwrap();
        db.wait_for_changes(i64::from(id), &tracker, WAIT)
            .await
            .unwrap();
        let stored: Vec<String> = sql
            .query("SELECT primary_key FROM changes ORDER BY commit_lsn", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let expected: Vec<String> = (1..=id).map(|id| id.to_string()).collect();
        assert_eq!(stored, expected, "each commit stored on its own, in order");
    }
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_database_busy_only_in_untracked_tables_does_not_pin_wal() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE tracked (id int PRIMARY KEY); CREATE TABLE untracked (id int, pad text);",
    )
    .await
    .unwrap();
    let sink = PostgresSink::connect(&db.options()).unwrap();
    let tracker = Tracker::builder(db.options(), sink)
        .slot(db.slot())
        .publication(db.publication())
        .tables(Tables::Only(vec![TableName::new("tracked")]))
        .spawn();
    tracker.wait_for(|p| p.connected).await;
    let start = restart_lsn(&sql, &db.slot()).await;
    let mut written = 0u64;
    let deadline = Instant::now() + WAIT;
    loop {
        sql.batch_execute(
            "INSERT INTO untracked SELECT g, repeat('x', 500) FROM generate_series(1, 2000) g;
             CHECKPOINT;",
        )
        .await
        .unwrap();
        written += 1;
        let now = restart_lsn(&sql, &db.slot()).await;
        // More than a WAL segment past the start: the slot follows the server.
        if now.0 > start.0 + 16 * 1024 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restart_lsn stayed at {now} (from {start}) after {written} rounds; progress {:?}",
            tracker.progress()
        );
    }
    let progress = tracker.progress();
    assert_eq!(progress.changes, 0);
    tracker.shutdown().await.unwrap();
}

async fn restart_lsn(sql: &Client, slot: &str) -> bemi_core::Lsn {
    let lsn: String = sql
        .query_one(
            "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    lsn.parse().unwrap()
}
