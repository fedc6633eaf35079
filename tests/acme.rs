//! ACME against a real CA: Debian's `pebble` (with `pebble-challtestsrv` as its
//! DNS, answering 127.0.0.1 for every name) validates TLS-ALPN-01 on the
//! gateway's own TLS listener and issues the certificate the listener then
//! serves — first issuance from an empty cache, and renewal of a cached
//! certificate that is about to expire. Everything on loopback.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use oidc_gateway::certificate::{CertificateOrigin, ServedInfo};
use rustls::pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::sync::watch;

use common::{echo_upstream, gateway, released_port, TestGateway};

const DOMAIN: &str = "console.gateway.test";
const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";

/// A child process killed when the test ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// pebble (its TLS certificate from a CA made here) and its DNS.
struct Pebble {
    directory: String,
    ca_file: PathBuf,
    /// The port pebble validates TLS-ALPN-01 on: the gateway must listen there.
    validation_port: SocketAddr,
    /// The port pebble validates HTTP-01 on (the gateway's server.redirect_http).
    http_validation_port: SocketAddr,
    _dns: Process,
    _pebble: Process,
    _dir: TempDir,
}

fn programs_present() -> bool {
    for program in [PEBBLE, CHALLTESTSRV] {
        if !Path::new(program).exists() {
            common::missing::program_missing("ACME test", program, "apt-get install -y pebble");
            return false;
        }
    }
    true
}

async fn start_pebble() -> Pebble {
    let dir = TempDir::new().expect("tempdir");
    // pebble's own HTTPS certificate, from a CA the gateway is told to trust
    // (acme.directory_ca_file).
    let pki = common::pki::issue(
        dir.path(),
        "pebble",
        "test ACME directory CA",
        &["127.0.0.1", "localhost"],
    );
    let ca_file = pki.ca_file;

    // Ports handed to other programs: free a moment ago, bound by them.
    let listen = released_port().await;
    let validation_port = released_port().await;
    let http_validation_port = released_port().await;
    let dns_port = released_udp_port();
    let dns_management = released_port().await;

    let dns = Process(
        Command::new(CHALLTESTSRV)
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &dns_management.to_string()])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv"),
    );
    let config = serde_json::json!({
        "pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": "",
            "certificate": pki.cert_file,
            "privateKey": pki.key_file,
            "httpPort": http_validation_port.port(),
            "tlsPort": validation_port.port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }
    });
    std::fs::write(dir.path().join("pebble.json"), config.to_string()).expect("write");
    let log = std::fs::File::create(dir.path().join("pebble.log")).expect("log");
    let pebble = Process(
        Command::new(PEBBLE)
            .arg("-config")
            .arg(dir.path().join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // Validate at once; never reject a nonce at random (its default 5%).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start pebble"),
    );
    wait_listening(listen).await;
    wait_listening(dns_management).await;
    Pebble {
        directory: format!("https://{listen}/dir"),
        ca_file,
        validation_port,
        http_validation_port,
        _dns: dns,
        _pebble: pebble,
        _dir: dir,
    }
}

fn released_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

/// Waits (bounded) until another process listens on `addr`.
async fn wait_listening(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {addr}"
        );
        // Waiting on another process to come up.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `[acme]` section for `pebble`, with the cache in `cache_dir`.
fn acme_section(pebble: &Pebble, cache_dir: &Path) -> String {
    format!(
        "[acme]\nenabled = true\ndomains = [\"{DOMAIN}\"]\ncontact = \"ops@gateway.test\"\n\
         directory = \"{}\"\ndirectory_ca_file = \"{}\"\ncache_dir = \"{}\"",
        pebble.directory,
        pebble.ca_file.display(),
        cache_dir.display()
    )
}

async fn acme_gateway(pebble: &Pebble, cache_dir: &Path) -> TestGateway {
    gateway(echo_upstream().await)
        .listen(pebble.validation_port)
        .section(&acme_section(pebble, cache_dir))
        .anonymous()
        .start()
        .await
}

/// Waits (bounded) until the gateway serves an ACME certificate of a later
/// generation than `after`.
async fn acme_installed(info: &mut watch::Receiver<ServedInfo>, after: u64) -> ServedInfo {
    let wait = async {
        loop {
            {
                let now = info.borrow_and_update();
                if now.origin == CertificateOrigin::Acme && now.generation > after {
                    return now.clone();
                }
            }
            info.changed().await.expect("gateway running");
        }
    };
    match tokio::time::timeout(Duration::from_secs(60), wait).await {
        Ok(info) => info,
        Err(_) => panic!(
            "no ACME certificate within 60 s; last failure: {:?}",
            info.borrow().last_error
        ),
    }
}

/// The leaf certificate a client reaching `DOMAIN` is given (not verified: the
/// assertions below compare it).
async fn served_leaf(gw: &TestGateway) -> CertificateDer<'static> {
    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(DOMAIN).expect("name"), tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certificates")[0].clone()
}

/// (issuer common name, subjectAltNames, notAfter in seconds) of a certificate.
fn describe(der: &CertificateDer<'_>) -> (String, Vec<String>, i64) {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("X.509");
    let issuer = cert.issuer().to_string();
    let names = cert
        .subject_alternative_name()
        .expect("SAN parses")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (issuer, names, cert.validity().not_after.timestamp())
}

