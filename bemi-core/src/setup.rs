//! Preparing a source database: checks, the publication and the replication slot.
//!
//! [`SourceSetup::prepare`] checks what logical replication needs and creates what is
//! missing, so that a first run just works and a misconfigured server gets an error that says
//! how to fix it:
//!
//! | problem | error kind | the message says |
//! | --- | --- | --- |
//! | server older than 14 | [`ErrorKind::ServerVersion`] | upgrade |
//! | `wal_level` is not `logical` | [`ErrorKind::WalLevel`] | `ALTER SYSTEM SET wal_level = logical` and restart |
//! | role has neither REPLICATION nor superuser | [`ErrorKind::Privilege`] | `ALTER ROLE … WITH REPLICATION` |
//! | slot streamed by another process | [`ErrorKind::SlotInUse`] | stop it or use another slot |
//! | slot invalidated (`wal_status = lost`) | [`ErrorKind::SlotLost`] | recreate it; changes were lost |
//!
//! It also sets `REPLICA IDENTITY FULL` on the published tables that lack it (so `before`
//! holds the whole old row) and, for an all-tables publication, installs the event trigger
//! that does the same for tables created later: the same steps as `bemi setup`, done only
//! where something is missing, so a least-privilege role can run it once they are done. Each
//! `ALTER TABLE` waits at most a few seconds for its lock at a time (the application's queries
//! are not queued behind it for long) and is retried. Opt out with
//! [`SourceSetup::replica_identity`]; tables left without `REPLICA IDENTITY FULL` are then
//! listed in the report and in a warning.
//!
//! A start that fails after creating the publication drops it again. It never drops a slot: a
//! slot holds changes not yet stored, and dropping it loses them.

use std::sync::Arc;

use tokio_postgres::Client;

use crate::error::{retry_when_locked, Error, ErrorKind, Result};
use crate::rules::Rules;
use crate::sql::TableName;
use crate::sql::{quote_identifier, quote_literal};
use crate::Lsn;

/// The oldest supported server (`pg_logical_emit_message` in pgoutput needs 14).
pub const MIN_SERVER_VERSION_NUM: i32 = 140_000;

/// The role [`SourceSetup::roles_script`] creates for the worker's source connections.
pub const SOURCE_ROLE: &str = "bemi_source";

/// The role [`SourceSetup::roles_script`] creates for writing `changes`.
pub const DESTINATION_ROLE: &str = "bemi_destination";

/// The options of a publication the setup creates: changes of a partition are published as
/// changes of its partitioned (root) table, under the root's name and key, and a row moving
/// between partitions is one UPDATE (PostgreSQL 13+).
const PUBLICATION_OPTIONS: &str = "publish_via_partition_root = true";

/// The command tags that create a table, which the event trigger of the setup watches.
const TABLE_CREATING_TAGS: [&str; 3] = ["CREATE TABLE", "CREATE TABLE AS", "SELECT INTO"];

/// The command tags that can create or change a primary key.
const KEY_CHANGING_TAGS: [&str; 4] = [
    "CREATE TABLE",
    "CREATE TABLE AS",
    "SELECT INTO",
    "ALTER TABLE",
];

/// The table (schema `public` of the source) where the setup's event trigger records each
/// table's primary key columns whenever a command may change them, with the WAL position. The
/// tracker reads a change's key columns as they were at the change's commit from it, so a key
/// changed or a table dropped while the tracker lagged does not alter the stored keys. Never
/// recorded in `changes`.
pub const KEY_HISTORY: (&str, &str) = ("public", "_bemi_key_history");

/// Which tables a publication created by the setup covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Tables {
    /// `FOR ALL TABLES` (needs a superuser), including tables created later.
    #[default]
    All,
    /// `FOR TABLE …`: the tables, read with [`TableName::parse`] from text (`billing.invoices`,
    /// `"my.table"`); a name without a schema is in `public`, whatever the session's
    /// `search_path`.
    Only(Vec<TableName>),
}

/// What to prepare on the source database.
#[derive(Debug, Clone)]
pub struct SourceSetup {
    slot: String,
    publication: String,
    tables: Tables,
    resume_after: Option<Lsn>,
    /// (schema, table) of tables never recorded, left out of the replica identity steps.
    ignored_tables: Vec<(String, String)>,
    /// The tracker's rules: tables they do not track are left alone like the ignored ones.
    rules: Arc<Rules>,
    replica_identity: bool,
}

/// How long one `ALTER TABLE … REPLICA IDENTITY FULL` waits for its lock, and how many times.
const IDENTITY_LOCK_TIMEOUT: &str = "3s";
const IDENTITY_ATTEMPTS: u32 = 5;

/// What [`SourceSetup::prepare`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetupReport {
    /// `server_version_num`, e.g. 150004.
    pub server_version_num: i32,
    /// Whether the publication was created now.
    pub created_publication: bool,
    /// Whether the slot was created now.
    pub created_slot: bool,
    /// The slot's `confirmed_flush_lsn`.
    pub confirmed_flush_lsn: Lsn,
    /// Published tables whose replica identity is not FULL (`schema.table`).
    pub tables_without_full_identity: Vec<String>,
}

