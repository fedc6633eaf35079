//! Test harness: an in-process gateway on 127.0.0.1:0 with its own self-signed
//! certificate, small upstream servers built from closures, and HTTPS clients
//! that trust exactly the gateway's certificate.
#![allow(dead_code)]

pub mod missing;
pub mod pki;
pub mod process;
pub mod requests;
pub mod websocket;
pub mod yaml;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use oidc_gateway::config::{self, Settings};
use oidc_gateway::devidp::{DevIdp, DevIdpOptions, SigningAlg};
use oidc_gateway::server::{self, RunningServer};
use oidc_gateway::Body;
use tempfile::TempDir;
use tokio::net::TcpListener;

#[allow(unused_imports)]
pub use oidc_gateway::{empty_body, full_body};
#[allow(unused_imports)]
pub use requests::*;

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_ID: &str = "test-client";
pub const CLIENT_SECRET: &str = "test-secret";
pub const USER: &str = "alice@contoso.example";

/// The mock Entra IdP of the tests: RS256 with the fixture keys, auto-login as [`USER`].
pub fn idp_options() -> DevIdpOptions {
    DevIdpOptions {
        tenant_id: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        rsa_keys_pem: vec![
            include_str!("../fixtures/idp-rsa-1.pem").into(),
            include_str!("../fixtures/idp-rsa-2.pem").into(),
            include_str!("../fixtures/idp-rsa-3.pem").into(),
        ],
        alg: SigningAlg::Rs256,
        groups: vec!["0b5e7a3c-admins".into(), "5f1d2e4b-users".into()],
        auto_login: Some(USER.into()),
        ..DevIdpOptions::default()
    }
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub server: RunningServer,
    pub cert_pem: Vec<u8>,
    pub settings: Arc<Settings>,
    pub idp: DevIdp,
    /// Cookies of the signed-in test browser (shared by http1() and http2()).
    pub jar: Arc<reqwest::cookie::Jar>,
    dir: TempDir,
}

/// Extra config lines per section; `rest` may hold whole sections.
#[derive(Default, Clone)]
pub struct Extra {
    /// `server.listen`; default "127.0.0.1:0".
    pub listen: Option<String>,
    pub server: String,
    pub tls: String,
    pub oidc: String,
    pub upstream: String,
    pub session: String,
    pub rest: String,
    /// Leave `oidc.client_secret` out (another credential kind is configured).
    pub no_client_secret: bool,
}

