//! Time partitions of the `changes` table: ranges of `committed_at`, one per day, week or month
//! (UTC), named after the day they start (`changes_p20261101`), plus a default partition
//! (`changes_default`) that takes a row no range holds, so an unexpected commit time never stops
//! the tracker.
//!
//! A partition is created beside the table and then attached
//! ([`ATTACH PARTITION`](https://www.postgresql.org/docs/current/ddl-partitioning.html#DDL-PARTITIONING-DECLARATIVE-MAINTENANCE)),
//! which locks the partitioned table only in `SHARE UPDATE EXCLUSIVE` mode: inserts and queries
//! go on. A `CHECK` constraint matching its range, added before it is attached, spares the scan
//! of the new table. Rows of its range that the default partition already holds are moved into
//! it in the same transaction (the attach refuses otherwise), which locks the default partition
//! for as long as that takes: normally it is empty.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::ChangesTable;
use crate::error::{Error, Result};
use crate::sql::{quote_identifier, quote_literal, quote_qualified};

/// How much time each partition of a partitioned `changes` table spans (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PartitionInterval {
    /// From midnight to midnight.
    Day,
    /// From Monday to Monday (ISO weeks).
    Week,
    /// From the first of a month to the first of the next (the default).
    #[default]
    Month,
}

impl PartitionInterval {
    /// The start of the period that holds `at`: midnight UTC of its day, of the Monday of its
    /// week, or of the first of its month.
    ///
    /// ```
    /// use bemi_core::changes_table::PartitionInterval;
    /// let at = "2026-11-26T15:30:00Z".parse().unwrap();
    /// assert_eq!(PartitionInterval::Month.period_start(at).to_rfc3339(), "2026-11-01T00:00:00+00:00");
    /// assert_eq!(PartitionInterval::Week.period_start(at).to_rfc3339(), "2026-11-23T00:00:00+00:00");
    /// ```
    pub fn period_start(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let date = at.date_naive();
        let start = match self {
            PartitionInterval::Day => Some(date),
            PartitionInterval::Week => date.checked_sub_signed(Duration::days(i64::from(
                date.weekday().num_days_from_monday(),
            ))),
            PartitionInterval::Month => NaiveDate::from_ymd_opt(date.year(), date.month(), 1),
        };
        start.map_or(DateTime::<Utc>::MIN_UTC, midnight)
    }

    /// The start of the period after the one that holds `at`.
    pub fn next_period(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let start = self.period_start(at);
        let next = match self {
            PartitionInterval::Day => start.checked_add_signed(Duration::days(1)),
            PartitionInterval::Week => start.checked_add_signed(Duration::days(7)),
            PartitionInterval::Month => start.checked_add_months(Months::new(1)),
        };
        next.unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The name used by [`FromStr`] and [`Display`](fmt::Display): `day`, `week` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionInterval::Day => "day",
            PartitionInterval::Week => "week",
            PartitionInterval::Month => "month",
        }
    }
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    date.and_time(chrono::NaiveTime::MIN).and_utc()
}

impl fmt::Display for PartitionInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads `day`, `week` or `month` (also `daily`, `weekly`, `monthly`), in any case.
impl FromStr for PartitionInterval {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "day" | "daily" => Ok(PartitionInterval::Day),
            "week" | "weekly" => Ok(PartitionInterval::Week),
            "month" | "monthly" => Ok(PartitionInterval::Month),
            _ => Err(Error::config(format!(
                "invalid partition interval {text:?}: use day, week or month"
            ))),
        }
    }
}

/// How the sink lays out a `changes` table it creates. A table that exists keeps its layout:
/// `bemi migrate --partition` ([`PartitionMigration`](super::PartitionMigration)) turns an
/// unpartitioned one into a partitioned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layout {
    /// Range-partitioned on `committed_at`, a partition per interval (the default, monthly).
    Partitioned(PartitionInterval),
    /// One table, as Bemi's worker and earlier versions made it.
    Unpartitioned,
}

impl Default for Layout {
    fn default() -> Self {
        Layout::Partitioned(PartitionInterval::default())
    }
}

/// One partition of a partitioned `changes` table, as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Partition {
    /// The partition's table name (in the schema of `changes`).
    pub name: String,
    /// The first `committed_at` it holds; `None` when unbounded below (and for the default
    /// partition).
    pub from: Option<DateTime<Utc>>,
    /// The first `committed_at` past it; `None` when unbounded above (and for the default
    /// partition).
    pub to: Option<DateTime<Utc>>,
    /// Whether it is the default partition, which takes what no range holds.
    pub is_default: bool,
    /// Its size on disk with its indexes, in bytes.
    pub bytes: i64,
}

