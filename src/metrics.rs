//! Prometheus metrics, served at `/metrics` on a listener of their own
//! (`[metrics] listen`), never on the public port.
//!
//! Counting is the gateway's own: the request path bumps relaxed atomics in a
//! shard owned by its thread (no lock, no allocation, no cache line shared
//! between workers); a scrape sums the shards and encodes them with
//! `prometheus-client`'s text encoder. With metrics off nothing is counted:
//! each hook is one load of a flag that was never set. Gauges that describe
//! state (sessions, upstream connections, the certificate) are read at scrape
//! time from the parts that hold that state. Every label has a small fixed set
//! of values (upstream names come from the configuration) — never paths, users
//! or addresses.

use std::cell::OnceCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::certificate::ServedCertificate;
use crate::{full_body, Body};

/// A family of label values: the enum's variants in declaration order.
macro_rules! labels {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }
        impl $name {
            const LABELS: &'static [&'static str] = &[$($label),+];
            pub fn label(self) -> &'static str {
                Self::LABELS[self as usize]
            }
        }
    };
}

labels!(
    /// What the pipeline judged a request to be.
    RouteKind {
        /// /healthz, /readyz.
        Health => "health",
        /// The OIDC callback.
        Callback => "callback",
        /// The gateway's own endpoints (sign_in, sign_out, me, auth, jwks.json).
        Gateway => "gateway",
        /// A public route: forwarded without sign-in.
        Public => "public",
        /// Forwarded with an identity (session or bearer token).
        Authenticated => "authenticated",
        /// No identity: a login redirect or a 401.
        Anonymous => "anonymous",
        /// Refused by a rule or an edge check (400, 403, 421, 503 for the store).
        Refused => "refused",
    }
);

labels!(
    /// How a TLS handshake ended.
    Handshake {
        Ok => "ok",
        Failed => "failed",
        TimedOut => "timeout",
        /// Plain HTTP sent to the TLS port.
        PlainHttp => "plain_http",
        /// An ACME CA validating TLS-ALPN-01.
        AcmeValidation => "acme_validation",
    }
);

labels!(
    /// How a sign-in (a callback) ended.
    SignIn {
        Success => "success",
        /// The IdP answered with an error (access_denied, AADSTS…).
        IdpError => "idp_error",
        /// The callback carried no code or was malformed.
        BadCallback => "bad_callback",
        /// The token endpoint refused, failed or timed out.
        TokenEndpoint => "token_endpoint",
        /// The ID token did not pass the checks.
        InvalidIdToken => "invalid_id_token",
        /// A claim the gateway would have to alter to send upstream.
        UnsendableIdentity => "unsendable_identity",
        /// A state that belongs to no login of this browser.
        StateMismatch => "state_mismatch",
        /// The session could not be stored.
        SessionStore => "session_store",
        /// A sign-in limit refused the code exchange.
        RateLimited => "rate_limited",
        /// The groups of an overage user could not be read from Microsoft Graph.
        GroupsUnavailable => "groups_unavailable",
    }
);

/// Why an ID token (browser sign-in or bearer token) was rejected: the
/// values of `TokenError::code()`; a code missing here counts as "other".
pub const ID_TOKEN_REASONS: [&str; 27] = [
    "malformed",
    "algorithm_not_allowed",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "wrong_issuer",
    "tenant_not_allowed",
    "tenant_not_guid",
    "key_issuer_mismatch",
    "wrong_audience",
    "missing_exp",
    "missing_aud",
    "missing_iat",
    "missing_sub",
    "missing_nonce",
    "missing_tid",
    "missing_auth_time",
    "missing_claim",
    "invalid_claim_format",
    "nonce_mismatch",
    "user_claim_missing",
    "authentication_too_old",
    "provider_not_loaded",
    "unsendable_identity",
    "other",
];

labels!(
    /// Calls to the identity provider and Microsoft Graph.
    IdpCall {
        Discovery => "discovery",
        Jwks => "jwks",
        Token => "token",
        Refresh => "refresh",
        Graph => "graph",
    }
);

