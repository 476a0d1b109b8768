//! `bemi migrate --partition`: see [`PartitionMigration`].

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::partition::{timestamp_literal, LEGACY_SUFFIX};
use super::{wanted_indexes, ChangesTable, ExistingIndex, PartitionInterval, WantedIndex};
use crate::error::{retry_when_locked, Error, Result};
use crate::sql::quote_identifier;

/// Turns an unpartitioned `changes` table into the partitioned layout (`bemi migrate
/// --partition`).
///
/// An unpartitioned `changes` table (made by Bemi's worker or by an earlier version) becomes the partitioned layout without a row copied, lost or doubled. The
/// old table itself becomes a partition, for every commit time before a boundary a day or more
/// ahead; new partitions follow it.
///
/// The slow work runs while the tracker keeps writing: the partitioned layout's indexes are
/// built with `CREATE INDEX CONCURRENTLY`, and a `CHECK (committed_at < boundary)` constraint is
/// added `NOT VALID` and then validated, which reads the table without blocking writes. What
/// remains is one short transaction of catalog changes under an `ACCESS EXCLUSIVE` lock on the
/// table: rename it, make `(id, committed_at)` its primary key with the index built before,
/// create the partitioned table with its columns and indexes, and attach the old one, which the
/// constraint spares a scan. A tracker still running waits for that moment, then finds the new
/// layout, reconnects once and goes on from its stored position.
///
/// Every step checks the catalog first, so the migration can be run again after an
/// interruption, or on a table that is partitioned already (it then does nothing).
///
/// ```no_run
/// use bemi_core::changes_table::{ChangesTable, PartitionMigration};
/// # async fn run(client: tokio_postgres::Client) -> bemi_core::Result<()> {
/// let migration = PartitionMigration::new(ChangesTable::default());
/// let plan = migration.plan(&client).await?;
/// println!("{plan}"); // the SQL, with what each step locks and reads
/// for (step, took) in migration.run(&client).await? {
///     println!("{step}: {took:?}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PartitionMigration {
    table: ChangesTable,
    interval: PartitionInterval,
    lock_timeout: Duration,
}

/// How many times a step waits for its lock before the migration gives up.
const ATTEMPTS: u32 = 5;

/// The index that becomes the old table's primary key: a partitioned table's primary key must
/// hold its partition key.
const ID_KEY: WantedIndex = WantedIndex {
    suffix: "id_committed_at_key",
    unique: true,
    using: "btree (id, committed_at)",
};

/// One step of a [`MigrationPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationStep {
    /// What the step does.
    pub title: String,
    /// What it locks, in which mode, and for how long.
    pub locks: String,
    /// Whether inserts into `changes` wait while it runs.
    pub blocks_writes: bool,
    /// Whether its statements run in one transaction (`CREATE INDEX CONCURRENTLY` cannot).
    pub in_transaction: bool,
    /// Its SQL.
    pub statements: Vec<String>,
}

/// What [`PartitionMigration::run`] would do, from the catalog as it is now. Its
/// [`Display`](fmt::Display) is the SQL script, with what each step locks as comments.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationPlan {
    /// The table, quoted and qualified.
    pub table: String,
    /// Whether the table exists.
    pub exists: bool,
    /// Whether it is partitioned already (nothing to do).
    pub partitioned: bool,
    /// The interval of the partitions that follow the old table.
    pub interval: PartitionInterval,
    /// Its rows: the planner's estimate, or counted when the table was never analyzed.
    pub rows: i64,
    /// Its size with its indexes, in bytes.
    pub bytes: i64,
    /// The old table becomes the partition of every commit time before this.
    pub boundary: Option<DateTime<Utc>>,
    /// The steps, in order; none when there is nothing to do.
    pub steps: Vec<MigrationStep>,
    lock_timeout: Duration,
}

impl PartitionMigration {
    /// Migrates `table` into monthly partitions, waiting at most 5 s at a time for a lock.
    pub fn new(table: ChangesTable) -> Self {
        PartitionMigration {
            table,
            interval: PartitionInterval::default(),
            lock_timeout: Duration::from_secs(5),
        }
    }

    /// The interval of the partitions that follow the old table (default monthly).
    pub fn interval(mut self, interval: PartitionInterval) -> Self {
        self.interval = interval;
        self
    }

