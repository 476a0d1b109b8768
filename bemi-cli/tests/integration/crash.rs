//! Crash safety: the worker is killed with SIGKILL at 10 random moments during a 50,000-change
//! workload and restarted each time, and once in the middle of a 30,000-row transaction stored
//! in batches; `changes` ends with every change exactly once.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bemi_core::Host;
use bemi_testkit::TestDatabase;
use tokio_postgres::Client;

use crate::workload::database;

const TRANSACTIONS: i64 = 5_000;
const CHANGES: i64 = TRANSACTIONS * 10;
const KILLS: usize = 10;

fn start_worker(db: &TestDatabase) -> Child {
    let options = db.options();
    let Host::Tcp(host) = options.host() else {
        panic!("tests connect over TCP");
    };
    Command::new(env!("CARGO_BIN_EXE_bemi"))
        .arg("run")
        .env_remove("DATABASE_URL")
        .env("DB_HOST", host)
        .env("DB_PORT", options.port().to_string())
        .env("DB_NAME", options.dbname())
        .env("DB_USER", options.user())
        .env("BEMI_SLOT", db.slot())
        .env("BEMI_PUBLICATION", db.publication())
        .env("BEMI_BATCH_SIZE", "500")
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bemi starts")
}

/// A small xorshift generator: the seed is printed so a failure can be replayed.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn count(sql: &Client, query: &str) -> i64 {
    sql.query_one(query, &[]).await.expect(query).get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_ten_times_loses_and_doubles_nothing() {
    let (db, sql) = database().await;

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut random = Random(seed);

    let writer = db.connect().await.unwrap();
    let written = Arc::new(AtomicI64::new(0));
    let progress = Arc::clone(&written);
    let workload = tokio::spawn(async move {
        // Each transaction: its context, 5 inserts, 3 updates, 2 deletes.
        for txn in 0..TRANSACTIONS {
            let base = txn * 10;
            writer
                .batch_execute(&format!(
                    "BEGIN;
                     SELECT pg_logical_emit_message(true, '_bemi', '{{\"txn\": {txn}}}');
                     INSERT INTO items SELECT {base} + g, {txn}, 0 FROM generate_series(0, 4) g;
                     UPDATE items SET n = 1 WHERE id BETWEEN {base} AND {base} + 2;
                     DELETE FROM items WHERE id IN ({base} + 3, {base} + 4);
                     COMMIT;"
                ))
                .await
                .unwrap();
            progress.store(txn + 1, Ordering::Release);
        }
    });

    // Kill k lands at a random transaction within the k-th tenth of the first 90% of the
    // workload, so every kill happens while the workload is still writing, however fast the
    // machine is.
    let segment = TRANSACTIONS * 9 / 10 / KILLS as i64;
    let mut worker = start_worker(&db);
    for kill in 0..KILLS as i64 {
        let at = kill * segment + random.below(segment as u64) as i64;
        while written.load(Ordering::Acquire) < at {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(
            !workload.is_finished(),
            "kill {kill} came after the workload"
        );
        worker.kill().unwrap();
        worker.wait().unwrap();
        // The table appears once the first worker got that far.
        let stored: i64 = sql
            .query_one("SELECT count(*) FROM changes", &[])
            .await
            .map_or(0, |row| row.get(0));
        println!(
            "kill {}: at transaction {}, {stored} changes stored",
            kill + 1,
            written.load(Ordering::Acquire)
        );
        worker = start_worker(&db);
    }
    workload.await.unwrap();

    wait_for_stored(&sql, "after the workload", |n| n >= CHANGES).await;
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(worker.wait().unwrap().code(), Some(0));

    // Exactly the workload: none missing, none doubled, each with its own context.
    assert_eq!(count(&sql, "SELECT count(*) FROM changes").await, CHANGES);
    assert_eq!(
        count(
            &sql,
            "SELECT count(DISTINCT (operation, primary_key)) FROM changes"
        )
        .await,
        CHANGES
    );
    let matching = count(
        &sql,
        "SELECT count(*) FROM changes c, LATERAL (SELECT (c.context->>'txn')::int AS txn,
                coalesce(c.after->>'id', c.before->>'id')::int AS id) k
         WHERE c.\"table\" = 'items' AND k.id / 10 = k.txn AND (
           (c.operation = 'CREATE' AND k.id % 10 < 5 AND c.after->>'n' = '0') OR
           (c.operation = 'UPDATE' AND k.id % 10 < 3 AND c.before->>'n' = '0' AND c.after->>'n' = '1') OR
           (c.operation = 'DELETE' AND k.id % 10 IN (3, 4) AND c.after = '{}'))",
    )
    .await;
    assert_eq!(matching, CHANGES);
}

/// Polls `SELECT count(*) FROM changes` (0 before the table exists) until `done` says so.
async fn wait_for_stored(sql: &Client, what: &str, done: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let stored: i64 = sql
            .query_one("SELECT count(*) FROM changes", &[])
            .await
            .map_or(0, |row| row.get(0));
        if done(stored) {
            return stored;
        }
        assert!(Instant::now() < deadline, "{what}: {stored} changes stored");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_in_the_middle_of_a_large_transaction_loses_and_doubles_nothing() {
    const ROWS: i64 = 30_000;
    let (db, sql) = database().await;
    // One transaction, stored in batches of 500: the kill lands after some of its batches.
    sql.batch_execute(&format!(
        "BEGIN; SELECT pg_logical_emit_message(true, '_bemi', '{{\"txn\": 1}}');
         INSERT INTO items SELECT g, 1, 0 FROM generate_series(1, {ROWS}) g; COMMIT;"
    ))
    .await
    .unwrap();

    let mut worker = start_worker(&db);
    let at_kill = wait_for_stored(&sql, "before the kill", |n| n > 0).await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    let after_kill = wait_for_stored(&sql, "after the kill", |_| true).await;
    println!("killed with {at_kill}..{after_kill} of {ROWS} changes stored");
    assert!(
        after_kill < ROWS,
        "the kill should land in the middle of the transaction ({after_kill} stored)"
    );

    let mut worker = start_worker(&db);
    wait_for_stored(&sql, "after the restart", |n| n >= ROWS).await;
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(worker.wait().unwrap().code(), Some(0));
    assert_eq!(count(&sql, "SELECT count(*) FROM changes").await, ROWS);
    assert_eq!(
        count(&sql, "SELECT count(DISTINCT primary_key) FROM changes").await,
        ROWS
    );
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM changes WHERE context = '{\"txn\": 1}' AND operation = 'CREATE'"
        )
        .await,
        ROWS
    );
}
