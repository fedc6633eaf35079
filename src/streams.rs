//! A connection's task: the connection, its HTTP/2 streams and its timers.
//!
//! hyper hands every HTTP/2 stream (request) to an executor as a future of its
//! own. With tokio's executor each one becomes a task: allocated, registered
//! with the runtime, scheduled, woken across tasks, torn down. Here the
//! connection's own task polls them, next to the connection: a stream's
//! response is written by the same poll that produced it, and a request costs
//! one allocation instead of a task (bench/instructions measures the saving).
//! A connection's streams ran on its worker thread already; nothing moves.
//!
//! The same task keeps the connection's timers (src/watchdog.rs): one coarse
//! timer ends a connection that sends no request head, stays idle, or does not
//! take its HTTP/1 response; it resets an HTTP/2 stream whose response the
//! client gives no window to (releasing the upstream connection behind it); and
//! it starts the graceful close when the gateway shuts down.

use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use tokio_util::sync::CancellationToken;

use crate::watchdog::{self, ConnectionClock, Expiry, SendClock};
use crate::BoxError;

/// The executor given to one connection's hyper builder. Futures handed to it
/// wait in a queue until [`drive`] (polling that connection) picks them up.
#[derive(Clone, Default)]
pub struct StreamExecutor {
    arrived: Arc<Mutex<Vec<Caught>>>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        // Boxed as it comes: a stream's future is ~1 KiB, and every wrapper
        // around it before boxing would be one more copy of it.
        self.queue().push(Caught {
            stream: Box::pin(stream),
            send: SendClock::default(),
            cancelled: false,
        });
    }
}

/// A stream whose panic ends that stream only, as it would in a task of its
/// own, with the clock of its response.
struct Caught {
    stream: Pin<Box<dyn Future<Output = ()> + Send>>,
    send: SendClock,
    /// Its response got nothing through for `send_timeout`: to be dropped.
    cancelled: bool,
}

impl Future for Caught {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let stream = this.stream.as_mut();
        let (polled, activity) =
            watchdog::observe(|| std::panic::catch_unwind(AssertUnwindSafe(|| stream.poll(cx))));
        this.send.polled(&activity);
        match polled {
            Ok(polled) => polled,
            // Dropping it now (FuturesUnordered drops what is ready) ends it.
            Err(_) => Poll::Ready(()),
        }
    }
}

impl StreamExecutor {
    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Caught>> {
        // Never poisoned: nothing panics while holding it (pushes and drains only).
        self.arrived.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the futures that arrived into `running`; false when none had.
    fn take_arrived(&self, running: &mut FuturesUnordered<Caught>) -> bool {
        let mut queue = self.queue();
        if queue.is_empty() {
            return false;
        }
        running.extend(queue.drain(..));
        true
    }
}

/// A served hyper connection: HTTP/1 (with or without upgrades) or HTTP/2.
pub trait HttpConnection: Future<Output = hyper::Result<()>> {
    /// Stop taking requests; end once those in flight are answered (HTTP/2: GOAWAY).
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> HttpConnection for http1::Connection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self)
    }
}

impl<I, S, B> HttpConnection for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B, E> HttpConnection for http2::Connection<I, S, E>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

/// How a connection's task ended.
#[derive(Debug)]
pub enum Ended {
    /// The connection finished (client closed, graceful shutdown, upgrade).
    Closed(hyper::Result<()>),
    /// A limit ended it (src/watchdog.rs).
    Expired(Expiry),
    /// HTTP/1: idle with everything written; the caller may park it
    /// ([`Expiry::Quiet`]) or drive it on.
    Quiet { idle_left: std::time::Duration },
}