impl SourceSetup {
    /// Setup for `slot` and `publication`, publishing all tables.
    pub fn new(slot: impl Into<String>, publication: impl Into<String>) -> Self {
        SourceSetup {
            slot: slot.into(),
            publication: publication.into(),
            tables: Tables::All,
            resume_after: None,
            ignored_tables: Vec::new(),
            rules: Arc::new(Rules::new()),
            replica_identity: true,
        }
    }

    /// Whether [`prepare`](Self::prepare) sets `REPLICA IDENTITY FULL` where it is missing and
    /// installs the event trigger that keeps it for new tables (default `true`). Without, the
    /// `before` of UPDATEs and DELETEs on tables lacking it holds only their key.
    pub fn replica_identity(mut self, set: bool) -> Self {
        self.replica_identity = set;
        self
    }

    /// Tells that changes up to `lsn` were already stored from this slot. A missing slot is
    /// then an error ([`ErrorKind::SlotMissing`]) instead of being created: a new slot starts at
    /// the current end of the WAL, so the changes since `lsn` would be skipped without a word.
    /// Creating the slot explicitly (`bemi setup`, or [`SourceSetup::prepare`] without this)
    /// accepts that gap.
    pub fn resume_after(mut self, lsn: Lsn) -> Self {
        self.resume_after = Some(lsn);
        self
    }

    /// Tables the tracker never records (its own `changes` and progress tables when they are in
    /// the tracked database, and the partitions of `changes`): their replica identity does not
    /// matter, so [`prepare`](Self::prepare) neither sets nor warns about it.
    pub fn ignore_tables<I, S, T>(mut self, tables: I) -> Self
    where
        I: IntoIterator<Item = (S, T)>,
        S: AsRef<str>,
        T: AsRef<str>,
    {
        self.ignored_tables = tables
            .into_iter()
            .map(|(schema, table)| (schema.as_ref().to_owned(), table.as_ref().to_owned()))
            .collect();
        self
    }

    /// The tracker's [`Rules`]: tables they do not track are, like the
    /// [ignored ones](Self::ignore_tables), neither set to `REPLICA IDENTITY FULL` nor warned
    /// about. The publication is not narrowed by them (see [`Tables`]).
    pub fn rules(mut self, rules: Arc<Rules>) -> Self {
        self.rules = rules;
        self
    }

    /// Chooses the tables of a publication created by this setup (an existing publication is
    /// used as it is).
    pub fn tables(mut self, tables: Tables) -> Self {
        self.tables = tables;
        self
    }

    /// Runs the checks and creates what is missing: the publication, `REPLICA IDENTITY FULL`
    /// and its event trigger (see [`replica_identity`](Self::replica_identity)), the slot.
    /// A publication created here is dropped again when a later step fails.
    pub async fn prepare(&self, client: &Client) -> Result<SetupReport> {
        let server_version_num = check_server(client).await?;
        self.check_slot(client).await?;
        let created_publication = self.ensure_publication(client).await?;
        let rest = async {
            if self.replica_identity {
                self.ensure_full_identity(client).await?;
                if self.tables == Tables::All {
                    self.ensure_event_trigger(client).await?;
                }
            }
            self.ensure_slot(client).await
        };
        let (created_slot, confirmed_flush_lsn) = match rest.await {
            Ok(slot) => slot,
            Err(e) => {
                if created_publication {
                    self.drop_publication(client).await;
                }
                return Err(e);
            }
        };
        let tables_without_full_identity = self.tables_lacking_full_identity(client).await?;
        if !tables_without_full_identity.is_empty() {
            tracing::warn!(
                tables = ?tables_without_full_identity,
                "these tables lack REPLICA IDENTITY FULL, so their `before` holds only key columns \
                 and unchanged TOAST values are left out; run ALTER TABLE … REPLICA IDENTITY FULL"
            );
        }
        Ok(SetupReport {
            server_version_num,
            created_publication,
            created_slot,
            confirmed_flush_lsn,
            tables_without_full_identity,
        })
    }

    /// Checks an existing slot (plugin, database, not lost, not in use) before anything is
    /// created, so a start that cannot succeed leaves nothing behind.
    pub async fn check_slot(&self, client: &Client) -> Result<()> {
        if self.slot_row(client).await?.is_some() {
            self.ensure_slot(client).await?;
        }
        Ok(())
    }