labels!(
    /// How an access-token renewal ended.
    Refresh {
        Renewed => "renewed",
        /// The IdP could not be reached or refused for now; the session stays.
        Failed => "failed",
        /// invalid_grant: the refresh token is dead, the session ended.
        InvalidGrant => "invalid_grant",
        /// Expired with no refresh token to renew it: the session ended.
        NoRefreshToken => "no_refresh_token",
    }
);

labels!(
    /// What went wrong in a session store.
    StoreFailure {
        /// Redis could not be reached.
        Unreachable => "unreachable",
        /// Redis answered with an error (out of memory, ACL, loading).
        Refused => "refused",
        /// The memory store's state file could not be written.
        StateFile => "state_file",
    }
);

labels!(
    /// Limits that turned a request away (429); the labels are the `reason`
    /// of the limiter's log lines.
    Limit {
        /// An address used up its sign-ins (token exchanges).
        AddressSignIns => "address_sign_ins",
        /// An address used up its failed callbacks.
        AddressFailures => "address_failures",
        /// All addresses together used up the gateway's sign-ins.
        Global => "global",
    }
);

labels!(
    /// Outcome of a configuration reload.
    ConfigReload {
        Applied => "applied",
        /// The new file had errors; the running configuration stayed.
        Rejected => "rejected",
    }
);

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

/// Upstreams get a slot each by name ([`upstream_slot`]); a configuration with
/// more shares the last one, labelled "other".
const UPSTREAM_SLOTS: usize = 16;

/// Histogram buckets, in seconds (upper bounds; +Inf is added).
const BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A histogram of relaxed atomics: per-bucket counts (not cumulative) and the
/// sum in microseconds.
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    #[inline]
    fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let secs = micros as f64 / 1e6;
        let index = BUCKETS
            .iter()
            .position(|&upper| secs <= upper)
            .unwrap_or(BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// A histogram summed over shards, ready to encode.
#[derive(Default)]
struct HistogramSum {
    buckets: [u64; BUCKETS.len() + 1],
    sum_micros: u64,
}

impl HistogramSum {
    fn of<'a>(histograms: impl Iterator<Item = &'a Histogram>) -> Self {
        let mut total = HistogramSum::default();
        for h in histograms {
            for (sum, bucket) in total.buckets.iter_mut().zip(&h.buckets) {
                *sum += bucket.load(Ordering::Relaxed);
            }
            total.sum_micros += h.sum_micros.load(Ordering::Relaxed);
        }
        total
    }

    fn encode(&self, encoder: &mut MetricEncoder<'_>) -> std::fmt::Result {
        // The encoder makes the counts cumulative itself.
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| (BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n))
            .collect();
        let count = self.buckets.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum_micros as f64 / 1e6, count, &buckets, None)
    }
}

type Counters<const N: usize> = [AtomicU64; N];

fn counters<const N: usize>() -> Counters<N> {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// One thread's counters.
struct Shard {
    requests: [Counters<5>; RouteKind::LABELS.len()],
    request_duration: [Histogram; RouteKind::LABELS.len()],
    upstream_requests: [Counters<5>; UPSTREAM_SLOTS],
    upstream_duration: [Histogram; UPSTREAM_SLOTS],
    handshakes: Counters<{ Handshake::LABELS.len() }>,
    sign_ins: Counters<{ SignIn::LABELS.len() }>,
    id_token_rejections: Counters<{ ID_TOKEN_REASONS.len() }>,
    idp_calls: [Histogram; IdpCall::LABELS.len()],
    refreshes: Counters<{ Refresh::LABELS.len() }>,
    store_errors: Counters<{ StoreFailure::LABELS.len() }>,
    limited: Counters<{ Limit::LABELS.len() }>,
    config_reloads: Counters<{ ConfigReload::LABELS.len() }>,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            requests: std::array::from_fn(|_| counters()),
            request_duration: std::array::from_fn(|_| Histogram::default()),
            upstream_requests: std::array::from_fn(|_| counters()),
            upstream_duration: std::array::from_fn(|_| Histogram::default()),
            handshakes: counters(),
            sign_ins: counters(),
            id_token_rejections: counters(),
            idp_calls: std::array::from_fn(|_| Histogram::default()),
            refreshes: counters(),
            store_errors: counters(),
            limited: counters(),
            config_reloads: counters(),
        }
    }
}

