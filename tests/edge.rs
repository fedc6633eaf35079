//! Edge hardening (issue 14): what the upstream receives is exactly what the
//! gateway judged. Each test drives the gateway over real TLS sockets with an
//! upstream that records every request it receives, and checks both the
//! gateway's answer (and why) and what reached the upstream.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    uri: String,
    headers: http::HeaderMap,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// An upstream that records what it receives and answers 200 "ok".
async fn recording_upstream() -> (std::net::SocketAddr, Log) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let addr = upstream(move |req: Request<Incoming>| {
        seen.lock().unwrap().push(Received {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            headers: req.headers().clone(),
        });
        async move { Response::new(full_body("ok")) }
    })
    .await;
    (addr, log)
}

fn received(log: &Log) -> Vec<Received> {
    log.lock().unwrap().clone()
}

/// `GET <path>` exactly as written, with the session `cookie`.
async fn raw_get_signed_in(gw: &TestGateway, path: &str, cookie: &str) -> (u16, String) {
    raw_request(
        gw,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}"),
    )
    .await
}

/// Public static files, a secret area that needs sign-in, and a denied one.
const PATH_ROUTES: &str = r#"
[[routes]]
path = "/static/**"
action = "public"

[[routes]]
path = "/secret"
action = "deny"

[[routes]]
path = "/admin/**"
action = "deny"
"#;

// ---- 1. the path judged is the path forwarded ----

#[tokio::test]
async fn paths_an_upstream_reads_differently_are_refused_not_forwarded() {
    let (upstream, log) = recording_upstream().await;
    let gw = gateway(upstream).section(PATH_ROUTES).start().await;
    let cookie = gw.session_cookie();
    // Each of these is read by some common upstream as /secret or /admin/…,
    // which the rules deny; or as another host (`//static`).
    let cases = [
        ("//static/secret", "empty segment"),
        ("/static//secret", "empty segment"),
        ("/secret.", "ending in '.'"),
        ("/admin./x", "ending in '.'"),
        ("/secret%20", "ending in '.' or a space"),
        ("/secret%23x", "encoded separator"),
        ("/secret%3Fx", "encoded separator"),
        ("/%C5%BFecret", "read as ASCII"),
        ("/%EF%BD%81dmin/x", "read as ASCII"),
        ("/%E2%84%AA", "read as ASCII"),
    ];
    for (path, why) in cases {
        let (status, text) = raw_get_signed_in(&gw, path, &cookie).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("bad_path"), "{path}: {text}");
        assert!(
            text.contains(why),
            "{path} refused for another reason: {text}"
        );
    }
    // A trailing slash is no way around a rule: `/secret/` is `/secret`.
    for path in ["/secret/", "/SECRET/", "/admin/"] {
        let (status, text) = raw_get_signed_in(&gw, path, &cookie).await;
        assert_eq!(status, 403, "{path}: {text}");
    }
    assert!(
        received(&log).is_empty(),
        "refused paths reached the upstream: {:?}",
        received(&log)
    );
    // What is admitted is forwarded exactly as it was judged.
    let (status, _) = raw_get(&gw, "/static/app.js").await;
    assert_eq!(status, 200);
    assert_eq!(received(&log)[0].uri, "/static/app.js");
    assert_eq!(received(&log)[0].method, "GET");
}

#[tokio::test]
async fn forward_auth_applies_the_same_path_rule_to_x_original_uri() {
    let (upstream, _log) = recording_upstream().await;
    let gw = gateway(upstream)
        .section(PATH_ROUTES)
        .server("trusted_proxies = [\"127.0.0.1\"]")
        .anonymous()
        .start()
        .await;
    let client = gw.fresh_browser();
    for (uri, status, why) in [
        ("//static/secret", 400, "empty segment"),
        ("/%C5%BFecret", 400, "read as ASCII"),
        ("/secret%23x", 400, "encoded separator"),
        ("/static/app.js", 202, ""),
    ] {
        let check = client
            .get(gw.url("/.gateway/auth"))
            .header("x-original-uri", uri);
        assert_answers(check, status, why).await;
    }
}

