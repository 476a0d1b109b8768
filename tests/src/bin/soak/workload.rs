//! The workload: writing clients, the DDL client, and how a transaction's outcome becomes
//! ground truth.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::truth::Op;
use crate::{connect, Random, Soak, Stats};

/// The context client of the transactions the fault schedule writes.
pub(crate) const FAULT_CLIENT: u32 = 1000;
/// The context client of the DDL transactions.
pub(crate) const DDL_CLIENT: u32 = 1001;
/// The table where every transaction of the workload leaves its mark: one row, its key
/// `client × 10¹² + seq`, audited like any other change. When a `COMMIT`'s outcome
/// is unknown, the row says whether it committed; the transaction id does not always (see
/// [`Writer::resolve`]).
pub(crate) const MARKS: &str = "soak_mark";

/// The key of the mark the transaction with context `(client, seq)` leaves in [`MARKS`].
pub(crate) fn mark(client: u32, seq: u64) -> i64 {
    i64::from(client) * 1_000_000_000_000 + seq as i64
}

/// Creates the tracked tables (before `bemi setup`, which sets their replica identity).
pub(crate) async fn create_schema(url: &str) -> Result<(), tokio_postgres::Error> {
    connect(url)
        .await?
        .batch_execute(
            "CREATE TABLE acct (id bigint PRIMARY KEY, client int NOT NULL, seq bigint NOT NULL,
                                n int NOT NULL DEFAULT 0);
             CREATE TABLE item (id bigint PRIMARY KEY, client int NOT NULL, seq bigint NOT NULL,
                                payload text);
             CREATE TABLE bulk (id bigint PRIMARY KEY, seq bigint NOT NULL, payload text);
             CREATE TABLE soak_mark (id bigint PRIMARY KEY);",
        )
        .await
}

/// One statement of a transaction and the changes it must make: the server's row count for it
/// must equal `pks.len()`, or the transaction is rolled back. DDL has no operation.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    sql: String,
    table: String,
    op: Option<Op>,
    pks: Vec<i64>,
}

impl Statement {
    /// A write of `pks` in `table`.
    pub(crate) fn write(table: &str, op: Op, pks: Vec<i64>, sql: String) -> Statement {
        Statement {
            sql,
            table: table.to_owned(),
            op: Some(op),
            pks,
        }
    }

    /// A DDL statement: no change of its own.
    pub(crate) fn ddl(sql: String) -> Statement {
        Statement {
            sql,
            table: String::new(),
            op: None,
            pks: Vec::new(),
        }
    }
}

/// How an attempt ended.
enum Outcome {
    Committed,
    /// Certainly not committed (failed before `COMMIT` was sent, or rolled back).
    NotCommitted,
    /// `COMMIT` was sent and failed: ask the server what happened to this transaction id.
    Unknown(i64),
}

/// A client with its own context (`client`), sequence of transactions and key space.
#[derive(Debug)]
pub(crate) struct Writer {
    soak: Arc<Soak>,
    client: u32,
    seq: u64,
    next_pk: i64,
    session: Option<Client>,
}

impl Writer {
    /// A writer whose primary keys start at `client` × 10¹².
    pub(crate) fn new(soak: Arc<Soak>, client: u32) -> Writer {
        Writer {
            soak,
            client,
            seq: 0,
            next_pk: i64::from(client) * 1_000_000_000_000,
            session: None,
        }
    }

    /// A primary key never used before.
    pub(crate) fn new_pk(&mut self) -> i64 {
        self.next_pk += 1;
        self.next_pk
    }

    /// `n` consecutive new primary keys, as `(first, last)`.
    pub(crate) fn new_pks(&mut self, n: i64) -> (i64, i64) {
        let first = self.next_pk + 1;
        self.next_pk += n;
        (first, self.next_pk)
    }

