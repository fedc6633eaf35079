//! A development OpenID Connect provider that behaves like Microsoft Entra ID
//! v2.0 — for `oidc-gateway demo` (a human types any user name) and as the mock
//! IdP of the integration tests (auto-login, key rotation, misbehaviour knobs).
//!
//! **Never for production:** it accepts any user name without a password,
//! serves plain HTTP, and binds loopback addresses only. Every page it renders
//! says "NOT Microsoft".
//!
//! Endpoints (`T` is the tenant id; in multi-tenant mode also `organizations`
//! or `common`), all on `http://127.0.0.1:PORT`:
//!
//! | path | what |
//! |---|---|
//! | `GET /T/v2.0/.well-known/openid-configuration` | discovery (Entra's fields) |
//! | `GET /T/discovery/v2.0/keys` | JWKS (counted, see [`DevIdp::jwks_requests`]) |
//! | `GET\|POST /T/oauth2/v2.0/authorize` | authorization request, login form |
//! | `POST /T/oauth2/v2.0/token` | `authorization_code` (PKCE), `refresh_token` and on-behalf-of grants |
//! | `POST /v1.0/me/getMemberObjects` | Microsoft Graph's group lookup (overage), see `graph` |
//! | `GET\|POST /T/oauth2/v2.0/logout` | end session, back to `post_logout_redirect_uri` |
//!
//! Where it is stricter than Entra (on purpose, so the gateway cannot rely on
//! laxness): `response_type` must be exactly `code` (no hybrid or implicit
//! flows, although discovery lists them like Entra does); PKCE with `S256` is
//! required for every authorization request; repeated parameters are refused.
//! Without a domain, a user name gets `@devidp.example` in `preferred_username`.
//! There is no single sign-on session: every interactive request shows the form
//! (and `prompt=none` answers `login_required`) unless `auto_login` is set.

mod authorize;
mod client_assertion;
mod graph;
mod keys;
mod obo;
mod token;
mod tokens;
mod web;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::graph::{generated_groups, GraphMode, OVERAGE_LIMIT};
use self::keys::KeyRing;
use self::tokens::Login;
use self::web::Params;
use crate::pages::escape_html;
use crate::Body;

/// How long an authorization code may be redeemed (Entra: 10 minutes).
const CODE_LIFETIME: Duration = Duration::from_secs(600);

/// The JWS algorithm of the IdP's signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    /// RSA PKCS#1 v1.5 with SHA-256 (Entra's algorithm); keys come from
    /// [`DevIdpOptions::rsa_keys_pem`] because ring cannot generate RSA keys.
    Rs256,
    /// ECDSA P-256 with SHA-256; keys are generated at start and on rotation.
    Es256,
}

/// How the development IdP behaves.
#[derive(Debug, Clone)]
pub struct DevIdpOptions {
    /// The tenant id: the `tid` claim and the tenant path segment.
    pub tenant_id: String,
    /// The one registered application (client) id.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: String,
    /// Publish discovery under `/organizations/v2.0` with Entra's issuer template
    /// `http://127.0.0.1:PORT/{tenantid}/v2.0`; tokens still carry the tenant's
    /// own `iss` and `tid`.
    pub multi_tenant: bool,
    /// PKCS#8 PEM RSA keys for RS256, in rotation order; the first signs at start.
    pub rsa_keys_pem: Vec<String>,
    /// The signing algorithm.
    pub alg: SigningAlg,
    /// The default `groups` claim (group object ids); empty: no `groups` claim.
    pub groups: Vec<String>,
    /// `Some(user)`: `authorize` skips the form and signs in this user at once.
    pub auto_login: Option<String>,
    /// Include an `email` claim (Entra often omits it).
    pub email_claim: bool,
    /// `exp - iat` of ID and access tokens, and `expires_in`.
    pub token_lifetime: Duration,
    /// Certificates (PEM) registered for the app: client assertions signed with
    /// their keys are accepted (`private_key_jwt`).
    pub client_certificates: Vec<String>,
    /// The subject of the app's federated credential, whose issuer is this IdP's
    /// workload issuer ([`DevIdp::workload_issuer`]).
    pub federated_subject: Option<String>,
    /// Include Entra's optional claim `sid` (the IdP session of the sign-in,
    /// which front-channel logout names).
    pub sid_claim: bool,
    /// Declare this issuer (discovery's `issuer`, the tokens' `iss`, the keys'
    /// `issuer`) instead of `http://127.0.0.1:PORT/<tenant>/v2.0`, as a tenant in
    /// another cloud or of Entra External ID does
    /// (`https://<tenant>.ciamlogin.com/<tenant>/v2.0`). A gateway then reads
    /// discovery from [`DevIdp::discovery_url`] (`oidc.discovery_url`).
    pub issuer: Option<String>,
}

