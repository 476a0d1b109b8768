//! The CopyBoth phase: WAL data in, standby status updates out.
//!
//! Reading and feedback are independent. A background task owns the socket's write half and
//! sends a standby status update on a timer, when the server asks for one, and when the caller
//! confirms a new position. So a consumer that reads slowly (a slow sink) still answers the
//! server within `wal_sender_timeout`, and the server does not drop the connection.
//! See <https://www.postgresql.org/docs/current/protocol-replication.html>.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncWriteExt as _, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::connection::{server_error, Incoming, Reader};
use super::transport::Transport;
use crate::error::{Error, Result};
use crate::pgoutput::{self, PgTimestamp};
use crate::Lsn;

const XLOG_DATA_TAG: u8 = b'w';
const PRIMARY_KEEPALIVE_TAG: u8 = b'k';
const STANDBY_STATUS_UPDATE_TAG: u8 = b'r';

/// One event of the replication stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ReplicationEvent {
    /// A pgoutput message (XLogData).
    Data {
        /// Where the WAL data of this message starts (0 for some messages, such as Commit).
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// When the server sent it.
        send_time: PgTimestamp,
        /// The decoded message.
        message: pgoutput::Message,
    },
    /// A primary keepalive. The stream has already asked its feedback task to answer when
    /// `reply_requested` is set.
    Keepalive {
        /// The server's current end of WAL. When no transaction is in flight, everything up to
        /// here has been sent, and confirming it keeps an idle slot from pinning WAL.
        wal_end: Lsn,
        /// When the server sent it.
        send_time: PgTimestamp,
        /// Whether the server asked for an immediate reply.
        reply_requested: bool,
    },
}

/// State shared between the stream, its feedback task and [`Feedback`] handles.
#[derive(Debug)]
struct Shared {
    /// The highest WAL end seen (reported as "written").
    received: AtomicU64,
    /// The position the caller made durable (reported as "flushed" and "applied").
    confirmed: AtomicU64,
    /// Wakes the feedback task to send an update now.
    wake: Notify,
    closed: AtomicBool,
}

/// Reports durable progress to the server; cheap to clone and usable from any task.
#[derive(Debug, Clone)]
pub struct Feedback {
    shared: Arc<Shared>,
}

impl Feedback {
    /// Confirms that everything up to `lsn` is durable at the consumer, so the server may
    /// discard WAL before it (`confirmed_flush_lsn`). Pass the end LSN of a Commit, never its
    /// commit LSN. Positions never go backwards: a smaller `lsn` is ignored. The update is sent
    /// at once.
    pub fn confirm(&self, lsn: Lsn) {
        let previous = self.shared.confirmed.fetch_max(lsn.0, Ordering::AcqRel);
        if lsn.0 > previous {
            self.shared.wake.notify_one();
        }
    }

    /// The last position confirmed.
    pub fn confirmed(&self) -> Lsn {
        Lsn(self.shared.confirmed.load(Ordering::Acquire))
    }

    /// The highest WAL position the server has reported.
    pub fn received(&self) -> Lsn {
        Lsn(self.shared.received.load(Ordering::Acquire))
    }
}

/// A logical replication stream started by
/// [`ReplicationClient::start_replication`](super::ReplicationClient::start_replication).
///
/// Read events with [`next_event`](Self::next_event) (or turn it into a
/// [`futures_util::Stream`] with [`into_stream`](Self::into_stream)) and report durable progress
/// with [`confirm`](Self::confirm) or a [`Feedback`] handle.
#[derive(Debug)]
pub struct ReplicationStream {
    reader: Reader<ReadHalf<Transport>>,
    feedback: Feedback,
    task: JoinHandle<()>,
}

