//! Reading the audit trail: filtered queries, a record's history, diffs, time travel and revert.
//!
//! Everything here works with any [`tokio_postgres::GenericClient`] (a `Client`, a
//! `Transaction`, or a pooled connection dereferenced to one) connected to the database that
//! holds the `changes` table, by default `public.changes` (see [`ChangesTable`]).
//!
//! - [`ChangeFilter`] selects changes: by database, schema, table, primary key, operation, time
//!   range, transaction, and JSONB containment (`@>`) in `before`, `after` and `context`, each
//!   also negated (`NOT (… @> …)`). All values are bound as parameters, so the server can use
//!   Bemi's indexes (btree on `table`, `primary_key`, `operation`, `committed_at`, GIN
//!   `jsonb_path_ops` on the JSON columns, `(table, primary_key, committed_at)` for a record's
//!   history and the unique `(commit_lsn, ordinal)` for order and pagination).
//! - [`ChangeQuery`] orders the selection by `(commit_lsn, ordinal)`, the exact commit order,
//!   and pages through it with a keyset [`Cursor`]; [`ChangeQuery::history`] is the history of
//!   one record, oldest first.
//! - [`StoredChange`] is one row of `changes`. JSON stays lossless: `before`, `after` and
//!   `context` are kept as the server's JSON text ([`RawValue`]), never converted to `f64`.
//!   [`StoredChange::diff`] gives `{column: [before, after]}` for the columns that changed.
//! - [`TimeTravel`] rebuilds a row, or a whole table, as it was at a moment.
//! - [`Revert`] undoes a set of changes in one transaction, after checking for conflicts.
//!
//! Rows of a table upgraded from Bemi's own worker that predate the upgrade have no
//! `commit_lsn` and cannot be ordered exactly; queries leave them out.
//!
//! ```no_run
//! # async fn run(client: &tokio_postgres::Client) -> bemi_core::Result<()> {
//! use bemi_query::{ChangeFilter, ChangeQuery, Order};
//!
//! // The ten newest changes made by request r1 to `todo`.
//! let page = ChangeFilter::new()
//!     .table("todo")
//!     .context_contains(serde_json::json!({"request_id": "r1"}))
//!     .query()
//!     .order(Order::Desc)
//!     .limit(10)
//!     .fetch_page(client)
//!     .await?;
//! for change in &page.changes {
//!     println!("{} {:?} {}", change.operation, change.primary_key, change.diff());
//! }
//! // A record's history, oldest first.
//! let history = ChangeQuery::history("todo".parse()?, "7").fetch(client).await?;
//! # drop(history); Ok(()) }
//! ```

mod diff;
mod key;
mod live;
mod revert;
mod time_travel;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

pub use bemi_core::changes_table::ChangesTable;
pub use bemi_core::sql::TableName;
use bemi_core::{Error, ErrorKind, Lsn, Operation, Result};

pub use diff::{ColumnChange, Diff};
pub use key::{canonical_key, primary_key_columns};
pub use revert::{Conflict, ConflictKind, Revert, RevertOutcome, RevertPlan, RevertStep};
pub use time_travel::{SnapshotRow, TimeTravel};

/// One of the JSON columns of `changes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum JsonColumn {
    Before,
    After,
    Context,
}

impl JsonColumn {
    fn as_str(self) -> &'static str {
        match self {
            JsonColumn::Before => "before",
            JsonColumn::After => "after",
            JsonColumn::Context => "context",
        }
    }
}

/// A JSONB containment condition: `column @> value`, or its negation.
#[derive(Debug, Clone, PartialEq)]
struct Containment {
    column: JsonColumn,
    negated: bool,
    value: serde_json::Value,
}

/// Which changes to select. All conditions must hold; an empty filter selects every change.
///
/// Times are inclusive: [`since`](ChangeFilter::since) keeps changes committed at or after the
/// moment, [`until`](ChangeFilter::until) those committed at or before it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeFilter {
    database: Option<String>,
    schema: Option<String>,
    table: Option<String>,
    primary_key: Option<String>,
    operations: Vec<Operation>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    transaction: Option<Lsn>,
    contains: Vec<Containment>,
}

