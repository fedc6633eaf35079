//! `oidc-gateway demo`: the whole flow on one machine without an Azure tenant.
//! The real gateway on https://localhost:8443, in front of a demo console page
//! that shows what the gateway sends upstream (identity and forwarding headers),
//! with the built-in development identity provider (`devidp`) standing in for
//! Microsoft. Loopback only, never for production.

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
use crate::crypto::{base64url, random_bytes};
use crate::devidp::{DevIdp, DevIdpOptions, SigningAlg};
use crate::pages::escape_html;
use crate::{full_body, Body};

/// The development IdP's options for the demo: ES256 (ring generates the keys),
/// a form where any user name signs in, two example groups.
pub fn demo_idp_options() -> DevIdpOptions {
    DevIdpOptions {
        client_id: "oidc-gateway-demo".into(),
        client_secret: base64url(&random_bytes::<24>()),
        alg: SigningAlg::Es256,
        // Entra often omits email; the demo sends it so that every identity header shows.
        email_claim: true,
        groups: vec![
            "6f1c1a52-0000-4000-8000-0000000000ad".into(),
            "9b2d3e41-0000-4000-8000-00000000005e".into(),
        ],
        ..DevIdpOptions::default()
    }
}

/// Configuration of the demo gateway: the upstream at `upstream_url`, the IdP `idp`.
pub fn demo_settings(
    upstream_url: &str,
    idp: &DevIdp,
    listen: &str,
) -> Result<Settings, ConfigError> {
    let options = idp.options();
    let port = listen.rsplit(':').next().unwrap_or("8443");
    let toml = format!(
        r#"
[server]
listen = "{listen}"
[tls]
cert = "certs/demo-gateway.crt"
key = "certs/demo-gateway.key"
self_signed = true
[oidc]
issuer = "{issuer}"
client_id = "{client_id}"
client_secret = "{client_secret}"
# The development IdP signs with ES256 (Entra uses RS256, the default).
allowed_algs = ["ES256"]
post_logout_redirect_uri = "https://localhost:{port}/"
# The development IdP's stand-in for Microsoft Graph: where the groups of a user in more than
# 200 groups (tick the box on its sign-in form) are read.
graph_url = "{graph_url}"
[upstream]
url = "{upstream_url}"
[log]
format = "text"
"#,
        issuer = idp.issuer(),
        graph_url = idp.graph_url(),
        client_id = options.client_id,
        client_secret = options.client_secret,
    );
    // OIDC_GATEWAY__SECTION__KEY overrides apply to the demo too (e.g. the benchmark
    // turns the login rate limit off to create many sessions through real logins).
    let env: Vec<(String, String)> = std::env::vars().collect();
    config::load_str(&toml, &env)
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
    if request.uri().path() == "/favicon.ico" {
        let mut response = Response::new(crate::empty_body());
        *response.status_mut() = http::StatusCode::NOT_FOUND;
        return response;
    }
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
<h1>Hello, {user}</h1><p>This page is the upstream. It received <code>{method} {uri}</code> with the headers below;
the highlighted ones were set by the gateway. <a href="/.gateway/me">/.gateway/me</a> &middot;
<a href="/.gateway/sign_out">Sign out</a></p>
<table>{rows}</table></body></html>"#,
        user = escape_html(
            request
                .headers()
                .get("x-forwarded-user")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(no identity)")
        ),
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
