//! Reading the audit trail: filtered queries, a record's history, diffs, time travel and revert.
//!
//! Everything here runs on any [`Database`]: a tokio-postgres `&Client` or `&Transaction`
//! always, and with this crate's features an sqlx `&PgPool`, connection or transaction
//! (`sqlx`, sqlx 0.9), a SeaORM `&DatabaseConnection` or `&DatabaseTransaction` (`sea-orm`,
//! SeaORM 2), a Diesel `&mut PgConnection` (`diesel`, Diesel 2.3+, see [`blocking`]) or a
//! diesel-async `&mut AsyncPgConnection` (`diesel-async`, diesel-async 0.9). Each query is built
//! as a [`Statement`], SQL text plus typed parameters, and each driver only runs it: the
//! results are the same whichever runs it. The connection reaches the database that holds the
//! `changes` table, by default `public.changes` (see [`ChangesTable`]). The `changes` table is
//! also a SeaORM entity (`sea_orm_changes`) and a Diesel `table!` (`diesel_schema`) for those
//! crates' own query builders.
//!
//! - [`ChangeFilter`] selects changes: by database, schema, table, primary key, operation, time
//!   range, transaction, and JSONB containment (`@>`) in `before`, `after` and `context`, each
//!   also negated (`NOT (… @> …)`). All values are bound as parameters, so the server can use
//!   Bemi's indexes (btree on `table`, `primary_key`, `operation`, `committed_at`, GIN
//!   `jsonb_path_ops` on the JSON columns, `(table, primary_key, committed_at)` for a record's
//!   history and the unique `(commit_lsn, ordinal)` for order and pagination).
//! - [`ChangeFilter::column_changed`] selects the changes that changed a column, decided by the
//!   server, so pages stay full.
//! - [`ChangeQuery`] orders the selection by `(commit_lsn, ordinal)`, the exact commit order,
//!   and pages through it with a keyset [`Cursor`] (URL-safe as text);
//!   [`ChangeQuery::history`] is the history of one record, oldest first.
//! - [`StoredChange`] is one row of `changes`. JSON stays lossless: `before`, `after` and
//!   `context` are kept as the server's JSON text ([`RawValue`]), never converted to `f64`.
//!   [`StoredChange::diff`] gives `{column: [before, after]}` for the columns that changed,
//!   [`StoredChange::context_as`] reads the context into your own type.
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

#![cfg_attr(docsrs, feature(doc_cfg))]

mod context_keys;
mod database;
mod diff;
mod drivers;
mod key;
mod live;
mod revert;
mod statement;
mod time_travel;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

pub use bemi_core::changes_table::ChangesTable;
pub use bemi_core::sql::TableName;
use bemi_core::{Error, ErrorKind, Lsn, Operation, Result};

