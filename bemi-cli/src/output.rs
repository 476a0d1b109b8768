//! What the read commands print: changes as a table, or JSON for scripts.

use bemi_core::{Error, ErrorKind, Result};
use bemi_query::{Cursor, Diff, StoredChange};
use serde::Serialize;

/// A change with its diff and cursor, for JSON output.
#[derive(Serialize)]
pub(crate) struct ChangeJson<'a> {
    #[serde(flatten)]
    change: &'a StoredChange,
    cursor: Cursor,
    diff: Diff,
}

impl<'a> ChangeJson<'a> {
    pub(crate) fn new(change: &'a StoredChange) -> Self {
        ChangeJson {
            change,
            cursor: change.cursor(),
            diff: change.diff(),
        }
    }
}

pub(crate) fn print_json(value: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| Error::new(ErrorKind::Config, "could not print JSON").with_source(e))?;
    println!("{json}");
    Ok(())
}

/// Prints changes as a table: time, operation, (table,) key, context and what changed.
pub(crate) fn print_changes(changes: &[StoredChange], with_table: bool) {
    if changes.is_empty() {
        println!("no changes");
        return;
    }
    let mut header = vec!["COMMITTED AT", "OPERATION"];
    if with_table {
        header.push("TABLE");
    }
    header.extend(["PRIMARY KEY", "CONTEXT", "CHANGES"]);
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            let mut row = vec![
                c.committed_at.format("%Y-%m-%d %H:%M:%S%.6fZ").to_string(),
                c.operation.to_string(),
            ];
            if with_table {
                row.push(format!("{}.{}", c.schema, c.table));
            }
            row.extend([
                c.primary_key.clone().unwrap_or_else(|| "-".to_owned()),
                c.context.get().to_owned(),
                c.diff().to_string(),
            ]);
            row
        })
        .collect();
    print_table(&header, &rows);
}

/// Prints rows under a header, columns padded to their widest cell (the last one not).
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", text.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
