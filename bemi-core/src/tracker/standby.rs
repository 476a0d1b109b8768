//! Waiting as a standby while another process streams from the slot.
//!
//! PostgreSQL lets one process at a time stream from a replication slot: the slot is `active`
//! while its walsender runs, and `START_REPLICATION` by anyone else fails with SQLSTATE 55006.
//! That is the lock the trackers share, and the only one they need: a standby watches the
//! slot's `active_pid` at a short interval and tries to take the slot over as soon as it is
//! free (after the active process stopped, or died and its walsender noticed). Several standbys
//! may race for it; the server lets one win and the others go on waiting. The new active one
//! resumes from the position the sink recorded, so nothing is lost, and the sink drops what
//! the old one had stored past it, so nothing is doubled.
//!
//! An advisory lock beside it would be a second lock that can disagree with the first (held by
//! a process whose walsender is gone, or released while it still streams), so it is not used.

use tokio::sync::watch;

use super::{stop_requested, Settings};

/// Waits until the slot is not active (or its state cannot be read: the next session start
/// then tells why). Returns `false` if a stop was requested meanwhile.
pub(super) async fn wait_until_free(config: &Settings, stop: &mut watch::Receiver<bool>) -> bool {
    let watch = async {
        let Ok(sql) = config.source.connect().await else {
            return tokio::time::sleep(config.standby_interval).await;
        };
        loop {
            let active = sql
                .query_opt(
                    "SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                    &[&config.slot],
                )
                .await;
            match active {
                Ok(Some(row)) if row.get::<_, Option<i32>>(0).is_some() => {
                    tokio::time::sleep(config.standby_interval).await
                }
                _ => return,
            }
        }
    };
    tokio::select! {
        () = watch => true,
        () = stop_requested(stop) => false,
    }
}
