//! The request pipeline. Each request is classified once into a [`Decision`]:
//! the gateway answers it itself, or it is forwarded upstream.
//!
//! ```text
//!   1. health     GET/HEAD /healthz, /readyz (exact path)   → answer
//!   2. (sign-in steps slot in here: callback, /.gateway/*, public routes, session)
//!   3. forward    strip spoofable identity headers          → upstream
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::config::Settings;
use crate::health::{self, Readiness};
use crate::identity;
use crate::pages;
use crate::proxy::{ClientAddress, ForwardContext, Tunnels, Upstream, X_REQUEST_ID};
use crate::telemetry::{AccessLogBody, AccessRecord};
use crate::tls::TlsError;
use crate::Body;

/// What the pipeline decided for one request.
pub enum Decision {
    /// The gateway answers by itself.
    Respond(Response<Body>),
    /// Send it upstream.
    Forward,
}

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// "https" for the TLS listener.
    pub scheme: &'static str,
}

pub struct Gateway {
    settings: Arc<Settings>,
    readiness: Readiness,
    upstream: Upstream,
    request_ids: RequestIds,
}

impl Gateway {
    pub fn new(
        settings: Arc<Settings>,
        readiness: Readiness,
        tunnels: Tunnels,
    ) -> Result<Self, TlsError> {
        let upstream = Upstream::new(&settings, tunnels)?;
        Ok(Gateway {
            settings,
            readiness,
            upstream,
            request_ids: RequestIds::new(),
        })
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Runs one request through the pipeline.
    pub async fn handle(
        &self,
        mut request: Request<Incoming>,
        conn: ConnectionInfo,
    ) -> Response<AccessLogBody> {
        let started = Instant::now();
        let client =
            ClientAddress::resolve(conn.peer, request.headers(), &self.settings.trusted_proxies);
        let request_id = self
            .request_ids
            .for_request(request.headers(), client.peer_trusted);
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let quiet = health::is_health_path(&path);

        // Every request, whatever happens next: no client may speak for the gateway.
        let spoofed = identity::strip_identity_headers(request.headers_mut());
        if spoofed > 0 {
            tracing::warn!(request_id = ?request_id, client = %client.client_ip, headers = spoofed,
                "removed identity headers sent by the client");
        }

        let (mut response, upstream_time) = match self.classify(&request) {
            Decision::Respond(response) => (response, None),
            Decision::Forward => {
                let ctx = ForwardContext {
                    request_id: &request_id,
                    client: &client,
                    scheme: conn.scheme,
                    wants_html: pages::wants_html(request.headers()),
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
    fn classify(&self, request: &Request<Incoming>) -> Decision {
        if let Some(answer) =
            health::answer(request.method(), request.uri().path(), &self.readiness)
        {
            return Decision::Respond(answer);
        }
        Decision::Forward
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
