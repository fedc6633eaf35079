//! Listeners and connection handling: the TLS listener (HTTP/1.1 and HTTP/2 by
//! ALPN), the optional plain-HTTP listener that redirects to https, the cap on
//! client connections, and graceful shutdown (readiness 503 → stop accepting →
//! drain requests and tunnels).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::header::{CONTENT_TYPE, HOST, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme;
use crate::certificate::{CertificateOrigin, CertificatePair, FileReloader, ServedCertificate};
use crate::config::{self, ConfigError, ConfigSource, Settings};
use crate::connection::ConnectionInfo;
use crate::gateway::Gateway;
use crate::health::{self, Readiness};
use crate::metrics::{self, Handshake};
use crate::proxy::Tunnels;
use crate::reload::ReloadSignal;
use crate::session::SessionStore;
use crate::streams::{self, Ended, StreamExecutor};
use crate::tls::{self, CertificateSource, TlsError};
use crate::watchdog::{self, ConnectionClock, Expiry, Limits, ObservedIo, Watched};
use crate::{empty_body, Body};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("configuration error: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot start: {0}")]
    Init(String),
    #[error("key `{key}`: cannot listen on {addr}: {source}; choose a free address:port (is another instance running?)")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// Exit code: 2 for configuration problems, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) | StartError::Tls(_) => 2,
            StartError::Bind { .. } | StartError::Init(_) => 1,
        }
    }
}

/// A started gateway. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub https_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    /// Where `/metrics` is served (`metrics.listen`), when it is.
    pub metrics_addr: Option<SocketAddr>,
    pub readiness: Readiness,
    /// The certificate the listener serves (swapped on reload).
    pub certificate: Arc<ServedCertificate>,
    /// Reload requests (SIGHUP is forwarded here by `main`).
    pub reload: ReloadSignal,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// One per extra worker thread: completes when that worker has drained.
    worker_exits: Vec<tokio::sync::oneshot::Receiver<()>>,
    /// Persisted once every worker has drained (memory store's state file).
    sessions: Arc<dyn SessionStore>,
}

impl RunningServer {
    /// Starts draining: readiness turns 503, listeners close, in-flight work finishes.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits until every connection and tunnel is done (or the grace period ended).
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "server task ended abnormally");
        }
        for exit in self.worker_exits {
            // Err: the worker thread ended without signalling (it panicked); nothing to wait for.
            let _ = exit.await;
        }
        // No request can change a session any more: keep them for the next start.
        // (A failure is logged by the store; the stop goes on.)
        let _ = self.sessions.persist().await;
    }

    pub async fn shutdown(self) {
        self.begin_shutdown();
        self.wait().await;
    }
}

