//! Configuration: schema, layering (TOML file, then `OIDC_GATEWAY__SECTION__KEY`
//! environment overrides, then `*_file` secrets) and validation.
//!
//! The environment is passed in as a list of pairs so that tests never touch the
//! process environment. Every error names the key, where its value came from,
//! what is wrong and how to fix it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use http::Uri;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// Prefix of environment overrides: `OIDC_GATEWAY__OIDC__CLIENT_SECRET`.
pub const ENV_PREFIX: &str = "OIDC_GATEWAY__";
/// Environment variable naming the config file (same as `--config`).
pub const ENV_CONFIG_PATH: &str = "OIDC_GATEWAY_CONFIG";
/// The config file read when neither `--config` nor `OIDC_GATEWAY_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    pub oidc: OidcConfig,
    pub upstream: UpstreamConfig,
    /// Named upstreams besides the default `[upstream]`, chosen by `[[routes]] upstream = "<name>"`.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub session: SessionConfig,
    #[serde(default)]
    pub headers: HeadersConfig,
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub access: AccessConfig,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub rustdesk: RustdeskConfig,
    #[serde(default)]
    pub bearer: BearerConfig,
    #[serde(default)]
    pub assertion: AssertionConfig,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    #[serde(default)]
    pub acme: AcmeConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub log: LogConfig,
}

/// Who may pass once signed in. Every non-empty list must be satisfied (AND);
/// within a list, any entry will do (OR). All empty: any signed-in user of the issuer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Tenant IDs (`tid`).
    pub tenants: Vec<String>,
    /// Exact domains of an address Entra vouches for (`access::vouched_addresses`:
    /// a member's UPN, an `email` with `xms_edov: true`).
    pub email_domains: Vec<String>,
    /// Object ids (`oid`, whole), or addresses (with `@`) Entra vouches for; case-insensitive.
    pub users: Vec<String>,
    /// Group object IDs (`groups` claim); any of them.
    pub groups: Vec<String>,
    /// App roles (`roles` claim); any of them.
    pub roles: Vec<String>,
}

impl AccessConfig {
    /// Who these rules let in, in words (for `check`): the default — no rules — is
    /// every user of the tenant(s) the issuer accepts.
    pub fn describe(&self, allowed_tenants: &[String]) -> String {
        if self.is_empty() {
            return match allowed_tenants {
                [] => "every user of the tenant in oidc.issuer who signs in (no [access] rules; \
                       restrict with [access] or Azure's \"Assignment required\")"
                    .to_string(),
                tenants => format!(
                    "every user of the tenants {} who signs in (no [access] rules; restrict with \
                     [access] or Azure's \"Assignment required\")",
                    tenants.join(", ")
                ),
            };
        }
        let rules: Vec<String> = [
            ("tenants", &self.tenants),
            ("email domains", &self.email_domains),
            ("users", &self.users),
            ("groups", &self.groups),
            ("roles", &self.roles),
        ]
        .iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(name, list)| format!("{name} {}", list.join(" or ")))
        .collect();
        format!("signed-in users matching all of: {}", rules.join("; "))
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
            && self.email_domains.is_empty()
            && self.users.is_empty()
            && self.groups.is_empty()
            && self.roles.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    /// Forwarded without sign-in and without identity headers.
    Public,
    /// Sign-in required; [access] rules plus this route's `allow` rules.
    #[default]
    Authenticated,
    /// Always 403.
    Deny,
}

/// One `[[routes]]` entry; the first match (method + path) decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Anchored pattern on the normalized path: `/exact`, `/a/*/c`, `/assets/*.css`, `/admin/**`.
    pub path: String,
    /// Empty: every method.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub action: RouteAction,
    /// Additional rules for this route (on top of [access]).
    #[serde(default)]
    pub allow: AccessConfig,
    /// Default: case-sensitive for public routes, case-insensitive for the others
    /// (a stricter rule must not be dodged with /ADMIN on a case-insensitive upstream).
    #[serde(default)]
    pub case_insensitive: Option<bool>,
    /// The `[upstreams.<name>]` this route is forwarded to; default: `[upstream]`.
    #[serde(default)]
    pub upstream: Option<String>,
}

/// The RustDesk Server Pro preset: its desktop clients' API and WebSocket paths
/// pass straight to the console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RustdeskConfig {
    pub enabled: bool,
    pub api_paths: Vec<String>,
    pub websocket_paths: Vec<String>,
    /// Callbacks whose state the gateway never issued go to the console (RustDesk's own OIDC).
    pub forward_foreign_callbacks: bool,
    /// hbbs's WebSocket endpoint (port 21118): `/ws/id` goes there.
    pub id_server: Option<String>,
    /// hbbr's WebSocket endpoint (port 21119): `/ws/relay` goes there.
    pub relay_server: Option<String>,
}

impl Default for RustdeskConfig {
    fn default() -> Self {
        RustdeskConfig {
            enabled: false,
            api_paths: [
                "/api/login",
                "/api/logout",
                "/api/currentUser",
                "/api/login-options",
                "/api/oidc/auth",
                "/api/oidc/auth-query",
                "/api/heartbeat",
                "/api/sysinfo",
                "/api/sysinfo_ver",
                "/api/switch-grant",
                "/api/audit/**",
                "/api/record",
                "/api/ab*",
                "/api/ab/**",
                "/api/device-group/**",
                "/api/users",
                "/api/peers",
                "/api/devices/**",
            ]
            .map(String::from)
            .to_vec(),
            websocket_paths: vec!["/ws/id".into(), "/ws/relay".into()],
            forward_foreign_callbacks: true,
            id_server: None,
            relay_server: None,
        }
    }
}

/// API clients with `Authorization: Bearer <JWT>` from the same issuer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BearerConfig {
    pub enabled: bool,
    /// Accepted `aud` values; empty: the client id and `api://<client id>`.
    pub audiences: Vec<String>,
}

/// The signed identity assertion sent upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssertionConfig {
    pub enabled: bool,
    pub header: String,
    /// `iss` of the assertion; default: server.public_url, else "oidc-gateway".
    pub issuer: Option<String>,
    /// `aud` of the assertion; default: the upstream's origin.
    pub audience: Option<String>,
    /// PKCS#8 PEM P-256 key; default: a new key at every start.
    pub key_file: Option<PathBuf>,
    #[serde(deserialize_with = "duration")]
    pub lifetime: Duration,
}

impl Default for AssertionConfig {
    fn default() -> Self {
        AssertionConfig {
            enabled: true,
            header: "X-Gateway-Assertion".into(),
            issuer: None,
            audience: None,
            key_file: None,
            lifetime: Duration::from_secs(60),
        }
    }
}

/// The sign-in limiter: what costs (token exchanges, failed callbacks), per
/// client address (IPv4 exactly, IPv6 by `ipv6_prefix`) and over all addresses.
/// Page views, login starts and signed-in traffic are never limited.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sign-ins (code exchanges at the token endpoint) per minute per address; 0: no limit.
    pub login_per_minute: u32,
    /// Sign-ins an address may make at once before the rate applies.
    pub login_burst: u32,
    /// Failed callbacks per minute per address; 0: no limit.
    pub failed_per_minute: u32,
    /// Failed callbacks an address may make at once before the rate applies.
    pub failed_burst: u32,
    /// Sign-ins per minute over all addresses together; 0: no ceiling.
    pub global_per_minute: u32,
    /// Sign-ins all addresses together may make at once.
    pub global_burst: u32,
    /// IPv6 clients are counted by this prefix length (0..=128).
    pub ipv6_prefix: u8,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        // 500 people behind one address sign in at once, then 2 a second.
        RateLimitConfig {
            login_per_minute: 120,
            login_burst: 500,
            failed_per_minute: 20,
            failed_burst: 50,
            global_per_minute: 600,
            global_burst: 1000,
            ipv6_prefix: 64,
        }
    }
}

/// Prometheus metrics on a listener of their own (never the public port).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `address:port` serving `GET /metrics`; unset (the default): no metrics.
    pub listen: Option<String>,
}

/// Certificates from an ACME CA, validated with TLS-ALPN-01 on server.listen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    pub enabled: bool,
    /// DNS names of the certificate (the first is its subject).
    pub domains: Vec<String>,
    /// Contact addresses for the CA's expiry and policy mail (`mailto:` added when missing).
    #[serde(deserialize_with = "one_or_many")]
    pub contact: Vec<String>,
    /// The ACME directory URL.
    pub directory: String,
    /// CA certificate(s) of a private ACME directory (pebble, step-ca), besides the web PKI roots.
    pub directory_ca_file: Option<PathBuf>,
    /// Account and certificates, one subdirectory per ACME directory.
    pub cache_dir: PathBuf,
    /// Order a new certificate this long before the current one expires.
    #[serde(deserialize_with = "duration")]
    pub renew_before: Duration,
    /// How the CA validates: TLS-ALPN-01 on server.listen, or HTTP-01 on server.redirect_http.
    pub challenge: AcmeChallenge,
}

/// The ACME challenge the gateway answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum AcmeChallenge {
    /// On the TLS listener (the CA connects to port 443).
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// On the plain-HTTP listener, `server.redirect_http` (the CA connects to port 80).
    #[serde(rename = "http-01")]
    Http01,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            enabled: false,
            domains: Vec::new(),
            contact: Vec::new(),
            directory: LETS_ENCRYPT.into(),
            directory_ca_file: None,
            cache_dir: "acme".into(),
            renew_before: Duration::from_secs(30 * 24 * 3600),
            challenge: AcmeChallenge::TlsAlpn01,
        }
    }
}

/// A list, or one string of comma-separated items (how an environment
/// override writes a list); items are trimmed, empty ones dropped.
fn comma_separated<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(one_or_many(d)?
        .iter()
        .flat_map(|item| item.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect())
}

/// The lower-case scheme of a URL (empty without `://`).
fn scheme_of(url: &str) -> String {
    url.trim()
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase())
        .unwrap_or_default()
}

fn is_tls_scheme(scheme: &str) -> bool {
    matches!(scheme, "rediss" | "valkeys")
}

/// A list, or a single string taken as a list of one.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(one) => vec![one],
        Raw::Many(many) => many,
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub redirect_http: Option<String>,
    pub public_url: Option<String>,
    pub trusted_proxies: Vec<String>,
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub tls_handshake_timeout: Duration,
    pub max_header_bytes: usize,
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Worker threads, each with its own listener (SO_REUSEPORT) and upstream
    /// pool; 0 = one per CPU.
    pub workers: usize,
    /// A connection with no request in flight (HTTP/1.1 keep-alive, HTTP/2
    /// without open streams) is closed after this long.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// A response that gets nothing through to the client for this long is
    /// ended (and its upstream connection released).
    #[serde(deserialize_with = "duration")]
    pub send_timeout: Duration,
    /// Client connections open at once, all workers together; beyond it new
    /// connections are closed at once.
    pub max_connections: usize,
    /// HTTP/2 streams (requests) open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Without `public_url`: the hosts (`host` or `host:port`) that may appear
    /// in the redirect URI built from a request's Host; empty = any.
    pub allowed_hosts: Vec<String>,
    /// `Strict-Transport-Security: max-age=…` on the gateway's own answers
    /// when its certificate is not self-signed; 0 = never.
    #[serde(deserialize_with = "duration")]
    pub hsts_max_age: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:8443".into(),
            redirect_http: None,
            public_url: None,
            trusted_proxies: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
            workers: 0,
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_concurrent_streams: 128,
            hsts_max_age: Duration::from_secs(365 * 24 * 3600),
            allowed_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub self_signed: bool,
    /// How often the files are checked for new contents (0: only on SIGHUP).
    #[serde(deserialize_with = "duration")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: "certs/gateway.crt".into(),
            key: "certs/gateway.key".into(),
            self_signed: true,
            reload_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseMode {
    Query,
    FormPost,
}

/// How the certificate credential's client assertion is signed and names its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ClientAssertionAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 and the SHA-1 thumbprint in `x5t`.
    #[default]
    #[serde(rename = "RS256")]
    Rs256,
    /// RSASSA-PSS with SHA-256 and the SHA-256 thumbprint in `x5t#S256`.
    #[serde(rename = "PS256")]
    Ps256,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuer: String,
    /// The Microsoft cloud of the app registration: its login and Graph hosts.
    #[serde(default)]
    pub cloud: crate::cloud::Cloud,
    /// Where the discovery document is read when it is not
    /// `<issuer>/.well-known/openid-configuration` (Entra External ID behind a
    /// custom URL domain or the tenant's name); its `issuer` must still be `issuer`.
    #[serde(default)]
    pub discovery_url: Option<String>,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: String,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Certificate credential (`private_key_jwt`): the X.509 certificate uploaded
    /// to the app registration (PEM) …
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// … and its RSA private key (PEM, PKCS#8 or PKCS#1).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// RS256 with the SHA-1 `x5t` header, or PS256 with `x5t#S256`.
    #[serde(default)]
    pub client_assertion_alg: ClientAssertionAlg,
    /// Federated credential: a file holding the assertion (e.g. the Kubernetes
    /// workload-identity token), read at each use.
    #[serde(default)]
    pub client_assertion_file: Option<PathBuf>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    #[serde(default = "default_response_mode")]
    pub response_mode: ResponseMode,
    #[serde(default = "default_callback_path")]
    pub callback_path: String,
    /// Multi-tenant issuers (`/organizations/v2.0`, `/common/v2.0`): the tenants (tid) let in.
    #[serde(default)]
    pub allowed_tenants: Vec<String>,
    /// ID-token signature algorithms accepted. Never `none`, never HMAC.
    #[serde(default = "default_allowed_algs")]
    pub allowed_algs: Vec<String>,
    #[serde(default = "default_clock_skew", deserialize_with = "duration")]
    pub clock_skew: Duration,
    /// Timeout of each call to the IdP (discovery, JWKS, token endpoint).
    #[serde(default = "default_http_timeout", deserialize_with = "duration")]
    pub http_timeout: Duration,
    /// How often discovery and JWKS are re-read.
    #[serde(default = "default_metadata_refresh", deserialize_with = "duration")]
    pub metadata_refresh: Duration,
    /// Where the IdP sends the browser after sign-out (must be registered at the IdP).
    #[serde(default)]
    pub post_logout_redirect_uri: Option<String>,
    /// Microsoft Graph, where the groups of a user in too many groups for the
    /// ID token (overage) are read. Validation fills in the cloud's Graph host.
    #[serde(default)]
    pub graph_url: Option<String>,
    /// `prompt` of every authorization request (select_account, login, consent, none).
    #[serde(default)]
    pub prompt: Option<String>,
    /// `domain_hint` of every authorization request (skips home-realm discovery).
    #[serde(default)]
    pub domain_hint: Option<String>,
    /// `max_age` of every authorization request; the ID token's `auth_time` is checked.
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_age: Option<Duration>,
}

