//! `bemi migrate --partition`, `bemi retention` and the partitions in `bemi status`, run as a
//! user would.

use std::process::Output;

use bemi_core::sink::{Batch, ChangeSink, PostgresSink, SourceInfo};
use bemi_core::{Change, Lsn, Operation};
use bemi_testkit::TestDatabase;
use serde_json::Value;
use tokio_postgres::Client;

/// Runs `bemi` with `args` and `--database-url` for `db`, without the variables of the
/// environment that would change what it does.
async fn bemi(db: &TestDatabase, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_bemi"));
    command
        .args(args)
        .args(["--database-url", &db.options().to_url()]);
    for variable in [
        "DATABASE_URL",
        "DB_HOST",
        "DB_NAME",
        "DESTINATION_DATABASE_URL",
        "BEMI_RETENTION",
        "BEMI_ARCHIVE_SCHEMA",
        "BEMI_PARTITION_INTERVAL",
    ] {
        command.env_remove(variable);
    }
    command.output().await.expect("bemi runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "bemi failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn scalar(sql: &Client, query: &str) -> i64 {
    sql.query_one(query, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn migrate_partition_prints_its_sql_then_partitions_a_bemi_table_once() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    // Bemi's worker's table, with rows.
    sql.batch_execute(
        r#"CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
           CREATE TABLE changes (
             id uuid NOT NULL DEFAULT uuid_generate_v4() PRIMARY KEY,
             primary_key varchar(255) NULL,
             "before" jsonb NOT NULL DEFAULT '{}', "after" jsonb NOT NULL DEFAULT '{}',
             context jsonb NOT NULL DEFAULT '{}',
             database varchar(255) NOT NULL, schema varchar(255) NOT NULL, "table" varchar(255) NOT NULL,
             operation text NOT NULL CHECK (operation IN ('CREATE', 'UPDATE', 'DELETE', 'TRUNCATE', 'MESSAGE')),
             committed_at timestamptz(0) NOT NULL, queued_at timestamptz(0) NOT NULL,
             created_at timestamptz(0) NOT NULL,
             transaction_id bigint NOT NULL, position bigint NOT NULL);
           CREATE INDEX changes_committed_at_index ON changes (committed_at);
           CREATE INDEX changes_context_index ON changes USING gin (context jsonb_path_ops);
           ALTER TABLE changes ADD CONSTRAINT changes_position_table_schema_database_operation_unique
             UNIQUE (position, "table", schema, database, operation);
           INSERT INTO changes (primary_key, database, schema, "table", operation, committed_at,
             queued_at, created_at, transaction_id, position)
           SELECT i::text, 'app', 'public', 'todo', 'CREATE', now() - i * interval '1 day', now(),
             now(), i, i FROM generate_series(1, 300) i;"#,
    )
    .await
    .unwrap();

    let script = stdout(&bemi(&db, &["migrate", "--partition", "--print-sql"]).await);
    for expected in [
        "about 300 rows",
        "locks: SHARE UPDATE EXCLUSIVE",
        "inserts and queries go on",
        "locks: ACCESS EXCLUSIVE",
        "catalog only",
        "DROP CONSTRAINT \"changes_position_table_schema_database_operation_unique\"",
        "CREATE UNIQUE INDEX CONCURRENTLY",
        "ATTACH PARTITION \"public\".\"changes_legacy\" FOR VALUES FROM (MINVALUE)",
    ] {
        assert!(script.contains(expected), "{expected:?} in:\n{script}");
    }
    let partitioned = "SELECT count(*) FROM pg_class WHERE relname = 'changes' AND relkind = 'p'";
    assert_eq!(
        scalar(&sql, partitioned).await,
        0,
        "--print-sql changes nothing"
    );

    let ran = stdout(&bemi(&db, &["migrate", "--partition"]).await);
    assert!(ran.contains("locks:") && ran.contains("done 1."), "{ran}");
    assert_eq!(scalar(&sql, partitioned).await, 1);
    assert_eq!(scalar(&sql, "SELECT count(*) FROM changes").await, 300);
    assert_eq!(
        scalar(&sql, "SELECT count(*) FROM changes_legacy").await,
        300
    );

    let again = stdout(&bemi(&db, &["migrate", "--partition"]).await);
    assert!(
        again.contains("partitioned already: nothing to do"),
        "{again}"
    );
    let missing = bemi(&db, &["migrate"]).await;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--partition"));
}

#[tokio::test]
async fn retention_dry_run_then_drop_and_status_lists_partitions() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    // A partitioned table with a change in each of January to April 2020, made by the sink.
    let mut sink = PostgresSink::connect(&db.options()).unwrap();
    sink.open(&SourceInfo::new("1", "app", "slot"))
        .await
        .unwrap();
    let changes = (1..=4u64)
        .map(|month| {
            let at = format!("2020-{month:02}-15T00:00:00Z").parse().unwrap();
            let mut change = Change::gap("app", Lsn(month), Lsn(month), "test", at);
            change.operation = Operation::Create;
            change.table = "todo".to_owned();
            change.ordinal = 0;
            change
        })
        .collect();
    sink.write(Batch::new(changes, Some(Lsn(4)))).await.unwrap();

    let status: Value = serde_json::from_str(&stdout(
        &bemi(&db, &["status", "--json", "--retention", "52w"]).await,
    ))
    .unwrap();
    let changes = &status["changes"];
    assert_eq!(changes["partitioned"], true, "{status}");
    assert_eq!(changes["rows"], 4);
    let partitions = changes["partitions"].as_array().unwrap();
    let january = partitions
        .iter()
        .find(|p| p["name"] == "changes_p20200101")
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(january["rows"], 1);
    assert_eq!(january["from"], "2020-01-01T00:00:00Z");
    assert_eq!(january["to"], "2020-02-01T00:00:00Z");
    assert_eq!(january["expired"], true);
    assert!(january["bytes"].as_i64().unwrap() > 0 && january["size"].is_string());
    assert!(partitions
        .iter()
        .any(|p| p["is_default"] == true && p["expired"] == false));
    assert_eq!(status["retention"]["window"], "52w");
    let human = stdout(&bemi(&db, &["status", "--retention", "52w"]).await);
    assert!(
        human.contains("changes_p20200101") && human.contains("past the retention window"),
        "{human}"
    );

    let dry = stdout(&bemi(&db, &["retention", "--dry-run", "--retention", "52w"]).await);
    let months = [
        "changes_p20200101",
        "changes_p20200201",
        "changes_p20200301",
        "changes_p20200401",
    ];
    for month in months {
        assert!(dry.contains(&format!("would drop {month}")), "{dry}");
    }
    assert_eq!(
        scalar(&sql, "SELECT count(*) FROM changes").await,
        4,
        "{dry}"
    );

    let done = stdout(
        &bemi(
            &db,
            &[
                "retention",
                "--retention",
                "52w",
                "--archive-schema",
                "old_changes",
            ],
        )
        .await,
    );
    assert!(done.contains("moved to schema \"old_changes\""), "{done}");
    assert_eq!(scalar(&sql, "SELECT count(*) FROM changes").await, 0);
    assert_eq!(
        scalar(&sql, "SELECT count(*) FROM old_changes.changes_p20200301").await,
        1
    );
    let none = stdout(&bemi(&db, &["retention", "--retention", "52w"]).await);
    assert!(none.contains("no partition is past the window"), "{none}");
    let refused = bemi(&db, &["retention", "--archive-schema", "x"]).await;
    assert!(!refused.status.success());
}
