//! `oidc-gateway healthcheck`: asks the local listener for /healthz (or /readyz)
//! so a Docker HEALTHCHECK works in an image without curl or a shell.
//! It trusts exactly the certificate the listener serves (pinned: `tls.cert`, or the
//! cached ACME certificate), whatever names it carries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::Settings;
use crate::tls;

/// The certificate file the listener serves: with ACME, the cached ACME
/// certificate once there is one; otherwise `tls.cert`.
fn served_certificate_path(settings: &Settings) -> PathBuf {
    let acme = &settings.config.acme;
    if acme.enabled {
        let cached = crate::acme::CacheFiles::new(acme).certificate();
        if cached.is_file() {
            return cached;
        }
    }
    settings.config.tls.cert.clone()
}

/// The address to dial for a listen address: a wildcard becomes loopback.
pub fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// GETs `path` from the gateway at `addr`; the answer's status, or why there was none.
pub async fn probe(
    settings: &Settings,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<StatusCode, String> {
    tokio::time::timeout(timeout, probe_inner(settings, addr, path))
        .await
        .map_err(|_| format!("no answer from {addr} within {}s", timeout.as_secs_f64()))?
}

async fn probe_inner(
    settings: &Settings,
    addr: SocketAddr,
    path: &str,
) -> Result<StatusCode, String> {
    tls::install_crypto_provider();
    let cert_path = served_certificate_path(settings);
    let cert = tls::load_certs(&cert_path)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or_else(|| format!("no certificate in {}", cert_path.display()))?;
    let connector = TlsConnector::from(Arc::new(tls::pinned_client_config(cert)));
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {addr} failed: {e}"))?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::USER_AGENT, "oidc-gateway-healthcheck")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request to {addr} failed: {e}"))?;
    Ok(response.status())
}
