//! The `[rules]` of `bemi.toml`: what every source of the file records (see
//! `bemi_core::rules`).
//!
//! ```toml
//! [rules]
//! track = ["public.*", "billing.invoices"]   # default: every table
//! ignore_tables = ["public.sessions", "public.*_cache"]
//! hash_key_env = "BEMI_HASH_KEY"             # the key of `hash` columns; never in the file
//!
//! [[rules.table]]
//! name = "public.users"                      # schema.table, `*` globs
//! ignore = ["updated_at", "last_seen_at"]    # left out; UPDATEs of only these are skipped
//! mask = ["password_digest"]                 # replaced by "[masked]"
//! hash = ["email", "*_token"]                # replaced by "hmac-sha256:…"
//! # only = ["id", "email"]                   # keep only these (and the primary key)
//! # operations = ["CREATE", "UPDATE"]        # default: all
//! # keep_updates_of_ignored_columns = false  # default: such UPDATEs are skipped
//! ```

use bemi_core::rules::{HashKey, Rules, TableRule};
use bemi_core::{Error, Operation, Result};
use serde::Deserialize;
use toml::Spanned;

/// The `[rules]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RulesEntry {
    #[serde(default)]
    track: Vec<Spanned<String>>,
    #[serde(default)]
    ignore_tables: Vec<Spanned<String>>,
    hash_key_env: Option<Spanned<String>>,
    #[serde(default)]
    table: Vec<TableEntry>,
}

/// One `[[rules.table]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableEntry {
    name: Spanned<String>,
    #[serde(default)]
    ignore: Vec<String>,
    only: Option<Vec<String>>,
    #[serde(default)]
    mask: Vec<String>,
    #[serde(default)]
    hash: Vec<String>,
    operations: Option<Vec<Operation>>,
    #[serde(default)]
    keep_updates_of_ignored_columns: bool,
}

/// Where in the file a problem is: the 1-based line and column of byte `offset` of `text`.
pub(crate) fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// An error at byte `offset` of the file `text`: "line L, column C: …". The line itself is
/// never quoted (it may hold a password).
pub(crate) fn error_at(text: &str, offset: usize, message: impl std::fmt::Display) -> Error {
    let (line, column) = position(text, offset);
    Error::config(format!("line {line}, column {column}: {message}"))
}

impl RulesEntry {
    /// The rules, checked; `text` is the file, for the lines of errors. The hash key is read
    /// from its environment variable now.
    pub(crate) fn to_rules(&self, text: &str) -> Result<Rules> {
        let at =
            |spanned: &Spanned<String>, e: Error| error_at(text, spanned.span().start, e.report());
        let hash_key = match &self.hash_key_env {
            Some(variable) => {
                Some(HashKey::from_env(variable.get_ref()).map_err(|e| at(variable, e))?)
            }
            None => None,
        };
        let mut rules = Rules::new();
        for pattern in &self.track {
            Rules::new()
                .track(pattern.get_ref())
                .check()
                .map_err(|e| at(pattern, e))?;
            rules = rules.track(pattern.get_ref());
        }
        for pattern in &self.ignore_tables {
            Rules::new()
                .ignore_table(pattern.get_ref())
                .check()
                .map_err(|e| at(pattern, e))?;
            rules = rules.ignore_table(pattern.get_ref());
        }
        for entry in &self.table {
            let rule = entry.to_rule();
            let mut alone = Rules::new().table(rule.clone());
            if let Some(key) = &hash_key {
                alone = alone.hash_key(key.clone());
            }
            alone.check().map_err(|e| at(&entry.name, e))?;
            rules = rules.table(rule);
        }
        if let Some(key) = hash_key {
            rules = rules.hash_key(key);
        }
        Ok(rules)
    }

    /// The table patterns and column names of the file with their positions, for
    /// `bemi check-config` to look them up in a database.
    pub(crate) fn names(&self) -> Vec<NamedInFile<'_>> {
        let tables = self
            .track
            .iter()
            .chain(&self.ignore_tables)
            .map(|p| NamedInFile {
                pattern: p.get_ref(),
                offset: p.span().start,
                columns: Vec::new(),
            });
        let rules = self.table.iter().map(|entry| NamedInFile {
            pattern: entry.name.get_ref(),
            offset: entry.name.span().start,
            columns: entry.to_rule().columns().map(str::to_owned).collect(),
        });
        tables.chain(rules).collect()
    }
}

/// A table pattern of the file, where it is, and the columns a rule for it names.
#[derive(Debug)]
pub(crate) struct NamedInFile<'a> {
    pub(crate) pattern: &'a str,
    pub(crate) offset: usize,
    pub(crate) columns: Vec<String>,
}

impl TableEntry {
    fn to_rule(&self) -> TableRule {
        let mut rule = TableRule::new(self.name.get_ref())
            .ignore(self.ignore.iter().cloned())
            .mask(self.mask.iter().cloned())
            .hash(self.hash.iter().cloned())
            .keep_updates_of_ignored_columns(self.keep_updates_of_ignored_columns);
        if let Some(only) = &self.only {
            rule = rule.only(only.iter().cloned());
        }
        if let Some(operations) = &self.operations {
            rule = rule.operations(operations.iter().copied());
        }
        rule
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_lines_and_columns() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(position(text, 0), (1, 1));
        assert_eq!(position(text, 6), (2, 1));
        assert_eq!(position(text, 9), (2, 4));
    }
}
