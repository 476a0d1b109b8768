//! `bemi status`: the slot, the lag, the newest stored change, the partitions of `changes` and
//! the retention window.

use bemi_core::changes_table::{Partition, Retention};
use bemi_core::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::args::StatusArgs;

#[derive(Debug, Serialize)]
struct Status {
    slot: String,
    slot_exists: bool,
    active: bool,
    active_pid: Option<i32>,
    wal_status: Option<String>,
    confirmed_flush_lsn: Option<String>,
    current_wal_lsn: String,
    lag_bytes: Option<i64>,
    changes: Option<Changes>,
    retention: Option<RetentionStatus>,
    /// The rules of the config file, a line each (none without --config).
    rules: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
struct Changes {
    rows: i64,
    newest: Option<Newest>,
    partitioned: bool,
    /// Oldest range first, the default partition last; empty when not partitioned.
    partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Serialize)]
struct PartitionStatus {
    #[serde(flatten)]
    partition: Partition,
    rows: i64,
    /// `bytes` as PostgreSQL prints sizes.
    size: String,
    /// Whether retention removes it at its next run.
    expired: bool,
}

#[derive(Debug, Serialize)]
struct RetentionStatus {
    window: String,
    /// Changes committed before this go, with their partition once it is wholly before it.
    cutoff: DateTime<Utc>,
    archive_schema: Option<String>,
}

#[derive(Debug, Serialize)]
struct Newest {
    table: String,
    operation: String,
    primary_key: Option<String>,
    committed_at: chrono::DateTime<chrono::Utc>,
}