/// Binds the listeners and starts serving in the background.
pub async fn start(settings: Arc<Settings>) -> Result<RunningServer, StartError> {
    tls::install_crypto_provider();
    let tls_cfg = &settings.config.tls;
    if tls::ensure_certificate(&settings, false)? == CertificateSource::Generated {
        tracing::warn!(
            cert = %tls_cfg.cert.display(),
            key = %tls_cfg.key.display(),
            names = ?tls::self_signed_names(&settings),
            "created a self-signed certificate; browsers will warn about it. Use a real certificate in production"
        );
    }
    let stop = CancellationToken::new();
    let reload = ReloadSignal::default();
    let (certificate, acceptor) = serve_certificates(&settings, &reload, &stop)?;

    let workers = match settings.config.server.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    // One listening socket per worker on the same address (SO_REUSEPORT: the
    // kernel spreads new connections). All are bound here, so that an address
    // problem is a start-up error, not a worker thread's.
    if workers > 1 && settings.listen.port() != 0 {
        // SO_REUSEPORT would let these workers join a gateway already serving the
        // port (two session stores behind one address): a plain bind first fails then.
        std::net::TcpListener::bind(settings.listen).map_err(|source| StartError::Bind {
            key: "server.listen",
            addr: settings.listen,
            source,
        })?;
    }
    let https_listener = bind_listener("server.listen", settings.listen, workers > 1)?;
    let https_addr = local_addr("server.listen", &https_listener, settings.listen)?;
    let mut worker_listeners = Vec::new();
    for _ in 1..workers {
        let listener = bind_listener("server.listen", https_addr, true)?;
        let std_listener = listener.into_std().map_err(|source| StartError::Bind {
            key: "server.listen",
            addr: https_addr,
            source,
        })?;
        worker_listeners.push(std_listener);
    }
    let http_listener = match settings.redirect_http {
        Some(addr) => Some(bind("server.redirect_http", addr).await?),
        None => None,
    };
    let http_addr = match (&http_listener, settings.redirect_http) {
        (Some(l), Some(addr)) => Some(local_addr("server.redirect_http", l, addr)?),
        _ => None,
    };
    // Bound before anything that records: binding turns recording on.
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => {
            let listener = metrics::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    key: "metrics.listen",
                    addr,
                    source,
                })?;
            Some(local_addr("metrics.listen", &listener, addr)?).map(|local| (listener, local))
        }
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().map(|(_, addr)| *addr);
    if let Some((listener, _)) = metrics_listener {
        tokio::spawn(metrics::serve(listener, stop.child_token()));
    }
    metrics::watch_certificate(&certificate);

    let readiness = Readiness::default();
    let tunnels = Tunnels::default();
    let gateway = Gateway::new(settings.clone(), readiness.clone(), tunnels.clone()).map_err(
        |e| match e {
            crate::gateway::GatewayInitError::Tls(e) => StartError::Tls(e),
            crate::gateway::GatewayInitError::SessionStore(e) => StartError::Config(ConfigError {
                message: e.to_string(),
            }),
            other => StartError::Init(other.to_string()),
        },
    )?;
    let mut worker_gateways = Vec::new();
    for _ in 1..workers {
        worker_gateways.push(Arc::new(
            gateway
                .for_worker(tunnels.clone())
                .map_err(|e| StartError::Init(e.to_string()))?,
        ));
    }
    let gateway = Arc::new(gateway);
    if let Some(source) = settings.source.clone() {
        let every_worker = std::iter::once(gateway.clone())
            .chain(worker_gateways.iter().cloned())
            .collect();
        tokio::spawn(reload_configuration(
            source,
            settings.clone(),
            every_worker,
            reload.subscribe(),
            stop.child_token(),
        ));
    }
    let sessions = gateway.sessions();
    let counted = Arc::downgrade(&sessions);
    metrics::count_sessions(move || counted.upgrade().map(|store| store.len()));
    gateway.spawn_background(stop.child_token());
    let admission = Admission::new(connection_cap(settings.config.server.max_connections));

    let mut worker_exits = Vec::new();
    for (index, (listener, worker_gateway)) in worker_listeners
        .into_iter()
        .zip(worker_gateways)
        .enumerate()
    {
        let (exited, exit_signal) = tokio::sync::oneshot::channel::<()>();
        let serving = Serving {
            settings: settings.clone(),
            https_port: https_addr.port(),
            acceptor: acceptor.clone(),
            certificate: certificate.clone(),
            gateway: worker_gateway,
            admission: admission.clone(),
            tunnels: tunnels.clone(),
            stop: stop.clone(),
        };
        std::thread::Builder::new()
            .name(format!("worker-{}", index + 1))
            .spawn(move || {
                run_worker(listener, serving);
                let _ = exited.send(());
            })
            .map_err(|e| StartError::Init(format!("cannot start a worker thread: {e}")))?;
        worker_exits.push(exit_signal);
    }

    let serving = Serving {
        settings: settings.clone(),
        https_port: https_addr.port(),
        acceptor,
        certificate: certificate.clone(),
        gateway,
        admission,
        tunnels,
        stop: stop.clone(),
    };
    let task = tokio::spawn(run(https_listener, http_listener, serving));
    tracing::info!(
        listen = %https_addr,
        redirect_http = ?http_addr,
        metrics = ?metrics_addr,
        upstream = %settings.upstream,
        workers,
        "oidc-gateway is serving"
    );
    Ok(RunningServer {
        https_addr,
        http_addr,
        metrics_addr,
        readiness,
        certificate,
        reload,
        stop,
        task,
        worker_exits,
        sessions,
    })
}

