//! The `axum_app` example end to end: real HTTP requests to the app, served on a throwaway
//! PostgreSQL with the tracker in process, and the request context of each write found in the
//! audit trail.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bemi_examples::todo_app::TodoApp;
use bemi_testkit::TestDatabase;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(120);

/// An HTTP/1.1 response: status and body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: not JSON: {:?}", self.body))
    }
}

/// Sends one request on a new connection (`Connection: close`) and reads the whole response.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    user: Option<&str>,
    body: Option<Value>,
) -> Response {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if let Some(user) = user {
        head.push_str(&format!("x-user-id: {user}\r\n"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));

    let mut stream = TcpStream::connect(addr).await.expect("connect to the app");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).expect("a UTF-8 response");

    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {head:?}"));
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked responses are not read by this client: {head}"
    );
    Response {
        status,
        body: body.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_context_reaches_the_audit_trail() {
    let db = TestDatabase::create()
        .await
        .expect("a test database on the throwaway PostgreSQL server");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = TodoApp::new(db.options())
        .slot(db.slot())
        .publication(db.publication());
    let server = tokio::spawn(app.serve(listener, async move {
        let _ = stopped.await;
    }));

    // Requests wait in the listener's backlog until the app serves (after its tracker starts).
    let created = request(
        addr,
        "POST",
        "/todos",
        Some("42"),
        Some(json!({"title": "write docs"})),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let todo = created.json();
    assert_eq!(todo["title"], "write docs");
    let id = todo["id"].as_i64().expect("an id");

    let path = format!("/todos/{id}");
    let edited = request(addr, "PATCH", &path, Some("7"), Some(json!({"done": true}))).await;
    assert_eq!(edited.status, 200, "{edited:?}");
    assert_eq!(edited.json()["done"], true);

    let anonymous = request(
        addr,
        "POST",
        "/todos",
        None,
        Some(json!({"title": "no user"})),
    )
    .await;
    assert_eq!(anonymous.status, 201, "{anonymous:?}");

    let deleted = request(addr, "DELETE", &path, Some("42"), None).await;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    let missing = request(addr, "DELETE", &path, Some("42"), None).await;
    assert_eq!(missing.status, 404, "{missing:?}");

    let listed = request(addr, "GET", "/todos", Some("1"), None).await;
    assert_eq!(
        listed.json(),
        json!([{"id": id + 1, "title": "no user", "done": false}])
    );

    // Poll the app's own audit-trail endpoint until the tracker has stored the four writes.
    let deadline = Instant::now() + WAIT;
    let changes = loop {
        let response = request(addr, "GET", "/changes", None, None).await;
        assert_eq!(response.status, 200, "{response:?}");
        let changes = response.json();
        let changes = changes.as_array().expect("a JSON array").clone();
        if changes.len() >= 4 {
            break changes;
        }
        assert!(!server.is_finished(), "the app stopped: {:?}", server);
        assert!(
            Instant::now() < deadline,
            "the audit trail has {} changes after {WAIT:?}: {changes:?}",
            changes.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // The audit trail UI nested at /audit: its pages link under /audit.
    let ui = request(addr, "GET", "/audit", None, None).await;
    assert_eq!(ui.status, 200, "{ui:?}");
    assert!(
        ui.body.contains("<h1>Changes</h1>")
            && ui.body.contains("href=\"/audit/change/")
            && ui
                .body
                .contains("<a href=\"/audit\" aria-current=\"page\">Changes</a>"),
        "{}",
        ui.body
    );
    let status = request(addr, "GET", "/audit/status", None, None).await;
    assert_eq!(status.status, 200, "{status:?}");
    assert!(status.body.contains("streaming"), "{}", status.body);

    // Newest first.
    let summary: Vec<(String, Value, Value)> = changes
        .iter()
        .map(|c| {
            (
                c["operation"].as_str().unwrap().to_owned(),
                c["primary_key"].clone(),
                c["context"].clone(),
            )
        })
        .collect();
    let (id, next) = (id.to_string(), (id + 1).to_string());
    assert_eq!(
        summary,
        [
            (
                "DELETE".to_owned(),
                json!(id),
                json!({"user_id": "42", "method": "DELETE", "path": path})
            ),
            (
                "CREATE".to_owned(),
                json!(next),
                json!({"method": "POST", "path": "/todos"})
            ),
            (
                "UPDATE".to_owned(),
                json!(id),
                json!({"user_id": "7", "method": "PATCH", "path": path})
            ),
            (
                "CREATE".to_owned(),
                json!(id),
                json!({"user_id": "42", "method": "POST", "path": "/todos"})
            ),
        ]
    );
    assert_eq!(changes[2]["before"]["done"], false);
    assert_eq!(changes[2]["after"]["done"], true);
    assert!(changes.iter().all(|c| c["table"] == "todos"));

    stop.send(()).unwrap();
    server
        .await
        .expect("the app task")
        .expect("the app stops cleanly");
}
