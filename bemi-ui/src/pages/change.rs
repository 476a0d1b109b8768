//! The Change page: one change's context, before and after side by side with the changed
//! columns highlighted, the rest of its transaction, and links to related changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use bemi_query::{ChangeFilter, ChangeQuery, Cursor, StoredChange};
use maud::{html, Markup};
use serde_json::value::RawValue;

use super::{change_head, change_rows};
use crate::error::{PageError, PageResult};
use crate::filters::{percent_encode, Filters};
use crate::html::{json_pretty, operation, page as shell, record_href, time, Base, Nav};
use crate::state::{read_only, State as UiState};

/// The most changes of the transaction listed.
const TRANSACTION_LIMIT: u32 = 500;

pub(crate) async fn page(
    State(state): State<Arc<UiState>>,
    base: Base,
    Path(cursor): Path<String>,
) -> PageResult<Markup> {
    let cursor: Cursor = cursor.parse()?;
    let mut connection = state.changes().await?;
    let tx = read_only(&mut connection).await?;
    let transaction = transaction_query(&state, cursor).fetch(&tx).await?;
    tx.commit().await?;
    let change = transaction
        .iter()
        .find(|c| c.ordinal == cursor.ordinal)
        .ok_or_else(|| PageError::NotFound(format!("no change {cursor} is stored")))?;

    let title = format!("{} {}", change.operation, change.qualified_table());
    let revert = Filters {
        transaction: change.commit_lsn.to_string(),
        ..Filters::default()
    };
    let body = html! {
        h1 { (operation(change.operation)) " " (change.qualified_table().to_string())
             @if let Some(key) = &change.primary_key { " " code { (key) } } }
        dl.facts {
            dt { "Committed" } dd { (time(&change.committed_at)) }
            dt { "Stored" } dd { (time(&change.created_at)) }
            dt { "Transaction" } dd { (change.transaction_id) " (commit " (change.commit_lsn.to_string()) ", change " (change.ordinal + 1) " of " (transaction.len()) ")" }
            dt { "WAL position" } dd { (change.position.to_string()) }
            @if let Some(href) = record_href(&base, change) {
                dt { "Record" } dd { a href=(href) { "Timeline and time travel of this row" } }
            }
        }
        h2 { "Context" }
        pre.context { (json_pretty(&change.context)) }
        (related(&base, &change.context))
        h2 { "Before and after" }
        (before_after(change))
        h2 { "The transaction's changes" }
        table { (change_head()) tbody { (change_rows(&base, &transaction, None)) } }
        @if state.allow_revert {
            p { a href=(base.to(&format!("/revert?{}", revert.query_string()))) { "Revert this transaction…" } }
        }
    };
    Ok(shell(&base, &title, Nav::None, body))
}

/// The changes of the transaction of the change at `cursor`.
pub(crate) fn transaction_query(state: &UiState, cursor: Cursor) -> ChangeQuery {
    ChangeFilter::new()
        .database(&state.database)
        .transaction(cursor.commit_lsn)
        .query()
        .changes_table(state.table.clone())
        .limit(TRANSACTION_LIMIT)
}

/// Links to every change whose context has the same value under a key, for each key of this
/// context with a scalar value (`request_id`, `user_id`, `endpoint`, …).
fn related(base: &Base, context: &RawValue) -> Markup {
    let entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(context.get()).unwrap_or_default();
    let links: Vec<(String, String)> = entries
        .into_iter()
        .filter(|(_, value)| !value.is_object() && !value.is_array() && !value.is_null())
        .map(|(key, value)| {
            let href = base.to(&format!(
                "/?key={}&value={}",
                percent_encode(&key),
                percent_encode(&value.to_string())
            ));
            (format!("Every change with this {key}"), href)
        })
        .collect();
    html! {
        @if !links.is_empty() {
            ul.related {
                @for (text, href) in &links { li { a href=(href) { (text) } } }
            }
        }
    }
}

/// Every column of the row before and after, the changed ones highlighted.
fn before_after(change: &StoredChange) -> Markup {
    let columns = |value: &RawValue| -> BTreeMap<String, Box<RawValue>> {
        serde_json::from_str(value.get()).unwrap_or_default()
    };
    let before = columns(&change.before);
    let after = columns(&change.after);
    let diff = change.diff();
    let mut names: Vec<&String> = after.keys().chain(before.keys()).collect();
    names.sort();
    names.dedup();
    html! {
        table.diff {
            thead { tr { th { "Column" } th { "Before" } th { "After" } } }
            tbody {
                @for name in names {
                    @let changed = diff.get(name);
                    tr class=[changed.map(|_| "changed")] {
                        td { (name) }
                        td { @if changed.is_some_and(|c| c.before_unknown) { span.muted { "unknown" } }
                             @else if let Some(value) = before.get(name) { code { (value.get()) } } }
                        td { @if let Some(value) = after.get(name) { code { (value.get()) } } }
                    }
                }
            }
        }
    }
}
