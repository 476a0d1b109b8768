//! The workload of the monitoring, takeover and NATS tests: numbered transactions of 10 changes
//! each on an `items` table, and the check that `changes` holds each exactly once.

use std::time::{Duration, Instant};

use bemi_testkit::TestDatabase;
use tokio_postgres::Client;

/// Changes per transaction: 5 inserts, 3 updates, 2 deletes.
pub(crate) const CHANGES_PER_TRANSACTION: i64 = 10;

/// A test database with the `items` table, its publication and its slot, made before any
/// workload so that nothing is missed before a worker first starts.
pub(crate) async fn database() -> (TestDatabase, Client) {
    let db = TestDatabase::create().await.expect("test database");
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, txn int NOT NULL, n int NOT NULL);
         ALTER TABLE items REPLICA IDENTITY FULL;",
    )
    .await
    .unwrap();
    bemi_core::setup::SourceSetup::new(db.slot(), db.publication())
        .prepare(&sql)
        .await
        .unwrap();
    (db, sql)
}

/// Commits transaction `txn`: its context, 5 inserts, 3 updates, 2 deletes.
pub(crate) async fn transaction(sql: &Client, txn: i64) {
    let base = txn * CHANGES_PER_TRANSACTION;
    sql.batch_execute(&format!(
        "BEGIN;
         SELECT pg_logical_emit_message(true, '_bemi', '{{\"txn\": {txn}}}');
         INSERT INTO items SELECT {base} + g, {txn}, 0 FROM generate_series(0, 4) g;
         UPDATE items SET n = 1 WHERE id BETWEEN {base} AND {base} + 2;
         DELETE FROM items WHERE id IN ({base} + 3, {base} + 4);
         COMMIT;"
    ))
    .await
    .unwrap();
}

/// `SELECT count(*) FROM changes`, 0 before the table exists.
pub(crate) async fn stored(sql: &Client) -> i64 {
    sql.query_one("SELECT count(*) FROM changes", &[])
        .await
        .map_or(0, |row| row.get(0))
}

/// Waits until `changes` holds `expected` rows (failing if it holds more).
pub(crate) async fn wait_for_stored(sql: &Client, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let n = stored(sql).await;
        if n >= expected {
            assert_eq!(n, expected, "changes stored");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {expected} changes stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `changes` holds transactions `0..transactions` exactly: every change once, none doubled,
/// each with its transaction's context and values.
pub(crate) async fn assert_exactly_once(sql: &Client, transactions: i64) {
    let expected = transactions * CHANGES_PER_TRANSACTION;
    let count = |query: &'static str| async move {
        sql.query_one(query, &[])
            .await
            .expect(query)
            .get::<_, i64>(0)
    };
    assert_eq!(count("SELECT count(*) FROM changes").await, expected);
    assert_eq!(
        count("SELECT count(DISTINCT (operation, primary_key)) FROM changes").await,
        expected
    );
    let matching = count(
        "SELECT count(*) FROM changes c, LATERAL (SELECT (c.context->>'txn')::int AS txn,
                coalesce(c.after->>'id', c.before->>'id')::int AS id) k
         WHERE c.\"table\" = 'items' AND k.id / 10 = k.txn AND (
           (c.operation = 'CREATE' AND k.id % 10 < 5 AND c.after->>'n' = '0') OR
           (c.operation = 'UPDATE' AND k.id % 10 < 3 AND c.before->>'n' = '0' AND c.after->>'n' = '1') OR
           (c.operation = 'DELETE' AND k.id % 10 IN (3, 4) AND c.after = '{}'))",
    )
    .await;
    assert_eq!(matching, expected);
}
