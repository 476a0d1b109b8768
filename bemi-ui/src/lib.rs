//! A web UI for the Bemi audit trail: see, search, compare, time-travel and revert changes in
//! a browser, without writing SQL.
//!
//! [`router`] gives an [`axum::Router`] to serve on its own (the `bemi ui` command does) or to
//! nest inside your app behind its own authentication:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use bemi_core::ConnectOptions;
//! use bemi_ui::UiConfig;
//!
//! let database: ConnectOptions = std::env::var("DATABASE_URL")?.parse()?;
//! let audit = bemi_ui::router(UiConfig::new(database))?;
//! let app = axum::Router::new().nest("/audit", audit); // .layer(your_auth_layer)
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! The pages, all reading through [`bemi_query`]:
//!
//! - **Changes** (`/`): newest first, filtered by operation, table, primary key, time range and
//!   context (a key seen in recent changes and a value, or raw JSON containment), a page at a
//!   time (keyset cursors); every filter is in the URL, so a link can be shared. With
//!   JavaScript, new changes appear at the top as they are stored (polling every two seconds).
//! - **Change** (`/change/<cursor>`): the context, before and after side by side with the
//!   changed columns highlighted, the other changes of its transaction, and links to the
//!   record and to every change with the same request id or user.
//! - **Record** (`/record?table=…&pk=…`): one row's timeline, and the row as it was at any
//!   moment (time travel), a deleted row included.
//! - **Revert** (`/revert?<filters>`): the dry run (the statements and any conflicts) of
//!   undoing the selected changes, and a button to apply it. Off unless
//!   [`UiConfig::allow_revert`]; the form carries a CSRF token.
//! - **Status** (`/status`): the replication slots, the lag in bytes and time, the rate of the
//!   last minute, the newest change and, for a tracker in the same process
//!   ([`UiConfig::tracker`]), its last error.
//!
//! Safe by default: every value from the database is escaped, and a strict Content Security
//! Policy allows only the UI's own script and stylesheet; reads run in read-only
//! transactions, so a role that can only `SELECT` the `changes` table is enough to browse
//! (reverting writes the tracked tables and needs their privileges); with
//! [`UiConfig::token`], every page needs the token (a bearer header or the login form).
//! Everything it serves is compiled in: no CDN, no build step outside cargo.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod assets;
mod error;
#[cfg(test)]
mod explain;
mod filters;
mod html;
mod pages;
mod security;
mod state;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use bemi_core::changes_table::ChangesTable;
use bemi_core::{ConnectOptions, Result, TrackerWatch};

/// What the UI reads and how it is protected.
///
/// ```
/// use bemi_core::ConnectOptions;
/// use bemi_ui::UiConfig;
///
/// let source: ConnectOptions = "postgres://auditor@localhost/app".parse()?;
/// let config = UiConfig::new(source).token("s3cret-token").allow_revert(false);
/// # Ok::<(), bemi_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct UiConfig {
    source: ConnectOptions,
    changes_database: Option<ConnectOptions>,
    changes_table: ChangesTable,
    allow_revert: bool,
    token: Option<String>,
    tracker: Option<TrackerWatch>,
    pool_size: usize,
}

impl UiConfig {
    /// The UI of the tracked database `source`, whose changes are in its own `public.changes`.
    /// Only that database's changes are shown (one `changes` table can hold several
    /// databases').
    pub fn new(source: ConnectOptions) -> Self {
        UiConfig {
            source,
            changes_database: None,
            changes_table: ChangesTable::default(),
            allow_revert: false,
            token: None,
            tracker: None,
            pool_size: 4,
        }
    }

    /// The database that holds the `changes` table, when it is not the tracked database.
    pub fn changes_database(mut self, options: ConnectOptions) -> Self {
        self.changes_database = Some(options);
        self
    }

    /// Reads another changes table than `public.changes`.
    pub fn changes_table(mut self, table: ChangesTable) -> Self {
        self.changes_table = table;
        self
    }

    /// Enables the Revert page's apply button (off by default: browsing never writes).
    pub fn allow_revert(mut self, allow: bool) -> Self {
        self.allow_revert = allow;
        self
    }

    /// Requires `token` for every page: as `Authorization: Bearer <token>`, or entered once
    /// in the login form (kept in an HTTP-only, same-site cookie).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Shows this in-process tracker's progress and last error on the Status page.
    pub fn tracker(mut self, watch: TrackerWatch) -> Self {
        self.tracker = Some(watch);
        self
    }

    /// The most connections each database's pool opens (4 by default).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }
}

/// The UI's router, to serve or to nest (`app.nest("/audit", bemi_ui::router(config)?)`).
///
/// Connections are opened when a page needs them, so this does not touch the database.
///
/// # Errors
///
/// [`ErrorKind::Config`](bemi_core::ErrorKind::Config) when a connection pool cannot be made
/// from the settings (for instance an unreadable TLS root certificate), or the token is empty.
pub fn router(config: UiConfig) -> Result<Router> {
    let state = Arc::new(state::State::new(config)?);
    let routes = Router::new()
        .route("/", get(pages::changes::page))
        .route("/feed", get(pages::changes::feed))
        .route("/change/{cursor}", get(pages::change::page))
        .route("/record", get(pages::record::page))
        .route(
            "/revert",
            get(pages::revert::page).post(pages::revert::apply),
        )
        .route("/status", get(pages::status::page))
        .route(
            "/login",
            get(security::login_page).post(security::login_submit),
        )
        .route("/assets/style.css", get(assets::style))
        .route("/assets/app.js", get(assets::script))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            security::authenticate,
        ))
        .layer(axum::middleware::from_fn(security::headers))
        .with_state(state);
    Ok(routes)
}