// ---- 2. methods ----

const METHOD_ROUTES: &str = r#"
[[routes]]
path = "/items/**"
methods = ["POST", "DELETE"]
action = "deny"

[[routes]]
path = "/reports/**"
methods = ["GET", "HEAD"]
action = "public"
"#;

#[tokio::test]
async fn case_variants_of_standard_methods_are_refused() {
    let (upstream, log) = recording_upstream().await;
    let gw = gateway(upstream).section(METHOD_ROUTES).start().await;
    let cookie = gw.session_cookie();
    for method in ["post", "dElEtE", "Get"] {
        let (status, text) = raw_request(
            &gw,
            &format!(
                "{method} /items/1 HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\nContent-Length: 0"
            ),
        )
        .await;
        assert_eq!(status, 400, "{method}: {text}");
        assert!(text.contains("bad_method"), "{method}: {text}");
        assert!(text.contains("case-sensitive"), "{method}: {text}");
    }
    assert!(received(&log).is_empty(), "{:?}", received(&log));
    // The standard spelling is judged by the rule.
    let (status, _) = raw_request(
        &gw,
        &format!(
            "POST /items/1 HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\nContent-Length: 0"
        ),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn method_override_headers_are_refused_where_rules_depend_on_the_method() {
    let (upstream, log) = recording_upstream().await;
    let gw = gateway(upstream)
        .section(METHOD_ROUTES)
        .server("trusted_proxies = [\"127.0.0.1\"]")
        .anonymous()
        .start()
        .await;
    let client = gw.fresh_browser();
    // /reports is public for GET only: a GET must not act as a DELETE upstream.
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        let overridden = client.get(gw.url("/reports/q3")).header(name, "DELETE");
        assert_answers(overridden, 400, "method_override").await;
    }
    assert!(received(&log).is_empty(), "{:?}", received(&log));
    // Forward-auth: the proxy in front would pass the override on.
    let check = client
        .get(gw.url("/.gateway/auth"))
        .header("x-original-uri", "/reports/q3")
        .header("x-http-method-override", "DELETE");
    assert_answers(check, 400, "method_override").await;
    // Without the override, the GET is public.
    assert_eq!(status_of(client.get(gw.url("/reports/q3"))).await, 200);
}

#[tokio::test]
async fn method_override_headers_stay_where_no_rule_depends_on_the_method() {
    let (upstream, log) = recording_upstream().await;
    let gw = gateway(upstream).section(METHOD_ROUTES).start().await;
    let response = send(
        gw.http1()
            .post(gw.url("/app/form"))
            .header("x-http-method-override", "PUT"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(received(&log)[0].headers["x-http-method-override"], "PUT");
}

// ---- 3. the client cannot remove what the gateway adds ----

#[tokio::test]
async fn connection_cannot_remove_headers_the_gateway_sets() {
    let (upstream, log) = recording_upstream().await;
    let gw = gateway(upstream).start().await;
    let response = send(
        gw.http1()
            .get(gw.url("/console"))
            .header(
                "connection",
                "keep-alive, X-Forwarded-User, X-Forwarded-Groups, X-Gateway-Assertion, \
             X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Real-IP, X-Request-Id, \
             Host, Authorization, Cookie, x-client-hop",
            )
            .header("authorization", "Basic dXNlcjpwdw==")
            .header("x-client-hop", "1"),
    )
    .await;
    assert_eq!(response.status(), 200);
    let got = received(&log);
    let headers = &got[0].headers;
    assert_eq!(headers["x-forwarded-user"], USER);
    assert!(headers.contains_key("x-forwarded-groups"));
    assert!(headers.contains_key("x-gateway-assertion"));
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert!(headers.contains_key("x-forwarded-host"));
    assert_eq!(headers["x-real-ip"], "127.0.0.1");
    assert!(headers.contains_key("x-request-id"));
    assert!(headers.contains_key("host"));
    assert_eq!(headers["authorization"], "Basic dXNlcjpwdw==");
    // A header of the client's own that it names is still hop-by-hop.
    assert!(!headers.contains_key("x-client-hop"));
    assert!(!headers.contains_key("connection"));
}

// ---- 6. pages and cookies ----

#[tokio::test]
async fn a_cross_site_request_cannot_sign_the_user_out() {
    let (upstream, _log) = recording_upstream().await;
    let gw = gateway(upstream).start().await;
    let browser = gw.http1();
    // An <img src=…/sign_out> on another site: the browser says cross-site.
    let forged = browser
        .get(gw.url("/.gateway/sign_out"))
        .header("sec-fetch-site", "cross-site")
        .header("accept", "image/avif,image/webp,*/*");
    assert_answers(forged, 403, "cross_site_sign_out").await;
    // A form another site POSTs.
    let forged = browser
        .post(gw.url("/.gateway/sign_out"))
        .header("origin", "https://evil.example");
    assert_answers(forged, 403, "cross_site_sign_out").await;
    // Still signed in.
    let me = || browser.get(gw.url("/.gateway/me"));
    assert_eq!(status_of(me()).await, 200);
    // A link without fetch metadata (an old browser) gets a page whose button
    // POSTs from this origin; that POST signs out.
    let page = send(navigate(browser.get(gw.url("/.gateway/sign_out")))).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<form method="post" action="/.gateway/sign_out">"#),
        "{html}"
    );
    assert_eq!(
        status_of(me()).await,
        200,
        "the page alone signs nobody out"
    );
    let out = send(
        browser
            .post(gw.url("/.gateway/sign_out"))
            .header("origin", format!("https://localhost:{}", gw.addr.port()))
            .header("sec-fetch-site", "same-origin"),
    )
    .await;
    assert_eq!(out.status(), 302, "signed out, on to the IdP's logout");
    assert_eq!(status_of(me()).await, 401);
}

#[tokio::test]
async fn gateway_pages_and_redirects_carry_security_headers() {
    let (upstream, _log) = recording_upstream().await;
    let gw = gateway(upstream).anonymous().start().await;
    let browser = gw.fresh_browser();
    let redirect = send(navigate(browser.get(gw.url("/console")))).await;
    assert_eq!(redirect.status(), 302);
    let error = send(browser.get(gw.url("/a//b"))).await;
    assert_eq!(error.status(), 400);
    let json = send(browser.get(gw.url("/console"))).await;
    assert_eq!(json.status(), 401);
    for response in [&redirect, &error, &json] {
        let h = response.headers();
        assert_eq!(h["cache-control"], "no-store", "{}", response.url());
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["content-security-policy"], "frame-ancestors 'none'");
        // The test certificate is self-signed: no HSTS pinned to it.
        assert!(!h.contains_key("strict-transport-security"));
    }
    // The upstream's own answers are the upstream's business.
    let (status, text) = raw_get(&gw, "/.gateway/jwks.json").await;
    assert_eq!(status, 200);
    assert!(
        text.to_ascii_lowercase()
            .contains("cache-control: public, max-age=300"),
        "{text}"
    );
}

#[tokio::test]
async fn hsts_is_sent_when_the_certificate_is_not_self_signed() {
    // A certificate issued by a (test) CA, written where the gateway looks.
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::issue(dir.path(), "issued", "Test CA", &["localhost"]);
    let (upstream, _log) = recording_upstream().await;
    let gw = gateway(upstream)
        .env("OIDC_GATEWAY__TLS__CERT", pki.cert_file.to_str().unwrap())
        .env("OIDC_GATEWAY__TLS__KEY", pki.key_file.to_str().unwrap())
        .env("OIDC_GATEWAY__TLS__SELF_SIGNED", "false")
        .anonymous()
        .start()
        .await;
    let client = client_builder(&std::fs::read(&pki.ca_file).unwrap(), gw.addr)
        .build()
        .unwrap();
    let response = send(client.get(gw.url("/console"))).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000"
    );
}

