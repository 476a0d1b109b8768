//! Shared by the end-to-end tests: a fresh database with a tracker storing into `changes`, an
//! sqlx pool on it, and reading back what the tracker stored.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bemi_core::sink::PostgresSink;
use bemi_core::testing::TestDatabase;
use bemi_core::{ConnectOptions, Tracker, TrackerHandle};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(120);

/// The tracked table of every test: `items (id int primary key, task int, note text)`.
pub const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, task int, note text);
     ALTER TABLE items REPLICA IDENTITY FULL;
     CREATE TABLE markers (id bigint PRIMARY KEY);
     ALTER TABLE markers REPLICA IDENTITY FULL;";

/// sqlx settings for the same database as `options`.
pub fn sqlx_options(options: &ConnectOptions) -> PgConnectOptions {
    options
        .to_url()
        .parse()
        .expect("sqlx reads the URLs of ConnectOptions")
}

/// A change of `items` as the tracker stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub operation: String,
    pub before: Value,
    pub after: Value,
    pub context: Value,
}

impl Stored {
    /// The `task` column of the row (after, or before for a delete).
    pub fn task(&self) -> &Value {
        match &self.after["task"] {
            Value::Null => &self.before["task"],
            task => task,
        }
    }
}

/// A test database with `items`, a running tracker, and a pool.
pub struct Harness {
    pub db: TestDatabase,
    pub pool: PgPool,
    pub tracker: TrackerHandle,
}

impl Harness {
    pub async fn start() -> Harness {
        let db = TestDatabase::create()
            .await
            .expect("a test database on the throwaway PostgreSQL server");
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(sqlx_options(&db.options()))
            .await
            .expect("sqlx pool");
        sqlx::raw_sql(ITEMS).execute(&pool).await.expect("schema");
        let sink = PostgresSink::connect(&db.options()).expect("sink");
        let tracker = Tracker::builder(db.options(), sink)
            .slot(db.slot())
            .publication(db.publication())
            .flush_interval(Duration::from_millis(20))
            .spawn();
        tracker
            .wait_for(|p| p.connected || p.last_error.is_some())
            .await;
        assert!(
            tracker.progress().connected,
            "the tracker did not start: {:?}",
            tracker.progress()
        );
        Harness { db, pool, tracker }
    }

    /// Every change of `items` committed so far, in commit order.
    ///
    /// Commits a marker row and waits until the tracker has stored it: the tracker stores
    /// transactions in commit order, so everything committed before it is stored too.
    pub async fn changes(&self) -> Vec<Stored> {
        static MARKER: AtomicI64 = AtomicI64::new(0);
        let marker = MARKER.fetch_add(1, Ordering::Relaxed);
        sqlx::query("INSERT INTO markers VALUES ($1)")
            .bind(marker)
            .execute(&self.pool)
            .await
            .expect("marker");
        let deadline = Instant::now() + WAIT;
        loop {
            let seen: Option<i64> = sqlx::query_scalar(
                "SELECT count(*) FROM changes WHERE \"table\" = 'markers' AND (after->>'id')::bigint = $1",
            )
            .bind(marker)
            .fetch_one(&self.pool)
            .await
            .ok();
            if seen == Some(1) {
                break;
            }
            assert!(
                !self.tracker.is_finished(),
                "the tracker stopped: {:?}",
                self.tracker.progress()
            );
            assert!(
                Instant::now() < deadline,
                "the tracker did not store the marker within {WAIT:?}: {:?}",
                self.tracker.progress()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        sqlx::query_as::<_, (String, Value, Value, Value)>(
            "SELECT operation, before, after, context FROM changes WHERE \"table\" = 'items'
             ORDER BY commit_lsn, ordinal",
        )
        .fetch_all(&self.pool)
        .await
        .expect("changes")
        .into_iter()
        .map(|(operation, before, after, context)| Stored {
            operation,
            before,
            after,
            context,
        })
        .collect()
    }

    pub async fn shutdown(self) {
        tokio::time::timeout(Duration::from_secs(30), self.pool.close())
            .await
            .expect("the pool closes (does the test still hold a connection?)");
        self.tracker.shutdown().await.expect("tracker shutdown");
    }
}

/// A context whose strings are hard to quote: comment markers, quotes, backslashes, an
/// injection attempt, control characters and non-ASCII text.
pub fn tricky_context() -> bemi_context::Context {
    bemi_context::Context::new()
        .with("comment", "*/ DROP TABLE items; /* /*Bemi {} Bemi*/")
        .with("quotes", r#"it's "quoted" '' ''' "#)
        .with("injection", "'); DROP TABLE items; --")
        .with("backslash", r"C:\Users\zoë\n \' \\ E'\x41'")
        .with("dollars", "$$ $bemi$ $1")
        .with("control", "line\nbreak\ttab\r\u{1}")
        .with("unicode", "Zoë Ångström 東京 Привет 🦀👩‍💻")
        .with(
            "nested",
            serde_json::json!({"a": ["*/", "\\", "'"], "b": null}),
        )
}

/// A context whose JSON text is over the 1,000,000-character limit.
pub fn oversized_context() -> bemi_context::Context {
    bemi_context::Context::new().with("blob", "x".repeat(bemi_context::MAX_PAYLOAD_CHARS + 1))
}
