//! `bemi.toml`: the sources one `bemi run` tracks, each with its own slot and destination.
//!
//! ```toml
//! [[source]]
//! name = "tenant_a"                       # in logs and metrics (label `source`); default: the slot
//! database_url_env = "TENANT_A_URL"       # or database_url = "postgres://…"
//! slot = "bemi"                           # default "bemi"
//! publication = "bemi"                    # default "bemi"
//! tables = ["public.orders", "billing.invoices"]   # default: all tables
//! destination_url_env = "AUDIT_URL"       # or destination_url; default: the tracked database
//! destination_schema = "audit"            # default "public"
//! batch_size = 1000                       # default: --batch-size
//! flush_interval_ms = 100                 # default: --flush-interval-ms
//! linger_ms = 5                           # default: --linger-ms
//! replica_identity = true                 # default: not --no-replica-identity
//! ```
//!
//! A `[rules]` table sets what every source records (see [`crate::rules_file`]).
//!
//! Unknown keys are refused, so a typo never goes unnoticed. Errors give the line and column,
//! never the line's text (it may hold a password).

use std::path::Path;
use std::time::Duration;

use bemi_core::changes_table::Layout;
use bemi_core::rules::{Rules, TablePattern};
use bemi_core::setup::Tables;
use bemi_core::{ConnectOptions, Error, Result};
use bemi_query::TableName;
use serde::Deserialize;

use crate::args::RunArgs;
use crate::rules_file::{error_at, RulesEntry};
use crate::run::Source;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    source: Vec<SourceEntry>,
    #[serde(default)]
    pub(crate) rules: RulesEntry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceEntry {
    name: Option<String>,
    database_url: Option<String>,
    database_url_env: Option<String>,
    #[serde(default = "default_name")]
    slot: String,
    #[serde(default = "default_name")]
    publication: String,
    #[serde(default)]
    tables: Vec<String>,
    destination_url: Option<String>,
    destination_url_env: Option<String>,
    #[serde(default = "default_schema")]
    destination_schema: String,
    batch_size: Option<usize>,
    flush_interval_ms: Option<u64>,
    linger_ms: Option<u64>,
    replica_identity: Option<bool>,
}

fn default_name() -> String {
    "bemi".to_owned()
}

fn default_schema() -> String {
    "public".to_owned()
}

/// The text of the file at `path` and what it says, with the line and column of a syntax
/// error (and of a key or value that is not allowed where it is).
pub(crate) fn parse(path: &Path) -> Result<(String, File)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!("could not read the config file {}", path.display())).with_source(e)
    })?;
    let file: File = toml::from_str(&text).map_err(|e: toml::de::Error| {
        let offset = e.span().map_or(0, |span| span.start);
        invalid(path, error_at(&text, offset, e.message().trim_end()))
    })?;
    Ok((text, file))
}

/// The error for an invalid config file.
fn invalid(path: &Path, e: Error) -> Error {
    Error::config(format!("the config file {} is invalid", path.display())).with_source(e)
}

impl File {
    /// Whether the file lists sources (a file for `--config`), or only rules (`--rules`).
    pub(crate) fn has_sources(&self) -> bool {
        !self.source.is_empty()
    }
}

/// The rules of the file at `path` for `--rules` (BEMI_RULES): a file with a `[rules]` table
/// and no `[[source]]`, for the single source of the flags and variables.
pub(crate) fn load_rules(path: &Path) -> Result<Rules> {
    let (text, file) = parse(path)?;
    if file.has_sources() {
        return Err(invalid(
            path,
            Error::config(
                "it lists [[source]]s, which --rules (BEMI_RULES) would ignore; run it with \
                 --config (BEMI_CONFIG) instead",
            ),
        ));
    }
    file.rules.to_rules(&text).map_err(|e| invalid(path, e))
}

/// The sources of the file at `path`; settings a source leaves out come from `args`.
pub(crate) fn load(path: &Path, args: &RunArgs) -> Result<Vec<Source>> {
    let (text, file) = parse(path)?;
    if !file.has_sources() {
        return Err(invalid(
            path,
            Error::config(
                "it lists no [[source]] (a file of only [rules] goes to --rules, BEMI_RULES)",
            ),
        ));
    }
    let rules = file.rules.to_rules(&text).map_err(|e| invalid(path, e))?;
    let sources = file
        .source
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            entry.into_source(args, rules.clone()).map_err(|e| {
                Error::config(format!(
                    "source {} of the config file {}",
                    i + 1,
                    path.display()
                ))
                .with_source(e)
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(Error::config(format!(
            "two sources of the config file {} are named {:?}; give each its own `name` \
             (it labels its logs and metrics)",
            path.display(),
            pair[0]
        )));
    }
    Ok(sources)
}

impl File {
    /// Each source's name and tracked database.
    pub(crate) fn connections(&self) -> Result<Vec<(String, ConnectOptions)>> {
        self.source
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let options = entry
                    .options()
                    .map_err(|e| Error::config(format!("source {}", i + 1)).with_source(e))?;
                Ok((entry.name().to_owned(), options))
            })
            .collect()
    }
}

