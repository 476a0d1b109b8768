//! Catch-up: reading a slot's backlog through SQL instead of the walsender.
//!
//! A walsender sends each pgoutput message in a message of its own and flushes the socket after
//! each, so its rate is bound by the messages, not by decoding. The same messages come out of
//! [`pg_logical_slot_peek_binary_changes`](https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-REPLICATION)
//! on an ordinary connection, several times faster: the function decodes into a tuplestore
//! (spilled to the server's disk past `work_mem`) and returns it as rows, whose `lsn` is the
//! position the walsender would send with the message and whose `data` is the same pgoutput
//! message. So the tracker's decoder and stitcher read them unchanged.
//!
//! [`Backlog`] peeks in chunks of WAL (`upto_lsn` a chunk further each time) up to the end of
//! WAL when catch-up began, streaming each result's rows (`query_raw`: the connection stops
//! reading while the tracker is busy, so one huge transaction takes no more memory than a
//! batch). Peeking does not move the slot: before each chunk the slot is advanced
//! (`pg_replication_slot_advance`) to what the sink reported durable, and never further, like the
//! walsender's feedback. The next chunk starts again at the slot's position, so transactions
//! already handed on but not yet durable come again and are dropped here (by their commit
//! position, as the stitcher drops replays), and the end of each chunk is reported as a
//! keepalive: every transaction committed before it was handed on. When the backlog is read,
//! the stream of events ends and the session switches to streaming from the durable position.
//!
//! A peek needs the slot inactive, as streaming does: with another process streaming from it,
//! the peek fails with SQLSTATE 55006 and the tracker waits as a standby. A tracker that stops
//! or dies during a peek leaves the server's backend decoding the chunk to its end, holding the
//! slot until then; the next session meanwhile waits as a standby.

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::types::PgLsn;
use tracing::Instrument as _;

use crate::config::ConnectOptions;
use crate::error::Result;
use crate::pgoutput::{self, Message, PgTimestamp};
use crate::replication::ReplicationEvent;
use crate::sql::quote_identifier;
use crate::Lsn;

/// Events read ahead of the session: enough to keep it busy while the next rows arrive.
const READ_AHEAD: usize = 1024;

/// What to read, and how.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) source: ConnectOptions,
    pub(super) slot: String,
    pub(super) publication: String,
    /// The position the session resumes after (the sink's durable position).
    pub(super) from: Lsn,
    /// The end of WAL when catch-up began: the backlog is read up to here.
    pub(super) to: Lsn,
    /// The most WAL one peek reads.
    pub(super) chunk_bytes: u64,
}

/// The backlog as a stream of replication events; see the [module docs](self).
#[derive(Debug)]
pub(super) struct Backlog {
    events: mpsc::Receiver<Result<ReplicationEvent>>,
    confirmed: watch::Sender<Lsn>,
    to: Lsn,
    task: JoinHandle<()>,
}

impl Backlog {
    /// Starts reading the backlog on a connection of its own.
    pub(super) fn spawn(plan: Plan) -> Backlog {
        let (tx, events) = mpsc::channel(READ_AHEAD);
        let (confirmed, confirms) = watch::channel(plan.from);
        let to = plan.to;
        let task = tokio::spawn(
            async move {
                if let Err(e) = read(&plan, &tx, confirms).await {
                    let _ = tx.send(Err(e)).await;
                }
            }
            .in_current_span(),
        );
        Backlog {
            events,
            confirmed,
            to,
            task,
        }
    }

    /// The next event; `None` once the backlog is read whole. Cancel-safe.
    pub(super) async fn next_event(&mut self) -> Result<Option<ReplicationEvent>> {
        self.events.recv().await.transpose()
    }

    /// The sink made everything up to `lsn` durable: the slot may be advanced there.
    pub(super) fn confirm(&self, lsn: Lsn) {
        self.confirmed.send_if_modified(|confirmed| {
            let moved = lsn > *confirmed;
            *confirmed = (*confirmed).max(lsn);
            moved
        });
    }

    /// The last position confirmed.
    pub(super) fn confirmed(&self) -> Lsn {
        *self.confirmed.borrow()
    }

    /// Where the backlog ends.
    pub(super) fn end(&self) -> Lsn {
        self.to
    }

