//! `bemi history TABLE PK`: a record's changes, oldest first; with `--at`, the record (or the
//! whole table) as it was at a moment.

use bemi_core::query::{ChangeFilter, TableName, TimeTravel};
use bemi_core::{Error, ErrorKind, Result};
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::value::RawValue;

use crate::changes::{parse_time, print_changes, print_json, ChangeJson, DatabaseArgs};

/// `bemi history`.
#[derive(Debug, Clone, Args)]
pub(crate) struct HistoryArgs {
    /// The table (`table` or `schema.table`)
    table: String,
    /// The record's primary key (composite keys as a JSON array, e.g. '[7,"x"]'); may be left
    /// out with --at to show the whole table
    pk: Option<String>,
    /// Show the record (or the whole table) as it was at this moment (RFC 3339, e.g.
    /// 2024-05-01T12:00:00Z) instead of its changes
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    at: Option<DateTime<Utc>>,
    /// Print JSON for scripts
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

pub(crate) async fn history(args: HistoryArgs) -> Result<()> {
    let connections = args.database.connect().await?;
    let table = TableName::parse(&args.table);
    let Some(at) = args.at else {
        let Some(pk) = &args.pk else {
            return Err(Error::new(
                ErrorKind::Config,
                "give the record's primary key (bemi history TABLE PK), or --at TIME for the \
                 whole table as it was then",
            ));
        };
        let pk = connections.stored_key(&table, pk).await;
        let changes = ChangeFilter::new()
            .database(connections.database.clone())
            .table_name(table)
            .primary_key(pk)
            .query()
            .changes_table(connections.table.clone())
            .fetch(connections.changes())
            .await?;
        if args.json {
            let changes: Vec<ChangeJson<'_>> = changes.iter().map(ChangeJson::new).collect();
            print_json(&changes)?;
        } else {
            print_changes(&changes, false);
        }
        return Ok(());
    };

    let mut travel = TimeTravel::new(table.clone())
        .changes_table(connections.table.clone())
        .database(connections.database.clone());
    if connections.separate() {
        // The schema and key columns come from the tracked database's catalog.
        travel = travel.with_catalog_of(connections.source()).await?;
    }
    match &args.pk {
        Some(pk) => {
            let row = travel.row_at(connections.changes(), pk, at).await?;
            if args.json {
                print_json(&row)?;
            } else {
                match row {
                    Some(row) => println!("{}", row.get()),
                    None => println!("{table} {pk} did not exist at {at}"),
                }
            }
        }
        None => {
            let rows = travel.table_at(connections.changes(), at).await?;
            if args.json {
                let rows: Vec<&RawValue> = rows.iter().map(|r| &*r.row).collect();
                print_json(&rows)?;
            } else if rows.is_empty() {
                println!("{table} had no rows at {at}");
            } else {
                for row in &rows {
                    println!("{}", row.row.get());
                }
            }
        }
    }
    Ok(())
}
