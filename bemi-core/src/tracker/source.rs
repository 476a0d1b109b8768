//! The source server's identity across sessions, to notice a failover or another cluster at
//! the same address.
//!
//! Each session starts with `IDENTIFY_SYSTEM`, which names the cluster (its system
//! identifier, shared by a primary and its physical replicas) and its timeline (raised by
//! every promotion). A new system identifier means another cluster answers now: its WAL
//! positions mean nothing for the stored ones, so the tracker stops. A new timeline means the
//! source [failed over](https://www.postgresql.org/docs/current/warm-standby-failover.html) to
//! a replica. Before PostgreSQL 17 a replica has no copy of the primary's logical slots, so the
//! slot is missing there and the changes since the last stored position cannot be streamed
//! again; with PostgreSQL 17's failover slots (`failover = true`, synchronized to the standby)
//! the slot is there and the tracker goes on, replaying what the old primary had not confirmed
//! (stored once: the sink drops replays).

use crate::config::ConnectOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::replication::{ReplicationClient, SystemInfo};

/// What the sessions so far saw of the source.
#[derive(Debug, Default)]
pub(super) struct SourceIdentity {
    system_id: Option<String>,
    /// The timeline of the first session, then of the latest.
    timelines: Option<(u32, u32)>,
}

impl SourceIdentity {
    /// Records what a new session's `IDENTIFY_SYSTEM` says; refuses another cluster, and
    /// warns of a new timeline.
    pub(super) fn check(&mut self, system: &SystemInfo, slot: &str) -> Result<()> {
        if let Some(known) = &self.system_id {
            if *known != system.system_id {
                return Err(Error::new(
                    ErrorKind::SourceChanged,
                    format!(
                        "the source is another PostgreSQL cluster now (system identifier {}, \
                         was {known}): its WAL positions have nothing to do with the ones \
                         stored from slot {slot:?}, so the tracker stops rather than mix them. \
                         If the database moved to this cluster on purpose, start the tracker \
                         again: it checks this cluster's slot against what was stored",
                        system.system_id
                    ),
                ));
            }
        }
        self.system_id = Some(system.system_id.clone());
        match &mut self.timelines {
            None => self.timelines = Some((system.timeline, system.timeline)),
            Some((_, latest)) if *latest != system.timeline => {
                tracing::warn!(
                    from = *latest,
                    to = system.timeline,
                    slot,
                    "the source failed over to a new timeline (a replica was promoted); \
                     going on only if slot is there (a PostgreSQL 17 failover slot)"
                );
                *latest = system.timeline;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Asks the source again who it is, after a session found the slot missing: a replica
    /// promoted while the session started (it identified itself on the old timeline) shows
    /// its new timeline now. Returns the error of another cluster; a source that cannot be
    /// asked is left to the next session.
    pub(super) async fn recheck(&mut self, source: &ConnectOptions, slot: &str) -> Result<()> {
        let identified = async {
            ReplicationClient::connect(source)
                .await?
                .identify_system()
                .await
        };
        match identified.await {
            Ok(system) => self.check(&system, slot),
            Err(_) => Ok(()),
        }
    }

    /// Explains an error that ended a session after a failover: a missing slot there means
    /// the changes not yet stored are gone.
    pub(super) fn explain(&self, error: Error, slot: &str) -> Error {
        let Some((first, latest)) = self.timelines.filter(|(first, latest)| first != latest) else {
            return error;
        };
        if error.kind() != ErrorKind::SlotMissing {
            return error;
        }
        Error::new(
            ErrorKind::SourceChanged,
            format!(
                "the source failed over (timeline {first} → {latest}) to a server without \
                 replication slot {slot:?}: before PostgreSQL 17's failover slots, a replica has \
                 no copy of the primary's slots. Lost from the trail: the changes the old primary \
                 committed after the last stored position that the tracker had not stored yet, \
                 and everything committed on the new primary until a slot exists there. To \
                 resume, start once with the gap accepted (`bemi run --accept-gap`, \
                 TrackerBuilder::accept_gap): it creates the slot and records the gap in the \
                 trail. To keep the slot through failovers, use PostgreSQL 17 failover slots \
                 (see the README)"
            ),
        )
        .with_source(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Lsn;

    fn system(system_id: &str, timeline: u32) -> SystemInfo {
        SystemInfo {
            system_id: system_id.to_owned(),
            timeline,
            xlog_pos: Lsn::ZERO,
            dbname: Some("app".to_owned()),
        }
    }

    fn slot_missing() -> Error {
        Error::new(
            ErrorKind::SlotMissing,
            "replication slot \"bemi\" is missing",
        )
    }

    #[test]
    fn the_same_cluster_on_the_same_timeline_goes_on() {
        let mut identity = SourceIdentity::default();
        identity.check(&system("7", 1), "bemi").unwrap();
        identity.check(&system("7", 1), "bemi").unwrap();
        let error = identity.explain(slot_missing(), "bemi");
        assert_eq!(error.kind(), ErrorKind::SlotMissing);
    }

    #[test]
    fn another_cluster_stops_the_tracker() {
        let mut identity = SourceIdentity::default();
        identity.check(&system("7", 1), "bemi").unwrap();
        let error = identity.check(&system("8", 1), "bemi").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::SourceChanged);
        assert!(!error.is_transient());
        assert!(
            error.message().contains("system identifier 8, was 7"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_slot_after_a_new_timeline_is_explained_as_a_failover() {
        let mut identity = SourceIdentity::default();
        identity.check(&system("7", 1), "bemi").unwrap();
        identity.check(&system("7", 2), "bemi").unwrap();
        let error = identity.explain(slot_missing(), "bemi");
        assert_eq!(error.kind(), ErrorKind::SourceChanged);
        assert!(!error.is_transient());
        assert!(error.message().contains("timeline 1 → 2"), "{error}");
        assert!(error.message().contains("--accept-gap"), "{error}");
        assert!(
            error.report().contains("is missing"),
            "the cause is kept: {error}"
        );
        let other = identity.explain(Error::new(ErrorKind::Connect, "gone"), "bemi");
        assert_eq!(other.kind(), ErrorKind::Connect);
    }
}