/// On each reload request, reads the configuration again the way the start did
/// (file, environment, paths relative to the file) and installs its reloadable
/// sections in every worker at once. A configuration with errors changes
/// nothing; keys that need a restart keep their running values and are named.
async fn reload_configuration(
    source: ConfigSource,
    mut running: Arc<Settings>,
    gateways: Vec<Arc<Gateway>>,
    mut requests: tokio::sync::watch::Receiver<u64>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = requests.changed() => if changed.is_err() { return },
        }
        match reconfigure(&source, &running, &gateways) {
            Ok((settings, restart)) => {
                if !restart.is_empty() {
                    tracing::warn!(
                        keys = %restart.join(", "),
                        "configuration reload: these keys changed but need a restart; their running values stay"
                    );
                }
                tracing::info!(
                    config = %source.path.display(),
                    applied = %config::RELOADABLE_SECTIONS.join(", "),
                    "configuration reloaded: new requests use it"
                );
                metrics::config_reload(metrics::ConfigReload::Applied);
                running = settings;
            }
            Err(error) => {
                tracing::error!(
                    config = %source.path.display(),
                    "configuration reload refused, the running configuration stays: {error}"
                );
                metrics::config_reload(metrics::ConfigReload::Rejected);
            }
        }
    }
}

/// The reloaded settings, installed in every worker (all or none), and the
/// sections that need a restart.
fn reconfigure(
    source: &ConfigSource,
    running: &Settings,
    gateways: &[Arc<Gateway>],
) -> Result<(Arc<Settings>, Vec<String>), String> {
    let loaded = config::load(source).map_err(|e| e.to_string())?;
    let (settings, restart) = config::reloaded(running, loaded);
    let settings = Arc::new(settings);
    let prepared = gateways
        .iter()
        .map(|gateway| gateway.prepare(settings.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    for (gateway, routing) in gateways.iter().zip(prepared) {
        gateway.install(routing);
    }
    Ok((settings, restart))
}

/// The listener's certificate resolver and acceptor, and the task that reloads
/// the certificate files on a reload request or when they change.
fn serve_certificates(
    settings: &Settings,
    reload: &ReloadSignal,
    stop: &CancellationToken,
) -> Result<(Arc<ServedCertificate>, TlsAcceptor), StartError> {
    let tls_cfg = &settings.config.tls;
    let acme = &settings.config.acme;
    if acme.enabled {
        // ACME owns the certificate: the cached one when it is there, else the
        // files until the first order completes.
        let served = match acme::CacheFiles::new(acme).cached_pair(&acme.domains) {
            Some(pair) => ServedCertificate::new(pair, CertificateOrigin::Acme),
            None => ServedCertificate::new(
                CertificatePair::from_files(&tls_cfg.cert, &tls_cfg.key)?,
                CertificateOrigin::Files,
            ),
        };
        let served = Arc::new(served);
        tokio::spawn(acme::run(acme.clone(), served.clone(), stop.child_token()));
        let acceptor = TlsAcceptor::from(tls::server_config(served.clone(), true)?);
        return Ok((served, acceptor));
    }
    let pair = CertificatePair::from_files(&tls_cfg.cert, &tls_cfg.key)?;
    let served = Arc::new(ServedCertificate::new(pair, CertificateOrigin::Files));
    let reloader = FileReloader::new(tls_cfg.cert.clone(), tls_cfg.key.clone(), served.clone());
    tokio::spawn(reloader.run(
        reload.subscribe(),
        tls_cfg.reload_interval,
        stop.child_token(),
    ));
    let acceptor = TlsAcceptor::from(tls::server_config(served.clone(), false)?);
    Ok((served, acceptor))
}

/// A listening socket; with `reuse_port`, several may share the address (one per worker).
fn bind_listener(
    key: &'static str,
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<TcpListener, StartError> {
    let fail = |source| StartError::Bind { key, addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuseport(true).map_err(fail)?;
    }
    #[cfg(not(unix))]
    let _ = reuse_port;
    socket.bind(addr).map_err(fail)?;
    socket.listen(1024).map_err(fail)
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    bind_listener(key, addr, false)
}

/// A worker thread: one single-threaded runtime, like an nginx worker. Tasks
/// never migrate, so a request and its upstream connection wake each other
/// without crossing threads.
fn run_worker(https: std::net::TcpListener, serving: Serving) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker runtime; this worker serves nothing");
            return;
        }
    };
    runtime.block_on(async move {
        let https = match TcpListener::from_std(https) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "worker cannot take its listener; it serves nothing");
                return;
            }
        };
        run(https, None, serving).await;
    });
}

