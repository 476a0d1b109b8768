//! What every request handler shares: the connection pools, the settings and the CSRF token.

use bemi_core::changes_table::ChangesTable;
use bemi_core::{Error, ErrorKind, Result, TrackerWatch};
use deadpool_postgres::{Object, Pool};
use rand::RngCore;
use tokio_postgres::{Client, Transaction};

use crate::UiConfig;

pub(crate) struct State {
    source: Pool,
    /// `None` when `changes` is in the tracked database.
    changes: Option<Pool>,
    pub(crate) table: ChangesTable,
    /// The tracked database's name: only its changes are shown.
    pub(crate) database: String,
    pub(crate) allow_revert: bool,
    pub(crate) token: Option<String>,
    /// Every form that writes carries it; made anew at each start.
    pub(crate) csrf: String,
    pub(crate) tracker: Option<TrackerWatch>,
}

impl State {
    pub(crate) fn new(config: UiConfig) -> Result<Self> {
        if config.token.as_deref() == Some("") {
            return Err(Error::config("the UI's token is empty"));
        }
        let changes = match &config.changes_database {
            Some(options) if *options != config.source => Some(options.pool(config.pool_size)?),
            _ => None,
        };
        let mut csrf = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut csrf);
        Ok(State {
            source: config.source.pool(config.pool_size)?,
            changes,
            table: config.changes_table,
            database: config.source.dbname().to_owned(),
            allow_revert: config.allow_revert,
            token: config.token,
            csrf: csrf.iter().map(|b| format!("{b:02x}")).collect(),
            tracker: config.tracker,
        })
    }

    /// A connection to the tracked database.
    pub(crate) async fn source(&self) -> Result<Object> {
        connection(&self.source).await
    }

    /// A connection to the database holding `changes` (the tracked database's pool when it is
    /// the same database).
    pub(crate) async fn changes(&self) -> Result<Object> {
        connection(self.changes.as_ref().unwrap_or(&self.source)).await
    }
}

async fn connection(pool: &Pool) -> Result<Object> {
    pool.get().await.map_err(|e| {
        Error::new(ErrorKind::Connect, "could not connect to the database").with_source(e)
    })
}

/// A read-only transaction: what every page reads in.
pub(crate) async fn read_only(client: &mut Client) -> Result<Transaction<'_>> {
    Ok(client.build_transaction().read_only(true).start().await?)
}
