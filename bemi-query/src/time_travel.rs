//! Time travel: a row, or a whole table, as it was at a moment, rebuilt from the audit trail
//! and the live table.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::database::{Databases, One, Two};
use crate::diff::columns;
use crate::key::{canonical_key, compare_keys, key_objects, key_of, LiveTable};
use crate::live::live_rows;
use crate::statement::{Conditions, Statement};
use crate::{ChangeFilter, ChangeQuery, ChangesTable, Database, Order, StoredChange, TableName};
use bemi_core::value::push_json_string;
use bemi_core::Operation;
use bemi_core::{Error, ErrorKind, Result};

/// Rebuilds rows of one table as they were at a moment, from the audit trail and the live
/// table.
///
/// The changes of the table are replayed in commit order up to the moment: a CREATE adds the
/// row under its key, an UPDATE removes the row under its old key (read out of `before`, so a
/// change of primary key ends the old key's life) and adds it under its new key, a DELETE
/// removes it, a TRUNCATE removes every row. Keys are read with the table's primary key columns
/// from the tracked database's catalog (`pg_index`), or the columns given with
/// [`TimeTravel::key_columns`].
///
/// Rows that existed before tracking began are known from their first tracked UPDATE or
/// DELETE after the moment (its `before` is the row as it had been all along) or, when nothing
/// changed them since the moment, from the live table, read with the tracker's own value
/// conversion. Rows truncated after the moment that no change recorded are lost to the trail.
///
/// **Unknown values.** Without `REPLICA IDENTITY FULL` the server sends no old row for an
/// UPDATE and only the key for a DELETE, and leaves unchanged TOASTed values out of an UPDATE's
/// new row. A column whose value at the moment the trail cannot tell is left out of the row and
/// named in [`SnapshotRow::unknown_columns`], never shown as null.
///
/// It runs on any [`Database`] (tokio-postgres, sqlx, SeaORM, Diesel, diesel-async), reading
/// the changes in pages of 1,000 and stopping as soon as later ones cannot matter.
///
/// ```no_run
/// # async fn run(client: &tokio_postgres::Client, pool: &sqlx::PgPool) -> bemi_core::Result<()> {
/// use bemi_query::TimeTravel;
///
/// let moment = "2024-05-01T12:00:00Z".parse().unwrap();
/// let todo = TimeTravel::new("public.todo".parse()?);
/// // `changes` in the tracked database: one database.
/// let row = todo.row_at_in(client, "7", moment).await?; // None: row 7 did not exist then
/// let rows = todo.table_at_in(pool, moment).await?; // every row, by primary key
/// // `changes` in another database than the tracked tables.
/// let rows = todo.table_at(pool, client, moment).await?;
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
    /// The row, as stored in the change that last wrote it (or read from the live table),
    /// without the columns in `unknown_columns`.
    pub row: Box<RawValue>,
    /// The columns whose value at the moment the trail does not hold (see [`TimeTravel`]),
    /// in table order; empty for a table with `REPLICA IDENTITY FULL`.
    pub unknown_columns: Vec<String>,
}

/// What time travel knows of a table: the schema to filter on, the key columns, and the live
/// table when the tracked database has it.
struct Resolved {
    schema: Option<String>,
    key_columns: Vec<String>,
    live: Option<LiveTable>,
}

