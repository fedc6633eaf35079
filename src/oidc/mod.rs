//! Sign-in with OpenID Connect (Entra ID first): the authorization-code flow
//! with PKCE S256, `state` and `nonce`, finished at the callback path; sessions;
//! sign-out with RP-initiated logout; the `me` endpoint.
//!
//! Every function here answers with a complete response: the proxy never sees
//! OIDC, and OIDC never touches sockets.

mod bearer_groups;
pub mod client_auth;
pub mod client_certificate;
pub mod entra_errors;
mod frontchannel;
pub mod graph;
pub mod provider;
pub mod refresh;
pub mod return_to;
pub mod token;
pub mod token_endpoint;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use crate::config::{RateLimitConfig, ResponseMode, Settings};
use crate::connection::{ClientAddress, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::crypto::{base64url, random_bytes};
use crate::health::Readiness;
use crate::identity::Identity;
use crate::metrics::{self, SignIn as SignInOutcome};
use crate::pages::{self, escape_html, ErrorPage};
use crate::ratelimit::{LimitReason, LoginLimiter, Refusal};
use crate::session::cookies::{CookieCodec, LoginFlow, SessionKeyMemo};
use crate::session::{unix_now, Session, SessionHandle, SessionRecord, SessionStore, StoreError};
use crate::{empty_body, full_body, Body};
use client_auth::ClientCredential;
use entra_errors::EntraError;
use provider::Provider;
use token::TokenPolicy;
use token_endpoint::{TokenEndpoint, TokenEndpointError};

/// Largest callback body read (form_post carries code, state, maybe id_token).
const MAX_CALLBACK_BODY: usize = 64 * 1024;
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Browsers keep no cookie larger than this (RFC 6265 §6.1's minimum, and
/// what they all cap at): counted over the whole `Set-Cookie` value.
const MAX_COOKIE_BYTES: usize = 4096;

/// Facts about the request the answers depend on.
pub struct RequestFacts<'a> {
    pub client: &'a ClientAddress,
    pub request_id: &'a str,
    pub wants_html: bool,
    /// The connection's memo of session id → store key.
    pub session_keys: &'a SessionKeyMemo,
}

/// The HTTP client for calls to the IdP: bounded by oidc.http_timeout, and it
/// never follows redirects (a token endpoint that redirects is refused).
pub fn idp_http_client(settings: &Settings) -> Result<reqwest::Client, AuthInitError> {
    let timeout = settings.config.oidc.http_timeout;
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("oidc-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            AuthInitError(format!(
                "cannot build the HTTP client for the identity provider: {e}"
            ))
        })
}

/// A sign-in refused after the token was accepted: status, code, title, detail.
type LoginRefusal = (StatusCode, &'static str, &'static str, String);

/// What the callback step decided.
pub enum CallbackOutcome {
    Done(Response<Body>),
    /// The `state` was not issued by this gateway (or its flow cookie is gone):
    /// the request is handed back, body intact, for the caller to reject or forward.
    NotOurs(Request<Body>),
}

pub struct Auth {
    settings: Arc<Settings>,
    pub provider: Arc<Provider>,
    policy: TokenPolicy,
    bearer_policy: Option<TokenPolicy>,
    limiter: Arc<LoginLimiter>,
    cookies: CookieCodec,
    store: Arc<dyn SessionStore>,
    pub token_endpoint: TokenEndpoint,
    /// Where the groups of users beyond the token's group limit are read.
    graph: graph::Graph,
    /// `{graph}/User.Read`: the scope of Graph tokens for bearer callers.
    graph_scope: String,
    bearer_groups: bearer_groups::BearerGroups,
    /// Renew access tokens (`session.refresh` or `headers.pass_access_token`).
    refresh: bool,
    refresh_flights: refresh::RefreshFlights,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthInitError(String);

/// The session a request's cookie names, as far as the store can tell.
pub enum SessionLookup {
    Live(Arc<Session>),
    /// No cookie, an unknown or ended session.
    None,
    /// The session cannot be used now, through no fault of its own: the
    /// request must not be treated as anonymous (no login redirect, no cookie
    /// cleared).
    Unavailable(SessionUnavailable),
}

/// Why a session cannot be used for the moment.
#[derive(Debug)]
pub enum SessionUnavailable {
    /// The session store cannot be reached.
    Store(StoreError),
    /// The access token expired and the IdP could not renew it yet.
    Renewal(String),
}

impl Auth {
    /// The sign-in code, with the session store it keeps sessions in.
    pub fn new(
        settings: Arc<Settings>,
        readiness: Readiness,
        store: Arc<dyn SessionStore>,
    ) -> Result<Self, AuthInitError> {
        let oidc = &settings.config.oidc;
        let http = idp_http_client(&settings)?;
        let secret = match settings.config.session.secret.trim() {
            "" => None,
            s => base64::engine::general_purpose::STANDARD.decode(s).ok(),
        };
        let cookies = CookieCodec::new(
            secret.as_deref(),
            settings.config.session.ttl,
            oidc.response_mode == ResponseMode::FormPost,
        );
        let provider = Arc::new(Provider::new(&settings, http.clone(), readiness));
        let credential =
            ClientCredential::from_config(oidc).map_err(|e| AuthInitError(e.to_string()))?;
        if let ClientCredential::Certificate(certificate) = &credential {
            let facts = certificate.facts();
            match facts.expiry_warning(unix_now() as i64) {
                Some(warning) => tracing::warn!(thumbprint = %facts.thumbprint_sha1, "{warning}"),
                None => {
                    tracing::info!(thumbprint = %facts.thumbprint_sha1, expires = %facts.expires(), "client certificate loaded")
                }
            }
        }
        let graph_url = oidc
            .graph_url
            .clone()
            .unwrap_or_else(|| oidc.cloud.default_graph_url());
        Ok(Auth {
            graph: graph::Graph::new(http.clone(), &graph_url),
            graph_scope: format!("{}/User.Read", graph_url.trim_end_matches('/')),
            bearer_groups: Default::default(),
            token_endpoint: TokenEndpoint::new(
                http,
                provider.clone(),
                oidc.client_id.clone(),
                credential,
            ),
            provider,
            refresh: settings.refresh_enabled(),
            refresh_flights: Default::default(),
            policy: TokenPolicy::new(&settings),
            bearer_policy: settings
                .config
                .bearer
                .enabled
                .then(|| TokenPolicy::for_bearer(&settings)),
            limiter: Arc::new(LoginLimiter::new(&settings.config.rate_limit)),
            cookies,
            store,
            settings,
        })
    }