/// The one subdirectory of the cache (per ACME directory) and its files.
fn cache_subdir(cache_dir: &Path) -> PathBuf {
    let entries: Vec<_> = std::fs::read_dir(cache_dir)
        .expect("cache dir exists")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_obtained_with_tls_alpn_01_and_served_without_a_restart() {
    if !programs_present() {
        return;
    }
    let pebble = start_pebble().await;
    let cache = TempDir::new().expect("tempdir");
    let gw = acme_gateway(&pebble, cache.path()).await;
    let mut info = gw.server.certificate.subscribe();
    let start = info.borrow().clone();
    assert_eq!(
        start.origin,
        CertificateOrigin::Files,
        "nothing cached yet: the files serve until the order completes"
    );

    let installed = acme_installed(&mut info, start.generation).await;
    assert_eq!(installed.names, vec![DOMAIN.to_string()]);
    let leaf = served_leaf(&gw).await;
    let (issuer, names, _) = describe(&leaf);
    assert!(issuer.contains("Pebble Intermediate CA"), "{issuer}");
    assert_eq!(names, vec![DOMAIN.to_string()]);

    // Cached for the next start: the served chain, a private key only the
    // gateway's user can read, and the account.
    let subdir = cache_subdir(cache.path());
    let cached = std::fs::read(subdir.join("certificate.pem")).expect("cached certificate");
    let cached_leaf = rustls::pki_types::pem::PemObject::pem_slice_iter(&cached)
        .next()
        .expect("a certificate")
        .expect("PEM");
    assert_eq!(leaf, cached_leaf);
    use std::os::unix::fs::PermissionsExt;
    for secret in ["certificate.key", "account.json"] {
        let mode = std::fs::metadata(subdir.join(secret))
            .expect(secret)
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{secret} is readable by others: {mode:o}");
    }

    // A restart serves the cached certificate at once and orders nothing.
    gw.server.shutdown().await;
    let again = acme_gateway(&pebble, cache.path()).await;
    let info = again.server.certificate.info();
    assert_eq!(info.origin, CertificateOrigin::Acme);
    assert_eq!(info.generation, 1);
    assert_eq!(served_leaf(&again).await, leaf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_certificate_close_to_expiry_is_renewed_and_swapped_in() {
    if !programs_present() {
        return;
    }
    let pebble = start_pebble().await;
    let cache = TempDir::new().expect("tempdir");
    // First an ordinary issuance, to learn where the cache keeps its files.
    let gw = acme_gateway(&pebble, cache.path()).await;
    let mut info = gw.server.certificate.subscribe();
    acme_installed(&mut info, 1).await;
    gw.server.shutdown().await;
    let subdir = cache_subdir(cache.path());

    // Then a cached certificate for the domain that ends in 5 days (inside
    // renew_before's 30): served at start, replaced by a new order.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![DOMAIN.to_string()]).expect("params");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(80);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(5);
    let expiring = params.self_signed(&key).expect("cert");
    std::fs::write(subdir.join("certificate.pem"), expiring.pem()).expect("write");
    std::fs::write(subdir.join("certificate.key"), key.serialize_pem()).expect("write");

    let gw = acme_gateway(&pebble, cache.path()).await;
    let mut info = gw.server.certificate.subscribe();
    let start = info.borrow().clone();
    assert_eq!(
        start.origin,
        CertificateOrigin::Acme,
        "the cached certificate serves at start"
    );
    let renewed = acme_installed(&mut info, start.generation).await;
    let left = renewed
        .not_after
        .expect("notAfter")
        .duration_since(std::time::SystemTime::now())
        .expect("in the future");
    assert!(
        left > Duration::from_secs(30 * 86_400),
        "renewed certificate lasts {left:?}"
    );
    let leaf = served_leaf(&gw).await;
    let (issuer, _, _) = describe(&leaf);
    assert!(issuer.contains("Pebble Intermediate CA"), "{issuer}");
    assert_ne!(leaf.as_ref(), expiring.der().as_ref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_obtained_with_http_01_on_the_plain_http_listener() {
    if !programs_present() {
        return;
    }
    let pebble = start_pebble().await;
    let cache = TempDir::new().expect("tempdir");
    // The TLS listener is NOT on pebble's TLS-ALPN-01 port: only an answer on
    // the plain-HTTP listener (pebble's HTTP-01 port) can validate the order.
    let gw = gateway(echo_upstream().await)
        .server(&format!(
            "redirect_http = \"{}\"",
            pebble.http_validation_port
        ))
        .section(&format!(
            "{}\nchallenge = \"http-01\"",
            acme_section(&pebble, cache.path())
        ))
        .anonymous()
        .start()
        .await;
    assert_ne!(gw.addr, pebble.validation_port);
    let mut info = gw.server.certificate.subscribe();
    let start = info.borrow().clone();
    let installed = acme_installed(&mut info, start.generation).await;
    assert_eq!(installed.names, vec![DOMAIN.to_string()]);
    let (issuer, names, _) = describe(&served_leaf(&gw).await);
    assert!(issuer.contains("Pebble Intermediate CA"), "{issuer}");
    assert_eq!(names, vec![DOMAIN.to_string()]);
    // The order is done: its token is no longer answered, the path redirects.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!(
            "http://{}/.well-known/acme-challenge/any-token",
            pebble.http_validation_port
        ))
        .header("host", DOMAIN)
        .send()
        .await
        .expect("request");
    assert_eq!(plain.status(), 308);
}

#[test]
fn http_01_needs_the_plain_http_listener() {
    let text = "[oidc]\nissuer = \"http://127.0.0.1:1/t/v2.0\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
                [upstream]\nurl = \"http://127.0.0.1:21114\"\n\
                [acme]\nenabled = true\ndomains = [\"console.gateway.test\"]\nchallenge = \"http-01\"\n";
    let Err(error) = oidc_gateway::config::load_str(text, &[]) else {
        panic!("http-01 without server.redirect_http was accepted");
    };
    let error = error.to_string();
    assert!(
        error.contains("acme.challenge") && error.contains("server.redirect_http"),
        "{error}"
    );
}
