//! The roles and `pg_hba.conf` lines that `bemi setup --print-sql` prints are enough to run the
//! worker and the read commands, and no more: the source role cannot copy the cluster.

use std::io::Read as _;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use bemi_core::setup::{DESTINATION_ROLE, SOURCE_ROLE};
use bemi_core::ConnectOptions;
use bemi_temp_postgres::TempPostgres;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(120);
const SOURCE_PASSWORD: &str = "source-pw";
const DESTINATION_PASSWORD: &str = "destination-pw";
const APP_PASSWORD: &str = "app-pw";

/// A running `bemi run`, killed if the test ends without stopping it.
struct Running(Child);

impl Running {
    /// SIGTERM, then the exit status and everything the worker logged.
    fn stop(&mut self) -> (ExitStatus, String) {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let log = self.log();
        (self.0.wait().unwrap(), log)
    }

    /// What the worker logged, once it has exited.
    fn log(&mut self) -> String {
        let mut log = String::new();
        if let Some(mut stderr) = self.0.stderr.take() {
            stderr.read_to_string(&mut log).unwrap();
        }
        log
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn url(pg: &TempPostgres, user: &str, password: &str) -> String {
    format!("postgres://{user}:{password}@127.0.0.1:{}/appdb", pg.port())
}

/// `bemi` on `appdb`: the tracked tables through `source`, `changes` in schema `audit` through
/// `destination`.
fn bemi(args: &[&str], source: &str, destination: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bemi"));
    cmd.args(args)
        .env_clear()
        .env("DATABASE_URL", source)
        .env("DESTINATION_DATABASE_URL", destination)
        .env("BEMI_DESTINATION_SCHEMA", "audit")
        .env("LOG_LEVEL", "info");
    cmd
}

fn succeed(mut cmd: Command) -> String {
    let out: Output = cmd.output().expect("bemi runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn count(sql: &Client, query: &str) -> i64 {
    sql.query_one(query, &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

async fn wait_for_count(sql: &Client, query: &str, expected: i64, worker: &mut Running) {
    let deadline = Instant::now() + WAIT;
    while count(sql, query).await < expected {
        if worker.0.try_wait().unwrap().is_some() {
            panic!("the worker stopped: {}", worker.log());
        }
        assert!(Instant::now() < deadline, "{query}: expected {expected}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(sql, query).await, expected, "{query}");
}

#[tokio::test]
async fn the_printed_roles_run_everything_and_the_source_role_cannot_copy_the_cluster() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("throwaway PostgreSQL");
    pg.psql(
        "postgres",
        &format!(
            "CREATE DATABASE appdb;
             CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}';"
        ),
    )
    .unwrap();
    pg.psql(
        "appdb",
        "CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL, done bool NOT NULL);
         GRANT SELECT, INSERT, UPDATE, DELETE ON todo TO app;",
    )
    .unwrap();
    let superuser = pg.url("appdb");

    // Setup as a superuser, then the printed script with its roles.
    succeed(bemi(&["setup"], &superuser, &superuser));
    let script = succeed(bemi(&["setup", "--print-sql"], &superuser, &superuser));
    pg.psql("appdb", &script)
        .expect("psql runs the printed script");
    pg.psql(
        "appdb",
        &format!(
            "ALTER ROLE {SOURCE_ROLE} PASSWORD '{SOURCE_PASSWORD}';
             ALTER ROLE {DESTINATION_ROLE} PASSWORD '{DESTINATION_PASSWORD}';"
        ),
    )
    .unwrap();

    // pg_hba.conf: the printed lines first, then a permissive configuration that would let any
    // role with REPLICATION take a base backup.
    let printed: Vec<&str> = script
        .lines()
        .filter_map(|line| line.strip_prefix("--   "))
        .filter(|line| line.starts_with("local") || line.starts_with("host"))
        .collect();
    assert_eq!(printed.len(), 3, "{script}");
    assert!(
        printed
            .iter()
            .any(|l| l.contains("\"appdb\"") && l.contains(SOURCE_ROLE)),
        "{printed:?}"
    );
    let hba = format!(
        "{}\nlocal all postgres trust\nhost all postgres 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 scram-sha-256\n\
         host replication all 127.0.0.1/32 scram-sha-256\n",
        printed.join("\n")
    );
    std::fs::write(pg.data_dir().join("pg_hba.conf"), hba).unwrap();
    pg.psql("postgres", "SELECT pg_reload_conf()").unwrap();

    let admin = superuser.parse::<ConnectOptions>().unwrap();
    let admin = admin.connect().await.unwrap();
    let privileges: String = admin
        .query_one(
            "SELECT format('super=%s replication=%s createdb=%s createrole=%s tables=%s',
                    rolsuper, rolreplication, rolcreatedb, rolcreaterole,
                    (SELECT string_agg(table_name || ':' || privilege_type, ',' ORDER BY table_name)
                       FROM information_schema.role_table_grants WHERE grantee = rolname))
             FROM pg_roles WHERE rolname = $1",
            &[&SOURCE_ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        privileges,
        "super=f replication=t createdb=f createrole=f \
         tables=_bemi_key_history:SELECT,todo:SELECT",
        "the tracked tables, and the key history the tracker reads"
    );

    let source = url(&pg, SOURCE_ROLE, SOURCE_PASSWORD);
    let destination = url(&pg, DESTINATION_ROLE, DESTINATION_PASSWORD);
    let app = url(&pg, "app", APP_PASSWORD);

    let mut worker = Running(
        bemi(&["run"], &source, &destination)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let app_sql = app
        .parse::<ConnectOptions>()
        .unwrap()
        .connect()
        .await
        .unwrap();
    app_sql
        .batch_execute(
            "INSERT INTO todo VALUES (1, 'write the test', false), (2, 'ship it', false);
             UPDATE todo SET done = true WHERE id = 1;",
        )
        .await
        .unwrap();
    wait_for_count(&admin, "SELECT count(*) FROM audit.changes", 3, &mut worker).await;
    let owner: String = admin
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE schemaname = 'audit' AND tablename = 'changes'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, DESTINATION_ROLE);

    // The read commands with the same two roles.
    let history = succeed(bemi(
        &["history", "todo", "1", "--json"],
        &source,
        &destination,
    ));
    assert!(history.contains("write the test"), "{history}");
    assert!(history.contains("UPDATE"), "{history}");
    let changes = succeed(bemi(
        &["changes", "--table", "todo", "--json"],
        &source,
        &destination,
    ));
    assert!(changes.contains("ship it"), "{changes}");

    // A revert writes the tracked table, which is the application's to write: its role, and the
    // destination role to read `changes`. The worker records the revert too.
    let reverted = succeed(bemi(
        &[
            "revert",
            "--table",
            "todo",
            "--operation",
            "UPDATE",
            "--by",
            "test",
        ],
        &app,
        &destination,
    ));
    assert!(reverted.contains("reverted 1 change"), "{reverted}");
    let done: bool = admin
        .query_one("SELECT done FROM todo WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!done);
    wait_for_count(&admin, "SELECT count(*) FROM audit.changes", 4, &mut worker).await;

    // Physical replication is refused to the source role by the printed lines, although a
    // later line would allow it.
    let backup_dir = pg.data_dir().with_file_name("basebackup");
    let backup = Command::new(pg.bindir().join("pg_basebackup"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            SOURCE_ROLE,
        ])
        .args(["-w", "-X", "none", "-D"])
        .arg(&backup_dir)
        .env("PGPASSWORD", SOURCE_PASSWORD)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&backup.stderr);
    assert!(!backup.status.success(), "pg_basebackup ran: {stderr}");
    assert!(
        stderr.contains("rejects replication connection"),
        "{stderr}"
    );
    assert!(!backup_dir.join("PG_VERSION").exists());

    let (status, log) = worker.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}
