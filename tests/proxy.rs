//! The gateway as a reverse proxy, over real TLS sockets: protocols, header
//! policy, streaming, upgrades, upstream failures, health and shutdown.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_tungstenite::tungstenite::Message;

/// Bound for anything that would otherwise hang when the behaviour is broken.
const BOUND: Duration = Duration::from_secs(30);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {BOUND:?}"))
}

#[tokio::test]
async fn get_is_proxied_over_http1_and_http2_negotiated_by_alpn() {
    let gw = gateway(echo_upstream().await).start().await;
    for (client, expected) in [
        (gw.http1(), reqwest::Version::HTTP_11),
        (gw.http2(), reqwest::Version::HTTP_2),
    ] {
        let response = send(client.get(gw.url("/console/page?x=1&y=%20"))).await;
        assert_eq!(response.version(), expected);
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("x-request-id"));
        let echo: serde_json::Value = response.json().await.unwrap();
        assert_eq!(echo["method"], "GET");
        assert_eq!(echo["uri"], "/console/page?x=1&y=%20");
        // The upstream hop is always HTTP/1.1, whatever the client spoke.
        assert_eq!(echo["version"], "HTTP/1.1");
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_in_both_directions() {
    let upstream = upstream(|req: Request<Incoming>| async move {
        let leaked: Vec<String> = [
            "x-client-hop",
            "keep-alive",
            "te",
            "proxy-authorization",
            "upgrade",
        ]
        .iter()
        .filter(|h| req.headers().contains_key(**h))
        .map(|h| h.to_string())
        .collect();
        Response::builder()
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-end-to-end", "kept")
            .body(full_body(leaked.join(",")))
            .unwrap()
    })
    .await;
    let gw = gateway(upstream).start().await;
    let response = send(
        gw.http1()
            .get(gw.url("/"))
            .header("connection", "keep-alive, x-client-hop")
            .header("x-client-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("upgrade", "h2c"),
    )
    .await;
    assert!(!response.headers().contains_key("x-upstream-hop"));
    assert!(!response.headers().contains_key("keep-alive"));
    assert_eq!(response.headers()["x-end-to-end"], "kept");
    assert_eq!(
        response.text().await.unwrap(),
        "",
        "hop-by-hop headers reached the upstream"
    );
}

#[tokio::test]
async fn forwarded_headers_are_replaced_for_untrusted_clients() {
    let gw = gateway(echo_upstream().await).start().await;
    let echo = json_of(
        gw.http1()
            .get(gw.url("/"))
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "for=6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .header("x-request-id", "attacker-chosen"),
    )
    .await;
    assert_eq!(echoed(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed(&echo, "x-forwarded-proto"), ["https"]);
    assert_eq!(
        echoed(&echo, "x-forwarded-host"),
        [format!("localhost:{}", gw.addr.port())]
    );
    assert_eq!(echoed(&echo, "x-real-ip"), ["127.0.0.1"]);
    assert!(echoed(&echo, "forwarded").is_empty());
    let request_id = echoed(&echo, "x-request-id");
    assert_eq!(request_id.len(), 1);
    assert_ne!(request_id[0], "attacker-chosen");
}

#[tokio::test]
async fn forwarded_headers_are_appended_for_trusted_proxies() {
    let gw = gateway(echo_upstream().await)
        .server(r#"trusted_proxies = ["127.0.0.0/8"]"#)
        .start()
        .await;
    let response = send(
        gw.http1()
            .get(gw.url("/"))
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "console.example.com")
            .header("x-request-id", "lb-1234"),
    )
    .await;
    assert_eq!(response.headers()["x-request-id"], "lb-1234");
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echoed(&echo, "x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(echoed(&echo, "x-forwarded-host"), ["console.example.com"]);
    assert_eq!(echoed(&echo, "x-real-ip"), ["203.0.113.9"]);
    assert_eq!(echoed(&echo, "x-request-id"), ["lb-1234"]);
}

#[tokio::test]
async fn spoofed_identity_headers_are_replaced_by_the_session_identity() {
    let gw = gateway(echo_upstream().await).start().await;
    for client in [gw.http1(), gw.http2()] {
        let echo = json_of(
            client
                .get(gw.url("/"))
                .header("X-Forwarded-User", "admin")
                .header("x_forwarded_user", "admin")
                .header("X-FORWARDED-EMAIL", "admin@corp.example")
                .header("X-Forwarded_Groups", "admins")
                .header("x-forwarded-preferred-username", "admin")
                .header("X-Gateway-Assertion", "forged"),
        )
        .await;
        let headers = echo["headers"].as_object().unwrap();
        for name in headers.keys() {
            assert!(
                !name.contains('_'),
                "underscore variant {name} reached the upstream: {echo}"
            );
        }
        assert_eq!(echoed(&echo, "x-forwarded-user"), [USER], "{echo}");
        assert_eq!(echoed(&echo, "x-forwarded-preferred-username"), [USER]);
        assert_eq!(
            echoed(&echo, "x-forwarded-groups"),
            ["0b5e7a3c-admins,5f1d2e4b-users"]
        );
        // The IdP sends no email claim (as Entra often does): the header is absent, not spoofed.
        assert!(echoed(&echo, "x-forwarded-email").is_empty(), "{echo}");
        // The forged assertion is replaced by the gateway's own signed one.
        let assertion = echoed(&echo, "x-gateway-assertion");
        assert_eq!(assertion.len(), 1, "{echo}");
        assert_ne!(assertion[0], "forged");
        assert_eq!(
            assertion[0].split('.').count(),
            3,
            "a JWT: {}",
            assertion[0]
        );
    }
}

#[tokio::test]
async fn spoofed_identity_headers_are_stripped_even_on_anonymous_paths() {
    // Health is answered by the gateway; the only anonymous thing that reaches the
    // upstream later is a public route. Here: the 401 for an anonymous API call
    // must not be influenced by a spoofed user header.
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    let response = send(
        gw.fresh_browser()
            .get(gw.url("/api/data"))
            .header("X-Forwarded-User", "admin")
            .header("accept", "application/json"),
    )
    .await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn host_is_preserved_by_default_and_rewritten_on_request() {
    let upstream = echo_upstream().await;
    let preserved = gateway(upstream).start().await;
    let echo = json_of(preserved.http2().get(preserved.url("/"))).await;
    assert_eq!(
        echoed(&echo, "host"),
        [format!("localhost:{}", preserved.addr.port())]
    );

    let rewritten = gateway(upstream)
        .upstream_option("preserve_host = false")
        .start()
        .await;
    let echo = json_of(rewritten.http1().get(rewritten.url("/"))).await;
    assert_eq!(echoed(&echo, "host"), [upstream.to_string()]);
}

#[tokio::test]
async fn multiple_set_cookie_headers_and_h2_cookies_survive() {
    let upstream = upstream(|req: Request<Incoming>| async move {
        let cookie = req
            .headers()
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>();
        Response::builder()
            .header("set-cookie", "a=1; Path=/")
            .header("set-cookie", "b=2; Path=/; HttpOnly")
            .header("set-cookie", "c=3; Path=/; Secure")
            .body(full_body(serde_json::to_string(&cookie).unwrap()))
            .unwrap()
    })
    .await;
    let gw = gateway(upstream).start().await;
    for client in [gw.http1(), gw.http2()] {
        // The browser's own cookies plus the gateway's session cookie.
        let response = send(
            client
                .get(gw.url("/"))
                .header("cookie", format!("x=1; {}; y=2", gw.session_cookie())),
        )
        .await;
        let set: Vec<_> = response.headers().get_all("set-cookie").iter().collect();
        assert_eq!(set.len(), 3, "{set:?}");
        let cookies: Vec<String> = response.json().await.unwrap();
        assert_eq!(
            cookies,
            ["x=1; y=2"],
            "upstream gets one Cookie header, without the gateway's cookies"
        );
    }
}

/// The upstream sends one chunk, then waits until the client has received it
/// before sending the rest: a gateway that buffers the whole body deadlocks here.
#[tokio::test]
async fn download_streams_before_the_upstream_has_finished() {
    const CHUNK: usize = 64 * 1024;
    const REST_CHUNKS: usize = 512; // 32 MiB after the first chunk
    let (first_seen_tx, first_seen_rx) = oneshot::channel::<()>();
    let first_seen_rx = Arc::new(Mutex::new(Some(first_seen_rx)));
    let upstream = upstream(move |_req: Request<Incoming>| {
        let first_seen_rx = first_seen_rx.clone();
        async move {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, oidc_gateway::BoxError>>(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from(vec![b'a'; CHUNK]))))
                    .await;
                if let Some(gate) = first_seen_rx.lock().await.take() {
                    let _ = gate.await;
                }
                let chunk = Bytes::from(vec![b'b'; CHUNK]);
                for _ in 0..REST_CHUNKS {
                    if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                        return;
                    }
                }
            });
            let body = StreamBody::new(tokio_stream_from(rx));
            Response::new(http_body_util::BodyExt::boxed_unsync(body))
        }
    })
    .await;
    let gw = gateway(upstream).start().await;
    let mut response = send(gw.http1().get(gw.url("/big"))).await;
    let mut received = 0usize;
    let mut gate = Some(first_seen_tx);
    bounded("streamed download", async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            received += chunk.len();
            if received >= CHUNK {
                if let Some(gate) = gate.take() {
                    gate.send(()).unwrap();
                }
            }
        }
    })
    .await;
    assert_eq!(received, CHUNK * (REST_CHUNKS + 1));
}

