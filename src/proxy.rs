//! The upstream side: a pooled HTTP/1.1 client per upstream, the header policy of
//! a reverse proxy (RFC 9110 §7.6.1 hop-by-hop removal, X-Forwarded-*), streaming
//! bodies, and tunnels for WebSocket upgrades (HTTP/1.1 Upgrade, and HTTP/2
//! extended CONNECT, RFC 8441, translated to an HTTP/1.1 upgrade) — only those:
//! any other upgrade token (`h2c`, …) or CONNECT is refused. A tunnel ends after
//! its upstream's `tunnel_idle_timeout` without traffic.
//!
//! The proxy knows nothing about authentication: the gateway hands it a request
//! whose identity headers are already what they must be.

use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::future::Either;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Settings, UpstreamSettings};
use crate::connection::{
    ClientAddress, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REAL_IP, X_REQUEST_ID,
};
use crate::errors::error_chain;
use crate::pages::ErrorPage;
use crate::tls::{self, TlsError};
use crate::upstream_pool::{ConnectionSlot, UpstreamError, UpstreamPool};
use crate::{empty_body, Body};

/// Per-request facts the proxy needs from the connection and the gateway.
#[derive(Clone, Copy)]
pub struct ForwardContext<'a> {
    pub request_id: &'a HeaderValue,
    pub client: &'a ClientAddress,
    /// Scheme the client used to reach us (the listener's).
    pub scheme: &'static str,
    pub wants_html: bool,
    /// RustDesk desktop clients: the gateway's own failures are 4xx JSON, never
    /// 5xx (a client that sees 5xx retries around the gateway) and never HTML.
    pub api_client: bool,
}

/// An upstream request ready to send, and whether it asks for an upgrade.
struct Outbound {
    request: Request<Body>,
    upgrade: Upgrade,
    client_upgrade: Option<OnUpgrade>,
}

/// What came back from forwarding: the response and how long the upstream took
/// to answer (None when it never answered).
pub struct Forwarded {
    pub response: Response<Body>,
    pub upstream_time: Option<Duration>,
}

/// Upgraded connections (WebSocket) outlive their request; they are tracked so
/// that shutdown can wait for them, then close them when the grace period ends.
#[derive(Clone, Default)]
pub struct Tunnels {
    pub tracker: TaskTracker,
    pub close: CancellationToken,
}

pub struct Upstream {
    /// The upstream's name (`default`, `rustdesk_relay`, …) for log lines.
    name: String,
    /// Its label in the metrics (see `metrics::upstream_slot`).
    metrics_slot: usize,
    /// `scheme://host[:port]`: the `aud` of assertions sent to it.
    origin: String,
    pool: UpstreamPool,
    /// Where connections go: the upstream's scheme and authority.
    target: Uri,
    /// Host sent upstream unless the client's is preserved.
    host: HeaderValue,
    authority: Authority,
    preserve_host: bool,
    response_timeout: Duration,
    /// Zero: tunnels never end for idleness.
    tunnel_idle_timeout: Duration,
    /// X-Forwarded-For carries only the client address the gateway decided on.
    client_address_only: bool,
    tunnels: Tunnels,
}

/// Headers that describe one connection and are never forwarded (RFC 9110
/// §7.6.1), counting `proxy-*` (we are no forward proxy) and `expect`
/// (answered by our server already). In the order of [`hop_by_hop_index`].
static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("proxy-connection"),
    header::EXPECT,
];

/// The position in [`HOP_BY_HOP`] of a header name (lower case, as
/// `HeaderName` keeps it). A `match` on the string: a length switch and one
/// comparison, for every header of every request and response.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    match name {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "te" => Some(2),
        "trailer" => Some(3),
        "transfer-encoding" => Some(4),
        "upgrade" => Some(5),
        "proxy-authorization" => Some(6),
        "proxy-authenticate" => Some(7),
        "proxy-connection" => Some(8),
        "expect" => Some(9),
        _ => None,
    }
}

impl Upstream {
    /// One per configured upstream, in [`Settings::upstreams`] order (ids are positions).
    pub fn all(settings: &Settings, tunnels: &Tunnels) -> Result<Vec<Self>, TlsError> {
        settings
            .upstreams
            .iter()
            .map(|upstream| Upstream::new(upstream, tunnels.clone()))
            .collect()
    }

