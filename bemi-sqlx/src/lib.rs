//! Bemi audit-trail context for [sqlx](https://docs.rs/sqlx) transactions, and for
//! [SeaORM](https://docs.rs/sea-orm) with the `sea-orm` feature.
//!
//! A Bemi tracker records every row change from PostgreSQL's write-ahead log. This crate makes
//! each transaction of the application carry its [`Context`] (the user, the endpoint, the job,
//! …): the transaction's first statement emits the context with
//! `pg_logical_emit_message(true, '_bemi', …)`, and the tracker stores it with every change the
//! transaction makes. Neither sqlx nor SeaORM can rewrite queries, so the adapter opens the
//! transaction: use [`begin`] where you would use `pool.begin()`.
//!
//! # Example
//!
//! ```no_run
//! use bemi_context::{scope, Context};
//!
//! # async fn run() -> sqlx::Result<()> {
//! let pool = sqlx::PgPool::connect("postgres://app@localhost/shop").await?;
//!
//! // Usually set per request by `bemi_context::ContextLayer`; here by hand.
//! let ctx = Context::new().with("user_id", 42).with("endpoint", "POST /orders");
//! scope(ctx, async {
//!     // BEGIN, with the current context as the transaction's first statement
//!     let mut tx = bemi_sqlx::begin(&pool).await?;
//!     sqlx::query("INSERT INTO orders (customer_id, total) VALUES ($1, $2)")
//!         .bind(42_i64)
//!         .bind(99.5_f64)
//!         .execute(&mut *tx)
//!         .await?;
//!     tx.commit().await?;
//!
//!     // a single write: it runs in a transaction of its own with the context
//!     bemi_sqlx::execute(&pool, sqlx::query("DELETE FROM carts WHERE customer_id = 42")).await?;
//!     Ok(())
//! })
//! .await
//! # }
//! ```
//!
//! # The API
//!
//! Each function comes in two forms: the plain one uses the
//! [current context](bemi_context::current) of the task, the `_with` one an explicit
//! [`Context`].
//!
//! | | current context | explicit context |
//! | --- | --- | --- |
//! | begin a transaction on a pool, a connection, or nested in a transaction ([`Begin`]) | [`begin`] | [`begin_with`] |
//! | run a closure in a transaction, committed on `Ok`, rolled back on `Err` | [`transaction`] | [`transaction_with`] |
//! | emit into a transaction you already hold | [`emit`] | [`emit_with`] |
//! | a single write in a transaction of its own | [`execute`] | [`execute_with`] |
//!
//! No context, an empty one, or one whose JSON is longer than 1,000,000 characters (see
//! [`bemi_context::payload`]) emits nothing: the transaction is an ordinary one. Errors are
//! sqlx's own [`sqlx::Error`] (SeaORM's `DbErr` with the `sea-orm` feature): nothing here fails
//! for other reasons, so there is no error type of this crate to convert.
//!
//! # Cost
//!
//! On a pool or an idle connection, a transaction begins with its context in one round trip,
//! exactly as many as `BEGIN` alone: one simple-query message carries the context's
//! [`emit_statement`](bemi_context::emit_statement) followed by `BEGIN`:
//!
//! ```sql
//! SELECT pg_logical_emit_message(true, '_bemi', '{"user_id":42}'); BEGIN
//! ```
//!
//! The order is deliberate. PostgreSQL runs the statements of one
//! [simple query](https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-MULTI-STATEMENT)
//! as an implicit transaction block, and a `BEGIN` inside it turns that block into a regular
//! transaction that includes the statements before it. So the message is the first entry of the
//! application's transaction, as the tracker needs. And if the emit fails (for example when
//! `pg_logical_emit_message` was revoked from the role), the implicit block is rolled back,
//! `BEGIN` never runs and the connection is idle again: no aborted transaction is left open on
//! a connection that goes back to the pool.
//!
//! The payload is quoted as `libpq`'s `PQescapeLiteral` would quote it, so any JSON text is
//! safe in it: `'`, `\`, `*/`, `/*` and non-ASCII text included. Where a literal cannot be used
//! (a savepoint, whose statement sqlx makes; [`emit`]; the SeaORM helpers), the payload is bound
//! as the parameter of [`EMIT_SQL`](bemi_context::EMIT_SQL) instead, which costs one more round
//! trip.
//!
//! What remains is the work for one more, tiny statement: about 30–40 µs of CPU per
//! transaction on a 2-core machine with the server on it, 10–15 µs more than `SELECT 1` sent the
//! same way; that is 5–18 % of the throughput of transactions that insert a single row, and a
//! few percent of transactions that do more. The `context_overhead` benchmark of this crate
//! measures it (`cargo bench -p bemi-sqlx --all-features`; figures in `BENCHMARKS.md`).
//!
//! # Supported versions
//!
//! sqlx 0.9 (`sqlx = "0.9"`, from 0.9.0) and SeaORM 2 (`sea-orm = "2"`), on Rust 1.95 (the
//! workspace's pinned and tested toolchain; sqlx 0.9 itself needs 1.94). sqlx 0.8 and SeaORM 1 are no longer supported: sqlx's
//! types are part of this crate's API, so each major would need its own copy of it, and
//! SeaORM 1 brings sqlx 0.8 with it. Take the drivers from [`reexports`] and their versions
//! always match this crate's.
//!
//! # Feature flags
//!
//! - `sea-orm` (off by default): the `bemi_sqlx::sea_orm` module: `begin`,
//!   `transaction`, `emit` (and their `_with` forms) for SeaORM 2 connections.
//! - `query` (off by default): the read API (the `bemi-query` crate: history, filters, diffs,
//!   time travel, revert) running on sqlx pools, connections and transactions (and SeaORM's
//!   with `sea-orm`), re-exported as [`reexports::bemi_query`].

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "sea-orm")]
#[cfg_attr(docsrs, doc(cfg(feature = "sea-orm")))]
pub mod sea_orm;
mod transaction;

/// The crates this one is built on, re-exported so that their versions always match it: write
/// `use bemi_sqlx::reexports::sqlx;` instead of depending on sqlx at another version.
pub mod reexports {
    #[cfg(feature = "query")]
    #[cfg_attr(docsrs, doc(cfg(feature = "query")))]
    pub use bemi_query;
    #[cfg(feature = "sea-orm")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sea-orm")))]
    pub use sea_orm;
    pub use sqlx;
}

pub use bemi_context::Context;
pub use transaction::{
    begin, begin_with, emit, emit_with, execute, execute_with, transaction, transaction_with, Begin,
};
