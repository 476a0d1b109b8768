//! The partitioned `changes` table (issue 17): rows land in the partition of their commit time,
//! partitions exist before the rows that need them, replays store nothing twice across a
//! partition boundary, retention drops exactly the expired partitions, time ranges are pruned,
//! and an unpartitioned table made by Bemi's worker is migrated without losing or doubling a
//! row while the tracker goes on.
//!
//! The source's clock is faked through the commit times the sink sees: [`FakeClock`] sets each
//! change's `committed_at` from its transaction's context, which a replay carries again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bemi_core::changes_table::{
    ChangesTable, Layout, PartitionInterval, PartitionMigration, Retention,
};
use bemi_core::reexports::bemi_context::Context;
use bemi_core::sink::{Batch, ChangeSink, PostgresSink, SinkStart, SourceInfo};
use bemi_core::{Change, Error, ErrorKind, Lsn, Operation, Tracker, TrackerHandle};
use bemi_testkit::TestDatabase;
use chrono::{DateTime, Utc};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(60);

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

/// A sink that sets each change's commit time from `fake_committed_at` in its context: the
/// source's clock, faked per transaction. When `crash_across` is set, the first batch holding
/// rows on both sides of that moment is stored without its position and then fails, as a
/// tracker that died after storing rows and before their position would leave it; the tracker
/// reconnects and streams them again.
struct FakeClock<S> {
    inner: S,
    crash_across: Option<DateTime<Utc>>,
    crashed: Arc<AtomicBool>,
    forwarded: Arc<AtomicUsize>,
}

impl<S> FakeClock<S> {
    fn new(inner: S) -> Self {
        FakeClock {
            inner,
            crash_across: None,
            crashed: Arc::default(),
            forwarded: Arc::default(),
        }
    }
}

#[async_trait]
impl<S: ChangeSink> ChangeSink for FakeClock<S> {
    async fn open(&mut self, source: &SourceInfo) -> bemi_core::Result<SinkStart> {
        self.inner.open(source).await
    }

    async fn write(&mut self, mut batch: Batch) -> bemi_core::Result<()> {
        for change in &mut batch.changes {
            let faked = change.context.to_value()["fake_committed_at"]
                .as_str()
                .map(|text| text.parse::<DateTime<Utc>>().unwrap());
            if let Some(faked) = faked {
                change.committed_at = faked;
            }
        }
        self.forwarded
            .fetch_add(batch.changes.len(), Ordering::SeqCst);
        if let Some(boundary) = self.crash_across {
            let before = batch.changes.iter().any(|c| c.committed_at < boundary);
            let after = batch.changes.iter().any(|c| c.committed_at >= boundary);
            if before && after && !self.crashed.swap(true, Ordering::SeqCst) {
                self.inner.write(Batch::new(batch.changes, None)).await?;
                return Err(Error::new(
                    ErrorKind::Sink,
                    "simulated crash: rows stored, position not",
                )
                .with_transient(true));
            }
        }
        self.inner.write(batch).await
    }
}

async fn items(db: &TestDatabase) -> Client {
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    sql
}

/// Runs `statements` in one transaction whose context fakes its commit time as `committed_at`.
async fn commit_at(sql: &mut Client, committed_at: &str, statements: &str) {
    let context = Context::new().with("fake_committed_at", committed_at);
    let tx = bemi_core::context::begin_with(sql, &context).await.unwrap();
    tx.batch_execute(statements).await.unwrap();
    tx.commit().await.unwrap();
}

async fn start<S: ChangeSink>(db: &TestDatabase, sink: S) -> TrackerHandle {
    Tracker::builder(db.options(), sink)
        .slot(db.slot())
        .publication(db.publication())
        .flush_interval(Duration::from_secs(2))
        .start()
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()))
}