/// A source of "upstream connections by state", read at scrape time.
pub trait PoolGauge: Send + Sync {
    /// (idle, open) connections now; open counts idle, busy and upgraded ones.
    fn connections(&self) -> (usize, usize);
}

/// Asks the session store how many sessions this process holds (None once it is gone).
type SessionCount = Box<dyn Fn() -> Option<usize> + Send + Sync>;

/// The process's metrics state.
struct State {
    shards: Mutex<Vec<Arc<Shard>>>,
    /// Client connections open now: one shared atomic, touched once per connection.
    open_connections: AtomicI64,
    upstream_names: Mutex<Vec<String>>,
    pools: Mutex<Vec<(usize, Weak<dyn PoolGauge>)>>,
    /// Every served certificate (one per running server; tests run several).
    certificates: Mutex<Vec<Weak<ServedCertificate>>>,
    sessions: Mutex<Vec<SessionCount>>,
}

static ENABLED: AtomicBool = AtomicBool::new(false);

static STATE: std::sync::LazyLock<State> = std::sync::LazyLock::new(|| State {
    shards: Mutex::new(Vec::new()),
    open_connections: AtomicI64::new(0),
    upstream_names: Mutex::new(Vec::new()),
    pools: Mutex::new(Vec::new()),
    certificates: Mutex::new(Vec::new()),
    sessions: Mutex::new(Vec::new()),
});

