//! Application context for writes made through tokio-postgres or deadpool-postgres.
//!
//! The tracker joins each row change with the `_bemi` logical decoding message of its own
//! transaction (see [`bemi_context`]). This module emits the context as the transaction's first
//! statement:
//!
//! ```no_run
//! use bemi_core::context::{begin, begin_with, Context};
//!
//! # async fn run(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
//! let ctx = Context::new().with("user_id", 42).with("endpoint", "POST /orders");
//! let tx = begin_with(client, &ctx).await?;
//! tx.execute("INSERT INTO orders (item) VALUES ($1)", &[&"book"]).await?;
//! tx.commit().await?;
//!
//! // Or with the current task-local context (bemi_context::scope, the tower layer, …).
//! bemi_context::scope(ctx, async {
//!     let tx = begin(client).await?;
//!     tx.execute("UPDATE orders SET paid = true", &[]).await?;
//!     tx.commit().await
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! # The API
//!
//! Each function comes in two forms, as in every Bemi adapter: the plain one uses the
//! [current context](bemi_context::current) of the task, the `_with` one an explicit
//! [`Context`].
//!
//! | | current context | explicit context |
//! | --- | --- | --- |
//! | begin a transaction on a [`Client`], a deadpool [`Object`](deadpool_postgres::Object) or [`ClientWrapper`](deadpool_postgres::ClientWrapper) ([`Begin`]) | [`begin`] | [`begin_with`] |
//! | emit into a transaction you already hold ([`ContextTransaction`]) | [`emit`] | [`emit_with`] |
//! | emit in the same round trip as the transaction's first statement | [`emit_before`] | [`emit_before_with`] |
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
//! * [`begin`] waits for `BEGIN`, then for the emit: **one extra round trip**.
//! * [`emit_before`] sends the emit **in the same round trip** as the transaction's first
//!   statement, just ahead of it (tokio-postgres sends requests in the order they are first
//!   polled, and the server runs them in that order):
//!
//! ```no_run
//! use bemi_core::context::emit_before;
//!
//! # async fn run(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
//! let tx = client.transaction().await?;
//! emit_before(&tx, tx.execute("INSERT INTO orders (item) VALUES ($1)", &[&"book"])).await?;
//! tx.execute("UPDATE stock SET count = count - 1 WHERE item = $1", &[&"book"]).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! * The server's share shrinks when the emit is **prepared once per connection** and only bound
//!   and executed afterwards. tokio-postgres keeps no statement cache, so on a plain
//!   [`Transaction`] the emit is an unnamed statement the server parses and plans each time (it
//!   needs nothing to be cached or closed, and works behind PgBouncer). deadpool-postgres keeps
//!   one: every function here given a [`deadpool_postgres::Transaction`] uses it, and [`begin`]
//!   on a pooled [`Object`](deadpool_postgres::Object) opens such a transaction:
//!
//! ```no_run
//! use bemi_core::context::{begin, emit_before};
//!
//! # async fn run(pool: &deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = pool.get().await?;
//! // the emit prepared on first use, then cached
//! let tx = client.transaction().await?;
//! emit_before(&tx, tx.execute("INSERT INTO orders (item) VALUES ('book')", &[])).await?;
//! tx.commit().await?;
//!
//! // or, paying the round trip, without choosing a first statement
//! let tx = begin(&mut client).await?;
//! tx.execute("DELETE FROM orders WHERE item = 'book'", &[]).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! The `context_overhead` benchmark compares these ways with transactions without context
//! (`cargo bench -p bemi-core --bench context_overhead`; figures in `BENCHMARKS.md`). With a
//! local durable server on a 2-core machine, a one-row write transaction takes about 200 µs of
//! CPU (client and server together); a context added about 20–35 µs of CPU per transaction with
//! [`emit_before`] on a deadpool transaction (prepared and sent with the first statement, the
//! cheapest way: about what a prepared `SELECT 1` sent the same way costs), 40–56 µs with
//! [`begin`] on a deadpool object, 55–80 µs with [`emit_before`] on a plain transaction and
//! 75–105 µs with [`begin`] on a plain [`Client`], which also waits for one more round trip.
//!
//! Errors are tokio-postgres's own: this module adds no failure of its own, so `?` works in code
//! that already returns [`tokio_postgres::Error`] (and [`crate::Error`] converts from it).

