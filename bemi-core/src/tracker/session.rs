//! One replication session: connect, set up, stream, hand batches to the writer, confirm.
//! The positions it hands on and confirms are decided by its [`Ledger`].

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio::time::Instant;

use super::backlog::{self, Backlog, Plan};
use super::ledger::{Ledger, Limits};
use super::source::SourceIdentity;
use super::writer::{Ack, Writer};
use super::{stop_requested, Progress, Settings};
use crate::change::Change;
use crate::decoder::RowDecoder;
use crate::error::{Error, ErrorKind, Result};
use crate::keys::CatalogKeys;
use crate::metrics::Instruments;
use crate::replication::{ReplicationClient, ReplicationEvent, ReplicationStream};
use crate::setup::{self, SourceSetup};
use crate::sink::{Batch, ChangeSink, SourceInfo};
use crate::stitch::Stitcher;
use crate::Lsn;

/// One connection's worth of streaming.
pub(super) struct Session {
    feed: Feed,
    /// The replication connection while the backlog is read, until streaming starts on it.
    replication: Option<ReplicationClient>,
    decoder: RowDecoder,
    stitcher: Stitcher,
    ledger: Ledger,
    metrics: Instruments,
    /// What the session did since it last published its [`Progress`].
    unreported: Unreported,
}

/// Transactions handled and changes stored since the session last published its progress.
#[derive(Debug, Default)]
struct Unreported {
    transactions: u64,
    changes: u64,
}

/// How often the slot's `wal_status` and `safe_wal_size` are read for the metrics.
const SLOT_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Refuses a sink whose stored position is past the end of the source's WAL: its changes came
/// from another cluster (a restored copy, another server under the same slot name), and
/// streaming from there would skip every change of this one up to that position.
fn check_stored_position(stored: Option<Lsn>, wal_end: Lsn, slot: &str) -> Result<()> {
    match stored {
        Some(stored) if stored > wal_end => Err(Error::new(
            ErrorKind::Config,
            format!(
                "the sink has stored changes up to {stored} for slot {slot:?}, but this server's \
                 WAL ends at {wal_end}: the stored position belongs to another cluster (a \
                 restored or migrated database, or another server tracked under the same slot \
                 name), and resuming from it would skip every change up to it. Use another slot \
                 name for this server, or remove the slot's row from the sink's progress table \
                 (_bemi_progress) if its changes are to be tracked afresh"
            ),
        )),
        _ => Ok(()),
    }
}

