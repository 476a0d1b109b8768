//! Shared by the end-to-end tests: the tracked test database of `bemi_testkit` with an
//! sqlx pool on it.

#![allow(dead_code, unreachable_pub)]

use std::ops::Deref;
use std::time::Duration;

use bemi_core::ConnectOptions;
use bemi_testkit::Tracked;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub use bemi_testkit::{oversized_context, tricky_context, Recorded};

/// sqlx settings for the same database as `options`.
pub fn sqlx_options(options: &ConnectOptions) -> PgConnectOptions {
    options
        .to_url()
        .parse()
        .expect("sqlx reads the URLs of ConnectOptions")
}

/// The contexts of `changes`, in order.
pub fn contexts(changes: &[Recorded]) -> Vec<serde_json::Value> {
    changes.iter().map(|c| c.context.clone()).collect()
}

/// A tracked test database and an sqlx pool on it.
pub struct Harness {
    tracked: Tracked,
    pub pool: PgPool,
}

impl Deref for Harness {
    type Target = Tracked;

    fn deref(&self) -> &Tracked {
        &self.tracked
    }
}

impl Harness {
    pub async fn start() -> Harness {
        let tracked = Tracked::start().await;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(sqlx_options(&tracked.db.options()))
            .await
            .expect("sqlx pool");
        Harness { tracked, pool }
    }

    pub async fn shutdown(self) {
        tokio::time::timeout(Duration::from_secs(30), self.pool.close())
            .await
            .expect("the pool closes (does the test still hold a connection?)");
        self.tracked.shutdown().await;
    }
}
