//! sqlx (feature `sqlx`): pools, connections, pooled connections and transactions.

use std::future::Future;

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, PgPool, Postgres, Row as _, Transaction};

use super::db_error;
use crate::{Database, Param, Statement};
use bemi_core::Result;

/// The statement with its parameters bound. The SQL text is the read API's own: identifiers
/// quoted, every value a parameter.
fn query(statement: &Statement) -> Query<'static, Postgres, PgArguments> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(statement.sql().to_owned()));
    for param in statement.params() {
        query = match param {
            Param::Text(text) => query.bind(text.clone()),
            Param::Int8(int) => query.bind(*int),
        };
    }
    query
}

fn error(e: sqlx::Error) -> bemi_core::Error {
    let code = e
        .as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned());
    db_error(code, e)
}

async fn rows<'c, E>(executor: E, statement: &Statement) -> Result<Vec<Option<String>>>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let rows = query(statement).fetch_all(executor).await.map_err(error)?;
    rows.iter()
        .map(|row| row.try_get::<Option<String>, _>(0).map_err(error))
        .collect()
}

async fn execute<'c, E>(executor: E, statement: &Statement) -> Result<u64>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let done = query(statement).execute(executor).await.map_err(error)?;
    Ok(done.rows_affected())
}

impl Database for &PgPool {
    fn rows(
        &mut self,
        statement: &Statement,
    ) -> impl Future<Output = Result<Vec<Option<String>>>> + Send {
        rows(*self, statement)
    }

    fn execute(&mut self, statement: &Statement) -> impl Future<Output = Result<u64>> + Send {
        execute(*self, statement)
    }
}

impl Database for PgConnection {
    fn rows(
        &mut self,
        statement: &Statement,
    ) -> impl Future<Output = Result<Vec<Option<String>>>> + Send {
        rows(self, statement)
    }

    fn execute(&mut self, statement: &Statement) -> impl Future<Output = Result<u64>> + Send {
        execute(self, statement)
    }
}

impl Database for PoolConnection<Postgres> {
    fn rows(
        &mut self,
        statement: &Statement,
    ) -> impl Future<Output = Result<Vec<Option<String>>>> + Send {
        rows(&mut **self, statement)
    }

    fn execute(&mut self, statement: &Statement) -> impl Future<Output = Result<u64>> + Send {
        execute(&mut **self, statement)
    }
}

impl Database for Transaction<'_, Postgres> {
    fn rows(
        &mut self,
        statement: &Statement,
    ) -> impl Future<Output = Result<Vec<Option<String>>>> + Send {
        rows(&mut **self, statement)
    }

    fn execute(&mut self, statement: &Statement) -> impl Future<Output = Result<u64>> + Send {
        execute(&mut **self, statement)
    }
}
