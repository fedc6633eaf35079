//! RustDesk's whole topology behind one port, over real TLS sockets: the
//! console, an hbbs stand-in and an hbbr stand-in (each says who it is), named
//! upstreams with their own caps, WebSocket-only upgrades and tunnels that end
//! when idle.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bound for anything that would otherwise hang when the behaviour is broken.
const BOUND: Duration = Duration::from_secs(30);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {BOUND:?}"))
}

/// A WebSocket server standing in for hbbs or hbbr: after the handshake it
/// sends one text message saying who it is and what it received (path,
/// X-Real-IP, X-Forwarded-For, Cookie), then echoes every message.
async fn websocket_server(name: &'static str) -> SocketAddr {
    upstream(move |mut req: Request<Incoming>| async move {
        if !req.headers().contains_key("sec-websocket-key") {
            let body = serde_json::json!({"server": name, "websocket": false}).to_string();
            return Response::new(full_body(body));
        }
        let header = |n: &str| {
            req.headers()
                .get(n)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let hello = serde_json::json!({
            "server": name,
            "path": req.uri().path(),
            "x-real-ip": header("x-real-ip"),
            "x-forwarded-for": header("x-forwarded-for"),
            "cookie": header("cookie"),
        })
        .to_string();
        websocket::accept(&mut req, |mut ws| async move {
            if ws.send(Message::text(hello)).await.is_ok() {
                websocket::echo(ws).await;
            }
        })
        .expect("a WebSocket handshake")
    })
    .await
}

struct Topology {
    gw: TestGateway,
}

/// The console (an echo upstream answering as JSON), hbbs and hbbr stand-ins,
/// and a gateway with `[rustdesk]` pointing at them; one worker, so the
/// per-worker caps are the gateway's.
async fn topology(configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder) -> Topology {
    let console = echo_upstream().await;
    let hbbs = websocket_server("hbbs").await;
    let hbbr = websocket_server("hbbr").await;
    let builder = gateway(console).server("workers = 1").section(&format!(
        "[rustdesk]\nenabled = true\nid_server = \"http://{hbbs}\"\nrelay_server = \"http://{hbbr}\""
    ));
    Topology {
        gw: configure(builder).start().await,
    }
}

type Ws<S> = WebSocketStream<S>;

/// The stand-in's first message: who it is and what it received.
async fn hello<S>(ws: &mut Ws<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let message = bounded("hello from the WebSocket server", ws.next())
        .await
        .expect("a message")
        .expect("a message, not an error");
    serde_json::from_str(message.to_text().expect("text")).expect("JSON")
}

async fn echo<S>(ws: &mut Ws<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.expect("send");
    let echoed = bounded("echo", ws.next())
        .await
        .expect("echo")
        .expect("echo");
    assert_eq!(echoed.to_text().expect("text"), text);
}

#[tokio::test]
async fn desktop_websockets_without_credentials_reach_hbbs_and_hbbr() {
    let t = topology(|b| b.anonymous()).await;
    for (path, server) in [("/ws/id", "hbbs"), ("/ws/relay", "hbbr")] {
        let mut ws = websocket::over_http1(&t.gw, path, None, &[]).await;
        let hello = hello(&mut ws).await;
        assert_eq!(hello["server"], server, "{path}: {hello}");
        assert_eq!(hello["path"], path, "the path is forwarded unchanged");
        echo(&mut ws, "rendezvous").await;
    }
}

#[tokio::test]
async fn web_client_websockets_reach_them_without_the_gateway_cookie_over_h1_and_h2() {
    let t = topology(|b| b).await;
    let cookie = format!("{}; theme=dark", t.gw.session_cookie());
    for (path, server) in [("/ws/id", "hbbs"), ("/ws/relay", "hbbr")] {
        let mut h1 = websocket::over_http1(&t.gw, path, Some(&cookie), &[]).await;
        let mut h2 = websocket::over_h2(&t.gw, path, Some(&cookie)).await;
        for (protocol, hello) in [("h1", hello(&mut h1).await), ("h2", hello(&mut h2).await)] {
            assert_eq!(hello["server"], server, "{protocol} {path}: {hello}");
            assert_eq!(hello["path"], path, "{protocol}");
            assert_eq!(
                hello["cookie"], "theme=dark",
                "{protocol} {path}: the gateway's cookie is removed, the console's own kept"
            );
        }
        echo(&mut h1, "over h1").await;
        echo(&mut h2, "over h2").await;
    }
}

#[tokio::test]
async fn the_client_api_reaches_the_console_and_console_pages_still_need_sign_in() {
    let t = topology(|b| b.anonymous()).await;
    let client = t.gw.fresh_browser();
    let heartbeat = send(client.post(t.gw.url("/api/heartbeat")).body("{}")).await;
    assert_eq!(heartbeat.status(), 200);
    let echo: serde_json::Value = heartbeat.json().await.unwrap();
    assert_eq!(
        echo["uri"], "/api/heartbeat",
        "the console's echo answered: {echo}"
    );

    let page = send(client.get(t.gw.url("/"))).await;
    assert_eq!(
        page.status(),
        401,
        "an anonymous API-style request to the console"
    );
    let body: serde_json::Value = page.json().await.unwrap();
    assert_eq!(body["error"], "unauthenticated");
    let navigation = send(navigate(client.get(t.gw.url("/web/")))).await;
    assert_eq!(navigation.status(), 302, "a browser is sent to sign in");
    // A plain GET of /ws/id without Upgrade is the hbbs stand-in's, not the console's.
    let plain = json_of(client.get(t.gw.url("/ws/id"))).await;
    assert_eq!(plain["server"], "hbbs");
}

#[tokio::test]
async fn hbbs_and_hbbr_see_the_gateways_view_of_the_client_never_a_spoof() {
    let t = topology(|b| b.anonymous()).await;
    let spoof = [("x-real-ip", "6.6.6.6"), ("x-forwarded-for", "6.6.6.6")];
    for path in ["/ws/id", "/ws/relay"] {
        let mut ws = websocket::over_http1(&t.gw, path, None, &spoof).await;
        let hello = hello(&mut ws).await;
        assert_eq!(hello["x-real-ip"], "127.0.0.1", "{path}: {hello}");
        assert_eq!(hello["x-forwarded-for"], "127.0.0.1", "{path}: {hello}");
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_hbbs_gets_only_the_client_address_the_gateway_decided_on() {
    let t = topology(|b| b.anonymous().server("trusted_proxies = [\"127.0.0.1/32\"]")).await;
    // The proxy appended the client it saw (203.0.113.9) to what the client claimed.
    let chain = [("x-forwarded-for", "198.51.100.7, 203.0.113.9")];
    let mut ws = websocket::over_http1(&t.gw, "/ws/relay", None, &chain).await;
    let hello = hello(&mut ws).await;
    assert_eq!(hello["x-real-ip"], "203.0.113.9", "{hello}");
    assert_eq!(
        hello["x-forwarded-for"], "203.0.113.9",
        "hbbr takes the first entry unchecked: only the decided address is sent"
    );
    // The console keeps the usual appended chain.
    let echo: serde_json::Value = json_of(
        t.gw.fresh_browser()
            .get(t.gw.url("/api/heartbeat"))
            .header("x-forwarded-for", "198.51.100.7, 203.0.113.9"),
    )
    .await;
    assert_eq!(
        echoed(&echo, "x-forwarded-for"),
        ["198.51.100.7, 203.0.113.9, 127.0.0.1"]
    );
}

/// A console that holds every `/hold` request until `release` is notified,
/// reporting each arrival on `arrived`; other paths answer at once.
async fn holding_console() -> (SocketAddr, mpsc::UnboundedReceiver<()>, Arc<Notify>) {
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let addr = upstream(move |req: Request<Incoming>| {
        let arrived_tx = arrived_tx.clone();
        let held = held.clone();
        async move {
            if req.uri().path() == "/hold" {
                let _ = arrived_tx.send(());
                held.notified().await;
            }
            Response::new(full_body(format!("console {}", req.uri().path())))
        }
    })
    .await;
    (addr, arrived, release)
}

/// A gateway (RustDesk mode, one worker) whose console may have one connection
/// (`max_connections = 1`, waiting at most `connect_timeout`), and that
/// connection busy with a signed-in `/hold` request until `release` is notified.
async fn one_connection_held(
    connect_timeout: &str,
) -> (TestGateway, Arc<Notify>, tokio::task::JoinHandle<String>) {
    let (console, mut arrived, release) = holding_console().await;
    let gw = gateway(console)
        .server("workers = 1")
        .upstream_option("max_connections = 1")
        .upstream_option(&format!("connect_timeout = \"{connect_timeout}\""))
        .section("[rustdesk]\nenabled = true")
        .start()
        .await;
    let holding = tokio::spawn({
        let request = gw.http1().get(gw.url("/hold"));
        async move { send(request).await.text().await.unwrap() }
    });
    bounded("the first request reaches the console", arrived.recv()).await;
    (gw, release, holding)
}

#[tokio::test]
async fn at_the_upstream_cap_requests_get_503_with_the_reason_and_json_424_on_client_paths() {
    let (gw, release, holding) = one_connection_held("300ms").await;
    let client = gw.http1();

    let busy = send(client.get(gw.url("/page"))).await;
    assert_eq!(busy.status(), 503);
    let body: serde_json::Value = busy.json().await.unwrap();
    assert_eq!(body["error"], "upstream_busy", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_connections"),
        "{body}"
    );
    let api = send(gw.fresh_browser().get(gw.url("/api/heartbeat"))).await;
    assert_eq!(api.status(), 424, "RustDesk clients retry around a 5xx");
    assert_eq!(
        api.headers()["content-type"],
        "application/json",
        "RustDesk clients break on HTML"
    );
    let body: serde_json::Value = api.json().await.unwrap();
    assert_eq!(body["error"], "upstream_busy", "{body}");

    release.notify_one();
    assert_eq!(
        bounded("the held request", holding).await.unwrap(),
        "console /hold"
    );
    let after = send(client.get(gw.url("/page"))).await;
    assert_eq!(after.status(), 200, "the connection is free again");
    assert_eq!(after.text().await.unwrap(), "console /page");
}

#[tokio::test]
async fn a_request_waiting_for_the_cap_gets_the_connection_handed_back() {
    let (gw, release, first) = one_connection_held("20s").await;
    let client = gw.http1();
    let second = tokio::spawn({
        let request = client.get(gw.url("/next"));
        async move {
            let response = send(request).await;
            (response.status(), response.text().await.unwrap())
        }
    });
    release.notify_one();
    assert_eq!(bounded("first", first).await.unwrap(), "console /hold");
    let (status, text) = bounded("second, on the handed-back connection", second)
        .await
        .unwrap();
    assert_eq!((status.as_u16(), text.as_str()), (200, "console /next"));
}

#[tokio::test]
async fn an_open_tunnel_keeps_its_upstream_connection_under_the_cap() {
    let t = topology(|b| {
        b.anonymous()
            .upstream_option("max_connections = 1")
            .upstream_option("connect_timeout = \"2s\"")
    })
    .await;
    let mut first = websocket::over_http1(&t.gw, "/ws/relay", None, &[]).await;
    assert_eq!(hello(&mut first).await["server"], "hbbr");

    // The relay's only connection is the open tunnel: a second one is refused (JSON, 4xx).
    let refused = send(t.gw.fresh_http1().get(t.gw.url("/ws/relay"))).await;
    assert_eq!(refused.status(), 424);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "upstream_busy", "{body}");

    first.close(None).await.unwrap();
    while let Some(Ok(_)) = bounded("tunnel end", first.next()).await {}
    drop(first);
    // The slot is freed when the tunnel ends; a request waiting for it (up to
    // connect_timeout) then gets it.
    let second: serde_json::Value = send(t.gw.fresh_http1().get(t.gw.url("/ws/relay")))
        .await
        .json()
        .await
        .expect("the relay is reachable again after the tunnel closed");
    assert_eq!(second["server"], "hbbr");
}

#[tokio::test]
async fn h2c_and_other_upgrades_are_refused_before_the_upstream() {
    let (console, requests) = counting_upstream("console").await;
    let gw = gateway(console).start().await;
    for upgrade in ["h2c", "websocket, h2c", "TLS/1.2"] {
        let mut tls = gw.tls_connect(&[b"http/1.1"]).await;
        let request = format!(
            "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\
             Cookie: {}\r\nAccept: application/json\r\n\r\n",
            gw.session_cookie()
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the head and the (small) body: the answer ends with the JSON's `}`.
        while !answer.ends_with(b"}") {
            let n = bounded("the refusal", tls.read(&mut buf)).await.unwrap();
            assert!(
                n > 0,
                "connection closed early: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{upgrade}: {answer}");
        assert!(
            answer.contains("\"upgrade_not_supported\""),
            "{upgrade}: {answer}"
        );
        assert!(
            answer.contains("Only WebSocket upgrades are tunnelled"),
            "{upgrade}: {answer}"
        );
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        0,
        "a refused upgrade reached the console"
    );
    // The same signed-in browser without an upgrade is forwarded.
    let ok = send(gw.http1().get(gw.url("/"))).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_http2_extended_connect_for_another_protocol_is_refused_with_the_reason() {
    use http_body_util::BodyExt;
    let (console, requests) = counting_upstream("console").await;
    let gw = gateway(console).start().await;
    let mut sender = gw.h2_connection().await;
    for protocol in ["webtransport", "connect-udp", "WebSocket2"] {
        let mut request = Request::builder()
            .method(http::Method::CONNECT)
            .uri(gw.url("/ws/relay"))
            .header("cookie", gw.cookie_header())
            .header("accept", "application/json")
            .body(empty_body())
            .unwrap();
        request
            .extensions_mut()
            .insert(hyper::ext::Protocol::from(protocol));
        let response = bounded("extended CONNECT", sender.send_request(request))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{protocol}");
        let body = bounded("the refusal", response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "upgrade_not_supported", "{protocol}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("Only WebSocket upgrades are tunnelled") && message.contains(protocol),
            "{protocol}: {message}"
        );
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        0,
        "a refused tunnel reached the console"
    );
}

#[tokio::test]
async fn a_silent_tunnel_ends_after_the_tunnel_idle_timeout_while_a_busy_one_stays() {
    const IDLE: Duration = Duration::from_millis(600);
    let t = topology(|b| {
        b.anonymous()
            .upstream_option("tunnel_idle_timeout = \"600ms\"")
    })
    .await;
    let mut ws = websocket::over_http1(&t.gw, "/ws/relay", None, &[]).await;
    assert_eq!(hello(&mut ws).await["server"], "hbbr");

    // Traffic every 200 ms for three idle timeouts: the tunnel stays.
    let mut pace = tokio::time::interval(Duration::from_millis(200));
    let busy_until = Instant::now() + 3 * IDLE;
    let mut round = 0;
    while Instant::now() < busy_until {
        pace.tick().await;
        round += 1;
        echo(&mut ws, &format!("frame {round}")).await;
    }

    // Then silence: the gateway ends the tunnel, no sooner than the timeout.
    let silent_since = Instant::now();
    match bounded("the idle tunnel to end", ws.next()).await {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {}
        Some(Ok(other)) => panic!("unexpected message on a silent tunnel: {other:?}"),
    }
    assert!(
        silent_since.elapsed() >= IDLE - Duration::from_millis(50),
        "ended after {:?}, before the idle timeout",
        silent_since.elapsed()
    );
}

/// examples/rustdesk: the compose file parses (a real YAML parser: python3-yaml,
/// installed by .ci/run) and publishes exactly the gateway's HTTPS port and
/// RustDesk's own client ports; the gateway config passes the gateway's own
/// validation once the operator's three values are filled in.
#[test]
fn the_rustdesk_example_parses_publishes_only_the_right_ports_and_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rustdesk");
    let compose = std::fs::read_to_string(dir.join("compose.yaml")).expect("compose.yaml");
    let script = r#"
import sys, yaml
doc = yaml.safe_load(sys.stdin)
services = doc["services"]
assert set(services) == {"hbbs", "hbbr", "gateway"}, list(services)
for name in ("hbbs", "hbbr"):
    assert services[name]["image"].split("/")[-1].startswith("rustdesk-server-pro:"), services[name]["image"]
    assert services[name]["command"] == name, services[name]["command"]
published = set()
for name, service in services.items():
    assert "network_mode" not in service, f"{name}: network_mode would bypass the port list"
    for port in service.get("ports", []):
        host, _, container = str(port).rpartition(":")
        published.add((name, host, container))
expected = {
    ("gateway", "443", "8443"),
    ("hbbs", "21115", "21115/tcp"), ("hbbs", "21116", "21116/tcp"), ("hbbs", "21116", "21116/udp"),
    ("hbbr", "21117", "21117/tcp"),
}
assert published == expected, sorted(published)
gateway = services["gateway"]
assert "./config.toml:/etc/oidc-gateway/config.toml:ro" in gateway["volumes"], gateway["volumes"]
env = gateway["environment"]
assert env["OIDC_GATEWAY__OIDC__CLIENT_SECRET_FILE"] == "/run/secrets/oidc_client_secret", env
assert env["OIDC_GATEWAY__SESSION__SECRET_FILE"] == "/run/secrets/session_secret", env
assert set(gateway["secrets"]) <= set(doc["secrets"]), gateway["secrets"]
print("ok")
"#;
    yaml::check_with_python("compose.yaml", &compose, script);
    for never in ["21114:", "21118:", "21119:", "network_mode: host"] {
        assert!(
            !compose
                .lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains(never)),
            "compose.yaml publishes {never}"
        );
    }

    // The config, with the operator's values and secrets filled in, is valid
    // and routes /ws/id and /ws/relay to hbbs and hbbr.
    let text = std::fs::read_to_string(dir.join("config.toml")).expect("config.toml");
    let secrets = tempfile::tempdir().expect("tempdir");
    let client_secret = secrets.path().join("oidc_client_secret");
    let session_secret = secrets.path().join("session_secret");
    std::fs::write(&client_secret, "azure-secret-value").unwrap();
    std::fs::write(
        &session_secret,
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    )
    .unwrap();
    let filled = text
        .replace("<rustdesk.example.com>", "rustdesk.contoso.example")
        .replace("<tenant-id>", "11111111-2222-3333-4444-555555555555")
        .replace(
            "<application-client-id>",
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        );
    let env = [
        (
            "OIDC_GATEWAY__OIDC__CLIENT_SECRET_FILE".to_string(),
            client_secret.display().to_string(),
        ),
        (
            "OIDC_GATEWAY__SESSION__SECRET_FILE".to_string(),
            session_secret.display().to_string(),
        ),
    ];
    let settings = oidc_gateway::config::load_str(&filled, &env)
        .unwrap_or_else(|e| panic!("examples/rustdesk/config.toml does not validate: {e}"));
    let names: Vec<(&str, String)> = settings
        .upstreams
        .iter()
        .map(|u| (u.name.as_str(), u.url.to_string()))
        .collect();
    assert_eq!(
        names,
        [
            ("default", "http://hbbs:21114/".to_string()),
            ("rustdesk_id", "http://hbbs:21118/".to_string()),
            ("rustdesk_relay", "http://hbbr:21119/".to_string()),
        ]
    );
    assert!(oidc_gateway::config::rustdesk_warnings(&settings).is_empty());
    // As shipped (placeholders), it refuses to run rather than guess.
    let shipped = oidc_gateway::config::load_str(&text, &env);
    assert!(shipped.is_err(), "the placeholders must not validate");
}

/// The payload of a JWT (no signature check: only which audience it names).
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// An upstream answering with its name, the path and the assertion it received.
async fn named_upstream(name: &'static str) -> SocketAddr {
    upstream(move |req: Request<Incoming>| async move {
        let assertion = req
            .headers()
            .get("x-gateway-assertion")
            .map(|v| v.to_str().unwrap_or_default().to_string());
        let body = serde_json::json!({"server": name, "uri": req.uri().to_string(), "assertion": assertion});
        Response::new(full_body(body.to_string()))
    })
    .await
}

#[tokio::test]
async fn a_route_reaches_its_named_upstream_with_an_assertion_for_that_upstream() {
    let console = named_upstream("console").await;
    let grafana = named_upstream("grafana").await;
    let gw = gateway(console)
        .section(&format!(
            "[upstreams.grafana]\nurl = \"http://{grafana}\"\n\
             [[routes]]\npath = \"/grafana/**\"\nupstream = \"grafana\""
        ))
        .start()
        .await;
    let client = gw.http2();
    for (path, name, addr) in [
        ("/page", "console", console),
        ("/grafana/d/home", "grafana", grafana),
    ] {
        let answer = json_of(client.get(gw.url(path))).await;
        assert_eq!(answer["server"], name, "{path}: {answer}");
        assert_eq!(
            answer["uri"], path,
            "{path}: the path is forwarded unchanged"
        );
        let claims = jwt_claims(answer["assertion"].as_str().expect("an assertion"));
        assert_eq!(
            claims["aud"],
            format!("http://{addr}"),
            "{path}: the assertion names the upstream it is sent to"
        );
        assert_eq!(claims["preferred_username"], USER);
    }
    // The named upstream's route still needs sign-in.
    let anonymous = send(gw.fresh_browser().get(gw.url("/grafana/d/home"))).await;
    assert_eq!(anonymous.status(), 401);
}
