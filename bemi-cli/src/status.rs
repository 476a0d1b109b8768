//! `bemi status`: the slot, the lag and the newest stored change.

use bemi_core::Result;
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
}

#[derive(Debug, Serialize)]
struct Changes {
    rows: i64,
    newest: Option<Newest>,
}

#[derive(Debug, Serialize)]
struct Newest {
    table: String,
    operation: String,
    primary_key: Option<String>,
    committed_at: chrono::DateTime<chrono::Utc>,
}

pub(crate) async fn status(args: StatusArgs) -> Result<()> {
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
    let table = args.destination.changes_table().qualified();
    let changes = match destination
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
    {
        Ok(row) => {
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
            Some(Changes {
                rows: row.get(0),
                newest,
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
    };
    if args.json {
        crate::output::print_json(&status)?;
    } else {
        print_human(&status);
    }
    Ok(())
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
            println!("changes: {} rows", c.rows);
            if let Some(n) = &c.newest {
                println!(
                    "  newest:       {} {} {} at {}",
                    n.operation,
                    n.table,
                    n.primary_key.as_deref().unwrap_or("-"),
                    n.committed_at
                );
            }
        }
    }
}
