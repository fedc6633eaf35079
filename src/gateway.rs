//! The request pipeline. Each request is classified once into a [`Decision`]:
//! the gateway answers it itself, or it is forwarded upstream.
//!
//! ```text
//!   1. health     GET/HEAD /healthz, /readyz (exact path)          → answer
//!   2. callback   /api/oidc/callback with a state we issued        → finish login, 303
//!                 … with a state we never issued                   → reject, or to the console (rustdesk)
//!   3. gateway    /.gateway/{sign_in,sign_out,me,auth,jwks.json,
//!                 frontchannel_logout}                              → answer
//!   4. route      normalized path → public / sign-in (+rules) / deny (400 on a confusing path)
//!   5. public     forward without identity
//!   6. caller     session cookie, or Authorization: Bearer (when enabled)
//!                 … passes the rules → forward with identity + signed assertion
//!                 … fails them       → 403 page naming the user (never a loop)
//!   7. anonymous  browser navigation → 302 to the IdP; others      → 401 JSON
//! ```
//! Before any step, identity headers sent by the client are removed. A request
//! to forward then passes one more step, [`Gateway::upstream_peer`]: the route's
//! upstream is chosen (pingora's `upstream_peer`), and the request is prepared
//! for it (identity, an assertion whose `aud` is that upstream's origin).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use futures_util::future::Either;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::access::{forbidden_page, AccessPolicy, Denial, Requirement};
use crate::assertion::{AssertionError, AssertionSigner};
use crate::config::{Settings, UpstreamId};
use crate::connection::{ClientAddress, ConnectionInfo, X_REQUEST_ID};
use crate::health::{self, Readiness};
use crate::identity::{Identity, IdentityHeaders};
use crate::metrics::{self, RouteKind};
use crate::oidc::token::TokenError;
use crate::oidc::{
    Auth, AuthInitError, CallbackOutcome, RequestFacts, SessionLookup, SessionUnavailable,
};
use crate::pages;
use crate::pages::ErrorPage;
use crate::proxy::{ForwardContext, Forwarded, Tunnels, Upstream};
use crate::routes;
use crate::session::cookies::{drop_gateway_set_cookies, strip_gateway_cookies, SessionKeyMemo};
use crate::session::store::StoreInitError;
use crate::session::unix_now;
use crate::session::{Session, SessionStore};
use crate::telemetry::{AccessLogBody, AccessRecord};
use crate::tls::TlsError;
use crate::Body;

/// What the pipeline decided for one request.
pub enum Decision {
    /// The gateway answers by itself.
    Respond(Response<Body>),
    /// Send it upstream.
    Forward(Request<Body>, Forwarding),
}

/// How a forwarded request is sent.
pub struct Forwarding {
    /// Who is calling (None: a public route).
    pub caller: Option<Caller>,
    /// Answers the gateway makes on this path are JSON and never 5xx.
    pub api_client: bool,
    /// The upstream the matched route forwards to.
    pub upstream: UpstreamId,
}