impl Partition {
    /// Whether the partition's range holds `at` (never for the default partition).
    pub fn holds(&self, at: DateTime<Utc>) -> bool {
        !self.is_default
            && self.from.is_none_or(|from| from <= at)
            && self.to.is_none_or(|to| at < to)
    }
}

/// The suffix of a partition's name after the table's: `_p` and the day its range starts,
/// with the time when it does not start at midnight.
fn partition_suffix(from: DateTime<Utc>) -> String {
    let day = from.format("_p%Y%m%d").to_string();
    match from.time() == chrono::NaiveTime::MIN {
        true => day,
        false => format!("{day}{}", from.format("_%H%M%S")),
    }
}

/// The suffix of the default partition's name.
const DEFAULT_SUFFIX: &str = "_default";
/// The suffix of the partition that holds an unpartitioned table's rows after
/// `bemi migrate --partition`.
pub(super) const LEGACY_SUFFIX: &str = "_legacy";

/// The table whose partition `name` would be, by the names this module gives partitions
/// (`changes_p20261101`, `changes_p20261101_120000`, `changes_default`, `changes_legacy`):
/// how the tracker knows, without asking the catalog, that a change of such a table is its own
/// write (publications that publish partitions under their own names send them so).
///
/// ```
/// use bemi_core::changes_table::partition_parent;
/// assert_eq!(partition_parent("changes_p20261101"), Some("changes"));
/// assert_eq!(partition_parent("changes_default"), Some("changes"));
/// assert_eq!(partition_parent("changes_log"), None);
/// ```
pub fn partition_parent(name: &str) -> Option<&str> {
    let parent = [DEFAULT_SUFFIX, LEGACY_SUFFIX]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .or_else(|| {
            let (parent, stamp) = name.rsplit_once("_p")?;
            let (day, time) = stamp.split_once('_').unwrap_or((stamp, ""));
            let digits =
                |text: &str, n: usize| text.len() == n && text.bytes().all(|b| b.is_ascii_digit());
            let valid_day = digits(day, 8) && NaiveDate::parse_from_str(day, "%Y%m%d").is_ok();
            let valid_time = time.is_empty()
                || (digits(time, 6) && chrono::NaiveTime::parse_from_str(time, "%H%M%S").is_ok());
            (valid_day && valid_time).then_some(parent)
        })?;
    (!parent.is_empty()).then_some(parent)
}

/// PostgreSQL cuts identifiers at 63 bytes.
const MAX_IDENTIFIER_BYTES: usize = 63;

impl ChangesTable {
    /// The name of the partition whose range starts at `from`.
    pub(super) fn partition_name(&self, from: DateTime<Utc>) -> String {
        format!("{}{}", self.name(), partition_suffix(from))
    }

    pub(super) fn default_partition_name(&self) -> String {
        format!("{}{DEFAULT_SUFFIX}", self.name())
    }

    /// Refuses a table name too long for its partitions' names (PostgreSQL would cut them,
    /// and two partitions could end up with one name).
    pub(crate) fn check_partition_names(&self) -> Result<()> {
        let longest = self.name().len() + "_p20261101_120000".len();
        if longest > MAX_IDENTIFIER_BYTES {
            return Err(Error::config(format!(
                "the changes table name {:?} is too long to name its partitions: a partitioned \
                 changes table's name may have at most {} bytes",
                self.name(),
                MAX_IDENTIFIER_BYTES + self.name().len() - longest
            )));
        }
        Ok(())
    }