    pub fn new(upstream: &UpstreamSettings, tunnels: Tunnels) -> Result<Self, TlsError> {
        let cfg = &upstream.config;
        let key = &upstream.key;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = tls::upstream_client_config(cfg.ca_file.as_deref())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let pool = UpstreamPool::new(
            connector,
            cfg.pool_max_idle_per_host,
            cfg.pool_idle_timeout,
            cfg.max_connections,
            cfg.connect_timeout,
        );
        let metrics_slot = crate::metrics::upstream_slot(&upstream.name);
        crate::metrics::watch_pool(metrics_slot, pool.gauge());
        let scheme = upstream.url.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = upstream
            .url
            .authority()
            .cloned()
            .ok_or_else(|| TlsError::Pair(format!("{key}.url has no host")))?;
        let target = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| TlsError::Pair(format!("{key}.url: {e}")))?;
        let host = host_header(&scheme, &authority)
            .map_err(|e| TlsError::Pair(format!("{key}.url: {e}")))?;
        Ok(Upstream {
            name: upstream.name.clone(),
            metrics_slot,
            origin: format!("{scheme}://{authority}"),
            pool,
            target,
            host,
            authority,
            preserve_host: cfg.preserve_host,
            response_timeout: cfg.response_timeout,
            tunnel_idle_timeout: cfg.tunnel_idle_timeout,
            client_address_only: upstream.client_address_only,
            tunnels,
        })
    }

    /// `scheme://host[:port]` of the upstream.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Its label in the metrics.
    pub fn metrics_slot(&self) -> usize {
        self.metrics_slot
    }

    /// Sends `request` upstream and streams the answer back. Never fails: upstream
    /// problems become 502/504 answers (HTML or JSON as the client prefers).
    ///
    /// The upstream request is built before the returned future starts; the
    /// future holds only what it needs while waiting (see `Gateway::handle`).
    pub fn forward<'a>(
        &'a self,
        request: Request<Body>,
        ctx: ForwardContext<'a>,
    ) -> impl Future<Output = Forwarded> + Send + 'a {
        match self.outbound(request, &ctx) {
            Ok(outbound) => Either::Left(self.exchange(outbound, ctx)),
            Err(failure) => Either::Right(std::future::ready(*failure)),
        }
    }

    /// The request as the upstream gets it, with what its answer needs to know.
    fn outbound(
        &self,
        request: Request<Body>,
        ctx: &ForwardContext<'_>,
    ) -> Result<Outbound, Box<Forwarded>> {
        let (mut parts, body) = request.into_parts();
        let upgrade = match Upgrade::detect(&parts) {
            Ok(upgrade) => upgrade,
            Err(refused) => {
                tracing::info!(request_id = %ctx.request_id.to_str().unwrap_or_default(), upgrade = %refused, "upgrade refused: only websocket is tunnelled");
                let detail = format!(
                    "Only WebSocket upgrades are tunnelled through this gateway; this request asked for {refused}."
                );
                return Err(Box::new(self.failure(
                    StatusCode::BAD_REQUEST,
                    "upgrade_not_supported",
                    &detail,
                    ctx,
                )));
            }
        };
        let client_upgrade = match upgrade {
            Upgrade::None => None,
            _ => parts.extensions.remove::<OnUpgrade>(),
        };

        let mut headers = std::mem::take(&mut parts.headers);
        // The host the client asked for: the HTTP/2 `:authority`, else `Host`.
        let original_host = match parts.uri.authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => headers
                .get(header::HOST)
                .filter(|h| h.to_str().is_ok())
                .cloned(),
        };
        let upgrade_protocol = headers.get(header::UPGRADE).cloned();
        remove_hop_by_hop(&mut headers);
        if parts.version == Version::HTTP_2 {
            merge_cookie_headers(&mut headers);
        }
        let host = match &original_host {
            Some(host) if self.preserve_host => host.clone(),
            _ => self.host.clone(),
        };
        set_forwarding_headers(&mut headers, ctx, original_host, self.client_address_only);
        headers.insert(header::HOST, host);

        let mut method = parts.method;
        let mut upstream_body: Body = body;
        match &upgrade {
            Upgrade::None => {}
            Upgrade::Http1 => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(protocol) = upgrade_protocol {
                    headers.insert(header::UPGRADE, protocol);
                }
            }
            Upgrade::H2WebSocket => {
                // RFC 8441: the h2 stream is the tunnel; upstream gets a classic
                // HTTP/1.1 WebSocket handshake with a key of our own.
                method = Method::GET;
                upstream_body = empty_body();
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::SEC_WEBSOCKET_KEY, websocket_key());
                headers
                    .entry(header::SEC_WEBSOCKET_VERSION)
                    .or_insert(HeaderValue::from_static("13"));
            }
        }

        let uri = match self.upstream_uri(parts.uri.path_and_query()) {
            Ok(uri) => uri,
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id.to_str().unwrap_or_default(), error = %e, "cannot build upstream URI");
                return Err(Box::new(self.failure(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "The request target is invalid.",
                    ctx,
                )));
            }
        };
        let mut upstream_request = Request::new(upstream_body);
        *upstream_request.method_mut() = method;
        *upstream_request.uri_mut() = uri;
        *upstream_request.version_mut() = Version::HTTP_11;
        *upstream_request.headers_mut() = headers;
        Ok(Outbound {
            request: upstream_request,
            upgrade,
            client_upgrade,
        })
    }

    /// Sends the request and turns the answer (or its absence) into ours.
    fn exchange<'a>(
        &'a self,
        outbound: Outbound,
        ctx: ForwardContext<'a>,
    ) -> impl Future<Output = Forwarded> + Send + 'a {
        let Outbound {
            request,
            upgrade,
            client_upgrade,
        } = outbound;
        let started = Instant::now();
        // Boxed: the future of a request upstream (~600 B) would otherwise be
        // copied into the timeout and inflate every request's own future.
        let sending = Box::pin(self.pool.send(&self.target, request));
        async move {
            let result = tokio::time::timeout(self.response_timeout, sending).await;
            let upstream_time = started.elapsed();
            let mut response = match result {
                Ok(Ok(response)) => response,
                Ok(Err(UpstreamError::Saturated { waited })) => {
                    tracing::warn!(
                        request_id = %ctx.request_id.to_str().unwrap_or_default(),
                        upstream = %self.name,
                        waited_ms = waited.as_millis() as u64,
                        "no upstream connection free: max_connections reached"
                    );
                    return self.failure(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream_busy",
                        "The service behind this gateway has all its connections busy (max_connections); try again shortly.",
                        &ctx,
                    );
                }
                Ok(Err(UpstreamError::Request(e))) if client_body_failed(&e) => {
                    // Malformed chunked framing, or a body that broke off: the
                    // client's request is at fault, not the upstream.
                    let reason = e.source().map(error_chain).unwrap_or_default();
                    tracing::info!(
                        request_id = %ctx.request_id.to_str().unwrap_or_default(),
                        reason = %reason,
                        "request body could not be read from the client"
                    );
                    let detail = format!("The request body could not be read: {reason}. Send a well-formed body (valid chunked encoding or a correct Content-Length).");
                    return self.failure(
                        StatusCode::BAD_REQUEST,
                        "bad_request_body",
                        &detail,
                        &ctx,
                    );
                }
                Ok(Err(e)) => {
                    let connect = e.is_connect();
                    tracing::warn!(
                        request_id = %ctx.request_id.to_str().unwrap_or_default(),
                        upstream = %self.name,
                        address = %self.authority,
                        error = %error_chain(&e),
                        "upstream request failed"
                    );
                    let detail = if connect {
                        "The console behind this gateway is not reachable right now."
                    } else {
                        "The console behind this gateway closed the connection or sent an invalid response."
                    };
                    return self.failure(
                        StatusCode::BAD_GATEWAY,
                        "upstream_unavailable",
                        detail,
                        &ctx,
                    );
                }
                Err(_elapsed) => {
                    tracing::warn!(
                        request_id = %ctx.request_id.to_str().unwrap_or_default(),
                        upstream = %self.name,
                        address = %self.authority,
                        timeout_ms = self.response_timeout.as_millis() as u64,
                        "upstream did not answer in time"
                    );
                    return self.failure(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream_timeout",
                        "The console behind this gateway did not answer in time.",
                        &ctx,
                    );
                }
            };

            if response.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade != Upgrade::None {
                if let Some(client_upgrade) = client_upgrade {
                    let upstream_upgrade = hyper::upgrade::on(&mut response);
                    // The tunnel keeps the upstream connection's slot under max_connections.
                    let slot = response.extensions_mut().remove::<ConnectionSlot>();
                    self.spawn_tunnel(
                        client_upgrade,
                        upstream_upgrade,
                        slot,
                        ctx.request_id.clone(),
                    );
                    let mut answer = Response::new(empty_body());
                    *answer.headers_mut() = std::mem::take(response.headers_mut());
                    if upgrade == Upgrade::H2WebSocket {
                        // An h2 CONNECT succeeds with 200 and carries no handshake headers.
                        *answer.status_mut() = StatusCode::OK;
                        for name in [
                            header::CONNECTION,
                            header::UPGRADE,
                            header::SEC_WEBSOCKET_ACCEPT,
                        ] {
                            answer.headers_mut().remove(name);
                        }
                    } else {
                        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    }
                    return Forwarded {
                        response: answer,
                        upstream_time: Some(upstream_time),
                    };
                }
            }

            remove_hop_by_hop(response.headers_mut());
            let response = response.map(crate::boxed_body);
            Forwarded {
                response,
                upstream_time: Some(upstream_time),
            }
        }
    }

    /// The request target upstream: origin-form (`/path?query`), as HTTP/1.1 to
    /// an origin server wants it.
    fn upstream_uri(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        Uri::builder()
            .path_and_query(
                path_and_query
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            )
            .build()
    }

    fn failure(
        &self,
        status: StatusCode,
        code: &str,
        detail: &str,
        ctx: &ForwardContext<'_>,
    ) -> Forwarded {
        let request_id = ctx.request_id.to_str().unwrap_or_default();
        // RustDesk clients: 424 Failed Dependency (the request was fine, what it
        // depends on failed) instead of a 5xx they would retry around.
        let status = if ctx.api_client && status.is_server_error() {
            StatusCode::FAILED_DEPENDENCY
        } else {
            status
        };
        let title = status.canonical_reason().unwrap_or("Error");
        Forwarded {
            response: ErrorPage {
                status,
                code,
                title,
                detail,
                request_id,
            }
            .render(ctx.wants_html),
            upstream_time: None,
        }
    }

    fn spawn_tunnel(
        &self,
        client: OnUpgrade,
        upstream: OnUpgrade,
        slot: Option<ConnectionSlot>,
        request_id: HeaderValue,
    ) {
        let close = self.tunnels.close.clone();
        let idle_timeout = self.tunnel_idle_timeout;
        let upstream_name = self.name.clone();
        self.tunnels.tracker.spawn(async move {
            let _slot = slot;
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(request_id = %request_id.to_str().unwrap_or_default(), error = %e, "upgrade did not complete");
                    return;
                }
            };
            let activity = Activity::default();
            let mut client = Watched {
                io: TokioIo::new(client),
                activity: activity.clone(),
            };
            let mut upstream = TokioIo::new(upstream);
            tokio::select! {
                result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Ok((sent, received)) = result {
                        tracing::debug!(request_id = %request_id.to_str().unwrap_or_default(), sent, received, "tunnel closed");
                    }
                }
                _ = activity.idle_for(idle_timeout) => {
                    tracing::info!(request_id = %request_id.to_str().unwrap_or_default(), upstream = %upstream_name,
                        idle_secs = idle_timeout.as_secs_f64(), "tunnel closed: no traffic for tunnel_idle_timeout");
                }
                _ = close.cancelled() => {
                    tracing::info!(request_id = %request_id.to_str().unwrap_or_default(), "tunnel closed at the end of the shutdown grace period");
                }
            }
        });
    }
}