fn local_addr(
    key: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { key, addr, source })
}

/// HTTP/1.1 connection settings. Its timeouts (request head, idle, send) are
/// kept by the connection's task (src/watchdog.rs), not by hyper: hyper's
/// header timer would also end keep-alive connections after the header timeout.
fn http1_builder(settings: &Settings) -> http1::Builder {
    let mut builder = http1::Builder::new();
    let max_header_bytes = settings.config.server.max_header_bytes;
    builder
        .header_read_timeout(None)
        // 431 for a bigger head however its bytes arrive (the buffer limit
        // alone lets through a head completed by one large read).
        .max_header_size(max_header_bytes)
        .max_buf_size(max_header_bytes);
    builder
}

/// HTTP/2 connection settings; `executor` runs the connection's streams (src/streams.rs).
fn http2_builder(settings: &Settings, executor: StreamExecutor) -> http2::Builder<StreamExecutor> {
    let server = &settings.config.server;
    let mut builder = http2::Builder::new(executor);
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(server.max_concurrent_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(server.header_read_timeout)
        // RFC 8441: WebSocket over HTTP/2.
        .enable_connect_protocol();
    builder
}

/// Descriptors kept out of the connection budget: listeners, the runtime's
/// epoll and wake-up descriptors, log and state files, the IdP and Redis clients.
const RESERVED_FDS: u64 = 64;

/// `server.max_connections`, lowered to what the open-file limit can hold: each
/// client connection may need an upstream connection as well.
fn connection_cap(configured: usize) -> usize {
    let Some(files) = raise_open_file_limit() else {
        return configured;
    };
    let budget = usize::try_from(files.saturating_sub(RESERVED_FDS) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    if configured > budget {
        tracing::warn!(
            max_connections = configured,
            lowered_to = budget,
            open_file_limit = files,
            "key `server.max_connections` is more than the open-file limit can hold (two descriptors per \
             connection, client and upstream, plus {RESERVED_FDS}); using {budget}. Raise the hard limit \
             (systemd LimitNOFILE=, docker --ulimit nofile=) or lower server.max_connections"
        );
        budget
    } else {
        configured
    }
}

/// Raises the soft open-file limit to the hard one (often 1024 vs 524288 under
/// systemd); returns the limit in force, None when unlimited or unknown.
#[cfg(unix)]
fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else {
        return limit.current;
    };
    if soft < hard {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit; keeping the soft limit");
            return Some(soft);
        }
    }
    tracing::info!(open_file_limit = hard, "open-file limit");
    Some(hard)
}

#[cfg(not(unix))]
fn raise_open_file_limit() -> Option<u64> {
    None
}

/// The cap on client connections, shared by every worker and listener.
#[derive(Clone)]
struct Admission {
    open: Arc<AtomicUsize>,
    cap: usize,
}

/// A client connection's place under the cap, given back when dropped.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    fn new(cap: usize) -> Self {
        Admission {
            open: Arc::default(),
            cap,
        }
    }

    /// A place for one more connection, or None at the cap.
    fn admit(&self) -> Option<Admitted> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.cap {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted(self.open.clone()))
    }
}

/// What a worker serves its listeners with: its gateway (own upstream pool) and
/// the shared acceptor, connection cap, tunnels and stop signal.
struct Serving {
    settings: Arc<Settings>,
    https_port: u16,
    acceptor: TlsAcceptor,
    /// The served certificate (its HTTP-01 answers are given on the plain-HTTP listener).
    certificate: Arc<ServedCertificate>,
    gateway: Arc<Gateway>,
    admission: Admission,
    tunnels: Tunnels,
    stop: CancellationToken,
}

