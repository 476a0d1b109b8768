//! Standby takeover: two `bemi run` on one slot, one streams and the other waits; the active
//! one is killed with SIGKILL during a workload, five times over, and each time the standby
//! takes over within 5 s and `changes` ends with every change exactly once.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bemi_core::metrics;

use crate::worker_process::{source_env, value, Worker, WAIT};
use crate::workload::{
    assert_exactly_once, database, stored, transaction, wait_for_stored, CHANGES_PER_TRANSACTION,
};

const KILLS: usize = 5;
const TAKEOVER: Duration = Duration::from_secs(5);

/// The worker of the pair that streams now, and the other one.
async fn roles(pair: &[Worker; 2], source: &str) -> (usize, usize) {
    for (i, worker) in pair.iter().enumerate() {
        let (_, sources) = worker.readiness().await;
        if sources[source]["state"] == "streaming" {
            return (i, 1 - i);
        }
    }
    panic!("neither worker streams");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_within_5_s_of_the_active_worker_being_killed_five_times() {
    let (db, sql) = database().await;
    let source = db.slot();
    let env = source_env(&db);
    let start = || Worker::start(&["--batch-size", "100"], &env);

    let first = start();
    first.wait_for_state(&source, "streaming", WAIT).await;
    let second = start();
    second.wait_for_state(&source, "standby", WAIT).await;
    let (status, sources) = second.readiness().await;
    assert_eq!(status, 200, "a standby is ready to take over: {sources:?}");
    let scrape = second.metrics().await;
    let state = |state| {
        value(
            &scrape,
            metrics::TRACKER_STATE,
            &[("source", &source), ("state", state)],
        )
    };
    assert_eq!((state("standby"), state("streaming")), (1.0, 0.0));
    second.wait_for_log(&["waiting as a standby"]);
    let mut pair = [first, second];

    // The workload runs until the last takeover is done, so every kill lands during it.
    let writer = db.connect().await.unwrap();
    let written = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let workload = tokio::spawn({
        let (written, done) = (Arc::clone(&written), Arc::clone(&done));
        async move {
            let mut txn = 0;
            while !done.load(Ordering::Acquire) {
                transaction(&writer, txn).await;
                txn += 1;
                written.store(txn, Ordering::Release);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            txn
        }
    });

    for kill in 1..=KILLS {
        // Let the active worker store some of the workload first.
        let before = stored(&sql).await;
        while stored(&sql).await < before + 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (active, standby) = roles(&pair, &source).await;
        pair[active].kill();
        let took = pair[standby]
            .wait_for_state(&source, "streaming", WAIT)
            .await;
        println!(
            "kill {kill}: at transaction {}, the standby streamed after {took:?}",
            written.load(Ordering::Acquire)
        );
        assert!(
            took < TAKEOVER,
            "kill {kill}: the standby took {took:?} to take over\n{}",
            pair[standby].log()
        );
        pair[standby].wait_for_log(&["took over the slot"]);
        // A new worker replaces the killed one, as a standby.
        pair[active] = start();
        pair[active].wait_for_state(&source, "standby", WAIT).await;
    }
    done.store(true, Ordering::Release);
    let transactions = workload.await.unwrap();
    wait_for_stored(&sql, transactions * CHANGES_PER_TRANSACTION).await;
    for worker in &mut pair {
        assert_eq!(worker.terminate().code(), Some(0), "{}", worker.log());
    }
    assert_exactly_once(&sql, transactions).await;
}
