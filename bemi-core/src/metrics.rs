//! The tracker's metrics, recorded through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! A tracker records them into whatever recorder the application installed
//! (`metrics-exporter-prometheus`, an OpenTelemetry bridge, …), before it spawns the tracker;
//! without one they cost next to nothing. `bemi run --metrics-listen ADDR` serves them in
//! Prometheus's text format. Names and units follow Prometheus's conventions; every metric but
//! [`BUILD_INFO`] carries the label `source`, the tracker's
//! [`name`](crate::TrackerBuilder::name) (by default its slot), so one process can track
//! several databases.
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `bemi_build_info` | gauge | `version` | always 1; the bemi-core version |
//! | `bemi_tracker_state` | gauge | `source`, `state` | 1 for the state the tracker is in, 0 for the others: `connecting`, `streaming`, `standby` (another process streams from the slot; this one takes over when it stops), `stopped` |
//! | `bemi_changes_stored_total` | counter | `source`, `schema`, `table`, `operation` | changes the sink stored (acknowledged durable) |
//! | `bemi_transactions_total` | counter | `source` | source transactions handled, with or without tracked changes |
//! | `bemi_batch_write_duration_seconds` | histogram | `source` | how long the sink took to store a batch (its count is the number of batches) |
//! | `bemi_commit_to_stored_seconds` | histogram | `source` | for each stored change, from its transaction's commit on the source to its storing (its count is the number of changes) |
//! | `bemi_replication_lag_bytes` | gauge | `source` | WAL between the server's latest position and the position confirmed to the slot |
//! | `bemi_replication_lag_seconds` | gauge | `source` | how long ago the last stored change was committed, when it was stored; 0 while caught up |
//! | `bemi_slot_wal_status` | gauge | `source`, `wal_status` | 1 for the slot's `wal_status` (`reserved`, `extended`, `unreserved`, `lost`), 0 for the others |
//! | `bemi_slot_safe_wal_size_bytes` | gauge | `source` | WAL that can still be written before the slot is in danger of being invalidated (`+Inf` without `max_slot_wal_keep_size`) |
//! | `bemi_reconnects_total` | counter | `source` | sessions ended by an error worth retrying, then started again |
//! | `bemi_errors_total` | counter | `source`, `kind` | errors that ended a session or stopped the tracker, by [`ErrorKind::name`](crate::ErrorKind::name) |
//!
//! The slot's `wal_status` and safe size are read every 10 seconds while the tracker streams.
//! Seconds are measured between the source server's commit timestamps and the tracker's
//! clock, so clock skew between the two shows in them. `bemi_changes_stored_total` counts what
//! the sink acknowledged; in the rare replay a sink deduplicates (a batch whose writer died
//! after the destination committed it) a change is counted again but stored once.
//!
//! Histograms need buckets in most exporters; `metrics-exporter-prometheus` otherwise renders
//! summaries. [`SECONDS_BUCKETS`] suits both of the tracker's:
//!
//! ```no_run
//! # fn install() -> Result<(), Box<dyn std::error::Error>> {
//! use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
//!
//! let handle = PrometheusBuilder::new()
//!     .set_buckets_for_metric(
//!         Matcher::Suffix("_seconds".to_owned()),
//!         bemi_core::metrics::SECONDS_BUCKETS,
//!     )?
//!     .install_recorder()?;
//! bemi_core::metrics::describe();
//! // Serve `handle.render()` at /metrics; spawn trackers after the recorder is installed.
//! # drop(handle); Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{Counter, Gauge, Histogram, SharedString, Unit};

use crate::error::Error;
use crate::sink::Batch;

/// `bemi_build_info`.
pub const BUILD_INFO: &str = "bemi_build_info";
/// `bemi_tracker_state`.
pub const TRACKER_STATE: &str = "bemi_tracker_state";
/// `bemi_changes_stored_total`.
pub const CHANGES_STORED: &str = "bemi_changes_stored_total";
/// `bemi_transactions_total`.
pub const TRANSACTIONS: &str = "bemi_transactions_total";
/// `bemi_batch_write_duration_seconds`.
pub const BATCH_WRITE_DURATION: &str = "bemi_batch_write_duration_seconds";
/// `bemi_commit_to_stored_seconds`.
pub const COMMIT_TO_STORED: &str = "bemi_commit_to_stored_seconds";
/// `bemi_replication_lag_bytes`.
pub const REPLICATION_LAG_BYTES: &str = "bemi_replication_lag_bytes";
/// `bemi_replication_lag_seconds`.
pub const REPLICATION_LAG_SECONDS: &str = "bemi_replication_lag_seconds";
/// `bemi_slot_wal_status`.
pub const SLOT_WAL_STATUS: &str = "bemi_slot_wal_status";
/// `bemi_slot_safe_wal_size_bytes`.
pub const SLOT_SAFE_WAL_SIZE: &str = "bemi_slot_safe_wal_size_bytes";
/// `bemi_reconnects_total`.
pub const RECONNECTS: &str = "bemi_reconnects_total";
/// `bemi_errors_total`.
pub const ERRORS: &str = "bemi_errors_total";

