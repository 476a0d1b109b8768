//! The Bemi-compatible `changes` table sink ([`PostgresSink`]).

use async_trait::async_trait;
use bytes::BufMut as _;
use deadpool_postgres::Pool;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::{Batch, ChangeSink, SinkStart, SourceInfo};
use crate::change::Change;
use crate::config::ConnectOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::replication::{quote_identifier, quote_qualified};

const PRIMARY_KEY_CHARS: usize = 255;

/// Writes changes to a Bemi-compatible `changes` table, exactly once.
///
/// On [`open`](ChangeSink::open) the sink creates the table with Bemi's columns and indexes
/// when it is missing, or upgrades a table created by Bemi's own worker in place: it adds the
/// idempotency columns `commit_lsn` and `ordinal` with a unique index, adds any missing index,
/// and drops Bemi's unique key on `(position, table, schema, database, operation)`, which
/// silently dropped rows (all rows of one COPY share a position). Existing rows are untouched.
///
/// Each batch is one SQL statement, so one round trip and one transaction: the rows go in
/// through `UNNEST` of column arrays with `ON CONFLICT (commit_lsn, ordinal) DO NOTHING`, and
/// the durable position goes into the progress table (`_bemi_progress`, one row per slot) in
/// the same statement. That transaction commits durably (flushed to disk) even where the
/// database or role sets `synchronous_commit = off`, because the slot is confirmed after it.
///
/// Differences from Bemi's storage, all within its columns' types: `primary_key` is the real
/// primary key (composite keys as a JSON array); keys longer than the column's 255 characters
/// are cut to 255 with a warning.
///
/// ```no_run
/// # async fn run() -> bemi_core::Result<()> {
/// let destination: bemi_core::ConnectOptions = "postgres://bemi@audit-db/audit".parse()?;
/// let sink = bemi_core::sink::PostgresSink::connect(&destination)?.schema("audit");
/// # drop(sink); Ok(()) }
/// ```
#[derive(Debug)]
pub struct PostgresSink {
    pool: Pool,
    schema: String,
    table: String,
    progress_table: String,
    slot: String,
    insert_sql: String,
    insert_with_progress_sql: String,
}

impl PostgresSink {
    /// A sink writing through a new connection pool to the database of `options`.
    pub fn connect(options: &ConnectOptions) -> Result<Self> {
        Ok(Self::with_pool(options.pool(2)?))
    }

    /// A sink writing through an existing deadpool-postgres pool.
    pub fn with_pool(pool: Pool) -> Self {
        let mut sink = PostgresSink {
            pool,
            schema: "public".to_owned(),
            table: "changes".to_owned(),
            progress_table: "_bemi_progress".to_owned(),
            slot: String::new(),
            insert_sql: String::new(),
            insert_with_progress_sql: String::new(),
        };
        sink.build_sql();
        sink
    }

