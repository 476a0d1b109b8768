//! Capture → NATS JetStream → `bemi store`, with the real `bemi` binary and a real
//! `nats-server`: every change lands in `changes` exactly once with its context, through a
//! SIGKILLed tracker (also one killed inside a large transaction, which it then publishes
//! again), a restarted nats-server, and a killed one of two store processes.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bemi_core::reexports::async_nats::{self, jetstream};
use bemi_core::Host;
use bemi_testkit::nats::NatsServer;
use bemi_testkit::TestDatabase;
use tokio_postgres::Client;

use crate::workload::{self, CHANGES_PER_TRANSACTION};

/// The source database (with its `items` table, publication and slot made before any
/// workload), the store's database, and the NATS server.
struct Pipeline {
    source: TestDatabase,
    store: TestDatabase,
    stored: Client,
    nats: NatsServer,
}

impl Pipeline {
    async fn new() -> Pipeline {
        let nats = NatsServer::start();
        let (source, _) = workload::database().await;
        let store = TestDatabase::create().await.expect("store database");
        let stored = store.connect().await.unwrap();
        Pipeline {
            source,
            store,
            stored,
            nats,
        }
    }

    /// `bemi run --destination nats://…` on the source; with `log`, logging at `info` into it.
    fn tracker(&self, log: Option<std::fs::File>) -> Child {
        let options = self.source.options();
        let Host::Tcp(host) = options.host() else {
            panic!("tests connect over TCP");
        };
        Command::new(env!("CARGO_BIN_EXE_bemi"))
            .args(["run", "--destination", &self.nats.url()])
            .env_remove("DATABASE_URL")
            .env("DB_HOST", host)
            .env("DB_PORT", options.port().to_string())
            .env("DB_NAME", options.dbname())
            .env("DB_USER", options.user())
            .env("BEMI_SLOT", self.source.slot())
            .env("BEMI_PUBLICATION", self.source.publication())
            .env("BEMI_BATCH_SIZE", "300")
            .env("LOG_LEVEL", if log.is_some() { "info" } else { "warn" })
            .stdout(Stdio::null())
            .stderr(log.map_or_else(Stdio::inherit, Stdio::from))
            .spawn()
            .expect("bemi run starts")
    }