/// Config text for a gateway in `dir` forwarding to `upstream` and trusting `issuer`.
pub fn config_text(dir: &TempDir, upstream: &str, issuer: &str, extra: &Extra) -> String {
    let d = dir.path().display();
    format!(
        r#"
[server]
listen = "{listen}"
{server}
[tls]
cert = "{d}/gateway.crt"
key = "{d}/gateway.key"
self_signed = true
{tls}
[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
{secret}
{oidc}
[upstream]
url = "{upstream}"
{upstream_extra}
[session]
{session}
[log]
format = "text"
level = "warn"
{rest}
"#,
        listen = extra.listen.as_deref().unwrap_or("127.0.0.1:0"),
        server = extra.server,
        tls = extra.tls,
        oidc = extra.oidc,
        secret = if extra.no_client_secret {
            String::new()
        } else {
            format!("client_secret = \"{CLIENT_SECRET}\"")
        },
        upstream_extra = extra.upstream,
        session = extra.session,
        rest = extra.rest,
    )
}

pub struct GatewayBuilder {
    upstream: String,
    extra: Extra,
    /// Environment overrides (`OIDC_GATEWAY__…`), applied over the file.
    env: Vec<(String, String)>,
    idp: DevIdpOptions,
    sign_in: bool,
    /// Set `oidc.discovery_url` to the IdP's (its declared issuer is not its address).
    discovery_from_idp: bool,
}

pub fn gateway(upstream: SocketAddr) -> GatewayBuilder {
    GatewayBuilder {
        upstream: format!("http://{upstream}"),
        extra: Extra::default(),
        env: Vec::new(),
        idp: idp_options(),
        sign_in: true,
        discovery_from_idp: false,
    }
}

fn push_line(target: &mut String, line: &str) {
    target.push_str(line);
    target.push('\n');
}

impl GatewayBuilder {
    pub fn upstream_url(mut self, url: &str) -> Self {
        self.upstream = url.to_string();
        self
    }
    pub fn server(mut self, line: &str) -> Self {
        push_line(&mut self.extra.server, line);
        self
    }
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.extra.listen = Some(addr.to_string());
        self
    }
    pub fn tls(mut self, line: &str) -> Self {
        push_line(&mut self.extra.tls, line);
        self
    }
    pub fn upstream_option(mut self, line: &str) -> Self {
        push_line(&mut self.extra.upstream, line);
        self
    }
    pub fn oidc(mut self, line: &str) -> Self {
        push_line(&mut self.extra.oidc, line);
        self
    }
    pub fn session(mut self, line: &str) -> Self {
        push_line(&mut self.extra.session, line);
        self
    }
    /// Whole extra sections, e.g. "[headers]\npass_access_token = true".
    pub fn section(mut self, text: &str) -> Self {
        push_line(&mut self.extra.rest, text);
        self
    }
    pub fn idp(mut self, change: impl FnOnce(&mut DevIdpOptions)) -> Self {
        change(&mut self.idp);
        self
    }
    /// An environment override, e.g. ("OIDC_GATEWAY__TLS__CERT", path).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    /// No `oidc.client_secret` in the config (a certificate or federated credential instead).
    pub fn without_client_secret(mut self) -> Self {
        self.extra.no_client_secret = true;
        self
    }
    /// The IdP declares `issuer` (another cloud's, External ID's): the gateway
    /// trusts that issuer and reads discovery from the IdP's address.
    pub fn idp_declaring_issuer(mut self, issuer: &str) -> Self {
        self.idp.issuer = Some(issuer.to_string());
        self.discovery_from_idp = true;
        self
    }
    /// Start without signing the test browser in.
    pub fn anonymous(mut self) -> Self {
        self.sign_in = false;
        self
    }

    pub async fn start(self) -> TestGateway {
        oidc_gateway::tls::install_crypto_provider();
        let idp = DevIdp::start(self.idp).await.expect("mock IdP starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut extra = self.extra;
        if self.discovery_from_idp {
            push_line(
                &mut extra.oidc,
                &format!("discovery_url = \"{}\"", idp.discovery_url()),
            );
        }
        if !extra.oidc.contains("graph_url") {
            // The IdP's Graph stand-in, where overage groups are read.
            push_line(
                &mut extra.oidc,
                &format!("graph_url = \"{}\"", idp.graph_url()),
            );
        }
        let text = config_text(&dir, &self.upstream, &idp.issuer(), &extra);
        let settings = Arc::new(config::load_str(&text, &self.env).expect("test config is valid"));
        let server = server::start(settings.clone())
            .await
            .expect("gateway starts");
        let cert_pem = std::fs::read(&settings.config.tls.cert).expect("certificate written");
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            server.readiness.wait_ready(),
        )
        .await
        .expect("gateway becomes ready (IdP metadata loaded)");
        let gw = TestGateway {
            addr: server.https_addr,
            http_addr: server.http_addr,
            server,
            cert_pem,
            settings,
            idp,
            jar: Arc::new(reqwest::cookie::Jar::default()),
            dir,
        };
        if self.sign_in {
            let response = gw.sign_in(&gw.http1(), "/").await;
            assert_eq!(
                response.status(),
                303,
                "test sign-in ends with 303 to the return path"
            );
        }
        gw
    }
}

