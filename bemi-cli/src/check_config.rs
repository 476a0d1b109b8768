//! `bemi check-config FILE`: validates a `bemi.toml` without running anything. Errors (syntax,
//! unknown keys, rules that cannot work) fail with their line; table patterns and column names
//! of the rules that match nothing in a source that can be reached are warnings.

use std::path::PathBuf;
use std::time::Duration;

use bemi_core::rules::{column_matches, TablePattern};
use bemi_core::{ConnectOptions, Error, Result};
use clap::Args;

use crate::rules_file::{position, NamedInFile};

#[derive(Debug, Clone, Args)]
pub(crate) struct CheckConfigArgs {
    /// The file to check (bemi.toml)
    pub(crate) file: PathBuf,
}

/// How long a source may take to answer before its tables are left unchecked.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn check_config(args: CheckConfigArgs) -> Result<()> {
    let (text, file) = crate::config::parse(&args.file)?;
    let invalid = |e: Error| {
        Error::config(format!(
            "the config file {} is invalid",
            args.file.display()
        ))
        .with_source(e)
    };
    let rules = file.rules.to_rules(&text).map_err(invalid)?;
    let sources = file.connections().map_err(invalid)?;
    match sources.len() {
        0 => println!(
            "{}: valid rules for --rules (BEMI_RULES), no [[source]] to check them against:",
            args.file.display()
        ),
        n => println!("{}: valid, {n} source(s); rules:", args.file.display()),
    }
    for line in rules.describe() {
        println!("  {line}");
    }
    let named = file.rules.names();
    let mut warnings = 0;
    for (name, options) in &sources {
        let tables = match tokio::time::timeout(CONNECT_TIMEOUT, tables(options)).await {
            Ok(Ok(tables)) => tables,
            Ok(Err(e)) => {
                println!("note: source {name:?} is not reachable ({}); its tables and columns are not checked", e.report());
                continue;
            }
            Err(_) => {
                println!("note: source {name:?} did not answer within {CONNECT_TIMEOUT:?}; its tables and columns are not checked");
                continue;
            }
        };
        for problem in named.iter().flat_map(|n| unknown(n, &tables)) {
            let (line, column) = position(&text, problem.0);
            println!(
                "warning: line {line}, column {column}: {} in source {name:?}",
                problem.1
            );
            warnings += 1;
        }
    }
    println!("{warnings} warning(s)");
    Ok(())
}

/// A source's tables: (schema, table, columns).
type Tables = Vec<(String, String, Vec<String>)>;

async fn tables(options: &ConnectOptions) -> Result<Tables> {
    let client = options.connect().await?;
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, \
                    array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum > 0) \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND NOT a.attisdropped \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_%' \
             GROUP BY 1, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let columns: Option<Vec<String>> = row.get(2);
            (row.get(0), row.get(1), columns.unwrap_or_default())
        })
        .collect())
}

/// What of `named` matches nothing in `tables`: (offset in the file, warning).
fn unknown(named: &NamedInFile<'_>, tables: &Tables) -> Vec<(usize, String)> {
    let pattern = TablePattern::new(named.pattern);
    let matching: Vec<_> = tables
        .iter()
        .filter(|(schema, table, _)| pattern.matches(schema, table))
        .collect();
    if matching.is_empty() {
        return vec![(named.offset, format!("{pattern} matches no table"))];
    }
    named
        .columns
        .iter()
        .filter(|column| {
            !matching
                .iter()
                .any(|(_, _, columns)| columns.iter().any(|c| column_matches(column, c)))
        })
        .map(|column| {
            (
                named.offset,
                format!(
                    "the rule for {pattern} names column {column:?}, which no table it matches has"
                ),
            )
        })
        .collect()
}
