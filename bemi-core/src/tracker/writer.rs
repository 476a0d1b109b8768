//! The sink on its own task, so that decoding the next batch overlaps with storing this one,
//! and a sink that pipelines stores several at once.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::error::{Error, ErrorKind, Result};
use crate::metrics::{Instruments, Stored};
use crate::sink::{Batch, ChangeSink, Pending};
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

/// A batch the sink took and is storing.
struct InFlight {
    pending: Pending,
    durable: Option<Lsn>,
    stored: Stored,
    began: tokio::time::Instant,
}

impl<S: ChangeSink> Writer<S> {
    /// Starts the writer: it submits up to `concurrent` batches to the sink at once and
    /// acknowledges them in order, each once it is durable; it stops after a failure.
    pub(super) fn spawn(
        mut sink: S,
        write_timeout: Duration,
        concurrent: usize,
        metrics: Instruments,
    ) -> Self {
        let (jobs, mut queue) = mpsc::channel::<Batch>(1);
        let (ack, acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(
            async move {
                let mut in_flight = VecDeque::<InFlight>::new();
                let mut open = true;
                while open || !in_flight.is_empty() {
                    tokio::select! {
                        biased;
                        result = oldest(&mut in_flight) => {
                            let done = in_flight.pop_front().expect("the oldest batch");
                            if result.is_ok() {
                                metrics.stored(&done.stored, done.began.elapsed(), chrono::Utc::now());
                            }
                            let result = result.map(|()| (done.durable, done.stored.changes()));
                            let failed = result.is_err();
                            if ack.send(result).is_err() || failed {
                                break;
                            }
                        }
                        batch = queue.recv(), if open && in_flight.len() < concurrent => {
                            let Some(batch) = batch else {
                                open = false;
                                continue;
                            };
                            let (durable, stored) = (batch.durable_through, Stored::of(&batch));
                            let count = batch.changes.len();
                            let began = tokio::time::Instant::now();
                            match watched(sink.submit(batch), count, began, write_timeout).await {
                                Ok(pending) => in_flight.push_back(InFlight {
                                    pending: Box::pin(watched(pending, count, began, write_timeout)),
                                    durable,
                                    stored,
                                    began,
                                }),
                                Err(e) => {
                                    let _ = ack.send(Err(e));
                                    break;
                                }
                            }
                        }
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

/// The oldest batch in flight becoming durable (never, when none is).
async fn oldest(in_flight: &mut VecDeque<InFlight>) -> Result<()> {
    match in_flight.front_mut() {
        Some(batch) => (&mut batch.pending).await,
        None => std::future::pending().await,
    }
}

/// A step of storing a batch of `count` changes begun at `began`, warning while it is slow and
/// giving up `limit` after `began` with a transient error, so a destination that stopped
/// answering ends the session instead of hanging it.
async fn watched<T>(
    step: impl Future<Output = Result<T>>,
    count: usize,
    began: tokio::time::Instant,
    limit: Duration,
) -> Result<T> {
    tokio::pin!(step);
    loop {
        let left = limit.saturating_sub(began.elapsed());
        match tokio::time::timeout(left.min(SLOW_WRITE_WARNING), &mut step).await {
            Ok(result) => return result,
            Err(_) if began.elapsed() >= limit => {
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
                waited = ?began.elapsed(),
                "the sink is slow to store a batch"
            ),
        }
    }
}
