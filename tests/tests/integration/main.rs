//! The integration tests of tests, in one test binary (one link, one shared throwaway
//! PostgreSQL for the tests that need no server of their own).

mod axum_app;
mod readme_example;
mod soak;
