//! The integration tests of bemi-core, in one test binary (one link, one shared throwaway
//! PostgreSQL for the tests that need no server of their own).

mod auth_tls;
mod catch_up;
mod context;
mod copy;
mod decoding;
mod failover;
mod feedback;
mod keys;
#[cfg(feature = "nats")]
mod nats;
mod outage;
mod partitions;
mod pipelining;
mod read_your_writes;
mod reliability;
mod rules;
mod setup_errors;
mod setup_security;
mod standby;
mod tracker;
mod values;
