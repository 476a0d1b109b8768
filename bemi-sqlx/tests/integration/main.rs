//! The integration tests of bemi-sqlx, in one test binary (one link, one shared throwaway
//! PostgreSQL for the tests that need no server of their own).

mod common;
#[cfg(feature = "sea-orm")]
mod with_sea_orm;
mod with_sqlx;
