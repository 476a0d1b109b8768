//! Stitching: joining each row change with the application context of its own transaction.
//!
//! The rule (ARCHITECTURE.md): within one transaction, a change takes the most recent `_bemi`
//! message that precedes it in the stream; a change with no preceding message takes the
//! transaction's first message (so a context emitted after the writes still applies, as in
//! Bemi); a transaction without messages gives `{}`. Other prefixes (`_bemi_heartbeat`
//! included) and non-transactional messages are not context.
//!
//! Memory stays bounded by the batch, not the transaction: changes are handed on as soon as
//! their context is known. Only changes that precede the first message wait for it, and at
//! most [`Stitcher::max_waiting`] of them; past that they are released with `{}` and a warning.
//!
//! A payload that is not usable as context never stops the tracker. The change is kept and its
//! context records the problem, so nothing is silently lost:
//!
//! ```json
//! {"_bemi_invalid": {"error": "not a JSON object", "raw": "[1,2]"}}
//! ```
//!
//! A payload nested deeper than 10,000 levels of arrays and objects is recorded this way too
//! (PostgreSQL's `jsonb` accepts about 12,000 with its default `max_stack_depth`); checking a
//! payload never recurses, so any depth is safe.
//!
//! `raw` holds the payload text (invalid UTF-8 replaced by U+FFFD); for a payload over the size
//! limit it holds only the first 1,000 characters. A JSON object that `jsonb` cannot store
//! (one containing `\u0000`, or a number beyond `numeric`'s range such as `1e-20000`) is also
//! recorded this way.

use chrono::{DateTime, Utc};

use crate::change::{Change, ContextJson, Operation};
use crate::relation::RelationInfo;
use crate::row::{Row, RowEvent};
use crate::value::{contains_nul_escape, json_problem, numbers_fit_numeric};
use crate::Lsn;

/// The prefix of context messages.
pub const CONTEXT_PREFIX: &str = "_bemi";

/// The largest context accepted, in characters (Bemi's packages skip larger ones).
pub const MAX_CONTEXT_CHARS: usize = 1_000_000;

const RAW_PREFIX_CHARS: usize = 1_000;
const DEFAULT_MAX_WAITING: usize = 10_000;

/// What the stitcher reports when a transaction commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The end of the commit record: the position to confirm once the changes are stored.
    pub end_lsn: Lsn,
    /// How many changes the transaction produced (0 for a skipped replay or own writes).
    pub changes: u32,
    /// Whether the transaction was a replay at or below the resume position and was dropped.
    pub replayed: bool,
}

/// Joins row events with their transaction's context. See the [module docs](self).
#[derive(Debug)]
pub struct Stitcher {
    database: String,
    /// (schema, table) pairs never recorded; a handful at most, so a list.
    ignored_tables: Vec<(String, String)>,
    resume_after: Lsn,
    max_waiting: usize,
    txn: Option<Transaction>,
}

#[derive(Debug)]
struct Transaction {
    xid: u32,
    commit_lsn: Lsn,
    committed_at: DateTime<Utc>,
    replayed: bool,
    next_ordinal: u32,
    current: Option<ContextJson>,
    /// Changes that came before the first context message.
    waiting: Vec<Change>,
    /// Set once the waiting changes were released without context.
    released_without_context: bool,
}

impl Stitcher {
    /// A stitcher for changes of the database `database`.
    pub fn new(database: impl Into<String>) -> Self {
        Stitcher {
            database: database.into(),
            ignored_tables: Vec::new(),
            resume_after: Lsn::ZERO,
            max_waiting: DEFAULT_MAX_WAITING,
            txn: None,
        }
    }

    /// Never records changes of this table (the tracker's own `changes` table, for one), nor
    /// of its partitions as [`changes_table`](crate::changes_table) names them, which a
    /// publication that publishes partitions under their own names sends as themselves.
    pub fn ignore_table(mut self, schema: impl Into<String>, table: impl Into<String>) -> Self {
        self.ignored_tables.push((schema.into(), table.into()));
        self
    }

    fn is_ignored(&self, schema: &str, table: &str) -> bool {
        let parent = crate::changes_table::partition_parent(table);
        self.ignored_tables
            .iter()
            .any(|(s, t)| s == schema && (t == table || parent == Some(t.as_str())))
    }

    /// Drops transactions already stored: those whose commit ends at or before `durable`.
    pub fn resume_after(mut self, durable: Lsn) -> Self {
        self.resume_after = durable;
        self
    }

    /// How many changes may wait for a transaction's first context message (default 10,000).
    pub fn max_waiting(mut self, max: usize) -> Self {
        self.max_waiting = max;
        self
    }

