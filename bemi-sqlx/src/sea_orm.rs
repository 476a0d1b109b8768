//! SeaORM transactions with context (feature `sea-orm`).
//!
//! SeaORM runs on sqlx but does not let a transaction begin with a custom statement, so these
//! helpers begin the transaction as SeaORM does and then emit the context as a bound statement
//! ([`EMIT_SQL`]): one round trip more than a transaction without context. Where that matters,
//! begin the write transactions of hot paths with [`crate::begin`] on the sqlx pool under the
//! `DatabaseConnection` (`db.get_postgres_connection_pool()`), which needs none.
//!
//! ```no_run
//! use bemi_context::{scope, Context};
//! use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement};
//!
//! # async fn run(db: DatabaseConnection) -> Result<(), sea_orm::TransactionError<DbErr>> {
//! scope(Context::new().with("user_id", 42), async {
//!     bemi_sqlx::sea_orm::transaction(&db, |txn| {
//!         Box::pin(async move {
//!             txn.execute_raw(Statement::from_string(
//!                 txn.get_database_backend(),
//!                 "UPDATE accounts SET plan = 'pro' WHERE id = 7",
//!             ))
//!             .await?;
//!             Ok::<_, DbErr>(())
//!         })
//!     })
//!     .await
//! })
//! .await
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;

use ::sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, Statement, TransactionError,
    TransactionTrait,
};
use bemi_context::{current_payload, payload, Context, EMIT_SQL};

/// Begins a SeaORM transaction and emits the [current](bemi_context::current) context as its
/// first statement.
///
/// `db` is a `DatabaseConnection`, or a `DatabaseTransaction` to begin a nested one (a
/// savepoint). Without a current context, or with an empty or oversized one, it is
/// `db.begin()` and nothing is emitted.
///
/// ```no_run
/// # async fn run(db: sea_orm::DatabaseConnection) -> Result<(), sea_orm::DbErr> {
/// use sea_orm::ConnectionTrait as _;
///
/// let txn = bemi_sqlx::sea_orm::begin(&db).await?;
/// txn.execute_unprepared("DELETE FROM sessions WHERE expires_at < now()").await?;
/// txn.commit().await
/// # }
/// ```
///
/// # Errors
///
/// Those of `begin` and of the emit (the transaction is then rolled back); a database other
/// than PostgreSQL is [`DbErr::Custom`].
pub async fn begin<C>(db: &C) -> Result<DatabaseTransaction, DbErr>
where
    C: TransactionTrait<Transaction = DatabaseTransaction> + ?Sized,
{
    begin_payload(db, current_payload()).await
}

/// Begins a SeaORM transaction and emits `ctx` as its first statement; like [`begin`], with an
/// explicit context.
///
/// # Errors
///
/// As [`begin`].
pub async fn begin_with<C>(db: &C, ctx: &Context) -> Result<DatabaseTransaction, DbErr>
where
    C: TransactionTrait<Transaction = DatabaseTransaction> + ?Sized,
{
    begin_payload(db, payload(ctx)).await
}

async fn begin_payload<C>(db: &C, payload: Option<String>) -> Result<DatabaseTransaction, DbErr>
where
    C: TransactionTrait<Transaction = DatabaseTransaction> + ?Sized,
{
    let txn = db.begin().await?;
    if let Some(payload) = payload {
        if let Err(e) = emit_payload(&txn, payload).await {
            // Roll back now rather than on drop, so the connection is clean when it returns.
            let _ = txn.rollback().await;
            return Err(e);
        }
    }
    Ok(txn)
}

/// Emits the [current](bemi_context::current) context into the open transaction `txn`;
/// returns whether there was a context to emit.
///
/// For transactions begun otherwise, for example with `begin_with_config` for an isolation
/// level. Call it first in the transaction (see [`crate::emit`]). It takes a
/// `DatabaseTransaction`, not a `DatabaseConnection`: on a pool the message would run in a
/// transaction of its own, on any connection, and reach no change.
///
/// # Errors
///
/// Those of running the statement; a database other than PostgreSQL is [`DbErr::Custom`].
pub async fn emit(txn: &DatabaseTransaction) -> Result<bool, DbErr> {
    emit_optional(txn, current_payload()).await
}

