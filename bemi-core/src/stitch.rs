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
//! `raw` holds the payload text (invalid UTF-8 replaced by U+FFFD); for a payload over the size
//! limit it holds only the first 1,000 characters. A JSON object containing `\u0000`, which
//! `jsonb` cannot store, is also recorded this way.

use chrono::{DateTime, Utc};

use crate::change::{Change, ContextJson, Operation};
use crate::row::{RelationInfo, Row, RowEvent};
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

    /// Never records changes of this table (the tracker's own `changes` table, for one).
    pub fn ignore_table(&mut self, schema: impl Into<String>, table: impl Into<String>) {
        self.ignored_tables.push((schema.into(), table.into()));
    }

    /// Drops transactions already stored: those whose commit ends at or before `durable`.
    pub fn resume_after(&mut self, durable: Lsn) {
        self.resume_after = durable;
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
        if self
            .ignored_tables
            .iter()
            .any(|(schema, table)| *schema == relation.schema && *table == relation.table)
        {
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
    } else {
        match serde_json::from_str::<serde_json::Value>(&text) {
            Err(e) => Some(format!("the payload is not valid JSON: {e}")),
            Ok(serde_json::Value::Object(map)) if contains_nul(&map) => {
                Some("the payload contains \\u0000, which jsonb cannot store".to_owned())
            }
            Ok(serde_json::Value::Object(_)) => None,
            Ok(_) => Some("the payload is not a JSON object".to_owned()),
        }
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

fn contains_nul(map: &serde_json::Map<String, serde_json::Value>) -> bool {
    fn value_has_nul(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(value_has_nul),
            serde_json::Value::Object(map) => contains_nul(map),
            _ => false,
        }
    }
    map.iter()
        .any(|(key, value)| key.contains('\0') || value_has_nul(value))
}