/// The client sends one chunk and waits until the upstream has received it
/// before sending the rest: a gateway that buffers the upload deadlocks here.
#[tokio::test]
async fn upload_streams_before_the_client_has_finished() {
    const CHUNK: usize = 64 * 1024;
    const REST_CHUNKS: usize = 512;
    let (first_seen_tx, first_seen_rx) = oneshot::channel::<()>();
    let first_seen_tx = Arc::new(Mutex::new(Some(first_seen_tx)));
    let upstream = upstream(move |req: Request<Incoming>| {
        let first_seen_tx = first_seen_tx.clone();
        async move {
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    total += data.len();
                    if total >= CHUNK {
                        if let Some(tx) = first_seen_tx.lock().await.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            }
            Response::new(full_body(total.to_string()))
        }
    })
    .await;
    let gw = gateway(upstream).start().await;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        tx.send(Ok(Bytes::from(vec![b'a'; CHUNK]))).await.unwrap();
        let _ = first_seen_rx.await;
        let chunk = Bytes::from(vec![b'b'; CHUNK]);
        for _ in 0..REST_CHUNKS {
            tx.send(Ok(chunk.clone())).await.unwrap();
        }
    });
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let response = bounded(
        "streamed upload",
        gw.http2().post(gw.url("/upload")).body(body).send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let total: usize = response.text().await.unwrap().parse().unwrap();
    assert_eq!(total, CHUNK * (REST_CHUNKS + 1));
}

