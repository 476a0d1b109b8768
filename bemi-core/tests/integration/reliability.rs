//! The tracker never stops recording and never skips changes without a word: each test is a
//! case that once ended the tracker for good or lost changes silently (issue 11).

use std::time::{Duration, Instant};

use bemi_core::sink::{Batch, ChangeSink, PostgresSink, SourceInfo};
use bemi_core::{Change, ConnectOptions, ErrorKind, Lsn, TrackerHandle};
use bemi_temp_postgres::TempPostgres;
use bemi_testkit::TestDatabase;
use tokio_postgres::Client;

/// How long a test waits for its changes to be stored: generous, because the largest case
/// (1,100 rows each holding a 1.2 MB context) takes a minute on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(180);

async fn own_server() -> TempPostgres {
    tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("throwaway server")
}

async fn items(db: &TestDatabase) -> Client {
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, note text);
         ALTER TABLE items REPLICA IDENTITY FULL;",
    )
    .await
    .unwrap();
    sql
}

async fn insert(sql: &Client, ids: std::ops::Range<i32>) {
    for id in ids {
        sql.execute("INSERT INTO items VALUES ($1, 'x')", &[&id])
            .await
            .unwrap();
    }
}

async fn count(sql: &Client, query: &str) -> i64 {
    sql.query_one(query, &[]).await.unwrap().get(0)
}

/// Waits until `changes` (in `destination`) holds `expected` rows, failing if the tracker stops.
async fn wait_stored(destination: &ConnectOptions, expected: i64, tracker: &TrackerHandle) {
    let deadline = Instant::now() + WAIT;
    loop {
        let stored = match destination.connect().await {
            Ok(sql) => sql
                .simple_query("SET statement_timeout = 0; SELECT count(*) FROM changes")
                .await
                .ok()
                .and_then(|messages| {
                    messages.into_iter().find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
                        _ => None,
                    })
                })
                .unwrap_or(0),
            Err(_) => 0,
        };
        if stored >= expected {
            assert_eq!(stored, expected, "more rows than changes");
            return;
        }
        assert!(
            !tracker.is_finished(),
            "the tracker stopped: {:?}",
            tracker.progress()
        );
        assert!(
            Instant::now() < deadline,
            "{stored} of {expected} stored; {:?}",
            tracker.progress()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal(signal: &str, pids: &[String]) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids)
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pids:?}");
}

async fn walsender(sql: &Client, slot: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let pid: Option<i32> = sql
            .query_one(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        if let Some(pid) = pid {
            return pid.to_string();
        }
        assert!(Instant::now() < deadline, "no walsender for {slot}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_idle_server_restart_does_not_end_the_tracker() {
    let pg = own_server().await;
    let admin: ConnectOptions = pg.url("postgres").parse().unwrap();
    let db = TestDatabase::create_on(&admin).await.unwrap();
    let sql = items(&db).await;
    let tracker = db
        .tracker_builder()
        .unwrap()
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    insert(&sql, 0..1).await;
    wait_stored(&db.options(), 1, &tracker).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // nothing is being written: the walsender ends the copy with CommandComplete
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart().expect("pg_ctl restart -m fast");
        pg
    })
    .await
    .unwrap();
    let sql = db.connect().await.unwrap();
    insert(&sql, 1..3).await;
    wait_stored(&db.options(), 3, &tracker).await;
    assert!(
        tracker.progress().reconnects >= 1,
        "{:?}",
        tracker.progress()
    );
    tracker.shutdown().await.unwrap();
    drop(pg);
}

#[tokio::test]
async fn the_key_and_the_stored_position_carry_the_source_cluster() {
    let db = TestDatabase::create().await.unwrap();
    let destination = db.options();
    // Two clusters whose WAL positions coincide, as fresh clusters' often do.
    let at = chrono::Utc::now();
    let mut sinks = Vec::new();
    for (system, position) in [("7001", 0x100_0000_u64), ("7002", 0x80_0000)] {
        let mut sink = PostgresSink::connect(&destination).unwrap();
        let start = sink
            .open(&SourceInfo::new(system, "app", "bemi"))
            .await
            .unwrap();
        assert_eq!(start.durable, None);
        let change = Change::gap("app", Lsn(0x10), Lsn(0x80_0000), "test", at);
        sink.write(Batch::new(vec![change], Some(Lsn(position))))
            .await
            .unwrap();
        sinks.push(sink);
    }
    let sql = db.connect().await.unwrap();
    assert_eq!(count(&sql, "SELECT count(*) FROM changes").await, 2);
    for (system, position) in [("7001", 0x100_0000_u64), ("7002", 0x80_0000)] {
        let mut sink = PostgresSink::connect(&destination).unwrap();
        let start = sink
            .open(&SourceInfo::new(system, "app", "bemi"))
            .await
            .unwrap();
        assert_eq!(start.durable, Some(Lsn(position)), "source {system}");
    }
}

