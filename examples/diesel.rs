//! Writes through Diesel with context, and prints the changes the tracker recorded.
//!
//! ```sh
//! cargo run -p bemi-examples --example diesel                 # a throwaway PostgreSQL
//! DATABASE_URL=postgres://postgres@localhost/app cargo run -p bemi-examples --example diesel
//! ```
//!
//! The tracker runs in this process and stores changes in the `changes` table. The writes are
//! Diesel's, synchronous, on tokio's blocking pool: `bemi_context::spawn_blocking` carries the
//! "request's" context there, and `bemi_diesel::transaction` emits it as the first statement of
//! each transaction (`bemi_diesel::transaction_with` an explicit one).
//!
//! With your own database (PostgreSQL 14+, `wal_level = logical`, a role with REPLICATION) it
//! creates the table `bemi_example_orders`, and leaves it, the `changes` table and its slot
//! `bemi_diesel_example` behind (drop the slot with
//! `SELECT pg_drop_replication_slot('bemi_diesel_example')` so it does not pin WAL, and its stored
//! position with `DELETE FROM _bemi_progress WHERE slot = 'bemi_diesel_example'`, or the next run refuses
//! to start over the gap).
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use bemi_context::{scope, Context};
use bemi_examples::{spawn_tracker, BoxError as Error, Database};
use diesel::prelude::*;

diesel::table! {
    /// The example's table.
    bemi_example_orders (id) {
        /// The primary key.
        id -> Int4,
        /// What was ordered.
        item -> Text,
        /// How many.
        quantity -> Int4,
    }
}
use bemi_example_orders as orders;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let db = Database::from_env().await?;
    if let Some(url) = db.throwaway_url() {
        println!("started a throwaway PostgreSQL at {url}");
    }
    // Diesel (libpq) reads the URL of the same settings.
    let url = db.options().to_url();
    let sql = db.options().connect().await?;
    sql.batch_execute(
        "CREATE TABLE IF NOT EXISTS bemi_example_orders (
           id serial PRIMARY KEY, item text NOT NULL, quantity int NOT NULL);
         ALTER TABLE bemi_example_orders REPLICA IDENTITY FULL;",
    )
    .await?;

    let tracker = spawn_tracker(db.options(), "bemi_diesel_example", "bemi_diesel_example").await?;
    let start: i64 = sql
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
        .await?
        .get(0);

    // What an HTTP middleware would put in scope for a request.
    let request = Context::new()
        .with("endpoint", "POST /orders")
        .with("user_id", 42)
        .with("request_id", "r-1001");
    scope(request, async move {
        bemi_context::spawn_blocking(move || -> Result<(), Error> {
            let mut conn = PgConnection::establish(&url)?;
            // The current context: the request's, carried by spawn_blocking.
            bemi_diesel::transaction(&mut conn, |conn| {
                let id: i32 = diesel::insert_into(orders::table)
                    .values((orders::item.eq("book"), orders::quantity.eq(1)))
                    .returning(orders::id)
                    .get_result(conn)?;
                diesel::insert_into(orders::table)
                    .values((orders::item.eq("pen"), orders::quantity.eq(3)))
                    .execute(conn)?;
                diesel::update(orders::table.find(id))
                    .set(orders::quantity.eq(2))
                    .execute(conn)
            })?;
            // An explicit context, e.g. for a background job.
            let job = Context::new()
                .with("job", "cleanup")
                .with("reason", "it's */ done");
            bemi_diesel::transaction_with(&mut conn, &job, |conn| {
                diesel::delete(orders::table.filter(orders::item.eq("pen"))).execute(conn)
            })?;
            Ok(())
        })
        .await?
    })
    .await?;

    // Wait for the tracker to record the 4 changes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let query = "SELECT operation, \"table\", primary_key, context::text, before::text, after::text
                 FROM changes WHERE position >= $1 AND \"table\" = 'bemi_example_orders'
                 ORDER BY commit_lsn, ordinal";
    let rows = loop {
        let rows = sql.query(query, &[&start]).await.unwrap_or_default();
        if rows.len() >= 4 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("\nchanges recorded:");
    for row in &rows {
        let (operation, table, key): (String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        let (context, before, after): (String, String, String) =
            (row.get(3), row.get(4), row.get(5));
        println!(
            "{operation:<7} {table} key={} context={context}\n        before={before} after={after}",
            key.unwrap_or_default()
        );
    }
    tracker.shutdown().await?;
    db.close().await;
    if rows.len() < 4 {
        return Err(format!("expected 4 changes, the tracker recorded {}", rows.len()).into());
    }
    Ok(())
}