pub(crate) async fn status(args: StatusArgs) -> Result<()> {
    let rules = match &args.config {
        Some(path) => {
            let (text, file) = crate::config::parse(path)?;
            let rules = file.rules.to_rules(&text).map_err(|e| {
                bemi_core::Error::config(format!("the config file {} is invalid", path.display()))
                    .with_source(e)
            })?;
            Some(rules.describe())
        }
        None => None,
    };
    let source_options = args.source.options()?;
    let source = source_options.connect().await?;
    let slot = source
        .query_opt(
            "SELECT active, active_pid, wal_status, confirmed_flush_lsn::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&args.source.slot],
        )
        .await?;
    let current_wal_lsn: String = source
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let destination = args.destination.options(&source_options)?.connect().await?;
    let changes_table = args.destination.changes_table();
    let table = changes_table.qualified();
    let retention = args.retention.retention()?;
    let now = Utc::now();
    let changes = match destination
        .query(
            &format!(
                "SELECT c.relname::text, count(*) FROM {table} x \
                 JOIN pg_catalog.pg_class c ON c.oid = x.tableoid GROUP BY 1"
            ),
            &[],
        )
        .await
    {
        Ok(counts) => {
            let newest = destination
                .query_opt(
                    &format!(
                        "SELECT \"table\", operation, primary_key, committed_at FROM {table}
                         ORDER BY committed_at DESC, commit_lsn DESC NULLS LAST, ordinal DESC
                         LIMIT 1"
                    ),
                    &[],
                )
                .await?
                .map(|r| Newest {
                    table: r.get(0),
                    operation: r.get(1),
                    primary_key: r.get(2),
                    committed_at: r.get(3),
                });
            let partitions = changes_table.partitions(&destination).await?;
            Some(Changes {
                rows: counts.iter().map(|row| row.get::<_, i64>(1)).sum(),
                newest,
                partitioned: changes_table.is_partitioned(&destination).await? == Some(true),
                partitions: partition_status(
                    &destination,
                    partitions,
                    &counts,
                    retention.as_ref(),
                    now,
                )
                .await?,
            })
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
        Err(e) => return Err(e.into()),
    };
    let status = Status {
        slot: args.source.slot.clone(),
        slot_exists: slot.is_some(),
        active: slot.as_ref().is_some_and(|r| r.get(0)),
        active_pid: slot.as_ref().and_then(|r| r.get(1)),
        wal_status: slot.as_ref().and_then(|r| r.get(2)),
        confirmed_flush_lsn: slot.as_ref().and_then(|r| r.get(3)),
        current_wal_lsn,
        lag_bytes: slot.as_ref().and_then(|r| r.get(4)),
        changes,
        retention: retention.map(|r| RetentionStatus {
            window: r.to_string(),
            cutoff: r.cutoff(now),
            archive_schema: r.archive_schema().map(str::to_owned),
        }),
        rules,
    };
    if args.json {
        crate::output::print_json(&status)?;
    } else {
        print_human(&status);
    }
    Ok(())
}

/// The partitions with their rows, sizes as PostgreSQL prints them, and whether they expire.
async fn partition_status(
    client: &tokio_postgres::Client,
    partitions: Vec<Partition>,
    counts: &[tokio_postgres::Row],
    retention: Option<&Retention>,
    now: DateTime<Utc>,
) -> Result<Vec<PartitionStatus>> {
    let bytes: Vec<i64> = partitions.iter().map(|p| p.bytes).collect();
    let sizes: Vec<String> = client
        .query(
            "SELECT pg_size_pretty(b) FROM unnest($1::int8[]) WITH ORDINALITY AS u(b, i) ORDER BY i",
            &[&bytes],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let expired: Vec<String> = retention
        .map(|r| {
            r.expired(&partitions, now)
                .iter()
                .map(|p| p.name.clone())
                .collect()
        })
        .unwrap_or_default();
    Ok(partitions
        .into_iter()
        .zip(sizes)
        .map(|(partition, size)| PartitionStatus {
            rows: counts
                .iter()
                .find(|row| row.get::<_, String>(0) == partition.name)
                .map_or(0, |row| row.get(1)),
            size,
            expired: expired.contains(&partition.name),
            partition,
        })
        .collect())
}

fn print_human(s: &Status) {
    if !s.slot_exists {
        println!(
            "slot {:?}: missing (run `bemi setup`, or start `bemi run`)",
            s.slot
        );
    } else {
        let state = match s.active_pid {
            Some(pid) => format!("streaming (pid {pid})"),
            None => "idle".to_owned(),
        };
        println!("slot {:?}: {state}", s.slot);
        println!("  wal_status:   {}", s.wal_status.as_deref().unwrap_or("-"));
        println!(
            "  confirmed:    {} (server at {})",
            s.confirmed_flush_lsn.as_deref().unwrap_or("-"),
            s.current_wal_lsn
        );
        println!("  lag:          {} bytes", s.lag_bytes.unwrap_or(0));
    }
    match &s.changes {
        None => println!("changes: no table yet"),
        Some(c) => {
            let layout = match c.partitioned {
                true => "partitioned on committed_at",
                false => "not partitioned (`bemi migrate --partition` partitions it)",
            };
            println!("changes: {} rows, {layout}", c.rows);
            if let Some(n) = &c.newest {
                println!(
                    "  newest:       {} {} {} at {}",
                    n.operation,
                    n.table,
                    n.primary_key.as_deref().unwrap_or("-"),
                    n.committed_at
                );
            }
            for p in &c.partitions {
                println!(
                    "  {:<28} {:<36} {:>12} rows {:>10}{}",
                    p.partition.name,
                    crate::retention::range(&p.partition),
                    p.rows,
                    p.size,
                    if p.expired {
                        "  (past the retention window)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    match &s.retention {
        None => println!("retention: keep everything (set --retention / BEMI_RETENTION)"),
        Some(r) => println!(
            "retention: {} (partitions wholly before {} go{})",
            r.window,
            r.cutoff.format("%Y-%m-%d %H:%M UTC"),
            r.archive_schema
                .as_deref()
                .map_or(String::new(), |schema| format!(", to schema {schema:?}"))
        ),
    }
    if let Some(rules) = &s.rules {
        println!("rules (applied to changes decoded after the worker's start):");
        for line in rules {
            println!("  {line}");
        }
    }
}
