//! Spawns the tracker with a `ChannelSink` and prints changes as they happen.
//!
//! ```sh
//! cargo run -p bemi-examples --example channel                 # a throwaway PostgreSQL
//! DATABASE_URL=postgres://postgres@localhost/app cargo run -p bemi-examples --example channel
//! ```
//!
//! With a throwaway database it also makes a few changes itself; with your own database it
//! prints every change until Ctrl-C, and leaves its slot `bemi_example` behind for the next run
//! (drop it with `SELECT pg_drop_replication_slot('bemi_example')` so it does not pin WAL).
#![allow(clippy::print_stdout)]

use bemi_core::embedded::TempPostgres;
use bemi_core::sink::ChannelSink;
use bemi_core::{ConnectOptions, Tracker};
use futures_util::StreamExt as _;

#[tokio::main]
async fn main() -> bemi_core::Result<()> {
    let (options, server) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url.parse::<ConnectOptions>()?, None),
        Err(_) => {
            let pg = tokio::task::spawn_blocking(TempPostgres::start)
                .await
                .expect("the server start does not panic")?;
            println!("started a throwaway PostgreSQL at {}", pg.url("postgres"));
            (pg.url("postgres").parse()?, Some(pg))
        }
    };

    let (sink, mut changes) = ChannelSink::new(1024);
    let tracker = Tracker::builder(options.clone(), sink)
        .slot("bemi_example")
        .publication("bemi_example")
        .start()
        .await?;

    if server.is_some() {
        let sql = options.connect().await?;
        sql.batch_execute(
            "CREATE TABLE notes (id serial PRIMARY KEY, body text);
             BEGIN;
             SELECT pg_logical_emit_message(true, '_bemi', '{\"user\": \"ada\"}');
             INSERT INTO notes (body) VALUES ('hello'), ('world');
             UPDATE notes SET body = 'hello, world' WHERE id = 1;
             DELETE FROM notes WHERE id = 2;
             COMMIT;",
        )
        .await?;
    }

    let expected = if server.is_some() { Some(4) } else { None };
    let mut seen = 0;
    loop {
        tokio::select! {
            change = changes.next() => {
                let Some(change) = change else { break };
                println!(
                    "{:<8} {}.{} key={} context={} before={} after={}",
                    change.operation,
                    change.schema,
                    change.table,
                    change.primary_key.as_deref().unwrap_or("-"),
                    change.context.as_str(),
                    change.before.as_json(),
                    change.after.as_json(),
                );
                seen += 1;
                if Some(seen) == expected {
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracker.shutdown().await?;
    if server.is_some() {
        // The example's own slot on the throwaway server goes away with the server.
        drop(server);
    }
    Ok(())
}
