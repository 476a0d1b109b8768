//! The contract of the `changes` table that the sink writes and every reader reads: where it
//! is ([`ChangesTable`]), its columns and indexes and how a table made by Bemi's worker or an
//! earlier version is brought up to date, the text form of primary keys ([`format_key`]),
//! positions stored as `int8` ([`Lsn::to_int8`]), and the ids of new rows ([`RowIds`]).
//!
//! # Layout
//!
//! A table the tracker creates is range-partitioned on `committed_at` ([`Layout`], monthly by
//! default), with Bemi's columns, so Bemi's readers (bemi-django, the Rails helpers, plain SQL)
//! read it unchanged; its [`Partition`]s are created ahead of the commit times the tracker
//! stores, with a default partition for anything else. Its primary key is `(id, committed_at)`
//! and its idempotency key `(commit_lsn, ordinal, system_id, committed_at)`: a partitioned
//! table's unique keys must hold the partition key, and a transaction's commit time is the same
//! at every replay. The key leads with `(commit_lsn, ordinal)`, the trail's order, so reading
//! the newest changes page by page walks it backwards instead of sorting the table. [`Retention`] drops whole partitions past a window, and
//! [`PartitionMigration`] (`bemi migrate --partition`) turns an unpartitioned table, made by
//! Bemi's worker or an earlier version, into a partitioned one.

use std::borrow::Cow;

use tokio_postgres::GenericClient;

mod migration;
mod partition;
mod pending_list;
mod retention;
mod row_id;
mod upkeep;

pub use migration::{MigrationPlan, MigrationStep, PartitionMigration};
use partition::missing_ranges;
pub use partition::{partition_parent, Layout, Partition, PartitionInterval};
pub(crate) use pending_list::PendingListCleaner;
pub use retention::Retention;
pub use row_id::RowIds;
pub(crate) use row_id::{IdClock, RowId};
pub(crate) use upkeep::Upkeep;

use crate::error::Result;
use crate::sql::{quote_identifier, quote_qualified};
use crate::Lsn;

/// Where the `changes` table is: `public.changes` unless configured otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChangesTable {
    schema: String,
    name: String,
}

impl ChangesTable {
    /// The changes table `name` in `schema`.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        ChangesTable {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The quoted, schema-qualified name for SQL (`"public"."changes"`).
    pub fn qualified(&self) -> String {
        quote_qualified(Some(&self.schema), &self.name)
    }
}

impl Default for ChangesTable {
    fn default() -> Self {
        ChangesTable::new("public", "changes")
    }
}

impl ChangesTable {
    /// Whether the table has the idempotency columns and every index this version needs. Reads
    /// the catalog only, so a table that is up to date is never locked.
    pub(crate) async fn is_current(&self, client: &impl GenericClient) -> Result<bool> {
        let row = client
            .query_one(
                "SELECT count(*) = 3 FROM pg_catalog.pg_attribute \
                 WHERE attrelid = to_regclass($1) AND NOT attisdropped \
                   AND attname IN ('system_id', 'commit_lsn', 'ordinal')",
                &[&self.qualified()],
            )
            .await?;
        Ok(row.get::<_, bool>(0) && self.index_upgrades(client).await?.is_empty())
    }