impl ChangeFilter {
    /// A filter that selects every change.
    pub fn new() -> Self {
        Self::default()
    }

    /// Changes of the source database `name`.
    pub fn database(mut self, name: impl Into<String>) -> Self {
        self.database = Some(name.into());
        self
    }

    /// Changes of tables in schema `name`.
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = Some(name.into());
        self
    }

    /// Changes of table `name` (the `table` column; see [`schema`](Self::schema) for the schema).
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = Some(name.into());
        self
    }

    /// Changes of a table given as a [`TableName`] (sets the schema too when it has one), e.g.
    /// `"billing.\"my.table\"".parse()?`.
    pub fn table_name(mut self, table: TableName) -> Self {
        if let Some(schema) = table.schema {
            self.schema = Some(schema);
        }
        self.table = Some(table.name);
        self
    }

    /// Changes of the row with this primary key text, as stored in `primary_key`: the value
    /// itself for a single-column key (`7`, `alice`), a JSON array for a composite key
    /// (`[7,"x"]`). An UPDATE that changes the key is stored under the new key.
    pub fn primary_key(mut self, key: impl Into<String>) -> Self {
        self.primary_key = Some(key.into());
        self
    }

    /// Adds an operation to those selected (any operation when none is given).
    pub fn operation(mut self, operation: Operation) -> Self {
        if !self.operations.contains(&operation) {
            self.operations.push(operation);
        }
        self
    }

    /// Adds operations to those selected.
    pub fn operations(mut self, operations: impl IntoIterator<Item = Operation>) -> Self {
        for operation in operations {
            self = self.operation(operation);
        }
        self
    }

    /// Changes committed at or after `time`.
    pub fn since(mut self, time: DateTime<Utc>) -> Self {
        self.since = Some(time);
        self
    }

    /// Changes committed at or before `time`.
    pub fn until(mut self, time: DateTime<Utc>) -> Self {
        self.until = Some(time);
        self
    }

    /// The changes of one transaction, given by the LSN of its commit (the `commit_lsn` of any
    /// of its changes).
    pub fn transaction(mut self, commit_lsn: Lsn) -> Self {
        self.transaction = Some(commit_lsn);
        self
    }

    fn contains(mut self, column: JsonColumn, negated: bool, value: serde_json::Value) -> Self {
        self.contains.push(Containment {
            column,
            negated,
            value,
        });
        self
    }

    /// Changes whose `before` contains `value` (`before @> value`), e.g. `{"status": "open"}`.
    pub fn before_contains(self, value: serde_json::Value) -> Self {
        self.contains(JsonColumn::Before, false, value)
    }

    /// Changes whose `before` does not contain `value` (`NOT (before @> value)`).
    pub fn before_not_contains(self, value: serde_json::Value) -> Self {
        self.contains(JsonColumn::Before, true, value)
    }

    /// Changes whose `after` contains `value` (`after @> value`).
    pub fn after_contains(self, value: serde_json::Value) -> Self {
        self.contains(JsonColumn::After, false, value)
    }

    /// Changes whose `after` does not contain `value` (`NOT (after @> value)`).
    pub fn after_not_contains(self, value: serde_json::Value) -> Self {
        self.contains(JsonColumn::After, true, value)
    }

    /// Changes whose context contains `value` (`context @> value`), e.g.
    /// `{"request_id": "r1"}`.
    pub fn context_contains(self, value: serde_json::Value) -> Self {
        self.contains(JsonColumn::Context, false, value)
    }

    /// Changes whose context does not contain `value` (`NOT (context @> value)`).
    pub fn context_not_contains(self, value: serde_json::Value) -> Self {
        self.contains(JsonColumn::Context, true, value)
    }

    /// A query over the changes this filter selects.
    pub fn query(self) -> ChangeQuery {
        ChangeQuery::new(self)
    }

    /// Whether the filter has no condition at all.
    pub fn is_empty(&self) -> bool {
        *self == ChangeFilter::default()
    }

    /// The filter as a JSON object of the conditions that are set (for logs and for the
    /// context of a revert), e.g. `{"table": "todo", "context": {"request_id": "r1"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let mut object = Map::new();
        let mut put = |key: &str, value: Value| {
            object.insert(key.to_owned(), value);
        };
        if let Some(database) = &self.database {
            put("database", json!(database));
        }
        if let Some(schema) = &self.schema {
            put("schema", json!(schema));
        }
        if let Some(table) = &self.table {
            put("table", json!(table));
        }
        if let Some(key) = &self.primary_key {
            put("primary_key", json!(key));
        }
        if !self.operations.is_empty() {
            put("operations", json!(self.operations));
        }
        if let Some(since) = &self.since {
            put("since", json!(since));
        }
        if let Some(until) = &self.until {
            put("until", json!(until));
        }
        if let Some(lsn) = &self.transaction {
            put("transaction", json!(lsn.to_string()));
        }
        // Several conditions on one column become an array of their values.
        let mut grouped: Vec<(String, Vec<Value>)> = Vec::new();
        for c in &self.contains {
            let key = match c.negated {
                false => c.column.as_str().to_owned(),
                true => format!("not_{}", c.column.as_str()),
            };
            match grouped.iter_mut().find(|(k, _)| *k == key) {
                Some((_, values)) => values.push(c.value.clone()),
                None => grouped.push((key, vec![c.value.clone()])),
            }
        }
        for (key, mut values) in grouped {
            let value = match values.len() {
                1 => values.remove(0),
                _ => Value::Array(values),
            };
            put(&key, value);
        }
        Value::Object(object)
    }

    /// Appends this filter's conditions to `sql`.
    fn push_conditions(&self, sql: &mut SqlBuilder) {
        if let Some(database) = &self.database {
            let p = sql.bind(database.clone());
            sql.condition(format!("database = {p}"));
        }
        if let Some(schema) = &self.schema {
            let p = sql.bind(schema.clone());
            sql.condition(format!("schema = {p}"));
        }
        if let Some(table) = &self.table {
            let p = sql.bind(table.clone());
            sql.condition(format!("\"table\" = {p}"));
        }
        if let Some(key) = &self.primary_key {
            let p = sql.bind(key.clone());
            sql.condition(format!("primary_key = {p}"));
        }
        match self.operations.as_slice() {
            [] => {}
            [one] => {
                let p = sql.bind(one.as_str().to_owned());
                sql.condition(format!("operation = {p}"));
            }
            many => {
                let names: Vec<String> = many.iter().map(|o| o.as_str().to_owned()).collect();
                let p = sql.bind(names);
                sql.condition(format!("operation = ANY({p})"));
            }
        }
        if let Some(since) = self.since {
            let p = sql.bind(since);
            sql.condition(format!("committed_at >= {p}"));
        }
        if let Some(until) = self.until {
            let p = sql.bind(until);
            sql.condition(format!("committed_at <= {p}"));
        }
        if let Some(lsn) = self.transaction {
            let p = sql.bind(lsn.0 as i64);
            sql.condition(format!("commit_lsn = {p}"));
        }
        for c in &self.contains {
            let p = sql.bind(c.value.to_string());
            let test = format!("{} @> {p}::text::jsonb", c.column.as_str());
            sql.condition(match c.negated {
                false => test,
                true => format!("NOT ({test})"),
            });
        }
    }
}

