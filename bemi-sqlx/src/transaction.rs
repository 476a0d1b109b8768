//! Transactions that start with the `_bemi` context message, for sqlx. How and why a
//! transaction begins with `<emit>; BEGIN` is told in the crate docs, "Cost".

use std::future::Future;
use std::pin::Pin;

use bemi_context::{current_payload, emit_statement, payload, Context, EMIT_SQL};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgQueryResult;
use sqlx::{Connection as _, Execute, Executor as _, PgConnection, PgPool, Postgres, Transaction};

/// Where a transaction can begin: a pool, a connection, or an open transaction.
///
/// Implemented for:
///
/// | type | the transaction | lifetime |
/// | --- | --- | --- |
/// | `&PgPool`, `PgPool` | on a connection taken from the pool and given back at its end, like [`Pool::begin`](sqlx::Pool::begin) | `'static` |
/// | `&mut PgConnection` | on that connection | the borrow's |
/// | `&mut PoolConnection<Postgres>` | on that connection | the borrow's |
/// | `&mut Transaction<'_, Postgres>` | nested in it, as a savepoint | the borrow's |
///
/// A connection that is already inside a transaction also gets a savepoint. Pass a transaction
/// as `&mut tx`, not `&mut *tx`; both work, the first reads better.
///
/// This trait is sealed: it cannot be implemented outside this crate.
pub trait Begin<'c>: sealed::Sealed<'c> + Send {}

mod sealed {
    use super::*;

    /// The connection a transaction begins on.
    #[allow(unreachable_pub, missing_debug_implementations)]
    pub enum Target<'c> {
        Pool(PgPool),
        Connection(&'c mut PgConnection),
    }

    #[allow(unreachable_pub)]
    pub trait Sealed<'c> {
        fn into_target(self) -> Target<'c>;
    }
}

use sealed::Target;

impl sealed::Sealed<'static> for &PgPool {
    fn into_target(self) -> Target<'static> {
        Target::Pool(self.clone())
    }
}
impl Begin<'static> for &PgPool {}

impl sealed::Sealed<'static> for PgPool {
    fn into_target(self) -> Target<'static> {
        Target::Pool(self)
    }
}
impl Begin<'static> for PgPool {}

impl<'c> sealed::Sealed<'c> for &'c mut PgConnection {
    fn into_target(self) -> Target<'c> {
        Target::Connection(self)
    }
}
impl<'c> Begin<'c> for &'c mut PgConnection {}

impl<'c> sealed::Sealed<'c> for &'c mut PoolConnection<Postgres> {
    fn into_target(self) -> Target<'c> {
        Target::Connection(self)
    }
}
impl<'c> Begin<'c> for &'c mut PoolConnection<Postgres> {}

impl<'c> sealed::Sealed<'c> for &'c mut Transaction<'_, Postgres> {
    fn into_target(self) -> Target<'c> {
        Target::Connection(self)
    }
}
impl<'c> Begin<'c> for &'c mut Transaction<'_, Postgres> {}

impl<'c> Target<'c> {
    async fn begin(self, payload: Option<String>) -> sqlx::Result<Transaction<'c, Postgres>> {
        match (self, payload) {
            (Target::Pool(pool), None) => pool.begin().await,
            (Target::Pool(pool), Some(payload)) => {
                pool.begin_with(sqlx::AssertSqlSafe(begin_statement(&payload)?))
                    .await
            }
            (Target::Connection(conn), None) => conn.begin().await,
            (Target::Connection(conn), Some(payload)) if conn.is_in_transaction() => {
                // sqlx accepts a custom statement only for a new transaction; a savepoint is
                // named by sqlx, so the context follows it as a bound statement.
                let mut savepoint = conn.begin().await?;
                emit_payload(&mut savepoint, payload).await?;
                Ok(savepoint)
            }
            (Target::Connection(conn), Some(payload)) => {
                conn.begin_with(sqlx::AssertSqlSafe(begin_statement(&payload)?))
                    .await
            }
        }
    }

    async fn execute<'q, Q>(self, payload: Option<String>, query: Q) -> sqlx::Result<PgQueryResult>
    where
        Q: Execute<'q, Postgres> + 'q,
    {
        match (self, payload) {
            // Nothing to emit: the write runs on its own, as sqlx would run it.
            (Target::Pool(pool), None) => pool.execute(query).await,
            (Target::Connection(conn), None) => conn.execute(query).await,
            // In an open transaction: the context goes into it, then the write, which fails or
            // aborts the transaction just as it would without a context.
            (Target::Connection(conn), Some(payload)) if conn.is_in_transaction() => {
                emit_payload(conn, payload).await?;
                conn.execute(query).await
            }
            (target, payload) => {
                let mut tx = target.begin(payload).await?;
                let result = tx.execute(query).await?;
                tx.commit().await?;
                Ok(result)
            }
        }
    }
}

