//! The tracker's bookkeeping of positions, as a state machine without I/O.
//!
//! The session feeds it what happens (changes stitched, a commit, a keepalive, the writer's
//! acknowledgements) and asks it what to do (hand a batch to the writer, confirm a position).
//! Its rules are the tracker's whole safety argument, so each has a unit test:
//!
//! 1. A batch carries the end LSN of the last transaction it completes (`durable_through`).
//! 2. A transaction split across batches is completed by a batch of its own (empty if need
//!    be) carrying its end, so its position is never recorded before all its changes.
//! 3. A position reached with nothing to store (a transaction without tracked changes, an
//!    idle keepalive) waits and is recorded at most once per record interval, or at once when
//!    forced (shutdown).
//! 4. A keepalive's position counts only when nothing is in flight: no open transaction, no
//!    buffered or unacknowledged batch, no changes handed on without their commit.
//! 5. A position is confirmed to the slot only when the writer acknowledges it durable, so the
//!    slot never passes what the sink recorded.
//! 6. Positions never go backwards.
//! 7. A position counts as stored (for read-your-writes) when every transaction that committed
//!    before it is durable in the sink or had nothing to store: an acknowledged position, or
//!    the last position the stream reached while nothing is buffered or in flight.

use std::time::Duration;

use tokio::time::Instant;

use crate::change::Change;
use crate::sink::Batch;
use crate::Lsn;

/// Bounds of a batch and how often positions without changes are recorded.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) batch_size: usize,
    pub(super) batch_bytes: usize,
    pub(super) record_interval: Duration,
    /// How long the oldest buffered change waits for company before an idle writer gets it.
    pub(super) linger: Duration,
}

/// See the [module docs](self).
#[derive(Debug)]
pub(super) struct Ledger {
    limits: Limits,
    batch: Batch,
    /// Bytes of row and context JSON in `batch`.
    batch_bytes: usize,
    /// When the oldest change of `batch` was buffered.
    oldest: Option<Instant>,
    /// Changes were handed on without a position recorded after them.
    unrecorded: bool,
    /// A position reached with nothing to store, not yet handed on to be recorded.
    pending: Option<Lsn>,
    /// When a position was last handed on to be recorded.
    recorded_at: Instant,
    /// Batches handed on and not yet acknowledged.
    in_flight: usize,
    /// The highest position confirmed.
    confirmed: Lsn,
    /// The highest position the stream reached: a keepalive's, or a commit's end.
    reached: Lsn,
    /// The highest position `reached` while nothing waited to be written.
    settled: Lsn,
}

impl Ledger {
    pub(super) fn new(limits: Limits, now: Instant) -> Self {
        Ledger {
            limits,
            batch: Batch::default(),
            batch_bytes: 0,
            oldest: None,
            unrecorded: false,
            pending: None,
            recorded_at: now,
            in_flight: 0,
            confirmed: Lsn::ZERO,
            reached: Lsn::ZERO,
            settled: Lsn::ZERO,
        }
    }

    /// The buffer stitched changes are appended to.
    pub(super) fn changes(&mut self) -> &mut Vec<Change> {
        &mut self.batch.changes
    }

    /// Accounts for the changes appended since `from` (an index into
    /// [`changes`](Self::changes)) and for the commit that ended a transaction, if one did.
    /// Returns whether that moved the [`stored`](Self::stored) position: a transaction with
    /// nothing to store, committed while nothing waits to be stored.
    pub(super) fn stitched(&mut self, from: usize, commit_end: Option<Lsn>) -> bool {
        let stored = self.stored();
        let (earlier, added) = self.batch.changes.split_at(from);
        self.batch_bytes += weight(added, earlier.last());
        self.unrecorded |= !added.is_empty();
        if earlier.is_empty() && !added.is_empty() {
            self.oldest = Some(Instant::now());
        }
        if let Some(end) = commit_end {
            self.batch.durable_through = Some(end);
            self.reached = self.reached.max(end);
        }
        self.settle();
        self.stored() > stored
    }

