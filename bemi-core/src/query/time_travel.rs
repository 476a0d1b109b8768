//! Time travel: a row, or a whole table, as it was at a moment, rebuilt from the audit trail.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt as _;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::GenericClient;

use super::diff::columns;
use super::key::{canonical_key, compare_keys, key_objects, key_of, LiveTable};
use super::{ChangeFilter, ChangesTable, Order, SqlBuilder, StoredChange, TableName};
use crate::error::{Error, ErrorKind, Result};
use crate::Operation;

/// Rebuilds rows of one table as they were at a moment, from the audit trail.
///
/// The changes of the table are replayed in commit order up to the moment: a CREATE adds the
/// row under its key, an UPDATE removes the row under its old key (read out of `before`, so a
/// change of primary key ends the old key's life) and adds it under its new key, a DELETE
/// removes it, a TRUNCATE removes every row. Keys are read with the table's primary key columns
/// from the live catalog (`pg_index`), or the columns given with
/// [`TimeTravel::key_columns`].
///
/// Rows that existed before tracking began are known from their first tracked UPDATE or
/// DELETE: its `before` is the row as it had been all along. Rows never changed since tracking
/// began are not in the trail, so the answer is only as complete as the trail. Complete rows
/// need `REPLICA IDENTITY FULL` on the tracked table (as the tracker's setup arranges).
///
/// ```no_run
/// # async fn run(client: &tokio_postgres::Client) -> bemi_core::Result<()> {
/// use bemi_core::query::TimeTravel;
///
/// let moment = "2024-05-01T12:00:00Z".parse().unwrap();
/// let todo = TimeTravel::new("public.todo");
/// let row = todo.row_at(client, "7", moment).await?; // None: row 7 did not exist then
/// let rows = todo.table_at(client, moment).await?; // every row, by primary key
/// # drop((row, rows)); Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeTravel {
    changes: ChangesTable,
    table: TableName,
    database: Option<String>,
    key_columns: Option<Vec<String>>,
}

/// A row of a table as it was at a moment.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SnapshotRow {
    /// The row's primary key text (the form of the `primary_key` column).
    pub primary_key: String,
    /// The row, as stored in the change that last wrote it.
    pub row: Box<RawValue>,
}

impl TimeTravel {
    /// Time travel over `table` (`"todo"` or `"schema.todo"`), reading `public.changes`.
    pub fn new(table: impl Into<TableName>) -> Self {
        TimeTravel {
            changes: ChangesTable::default(),
            table: table.into(),
            database: None,
            key_columns: None,
        }
    }

    /// Reads another changes table than `public.changes`.
    pub fn changes_table(mut self, changes: ChangesTable) -> Self {
        self.changes = changes;
        self
    }

    /// Only changes of the source database `name` (when one `changes` table serves several).
    pub fn database(mut self, name: impl Into<String>) -> Self {
        self.database = Some(name.into());
        self
    }

    /// The table's primary key columns, in key order, instead of reading them from the catalog
    /// of the database the client is connected to (for a table that was dropped, or a
    /// `changes` table in another database).
    pub fn key_columns<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.key_columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// Reads the table's schema and primary key columns from the catalog of the database
    /// `client` is connected to: the tracked database, when `changes` lives in another one
    /// (then [`row_at`](Self::row_at) and [`table_at`](Self::table_at) are given a client of
    /// that other database). A table named without a schema resolves as the tracked database's
    /// `search_path` says, as when both are the same database.
    ///
    /// # Errors
    ///
    /// When the table does not exist there or has no primary key.
    pub async fn with_catalog_of<C>(mut self, client: &C) -> Result<Self>
    where
        C: GenericClient + Sync,
    {
        let live = LiveTable::load(client, &self.table).await?;
        self.table = TableName::qualified(live.schema, live.name);
        self.key_columns = Some(live.key_columns);
        Ok(self)
    }

    /// The schema to filter on (if known) and the key columns.
    async fn resolve<C>(&self, client: &C) -> Result<(Option<String>, Vec<String>)>
    where
        C: GenericClient + Sync,
    {
        match &self.key_columns {
            Some(columns) if columns.is_empty() => Err(Error::new(
                ErrorKind::Config,
                "time travel needs at least one primary key column",
            )),
            Some(columns) => Ok((self.table.schema.clone(), columns.clone())),
            None => {
                let live = LiveTable::load(client, &self.table).await?;
                Ok((Some(live.schema), live.key_columns))
            }
        }
    }

    fn filter(&self, schema: Option<String>) -> ChangeFilter {
        let mut filter = ChangeFilter::new().table(self.table.name.clone());
        filter.schema = schema;
        filter.database = self.database.clone();
        filter
    }