/// The direction of a query, by `(commit_lsn, ordinal)`: commit order, then order within the
/// transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Order {
    /// Oldest first.
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// A position in the audit trail, `(commit_lsn, ordinal)`, for keyset pagination.
///
/// Printed and parsed as `<commit LSN>:<ordinal>`, e.g. `0/16B3F28:3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// The LSN of the transaction's commit.
    pub commit_lsn: Lsn,
    /// The change's position within its transaction.
    pub ordinal: u32,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.commit_lsn, self.ordinal)
    }
}

impl FromStr for Cursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || {
            Error::config(format!(
                "invalid cursor {s:?}: expected <commit LSN>:<ordinal>, like 0/16B3F28:3"
            ))
        };
        let (lsn, ordinal) = s.rsplit_once(':').ok_or_else(invalid)?;
        Ok(Cursor {
            commit_lsn: lsn.parse().map_err(|_| invalid())?,
            ordinal: ordinal.parse().map_err(|_| invalid())?,
        })
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One page of a [`ChangeQuery`]: its changes, and the cursor of the next page when there is
/// one.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Page {
    /// The changes, in the query's order.
    pub changes: Vec<StoredChange>,
    /// Pass to [`ChangeQuery::after`] for the next page; `None` on the last page.
    pub next: Option<Cursor>,
}

