//! The tracker runtime: replication stream → decoder → stitcher → sink → confirmed LSN.
//!
//! [`Tracker::builder`] configures it and [`TrackerBuilder::spawn`] runs it on the caller's
//! tokio runtime, next to an axum server for instance. The [`TrackerHandle`] reports
//! [`Progress`] and shuts down gracefully: it flushes what is buffered, confirms it, and
//! closes the stream.
//!
//! Behaviour:
//!
//! * **Exactly once with [`PostgresSink`](crate::sink::PostgresSink).** The slot is confirmed
//!   only up to what the sink reported durable; after a restart the tracker resumes from the
//!   sink's durable position and drops replays (see [`ChangeSink`]).
//! * **Bounded memory.** Changes go to the sink in batches of at most
//!   [`batch_size`](TrackerBuilder::batch_size), also in the middle of a large transaction;
//!   the position is confirmed only at its commit.
//! * **Feedback never starves.** Status updates are sent from their own task, so a slow sink
//!   does not make the server drop the connection.
//! * **Idle databases do not pin WAL.** When nothing is in flight, the server's keepalive
//!   position is recorded in the sink (once per [`record_interval`](TrackerBuilder::record_interval))
//!   and then confirmed, so busy untracked tables and idle periods let the slot advance.
//! * **Gaps are never silent.** The slot is only confirmed up to positions the sink recorded,
//!   so at start a slot ahead of the sink means changes are gone: the tracker refuses
//!   ([`ErrorKind::Gap`]) unless [`accept_gap`](TrackerBuilder::accept_gap) is set, and then
//!   stores the gap as a record of its own.
//! * **Reconnects.** Transient failures (a server restart, busy or idle, a terminated
//!   walsender, the network, a destination down or read-only, a peer silent past
//!   [`receive_timeout`](TrackerBuilder::receive_timeout) or a write past
//!   [`write_timeout`](TrackerBuilder::write_timeout)) end the session; the tracker reconnects
//!   with a backoff that grows while sessions store nothing, and replays from the durable
//!   position. Other errors (certificates, passwords, configuration, privileges) stop it and are
//!   returned by [`TrackerHandle::shutdown`] and [`TrackerHandle::join`].
//! * **Bounded shutdown.** [`TrackerHandle::shutdown`] returns within
//!   [`shutdown_timeout`](TrackerBuilder::shutdown_timeout), even with a hung destination.
//! * **Never drops a slot.**

use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::change::Change;
use crate::config::ConnectOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::relation::RowDecoder;
use crate::replication::{ReplicationClient, ReplicationEvent, ReplicationStream};
use crate::setup::{self, SourceSetup, Tables};
use crate::sink::{Batch, ChangeSink, SourceInfo};
use crate::stitch::Stitcher;
use crate::Lsn;

/// Entry point: `Tracker::builder(source, sink)`.
#[derive(Debug)]
pub struct Tracker(());

impl Tracker {
    /// A tracker of the database `source` that stores changes in `sink`.
    pub fn builder<S: ChangeSink>(source: ConnectOptions, sink: S) -> TrackerBuilder<S> {
        TrackerBuilder {
            sink,
            settings: Settings {
                source,
                slot: "bemi".to_owned(),
                publication: "bemi".to_owned(),
                tables: Tables::All,
                setup: true,
                replica_identity: true,
                accept_gap: false,
                batch_size: 1_000,
                batch_bytes: 64 * 1024 * 1024,
                flush_interval: Duration::from_millis(100),
                record_interval: Duration::from_secs(10),
                status_interval: crate::replication::DEFAULT_STATUS_INTERVAL,
                receive_timeout: crate::replication::DEFAULT_RECEIVE_TIMEOUT,
                write_timeout: Duration::from_secs(300),
                shutdown_timeout: Duration::from_secs(30),
                min_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(30),
            },
        }
    }
}

/// Settings of a tracker; see [`Tracker::builder`].
#[derive(Debug)]
pub struct TrackerBuilder<S> {
    sink: S,
    settings: Settings,
}

impl<S: ChangeSink> TrackerBuilder<S> {
    /// The replication slot (default `bemi`, as in Bemi's docs).
    pub fn slot(mut self, slot: impl Into<String>) -> Self {
        self.settings.slot = slot.into();
        self
    }

    /// The publication (default `bemi`).
    pub fn publication(mut self, publication: impl Into<String>) -> Self {
        self.settings.publication = publication.into();
        self
    }

