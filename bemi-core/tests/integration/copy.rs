//! The Postgres sink sends large batches of transactions it never stored by binary `COPY` and
//! small ones by a plain `INSERT`, and everything that may replay a stored change through
//! `INSERT … ON CONFLICT` (issue 20): the rows are the same either way, a restart after a
//! transaction stored in part stores the rest once, and a batch taken for new that meets a
//! stored change is retried through `INSERT … ON CONFLICT`. A trigger on `changes` logs each
//! statement that writes it (`checked` when it skips stored rows).

use bemi_core::sink::{Batch, ChangeSink, PostgresSink, SourceInfo};
use bemi_core::{Change, Lsn};
use bemi_testkit::TestDatabase;
use tokio_postgres::Client;

const SOURCE: (&str, &str, &str) = ("7", "app", "slot");

fn source() -> SourceInfo {
    SourceInfo::new(SOURCE.0, SOURCE.1, SOURCE.2)
}

/// `count` changes of the transaction committed at `commit`, from ordinal `from` on, with rows,
/// a context and a primary key worth comparing (one longer than the column).
fn transaction(commit: u64, from: u32, count: u32) -> Vec<Change> {
    let committed_at = "2026-12-01T00:00:00Z"
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap()
        + chrono::Duration::seconds(commit as i64);
    (from..from + count)
        .map(|ordinal| {
            let mut change = serde_json::to_value(Change::gap(
                "app",
                Lsn(commit),
                Lsn(commit),
                "test",
                committed_at,
            ))
            .unwrap();
            let key = match ordinal % 50 {
                0 => "ü".repeat(300),
                _ => format!("{commit}-{ordinal}"),
            };
            change["operation"] = "UPDATE".into();
            change["schema"] = "public".into();
            change["table"] = "items".into();
            change["primary_key"] = key.clone().into();
            change["ordinal"] = ordinal.into();
            change["transaction_id"] = (commit + 1000).into();
            change["before"] = serde_json::json!({"id": key, "n": ordinal, "tags": ["a", null]});
            // Every tenth row large (50 kB): a batch of 150 rows or more is more COPY data
            // than the sink sends in one piece.
            let note = match ordinal % 10 {
                5 => "ÿ\t".repeat(25_000),
                _ => "x\ty".to_owned(),
            };
            change["after"] = serde_json::json!({"id": key, "n": ordinal + 1, "note": note});
            change["context"] = serde_json::json!({"user_id": commit, "path": "/items"});
            serde_json::from_value(change).unwrap()
        })
        .collect()
}

/// Logs the first word of each statement that writes `table` into `writes`, with ` checked`
/// when it skips stored rows (`ON CONFLICT … DO NOTHING`).
async fn log_writes(sql: &Client, table: &str) {
    sql.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS writes (n serial, tbl text, kind text);
         CREATE OR REPLACE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO writes (tbl, kind) VALUES (TG_TABLE_NAME, split_part(current_query(), ' ', 1)
             || CASE WHEN current_query() LIKE '%DO NOTHING%' THEN ' checked' ELSE '' END);
           RETURN NULL;
         END $$;
         CREATE TRIGGER log_write AFTER INSERT ON {table}
           FOR EACH STATEMENT EXECUTE FUNCTION log_write();"
    ))
    .await
    .unwrap();
}