/// Histogram buckets, in seconds, for the tracker's latency histograms: 1 ms to 5 minutes.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The values of `wal_status` in `pg_replication_slots`.
const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// Registers the metrics' descriptions and units with the installed recorder (Prometheus's
/// `# HELP` lines). Call it after installing the recorder; recording works without it.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the label version is bemi-core's version."
    );
    describe_gauge!(
        TRACKER_STATE,
        "1 for the tracker's state (connecting, streaming, standby, stopped), 0 for the others."
    );
    describe_counter!(
        CHANGES_STORED,
        Unit::Count,
        "Changes the sink stored, by table and operation."
    );
    describe_counter!(
        TRANSACTIONS,
        Unit::Count,
        "Source transactions handled, with or without tracked changes."
    );
    describe_histogram!(
        BATCH_WRITE_DURATION,
        Unit::Seconds,
        "How long the sink took to store a batch."
    );
    describe_histogram!(
        COMMIT_TO_STORED,
        Unit::Seconds,
        "For each stored change, from its transaction's commit on the source to its storing."
    );
    describe_gauge!(
        REPLICATION_LAG_BYTES,
        Unit::Bytes,
        "WAL between the server's latest position and the position confirmed to the slot."
    );
    describe_gauge!(
        REPLICATION_LAG_SECONDS,
        Unit::Seconds,
        "How long ago the last stored change was committed, when it was stored; 0 while caught up."
    );
    describe_gauge!(
        SLOT_WAL_STATUS,
        "1 for the replication slot's wal_status (reserved, extended, unreserved, lost), 0 for the others."
    );
    describe_gauge!(
        SLOT_SAFE_WAL_SIZE,
        Unit::Bytes,
        "WAL that can be written before the slot is in danger of being invalidated (+Inf: no limit)."
    );
    describe_counter!(
        RECONNECTS,
        Unit::Count,
        "Sessions ended by an error worth retrying, then started again."
    );
    describe_counter!(
        ERRORS,
        Unit::Count,
        "Errors that ended a session or stopped the tracker, by kind."
    );
}

/// Where a tracker is, as `bemi_tracker_state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Connecting,
    Streaming,
    Standby,
    Stopped,
}

impl State {
    const ALL: [State; 4] = [
        State::Connecting,
        State::Streaming,
        State::Standby,
        State::Stopped,
    ];

    fn label(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Streaming => "streaming",
            State::Standby => "standby",
            State::Stopped => "stopped",
        }
    }
}

/// One tracker's handles on its metrics, labeled with its source.
#[derive(Debug, Clone)]
pub(crate) struct Instruments {
    source: SharedString,
    transactions: Counter,
    reconnects: Counter,
    batch_write: Histogram,
    commit_to_stored: Histogram,
    lag_bytes: Gauge,
    lag_seconds: Gauge,
    safe_wal_size: Gauge,
}

impl Instruments {
    /// The handles of the tracker named `source`, from the recorder installed now.
    pub(crate) fn new(source: &str) -> Self {
        let source = SharedString::from(source.to_owned());
        let label = || [("source", source.clone())];
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Instruments {
            transactions: metrics::counter!(TRANSACTIONS, &label()),
            reconnects: metrics::counter!(RECONNECTS, &label()),
            batch_write: metrics::histogram!(BATCH_WRITE_DURATION, &label()),
            commit_to_stored: metrics::histogram!(COMMIT_TO_STORED, &label()),
            lag_bytes: metrics::gauge!(REPLICATION_LAG_BYTES, &label()),
            lag_seconds: metrics::gauge!(REPLICATION_LAG_SECONDS, &label()),
            safe_wal_size: metrics::gauge!(SLOT_SAFE_WAL_SIZE, &label()),
            source,
        }
    }

    pub(crate) fn state(&self, state: State) {
        for each in State::ALL {
            let value = if each == state { 1.0 } else { 0.0 };
            metrics::gauge!(TRACKER_STATE, "source" => self.source.clone(), "state" => each.label())
                .set(value);
        }
    }

    pub(crate) fn error(&self, error: &Error) {
        metrics::counter!(ERRORS, "source" => self.source.clone(), "kind" => error.kind().name())
            .increment(1);
    }

    pub(crate) fn reconnected(&self) {
        self.reconnects.increment(1);
    }

    pub(crate) fn transactions(&self, count: u64) {
        self.transactions.increment(count);
    }

    pub(crate) fn lag_bytes(&self, bytes: u64) {
        self.lag_bytes.set(bytes as f64);
    }

