//! The Status page: the replication slots of the tracked database, the lag in bytes and in
//! time, the rate of the last minute, the newest stored change and, for a tracker in the same
//! process, its progress and last error.

use std::sync::Arc;

use axum::extract::State;
use chrono::Utc;
use maud::{html, Markup};

use crate::error::PageResult;
use crate::filters::Filters;
use crate::html::{change_href, operation, page as shell, time, Base, Nav};
use crate::state::{read_only, State as UiState};

struct Slot {
    name: String,
    active: bool,
    wal_status: Option<String>,
    confirmed: Option<String>,
    lag_bytes: Option<i64>,
    /// How long ago the last change the tracker confirmed was written (the walsender's
    /// `replay_lag`; none when it is caught up or not streaming).
    lag: Option<String>,
}

/// How many changes of the database `$1` committed in the last minute, on the committed_at
/// index.
pub(crate) fn last_minute_sql(state: &UiState) -> String {
    format!(
        "SELECT count(*) FROM {} WHERE database = $1 AND committed_at > now() - interval '1 minute'",
        state.table.qualified()
    )
}

pub(crate) async fn page(State(state): State<Arc<UiState>>, base: Base) -> PageResult<Markup> {
    let mut source_connection = state.source().await?;
    let source = read_only(&mut source_connection).await?;
    let slots: Vec<Slot> = source
        .query(
            "SELECT s.slot_name::text, s.active, s.wal_status, s.confirmed_flush_lsn::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::int8,
                    r.replay_lag::text
             FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
             WHERE s.database = current_database() AND s.plugin = 'pgoutput'
             ORDER BY s.slot_name",
            &[],
        )
        .await?
        .iter()
        .map(|row| Slot {
            name: row.get(0),
            active: row.get(1),
            wal_status: row.get(2),
            confirmed: row.get(3),
            lag_bytes: row.get(4),
            lag: row.get(5),
        })
        .collect();
    source.commit().await?;

    let mut changes_connection = state.changes().await?;
    let changes = read_only(&mut changes_connection).await?;
    let newest = super::changes::page_query(&state, &Filters::default(), None)?
        .limit(1)
        .fetch(&changes)
        .await?
        .pop();
    let last_minute: i64 = changes
        .query_one(&last_minute_sql(&state), &[&state.database])
        .await?
        .get(0);
    changes.commit().await?;

    let body = html! {
        h1 { "Status" }
        h2 { "Replication slots of " (state.database) }
        @if slots.is_empty() { p.error { "No pgoutput slot in this database: nothing is being recorded." } }
        table.slots {
            thead { tr { th { "Slot" } th { "Active" } th { "WAL" } th { "Confirmed up to" } th { "Lag (bytes)" } th { "Lag (time)" } } }
            tbody { @for slot in &slots { tr {
                td { (slot.name) }
                td { @if slot.active { "yes" } @else { span.error { "no" } } }
                td { (slot.wal_status.as_deref().unwrap_or("–")) }
                td { (slot.confirmed.as_deref().unwrap_or("–")) }
                td { (slot.lag_bytes.map_or("–".to_owned(), |b| b.to_string())) }
                td { (slot.lag.as_deref().unwrap_or("none")) }
            } } }
        }
        dl.facts {
            dt { "Stored in the last minute" } dd { (last_minute) " (" (format!("{:.1}", last_minute as f64 / 60.0)) " per second)" }
            dt { "Newest change" }
            dd { @match &newest {
                Some(change) => { (format!("{} s ago: ", (Utc::now() - change.committed_at).num_seconds())) (operation(change.operation)) " " (change.qualified_table().to_string()) ", committed " (time(&change.committed_at)) " · " a href=(change_href(&base, change)) { "details" } },
                None => "none stored yet",
            } }
            dt { "Tracker" }
            dd { @match &state.tracker {
                Some(tracker) => {
                    @let progress = tracker.progress();
                    @if tracker.is_stopped() { span.error { "stopped" } }
                    @else if progress.connected { "streaming" }
                    @else if progress.standby { "standby" }
                    @else { "connecting" }
                    ", " (progress.changes) " changes in " (progress.transactions) " transactions since start, "
                    (progress.reconnects) " reconnects, confirmed " (progress.confirmed_lsn.to_string())
                },
                None => span.muted { "in another process (see its log and metrics)" },
            } }
            @if let Some(tracker) = &state.tracker {
                dt { "Last error" }
                dd { @match &tracker.progress().last_error {
                    Some(error) => span.error { (error.report()) },
                    None => "none",
                } }
            }
        }
    };
    Ok(shell(&base, "Status", Nav::Status, body))
}