/// A query over a `changes` table: a [`ChangeFilter`], an [`Order`], an optional keyset
/// [`Cursor`] and an optional limit.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeQuery {
    changes: ChangesTable,
    filter: ChangeFilter,
    order: Order,
    after: Option<Cursor>,
    limit: Option<u32>,
}

impl ChangeQuery {
    /// A query over `public.changes`, oldest first, without a limit.
    pub fn new(filter: ChangeFilter) -> Self {
        ChangeQuery {
            changes: ChangesTable::default(),
            filter,
            order: Order::Asc,
            after: None,
            limit: None,
        }
    }

    /// The history of one record: every change of `table` stored under `primary_key`, oldest
    /// first. It runs on the `(table, primary_key, committed_at)` index.
    pub fn history(table: TableName, primary_key: impl Into<String>) -> Self {
        ChangeFilter::new()
            .table_name(table)
            .primary_key(primary_key)
            .query()
    }

    /// Reads another changes table than `public.changes`.
    pub fn changes_table(mut self, changes: ChangesTable) -> Self {
        self.changes = changes;
        self
    }

    /// Sets the order (oldest first by default).
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Starts after `cursor` in the query's order (the next page after a [`Page`]).
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// Returns at most `limit` changes.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The filter.
    pub fn filter(&self) -> &ChangeFilter {
        &self.filter
    }

    fn build(&self, limit: Option<i64>) -> SqlBuilder {
        self.build_with(limit, |_| ())
    }

    /// [`build`](Self::build) with more conditions added by `extra`.
    fn build_with(&self, limit: Option<i64>, extra: impl FnOnce(&mut SqlBuilder)) -> SqlBuilder {
        let mut sql = SqlBuilder::default();
        sql.condition("commit_lsn IS NOT NULL".to_owned());
        self.filter.push_conditions(&mut sql);
        extra(&mut sql);
        if let Some(cursor) = self.after {
            let lsn = sql.bind(cursor.commit_lsn.0 as i64);
            let ordinal = sql.bind(ordinal_param(cursor.ordinal));
            let op = match self.order {
                Order::Asc => ">",
                Order::Desc => "<",
            };
            sql.condition(format!("(commit_lsn, ordinal) {op} ({lsn}, {ordinal})"));
        }
        let mut text = select(&self.changes, &sql, self.order);
        if let Some(limit) = limit {
            let p = sql.bind(limit);
            text.push_str(&format!(" LIMIT {p}"));
        }
        sql.text = text;
        sql
    }

    /// How many changes the filter selects that the query leaves out because they have no
    /// `commit_lsn` (rows stored by Bemi's own worker before the table was upgraded).
    pub(crate) async fn count_unordered<C>(&self, client: &C) -> Result<i64>
    where
        C: GenericClient + Sync,
    {
        let mut sql = SqlBuilder::default();
        sql.condition("commit_lsn IS NULL".to_owned());
        self.filter.push_conditions(&mut sql);
        let text = format!(
            "SELECT count(*) FROM {}{}",
            self.changes.qualified(),
            sql.where_clause()
        );
        let row = client.query_one(text.as_str(), &sql.params()).await?;
        Ok(row.get(0))
    }

    /// The SQL the query runs, with `$n` placeholders.
    pub fn sql(&self) -> String {
        self.build(self.limit.map(i64::from)).text
    }

    /// Runs the query.
    pub async fn fetch<C>(&self, client: &C) -> Result<Vec<StoredChange>>
    where
        C: GenericClient + Sync,
    {
        let sql = self.build(self.limit.map(i64::from));
        let rows = client.query(sql.text.as_str(), &sql.params()).await?;
        rows.iter().map(StoredChange::from_row).collect()
    }