    async fn drop_publication(&self, client: &Client) {
        let sql = format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_identifier(&self.publication)
        );
        match client.batch_execute(&sql).await {
            Ok(()) => {
                tracing::info!(publication = %self.publication, "dropped the publication this failed start created")
            }
            Err(error) => {
                tracing::warn!(%error, publication = %self.publication, "could not drop the publication this failed start created")
            }
        }
    }

    /// Published tables (other than the ignored ones) whose replica identity is not FULL.
    async fn tables_lacking_full_identity(&self, client: &Client) -> Result<Vec<String>> {
        let mut tables = tables_without_full_identity(client, &self.publication).await?;
        tables.retain(|table| !self.is_ignored(table));
        Ok(tables)
    }

    /// Whether `schema.table` is never recorded: the tracker's own tables, the partitions of
    /// its `changes` table, and the tables the rules do not track.
    fn is_ignored(&self, table: &str) -> bool {
        if let Some((schema, name)) = table.split_once('.') {
            if !self.rules.tracks(schema, name) {
                return true;
            }
        }
        let (schema, name) = KEY_HISTORY;
        let ignored = |(s, t): &(String, String)| {
            let rest = table
                .strip_prefix(s.as_str())
                .and_then(|r| r.strip_prefix('.'));
            rest.is_some_and(|rest| {
                rest == t || crate::changes_table::partition_parent(rest) == Some(t.as_str())
            })
        };
        self.ignored_tables.iter().any(ignored) || table == format!("{schema}.{name}")
    }

    /// Sets `REPLICA IDENTITY FULL` on the published tables lacking it, one table at a time,
    /// each waiting at most [`IDENTITY_LOCK_TIMEOUT`] for its lock and retried.
    async fn ensure_full_identity(&self, client: &Client) -> Result<()> {
        let rows = client
            .query(
                &format!(
                    "SELECT DISTINCT pg_catalog.format('%I.%I', n.nspname, c.relname), \
                            pg_catalog.format('%s.%s', n.nspname, c.relname) \
                     FROM {PUBLISHED_TABLES} WHERE t.pubname = $1 AND c.relreplident <> 'f'"
                ),
                &[&self.publication],
            )
            .await?;
        for row in rows {
            let (quoted, name): (String, String) = (row.get(0), row.get(1));
            if self.is_ignored(&name) {
                continue;
            }
            let sql = format!(
                "SET lock_timeout = '{IDENTITY_LOCK_TIMEOUT}'; \
                 ALTER TABLE {quoted} REPLICA IDENTITY FULL"
            );
            let what = format!("setting REPLICA IDENTITY FULL on {name}");
            let altered = retry_when_locked(IDENTITY_ATTEMPTS, &what, || async {
                client.batch_execute(&sql).await.map_err(Error::from)
            })
            .await;
            client.batch_execute("RESET lock_timeout").await?;
            altered.map_err(|e| self.identity_refused(&name, e))?;
            tracing::info!(table = %name, "set REPLICA IDENTITY FULL");
        }
        Ok(())
    }

    /// Installs the event triggers that keep `REPLICA IDENTITY FULL` for new tables and record
    /// primary keys in [`KEY_HISTORY`], unless the current ones are there.
    async fn ensure_event_trigger(&self, client: &Client) -> Result<()> {
        let current: bool = client
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_event_trigger e \
                   JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid \
                   WHERE e.evtname = '_bemi_set_replica_identity_trigger' \
                     AND e.evtfoid = pg_catalog.to_regprocedure('public._bemi_set_replica_identity()') \
                     AND e.evttags = $1::text[] \
                     AND p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp']) \
                 AND EXISTS (SELECT FROM pg_catalog.pg_event_trigger e \
                   WHERE e.evtname = '_bemi_record_keys_trigger' \
                     AND e.evtfoid = pg_catalog.to_regprocedure('public._bemi_record_keys()') \
                     AND e.evttags = $2::text[])",
                &[&TABLE_CREATING_TAGS.as_slice(), &KEY_CHANGING_TAGS.as_slice()],
            )
            .await?
            .get(0);
        if !current {
            client
                .batch_execute(&event_trigger_sql())
                .await
                .map_err(|e| self.identity_refused("the event trigger", e.into()))?;
            tracing::info!(
                "installed the event trigger that keeps REPLICA IDENTITY FULL for new tables"
            );
        }
        Ok(())
    }

    fn identity_refused(&self, what: &str, e: Error) -> Error {
        if e.kind() != ErrorKind::Privilege {
            return e;
        }
        Error::new(
            ErrorKind::Privilege,
            format!(
                "not allowed to set up REPLICA IDENTITY FULL ({what}: {}); run `bemi setup` once \
                 as a superuser (or the tables' owner), or opt out with \
                 TrackerBuilder::replica_identity(false) / `bemi run --no-replica-identity`, \
                 leaving `before` of updates and deletes with only the key",
                e.message()
            ),
        )
        .with_source(e)
    }

    /// The full, idempotent setup of Bemi's docs as one SQL script: the publication,
    /// `REPLICA IDENTITY FULL` on the tracked tables, the event trigger that keeps it for new
    /// tables (`_bemi_set_replica_identity`, all-tables publications only), and the slot.
    /// Running it again changes nothing. `bemi setup --print-sql` prints it for DBAs;
    /// [`apply`](Self::apply) runs it.
    ///
    /// The script runs as a superuser, so it trusts no schema a less privileged role can write
    /// to: it pins `search_path` to `pg_catalog, pg_temp` and schema-qualifies every name, and
    /// so does the event trigger's function, which runs as whoever creates a table. Otherwise a
    /// role with CREATE on `public` could define, say, `public.format(text, regclass)` and have
    /// the next superuser's `CREATE TABLE` run it.
    pub fn script(&self) -> String {
        self.statements().concat()
    }

    /// The parts of [`script`](Self::script), each run in its own transaction (a slot cannot
    /// be created in a transaction that has written).
    fn statements(&self) -> Vec<String> {
        let publication = quote_identifier(&self.publication);
        let (target, table_filter) = match &self.tables {
            Tables::All => ("ALL TABLES".to_owned(), String::new()),
            Tables::Only(names) => {
                let names: Vec<String> = names.iter().map(qualified_name).collect();
                let literals: Vec<String> = names.iter().map(|n| quote_literal(n)).collect();
                // The tables and their partitions.
                (
                    format!("TABLE {}", names.join(", ")),
                    format!(
                        "\n             AND c.oid IN (SELECT COALESCE(tree.relid, l.oid) \
                         FROM pg_catalog.unnest(ARRAY[{}]::pg_catalog.regclass[]) AS l(oid) \
                         LEFT JOIN LATERAL pg_catalog.pg_partition_tree(l.oid) tree ON true)",
                        literals.join(", ")
                    ),
                )
            }
        };
        let pub_literal = quote_literal(&self.publication);
        let mut statements = vec![
            format!(
                "-- Bemi source setup (idempotent). Needs wal_level = logical and a superuser.
-- Names are schema-qualified and the search path holds no schema other roles can write to
-- (so operators resolve in pg_catalog too).
SET search_path = pg_catalog, pg_temp;
-- ALTER TABLE waits at most this long for a busy table (the application's queries would queue
-- behind it); run the script again if it times out.
SET lock_timeout = '10s';

-- 1. The publication of the tracked tables; changes of a partition are published as changes
--    of its partitioned (root) table.
DO $bemi$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {pub_literal}) THEN
    CREATE PUBLICATION {publication} FOR {target} WITH ({PUBLICATION_OPTIONS});
  END IF;
END $bemi$;
"
            ),
            format!(
                "
-- 2. REPLICA IDENTITY FULL, so that `before` holds the whole old row.
DO $bemi$ DECLARE t record; BEGIN
  FOR t IN SELECT n.nspname, c.relname
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p') AND c.relreplident <> 'f'
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg_toast%'{table_filter}
  LOOP
    EXECUTE pg_catalog.format('ALTER TABLE %I.%I REPLICA IDENTITY FULL', t.nspname, t.relname);
  END LOOP;
END $bemi$;
"
            ),
        ];
        if self.tables == Tables::All {
            statements.push(event_trigger_sql());
        }
        statements.push(format!(
            "
-- 5. The replication slot (never dropped by the tracker).
SELECT pg_catalog.pg_create_logical_replication_slot({slot}, 'pgoutput')
WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = {slot});
",
            slot = quote_literal(&self.slot)
        ));
        statements
    }

    /// SQL creating two least-privilege roles for running the tracker with, and the
    /// `pg_hba.conf` lines for the first, as comments: `bemi setup --print-sql` prints it after
    /// [`script`](Self::script); the setup never runs it.
    ///
    /// - [`SOURCE_ROLE`] connects to the tracked `database`: LOGIN, REPLICATION, SELECT on the
    ///   tracked tables, nothing else. Its `pg_hba.conf` lines let it make logical replication
    ///   connections to `database` only and refuse it physical replication (`pg_basebackup`,
    ///   a standby), which would copy the whole cluster.
    /// - [`DESTINATION_ROLE`] writes `changes`: LOGIN and the ownership of
    ///   `destination_schema`, where it creates its tables. `public` cannot be given away, so
    ///   for `public` the SQL uses a schema `bemi` and says to point the tracker at it.
    ///
    /// The script holds no password: a role without one cannot log in with password
    /// authentication until it is set (psql's `\password` sends it hashed). Idempotent.
    pub fn roles_script(&self, database: &str, destination_schema: &str) -> String {
        let schema_note = if destination_schema == "public" {
            "\n-- `public` cannot belong to this role: run bemi with --destination-schema bemi\n\
             -- (BEMI_DESTINATION_SCHEMA=bemi) to keep `changes` in a schema of its own."
        } else {
            ""
        };
        let schema = quote_identifier(if destination_schema == "public" {
            "bemi"
        } else {
            destination_schema
        });
        let grant = match &self.tables {
            Tables::All => format!(
                "DO $bemi$ DECLARE t record; BEGIN
  FOR t IN SELECT n.nspname, c.relname
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema', {schema_literal})
             AND n.nspname NOT LIKE 'pg\\_%'
  LOOP
    EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %I.%I TO {SOURCE_ROLE}', t.nspname, t.relname);
  END LOOP;
END $bemi$;",
                schema_literal = quote_literal(destination_schema)
            ),
            Tables::Only(names) => {
                let names: Vec<String> = names.iter().map(qualified_name).collect();
                format!(
                    "GRANT SELECT ON TABLE {} TO {SOURCE_ROLE};",
                    names.join(", ")
                )
            }
        };
        let database = database.replace('"', "\"\"");
        format!(
            "
-- Optional: least-privilege roles for bemi (idempotent). Set their passwords yourself, e.g.
-- with psql's \\password {SOURCE_ROLE}; this script holds none.
SET search_path = pg_catalog, pg_temp;

-- {SOURCE_ROLE}: the worker's role in the tracked database (DB_USER or DATABASE_URL):
-- LOGIN, REPLICATION and SELECT on the tracked tables.
DO $bemi$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{SOURCE_ROLE}') THEN
    CREATE ROLE {SOURCE_ROLE} WITH LOGIN REPLICATION;
  END IF;
END $bemi$;
{grant}
-- In pg_hba.conf, before any line that would match first, then SELECT pg_reload_conf():
-- logical replication to this database only, no physical replication (pg_basebackup).
--   local  replication  {SOURCE_ROLE}  reject
--   host   replication  {SOURCE_ROLE}  all  reject
--   host   \"{database}\"  {SOURCE_ROLE}  all  scram-sha-256

-- {DESTINATION_ROLE}: writes `changes` (DESTINATION_DB_USER or DESTINATION_DATABASE_URL);
-- owns the schema of `changes` and nothing else. Run this part in the destination database.{schema_note}
DO $bemi$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{DESTINATION_ROLE}') THEN
    CREATE ROLE {DESTINATION_ROLE} WITH LOGIN;
  END IF;
END $bemi$;
CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {DESTINATION_ROLE};
ALTER SCHEMA {schema} OWNER TO {DESTINATION_ROLE};
"
        )
    }

    /// Checks the server, runs [`script`](Self::script) and reports the result. The session's
    /// `search_path` and `client_min_messages` are as before when it returns.
    pub async fn apply(&self, client: &Client) -> Result<SetupReport> {
        let saved = client
            .query_one(
                "SELECT pg_catalog.current_setting('search_path'), \
                        pg_catalog.current_setting('client_min_messages')",
                &[],
            )
            .await?;
        let result = self.apply_script(client).await;
        client
            .execute(
                "SELECT pg_catalog.set_config('search_path', $1, false), \
                        pg_catalog.set_config('client_min_messages', $2, false)",
                &[&saved.get::<_, String>(0), &saved.get::<_, String>(1)],
            )
            .await?;
        result
    }

    async fn apply_script(&self, client: &Client) -> Result<SetupReport> {
        client
            .batch_execute(
                "SET search_path = pg_catalog, pg_temp; SET client_min_messages = warning",
            )
            .await?;
        self.clone().replica_identity(true).prepare(client).await
    }

    async fn publication_exists(&self, client: &Client) -> Result<bool> {
        Ok(client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&self.publication],
            )
            .await?
            .is_some())
    }

    /// Warns when an existing publication (used as it is, never altered) publishes partitions
    /// under their own names: without `publish_via_partition_root` their changes are stored
    /// under each partition's name and a row moving between partitions as a DELETE and a CREATE.
    async fn warn_if_partitions_published_apart(&self, client: &Client) -> Result<()> {
        let partitions: Vec<String> = client
            .query(
                "SELECT pg_catalog.format('%s.%s', t.schemaname, t.tablename) \
                 FROM pg_catalog.pg_publication p \
                 JOIN pg_catalog.pg_publication_tables t ON t.pubname = p.pubname \
                 JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname \
                 JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename \
                 WHERE p.pubname = $1 AND NOT p.pubviaroot AND c.relispartition ORDER BY 1",
                &[&self.publication],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if !partitions.is_empty() {
            tracing::warn!(
                publication = %self.publication,
                ?partitions,
                "the publication publishes partitions under their own names, so their changes \
                 are stored per partition and a row moving between partitions as a DELETE and a \
                 CREATE; to store them under the partitioned table, run ALTER PUBLICATION … SET \
                 (publish_via_partition_root = true)"
            );
        }
        Ok(())
    }

    async fn slot_row(&self, client: &Client) -> Result<Option<tokio_postgres::Row>> {
        Ok(client
            .query_opt(
                "SELECT plugin, database, active_pid, wal_status, confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await?)
    }

    async fn ensure_publication(&self, client: &Client) -> Result<bool> {
        if self.publication_exists(client).await? {
            self.warn_if_partitions_published_apart(client).await?;
            return Ok(false);
        }
        let target = match &self.tables {
            Tables::All => "ALL TABLES".to_owned(),
            Tables::Only(names) => {
                let names: Vec<String> = names.iter().map(qualified_name).collect();
                format!("TABLE {}", names.join(", "))
            }
        };
        let sql = format!(
            "CREATE PUBLICATION {} FOR {target} WITH ({PUBLICATION_OPTIONS})",
            quote_identifier(&self.publication)
        );
        client.batch_execute(&sql).await.map_err(|e| {
            let e = Error::from(e);
            if e.code() == Some("42501") {
                Error::new(
                    ErrorKind::Privilege,
                    format!(
                        "not allowed to create publication {:?} ({}); create it as a superuser: {sql}",
                        self.publication,
                        e.message()
                    ),
                )
                .with_source(e)
            } else {
                e
            }
        })?;
        tracing::info!(publication = %self.publication, "created publication");
        Ok(true)
    }

    async fn ensure_slot(&self, client: &Client) -> Result<(bool, Lsn)> {
        let Some(row) = self.slot_row(client).await? else {
            if let Some(stored) = self.resume_after {
                return Err(Error::new(
                    ErrorKind::SlotMissing,
                    format!(
                        "replication slot {slot:?} is missing, but changes up to {stored} were \
                         already stored from it; a new slot would start at the end of the WAL and \
                         the changes since {stored} would never be recorded. If the slot was \
                         dropped or lost (a failover or an upgrade that did not carry it over), \
                         those changes are gone: start once with the gap accepted (`bemi run \
                         --accept-gap`, TrackerBuilder::accept_gap), which creates the slot and \
                         records the gap in the trail; otherwise point the tracker at the right \
                         server",
                        slot = self.slot,
                    ),
                ));
            }
            let row = client
                .query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&self.slot],
                )
                .await?;
            tracing::info!(slot = %self.slot, "created replication slot");
            return Ok((true, parse_lsn(row.get(0))?));
        };
        let plugin: Option<String> = row.get(0);
        let database: Option<String> = row.get(1);
        let active_pid: Option<i32> = row.get(2);
        let wal_status: Option<String> = row.get(3);
        let confirmed: Option<String> = row.get(4);
        if plugin.as_deref() != Some("pgoutput") {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "replication slot {:?} uses the output plugin {:?}, not pgoutput; choose \
                     another slot name, or drop it if nothing else needs it",
                    self.slot,
                    plugin.unwrap_or_default()
                ),
            ));
        }
        let current_db: String = client
            .query_one("SELECT current_database()", &[])
            .await?
            .get(0);
        if database.as_deref() != Some(current_db.as_str()) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "replication slot {:?} belongs to database {:?}, not {current_db:?}; choose \
                     another slot name",
                    self.slot,
                    database.unwrap_or_default()
                ),
            ));
        }
        if wal_status.as_deref() == Some("lost") {
            return Err(slot_lost(&self.slot));
        }
        if let Some(pid) = active_pid {
            return Err(slot_in_use(&self.slot, pid));
        }
        Ok((
            false,
            confirmed
                .as_deref()
                .map(parse_lsn)
                .transpose()?
                .unwrap_or_default(),
        ))
    }
}