// Hand-written so that the client secret can never reach a log line through `{:?}`.
impl fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("cloud", &self.cloud)
            .field("discovery_url", &self.discovery_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("client_secret_file", &self.client_secret_file)
            .field("client_certificate", &self.client_certificate)
            .field("client_key", &self.client_key)
            .field("client_assertion_alg", &self.client_assertion_alg)
            .field("client_assertion_file", &self.client_assertion_file)
            .field("scopes", &self.scopes)
            .field("response_mode", &self.response_mode)
            .field("callback_path", &self.callback_path)
            .field("allowed_tenants", &self.allowed_tenants)
            .field("allowed_algs", &self.allowed_algs)
            .field("clock_skew", &self.clock_skew)
            .field("http_timeout", &self.http_timeout)
            .field("metadata_refresh", &self.metadata_refresh)
            .field("post_logout_redirect_uri", &self.post_logout_redirect_uri)
            .field("graph_url", &self.graph_url)
            .field("prompt", &self.prompt)
            .field("domain_hint", &self.domain_hint)
            .field("max_age", &self.max_age)
            .finish()
    }
}

fn default_scopes() -> Vec<String> {
    // No offline_access: without renewal (session.refresh, pass_access_token)
    // a refresh token would be a long-lived credential the gateway never uses;
    // with renewal, validation adds it.
    ["openid", "profile", "email"].map(String::from).to_vec()
}
fn default_response_mode() -> ResponseMode {
    ResponseMode::Query
}
fn default_callback_path() -> String {
    "/api/oidc/callback".into()
}
fn default_allowed_algs() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_metadata_refresh() -> Duration {
    Duration::from_secs(3600)
}

/// The claim that fills the user header (`headers.user_claim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserClaim {
    /// The UPN (Entra's `preferred_username`): readable, changeable by the tenant's admins.
    #[default]
    PreferredUsername,
    /// The optional `upn` claim (Azure → Token configuration → Add optional claim).
    Upn,
    /// `email`, only when its domain's owner verified it (`xms_edov: true`).
    Email,
    /// The object id: stable and unique within the tenant (pair it with X-Forwarded-Tid).
    Oid,
    /// The subject: stable, unique per app (pairwise).
    Sub,
}

impl UserClaim {
    /// The claim's name in the token (and the value of `headers.user_claim`).
    pub fn name(self) -> &'static str {
        match self {
            UserClaim::PreferredUsername => "preferred_username",
            UserClaim::Upn => "upn",
            UserClaim::Email => "email",
            UserClaim::Oid => "oid",
            UserClaim::Sub => "sub",
        }
    }
}

/// Names of the identity headers sent upstream, and what else is passed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    pub user: String,
    /// Which claim fills `user`; a token without it is refused, never another claim.
    pub user_claim: UserClaim,
    pub email: String,
    pub preferred_username: String,
    pub groups: String,
    /// The user's object id (`oid`).
    pub oid: String,
    /// The user's tenant id (`tid`).
    pub tid: String,
    /// Send `Authorization: Bearer <access token>` upstream.
    pub pass_access_token: bool,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig {
            user: "X-Forwarded-User".into(),
            user_claim: UserClaim::default(),
            email: "X-Forwarded-Email".into(),
            preferred_username: "X-Forwarded-Preferred-Username".into(),
            groups: "X-Forwarded-Groups".into(),
            oid: "X-Forwarded-Oid".into(),
            tid: "X-Forwarded-Tid".into(),
            pass_access_token: false,
        }
    }
}

/// Some access rule ([access] or a route's `allow`) names groups.
fn has_group_rules(config: &Config) -> bool {
    !config.access.groups.is_empty() || config.routes.iter().any(|r| !r.allow.groups.is_empty())
}

/// The gateway's own endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Path prefix of sign_in, sign_out, me.
    pub prefix: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            prefix: "/.gateway".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub url: String,
    #[serde(default = "yes")]
    pub preserve_host: bool,
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default = "default_response_timeout", deserialize_with = "duration")]
    pub response_timeout: Duration,
    #[serde(default = "default_pool_idle_timeout", deserialize_with = "duration")]
    pub pool_idle_timeout: Duration,
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_host: usize,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Connections to this upstream per worker (busy, idle and tunnels); a request that
    /// finds none free within `connect_timeout` is answered 503.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A WebSocket tunnel with no traffic in either direction for this long is closed; 0 = never.
    #[serde(default = "default_tunnel_idle_timeout", deserialize_with = "duration")]
    pub tunnel_idle_timeout: Duration,
}

impl UpstreamConfig {
    /// An upstream at `url` with every other setting taken from `base`.
    pub fn like(base: &UpstreamConfig, url: &str) -> Self {
        UpstreamConfig {
            url: url.to_string(),
            ..base.clone()
        }
    }
}

fn default_max_connections() -> usize {
    1024
}
fn default_tunnel_idle_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}

fn yes() -> bool {
    true
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_pool_max_idle() -> usize {
    256
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    pub secret: String,
    pub secret_file: Option<PathBuf>,
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Login flows (browser tabs) in progress at once per browser; the oldest is dropped.
    pub max_login_flows: usize,
    /// Where sessions live: this process's memory (default) or Redis/Valkey.
    pub store: SessionStoreKind,
    /// Memory store: where a graceful stop writes the live sessions (encrypted
    /// with a key derived from `secret`) for the next start. Only with a secret.
    pub state_file: PathBuf,
    /// Redis store: `redis://[user:password@]host[:port][/db]` or `rediss://` (TLS).
    pub redis_url: String,
    pub redis_url_file: Option<PathBuf>,
    /// `rediss://`: the CA certificate(s) (PEM) that signed the Redis server's
    /// certificate, instead of the system's roots (a private CA).
    pub redis_ca_file: Option<PathBuf>,
    /// Redis store behind Sentinel: the Sentinels' URLs
    /// (`redis://[user:password@]host:26379`, `rediss://` for TLS); a list, or
    /// one comma-separated string (the environment override).
    #[serde(deserialize_with = "comma_separated")]
    pub redis_sentinels: Vec<String>,
    /// The name under which the Sentinels monitor the primary (`mymaster`).
    pub redis_sentinel_master: String,
    /// Prefix of every Redis key the gateway writes.
    pub redis_prefix: String,
    /// Redis store: how long a replica serves a session it validated without
    /// asking Redis again (the bound on cross-replica sign-out).
    #[serde(deserialize_with = "duration")]
    pub cache_ttl: Duration,
    /// Renew the access token before it expires with a refresh token (asks
    /// the IdP for `offline_access`). Implied by `headers.pass_access_token`.
    pub refresh: bool,
}

/// `session.store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStoreKind {
    Memory,
    Redis,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            secret: String::new(),
            secret_file: None,
            ttl: Duration::from_secs(12 * 3600),
            idle_timeout: Duration::from_secs(3600),
            max_login_flows: 5,
            store: SessionStoreKind::Memory,
            state_file: PathBuf::from("sessions.state"),
            redis_url: String::new(),
            redis_url_file: None,
            redis_ca_file: None,
            redis_sentinels: Vec::new(),
            redis_sentinel_master: String::new(),
            redis_prefix: "oidc-gateway:".into(),
            cache_ttl: Duration::from_secs(5),
            refresh: false,
        }
    }
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("secret", &"<redacted>")
            .field("ttl", &self.ttl)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_login_flows", &self.max_login_flows)
            .field("store", &self.store)
            .field("state_file", &self.state_file)
            .field("redis_url", &"<redacted>")
            .field("redis_url_file", &self.redis_url_file)
            .field("redis_ca_file", &self.redis_ca_file)
            .field(
                "redis_sentinels",
                &self
                    .redis_sentinels
                    .iter()
                    .map(|url| without_userinfo(url))
                    .collect::<Vec<_>>(),
            )
            .field("redis_sentinel_master", &self.redis_sentinel_master)
            .field("redis_prefix", &self.redis_prefix)
            .field("cache_ttl", &self.cache_ttl)
            .field("refresh", &self.refresh)
            .finish()
    }
}

/// A URL with its `user:password@` part redacted (for Debug and logs).
fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://<redacted>@{host}"),
            None => url.to_string(),
        },
        None if url.contains('@') => "<redacted>".into(),
        None => url.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// Accepts `"90s"`, `"12h"`, `"1h 30m"` (humantime) or a bare number of seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "{t:?} is not a duration ({e}); write it like \"30s\", \"5m\" or \"12h\""
            ))
        }),
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// The `prompt` values Entra accepts.
pub const PROMPTS: &[&str] = &["select_account", "login", "consent", "none"];

impl Settings {
    /// Some access rule ([access] or a route's `allow`) names groups.
    pub fn has_group_rules(&self) -> bool {
        has_group_rules(&self.config)
    }

    /// Access tokens are renewed (and a refresh token kept): `session.refresh`,
    /// or `headers.pass_access_token`, whose token must never reach the
    /// upstream expired.
    pub fn refresh_enabled(&self) -> bool {
        self.config.session.refresh || self.config.headers.pass_access_token
    }
}

/// Everything checked and derived from [`Config`] that the running gateway needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub listen: SocketAddr,
    pub redirect_http: Option<SocketAddr>,
    /// `metrics.listen`: where Prometheus scrapes `/metrics` (None: metrics off).
    pub metrics_listen: Option<SocketAddr>,
    pub public_url: Option<Uri>,
    pub trusted_proxies: Vec<IpNet>,
    /// The default upstream's URL (`upstream.url`).
    pub upstream: Uri,
    /// Every upstream: the default (`[upstream]`) first, then the RustDesk preset's,
    /// then `[upstreams.<name>]` in name order. Routes refer to them by position.
    pub upstreams: Vec<UpstreamSettings>,
    /// Where the config came from, for messages (`config.toml`, or "environment only").
    pub origin: String,
    /// How to read it again (SIGHUP); None for an inline configuration.
    pub source: Option<ConfigSource>,
}

/// One upstream, checked: its name, URL and settings.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// `default` for `[upstream]`, `rustdesk_id`/`rustdesk_relay` for the RustDesk
    /// preset, else the `[upstreams.<name>]` name.
    pub name: String,
    /// Where the settings came from, for messages (`upstream`, `upstreams.hbbs`, `rustdesk.id_server`).
    pub key: String,
    pub url: Uri,
    pub config: UpstreamConfig,
    /// X-Forwarded-For is only the client address as the gateway sees it, never
    /// a list a client could have started (hbbs/hbbr trust it unchecked).
    pub client_address_only: bool,
}

/// Index of an upstream in [`Settings::upstreams`].
pub type UpstreamId = usize;

/// The name of `[upstream]` in routes and messages.
pub const DEFAULT_UPSTREAM: &str = "default";
/// The upstreams `[rustdesk] id_server` and `relay_server` create.
pub const RUSTDESK_ID_UPSTREAM: &str = "rustdesk_id";
pub const RUSTDESK_RELAY_UPSTREAM: &str = "rustdesk_relay";

impl Settings {
    /// The upstream called `name`.
    pub fn upstream_id(&self, name: &str) -> Option<UpstreamId> {
        self.upstreams.iter().position(|u| u.name == name)
    }
}

/// A configuration problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {message}")]
pub struct ConfigError {
    pub message: String,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
        }
    }
}

/// Where the configuration is read from.
#[derive(Clone)]
pub struct ConfigSource {
    /// The TOML file. `explicit` is false when it is the default `./config.toml`,
    /// which may then be absent (all keys from the environment).
    pub path: PathBuf,
    pub explicit: bool,
    /// Environment variables; only those starting with [`ENV_PREFIX`] are used.
    pub env: Vec<(String, String)>,
}

/// The environment's values stay out of logs (they hold secrets).
impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource")
            .field("path", &self.path)
            .field("explicit", &self.explicit)
            .field("env", &format_args!("{} variables", self.env.len()))
            .finish()
    }
}

impl ConfigSource {
    /// The source for a process: `--config` / `OIDC_GATEWAY_CONFIG`, and the process environment.
    pub fn from_process(config_flag: Option<PathBuf>) -> Self {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let from_env = env
            .iter()
            .find(|(k, _)| k == ENV_CONFIG_PATH)
            .map(|(_, v)| PathBuf::from(v));
        match config_flag.or(from_env) {
            Some(path) => ConfigSource {
                path,
                explicit: true,
                env,
            },
            None => ConfigSource {
                path: DEFAULT_CONFIG_PATH.into(),
                explicit: false,
                env,
            },
        }
    }
}

/// `OIDC_GATEWAY__SECTION__KEY=value` pairs as a figment provider. Scalars stay
/// strings (figment's lossy extraction turns "true"/"8" into bools/numbers where
/// the schema wants them, and a numeric secret stays a string); a value starting
/// with `[` is parsed as a list.
#[derive(Clone)]
struct EnvOverrides {
    /// (dotted key, variable name, value)
    pairs: Vec<(String, String, String)>,
}

impl EnvOverrides {
    /// The overrides in `env`, or an error naming every variable that looks like an
    /// override but would be ignored (a near-miss prefix such as `OIDC_GATEWAY_OIDC__…`).
    fn new(env: &[(String, String)]) -> Result<Self, ConfigError> {
        let near_misses: Vec<String> = env.iter().filter_map(|(name, _)| near_miss(name)).collect();
        if !near_misses.is_empty() {
            return Err(ConfigError::new(near_misses.join("\n")));
        }
        let pairs = env
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(ENV_PREFIX)?;
                let key = rest
                    .split("__")
                    .collect::<Vec<_>>()
                    .join(".")
                    .to_lowercase();
                Some((key, k.clone(), v.clone()))
            })
            .collect();
        Ok(EnvOverrides { pairs })
    }

    /// The variables that set `key` or something inside it (for error messages).
    fn variables_under(&self, key: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _, _)| k == key || k.starts_with(&format!("{key}.")))
            .map(|(_, name, _)| name.clone())
            .collect()
    }
}

