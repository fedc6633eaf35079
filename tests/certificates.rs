//! The served certificate changes while the gateway runs: a new pair on disk is
//! served to new connections after a reload request or a file change, open
//! connections keep working, and a pair that does not load never replaces the
//! last good one.

mod common;

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use oidc_gateway::certificate::ServedInfo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::watch;

use common::{echo_upstream, gateway, TestGateway};

/// A fresh self-signed pair for localhost: (certificate PEM, key PEM).
fn new_pair() -> (String, String) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".into()])
            .expect("generate a pair");
    (generated.cert.pem(), generated.signing_key.serialize_pem())
}

fn leaf(pem: &[u8]) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(pem)
        .next()
        .expect("a certificate")
        .expect("valid PEM")
}

/// A TLS connection that trusts exactly `cert`: the handshake fails, naming the
/// mismatch, when the gateway presents any other certificate.
async fn connect_pinned(
    gw: &TestGateway,
    cert: CertificateDer<'static>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
    let mut config = oidc_gateway::tls::pinned_client_config(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await?;
    connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

/// An HTTP/1.1 connection over `tls`; its driver runs in the background.
async fn http1_over(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> http1::SendRequest<Empty<bytes::Bytes>> {
    let (sender, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender
}

async fn healthz(sender: &mut http1::SendRequest<Empty<bytes::Bytes>>) -> u16 {
    let request = http::Request::get("/healthz")
        .header("host", "localhost")
        .body(Empty::new())
        .expect("request");
    sender
        .send_request(request)
        .await
        .expect("answer on the connection")
        .status()
        .as_u16()
}

/// Replaces the gateway's certificate files (key first, as tools usually do).
fn write_pair(gw: &TestGateway, cert: &str, key: &str) {
    std::fs::write(&gw.settings.config.tls.key, key).expect("write key");
    std::fs::write(&gw.settings.config.tls.cert, cert).expect("write cert");
}

/// Waits (bounded) for the next change of the served certificate's facts.
async fn next_change(info: &mut watch::Receiver<ServedInfo>) -> ServedInfo {
    tokio::time::timeout(Duration::from_secs(10), info.changed())
        .await
        .expect("the certificate state changes within 10 s")
        .expect("the gateway is running");
    let info = info.borrow_and_update().clone();
    info
}

fn pinning_error(result: Result<impl Sized, std::io::Error>) -> String {
    match result {
        Ok(_) => panic!("the handshake should fail: another certificate is served"),
        Err(e) => e.to_string(),
    }
}

/// A gateway (no one signed in) that checks its certificate files every
/// `interval` ("0s": only when asked to reload).
async fn reloading_gateway(interval: &str) -> TestGateway {
    gateway(echo_upstream().await)
        .tls(&format!("reload_interval = \"{interval}\""))
        .anonymous()
        .start()
        .await
}

#[tokio::test]
async fn a_reload_serves_the_new_pair_to_new_connections_and_open_ones_keep_working() {
    let gw = reloading_gateway("0s").await;
    let old = leaf(&gw.cert_pem);
    let mut open = http1_over(
        connect_pinned(&gw, old.clone())
            .await
            .expect("old pair served"),
    )
    .await;
    assert_eq!(healthz(&mut open).await, 200);

    let (cert, key) = new_pair();
    write_pair(&gw, &cert, &key);
    let mut info = gw.server.certificate.subscribe();
    gw.server.reload.request();
    let changed = next_change(&mut info).await;
    assert_eq!(changed.generation, 2, "one install after the first");
    assert_eq!(changed.reload_failures, 0);

    let new = leaf(cert.as_bytes());
    let mut fresh = http1_over(connect_pinned(&gw, new).await.expect("new pair served")).await;
    assert_eq!(healthz(&mut fresh).await, 200);
    let refused = pinning_error(connect_pinned(&gw, old).await);
    assert!(refused.contains("different certificate"), "{refused}");

    // The connection opened before the reload is untouched and still answers.
    assert_eq!(healthz(&mut open).await, 200);
    assert_eq!(healthz(&mut open).await, 200);
}

#[tokio::test]
async fn changed_files_are_picked_up_without_a_signal() {
    let gw = reloading_gateway("50ms").await;
    let mut info = gw.server.certificate.subscribe();
    let (cert, key) = new_pair();
    write_pair(&gw, &cert, &key);
    // A check may fall between the two writes (new key, old certificate) and fail;
    // the next one sees both files changed.
    while next_change(&mut info).await.generation < 2 {}
    connect_pinned(&gw, leaf(cert.as_bytes()))
        .await
        .expect("the changed pair is served");
}

#[tokio::test]
async fn a_broken_new_pair_keeps_the_old_certificate_and_says_why() {
    let gw = reloading_gateway("0s").await;
    let old = leaf(&gw.cert_pem);
    let old_key = std::fs::read_to_string(&gw.settings.config.tls.key).expect("key");
    let mut info = gw.server.certificate.subscribe();

    // A new certificate next to the old key: they do not belong together.
    let (cert, _) = new_pair();
    write_pair(&gw, &cert, &old_key);
    gw.server.reload.request();
    let failed = next_change(&mut info).await;
    assert_eq!(failed.reload_failures, 1);
    assert_eq!(failed.generation, 1, "nothing was installed");
    let why = failed.last_error.expect("the failure is kept");
    assert!(why.contains("do not form a usable pair"), "{why}");
    connect_pinned(&gw, old.clone())
        .await
        .expect("the old pair is still served");

    // A certificate file cut short while being written.
    write_pair(&gw, &cert[..cert.len() / 2], &old_key);
    gw.server.reload.request();
    let failed = next_change(&mut info).await;
    assert_eq!(failed.reload_failures, 2);
    let why = failed.last_error.expect("the failure is kept");
    assert!(why.contains("key `tls.cert`"), "{why}");
    connect_pinned(&gw, old)
        .await
        .expect("the old pair is still served");
}