    /// The row with primary key `primary_key` (as stored in `primary_key`: `7`, `alice`,
    /// `[7,"x"]`) as it was at `at` (after every change committed at or before it), or `None`
    /// when no such row existed then.
    pub async fn row_at<C>(
        &self,
        client: &C,
        primary_key: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<Box<RawValue>>>
    where
        C: GenericClient + Sync,
    {
        let (schema, key_columns) = self.resolve(client).await?;
        let key = canonical_key(primary_key, key_columns.len());
        let objects = key_objects(&key, &key_columns);
        if objects.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "primary key {primary_key:?} does not fit the {} key columns ({}) of {}: \
                     give a JSON array with one value per column, like [7,\"x\"]",
                    key_columns.len(),
                    key_columns.join(", "),
                    self.table
                ),
            ));
        }
        // Every change that can touch the key: those stored under it (CREATE, UPDATE to it,
        // DELETE), updates away from it (stored under their new key, found by `before`), and
        // truncations of the table.
        let query = self
            .filter(schema)
            .query()
            .changes_table(self.changes.clone());
        let sql = query.build_with(None, |sql| {
            // the key as stored (a composite key's JSON without spaces), not as typed
            let key_param = sql.bind(key.clone());
            let befores: Vec<String> = objects
                .into_iter()
                .map(|object| format!("before @> {}::text::jsonb", sql.bind(object)))
                .collect();
            sql.condition(format!(
                "(primary_key = {key_param} OR (operation = 'UPDATE' AND ({})) \
                 OR operation = 'TRUNCATE')",
                befores.join(" OR ")
            ));
        });
        let mut replay = Replay::new(&key_columns, at, true);
        replay.run(client, &sql).await?;
        Ok(replay.rows.remove(&key))
    }

    /// Every row of the table as it was at `at` (after every change committed at or before it),
    /// ordered by primary key (integers by value).
    pub async fn table_at<C>(&self, client: &C, at: DateTime<Utc>) -> Result<Vec<SnapshotRow>>
    where
        C: GenericClient + Sync,
    {
        let (schema, key_columns) = self.resolve(client).await?;
        let filter = self.filter(schema);
        // Replay from the last TRUNCATE at or before the moment: nothing before it survives.
        let truncate = filter
            .clone()
            .operation(Operation::Truncate)
            .until(at)
            .query()
            .changes_table(self.changes.clone())
            .order(Order::Desc)
            .limit(1)
            .fetch(client)
            .await?
            .pop();
        let mut query = filter.query().changes_table(self.changes.clone());
        if let Some(truncate) = &truncate {
            // Everything since is tracked, so no row is older than the trail: stop at the moment.
            query.filter = query.filter.until(at);
            query = query.after(truncate.cursor());
        }
        let sql = query.build(None);
        let mut replay = Replay::new(&key_columns, at, truncate.is_none());
        replay.run(client, &sql).await?;
        let mut rows: Vec<SnapshotRow> = replay
            .rows
            .into_iter()
            .map(|(primary_key, row)| SnapshotRow { primary_key, row })
            .collect();
        rows.sort_by(|a, b| compare_keys(&a.primary_key, &b.primary_key));
        Ok(rows)
    }
}

/// The replay of a table's changes in commit order up to a moment.
struct Replay<'a> {
    key_columns: &'a [String],
    at: DateTime<Utc>,
    /// The rows alive at the moment, by key.
    rows: HashMap<String, Box<RawValue>>,
    /// Keys whose state at the moment is decided.
    seen: HashSet<String>,
    /// Whether rows older than the trail may be inferred from changes after the moment.
    infer: bool,
    /// Whether later changes can no longer matter.
    done: bool,
}

impl<'a> Replay<'a> {
    fn new(key_columns: &'a [String], at: DateTime<Utc>, infer: bool) -> Self {
        Replay {
            key_columns,
            at,
            rows: HashMap::new(),
            seen: HashSet::new(),
            infer,
            done: false,
        }
    }

    /// Applies the changes `sql` selects as they arrive, until later ones cannot matter.
    async fn run<C>(&mut self, client: &C, sql: &SqlBuilder) -> Result<()>
    where
        C: GenericClient + Sync,
    {
        let rows = client.query_raw(sql.text.as_str(), sql.params()).await?;
        futures_util::pin_mut!(rows);
        while let Some(row) = rows.try_next().await? {
            self.apply(&StoredChange::from_row(&row)?);
            if self.done {
                break;
            }
        }
        Ok(())
    }

