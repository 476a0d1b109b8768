//! The integration tests of bemi-query, in one test binary (one link, one shared throwaway
//! PostgreSQL for the tests that need no server of their own).

#[cfg(all(feature = "sqlx", feature = "sea-orm", feature = "diesel-async"))]
mod drivers;
mod query;
mod shapes;
