//! `bemi changes`: the changes that match filters, a page at a time; and what `history` and
//! `revert` share with it: the connection flags, the filter flags and the table output.

use bemi_core::{Error, ErrorKind, Lsn, Operation, Result};
use bemi_query::{
    canonical_key, primary_key_columns, ChangeFilter, ChangesTable, Cursor, Diff, Order,
    StoredChange, TableName,
};
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use tokio_postgres::Client;

use crate::args::{ConnectionArgs, DestinationArgs};

/// The tracked database (where rows are read and reverted) and where `changes` is.
#[derive(Debug, Clone, Args)]
pub(crate) struct DatabaseArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    destination: DestinationArgs,
}

/// Open connections to the tracked database and to the one holding `changes` (the same
/// connection when they are the same database).
pub(crate) struct Connections {
    source: Client,
    changes: Option<Client>,
    /// The `changes` table.
    pub(crate) table: ChangesTable,
    /// The tracked database's name: one `changes` table can hold the changes of several
    /// databases, and the commands read (and revert) only this one's.
    pub(crate) database: String,
}

impl Connections {
    /// `pk` as stored for `table`: a composite key typed with spaces is written without them.
    /// When the table is not in the tracked database's catalog (dropped since), as given.
    pub(crate) async fn stored_key(&self, table: &TableName, pk: &str) -> String {
        match primary_key_columns(self.source(), table).await {
            Ok(columns) => canonical_key(pk, columns.len()),
            Err(_) => pk.to_owned(),
        }
    }

    /// The tracked database.
    pub(crate) fn source(&self) -> &Client {
        &self.source
    }

    /// The tracked database, to write to.
    pub(crate) fn source_mut(&mut self) -> &mut Client {
        &mut self.source
    }

    /// The database holding `changes`.
    pub(crate) fn changes(&self) -> &Client {
        self.changes.as_ref().unwrap_or(&self.source)
    }
}

impl DatabaseArgs {
    /// Connects to the tracked database and, if elsewhere, the `changes` database.
    pub(crate) async fn connect(&self) -> Result<Connections> {
        let source_options = self.connection.options()?;
        let changes_options = self.destination.options(&source_options)?;
        let source = source_options.connect().await?;
        let changes = match changes_options == source_options {
            true => None,
            false => Some(changes_options.connect().await?),
        };
        Ok(Connections {
            source,
            changes,
            table: self.destination.changes_table(),
            database: source_options.dbname().to_owned(),
        })
    }
}

/// Which changes: the flags shared by `changes` and `revert`.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct FilterArgs {
    /// Only changes of this table: `table` or `schema.table`, a part holding a dot or a double
    /// quote in double quotes, e.g. '"my.table"'
    #[arg(long)]
    table: Option<TableName>,
    /// Only changes of the row with this primary key (composite keys as a JSON array: '[7,"x"]')
    #[arg(long)]
    pk: Option<String>,
    /// Only these operations: CREATE, UPDATE, DELETE, TRUNCATE (repeat or separate by commas)
    #[arg(long, value_name = "OPERATION", value_delimiter = ',', value_parser = parse_operation)]
    operation: Vec<Operation>,
    /// Only changes committed at or after this time (RFC 3339, e.g. 2024-05-01T12:00:00Z)
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Only changes committed at or before this time (RFC 3339)
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// Only the changes of one transaction, given by its commit LSN (e.g. 0/16B3F28)
    #[arg(long, value_name = "LSN")]
    transaction: Option<Lsn>,
    /// Only changes whose old row contains this JSON (JSONB @>), e.g. '{"status": "open"}'
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    before: Vec<serde_json::Value>,
    /// Only changes whose new row contains this JSON (JSONB @>)
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    after: Vec<serde_json::Value>,
    /// Only changes whose context contains this JSON (JSONB @>), e.g. '{"request_id": "r1"}'
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    context: Vec<serde_json::Value>,
    /// Leave out changes whose old row contains this JSON
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    not_before: Vec<serde_json::Value>,
    /// Leave out changes whose new row contains this JSON
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    not_after: Vec<serde_json::Value>,
    /// Leave out changes whose context contains this JSON
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    not_context: Vec<serde_json::Value>,
}

impl FilterArgs {
    /// The filter for the tracked database of `connections`: its changes only, and the key in
    /// its stored form when the table is given.
    pub(crate) async fn filter_for(&self, connections: &Connections) -> ChangeFilter {
        let mut filter = self.filter().database(connections.database.clone());
        if let (Some(table), Some(pk)) = (&self.table, &self.pk) {
            filter = filter.primary_key(connections.stored_key(table, pk).await);
        }
        filter
    }

