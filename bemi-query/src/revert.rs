//! Revert: undo a set of changes in one transaction that carries its own context.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::database::{Databases, One, Two};
use crate::diff::columns;
use crate::key::{key_of, LiveTable};
use crate::statement::{Param, Row, Statement};
use crate::{ChangeFilter, ChangeQuery, ChangesTable, Cursor, Database, StoredChange, TableName};
use bemi_core::sql::{quote_identifier, quote_literal};
use bemi_core::Operation;
use bemi_core::{Error, ErrorKind, Result};

/// Undoes a set of changes in one transaction that carries its own context.
///
/// The set is every change a [`ChangeFilter`] selects: one transaction
/// ([`ChangeFilter::transaction`]), everything one request did
/// ([`ChangeFilter::context_contains`] with `{"request_id": "r1"}`), a time range, … The inverse
/// statements run newest change first: a CREATE is undone by a DELETE of its key, an UPDATE by
/// an UPDATE of the columns it changed back to `before` (found by the `after` key, so a change
/// of primary key is undone too), a DELETE by an INSERT of the `before` row. A TRUNCATE cannot
/// be undone (its rows are not in the trail): a set with one is refused.
///
/// Rows are written from their JSON with `jsonb_populate_record(NULL::schema.table, $1)`, so
/// every value goes through its column type's own input function, bound as a parameter; only
/// identifiers (quoted) are part of the SQL text. Generated columns are left to the server;
/// identity columns are restored with `OVERRIDING SYSTEM VALUE`.
///
/// **Conflicts.** Before writing, each row the set touched must still be as the set left it:
/// equal to the last change's `after` (compared column by column as typed values, so
/// formatting differences do not count), or absent after a DELETE. A change outside the set
/// between two changes of the set to the same row is a conflict too (undoing the earlier one
/// would silently undo it). The check runs again inside the applying transaction, with the rows
/// locked (`FOR UPDATE`). Conflicts refuse the revert, naming the rows, unless it is forced.
///
/// **Rows beyond the set.** Each statement writes one row, but a foreign key's `ON DELETE
/// CASCADE` (or `SET NULL`, `ON UPDATE CASCADE`, …) or a trigger can write others: undoing the
/// creation of an order would also delete the items another request added to it. The applying
/// transaction counts every row it wrote per table (`pg_stat_xact_user_tables`) and, when that
/// is more than its statements account for, rolls back and refuses, naming the tables, unless
/// it is forced.
///
/// The transaction first emits `{"reverted": <filter>, "by": <who>, "changes": <count>}` as
/// its `_bemi` context, so the revert shows in the audit trail with its reason.
///
/// ```no_run
/// # async fn run(client: &mut tokio_postgres::Client) -> bemi_core::Result<()> {
/// use bemi_query::{ChangeFilter, Revert};
///
/// let revert = Revert::new(
///     ChangeFilter::new().context_contains(serde_json::json!({"request_id": "r1"})),
/// )
/// .by("alice");
/// let plan = revert.plan_in(&*client).await?;
/// println!("{}", plan.sql()); // a dry run: the statements, not applied
/// plan.apply(client).await?; // refuses if a row changed since
/// # Ok(()) }
/// ```
///
/// With another driver, plan on any [`Database`] and apply in a transaction of that driver
/// with [`RevertPlan::apply_in`], then commit:
///
/// ```no_run
/// # async fn run(pool: &sqlx::PgPool, revert: bemi_query::Revert) -> Result<(), Box<dyn std::error::Error>> {
/// let plan = revert.plan_in(pool).await?;
/// let mut tx = pool.begin().await?;
/// plan.apply_in(&mut tx).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Revert {
    changes: ChangesTable,
    filter: ChangeFilter,
    by: Option<String>,
    force: bool,
}

/// Why a row stops a revert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConflictKind {
    /// The row changed after the reverted changes.
    Changed,
    /// The row was deleted after the reverted changes.
    Missing,
    /// The row the reverted changes deleted exists again.
    ExistsAgain,
    /// A change outside the set modified the row between two changes of the set.
    ChangedInBetween,
}

impl fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConflictKind::Changed => "changed since",
            ConflictKind::Missing => "deleted since",
            ConflictKind::ExistsAgain => "exists again",
            ConflictKind::ChangedInBetween => "changed between the reverted changes",
        })
    }
}

