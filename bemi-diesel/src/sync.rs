//! Context for Diesel's synchronous connections.

use bemi_context::Context;
use diesel::connection::Connection;
use diesel::pg::Pg;
use diesel::{QueryResult, RunQueryDsl as _};

use crate::query::EmitQuery;

/// Runs `f` in a transaction, like [`Connection::transaction`], with the
/// [current](bemi_context::current) context emitted as the transaction's first statement.
///
/// The current context is set with [`bemi_context::scope_sync`], or carried from async code
/// into [`bemi_context::spawn_blocking`]. Nothing is emitted when there is none, when it is
/// empty, or when its payload is over the size limit; `f` runs in its transaction all the same.
///
/// Everything else is [`Connection::transaction`]: the transaction commits when `f` returns
/// `Ok` and rolls back (with its context) when `f` returns `Err`; called inside another
/// transaction it makes a savepoint.
///
/// ```no_run
/// use bemi_diesel::Context;
/// use diesel::prelude::*;
///
/// # fn run(conn: &mut PgConnection) -> QueryResult<()> {
/// // The current context, e.g. in bemi_context::spawn_blocking called from a request handler.
/// bemi_context::scope_sync(Context::new().with("user_id", 42), || {
///     bemi_diesel::transaction(conn, |conn| {
///         diesel::sql_query("DELETE FROM carts WHERE empty").execute(conn)
///     })
/// })?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// An error of `BEGIN`, of the emit, of `f` or of `COMMIT`, as [`Connection::transaction`]
/// returns them.
pub fn transaction<C, T, E, F>(conn: &mut C, f: F) -> Result<T, E>
where
    C: Connection<Backend = Pg>,
    F: FnOnce(&mut C) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    run(conn, bemi_context::current_payload(), f)
}

/// Runs `f` in a transaction with `ctx` emitted as its first statement; like [`transaction`],
/// with an explicit context instead of the current one.
///
/// An empty or oversized `ctx` emits nothing.
///
/// ```no_run
/// use bemi_diesel::Context;
/// use diesel::prelude::*;
///
/// # fn run(conn: &mut PgConnection) -> QueryResult<()> {
/// let ctx = Context::new().with("job", "nightly-import");
/// bemi_diesel::transaction_with(conn, &ctx, |conn| {
///     diesel::sql_query("UPDATE orders SET status = 'archived' WHERE age > 90").execute(conn)?;
///     QueryResult::Ok(())
/// })?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// As [`transaction`].
pub fn transaction_with<C, T, E, F>(conn: &mut C, ctx: &Context, f: F) -> Result<T, E>
where
    C: Connection<Backend = Pg>,
    F: FnOnce(&mut C) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    run(conn, bemi_context::payload(ctx), f)
}

fn run<C, T, E, F>(conn: &mut C, payload: Option<String>, f: F) -> Result<T, E>
where
    C: Connection<Backend = Pg>,
    F: FnOnce(&mut C) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    conn.transaction(|conn| {
        if let Some(payload) = payload {
            EmitQuery::new(payload).execute(conn)?;
        }
        f(conn)
    })
}

/// Emits the [current](bemi_context::current) context into the transaction open on `conn`;
/// returns whether a message was emitted (`false` when there is no context, or it is empty or
/// oversized).
///
/// For transactions that [`transaction`] does not open. Changes the transaction made before the
/// message take the transaction's first message, so emitting after some writes still gives them
/// a context; changes after a second emit take the second one.
///
/// Call it inside a transaction: outside one, the message is committed on its own and attaches
/// to no change.
///
/// # Errors
///
/// An error of the statement. On error PostgreSQL aborts the transaction.
pub fn emit<C>(conn: &mut C) -> QueryResult<bool>
where
    C: Connection<Backend = Pg>,
{
    emit_payload(conn, bemi_context::current_payload())
}

/// Emits `ctx` into the transaction open on `conn`; like [`emit`], with an explicit context.
///
/// # Errors
///
/// As [`emit`].
pub fn emit_with<C>(conn: &mut C, ctx: &Context) -> QueryResult<bool>
where
    C: Connection<Backend = Pg>,
{
    emit_payload(conn, bemi_context::payload(ctx))
}

fn emit_payload<C>(conn: &mut C, payload: Option<String>) -> QueryResult<bool>
where
    C: Connection<Backend = Pg>,
{
    match payload {
        Some(payload) => EmitQuery::new(payload).execute(conn).map(|_| true),
        None => Ok(false),
    }
}