thread_local! {
    static SHARD: OnceCell<Arc<Shard>> = const { OnceCell::new() };
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether metrics are recorded in this process (a metrics listener was bound).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Runs `record` on this thread's shard, when metrics are on.
#[inline]
fn record(record: impl FnOnce(&Shard)) {
    if !enabled() {
        return;
    }
    SHARD.with(|cell| {
        let shard = cell.get_or_init(|| {
            let shard = Arc::new(Shard::default());
            lock(&STATE.shards).push(shard.clone());
            shard
        });
        record(shard);
    });
}

#[inline]
fn bump<const N: usize>(counters: &Counters<N>, index: usize) {
    counters[index].fetch_add(1, Ordering::Relaxed);
}

/// One request the gateway answered or forwarded: its route kind, the status
/// of its answer and the time to the answer's headers.
#[inline]
pub fn request(route: RouteKind, status: StatusCode, elapsed: Duration) {
    record(|s| {
        bump(&s.requests[route as usize], status_class(status));
        s.request_duration[route as usize].observe(elapsed);
    });
}

/// The metrics slot of the upstream called `name` (stable for the process, so
/// that a reloaded configuration keeps counting under the same label).
pub fn upstream_slot(name: &str) -> usize {
    let mut names = lock(&STATE.upstream_names);
    if let Some(slot) = names.iter().position(|n| n == name) {
        return slot;
    }
    if names.len() < UPSTREAM_SLOTS - 1 {
        names.push(name.to_string());
        return names.len() - 1;
    }
    UPSTREAM_SLOTS - 1
}

/// One upstream exchange: the status of its answer (the gateway's own 502/504
/// when it failed) and the time to the answer's headers.
#[inline]
pub fn upstream(slot: usize, status: StatusCode, elapsed: Option<Duration>) {
    let slot = slot.min(UPSTREAM_SLOTS - 1);
    record(|s| {
        bump(&s.upstream_requests[slot], status_class(status));
        if let Some(elapsed) = elapsed {
            s.upstream_duration[slot].observe(elapsed);
        }
    });
}

pub fn handshake(result: Handshake) {
    record(|s| bump(&s.handshakes, result as usize));
}

pub fn sign_in(outcome: SignIn) {
    record(|s| bump(&s.sign_ins, outcome as usize));
}

/// An ID token rejected for `code` (`TokenError::code()`).
pub fn id_token_rejected(code: &str) {
    let index = ID_TOKEN_REASONS
        .iter()
        .position(|r| *r == code)
        .unwrap_or(ID_TOKEN_REASONS.len() - 1);
    record(|s| bump(&s.id_token_rejections, index));
}

/// A call to the identity provider or Graph and how long it took (failed
/// calls too: a timeout is the slowest call there is).
pub fn idp_call(call: IdpCall, elapsed: Duration) {
    record(|s| s.idp_calls[call as usize].observe(elapsed));
}

/// A Microsoft Graph call (group overage, photos, …) and how long it took.
pub fn graph_call(elapsed: Duration) {
    idp_call(IdpCall::Graph, elapsed);
}

pub fn refresh(outcome: Refresh) {
    record(|s| bump(&s.refreshes, outcome as usize));
}

pub fn session_store_error(failure: StoreFailure) {
    record(|s| bump(&s.store_errors, failure as usize));
}

/// A request turned away by `limit` (429).
pub fn rate_limited(limit: Limit) {
    record(|s| bump(&s.limited, limit as usize));
}

pub fn config_reload(outcome: ConfigReload) {
    record(|s| bump(&s.config_reloads, outcome as usize));
}

/// Counts an open client connection until the guard is dropped.
pub fn connection_opened() -> Option<ConnectionGuard> {
    if !enabled() {
        return None;
    }
    STATE.open_connections.fetch_add(1, Ordering::Relaxed);
    Some(ConnectionGuard(()))
}

pub struct ConnectionGuard(());

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        STATE.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream connection pool, read at each scrape while it lives.
pub fn watch_pool(slot: usize, pool: Weak<dyn PoolGauge>) {
    let mut pools = lock(&STATE.pools);
    pools.retain(|(_, p)| p.strong_count() > 0);
    pools.push((slot, pool));
}

/// A served certificate, for its expiry and failed reloads (while it lives).
pub fn watch_certificate(certificate: &Arc<ServedCertificate>) {
    let mut certificates = lock(&STATE.certificates);
    certificates.retain(|c| c.strong_count() > 0);
    certificates.push(Arc::downgrade(certificate));
}

/// How many sessions a store holds, asked at each scrape until it answers
/// None (the store is gone).
pub fn count_sessions(count: impl Fn() -> Option<usize> + Send + Sync + 'static) {
    lock(&STATE.sessions).push(Box::new(count));
}

/// The metrics listener: binds `addr` and turns recording on.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    ENABLED.store(true, Ordering::Relaxed);
    Ok(listener)
}

/// Serves `GET /metrics` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = service_fn(|request: Request<Incoming>| async move {
            Ok::<_, Infallible>(answer(request.method(), request.uri().path()))
        });
        let stop = stop.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// What Prometheus is told the body is (the encoder writes OpenMetrics text).
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn answer(method: &Method, path: &str) -> Response<Body> {
    let mut response = Response::new(full_body(""));
    if path != "/metrics" {
        *response.status_mut() = StatusCode::NOT_FOUND;
        *response.body_mut() = full_body("only /metrics is served here\n");
        return response;
    }
    if method != Method::GET && method != Method::HEAD {
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return response;
    }
    match render() {
        Ok(text) => {
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
            );
            *response.body_mut() = full_body(text);
        }
        Err(_) => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
    }
    response
}