/// An authenticated caller: a browser session or a bearer token.
pub struct Caller {
    pub identity: Arc<Identity>,
    pub session: Option<Arc<Session>>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayInitError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Auth(#[from] AuthInitError),
    #[error(transparent)]
    Assertion(#[from] AssertionError),
    #[error(transparent)]
    SessionStore(#[from] StoreInitError),
}

/// One worker's gateway: its own upstream connection pools (one per upstream),
/// and the state every worker shares (sessions, keys, rules, readiness) behind `Arc`s.
pub struct Gateway {
    /// The settings the gateway started with (what a reload leaves alone).
    settings: Arc<Settings>,
    readiness: Readiness,
    /// What a configuration reload replaces; each request takes one snapshot.
    routing: ArcSwap<Routing>,
    /// For building this worker's upstreams again at a reload.
    tunnels: Tunnels,
    auth: Arc<Auth>,
    assertion: Option<Arc<AssertionSigner>>,
    request_ids: Arc<RequestIds>,
    /// `Strict-Transport-Security` for the gateway's own answers (None: the
    /// certificate is self-signed, or `server.hsts_max_age = 0`).
    hsts: Option<HeaderValue>,
    /// `server.public_url`'s host and port: the only host requests may name.
    public_host: Option<Arc<PublicHost>>,
}

impl Gateway {
    pub fn new(
        settings: Arc<Settings>,
        readiness: Readiness,
        tunnels: Tunnels,
    ) -> Result<Self, GatewayInitError> {
        let routing = Routing::new(settings.clone(), &tunnels)?;
        // The store is chosen by configuration and handed to the sign-in code.
        let store = crate::session::open_store(&settings, &readiness)?;
        let auth = Auth::new(settings.clone(), readiness.clone(), store)?;
        let assertion = match settings.config.assertion.enabled {
            true => Some(AssertionSigner::new(&settings)?),
            false => None,
        };
        let hsts = hsts_header(&settings);
        let public_host = settings
            .public_url
            .as_ref()
            .and_then(PublicHost::new)
            .map(Arc::new);
        Ok(Gateway {
            hsts,
            public_host,
            settings,
            readiness,
            routing: ArcSwap::from_pointee(routing),
            tunnels,
            auth: Arc::new(auth),
            assertion: assertion.map(Arc::new),
            request_ids: Arc::new(RequestIds::new()),
        })
    }

    /// A gateway for another worker thread: the same shared state, its own
    /// upstream pool (whose connections then live on that worker's runtime).
    pub fn for_worker(&self, tunnels: Tunnels) -> Result<Self, GatewayInitError> {
        let current = self.routing.load();
        Ok(Gateway {
            settings: self.settings.clone(),
            readiness: self.readiness.clone(),
            routing: ArcSwap::from_pointee(Routing::new(current.settings.clone(), &tunnels)?),
            tunnels,
            auth: self.auth.clone(),
            assertion: self.assertion.clone(),
            request_ids: self.request_ids.clone(),
            hsts: self.hsts.clone(),
            public_host: self.public_host.clone(),
        })
    }

    /// This worker's routing for reloaded `settings` (its own upstream pools),
    /// ready to [`Gateway::install`]. Built for every worker before any is
    /// installed, so that a reload applies everywhere or nowhere.
    pub fn prepare(&self, settings: Arc<Settings>) -> Result<Routing, GatewayInitError> {
        Ok(Routing::new(settings, &self.tunnels)?)
    }

    /// New requests are judged and forwarded by `routing`; requests in flight
    /// finish with the snapshot they took.
    pub fn install(&self, routing: Routing) {
        self.routing.store(Arc::new(routing));
    }

    /// Starts background work (IdP metadata refresh, session sweeping) until `stop`.
    pub fn spawn_background(&self, stop: CancellationToken) {
        self.auth.spawn_background(stop);
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The session store (shared by every worker).
    pub fn sessions(&self) -> Arc<dyn SessionStore> {
        self.auth.store().clone()
    }

    /// Runs one request through the pipeline.
    ///
    /// A plain function returning an `async move` block, not an `async fn`: an
    /// async fn keeps its arguments twice (captured, then moved into locals),
    /// and every byte of a request's future is copied into its allocation when
    /// the request starts. Work that needs no waiting is done here, before it.
    pub fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        conn: ConnectionInfo,
    ) -> impl Future<Output = Response<AccessLogBody>> + Send + 'static {
        let started = Instant::now();
        let mut request = request.map(crate::boxed_body);
        let client =
            ClientAddress::resolve(&conn, request.headers(), &self.settings.trusted_proxies);
        let request_id = self
            .request_ids
            .for_request(request.headers(), client.peer_trusted);
        let method = request.method().clone();
        let quiet = health::is_health_path(request.uri().path());
        // The access line's path is copied only when the line will be written.
        let logged = if quiet {
            tracing::enabled!(target: "access", tracing::Level::DEBUG)
        } else {
            tracing::enabled!(target: "access", tracing::Level::INFO)
        };
        let path = logged.then(|| request.uri().path().to_owned());

        // Hop-by-hop removal comes before the gateway adds anything, so that a
        // client's `Connection` cannot name a header the gateway sets.
        crate::proxy::remove_connection_named(request.headers_mut());
        // One configuration for the whole request, even if a reload lands meanwhile.
        let routing = self.routing.load_full();
        // Every request, whatever happens next: no client may speak for the gateway.
        let spoofed = routing.headers.strip(request.headers_mut());
        if spoofed > 0 {
            tracing::warn!(request_id = %request_id.to_str().unwrap_or_default(), client = %client.client_ip, headers = spoofed,
                "removed identity headers sent by the client");
        }
        let wants_html = pages::wants_html(request.headers());
        let gateway = Arc::clone(self);

        async move {
            let facts = RequestFacts {
                client: &client,
                request_id: request_id.to_str().unwrap_or_default(),
                wants_html,
                session_keys: &conn.session_keys,
            };
            // The decision's block ends before the upstream wait, so the future
            // does not keep the decision (and a copy of the request) meanwhile.
            let mut upstream_slot = None;
            let (route, pending) = {
                let (route, decision) = gateway.classify(&routing, request, &facts).await;
                let pending = match decision {
                    Decision::Respond(response) => Either::Right(std::future::ready(Forwarded {
                        response,
                        upstream_time: None,
                    })),
                    Decision::Forward(mut request, forwarding) => {
                        let upstream = routing.upstream_peer(&forwarding);
                        upstream_slot = Some(upstream.metrics_slot());
                        routing.prepare_upstream_request(
                            gateway.assertion.as_deref(),
                            &mut request,
                            forwarding.caller.as_ref(),
                            upstream,
                        );
                        let ctx = ForwardContext {
                            request_id: &request_id,
                            client: &client,
                            scheme: conn.scheme,
                            wants_html: wants_html && !forwarding.api_client,
                            api_client: forwarding.api_client,
                        };
                        Either::Left(upstream.forward(request, ctx))
                    }
                };
                (route, pending)
            };
            let Forwarded {
                mut response,
                upstream_time,
            } = pending.await;
            if metrics::enabled() {
                metrics::request(route, response.status(), started.elapsed());
                if let Some(slot) = upstream_slot {
                    metrics::upstream(slot, response.status(), upstream_time);
                }
            }
            let record = path.map(|path| AccessRecord {
                request_id: request_id.clone(),
                client: client.client_ip,
                method,
                path,
                status: response.status(),
                started,
                upstream: upstream_time,
                quiet,
            });
            if upstream_time.is_none() {
                // The gateway's own answer (a page, a redirect, a 502/504).
                pages::add_security_headers(response.headers_mut(), gateway.hsts.as_ref());
            } else {
                let dropped = drop_gateway_set_cookies(response.headers_mut());
                if dropped > 0 {
                    tracing::warn!(request_id = %request_id.to_str().unwrap_or_default(), cookies = dropped,
                        "dropped the upstream's Set-Cookie for the gateway's own cookie names");
                }
            }
            response.headers_mut().insert(&X_REQUEST_ID, request_id);
            response.map(|body| AccessLogBody::new(body, record))
        }
    }

    /// The decision steps, in order. The first that answers wins; the route
    /// kind says which (for the metrics). (An `async move` block rather than an
    /// `async fn`, for the reason given at `handle`.)
    #[allow(clippy::manual_async_fn)]
    fn classify<'a>(
        &'a self,
        routing: &'a Routing,
        request: Request<Body>,
        facts: &'a RequestFacts<'a>,
    ) -> impl Future<Output = (RouteKind, Decision)> + Send + 'a {
        async move {
            if routes::is_case_variant_of_standard_method(request.method()) {
                return (
                    RouteKind::Refused,
                    Decision::Respond(bad_method(request.method(), facts)),
                );
            }
            let path = request.uri().path();
            let insider = facts.client.peer_trusted || facts.client.peer.ip().is_loopback();
            if let Some(answer) = health::answer(request.method(), path, &self.readiness, insider) {
                return (RouteKind::Health, Decision::Respond(answer));
            }
            // Forward-auth subrequests of a trusted proxy name the gateway's own
            // address; the host they judge is the original request's.
            let forward_auth = facts.client.peer_trusted
                && path.strip_prefix(self.settings.config.gateway.prefix.as_str()) == Some("/auth");
            if let Some(public) = self.public_host.as_ref().filter(|_| !forward_auth) {
                if let Err(why) = public.check(request.uri(), request.headers(), facts.client) {
                    return (
                        RouteKind::Refused,
                        Decision::Respond(misdirected(public, why, facts)),
                    );
                }
            }
            if path == self.auth.callback_path() {
                // Box::pin: the login paths' futures are large (token request, JWKS);
                // boxing them keeps every request's future small, and every request's
                // future is copied into its stream (HTTP/2) or connection state.
                let decision = match Box::pin(self.auth.callback(request, facts)).await {
                    CallbackOutcome::Done(response) => Decision::Respond(response),
                    CallbackOutcome::NotOurs(request) if routing.forwards_foreign_callbacks() => {
                        tracing::debug!(request_id = %facts.request_id, "callback with a foreign state: to the console");
                        Decision::Forward(
                            request,
                            Forwarding {
                                caller: None,
                                api_client: true,
                                // RustDesk's own OIDC login is the console's.
                                upstream: 0,
                            },
                        )
                    }
                    CallbackOutcome::NotOurs(_) => {
                        Decision::Respond(self.auth.foreign_callback(facts))
                    }
                };
                return (RouteKind::Callback, decision);
            }
            if let Some(endpoint) = path
                .strip_prefix(self.settings.config.gateway.prefix.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
            {
                let answer = Box::pin(self.gateway_endpoint(
                    routing,
                    endpoint,
                    request.method(),
                    request.uri(),
                    request.headers(),
                    facts,
                ))
                .await;
                return (RouteKind::Gateway, Decision::Respond(answer));
            }
            let authorization = self
                .authorize(routing, request.method(), path, request.headers(), facts)
                .await;
            match authorization {
                Authorization::Public {
                    api_client,
                    upstream,
                } => (
                    RouteKind::Public,
                    Decision::Forward(
                        request,
                        Forwarding {
                            caller: None,
                            api_client,
                            upstream,
                        },
                    ),
                ),
                Authorization::Allowed(caller, upstream) => (
                    RouteKind::Authenticated,
                    Decision::Forward(
                        request,
                        Forwarding {
                            caller: Some(caller),
                            api_client: false,
                            upstream,
                        },
                    ),
                ),
                Authorization::Refused(response) => {
                    (RouteKind::Refused, Decision::Respond(response))
                }
                Authorization::Anonymous => (
                    RouteKind::Anonymous,
                    Decision::Respond(self.auth.unauthenticated(
                        request.method(),
                        request.uri(),
                        request.headers(),
                        facts,
                    )),
                ),
            }
        }
    }

    /// The access step, shared by the pipeline and forward-auth: the normalized
    /// path picks a route, the route says public / sign-in (+ rules) / deny, and
    /// a signed-in caller is checked against the rules. Only what an anonymous
    /// caller gets differs between the two (a login redirect vs. a 401 naming
    /// the login URL), so that is left to the caller of this step.
    async fn authorize(
        &self,
        routing: &Routing,
        method: &Method,
        path: &str,
        headers: &http::HeaderMap,
        facts: &RequestFacts<'_>,
    ) -> Authorization {
        let normalized = match routes::normalize(path) {
            Ok(normalized) => normalized,
            Err(e) => return Authorization::Refused(bad_path(&e, facts)),
        };
        if routing.access.has_method_rules_for(&normalized)
            && routes::METHOD_OVERRIDE_HEADERS
                .iter()
                .any(|name| headers.contains_key(name))
        {
            // The method judged must be the method the upstream runs.
            return Authorization::Refused(method_override_refused(facts));
        }
        let (extra, upstream) = match routing.access.requirement(method, &normalized) {
            Requirement::Public {
                api_client,
                upstream,
            } => {
                return Authorization::Public {
                    api_client,
                    upstream,
                }
            }
            Requirement::Deny => {
                return Authorization::Refused(self.forbidden(None, &Denial::Route, facts))
            }
            Requirement::SignIn { extra, upstream } => (extra, upstream),
        };
        match self.caller(headers, facts.session_keys).await {
            CallerLookup::Found(caller) => {
                match routing.access.check(&caller.identity, extra.as_deref()) {
                    Ok(()) => Authorization::Allowed(caller, upstream),
                    Err(denial) => {
                        tracing::info!(request_id = %facts.request_id, user = %caller.identity.user, reason = ?denial, "access denied");
                        Authorization::Refused(self.forbidden(
                            Some(&caller.identity),
                            &denial,
                            facts,
                        ))
                    }
                }
            }
            CallerLookup::BadBearer(e) => Authorization::Refused(invalid_bearer(&e, facts)),
            CallerLookup::StoreUnavailable(e) => {
                Authorization::Refused(self.auth.session_unavailable(&e, facts))
            }
            CallerLookup::Anonymous => Authorization::Anonymous,
        }
    }

    /// The caller: a live session, else a bearer token (when enabled).
    async fn caller(&self, headers: &http::HeaderMap, keys: &SessionKeyMemo) -> CallerLookup {
        let unavailable = match self.auth.session(headers, keys).await {
            SessionLookup::Live(session) => {
                return CallerLookup::Found(Caller {
                    identity: session.identity().clone(),
                    session: Some(session),
                })
            }
            SessionLookup::None => None,
            SessionLookup::Unavailable(e) => Some(e),
        };
        // Boxed like the login paths: a JWKS refresh may happen in there.
        match Box::pin(self.auth.bearer_identity(headers)).await {
            Some(Ok(identity)) => CallerLookup::Found(Caller {
                identity: Arc::new(identity),
                session: None,
            }),
            Some(Err(e)) => CallerLookup::BadBearer(e),
            // A cookie the store could not look up: not anonymous (no login redirect).
            None => match unavailable {
                Some(e) => CallerLookup::StoreUnavailable(e),
                None => CallerLookup::Anonymous,
            },
        }
    }

    fn forbidden(
        &self,
        identity: Option<&Identity>,
        denial: &Denial,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        let sign_out = format!("{}/sign_out", self.settings.config.gateway.prefix);
        if !facts.wants_html {
            return pages::json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({
                    "error": "forbidden",
                    "reason": denial.code(),
                    "message": denial.explain(),
                    "user": identity.map(|i| i.user.as_str()),
                    "sign_out_url": sign_out,
                    "request_id": facts.request_id,
                }),
            );
        }
        pages::html(
            StatusCode::FORBIDDEN,
            forbidden_page(identity, denial, &sign_out, facts.request_id),
        )
    }

