//! Test support: a fresh database (with its own slot and publication names) per test, on a
//! throwaway server shared by the test process ([`bemi_temp_postgres`]), and the benchmark harnesses
//! ([`overhead`], [`drain`]). Not published: the workspace's own fixtures.
//!
//! Set `BEMI_TEST_DATABASE_URL` to a superuser URL of an existing PostgreSQL 14+ server with
//! `wal_level = logical` to use it instead of starting one. Otherwise the first test starts a
//! [`TempPostgres`]; if that fails, every test fails with the reason (tests never skip).
//!
//! ```no_run
//! # async fn t() -> bemi_core::Result<()> {
//! let db = bemi_testkit::TestDatabase::create().await?;
//! let client = db.connect().await?;
//! client.batch_execute("CREATE TABLE t (id int primary key)").await?;
//! # Ok(()) }
//! ```

pub mod browser;
pub mod cpu;
pub mod drain;
pub mod nats;
pub mod overhead;
mod tracked;
pub mod trail;

pub use tracked::{
    assert_task_contexts, ctx, oversized_context, task_context, tricky_context, Recorded, Tracked,
    ITEMS,
};

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use bemi_core::sql::quote_identifier;
use bemi_core::ConnectOptions;
use bemi_core::{Error, ErrorKind, Result};
use bemi_temp_postgres::TempPostgres;

/// The variable that points tests at an existing server.
pub const DATABASE_URL_VAR: &str = "BEMI_TEST_DATABASE_URL";

/// The server tests run against.
#[derive(Debug)]
pub struct TestServer {
    admin: ConnectOptions,
    embedded: Option<TempPostgres>,
}

impl TestServer {
    /// Settings to connect to the server's `postgres` database as a superuser.
    pub fn admin(&self) -> &ConnectOptions {
        &self.admin
    }

    /// The throwaway server, unless `BEMI_TEST_DATABASE_URL` is in use.
    pub fn embedded(&self) -> Option<&TempPostgres> {
        self.embedded.as_ref()
    }
}

/// Sends `tracing` output to the test's captured output, filtered by `RUST_LOG` (default
/// `warn`). Called by [`server`]; harmless to call again.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The server shared by this test process, started on first use.
pub fn server() -> Result<&'static TestServer> {
    init_tracing();
    static SERVER: OnceLock<std::result::Result<TestServer, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| start_server().map_err(|e| e.report()));
    server.as_ref().map_err(|reason| {
        Error::new(
            ErrorKind::Connect,
            format!("the test PostgreSQL server is unavailable: {reason}"),
        )
    })
}

fn start_server() -> Result<TestServer> {
    if let Ok(url) = std::env::var(DATABASE_URL_VAR) {
        let admin: ConnectOptions = url.parse()?;
        sweep_stale(&admin)?;
        return Ok(TestServer {
            admin,
            embedded: None,
        });
    }
    let pg = TempPostgres::start().map_err(|e| {
        Error::new(ErrorKind::Connect, "could not start a throwaway PostgreSQL").with_source(e)
    })?;
    Ok(TestServer {
        admin: pg.url("postgres").parse()?,
        embedded: Some(pg),
    })
}

/// Drops the databases and slots that earlier test processes left on a shared server (killed
/// before their [`TestDatabase`]s were dropped): names `bemi_test_<pid>_…` of processes that
/// are gone.
fn sweep_stale(admin: &ConnectOptions) -> Result<()> {
    let admin = admin.clone();
    let swept = std::thread::spawn(move || -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(ErrorKind::Config, "no runtime").with_source(e))?;
        runtime.block_on(async {
            let sql = admin.connect().await?;
            let names = sql
                .query(
                    "SELECT datname::text FROM pg_database WHERE datname LIKE 'bemi\\_test\\_%'",
                    &[],
                )
                .await?;
            for row in names {
                let name: String = row.get(0);
                let pid = name
                    .split('_')
                    .nth(2)
                    .and_then(|pid| pid.parse::<u32>().ok());
                let alive =
                    pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
                if alive {
                    continue;
                }
                sql.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND active_pid IS NULL",
                    &[&format!("{name}_slot")],
                )
                .await?;
                sql.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_identifier(&name)
                ))
                .await?;
            }
            Ok(())
        })
    });
    swept
        .join()
        .map_err(|_| Error::new(ErrorKind::Config, "sweeping stale test databases panicked"))?
}