#[tokio::test]
async fn two_source_clusters_share_one_destination() {
    let (a, b) = (own_server().await, own_server().await);
    let audit = TestDatabase::create_on(&a.url("postgres").parse().unwrap())
        .await
        .unwrap();
    let mut sources = Vec::new();
    for pg in [&a, &b] {
        let admin: ConnectOptions = pg.url("postgres").parse().unwrap();
        admin
            .connect()
            .await
            .unwrap()
            .batch_execute(
                "CREATE TABLE items (id int PRIMARY KEY, note text);
                 ALTER TABLE items REPLICA IDENTITY FULL;",
            )
            .await
            .unwrap();
        sources.push(admin);
    }
    let start = |source: &ConnectOptions| {
        bemi_core::Tracker::builder(
            source.clone(),
            PostgresSink::connect(&audit.options()).unwrap(),
        )
        .start()
    };
    let trackers = [
        start(&sources[0]).await.unwrap(),
        start(&sources[1]).await.unwrap(),
    ];
    for source in &sources {
        insert(&source.connect().await.unwrap(), 0..10).await;
    }
    wait_stored(&audit.options(), 20, &trackers[0]).await;
    let [first, second] = trackers;
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();

    // the second cluster resumes from its own position, not the first one's
    insert(&sources[1].connect().await.unwrap(), 10..15).await;
    let second = start(&sources[1]).await.unwrap();
    wait_stored(&audit.options(), 25, &second).await;
    second.shutdown().await.unwrap();
    let sql = audit.connect().await.unwrap();
    let systems = count(&sql, "SELECT count(DISTINCT system_id) FROM changes").await;
    assert_eq!(systems, 2);
}

#[tokio::test]
async fn a_destination_behind_the_slot_is_refused_until_the_gap_is_accepted() {
    let db = TestDatabase::create().await.unwrap();
    let sql = items(&db).await;
    let tracker = db.tracker_builder().unwrap().start().await.unwrap();
    insert(&sql, 0..5).await;
    wait_stored(&db.options(), 5, &tracker).await;
    let backup: i64 = sql
        .query_one("SELECT lsn FROM _bemi_progress", &[])
        .await
        .unwrap()
        .get(0);
    insert(&sql, 5..10).await;
    wait_stored(&db.options(), 10, &tracker).await;
    tracker.shutdown().await.unwrap();

    // the destination is restored from the backup taken after the fifth transaction
    sql.batch_execute(&format!(
        "DELETE FROM changes WHERE commit_lsn > {backup};
         UPDATE _bemi_progress SET lsn = {backup};"
    ))
    .await
    .unwrap();
    let err = db.tracker_builder().unwrap().start().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Gap, "{}", err.report());
    assert!(err.to_string().contains("--accept-gap"), "{}", err.report());

    // a slot advanced by hand past changes the sink never saw
    let tracker = db
        .tracker_builder()
        .unwrap()
        .accept_gap(true)
        .start()
        .await
        .unwrap();
    wait_stored(&db.options(), 6, &tracker).await;
    tracker.shutdown().await.unwrap();
    insert(&sql, 10..16).await;
    // The stopped tracker's walsender may hold the slot a moment longer.
    bemi_testkit::drain::wait_until_slot_free(&sql, &db.slot()).await;
    sql.execute(
        "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
        &[&db.slot()],
    )
    .await
    .unwrap();
    let err = db.tracker_builder().unwrap().start().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Gap, "{}", err.report());
    let gaps = count(
        &sql,
        "SELECT count(*) FROM changes WHERE operation = 'MESSAGE' AND context ? '_bemi_gap'",
    )
    .await;
    assert_eq!(gaps, 1, "the accepted gap is on record");
}

