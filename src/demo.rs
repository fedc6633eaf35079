//! `oidc-gateway demo`: the gateway in front of a built-in demo console page that
//! shows what the gateway sends upstream (identity and forwarding headers).
//! Loopback only, never for production.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::{self, ConfigError, Settings};
use crate::pages::escape_html;
use crate::{full_body, Body};

/// Configuration of the demo gateway around an upstream at `upstream`.
pub fn demo_settings(upstream: SocketAddr, listen: &str) -> Result<Settings, ConfigError> {
    let toml = format!(
        r#"
[server]
listen = "{listen}"
[tls]
cert = "certs/demo-gateway.crt"
key = "certs/demo-gateway.key"
self_signed = true
[oidc]
# The demo has no identity provider yet: login arrives with the sign-in feature.
issuer = "http://127.0.0.1/demo-idp/v2.0"
client_id = "oidc-gateway-demo"
client_secret = "demo-only-secret"
[upstream]
url = "http://{upstream}"
[log]
format = "text"
"#
    );
    config::load_str(&toml, &[])
}

/// Starts the demo console on 127.0.0.1:0; returns its address.
pub async fn start_demo_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    Ok::<_, Infallible>(demo_page(&request))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn demo_page(request: &Request<Incoming>) -> Response<Body> {
    let rows: String = request
        .headers()
        .iter()
        .map(|(name, value)| {
            let highlight =
                name.as_str().starts_with("x-forwarded") || name.as_str().starts_with("x-re");
            format!(
                "<tr{}><td>{}</td><td>{}</td></tr>",
                if highlight { " class=\"gw\"" } else { "" },
                escape_html(name.as_str()),
                escape_html(&String::from_utf8_lossy(value.as_bytes()))
            )
        })
        .collect();
    let page = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>oidc-gateway demo console</title>
<style>body{{font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;width:100%}}td{{border-bottom:1px solid #ddd;padding:.3rem;font-family:monospace;word-break:break-all}}
tr.gw{{background:#eef6ff}}.banner{{background:#fff3cd;padding:.5rem 1rem;border-radius:4px}}</style></head>
<body><p class="banner">Demo console behind oidc-gateway. Not for production.</p>
<h1>Request received by the upstream</h1><p><code>{method} {uri}</code></p>
<table>{rows}</table></body></html>"#,
        method = escape_html(request.method().as_str()),
        uri = escape_html(&request.uri().to_string()),
    );
    let mut response = Response::new(full_body(page));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}