/// A row whose current state does not allow a clean revert.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Conflict {
    /// The table.
    pub table: TableName,
    /// The row's primary key text.
    pub primary_key: String,
    /// What is wrong.
    pub kind: ConflictKind,
    /// The row as the reverted changes left it (`None`: absent).
    pub expected: Option<Box<RawValue>>,
    /// The row as it is now, or as a later change found it (`None`: absent).
    pub found: Option<Box<RawValue>>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.table, self.primary_key, self.kind)?;
        if let Some(found) = &self.found {
            write!(f, " (now {}", found.get())?;
            if let Some(expected) = &self.expected {
                write!(f, ", expected {}", expected.get())?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// One inverse statement of a revert.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RevertStep {
    /// The table written.
    pub table: TableName,
    /// The primary key of the row written (after the statement).
    pub primary_key: String,
    /// The operation of the change this statement undoes.
    pub undoes: Operation,
    /// The change this statement undoes.
    pub change: Cursor,
    /// The statement, with `$n` placeholders for [`params`](Self::params).
    pub sql: String,
    /// The JSON texts bound to the placeholders, in order.
    pub params: Vec<String>,
}

impl RevertStep {
    /// The statement with its parameters written in as JSON literals, for a dry run.
    ///
    /// One pass over the statement: placeholders are replaced only outside quoted identifiers
    /// and literals, and never inside a value already written in, so no value can turn into SQL.
    pub fn sql_with_literals(&self) -> String {
        let mut out = String::with_capacity(self.sql.len() + 64);
        let mut rest = self.sql.as_str();
        while let Some(c) = rest.chars().next() {
            match c {
                '"' | '\'' => {
                    let end = quoted_end(rest, c);
                    out.push_str(&rest[..end]);
                    rest = &rest[end..];
                }
                '$' => {
                    let digits = rest[1..].bytes().take_while(u8::is_ascii_digit).count();
                    let param = rest[1..=digits]
                        .parse::<usize>()
                        .ok()
                        .and_then(|n| self.params.get(n.checked_sub(1)?));
                    let tail = &rest[1 + digits..];
                    match param {
                        Some(param) if tail.starts_with(PARAM_CAST) => {
                            out.push_str(&quote_literal(param));
                            out.push_str("::jsonb");
                            rest = &tail[PARAM_CAST.len()..];
                        }
                        _ => {
                            out.push('$');
                            rest = &rest[1..];
                        }
                    }
                }
                c => {
                    out.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        out
    }
}

/// How the statements use each parameter: `$n::text::jsonb`.
const PARAM_CAST: &str = "::text::jsonb";

/// The length of the quoted identifier or literal at the start of `sql`, which opens with
/// `quote` (a doubled quote stays inside); all of `sql` when it is not closed.
fn quoted_end(sql: &str, quote: char) -> usize {
    let mut chars = sql.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            if chars.peek().map(|&(_, next)| next) == Some(quote) {
                chars.next();
            } else {
                return i + 1;
            }
        }
    }
    sql.len()
}

/// What a revert will do: the changes it undoes, the statements, and the conflicts found.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RevertPlan {
    /// The reverted changes, oldest first.
    pub changes: Vec<StoredChange>,
    /// The inverse statements, in the order they run (newest change first).
    pub steps: Vec<RevertStep>,
    /// The rows that stop the revert unless it is forced (checked again when applying).
    pub conflicts: Vec<Conflict>,
    /// The `_bemi` context the revert's transaction emits (JSON object text).
    pub context: String,
    /// Whether conflicts are overridden.
    pub force: bool,
    #[serde(skip)]
    checks: Vec<TableCheck>,
}

/// What a revert did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RevertOutcome {
    /// How many changes were reverted.
    pub changes: usize,
    /// How many statements ran.
    pub statements: usize,
    /// How many rows the statements wrote.
    pub rows: u64,
    /// The context the transaction carried.
    pub context: String,
    /// The conflicts a forced revert overrode.
    pub overridden: Vec<Conflict>,
}

/// The expected states of the rows of one table, for the conflict check.
#[derive(Debug, Clone)]
struct TableCheck {
    live: LiveTable,
    rows: Vec<ExpectedRow>,
}

#[derive(Debug, Clone)]
struct ExpectedRow {
    primary_key: String,
    /// A row holding the key columns, to find the current row.
    key_row: Box<RawValue>,
    /// The state the reverted changes left the row in (`None`: absent).
    expected: Option<Box<RawValue>>,
}