impl Default for DevIdpOptions {
    fn default() -> Self {
        DevIdpOptions {
            tenant_id: "00000000-0000-0000-0000-00000000d3e0".to_string(),
            client_id: "oidc-gateway-demo".to_string(),
            client_secret: "dev-secret".to_string(),
            multi_tenant: false,
            rsa_keys_pem: Vec::new(),
            alg: SigningAlg::Es256,
            groups: Vec::new(),
            auto_login: None,
            email_claim: false,
            token_lifetime: Duration::from_secs(3600),
            client_certificates: Vec::new(),
            federated_subject: None,
            sid_claim: false,
            issuer: None,
        }
    }
}

/// How a (tweaked) ID token is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignAs {
    /// With the active key, header as the tweak left it.
    ActiveKey,
    /// `alg: none` (and no `kid`), empty signature. Tests only (`devidp-forgeries`).
    #[cfg(feature = "devidp-forgeries")]
    Unsigned,
    /// `alg: HS256`, HMAC-SHA256 with this secret (the algorithm-confusion attack).
    /// Tests only (`devidp-forgeries`).
    #[cfg(feature = "devidp-forgeries")]
    Hs256(Vec<u8>),
    /// With the active key, then one signature byte flipped.
    CorruptSignature,
    /// With a key that is not in the JWKS (`alg`/`kid` set to that key's): ES256
    /// a fresh key; RS256 the first PEM key not yet published, else the active
    /// key's material under a new random `kid`.
    UnpublishedKey,
}

/// Rewrites the JOSE header and the claims of the ID tokens the token endpoint
/// issues, and chooses how to sign them.
pub type TokenTweak =
    Arc<dyn Fn(&mut Map<String, Value>, &mut Map<String, Value>) -> SignAs + Send + Sync>;

/// How the token endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenEndpointMode {
    /// As Entra does.
    #[default]
    Normal,
    /// This status with `{"error":"server_error","error_description":"AADSTS50000: …"}`.
    Status(u16),
    /// Never answers (the request is held until the IdP stops).
    Hang,
}

/// A single-use authorization code.
#[derive(Debug, Clone)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    login: Login,
    issued_at: Instant,
    used: bool,
}

/// What a refresh token stands for.
#[derive(Debug, Clone)]
struct RefreshGrant {
    client_id: String,
    login: Login,
    issued_at: Instant,
}