/// Connections turned away (cap, or out of descriptors), logged at most every
/// few seconds: under a flood, one line per connection would be a flood too.
struct TurnedAway {
    count: u64,
    last_logged: Option<Instant>,
}

impl TurnedAway {
    fn one(&mut self, why: &'static str, cap: usize) {
        self.count += 1;
        let due = self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if due {
            tracing::warn!(
                turned_away = self.count,
                max_connections = cap,
                "new connections closed at once: {why}"
            );
            self.count = 0;
            self.last_logged = Some(Instant::now());
        }
    }
}

/// One descriptor held back so that, with the table full (EMFILE), a pending
/// connection can still be accepted and closed instead of being retried forever.
struct SpareDescriptor(Option<std::fs::File>);

impl SpareDescriptor {
    fn new() -> Self {
        SpareDescriptor(std::fs::File::open("/dev/null").ok())
    }

    /// Frees the spare, accepts and closes one pending connection, takes the
    /// spare back. False when that was not possible (wait before retrying).
    fn turn_away_one(&mut self, listener: &TcpListener) -> bool {
        if self.0.take().is_none() {
            return false;
        }
        let accepted = matches!(listener.accept().now_or_never(), Some(Ok(_)));
        self.0 = std::fs::File::open("/dev/null").ok();
        accepted
    }
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    // EMFILE (this process) and ENFILE (the whole system).
    matches!(e.raw_os_error(), Some(24) | Some(23))
}

/// One worker's accept loop and drain. Only the first worker has the plain-HTTP listener.
async fn run(https: TcpListener, http: Option<TcpListener>, serving: Serving) {
    let Serving {
        settings,
        https_port,
        acceptor,
        certificate,
        gateway,
        admission,
        tunnels,
        stop,
    } = serving;
    let connections = TaskTracker::new();
    let redirect = Arc::new(RedirectTarget::new(&settings, https_port, certificate));
    let mut spare = SpareDescriptor::new();
    let mut turned_away = TurnedAway {
        count: 0,
        last_logged: None,
    };

    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = https.accept() => match accepted {
                Ok((stream, peer)) => match admission.admit() {
                    Some(admitted) => {
                        connections.spawn(serve_tls(
                            stream, peer, acceptor.clone(), gateway.clone(), settings.clone(),
                            stop.clone(), admitted,
                        ));
                    }
                    // Closed at once: the client learns now, not at its timeout.
                    None => turned_away.one("server.max_connections reached", admission.cap),
                },
                Err(e) => accept_failed(e, &https, &mut spare, &mut turned_away, admission.cap).await,
            },
            accepted = accept_optional(http.as_ref()) => match accepted {
                Ok((stream, peer)) => match admission.admit() {
                    Some(admitted) => {
                        connections.spawn(serve_redirect(
                            stream, peer, redirect.clone(), gateway.readiness().clone(),
                            settings.clone(), stop.clone(), admitted,
                        ));
                    }
                    None => turned_away.one("server.max_connections reached", admission.cap),
                },
                Err(e) => {
                    if let Some(listener) = http.as_ref() {
                        accept_failed(e, listener, &mut spare, &mut turned_away, admission.cap).await;
                    }
                }
            },
        }
    }

    gateway
        .readiness()
        .set_not_ready("shutdown", "draining: the gateway is shutting down");
    drop(https);
    drop(http);
    let grace = settings.config.server.shutdown_grace;
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        connections = connections.len(),
        "shutting down: draining connections"
    );
    let deadline = tokio::time::Instant::now() + grace;
    // Each connection saw `stop` and is closing gracefully (src/streams.rs).
    connections.close();
    if tokio::time::timeout_at(deadline, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period ended with requests still in flight; closing them");
    }
    tunnels.tracker.close();
    if tokio::time::timeout_at(deadline, tunnels.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tunnels = tunnels.tracker.len(),
            "grace period ended with open tunnels; closing them"
        );
        tunnels.close.cancel();
        tunnels.tracker.wait().await;
    }
    tracing::info!("shutdown complete");
}

