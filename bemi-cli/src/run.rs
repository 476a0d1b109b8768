//! `bemi run`: the standalone worker, over one source (the connection flags and variables) or
//! the sources of a config file, each tracked by its own tracker task.

use std::path::PathBuf;
use std::time::Duration;

use bemi_core::changes_table::{Layout, Retention};
use bemi_core::rules::Rules;
use bemi_core::setup::Tables;
use bemi_core::sink::{ChangeSink, JsonLinesFileSink, NatsSink, PostgresSink};
use bemi_core::{ConnectOptions, Error, ErrorKind, Result, Tracker, TrackerHandle};
use tokio::signal::unix::{signal, SignalKind};

use crate::args::RunArgs;
use crate::monitor::{Monitor, Watched};

/// One tracked database: where it is, its slot, and where its changes go.
#[derive(Debug)]
pub(crate) struct Source {
    /// The source's name in logs and metrics.
    pub(crate) name: String,
    pub(crate) options: ConnectOptions,
    pub(crate) destination: ConnectOptions,
    pub(crate) destination_schema: String,
    pub(crate) slot: String,
    pub(crate) publication: String,
    pub(crate) tables: Tables,
    pub(crate) batch_size: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) linger: Duration,
    pub(crate) accept_gap: bool,
    pub(crate) replica_identity: bool,
    /// How a `changes` table the worker creates is laid out.
    pub(crate) layout: Layout,
    /// How long `changes` keeps changes (none: forever).
    pub(crate) retention: Option<Retention>,
    /// Publish to NATS JetStream instead of `destination` (`--destination nats://…`).
    pub(crate) nats: Option<NatsSink>,
    /// Append JSON lines to this file instead (`--output`).
    pub(crate) output: Option<PathBuf>,
    /// The backlog read through SQL before streaming, into NATS or a file.
    pub(crate) catch_up_bytes: u64,
    /// What is recorded.
    pub(crate) rules: Rules,
}

impl Source {
    /// The source the connection flags and variables name.
    fn from_args(args: &RunArgs) -> Result<Source> {
        let options = args.source.options()?;
        let (rules, tables) =
            crate::config::rules_and_tables(args.rules.as_deref(), args.source.tables())?;
        Ok(Source {
            name: args.source.slot.clone(),
            destination: args.destination.options(&options)?,
            options,
            destination_schema: args.destination.destination_schema.clone(),
            slot: args.source.slot.clone(),
            publication: args.source.publication.clone(),
            tables,
            batch_size: args.batch_size,
            flush_interval: args.flush_interval(),
            linger: args.linger(),
            accept_gap: args.accept_gap,
            replica_identity: !args.no_replica_identity,
            layout: Layout::Partitioned(args.partitions.partition_interval),
            retention: args.retention.retention()?,
            nats: args
                .nats_destination
                .as_ref()
                .map(|url| args.nats.sink(url)),
            output: args.output.clone(),
            catch_up_bytes: args.catch_up_bytes,
            rules,
        })
    }

    fn spawn(self) -> Result<TrackerHandle> {
        let (source, destination) = (&self.options, &self.destination);
        // Sinks faster than the walsender catch up through SQL; the `changes` table is slower.
        let catch_up = self.nats.is_some() || self.output.is_some();
        let (sink, destination): (Box<dyn ChangeSink>, String) = match (self.nats, self.output) {
            (Some(nats), _) => (Box::new(nats), "NATS JetStream".to_owned()),
            (None, Some(path)) => {
                let at = path.display().to_string();
                (Box::new(JsonLinesFileSink::new(path)), at)
            }
            (None, None) => {
                let mut sink = PostgresSink::connect(destination)?
                    .schema(&self.destination_schema)
                    .layout(self.layout);
                if let Some(retention) = self.retention {
                    sink = sink.retention(retention);
                }
                let at = format!(
                    "{}:{}/{}",
                    destination.host(),
                    destination.port(),
                    destination.dbname()
                );
                (Box::new(sink), at)
            }
        };
        tracing::info!(
            source = %self.name,
            database = %format!("{}:{}/{}", source.host(), source.port(), source.dbname()),
            %destination,
            slot = %self.slot,
            "starting a tracker"
        );
        let mut builder = Tracker::builder(self.options, sink);
        if catch_up {
            builder = builder.catch_up(self.catch_up_bytes);
        }
        Ok(builder
            .name(self.name)
            .slot(self.slot)
            .publication(self.publication)
            .tables(self.tables)
            .batch_size(self.batch_size)
            .flush_interval(self.flush_interval)
            .linger(self.linger)
            .accept_gap(self.accept_gap)
            .replica_identity(self.replica_identity)
            .rules(self.rules)
            .spawn())
    }
}

pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let sources = match &args.config {
        Some(path) => crate::config::load(path, &args)?,
        None => vec![Source::from_args(&args)?],
    };
    // The recorder goes in before the trackers start, so that they record into it.
    let monitor = match args.metrics_listen {
        Some(address) => Some(Monitor::bind(address).await?),
        None => None,
    };
    tracing::info!(sources = sources.len(), "starting the bemi worker");
    let mut trackers = Vec::with_capacity(sources.len());
    for source in sources {
        trackers.push((source.name.clone(), source.spawn()?));
    }
    let server = monitor.map(|monitor| {
        let watched = trackers
            .iter()
            .map(|(name, tracker)| Watched {
                name: name.clone(),
                tracker: tracker.watch(),
            })
            .collect();
        monitor.serve(watched, args.ready_max_lag_bytes)
    });

    let signal_error = |e: std::io::Error| {
        Error::new(ErrorKind::Config, "could not listen for signals").with_source(e)
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    // One source stopping does not stop the others; the worker exits when all have stopped.
    let all_stopped = futures_util::future::join_all(trackers.iter().map(|(_, t)| t.stopped()));
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: flushing and stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT: flushing and stopping"),
        _ = all_stopped => {}
    }
    let stopping = trackers.into_iter().map(|(name, tracker)| async move {
        let progress = tracker.progress();
        let result = tracker.shutdown().await;
        tracing::info!(
            source = %name,
            changes = progress.changes,
            transactions = progress.transactions,
            "stopped"
        );
        (name, result)
    });
    let results = futures_util::future::join_all(stopping).await;
    if let Some(server) = server {
        server.abort();
    }
    let count = results.len();
    let mut failed: Vec<(String, Error)> = results
        .into_iter()
        .filter_map(|(name, result)| result.err().map(|e| (name, e)))
        .collect();
    match failed.len() {
        0 => Ok(()),
        1 if count == 1 => Err(failed.remove(0).1),
        _ => {
            let names: Vec<String> = failed.iter().map(|(name, _)| format!("{name:?}")).collect();
            let (_, first) = failed.remove(0);
            Err(Error::new(
                first.kind(),
                format!(
                    "{} of {count} sources stopped with an error ({}; each is logged), the first",
                    names.len(),
                    names.join(", ")
                ),
            )
            .with_source(first))
        }
    }
}
