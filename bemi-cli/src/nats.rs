//! NATS settings shared by `bemi run --destination nats://…` and `bemi store`, named like the
//! NATS CLI's flags and variables.

use std::path::PathBuf;

use bemi_core::sink::{NatsOptions, NatsSink};
use clap::Args;

/// How to reach NATS and which stream to use.
#[derive(Debug, Clone, Args)]
pub(crate) struct NatsArgs {
    /// NATS credentials file (user JWT and nkey seed), as the NATS CLI's --creds
    #[arg(long, env = "NATS_CREDS", help_heading = "NATS")]
    pub(crate) creds: Option<PathBuf>,
    /// File holding an nkey seed, as the NATS CLI's --nkey
    #[arg(long, env = "NATS_NKEY", help_heading = "NATS")]
    pub(crate) nkey: Option<PathBuf>,
    /// TLS client certificate (PEM), as the NATS CLI's --tlscert
    #[arg(long, env = "NATS_CERT", help_heading = "NATS", requires = "tlskey")]
    pub(crate) tlscert: Option<PathBuf>,
    /// TLS client key (PEM), as the NATS CLI's --tlskey
    #[arg(long, env = "NATS_KEY", help_heading = "NATS", requires = "tlscert")]
    pub(crate) tlskey: Option<PathBuf>,
    /// TLS certificate authorities to trust (PEM), as the NATS CLI's --tlsca
    #[arg(long, env = "NATS_CA", help_heading = "NATS")]
    pub(crate) tlsca: Option<PathBuf>,
    /// TLS before the server's greeting, as the NATS CLI's --tlsfirst
    #[arg(long, help_heading = "NATS")]
    pub(crate) tlsfirst: bool,
    /// The JetStream stream of the changes (created by `bemi run` when missing)
    #[arg(
        long,
        env = "BEMI_NATS_STREAM",
        default_value = "BEMI",
        help_heading = "NATS"
    )]
    pub(crate) stream: String,
    /// Subject prefix: changes go to PREFIX.DATABASE.SCHEMA.TABLE
    #[arg(
        long,
        env = "BEMI_NATS_SUBJECT_PREFIX",
        default_value = "bemi",
        help_heading = "NATS"
    )]
    pub(crate) subject_prefix: String,
}

impl NatsArgs {
    /// Connection settings for the server(s) at `url`.
    pub(crate) fn options(&self, url: &str, name: &str) -> NatsOptions {
        let mut options = NatsOptions::new(url).name(name).tls_first(self.tlsfirst);
        if let Some(creds) = &self.creds {
            options = options.creds(creds);
        }
        if let Some(nkey) = &self.nkey {
            options = options.nkey(nkey);
        }
        if let (Some(cert), Some(key)) = (&self.tlscert, &self.tlskey) {
            options = options.tls_client(cert, key);
        }
        if let Some(ca) = &self.tlsca {
            options = options.tls_ca(ca);
        }
        options
    }

    /// The sink publishing to the stream at `url`.
    pub(crate) fn sink(&self, url: &str) -> NatsSink {
        NatsSink::new(self.options(url, "bemi run"))
            .stream(&self.stream)
            .subject_prefix(&self.subject_prefix)
    }
}

/// Whether `url` names a NATS server rather than a PostgreSQL database.
pub(crate) fn is_nats_url(url: &str) -> bool {
    ["nats://", "tls://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
}
