//! Retention: whole partitions of a partitioned `changes` table whose every possible row is
//! older than a window are dropped (or detached into an archive schema). Never rows one by one:
//! a `DROP TABLE` of a partition takes milliseconds whatever it holds, where a `DELETE` of a
//! month would write and vacuum every row of it (BENCHMARKS.md has both).
//!
//! Dropping or detaching a partition locks the partitioned table in `ACCESS EXCLUSIVE` mode for
//! that moment (PostgreSQL cannot detach concurrently from a table with a default partition);
//! each waits at most a few seconds for its lock, so readers never queue long behind it, and
//! is tried again (and at the tracker's next run) when it could not get it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{ChangesTable, Partition};
use crate::error::{retry_when_locked, Error, Result};
use crate::sql::quote_identifier;

/// How long changes are kept, and where expired partitions go.
///
/// ```
/// use bemi_core::changes_table::Retention;
/// let retention: Retention = "90d".parse()?;
/// assert_eq!(retention.window(), std::time::Duration::from_secs(90 * 86_400));
/// let archived = retention.archive_to("audit_archive");
/// assert_eq!(archived.archive_schema(), Some("audit_archive"));
/// # Ok::<(), bemi_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Retention {
    window: Duration,
    archive: Option<String>,
}

/// How long one drop or detach waits for its lock, and how many times it tries.
const LOCK_TIMEOUT: &str = "3s";
const ATTEMPTS: u32 = 3;

impl Retention {
    /// Keeps changes committed within `window` of now; partitions wholly older are dropped.
    pub fn new(window: Duration) -> Self {
        Retention {
            window,
            archive: None,
        }
    }

    /// Detaches expired partitions and moves them into `schema` (created when missing)
    /// instead of dropping them.
    pub fn archive_to(mut self, schema: impl Into<String>) -> Self {
        self.archive = Some(schema.into());
        self
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The archive schema, when expired partitions are kept there.
    pub fn archive_schema(&self) -> Option<&str> {
        self.archive.as_deref()
    }

    /// The oldest commit time kept at `now`: a partition whose range ends at or before it goes.
    pub fn cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        chrono::Duration::from_std(self.window)
            .ok()
            .and_then(|window| now.checked_sub_signed(window))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// The partitions that expire at `now`: those whose range ends at or before the
    /// [`cutoff`](Self::cutoff). Never the default partition, nor one unbounded above.
    pub fn expired<'a>(
        &self,
        partitions: &'a [Partition],
        now: DateTime<Utc>,
    ) -> Vec<&'a Partition> {
        let cutoff = self.cutoff(now);
        partitions
            .iter()
            .filter(|p| !p.is_default && p.to.is_some_and(|to| to <= cutoff))
            .collect()
    }

    /// What [`apply`](Self::apply) would remove from `table` at `now`, removing nothing (a dry
    /// run). Fails when the table is not partitioned.
    pub async fn plan(
        &self,
        table: &ChangesTable,
        client: &tokio_postgres::Client,
        now: DateTime<Utc>,
    ) -> Result<Vec<Partition>> {
        require_partitioned(table, client).await?;
        let partitions = table.partitions(client).await?;
        Ok(self
            .expired(&partitions, now)
            .into_iter()
            .cloned()
            .collect())
    }

    /// Drops the partitions of `table` that expire at `now` (or detaches them into the archive
    /// schema), each in its own short transaction, logging each; returns those removed. Fails
    /// when the table is not partitioned, or at the first partition it cannot remove (those
    /// before it stay removed).
    pub async fn apply(
        &self,
        table: &ChangesTable,
        client: &tokio_postgres::Client,
        now: DateTime<Utc>,
    ) -> Result<Vec<Partition>> {
        let expired = self.plan(table, client, now).await?;
        for partition in &expired {
            let what = format!(
                "removing partition {} of {}",
                partition.name,
                table.qualified()
            );
            retry_when_locked(ATTEMPTS, &what, || self.remove(table, client, partition)).await?;
        }
        Ok(expired)
    }

    /// Drops or archives one partition, in one transaction (one simple query).
    async fn remove(
        &self,
        table: &ChangesTable,
        client: &tokio_postgres::Client,
        partition: &Partition,
    ) -> Result<()> {
        let qualified = table.sibling(&partition.name);
        let removal = match &self.archive {
            None => format!("DROP TABLE {qualified}"),
            Some(archive) => {
                let exists: bool = client
                    .query_one(
                        "SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = $1)",
                        &[archive],
                    )
                    .await?
                    .get(0);
                let archive = quote_identifier(archive);
                // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the
                // schema exists.
                let create = match exists {
                    true => String::new(),
                    false => format!("CREATE SCHEMA IF NOT EXISTS {archive};"),
                };
                format!(
                    "{create} ALTER TABLE {} DETACH PARTITION {qualified}; \
                     ALTER TABLE {qualified} SET SCHEMA {archive}",
                    table.qualified()
                )
            }
        };
        client
            .batch_execute(&format!(
                "SELECT set_config('lock_timeout', '{LOCK_TIMEOUT}', true); {removal}"
            ))
            .await?;
        tracing::info!(
            table = %table.qualified(),
            partition = %partition.name,
            from = ?partition.from,
            to = ?partition.to,
            bytes = partition.bytes,
            archived_to = self.archive.as_deref(),
            "retention removed a partition of the changes table"
        );
        Ok(())
    }
}

