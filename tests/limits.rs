//! No client can exhaust the edge: the connection limits of `[server]`
//! (header_read_timeout before the first request, idle_timeout, send_timeout,
//! max_connections, max_concurrent_streams) over real TLS sockets. Each test
//! waits for the event (the gateway closing, the upstream being let go) with a
//! generous bound, and checks that the limit — not another — caused it.
mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const BOUND: Duration = Duration::from_secs(20);

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {BOUND:?}"))
}

/// Reads until the gateway closes the connection (EOF, or a reset); returns what arrived.
async fn until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut received = Vec::new();
    let _ = bounded(
        "the gateway closes the connection",
        stream.read_to_end(&mut received),
    )
    .await;
    received
}

fn at_least(elapsed: Duration, limit: &str, ms: u64) {
    assert!(
        elapsed >= Duration::from_millis(ms),
        "closed after {elapsed:?}, before {limit} ({ms} ms) was up: another limit closed it"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_after_the_handshake_is_closed_after_the_header_timeout() {
    // idle_timeout is the default minute: a close within BOUND is the header timeout's.
    let gw = gateway(echo_upstream().await)
        .server(r#"header_read_timeout = "500ms""#)
        .start()
        .await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut tls = gw.tls_connect(&[alpn]).await;
        let connected = Instant::now();
        until_closed(&mut tls).await;
        at_least(connected.elapsed(), "header_read_timeout", 500);
    }
}

#[tokio::test]
async fn a_partial_http2_preface_is_closed_after_the_header_timeout() {
    let gw = gateway(echo_upstream().await)
        .server(r#"header_read_timeout = "500ms""#)
        .start()
        .await;
    let mut tls = gw.tls_connect(&[b"h2"]).await;
    let connected = Instant::now();
    // 18 of the preface's 24 bytes.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\n").await.unwrap();
    until_closed(&mut tls).await;
    at_least(connected.elapsed(), "header_read_timeout", 500);
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // Longer than the header timeout: between requests the idle timeout applies.
    let gw = gateway(echo_upstream().await)
        .server("header_read_timeout = \"300ms\"\nidle_timeout = \"1500ms\"")
        .start()
        .await;
    let mut tls = gw.tls_connect(&[b"http/1.1"]).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let asked = Instant::now();
    let received = String::from_utf8_lossy(&until_closed(&mut tls).await).into_owned();
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(
        !received.to_ascii_lowercase().contains("connection: close"),
        "the answer itself ended keep-alive: {received}"
    );
    at_least(asked.elapsed(), "idle_timeout", 1500);
}

#[tokio::test]
async fn an_http2_connection_without_open_streams_is_closed_after_the_idle_timeout() {
    let gw = gateway(echo_upstream().await)
        .server("header_read_timeout = \"300ms\"\nidle_timeout = \"1500ms\"")
        .start()
        .await;
    let tls = gw.tls_connect(&[b"h2"]).await;
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let response = send
        .send_request(
            Request::get(gw.url("/healthz"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("healthz over h2");
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("body");
    let answered = Instant::now();
    let ended = bounded("the gateway closes the idle h2 connection", connection).await;
    assert!(
        matches!(ended, Ok(Ok(()))),
        "not a clean close (GOAWAY): {ended:?}"
    );
    at_least(answered.elapsed(), "idle_timeout", 1500);
}

#[tokio::test]
async fn a_kept_alive_connection_quiet_for_a_while_serves_its_next_requests() {
    // tick = 100 ms: after a few quiet ticks the connection is parked (hyper's
    // buffers let go); the next request must find it as it was.
    let gw = gateway(echo_upstream().await)
        .server("header_read_timeout = \"400ms\"\nidle_timeout = \"5s\"")
        .start()
        .await;
    let tls = gw.tls_connect(&[b"http/1.1"]).await;
    let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    let connection = tokio::spawn(connection);
    let cookie = gw.session_cookie();
    for round in 0..3 {
        let response = send
            .send_request(get(&gw, "/console", Some(&cookie)))
            .await
            .unwrap_or_else(|e| panic!("request {round} on the kept-alive connection: {e}"));
        assert_eq!(response.status(), 200);
        let echo: serde_json::Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(echoed(&echo, "x-forwarded-user"), [USER], "{echo}");
        // Quiet for several ticks, far below the idle timeout.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            !connection.is_finished(),
            "closed while quiet, before idle_timeout"
        );
    }
}

/// An HTTP/1.1 connection to the gateway on which /healthz has been answered,
/// retried until the gateway has room for it (connections of the test's sign-in
/// may still be closing when the test begins).
async fn served_connection(
    gw: &TestGateway,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    bounded("a connection the gateway serves", async {
        loop {
            let Ok(tls) = try_tls_connect(gw, b"http/1.1").await else {
                continue;
            };
            let Ok((mut send, connection)) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await
            else {
                continue;
            };
            tokio::spawn(connection);
            if let Ok(response) = send.send_request(get(gw, "/healthz", None)).await {
                if response.status() == 200 && response.into_body().collect().await.is_ok() {
                    return send;
                }
            }
        }
    })
    .await
}

async fn try_tls_connect(
    gw: &TestGateway,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(gw.tls_client_config(&[alpn])));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await
}

fn get(gw: &TestGateway, path: &str, cookie: Option<&str>) -> Request<Empty<Bytes>> {
    let mut request = Request::get(path).header("host", format!("localhost:{}", gw.addr.port()));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.body(Empty::new()).unwrap()
}

#[tokio::test]
async fn at_the_connection_cap_a_new_client_is_turned_away_while_open_ones_are_served() {
    let gw = gateway(echo_upstream().await)
        .server("max_connections = 2")
        .start()
        .await;
    let mut first = served_connection(&gw).await;
    let second = served_connection(&gw).await;

    let turned_away = Instant::now();
    let refused = bounded(
        "the third connection's handshake",
        try_tls_connect(&gw, b"h2"),
    )
    .await;
    let Err(error) = refused else {
        panic!("a third connection was served beyond max_connections = 2");
    };
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "not closed by the gateway: {error}"
    );
    assert!(
        turned_away.elapsed() < gw.settings.config.server.tls_handshake_timeout,
        "turned away by a timeout, not at once"
    );

    // The open connections go on: a health probe and a signed-in request.
    let health = first
        .send_request(get(&gw, "/healthz", None))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    health.into_body().collect().await.unwrap();
    let cookie = gw.session_cookie();
    let page = first
        .send_request(get(&gw, "/console", Some(&cookie)))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let echo: serde_json::Value =
        serde_json::from_slice(&page.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echoed(&echo, "x-forwarded-user"), [USER], "{echo}");

    // A closed connection gives its place back.
    drop(second);
    served_connection(&gw).await;
}

/// An HTTP/2 client whose SETTINGS give every stream a receive window of 0 bytes.
async fn zero_window_h2_client(gw: &TestGateway) -> h2::client::SendRequest<Bytes> {
    let tls = gw.tls_connect(&[b"h2"]).await;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tls)
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    client
}

/// A response whose body never ends (16 KiB chunks); `guard` is dropped with it.
fn endless_response<G: Send + 'static>(guard: G) -> Response<oidc_gateway::Body> {
    let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
    let frames = futures_util::stream::unfold(guard, move |guard| {
        let chunk = chunk.clone();
        async move { Some((Ok::<_, oidc_gateway::BoxError>(Frame::data(chunk)), guard)) }
    });
    Response::new(StreamBody::new(frames).boxed_unsync())
}

/// An upstream whose `/endless` response never ends, and which reports on the
/// channel each time such a response is dropped (the gateway let go of it);
/// `/hang` never answers; anything else is a short 200.
async fn endless_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    struct Released(mpsc::UnboundedSender<()>);
    impl Drop for Released {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let (released, releases) = mpsc::unbounded_channel();
    let addr = upstream(move |request: Request<Incoming>| {
        let released = released.clone();
        async move {
            match request.uri().path() {
                "/endless" => endless_response(Released(released)),
                "/hang" => std::future::pending().await,
                _ => Response::new(full_body("ok")),
            }
        }
    })
    .await;
    (addr, releases)
}

#[tokio::test]
async fn a_zero_window_http2_client_cannot_hold_an_upstream_connection_past_the_send_timeout() {
    let (upstream, mut releases) = endless_upstream().await;
    let gw = gateway(upstream)
        .server(r#"send_timeout = "600ms""#)
        .start()
        .await;
    let mut client = zero_window_h2_client(&gw).await;
    let request = Request::get(gw.url("/endless"))
        .header("cookie", gw.session_cookie())
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).expect("request sent");
    let response = bounded("response headers (not flow-controlled)", response)
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let stalled = Instant::now();

    bounded("the upstream response let go", releases.recv()).await;
    at_least(stalled.elapsed(), "send_timeout", 600);
    // The client learns it: the stream is reset, not left hanging.
    let mut body = response.into_body();
    let end = bounded("the stream's end", body.data()).await;
    let reason = end.and_then(|r| r.err()).and_then(|e| e.reason());
    assert_eq!(reason, Some(h2::Reason::CANCEL), "{reason:?}");
}

/// An upstream whose `/endless` responses never end; counts how many it is
/// serving at once (each holds one HTTP/1.1 connection) and the most ever.
async fn counting_endless_upstream() -> (SocketAddr, Arc<(AtomicUsize, AtomicUsize)>) {
    struct Serving(Arc<(AtomicUsize, AtomicUsize)>);
    impl Drop for Serving {
        fn drop(&mut self) {
            self.0 .0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let counts: Arc<(AtomicUsize, AtomicUsize)> = Arc::default();
    let seen = counts.clone();
    let addr = upstream(move |_request: Request<Incoming>| {
        let counts = seen.clone();
        async move {
            let now = counts.0.fetch_add(1, Ordering::SeqCst) + 1;
            counts.1.fetch_max(now, Ordering::SeqCst);
            endless_response(Serving(counts))
        }
    })
    .await;
    (addr, counts)
}

#[tokio::test]
async fn a_zero_window_http2_client_cannot_hold_more_upstream_connections_than_the_cap() {
    let (upstream, counts) = counting_endless_upstream().await;
    // One worker (one pool); send_timeout long enough not to free anything here.
    let gw = gateway(upstream)
        .server("workers = 1")
        .server(r#"send_timeout = "60s""#)
        .upstream_option("max_connections = 2")
        .upstream_option(r#"connect_timeout = "300ms""#)
        .start()
        .await;
    let mut client = zero_window_h2_client(&gw).await;
    let mut pending = Vec::new();
    for _ in 0..5 {
        let request = Request::get(gw.url("/endless"))
            .header("cookie", gw.session_cookie())
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).expect("request sent");
        pending.push(response);
    }
    let mut statuses = Vec::new();
    let mut held = Vec::new(); // the stalled responses stay open
    for response in pending {
        let response = bounded("response headers", response)
            .await
            .expect("response");
        statuses.push(response.status().as_u16());
        held.push(response);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 503, 503, 503]);
    assert_eq!(
        counts.1.load(Ordering::SeqCst),
        2,
        "most upstream connections at once"
    );
    // Another client meanwhile: told why, and still no third upstream connection.
    let busy = gw.http1().get(gw.url("/page")).send().await.unwrap();
    assert_eq!(busy.status(), 503);
    let body: serde_json::Value = busy.json().await.unwrap();
    assert_eq!(body["error"], "upstream_busy", "{body}");
    assert_eq!(counts.1.load(Ordering::SeqCst), 2);
    drop(held);
}

#[tokio::test]
async fn an_http1_client_that_stops_reading_loses_the_connection_after_the_send_timeout() {
    let (upstream, mut releases) = endless_upstream().await;
    let gw = gateway(upstream)
        .server(r#"send_timeout = "600ms""#)
        .start()
        .await;
    let mut tls = gw.tls_connect(&[b"http/1.1"]).await;
    let request = format!(
        "GET /endless HTTP/1.1\r\nHost: localhost\r\nCookie: {}\r\n\r\n",
        gw.session_cookie()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let asked = Instant::now();
    // Never read: the socket buffers fill, then nothing gets through.
    bounded("the upstream response let go", releases.recv()).await;
    at_least(asked.elapsed(), "send_timeout", 600);
    // The connection is gone too: after what was buffered, EOF.
    let mut sink = vec![0u8; 1 << 20];
    bounded("the connection closed", async {
        while let Ok(n) = tls.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_response_waiting_for_its_upstream_is_not_cut_by_the_send_timeout() {
    let addr = upstream(|_request: Request<Incoming>| async {
        // Headers now, the body three send timeouts later.
        let frames = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            Ok::<_, oidc_gateway::BoxError>(Frame::data(Bytes::from_static(b"late but whole")))
        });
        Response::new(StreamBody::new(frames).boxed_unsync())
    })
    .await;
    let gw = gateway(addr)
        .server(r#"send_timeout = "400ms""#)
        .start()
        .await;
    for client in [gw.http1(), gw.http2()] {
        let response = client.get(gw.url("/slow")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "late but whole");
    }
}

/// A raw HTTP/2 frame: (type, flags, stream id, payload).
type RawFrame = (u8, u8, u32, Vec<u8>);

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> RawFrame {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.expect("frame header");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .await
        .expect("frame payload");
    (head[3], head[4], id, payload)
}

fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `GET <path>` as an HPACK block: indexed :method GET and :scheme https,
/// literal :path and :authority without indexing.
fn get_headers(path: &str, authority: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, authority.len() as u8]);
    block.extend_from_slice(authority.as_bytes());
    block
}

#[tokio::test]
async fn http2_max_concurrent_streams_is_advertised_and_enforced() {
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const END_STREAM_AND_HEADERS: u8 = 0x5;
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const REFUSED_STREAM: u32 = 0x7;

    let (upstream, _releases) = endless_upstream().await;
    let gw = gateway(upstream)
        .server("max_concurrent_streams = 2")
        .section("[[routes]]\npath = \"/hang\"\naction = \"public\"")
        .start()
        .await;
    let mut tls = gw.tls_connect(&[b"h2"]).await;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();

    let (kind, _, _, settings) = bounded("the gateway's SETTINGS", read_frame(&mut tls)).await;
    assert_eq!(kind, SETTINGS, "the gateway's first frame");
    let advertised = settings.chunks(6).find_map(|entry| {
        (u16::from_be_bytes([entry[0], entry[1]]) == MAX_CONCURRENT_STREAMS)
            .then(|| u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]))
    });
    assert_eq!(advertised, Some(2), "SETTINGS_MAX_CONCURRENT_STREAMS");
    tls.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();

    // Two requests the upstream never answers hold both streams; a client that
    // ignores the setting opens a third.
    let authority = format!("localhost:{}", gw.addr.port());
    for id in [1, 3, 5] {
        let block = get_headers("/hang", &authority);
        tls.write_all(&frame(HEADERS, END_STREAM_AND_HEADERS, id, &block))
            .await
            .unwrap();
    }
    let reset = bounded("a reset of the third stream", async {
        loop {
            let (kind, _, id, payload) = read_frame(&mut tls).await;
            if kind == RST_STREAM {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                return (id, code);
            }
        }
    })
    .await;
    assert_eq!(reset, (5, REFUSED_STREAM), "(stream, error code)");
}
