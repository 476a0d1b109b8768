//! Storage that stays fast as it grows: the sink's sustained insert rate into a `changes` table
//! that already holds N rows (10,000,000 by default), against the rate into an empty one, in the
//! same run, for the partitioned layout with time-ordered (version 7) ids and for the old layout
//! (one table, random ids); then the time to drop a month of the partitioned table against a
//! `DELETE` of the same month from the old one.
//!
//! ```text
//! cargo bench -p bemi-core --bench changes_growth                                 # 10,000,000 rows
//! cargo bench -p bemi-core --bench changes_growth -- --rows 1000000 --measure 50000 # a quicker run
//! ```
//!
//! One throwaway server (`fsync = off`, autovacuum off: each loaded table is vacuumed and
//! analyzed once before measuring, so no background work lands in one table's time; other
//! settings PostgreSQL's defaults, `shared_buffers` 128 MB). Four tables, each with Bemi's nine
//! indexes: partitioned/empty, partitioned/full, old layout/empty, old layout/full. The full ones
//! get N rows server-side (`INSERT … SELECT generate_series`), spread over the ten months before
//! this one (N/10 a month, one partition each in the partitioned table), with their unique
//! indexes (primary key, idempotency key) in place and their other seven indexes built after
//! the load from the catalog's definitions (a freshly built index is denser than one grown row
//! by row, so the old layout's figure is if anything flattered). Then the sink
//! (`PostgresSink::write`, the tracker's own statement) stores batches of 1,000 changes of a
//! five-column row (decoded from pgoutput messages, stitched with a context) committed now, in
//! alternating blocks: every round stores one block into each table, in a rotating order, so
//! drifts of the shared machine hit the four alike. The ratio is a table's rate when full over
//! its rate when empty, as a mean of the per-round ratios ± half its 95 % confidence interval.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Months, Utc};

use bemi_core::changes_table::{ChangesTable, Layout, PartitionInterval, Retention, RowIds};
use bemi_core::pgoutput::{
    decode, encode, Begin, ColumnValue, Commit, Insert, LogicalMessage, Message, PgTimestamp,
    Relation, RelationColumn, ReplicaIdentity, TupleData,
};
use bemi_core::sink::{Batch, ChangeSink, PostgresSink, SourceInfo};
use bemi_core::stitch::Stitcher;
use bemi_core::{Change, ConnectOptions, Lsn, Oid, RowDecoder, Xid};
use bemi_temp_postgres::TempPostgres;

const BATCH: usize = 1_000;
const MONTHS: i64 = 10;

struct Options {
    rows: i64,
    measure: usize,
    block: usize,
}

fn options() -> Options {
    let mut options = Options {
        rows: 10_000_000,
        measure: 200_000,
        block: 10_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.windows(2) {
        let value = || pair[1].replace(['_', ','], "");
        match pair[0].as_str() {
            "--rows" => options.rows = value().parse().expect("--rows N"),
            "--measure" => options.measure = value().parse().expect("--measure N"),
            "--block" => options.block = value().parse().expect("--block N"),
            _ => {}
        }
    }
    options.block = options.block.max(BATCH) / BATCH * BATCH;
    options
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(options));
}

/// One of the four tables.
struct Target {
    label: &'static str,
    schema: &'static str,
    full: bool,
    sink: PostgresSink,
    /// Seconds of each round's block.
    rounds: Vec<f64>,
}

