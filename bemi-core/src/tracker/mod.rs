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
//! * **Standby takeover.** Several trackers (in several processes) may run against one slot:
//!   the one that gets the slot streams, the others wait as standbys ([`Progress::standby`],
//!   logged, and in the `bemi_tracker_state` metric) and one of them takes the slot over within
//!   about [`standby_interval`](TrackerBuilder::standby_interval) of the active one stopping or
//!   dying, resuming from what the sink recorded: nothing lost or doubled.
//! * **Failover.** A new timeline on the source (a promoted replica) is logged; a slot missing
//!   there stops the tracker with [`ErrorKind::SourceChanged`] and what was lost; another
//!   cluster at the source's address stops it too.
//! * **Catch-up** (off by default). A backlog of at least
//!   [`catch_up`](TrackerBuilder::catch_up) bytes of WAL at the start of a session is read
//!   through SQL in large chunks, faster than the walsender sends it, before streaming; with
//!   the same guarantees.
//! * **Metrics.** Recorded through the `metrics` facade, labeled with the tracker's
//!   [`name`](TrackerBuilder::name); see [`crate::metrics`].
//! * **Never drops a slot.**

mod backlog;
mod ledger;
mod session;
mod source;
mod standby;
mod view;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::config::ConnectOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::{Instruments, State};
use crate::rules::Rules;
use crate::setup::Tables;
use crate::sink::ChangeSink;
use crate::Lsn;
use session::Session;
use source::SourceIdentity;
pub use view::TrackerWatch;

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
                name: None,
                slot: "bemi".to_owned(),
                publication: "bemi".to_owned(),
                tables: Tables::All,
                create_missing: true,
                replica_identity: true,
                accept_gap: false,
                batch_size: 1_000,
                batch_bytes: 64 * 1024 * 1024,
                concurrent_writes: 2,
                flush_interval: Duration::from_millis(100),
                linger: Duration::from_millis(5),
                record_interval: Duration::from_secs(10),
                status_interval: crate::replication::DEFAULT_STATUS_INTERVAL,
                receive_timeout: crate::replication::DEFAULT_RECEIVE_TIMEOUT,
                write_timeout: Duration::from_secs(300),
                shutdown_timeout: Duration::from_secs(30),
                min_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(30),
                standby_interval: Duration::from_millis(500),
                rules: Arc::new(Rules::new()),
                catch_up: None,
                catch_up_chunk: 256 * 1024 * 1024,
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

    /// The name of this tracker in logs (the span `tracker{source=…}`) and metrics (the label
    /// `source`); by default the slot's name. Give each tracker of a process its own.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.settings.name = Some(name.into());
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
        self.settings.create_missing = create;
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
    /// `true`; see
    /// [`SourceSetup::replica_identity`](crate::setup::SourceSetup::replica_identity)). Only
    /// with [`create_missing`](Self::create_missing).
    pub fn replica_identity(mut self, set: bool) -> Self {
        self.settings.replica_identity = set;
        self
    }

    /// The most changes handed to the sink at once (default 1,000); a full batch goes at once.
    pub fn batch_size(mut self, size: usize) -> Self {
        self.settings.batch_size = size.max(1);
        self
    }

    /// How many full batches the sink may store at once (default 2). A sink that pipelines
    /// ([`ChangeSink::submit`], as [`PostgresSink`](crate::sink::PostgresSink) does) stores the
    /// next batch of a backlog or a large transaction while the one before commits; positions
    /// are confirmed in order, each once every batch up to it is durable. Each batch in flight
    /// holds its changes in memory (up to [`batch_bytes`](Self::batch_bytes)). Transactions
    /// that go to the sink as soon as they commit (the stream is quiet) still go one batch at a
    /// time, so that those committing meanwhile gather into the next one.
    pub fn concurrent_writes(mut self, batches: usize) -> Self {
        self.settings.concurrent_writes = batches.max(1);
        self
    }

    /// The most bytes of row and context JSON handed to the sink at once (default 64 MiB);
    /// a single larger change goes in a batch of its own.
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.settings.batch_bytes = bytes.max(1);
        self
    }

    /// The longest changes wait for a fuller batch while the stream stays busy (default 100 ms).
    ///
    /// It is an upper bound, not a delay: a committed transaction goes to the sink as soon as
    /// nothing more waits in the stream and the sink is not writing (after the
    /// [`linger`](Self::linger)), and transactions that commit while it writes go together in
    /// its next batch.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.settings.flush_interval = interval;
        self
    }

    /// How long a committed change waits for others to join its batch before it goes to an
    /// idle sink (default 5 ms; zero hands it on at once).
    ///
    /// Under load, a short linger turns many one-transaction writes into fewer, larger ones:
    /// with a sink in the tracked server, less of the server's CPU goes to storing the audit
    /// trail and more is left to the application (see `BENCHMARKS.md`). It adds at most
    /// `linger` to the time a change takes to be stored, and does not hold back a full batch.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use bemi_core::{sink::ChannelSink, Tracker};
    /// # let (sink, _changes) = ChannelSink::new(16);
    /// let tracker = Tracker::builder("postgres://localhost/app".parse()?, sink)
    ///     .linger(Duration::from_millis(2))
    ///     .spawn();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn linger(mut self, linger: Duration) -> Self {
        self.settings.linger = linger;
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

    /// How often a standby checks whether the slot is free (default 500 ms): it takes the slot
    /// over about this long after the process streaming from it stopped, plus the time its
    /// session takes to start. See [`Progress::standby`].
    pub fn standby_interval(mut self, interval: Duration) -> Self {
        self.settings.standby_interval = interval;
        self
    }

    /// What is recorded: which tables, columns and operations, and which values are masked or
    /// hashed (default: everything as it is). See [`crate::rules`]. The rules are applied while
    /// rows are decoded, before any sink; they are [checked](Rules::check) at start, and
    /// changes decoded after a start are recorded under the rules it was given.
    ///
    /// ```no_run
    /// # async fn run(options: bemi_core::ConnectOptions) -> bemi_core::Result<()> {
    /// use bemi_core::rules::{Rules, TableRule};
    ///
    /// let rules = Rules::new()
    ///     .ignore_table("public.sessions")
    ///     .table(TableRule::new("public.users").mask(["password_digest"]).ignore(["updated_at"]));
    /// let sink = bemi_core::sink::PostgresSink::connect(&options)?;
    /// let tracker = bemi_core::Tracker::builder(options, sink).rules(rules).start().await?;
    /// # drop(tracker); Ok(()) }
    /// ```
    pub fn rules(mut self, rules: Rules) -> Self {
        self.settings.rules = Arc::new(rules);
        self
    }

    /// Catches up through SQL when a session starts with a backlog of at least `threshold`
    /// bytes of WAL (default: never).
    ///
    /// The walsender sends changes one network message at a time, which bounds a drain after
    /// downtime at what it can send, not at what PostgreSQL can decode. With catch-up, the
    /// backlog up to the end of WAL at the session's start is read with
    /// `pg_logical_slot_peek_binary_changes` on an ordinary connection, in chunks of
    /// [`catch_up_chunk`](Self::catch_up_chunk) of WAL, several times faster; the slot is
    /// advanced (`pg_replication_slot_advance`) only to what the sink reported durable, and
    /// then streaming resumes from there. Delivery, gap checks, standby takeover and memory
    /// stay as without it: the rows of one chunk are read as the sink keeps up, so even a
    /// transaction of millions of rows takes no more memory than a batch.
    ///
    /// It helps sinks faster than the walsender: [`JsonLinesFileSink`](crate::sink::JsonLinesFileSink),
    /// [`JsonLinesSink`](crate::sink::JsonLinesSink), [`ChannelSink`](crate::sink::ChannelSink)
    /// and NATS. [`PostgresSink`](crate::sink::PostgresSink) stores more slowly than the
    /// walsender sends, so it gains nothing. The server decodes each chunk before returning
    /// any of it (into a tuplestore spilled to its disk past `work_mem`) and a peek needs the
    /// slot free of walsenders, so a small backlog is streamed as usual.
    ///
    /// ```no_run
    /// # async fn run(options: bemi_core::ConnectOptions) -> bemi_core::Result<()> {
    /// let sink = bemi_core::sink::JsonLinesFileSink::new("changes.jsonl");
    /// let tracker = bemi_core::Tracker::builder(options, sink)
    ///     .catch_up(64 * 1024 * 1024)
    ///     .start()
    ///     .await?;
    /// # drop(tracker); Ok(()) }
    /// ```
    pub fn catch_up(mut self, threshold: u64) -> Self {
        self.settings.catch_up = Some(threshold);
        self
    }

    /// The most WAL one catch-up query reads (default 256 MiB); see [`catch_up`](Self::catch_up).
    /// Each query decodes from the slot's restart position, so larger chunks read less WAL
    /// twice; the server holds a chunk's output (on its disk when large) until it is read.
    pub fn catch_up_chunk(mut self, bytes: u64) -> Self {
        self.settings.catch_up_chunk = bytes.max(1);
        self
    }

    /// Spawns the tracker and waits until it streams (or waits as a standby), so that an
    /// application learns at start whether tracking works (settings, slot, publication,
    /// privileges, sink) before going on.
    /// Every change committed after this returns is tracked (with a slot it had to create,
    /// changes committed while it was being created may precede the slot's starting point).
    /// When another process streams from the slot, it returns once the tracker waits as a
    /// standby ([`Progress::standby`]); changes are then tracked by the other process until
    /// this one takes over.
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
            .wait_for(|p| p.connected || p.standby || p.last_error.is_some())
            .await;
        if progress.connected || progress.standby {
            return Ok(tracker);
        }
        // An error the tracker gives up on ends its task with that error; it keeps retrying
        // after any other, which is in the progress.
        tracker.shutdown().await?;
        Err(match progress.last_error {
            Some(cause) => Error::new(cause.kind(), "the tracker did not start")
                .with_code_of(&cause)
                .with_transient(cause.is_transient())
                .with_source(cause),
            None => Error::new(ErrorKind::Connect, "the tracker did not start"),
        })
    }

    /// Spawns the tracker on the current tokio runtime. Its metrics go to the recorder
    /// installed now (see [`crate::metrics`]).
    pub fn spawn(self) -> TrackerHandle {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let watch = TrackerWatch::new(progress_rx, self.settings.source.clone());
        let name = self.settings.name().to_owned();
        let metrics = Instruments::new(&name);
        let span = tracing::info_span!("tracker", source = %name);
        let task = tokio::spawn(
            async move {
                metrics.state(State::Connecting);
                let result = self.run(stop_rx, &progress_tx, &metrics).await;
                metrics.state(State::Stopped);
                progress_tx.send_modify(|p| {
                    p.connected = false;
                    p.standby = false;
                    p.catching_up = false;
                });
                result
            }
            .instrument(span),
        );
        TrackerHandle {
            stop: stop_tx,
            watch,
            task,
        }
    }

    async fn run(
        self,
        mut stop: watch::Receiver<bool>,
        progress: &watch::Sender<Progress>,
        metrics: &Instruments,
    ) -> Result<()> {
        let TrackerBuilder {
            settings: config,
            mut sink,
        } = self;
        let mut backoff = config.min_backoff;
        let mut accept_gap = config.accept_gap;
        let mut identity = SourceIdentity::default();
        loop {
            let began = tokio::time::Instant::now();
            let started = tokio::select! {
                started = Session::start(&config, accept_gap, &mut sink, &mut identity, metrics) => started,
                _ = stop_requested(&mut stop) => return Ok(()),
            };
            let outcome = match started {
                Ok(session) => {
                    if progress.borrow().standby {
                        tracing::info!(slot = %config.slot, "took over the slot from the process that streamed from it");
                    }
                    enter(State::Streaming, progress, metrics);
                    accept_gap = false;
                    let (returned, outcome) = session.run(&config, sink, &mut stop, progress).await;
                    match returned {
                        Ok(returned) => sink = returned,
                        Err(e) => return outcome.and(Err(e)),
                    }
                    outcome
                }
                Err(e) => Err(e),
            };
            let outcome = match outcome {
                Err(e) if e.kind() == ErrorKind::SlotMissing => {
                    match identity.recheck(&config.source, &config.slot).await {
                        Ok(()) => Err(identity.explain(e, &config.slot)),
                        Err(changed) => Err(changed),
                    }
                }
                outcome => outcome,
            };
            let error = match outcome {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::SlotInUse => {
                    if !progress.borrow().standby {
                        tracing::info!(
                            slot = %config.slot,
                            reason = %e.message(),
                            "another process streams from the slot; waiting as a standby to take over when it stops"
                        );
                    }
                    enter(State::Standby, progress, metrics);
                    backoff = config.min_backoff;
                    if !standby::wait_until_free(&config, &mut stop).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) if e.is_transient() => e,
                Err(e) => {
                    tracing::error!(error = %e.report(), "tracker stopped");
                    metrics.error(&e);
                    progress.send_modify(|p| p.record_error(&e));
                    return Err(e);
                }
            };
            enter(State::Connecting, progress, metrics);
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
            metrics.error(&error);
            metrics.reconnected();
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

/// Moves the tracker to `state`, in its progress and its metrics.
fn enter(state: State, progress: &watch::Sender<Progress>, metrics: &Instruments) {
    progress.send_if_modified(|p| {
        let (connected, standby) = (state == State::Streaming, state == State::Standby);
        let changed = p.connected != connected || p.standby != standby;
        p.connected = connected;
        p.standby = standby;
        p.catching_up &= connected;
        changed
    });
    metrics.state(state);
}

/// A session that streamed this long counts as progress even when it had nothing to store.
const PROGRESS_WITHOUT_STORING: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Settings {
    source: ConnectOptions,
    name: Option<String>,
    slot: String,
    publication: String,
    tables: Tables,
    create_missing: bool,
    replica_identity: bool,
    accept_gap: bool,
    batch_size: usize,
    batch_bytes: usize,
    concurrent_writes: usize,
    flush_interval: Duration,
    linger: Duration,
    record_interval: Duration,
    status_interval: Duration,
    receive_timeout: Duration,
    write_timeout: Duration,
    shutdown_timeout: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    standby_interval: Duration,
    rules: Arc<Rules>,
    catch_up: Option<u64>,
    catch_up_chunk: u64,
}

impl Settings {
    /// The tracker's name in logs and metrics.
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.slot)
    }
}