use std::future::Future;

use bemi_context::{current_payload, payload, EMIT_SQL};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Error, Transaction};

pub use bemi_context::Context;

/// A connection a transaction with context can begin on.
///
/// | type | the transaction [`begin`] opens | the emit |
/// | --- | --- | --- |
/// | [`Client`] | [`Transaction`] | an unnamed statement, parsed by the server each time |
/// | [`deadpool_postgres::Object`] | [`deadpool_postgres::Transaction`] | prepared once per connection through the pool's statement cache |
/// | [`deadpool_postgres::ClientWrapper`] | [`deadpool_postgres::Transaction`] | as for an `Object` |
///
/// Pass it as `&mut client` (`&mut object` for a pooled connection). To get a plain
/// [`Transaction`] from a pooled connection, without the statement cache, pass the client it
/// dereferences to: `&mut **object`.
///
/// Sealed: other types cannot implement it.
pub trait Begin: Send + sealed::Sealed {
    /// The transaction [`begin`] opens on this connection.
    type Transaction<'a>: ContextTransaction
    where
        Self: 'a;

    /// Opens a transaction, as the type's own `transaction()` does.
    #[doc(hidden)]
    fn open_transaction(
        &mut self,
    ) -> impl Future<Output = Result<Self::Transaction<'_>, Error>> + Send;
}

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
    impl Sealed for tokio_postgres::Client {}
    impl Sealed for deadpool_postgres::Object {}
    impl Sealed for deadpool_postgres::ClientWrapper {}
    impl Sealed for tokio_postgres::Transaction<'_> {}
    impl Sealed for deadpool_postgres::Transaction<'_> {}
}

impl Begin for Client {
    type Transaction<'a> = Transaction<'a>;

    async fn open_transaction(&mut self) -> Result<Transaction<'_>, Error> {
        self.transaction().await
    }
}

impl Begin for deadpool_postgres::ClientWrapper {
    type Transaction<'a> = deadpool_postgres::Transaction<'a>;

    async fn open_transaction(&mut self) -> Result<deadpool_postgres::Transaction<'_>, Error> {
        self.transaction().await
    }
}

impl Begin for deadpool_postgres::Object {
    type Transaction<'a> = deadpool_postgres::Transaction<'a>;

    async fn open_transaction(&mut self) -> Result<deadpool_postgres::Transaction<'_>, Error> {
        let client: &mut deadpool_postgres::ClientWrapper = self;
        client.transaction().await
    }
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

/// Opens a transaction on `client` and emits the [current](bemi_context::current) task-local
/// context as its first statement.
///
/// The drop-in replacement for `client.transaction()`: commit, roll back and run statements on
/// the returned transaction as usual. Nothing is emitted when there is no current context, when
/// it is empty, or when its payload is over the size limit; the transaction is opened all the
/// same. The context is read when the returned future is first polled. See [`Begin`] for what
/// `client` can be: a deadpool-postgres [`Object`](deadpool_postgres::Object) gives a
/// [`deadpool_postgres::Transaction`], whose emit is prepared once per connection.
///
/// If the emit fails, the transaction is rolled back (as dropping a [`Transaction`] does) and
/// the error returned. This waits for `BEGIN` and then for the emit: one round trip more than
/// `client.transaction()`; [`emit_before`] saves it (see the [module docs](self)).
///
/// ```no_run
/// use bemi_core::context::{begin, Context};
///
/// # async fn run(pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// bemi_context::scope(Context::new().with("user_id", 42), async {
///     let mut object = pool.get().await?;
///     let tx = begin(&mut object).await?;
///     tx.execute("UPDATE accounts SET plan = 'pro' WHERE id = 7", &[]).await?;
///     tx.commit().await?;
///     Ok(())
/// })
/// .await
/// # }
/// ```
///
/// # Errors
///
/// Any error of `BEGIN` or of the emit, such as a lost connection or, where the hardening of
/// [`bemi_context`] was applied, a role without `EXECUTE` on `pg_logical_emit_message`; on a
/// deadpool connection, any error preparing the emit the first time.
pub async fn begin<C: Begin>(client: &mut C) -> Result<C::Transaction<'_>, Error> {
    begin_payload(client, current_payload()).await
}