    /// Runs the query for one page: at most the limit's changes, and the cursor of the next
    /// page when more changes follow.
    pub async fn fetch_page<C>(&self, client: &C) -> Result<Page>
    where
        C: GenericClient + Sync,
    {
        // One extra row tells whether another page follows.
        let sql = self.build(self.limit.map(|limit| i64::from(limit) + 1));
        let rows = client.query(sql.text.as_str(), &sql.params()).await?;
        let mut changes = rows
            .iter()
            .map(StoredChange::from_row)
            .collect::<Result<Vec<_>>>()?;
        let next = match self.limit {
            Some(limit) if changes.len() > limit as usize => {
                changes.truncate(limit as usize);
                changes.last().map(StoredChange::cursor)
            }
            _ => None,
        };
        Ok(Page { changes, next })
    }

    /// The server's plan for the query (`EXPLAIN`), one line per plan line, to check that it
    /// uses the indexes.
    pub async fn explain<C>(&self, client: &C) -> Result<String>
    where
        C: GenericClient + Sync,
    {
        let sql = self.build(self.limit.map(i64::from));
        let rows = client
            .query(format!("EXPLAIN {}", sql.text).as_str(), &sql.params())
            .await?;
        let lines: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(lines.join("\n"))
    }
}

/// The columns read into a [`StoredChange`], in its field order.
const COLUMNS: &str = "id::text, primary_key, before::text, after::text, context::text, \
                       database, schema, \"table\", operation, committed_at, queued_at, \
                       created_at, transaction_id, position, commit_lsn, ordinal";

fn ordinal_param(ordinal: u32) -> i32 {
    i32::try_from(ordinal).unwrap_or(i32::MAX)
}

/// One row of the `changes` table.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StoredChange {
    /// The row's id (a UUID, as text).
    pub id: String,
    /// The changed row's primary key as text: the value itself for a single-column key, a JSON
    /// array for a composite key; the new key for an UPDATE that changed it; `None` for a
    /// TRUNCATE or a table without a primary key.
    pub primary_key: Option<String>,
    /// The row before the change (`{}` for CREATE and TRUNCATE), as the server's JSON text.
    pub before: Box<RawValue>,
    /// The row after the change (`{}` for DELETE and TRUNCATE).
    pub after: Box<RawValue>,
    /// The application context of the change.
    pub context: Box<RawValue>,
    /// The source database.
    pub database: String,
    /// The table's schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// What happened.
    pub operation: Operation,
    /// When the source transaction committed.
    pub committed_at: DateTime<Utc>,
    /// When the tracker received the change.
    pub queued_at: DateTime<Utc>,
    /// When the change was stored.
    pub created_at: DateTime<Utc>,
    /// The source transaction id.
    pub transaction_id: u32,
    /// The WAL position of the change.
    pub position: Lsn,
    /// The LSN of the transaction's commit: the same for all changes of a transaction.
    pub commit_lsn: Lsn,
    /// The change's position within its transaction, from 0.
    pub ordinal: u32,
}

impl StoredChange {
    /// The change's position in the audit trail, for pagination.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            commit_lsn: self.commit_lsn,
            ordinal: self.ordinal,
        }
    }

    /// The columns that changed, `{column: [before, after]}`: for a CREATE every column of
    /// `after` (with a null before), for a DELETE every column of `before` (with a null after),
    /// for an UPDATE the columns whose value differs (a column left out of `after`, an
    /// unchanged TOAST value the server did not send, is not a change). Empty for a TRUNCATE.
    pub fn diff(&self) -> Diff {
        Diff::of(self)
    }

    /// `schema.table` of the changed table.
    pub fn qualified_table(&self) -> TableName {
        TableName::qualified(&self.schema, &self.table)
    }

    fn from_row(row: &tokio_postgres::Row) -> Result<Self> {
        let json = |index: usize| -> Result<Box<RawValue>> {
            let text: String = row.try_get(index)?;
            RawValue::from_string(text).map_err(|e| {
                Error::new(
                    ErrorKind::Db,
                    "a changes row holds JSON that cannot be read",
                )
                .with_source(e)
            })
        };
        let operation: String = row.try_get(8)?;
        let transaction_id: i64 = row.try_get(12)?;
        let position: i64 = row.try_get(13)?;
        let commit_lsn: i64 = row.try_get(14)?;
        let ordinal: i32 = row.try_get(15)?;
        Ok(StoredChange {
            id: row.try_get(0)?,
            primary_key: row.try_get(1)?,
            before: json(2)?,
            after: json(3)?,
            context: json(4)?,
            database: row.try_get(5)?,
            schema: row.try_get(6)?,
            table: row.try_get(7)?,
            operation: operation.parse()?,
            committed_at: row.try_get(9)?,
            queued_at: row.try_get(10)?,
            created_at: row.try_get(11)?,
            transaction_id: u32::try_from(transaction_id).map_err(|_| {
                Error::new(
                    ErrorKind::Db,
                    format!("transaction_id {transaction_id} of a changes row is not an xid"),
                )
            })?,
            position: Lsn(position as u64),
            commit_lsn: Lsn(commit_lsn as u64),
            ordinal: u32::try_from(ordinal).map_err(|_| {
                Error::new(
                    ErrorKind::Db,
                    format!("ordinal {ordinal} of a changes row is negative"),
                )
            })?,
        })
    }
}