impl TimeTravel {
    /// Time travel over `table`, reading `public.changes`.
    pub fn new(table: TableName) -> Self {
        TimeTravel {
            changes: ChangesTable::default(),
            table,
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
    /// of the tracked database (for a table that was dropped). A table named without a schema
    /// then means that table in every schema, and rows never changed since the moment are read
    /// from the live table only when it is named with its schema.
    pub fn key_columns<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.key_columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// Reads the table from the catalog of `source`, the tracked database. A table named
    /// without a schema resolves as its `search_path` says.
    async fn resolve<S: Database>(&self, source: &mut S) -> Result<Resolved> {
        let resolved = match &self.key_columns {
            Some(columns) if columns.is_empty() => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "time travel needs at least one primary key column",
                ))
            }
            // Without a schema, the changes of every schema's table of that name.
            Some(columns) => Resolved {
                schema: self.table.schema.clone(),
                key_columns: columns.clone(),
                live: match self.table.schema {
                    Some(_) => LiveTable::find(source, &self.table).await?,
                    None => None,
                },
            },
            None => {
                let live = LiveTable::load(source, &self.table).await?;
                Resolved {
                    schema: Some(live.schema.clone()),
                    key_columns: live.key_columns.clone(),
                    live: Some(live),
                }
            }
        };
        if let Some(live) = &resolved.live {
            let unsent = resolved
                .key_columns
                .iter()
                .find(|c| !live.writable_columns.contains(c));
            if let Some(column) = unsent {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "the primary key of {}.{} includes column {column:?}, which logical \
                         replication does not send (a generated column: PostgreSQL 15's pgoutput \
                         never sends them), so the audit trail cannot tell its rows apart",
                        live.schema, live.name
                    ),
                ));
            }
        }
        Ok(resolved)
    }

    fn filter(&self, schema: Option<String>) -> ChangeFilter {
        let mut filter = ChangeFilter::new().table(self.table.name.clone());
        filter.schema = schema;
        filter.database = self.database.clone();
        filter
    }

    /// The row with primary key `primary_key` (as stored in `primary_key`: `7`, `alice`,
    /// `[7,"x"]`) as it was at `at` (after every change committed at or before it), or `None`
    /// when no such row existed then. `changes` reads the `changes` table, `source` the tracked
    /// database's catalog and live rows; [`row_at_in`](Self::row_at_in) when they are one.
    pub async fn row_at<C: Database, S: Database>(
        &self,
        changes: C,
        source: S,
        primary_key: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<SnapshotRow>> {
        self.row(&mut Two(changes, source), primary_key, at).await
    }

    /// [`row_at`](Self::row_at) with `changes` in the tracked database `db`.
    pub async fn row_at_in<D: Database>(
        &self,
        db: D,
        primary_key: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<SnapshotRow>> {
        self.row(&mut One(db), primary_key, at).await
    }

    async fn row<B: Databases>(
        &self,
        dbs: &mut B,
        primary_key: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<SnapshotRow>> {
        let resolved = self.resolve(dbs.source()).await?;
        let key_columns = &resolved.key_columns;
        let key = canonical_key(primary_key, key_columns.len());
        let objects = key_objects(&key, key_columns);
        let Some(key_object) = objects.first().cloned() else {
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
        };
        // Every change that can touch the key: those stored under it (CREATE, UPDATE to it,
        // DELETE), updates away from it (stored under their new key, found by `before`), and
        // truncations of the table.
        let query = self
            .filter(resolved.schema.clone())
            .query()
            .changes_table(self.changes.clone());
        let condition = |statement: &mut Statement, conditions: &mut Conditions| {
            // the key as stored (a composite key's JSON without spaces), not as typed
            let key_param = statement.text(key.clone());
            let befores: Vec<String> = objects
                .iter()
                .map(|object| format!("before @> {}::jsonb", statement.text(object.clone())))
                .collect();
            conditions.push(format!(
                "(primary_key = {key_param} OR (operation = 'UPDATE' AND ({})) \
                 OR operation = 'TRUNCATE')",
                befores.join(" OR ")
            ));
        };
        let mut replay = Replay::new(&resolved, at, true);
        replay.run(dbs.changes(), &query, condition).await?;
        if replay.seen.contains(&key) || !replay.live_rows_apply() {
            return Ok(replay.rows.remove(&key).map(|state| state.snapshot(key)));
        }
        // Never changed since the moment: as it is now, if it exists.
        let Some(live) = &resolved.live else {
            return Ok(None);
        };
        let rows = live_rows(
            dbs.source(),
            live,
            Some(&key_object),
            &HashSet::new(),
            |row| key_of(&columns(row), key_columns),
        )
        .await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|(primary_key, row)| SnapshotRow {
                primary_key,
                row,
                unknown_columns: Vec::new(),
            }))
    }

    /// Every row of the table as it was at `at` (after every change committed at or before it),
    /// ordered by primary key (integers by value). `changes` reads the `changes` table, `source`
    /// the tracked database's catalog and live rows; [`table_at_in`](Self::table_at_in) when
    /// they are one.
    pub async fn table_at<C: Database, S: Database>(
        &self,
        changes: C,
        source: S,
        at: DateTime<Utc>,
    ) -> Result<Vec<SnapshotRow>> {
        self.table(&mut Two(changes, source), at).await
    }

    /// [`table_at`](Self::table_at) with `changes` in the tracked database `db`.
    pub async fn table_at_in<D: Database>(
        &self,
        db: D,
        at: DateTime<Utc>,
    ) -> Result<Vec<SnapshotRow>> {
        self.table(&mut One(db), at).await
    }

    async fn table<B: Databases>(
        &self,
        dbs: &mut B,
        at: DateTime<Utc>,
    ) -> Result<Vec<SnapshotRow>> {
        let resolved = self.resolve(dbs.source()).await?;
        let filter = self.filter(resolved.schema.clone());
        // Replay from the last TRUNCATE at or before the moment: nothing before it survives.
        let truncate = filter
            .clone()
            .operation(Operation::Truncate)
            .until(at)
            .query()
            .changes_table(self.changes.clone())
            .order(Order::Desc)
            .limit(1)
            .fetch(dbs.changes())
            .await?
            .pop();
        let mut query = filter.query().changes_table(self.changes.clone());
        if let Some(truncate) = &truncate {
            // Everything since is tracked, so no row is older than the trail: stop at the moment.
            query.filter = query.filter.until(at);
            query = query.after(truncate.cursor());
        }
        let mut replay = Replay::new(&resolved, at, truncate.is_none());
        replay.run(dbs.changes(), &query, |_, _| ()).await?;
        let mut rows: Vec<SnapshotRow> = replay
            .rows
            .drain()
            .map(|(primary_key, state)| state.snapshot(primary_key))
            .collect();
        if let (true, Some(live)) = (replay.live_rows_apply(), &resolved.live) {
            // Rows never changed since the moment: as they are now.
            let key_columns = &resolved.key_columns;
            let untouched = live_rows(dbs.source(), live, None, &replay.seen, |row| {
                key_of(&columns(row), key_columns)
            })
            .await?;
            rows.extend(untouched.into_iter().map(|(primary_key, row)| SnapshotRow {
                primary_key,
                row,
                unknown_columns: Vec::new(),
            }));
        }
        rows.sort_by(|a, b| compare_keys(&a.primary_key, &b.primary_key));
        Ok(rows)
    }
}

