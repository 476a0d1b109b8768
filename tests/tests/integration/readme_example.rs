//! The README's complete axum + sqlx app: its two blocks are `examples/axum-sqlx` as they are,
//! and that app, in a crate of its own outside the workspace (its own lock file, only the
//! README's `cargo add`-style requirements, our crates patched in from this checkout), builds,
//! runs against a real server with the tracker in process, answers real HTTP requests with
//! each todo's history, and stops gracefully on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bemi_testkit::TestDatabase;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::axum_app::request;

const WAIT: Duration = Duration::from_secs(120);

/// The crates of this checkout the example depends on, patched in for their crates.io names.
const PATCHED: [&str; 4] = ["bemi-context", "bemi-core", "bemi-query", "bemi-sqlx"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The code block after `<!-- readme-example: {name} -->` in the README.
fn readme_block(readme: &str, name: &str) -> String {
    let marker = format!("<!-- readme-example: {name} -->\n");
    let start = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("the README has no block {name}"));
    let block = &readme[start + marker.len()..];
    let body = &block[block.find('\n').expect("a fence") + 1..];
    body[..body.find("```").expect("a closing fence")].to_owned()
}

#[tokio::test]
async fn the_readme_app_builds_on_its_own_and_serves_histories() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let example = repo().join("examples/axum-sqlx");
    let cargo_toml = readme_block(&readme, "Cargo.toml");
    let main_rs = readme_block(&readme, "src/main.rs");
    assert_eq!(
        cargo_toml,
        std::fs::read_to_string(example.join("Cargo.toml")).unwrap(),
        "the README's Cargo.toml is not examples/axum-sqlx/Cargo.toml"
    );
    assert_eq!(
        main_rs,
        std::fs::read_to_string(example.join("src/main.rs")).unwrap(),
        "the README's main.rs is not examples/axum-sqlx/src/main.rs"
    );

    // A crate of its own, from the README text: a workspace of its own, a fresh lock file.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("readme-example");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let mut manifest = cargo_toml.clone();
    manifest.push_str("\n[workspace]\n\n[patch.crates-io]\n");
    for name in PATCHED {
        let path = repo().join(name);
        manifest.push_str(&format!(
            "{name} = {{ path = {:?} }}\n",
            path.display().to_string()
        ));
    }
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/main.rs"), &main_rs).unwrap();
    let _ = std::fs::remove_file(dir.join("Cargo.lock"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // A target directory of its own, kept between runs (under the workspace's target).
    let target = repo().join("target/readme-example");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(|dir| PathBuf::from(dir).join("readme-example"))
        .unwrap_or(target);
    let built = tokio::process::Command::new(&cargo)
        .args(["build", "--quiet"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .await
        .unwrap();
    assert!(built.success(), "the README's app does not build: {built}");
    let lock = std::fs::read_to_string(dir.join("Cargo.lock")).unwrap();
    for (name, major) in [("sqlx", "0.9."), ("axum", "0.8.")] {
        let entry = format!("name = \"{name}\"\nversion = \"{major}");
        assert!(
            lock.contains(&entry),
            "{name} is not at {major}x in the app's lock file"
        );
    }

    // Run it on a database of its own.
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    let mut app = tokio::process::Command::new(target.join("debug/todo-audit"))
        .env("DATABASE_URL", db.options().to_url())
        .env("ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(app.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .expect("the app did not start listening")
        .unwrap()
        .expect("the app ended before listening");
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();

    let created = request(
        addr,
        "POST",
        "/todos",
        Some("42"),
        Some(json!({"title": "write docs"})),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let id = created.json()["id"].as_i64().unwrap();
    let edited = request(
        addr,
        "PATCH",
        &format!("/todos/{id}"),
        Some("7"),
        Some(json!({"done": true})),
    )
    .await;
    assert_eq!(edited.status, 200, "{}", edited.body);
    // Right after the writes: the history endpoint syncs with the tracker, no polling.
    let history = request(addr, "GET", &format!("/todos/{id}/history"), None, None).await;
    assert_eq!(history.status, 200, "{}", history.body);
    let history = history.json();
    let summary: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|change| {
            (
                change["operation"].clone(),
                change["context"].clone(),
                change["diff"].get("done").cloned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                json!("CREATE"),
                json!({"user_id": "42", "endpoint": "POST /todos"}),
                Some(json!([null, false]))
            ),
            (
                json!("UPDATE"),
                json!({"user_id": "7", "endpoint": format!("PATCH /todos/{id}")}),
                Some(json!([false, true]))
            ),
        ],
        "{history}"
    );

    // SIGTERM: a graceful shutdown, with status 0.
    let pid = app.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, app.wait())
        .await
        .expect("the app did not stop")
        .unwrap();
    assert!(status.success(), "the app stopped with {status}");
    // The slot the app made is its own to keep; this test's database goes, so the slot too.
    sql.execute("SELECT pg_drop_replication_slot('todo_audit')", &[])
        .await
        .unwrap();
}