/// How long a refresh token of the development IdP can be redeemed.
const REFRESH_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Expired grants are forgotten at most this often (not on every insert: that
/// made a long login run quadratic).
const PRUNE_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Grants {
    codes: HashMap<String, CodeGrant>,
    refresh: HashMap<String, RefreshGrant>,
    last_prune: Option<Instant>,
}

impl Grants {
    /// Stores a code (used codes stay until they expire, so that a replay is
    /// recognised as one).
    fn insert_code(&mut self, code: String, grant: CodeGrant) {
        self.prune();
        self.codes.insert(code, grant);
    }

    fn insert_refresh(&mut self, token: String, grant: RefreshGrant) {
        self.prune();
        self.refresh.insert(token, grant);
    }

    /// The refresh grant for `token`, while it is valid.
    fn refresh_grant(&self, token: &str) -> Option<RefreshGrant> {
        self.refresh
            .get(token)
            .filter(|g| g.issued_at.elapsed() <= REFRESH_LIFETIME)
            .cloned()
    }

    fn prune(&mut self) {
        let now = Instant::now();
        if self
            .last_prune
            .is_some_and(|at| now.duration_since(at) < PRUNE_EVERY)
        {
            return;
        }
        self.last_prune = Some(now);
        self.codes
            .retain(|_, g| now.duration_since(g.issued_at) <= CODE_LIFETIME);
        self.refresh
            .retain(|_, g| now.duration_since(g.issued_at) <= REFRESH_LIFETIME);
    }
}

/// The test knobs.
#[derive(Default)]
struct Knobs {
    tweak: Option<TokenTweak>,
    token_mode: TokenEndpointMode,
    authorize_error: Option<(String, String)>,
    user_claims: HashMap<String, Map<String, Value>>,
    /// Published as every key's `issuer` instead of the IdP's own.
    key_issuer: Option<String>,
    graph_mode: GraphMode,
    /// `Some((error, description))`: the token endpoint refuses every grant so.
    token_error: Option<(u16, String, String)>,
}

/// State shared by the handle and the server.
struct Shared {
    options: DevIdpOptions,
    /// `http://127.0.0.1:PORT`.
    base_url: String,
    keys: Mutex<KeyRing>,
    grants: Mutex<Grants>,
    knobs: Mutex<Knobs>,
    token_requests: AtomicUsize,
    jwks_requests: AtomicUsize,
    logouts: Mutex<Vec<Option<String>>>,
    certificates: Vec<client_assertion::RegisteredCertificate>,
    seen_assertions: Mutex<client_assertion::SeenAssertions>,
    /// The client assertions received, in order.
    assertions: Mutex<Vec<String>>,
    /// The IdP session (`sid`) of each user's latest sign-in.
    sids: Mutex<HashMap<String, String>>,
    /// Groups per user and the access tokens issued, for the Graph stand-in.
    directory: Mutex<graph::Directory>,
    graph_requests: AtomicUsize,
    claim_source_requests: AtomicUsize,
    obo_requests: AtomicUsize,
    stop: CancellationToken,
}

/// Locks a mutex; a panic elsewhere never makes the IdP unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `N` random bytes. Should the system RNG ever fail, a hash of a counter and
/// the clock stands in (acceptable for a development IdP only).
fn random_token<const N: usize>() -> [u8; N] {
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; N];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        for (i, chunk) in bytes.chunks_mut(32).enumerate() {
            let seed = format!(
                "{}|{:?}|{i}",
                FALLBACK.fetch_add(1, Ordering::Relaxed),
                SystemTime::now()
            );
            let hash = digest(&SHA256, seed.as_bytes());
            chunk.copy_from_slice(&hash.as_ref()[..chunk.len()]);
        }
    }
    bytes
}