    async fn gateway_endpoint(
        &self,
        routing: &Routing,
        endpoint: &str,
        method: &Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        match endpoint {
            "sign_in" => self.auth.sign_in(uri, headers, facts),
            "sign_out" => self.auth.sign_out(method, uri, headers, facts).await,
            "me" => match self.auth.session(headers, facts.session_keys).await {
                SessionLookup::Live(session) => self.auth.me(Some(&session), facts),
                SessionLookup::None => self.auth.me(None, facts),
                SessionLookup::Unavailable(e) => self.auth.session_unavailable(&e, facts),
            },
            "auth" => self.forward_auth(routing, headers, facts).await,
            "frontchannel_logout" => self.auth.frontchannel_logout(method, uri, facts).await,
            "jwks.json" => match &self.assertion {
                Some(signer) => {
                    let mut response = Response::new(crate::full_body(signer.jwks()));
                    let h = response.headers_mut();
                    h.insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/jwk-set+json"),
                    );
                    h.insert(
                        CACHE_CONTROL,
                        HeaderValue::from_static("public, max-age=300"),
                    );
                    response
                }
                None => not_found(facts),
            },
            _ => not_found(facts),
        }
    }

    /// `/.gateway/auth` for nginx auth_request, Traefik forwardAuth, Caddy
    /// forward_auth: 202 + X-Auth-Request-* when the caller may pass, 401 when
    /// anonymous, 403 when denied. The original method and URI are read from
    /// X-Forwarded-Method / X-Original-URI / X-Forwarded-Uri only when the peer
    /// is a trusted proxy; otherwise the request is judged as `GET /`.
    async fn forward_auth(
        &self,
        routing: &Routing,
        headers: &http::HeaderMap,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (method, target) = if facts.client.peer_trusted {
            let method = header("x-forwarded-method")
                .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
                .unwrap_or(Method::GET);
            if routes::is_case_variant_of_standard_method(&method) {
                return bad_method(&method, facts);
            }
            // nginx sets X-Original-URI, Traefik and Caddy X-Forwarded-Uri — and may pass
            // the other one through from the client. Two different answers: refuse.
            let target = match (header("x-original-uri"), header("x-forwarded-uri")) {
                (Some(a), Some(b)) if a != b => {
                    tracing::warn!(request_id = %facts.request_id, "forward-auth: X-Original-URI and X-Forwarded-Uri disagree");
                    return ErrorPage {
                        status: StatusCode::BAD_REQUEST,
                        code: "conflicting_original_uri",
                        title: "Bad request",
                        detail: "X-Original-URI and X-Forwarded-Uri name different targets; the proxy must send one (and drop the client's).",
                        request_id: facts.request_id,
                    }
                    .render(false);
                }
                (Some(uri), _) | (None, Some(uri)) => uri,
                (None, None) => "/",
            };
            (method, target.to_string())
        } else {
            (Method::GET, "/".to_string())
        };
        let path = target.split(['?', '#']).next().unwrap_or("/");
        let caller = match self.authorize(routing, &method, path, headers, facts).await {
            Authorization::Public { .. } => return status_only(StatusCode::ACCEPTED),
            Authorization::Allowed(caller, _) => caller,
            Authorization::Refused(response) => return response,
            Authorization::Anonymous => {
                // Where a browser should go to sign in (proxies that cannot redirect
                // by themselves show this body).
                let login_url = format!(
                    "{}/sign_in?rd={}",
                    self.settings.config.gateway.prefix,
                    url::form_urlencoded::byte_serialize(oidc_return_to(&target).as_bytes())
                        .collect::<String>()
                );
                return pages::json(
                    StatusCode::UNAUTHORIZED,
                    &serde_json::json!({"error": "unauthenticated", "login_url": login_url, "request_id": facts.request_id}),
                );
            }
        };
        let mut response = status_only(StatusCode::ACCEPTED);
        let out = response.headers_mut();
        let identity = &caller.identity;
        identity
            .header_values()
            .insert_into(out, AUTH_REQUEST_HEADERS.each_ref());
        if let Some(signer) = &self.assertion {
            // For the console: what forward-auth guards sits in front of it.
            let audience = routing.upstreams[0].origin();
            let cache = caller.session.as_ref().map(|s| &s.assertion);
            if let Some(value) = signer.assertion(identity, audience, unix_now(), cache) {
                out.insert(signer.header_name().clone(), value);
            }
        }
        response
    }
}

