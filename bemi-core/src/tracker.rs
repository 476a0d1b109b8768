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
use tokio::sync::watch;
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
        mut self,
        mut stop: watch::Receiver<bool>,
        progress: watch::Sender<Progress>,
    ) -> Result<()> {
        let mut backoff = self.min_backoff;
        loop {
            let session = Session::start(&mut self, &progress).await;
            let outcome = match session {
                Ok(session) => session.run(&mut self, &mut stop, &progress).await,
                Err(e) => Err(e),
            };
            progress.send_modify(|p| p.connected = false);
            let error = match outcome {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => e,
                Err(e) => {
                    tracing::error!(error = %e.report(), "tracker stopped");
                    progress.send_modify(|p| p.last_error = Some(e.report()));
                    return Err(e);
                }
            };
            let made_progress = progress.borrow().connected_once;
            if made_progress {
                backoff = self.min_backoff;
                progress.send_modify(|p| p.connected_once = false);
            }
            tracing::warn!(error = %error.report(), retry_in = ?backoff, "tracker session ended; reconnecting");
            progress.send_modify(|p| {
                p.reconnects += 1;
                p.last_error = Some(error.report());
            });
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop_requested(&mut stop) => return Ok(()),
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }
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
    connected_once: bool,
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
}

impl Session {
    async fn start<S: ChangeSink>(
        config: &mut TrackerBuilder<S>,
        progress: &watch::Sender<Progress>,
    ) -> Result<Session> {
        let sql = config.source.connect().await?;
        if config.setup {
            SourceSetup::new(&config.slot, &config.publication)
                .tables(config.tables.clone())
                .prepare(&sql)
                .await?;
        } else {
            setup::check_server(&sql).await?;
        }
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
        let start = config.sink.open(&source).await?;
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
        })
    }

    async fn run<S: ChangeSink>(
        mut self,
        config: &mut TrackerBuilder<S>,
        stop: &mut watch::Receiver<bool>,
        progress: &watch::Sender<Progress>,
    ) -> Result<()> {
        let mut flush_timer = tokio::time::interval(config.flush_interval);
        flush_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop_requested(stop) => {
                    self.flush(&mut config.sink, progress).await?;
                    self.catch_up(&mut config.sink, progress).await?;
                    self.stream.close().await;
                    tracing::info!("tracker stopped");
                    return Ok(());
                }
                _ = flush_timer.tick() => self.flush(&mut config.sink, progress).await?,
                event = self.stream.next_event() => {
                    let event = event?.ok_or_else(|| {
                        Error::new(ErrorKind::Connect, "the server ended the replication stream")
                    })?;
                    self.handle(event, progress).await?;
                    if self.batch.changes.len() >= config.batch_size {
                        self.flush(&mut config.sink, progress).await?;
                    }
                }
            }
        }
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
        sink: &mut S,
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
                self.flush(sink, progress).await?;
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

    /// Hands buffered changes to the sink and confirms what became durable.
    async fn flush<S: ChangeSink>(
        &mut self,
        sink: &mut S,
        progress: &watch::Sender<Progress>,
    ) -> Result<()> {
        let durable = self.batch.durable_through;
        let needs_write = !self.batch.changes.is_empty() || (durable.is_some() && self.unrecorded);
        if needs_write {
            let batch = std::mem::take(&mut self.batch);
            let count = batch.changes.len() as u64;
            sink.write(batch).await?;
            self.unrecorded = durable.is_none();
            progress.send_modify(|p| p.changes += count);
        } else {
            // Transactions without changes to store (own writes, replays): nothing to write.
            self.batch.durable_through = None;
        }
        if let Some(lsn) = durable {
            self.stream.confirm(lsn);
        }
        self.report(progress);
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