    /// Caught up: nothing received is waiting to be stored.
    pub(crate) fn caught_up(&self) {
        self.lag_seconds.set(0.0);
    }

    /// The slot's `wal_status` and `safe_wal_size` (`None`: no `max_slot_wal_keep_size`).
    pub(crate) fn slot(&self, wal_status: Option<&str>, safe_wal_size: Option<i64>) {
        for each in WAL_STATUSES {
            let value = if Some(each) == wal_status { 1.0 } else { 0.0 };
            metrics::gauge!(SLOT_WAL_STATUS, "source" => self.source.clone(), "wal_status" => each)
                .set(value);
        }
        self.safe_wal_size
            .set(safe_wal_size.map_or(f64::INFINITY, |bytes| bytes as f64));
    }

    /// A batch of `stored` was written in `took`, and stored at `now`.
    pub(crate) fn stored(&self, stored: &Stored, took: Duration, now: DateTime<Utc>) {
        self.batch_write.record(took.as_secs_f64());
        for ((schema, table, operation), count) in &stored.counts {
            metrics::counter!(
                CHANGES_STORED,
                "source" => self.source.clone(),
                "schema" => schema.clone(),
                "table" => table.clone(),
                "operation" => *operation
            )
            .increment(*count);
        }
        let seconds_since = |committed: DateTime<Utc>| {
            (now - committed)
                .to_std()
                .map_or(0.0, |elapsed| elapsed.as_secs_f64())
        };
        for (committed, changes) in &stored.commits {
            self.commit_to_stored
                .record_many(seconds_since(*committed), *changes);
        }
        if let Some((last, _)) = stored.commits.last() {
            self.lag_seconds.set(seconds_since(*last));
        }
    }
}

/// What a batch holds, for the metrics of storing it: changes by table and operation, and by
/// commit time.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    /// (schema, table, operation) and how many changes.
    counts: Vec<((String, String, &'static str), u64)>,
    /// Each transaction's commit time and how many of its changes, in commit order.
    commits: Vec<(DateTime<Utc>, usize)>,
}

impl Stored {
    pub(crate) fn of(batch: &Batch) -> Self {
        let mut counts = BTreeMap::<_, u64>::new();
        let mut commits: Vec<(DateTime<Utc>, usize)> = Vec::new();
        let mut last_commit = None;
        for change in &batch.changes {
            let key = (
                change.schema.as_str(),
                change.table.as_str(),
                change.operation.as_str(),
            );
            *counts.entry(key).or_default() += 1;
            match commits.last_mut() {
                Some((_, changes)) if last_commit == Some(change.commit_lsn) => *changes += 1,
                _ => commits.push((change.committed_at, 1)),
            }
            last_commit = Some(change.commit_lsn);
        }
        let counts = counts
            .into_iter()
            .map(|((schema, table, operation), count)| {
                ((schema.to_owned(), table.to_owned(), operation), count)
            })
            .collect();
        Stored { counts, commits }
    }

    /// How many changes.
    pub(crate) fn changes(&self) -> u64 {
        self.counts.iter().map(|(_, count)| count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Change, Operation};
    use crate::Lsn;

    fn change(table: &str, operation: Operation, commit: u64, committed_at: i64) -> Change {
        let at = DateTime::from_timestamp(committed_at, 0).unwrap();
        let mut change = Change::gap("db", Lsn(0), Lsn(commit), "test", at);
        change.schema = "public".to_owned();
        change.table = table.to_owned();
        change.operation = operation;
        change.commit_lsn = Lsn(commit);
        change
    }

    #[test]
    fn a_batch_counts_its_changes_by_table_and_operation_and_by_commit() {
        let batch = Batch::new(
            vec![
                change("orders", Operation::Create, 100, 1),
                change("orders", Operation::Create, 100, 1),
                change("items", Operation::Delete, 100, 1),
                change("orders", Operation::Update, 200, 2),
                // the first part of a transaction that a later batch completes
                change("orders", Operation::Create, 300, 3),
                change("orders", Operation::Create, 300, 3),
            ],
            Some(Lsn(210)),
        );
        let stored = Stored::of(&batch);
        assert_eq!(stored.changes(), 6);
        let counts: Vec<_> = stored
            .counts
            .iter()
            .map(|((schema, table, operation), count)| {
                (schema.as_str(), table.as_str(), *operation, *count)
            })
            .collect();
        assert_eq!(
            counts,
            [
                ("public", "items", "DELETE", 1),
                ("public", "orders", "CREATE", 4),
                ("public", "orders", "UPDATE", 1),
            ]
        );
        let commits: Vec<(i64, usize)> = stored
            .commits
            .iter()
            .map(|(at, changes)| (at.timestamp(), *changes))
            .collect();
        assert_eq!(commits, [(1, 3), (2, 1), (3, 2)]);
    }
}
