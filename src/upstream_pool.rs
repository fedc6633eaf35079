//! Keep-alive HTTP/1.1 connections to the one upstream, per worker.
//!
//! Why not hyper-util's general-purpose client: it keys its pool by scheme and
//! authority (SipHash over every byte, twice per request), boxes each request's
//! future and spawns a task per request that waits for the connection to be
//! reusable. With exactly one upstream and one worker thread per pool, that was
//! ~10% of the instructions of a proxied request (`bench/instructions`). Here a
//! connection goes back to a LIFO list when its response body has been read to
//! the end, and is taken from there by the next request.
//!
//! Connections are capped per pool (`max_connections`: busy, idle and upgraded
//! ones): each holds a [`ConnectionSlot`] for as long as it lives, a tunnel
//! keeps its connection's slot, and a request that finds no idle connection and
//! no free slot waits for either — at most `slot_wait`, then
//! [`UpstreamError::Saturated`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use crate::{Body, BoxError};

/// How long a connection handed back at the very end of its response may take
/// to become reusable (its connection task has not run yet) before another is used.
const READY_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, TLS handshake failed).
    #[error("cannot connect: {0}")]
    Connect(BoxError),
    /// The connection failed while the request was sent or the response read.
    #[error(transparent)]
    Request(hyper::Error),
    /// Every connection allowed (`max_connections`) stayed busy for `waited`.
    #[error("all upstream connections busy for {waited:?}")]
    Saturated { waited: Duration },
}

/// One connection's place under `max_connections`, held by the connection's
/// task, its pool entry and, after an upgrade, its tunnel; freed when all are gone.
#[derive(Clone, Debug)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

pub struct UpstreamPool {
    shared: Arc<Shared>,
    connector: HttpsConnector<HttpConnector>,
}

struct Shared {
    /// Idle connections, the most recently used at the back.
    idle: Mutex<VecDeque<IdleConnection>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Whether a task is closing idle connections as they pass `idle_timeout`
    /// (changed only under the `idle` lock).
    reaping: AtomicBool,
    /// `max_connections` permits; a connection holds one while it lives.
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// How long a request waits for a connection when all are busy.
    slot_wait: Duration,
    /// Requests waiting for a connection, told when one is handed back.
    waiters: AtomicUsize,
    returned: Notify,
}

/// A connection: what sends requests on it, and its slot.
struct Connection {
    sender: http1::SendRequest<Body>,
    slot: ConnectionSlot,
}

struct IdleConnection {
    connection: Connection,
    since: Instant,
}

impl UpstreamPool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        max_idle: usize,
        idle_timeout: Duration,
        max_connections: usize,
        slot_wait: Duration,
    ) -> Self {
        let max_connections = max_connections.min(Semaphore::MAX_PERMITS);
        UpstreamPool {
            shared: Arc::new(Shared {
                idle: Mutex::new(VecDeque::new()),
                max_idle,
                idle_timeout,
                reaping: AtomicBool::new(false),
                slots: Arc::new(Semaphore::new(max_connections)),
                max_connections,
                slot_wait,
                waiters: AtomicUsize::new(0),
                returned: Notify::new(),
            }),
            connector,
        }
    }

    /// Sends `request` (origin-form URI, Host set) on an idle connection or a
    /// new one to `target` (scheme and authority of the upstream). A request that
    /// an idle connection could not even start to send (the upstream had just
    /// closed it) is sent again on another one.
    #[allow(clippy::manual_async_fn)] // deliberate: see the comment inside
    pub fn send<'a>(
        &'a self,
        target: &'a http::Uri,
        mut request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> + Send + 'a {
        // An `async move` block, not an `async fn`: it keeps the request once, not
        // twice (see `Gateway::handle`).
        async move {
            // Set when the request first found every connection busy.
            let mut waiting_since: Option<Instant> = None;
            loop {
                // The slow paths are boxed so that this (every request's) future stays small.
                let (mut connection, reused) = match self.checkout() {
                    Checkout::Ready(connection) => (connection, true),
                    Checkout::Finishing(connection) => {
                        match Box::pin(Self::when_ready(connection)).await {
                            Some(connection) => (connection, true),
                            None => continue,
                        }
                    }
                    Checkout::Empty => match self.shared.slots.clone().try_acquire_owned() {
                        Ok(permit) => (Box::pin(self.connect(target, permit)).await?, false),
                        Err(_) => {
                            let since = *waiting_since.get_or_insert_with(Instant::now);
                            match Box::pin(self.wait_for_capacity(since)).await? {
                                Some(permit) => {
                                    (Box::pin(self.connect(target, permit)).await?, false)
                                }
                                None => continue, // a connection was handed back
                            }
                        }
                    },
                };
                match connection.sender.try_send_request(request).await {
                    Ok(response) => return Ok(self.attach(response, connection)),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused => request = unsent,
                        _ => return Err(UpstreamError::Request(e.into_error())),
                    },
                }
            }
        }
    }

    /// The pool's connection counts, for the metrics (read at scrape time only).
    pub fn gauge(&self) -> std::sync::Weak<dyn crate::metrics::PoolGauge> {
        let shared: Arc<dyn crate::metrics::PoolGauge> = self.shared.clone();
        Arc::downgrade(&shared)
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Checkout {
        loop {
            let Some(candidate) = lock(&self.shared.idle).pop_back() else {
                return Checkout::Empty;
            };
            let sender = &candidate.connection.sender;
            if sender.is_closed() || candidate.since.elapsed() > self.shared.idle_timeout {
                continue; // dropped: the connection closes
            }
            return if sender.is_ready() {
                Checkout::Ready(candidate.connection)
            } else {
                Checkout::Finishing(candidate.connection)
            };
        }
    }

    /// Every slot is taken: waits until one is freed (Some: it is ours) or a
    /// connection is handed back to the pool (None: take it), at most until
    /// `slot_wait` after `since`.
    async fn wait_for_capacity(
        &self,
        since: Instant,
    ) -> Result<Option<OwnedSemaphorePermit>, UpstreamError> {
        let shared = &self.shared;
        shared.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&shared.waiters);
        let returned = shared.returned.notified();
        // Handed back between our checkout and registering as a waiter.
        if !lock(&shared.idle).is_empty() {
            return Ok(None);
        }
        let deadline = tokio::time::Instant::from_std(since + shared.slot_wait);
        tokio::select! {
            permit = shared.slots.clone().acquire_owned() => Ok(permit.ok()),
            _ = returned => Ok(None),
            _ = tokio::time::sleep_until(deadline) => Err(UpstreamError::Saturated {
                waited: since.elapsed(),
            }),
        }
    }

    /// A connection handed back at the very end of its response, once its
    /// connection task has marked it reusable (None: it did not in time).
    async fn when_ready(mut connection: Connection) -> Option<Connection> {
        match tokio::time::timeout(READY_WAIT, connection.sender.ready()).await {
            Ok(Ok(())) => Some(connection),
            _ => None,
        }
    }

    async fn connect(
        &self,
        target: &http::Uri,
        permit: OwnedSemaphorePermit,
    ) -> Result<Connection, UpstreamError> {
        let stream = self
            .connector
            .clone()
            .call(target.clone())
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(stream)
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        let slot = ConnectionSlot(Arc::new(permit));
        let held = slot.clone();
        tokio::spawn(async move {
            let _slot = held;
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Connection { sender, slot })
    }

    /// The response, its body holding the connection until it has been read.
    fn attach(&self, mut response: Response<Incoming>, connection: Connection) -> Response<Body> {
        // An upgraded connection (101) is the tunnel's now, never reused; the
        // tunnel takes its slot from the response.
        let connection = if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            response.extensions_mut().insert(connection.slot);
            None
        } else {
            Some(connection)
        };
        response.map(|body| {
            crate::boxed_body(PooledBody {
                body,
                release: connection.map(|connection| Release {
                    connection,
                    shared: self.shared.clone(),
                }),
            })
        })
    }
}