/// `<emit statement>; BEGIN`: see the crate docs, "Cost", for why the emit comes first. The
/// payload is quoted as a literal by [`emit_statement`] (PQescapeLiteral's rules), which is what
/// makes the text safe to send (`AssertSqlSafe`).
fn begin_statement(payload: &str) -> sqlx::Result<String> {
    // `payload` never contains NUL (JSON escapes it), so this error cannot happen; it is still
    // reported rather than ignored.
    let mut sql = emit_statement(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sql.push_str("; BEGIN");
    Ok(sql)
}

async fn emit_payload(conn: &mut PgConnection, payload: String) -> sqlx::Result<()> {
    sqlx::query(EMIT_SQL).bind(payload).execute(conn).await?;
    Ok(())
}

/// Begins a transaction whose first statement emits the [current](bemi_context::current)
/// context.
///
/// The drop-in replacement for `pool.begin()` / `conn.begin()`: commit, roll back and run
/// queries on the returned [`Transaction`] as usual. Without a current context, or with an
/// empty or oversized one (see [`bemi_context::payload`]), it is a plain `BEGIN` and nothing is
/// emitted. The context is read when the returned future is first polled.
///
/// On a pool or an idle connection this takes one round trip, like `BEGIN` alone (see the
/// [crate docs](crate#cost)); nested in a transaction it makes a savepoint and emits the context
/// after it, one more round trip. See [`Begin`] for what `conn` can be.
///
/// ```no_run
/// use bemi_context::{scope, Context};
///
/// # async fn run(pool: sqlx::PgPool) -> sqlx::Result<()> {
/// scope(Context::new().with("user_id", 42), async {
///     let mut tx = bemi_sqlx::begin(&pool).await?;
///     sqlx::query("UPDATE accounts SET plan = $1 WHERE id = $2")
///         .bind("pro")
///         .bind(7_i64)
///         .execute(&mut *tx)
///         .await?;
///     tx.commit().await
/// })
/// .await
/// # }
/// ```
///
/// # Errors
///
/// Those of sqlx's `begin`, and a failing emit (the transaction is then not begun).
pub async fn begin<'c, C: Begin<'c>>(conn: C) -> sqlx::Result<Transaction<'c, Postgres>> {
    let target = conn.into_target();
    target.begin(current_payload()).await
}

/// Begins a transaction whose first statement emits `ctx`; like [`begin`], with an explicit
/// context instead of the current one.
///
/// An empty or oversized `ctx` emits nothing.
///
/// ```no_run
/// use bemi_context::Context;
///
/// # async fn run(pool: sqlx::PgPool) -> sqlx::Result<()> {
/// let ctx = Context::new().with("job", "nightly-cleanup");
/// let mut conn = pool.acquire().await?;
///
/// let mut tx = bemi_sqlx::begin_with(&mut conn, &ctx).await?;
/// sqlx::query("DELETE FROM sessions WHERE expires_at < now()")
///     .execute(&mut *tx)
///     .await?;
///
/// // a nested transaction (a savepoint) with a context of its own
/// let mut step = bemi_sqlx::begin_with(&mut tx, &ctx.clone().with("step", "tokens")).await?;
/// sqlx::query("DELETE FROM tokens WHERE revoked").execute(&mut *step).await?;
/// step.commit().await?;
///
/// tx.commit().await
/// # }
/// ```
///
/// A savepoint's context also applies to the outer transaction's writes after the savepoint is
/// released, until another context is emitted (the tracker gives each change the latest context
/// before it); a rolled-back savepoint takes its context with it.
///
/// # Errors
///
/// As [`begin`].
pub async fn begin_with<'c, C: Begin<'c>>(
    conn: C,
    ctx: &Context,
) -> sqlx::Result<Transaction<'c, Postgres>> {
    conn.into_target().begin(payload(ctx)).await
}