/// `partition primary_key operation` for every row, in commit order.
async fn placement(sql: &Client) -> Vec<String> {
    sql.query(
        "SELECT tableoid::regclass::text || ' ' || primary_key || ' ' || operation FROM changes \
         WHERE \"table\" = 'items' ORDER BY committed_at, commit_lsn, ordinal",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

async fn partition_names(sql: &Client, table: &ChangesTable) -> Vec<String> {
    table
        .partitions(sql)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect()
}

async fn scalar(sql: &Client, query: &str) -> i64 {
    sql.query_one(query, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn the_tracker_writes_across_a_partition_boundary() {
    let db = TestDatabase::create().await.unwrap();
    let mut sql = items(&db).await;
    let sink = FakeClock::new(PostgresSink::connect(&db.options()).unwrap());
    let tracker = start(&db, sink).await;

    commit_at(
        &mut sql,
        "2031-01-31T23:59:59.999999Z",
        "INSERT INTO items VALUES (1, 'a'), (2, 'b')",
    )
    .await;
    commit_at(
        &mut sql,
        "2031-02-01T00:00:00Z",
        "INSERT INTO items VALUES (3, 'c'); UPDATE items SET note = 'z' WHERE id = 1",
    )
    .await;
    db.wait_for_changes(4, &tracker, WAIT).await.unwrap();
    tracker.shutdown().await.unwrap();

    assert_eq!(
        placement(&sql).await,
        [
            "changes_p20310101 1 CREATE",
            "changes_p20310101 2 CREATE",
            "changes_p20310201 3 CREATE",
            "changes_p20310201 1 UPDATE",
        ]
    );
    let partitions = partition_names(&sql, &ChangesTable::default()).await;
    // The next month's partition was made before any row needed it; nothing went to the
    // default partition.
    assert!(
        partitions.contains(&"changes_p20310301".to_owned()),
        "{partitions:?}"
    );
    assert_eq!(
        scalar(&sql, "SELECT count(*) FROM changes_p20310301").await,
        0
    );
    assert_eq!(
        scalar(&sql, "SELECT count(*) FROM changes_default").await,
        0
    );
    // New rows have time-ordered ids (version 7).
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(*) FROM changes WHERE substr(id::text, 15, 1) <> '7'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_replay_after_a_crash_across_the_boundary_stores_nothing_twice() {
    let db = TestDatabase::create().await.unwrap();
    let mut sql = items(&db).await;
    let mut sink = FakeClock::new(PostgresSink::connect(&db.options()).unwrap());
    sink.crash_across = Some(at("2031-02-01T00:00:00Z"));
    let (crashed, forwarded) = (Arc::clone(&sink.crashed), Arc::clone(&sink.forwarded));
    let tracker = start(&db, sink).await;

    // Rows on both sides of the boundary reach the sink in one batch (one transaction whose
    // statements fake different commit times, each with its own context): it crashes there.
    sql.batch_execute(
        "BEGIN;
         SELECT pg_logical_emit_message(true, '_bemi',
           '{\"fake_committed_at\": \"2031-01-31T23:59:59Z\"}');
         INSERT INTO items VALUES (1, 'a'), (2, 'b');
         SELECT pg_logical_emit_message(true, '_bemi',
           '{\"fake_committed_at\": \"2031-02-01T00:00:01Z\"}');
         INSERT INTO items VALUES (3, 'c'), (4, 'd');
         COMMIT;",
    )
    .await
    .unwrap();
    db.wait_for_changes(4, &tracker, WAIT).await.unwrap();
    // Later changes go on after the replay.
    commit_at(
        &mut sql,
        "2031-02-02T00:00:00Z",
        "INSERT INTO items VALUES (5, 'e')",
    )
    .await;
    db.wait_for_changes(5, &tracker, WAIT).await.unwrap();
    tracker.shutdown().await.unwrap();

    assert!(crashed.load(Ordering::SeqCst), "the crash never happened");
    assert!(
        forwarded.load(Ordering::SeqCst) >= 9,
        "the crashed rows were not streamed again: {} forwarded",
        forwarded.load(Ordering::SeqCst)
    );
    assert_eq!(
        placement(&sql).await,
        [
            "changes_p20310101 1 CREATE",
            "changes_p20310101 2 CREATE",
            "changes_p20310201 3 CREATE",
            "changes_p20310201 4 CREATE",
            "changes_p20310201 5 CREATE",
        ]
    );
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(DISTINCT (system_id, commit_lsn, ordinal)) FROM changes"
        )
        .await,
        scalar(&sql, "SELECT count(*) FROM changes").await
    );
}

/// A change of `items` row `n` committed at `committed_at`, keyed `(n, 0)`.
fn change_at(committed_at: DateTime<Utc>, n: u64) -> Change {
    let mut change = Change::gap("app", Lsn(n), Lsn(n), "test", committed_at);
    change.operation = Operation::Create;
    change.schema = "public".to_owned();
    change.table = "items".to_owned();
    change.primary_key = Some(n.to_string());
    change.ordinal = 0;
    change
}

/// Opens `sink` as a source would and stores one change per moment of `moments`.
async fn store(sink: &mut PostgresSink, moments: &[DateTime<Utc>]) {
    sink.open(&SourceInfo::new("1", "app", "slot"))
        .await
        .unwrap();
    let changes: Vec<Change> = moments
        .iter()
        .enumerate()
        .map(|(n, moment)| change_at(*moment, n as u64 + 1))
        .collect();
    sink.write(Batch::new(changes, Some(Lsn(moments.len() as u64))))
        .await
        .unwrap();
}

/// The middle of each month of 2020, January to August.
fn months_of_2020() -> Vec<DateTime<Utc>> {
    (1..=8)
        .map(|month| at(&format!("2020-{month:02}-15T12:00:00Z")))
        .collect()
}

#[tokio::test]
async fn retention_drops_exactly_the_partitions_past_the_window() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    let table = ChangesTable::default();
    let mut sink = PostgresSink::connect(&db.options()).unwrap();
    store(&mut sink, &months_of_2020()).await;
    let before = partition_names(&sql, &table).await;

    // 90 days before 2020-07-20 is 2020-04-21: January to March end before it; April's rows
    // reach past it, so April stays.
    let retention: Retention = "90d".parse().unwrap();
    let now = at("2020-07-20T00:00:00Z");
    let planned: Vec<String> = retention
        .plan(&table, &sql, now)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(
        planned,
        [
            "changes_p20200101",
            "changes_p20200201",
            "changes_p20200301"
        ]
    );
    assert_eq!(
        partition_names(&sql, &table).await,
        before,
        "a dry run removes nothing"
    );
    let dropped: Vec<String> = retention
        .apply(&table, &sql, now)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(dropped, planned);
    let after = partition_names(&sql, &table).await;
    let expected: Vec<String> = before
        .iter()
        .filter(|name| !planned.contains(name))
        .cloned()
        .collect();
    assert_eq!(after, expected);
    assert!(after.contains(&"changes_p20200401".to_owned()), "{after:?}");
    assert_eq!(
        scalar(&sql, "SELECT count(*) FROM changes").await,
        5,
        "the rows of April to August stay"
    );
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(*) FROM pg_class WHERE relname IN \
             ('changes_p20200101', 'changes_p20200201', 'changes_p20200301')"
        )
        .await,
        0
    );
    // Nothing more goes at the same moment.
    assert!(retention.apply(&table, &sql, now).await.unwrap().is_empty());

    // Archiving detaches into a schema instead, rows and all.
    let archive = Retention::new(Duration::from_secs(30 * 86_400)).archive_to("audit_archive");
    let archived: Vec<String> = archive
        .apply(&table, &sql, now)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(archived, ["changes_p20200401", "changes_p20200501"]);
    assert_eq!(
        scalar(&sql, "SELECT count(*) FROM audit_archive.changes_p20200401").await,
        1
    );
    assert_eq!(scalar(&sql, "SELECT count(*) FROM changes").await, 3);

    // The sink applies its retention at start, relative to the real clock: every 2020
    // partition is past a 90-day window now.
    let mut sink = PostgresSink::connect(&db.options())
        .unwrap()
        .retention(retention);
    sink.open(&SourceInfo::new("1", "app", "slot"))
        .await
        .unwrap();
    let left = partition_names(&sql, &table).await;
    assert!(
        left.iter().all(|name| !name.starts_with("changes_p2020")),
        "{left:?}"
    );
    assert_eq!(scalar(&sql, "SELECT count(*) FROM changes").await, 0);
}