/// What a running tracker has done.
///
/// Published when a batch is stored, at the server's keepalives and at each
/// [`flush_interval`](TrackerBuilder::flush_interval), not once a transaction: its counts and
/// `server_lsn` may trail the stream by up to a flush interval.
///
/// Serializes (serde) as an object of its public fields, LSNs as PostgreSQL prints them and
/// the last error as `{"kind", "code", "transient", "message"}`, for a status endpoint:
///
/// ```
/// let progress = bemi_core::Progress::default();
/// let json = serde_json::to_value(&progress).unwrap();
/// assert_eq!(json["stored_lsn"], "0/0");
/// assert_eq!(json["last_error"], serde_json::Value::Null);
/// ```
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct Progress {
    /// The last position confirmed to the slot (stored by the sink, or idle).
    pub confirmed_lsn: Lsn,
    /// Every transaction that committed on the source before this position is stored by the
    /// sink, or had nothing to store. Ahead of `confirmed_lsn` while positions without changes
    /// wait to be recorded (see [`TrackerBuilder::record_interval`]); never goes backwards.
    /// What [`TrackerWatch::sync`] waits for.
    pub stored_lsn: Lsn,
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
    /// Whether the tracker waits as a standby: another process streams from the slot, and
    /// this tracker takes over when it stops (see
    /// [`standby_interval`](TrackerBuilder::standby_interval)).
    pub standby: bool,
    /// Whether the session reads a backlog through SQL before streaming (see
    /// [`TrackerBuilder::catch_up`]).
    pub catching_up: bool,
    /// The error that ended the last session, if any, whole (kind, SQLSTATE, causes).
    pub last_error: Option<Error>,
    /// Whether the current session stored something (for the backoff).
    #[serde(skip)]
    stored_in_session: bool,
}