pub use context_keys::context_keys;
pub use database::Database;
pub use diff::{ColumnChange, Diff};
#[cfg(feature = "diesel")]
#[cfg_attr(docsrs, doc(cfg(feature = "diesel")))]
pub use drivers::diesel::{blocking, schema as diesel_schema};
#[cfg(feature = "sea-orm")]
#[cfg_attr(docsrs, doc(cfg(feature = "sea-orm")))]
pub use drivers::sea_orm::changes as sea_orm_changes;
pub use key::{canonical_key, primary_key_columns};
pub use revert::{Conflict, ConflictKind, Revert, RevertOutcome, RevertPlan, RevertStep};
use statement::{Conditions, Row};
pub use statement::{Param, Statement};
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
    changed_columns: Vec<String>,
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

    /// Changes that changed `column`, as [`StoredChange::diff`] tells it: a CREATE that set it,
    /// a DELETE of a row that had it, an UPDATE whose value differs (or whose old value is
    /// unknown). Decided by the server, so pages stay full however rarely the column changes.
    /// Given several times, every one of the columns must have changed.
    ///
    /// ```
    /// let filter = bemi_query::ChangeFilter::new().table("todo").column_changed("done");
    /// assert_eq!(filter.to_json(), serde_json::json!({"table": "todo", "column_changed": ["done"]}));
    /// ```
    pub fn column_changed(mut self, column: impl Into<String>) -> Self {
        let column = column.into();
        if !self.changed_columns.contains(&column) {
            self.changed_columns.push(column);
        }
        self
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
        if !self.changed_columns.is_empty() {
            put("column_changed", json!(self.changed_columns));
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

    /// Appends this filter's conditions to `conditions`, binding their values in `statement`.
    fn push_conditions(&self, statement: &mut Statement, conditions: &mut Conditions) {
        if let Some(database) = &self.database {
            conditions.push(format!("database = {}", statement.text(database.clone())));
        }
        if let Some(schema) = &self.schema {
            conditions.push(format!("schema = {}", statement.text(schema.clone())));
        }
        if let Some(table) = &self.table {
            conditions.push(format!("\"table\" = {}", statement.text(table.clone())));
        }
        if let Some(key) = &self.primary_key {
            conditions.push(format!("primary_key = {}", statement.text(key.clone())));
        }
        if !self.operations.is_empty() {
            let names: Vec<String> = self
                .operations
                .iter()
                .map(|o| statement.text(o.as_str()))
                .collect();
            conditions.push(format!("operation IN ({})", names.join(", ")));
        }
        if let Some(since) = self.since {
            let p = statement.text(since.to_rfc3339());
            conditions.push(format!("committed_at >= {p}::timestamptz"));
        }
        if let Some(until) = self.until {
            let p = statement.text(until.to_rfc3339());
            conditions.push(format!("committed_at <= {p}::timestamptz"));
        }
        if let Some(lsn) = self.transaction {
            conditions.push(format!("commit_lsn = {}", statement.int8(lsn.to_int8())));
        }
        for c in &self.contains {
            let test = format!(
                "{} @> {}::jsonb",
                c.column.as_str(),
                statement.text(c.value.to_string())
            );
            conditions.push(match c.negated {
                false => test,
                true => format!("NOT ({test})"),
            });
        }
        for column in &self.changed_columns {
            // What `Diff::of` counts as a change, value texts compared as stored.
            let c = statement.text(column.clone());
            conditions.push(format!(
                "CASE operation \
                   WHEN 'CREATE' THEN after -> {c} IS NOT NULL \
                   WHEN 'DELETE' THEN before -> {c} IS NOT NULL \
                   WHEN 'UPDATE' THEN after -> {c} IS NOT NULL AND (before -> {c} IS NULL \
                     OR (before -> {c})::text <> (after -> {c})::text) \
                   ELSE false END"
            ));
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
/// Prints as a URL-safe string, `<commit LSN>-<ordinal>` with the LSN's two halves joined by
/// `-` (`16-B374D848-3` for `16/B374D848` and ordinal 3), and parses from it, so a cursor goes
/// into a URL (`?after=16-B374D848-3`) as it is. PostgreSQL's own form, `16/B374D848:3`,
/// parses too.
///
/// ```
/// use bemi_query::Cursor;
///
/// let cursor: Cursor = "16-B374D848-3".parse()?;
/// assert_eq!(cursor.commit_lsn.to_string(), "16/B374D848");
/// assert_eq!(cursor.ordinal, 3);
/// assert_eq!(cursor.to_string(), "16-B374D848-3");
/// assert_eq!("16/B374D848:3".parse::<Cursor>()?, cursor);
/// # Ok::<(), bemi_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// The LSN of the transaction's commit.
    pub commit_lsn: Lsn,
    /// The change's position within its transaction.
    pub ordinal: u32,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lsn = self.commit_lsn.as_u64();
        write!(
            f,
            "{:X}-{:X}-{}",
            lsn >> 32,
            lsn & 0xFFFF_FFFF,
            self.ordinal
        )
    }
}

impl FromStr for Cursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || {
            Error::config(format!(
                "invalid cursor {s:?}: expected <LSN high>-<LSN low>-<ordinal>, like 16-B374D848-3"
            ))
        };
        let (lsn, ordinal) = match s.split_once(':') {
            Some((lsn, ordinal)) => (lsn.to_owned(), ordinal),
            None => {
                let (lsn, ordinal) = s.rsplit_once('-').ok_or_else(invalid)?;
                (lsn.replacen('-', "/", 1), ordinal)
            }
        };
        if ordinal.starts_with('+') {
            return Err(invalid());
        }
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

impl<'de> serde::Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
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
///
/// It runs on any [`Database`]: tokio-postgres clients, and with this crate's features sqlx
/// pools and connections, SeaORM connections, Diesel and diesel-async connections. Each run is
/// one statement ([`statement`](Self::statement) shows it).
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

    fn build(&self, limit: Option<i64>) -> Statement {
        self.build_with(limit, |_, _| ())
    }

    /// [`build`](Self::build) with more conditions added by `extra`.
    fn build_with(
        &self,
        limit: Option<i64>,
        extra: impl FnOnce(&mut Statement, &mut Conditions),
    ) -> Statement {
        let mut statement = Statement::default();
        let mut conditions = Conditions::default();
        conditions.push("commit_lsn IS NOT NULL".to_owned());
        self.filter.push_conditions(&mut statement, &mut conditions);
        extra(&mut statement, &mut conditions);
        if let Some(cursor) = self.after {
            let lsn = statement.int8(cursor.commit_lsn.to_int8());
            let ordinal = statement.int8(i64::from(cursor.ordinal));
            let op = match self.order {
                Order::Asc => ">",
                Order::Desc => "<",
            };
            conditions.push(format!("(commit_lsn, ordinal) {op} ({lsn}, {ordinal})"));
        }
        let mut sql = select(&self.changes, &conditions, self.order);
        if let Some(limit) = limit {
            sql.push_str(&format!(" LIMIT {}", statement.int8(limit)));
        }
        statement.set_sql(sql);
        statement
    }

    /// How many changes the filter selects that the query leaves out because they have no
    /// `commit_lsn` (rows stored by Bemi's own worker before the table was upgraded).
    pub(crate) async fn count_unordered<D: Database>(&self, db: &mut D) -> Result<i64> {
        let mut statement = Statement::default();
        let mut conditions = Conditions::default();
        conditions.push("commit_lsn IS NULL".to_owned());
        self.filter.push_conditions(&mut statement, &mut conditions);
        statement.set_sql(format!(
            "SELECT count(*)::text FROM {}{}",
            self.changes.qualified(),
            conditions.where_clause()
        ));
        let count = one_value(db.rows(&statement).await?)?;
        count.parse().map_err(|e| {
            Error::new(ErrorKind::Protocol, "count(*) did not read as a number").with_source(e)
        })
    }

    /// The SQL the query runs, with `$n` placeholders.
    pub fn sql(&self) -> String {
        self.statement().sql().to_owned()
    }

    /// The statement the query runs: its SQL and parameters, for running it yourself. Each row
    /// is one text column, a JSON array of the [`StoredChange`] columns.
    pub fn statement(&self) -> Statement {
        self.build(self.limit.map(i64::from))
    }

    /// Runs the query on `db`: a tokio-postgres `&Client`, an sqlx `&PgPool`, a SeaORM
    /// `&DatabaseConnection`, a Diesel `&mut PgConnection`, … (see [`Database`]).
    pub async fn fetch<D: Database>(&self, mut db: D) -> Result<Vec<StoredChange>> {
        let rows = db.rows(&self.statement()).await?;
        rows.iter()
            .map(|row| StoredChange::from_row(row.as_deref()))
            .collect()
    }

    /// Runs the query for one page: at most the limit's changes, and the cursor of the next
    /// page when more changes follow.
    pub async fn fetch_page<D: Database>(&self, mut db: D) -> Result<Page> {
        // One extra row tells whether another page follows.
        let statement = self.build(self.limit.map(|limit| i64::from(limit) + 1));
        let rows = db.rows(&statement).await?;
        let mut changes = rows
            .iter()
            .map(|row| StoredChange::from_row(row.as_deref()))
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
    pub async fn explain<D: Database>(&self, mut db: D) -> Result<String> {
        let query = self.statement();
        let mut explain = query.clone();
        explain.set_sql(format!("EXPLAIN {}", query.sql()));
        let lines: Vec<String> = db.rows(&explain).await?.into_iter().flatten().collect();
        Ok(lines.join("\n"))
    }
}

/// The single value of a statement that returns one row.
fn one_value(rows: Vec<Option<String>>) -> Result<String> {
    match <[Option<String>; 1]>::try_from(rows) {
        Ok([Some(value)]) => Ok(value),
        _ => Err(Error::new(
            ErrorKind::Protocol,
            "a statement of the read API did not return exactly one value",
        )),
    }
}

/// The columns read into a [`StoredChange`], in its field order, as one JSON array.
const ROW: &str = "json_build_array(id::text, primary_key, before, after, context, database, \
                   schema, \"table\", operation, committed_at, queued_at, created_at, \
                   transaction_id, position, commit_lsn, ordinal)::text AS _bemi_row";

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

    /// The context read into your own type.
    ///
    /// ```
    /// # fn run(change: &bemi_query::StoredChange) -> bemi_core::Result<()> {
    /// #[derive(serde::Deserialize)]
    /// struct Request {
    ///     user_id: i64,
    ///     endpoint: Option<String>,
    /// }
    ///
    /// let request: Request = change.context_as()?;
    /// println!("{} by user {}", request.endpoint.as_deref().unwrap_or("?"), request.user_id);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] when the context does not fit `T` (a missing field, a value of
    /// another type), with serde's error as the cause.
    pub fn context_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.context.get()).map_err(|e| {
            Error::config(format!(
                "the context of change {} does not fit {}: {e}",
                self.cursor(),
                std::any::type_name::<T>()
            ))
            .with_source(e)
        })
    }

    /// `schema.table` of the changed table.
    pub fn qualified_table(&self) -> TableName {
        TableName::qualified(&self.schema, &self.table)
    }

    /// Reads one row of a [`ChangeQuery`]'s statement: the JSON array of the columns.
    fn from_row(text: Option<&str>) -> Result<Self> {
        let text = text.ok_or_else(|| Error::new(ErrorKind::Protocol, "a changes row is null"))?;
        let row = Row::parse(text)?;
        let time = |index: usize| -> Result<DateTime<Utc>> {
            let text: String = row.get(index)?;
            DateTime::parse_from_rfc3339(&text)
                .map(|time| time.with_timezone(&Utc))
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Protocol,
                        format!("a changes row holds a time that cannot be read: {text:?}"),
                    )
                    .with_source(e)
                })
        };
        Self::from_parts(ChangeParts {
            id: row.get(0)?,
            primary_key: row.get(1)?,
            before: row.json(2)?.get().to_owned(),
            after: row.json(3)?.get().to_owned(),
            context: row.json(4)?.get().to_owned(),
            database: row.get(5)?,
            schema: row.get(6)?,
            table: row.get(7)?,
            operation: row.get(8)?,
            committed_at: time(9)?,
            queued_at: time(10)?,
            created_at: time(11)?,
            transaction_id: row.get(12)?,
            position: row.get(13)?,
            commit_lsn: row.get(14)?,
            ordinal: row.get(15)?,
        })
    }

    /// A stored change from the columns of its row, checked.
    fn from_parts(parts: ChangeParts) -> Result<Self> {
        let json = |text: String| -> Result<Box<RawValue>> {
            RawValue::from_string(text).map_err(|e| {
                Error::new(
                    ErrorKind::Db,
                    "a changes row holds JSON that cannot be read",
                )
                .with_source(e)
            })
        };
        let unordered = || {
            Error::new(
                ErrorKind::Config,
                "a changes row without commit_lsn (stored by Bemi's own worker before the table \
                 was upgraded) has no exact position in the trail",
            )
        };
        let transaction_id = parts.transaction_id;
        let ordinal = parts.ordinal.ok_or_else(unordered)?;
        Ok(StoredChange {
            id: parts.id,
            primary_key: parts.primary_key,
            before: json(parts.before)?,
            after: json(parts.after)?,
            context: json(parts.context)?,
            database: parts.database,
            schema: parts.schema,
            table: parts.table,
            operation: parts.operation.parse()?,
            committed_at: parts.committed_at,
            queued_at: parts.queued_at,
            created_at: parts.created_at,
            transaction_id: u32::try_from(transaction_id).map_err(|_| {
                Error::new(
                    ErrorKind::Db,
                    format!("transaction_id {transaction_id} of a changes row is not an xid"),
                )
            })?,
            position: Lsn::from_int8(parts.position),
            commit_lsn: Lsn::from_int8(parts.commit_lsn.ok_or_else(unordered)?),
            ordinal: u32::try_from(ordinal).map_err(|_| {
                Error::new(
                    ErrorKind::Db,
                    format!("ordinal {ordinal} of a changes row is negative"),
                )
            })?,
        })
    }
}

