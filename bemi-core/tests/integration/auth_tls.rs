//! Authentication methods and TLS with libpq's sslmode semantics, against a real server with a
//! certificate made by the test.

use std::path::PathBuf;
use std::time::Duration;

use bemi_core::sink::PostgresSink;
use bemi_core::{ConnectOptions, Error, ErrorKind, ReplicationClient, SslMode, Tracker};
use bemi_temp_postgres::TempPostgres;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn authority(name: &str) -> Authority {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Authority {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

struct Fixture {
    pg: TempPostgres,
    ca_file: PathBuf,
    other_ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn start() -> Fixture {
    let ca = authority("bemi test ca");
    let other = authority("some other ca");
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca.cert, &ca.key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    let other_ca_file = dir.path().join("other.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    std::fs::write(&other_ca_file, other.cert.pem()).unwrap();
    let pg = TempPostgres::builder()
        .file("server.crt", server_cert.pem())
        .file("server.key", server_key.serialize_pem())
        .setting("ssl", "on")
        .setting("ssl_cert_file", "server.crt")
        .setting("ssl_key_file", "server.key")
        .hba_line("host all scram_user 127.0.0.1/32 scram-sha-256")
        .hba_line("host all md5_user 127.0.0.1/32 md5")
        .hba_line("host all clear_user 127.0.0.1/32 password")
        .start()
        .expect("server with TLS");
    pg.psql(
        "postgres",
        "CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram secret';
         SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5 secret';
         CREATE ROLE clear_user LOGIN REPLICATION PASSWORD 'clear secret';",
    )
    .expect("roles");
    Fixture {
        pg,
        ca_file,
        other_ca_file,
        _dir: dir,
    }
}

impl Fixture {
    fn options(&self, host: &str, user: &str, password: &str) -> ConnectOptions {
        ConnectOptions::new()
            .with_host(host)
            .with_port(self.pg.port())
            .with_user(user)
            .with_password(password)
            .with_dbname("postgres")
    }
}

async fn replication_works(options: &ConnectOptions) -> Result<(), Error> {
    let mut client = ReplicationClient::connect(options).await?;
    let system = client.identify_system().await?;
    assert_eq!(system.dbname.as_deref(), Some("postgres"));
    Ok(())
}

async fn uses_tls(f: &Fixture, options: &ConnectOptions) -> bool {
    let sql = options.connect().await.expect("sql connection");
    let _ = f;
    sql.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn scram_md5_and_cleartext_passwords() {
    let f = tokio::task::spawn_blocking(start).await.unwrap();
    for (user, password) in [
        ("scram_user", "scram secret"),
        ("md5_user", "md5 secret"),
        ("clear_user", "clear secret"),
    ] {
        let options = f
            .options("127.0.0.1", user, password)
            .with_ssl_mode(SslMode::Disable);
        replication_works(&options)
            .await
            .unwrap_or_else(|e| panic!("{user}: {}", e.report()));
        let wrong = options.clone().with_password("wrong");
        let err = ReplicationClient::connect(&wrong).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{user}: {}", err.report());
        assert!(err.to_string().contains("password"), "{err}");
    }
    let err = ReplicationClient::connect(
        &ConnectOptions::new()
            .with_host("127.0.0.1")
            .with_port(f.pg.port())
            .with_user("scram_user")
            .with_ssl_mode(SslMode::Disable),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert!(err.to_string().contains("none was given"), "{err}");
}

#[tokio::test]
async fn tls_modes_verify_the_certificate_as_libpq_does() {
    let f = tokio::task::spawn_blocking(start).await.unwrap();
    let scram = |host: &str| f.options(host, "scram_user", "scram secret");

    // verify-full with the right CA and host name: TLS and SCRAM, for replication and SQL.
    let full = scram("localhost")
        .with_ssl_mode(SslMode::VerifyFull)
        .with_ssl_root_cert(&f.ca_file);
    replication_works(&full)
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()));
    assert!(uses_tls(&f, &full).await);

    // verify-full with a CA that did not sign the certificate.
    let wrong_ca = full.clone().with_ssl_root_cert(&f.other_ca_file);
    let err = ReplicationClient::connect(&wrong_ca).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls);
    assert!(err.to_string().contains("sslrootcert"), "{err}");
    assert!(err.report().contains("UnknownIssuer"), "{}", err.report());

    // verify-full with a host name the certificate does not name.
    let wrong_host = scram("127.0.0.1")
        .with_ssl_mode(SslMode::VerifyFull)
        .with_ssl_root_cert(&f.ca_file);
    let err = ReplicationClient::connect(&wrong_host).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls);
    assert!(
        err.to_string().contains("valid for this host name"),
        "{err}"
    );
    assert!(
        err.report().contains("not valid for name"),
        "{}",
        err.report()
    );

    // verify-ca checks the signer but not the name.
    let ca_only = scram("127.0.0.1")
        .with_ssl_mode(SslMode::VerifyCa)
        .with_ssl_root_cert(&f.ca_file);
    replication_works(&ca_only)
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()));
    let err = ReplicationClient::connect(&ca_only.with_ssl_root_cert(&f.other_ca_file))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls);

    // require encrypts without verifying; prefer uses TLS when offered.
    for mode in [SslMode::Require, SslMode::Prefer] {
        let options = scram("127.0.0.1").with_ssl_mode(mode);
        replication_works(&options)
            .await
            .unwrap_or_else(|e| panic!("{}", e.report()));
        assert!(uses_tls(&f, &options).await, "{mode:?}");
    }
    let plain = scram("127.0.0.1").with_ssl_mode(SslMode::Disable);
    assert!(!uses_tls(&f, &plain).await);
}

