//! Filter rules: which tables are tracked, which columns are kept, masked or hashed, which
//! operations are recorded.
//!
//! [`Rules`] are given to [`TrackerBuilder::rules`](crate::TrackerBuilder::rules) (the `bemi`
//! worker reads them from the `[rules]` of its `bemi.toml`). The decoder applies them while it
//! converts each row, before the stitcher and any sink, so no sink, log line or error message
//! ever holds a value that is masked, hashed or ignored, and their effect is the same for every
//! sink. They are compiled once per table each time the stream describes it (a Relation
//! message), not per row.
//!
//! - **Tables.** [`track`](Rules::track) patterns choose the tables recorded (default: all);
//!   [`ignore_table`](Rules::ignore_table) patterns leave tables out. Their changes are
//!   dropped before any value is converted.
//! - **Columns**, per [`TableRule`] (all rules whose pattern matches a table apply):
//!   [`ignore`](TableRule::ignore) leaves columns out of `before` and `after`;
//!   [`only`](TableRule::only) keeps only the columns named; [`mask`](TableRule::mask)
//!   replaces a value with the marker [`MASKED`]; [`hash`](TableRule::hash) replaces it with
//!   an HMAC-SHA256 under the [`HashKey`], `"hmac-sha256:…"`. A null stays null. Column names
//!   may use `*` globs. The primary key columns are never left out (a change must name its
//!   row); a rule that would leave one out is logged and the column kept.
//! - **UPDATEs that change only ignored columns** (the `updated_at`-only update) are skipped,
//!   unless [`keep_updates_of_ignored_columns`](TableRule::keep_updates_of_ignored_columns).
//!   Telling needs the old row: with `REPLICA IDENTITY FULL` (what the setup sets) the server
//!   sends it whole and the UPDATE is compared column by column. Without FULL the server sends
//!   no old row (or only the old key, when the key changed), so what changed is unknown: such
//!   an UPDATE is stored, its ignored columns left out, never guessed at.
//! - **Operations**: [`operations`](TableRule::operations) records only some of CREATE,
//!   UPDATE, DELETE and TRUNCATE for a table.
//!
//! ```
//! use bemi_core::rules::{HashKey, Rules, TableRule};
//! use bemi_core::Operation;
//!
//! # fn main() -> bemi_core::Result<()> {
//! let rules = Rules::new()
//!     .ignore_table("public.sessions")
//!     .table(
//!         TableRule::new("public.users")
//!             .ignore(["updated_at", "last_seen_at"])
//!             .mask(["password_digest"])
//!             .hash(["email"]),
//!     )
//!     .table(TableRule::new("public.*_log").operations([Operation::Create]))
//!     .hash_key(HashKey::new("a key of at least sixteen bytes")?);
//! rules.check()?;
//! # Ok(()) }
//! ```

mod hash_key;
mod pattern;
mod relation;

pub use hash_key::{HashKey, HASH_PREFIX, MIN_KEY_BYTES};
pub use pattern::TablePattern;
pub(crate) use relation::{ColumnRule, RelationRules};

use crate::change::Operation;
use crate::error::{Error, Result};
use pattern::glob;

/// The JSON value a masked column holds instead of its value.
pub const MASKED: &str = "\"[masked]\"";

/// What the tracker records; see the [module docs](self). The default records everything.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    track: Vec<TablePattern>,
    ignore: Vec<TablePattern>,
    tables: Vec<TableRule>,
    hash_key: Option<HashKey>,
}

/// What is recorded of the tables a pattern matches; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct TableRule {
    pattern: TablePattern,
    ignore: Vec<String>,
    only: Option<Vec<String>>,
    mask: Vec<String>,
    hash: Vec<String>,
    operations: Option<Vec<Operation>>,
    keep_updates_of_ignored: bool,
}

impl Rules {
    /// Rules that record everything.
    pub fn new() -> Self {
        Rules::default()
    }

