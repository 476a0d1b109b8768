//! How fast the UI's pages answer on a trail of 1,000,000 changes (issue 19's target: the
//! Changes page with any one filter under 200 ms at the 95th percentile).
//!
//! `cargo bench -p bemi-ui --bench pages` (`BEMI_BENCH_CHANGES` sets the trail's size,
//! `BEMI_BENCH_REQUESTS` the requests per page). Each page is requested through the router,
//! as a browser would, after a few warm-up requests; the figures are per request, from the
//! request to the whole body.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bemi_testkit::trail::{fill_changes, start};
use bemi_ui::UiConfig;
use tower::ServiceExt as _;

fn env_number(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let changes = env_number("BEMI_BENCH_CHANGES", 1_000_000);
    let requests = env_number("BEMI_BENCH_REQUESTS", 50) as usize;
    let (db, sql, tracker) = start("CREATE TABLE todo (id int PRIMARY KEY)").await;
    let filling = Instant::now();
    fill_changes(&sql, db.name(), changes).await;
    println!(
        "{changes} changes written and analyzed in {:.1?}",
        filling.elapsed()
    );
    let router = bemi_ui::router(UiConfig::new(db.options())).expect("the router");
    // A transaction in the middle of the trail, as fill_changes numbers them.
    let middle = 1_099_511_627_776_u64 + (changes as u64 / 2) * 64;
    let middle = format!("{:X}-{:X}", middle >> 32, middle & 0xFFFF_FFFF);
    let pages = [
        ("changes, no filter", "/".to_owned()),
        ("changes, operation", "/?op=DELETE".to_owned()),
        ("changes, table", "/?table=public.bench_7".to_owned()),
        ("changes, primary key", "/?pk=4242".to_owned()),
        (
            "changes, since an hour ago",
            format!(
                "/?since={}",
                (chrono::Utc::now() - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M")
            ),
        ),
        ("changes, until", "/?until=2000-01-01".to_owned()),
        (
            "changes, context key user_id",
            "/?key=user_id&value=7".to_owned(),
        ),
        (
            "changes, context JSON",
            "/?context=%7B%22request_id%22%3A%22r4242%22%7D".to_owned(),
        ),
        ("changes, second page", format!("/?after={middle}-0")),
        ("change", format!("/change/{middle}-0")),
        ("record", "/record?table=public.bench_7&pk=4207".to_owned()),
        ("status", "/status".to_owned()),
    ];
    println!("| page | p50 | p95 | max |");
    println!("| --- | --- | --- | --- |");
    for (name, uri) in &pages {
        let mut times = Vec::with_capacity(requests);
        for round in 0..requests + 5 {
            let started = Instant::now();
            let response = router
                .clone()
                .oneshot(Request::get(uri.as_str()).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let elapsed = started.elapsed();
            assert!(
                status == StatusCode::OK,
                "{name}: {status} {}",
                String::from_utf8_lossy(&body)
            );
            if round >= 5 {
                times.push(elapsed);
            }
        }
        times.sort();
        let at =
            |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {name} | {} | {} | {} |",
            ms(at(0.5)),
            ms(at(0.95)),
            ms(at(1.0))
        );
    }
    tracker.shutdown().await.unwrap();
}
