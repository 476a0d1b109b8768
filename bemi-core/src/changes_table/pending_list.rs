//! The GIN indexes' pending lists, emptied off the write path.
//!
//! A GIN index with a pending list (`fastupdate`, PostgreSQL's default) takes an insert's
//! entries into a list and merges them into the index in bulk: the sink's batches go in at
//! half the cost of updating the index entry by entry. But the insert that overflows the list
//! (`gin_pending_list_limit`, 4 MB) merges it itself and stalls, for up to a second on a large
//! table, and every change committed meanwhile waits behind it. The cleaner merges the lists
//! on a connection of its own twice a second, so the sink's inserts find them short.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::ChangesTable;
use crate::error::{Error, Result};

/// How often the pending lists are merged: short enough that a busy sink never fills one.
const EVERY: Duration = Duration::from_millis(500);

/// Merges the pending lists of the GIN indexes of a changes table and of its partitions, until
/// dropped.
#[derive(Debug)]
pub(crate) struct PendingListCleaner {
    task: JoinHandle<()>,
}

impl PendingListCleaner {
    /// Starts cleaning `table`'s lists through connections of `pool`. Without ownership of the
    /// indexes (which `gin_clean_pending_list` needs) it warns once and stops: inserts and
    /// autovacuum empty the lists then, as they do without a cleaner.
    pub(crate) fn spawn(pool: Pool, table: ChangesTable) -> Self {
        let task = tokio::spawn(
            async move {
                let mut ticks = tokio::time::interval(EVERY);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    match clean(&pool, &table).await {
                        Ok(pages) if pages > 0 => {
                            tracing::trace!(pages, "merged the GIN pending lists")
                        }
                        Ok(_) => {}
                        Err(e) if e.code() == Some("42501") => {
                            tracing::warn!(
                                table = %table.qualified(),
                                error = %e.report(),
                                "the sink's role does not own the changes table's GIN indexes, \
                                 so their pending lists are left to inserts and autovacuum (an \
                                 insert may stall while it merges one)"
                            );
                            return;
                        }
                        Err(e) => tracing::debug!(
                            error = %e.report(),
                            "could not merge the GIN pending lists; trying again"
                        ),
                    }
                }
            }
            .in_current_span(),
        );
        PendingListCleaner { task }
    }
}

impl Drop for PendingListCleaner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Merges every pending list of the table's GIN indexes (those of its partitions, for a
/// partitioned table); returns how many pages they held.
async fn clean(pool: &Pool, table: &ChangesTable) -> Result<i64> {
    let client = pool.get().await.map_err(|e| {
        Error::new(crate::ErrorKind::Connect, "no connection for the cleaner").with_source(e)
    })?;
    let row = client
        .query_one(
            "SELECT coalesce(sum(pg_catalog.gin_clean_pending_list(c.oid)), 0)::int8 \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
             JOIN pg_catalog.pg_am a ON a.oid = c.relam \
             WHERE a.amname = 'gin' AND c.relkind = 'i' \
               AND NOT coalesce(c.reloptions @> ARRAY['fastupdate=off'], false) \
               AND i.indrelid IN (SELECT to_regclass($1) \
                                  UNION ALL SELECT inhrelid FROM pg_catalog.pg_inherits \
                                            WHERE inhparent = to_regclass($1))",
            &[&table.qualified()],
        )
        .await?;
    Ok(row.get(0))
}
