//! The soak program for a short time (3 minutes unless `BEMI_SOAK_DURATION` says otherwise):
//! the worker under kills, restarts, walsender terminations, destination
//! outages and read-only periods, and DDL, must store every committed change exactly once.
//! The full run is `cargo run --release -p bemi-tests --bin soak -- --duration 30m`.

use std::process::Command;

#[test]
fn a_short_soak_loses_and_doubles_nothing() {
    let duration = std::env::var("BEMI_SOAK_DURATION").unwrap_or_else(|_| "3m".to_owned());
    // The soak program builds the `bemi` binary next to itself with the `CARGO` that runs
    // this test, so the worker is the code under test.
    let output = Command::new(env!("CARGO_BIN_EXE_soak"))
        .args(["--duration", &duration])
        .env_remove("BEMI_SOAK_BEMI")
        .output()
        .expect("the soak program runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let changes = stdout
        .lines()
        .find(|l| l.starts_with("changes "))
        .unwrap_or_else(|| panic!("no summary in the soak output:\n{stdout}\n{stderr}"));
    assert!(
        changes.contains(" lost 0,") && changes.contains(" doubled 0,"),
        "{changes}"
    );
    assert!(
        output.status.success(),
        "the soak failed ({}); see its summary above",
        output.status
    );
}
