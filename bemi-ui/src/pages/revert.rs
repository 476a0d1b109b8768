//! The Revert page: the dry run of undoing the selected changes (the statements and any
//! conflicts), and applying it in one transaction with its own context. Off unless the UI
//! allows reverting; the form carries the CSRF token.

use std::sync::Arc;

use axum::extract::{Form, Query, State};
use bemi_query::{Revert, RevertPlan};
use maud::{html, Markup};
use serde::Deserialize;

use super::{change_head, change_rows};
use crate::error::{PageError, PageResult};
use crate::filters::{percent_encode, Filters};
use crate::html::{page as shell, Base, Nav};
use crate::security::csrf_ok;
use crate::state::{read_only, State as UiState};

/// Who reverts, in the revert's context.
const BY: &str = "bemi ui";

#[derive(Debug, Deserialize)]
pub(crate) struct Apply {
    #[serde(flatten)]
    filters: Filters,
    #[serde(default)]
    csrf: String,
}

/// The revert of what `filters` select, planned (reading only): refused when reverting is off
/// or nothing is selected.
async fn plan(state: &UiState, filters: &Filters) -> PageResult<RevertPlan> {
    if !state.allow_revert {
        return Err(PageError::Forbidden(
            "Reverting is off: start the UI with --allow-revert (bemi ui) or \
             UiConfig::allow_revert(true)."
                .to_owned(),
        ));
    }
    if filters.is_empty() {
        return Err(PageError::BadRequest(
            "Say which changes to revert: a transaction, a context, a time range, …".to_owned(),
        ));
    }
    let revert = Revert::new(filters.to_filter(&state.database)?)
        .changes_table(state.table.clone())
        .by(BY);
    let mut changes = state.changes().await?;
    let mut source = state.source().await?;
    let changes = read_only(&mut changes).await?;
    let source = read_only(&mut source).await?;
    let plan = revert.plan(&changes, &source).await?;
    changes.commit().await?;
    source.commit().await?;
    Ok(plan)
}

pub(crate) async fn page(
    State(state): State<Arc<UiState>>,
    base: Base,
    Query(filters): Query<Filters>,
) -> PageResult<Markup> {
    let plan = plan(&state, &filters).await?;
    let body = html! {
        h1 { "Revert" }
        @if plan.changes.is_empty() {
            p.notice { "No changes match these filters: nothing to revert." }
        } @else {
            p.notice {
                "Dry run: reverting " strong { (plan.changes.len()) " change(s)" }
                " with " (plan.steps.len()) " statement(s), in one transaction with the context "
                code { (plan.context) } "."
            }
            (conflicts(&plan))
            h2 { "Statements" }
            pre.sql { (plan.sql()) }
            @if plan.conflicts.is_empty() {
                form method="post" action=(base.to("/revert")) {
                    @for (name, value) in filters.pairs() {
                        input type="hidden" name=(name) value=(value);
                    }
                    input type="hidden" name="csrf" value=(state.csrf);
                    button.danger type="submit" { "Apply the revert" }
                }
            }
            h2 { "Changes reverted" }
            table { (change_head()) tbody { (change_rows(&base, &plan.changes, None)) } }
        }
    };
    Ok(shell(&base, "Revert", Nav::None, body))
}

fn conflicts(plan: &RevertPlan) -> Markup {
    html! {
        @if !plan.conflicts.is_empty() {
            div.notice.conflict {
                p.error { "Conflicts stop this revert: these rows changed after the reverted changes." }
                ul { @for conflict in &plan.conflicts { li { (conflict.to_string()) } } }
            }
        }
    }
}

pub(crate) async fn apply(
    State(state): State<Arc<UiState>>,
    base: Base,
    Form(form): Form<Apply>,
) -> PageResult<Markup> {
    if !csrf_ok(&state, &form.csrf) {
        return Err(PageError::Forbidden(
            "The form's CSRF token is missing or stale: open the revert page again.".to_owned(),
        ));
    }
    let plan = plan(&state, &form.filters).await?;
    if plan.changes.is_empty() {
        return Err(PageError::BadRequest(
            "No changes match: nothing to revert.".to_owned(),
        ));
    }
    let mut source = state.source().await?;
    let outcome = plan.apply(&mut source).await?;
    let reverted = base.to(&format!("/?context={}", percent_encode(&outcome.context)));
    let body = html! {
        h1 { "Reverted" }
        p.notice.applied {
            "Reverted " (outcome.changes) " change(s): " (outcome.statements) " statement(s) wrote "
            (outcome.rows) " row(s), in one transaction with the context " code { (outcome.context) } "."
        }
        p { a href=(reverted) { "See the revert's own changes in the trail" }
            " (they appear once the tracker has stored them)." }
    };
    Ok(shell(&base, "Reverted", Nav::None, body))
}