impl SourceEntry {
    /// The name of the source in logs and metrics.
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.slot)
    }

    /// The tracked database's connection settings.
    fn options(&self) -> Result<ConnectOptions> {
        url(
            "database_url",
            self.database_url.clone(),
            self.database_url_env.clone(),
        )?
        .ok_or_else(|| Error::config("set database_url or database_url_env"))?
        .parse()
    }

    fn into_source(self, args: &RunArgs, rules: Rules) -> Result<Source> {
        let options = self.options()?;
        let name = self.name().to_owned();
        let destination = match url(
            "destination_url",
            self.destination_url,
            self.destination_url_env,
        )? {
            Some(url) => url.parse()?,
            None => options.clone(),
        };
        let tables = self
            .tables
            .iter()
            .map(|table| table.parse::<TableName>())
            .collect::<Result<Vec<_>>>()?;
        Ok(Source {
            name,
            options,
            destination,
            destination_schema: self.destination_schema,
            slot: self.slot,
            publication: self.publication,
            tables: if tables.is_empty() {
                published_tables(&rules)
            } else {
                Tables::Only(tables)
            },
            batch_size: self.batch_size.unwrap_or(args.batch_size),
            flush_interval: self
                .flush_interval_ms
                .map_or(args.flush_interval(), Duration::from_millis),
            linger: self.linger_ms.map_or(args.linger(), Duration::from_millis),
            accept_gap: args.accept_gap,
            replica_identity: self.replica_identity.unwrap_or(!args.no_replica_identity),
            layout: Layout::Partitioned(args.partitions.partition_interval),
            retention: args.retention.retention()?,
            // A config file's sources store into their `changes` tables.
            nats: None,
            output: None,
            catch_up_bytes: args.catch_up_bytes,
            rules,
        })
    }
}

/// The rules of a `--rules` file (none without one), and the tables of a publication made for
/// them: `tables` when the flags name some, else [`published_tables`].
pub(crate) fn rules_and_tables(path: Option<&Path>, tables: Tables) -> Result<(Rules, Tables)> {
    let rules = match path {
        Some(path) => load_rules(path)?,
        None => Rules::new(),
    };
    let tables = match tables {
        Tables::All => published_tables(&rules),
        tables => tables,
    };
    Ok((rules, tables))
}

/// The tables a publication the worker creates covers when the source names none: the tables
/// the rules track when they name them all without globs (leaving out those they ignore), so
/// that their changes are the only ones sent; otherwise all tables, and the worker drops the
/// changes the rules leave out.
pub(crate) fn published_tables(rules: &Rules) -> Tables {
    let track = rules.tracked_patterns();
    if track.is_empty() || track.iter().any(TablePattern::is_glob) {
        return Tables::All;
    }
    let names = track
        .iter()
        .filter(|pattern| rules.tracks(pattern.schema(), pattern.table()))
        .map(|pattern| TableName::qualified(pattern.schema(), pattern.table()))
        .collect();
    Tables::Only(names)
}

/// A URL given in the file, or by the name of an environment variable holding it.
fn url(key: &str, url: Option<String>, variable: Option<String>) -> Result<Option<String>> {
    match (url, variable) {
        (Some(_), Some(_)) => Err(Error::config(format!(
            "set either {key} or {key}_env, not both"
        ))),
        (Some(url), None) => Ok(Some(url)),
        (None, Some(variable)) => std::env::var(&variable).map(Some).map_err(|e| {
            Error::config(format!(
                "{key}_env names the environment variable {variable:?}, which is not set"
            ))
            .with_source(e)
        }),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_track_names_narrow_the_publication_and_globs_keep_all_tables() {
        let plain = Rules::new()
            .track("users")
            .track("billing.invoices")
            .track("public.sessions")
            .ignore_table("public.sess*");
        assert_eq!(
            published_tables(&plain),
            Tables::Only(vec![
                TableName::qualified("public", "users"),
                TableName::qualified("billing", "invoices"),
            ])
        );
        assert_eq!(published_tables(&Rules::new()), Tables::All);
        let glob = Rules::new().track("users").track("billing.*");
        assert_eq!(published_tables(&glob), Tables::All);
    }
}