    /// How long a step waits for its lock before it lets others through and tries again
    /// (default 5 s; five tries).
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Reads the catalog and says what [`run`](Self::run) would do. Changes nothing.
    pub async fn plan(&self, client: &Client) -> Result<MigrationPlan> {
        let table = &self.table;
        let mut plan = MigrationPlan {
            table: table.qualified(),
            exists: false,
            partitioned: false,
            interval: self.interval,
            rows: 0,
            bytes: 0,
            boundary: None,
            steps: Vec::new(),
            lock_timeout: self.lock_timeout,
        };
        match table.is_partitioned(client).await? {
            None => return Ok(plan),
            Some(partitioned) => {
                plan.exists = true;
                plan.partitioned = partitioned;
                if partitioned {
                    return Ok(plan);
                }
            }
        }
        table.check_partition_names()?;
        let legacy = format!("{}{LEGACY_SUFFIX}", table.name());
        let facts = client
            .query_one(
                &format!(
                    "SELECT CASE WHEN c.reltuples < 0 THEN (SELECT count(*) FROM {0}) \
                                 ELSE c.reltuples::int8 END, \
                            pg_catalog.pg_total_relation_size(c.oid), \
                            (SELECT max(committed_at) FROM {0}), now(), \
                            (SELECT count(*) = 3 FROM pg_catalog.pg_attribute \
                             WHERE attrelid = c.oid AND NOT attisdropped \
                               AND attname IN ('system_id', 'commit_lsn', 'ordinal')), \
                            to_regclass($2) IS NOT NULL \
                     FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1)",
                    table.qualified()
                ),
                &[&table.qualified(), &table.sibling(&legacy)],
            )
            .await?;
        plan.rows = facts.get::<_, i64>(0).max(0);
        plan.bytes = facts.get(1);
        let newest: Option<DateTime<Utc>> = facts.get(2);
        let now: DateTime<Utc> = facts.get(3);
        let has_columns: bool = facts.get(4);
        if facts.get::<_, bool>(5) {
            return Err(Error::config(format!(
                "cannot partition {}: a table named {} exists already, and the old table takes \
                 that name as a partition; rename or drop it first",
                table.qualified(),
                table.sibling(&legacy)
            )));
        }
        let bound_name = format!("{}_partition_bound", table.name());
        let bound = client
            .query_opt(
                "SELECT convalidated, \
                        (regexp_match(pg_catalog.pg_get_constraintdef(oid), '''([^'']*)'''))[1]::timestamptz \
                 FROM pg_catalog.pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2",
                &[&table.qualified(), &bound_name],
            )
            .await?;
        // A day ahead at least, so a tracker that keeps writing while the constraint is
        // validated never meets it.
        let latest = newest.map_or(now, |newest| newest.max(now));
        let boundary = match &bound {
            Some(row) => row.get::<_, Option<DateTime<Utc>>>(1).ok_or_else(|| {
                Error::config(format!(
                    "the constraint {bound_name} of {} is not the one bemi adds; drop it",
                    table.qualified()
                ))
            })?,
            None => self
                .interval
                .next_period(latest + chrono::Duration::days(1)),
        };
        plan.boundary = Some(boundary);
        let size = describe_size(plan.rows, plan.bytes);
        let quoted = table.qualified();
        let indexes: Vec<ExistingIndex> = table.indexes(client).await?;

        // 1. The idempotency columns, without Bemi's unique key.
        let obsolete: Vec<&ExistingIndex> =
            indexes.iter().filter(|i| i.is_obsolete_key()).collect();
        if !has_columns || !obsolete.is_empty() {
            let mut statements = vec![format!(
                "ALTER TABLE {quoted} ADD COLUMN IF NOT EXISTS system_id bigint, \
                 ADD COLUMN IF NOT EXISTS commit_lsn bigint, ADD COLUMN IF NOT EXISTS ordinal integer"
            )];
            statements.extend(obsolete.iter().map(|index| table.drop_index_sql(index)));
            plan.steps.push(MigrationStep {
                title: "add the idempotency columns and drop Bemi's unique key, which loses \
                        rows that share a position"
                    .to_owned(),
                locks: self.catalog_only(&quoted),
                blocks_writes: true,
                in_transaction: true,
                statements,
            });
        }
        let kept: Vec<&ExistingIndex> = indexes.iter().filter(|i| !i.is_obsolete_key()).collect();

        // 2. The partitioned layout's indexes, built beside the table's own.
        let ours: Vec<WantedIndex> = wanted_indexes(true).chain([ID_KEY]).collect();
        let left_invalid: Vec<&&ExistingIndex> = kept
            .iter()
            .filter(|i| !i.valid && ours.iter().any(|w| w.name(table) == i.name))
            .collect();
        let primary_key = kept.iter().find(|i| i.is_primary_key);
        let has_id_key = primary_key.is_some_and(|pk| pk.using == ID_KEY.using);
        let to_build: Vec<WantedIndex> = ours
            .iter()
            .filter(|wanted| wanted.suffix != ID_KEY.suffix || !has_id_key)
            .filter(|wanted| !kept.iter().any(|index| wanted.served_by(index)))
            .copied()
            .collect();
        if !to_build.is_empty() {
            let mut statements: Vec<String> = left_invalid
                .iter()
                .map(|i| {
                    format!(
                        "DROP INDEX CONCURRENTLY IF EXISTS {}",
                        table.sibling(&i.name)
                    )
                })
                .collect();
            statements.extend(to_build.iter().map(|w| w.create_sql(table, true)));
            plan.steps.push(MigrationStep {
                title: format!(
                    "build the partitioned layout's indexes on the table: {}",
                    to_build
                        .iter()
                        .map(|w| w.name(table))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                locks: format!(
                    "SHARE UPDATE EXCLUSIVE on {quoted} while each index builds, reading {size} \
                     each time; inserts and queries go on"
                ),
                blocks_writes: false,
                in_transaction: false,
                statements,
            });
        }

        // 3. The constraint that proves the old table's rows all come before the boundary.
        let bound_quoted = quote_identifier(&bound_name);
        if bound.is_none() {
            plan.steps.push(MigrationStep {
                title: format!(
                    "add the constraint committed_at < {} (not yet validated; from now on a row \
                     at or after it is refused until the migration ends)",
                    boundary.format("%Y-%m-%d %H:%M UTC")
                ),
                locks: self.catalog_only(&quoted),
                blocks_writes: true,
                in_transaction: true,
                statements: vec![format!(
                    "ALTER TABLE {quoted} ADD CONSTRAINT {bound_quoted} \
                     CHECK (committed_at < {}) NOT VALID",
                    timestamp_literal(boundary)
                )],
            });
        }
        if bound.as_ref().is_none_or(|row| !row.get::<_, bool>(0)) {
            plan.steps.push(MigrationStep {
                title: "validate the constraint".to_owned(),
                locks: format!(
                    "SHARE UPDATE EXCLUSIVE on {quoted}, reading {size}; inserts and queries go on"
                ),
                blocks_writes: false,
                in_transaction: true,
                statements: vec![format!(
                    "ALTER TABLE {quoted} VALIDATE CONSTRAINT {bound_quoted}"
                )],
            });
        }

        // 4. The swap.
        let after_build: Vec<ExistingIndex> = kept
            .iter()
            .filter(|i| i.valid)
            .map(|i| (*i).clone())
            .chain(to_build.iter().map(|w| ExistingIndex {
                name: w.name(table),
                using: w.using.to_owned(),
                unique: w.unique,
                valid: true,
                constraint: None,
                is_primary_key: false,
                columns: Vec::new(),
            }))
            .collect();
        let grants = self.grants(client).await?;
        plan.steps.push(MigrationStep {
            title: format!(
                "make the table the partition {legacy} of a new partitioned {} (rows before {}), \
                 with a default partition and the next {} partition",
                table.name(),
                boundary.format("%Y-%m-%d %H:%M UTC"),
                self.interval
            ),
            locks: self.catalog_only(&quoted),
            blocks_writes: true,
            in_transaction: true,
            statements: self.swap(&legacy, &bound_quoted, boundary, &after_build, &grants)?,
        });
        Ok(plan)
    }

    /// The lock of a step that only changes the catalog.
    fn catalog_only(&self, table: &str) -> String {
        format!(
            "ACCESS EXCLUSIVE on {table}, for milliseconds: catalog only, no row is read or \
             written; inserts and queries wait for it, and it waits at most {:?} at a time for them",
            self.lock_timeout
        )
    }

    /// The statements of the swap (see the [module docs](self)).
    fn swap(
        &self,
        legacy: &str,
        bound: &str,
        boundary: DateTime<Utc>,
        indexes: &[ExistingIndex],
        grants: &[(String, String)],
    ) -> Result<Vec<String>> {
        let table = &self.table;
        let parent = table.qualified();
        let old = table.sibling(legacy);
        let prefix = format!("{}_", table.name());
        let renamed = |name: &str| -> Result<String> {
            let new = format!("{legacy}_{}", name.strip_prefix(&prefix).unwrap_or(name));
            match new.len() <= 63 {
                true => Ok(new),
                false => Err(Error::config(format!(
                    "cannot partition {parent}: its index {name:?} would be renamed to {new:?}, \
                     longer than PostgreSQL's 63 bytes; rename the index first"
                ))),
            }
        };
        let mut statements = vec![
            format!("LOCK TABLE {parent} IN ACCESS EXCLUSIVE MODE"),
            format!(
                "ALTER TABLE {parent} RENAME TO {}",
                quote_identifier(legacy)
            ),
        ];
        let mut parent_indexes = Vec::new();
        let mut old_primary_key = None;
        for index in indexes {
            if index.unique && index.using == super::KEY.using {
                // The unpartitioned key gives way to the partitioned one.
                statements.push(match &index.constraint {
                    Some(c) => format!("ALTER TABLE {old} DROP CONSTRAINT {}", quote_identifier(c)),
                    None => format!("DROP INDEX {}", table.sibling(&index.name)),
                });
                continue;
            }
            if index.is_primary_key {
                old_primary_key = Some(index);
                continue;
            }
            if index.unique && !index.using.contains("committed_at") {
                return Err(Error::config(format!(
                    "cannot partition {parent}: its unique index {:?} ({}) does not hold \
                     committed_at, and a partitioned table cannot enforce it; drop it first",
                    index.name, index.using
                )));
            }
            let new = renamed(&index.name)?;
            statements.push(match &index.constraint {
                Some(c) => format!(
                    "ALTER TABLE {old} RENAME CONSTRAINT {} TO {}",
                    quote_identifier(c),
                    quote_identifier(&new)
                ),
                None => format!(
                    "ALTER INDEX {} RENAME TO {}",
                    table.sibling(&index.name),
                    quote_identifier(&new)
                ),
            });
            if index.name != ID_KEY.name(table) {
                parent_indexes.push(format!(
                    "CREATE {}INDEX {} ON {parent} USING {}",
                    if index.unique { "UNIQUE " } else { "" },
                    quote_identifier(&index.name),
                    index.using
                ));
            }
        }
        let legacy_key = quote_identifier(&format!("{legacy}_pkey"));
        match old_primary_key {
            Some(pk) if pk.using == ID_KEY.using => statements.push(format!(
                "ALTER TABLE {old} RENAME CONSTRAINT {} TO {legacy_key}",
                quote_identifier(pk.constraint.as_deref().unwrap_or(&pk.name))
            )),
            old_key => {
                if let Some(pk) = old_key {
                    statements.push(format!(
                        "ALTER TABLE {old} DROP CONSTRAINT {}",
                        quote_identifier(pk.constraint.as_deref().unwrap_or(&pk.name))
                    ));
                }
                statements.push(format!(
                    "ALTER TABLE {old} ADD CONSTRAINT {legacy_key} PRIMARY KEY USING INDEX {}",
                    quote_identifier(&renamed(&ID_KEY.name(table))?)
                ));
            }
        }
        statements.push(format!(
            "CREATE TABLE {parent} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) \
             PARTITION BY RANGE (committed_at)"
        ));
        statements.push(format!("ALTER TABLE {parent} DROP CONSTRAINT {bound}"));
        statements.push(format!(
            "ALTER TABLE {parent} ADD CONSTRAINT {} PRIMARY KEY (id, committed_at)",
            quote_identifier(&format!("{}_pkey", table.name()))
        ));
        statements.extend(parent_indexes);
        statements.extend(
            grants
                .iter()
                .map(|(privilege, to)| format!("GRANT {privilege} ON {parent} TO {to}")),
        );
        let next = self.interval.next_period(boundary);
        statements.push(format!(
            "ALTER TABLE {parent} ATTACH PARTITION {old} FOR VALUES FROM (MINVALUE) TO ({})",
            timestamp_literal(boundary)
        ));
        statements.push(format!("ALTER TABLE {old} DROP CONSTRAINT {bound}"));
        statements.push(format!(
            "CREATE TABLE {} PARTITION OF {parent} DEFAULT",
            table.sibling(&table.default_partition_name())
        ));
        statements.push(format!(
            "CREATE TABLE {} PARTITION OF {parent} FOR VALUES FROM ({}) TO ({})",
            table.sibling(&table.partition_name(boundary)),
            timestamp_literal(boundary),
            timestamp_literal(next)
        ));
        Ok(statements)
    }

    /// The privileges granted on the table to roles other than its owner, to grant on the
    /// partitioned table too: (privilege, grantee with its grant option).
    async fn grants(&self, client: &Client) -> Result<Vec<(String, String)>> {
        let rows = client
            .query(
                "SELECT a.privilege_type, \
                        CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END || \
                        CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END \
                 FROM pg_catalog.pg_class c \
                 CROSS JOIN LATERAL aclexplode(c.relacl) a \
                 LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee \
                 WHERE c.oid = to_regclass($1) AND a.grantee <> c.relowner \
                 ORDER BY 1",
                &[&self.table.qualified()],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Runs the [plan](Self::plan): each step in order, a transactional one retried when it
    /// could not get its lock in time. Returns each step's title and how long it took (none
    /// when there was nothing to do). Run it again after an interruption: it goes on where it
    /// stopped.
    pub async fn run(&self, client: &Client) -> Result<Vec<(String, Duration)>> {
        let plan = self.plan(client).await?;
        let mut done = Vec::new();
        for (n, step) in plan.steps.iter().enumerate() {
            tracing::info!(step = n + 1, of = plan.steps.len(), title = %step.title, locks = %step.locks, "migrating the changes table");
            let started = Instant::now();
            if step.in_transaction {
                let batch = format!(
                    "SELECT set_config('lock_timeout', '{}ms', true); {};",
                    self.lock_timeout.as_millis(),
                    step.statements.join("; ")
                );
                retry_when_locked(ATTEMPTS, &step.title, || async {
                    client.batch_execute(&batch).await.map_err(Error::from)
                })
                .await?;
            } else {
                for statement in &step.statements {
                    client.batch_execute(statement).await?;
                }
            }
            let took = started.elapsed();
            tracing::info!(step = n + 1, ?took, "step done");
            done.push((step.title.clone(), took));
        }
        Ok(done)
    }
}

/// `about 1,234,567 rows (1.2 GiB with indexes)`.
fn describe_size(rows: i64, bytes: i64) -> String {
    format!(
        "about {} rows ({} with indexes)",
        thousands(rows),
        human_bytes(bytes)
    )
}

fn thousands(n: i64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) && c.is_ascii_digit() && out != "-" {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A size in bytes, KiB, MiB or GiB.
pub(crate) fn human_bytes(bytes: i64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} bytes"),
        _ => format!("{value:.1} {}", units[unit]),
    }
}

impl fmt::Display for MigrationPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.exists {
            return writeln!(
                f,
                "-- {} does not exist: the tracker creates it partitioned ({}ly)",
                self.table, self.interval
            );
        }
        if self.partitioned {
            return writeln!(f, "-- {} is partitioned already: nothing to do", self.table);
        }
        writeln!(
            f,
            "-- Partitioning {} by {} on committed_at: {}.",
            self.table,
            self.interval,
            describe_size(self.rows, self.bytes)
        )?;
        if let Some(boundary) = self.boundary {
            writeln!(
                f,
                "-- The table becomes the partition of commit times before {}; no row is copied.",
                boundary.format("%Y-%m-%d %H:%M UTC")
            )?;
        }
        for (n, step) in self.steps.iter().enumerate() {
            writeln!(
                f,
                "\n-- Step {} of {}: {}",
                n + 1,
                self.steps.len(),
                step.title
            )?;
            writeln!(f, "--   locks: {}", step.locks)?;
            if step.in_transaction {
                writeln!(f, "BEGIN;")?;
                writeln!(
                    f,
                    "SET LOCAL lock_timeout = '{}ms';",
                    self.lock_timeout.as_millis()
                )?;
                for statement in &step.statements {
                    writeln!(f, "{statement};")?;
                }
                writeln!(f, "COMMIT;")?;
            } else {
                writeln!(f, "-- (each statement on its own, outside a transaction)")?;
                for statement in &step.statements {
                    writeln!(f, "{statement};")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(10_000_000), "10,000,000");
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