/// The text exposition of everything recorded so far.
pub fn render() -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("oidc_gateway");
    registry.register_collector(Box::new(Collector));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct Collector;

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let shards: Vec<Arc<Shard>> = lock(&STATE.shards).clone();
        let sum = |f: &dyn Fn(&Shard) -> &AtomicU64| {
            shards
                .iter()
                .map(|s| f(s).load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let mut upstreams: Vec<String> = lock(&STATE.upstream_names).clone();
        upstreams.truncate(UPSTREAM_SLOTS - 1);
        if upstreams.len() == UPSTREAM_SLOTS - 1 {
            upstreams.push("other".into());
        }

        let mut info = encoder.encode_descriptor(
            "build_info",
            "The running gateway's version (always 1)",
            None,
            MetricType::Gauge,
        )?;
        info.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?
            .encode_gauge(&1i64)?;

        let mut family = encoder.encode_descriptor(
            "requests",
            "Requests by what the gateway judged them to be and the status class of the answer",
            None,
            MetricType::Counter,
        )?;
        for (route, route_label) in RouteKind::LABELS.iter().enumerate() {
            for (class, class_label) in STATUS_CLASSES.iter().enumerate() {
                let n = sum(&|s| &s.requests[route][class]);
                ConstCounter::new(n).encode(
                    family
                        .encode_family(&[("route", *route_label), ("status_class", class_label)])?,
                )?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "request_duration_seconds",
            "Time from a request's arrival to its answer's headers, by route kind",
            None,
            MetricType::Histogram,
        )?;
        for (route, label) in RouteKind::LABELS.iter().enumerate() {
            HistogramSum::of(shards.iter().map(|s| &s.request_duration[route]))
                .encode(&mut family.encode_family(&[("route", *label)])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "upstream_requests",
            "Requests forwarded upstream, by upstream and the status class of the answer (5xx includes the gateway's 502/504)",
            None,
            MetricType::Counter,
        )?;
        for (slot, name) in upstreams.iter().enumerate() {
            for (class, class_label) in STATUS_CLASSES.iter().enumerate() {
                let n = sum(&|s| &s.upstream_requests[slot][class]);
                ConstCounter::new(n).encode(family.encode_family(&[
                    ("upstream", name.as_str()),
                    ("status_class", class_label),
                ])?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its answer's headers",
            None,
            MetricType::Histogram,
        )?;
        for (slot, name) in upstreams.iter().enumerate() {
            HistogramSum::of(shards.iter().map(|s| &s.upstream_duration[slot]))
                .encode(&mut family.encode_family(&[("upstream", name.as_str())])?)?;
        }

        let mut by_upstream = vec![(0usize, 0usize); upstreams.len()];
        for (slot, pool) in lock(&STATE.pools).iter() {
            if let (Some(pool), Some(entry)) = (pool.upgrade(), by_upstream.get_mut(*slot)) {
                let (idle, open) = pool.connections();
                entry.0 += idle;
                entry.1 += open;
            }
        }
        let mut family = encoder.encode_descriptor(
            "upstream_connections",
            "Upstream connections open now, by upstream and state (busy: a request or a tunnel uses it)",
            None,
            MetricType::Gauge,
        )?;
        for (name, (idle, open)) in upstreams.iter().zip(&by_upstream) {
            for (state, n) in [("idle", *idle), ("busy", open.saturating_sub(*idle))] {
                ConstGauge::new(n as i64).encode(
                    family.encode_family(&[("upstream", name.as_str()), ("state", state)])?,
                )?;
            }
        }

        let open = STATE.open_connections.load(Ordering::Relaxed).max(0);
        ConstGauge::new(open).encode(encoder.encode_descriptor(
            "client_connections",
            "Client connections open now (TLS and plain-HTTP listeners)",
            None,
            MetricType::Gauge,
        )?)?;

        counter_family(
            &mut encoder,
            "tls_handshakes",
            "TLS handshakes by result",
            "result",
            Handshake::LABELS,
            |i| sum(&|s| &s.handshakes[i]),
        )?;
        counter_family(
            &mut encoder,
            "sign_ins",
            "Sign-ins (callbacks of this gateway's logins) by outcome",
            "outcome",
            SignIn::LABELS,
            |i| sum(&|s| &s.sign_ins[i]),
        )?;
        counter_family(
            &mut encoder,
            "id_token_rejections",
            "ID tokens (browser sign-ins and bearer tokens) rejected, by reason",
            "reason",
            &ID_TOKEN_REASONS,
            |i| sum(&|s| &s.id_token_rejections[i]),
        )?;
        counter_family(
            &mut encoder,
            "refreshes",
            "Access-token renewals by outcome",
            "outcome",
            Refresh::LABELS,
            |i| sum(&|s| &s.refreshes[i]),
        )?;
        counter_family(
            &mut encoder,
            "session_store_errors",
            "Session store operations that failed, by kind",
            "error",
            StoreFailure::LABELS,
            |i| sum(&|s| &s.store_errors[i]),
        )?;
        counter_family(
            &mut encoder,
            "rate_limited",
            "Requests turned away by a rate limit (429)",
            "limit",
            Limit::LABELS,
            |i| sum(&|s| &s.limited[i]),
        )?;
        counter_family(
            &mut encoder,
            "config_reloads",
            "Configuration reloads (SIGHUP) by outcome; rejected: the running configuration stayed",
            "outcome",
            ConfigReload::LABELS,
            |i| sum(&|s| &s.config_reloads[i]),
        )?;

        let mut family = encoder.encode_descriptor(
            "idp_request_duration_seconds",
            "Calls to the identity provider and Microsoft Graph, by call (failed ones too)",
            None,
            MetricType::Histogram,
        )?;
        for (i, label) in IdpCall::LABELS.iter().enumerate() {
            HistogramSum::of(shards.iter().map(|s| &s.idp_calls[i]))
                .encode(&mut family.encode_family(&[("call", *label)])?)?;
        }

        let sessions: usize = {
            let mut counts = lock(&STATE.sessions);
            let mut total = 0;
            counts.retain(|count| count().map(|n| total += n).is_some());
            total
        };
        ConstGauge::new(i64::try_from(sessions).unwrap_or(i64::MAX)).encode(
            encoder.encode_descriptor(
                "sessions",
                "Sessions this process holds (Redis: the ones in its local cache)",
                None,
                MetricType::Gauge,
            )?,
        )?;

        let certificates: Vec<_> = lock(&STATE.certificates)
            .iter()
            .filter_map(Weak::upgrade)
            .map(|c| c.info())
            .collect();
        // The one that expires first is the one to watch.
        let expiry = certificates
            .iter()
            .filter_map(|info| info.not_after)
            .min()
            .map(|not_after| {
                not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                    .unwrap_or(0)
            });
        if let Some(secs) = expiry {
            ConstGauge::new(secs).encode(encoder.encode_descriptor(
                "certificate_expiry_timestamp_seconds",
                "When the served TLS certificate expires (Unix time)",
                None,
                MetricType::Gauge,
            )?)?;
        }
        let failures = certificates
            .iter()
            .map(|info| info.reload_failures)
            .sum::<u64>();
        ConstCounter::new(failures).encode(encoder.encode_descriptor(
            "certificate_reload_failures",
            "Certificate reloads and ACME orders that failed (the previous certificate stayed)",
            None,
            MetricType::Counter,
        )?)?;
        Ok(())
    }
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
    count: impl Fn(usize) -> u64,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (i, value) in values.iter().enumerate() {
        ConstCounter::new(count(i)).encode(family.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_cover_every_status() {
        assert_eq!(status_class(StatusCode::SWITCHING_PROTOCOLS), 0);
        assert_eq!(status_class(StatusCode::OK), 1);
        assert_eq!(status_class(StatusCode::SEE_OTHER), 2);
        assert_eq!(status_class(StatusCode::FORBIDDEN), 3);
        assert_eq!(status_class(StatusCode::BAD_GATEWAY), 4);
    }

    #[test]
    fn histograms_bucket_by_upper_bound_and_encode_cumulatively() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(400));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let sum = HistogramSum::of(std::iter::once(&h));
        assert_eq!(sum.buckets[0], 1, "≤ 0.5 ms");
        assert_eq!(sum.buckets[3], 1, "≤ 5 ms");
        assert_eq!(sum.buckets[BUCKETS.len()], 1, "+Inf");
        assert_eq!(sum.sum_micros, 400 + 3_000 + 60_000_000);
    }

    #[test]
    fn upstream_slots_are_stable_by_name() {
        let a = upstream_slot("slot_test_a");
        let b = upstream_slot("slot_test_b");
        assert_ne!(a, b);
        assert_eq!(upstream_slot("slot_test_a"), a);
    }
}