async fn run(options: Options) {
    let pg = tokio::task::spawn_blocking(|| {
        TempPostgres::builder()
            .setting("fsync", "off")
            .setting("autovacuum", "off")
            .setting("max_wal_size", "4GB")
            .setting("checkpoint_timeout", "30min")
            .start()
    })
    .await
    .expect("join")
    .expect("throwaway PostgreSQL");
    let admin: ConnectOptions = pg.url("postgres").parse().expect("url");
    admin
        .connect()
        .await
        .expect("connect")
        .batch_execute("CREATE DATABASE bench")
        .await
        .expect("database");
    let db: ConnectOptions = pg.url("bench").parse().expect("url");
    let sql = db.connect().await.expect("connect");
    let source = SourceInfo::new("1", "bench", "bench");
    let partitioned = Layout::Partitioned(PartitionInterval::Month);
    let mut targets = Vec::new();
    for (label, schema, full, layout, ids) in [
        (
            "partitioned, v7 ids",
            "p_empty",
            false,
            partitioned,
            RowIds::TimeOrdered,
        ),
        (
            "partitioned, v7 ids",
            "p_full",
            true,
            partitioned,
            RowIds::TimeOrdered,
        ),
        (
            "old layout, random ids",
            "u_empty",
            false,
            Layout::Unpartitioned,
            RowIds::Random,
        ),
        (
            "old layout, random ids",
            "u_full",
            true,
            Layout::Unpartitioned,
            RowIds::Random,
        ),
    ] {
        let mut sink = PostgresSink::connect(&db)
            .expect("sink")
            .schema(schema)
            .layout(layout)
            .row_ids(ids);
        sink.open(&source).await.expect("open");
        targets.push(Target {
            label,
            schema,
            full,
            sink,
            rounds: Vec::new(),
        });
    }

    // The months before this one, oldest first.
    let this_month = PartitionInterval::Month.period_start(Utc::now());
    let months: Vec<(DateTime<Utc>, DateTime<Utc>)> = (1..=MONTHS)
        .rev()
        .map(|k| {
            let from = this_month - Months::new(k as u32);
            (from, from + Months::new(1))
        })
        .collect();
    let per_month = options.rows / MONTHS;
    let mut stream = Stream::new().await;
    for target in targets.iter_mut().filter(|t| t.full) {
        // One change per month through the sink first: it makes the month's partition.
        let mut marks = stream.batch(MONTHS as usize).await;
        for (change, (from, _)) in marks.changes.iter_mut().zip(&months) {
            change.committed_at = *from;
        }
        target.sink.write(marks).await.expect("marks");
        // Loading is faster without the non-unique indexes: they are dropped, and built again
        // afterwards from the catalog's own definitions of them.
        let table = format!("{}.changes", target.schema);
        let indexes = sql
            .query(
                "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index \
                 WHERE indrelid = $1::text::regclass AND NOT indisunique",
                &[&table],
            )
            .await
            .expect("indexes");
        for index in &indexes {
            sql.batch_execute(&format!("DROP INDEX {}", index.get::<_, String>(0)))
                .await
                .expect("drop index");
        }
        let started = Instant::now();
        for (n, (from, to)) in months.iter().enumerate() {
            let first = n as i64 * per_month + 1;
            load(&sql, target.schema, first, per_month, *from, *to).await;
            println!(
                "{}: loaded {} rows ({:.0?} so far)",
                target.schema,
                (n as i64 + 1) * per_month,
                started.elapsed()
            );
        }
        let built = Instant::now();
        sql.batch_execute("SET maintenance_work_mem = '1GB'")
            .await
            .expect("maintenance_work_mem");
        for index in &indexes {
            let definition: String = index.get(1);
            sql.batch_execute(&definition.replace(" ON ONLY ", " ON "))
                .await
                .expect("index");
        }
        println!(
            "{}: built {} indexes in {:.0?}",
            target.schema,
            indexes.len(),
            built.elapsed()
        );
        let vacuum = Instant::now();
        sql.batch_execute(&format!("VACUUM ANALYZE {}.changes", target.schema))
            .await
            .expect("vacuum");
        println!("{}: vacuumed in {:.0?}", target.schema, vacuum.elapsed());
    }
    for target in &targets {
        let size: String = sql
            .query_one(
                "SELECT pg_size_pretty(coalesce( \
                   (SELECT sum(pg_total_relation_size(relid)) \
                    FROM pg_partition_tree($1::text::regclass)), \
                   pg_total_relation_size($1::text::regclass)))",
                &[&format!("{}.changes", target.schema)],
            )
            .await
            .expect("size")
            .get(0);
        println!(
            "{} ({}): {size} before measuring",
            target.schema, target.label
        );
    }

    // Alternating blocks, in a rotating order.
    let rounds = (options.measure / options.block).max(2);
    for round in 0..rounds {
        for k in 0..targets.len() {
            let target = &mut targets[(round + k) % 4];
            let mut batches = Vec::new();
            for _ in 0..options.block / BATCH {
                batches.push(stream.batch(BATCH).await);
            }
            let started = Instant::now();
            for batch in batches {
                target.sink.write(batch).await.expect("write");
            }
            target.rounds.push(started.elapsed().as_secs_f64());
        }
    }
    println!(
        "\n{} rows in the full tables, {} rows stored into each table in {rounds} blocks of {}:",
        options.rows,
        rounds * options.block,
        options.block
    );
    println!("| layout | empty: changes/s | full: changes/s | full / empty |");
    println!("| --- | ---: | ---: | --- |");
    for pair in targets.chunks(2) {
        let (empty, full) = (&pair[0], &pair[1]);
        let rate = |t: &Target| (rounds * options.block) as f64 / t.rounds.iter().sum::<f64>();
        let ratios: Vec<f64> = empty
            .rounds
            .iter()
            .zip(&full.rounds)
            .map(|(e, f)| e / f)
            .collect();
        let (mean, half) = mean_interval(&ratios);
        println!(
            "| {} | {:.0} | {:.0} | **{mean:.3}** ± {half:.3} |",
            empty.label,
            rate(empty),
            rate(full)
        );
    }

    // A month of the oldest: a partition dropped by retention, against DELETE.
    let (from, to) = months[0];
    let table = ChangesTable::new("p_full", "changes");
    let retention = Retention::new(Duration::from_secs(86_400));
    let started = Instant::now();
    let dropped = retention
        .apply(&table, &sql, to + chrono::Duration::days(1))
        .await
        .expect("retention");
    let drop_time = started.elapsed();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    let started = Instant::now();
    let deleted = sql
        .execute(
            "DELETE FROM u_full.changes WHERE committed_at >= $1 AND committed_at < $2",
            &[&from, &to],
        )
        .await
        .expect("delete");
    let delete_time = started.elapsed();
    println!("\nA month of {per_month} rows ({}):", from.format("%Y-%m"));
    println!("| way | time |");
    println!("| --- | ---: |");
    println!(
        "| retention drops partition {} | **{:.0?}** |",
        dropped[0].name, drop_time
    );
    println!("| `DELETE` of its {deleted} rows from the old layout | {delete_time:.1?} |");
    println!(
        "drop / delete: {:.4}",
        drop_time.as_secs_f64() / delete_time.as_secs_f64()
    );
}

