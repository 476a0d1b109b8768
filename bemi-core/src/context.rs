//! Application context for writes made through tokio-postgres or deadpool-postgres.
//!
//! The tracker joins each row change with the `_bemi` logical decoding message of its own
//! transaction (see [`bemi_context`]). This module emits the context as the transaction's first
//! statement:
//!
//! ```no_run
//! use bemi_core::context::{begin_with_context, Context};
//!
//! # async fn run(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
//! let ctx = Context::new().with("user_id", 42).with("endpoint", "POST /orders");
//! let tx = begin_with_context(client, Some(&ctx)).await?;
//! tx.execute("INSERT INTO orders (item) VALUES ($1)", &[&"book"]).await?;
//! tx.commit().await?;
//!
//! // Or with the current task-local context (bemi_context::scope, the tower layer, …).
//! bemi_context::scope(ctx, async {
//!     let tx = begin_with_context(client, None).await?;
//!     tx.execute("UPDATE orders SET paid = true", &[]).await?;
//!     tx.commit().await
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! The payload is [`bemi_context::payload`] of the context, bound as the text parameter of
//! [`bemi_context::EMIT_SQL`], never spliced into SQL. With no context, an empty one,
//! or one over [`MAX_PAYLOAD_CHARS`](bemi_context::MAX_PAYLOAD_CHARS), nothing is emitted and
//! the transaction goes ahead without context.
//!
//! # Cost, and the cheapest way
//!
//! Emitting costs the server one more statement per transaction; how much more the application
//! waits depends on how the statement is sent. tokio-postgres hands out a [`Transaction`] only
//! after its `BEGIN` has completed, so:
//!
//! * [`begin_with_context`] waits for `BEGIN`, then for the emit: **one extra round trip**.
//! * [`emit_with`] sends the emit **in the same round trip** as the transaction's first
//!   statement, just ahead of it (tokio-postgres sends requests in the order they are first
//!   polled, and the server runs them in that order):
//!
//! ```no_run
//! use bemi_core::context::emit_with;
//!
//! # async fn run(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
//! let tx = client.transaction().await?;
//! emit_with(&tx, None, tx.execute("INSERT INTO orders (item) VALUES ($1)", &[&"book"])).await?;
//! tx.execute("UPDATE stock SET count = count - 1 WHERE item = $1", &[&"book"]).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! * The server's share shrinks when the emit is **prepared once per connection** and only bound
//!   and executed afterwards. tokio-postgres keeps no statement cache, so on a plain
//!   [`Transaction`] the emit is an unnamed statement the server parses and plans each time (it
//!   needs nothing to be cached or closed, and works behind PgBouncer). deadpool-postgres keeps
//!   one: every function here given a [`deadpool_postgres::Transaction`] uses it, and
//!   [`begin_cached`] opens one from a pooled connection:
//!
//! ```no_run
//! use bemi_core::context::{begin_cached, emit_with};
//!
//! # async fn run(pool: &deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = pool.get().await?;
//! // the emit prepared on first use, then cached
//! let tx = client.transaction().await?;
//! emit_with(&tx, None, tx.execute("INSERT INTO orders (item) VALUES ('book')", &[])).await?;
//! tx.commit().await?;
//!
//! // or, paying the round trip, without choosing a first statement
//! let tx = begin_cached(&mut client, None).await?;
//! tx.execute("DELETE FROM orders WHERE item = 'book'", &[]).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! The `context_overhead` benchmark compares these ways with transactions without context
//! (`cargo bench -p bemi-core --bench context_overhead`; figures in `BENCHMARKS.md`). With a
//! local durable server on a 2-core machine, a one-row write transaction takes about 200 µs of
//! CPU (client and server together); a context added about 20–35 µs of CPU per transaction with
//! [`emit_with`] on a deadpool transaction (prepared and sent with the first statement, the
//! cheapest way: about what a prepared `SELECT 1` sent the same way costs), 40–56 µs with
//! [`begin_cached`], 55–80 µs with [`emit_with`] on a plain transaction and 75–105 µs with
//! [`begin_with_context`], which also waits for one more round trip.
//!
//! Errors are tokio-postgres's own: this module adds no failure of its own, so `?` works in code
//! that already returns [`tokio_postgres::Error`] (and [`crate::Error`] converts from it).

use std::future::Future;

use bemi_context::{payload_or_current, EMIT_SQL};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Error, Transaction};

pub use bemi_context::Context;

/// A transaction a context can be emitted into.
///
/// Implemented for tokio-postgres's [`Transaction`] (the emit is an unnamed statement, parsed
/// by the server each time) and deadpool-postgres's [`deadpool_postgres::Transaction`] (the
/// emit is prepared once per connection through the pool's statement cache, then only bound and
/// executed). Sealed: other types cannot implement it.
pub trait ContextTransaction: Sync + sealed::Sealed {
    /// Makes the emit ready to send without waiting (prepares it where it is cached).
    #[doc(hidden)]
    fn prepare_emit(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Sends the emit with `payload`; completes when the server has run it.
    #[doc(hidden)]
    fn emit_payload(&self, payload: &str) -> impl Future<Output = Result<(), Error>> + Send;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for tokio_postgres::Transaction<'_> {}
    impl Sealed for deadpool_postgres::Transaction<'_> {}
}

impl ContextTransaction for Transaction<'_> {
    async fn prepare_emit(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn emit_payload(&self, payload: &str) -> Result<(), Error> {
        self.execute_typed(EMIT_SQL, &[(&payload, Type::TEXT)])
            .await
            .map(drop)
    }
}

impl ContextTransaction for deadpool_postgres::Transaction<'_> {
    async fn prepare_emit(&self) -> Result<(), Error> {
        self.prepare_typed_cached(EMIT_SQL, &[Type::TEXT])
            .await
            .map(drop)
    }

