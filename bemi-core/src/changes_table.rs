//! The contract of the `changes` table that the sink writes and every reader reads: where it
//! is ([`ChangesTable`]), its columns and indexes and how a table made by Bemi's worker or an
//! earlier version is brought up to date, the text form of primary keys ([`format_key`]), and
//! positions stored as `int8` ([`Lsn::to_int8`]).

use std::borrow::Cow;

use tokio_postgres::GenericClient;

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

    /// Takes the transaction-level advisory lock under which the table is created or upgraded,
    /// so that two trackers starting together do not race.
    pub(crate) async fn lock_for_upgrade(&self, tx: &impl GenericClient) -> Result<()> {
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('bemi changes table ' || $1))",
            &[&self.qualified()],
        )
        .await?;
        Ok(())
    }

    /// Creates the schema and the table with Bemi's columns and indexes when they are missing,
    /// or upgrades a table created by Bemi's own worker (or by an older version of this crate)
    /// in place: adds the idempotency columns `system_id`, `commit_lsn` and `ordinal` with a
    /// unique index, adds any missing index, and drops Bemi's unique key on `(position, table,
    /// schema, database, operation)`, which silently dropped rows (all rows of one COPY share a
    /// position). Existing rows are untouched. Runs in the caller's transaction, after
    /// [`lock_for_upgrade`](Self::lock_for_upgrade).
    pub(crate) async fn create_or_upgrade(&self, tx: &impl GenericClient) -> Result<()> {
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

    /// The statements that bring the indexes of the table up to date (none when they are).
    async fn index_upgrades(&self, client: &impl GenericClient) -> Result<Vec<String>> {
        let changes = self.qualified();
        let rows = client
            .query(
                "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), i.indisunique, \
                        c.conname, \
                        ARRAY(SELECT a.attname::text FROM pg_attribute a \
                              WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                              ORDER BY a.attname) \
                 FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid \
                   AND c.conrelid = i.indrelid \
                 WHERE i.indrelid = to_regclass($1)",
                &[&changes],
            )
            .await?;
        let mut statements = Vec::new();
        let mut existing = Vec::new();
        for row in &rows {
            let name: String = row.get(0);
            let definition: String = row.get(1);
            let unique: bool = row.get(2);
            let constraint: Option<String> = row.get(3);
            let mut columns: Vec<String> = row.get(4);
            columns.sort();
            let bemi_key = ["database", "operation", "position", "schema", "table"];
            // Bemi's key drops rows that share a position; the key before this version lacked
            // the source cluster. Ours is (system_id, commit_lsn, ordinal).
            if unique && (columns == bemi_key || columns == ["commit_lsn", "ordinal"]) {
                statements.push(match constraint {
                    Some(constraint) => format!(
                        "ALTER TABLE {changes} DROP CONSTRAINT {}",
                        quote_identifier(&constraint)
                    ),
                    None => format!("DROP INDEX {name}"),
                });
                continue;
            }
            if let Some(using) = definition.split(" USING ").nth(1) {
                existing.push(using.to_owned());
            }
        }
        for (suffix, kind, method, columns) in WANTED_INDEXES {
            let key = columns
                .trim_end_matches(')')
                .trim_end_matches(" jsonb_path_ops");
            let present = existing
                .iter()
                .any(|using| using.starts_with(&format!("{method} {key}")));
            if !present {
                statements.push(format!(
                    "CREATE {kind} IF NOT EXISTS {} ON {changes} USING {method} {columns}",
                    quote_identifier(&format!("{}_{suffix}", self.name))
                ));
            }
        }
        Ok(statements)
    }
}

/// The indexes of the changes table: (name suffix, kind, method, columns). An index counts as
/// present when one with the same method starts with the same columns (Bemi's GIN indexes may
/// use jsonb_ops).
const WANTED_INDEXES: [(&str, &str, &str, &str); 9] = [
    (
        "system_id_commit_lsn_ordinal_key",
        "UNIQUE INDEX",
        "btree",
        "(system_id, commit_lsn, ordinal)",
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
            match serde_json::from_str::<String>(&json) {
                Ok(text) => Some(text),
                Err(_) if json == "null" => None,
                Err(_) => Some(json.into_owned()),
            }
        }
        _ => {
            let parts: Option<Vec<Cow<'a, str>>> = values.collect();
            Some(format!("[{}]", parts?.join(",")))
        }
    }
}