    /// A keepalive at `wal_end`; `in_transaction` tells whether a transaction is open.
    /// Returns whether the tracker is idle: everything received is stored or has nothing to
    /// store.
    pub(super) fn keepalive(&mut self, wal_end: Lsn, in_transaction: bool) -> bool {
        // The server sends a keepalive's position only once every transaction that committed
        // before it was sent whole.
        self.reached = self.reached.max(wal_end);
        self.settle();
        let idle = !in_transaction
            && self.in_flight == 0
            && self.batch.changes.is_empty()
            && self.batch.durable_through.is_none()
            && !self.unrecorded;
        if idle {
            self.pending = self.pending.max(Some(wal_end));
        }
        idle
    }

    /// Whether the buffered changes complete a transaction (or end one split across batches):
    /// worth handing on as soon as nothing more waits in the stream.
    pub(super) fn has_commit(&self) -> bool {
        self.batch.durable_through.is_some() && (!self.batch.changes.is_empty() || self.unrecorded)
    }

    /// When the buffered changes are due to an idle writer: `None` while a batch is in flight
    /// or no transaction is complete; else once the oldest has lingered its time.
    pub(super) fn due(&self) -> Option<Instant> {
        if self.in_flight > 0 || !self.has_commit() {
            return None;
        }
        Some(
            self.oldest
                .map_or_else(Instant::now, |oldest| oldest + self.limits.linger),
        )
    }

    /// Whether the batch is full (by count or bytes).
    pub(super) fn is_full(&self) -> bool {
        self.batch.changes.len() >= self.limits.batch_size
            || self.batch_bytes >= self.limits.batch_bytes
    }

    /// The batch to hand to the writer now, if any: buffered changes with the position they
    /// complete, or a position without changes that is due to be recorded (`force`d, or a
    /// record interval after the last one). Counts it as in flight.
    pub(super) fn take_batch(&mut self, now: Instant, force: bool) -> Option<Batch> {
        let durable = self.batch.durable_through;
        let batch = if !self.batch.changes.is_empty() || (durable.is_some() && self.unrecorded) {
            self.unrecorded = durable.is_none();
            self.batch_bytes = 0;
            self.oldest = None;
            if durable.is_some() {
                self.pending = self.pending.filter(|pending| Some(*pending) > durable);
            }
            std::mem::take(&mut self.batch)
        } else {
            self.pending = self.pending.max(self.batch.durable_through.take());
            let due = force || now.duration_since(self.recorded_at) >= self.limits.record_interval;
            let lsn = self.pending.filter(|_| due)?;
            self.pending = None;
            Batch::new(Vec::new(), Some(lsn))
        };
        if batch.durable_through.is_some() {
            self.recorded_at = now;
        }
        self.in_flight += 1;
        Some(batch)
    }

    /// The position every transaction committed before is stored, or had nothing to store
    /// (rule 7): what the stream reached when nothing waits to be written, else what the writer
    /// acknowledged.
    pub(super) fn stored(&self) -> Lsn {
        self.confirmed.max(self.settled)
    }

    /// Counts what the stream reached as stored when nothing waits to be written.
    fn settle(&mut self) {
        if self.in_flight == 0 && self.batch.changes.is_empty() && !self.unrecorded {
            self.settled = self.settled.max(self.reached);
        }
    }

    /// Whether batches are in flight.
    pub(super) fn in_flight(&self) -> bool {
        self.in_flight > 0
    }

    /// The writer stored the oldest batch in flight, durable through `durable`. Returns the
    /// position to confirm to the slot, if it moved.
    pub(super) fn acknowledged(&mut self, durable: Option<Lsn>) -> Option<Lsn> {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.settle();
        let lsn = durable.filter(|lsn| *lsn > self.confirmed)?;
        self.confirmed = lsn;
        Some(lsn)
    }
}