    /// Starts the background work: metadata refresh and the session sweeper.
    pub fn spawn_background(&self, stop: CancellationToken) {
        self.provider.spawn_refresher(stop.clone());
        let store = self.store.clone();
        let limiter = self.limiter.clone();
        let idle = self.settings.config.session.idle_timeout;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        limiter.forget_idle();
                        match store.sweep(unix_now(), idle).await {
                            Ok(0) => {}
                            Ok(n) => tracing::debug!(removed = n, "expired sessions swept"),
                            Err(e) => tracing::warn!(error = %e, "session sweep failed"),
                        }
                    }
                    _ = stop.cancelled() => return,
                }
            }
        });
    }

    pub fn callback_path(&self) -> &str {
        &self.settings.config.oidc.callback_path
    }

    /// `scheme://host[:port]` the browser used: server.public_url when set, else
    /// the request's own (X-Forwarded-Proto/-Host only from trusted proxies).
    /// None when the Host is missing or malformed.
    pub fn origin(
        &self,
        request_uri: &http::Uri,
        headers: &HeaderMap,
        client: &ClientAddress,
    ) -> Option<String> {
        if let Some(url) = &self.settings.public_url {
            return Some(url.to_string().trim_end_matches('/').to_string());
        }
        let forwarded = |name: &http::HeaderName| {
            client
                .peer_trusted
                .then(|| headers.get(name).and_then(|v| v.to_str().ok()))
                .flatten()
                .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
        };
        let scheme = match forwarded(&X_FORWARDED_PROTO).as_deref() {
            Some("http") => "http",
            _ => "https",
        };
        let host = forwarded(&X_FORWARDED_HOST)
            .or_else(|| request_uri.authority().map(|a| a.as_str().to_string()))
            .or_else(|| {
                headers
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })?;
        let authority: http::uri::Authority = host.parse().ok()?;
        if host.contains('@') || authority.as_str() != host {
            return None;
        }
        let allowed = &self.settings.config.server.allowed_hosts;
        if !allowed.is_empty()
            && !allowed.iter().any(|a| {
                a.eq_ignore_ascii_case(authority.as_str())
                    || a.eq_ignore_ascii_case(authority.host())
            })
        {
            tracing::info!(host = %authority, "host not in server.allowed_hosts: no redirect URI for it");
            return None;
        }
        Some(format!(
            "{scheme}://{}",
            authority.as_str().to_ascii_lowercase()
        ))
    }

    /// The session store sessions are kept in.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The live session of this request, if any (touching it for the idle timeout).
    pub async fn session(&self, headers: &HeaderMap, keys: &SessionKeyMemo) -> SessionLookup {
        let Some(id) = CookieCodec::session_id(headers) else {
            return SessionLookup::None;
        };
        let handle = SessionHandle::with_key(id, keys.key(id));
        let session = match self.store.get(handle).await {
            Ok(Some(session)) => session,
            Ok(None) => return SessionLookup::None,
            Err(e) => {
                tracing::warn!(error = %e, "session lookup failed");
                return SessionLookup::Unavailable(SessionUnavailable::Store(e));
            }
        };
        let now = unix_now();
        if !session.is_live(now, self.settings.config.session.idle_timeout.as_secs()) {
            let _ = self.store.remove(&handle.key).await;
            return SessionLookup::None;
        }
        session.touch(now);
        if self.refresh {
            // Boxed: the token request is a large future, and rare.
            return Box::pin(self.renewed(handle, session)).await;
        }
        SessionLookup::Live(session)
    }

    /// The answer while a session cannot be used (store unreachable, access
    /// token not renewable yet): 503 saying why, no login redirect and no
    /// cookie cleared, so that nobody is signed out by it.
    pub fn session_unavailable(
        &self,
        why: &SessionUnavailable,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        let (code, detail) = match why {
            SessionUnavailable::Store(e) => {
                tracing::warn!(request_id = %facts.request_id, error = %e, "answered 503: the session store is unavailable");
                (
                    "session_store_unavailable",
                    "The gateway cannot reach its session store. You are still signed in: \
                     try again in a moment.",
                )
            }
            SessionUnavailable::Renewal(reason) => {
                tracing::warn!(request_id = %facts.request_id, reason = %reason, "answered 503: the access token expired and could not be renewed yet");
                (
                    "token_renewal_unavailable",
                    "Your access could not be renewed at the identity provider just now. You \
                     are still signed in: try again in a moment.",
                )
            }
        };
        let mut response = ErrorPage {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code,
            title: "Temporarily unavailable",
            detail,
            request_id: facts.request_id,
        }
        .render(facts.wants_html);
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
        response
    }

    /// Anonymous request: browsers navigating are sent to the IdP; everything
    /// else (XHR, fetch, API clients, WebSocket) gets 401 JSON with a login URL.
    pub fn unauthenticated(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        let Some(origin) = self.origin(uri, headers, facts.client) else {
            return bad_host(facts);
        };
        let return_to =
            return_to::sanitize(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        if is_browser_navigation(method, headers) {
            return self.start_login(headers, &origin, &return_to, None, facts);
        }
        let login_url = format!(
            "{origin}{}/sign_in?rd={}",
            self.settings.config.gateway.prefix,
            url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect::<String>()
        );
        let mut response = pages::json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({
                "error": "unauthenticated",
                "message": "Sign in first: open login_url in a browser.",
                "login_url": login_url,
                "request_id": facts.request_id,
            }),
        );
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Cookie realm=\"oidc-gateway\""),
        );
        response
    }

    /// `/.gateway/sign_in?rd=/path`: start a login explicitly.
    pub fn sign_in(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        let Some(origin) = self.origin(uri, headers, facts.client) else {
            return bad_host(facts);
        };
        let rd = uri
            .query()
            .map(redirect_target)
            .unwrap_or_else(|| "/".into());
        let hint = match uri.query().map(login_hint).transpose() {
            Ok(hint) => hint.flatten(),
            Err(problem) => {
                return ErrorPage {
                    status: StatusCode::BAD_REQUEST,
                    code: "bad_login_hint",
                    title: "Bad sign-in link",
                    detail: problem,
                    request_id: facts.request_id,
                }
                .render(facts.wants_html)
            }
        };
        self.start_login(
            headers,
            &origin,
            &return_to::sanitize(&rd),
            hint.as_deref(),
            facts,
        )
    }

    /// 302 to the authorization endpoint, with a new flow cookie.
    fn start_login(
        &self,
        headers: &HeaderMap,
        origin: &str,
        return_to: &str,
        login_hint: Option<&str>,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        // A login that could not be saved at its end: do not send anyone to the IdP.
        if let Err(e) = self.store.available() {
            return self.session_unavailable(&SessionUnavailable::Store(e), facts);
        }
        let Some(loaded) = self.provider.current() else {
            return ErrorPage {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "idp_unavailable",
                title: "Sign-in is not available right now",
                detail: "The gateway cannot reach the identity provider yet. Please try again in a minute.",
                request_id: facts.request_id,
            }
            .render(facts.wants_html);
        };
        let oidc = &self.settings.config.oidc;
        let now = unix_now();
        let mut flow = LoginFlow {
            state: base64url(&random_bytes::<32>()),
            nonce: base64url(&random_bytes::<32>()),
            pkce_verifier: base64url(&random_bytes::<32>()),
            return_to: return_to.to_string(),
            redirect_uri: format!("{origin}{}", oidc.callback_path),
            created_ns: unix_now_ns(),
        };
        let Some(flow_cookie) = self.flow_cookie(&mut flow, facts) else {
            return ErrorPage {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "flow_cookie",
                title: "Sign-in cannot start",
                detail: "The gateway could not create the sign-in cookie.",
                request_id: facts.request_id,
            }
            .render(facts.wants_html);
        };
        let challenge = base64url(
            ring::digest::digest(&ring::digest::SHA256, flow.pkce_verifier.as_bytes()).as_ref(),
        );
        let mut url = match url::Url::parse(&loaded.metadata.authorization_endpoint) {
            Ok(url) => url,
            Err(e) => {
                tracing::error!(error = %e, "the authorization_endpoint from discovery is not a URL");
                return ErrorPage {
                    status: StatusCode::BAD_GATEWAY,
                    code: "idp_misconfigured",
                    title: "Sign-in is misconfigured",
                    detail: "The identity provider's authorization endpoint is not a valid URL.",
                    request_id: facts.request_id,
                }
                .render(facts.wants_html);
            }
        };
        url.query_pairs_mut()
            .append_pair("client_id", &oidc.client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", &flow.redirect_uri)
            .append_pair(
                "response_mode",
                match oidc.response_mode {
                    ResponseMode::Query => "query",
                    ResponseMode::FormPost => "form_post",
                },
            )
            .append_pair("scope", &oidc.scopes.join(" "))
            .append_pair("state", &flow.state)
            .append_pair("nonce", &flow.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        sign_in_options(&mut url, oidc, login_hint);

        let mut response = redirect(StatusCode::FOUND, url.as_str());
        let headers_out = response.headers_mut();
        for evicted in
            self.cookies
                .evict_flows(headers, self.settings.config.session.max_login_flows, now)
        {
            headers_out.append(SET_COOKIE, evicted);
        }
        headers_out.append(SET_COOKIE, flow_cookie);
        tracing::debug!(request_id = %facts.request_id, return_to = %flow.return_to, "login started");
        response
    }

    /// The flow's `Set-Cookie`, at most [`MAX_COOKIE_BYTES`]: a return path too
    /// long for it (a deep link with a long query) is shortened up front — to
    /// its path, else to `/` — since a browser drops a larger cookie and the
    /// login could never finish.
    fn flow_cookie(&self, flow: &mut LoginFlow, facts: &RequestFacts<'_>) -> Option<HeaderValue> {
        let cookie = self.cookies.set_flow(flow)?;
        if cookie.len() <= MAX_COOKIE_BYTES {
            return Some(cookie);
        }
        let path_only = flow.return_to.split('?').next().unwrap_or("/").to_string();
        for shorter in [path_only, "/".to_string()] {
            flow.return_to = shorter;
            let cookie = self.cookies.set_flow(flow)?;
            if cookie.len() <= MAX_COOKIE_BYTES {
                tracing::info!(request_id = %facts.request_id, return_to_bytes = flow.return_to.len(),
                    "return path shortened: the login cookie would have passed 4096 bytes");
                return Some(cookie);
            }
        }
        None
    }

    /// The callback: match the state to its flow, exchange the code, validate
    /// the ID token, create the session, 303 to where the user was going.
    pub async fn callback(
        &self,
        request: Request<Body>,
        facts: &RequestFacts<'_>,
    ) -> CallbackOutcome {
        if let Err(refusal) = self.limiter.check_callback(facts.client.client_ip) {
            return CallbackOutcome::Done(too_many_logins(
                refusal,
                &self.settings.config.rate_limit,
                facts,
            ));
        }
        let (parts, body) = request.into_parts();
        let (params, body_bytes) = match callback_params(&parts, body).await {
            Ok(found) => found,
            Err(page) => {
                self.limiter.record_failure(facts.client.client_ip);
                metrics::sign_in(SignInOutcome::BadCallback);
                return CallbackOutcome::Done(page.render(facts, self));
            }
        };
        let now = unix_now();
        let flow = params
            .get("state")
            .and_then(|state| self.cookies.read_flow(&parts.headers, state, now));
        let Some(flow) = flow else {
            let request = Request::from_parts(parts, full_body(body_bytes));
            return CallbackOutcome::NotOurs(request);
        };
        let mut response = self
            .finish_login(&parts.headers, &params, &flow, facts)
            .await;
        // A client error is a failed callback (the IdP's refusal, a bad code,
        // an unsendable account); the IdP's or the store's troubles are not.
        let status = response.status();
        if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
            self.limiter.record_failure(facts.client.client_ip);
        }
        if let Some(clear) = self.cookies.clear_flow(&flow.state) {
            response.headers_mut().append(SET_COOKIE, clear);
        }
        CallbackOutcome::Done(response)
    }

    /// The answer for a callback whose state this gateway never issued (login
    /// CSRF, a replayed or expired response, cookies blocked).
    pub fn foreign_callback(&self, facts: &RequestFacts<'_>) -> Response<Body> {
        self.limiter.record_failure(facts.client.client_ip);
        metrics::sign_in(SignInOutcome::StateMismatch);
        tracing::warn!(
            request_id = %facts.request_id,
            client = %facts.client.client_ip,
            "callback rejected: its state belongs to no login started in this browser (forged, replayed or expired)"
        );
        self.login_error_page(
            StatusCode::BAD_REQUEST,
            "login_state_mismatch",
            "This sign-in link is not valid here",
            "The sign-in response does not belong to a sign-in started in this browser, or it expired. Start again.",
            "/",
            None,
            facts,
        )
    }

    async fn finish_login(
        &self,
        headers: &HeaderMap,
        params: &std::collections::HashMap<String, String>,
        flow: &LoginFlow,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        if let Some(error) = params.get("error") {
            let description = params
                .get("error_description")
                .map(String::as_str)
                .unwrap_or("");
            let entra = EntraError::from_redirect(
                error,
                description,
                params.get("error_uri").map(String::as_str),
            );
            metrics::sign_in(SignInOutcome::IdpError);
            return self.idp_error_page(
                &entra,
                "the identity provider refused the sign-in",
                flow,
                facts,
            );
        }
        let Some(code) = params.get("code").filter(|c| !c.is_empty()) else {
            metrics::sign_in(SignInOutcome::BadCallback);
            return self.login_error_page(
                StatusCode::BAD_REQUEST,
                "missing_code",
                "Sign-in did not complete",
                "The identity provider's answer carries no authorization code.",
                &flow.return_to,
                None,
                facts,
            );
        };
        if let Err(refusal) = self.limiter.check_exchange(facts.client.client_ip) {
            metrics::sign_in(SignInOutcome::RateLimited);
            return too_many_logins(refusal, &self.settings.config.rate_limit, facts);
        }
        let started = std::time::Instant::now();
        let tokens = match self
            .token_endpoint
            .exchange_code(code, &flow.redirect_uri, &flow.pkce_verifier)
            .await
        {
            Ok(tokens) => tokens,
            Err(failure) => {
                metrics::sign_in(SignInOutcome::TokenEndpoint);
                return self.exchange_failure_page(failure, flow, facts);
            }
        };
        let id_token = tokens.id_token.unwrap_or_default();
        let idp_time = started.elapsed();
        let identity = match self
            .policy
            .validate(&self.provider, &id_token, Some(&flow.nonce))
            .await
        {
            Ok(identity) => identity,
            Err(token::TokenError::UnsendableIdentity(value)) => {
                metrics::sign_in(SignInOutcome::UnsendableIdentity);
                tracing::warn!(request_id = %facts.request_id, reason = %value, "sign-in refused: an identity value cannot be sent unaltered");
                let detail = format!(
                    "Your account cannot use this console through the gateway: its {value}. The gateway passes your identity to the console exactly as Microsoft sends it, or not at all. Ask the administrator to correct the account.",
                );
                return self.login_error_page(
                    StatusCode::FORBIDDEN,
                    "unsendable_identity",
                    "Your account's details cannot be passed on",
                    &detail,
                    &flow.return_to,
                    None,
                    facts,
                );
            }
            Err(e @ token::TokenError::UserClaimMissing { .. }) => {
                tracing::warn!(request_id = %facts.request_id, reason = %e, reason_code = e.code(), "sign-in refused: the user header's claim is not in the ID token");
                let detail = format!(
                    "Your account cannot use this console through the gateway: its {e}. The gateway names users only by that claim, never by another one. Ask the administrator to add the claim in Azure (Token configuration) or to choose another headers.user_claim.",
                );
                return self.login_error_page(
                    StatusCode::FORBIDDEN,
                    e.code(),
                    "Your account cannot be named",
                    &detail,
                    &flow.return_to,
                    None,
                    facts,
                );
            }
            Err(e) => {
                metrics::sign_in(SignInOutcome::InvalidIdToken);
                tracing::warn!(request_id = %facts.request_id, reason = %e, reason_code = e.code(), "ID token rejected");
                let detail = format!(
                    "The identity provider's answer did not pass the gateway's checks (reason: {}). Try again; if it keeps happening, tell the administrator (the gateway's log says more).",
                    e.code()
                );
                return self.login_error_page(
                    StatusCode::BAD_GATEWAY,
                    "invalid_id_token",
                    "Sign-in could not be verified",
                    &detail,
                    &flow.return_to,
                    None,
                    facts,
                );
            }
        };

        let identity = match self
            .complete_groups(identity, tokens.access_token.as_deref(), facts)
            .await
        {
            Ok(identity) => identity,
            Err(page) => {
                let (status, code, title, detail) = *page;
                metrics::sign_in(if code == "groups_unavailable" {
                    SignInOutcome::GroupsUnavailable
                } else {
                    SignInOutcome::UnsendableIdentity
                });
                return self.login_error_page(
                    status,
                    code,
                    title,
                    &detail,
                    &flow.return_to,
                    None,
                    facts,
                );
            }
        };

        // Sign-in replaces any previous session of this browser.
        if let Some(old) = CookieCodec::session_id(headers) {
            let _ = self.store.remove(&SessionHandle::new(old).key).await;
        }
        let (id, _) = CookieCodec::new_session_id();
        let now = unix_now();
        let mut session =
            SessionRecord::new(identity, self.settings.config.session.ttl.as_secs(), now);
        session.sid = entra_sid(&id_token).map(Into::into);
        session.id_token = Some(id_token.into());
        // Kept only when sent upstream or renewed: ~1-2 KiB per session otherwise
        // unused; the refresh token only when refresh is configured.
        if self.refresh {
            refresh::apply_tokens(
                &mut session,
                tokens.access_token,
                tokens.refresh_token,
                tokens.expires_in,
                now,
            );
        } else if self.settings.config.headers.pass_access_token {
            session.access_token = tokens.access_token.map(Into::into);
        }
        // Gateway-side cost of the callback (validation, session), without the IdP's time.
        let gateway_us = started.elapsed().saturating_sub(idp_time).as_micros() as u64;
        tracing::info!(
            request_id = %facts.request_id,
            user = %session.identity.user,
            tid = ?session.identity.tid,
            token_endpoint_ms = idp_time.as_secs_f64() * 1000.0,
            gateway_us,
            // Sizes only (bench/run separates token memory from session memory).
            kept_token_bytes = session.id_token.as_ref().map_or(0, |t| t.len())
                + session.access_token.as_ref().map_or(0, |t| t.len()),
            "signed in"
        );
        if let Err(e) = self
            .store
            .insert(SessionHandle::new(id.as_bytes()), session)
            .await
        {
            metrics::sign_in(SignInOutcome::SessionStore);
            tracing::error!(request_id = %facts.request_id, error = %e, "cannot store the session");
            return self.login_error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "session_store_unavailable",
                "Sign-in could not be completed",
                "The gateway could not save your session: its session store is unavailable. \
                 Try again in a moment.",
                &flow.return_to,
                None,
                facts,
            );
        }
        metrics::sign_in(SignInOutcome::Success);
        let mut response = redirect(StatusCode::SEE_OTHER, &flow.return_to);
        response
            .headers_mut()
            .append(SET_COOKIE, self.cookies.set_session(&id));
        response
    }

    /// The identity with its groups: as the token has them, or — when Entra
    /// sent the overage marker instead — as Microsoft Graph lists them. A
    /// Graph failure refuses the sign-in (never 0 groups silently); the `Err`
    /// is the page's status, code, title and detail.
    async fn complete_groups(
        &self,
        mut identity: Identity,
        access_token: Option<&str>,
        facts: &RequestFacts<'_>,
    ) -> Result<Identity, Box<LoginRefusal>> {
        if !identity.groups_overage {
            return Ok(identity);
        }
        let started = std::time::Instant::now();
        let read = self
            .graph
            .member_objects(access_token.unwrap_or_default())
            .await;
        metrics::graph_call(started.elapsed());
        let graph_ms = started.elapsed().as_secs_f64() * 1000.0;
        let groups = match read {
            Ok(groups) => groups,
            Err(e) => {
                tracing::warn!(request_id = %facts.request_id, user = %identity.user, graph_ms, reason = %e,
                    "sign-in refused: the groups of an overage user could not be read from Microsoft Graph");
                let status = match &e {
                    graph::GraphError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                    e if e.is_permission() => StatusCode::FORBIDDEN,
                    _ => StatusCode::BAD_GATEWAY,
                };
                return Err(Box::new((
                    status,
                    "groups_unavailable",
                    "Your groups could not be read",
                    format!(
                        "You are a member of more groups than Microsoft puts in the sign-in token, \
                         and your groups could not be read from Microsoft Graph ({e}), so access \
                         cannot be decided. Tell the administrator, who can: grant the app the \
                         delegated Microsoft Graph permission User.Read (or GroupMember.Read.All) \
                         with admin consent in Azure (App registrations → API permissions); check \
                         that Microsoft Graph is reachable from the gateway; or use app roles \
                         instead of groups."
                    ),
                )));
            }
        };
        tracing::info!(request_id = %facts.request_id, user = %identity.user, graph_ms, groups = groups.len(),
            "groups read from Microsoft Graph (overage)");
        identity.groups = groups;
        identity.groups_overage = false;
        if let Err(value) = crate::identity::check_identity(&identity) {
            tracing::warn!(request_id = %facts.request_id, reason = %value, "sign-in refused: a group from Microsoft Graph cannot be sent unaltered");
            return Err(Box::new((
                StatusCode::FORBIDDEN,
                "unsendable_identity",
                "Your account's details cannot be passed on",
                format!("Your account cannot use this console through the gateway: its {value}."),
            )));
        }
        Ok(identity)
    }

    /// `/.gateway/sign_out`: forget the session here, clear the cookie, then end
    /// the session at the IdP (RP-initiated logout) when it offers that.
    ///
    /// Only for a request this origin made (logout CSRF: a cross-site `<img>`
    /// or link must not sign users out): a `GET` from a link on the console
    /// or typed by the user (`Sec-Fetch-Site: same-origin`/`none`), or a `POST`
    /// whose `Sec-Fetch-Site`/`Origin` says the same. Any other `GET` gets a
    /// small page whose button POSTs here; any other `POST` is refused.
    pub async fn sign_out(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        match self.same_origin(method, uri, headers, facts) {
            SameOrigin::Yes => self.end_session(headers, facts).await,
            SameOrigin::Unknown if *method == Method::GET || *method == Method::HEAD => {
                self.confirm_sign_out(facts)
            }
            SameOrigin::Unknown | SameOrigin::No => {
                tracing::info!(request_id = %facts.request_id, client = %facts.client.client_ip, "cross-site sign-out refused");
                ErrorPage {
                    status: StatusCode::FORBIDDEN,
                    code: "cross_site_sign_out",
                    title: "Sign-out refused",
                    detail: "Sign-out must come from this site (a cross-site request cannot sign you out). Open the sign-out link on this site instead.",
                    request_id: facts.request_id,
                }
                .render(facts.wants_html)
            }
        }
    }

    /// Did the request come from this origin? Fetch metadata first (every
    /// current browser sends it), else `Origin` (old browsers, on POST).
    fn same_origin(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        facts: &RequestFacts<'_>,
    ) -> SameOrigin {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(site) = header("sec-fetch-site") {
            return match site {
                "same-origin" => SameOrigin::Yes,
                // Typed, bookmarked: the user's own navigation (a GET only).
                "none" if *method == Method::GET => SameOrigin::Yes,
                _ => SameOrigin::No,
            };
        }
        match header("origin") {
            Some(origin) => {
                let ours = self.origin(uri, headers, facts.client);
                if ours.is_some_and(|ours| ours.eq_ignore_ascii_case(origin)) {
                    SameOrigin::Yes
                } else {
                    SameOrigin::No
                }
            }
            // No browser POSTs a form without Origin any more: a POST without
            // both headers is a script or an API client of the user's own.
            None if *method == Method::POST => SameOrigin::Yes,
            None => SameOrigin::Unknown,
        }
    }

    /// The page for a sign-out link followed from elsewhere: one button that
    /// POSTs the sign-out from this origin.
    fn confirm_sign_out(&self, facts: &RequestFacts<'_>) -> Response<Body> {
        if !facts.wants_html {
            return pages::json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({
                    "error": "sign_out_needs_post",
                    "message": "Sign out with POST from this site (or a same-origin GET).",
                    "request_id": facts.request_id,
                }),
            );
        }
        let action = escape_html(&format!("{}/sign_out", self.settings.config.gateway.prefix));
        html(
            StatusCode::OK,
            &page(
                "Sign out?",
                &format!(
                    "<p>Do you want to sign out of this console?</p>\n<form method=\"post\" action=\"{action}\"><button type=\"submit\">Sign out</button></form>\n<p><a href=\"/\">Stay signed in</a></p>"
                ),
            ),
        )
    }

    async fn end_session(&self, headers: &HeaderMap, facts: &RequestFacts<'_>) -> Response<Body> {
        let mut id_token = None;
        if let Some(id) = CookieCodec::session_id(headers) {
            let handle = SessionHandle::new(id);
            if let Ok(Some(session)) = self.store.get(handle).await {
                tracing::info!(request_id = %facts.request_id, user = %session.identity().user, "signed out");
                id_token = session.record.id_token.clone();
            }
            if let Err(e) = self.store.remove(&handle.key).await {
                // The cookie is cleared all the same: without it the stored
                // record cannot be opened or named again.
                tracing::warn!(request_id = %facts.request_id, error = %e, "sign-out could not delete the stored session");
            }
        }
        let end_session = self
            .provider
            .current()
            .and_then(|l| l.metadata.end_session_endpoint.clone())
            .and_then(|e| url::Url::parse(&e).ok());
        let mut response = match end_session {
            Some(mut url) => {
                {
                    let mut query = url.query_pairs_mut();
                    query.append_pair("client_id", &self.settings.config.oidc.client_id);
                    if let Some(hint) = &id_token {
                        query.append_pair("id_token_hint", hint);
                    }
                    if let Some(after) = &self.settings.config.oidc.post_logout_redirect_uri {
                        query.append_pair("post_logout_redirect_uri", after);
                    }
                }
                redirect(StatusCode::FOUND, url.as_str())
            }
            None if facts.wants_html => html(
                StatusCode::OK,
                &simple_page(
                    "Signed out",
                    "You have been signed out.",
                    "/",
                    "Sign in again",
                ),
            ),
            None => pages::json(StatusCode::OK, &serde_json::json!({"signed_out": true})),
        };
        response
            .headers_mut()
            .append(SET_COOKIE, self.cookies.clear_session());
        response
    }

    /// The identity in `Authorization: Bearer <JWT>`, when [bearer] is enabled and
    /// the request carries one: Ok(identity) or the reason it was refused.
    pub async fn bearer_identity(
        &self,
        headers: &HeaderMap,
    ) -> Option<Result<Identity, token::TokenError>> {
        let policy = self.bearer_policy.as_ref()?;
        let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = token.trim();
        Some(match policy.validate(&self.provider, token, None).await {
            Ok(identity) if identity.groups_overage => {
                Ok(self.bearer_groups(identity, token).await)
            }
            other => other,
        })
    }

    /// A bearer caller's groups when its token carries the overage marker:
    /// from the cache, else from Graph with a token the on-behalf-of grant
    /// gives for the caller's. On failure the identity keeps the marker, so
    /// that a group rule refuses it (fail closed) saying so.
    async fn bearer_groups(&self, mut identity: Identity, token: &str) -> Identity {
        let key = bearer_groups::user_key(&identity);
        let groups = match self.bearer_groups.get(&key) {
            Some(bearer_groups::Known::Groups(groups)) => groups,
            Some(bearer_groups::Known::RecentFailure) => return identity,
            None => {
                let started = std::time::Instant::now();
                let read = async {
                    let graph_token = self
                        .token_endpoint
                        .on_behalf_of(token, &self.graph_scope)
                        .await
                        .map_err(|e| {
                            format!("the on-behalf-of grant for a Graph token failed: {e}")
                        })?
                        .access_token
                        .unwrap_or_default();
                    self.graph
                        .member_objects(&graph_token)
                        .await
                        .map_err(|e| e.to_string())
                };
                let read = read.await;
                metrics::graph_call(started.elapsed());
                match read {
                    Ok(groups) => {
                        let groups = Arc::new(groups);
                        self.bearer_groups.insert(key, Some(groups.clone()));
                        groups
                    }
                    Err(reason) => {
                        self.bearer_groups.insert(key, None);
                        tracing::warn!(user = %identity.user, reason = %reason,
                            "the groups of an overage bearer caller could not be read from Microsoft Graph");
                        return identity;
                    }
                }
            }
        };
        identity.groups = groups.to_vec();
        identity.groups_overage = false;
        if let Err(value) = crate::identity::check_identity(&identity) {
            tracing::warn!(user = %identity.user, reason = %value, "a group from Microsoft Graph cannot be sent unaltered");
            identity.groups = Vec::new();
            identity.groups_overage = true;
        }
        identity
    }

    /// `/.gateway/me`: the identity of the current session, 401 without one.
    pub fn me(&self, session: Option<&Session>, facts: &RequestFacts<'_>) -> Response<Body> {
        match session.map(|s| &s.record) {
            Some(s) => pages::json(
                StatusCode::OK,
                &serde_json::json!({
                    "user": s.identity.user,
                    "email": s.identity.email,
                    "preferred_username": s.identity.preferred_username,
                    "name": s.identity.name,
                    "subject": s.identity.subject,
                    "oid": s.identity.oid,
                    "tid": s.identity.tid,
                    "groups": s.identity.groups,
                    "roles": s.identity.roles,
                    "issuer": s.identity.issuer,
                    "expires_at": s.expires_at,
                }),
            ),
            None => pages::json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"error": "unauthenticated", "request_id": facts.request_id}),
            ),
        }
    }

    fn sign_in_url(&self, return_to: &str) -> String {
        format!(
            "{}/sign_in?rd={}",
            self.settings.config.gateway.prefix,
            url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect::<String>()
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn login_error_page(
        &self,
        status: StatusCode,
        code: &str,
        title: &str,
        detail: &str,
        return_to: &str,
        extra_html: Option<String>,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        let retry = self.sign_in_url(return_to);
        if !facts.wants_html {
            return pages::json(
                status,
                &serde_json::json!({"error": code, "message": detail, "login_url": retry, "request_id": facts.request_id}),
            );
        }
        let body = format!(
            "<p>{}</p>{}<p><a href=\"{}\">Try again</a></p><p class=\"meta\">Error {} &middot; request id {}</p>",
            escape_html(detail),
            extra_html.unwrap_or_default(),
            escape_html(&retry),
            status.as_u16(),
            escape_html(facts.request_id)
        );
        html(status, &page(title, &body))
    }

    /// The answer when the code exchange failed.
    fn exchange_failure_page(
        &self,
        failure: TokenEndpointError,
        flow: &LoginFlow,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        let (status, code, title, detail) = match &failure {
            TokenEndpointError::Refused { status, error } => {
                if *status < 500 {
                    // The IdP's own words (invalid_grant: code already redeemed,
                    // invalid_client: AADSTS7000222 expired secret, …).
                    let entra = EntraError::from_token_endpoint(error);
                    return self.idp_error_page(
                        &entra,
                        "the token endpoint refused the code",
                        flow,
                        facts,
                    );
                }
                tracing::warn!(request_id = %facts.request_id, status, idp_error = ?error.error,
                    description = ?error.error_description, "token endpoint refused the code");
                (
                    StatusCode::BAD_GATEWAY,
                    "token_endpoint_error",
                    "The identity provider had a problem",
                    "The identity provider failed to issue a token. Try again.",
                )
            }
            TokenEndpointError::Timeout => {
                tracing::warn!(request_id = %facts.request_id, "token endpoint did not answer in time");
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    "token_endpoint_timeout",
                    "Sign-in timed out",
                    "The identity provider did not answer in time. Try again.",
                )
            }
            TokenEndpointError::Unreachable(reason) => {
                tracing::warn!(request_id = %facts.request_id, reason = %reason, "token endpoint unreachable");
                (
                    StatusCode::BAD_GATEWAY,
                    "token_endpoint_unreachable",
                    "Sign-in is not available right now",
                    "The identity provider could not be reached. Try again.",
                )
            }
            TokenEndpointError::Invalid(reason) => {
                tracing::warn!(request_id = %facts.request_id, reason = %reason, "token endpoint answer unreadable");
                (
                    StatusCode::BAD_GATEWAY,
                    "token_response_invalid",
                    "Sign-in could not be completed",
                    "The identity provider's answer could not be read. Try again.",
                )
            }
            TokenEndpointError::Credential(reason) => {
                tracing::error!(request_id = %facts.request_id, reason = %reason, "client credential unusable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "client_credential_unusable",
                    "Sign-in is misconfigured",
                    "The gateway cannot authenticate to the identity provider. Tell the administrator (the gateway's log names the reason).",
                )
            }
        };
        self.login_error_page(status, code, title, detail, &flow.return_to, None, facts)
    }

    /// The page for an error Entra answered, on the redirect or from the
    /// token endpoint: what the user can do, what the operator must fix, and
    /// the ids to find it by (Microsoft's trace and correlation ids, ours).
    fn idp_error_page(
        &self,
        entra: &EntraError,
        what: &str,
        flow: &LoginFlow,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        let advice = entra.advice();
        let aadsts = entra.aadsts();
        // Debug formatting: the IdP's text reaches the log escaped.
        tracing::warn!(request_id = %facts.request_id, idp_error = ?entra.error, aadsts = ?aadsts,
            trace_id = ?entra.trace_id, correlation_id = ?entra.correlation_id,
            description = ?entra.description, "{what}");
        let retry = self.sign_in_url(&flow.return_to);
        let said = if entra.description.is_empty() {
            entra.error.clone()
        } else {
            entra.description.clone()
        };
        if !facts.wants_html {
            return pages::json(
                advice.status,
                &serde_json::json!({
                    "error": entra.error,
                    "aadsts": aadsts,
                    "message": format!("{} Microsoft answered: {said}", advice.user),
                    "operator_action": advice.operator,
                    "trace_id": entra.trace_id,
                    "correlation_id": entra.correlation_id,
                    "login_url": retry,
                    "request_id": facts.request_id,
                }),
            );
        }
        let ids = [
            aadsts.map(|code| format!("Error {code}")),
            entra
                .trace_id
                .as_ref()
                .map(|id| format!("Microsoft trace id {id}")),
            entra
                .correlation_id
                .as_ref()
                .map(|id| format!("correlation id {id}")),
            Some(format!("request id {}", facts.request_id)),
        ];
        let ids: Vec<String> = ids.into_iter().flatten().collect();
        let hint = if entra.code == Some(50011) || entra.code.is_none() {
            redirect_uri_hint(&entra.description, &flow.redirect_uri).unwrap_or_default()
        } else {
            String::new()
        };
        let body = format!(
            "<p>{user}</p><p><strong>For the administrator:</strong> {operator}</p>{hint}\
             <p>Microsoft answered: <code>{said}</code></p><p><a href=\"{retry}\">Try again</a></p>\
             <p class=\"meta\">{ids}</p>",
            user = escape_html(advice.user),
            operator = escape_html(advice.operator),
            said = escape_html(&said),
            retry = escape_html(&retry),
            ids = escape_html(&ids.join(" · ")),
        );
        html(advice.status, &page(advice.title, &body))
    }
}

