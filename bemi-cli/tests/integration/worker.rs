//! The `bemi` binary driven as a user would: setup, run with Bemi's DB_* variables, SIGTERM,
//! status, and the upgrade of a `changes` table created by Bemi's own worker.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bemi_core::{ConnectOptions, Host};
use bemi_temp_postgres::TempPostgres;
use bemi_testkit::TestDatabase;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(120);

/// `bemi` with Bemi's variables for `db`, slot and publication unique to it.
fn bemi(db: &TestDatabase, args: &[&str]) -> Command {
    let options = db.options();
    let Host::Tcp(host) = options.host() else {
        panic!("tests connect over TCP");
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bemi"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env("DB_HOST", host)
        .env("DB_PORT", options.port().to_string())
        .env("DB_NAME", options.dbname())
        .env("DB_USER", options.user())
        .env("DB_PASSWORD", "unused")
        .env("BEMI_SLOT", db.slot())
        .env("BEMI_PUBLICATION", db.publication())
        .env("LOG_LEVEL", "info");
    cmd
}

fn output(mut cmd: Command) -> Output {
    cmd.output().expect("bemi runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `bemi run`, killed if the test ends without stopping it (say on a failed
/// assertion), so that no worker outlives its test.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn terminate(Running(child): &mut Running) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "bemi did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn count(sql: &Client, query: &str) -> i64 {
    sql.query_one(query, &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

async fn wait_for_count(sql: &Client, query: &str, expected: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = count(sql, query).await;
        if n >= expected {
            assert_eq!(n, expected, "{query}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{query}: {n}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The state `bemi setup` manages, for comparisons.
async fn setup_state(sql: &Client, db: &TestDatabase) -> Vec<String> {
    let rows = sql
        .query(
            "SELECT 'publication ' || pubname || ' all=' || puballtables FROM pg_publication
             UNION ALL SELECT 'identity ' || relname || ' ' || relreplident::text FROM pg_class
               WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
             UNION ALL SELECT 'event trigger ' || evtname || ' ' || evtevent || ' ' || evttags::text
               FROM pg_event_trigger
             UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE proname = '_bemi_set_replica_identity'
             UNION ALL SELECT 'slot ' || plugin || ' ' || slot_type FROM pg_replication_slots
               WHERE slot_name = $1
             ORDER BY 1",
            &[&db.slot()],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(0).replace(&db.publication(), "PUB"))
        .collect()
}

#[tokio::test]
async fn setup_then_run_with_bemi_variables_then_sigterm_then_status() {
    let db = TestDatabase::create().await.expect("test database");
    let mut sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE todo (id int PRIMARY KEY, task text, done bool NOT NULL DEFAULT false);
         CREATE FUNCTION _bemi_row_trigger_func() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE
           context text := split_part(split_part(current_query(), '/*Bemi ', 2), ' Bemi*/', 1);
         BEGIN
           IF context <> '' THEN PERFORM pg_logical_emit_message(true, '_bemi', context); END IF;
           IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER _bemi_row_trigger BEFORE INSERT OR UPDATE OR DELETE ON todo
           FOR EACH ROW EXECUTE FUNCTION _bemi_row_trigger_func();",
    )
    .await
    .unwrap();

    let setup = output(bemi(&db, &["setup"]));
    assert!(setup.status.success(), "{}", text(&setup.stderr));
    assert!(
        text(&setup.stdout).contains("created"),
        "{}",
        text(&setup.stdout)
    );

    let mut worker = Running(
        bemi(&db, &["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Writes made while the worker starts are kept by the slot that setup created.
    let tx = sql.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO todo VALUES (1, 'a'), (2, 'b') /*Bemi {\"user\": \"ada\", \"via\": \"orm\"} Bemi*/",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    sql.batch_execute(
        "BEGIN; SELECT pg_logical_emit_message(true, '_bemi', '{\"user\": \"bob\"}');
         UPDATE todo SET done = true WHERE id = 1; DELETE FROM todo WHERE id = 2; COMMIT;",
    )
    .await
    .unwrap();
    wait_for_count(&sql, "SELECT count(*) FROM changes", 4).await;

    let status = terminate(&mut worker);
    let stderr = {
        use std::io::Read as _;
        let mut s = String::new();
        worker
            .0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");

    let rows = sql
        .query(
            "SELECT operation, primary_key, context->>'user' FROM changes ORDER BY commit_lsn, ordinal",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want = [
        ("CREATE", "1", "ada"),
        ("CREATE", "2", "ada"),
        ("UPDATE", "1", "bob"),
        ("DELETE", "2", "bob"),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect::<Vec<_>>()
    );
    // REPLICA IDENTITY FULL from setup: the delete's `before` is the whole row.
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM changes WHERE operation = 'DELETE' AND before->>'task' = 'b'"
        )
        .await,
        1
    );

    // The worker exited; its walsender ends as soon as the server notices.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(
        &sql,
        "SELECT count(*) FROM pg_replication_slots WHERE active",
    )
    .await
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot stays active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = output(bemi(&db, &["status", "--json"]));
    assert!(status.status.success(), "{}", text(&status.stderr));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["slot_exists"], true, "{json}");
    assert_eq!(json["active"], false, "{json}");
    // The slot is left just behind the record of the last position: that write itself.
    let lag = json["lag_bytes"].as_i64().unwrap();
    assert!(lag < 4096, "{json}");
    assert_eq!(json["changes"]["rows"], 4, "{json}");
    assert_eq!(json["changes"]["newest"]["operation"], "DELETE", "{json}");
}

#[tokio::test]
async fn setup_is_idempotent_and_print_sql_gives_the_same_state() {
    let applied = TestDatabase::create().await.unwrap();
    let printed = TestDatabase::create().await.unwrap();
    let schema = "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (x int);";
    let applied_sql = applied.connect().await.unwrap();
    let printed_sql = printed.connect().await.unwrap();
    applied_sql.batch_execute(schema).await.unwrap();
    printed_sql.batch_execute(schema).await.unwrap();

    let first = output(bemi(&applied, &["setup"]));
    assert!(first.status.success(), "{}", text(&first.stderr));
    let state = setup_state(&applied_sql, &applied).await;
    let second = output(bemi(&applied, &["setup"]));
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        !text(&second.stdout).contains("created"),
        "{}",
        text(&second.stdout)
    );
    assert_eq!(setup_state(&applied_sql, &applied).await, state);
    assert!(state.contains(&"identity a f".to_owned()), "{state:?}");
    assert!(state.contains(&"identity b f".to_owned()), "{state:?}");
    assert!(
        state.contains(&"slot pgoutput logical".to_owned()),
        "{state:?}"
    );

    // The printed SQL, applied by psql, gives the same state.
    let script = output(bemi(&printed, &["setup", "--print-sql"]));
    assert!(script.status.success(), "{}", text(&script.stderr));
    let server = bemi_testkit::server().unwrap();
    let pg = server.embedded().expect("the throwaway server");
    pg.psql(printed.name(), &text(&script.stdout))
        .expect("psql applies the script");
    assert_eq!(setup_state(&printed_sql, &printed).await, state);
    // A table created later keeps REPLICA IDENTITY FULL through the event trigger.
    printed_sql
        .batch_execute("CREATE TABLE c (id int)")
        .await
        .unwrap();
    assert_eq!(
        count(
            &printed_sql,
            "SELECT count(*) FROM pg_class WHERE relname = 'c' AND relreplident = 'f'"
        )
        .await,
        1
    );
    assert!(text(&script.stdout).contains("CREATE ROLE bemi_source WITH LOGIN REPLICATION;"));
}

#[tokio::test]
async fn setup_against_wal_level_replica_fails_with_the_fix() {
    let pg = tokio::task::spawn_blocking(|| {
        TempPostgres::builder()
            .setting("wal_level", "replica")
            .start()
    })
    .await
    .unwrap()
    .unwrap();
    let admin: ConnectOptions = pg.url("postgres").parse().unwrap();
    let db = TestDatabase::create_on(&admin).await.unwrap();
    let out = output(bemi(&db, &["setup"]));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("wal_level"), "{stderr}");
    assert!(
        stderr.contains("ALTER SYSTEM SET wal_level = logical"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_changes_table_made_by_bemi_is_upgraded_in_place_and_filled() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    // The table and indexes Bemi's worker creates (BEMI-COMPAT.md), with one existing row.
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
           CREATE INDEX changes_table_index ON changes ("table");
           CREATE INDEX changes_primary_key_index ON changes (primary_key);
           CREATE INDEX changes_operation_index ON changes (operation);
           CREATE INDEX changes_context_index ON changes USING gin (context jsonb_path_ops);
           CREATE INDEX changes_before_index ON changes USING gin ("before" jsonb_path_ops);
           CREATE INDEX changes_after_index ON changes USING gin ("after" jsonb_path_ops);
           ALTER TABLE changes ADD CONSTRAINT changes_position_table_schema_database_operation_unique
             UNIQUE (position, "table", schema, database, operation);
           INSERT INTO changes (primary_key, "after", database, schema, "table", operation,
             committed_at, queued_at, created_at, transaction_id, position)
           VALUES ('1', '{"id": 1}', 'old', 'public', 'legacy', 'CREATE', now(), now(), now(), 1, 42);
           CREATE TABLE items (id int PRIMARY KEY);"#,
    )
    .await
    .unwrap();
    let old_row: String = sql
        .query_one("SELECT to_jsonb(c)::text FROM changes c", &[])
        .await
        .unwrap()
        .get(0);

    let mut worker = Running(
        bemi(&db, &["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    // Wait until a walsender streams from the slot. A slot shows `active` already while it is
    // being created (held by the creating backend, waiting for running transactions); what
    // commits before its consistent point is not in its stream.
    wait_for_count(
        &sql,
        &format!(
            "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r
               ON r.pid = s.active_pid WHERE s.slot_name = '{}'",
            db.slot()
        ),
        1,
    )
    .await;
    // A COPY: every row shares one position, which Bemi's unique key would have collapsed.
    {
        use futures_util::SinkExt as _;
        let copy = sql.copy_in("COPY items FROM STDIN").await.unwrap();
        futures_util::pin_mut!(copy);
        copy.send(bytes::Bytes::from_static(b"1\n2\n3\n"))
            .await
            .unwrap();
        assert_eq!(copy.finish().await.unwrap(), 3);
    }
    wait_for_count(
        &sql,
        "SELECT count(*) FROM changes WHERE \"table\" = 'items'",
        3,
    )
    .await;
    assert_eq!(terminate(&mut worker).code(), Some(0));

    let still: String = sql
        .query_one(
            "SELECT (to_jsonb(c) - 'system_id' - 'commit_lsn' - 'ordinal')::text FROM changes c \
             WHERE \"table\" = 'legacy'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(still, old_row, "the existing row is untouched");
    assert_eq!(
        count(&sql, "SELECT count(*) FROM pg_constraint WHERE conname = 'changes_position_table_schema_database_operation_unique'").await,
        0
    );
    assert_eq!(
        count(&sql, "SELECT count(*) FROM pg_indexes WHERE tablename = 'changes' AND indexdef LIKE '%UNIQUE%(commit_lsn, ordinal, system_id)%'").await,
        1
    );
    // No duplicate indexes were added next to Bemi's.
    assert_eq!(
        count(&sql, "SELECT count(*) FROM pg_indexes WHERE tablename = 'changes' AND indexdef LIKE '%(committed_at)'").await,
        1
    );
}

#[tokio::test]
async fn an_idle_server_restart_does_not_end_the_worker() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("throwaway server");
    let admin: ConnectOptions = pg.url("postgres").parse().unwrap();
    let db = TestDatabase::create_on(&admin).await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut worker = Running(
        bemi(&db, &["run"])
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bemi run"),
    );
    // the first change shows the worker streams; then nothing is written for a while
    let deadline = Instant::now() + WAIT;
    let mut id = 0;
    while count(&sql, "SELECT count(*) FROM changes").await == 0 {
        id += 1;
        sql.execute("INSERT INTO t VALUES ($1)", &[&id])
            .await
            .unwrap();
        assert!(Instant::now() < deadline, "the worker stored nothing");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // (inserts made before the worker created its slot are not tracked)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = count(&sql, "SELECT count(*) FROM changes").await;

    let pg = tokio::task::spawn_blocking(move || {
        pg.restart().expect("pg_ctl restart -m fast");
        pg
    })
    .await
    .unwrap();
    assert!(
        matches!(worker.0.try_wait(), Ok(None)),
        "the worker exited after the restart"
    );
    let sql = db.connect().await.unwrap();
    sql.execute("INSERT INTO t VALUES (-1)", &[]).await.unwrap();
    wait_for_count(&sql, "SELECT count(*) FROM changes", stored + 1).await;
    assert!(terminate(&mut worker).success());
    drop(pg);
}