/// What a configuration reload replaces, as one unit: the settings it came
/// from, the routes and access rules, this worker's upstreams (their pools) and
/// the identity headers. A request takes one snapshot when it starts and is
/// judged and forwarded by it to the end.
pub struct Routing {
    settings: Arc<Settings>,
    /// By [`UpstreamId`]: the default upstream first (see `Settings::upstreams`).
    upstreams: Vec<Upstream>,
    access: AccessPolicy,
    headers: IdentityHeaders,
}

impl Routing {
    fn new(settings: Arc<Settings>, tunnels: &Tunnels) -> Result<Self, TlsError> {
        let config = &settings.config;
        Ok(Routing {
            upstreams: Upstream::all(&settings, tunnels)?,
            access: AccessPolicy::new(&settings),
            headers: IdentityHeaders::new(&config.headers, &[config.assertion.header.as_str()]),
            settings,
        })
    }

    fn forwards_foreign_callbacks(&self) -> bool {
        let rustdesk = &self.settings.config.rustdesk;
        rustdesk.enabled && rustdesk.forward_foreign_callbacks
    }

    /// The upstream step: where a forwarded request goes (its route's upstream).
    fn upstream_peer(&self, forwarding: &Forwarding) -> &Upstream {
        // Routes only hold ids of configured upstreams; the default is the fallback.
        self.upstreams
            .get(forwarding.upstream)
            .unwrap_or(&self.upstreams[0])
    }