impl ReplicationStream {
    pub(crate) fn new(
        transport: Transport,
        buffered: BytesMut,
        start: Lsn,
        status_interval: Duration,
    ) -> Self {
        let (read, write) = tokio::io::split(transport);
        let shared = Arc::new(Shared {
            received: AtomicU64::new(start.0),
            confirmed: AtomicU64::new(start.0),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let task = tokio::spawn(send_feedback(write, shared.clone(), status_interval));
        ReplicationStream {
            reader: Reader::with_buffer(read, buffered),
            feedback: Feedback { shared },
            task,
        }
    }

    /// The next event, or `None` when the server ended the stream (CopyDone).
    pub async fn next_event(&mut self) -> Result<Option<ReplicationEvent>> {
        loop {
            let data = match self.reader.next().await? {
                Incoming::Message(Message::CopyData(body)) => body.into_bytes(),
                Incoming::Message(Message::CopyDone) => return Ok(None),
                Incoming::Message(Message::ErrorResponse(body)) => {
                    return Err(server_error(body.fields()))
                }
                Incoming::Message(_) | Incoming::CopyBothResponse => {
                    return Err(Error::protocol(
                        "unexpected message in the replication stream",
                    ))
                }
            };
            match self.parse(data)? {
                Some(event) => return Ok(Some(event)),
                None => continue,
            }
        }
    }

    fn parse(&self, mut data: Bytes) -> Result<Option<ReplicationEvent>> {
        let short = || Error::protocol("truncated message in the replication stream");
        if data.is_empty() {
            return Err(short());
        }
        match data.get_u8() {
            XLOG_DATA_TAG => {
                if data.len() < 24 {
                    return Err(short());
                }
                let wal_start = Lsn(data.get_u64());
                let wal_end = Lsn(data.get_u64());
                let send_time = PgTimestamp(data.get_i64());
                self.saw(wal_end);
                let message = pgoutput::decode(data)?;
                Ok(Some(ReplicationEvent::Data {
                    wal_start,
                    wal_end,
                    send_time,
                    message,
                }))
            }
            PRIMARY_KEEPALIVE_TAG => {
                if data.len() != 17 {
                    return Err(short());
                }
                let wal_end = Lsn(data.get_u64());
                let send_time = PgTimestamp(data.get_i64());
                let reply_requested = data.get_u8() == 1;
                self.saw(wal_end);
                if reply_requested {
                    self.feedback.shared.wake.notify_one();
                }
                Ok(Some(ReplicationEvent::Keepalive {
                    wal_end,
                    send_time,
                    reply_requested,
                }))
            }
            other => {
                tracing::debug!(tag = %char::from(other), "skipping unknown replication message");
                Ok(None)
            }
        }
    }

    fn saw(&self, wal_end: Lsn) {
        self.feedback
            .shared
            .received
            .fetch_max(wal_end.0, Ordering::AcqRel);
    }

    /// Confirms that everything up to `lsn` is durable; see [`Feedback::confirm`].
    pub fn confirm(&self, lsn: Lsn) {
        self.feedback.confirm(lsn);
    }

    /// A handle for confirming progress from another task.
    pub fn feedback(&self) -> Feedback {
        self.feedback.clone()
    }

    /// Turns the stream into a [`futures_util::Stream`] of events; it ends after the first
    /// error or when the server ends the stream.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<ReplicationEvent>> {
        futures_util::stream::unfold(Some(self), |state| async move {
            let mut stream = state?;
            match stream.next_event().await {
                Ok(Some(event)) => Some((Ok(event), Some(stream))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// Sends a last status update with the confirmed position and closes the connection.
    /// Reading after this fails.
    pub async fn close(&mut self) {
        if self.feedback.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.feedback.shared.wake.notify_one();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn send_feedback(mut write: WriteHalf<Transport>, shared: Arc<Shared>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = BytesMut::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shared.wake.notified() => {}
        }
        let closing = shared.closed.load(Ordering::Acquire);
        status_update(&shared, &mut out);
        if closing {
            frontend::terminate(&mut out);
        }
        let sent = async {
            write.write_all(&out).await?;
            write.flush().await
        }
        .await;
        out.clear();
        if let Err(error) = sent {
            tracing::debug!(%error, "could not send a standby status update; the reader will see the connection fail");
            return;
        }
        if closing {
            let _ = write.shutdown().await;
            return;
        }
    }
}

/// Encodes a standby status update: written, flushed and applied are all the confirmed
/// position, then the client time and 0 for "no reply needed".
///
/// Reporting "written" below what was received is deliberate: a walsender that has sent more
/// than the client reports written pings the client with a keepalive once it is caught up, and
/// that keepalive is what lets an idle tracker confirm the end of WAL promptly.
fn status_update(shared: &Shared, out: &mut BytesMut) {
    let confirmed = shared.confirmed.load(Ordering::Acquire);
    let mut body = BytesMut::with_capacity(34);
    body.put_u8(STANDBY_STATUS_UPDATE_TAG);
    body.put_u64(confirmed);
    body.put_u64(confirmed);
    body.put_u64(confirmed);
    body.put_i64(PgTimestamp::from(chrono::Utc::now()).0);
    body.put_u8(0);
    tracing::trace!(confirmed = %Lsn(confirmed), "standby status update");
    if let Ok(data) = frontend::CopyData::new(body.freeze()) {
        data.write(out);
    }
}
