//! The one text column of a read API statement, for Diesel's `sql_query`, and the statement
//! with its parameters bound (shared by Diesel and diesel-async).

use diesel::deserialize::{self, FromSql, QueryableByName};
use diesel::pg::Pg;
use diesel::query_builder::BoxedSqlQuery;
use diesel::row::{Field as _, NamedRow};
use diesel::sql_types::{BigInt, Nullable, Text};

use crate::{Param, Statement};

/// The first column of a row, whatever its name (`EXPLAIN` names its own).
pub(super) struct FirstColumn(pub(super) Option<String>);

impl QueryableByName<Pg> for FirstColumn {
    fn build<'a>(row: &impl NamedRow<'a, Pg>) -> deserialize::Result<Self> {
        let field = diesel::row::Row::get(row, 0usize).ok_or("a row without columns")?;
        let value =
            <Option<String> as FromSql<Nullable<Text>, Pg>>::from_nullable_sql(field.value())?;
        Ok(FirstColumn(value))
    }
}

/// The statement as a Diesel query with its parameters bound.
pub(super) fn query(
    statement: &Statement,
) -> BoxedSqlQuery<'static, Pg, diesel::query_builder::SqlQuery> {
    let mut query = diesel::sql_query(statement.sql().to_owned()).into_boxed::<Pg>();
    for param in statement.params() {
        query = match param {
            Param::Text(text) => query.bind::<Text, _>(text.clone()),
            Param::Int8(int) => query.bind::<BigInt, _>(*int),
        };
    }
    query
}

/// Diesel's error as ours, with the SQLSTATE Diesel keeps for the errors it names.
pub(super) fn error(e: diesel::result::Error) -> bemi_core::Error {
    use diesel::result::{DatabaseErrorKind, Error};
    let code = match &e {
        Error::DatabaseError(kind, _) => match kind {
            DatabaseErrorKind::UniqueViolation => Some("23505"),
            DatabaseErrorKind::ForeignKeyViolation => Some("23503"),
            DatabaseErrorKind::NotNullViolation => Some("23502"),
            DatabaseErrorKind::CheckViolation => Some("23514"),
            DatabaseErrorKind::SerializationFailure => Some("40001"),
            DatabaseErrorKind::ReadOnlyTransaction => Some("25006"),
            DatabaseErrorKind::ClosedConnection => Some("08006"),
            _ => None,
        },
        _ => None,
    };
    super::db_error(code.map(str::to_owned), e)
}