    /// The filter the flags describe.
    pub(crate) fn filter(&self) -> ChangeFilter {
        let mut filter = ChangeFilter::new().operations(self.operation.iter().copied());
        if let Some(table) = &self.table {
            filter = filter.table_name(table.clone());
        }
        if let Some(pk) = &self.pk {
            filter = filter.primary_key(pk);
        }
        if let Some(since) = self.since {
            filter = filter.since(since);
        }
        if let Some(until) = self.until {
            filter = filter.until(until);
        }
        if let Some(lsn) = self.transaction {
            filter = filter.transaction(lsn);
        }
        for value in &self.before {
            filter = filter.before_contains(value.clone());
        }
        for value in &self.after {
            filter = filter.after_contains(value.clone());
        }
        for value in &self.context {
            filter = filter.context_contains(value.clone());
        }
        for value in &self.not_before {
            filter = filter.before_not_contains(value.clone());
        }
        for value in &self.not_after {
            filter = filter.after_not_contains(value.clone());
        }
        for value in &self.not_context {
            filter = filter.context_not_contains(value.clone());
        }
        filter
    }
}

fn parse_operation(text: &str) -> std::result::Result<Operation, String> {
    text.to_ascii_uppercase()
        .parse()
        .map_err(|e: Error| e.to_string())
}

/// Reads an RFC 3339 time (`2024-05-01T12:00:00Z`, `2024-05-01 12:00:00.5+02:00`).
pub(crate) fn parse_time(text: &str) -> std::result::Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(&text.replacen(' ', "T", 1))
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("{e}: expected an RFC 3339 time with a zone, like 2024-05-01T12:00:00Z")
        })
}

fn parse_json(text: &str) -> std::result::Result<serde_json::Value, String> {
    match serde_json::from_str(text) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value),
        Ok(_) => Err("expected a JSON object, like '{\"user\": \"alice\"}'".to_owned()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// `bemi changes`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ChangesArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Most changes to show (a page); the next page's --cursor is printed after it
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Continue after this position (the cursor printed after the previous page)
    #[arg(long)]
    cursor: Option<Cursor>,
    /// Newest changes first
    #[arg(long)]
    desc: bool,
    /// Print JSON for scripts
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

pub(crate) async fn changes(args: ChangesArgs) -> Result<()> {
    let connections = args.database.connect().await?;
    let mut query = args
        .filter
        .filter_for(&connections)
        .await
        .query()
        .changes_table(connections.table.clone())
        .limit(args.limit)
        .order(match args.desc {
            true => Order::Desc,
            false => Order::Asc,
        });
    if let Some(cursor) = args.cursor {
        query = query.after(cursor);
    }
    let page = query.fetch_page(connections.changes()).await?;
    if args.json {
        #[derive(Serialize)]
        struct Output<'a> {
            changes: Vec<ChangeJson<'a>>,
            next_cursor: Option<Cursor>,
        }
        print_json(&Output {
            changes: page.changes.iter().map(ChangeJson::new).collect(),
            next_cursor: page.next,
        })?;
    } else {
        print_changes(&page.changes, true);
        if let Some(next) = page.next {
            println!("\nnext page: --cursor {next}");
        }
    }
    Ok(())
}

/// A change with its diff and cursor, for JSON output.
#[derive(Serialize)]
pub(crate) struct ChangeJson<'a> {
    #[serde(flatten)]
    change: &'a StoredChange,
    cursor: Cursor,
    diff: Diff,
}

impl<'a> ChangeJson<'a> {
    pub(crate) fn new(change: &'a StoredChange) -> Self {
        ChangeJson {
            change,
            cursor: change.cursor(),
            diff: change.diff(),
        }
    }
}

pub(crate) fn print_json(value: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| Error::new(ErrorKind::Config, "could not print JSON").with_source(e))?;
    println!("{json}");
    Ok(())
}

/// Prints changes as a table: time, operation, (table,) key, context and what changed.
pub(crate) fn print_changes(changes: &[StoredChange], with_table: bool) {
    if changes.is_empty() {
        println!("no changes");
        return;
    }
    let mut header = vec!["COMMITTED AT", "OPERATION"];
    if with_table {
        header.push("TABLE");
    }
    header.extend(["PRIMARY KEY", "CONTEXT", "CHANGES"]);
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            let mut row = vec![
                c.committed_at.format("%Y-%m-%d %H:%M:%S%.6fZ").to_string(),
                c.operation.to_string(),
            ];
            if with_table {
                row.push(format!("{}.{}", c.schema, c.table));
            }
            row.extend([
                c.primary_key.clone().unwrap_or_else(|| "-".to_owned()),
                c.context.get().to_owned(),
                c.diff().to_string(),
            ]);
            row
        })
        .collect();
    print_table(&header, &rows);
}

/// Prints rows under a header, columns padded to their widest cell (the last one not).
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", text.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