    /// `bemi store --from nats://…` into the store database; stderr piped when `log` is set.
    fn store_process(&self, log: bool) -> Child {
        let options = self.store.options();
        let Host::Tcp(host) = options.host() else {
            panic!("tests connect over TCP");
        };
        let url = format!(
            "postgres://{}@{host}:{}/{}",
            options.user(),
            options.port(),
            options.dbname()
        );
        Command::new(env!("CARGO_BIN_EXE_bemi"))
            .args([
                "store",
                "--from",
                &self.nats.url(),
                "--destination-url",
                &url,
            ])
            .args(["--batch-size", "200", "--ack-wait-ms", "3000"])
            .env_remove("DATABASE_URL")
            .env("LOG_LEVEL", if log { "info" } else { "warn" })
            .stdout(Stdio::null())
            .stderr(if log {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("bemi store starts")
    }

    /// Runs `transactions` workload transactions in the background; the counter says how many
    /// have committed.
    async fn workload(&self, transactions: i64) -> (tokio::task::JoinHandle<()>, Arc<AtomicI64>) {
        let writer = self.source.connect().await.unwrap();
        let written = Arc::new(AtomicI64::new(0));
        let progress = Arc::clone(&written);
        let task = tokio::spawn(async move {
            for txn in 0..transactions {
                workload::transaction(&writer, txn).await;
                progress.store(txn + 1, Ordering::Release);
            }
        });
        (task, written)
    }

    /// Rows in the store's `changes` (0 before the table exists).
    async fn count(&self) -> i64 {
        workload::stored(&self.stored).await
    }

    /// Waits until `changes` holds at least `expected` rows (the stores go on meanwhile).
    async fn wait_for_at_least(&self, expected: i64) {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let stored = self.count().await;
            if stored >= expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{stored} of {expected} changes stored"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `changes` holds exactly the workload of `transactions`, also a second later (a late
    /// redelivery would show up then).
    async fn assert_exactly_once(&self, transactions: i64) {
        workload::wait_for_stored(&self.stored, transactions * CHANGES_PER_TRANSACTION).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        workload::assert_exactly_once(&self.stored, transactions).await;
    }

    async fn wait_for_written(written: &AtomicI64, at: i64) {
        while written.load(Ordering::Acquire) < at {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Stops `child` with SIGTERM and returns its exit code.
fn terminate(mut child: Child) -> Option<i32> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap().code()
}

fn kill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_the_changes_table_once_with_its_context() {
    let pipeline = Pipeline::new().await;
    let tracker = pipeline.tracker(None);
    let store = pipeline.store_process(false);
    let (workload, _) = pipeline.workload(300).await;
    workload.await.unwrap();
    pipeline.assert_exactly_once(300).await;
    assert_eq!(terminate(tracker), Some(0));
    assert_eq!(terminate(store), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_killed_mid_stream_stores_nothing_twice() {
    const TRANSACTIONS: i64 = 1_200;
    let pipeline = Pipeline::new().await;
    let store = pipeline.store_process(false);
    let mut tracker = pipeline.tracker(None);
    let (workload, written) = pipeline.workload(TRANSACTIONS).await;
    for at in [250, 550, 850] {
        Pipeline::wait_for_written(&written, at).await;
        assert!(!workload.is_finished(), "the kill at {at} came too late");
        kill(&mut tracker);
        println!(
            "tracker killed at transaction {at}: {} stored",
            pipeline.count().await
        );
        tracker = pipeline.tracker(None);
    }
    workload.await.unwrap();
    pipeline.assert_exactly_once(TRANSACTIONS).await;
    assert_eq!(terminate(tracker), Some(0));
    assert_eq!(terminate(store), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nats_server_loses_nothing() {
    const TRANSACTIONS: i64 = 1_000;
    let mut pipeline = Pipeline::new().await;
    let tracker = pipeline.tracker(None);
    let store = pipeline.store_process(false);
    let (workload, written) = pipeline.workload(TRANSACTIONS).await;
    Pipeline::wait_for_written(&written, 300).await;
    assert!(!workload.is_finished(), "the restart came too late");
    pipeline.nats.kill();
    println!("nats-server killed: {} stored", pipeline.count().await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    pipeline.nats.start_again();
    workload.await.unwrap();
    pipeline.assert_exactly_once(TRANSACTIONS).await;
    assert_eq!(terminate(tracker), Some(0));
    assert_eq!(terminate(store), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_the_work_and_one_killed_loses_nothing() {
    const TRANSACTIONS: i64 = 1_000;
    let pipeline = Pipeline::new().await;
    let tracker = pipeline.tracker(None);
    let mut first = pipeline.store_process(false);
    let second = pipeline.store_process(true);
    let (workload, _) = pipeline.workload(TRANSACTIONS).await;
    pipeline
        .wait_for_at_least(TRANSACTIONS * CHANGES_PER_TRANSACTION / 3)
        .await;
    kill(&mut first);
    println!("one store killed: {} stored", pipeline.count().await);
    workload.await.unwrap();
    pipeline.assert_exactly_once(TRANSACTIONS).await;
    assert_eq!(terminate(tracker), Some(0));

    // The second store did part of the work, not all of it: the first took its share.
    let output = {
        let pid = second.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        second.wait_with_output().unwrap()
    };
    assert_eq!(output.status.code(), Some(0));
    let log = String::from_utf8_lossy(&output.stderr);
    let stored: i64 = log
        .lines()
        .filter(|line| line.contains("stopped"))
        .find_map(|line| line.split("stored=").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in the log:\n{log}"));
    println!("the surviving store stored {stored}");
    assert!(
        stored > 0 && stored < TRANSACTIONS * CHANGES_PER_TRANSACTION,
        "the second store stored {stored}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_killed_inside_a_large_transaction_publishes_it_again_and_it_is_stored_once() {
    const ROWS: u64 = 20_000;
    let pipeline = Pipeline::new().await;
    let store = pipeline.store_process(false);
    let mut tracker = pipeline.tracker(None);
    let sql = pipeline.source.connect().await.unwrap();
    sql.batch_execute(&format!(
        "BEGIN;
         SELECT pg_logical_emit_message(true, '_bemi', '{{\"job\": \"import\"}}');
         INSERT INTO items SELECT g, 0, 0 FROM generate_series(1, {ROWS}) g;
         COMMIT;"
    ))
    .await
    .unwrap();

    // The tracker publishes the transaction in batches of 300, and confirms it only after its
    // last one: killed once part of it is in the stream, it must publish all of it again.
    let js = jetstream::new(async_nats::connect(pipeline.nats.url()).await.unwrap());
    let in_stream = || async {
        match js.get_stream("BEMI").await {
            Ok(mut stream) => stream.info().await.unwrap().state.messages,
            Err(_) => 0,
        }
    };
    let published = loop {
        let published = in_stream().await;
        if published >= 1_000 {
            break published;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(published < ROWS / 2, "the kill came too late: {published}");
    kill(&mut tracker);
    println!("tracker killed with {published} of {ROWS} changes published");

    let log = tempfile::NamedTempFile::new().unwrap();
    let tracker = pipeline.tracker(Some(log.reopen().unwrap()));
    workload::wait_for_stored(&pipeline.stored, ROWS as i64).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let count = |query: &'static str| {
        let stored = &pipeline.stored;
        async move {
            stored
                .query_one(query, &[])
                .await
                .expect(query)
                .get::<_, i64>(0) as u64
        }
    };
    assert_eq!(count("SELECT count(*) FROM changes").await, ROWS);
    assert_eq!(
        count("SELECT count(DISTINCT primary_key) FROM changes WHERE context->>'job' = 'import'")
            .await,
        ROWS
    );
    // The stream kept one message per change, though more were published.
    assert_eq!(in_stream().await, ROWS);
    assert_eq!(terminate(tracker), Some(0));
    assert_eq!(terminate(store), Some(0));

    let log = std::fs::read_to_string(log.path()).unwrap();
    let duplicates: u64 = log
        .lines()
        .filter_map(|line| line.split("duplicates=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    println!("published again and dropped by the stream: {duplicates}");
    assert!(
        duplicates >= published,
        "{published} changes were in the stream before the kill, {duplicates} came again:\n{log}"
    );
}
