//! Catch-up into a JSON-lines file (`bemi run --output`): the worker is killed with SIGKILL
//! twice while it reads a 50,000-change backlog through SQL, and restarted; the file ends with
//! every change exactly once.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bemi_core::{Change, Host, Lsn, Operation};
use bemi_testkit::TestDatabase;

use crate::workload::{database, CHANGES_PER_TRANSACTION};

const TRANSACTIONS: i64 = 5_000;
const CHANGES: usize = (TRANSACTIONS * CHANGES_PER_TRANSACTION) as usize;

fn start_worker(db: &TestDatabase, output: &Path) -> Child {
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
        .env("BEMI_OUTPUT", output)
        .env("BEMI_CATCH_UP_BYTES", "0")
        .env("BEMI_BATCH_SIZE", "500")
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bemi starts")
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|b| **b == b'\n').count())
}

/// Waits until `done` holds for the file's size.
async fn wait_for_file(path: &Path, what: &str, done: impl Fn(u64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !done(file_size(path)) {
        assert!(
            Instant::now() < deadline,
            "{what}: {} bytes",
            file_size(path)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_during_catch_up_loses_and_doubles_nothing() {
    let (db, sql) = database().await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("changes.jsonl");

    // The backlog, committed while no worker runs, 100 transactions a round trip.
    for first in (0..TRANSACTIONS).step_by(100) {
        let mut batch = String::new();
        for txn in first..first + 100 {
            let base = txn * CHANGES_PER_TRANSACTION;
            batch.push_str(&format!(
                "BEGIN;
                 SELECT pg_logical_emit_message(true, '_bemi', '{{\"txn\": {txn}}}');
                 INSERT INTO items SELECT {base} + g, {txn}, 0 FROM generate_series(0, 4) g;
                 UPDATE items SET n = 1 WHERE id BETWEEN {base} AND {base} + 2;
                 DELETE FROM items WHERE id IN ({base} + 3, {base} + 4);
                 COMMIT;"
            ));
        }
        sql.batch_execute(&batch).await.unwrap();
    }

    // Killed twice while it reads the backlog: after about 2,000 and 20,000 changes.
    for at_bytes in [1_000_000, 10_000_000] {
        let mut worker = start_worker(&db, &output);
        wait_for_file(&output, "before the kill", |size| size >= at_bytes).await;
        worker.kill().unwrap();
        worker.wait().unwrap();
        let stored = lines(&output);
        println!("killed with {stored} of {CHANGES} changes in the file");
        assert!(stored < CHANGES, "the kill should land during catch-up");
    }
    let mut worker = start_worker(&db, &output);
    let deadline = Instant::now() + Duration::from_secs(180);
    while lines(&output) < CHANGES {
        assert!(Instant::now() < deadline, "{} changes", lines(&output));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(worker.wait().unwrap().code(), Some(0));

    // Exactly the backlog: every key once, every row's change once, each with its context.
    let changes: Vec<Change> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a change per line"))
        .collect();
    assert_eq!(changes.len(), CHANGES);
    let keys: HashSet<(Lsn, u32)> = changes.iter().map(|c| (c.commit_lsn, c.ordinal)).collect();
    assert_eq!(keys.len(), CHANGES, "keys are unique");
    let mut rows = HashSet::new();
    for change in &changes {
        let row = match change.operation {
            Operation::Delete => change.before.as_json(),
            _ => change.after.as_json(),
        };
        let row: serde_json::Value = serde_json::from_str(row).unwrap();
        let id = row["id"].as_i64().unwrap();
        let context: serde_json::Value = serde_json::from_str(change.context.as_str()).unwrap();
        assert_eq!(context["txn"].as_i64(), Some(id / CHANGES_PER_TRANSACTION));
        assert!(rows.insert((change.operation, id)), "{change:?} twice");
    }
}