#[tokio::test]
async fn retention_refuses_an_unpartitioned_table_rather_than_deleting_rows() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    let mut sink = PostgresSink::connect(&db.options())
        .unwrap()
        .layout(Layout::Unpartitioned)
        .retention("1d".parse().unwrap());
    store(&mut sink, &months_of_2020()).await;
    assert_eq!(scalar(&sql, "SELECT count(*) FROM changes").await, 8);
    let error = Retention::new(Duration::from_secs(86_400))
        .plan(&ChangesTable::default(), &sql, Utc::now())
        .await
        .unwrap_err();
    assert!(
        error.message().contains("bemi migrate --partition"),
        "{error}"
    );
}

#[tokio::test]
async fn time_range_queries_read_only_their_partitions() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    let mut sink = PostgresSink::connect(&db.options()).unwrap();
    store(&mut sink, &months_of_2020()).await;
    let plan = |query: &'static str| {
        let sql = &sql;
        async move {
            let rows = sql
                .query(&format!("EXPLAIN (COSTS OFF) {query}"), &[])
                .await
                .unwrap();
            rows.iter()
                .map(|row| row.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let scanned = |plan: &str| -> Vec<String> {
        let mut names: Vec<String> = plan
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("changes_p") || *word == "changes_default")
            .filter(|word| bemi_core::changes_table::partition_parent(word).is_some())
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let march = plan(
        "SELECT * FROM changes WHERE committed_at >= '2020-03-01' AND committed_at < '2020-04-01'",
    )
    .await;
    assert_eq!(scanned(&march), ["changes_p20200301"], "{march}");
    // A record's history within a time range, as the read side asks it.
    let history = plan(
        "SELECT * FROM changes WHERE \"table\" = 'items' AND primary_key = '3' \
         AND committed_at BETWEEN '2020-02-20' AND '2020-03-10' ORDER BY committed_at",
    )
    .await;
    assert_eq!(
        scanned(&history),
        ["changes_p20200201", "changes_p20200301"],
        "{history}"
    );
    // Without a time range every partition is read.
    let all = plan("SELECT * FROM changes WHERE primary_key = '3'").await;
    assert!(scanned(&all).len() >= 9, "{all}");
    // A bound parameter prunes when the statement runs.
    sql.batch_execute(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE in_range(timestamptz, timestamptz) AS
           SELECT * FROM changes WHERE committed_at >= $1 AND committed_at < $2",
    )
    .await
    .unwrap();
    let generic = plan("EXECUTE in_range('2020-05-01', '2020-05-02')").await;
    assert!(generic.contains("Subplans Removed"), "{generic}");
}

#[tokio::test]
async fn rows_the_default_partition_took_move_into_the_partition_made_for_them() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    let mut sink = PostgresSink::connect(&db.options()).unwrap();
    store(&mut sink, &[at("2020-01-15T00:00:00Z")]).await;
    // A row no partition holds, written by someone else: the default partition takes it.
    sql.batch_execute(
        "INSERT INTO changes (primary_key, database, schema, \"table\", operation, committed_at, \
           queued_at, transaction_id, position, system_id, commit_lsn, ordinal) \
         VALUES ('99', 'app', 'public', 'items', 'CREATE', '2040-06-01', now(), 1, 1, 1, 99, 0)",
    )
    .await
    .unwrap();
    assert_eq!(
        scalar(&sql, "SELECT count(*) FROM changes_default").await,
        1
    );

    sink.write(Batch::new(
        vec![change_at(at("2040-06-30T00:00:00Z"), 100)],
        Some(Lsn(100)),
    ))
    .await
    .unwrap();
    assert_eq!(
        scalar(&sql, "SELECT count(*) FROM changes_default").await,
        0
    );
    assert_eq!(
        scalar(&sql, "SELECT count(*) FROM changes_p20400601").await,
        2
    );
    assert_eq!(scalar(&sql, "SELECT count(*) FROM changes").await, 3);
}

