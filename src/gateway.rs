//! The request pipeline. Each request is classified once into a [`Decision`]:
//! the gateway answers it itself, or it is forwarded upstream.
//!
//! ```text
//!   1. health     GET/HEAD /healthz, /readyz (exact path)         → answer
//!   2. callback   /api/oidc/callback with a state we issued       → finish login, 303
//!                 … with a state we never issued                  → reject
//!   3. gateway    /.gateway/{sign_in,sign_out,me}                 → answer
//!   4. session    live session cookie                             → forward with identity
//!   5. anonymous  browser navigation → 302 to the IdP; others     → 401 JSON
//! ```
//! Before any step, identity headers sent by the client are removed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::health::{self, Readiness};
use crate::oidc::{Auth, AuthInitError, CallbackOutcome, RequestFacts};
use crate::pages;
use crate::proxy::{ClientAddress, ForwardContext, Tunnels, Upstream, X_REQUEST_ID};
use crate::session::cookies::strip_gateway_cookies;
use crate::session::Session;
use crate::telemetry::{AccessLogBody, AccessRecord};
use crate::tls::TlsError;
use crate::Body;

/// What the pipeline decided for one request.
pub enum Decision {
    /// The gateway answers by itself.
    Respond(Response<Body>),
    /// Send it upstream, with the session's identity when there is one.
    Forward(Request<Body>, Option<Arc<Session>>),
}

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// "https" for the TLS listener.
    pub scheme: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayInitError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Auth(#[from] AuthInitError),
}

pub struct Gateway {
    settings: Arc<Settings>,
    readiness: Readiness,
    upstream: Upstream,
    auth: Auth,
    request_ids: RequestIds,
}

impl Gateway {
    pub fn new(
        settings: Arc<Settings>,
        readiness: Readiness,
        tunnels: Tunnels,
    ) -> Result<Self, GatewayInitError> {
        let upstream = Upstream::new(&settings, tunnels)?;
        let auth = Auth::new(settings.clone(), readiness.clone())?;
        Ok(Gateway {
            settings,
            readiness,
            upstream,
            auth,
            request_ids: RequestIds::new(),
        })
    }

    /// Starts background work (IdP metadata refresh, session sweeping) until `stop`.
    pub fn spawn_background(&self, stop: CancellationToken) {
        self.auth.spawn_background(stop);
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Runs one request through the pipeline.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        conn: ConnectionInfo,
    ) -> Response<AccessLogBody> {
        let started = Instant::now();
        let mut request = request.map(crate::boxed_body);
        let client =
            ClientAddress::resolve(conn.peer, request.headers(), &self.settings.trusted_proxies);
        let request_id = self
            .request_ids
            .for_request(request.headers(), client.peer_trusted);
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let quiet = health::is_health_path(&path);

        // Every request, whatever happens next: no client may speak for the gateway.
        let spoofed = self.auth.headers.strip(request.headers_mut());
        if spoofed > 0 {
            tracing::warn!(request_id = %request_id.to_str().unwrap_or_default(), client = %client.client_ip, headers = spoofed,
                "removed identity headers sent by the client");
        }

        let wants_html = pages::wants_html(request.headers());
        let facts = RequestFacts {
            client: &client,
            request_id: request_id.to_str().unwrap_or_default(),
            wants_html,
        };
        let (mut response, upstream_time) = match self.classify(request, &facts).await {
            Decision::Respond(response) => (response, None),
            Decision::Forward(mut request, session) => {
                self.prepare_upstream_request(&mut request, session.as_deref());
                let ctx = ForwardContext {
                    request_id: &request_id,
                    client: &client,
                    scheme: conn.scheme,
                    wants_html,
                };
                let forwarded = self.upstream.forward(request, &ctx).await;
                (forwarded.response, forwarded.upstream_time)
            }
        };
        response
            .headers_mut()
            .insert(&X_REQUEST_ID, request_id.clone());
        let record = AccessRecord {
            request_id: request_id.to_str().unwrap_or_default().to_owned(),
            client: client.client_ip,
            method,
            path,
            status: response.status(),
            started,
            upstream: upstream_time,
            quiet,
        };
        response.map(|body| AccessLogBody::new(body, record))
    }

    /// The decision steps, in order. The first that answers wins.
    async fn classify(&self, request: Request<Body>, facts: &RequestFacts<'_>) -> Decision {
        let path = request.uri().path();
        if let Some(answer) = health::answer(request.method(), path, &self.readiness) {
            return Decision::Respond(answer);
        }
        if path == self.auth.callback_path() {
            return match self.auth.callback(request, facts).await {
                CallbackOutcome::Done(response) => Decision::Respond(response),
                CallbackOutcome::NotOurs(_request) => {
                    Decision::Respond(self.auth.foreign_callback(facts))
                }
            };
        }
        if let Some(endpoint) = path
            .strip_prefix(self.settings.config.gateway.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
        {
            return Decision::Respond(
                self.gateway_endpoint(endpoint, request.uri(), request.headers(), facts)
                    .await,
            );
        }
        match self.auth.session(request.headers()).await {
            Some(session) => Decision::Forward(request, Some(session)),
            None => Decision::Respond(self.auth.unauthenticated(
                request.method(),
                request.uri(),
                request.headers(),
                facts,
            )),
        }
    }

    async fn gateway_endpoint(
        &self,
        endpoint: &str,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        match endpoint {
            "sign_in" => self.auth.sign_in(uri, headers, facts),
            "sign_out" => self.auth.sign_out(headers, facts).await,
            "me" => {
                let session = self.auth.session(headers).await;
                self.auth.me(session.as_deref(), facts)
            }
            _ => pages::json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "not_found", "message": "no such gateway endpoint", "request_id": facts.request_id}),
            ),
        }
    }

    /// Upstream sees the session's identity and none of the gateway's cookies.
    fn prepare_upstream_request(&self, request: &mut Request<Body>, session: Option<&Session>) {
        let headers = request.headers_mut();
        strip_gateway_cookies(headers);
        if let Some(session) = session {
            self.auth.headers.insert(headers, &session.identity);
            if self.settings.config.headers.pass_access_token {
                if let Some(value) = session
                    .access_token
                    .as_deref()
                    .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
                {
                    headers.insert(AUTHORIZATION, value);
                }
            }
        }
    }
}

/// Request ids: kept from a trusted proxy when well-formed, otherwise
/// `<random process prefix>-<counter>` (unique, cheap, not guessable across restarts).
struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let mut bytes = [0u8; 4];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        RequestIds {
            prefix: u32::from_be_bytes(bytes),
            counter: AtomicU64::new(0),
        }
    }

    fn for_request(&self, headers: &http::HeaderMap, trusted: bool) -> HeaderValue {
        if trusted {
            if let Some(id) = headers
                .get(&X_REQUEST_ID)
                .filter(|v| is_valid_request_id(v.as_bytes()))
            {
                return id.clone();
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:08x}-{n:x}", self.prefix))
            .unwrap_or(HeaderValue::from_static("unknown"))
    }
}

fn is_valid_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}