async fn require_partitioned(table: &ChangesTable, client: &tokio_postgres::Client) -> Result<()> {
    match table.is_partitioned(client).await? {
        Some(true) => Ok(()),
        Some(false) => Err(Error::config(format!(
            "{} is not partitioned, and retention only ever drops whole partitions (never \
             deletes rows): partition it first with `bemi migrate --partition` \
             (changes_table::PartitionMigration)",
            table.qualified()
        ))),
        None => Err(Error::config(format!(
            "{} does not exist yet: the tracker creates it",
            table.qualified()
        ))),
    }
}

/// Reads a window as a number and a unit: `90d` (days), `12w` (weeks) or `36h` (hours).
impl FromStr for Retention {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = || {
            Error::config(format!(
                "invalid retention {text:?}: write a whole number of days, weeks or hours, \
                 like 90d, 12w or 36h"
            ))
        };
        let text = text.trim();
        let unit = text.chars().last().ok_or_else(invalid)?;
        let count: u64 = text[..text.len() - unit.len_utf8()]
            .parse()
            .map_err(|_| invalid())?;
        let seconds = match unit.to_ascii_lowercase() {
            'h' => 3_600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(invalid()),
        };
        match count.checked_mul(seconds) {
            Some(total) if count > 0 => Ok(Retention::new(Duration::from_secs(total))),
            _ => Err(invalid()),
        }
    }
}

/// The window as [`FromStr`] reads it (`90d`), in the largest unit that divides it.
impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.window.as_secs();
        match seconds {
            s if s > 0 && s % (7 * 86_400) == 0 => write!(f, "{}w", s / (7 * 86_400)),
            s if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            s if s % 3_600 == 0 => write!(f, "{}h", s / 3_600),
            s => write!(f, "{s}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn month(name: &str, from: &str, to: &str) -> Partition {
        Partition {
            name: name.to_owned(),
            from: Some(at(from)),
            to: Some(at(to)),
            is_default: false,
            bytes: 0,
        }
    }

    #[test]
    fn windows_parse_and_print_in_days_weeks_and_hours() {
        let day = 86_400;
        for (text, seconds, printed) in [
            ("90d", 90 * day, "90d"),
            ("12w", 84 * day, "12w"),
            ("14D", 14 * day, "2w"),
            ("36h", 36 * 3_600, "36h"),
            (" 1d ", day, "1d"),
        ] {
            let retention: Retention = text.parse().unwrap();
            assert_eq!(retention.window().as_secs(), seconds, "{text}");
            assert_eq!(retention.to_string(), printed, "{text}");
        }
        for bad in [
            "",
            "d",
            "90",
            "0d",
            "-1d",
            "1.5d",
            "90y",
            "99999999999999999w",
        ] {
            let error = bad.parse::<Retention>().unwrap_err();
            assert!(error.message().contains("like 90d"), "{bad}: {error}");
        }
    }

    #[test]
    fn only_partitions_wholly_past_the_window_expire() {
        let retention: Retention = "30d".parse().unwrap();
        let now = at("2026-12-15T12:00:00Z");
        assert_eq!(retention.cutoff(now), at("2026-11-15T12:00:00Z"));
        let partitions = vec![
            Partition {
                from: None,
                ..month("legacy", "2000-01-01T00:00:00Z", "2026-10-01T00:00:00Z")
            },
            month("oct", "2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"),
            // Ends after the cutoff: some of its rows are still within the window.
            month("nov", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
            month("dec", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
            Partition {
                to: None,
                ..month("open", "2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z")
            },
            Partition {
                is_default: true,
                from: None,
                to: None,
                ..month("default", "2000-01-01T00:00:00Z", "2000-01-01T00:00:00Z")
            },
        ];
        let names: Vec<&str> = retention
            .expired(&partitions, now)
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["legacy", "oct"]);
        // A range that ends exactly at the cutoff goes.
        let exact = retention.expired(&partitions, at("2026-12-31T00:00:00Z"));
        assert_eq!(exact.len(), 3);
    }
}