    /// Records the tables `pattern` matches ([`TablePattern`]); once any is given, only the
    /// tables some `track` pattern matches are recorded.
    pub fn track(mut self, pattern: &str) -> Self {
        self.track.push(TablePattern::new(pattern));
        self
    }

    /// Never records the tables `pattern` matches, even when a `track` pattern matches them.
    pub fn ignore_table(mut self, pattern: &str) -> Self {
        self.ignore.push(TablePattern::new(pattern));
        self
    }

    /// Adds a rule for the tables its pattern matches.
    pub fn table(mut self, rule: TableRule) -> Self {
        self.tables.push(rule);
        self
    }

    /// The key of [`hash`](TableRule::hash) columns; needed once any rule hashes a column.
    pub fn hash_key(mut self, key: HashKey) -> Self {
        self.hash_key = Some(key);
        self
    }

    /// Whether the rules change nothing (every table, column and operation recorded as is).
    pub fn is_empty(&self) -> bool {
        self.track.is_empty() && self.ignore.is_empty() && self.tables.is_empty()
    }

    /// The `track` patterns.
    pub fn tracked_patterns(&self) -> &[TablePattern] {
        &self.track
    }

    /// The `ignore_table` patterns.
    pub fn ignored_patterns(&self) -> &[TablePattern] {
        &self.ignore
    }

    /// The table rules, in the order given.
    pub fn table_rules(&self) -> &[TableRule] {
        &self.tables
    }

    /// Refuses rules that cannot work: an empty pattern, hashed columns without a
    /// [`HashKey`], an empty list of operations. The tracker checks them at start.
    pub fn check(&self) -> Result<()> {
        let patterns = self.track.iter().chain(&self.ignore);
        let patterns = patterns.chain(self.tables.iter().map(|rule| &rule.pattern));
        if let Some(problem) = patterns.filter_map(TablePattern::problem).next() {
            return Err(Error::config(problem));
        }
        if let Some(rule) = self.tables.iter().find(|rule| !rule.hash.is_empty()) {
            if self.hash_key.is_none() {
                return Err(Error::config(format!(
                    "the rule for {} hashes columns, but no hash key is set (hash_key_env in \
                     bemi.toml, Rules::hash_key)",
                    rule.pattern
                )));
            }
        }
        if let Some(rule) = self
            .tables
            .iter()
            .find(|rule| rule.operations.as_ref().is_some_and(Vec::is_empty))
        {
            return Err(Error::config(format!(
                "the rule for {} records no operation; ignore the table instead",
                rule.pattern
            )));
        }
        Ok(())
    }

    /// The rules in words, a line each, as `bemi status` prints them (never the hash key).
    ///
    /// ```
    /// use bemi_core::rules::{Rules, TableRule};
    ///
    /// let rules = Rules::new().ignore_table("public.sessions").table(TableRule::new("users").mask(["password_digest"]));
    /// assert_eq!(
    ///     rules.describe(),
    ///     ["tables: all", "ignored tables: public.sessions", "public.users: mask password_digest"]
    /// );
    /// ```
    pub fn describe(&self) -> Vec<String> {
        let list = |patterns: &[TablePattern]| {
            let names: Vec<String> = patterns.iter().map(ToString::to_string).collect();
            names.join(", ")
        };
        let mut lines = vec![match self.track.is_empty() {
            true => "tables: all".to_owned(),
            false => format!("tables: {}", list(&self.track)),
        }];
        if !self.ignore.is_empty() {
            lines.push(format!("ignored tables: {}", list(&self.ignore)));
        }
        lines.extend(self.tables.iter().map(TableRule::describe));
        lines
    }

    /// Whether changes of `schema.table` are recorded.
    pub fn tracks(&self, schema: &str, table: &str) -> bool {
        (self.track.is_empty() || self.track.iter().any(|p| p.matches(schema, table)))
            && !self.ignore.iter().any(|p| p.matches(schema, table))
    }

    /// The rules that apply to `schema.table`.
    pub fn rules_for<'a>(
        &'a self,
        schema: &'a str,
        table: &'a str,
    ) -> impl Iterator<Item = &'a TableRule> + 'a {
        self.tables
            .iter()
            .filter(move |rule| rule.pattern.matches(schema, table))
    }
}

