//! Application context for writes made through tokio-postgres or deadpool-postgres.
//!
//! The tracker joins each row change with the `_bemi` logical decoding message of its own
//! transaction (see [`bemi_context`]). This module opens a transaction and emits the context as
//! its first statement:
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
//! A deadpool-postgres [`Object`](deadpool_postgres::Object) dereferences to a
//! [`Client`], so `begin_with_context(&mut object, None)` works as is.
//!
//! The payload is [`bemi_context::payload`] of the context, bound as the text parameter of
//! [`bemi_context::EMIT_SQL`], never spliced into SQL. With no context, an empty one,
//! or one over [`MAX_PAYLOAD_CHARS`](bemi_context::MAX_PAYLOAD_CHARS), nothing is emitted and
//! the transaction goes ahead without context.
//!
//! # Cost
//!
//! Emitting costs the server one more statement per transaction; how much more the application
//! waits depends on how it is sent. tokio-postgres returns a [`Transaction`] only after its
//! `BEGIN` has completed, and cannot adopt a transaction opened otherwise (say by a `BEGIN;
//! SELECT pg_logical_emit_message(…)` batch in one simple query), so:
//!
//! * [`begin_with_context`] waits for `BEGIN`, then for the emit: **one extra round trip** per
//!   transaction that has a context. The emit is an unnamed statement with its parameter type
//!   given ([`Transaction::execute_typed`]): no separate prepare, nothing to cache or close, and
//!   it works behind PgBouncer; but the server parses and plans it each time.
//! * **No extra round trip**: open the transaction as usual and run [`emit`] concurrently with
//!   the transaction's first statement. tokio-postgres sends requests in the order their futures
//!   are first polled (`try_join!` polls its arguments in order), so the emit still precedes the
//!   write on the wire and both travel together:
//!
//! ```no_run
//! use bemi_core::context::{emit, Context};
//!
//! # async fn run(client: &mut tokio_postgres::Client, ctx: &Context) -> Result<(), tokio_postgres::Error> {
//! let tx = client.transaction().await?;
//! let (_emitted, _rows) = tokio::try_join!(
//!     emit(&tx, ctx),
//!     tx.execute("INSERT INTO orders (item) VALUES ($1)", &[&"book"]),
//! )?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! * **Least work**: as above, with [`EMIT_SQL`] prepared once per
//!   connection, so the server only binds and executes it. tokio-postgres keeps no statement
//!   cache, so this needs one of the application's; deadpool-postgres has one:
//!
//! ```no_run
//! use bemi_context::{payload, Context, EMIT_SQL};
//! use tokio_postgres::types::{ToSql, Type};
//!
//! # async fn run(object: &mut deadpool_postgres::Object, ctx: &Context) -> Result<(), tokio_postgres::Error> {
//! let emit = object.prepare_typed_cached(EMIT_SQL, &[Type::TEXT]).await?; // prepared once
//! let tx = object.transaction().await?;
//! let insert = "INSERT INTO orders (item) VALUES ('book')";
//! match payload(ctx) {
//!     Some(payload) => {
//!         let params: [&(dyn ToSql + Sync); 1] = [&payload];
//!         tokio::try_join!(tx.execute(&emit, &params), tx.execute(insert, &[]))?;
//!     }
//!     None => drop(tx.execute(insert, &[]).await?),
//! }
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! The `context_overhead` benchmark measures these (`cargo bench -p bemi-core --bench
//! context_overhead`). On a 2-core machine, local server, `fsync` off, one connection, for
//! transactions of one single-row insert (about 160 µs without context), the emit added about
//! 90 µs with `begin_with_context`, 80 µs pipelined and 35 µs prepared and pipelined (as much
//! as a `BEGIN; SELECT pg_logical_emit_message(…)` batch); for transactions of five inserts the
//! prepared, pipelined emit cost 6% of the throughput. Against real commits (a WAL flush) and
//! real work the share shrinks further.
//!
//! Errors are tokio-postgres's own: this module adds no failure of its own, so `?` works in code
//! that already returns [`tokio_postgres::Error`] (and [`crate::Error`] converts from it).

use bemi_context::EMIT_SQL;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Error, Transaction};

pub use bemi_context::Context;

/// Opens a transaction on `client` and emits a context as its first statement.
///
/// The context is `ctx`, or when `ctx` is `None` the [current](bemi_context::current)
/// task-local one. Nothing is emitted when there is no context, when it is empty, or when its
/// payload is over the size limit; the transaction is opened all the same.
///
/// If the emit fails, the transaction is rolled back (as dropping a [`Transaction`] does) and
/// the error returned. See the [module docs](self) for the cost and a way to avoid the extra
/// round trip.
///
/// # Errors
///
/// Any error of `BEGIN` or of the emit, such as a lost connection or, where the hardening of
/// [`bemi_context`] was applied, a role without `EXECUTE` on `pg_logical_emit_message`.
pub async fn begin_with_context<'a>(
    client: &'a mut Client,
    ctx: Option<&Context>,
) -> Result<Transaction<'a>, Error> {
    let payload = match ctx {
        Some(ctx) => bemi_context::payload(ctx),
        None => bemi_context::current_payload(),
    };
    let tx = client.transaction().await?;
    if let Some(payload) = payload {
        emit_payload(&tx, &payload).await?;
    }
    Ok(tx)
}

/// Emits `ctx` into the open transaction `tx`; returns whether a message was emitted (`false`
/// for an empty or oversized context).
///
/// Changes the transaction made before the message take the transaction's first message, so
/// emitting later in a transaction still gives all of its changes a context; changes after a
/// second emit take the second one. Run this concurrently with the transaction's first
/// statement to save a round trip (see the [module docs](self)).
///
/// # Errors
///
/// Any error of the statement. On error PostgreSQL aborts the transaction.
pub async fn emit(tx: &Transaction<'_>, ctx: &Context) -> Result<bool, Error> {
    match bemi_context::payload(ctx) {
        Some(payload) => emit_payload(tx, &payload).await.map(|()| true),
        None => Ok(false),
    }
}

/// [`emit`] of the [current](bemi_context::current) task-local context; `Ok(false)` when there
/// is none.
///
/// # Errors
///
/// As [`emit`].
pub async fn emit_current(tx: &Transaction<'_>) -> Result<bool, Error> {
    match bemi_context::current_payload() {
        Some(payload) => emit_payload(tx, &payload).await.map(|()| true),
        None => Ok(false),
    }
}

async fn emit_payload(tx: &Transaction<'_>, payload: &str) -> Result<(), Error> {
    tx.execute_typed(EMIT_SQL, &[(&payload, Type::TEXT)])
        .await
        .map(drop)
}
