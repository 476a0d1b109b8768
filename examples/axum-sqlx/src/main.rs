//! A todo API on axum and sqlx whose audit trail records who changed what, and shows each
//! todo's history. Run it with `DATABASE_URL` set (PostgreSQL 14+, `wal_level = logical`, a
//! role with REPLICATION); `ADDR` sets where it listens (default 127.0.0.1:3000).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use bemi_context::{Context, ContextLayer};
use bemi_core::sink::PostgresSink;
use bemi_core::{ConnectOptions, Tracker, TrackerWatch};
use bemi_query::ChangeQuery;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;

#[derive(Clone)]
struct App {
    pool: PgPool,
    tracker: TrackerWatch,
}

type ApiResult = Result<Json<Value>, (StatusCode, String)>;

fn internal(error: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

/// Each request's context: who (the `x-user-id` header) and which endpoint.
fn request_context(request: &Request<Body>) -> Context {
    let user = request
        .headers()
        .get("x-user-id")
        .and_then(|v| v.to_str().ok());
    let endpoint = format!("{} {}", request.method(), request.uri().path());
    Context::new()
        .with("user_id", user.unwrap_or("anonymous"))
        .with("endpoint", endpoint)
}

#[derive(Deserialize)]
struct NewTodo {
    title: String,
}

async fn create(State(app): State<App>, Json(todo): Json<NewTodo>) -> ApiResult {
    // BEGIN with the request's context as the transaction's first statement.
    let mut tx = bemi_sqlx::begin(&app.pool).await.map_err(internal)?;
    let id: i64 = sqlx::query_scalar("INSERT INTO todos (title) VALUES ($1) RETURNING id")
        .bind(&todo.title)
        .fetch_one(&mut *tx)
        .await
        .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    Ok(Json(json!({"id": id, "title": todo.title, "done": false})))
}

#[derive(Deserialize)]
struct Edit {
    done: bool,
}

async fn edit(State(app): State<App>, Path(id): Path<i64>, Json(edit): Json<Edit>) -> ApiResult {
    // A single write, in a transaction of its own that carries the context.
    let update = sqlx::query("UPDATE todos SET done = $1 WHERE id = $2")
        .bind(edit.done)
        .bind(id);
    let done = bemi_sqlx::execute(&app.pool, update)
        .await
        .map_err(internal)?;
    if done.rows_affected() == 0 {
        return Err((StatusCode::NOT_FOUND, format!("no todo {id}")));
    }
    Ok(Json(json!({"id": id, "done": edit.done})))
}

/// Every change of one todo, oldest first: what changed, when, and who did it.
async fn history(State(app): State<App>, Path(id): Path<i64>) -> ApiResult {
    // Read your writes: wait until everything committed so far is in the trail.
    app.tracker.sync().await.map_err(internal)?;
    let table = "todos".parse().map_err(internal)?;
    let changes = ChangeQuery::history(table, id.to_string())
        .fetch(&app.pool)
        .await
        .map_err(internal)?;
    let history: Vec<Value> = changes
        .iter()
        .map(|change| {
            json!({
                "operation": change.operation,
                "committed_at": change.committed_at,
                "context": change.context,
                "diff": change.diff(),
            })
        })
        .collect();
    Ok(Json(Value::from(history)))
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let url = std::env::var("DATABASE_URL")?;
    let pool = PgPool::connect(&url).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS todos (
           id bigserial PRIMARY KEY, title text NOT NULL, done boolean NOT NULL DEFAULT false
         )",
    )
    .execute(&pool)
    .await?;

    // The tracker runs in this process. At start it sets up what is missing (publication,
    // REPLICA IDENTITY FULL, replication slot), then stores every change in `changes`.
    let options: ConnectOptions = url.parse()?;
    let sink = PostgresSink::connect(&options)?;
    let tracker = Tracker::builder(options, sink)
        .slot("todo_audit")
        .start()
        .await?;

    let app = Router::new()
        .route("/todos", post(create))
        .route("/todos/{id}", patch(edit))
        .route("/todos/{id}/history", get(history))
        .layer(ContextLayer::new(request_context))
        .with_state(App {
            pool,
            tracker: tracker.watch(),
        });
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // Stores what is buffered, confirms it to the slot, and closes the stream.
    tracker.shutdown().await?;
    Ok(())
}