impl Revert {
    /// Reverts the changes `filter` selects, in `public.changes`.
    pub fn new(filter: ChangeFilter) -> Self {
        Revert {
            changes: ChangesTable::default(),
            filter,
            by: None,
            force: false,
        }
    }

    /// Reads another changes table than `public.changes`.
    pub fn changes_table(mut self, changes: ChangesTable) -> Self {
        self.changes = changes;
        self
    }

    /// Who reverts (recorded as `by` in the revert's context).
    pub fn by(mut self, who: impl Into<String>) -> Self {
        self.by = Some(who.into());
        self
    }

    /// Reverts even when rows changed since (later edits to those rows are overwritten).
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// The context the revert's transaction emits.
    fn context(&self, changes: usize) -> String {
        let mut context = serde_json::Map::new();
        context.insert("reverted".to_owned(), self.filter.to_json());
        if let Some(by) = &self.by {
            context.insert("by".to_owned(), serde_json::Value::from(by.as_str()));
        }
        context.insert("changes".to_owned(), serde_json::Value::from(changes));
        serde_json::Value::Object(context).to_string()
    }

    /// Reads the changes to revert from `changes` and the tables' definitions from `target`
    /// (the tracked database), builds the inverse statements and checks for conflicts,
    /// without writing anything; [`plan_in`](Self::plan_in) when `changes` is in the tracked
    /// database.
    pub async fn plan<C: Database, T: Database>(
        &self,
        changes: C,
        target: T,
    ) -> Result<RevertPlan> {
        self.plan_on(&mut Two(changes, target)).await
    }

    /// [`plan`](Self::plan) with `changes` in the tracked database `db`.
    pub async fn plan_in<D: Database>(&self, db: D) -> Result<RevertPlan> {
        self.plan_on(&mut One(db)).await
    }

    async fn plan_on<B: Databases>(&self, dbs: &mut B) -> Result<RevertPlan> {
        if self.filter.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "refusing to revert every change ever made: select the changes to revert (a \
                 transaction, a context such as a request id, a time range, …)",
            ));
        }
        let query = ChangeQuery::new(self.filter.clone()).changes_table(self.changes.clone());
        let unordered = query.count_unordered(dbs.changes()).await?;
        if unordered > 0 {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "cannot revert: {unordered} of the selected changes were stored by Bemi's own \
                     worker before the table was upgraded, without the position (commit_lsn) \
                     that orders changes exactly; narrow the selection to changes stored since \
                     (for example from a time after the upgrade)"
                ),
            ));
        }
        let changes = query.fetch(dbs.changes()).await?;
        if let Some(truncate) = changes.iter().find(|c| c.operation == Operation::Truncate) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "cannot revert the TRUNCATE of {}.{} committed at {} (transaction {}): the \
                     truncated rows are not in the audit trail; narrow the selection to leave \
                     it out",
                    truncate.schema, truncate.table, truncate.committed_at, truncate.commit_lsn
                ),
            ));
        }
        // One `changes` table can serve several databases: write only to the one changed.
        let database = crate::one_value(
            dbs.source()
                .rows(&Statement::new("SELECT current_database()::text"))
                .await?,
        )?;
        if let Some(other) = changes.iter().find(|c| c.database != database) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the selection holds changes of database {:?}, but the revert would write \
                     to database {database:?}; connect to {:?} or filter by database",
                    other.database, other.database
                ),
            ));
        }
        // The live table of each change, each table loaded once.
        let mut tables: Vec<TableCheck> = Vec::new();
        let mut index: HashMap<(&str, &str), usize> = HashMap::new();
        let mut table_of = Vec::with_capacity(changes.len());
        for change in &changes {
            let t = match index.entry((&change.schema, &change.table)) {
                std::collections::hash_map::Entry::Occupied(entry) => *entry.get(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let live = LiveTable::load(dbs.source(), &change.qualified_table()).await?;
                    tables.push(TableCheck {
                        live,
                        rows: Vec::new(),
                    });
                    *entry.insert(tables.len() - 1)
                }
            };
            table_of.push(t);
        }

        // Follow the set oldest first: the state each row is left in, and changes from
        // outside the set in between.
        let mut conflicts = Vec::new();
        let mut rows: HashMap<(usize, String), usize> = HashMap::new();
        let mut keyed = Vec::with_capacity(changes.len());
        for (change, &t) in changes.iter().zip(&table_of) {
            let keys = Keys::of(change, &tables[t].live)?;
            if let Some(before_key) = &keys.before {
                let slot = *rows.entry((t, before_key.clone())).or_insert_with(|| {
                    tables[t].rows.push(ExpectedRow {
                        primary_key: before_key.clone(),
                        key_row: change.before.clone(),
                        expected: Some(change.before.clone()),
                    });
                    tables[t].rows.len() - 1
                });
                let row = &mut tables[t].rows[slot];
                if row.expected.as_ref().map(|r| r.get()) != Some(change.before.get()) {
                    conflicts.push(Conflict {
                        table: change.qualified_table(),
                        primary_key: before_key.clone(),
                        kind: ConflictKind::ChangedInBetween,
                        expected: row.expected.clone(),
                        found: Some(change.before.clone()),
                    });
                }
                row.expected = None;
                row.key_row = change.before.clone();
            }
            if let Some(after_key) = &keys.after {
                let slot = *rows.entry((t, after_key.clone())).or_insert_with(|| {
                    tables[t].rows.push(ExpectedRow {
                        primary_key: after_key.clone(),
                        key_row: change.after.clone(),
                        expected: None,
                    });
                    tables[t].rows.len() - 1
                });
                let row = &mut tables[t].rows[slot];
                if row.expected.is_some() {
                    conflicts.push(Conflict {
                        table: change.qualified_table(),
                        primary_key: after_key.clone(),
                        kind: ConflictKind::ChangedInBetween,
                        expected: row.expected.clone(),
                        found: None,
                    });
                }
                row.expected = Some(change.after.clone());
                row.key_row = change.after.clone();
            }
            keyed.push(keys);
        }

        let mut steps = Vec::new();
        for ((change, keys), &t) in changes.iter().zip(&keyed).zip(&table_of).rev() {
            if let Some(step) = inverse(change, keys, &tables[t].live, self.force)? {
                steps.push(step);
            }
        }
        for table in &tables {
            conflicts.extend(check(dbs.source(), table, false).await?);
        }
        Ok(RevertPlan {
            context: self.context(changes.len()),
            changes,
            steps,
            conflicts,
            force: self.force,
            checks: tables,
        })
    }

    /// Plans and applies the revert on one database that holds both the tracked tables and
    /// `changes`.
    pub async fn run(&self, client: &mut tokio_postgres::Client) -> Result<RevertOutcome> {
        let plan = self.plan_in(&*client).await?;
        plan.apply(client).await
    }
}

