//! The timers of a client connection: how long it may take to send a request
//! head (`server.header_read_timeout`), to stay open between requests
//! (`server.idle_timeout`), and how long a response may make no progress
//! towards the client (`server.send_timeout`).
//!
//! No timer per request: the connection's task has one coarse timer
//! ([`Limits::tick`], a quarter of the shortest limit) and, between ticks,
//! only notes what each poll did. Whatever a poll of the connection or of one
//! of its HTTP/2 streams does — bytes read from the client, a request handed
//! to the service, a response body polled, dropped — is recorded in
//! [`Activity`], a per-thread note that the poller takes right after the poll
//! (the way tokio's cooperative budget rides along with a poll). So the hot
//! path pays a few stores into a thread-local; the clock is read once a tick.
//! A limit is therefore enforced between its value and a quarter more.

use std::cell::Cell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::ServerConfig;

/// The connection limits in force (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
}

impl Limits {
    pub fn from_config(server: &ServerConfig) -> Self {
        Limits {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            send_timeout: server.send_timeout,
        }
    }

    /// How often a connection looks at its clock.
    pub fn tick(&self) -> Duration {
        let shortest = self
            .header_read_timeout
            .min(self.idle_timeout)
            .min(self.send_timeout);
        (shortest / 4).max(Duration::from_millis(1))
    }
}

/// What the response body did in the last poll that touched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyPoll {
    /// Not polled: hyper had no room to write (the client does not read, or
    /// HTTP/2 gives the stream no window).
    NotPolled,
    /// Polled and waiting for its source (the upstream): not the client's doing.
    Waiting,
    /// Handed a frame on: the client made room for it.
    Sent,
}

/// What one poll did, noted by the I/O, the service and the response body.
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    /// Bytes arrived from the client after the last response ended.
    read: bool,
    /// Bytes went out towards the client.
    wrote: bool,
    /// The last write-side call left bytes on their way (Some(true)) or
    /// completed a flush (Some(false)); None when there was no such call.
    write_pending: Option<bool>,
    /// Requests handed to the service.
    requests: u32,
    /// Response bodies made (one per response).
    responses: u32,
    /// Response bodies dropped (their response is complete or abandoned).
    finished: u32,
    body: BodyPoll,
}

impl Activity {
    const NONE: Activity = Activity {
        read: false,
        wrote: false,
        write_pending: None,
        requests: 0,
        responses: 0,
        finished: 0,
        body: BodyPoll::NotPolled,
    };
}

thread_local! {
    static ACTIVITY: Cell<Activity> = const { Cell::new(Activity::NONE) };
}

fn note(change: impl FnOnce(&mut Activity)) {
    ACTIVITY.with(|cell| {
        let mut activity = cell.get();
        change(&mut activity);
        cell.set(activity);
    });
}

/// Polls `poll` and returns its result with what it did.
pub fn observe<T>(poll: impl FnOnce() -> T) -> (T, Activity) {
    // Whatever an unobserved poll (a tunnel's task) left behind is not ours.
    ACTIVITY.with(|cell| cell.set(Activity::NONE));
    let polled = poll();
    (polled, ACTIVITY.with(|cell| cell.replace(Activity::NONE)))
}

/// Called by the service for each request it is handed.
pub fn request_started() {
    note(|a| a.requests += 1);
}

/// A response body whose polls and end are noted in [`Activity`].
pub struct Watched<B> {
    inner: B,
}

impl<B> Watched<B> {
    pub fn new(inner: B) -> Self {
        note(|a| a.responses += 1);
        Watched { inner }
    }
}

impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        note(|a| {
            a.finished += 1;
            // Bytes read before this point belonged to the request just answered.
            a.read = false;
        });
    }
}

impl<B: Body + Unpin> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let body = if polled.is_pending() {
            BodyPoll::Waiting
        } else {
            BodyPoll::Sent
        };
        note(|a| a.body = body);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's byte stream (above TLS), noting reads and writes in [`Activity`].
