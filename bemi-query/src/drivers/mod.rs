//! [`Database`](crate::Database) for the drivers other than tokio-postgres, each behind the
//! feature of its name. Each is a thin translation: bind [`Param`](crate::Param)s with their
//! types, read one text column, count written rows, and turn the driver's error into ours.

#[cfg(feature = "diesel")]
pub(crate) mod diesel;
#[cfg(feature = "diesel-async")]
mod diesel_async;
#[cfg(any(feature = "diesel", feature = "diesel-async"))]
mod diesel_row;
#[cfg(feature = "sea-orm")]
pub(crate) mod sea_orm;
#[cfg(feature = "sqlx")]
mod sqlx;

/// The error of a driver as ours: a database error with the SQLSTATE when the server gave one.
#[cfg(any(
    feature = "sqlx",
    feature = "sea-orm",
    feature = "diesel",
    feature = "diesel-async"
))]
fn db_error(
    code: Option<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> bemi_core::Error {
    let source = source.into();
    let error = bemi_core::Error::new(
        bemi_core::ErrorKind::Db,
        format!("the database refused a statement of the read API: {source}"),
    );
    match code {
        Some(code) => error.with_code(code),
        None => error,
    }
    .with_source(source)
}