async fn accept_optional(
    listener: Option<&TcpListener>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// An accept error. Out of descriptors, the pending connection is accepted on
/// the spare descriptor and closed (else it would be retried in a loop); other
/// errors are the one connection's (ECONNABORTED) or transient (ENOBUFS): back
/// off a moment.
async fn accept_failed(
    e: std::io::Error,
    listener: &TcpListener,
    spare: &mut SpareDescriptor,
    turned_away: &mut TurnedAway,
    cap: usize,
) {
    if out_of_descriptors(&e) && spare.turn_away_one(listener) {
        turned_away.one(
            "out of file descriptors (raise the open-file limit or lower server.max_connections)",
            cap,
        );
        return;
    }
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    gateway: Arc<Gateway>,
    settings: Arc<Settings>,
    stop: CancellationToken,
    _admitted: Admitted,
) {
    let _open = metrics::connection_opened();
    let handshake_timeout = settings.config.server.tls_handshake_timeout;
    let handshake = Box::pin(tls_handshake(stream, peer, &acceptor, handshake_timeout));
    let Some(tls) = handshake.await else {
        return;
    };
    // The protocol is the one ALPN agreed on (as nginx does): no sniffing of
    // the first bytes, whose wait would have no timer of its own.
    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let conn_info = ConnectionInfo::new(peer, "https");
    let service = service_fn(move |request: Request<Incoming>| {
        watchdog::request_started();
        // Not boxed: HTTP/1 keeps it in the connection's own (reused) slot, and
        // HTTP/2 in the stream future that StreamExecutor allocates anyway.
        gateway
            .handle(request, conn_info.clone())
            .map(|response| Ok::<_, Infallible>(response.map(Watched::new)))
    });
    let io = TokioIo::new(ObservedIo::new(tls));
    let limits = Limits::from_config(&settings.config.server);
    let ended = if http2 {
        serve_http2(io, service, &settings, limits, &stop).await
    } else {
        serve_http1(io, service, &settings, limits, &stop).await
    };
    log_end(peer, &ended);
}

/// The TLS handshake: the stream to serve, or None when there is nobody to
/// serve (plain HTTP answered, the handshake failed or timed out, an ACME
/// validation that the handshake itself answered).
async fn tls_handshake(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    handshake_timeout: Duration,
) -> Option<ClientTls> {
    let _ = stream.set_nodelay(true);
    // A TLS connection starts with a handshake record (0x16). Anything else is
    // most likely plain HTTP sent to the HTTPS port: say so, in plain HTTP.
    let mut first = [0u8; 1];
    match tokio::time::timeout(handshake_timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] != 0x16 => {
            metrics::handshake(Handshake::PlainHttp);
            reject_plain_http(stream).await;
            return None;
        }
        Ok(Ok(1)) => {}
        Ok(_) => return None,
        Err(_) => {
            metrics::handshake(Handshake::TimedOut);
            return None;
        }
    }
    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics::handshake(Handshake::Failed);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            metrics::handshake(Handshake::TimedOut);
            tracing::debug!(%peer, "TLS handshake timed out");
            return None;
        }
    };
    if tls.get_ref().1.alpn_protocol() == Some(tls::ACME_TLS_ALPN) {
        // An ACME CA validating TLS-ALPN-01: the handshake was the whole answer.
        metrics::handshake(Handshake::AcmeValidation);
        return None;
    }
    metrics::handshake(Handshake::Ok);
    Some(Box::new(tls))
}

