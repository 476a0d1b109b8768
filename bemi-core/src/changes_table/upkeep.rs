//! The sink's upkeep of a partitioned `changes` table: partitions exist before the rows that
//! need them (the period of every commit time in a batch and the period after the newest, so
//! the next period's partition is there before its first row), and retention runs at start and
//! then hourly.
//!
//! Upkeep never fails a write: a partition that cannot be created now (a lock held too long by
//! a reader, a missing privilege) leaves the rows of its period in the default partition, from
//! which the next partition creation moves them, and is tried again a minute later; a retention
//! that fails is logged and tried again at its next run.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::{ChangesTable, Partition, PartitionInterval, Retention};
use crate::error::Result;

/// How long partition DDL waits for its locks in the write path.
const LOCK_TIMEOUT: &str = "2s";
/// How long after a failed partition creation the next is tried.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Upkeep {
    table: ChangesTable,
    interval: PartitionInterval,
    retention: Option<Retention>,
    /// The partitions as last read: the periods they hold need no DDL.
    known: Vec<Partition>,
    /// No partition DDL before this, after a failure.
    quiet_until: Option<Instant>,
    retained_at: Option<Instant>,
}

impl Upkeep {
    pub(crate) fn new(
        table: ChangesTable,
        interval: PartitionInterval,
        retention: Option<Retention>,
    ) -> Self {
        Upkeep {
            table,
            interval,
            retention,
            known: Vec::new(),
            quiet_until: None,
            retained_at: None,
        }
    }

    /// At the sink's start: the partitions of `now`'s period and the next, and the default
    /// partition, then retention. Fails when the partitions cannot be created.
    pub(crate) async fn open(&mut self, client: &mut Client, now: DateTime<Utc>) -> Result<()> {
        self.known = self.table.partitions(&*client).await?;
        let periods = [now, self.interval.next_period(now)];
        let missing = !self.holds_all(&periods) || !self.known.iter().any(|p| p.is_default);
        if missing {
            self.known = self.create(client, &periods).await?;
        }
        self.retain(&*client, now).await;
        Ok(())
    }

    /// Whether [`before_write`](Self::before_write) for rows committed at `committed` would
    /// change the table (create partitions or run retention): the sink lets the batches it is
    /// storing commit first, so that no lock of theirs holds the change up.
    pub(crate) fn is_due(&self, committed: impl Iterator<Item = DateTime<Utc>>) -> bool {
        let quiet = self.quiet_until.is_some_and(|until| Instant::now() < until);
        (!quiet && !self.holds_all(&self.periods(committed))) || self.retention_due()
    }

    /// The periods of rows committed at `committed`, and the one after the newest.
    fn periods(&self, committed: impl Iterator<Item = DateTime<Utc>>) -> Vec<DateTime<Utc>> {
        let mut periods: Vec<DateTime<Utc>> = Vec::new();
        for at in committed {
            let start = self.interval.period_start(at);
            if periods.last() != Some(&start) && !periods.contains(&start) {
                periods.push(start);
            }
        }
        if let Some(newest) = periods.iter().max().copied() {
            periods.push(self.interval.next_period(newest));
        }
        periods
    }

    /// Whether retention is set and due to run.
    fn retention_due(&self) -> bool {
        self.retention.is_some()
            && self
                .retained_at
                .is_none_or(|at| at.elapsed() >= RETENTION_EVERY)
    }

    /// Before a batch whose rows were committed at `committed`: creates the partitions their
    /// periods need, and the one after the newest; runs retention when it is due.
    pub(crate) async fn before_write(
        &mut self,
        client: &mut Client,
        committed: impl Iterator<Item = DateTime<Utc>>,
    ) {
        let periods = self.periods(committed);
        let quiet = self.quiet_until.is_some_and(|until| Instant::now() < until);
        if !quiet && !self.holds_all(&periods) {
            match self.create(client, &periods).await {
                Ok(partitions) => {
                    self.known = partitions;
                    self.quiet_until = None;
                }
                Err(e) => {
                    tracing::warn!(
                        table = %self.table.qualified(),
                        error = %e.report(),
                        "could not create partitions of the changes table; rows of their \
                         periods go to the default partition until they exist (trying again \
                         in a minute)"
                    );
                    self.quiet_until = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
        if self.retention_due() {
            self.retain(&*client, Utc::now()).await;
        }
    }

    /// Whether known range partitions hold every moment of the periods starting at `periods`.
    fn holds_all(&self, periods: &[DateTime<Utc>]) -> bool {
        super::missing_ranges(self.interval, periods, &self.known).is_empty()
    }

    async fn create(
        &self,
        client: &mut Client,
        periods: &[DateTime<Utc>],
    ) -> Result<Vec<Partition>> {
        let tx = client.transaction().await?;
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .await?;
        let partitions = self
            .table
            .create_partitions(&tx, self.interval, periods)
            .await?;
        tx.commit().await?;
        Ok(partitions)
    }

    /// Runs retention, if any; logs a failure.
    async fn retain(&mut self, client: &Client, now: DateTime<Utc>) {
        let Some(retention) = self.retention.clone() else {
            return;
        };
        self.retained_at = Some(Instant::now());
        let result = async {
            let removed = retention.apply(&self.table, client, now).await?;
            if !removed.is_empty() {
                self.known = self.table.partitions(client).await?;
            }
            Ok::<_, crate::Error>(removed.len())
        }
        .await;
        match result {
            Ok(removed) => tracing::debug!(removed, window = %retention, "retention ran"),
            Err(e) => tracing::warn!(
                table = %self.table.qualified(),
                error = %e.report(),
                "retention could not remove expired partitions; trying again at its next run"
            ),
        }
    }
}