/// The pages waiting in the pending lists of the GIN indexes of `changes`' partitions.
async fn pending_pages(sql: &Client) -> i64 {
    scalar(
        sql,
        "SELECT coalesce(sum((pgstatginindex(i.indexrelid)).pending_pages), 0)::int8 \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_am a ON a.oid = c.relam \
         WHERE a.amname = 'gin' AND c.relkind = 'i' \
           AND i.indrelid IN (SELECT inhrelid FROM pg_inherits \
                              WHERE inhparent = 'changes'::regclass)",
    )
    .await
}

/// Waits until the pending lists are empty, failing after `WAIT`.
async fn until_no_pending_pages(sql: &Client) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while pending_pages(sql).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pending lists were not merged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The GIN indexes keep their pending lists (entries go in in bulk), and the sink merges them
/// off the write path: rows written while no sink runs stay pending (autovacuum is off for the
/// partition), and a sink that opens merges them within moments.
#[tokio::test]
async fn the_sink_merges_the_gin_pending_lists() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE EXTENSION pgstattuple")
        .await
        .unwrap();
    let now = Utc::now();
    let mut sink = PostgresSink::connect(&db.options()).unwrap();
    store(&mut sink, &[now]).await;
    let options: Vec<String> = sql
        .query(
            "SELECT coalesce(array_to_string(c.reloptions, ','), '') FROM pg_class c \
             JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'gin' AND c.relkind = 'i'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(options.len() >= 3, "{options:?}");
    assert!(options.iter().all(|o| o.is_empty()), "{options:?}");
    drop(sink);

    // No sink: the lists fill and stay.
    let partition: String = sql
        .query_one(
            "SELECT inhrelid::regclass::text FROM pg_inherits \
             WHERE inhparent = 'changes'::regclass AND EXISTS \
               (SELECT FROM changes WHERE tableoid = inhrelid)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    sql.batch_execute(&format!(
        "ALTER TABLE {partition} SET (autovacuum_enabled = off);
         INSERT INTO changes (primary_key, before, after, context, database, schema, \"table\",
                              operation, committed_at, queued_at, transaction_id, position,
                              system_id, commit_lsn, ordinal)
         SELECT g::text, jsonb_build_object('id', g, 'note', md5(g::text)),
                jsonb_build_object('id', g, 'note', md5((g + 1)::text)),
                jsonb_build_object('user', g % 97, 'request', md5((g * 7)::text)),
                'app', 'public', 'items', 'UPDATE', committed_at, queued_at, transaction_id,
                position, system_id, commit_lsn + g, 0
         FROM changes, generate_series(1, 5000) g"
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pending = pending_pages(&sql).await;
    assert!(pending > 0, "the inserts' entries wait in the lists");

    // A sink opens: it merges them.
    let mut sink = PostgresSink::connect(&db.options()).unwrap();
    sink.open(&SourceInfo::new("1", "app", "slot"))
        .await
        .unwrap();
    until_no_pending_pages(&sql).await;
    sink.write(Batch::new(
        vec![change_at(now, 9_000_000)],
        Some(Lsn(9_000_000)),
    ))
    .await
    .unwrap();
    assert_eq!(scalar(&sql, "SELECT count(*) FROM changes").await, 5_002);
}

#[tokio::test]
async fn daily_and_weekly_partitions() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    let daily = ChangesTable::new("public", "daily_changes");
    let mut sink = PostgresSink::connect(&db.options())
        .unwrap()
        .table(daily.name())
        .layout(Layout::Partitioned(PartitionInterval::Day));
    store(
        &mut sink,
        &[at("2020-02-28T23:00:00Z"), at("2020-02-29T01:00:00Z")],
    )
    .await;
    let names = partition_names(&sql, &daily).await;
    for name in [
        "daily_changes_p20200228",
        "daily_changes_p20200229",
        "daily_changes_p20200301",
    ] {
        assert!(names.contains(&name.to_owned()), "{name} in {names:?}");
    }
    let weekly = ChangesTable::new("public", "weekly_changes");
    let mut sink = PostgresSink::connect(&db.options())
        .unwrap()
        .table(weekly.name())
        .layout(Layout::Partitioned(PartitionInterval::Week));
    // 2020-03-01 is a Sunday: its week began on Monday 2020-02-24.
    store(&mut sink, &[at("2020-03-01T12:00:00Z")]).await;
    let names = partition_names(&sql, &weekly).await;
    assert!(
        names.contains(&"weekly_changes_p20200224".to_owned())
            && names.contains(&"weekly_changes_p20200302".to_owned()),
        "{names:?}"
    );
}

