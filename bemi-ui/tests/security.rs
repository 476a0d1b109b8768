//! The UI's protections, through its router on a real trail: the token (bearer and login
//! form), the security headers, revert switched off, the CSRF token, and a role that can only
//! `SELECT` the `changes` table.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use bemi_testkit::trail::{start, sync, write};
use bemi_ui::UiConfig;
use serde_json::json;
use tower::ServiceExt as _;

const TODO: &str =
    "CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL, done bool NOT NULL DEFAULT false);
     ALTER TABLE todo REPLICA IDENTITY FULL;";

/// The status, headers and body of one request.
async fn send(router: &Router, request: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router answers");
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("a body");
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("a request")
}

fn post(uri: &str, form: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .expect("a request")
}

#[tokio::test]
async fn token_headers_revert_switch_and_csrf() {
    let (db, sql, tracker) = start(TODO).await;
    write(
        &sql,
        json!({"user": "bob"}),
        "INSERT INTO todo VALUES (1, 'a');",
    )
    .await;
    sync(&sql, &tracker).await;

    let locked = bemi_ui::router(UiConfig::new(db.options()).token("0123456789abcdef")).unwrap();
    // Without the token: pages go to the login form, the feed is refused; headers everywhere.
    let (status, headers, _) = send(&locked, get("/")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/login");
    assert!(headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    let (status, _, _) = send(&locked, get("/feed")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, headers, _) = send(&locked, get("/login")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
    // A bearer token.
    let bearer = Request::get("/")
        .header(header::AUTHORIZATION, "Bearer 0123456789abcdef")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(&locked, bearer).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("bob"));
    // The login form: a wrong token is refused, the right one sets the cookie.
    let (status, headers, _) = send(&locked, post("/login", "token=wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!headers.contains_key(header::SET_COOKIE));
    let (status, headers, _) = send(&locked, post("/login", "token=0123456789abcdef")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let with_cookie = Request::get("/status")
        .header(header::COOKIE, cookie.split(';').next().unwrap())
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&locked, with_cookie).await.0, StatusCode::OK);

    // Revert is off by default: neither the dry run nor a POST.
    let open = bemi_ui::router(UiConfig::new(db.options())).unwrap();
    let (status, _, body) = send(&open, get("/revert?key=user&value=bob")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("--allow-revert"), "{body}");
    // With revert allowed, a POST without the page's CSRF token writes nothing.
    let allowed = bemi_ui::router(UiConfig::new(db.options()).allow_revert(true)).unwrap();
    let (status, _, body) = send(&allowed, get("/revert?key=user&value=bob")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("DELETE FROM"),
        "the dry run undoes the insert: {body}"
    );
    let (status, _, _) = send(&allowed, post("/revert", "key=user&value=bob&csrf=forged")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let rows: i64 = sql
        .query_one("SELECT count(*) FROM todo", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "nothing was reverted");
    // An empty selection is refused rather than reverting everything.
    let (status, _, _) = send(&allowed, get("/revert")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_role_that_can_only_select_changes_browses_and_revert_says_it_needs_more() {
    let (db, sql, tracker) = start(TODO).await;
    write(
        &sql,
        json!({"user": "alice"}),
        "INSERT INTO todo VALUES (1, 'a');",
    )
    .await;
    write(
        &sql,
        json!({"user": "bob"}),
        "UPDATE todo SET done = true WHERE id = 1;",
    )
    .await;
    sync(&sql, &tracker).await;
    let role = format!("{}_auditor", db.name());
    sql.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'auditor-pass';
         GRANT SELECT ON changes TO {role};"
    ))
    .await
    .unwrap();
    let auditor = db
        .options()
        .with_user(role.as_str())
        .with_password("auditor-pass");
    let ui = bemi_ui::router(UiConfig::new(auditor).allow_revert(true)).unwrap();

    let (status, _, body) = send(&ui, get("/?key=user&value=bob")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cursor = body
        .split("href=\"/change/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("a link to bob's change: {body}"))
        .to_owned();
    for page in [
        format!("/change/{cursor}"),
        "/record?table=public.todo&pk=1".to_owned(),
        "/status".to_owned(),
    ] {
        let (status, _, body) = send(&ui, get(&page)).await;
        assert_eq!(status, StatusCode::OK, "{page}: {body}");
    }
    // Reverting reads and writes the tracked table: the page says the role lacks that.
    let (status, _, body) = send(&ui, get("/revert?key=user&value=bob")).await;
    assert_ne!(status, StatusCode::OK);
    assert!(body.contains("permission denied"), "{body}");
    tracker.shutdown().await.unwrap();
}