impl Progress {
    fn record_error(&mut self, error: &Error) {
        self.last_error = Some(error.clone());
    }
}

/// Controls a spawned tracker.
///
/// The handle shuts the tracker down and is not cloneable; [`watch`](Self::watch) gives a
/// cloneable [`TrackerWatch`] for everyone else (request handlers, health checks).
#[derive(Debug)]
pub struct TrackerHandle {
    stop: watch::Sender<bool>,
    watch: TrackerWatch,
    task: JoinHandle<Result<()>>,
}

impl TrackerHandle {
    /// The latest progress.
    pub fn progress(&self) -> Progress {
        self.watch.progress()
    }

    /// A receiver that sees every progress update.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.watch.subscribe()
    }

    /// A cloneable view of the tracker: progress, whether it stopped, and
    /// [`sync`](TrackerWatch::sync).
    pub fn watch(&self) -> TrackerWatch {
        self.watch.clone()
    }

    /// Waits until `done` holds for the progress, or the tracker stops.
    pub async fn wait_for(&self, done: impl FnMut(&Progress) -> bool) -> Progress {
        self.watch.wait_for(done).await
    }

    /// Read-your-writes: waits until everything committed on the source before the call is
    /// stored; fails at once when the tracker has stopped. See [`TrackerWatch::sync`].
    pub async fn sync(&self) -> Result<Lsn> {
        self.watch.sync().await
    }

    /// Waits until the tracker stops (after an error, or a shutdown); then [`join`](Self::join)
    /// returns at once.
    pub async fn stopped(&self) {
        self.watch.stopped().await
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

/// Resolves once a stop was requested (or the handle is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
