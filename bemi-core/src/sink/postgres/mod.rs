//! The Bemi-compatible `changes` table sink ([`PostgresSink`]).

mod rows;

use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;
use tracing::Instrument as _;

use super::{Batch, ChangeSink, Pending, SinkStart, SourceInfo};
use crate::change::Change;
use crate::changes_table::{
    ChangesTable, IdClock, Layout, PendingListCleaner, Retention, RowId, RowIds, Upkeep,
};
use crate::config::ConnectOptions;
use crate::error::{retry_when_locked, Error, ErrorKind, Result};
use crate::sql::{quote_identifier, quote_qualified};
use crate::Lsn;
use rows::{copy_fits, copy_rows, copy_statement, Columns};

/// Writes changes to a Bemi-compatible `changes` table, exactly once.
///
/// On [`open`](ChangeSink::open) the sink creates the table with Bemi's columns and indexes
/// when it is missing, or upgrades a table created by Bemi's own worker (or by an older
/// version of this crate) in place: it adds the idempotency columns `system_id`, `commit_lsn`
/// and `ordinal` with a unique index, adds any missing index, and drops Bemi's unique key on
/// `(position, table, schema, database, operation)`, which silently dropped rows (all rows of
/// one COPY share a position); the table's contract is in [`changes_table`](crate::changes_table).
/// Existing rows are untouched. The catalog is read first, so a table that has everything is
/// not locked at all; an upgrade waits at most a few seconds for its lock at a time (readers
/// are never queued behind it for long) and retries.
///
/// A table the sink creates is partitioned by month on `committed_at` unless
/// [`layout`](Self::layout) says otherwise; an existing table keeps its layout (`bemi migrate
/// --partition` changes it). For a partitioned table the sink creates each partition before
/// the first row that needs it (the period of each row it writes, and the period after the
/// newest), without blocking inserts or queries, with a default partition for anything else;
/// and drops (or archives) partitions past the [`retention`](Self::retention) window, at start
/// and then hourly. New rows get time-ordered ids ([`RowIds`]).
///
/// The GIN indexes on `before`, `after` and `context` keep PostgreSQL's pending list, which
/// takes a batch's entries in bulk; a task of the sink merges the lists into the indexes twice
/// a second on a connection of its own (`gin_clean_pending_list`, which needs the sink's role
/// to own the table), so no insert stalls merging a full one.
///
/// The idempotency key is `(system_id, commit_lsn, ordinal)`, with `committed_at` in a
/// partitioned table (a transaction's commit time is the same at every replay): the source
/// cluster's system identifier (as `pg_control_system()` reports it), the LSN of the
/// transaction's commit and the change's position in it. WAL positions of different clusters
/// overlap, so one table can serve several source clusters only with the cluster in the key.
/// The durable position is kept per source too, in the progress table (`_bemi_progress`, one
/// row per system id, database and slot).
///
/// Each batch is one transaction, with the durable position recorded in the progress table in
/// the same transaction. A batch that may replay stored changes (the first ones after a
/// restart) goes in through `UNNEST` of column arrays (each distinct context once, however
/// many rows share it) with `ON CONFLICT … DO NOTHING` — one statement, one round trip, when no
/// other batch is being stored. The changes of transactions that committed after everything
/// the table holds from the source (newer than the stored position and than the newest stored
/// `commit_lsn`, which covers a transaction stored in part) are new: a batch of at least 100 of
/// them goes in through a binary `COPY`, a smaller one through the same `UNNEST` without the
/// `ON CONFLICT` check, both cheaper for the server per row; should such a batch meet a key the
/// table holds after all (another writer of the same source), it fails with a transient error,
/// is stored again through `INSERT … ON CONFLICT`, and the sink checks every row from then on.
/// The sink pipelines
/// ([`submit`](ChangeSink::submit)): while a batch is stored, the next is inserted on another
/// connection in a transaction that commits, with its position, only after the one before
/// committed, so positions are recorded in order and never past a failed batch. Every
/// transaction commits durably (flushed to disk) even where the database or role sets
/// `synchronous_commit = off`, because the slot is confirmed after it.
///
/// The sink's sessions set their own `statement_timeout` (5 minutes), so a shorter one on the
/// destination's role or database cannot make every batch fail.
///
/// Differences from Bemi's storage, all within its columns' types: `primary_key` is the real
/// primary key (composite keys as a JSON array); keys longer than the column's 255 characters
/// are cut to 255 with a warning.
///
/// ```no_run
/// # async fn run() -> bemi_core::Result<()> {
/// let destination: bemi_core::ConnectOptions = "postgres://bemi@audit-db/audit".parse()?;
/// let sink = bemi_core::sink::PostgresSink::connect(&destination)?
///     .schema("audit")
///     .retention("90d".parse()?);
/// # drop(sink); Ok(()) }
/// ```
#[derive(Debug)]
pub struct PostgresSink {
    pool: Pool,
    changes: ChangesTable,
    progress_table: String,
    layout: Layout,
    row_ids: RowIds,
    retention: Option<Retention>,
    /// The source being stored: system id, database, slot.
    source: Option<(i64, String, String)>,
    /// The upkeep of the table's partitions, when it is partitioned (known after `open`).
    upkeep: Option<Upkeep>,
    /// Merges the GIN indexes' pending lists off the write path (from `open` on).
    cleaner: Option<PendingListCleaner>,
    ids: IdClock,
    statements: Arc<Statements>,
    /// Changes of transactions that committed after this position (the stored position or the
    /// newest stored `commit_lsn` of the source, whichever is later) are new: none of them is
    /// stored, so they go in by `COPY` or a plain `INSERT`, with no `ON CONFLICT` check. `None`
    /// before `open`, or when it could not be found in time.
    new_after: Option<i64>,
    /// Set when changes taken for new met a key the table held: every batch goes in through
    /// `INSERT … ON CONFLICT DO NOTHING` from then on.
    new_refused: Arc<AtomicBool>,
    /// Whether the batch submitted last committed (`true`) or failed: the next one commits only
    /// after it.
    last_commit: Option<oneshot::Receiver<bool>>,
}