/// A database of its own for one test, with names for its slot and publication. Dropping it
/// drops the database and its slot (terminating what still uses them), also on a server named
/// by `BEMI_TEST_DATABASE_URL`, so no logical slot is left to pin WAL.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    options: ConnectOptions,
    admin: ConnectOptions,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self
            .admin
            .clone()
            .with_connect_timeout(std::time::Duration::from_secs(5));
        let (name, slot) = (self.name.clone(), self.slot());
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let sql = admin.connect().await.ok()?;
                // Each its own statement: DROP DATABASE cannot run in a transaction block.
                let slot = bemi_core::sql::quote_literal(&slot);
                let statements = [
                    format!(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                         WHERE slot_name = {slot} AND active_pid IS NOT NULL"
                    ),
                    format!(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                         WHERE slot_name = {slot}"
                    ),
                    format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        quote_identifier(&name)
                    ),
                ];
                let dropped = tokio::time::timeout(std::time::Duration::from_secs(30), async {
                    for statement in &statements {
                        sql.batch_execute(statement).await?;
                    }
                    Ok::<_, tokio_postgres::Error>(())
                })
                .await;
                if !matches!(dropped, Ok(Ok(()))) {
                    tracing::debug!(database = %name, "could not drop the test database");
                }
                Some(())
            })
        });
        let _ = cleanup.join();
    }
}

impl TestDatabase {
    /// Creates a new, empty database on the shared test server.
    pub async fn create() -> Result<TestDatabase> {
        Self::create_on(server()?.admin()).await
    }

    /// Creates a new, empty database on another server (for tests that need special server
    /// settings), given superuser settings for it.
    pub async fn create_on(admin: &ConnectOptions) -> Result<TestDatabase> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "bemi_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        admin
            .connect()
            .await?
            .batch_execute(&format!("CREATE DATABASE {}", quote_identifier(&name)))
            .await?;
        Ok(TestDatabase {
            options: admin.clone().with_dbname(&name),
            admin: admin.clone(),
            name,
        })
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Settings to connect to this database as a superuser.
    pub fn options(&self) -> ConnectOptions {
        self.options.clone()
    }

    /// A replication slot name unique to this database.
    pub fn slot(&self) -> String {
        format!("{}_slot", self.name)
    }

    /// A publication name unique to this database.
    pub fn publication(&self) -> String {
        format!("{}_pub", self.name)
    }

    /// Opens an ordinary SQL connection to this database.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        self.options.connect().await
    }
}

impl TestDatabase {
    /// A tracker of this database with its slot and publication, storing into the `changes`
    /// table of the same database, to configure further.
    pub fn tracker_builder(
        &self,
    ) -> Result<bemi_core::TrackerBuilder<bemi_core::sink::PostgresSink>> {
        let sink = bemi_core::sink::PostgresSink::connect(&self.options)?;
        Ok(bemi_core::Tracker::builder(self.options(), sink)
            .slot(self.slot())
            .publication(self.publication()))
    }

    /// Spawns the tracker of [`tracker_builder`](Self::tracker_builder).
    pub fn spawn_tracker(&self) -> Result<bemi_core::TrackerHandle> {
        Ok(self.tracker_builder()?.spawn())
    }