    async fn emit_payload(&self, payload: &str) -> Result<(), Error> {
        let statement = self.prepare_typed_cached(EMIT_SQL, &[Type::TEXT]).await?;
        self.execute(&statement, &[&payload]).await.map(drop)
    }
}

/// Opens a transaction on `client` and emits a context as its first statement.
///
/// The context is `ctx`, or when `ctx` is `None` the [current](bemi_context::current)
/// task-local one. Nothing is emitted when there is no context, when it is empty, or when its
/// payload is over the size limit; the transaction is opened all the same.
///
/// A deadpool-postgres [`Object`](deadpool_postgres::Object) dereferences to a [`Client`], so
/// `begin_with_context(&mut object, None)` works as is; [`begin_cached`] uses the pool's
/// statement cache as well.
///
/// If the emit fails, the transaction is rolled back (as dropping a [`Transaction`] does) and
/// the error returned. This waits for `BEGIN` and then for the emit: one round trip more than
/// `client.transaction()`; [`emit_with`] saves it (see the [module docs](self)).
///
/// # Errors
///
/// Any error of `BEGIN` or of the emit, such as a lost connection or, where the hardening of
/// [`bemi_context`] was applied, a role without `EXECUTE` on `pg_logical_emit_message`.
pub async fn begin_with_context<'a>(
    client: &'a mut Client,
    ctx: Option<&Context>,
) -> Result<Transaction<'a>, Error> {
    let tx = client.transaction().await?;
    emit_context(&tx, ctx).await?;
    Ok(tx)
}

/// [`begin_with_context`] for a deadpool-postgres connection, with the emit prepared once per
/// connection through the pool's statement cache.
///
/// Pass `&mut object` for a pooled [`Object`](deadpool_postgres::Object).
///
/// # Errors
///
/// As [`begin_with_context`], and any error preparing the emit the first time.
pub async fn begin_cached<'a>(
    client: &'a mut deadpool_postgres::ClientWrapper,
    ctx: Option<&Context>,
) -> Result<deadpool_postgres::Transaction<'a>, Error> {
    let tx = client.transaction().await?;
    emit_context(&tx, ctx).await?;
    Ok(tx)
}

/// Emits a context into `tx` together with `first`, the transaction's first statement: both
/// requests go out in the same round trip, the emit ahead, so the context costs no extra wait
/// (on a deadpool-postgres transaction, the first time on a connection waits once for the emit
/// to be prepared).
///
/// `first` is a future of a statement on `tx` that has not been polled yet, such as
/// `tx.execute(…)` or `tx.query(…)`; its output is returned. The context is `ctx`, or when
/// `ctx` is `None` the [current](bemi_context::current) task-local one; when there is nothing to
/// emit, this is just `first.await`.
///
/// # Errors
///
/// The emit's error if it fails (the server then aborts the transaction, and `first` fails
/// too, with "current transaction is aborted"), otherwise `first`'s.
///
/// # Example
///
/// ```no_run
/// use bemi_core::context::{emit_with, Context};
///
/// # async fn run(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
/// let ctx = Context::new().with("user_id", 42);
/// let tx = client.transaction().await?;
/// let row = emit_with(
///     &tx,
///     Some(&ctx),
///     tx.query_one("INSERT INTO orders (item) VALUES ('book') RETURNING id", &[]),
/// )
/// .await?;
/// let id: i64 = row.get(0);
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn emit_with<T, F>(
    tx: &impl ContextTransaction,
    ctx: Option<&Context>,
    first: F,
) -> Result<T, Error>
where
    F: Future<Output = Result<T, Error>>,
{
    match payload_or_current(ctx) {
        Some(payload) => {
            // Prepared first (a round trip only the first time on a connection), so that the
            // emit goes out without waiting. `join` polls its futures in order, every time: the
            // emit's request is queued first. Both run to the end (a failed emit makes `first`
            // fail fast with "current transaction is aborted"), and the emit's error is the one
            // that explains it.
            tx.prepare_emit().await?;
            let (emitted, out) = futures_util::future::join(tx.emit_payload(&payload), first).await;
            emitted?;
            out
        }
        None => first.await,
    }
}

/// Emits `ctx` into the open transaction `tx`; returns whether a message was emitted (`false`
/// for an empty or oversized context).
///
/// Changes the transaction made before the message take the transaction's first message, so
/// emitting later in a transaction still gives all of its changes a context; changes after a
/// second emit take the second one. [`emit_with`] saves the round trip this waits for.
///
/// # Errors
///
/// Any error of the statement. On error PostgreSQL aborts the transaction.
pub async fn emit(tx: &impl ContextTransaction, ctx: &Context) -> Result<bool, Error> {
    emit_context(tx, Some(ctx)).await
}

/// [`emit`] of the [current](bemi_context::current) task-local context; `Ok(false)` when there
/// is none.
///
/// # Errors
///
/// As [`emit`].
pub async fn emit_current(tx: &impl ContextTransaction) -> Result<bool, Error> {
    emit_context(tx, None).await
}

async fn emit_context(tx: &impl ContextTransaction, ctx: Option<&Context>) -> Result<bool, Error> {
    match payload_or_current(ctx) {
        Some(payload) => tx.emit_payload(&payload).await.map(|()| true),
        None => Ok(false),
    }
}
