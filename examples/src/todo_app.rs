//! The `axum_app` example: a todo API whose every write carries the request's context into the
//! audit trail, with the tracker running in the same process.
//!
//! | route | does | how it writes |
//! | --- | --- | --- |
//! | `POST /todos` `{"title": …}` | creates a todo | [`bemi_sqlx::begin`], insert, commit |
//! | `GET /todos` | lists todos | |
//! | `PATCH /todos/{id}` `{"title"?: …, "done"?: …}` | edits a todo | [`bemi_sqlx::begin`], update, commit |
//! | `DELETE /todos/{id}` | deletes a todo | [`bemi_sqlx::execute`], a single write |
//! | `GET /changes` | the audit trail of this run, newest first | |
//! | `/audit/…` | the audit trail UI ([`bemi_ui::router`] nested) | |
//!
//! [`request_context`] makes each request's context, `{"user_id", "method", "path"}` (the user
//! from the `x-user-id` header), and [`bemi_context::ContextLayer`] puts the handler in its
//! scope, so the handlers never pass the context around.

use std::future::Future;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use bemi_context::{Context, ContextLayer};
use bemi_core::ConnectOptions;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::database::{changes_since, spawn_tracker, sqlx_options};
use crate::BoxError;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS todos (
       id bigserial PRIMARY KEY,
       title text NOT NULL,
       done boolean NOT NULL DEFAULT false
     );
     ALTER TABLE todos REPLICA IDENTITY FULL;";

/// The header that names the user in this example (a real app takes the user from its
/// authentication).
pub const USER_HEADER: &str = "x-user-id";

/// The app: the database it writes to and tracks, and the slot and publication of its tracker.
#[derive(Debug, Clone)]
pub struct TodoApp {
    options: ConnectOptions,
    slot: String,
    publication: String,
}

impl TodoApp {
    /// The app on the database of `options`, tracked through the slot `bemi_axum_example` and
    /// the publication `bemi`.
    pub fn new(options: ConnectOptions) -> TodoApp {
        TodoApp {
            options,
            slot: "bemi_axum_example".to_owned(),
            publication: "bemi".to_owned(),
        }
    }

    /// Sets the tracker's replication slot.
    pub fn slot(mut self, slot: impl Into<String>) -> TodoApp {
        self.slot = slot.into();
        self
    }

    /// Sets the tracker's publication.
    pub fn publication(mut self, publication: impl Into<String>) -> TodoApp {
        self.publication = publication.into();
        self
    }

    /// Creates the `todos` table if needed, spawns the tracker, and serves the API on
    /// `listener` until `shutdown` completes; then stops the tracker gracefully.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        let pool = PgPool::connect_with(sqlx_options(&self.options)).await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        let since: String = sqlx::query_scalar("SELECT to_json(now()) #>> '{}'")
            .fetch_one(&pool)
            .await?;
        let tracker = spawn_tracker(&self.options, &self.slot, &self.publication).await?;
        tracing::info!(addr = %listener.local_addr()?, "serving the todo api");
        // The audit trail UI, nested (put your own authentication layer in front of it).
        let ui = bemi_ui::UiConfig::new(self.options.clone()).tracker(tracker.watch());
        let app = router(pool.clone(), since).nest("/audit", bemi_ui::router(ui)?);
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        let stopped = tracker.shutdown().await;
        pool.close().await;
        served?;
        stopped?;
        Ok(())
    }
}

/// The context of a request: `user_id` (from the `x-user-id` header, when sent), `method` and
/// `path`.
pub fn request_context(req: &Request<Body>) -> Context {
    let mut ctx = Context::new()
        .with("method", req.method().as_str())
        .with("path", req.uri().path());
    if let Some(user) = req.headers().get(USER_HEADER).and_then(|v| v.to_str().ok()) {
        ctx.insert("user_id", user);
    }
    ctx
}

#[derive(Clone)]
struct AppState {
    pool: PgPool,
    /// Changes before this (from earlier runs on the same database) are not shown.
    since: String,
}

/// The API's routes, on `pool`, with [`request_context`] applied to every request.
fn router(pool: PgPool, since: String) -> Router {
    Router::new()
        .route("/todos", get(list).post(create))
        .route("/todos/{id}", patch(update).delete(remove))
        .route("/changes", get(changes))
        .layer(ContextLayer::new(request_context))
        .with_state(AppState { pool, since })
}

/// A todo.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct Todo {
    id: i64,
    title: String,
    done: bool,
}

#[derive(Debug, Deserialize)]
struct NewTodo {
    title: String,
}

#[derive(Debug, Deserialize)]
struct TodoPatch {
    title: Option<String>,
    done: Option<bool>,
}

/// A database error, answered with 500.
struct AppError(BoxError);

impl<E: Into<BoxError>> From<E> for AppError {
    fn from(e: E) -> Self {
        AppError(e.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        tracing::error!(error = %self.0, "request failed");
        (StatusCode::INTERNAL_SERVER_ERROR, self.0.to_string()).into_response()
    }
}

async fn list(State(app): State<AppState>) -> Result<Json<Vec<Todo>>, AppError> {
    let todos = sqlx::query_as("SELECT id, title, done FROM todos ORDER BY id")
        .fetch_all(&app.pool)
        .await?;
    Ok(Json(todos))
}

async fn create(
    State(app): State<AppState>,
    Json(new): Json<NewTodo>,
) -> Result<(StatusCode, Json<Todo>), AppError> {
    // The request's context (from ContextLayer) is the transaction's first statement.
    let mut tx = bemi_sqlx::begin(&app.pool).await?;
    let todo: Todo =
        sqlx::query_as("INSERT INTO todos (title) VALUES ($1) RETURNING id, title, done")
            .bind(new.title)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(todo)))
}

async fn update(
    State(app): State<AppState>,
    Path(id): Path<i64>,
    Json(patch): Json<TodoPatch>,
) -> Result<Response, AppError> {
    let mut tx = bemi_sqlx::begin(&app.pool).await?;
    let todo: Option<Todo> = sqlx::query_as(
        "UPDATE todos SET title = coalesce($2, title), done = coalesce($3, done)
         WHERE id = $1 RETURNING id, title, done",
    )
    .bind(id)
    .bind(patch.title)
    .bind(patch.done)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(match todo {
        Some(todo) => Json(todo).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

async fn remove(State(app): State<AppState>, Path(id): Path<i64>) -> Result<StatusCode, AppError> {
    // A single write: `execute` runs it in a transaction of its own with the context.
    let done = bemi_sqlx::execute(
        &app.pool,
        sqlx::query("DELETE FROM todos WHERE id = $1").bind(id),
    )
    .await?;
    Ok(if done.rows_affected() == 0 {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::NO_CONTENT
    })
}

async fn changes(State(app): State<AppState>) -> Result<Json<Vec<serde_json::Value>>, AppError> {
    let mut changes = changes_since(&app.pool, &app.since, None).await?;
    changes.reverse();
    Ok(Json(changes))
}