    /// The context sequence number of the next transaction.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq + 1
    }

    /// A connected session; `None` when the source stayed unreachable for long (or for 30 s
    /// once the workload is stopping).
    async fn session(&mut self) -> Option<&Client> {
        if self.session.as_ref().is_some_and(|c| !c.is_closed()) {
            return self.session.as_ref();
        }
        let since = Instant::now();
        loop {
            match connect(&self.soak.source_url).await {
                Ok(client) => {
                    self.session = Some(client);
                    return self.session.as_ref();
                }
                Err(_) => {
                    let limit = if self.soak.stopping() { 30 } else { 300 };
                    if since.elapsed() > Duration::from_secs(limit) {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Runs `statements` as one transaction with the context of the next sequence number;
    /// records its changes in the ground truth when it committed, and says whether it did.
    pub(crate) async fn transaction(&mut self, statements: &[Statement]) -> bool {
        self.seq += 1;
        let seq = self.seq;
        let context = format!("{{\"client\": {}, \"seq\": {seq}}}", self.client);
        let soak = Arc::<Soak>::clone(&self.soak);
        let gate = soak.gate.read().await;
        let mark = mark(self.client, seq);
        let outcome = match self.session().await {
            Some(client) => attempt(client, &context, mark, statements).await,
            None => Outcome::NotCommitted,
        };
        drop(gate);
        let committed = match outcome {
            Outcome::Committed => true,
            Outcome::NotCommitted => false,
            Outcome::Unknown(xid) => {
                self.session = None;
                match self.resolve(xid, mark).await {
                    Some(true) => {
                        Stats::add(&soak.stats.unknown_committed);
                        soak.truth().resolved.insert((self.client, seq), xid);
                        true
                    }
                    Some(false) => {
                        Stats::add(&soak.stats.unknown_aborted);
                        false
                    }
                    None => {
                        Stats::add(&soak.stats.unresolved);
                        soak.say(format!(
                            "! could not learn whether transaction {xid} (client {}, seq {seq}) \
                             committed",
                            self.client
                        ));
                        false
                    }
                }
            }
        };
        if committed {
            Stats::add(&soak.stats.committed);
            let ddl = statements.iter().filter(|s| s.op.is_none()).count();
            for _ in 0..ddl {
                Stats::add(&soak.stats.ddl);
            }
            let changes = statements.iter().flat_map(|s| {
                s.op.into_iter()
                    .flat_map(move |op| s.pks.iter().map(move |pk| (s.table.as_str(), op, *pk)))
            });
            soak.truth().record(
                self.client,
                seq,
                changes.chain(std::iter::once((MARKS, Op::Create, mark))),
            );
        } else {
            Stats::add(&soak.stats.aborted);
            // The session may be in a failed transaction: start over on a new one.
            self.session = None;
        }
        committed
    }

    /// Whether transaction `xid`, which left mark `mark`, committed, once the server answers
    /// again; `None` when it cannot tell within 5 minutes.
    ///
    /// The mark decides: visible means committed. Its absence decides only once the transaction
    /// is over, which `txid_status` tells, with a catch: after a crash the server hands out
    /// again the ids of transactions of which no WAL reached the disk, so a COMMIT cut short by
    /// a crash can have its id reported `committed` for the next transaction that got it. An id
    /// reported committed whose mark stays absent is such a reused id (counted, not trusted).
    async fn resolve(&mut self, xid: i64, mark: i64) -> Option<bool> {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut committed_without_mark: Option<Instant> = None;
        let sql = format!("SELECT txid_status($1), EXISTS (SELECT FROM {MARKS} WHERE id = $2)");
        while Instant::now() < deadline {
            if let Ok(client) = connect(&self.soak.source_url).await {
                if let Ok(row) = client.query_one(&sql, &[&xid, &mark]).await {
                    let (status, marked): (Option<String>, bool) = (row.get(0), row.get(1));
                    match (marked, status.as_deref()) {
                        (true, _) => return Some(true),
                        (false, Some("aborted")) => return Some(false),
                        // A commit is in the commit log a moment before new snapshots see it.
                        (false, Some("committed")) => match committed_without_mark {
                            Some(since) if since.elapsed() >= Duration::from_secs(1) => {
                                Stats::add(&self.soak.stats.reused_xids);
                                return Some(false);
                            }
                            Some(_) => {}
                            None => committed_without_mark = Some(Instant::now()),
                        },
                        (false, Some(_)) => {}
                        (false, None) => return None,
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    }
}

/// One attempt: `BEGIN` with the context, the transaction id and the transaction's mark, the
/// statements with their row counts checked, `COMMIT`.
async fn attempt(client: &Client, context: &str, mark: i64, statements: &[Statement]) -> Outcome {
    let begin = format!(
        "BEGIN; SELECT txid_current()::text, \
         pg_logical_emit_message(true, '_bemi', '{context}')::text; \
         INSERT INTO {MARKS} VALUES ({mark})"
    );
    let xid = match client.simple_query(&begin).await {
        Ok(messages) => messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).and_then(|x| x.parse::<i64>().ok()),
            _ => None,
        }),
        Err(_) => return Outcome::NotCommitted,
    };
    let Some(xid) = xid else {
        return Outcome::NotCommitted;
    };
    let body: Vec<&str> = statements.iter().map(|s| s.sql.as_str()).collect();
    let counts: Vec<u64> = match client.simple_query(&body.join(";\n")).await {
        Ok(messages) => messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .collect(),
        Err(_) => return Outcome::NotCommitted,
    };
    let as_intended = counts.len() == statements.len()
        && statements
            .iter()
            .zip(&counts)
            .all(|(s, n)| s.op.is_none() || s.pks.len() as u64 == *n);
    if !as_intended {
        // Not what the ground truth would record: leave it uncommitted (the caller drops the
        // session, which rolls it back).
        return Outcome::NotCommitted;
    }
    match client.simple_query("COMMIT").await {
        Ok(_) => Outcome::Committed,
        Err(_) => Outcome::Unknown(xid),
    }
}

/// Rows a writing client owns, to update and delete.
#[derive(Debug, Default)]
struct Owned {
    acct: Vec<i64>,
    item: Vec<i64>,
}

impl Owned {
    fn rows(&mut self, table: &str) -> &mut Vec<i64> {
        if table == "acct" {
            &mut self.acct
        } else {
            &mut self.item
        }
    }

    /// Applies a committed transaction.
    fn apply(&mut self, statements: &[Statement]) {
        for s in statements {
            let (table, pks) = (s.table.as_str(), &s.pks);
            match s.op {
                Some(Op::Create) => self.rows(table).extend(pks),
                Some(Op::Delete) => {
                    let gone: HashSet<i64> = pks.iter().copied().collect();
                    self.rows(table).retain(|pk| !gone.contains(pk));
                }
                _ => {}
            }
        }
    }
}

/// Builds a write on a row of `table`: a new row, or an update or delete of an owned row not
/// yet used in this transaction.
fn one_write(
    w: &mut Writer,
    random: &mut Random,
    owned: &mut Owned,
    used: &mut HashSet<i64>,
    table: &str,
) -> Statement {
    let (client, seq) = (w.client, w.next_seq());
    let rows = owned.rows(table);
    let want_insert = rows.len() < 20 || (rows.len() < 300 && random.chance(40));
    let existing = if want_insert {
        None
    } else {
        (0..4)
            .map(|_| rows[random.below(rows.len() as u64) as usize])
            .find(|pk| !used.contains(pk))
    };
    let existing = match existing {
        None => {
            let pk = w.new_pk();
            let sql = if table == "acct" {
                format!("INSERT INTO acct (id, client, seq) VALUES ({pk}, {client}, {seq})")
            } else if random.chance(5) {
                // A value stored out of line (TOAST), later updated without being touched.
                format!(
                    "INSERT INTO item (id, client, seq, payload) SELECT {pk}, {client}, {seq}, \
                     string_agg(md5(g::text || '{pk}'), '') FROM generate_series(1, 300) g"
                )
            } else {
                let len = random.between(1, 200);
                format!(
                    "INSERT INTO item (id, client, seq, payload) \
                     VALUES ({pk}, {client}, {seq}, repeat('x', {len}))"
                )
            };
            used.insert(pk);
            return Statement::write(table, Op::Create, vec![pk], sql);
        }
        Some(pk) => pk,
    };
    used.insert(existing);
    if random.chance(60) {
        let set = if table == "acct" { "n = n + 1, " } else { "" };
        Statement::write(
            table,
            Op::Update,
            vec![existing],
            format!("UPDATE {table} SET {set}seq = {seq} WHERE id = {existing}"),
        )
    } else {
        Statement::write(
            table,
            Op::Delete,
            vec![existing],
            format!("DELETE FROM {table} WHERE id = {existing}"),
        )
    }
}

/// A writing client: transactions of one to eight rows, sometimes hundreds, until the
/// workload stops.
pub(crate) async fn writer(soak: Arc<Soak>, client: u32, mut random: Random, pace: Duration) {
    let mut w = Writer::new(Arc::<Soak>::clone(&soak), client);
    let mut owned = Owned::default();
    while !soak.stopping() {
        let mut used = HashSet::new();
        let shape = random.below(100);
        let statements = if shape < 45 {
            vec![one_write(
                &mut w,
                &mut random,
                &mut owned,
                &mut used,
                "acct",
            )]
        } else if shape < 97 {
            (0..random.between(2, 8))
                .map(|_| {
                    let table = if random.chance(50) { "acct" } else { "item" };
                    one_write(&mut w, &mut random, &mut owned, &mut used, table)
                })
                .collect()
        } else if owned.item.len() > 2000 {
            // Many deletes in one statement.
            let n = random.between(100, 500) as usize;
            let start = random.below((owned.item.len() - n) as u64) as usize;
            let pks: Vec<i64> = owned.item[start..start + n].to_vec();
            let list: Vec<String> = pks.iter().map(i64::to_string).collect();
            vec![Statement::write(
                "item",
                Op::Delete,
                pks,
                format!(
                    "DELETE FROM item WHERE id = ANY('{{{}}}'::bigint[])",
                    list.join(",")
                ),
            )]
        } else {
            let (first, last) = w.new_pks(random.between(100, 500) as i64);
            let seq = w.next_seq();
            vec![Statement::write(
                "item",
                Op::Create,
                (first..=last).collect(),
                format!(
                    "INSERT INTO item (id, client, seq, payload) \
                     SELECT g, {client}, {seq}, 'm' FROM generate_series({first}, {last}) g"
                ),
            )]
        };
        if w.transaction(&statements).await {
            owned.apply(&statements);
        }
        tokio::time::sleep(pace).await;
    }
}

/// A transaction of `rows` new rows in `bulk`, for faults that must land mid-stream.
pub(crate) async fn bulk(w: &mut Writer, rows: i64) -> bool {
    let (first, last) = w.new_pks(rows);
    let seq = w.next_seq();
    let statement = Statement::write(
        "bulk",
        Op::Create,
        (first..=last).collect(),
        format!(
            "INSERT INTO bulk (id, seq, payload) \
             SELECT g, {seq}, 'bulk ' || g FROM generate_series({first}, {last}) g"
        ),
    );
    w.transaction(&[statement]).await
}

/// The DDL client: every few seconds the next step of a cycle that adds, renames, retypes and
/// drops a column of `acct`, retypes a column of `item`, and creates a table with rows in the
/// same transaction, changes them around a DDL statement and drops the table.
pub(crate) async fn ddl(soak: Arc<Soak>, mut random: Random) {
    let mut w = Writer::new(Arc::<Soak>::clone(&soak), DDL_CLIENT);
    let (mut cycle, mut step, mut failures) = (0u64, 0u64, 0u32);
    let mut tmp_rows: Vec<i64> = Vec::new();
    loop {
        let pause = Duration::from_millis(random.between(3000, 7000));
        let until = Instant::now() + pause;
        while Instant::now() < until && !soak.stopping() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if soak.stopping() {
            return;
        }
        let seq = w.next_seq();
        let tmp = format!("tmp_{cycle}");
        let (column, renamed) = (format!("x_{cycle}"), format!("y_{cycle}"));
        let mut created = Vec::new();
        let statements = match step {
            0 => vec![Statement::ddl(format!(
                "ALTER TABLE acct ADD COLUMN {column} int NOT NULL DEFAULT 7"
            ))],
            1 => {
                let (first, last) = w.new_pks(5);
                created = (first..=last).collect();
                vec![
                    Statement::ddl(format!(
                        "CREATE TABLE {tmp} (id bigint PRIMARY KEY, seq bigint, v text)"
                    )),
                    Statement::write(
                        &tmp,
                        Op::Create,
                        created.clone(),
                        format!(
                            "INSERT INTO {tmp} SELECT g, {seq}, 'v' \
                             FROM generate_series({first}, {last}) g"
                        ),
                    ),
                ]
            }
            2 => vec![Statement::ddl(format!(
                "ALTER TABLE acct RENAME COLUMN {column} TO {renamed}"
            ))],
            3 if tmp_rows.len() < 3 => vec![Statement::ddl(format!(
                "ALTER TABLE {tmp} ALTER COLUMN v TYPE varchar(50)"
            ))],
            3 => {
                let pk = w.new_pk();
                let (a, b, c) = (tmp_rows[0], tmp_rows[1], tmp_rows[2]);
                vec![
                    Statement::write(
                        &tmp,
                        Op::Update,
                        vec![a, b],
                        format!("UPDATE {tmp} SET v = 'u', seq = {seq} WHERE id IN ({a}, {b})"),
                    ),
                    Statement::ddl(format!("ALTER TABLE {tmp} ALTER COLUMN v TYPE varchar(50)")),
                    Statement::write(
                        &tmp,
                        Op::Delete,
                        vec![c],
                        format!("DELETE FROM {tmp} WHERE id = {c}"),
                    ),
                    Statement::write(
                        &tmp,
                        Op::Create,
                        vec![pk],
                        format!("INSERT INTO {tmp} VALUES ({pk}, {seq}, 'after the retype')"),
                    ),
                ]
            }
            4 => vec![Statement::ddl(format!(
                "ALTER TABLE acct ALTER COLUMN {renamed} TYPE bigint"
            ))],
            5 => vec![Statement::ddl(if cycle % 2 == 0 {
                "ALTER TABLE item ALTER COLUMN payload TYPE varchar(20000)".to_owned()
            } else {
                "ALTER TABLE item ALTER COLUMN payload TYPE text".to_owned()
            })],
            6 => vec![Statement::ddl(format!(
                "ALTER TABLE acct DROP COLUMN {renamed}"
            ))],
            _ => vec![Statement::ddl(format!("DROP TABLE {tmp}"))],
        };
        let committed = w.transaction(&statements).await;
        if committed {
            let sql: Vec<&str> = statements.iter().map(|s| s.sql.as_str()).collect();
            soak.say(format!("ddl: {}", sql.join("; ")));
            if step == 1 {
                tmp_rows = created;
            }
        } else {
            failures += 1;
            if failures < 5 {
                continue;
            }
            Stats::add(&soak.stats.ddl_failed);
            soak.say(format!(
                "! ddl step {step} of cycle {cycle} failed 5 times; skipped"
            ));
            if step < 3 {
                // The temporary table may be missing: start the next cycle.
                step = 7;
            }
        }
        failures = 0;
        step += 1;
        if step == 8 {
            step = 0;
            cycle += 1;
        }
    }
}

/// Prints where the run stands every 30 seconds.
pub(crate) async fn status(soak: Arc<Soak>) {
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let expected = soak.truth().len();
        let stored = soak
            .stored()
            .await
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        let starts = soak.worker().starts();
        soak.say(format!(
            "status: {} transactions committed, {expected} changes expected, {stored} stored, \
             worker started {starts} times",
            Stats::get(&soak.stats.committed)
        ));
    }
}