/// The bytes `changes` add to a batch: their rows, and each context once per run of changes
/// that share it (sinks send a transaction's context once, not per row).
fn weight(changes: &[Change], previous: Option<&Change>) -> usize {
    let mut last = previous.map(|c| &c.context);
    let mut bytes = 0;
    for change in changes {
        bytes += change.before.as_json().len() + change.after.as_json().len();
        if last != Some(&change.context) {
            bytes += change.context.as_str().len();
        }
        last = Some(&change.context);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        batch_size: 3,
        batch_bytes: 1_000_000,
        record_interval: Duration::from_secs(10),
        linger: Duration::ZERO,
    };

    fn change(commit: u64, ordinal: u32) -> Change {
        // A record with chosen key positions; its content does not matter here.
        let mut change = Change::gap("db", Lsn(0), Lsn(commit), "test", chrono::Utc::now());
        change.ordinal = ordinal;
        change
    }

    /// Stitches `n` changes of the transaction committing at `commit`, and its commit when
    /// `end` is given.
    fn stitch(ledger: &mut Ledger, commit: u64, n: u32, end: Option<u64>) {
        let from = ledger.changes().len();
        for ordinal in 0..n {
            ledger.changes().push(change(commit, ordinal));
        }
        ledger.stitched(from, end.map(Lsn));
    }

    fn start() -> (Ledger, Instant) {
        let now = Instant::now();
        (Ledger::new(LIMITS, now), now)
    }

    #[test]
    fn a_batch_carries_the_end_of_the_last_transaction_it_completes() {
        let (mut ledger, now) = start();
        stitch(&mut ledger, 100, 1, Some(110));
        stitch(&mut ledger, 200, 1, Some(210));
        let batch = ledger.take_batch(now, false).unwrap();
        assert_eq!(batch.changes.len(), 2);
        assert_eq!(batch.durable_through, Some(Lsn(210)));
        assert_eq!(ledger.acknowledged(batch.durable_through), Some(Lsn(210)));
    }

    #[tokio::test(start_paused = true)]
    async fn committed_changes_linger_for_company_while_no_batch_is_in_flight() {
        let linger = Duration::from_millis(5);
        let mut ledger = Ledger::new(Limits { linger, ..LIMITS }, Instant::now());
        assert_eq!(ledger.due(), None, "nothing buffered");
        let first = Instant::now();
        stitch(&mut ledger, 100, 1, None);
        assert_eq!(ledger.due(), None, "the transaction is open");
        tokio::time::advance(Duration::from_millis(3)).await;
        stitch(&mut ledger, 100, 0, Some(110));
        assert_eq!(
            ledger.due(),
            Some(first + linger),
            "counted from the oldest change"
        );
        stitch(&mut ledger, 200, 1, Some(210));
        assert_eq!(
            ledger.due(),
            Some(first + linger),
            "a later one does not postpone it"
        );
        let batch = ledger.take_batch(Instant::now(), false).unwrap();
        assert_eq!(batch.changes.len(), 2);
        assert_eq!(ledger.due(), None, "handed on");
        tokio::time::advance(Duration::from_millis(4)).await;
        let second = Instant::now();
        stitch(&mut ledger, 300, 1, Some(310));
        assert_eq!(ledger.due(), None, "a batch in flight");
        ledger.acknowledged(batch.durable_through);
        assert_eq!(ledger.due(), Some(second + linger));
        // the end of a transaction split across batches has no change left to wait with
        let rest = ledger.take_batch(Instant::now(), false).unwrap();
        ledger.acknowledged(rest.durable_through);
        stitch(&mut ledger, 400, 3, None);
        let part = ledger.take_batch(Instant::now(), false).unwrap();
        ledger.acknowledged(part.durable_through);
        stitch(&mut ledger, 400, 0, Some(410));
        assert_eq!(ledger.due(), Some(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn without_linger_a_commit_is_due_at_once() {
        let (mut ledger, _) = start();
        stitch(&mut ledger, 100, 1, Some(110));
        assert_eq!(ledger.due(), Some(Instant::now()));
    }

    #[test]
    fn a_split_transaction_is_recorded_only_with_its_last_part() {
        let (mut ledger, now) = start();
        stitch(&mut ledger, 100, 3, None);
        assert!(ledger.is_full());
        let first = ledger.take_batch(now, false).unwrap();
        assert_eq!(
            first.durable_through, None,
            "the transaction is not complete"
        );
        assert_eq!(ledger.acknowledged(first.durable_through), None);
        // the commit arrives with no more changes: its position still needs a write
        stitch(&mut ledger, 100, 0, Some(110));
        let last = ledger.take_batch(now, false).unwrap();
        assert!(last.changes.is_empty());
        assert_eq!(last.durable_through, Some(Lsn(110)));
        assert_eq!(ledger.acknowledged(last.durable_through), Some(Lsn(110)));
    }

    #[test]
    fn only_changes_a_commit_completes_are_worth_handing_on_early() {
        let (mut ledger, now) = start();
        assert!(!ledger.has_commit(), "nothing buffered");
        stitch(&mut ledger, 100, 2, None);
        assert!(!ledger.has_commit(), "the transaction is open");
        stitch(&mut ledger, 100, 0, Some(110));
        assert!(ledger.has_commit());
        let batch = ledger.take_batch(now, false).unwrap();
        assert_eq!(batch.durable_through, Some(Lsn(110)));
        assert!(!ledger.has_commit(), "handed on");
        // a transaction without tracked changes waits for the record interval
        stitch(&mut ledger, 200, 0, Some(210));
        assert!(!ledger.has_commit());
        let record = ledger.take_batch(now, true).unwrap();
        ledger.acknowledged(record.durable_through);
        // the end of a transaction split across batches is worth a write of its own
        stitch(&mut ledger, 300, 3, None);
        assert!(!ledger.has_commit());
        let part = ledger.take_batch(now, false).unwrap();
        assert_eq!(part.durable_through, None);
        stitch(&mut ledger, 300, 0, Some(310));
        assert!(ledger.has_commit());
        let end = ledger.take_batch(now, false).unwrap();
        assert_eq!(
            (end.changes.len(), end.durable_through),
            (0, Some(Lsn(310)))
        );
    }

    #[test]
    fn a_position_without_changes_waits_for_the_record_interval_or_a_forced_flush() {
        let (mut ledger, now) = start();
        stitch(&mut ledger, 100, 0, Some(110));
        assert!(ledger.take_batch(now, false).is_none(), "not due yet");
        assert!(!ledger.in_flight());
        let later = now + LIMITS.record_interval;
        let batch = ledger.take_batch(later, false).unwrap();
        assert_eq!(
            (batch.changes.len(), batch.durable_through),
            (0, Some(Lsn(110)))
        );
        assert_eq!(ledger.acknowledged(batch.durable_through), Some(Lsn(110)));

        stitch(&mut ledger, 200, 0, Some(210));
        assert!(
            ledger.take_batch(later, false).is_none(),
            "recorded just now"
        );
        let forced = ledger.take_batch(later, true).unwrap();
        assert_eq!(forced.durable_through, Some(Lsn(210)));
    }

    #[test]
    fn a_keepalive_counts_only_when_nothing_is_in_flight() {
        let (mut ledger, now) = start();
        // an open transaction
        assert!(!ledger.keepalive(Lsn(500), true));
        assert!(ledger.take_batch(now, true).is_none());
        // buffered changes
        stitch(&mut ledger, 100, 1, Some(110));
        assert!(!ledger.keepalive(Lsn(600), false));
        let batch = ledger.take_batch(now, true).unwrap();
        assert_eq!(batch.durable_through, Some(Lsn(110)));
        // a batch not yet acknowledged
        assert!(!ledger.keepalive(Lsn(700), false));
        assert!(ledger.take_batch(now, true).is_none());
        ledger.acknowledged(batch.durable_through);
        // changes handed on without their commit
        stitch(&mut ledger, 200, 3, None);
        let part = ledger.take_batch(now, false).unwrap();
        ledger.acknowledged(part.durable_through);
        assert!(!ledger.keepalive(Lsn(800), false));
        assert!(ledger.take_batch(now, true).is_none());
        // idle at last
        stitch(&mut ledger, 200, 0, Some(210));
        let end = ledger.take_batch(now, true).unwrap();
        ledger.acknowledged(end.durable_through);
        assert!(ledger.keepalive(Lsn(900), false));
        let idle = ledger.take_batch(now, true).unwrap();
        assert_eq!(
            (idle.changes.len(), idle.durable_through),
            (0, Some(Lsn(900)))
        );
    }

    #[test]
    fn only_acknowledged_positions_are_confirmed_and_never_backwards() {
        let (mut ledger, now) = start();
        assert!(ledger.keepalive(Lsn(500), false));
        assert!(ledger.take_batch(now, false).is_none());
        let batch = ledger.take_batch(now, true).unwrap();
        // handed on, but nothing is confirmed until the writer says it is durable
        assert_eq!(batch.durable_through, Some(Lsn(500)));
        assert_eq!(ledger.acknowledged(Some(Lsn(500))), Some(Lsn(500)));
        assert_eq!(ledger.acknowledged(Some(Lsn(400))), None);
        assert_eq!(ledger.acknowledged(None), None);
    }

    #[test]
    fn a_batch_that_completes_a_later_transaction_covers_a_pending_position() {
        let (mut ledger, now) = start();
        stitch(&mut ledger, 100, 0, Some(110));
        assert!(ledger.take_batch(now, false).is_none());
        stitch(&mut ledger, 200, 1, Some(210));
        let batch = ledger.take_batch(now, false).unwrap();
        assert_eq!(batch.durable_through, Some(Lsn(210)));
        ledger.acknowledged(batch.durable_through);
        assert!(
            ledger.take_batch(now, true).is_none(),
            "nothing left to record"
        );
    }

    #[test]
    fn a_position_is_stored_once_everything_before_it_is_written() {
        let (mut ledger, now) = start();
        // a transaction with changes: its end is stored only when acknowledged
        stitch(&mut ledger, 100, 1, Some(110));
        ledger.keepalive(Lsn(120), false);
        assert_eq!(ledger.stored(), Lsn::ZERO, "buffered");
        let batch = ledger.take_batch(now, false).unwrap();
        ledger.keepalive(Lsn(130), false);
        assert_eq!(ledger.stored(), Lsn::ZERO, "in flight");
        ledger.acknowledged(batch.durable_through);
        // the keepalives came after the transaction was sent whole: they count now
        assert_eq!(ledger.stored(), Lsn(130));
        // a transaction without tracked changes needs no write
        stitch(&mut ledger, 200, 0, Some(210));
        assert_eq!(ledger.stored(), Lsn(210));
        let record = ledger.take_batch(now, true).unwrap();
        ledger.acknowledged(record.durable_through);
        // a part of a transaction handed on without its commit holds the position back
        stitch(&mut ledger, 300, 3, None);
        let part = ledger.take_batch(now, false).unwrap();
        ledger.acknowledged(part.durable_through);
        ledger.keepalive(Lsn(305), true);
        assert_eq!(ledger.stored(), Lsn(210));
        stitch(&mut ledger, 300, 0, Some(310));
        let end = ledger.take_batch(now, false).unwrap();
        assert_eq!(ledger.stored(), Lsn(210), "the end is not written yet");
        ledger.acknowledged(end.durable_through);
        assert_eq!(ledger.stored(), Lsn(310));
    }

    #[test]
    fn batches_are_bounded_by_bytes_and_contexts_count_once() {
        let now = Instant::now();
        let limits = Limits {
            batch_bytes: 100,
            ..LIMITS
        };
        let mut ledger = Ledger::new(limits, now);
        // gap records share nothing but their size: context of ~70 bytes each
        stitch(&mut ledger, 100, 1, Some(110));
        assert!(!ledger.is_full());
        stitch(&mut ledger, 200, 1, Some(210));
        assert!(ledger.is_full(), "two distinct contexts pass 100 bytes");
        let one = change(300, 0);
        let rows_and_context = 3 * "{}{}".len() + one.context.as_str().len();
        let shared = vec![one.clone(), one.clone(), one];
        assert_eq!(
            weight(&shared, None),
            rows_and_context,
            "one context for the run"
        );
    }
}