/// Opens a transaction on `client` and emits `ctx` as its first statement; like [`begin`], with
/// an explicit context instead of the current one.
///
/// An empty or oversized `ctx` emits nothing.
///
/// ```no_run
/// use bemi_core::context::{begin_with, Context};
///
/// # async fn run(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
/// let ctx = Context::new().with("job", "nightly-cleanup");
/// let tx = begin_with(client, &ctx).await?;
/// tx.execute("DELETE FROM sessions WHERE expires_at < now()", &[]).await?;
/// tx.commit().await
/// # }
/// ```
///
/// # Errors
///
/// As [`begin`].
pub async fn begin_with<'a, C: Begin>(
    client: &'a mut C,
    ctx: &Context,
) -> Result<C::Transaction<'a>, Error> {
    begin_payload(client, payload(ctx)).await
}

async fn begin_payload<C: Begin>(
    client: &mut C,
    payload: Option<String>,
) -> Result<C::Transaction<'_>, Error> {
    let tx = client.open_transaction().await?;
    emit_optional(&tx, payload).await?;
    Ok(tx)
}

/// Emits the [current](bemi_context::current) task-local context into `tx` together with
/// `first`, the transaction's first statement: both requests go out in the same round trip, the
/// emit ahead, so the context costs no extra wait (on a deadpool-postgres transaction, the first
/// time on a connection waits once for the emit to be prepared).
///
/// `first` is a future of a statement on `tx` that has not been polled yet, such as
/// `tx.execute(…)` or `tx.query(…)`; its output is returned. When there is nothing to emit, this
/// is just `first.await`.
///
/// # Errors
///
/// The emit's error if it fails (the server then aborts the transaction, and `first` fails
/// too, with "current transaction is aborted"), otherwise `first`'s.
pub async fn emit_before<T, F>(tx: &impl ContextTransaction, first: F) -> Result<T, Error>
where
    F: Future<Output = Result<T, Error>>,
{
    emit_payload_before(tx, current_payload(), first).await
}

/// Emits `ctx` into `tx` together with `first`, in the same round trip; like [`emit_before`],
/// with an explicit context.
///
/// ```no_run
/// use bemi_core::context::{emit_before_with, Context};
///
/// # async fn run(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
/// let ctx = Context::new().with("user_id", 42);
/// let tx = client.transaction().await?;
/// let row = emit_before_with(
///     &tx,
///     &ctx,
///     tx.query_one("INSERT INTO orders (item) VALUES ('book') RETURNING id", &[]),
/// )
/// .await?;
/// let id: i64 = row.get(0);
/// tx.commit().await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// As [`emit_before`].
pub async fn emit_before_with<T, F>(
    tx: &impl ContextTransaction,
    ctx: &Context,
    first: F,
) -> Result<T, Error>
where
    F: Future<Output = Result<T, Error>>,
{
    emit_payload_before(tx, payload(ctx), first).await
}

async fn emit_payload_before<T, F>(
    tx: &impl ContextTransaction,
    payload: Option<String>,
    first: F,
) -> Result<T, Error>
where
    F: Future<Output = Result<T, Error>>,
{
    match payload {
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

/// Emits the [current](bemi_context::current) task-local context into the open transaction
/// `tx`; returns whether a message was emitted (`false` when there is no context, or it is
/// empty or oversized).
///
/// For transactions [`begin`] does not open, for example one with a custom isolation level.
/// Changes the transaction made before the message take the transaction's first message, so
/// emitting later in a transaction still gives all of its changes a context; changes after a
/// second emit take the second one. [`emit_before`] saves the round trip this waits for.
///
/// # Errors
///
/// Any error of the statement. On error PostgreSQL aborts the transaction.
pub async fn emit(tx: &impl ContextTransaction) -> Result<bool, Error> {
    emit_optional(tx, current_payload()).await
}

/// Emits `ctx` into the open transaction `tx`; like [`emit`], with an explicit context.
///
/// # Errors
///
/// As [`emit`].
pub async fn emit_with(tx: &impl ContextTransaction, ctx: &Context) -> Result<bool, Error> {
    emit_optional(tx, payload(ctx)).await
}

async fn emit_optional(
    tx: &impl ContextTransaction,
    payload: Option<String>,
) -> Result<bool, Error> {
    match payload {
        Some(payload) => tx.emit_payload(&payload).await.map(|()| true),
        None => Ok(false),
    }
}
