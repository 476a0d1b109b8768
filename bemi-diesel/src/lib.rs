//! [Bemi](https://bemi.io)-compatible audit-trail context for [Diesel](https://diesel.rs)
//! transactions on PostgreSQL.
//!
//! A Bemi tracker (such as `bemi-core`'s) records every row change from PostgreSQL's
//! write-ahead log. This crate makes the changes of a Diesel transaction carry the
//! application's context — the user, the endpoint, the job — by emitting it as the
//! transaction's first statement:
//!
//! ```sql
//! SELECT pg_logical_emit_message(true, '_bemi', $1)  -- $1 = '{"user_id":42,"job":"import"}'
//! ```
//!
//! Diesel cannot rewrite queries, so the adapter wraps transactions rather than hooking
//! statements: use [`transaction`] where you would use
//! [`Connection::transaction`](diesel::Connection::transaction), or [`emit`] in a transaction
//! you opened yourself.
//!
//! # Example
//!
//! ```no_run
//! use bemi_diesel::Context;
//! use diesel::prelude::*;
//!
//! diesel::table! {
//!     orders (id) {
//!         id -> Int4,
//!         item -> Text,
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut conn = PgConnection::establish("postgres://app@localhost/shop")?;
//! let ctx = Context::new().with("user_id", 42).with("endpoint", "POST /orders");
//!
//! // An explicit context …
//! bemi_diesel::transaction_with(&mut conn, &ctx, |conn| {
//!     diesel::insert_into(orders::table)
//!         .values(orders::item.eq("book"))
//!         .execute(conn)
//! })?;
//!
//! // … or the current one (set here with scope_sync; from async code,
//! // bemi_context::spawn_blocking carries the request's context to the blocking thread).
//! bemi_context::scope_sync(ctx, || {
//!     bemi_diesel::transaction(&mut conn, |conn| {
//!         diesel::delete(orders::table.filter(orders::item.eq("book"))).execute(conn)
//!     })
//! })?;
//! # Ok(()) }
//! ```
//!
//! The functions take any [`Connection`](diesel::Connection) to PostgreSQL, such as a
//! [`PgConnection`](diesel::PgConnection) or an r2d2 pooled connection.
//!
//! # The API
//!
//! Each function comes in two forms, as in every Bemi adapter: the plain one uses the
//! [current context](bemi_context::current) of the thread or task, the `_with` one an explicit
//! [`Context`].
//!
//! | | current context | explicit context |
//! | --- | --- | --- |
//! | run a closure in a transaction that begins with the context | [`transaction`] | [`transaction_with`] |
//! | emit into a transaction you already hold | [`emit`] | [`emit_with`] |
//!
//! Diesel has no `begin` that hands out a transaction, so there is no `begin` here: its
//! transactions are closures.
//!
//! # The payload
//!
//! The context's JSON text ([`bemi_context::payload`]) is bound as the statement's text
//! parameter; it is never spliced into SQL, so quotes, backslashes, `/*`, `*/` and any Unicode
//! are safe. With no context, an empty one, or one over
//! [`MAX_PAYLOAD_CHARS`](bemi_context::MAX_PAYLOAD_CHARS) characters, nothing is emitted and the
//! transaction runs as usual (an oversized context is logged as a `tracing` warning).
//!
//! # Cost
//!
//! One round trip per transaction that has a context, and no other work. Diesel sends `BEGIN`
//! and waits for it before the closure runs, and its connections do not pipeline, so the emit
//! cannot share a round trip with `BEGIN` without splicing the payload into SQL, which this crate
//! never does. The emit statement is prepared once per connection and cached by Diesel like its
//! own queries: each later emit only executes it. Transactions without context cost nothing
//! extra.
//!
//! # Supported versions
//!
//! Diesel 2.3 (`diesel = "2.3"`, tested with 2.3.14), and diesel-async 0.9
//! (`diesel-async = "0.9"`, tested with 0.9.2, which itself needs Diesel 2.3.9 or a later
//! 2.3), on Rust 1.95 (the workspace's pinned and tested toolchain; async closures need 1.85).
//! diesel-async 0.5 (with its `scope_boxed` bodies) is no longer supported: its transaction
//! API differs, and keeping both would double this crate's async half. Take the drivers from [`reexports`] and their versions always match this crate's.
//!
//! # Feature flags
//!
//! - `async` (off by default): the same functions for
//!   [diesel-async](https://docs.rs/diesel-async) connections, such as `AsyncPgConnection` (which
//!   runs on tokio-postgres, without libpq), in [`async_pg`].
//! - `query` (off by default): the read API (the `bemi-query` crate: history, filters, diffs,
//!   time travel, revert) running on Diesel's `PgConnection` (and on `AsyncPgConnection` with
//!   `async`), re-exported as [`reexports::bemi_query`].

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub mod async_pg;
mod query;
mod sync;

pub use bemi_context::Context;
pub use sync::{emit, emit_with, transaction, transaction_with};

/// The crates this one is built on, re-exported so that their versions always match it: write
/// `use bemi_diesel::reexports::diesel;` instead of depending on Diesel at another version.
pub mod reexports {
    #[cfg(feature = "query")]
    #[cfg_attr(docsrs, doc(cfg(feature = "query")))]
    pub use bemi_query;
    pub use diesel;
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub use diesel_async;
}