/// Step 3 of the setup script: the event trigger that keeps `REPLICA IDENTITY FULL` for
/// tables created later, by any command that creates one (partitions included). Its function
/// runs as the role creating the table, with a fixed search path.
fn event_trigger_sql() -> String {
    format!(
        "
-- 3. Record primary keys as they change, so that changes decoded later keep the key of their
--    time (a table dropped or re-keyed meanwhile). Runs as the setup's role (security
--    definer, fixed search path): table owners need no rights on the history.
-- The setup's own objects must be its own: a role that could create objects in `public` might
-- otherwise have made one of them first and own it (and so its body or its triggers).
DO $bemi$ DECLARE foreign_object text; BEGIN
  SELECT pg_catalog.string_agg(o.name, ', ') INTO foreign_object
  FROM (SELECT 'table public._bemi_key_history' AS name, c.relowner AS owner
          FROM pg_catalog.pg_class c
         WHERE c.oid = pg_catalog.to_regclass('public._bemi_key_history')
        UNION ALL
        SELECT 'function public.' || p.proname || '()', p.proowner
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'public'::pg_catalog.regnamespace
           AND p.proname IN ('_bemi_record_keys', '_bemi_set_replica_identity')) o
  WHERE o.owner <> (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER);
  IF foreign_object IS NOT NULL THEN
    RAISE EXCEPTION 'bemi setup: % already exist(s) and belong(s) to another role; drop them, or run the setup as their owner', foreign_object;
  END IF;
END $bemi$;
CREATE TABLE IF NOT EXISTS public._bemi_key_history (
  relid pg_catalog.oid NOT NULL,
  lsn pg_catalog.pg_lsn NOT NULL,
  table_schema text NOT NULL,
  table_name text NOT NULL,
  key_columns text[] NOT NULL,
  recorded_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX IF NOT EXISTS _bemi_key_history_relid_lsn ON public._bemi_key_history (relid, lsn);
ALTER TABLE public._bemi_key_history REPLICA IDENTITY FULL;
REVOKE ALL ON public._bemi_key_history FROM PUBLIC;
CREATE OR REPLACE FUNCTION public._bemi_record_keys() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $bemi$
DECLARE t record; cols text[];
BEGIN
  FOR t IN SELECT DISTINCT c.oid, n.nspname, c.relname
           FROM pg_catalog.pg_event_trigger_ddl_commands() d
           JOIN pg_catalog.pg_class c ON c.oid = d.objid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE d.object_type = 'table' AND c.relkind IN ('r', 'p')
  LOOP
    cols := ({key_of_t});
    IF cols IS DISTINCT FROM (SELECT h.key_columns FROM public._bemi_key_history h
                              WHERE h.relid = t.oid ORDER BY h.lsn DESC LIMIT 1) THEN
      INSERT INTO public._bemi_key_history (relid, lsn, table_schema, table_name, key_columns)
      VALUES (t.oid, pg_catalog.pg_current_wal_insert_lsn(), t.nspname, t.relname, cols);
    END IF;
  END LOOP;
END $bemi$;
DO $bemi$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger
                 WHERE evtname = '_bemi_record_keys_trigger'
                   AND evtfoid = 'public._bemi_record_keys()'::pg_catalog.regprocedure
                   AND evttags = ARRAY[{key_tags}]::pg_catalog.text[]) THEN
    DROP EVENT TRIGGER IF EXISTS _bemi_record_keys_trigger;
    CREATE EVENT TRIGGER _bemi_record_keys_trigger ON ddl_command_end
      WHEN TAG IN ({key_tags}) EXECUTE FUNCTION public._bemi_record_keys();
  END IF;
END $bemi$;
-- The keys of the tables that exist now.
INSERT INTO public._bemi_key_history (relid, lsn, table_schema, table_name, key_columns)
SELECT c.oid, pg_catalog.pg_current_wal_insert_lsn(), n.nspname, c.relname,
       ({key_of_c})
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT FROM public._bemi_key_history h WHERE h.relid = c.oid);