/// An HTTP/1.1 connection over TLS. Kept-alive connections that go quiet are
/// parked: hyper's connection (its read and write buffers, the slot of the
/// request future, the header map it keeps for reuse) is taken apart and only
/// the TLS stream waits for the client's next bytes, as nginx frees a
/// keep-alive connection's buffers. The next request gets a fresh one.
///
/// The active phase (hyper's connection and its driver) lives in a box
/// of its own for as long as it runs: a task's allocation has the size of its
/// future's largest state, so with it inline every parked connection would
/// keep that room too.
async fn serve_http1<S>(
    mut io: ClientIo,
    mut service: S,
    settings: &Settings,
    limits: Limits,
    stop: &CancellationToken,
) -> Ended
where
    S: hyper::service::HttpService<Incoming> + Unpin,
    S::Error: Into<crate::BoxError>,
    S::ResBody: 'static,
    <S::ResBody as http_body::Body>::Error: Into<crate::BoxError>,
{
    let builder = http1_builder(settings);
    loop {
        let idle_left = match serve_http1_until_quiet(&builder, io, service, limits, stop).await {
            Ok((idle_left, parts)) => {
                (io, service) = (parts.io, parts.service);
                io.inner_mut().unread(parts.read_buf);
                idle_left
            }
            Err(ended) => return ended,
        };
        let socket = io.inner().get_ref().get_ref().0;
        tokio::select! {
            readable = socket.readable() => {
                if readable.is_err() {
                    return Ended::Closed(Ok(()));
                }
            }
            _ = tokio::time::sleep(idle_left) => return Ended::Expired(Expiry::Idle),
            // Nothing in flight: closing is all a graceful shutdown has to do.
            _ = stop.cancelled() => return Ended::Closed(Ok(())),
        }
    }
}

/// An HTTP/2 connection over TLS, its streams polled by its own task (boxed:
/// see [`serve_http1_until_quiet`]).
fn serve_http2<'a, S>(
    io: ClientIo,
    service: S,
    settings: &'a Settings,
    limits: Limits,
    stop: &'a CancellationToken,
) -> Pin<Box<impl Future<Output = Ended> + 'a>>
where
    S: hyper::service::HttpService<Incoming, Future: Send + 'static> + Clone + Send + 'static,
    S::Error: Into<crate::BoxError>,
    S::ResBody: Send + 'static,
    <S::ResBody as http_body::Body>::Data: Send,
    <S::ResBody as http_body::Body>::Error: Into<crate::BoxError>,
{
    Box::pin(async move {
        let streams = StreamExecutor::default();
        let mut conn = http2_builder(settings, streams.clone()).serve_connection(io, service);
        streams::drive(&mut conn, Some(streams), ConnectionClock::new(limits), stop).await
    })
}

/// Serves HTTP/1 requests until the connection ends (Err) or goes quiet:
/// then hands back its parts (the TLS stream with any bytes read ahead, the
/// service) and the idle time left.
///
/// Returns the future already boxed: the caller then never holds the large
/// future as a value of its own, which would get a slot in the caller's
/// (parked) state even when boxed before being awaited.
fn serve_http1_until_quiet<'a, S>(
    builder: &'a http1::Builder,
    io: ClientIo,
    service: S,
    limits: Limits,
    stop: &'a CancellationToken,
) -> Pin<Box<impl Future<Output = QuietOrEnded<S>> + 'a>>
where
    S: hyper::service::HttpService<Incoming> + Unpin + 'a,
    S::Error: Into<crate::BoxError>,
    S::ResBody: 'static,
    <S::ResBody as http_body::Body>::Error: Into<crate::BoxError>,
{
    Box::pin(async move {
        let mut conn = builder.serve_connection(io, service).with_upgrades();
        let clock = ConnectionClock::new(limits).parking();
        let idle_left = match streams::drive(&mut conn, None, clock, stop).await {
            Ended::Quiet { idle_left } => idle_left,
            ended => return Err(ended),
        };
        conn.into_parts()
            .map(|parts| (idle_left, parts))
            .ok_or(Ended::Closed(Ok(())))
    })
}

/// A quiet HTTP/1 connection's idle time left and parts, or how it ended.
type QuietOrEnded<S> = Result<(Duration, http1::Parts<ClientIo, S>), Ended>;

/// The client's bytes: TLS over TCP, observed by the connection's clock.
type ClientIo = TokioIo<ObservedIo<ClientTls>>;

/// A client's TLS stream, boxed. A future keeps room for a value it moved on
/// until that value's scope ends (rust-lang/rust#62958), so every future a
/// ~1.2 KiB stream passes through would keep a copy's worth of room; a parked
/// connection then pays for each. Boxed, the stream exists once.
type ClientTls = Box<TlsStream<TcpStream>>;