    /// Upstream sees the caller's identity (and its signed assertion) and none
    /// of the gateway's cookies.
    fn prepare_upstream_request(
        &self,
        assertion: Option<&AssertionSigner>,
        request: &mut Request<Body>,
        caller: Option<&Caller>,
        upstream: &Upstream,
    ) {
        let headers = request.headers_mut();
        // Room for what the gateway adds (identity, assertion, token, forwarding
        // headers, Host) in one allocation rather than a rehash every few inserts.
        headers.reserve(12);
        strip_gateway_cookies(headers);
        let Some(caller) = caller else { return };
        self.headers.insert(headers, &caller.identity);
        if let Some(signer) = assertion {
            let cache = caller.session.as_ref().map(|s| &s.assertion);
            if let Some(value) =
                signer.assertion(&caller.identity, upstream.origin(), unix_now(), cache)
            {
                headers.insert(signer.header_name().clone(), value);
            }
        }
        if self.settings.config.headers.pass_access_token {
            let token = caller
                .session
                .as_ref()
                .and_then(|s| s.record.access_token.as_deref());
            if let Some(value) =
                token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
            {
                headers.insert(AUTHORIZATION, value);
            }
        }
    }
}

/// What the access step decided for a request target.
enum Authorization {
    /// A public route: forward without identity.
    Public {
        api_client: bool,
        upstream: UpstreamId,
    },
    /// A signed-in caller who passes the rules, and the route's upstream.
    Allowed(Caller, UpstreamId),
    /// Answered: a refused path, a denied route or user, a bad bearer token.
    Refused(Response<Body>),
    /// Sign-in needed and there is no caller.
    Anonymous,
}