/// The configured sign-in options and the user's `login_hint` on an
/// authorization request. Entra refuses `login_hint` together with
/// `prompt=select_account` (the hint already chooses the account): the hint wins.
fn sign_in_options(url: &mut url::Url, oidc: &crate::config::OidcConfig, hint: Option<&str>) {
    let mut query = url.query_pairs_mut();
    match oidc.prompt.as_deref() {
        Some("select_account") if hint.is_some() => {}
        Some(prompt) => {
            query.append_pair("prompt", prompt);
        }
        None => {}
    }
    if let Some(hint) = hint {
        query.append_pair("login_hint", hint);
    }
    if let Some(domain) = &oidc.domain_hint {
        query.append_pair("domain_hint", domain);
    }
    if let Some(age) = oidc.max_age {
        query.append_pair("max_age", &age.as_secs().to_string());
    }
}

/// Longest `login_hint` passed on (a UPN is at most 113 characters; Entra's
/// opaque `login_hint` claim is longer).
const MAX_LOGIN_HINT: usize = 512;

/// The `login_hint` of a sign_in query: `Ok(None)` without one, `Err(why)`
/// when it cannot be passed on unaltered.
fn login_hint(query: &str) -> Result<Option<String>, &'static str> {
    // A leading rd= takes the rest of the query (see redirect_target).
    if query.starts_with("rd=") {
        return Ok(None);
    }
    let Some(hint) = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "login_hint")
        .map(|(_, v)| v.into_owned())
    else {
        return Ok(None);
    };
    if hint.is_empty() {
        return Ok(None);
    }
    if hint.len() > MAX_LOGIN_HINT {
        return Err("The login_hint is longer than 512 bytes. Pass the user's sign-in name (user@contoso.com) or the login_hint claim.");
    }
    if hint.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("The login_hint contains spaces or control characters. Pass the user's sign-in name (user@contoso.com) or the login_hint claim.");
    }
    Ok(Some(hint))
}

