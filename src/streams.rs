//! HTTP/2 streams run inside their connection's task.
//!
//! hyper hands every HTTP/2 stream (request) to an executor as a future of its
//! own. With tokio's executor each one becomes a task: allocated, registered
//! with the runtime, scheduled, woken across tasks, torn down. Here the
//! connection's own task polls them, next to the connection: a stream's
//! response is written by the same poll that produced it, and a request costs
//! one allocation instead of a task (bench/instructions measures the saving).
//! A connection's streams ran on its worker thread already; nothing moves.

use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use futures_util::stream::{FuturesUnordered, StreamExt};

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
        self.queue().push(Caught(Box::pin(stream)));
    }
}

/// A stream whose panic ends that stream only, as it would in a task of its own.
struct Caught(Pin<Box<dyn Future<Output = ()> + Send>>);

impl Future for Caught {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let stream = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| stream.poll(cx))) {
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

/// Polls `connection` and every stream it hands to `executor` until the
/// connection has ended and its last stream has finished.
pub async fn drive<C: Future>(connection: C, executor: StreamExecutor) -> C::Output {
    let mut connection = pin!(connection);
    let mut running = FuturesUnordered::new();
    let mut ended = None;
    poll_fn(|cx| {
        if ended.is_none() {
            if let Poll::Ready(output) = connection.as_mut().poll(cx) {
                ended = Some(output);
            }
        }
        executor.take_arrived(&mut running);
        loop {
            while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {}
            // A stream may hand over a future of its own (an HTTP/2 upgrade's
            // tunnel): start it now rather than on the next wake-up.
            if !executor.take_arrived(&mut running) {
                break;
            }
        }
        if running.is_empty() {
            if let Some(output) = ended.take() {
                return Poll::Ready(output);
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A connection future made by `body` from its executor and a counter of
    /// streams that finished.
    fn connection<Fut>(
        body: impl FnOnce(StreamExecutor, Arc<AtomicUsize>) -> Fut,
    ) -> (StreamExecutor, Arc<AtomicUsize>, Fut) {
        let executor = StreamExecutor::default();
        let finished = Arc::new(AtomicUsize::new(0));
        let connection = body(executor.clone(), finished.clone());
        (executor, finished, connection)
    }

    #[tokio::test]
    async fn the_connection_ends_only_after_its_last_stream() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (executor, finished, connection) = connection(|executor, finished| async move {
            executor.execute(async move {
                let _ = released.await;
                finished.fetch_add(1, Ordering::SeqCst);
            });
            "connection output"
        });
        let driving = tokio::spawn(drive(connection, executor));
        tokio::task::yield_now().await;
        assert!(
            !driving.is_finished(),
            "ended while a stream was still running"
        );
        let _ = release.send(());
        assert_eq!(driving.await.ok(), Some("connection output"));
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
        drive(connection, executor).await;
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
        drive(connection, executor).await;
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }
}
