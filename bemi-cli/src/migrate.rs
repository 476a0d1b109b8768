//! `bemi migrate --partition`: an unpartitioned `changes` table becomes partitioned on
//! `committed_at`, keeping every row (see `bemi_core::changes_table::PartitionMigration`).

use bemi_core::changes_table::PartitionMigration;
use bemi_core::{Error, Result};
use clap::Args;

use crate::args::{ConnectionArgs, DestinationArgs, PartitionArgs};

#[derive(Debug, Clone, Args)]
pub(crate) struct MigrateArgs {
    /// Partition `changes` on committed_at (the migration this command makes)
    #[arg(long)]
    partition: bool,
    /// Print the SQL, with what each step locks and reads, instead of running it
    #[arg(long)]
    print_sql: bool,
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    destination: DestinationArgs,
    #[command(flatten)]
    partitions: PartitionArgs,
}

pub(crate) async fn migrate(args: MigrateArgs) -> Result<()> {
    if !args.partition {
        return Err(Error::config(
            "say which migration to make: `bemi migrate --partition` partitions `changes` on \
             committed_at",
        ));
    }
    let options = args.destination.options(&args.connection.options()?)?;
    let client = options.connect().await?;
    let migration = PartitionMigration::new(args.destination.changes_table())
        .interval(args.partitions.partition_interval);
    let plan = migration.plan(&client).await?;
    if args.print_sql || plan.steps.is_empty() {
        print!("{plan}");
        return Ok(());
    }
    println!(
        "partitioning {} by {}: {} steps",
        plan.table,
        plan.interval,
        plan.steps.len()
    );
    for (n, step) in plan.steps.iter().enumerate() {
        println!("  {}. {}", n + 1, step.title);
        println!("     locks: {}", step.locks);
    }
    for (n, (title, took)) in migration.run(&client).await?.iter().enumerate() {
        println!("done {}. {title} ({took:.2?})", n + 1);
    }
    println!(
        "{} is partitioned; a running worker reconnects to it once",
        plan.table
    );
    Ok(())
}