impl Session {
    pub(super) async fn start<S: ChangeSink>(
        config: &Settings,
        accept_gap: bool,
        sink: &mut S,
        identity: &mut SourceIdentity,
        metrics: &Instruments,
    ) -> Result<Session> {
        config.rules.check()?;
        let sql = config.source.connect().await?;
        setup::check_server(&sql).await?;
        let mut client = ReplicationClient::connect(&config.source)
            .await?
            .status_interval(config.status_interval)
            .receive_timeout(config.receive_timeout);
        let system = client.identify_system().await?;
        identity.check(&system, &config.slot)?;
        let database = system
            .dbname
            .clone()
            .unwrap_or_else(|| config.source.dbname().to_owned());
        let source = SourceInfo {
            system_id: system.system_id,
            database: database.clone(),
            slot: config.slot.clone(),
        };
        let setup = SourceSetup::new(&config.slot, &config.publication)
            .tables(config.tables.clone())
            .replica_identity(config.replica_identity)
            .rules(Arc::clone(&config.rules));
        // Refuses an unusable slot before the sink creates anything.
        setup.check_slot(&sql).await?;
        // The slot's position is read before the sink's: the slot is never confirmed past
        // what the sink stored, so read in this order the slot is never ahead unless changes
        // are really missing, even while another tracker of the slot (the one a standby takes
        // over from) still confirms.
        let slot_before = slot_position(&sql, &config.slot).await?;
        let start = sink.open(&source).await?;
        check_stored_position(start.durable, system.xlog_pos, &config.slot)?;
        if config.create_missing {
            let mut setup = setup.ignore_tables(start.ignore_tables.iter().cloned());
            if let (Some(stored), false) = (start.durable, accept_gap) {
                setup = setup.resume_after(stored);
            }
            setup.prepare(&sql).await?;
        }
        // A slot the setup just created is read now.
        let slot = match slot_before {
            Some(slot) => Some(slot),
            None => slot_position(&sql, &config.slot).await?,
        };
        // Where streaming resumes: after what the sink stored, or where the slot is when the
        // sink stored nothing yet (the server would start there anyway; starting the feedback
        // there too keeps the reported lag true from the first moment).
        let durable = match start.durable {
            Some(stored) => check_gap(config, accept_gap, slot, sink, &database, stored).await?,
            None => slot.unwrap_or(Lsn::ZERO),
        };
        let plan = match config.catch_up {
            Some(threshold) => {
                let to = backlog::wal_end(&sql).await?;
                let big = to.0.saturating_sub(durable.0) >= threshold;
                if big && backlog::slot_active(&sql, &config.slot).await? {
                    return Err(Error::new(
                        ErrorKind::SlotInUse,
                        format!(
                            "replication slot {:?} is active: another process streams from it",
                            config.slot
                        ),
                    ));
                }
                big.then(|| Plan {
                    source: config.source.clone(),
                    slot: config.slot.clone(),
                    publication: config.publication.clone(),
                    from: durable,
                    to,
                    chunk_bytes: config.catch_up_chunk,
                })
            }
            None => None,
        };
        let stitcher = Stitcher::new(database).resume_after(durable);
        let (schema, table) = setup::KEY_HISTORY;
        let decoder = start
            .ignore_tables
            .into_iter()
            .fold(
                RowDecoder::new(CatalogKeys::new(sql)).rules(Arc::clone(&config.rules)),
                |decoder, (schema, table)| decoder.ignore_table(schema, table),
            )
            .ignore_table(schema, table);
        let (feed, replication) = match plan {
            Some(plan) => {
                tracing::info!(
                    slot = %config.slot,
                    durable = %durable,
                    backlog_bytes = plan.to.0 - durable.0,
                    "catching up: reading the backlog through SQL before streaming"
                );
                (Feed::Backlog(Backlog::spawn(plan)), Some(client))
            }
            None => {
                let stream = client
                    .start_replication(&config.slot, &[&config.publication], durable)
                    .await?;
                tracing::info!(slot = %config.slot, durable = %durable, "tracking changes");
                (Feed::Stream(stream), None)
            }
        };
        Ok(Session {
            feed,
            replication,
            decoder,
            stitcher,
            metrics: metrics.clone(),
            unreported: Unreported::default(),
            ledger: Ledger::new(
                Limits {
                    batch_size: config.batch_size,
                    batch_bytes: config.batch_bytes,
                    record_interval: config.record_interval,
                    linger: config.linger,
                },
                Instant::now(),
            ),
        })
    }

    /// Streams until a stop is requested or an error ends the session; gives the sink back
    /// unless it hung.
    pub(super) async fn run<S: ChangeSink>(
        mut self,
        config: &Settings,
        sink: S,
        stop: &mut watch::Receiver<bool>,
        progress: &watch::Sender<Progress>,
    ) -> (Result<S>, Result<()>) {
        let mut writer = Writer::spawn(
            sink,
            config.write_timeout,
            config.concurrent_writes,
            self.metrics.clone(),
        );
        let catching_up = matches!(self.feed, Feed::Backlog(_));
        progress.send_if_modified(|p| {
            std::mem::replace(&mut p.catching_up, catching_up) != catching_up
        });
        let outcome = self
            .stream_until_stopped(config, &mut writer, stop, progress)
            .await;
        // After a stop the writer is idle unless the destination hung, so only wait briefly;
        // after an error its current write ends within the write timeout.
        let limit = match *stop.borrow() {
            true => Duration::from_secs(1),
            false => config.write_timeout,
        };
        (writer.finish(limit).await, outcome)
    }