/// With `server.public_url` set, the gateway serves that host only: a request
/// naming another (a forged `Host`, an `:authority` with userinfo) is refused
/// rather than answered with links, redirects and cookies for a host it is not.
pub struct PublicHost {
    host: String,
    port: u16,
}

impl PublicHost {
    fn new(url: &http::Uri) -> Option<Self> {
        let default_port = if url.scheme_str() == Some("http") {
            80
        } else {
            443
        };
        Some(PublicHost {
            host: url.host()?.to_ascii_lowercase(),
            port: url.port_u16().unwrap_or(default_port),
        })
    }

    /// The HTTP/2 `:authority`, else `Host` (from a trusted proxy,
    /// `X-Forwarded-Host` when it sent one).
    fn check(
        &self,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        client: &ClientAddress,
    ) -> Result<(), &'static str> {
        let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let forwarded = client
            .peer_trusted
            .then(|| header(&crate::connection::X_FORWARDED_HOST))
            .flatten()
            .map(|v| v.split(',').next().unwrap_or("").trim());
        let named = match (forwarded, uri.authority()) {
            (Some(host), _) => host,
            (None, Some(authority)) => authority.as_str(),
            (None, None) => header(&http::header::HOST).ok_or("no Host header")?,
        };
        if named.contains('@') {
            return Err("the host carries user information ('@')");
        }
        let authority: http::uri::Authority =
            named.parse().map_err(|_| "the Host header is malformed")?;
        let same = authority.host().eq_ignore_ascii_case(&self.host)
            && authority.port_u16().unwrap_or(self.port) == self.port;
        if same {
            Ok(())
        } else {
            Err("the request names another host")
        }
    }
}

