//! The Postgres sink stores the next batch while the one before commits (issue 20), and still
//! records positions in order: a batch commits only after the one before it, and none after a
//! failed one. A trigger on the `changes` table holds the first batch's insert on an advisory
//! lock the test owns, so each step is seen as it happens, not timed.

use std::time::Duration;

use bemi_core::sink::{Batch, ChangeSink, Pending, PostgresSink, SourceInfo};
use bemi_core::{Change, Lsn, Operation};
use bemi_testkit::TestDatabase;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(60);
const LOCK: i64 = 4242;

fn change(key: &str, commit: u64) -> Change {
    let mut change = Change::gap("app", Lsn(commit), Lsn(commit), "test", chrono::Utc::now());
    change.operation = Operation::Create;
    change.schema = "public".to_owned();
    change.table = "items".to_owned();
    change.primary_key = Some(key.to_owned());
    change.ordinal = 0;
    change
}

/// An open sink, and the test's connection holding the lock that a row keyed `held…` waits
/// for on its way into `changes`; a row keyed `…boom` fails once it got it.
async fn held_sink(db: &TestDatabase) -> (PostgresSink, Client) {
    let mut sink = PostgresSink::connect(&db.options()).unwrap();
    sink.open(&SourceInfo::new("1", "app", "slot"))
        .await
        .unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(&format!(
        "CREATE FUNCTION held() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.primary_key LIKE 'held%' THEN PERFORM pg_advisory_lock_shared({LOCK}); END IF;
           IF NEW.primary_key LIKE '%boom' THEN RAISE EXCEPTION 'boom'; END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER held BEFORE INSERT ON changes FOR EACH ROW EXECUTE FUNCTION held();
         SELECT pg_advisory_lock({LOCK});"
    ))
    .await
    .unwrap();
    (sink, sql)
}

async fn submit(sink: &mut PostgresSink, key: &str, commit: u64) -> Pending {
    sink.submit(Batch::new(vec![change(key, commit)], Some(Lsn(commit))))
        .await
        .unwrap()
}

/// Waits until the sink's sessions are: one waiting for the lock, and `idle` ones idle in a
/// transaction (inserted, waiting for the batch before to commit).
async fn until_sessions(sql: &Client, idle: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row = sql
            .query_one(
                "SELECT count(*) FILTER (WHERE wait_event = 'advisory'), \
                        count(*) FILTER (WHERE state = 'idle in transaction') \
                 FROM pg_stat_activity WHERE datname = current_database() \
                   AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        if (row.get::<_, i64>(0), row.get::<_, i64>(1)) == (1, idle) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let sessions: Vec<String> = sql
                .query(
                    "SELECT concat_ws(' | ', state, wait_event, left(query, 60)) \
                     FROM pg_stat_activity WHERE datname = current_database()",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
            panic!(
                "sessions: {} waiting for the lock, {} idle in a transaction: {sessions:#?}",
                row.get::<_, i64>(0),
                row.get::<_, i64>(1)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stored(sql: &Client) -> (Vec<String>, Option<i64>) {
    let keys = sql
        .query("SELECT primary_key FROM changes ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let position = sql
        .query_opt("SELECT lsn FROM _bemi_progress", &[])
        .await
        .unwrap()
        .map(|row| row.get(0));
    (keys, position)
}

#[tokio::test]
async fn the_next_batch_is_inserted_while_one_is_stored_and_commits_after_it() {
    let db = TestDatabase::create().await.unwrap();
    let (mut sink, sql) = held_sink(&db).await;

    let first = submit(&mut sink, "held", 10).await;
    let second = submit(&mut sink, "next", 20).await;
    // The second batch's rows are in, uncommitted, while the first waits.
    until_sessions(&sql, 1).await;
    assert_eq!(stored(&sql).await, (vec![], None));

    sql.batch_execute(&format!("SELECT pg_advisory_unlock({LOCK})"))
        .await
        .unwrap();
    second.await.unwrap();
    // The second is durable only once the first is.
    assert_eq!(
        stored(&sql).await,
        (vec!["held".to_owned(), "next".to_owned()], Some(20))
    );
    first.await.unwrap();
}

#[tokio::test]
async fn nothing_after_a_failed_batch_is_stored_or_recorded() {
    let db = TestDatabase::create().await.unwrap();
    let (mut sink, sql) = held_sink(&db).await;
    sink.write(Batch::new(vec![change("before", 5)], Some(Lsn(5))))
        .await
        .unwrap();

    let failing = submit(&mut sink, "held-boom", 10).await;
    let second = submit(&mut sink, "second", 20).await;
    until_sessions(&sql, 1).await;
    sql.batch_execute(&format!("SELECT pg_advisory_unlock({LOCK})"))
        .await
        .unwrap();
    let error = failing.await.unwrap_err();
    assert!(error.to_string().contains("boom"), "{error}");
    let error = second.await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(
        error.to_string().contains("before this one failed"),
        "{error}"
    );
    assert_eq!(stored(&sql).await, (vec!["before".to_owned()], Some(5)));

    // The sink goes on once reopened: the batches are stored again, once.
    sql.batch_execute("DROP TRIGGER held ON changes")
        .await
        .unwrap();
    sink.open(&SourceInfo::new("1", "app", "slot"))
        .await
        .unwrap();
    for (key, commit) in [("held-boom", 10), ("second", 20)] {
        submit(&mut sink, key, commit).await.await.unwrap();
    }
    assert_eq!(
        stored(&sql).await,
        (
            vec![
                "before".to_owned(),
                "held-boom".to_owned(),
                "second".to_owned()
            ],
            Some(20)
        )
    );
}
