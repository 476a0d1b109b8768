//! Safe by default: security headers on every response (a Content Security Policy that runs
//! only the UI's own script), the optional token (bearer header or login form), and the CSRF
//! token of the forms that write.

use std::sync::Arc;

use axum::extract::{Form, Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, COOKIE, LOCATION, REFERRER_POLICY,
    SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use crate::html::{page, Base, Nav};
use crate::state::State as UiState;

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                      connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                      base-uri 'none'";
const COOKIE_NAME: &str = "bemi_ui_token";

/// Adds the security headers to every response, the login page and errors included.
pub(crate) async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (CONTENT_SECURITY_POLICY, POLICY),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (X_FRAME_OPTIONS, "DENY"),
        (REFERRER_POLICY, "no-referrer"),
        (CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// With a token configured, lets through only requests that carry it (and the login page and
/// the stylesheet it needs); pages redirect to the login form, anything else gets 401.
pub(crate) async fn authenticate(
    State(state): State<Arc<UiState>>,
    base: Base,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if path == "/login" || path == "/assets/style.css" || carries(request.headers(), token) {
        return next.run(request).await;
    }
    if request.method() == axum::http::Method::GET && path != "/feed" {
        return redirect(&base.to("/login"));
    }
    (
        StatusCode::UNAUTHORIZED,
        "the audit trail UI needs its token",
    )
        .into_response()
}

/// Whether the request carries `token`, as a bearer header or as the login cookie.
fn carries(headers: &HeaderMap, token: &str) -> bool {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='));
    bearer
        .into_iter()
        .chain(cookie)
        .any(|given| same(given.as_bytes(), token.as_bytes()))
}

/// Compares secrets in time that does not depend on where they differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Whether a form's CSRF field is this process's token.
pub(crate) fn csrf_ok(state: &UiState, given: &str) -> bool {
    same(given.as_bytes(), state.csrf.as_bytes())
}

pub(crate) async fn login_page(base: Base) -> Response {
    login_form(&base, None).into_response()
}

fn login_form(base: &Base, error: Option<&str>) -> maud::Markup {
    page(
        base,
        "Log in",
        Nav::None,
        html! {
            h1 { "Log in" }
            @if let Some(error) = error { p.error { (error) } }
            form method="post" action=(base.to("/login")) {
                label { "Token " input type="password" name="token" autocomplete="current-password" autofocus; }
                " "
                button type="submit" { "Log in" }
            }
        },
    )
}

#[derive(Deserialize)]
pub(crate) struct Login {
    token: String,
}

pub(crate) async fn login_submit(
    State(state): State<Arc<UiState>>,
    base: Base,
    Form(login): Form<Login>,
) -> Response {
    let Some(token) = &state.token else {
        return redirect(&base.to("/"));
    };
    if !same(login.token.as_bytes(), token.as_bytes()) {
        let form = login_form(&base, Some("That is not the token."));
        return (StatusCode::UNAUTHORIZED, form).into_response();
    }
    let mut response = redirect(&base.to("/"));
    let path = if base.0.is_empty() { "/" } else { &base.0 };
    let cookie = format!("{COOKIE_NAME}={token}; Path={path}; HttpOnly; SameSite=Strict");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

/// A 303 to `to`.
pub(crate) fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}