fn tokio_stream_from<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// An upstream that accepts WebSocket upgrades and echoes every message.
async fn websocket_echo_upstream() -> std::net::SocketAddr {
    upstream(|mut req: Request<Incoming>| async move {
        websocket::accept(&mut req, websocket::echo)
            .unwrap_or_else(|| Response::builder().status(400).body(empty_body()).unwrap())
    })
    .await
}

#[tokio::test]
async fn websocket_over_http1_upgrade_is_tunneled() {
    let gw = gateway(websocket_echo_upstream().await).start().await;
    let mut ws = websocket::over_http1(&gw, "/ws/id", Some(&gw.cookie_header()), &[]).await;
    for text in ["hello", "through", "the gateway"] {
        ws.send(Message::text(text)).await.unwrap();
        let echo = bounded("echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let echo = bounded("binary echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echo.into_data().as_ref(), &[0u8, 1, 2, 255]);
}

#[tokio::test]
async fn websocket_over_http2_extended_connect_is_tunneled() {
    let gw = gateway(websocket_echo_upstream().await).start().await;
    let mut ws = websocket::over_h2(&gw, "/ws/relay", Some(&gw.cookie_header())).await;
    ws.send(Message::text("over h2")).await.unwrap();
    let echo = bounded("h2 echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "over h2");
}

#[tokio::test]
async fn upstream_down_gives_502_html_for_browsers_and_json_for_apis() {
    let gw = gateway(closed_port().await).start().await;
    let browser = send(
        gw.http1()
            .get(gw.url("/"))
            .header("accept", "text/html,application/xhtml+xml"),
    )
    .await;
    assert_eq!(browser.status(), 502);
    assert!(browser.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = browser.text().await.unwrap();
    assert!(page.contains("not reachable"), "{page}");

    let api = send(
        gw.http2()
            .get(gw.url("/api/heartbeat"))
            .header("accept", "application/json"),
    )
    .await;
    assert_eq!(api.status(), 502);
    let json: serde_json::Value = api.json().await.unwrap();
    assert_eq!(json["error"], "upstream_unavailable");
    assert!(json["request_id"].as_str().is_some_and(|id| !id.is_empty()));
}

#[tokio::test]
async fn slow_upstream_gives_504_after_the_response_timeout() {
    // Accepts connections and reads, but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let gw = gateway(addr)
        .upstream_option(r#"response_timeout = "300ms""#)
        .start()
        .await;
    let response = bounded("504", gw.http1().get(gw.url("/slow")).send())
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "upstream_timeout");
}

#[tokio::test]
async fn https_upstream_with_a_private_ca_is_verified() {
    // An upstream with its own certificate, trusted through upstream.ca_file.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_path, cert.cert.pem()).unwrap();
    let mut server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
        )
        .unwrap();
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(full_body("over tls")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let url = format!("https://localhost:{}", addr.port());
    let trusted = gateway(addr)
        .upstream_url(&url)
        .upstream_option(&format!("ca_file = \"{}\"", ca_path.display()))
        .start()
        .await;
    let response = send(trusted.http1().get(trusted.url("/"))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "over tls");

    // Without the CA the upstream's certificate is rejected: 502, never plaintext fallback.
    let untrusted = gateway(addr).upstream_url(&url).start().await;
    let response = send(untrusted.http1().get(untrusted.url("/"))).await;
    assert_eq!(response.status(), 502);
}

#[tokio::test]
async fn health_paths_are_answered_by_the_gateway_and_never_forwarded() {
    let (upstream, hits) = counting_upstream("upstream").await;
    let gw = gateway(upstream).start().await;
    let client = gw.http1();
    let live = send(client.get(gw.url("/healthz"))).await;
    assert_eq!(live.status(), 200);
    assert_eq!(
        live.json::<serde_json::Value>().await.unwrap()["status"],
        "ok"
    );
    let ready = send(client.head(gw.url("/readyz"))).await;
    assert_eq!(ready.status(), 200);
    let post = send(client.post(gw.url("/healthz"))).await;
    assert_eq!(post.status(), 405);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a health request reached the upstream"
    );

    // Exact paths only: look-alikes belong to the console.
    for path in ["/healthz/", "/healthz.json", "/api/readyz"] {
        let response = send(client.get(gw.url(path))).await;
        assert_eq!(response.text().await.unwrap(), "upstream", "{path}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    gw.server
        .readiness
        .set_not_ready("test", "a component is not ready");
    let not_ready = send(client.get(gw.url("/readyz"))).await;
    assert_eq!(not_ready.status(), 503);
    let body: serde_json::Value = not_ready.json().await.unwrap();
    assert_eq!(body["reasons"][0], "test: a component is not ready");
    assert_eq!(status_of(client.get(gw.url("/healthz"))).await, 200);
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_request_and_stops_accepting() {
    let (arrived_tx, mut arrived_rx) = mpsc::channel::<()>(1);
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let upstream = upstream(move |_req: Request<Incoming>| {
        let arrived_tx = arrived_tx.clone();
        let release_rx = release_rx.clone();
        async move {
            let _ = arrived_tx.send(()).await;
            if let Some(release) = release_rx.lock().await.take() {
                let _ = release.await;
            }
            Response::new(full_body("finished"))
        }
    })
    .await;
    let gw = gateway(upstream).start().await;
    let client = gw.http1();
    let in_flight = tokio::spawn(client.get(gw.url("/slow-report")).send());
    bounded("request reaches upstream", arrived_rx.recv())
        .await
        .unwrap();

    let TestGateway { server, addr, .. } = gw;
    let readiness = server.readiness.clone();
    server.begin_shutdown();
    let drained = tokio::spawn(server.wait());
    // Draining: not ready, and the listener is closed.
    bounded("listener closes", async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        readiness.reasons().iter().any(|r| r.contains("draining")),
        "{:?}",
        readiness.reasons()
    );
    assert!(
        !drained.is_finished(),
        "shutdown finished while a request was in flight"
    );

    release_tx.send(()).unwrap();
    let response = bounded("in-flight request", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "finished");
    bounded("shutdown completes", drained).await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_open_websockets_finish_then_closes_them_at_the_grace_period() {
    let gw = gateway(websocket_echo_upstream().await)
        .server(r#"shutdown_grace = "1s""#)
        .start()
        .await;
    let mut ws = websocket::over_http1(&gw, "/ws/id", Some(&gw.cookie_header()), &[]).await;
    let TestGateway { server, .. } = gw;
    server.begin_shutdown();
    let drained = tokio::spawn(server.wait());
    // The tunnel still works while draining…
    ws.send(Message::text("still here")).await.unwrap();
    let echo = bounded("echo while draining", ws.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "still here");
    // …and is closed when the grace period ends, which lets shutdown complete.
    bounded("shutdown completes", drained).await.unwrap();
    let after = bounded("tunnel closed", ws.next()).await;
    assert!(!matches!(after, Some(Ok(Message::Text(_)))), "{after:?}");
}

#[tokio::test]
async fn slowloris_connections_are_closed_after_the_header_timeout() {
    let gw = gateway(echo_upstream().await)
        .server(r#"header_read_timeout = "300ms""#)
        .start()
        .await;
    let mut tls = gw.tls_connect(&[b"http/1.1"]).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The server must give up on us: EOF (or an error answer then EOF).
    // Completing at all is the point: the server closed the connection on us
    // (EOF, or a reset surfacing as an error).
    let _ = bounded(
        "server closes the slow connection",
        tls.read_to_end(&mut buf),
    )
    .await;
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("200 OK"), "{text}");
}

#[tokio::test]
async fn oversized_headers_are_refused_with_431() {
    let gw = gateway(echo_upstream().await).start().await;
    let huge = "x".repeat(100 * 1024);
    let response = gw
        .http1()
        .get(gw.url("/"))
        .header("x-huge", huge)
        .send()
        .await;
    match response {
        Ok(r) => assert_eq!(r.status(), 431),
        // hyper may close the connection while the client is still writing.
        Err(e) => assert!(e.is_request() || e.is_body() || e.is_connect(), "{e}"),
    }
    // The gateway is unaffected.
    assert_eq!(status_of(gw.http1().get(gw.url("/healthz"))).await, 200);
}

#[tokio::test]
async fn plain_http_or_garbage_on_the_tls_port_costs_only_that_connection() {
    let gw = gateway(echo_upstream().await).start().await;
    let mut plain = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    bounded("plain-http answer", plain.read_to_string(&mut answer))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("HTTPS"), "{answer}");

    let mut garbage = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = bounded("garbage connection closed", garbage.read_to_end(&mut sink)).await;

    let response = send(gw.http2().get(gw.url("/"))).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn plain_http_listener_redirects_with_308_and_answers_health() {
    let gw = gateway(echo_upstream().await)
        .server(r#"redirect_http = "127.0.0.1:0""#)
        .start()
        .await;
    let http_addr = gw.http_addr.expect("redirect listener");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let response = send(client.get(format!(
        "http://localhost:{}/console/x?a=1",
        http_addr.port()
    )))
    .await;
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        format!("https://localhost:{}/console/x?a=1", gw.addr.port()).as_str()
    );
    let health = send(client.get(format!("http://127.0.0.1:{}/healthz", http_addr.port()))).await;
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn several_workers_share_the_port_the_sessions_and_the_drain() {
    let gw = gateway(echo_upstream().await)
        .server("workers = 3")
        .start()
        .await;
    let cookie = gw.session_cookie();
    // Separate connections: the kernel spreads them over the workers' listeners;
    // each worker must know the session created through another.
    let mut answers = Vec::new();
    for _ in 0..24 {
        let client = gw.fresh_http1();
        answers.push(tokio::spawn(
            client
                .get(gw.url("/"))
                .header("cookie", cookie.clone())
                .send(),
        ));
    }
    for answer in answers {
        let echo: serde_json::Value = answer.await.unwrap().unwrap().json().await.unwrap();
        assert_eq!(echoed(&echo, "x-forwarded-user"), [USER]);
    }
    let TestGateway { server, addr, .. } = gw;
    bounded("all workers drain and stop", server.shutdown()).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no worker listens any more"
    );
}

/// A raw HTTP/1.1 upstream that counts the connections it accepts. It answers
/// 200 "ok" (a HEAD without the body, `/empty` with 204); with
/// `close_after_each` it closes the connection after every answer (without
/// saying so), like an upstream whose keep-alive timeout just expired.
async fn connection_counting_upstream(close_after_each: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).to_string();
                    pending.drain(..end + 4);
                    let answer: &[u8] = if head.starts_with("HEAD ") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
                    } else if head.contains(" /empty ") {
                        b"HTTP/1.1 204 No Content\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    };
                    if stream.write_all(answer).await.is_err() || close_after_each {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (addr, accepted) = connection_counting_upstream(false).await;
    let gw = gateway(addr).start().await;
    let client = gw.http1();
    for i in 0..30 {
        let request = match i % 3 {
            0 => client.get(gw.url("/page")),
            1 => client.get(gw.url("/empty")),
            _ => client.head(gw.url("/page")),
        };
        let response = send(request).await;
        assert!(
            response.status().is_success(),
            "request {i}: {}",
            response.status()
        );
        response.bytes().await.unwrap();
    }
    // One client connection lands on one worker, whose pool reuses one upstream
    // connection (bodies read to the end, empty bodies and HEAD included).
    let seen = accepted.load(Ordering::SeqCst);
    assert!(
        seen <= 2,
        "30 sequential requests used {seen} upstream connections"
    );
}

#[tokio::test]
async fn requests_succeed_when_the_upstream_closes_idle_connections() {
    let (addr, accepted) = connection_counting_upstream(true).await;
    let gw = gateway(addr).start().await;
    let client = gw.http1();
    for i in 0..10 {
        let response = send(client.get(gw.url("/page"))).await;
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
}