/// How many changes the replay reads at a time.
const REPLAY_PAGE: i64 = 1_000;

/// A row's state in the replay.
struct RowState {
    row: Box<RawValue>,
    /// Columns whose value the trail does not hold, in table order.
    unknown: Vec<String>,
}

impl RowState {
    fn snapshot(self, primary_key: String) -> SnapshotRow {
        SnapshotRow {
            primary_key,
            row: self.row,
            unknown_columns: self.unknown,
        }
    }
}

/// The replay of a table's changes in commit order up to a moment.
struct Replay<'a> {
    key_columns: &'a [String],
    /// The live table's columns, in table order, when the tracked database has it.
    live_columns: Option<&'a [String]>,
    at: DateTime<Utc>,
    /// The rows alive at the moment, by key.
    rows: HashMap<String, RowState>,
    /// Keys whose state at the moment is decided.
    seen: HashSet<String>,
    /// Whether rows older than the trail may be inferred from changes after the moment.
    infer: bool,
    /// Whether a TRUNCATE after the moment ended the replay.
    truncated_after: bool,
    /// Whether later changes can no longer matter.
    done: bool,
}

impl<'a> Replay<'a> {
    fn new(resolved: &'a Resolved, at: DateTime<Utc>, infer: bool) -> Self {
        Replay {
            key_columns: &resolved.key_columns,
            live_columns: resolved
                .live
                .as_ref()
                .map(|live| live.writable_columns.as_slice()),
            at,
            rows: HashMap::new(),
            seen: HashSet::new(),
            infer,
            truncated_after: false,
            done: false,
        }
    }

    /// Whether rows the replay did not decide are as the live table has them: rows may be
    /// older than the trail, and no TRUNCATE after the moment removed them unrecorded.
    fn live_rows_apply(&self) -> bool {
        if self.truncated_after {
            tracing::warn!(
                "a TRUNCATE after the moment removed rows that no change recorded; time travel \
                 cannot recover rows that were never changed before it"
            );
        }
        self.infer && !self.truncated_after
    }