/// Entra's AADSTS50011 (and the generic redirect_uri errors): show the exact
/// callback URL the operator must register.
fn redirect_uri_hint(description: &str, redirect_uri: &str) -> Option<String> {
    let lower = description.to_ascii_lowercase();
    (description.contains("AADSTS50011") || lower.contains("redirect_uri") || lower.contains("reply url")).then(|| {
        format!(
            "<p>The redirect URI sent was <code>{0}</code>. Register exactly this URL in Azure: App registrations &rarr; your app &rarr; Authentication &rarr; Web &rarr; Redirect URIs.</p>",
            escape_html(redirect_uri)
        )
    })
}

/// A callback that could not even be read.
struct BadCallback(&'static str);

impl BadCallback {
    fn render(self, facts: &RequestFacts<'_>, auth: &Auth) -> Response<Body> {
        auth.login_error_page(
            StatusCode::BAD_REQUEST,
            "bad_callback",
            "Sign-in did not complete",
            self.0,
            "/",
            None,
            facts,
        )
    }
}

/// Parameters of a callback: from the query (GET, response_mode=query) or the
/// form body (POST, response_mode=form_post). Also returns the body read.
async fn callback_params(
    parts: &http::request::Parts,
    body: Body,
) -> Result<(std::collections::HashMap<String, String>, Bytes), BadCallback> {
    let mut params: std::collections::HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let mut body_bytes = Bytes::new();
    if parts.method == Method::POST {
        body_bytes = read_limited(body, MAX_CALLBACK_BODY)
            .await
            .ok_or(BadCallback(
                "The sign-in response is too large or was cut off.",
            ))?;
        let is_form = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            params.extend(url::form_urlencoded::parse(&body_bytes).into_owned());
        }
    } else if parts.method != Method::GET && parts.method != Method::HEAD {
        return Err(BadCallback(
            "The sign-in response must arrive by GET or POST.",
        ));
    }
    Ok((params, body_bytes))
}