/// The statements of a write, for the table's layout.
#[derive(Debug, Default)]
struct Statements {
    /// Inserts a batch's rows, skipping those stored already.
    insert: String,
    /// Inserts a batch's rows and records the position they complete, in one statement.
    insert_with_progress: String,
    /// [`insert`](Self::insert) for new rows: without the `ON CONFLICT` check.
    insert_new: String,
    /// [`insert_with_progress`](Self::insert_with_progress) for new rows.
    insert_new_with_progress: String,
    /// Records a position.
    progress: String,
    /// Copies a batch's rows, when the table's columns take a binary `COPY`.
    copy: Option<String>,
}

/// The fewest changes a batch sends by `COPY` rather than in one `INSERT` statement.
const COPY_MIN_CHANGES: usize = 100;

/// The sink's own `statement_timeout`: long enough for the largest batch, short enough that a
/// statement stuck on a lock is cancelled (and retried) in the end.
const STATEMENT_TIMEOUT: &str = "-c statement_timeout=300000";

/// Connections of a sink's own pool: batches in flight (the tracker's default two, and the
/// next being readied) and the pending-list cleaner.
const POOL_SIZE: usize = 4;

/// How long [`open`](ChangeSink::open) waits for the batches of a session that ended.
const REOPEN_WAIT: Duration = Duration::from_secs(10);

/// How long [`PostgresSink::new_horizon`] looks for the newest change stored from a source.
const HORIZON_LOOKUP_TIMEOUT: &str = "2s";

/// How long a table upgrade waits for its lock before it lets readers through and tries again.
const UPGRADE_LOCK_TIMEOUT: &str = "5s";
const UPGRADE_ATTEMPTS: u32 = 5;

impl PostgresSink {
    /// A sink writing through a new connection pool to the database of `options`.
    pub fn connect(options: &ConnectOptions) -> Result<Self> {
        Ok(Self::with_pool(
            options.pool_with_options(POOL_SIZE, STATEMENT_TIMEOUT)?,
        ))
    }

    /// A sink writing through an existing deadpool-postgres pool. Its sessions keep their own
    /// `statement_timeout`: make sure it is long enough for a batch (or 0).
    pub fn with_pool(pool: Pool) -> Self {
        let mut sink = PostgresSink {
            pool,
            changes: ChangesTable::default(),
            progress_table: "_bemi_progress".to_owned(),
            layout: Layout::default(),
            row_ids: RowIds::default(),
            retention: None,
            source: None,
            upkeep: None,
            cleaner: None,
            ids: IdClock::new(),
            statements: Arc::default(),
            new_after: None,
            new_refused: Arc::default(),
            last_commit: None,
        };
        sink.build_sql(false, false);
        sink
    }