/// Loads `count` rows numbered from `first`, committed evenly over `[from, to)`, server-side.
/// Ids as the sink would give them: time-ordered in the partitioned table (made from the
/// commit time, the random part from the row number), the column's random default in the old.
async fn load(
    sql: &tokio_postgres::Client,
    schema: &str,
    first: i64,
    count: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) {
    let seconds = (to - from).num_seconds() as f64;
    let (id_column, id) = match schema.starts_with("p_") {
        true => (
            "id, ",
            "(lpad(to_hex((extract(epoch FROM t.at) * 1000)::int8), 12, '0') || '7' \
             || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15))::uuid, ",
        ),
        false => ("", ""),
    };
    sql.execute(
        &format!(
            "INSERT INTO {schema}.changes ({id_column}primary_key, before, after, context, \
               database, schema, \"table\", operation, committed_at, queued_at, transaction_id, \
               position, system_id, commit_lsn, ordinal) \
             SELECT {id}g::text, '{{}}', \
               jsonb_build_object('id', g, 'customer_id', g % 5000, 'status', 'paid', \
                 'total', 1234.50, 'created_at', t.at), \
               jsonb_build_object('user_id', g % 1000, 'endpoint', 'POST /orders'), \
               'bench', 'public', 'orders', 'CREATE', t.at, t.at, g, g, 2, g, 0 \
             FROM generate_series($1::int8, $1::int8 + $2::int8 - 1) g, \
               LATERAL (SELECT $3::timestamptz + (g - $1::int8) * ($4::float8 / $2::int8) \
                               * interval '1 second' AS at) t"
        ),
        &[&first, &count, &from, &seconds],
    )
    .await
    .expect("load");
}

