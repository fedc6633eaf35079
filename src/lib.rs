//! oidc-gateway: a TLS-terminating reverse proxy that puts Microsoft Entra ID
//! (OpenID Connect) sign-in in front of a web console.
//!
//! A request passes one pipeline (see `gateway`): health → gateway endpoints →
//! forward. Each step is a plain function returning a [`gateway::Decision`];
//! the proxy never knows about authentication and authentication never touches sockets.
#![forbid(unsafe_code)]

pub mod config;
pub mod demo;
pub mod gateway;
pub mod health;
pub mod healthcheck;
pub mod identity;
pub mod pages;
pub mod proxy;
pub mod server;
pub mod telemetry;
pub mod tls;

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