/// A running development IdP. Dropping it stops the server (and releases
/// requests held by [`TokenEndpointMode::Hang`]).
pub struct DevIdp {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl DevIdp {
    /// Starts the IdP on `127.0.0.1:0`.
    pub async fn start(options: DevIdpOptions) -> io::Result<DevIdp> {
        DevIdp::start_on(options, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts the IdP on `addr`, which must be a loopback address.
    pub async fn start_on(options: DevIdpOptions, addr: SocketAddr) -> io::Result<DevIdp> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the development IdP listens on loopback addresses only, not {addr}"),
            ));
        }
        check_options(&options)?;
        let keys = KeyRing::new(options.alg, &options.rsa_keys_pem)?;
        let certificates = options
            .client_certificates
            .iter()
            .map(|pem| client_assertion::RegisteredCertificate::from_pem(pem))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            options,
            base_url: format!("http://{addr}"),
            keys: Mutex::new(keys),
            grants: Mutex::new(Grants::default()),
            knobs: Mutex::new(Knobs::default()),
            token_requests: AtomicUsize::new(0),
            jwks_requests: AtomicUsize::new(0),
            logouts: Mutex::new(Vec::new()),
            certificates,
            seen_assertions: Mutex::new(Default::default()),
            assertions: Mutex::new(Vec::new()),
            sids: Mutex::new(HashMap::new()),
            directory: Mutex::new(Default::default()),
            graph_requests: AtomicUsize::new(0),
            claim_source_requests: AtomicUsize::new(0),
            obo_requests: AtomicUsize::new(0),
            stop,
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(DevIdp {
            shared,
            addr,
            task: Some(task),
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The options the IdP runs with.
    pub fn options(&self) -> &DevIdpOptions {
        &self.shared.options
    }

    /// What a gateway puts in `oidc.issuer`: `http://127.0.0.1:PORT/<tenant>/v2.0`,
    /// or `http://127.0.0.1:PORT/organizations/v2.0` in multi-tenant mode.
    pub fn issuer(&self) -> String {
        if self.shared.options.multi_tenant {
            format!("{}/organizations/v2.0", self.shared.base_url)
        } else {
            self.shared.token_issuer()
        }
    }

    /// The `iss` of the tokens: `http://127.0.0.1:PORT/<tenant>/v2.0` (also in
    /// multi-tenant mode).
    pub fn token_issuer(&self) -> String {
        self.shared.token_issuer()
    }

    /// The key id that signs tokens now.
    pub fn active_kid(&self) -> String {
        lock(&self.shared.keys).active().kid
    }

    /// A new key becomes the signing key (the next `rsa_keys_pem` entry, wrapping
    /// around, or a fresh P-256 key); the previous key stays published.
    pub fn rotate_keys(&self) {
        lock(&self.shared.keys).rotate();
    }

    /// Only the active key stays in the JWKS.
    pub fn retire_old_keys(&self) {
        lock(&self.shared.keys).retire();
    }

    /// Applies `tweak` to every ID token the token endpoint issues from now on
    /// (`None`: normal tokens again).
    pub fn set_token_tweak(&self, tweak: Option<TokenTweak>) {
        lock(&self.shared.knobs).tweak = tweak;
    }

    /// How the token endpoint answers from now on.
    pub fn set_token_endpoint(&self, mode: TokenEndpointMode) {
        lock(&self.shared.knobs).token_mode = mode;
    }

    /// `Some((error, description))`: `authorize` redirects back with
    /// `error=…&error_description=…&state=…` (e.g. `access_denied`,
    /// `"AADSTS65004: User declined to consent to access the app."`).
    pub fn set_authorize_error(&self, error: Option<(String, String)>) {
        lock(&self.shared.knobs).authorize_error = error;
    }

    /// Extra claims merged into every ID token of `user` (a `null` value removes
    /// a claim, e.g. `groups`); `None` clears them.
    pub fn set_user_override(&self, user: &str, claims: Option<Map<String, Value>>) {
        let mut knobs = lock(&self.shared.knobs);
        match claims {
            Some(claims) => knobs.user_claims.insert(user.to_string(), claims),
            None => knobs.user_claims.remove(user),
        };
    }

    /// The "nOAuth" case: `user`'s ID tokens carry `email` = `address` without
    /// `xms_edov` — what an admin of the user's own tenant can set for any
    /// account without owning the address's domain. Other overrides stay.
    pub fn set_unverified_email(&self, user: &str, address: &str) {
        let mut knobs = lock(&self.shared.knobs);
        let claims = knobs.user_claims.entry(user.to_string()).or_default();
        claims.insert("email".into(), Value::String(address.into()));
        claims.insert("xms_edov".into(), Value::Null);
    }

    /// Every JWKS key names `issuer` as its own (Entra's per-key `issuer`), e.g.
    /// another tenant's; None: the IdP's issuer, as Entra publishes it.
    pub fn set_key_issuer(&self, issuer: Option<String>) {
        lock(&self.shared.knobs).key_issuer = issuer;
    }

    /// Where discovery is served for the IdP's tenant (what `oidc.discovery_url`
    /// names when the declared issuer is not this address).
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            self.shared.base_url, self.shared.options.tenant_id
        )
    }

