//! A test database with an `items` table and a tracker storing its changes in `changes`.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use bemi_context::Context;
use bemi_core::sink::PostgresSink;
use bemi_core::testing::TestDatabase;
use bemi_core::{Tracker, TrackerHandle};
use serde_json::Value;
use tokio_postgres::Client;

pub const WAIT: Duration = Duration::from_secs(120);

diesel::table! {
    items (id) {
        id -> Int4,
        task -> Int4,
        note -> Nullable<Text>,
    }
}

pub struct Harness {
    pub db: TestDatabase,
    sql: Client,
    tracker: TrackerHandle,
}

/// One row of `changes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub operation: String,
    pub primary_key: Option<String>,
    pub before: Value,
    pub after: Value,
    pub context: Value,
}

impl Harness {
    pub async fn start() -> Harness {
        let db = TestDatabase::create().await.expect("database");
        let sql = db.connect().await.expect("connect");
        sql.batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, task int NOT NULL, note text);
             ALTER TABLE items REPLICA IDENTITY FULL;",
        )
        .await
        .expect("schema");
        let sink = PostgresSink::connect(&db.options()).expect("sink");
        let tracker = Tracker::builder(db.options(), sink)
            .slot(db.slot())
            .publication(db.publication())
            .spawn();
        tracker.wait_for(|p| p.connected).await;
        Harness { db, sql, tracker }
    }

    /// A libpq connection string for the test database, which Diesel (libpq) and diesel-async
    /// (tokio-postgres) both read.
    pub fn conninfo(&self) -> String {
        self.db.options().to_url()
    }

    /// Waits until `changes` holds at least `expected` rows.
    pub async fn wait_for_rows(&self, expected: i64) {
        self.db
            .wait_for_changes(expected, &self.tracker, WAIT)
            .await
            .expect("the changes are stored");
    }

    /// Waits for `expected` rows, stops the tracker (which first catches up with the end of the
    /// WAL, so nothing else can arrive) and returns every row in commit order.
    pub async fn finish(self, expected: i64) -> Vec<Recorded> {
        self.wait_for_rows(expected).await;
        self.tracker.shutdown().await.expect("tracker");
        self.sql
            .query(
                "SELECT operation, primary_key, before, after, context FROM changes
                 ORDER BY commit_lsn, ordinal",
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
}

pub fn ctx(value: Value) -> Context {
    Context::try_from(value).expect("an object")
}

/// A context with quotes, comment markers, backslashes, control characters and non-ASCII text.
pub fn tricky() -> Value {
    serde_json::json!({
        "comment": "*/ DROP TABLE items; /*",
        "quotes": "it's \"quoted\" '' $$ $bemi$",
        "backslashes": "C:\\Users\\zoë \\x00 \\\\",
        "unicode": "Zoë Ångström 東京 🦀👩‍💻",
        "control": "line\nbreak\ttab \u{0001}",
        "*/ key /*": ["'", "\\", "\""],
    })
}

/// How many statements calling `pg_logical_emit_message` the session has prepared.
pub fn emit_statements_prepared() -> diesel::expression::SqlLiteral<diesel::sql_types::BigInt> {
    diesel::dsl::sql(
        "(SELECT count(*) FROM pg_prepared_statements
          WHERE statement LIKE '%pg_logical_emit_message%'
            AND statement NOT LIKE '%pg_prepared_statements%')",
    )
}