-- 4. Keep REPLICA IDENTITY FULL for tables created later, by any command that creates one
--    (partitions included). The function runs as the role creating the table, with the same
--    fixed search path.
CREATE OR REPLACE FUNCTION public._bemi_set_replica_identity() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $bemi$
DECLARE t record;
BEGIN
  FOR t IN SELECT n.nspname, c.relname
           FROM pg_catalog.pg_event_trigger_ddl_commands() d
           JOIN pg_catalog.pg_class c ON c.oid = d.objid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE d.object_type = 'table'
             AND c.relreplident <> 'f'
  LOOP
    EXECUTE pg_catalog.format('ALTER TABLE %I.%I REPLICA IDENTITY FULL', t.nspname, t.relname);
  END LOOP;
END $bemi$;
DO $bemi$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger
                 WHERE evtname = '_bemi_set_replica_identity_trigger'
                   AND evtfoid = 'public._bemi_set_replica_identity()'::pg_catalog.regprocedure
                   AND evttags = ARRAY[{tags}]::pg_catalog.text[]) THEN
    DROP EVENT TRIGGER IF EXISTS _bemi_set_replica_identity_trigger;
    CREATE EVENT TRIGGER _bemi_set_replica_identity_trigger ON ddl_command_end
      WHEN TAG IN ({tags}) EXECUTE FUNCTION public._bemi_set_replica_identity();
  END IF;