pub struct ObservedIo<T> {
    inner: T,
    /// Bytes read before the connection was parked (src/streams.rs), read again first.
    unread: Option<bytes::Bytes>,
}

impl<T> ObservedIo<T> {
    pub fn new(inner: T) -> Self {
        ObservedIo {
            inner,
            unread: None,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Puts bytes already read back in front of the stream.
    pub fn unread(&mut self, bytes: bytes::Bytes) {
        if !bytes.is_empty() {
            self.unread = Some(bytes);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ObservedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(unread) = self.unread.as_mut() {
            let n = unread.len().min(buf.remaining());
            buf.put_slice(&unread.split_to(n));
            if unread.is_empty() {
                self.unread = None;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            note(|a| a.read = true);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ObservedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        note_written(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        note_written(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        let pending = !matches!(polled, Poll::Ready(Ok(())));
        note(|a| a.write_pending = Some(pending));
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn note_written(polled: &Poll<std::io::Result<usize>>) {
    let wrote = matches!(polled, Poll::Ready(Ok(n)) if *n > 0);
    note(|a| {
        a.wrote |= wrote;
        // Written bytes are on their way until a flush completes.
        a.write_pending = Some(true);
    });
}

/// A response's send clock: how long it has waited on the client without
/// getting anything through.
#[derive(Debug, Default)]
pub struct SendClock {
    /// A response body exists (headers are out or on their way).
    responding: bool,
    /// hyper could not hand the body on for want of room towards the client.
    waiting_on_client: bool,
    /// Something went out since the last tick.
    progressed: bool,
    stalled: Option<Duration>,
}

impl SendClock {
    /// Takes in what a poll of the response's owner (HTTP/1 connection, HTTP/2 stream) did.
    pub fn polled(&mut self, activity: &Activity) {
        if activity.responses > 0 {
            self.responding = true;
        }
        match activity.body {
            BodyPoll::Waiting => self.waiting_on_client = false,
            BodyPoll::Sent => {
                self.waiting_on_client = true;
                self.progressed = true;
            }
            BodyPoll::NotPolled => self.waiting_on_client = self.responding,
        }
        if activity.wrote {
            self.progressed = true;
        }
    }

    /// A tick passed; true when the response has been stuck for `send_timeout`.
    pub fn expired(&mut self, tick: Duration, send_timeout: Duration) -> bool {
        let stuck = self.responding && self.waiting_on_client && !self.progressed;
        self.progressed = false;
        if !stuck {
            self.stalled = None;
            return false;
        }
        // The first stuck tick starts the clock: the stall began within it.
        let stalled = self.stalled.map_or(Duration::ZERO, |s| s + tick);
        self.stalled = Some(stalled);
        stalled >= send_timeout
    }

    /// The response is over (HTTP/1: the next request may come).
    fn reset(&mut self) {
        *self = SendClock::default();
    }
}

/// Where a connection is in its life, for its timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepted and TLS done; no request yet (`header_read_timeout`).
    Greeting,
    /// Between requests (`idle_timeout`).
    Idle,
    /// HTTP/1: the next request's head is arriving (`header_read_timeout`).
    Head,
    /// Requests in flight; responses watched by their [`SendClock`].
    Busy,
}

/// Why a connection is to be ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No (complete) request head within `header_read_timeout`: drop it.
    HeaderTimeout,
    /// Nothing asked for `idle_timeout`: close it politely (HTTP/2 GOAWAY).
    Idle,
    /// HTTP/1: the response got nothing through for `send_timeout`: drop it.
    SendTimeout,
    /// HTTP/1: idle for a whole tick with everything written: its buffers may
    /// be let go until the client speaks again (`idle_left` of the idle timeout).
    Quiet { idle_left: Duration },
}

/// The timers of one connection.
#[derive(Debug)]
pub struct ConnectionClock {
    limits: Limits,
    phase: Phase,
    /// Time in the current phase, counted from the first tick within it.
    elapsed: Option<Duration>,
    /// HTTP/1: requests whose response body has not been dropped yet.
    in_flight: u32,
    /// HTTP/1: the response in flight.
    send: SendClock,
    /// HTTP/1: everything written has been flushed to the socket.
    write_drained: bool,
    /// Report [`Expiry::Quiet`] (the caller parks idle connections).
    park_when_quiet: bool,
}

impl ConnectionClock {
    pub fn new(limits: Limits) -> Self {
        ConnectionClock {
            limits,
            phase: Phase::Greeting,
            elapsed: None,
            in_flight: 0,
            send: SendClock::default(),
            write_drained: true,
            park_when_quiet: false,
        }
    }

    /// HTTP/1 connections whose caller parks them when quiet.
    pub fn parking(mut self) -> Self {
        self.park_when_quiet = true;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn enter(&mut self, phase: Phase) {
        if self.phase != phase {
            self.phase = phase;
            self.elapsed = None;
        }
    }

    /// HTTP/1: takes in what a poll of the connection did.
    pub fn http1_polled(&mut self, activity: &Activity) {
        if let Some(pending) = activity.write_pending {
            self.write_drained = !pending;
        }
        self.in_flight = (self.in_flight + activity.requests).saturating_sub(activity.finished);
        if self.in_flight > 0 {
            if activity.finished > 0 {
                // A pipelined request follows the one that ended.
                self.send.reset();
            }
            self.enter(Phase::Busy);
            self.send.polled(activity);
            return;
        }
        if self.phase == Phase::Busy || activity.requests > 0 {
            // The last response ended (perhaps within this very poll).
            self.send.reset();
            self.enter(Phase::Idle);
        }
        if activity.read && self.phase == Phase::Idle {
            self.enter(Phase::Head);
        }
    }

    /// HTTP/2: takes in whether streams are open after a poll of the connection
    /// and its streams. Streams keep their own send clocks; pings and settings
    /// do not make a connection busy.
    pub fn http2_polled(&mut self, streams_open: bool, activity: &Activity) {
        if streams_open || activity.requests > 0 {
            self.enter(Phase::Busy);
        } else if self.phase == Phase::Busy {
            self.enter(Phase::Idle);
        }
    }

    /// A tick passed: the expiry due, if any.
    pub fn tick(&mut self) -> Option<Expiry> {
        let tick = self.limits.tick();
        let (limit, expiry) = match self.phase {
            Phase::Greeting | Phase::Head => {
                (self.limits.header_read_timeout, Expiry::HeaderTimeout)
            }
            Phase::Idle => (self.limits.idle_timeout, Expiry::Idle),
            Phase::Busy => {
                return self
                    .send
                    .expired(tick, self.limits.send_timeout)
                    .then_some(Expiry::SendTimeout);
            }
        };
        let elapsed = self.elapsed.map_or(Duration::ZERO, |e| e + tick);
        self.elapsed = Some(elapsed);
        if elapsed >= limit {
            return Some(expiry);
        }
        let quiet = self.phase == Phase::Idle && elapsed >= tick && self.write_drained;
        (quiet && self.park_when_quiet).then(|| Expiry::Quiet {
            idle_left: limit - elapsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(4),
            idle_timeout: Duration::from_secs(8),
            send_timeout: Duration::from_secs(4),
        }
    }

    fn ticks_until_expiry(clock: &mut ConnectionClock) -> (u32, Option<Expiry>) {
        for n in 1..=100 {
            if let Some(expiry) = clock.tick() {
                return (n, Some(expiry));
            }
        }
        (100, None)
    }

    fn activity(change: impl FnOnce(&mut Activity)) -> Activity {
        let mut a = Activity::NONE;
        change(&mut a);
        a
    }

    #[test]
    fn a_silent_connection_ends_after_the_header_timeout_not_before() {
        let mut clock = ConnectionClock::new(limits());
        // tick = 1 s; the first tick starts the clock, 4 s later it expires.
        assert_eq!(
            ticks_until_expiry(&mut clock),
            (5, Some(Expiry::HeaderTimeout))
        );
    }

    #[test]
    fn an_answered_request_leaves_the_connection_idle_until_the_idle_timeout() {
        let mut clock = ConnectionClock::new(limits());
        // Read, handled and answered within one poll (a health check).
        clock.http1_polled(&activity(|a| {
            a.read = true;
            a.requests = 1;
            a.responses = 1;
            a.finished = 1;
            a.read = false;
        }));
        assert_eq!(ticks_until_expiry(&mut clock), (9, Some(Expiry::Idle)));
    }

    #[test]
    fn bytes_of_the_next_request_switch_to_the_header_timeout() {
        let mut clock = ConnectionClock::new(limits());
        clock.http1_polled(&activity(|a| {
            a.requests = 1;
            a.responses = 1;
            a.finished = 1;
        }));
        clock.tick();
        clock.http1_polled(&activity(|a| a.read = true));
        assert_eq!(
            ticks_until_expiry(&mut clock),
            (5, Some(Expiry::HeaderTimeout))
        );
    }

    #[test]
    fn a_response_waiting_for_the_upstream_never_expires() {
        let mut clock = ConnectionClock::new(limits());
        clock.http1_polled(&activity(|a| {
            a.requests = 1;
            a.responses = 1;
            a.body = BodyPoll::Waiting;
        }));
        assert_eq!(ticks_until_expiry(&mut clock), (100, None));
    }

    #[test]
    fn a_response_the_client_does_not_take_expires_after_the_send_timeout() {
        let mut clock = ConnectionClock::new(limits());
        clock.http1_polled(&activity(|a| {
            a.requests = 1;
            a.responses = 1;
            a.body = BodyPoll::Sent;
        }));
        // The tick that saw the last frame go out does not count as stuck.
        assert_eq!(
            ticks_until_expiry(&mut clock),
            (6, Some(Expiry::SendTimeout))
        );
    }

    #[test]
    fn progress_restarts_the_send_clock() {
        let mut clock = ConnectionClock::new(limits());
        clock.http1_polled(&activity(|a| {
            a.requests = 1;
            a.responses = 1;
            a.body = BodyPoll::Sent;
        }));
        for _ in 0..20 {
            assert_eq!(clock.tick(), None);
            assert_eq!(clock.tick(), None);
            clock.http1_polled(&activity(|a| a.wrote = true));
        }
    }

    #[test]
    fn an_idle_http1_connection_is_quiet_after_a_whole_tick_with_everything_flushed() {
        let mut clock = ConnectionClock::new(limits()).parking();
        clock.http1_polled(&activity(|a| {
            a.requests = 1;
            a.responses = 1;
            a.finished = 1;
            a.write_pending = Some(true);
        }));
        assert_eq!(clock.tick(), None);
        assert_eq!(
            clock.tick(),
            None,
            "not quiet: bytes were still on their way"
        );
        clock.http1_polled(&activity(|a| a.write_pending = Some(false)));
        assert_eq!(
            clock.tick(),
            Some(Expiry::Quiet {
                idle_left: Duration::from_secs(6)
            })
        );
    }

    #[test]
    fn an_http2_connection_is_idle_only_without_open_streams() {
        let mut clock = ConnectionClock::new(limits());
        clock.http2_polled(true, &activity(|a| a.requests = 1));
        assert_eq!(ticks_until_expiry(&mut clock), (100, None));
        clock.http2_polled(false, &Activity::NONE);
        assert_eq!(ticks_until_expiry(&mut clock), (9, Some(Expiry::Idle)));
    }
}