/// The queries Bemi's helpers send, written as each ORM renders them for the `changes` table
/// (bemi-rails' `ChangeQueryHelpers` scopes and `bemi_changes`, bemi-django's `BemiChange`
/// manager: a record's changes, the context, before and after containment filters and their
/// negations, an operation, field-changed, ordering and limits). Parameters are inlined.
const BEMI_HELPER_QUERIES: [&str; 9] = [
    // Rails: todo.bemi_changes.asc
    r#"SELECT "changes".* FROM "changes" WHERE "changes"."table" = 'items' AND "changes"."primary_key" = '1' ORDER BY "changes"."committed_at" ASC"#,
    // Rails: BemiChange.context(user: 'alice').desc
    r#"SELECT "changes".* FROM "changes" WHERE (context @> '{"user":"alice"}') ORDER BY "changes"."committed_at" DESC"#,
    // Rails: todo.bemi_changes.before(note: 'a').after(note: 'b')
    r#"SELECT "changes".* FROM "changes" WHERE "changes"."table" = 'items' AND "changes"."primary_key" = '1' AND (before @> '{"note":"a"}') AND (after @> '{"note":"b"}')"#,
    // Rails: BemiChange.updated.asc
    r#"SELECT "changes".* FROM "changes" WHERE "changes"."operation" = 'UPDATE' ORDER BY "changes"."committed_at" ASC"#,
    // Django: BemiChange.objects.filter(table='items', operation='UPDATE').filter(context__contains={'user': 'bob'}).order_by('-committed_at')[:10]
    r#"SELECT "changes"."id", "changes"."committed_at", "changes"."table", "changes"."primary_key", "changes"."operation", "changes"."before", "changes"."after", "changes"."context" FROM "changes" WHERE ("changes"."operation" = 'UPDATE' AND "changes"."table" = 'items' AND "changes"."context" @> '{"user": "bob"}'::jsonb) ORDER BY "changes"."committed_at" DESC LIMIT 10"#,
    // Django: record.bemi_changes().context_not({'user': 'alice'}).asc()
    r#"SELECT "changes"."id", "changes"."committed_at", "changes"."table", "changes"."primary_key", "changes"."operation", "changes"."before", "changes"."after", "changes"."context" FROM "changes" WHERE ("changes"."table" = 'items' AND "changes"."primary_key" = '2' AND NOT ("changes"."context" @> '{"user": "alice"}'::jsonb)) ORDER BY "changes"."committed_at" ASC"#,
    // Django: record.bemi_changes().before_not({'note': 'a'}).after({'note': 'b'})
    r#"SELECT "changes"."id", "changes"."committed_at", "changes"."table", "changes"."primary_key", "changes"."operation", "changes"."before", "changes"."after", "changes"."context" FROM "changes" WHERE ("changes"."table" = 'items' AND "changes"."primary_key" = '2' AND NOT ("changes"."before" @> '{"note": "a"}'::jsonb) AND "changes"."after" @> '{"note": "b"}'::jsonb)"#,
    // Django: BemiChange.objects.field_changed(table='items', primary_key='1', field_name='note')
    r#"SELECT "changes"."id", "changes"."committed_at", "changes"."table", "changes"."primary_key", "changes"."operation", "changes"."before", "changes"."after", "changes"."context" FROM "changes" WHERE ("changes"."table" = 'items' AND "changes"."primary_key" = '1' AND ("changes"."before" -> 'note') IS DISTINCT FROM ("changes"."after" -> 'note')) ORDER BY "changes"."committed_at" ASC"#,
    // Django: BemiChange.objects.filter(committed_at__gte=..., committed_at__lt=...).last()
    r#"SELECT "changes"."id", "changes"."committed_at", "changes"."table", "changes"."primary_key", "changes"."operation", "changes"."before", "changes"."after", "changes"."context" FROM "changes" WHERE ("changes"."committed_at" >= '2031-01-15T00:00:00+00:00'::timestamptz AND "changes"."committed_at" < '2031-03-01T00:00:00+00:00'::timestamptz) ORDER BY "changes"."committed_at" DESC LIMIT 1"#,
];

