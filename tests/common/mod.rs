//! Test harness: an in-process gateway on 127.0.0.1:0 with its own self-signed
//! certificate, small upstream servers built from closures, and HTTPS clients
//! that trust exactly the gateway's certificate.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use oidc_gateway::config::{self, Settings};
use oidc_gateway::server::{self, RunningServer};
use oidc_gateway::Body;
use tempfile::TempDir;
use tokio::net::TcpListener;

pub use oidc_gateway::{empty_body, full_body};

pub struct TestGateway {
    pub addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub server: RunningServer,
    pub cert_pem: Vec<u8>,
    pub settings: Arc<Settings>,
    dir: TempDir,
}

/// Config text for a gateway in `dir` forwarding to `upstream`, plus `extra`
/// lines appended to the named sections (`[server]` keys go in `server_extra`).
pub fn config_text(
    dir: &TempDir,
    upstream: &str,
    server_extra: &str,
    upstream_extra: &str,
) -> String {
    let d = dir.path().display();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server_extra}
[tls]
cert = "{d}/gateway.crt"
key = "{d}/gateway.key"
self_signed = true
[oidc]
issuer = "http://127.0.0.1:1/tenant/v2.0"
client_id = "test-client"
client_secret = "test-secret"
[upstream]
url = "{upstream}"
{upstream_extra}
[log]
format = "text"
level = "warn"
"#
    )
}

pub struct GatewayBuilder {
    upstream: String,
    server_extra: String,
    upstream_extra: String,
}

pub fn gateway(upstream: SocketAddr) -> GatewayBuilder {
    GatewayBuilder {
        upstream: format!("http://{upstream}"),
        server_extra: String::new(),
        upstream_extra: String::new(),
    }
}

impl GatewayBuilder {
    pub fn upstream_url(mut self, url: &str) -> Self {
        self.upstream = url.to_string();
        self
    }
    pub fn server(mut self, line: &str) -> Self {
        self.server_extra.push_str(line);
        self.server_extra.push('\n');
        self
    }
    pub fn upstream_option(mut self, line: &str) -> Self {
        self.upstream_extra.push_str(line);
        self.upstream_extra.push('\n');
        self
    }

    pub async fn start(self) -> TestGateway {
        oidc_gateway::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config_text(
            &dir,
            &self.upstream,
            &self.server_extra,
            &self.upstream_extra,
        );
        let settings = Arc::new(config::load_str(&text, &[]).expect("test config is valid"));
        let server = server::start(settings.clone())
            .await
            .expect("gateway starts");
        let cert_pem = std::fs::read(dir.path().join("gateway.crt")).expect("certificate written");
        TestGateway {
            addr: server.https_addr,
            http_addr: server.http_addr,
            server,
            cert_pem,
            settings,
            dir,
        }
    }
}

impl TestGateway {
    /// `https://localhost:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    fn client_builder(&self) -> reqwest::ClientBuilder {
        let cert = reqwest::Certificate::from_pem(&self.cert_pem).expect("pem");
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert)
            .resolve("localhost", self.addr)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
    }

    /// An HTTP/1.1-only client.
    pub fn http1(&self) -> reqwest::Client {
        self.client_builder().http1_only().build().expect("client")
    }

    /// A client that negotiates HTTP/2 by ALPN.
    pub fn http2(&self) -> reqwest::Client {
        self.client_builder().build().expect("client")
    }

    /// A rustls client config trusting the gateway's certificate, with `alpn`.
    pub fn tls_client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&self.cert_pem) {
            roots.add(cert.expect("cert")).expect("root");
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// A TLS connection to the gateway (SNI localhost).
    pub async fn tls_connect(
        &self,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.tls_client_config(alpn)));
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        connector.connect(name, tcp).await.expect("tls handshake")
    }
}

/// Starts an upstream on 127.0.0.1:0 that answers every request with `handler`.
pub async fn upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An upstream that answers with a JSON echo of what it received:
/// `{"method", "uri", "version", "headers": {name: [values]}}`.
pub async fn echo_upstream() -> SocketAddr {
    upstream(|req: Request<Incoming>| async move {
        let mut headers = serde_json::Map::new();
        for name in req.headers().keys() {
            let values: Vec<serde_json::Value> = req
                .headers()
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
                .collect();
            headers.insert(name.as_str().to_string(), values.into());
        }
        let body = serde_json::json!({
            "method": req.method().as_str(),
            "uri": req.uri().to_string(),
            "version": format!("{:?}", req.version()),
            "headers": headers,
        });
        let mut response = Response::new(full_body(body.to_string()));
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        response
    })
    .await
}

/// The values of header `name` in an echo upstream's JSON.
pub fn echoed<'a>(echo: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    echo["headers"][name]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default()
}

/// A port with nothing listening (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}
