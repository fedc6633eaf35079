//! The server side of a WebSocket for test upstreams: the handshake answer
//! and an echo loop (the gateway tunnels both without reading them).

use std::future::Future;

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use oidc_gateway::Body;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::empty_body;

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
