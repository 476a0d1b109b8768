//! SeaORM (feature `sea-orm`): connections and transactions.

use std::future::Future;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, RuntimeErr, Value,
};

use super::db_error;
use crate::{Database, Param, Statement};
use bemi_core::Result;

fn statement_of(statement: &Statement) -> sea_orm::Statement {
    let values: Vec<Value> = statement
        .params()
        .iter()
        .map(|param| match param {
            Param::Text(text) => Value::from(text.clone()),
            Param::Int8(int) => Value::from(*int),
        })
        .collect();
    sea_orm::Statement::from_sql_and_values(DbBackend::Postgres, statement.sql(), values)
}

fn error(e: DbErr) -> bemi_core::Error {
    let code = match &e {
        DbErr::Conn(RuntimeErr::SqlxError(sqlx))
        | DbErr::Exec(RuntimeErr::SqlxError(sqlx))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx)) => sqlx
            .as_database_error()
            .and_then(|db| db.code())
            .map(|code| code.into_owned()),
        _ => None,
    };
    db_error(code, e)
}

async fn rows<C: ConnectionTrait>(conn: &C, statement: &Statement) -> Result<Vec<Option<String>>> {
    let rows = conn
        .query_all_raw(statement_of(statement))
        .await
        .map_err(error)?;
    rows.iter()
        .map(|row| row.try_get_by_index::<Option<String>>(0).map_err(error))
        .collect()
}

async fn execute<C: ConnectionTrait>(conn: &C, statement: &Statement) -> Result<u64> {
    let done = conn
        .execute_raw(statement_of(statement))
        .await
        .map_err(error)?;
    Ok(done.rows_affected())
}

impl Database for &DatabaseConnection {
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

impl Database for &DatabaseTransaction {
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

/// The `changes` table as a SeaORM entity, for queries with SeaORM's own builder; a
/// [`Model`](changes::Model) converts into a [`StoredChange`](crate::StoredChange).
///
/// ```no_run
/// # async fn run(db: &sea_orm::DatabaseConnection) -> bemi_core::Result<()> {
/// use bemi_query::sea_orm_changes as changes;
/// use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _};
///
/// let models = changes::Entity::find()
///     .filter(changes::Column::Table.eq("todo"))
///     .order_by_asc(changes::Column::CommitLsn)
///     .all(db)
///     .await
///     .unwrap();
/// for model in models {
///     let change = bemi_query::StoredChange::try_from(model)?;
///     println!("{} {}", change.operation, change.diff());
/// }
/// # Ok(()) }
/// ```
pub mod changes {
    // The derives generate the entity's items (Column, Entity, ActiveModel, …) without docs.
    #![allow(missing_docs)]

    use sea_orm::entity::prelude::*;

    /// One row of `changes`, as the sink writes it.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "changes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub primary_key: Option<String>,
        #[sea_orm(column_type = "JsonBinary")]
        pub before: Json,
        #[sea_orm(column_type = "JsonBinary")]
        pub after: Json,
        #[sea_orm(column_type = "JsonBinary")]
        pub context: Json,
        pub database: String,
        pub schema: String,
        pub table: String,
        pub operation: String,
        pub committed_at: DateTimeWithTimeZone,
        pub queued_at: DateTimeWithTimeZone,
        pub created_at: DateTimeWithTimeZone,
        pub transaction_id: i64,
        pub position: i64,
        pub system_id: Option<i64>,
        pub commit_lsn: Option<i64>,
        pub ordinal: Option<i32>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl TryFrom<changes::Model> for crate::StoredChange {
    type Error = bemi_core::Error;

    /// The model as a stored change. JSON values are printed as serde_json prints them
    /// (compact), where the read API keeps the server's text; the values are the same.
    ///
    /// # Errors
    ///
    /// A row without `commit_lsn` (stored before the table was upgraded), or with values out
    /// of range.
    fn try_from(model: changes::Model) -> Result<Self> {
        crate::StoredChange::from_parts(crate::ChangeParts {
            id: model.id.to_string(),
            primary_key: model.primary_key,
            before: model.before.to_string(),
            after: model.after.to_string(),
            context: model.context.to_string(),
            database: model.database,
            schema: model.schema,
            table: model.table,
            operation: model.operation,
            committed_at: model.committed_at.to_utc(),
            queued_at: model.queued_at.to_utc(),
            created_at: model.created_at.to_utc(),
            transaction_id: model.transaction_id,
            position: model.position,
            commit_lsn: model.commit_lsn,
            ordinal: model.ordinal.map(i64::from),
        })
    }
}