#[tokio::test]
async fn positions_without_changes_are_recorded_before_they_are_confirmed() {
    let db = TestDatabase::create().await.unwrap();
    let sql = items(&db).await;
    let tracker = db
        .tracker_builder()
        .unwrap()
        .record_interval(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    insert(&sql, 0..1).await;
    wait_stored(&db.options(), 1, &tracker).await;
    let last_change: i64 = sql
        .query_one("SELECT max(commit_lsn) FROM changes", &[])
        .await
        .unwrap()
        .get(0);
    // WAL the tracker has nothing to store for: another database's writes
    let other = TestDatabase::create().await.unwrap();
    other
        .connect()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE noise AS SELECT generate_series(1, 1000) AS n")
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let row = sql
            .query_one(
                "SELECT (SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots \
                         WHERE slot_name = $1)::int8, \
                        (SELECT lsn FROM _bemi_progress)",
                &[&db.slot()],
            )
            .await
            .unwrap();
        let (slot, recorded): (i64, i64) = (row.get(0), row.get(1));
        assert!(
            slot <= recorded,
            "slot {slot} confirmed past the record {recorded}"
        );
        if slot > last_change + 1000 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot did not move on");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracker.shutdown().await.unwrap();
    // no false gap after quiet time
    db.tracker_builder()
        .unwrap()
        .start()
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_large_context_on_many_rows_is_stored_once_per_transaction() {
    let db = TestDatabase::create().await.unwrap();
    let sql = items(&db).await;
    let tracker = db.tracker_builder().unwrap().start().await.unwrap();
    let context = format!("{{\"blob\": \"{}\"}}", "€".repeat(400_000));
    sql.batch_execute(&format!(
        "BEGIN;
         SELECT pg_logical_emit_message(true, '_bemi', '{context}');
         INSERT INTO items SELECT g, 'x' FROM generate_series(1, 1100) g;
         COMMIT;"
    ))
    .await
    .unwrap();
    wait_stored(&db.options(), 1100, &tracker).await;
    let with_context = count(
        &sql,
        "SELECT count(*) FROM changes WHERE length(context->>'blob') = 400000",
    )
    .await;
    assert_eq!(with_context, 1100);
    assert_eq!(tracker.progress().reconnects, 0, "{:?}", tracker.progress());
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_short_statement_timeout_on_the_destination_does_not_block_the_sink() {
    let db = TestDatabase::create().await.unwrap();
    let sql = items(&db).await;
    let audit = TestDatabase::create().await.unwrap();
    audit
        .connect()
        .await
        .unwrap()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET statement_timeout = '1ms'",
            audit.name()
        ))
        .await
        .unwrap();
    let tracker = bemi_core::Tracker::builder(
        db.options(),
        PostgresSink::connect(&audit.options()).unwrap(),
    )
    .slot(db.slot())
    .publication(db.publication())
    .start()
    .await
    .unwrap();
    sql.batch_execute("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 5000) g")
        .await
        .unwrap();
    wait_stored(&audit.options(), 5000, &tracker).await;
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_value_beyond_jsonb_s_limit_is_kept_as_a_marker() {
    let db = TestDatabase::create().await.unwrap();
    let sql = items(&db).await;
    let tracker = db.tracker_builder().unwrap().start().await.unwrap();
    sql.batch_execute(
        "INSERT INTO items VALUES (1, repeat('x', 270000000));
         INSERT INTO items VALUES (2, 'after');",
    )
    .await
    .unwrap();
    wait_stored(&db.options(), 2, &tracker).await;
    let row = sql
        .query_one(
            "SELECT after->'note'->'_bemi_oversized'->>'bytes', \
                    length(after->'note'->'_bemi_oversized'->>'prefix') \
             FROM changes WHERE primary_key = '1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("270000002")
    );
    assert_eq!(row.get::<_, Option<i32>>(1), Some(1000));
    let after = count(
        &sql,
        "SELECT count(*) FROM changes WHERE after->>'note' = 'after'",
    )
    .await;
    assert_eq!(after, 1);
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn starting_again_does_not_lock_readers_out_of_changes() {
    let db = TestDatabase::create().await.unwrap();
    let _sql = items(&db).await;
    db.tracker_builder()
        .unwrap()
        .start()
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    // a long report holds its lock on `changes`
    let mut reader = db.connect().await.unwrap();
    let report = reader.transaction().await.unwrap();
    report
        .query("SELECT count(*) FROM changes", &[])
        .await
        .unwrap();
    let tracker = tokio::time::timeout(
        Duration::from_secs(20),
        db.tracker_builder().unwrap().start(),
    )
    .await
    .expect("the tracker started without waiting for the reader")
    .unwrap();
    let other = db.connect().await.unwrap();
    other
        .batch_execute("SET statement_timeout = '2s'; SELECT count(*) FROM changes")
        .await
        .unwrap();
    report.commit().await.unwrap();
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_silent_walsender_is_given_up_and_replaced() {
    let db = TestDatabase::create().await.unwrap();
    let sql = items(&db).await;
    let tracker = db
        .tracker_builder()
        .unwrap()
        .receive_timeout(Duration::from_secs(2))
        .backoff(Duration::from_millis(100), Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    let pid = walsender(&sql, &db.slot()).await;
    signal("STOP", std::slice::from_ref(&pid));
    let noticed = tokio::time::timeout(
        Duration::from_secs(15),
        tracker.wait_for(|p| p.reconnects >= 1),
    )
    .await;
    signal("CONT", &[pid]);
    noticed.expect("the tracker noticed the silent walsender");
    insert(&sql, 0..3).await;
    wait_stored(&db.options(), 3, &tracker).await;
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_hung_destination_does_not_hang_shutdown_and_loses_nothing() {
    let db = TestDatabase::create().await.unwrap();
    let sql = items(&db).await;
    let store = own_server().await;
    let audit: ConnectOptions = store.url("postgres").parse().unwrap();
    let builder = || {
        bemi_core::Tracker::builder(db.options(), PostgresSink::connect(&audit).unwrap())
            .slot(db.slot())
            .publication(db.publication())
            .write_timeout(Duration::from_secs(3))
            .shutdown_timeout(Duration::from_secs(2))
    };
    let tracker = builder().start().await.unwrap();
    insert(&sql, 0..2).await;
    wait_stored(&audit, 2, &tracker).await;

    let postmaster = std::fs::read_to_string(store.data_dir().join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &postmaster])
        .output()
        .unwrap();
    let mut frozen: Vec<String> = String::from_utf8(children.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    frozen.push(postmaster);
    signal("STOP", &frozen);
    insert(&sql, 2..4).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let began = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(15), tracker.shutdown()).await;
    signal("CONT", &frozen);
    // Whether the abandoned write is reported depends on whether its own timeout came first.
    if let Err(err) = stopped.expect("shutdown returned while the destination hung") {
        assert!(err.to_string().contains("next start"), "{}", err.report());
    }
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );

    let tracker = builder().start().await.unwrap();
    wait_stored(&audit, 4, &tracker).await;
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_read_only_destination_is_waited_for_with_growing_backoff() {
    let db = TestDatabase::create().await.unwrap();
    let sql = items(&db).await;
    let audit = TestDatabase::create().await.unwrap();
    let admin = audit.connect().await.unwrap();
    let tracker = bemi_core::Tracker::builder(
        db.options(),
        PostgresSink::connect(&audit.options()).unwrap(),
    )
    .slot(db.slot())
    .publication(db.publication())
    .backoff(Duration::from_millis(100), Duration::from_secs(10))
    .start()
    .await
    .unwrap();
    let sessions = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        audit.name()
    );
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on; {sessions}",
            audit.name()
        ))
        .await
        .unwrap();
    insert(&sql, 0..3).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let progress = tracker.progress();
    assert!(!tracker.is_finished(), "{progress:?}");
    assert!(
        (1..=8).contains(&progress.reconnects),
        "the backoff grows while nothing is stored: {progress:?}"
    );
    let admin = audit.connect().await.unwrap();
    admin
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} RESET default_transaction_read_only",
            audit.name()
        ))
        .await
        .unwrap();
    wait_stored(&audit.options(), 3, &tracker).await;
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_recreated_publication_gets_advice_that_works() {
    let db = TestDatabase::create().await.unwrap();
    let sql = items(&db).await;
    let tracker = db.tracker_builder().unwrap().start().await.unwrap();
    insert(&sql, 0..1).await;
    wait_stored(&db.options(), 1, &tracker).await;
    tracker.shutdown().await.unwrap();

    let publication = db.publication();
    sql.batch_execute(&format!("DROP PUBLICATION {publication}"))
        .await
        .unwrap();
    insert(&sql, 1..2).await;
    sql.batch_execute(&format!("CREATE PUBLICATION {publication} FOR ALL TABLES"))
        .await
        .unwrap();
    insert(&sql, 2..3).await;
    let tracker = db.tracker_builder().unwrap().spawn();
    let err = tokio::time::timeout(WAIT, tracker.join())
        .await
        .expect("the tracker stopped")
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::PublicationMissing,
        "{}",
        err.report()
    );
    assert!(
        err.to_string().contains("pg_replication_slot_advance"),
        "{}",
        err.report()
    );

    // following the advice: advance the slot, accept the gap, and tracking goes on
    sql.execute(
        "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
        &[&db.slot()],
    )
    .await
    .unwrap();
    let tracker = db
        .tracker_builder()
        .unwrap()
        .accept_gap(true)
        .start()
        .await
        .unwrap();
    insert(&sql, 3..4).await;
    wait_stored(&db.options(), 3, &tracker).await;
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_in_app_tracker_sets_up_replica_identity_as_bemi_setup_does() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE plain (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    let tracker = db.tracker_builder().unwrap().start().await.unwrap();
    sql.batch_execute(
        "INSERT INTO plain VALUES (1, 'a');
         UPDATE plain SET note = 'b';
         CREATE TABLE copied AS SELECT * FROM plain;
         SELECT * INTO selected FROM plain;",
    )
    .await
    .unwrap();
    // the insert, the update, and the rows of the two new tables
    wait_stored(&db.options(), 4, &tracker).await;
    tracker.shutdown().await.unwrap();
    let before: serde_json::Value = sql
        .query_one(
            "SELECT before FROM changes WHERE operation = 'UPDATE' AND \"table\" = 'plain'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, serde_json::json!({"id": 1, "note": "a"}));
    let full = count(
        &sql,
        "SELECT count(*) FROM pg_class WHERE relname IN ('plain', 'copied', 'selected') \
         AND relreplident = 'f'",
    )
    .await;
    assert_eq!(
        full, 3,
        "existing tables and those made by CTAS and SELECT INTO"
    );

    // opting out leaves the tables as they are
    let other = TestDatabase::create().await.unwrap();
    let other_sql = other.connect().await.unwrap();
    other_sql
        .batch_execute("CREATE TABLE plain (id int PRIMARY KEY)")
        .await
        .unwrap();
    let tracker = other
        .tracker_builder()
        .unwrap()
        .replica_identity(false)
        .start()
        .await
        .unwrap();
    tracker.shutdown().await.unwrap();
    let full = count(
        &other_sql,
        "SELECT count(*) FROM pg_class WHERE relname = 'plain' AND relreplident = 'f'",
    )
    .await;
    assert_eq!(full, 0);
}

#[tokio::test]
async fn a_start_that_fails_leaves_nothing_behind() {
    let taken = TestDatabase::create().await.unwrap();
    let db = TestDatabase::create().await.unwrap();
    taken
        .connect()
        .await
        .unwrap()
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.slot()],
        )
        .await
        .unwrap();
    let err = db.tracker_builder().unwrap().start().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{}", err.report());
    assert!(
        err.to_string().contains("belongs to database"),
        "{}",
        err.report()
    );
    let sql = db.connect().await.unwrap();
    let left = count(
        &sql,
        "SELECT (SELECT count(*) FROM pg_publication) \
              + (SELECT count(*) FROM pg_class WHERE relname IN ('changes', '_bemi_progress'))",
    )
    .await;
    assert_eq!(left, 0, "no publication nor tables left behind");
}

#[tokio::test]
async fn setting_replica_identity_does_not_queue_the_application_behind_a_long_query() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE busy (id int PRIMARY KEY); INSERT INTO busy VALUES (1)")
        .await
        .unwrap();
    // a long report holds a lock on the table for 8 s
    let report = db.connect().await.unwrap();
    let long = tokio::spawn(async move {
        report
            .batch_execute("BEGIN; SELECT * FROM busy; SELECT pg_sleep(8); COMMIT;")
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let setup_sql = db.connect().await.unwrap();
    let setup = bemi_core::setup::SourceSetup::new(db.slot(), db.publication());
    let prepared = tokio::spawn(async move { setup.prepare(&setup_sql).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // the application's own query waits for the ALTER at most its lock timeout
    let began = Instant::now();
    sql.query("SELECT * FROM busy", &[]).await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "the application waited {:?}",
        began.elapsed()
    );
    long.await.unwrap().unwrap();
    prepared.await.unwrap().unwrap();
    let full = count(
        &sql,
        "SELECT count(*) FROM pg_class WHERE relname = 'busy' AND relreplident = 'f'",
    )
    .await;
    assert_eq!(full, 1, "set once the report ended");
}
