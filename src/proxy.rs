//! The upstream side: a pooled HTTP/1.1 client, the header policy of a reverse
//! proxy (RFC 9110 §7.6.1 hop-by-hop removal, X-Forwarded-*), streaming bodies,
//! and tunnels for upgraded connections (WebSocket over HTTP/1.1 Upgrade, and
//! over HTTP/2 extended CONNECT, RFC 8441, translated to an HTTP/1.1 upgrade).
//!
//! The proxy knows nothing about authentication: the gateway hands it a request
//! whose identity headers are already what they must be.

use std::future::Future;
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::future::Either;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::connection::{
    ClientAddress, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REAL_IP, X_REQUEST_ID,
};
use crate::errors::error_chain;
use crate::pages::ErrorPage;
use crate::tls::{self, TlsError};
use crate::upstream_pool::UpstreamPool;
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
    pool: UpstreamPool,
    /// Where connections go: the upstream's scheme and authority.
    target: Uri,
    /// Host sent upstream unless the client's is preserved.
    host: HeaderValue,
    authority: Authority,
    preserve_host: bool,
    response_timeout: Duration,
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
    pub fn new(settings: &Settings, tunnels: Tunnels) -> Result<Self, TlsError> {
        let cfg = &settings.config.upstream;
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
        let pool = UpstreamPool::new(connector, cfg.pool_max_idle_per_host, cfg.pool_idle_timeout);
        let scheme = settings.upstream.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = settings
            .upstream
            .authority()
            .cloned()
            .ok_or_else(|| TlsError::Pair("upstream.url has no host".into()))?;
        let target = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| TlsError::Pair(format!("upstream.url: {e}")))?;
        let host = host_header(&scheme, &authority)
            .map_err(|e| TlsError::Pair(format!("upstream.url: {e}")))?;
        Ok(Upstream {
            pool,
            target,
            host,
            authority,
            preserve_host: cfg.preserve_host,
            response_timeout: cfg.response_timeout,
            tunnels,
        })
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
        let upgrade = Upgrade::detect(&parts);
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
        set_forwarding_headers(&mut headers, ctx, original_host);
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
                Ok(Err(e)) => {
                    let connect = e.is_connect();
                    tracing::warn!(
                        request_id = %ctx.request_id.to_str().unwrap_or_default(),
                        upstream = %self.authority,
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
                        upstream = %self.authority,
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
                    self.spawn_tunnel(client_upgrade, upstream_upgrade, ctx.request_id.clone());
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

    fn spawn_tunnel(&self, client: OnUpgrade, upstream: OnUpgrade, request_id: HeaderValue) {
        let close = self.tunnels.close.clone();
        self.tunnels.tracker.spawn(async move {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(request_id = %request_id.to_str().unwrap_or_default(), error = %e, "upgrade did not complete");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            tokio::select! {
                result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Ok((sent, received)) = result {
                        tracing::debug!(request_id = %request_id.to_str().unwrap_or_default(), sent, received, "tunnel closed");
                    }
                }
                _ = close.cancelled() => {
                    tracing::info!(request_id = %request_id.to_str().unwrap_or_default(), "tunnel closed at the end of the shutdown grace period");
                }
            }
        });
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
    fn detect(parts: &http::request::Parts) -> Self {
        if parts.version == Version::HTTP_2 {
            let websocket = parts.method == Method::CONNECT
                && parts
                    .extensions
                    .get::<hyper::ext::Protocol>()
                    .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
            return if websocket {
                Upgrade::H2WebSocket
            } else {
                Upgrade::None
            };
        }
        let wants_upgrade = parts.headers.contains_key(header::UPGRADE)
            && connection_tokens(&parts.headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
        if wants_upgrade {
            Upgrade::Http1
        } else {
            Upgrade::None
        }
    }
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
fn set_forwarding_headers(
    headers: &mut HeaderMap,
    ctx: &ForwardContext<'_>,
    host: Option<HeaderValue>,
) {
    let client = ctx.client;
    let trusted = client.peer_trusted;
    // Only a trusted proxy's X-Forwarded-For is looked at (most peers are not).
    let prior = trusted
        .then(|| headers.get(&X_FORWARDED_FOR))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .filter(|prior| !prior.trim().is_empty());
    let xff = match prior {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", client.peer.ip())).ok(),
        None => Some(client.peer_ip_value.clone()),
    };
    if let Some(value) = xff {
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
