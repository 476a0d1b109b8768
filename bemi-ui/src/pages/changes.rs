//! The Changes page: newest first, filtered, a page at a time, with a live tail.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use bemi_query::{context_keys, ChangeQuery, Cursor, Order, StoredChange};
use maud::{html, Markup};
use serde::Deserialize;

use super::{change_head, change_rows};
use crate::error::PageResult;
use crate::filters::{cursor, Filters};
use crate::html::{page as shell, Base, Nav};
use crate::state::{read_only, State as UiState};

/// Changes per page.
const PAGE: u32 = 50;
/// How many of the newest changes the context-key picker looks at.
const KEY_SAMPLE: u32 = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Params {
    #[serde(flatten)]
    filters: Filters,
    /// The cursor of the page's first row is after this one (older).
    after: String,
    /// For the live tail: only changes newer than this.
    newer: String,
}

pub(crate) async fn page(
    State(state): State<Arc<UiState>>,
    base: Base,
    Query(params): Query<Params>,
) -> PageResult<Markup> {
    let after = cursor(&params.after)?;
    let query = page_query(&state, &params.filters, after)?;
    let mut connection = state.changes().await?;
    let tx = read_only(&mut connection).await?;
    let page = query.fetch_page(&tx).await?;
    let keys = context_keys(&tx, &state.table, Some(&state.database), KEY_SAMPLE).await?;
    tx.commit().await?;

    let filters = &params.filters;
    let query_string = filters.query_string();
    let feed = base.to(&format!("/feed?{query_string}"));
    let newest = page.changes.first().map(|c| c.cursor().to_string());
    let body = html! {
        h1 { "Changes" }
        (filter_form(&base, filters, &keys))
        @if state.allow_revert && !filters.is_empty() {
            p { a href=(base.to(&format!("/revert?{query_string}"))) { "Revert these changes…" } }
        }
        table {
            (change_head())
            // The live tail only on the first page: later pages are history.
            tbody data-feed=[after.is_none().then_some(&feed)] data-newest=[newest] {
                (change_rows(&base, &page.changes, None))
                @if page.changes.is_empty() {
                    tr.empty { td colspan="7" .muted { "No changes match." } }
                }
            }
        }
        p.pager {
            @if after.is_some() {
                a href=(base.to(&format!("/?{query_string}"))) { "← Newest" } " "
            }
            @if let Some(next) = page.next {
                a rel="next" href=(base.to(&format!("/?{}after={next}", with_amp(&query_string)))) { "Older changes →" }
            }
        }
    };
    Ok(shell(&base, "Changes", Nav::Changes, body))
}

/// The page's query: the filtered changes, newest first, a page after `after`.
pub(crate) fn page_query(
    state: &UiState,
    filters: &Filters,
    after: Option<Cursor>,
) -> bemi_core::Result<ChangeQuery> {
    let mut query = filters
        .to_filter(&state.database)?
        .query()
        .changes_table(state.table.clone())
        .order(Order::Desc)
        .limit(PAGE);
    if let Some(after) = after {
        query = query.after(after);
    }
    Ok(query)
}

/// `query&` when there is a query, for appending one more parameter.
fn with_amp(query: &str) -> String {
    match query.is_empty() {
        true => String::new(),
        false => format!("{query}&"),
    }
}

fn filter_form(base: &Base, filters: &Filters, keys: &[String]) -> Markup {
    let operations = ["CREATE", "UPDATE", "DELETE", "TRUNCATE"];
    html! {
        form.filters method="get" action=(base.to("/")) {
            label { "Operation"
                select name="op" {
                    option value="" { "any" }
                    @for op in operations {
                        option value=(op) selected[filters.op == op] { (op) }
                    }
                }
            }
            label { "Table" input name="table" value=(filters.table) placeholder="schema.table"; }
            label { "Primary key" input name="pk" value=(filters.pk) size="10"; }
            label { "Since" input name="since" value=(filters.since) placeholder="2026-12-02T14:30" size="16"; }
            label { "Until" input name="until" value=(filters.until) placeholder="2026-12-02T18:00" size="16"; }
            label { "Context key"
                select name="key" {
                    option value="" { "–" }
                    @for key in keys {
                        option value=(key) selected[filters.key == *key] { (key) }
                    }
                    @if !filters.key.is_empty() && !keys.contains(&filters.key) {
                        option value=(filters.key) selected { (filters.key) }
                    }
                }
            }
            label { "Value" input name="value" value=(filters.value) placeholder=r#"42, "42", alice"# size="12"; }
            label { "Context contains (JSON)" input name="context" value=(filters.context) placeholder=r#"{"request_id": "r1"}"# size="22"; }
            @if !filters.transaction.is_empty() {
                label { "Transaction" input name="transaction" value=(filters.transaction) size="12"; }
            }
            button type="submit" { "Filter" }
            a href=(base.to("/")) { "Clear" }
        }
    }
}

/// The live tail: the changes newer than `newer`, newest first, as table rows, with the newest
/// one's cursor in `x-bemi-newest`.
pub(crate) async fn feed(
    State(state): State<Arc<UiState>>,
    base: Base,
    Query(params): Query<Params>,
) -> PageResult<Response> {
    let filter = params.filters.to_filter(&state.database)?;
    let query = filter.query().changes_table(state.table.clone());
    let query = match cursor(&params.newer)? {
        Some(newer) => query.order(Order::Asc).after(newer).limit(PAGE),
        None => query.order(Order::Desc).limit(PAGE),
    };
    let mut connection = state.changes().await?;
    let tx = read_only(&mut connection).await?;
    let mut changes: Vec<StoredChange> = query.fetch(&tx).await?;
    tx.commit().await?;
    if !params.newer.is_empty() {
        // Newest first, as the page shows them.
        changes.reverse();
    }
    let rows = change_rows(&base, &changes, Some("new"));
    let mut response = rows.into_response();
    if let Some(newest) = changes.first() {
        if let Ok(value) = HeaderValue::from_str(&newest.cursor().to_string()) {
            response.headers_mut().insert("x-bemi-newest", value);
        }
    }
    Ok(response)
}