/// The keys a change reads (`before`) and writes (`after`).
#[derive(Debug, Clone)]
struct Keys {
    before: Option<String>,
    after: Option<String>,
}

impl Keys {
    fn of(change: &StoredChange, live: &LiveTable) -> Result<Keys> {
        let key = |row: &RawValue, side: &str| {
            key_of(&columns(row), &live.key_columns).ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "cannot revert the {} of {}.{} (change {}): its {side} row lacks the \
                         primary key columns ({}); was the table's key changed, or is it \
                         missing REPLICA IDENTITY FULL?",
                        change.operation,
                        change.schema,
                        change.table,
                        change.cursor(),
                        live.key_columns.join(", ")
                    ),
                )
            })
        };
        let incomplete = || {
            Error::new(
                ErrorKind::Config,
                format!(
                    "cannot revert the {} of {}.{} {} (change {}): the old row was not \
                     recorded in full; set REPLICA IDENTITY FULL on the table so that future \
                     changes can be reverted",
                    change.operation,
                    change.schema,
                    change.table,
                    change.primary_key.as_deref().unwrap_or("?"),
                    change.cursor()
                ),
            )
        };
        Ok(match change.operation {
            Operation::Create => Keys {
                before: None,
                after: Some(key(&change.after, "new")?),
            },
            Operation::Update | Operation::Delete => {
                let before = columns(&change.before);
                let only_key = before.keys().all(|c| live.key_columns.contains(c));
                let more_columns = live.writable_columns.len() > live.key_columns.len();
                if before.is_empty() || (only_key && more_columns) {
                    return Err(incomplete());
                }
                Keys {
                    before: Some(key(&change.before, "old")?),
                    after: match change.operation {
                        Operation::Update => Some(key(&change.after, "new")?),
                        _ => None,
                    },
                }
            }
            Operation::Truncate | Operation::Message => Keys {
                before: None,
                after: None,
            },
        })
    }
}

