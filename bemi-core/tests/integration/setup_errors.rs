//! Each setup problem gives an error of its own kind whose message names the fix.

use std::time::Duration;

use bemi_core::setup::SourceSetup;
use bemi_core::{ConnectOptions, ErrorKind, Lsn, ReplicationClient};
use bemi_temp_postgres::TempPostgres;
use bemi_testkit::{EventTap, TestDatabase};

async fn server_with(name: &'static str, value: &'static str) -> TempPostgres {
    tokio::task::spawn_blocking(move || TempPostgres::builder().setting(name, value).start())
        .await
        .unwrap()
        .expect("throwaway server")
}

fn admin(pg: &TempPostgres) -> ConnectOptions {
    pg.url("postgres").parse().unwrap()
}

#[tokio::test]
async fn wal_level_replica_is_refused_with_the_fix() {
    let pg = server_with("wal_level", "replica").await;
    let client = admin(&pg).connect().await.unwrap();
    let err = SourceSetup::new("s", "p")
        .prepare(&client)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WalLevel);
    assert!(
        err.to_string()
            .contains("ALTER SYSTEM SET wal_level = logical and restart PostgreSQL"),
        "{err}"
    );
}

#[tokio::test]
async fn a_role_without_replication_is_refused_with_the_fix() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(&format!(
        "CREATE ROLE {0}_app LOGIN; GRANT ALL ON DATABASE {0} TO {0}_app",
        db.name()
    ))
    .await
    .unwrap();
    let app = db.options().with_user(format!("{}_app", db.name()));

    let err = SourceSetup::new(db.slot(), db.publication())
        .prepare(&app.connect().await.unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Privilege);
    assert!(err.to_string().contains("WITH REPLICATION"), "{err}");

    let err = ReplicationClient::connect(&app).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Privilege, "{err}");
    assert!(err.to_string().contains("WITH REPLICATION"), "{err}");
}

#[tokio::test]
async fn a_slot_in_use_is_refused_with_the_fix() {
    let db = TestDatabase::create().await.unwrap();
    let _tap = EventTap::start(&db).await.unwrap();
    let sql = db.connect().await.unwrap();

    let err = SourceSetup::new(db.slot(), db.publication())
        .prepare(&sql)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SlotInUse);
    assert!(err.to_string().contains("pg_terminate_backend"), "{err}");
    assert!(err.is_transient());

    let err = ReplicationClient::connect(&db.options())
        .await
        .unwrap()
        .start_replication(&db.slot(), &[&db.publication()], Lsn::ZERO)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SlotInUse, "{err}");
    assert!(err.to_string().contains("another slot name"), "{err}");
}

#[tokio::test]
async fn a_missing_slot_or_publication_is_named_with_the_fix() {
    let db = TestDatabase::create().await.unwrap();
    let err = ReplicationClient::connect(&db.options())
        .await
        .unwrap()
        .start_replication("no_such_slot", &["p"], Lsn::ZERO)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SlotMissing, "{err}");
    assert!(
        err.to_string()
            .contains("pg_create_logical_replication_slot"),
        "{err}"
    );

    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    sql.query(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&db.slot()],
    )
    .await
    .unwrap();
    let mut stream = ReplicationClient::connect(&db.options())
        .await
        .unwrap()
        .start_replication(&db.slot(), &["no_such_publication"], Lsn::ZERO)
        .await
        .unwrap();
    sql.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Err(e) = stream.next_event().await {
                return e;
            }
        }
    })
    .await
    .expect("the server reports the missing publication");
    assert_eq!(err.kind(), ErrorKind::PublicationMissing, "{err}");
    assert!(err.to_string().contains("CREATE PUBLICATION"), "{err}");
}

#[tokio::test]
async fn an_invalidated_slot_is_reported_as_lost_with_the_fix() {
    let pg = server_with("max_slot_wal_keep_size", "1MB").await;
    let db = TestDatabase::create_on(&admin(&pg)).await.unwrap();
    let sql = db.connect().await.unwrap();
    let setup = SourceSetup::new(db.slot(), db.publication());
    setup.prepare(&sql).await.unwrap();
    sql.batch_execute("CREATE TABLE t (id int, payload text)")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        sql.batch_execute(
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
             SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .await
        .unwrap();
        let status: Option<String> = sql
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.slot()],
            )
            .await
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot still {status:?}"
        );
    }

    let err = setup.prepare(&sql).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SlotLost);
    assert!(err.to_string().contains("recreate the slot"), "{err}");

    let err = ReplicationClient::connect(&db.options())
        .await
        .unwrap()
        .start_replication(&db.slot(), &[&db.publication()], Lsn::ZERO)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SlotLost, "{err}");
    assert!(err.to_string().contains("recreate the slot"), "{err}");
}