    /// Sets the schema of the `changes` and progress tables (default `public`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self.build_sql();
        self
    }

    /// Sets the name of the changes table (default `changes`).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self.build_sql();
        self
    }

    fn qualified(&self, table: &str) -> String {
        quote_qualified(Some(&self.schema), table)
    }

    fn build_sql(&mut self) {
        let insert = format!(
            "INSERT INTO {} (primary_key, before, after, context, database, schema, \"table\", \
             operation, committed_at, queued_at, transaction_id, position, commit_lsn, ordinal) \
             SELECT u.* FROM {DURABLE_COMMIT}, \
             UNNEST($1::text[], $2::jsonb[], $3::jsonb[], $4::jsonb[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], \
             $11::int8[], $12::int8[], $13::int8[], $14::int4[]) AS u \
             ON CONFLICT (commit_lsn, ordinal) DO NOTHING",
            self.qualified(&self.table)
        );
        self.insert_with_progress_sql = format!(
            "WITH inserted AS ({insert} RETURNING 1) \
             INSERT INTO {progress} AS p (slot, lsn, updated_at) \
             SELECT $15, $16, now() FROM {DURABLE_COMMIT} \
             ON CONFLICT (slot) DO UPDATE SET lsn = GREATEST(p.lsn, excluded.lsn), updated_at = now()",
            progress = self.qualified(&self.progress_table)
        );
        self.insert_sql = insert;
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

    /// Creates or upgrades the tables, under an advisory lock so that two trackers starting
    /// together do not race.
    async fn migrate(&self) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('bemi changes table ' || $1))",
            &[&self.qualified(&self.table)],
        )
        .await?;
        let changes = self.qualified(&self.table);
        let progress = self.qualified(&self.progress_table);
        // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists;
        // a role that only owns its schema must be enough.
        let schema_exists: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = $1)",
                &[&self.schema],
            )
            .await?
            .get(0);
        if !schema_exists {
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_identifier(&self.schema)
            ))
            .await?;
        }
        tx.batch_execute(&format!(
            "SET LOCAL client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS {changes} (
               id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
               primary_key varchar(255),
               before jsonb NOT NULL DEFAULT '{{}}',
               after jsonb NOT NULL DEFAULT '{{}}',
               context jsonb NOT NULL DEFAULT '{{}}',
               database varchar(255) NOT NULL,
               schema varchar(255) NOT NULL,
               \"table\" varchar(255) NOT NULL,
               operation text NOT NULL
                 CHECK (operation IN ('CREATE', 'UPDATE', 'DELETE', 'TRUNCATE', 'MESSAGE')),
               committed_at timestamptz(6) NOT NULL,
               queued_at timestamptz(6) NOT NULL,
               created_at timestamptz(6) NOT NULL DEFAULT now(),
               transaction_id bigint NOT NULL,
               position bigint NOT NULL
             );
             ALTER TABLE {changes}
               ADD COLUMN IF NOT EXISTS commit_lsn bigint,
               ADD COLUMN IF NOT EXISTS ordinal integer;
             ALTER TABLE {changes} ALTER COLUMN created_at SET DEFAULT now();
             CREATE TABLE IF NOT EXISTS {progress} (
               slot text PRIMARY KEY,
               lsn bigint NOT NULL,
               updated_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await?;
        self.migrate_indexes(&tx, &changes).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn migrate_indexes(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        changes: &str,
    ) -> Result<()> {
        let rows = tx
            .query(
                "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), i.indisunique, \
                        c.conname, \
                        ARRAY(SELECT a.attname::text FROM pg_attribute a \
                              WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                              ORDER BY a.attname) \
                 FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid \
                   AND c.conrelid = i.indrelid \
                 WHERE i.indrelid = $1::text::regclass",
                &[&changes],
            )
            .await?;
        let mut existing = Vec::new();
        for row in &rows {
            let name: String = row.get(0);
            let definition: String = row.get(1);
            let unique: bool = row.get(2);
            let constraint: Option<String> = row.get(3);
            let mut columns: Vec<String> = row.get(4);
            columns.sort();
            let bemi_key = ["database", "operation", "position", "schema", "table"];
            if unique && columns == bemi_key {
                // Bemi's key drops rows that share a position; ours is (commit_lsn, ordinal).
                let sql = match constraint {
                    Some(constraint) => format!(
                        "ALTER TABLE {changes} DROP CONSTRAINT {}",
                        quote_identifier(&constraint)
                    ),
                    None => format!("DROP INDEX {name}"),
                };
                tx.batch_execute(&sql).await?;
                tracing::info!(index = %name, "dropped Bemi's unique key on position, which loses rows of a COPY");
                continue;
            }
            if let Some(using) = definition.split(" USING ").nth(1) {
                existing.push(using.to_owned());
            }
        }
        // (name suffix, kind, method, columns); an index counts as present when one with the
        // same method starts with the same columns (Bemi's GIN indexes may use jsonb_ops).
        let wanted = [
            (
                "commit_lsn_ordinal_key",
                "UNIQUE INDEX",
                "btree",
                "(commit_lsn, ordinal)",
            ),
            ("committed_at_index", "INDEX", "btree", "(committed_at)"),
            ("table_index", "INDEX", "btree", "(\"table\")"),
            ("primary_key_index", "INDEX", "btree", "(primary_key)"),
            ("operation_index", "INDEX", "btree", "(operation)"),
            ("before_index", "INDEX", "gin", "(before jsonb_path_ops)"),
            ("after_index", "INDEX", "gin", "(after jsonb_path_ops)"),
            ("context_index", "INDEX", "gin", "(context jsonb_path_ops)"),
            (
                "table_primary_key_committed_at_index",
                "INDEX",
                "btree",
                "(\"table\", primary_key, committed_at)",
            ),
        ];
        for (suffix, kind, method, columns) in wanted {
            let key = columns
                .trim_end_matches(')')
                .trim_end_matches(" jsonb_path_ops");
            let present = existing
                .iter()
                .any(|using| using.starts_with(&format!("{method} {key}")));
            if present {
                continue;
            }
            tx.batch_execute(&format!(
                "CREATE {kind} IF NOT EXISTS {} ON {changes} USING {method} {columns}",
                quote_identifier(&format!("{}_{suffix}", self.table))
            ))
            .await?;
        }
        Ok(())
    }
}

/// A one-row subquery that makes the statement's transaction commit durably: a database or
/// role with `synchronous_commit = off` would acknowledge a commit still in memory, and the
/// tracker confirms the slot past what a crash of the destination would then lose. `off`
/// becomes `local` (flushed to this server's disk); stronger settings are kept. Each statement
/// of the sink is its own transaction, so the setting ends with it.
const DURABLE_COMMIT: &str = "(SELECT set_config('synchronous_commit', \
     CASE current_setting('synchronous_commit') WHEN 'off' THEN 'local' \
     ELSE current_setting('synchronous_commit') END, true)) AS durable_commit";

#[async_trait]
impl ChangeSink for PostgresSink {
    async fn open(&mut self, source: &SourceInfo) -> Result<SinkStart> {
        self.slot = source.slot.clone();
        self.migrate().await?;
        let client = self.client().await?;
        let row = client
            .query_one(
                &format!(
                    "SELECT (SELECT lsn FROM {} WHERE slot = $1), \
                            (SELECT system_identifier::text FROM pg_control_system()), \
                            current_database()::text",
                    self.qualified(&self.progress_table)
                ),
                &[&self.slot],
            )
            .await?;
        let durable: Option<i64> = row.get(0);
        let system_id: String = row.get(1);
        let database: String = row.get(2);
        let mut start = SinkStart::at(durable.map(|lsn| crate::Lsn(lsn as u64)));
        if system_id == source.system_id && database == source.database {
            start.ignore_tables = vec![
                (self.schema.clone(), self.table.clone()),
                (self.schema.clone(), self.progress_table.clone()),
            ];
        }
        tracing::info!(
            table = %self.qualified(&self.table),
            durable = ?start.durable,
            same_database = !start.ignore_tables.is_empty(),
            "postgres sink ready"
        );
        Ok(start)
    }

    async fn write(&mut self, batch: Batch) -> Result<()> {
        if batch.changes.is_empty() && batch.durable_through.is_none() {
            return Ok(());
        }
        let columns = Columns::new(&batch.changes)?;
        let client = self.client().await?;
        let slot = self.slot.as_str();
        let lsn = batch.durable_through.map(|l| l.0 as i64);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &columns.primary_key,
            &columns.before,
            &columns.after,
            &columns.context,
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
        ];
        let sql = match &lsn {
            Some(lsn) => {
                params.push(&slot);
                params.push(lsn);
                &self.insert_with_progress_sql
            }
            None => &self.insert_sql,
        };
        let statement = client.prepare_cached(sql).await?;
        client.execute(&statement, &params).await.map_err(|e| {
            let e = Error::from(e);
            match e.kind() {
                ErrorKind::Connect => e,
                _ => Error::new(
                    ErrorKind::Sink,
                    format!(
                        "could not store {} changes: {}",
                        batch.changes.len(),
                        e.message()
                    ),
                )
                .with_code(e.code().unwrap_or_default().to_owned())
                .with_source(e),
            }
        })?;
        Ok(())
    }
}