#[tokio::test]
async fn require_against_a_server_without_tls_is_refused() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let options: ConnectOptions = format!("{}?sslmode=require", pg.url("postgres"))
        .parse()
        .unwrap();
    let err = ReplicationClient::connect(&options).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls);
    assert!(err.to_string().contains("does not accept TLS"), "{err}");
    let prefer: ConnectOptions = format!("{}?sslmode=prefer", pg.url("postgres"))
        .parse()
        .unwrap();
    replication_works(&prefer).await.unwrap();
}

#[tokio::test]
async fn certificate_problems_stop_the_tracker_instead_of_retrying_forever() {
    let f = tokio::task::spawn_blocking(start).await.unwrap();
    let wrong_ca = f
        .options("localhost", "scram_user", "scram secret")
        .with_ssl_mode(SslMode::VerifyFull)
        .with_ssl_root_cert(&f.other_ca_file);
    let wrong_host = f
        .options("127.0.0.1", "scram_user", "scram secret")
        .with_ssl_mode(SslMode::VerifyFull)
        .with_ssl_root_cert(&f.ca_file);
    for options in [wrong_ca, wrong_host] {
        // the SQL connection, which the tracker opens first
        let err = options.connect().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Tls, "{}", err.report());
        assert!(!err.is_transient(), "{}", err.report());
        // a spawned tracker, which retries what can pass, stops at once with the cause
        let sink = PostgresSink::connect(&options).unwrap();
        let tracker = Tracker::builder(options, sink).spawn();
        let err = tokio::time::timeout(Duration::from_secs(20), tracker.join())
            .await
            .expect("the tracker stopped instead of retrying")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Tls, "{}", err.report());
    }
    // a wrong password is not retried either
    let wrong_password = f
        .options("127.0.0.1", "scram_user", "not the password")
        .with_ssl_mode(SslMode::Disable);
    let err = wrong_password.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{}", err.report());
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_unix_socket_works_with_the_default_sslmode() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    // sslmode defaults to prefer, as in libpq, which never uses TLS over a Unix socket
    let options = ConnectOptions::new()
        .with_host(pg.socket_dir().to_str().unwrap())
        .with_port(pg.port())
        .with_dbname("postgres");
    let sql = options
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()));
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let tracker = Tracker::builder(options.clone(), PostgresSink::connect(&options).unwrap())
        .start()
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()));
    sql.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sql
        .query_one("SELECT count(*) FROM changes", &[])
        .await
        .map(|row| row.get::<_, i64>(0))
        .unwrap_or(0)
        < 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            tracker.progress()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracker.shutdown().await.unwrap();
}
