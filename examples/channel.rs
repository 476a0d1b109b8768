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

use bemi_core::sink::ChannelSink;
use bemi_core::Tracker;
use bemi_examples::{BoxError, Database};
use futures_util::StreamExt as _;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let db = Database::from_env().await?;
    let throwaway = db.throwaway_url();
    if let Some(url) = &throwaway {
        println!("started a throwaway PostgreSQL at {url}");
    }
    let options = db.options().clone();

    let (sink, mut changes) = ChannelSink::new(1024);
    let tracker = Tracker::builder(options.clone(), sink)
        .slot("bemi_example")
        .publication("bemi_example")
        .start()
        .await?;

    if throwaway.is_some() {
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

    let expected = throwaway.as_ref().map(|_| 4);
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
    // The example's own slot on a throwaway server goes away with the server.
    db.close().await;
    Ok(())
}