    /// The tables a publication created by the tracker covers (default: all).
    pub fn tables(mut self, tables: Tables) -> Self {
        self.settings.tables = tables;
        self
    }

    /// Whether to create a missing publication and slot at start (default `true`). Checks of
    /// the server run either way.
    pub fn create_missing(mut self, create: bool) -> Self {
        self.settings.setup = create;
        self
    }

    /// Accepts, for the first session of this tracker, that changes between the sink's stored
    /// position and the slot's position are gone (default `false`). Reconnections later never
    /// accept a gap.
    ///
    /// At every start the tracker compares the two. When the slot is ahead of what the sink
    /// holds (a destination restored from an older backup, a slot advanced by hand, a lost slot
    /// recreated), the changes in between can never be read again, and the tracker refuses to
    /// start with [`ErrorKind::Gap`]. With this set it starts anyway and stores the gap itself
    /// as a record in the trail ([`Change::gap`](crate::Change::gap)), so readers can tell a
    /// gap from quiet time. A missing slot is then created instead of refused.
    pub fn accept_gap(mut self, accept: bool) -> Self {
        self.settings.accept_gap = accept;
        self
    }

    /// Whether the setup at start also sets `REPLICA IDENTITY FULL` where it is missing and
    /// installs the event trigger that keeps it for new tables, as `bemi setup` does (default
    /// `true`; see [`SourceSetup::replica_identity`]). Only with
    /// [`create_missing`](Self::create_missing).
    pub fn replica_identity(mut self, set: bool) -> Self {
        self.settings.replica_identity = set;
        self
    }

    /// The most changes handed to the sink at once (default 1,000).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.settings.batch_size = size.max(1);
        self
    }

    /// The most bytes of row and context JSON handed to the sink at once (default 64 MiB);
    /// a single larger change goes in a batch of its own.
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.settings.batch_bytes = bytes.max(1);
        self
    }

    /// How long changes may wait for a fuller batch (default 100 ms).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.settings.flush_interval = interval;
        self
    }

    /// How often a position reached without changes to store (quiet time, untracked tables)
    /// is recorded in the sink and then confirmed to the slot (default 10 s).
    ///
    /// The slot is only ever confirmed up to a position the sink recorded, so a gap between the
    /// two can be detected at start. Each record is a small write; when the sink writes to the
    /// tracked database itself, that write is WAL the next record covers, so an idle database
    /// sees one such write per interval.
    pub fn record_interval(mut self, interval: Duration) -> Self {
        self.settings.record_interval = interval;
        self
    }

    /// How often standby status updates are sent (default 1 s).
    pub fn status_interval(mut self, interval: Duration) -> Self {
        self.settings.status_interval = interval;
        self
    }

    /// How long the replication connection may receive nothing before it is given up and
    /// reconnected (default 30 s; the server is asked to answer after half of it).
    pub fn receive_timeout(mut self, timeout: Duration) -> Self {
        self.settings.receive_timeout = timeout;
        self
    }

    /// How long one write to the sink may take before the session is given up and the batch
    /// retried on a new one (default 5 min). A warning is logged every 15 s while it waits.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.settings.write_timeout = timeout;
        self
    }

    /// How long [`TrackerHandle::shutdown`] may flush and confirm before it stops anyway
    /// (default 30 s). Stopping early loses nothing: what was not confirmed is streamed again
    /// at the next start.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.settings.shutdown_timeout = timeout;
        self
    }

    /// The first and the longest wait between reconnection attempts (default 200 ms, 30 s).
    /// The wait doubles after every session that stored nothing, and starts again from the
    /// first after one that did.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.settings.min_backoff = min;
        self.settings.max_backoff = max.max(min);
        self
    }

    /// Spawns the tracker and waits until it streams, so that an application learns at start
    /// whether tracking works (settings, slot, publication, privileges, sink) before going on.
    /// Every change committed after this returns is tracked (with a slot it had to create,
    /// changes committed while it was being created may precede the slot's starting point).
    ///
    /// ```no_run
    /// # async fn run(options: bemi_core::ConnectOptions) -> bemi_core::Result<()> {
    /// let sink = bemi_core::sink::PostgresSink::connect(&options)?;
    /// let tracker = bemi_core::Tracker::builder(options, sink).start().await?;
    /// # drop(tracker); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The error that ended the first session, with its [`kind`](Error::kind). The tracker is
    /// shut down then, even when the error was one it would retry after (say the server was
    /// unreachable); use [`spawn`](Self::spawn) to start a tracker that keeps trying.
    pub async fn start(self) -> Result<TrackerHandle> {
        let tracker = self.spawn();
        let progress = tracker
            .wait_for(|p| p.connected || p.last_error.is_some())
            .await;
        if progress.connected {
            return Ok(tracker);
        }
        // An error the tracker gives up on ends its task with that error; it keeps retrying
        // after any other, whose report and kind are in the progress.
        tracker.shutdown().await?;
        Err(Error::new(
            progress.last_error_kind.unwrap_or(ErrorKind::Connect),
            format!(
                "the tracker did not start: {}",
                progress.last_error.as_deref().unwrap_or("it stopped")
            ),
        ))
    }

    /// Spawns the tracker on the current tokio runtime.
    pub fn spawn(self) -> TrackerHandle {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let task = tokio::spawn(self.run(stop_rx, progress_tx));
        TrackerHandle {
            stop: stop_tx,
            progress: progress_rx,
            task,
        }
    }

    async fn run(
        self,
        mut stop: watch::Receiver<bool>,
        progress: watch::Sender<Progress>,
    ) -> Result<()> {
        let TrackerBuilder {
            settings: config,
            mut sink,
        } = self;
        let mut backoff = config.min_backoff;
        let mut accept_gap = config.accept_gap;
        loop {
            let began = tokio::time::Instant::now();
            let started = tokio::select! {
                started = Session::start(&config, accept_gap, &mut sink, &progress) => started,
                _ = stop_requested(&mut stop) => return Ok(()),
            };
            let outcome = match started {
                Ok(session) => {
                    accept_gap = false;
                    let (returned, outcome) =
                        session.run(&config, sink, &mut stop, &progress).await;
                    match returned {
                        Ok(returned) => sink = returned,
                        Err(e) => return outcome.and(Err(e)),
                    }
                    outcome
                }
                Err(e) => Err(e),
            };
            progress.send_modify(|p| p.connected = false);
            let error = match outcome {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => e,
                Err(e) => {
                    tracing::error!(error = %e.report(), "tracker stopped");
                    progress.send_modify(|p| p.record_error(&e));
                    return Err(e);
                }
            };
            // Back off further after sessions that got nowhere (a batch that cannot be written,
            // a statement timeout): only storing something, or streaming for a while, resets it.
            let mut stored = false;
            progress.send_if_modified(|p| {
                stored = std::mem::take(&mut p.stored_in_session);
                false
            });
            if stored || began.elapsed() >= PROGRESS_WITHOUT_STORING {
                backoff = config.min_backoff;
            }
            tracing::warn!(error = %error.report(), retry_in = ?backoff, "tracker session ended; reconnecting");
            progress.send_modify(|p| {
                p.reconnects += 1;
                p.record_error(&error);
            });
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop_requested(&mut stop) => return Ok(()),
            }
            backoff = (backoff * 2).min(config.max_backoff);
        }
    }
}