    /// Applies the changes `query` selects (with the conditions `extra` adds), a page at a
    /// time, until later ones cannot matter.
    async fn run<D: Database>(
        &mut self,
        db: &mut D,
        query: &ChangeQuery,
        extra: impl Fn(&mut Statement, &mut Conditions),
    ) -> Result<()> {
        let mut query = query.clone();
        loop {
            let statement = query.build_with(Some(REPLAY_PAGE), &extra);
            let rows = db.rows(&statement).await?;
            let full = rows.len() as i64 == REPLAY_PAGE;
            for row in rows {
                let change = StoredChange::from_row(row.as_deref())?;
                query.after = Some(change.cursor());
                self.apply(&change)?;
                if self.done {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn apply(&mut self, change: &StoredChange) -> Result<()> {
        if self.done {
            return Ok(());
        }
        let before = columns(&change.before);
        let after = columns(&change.after);
        let after_key = key_of(&after, self.key_columns);
        if after_key.is_none() && matches!(change.operation, Operation::Create | Operation::Update)
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the {} of {}.{} (change {}) has no value for the key columns ({}): a key \
                     column the tracker never receives (a generated column), or key columns \
                     that changed since; pass the key columns the changes were stored with",
                    change.operation,
                    change.schema,
                    change.table,
                    change.cursor(),
                    self.key_columns.join(", ")
                ),
            ));
        }
        let stored_before_key = key_of(&before, self.key_columns);
        // Without the old row (no REPLICA IDENTITY FULL), the key did not change for an UPDATE,
        // and a DELETE is stored under its key.
        let before_key = stored_before_key.or_else(|| match change.operation {
            Operation::Update => after_key.clone(),
            Operation::Delete => change
                .primary_key
                .as_deref()
                .map(|k| canonical_key(k, self.key_columns.len())),
            _ => None,
        });
        if change.committed_at <= self.at {
            match change.operation {
                Operation::Create | Operation::Update | Operation::Delete => {
                    let previous = before_key.and_then(|key| {
                        self.seen.insert(key.clone());
                        self.rows.remove(&key)
                    });
                    if let Some(key) = after_key.filter(|_| change.operation != Operation::Delete) {
                        let state = match change.operation {
                            Operation::Update => self.updated(change, previous, &before, &after)?,
                            _ => RowState {
                                row: change.after.clone(),
                                unknown: Vec::new(),
                            },
                        };
                        self.seen.insert(key.clone());
                        self.rows.insert(key, state);
                    }
                }
                Operation::Message => {}
                Operation::Truncate => {
                    self.rows.clear();
                    // Every row since is tracked from its CREATE.
                    self.infer = false;
                }
            }
            return Ok(());
        }
        // After the moment: the first UPDATE or DELETE of a key the trail never saw before
        // shows the row as it had been since before tracking began.
        if !self.infer {
            self.done = true;
            return Ok(());
        }
        match change.operation {
            Operation::Truncate => {
                self.truncated_after = true;
                self.done = true;
            }
            Operation::Message => {}
            Operation::Create => {
                if let Some(key) = after_key {
                    self.seen.insert(key);
                }
            }
            Operation::Update | Operation::Delete => {
                if let Some(key) = before_key {
                    if self.seen.insert(key.clone()) {
                        let state = self.inferred(change, &before, &after)?;
                        self.rows.insert(key, state);
                    }
                }
                if let Some(key) = after_key {
                    self.seen.insert(key);
                }
            }
        }
        Ok(())
    }