    /// Polls `SELECT count(*) FROM changes` until it reaches `expected` and returns the count;
    /// fails after `timeout`, or at once if `tracker` stopped.
    pub async fn wait_for_changes(
        &self,
        expected: i64,
        tracker: &bemi_core::TrackerHandle,
        timeout: std::time::Duration,
    ) -> Result<i64> {
        let client = self.connect().await?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let count: i64 = client
                .query_one("SELECT count(*) FROM changes", &[])
                .await
                .map(|row| row.get(0))
                .unwrap_or(0);
            if count >= expected {
                return Ok(count);
            }
            let problem = if tracker.is_finished() {
                Some("the tracker stopped")
            } else if std::time::Instant::now() > deadline {
                Some("timed out")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(Error::new(
                    ErrorKind::Sink,
                    format!(
                        "{problem} with {count} of {expected} changes stored; progress: {:?}",
                        tracker.progress()
                    ),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Streams a test database's changes as [`RowEvent`](bemi_core::RowEvent)s, a transaction at a time.
#[derive(Debug)]
pub struct EventTap {
    stream: bemi_core::ReplicationStream,
    decoder: bemi_core::RowDecoder,
}

impl EventTap {
    /// Creates the database's publication (all tables) and slot, and starts streaming from the
    /// slot's start. Changes committed after this returns are seen.
    pub async fn start(db: &TestDatabase) -> Result<EventTap> {
        let client = db.connect().await?;
        bemi_core::setup::SourceSetup::new(db.slot(), db.publication())
            .replica_identity(false)
            .prepare(&client)
            .await?;
        let stream = bemi_core::ReplicationClient::connect(&db.options())
            .await?
            .start_replication(&db.slot(), &[&db.publication()], bemi_core::Lsn::ZERO)
            .await?;
        Ok(EventTap {
            stream,
            decoder: bemi_core::RowDecoder::new(bemi_core::CatalogKeys::new(client)),
        })
    }

    /// The stream itself (to confirm positions).
    pub fn stream(&self) -> &bemi_core::ReplicationStream {
        &self.stream
    }

    /// The next transaction's events from Begin to Commit, or a non-transactional message
    /// alone; fails after `timeout` without one.
    pub async fn next_transaction(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Vec<bemi_core::RowEvent>> {
        let read = async {
            let mut events = Vec::new();
            loop {
                let Some(bemi_core::ReplicationEvent::Data { message, .. }) =
                    self.stream.next_event().await?
                else {
                    continue;
                };
                let Some(event) = self.decoder.decode(message).await? else {
                    continue;
                };
                let done = match &event {
                    bemi_core::RowEvent::Commit { .. } => true,
                    bemi_core::RowEvent::Message { transactional, .. } => !transactional,
                    _ => false,
                };
                events.push(event);
                if done {
                    return Ok(events);
                }
            }
        };
        tokio::time::timeout(timeout, read).await.map_err(|_| {
            Error::new(
                ErrorKind::Connect,
                format!("no complete transaction arrived within {timeout:?}"),
            )
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exists(sql: &tokio_postgres::Client, database: &str) -> bool {
        sql.query_one(
            "SELECT count(*) = 1 FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .unwrap()
        .get(0)
    }

    #[tokio::test]
    async fn a_test_database_and_its_slot_are_dropped_with_it() {
        let db = TestDatabase::create().await.unwrap();
        db.connect()
            .await
            .unwrap()
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&db.slot()],
            )
            .await
            .unwrap();
        let (name, slot) = (db.name().to_owned(), db.slot());
        drop(db);
        let sql = server().unwrap().admin().connect().await.unwrap();
        assert!(!exists(&sql, &name).await);
        let slots: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(slots, 0);
    }

    #[tokio::test]
    async fn databases_of_test_processes_that_are_gone_are_swept() {
        let pg = tokio::task::spawn_blocking(TempPostgres::start)
            .await
            .unwrap()
            .expect("throwaway server");
        let admin: ConnectOptions = pg.url("postgres").parse().unwrap();
        let sql = admin.connect().await.unwrap();
        let gone = "bemi_test_4294967295_0";
        let alive = format!("bemi_test_{}_99", std::process::id());
        for database in [gone, &alive] {
            sql.batch_execute(&format!("CREATE DATABASE {database}"))
                .await
                .unwrap();
        }
        admin
            .clone()
            .with_dbname(gone)
            .connect()
            .await
            .unwrap()
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&format!("{gone}_slot")],
            )
            .await
            .unwrap();
        sweep_stale(&admin).unwrap();
        assert!(
            !exists(&sql, gone).await,
            "the dead process's database is gone"
        );
        assert!(
            exists(&sql, &alive).await,
            "a live process's database stays"
        );
        let slots: i64 = sql
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(slots, 0);
    }
}