    /// Takes the transaction-level advisory lock under which the table is created, upgraded or
    /// given partitions, so that two trackers (or a tracker and `bemi migrate`) do not race.
    pub(crate) async fn lock_for_upgrade(&self, tx: &impl GenericClient) -> Result<()> {
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('bemi changes table ' || $1))",
            &[&self.qualified()],
        )
        .await?;
        Ok(())
    }

    /// Creates the schema and the table with Bemi's columns and indexes when they are missing,
    /// laid out as `layout` says, or upgrades a table created by Bemi's own worker (or by an
    /// older version of this crate) in place: adds the idempotency columns `system_id`,
    /// `commit_lsn` and `ordinal` with a unique index, adds any missing index, and drops Bemi's
    /// unique key on `(position, table, schema, database, operation)`, which silently dropped
    /// rows (all rows of one COPY share a position). Existing rows are untouched, and an
    /// existing table keeps its layout. Runs in the caller's transaction, after
    /// [`lock_for_upgrade`](Self::lock_for_upgrade).
    pub(crate) async fn create_or_upgrade(
        &self,
        tx: &impl GenericClient,
        layout: Layout,
    ) -> Result<()> {
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
        let changes = self.qualified();
        // A partitioned table's unique keys must hold its partition key.
        let (id, primary_key, partition_by) = match layout {
            Layout::Unpartitioned => ("PRIMARY KEY", "", ""),
            Layout::Partitioned(_) => {
                self.check_partition_names()?;
                (
                    "NOT NULL",
                    ",\n               PRIMARY KEY (id, committed_at)",
                    " PARTITION BY RANGE (committed_at)",
                )
            }
        };
        tx.batch_execute(&format!(
            "SET LOCAL client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS {changes} (
               id uuid {id} DEFAULT gen_random_uuid(),
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
               position bigint NOT NULL{primary_key}
             ){partition_by};
             ALTER TABLE {changes}
               ADD COLUMN IF NOT EXISTS system_id bigint,
               ADD COLUMN IF NOT EXISTS commit_lsn bigint,
               ADD COLUMN IF NOT EXISTS ordinal integer;
             ALTER TABLE {changes} ALTER COLUMN created_at SET DEFAULT now();"
        ))
        .await?;
        for statement in self.index_upgrades(tx).await? {
            tracing::info!(%statement, "upgrading the changes table");
            tx.batch_execute(&statement).await?;
        }
        Ok(())
    }

    /// The indexes of the table, as the catalog describes them.
    pub(super) async fn indexes(&self, client: &impl GenericClient) -> Result<Vec<ExistingIndex>> {
        let rows = client
            .query(
                "SELECT ic.relname::text, pg_get_indexdef(i.indexrelid), i.indisunique, \
                        i.indisvalid, c.conname::text, c.contype::text, \
                        ARRAY(SELECT a.attname::text FROM pg_attribute a \
                              WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                              ORDER BY a.attname) \
                 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
                 LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid \
                   AND c.conrelid = i.indrelid \
                 WHERE i.indrelid = to_regclass($1) \
                 ORDER BY 1",
                &[&self.qualified()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let definition: String = row.get(1);
                ExistingIndex {
                    name: row.get(0),
                    using: definition
                        .split_once(" USING ")
                        .map(|(_, using)| using.to_owned())
                        .unwrap_or_default(),
                    unique: row.get(2),
                    valid: row.get(3),
                    constraint: row.get(4),
                    is_primary_key: row.get::<_, Option<String>>(5).as_deref() == Some("p"),
                    columns: row.get(6),
                }
            })
            .collect())
    }

    /// The statements that bring the indexes of the table up to date (none when they are).
    async fn index_upgrades(&self, client: &impl GenericClient) -> Result<Vec<String>> {
        let partitioned = self.is_partitioned(client).await? == Some(true);
        let mut statements = Vec::new();
        let mut existing = Vec::new();
        for index in self.indexes(client).await? {
            if index.is_obsolete_key() {
                statements.push(self.drop_index_sql(&index));
            } else {
                existing.push(index);
            }
        }
        for wanted in wanted_indexes(partitioned) {
            if !existing.iter().any(|index| wanted.served_by(index)) {
                statements.push(wanted.create_sql(self, false));
            }
        }
        Ok(statements)
    }

    /// The statement that drops `index` (or the constraint it backs).
    pub(super) fn drop_index_sql(&self, index: &ExistingIndex) -> String {
        match &index.constraint {
            Some(constraint) => format!(
                "ALTER TABLE {} DROP CONSTRAINT {}",
                self.qualified(),
                quote_identifier(constraint)
            ),
            None => format!("DROP INDEX {}", self.sibling(&index.name)),
        }
    }
}

/// An index of the table, from the catalog.
#[derive(Debug, Clone)]
pub(super) struct ExistingIndex {
    pub(super) name: String,
    /// Its definition after `USING`: `btree (committed_at)`.
    pub(super) using: String,
    pub(super) unique: bool,
    /// False for an index whose `CREATE INDEX CONCURRENTLY` did not finish.
    pub(super) valid: bool,
    /// The constraint it backs, if any.
    pub(super) constraint: Option<String>,
    pub(super) is_primary_key: bool,
    /// Its columns, sorted.
    pub(super) columns: Vec<String>,
}