/// Entra's `sid` claim (optional claim "sid": the IdP's session, named by its
/// front-channel logout) of an ID token that has already been validated.
fn entra_sid(id_token: &str) -> Option<String> {
    let payload = id_token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Sid {
        sid: Option<String>,
    }
    let sid = serde_json::from_slice::<Sid>(&json).ok()?.sid?;
    // A GUID in practice; anything long or odd is not worth indexing.
    (!sid.is_empty() && sid.len() <= 128).then_some(sid)
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The whole body, or None when it fails or exceeds `limit` bytes.
async fn read_limited(mut body: Body, limit: usize) -> Option<Bytes> {
    let mut buffer = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if buffer.len() + data.len() > limit {
                return None;
            }
            buffer.extend_from_slice(&data);
        }
    }
    Some(buffer.freeze())
}

/// The `rd` of a sign_in query. When `rd=` leads the query, everything after it
/// is the target, so that proxies which cannot URL-encode (nginx:
/// `sign_in?rd=$request_uri`) keep the target's own `&`-separated query.
fn redirect_target(query: &str) -> String {
    if let Some(rest) = query.strip_prefix("rd=") {
        if rest.starts_with('/') {
            // Raw, unencoded: keep as is (sanitised by the caller).
            return rest.to_string();
        }
        return percent_encoding::percent_decode_str(rest)
            .decode_utf8_lossy()
            .into_owned();
    }
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "rd")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| "/".into())
}

