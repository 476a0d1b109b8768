//! A todo API on axum whose audit trail records who did what through which endpoint.
//!
//! ```sh
//! cargo run -p bemi-examples --example axum_app                  # a throwaway PostgreSQL
//! cargo run -p bemi-examples --example axum_app -- --port 8080
//! DATABASE_URL=postgres://postgres@localhost/app cargo run -p bemi-examples --example axum_app
//! ```
//!
//! Then:
//!
//! ```sh
//! curl -s localhost:3000/todos -H 'x-user-id: 42' -H 'content-type: application/json' -d '{"title":"write docs"}'
//! curl -s -X PATCH localhost:3000/todos/1 -H 'x-user-id: 7' -H 'content-type: application/json' -d '{"done":true}'
//! curl -s -X DELETE localhost:3000/todos/1 -H 'x-user-id: 42'
//! curl -s localhost:3000/changes
//! ```
//!
//! Each change in `/changes` carries `{"user_id", "method", "path"}` of the request that made
//! it. The tracker runs in this process (slot `bemi_axum_example`) and writes the `changes`
//! table of the same database. With your own database (PostgreSQL 14+, `wal_level = logical`, a
//! role with REPLICATION) the slot stays behind when the app stops, so that the next run misses
//! nothing. When done, drop it and its stored position (else the next run refuses to start
//! over the gap): `SELECT pg_drop_replication_slot('bemi_axum_example'); DELETE FROM
//! _bemi_progress WHERE slot = 'bemi_axum_example';`.
//!
//! The port comes from `--port` or `PORT` (default 3000; 0 picks a free one). The app prints the
//! address it listens on.

use bemi_examples::todo_app::TodoApp;
use bemi_examples::{BoxError, Database};
use tokio::net::TcpListener;

fn port() -> Result<u16, BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = match args.as_slice() {
        [] => std::env::var("PORT").ok(),
        [flag, value] if flag == "--port" => Some(value.clone()),
        [arg] if arg.starts_with("--port=") => Some(arg["--port=".len()..].to_owned()),
        _ => return Err(format!("usage: axum_app [--port PORT], not {args:?}").into()),
    };
    Ok(value.map(|v| v.parse()).transpose()?.unwrap_or(3000))
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port = port()?;

    let db = Database::from_env().await?;
    if let Some(url) = db.throwaway_url() {
        println!("started a throwaway PostgreSQL at {url}");
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);

    let served = TodoApp::new(db.options().clone())
        .serve(listener, ctrl_c())
        .await;
    db.close().await;
    served
}