/// Why the environment variable `name` would be ignored although it was meant as an
/// override, with the spelling that works; `None` for overrides and unrelated names.
/// Only names holding a `__` count: Kubernetes injects `OIDC_GATEWAY_SERVICE_HOST`,
/// `OIDC_GATEWAY_PORT_8443_TCP`, … for a Service named oidc-gateway, never with `__`.
fn near_miss(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
        return rest.is_empty().then(|| {
            format!(
                "environment variable {name} names no key; write {ENV_PREFIX}<SECTION>__<KEY>, \
                 e.g. {ENV_PREFIX}UPSTREAM__URL"
            )
        });
    }
    // Compare without separators and case: OIDC_GATEWAY_, oidc_gateway__, OIDC-GATEWAY__, OIDCGATEWAY__.
    let squeezed: String = name
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .collect::<String>()
        .to_ascii_uppercase();
    if !squeezed.starts_with("OIDCGATEWAY") || !name.contains("__") {
        return None;
    }
    // The part after the prefix, however it was written: "OIDC__CLIENT_SECRET".
    let mut seen = 0;
    let mut cut = name.len();
    for (i, c) in name.char_indices() {
        if c != '_' && c != '-' {
            seen += 1;
            if seen == "OIDCGATEWAY".len() + 1 {
                cut = i;
                break;
            }
        }
    }
    let fixed = format!("{ENV_PREFIX}{}", name[cut..].to_ascii_uppercase());
    Some(format!(
        "environment variable {name} is not read: overrides start with {ENV_PREFIX} \
         (upper case, two underscores); rename it {fixed}"
    ))
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable").interpolater(|_profile, keys| {
            format!("{ENV_PREFIX}{}", keys.join("__").to_uppercase())
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, _, raw) in &self.pairs {
            let value = if raw.trim_start().starts_with('[') {
                raw.parse::<Value>().unwrap_or_else(|never| match never {})
            } else {
                Value::from(raw.clone())
            };
            insert_path(&mut dict, key, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Keys holding a path besides those whose name ends in `_file` or `_dir` (which
/// all do): keep new path keys to that naming, or list them here.
const PATH_KEYS: &[&str] = &[
    "tls.cert",
    "tls.key",
    "oidc.client_certificate",
    "oidc.client_key",
];

fn is_path_key(dotted: &str) -> bool {
    let leaf = dotted.rsplit('.').next().unwrap_or(dotted);
    leaf.ends_with("_file") || leaf.ends_with("_dir") || PATH_KEYS.contains(&dotted)
}

/// A provider whose relative paths are made relative to `base`, the directory of
/// the config file (not the working directory, which differs between a shell, a
/// systemd unit and a container).
struct RelativeTo<P> {
    inner: P,
    base: PathBuf,
}

impl<P: Provider> Provider for RelativeTo<P> {
    fn metadata(&self) -> Metadata {
        self.inner.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = self.inner.data()?;
        for dict in data.values_mut() {
            for (key, value) in dict.iter_mut() {
                resolve_paths(value, key, &self.base);
            }
        }
        Ok(data)
    }
}

/// Rewrites every relative path under `value` (found at the dotted `key`) against `base`.
fn resolve_paths(value: &mut Value, key: &str, base: &Path) {
    match value {
        Value::Dict(_, dict) => {
            for (name, inner) in dict.iter_mut() {
                resolve_paths(inner, &format!("{key}.{name}"), base);
            }
        }
        // Arrays of tables ([[routes]], ...) keep the key of their table.
        Value::Array(_, items) => {
            for item in items {
                resolve_paths(item, key, base);
            }
        }
        Value::String(_, path)
            if is_path_key(key) && !path.is_empty() && Path::new(path.as_str()).is_relative() =>
        {
            *path = base.join(path.as_str()).to_string_lossy().into_owned();
        }
        _ => {}
    }
}

/// Inserts `value` at the dotted `path`, creating the tables on the way.
fn insert_path(dict: &mut Dict, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            dict.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = dict
                .entry(head.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// Loads, layers and validates the configuration.
pub fn load(source: &ConfigSource) -> Result<Settings, ConfigError> {
    let file_present = source.path.is_file();
    if source.explicit && !file_present {
        return Err(ConfigError::new(format!(
            "config file {} does not exist or is not a file; pass --config PATH (or set {ENV_CONFIG_PATH}) \
             pointing at a copy of the shipped config.toml",
            source.path.display()
        )));
    }
    let env = EnvOverrides::new(&source.env)?;
    let mut figment = Figment::new();
    let origin = if file_present {
        if let Err(e) = std::fs::read_to_string(&source.path) {
            return Err(ConfigError::new(format!(
                "cannot read config file {}: {e}; check the path and its permissions",
                source.path.display()
            )));
        }
        let base = config_dir(&source.path);
        figment = figment
            .merge(RelativeTo {
                inner: Toml::file(&source.path),
                base: base.clone(),
            })
            .merge(RelativeTo {
                inner: env.clone(),
                base,
            });
        source.path.display().to_string()
    } else {
        figment = figment.merge(env.clone());
        format!("environment only (no {} found)", source.path.display())
    };
    let config: Config = figment
        .extract_lossy()
        .map_err(|e| describe_figment_error(e, &origin, &env))?;
    let mut settings = Validator {
        figment: &figment,
        origin: &origin,
    }
    .validate(config)?;
    settings.source = Some(source.clone());
    Ok(settings)
}

/// Sections a configuration reload (SIGHUP) applies to new requests; every
/// other section keeps its running values until a restart.
pub const RELOADABLE_SECTIONS: [&str; 6] = [
    "access",
    "routes",
    "upstream",
    "upstreams",
    "headers",
    "rustdesk",
];

/// The settings to run with after a reload: `new`'s reloadable sections on
/// top of `running`, and the keys that changed but need a restart (they keep
/// their running values).
pub fn reloaded(running: &Settings, new: Settings) -> (Settings, Vec<String>) {
    let (was, now) = (&running.config, &new.config);
    let mut restart = Vec::new();
    let mut differs = |section: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
        restart.extend(changed_fields(section, a, b));
    };
    // Secrets are redacted in Debug: a changed secret alone is not seen here.
    differs("server", &was.server, &now.server);
    differs("tls", &was.tls, &now.tls);
    differs("oidc", &was.oidc, &now.oidc);
    differs("session", &was.session, &now.session);
    differs("gateway", &was.gateway, &now.gateway);
    differs("bearer", &was.bearer, &now.bearer);
    differs("assertion", &was.assertion, &now.assertion);
    differs("rate_limit", &was.rate_limit, &now.rate_limit);
    differs("acme", &was.acme, &now.acme);
    differs("metrics", &was.metrics, &now.metrics);
    differs("log", &was.log, &now.log);
    // Decided by the sign-in code when a session is created: whether it keeps
    // the access token, and which claim names the user.
    if was.headers.pass_access_token != now.headers.pass_access_token {
        restart.push("headers.pass_access_token".into());
    }
    if was.headers.user_claim != now.headers.user_claim {
        restart.push("headers.user_claim".into());
    }
    let mut config = was.clone();
    config.access = new.config.access;
    config.routes = new.config.routes;
    config.upstream = new.config.upstream;
    config.upstreams = new.config.upstreams;
    config.rustdesk = new.config.rustdesk;
    config.headers = HeadersConfig {
        pass_access_token: was.headers.pass_access_token,
        user_claim: was.headers.user_claim,
        ..new.config.headers
    };
    let settings = Settings {
        config,
        upstream: new.upstream,
        upstreams: new.upstreams,
        ..running.clone()
    };
    (settings, restart)
}

/// `section.field` for each field whose value differs between `a` and `b` (two
/// values of one config struct), read from their pretty Debug forms: a
/// top-level field is a line indented by four spaces, with any lines under it.
fn changed_fields(section: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug) -> Vec<String> {
    fn fields(value: &dyn std::fmt::Debug) -> Vec<(String, String)> {
        let text = format!("{value:#?}");
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            let top = line
                .strip_prefix("    ")
                .filter(|rest| !rest.starts_with(' '));
            match (top.and_then(|rest| rest.split_once(':')), fields.last_mut()) {
                (Some((name, _)), _) => fields.push((name.to_string(), line.to_string())),
                (None, Some((_, body))) => {
                    body.push('\n');
                    body.push_str(line);
                }
                (None, None) => {}
            }
        }
        fields
    }
    let (before, after) = (fields(a), fields(b));
    let mut changed: Vec<String> = after
        .iter()
        .filter(|field| !before.contains(field))
        .map(|(name, _)| format!("{section}.{name}"))
        .collect();
    if changed.is_empty() && format!("{a:?}") != format!("{b:?}") {
        changed.push(section.to_string());
    }
    changed
}

/// The directory relative paths in the config are resolved against: the config
/// file's own, made absolute so that messages and later reads do not depend on the
/// working directory.
fn config_dir(config_file: &Path) -> PathBuf {
    let absolute = std::path::absolute(config_file).unwrap_or_else(|_| config_file.to_path_buf());
    absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Parses a TOML text (as if it were the file `name`) plus environment pairs.
/// Used by tests and by the built-in demo configuration.
pub fn load_str(toml: &str, env: &[(String, String)]) -> Result<Settings, ConfigError> {
    let env = EnvOverrides::new(env)?;
    let figment = Figment::new().merge(Toml::string(toml)).merge(env.clone());
    let origin = "inline configuration".to_string();
    let config: Config = figment
        .extract_lossy()
        .map_err(|e| describe_figment_error(e, &origin, &env))?;
    Validator {
        figment: &figment,
        origin: &origin,
    }
    .validate(config)
}

fn describe_figment_error(errors: figment::Error, origin: &str, env: &EnvOverrides) -> ConfigError {
    use figment::error::Kind;
    let mut lines = Vec::new();
    for e in errors {
        let key = e.path.join(".");
        let place = match &e.metadata {
            // An unknown section names only its own path (OIDC_GATEWAY__OIDCC): name the
            // variables as they were written.
            Some(md) if md.name == "environment variable" => match env.variables_under(&key) {
                names if !names.is_empty() => {
                    format!("environment variable {}", names.join(", "))
                }
                _ => format!(
                    "environment variable {}",
                    md.interpolate(&e.profile.clone().unwrap_or_default(), &e.path)
                ),
            },
            Some(md) => match &md.source {
                Some(src) => format!("{src}"),
                None => md.name.to_string(),
            },
            None => origin.to_string(),
        };
        let hint = "see the comment above this key in the shipped config.toml";
        let fix = match &e.kind {
            // figment's path already ends in the unknown field: `server.listn`.
            Kind::UnknownField(_, expected) => format!(
                "unknown key `{key}`; remove it or fix its spelling (valid keys{}: {})",
                match key.rsplit_once('.') {
                    Some((section, _)) => format!(" in [{section}]"),
                    None => " at the top level".to_string(),
                },
                expected.join(", ")
            ),
            Kind::MissingField(field) => {
                let full = if key.is_empty() {
                    field.to_string()
                } else {
                    format!("{key}.{field}")
                };
                format!(
                    "required key `{full}` is missing; add it (see the shipped config.toml) or set {}",
                    env_name(&full)
                )
            }
            Kind::InvalidType(actual, expected) => format!(
                "key `{key}` has the wrong type: found {actual}, expected {expected}; write it as {expected} ({hint})"
            ),
            Kind::InvalidValue(actual, expected) => format!(
                "key `{key}` has an invalid value: found {actual}, expected {expected}; {hint}"
            ),
            Kind::UnknownVariant(found, expected) => format!(
                "key `{key}` cannot be {found:?}; use one of: {}",
                expected.join(", ")
            ),
            // TOML syntax errors come without a key: the message carries line and column.
            Kind::Message(msg) if key.is_empty() => {
                format!("{msg}; fix the syntax at the line shown")
            }
            Kind::Message(msg) => format!("key `{key}`: {msg}"),
            other if key.is_empty() => other.to_string(),
            other => format!("key `{key}`: {other}"),
        };
        lines.push(format!("{fix} (in {place})"));
    }
    ConfigError::new(lines.join("\n"))
}

/// The environment variable that overrides `section.key`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

struct Validator<'a> {
    figment: &'a Figment,
    origin: &'a str,
}

impl Validator<'_> {
    /// Where the value of `key` came from: the env var name or the file.
    fn place(&self, key: &str) -> String {
        match self.figment.find_metadata(key) {
            Some(md) if md.name == "environment variable" => {
                format!("environment variable {}", env_name(key))
            }
            Some(md) => md
                .source
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_else(|| self.origin.to_string()),
            None => format!("default value; {}", self.origin),
        }
    }

    fn err(&self, key: &str, problem: impl fmt::Display, fix: impl fmt::Display) -> ConfigError {
        ConfigError::new(format!(
            "key `{key}` (in {}): {problem}; {fix}",
            self.place(key)
        ))
    }

    fn socket_addr(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.trim().parse().map_err(|_| {
            self.err(
                key,
                format!("{value:?} is not an address:port"),
                "write it like \"0.0.0.0:8443\" or \"[::]:8443\"",
            )
        })
    }

    fn validate(&self, mut config: Config) -> Result<Settings, ConfigError> {
        let listen = self.socket_addr("server.listen", &config.server.listen)?;
        let redirect_http = match &config.server.redirect_http {
            Some(a) if !a.trim().is_empty() => Some(self.socket_addr("server.redirect_http", a)?),
            _ => None,
        };
        if redirect_http == Some(listen) && listen.port() != 0 {
            return Err(self.err(
                "server.redirect_http",
                "is the same address as server.listen",
                "give the plain-HTTP listener its own port, e.g. \"0.0.0.0:8080\"",
            ));
        }
        if config.acme.enabled
            && config.acme.challenge == AcmeChallenge::Http01
            && redirect_http.is_none()
        {
            return Err(self.err(
                "acme.challenge",
                "is \"http-01\" but server.redirect_http is not set",
                "HTTP-01 is answered on the plain-HTTP listener: set server.redirect_http = \"0.0.0.0:80\" \
                 (reachable on port 80 of each domain), or use challenge = \"tls-alpn-01\"",
            ));
        }
        let metrics_listen = match &config.metrics.listen {
            Some(a) if !a.trim().is_empty() => Some(self.socket_addr("metrics.listen", a)?),
            _ => None,
        };
        if let Some(metrics) = metrics_listen.filter(|m| m.port() != 0) {
            if metrics == listen || Some(metrics) == redirect_http {
                return Err(self.err(
                    "metrics.listen",
                    format!("{metrics} is also a listener of the gateway's own (server.listen or server.redirect_http)"),
                    "metrics are never served on a public port: give them their own, e.g. \"127.0.0.1:9464\"",
                ));
            }
        }
        let public_url = match &config.server.public_url {
            Some(u) if !u.trim().is_empty() => Some(self.public_url(u)?),
            _ => None,
        };
        let trusted_proxies = config
            .server
            .trusted_proxies
            .iter()
            .map(|p| {
                parse_net(p).ok_or_else(|| {
                    self.err(
                        "server.trusted_proxies",
                        format!("{p:?} is not an IP address or CIDR range"),
                        "write entries like \"10.0.0.0/8\" or \"192.168.1.10\"",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if config.rate_limit.ipv6_prefix > 128 {
            return Err(self.err(
                "rate_limit.ipv6_prefix",
                format!(
                    "{} is longer than an IPv6 address",
                    config.rate_limit.ipv6_prefix
                ),
                "give a prefix length from 0 to 128 (64: a household or office network)",
            ));
        }
        for host in &config.server.allowed_hosts {
            let valid = host
                .parse::<http::uri::Authority>()
                .is_ok_and(|a| a.as_str() == host && !host.contains('@'));
            if !valid {
                return Err(self.err(
                    "server.allowed_hosts",
                    format!("{host:?} is not a host name or host:port"),
                    "write entries like \"console.example.com\" or \"10.0.0.5:8443\"",
                ));
            }
        }
        if config.server.max_header_bytes < 8192 {
            return Err(self.err(
                "server.max_header_bytes",
                format!("{} is too small", config.server.max_header_bytes),
                "use at least 8192 (the default is 65536)",
            ));
        }
        let server = &config.server;
        for (key, d) in [
            ("server.header_read_timeout", server.header_read_timeout),
            ("server.tls_handshake_timeout", server.tls_handshake_timeout),
            ("server.idle_timeout", server.idle_timeout),
            ("server.send_timeout", server.send_timeout),
        ] {
            if d.is_zero() {
                return Err(self.err(key, "is zero", "use a positive duration like \"10s\""));
            }
        }
        if server.max_connections == 0 {
            return Err(self.err(
                "server.max_connections",
                "is zero: no client could connect",
                "use at least 1 (the default is 4096)",
            ));
        }
        if server.max_concurrent_streams == 0 {
            return Err(self.err(
                "server.max_concurrent_streams",
                "is zero: no HTTP/2 request could be made",
                "use at least 1 (the default is 128)",
            ));
        }

        self.oidc(&mut config.oidc)?;
        self.headers_and_prefix(&config)?;
        self.access(&config)?;
        let upstreams = self.upstreams(&config)?;
        let upstream = upstreams[0].url.clone();
        self.routes_upstreams(&config, &upstreams)?;
        self.session(&mut config.session)?;
        self.acme(&mut config.acme)?;
        // Groups beyond the token's limit come from Graph, which wants User.Read —
        // unless the scopes name another API: Entra issues an access token for one
        // resource only, and mixing them fails the sign-in (AADSTS28000).
        let other_api = config
            .oidc
            .scopes
            .iter()
            .any(|s| s.contains('/') && !s.to_ascii_lowercase().contains("graph.microsoft"));
        if has_group_rules(&config)
            && !other_api
            && !config.oidc.scopes.iter().any(|s| s == "User.Read")
        {
            config.oidc.scopes.push("User.Read".into());
        }
        // Renewal needs a refresh token, which Entra gives only for offline_access.
        let refresh = config.session.refresh || config.headers.pass_access_token;
        if refresh && !config.oidc.scopes.iter().any(|s| s == "offline_access") {
            config.oidc.scopes.push("offline_access".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&config.log.level).is_err() {
            return Err(self.err(
                "log.level",
                format!("{:?} is not a log filter", config.log.level),
                "use error, warn, info, debug or trace (or a RUST_LOG-style directive)",
            ));
        }

        Ok(Settings {
            config,
            listen,
            redirect_http,
            metrics_listen,
            public_url,
            trusted_proxies,
            upstream,
            upstreams,
            origin: self.origin.to_string(),
            source: None,
        })
    }

    fn public_url(&self, raw: &str) -> Result<Uri, ConfigError> {
        let key = "server.public_url";
        let uri: Uri = raw.trim().parse().map_err(|e| {
            self.err(
                key,
                format!("{raw:?} is not a URL ({e})"),
                "write it like \"https://console.example.com\"",
            )
        })?;
        let host = uri.host().unwrap_or_default();
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback_host(host) => {}
            _ => {
                return Err(self.err(
                    key,
                    format!("{raw:?} is not an https:// URL"),
                    "browsers reach the gateway over TLS: use https://host[:port] (http:// only for localhost)",
                ))
            }
        }
        if host.is_empty() {
            return Err(self.err(
                key,
                format!("{raw:?} has no host"),
                "write it like \"https://console.example.com\"",
            ));
        }
        self.origin_only(
            key,
            raw,
            &uri,
            "give only the origin, scheme://host[:port]; the callback path is oidc.callback_path",
        )?;
        Ok(uri)
    }

    /// URLs that name an origin must not carry a path or query.
    fn origin_only(&self, key: &str, raw: &str, uri: &Uri, fix: &str) -> Result<(), ConfigError> {
        let pq = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("");
        if pq.is_empty() || pq == "/" {
            Ok(())
        } else {
            Err(self.err(key, format!("{raw:?} has a path or query"), fix))
        }
    }

    fn oidc(&self, oidc: &mut OidcConfig) -> Result<(), ConfigError> {
        let issuer = oidc.issuer.trim();
        if issuer.contains('<') || issuer.is_empty() {
            return Err(self.err(
                "oidc.issuer",
                "still holds the placeholder",
                "set it to https://login.microsoftonline.com/<Directory (tenant) ID>/v2.0 from the Azure app registration",
            ));
        }
        let uri: Uri = issuer.parse().map_err(|e| {
            self.err(
                "oidc.issuer",
                format!("{issuer:?} is not a URL ({e})"),
                "use the issuer URL shown in Azure",
            )
        })?;
        let host = uri.host().unwrap_or_default();
        match uri.scheme_str() {
            Some("https") if !host.is_empty() => {}
            Some("http") if is_loopback_host(host) => {}
            Some("http") => {
                return Err(self.err(
                    "oidc.issuer",
                    format!("{issuer:?} uses http:// on a non-loopback host"),
                    "an issuer must be https:// (http:// is accepted only for localhost/127.0.0.1/::1 in development)",
                ))
            }
            _ => {
                return Err(self.err(
                    "oidc.issuer",
                    format!("{issuer:?} is not an https:// URL"),
                    "use https://login.microsoftonline.com/<tenant-id>/v2.0",
                ))
            }
        }
        self.issuer_cloud(oidc.cloud, host)?;
        if let Some(url) = &oidc.discovery_url {
            if !is_secure_url(url) {
                return Err(self.err(
                    "oidc.discovery_url",
                    format!("{url:?} is not an https:// URL"),
                    "use the https:// address of the discovery document (http:// only on loopback), or remove the key to read <oidc.issuer>/.well-known/openid-configuration",
                ));
            }
        }
        if oidc.client_id.trim().is_empty() || oidc.client_id.contains('<') {
            return Err(self.err(
                "oidc.client_id",
                "is empty or still holds the placeholder",
                "copy the Application (client) ID from the Azure app registration",
            ));
        }
        self.client_credential(oidc)?;
        if !oidc.scopes.iter().any(|s| s == "openid") {
            return Err(self.err(
                "oidc.scopes",
                "does not contain \"openid\"",
                "OpenID Connect needs the openid scope: add it to the list",
            ));
        }
        const ALLOWED: &[&str] = &[
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
        ];
        if oidc.allowed_algs.is_empty() {
            return Err(self.err(
                "oidc.allowed_algs",
                "is empty",
                "list at least one algorithm, normally [\"RS256\"]",
            ));
        }
        for alg in &oidc.allowed_algs {
            if !ALLOWED.contains(&alg.as_str()) {
                return Err(self.err(
                    "oidc.allowed_algs",
                    format!("{alg:?} is not an accepted signature algorithm"),
                    format!("use some of {} (never none, never HMAC: a client secret must not sign identities)", ALLOWED.join(", ")),
                ));
            }
        }
        if oidc.clock_skew > Duration::from_secs(60) {
            return Err(self.err(
                "oidc.clock_skew",
                "is more than 60s",
                "keep it small: at most \"60s\"",
            ));
        }
        if oidc.http_timeout.is_zero() || oidc.metadata_refresh < Duration::from_secs(60) {
            return Err(self.err(
                "oidc.http_timeout",
                "IdP timeouts must be positive and metadata_refresh at least 60s",
                "use e.g. http_timeout = \"10s\", metadata_refresh = \"1h\"",
            ));
        }
        let multi_tenant = ["/common/v2.0", "/organizations/v2.0", "/consumers/v2.0"]
            .iter()
            .any(|suffix| uri.path().trim_end_matches('/').ends_with(suffix));
        if multi_tenant && oidc.allowed_tenants.is_empty() {
            return Err(self.err(
                "oidc.allowed_tenants",
                "is empty while oidc.issuer is a multi-tenant authority",
                "list the Directory (tenant) IDs whose users may sign in, e.g. allowed_tenants = [\"<tenant-id>\"]",
            ));
        }
        if let Some(uri) = &oidc.post_logout_redirect_uri {
            if !(uri.starts_with("https://")
                || uri.starts_with("http://localhost")
                || uri.starts_with("http://127.0.0.1"))
            {
                return Err(self.err(
                    "oidc.post_logout_redirect_uri",
                    format!("{uri:?} is not an https:// URL"),
                    "use the https:// URL (registered in Azure) users should land on after sign-out",
                ));
            }
        }
        self.sign_in_options(oidc)?;
        oidc.graph_url = Some(self.graph_url(oidc, host)?);
        if !oidc.callback_path.starts_with('/') || oidc.callback_path.starts_with("//") {
            return Err(self.err(
                "oidc.callback_path",
                format!("{:?} is not an absolute path", oidc.callback_path),
                "use a path like \"/api/oidc/callback\"",
            ));
        }
        Ok(())
    }

    /// An issuer on a Microsoft login host must be on one of `oidc.cloud`'s: an app
    /// registration and its tokens live in one cloud.
    fn issuer_cloud(&self, cloud: crate::cloud::Cloud, host: &str) -> Result<(), ConfigError> {
        match crate::cloud::Cloud::of_login_host(host) {
            Some(issuer_cloud) if issuer_cloud != cloud => Err(self.err(
                "oidc.issuer",
                format!(
                    "{host:?} is a sign-in host of the {} cloud, but oidc.cloud is {:?} (in {})",
                    issuer_cloud.name(),
                    cloud.name(),
                    self.place("oidc.cloud")
                ),
                format!(
                    "set oidc.cloud = {:?}, or use the issuer of your app registration in the {} cloud (on {})",
                    issuer_cloud.name(),
                    cloud.name(),
                    cloud.login_hosts()[0]
                ),
            )),
            _ => Ok(()),
        }
    }

    /// `oidc.prompt`, `oidc.domain_hint`, `oidc.max_age`.
    fn sign_in_options(&self, oidc: &mut OidcConfig) -> Result<(), ConfigError> {
        if let Some(prompt) = &oidc.prompt {
            if !PROMPTS.contains(&prompt.as_str()) {
                return Err(self.err(
                    "oidc.prompt",
                    format!("{prompt:?} is not a prompt Entra accepts"),
                    format!("use one of {} or leave it out", PROMPTS.join(", ")),
                ));
            }
        }
        if let Some(hint) = &oidc.domain_hint {
            let valid = !hint.is_empty()
                && hint.len() <= 253
                && hint
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if !valid {
                return Err(self.err(
                    "oidc.domain_hint",
                    format!("{hint:?} is not a domain"),
                    "use the users' domain, e.g. \"contoso.com\" (or \"organizations\")",
                ));
            }
        }
        if oidc
            .max_age
            .is_some_and(|age| age.as_secs() > u32::MAX as u64)
        {
            return Err(self.err(
                "oidc.max_age",
                "is too long",
                "use a duration like \"12h\", or leave it out",
            ));
        }
        Ok(())
    }

    /// `oidc.graph_url`: https:// on a Graph host of `oidc.cloud` (default: its
    /// first), or loopback when the issuer is too (the development IdP). Never
    /// the retired AAD Graph, never anything a token names.
    fn graph_url(&self, oidc: &OidcConfig, issuer_host: &str) -> Result<String, ConfigError> {
        let cloud = oidc.cloud;
        let Some(raw) = oidc.graph_url.as_deref().map(str::trim) else {
            return Ok(cloud.default_graph_url());
        };
        let fix = format!(
            "use the Microsoft Graph of the {} cloud ({}), or leave it out",
            cloud.name(),
            cloud.graph_hosts().join(", ")
        );
        cloud
            .check_graph_url(raw)
            .map_err(|problem| self.err("oidc.graph_url", problem, &fix))?;
        let url = url::Url::parse(raw).map_err(|e| {
            self.err(
                "oidc.graph_url",
                format!("{raw:?} is not a URL ({e})"),
                &fix,
            )
        })?;
        let host = url.host_str().unwrap_or_default();
        // The IdP itself is local (a development IdP, also one declaring a
        // Microsoft issuer behind oidc.discovery_url): its Graph may be too.
        let local_idp = is_loopback_host(issuer_host)
            || oidc
                .discovery_url
                .as_deref()
                .and_then(|d| url::Url::parse(d).ok())
                .is_some_and(|d| d.host_str().is_some_and(is_loopback_host));
        if is_loopback_host(host) && !local_idp {
            return Err(self.err(
                "oidc.graph_url",
                format!("{raw:?} is a loopback address while the identity provider is Microsoft's"),
                &fix,
            ));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(self.err(
                "oidc.graph_url",
                format!("{raw:?} has a path or query"),
                "give the origin only, e.g. \"https://graph.microsoft.com\" (the gateway adds /v1.0/…)",
            ));
        }
        Ok(raw.trim_end_matches('/').to_string())
    }

    /// Exactly one credential kind: a secret (client_secret or client_secret_file),
    /// a certificate (client_certificate + client_key) or a federated assertion file.
    fn client_credential(&self, oidc: &mut OidcConfig) -> Result<(), ConfigError> {
        if let Some(path) = &oidc.client_secret_file {
            if !oidc.client_secret.is_empty() {
                return Err(self.err(
                    "oidc.client_secret_file",
                    "is set together with oidc.client_secret",
                    "set only one of them",
                ));
            }
            oidc.client_secret = self.read_secret_file("oidc.client_secret_file", path)?;
        }
        match (&oidc.client_certificate, &oidc.client_key) {
            (Some(_), None) => {
                return Err(self.err(
                    "oidc.client_key",
                    "is missing while oidc.client_certificate is set",
                    "a certificate credential needs both: set oidc.client_key to the certificate's private key (PEM)",
                ))
            }
            (None, Some(_)) => {
                return Err(self.err(
                    "oidc.client_certificate",
                    "is missing while oidc.client_key is set",
                    "a certificate credential needs both: set oidc.client_certificate to the certificate (PEM) uploaded to Azure",
                ))
            }
            _ => {}
        }
        let kinds: Vec<&str> = [
            (!oidc.client_secret.is_empty()).then_some("oidc.client_secret"),
            oidc.client_certificate
                .is_some()
                .then_some("oidc.client_certificate + oidc.client_key"),
            oidc.client_assertion_file
                .is_some()
                .then_some("oidc.client_assertion_file"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match kinds.len() {
            1 => Ok(()),
            0 => Err(self.err(
                "oidc.client_secret",
                "no client credential is configured",
                format!(
                    "set one of: oidc.client_secret (or oidc.client_secret_file, or {}), oidc.client_certificate + oidc.client_key (recommended), oidc.client_assertion_file (federated credential)",
                    env_name("oidc.client_secret")
                ),
            )),
            _ => Err(self.err(
                kinds[1].split(' ').next().unwrap_or("oidc.client_secret"),
                format!("several client credentials are configured: {}", kinds.join(", ")),
                "configure exactly one credential kind",
            )),
        }
    }

    fn headers_and_prefix(&self, config: &Config) -> Result<(), ConfigError> {
        let h = &config.headers;
        for (key, name) in [
            ("headers.user", &h.user),
            ("headers.email", &h.email),
            ("headers.preferred_username", &h.preferred_username),
            ("headers.groups", &h.groups),
            ("headers.oid", &h.oid),
            ("headers.tid", &h.tid),
        ] {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
                return Err(self.err(
                    key,
                    format!("{name:?} is not a valid header name"),
                    "use letters, digits and dashes, e.g. \"X-Forwarded-User\"",
                ));
            }
        }
        let prefix = &config.gateway.prefix;
        if !prefix.starts_with('/')
            || prefix.len() < 2
            || prefix.ends_with('/')
            || prefix.contains("//")
        {
            return Err(self.err(
                "gateway.prefix",
                format!("{prefix:?} is not a path prefix"),
                "use an absolute path without a trailing slash, e.g. \"/.gateway\"",
            ));
        }
        if config.session.max_login_flows == 0 || config.session.max_login_flows > 20 {
            return Err(self.err(
                "session.max_login_flows",
                "must be between 1 and 20",
                "the default is 5",
            ));
        }
        Ok(())
    }

    fn access(&self, config: &Config) -> Result<(), ConfigError> {
        use crate::routes::{Methods, PathPattern};
        for (i, route) in config.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            PathPattern::parse(&route.path).map_err(|e| {
                self.err(
                    &format!("{key}.path"),
                    format!("{:?}: {e}", route.path),
                    "write patterns like \"/exact\", \"/a/*/c\" or \"/admin/**\"",
                )
            })?;
            Methods::parse(&route.methods).map_err(|e| {
                self.err(
                    &format!("{key}.methods"),
                    e,
                    "list HTTP methods like [\"GET\", \"HEAD\"]",
                )
            })?;
            if route.action != RouteAction::Authenticated && !route.allow.is_empty() {
                return Err(self.err(
                    &format!("{key}.allow"),
                    "only applies to action = \"authenticated\"",
                    "remove allow, or make the route authenticated",
                ));
            }
        }
        for (key, list) in [
            ("rustdesk.api_paths", &config.rustdesk.api_paths),
            ("rustdesk.websocket_paths", &config.rustdesk.websocket_paths),
        ] {
            for path in list {
                PathPattern::parse(path).map_err(|e| {
                    self.err(
                        key,
                        format!("{path:?}: {e}"),
                        "write patterns like \"/api/heartbeat\" or \"/api/audit/**\"",
                    )
                })?;
            }
        }
        for domain in &config.access.email_domains {
            if domain.is_empty()
                || domain.contains('@')
                || domain.starts_with('.')
                || domain.contains(char::is_whitespace)
            {
                return Err(self.err(
                    "access.email_domains",
                    format!("{domain:?} is not a domain"),
                    "list bare domains like \"contoso.com\" (matched exactly: sub.contoso.com is a different domain)",
                ));
            }
        }
        let a = &config.assertion;
        if a.enabled {
            if http::HeaderName::from_bytes(a.header.as_bytes()).is_err() {
                return Err(self.err(
                    "assertion.header",
                    format!("{:?} is not a header name", a.header),
                    "use e.g. \"X-Gateway-Assertion\"",
                ));
            }
            if a.lifetime.is_zero() || a.lifetime > Duration::from_secs(60) {
                return Err(self.err(
                    "assertion.lifetime",
                    "must be between 1s and 60s",
                    "keep assertions short-lived, e.g. \"60s\"",
                ));
            }
            if let Some(path) = &a.key_file {
                if !path.is_file() {
                    return Err(self.err(
                        "assertion.key_file",
                        format!("{} does not exist", path.display()),
                        "create a P-256 key: openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out assertion.key",
                    ));
                }
            }
        }
        Ok(())
    }

    fn acme(&self, acme: &mut AcmeConfig) -> Result<(), ConfigError> {
        if !acme.enabled {
            return Ok(());
        }
        if acme.domains.is_empty() {
            return Err(self.err(
                "acme.domains",
                "is empty while acme.enabled = true",
                "list the DNS names the certificate is for, e.g. [\"console.example.com\"]",
            ));
        }
        for domain in &mut acme.domains {
            *domain = domain.trim().to_ascii_lowercase();
            let valid = !domain.is_empty()
                && domain.len() <= 253
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && domain.parse::<IpAddr>().is_err()
                && domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !valid {
                return Err(self.err(
                    "acme.domains",
                    format!("{domain:?} is not a DNS name TLS-ALPN-01 can validate"),
                    "list plain DNS names like \"console.example.com\" (no wildcards: TLS-ALPN-01 cannot validate them; no IP addresses)",
                ));
            }
        }
        for contact in &mut acme.contact {
            let address = contact.trim().trim_start_matches("mailto:");
            if address.split('@').count() != 2 || address.contains(char::is_whitespace) {
                return Err(self.err(
                    "acme.contact",
                    format!("{contact:?} is not an e-mail address"),
                    "write it like \"ops@example.com\" (or \"mailto:ops@example.com\")",
                ));
            }
            *contact = format!("mailto:{address}");
        }
        let directory: Uri = acme.directory.trim().parse().map_err(|e| {
            self.err(
                "acme.directory",
                format!("{:?} is not a URL ({e})", acme.directory),
                format!("use the CA's directory URL, e.g. {LETS_ENCRYPT}"),
            )
        })?;
        if directory.scheme_str() != Some("https") || directory.host().is_none() {
            return Err(self.err(
                "acme.directory",
                format!("{:?} is not an https:// URL", acme.directory),
                format!("ACME directories are served over https, e.g. {LETS_ENCRYPT}"),
            ));
        }
        if let Some(path) = &acme.directory_ca_file {
            if !path.is_file() {
                return Err(self.err(
                    "acme.directory_ca_file",
                    format!("{} does not exist", path.display()),
                    "point it at the PEM CA certificate of your private ACME directory, or remove it for a public CA",
                ));
            }
        }
        if acme.renew_before < Duration::from_secs(3600) {
            return Err(self.err(
                "acme.renew_before",
                "is shorter than an hour",
                "renew well ahead of expiry, e.g. \"30d\" (Let's Encrypt certificates last 90 days)",
            ));
        }
        Ok(())
    }

    /// `[upstream]`, the RustDesk preset's upstreams and `[upstreams.<name>]`, checked.
    fn upstreams(&self, config: &Config) -> Result<Vec<UpstreamSettings>, ConfigError> {
        let mut all = vec![self.upstream("upstream", DEFAULT_UPSTREAM, &config.upstream, false)?];
        let rustdesk = &config.rustdesk;
        for (key, name, url) in [
            (
                "rustdesk.id_server",
                RUSTDESK_ID_UPSTREAM,
                &rustdesk.id_server,
            ),
            (
                "rustdesk.relay_server",
                RUSTDESK_RELAY_UPSTREAM,
                &rustdesk.relay_server,
            ),
        ] {
            let Some(url) = url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
                continue;
            };
            if !rustdesk.enabled {
                return Err(self.err(
                    key,
                    "is set but rustdesk.enabled is false",
                    "set rustdesk.enabled = true (or remove the key)",
                ));
            }
            // The preset's upstreams take every setting but the URL from [upstream].
            let upstream = UpstreamConfig::like(&config.upstream, url);
            let mut checked = self.upstream(key, name, &upstream, true)?;
            checked.key = key.to_string();
            all.push(checked);
        }
        for (name, upstream) in &config.upstreams {
            let key = format!("upstreams.{name}");
            let well_formed = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !well_formed {
                return Err(self.err(
                    &key,
                    format!("{name:?} is not a usable upstream name"),
                    "use lower-case letters, digits and _ (environment overrides \
                     OIDC_GATEWAY__UPSTREAMS__<NAME>__URL can only reach such names)",
                ));
            }
            if let Some(taken) = all.iter().find(|u| u.name == *name) {
                return Err(self.err(
                    &key,
                    format!(
                        "the name {name:?} is already the upstream of `{}`",
                        taken.key
                    ),
                    "give this upstream another name",
                ));
            }
            all.push(self.upstream(&key, name, upstream, false)?);
        }
        Ok(all)
    }

    /// Each route's `upstream` names one that exists.
    fn routes_upstreams(
        &self,
        config: &Config,
        upstreams: &[UpstreamSettings],
    ) -> Result<(), ConfigError> {
        for (i, route) in config.routes.iter().enumerate() {
            let Some(name) = &route.upstream else {
                continue;
            };
            let key = format!("routes[{i}].upstream");
            if route.action == RouteAction::Deny {
                return Err(self.err(
                    &key,
                    "is set on a route with action = \"deny\", which forwards nothing",
                    "remove upstream from this route",
                ));
            }
            if !upstreams.iter().any(|u| u.name == *name) {
                let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                return Err(self.err(
                    &key,
                    format!("{name:?} is not an upstream (known: {})", known.join(", ")),
                    format!(
                        "define [upstreams.{name}] with a url, or name one of the known upstreams"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn upstream(
        &self,
        section: &str,
        name: &str,
        upstream: &UpstreamConfig,
        client_address_only: bool,
    ) -> Result<UpstreamSettings, ConfigError> {
        let url_key = if section.starts_with("rustdesk.") {
            section.to_string()
        } else {
            format!("{section}.url")
        };
        let key = url_key.as_str();
        let raw = upstream.url.trim();
        let uri: Uri = raw.parse().map_err(|e| {
            self.err(
                key,
                format!("{raw:?} is not a URL ({e})"),
                "write it like \"http://127.0.0.1:21114\"",
            )
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(self.err(
                key,
                format!("{raw:?} is not an http:// or https:// URL with a host"),
                "write it like \"http://127.0.0.1:21114\"",
            ));
        }
        self.origin_only(
            key,
            raw,
            &uri,
            "give only scheme://host[:port]; request paths are forwarded unchanged",
        )?;
        let section = if section.starts_with("rustdesk.") {
            "upstream"
        } else {
            section
        };
        if let Some(ca) = &upstream.ca_file {
            if !ca.is_file() {
                return Err(self.err(
                    &format!("{section}.ca_file"),
                    format!("{} does not exist", ca.display()),
                    "point it at a PEM file with the CA that signed the upstream's certificate",
                ));
            }
        }
        if upstream.connect_timeout.is_zero() || upstream.response_timeout.is_zero() {
            return Err(self.err(
                &format!("{section}.connect_timeout"),
                "upstream timeouts must be positive",
                "use durations like \"5s\" (connect) and \"60s\" (response)",
            ));
        }
        if upstream.max_connections == 0 {
            return Err(self.err(
                &format!("{section}.max_connections"),
                "is 0: no request could ever be forwarded",
                "use a positive number of connections per worker (the default is 1024)",
            ));
        }
        Ok(UpstreamSettings {
            name: name.to_string(),
            key: section.to_string(),
            url: uri,
            config: upstream.clone(),
            client_address_only,
        })
    }

    fn session(&self, session: &mut SessionConfig) -> Result<(), ConfigError> {
        if let Some(path) = &session.secret_file {
            if !session.secret.is_empty() {
                return Err(self.err(
                    "session.secret_file",
                    "is set together with session.secret",
                    "set only one of them",
                ));
            }
            session.secret = self.read_secret_file("session.secret_file", path)?;
        }
        if !session.secret.is_empty() {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(session.secret.trim())
                .map_err(|_| {
                    self.err(
                        "session.secret",
                        "is not base64",
                        "generate one with: openssl rand -base64 32 (or head -c32 /dev/urandom | base64)",
                    )
                })?;
            if decoded.len() < 32 {
                return Err(self.err(
                    "session.secret",
                    format!("decodes to {} bytes, fewer than 32", decoded.len()),
                    "generate one with: openssl rand -base64 32",
                ));
            }
        }
        if session.ttl.is_zero() || session.idle_timeout.is_zero() {
            return Err(self.err(
                "session.ttl",
                "session lifetimes must be positive",
                "use durations like \"12h\" (ttl) and \"1h\" (idle_timeout)",
            ));
        }
        self.session_store(session)
    }

    /// `session.store` and the keys of the store it names.
    fn session_store(&self, session: &mut SessionConfig) -> Result<(), ConfigError> {
        if let Some(path) = &session.redis_url_file {
            if !session.redis_url.is_empty() {
                return Err(self.err(
                    "session.redis_url_file",
                    "is set together with session.redis_url",
                    "set only one of them",
                ));
            }
            session.redis_url = self.read_secret_file("session.redis_url_file", path)?;
        }
        if session.store == SessionStoreKind::Redis {
            self.redis_endpoints(session)?;
        } else if !session.redis_sentinels.is_empty() || !session.redis_sentinel_master.is_empty() {
            let key = if session.redis_sentinels.is_empty() {
                "session.redis_sentinel_master"
            } else {
                "session.redis_sentinels"
            };
            return Err(self.err(
                key,
                "is set, but session.store is not \"redis\"",
                "set session.store = \"redis\" to keep sessions in Redis behind Sentinel, or remove it",
            ));
        }
        let prefix = &session.redis_prefix;
        if prefix.len() > 64 || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.err(
                "session.redis_prefix",
                "must be at most 64 characters without spaces or control characters",
                "use something like \"oidc-gateway:\"",
            ));
        }
        if session.cache_ttl >= session.idle_timeout {
            return Err(self.err(
                "session.cache_ttl",
                "must be shorter than session.idle_timeout",
                "keep it to a few seconds: it bounds how long another replica still \
                 serves a session that was signed out",
            ));
        }
        Ok(())
    }

    /// `session.store = "redis"`: `redis_url`, or Sentinel (`redis_sentinels`
    /// and `redis_sentinel_master`, with `redis_url` for the scheme, user,
    /// password and db used with the primary), and `redis_ca_file`.
    fn redis_endpoints(&self, session: &SessionConfig) -> Result<(), ConfigError> {
        let sentinel = !session.redis_sentinels.is_empty();
        let url = session.redis_url.trim();
        if url.is_empty() && !sentinel {
            return Err(self.err(
                "session.redis_url",
                "is required with session.store = \"redis\"",
                "set it to redis://host:6379 (rediss:// for TLS; redis://user:password@host/0 \
                 with an ACL user), or put that URL in a file named by session.redis_url_file; \
                 behind Sentinel, set session.redis_sentinels and session.redis_sentinel_master",
            ));
        }
        let url_scheme = (!url.is_empty()).then(|| scheme_of(url));
        if let Some(scheme) = &url_scheme {
            if !matches!(
                scheme.as_str(),
                "redis" | "rediss" | "valkey" | "valkeys" | "redis+unix" | "unix"
            ) {
                // The URL may hold a password: name the scheme only.
                return Err(self.err(
                    "session.redis_url",
                    format!(
                        "has scheme {scheme:?}; expected redis://, rediss:// (TLS) or redis+unix://"
                    ),
                    "write it as redis://[user:password@]host[:port][/db]",
                ));
            }
        }
        let mut tls = url_scheme.as_deref().is_some_and(is_tls_scheme);
        if sentinel {
            if matches!(url_scheme.as_deref(), Some("redis+unix" | "unix")) {
                return Err(self.err(
                    "session.redis_url",
                    "names a Unix socket, but with session.redis_sentinels the primary is the \
                     TCP address Sentinel names",
                    "write it as redis://[user:password@]host[/db] (rediss:// for TLS): with \
                     Sentinel only its scheme, user, password and db are used",
                ));
            }
            if session.redis_sentinel_master.trim().is_empty() {
                return Err(self.err(
                    "session.redis_sentinel_master",
                    "is required with session.redis_sentinels",
                    "set it to the name the Sentinels monitor the primary under \
                     (`sentinel monitor <name> ...` in sentinel.conf), e.g. \"mymaster\"",
                ));
            }
            let schemes: Vec<String> = session
                .redis_sentinels
                .iter()
                .map(|u| scheme_of(u))
                .collect();
            for (i, scheme) in schemes.iter().enumerate() {
                if !matches!(scheme.as_str(), "redis" | "rediss" | "valkey" | "valkeys") {
                    return Err(self.err(
                        "session.redis_sentinels",
                        format!(
                            "entry {} has scheme {scheme:?}; expected redis:// or rediss:// (TLS)",
                            i + 1
                        ),
                        "write each Sentinel as redis://[user:password@]host:26379",
                    ));
                }
            }
            let sentinels_tls = schemes.iter().any(|s| is_tls_scheme(s));
            if schemes.iter().any(|s| is_tls_scheme(s) != sentinels_tls) {
                return Err(self.err(
                    "session.redis_sentinels",
                    "mixes redis:// and rediss:// Sentinels",
                    "reach every Sentinel the same way: all with rediss:// (TLS) or all with redis://",
                ));
            }
            tls |= sentinels_tls;
        } else if !session.redis_sentinel_master.is_empty() {
            return Err(self.err(
                "session.redis_sentinel_master",
                "is set, but session.redis_sentinels is empty",
                "list the Sentinels in session.redis_sentinels, or remove \
                 session.redis_sentinel_master to use session.redis_url directly",
            ));
        }
        if session.redis_ca_file.is_some() && !tls {
            return Err(self.err(
                "session.redis_ca_file",
                "is set, but neither session.redis_url nor session.redis_sentinels uses TLS",
                "write the URL as rediss://host:port (TLS), or remove session.redis_ca_file",
            ));
        }
        Ok(())
    }

    fn read_secret_file(&self, key: &str, path: &Path) -> Result<String, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            self.err(
                key,
                format!("cannot read {}: {e}", path.display()),
                "check that the secret is mounted there and readable by the gateway's user",
            )
        })?;
        let secret = text.trim_end_matches(['\r', '\n']).to_string();
        if secret.is_empty() {
            return Err(self.err(
                key,
                format!("{} is empty", path.display()),
                "put the secret in the file",
            ));
        }
        Ok(secret)
    }
}

fn parse_net(raw: &str) -> Option<IpNet> {
    let raw = raw.trim();
    raw.parse::<IpNet>()
        .ok()
        .or_else(|| raw.parse::<IpAddr>().ok().map(IpNet::from))
}

/// `localhost`, `127.0.0.0/8` and `::1`: the only hosts where plain http is tolerated.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// https://, or http:// to a loopback host (tests, local development).
pub fn is_secure_url(url: &str) -> bool {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "https" => true,
        Ok(u) if u.scheme() == "http" => u.host_str().is_some_and(is_loopback_host),
        _ => false,
    }
}

/// What the RustDesk preset will not do as configured (for `oidc-gateway check`).
pub fn rustdesk_warnings(settings: &Settings) -> Vec<String> {
    let rustdesk = &settings.config.rustdesk;
    if !rustdesk.enabled {
        return Vec::new();
    }
    let mut warnings = Vec::new();
    for (key, path, server, port) in [
        ("rustdesk.id_server", "/ws/id", "hbbs", 21118),
        ("rustdesk.relay_server", "/ws/relay", "hbbr", 21119),
    ] {
        let set = match key {
            "rustdesk.id_server" => &rustdesk.id_server,
            _ => &rustdesk.relay_server,
        };
        if set.as_deref().is_none_or(|s| s.trim().is_empty()) {
            warnings.push(format!(
                "{key} is not set: {path} goes to the console ({}), which does not serve it, so the \
                 web client and WebSocket desktop clients cannot connect through the gateway. Set \
                 {key} = \"http://127.0.0.1:{port}\" ({server}'s WebSocket port).",
                settings.upstream
            ));
        }
    }
    warnings
}

/// What the identity settings mean for who can sign in and how users are
/// named (for `oidc-gateway check`): the claims Entra only sends when asked.
pub fn identity_warnings(settings: &Settings) -> Vec<String> {
    let c = &settings.config;
    let mut warnings = Vec::new();
    if c.headers.user_claim == UserClaim::Email {
        warnings.push(
            "headers.user_claim = \"email\": only tokens whose email carries xms_edov: true can \
             sign in (add the optional claims email and xms_edov in Azure → Token configuration); \
             \"oid\" names users by what no admin can change"
                .to_string(),
        );
    }
    if c.headers.user_claim == UserClaim::Upn {
        warnings.push(
            "headers.user_claim = \"upn\": Entra sends upn only as an optional claim (Azure → \
             Token configuration → Add optional claim → ID → upn); without it every sign-in is \
             refused"
                .to_string(),
        );
    }
    let reads_addresses =
        |a: &AccessConfig| !a.email_domains.is_empty() || a.users.iter().any(|u| u.contains('@'));
    let address_rules =
        reads_addresses(&c.access) || c.routes.iter().any(|r| reads_addresses(&r.allow));
    if address_rules {
        warnings.push(
            "address rules (email_domains, users with '@') read the UPN of members of the token's \
             tenant, and email only with xms_edov: true: guests, and users known only by an \
             unverified email, are refused by them; list such users by object id (oid)"
                .to_string(),
        );
    }
    warnings
}

/// Key → value summary for `oidc-gateway check` (secrets shown only as set/unset).
pub fn summary(settings: &Settings) -> BTreeMap<&'static str, String> {
    let c = &settings.config;
    let mut m = BTreeMap::new();
    m.insert("config", settings.origin.clone());
    m.insert("server.listen", settings.listen.to_string());
    m.insert(
        "server.redirect_http",
        settings
            .redirect_http
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
    );
    m.insert(
        "metrics.listen",
        settings
            .metrics_listen
            .map(|a| format!("http://{a}/metrics"))
            .unwrap_or_else(|| "off".into()),
    );
    m.insert(
        "server.public_url",
        settings
            .public_url
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_else(|| "(the origin each request was made to)".into()),
    );
    m.insert(
        "server.trusted_proxies",
        if settings.trusted_proxies.is_empty() {
            "none (X-Forwarded-* from clients are replaced)".into()
        } else {
            settings
                .trusted_proxies
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    m.insert("tls.cert", c.tls.cert.display().to_string());
    m.insert("tls.key", c.tls.key.display().to_string());
    m.insert("oidc.issuer", c.oidc.issuer.clone());
    m.insert(
        "oidc.cloud",
        format!(
            "{} (sign-in on {}; Graph on {})",
            c.oidc.cloud.name(),
            c.oidc.cloud.login_hosts()[0],
            c.oidc.cloud.graph_hosts().join(" or ")
        ),
    );
    m.insert("oidc.client_id", c.oidc.client_id.clone());
    m.insert(
        "oidc.graph_url",
        format!(
            "{} (groups of users in more than 200 groups; needs User.Read{})",
            c.oidc.graph_url.as_deref().unwrap_or_default(),
            if settings.has_group_rules() {
                ", requested"
            } else {
                ""
            }
        ),
    );
    let options: Vec<String> = [
        c.oidc.prompt.as_ref().map(|p| format!("prompt={p}")),
        c.oidc
            .domain_hint
            .as_ref()
            .map(|d| format!("domain_hint={d}")),
        c.oidc.max_age.map(|a| format!("max_age={}", a.as_secs())),
    ]
    .into_iter()
    .flatten()
    .collect();
    m.insert(
        "oidc sign-in options",
        if options.is_empty() {
            "none".into()
        } else {
            options.join(" ")
        },
    );
    m.insert(
        "oidc credential",
        if c.oidc.client_certificate.is_some() {
            format!(
                "certificate (private_key_jwt, {:?})",
                c.oidc.client_assertion_alg
            )
        } else if let Some(path) = &c.oidc.client_assertion_file {
            format!("federated assertion file {}", path.display())
        } else {
            "client secret (set)".into()
        },
    );
    m.insert(
        "headers.user_claim",
        format!(
            "{} fills {} (a sign-in without it is refused); {} and {} carry oid and tid",
            c.headers.user_claim.name(),
            c.headers.user,
            c.headers.oid,
            c.headers.tid
        ),
    );
    m.insert("upstream.url", settings.upstream.to_string());
    m.insert(
        "session.secret",
        if c.session.secret.is_empty() {
            "(not set: random per start, sessions end on restart)".into()
        } else {
            "(set)".into()
        },
    );
    m.insert(
        "session.store",
        match c.session.store {
            SessionStoreKind::Memory if c.session.secret.is_empty() => {
                "memory (no state file without session.secret)".into()
            }
            SessionStoreKind::Memory => format!(
                "memory, kept across restarts in {}",
                c.session.state_file.display()
            ),
            SessionStoreKind::Redis => format!(
                "redis (prefix {:?}, local cache {})",
                c.session.redis_prefix,
                humantime::format_duration(c.session.cache_ttl)
            ),
        },
    );
    m.insert("log.format", format!("{:?}", c.log.format).to_lowercase());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[oidc]
issuer = "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
client_id = "abc"
client_secret = "s3cret"
[upstream]
url = "http://127.0.0.1:21114"
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn graph_url_must_be_a_graph_host_of_the_cloud() {
        let s = load_str(MINIMAL, &[]).unwrap();
        assert_eq!(
            s.config.oidc.graph_url.as_deref(),
            Some("https://graph.microsoft.com"),
            "default: the global cloud's Graph"
        );
        for (url, problem) in [
            ("https://graph.evil.example", "not a Microsoft Graph host"),
            // The retired AAD Graph that overage tokens name: never.
            ("https://graph.windows.net", "not a Microsoft Graph host"),
            // Another cloud's Graph.
            (
                "https://microsoftgraph.chinacloudapi.cn",
                "not a Microsoft Graph host",
            ),
            ("http://graph.microsoft.com", "not an https:// URL"),
            // Loopback only with a loopback (development) issuer.
            ("http://127.0.0.1:9", "is a loopback address"),
            ("https://graph.microsoft.com/v1.0", "has a path"),
        ] {
            let e = load_str(MINIMAL, &env(&[("OIDC_GATEWAY__OIDC__GRAPH_URL", url)]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("oidc.graph_url")
                    && e.contains(problem)
                    && e.contains("graph.microsoft.com"),
                "{url}: {e}"
            );
        }
    }

    #[test]
    fn group_rules_ask_for_user_read() {
        let s = load_str(MINIMAL, &[]).unwrap();
        assert!(!s.config.oidc.scopes.iter().any(|s| s == "User.Read"));
        let text = format!("{MINIMAL}[access]\ngroups = [\"g1\"]\n");
        let s = load_str(&text, &[]).unwrap();
        assert!(s.config.oidc.scopes.iter().any(|s| s == "User.Read"));
        let text =
            format!("{MINIMAL}[[routes]]\npath = \"/admin/**\"\nallow = {{ groups = [\"g1\"] }}\n");
        let s = load_str(&text, &[]).unwrap();
        assert!(s.config.oidc.scopes.iter().any(|s| s == "User.Read"));
        // Not next to another API's scope: one access token is for one resource.
        let s = load_str(
            &text,
            &env(&[(
                "OIDC_GATEWAY__OIDC__SCOPES",
                "[\"openid\", \"api://console/access\"]",
            )]),
        )
        .unwrap();
        assert!(!s.config.oidc.scopes.iter().any(|s| s == "User.Read"));
    }

    #[test]
    fn sign_in_options_are_checked() {
        let s = load_str(
            MINIMAL,
            &env(&[
                ("OIDC_GATEWAY__OIDC__PROMPT", "select_account"),
                ("OIDC_GATEWAY__OIDC__DOMAIN_HINT", "contoso.com"),
                ("OIDC_GATEWAY__OIDC__MAX_AGE", "8h"),
            ]),
        )
        .unwrap();
        assert_eq!(s.config.oidc.prompt.as_deref(), Some("select_account"));
        assert_eq!(s.config.oidc.max_age, Some(Duration::from_secs(8 * 3600)));
        let e = load_str(MINIMAL, &env(&[("OIDC_GATEWAY__OIDC__PROMPT", "always")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("oidc.prompt") && e.contains("select_account, login, consent, none"),
            "{e}"
        );
        let e = load_str(
            MINIMAL,
            &env(&[("OIDC_GATEWAY__OIDC__DOMAIN_HINT", "contoso.com&prompt=none")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("oidc.domain_hint"), "{e}");
        let e = load_str(MINIMAL, &env(&[("OIDC_GATEWAY__OIDC__MAX_AGE", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_age"), "{e}");
    }

    #[test]
    fn a_reload_applies_rules_and_upstreams_and_names_the_keys_that_need_a_restart() {
        let running = load_str(MINIMAL, &[]).unwrap();
        let edited = MINIMAL.replace("21114", "21115")
            + "[server]\nlisten = \"0.0.0.0:9443\"\nworkers = 3\n\
               [access]\nusers = [\"bob@example.com\"]\n\
               [headers]\nuser = \"x-user\"\npass_access_token = true\n";
        let (reloaded, restart) = reloaded(&running, load_str(&edited, &[]).unwrap());
        // pass_access_token also adds offline_access to the scopes sign-in asks for.
        assert_eq!(
            restart,
            [
                "server.listen",
                "server.workers",
                "oidc.scopes",
                "headers.pass_access_token"
            ]
        );
        assert_eq!(reloaded.config.access.users, ["bob@example.com"]);
        assert_eq!(reloaded.upstream.port_u16(), Some(21115));
        assert_eq!(reloaded.upstreams[0].url.port_u16(), Some(21115));
        assert_eq!(reloaded.config.headers.user, "x-user");
        // Restart-only keys keep their running values.
        assert_eq!(reloaded.listen, running.listen);
        assert_eq!(
            reloaded.config.server.workers,
            running.config.server.workers
        );
        assert!(!reloaded.config.headers.pass_access_token);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let s = load_str(MINIMAL, &[]).unwrap();
        assert_eq!(s.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(s.config.oidc.callback_path, "/api/oidc/callback");
        assert_eq!(s.config.session.ttl, Duration::from_secs(12 * 3600));
    }

    /// MINIMAL with another issuer.
    fn with_issuer(issuer: &str) -> String {
        MINIMAL.replace(
            "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
            issuer,
        )
    }

    #[test]
    fn cloud_defaults_to_global_and_env_selects_another() {
        let s = load_str(MINIMAL, &[]).unwrap();
        assert_eq!(s.config.oidc.cloud, crate::cloud::Cloud::Global);
        let china =
            with_issuer("https://login.chinacloudapi.cn/11111111-2222-3333-4444-555555555555/v2.0");
        let s = load_str(&china, &env(&[("OIDC_GATEWAY__OIDC__CLOUD", "china")])).unwrap();
        assert_eq!(s.config.oidc.cloud, crate::cloud::Cloud::China);
        assert!(summary(&s)["oidc.cloud"].contains("microsoftgraph.chinacloudapi.cn"));
        assert!(summary(&s)["headers.user_claim"]
            .starts_with("preferred_username fills X-Forwarded-User"));
        let partner = with_issuer(
            "https://login.partner.microsoftonline.cn/11111111-2222-3333-4444-555555555555/v2.0",
        );
        let e = load_str(&partner, &[]).unwrap_err().to_string();
        assert!(e.contains("china cloud"), "{e}");
        let s = load_str(
            &partner.replace("[upstream]", "cloud = \"china\"\n[upstream]"),
            &[],
        )
        .unwrap();
        assert_eq!(s.config.oidc.cloud, crate::cloud::Cloud::China);
    }

    #[test]
    fn issuer_on_another_clouds_host_names_both_keys() {
        let gov = with_issuer(
            "https://login.microsoftonline.us/11111111-2222-3333-4444-555555555555/v2.0",
        );
        let e = load_str(&gov, &[]).unwrap_err().to_string();
        assert!(
            e.contains("oidc.issuer")
                && e.contains("oidc.cloud")
                && e.contains("usgov")
                && e.contains("\"global\""),
            "{e}"
        );
        load_str(&gov, &env(&[("OIDC_GATEWAY__OIDC__CLOUD", "usgov")])).unwrap();
        let e = load_str(MINIMAL, &env(&[("OIDC_GATEWAY__OIDC__CLOUD", "china")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("oidc.cloud")
                && e.contains("OIDC_GATEWAY__OIDC__CLOUD")
                && e.contains("login.partner.microsoftonline.cn"),
            "{e}"
        );
        let e = load_str(MINIMAL, &env(&[("OIDC_GATEWAY__OIDC__CLOUD", "germany")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("oidc.cloud") && e.contains("usgov"), "{e}");
    }

    #[test]
    fn user_claim_takes_exactly_the_listed_claims() {
        let s = load_str(
            MINIMAL,
            &env(&[("OIDC_GATEWAY__HEADERS__USER_CLAIM", "oid")]),
        )
        .unwrap();
        assert_eq!(s.config.headers.user_claim, UserClaim::Oid);
        assert_eq!(s.config.headers.oid, "X-Forwarded-Oid");
        assert_eq!(s.config.headers.tid, "X-Forwarded-Tid");
        let e = load_str(
            MINIMAL,
            &env(&[("OIDC_GATEWAY__HEADERS__USER_CLAIM", "name")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("headers.user_claim")
                && e.contains("preferred_username")
                && e.contains("oid")
                && e.contains("OIDC_GATEWAY__HEADERS__USER_CLAIM"),
            "{e}"
        );
        let e = load_str(MINIMAL, &env(&[("OIDC_GATEWAY__HEADERS__TID", "X Tenant")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("headers.tid") && e.contains("not a valid header name"),
            "{e}"
        );
    }

    #[test]
    fn discovery_url_must_be_https_or_loopback() {
        let s = load_str(
            MINIMAL,
            &env(&[(
                "OIDC_GATEWAY__OIDC__DISCOVERY_URL",
                "http://127.0.0.1:9000/t/v2.0/.well-known/openid-configuration",
            )]),
        )
        .unwrap();
        assert!(s.config.oidc.discovery_url.is_some());
        let e = load_str(
            MINIMAL,
            &env(&[(
                "OIDC_GATEWAY__OIDC__DISCOVERY_URL",
                "http://login.contoso.com/t/v2.0/.well-known/openid-configuration",
            )]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("oidc.discovery_url") && e.contains("https://"),
            "{e}"
        );
    }

    #[test]
    fn external_id_issuer_is_a_global_single_tenant_issuer() {
        let ciam = with_issuer(
            "https://11111111-2222-3333-4444-555555555555.ciamlogin.com/11111111-2222-3333-4444-555555555555/v2.0",
        );
        let s = load_str(&ciam, &[]).unwrap();
        assert!(s.config.oidc.allowed_tenants.is_empty());
        let e = load_str(&ciam, &env(&[("OIDC_GATEWAY__OIDC__CLOUD", "usgov")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ciamlogin.com") && e.contains("global"), "{e}");
    }

    #[test]
    fn env_overrides_win_and_numeric_secret_stays_a_string() {
        let s = load_str(
            MINIMAL,
            &env(&[
                ("OIDC_GATEWAY__OIDC__CLIENT_SECRET", "12345"),
                ("OIDC_GATEWAY__SERVER__MAX_HEADER_BYTES", "16384"),
                ("OIDC_GATEWAY__TLS__SELF_SIGNED", "false"),
                (
                    "OIDC_GATEWAY__SERVER__TRUSTED_PROXIES",
                    "[\"10.0.0.0/8\", \"192.168.1.1\"]",
                ),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.config.oidc.client_secret, "12345");
        assert_eq!(s.config.server.max_header_bytes, 16384);
        assert!(!s.config.tls.self_signed);
        assert_eq!(s.trusted_proxies.len(), 2);
    }

    #[test]
    fn sign_in_limits_come_from_the_file_or_the_environment_and_a_bad_prefix_is_named() {
        let s = load_str(
            &format!("{MINIMAL}\n[rate_limit]\nfailed_burst = 7\nipv6_prefix = 56\n"),
            &env(&[
                ("OIDC_GATEWAY__RATE_LIMIT__LOGIN_BURST", "900"),
                ("OIDC_GATEWAY__RATE_LIMIT__GLOBAL_PER_MINUTE", "0"),
            ]),
        )
        .unwrap();
        let limits = &s.config.rate_limit;
        assert_eq!(
            (limits.login_burst, limits.global_per_minute),
            (900, 0),
            "from the environment"
        );
        assert_eq!((limits.failed_burst, limits.ipv6_prefix), (7, 56));
        assert_eq!(limits.login_per_minute, 120, "default");
        let e = load_str(
            MINIMAL,
            &env(&[("OIDC_GATEWAY__RATE_LIMIT__IPV6_PREFIX", "129")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rate_limit.ipv6_prefix") && e.contains("0 to 128"),
            "{e}"
        );
    }

    #[test]
    fn near_miss_environment_prefixes_are_refused_with_the_right_spelling() {
        for (name, fixed) in [
            (
                "OIDC_GATEWAY_OIDC__CLIENT_SECRET",
                "OIDC_GATEWAY__OIDC__CLIENT_SECRET",
            ),
            (
                "oidc_gateway__oidc__client_secret",
                "OIDC_GATEWAY__OIDC__CLIENT_SECRET",
            ),
            ("OIDC-GATEWAY__UPSTREAM__URL", "OIDC_GATEWAY__UPSTREAM__URL"),
            ("OIDCGATEWAY__UPSTREAM__URL", "OIDC_GATEWAY__UPSTREAM__URL"),
        ] {
            let e = load_str(MINIMAL, &env(&[(name, "x")]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("environment variable {name} is not read"))
                    && e.contains(&format!("rename it {fixed}")),
                "{name}: {e}"
            );
        }
        let e = load_str(MINIMAL, &env(&[("OIDC_GATEWAY__", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("OIDC_GATEWAY__ names no key"), "{e}");
    }

    #[test]
    fn unrelated_and_kubernetes_service_variables_are_not_near_misses() {
        // What Kubernetes injects for a Service named oidc-gateway, and the config path variable.
        load_str(
            MINIMAL,
            &env(&[
                ("OIDC_GATEWAY_SERVICE_HOST", "10.0.0.1"),
                ("OIDC_GATEWAY_PORT_8443_TCP", "tcp://10.0.0.1:8443"),
                ("OIDC_GATEWAY_CONFIG", "/etc/oidc-gateway/config.toml"),
                ("OTHER__OIDC__CLIENT_SECRET", "x"),
            ]),
        )
        .unwrap();
    }

    #[test]
    fn unknown_section_or_key_in_an_override_names_the_variable() {
        for (name, key) in [
            ("OIDC_GATEWAY__OIDCC__CLIENT_SECRET", "oidcc"),
            ("OIDC_GATEWAY__OIDC__CLIENTSECRET", "oidc.clientsecret"),
            ("OIDC_GATEWAY__OIDC_CLIENT_SECRET", "oidc_client_secret"),
        ] {
            let e = load_str(MINIMAL, &env(&[(name, "x")]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("unknown key `{key}`"))
                    && e.contains(&format!("environment variable {name}")),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn relative_paths_follow_the_config_files_directory() {
        let dir = tempfile::TempDir::new().unwrap();
        let conf = dir.path().join("etc");
        std::fs::create_dir_all(conf.join("secrets")).unwrap();
        std::fs::write(conf.join("secrets/client"), "from-the-file\n").unwrap();
        std::fs::write(conf.join("secrets/session"), "x".repeat(44)).unwrap();
        let absolute_ca = dir.path().join("ca.pem");
        std::fs::write(&absolute_ca, "").unwrap();
        let text = MINIMAL
            .replace("client_secret = \"s3cret\"", "client_secret_file = \"secrets/client\"")
            .replace(
                "[upstream]",
                &format!("[tls]\ncert = \"certs/gw.crt\"\nkey = \"../keys/gw.key\"\n[upstream]\nca_file = {:?}", absolute_ca.display().to_string()),
            );
        std::fs::write(conf.join("config.toml"), text).unwrap();
        let source = ConfigSource {
            path: conf.join("config.toml"),
            explicit: true,
            // An override's relative path follows the config file too.
            env: env(&[("OIDC_GATEWAY__SESSION__SECRET_FILE", "secrets/session")]),
        };
        let s = load(&source).unwrap();
        assert_eq!(s.config.tls.cert, conf.join("certs/gw.crt"));
        assert_eq!(s.config.tls.key, conf.join("../keys/gw.key"));
        assert_eq!(s.config.oidc.client_secret, "from-the-file");
        assert_eq!(s.config.session.secret, "x".repeat(44));
        assert_eq!(
            s.config.upstream.ca_file.as_deref(),
            Some(absolute_ca.as_path())
        );
    }

    #[test]
    fn path_keys_are_those_ending_in_file_or_dir_and_the_tls_pair() {
        for key in [
            "tls.cert",
            "tls.key",
            "oidc.client_secret_file",
            "upstream.ca_file",
            "acme.cache_dir",
        ] {
            assert!(is_path_key(key), "{key}");
        }
        for key in [
            "oidc.client_secret",
            "session.secret",
            "assertion.key_file_x",
            "server.listen",
        ] {
            assert!(!is_path_key(key), "{key}");
        }
    }

    #[test]
    fn exactly_one_client_credential_kind() {
        let without_secret = MINIMAL.replace("client_secret = \"s3cret\"\n", "");
        let e = load_str(&without_secret, &[]).unwrap_err().to_string();
        assert!(
            e.contains("no client credential")
                && e.contains("oidc.client_certificate + oidc.client_key")
                && e.contains("oidc.client_assertion_file"),
            "{e}"
        );
        let cert_env = [
            ("OIDC_GATEWAY__OIDC__CLIENT_CERTIFICATE", "c.pem"),
            ("OIDC_GATEWAY__OIDC__CLIENT_KEY", "k.pem"),
        ];
        let s = load_str(&without_secret, &env(&cert_env)).unwrap();
        assert_eq!(
            s.config.oidc.client_key.as_deref(),
            Some(Path::new("k.pem"))
        );
        assert_eq!(
            s.config.oidc.client_assertion_alg,
            ClientAssertionAlg::Rs256
        );

        let both = load_str(MINIMAL, &env(&cert_env)).unwrap_err().to_string();
        assert!(
            both.contains("several client credentials")
                && both.contains("oidc.client_secret, oidc.client_certificate + oidc.client_key"),
            "{both}"
        );
        let half = load_str(
            &without_secret,
            &env(&[("OIDC_GATEWAY__OIDC__CLIENT_CERTIFICATE", "c.pem")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            half.contains("oidc.client_key") && half.contains("is missing"),
            "{half}"
        );
        let federated_and_secret = load_str(
            MINIMAL,
            &env(&[(
                "OIDC_GATEWAY__OIDC__CLIENT_ASSERTION_FILE",
                "/var/run/token",
            )]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            federated_and_secret.contains("oidc.client_assertion_file"),
            "{federated_and_secret}"
        );
        let pss = load_str(
            &without_secret,
            &env(&[
                (
                    "OIDC_GATEWAY__OIDC__CLIENT_ASSERTION_FILE",
                    "/var/run/token",
                ),
                ("OIDC_GATEWAY__OIDC__CLIENT_ASSERTION_ALG", "PS256"),
            ]),
        )
        .unwrap();
        assert_eq!(
            pss.config.oidc.client_assertion_alg,
            ClientAssertionAlg::Ps256
        );
        let bad_alg = load_str(
            MINIMAL,
            &env(&[("OIDC_GATEWAY__OIDC__CLIENT_ASSERTION_ALG", "HS256")]),
        )
        .unwrap_err()
        .to_string();
        assert!(bad_alg.contains("client_assertion_alg"), "{bad_alg}");
    }

    #[test]
    fn session_store_keys_from_file_and_environment() {
        let s = load_str(MINIMAL, &[]).unwrap();
        assert_eq!(s.config.session.store, SessionStoreKind::Memory, "default");
        assert_eq!(s.config.session.cache_ttl, Duration::from_secs(5));
        let s = load_str(
            MINIMAL,
            &env(&[
                ("OIDC_GATEWAY__SESSION__STORE", "redis"),
                (
                    "OIDC_GATEWAY__SESSION__REDIS_URL",
                    "rediss://gw:pw@redis.internal:6380/2",
                ),
                ("OIDC_GATEWAY__SESSION__REDIS_PREFIX", "gw1:"),
                ("OIDC_GATEWAY__SESSION__CACHE_TTL", "2s"),
                ("OIDC_GATEWAY__SESSION__STATE_FILE", "/var/lib/x.state"),
            ]),
        )
        .unwrap();
        assert_eq!(s.config.session.store, SessionStoreKind::Redis);
        assert_eq!(s.config.session.redis_prefix, "gw1:");
        assert_eq!(s.config.session.cache_ttl, Duration::from_secs(2));
        assert_eq!(
            s.config.session.state_file,
            PathBuf::from("/var/lib/x.state")
        );
        assert!(
            !format!("{:?}", s.config).contains("pw@"),
            "the Redis URL may hold a password: never printed"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("redis_url");
        std::fs::write(&file, "redis://:secret@127.0.0.1:6379/\n").unwrap();
        let text = format!(
            "{MINIMAL}[session]\nstore = \"redis\"\nredis_url_file = \"{}\"\n",
            file.display()
        );
        let s = load_str(&text, &[]).unwrap();
        assert_eq!(
            s.config.session.redis_url,
            "redis://:secret@127.0.0.1:6379/"
        );
    }

    /// Each `[session]` text fails with an error naming the key and the problem,
    /// and no password.
    fn assert_session_errors(cases: &[(impl AsRef<str>, &str, &str)]) {
        for (lines, key, problem) in cases {
            let lines = lines.as_ref();
            let text = format!("{MINIMAL}[session]\n{lines}\n");
            let e = load_str(&text, &[]).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(problem), "{lines}: {e}");
            assert!(!e.contains(":pw@"), "no password in errors: {e}");
        }
    }

    #[test]
    fn bad_session_store_settings_name_the_key() {
        let cases = [
            ("store = \"redis\"", "session.redis_url", "is required"),
            (
                "store = \"redis\"\nredis_url = \"http://:pw@x\"",
                "session.redis_url",
                "has scheme \"http\"",
            ),
            ("store = \"disk\"", "session.store", "memory"),
            ("cache_ttl = \"2h\"", "session.cache_ttl", "shorter than"),
            (
                "redis_prefix = \"a b\"",
                "session.redis_prefix",
                "without spaces",
            ),
            (
                "redis_url = \"redis://x\"\nredis_url_file = \"/nonexistent\"",
                "session.redis_url_file",
                "together",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://x\"\nredis_ca_file = \"/ca.pem\"",
                "session.redis_ca_file",
                "uses TLS",
            ),
        ];
        assert_session_errors(&cases);
    }

    #[test]
    fn sentinels_are_a_list_or_a_comma_separated_override_and_redis_url_is_optional_with_them() {
        let text = format!(
            "{MINIMAL}[session]\nstore = \"redis\"\nredis_sentinels = [\"redis://:pw@10.0.0.1:26379\", \"redis://10.0.0.2:26379\"]\nredis_sentinel_master = \"mymaster\"\n"
        );
        let s = load_str(&text, &[]).unwrap();
        assert_eq!(
            s.config.session.redis_sentinels,
            ["redis://:pw@10.0.0.1:26379", "redis://10.0.0.2:26379"]
        );
        assert_eq!(s.config.session.redis_url, "", "optional with Sentinel");
        let debug = format!("{:?}", s.config);
        assert!(
            !debug.contains("pw@") && debug.contains("redis://<redacted>@10.0.0.1:26379"),
            "a Sentinel URL may hold a password: never printed: {debug}"
        );
        let s = load_str(
            MINIMAL,
            &env(&[
                ("OIDC_GATEWAY__SESSION__STORE", "redis"),
                (
                    "OIDC_GATEWAY__SESSION__REDIS_SENTINELS",
                    "redis://a:26379, rediss://b:26379",
                ),
                ("OIDC_GATEWAY__SESSION__REDIS_SENTINEL_MASTER", "gw"),
                (
                    "OIDC_GATEWAY__SESSION__REDIS_URL",
                    "rediss://user:pw@redis/2",
                ),
            ]),
        );
        let e = s.unwrap_err().to_string();
        assert!(
            e.contains("session.redis_sentinels") && e.contains("mixes"),
            "{e}"
        );
        let s = load_str(
            MINIMAL,
            &env(&[
                ("OIDC_GATEWAY__SESSION__STORE", "redis"),
                (
                    "OIDC_GATEWAY__SESSION__REDIS_SENTINELS",
                    "redis://a:26379,redis://b:26379",
                ),
                ("OIDC_GATEWAY__SESSION__REDIS_SENTINEL_MASTER", "gw"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.config.session.redis_sentinels,
            ["redis://a:26379", "redis://b:26379"]
        );
        assert_eq!(s.config.session.redis_sentinel_master, "gw");
    }

    #[test]
    fn bad_sentinel_settings_name_the_key() {
        let sentinels = "redis_sentinels = [\"redis://:pw@127.0.0.1:26379\"]";
        let cases = [
            (
                format!("store = \"redis\"\n{sentinels}"),
                "session.redis_sentinel_master",
                "is required with session.redis_sentinels",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://x\"\nredis_sentinel_master = \"m\"".into(),
                "session.redis_sentinel_master",
                "session.redis_sentinels is empty",
            ),
            (
                format!("{sentinels}\nredis_sentinel_master = \"m\""),
                "session.redis_sentinels",
                "session.store is not \"redis\"",
            ),
            (
                "redis_sentinel_master = \"m\"".into(),
                "session.redis_sentinel_master",
                "session.store is not \"redis\"",
            ),
            (
                "store = \"redis\"\nredis_sentinels = [\"http://:pw@x:26379\"]\nredis_sentinel_master = \"m\"".into(),
                "session.redis_sentinels",
                "entry 1 has scheme \"http\"",
            ),
            (
                "store = \"redis\"\nredis_sentinels = \"redis://:pw@a:26379,rediss://b:26379\"\nredis_sentinel_master = \"m\"".into(),
                "session.redis_sentinels",
                "mixes",
            ),
            (
                format!("store = \"redis\"\n{sentinels}\nredis_sentinel_master = \"m\"\nredis_url = \"redis+unix:///tmp/r.sock\""),
                "session.redis_url",
                "Unix socket",
            ),
            (
                format!("store = \"redis\"\n{sentinels}\nredis_sentinel_master = \"m\"\nredis_ca_file = \"/ca.pem\""),
                "session.redis_ca_file",
                "uses TLS",
            ),
        ];
        assert_session_errors(&cases);
        // TLS to the Sentinels alone is enough for a private CA.
        let text = format!(
            "{MINIMAL}[session]\nstore = \"redis\"\nredis_sentinels = \"rediss://a:26379\"\nredis_sentinel_master = \"m\"\nredis_ca_file = \"/ca.pem\"\n"
        );
        load_str(&text, &[]).unwrap();
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let s = load_str(MINIMAL, &[]).unwrap();
        let dbg = format!("{:?}", s.config);
        assert!(!dbg.contains("s3cret"), "{dbg}");
    }

    #[test]
    fn http_issuer_only_for_loopback() {
        let bad = MINIMAL.replace(
            "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
            "http://idp.example.com/v2.0",
        );
        let e = load_str(&bad, &[]).unwrap_err().to_string();
        assert!(e.contains("oidc.issuer") && e.contains("http://"), "{e}");
        let ok = MINIMAL.replace(
            "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
            "http://127.0.0.1:9999/tenant/v2.0",
        );
        load_str(&ok, &[]).unwrap();
    }

    fn required_overrides() -> Vec<(String, String)> {
        env(&[
            (
                "OIDC_GATEWAY__OIDC__ISSUER",
                "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
            ),
            ("OIDC_GATEWAY__OIDC__CLIENT_ID", "abc"),
            ("OIDC_GATEWAY__OIDC__CLIENT_SECRET", "s3cret"),
        ])
    }

    #[test]
    fn shipped_config_toml_states_exactly_the_defaults() {
        let shipped = load_str(include_str!("../config.toml"), &required_overrides()).unwrap();
        let minimal = load_str(MINIMAL, &required_overrides()).unwrap();
        assert_eq!(
            format!("{:?}", shipped.config),
            format!("{:?}", minimal.config)
        );
    }

    #[test]
    fn shipped_config_toml_documents_every_key() {
        let text = include_str!("../config.toml");
        let keys = [
            "listen",
            "redirect_http",
            "public_url",
            "trusted_proxies",
            "header_read_timeout",
            "tls_handshake_timeout",
            "max_header_bytes",
            "shutdown_grace",
            "workers",
            "idle_timeout",
            "send_timeout",
            "max_connections",
            "max_concurrent_streams",
            "cert",
            "key",
            "self_signed",
            "reload_interval",
            "domains",
            "contact",
            "directory",
            "directory_ca_file",
            "cache_dir",
            "renew_before",
            "challenge",
            "issuer",
            "client_id",
            "client_secret",
            "client_secret_file",
            "client_certificate",
            "client_key",
            "client_assertion_alg",
            "client_assertion_file",
            "scopes",
            "response_mode",
            "callback_path",
            "url",
            "preserve_host",
            "connect_timeout",
            "response_timeout",
            "pool_idle_timeout",
            "pool_max_idle_per_host",
            "ca_file",
            "max_connections",
            "tunnel_idle_timeout",
            "upstream",
            "id_server",
            "relay_server",
            "secret",
            "secret_file",
            "ttl",
            "idle_timeout",
            "format",
            "level",
        ];
        for key in keys {
            let line = text
                .lines()
                .position(|l| {
                    let l = l.trim_start_matches('#').trim();
                    l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
                })
                .unwrap_or_else(|| panic!("config.toml does not mention `{key}`"));
            let previous = text.lines().nth(line.saturating_sub(1)).unwrap_or_default();
            assert!(
                previous.trim_start().starts_with('#'),
                "`{key}` has no comment above it"
            );
        }
    }

    #[test]
    fn shipped_config_toml_refuses_to_run_with_placeholders() {
        let e = load_str(include_str!("../config.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("oidc.issuer") && e.contains("placeholder"),
            "{e}"
        );
    }
}
