//! `bemi retention`: drops (or archives) the partitions of `changes` past the retention window,
//! as the worker does at start and hourly.

use bemi_core::changes_table::Partition;
use bemi_core::{Error, Result};
use clap::Args;

use crate::args::{ConnectionArgs, DestinationArgs, RetentionArgs};

#[derive(Debug, Clone, Args)]
pub(crate) struct RetentionCommandArgs {
    /// Show the partitions that would go, and remove nothing
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    retention: RetentionArgs,
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    destination: DestinationArgs,
}

pub(crate) async fn retention(args: RetentionCommandArgs) -> Result<()> {
    let Some(retention) = args.retention.retention()? else {
        return Err(Error::config(
            "no retention window: give --retention (BEMI_RETENTION), e.g. 90d",
        ));
    };
    let options = args.destination.options(&args.connection.options()?)?;
    let client = options.connect().await?;
    let table = args.destination.changes_table();
    let now = chrono::Utc::now();
    let partitions = match args.dry_run {
        true => retention.plan(&table, &client, now).await?,
        false => retention.apply(&table, &client, now).await?,
    };
    let action = match (args.dry_run, retention.archive_schema()) {
        (true, None) => "would drop".to_owned(),
        (true, Some(schema)) => format!("would move to schema {schema:?}"),
        (false, None) => "dropped".to_owned(),
        (false, Some(schema)) => format!("moved to schema {schema:?}"),
    };
    println!(
        "retention {retention}: changes committed before {} go",
        retention.cutoff(now).format("%Y-%m-%d %H:%M:%S UTC")
    );
    if partitions.is_empty() {
        println!("no partition is past the window");
    }
    for partition in &partitions {
        println!("{action} {} ({})", partition.name, range(partition));
    }
    Ok(())
}

/// `2026-11-01 00:00 .. 2026-12-01 00:00`, `.. 2026-12-01 00:00` when unbounded below.
pub(crate) fn range(partition: &Partition) -> String {
    if partition.is_default {
        return "default".to_owned();
    }
    let at = |moment: Option<chrono::DateTime<chrono::Utc>>| {
        moment.map_or(String::new(), |m| m.format("%Y-%m-%d %H:%M").to_string())
    };
    format!("{} .. {}", at(partition.from), at(partition.to))
        .trim()
        .to_owned()
}