/// The batch as one array per column, for `UNNEST`.
struct Columns<'a> {
    primary_key: Vec<Option<&'a str>>,
    before: Vec<Jsonb<'a>>,
    after: Vec<Jsonb<'a>>,
    context: Vec<Jsonb<'a>>,
    database: Vec<&'a str>,
    schema: Vec<&'a str>,
    table: Vec<&'a str>,
    operation: Vec<&'static str>,
    committed_at: Vec<chrono::DateTime<chrono::Utc>>,
    queued_at: Vec<chrono::DateTime<chrono::Utc>>,
    transaction_id: Vec<i64>,
    position: Vec<i64>,
    commit_lsn: Vec<i64>,
    ordinal: Vec<i32>,
}

impl<'a> Columns<'a> {
    fn new(changes: &'a [Change]) -> Result<Self> {
        let n = changes.len();
        let mut c = Columns {
            primary_key: Vec::with_capacity(n),
            before: Vec::with_capacity(n),
            after: Vec::with_capacity(n),
            context: Vec::with_capacity(n),
            database: Vec::with_capacity(n),
            schema: Vec::with_capacity(n),
            table: Vec::with_capacity(n),
            operation: Vec::with_capacity(n),
            committed_at: Vec::with_capacity(n),
            queued_at: Vec::with_capacity(n),
            transaction_id: Vec::with_capacity(n),
            position: Vec::with_capacity(n),
            commit_lsn: Vec::with_capacity(n),
            ordinal: Vec::with_capacity(n),
        };
        for change in changes {
            c.primary_key.push(change.primary_key.as_deref().map(|key| {
                match key.char_indices().nth(PRIMARY_KEY_CHARS) {
                    Some((cut, _)) => {
                        tracing::warn!(table = %change.table, "a primary key longer than 255 characters was cut to fit the primary_key column");
                        &key[..cut]
                    }
                    None => key,
                }
            }));
            c.before.push(Jsonb(change.before.as_json()));
            c.after.push(Jsonb(change.after.as_json()));
            c.context.push(Jsonb(change.context.as_str()));
            c.database.push(&change.database);
            c.schema.push(&change.schema);
            c.table.push(&change.table);
            c.operation.push(change.operation.as_str());
            c.committed_at.push(change.committed_at);
            c.queued_at.push(change.queued_at);
            c.transaction_id.push(i64::from(change.transaction_id));
            c.position.push(change.position.0 as i64);
            c.commit_lsn.push(change.commit_lsn.0 as i64);
            c.ordinal.push(i32::try_from(change.ordinal).map_err(|_| {
                Error::new(
                    ErrorKind::Sink,
                    "a transaction has more than 2^31 changes, more than the ordinal column holds",
                )
            })?);
        }
        Ok(c)
    }
}

/// JSON text sent as `jsonb` without re-encoding (binary format: version 1, then the text).
#[derive(Debug)]
struct Jsonb<'a>(&'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}
