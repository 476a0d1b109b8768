//! Writing an audit trail on a test database and reading it back in step with the tracker,
//! for tests of the query API and the `bemi` commands that read it.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Client;

use crate::TestDatabase;
use bemi_core::TrackerHandle;

/// How long [`sync`] waits for the tracker.
const WAIT: Duration = Duration::from_secs(120);

/// A fresh test database with `schema` run in it, a connection, and the tracker following it
/// (see [`track`]).
///
/// # Panics
///
/// When the database, the schema or the tracker fails.
pub async fn start(schema: &str) -> (TestDatabase, Client, TrackerHandle) {
    let db = TestDatabase::create().await.expect("a test database");
    let sql = db.connect().await.expect("connect");
    sql.batch_execute(schema).await.expect("schema");
    let tracker = track(&db, &sql).await;
    (db, sql, tracker)
}

/// Creates the `sync_marker` table [`sync`] writes, starts the tracker on `db` (storing into its
/// `changes`) and waits until it streams, so `changes` exists.
///
/// # Panics
///
/// When the tracker cannot start, with its progress.
pub async fn track(db: &TestDatabase, sql: &Client) -> TrackerHandle {
    sql.batch_execute(
        "CREATE TABLE sync_marker (id serial PRIMARY KEY);
         ALTER TABLE sync_marker REPLICA IDENTITY FULL;",
    )
    .await
    .expect("sync_marker");
    let tracker = db.tracker_builder().expect("tracker").start().await;
    tracker.unwrap_or_else(|e| panic!("{}", e.report()))
}

/// Waits until everything committed so far is in `changes`: commits a marker row and waits for
/// its change (the tracker stores transactions in commit order).
///
/// # Panics
///
/// When the tracker stops, or does not catch up within two minutes.
pub async fn sync(sql: &Client, tracker: &TrackerHandle) {
    let id: i32 = sql
        .query_one("INSERT INTO sync_marker DEFAULT VALUES RETURNING id", &[])
        .await
        .expect("marker")
        .get(0);
    let deadline = Instant::now() + WAIT;
    loop {
        let n: i64 = sql
            .query_one(
                "SELECT count(*) FROM changes WHERE \"table\" = 'sync_marker' AND primary_key = $1",
                &[&id.to_string()],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the tracker did not catch up: {:?}",
            tracker.progress()
        );
        assert!(!tracker.is_finished(), "{:?}", tracker.progress());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `statements` in one transaction that first emits `context`.
///
/// # Panics
///
/// When a statement fails.
pub async fn write(sql: &Client, context: Value, statements: &str) {
    sql.batch_execute(&format!(
        "BEGIN;
         SELECT pg_logical_emit_message(true, '_bemi', '{}');
         {statements}
         COMMIT;",
        context.to_string().replace('\'', "''")
    ))
    .await
    .expect("write");
}

/// The server's clock now.
///
/// # Panics
///
/// When the query fails.
pub async fn clock(sql: &Client) -> DateTime<Utc> {
    sql.query_one("SELECT clock_timestamp()", &[])
        .await
        .expect("clock")
        .get(0)
}

/// The rows of `table` as JSON values, ordered by `order`.
///
/// # Panics
///
/// When the query fails.
pub async fn rows(sql: &Client, table: &str, order: &str) -> Vec<Value> {
    sql.query(
        &format!("SELECT to_jsonb(t)::text FROM {table} t ORDER BY {order}"),
        &[],
    )
    .await
    .expect("rows")
    .iter()
    .map(|r| serde_json::from_str(r.get::<_, &str>(0)).expect("JSON"))
    .collect()
}

/// Adds `n` synthetic changes of `database` to its `changes` table in one statement, then
/// analyzes it, for tests and benchmarks of the read side on a large trail: 20 tables
/// (`bench_0` …), 50,000 keys, 1,000 users (`user_id`), a `request_id` per three changes,
/// operations in turn, committed one millisecond apart up to now, with commit LSNs above any
/// real one.
///
/// # Panics
///
/// When the statement fails.
pub async fn fill_changes(sql: &Client, database: &str, n: i64) {
    sql.execute(
        "INSERT INTO changes (primary_key, before, after, context, database, schema, \"table\",
                              operation, committed_at, queued_at, transaction_id, position,
                              commit_lsn, ordinal)
         SELECT (i % 50000)::text, '{}', jsonb_build_object('id', i % 50000, 'n', i),
                jsonb_build_object('user_id', i % 1000, 'request_id', 'r' || (i / 3)),
                $1, 'public', 'bench_' || (i % 20),
                (ARRAY['CREATE', 'UPDATE', 'DELETE'])[1 + i % 3],
                now() - ($2::int8 - i) * interval '1 millisecond',
                now() - ($2::int8 - i) * interval '1 millisecond',
                i, 1099511627776 + i * 64, 1099511627776 + i * 64, 0
         FROM generate_series(1, $2::int8) i",
        &[&database, &n],
    )
    .await
    .expect("synthetic changes");
    sql.batch_execute("ANALYZE changes")
        .await
        .expect("analyze changes");
}