/// Emits the [current](bemi_context::current) context into the transaction open on `conn`;
/// returns whether there was a context to emit.
///
/// For transactions begun otherwise than with [`begin`], for example with a custom isolation
/// level. Call it first in the transaction: the tracker gives each change the latest context
/// emitted before it in its transaction, or the first one for changes before any. Outside a
/// transaction (as sqlx tracks them: begun with sqlx, not with a raw `BEGIN`) it is an error,
/// since the message would be its own transaction and reach no change.
///
/// The payload is bound as a parameter of [`EMIT_SQL`]: one round trip.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> sqlx::Result<()> {
/// use sqlx::Connection as _;
///
/// let mut conn = pool.acquire().await?;
/// let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE").await?;
/// bemi_sqlx::emit(&mut tx).await?;
/// sqlx::query("UPDATE stock SET reserved = reserved + 1 WHERE sku = 'A-1'")
///     .execute(&mut *tx)
///     .await?;
/// tx.commit().await
/// # }
/// ```
///
/// # Errors
///
/// [`sqlx::Error::InvalidArgument`] outside a transaction (when there is a context to emit);
/// those of running the statement.
pub async fn emit(conn: &mut PgConnection) -> sqlx::Result<bool> {
    emit_optional(conn, current_payload()).await
}

/// Emits `ctx` into the transaction open on `conn`; like [`emit`], with an explicit context.
///
/// # Errors
///
/// As [`emit`].
pub async fn emit_with(conn: &mut PgConnection, ctx: &Context) -> sqlx::Result<bool> {
    emit_optional(conn, payload(ctx)).await
}

async fn emit_optional(conn: &mut PgConnection, payload: Option<String>) -> sqlx::Result<bool> {
    match payload {
        Some(_) if !conn.is_in_transaction() => Err(sqlx::Error::InvalidArgument(
            "bemi_sqlx::emit needs an open transaction, begun through sqlx (begin, begin_with, \
             bemi_sqlx::begin): outside one the context would be a transaction of its own and \
             reach no change"
                .to_owned(),
        )),
        Some(payload) => emit_payload(conn, payload).await.map(|()| true),
        None => Ok(false),
    }
}

/// Runs a single write with the [current](bemi_context::current) context.
///
/// Where sqlx would run `query.execute(&pool)` in its own implicit transaction, this wraps it in
/// a transaction begun with the context and commits it: a message emitted outside the write's
/// transaction would not be stitched to it. That is three round trips (`emit; BEGIN`, the
/// write, `COMMIT`) instead of one; without a context to emit the query runs on its own, in one.
/// Inside an open transaction (`conn` a transaction or a connection in one), the context is
/// emitted into that transaction before the write, which then runs as sqlx would run it there:
/// the write and the transaction's later ones take that context (see [`emit`]).
///
/// ```no_run
/// use bemi_context::{scope, Context};
///
/// # async fn run(pool: sqlx::PgPool) -> sqlx::Result<()> {
/// scope(Context::new().with("endpoint", "DELETE /todos/3"), async {
///     let done = bemi_sqlx::execute(&pool, sqlx::query("DELETE FROM todos WHERE id = $1").bind(3))
///         .await?;
///     assert_eq!(done.rows_affected(), 1);
///     Ok(())
/// })
/// .await
/// # }
/// ```
///
/// # Errors
///
/// Those of beginning, running the query and committing; on an error the transaction is rolled
/// back.
pub async fn execute<'c, 'q, C, Q>(conn: C, query: Q) -> sqlx::Result<PgQueryResult>
where
    C: Begin<'c>,
    Q: Execute<'q, Postgres> + 'q,
{
    let target = conn.into_target();
    target.execute(current_payload(), query).await
}