impl crate::metrics::PoolGauge for Shared {
    fn connections(&self) -> (usize, usize) {
        let open = self.max_connections - self.slots.available_permits();
        (lock(&self.idle).len(), open)
    }
}

/// Counts a waiting request for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Checkout {
    Ready(Connection),
    /// Its response was just read to the end; reusable in a moment.
    Finishing(Connection),
    Empty,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection on its way back to the pool.
struct Release {
    connection: Connection,
    shared: Arc<Shared>,
}

impl Release {
    fn back_to_pool(self) {
        let shared = self.shared;
        let mut idle = lock(&shared.idle);
        // The oldest sit at the front: forget those past the idle timeout.
        while idle
            .front()
            .is_some_and(|c| c.since.elapsed() > shared.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < shared.max_idle {
            idle.push_back(IdleConnection {
                connection: self.connection,
                since: Instant::now(),
            });
            if !shared.reaping.load(Ordering::Relaxed) {
                // A body dropped outside any runtime (at shutdown) starts nothing.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    shared.reaping.store(true, Ordering::Relaxed);
                    runtime.spawn(close_idle_connections(Arc::downgrade(&shared)));
                }
            }
            drop(idle);
            if shared.waiters.load(Ordering::SeqCst) > 0 {
                shared.returned.notify_one();
            }
        }
    }
}

/// Closes idle connections when they pass the idle timeout, even if no request
/// comes to notice (the upstream would otherwise keep a socket per connection
/// until it times out itself). Runs while the pool has idle connections.
async fn close_idle_connections(shared: Weak<Shared>) {
    loop {
        let next_expiry = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut idle = lock(&shared.idle);
            let now = Instant::now();
            // The oldest sit at the front; dropping a connection closes it.
            while idle
                .front()
                .is_some_and(|c| now.duration_since(c.since) >= shared.idle_timeout)
            {
                idle.pop_front();
            }
            match idle.front() {
                Some(oldest) => oldest.since + shared.idle_timeout,
                None => {
                    shared.reaping.store(false, Ordering::Relaxed);
                    return;
                }
            }
        };
        tokio::time::sleep_until(next_expiry.into()).await;
    }
}

/// The upstream's response body; hands the connection back once read to the end.
/// Dropped before that, the connection is dropped too (hyper closes it: the
/// rest of the body is still on the wire).
struct PooledBody {
    body: Incoming,
    release: Option<Release>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(release) = self.release.take() {
            release.back_to_pool();
        }
    }

    fn release_if_done(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) => self.release_if_done(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Bodies known to be empty (HEAD, 204, 304, Content-Length: 0) are never
        // polled by the server side; their connection is reusable all the same.
        self.release_if_done();
    }
}
