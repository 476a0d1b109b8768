//! Which changes: the filter flags shared by `changes` and `revert`, and their parsers.

use bemi_core::{Error, Lsn, Operation};
use bemi_query::{ChangeFilter, TableName};
use chrono::{DateTime, Utc};
use clap::Args;

use crate::database::Connections;

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