/// Emits `ctx` into the open transaction `txn`; like [`emit`], with an explicit context.
///
/// # Errors
///
/// As [`emit`].
pub async fn emit_with(txn: &DatabaseTransaction, ctx: &Context) -> Result<bool, DbErr> {
    emit_optional(txn, payload(ctx)).await
}

async fn emit_optional(txn: &DatabaseTransaction, payload: Option<String>) -> Result<bool, DbErr> {
    match payload {
        Some(payload) => emit_payload(txn, payload).await.map(|()| true),
        None => Ok(false),
    }
}

async fn emit_payload(txn: &DatabaseTransaction, payload: String) -> Result<(), DbErr> {
    let backend = txn.get_database_backend();
    if backend != DbBackend::Postgres {
        return Err(DbErr::Custom(format!(
            "bemi context needs PostgreSQL (pg_logical_emit_message); this connection is {backend:?}, so use a plain transaction with it"
        )));
    }
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        EMIT_SQL,
        [payload.into()],
    ))
    .await?;
    Ok(())
}

/// Runs `callback` in a transaction that begins with the [current](bemi_context::current)
/// context, and commits it if the callback returns `Ok`, or rolls it back.
///
/// The context counterpart of SeaORM's `TransactionTrait::transaction`, with the same callback
/// and errors. See the [module docs](self) for an example.
///
/// # Errors
///
/// [`TransactionError::Connection`] when beginning, committing or rolling back fails,
/// [`TransactionError::Transaction`] with the callback's error.
pub async fn transaction<C, F, T, E>(db: &C, callback: F) -> Result<T, TransactionError<E>>
where
    C: TransactionTrait<Transaction = DatabaseTransaction> + ?Sized,
    F: for<'t> FnOnce(
            &'t DatabaseTransaction,
        ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 't>>
        + Send,
    T: Send,
    E: std::fmt::Display + std::fmt::Debug + Send,
{
    run(db, current_payload(), callback).await
}

/// Runs `callback` in a transaction that begins with `ctx`; like [`transaction`], with an
/// explicit context.
///
/// ```no_run
/// use bemi_context::Context;
/// use sea_orm::{ConnectionTrait, DbErr};
///
/// # async fn run(db: sea_orm::DatabaseConnection) -> Result<(), sea_orm::TransactionError<DbErr>> {
/// let ctx = Context::new().with("job", "expire-sessions");
/// let expired = bemi_sqlx::sea_orm::transaction_with(&db, &ctx, |txn| {
///     Box::pin(async move {
///         let done = txn
///             .execute_unprepared("DELETE FROM sessions WHERE expires_at < now()")
///             .await?;
///         Ok::<_, DbErr>(done.rows_affected())
///     })
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// As [`transaction`].
pub async fn transaction_with<C, F, T, E>(
    db: &C,
    ctx: &Context,
    callback: F,
) -> Result<T, TransactionError<E>>
where
    C: TransactionTrait<Transaction = DatabaseTransaction> + ?Sized,
    F: for<'t> FnOnce(
            &'t DatabaseTransaction,
        ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 't>>
        + Send,
    T: Send,
    E: std::fmt::Display + std::fmt::Debug + Send,
{
    run(db, payload(ctx), callback).await
}

async fn run<C, F, T, E>(
    db: &C,
    payload: Option<String>,
    callback: F,
) -> Result<T, TransactionError<E>>
where
    C: TransactionTrait<Transaction = DatabaseTransaction> + ?Sized,
    F: for<'t> FnOnce(
            &'t DatabaseTransaction,
        ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 't>>
        + Send,
    T: Send,
    E: std::fmt::Display + std::fmt::Debug + Send,
{
    let txn = begin_payload(db, payload)
        .await
        .map_err(TransactionError::Connection)?;
    match callback(&txn).await {
        Ok(value) => {
            txn.commit().await.map_err(TransactionError::Connection)?;
            Ok(value)
        }
        Err(e) => {
            txn.rollback().await.map_err(TransactionError::Connection)?;
            Err(TransactionError::Transaction(e))
        }
    }
}