    /// How the Graph stand-in (`getMemberObjects`) answers from now on.
    pub fn set_graph_mode(&self, mode: GraphMode) {
        lock(&self.shared.knobs).graph_mode = mode;
    }

    /// `Some((status, error, description))`: the token endpoint refuses every
    /// grant with this Entra-shaped error (e.g. `(401, "invalid_client",
    /// "AADSTS7000222: The provided client secret keys are expired.")`), with
    /// trace and correlation ids like Entra's; `None`: normal again.
    pub fn set_token_error(&self, error: Option<(u16, String, String)>) {
        lock(&self.shared.knobs).token_error = error;
    }

    /// Microsoft Graph of this IdP (`oidc.graph_url`): `http://127.0.0.1:PORT`.
    pub fn graph_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// How many requests reached the Graph stand-in.
    pub fn graph_requests(&self) -> usize {
        self.shared.graph_requests.load(Ordering::SeqCst)
    }

    /// How many on-behalf-of grants were answered (Graph tokens for bearer callers).
    pub fn on_behalf_of_grants(&self) -> usize {
        self.shared.obo_requests.load(Ordering::SeqCst)
    }

    /// How many requests reached the `_claim_sources` endpoint of overage
    /// tokens (a client must never call it).
    pub fn claim_source_requests(&self) -> usize {
        self.shared.claim_source_requests.load(Ordering::SeqCst)
    }

    /// How many requests reached the token endpoint.
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// How many JWKS documents were fetched.
    pub fn jwks_requests(&self) -> usize {
        self.shared.jwks_requests.load(Ordering::SeqCst)
    }

    /// The `id_token_hint` of every logout request received, in order.
    pub fn logouts(&self) -> Vec<Option<String>> {
        lock(&self.shared.logouts).clone()
    }

    /// The client assertions the token endpoint received, in order.
    pub fn client_assertions(&self) -> Vec<String> {
        lock(&self.shared.assertions).clone()
    }

    /// The issuer of workload tokens (what a Kubernetes cluster's service-account
    /// issuer is to a federated credential): `http://127.0.0.1:PORT/workload`.
    pub fn workload_issuer(&self) -> String {
        self.shared.workload_issuer()
    }

    /// A workload token for `subject` (as a platform writes to the federated
    /// token file): `aud = api://AzureADTokenExchange`, one hour, signed with
    /// the active key.
    pub fn mint_workload_token(&self, subject: &str) -> String {
        let now = tokens::now_secs();
        let claims: Map<String, Value> = serde_json::from_value(json!({
            "iss": self.shared.workload_issuer(),
            "sub": subject,
            "aud": [client_assertion::FEDERATION_AUDIENCE],
            "iat": now, "nbf": now, "exp": now + 3600,
            "jti": web::random_uuid(),
        }))
        .unwrap_or_default();
        self.shared
            .sign(self.shared.default_header(), claims, SignAs::ActiveKey)
    }

    /// Revokes every refresh token issued so far (Entra: a password change,
    /// an admin's "revoke sessions"): redeeming one answers `invalid_grant`.
    pub fn revoke_refresh_tokens(&self) {
        lock(&self.shared.grants).refresh.clear();
    }

    /// The IdP session id (`sid`) of `user`'s latest sign-in.
    pub fn sid_of(&self, user: &str) -> Option<String> {
        lock(&self.shared.sids).get(user).cloned()
    }

    /// The `sub` claim the IdP issues for `user` (pairwise with the client id).
    pub fn subject(&self, user: &str) -> String {
        tokens::subject(user, &self.shared.options.client_id)
    }