/// 421 Misdirected Request: this gateway is not the server for that host.
fn misdirected(public: &PublicHost, why: &str, facts: &RequestFacts<'_>) -> Response<Body> {
    tracing::info!(request_id = %facts.request_id, client = %facts.client.client_ip, reason = why, "request for another host refused");
    let detail = format!(
        "This gateway serves {}:{} only (server.public_url); {why}.",
        public.host, public.port
    );
    ErrorPage {
        status: StatusCode::MISDIRECTED_REQUEST,
        code: "wrong_host",
        title: "Wrong host",
        detail: &detail,
        request_id: facts.request_id,
    }
    .render(facts.wants_html)
}

/// HSTS for the gateway's answers: only with a certificate browsers can
/// trust (pinning HSTS to a self-signed one would lock users out of its
/// warning page), and unless turned off.
fn hsts_header(settings: &Settings) -> Option<HeaderValue> {
    let max_age = settings.config.server.hsts_max_age.as_secs();
    if max_age == 0 || crate::tls::is_self_signed(&settings.config.tls.cert) {
        return None;
    }
    HeaderValue::from_str(&format!("max-age={max_age}")).ok()
}

enum CallerLookup {
    Found(Caller),
    BadBearer(TokenError),
    /// A session cookie that cannot be used right now (store down, token not renewable yet).
    StoreUnavailable(SessionUnavailable),
    Anonymous,
}

fn oidc_return_to(target: &str) -> String {
    crate::oidc::return_to::sanitize(target)
}

fn status_only(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(crate::empty_body());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn not_found(facts: &RequestFacts<'_>) -> Response<Body> {
    pages::json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "not_found", "message": "no such gateway endpoint", "request_id": facts.request_id}),
    )
}

/// A path the gateway will not judge (encoded slash, dot segment, control character).
fn bad_path(error: &routes::PathError, facts: &RequestFacts<'_>) -> Response<Body> {
    tracing::info!(request_id = %facts.request_id, client = %facts.client.client_ip, reason = %error, "request path refused");
    let detail = error.to_string();
    ErrorPage {
        status: StatusCode::BAD_REQUEST,
        code: "bad_path",
        title: "Bad request",
        detail: &detail,
        request_id: facts.request_id,
    }
    .render(facts.wants_html)
}

/// A method override header (`X-HTTP-Method-Override: DELETE`) on a path
/// whose rules depend on the method: the upstream would run another method
/// than the one judged.
fn method_override_refused(facts: &RequestFacts<'_>) -> Response<Body> {
    tracing::info!(request_id = %facts.request_id, client = %facts.client.client_ip, "method override header refused on a path with method rules");
    ErrorPage {
        status: StatusCode::BAD_REQUEST,
        code: "method_override",
        title: "Bad request",
        detail: "A method override header (X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override) is not accepted on a path whose rules depend on the method: send the method itself.",
        request_id: facts.request_id,
    }
    .render(facts.wants_html)
}

/// A standard method in another case (`post`): refused rather than judged as
/// an unknown method and run as `POST` by the upstream.
fn bad_method(method: &Method, facts: &RequestFacts<'_>) -> Response<Body> {
    tracing::info!(request_id = %facts.request_id, client = %facts.client.client_ip, "request method in the wrong case refused");
    let detail = format!(
        "HTTP method names are case-sensitive: send {}, not {}.",
        method.as_str().to_ascii_uppercase(),
        method.as_str()
    );
    ErrorPage {
        status: StatusCode::BAD_REQUEST,
        code: "bad_method",
        title: "Bad request",
        detail: &detail,
        request_id: facts.request_id,
    }
    .render(facts.wants_html)
}