/// A session that streamed this long counts as progress even when it had nothing to store.
const PROGRESS_WITHOUT_STORING: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Settings {
    source: ConnectOptions,
    slot: String,
    publication: String,
    tables: Tables,
    setup: bool,
    replica_identity: bool,
    accept_gap: bool,
    batch_size: usize,
    batch_bytes: usize,
    flush_interval: Duration,
    record_interval: Duration,
    status_interval: Duration,
    receive_timeout: Duration,
    write_timeout: Duration,
    shutdown_timeout: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
}

/// What a running tracker has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The last position confirmed to the slot (stored by the sink, or idle).
    pub confirmed_lsn: Lsn,
    /// The latest server WAL position seen.
    pub server_lsn: Lsn,
    /// `server_lsn - confirmed_lsn` in bytes.
    pub lag_bytes: u64,
    /// Transactions committed and handled since start.
    pub transactions: u64,
    /// Changes handed to the sink since start.
    pub changes: u64,
    /// How many times the tracker reconnected.
    pub reconnects: u64,
    /// Whether a replication session is streaming now.
    pub connected: bool,
    /// The error that ended the last session, if any.
    pub last_error: Option<String>,
    /// The [`kind`](Error::kind) of [`last_error`](Self::last_error).
    pub last_error_kind: Option<ErrorKind>,
    /// Whether the current session stored something (for the backoff).
    stored_in_session: bool,
}

impl Progress {
    fn record_error(&mut self, error: &Error) {
        self.last_error = Some(error.report());
        self.last_error_kind = Some(error.kind());
    }
}