/// `SELECT` of the stored change columns with `sql`'s conditions, in `order`.
fn select(changes: &ChangesTable, sql: &SqlBuilder, order: Order) -> String {
    let direction = match order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    };
    format!(
        "SELECT {COLUMNS} FROM {}{} ORDER BY commit_lsn {direction}, ordinal {direction}",
        changes.qualified(),
        sql.where_clause()
    )
}

/// Query text with its conditions and bound parameters.
#[derive(Default)]
struct SqlBuilder {
    text: String,
    conditions: Vec<String>,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl SqlBuilder {
    /// Binds a parameter and returns its placeholder (`$n`).
    fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    fn condition(&mut self, condition: String) {
        self.conditions.push(condition);
    }

    fn where_clause(&self) -> String {
        match self.conditions.is_empty() {
            true => String::new(),
            false => format!(" WHERE {}", self.conditions.join(" AND ")),
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let cursor: Cursor = "16/B374D848:3".parse().unwrap();
        assert_eq!(cursor.commit_lsn, Lsn(0x16_B374_D848));
        assert_eq!(cursor.ordinal, 3);
        assert_eq!(cursor.to_string(), "16/B374D848:3");
        assert!("16/B374D848".parse::<Cursor>().is_err());
        assert!("x:1".parse::<Cursor>().is_err());
    }

    #[test]
    fn filters_bind_every_value() {
        let query = ChangeFilter::new()
            .table("todo")
            .primary_key("7")
            .operation(Operation::Update)
            .operation(Operation::Delete)
            .context_contains(serde_json::json!({"request_id": "r1"}))
            .after_not_contains(serde_json::json!({"done": true}))
            .query()
            .order(Order::Desc)
            .after(Cursor {
                commit_lsn: Lsn(10),
                ordinal: 2,
            })
            .limit(5);
        assert_eq!(
            query.sql(),
            "SELECT id::text, primary_key, before::text, after::text, context::text, \
             database, schema, \"table\", operation, committed_at, queued_at, created_at, \
             transaction_id, position, commit_lsn, ordinal FROM \"public\".\"changes\" \
             WHERE commit_lsn IS NOT NULL AND \"table\" = $1 AND primary_key = $2 \
             AND operation = ANY($3) AND context @> $4::text::jsonb \
             AND NOT (after @> $5::text::jsonb) AND (commit_lsn, ordinal) < ($6, $7) \
             ORDER BY commit_lsn DESC, ordinal DESC LIMIT $8"
        );
    }

    #[test]
    fn filter_describes_itself_as_json() {
        let filter = ChangeFilter::new()
            .table("todo")
            .context_contains(serde_json::json!({"request_id": "r1"}))
            .context_not_contains(serde_json::json!({"a": 1}));
        assert_eq!(
            filter.to_json(),
            serde_json::json!({"table": "todo", "context": {"request_id": "r1"}, "not_context": {"a": 1}})
        );
        assert!(ChangeFilter::new().is_empty());
        assert!(!filter.is_empty());
    }
}