impl TestGateway {
    /// `https://localhost:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    fn client_builder(&self) -> reqwest::ClientBuilder {
        client_builder(&self.cert_pem, self.addr)
    }

    /// An HTTP/1.1-only client of the signed-in test browser.
    pub fn http1(&self) -> reqwest::Client {
        self.client_builder()
            .cookie_provider(self.jar.clone())
            .http1_only()
            .build()
            .expect("client")
    }

    /// An HTTP/2 (ALPN) client of the signed-in test browser.
    pub fn http2(&self) -> reqwest::Client {
        self.client_builder()
            .cookie_provider(self.jar.clone())
            .build()
            .expect("client")
    }

    /// A client with its own, empty cookie jar: another browser.
    pub fn fresh_browser(&self) -> reqwest::Client {
        self.client_builder()
            .cookie_provider(Arc::new(reqwest::cookie::Jar::default()))
            .build()
            .expect("client")
    }

    /// Another browser, signed in through the whole login (the callback answered 303).
    pub async fn signed_in_browser(&self) -> reqwest::Client {
        let browser = self.fresh_browser();
        let callback = self.sign_in(&browser, "/").await;
        assert_eq!(
            callback.status(),
            303,
            "the login ends with 303 to the return path"
        );
        browser
    }

    /// Another browser that speaks HTTP/1.1 only (WebSocket upgrades).
    pub fn fresh_http1(&self) -> reqwest::Client {
        self.client_builder()
            .cookie_provider(Arc::new(reqwest::cookie::Jar::default()))
            .http1_only()
            .build()
            .expect("client")
    }

    /// The `Cookie` header value of the signed-in test browser.
    pub fn cookie_header(&self) -> String {
        use reqwest::cookie::CookieStore;
        let url: reqwest::Url = self.url("/").parse().expect("url");
        self.jar
            .cookies(&url)
            .map(|v| v.to_str().expect("ascii").to_string())
            .unwrap_or_default()
    }

    /// Just the gateway's session cookie pair, `__Host-oidc-gateway=<id>`.
    pub fn session_cookie(&self) -> String {
        self.cookie_header()
            .split("; ")
            .find(|pair| pair.starts_with("__Host-oidc-gateway="))
            .expect("the test browser is signed in")
            .to_string()
    }

    /// Walks the login from `<prefix>/sign_in?rd=<return_to>` through the IdP
    /// and back to the callback; returns the callback's answer (303 on success).
    pub async fn sign_in(&self, client: &reqwest::Client, return_to: &str) -> reqwest::Response {
        let start = format!(
            "{}?rd={}",
            self.url("/.gateway/sign_in"),
            urlencode(return_to)
        );
        self.follow_login(client, client.get(start).send().await.expect("sign_in"))
            .await
    }

    /// Follows a login's redirects (gateway → IdP → callback) until the callback answers.
    pub async fn follow_login(
        &self,
        client: &reqwest::Client,
        response: reqwest::Response,
    ) -> reqwest::Response {
        follow_login(client, response).await
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

    /// An HTTP/2 connection (ALPN h2) ready for extended CONNECT: one
    /// ordinary request has been answered first, so the gateway's SETTINGS
    /// (ENABLE_CONNECT_PROTOCOL) have certainly arrived.
    pub async fn h2_connection(&self) -> hyper::client::conn::http2::SendRequest<Body> {
        let tls = self.tls_connect(&[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        let health = sender
            .send_request(
                Request::get(self.url("/healthz"))
                    .body(empty_body())
                    .expect("request"),
            )
            .await
            .expect("GET /healthz over HTTP/2");
        assert_eq!(health.status(), 200);
        sender
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

/// An upstream that answers every request with `body`, and how many it got.
pub async fn counting_upstream(body: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let addr = upstream(move |_req: Request<Incoming>| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move { Response::new(full_body(body)) }
    })
    .await;
    (addr, requests)
}

/// The values of header `name` in an echo upstream's JSON.
pub fn echoed<'a>(echo: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    echo["headers"][name]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default()
}

/// Headers a browser sends when the user navigates (address bar, link).
pub fn navigate(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-dest", "document")
}

/// The `Location` of a redirect (panics, naming the status, when there is none).
pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{} without Location", response.status()))
        .to_string()
}

/// Every `Set-Cookie` value of a response.
pub fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// The value of query parameter `name` in `url`.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A port for a server to be started on later (bound, then released).
pub async fn released_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

/// A port with nothing listening: bound but never listened on, so connections
/// are refused, and kept bound for the rest of the test process so that no other
/// test's listener can be given the same port meanwhile.
pub async fn closed_port() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    std::mem::forget(socket);
    addr
}

/// Follows a login's redirects (gateway → IdP → callback) until the callback answers.
pub async fn follow_login(
    client: &reqwest::Client,
    mut response: reqwest::Response,
) -> reqwest::Response {
    for _ in 0..6 {
        let at_callback = response.url().path() == "/api/oidc/callback";
        if at_callback || !response.status().is_redirection() {
            return response;
        }
        let location = response.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let next = response.url().join(&location).expect("redirect target");
        response = client.get(next).send().await.expect("redirect hop");
    }
    panic!("login did not reach the callback");
}

/// A client that trusts only `cert_pem`, resolves `localhost` to `addr`'s IP
/// (the port comes from each URL) and follows no redirects.
pub fn client_builder(cert_pem: &[u8], addr: SocketAddr) -> reqwest::ClientBuilder {
    let cert = reqwest::Certificate::from_pem(cert_pem).expect("pem");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .resolve("localhost", addr)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
}
