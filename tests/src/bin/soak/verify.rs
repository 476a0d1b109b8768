//! The end of a run: waiting for the worker to catch up, comparing `changes` with the ground
//! truth, and the summary.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::faults::Targets;
use crate::truth::{Key, Truth};
use crate::worker::Stopped;
use crate::workload::{mark, MARKS};
use crate::{connect, human, BoxError, Soak, Stats, SLOT};

/// Samples printed of each kind of mismatch.
const SAMPLES: usize = 10;

/// What the comparison found.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    caught_up: bool,
    catch_up: Duration,
    expected: u64,
    stored: u64,
    lost: u64,
    doubled: u64,
    unexpected: u64,
    duplicate_keys: i64,
    missing_keys: i64,
    samples: Vec<String>,
    collisions: u64,
}

/// Waits (at most `timeout`) until the slot confirmed the source's WAL position at the stop of
/// the workload and the count of `changes` stayed the same for 3 s, then compares.
pub(crate) async fn catch_up_and_compare(
    soak: &Soak,
    timeout: Duration,
) -> Result<Outcome, BoxError> {
    let started = Instant::now();
    let admin = connect(&soak.source.url("postgres")).await?;
    let stop_lsn: String = admin
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    soak.say(format!(
        "waiting for the worker to catch up (source WAL at {stop_lsn}, {} changes expected)",
        soak.truth().len()
    ));
    let (mut last, mut stable_since, mut caught_up) = (None, Instant::now(), false);
    while started.elapsed() < timeout {
        let flushed = admin
            .query_opt(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots
                 WHERE slot_name = $2",
                &[&stop_lsn, &SLOT],
            )
            .await
            .ok()
            .flatten()
            .and_then(|row| row.get::<_, Option<bool>>(0))
            .unwrap_or(false);
        let stored = soak.stored().await;
        if stored != last {
            last = stored;
            stable_since = Instant::now();
        }
        if flushed && last.is_some() && stable_since.elapsed() >= Duration::from_secs(3) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let catch_up = started.elapsed();
    if caught_up {
        soak.say(format!("caught up in {}", human(catch_up)));
    } else {
        soak.say(format!(
            "! the worker did not catch up within {} ({last:?} stored); its last lines:\n    {}",
            human(timeout),
            soak.worker().tail(15).join("\n    ")
        ));
    }

    let truth = std::mem::take(&mut *soak.truth());
    let mut outcome = compare(soak, &truth).await?;
    outcome.caught_up = caught_up;
    outcome.catch_up = catch_up;
    Ok(outcome)
}

/// Matches every stored change with the expected ones.
async fn compare(soak: &Soak, truth: &Truth) -> Result<Outcome, BoxError> {
    let mut client = connect(&soak.destination_url).await?;
    let row = client
        .query_one(
            "SELECT count(*) - count(DISTINCT (commit_lsn, ordinal)),
                    count(*) FILTER (WHERE commit_lsn IS NULL OR ordinal IS NULL)
             FROM changes",
            &[],
        )
        .await?;
    let mut outcome = Outcome {
        expected: truth.len(),
        duplicate_keys: row.get(0),
        missing_keys: row.get(1),
        collisions: truth.collisions,
        ..Outcome::default()
    };

    let mut stored: HashMap<_, u32> = HashMap::new();
    let tx = client.transaction().await?;
    let portal = tx
        .bind(
            "SELECT \"table\"::text, operation, primary_key::text, context->>'client',
                    context->>'seq', context::text
             FROM changes",
            &[],
        )
        .await?;
    loop {
        let rows = tx.query_portal(&portal, 20_000).await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            outcome.stored += 1;
            let (table, op): (&str, &str) = (row.get(0), row.get(1));
            let (pk, client, seq): (Option<&str>, Option<&str>, Option<&str>) =
                (row.get(2), row.get(3), row.get(4));
            match truth.key(table, op, pk, client, seq) {
                Some(key) if truth.expected().contains_key(&key) => {
                    *stored.entry(key).or_insert(0) += 1;
                }
                _ => {
                    outcome.unexpected += 1;
                    if outcome.samples.len() < SAMPLES {
                        let context: &str = row.get(5);
                        outcome.samples.push(format!(
                            "unexpected: {table} {op} {} context {context}",
                            pk.unwrap_or("NULL")
                        ));
                    }
                }
            }
        }
    }
    tx.commit().await?;

    let (mut lost_samples, mut doubled_samples) = (0, 0);
    let mut lost_transactions: BTreeMap<(u32, u64), Vec<Key>> = BTreeMap::new();
    for (key, want) in truth.expected() {
        let got = stored.get(key).copied().unwrap_or(0);
        if got < *want {
            let (_, _, _, client, seq) = truth.parts(key);
            lost_transactions
                .entry((client, seq))
                .or_default()
                .push(*key);
            outcome.lost += u64::from(want - got);
            if lost_samples < SAMPLES {
                lost_samples += 1;
                outcome
                    .samples
                    .push(format!("lost: {}", truth.describe(key)));
            }
        } else if got > *want {
            outcome.doubled += u64::from(got - want);
            if doubled_samples < SAMPLES {
                doubled_samples += 1;
                outcome
                    .samples
                    .push(format!("doubled ({got}×): {}", truth.describe(key)));
            }
        }
    }
    let source = connect(&soak.source_url).await?;
    let destination = connect(&soak.destination_url).await?;
    for ((client, seq), keys) in lost_transactions.iter().take(SAMPLES) {
        let kept: i64 = destination
            .query_one(
                "SELECT count(*) FROM changes
                 WHERE context->>'client' = $1 AND context->>'seq' = $2",
                &[&client.to_string(), &seq.to_string()],
            )
            .await
            .map_or(-1, |row| row.get(0));
        // A row change rather than the mark when there is one; the mark is looked up below.
        let first = keys
            .iter()
            .find(|key| truth.parts(key).0 != MARKS)
            .unwrap_or(&keys[0]);
        let (table, op, pk, _, _) = truth.parts(first);
        let row_seq = source
            .query_opt(&format!("SELECT seq FROM {table} WHERE id = $1"), &[&pk])
            .await
            .map(|row| row.map(|r| r.get::<_, i64>(0)));
        let source_row = match row_seq {
            Ok(Some(s)) => format!("the source row {pk} has seq {s}"),
            Ok(None) => format!("the source has no row {pk}"),
            Err(_) => format!("table {table} is gone from the source"),
        };
        let marked = source
            .query_opt(
                &format!("SELECT FROM {MARKS} WHERE id = $1"),
                &[&mark(*client, *seq)],
            )
            .await
            .map_or("could not be looked up", |row| {
                if row.is_some() {
                    "is in the source"
                } else {
                    "is NOT in the source"
                }
            });
        let unknown = match truth.resolved.get(&(*client, *seq)) {
            Some(xid) => format!(
                "its COMMIT failed and its mark in the source said committed \
                 (transaction id {xid})"
            ),
            None => "its COMMIT returned OK".to_owned(),
        };
        outcome.samples.push(format!(
            "lost transaction client {client} seq {seq}: {} of its changes lost (first: {} {}), \
             {kept} of its changes stored; {unknown}; {source_row}; its mark {marked}",
            keys.len(),
            op.as_str(),
            pk,
        ));
    }
    Ok(outcome)
}