#[tokio::test]
async fn bemi_s_django_and_rails_queries_return_the_same_rows_on_both_layouts() {
    let source = TestDatabase::create().await.unwrap();
    let destination = TestDatabase::create().await.unwrap();
    let mut sql = items(&source).await;
    let into = |schema: &str, layout: Layout| {
        FakeClock::new(
            PostgresSink::connect(&destination.options())
                .unwrap()
                .schema(schema)
                .layout(layout),
        )
    };
    // Two trackers of one source, one per layout, each with its own slot.
    let old = Tracker::builder(source.options(), into("old_layout", Layout::Unpartitioned))
        .slot(format!("{}_old", source.slot()))
        .publication(source.publication())
        .start()
        .await
        .unwrap();
    let new = start(&source, into("new_layout", Layout::default())).await;

    let writes = [
        (
            "alice",
            "2031-01-10T10:00:00Z",
            "INSERT INTO items VALUES (1, 'a'), (2, 'a')",
        ),
        (
            "bob",
            "2031-01-31T23:59:59Z",
            "UPDATE items SET note = 'b' WHERE id = 1",
        ),
        (
            "alice",
            "2031-02-01T00:00:00Z",
            "UPDATE items SET note = 'c' WHERE id = 2",
        ),
        (
            "bob",
            "2031-02-15T00:00:00Z",
            "UPDATE items SET note = 'b' WHERE id = 2",
        ),
        (
            "bob",
            "2031-03-03T00:00:00Z",
            "UPDATE items SET note = 'c' WHERE id = 1; DELETE FROM items WHERE id = 2",
        ),
    ];
    for (user, committed_at, statements) in writes {
        let context = Context::new()
            .with("fake_committed_at", committed_at)
            .with("user", user);
        let tx = bemi_core::context::begin_with(&mut sql, &context)
            .await
            .unwrap();
        tx.batch_execute(statements).await.unwrap();
        tx.commit().await.unwrap();
    }
    let stored = destination.connect().await.unwrap();
    for schema in ["old_layout", "new_layout"] {
        let query = format!("SELECT count(*) FROM {schema}.changes");
        let deadline = std::time::Instant::now() + WAIT;
        while scalar(&stored, &query).await < 7 {
            assert!(
                std::time::Instant::now() < deadline,
                "{schema}: {:?} {:?}",
                old.progress(),
                new.progress()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    old.shutdown().await.unwrap();
    new.shutdown().await.unwrap();
    let leaves = "SELECT count(*) FROM pg_partition_tree('new_layout.changes') WHERE isleaf";
    assert!(
        scalar(&stored, leaves).await >= 4,
        "the rows span partitions"
    );

    for query in BEMI_HELPER_QUERIES {
        let mut results = Vec::new();
        for schema in ["old_layout", "new_layout"] {
            stored
                .batch_execute(&format!("SET search_path = {schema}"))
                .await
                .unwrap();
            // Every column but the ids, which each sink makes itself.
            let rows = stored
                .query(
                    &format!("SELECT (to_jsonb(q) - 'id' - 'created_at' - 'queued_at')::text FROM ({query}) q"),
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("{schema}: {query}: {e}"));
            results.push(
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>(),
            );
        }
        assert!(!results[0].is_empty(), "the query finds nothing: {query}");
        assert_eq!(results[0], results[1], "{query}");
    }
}

/// Bemi's worker's table (BEMI-COMPAT.md), with `rows` changes spread over the months before
/// now.
async fn bemi_made_table(sql: &Client, rows: i64) {
    sql.batch_execute(&format!(
        r#"CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
           CREATE TABLE changes (
             id uuid NOT NULL DEFAULT uuid_generate_v4() PRIMARY KEY,
             primary_key varchar(255) NULL,
             "before" jsonb NOT NULL DEFAULT '{{}}', "after" jsonb NOT NULL DEFAULT '{{}}',
             context jsonb NOT NULL DEFAULT '{{}}',
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
           CREATE ROLE bemi_partition_reader;
           GRANT SELECT ON changes TO bemi_partition_reader;
           INSERT INTO changes (primary_key, "after", context, database, schema, "table", operation,
             committed_at, queued_at, created_at, transaction_id, position)
           SELECT i::text, jsonb_build_object('id', i), '{{"user": "bemi"}}', 'old', 'public', 'legacy',
             'CREATE', now() - i * interval '1 hour', now(), now(), i, i
           FROM generate_series(1, {rows}) i;"#
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn migrating_a_bemi_made_table_keeps_every_row_and_the_tracker_goes_on_exactly_once() {
    let db = TestDatabase::create().await.unwrap();
    let sql = items(&db).await;
    // The role is cluster-wide: drop a leftover of an earlier run.
    sql.batch_execute("DROP ROLE IF EXISTS bemi_partition_reader")
        .await
        .unwrap();
    bemi_made_table(&sql, 2_000).await;
    let old_rows = "SELECT md5(string_agg((to_jsonb(c) - 'system_id' - 'commit_lsn' - 'ordinal')::text, ',' ORDER BY id)) \
                    FROM changes c WHERE \"table\" = 'legacy'";
    let old_digest: String = sql.query_one(old_rows, &[]).await.unwrap().get(0);

    // The tracker upgrades the table in place and keeps its layout.
    let tracker = db.tracker_builder().unwrap().start().await.unwrap();
    let insert = |from: i32, to: i32| {
        let sql = &sql;
        async move {
            for id in from..to {
                sql.execute("INSERT INTO items VALUES ($1, 'x')", &[&id])
                    .await
                    .unwrap();
            }
        }
    };
    insert(0, 50).await;
    db.wait_for_changes(2_050, &tracker, WAIT).await.unwrap();
    let table = ChangesTable::default();
    assert_eq!(table.is_partitioned(&sql).await.unwrap(), Some(false));

    // The migration runs while the tracker keeps writing.
    let migration = PartitionMigration::new(table.clone());
    let plan = migration.plan(&sql).await.unwrap();
    let script = plan.to_string();
    assert!(script.contains("INDEX CONCURRENTLY"), "{script}");
    assert!(script.contains("ACCESS EXCLUSIVE"), "{script}");
    assert!(plan.steps.iter().any(|s| !s.blocks_writes), "{script}");
    let migrating = db.connect().await.unwrap();
    let (done, ()) = tokio::join!(migration.run(&migrating), insert(50, 150));
    let done = done.unwrap_or_else(|e| panic!("{}", e.report()));
    assert_eq!(done.len(), plan.steps.len());
    insert(150, 200).await;
    db.wait_for_changes(2_200, &tracker, WAIT).await.unwrap();
    tracker.shutdown().await.unwrap();

    assert_eq!(table.is_partitioned(&sql).await.unwrap(), Some(true));
    assert_eq!(scalar(&sql, "SELECT count(*) FROM changes").await, 2_200);
    let digest: String = sql.query_one(old_rows, &[]).await.unwrap().get(0);
    assert_eq!(digest, old_digest, "the old rows are untouched");
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(DISTINCT primary_key) FROM changes WHERE \"table\" = 'items' AND operation = 'CREATE'"
        )
        .await,
        200,
        "every insert is stored once"
    );
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(*) FROM changes WHERE \"table\" = 'items'"
        )
        .await,
        200
    );
    // The old table is a partition for every commit before the boundary; the reader's grant
    // carried over.
    assert_eq!(
        scalar(
            &sql,
            "SELECT count(*) FROM changes_legacy WHERE \"table\" = 'legacy'"
        )
        .await,
        2_000
    );
    assert_eq!(
        scalar(&sql, "SELECT count(*) FROM pg_constraint WHERE conname = 'changes_position_table_schema_database_operation_unique'").await,
        0
    );
    let grants: bool = sql
        .query_one(
            "SELECT has_table_privilege('bemi_partition_reader', 'changes', 'SELECT')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(grants);
    // Idempotent: nothing left to do.
    let again = migration.plan(&sql).await.unwrap();
    assert!(again.partitioned && again.steps.is_empty(), "{again}");
    assert!(migration.run(&sql).await.unwrap().is_empty());
    sql.batch_execute("DROP OWNED BY bemi_partition_reader; DROP ROLE bemi_partition_reader")
        .await
        .unwrap();
}
