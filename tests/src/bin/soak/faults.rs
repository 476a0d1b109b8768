//! The fault schedule: what is injected, how often for a duration, and how each is done.

use std::sync::Arc;
use std::time::Duration;

use bemi_temp_postgres::TempPostgres;

use crate::workload::{bulk, Writer, FAULT_CLIENT};
use crate::{connect, human, Random, Soak, Stats, SLOT};

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// SIGKILL the worker (after committing a large transaction when `mid_stream`), then start
    /// it again.
    Kill { mid_stream: bool },
    /// Restart the source right after a large transaction committed: `pg_ctl restart -m fast`,
    /// or an immediate stop (a crash) and a start when `crash`.
    RestartMidStream { crash: bool },
    /// Pause the writers, let the worker catch up, restart the source, wait, resume.
    RestartIdle,
    /// `pg_terminate_backend` on the slot's walsender.
    TerminateWalsender,
    /// Stop the destination for a few seconds.
    DestinationDown,
    /// Make the destination read-only (`default_transaction_read_only = on`) for a few seconds.
    DestinationReadOnly,
}

/// The least the run must inject: issue 11's figures for 30 minutes (20 kills, 5 restarts,
/// 5 destination outages, 20 DDL statements), scaled to the duration and rounded up, and at
/// least one of every kind (both kinds of restart included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Targets {
    pub(crate) kills: u64,
    pub(crate) restarts: u64,
    pub(crate) walsender: u64,
    pub(crate) outages: u64,
    pub(crate) read_only: u64,
    pub(crate) ddl: u64,
}

impl Targets {
    fn for_duration(duration: Duration) -> Targets {
        let scale = duration.as_secs_f64() / 1800.0;
        let per_30m = |n: f64| ((n * scale).ceil() as u64).max(1);
        Targets {
            kills: per_30m(20.0),
            restarts: per_30m(5.0).max(2),
            walsender: per_30m(5.0),
            outages: per_30m(5.0),
            read_only: per_30m(5.0),
            ddl: per_30m(20.0),
        }
    }
}

/// The faults of a run and when each starts (from the start of the workload).
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) targets: Targets,
    faults: Vec<(Duration, Fault)>,
    duration: Duration,
}

impl Plan {
    /// A quarter more than the targets (at least one more of each), shuffled with the seed and
    /// spread over 5–88% of the duration, so that the last fault has time to be recovered from.
    pub(crate) fn new(duration: Duration, random: &mut Random) -> Plan {
        let targets = Targets::for_duration(duration);
        let more = |n: u64| n + n.div_ceil(4);
        let mut deck = Vec::new();
        for i in 0..more(targets.kills) {
            deck.push(Fault::Kill {
                mid_stream: i % 2 == 0,
            });
        }
        let restarts = more(targets.restarts);
        let mid_stream = restarts.div_ceil(2);
        for i in 0..mid_stream {
            deck.push(Fault::RestartMidStream { crash: i % 2 == 1 });
        }
        for _ in mid_stream..restarts {
            deck.push(Fault::RestartIdle);
        }
        for _ in 0..more(targets.walsender) {
            deck.push(Fault::TerminateWalsender);
        }
        for _ in 0..more(targets.outages) {
            deck.push(Fault::DestinationDown);
        }
        for _ in 0..more(targets.read_only) {
            deck.push(Fault::DestinationReadOnly);
        }
        for i in (1..deck.len()).rev() {
            let j = random.below(i as u64 + 1) as usize;
            deck.swap(i, j);
        }
        let (start, span) = (duration.mul_f64(0.05), duration.mul_f64(0.83));
        let slot = span / deck.len() as u32;
        let faults = deck
            .into_iter()
            .enumerate()
            .map(|(i, fault)| {
                let jitter = slot.mul_f64(random.below(1000) as f64 / 1000.0 * 0.6);
                (start + slot * i as u32 + jitter, fault)
            })
            .collect();
        Plan {
            targets,
            faults,
            duration,
        }
    }

