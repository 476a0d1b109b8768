//! Context for Diesel's synchronous connections.

use bemi_context::Context;
use diesel::connection::Connection;
use diesel::pg::Pg;
use diesel::{QueryResult, RunQueryDsl as _};

use crate::query::EmitQuery;

/// Runs `f` in a transaction, like [`Connection::transaction`], with a context emitted as the
/// transaction's first statement.
///
/// The context is `ctx`, or when `ctx` is `None` the [current](bemi_context::current) one: set
/// with [`bemi_context::scope_sync`], or carried from async code into
/// [`bemi_context::spawn_blocking`]. Nothing is emitted when there is no context, when it is
/// empty, or when its payload is over the size limit; `f` runs in its transaction all the same.
///
/// Everything else is [`Connection::transaction`]: the transaction commits when `f` returns
/// `Ok` and rolls back (with its context) when `f` returns `Err`; called inside another
/// transaction it makes a savepoint.
///
/// ```no_run
/// use bemi_diesel::{transaction_with_context, Context};
/// use diesel::prelude::*;
///
/// # fn run(conn: &mut PgConnection) -> QueryResult<()> {
/// let ctx = Context::new().with("user_id", 42).with("job", "nightly-import");
/// transaction_with_context(conn, Some(&ctx), |conn| {
///     diesel::sql_query("UPDATE orders SET status = 'archived' WHERE age > 90").execute(conn)?;
///     QueryResult::Ok(())
/// })?;
///
/// // The current context, e.g. in bemi_context::spawn_blocking called from a request handler.
/// bemi_context::scope_sync(ctx, || {
///     transaction_with_context(conn, None, |conn| {
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
pub fn transaction_with_context<C, T, E, F>(
    conn: &mut C,
    ctx: Option<&Context>,
    f: F,
) -> Result<T, E>
where
    C: Connection<Backend = Pg>,
    F: FnOnce(&mut C) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    let payload = bemi_context::payload_or_current(ctx);
    conn.transaction(|conn| {
        if let Some(payload) = payload {
            EmitQuery::new(payload).execute(conn)?;
        }
        f(conn)
    })
}

/// Emits `ctx` into the transaction open on `conn`; returns whether a message was emitted
/// (`false` for an empty or oversized context).
///
/// For transactions that [`transaction_with_context`] does not open. Changes the transaction
/// made before the message take the transaction's first message, so emitting after some writes
/// still gives them a context; changes after a second emit take the second one.
///
/// Call it inside a transaction: outside one, the message is committed on its own and attaches
/// to no change.
///
/// # Errors
///
/// An error of the statement. On error PostgreSQL aborts the transaction.
pub fn emit<C>(conn: &mut C, ctx: &Context) -> QueryResult<bool>
where
    C: Connection<Backend = Pg>,
{
    emit_payload(conn, bemi_context::payload(ctx))
}

/// [`emit`] of the [current](bemi_context::current) context; `Ok(false)` when there is none.
///
/// # Errors
///
/// As [`emit`].
pub fn emit_current<C>(conn: &mut C) -> QueryResult<bool>
where
    C: Connection<Backend = Pg>,
{
    emit_payload(conn, bemi_context::current_payload())
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