END $bemi$;
",
        tags = literals(&TABLE_CREATING_TAGS),
        key_tags = literals(&KEY_CHANGING_TAGS),
        key_of_t = key_columns_sql("t.oid"),
        key_of_c = key_columns_sql("c.oid"),
    )
}

/// A query of the primary key's column names of the table whose OID is the SQL expression
/// `relid`, in key order, as a `text[]` (empty without a key). The one definition the key
/// history and the tracker's catalog fallback share.
pub(crate) fn key_columns_sql(relid: &str) -> String {
    format!(
        "SELECT COALESCE(pg_catalog.array_agg(a.attname::text ORDER BY k.ord), '{{}}') \
         FROM pg_catalog.pg_index i \
         CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         WHERE i.indrelid = {relid} AND i.indisprimary"
    )
}

fn literals(words: &[&str]) -> String {
    words
        .iter()
        .map(|word| quote_literal(word))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error for a slot whose WAL was removed.
pub(crate) fn slot_lost(slot: &str) -> Error {
    Error::new(
        ErrorKind::SlotLost,
        format!(
            "replication slot {slot:?} was invalidated (wal_status = lost): the server removed WAL \
             it still needed, so changes made while the tracker was behind are lost; drop and \
             recreate the slot (SELECT pg_drop_replication_slot('{slot}')), and raise \
             max_slot_wal_keep_size or keep the tracker running"
        ),
    )
}

fn slot_in_use(slot: &str, pid: i32) -> Error {
    Error::new(
        ErrorKind::SlotInUse,
        format!(
            "replication slot {slot:?} is in use by the process with PID {pid}; stop the other \
             consumer (SELECT pg_terminate_backend({pid})) or use another slot name"
        ),
    )
}

/// Checks the server version, `wal_level` and the role's privileges; returns
/// `server_version_num`.
pub async fn check_server(client: &Client) -> Result<i32> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), \
             rolsuper OR rolreplication, current_user::text \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let version: i32 = row.get(0);
    check_version(version)?;
    let wal_level: String = row.get(1);
    if wal_level != "logical" {
        return Err(Error::new(
            ErrorKind::WalLevel,
            format!(
                "wal_level is {wal_level:?}, but change tracking needs \"logical\"; run ALTER \
                 SYSTEM SET wal_level = logical and restart PostgreSQL (managed services: set the \
                 logical replication parameter, e.g. rds.logical_replication = 1 on AWS, \
                 cloudsql.logical_decoding = on on Google Cloud)"
            ),
        ));
    }
    let can_replicate: bool = row.get(2);
    if !can_replicate {
        let user: String = row.get(3);
        return Err(Error::new(
            ErrorKind::Privilege,
            format!(
                "role {user:?} may not use replication; run ALTER ROLE {} WITH REPLICATION as a \
                 superuser, or connect as a role that has it",
                quote_identifier(&user)
            ),
        ));
    }
    Ok(version)
}