    /// Streams into the ledger and hands batches to the writer: a full batch at once; committed
    /// changes as soon as nothing more waits in the stream and the writer is idle; whatever else
    /// is due at the next flush interval (the longest a change waits while the stream is busy).
    async fn stream_until_stopped<S: ChangeSink>(
        &mut self,
        config: &Settings,
        writer: &mut Writer<S>,
        stop: &mut watch::Receiver<bool>,
        progress: &watch::Sender<Progress>,
    ) -> Result<()> {
        let mut flush_timer = tokio::time::interval(config.flush_interval);
        flush_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut slot_timer = tokio::time::interval(SLOT_CHECK_INTERVAL);
        slot_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One wait for the stop, not one made and dropped per event.
        let stopped = stop_requested(stop);
        tokio::pin!(stopped);
        loop {
            let due = self.ledger.due();
            tokio::select! {
                biased;
                () = &mut stopped => return self.stop(config, writer, progress).await,
                ack = writer.acks.recv() => self.acknowledged(ack, progress)?,
                _ = flush_timer.tick() => {
                    self.flush(writer, false).await?;
                    self.report(progress);
                }
                _ = slot_timer.tick() => self.check_slot(&config.slot).await?,
                event = self.feed.next_event() => match event? {
                    Some(event) => {
                        self.handle(event, progress).await?;
                        if self.ledger.is_full() {
                            self.flush(writer, false).await?;
                        }
                    }
                    None if self.replication.is_some() => {
                        self.start_streaming(config, writer, progress).await?
                    }
                    None => return Err(stream_ended()),
                },
                // Polled only when nothing waits in the stream (the branch above is pending):
                // committed changes go to an idle writer now, and those that commit while it
                // writes go together once it is done.
                () = until(due), if due.is_some() => {
                    self.flush(writer, false).await?;
                }
            }
        }
    }

