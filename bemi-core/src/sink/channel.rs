//! A sink that hands changes to the application as a `Stream`.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Batch, ChangeSink, SinkStart, SourceInfo};
use crate::change::Change;
use crate::error::{Error, ErrorKind, Result};

/// Sends changes into a bounded channel; the application reads them from the [`ChangeStream`].
///
/// A change counts as stored once it is in the channel, so the slot moves on as changes enter
/// it: if the process dies, the changes still in the channel (up to `capacity`) and any the
/// application had not finished with are not sent again. After a restart the tracker resumes
/// from the slot's confirmed position, which may lag, so changes can also repeat (deduplicate
/// by `commit_lsn` + `ordinal`). For an audit trail that survives crashes use
/// [`PostgresSink`](super::PostgresSink). When the channel is full, the tracker waits
/// (back-pressure).
///
/// ```no_run
/// use bemi_core::sink::ChannelSink;
/// use futures_util::StreamExt as _;
///
/// # async fn run(options: bemi_core::ConnectOptions) -> bemi_core::Result<()> {
/// let (sink, mut changes) = ChannelSink::new(1024);
/// let tracker = bemi_core::Tracker::builder(options, sink).spawn();
/// while let Some(change) = changes.next().await {
///     tracing::info!(table = %change.table, operation = %change.operation, "changed");
/// }
/// tracker.shutdown().await
/// # }
/// ```
#[derive(Debug)]
pub struct ChannelSink {
    tx: mpsc::Sender<Change>,
}

/// The receiving end of a [`ChannelSink`]: a `Stream` of changes.
#[derive(Debug)]
pub struct ChangeStream {
    rx: mpsc::Receiver<Change>,
}

impl ChannelSink {
    /// A sink and its stream, holding up to `capacity` changes in between.
    pub fn new(capacity: usize) -> (ChannelSink, ChangeStream) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (ChannelSink { tx }, ChangeStream { rx })
    }
}

impl ChangeStream {
    /// The next change; `None` once the tracker has stopped and every change was received.
    pub async fn recv(&mut self) -> Option<Change> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for ChangeStream {
    type Item = Change;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        self.rx.poll_recv(cx)
    }
}

#[async_trait]
impl ChangeSink for ChannelSink {
    async fn open(&mut self, _source: &SourceInfo) -> Result<SinkStart> {
        Ok(SinkStart::at(None))
    }

    async fn write(&mut self, batch: Batch) -> Result<()> {
        for change in batch.changes {
            self.tx.send(change).await.map_err(|_| {
                Error::new(
                    ErrorKind::Sink,
                    "the ChangeStream of this ChannelSink was dropped; keep it alive while the \
                     tracker runs",
                )
            })?;
        }
        Ok(())
    }
}