/// Controls a spawned tracker.
#[derive(Debug)]
pub struct TrackerHandle {
    stop: watch::Sender<bool>,
    progress: watch::Receiver<Progress>,
    task: JoinHandle<Result<()>>,
}

impl TrackerHandle {
    /// The latest progress.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// A receiver that sees every progress update.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits until `done` holds for the progress, or the tracker stops.
    pub async fn wait_for(&self, mut done: impl FnMut(&Progress) -> bool) -> Progress {
        let mut rx = self.progress.clone();
        let result = rx.wait_for(|p| done(p)).await.map(|p| p.clone());
        result.unwrap_or_else(|_| self.progress())
    }

    /// Waits until the tracker stops (after an error, or a shutdown); then [`join`](Self::join)
    /// returns at once.
    pub async fn stopped(&self) {
        let mut rx = self.progress.clone();
        while rx.changed().await.is_ok() {}
    }

    /// Whether the tracker has stopped (after an error or a shutdown).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops gracefully: flushes buffered changes to the sink, confirms them and closes the
    /// stream. Returns the error that stopped the tracker, if one did.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.join().await
    }

    /// Waits for the tracker to stop on its own (it only does after an error).
    pub async fn join(self) -> Result<()> {
        self.task.await.map_err(|e| {
            Error::new(
                ErrorKind::Sink,
                "the tracker task panicked or was cancelled",
            )
            .with_source(e)
        })?
    }
}

/// One connection's worth of streaming.
struct Session {
    stream: ReplicationStream,
    decoder: RowDecoder,
    stitcher: Stitcher,
    batch: Batch,
    /// Bytes of row and context JSON in `batch`.
    batch_bytes: usize,
    /// Changes were handed to the sink without a position recorded after them.
    unrecorded: bool,
    /// A position reached with nothing to store (transactions without tracked changes, quiet
    /// time), not yet handed to the sink to record. It is confirmed once recorded.
    pending: Option<Lsn>,
    /// When a position was last handed to the sink to record.
    recorded_at: tokio::time::Instant,
    /// Batches sent to the writer and not yet acknowledged.
    in_flight: usize,
}

/// What the writer reports per batch: the position now durable, and how many changes it stored.
type Ack = Result<(Option<Lsn>, u64)>;

/// The sink on its own task, so that decoding the next batch overlaps with storing this one.
struct Writer<S> {
    jobs: mpsc::Sender<Batch>,
    acks: mpsc::UnboundedReceiver<Ack>,
    task: JoinHandle<S>,
}

/// How often a slow write is reported while it goes on.
const SLOW_WRITE_WARNING: Duration = Duration::from_secs(15);