    /// Whether a transaction has begun and not yet committed.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Feeds one event; changes whose context is known are appended to `out`. `position` is the
    /// WAL position the event arrived with, `received_at` when it arrived. Returns the commit
    /// when the event ends a transaction.
    pub fn push(
        &mut self,
        event: RowEvent,
        position: Lsn,
        received_at: DateTime<Utc>,
        out: &mut Vec<Change>,
    ) -> Option<Committed> {
        match event {
            RowEvent::Begin {
                xid,
                final_lsn,
                commit_time,
            } => {
                if self.txn.is_some() {
                    tracing::warn!(%final_lsn, "a transaction began before the previous one committed; discarding the unfinished one");
                }
                // Commit records do not overlap, so a transaction whose commit record starts
                // before the durable end position ended at or before it.
                let replayed = final_lsn < self.resume_after;
                self.txn = Some(Transaction {
                    xid: xid.0,
                    commit_lsn: final_lsn,
                    committed_at: commit_time,
                    replayed,
                    next_ordinal: 0,
                    current: None,
                    waiting: Vec::new(),
                    released_without_context: false,
                });
                None
            }
            RowEvent::Commit { end_lsn, .. } => {
                let txn = self.txn.take()?;
                out.extend(txn.waiting);
                Some(Committed {
                    end_lsn,
                    changes: if txn.replayed { 0 } else { txn.next_ordinal },
                    replayed: txn.replayed,
                })
            }
            RowEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                if prefix != CONTEXT_PREFIX {
                    return None;
                }
                let Some(txn) = self.txn.as_mut().filter(|_| transactional) else {
                    tracing::debug!(%lsn, "ignoring a non-transactional _bemi message");
                    return None;
                };
                if txn.replayed {
                    return None;
                }
                let context = parse_context(&content, lsn);
                if txn.current.is_none() {
                    for mut change in txn.waiting.drain(..) {
                        change.context = context.clone();
                        out.push(change);
                    }
                }
                txn.current = Some(context);
                None
            }
            RowEvent::Insert {
                relation,
                new,
                primary_key,
            } => {
                self.record(
                    &relation,
                    Operation::Create,
                    Row::empty(),
                    new,
                    primary_key,
                    position,
                    received_at,
                    out,
                );
                None
            }
            RowEvent::Update {
                relation,
                old,
                new,
                primary_key,
            } => {
                let before = old.unwrap_or_else(Row::empty);
                self.record(
                    &relation,
                    Operation::Update,
                    before,
                    new,
                    primary_key,
                    position,
                    received_at,
                    out,
                );
                None
            }
            RowEvent::Delete {
                relation,
                old,
                primary_key,
            } => {
                self.record(
                    &relation,
                    Operation::Delete,
                    old,
                    Row::empty(),
                    primary_key,
                    position,
                    received_at,
                    out,
                );
                None
            }
            RowEvent::Truncate { relations, .. } => {
                for relation in relations {
                    self.record(
                        &relation,
                        Operation::Truncate,
                        Row::empty(),
                        Row::empty(),
                        None,
                        position,
                        received_at,
                        out,
                    );
                }
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        relation: &RelationInfo,
        operation: Operation,
        before: Row,
        after: Row,
        primary_key: Option<String>,
        position: Lsn,
        received_at: DateTime<Utc>,
        out: &mut Vec<Change>,
    ) {
        if self.is_ignored(&relation.schema, &relation.table) {
            return;
        }
        let Some(txn) = self.txn.as_mut() else {
            tracing::warn!(%position, "a change arrived outside a transaction; ignoring it");
            return;
        };
        if txn.replayed {
            return;
        }
        let ordinal = txn.next_ordinal;
        txn.next_ordinal += 1;
        let change = Change {
            primary_key,
            before,
            after,
            context: txn.current.clone().unwrap_or_default(),
            database: self.database.clone(),
            schema: relation.schema.clone(),
            table: relation.table.clone(),
            operation,
            committed_at: txn.committed_at,
            queued_at: received_at,
            transaction_id: txn.xid,
            position,
            commit_lsn: txn.commit_lsn,
            ordinal,
        };
        if txn.current.is_some() || txn.released_without_context {
            out.push(change);
            return;
        }
        txn.waiting.push(change);
        if txn.waiting.len() > self.max_waiting {
            tracing::warn!(
                xid = txn.xid,
                waiting = txn.waiting.len(),
                "over max_waiting changes came before the transaction's first context message; \
                 storing them without context"
            );
            txn.released_without_context = true;
            out.append(&mut txn.waiting);
        }
    }
}

/// Reads a `_bemi` payload as context; a problem becomes an `_bemi_invalid` record (module docs).
pub fn parse_context(content: &[u8], lsn: Lsn) -> ContextJson {
    let text = String::from_utf8_lossy(content);
    let problem = if std::str::from_utf8(content).is_err() {
        Some("the payload is not valid UTF-8".to_owned())
    } else if content.len() > MAX_CONTEXT_CHARS && text.chars().count() > MAX_CONTEXT_CHARS {
        Some(format!(
            "the payload has {} characters, over the limit of {MAX_CONTEXT_CHARS}",
            text.chars().count()
        ))
    } else if let Some(problem) = json_problem(&text) {
        Some(format!("the payload is {problem}"))
    } else if !text.trim_start().starts_with('{') {
        Some("the payload is not a JSON object".to_owned())
    } else if contains_nul_escape(&text) {
        Some("the payload contains \\u0000, which jsonb cannot store".to_owned())
    } else if !numbers_fit_numeric(&text) {
        Some(
            "the payload has a number beyond the range of numeric, which jsonb cannot store"
                .to_owned(),
        )
    } else {
        None
    };
    let Some(error) = problem else {
        return ContextJson::from_validated(text.into_owned());
    };
    tracing::warn!(%lsn, %error, "invalid _bemi context; the change is kept with a record of the problem");
    let raw: String = if text.chars().count() > MAX_CONTEXT_CHARS {
        text.chars().take(RAW_PREFIX_CHARS).collect()
    } else {
        text.into_owned()
    };
    let record = serde_json::json!({ "_bemi_invalid": { "error": error, "raw": raw.replace('\0', "\u{FFFD}") } });
    ContextJson::from_validated(record.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Oid, Xid};

    fn table(name: &str) -> Arc<RelationInfo> {
        Arc::new(RelationInfo {
            oid: Oid(1),
            schema: "public".to_owned(),
            table: name.to_owned(),
            columns: Vec::new(),
            full_identity: true,
            primary_key: Vec::new(),
        })
    }

    /// Feeds events at increasing positions; returns the changes handed on and the commits.
    struct Feed {
        stitcher: Stitcher,
        out: Vec<Change>,
        commits: Vec<Committed>,
        position: u64,
    }

    impl Feed {
        fn new(stitcher: Stitcher) -> Self {
            Feed {
                stitcher,
                out: Vec::new(),
                commits: Vec::new(),
                position: 0x100,
            }
        }

        fn push(&mut self, event: RowEvent) -> &mut Self {
            self.position += 0x10;
            let at = Lsn(self.position);
            if let Some(c) = self.stitcher.push(event, at, Utc::now(), &mut self.out) {
                self.commits.push(c);
            }
            self
        }

        fn begin(&mut self, final_lsn: u64) -> &mut Self {
            self.push(RowEvent::Begin {
                xid: Xid(7),
                final_lsn: Lsn(final_lsn),
                commit_time: Utc::now(),
            })
        }

        fn insert(&mut self, name: &str, key: &str) -> &mut Self {
            self.push(RowEvent::Insert {
                relation: table(name),
                new: Row::empty(),
                primary_key: Some(key.to_owned()),
            })
        }

        fn message(&mut self, transactional: bool, prefix: &str, content: &str) -> &mut Self {
            self.push(RowEvent::Message {
                transactional,
                lsn: Lsn(self.position),
                prefix: prefix.to_owned(),
                content: bytes::Bytes::copy_from_slice(content.as_bytes()),
            })
        }

        fn commit(&mut self, end_lsn: u64) -> &mut Self {
            self.push(RowEvent::Commit {
                commit_lsn: Lsn(end_lsn - 0x10),
                end_lsn: Lsn(end_lsn),
                commit_time: Utc::now(),
            })
        }

        /// (key, context) of each change handed on, in order.
        fn stitched(&self) -> Vec<(String, String)> {
            self.out
                .iter()
                .map(|c| {
                    let key = c.primary_key.clone().unwrap_or_default();
                    (key, c.context.as_str().to_owned())
                })
                .collect()
        }
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(k, c)| ((*k).to_owned(), (*c).to_owned()))
            .collect()
    }