#[tokio::test]
async fn upstream_set_cookie_for_a_gateway_cookie_name_is_dropped() {
    let upstream = upstream(|_req: Request<Incoming>| async move {
        Response::builder()
            .header("set-cookie", "__Host-oidc-gateway=attacker; Path=/; Secure")
            .header(
                "set-cookie",
                "__HOST-OIDC-GATEWAY-flow-abc=x; Path=/; Secure",
            )
            .header("set-cookie", " __Host-oidc-gateway =y; Path=/; Secure")
            .header("set-cookie", "console=1; Path=/")
            .body(full_body("ok"))
            .unwrap()
    })
    .await;
    let gw = gateway(upstream).start().await;
    let response = send(gw.http1().get(gw.url("/console"))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(set_cookies(&response), ["console=1; Path=/"]);
    // The session survives.
    assert_eq!(status_of(gw.http1().get(gw.url("/.gateway/me"))).await, 200);
}

#[tokio::test]
async fn a_login_cookie_never_passes_4096_bytes_the_return_path_is_shortened() {
    let (upstream, _log) = recording_upstream().await;
    let gw = gateway(upstream).anonymous().start().await;
    let browser = gw.fresh_browser();
    // Short enough to be a return path (≤ 4096), too long for the sealed cookie.
    let long_query = "q=".to_string() + &"x".repeat(3500);
    let start = send(navigate(
        browser.get(gw.url(&format!("/deep/link?{long_query}"))),
    ))
    .await;
    assert_eq!(start.status(), 302);
    for cookie in set_cookies(&start) {
        assert!(cookie.len() <= 4096, "a {}-byte cookie", cookie.len());
    }
    // The login finishes, on the page's path (its query was what did not fit).
    let done = gw.follow_login(&browser, start).await;
    assert_eq!(done.status(), 303);
    assert_eq!(location(&done), "/deep/link");
}

#[tokio::test]
async fn with_public_url_set_requests_for_other_hosts_are_refused() {
    let port = released_port().await.port();
    let (upstream, log) = recording_upstream().await;
    let gw = gateway(upstream)
        .env("OIDC_GATEWAY__SERVER__LISTEN", &format!("127.0.0.1:{port}"))
        .env(
            "OIDC_GATEWAY__SERVER__PUBLIC_URL",
            &format!("https://localhost:{port}"),
        )
        .start()
        .await;
    let cookie = gw.session_cookie();
    // The public host is served.
    let (status, _) = raw_request(
        &gw,
        &format!("GET /console HTTP/1.1\r\nHost: localhost:{port}\r\nCookie: {cookie}"),
    )
    .await;
    assert_eq!(status, 200);
    for (host, why) in [
        ("evil.example".to_string(), "another host"),
        (format!("evil.example:{port}"), "another host"),
        (format!("user@localhost:{port}"), "user information"),
        (
            format!("localhost:{}", port.wrapping_add(1)),
            "another host",
        ),
    ] {
        let (status, text) = raw_request(
            &gw,
            &format!("GET /console HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}"),
        )
        .await;
        assert_eq!(status, 421, "{host}: {text}");
        assert!(
            text.contains("wrong_host") && text.contains(why),
            "{host}: {text}"
        );
    }
    assert_eq!(
        received(&log).len(),
        1,
        "only the public host reached the upstream"
    );
    // Health probes name whatever host they like.
    let (status, _) = raw_request(&gw, "GET /healthz HTTP/1.1\r\nHost: 10.0.0.7").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn allowed_hosts_limits_the_hosts_a_redirect_uri_may_name() {
    let (upstream, _log) = recording_upstream().await;
    let gw = gateway(upstream)
        .server("allowed_hosts = [\"localhost\"]")
        .anonymous()
        .start()
        .await;
    let navigation = "Accept: text/html\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document";
    let (status, text) = raw_request(
        &gw,
        &format!(
            "GET /console HTTP/1.1\r\nHost: localhost:{}\r\n{navigation}",
            gw.addr.port()
        ),
    )
    .await;
    assert_eq!(status, 302, "{text}");
    let (status, text) = raw_request(
        &gw,
        &format!("GET /console HTTP/1.1\r\nHost: evil.example\r\n{navigation}"),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("allowed_hosts"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("location:"), "{text}");
}

// ---- 7. smaller items ----

#[tokio::test]
async fn readyz_gives_its_reasons_to_loopback_peers() {
    let (upstream, _log) = recording_upstream().await;
    let gw = gateway(upstream).anonymous().start().await;
    gw.server.readiness.set_not_ready(
        "session_store",
        "redis at 10.1.2.3:6379 refused the connection",
    );
    let (status, text) = raw_get(&gw, "/readyz").await;
    assert_eq!(status, 503);
    assert!(text.contains("redis at 10.1.2.3:6379"), "{text}");
    // (Peers that are neither loopback nor trusted get only `not_ready`:
    // src/health.rs unit test; these tests have loopback peers only.)
}

#[tokio::test]
async fn a_second_gateway_on_a_port_already_served_fails_with_address_in_use() {
    let addr = released_port().await;
    let (upstream, _log) = recording_upstream().await;
    let first = gateway(upstream)
        .env("OIDC_GATEWAY__SERVER__LISTEN", &addr.to_string())
        .server("workers = 2")
        .anonymous()
        .start()
        .await;
    assert_eq!(first.addr, addr);
    let dir = tempfile::tempdir().unwrap();
    let extra = Extra {
        server: "workers = 2".into(),
        ..Extra::default()
    };
    let text = config_text(
        &dir,
        &format!("http://{upstream}"),
        &first.idp.issuer(),
        &extra,
    );
    let env = [("OIDC_GATEWAY__SERVER__LISTEN".to_string(), addr.to_string())];
    let settings = std::sync::Arc::new(oidc_gateway::config::load_str(&text, &env).unwrap());
    let error = match oidc_gateway::server::start(settings).await {
        Ok(_) => panic!("a second gateway started on {addr}, already served"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("server.listen") && error.to_ascii_lowercase().contains("in use"),
        "{error}"
    );
}

/// What an upstream that reads every body whole made of each request's body:
/// its bytes, or the error that ended it.
type Bodies = Arc<Mutex<Vec<Result<Vec<u8>, String>>>>;

async fn body_reading_upstream() -> (std::net::SocketAddr, Bodies) {
    use http_body_util::BodyExt;
    let bodies: Bodies = Arc::default();
    let seen = bodies.clone();
    let addr = upstream(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let body = match req.into_body().collect().await {
                Ok(collected) => Ok(collected.to_bytes().to_vec()),
                Err(e) => Err(e.to_string()),
            };
            seen.lock().unwrap().push(body);
            Response::new(full_body("ok"))
        }
    })
    .await;
    (addr, bodies)
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_400_not_an_upstream_failure() {
    let (upstream, bodies) = body_reading_upstream().await;
    let gw = gateway(upstream).start().await;
    let cookie = gw.cookie_header();
    // One good chunk, then a chunk size that is not hexadecimal.
    let request = format!(
        "POST /api/upload HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n"
    );
    let (_, answer) = raw_exchange(&gw, &request).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("bad_request_body"), "{answer}");
    assert!(answer.contains("chunk"), "the reason is named: {answer}");
    let bodies = bodies.lock().unwrap().clone();
    assert!(
        bodies.iter().all(|body| body.is_err()),
        "the upstream never got a whole body: {bodies:?}"
    );
}

#[tokio::test]
async fn idle_upstream_connections_close_at_pool_idle_timeout_without_another_request() {
    // A bare upstream socket: it answers one request, then only watches its connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let gw = gateway(upstream_addr)
        .upstream_option("pool_idle_timeout = \"1s\"")
        .start()
        .await;
    let upstream = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request head arrives");
            head.extend_from_slice(&buf[..n]);
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        let answered = std::time::Instant::now();
        let mut after = Vec::new();
        // Returns at end of stream: the gateway closed the connection.
        socket.read_to_end(&mut after).await.unwrap();
        (answered.elapsed(), after)
    });
    let response = send(gw.http1().get(gw.url("/x"))).await;
    assert_eq!(response.text().await.unwrap(), "ok");
    let (idle_for, after) = tokio::time::timeout(std::time::Duration::from_secs(20), upstream)
        .await
        .expect("the gateway closes its idle upstream connection without being asked")
        .unwrap();
    assert!(after.is_empty(), "no further request came: {after:?}");
    assert!(
        idle_for >= std::time::Duration::from_millis(950),
        "closed at pool_idle_timeout, not before: {idle_for:?}"
    );
}

