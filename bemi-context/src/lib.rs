//! Application context for [Bemi](https://bemi.io)-compatible audit trails.
//!
//! A Bemi tracker reads every row change from PostgreSQL's write-ahead log. This crate is the
//! application's half: it lets an application say *who* and *why* (the user, the endpoint, the
//! background job, a request id) for the writes it makes, so that each change in the audit trail
//! carries that context.
//!
//! The application puts a [`Context`] — a JSON object — in scope for a unit of work. The adapter
//! crates (`bemi-sqlx` for sqlx and SeaORM, `bemi-diesel` for Diesel) read the [`current`]
//! context when a transaction begins and emit its [`payload`] as the transaction's first
//! statement, [`EMIT_SQL`]:
//!
//! ```sql
//! SELECT pg_logical_emit_message(true, '_bemi', $1)  -- $1 = '{"user_id":42,"endpoint":"POST /orders"}'
//! ```
//!
//! The message is transactional, so it reaches the log only if the transaction commits, in the
//! same transaction as the rows it describes; the tracker joins the two. This crate depends on no
//! database driver.
//!
//! # Example
//!
//! ```
//! use bemi_context::{current_payload, merge_current, scope, spawn_blocking, Context};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let ctx = Context::new().with("endpoint", "POST /orders").with("request_id", "r-81");
//!
//! scope(ctx, async {
//!     // later in the same unit of work, e.g. once the user is known
//!     merge_current(Context::new().with("user_id", 42));
//!
//!     // what an adapter emits at the start of each transaction made here
//!     let payload = current_payload().unwrap();
//!     assert_eq!(
//!         serde_json::from_str::<serde_json::Value>(&payload).unwrap(),
//!         serde_json::json!({"endpoint": "POST /orders", "request_id": "r-81", "user_id": 42})
//!     );
//!
//!     // blocking database code (Diesel) on tokio's blocking pool keeps the context
//!     let seen = spawn_blocking(current_payload).await.unwrap();
//!     assert_eq!(seen, Some(payload));
//! })
//! .await;
//!
//! // no scope, no context, nothing emitted
//! assert_eq!(current_payload(), None);
//! # }
//! ```
//!
//! # Propagation
//!
//! The current context is task-local, like a tracing span: [`scope`] (async) and [`scope_sync`]
//! (blocking) set it, [`current`] reads it, [`merge_current`] adds keys to it. It does not cross
//! into new tasks by itself; [`spawn`], [`spawn_blocking`] and [`WithContext`] carry it there.
//! With the `tower` feature, `ContextLayer` puts every HTTP request in a scope.
//!
//! # The payload
//!
//! [`payload`] is the compact JSON text of the context. An empty context, or one whose text is
//! longer than [`MAX_PAYLOAD_CHARS`] (1,000,000) characters, gives `None`: nothing is emitted,
//! the write goes ahead, and an oversized context is logged as a `tracing` warning, like Bemi's
//! packages do. Adapters bind the payload as a parameter of [`EMIT_SQL`], except where a
//! literal saves a round trip (bemi-sqlx sends `<emit>; BEGIN` as one simple query): there
//! [`emit_statement`] quotes it as PostgreSQL's own `PQescapeLiteral` does. Either way any JSON
//! text is safe, including quotes, backslashes, `/*`, `*/` and non-ASCII text. (In a database
//! whose encoding is not UTF-8, a character that encoding cannot hold makes the emit fail, as it
//! would make any write of that text fail.)
//!
//! A transactional message needs a transaction id, so a transaction with a context is a
//! writing one even when it only reads, and on a read replica (hot standby), which cannot
//! assign transaction ids, it fails. Begin read-only transactions, and any transaction on a
//! replica, without the adapters.
//!
//! # Security: context can be forged
//!
//! PostgreSQL lets every role call `pg_logical_emit_message` by default, so any session that can
//! connect can write a `_bemi` message and attach a made-up context to its own changes. The
//! changes themselves are always recorded by the tracker; only the context is at stake. Where the
//! context matters (who made a change), allow only the application's role to emit messages:
//!
//! ```sql
//! -- PostgreSQL 14 to 16
//! REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM PUBLIC;
//! REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, bytea) FROM PUBLIC;
//! GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO app_role;
//! ```
//!
//! Revoke the `bytea` overload too, or a role can still emit through it. PostgreSQL 17 added a
//! fourth argument, `flush boolean DEFAULT false`, so there the functions are
//! `(boolean, text, text, boolean)` and `(boolean, text, bytea, boolean)`. A block that handles
//! every overload of any version:
//!
//! ```sql
//! DO $$
//! DECLARE f regprocedure;
//! BEGIN
//!   FOR f IN SELECT oid FROM pg_proc
//!            WHERE proname = 'pg_logical_emit_message'
//!              AND pronamespace = 'pg_catalog'::regnamespace
//!   LOOP
//!     EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
//!     EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO app_role', f);
//!   END LOOP;
//! END $$;
//! ```
//!
//! Superusers can always call the function; the application should not connect as one.
//!
//! # Feature flags
//!
//! - `tower` (off by default): `ContextLayer` and `ContextService`, a tower middleware that
//!   builds each request's context from the `http::Request` with a `MakeContext` (any
//!   `Fn(&Request<B>) -> Context`). Works with axum, tonic and anything else built on tower and
//!   `http` 1.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod context;
mod error;
#[cfg(feature = "tower")]
mod layer;
mod payload;
mod scope;

pub use context::Context;
pub use error::{Error, Result};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{ContextLayer, ContextService, MakeContext};
pub use payload::{
    current_payload, emit_statement, payload, quote_literal, EMIT_SQL, MAX_PAYLOAD_CHARS, PREFIX,
};
pub use scope::{
    current, merge_current, scope, scope_sync, spawn, spawn_blocking, Scoped, WithContext,
};
