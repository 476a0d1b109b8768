//! diesel-async (feature `diesel-async`): `AsyncPgConnection`.

use std::future::Future;

use diesel_async::{AsyncPgConnection, RunQueryDsl as _};

use super::diesel_row::{error, query, FirstColumn};
use crate::{Database, Statement};
use bemi_core::Result;

impl Database for AsyncPgConnection {
    fn rows(
        &mut self,
        statement: &Statement,
    ) -> impl Future<Output = Result<Vec<Option<String>>>> + Send {
        let query = query(statement);
        async move {
            let rows = query.load::<FirstColumn>(self).await.map_err(error)?;
            Ok(rows.into_iter().map(|row| row.0).collect())
        }
    }

    fn execute(&mut self, statement: &Statement) -> impl Future<Output = Result<u64>> + Send {
        let query = query(statement);
        async move {
            let rows = query.execute(self).await.map_err(error)?;
            Ok(rows as u64)
        }
    }
}
