//! `bemi revert`: undo the changes that match filters, in one transaction with its own context.

use bemi_core::{Error, ErrorKind, Result};
use bemi_query::Revert;
use clap::Args;
use serde::Serialize;

use crate::database::DatabaseArgs;
use crate::filter::FilterArgs;
use crate::output::print_json;

/// `bemi revert`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RevertArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Print the SQL the revert would run, and any conflicts, without applying it
    #[arg(long)]
    dry_run: bool,
    /// Revert even when rows changed after the reverted changes (overwrites those edits)
    #[arg(long)]
    force: bool,
    /// Who reverts, recorded in the revert's context (default: $USER)
    #[arg(long, env = "BEMI_REVERT_BY")]
    by: Option<String>,
    /// Print JSON for scripts
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

pub(crate) async fn revert(args: RevertArgs) -> Result<()> {
    let filter = args.filter.filter();
    if filter.is_empty() {
        return Err(Error::new(
            ErrorKind::Config,
            "say which changes to revert: --transaction, --context '{\"request_id\": \"…\"}', \
             --since/--until, --table, …",
        ));
    }
    let by = args
        .by
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "bemi".to_owned());
    let mut connections = args.database.connect().await?;
    let revert = Revert::new(args.filter.filter_for(&connections).await)
        .changes_table(connections.table.clone())
        .by(by)
        .force(args.force);
    let plan = revert
        .plan(connections.changes(), connections.source())
        .await?;
    if plan.changes.is_empty() {
        return Err(Error::new(
            ErrorKind::Config,
            "no changes match; nothing to revert",
        ));
    }
    if args.dry_run {
        if args.json {
            #[derive(Serialize)]
            struct DryRun<'a> {
                dry_run: bool,
                changes: usize,
                context: &'a str,
                conflicts: &'a [bemi_query::Conflict],
                sql: String,
            }
            print_json(&DryRun {
                dry_run: true,
                changes: plan.changes.len(),
                context: &plan.context,
                conflicts: &plan.conflicts,
                sql: plan.sql(),
            })?;
        } else {
            println!(
                "-- dry run: reverting {} change(s) with {} statement(s)",
                plan.changes.len(),
                plan.steps.len()
            );
            for conflict in &plan.conflicts {
                println!("-- conflict: {conflict}");
            }
            if !plan.conflicts.is_empty() && !args.force {
                println!("-- the revert would be refused (use --force to override)");
            }
            print!("{}", plan.sql());
        }
        return Ok(());
    }
    let outcome = plan.apply(connections.source_mut()).await?;
    if args.json {
        print_json(&outcome)?;
    } else {
        println!(
            "reverted {} change(s) with {} statement(s) writing {} row(s), in one transaction \
             with context {}",
            outcome.changes, outcome.statements, outcome.rows, outcome.context
        );
        for conflict in &outcome.overridden {
            println!("overrode conflict: {conflict}");
        }
    }
    Ok(())
}
