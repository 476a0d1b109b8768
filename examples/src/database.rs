//! The examples' database: `DATABASE_URL`, or a throwaway PostgreSQL started for the run.

use std::time::Duration;

use bemi_core::sink::PostgresSink;
use bemi_core::{ConnectOptions, Tracker, TrackerHandle};
use bemi_temp_postgres::TempPostgres;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

use crate::BoxError;

/// The database an example runs on.
#[derive(Debug)]
pub struct Database {
    options: ConnectOptions,
    server: Option<TempPostgres>,
}

impl Database {
    /// The database of `DATABASE_URL` when it is set (PostgreSQL 14+ with
    /// `wal_level = logical`, as a role with REPLICATION), or else a throwaway PostgreSQL
    /// started now and removed by [`close`](Self::close).
    pub async fn from_env() -> Result<Database, BoxError> {
        match std::env::var("DATABASE_URL") {
            Ok(url) => Ok(Database {
                options: url.parse()?,
                server: None,
            }),
            Err(_) => {
                // initdb and the server start block for a few seconds
                let server = tokio::task::spawn_blocking(TempPostgres::start).await??;
                Ok(Database {
                    options: server.url("postgres").parse()?,
                    server: Some(server),
                })
            }
        }
    }

    /// Connection settings for the tracker.
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// The URL of the throwaway server's database, when one was started.
    pub fn throwaway_url(&self) -> Option<String> {
        self.server.as_ref().map(|pg| pg.url("postgres"))
    }

    /// An sqlx pool on the database.
    pub async fn pool(&self) -> sqlx::Result<PgPool> {
        PgPool::connect_with(sqlx_options(&self.options)).await
    }

    /// Stops and removes the throwaway server, if one was started.
    pub async fn close(self) {
        if let Some(server) = self.server {
            let _ = tokio::task::spawn_blocking(move || drop(server)).await;
        }
    }
}

/// sqlx settings for the database of `options`.
pub fn sqlx_options(options: &ConnectOptions) -> PgConnectOptions {
    options
        .to_url()
        .parse()
        .expect("sqlx reads the URLs of ConnectOptions")
}

/// Spawns a tracker of the database of `options` that stores changes in its `changes` table,
/// and waits until it streams.
pub async fn spawn_tracker(
    options: &ConnectOptions,
    slot: &str,
    publication: &str,
) -> Result<TrackerHandle, BoxError> {
    let sink = PostgresSink::connect(options)?;
    let tracker = Tracker::builder(options.clone(), sink)
        .slot(slot)
        .publication(publication)
        .flush_interval(Duration::from_millis(50))
        .start()
        .await?;
    Ok(tracker)
}

/// The audit trail as JSON objects (`id`, `operation`, `table`, `primary_key`, `before`,
/// `after`, `context`, `committed_at`), oldest first: the changes committed at or after `since`
/// (RFC 3339, as `SELECT to_json(now()) #>> '{}'` gives), of `table` or of every table. Read
/// with `bemi_query` on the app's own sqlx pool.
pub async fn changes_since(
    pool: &PgPool,
    since: &str,
    table: Option<&str>,
) -> Result<Vec<serde_json::Value>, BoxError> {
    let since = chrono::DateTime::parse_from_rfc3339(since)?.to_utc();
    let mut filter = bemi_query::ChangeFilter::new().since(since);
    if let Some(table) = table {
        filter = filter.table(table);
    }
    let changes = filter.query().fetch(pool).await?;
    Ok(changes
        .iter()
        .map(|change| {
            serde_json::json!({
                "id": change.id,
                "operation": change.operation,
                "table": change.table,
                "primary_key": change.primary_key,
                "before": change.before,
                "after": change.after,
                "context": change.context,
                "committed_at": change.committed_at,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlx_options_follow_the_connect_options() {
        let options: ConnectOptions = "postgres://app:secret@db.local:6000/shop?sslmode=disable"
            .parse()
            .unwrap();
        let sqlx = sqlx_options(&options);
        assert_eq!(sqlx.get_host(), "db.local");
        assert_eq!(sqlx.get_port(), 6000);
        assert_eq!(sqlx.get_username(), "app");
        assert_eq!(sqlx.get_database(), Some("shop"));
        assert!(matches!(
            sqlx.get_ssl_mode(),
            sqlx::postgres::PgSslMode::Disable
        ));
        let socket: ConnectOptions = "host=/run/pg port=5433 dbname=x".parse().unwrap();
        assert_eq!(
            sqlx_options(&socket).get_socket(),
            Some(&std::path::PathBuf::from("/run/pg"))
        );
    }
}
