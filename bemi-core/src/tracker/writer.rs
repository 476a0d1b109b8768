//! The sink on its own task, so that decoding the next batch overlaps with storing this one.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::error::{Error, ErrorKind, Result};
use crate::metrics::{Instruments, Stored};
use crate::sink::{Batch, ChangeSink};
use crate::Lsn;

/// What the writer reports per batch: the position now durable, and how many changes it stored.
pub(super) type Ack = Result<(Option<Lsn>, u64)>;

/// The sink on its own task, so that decoding the next batch overlaps with storing this one.
pub(super) struct Writer<S> {
    pub(super) jobs: mpsc::Sender<Batch>,
    pub(super) acks: mpsc::UnboundedReceiver<Ack>,
    task: JoinHandle<S>,
}

/// How often a slow write is reported while it goes on.
const SLOW_WRITE_WARNING: Duration = Duration::from_secs(15);

impl<S: ChangeSink> Writer<S> {
    pub(super) fn spawn(mut sink: S, write_timeout: Duration, metrics: Instruments) -> Self {
        let (jobs, mut queue) = mpsc::channel::<Batch>(1);
        let (ack, acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(
            async move {
                while let Some(batch) = queue.recv().await {
                    let (durable, stored) = (batch.durable_through, Stored::of(&batch));
                    let began = tokio::time::Instant::now();
                    let result = write_watched(&mut sink, batch, write_timeout).await;
                    if result.is_ok() {
                        metrics.stored(&stored, began.elapsed(), chrono::Utc::now());
                    }
                    let result = result.map(|()| (durable, stored.changes()));
                    let failed = result.is_err();
                    if ack.send(result).is_err() || failed {
                        break;
                    }
                }
                sink
            }
            .in_current_span(),
        );
        Writer { jobs, acks, task }
    }

    /// Why the writer stopped: the error it acknowledged last (it stops after a failed write).
    pub(super) fn failure(&mut self) -> Error {
        while let Ok(ack) = self.acks.try_recv() {
            if let Err(e) = ack {
                return e;
            }
        }
        Error::new(ErrorKind::Sink, "the sink's writer stopped unexpectedly")
    }

    /// Stops the writer after its current batch and takes the sink back, waiting at most
    /// `limit` (a write on a hung destination is abandoned then; nothing was confirmed for it).
    pub(super) async fn finish(self, limit: Duration) -> Result<S> {
        drop(self.jobs);
        let mut task = self.task;
        match tokio::time::timeout(limit, &mut task).await {
            Ok(joined) => joined.map_err(|e| {
                Error::new(ErrorKind::Sink, "the sink panicked while writing").with_source(e)
            }),
            Err(_) => {
                task.abort();
                Err(Error::new(
                    ErrorKind::Sink,
                    format!(
                        "the sink did not finish its write within {limit:?}; stopped without it \
                         (nothing unconfirmed is lost: it is streamed again at the next start)"
                    ),
                ))
            }
        }
    }
}

/// Writes a batch, warning while it is slow and giving up after `limit` with a transient
/// error, so a destination that stopped answering ends the session instead of hanging it.
async fn write_watched<S: ChangeSink>(sink: &mut S, batch: Batch, limit: Duration) -> Result<()> {
    let count = batch.changes.len();
    let started = tokio::time::Instant::now();
    let write = sink.write(batch);
    tokio::pin!(write);
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left.min(SLOW_WRITE_WARNING), &mut write).await {
            Ok(result) => return result,
            Err(_) if started.elapsed() >= limit => {
                return Err(Error::new(
                    ErrorKind::Connect,
                    format!(
                        "the sink did not store a batch of {count} changes within {limit:?}; is \
                         the destination reachable and answering?"
                    ),
                ))
            }
            Err(_) => tracing::warn!(
                changes = count,
                waited = ?started.elapsed(),
                "the sink is slow to store a batch"
            ),
        }
    }
}