    /// Sets the schema of the `changes` and progress tables (default `public`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.changes = ChangesTable::new(schema, self.changes.name());
        self
    }

    /// Sets the name of the changes table (default `changes`).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.changes = ChangesTable::new(self.changes.schema(), table);
        self
    }

    /// How a table the sink creates is laid out (default: partitioned by month). An existing
    /// table keeps its layout; an existing partitioned table gets new partitions of this
    /// interval (monthly when this says [`Layout::Unpartitioned`]).
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// How new rows get their `id` (default: time-ordered UUIDs, version 7).
    pub fn row_ids(mut self, ids: RowIds) -> Self {
        self.row_ids = ids;
        self
    }

    /// Drops (or archives) the partitions of a partitioned table whose every row is older than
    /// the window, at start and then hourly, logging each (default: keep everything). An
    /// unpartitioned table is left alone, with a warning: retention never deletes rows.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = Some(retention);
        self
    }

    /// The quoted, schema-qualified name of the progress table.
    fn progress(&self) -> String {
        quote_qualified(Some(self.changes.schema()), &self.progress_table)
    }

    /// The statements of `write`, for the table's layout: with `committed_at` in the conflict
    /// target of a partitioned table, the ids made here unless the column's default makes
    /// them, and a `COPY` when the columns take one.
    fn build_sql(&mut self, partitioned: bool, copy: bool) {
        let ids = self.row_ids == RowIds::TimeOrdered;
        let (id_column, id_value, id_array, id_alias) = match ids {
            true => ("id, ", "u.id, ", ", $17::uuid[]", ", id"),
            false => ("", "", "", ""),
        };
        let key = match partitioned {
            true => "system_id, commit_lsn, ordinal, committed_at",
            false => "system_id, commit_lsn, ordinal",
        };
        let insert_new = format!(
            "INSERT INTO {} ({id_column}primary_key, before, after, context, database, schema, \
             \"table\", operation, committed_at, queued_at, transaction_id, position, system_id, \
             commit_lsn, ordinal) \
             SELECT {id_value}u.primary_key, u.before, u.after, c.context, u.database, u.schema, \
             u.tbl, u.operation, u.committed_at, u.queued_at, u.transaction_id, u.position, $15, \
             u.commit_lsn, u.ordinal \
             FROM {DURABLE_COMMIT}, \
             UNNEST($1::text[], $2::jsonb[], $3::jsonb[], $4::int4[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], \
             $11::int8[], $12::int8[], $13::int8[], $14::int4[]{id_array}) \
             AS u(primary_key, before, after, context_index, database, schema, tbl, operation, \
             committed_at, queued_at, transaction_id, position, commit_lsn, ordinal{id_alias}), \
             UNNEST($16::jsonb[]) WITH ORDINALITY AS c(context, i) \
             WHERE c.i = u.context_index",
            self.changes.qualified()
        );
        let insert = format!("{insert_new} ON CONFLICT ({key}) DO NOTHING");
        let next = if ids { 18 } else { 17 };
        let record = |values: &str| {
            format!(
                "INSERT INTO {} AS p (system_id, database, slot, lsn, updated_at) {values} \
                 ON CONFLICT (system_id, database, slot) \
                 DO UPDATE SET lsn = GREATEST(p.lsn, excluded.lsn), updated_at = now()",
                self.progress()
            )
        };
        let with_progress = |insert: &str| {
            format!(
                "WITH inserted AS ({insert} RETURNING 1) {}",
                record(&format!(
                    "SELECT $15, ${next}, ${}, ${}, now() FROM {DURABLE_COMMIT}",
                    next + 1,
                    next + 2
                ))
            )
        };
        self.statements = Arc::new(Statements {
            insert_with_progress: with_progress(&insert),
            insert_new_with_progress: with_progress(&insert_new),
            progress: record("VALUES ($1, $2, $3, $4, now())"),
            insert,
            insert_new,
            copy: copy.then(|| copy_statement(&self.changes, ids)),
        });
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => Error::from(e),
            other => Error::new(
                ErrorKind::Connect,
                "could not get a connection to the destination database",
            )
            .with_source(other),
        })
    }

    /// Creates or upgrades the tables when something is missing. Checks the catalog first
    /// without locking; an upgrade runs under an advisory lock (two trackers starting together
    /// do not race) with a short `lock_timeout`, retried, so readers of the table never wait
    /// behind it for long.
    async fn migrate(&self) -> Result<()> {
        let what = format!("upgrading {}", self.changes.qualified());
        retry_when_locked(UPGRADE_ATTEMPTS, &what, || async {
            let mut client = self.client().await?;
            if self.is_current(&client).await? {
                return Ok(());
            }
            self.upgrade(&mut client).await
        })
        .await
    }

    /// Whether both tables have every column and index this version needs.
    async fn is_current(&self, client: &deadpool_postgres::Object) -> Result<bool> {
        let progress_keyed = client
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_constraint \
                                WHERE conrelid = to_regclass($1) AND contype = 'p' \
                                  AND cardinality(conkey) = 3)",
                &[&self.progress()],
            )
            .await?
            .get::<_, bool>(0);
        let client: &tokio_postgres::Client = client;
        Ok(progress_keyed && self.changes.is_current(client).await?)
    }

    async fn upgrade(&self, client: &mut deadpool_postgres::Object) -> Result<()> {
        let tx = client.transaction().await?;
        tx.execute(
            &format!("SET LOCAL lock_timeout = '{UPGRADE_LOCK_TIMEOUT}'"),
            &[],
        )
        .await?;
        self.changes.lock_for_upgrade(&*tx).await?;
        self.changes.create_or_upgrade(&*tx, self.layout).await?;
        let progress = self.progress();
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {progress} (
               system_id bigint NOT NULL DEFAULT 0,
               database text NOT NULL DEFAULT '',
               slot text NOT NULL,
               lsn bigint NOT NULL,
               updated_at timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (system_id, database, slot)
             );
             ALTER TABLE {progress}
               ADD COLUMN IF NOT EXISTS system_id bigint NOT NULL DEFAULT 0,
               ADD COLUMN IF NOT EXISTS database text NOT NULL DEFAULT '';"
        ))
        .await?;
        // Before this version the progress table was keyed by slot alone; its rows keep
        // system id 0 until a source adopts them (see `open`).
        let legacy_key = tx
            .query_opt(
                "SELECT conname::text FROM pg_catalog.pg_constraint \
                 WHERE conrelid = $1::text::regclass AND contype = 'p' \
                   AND cardinality(conkey) = 1",
                &[&progress],
            )
            .await?;
        if let Some(row) = legacy_key {
            let name: String = row.get(0);
            tx.batch_execute(&format!(
                "ALTER TABLE {progress} DROP CONSTRAINT {}, \
                 ADD PRIMARY KEY (system_id, database, slot)",
                quote_identifier(&name)
            ))
            .await?;
        }
        tx.commit().await?;
        tracing::info!(table = %self.changes.qualified(), "the changes table is up to date");
        Ok(())
    }

    /// Adopts a progress row of an older version, then reads the stored position of `source`
    /// and where the destination is (system id, database).
    async fn stored_position(
        &self,
        client: &deadpool_postgres::Object,
        system_id: i64,
        source: &SourceInfo,
    ) -> Result<tokio_postgres::Row> {
        let progress = self.progress();
        // A progress row of an older version, keyed by slot alone, belongs to the first source
        // that opens it; rows it stored after that position (a transaction cut short) take
        // its key, so their replay is recognised.
        client
            .execute(
                &format!(
                    "WITH adopted AS (
                           UPDATE {progress} SET system_id = $1, database = $2
                           WHERE slot = $3 AND system_id = 0 AND database = ''
                             AND NOT EXISTS (SELECT FROM {progress}
                                             WHERE system_id = $1 AND database = $2 AND slot = $3)
                           RETURNING lsn)
                         UPDATE {changes} SET system_id = $1
                         WHERE EXISTS (SELECT FROM adopted) AND system_id IS NULL AND database = $2
                           AND commit_lsn > (SELECT lsn FROM adopted)",
                    changes = self.changes.qualified(),
                ),
                &[&system_id, &source.database, &source.slot],
            )
            .await?;
        Ok(client
            .query_one(
                &format!(
                    "SELECT (SELECT lsn FROM {progress} \
                                 WHERE system_id = $1 AND database = $2 AND slot = $3), \
                                (SELECT system_identifier FROM pg_control_system()), \
                                current_database()::text",
                ),
                &[&system_id, &source.database, &source.slot],
            )
            .await?)
    }

    /// Where new changes begin (see [`new_after`](Self::new_after)): after the stored position
    /// and the newest `commit_lsn` stored from the source (rows of a transaction stored in part
    /// lie past the position). A table shared with other sources may need a long index scan to
    /// tell; when it takes longer than [`HORIZON_LOOKUP_TIMEOUT`], this session checks every
    /// row through `INSERT … ON CONFLICT` (`None`).
    async fn new_horizon(
        &self,
        client: &mut deadpool_postgres::Object,
        system_id: i64,
        durable: Option<i64>,
    ) -> Result<Option<i64>> {
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = '{HORIZON_LOOKUP_TIMEOUT}'"
        ))
        .await?;
        let newest = tx
            .query_one(
                &format!(
                    "SELECT max(commit_lsn) FROM {} WHERE system_id = $1 AND commit_lsn > $2",
                    self.changes.qualified()
                ),
                &[&system_id, &durable.unwrap_or(i64::MIN)],
            )
            .await;
        match newest {
            Ok(row) => {
                tx.commit().await?;
                Ok(Some(durable.max(row.get(0)).unwrap_or(0)))
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {
                tracing::info!(
                    table = %self.changes.qualified(),
                    "finding the newest change stored from this source took longer than \
                     {HORIZON_LOOKUP_TIMEOUT}; this session stores through INSERT only"
                );
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A one-row subquery that makes the statement's transaction commit durably: a database or
/// role with `synchronous_commit = off` would acknowledge a commit still in memory, and the
/// tracker confirms the slot past what a crash of the destination would then lose. `off`
/// becomes `local` (flushed to this server's disk); stronger settings are kept. The setting is
/// local to the batch's transaction (its one statement, or the transaction a pipelined batch
/// commits), so it ends with it.
const DURABLE_COMMIT: &str = "(SELECT set_config('synchronous_commit', \
     CASE current_setting('synchronous_commit') WHEN 'off' THEN 'local' \
     ELSE current_setting('synchronous_commit') END, true)) AS durable_commit";

#[async_trait]
impl ChangeSink for PostgresSink {
    async fn open(&mut self, source: &SourceInfo) -> Result<SinkStart> {
        let system_id = parse_system_id(&source.system_id)?;
        // Batches of a session that ended may still be committing, or hung on a destination
        // that stopped answering. They commit in order among themselves and never past a failed
        // one, and this session's writes are idempotent, so the wait for them is short.
        if tokio::time::timeout(REOPEN_WAIT, self.writes_done())
            .await
            .is_err()
        {
            tracing::warn!(
                waited = ?REOPEN_WAIT,
                "batches of the previous session are still being stored; going on without them"
            );
        }
        self.ready().await?;
        let mut client = self.client().await?;
        let found = async {
            let row = self.stored_position(&client, system_id, source).await?;
            let durable: Option<i64> = row.get(0);
            let horizon = self.new_horizon(&mut client, system_id, durable).await?;
            Ok((row, durable, horizon))
        }
        .await;
        let (row, durable, horizon) = discard_if_failed(&self.pool, client, found)?;
        self.new_after = horizon;
        let destination_system: i64 = row.get(1);
        let destination_database: String = row.get(2);
        let mut start = SinkStart::at(durable.map(Lsn::from_int8));
        if destination_system == system_id && destination_database == source.database {
            let schema = self.changes.schema().to_owned();
            start.ignore_tables = vec![
                (schema.clone(), self.changes.name().to_owned()),
                (schema, self.progress_table.clone()),
            ];
        }
        self.source = Some((system_id, source.database.clone(), source.slot.clone()));
        tracing::info!(
            table = %self.changes.qualified(),
            durable = ?start.durable,
            same_database = !start.ignore_tables.is_empty(),
            "postgres sink ready"
        );
        Ok(start)
    }

    async fn write(&mut self, batch: Batch) -> Result<()> {
        self.submit(batch).await?.await
    }

    /// Starts the batch's transaction on a connection of its own and returns: the next batch is
    /// inserted while this one is. Each commits only after the one before it committed, so
    /// positions are recorded in order, and none after a failed batch.
    async fn submit(&mut self, batch: Batch) -> Result<Pending> {
        if batch.changes.is_empty() && batch.durable_through.is_none() {
            return Ok(Box::pin(std::future::ready(Ok(()))));
        }
        let Some((system_id, database, slot)) = &self.source else {
            return Err(Error::new(
                ErrorKind::Sink,
                "PostgresSink::write was called before open",
            ));
        };
        let progress = batch
            .durable_through
            .map(|lsn| (database.clone(), slot.clone(), lsn.to_int8()));
        let way = self.way(&batch.changes);
        let insert = self
            .insert(*system_id, &batch.changes, progress, way)
            .await?;
        let (committed, next) = oneshot::channel();
        let after = self.last_commit.replace(next);
        let task = tokio::spawn(
            async move {
                let result = insert.run(&batch.changes, after).await;
                let _ = committed.send(result.is_ok());
                result
            }
            .in_current_span(),
        );
        Ok(Box::pin(async move {
            task.await.map_err(|e| {
                Error::new(ErrorKind::Sink, "the sink panicked while writing").with_source(e)
            })?
        }))
    }
}

impl PostgresSink {
    /// Creates or upgrades the `changes` table and readies its partitions' upkeep, as
    /// [`open`](ChangeSink::open) does, for [`store`](Self::store) without a tracker; again
    /// after a transient failure of `store`.
    pub async fn prepare(&mut self) -> Result<()> {
        self.ready().await
    }

    /// Stores changes of the source cluster `system_id` (as `IDENTIFY_SYSTEM` prints it)
    /// exactly once, without a position: for a consumer of changes that a tracker published
    /// elsewhere (`bemi store` reading NATS). The rows are those [`write`](ChangeSink::write)
    /// stores; a change whose key the table holds is skipped. One transaction, committed
    /// durably when this returns.
    pub async fn store(&mut self, system_id: &str, changes: &[Change]) -> Result<()> {
        let system_id = parse_system_id(system_id)?;
        self.writes_done().await;
        self.insert(system_id, changes, None, Way::Replay)
            .await?
            .run(changes, None)
            .await
    }

    /// The table is up to date, and the statements and upkeep match its layout.
    async fn ready(&mut self) -> Result<()> {
        self.migrate().await?;
        let mut client = self.client().await?;
        let found = async {
            let retention = self.retention.clone();
            let upkeep = upkeep_of(&self.changes, self.layout, retention, &mut client).await?;
            Ok((upkeep, copy_fits(&client, &self.changes).await?))
        }
        .await;
        let (upkeep, copy) = discard_if_failed(&self.pool, client, found)?;
        self.build_sql(upkeep.is_some(), copy);
        self.upkeep = upkeep;
        self.cleaner = Some(PendingListCleaner::spawn(
            self.pool.clone(),
            self.changes.clone(),
        ));
        Ok(())
    }

    /// Waits until the batches submitted before have committed or failed.
    async fn writes_done(&mut self) {
        if let Some(last) = self.last_commit.take() {
            let _ = last.await;
        }
    }

    /// How `changes` go in: as new when none is stored yet (see
    /// [`new_after`](Self::new_after); changes come in commit order) and no new batch met a
    /// stored key, by `COPY` when there are enough of them and the table takes one.
    fn way(&self, changes: &[Change]) -> Way {
        let new = !self.new_refused.load(Ordering::Relaxed)
            && self.new_after.is_some_and(|after| {
                changes
                    .first()
                    .is_some_and(|first| first.commit_lsn.to_int8() > after)
            });
        match new {
            false => Way::Replay,
            true if self.statements.copy.is_some() && changes.len() >= COPY_MIN_CHANGES => {
                Way::Copy
            }
            true => Way::New,
        }
    }

    /// Readies the insert of `changes` (and of the position they complete, when given) on a
    /// connection of its own, the partitions its rows need created, the `way` it goes.
    async fn insert(
        &mut self,
        system_id: i64,
        changes: &[Change],
        progress: Option<(String, String, i64)>,
        way: Way,
    ) -> Result<Insert> {
        let ids = match self.row_ids {
            RowIds::TimeOrdered => Some(changes.iter().map(|_| self.ids.next_id()).collect()),
            RowIds::Random => None,
        };
        let committed = || changes.iter().map(|change| change.committed_at);
        if self.upkeep.as_ref().is_some_and(|u| u.is_due(committed())) {
            self.writes_done().await;
        }
        let mut client = self.client().await?;
        if let Some(upkeep) = &mut self.upkeep {
            upkeep.before_write(&mut client, committed()).await;
        }
        Ok(Insert {
            pool: self.pool.clone(),
            client,
            statements: Arc::clone(&self.statements),
            system_id,
            ids,
            progress,
            way,
            new_refused: Arc::clone(&self.new_refused),
        })
    }
}

/// How a batch's rows go in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// `INSERT … ON CONFLICT DO NOTHING`: some may be stored already (right after a restart).
    Replay,
    /// A plain `INSERT`: none is stored.
    New,
    /// A binary `COPY`: none is stored, and there are enough of them.
    Copy,
}

/// One batch's insert, on its connection.
struct Insert {
    pool: Pool,
    client: deadpool_postgres::Object,
    statements: Arc<Statements>,
    system_id: i64,
    /// The rows' ids, when the sink makes them (see [`RowIds`]).
    ids: Option<Vec<RowId>>,
    progress: Option<(String, String, i64)>,
    way: Way,
    /// The sink's flag to raise if the table held one of the rows taken for new.
    new_refused: Arc<AtomicBool>,
}

impl Insert {
    /// Inserts `changes` and records the position. When the batch before (`after`) is still
    /// being stored, or the rows go by `COPY`, they go in a transaction that commits, with the
    /// position, only once that batch committed; otherwise one statement does it all. Fails,
    /// storing nothing, when the batch before failed, or when rows taken for new were stored
    /// already (transient: they are stored again, and the sink checks every row from then on).
    async fn run(self, changes: &[Change], after: Option<oneshot::Receiver<bool>>) -> Result<()> {
        let Insert {
            pool,
            client,
            statements,
            system_id,
            ids,
            progress,
            way,
            new_refused,
        } = self;
        let after = match after.map(|mut last| (last.try_recv(), last)) {
            None | Some((Ok(true), _)) => None,
            Some((Err(oneshot::error::TryRecvError::Empty), last)) => Some(last),
            Some(_) => return Err(earlier_batch_failed()),
        };
        let commit = Commit {
            client: &client,
            statements: &statements,
            system_id,
            progress: progress.as_ref(),
        };
        let written = match (way, &statements.copy) {
            (Way::Copy, Some(copy)) => {
                async {
                    client
                        .batch_execute(&format!("BEGIN; SELECT FROM {DURABLE_COMMIT}"))
                        .await?;
                    let statement = client.prepare_cached(copy).await?;
                    copy_rows(&client, &statement, changes, system_id, ids.as_deref()).await?;
                    commit.after(after).await
                }
                .await
            }
            _ => {
                let replay = way == Way::Replay;
                commit.insert(changes, ids.as_deref(), after, replay).await
            }
        };
        discard_if_failed(&pool, client, written).map_err(|e| match e.kind() {
            ErrorKind::Connect => e,
            _ if e.message() == EARLIER_BATCH_FAILED => e,
            _ if e.code() == Some(UNIQUE_VIOLATION) && way != Way::Replay => {
                new_refused.store(true, Ordering::Relaxed);
                tracing::warn!(
                    "a batch of changes taken for new met a change the changes table holds \
                     (does another writer store this source too?): it is stored again, and \
                     every batch goes in through INSERT … ON CONFLICT from now on"
                );
                Error::new(
                    ErrorKind::Sink,
                    format!("a change taken for new was stored already: {}", e.message()),
                )
                .with_code(UNIQUE_VIOLATION)
                .with_transient(true)
                .with_source(e)
            }
            _ if layout_changed(&e) => Error::new(
                ErrorKind::Sink,
                format!(
                    "the changes table changed under the sink ({}); it reopens on the new \
                     layout and stores the batch again",
                    e.message()
                ),
            )
            .with_code(e.code().unwrap_or_default().to_owned())
            .with_transient(true)
            .with_source(e),
            _ => Error::new(
                ErrorKind::Sink,
                format!("could not store {} changes: {}", changes.len(), e.message()),
            )
            .with_code(e.code().unwrap_or_default().to_owned())
            .with_source(e),
        })
    }
}

/// The SQLSTATE of a duplicate key.
const UNIQUE_VIOLATION: &str = "23505";

/// How a batch's transaction ends, on its connection.
struct Commit<'a> {
    client: &'a deadpool_postgres::Object,
    statements: &'a Statements,
    system_id: i64,
    progress: Option<&'a (String, String, i64)>,
}

impl Commit<'_> {
    /// Inserts `changes` through `UNNEST`, with `ON CONFLICT … DO NOTHING` when some may be
    /// stored already (`replay`): in one statement with the position when no batch before is
    /// being stored (`after`), else in a transaction that commits after it.
    async fn insert(
        &self,
        changes: &[Change],
        ids: Option<&[RowId]>,
        after: Option<oneshot::Receiver<bool>>,
        replay: bool,
    ) -> Result<()> {
        let (insert, insert_with_progress) = match replay {
            true => (
                &self.statements.insert,
                &self.statements.insert_with_progress,
            ),
            false => (
                &self.statements.insert_new,
                &self.statements.insert_new_with_progress,
            ),
        };
        let client = self.client;
        let columns = Columns::new(changes)?;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &columns.primary_key,
            &columns.before,
            &columns.after,
            &columns.context_index,
            &columns.database,
            &columns.schema,
            &columns.table,
            &columns.operation,
            &columns.committed_at,
            &columns.queued_at,
            &columns.transaction_id,
            &columns.position,
            &columns.commit_lsn,
            &columns.ordinal,
            &self.system_id,
            &columns.contexts,
        ];
        if let Some(ids) = &ids {
            params.push(ids);
        }
        match (after, self.progress) {
            (None, Some((database, slot, lsn))) => {
                params.extend([database as &(dyn ToSql + Sync), slot, lsn]);
                let statement = client.prepare_cached(insert_with_progress).await?;
                client.execute(&statement, &params).await?;
                Ok(())
            }
            (None, None) => {
                let statement = client.prepare_cached(insert).await?;
                client.execute(&statement, &params).await?;
                Ok(())
            }
            (after, _) => {
                client.batch_execute("BEGIN").await?;
                let statement = client.prepare_cached(insert).await?;
                client.execute(&statement, &params).await?;
                self.after(after).await
            }
        }
    }

    /// Waits for the batch before (`after`) to commit, then records the position and commits
    /// the transaction begun on the connection; fails, rolling back, when that batch failed.
    async fn after(&self, after: Option<oneshot::Receiver<bool>>) -> Result<()> {
        if let Some(last) = after {
            if !last.await.unwrap_or(false) {
                return Err(earlier_batch_failed());
            }
        }
        if let Some((database, slot, lsn)) = self.progress {
            let statement = self
                .client
                .prepare_cached(&self.statements.progress)
                .await?;
            self.client
                .execute(&statement, &[&self.system_id, database, slot, lsn])
                .await?;
        }
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

const EARLIER_BATCH_FAILED: &str =
    "a batch submitted before this one failed, so this one was not stored (it is streamed again)";

fn earlier_batch_failed() -> Error {
    Error::new(ErrorKind::Sink, EARLIER_BATCH_FAILED).with_transient(true)
}

/// Passes `result` on; after a failure the connection (rolling back what it had begun), and
/// every idle one, is closed rather than reused: a session that failed may be stale (read-only
/// since it began, say), and the next attempt should start afresh.
fn discard_if_failed<T>(
    pool: &Pool,
    client: deadpool_postgres::Object,
    result: Result<T>,
) -> Result<T> {
    if result.is_err() {
        drop(deadpool_postgres::Object::take(client));
        pool.retain(|_, _| false);
    }
    result
}

/// The system identifier as the tables hold it: `IDENTIFY_SYSTEM` prints it unsigned,
/// `pg_control_system()` and the tables hold it as bigint.
fn parse_system_id(text: &str) -> Result<i64> {
    let id = text.parse::<u64>().map_err(|e| {
        Error::protocol(format!("invalid system identifier {text:?}")).with_source(e)
    })?;
    Ok(id as i64)
}

/// The upkeep of the table's partitions when it is partitioned: its partitions for now and the
/// next period exist, and retention ran. An unpartitioned table has none, and retention
/// leaves it alone with a warning.
async fn upkeep_of(
    changes: &ChangesTable,
    layout: Layout,
    retention: Option<Retention>,
    client: &mut tokio_postgres::Client,
) -> Result<Option<Upkeep>> {
    if changes.is_partitioned(&*client).await? != Some(true) {
        if let Some(retention) = retention {
            tracing::warn!(
                table = %changes.qualified(),
                %retention,
                "retention is set but the changes table is not partitioned, and retention only \
                 drops whole partitions: nothing is removed; partition it with `bemi migrate \
                 --partition`"
            );
        }
        return Ok(None);
    }
    let interval = match layout {
        Layout::Partitioned(interval) => interval,
        Layout::Unpartitioned => Default::default(),
    };
    let mut upkeep = Upkeep::new(changes.clone(), interval, retention);
    upkeep.open(client, chrono::Utc::now()).await?;
    Ok(Some(upkeep))
}

/// Whether a write failed because the table is not the one the statement was made for: its
/// conflict target has no unique index (an unpartitioned table became partitioned under a
/// running tracker), or it is gone.
fn layout_changed(error: &Error) -> bool {
    matches!(error.code(), Some("42P10" | "42P01"))
}
