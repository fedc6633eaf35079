//! `[metrics] listen`: Prometheus text on a listener of its own, never on the
//! public port. After real traffic (a sign-in, proxied requests over HTTP/1.1
//! and HTTP/2, an anonymous request, a rate-limited login, a bad bearer token,
//! plain HTTP on the TLS port, an access-token renewal, Redis going away) every
//! family is present and the series that traffic touches have moved.
//!
//! Metrics are process-wide and the tests of this file share the process:
//! assertions compare a scrape before and after a test's own traffic.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::process::RedisServer;
use common::{echo_upstream, gateway, TestGateway};

/// One scrape: `name{labels in name order}` → value.
struct Scrape {
    samples: BTreeMap<String, f64>,
    /// Family names from `# TYPE` lines.
    families: Vec<String>,
}

/// Parses the OpenMetrics text exposition; any malformed line fails the test.
fn parse(text: &str) -> Scrape {
    let mut samples = BTreeMap::new();
    let mut families = Vec::new();
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let words: Vec<&str> = comment.splitn(3, ' ').collect();
            match words.as_slice() {
                ["EOF"] => continue,
                ["TYPE", name, kind] => {
                    assert!(
                        ["counter", "gauge", "histogram"].contains(kind),
                        "type of {name}: {kind}"
                    );
                    families.push(name.to_string());
                }
                ["HELP", _, help] => assert!(!help.is_empty(), "empty help: {line}"),
                _ => panic!("malformed comment line: {line}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed sample line: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {series} is not a number: {line}"));
        assert!(
            series.starts_with("oidc_gateway_"),
            "{series} lacks the prefix"
        );
        let key = normalized(series);
        assert!(samples.insert(key, value).is_none(), "{series} twice");
    }
    Scrape { samples, families }
}

/// `name{b="2",a="1"}` → `name{a="1",b="2"}`; label values must be quoted.
fn normalized(series: &str) -> String {
    let Some((name, rest)) = series.split_once('{') else {
        return series.to_string();
    };
    let labels = rest
        .strip_suffix('}')
        .unwrap_or_else(|| panic!("unclosed labels: {series}"));
    let mut pairs: Vec<&str> = labels.split(',').collect();
    for pair in &pairs {
        let (_, value) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("label without value: {series}"));
        assert!(
            value.starts_with('"') && value.ends_with('"'),
            "unquoted label value: {series}"
        );
    }
    pairs.sort_unstable();
    format!("{name}{{{}}}", pairs.join(","))
}

impl Scrape {
    fn value(&self, series: &str) -> f64 {
        let key = normalized(series);
        *self.samples.get(&key).unwrap_or_else(|| {
            panic!(
                "{series} missing; have:\n{}",
                self.samples.keys().cloned().collect::<Vec<_>>().join("\n")
            )
        })
    }

    fn moved_since(&self, before: &Scrape, series: &str) {
        let key = normalized(series);
        let was = before.samples.get(&key).copied().unwrap_or(0.0);
        let now = self.value(series);
        assert!(now > was, "{series} did not move: {was} -> {now}");
    }
}

/// `GET http://addr{path}` on the metrics listener (plain HTTP, no proxy).
async fn metrics_get(addr: std::net::SocketAddr, path: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("request to the metrics listener")
}

async fn scrape(gw: &TestGateway) -> Scrape {
    let addr = gw.server.metrics_addr.expect("the metrics listener");
    let response = metrics_get(addr, "/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "Prometheus is told the format: {content_type}"
    );
    parse(&response.text().await.expect("body"))
}

