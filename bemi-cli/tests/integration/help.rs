//! `bemi --help` and each subcommand's help describe every option and the variables it reads.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bemi"))
        .args(args)
        .arg("--help")
        .output()
        .expect("bemi runs");
    assert!(out.status.success(), "{args:?}");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// Every option line in the long help is followed by a description line.
fn assert_every_option_is_described(text: &str, command: &str) {
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let option = line.trim_start();
        if !(option.starts_with("--") || (option.starts_with('-') && option.get(2..3) == Some(",")))
        {
            continue;
        }
        // The description follows on the same line (short help) or the next one (long help).
        let description = match option.split_once("  ") {
            Some((_, same_line)) => same_line.trim(),
            None => lines.get(i + 1).map(|l| l.trim()).unwrap_or(""),
        };
        assert!(
            !description.is_empty() && !description.starts_with('-'),
            "`bemi {command}`: {option} has no description"
        );
    }
}

#[test]
fn every_command_describes_every_option() {
    let top = help(&[]);
    for command in [
        "run", "setup", "status", "demo", "history", "changes", "revert", "ui",
    ] {
        assert!(top.contains(command), "bemi --help lists {command}");
        let text = help(&[command]);
        assert_every_option_is_described(&text, command);
    }
    assert_every_option_is_described(&top, "");
}

#[test]
fn the_worker_documents_bemis_variables() {
    let run = help(&["run"]);
    for variable in [
        "DATABASE_URL",
        "DB_HOST",
        "DB_PORT",
        "DB_NAME",
        "DB_USER",
        "DB_PASSWORD",
        "DESTINATION_DATABASE_URL",
        "DESTINATION_DB_HOST",
        "DESTINATION_DB_PORT",
        "DESTINATION_DB_NAME",
        "DESTINATION_DB_USER",
        "DESTINATION_DB_PASSWORD",
        "LOG_LEVEL",
        "BEMI_SLOT",
        "BEMI_PUBLICATION",
        "BEMI_TABLES",
        "BEMI_BATCH_SIZE",
        "BEMI_FLUSH_INTERVAL_MS",
        "BEMI_LINGER_MS",
        "DB_SSL_MODE",
        "BEMI_CONFIG",
        "BEMI_METRICS_LISTEN",
        "BEMI_READY_MAX_LAG_BYTES",
        "BEMI_OUTPUT",
        "BEMI_CATCH_UP_BYTES",
    ] {
        assert!(
            run.contains(&format!("[env: {variable}")),
            "bemi run --help names {variable}"
        );
    }
    assert!(help(&["setup"]).contains("--print-sql"));
    assert!(help(&["status"]).contains("--json"));
}