    /// Flushes, confirms and closes, within the shutdown timeout.
    async fn stop<S: ChangeSink>(
        &mut self,
        config: &Settings,
        writer: &mut Writer<S>,
        progress: &watch::Sender<Progress>,
    ) -> Result<()> {
        let finish = async {
            self.flush(writer, true).await?;
            self.drain(writer, progress).await?;
            match self.feed {
                Feed::Stream(_) => self.read_to_wal_end(writer, progress).await,
                Feed::Backlog(_) => Ok(()),
            }
        };
        match tokio::time::timeout(config.shutdown_timeout, finish).await {
            Ok(finished) => finished?,
            Err(_) => tracing::warn!(
                limit = ?config.shutdown_timeout,
                "stopping before everything was stored; the rest is streamed again at the next start"
            ),
        }
        match &mut self.feed {
            Feed::Stream(stream) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.close()).await;
            }
            Feed::Backlog(backlog) => {
                backlog
                    .close(self.decoder.keys().client(), &config.slot)
                    .await?
            }
        }
        tracing::info!("tracker stopped");
        Ok(())
    }

    /// The backlog is read whole: records its end once everything before it is stored,
    /// advances the slot there and starts streaming from it.
    async fn start_streaming<S: ChangeSink>(
        &mut self,
        config: &Settings,
        writer: &mut Writer<S>,
        progress: &watch::Sender<Progress>,
    ) -> Result<()> {
        let Feed::Backlog(backlog) = &self.feed else {
            return Ok(());
        };
        let end = backlog.end();
        self.flush(writer, true).await?;
        self.drain(writer, progress).await?;
        // Every transaction committed before the end was read, and is stored now.
        self.ledger.keepalive(end, self.stitcher.in_transaction());
        self.flush(writer, true).await?;
        self.drain(writer, progress).await?;
        let Some(client) = self.replication.take() else {
            return Ok(());
        };
        if let Feed::Backlog(backlog) = &mut self.feed {
            backlog
                .close(self.decoder.keys().client(), &config.slot)
                .await?;
        }
        let durable = self.feed.confirmed();
        let stream = client
            .start_replication(&config.slot, &[&config.publication], durable)
            .await?;
        self.feed = Feed::Stream(stream);
        progress.send_modify(|p| p.catching_up = false);
        tracing::info!(slot = %config.slot, durable = %durable, "caught up; tracking changes");
        Ok(())
    }

    /// Confirms what the writer made durable.
    fn acknowledged(&mut self, ack: Option<Ack>, progress: &watch::Sender<Progress>) -> Result<()> {
        let (durable, count) = ack.ok_or_else(|| {
            Error::new(ErrorKind::Sink, "the sink's writer stopped unexpectedly")
        })??;
        if let Some(lsn) = self.ledger.acknowledged(durable) {
            self.feed.confirm(lsn);
        }
        self.unreported.changes += count;
        self.report(progress);
        Ok(())
    }

    /// Waits until every batch handed to the writer is acknowledged.
    async fn drain<S: ChangeSink>(
        &mut self,
        writer: &mut Writer<S>,
        progress: &watch::Sender<Progress>,
    ) -> Result<()> {
        while self.ledger.in_flight() {
            let ack = writer.acks.recv().await;
            self.acknowledged(ack, progress)?;
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        event: ReplicationEvent,
        progress: &watch::Sender<Progress>,
    ) -> Result<()> {
        match event {
            ReplicationEvent::Data {
                wal_start, message, ..
            } => {
                let Some(event) = self.decoder.decode(message).await? else {
                    return Ok(());
                };
                let from = self.ledger.changes().len();
                let committed =
                    self.stitcher
                        .push(event, wal_start, Utc::now(), self.ledger.changes());
                // Which changes were handed on, never their values (the log is no copy of the
                // audit trail).
                if tracing::enabled!(tracing::Level::TRACE) {
                    for change in &self.ledger.changes()[from..] {
                        tracing::trace!(
                            table = %format!("{}.{}", change.schema, change.table),
                            operation = %change.operation,
                            commit_lsn = %change.commit_lsn,
                            ordinal = change.ordinal,
                            "change"
                        );
                    }
                }
                let stored_moved = self
                    .ledger
                    .stitched(from, committed.map(|committed| committed.end_lsn));
                if let Some(committed) = committed {
                    let handled = u64::from(!committed.replayed);
                    self.metrics.transactions(handled);
                    self.unreported.transactions += handled;
                }
                // It may complete what a `sync` waits for: published at once.
                if stored_moved {
                    self.report(progress);
                }
            }
            ReplicationEvent::Keepalive { wal_end, .. } => {
                let idle = self
                    .ledger
                    .keepalive(wal_end, self.stitcher.in_transaction());
                if idle && matches!(self.feed, Feed::Stream(_)) {
                    self.metrics.caught_up();
                }
                self.report(progress);
            }
        }
        Ok(())
    }

    /// Before stopping: reads on until the stream has passed the server's current end of WAL
    /// (which includes the sink's own last write when it shares the database), so the slot is
    /// left with no lag. Gives up quietly after a few seconds on a busy server.
    async fn read_to_wal_end<S: ChangeSink>(
        &mut self,
        writer: &mut Writer<S>,
        progress: &watch::Sender<Progress>,
    ) -> Result<()> {
        let row = self
            .decoder
            .keys()
            .client()
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?;
        let target: Lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e| Error::protocol("the server returned an invalid LSN").with_source(e))?;
        let catch_up = async {
            while self.feed.confirmed() < target {
                let event = self.feed.next_event().await?.ok_or_else(stream_ended)?;
                self.handle(event, progress).await?;
                self.flush(writer, true).await?;
                self.drain(writer, progress).await?;
            }
            Ok::<_, Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(5), catch_up).await {
            Ok(result) => result,
            Err(_) => {
                tracing::debug!(%target, "stopped before catching up with the end of WAL");
                Ok(())
            }
        }
    }

    /// Hands the writer what the ledger says is due: buffered changes with the position they
    /// complete, or a position without changes to record (at once when `force`d).
    async fn flush<S: ChangeSink>(&mut self, writer: &mut Writer<S>, force: bool) -> Result<()> {
        let Some(batch) = self.ledger.take_batch(Instant::now(), force) else {
            return Ok(());
        };
        if writer.jobs.send(batch).await.is_err() {
            return Err(writer.failure());
        }
        Ok(())
    }

    /// Reads the slot's `wal_status` and `safe_wal_size` into the metrics.
    async fn check_slot(&self, slot: &str) -> Result<()> {
        let row = self
            .decoder
            .keys()
            .client()
            .query_opt(
                "SELECT wal_status, safe_wal_size FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        if let Some(row) = row {
            self.metrics.slot(row.get(0), row.get(1));
        }
        Ok(())
    }

    /// Publishes the progress: once a batch is stored, at a keepalive and at each flush
    /// interval, not once a transaction (at tens of thousands of transactions a second, waking
    /// every watcher of the progress each time cost the tracker more than decoding them).
    fn report(&mut self, progress: &watch::Sender<Progress>) {
        let (confirmed, server) = (self.feed.confirmed(), self.feed.received());
        let stored = self.ledger.stored().max(confirmed);
        self.metrics.lag_bytes(server.0.saturating_sub(confirmed.0));
        let Unreported {
            transactions,
            changes,
        } = std::mem::take(&mut self.unreported);
        progress.send_if_modified(|p| {
            let changed = p.confirmed_lsn != confirmed
                || p.server_lsn != server
                || p.stored_lsn < stored
                || transactions > 0
                || changes > 0;
            p.transactions += transactions;
            p.changes += changes;
            p.stored_in_session |= changes > 0;
            p.confirmed_lsn = confirmed;
            p.server_lsn = server;
            p.stored_lsn = p.stored_lsn.max(stored);
            p.lag_bytes = server.0.saturating_sub(confirmed.0);
            changed
        });
    }
}

