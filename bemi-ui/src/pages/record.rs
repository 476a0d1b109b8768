//! The Record page: one row's timeline (who changed what, when), and the row as it was at any
//! moment, a deleted row included (time travel).

use std::sync::Arc;

use axum::extract::{Query, State};
use bemi_query::{ChangeFilter, ChangeQuery, SnapshotRow, StoredChange, TableName, TimeTravel};
use chrono::{DateTime, SecondsFormat, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use crate::error::{PageError, PageResult};
use crate::filters::{given, parse_time, percent_encode};
use crate::html::{
    change_href, json_pretty, json_short, operation, page as shell, time, Base, Nav,
};
use crate::state::{read_only, State as UiState};

/// The most changes of one record listed.
const TIMELINE_LIMIT: u32 = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Params {
    table: String,
    pk: String,
    /// Show the row as it was at this moment.
    at: String,
}

pub(crate) async fn page(
    State(state): State<Arc<UiState>>,
    base: Base,
    Query(params): Query<Params>,
) -> PageResult<Markup> {
    let (Some(table), Some(pk)) = (given(&params.table), given(&params.pk)) else {
        return Err(PageError::BadRequest(
            "a record is named by its table and primary key: /record?table=public.todo&pk=7"
                .to_owned(),
        ));
    };
    let table: TableName = table.parse()?;
    let at = given(&params.at).map(parse_time).transpose()?;

    let mut changes_connection = state.changes().await?;
    let changes = read_only(&mut changes_connection).await?;
    let timeline = timeline_query(&state, &table, pk).fetch(&changes).await?;
    let snapshot = match at {
        Some(at) => {
            let mut source_connection = state.source().await?;
            let source = read_only(&mut source_connection).await?;
            let row = TimeTravel::new(table.clone())
                .changes_table(state.table.clone())
                .database(&state.database)
                .row_at(&changes, &source, pk, at)
                .await;
            source.commit().await?;
            Some((at, row))
        }
        None => None,
    };
    changes.commit().await?;

    let href = |at: &DateTime<Utc>| {
        base.to(&format!(
            "/record?table={}&pk={}&at={}",
            percent_encode(&table.to_string()),
            percent_encode(pk),
            percent_encode(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
        ))
    };
    let title = format!("{table} {pk}");
    let body = html! {
        h1 { "Record " (table.to_string()) " " code { (pk) } }
        h2 { "As it was at a moment" }
        form.filters method="get" action=(base.to("/record")) {
            input type="hidden" name="table" value=(table.to_string());
            input type="hidden" name="pk" value=(pk);
            label { "At" input name="at" value=(params.at) placeholder="2026-12-02T14:30:00Z" size="28"; }
            button type="submit" { "Show the row" }
        }
        @if let Some((at, row)) = &snapshot { (snapshot_view(at, row)) }
        h2 { "Timeline" }
        @if timeline.is_empty() { p.muted { "No changes of this record are stored." } }
        table.timeline {
            thead { tr { th { "Committed" } th { "Operation" } th { "Context" } th { "Changed" } th { "Time travel" } th {} } }
            tbody {
                @for change in &timeline {
                    tr {
                        td { (time(&change.committed_at)) }
                        td { (operation(change.operation)) }
                        td { code { (json_short(change.context.get(), 80)) } }
                        td { code { (json_short_diff(change)) } }
                        td {
                            a href=(href(&(change.committed_at - chrono::Duration::microseconds(1)))) { "before" }
                            " · "
                            a href=(href(&change.committed_at)) { "after" }
                        }
                        td { a href=(change_href(&base, change)) { "Details" } }
                    }
                }
            }
        }
    };
    Ok(shell(&base, &title, Nav::None, body))
}

/// The changes of one record, oldest first.
pub(crate) fn timeline_query(state: &UiState, table: &TableName, pk: &str) -> ChangeQuery {
    ChangeFilter::new()
        .database(&state.database)
        .table_name(table.clone())
        .primary_key(pk)
        .query()
        .changes_table(state.table.clone())
        .limit(TIMELINE_LIMIT)
}

/// The change's diff, shortened.
fn json_short_diff(change: &StoredChange) -> String {
    json_short(
        &serde_json::to_string(&change.diff()).unwrap_or_default(),
        120,
    )
}

fn snapshot_view(at: &DateTime<Utc>, row: &bemi_core::Result<Option<SnapshotRow>>) -> Markup {
    html! {
        div.notice.snapshot {
            p { "At " (time(at)) ":" }
            @match row {
                Ok(Some(row)) => {
                    pre.row { (json_pretty(&row.row)) }
                    @if !row.unknown_columns.is_empty() {
                        p.muted { "Not in the trail (the table's replica identity is not FULL): "
                                  (row.unknown_columns.join(", ")) }
                    }
                }
                Ok(None) => p.absent { "The row did not exist at that moment." },
                Err(error) => p.error { "Time travel failed: " (error.report()) },
            }
        }
    }
}