    /// The columns a row of the table has, in table order: the live table's, or when there is
    /// none those of `guesses`; followed by any other column of the change's `rows`.
    fn expected<'c>(
        &'c self,
        rows: &[&'c BTreeMap<String, &RawValue>],
        guesses: &[&'c BTreeMap<String, &RawValue>],
    ) -> Vec<&'c str> {
        let mut names: Vec<&str> = Vec::new();
        let mut add = |name: &'c str| {
            if !names.contains(&name) {
                names.push(name);
            }
        };
        match self.live_columns {
            Some(live) => live.iter().for_each(|name| add(name)),
            None => guesses
                .iter()
                .flat_map(|row| row.keys())
                .for_each(|name| add(name)),
        }
        rows.iter()
            .flat_map(|row| row.keys())
            .for_each(|name| add(name));
        names
    }

    /// The row as it was before a change after the moment: its `before`, of which only the key
    /// is known when the table's identity is not FULL.
    fn inferred(
        &self,
        change: &StoredChange,
        before: &BTreeMap<String, &RawValue>,
        after: &BTreeMap<String, &RawValue>,
    ) -> Result<RowState> {
        let key_only = before.keys().all(|c| self.key_columns.contains(c));
        let expected = self.expected(&[before], &[after]);
        if !key_only || expected.iter().all(|c| before.contains_key(*c)) {
            return Ok(RowState {
                row: change.before.clone(),
                unknown: Vec::new(),
            });
        }
        // Only the key is known; without the old row (an UPDATE), the key did not change.
        let mut known: Vec<(&str, &RawValue)> = Vec::new();
        let mut unknown = Vec::new();
        for name in expected {
            let is_key = self.key_columns.iter().any(|k| k == name);
            let value = match before.get(name) {
                None if before.is_empty() && is_key => after.get(name),
                value => value,
            };
            match value {
                Some(value) => known.push((name, value)),
                None => unknown.push(name.to_owned()),
            }
        }
        Ok(RowState {
            row: object(&known)?,
            unknown,
        })
    }

    /// The row after an UPDATE at or before the moment: its `after`, with the columns the
    /// server left out (unchanged TOASTed values) taken from the row as it was, when known.
    fn updated(
        &self,
        change: &StoredChange,
        previous: Option<RowState>,
        before: &BTreeMap<String, &RawValue>,
        after: &BTreeMap<String, &RawValue>,
    ) -> Result<RowState> {
        let previous_row = previous.as_ref().map(|state| columns(&state.row));
        let empty = BTreeMap::new();
        let previous_columns = previous_row.as_ref().unwrap_or(&empty);
        let expected = self.expected(&[after], &[previous_columns, before]);
        if expected.iter().all(|c| after.contains_key(*c)) {
            return Ok(RowState {
                row: change.after.clone(),
                unknown: Vec::new(),
            });
        }
        let mut known: Vec<(&str, &RawValue)> = Vec::new();
        let mut unknown = Vec::new();
        for name in expected {
            match after
                .get(name)
                .or_else(|| previous_columns.get(name))
                .or_else(|| before.get(name))
            {
                Some(value) => known.push((name, value)),
                None => unknown.push(name.to_owned()),
            }
        }
        Ok(RowState {
            row: object(&known)?,
            unknown,
        })
    }
}

/// A JSON object of `entries`, in their order.
fn object(entries: &[(&str, &RawValue)]) -> Result<Box<RawValue>> {
    let mut json = String::from("{");
    for (i, (name, value)) in entries.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        push_json_string(name, &mut json);
        json.push(':');
        json.push_str(value.get());
    }
    json.push('}');
    RawValue::from_string(json)
        .map_err(|e| Error::new(ErrorKind::Db, "a rebuilt row is not JSON").with_source(e))
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
            position: bemi_core::Lsn(u64::from(minute)),
            commit_lsn: bemi_core::Lsn(u64::from(minute)),
            ordinal: 0,
        }
    }

    fn replay(changes: &[StoredChange], minute: u32) -> Vec<(String, String)> {
        let resolved = Resolved {
            schema: None,
            key_columns: vec!["id".to_owned()],
            live: None,
        };
        let at = format!("2024-01-01T00:{minute:02}:00Z").parse().unwrap();
        let mut replay = Replay::new(&resolved, at, true);
        for c in changes {
            replay.apply(c).unwrap();
        }
        let mut rows: Vec<(String, String)> = replay
            .rows
            .into_iter()
            .map(|(k, v)| {
                let unknown = match v.unknown.is_empty() {
                    true => String::new(),
                    false => format!(" unknown {}", v.unknown.join(",")),
                };
                (k, format!("{}{unknown}", v.row.get()))
            })
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

    #[test]
    fn without_full_identity_unknown_values_stay_unknown() {
        use Operation::*;
        let changes = [
            // REPLICA IDENTITY DEFAULT: no old row, and `big` (TOASTed, unchanged) not sent.
            change(Create, 1, "{}", r#"{"id": 1, "v": "a", "big": "B"}"#),
            change(Update, 2, "{}", r#"{"id": 1, "v": "b"}"#),
            // A row older than the trail, updated then deleted (only the key in `before`).
            change(Update, 3, "{}", r#"{"id": 2, "v": "x", "big": "C"}"#),
            change(Delete, 4, r#"{"id": 3}"#, "{}"),
        ];
        let row = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            replay(&changes, 2),
            vec![
                // `big` carried over from the row as it was
                row("1", r#"{"big":"B","id":1,"v":"b"}"#),
                row("2", r#"{"id":2} unknown big,v"#),
                // without the live table's columns, nothing tells what row 3 had
                row("3", r#"{"id": 3}"#),
            ]
        );
        assert!(
            Replay::new(
                &Resolved {
                    schema: None,
                    key_columns: vec!["k".to_owned()],
                    live: None
                },
                Utc::now(),
                true
            )
            .apply(&changes[0])
            .is_err(),
            "a CREATE without the key columns is an error"
        );
    }
}