/// `_bemi_cur."k" = <alias>."k" AND …` over the key columns.
fn key_match(live: &LiveTable, alias: &str) -> String {
    live.key_columns
        .iter()
        .map(|c| {
            let c = quote_identifier(c);
            format!("_bemi_cur.{c} = {alias}.{c}")
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn record(live: &LiveTable, param: usize) -> String {
    format!(
        "jsonb_populate_record(NULL::{}, ${param}{PARAM_CAST})",
        live.qualified()
    )
}

/// The statement undoing `change`; `None` for an UPDATE that changed nothing.
fn inverse(
    change: &StoredChange,
    keys: &Keys,
    live: &LiveTable,
    force: bool,
) -> Result<Option<RevertStep>> {
    let table = live.qualified();
    let step = |primary_key: &Option<String>, sql: String, params: Vec<&RawValue>| RevertStep {
        table: TableName::qualified(&live.schema, &live.name),
        primary_key: primary_key.clone().unwrap_or_default(),
        undoes: change.operation,
        change: change.cursor(),
        sql,
        params: params.iter().map(|p| p.get().to_owned()).collect(),
    };
    Ok(Some(match change.operation {
        Operation::Create => step(
            &keys.after,
            format!(
                "DELETE FROM {table} AS _bemi_cur USING {} AS _bemi_key WHERE {}",
                record(live, 1),
                key_match(live, "_bemi_key")
            ),
            vec![&change.after],
        ),
        Operation::Update => {
            let before = columns(&change.before);
            let after = columns(&change.after);
            // The columns the update changed; one left out of `after` did not change.
            let changed: Vec<&String> = live
                .writable_columns
                .iter()
                .filter(|c| !live.identity_always.contains(c))
                .filter(|c| match (before.get(*c), after.get(*c)) {
                    (Some(old), Some(new)) => old.get() != new.get(),
                    _ => false,
                })
                .collect();
            if changed.is_empty() {
                return Ok(None);
            }
            let set: Vec<String> = changed
                .iter()
                .map(|c| {
                    let c = quote_identifier(c);
                    format!("{c} = _bemi_old.{c}")
                })
                .collect();
            step(
                &keys.before,
                format!(
                    "UPDATE {table} AS _bemi_cur SET {} FROM {} AS _bemi_old, {} AS _bemi_key \
                     WHERE {}",
                    set.join(", "),
                    record(live, 1),
                    record(live, 2),
                    key_match(live, "_bemi_key")
                ),
                vec![&change.before, &change.after],
            )
        }
        Operation::Delete => {
            let before = columns(&change.before);
            let names: Vec<String> = live
                .writable_columns
                .iter()
                .filter(|c| before.contains_key(*c))
                .map(|c| quote_identifier(c))
                .collect();
            let mut sql = format!(
                "INSERT INTO {table} ({names}) OVERRIDING SYSTEM VALUE SELECT {names} FROM {}",
                record(live, 1),
                names = names.join(", ")
            );
            if force {
                // Forced: a row that exists again is set back to the deleted row.
                let keys: Vec<String> = live
                    .key_columns
                    .iter()
                    .map(|c| quote_identifier(c))
                    .collect();
                let fixed: Vec<String> = live
                    .identity_always
                    .iter()
                    .map(|c| quote_identifier(c))
                    .collect();
                let set: Vec<String> = names
                    .iter()
                    .filter(|c| !keys.contains(c) && !fixed.contains(c))
                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                    .collect();
                sql.push_str(&format!(" ON CONFLICT ({}) DO ", keys.join(", ")));
                match set.is_empty() {
                    true => sql.push_str("NOTHING"),
                    false => sql.push_str(&format!("UPDATE SET {}", set.join(", "))),
                }
            }
            step(&keys.before, sql, vec![&change.before])
        }
        Operation::Truncate | Operation::Message => return Ok(None),
    }))
}

/// Compares the current rows of a table with the states the reverted changes left them in;
/// with `lock`, locks the rows that exist.
async fn check<D: Database>(db: &mut D, table: &TableCheck, lock: bool) -> Result<Vec<Conflict>> {
    if table.rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut items = String::from("[");
    for (i, row) in table.rows.iter().enumerate() {
        if i > 0 {
            items.push(',');
        }
        items.push_str("{\"key\":");
        items.push_str(row.key_row.get());
        items.push_str(",\"row\":");
        items.push_str(row.expected.as_ref().map_or("null", |r| r.get()));
        items.push('}');
    }
    items.push(']');
    let name = table.live.qualified();
    // Both sides through the table's row type, restricted to the expected row's columns.
    let project = |json: &str| {
        format!(
            "(SELECT coalesce(jsonb_object_agg(c.key, c.value), '{{}}'::jsonb) \
             FROM jsonb_each({json}) AS c WHERE (_bemi_item.value -> 'row') ? c.key)"
        )
    };
    let mut statement = Statement::default();
    let items = statement.text(items);
    let sql = format!(
        "SELECT json_build_array(_bemi_item.ord, to_jsonb(_bemi_cur.*)::text, \
           CASE WHEN jsonb_typeof(_bemi_item.value -> 'row') = 'object' THEN {} = {} END)::text \
         FROM jsonb_array_elements({items}::jsonb) WITH ORDINALITY AS _bemi_item(value, ord) \
         CROSS JOIN LATERAL jsonb_populate_record(NULL::{name}, _bemi_item.value -> 'key') \
           AS _bemi_key \
         JOIN {name} AS _bemi_cur ON {}{}",
        project("to_jsonb(_bemi_cur.*)"),
        project(&format!(
            "to_jsonb(jsonb_populate_record(NULL::{name}, _bemi_item.value -> 'row'))"
        )),
        key_match(&table.live, "_bemi_key"),
        if lock { " FOR UPDATE OF _bemi_cur" } else { "" }
    );
    statement.set_sql(sql);
    let mut current: HashMap<usize, (String, Option<bool>)> = HashMap::new();
    for text in db.rows(&statement).await?.into_iter().flatten() {
        let row = Row::parse(&text)?;
        let ord: i64 = row.get(0)?;
        current.insert(
            usize::try_from(ord - 1).unwrap_or_default(),
            (row.get(1)?, row.get(2)?),
        );
    }
    let table_name = TableName::qualified(&table.live.schema, &table.live.name);
    let mut conflicts = Vec::new();
    for (i, row) in table.rows.iter().enumerate() {
        let now = current.remove(&i);
        let kind = match (&row.expected, &now) {
            (Some(_), Some((_, Some(true)))) | (None, None) => continue,
            (Some(_), Some(_)) => ConflictKind::Changed,
            (Some(_), None) => ConflictKind::Missing,
            (None, Some(_)) => ConflictKind::ExistsAgain,
        };
        let found = match now {
            Some((text, _)) => Some(RawValue::from_string(text).map_err(|e| {
                Error::new(ErrorKind::Db, "the server returned a row as invalid JSON")
                    .with_source(e)
            })?),
            None => None,
        };
        conflicts.push(Conflict {
            table: table_name.clone(),
            primary_key: row.primary_key.clone(),
            kind,
            expected: row.expected.clone(),
            found,
        });
    }
    Ok(conflicts)
}

impl RevertPlan {
    /// The whole revert as an SQL script with literal values: the transaction, its context and
    /// the inverse statements, for a dry run or for review.
    pub fn sql(&self) -> String {
        let mut script = String::from("BEGIN;\n");
        script.push_str(&format!(
            "SELECT pg_logical_emit_message(true, '_bemi', {});\n",
            quote_literal(&self.context)
        ));
        for step in &self.steps {
            // Names and keys are data: a line break in them must not end the comment.
            let comment = format!(
                "undo {} of {} {} (change {})",
                step.undoes, step.table, step.primary_key, step.change
            )
            .replace(['\n', '\r'], " ");
            script.push_str(&format!("-- {comment}\n{};\n", step.sql_with_literals()));
        }
        script.push_str("COMMIT;\n");
        script
    }

    /// Applies the revert in one transaction on `target` (the tracked database): emits the
    /// context, checks again for conflicts with the rows locked, and runs the statements.
    /// Refuses with an error naming the conflicting rows unless the revert is forced.
    pub async fn apply(&self, target: &mut tokio_postgres::Client) -> Result<RevertOutcome> {
        let tx = target.transaction().await?;
        let outcome = self.apply_in(&tx).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Applies the revert in the transaction `tx` holds open, of any driver (an sqlx
    /// `&mut Transaction`, a SeaORM `&DatabaseTransaction`, a Diesel connection inside
    /// `transaction`, …): emits the revert's context as the transaction's message, checks again
    /// for conflicts with the rows locked, and runs the statements. Commit the transaction
    /// afterwards; on an error, roll it back (nothing was meant to be written). Begin it
    /// without a context of its own: the revert's is the one its changes get.
    ///
    /// # Errors
    ///
    /// Conflicts or rows written beyond the statements (unless forced), a database error, and
    /// [`ErrorKind::Config`] when `tx` is not in a transaction (a pool, or a connection in
    /// autocommit), before anything is written.
    pub async fn apply_in<D: Database>(&self, mut tx: D) -> Result<RevertOutcome> {
        let tx = &mut tx;
        let mut outcome = RevertOutcome {
            changes: self.changes.len(),
            statements: 0,
            rows: 0,
            context: self.context.clone(),
            overridden: Vec::new(),
        };
        if self.changes.is_empty() {
            return Ok(outcome);
        }
        // Conflicts within the trail do not go away; the live ones are checked again below.
        let in_trail: Vec<Conflict> = self
            .conflicts
            .iter()
            .filter(|c| c.kind == ConflictKind::ChangedInBetween)
            .cloned()
            .collect();
        if !self.force && !in_trail.is_empty() {
            return Err(refused(&in_trail));
        }
        emit_in_transaction(tx, &self.context).await?;
        let mut conflicts = in_trail;
        for table in &self.checks {
            conflicts.extend(check(tx, table, true).await?);
        }
        if !conflicts.is_empty() {
            if !self.force {
                return Err(refused(&conflicts));
            }
            tracing::warn!(
                conflicts = conflicts.len(),
                "forced revert overrides conflicts"
            );
            outcome.overridden = conflicts;
        }
        let counted = table_writes(tx).await?;
        for step in &self.steps {
            let mut statement = Statement::new(step.sql.clone());
            for param in &step.params {
                statement.push(Param::Text(param.clone()));
            }
            let rows = tx.execute(&statement).await?;
            if rows != 1 && !self.force {
                return Err(Error::new(
                    ErrorKind::Db,
                    format!(
                        "revert refused: undoing the {} of {} {} wrote {rows} rows instead of 1; \
                         nothing was changed",
                        step.undoes, step.table, step.primary_key
                    ),
                ));
            }
            outcome.statements += 1;
            outcome.rows += rows;
        }
        let beyond = writes_beyond_the_steps(tx, &counted, &self.steps).await?;
        if !beyond.is_empty() {
            if !self.force {
                return Err(Error::new(
                    ErrorKind::Db,
                    format!(
                        "revert refused: its statements also changed rows they do not undo, \
                         through foreign-key actions (ON DELETE/UPDATE CASCADE, SET NULL, SET \
                         DEFAULT) or triggers: {}; those rows are not in the reverted changes \
                         (force the revert to do it anyway); nothing was changed",
                        beyond.join(", ")
                    ),
                ));
            }
            tracing::warn!(tables = ?beyond, "forced revert changed rows beyond its statements");
        }
        tracing::info!(
            changes = outcome.changes,
            statements = outcome.statements,
            rows = outcome.rows,
            "reverted"
        );
        Ok(outcome)
    }
}

/// Emits `context` as the `_bemi` message of the transaction `tx` holds open, and makes sure
/// it is one: the emit gives the transaction an id, which a later statement sees only in the
/// same transaction.
async fn emit_in_transaction<D: Database>(tx: &mut D, context: &str) -> Result<()> {
    let mut emit = Statement::default();
    let payload = emit.text(context);
    emit.set_sql(format!(
        "SELECT pg_logical_emit_message(true, '_bemi', {payload})::text"
    ));
    tx.rows(&emit).await?;
    let in_transaction = crate::one_value(
        tx.rows(&Statement::new(
            "SELECT (pg_current_xact_id_if_assigned() IS NOT NULL)::text",
        ))
        .await?,
    )?;
    match in_transaction.as_str() {
        "true" => Ok(()),
        _ => Err(Error::config(
            "a revert must be applied inside a transaction: begin one with your driver, pass it \
             to apply_in, then commit it (a pool or a connection in autocommit runs each \
             statement on its own); nothing was written",
        )),
    }
}

/// Rows inserted, updated and deleted per table (schema, name) by this session and not yet
/// reported to the statistics system (`pg_stat_xact_user_tables`): within one transaction the
/// counts only grow, so two readings bracket what the statements between them wrote,
/// including what foreign-key actions and triggers did on their behalf.
async fn table_writes<D: Database>(tx: &mut D) -> Result<HashMap<(String, String), [i64; 3]>> {
    let rows = tx
        .rows(&Statement::new(
            "SELECT json_build_array(schemaname, relname, n_tup_ins, n_tup_upd, n_tup_del)::text \
             FROM pg_stat_xact_user_tables WHERE n_tup_ins + n_tup_upd + n_tup_del > 0",
        ))
        .await?;
    let mut writes = HashMap::new();
    for text in rows.into_iter().flatten() {
        let row = Row::parse(&text)?;
        writes.insert(
            (row.get(0)?, row.get(1)?),
            [row.get(2)?, row.get(3)?, row.get(4)?],
        );
    }
    Ok(writes)
}

/// What the transaction wrote since `counted` beyond the one row each of `steps` writes, as
/// "schema.table: N more inserted/updated/deleted".
async fn writes_beyond_the_steps<D: Database>(
    tx: &mut D,
    counted: &HashMap<(String, String), [i64; 3]>,
    steps: &[RevertStep],
) -> Result<Vec<String>> {
    let mut planned: HashMap<(String, String), [i64; 3]> = HashMap::new();
    for step in steps {
        let table = (
            step.table.schema.clone().unwrap_or_default(),
            step.table.name.clone(),
        );
        // undoing a DELETE inserts, an UPDATE updates, a CREATE deletes
        let column = match step.undoes {
            Operation::Delete => 0,
            Operation::Update => 1,
            _ => 2,
        };
        planned.entry(table).or_default()[column] += 1;
    }
    let mut now: Vec<_> = table_writes(tx).await?.into_iter().collect();
    now.sort();
    let mut beyond = Vec::new();
    for (table, done) in now {
        let before = counted.get(&table).copied().unwrap_or_default();
        let planned = planned.get(&table).copied().unwrap_or_default();
        for (i, what) in ["inserted", "updated", "deleted"].iter().enumerate() {
            let more = done[i] - before[i] - planned[i];
            if more > 0 {
                beyond.push(format!("{}.{}: {more} more {what}", table.0, table.1));
            }
        }
    }
    Ok(beyond)
}

fn refused(conflicts: &[Conflict]) -> Error {
    let rows: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
    Error::new(
        ErrorKind::Db,
        format!(
            "revert refused: {} row(s) changed after the reverted changes, and reverting would \
             overwrite those edits (force the revert to do it anyway); nothing was changed: {}",
            conflicts.len(),
            rows.join("; ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bemi_core::Lsn;

    fn step(sql: &str, params: &[&str], primary_key: &str) -> RevertStep {
        RevertStep {
            table: TableName {
                schema: None,
                name: "t".to_owned(),
            },
            primary_key: primary_key.to_owned(),
            undoes: Operation::Create,
            change: Cursor {
                commit_lsn: Lsn(1),
                ordinal: 0,
            },
            sql: sql.to_owned(),
            params: params.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn literals_replace_each_placeholder_once_and_never_inside_values_or_names() {
        // A value that looks like a placeholder, and one that would close its literal.
        let s = step(
            r#"UPDATE "t$1::text::jsonb" SET x = $1::text::jsonb, y = $2::text::jsonb, z = $10"#,
            &[
                r#"{"a":"$2::text::jsonb"}"#,
                r#"{"b":"'; DROP TABLE users; --"}"#,
            ],
            "1",
        );
        assert_eq!(
            s.sql_with_literals(),
            r#"UPDATE "t$1::text::jsonb" SET x = '{"a":"$2::text::jsonb"}'::jsonb, "#.to_owned()
                + r#"y = '{"b":"''; DROP TABLE users; --"}'::jsonb, z = $10"#
        );
    }

    #[test]
    fn a_line_break_in_a_key_does_not_end_the_script_s_comment() {
        let plan = RevertPlan {
            changes: Vec::new(),
            steps: vec![step(
                "DELETE FROM t WHERE id = $1::text::jsonb",
                &["1"],
                "x\nDROP TABLE users; --",
            )],
            conflicts: Vec::new(),
            context: r#"{"by":"me"}"#.to_owned(),
            force: false,
            checks: Vec::new(),
        };
        let script = plan.sql();
        assert!(
            !script.lines().any(|line| line.starts_with("DROP")),
            "{script}"
        );
        assert!(
            script.contains("-- undo CREATE of t x DROP TABLE users; --"),
            "{script}"
        );
    }
}
