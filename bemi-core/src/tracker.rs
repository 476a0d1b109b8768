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
//!   position is confirmed, so busy untracked tables and idle periods let the slot advance.
//! * **Reconnects.** Transient failures (server restart, network, destination down) end the
//!   session; the tracker reconnects with exponential backoff and replays from the durable
//!   position. Other errors stop it and are returned by [`TrackerHandle::shutdown`] and
//!   [`TrackerHandle::join`].
//! * **Never drops a slot.**

use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

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
            source,
            sink,
            slot: "bemi".to_owned(),
            publication: "bemi".to_owned(),
            tables: Tables::All,
            setup: true,
            batch_size: 1_000,
            flush_interval: Duration::from_millis(100),
            status_interval: crate::replication::DEFAULT_STATUS_INTERVAL,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Settings of a tracker; see [`Tracker::builder`].
#[derive(Debug)]
pub struct TrackerBuilder<S> {
    source: ConnectOptions,
    sink: S,
    slot: String,
    publication: String,
    tables: Tables,
    setup: bool,
    batch_size: usize,
    flush_interval: Duration,
    status_interval: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl<S: ChangeSink> TrackerBuilder<S> {
    /// The replication slot (default `bemi`, as in Bemi's docs).
    pub fn slot(mut self, slot: impl Into<String>) -> Self {
        self.slot = slot.into();
        self
    }

    /// The publication (default `bemi`).
    pub fn publication(mut self, publication: impl Into<String>) -> Self {
        self.publication = publication.into();
        self
    }

    /// The tables a publication created by the tracker covers (default: all).
    pub fn tables(mut self, tables: Tables) -> Self {
        self.tables = tables;
        self
    }

    /// Whether to create a missing publication and slot at start (default `true`). Checks of
    /// the server run either way.
    pub fn create_missing(mut self, create: bool) -> Self {
        self.setup = create;
        self
    }

    /// The most changes handed to the sink at once (default 1,000).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// How long changes may wait for a fuller batch (default 100 ms).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// How often standby status updates are sent (default 1 s).
    pub fn status_interval(mut self, interval: Duration) -> Self {
        self.status_interval = interval;
        self
    }

    /// The first and the longest wait between reconnection attempts (default 200 ms, 30 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }

    /// The settings apart from the sink, which sessions borrow while the sink moves between
    /// them and their writer task.
    fn split(self) -> (Settings, S) {
        let settings = Settings {
            source: self.source,
            slot: self.slot,
            publication: self.publication,
            tables: self.tables,
            setup: self.setup,
            batch_size: self.batch_size,
            flush_interval: self.flush_interval,
            status_interval: self.status_interval,
            min_backoff: self.min_backoff,
            max_backoff: self.max_backoff,
        };
        (settings, self.sink)
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
        let (config, mut sink) = self.split();
        let mut backoff = config.min_backoff;
        loop {
            let session = Session::start(&config, &mut sink, &progress).await;
            let outcome = match session {
                Ok(session) => {
                    let (returned, outcome) =
                        session.run(&config, sink, &mut stop, &progress).await;
                    sink = returned?;
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
            let made_progress = progress.borrow().connected_once;
            if made_progress {
                backoff = config.min_backoff;
                progress.send_modify(|p| p.connected_once = false);
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

#[derive(Debug)]
struct Settings {
    source: ConnectOptions,
    slot: String,
    publication: String,
    tables: Tables,
    setup: bool,
    batch_size: usize,
    flush_interval: Duration,
    status_interval: Duration,
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
    connected_once: bool,
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
    /// Changes were handed to the sink without a position recorded after them.
    unrecorded: bool,
    /// Jobs sent to the writer and not yet acknowledged.
    in_flight: usize,
}

/// Work for the writer task, done in order.
enum Job {
    /// Store a batch; acknowledged with its `durable_through`.
    Write(Batch),
    /// Nothing to store (transactions without changes to keep): acknowledged as durable once
    /// every earlier batch is.
    Confirm(Lsn),
}

/// What the writer reports per job: the position now durable, and how many changes it stored.
type Ack = Result<(Option<Lsn>, u64)>;

/// The sink on its own task, so that decoding the next batch overlaps with storing this one.
struct Writer<S> {
    jobs: mpsc::Sender<Job>,
    acks: mpsc::UnboundedReceiver<Ack>,
    task: JoinHandle<S>,
}

impl<S: ChangeSink> Writer<S> {
    fn spawn(mut sink: S) -> Self {
        let (jobs, mut queue) = mpsc::channel::<Job>(1);
        let (ack, acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(job) = queue.recv().await {
                let result = match job {
                    Job::Write(batch) => {
                        let (durable, count) = (batch.durable_through, batch.changes.len() as u64);
                        sink.write(batch).await.map(|()| (durable, count))
                    }
                    Job::Confirm(lsn) => Ok((Some(lsn), 0)),
                };
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

    /// Stops the writer after its current job and takes the sink back.
    async fn finish(self) -> Result<S> {
        drop(self.jobs);
        self.task.await.map_err(|e| {
            Error::new(ErrorKind::Sink, "the sink panicked while writing").with_source(e)
        })
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
        sink: &mut S,
        progress: &watch::Sender<Progress>,
    ) -> Result<Session> {
        let sql = config.source.connect().await?;
        setup::check_server(&sql).await?;
        let mut client = ReplicationClient::connect(&config.source)
            .await?
            .with_status_interval(config.status_interval);
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
        let start = sink.open(&source).await?;
        check_stored_position(start.durable, system.xlog_pos, &config.slot)?;
        if config.setup {
            let mut setup = SourceSetup::new(&config.slot, &config.publication)
                .tables(config.tables.clone())
                .unrecorded(start.ignore_tables.iter().cloned());
            if let Some(stored) = start.durable {
                setup = setup.resuming_from(stored);
            }
            setup.prepare(&sql).await?;
        }
        let mut stitcher = Stitcher::new(database);
        for (schema, table) in start.ignore_tables {
            stitcher.ignore_table(schema, table);
        }
        let durable = start.durable.unwrap_or(Lsn::ZERO);
        stitcher.resume_after(durable);
        let stream = client
            .start_replication(&config.slot, &[&config.publication], durable)
            .await?;
        progress.send_modify(|p| {
            p.connected = true;
            p.connected_once = true;
        });
        tracing::info!(slot = %config.slot, durable = %durable, "tracking changes");
        Ok(Session {
            stream,
            decoder: RowDecoder::new(sql),
            stitcher,
            batch: Batch::default(),
            unrecorded: false,
            in_flight: 0,
        })
    }

    /// Streams until a stop is requested or an error ends the session; always gives the sink
    /// back.
    async fn run<S: ChangeSink>(
        mut self,
        config: &Settings,
        sink: S,
        stop: &mut watch::Receiver<bool>,
        progress: &watch::Sender<Progress>,
    ) -> (Result<S>, Result<()>) {
        let mut writer = Writer::spawn(sink);
        let outcome = self
            .stream_until_stopped(config, &mut writer, stop, progress)
            .await;
        (writer.finish().await, outcome)
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
                _ = stop_requested(stop) => {
                    self.flush(writer).await?;
                    self.drain(writer, progress).await?;
                    self.catch_up(writer, progress).await?;
                    self.stream.close().await;
                    tracing::info!("tracker stopped");
                    return Ok(());
                }
                ack = writer.acks.recv() => self.acknowledged(ack, progress)?,
                _ = flush_timer.tick() => self.flush(writer).await?,
                event = self.stream.next_event() => {
                    let event = event?.ok_or_else(|| {
                        Error::new(ErrorKind::Connect, "the server ended the replication stream")
                    })?;
                    self.handle(event, progress).await?;
                    if self.batch.changes.len() >= config.batch_size {
                        self.flush(writer).await?;
                    }
                }
            }
        }
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
        progress.send_modify(|p| p.changes += count);
        self.report(progress);
        Ok(())
    }

    /// Waits until every job handed to the writer is acknowledged.
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
                let added = self.batch.changes.len() - before;
                self.unrecorded |= added > 0;
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
                    self.stream.confirm(wal_end);
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
                self.flush(writer).await?;
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

    /// Hands buffered changes to the writer; a position with nothing to store is queued as a
    /// confirmation, so it is confirmed only after the batches before it are durable.
    async fn flush<S: ChangeSink>(&mut self, writer: &mut Writer<S>) -> Result<()> {
        let durable = self.batch.durable_through;
        let needs_write = !self.batch.changes.is_empty() || (durable.is_some() && self.unrecorded);
        let job = if needs_write {
            self.unrecorded = durable.is_none();
            Job::Write(std::mem::take(&mut self.batch))
        } else if let Some(lsn) = self.batch.durable_through.take() {
            Job::Confirm(lsn)
        } else {
            return Ok(());
        };
        if writer.jobs.send(job).await.is_err() {
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

/// Resolves once a stop was requested (or the handle is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