/// Runs a single write with `ctx`; like [`execute`], with an explicit context.
///
/// # Errors
///
/// As [`execute`].
pub async fn execute_with<'c, 'q, C, Q>(
    conn: C,
    ctx: &Context,
    query: Q,
) -> sqlx::Result<PgQueryResult>
where
    C: Begin<'c>,
    Q: Execute<'q, Postgres> + 'q,
{
    conn.into_target().execute(payload(ctx), query).await
}

/// Runs `callback` in a transaction that begins with the [current](bemi_context::current)
/// context, and commits it if the callback returns `Ok`, or rolls it back if it returns `Err`.
///
/// The context counterpart of sqlx's
/// [`Connection::transaction`](sqlx::Connection::transaction), with the same callback, for
/// everything [`begin`] takes ([`Begin`]): a pool as well as a connection or a transaction (a
/// savepoint then). The callback gets the open transaction and returns a boxed future of the
/// work. The transaction begins as with [`begin`], in one round trip on a pool or
/// an idle connection.
///
/// ```no_run
/// use bemi_context::{scope, Context};
///
/// # async fn run(pool: sqlx::PgPool) -> sqlx::Result<()> {
/// let id: i64 = scope(Context::new().with("user_id", 42), async {
///     bemi_sqlx::transaction(&pool, |tx| {
///         Box::pin(async move {
///             sqlx::query_scalar("INSERT INTO orders (item) VALUES ('book') RETURNING id")
///                 .fetch_one(&mut **tx)
///                 .await
///         })
///     })
///     .await
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// Those of beginning (as for [`begin`]), committing or rolling back, converted into `E`, and
/// the callback's error (after the rollback).
pub async fn transaction<'c, C, F, R, E>(conn: C, callback: F) -> Result<R, E>
where
    C: Begin<'c>,
    F: for<'t> FnOnce(
            &'t mut Transaction<'c, Postgres>,
        ) -> Pin<Box<dyn Future<Output = Result<R, E>> + Send + 't>>
        + Send,
    R: Send,
    E: From<sqlx::Error> + Send,
{
    let target = conn.into_target();
    run(target, current_payload(), callback).await
}

/// Runs `callback` in a transaction that begins with `ctx`; like [`transaction`], with an
/// explicit context.
///
/// ```no_run
/// use bemi_context::Context;
///
/// # async fn run(pool: sqlx::PgPool) -> sqlx::Result<()> {
/// let ctx = Context::new().with("job", "expire-sessions");
/// let expired = bemi_sqlx::transaction_with(&pool, &ctx, |tx| {
///     Box::pin(async move {
///         let done = sqlx::query("DELETE FROM sessions WHERE expires_at < now()")
///             .execute(&mut **tx)
///             .await?;
///         Ok::<_, sqlx::Error>(done.rows_affected())
///     })
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// As [`transaction`].
pub async fn transaction_with<'c, C, F, R, E>(conn: C, ctx: &Context, callback: F) -> Result<R, E>
where
    C: Begin<'c>,
    F: for<'t> FnOnce(
            &'t mut Transaction<'c, Postgres>,
        ) -> Pin<Box<dyn Future<Output = Result<R, E>> + Send + 't>>
        + Send,
    R: Send,
    E: From<sqlx::Error> + Send,
{
    run(conn.into_target(), payload(ctx), callback).await
}

async fn run<'c, F, R, E>(target: Target<'c>, payload: Option<String>, callback: F) -> Result<R, E>
where
    F: for<'t> FnOnce(
            &'t mut Transaction<'c, Postgres>,
        ) -> Pin<Box<dyn Future<Output = Result<R, E>> + Send + 't>>
        + Send,
    R: Send,
    E: From<sqlx::Error> + Send,
{
    // As sqlx's Connection::transaction does it.
    let mut tx = target.begin(payload).await?;
    match callback(&mut tx).await {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            tx.rollback().await?;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_statement_emits_then_begins() {
        assert_eq!(
            begin_statement(r#"{"a":"it's"}"#).unwrap(),
            r#"SELECT pg_logical_emit_message(true, '_bemi', '{"a":"it''s"}'); BEGIN"#
        );
    }

    #[test]
    fn begin_statement_reports_nul() {
        assert!(matches!(
            begin_statement("{\"a\":\"\0\"}"),
            Err(sqlx::Error::Encode(_))
        ));
    }
}
