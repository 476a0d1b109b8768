//! A tracked test database for end-to-end tests of application context, shared by the
//! adapters' tests (tokio-postgres here, sqlx, SeaORM, Diesel): a fresh database with the
//! [`ITEMS`] tables, a tracker storing their changes in `changes`, and reading back what it
//! stored.

use std::time::Duration;

use bemi_context::Context;
use serde_json::Value;

use crate::TestDatabase;
use bemi_core::TrackerHandle;

/// The schema of every tracked test database: `items (id int primary key, task int, note text)`,
/// which the tests write, and the `sync_marker` table [`Tracked::changes`] writes through
/// [`sync`](super::trail::sync).
pub const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, task int, note text);
     ALTER TABLE items REPLICA IDENTITY FULL;
     CREATE TABLE sync_marker (id serial PRIMARY KEY);
     ALTER TABLE sync_marker REPLICA IDENTITY FULL;";

/// A change of `items` as the tracker stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// `CREATE`, `UPDATE`, `DELETE` or `TRUNCATE`.
    pub operation: String,
    /// The row's `id`, as text.
    pub primary_key: Option<String>,
    /// The row before the change (`{}` for a create).
    pub before: Value,
    /// The row after the change (`{}` for a delete).
    pub after: Value,
    /// The context the change was stitched with (`{}` for none).
    pub context: Value,
}

impl Recorded {
    /// The `task` column of the row (after, or before for a delete).
    pub fn task(&self) -> &Value {
        match &self.after["task"] {
            Value::Null => &self.before["task"],
            task => task,
        }
    }
}

/// A test database with [`ITEMS`] and a running tracker.
#[derive(Debug)]
pub struct Tracked {
    /// The database; connect to it with [`TestDatabase::connect`] or its
    /// [`options`](TestDatabase::options).
    pub db: TestDatabase,
    /// The tracker, storing into `changes` of the same database.
    pub tracker: TrackerHandle,
    sql: tokio_postgres::Client,
}

impl Tracked {
    /// Creates the database and its tables, and starts the tracker.
    ///
    /// # Panics
    ///
    /// When the test server, the database or the tracker cannot start, with the reason: tests
    /// fail loudly rather than skip.
    pub async fn start() -> Tracked {
        let db = TestDatabase::create()
            .await
            .expect("a test database on the throwaway PostgreSQL server");
        let sql = db.connect().await.expect("connect");
        sql.batch_execute(ITEMS).await.expect("schema");
        let tracker = db
            .tracker_builder()
            .expect("sink")
            .flush_interval(Duration::from_millis(20))
            .start()
            .await
            .unwrap_or_else(|e| panic!("{}", e.report()));
        Tracked { db, tracker, sql }
    }

    /// Every change of `items` committed so far, in commit order.
    ///
    /// Waits for the tracker with [`sync`](super::trail::sync): a marker row committed now and
    /// stored means everything committed before is stored too.
    ///
    /// # Panics
    ///
    /// When the tracker stops or does not catch up within two minutes.
    pub async fn changes(&self) -> Vec<Recorded> {
        super::trail::sync(&self.sql, &self.tracker).await;
        self.sql
            .query(
                "SELECT operation, primary_key, before, after, context FROM changes
                 WHERE \"table\" = 'items' ORDER BY commit_lsn, ordinal",
                &[],
            )
            .await
            .expect("changes")
            .iter()
            .map(|r| Recorded {
                operation: r.get(0),
                primary_key: r.get(1),
                before: r.get(2),
                after: r.get(3),
                context: r.get(4),
            })
            .collect()
    }

    /// [`changes`](Self::changes), then stops the tracker.
    pub async fn finish(self) -> Vec<Recorded> {
        let changes = self.changes().await;
        self.shutdown().await;
        changes
    }

    /// Stops the tracker.
    ///
    /// # Panics
    ///
    /// When it stopped with an error.
    pub async fn shutdown(self) {
        self.tracker.shutdown().await.expect("tracker shutdown");
    }
}

/// A context from a JSON object.
///
/// # Panics
///
/// When `value` is not an object.
pub fn ctx(value: Value) -> Context {
    Context::try_from(value).expect("an object")
}

/// The context task `task` of a concurrency test writes with.
pub fn task_context(task: i32) -> Context {
    ctx(serde_json::json!({"task": task, "user": format!("u{task}")}))
}

/// Asserts that `rows` are `expected` changes, each stitched with the
/// [`task_context`] of the task in its `task` column: concurrent tasks never mixed contexts.
///
/// # Panics
///
/// When they are not, naming the row.
#[track_caller]
pub fn assert_task_contexts(rows: &[Recorded], expected: usize) {
    assert_eq!(rows.len(), expected);
    for row in rows {
        let task = &row.after["task"];
        assert_eq!(
            row.context,
            serde_json::json!({"task": task, "user": format!("u{task}")}),
            "{row:?}"
        );
    }
}

/// A context whose strings are hard to quote: comment markers, quotes, backslashes, an
/// injection attempt, dollar quotes, control characters and non-ASCII text, in keys too.
pub fn tricky_context() -> Context {
    ctx(serde_json::json!({
        "comment": "*/ DROP TABLE items; /* /*Bemi {} Bemi*/",
        "quotes": r#"it's "quoted" '' ''' "#,
        "injection": "'); DROP TABLE items; --",
        "backslash": r"C:\Users\zoë\n \' \\ E'\x41' \x00",
        "dollars": "$$ $bemi$ $1",
        "control": "line\nbreak\ttab\r\u{1}",
        "unicode": "Zoë Ångström 東京 Привет 🦀👩‍💻",
        "*/ key /*": ["'", "\\", "\""],
        "nested": {"a": ["*/", "\\", "'"], "b": null},
    }))
}

/// A context whose JSON text is over the 1,000,000-character limit.
pub fn oversized_context() -> Context {
    Context::new().with("blob", "x".repeat(bemi_context::MAX_PAYLOAD_CHARS + 1))
}