/// A top-level browser navigation (may be redirected to a login page), as
/// opposed to XHR/fetch, API clients and WebSocket handshakes.
pub fn is_browser_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    if headers.contains_key(http::header::UPGRADE) {
        return false;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(mode) = header("sec-fetch-mode") {
        return mode.eq_ignore_ascii_case("navigate")
            && header("sec-fetch-dest")
                .is_none_or(|d| matches!(d, "document" | "iframe" | "frame" | "empty"));
    }
    pages::wants_html(headers)
}

/// Whether a request provably came from the gateway's own origin.
enum SameOrigin {
    Yes,
    No,
    /// No fetch metadata and no `Origin` (old browsers' GETs, scripts).
    Unknown,
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut response = Response::new(empty_body());
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn html(status: StatusCode, text: &str) -> Response<Body> {
    pages::html(status, text.to_string())
}

fn page(title: &str, body_html: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}}
h1{{font-size:1.4rem}}p.meta{{color:#777;font-size:.85rem}}a{{color:#0067b8}}code{{background:#f3f3f3;padding:.1rem .3rem}}</style></head>
<body><h1>{title}</h1>{body_html}</body></html>
"#,
        title = escape_html(title)
    )
}

fn simple_page(title: &str, text: &str, link: &str, link_text: &str) -> String {
    page(
        title,
        &format!(
            "<p>{}</p><p><a href=\"{}\">{}</a></p>",
            escape_html(text),
            escape_html(link),
            escape_html(link_text)
        ),
    )
}

