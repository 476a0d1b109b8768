//! Where the decoder learns a table's primary key, which the stream does not carry.
//!
//! With `REPLICA IDENTITY FULL` pgoutput flags every column as a key column, so the primary key
//! must come from elsewhere. [`CatalogKeys`] asks the tracked database, as of the commit of the
//! transaction being decoded: first the key history the setup's event trigger keeps
//! ([`KEY_HISTORY`](crate::setup::KEY_HISTORY)), so a table dropped or re-keyed while the
//! tracker lagged keeps the key of each change's time; then, for tables the history does not
//! know yet (no setup trigger, or changes older than its first record), the live catalog
//! (`pg_index`). A table that neither shows yet, created by the very transaction being
//! decoded, is looked up again for a moment: the server streams a transaction as soon as its
//! commit is flushed, which can be before other sessions see it. Tests and benchmarks decode
//! without a server through a closure.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::{Lsn, Oid};

/// A source of primary keys for the [`RowDecoder`](crate::RowDecoder).
///
/// Asked once per Relation message (once per table and session, and after each `ALTER TABLE`),
/// never per row. Implemented by [`CatalogKeys`] and by closures
/// `FnMut(Oid, Lsn) -> Vec<String>`:
///
/// ```
/// use bemi_core::{KeyLookup, Lsn, Oid, RowDecoder};
///
/// // Every table's key is its `id` column.
/// let decoder = RowDecoder::new(|_table: Oid, _commit: Lsn| vec!["id".to_owned()]);
/// # let _ = decoder;
/// ```
#[async_trait]
pub trait KeyLookup: Send {
    /// The primary key's column names, in key order, of the table `relation` as it was when the
    /// transaction committing at `commit_lsn` committed; empty when it had none (the decoder
    /// then uses the replica identity's columns unless the identity is FULL).
    async fn primary_key(&mut self, relation: Oid, commit_lsn: Lsn) -> Result<Vec<String>>;
}

#[async_trait]
impl<F> KeyLookup for F
where
    F: FnMut(Oid, Lsn) -> Vec<String> + Send,
{
    async fn primary_key(&mut self, relation: Oid, commit_lsn: Lsn) -> Result<Vec<String>> {
        Ok(self(relation, commit_lsn))
    }
}

/// Primary keys from the tracked database: its key history, then its catalog.
#[derive(Debug)]
pub struct CatalogKeys {
    client: Client,
    /// Whether the key history can be read: unknown until first asked.
    history: Option<bool>,
}

impl CatalogKeys {
    /// Looks keys up through `client`, an ordinary connection to the tracked database.
    pub fn new(client: Client) -> Self {
        CatalogKeys {
            client,
            history: None,
        }
    }

    /// The connection keys are looked up through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The key as the history recorded it last before `commit_lsn`; `None` when the history has
    /// no record of the table from before then, or cannot be read (no setup trigger, no
    /// privilege: said once).
    async fn recorded(&mut self, relation: Oid, commit_lsn: Lsn) -> Result<Option<Vec<String>>> {
        if self.history == Some(false) {
            return Ok(None);
        }
        let (schema, table) = crate::setup::KEY_HISTORY;
        let sql = format!(
            "SELECT key_columns FROM {} WHERE relid = $1 AND lsn < $2::text::pg_lsn \
             ORDER BY lsn DESC LIMIT 1",
            crate::sql::quote_qualified(Some(schema), table)
        );
        match self
            .client
            .query_opt(&sql, &[&relation.0, &commit_lsn.to_string()])
            .await
        {
            Ok(row) => {
                self.history = Some(true);
                Ok(row.map(|row| row.get(0)))
            }
            Err(e) if self.history.is_none() && e.as_db_error().is_some() => {
                let error = Error::from(e);
                if error.code() == Some("42P01") {
                    tracing::info!("no key history (the setup installs it with an all-tables publication); primary keys come from the live catalog");
                } else {
                    tracing::warn!(error = %error.report(), "the key history cannot be read; primary keys come from the live catalog (a table dropped or re-keyed while the tracker lags gets the wrong key)");
                }
                self.history = Some(false);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The primary key's column names in key order, from the live catalog; `None` when the
    /// catalog has no such table.
    async fn current(&self, relation: Oid) -> Result<Option<Vec<String>>> {
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_class WHERE oid = $1) \
                                 THEN ({}) END",
                    crate::setup::key_columns_sql("$1")
                ),
                &[&relation.0],
            )
            .await?;
        Ok(row.get(0))
    }
}

/// How long a lookup waits for a table the catalog does not show yet. The server streams a
/// transaction once its commit is flushed, a moment before other sessions see it committed:
/// the key of a table created in that transaction is not readable until then.
const INVISIBLE_TABLE_WAIT: Duration = Duration::from_secs(2);

#[async_trait]
impl KeyLookup for CatalogKeys {
    /// The key the history recorded before `commit_lsn`, else the catalog's. A table that
    /// neither knows yet (created by the transaction being decoded, whose commit other sessions
    /// may not see yet) is looked up again until it shows, for up to 2 seconds; after that it
    /// has no key.
    async fn primary_key(&mut self, relation: Oid, commit_lsn: Lsn) -> Result<Vec<String>> {
        let deadline = Instant::now() + INVISIBLE_TABLE_WAIT;
        loop {
            if let Some(key) = self.recorded(relation, commit_lsn).await? {
                return Ok(key);
            }
            if let Some(key) = self.current(relation).await? {
                return Ok(key);
            }
            if Instant::now() >= deadline {
                // The decoder warns about a tracked table without a key.
                return Ok(Vec::new());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
