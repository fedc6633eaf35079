//! WebSockets through the gateway: the client side over HTTP/1.1 Upgrade or
//! HTTP/2 extended CONNECT, and for test upstreams the server side (the
//! handshake answer and an echo loop).

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use oidc_gateway::Body;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::{empty_body, TestGateway};

/// The client side of a WebSocket over HTTP/1.1 (a TLS connection to the gateway).
pub type ClientOverHttp1 = WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
/// The client side of a WebSocket over an HTTP/2 stream.
pub type ClientOverH2 = WebSocketStream<TokioIo<Upgraded>>;

/// Bound for each step of a handshake that would otherwise hang when the gateway is broken.
const BOUND: Duration = Duration::from_secs(30);

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {BOUND:?}"))
}

/// A WebSocket to `path` over HTTP/1.1 Upgrade, with `cookie` when given (a
/// browser) or no credentials at all (a desktop client), plus `extra` headers;
/// the gateway answered 101.
pub async fn over_http1(
    gw: &TestGateway,
    path: &str,
    cookie: Option<&str>,
    extra: &[(&str, &str)],
) -> ClientOverHttp1 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("wss://localhost:{}{path}", gw.addr.port())
        .into_client_request()
        .expect("a WebSocket request");
    if let Some(cookie) = cookie {
        request
            .headers_mut()
            .insert("cookie", cookie.parse().expect("a cookie header"));
    }
    for (name, value) in extra {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            value.parse().expect("a header value"),
        );
    }
    let tls = gw.tls_connect(&[b"http/1.1"]).await;
    let (ws, response) = bounded(
        "websocket handshake",
        tokio_tungstenite::client_async(request, tls),
    )
    .await
    .unwrap_or_else(|e| panic!("handshake to {path} through the gateway: {e}"));
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// A WebSocket to `path` over HTTP/2 extended CONNECT (RFC 8441), with
/// `cookie` when given; the gateway answered 200.
pub async fn over_h2(gw: &TestGateway, path: &str, cookie: Option<&str>) -> ClientOverH2 {
    let mut sender = gw.h2_connection().await;
    let mut request = Request::builder()
        .method(http::Method::CONNECT)
        .uri(gw.url(path))
        .header("sec-websocket-version", "13");
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let mut request = request.body(empty_body()).expect("a CONNECT request");
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = bounded("extended CONNECT", sender.send_request(request))
        .await
        .expect("an answer to the extended CONNECT");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "extended CONNECT to {path}"
    );
    let upgraded = bounded("h2 upgrade", hyper::upgrade::on(&mut response))
        .await
        .expect("the stream is upgraded");
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await
}

/// The server side of an upgraded WebSocket connection.
pub type ServerSocket = WebSocketStream<TokioIo<Upgraded>>;

/// Answers the WebSocket handshake of `req` with 101 and, once the connection
/// is upgraded, runs `serve` on its server side. `None` when `req` carries no
/// `Sec-WebSocket-Key` (it is no handshake).
pub fn accept<F, Fut>(req: &mut Request<Incoming>, serve: F) -> Option<Response<Body>>
where
    F: FnOnce(ServerSocket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let key = req.headers().get("sec-websocket-key")?;
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        serve(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await)
            .await;
    });
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(empty_body())
        .expect("a 101 answer");
    Some(response)
}

/// Sends every message back until the peer closes or goes away.
pub async fn echo(mut ws: ServerSocket) {
    while let Some(Ok(message)) = ws.next().await {
        if message.is_close() || ws.send(message).await.is_err() {
            break;
        }
    }
}