    /// Stops reading and advances the slot to the confirmed position on `sql`.
    pub(super) async fn close(&mut self, sql: &tokio_postgres::Client, slot: &str) -> Result<()> {
        self.task.abort();
        let _ = (&mut self.task).await;
        advance(sql, slot, self.confirmed()).await
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        // A session that ends with an error stops reading too.
        self.task.abort();
    }
}

/// Peeks chunk after chunk into `tx`, advancing the slot to `confirms` before each.
async fn read(
    plan: &Plan,
    tx: &mpsc::Sender<Result<ReplicationEvent>>,
    mut confirms: watch::Receiver<Lsn>,
) -> Result<()> {
    let sql = plan.source.connect().await?;
    let peek = sql
        .prepare(
            "SELECT lsn, data FROM pg_catalog.pg_logical_slot_peek_binary_changes($1, $2, NULL, \
             'proto_version', '1', 'publication_names', $3, 'messages', 'true')",
        )
        .await?;
    let publications = quote_identifier(&plan.publication);
    // The end of the last transaction handed on: transactions committed before it are replays.
    let mut handed_on = plan.from;
    let mut advanced = Lsn::ZERO;
    let mut upto = plan.from;
    while upto < plan.to {
        upto = Lsn(upto.0.saturating_add(plan.chunk_bytes).min(plan.to.0));
        let confirmed = *confirms.borrow_and_update();
        if confirmed > advanced {
            advance(&sql, &plan.slot, confirmed).await?;
            advanced = confirmed;
        }
        let began = tokio::time::Instant::now();
        let rows = sql
            .query_raw(
                &peek,
                [
                    &plan.slot as &(dyn tokio_postgres::types::ToSql + Sync),
                    &PgLsn::from(upto.0),
                    &publications,
                ],
            )
            .await?;
        futures_util::pin_mut!(rows);
        let (mut replay, mut count) = (false, 0_u64);
        while let Some(row) = rows.try_next().await? {
            let lsn = Lsn(u64::from(row.try_get::<_, PgLsn>(0)?));
            let message = pgoutput::decode(Bytes::copy_from_slice(row.try_get(1)?))?;
            match &message {
                Message::Begin(begin) => replay = begin.final_lsn < handed_on,
                Message::Commit(commit) if !replay => handed_on = commit.end_lsn,
                // A message outside any transaction is a replay by its own position.
                Message::Message(m) if !m.transactional => replay = m.lsn < handed_on,
                _ => {}
            }
            let ends = matches!(&message, Message::Commit(_))
                || matches!(&message, Message::Message(m) if !m.transactional);
            if !replay {
                count += 1;
                let event = ReplicationEvent::Data {
                    wal_start: lsn,
                    wal_end: lsn,
                    send_time: PgTimestamp(0),
                    message,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
            }
            if ends {
                replay = false;
            }
        }
        tracing::debug!(%upto, messages = count, took = ?began.elapsed(), "read a chunk of the backlog");
        // Every transaction that committed before `upto` was in this chunk or an earlier one.
        let keepalive = ReplicationEvent::Keepalive {
            wal_end: upto,
            send_time: PgTimestamp(0),
            reply_requested: false,
        };
        if tx.send(Ok(keepalive)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Advances `slot` to `lsn` unless it is there already (the server refuses to move a slot
/// backwards).
pub(super) async fn advance(sql: &tokio_postgres::Client, slot: &str, lsn: Lsn) -> Result<()> {
    let row = sql
        .query_opt(
            "SELECT pg_catalog.pg_replication_slot_advance(slot_name, $2) \
             FROM pg_catalog.pg_replication_slots \
             WHERE slot_name = $1 AND confirmed_flush_lsn < $2",
            &[&slot, &PgLsn::from(lsn.0)],
        )
        .await?;
    if row.is_some() {
        tracing::debug!(slot, %lsn, "advanced the slot");
    }
    Ok(())
}

/// The position to compare a backlog's size with: the server's flushed end of WAL (what a
/// peek reads up to at most).
pub(super) async fn wal_end(sql: &tokio_postgres::Client) -> Result<Lsn> {
    let row = sql
        .query_one("SELECT pg_catalog.pg_current_wal_flush_lsn()", &[])
        .await?;
    Ok(Lsn(u64::from(row.try_get::<_, PgLsn>(0)?)))
}

/// Whether another process streams from `slot` (a peek would fail).
pub(super) async fn slot_active(sql: &tokio_postgres::Client, slot: &str) -> Result<bool> {
    let row = sql
        .query_opt(
            "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.is_some_and(|row| row.get::<_, bool>(0)))
}