/// Polls `connection`, and (HTTP/2) every stream it hands to `executor`, until
/// the connection has ended and its last stream has finished, a limit ends it,
/// `stop` has closed it gracefully, or (with a parking clock) it is quiet.
pub async fn drive<C: HttpConnection + Unpin>(
    connection: &mut C,
    executor: Option<StreamExecutor>,
    mut clock: ConnectionClock,
    stop: &CancellationToken,
) -> Ended {
    let mut connection = Pin::new(connection);
    let mut stopping = pin!(stop.cancelled());
    let limits = *clock.limits();
    let tick = limits.tick();
    let mut timer = pin!(tokio::time::sleep(tick));
    // HTTP/2 only: made when the first stream arrives.
    let mut running: Option<FuturesUnordered<Caught>> = None;
    let mut ended = None;
    // The stop signal and the timer are polled once to register the task's
    // waker; afterwards a flag or the deadline is checked (no polls per wake-up).
    let mut stop_registered = false;
    let mut timer_registered = false;
    let mut closing = false;
    poll_fn(|cx| {
        if !closing {
            if !stop_registered {
                stop_registered = true;
                let _ = stopping.as_mut().poll(cx);
            }
            if stop.is_cancelled() {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
        if ended.is_none() {
            let (polled, activity) = watchdog::observe(|| connection.as_mut().poll(cx));
            if let Poll::Ready(output) = polled {
                ended = Some(output);
            }
            match &executor {
                None => clock.http1_polled(&activity),
                Some(executor) => {
                    let running = running.get_or_insert_with(FuturesUnordered::new);
                    poll_streams(executor, running, cx);
                    clock.http2_polled(!running.is_empty(), &activity);
                }
            }
        } else if let (Some(executor), Some(running)) = (&executor, running.as_mut()) {
            poll_streams(executor, running, cx);
        }
        if running.as_ref().is_none_or(|r| r.is_empty()) {
            if let Some(output) = ended.take() {
                return Poll::Ready(Ended::Closed(output));
            }
        }
        // The timer: one tick per Limits::tick.
        loop {
            if timer_registered && !timer.is_elapsed() {
                return Poll::Pending;
            }
            if !timer_registered && timer.as_mut().poll(cx).is_pending() {
                timer_registered = true;
                return Poll::Pending;
            }
            timer.as_mut().reset(tokio::time::Instant::now() + tick);
            timer_registered = false;
            if let Some(running) = running.as_mut() {
                reset_stalled_streams(running, tick, limits.send_timeout);
            }
            match clock.tick() {
                None => {}
                Some(Expiry::Idle) if !closing => {
                    // Politely: HTTP/1 closes, HTTP/2 sends GOAWAY. If it is still
                    // open at the next tick, it is dropped then.
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                    cx.waker().wake_by_ref();
                }
                Some(Expiry::Quiet { idle_left }) if !closing => {
                    return Poll::Ready(Ended::Quiet { idle_left })
                }
                Some(Expiry::Quiet { .. }) => {}
                Some(expiry) => return Poll::Ready(Ended::Expired(expiry)),
            }
        }
    })
    .await
}

/// Starts the streams that arrived and polls those that are ready.
fn poll_streams(
    executor: &StreamExecutor,
    running: &mut FuturesUnordered<Caught>,
    cx: &mut Context<'_>,
) {
    executor.take_arrived(running);
    loop {
        while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {}
        // A stream may hand over a future of its own (an HTTP/2 upgrade's
        // tunnel): start it now rather than on the next wake-up.
        if !executor.take_arrived(running) {
            break;
        }
    }
}

/// Drops the streams whose response got nothing through for `send_timeout`:
/// the client is reset (RST_STREAM) and the upstream connection released.
fn reset_stalled_streams(
    running: &mut FuturesUnordered<Caught>,
    tick: std::time::Duration,
    send_timeout: std::time::Duration,
) {
    let mut any = false;
    for stream in running.iter_mut() {
        if stream.send.expired(tick, send_timeout) {
            stream.cancelled = true;
            any = true;
        }
    }
    if any {
        let kept: FuturesUnordered<Caught> = std::mem::take(running)
            .into_iter()
            .filter(|stream| !stream.cancelled)
            .collect();
        tracing::debug!("reset HTTP/2 streams whose client gave no room for server.send_timeout");
        *running = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watchdog::Limits;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stand-in for a hyper connection: a future, shut down by nothing.
    struct Plain<F>(Pin<Box<F>>);

    impl<F: Future<Output = ()>> Future for Plain<F> {
        type Output = hyper::Result<()>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.0.as_mut().poll(cx).map(Ok)
        }
    }

    impl<F: Future<Output = ()>> HttpConnection for Plain<F> {
        fn graceful_shutdown(self: Pin<&mut Self>) {}
    }

    /// A connection future made by `body` from its executor and a counter of
    /// streams that finished.
    fn connection<Fut: Future<Output = ()>>(
        body: impl FnOnce(StreamExecutor, Arc<AtomicUsize>) -> Fut,
    ) -> (StreamExecutor, Arc<AtomicUsize>, Plain<Fut>) {
        let executor = StreamExecutor::default();
        let finished = Arc::new(AtomicUsize::new(0));
        let connection = body(executor.clone(), finished.clone());
        (executor, finished, Plain(Box::pin(connection)))
    }

    fn limits() -> Limits {
        let long = std::time::Duration::from_secs(60);
        Limits {
            header_read_timeout: long,
            idle_timeout: long,
            send_timeout: long,
        }
    }

    async fn drive_to_end<C: HttpConnection + Unpin>(
        mut connection: C,
        executor: StreamExecutor,
    ) -> bool {
        let stop = CancellationToken::new();
        let clock = ConnectionClock::new(limits());
        matches!(
            drive(&mut connection, Some(executor), clock, &stop).await,
            Ended::Closed(Ok(()))
        )
    }

    #[tokio::test]
    async fn the_connection_ends_only_after_its_last_stream() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (executor, finished, connection) = connection(|executor, finished| async move {
            executor.execute(async move {
                let _ = released.await;
                finished.fetch_add(1, Ordering::SeqCst);
            });
        });
        let driving = tokio::spawn(drive_to_end(connection, executor));
        tokio::task::yield_now().await;
        assert!(
            !driving.is_finished(),
            "ended while a stream was still running"
        );
        let _ = release.send(());
        assert_eq!(driving.await.ok(), Some(true), "the connection's end");
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panicking_stream_ends_only_itself() {
        let (executor, finished, connection) = connection(|executor, finished| async move {
            executor.execute(async { panic!("a stream's bug") });
            executor.execute(async move {
                tokio::task::yield_now().await;
                finished.fetch_add(1, Ordering::SeqCst);
            });
        });
        assert!(drive_to_end(connection, executor).await);
        assert_eq!(
            finished.load(Ordering::SeqCst),
            1,
            "the other stream did not finish"
        );
    }

    #[tokio::test]
    async fn a_stream_may_hand_over_a_future_of_its_own() {
        // An HTTP/2 upgrade's tunnel arrives from inside a running stream.
        let (executor, finished, connection) = connection(|executor, finished| async move {
            let inner = executor.clone();
            executor.execute(async move {
                inner.execute(async move {
                    finished.fetch_add(1, Ordering::SeqCst);
                });
            });
        });
        assert!(drive_to_end(connection, executor).await);
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }
}
