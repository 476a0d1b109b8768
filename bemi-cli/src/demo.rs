//! `bemi demo`: track a small `todo` table and print its audit trail.

use std::time::{Duration, Instant};

use bemi_core::changes_table::ChangesTable;
use bemi_core::sink::PostgresSink;
use bemi_core::{ConnectOptions, Error, ErrorKind, Result, Tracker};
use bemi_temp_postgres::TempPostgres;
use tokio_postgres::Client;

use crate::args::DemoArgs;

const TABLE: &str = "bemi_demo_todo";
const SLOT: &str = "bemi_demo";
const CHANGES: &str = "bemi_demo_changes";

pub(crate) async fn demo(args: DemoArgs) -> Result<()> {
    // Keep the throwaway server alive until the end; dropping it removes it.
    let (options, _server) = match &args.database_url {
        Some(url) => (url.parse::<ConnectOptions>()?, None),
        None => {
            println!("Starting a throwaway PostgreSQL (no DATABASE_URL given)...");
            let not_started = |e: Box<dyn std::error::Error + Send + Sync>| {
                Error::new(ErrorKind::Config, "could not start a throwaway PostgreSQL")
                    .with_source(e)
            };
            let pg = tokio::task::spawn_blocking(TempPostgres::start)
                .await
                .map_err(|e| not_started(e.into()))?
                .map_err(|e| not_started(e.into()))?;
            let options: ConnectOptions = pg.url("postgres").parse()?;
            (options, Some(pg))
        }
    };
    let sql = options.connect().await?;
    sql.batch_execute(&format!(
        "DROP TABLE IF EXISTS {TABLE};
         CREATE TABLE {TABLE} (id serial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false);
         ALTER TABLE {TABLE} REPLICA IDENTITY FULL;"
    ))
    .await?;

    let sink = PostgresSink::connect(&options)?.table(CHANGES);
    let tracker = Tracker::builder(options.clone(), sink)
        .slot(SLOT)
        .publication(SLOT)
        .tables(bemi_core::setup::Tables::Only(vec![
            bemi_query::TableName::new(TABLE),
        ]))
        .start()
        .await?;
    println!("Tracking {TABLE}; making changes as two users...\n");

    write(
        &sql,
        r#"{"user": "alice", "endpoint": "POST /todos"}"#,
        &format!("INSERT INTO {TABLE} (task) VALUES ('Buy milk'), ('Write report')"),
    )
    .await?;
    write(
        &sql,
        r#"{"user": "bob", "endpoint": "PATCH /todos/1"}"#,
        &format!("UPDATE {TABLE} SET done = true WHERE id = 1"),
    )
    .await?;
    write(
        &sql,
        r#"{"user": "alice", "endpoint": "DELETE /todos/2"}"#,
        &format!("DELETE FROM {TABLE} WHERE id = 2"),
    )
    .await?;
    // A write with no context: still tracked, with an empty context.
    sql.batch_execute(&format!(
        "UPDATE {TABLE} SET task = 'Buy oat milk' WHERE id = 1"
    ))
    .await?;

    let rows = wait_for_changes(&sql, 5).await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            tracker.shutdown().await?;
            return Err(e);
        }
    };
    print_table(&rows);
    if args.ui {
        println!("\nThe database and the tracker keep running: browse, time-travel and revert.");
        let config = bemi_ui::UiConfig::new(options.clone())
            .changes_table(ChangesTable::new("public", CHANGES))
            .allow_revert(true)
            .tracker(tracker.watch());
        let served = crate::ui::serve(config, args.listen, false).await;
        tracker.shutdown().await?;
        served?;
    } else {
        tracker.shutdown().await?;
    }
    // The server ends the tracker's walsender a moment after the tracker disconnects.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let active: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&SLOT],
            )
            .await?
            .get(0);
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sql.batch_execute(&format!(
        "SELECT pg_drop_replication_slot('{SLOT}');
         DROP PUBLICATION {SLOT}; DROP TABLE {TABLE}; DROP TABLE {CHANGES};
         DELETE FROM _bemi_progress WHERE slot = '{SLOT}';"
    ))
    .await?;
    println!("\nDone. The demo's table, slot and publication were removed.");
    Ok(())
}

/// One transaction whose first statement carries the context, as the adapters do.
async fn write(sql: &Client, context: &str, statement: &str) -> Result<()> {
    sql.batch_execute("BEGIN").await?;
    sql.execute(bemi_context::EMIT_SQL, &[&context]).await?;
    sql.batch_execute(statement).await?;
    sql.batch_execute("COMMIT").await?;
    Ok(())
}

type Rows = Vec<(String, Option<String>, String, String, String)>;

async fn wait_for_changes(sql: &Client, expected: usize) -> Result<Rows> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = sql
            .query(
                &format!(
                    "SELECT operation, primary_key, context::text, before::text, after::text
                     FROM {CHANGES} ORDER BY commit_lsn, ordinal"
                ),
                &[],
            )
            .await?;
        if rows.len() >= expected || Instant::now() > deadline {
            return Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_table(rows: &Rows) {
    println!(
        "{:<9} {:<3} {:<48} BEFORE -> AFTER",
        "OPERATION", "ID", "CONTEXT"
    );
    for (operation, key, context, before, after) in rows {
        println!(
            "{:<9} {:<3} {:<48} {} -> {}",
            operation,
            key.as_deref().unwrap_or("-"),
            context,
            before,
            after
        );
    }
}