const FAMILIES: [&str; 18] = [
    "oidc_gateway_build_info",
    "oidc_gateway_requests",
    "oidc_gateway_request_duration_seconds",
    "oidc_gateway_upstream_requests",
    "oidc_gateway_upstream_duration_seconds",
    "oidc_gateway_upstream_connections",
    "oidc_gateway_client_connections",
    "oidc_gateway_tls_handshakes",
    "oidc_gateway_sign_ins",
    "oidc_gateway_id_token_rejections",
    "oidc_gateway_refreshes",
    "oidc_gateway_session_store_errors",
    "oidc_gateway_rate_limited",
    "oidc_gateway_config_reloads",
    "oidc_gateway_idp_request_duration_seconds",
    "oidc_gateway_sessions",
    "oidc_gateway_certificate_expiry_timestamp_seconds",
    "oidc_gateway_certificate_reload_failures",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_served_as_prometheus_text_and_moves_with_traffic() {
    let gw = gateway(echo_upstream().await)
        .section("[metrics]\nlisten = \"127.0.0.1:0\"")
        .section("[rate_limit]\nlogin_per_minute = 1\nlogin_burst = 1")
        .section("[bearer]\nenabled = true")
        .session("refresh = true")
        .idp(|o| o.token_lifetime = Duration::from_secs(2))
        .anonymous()
        .start()
        .await;
    let before = scrape(&gw).await;
    for family in FAMILIES {
        assert!(
            before.families.iter().any(|f| f == family),
            "{family} missing"
        );
    }

    // A sign-in: one code exchange, the address's whole burst.
    assert_eq!(gw.sign_in(&gw.http1(), "/").await.status(), 303);
    for client in [gw.http1(), gw.http2()] {
        let answer = client.get(gw.url("/app")).send().await.expect("request");
        assert_eq!(answer.status(), 200);
    }
    let anonymous = gw.fresh_browser();
    let answer = anonymous
        .get(gw.url("/api/data"))
        .send()
        .await
        .expect("request");
    assert_eq!(answer.status(), 401);
    // A second sign-in in a minute from this address: its code exchange is limited.
    let limited = gw.sign_in(&gw.fresh_browser(), "/").await;
    assert_eq!(limited.status(), 429);
    let me = anonymous
        .get(gw.url("/.gateway/me"))
        .send()
        .await
        .expect("request");
    assert_eq!(me.status(), 401, "a gateway endpoint's own 4xx");
    let bad_bearer = anonymous
        .get(gw.url("/api/data"))
        .header("authorization", "Bearer not-a-jwt")
        .send()
        .await
        .expect("request");
    assert_eq!(bad_bearer.status(), 401);
    let health = anonymous
        .get(gw.url("/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(health.status(), 200);
    // Plain HTTP on the TLS port: a handshake that never was.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.expect("read the 400");
        assert!(answer.starts_with(b"HTTP/1.1 400"));
    }
    // The 2 s access token is due for renewal after half its life: the clock
    // drives renewal, so the test waits for it to pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let renewed = gw
        .http1()
        .get(gw.url("/later"))
        .send()
        .await
        .expect("request");
    assert_eq!(renewed.status(), 200);

    let after = scrape(&gw).await;
    for series in [
        r#"oidc_gateway_requests_total{route="authenticated",status_class="2xx"}"#,
        r#"oidc_gateway_requests_total{route="anonymous",status_class="4xx"}"#,
        r#"oidc_gateway_requests_total{route="callback",status_class="3xx"}"#,
        r#"oidc_gateway_requests_total{route="gateway",status_class="3xx"}"#,
        r#"oidc_gateway_requests_total{route="gateway",status_class="4xx"}"#,
        r#"oidc_gateway_requests_total{route="refused",status_class="4xx"}"#,
        r#"oidc_gateway_requests_total{route="health",status_class="2xx"}"#,
        r#"oidc_gateway_request_duration_seconds_count{route="authenticated"}"#,
        r#"oidc_gateway_request_duration_seconds_sum{route="authenticated"}"#,
        r#"oidc_gateway_request_duration_seconds_bucket{le="+Inf",route="authenticated"}"#,
        r#"oidc_gateway_upstream_requests_total{status_class="2xx",upstream="default"}"#,
        r#"oidc_gateway_upstream_duration_seconds_count{upstream="default"}"#,
        r#"oidc_gateway_tls_handshakes_total{result="ok"}"#,
        r#"oidc_gateway_tls_handshakes_total{result="plain_http"}"#,
        r#"oidc_gateway_sign_ins_total{outcome="success"}"#,
        r#"oidc_gateway_rate_limited_total{limit="address_sign_ins"}"#,
        r#"oidc_gateway_sign_ins_total{outcome="rate_limited"}"#,
        r#"oidc_gateway_id_token_rejections_total{reason="malformed"}"#,
        r#"oidc_gateway_idp_request_duration_seconds_count{call="token"}"#,
        r#"oidc_gateway_idp_request_duration_seconds_count{call="refresh"}"#,
        r#"oidc_gateway_refreshes_total{outcome="renewed"}"#,
    ] {
        after.moved_since(&before, series);
    }
    // A bucket holds every observation at most its bound: +Inf holds them all.
    assert_eq!(
        after.value(
            r#"oidc_gateway_request_duration_seconds_bucket{le="+Inf",route="authenticated"}"#
        ),
        after.value(r#"oidc_gateway_request_duration_seconds_count{route="authenticated"}"#),
    );
    // Loaded at start, before the first scrape.
    assert!(
        after.value(r#"oidc_gateway_idp_request_duration_seconds_count{call="discovery"}"#) >= 1.0
    );
    assert!(after.value(r#"oidc_gateway_idp_request_duration_seconds_count{call="jwks"}"#) >= 1.0);
    // Gauges of what is open now (other tests of this process add theirs).
    assert!(after.value("oidc_gateway_sessions") >= 1.0);
    assert!(after.value("oidc_gateway_client_connections") >= 1.0);
    assert!(
        after.value(r#"oidc_gateway_upstream_connections{state="idle",upstream="default"}"#) >= 1.0,
        "the keep-alive connection to the echo upstream waits in the pool"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        after.value(&format!(
            r#"oidc_gateway_build_info{{version="{version}"}}"#
        )),
        1.0
    );
    let expiry = after.value("oidc_gateway_certificate_expiry_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(expiry > now, "the test certificate is valid: {expiry}");
    after.value("oidc_gateway_certificate_reload_failures_total");
    gw.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_store_errors_are_counted_when_redis_goes_away() {
    let Some(mut redis) = RedisServer::start("session_store_errors_are_counted").await else {
        return;
    };
    let gw = gateway(echo_upstream().await)
        .section("[metrics]\nlisten = \"127.0.0.1:0\"")
        .anonymous()
        .session(&format!(
            "store = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"m:\"",
            redis.url()
        ))
        .start()
        .await;
    let before = scrape(&gw).await;
    redis.stop();
    // A session this gateway has never seen (its cache cannot answer) must be
    // looked up in Redis, which is gone.
    let unseen = format!("__Host-oidc-gateway={}", "A".repeat(43));
    let answer = gw
        .fresh_browser()
        .get(gw.url("/app"))
        .header("cookie", unseen)
        .send()
        .await
        .expect("request");
    assert_eq!(
        answer.status(),
        503,
        "the store is down: no sign-out, a 503"
    );
    let after = scrape(&gw).await;
    after.moved_since(
        &before,
        r#"oidc_gateway_session_store_errors_total{error="unreachable"}"#,
    );
    after.moved_since(
        &before,
        r#"oidc_gateway_requests_total{route="refused",status_class="5xx"}"#,
    );
    gw.server.shutdown().await;
}

#[tokio::test]
async fn the_public_port_never_serves_metrics() {
    let gw = gateway(echo_upstream().await)
        .section("[metrics]\nlisten = \"127.0.0.1:0\"")
        .start()
        .await;
    let metrics_addr = gw.server.metrics_addr.expect("the metrics listener");
    assert_ne!(metrics_addr.port(), gw.addr.port());
    // /metrics on the public port is an ordinary path: anonymous → 401, and
    // signed in it goes to the upstream (the echo), never answered by the gateway.
    let anonymous = gw
        .fresh_browser()
        .get(gw.url("/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status(), 401);
    let signed_in = gw
        .http1()
        .get(gw.url("/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(signed_in.status(), 200);
    let echo: serde_json::Value = signed_in.json().await.expect("the echo upstream's JSON");
    assert_eq!(echo["uri"], "/metrics", "forwarded upstream: {echo}");
    // The metrics listener serves /metrics and nothing else.
    assert_eq!(metrics_get(metrics_addr, "/other").await.status(), 404);
    gw.server.shutdown().await;
}

#[test]
fn metrics_listen_may_not_be_a_public_listener() {
    let text = |metrics: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:8443\"\nredirect_http = \"127.0.0.1:8080\"\n\
             [tls]\ncert = \"/tmp/c.pem\"\nkey = \"/tmp/k.pem\"\n\
             [oidc]\nissuer = \"http://127.0.0.1:1/tenant/v2.0\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
             [upstream]\nurl = \"http://127.0.0.1:21114\"\n[metrics]\nlisten = \"{metrics}\"\n"
        )
    };
    for public in ["127.0.0.1:8443", "127.0.0.1:8080"] {
        let Err(error) = oidc_gateway::config::load_str(&text(public), &[]) else {
            panic!("metrics.listen = {public:?} was accepted");
        };
        let error = error.to_string();
        assert!(
            error.contains("metrics.listen") && error.contains("never served on a public port"),
            "{error}"
        );
    }
    let settings = oidc_gateway::config::load_str(&text("127.0.0.1:9464"), &[]).expect("valid");
    assert_eq!(
        settings.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    let off = oidc_gateway::config::load_str(&text(""), &[]).expect("valid");
    assert_eq!(off.metrics_listen, None, "off unless the key is set");
}

#[tokio::test]
async fn graph_calls_are_timed_and_a_graph_failure_is_a_sign_in_outcome() {
    let gw = gateway(echo_upstream().await)
        .section("[metrics]\nlisten = \"127.0.0.1:0\"")
        .idp(|o| o.groups = oidc_gateway::devidp::generated_groups(210))
        .anonymous()
        .start()
        .await;
    let before = scrape(&gw).await;
    assert_eq!(gw.sign_in(&gw.fresh_browser(), "/").await.status(), 303);
    gw.idp
        .set_graph_mode(oidc_gateway::devidp::GraphMode::Status(503));
    assert_eq!(gw.sign_in(&gw.fresh_browser(), "/").await.status(), 502);
    let after = scrape(&gw).await;
    assert!(
        after.value(r#"oidc_gateway_idp_request_duration_seconds_count{call="graph"}"#)
            - before.value(r#"oidc_gateway_idp_request_duration_seconds_count{call="graph"}"#)
            >= 2.0,
        "both overage sign-ins asked Graph"
    );
    after.moved_since(
        &before,
        r#"oidc_gateway_sign_ins_total{outcome="groups_unavailable"}"#,
    );
}