fn too_many_logins(
    refusal: Refusal,
    limits: &RateLimitConfig,
    facts: &RequestFacts<'_>,
) -> Response<Body> {
    let seconds = refusal.retry_after.as_secs().max(1);
    metrics::rate_limited(refusal.reason.metric());
    tracing::warn!(request_id = %facts.request_id, client = %facts.client.client_ip,
        reason = refusal.reason.as_str(), retry_after = seconds, "sign-in limit reached");
    let (code, title, why) = match refusal.reason {
        LimitReason::AddressSignIns => (
            "too_many_logins",
            "Too many sign-ins from your network",
            format!(
                "More than {} people signed in from your network address in a short time (at most {} a minute are allowed from one address).",
                limits.login_burst, limits.login_per_minute
            ),
        ),
        LimitReason::AddressFailures => (
            "too_many_failed_logins",
            "Too many failed sign-ins from your network",
            format!(
                "Too many sign-ins from your network address failed (at most {} a minute are allowed from one address).",
                limits.failed_per_minute
            ),
        ),
        LimitReason::Global => (
            "sign_in_busy",
            "The gateway is busy signing people in",
            format!(
                "More people are signing in right now than the gateway lets through (at most {} a minute over all addresses).",
                limits.global_per_minute
            ),
        ),
    };
    let detail = format!("{why} Try again in {seconds} seconds.");
    let mut response = ErrorPage {
        status: StatusCode::TOO_MANY_REQUESTS,
        code,
        title,
        detail: &detail,
        request_id: facts.request_id,
    }
    .render(facts.wants_html);
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

fn bad_host(facts: &RequestFacts<'_>) -> Response<Body> {
    ErrorPage {
        status: StatusCode::BAD_REQUEST,
        code: "bad_host",
        title: "Bad request",
        detail:
            "The request's Host header is missing, malformed, or not one of server.allowed_hosts.",
        request_id: facts.request_id,
    }
    .render(facts.wants_html)
}