fn mean_interval(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, 1.96 * (variance / n).sqrt())
}

const TABLE: Oid = Oid(16_384);

/// The changes of a five-column `orders` table, as the tracker makes them: pgoutput messages
/// decoded and stitched with a context, each row with its own id, committed now.
struct Stream {
    decoder: RowDecoder<fn(Oid, Lsn) -> Vec<String>>,
    next_id: u64,
    final_lsn: u64,
}

impl Stream {
    async fn new() -> Self {
        let keys: fn(Oid, Lsn) -> Vec<String> = |_, _| vec!["id".to_owned()];
        let mut decoder = RowDecoder::new(keys);
        let relation = Message::Relation(Relation {
            oid: TABLE,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: ReplicaIdentity::Full,
            columns: COLUMNS
                .iter()
                .map(|&(name, type_oid)| RelationColumn {
                    flags: 1,
                    name: name.into(),
                    type_oid: Oid(type_oid),
                    type_modifier: -1,
                })
                .collect(),
        });
        decoder.decode(relation).await.expect("relation");
        Stream {
            decoder,
            next_id: 1,
            final_lsn: 0x1_0000_0000,
        }
    }

    /// One transaction of `rows` inserts, as one batch that completes it.
    async fn batch(&mut self, rows: usize) -> Batch {
        self.final_lsn += 0x10_0000;
        let time = PgTimestamp(817_000_000_000_000);
        let mut messages = vec![
            Message::Begin(Begin {
                final_lsn: Lsn(self.final_lsn),
                commit_time: time,
                xid: Xid(731),
            }),
            Message::Message(LogicalMessage {
                transactional: true,
                lsn: Lsn(self.final_lsn - 1_000),
                prefix: "_bemi".into(),
                content: Bytes::from(format!(
                    r#"{{"user_id": {}, "endpoint": "POST /orders"}}"#,
                    self.next_id % 1000
                )),
            }),
        ];
        for _ in 0..rows {
            let id = self.next_id;
            self.next_id += 1;
            let values = [
                id.to_string(),
                (id % 5000).to_string(),
                "paid".to_owned(),
                "1234.50".to_owned(),
                "2026-11-30 09:15:27.123456+00".to_owned(),
            ];
            messages.push(Message::Insert(Insert {
                relation: TABLE,
                new: TupleData {
                    columns: values
                        .into_iter()
                        .map(|v| ColumnValue::Text(Bytes::from(v)))
                        .collect(),
                },
            }));
        }
        let end = Lsn(self.final_lsn + 48);
        messages.push(Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(self.final_lsn),
            end_lsn: end,
            commit_time: time,
        }));
        let mut stitcher = Stitcher::new("bench");
        let mut changes: Vec<Change> = Vec::with_capacity(rows);
        let now = Utc::now();
        let position = Lsn(self.final_lsn);
        for message in &messages {
            let message = decode(encode(message)).expect("valid");
            if let Some(event) = self.decoder.decode(message).await.expect("decodes") {
                stitcher.push(event, position, now, &mut changes);
            }
        }
        for change in &mut changes {
            change.committed_at = now;
        }
        Batch::new(changes, Some(end))
    }
}

/// The `orders` table's columns: (name, type OID).
const COLUMNS: [(&str, u32); 5] = [
    ("id", 20),
    ("customer_id", 23),
    ("status", 25),
    ("total", 1700),
    ("created_at", 1184),
];
