//! `bemi history TABLE PK`: a record's changes, oldest first; with `--at`, the record (or the
//! whole table) as it was at a moment.

use bemi_core::{Error, ErrorKind, Result};
use bemi_query::{ChangeFilter, TableName, TimeTravel};
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::value::RawValue;

use crate::database::DatabaseArgs;
use crate::filter::parse_time;
use crate::output::{print_changes, print_json, ChangeJson};

/// `bemi history`.
#[derive(Debug, Clone, Args)]
pub(crate) struct HistoryArgs {
    /// The table: `table` or `schema.table`, a part holding a dot or a double quote in double
    /// quotes, e.g. '"Billing Dept"."In""voice.2024"'
    table: TableName,
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
    let table = args.table;
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

    let travel = TimeTravel::new(table.clone())
        .changes_table(connections.table.clone())
        .database(connections.database.clone());
    // The schema, key columns and untouched rows come from the tracked database.
    let (changes, source) = (connections.changes(), connections.source());
    let rows = match &args.pk {
        Some(pk) => travel
            .row_at(changes, source, pk, at)
            .await?
            .into_iter()
            .collect(),
        None => travel.table_at(changes, source, at).await?,
    };
    for row in &rows {
        if !row.unknown_columns.is_empty() {
            eprintln!(
                "{table} {}: the audit trail does not hold {} at {at} (the table's replica \
                 identity is not FULL)",
                row.primary_key,
                row.unknown_columns.join(", ")
            );
        }
    }
    match (&args.pk, args.json) {
        (Some(_), true) => print_json(&rows.first().map(|r| &*r.row))?,
        (None, true) => {
            let rows: Vec<&RawValue> = rows.iter().map(|r| &*r.row).collect();
            print_json(&rows)?;
        }
        (Some(pk), false) if rows.is_empty() => println!("{table} {pk} did not exist at {at}"),
        (None, false) if rows.is_empty() => println!("{table} had no rows at {at}"),
        (_, false) => {
            for row in &rows {
                println!("{}", row.row.get());
            }
        }
    }
    Ok(())
}