impl ExistingIndex {
    /// Bemi's unique key, which drops rows that share a position (every row of one COPY), or
    /// the key of versions before the source cluster was part of it.
    pub(super) fn is_obsolete_key(&self) -> bool {
        let bemi_key = ["database", "operation", "position", "schema", "table"];
        self.unique && (self.columns == bemi_key || self.columns == ["commit_lsn", "ordinal"])
    }
}

/// An index the table needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct WantedIndex {
    /// Its name after the table's: `changes_committed_at_index`.
    pub(super) suffix: &'static str,
    pub(super) unique: bool,
    /// Its definition after `USING`, as `pg_get_indexdef` prints it.
    pub(super) using: &'static str,
}

impl WantedIndex {
    /// Whether `index` serves as this one. The idempotency key must have exactly its columns,
    /// in any order (`ON CONFLICT` names them); another index counts when it has the same method and
    /// starts with the same columns, whatever its operator class (Bemi's GIN indexes may use
    /// `jsonb_ops`).
    pub(super) fn served_by(&self, index: &ExistingIndex) -> bool {
        if !index.valid {
            return false;
        }
        if self.unique {
            // The same columns in any order are the same key: tables made before the key led
            // with `commit_lsn` keep theirs.
            return index.unique && index.columns == self.columns();
        }
        let leading = self
            .using
            .trim_end_matches(')')
            .trim_end_matches(" jsonb_path_ops");
        index
            .using
            .strip_prefix(leading)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', ',', ')']))
    }

    /// Its columns, sorted (as [`ExistingIndex::columns`]).
    fn columns(&self) -> Vec<String> {
        let list = self
            .using
            .split_once('(')
            .map_or("", |(_, list)| list.trim_end_matches(')'));
        let mut columns: Vec<String> = list
            .split(", ")
            .map(|c| {
                c.split(' ')
                    .next()
                    .unwrap_or(c)
                    .trim_matches('"')
                    .to_owned()
            })
            .collect();
        columns.sort();
        columns
    }

    /// The index's name for `table`.
    pub(super) fn name(&self, table: &ChangesTable) -> String {
        format!("{}_{}", table.name(), self.suffix)
    }

    /// `CREATE [UNIQUE] INDEX [CONCURRENTLY] IF NOT EXISTS … ON table USING …`.
    pub(super) fn create_sql(&self, table: &ChangesTable, concurrently: bool) -> String {
        format!(
            "CREATE {}INDEX {}IF NOT EXISTS {} ON {} USING {}",
            if self.unique { "UNIQUE " } else { "" },
            if concurrently { "CONCURRENTLY " } else { "" },
            quote_identifier(&self.name(table)),
            table.qualified(),
            self.using,
        )
    }
}

/// The idempotency key of an unpartitioned table.
const KEY: WantedIndex = WantedIndex {
    suffix: "commit_lsn_ordinal_system_id_key",
    unique: true,
    using: "btree (commit_lsn, ordinal, system_id)",
};

/// The idempotency key of a partitioned table: a unique index must hold the partition key, and
/// a transaction's commit time is the same at every replay.
const PARTITIONED_KEY: WantedIndex = WantedIndex {
    suffix: "commit_lsn_ordinal_system_id_committed_at_key",
    unique: true,
    using: "btree (commit_lsn, ordinal, system_id, committed_at)",
};

/// Bemi's indexes, and one on `(table, primary_key, committed_at)` for a record's history.
const INDEXES: [WantedIndex; 8] = [
    index("committed_at_index", "btree (committed_at)"),
    index("table_index", "btree (\"table\")"),
    index("primary_key_index", "btree (primary_key)"),
    index("operation_index", "btree (operation)"),
    index("before_index", "gin (before jsonb_path_ops)"),
    index("after_index", "gin (after jsonb_path_ops)"),
    index("context_index", "gin (context jsonb_path_ops)"),
    index(
        "table_primary_key_committed_at_index",
        "btree (\"table\", primary_key, committed_at)",
    ),
];

/// A non-unique index. The GIN indexes keep PostgreSQL's pending list (`fastupdate`), which
/// takes a batch's entries in bulk; the sink empties it off the write path
/// (`PendingListCleaner`), so no insert stalls
/// cleaning it up.
const fn index(suffix: &'static str, using: &'static str) -> WantedIndex {
    WantedIndex {
        suffix,
        unique: false,
        using,
    }
}

