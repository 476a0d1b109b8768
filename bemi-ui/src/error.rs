//! Errors as pages: a bad filter says what is wrong (400), a failure of the database is logged
//! and shown (500), and nothing a user typed is echoed unescaped.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bemi_core::{Error, ErrorKind};
use maud::html;

/// What a page handler returns when it cannot show its page.
#[derive(Debug)]
pub(crate) enum PageError {
    /// The request is wrong (a filter that does not parse, a missing parameter).
    BadRequest(String),
    /// The page is switched off.
    Forbidden(String),
    /// Nothing is stored under that address.
    NotFound(String),
    /// The database or the read API failed.
    Failed(Error),
}

pub(crate) type PageResult<T> = std::result::Result<T, PageError>;

impl From<Error> for PageError {
    fn from(error: Error) -> Self {
        match error.kind() {
            ErrorKind::Config => PageError::BadRequest(error.report()),
            _ => PageError::Failed(error),
        }
    }
}

impl From<tokio_postgres::Error> for PageError {
    fn from(error: tokio_postgres::Error) -> Self {
        PageError::Failed(error.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            PageError::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            PageError::Forbidden(message) => (StatusCode::FORBIDDEN, message),
            PageError::NotFound(message) => (StatusCode::NOT_FOUND, message),
            PageError::Failed(error) => {
                let message = error.report();
                tracing::error!(error = %message, "a page of the audit trail UI failed");
                (StatusCode::INTERNAL_SERVER_ERROR, message)
            }
        };
        let title = status.canonical_reason().unwrap_or("Error");
        let page = html! {
            (maud::DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "Bemi · " (title) } }
                body {
                    h1 { (title) }
                    p class="error" { (message) }
                }
            }
        };
        (status, page).into_response()
    }
}
