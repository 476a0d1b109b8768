//! The integration tests of bemi-cli, in one test binary (one link, one shared throwaway
//! PostgreSQL for the tests that need no server of their own).

mod catch_up;
mod crash;
mod help;
mod history;
mod least_privilege;
mod many_sources;
mod monitoring;
mod nats;
mod partitions;
mod rules;
mod secrets;
mod standby;
mod ui;
mod worker;
mod worker_process;
mod workload;