    /// The plan in a line.
    pub(crate) fn describe(&self) -> String {
        let count = |f: fn(&Fault) -> bool| self.faults.iter().filter(|(_, x)| f(x)).count();
        format!(
            "plan: {} faults over {}: {} worker kills, {} mid-stream and {} idle PostgreSQL \
             restarts, {} walsender terminations, {} destination outages, {} read-only periods; \
             DDL every 3-7 s",
            self.faults.len(),
            human(self.duration),
            count(|f| matches!(f, Fault::Kill { .. })),
            count(|f| matches!(f, Fault::RestartMidStream { .. })),
            count(|f| matches!(f, Fault::RestartIdle)),
            count(|f| matches!(f, Fault::TerminateWalsender)),
            count(|f| matches!(f, Fault::DestinationDown)),
            count(|f| matches!(f, Fault::DestinationReadOnly)),
        )
    }
}

/// Injects the plan's faults in order, each no earlier than its time.
pub(crate) async fn run(soak: Arc<Soak>, plan: Plan, mut random: Random) {
    let mut writer = Writer::new(Arc::<Soak>::clone(&soak), FAULT_CLIENT);
    let total = plan.faults.len();
    for (i, (at, fault)) in plan.faults.into_iter().enumerate() {
        let wait = at.saturating_sub(soak.started.elapsed());
        tokio::time::sleep(wait).await;
        let label = format!("fault {}/{total}", i + 1);
        match inject(&soak, &mut writer, &mut random, fault).await {
            Ok(done) => {
                let stored = soak
                    .stored()
                    .await
                    .map_or_else(|| "?".to_owned(), |n| n.to_string());
                soak.say(format!(
                    "{label}: {done}; {} changes expected so far, {stored} stored",
                    soak.truth().len()
                ));
            }
            Err(e) => {
                Stats::add(&soak.stats.fault_failures);
                soak.say(format!("! {label}: {fault:?} could not be injected: {e}"));
            }
        }
    }
}

