//! oidc-gateway: a TLS-terminating reverse proxy that puts Microsoft Entra ID
//! (OpenID Connect) sign-in in front of a web console.
//!
//! A request passes one pipeline (see `gateway`): health → gateway endpoints →
//! forward. Each step is a plain function returning a [`gateway::Decision`];
//! the proxy never knows about authentication and authentication never touches sockets.
#![forbid(unsafe_code)]

pub mod access;
pub mod acme;
pub mod assertion;
pub mod certificate;
pub mod cloud;
pub mod config;
pub mod connection;
pub mod crypto;
pub mod demo;
pub mod devidp;
pub mod errors;
pub mod gateway;
pub mod health;
pub mod healthcheck;
pub mod identity;
pub mod jwt_ring;
pub mod metrics;
pub mod oidc;
pub mod pages;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod routes;
pub mod server;
pub mod session;
pub mod streams;
pub mod telemetry;
pub mod tls;
pub mod upstream_pool;
pub mod watchdog;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Errors carried inside bodies and connections.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the gateway produces or forwards.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes a streaming body (hyper's `Incoming`, an upstream response) into [`Body`].
/// A named function rather than an inline `map_err(Into::into)`: the latter
/// trips higher-ranked lifetime inference inside async blocks.
pub fn boxed_body<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(into_box_error).boxed_unsync()
}

fn into_box_error<E: Into<BoxError>>(e: E) -> BoxError {
    e.into()
}
