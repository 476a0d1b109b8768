//! [`Database`]: what the read API runs its statements on, and its implementations for
//! tokio-postgres (always) and for sqlx, SeaORM, Diesel and diesel-async (features).

use std::future::Future;

use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

use crate::statement::{Param, Statement};
use bemi_core::Result;

/// A connection, pool or transaction the read API can run its [`Statement`]s on.
///
/// Implemented for (pass them as written here; `&mut` ones by `&mut conn`):
///
/// | driver | types | feature |
/// | --- | --- | --- |
/// | tokio-postgres | `&Client`, `&Transaction<'_>` (a deadpool-postgres `Object` as `&**object`) | always |
/// | sqlx | `&PgPool`, `&mut PgConnection`, `&mut PoolConnection<Postgres>`, `&mut Transaction<'_, Postgres>` | `sqlx` |
/// | SeaORM | `&DatabaseConnection`, `&DatabaseTransaction` | `sea-orm` |
/// | Diesel | `&mut PgConnection` (blocking: each call runs to completion when polled) | `diesel` |
/// | diesel-async | `&mut AsyncPgConnection` | `diesel-async` |
///
/// Every query is a single statement, so pools are fine for reading; only
/// [`RevertPlan::apply_in`](crate::RevertPlan::apply_in) needs a transaction.
///
/// A driver implements two calls: run a statement that returns one text column and give the
/// column's values, and run a statement and give the count of rows it wrote. Parameters are
/// [`Param::Text`] and [`Param::Int8`], each bound with its type.
pub trait Database: Send {
    /// Runs `statement`, which returns one text column, and returns that column of every row.
    fn rows(
        &mut self,
        statement: &Statement,
    ) -> impl Future<Output = Result<Vec<Option<String>>>> + Send;

    /// Runs `statement` and returns how many rows it wrote.
    fn execute(&mut self, statement: &Statement) -> impl Future<Output = Result<u64>> + Send;
}

impl<D: Database + ?Sized> Database for &mut D {
    fn rows(
        &mut self,
        statement: &Statement,
    ) -> impl Future<Output = Result<Vec<Option<String>>>> + Send {
        (**self).rows(statement)
    }

    fn execute(&mut self, statement: &Statement) -> impl Future<Output = Result<u64>> + Send {
        (**self).execute(statement)
    }
}

/// The database that holds `changes` and the tracked database, which may be one.
pub(crate) trait Databases {
    type Changes: Database;
    type Source: Database;

    fn changes(&mut self) -> &mut Self::Changes;
    fn source(&mut self) -> &mut Self::Source;
}

/// One database holds both `changes` and the tracked tables.
pub(crate) struct One<D>(pub(crate) D);

impl<D: Database> Databases for One<D> {
    type Changes = D;
    type Source = D;

    fn changes(&mut self) -> &mut D {
        &mut self.0
    }

    fn source(&mut self) -> &mut D {
        &mut self.0
    }
}

/// `changes` in one database, the tracked tables in another.
pub(crate) struct Two<C, S>(pub(crate) C, pub(crate) S);

impl<C: Database, S: Database> Databases for Two<C, S> {
    type Changes = C;
    type Source = S;

    fn changes(&mut self) -> &mut C {
        &mut self.0
    }

    fn source(&mut self) -> &mut S {
        &mut self.1
    }
}

/// The parameters of `statement` for tokio-postgres.
fn tokio_params(statement: &Statement) -> Vec<Box<dyn ToSql + Sync + Send>> {
    statement
        .params()
        .iter()
        .map(|param| -> Box<dyn ToSql + Sync + Send> {
            match param {
                Param::Text(text) => Box::new(text.clone()),
                Param::Int8(int) => Box::new(*int),
            }
        })
        .collect()
}

async fn tokio_rows<C>(client: &C, statement: &Statement) -> Result<Vec<Option<String>>>
where
    C: GenericClient + Sync,
{
    let params = tokio_params(statement);
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(statement.sql(), &refs).await?;
    Ok(rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<std::result::Result<_, _>>()?)
}

async fn tokio_execute<C>(client: &C, statement: &Statement) -> Result<u64>
where
    C: GenericClient + Sync,
{
    let params = tokio_params(statement);
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    Ok(client.execute(statement.sql(), &refs).await?)
}

/// `Database` for shared references to tokio-postgres clients.
macro_rules! tokio_postgres_database {
    ($($ty:ty),* $(,)?) => {$(
        impl Database for &$ty {
            fn rows(
                &mut self,
                statement: &Statement,
            ) -> impl Future<Output = Result<Vec<Option<String>>>> + Send {
                tokio_rows(*self, statement)
            }

            fn execute(&mut self, statement: &Statement) -> impl Future<Output = Result<u64>> + Send {
                tokio_execute(*self, statement)
            }
        }
    )*};
}

tokio_postgres_database!(tokio_postgres::Client, tokio_postgres::Transaction<'_>);
