//! `bemi ui`: the audit trail in a browser (the `bemi-ui` crate's router, served on its own).

use std::net::SocketAddr;

use bemi_core::{Error, ErrorKind, Result};
use bemi_ui::UiConfig;
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use crate::database::DatabaseArgs;

/// `bemi ui`.
#[derive(Debug, Clone, Args)]
pub(crate) struct UiArgs {
    /// Address to listen on; anything but loopback needs --token (port 0 picks a free port)
    #[arg(long, env = "BEMI_UI_LISTEN", default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
    /// Require this token for every page: `Authorization: Bearer <token>`, or the login form
    #[arg(long, env = "BEMI_UI_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Let the Revert page apply reverts (it writes the tracked tables; off by default)
    #[arg(long)]
    allow_revert: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

pub(crate) async fn ui(args: UiArgs) -> Result<()> {
    let (source, changes, table) = args.database.settings()?;
    let mut config = UiConfig::new(source)
        .changes_database(changes)
        .changes_table(table)
        .allow_revert(args.allow_revert);
    if let Some(token) = &args.token {
        config = config.token(token);
    }
    serve(config, args.listen, args.token.is_some()).await
}

/// Serves the UI on `listen` until SIGTERM or SIGINT. Refuses an address other than loopback
/// without a token: the trail holds what the application's users wrote.
pub(crate) async fn serve(config: UiConfig, listen: SocketAddr, has_token: bool) -> Result<()> {
    if !listen.ip().is_loopback() && !has_token {
        return Err(Error::config(format!(
            "the UI would be open to anyone who can reach {listen}: give it a --token \
             (BEMI_UI_TOKEN), or listen on 127.0.0.1"
        )));
    }
    let router = bemi_ui::router(config)?;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::new(ErrorKind::Config, format!("could not listen on {listen}")).with_source(e)
    })?;
    let address = listener.local_addr().map_err(|e| {
        Error::new(ErrorKind::Config, "could not read the listening address").with_source(e)
    })?;
    println!("The audit trail UI is at http://{address}/ (Ctrl-C stops it)");
    let signal_error =
        |e: std::io::Error| Error::config("could not listen for signals").with_source(e);
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Config, "the UI server failed").with_source(e))
}
