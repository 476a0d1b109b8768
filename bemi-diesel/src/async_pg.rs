//! Context for diesel-async connections such as [`AsyncPgConnection`](diesel_async::AsyncPgConnection)
//! (feature `async`).
//!
//! The same functions as for synchronous Diesel ([`transaction`] / [`transaction_with`],
//! [`emit`] / [`emit_with`]), for any [`AsyncConnection`] to PostgreSQL. The transaction's body
//! is a boxed scoped future, as for [`AsyncConnection::transaction`]:
//!
//! ```no_run
//! use bemi_diesel::async_pg;
//! use bemi_diesel::Context;
//! use diesel_async::scoped_futures::ScopedFutureExt as _;
//! use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
//!
//! # async fn run(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
//! let ctx = Context::new().with("user_id", 42).with("endpoint", "POST /orders");
//! async_pg::transaction_with(conn, &ctx, |conn| {
//!     async move {
//!         diesel::sql_query("INSERT INTO orders (item) VALUES ('book')")
//!             .execute(conn)
//!             .await
//!     }
//!     .scope_boxed()
//! })
//! .await?;
//!
//! // Or with the current context (bemi_context::scope, the tower layer, …).
//! bemi_context::scope(ctx, async_pg::transaction(conn, |conn| {
//!     async move {
//!         diesel::sql_query("DELETE FROM carts WHERE empty")
//!             .execute(conn)
//!             .await
//!     }
//!     .scope_boxed()
//! }))
//! .await?;
//! # Ok(()) }
//! ```
//!
//! # Cost
//!
//! One round trip per transaction with a context, after the first: diesel-async sends `BEGIN`
//! and waits for it before the body runs, then the emit executes a statement prepared once per
//! connection and kept in diesel-async's statement cache. (`diesel::sql_query` is never cached,
//! so with it diesel-async would also prepare on every call: two round trips.)

use bemi_context::Context;
use diesel::pg::Pg;
use diesel::QueryResult;
use diesel_async::scoped_futures::{ScopedBoxFuture, ScopedFutureExt as _};
use diesel_async::{AsyncConnection, RunQueryDsl as _};

use crate::query::EmitQuery;

/// Runs `f` in a transaction, like [`AsyncConnection::transaction`], with the
/// [current](bemi_context::current) context emitted as the transaction's first statement.
///
/// The current context is set with [`bemi_context::scope`], by the tower layer, or carried into
/// tasks with [`bemi_context::spawn`]. Nothing is emitted when there is none, when it is empty,
/// or when its payload is over the size limit; `f` runs in its transaction all the same.
///
/// The transaction commits when `f`'s future gives `Ok` and rolls back (with its context) when
/// it gives `Err`.
///
/// # Errors
///
/// An error of `BEGIN`, of the emit, of `f` or of `COMMIT`, as
/// [`AsyncConnection::transaction`] returns them.
pub async fn transaction<'a, C, R, E, F>(conn: &mut C, f: F) -> Result<R, E>
where
    C: AsyncConnection<Backend = Pg>,
    F: for<'r> FnOnce(&'r mut C) -> ScopedBoxFuture<'a, 'r, Result<R, E>> + Send + 'a,
    E: From<diesel::result::Error> + Send + 'a,
    R: Send + 'a,
{
    run(conn, bemi_context::current_payload(), f).await
}

/// Runs `f` in a transaction with `ctx` emitted as its first statement; like [`transaction`],
/// with an explicit context instead of the current one.
///
/// # Errors
///
/// As [`transaction`].
pub async fn transaction_with<'a, C, R, E, F>(conn: &mut C, ctx: &Context, f: F) -> Result<R, E>
where
    C: AsyncConnection<Backend = Pg>,
    F: for<'r> FnOnce(&'r mut C) -> ScopedBoxFuture<'a, 'r, Result<R, E>> + Send + 'a,
    E: From<diesel::result::Error> + Send + 'a,
    R: Send + 'a,
{
    run(conn, bemi_context::payload(ctx), f).await
}

async fn run<'a, C, R, E, F>(conn: &mut C, payload: Option<String>, f: F) -> Result<R, E>
where
    C: AsyncConnection<Backend = Pg>,
    F: for<'r> FnOnce(&'r mut C) -> ScopedBoxFuture<'a, 'r, Result<R, E>> + Send + 'a,
    E: From<diesel::result::Error> + Send + 'a,
    R: Send + 'a,
{
    conn.transaction(move |conn| {
        async move {
            if let Some(payload) = payload {
                EmitQuery::new(payload).execute(conn).await?;
            }
            f(conn).await
        }
        .scope_boxed()
    })
    .await
}

/// Emits the [current](bemi_context::current) context into the transaction open on `conn`;
/// returns whether a message was emitted (`false` when there is no context, or it is empty or
/// oversized).
///
/// For transactions that [`transaction`] does not open. Changes the transaction made before the
/// message take the transaction's first message; changes after a second emit take the second
/// one. Call it inside a transaction: outside one, the message is committed on its own and
/// attaches to no change.
///
/// # Errors
///
/// An error of the statement. On error PostgreSQL aborts the transaction.
pub async fn emit<C>(conn: &mut C) -> QueryResult<bool>
where
    C: AsyncConnection<Backend = Pg>,
{
    emit_payload(conn, bemi_context::current_payload()).await
}

/// Emits `ctx` into the transaction open on `conn`; like [`emit`], with an explicit context.
///
/// # Errors
///
/// As [`emit`].
pub async fn emit_with<C>(conn: &mut C, ctx: &Context) -> QueryResult<bool>
where
    C: AsyncConnection<Backend = Pg>,
{
    emit_payload(conn, bemi_context::payload(ctx)).await
}

async fn emit_payload<C>(conn: &mut C, payload: Option<String>) -> QueryResult<bool>
where
    C: AsyncConnection<Backend = Pg>,
{
    match payload {
        Some(payload) => EmitQuery::new(payload).execute(conn).await.map(|_| true),
        None => Ok(false),
    }
}
