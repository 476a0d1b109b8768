//! Diesel (feature `diesel`): a blocking `PgConnection`. Its statements run to completion when
//! the future is first polled, so the read API's futures finish in one poll.

use std::future::{ready, Future};

use diesel::{PgConnection, RunQueryDsl as _};

use super::diesel_row::{error, query, FirstColumn};
use crate::{Database, Statement};
use bemi_core::Result;

impl Database for PgConnection {
    fn rows(
        &mut self,
        statement: &Statement,
    ) -> impl Future<Output = Result<Vec<Option<String>>>> + Send {
        let rows = query(statement).load::<FirstColumn>(self).map_err(error);
        ready(rows.map(|rows| rows.into_iter().map(|row| row.0).collect()))
    }

    fn execute(&mut self, statement: &Statement) -> impl Future<Output = Result<u64>> + Send {
        let done = query(statement).execute(self).map_err(error);
        ready(done.map(|rows| rows as u64))
    }
}

/// The `changes` table for Diesel's query builder (`public.changes`). The `table` column is
/// `table_` here; the sink's internal `system_id` is left out, to stay within Diesel's default
/// of 16 columns.
///
/// ```no_run
/// # fn run(conn: &mut diesel::PgConnection) -> diesel::QueryResult<()> {
/// use bemi_query::diesel_schema::changes;
/// use diesel::prelude::*;
///
/// let keys: Vec<Option<String>> = changes::table
///     .filter(changes::table_.eq("todo"))
///     .order((changes::commit_lsn.asc(), changes::ordinal.asc()))
///     .select(changes::primary_key)
///     .load(conn)?;
/// # drop(keys); Ok(()) }
/// ```
pub mod schema {
    // `table!` generates the table's items without docs.
    #![allow(missing_docs)]

    diesel::table! {
        changes (id) {
            id -> Uuid,
            primary_key -> Nullable<Varchar>,
            before -> Jsonb,
            after -> Jsonb,
            context -> Jsonb,
            database -> Varchar,
            schema -> Varchar,
            #[sql_name = "table"]
            table_ -> Varchar,
            operation -> Text,
            committed_at -> Timestamptz,
            queued_at -> Timestamptz,
            created_at -> Timestamptz,
            transaction_id -> Int8,
            position -> Int8,
            commit_lsn -> Nullable<Int8>,
            ordinal -> Nullable<Int4>,
        }
    }
}

/// Runs a read API future on a blocking Diesel `PgConnection` to its end, without an async
/// runtime: its statements run when it is polled, so it finishes in one poll.
///
/// ```no_run
/// # fn run(conn: &mut diesel::PgConnection) -> bemi_core::Result<()> {
/// let query = bemi_query::ChangeQuery::history("todo".parse()?, "7");
/// let history = bemi_query::blocking(query.fetch(conn))?;
/// # drop(history); Ok(()) }
/// ```
///
/// # Errors
///
/// The future's own, and [`ErrorKind::Config`](bemi_core::ErrorKind::Config) when it waits on
/// something else than a blocking connection (a client of an async driver).
pub fn blocking<T>(future: impl Future<Output = Result<T>>) -> Result<T> {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => Err(bemi_core::Error::config(
            "bemi_query::blocking runs the read API on a blocking Diesel connection; this \
             future waited on an async client: .await it on a runtime instead",
        )),
    }
}
