//! The monitoring endpoint of `bemi run --metrics-listen ADDR`.
//!
//! * `/metrics`: the trackers' metrics ([`bemi_core::metrics`]) in Prometheus's text format.
//! * `/healthz`: 200 while the process serves requests (a liveness probe).
//! * `/readyz`: 200 when every source is ready, 503 otherwise, with a JSON body naming each
//!   source's state. A source is ready while it streams with its replication lag at most
//!   `--ready-max-lag-bytes`, and while it waits as a standby (ready to take over; the metric
//!   `bemi_tracker_state` tells standbys apart). Connecting, reconnecting and stopped sources
//!   are not ready.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bemi_core::{Error, ErrorKind, Progress, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The listener, with the Prometheus recorder installed for the trackers to record into.
#[derive(Debug)]
pub(crate) struct Monitor {
    listener: TcpListener,
    metrics: PrometheusHandle,
}

/// A source's name and its tracker's progress.
#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) name: String,
    pub(crate) progress: watch::Receiver<Progress>,
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
    lag_bytes: u64,
    /// The error that stopped the source, or ended its last session.
    error: Option<String>,
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let sources: Vec<SourceReadiness> = shared
        .sources
        .iter()
        .map(|source| readiness(source, shared.max_lag_bytes))
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

fn readiness(source: &Watched, max_lag_bytes: u64) -> SourceReadiness {
    // The tracker's task drops its end of the channel when it stops.
    let stopped = source.progress.has_changed().is_err();
    let progress = source.progress.borrow();
    let (state, ready) = if stopped {
        ("stopped", false)
    } else if progress.connected {
        ("streaming", progress.lag_bytes <= max_lag_bytes)
    } else if progress.standby {
        ("standby", true)
    } else {
        ("connecting", false)
    };
    SourceReadiness {
        source: source.name.clone(),
        state,
        ready,
        lag_bytes: progress.lag_bytes,
        error: progress.last_error.as_ref().map(Error::report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(progress: Progress) -> (watch::Sender<Progress>, Watched) {
        let (tx, rx) = watch::channel(progress);
        let watched = Watched {
            name: "app".to_owned(),
            progress: rx,
        };
        (tx, watched)
    }

    fn progress(change: impl FnOnce(&mut Progress)) -> Progress {
        let mut progress = Progress::default();
        change(&mut progress);
        progress
    }

    #[test]
    fn a_source_is_ready_while_it_streams_with_little_lag_or_stands_by() {
        let (_tx, streaming) = source(progress(|p| {
            p.connected = true;
            p.lag_bytes = 100;
        }));
        let at = |max| {
            let r = readiness(&streaming, max);
            (r.state, r.ready, r.lag_bytes)
        };
        assert_eq!(at(100), ("streaming", true, 100));
        assert_eq!(at(99), ("streaming", false, 100), "lag above the limit");

        let (_tx, standby) = source(progress(|p| p.standby = true));
        let r = readiness(&standby, 0);
        assert_eq!((r.state, r.ready), ("standby", true));

        let (_tx, connecting) = source(progress(|p| {
            p.last_error = Some(Error::new(ErrorKind::Connect, "refused"));
        }));
        let r = readiness(&connecting, u64::MAX);
        assert_eq!((r.state, r.ready), ("connecting", false));
        assert_eq!(r.error.as_deref(), Some("refused"));

        // A tracker that stopped drops its end of the channel.
        let (tx, stopped) = source(progress(|p| p.connected = true));
        drop(tx);
        let r = readiness(&stopped, u64::MAX);
        assert_eq!((r.state, r.ready), ("stopped", false));
    }
}