/// The indexes a table of the layout needs, its key first.
pub(super) fn wanted_indexes(partitioned: bool) -> impl Iterator<Item = WantedIndex> {
    let key = if partitioned { PARTITIONED_KEY } else { KEY };
    std::iter::once(key).chain(INDEXES)
}

impl Lsn {
    /// The LSN as stored in the `int8` columns of `changes` (`position`, `commit_lsn`) and of
    /// the progress table: the same 64 bits, read as signed (no LSN reaches 2^63).
    pub fn to_int8(self) -> i64 {
        self.0 as i64
    }

    /// The LSN stored as `int8` by [`to_int8`](Self::to_int8).
    pub fn from_int8(value: i64) -> Self {
        Lsn(value as u64)
    }
}

/// The primary key text from the JSON texts of the key's columns, in key order: the value
/// itself for one column (a string unquoted, anything else as JSON), a JSON array of the values
/// for several (`[1,"a"]`). `None` without columns, when a value is missing, or when a
/// single-column key is null. The one definition of the form stored in `primary_key`, which
/// the queries of the audit trail look keys up by.
pub fn format_key<'a, I>(values: I) -> Option<String>
where
    I: IntoIterator<Item = Option<Cow<'a, str>>>,
    I::IntoIter: ExactSizeIterator,
{
    let mut values = values.into_iter();
    match values.len() {
        0 => None,
        1 => {
            let json = values.next()??;
            if json == "null" {
                return None;
            }
            // Only a JSON string is unquoted; anything else is kept as it is, without the cost
            // of a failed parse (a number key is the common case).
            let text = json
                .trim_start()
                .starts_with('"')
                .then(|| serde_json::from_str::<String>(&json).ok())
                .flatten();
            Some(text.unwrap_or_else(|| json.into_owned()))
        }
        _ => {
            let parts: Option<Vec<Cow<'a, str>>> = values.collect();
            Some(format!("[{}]", parts?.join(",")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique(using: &str, columns: &[&str]) -> ExistingIndex {
        ExistingIndex {
            name: "changes_key".to_owned(),
            using: using.to_owned(),
            unique: true,
            valid: true,
            constraint: None,
            is_primary_key: false,
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    #[test]
    fn a_key_is_a_string_unquoted_anything_else_as_json_several_as_an_array() {
        let key = |values: &[Option<&str>]| {
            format_key(values.iter().map(|v| v.map(std::borrow::Cow::Borrowed)))
        };
        assert_eq!(key(&[Some(r#""a \"b\"""#)]).as_deref(), Some(r#"a "b""#));
        assert_eq!(key(&[Some("42")]).as_deref(), Some("42"));
        assert_eq!(key(&[Some("-1.5e3")]).as_deref(), Some("-1.5e3"));
        assert_eq!(key(&[Some("true")]).as_deref(), Some("true"));
        assert_eq!(key(&[Some(r#"{"x":1}"#)]).as_deref(), Some(r#"{"x":1}"#));
        // Not valid JSON (never made by the decoder): kept as it is.
        assert_eq!(key(&[Some(r#""open"#)]).as_deref(), Some(r#""open"#));
        assert_eq!(key(&[Some("null")]), None);
        assert_eq!(key(&[None]), None);
        assert_eq!(key(&[]), None);
        assert_eq!(
            key(&[Some("1"), Some(r#""a""#)]).as_deref(),
            Some(r#"[1,"a"]"#)
        );
        assert_eq!(key(&[Some("1"), None]), None);
    }

    #[test]
    fn the_idempotency_key_is_its_columns_in_any_order() {
        let earlier = unique(
            "btree (system_id, commit_lsn, ordinal, committed_at)",
            &["commit_lsn", "committed_at", "ordinal", "system_id"],
        );
        assert!(PARTITIONED_KEY.served_by(&earlier));
        assert!(!KEY.served_by(&earlier));
        let plain = unique(
            "btree (system_id, commit_lsn, ordinal)",
            &["commit_lsn", "ordinal", "system_id"],
        );
        assert!(KEY.served_by(&plain));
        let older = unique("btree (commit_lsn, ordinal)", &["commit_lsn", "ordinal"]);
        assert!(!KEY.served_by(&older), "the key before system_id is not it");
    }
}