impl<S: ChangeSink> Writer<S> {
    fn spawn(mut sink: S, write_timeout: Duration) -> Self {
        let (jobs, mut queue) = mpsc::channel::<Batch>(1);
        let (ack, acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(batch) = queue.recv().await {
                let (durable, count) = (batch.durable_through, batch.changes.len() as u64);
                let result = write_watched(&mut sink, batch, write_timeout)
                    .await
                    .map(|()| (durable, count));
                let failed = result.is_err();
                if ack.send(result).is_err() || failed {
                    break;
                }
            }
            sink
        });
        Writer { jobs, acks, task }
    }

    /// Why the writer stopped: the error it acknowledged last (it stops after a failed write).
    fn failure(&mut self) -> Error {
        while let Ok(ack) = self.acks.try_recv() {
            if let Err(e) = ack {
                return e;
            }
        }
        Error::new(ErrorKind::Sink, "the sink's writer stopped unexpectedly")
    }

    /// Stops the writer after its current batch and takes the sink back, waiting at most
    /// `limit` (a write on a hung destination is abandoned then; nothing was confirmed for it).
    async fn finish(self, limit: Duration) -> Result<S> {
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
    async fn start<S: ChangeSink>(
        config: &Settings,
        accept_gap: bool,
        sink: &mut S,
        progress: &watch::Sender<Progress>,
    ) -> Result<Session> {
        let sql = config.source.connect().await?;
        setup::check_server(&sql).await?;
        let mut client = ReplicationClient::connect(&config.source)
            .await?
            .with_status_interval(config.status_interval)
            .with_receive_timeout(config.receive_timeout);
        let system = client.identify_system().await?;
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
            .replica_identity(config.replica_identity);
        // Refuses an unusable slot before the sink creates anything.
        setup.check_slot(&sql).await?;
        let start = sink.open(&source).await?;
        check_stored_position(start.durable, system.xlog_pos, &config.slot)?;
        if config.setup {
            let mut setup = setup.unrecorded(start.ignore_tables.iter().cloned());
            if let (Some(stored), false) = (start.durable, accept_gap) {
                setup = setup.resuming_from(stored);
            }
            setup.prepare(&sql).await?;
        }
        let durable = match start.durable {
            Some(stored) => {
                Some(check_gap(config, accept_gap, &sql, sink, &database, stored).await?)
            }
            None => None,
        };
        let mut stitcher = Stitcher::new(database);
        for (schema, table) in start.ignore_tables {
            stitcher.ignore_table(schema, table);
        }
        let durable = durable.unwrap_or(Lsn::ZERO);
        stitcher.resume_after(durable);
        let stream = client
            .start_replication(&config.slot, &[&config.publication], durable)
            .await?;
        progress.send_modify(|p| p.connected = true);
        tracing::info!(slot = %config.slot, durable = %durable, "tracking changes");
        Ok(Session {
            stream,
            decoder: RowDecoder::new(sql),
            stitcher,
            batch: Batch::default(),
            batch_bytes: 0,
            unrecorded: false,
            pending: None,
            recorded_at: tokio::time::Instant::now(),
            in_flight: 0,
        })
    }

    /// Streams until a stop is requested or an error ends the session; gives the sink back
    /// unless it hung.
    async fn run<S: ChangeSink>(
        mut self,
        config: &Settings,
        sink: S,
        stop: &mut watch::Receiver<bool>,
        progress: &watch::Sender<Progress>,
    ) -> (Result<S>, Result<()>) {
        let mut writer = Writer::spawn(sink, config.write_timeout);
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

    async fn stream_until_stopped<S: ChangeSink>(
        &mut self,
        config: &Settings,
        writer: &mut Writer<S>,
        stop: &mut watch::Receiver<bool>,
        progress: &watch::Sender<Progress>,
    ) -> Result<()> {
        let mut flush_timer = tokio::time::interval(config.flush_interval);
        flush_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop_requested(stop) => return self.stop(config, writer, progress).await,
                ack = writer.acks.recv() => self.acknowledged(ack, progress)?,
                _ = flush_timer.tick() => self.flush(config, writer, false).await?,
                event = self.stream.next_event() => {
                    let event = event?.ok_or_else(|| {
                        Error::new(ErrorKind::Connect, "the server ended the replication stream")
                    })?;
                    self.handle(event, progress).await?;
                    if self.batch.changes.len() >= config.batch_size
                        || self.batch_bytes >= config.batch_bytes
                    {
                        self.flush(config, writer, false).await?;
                    }
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
            self.flush(config, writer, true).await?;
            self.drain(writer, progress).await?;
            self.catch_up(config, writer, progress).await
        };
        match tokio::time::timeout(config.shutdown_timeout, finish).await {
            Ok(finished) => finished?,
            Err(_) => tracing::warn!(
                limit = ?config.shutdown_timeout,
                "stopping before everything was stored; the rest is streamed again at the next start"
            ),
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.close()).await;
        tracing::info!("tracker stopped");
        Ok(())
    }

    /// Confirms what the writer made durable.
    fn acknowledged(&mut self, ack: Option<Ack>, progress: &watch::Sender<Progress>) -> Result<()> {
        let (durable, count) = ack.ok_or_else(|| {
            Error::new(ErrorKind::Sink, "the sink's writer stopped unexpectedly")
        })??;
        self.in_flight -= 1;
        if let Some(lsn) = durable {
            self.stream.confirm(lsn);
        }
        progress.send_modify(|p| {
            p.changes += count;
            p.stored_in_session |= count > 0;
        });
        self.report(progress);
        Ok(())
    }

    /// Waits until every batch handed to the writer is acknowledged.
    async fn drain<S: ChangeSink>(
        &mut self,
        writer: &mut Writer<S>,
        progress: &watch::Sender<Progress>,
    ) -> Result<()> {
        while self.in_flight > 0 {
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
                let before = self.batch.changes.len();
                let committed =
                    self.stitcher
                        .push(event, wal_start, Utc::now(), &mut self.batch.changes);
                let added = &self.batch.changes[before..];
                self.batch_bytes += batch_weight(added, self.batch.changes[..before].last());
                self.unrecorded |= !added.is_empty();
                if let Some(committed) = committed {
                    self.batch.durable_through = Some(committed.end_lsn);
                    progress.send_modify(|p| p.transactions += u64::from(!committed.replayed));
                }
            }
            ReplicationEvent::Keepalive { wal_end, .. } => {
                // Nothing in flight: everything before wal_end was sent and handled.
                let idle = !self.stitcher.in_transaction()
                    && self.in_flight == 0
                    && self.batch.changes.is_empty()
                    && self.batch.durable_through.is_none()
                    && !self.unrecorded;
                if idle {
                    self.pending = self.pending.max(Some(wal_end));
                }
                self.report(progress);
            }
        }
        Ok(())
    }

    /// Before stopping: reads on until the stream has passed the server's current end of WAL
    /// (which includes the sink's own last write when it shares the database), so the slot is
    /// left with no lag. Gives up quietly after a few seconds on a busy server.
    async fn catch_up<S: ChangeSink>(
        &mut self,
        config: &Settings,
        writer: &mut Writer<S>,
        progress: &watch::Sender<Progress>,
    ) -> Result<()> {
        let row = self
            .decoder
            .catalog()
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?;
        let target: Lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e| Error::protocol("the server returned an invalid LSN").with_source(e))?;
        let catch_up = async {
            while self.stream.feedback().confirmed() < target {
                let event = self.stream.next_event().await?.ok_or_else(|| {
                    Error::new(
                        ErrorKind::Connect,
                        "the server ended the replication stream",
                    )
                })?;
                self.handle(event, progress).await?;
                self.flush(config, writer, true).await?;
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

    /// Hands buffered changes to the writer with the position they complete. A position with
    /// nothing to store waits in `pending` and is handed on as an empty batch once per record
    /// interval (or at once when `force`d), so it is recorded before it is confirmed.
    async fn flush<S: ChangeSink>(
        &mut self,
        config: &Settings,
        writer: &mut Writer<S>,
        force: bool,
    ) -> Result<()> {
        let durable = self.batch.durable_through;
        let batch = if !self.batch.changes.is_empty() || (durable.is_some() && self.unrecorded) {
            self.unrecorded = durable.is_none();
            self.batch_bytes = 0;
            if durable.is_some() {
                self.pending = self.pending.filter(|pending| Some(*pending) > durable);
            }
            std::mem::take(&mut self.batch)
        } else {
            self.pending = self.pending.max(self.batch.durable_through.take());
            let due = force || self.recorded_at.elapsed() >= config.record_interval;
            match self.pending.filter(|_| due) {
                Some(lsn) => {
                    self.pending = None;
                    Batch {
                        changes: Vec::new(),
                        durable_through: Some(lsn),
                    }
                }
                None => return Ok(()),
            }
        };
        if batch.durable_through.is_some() {
            self.recorded_at = tokio::time::Instant::now();
        }
        if writer.jobs.send(batch).await.is_err() {
            return Err(writer.failure());
        }
        self.in_flight += 1;
        Ok(())
    }

    fn report(&self, progress: &watch::Sender<Progress>) {
        let feedback = self.stream.feedback();
        let (confirmed, server) = (feedback.confirmed(), feedback.received());
        progress.send_if_modified(|p| {
            let changed = p.confirmed_lsn != confirmed || p.server_lsn != server;
            p.confirmed_lsn = confirmed;
            p.server_lsn = server;
            p.lag_bytes = server.0.saturating_sub(confirmed.0);
            changed
        });
    }
}

/// The bytes `changes` add to a batch: their rows, and each context once per run of changes
/// that share it (sinks send a transaction's context once, not per row).
fn batch_weight(changes: &[Change], previous: Option<&Change>) -> usize {
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

/// Compares the slot's position with the sink's at start. When the slot is ahead, the changes
/// in between are gone from the WAL and not in the sink: refused, unless the operator accepted
/// the gap, which is then stored as a record of its own. Returns the position to resume from.
async fn check_gap<S: ChangeSink>(
    config: &Settings,
    accept_gap: bool,
    sql: &tokio_postgres::Client,
    sink: &mut S,
    database: &str,
    stored: Lsn,
) -> Result<Lsn> {
    let row = sql
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots \
             WHERE slot_name = $1",
            &[&config.slot],
        )
        .await?;
    let Some(slot) = row.and_then(|row| row.get::<_, Option<String>>(0)) else {
        return Ok(stored);
    };
    let slot: Lsn = slot
        .parse()
        .map_err(|e| Error::protocol("the server returned an invalid LSN").with_source(e))?;
    if slot <= stored {
        return Ok(stored);
    }
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

/// Resolves once a stop was requested (or the handle is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