#[tokio::test]
async fn tables_without_replica_identity_full_are_listed_when_the_setup_leaves_them() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE full_one (id int PRIMARY KEY); ALTER TABLE full_one REPLICA IDENTITY FULL;
         CREATE TABLE keyed (id int PRIMARY KEY);
         CREATE SCHEMA billing; CREATE TABLE billing.invoices (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let report = SourceSetup::new(db.slot(), db.publication())
        .replica_identity(false)
        .prepare(&sql)
        .await
        .unwrap();
    assert_eq!(
        report.tables_without_full_identity,
        ["billing.invoices", "public.keyed"]
    );
    assert!(report.created_slot && report.created_publication);
    // the tracker's own tables are left out: it never records them
    let report = SourceSetup::new(db.slot(), db.publication())
        .ignore_tables([("billing", "invoices")])
        .replica_identity(false)
        .prepare(&sql)
        .await
        .unwrap();
    assert_eq!(report.tables_without_full_identity, ["public.keyed"]);
    // by default the setup sets it where it is missing, except on tables never recorded
    let report = SourceSetup::new(db.slot(), db.publication())
        .ignore_tables([("billing", "invoices")])
        .prepare(&sql)
        .await
        .unwrap();
    assert!(report.tables_without_full_identity.is_empty());
    let full: Vec<String> = sql
        .query(
            "SELECT relname::text FROM pg_class WHERE relname IN ('keyed', 'invoices') \
             AND relreplident = 'f'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(full, ["keyed"]);
}

#[tokio::test]
async fn start_returns_why_the_tracker_did_not_start() {
    // A problem the tracker gives up on: no slot, and it may not create one.
    let db = TestDatabase::create().await.unwrap();
    let err = db
        .tracker_builder()
        .unwrap()
        .create_missing(false)
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SlotMissing, "{}", err.report());

    // A problem it would retry after: nothing listens at the address. `start` gives up at once.
    let nowhere: ConnectOptions = "postgres://bemi@127.0.0.1:1/bemi".parse().unwrap();
    let sink = bemi_core::sink::PostgresSink::connect(&nowhere).unwrap();
    let err = bemi_core::Tracker::builder(nowhere, sink)
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{}", err.report());
    assert!(
        err.report()
            .starts_with("the tracker did not start: the database connection failed"),
        "{}",
        err.report()
    );
}

#[tokio::test]
async fn a_lost_slot_is_not_recreated_over_stored_changes() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t REPLICA IDENTITY FULL")
        .await
        .unwrap();
    let tracker = db.tracker_builder().unwrap().start().await.unwrap();
    sql.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    db.wait_for_changes(1, &tracker, Duration::from_secs(30))
        .await
        .unwrap();
    tracker.shutdown().await.unwrap();

    // the slot is lost while the tracker is down; changes made meanwhile cannot be streamed
    // (the server ends the tracker's walsender a moment after it disconnects)
    for _ in 0..100 {
        let active: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&db.slot()],
            )
            .await
            .unwrap()
            .get(0);
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sql.execute("SELECT pg_drop_replication_slot($1)", &[&db.slot()])
        .await
        .unwrap();
    sql.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    let err = db.tracker_builder().unwrap().start().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SlotMissing, "{}", err.report());
    assert!(
        err.to_string().contains("would never be recorded"),
        "{}",
        err.report()
    );
    let slots: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "the tracker did not create the slot over the gap");

    // a slot created by hand does not hide the gap: the next start is refused
    SourceSetup::new(db.slot(), db.publication())
        .prepare(&sql)
        .await
        .unwrap();
    let err = db.tracker_builder().unwrap().start().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Gap, "{}", err.report());

    // accepting the gap records it in the trail, and tracking carries on from there
    let tracker = db
        .tracker_builder()
        .unwrap()
        .accept_gap(true)
        .start()
        .await
        .unwrap();
    sql.execute("INSERT INTO t VALUES (3)", &[]).await.unwrap();
    db.wait_for_changes(3, &tracker, Duration::from_secs(30))
        .await
        .unwrap();
    tracker.shutdown().await.unwrap();
    let rows: Vec<(String, Option<String>, serde_json::Value)> = sql
        .query(
            "SELECT operation, primary_key, context FROM changes ORDER BY commit_lsn",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_deref()),
        ("CREATE", Some("1"))
    );
    assert_eq!(rows[1].0, "MESSAGE", "{rows:?}");
    let gap = &rows[1].2["_bemi_gap"];
    assert!(gap["from"].is_string() && gap["to"].is_string(), "{rows:?}");
    assert_eq!(
        (rows[2].0.as_str(), rows[2].1.as_deref()),
        ("CREATE", Some("3"))
    );

    // once recorded, the gap is not reported again
    let tracker = db.tracker_builder().unwrap().start().await.unwrap();
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stored_position_past_the_source_s_wal_is_refused() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let tracker = db.tracker_builder().unwrap().start().await.unwrap();
    // A change stored: the sink has a position for the slot (a tracker stopped before it saw
    // anything to record may have none).
    sql.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    db.wait_for_changes(1, &tracker, Duration::from_secs(60))
        .await
        .unwrap();
    tracker.shutdown().await.unwrap();
    // as if `changes` and its progress were restored from another cluster, further along
    let far = Lsn(0xFF << 32); // FF/0
    let updated = sql
        .execute(
            "UPDATE _bemi_progress SET lsn = $2 WHERE slot = $1",
            &[&db.slot(), &(far.0 as i64)],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
    let err = db.tracker_builder().unwrap().start().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{}", err.report());
    assert!(
        err.to_string().contains("belongs to another cluster"),
        "{}",
        err.report()
    );
}
