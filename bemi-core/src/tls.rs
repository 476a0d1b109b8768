//! TLS through rustls, with libpq's `sslmode` semantics.
//!
//! | `sslmode` | certificate checks |
//! | --- | --- |
//! | `prefer`, `require` | none (encryption only), unless `sslrootcert` is given with `require`, which then acts as `verify-ca`, as in libpq |
//! | `verify-ca` | signed by a trusted authority |
//! | `verify-full` | signed by a trusted authority and valid for the host name |
//!
//! Trusted authorities come from `sslrootcert` (a PEM file), or `~/.postgresql/root.crt` when
//! it exists, or the bundled web PKI roots (also chosen by `sslrootcert=system`).

use std::fmt;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{ConnectOptions, SslMode};
use crate::error::{Error, ErrorKind, Result};

/// The rustls client configuration for `options`, or `None` when TLS is disabled.
pub(crate) fn client_config(options: &ConnectOptions) -> Result<Option<Arc<ClientConfig>>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match effective_mode(options) {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => Arc::new(NoVerification(Arc::clone(&provider))),
        SslMode::VerifyCa => Arc::new(ChainOnly(webpki_verifier(options, &provider)?)),
        SslMode::VerifyFull => webpki_verifier(options, &provider)?,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Tls, "could not set up TLS").with_source(e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// The connector tokio-postgres uses for ordinary SQL connections; `None` over a Unix socket,
/// where libpq never uses TLS either.
pub(crate) fn make_tls_connect(
    options: &ConnectOptions,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>> {
    if matches!(options.host(), crate::config::Host::Unix(_)) {
        return Ok(None);
    }
    Ok(client_config(options)?
        .map(|config| tokio_postgres_rustls::MakeRustlsConnect::new((*config).clone())))
}

/// The server name to present and verify.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned()).map_err(|e| {
        Error::new(
            ErrorKind::Tls,
            format!("{host:?} is not a valid TLS server name"),
        )
        .with_source(e)
    })
}

/// The error for a failed handshake, saying which settings to check.
pub(crate) fn handshake_error(options: &ConnectOptions, source: std::io::Error) -> Error {
    let mode = match effective_mode(options) {
        SslMode::VerifyFull => "verify-full",
        SslMode::VerifyCa => "verify-ca",
        _ => "require",
    };
    Error::new(
        ErrorKind::Tls,
        format!(
            "TLS handshake with {} failed under sslmode={mode}; check that sslrootcert names the \
             authority that signed the server's certificate and, for verify-full, that the \
             certificate is valid for this host name",
            options.host()
        ),
    )
    .with_source(source)
}

fn effective_mode(options: &ConnectOptions) -> SslMode {
    match options.ssl_mode() {
        SslMode::Require if options.ssl_root_cert().is_some() => SslMode::VerifyCa,
        mode => mode,
    }
}

fn webpki_verifier(
    options: &ConnectOptions,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    let roots = root_store(options.ssl_root_cert())?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| {
            Error::new(ErrorKind::Tls, "could not set up certificate verification").with_source(e)
        })
}

fn root_store(path: Option<&Path>) -> Result<RootCertStore> {
    let default_file = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
        .filter(|p| p.is_file());
    let path = match path {
        Some(p) if p == Path::new("system") => None,
        Some(p) => Some(p.to_owned()),
        None => default_file,
    };
    let Some(path) = path else {
        return Ok(RootCertStore::from_iter(
            webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
        ));
    };
    let read_error = |e: std::io::Error| {
        Error::new(
            ErrorKind::Tls,
            format!("could not read sslrootcert {}", path.display()),
        )
        .with_source(e)
    };
    let file = std::fs::File::open(&path).map_err(read_error)?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
        roots.add(cert.map_err(read_error)?).map_err(|e| {
            Error::new(
                ErrorKind::Tls,
                format!(
                    "sslrootcert {} holds an unusable certificate",
                    path.display()
                ),
            )
            .with_source(e)
        })?;
    }
    if roots.is_empty() {
        return Err(Error::new(
            ErrorKind::Tls,
            format!("sslrootcert {} holds no PEM certificates", path.display()),
        ));
    }
    Ok(roots)
}

/// Checks the signature chain up to a trusted authority but not the host name (`verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name, so a name error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Encryption without authentication of the server (`prefer`, `require`), as libpq does.
struct NoVerification(Arc<CryptoProvider>);

impl fmt::Debug for NoVerification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NoVerification")
    }
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