// ---- 4. identity values are refused, not rewritten ----

#[tokio::test]
async fn identity_values_the_gateway_would_have_to_alter_are_refused_at_sign_in() {
    for (user, groups, claim) in [
        (
            "adm\u{200B}in@contoso.example",
            vec!["staff".to_string()],
            "preferred_username",
        ),
        (
            "\u{202E}nimda@contoso.example",
            vec!["staff".to_string()],
            "preferred_username",
        ),
        (
            " admin@contoso.example",
            vec!["staff".to_string()],
            "preferred_username",
        ),
        (
            "carol@contoso.example",
            vec!["staff,admins".to_string()],
            "groups",
        ),
    ] {
        let (upstream, log) = recording_upstream().await;
        let gw = gateway(upstream)
            .idp(|idp| {
                idp.auto_login = Some(user.to_string());
                idp.groups = groups.clone();
            })
            .anonymous()
            .start()
            .await;
        let browser = gw.fresh_browser();
        let start = send(navigate(browser.get(gw.url("/console")))).await;
        let done = gw.follow_login(&browser, start).await;
        assert_eq!(done.status(), 403, "{user:?} {groups:?}");
        let page = done.text().await.unwrap();
        assert!(page.contains("unsendable_identity"), "{page}");
        assert!(page.contains(&format!("claim `{claim}`")), "{page}");
        assert_eq!(
            status_of(browser.get(gw.url("/console"))).await,
            401,
            "no session for {user:?}"
        );
        assert!(received(&log).is_empty(), "{:?}", received(&log));
    }
}