    #[test]
    fn changes_take_the_latest_message_before_them_or_the_first_one() {
        let mut feed = Feed::new(Stitcher::new("app"));
        feed.begin(0x1000)
            .insert("t", "1")
            .message(true, "_bemi", r#"{"a":1}"#)
            .insert("t", "2")
            .message(true, "_bemi", r#"{"b":2}"#)
            .insert("t", "3")
            .commit(0x1010);
        assert_eq!(
            feed.stitched(),
            pairs(&[
                ("1", r#"{"a":1}"#),
                ("2", r#"{"a":1}"#),
                ("3", r#"{"b":2}"#)
            ])
        );
        let ordinals: Vec<u32> = feed.out.iter().map(|c| c.ordinal).collect();
        assert_eq!(ordinals, [0, 1, 2]);
        assert_eq!(
            feed.commits,
            [Committed {
                end_lsn: Lsn(0x1010),
                changes: 3,
                replayed: false
            }]
        );
    }

    #[test]
    fn other_prefixes_and_non_transactional_messages_are_not_context() {
        let mut feed = Feed::new(Stitcher::new("app"));
        feed.begin(0x1000)
            .message(true, "_bemi_heartbeat", r#"{"x":1}"#)
            .message(false, "_bemi", r#"{"y":2}"#)
            .message(true, "other", r#"{"z":3}"#)
            .insert("t", "1")
            .commit(0x1010);
        assert_eq!(feed.stitched(), pairs(&[("1", "{}")]));
    }

    #[test]
    fn changes_before_the_first_message_wait_for_it_up_to_max_waiting() {
        let mut feed = Feed::new(Stitcher::new("app").max_waiting(2));
        feed.begin(0x1000).insert("t", "1").insert("t", "2");
        assert!(feed.out.is_empty(), "two may wait");
        feed.insert("t", "3");
        assert_eq!(
            feed.out.len(),
            3,
            "the third is over the limit: all go without context"
        );
        feed.message(true, "_bemi", r#"{"late":true}"#)
            .insert("t", "4")
            .commit(0x1010);
        assert_eq!(
            feed.stitched(),
            pairs(&[
                ("1", "{}"),
                ("2", "{}"),
                ("3", "{}"),
                ("4", r#"{"late":true}"#)
            ])
        );
    }

    #[test]
    fn a_multi_table_truncate_gives_one_change_per_table_with_its_own_ordinal() {
        let mut feed = Feed::new(Stitcher::new("app"));
        feed.begin(0x1000)
            .message(true, "_bemi", r#"{"job":"reset"}"#);
        feed.push(RowEvent::Truncate {
            relations: vec![table("a"), table("b")],
            cascade: false,
            restart_identity: false,
        });
        feed.commit(0x1010);
        let tables: Vec<(&str, Operation, u32)> = feed
            .out
            .iter()
            .map(|c| (c.table.as_str(), c.operation, c.ordinal))
            .collect();
        assert_eq!(
            tables,
            [("a", Operation::Truncate, 0), ("b", Operation::Truncate, 1)]
        );
    }

    #[test]
    fn replays_at_or_below_the_resume_position_and_ignored_tables_are_dropped() {
        let stitcher = Stitcher::new("app")
            .resume_after(Lsn(0x2000))
            .ignore_table("public", "changes");
        let mut feed = Feed::new(stitcher);
        // a transaction whose commit record starts before the stored end: already stored
        feed.begin(0x1ff0)
            .message(true, "_bemi", r#"{"a":1}"#)
            .insert("t", "1")
            .commit(0x2000);
        // the next one is new; the tracker's own table is never recorded, nor its partitions
        // (published under their own names), but a table that only looks like one is
        feed.begin(0x2000)
            .insert("changes", "9")
            .insert("changes_p20261101", "10")
            .insert("changes_default", "11")
            .insert("t", "2")
            .insert("changes_log", "3")
            .commit(0x2010);
        assert_eq!(feed.stitched(), pairs(&[("2", "{}"), ("3", "{}")]));
        assert_eq!(
            feed.commits,
            [
                Committed {
                    end_lsn: Lsn(0x2000),
                    changes: 0,
                    replayed: true
                },
                Committed {
                    end_lsn: Lsn(0x2010),
                    changes: 2,
                    replayed: false
                },
            ]
        );
    }

    #[test]
    fn deep_contexts_are_valid_up_to_the_depth_limit_and_recorded_beyond_it() {
        let nested = |depth: usize| format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        let deep = nested(200);
        assert_eq!(parse_context(deep.as_bytes(), Lsn(1)).as_str(), deep);
        // A hostile depth is refused without recursing, and kept as text.
        let hostile = nested(100_000);
        let context = parse_context(hostile.as_bytes(), Lsn(1));
        let record: serde_json::Value = serde_json::from_str(context.as_str()).unwrap();
        let error = record["_bemi_invalid"]["error"].as_str().unwrap();
        assert!(error.contains("nested deeper than 10000 levels"), "{error}");
        assert_eq!(record["_bemi_invalid"]["raw"], hostile.as_str());
        let nul = parse_context(br#"{"a": "\u0000"}"#, Lsn(1));
        assert!(nul.as_str().contains("cannot store"), "{nul:?}");
        let escaped = r#"{"a": "\\u0000"}"#;
        assert_eq!(parse_context(escaped.as_bytes(), Lsn(1)).as_str(), escaped);
    }
}
