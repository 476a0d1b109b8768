//! The monitoring endpoint of `bemi run --metrics-listen ADDR`.
//!
//! * `/metrics`: the trackers' metrics ([`bemi_core::metrics`]) in Prometheus's text format.
//! * `/healthz`: 200 while the process serves requests (a liveness probe).
//! * `/readyz`: 200 when every source is ready, 503 otherwise, with a JSON body giving each
//!   source's state and its tracker's whole [`Progress`]. A source is ready while it streams
//!   with its replication lag at most `--ready-max-lag-bytes`, and while it waits as a standby
//!   (ready to take over; the metric `bemi_tracker_state` tells standbys apart). Connecting,
//!   reconnecting and stopped sources are not ready.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bemi_core::{Error, ErrorKind, Progress, Result, TrackerWatch};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The listener, with the Prometheus recorder installed for the trackers to record into.
#[derive(Debug)]
pub(crate) struct Monitor {
    listener: TcpListener,
    metrics: PrometheusHandle,
}

/// A source's name and its tracker.
#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) name: String,
    pub(crate) tracker: TrackerWatch,
}

/// How often histogram samples are folded in while nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

impl Monitor {
    /// Binds `address` and installs the recorder; before any tracker is spawned, so their
    /// metrics go to it.
    pub(crate) async fn bind(address: SocketAddr) -> Result<Monitor> {
        let listener = TcpListener::bind(address).await.map_err(|e| {
            Error::config(format!(
                "could not listen on {address} for --metrics-listen"
            ))
            .with_source(e)
        })?;
        let metrics = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".to_owned()),
                bemi_core::metrics::SECONDS_BUCKETS,
            )
            .and_then(PrometheusBuilder::install_recorder)
            .map_err(|e| {
                Error::new(ErrorKind::Config, "could not install the metrics recorder")
                    .with_source(e)
            })?;
        bemi_core::metrics::describe();
        let address = listener.local_addr().unwrap_or(address);
        tracing::info!(%address, "serving /metrics, /healthz and /readyz");
        Ok(Monitor { listener, metrics })
    }

    /// Serves the endpoints for `sources` until the task is aborted.
    pub(crate) fn serve(self, sources: Vec<Watched>, max_lag_bytes: u64) -> JoinHandle<()> {
        let upkeep = self.metrics.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(UPKEEP_INTERVAL).await;
                upkeep.run_upkeep();
            }
        });
        let shared = Arc::new(Shared {
            metrics: self.metrics,
            sources,
            max_lag_bytes,
        });
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(shared);
        let listener = self.listener;
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the monitoring endpoint stopped");
            }
        })
    }
}

#[derive(Debug)]
struct Shared {
    metrics: PrometheusHandle,
    sources: Vec<Watched>,
    max_lag_bytes: u64,
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

#[derive(Debug, Serialize)]
struct Readiness {
    ready: bool,
    sources: Vec<SourceReadiness>,
}

#[derive(Debug, Serialize)]
struct SourceReadiness {
    source: String,
    state: &'static str,
    ready: bool,
    progress: Progress,
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let sources: Vec<SourceReadiness> = shared
        .sources
        .iter()
        .map(|source| {
            let progress = source.tracker.progress();
            let (state, ready) =
                readiness(&progress, source.tracker.is_stopped(), shared.max_lag_bytes);
            SourceReadiness {
                source: source.name.clone(),
                state,
                ready,
                progress,
            }
        })
        .collect();
    let ready = sources.iter().all(|source| source.ready);
    let body = Readiness { ready, sources };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let json = serde_json::to_string_pretty(&body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], json)
}

/// A source's state and whether it is ready.
fn readiness(progress: &Progress, stopped: bool, max_lag_bytes: u64) -> (&'static str, bool) {
    if stopped {
        ("stopped", false)
    } else if progress.connected {
        ("streaming", progress.lag_bytes <= max_lag_bytes)
    } else if progress.standby {
        ("standby", true)
    } else {
        ("connecting", false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(change: impl FnOnce(&mut Progress)) -> Progress {
        let mut progress = Progress::default();
        change(&mut progress);
        progress
    }

    #[test]
    fn a_source_is_ready_while_it_streams_with_little_lag_or_stands_by() {
        let streaming = progress(|p| {
            p.connected = true;
            p.lag_bytes = 100;
        });
        assert_eq!(readiness(&streaming, false, 100), ("streaming", true));
        assert_eq!(
            readiness(&streaming, false, 99),
            ("streaming", false),
            "lag above the limit"
        );
        let standby = progress(|p| p.standby = true);
        assert_eq!(readiness(&standby, false, 0), ("standby", true));
        let connecting = progress(|p| {
            p.last_error = Some(Error::new(ErrorKind::Connect, "refused"));
        });
        assert_eq!(
            readiness(&connecting, false, u64::MAX),
            ("connecting", false)
        );
        assert_eq!(readiness(&streaming, true, u64::MAX), ("stopped", false));
    }
}
