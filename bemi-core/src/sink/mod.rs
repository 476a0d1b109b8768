//! Where changes go: the [`ChangeSink`] trait and the sinks shipped with bemi-core.
//!
//! | sink | delivery | use |
//! | --- | --- | --- |
//! | [`PostgresSink`] | exactly once | the Bemi-compatible `changes` table, in the tracked database or another one |
//! | [`ChannelSink`] | once per run; may repeat after a restart, and loses what is still in the channel if the process dies | changes as a `Stream` inside the application |
//! | [`JsonLinesSink`] | at least once across restarts, as durable as the writer's `flush` | one JSON object per line to any writer |
//! | [`JsonLinesFileSink`] | exactly once (its position in `<file>.position`), fsynced per batch | one JSON object per line to a file |
//! | `NatsSink` (feature `nats`) | once within the stream's duplicate window, keyed for consumers beyond it | a NATS JetStream stream shared by many consumers |

mod channel;
mod jsonl;
mod jsonl_file;
#[cfg(feature = "nats")]
mod nats;
mod postgres;

use async_trait::async_trait;

pub use channel::{ChangeStream, ChannelSink};
pub use jsonl::JsonLinesSink;
pub use jsonl_file::JsonLinesFileSink;
#[cfg(feature = "nats")]
pub use nats::{
    subject_token, NatsChange, NatsOptions, NatsSink, HEADER_COMMIT_LSN, HEADER_ORDINAL,
    HEADER_SEQUENCE, HEADER_SLOT, HEADER_SYSTEM_ID,
};
pub use postgres::PostgresSink;

use crate::change::Change;
use crate::error::Result;
use crate::Lsn;

/// The source a tracker streams from, as the sink sees it when it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceInfo {
    /// The source cluster's system identifier (`IDENTIFY_SYSTEM`).
    pub system_id: String,
    /// The source database.
    pub database: String,
    /// The replication slot: the key under which a sink keeps its durable position.
    pub slot: String,
}

impl SourceInfo {
    /// The source `system_id` (as `IDENTIFY_SYSTEM` prints it), `database` and `slot`; for
    /// opening a sink outside a tracker, in a sink's own tests for instance.
    pub fn new(
        system_id: impl Into<String>,
        database: impl Into<String>,
        slot: impl Into<String>,
    ) -> Self {
        SourceInfo {
            system_id: system_id.into(),
            database: database.into(),
            slot: slot.into(),
        }
    }
}

/// What a sink reports when it opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SinkStart {
    /// The end LSN of the last transaction the sink stored durably, if it keeps one. The
    /// tracker resumes there and drops replays of anything at or before it.
    pub durable: Option<Lsn>,
    /// Tables of the source database the sink itself writes (`schema`, `table`); the tracker
    /// never records their changes, so the sink's writes do not feed back into itself.
    pub ignore_tables: Vec<(String, String)>,
}

impl SinkStart {
    /// A start at `durable`, with no tables to ignore.
    pub fn at(durable: Option<Lsn>) -> Self {
        SinkStart {
            durable,
            ignore_tables: Vec::new(),
        }
    }
}

/// Changes handed to a sink in one call.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Batch {
    /// Changes in commit order; within a transaction in stream order.
    pub changes: Vec<Change>,
    /// When set, every transaction whose commit ends at or before this LSN is complete in this
    /// batch and the ones before it, and this is the position to store with them.
    pub durable_through: Option<Lsn>,
}

impl Batch {
    /// A batch of `changes` that completes every transaction up to `durable_through`, if set.
    pub fn new(changes: Vec<Change>, durable_through: Option<Lsn>) -> Self {
        Batch {
            changes,
            durable_through,
        }
    }
}

/// The extension point of the tracker: stores changes.
///
/// # Contract
///
/// * **What a call receives.** [`write`](Self::write) receives changes in commit order of their
///   transactions, and each transaction's changes in stream order. A large transaction may be
///   split across several batches; [`Batch::durable_through`] says when everything up to a
///   commit is complete.
/// * **Durable.** When `write` returns `Ok`, the batch and `durable_through` must survive a
///   crash of the tracker and of the sink's host (committed, fsynced, acknowledged). Only then
///   does the tracker confirm that position to the replication slot, which lets the server
///   discard the WAL. A sink that does not keep a position returns `None` from
///   [`open`](Self::open); the tracker then resumes from the slot's own position, which makes
///   delivery at least once.
/// * **Idempotency.** After a crash or reconnect, changes after the last durable position are
///   written again, with the same key [`Change::commit_lsn`] + [`Change::ordinal`]. A sink that
///   promises exactly once ignores a change whose key it already holds.
/// * **Concurrency.** Calls are sequential (`&mut self`): `open`, then `write`s (or
///   [`submit`](Self::submit)s), until the tracker stops or reconnects, when `open` is called
///   again. The tracker keeps answering the server while a call is slow.
/// * **Pipelining.** The tracker hands batches to [`submit`](Self::submit), which may return
///   before the batch is durable, with a [`Pending`] that completes when it is: the tracker then
///   submits the next batch while this one is stored (up to
///   [`concurrent_writes`](crate::TrackerBuilder::concurrent_writes) at once) and confirms
///   positions in submission order. A sink that pipelines must make batches durable in order:
///   a position it keeps must never cover a batch that is not stored, and when a batch fails,
///   no later one may record its position. By default `submit` is `write`: one batch at a
///   time.
/// * **Errors.** An error whose [`Error::is_transient`](crate::Error::is_transient) is true
///   makes the tracker reconnect with backoff and replay from the durable position; any other
///   error stops the tracker. A sink says which of its own errors are worth retrying with
///   [`Error::with_transient`](crate::Error::with_transient). A write that takes longer than
///   the tracker's [`write_timeout`](crate::TrackerBuilder::write_timeout) is abandoned (its
///   future dropped) and retried on a new session.
#[async_trait]
pub trait ChangeSink: Send + 'static {
    /// Prepares the sink (creates tables, connects) and returns its durable position.
    async fn open(&mut self, source: &SourceInfo) -> Result<SinkStart>;

    /// Stores a batch; see the trait's contract.
    async fn write(&mut self, batch: Batch) -> Result<()>;

    /// Starts storing a batch and returns what completes once it is durable; see the trait's
    /// contract (pipelining). The default writes it before returning.
    async fn submit(&mut self, batch: Batch) -> Result<Pending> {
        self.write(batch).await?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }
}

/// A submitted batch: completes with `Ok` once the batch is durable, or with the error that
/// kept it from being stored.
pub type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

#[async_trait]
impl<S: ChangeSink + ?Sized> ChangeSink for Box<S> {
    async fn open(&mut self, source: &SourceInfo) -> Result<SinkStart> {
        (**self).open(source).await
    }

    async fn write(&mut self, batch: Batch) -> Result<()> {
        (**self).write(batch).await
    }

    async fn submit(&mut self, batch: Batch) -> Result<Pending> {
        (**self).submit(batch).await
    }
}