/// Prints the summary and findings; true when the run passed.
pub(crate) fn summary(
    soak: &Soak,
    outcome: &Outcome,
    written: Duration,
    seed: u64,
    stopped: &Stopped,
) -> bool {
    let s = &soak.stats;
    let get = Stats::get;
    let Targets {
        kills,
        restarts,
        walsender,
        outages,
        read_only,
        ddl,
    } = soak.targets;
    let (mid, idle) = (get(&s.restarts_mid_stream), get(&s.restarts_idle));
    let targets_met = get(&s.kills) >= kills
        && mid + idle >= restarts
        && mid >= 1
        && idle >= 1
        && get(&s.walsender_terminations) >= walsender
        && get(&s.destination_outages) >= outages
        && get(&s.destination_read_only) >= read_only
        && get(&s.ddl) >= ddl;
    let worker = soak.worker();
    let exits = worker.exits();
    let mismatches = outcome.lost + outcome.doubled + outcome.unexpected;
    let passed = mismatches == 0
        && outcome.duplicate_keys == 0
        && outcome.collisions == 0
        && get(&s.unresolved) == 0
        && targets_met
        && exits.is_empty()
        && stopped.clean;

    println!();
    println!("==== soak summary ====");
    println!(
        "workload     {} (seed {seed}); catch-up {}{}",
        human(written),
        human(outcome.catch_up),
        if outcome.caught_up {
            ""
        } else {
            " (did NOT catch up)"
        }
    );
    println!(
        "faults       worker kills {}/{kills}, PostgreSQL restarts {}/{restarts} (mid-stream {mid}, \
         idle {idle}), walsender terminations {}/{walsender}, destination outages {}/{outages}, \
         read-only periods {}/{read_only}, DDL statements {}/{ddl} (injected/target); \
         {} injections failed, {} DDL steps skipped",
        get(&s.kills),
        mid + idle,
        get(&s.walsender_terminations),
        get(&s.destination_outages),
        get(&s.destination_read_only),
        get(&s.ddl),
        get(&s.fault_failures),
        get(&s.ddl_failed),
    );
    println!(
        "worker       started {} times, exited on its own {} times; final {}",
        worker.starts(),
        exits.len(),
        stopped.what
    );
    println!(
        "transactions {} committed ({} after a COMMIT of unknown outcome), {} not committed \
         ({} after a COMMIT of unknown outcome, {} of them with their id handed out again), \
         {} unresolved",
        get(&s.committed),
        get(&s.unknown_committed),
        get(&s.aborted),
        get(&s.unknown_aborted),
        get(&s.reused_xids),
        get(&s.unresolved),
    );
    println!(
        "changes      expected {}, stored {}, lost {}, doubled {}, unexpected {}; \
         duplicate (commit_lsn, ordinal) {}, without a key {}",
        outcome.expected,
        outcome.stored,
        outcome.lost,
        outcome.doubled,
        outcome.unexpected,
        outcome.duplicate_keys,
        outcome.missing_keys,
    );
    if outcome.collisions > 0 {
        println!(
            "workload     {} changes recorded twice under one key (a soak bug)",
            outcome.collisions
        );
    }
    for sample in &outcome.samples {
        println!("  {sample}");
    }
    if !exits.is_empty() {
        println!("findings     the worker exited on its own:");
        let mut reasons: Vec<(String, usize)> = Vec::new();
        for exit in exits {
            let reason = format!("{}: {}", exit.status, exit.reason());
            match reasons.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, n)) => *n += 1,
                None => reasons.push((reason, 1)),
            }
        }
        for (reason, n) in reasons {
            println!("  {n}× {reason}");
        }
    }
    if !targets_met {
        println!("targets      NOT met for {}", human(written));
    }
    if !stopped.clean {
        println!("shutdown     the worker did not stop cleanly on SIGTERM");
    }
    println!("RESULT       {}", if passed { "PASS" } else { "FAIL" });
    passed
}
