//! The CopyBoth phase: WAL data in, standby status updates out.
//!
//! Reading and feedback are independent. A background task owns the socket's write half and
//! sends a standby status update on a timer, when the server asks for one, and when the caller
//! confirms a new position. So a consumer that reads slowly (a slow sink) still answers the
//! server within `wal_sender_timeout`, and the server does not drop the connection.
//!
//! Every way the server can end the copy (CopyDone, CommandComplete, ReadyForQuery, an
//! ErrorResponse when the walsender is terminated, or the socket closing, as on an idle
//! restart) ends the stream: [`ReplicationStream::next_event`] returns `Ok(None)` or an error,
//! never waits forever. A server that goes silent is noticed too: after half the receive
//! timeout without a message the stream asks the server for a reply, and after the whole timeout
//! it gives up with a [`ErrorKind::Connect`] error (a hung walsender or a dead network path
//! that TCP has not noticed yet).
//! See <https://www.postgresql.org/docs/current/protocol-replication.html>.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncWriteExt as _, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::connection::{server_error, Incoming, Reader};
use super::transport::Transport;
use crate::error::{Error, ErrorKind, Result};
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
    /// The next update asks the server to answer at once (a liveness probe).
    reply_wanted: AtomicBool,
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
    receive_timeout: Duration,
    /// When the last message arrived.
    heard_at: Instant,
    /// When the server was asked for a reply because it had been silent, if it has not answered.
    probed_at: Option<Instant>,
}

impl ReplicationStream {
    pub(crate) fn new(
        transport: Transport,
        buffered: BytesMut,
        start: Lsn,
        status_interval: Duration,
        receive_timeout: Duration,
    ) -> Self {
        let (read, write) = tokio::io::split(transport);
        let shared = Arc::new(Shared {
            received: AtomicU64::new(start.0),
            confirmed: AtomicU64::new(start.0),
            wake: Notify::new(),
            reply_wanted: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let task = tokio::spawn(send_feedback(write, Arc::clone(&shared), status_interval));
        ReplicationStream {
            reader: Reader::with_buffer(read, buffered),
            feedback: Feedback { shared },
            task,
            receive_timeout,
            heard_at: Instant::now(),
            probed_at: None,
        }
    }

    /// The next event, or `None` when the server ended the stream (CopyDone, CommandComplete
    /// or ReadyForQuery: a walsender shutting down, say for a server restart, ends the copy
    /// this way).
    ///
    /// Cancel-safe: a call dropped before it returns loses no data.
    ///
    /// # Errors
    ///
    /// A lost connection or a silent server ([`ErrorKind::Connect`]), the server's error (a
    /// terminated walsender reports SQLSTATE 57P01), or a malformed message.
    pub async fn next_event(&mut self) -> Result<Option<ReplicationEvent>> {
        loop {
            // What a read brought whole is taken without a timer; the server was heard then.
            let incoming = match self.reader.buffered()? {
                Some(incoming) => incoming,
                None => match tokio::time::timeout_at(self.deadline(), self.reader.next()).await {
                    Ok(incoming) => {
                        self.heard_at = Instant::now();
                        self.probed_at = None;
                        incoming?
                    }
                    Err(_) => {
                        self.probe()?;
                        continue;
                    }
                },
            };
            let data = match incoming {
                Incoming::Message(Message::CopyData(body)) => body.into_bytes(),
                Incoming::Message(
                    Message::CopyDone | Message::CommandComplete(_) | Message::ReadyForQuery(_),
                ) => return Ok(None),
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

    /// When silence becomes suspicious: half the receive timeout after the last message, then
    /// half again after asking the server to answer.
    fn deadline(&self) -> Instant {
        self.probed_at.unwrap_or(self.heard_at) + self.receive_timeout / 2
    }

    /// The server has been silent until [`deadline`](Self::deadline): asks it to answer, or
    /// gives up when it was asked already.
    fn probe(&mut self) -> Result<()> {
        if self.probed_at.is_some() {
            return Err(Error::new(
                ErrorKind::Connect,
                format!(
                    "the server sent nothing for {:?}, not even an answer to a status update \
                     that asked for one; treating the connection as lost",
                    self.receive_timeout
                ),
            ));
        }
        tracing::debug!(silent_for = ?self.heard_at.elapsed(), "asking a silent server to answer");
        self.probed_at = Some(Instant::now());
        let shared = &self.feedback.shared;
        shared.reply_wanted.store(true, Ordering::Release);
        shared.wake.notify_one();
        Ok(())
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
/// position, then the client time and whether the server should answer at once.
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
    body.put_u8(u8::from(shared.reply_wanted.swap(false, Ordering::AcqRel)));
    tracing::trace!(confirmed = %Lsn(confirmed), "standby status update");
    if let Ok(data) = frontend::CopyData::new(body.freeze()) {
        data.write(out);
    }
}