/// Waits until `at`, if it is later than now.
async fn until(at: Option<Instant>) {
    if let Some(at) = at.filter(|at| *at > Instant::now()) {
        tokio::time::sleep_until(at).await;
    }
}

/// Where a session reads changes from: the backlog through SQL while it catches up (see
/// [`backlog`]), then the walsender.
enum Feed {
    Backlog(Backlog),
    Stream(ReplicationStream),
}

impl Feed {
    async fn next_event(&mut self) -> Result<Option<ReplicationEvent>> {
        match self {
            Feed::Backlog(backlog) => backlog.next_event().await,
            Feed::Stream(stream) => stream.next_event().await,
        }
    }

    /// Confirms a durable position: to the walsender, or to the slot before the next peek.
    fn confirm(&self, lsn: Lsn) {
        match self {
            Feed::Backlog(backlog) => backlog.confirm(lsn),
            Feed::Stream(stream) => stream.confirm(lsn),
        }
    }

    fn confirmed(&self) -> Lsn {
        match self {
            Feed::Backlog(backlog) => backlog.confirmed(),
            Feed::Stream(stream) => stream.feedback().confirmed(),
        }
    }

    /// The server's position as far as the session knows: the end of the backlog, or of WAL.
    fn received(&self) -> Lsn {
        match self {
            Feed::Backlog(backlog) => backlog.end(),
            Feed::Stream(stream) => stream.feedback().received(),
        }
    }
}

fn stream_ended() -> Error {
    Error::new(
        ErrorKind::Connect,
        "the server ended the replication stream",
    )
}

/// Compares the slot's position with the sink's at start. When the slot is ahead, the changes
/// in between are gone from the WAL and not in the sink: refused, unless the operator accepted
/// the gap, which is then stored as a record of its own. Returns the position to resume from.
async fn check_gap<S: ChangeSink>(
    config: &Settings,
    accept_gap: bool,
    slot: Option<Lsn>,
    sink: &mut S,
    database: &str,
    stored: Lsn,
) -> Result<Lsn> {
    let Some(slot) = slot.filter(|slot| *slot > stored) else {
        return Ok(stored);
    };
    if !accept_gap {
        return Err(Error::new(
            ErrorKind::Gap,
            format!(
                "slot {:?} is at {slot}, but the sink has stored changes only up to {stored}: the \
                 changes committed in between were confirmed to the slot without being in the \
                 sink (a destination restored from an older backup, a slot advanced or recreated \
                 by hand) and can never be streamed again. Restore the destination from a newer \
                 backup, or accept the gap once (`bemi run --accept-gap`, \
                 TrackerBuilder::accept_gap), which records it in the trail",
                config.slot
            ),
        ));
    }
    tracing::warn!(from = %stored, to = %slot, slot = %config.slot, "accepting a gap in the trail; recording it");
    let gap = Change::gap(database, stored, slot, "accepted at start", Utc::now());
    sink.write(Batch {
        changes: vec![gap],
        durable_through: Some(slot),
    })
    .await?;
    Ok(slot)
}

/// The slot's confirmed position, if the slot exists and has one.
async fn slot_position(sql: &tokio_postgres::Client, slot: &str) -> Result<Option<Lsn>> {
    let row = sql
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    row.and_then(|row| row.get::<_, Option<String>>(0))
        .map(|lsn| {
            lsn.parse()
                .map_err(|e| Error::protocol("the server returned an invalid LSN").with_source(e))
        })
        .transpose()
}
