//! The pages, one module each, and the table of changes they share.

pub(crate) mod change;
pub(crate) mod changes;
pub(crate) mod record;
pub(crate) mod revert;
pub(crate) mod status;

use bemi_query::StoredChange;
use maud::{html, Markup};

use crate::html::{change_href, json_short, operation, record_href, time, Base};

/// The rows of a table of changes, in the order given.
pub(crate) fn change_rows(base: &Base, changes: &[StoredChange], class: Option<&str>) -> Markup {
    html! {
        @for change in changes {
            tr class=[class] data-cursor=(change.cursor()) {
                td { (time(&change.committed_at)) }
                td { (operation(change.operation)) }
                td { (change.qualified_table().to_string()) }
                td {
                    @match (record_href(base, change), &change.primary_key) {
                        (Some(href), Some(key)) => a href=(href) title="The record's timeline" { (key) },
                        _ => span.muted { "–" },
                    }
                }
                td { code { (json_short(change.context.get(), 80)) } }
                td { (change.diff().columns().collect::<Vec<_>>().join(", ")) }
                td { a href=(change_href(base, change)) { "Details" } }
            }
        }
    }
}

/// The head of a table of [`change_rows`].
pub(crate) fn change_head() -> Markup {
    html! {
        thead { tr {
            th { "Committed" } th { "Operation" } th { "Table" } th { "Primary key" }
            th { "Context" } th { "Changed" } th {}
        } }
    }
}