/// Injects one fault and says what was done.
async fn inject(
    soak: &Arc<Soak>,
    writer: &mut Writer,
    random: &mut Random,
    fault: Fault,
) -> Result<String, String> {
    let stats = &soak.stats;
    match fault {
        Fault::Kill { mid_stream } => {
            let mut what = String::from("worker SIGKILLed");
            if mid_stream {
                let rows = random.between(10_000, 20_000) as i64;
                if bulk(writer, rows).await {
                    let delay = random.between(0, 1000);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    what = format!(
                        "worker SIGKILLed {delay} ms after a {rows}-row transaction committed"
                    );
                }
            }
            let was_running = soak
                .worker()
                .kill_and_restart()
                .map_err(|e| e.to_string())?;
            if !was_running {
                return Err("the worker was not running at the kill (restarted)".into());
            }
            Stats::add(&stats.kills);
            Ok(format!("{what}, started again"))
        }
        Fault::RestartMidStream { crash } => {
            let rows = random.between(10_000, 20_000) as i64;
            let committed = bulk(writer, rows).await;
            tokio::time::sleep(Duration::from_millis(random.between(100, 800))).await;
            let pg = Arc::<TempPostgres>::clone(&soak.source);
            blocking(move || {
                if crash {
                    pg.crash()?;
                    pg.start_again()
                } else {
                    pg.restart()
                }
            })
            .await?;
            Stats::add(&stats.restarts_mid_stream);
            Ok(format!(
                "source {} right after a {rows}-row transaction{}",
                if crash {
                    "crashed (immediate stop) and started"
                } else {
                    "restarted (fast)"
                },
                if committed {
                    ""
                } else {
                    " (that did not commit)"
                }
            ))
        }
        Fault::RestartIdle => {
            let pause = soak.gate.write().await;
            let caught_up = slot_caught_up(soak, Duration::from_secs(30)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let pg = Arc::<TempPostgres>::clone(&soak.source);
            let restarted = blocking(move || pg.restart()).await;
            // Stay idle a while after the restart: the worker reconnects to a quiet server.
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(pause);
            restarted?;
            Stats::add(&stats.restarts_idle);
            Ok(format!(
                "source restarted (fast) while idle (writers paused; slot {})",
                if caught_up {
                    "caught up before"
                } else {
                    "NOT caught up within 30 s before"
                }
            ))
        }
        Fault::TerminateWalsender => {
            let mut what = "walsender terminated";
            if random.chance(50) && bulk(writer, 5_000).await {
                what = "walsender terminated right after a 5000-row transaction";
            }
            for _ in 0..40 {
                if let Ok(client) = connect(&soak.source.url("postgres")).await {
                    let terminated = client
                        .query_opt(
                            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                             WHERE slot_name = $1 AND active_pid IS NOT NULL",
                            &[&SLOT],
                        )
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|row| row.get::<_, bool>(0));
                    if terminated {
                        Stats::add(&stats.walsender_terminations);
                        return Ok(what.to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err("no walsender served the slot for 20 s".into())
        }
        Fault::DestinationDown => {
            let hold = Duration::from_millis(random.between(3000, 8000));
            let pg = Arc::<TempPostgres>::clone(&soak.destination);
            blocking(move || pg.stop()).await?;
            tokio::time::sleep(hold).await;
            let pg = Arc::<TempPostgres>::clone(&soak.destination);
            let mut started = Err(String::new());
            for _ in 0..5 {
                let pg = Arc::<TempPostgres>::clone(&pg);
                started = blocking(move || pg.start_again()).await;
                if started.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            started.map_err(|e| format!("the destination did not start again: {e}"))?;
            Stats::add(&stats.destination_outages);
            Ok(format!("destination stopped for {}", human(hold)))
        }
        Fault::DestinationReadOnly => {
            let hold = Duration::from_millis(random.between(3000, 8000));
            let url = soak.destination.url("postgres");
            let on = async {
                let client = connect(&url).await?;
                client
                    .simple_query("ALTER SYSTEM SET default_transaction_read_only = on")
                    .await?;
                client.simple_query("SELECT pg_reload_conf()").await?;
                Ok::<_, tokio_postgres::Error>(())
            };
            on.await.map_err(|e| e.to_string())?;
            tokio::time::sleep(hold).await;
            let mut result = Err(String::new());
            for _ in 0..20 {
                let off = async {
                    let client = connect(&url).await?;
                    client
                        .simple_query("SET default_transaction_read_only = off")
                        .await?;
                    client
                        .simple_query("ALTER SYSTEM RESET default_transaction_read_only")
                        .await?;
                    client.simple_query("SELECT pg_reload_conf()").await?;
                    Ok::<_, tokio_postgres::Error>(())
                };
                result = off.await.map_err(|e| e.to_string());
                if result.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            result.map_err(|e| format!("the destination stayed read-only: {e}"))?;
            Stats::add(&stats.destination_read_only);
            Ok(format!("destination read-only for {}", human(hold)))
        }
    }
}

/// Runs a blocking `pg_ctl` step off the async threads.
async fn blocking(
    f: impl FnOnce() -> bemi_temp_postgres::Result<()> + Send + 'static,
) -> Result<(), String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.report().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits until the slot confirmed the source's current WAL position; false on timeout.
pub(crate) async fn slot_caught_up(soak: &Soak, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut target: Option<String> = None;
    while tokio::time::Instant::now() < deadline {
        if let Ok(client) = connect(&soak.source.url("postgres")).await {
            if target.is_none() {
                target = client
                    .query_one("SELECT pg_current_wal_lsn()::text", &[])
                    .await
                    .ok()
                    .map(|row| row.get(0));
            }
            if let Some(lsn) = &target {
                let done = client
                    .query_opt(
                        "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots
                         WHERE slot_name = $2",
                        &[lsn, &SLOT],
                    )
                    .await
                    .ok()
                    .flatten()
                    .and_then(|row| row.get::<_, Option<bool>>(0))
                    .unwrap_or(false);
                if done {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}