/// RFC 6750 §3: a bearer token that does not validate.
fn invalid_bearer(error: &TokenError, facts: &RequestFacts<'_>) -> Response<Body> {
    tracing::info!(request_id = %facts.request_id, client = %facts.client.client_ip, reason = %error, reason_code = error.code(), "bearer token rejected");
    let mut response = pages::json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({"error": "invalid_token", "reason": error.code(), "message": error.to_string(), "request_id": facts.request_id}),
    );
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        error.to_string().replace(['"', '\\'], "'")
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(WWW_AUTHENTICATE, value);
    }
    response
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

    /// The request's id, marked sensitive: HTTP/2 then sends it back as a
    /// never-indexed literal. Indexed, every unique id would be added to the
    /// connection's HPACK table, evicting useful entries and making each
    /// response's header encoding search a long chain of dead ids.
    fn for_request(&self, headers: &http::HeaderMap, trusted: bool) -> HeaderValue {
        let mut id = self.id_for(headers, trusted);
        id.set_sensitive(true);
        id
    }

    fn id_for(&self, headers: &http::HeaderMap, trusted: bool) -> HeaderValue {
        if trusted {
            if let Some(id) = headers
                .get(&X_REQUEST_ID)
                .filter(|v| is_valid_request_id(v.as_bytes()))
            {
                return id.clone();
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // `<prefix as 8 hex>-<counter as hex>`, formatted without a heap String.
        let mut buf = [0u8; 8 + 1 + 16];
        let mut len = write_hex(&mut buf, u64::from(self.prefix), 8);
        buf[len] = b'-';
        len += 1;
        len += write_hex(&mut buf[len..], n, 1);
        HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static("unknown"))
    }
}

/// What forward-auth answers carry for nginx/Caddy/Traefik (oauth2-proxy's names):
/// user, email, preferred username, groups; and the object and tenant ids.
static AUTH_REQUEST_HEADERS: [HeaderName; 6] = [
    HeaderName::from_static("x-auth-request-user"),
    HeaderName::from_static("x-auth-request-email"),
    HeaderName::from_static("x-auth-request-preferred-username"),
    HeaderName::from_static("x-auth-request-groups"),
    HeaderName::from_static("x-auth-request-oid"),
    HeaderName::from_static("x-auth-request-tid"),
];

/// Writes `value` as lower-case hex, at least `min_digits` wide; returns the length.
fn write_hex(out: &mut [u8], value: u64, min_digits: usize) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = ((64 - value.leading_zeros() as usize).div_ceil(4)).max(min_digits);
    for i in 0..digits {
        out[digits - 1 - i] = DIGITS[((value >> (4 * i)) & 0xf) as usize];
    }
    digits
}

fn is_valid_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_never_indexed_by_hpack() {
        // h2's HPACK encoder keeps sensitive values out of the dynamic table.
        let ids = RequestIds::new();
        assert!(ids
            .for_request(&http::HeaderMap::new(), false)
            .is_sensitive());
        let mut relayed = http::HeaderMap::new();
        relayed.insert(&X_REQUEST_ID, HeaderValue::from_static("lb-1234"));
        let id = ids.for_request(&relayed, true);
        assert!(id.is_sensitive());
        assert_eq!(id, "lb-1234");
    }

    #[test]
    fn request_ids_are_prefix_dash_counter_in_hex() {
        let ids = RequestIds {
            prefix: 0xab,
            counter: AtomicU64::new(0x1f),
        };
        let id = ids.for_request(&http::HeaderMap::new(), false);
        assert_eq!(id, "000000ab-1f");
        assert_eq!(
            ids.for_request(&http::HeaderMap::new(), false),
            "000000ab-20"
        );
        let mut buf = [0u8; 16];
        let len = write_hex(&mut buf, 0, 1);
        assert_eq!(&buf[..len], b"0");
        let len = write_hex(&mut buf, u64::MAX, 1);
        assert_eq!(&buf[..len], b"ffffffffffffffff");
    }

    #[test]
    fn a_trusted_proxys_request_id_is_kept_when_well_formed() {
        let ids = RequestIds::new();
        let mut headers = http::HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("lb-42"));
        assert_eq!(ids.for_request(&headers, true), "lb-42");
        assert_ne!(ids.for_request(&headers, false), "lb-42");
        headers.insert(
            &X_REQUEST_ID,
            HeaderValue::from_static("bad id with spaces"),
        );
        assert_ne!(ids.for_request(&headers, true), "bad id with spaces");
    }
}
