//! `bemi run`: the standalone worker.

use bemi_core::changes_table::Layout;
use bemi_core::sink::PostgresSink;
use bemi_core::{Result, Tracker};
use tokio::signal::unix::{signal, SignalKind};

use crate::args::RunArgs;

pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let source = args.source.options()?;
    let destination = args.destination.options(&source)?;
    let mut sink = PostgresSink::connect(&destination)?
        .schema(&args.destination.destination_schema)
        .layout(Layout::Partitioned(args.partitions.partition_interval));
    if let Some(retention) = args.retention.retention()? {
        sink = sink.retention(retention);
    }
    tracing::info!(
        source = %format!("{}:{}/{}", source.host(), source.port(), source.dbname()),
        destination = %format!("{}:{}/{}", destination.host(), destination.port(), destination.dbname()),
        slot = %args.source.slot,
        "starting the bemi worker"
    );
    let tracker = Tracker::builder(source, sink)
        .slot(&args.source.slot)
        .publication(&args.source.publication)
        .tables(args.source.tables())
        .batch_size(args.batch_size)
        .flush_interval(args.flush_interval())
        .accept_gap(args.accept_gap)
        .replica_identity(!args.no_replica_identity)
        .spawn();

    let signal_error = |e: std::io::Error| {
        bemi_core::Error::new(bemi_core::ErrorKind::Config, "could not listen for signals")
            .with_source(e)
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: flushing and stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT: flushing and stopping"),
        _ = tracker.stopped() => {}
    }
    let progress = tracker.progress();
    tracker.shutdown().await?;
    tracing::info!(
        changes = progress.changes,
        transactions = progress.transactions,
        "stopped"
    );
    Ok(())
}