async fn writes(sql: &Client, table: &str) -> Vec<String> {
    sql.query(
        "SELECT kind FROM writes WHERE tbl = $1 ORDER BY n",
        &[&table],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// Rows stored, and distinct keys among them.
async fn counts(sql: &Client, table: &str) -> (i64, i64) {
    let row = sql
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT (system_id, commit_lsn, ordinal)) FROM {table}"
            ),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn open(db: &TestDatabase, table: &str) -> PostgresSink {
    let mut sink = PostgresSink::connect(&db.options()).unwrap().table(table);
    sink.open(&source()).await.unwrap();
    sink
}

#[tokio::test]
async fn copied_rows_are_the_rows_an_insert_stores() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    let mut copied = open(&db, "copied").await;
    let mut inserted = open(&db, "inserted").await;
    log_writes(&sql, "copied").await;
    log_writes(&sql, "inserted").await;

    let changes: Vec<Change> = [transaction(100, 0, 150), transaction(200, 0, 150)].concat();
    copied
        .write(Batch::new(changes.clone(), Some(Lsn(200))))
        .await
        .unwrap();
    for part in changes.chunks(50) {
        inserted
            .write(Batch::new(part.to_vec(), None))
            .await
            .unwrap();
    }

    assert_eq!(writes(&sql, "copied").await, ["COPY"]);
    assert_eq!(writes(&sql, "inserted").await, ["INSERT"; 6]);
    let columns = "primary_key, before, after, context, database, schema, \"table\", operation, \
                   committed_at, queued_at, transaction_id, position, system_id, commit_lsn, \
                   ordinal";
    for (a, b) in [("copied", "inserted"), ("inserted", "copied")] {
        let differing: i64 = sql
            .query_one(
                &format!(
                    "SELECT count(*) FROM (SELECT {columns} FROM {a} \
                     EXCEPT SELECT {columns} FROM {b}) d"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(differing, 0, "rows of {a} that {b} does not hold");
    }
    assert_eq!(counts(&sql, "copied").await, (300, 300));
    let versions: i64 = sql
        .query_one(
            "SELECT count(*) FROM copied WHERE substr(id::text, 15, 1) = '7' \
               AND length(primary_key) = 255",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, 6, "version-7 ids and cut primary keys");
}

#[tokio::test]
async fn a_transaction_stored_in_part_is_completed_once_after_a_restart() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    let mut sink = open(&db, "changes").await;
    log_writes(&sql, "changes").await;
    // Half of transaction 100 is stored, then the tracker dies.
    sink.write(Batch::new(transaction(100, 0, 150), None))
        .await
        .unwrap();
    drop(sink);

    // The new session streams transaction 100 again from its start: the rows that may be
    // stored go through INSERT … ON CONFLICT, the transactions after them by COPY, small
    // batches by a plain INSERT.
    let mut sink = open(&db, "changes").await;
    let replay = [transaction(100, 0, 300), transaction(200, 0, 100)].concat();
    sink.write(Batch::new(replay, Some(Lsn(200))))
        .await
        .unwrap();
    sink.write(Batch::new(transaction(300, 0, 150), Some(Lsn(300))))
        .await
        .unwrap();
    sink.write(Batch::new(transaction(400, 0, 10), Some(Lsn(400))))
        .await
        .unwrap();

    assert_eq!(counts(&sql, "changes").await, (560, 560));
    assert_eq!(
        writes(&sql, "changes").await,
        ["COPY", "WITH checked", "COPY", "WITH"]
    );
    let position: i64 = sql
        .query_one("SELECT lsn FROM _bemi_progress", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(position, 400);
}

/// Another writer of the same source stores transaction 100 (`size` changes) after `sink`
/// opened; the sink then writes it too, taking it for new (a transient 23505), writes it again
/// after reopening as the tracker does, and transaction 200 after it. Returns the statements
/// that wrote `changes`.
async fn meet_a_change_stored_by_another_writer(size: u32) -> Vec<String> {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    let mut sink = open(&db, "changes").await;
    let mut other = open(&db, "changes").await;
    log_writes(&sql, "changes").await;
    other
        .write(Batch::new(transaction(100, 0, size), Some(Lsn(100))))
        .await
        .unwrap();

    let batch = Batch::new(transaction(100, 0, size), Some(Lsn(100)));
    let error = sink.write(batch.clone()).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert_eq!(error.code(), Some("23505"), "{error}");
    assert!(error.to_string().contains("stored already"), "{error}");

    sink.open(&source()).await.unwrap();
    sink.write(batch).await.unwrap();
    sink.write(Batch::new(transaction(200, 0, size), Some(Lsn(200))))
        .await
        .unwrap();
    let stored = 2 * i64::from(size);
    assert_eq!(counts(&sql, "changes").await, (stored, stored));
    writes(&sql, "changes").await
}

#[tokio::test]
async fn a_copy_that_meets_a_stored_change_is_stored_again_through_insert() {
    // The other writer copied; the failed COPY logged nothing (rolled back); everything after
    // it went through INSERT … ON CONFLICT.
    assert_eq!(
        meet_a_change_stored_by_another_writer(150).await,
        ["COPY", "WITH checked", "WITH checked"]
    );
}

#[tokio::test]
async fn a_small_batch_taken_for_new_that_meets_a_stored_change_is_stored_again_checked() {
    // The other writer's batch went in unchecked, as new; this sink's failed one logged
    // nothing, and it checks every row since.
    assert_eq!(
        meet_a_change_stored_by_another_writer(10).await,
        ["WITH", "WITH checked", "WITH checked"]
    );
}