/// The columns of a `changes` row, as any driver reads them.
struct ChangeParts {
    id: String,
    primary_key: Option<String>,
    before: String,
    after: String,
    context: String,
    database: String,
    schema: String,
    table: String,
    operation: String,
    committed_at: DateTime<Utc>,
    queued_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    transaction_id: i64,
    position: i64,
    commit_lsn: Option<i64>,
    ordinal: Option<i64>,
}

/// `SELECT` of the stored change columns under `conditions`, in `order`.
fn select(changes: &ChangesTable, conditions: &Conditions, order: Order) -> String {
    let direction = match order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    };
    format!(
        "SELECT {ROW} FROM {}{} ORDER BY commit_lsn {direction}, ordinal {direction}",
        changes.qualified(),
        conditions.where_clause()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_through_a_url_safe_string() {
        let cursor: Cursor = "16-B374D848-3".parse().unwrap();
        assert_eq!(cursor.commit_lsn, Lsn(0x16_B374_D848));
        assert_eq!(cursor.ordinal, 3);
        assert_eq!(cursor.to_string(), "16-B374D848-3");
        let unreserved = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
        for cursor in [
            cursor,
            Cursor {
                commit_lsn: Lsn(u64::MAX >> 1),
                ordinal: u32::MAX,
            },
            Cursor {
                commit_lsn: Lsn::ZERO,
                ordinal: 0,
            },
        ] {
            let text = cursor.to_string();
            assert!(text.chars().all(unreserved), "{text}");
            assert_eq!(text.parse::<Cursor>().unwrap(), cursor);
            let json = serde_json::to_string(&cursor).unwrap();
            assert_eq!(serde_json::from_str::<Cursor>(&json).unwrap(), cursor);
        }
        assert_eq!("16/B374D848:3".parse::<Cursor>().unwrap(), cursor);
        for bad in [
            "16/B374D848",
            "16-B374D848",
            "x-1-1",
            "1-2-+3",
            "1-2-3-4",
            "1--3",
            "",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?} parsed");
        }
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
            "SELECT json_build_array(id::text, primary_key, before, after, context, database, \
             schema, \"table\", operation, committed_at, queued_at, created_at, \
             transaction_id, position, commit_lsn, ordinal)::text AS _bemi_row \
             FROM \"public\".\"changes\" \
             WHERE commit_lsn IS NOT NULL AND \"table\" = $1::text AND primary_key = $2::text \
             AND operation IN ($3::text, $4::text) AND context @> $5::text::jsonb \
             AND NOT (after @> $6::text::jsonb) AND (commit_lsn, ordinal) < ($7::int8, $8::int8) \
             ORDER BY commit_lsn DESC, ordinal DESC LIMIT $9::int8"
        );
        let params = query.statement().params().to_vec();
        assert_eq!(
            params,
            vec![
                Param::Text("todo".into()),
                Param::Text("7".into()),
                Param::Text("UPDATE".into()),
                Param::Text("DELETE".into()),
                Param::Text(r#"{"request_id":"r1"}"#.into()),
                Param::Text(r#"{"done":true}"#.into()),
                Param::Int8(10),
                Param::Int8(2),
                Param::Int8(5),
            ]
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
