//! The integration tests of bemi-diesel, in one test binary (one link, one shared throwaway
//! PostgreSQL for the tests that need no server of their own).

#[cfg(feature = "async")]
mod async_pg;
mod common;
mod sync;
