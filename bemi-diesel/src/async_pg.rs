//! Context for diesel-async connections such as [`AsyncPgConnection`](diesel_async::AsyncPgConnection)
//! (feature `async`).
//!
//! The same three functions as for synchronous Diesel, for any
//! [`AsyncConnection`] to PostgreSQL. The transaction's body is a
//! boxed scoped future, as for [`AsyncConnection::transaction`]:
//!
//! ```no_run
//! use bemi_diesel::async_pg::transaction_with_context;
//! use bemi_diesel::Context;
//! use diesel_async::scoped_futures::ScopedFutureExt as _;
//! use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
//!
//! # async fn run(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
//! let ctx = Context::new().with("user_id", 42).with("endpoint", "POST /orders");
//! transaction_with_context(conn, Some(&ctx), |conn| {
//!     async move {
//!         diesel::sql_query("INSERT INTO orders (item) VALUES ('book')")
//!             .execute(conn)
//!             .await
//!     }
//!     .scope_boxed()
//! })
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

/// Runs `f` in a transaction, like [`AsyncConnection::transaction`], with a context emitted as
/// the transaction's first statement.
///
/// The context is `ctx`, or when `ctx` is `None` the [current](bemi_context::current) one: set
/// with [`bemi_context::scope`], by the tower layer, or carried into tasks with
/// [`bemi_context::spawn`]. Nothing is emitted when there is no context, when it is empty, or
/// when its payload is over the size limit; `f` runs in its transaction all the same.
///
/// The transaction commits when `f`'s future gives `Ok` and rolls back (with its context) when
/// it gives `Err`.
///
/// # Errors
///
/// An error of `BEGIN`, of the emit, of `f` or of `COMMIT`, as
/// [`AsyncConnection::transaction`] returns them.
pub async fn transaction_with_context<'a, C, R, E, F>(
    conn: &mut C,
    ctx: Option<&Context>,
    f: F,
) -> Result<R, E>
where
    C: AsyncConnection<Backend = Pg>,
    F: for<'r> FnOnce(&'r mut C) -> ScopedBoxFuture<'a, 'r, Result<R, E>> + Send + 'a,
    E: From<diesel::result::Error> + Send + 'a,
    R: Send + 'a,
{
    let payload = bemi_context::payload_or_current(ctx);
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

/// Emits `ctx` into the transaction open on `conn`; returns whether a message was emitted
/// (`false` for an empty or oversized context).
///
/// For transactions that [`transaction_with_context`] does not open. Changes the transaction
/// made before the message take the transaction's first message; changes after a second emit
/// take the second one. Call it inside a transaction: outside one, the message is committed on
/// its own and attaches to no change.
///
/// # Errors
///
/// An error of the statement. On error PostgreSQL aborts the transaction.
pub async fn emit<C>(conn: &mut C, ctx: &Context) -> QueryResult<bool>
where
    C: AsyncConnection<Backend = Pg>,
{
    emit_payload(conn, bemi_context::payload(ctx)).await
}

/// [`emit`] of the [current](bemi_context::current) context; `Ok(false)` when there is none.
///
/// # Errors
///
/// As [`emit`].
pub async fn emit_current<C>(conn: &mut C) -> QueryResult<bool>
where
    C: AsyncConnection<Backend = Pg>,
{
    emit_payload(conn, bemi_context::current_payload()).await
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
