//! Listeners and connection handling: the TLS listener (HTTP/1.1 and HTTP/2 by
//! ALPN), the optional plain-HTTP listener that redirects to https, and graceful
//! shutdown (readiness 503 → stop accepting → drain requests and tunnels).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::header::{CONTENT_TYPE, HOST, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings};
use crate::connection::ConnectionInfo;
use crate::gateway::Gateway;
use crate::health::{self, Readiness};
use crate::proxy::Tunnels;
use crate::streams::{self, StreamExecutor};
use crate::tls::{self, CertificateSource, TlsError};
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
    pub readiness: Readiness,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// One per extra worker thread: completes when that worker has drained.
    worker_exits: Vec<tokio::sync::oneshot::Receiver<()>>,
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
    let acceptor = TlsAcceptor::from(tls::server_config(&tls_cfg.cert, &tls_cfg.key)?);

    let workers = match settings.config.server.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    // One listening socket per worker on the same address (SO_REUSEPORT: the
    // kernel spreads new connections). All are bound here, so that an address
    // problem is a start-up error, not a worker thread's.
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

    let readiness = Readiness::default();
    let tunnels = Tunnels::default();
    let gateway = Gateway::new(settings.clone(), readiness.clone(), tunnels.clone()).map_err(
        |e| match e {
            crate::gateway::GatewayInitError::Tls(e) => StartError::Tls(e),
            other => StartError::Init(other.to_string()),
        },
    )?;
    let mut worker_gateways = Vec::new();
    for _ in 1..workers {
        worker_gateways.push(
            gateway
                .for_worker(tunnels.clone())
                .map_err(|e| StartError::Init(e.to_string()))?,
        );
    }
    let gateway = Arc::new(gateway);
    let stop = CancellationToken::new();
    gateway.spawn_background(stop.child_token());
    // For the plain-HTTP redirect listener; each TLS connection gets a builder of
    // its own, whose executor runs that connection's streams (src/streams.rs).
    let builder = connection_builder(&settings, TokioExecutor::new());

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
            gateway: Arc::new(worker_gateway),
            builder: builder.clone(),
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
        gateway,
        builder,
        tunnels,
        stop: stop.clone(),
    };
    let task = tokio::spawn(run(https_listener, http_listener, serving));
    tracing::info!(
        listen = %https_addr,
        redirect_http = ?http_addr,
        upstream = %settings.upstream,
        workers,
        "oidc-gateway is serving"
    );
    Ok(RunningServer {
        https_addr,
        http_addr,
        readiness,
        stop,
        task,
        worker_exits,
    })
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

/// The connection settings; `executor` runs what hyper spawns (HTTP/2 streams).
fn connection_builder<E: Clone>(settings: &Settings, executor: E) -> auto::Builder<E> {
    let server = &settings.config.server;
    let mut builder = auto::Builder::new(executor);
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slowloris: the whole header block must arrive within this time.
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(server.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(server.header_read_timeout)
        // RFC 8441: WebSocket over HTTP/2.
        .enable_connect_protocol();
    builder
}

/// What a worker serves its listeners with: its gateway (own upstream pool) and
/// the shared acceptor, connection builder, tunnels and stop signal.
struct Serving {
    settings: Arc<Settings>,
    https_port: u16,
    acceptor: TlsAcceptor,
    gateway: Arc<Gateway>,
    builder: auto::Builder<TokioExecutor>,
    tunnels: Tunnels,
    stop: CancellationToken,
}

/// One worker's accept loop and drain. Only the first worker has the plain-HTTP listener.
async fn run(https: TcpListener, http: Option<TcpListener>, serving: Serving) {
    let Serving {
        settings,
        https_port,
        acceptor,
        gateway,
        builder,
        tunnels,
        stop,
    } = serving;
    let graceful = GracefulShutdown::new();
    let handshake_timeout = settings.config.server.tls_handshake_timeout;
    let redirect = Arc::new(RedirectTarget::new(&settings, https_port));

    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = https.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_tls(
                        stream, peer, acceptor.clone(), gateway.clone(), settings.clone(),
                        handshake_timeout, graceful.watcher(),
                    ));
                }
                Err(e) => accept_failed(e).await,
            },
            accepted = accept_optional(http.as_ref()) => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_redirect(
                        stream, peer, redirect.clone(), gateway.readiness().clone(),
                        builder.clone(), graceful.watcher(),
                    ));
                }
                Err(e) => accept_failed(e).await,
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
        connections = graceful.count(),
        "shutting down: draining connections"
    );
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, graceful.shutdown())
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

/// Accept errors (EMFILE, ECONNABORTED) are per-connection or transient: log,
/// back off a moment so a full fd table does not spin the loop, go on.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    gateway: Arc<Gateway>,
    settings: Arc<Settings>,
    handshake_timeout: Duration,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    // A TLS connection starts with a handshake record (0x16). Anything else is
    // most likely plain HTTP sent to the HTTPS port: say so, in plain HTTP.
    let mut first = [0u8; 1];
    match tokio::time::timeout(handshake_timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] != 0x16 => {
            reject_plain_http(stream).await;
            return;
        }
        Ok(Ok(1)) => {}
        _ => return,
    }
    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let conn_info = ConnectionInfo::new(peer, "https");
    let service = service_fn(move |request: Request<Incoming>| {
        // Not boxed: HTTP/1 keeps it in the connection's own (reused) slot, and
        // HTTP/2 in the stream future that StreamExecutor allocates anyway.
        gateway
            .handle(request, conn_info.clone())
            .map(Ok::<_, Infallible>)
    });
    let streams = StreamExecutor::default();
    let conn = connection_builder(&settings, streams.clone())
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .into_owned();
    if let Err(e) = streams::drive(watcher.watch(conn), streams).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
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
}

impl RedirectTarget {
    fn new(settings: &Settings, https_port: u16) -> Self {
        let fixed_origin = settings.public_url.as_ref().map(|u| {
            let s = u.to_string();
            s.trim_end_matches('/').to_string()
        });
        RedirectTarget {
            fixed_origin,
            https_port,
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
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        let answer = redirect_answer(&request, &target, &readiness);
        async move { Ok::<_, Infallible>(answer) }
    });
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "plain-HTTP connection ended with an error");
    }
}

fn redirect_answer(
    request: &Request<Incoming>,
    target: &RedirectTarget,
    readiness: &Readiness,
) -> Response<Body> {
    if let Some(answer) = health::answer(request.method(), request.uri().path(), readiness) {
        return answer;
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