    /// Whether the table is partitioned: `None` when it does not exist.
    pub async fn is_partitioned(&self, client: &impl GenericClient) -> Result<Option<bool>> {
        let row = client
            .query_opt(
                "SELECT relkind = 'p' FROM pg_catalog.pg_class WHERE oid = to_regclass($1)",
                &[&self.qualified()],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// The partitions of the table, oldest range first and the default partition last; none
    /// when it is not partitioned.
    pub async fn partitions(&self, client: &impl GenericClient) -> Result<Vec<Partition>> {
        // The bounds as the catalog prints them, read back as timestamps in the same session
        // (so whatever its DateStyle and TimeZone); infinite bounds count as none.
        let rows = client
            .query(
                "SELECT c.relname::text, b.bound = 'DEFAULT', \
                        NULLIF(NULLIF((regexp_match(b.bound, 'FROM \\(''([^'']*)''\\)'))[1]::timestamptz, \
                                      'infinity'), '-infinity'), \
                        NULLIF(NULLIF((regexp_match(b.bound, 'TO \\(''([^'']*)''\\)'))[1]::timestamptz, \
                                      'infinity'), '-infinity'), \
                        pg_catalog.pg_total_relation_size(c.oid) \
                 FROM pg_catalog.pg_inherits i \
                 JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid \
                 CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) b \
                 WHERE i.inhparent = to_regclass($1) \
                 ORDER BY 2, 3 NULLS FIRST, 1",
                &[&self.qualified()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Partition {
                name: row.get(0),
                is_default: row.get(1),
                from: row.get(2),
                to: row.get(3),
                bytes: row.get(4),
            })
            .collect())
    }

    /// Creates the partitions missing for the periods that start at `periods`, and the default
    /// partition when it is missing, under the table's upgrade lock; returns the partitions
    /// after. A period partly held by an existing partition gets a partition for the rest.
    /// Runs in the caller's transaction, which should set a short `lock_timeout`.
    pub(crate) async fn create_partitions(
        &self,
        tx: &impl GenericClient,
        interval: PartitionInterval,
        periods: &[DateTime<Utc>],
    ) -> Result<Vec<Partition>> {
        self.lock_for_upgrade(tx).await?;
        let partitions = self.partitions(tx).await?;
        let default = partitions.iter().find(|p| p.is_default);
        let default = match default {
            Some(default) => default.name.clone(),
            None => {
                let name = self.default_partition_name();
                tx.batch_execute(&format!(
                    "CREATE TABLE {} PARTITION OF {} DEFAULT",
                    self.sibling(&name),
                    self.qualified()
                ))
                .await?;
                tracing::info!(partition = %name, "created the default partition");
                name
            }
        };
        let missing = missing_ranges(interval, periods, &partitions);
        for (from, to) in &missing {
            self.attach_new_partition(tx, &default, *from, *to).await?;
        }
        match missing.is_empty() {
            true => Ok(partitions),
            false => self.partitions(tx).await,
        }
    }

    /// The quoted name of a table in the schema of `changes`.
    pub(super) fn sibling(&self, name: &str) -> String {
        quote_qualified(Some(self.schema()), name)
    }

    /// Creates a partition for `[from, to)` beside the table, moves the default partition's
    /// rows of that range into it and attaches it (see the [module docs](self)).
    async fn attach_new_partition(
        &self,
        tx: &impl GenericClient,
        default: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<()> {
        let name = self.partition_name(from);
        let partition = self.sibling(&name);
        let bound = quote_identifier(&format!("{name}_bound"));
        let (lower, upper) = (timestamp_literal(from), timestamp_literal(to));
        tx.batch_execute(&format!(
            "CREATE TABLE {partition} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
             ALTER TABLE {partition} ADD CONSTRAINT {bound}
               CHECK (committed_at >= {lower} AND committed_at < {upper});
             WITH moved AS (DELETE FROM {default} WHERE committed_at >= {lower}
                            AND committed_at < {upper} RETURNING *)
             INSERT INTO {partition} SELECT * FROM moved;
             ALTER TABLE {parent} ATTACH PARTITION {partition}
               FOR VALUES FROM ({lower}) TO ({upper});
             ALTER TABLE {partition} DROP CONSTRAINT {bound};",
            parent = self.qualified(),
            default = self.sibling(default),
        ))
        .await?;
        tracing::info!(partition = %name, %from, %to, "created a partition of the changes table");
        Ok(())
    }
}

/// A timestamp as an SQL literal that reads the same in every session: RFC 3339 with its
/// offset.
pub(super) fn timestamp_literal(at: DateTime<Utc>) -> String {
    quote_literal(&at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// The ranges to create so that the periods starting at `periods` are wholly held by range
/// partitions: each period minus what `existing` partitions hold of it.
pub(crate) fn missing_ranges(
    interval: PartitionInterval,
    periods: &[DateTime<Utc>],
    existing: &[Partition],
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut starts: Vec<DateTime<Utc>> =
        periods.iter().map(|p| interval.period_start(*p)).collect();
    starts.sort();
    starts.dedup();
    let mut missing = Vec::new();
    for start in starts {
        let mut gaps = vec![(start, interval.next_period(start))];
        for partition in existing.iter().filter(|p| !p.is_default) {
            let from = partition.from.unwrap_or(DateTime::<Utc>::MIN_UTC);
            let to = partition.to.unwrap_or(DateTime::<Utc>::MAX_UTC);
            gaps = gaps
                .into_iter()
                .flat_map(|(a, b)| {
                    let mut left = Vec::new();
                    if a < from.min(b) {
                        left.push((a, from.min(b)));
                    }
                    if to.max(a) < b {
                        left.push((to.max(a), b));
                    }
                    left
                })
                .collect();
        }
        missing.extend(gaps);
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn range(name: &str, from: &str, to: &str) -> Partition {
        Partition {
            name: name.to_owned(),
            from: Some(at(from)),
            to: Some(at(to)),
            is_default: false,
            bytes: 0,
        }
    }

    #[test]
    fn periods_start_at_midnight_utc_mondays_and_firsts() {
        let t = at("2024-02-29T23:59:59.999999Z");
        assert_eq!(
            PartitionInterval::Day.period_start(t),
            at("2024-02-29T00:00:00Z")
        );
        assert_eq!(
            PartitionInterval::Day.next_period(t),
            at("2024-03-01T00:00:00Z")
        );
        assert_eq!(
            PartitionInterval::Week.period_start(t),
            at("2024-02-26T00:00:00Z")
        );
        assert_eq!(
            PartitionInterval::Week.next_period(t),
            at("2024-03-04T00:00:00Z")
        );
        assert_eq!(
            PartitionInterval::Month.period_start(t),
            at("2024-02-01T00:00:00Z")
        );
        assert_eq!(
            PartitionInterval::Month.next_period(t),
            at("2024-03-01T00:00:00Z")
        );
        let december = at("2026-12-31T12:00:00Z");
        assert_eq!(
            PartitionInterval::Month.next_period(december),
            at("2027-01-01T00:00:00Z")
        );
        // A Monday is its own week's start.
        let monday = at("2026-11-23T00:00:00Z");
        assert_eq!(PartitionInterval::Week.period_start(monday), monday);
    }

    #[test]
    fn intervals_parse_in_both_spellings_and_refuse_others() {
        assert_eq!(
            "Monthly".parse::<PartitionInterval>().unwrap(),
            PartitionInterval::Month
        );
        assert_eq!(
            "week".parse::<PartitionInterval>().unwrap(),
            PartitionInterval::Week
        );
        assert_eq!(
            "daily".parse::<PartitionInterval>().unwrap(),
            PartitionInterval::Day
        );
        let error = "year".parse::<PartitionInterval>().unwrap_err();
        assert!(error.message().contains("day, week or month"), "{error}");
    }

    #[test]
    fn partition_names_round_trip_to_their_table() {
        let table = ChangesTable::new("audit", "changes");
        let name = table.partition_name(at("2026-11-01T00:00:00Z"));
        assert_eq!(name, "changes_p20261101");
        assert_eq!(partition_parent(&name), Some("changes"));
        let odd = table.partition_name(at("2026-11-01T12:30:00Z"));
        assert_eq!(odd, "changes_p20261101_123000");
        assert_eq!(partition_parent(&odd), Some("changes"));
        assert_eq!(partition_parent("my_changes_default"), Some("my_changes"));
        assert_eq!(partition_parent("changes_legacy"), Some("changes"));
        for other in [
            "changes",
            "changes_log",
            "changes_p2026",
            "changes_p20261341",
            "changes_pabcdefgh",
            "_p20261101",
            "_default",
            "changes_p20261101_12",
        ] {
            assert_eq!(partition_parent(other), None, "{other}");
        }
    }

    #[test]
    fn long_table_names_are_refused_for_partitioning() {
        assert!(ChangesTable::new("public", "c".repeat(46))
            .check_partition_names()
            .is_ok());
        let error = ChangesTable::new("public", "c".repeat(47))
            .check_partition_names()
            .unwrap_err();
        assert!(error.message().contains("at most 46 bytes"), "{error}");
    }

    #[test]
    fn missing_ranges_fill_only_what_no_partition_holds() {
        let month = PartitionInterval::Month;
        let existing = vec![
            range("a", "2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"),
            // An unpartitioned table attached up to mid-December.
            range("b", "2026-11-01T00:00:00Z", "2026-12-15T00:00:00Z"),
            Partition {
                name: "changes_default".to_owned(),
                from: None,
                to: None,
                is_default: true,
                bytes: 0,
            },
        ];
        let periods = [
            at("2026-10-20T00:00:00Z"),
            at("2026-11-02T00:00:00Z"),
            at("2026-12-31T00:00:00Z"),
            at("2027-01-05T00:00:00Z"),
            at("2027-01-06T00:00:00Z"),
        ];
        assert_eq!(
            missing_ranges(month, &periods, &existing),
            vec![
                (at("2026-12-15T00:00:00Z"), at("2027-01-01T00:00:00Z")),
                (at("2027-01-01T00:00:00Z"), at("2027-02-01T00:00:00Z")),
            ]
        );
        let unbounded_below = Partition {
            from: None,
            ..range("legacy", "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z")
        };
        assert_eq!(
            missing_ranges(month, &[at("2020-05-05T00:00:00Z")], &[unbounded_below]),
            vec![]
        );
    }

    #[test]
    fn a_partition_holds_its_range_and_the_default_nothing() {
        let p = range("p", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z");
        assert!(p.holds(at("2026-11-01T00:00:00Z")));
        assert!(p.holds(at("2026-11-30T23:59:59.999999Z")));
        assert!(!p.holds(at("2026-12-01T00:00:00Z")));
        assert!(!Partition {
            is_default: true,
            from: None,
            to: None,
            ..p
        }
        .holds(at("2026-11-05T00:00:00Z")));
    }
}