impl TableRule {
    /// A rule for the tables `pattern` matches ([`TablePattern`]), changing nothing yet.
    pub fn new(pattern: &str) -> Self {
        TableRule {
            pattern: TablePattern::new(pattern),
            ignore: Vec::new(),
            only: None,
            mask: Vec::new(),
            hash: Vec::new(),
            operations: None,
            keep_updates_of_ignored: false,
        }
    }

    /// Leaves these columns (names or `*` globs) out of `before` and `after`.
    pub fn ignore<I: IntoIterator<Item = S>, S: Into<String>>(mut self, columns: I) -> Self {
        self.ignore.extend(columns.into_iter().map(Into::into));
        self
    }

    /// Keeps only these columns (names or `*` globs) and the primary key; several `only`
    /// lists of matching rules keep what all of them name.
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(mut self, columns: I) -> Self {
        self.only
            .get_or_insert_with(Vec::new)
            .extend(columns.into_iter().map(Into::into));
        self
    }

    /// Replaces the values of these columns with [`MASKED`].
    pub fn mask<I: IntoIterator<Item = S>, S: Into<String>>(mut self, columns: I) -> Self {
        self.mask.extend(columns.into_iter().map(Into::into));
        self
    }

    /// Replaces the values of these columns with their HMAC-SHA256 under the
    /// [`HashKey`](Rules::hash_key): `"hmac-sha256:<64 hex digits>"`, of the value's text as
    /// PostgreSQL sends it.
    pub fn hash<I: IntoIterator<Item = S>, S: Into<String>>(mut self, columns: I) -> Self {
        self.hash.extend(columns.into_iter().map(Into::into));
        self
    }

    /// Records only these operations of the table (default: all); several matching rules
    /// record what all of them allow.
    pub fn operations<I: IntoIterator<Item = Operation>>(mut self, operations: I) -> Self {
        self.operations = Some(operations.into_iter().collect());
        self
    }

    /// Stores UPDATEs that change only ignored columns too (default: they are skipped).
    pub fn keep_updates_of_ignored_columns(mut self, keep: bool) -> Self {
        self.keep_updates_of_ignored = keep;
        self
    }

    /// The table pattern.
    pub fn pattern(&self) -> &TablePattern {
        &self.pattern
    }

    /// Every column name or glob the rule names, for checking them against a database.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        let only = self.only.iter().flatten();
        self.ignore
            .iter()
            .chain(only)
            .chain(&self.mask)
            .chain(&self.hash)
            .map(String::as_str)
    }

    /// A one-line description, as `bemi status` prints it.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut list = |name: &str, columns: &[String]| {
            if !columns.is_empty() {
                parts.push(format!("{name} {}", columns.join(", ")));
            }
        };
        list("ignore", &self.ignore);
        list("only", self.only.as_deref().unwrap_or_default());
        list("mask", &self.mask);
        list("hash", &self.hash);
        if let Some(operations) = &self.operations {
            let names: Vec<&str> = operations.iter().map(|o| o.as_str()).collect();
            parts.push(format!("operations {}", names.join(", ")));
        }
        if !self.ignore.is_empty() && !self.keep_updates_of_ignored {
            parts.push("updates of ignored columns only are skipped".to_owned());
        }
        format!("{}: {}", self.pattern, parts.join("; "))
    }
}

/// Whether the column `name` matches `pattern`, a column name of a rule, where `*` matches any
/// run of characters.
///
/// ```
/// assert!(bemi_core::rules::column_matches("*_token", "api_token"));
/// assert!(!bemi_core::rules::column_matches("email", "emails"));
/// ```
pub fn column_matches(pattern: &str, name: &str) -> bool {
    glob(pattern, name)
}

/// Whether `column` is one of `names` (names or globs).
fn named(names: &[String], column: &str) -> bool {
    names.iter().any(|name| glob(name, column))
}
