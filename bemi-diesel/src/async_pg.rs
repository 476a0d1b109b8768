//! Context for diesel-async connections such as [`AsyncPgConnection`](diesel_async::AsyncPgConnection)
//! (feature `async`).
//!
//! The same functions as for synchronous Diesel ([`transaction`] / [`transaction_with`],
//! [`emit`] / [`emit_with`]), for any [`AsyncConnection`] to PostgreSQL. The transaction's body
//! is an async closure, as for [`AsyncConnection::transaction`] in diesel-async 0.9:
//!
//! ```no_run
//! use bemi_diesel::async_pg;
//! use bemi_diesel::Context;
//! use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
//!
//! # async fn run(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
//! let ctx = Context::new().with("user_id", 42).with("endpoint", "POST /orders");
//! async_pg::transaction_with(conn, &ctx, async |conn| {
//!     diesel::sql_query("INSERT INTO orders (item) VALUES ('book')")
//!         .execute(conn)
//!         .await
//! })
//! .await?;
//!
//! // Or with the current context (bemi_context::scope, the tower layer, …).
//! bemi_context::scope(ctx, async_pg::transaction(conn, async |conn| {
//!     diesel::sql_query("DELETE FROM carts WHERE empty")
//!         .execute(conn)
//!         .await
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

use std::future::Future;

use bemi_context::Context;
use diesel::pg::Pg;
use diesel::QueryResult;
use diesel_async::{AsyncConnection, RunQueryDsl as _};

use crate::query::EmitQuery;

/// The body of a transaction: an async closure over the connection, as diesel-async 0.9 takes
/// it (`async |conn| { … }`), whose future can be named (and required to be `Send`).
/// Implemented for every such closure; nothing to implement by hand.
pub trait TransactionBody<T, R>:
    AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as TransactionBody<T, R>>::Future
{
    /// The closure's future.
    type Future: Future<Output = R>;
}

impl<F, T, Fut, R> TransactionBody<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Future = Fut;
}

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
pub fn transaction<'a, 'conn, C, R, E, F>(
    conn: &'conn mut C,
    f: F,
) -> impl Future<Output = Result<R, E>> + Send + 'conn
where
    C: AsyncConnection<Backend = Pg>,
    F: for<'r> TransactionBody<&'r mut C, Result<R, E>, Future: Send> + Send + 'a,
    E: From<diesel::result::Error> + Send + 'a,
    R: Send + 'a,
    'a: 'conn,
{
    // The context is read when the future is first polled (inside `bemi_context::scope`).
    async move { run(conn, bemi_context::current_payload(), f).await }
}

/// Runs `f` in a transaction with `ctx` emitted as its first statement; like [`transaction`],
/// with an explicit context instead of the current one.
///
/// # Errors
///
/// As [`transaction`].
pub fn transaction_with<'a, 'conn, C, R, E, F>(
    conn: &'conn mut C,
    ctx: &Context,
    f: F,
) -> impl Future<Output = Result<R, E>> + Send + 'conn
where
    C: AsyncConnection<Backend = Pg>,
    F: for<'r> TransactionBody<&'r mut C, Result<R, E>, Future: Send> + Send + 'a,
    E: From<diesel::result::Error> + Send + 'a,
    R: Send + 'a,
    'a: 'conn,
{
    run(conn, bemi_context::payload(ctx), f)
}

/// diesel-async's transaction, with `payload` emitted first. A plain function returning the
/// declared `Send` future (not an `async fn`), so that callers can spawn it: the compiler
/// cannot yet prove `Send` through the higher-ranked closure bound inside an `async fn`'s state.
fn run<'a, 'conn, C, R, E, F>(
    conn: &'conn mut C,
    payload: Option<String>,
    f: F,
) -> impl Future<Output = Result<R, E>> + Send + 'conn
where
    C: AsyncConnection<Backend = Pg>,
    F: for<'r> TransactionBody<&'r mut C, Result<R, E>, Future: Send> + Send + 'a,
    E: From<diesel::result::Error> + Send + 'a,
    R: Send + 'a,
    'a: 'conn,
{
    conn.transaction(async move |conn| {
        if let Some(payload) = payload {
            EmitQuery::new(payload).execute(conn).await?;
        }
        f(conn).await
    })
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