    /// The `oid` claim the IdP issues for `user`.
    pub fn object_id(&self, user: &str) -> String {
        tokens::object_id(user)
    }

    /// A validly signed ID token for `user` with the default groups, the user's
    /// override and then `extra` merged in (a `null` removes a claim). The token
    /// tweak does not apply.
    pub fn mint_id_token(
        &self,
        user: &str,
        nonce: Option<&str>,
        extra: Map<String, Value>,
    ) -> String {
        let login = Login {
            user: user.to_string(),
            groups: self.shared.options.groups.clone(),
            scope: "openid profile".to_string(),
            sid: String::new(),
            auth_time: tokens::now_secs(),
        };
        let mut claims = self.shared.id_token_claims(&login, nonce);
        tokens::merge_claims(&mut claims, &extra);
        let header = self.shared.default_header();
        self.shared.sign(header, claims, SignAs::ActiveKey)
    }

    /// Stops the server and waits for its accept loop to end.
    pub async fn shutdown(mut self) {
        self.shared.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DevIdp {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Refuses options that would make unusable URLs.
fn check_options(options: &DevIdpOptions) -> io::Result<()> {
    let tenant_ok = !options.tenant_id.is_empty()
        && options
            .tenant_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    let invalid = |m: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, m.to_string()));
    if !tenant_ok || matches!(options.tenant_id.as_str(), "organizations" | "common") {
        return invalid("dev IdP: tenant_id must be a tenant id (letters, digits, '-', '.', '_')");
    }
    if options.client_id.is_empty() || options.client_secret.is_empty() {
        return invalid("dev IdP: client_id and client_secret must not be empty");
    }
    Ok(())
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "dev IdP accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let stop = shared.stop.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// The endpoint a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Discovery,
    Keys,
    Authorize,
    Token,
    Logout,
}

impl Shared {
    fn workload_issuer(&self) -> String {
        format!("{}/workload", self.base_url)
    }

