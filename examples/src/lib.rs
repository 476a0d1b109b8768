//! Shared code for the examples: where the database comes from, the tracker running in process,
//! reading the audit trail back, and the todo API of the `axum_app` example (a library so that
//! the end-to-end tests run the very same app).

mod database;
pub mod todo_app;

pub use database::{changes_since, spawn_tracker, sqlx_options, Database};

/// The error type of the examples: anything, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
