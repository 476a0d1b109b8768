//! One worker over three databases (a `bemi.toml` with three sources): one is broken by
//! dropping its slot; the other two keep streaming, and the broken one is reported in the
//! metrics, the log and `/readyz`.

use bemi_core::metrics;
use bemi_testkit::TestDatabase;
use tokio_postgres::Client;

use crate::worker_process::{value, Worker, WAIT};
use crate::workload::{database, transaction, wait_for_stored, CHANGES_PER_TRANSACTION};

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

/// The `[[source]]` of `db`, named `name`.
fn entry(name: &str, db: &TestDatabase) -> String {
    format!(
        "[[source]]\nname = \"{name}\"\ndatabase_url = \"{}\"\nslot = \"{}\"\npublication = \"{}\"\n\n",
        db.options().to_url(),
        db.slot(),
        db.publication()
    )
}

/// Drops `slot` under the worker: terminates its walsender and drops the slot before the
/// worker reconnects.
async fn drop_slot(sql: &Client, slot: &str) {
    let slot = bemi_core::sql::quote_literal(slot);
    sql.batch_execute(&format!(
        "DO $$ BEGIN
           LOOP
             PERFORM pg_terminate_backend(active_pid) FROM pg_replication_slots
               WHERE slot_name = {slot} AND active_pid IS NOT NULL;
             BEGIN
               PERFORM pg_drop_replication_slot({slot});
               EXIT;
             EXCEPTION WHEN object_in_use THEN
               PERFORM pg_sleep(0.01);
             END;
           END LOOP;
         END $$"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_source_does_not_stop_the_others_and_is_reported() {
    let mut dbs = Vec::new();
    for _ in NAMES {
        dbs.push(database().await);
    }
    let config = tempfile::NamedTempFile::new().unwrap();
    let text: String = NAMES
        .iter()
        .zip(&dbs)
        .map(|(name, (db, _))| entry(name, db))
        .collect();
    std::fs::write(config.path(), text).unwrap();
    let config_path = config.path().display().to_string();
    let mut worker = Worker::start(&["--config", &config_path], &[]);
    for name in NAMES {
        worker.wait_for_state(name, "streaming", WAIT).await;
    }
    let (status, sources) = worker.readiness().await;
    assert_eq!(status, 200, "{sources:?}");

    for (_, sql) in &dbs {
        for txn in 0..10 {
            transaction(sql, txn).await;
        }
    }
    for (_, sql) in &dbs {
        wait_for_stored(sql, 10 * CHANGES_PER_TRANSACTION).await;
    }

    // Break "beta".
    let (broken_db, broken_sql) = &dbs[1];
    drop_slot(broken_sql, &broken_db.slot()).await;
    worker.wait_for_state("beta", "stopped", WAIT).await;

    // The others keep streaming.
    for i in [0, 2] {
        let (_, sql) = &dbs[i];
        for txn in 10..20 {
            transaction(sql, txn).await;
        }
    }
    for i in [0, 2] {
        wait_for_stored(&dbs[i].1, 20 * CHANGES_PER_TRANSACTION).await;
    }

    // /readyz: not ready, naming the broken source and why.
    let (status, sources) = worker.readiness().await;
    assert_eq!(status, 503, "{sources:?}");
    assert_eq!(sources["alpha"]["state"], "streaming");
    assert_eq!(sources["gamma"]["state"], "streaming");
    assert_eq!(sources["beta"]["ready"], false);
    let error = &sources["beta"]["progress"]["last_error"];
    assert_eq!(error["kind"], "SlotMissing", "{error}");
    let error = error["message"].as_str().expect("the error's message");
    assert!(error.contains("is missing"), "{error}");

    // The metrics, labeled by source.
    let scrape = worker.metrics().await;
    let state = |source, state| {
        value(
            &scrape,
            metrics::TRACKER_STATE,
            &[("source", source), ("state", state)],
        )
    };
    assert_eq!(state("beta", "stopped"), 1.0);
    assert_eq!(state("alpha", "streaming"), 1.0);
    assert_eq!(state("gamma", "streaming"), 1.0);
    assert_eq!(
        value(
            &scrape,
            metrics::ERRORS,
            &[("source", "beta"), ("kind", "slot_missing")]
        ),
        1.0
    );
    for (source, rows) in [("alpha", 200.0), ("beta", 100.0), ("gamma", 200.0)] {
        assert_eq!(
            value(&scrape, metrics::CHANGES_STORED, &[("source", source)]),
            rows,
            "{source}"
        );
    }

    // The log says which source stopped, and why.
    let stopped = worker.wait_for_log(&["ERROR", "tracker stopped"]);
    assert!(stopped.contains("source=beta"), "{stopped}");
    assert!(stopped.contains("is missing"), "{stopped}");

    // A source stopped with an error: the worker says so when it stops.
    let status = worker.terminate();
    assert_eq!(status.code(), Some(1), "{}", worker.log());
}

/// `bemi run --config FILE` with `env`: its exit code and what it printed.
fn refused(file: &str, env: &[(&str, &str)]) -> String {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), file).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bemi"))
        .args(["run", "--config"])
        .arg(config.path())
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_config_file_that_could_be_misread_is_refused() {
    let url = "database_url = \"postgres://bemi@127.0.0.1:1/app\"";
    let typo = refused("[[source]]\ndatabse_url = \"postgres://x@h/db\"\n", &[]);
    assert!(typo.contains("unknown field `databse_url`"), "{typo}");
    let twice = refused(&format!("[[source]]\n{url}\n[[source]]\n{url}\n"), &[]);
    assert!(twice.contains("two sources"), "{twice}");
    assert!(twice.contains("\"bemi\""), "{twice}");
    let none = refused("", &[]);
    assert!(none.contains("lists no [[source]]"), "{none}");
    let unset = refused("[[source]]\ndatabase_url_env = \"NOT_SET_HERE\"\n", &[]);
    assert!(unset.contains("NOT_SET_HERE"), "{unset}");
    // The flags and variables of a single source would be ignored: refused too.
    let mixed = refused(&format!("[[source]]\n{url}\n"), &[("DB_HOST", "db")]);
    assert!(mixed.contains("cannot be used with"), "{mixed}");
}
