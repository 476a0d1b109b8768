//! `bemi ui` in a real headless Chromium (WebDriver), on a database whose changes a tracker in
//! this process records: filter by user, a change's diff, a record's timeline and its state at
//! an earlier moment, a revert's dry run and its application, the live tail, and `<script>` in
//! a context and in a row that does not run.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bemi_testkit::browser::Browser;
use bemi_testkit::trail::{start, sync, write};
use bemi_testkit::TestDatabase;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

const TODO: &str =
    "CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL, done bool NOT NULL DEFAULT false);
     ALTER TABLE todo REPLICA IDENTITY FULL;";

/// What a planted script would set if it ran.
const PLANTED: &str = "<script>window.__bemi_pwned = 1</script>";
const PLANTED_ROW: &str =
    "<img src=x onerror=\"window.__bemi_pwned = 2\"><script>window.__bemi_pwned = 3</script>";

/// `bemi ui` on `db` on a free port, and its address.
async fn bemi_ui(db: &TestDatabase, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bemi"))
        .args(["ui", "--listen", "127.0.0.1:0", "--database-url"])
        .arg(db.options().to_url())
        .args(extra)
        .env_remove("DATABASE_URL")
        .env_remove("BEMI_UI_TOKEN")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("bemi ui starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("bemi ui prints its address within 30 s")
        .expect("stdout reads")
        .expect("bemi ui printed its address");
    let address = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    (child, address)
}

/// Reloads `url` until `css` holds `text` (the tracker stores asynchronously).
async fn reload_until(browser: &Browser, url: &str, css: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        browser.goto(url).await;
        let shown = browser
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
                json!([css]),
            )
            .await;
        if shown.as_str().unwrap_or_default().contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{css} never showed {text:?}: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Whether a planted script ran in the page shown.
async fn pwned(browser: &Browser) -> Value {
    browser
        .execute(
            "return window.__bemi_pwned === undefined ? null : window.__bemi_pwned;",
            json!([]),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_in_a_real_browser_filters_diffs_time_travels_and_reverts() {
    let (db, sql, tracker) = start(TODO).await;
    write(
        &sql,
        json!({"user": "alice", "request_id": "r1"}),
        "INSERT INTO todo VALUES (1, 'Buy milk'), (2, 'Write report');",
    )
    .await;
    write(
        &sql,
        json!({"user": "bob", "request_id": "r2"}),
        "UPDATE todo SET done = true WHERE id = 1;",
    )
    .await;
    write(
        &sql,
        json!({"user": "mallory", "note": PLANTED}),
        &format!(
            "INSERT INTO todo VALUES (3, '{}');",
            PLANTED_ROW.replace('\'', "''")
        ),
    )
    .await;
    write(
        &sql,
        json!({"user": "alice", "request_id": "r3"}),
        "UPDATE todo SET task = 'Write the report' WHERE id = 2;",
    )
    .await;
    sync(&sql, &tracker).await;

    let (_ui, address) = bemi_ui(&db, &["--allow-revert"]).await;
    let browser = Browser::start().await;

    // The changes page, newest first; its screenshot is the README's.
    browser.goto(&format!("{address}/")).await;
    let rows = browser
        .execute(
            "return document.querySelectorAll('tbody tr[data-cursor]').length;",
            json!([]),
        )
        .await;
    assert!(
        rows.as_u64().unwrap_or(0) >= 5,
        "all changes are listed: {rows}"
    );
    let screenshot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/ui-changes.png");
    browser.screenshot(&screenshot).await;
    assert!(std::fs::metadata(&screenshot)
        .map(|m| m.len() > 10_000)
        .unwrap_or(false));

    // Filter by user, through the form.
    browser
        .execute(
            "document.querySelector('select[name=key]').value = 'user';",
            json!([]),
        )
        .await;
    browser.type_into("input[name=value]", "bob").await;
    browser.click("form.filters button[type=submit]").await;
    // The filters are in the URL.
    browser
        .url_when(|url| url.contains("key=user") && url.contains("value=bob"))
        .await;
    let bob = browser.execute("return Array.from(document.querySelectorAll('tbody tr[data-cursor]')).map(r => r.textContent);", json!([])).await;
    let bob = bob.as_array().expect("rows");
    assert_eq!(bob.len(), 1, "{bob:?}");
    assert!(bob[0].as_str().unwrap_or_default().contains("bob"));

    // The change: its diff highlights `done`.
    browser.click_link("Details").await;
    let changed = browser.text("table.diff tr.changed").await;
    assert!(
        changed.starts_with("done") && changed.contains("false") && changed.contains("true"),
        "{changed}"
    );
    let unchanged = browser
        .execute(
            "return document.querySelectorAll('table.diff tr:not(.changed)').length;",
            json!([]),
        )
        .await;
    assert_eq!(
        unchanged,
        json!(3),
        "id and task are shown unchanged (and the head row)"
    );
    let change_url = browser.url().await;

    // The record's timeline, and the row as it was before bob's change.
    browser
        .click_link("Timeline and time travel of this row")
        .await;
    let timeline = browser
        .execute(
            "return document.querySelectorAll('table.timeline tbody tr').length;",
            json!([]),
        )
        .await;
    assert_eq!(timeline, json!(2), "created by alice, updated by bob");
    browser
        .execute(
            "document.querySelectorAll('table.timeline tbody tr')[1].querySelector('a').click();",
            json!([]),
        )
        .await;
    let before = browser.text("div.snapshot pre.row").await;
    let before: Value = serde_json::from_str(&before).unwrap_or_else(|e| panic!("{e}: {before}"));
    assert_eq!(before, json!({"id": 1, "task": "Buy milk", "done": false}));

    // Revert bob's transaction: the dry run, then apply.
    browser.goto(&change_url).await;
    browser.click_link("Revert this transaction…").await;
    let dry_run = browser.text("pre.sql").await;
    assert!(
        dry_run.contains("UPDATE") && dry_run.contains("\"done\""),
        "{dry_run}"
    );
    let done: bool = sql
        .query_one("SELECT done FROM todo WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(done, "a dry run writes nothing");
    browser.click("button.danger").await;
    let applied = browser.text("p.applied").await;
    assert!(applied.contains("Reverted 1 change(s)"), "{applied}");
    let done: bool = sql
        .query_one("SELECT done FROM todo WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!done, "the revert was applied");
    // The revert appears in the trail, with its own context.
    let reverted = browser
        .execute("return document.querySelector('main a').href;", json!([]))
        .await;
    let reverted = reverted
        .as_str()
        .expect("a link to the revert's changes")
        .to_owned();
    reload_until(&browser, &reverted, "tbody", "UPDATE").await;
    let context = browser.text("tbody tr[data-cursor] td:nth-child(5)").await;
    assert!(
        context.contains("reverted") && context.contains("bemi ui"),
        "{context}"
    );

    // The live tail: a change made now appears on the open page without a reload.
    browser.goto(&format!("{address}/")).await;
    write(
        &sql,
        json!({"user": "dave"}),
        "INSERT INTO todo VALUES (4, 'Live');",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = browser
            .execute(
                "return document.querySelector('tbody').textContent;",
                json!([]),
            )
            .await;
        if text.as_str().unwrap_or_default().contains("dave") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the live tail never showed dave's change"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Planted scripts render as text and do not run: in the list, the change page, the record.
    browser
        .goto(&format!("{address}/?key=user&value=mallory"))
        .await;
    assert_eq!(pwned(&browser).await, Value::Null);
    assert!(browser.text("tbody").await.contains(PLANTED));
    browser.click_link("Details").await;
    assert_eq!(pwned(&browser).await, Value::Null);
    assert!(browser.text("pre.context").await.contains(PLANTED));
    let diff = browser.text("table.diff").await;
    assert!(
        diff.contains("<img src=x onerror=")
            && diff.contains("<script>window.__bemi_pwned = 3</script>"),
        "{diff}"
    );
    browser
        .click_link("Timeline and time travel of this row")
        .await;
    browser.execute("document.querySelectorAll('table.timeline tbody tr')[0].querySelectorAll('a')[1].click();", json!([])).await;
    assert!(browser
        .text("div.snapshot pre.row")
        .await
        .contains("onerror"));
    assert_eq!(pwned(&browser).await, Value::Null);

    drop(browser);
    tracker.shutdown().await.expect("the tracker stops cleanly");
}

/// One `GET` on its own connection: the whole answer, head and body.
async fn http_get(address: &str, path: &str) -> String {
    let host = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .expect("the UI answers");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("a request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("an answer");
    answer
}

#[tokio::test]
async fn the_demo_opens_the_ui_on_its_data_and_cleans_up_on_ctrl_c() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_bemi"))
        .args(["demo", "--ui", "--listen", "127.0.0.1:0"])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("bemi demo starts");
    let mut lines = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let address = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("stdout reads") {
            if let Some(at) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                return at.trim_end_matches('/').to_owned();
            }
        }
        panic!("the demo ended without opening the UI");
    })
    .await
    .expect("the demo opens the UI within two minutes");
    let page = http_get(&address, "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("alice") && page.contains("bemi_demo_todo"),
        "{page}"
    );
    let status = http_get(&address, "/status").await;
    assert!(
        status.contains("streaming"),
        "the demo's tracker runs: {status}"
    );

    let pid = demo.id().expect("a pid").to_string();
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(interrupted.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), demo.wait())
        .await
        .expect("the demo stops within a minute")
        .expect("wait");
    let mut rest = String::new();
    while let Some(line) = lines.next_line().await.expect("stdout reads") {
        rest.push_str(&line);
        rest.push('\n');
    }
    assert!(exit.success(), "{exit:?}: {rest}");
    assert!(rest.contains("were removed"), "{rest}");
}