/// Checks `server_version_num` against [`MIN_SERVER_VERSION_NUM`].
pub fn check_version(server_version_num: i32) -> Result<()> {
    if server_version_num < MIN_SERVER_VERSION_NUM {
        return Err(Error::new(
            ErrorKind::ServerVersion,
            format!(
                "PostgreSQL {}.{} is too old: context messages (pg_logical_emit_message through \
                 pgoutput) need PostgreSQL 14 or newer; upgrade the server",
                server_version_num / 10_000,
                server_version_num % 10_000
            ),
        ));
    }
    Ok(())
}

/// The tables whose rows a publication sends (`c`, in schema `n`), for `WHERE t.pubname = …`:
/// those `pg_publication_tables` lists and their partitions (`pg_partition_tree` has no row for
/// a table that is not partitioned), which it leaves out when the
/// publication publishes them via their root. Each partition's own replica identity decides
/// what old row its UPDATEs and DELETEs send.
const PUBLISHED_TABLES: &str = "pg_catalog.pg_publication_tables t \
    JOIN pg_catalog.pg_namespace tn ON tn.nspname = t.schemaname \
    JOIN pg_catalog.pg_class tc ON tc.relnamespace = tn.oid AND tc.relname = t.tablename \
    LEFT JOIN LATERAL pg_catalog.pg_partition_tree(tc.oid) tree ON true \
    JOIN pg_catalog.pg_class c ON c.oid = COALESCE(tree.relid::pg_catalog.oid, tc.oid) \
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace";

