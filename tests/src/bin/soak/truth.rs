//! Ground truth: the changes of every committed transaction, as the client saw them commit.

use std::collections::HashMap;
use std::fmt;

/// A row operation as `changes.operation` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    /// The `changes.operation` value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Create => "CREATE",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }

    fn code(self) -> u8 {
        match self {
            Op::Create => 0,
            Op::Update => 1,
            Op::Delete => 2,
        }
    }

    fn from_code(code: u8) -> Op {
        match code {
            0 => Op::Create,
            1 => Op::Update,
            _ => Op::Delete,
        }
    }

    /// Parses a `changes.operation` value (`None` for TRUNCATE and anything else).
    pub(crate) fn parse(text: &str) -> Option<Op> {
        match text {
            "CREATE" => Some(Op::Create),
            "UPDATE" => Some(Op::Update),
            "DELETE" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One change's identity: table, operation, primary key and the transaction's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    table: u16,
    op: u8,
    pk: i64,
    client: u32,
    seq: u64,
}

/// The expected changes, each with how many times it must be stored (always 1 when the
/// workload is right: [`Truth::collisions`] counts the exceptions).
#[derive(Debug, Default)]
pub(crate) struct Truth {
    tables: Vec<String>,
    table_ids: HashMap<String, u16>,
    expected: HashMap<Key, u32>,
    /// Changes recorded twice under one key: a mistake of the workload, not of the worker.
    pub(crate) collisions: u64,
    /// Transactions `(client, seq)` whose `COMMIT` failed and that their mark said committed,
    /// with their transaction id.
    pub(crate) resolved: HashMap<(u32, u64), i64>,
}

impl Truth {
    fn table_id(&mut self, table: &str) -> u16 {
        if let Some(id) = self.table_ids.get(table) {
            return *id;
        }
        let id = self.tables.len() as u16;
        self.tables.push(table.to_owned());
        self.table_ids.insert(table.to_owned(), id);
        id
    }

    /// Records the changes of a committed transaction with context `(client, seq)`.
    pub(crate) fn record<'a>(
        &mut self,
        client: u32,
        seq: u64,
        changes: impl IntoIterator<Item = (&'a str, Op, i64)>,
    ) {
        for (table, op, pk) in changes {
            let key = Key {
                table: self.table_id(table),
                op: op.code(),
                pk,
                client,
                seq,
            };
            let count = self.expected.entry(key).or_insert(0);
            *count += 1;
            if *count > 1 {
                self.collisions += 1;
            }
        }
    }

    /// The number of expected changes.
    pub(crate) fn len(&self) -> u64 {
        self.expected.values().map(|n| u64::from(*n)).sum()
    }

    /// The key of a stored change, if it can be one of ours.
    pub(crate) fn key(
        &self,
        table: &str,
        op: &str,
        pk: Option<&str>,
        client: Option<&str>,
        seq: Option<&str>,
    ) -> Option<Key> {
        Some(Key {
            table: *self.table_ids.get(table)?,
            op: Op::parse(op)?.code(),
            pk: pk?.parse().ok()?,
            client: client?.parse().ok()?,
            seq: seq?.parse().ok()?,
        })
    }

    /// The expected changes and their counts.
    pub(crate) fn expected(&self) -> &HashMap<Key, u32> {
        &self.expected
    }

    /// The key's table, primary key and context `(client, seq)`.
    pub(crate) fn parts(&self, key: &Key) -> (&str, Op, i64, u32, u64) {
        let table = self
            .tables
            .get(usize::from(key.table))
            .map_or("?", String::as_str);
        (table, Op::from_code(key.op), key.pk, key.client, key.seq)
    }

    /// A key in words, for reports.
    pub(crate) fn describe(&self, key: &Key) -> Described<'_> {
        Described {
            truth: self,
            key: *key,
        }
    }
}

/// A key printed as `table op pk (client c, seq s)`.
#[derive(Debug)]
pub(crate) struct Described<'a> {
    truth: &'a Truth,
    key: Key,
}

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self
            .truth
            .tables
            .get(usize::from(self.key.table))
            .map_or("?", String::as_str);
        write!(
            f,
            "{table} {} {} (client {}, seq {})",
            Op::from_code(self.key.op).as_str(),
            self.key.pk,
            self.key.client,
            self.key.seq
        )
    }
}