fn log_end(peer: SocketAddr, ended: &Ended) {
    match ended {
        Ended::Closed(Ok(())) => {}
        Ended::Closed(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection ended with an error")
        }
        Ended::Expired(expiry) => tracing::debug!(%peer, ?expiry, "connection closed by a limit"),
        Ended::Quiet { .. } => {}
    }
}

async fn reject_plain_http(mut stream: TcpStream) {
    const ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 57\r\n\r\nThis port speaks HTTPS. Use https:// to reach this page.\n";
    let _ = stream.write_all(ANSWER).await;
    let _ = stream.shutdown().await;
}

/// Where the plain-HTTP listener sends browsers.
struct RedirectTarget {
    /// `https://host[:port]` from server.public_url, when set.
    fixed_origin: Option<String>,
    https_port: u16,
    /// Where an ACME order's HTTP-01 answers are (acme.challenge = "http-01").
    certificate: Arc<ServedCertificate>,
}

/// Where an ACME CA fetches HTTP-01 key authorizations (RFC 8555 §8.3).
const ACME_HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

impl RedirectTarget {
    fn new(settings: &Settings, https_port: u16, certificate: Arc<ServedCertificate>) -> Self {
        let fixed_origin = settings.public_url.as_ref().map(|u| {
            let s = u.to_string();
            s.trim_end_matches('/').to_string()
        });
        RedirectTarget {
            fixed_origin,
            https_port,
            certificate,
        }
    }

    /// The https URL for a plain-HTTP request, or None when its Host is unusable.
    fn location(&self, request: &Request<Incoming>) -> Option<String> {
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if let Some(origin) = &self.fixed_origin {
            return Some(format!("{origin}{path}"));
        }
        let host = request.headers().get(HOST)?.to_str().ok()?;
        let authority: http::uri::Authority = host.parse().ok()?;
        if host.contains('@') {
            return None;
        }
        let name = authority.host();
        Some(if self.https_port == 443 {
            format!("https://{name}{path}")
        } else {
            format!("https://{name}:{}{path}", self.https_port)
        })
    }
}

async fn serve_redirect(
    stream: TcpStream,
    peer: SocketAddr,
    target: Arc<RedirectTarget>,
    readiness: Readiness,
    settings: Arc<Settings>,
    stop: CancellationToken,
    _admitted: Admitted,
) {
    let _open = metrics::connection_opened();
    // /readyz says why it is not ready only to loopback and trusted proxies.
    let insider = peer.ip().is_loopback()
        || settings
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer.ip()));
    let service = service_fn(move |request: Request<Incoming>| {
        watchdog::request_started();
        let answer = redirect_answer(&request, &target, &readiness, insider).map(Watched::new);
        async move { Ok::<_, Infallible>(answer) }
    });
    let mut conn =
        http1_builder(&settings).serve_connection(TokioIo::new(ObservedIo::new(stream)), service);
    let clock = ConnectionClock::new(Limits::from_config(&settings.config.server));
    log_end(peer, &streams::drive(&mut conn, None, clock, &stop).await);
}

fn redirect_answer(
    request: &Request<Incoming>,
    target: &RedirectTarget,
    readiness: &Readiness,
    insider: bool,
) -> Response<Body> {
    let path = request.uri().path();
    if let Some(answer) = health::answer(request.method(), path, readiness, insider) {
        return answer;
    }
    let key_authorization = path
        .strip_prefix(ACME_HTTP01_PREFIX)
        .and_then(|token| target.certificate.http_challenge(token));
    if let Some(key_authorization) = key_authorization {
        let mut response = Response::new(crate::full_body(key_authorization));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        return response;
    }
    let mut response = Response::new(empty_body());
    match target
        .location(request)
        .and_then(|l| HeaderValue::from_str(&l).ok())
    {
        Some(location) => {
            *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
            response.headers_mut().insert(LOCATION, location);
        }
        None => {
            *response.status_mut() = StatusCode::BAD_REQUEST;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            *response.body_mut() = crate::full_body(
                "Missing or invalid Host header; use https:// to reach this site.\n",
            );
        }
    }
    response
}