/// When a tunnel last carried a byte, in either direction.
#[derive(Clone)]
struct Activity {
    started: tokio::time::Instant,
    /// Milliseconds after `started`.
    last: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: tokio::time::Instant::now(),
            last: Arc::default(),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Completes once there has been no traffic for `timeout`; never when it is zero.
    async fn idle_for(&self, timeout: Duration) {
        if timeout.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = self.started + last + timeout;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// The client side of a tunnel, noting each read and write in [`Activity`]: every
/// byte through the tunnel is read from or written to the client.
struct Watched<T> {
    io: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    None,
    /// HTTP/1.1 `Connection: upgrade` + `Upgrade: <protocol>`.
    Http1,
    /// HTTP/2 extended CONNECT with `:protocol = websocket` (RFC 8441).
    H2WebSocket,
}

impl Upgrade {
    /// What kind of upgrade the request asks for; Err names one that is refused
    /// (anything but WebSocket, and CONNECT, which a reverse proxy does not tunnel).
    fn detect(parts: &http::request::Parts) -> Result<Self, String> {
        if parts.version == Version::HTTP_2 {
            if parts.method != Method::CONNECT {
                return Ok(Upgrade::None);
            }
            return match parts.extensions.get::<hyper::ext::Protocol>() {
                Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => Ok(Upgrade::H2WebSocket),
                Some(p) => Err(format!("`:protocol {}` (extended CONNECT)", p.as_str())),
                None => Err("a CONNECT tunnel".into()),
            };
        }
        if parts.method == Method::CONNECT {
            return Err("a CONNECT tunnel".into());
        }
        let wants_upgrade = parts.headers.contains_key(header::UPGRADE)
            && connection_tokens(&parts.headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
        if !wants_upgrade {
            return Ok(Upgrade::None);
        }
        let tokens: Vec<&str> = parts
            .headers
            .get_all(header::UPGRADE)
            .iter()
            .map(|v| v.to_str().unwrap_or("(not text)"))
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        match tokens.as_slice() {
            [token] if token.eq_ignore_ascii_case("websocket") => Ok(Upgrade::Http1),
            _ => Err(format!("`Upgrade: {}`", tokens.join(", "))),
        }
    }
}

/// Whether an upstream request failed because the client's body did: hyper
/// reports a body stream's error as the user's, with the server side's own
/// error (malformed chunk framing, a connection closed mid-body) as its source.
fn client_body_failed(error: &hyper::Error) -> bool {
    error.is_user()
        && error
            .source()
            .is_some_and(|source| source.is::<hyper::Error>())
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Headers a client's `Connection` may never remove: what the gateway judged
/// the request by and passes on as it judged it. (Everything the gateway adds
/// itself — identity, assertion, X-Forwarded-*, X-Real-IP, X-Request-Id — is
/// added after [`remove_connection_named`] and is out of reach anyway.)
static JUDGED: [HeaderName; 3] = [header::HOST, header::AUTHORIZATION, header::COOKIE];

/// The first step for every request, before the gateway adds any header:
/// removes the headers the client's `Connection` names (RFC 9110 §7.6.1),
/// except the [`JUDGED`] ones, and leaves in `Connection` only the hop-by-hop
/// tokens it held (`upgrade`, `keep-alive`, …; `Upgrade` detection needs them).
/// A later [`remove_hop_by_hop`] then finds nothing more to remove than
/// hop-by-hop headers — never one the gateway set (the class of Traefik's
/// CVE-2024-45410, where `Connection: X-Forwarded-User` removed the identity).
pub fn remove_connection_named(headers: &mut HeaderMap) {
    let names_nothing = |value: &HeaderValue| {
        let value = value.as_bytes();
        value.eq_ignore_ascii_case(b"keep-alive")
            || value.eq_ignore_ascii_case(b"close")
            || value.eq_ignore_ascii_case(b"upgrade")
    };
    let mut values = headers.get_all(header::CONNECTION).iter();
    if values.all(names_nothing) {
        return;
    }
    let mut kept = String::new();
    let mut named: Vec<HeaderName> = Vec::new();
    for token in connection_tokens(headers) {
        let lower = token.to_ascii_lowercase();
        if lower == "close" || hop_by_hop_index(&lower).is_some() {
            if !kept.is_empty() {
                kept.push_str(", ");
            }
            kept.push_str(&lower);
        } else if let Ok(name) = HeaderName::from_bytes(lower.as_bytes()) {
            if !JUDGED.contains(&name) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    match HeaderValue::from_str(&kept) {
        Ok(value) if !kept.is_empty() => {
            headers.insert(header::CONNECTION, value);
        }
        _ => {
            headers.remove(header::CONNECTION);
        }
    }
}

/// Removes the hop-by-hop headers, including every header named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Hot path: one pass over the names, no allocation; hashed removals only of
    // the names present (upstream answers carry `Connection: keep-alive`).
    let present = headers.keys().fold(0u16, |present, name| {
        match hop_by_hop_index(name.as_str()) {
            Some(i) => present | (1 << i),
            None => present,
        }
    });
    if present == 0 {
        return;
    }
    // Upstream answers carry `Connection: keep-alive` (or `close`), which names
    // no other header: no token parsing for them.
    let names_nothing = |value: &HeaderValue| {
        let value = value.as_bytes();
        value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close")
    };
    if present & 1 != 0
        && !headers
            .get_all(header::CONNECTION)
            .iter()
            .all(names_nothing)
    {
        // Names listed in `Connection`, other than hop-by-hop ones (removed
        // below when present) and `close`, which names no header.
        let known = |t: &str| t == "close" || hop_by_hop_index(t).is_some();
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|token| {
                let mixed_case = token.bytes().any(|b| b.is_ascii_uppercase());
                !(known(token) || mixed_case && known(&token.to_ascii_lowercase()))
            })
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// HTTP/2 may split `cookie` into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
fn merge_cookie_headers(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// X-Forwarded-For/-Proto/-Host, X-Real-IP and X-Request-Id. From a trusted
/// proxy, X-Forwarded-For is appended to and -Proto/-Host are kept; from anyone
/// else all of them (and `Forwarded`) are replaced by what we saw ourselves.
///
/// With `client_address_only` (RustDesk's hbbs/hbbr, which take the first
/// X-Forwarded-For entry unchecked) X-Forwarded-For is just the client address
/// the gateway decided on, never a list a client could have started.
fn set_forwarding_headers(
    headers: &mut HeaderMap,
    ctx: &ForwardContext<'_>,
    host: Option<HeaderValue>,
    client_address_only: bool,
) {
    let client = ctx.client;
    let trusted = client.peer_trusted;
    if client_address_only {
        headers.insert(&X_FORWARDED_FOR, client.client_ip_value.clone());
    }
    // Only a trusted proxy's X-Forwarded-For is looked at (most peers are not).
    let prior = (trusted && !client_address_only)
        .then(|| headers.get(&X_FORWARDED_FOR))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .filter(|prior| !prior.trim().is_empty());
    let xff = match prior {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", client.peer.ip())).ok(),
        None => Some(client.peer_ip_value.clone()),
    };
    if let (Some(value), false) = (xff, client_address_only) {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    if !trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(ctx.scheme));
    }
    if !trusted || !headers.contains_key(&X_FORWARDED_HOST) {
        match host {
            Some(value) => {
                headers.insert(&X_FORWARDED_HOST, value);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    if !trusted {
        headers.remove(header::FORWARDED);
    }
    headers.insert(&X_REAL_IP, client.client_ip_value.clone());
    headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
}

/// The Host header for the upstream itself: its authority, without a port that
/// is the scheme's default.
fn host_header(scheme: &Scheme, authority: &Authority) -> Result<HeaderValue, http::Error> {
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    let host = match authority.port_u16() {
        Some(port) if port != default_port => format!("{}:{port}", authority.host()),
        _ => authority.host().to_string(),
    };
    Ok(HeaderValue::from_str(&host)?)
}

fn websocket_key() -> HeaderValue {
    let mut nonce = [0u8; 16];
    // SystemRandom failing leaves zeros; the key is a handshake nonce, not a secret.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce);
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&key).unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("x-end-to-end", "stays".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-end-to-end"));
    }

    #[test]
    fn every_hop_by_hop_name_knows_its_place() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
    }

    #[test]
    fn connection_tokens_are_matched_whatever_their_case() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            "Keep-Alive, X-Secret-Hop, Close".parse().unwrap(),
        );
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("content-type", "text/html".parse().unwrap());
        remove_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn end_to_end_headers_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "text/html".parse().unwrap());
        h.insert("x-upgrade-hint", "no".parse().unwrap());
        let before = h.clone();
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }
}