/// Published tables (partitions included) whose replica identity is not FULL, as
/// `schema.table`.
pub async fn tables_without_full_identity(
    client: &Client,
    publication: &str,
) -> Result<Vec<String>> {
    let rows = client
        .query(
            &format!(
                "SELECT DISTINCT pg_catalog.format('%s.%s', n.nspname, c.relname) \
                 FROM {PUBLISHED_TABLES} WHERE t.pubname = $1 AND c.relreplident <> 'f' ORDER BY 1"
            ),
            &[&publication],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The quoted, schema-qualified SQL name of a table (in `public` when it has no schema).
fn qualified_name(table: &TableName) -> String {
    let schema = table.schema.as_deref().unwrap_or("public");
    format!(
        "{}.{}",
        quote_identifier(schema),
        quote_identifier(&table.name)
    )
}

fn parse_lsn(text: &str) -> Result<Lsn> {
    text.parse().map_err(|e| {
        Error::protocol(format!("the server returned an invalid LSN {text:?}")).with_source(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_servers_are_refused_with_the_fix() {
        let e = check_version(130_011).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ServerVersion);
        assert!(e.to_string().contains("PostgreSQL 13.11 is too old"), "{e}");
        assert!(e.to_string().contains("upgrade"), "{e}");
        assert!(check_version(140_000).is_ok());
    }

    #[test]
    fn qualified_names_are_quoted() {
        let quoted = |text: &str| qualified_name(&TableName::parse(text).unwrap());
        assert_eq!(quoted("billing.invoices"), "\"billing\".\"invoices\"");
        assert_eq!(quoted("Todo"), "\"public\".\"Todo\"");
        assert_eq!(quoted("\"my.table\""), "\"public\".\"my.table\"");
    }
}
