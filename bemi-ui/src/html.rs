//! The page shell and the pieces every page shows: links under the UI's mount point, times,
//! operations and JSON values. maud escapes every value it writes, so data from the database
//! always renders as text.

use axum::extract::{FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use bemi_core::Operation;
use bemi_query::StoredChange;
use chrono::{DateTime, SecondsFormat, Utc};
use maud::{html, Markup, DOCTYPE};
use serde_json::value::RawValue;

/// Where the UI is mounted: `""` when served on its own, `/audit` when nested there. Every
/// link starts with it.
#[derive(Debug, Clone)]
pub(crate) struct Base(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Base {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let inner = parts.uri.path();
        let outer = parts
            .extensions
            .get::<OriginalUri>()
            .map(|uri| uri.path().to_owned())
            .unwrap_or_else(|| inner.to_owned());
        let base = match outer.strip_suffix(inner) {
            Some(base) => base,
            // `/audit` nested at `/audit` reaches the router as `/`.
            None if inner == "/" => outer.trim_end_matches('/'),
            None => "",
        };
        Ok(Base(base.to_owned()))
    }
}

impl Base {
    /// The address of `path` (which starts with `/`) under the mount point. The root of a
    /// nested UI is the mount point itself (`/audit`, `/audit?…`): axum routes `/audit/` to no
    /// route of the nested router.
    pub(crate) fn to(&self, path: &str) -> String {
        match path.strip_prefix('/') {
            Some(rest) if !self.0.is_empty() && (rest.is_empty() || rest.starts_with('?')) => {
                format!("{}{rest}", self.0)
            }
            _ => format!("{}{path}", self.0),
        }
    }
}

/// Which item of the navigation is the current page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Changes,
    Status,
    None,
}

/// A whole page: the shell with its navigation around `body`.
pub(crate) fn page(base: &Base, title: &str, nav: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Bemi audit trail" }
                link rel="stylesheet" href=(base.to("/assets/style.css"));
                script src=(base.to("/assets/app.js")) defer {}
            }
            body {
                header {
                    a.brand href=(base.to("/")) { "Bemi audit trail" }
                    nav {
                        a href=(base.to("/")) aria-current=[(nav == Nav::Changes).then_some("page")] { "Changes" }
                        a href=(base.to("/status")) aria-current=[(nav == Nav::Status).then_some("page")] { "Status" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A time as `2026-12-02 14:30:05.123 UTC`, with the exact RFC 3339 value as its title.
pub(crate) fn time(time: &DateTime<Utc>) -> Markup {
    html! {
        time datetime=(time.to_rfc3339_opts(SecondsFormat::Micros, true)) {
            (time.format("%Y-%m-%d %H:%M:%S%.3f UTC"))
        }
    }
}

/// The operation as a coloured label.
pub(crate) fn operation(operation: Operation) -> Markup {
    let class = match operation {
        Operation::Create => "op create",
        Operation::Update => "op update",
        Operation::Delete => "op delete",
        _ => "op other",
    };
    html! { span class=(class) { (operation) } }
}

/// JSON text shortened to `limit` characters.
pub(crate) fn json_short(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A JSON object's text indented for reading (the stored text when it is not valid JSON).
pub(crate) fn json_pretty(value: &RawValue) -> String {
    serde_json::from_str::<serde_json::Value>(value.get())
        .and_then(|value| serde_json::to_string_pretty(&value))
        .unwrap_or_else(|_| value.get().to_owned())
}

/// The link to a change's page.
pub(crate) fn change_href(base: &Base, change: &StoredChange) -> String {
    base.to(&format!("/change/{}", change.cursor()))
}

/// The link to the timeline of a change's record, when it has a primary key.
pub(crate) fn record_href(base: &Base, change: &StoredChange) -> Option<String> {
    let key = change.primary_key.as_deref()?;
    Some(base.to(&format!(
        "/record?table={}&pk={}",
        crate::filters::percent_encode(&change.qualified_table().to_string()),
        crate::filters::percent_encode(key)
    )))
}