#[tokio::test]
async fn a_bearer_caller_whose_identity_would_need_altering_is_refused_with_the_reason() {
    let (upstream, log) = recording_upstream().await;
    let gw = gateway(upstream)
        .section("[bearer]\nenabled = true")
        .anonymous()
        .start()
        .await;
    for (claims, claim) in [
        (
            serde_json::json!({"preferred_username": "adm\u{200B}in@contoso.example"}),
            "preferred_username",
        ),
        (serde_json::json!({"groups": ["staff,admins"]}), "groups"),
        (serde_json::json!({"sub": " padded"}), "sub"),
    ] {
        let serde_json::Value::Object(extra) = claims else {
            unreachable!()
        };
        let token = gw.idp.mint_id_token(USER, None, extra);
        let response = send(
            gw.fresh_http1()
                .get(gw.url("/api/data"))
                .bearer_auth(&token),
        )
        .await;
        assert!(
            [401, 403].contains(&response.status().as_u16()),
            "{claim}: {}",
            response.status()
        );
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["reason"], "unsendable_identity", "{claim}: {json}");
        let message = json["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("claim `{claim}`")),
            "{claim}: {message}"
        );
    }
    assert!(received(&log).is_empty(), "{:?}", received(&log));
}

#[tokio::test]
async fn headers_and_assertion_carry_the_same_identity_values() {
    let (upstream, log) = recording_upstream().await;
    let gw = gateway(upstream)
        .idp(|idp| idp.auto_login = Some("zoë.müller@contoso.example".into()))
        .start()
        .await;
    let response = send(gw.http1().get(gw.url("/console"))).await;
    assert_eq!(response.status(), 200);
    let got = received(&log);
    let headers = &got[0].headers;
    let user = headers["x-forwarded-user"].as_bytes();
    assert_eq!(user, "zoë.müller@contoso.example".as_bytes());
    let assertion = headers["x-gateway-assertion"].to_str().unwrap();
    let payload = assertion.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["name"].as_str().map(str::as_bytes),
        Some(user),
        "{claims}"
    );
    let groups = headers["x-forwarded-groups"].to_str().unwrap();
    let asserted: Vec<&str> = claims["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert_eq!(groups, asserted.join(","));
}