    fn apply(&mut self, change: &StoredChange) {
        if self.done {
            return;
        }
        let before = columns(&change.before);
        let after_key = key_of(&columns(&change.after), self.key_columns);
        let stored_before_key = key_of(&before, self.key_columns);
        if change.committed_at <= self.at {
            // Without the old row (no REPLICA IDENTITY FULL), the key did not change for an
            // UPDATE, and a DELETE is stored under its key.
            let before_key = stored_before_key.or_else(|| match change.operation {
                Operation::Update => after_key.clone(),
                Operation::Delete => change
                    .primary_key
                    .as_deref()
                    .map(|k| canonical_key(k, self.key_columns.len())),
                _ => None,
            });
            match change.operation {
                Operation::Create | Operation::Update | Operation::Delete => {
                    if let Some(key) = before_key {
                        self.rows.remove(&key);
                        self.seen.insert(key);
                    }
                    if change.operation != Operation::Delete {
                        if let Some(key) = after_key {
                            self.seen.insert(key.clone());
                            self.rows.insert(key, change.after.clone());
                        }
                    }
                }
                Operation::Message => {}
                Operation::Truncate => {
                    self.rows.clear();
                    // Every row since is tracked from its CREATE.
                    self.infer = false;
                }
            }
            return;
        }
        // After the moment: the first UPDATE or DELETE of a key the trail never saw before
        // shows the row as it had been since before tracking began.
        if !self.infer {
            self.done = true;
            return;
        }
        match change.operation {
            Operation::Truncate => self.done = true,
            Operation::Message => {}
            Operation::Create => {
                if let Some(key) = after_key {
                    self.seen.insert(key);
                }
            }
            Operation::Update | Operation::Delete => {
                if let Some(key) = stored_before_key {
                    if self.seen.insert(key.clone()) {
                        self.rows.insert(key, change.before.clone());
                    }
                }
                if let Some(key) = after_key {
                    self.seen.insert(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: Operation, minute: u32, before: &str, after: &str) -> StoredChange {
        let time = |m: u32| {
            format!("2024-01-01T00:{m:02}:00Z")
                .parse::<DateTime<Utc>>()
                .unwrap()
        };
        StoredChange {
            id: String::new(),
            primary_key: None,
            before: RawValue::from_string(before.to_owned()).unwrap(),
            after: RawValue::from_string(after.to_owned()).unwrap(),
            context: RawValue::from_string("{}".to_owned()).unwrap(),
            database: "db".to_owned(),
            schema: "public".to_owned(),
            table: "t".to_owned(),
            operation: op,
            committed_at: time(minute),
            queued_at: time(minute),
            created_at: time(minute),
            transaction_id: 1,
            position: crate::Lsn(u64::from(minute)),
            commit_lsn: crate::Lsn(u64::from(minute)),
            ordinal: 0,
        }
    }

    fn replay(changes: &[StoredChange], minute: u32) -> Vec<(String, String)> {
        let key = vec!["id".to_owned()];
        let at = format!("2024-01-01T00:{minute:02}:00Z").parse().unwrap();
        let mut replay = Replay::new(&key, at, true);
        for c in changes {
            replay.apply(c);
        }
        let mut rows: Vec<(String, String)> = replay
            .rows
            .into_iter()
            .map(|(k, v)| (k, v.get().to_owned()))
            .collect();
        rows.sort();
        rows
    }

    #[test]
    fn replays_key_changes_deletes_and_truncates() {
        use Operation::*;
        let changes = [
            change(Create, 1, "{}", r#"{"id": 1, "v": "a"}"#),
            change(Create, 2, "{}", r#"{"id": 2, "v": "b"}"#),
            change(
                Update,
                3,
                r#"{"id": 1, "v": "a"}"#,
                r#"{"id": 3, "v": "a"}"#,
            ),
            change(Delete, 4, r#"{"id": 2, "v": "b"}"#, "{}"),
            change(Truncate, 5, "{}", "{}"),
            change(Create, 6, "{}", r#"{"id": 1, "v": "c"}"#),
        ];
        let row = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(replay(&changes, 0), vec![]);
        assert_eq!(
            replay(&changes, 2),
            vec![
                row("1", r#"{"id": 1, "v": "a"}"#),
                row("2", r#"{"id": 2, "v": "b"}"#)
            ]
        );
        assert_eq!(
            replay(&changes, 3),
            vec![
                row("2", r#"{"id": 2, "v": "b"}"#),
                row("3", r#"{"id": 3, "v": "a"}"#)
            ]
        );
        assert_eq!(
            replay(&changes, 4),
            vec![row("3", r#"{"id": 3, "v": "a"}"#)]
        );
        assert_eq!(replay(&changes, 5), vec![]);
        assert_eq!(
            replay(&changes, 6),
            vec![row("1", r#"{"id": 1, "v": "c"}"#)]
        );
    }

    #[test]
    fn rows_older_than_the_trail_come_from_their_first_change() {
        use Operation::*;
        let changes = [
            change(
                Update,
                2,
                r#"{"id": 9, "v": "old"}"#,
                r#"{"id": 9, "v": "new"}"#,
            ),
            change(Delete, 3, r#"{"id": 8, "v": "x"}"#, "{}"),
            change(Create, 4, "{}", r#"{"id": 7, "v": "late"}"#),
            change(Delete, 5, r#"{"id": 7, "v": "late"}"#, "{}"),
        ];
        let row = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            replay(&changes, 1),
            vec![
                row("8", r#"{"id": 8, "v": "x"}"#),
                row("9", r#"{"id": 9, "v": "old"}"#)
            ]
        );
        assert_eq!(
            replay(&changes, 2),
            vec![
                row("8", r#"{"id": 8, "v": "x"}"#),
                row("9", r#"{"id": 9, "v": "new"}"#)
            ]
        );
    }
}