    /// Splits `/T/rest` into tenant segment and endpoint, for a tenant this IdP serves.
    fn route<'p>(&self, path: &'p str) -> Option<(&'p str, Endpoint)> {
        let (tenant, rest) = path.strip_prefix('/')?.split_once('/')?;
        let multi = self.options.multi_tenant && matches!(tenant, "organizations" | "common");
        if tenant != self.options.tenant_id && !multi {
            return None;
        }
        let endpoint = match rest {
            "v2.0/.well-known/openid-configuration" => Endpoint::Discovery,
            "discovery/v2.0/keys" => Endpoint::Keys,
            "oauth2/v2.0/authorize" => Endpoint::Authorize,
            "oauth2/v2.0/token" => Endpoint::Token,
            "oauth2/v2.0/logout" => Endpoint::Logout,
            _ => return None,
        };
        Some((tenant, endpoint))
    }
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    if path == "/" {
        return home(shared);
    }
    if graph::serves(&path) {
        let post = request.method() == Method::POST;
        let query = request.uri().query().unwrap_or_default().to_string();
        let headers = request.headers().clone();
        return graph::handle(shared, &path, &query, post, &headers).await;
    }
    let Some((tenant, endpoint)) = shared.route(&path) else {
        return web::text(StatusCode::NOT_FOUND, "not found (development IdP)\n");
    };
    let method = request.method().clone();
    let query = request.uri().query().unwrap_or_default().to_string();
    let (parts, body) = request.into_parts();
    let body = if method == Method::POST {
        web::read_body(body).await
    } else {
        Some(Vec::new())
    };
    match (endpoint, &method) {
        (Endpoint::Discovery, &Method::GET) => discovery(shared, tenant),
        (Endpoint::Keys, &Method::GET) => {
            shared.jwks_requests.fetch_add(1, Ordering::SeqCst);
            let issuer = lock(&shared.knobs)
                .key_issuer
                .clone()
                .unwrap_or_else(|| shared.issuer_for(tenant));
            web::json(StatusCode::OK, &lock(&shared.keys).jwks(&issuer))
        }
        (Endpoint::Token, &Method::POST) => {
            shared.token_requests.fetch_add(1, Ordering::SeqCst);
            token::token(shared, &parts.headers, body).await
        }
        (Endpoint::Token, _) => web::entra_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "AADSTS900561: The endpoint only accepts POST requests.",
        ),
        (Endpoint::Authorize | Endpoint::Logout, &Method::GET | &Method::POST) => {
            let raw = if method == Method::POST {
                body.unwrap_or_default()
            } else {
                query.into_bytes()
            };
            let params = match Params::parse(&raw) {
                Ok(params) => params,
                Err(name) => return web::error_page(
                    StatusCode::BAD_REQUEST,
                    "AADSTS9002313",
                    "Invalid request. Request is malformed or invalid: a parameter is repeated.",
                    Some(&name),
                ),
            };
            if endpoint == Endpoint::Logout {
                logout(shared, &params)
            } else {
                authorize::authorize(shared, &path, &params, method == Method::POST)
            }
        }
        _ => web::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

impl Shared {
    /// The issuer published under `tenant`: the tenant's own, or for
    /// `organizations`/`common` Entra's template with `{tenantid}` in its place.
    fn issuer_for(&self, tenant: &str) -> String {
        let issuer = self.token_issuer();
        if tenant == self.options.tenant_id {
            issuer
        } else {
            issuer.replace(&self.options.tenant_id, "{tenantid}")
        }
    }
}

/// The OpenID configuration for `tenant` (Entra's document, local URLs).
fn discovery(shared: &Shared, tenant: &str) -> Response<Body> {
    let base = &shared.base_url;
    let issuer = shared.issuer_for(tenant);
    let alg = match shared.options.alg {
        SigningAlg::Rs256 => "RS256",
        SigningAlg::Es256 => "ES256",
    };
    let document = json!({
        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported":
            ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": [alg],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": issuer,
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/{tenant}/oauth2/v2.0/logout"),
        "claims_supported": [
            "sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name",
            "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username",
            "name", "tid", "ver", "at_hash", "c_hash", "email", "auth_time"
        ],
        "code_challenge_methods_supported": ["plain", "S256"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "devidp.example",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    });
    web::json(StatusCode::OK, &document)
}

/// Ends the (non-existent) session: records the `id_token_hint`, then goes back
/// to a valid `post_logout_redirect_uri` (with `state`) or shows a page.
fn logout(shared: &Shared, params: &Params) -> Response<Body> {
    lock(&shared.logouts).push(params.get("id_token_hint").map(str::to_string));
    match params.non_empty("post_logout_redirect_uri") {
        Some(uri) if authorize::redirect_uri_allowed(uri) => {
            let location = match params.get("state") {
                Some(state) => web::append_query(uri, &web::form_encode(&[("state", state)])),
                None => uri.to_string(),
            };
            web::redirect(&location)
        }
        other => {
            let ignored = other
                .map(|uri| {
                    format!(
                        "<p>The post-logout redirect URI <code>{}</code> is not allowed and was ignored.</p>",
                        escape_html(uri)
                    )
                })
                .unwrap_or_default();
            let content = format!("<p>You have signed out of the development IdP.</p>{ignored}");
            web::html(StatusCode::OK, web::page("You have signed out", &content))
        }
    }
}

/// `/`: what this server is.
fn home(shared: &Shared) -> Response<Body> {
    let tenant = &shared.options.tenant_id;
    let discovery = format!("/{tenant}/v2.0/.well-known/openid-configuration");
    let content = format!(
        "<p>Issuer: <code>{issuer}</code></p><p>Discovery: <a href=\"{d}\">{d}</a></p>",
        issuer = escape_html(&shared.token_issuer()),
        d = escape_html(&discovery),
    );
    web::html(
        StatusCode::OK,
        web::page("oidc-gateway development IdP — NOT Microsoft", &content),
    )
}
