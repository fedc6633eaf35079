//! Who gets in and what bypasses login: access rules, per-path routes on the
//! normalized path, the RustDesk preset, bearer tokens, the signed identity
//! assertion, login rate limits — and the anchors' advisories as regressions.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use http::{Request, Response};
use hyper::body::Incoming;

/// An upstream that counts requests and echoes like `echo_upstream`.
async fn counting_echo() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let echo = echo_upstream().await;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let addr = upstream(move |req: Request<Incoming>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let client = client.clone();
        async move {
            // Relay to the echo upstream to reuse its JSON shape.
            let mut forward =
                client.request(req.method().clone(), format!("http://{echo}{}", req.uri()));
            for (name, value) in req.headers() {
                forward = forward.header(name, value);
            }
            let body = send(forward).await.bytes().await.unwrap();
            Response::new(full_body(body))
        }
    })
    .await;
    (addr, hits)
}

#[tokio::test]
async fn a_user_who_fails_the_rules_gets_a_403_naming_them_never_a_loop() {
    let gw = gateway(echo_upstream().await)
        .section("[access]\ngroups = [\"admins-only\"]")
        .start()
        .await;
    let page = send(navigate(gw.http1().get(gw.url("/console")))).await;
    assert_eq!(page.status(), 403);
    assert!(
        !page.headers().contains_key("location"),
        "no redirect: that would loop"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains(USER), "names who is signed in: {html}");
    assert!(html.contains("/.gateway/sign_out"), "offers a way out");
    let api = send(gw.http1().get(gw.url("/api/data"))).await;
    assert_eq!(api.status(), 403);
    let json: serde_json::Value = api.json().await.unwrap();
    assert_eq!(json["error"], "forbidden");
    assert_eq!(json["user"], USER);
}

#[tokio::test]
async fn each_rule_kind_admits_and_refuses() {
    let upstream = echo_upstream().await;
    let cases = [
        (format!("tenants = [\"{TENANT}\"]"), 200),
        (
            "tenants = [\"99999999-0000-0000-0000-000000000000\"]".to_string(),
            403,
        ),
        ("email_domains = [\"contoso.example\"]".to_string(), 200),
        ("email_domains = [\"example\"]".to_string(), 403),
        (format!("users = [\"{}\"]", USER.to_uppercase()), 200),
        ("users = [\"bob@contoso.example\"]".to_string(), 403),
        ("groups = [\"nope\", \"5f1d2e4b-users\"]".to_string(), 200),
        ("roles = [\"Console.Admin\"]".to_string(), 403),
    ];
    for (rule, expected) in cases {
        let gw = gateway(upstream)
            .section(&format!("[access]\n{rule}"))
            .start()
            .await;
        let status = status_of(gw.http1().get(gw.url("/"))).await;
        assert_eq!(status, expected, "{rule}");
    }
}

#[tokio::test]
async fn app_roles_from_the_token_are_honoured() {
    let gw = gateway_for(USER, "[access]\nroles = [\"Console.Admin\"]").await;
    let mut claims = serde_json::Map::new();
    claims.insert("roles".into(), serde_json::json!(["Console.Admin"]));
    gw.idp.set_user_override(USER, Some(claims));
    let browser = gw.signed_in_browser().await;
    assert_eq!(status_of(browser.get(gw.url("/"))).await, 200);
}

#[tokio::test]
async fn email_domain_is_an_exact_match_on_a_single_at_address() {
    // oauth2-proxy advisory: a@evil.com@corp.com passed a corp.com domain check.
    for (address, expected) in [
        ("alice@contoso.example", 200),
        ("a@evil.example@contoso.example", 403),
        ("a@sub.contoso.example", 403),
        ("a@contoso.example.evil.example", 403),
    ] {
        let gw = gateway_for(USER, "[access]\nemail_domains = [\"contoso.example\"]").await;
        let mut claims = serde_json::Map::new();
        claims.insert("preferred_username".into(), address.into());
        gw.idp.set_user_override(USER, Some(claims));
        let browser = gw.signed_in_browser().await;
        let status = status_of(browser.get(gw.url("/"))).await;
        assert_eq!(status, expected, "{address}");
    }
}

/// A group the ID token cannot carry: only Microsoft Graph lists it.
const GRAPH_ONLY_GROUP: &str = "7a0e1d2c-0000-4000-8000-0000000a11ed";

/// A gateway admitting [`GRAPH_ONLY_GROUP`] only (plus `more` config), whose
/// IdP puts the user in 250 more groups (over Entra's 200: the token carries
/// the overage marker).
async fn overage_gateway_with(more: &str) -> TestGateway {
    gateway(echo_upstream().await)
        .section(&format!(
            "[access]\ngroups = [\"{GRAPH_ONLY_GROUP}\"]\n{more}"
        ))
        .idp(|o| {
            o.groups = oidc_gateway::devidp::generated_groups(250);
            o.groups.push(GRAPH_ONLY_GROUP.into());
        })
        .anonymous()
        .start()
        .await
}

async fn overage_gateway() -> TestGateway {
    overage_gateway_with("").await
}

/// [`overage_gateway`] accepting bearer tokens.
async fn overage_bearer_gateway() -> TestGateway {
    overage_gateway_with("[bearer]\nenabled = true").await
}

#[tokio::test]
async fn overage_user_is_admitted_by_a_group_known_only_to_graph() {
    let gw = overage_gateway().await;
    let browser = gw.signed_in_browser().await;
    let response = send(browser.get(gw.url("/console"))).await;
    assert_eq!(response.status(), 200, "admitted by the group from Graph");
    let echo: serde_json::Value = response.json().await.unwrap();
    let groups = echoed(&echo, "x-forwarded-groups");
    assert_eq!(groups.len(), 1, "{echo}");
    let groups: Vec<&str> = groups[0].split(',').collect();
    assert_eq!(groups.len(), 251, "every group, over three Graph pages");
    assert!(groups.contains(&GRAPH_ONLY_GROUP));
    let me = json_of(browser.get(gw.url("/.gateway/me"))).await;
    assert_eq!(
        me["groups"].as_array().map(Vec::len),
        Some(251),
        "kept with the session"
    );
    // 251 ids in pages of 100: the nextLinks were followed.
    assert_eq!(gw.idp.graph_requests(), 3);
    assert_eq!(
        gw.idp.claim_source_requests(),
        0,
        "the token's _claim_sources endpoint is never called"
    );
}

#[tokio::test]
async fn overage_user_is_refused_with_the_reason_when_graph_fails() {
    use oidc_gateway::devidp::GraphMode;
    let gw = overage_gateway().await;
    for (mode, status, reason) in [
        (GraphMode::Status(503), 502, "HTTP 503"),
        (GraphMode::Status(403), 403, "Authorization_RequestDenied"),
    ] {
        gw.idp.set_graph_mode(mode);
        let browser = gw.fresh_browser();
        let refused = gw.sign_in(&browser, "/").await;
        assert_eq!(refused.status(), status, "{mode:?}");
        assert!(
            set_cookies(&refused)
                .iter()
                .all(|c| !c.starts_with("__Host-oidc-gateway=")),
            "no session: never 0 groups silently"
        );
        let json: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(json["error"], "groups_unavailable", "{json}");
        let message = json["message"].as_str().unwrap_or_default();
        for advice in [
            "could not be read from Microsoft Graph",
            reason,
            "User.Read",
            "GroupMember.Read.All",
            "admin consent",
            "app roles",
        ] {
            assert!(
                message.contains(advice),
                "{mode:?}: {advice:?} in {message}"
            );
        }
        let after = send(browser.get(gw.url("/console"))).await;
        assert_eq!(after.status(), 401, "still signed out");
    }
    assert_eq!(gw.idp.claim_source_requests(), 0);
}

#[tokio::test]
async fn overage_user_is_refused_when_graph_does_not_answer_in_time() {
    use oidc_gateway::devidp::GraphMode;
    let gw = gateway(echo_upstream().await)
        .section(&format!("[access]\ngroups = [\"{GRAPH_ONLY_GROUP}\"]"))
        .oidc("http_timeout = \"1s\"")
        .idp(|o| o.groups = oidc_gateway::devidp::generated_groups(250))
        .anonymous()
        .start()
        .await;
    gw.idp.set_graph_mode(GraphMode::Hang);
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        gw.sign_in(&gw.fresh_browser(), "/"),
    )
    .await
    .expect("answered within 10 s (http_timeout = 1s)");
    assert_eq!(refused.status(), 504);
    let json: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(json["error"], "groups_unavailable", "{json}");
    assert!(
        json["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not answer in time")),
        "{json}"
    );
}

/// An API request with `token` as its bearer token.
async fn bearer_request(gw: &TestGateway, token: &str) -> reqwest::Response {
    send(
        gw.fresh_browser()
            .get(gw.url("/api/data"))
            .bearer_auth(token),
    )
    .await
}

#[tokio::test]
async fn overage_bearer_caller_gets_its_groups_from_graph_cached_per_user() {
    let gw = overage_bearer_gateway().await;
    // The IdP's token for this user carries the overage marker, not the groups.
    let token = gw.idp.mint_id_token(USER, None, serde_json::Map::new());
    for round in 0..2 {
        let response = bearer_request(&gw, &token).await;
        assert_eq!(response.status(), 200, "round {round}");
        let echo: serde_json::Value = response.json().await.unwrap();
        let groups = echoed(&echo, "x-forwarded-groups");
        assert!(
            groups.len() == 1 && groups[0].split(',').any(|g| g == GRAPH_ONLY_GROUP),
            "round {round}: {echo}"
        );
    }
    assert_eq!(
        gw.idp.on_behalf_of_grants(),
        1,
        "one Graph token for the user: the groups are kept"
    );
    assert_eq!(gw.idp.graph_requests(), 3, "three pages, once");
    assert_eq!(gw.idp.claim_source_requests(), 0);
}

#[tokio::test]
async fn overage_bearer_caller_is_refused_saying_graph_failed() {
    use oidc_gateway::devidp::GraphMode;
    let gw = overage_bearer_gateway().await;
    gw.idp.set_graph_mode(GraphMode::Status(503));
    let token = gw.idp.mint_id_token(USER, None, serde_json::Map::new());
    let denied = bearer_request(&gw, &token).await;
    assert_eq!(denied.status(), 403);
    let json: serde_json::Value = denied.json().await.unwrap();
    let message = json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("could not be read from Microsoft Graph") && message.contains("User.Read"),
        "{json}"
    );
    assert_eq!(gw.idp.graph_requests(), 1, "Graph was asked");
    // A failure is remembered briefly: the next request does not wait on Graph again.
    assert_eq!(bearer_request(&gw, &token).await.status(), 403);
    assert_eq!(gw.idp.graph_requests(), 1, "not asked again at once");
    assert_eq!(gw.idp.on_behalf_of_grants(), 1);
}

const ROUTES: &str = r#"
[[routes]]
path = "/public/**"
methods = ["GET", "HEAD"]
action = "public"

[[routes]]
path = "/admin/**"
allow = { groups = ["only-admins"] }

[[routes]]
path = "/internal/**"
action = "deny"
"#;

#[tokio::test]
async fn public_routes_forward_anonymously_without_identity() {
    let (upstream, hits) = counting_echo().await;
    let gw = gateway(upstream).section(ROUTES).anonymous().start().await;
    let client = gw.fresh_browser();
    let echo = json_of(
        client
            .get(gw.url("/public/logo.png?v=1"))
            .header("x-forwarded-user", "admin"),
    )
    .await;
    assert_eq!(echo["uri"], "/public/logo.png?v=1");
    assert!(
        echoed(&echo, "x-forwarded-user").is_empty(),
        "no identity on public routes: {echo}"
    );
    assert!(echoed(&echo, "x-gateway-assertion").is_empty());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // The route is GET/HEAD only: a POST there needs sign-in.
    assert_eq!(status_of(client.post(gw.url("/public/form"))).await, 401);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stricter_and_deny_routes_apply_on_the_normalized_path() {
    let (upstream, hits) = counting_echo().await;
    let gw = gateway(upstream).section(ROUTES).start().await;
    let client = gw.http1();
    assert_eq!(status_of(client.get(gw.url("/console"))).await, 200);
    for path in [
        "/admin/users",
        "/ADMIN/users",
        "/Admin/",
        "/admin",
        "//admin/users",
        "/admin;x=1/users",
        "/public/..;/admin",
    ] {
        let status = status_of(client.get(gw.url(path))).await;
        assert!(status == 403 || status == 400, "{path} answered {status}");
    }
    for path in ["/internal/metrics", "/INTERNAL/x"] {
        assert_eq!(status_of(client.get(gw.url(path))).await, 403, "{path}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "only /console reached the upstream"
    );
}

#[tokio::test]
async fn confusing_paths_are_refused_before_matching() {
    let (upstream, hits) = counting_echo().await;
    let gw = gateway(upstream).section(ROUTES).anonymous().start().await;
    for path in [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public%2F..%2Fadmin/x",
        "/public/%2Fadmin",
        "/public/x%00",
        "/public/%5C..%5Cadmin",
        "/public/./x",
    ] {
        let (status, text) = raw_get(&gw, path).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("bad_path"), "{path}: {text}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn skip_auth_routes_never_match_the_query_or_fragment() {
    // oauth2-proxy advisories: skip-auth regex matched against the query string,
    // or widened by '#'/'%23'.
    let (upstream, hits) = counting_echo().await;
    let gw = gateway(upstream).section(ROUTES).anonymous().start().await;
    let client = gw.fresh_browser();
    for path in [
        "/secret?x=/public/a",
        "/secret?/public/",
        "/secret%23/public/a",
        "/public%23/../secret",
    ] {
        let status = status_of(client.get(gw.url(path))).await;
        assert!(status == 401 || status == 400, "{path} answered {status}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream anonymously"
    );
}

#[tokio::test]
async fn health_probe_user_agents_get_nothing_beyond_health() {
    // oauth2-proxy advisory: a health-check User-Agent bypassed authentication.
    let (upstream, hits) = counting_echo().await;
    let gw = gateway(upstream).anonymous().start().await;
    let client = gw.fresh_browser();
    for agent in ["kube-probe/1.29", "ELB-HealthChecker/2.0", "GoogleHC/1.0"] {
        let status = status_of(client.get(gw.url("/console")).header("user-agent", agent)).await;
        assert_eq!(status, 401, "{agent}");
        assert_eq!(
            status_of(client.get(gw.url("/healthz")).header("user-agent", agent)).await,
            200
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn open_redirects_through_the_deep_link_are_neutralised() {
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    for path in ["//evil.example/x", "/%2F%2Fevil.example/x"] {
        let browser = gw.fresh_browser();
        let start = send(navigate(browser.get(gw.url(path)))).await;
        if start.status() == 400 {
            continue; // refused outright: no redirect at all
        }
        assert_eq!(start.status(), 302, "{path}");
        let done = gw.follow_login(&browser, start).await;
        assert_eq!(done.status(), 303);
        let location = done.headers()["location"].to_str().unwrap();
        assert!(
            !location.starts_with("//") && !location.contains("evil.example"),
            "{path} → {location}"
        );
    }
}

/// An anonymous test browser's gateway with the RustDesk preset on, in front of `upstream`.
async fn rustdesk_gateway(upstream: std::net::SocketAddr) -> TestGateway {
    gateway(upstream)
        .section("[rustdesk]\nenabled = true")
        .anonymous()
        .start()
        .await
}

#[tokio::test]
async fn rustdesk_client_api_reaches_the_console_untouched() {
    let gw = rustdesk_gateway(echo_upstream().await).await;
    let client = gw.fresh_http1();
    for path in [
        "/api/heartbeat",
        "/api/login",
        "/api/audit/conn",
        "/api/ab",
        "/api/ab/personal",
        "/api/devices/cli",
        "/api/currentUser",
    ] {
        let response = send(
            client
                .post(gw.url(path))
                .header("authorization", "Bearer rustdesk-client-token")
                .header("x-forwarded-user", "admin")
                .header("content-type", "application/json")
                .body("{\"id\":\"123\"}"),
        )
        .await;
        assert_eq!(response.status(), 200, "{path}");
        let echo: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            echoed(&echo, "authorization"),
            ["Bearer rustdesk-client-token"],
            "{path}"
        );
        assert!(
            echoed(&echo, "x-forwarded-user").is_empty(),
            "{path}: {echo}"
        );
        assert!(echoed(&echo, "x-gateway-assertion").is_empty(), "{path}");
    }
    // Not on the list: the console's web UI still needs sign-in.
    assert_eq!(
        status_of(client.get(gw.url("/api/admin/settings"))).await,
        401
    );
    let web = send(navigate(gw.fresh_browser().get(gw.url("/")))).await;
    assert_eq!(web.status(), 302);
}

#[tokio::test]
async fn rustdesk_client_api_never_sees_html_or_a_gateway_5xx() {
    let gw = rustdesk_gateway(closed_port().await).await;
    let response = send(
        gw.fresh_http1()
            .get(gw.url("/api/heartbeat"))
            .header("accept", "text/html"),
    )
    .await;
    assert_eq!(
        response.status(),
        424,
        "4xx, not 502: a RustDesk client retries around a 5xx"
    );
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "upstream_unavailable");
    // Confusing paths on the client API are refused as 4xx JSON too.
    let (status, text) = raw_get(&gw, "/api/ab/%2e%2e/x").await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("application/json"), "{text}");
}

#[tokio::test]
async fn rustdesk_foreign_callbacks_go_to_the_console_and_ours_do_not() {
    let (upstream, hits) = counting_echo().await;
    let gw = rustdesk_gateway(upstream).await;
    // RustDesk's own OIDC login for a desktop client: a state we never issued.
    let foreign = send(
        gw.fresh_browser()
            .get(gw.url("/api/oidc/callback?code=rd-code&state=rustdesk-state-123")),
    )
    .await;
    assert_eq!(foreign.status(), 200);
    let echo: serde_json::Value = foreign.json().await.unwrap();
    assert_eq!(
        echo["uri"],
        "/api/oidc/callback?code=rd-code&state=rustdesk-state-123"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Our own login's callback is finished by the gateway, not forwarded.
    gw.signed_in_browser().await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "our callback never reached the console"
    );
}

#[tokio::test]
async fn rustdesk_websockets_pass_without_a_browser_login() {
    let gw = rustdesk_gateway(echo_upstream().await).await;
    let response = send(
        gw.fresh_http1()
            .get(gw.url("/ws/id"))
            .header("accept", "text/html"),
    )
    .await;
    assert_eq!(
        response.status(),
        200,
        "forwarded, not redirected to a login"
    );
}

#[tokio::test]
async fn bearer_tokens_from_the_issuer_pass_with_identity() {
    let gw = gateway_for(USER, "[bearer]\nenabled = true").await;
    let token = gw.idp.mint_id_token(USER, None, serde_json::Map::new());
    let echo = json_of(
        gw.fresh_http1()
            .get(gw.url("/api/data"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(echoed(&echo, "x-forwarded-user"), [USER]);
    assert_eq!(echoed(&echo, "x-gateway-assertion").len(), 1);
}

#[tokio::test]
async fn bad_bearer_tokens_get_401_invalid_token() {
    let gw = gateway_for(USER, "[bearer]\nenabled = true").await;
    let mut expired = serde_json::Map::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    expired.insert("exp".into(), (now - 3600).into());
    expired.insert("iat".into(), (now - 7200).into());
    expired.insert("nbf".into(), (now - 7200).into());
    let mut other_audience = serde_json::Map::new();
    other_audience.insert("aud".into(), "some-other-app".into());
    let valid = gw.idp.mint_id_token(USER, None, serde_json::Map::new());
    // One character in the middle of the signature (the last one may only
    // carry padding bits).
    let middle = valid.rfind('.').unwrap() + 20;
    let mut tampered = valid.clone();
    let flipped = if &valid[middle..=middle] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(middle..=middle, flipped);
    for (name, token, reason) in [
        ("garbage", "not-a-jwt".to_string(), "malformed"),
        (
            "expired",
            gw.idp.mint_id_token(USER, None, expired),
            "expired",
        ),
        (
            "wrong audience",
            gw.idp.mint_id_token(USER, None, other_audience),
            "wrong_audience",
        ),
        ("tampered", tampered, "bad_signature"),
    ] {
        let response = send(
            gw.fresh_http1()
                .get(gw.url("/api/data"))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(response.status(), 401, "{name}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{name}: {challenge}"
        );
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["reason"], reason, "{name}: {json}");
    }
}

#[tokio::test]
async fn bearer_tokens_are_ignored_when_bearer_is_off() {
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    let token = gw.idp.mint_id_token(USER, None, serde_json::Map::new());
    let response = send(
        gw.fresh_http1()
            .get(gw.url("/api/data"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(response.status(), 401);
    assert!(response
        .headers()
        .get("www-authenticate")
        .is_some_and(|v| !v.to_str().unwrap().contains("invalid_token")));
}

#[tokio::test]
async fn the_assertion_verifies_with_the_published_key_and_is_reused() {
    let upstream = echo_upstream().await;
    let gw = gateway(upstream).start().await;
    let client = gw.http1();
    let jwks: jsonwebtoken::jwk::JwkSet = send(client.get(gw.url("/.gateway/jwks.json")))
        .await
        .json()
        .await
        .unwrap();
    let mut assertions = Vec::new();
    for _ in 0..2 {
        let echo = json_of(client.get(gw.url("/"))).await;
        assertions.push(echoed(&echo, "x-gateway-assertion")[0].to_string());
    }
    assert_eq!(
        assertions[0], assertions[1],
        "reused within its window, not signed per request"
    );
    let header = jsonwebtoken::decode_header(&assertions[0]).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("kid published");
    // jsonwebtoken verifies with the gateway's ring provider (no backend feature).
    oidc_gateway::jwt_ring::install();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[format!("http://{upstream}")]);
    validation.set_issuer(&["oidc-gateway"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &assertions[0],
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .expect("assertion verifies with the published key")
    .claims;
    assert_eq!(claims["name"], USER);
    assert_eq!(claims["sub"], gw.idp.subject(USER));
    assert_eq!(claims["oid"], gw.idp.object_id(USER));
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(
        claims["groups"],
        serde_json::json!(["0b5e7a3c-admins", "5f1d2e4b-users"])
    );
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(lifetime <= 60, "short-lived: {lifetime}s");
}

#[tokio::test]
async fn login_starts_and_signed_in_traffic_are_never_rate_limited() {
    // The tightest limits: one sign-in, one failure. The harness's sign-in used them.
    let gw = gateway(echo_upstream().await)
        .section("[rate_limit]\nlogin_per_minute = 1\nlogin_burst = 1\nfailed_per_minute = 1\nfailed_burst = 1")
        .start()
        .await;
    let anonymous = gw.fresh_browser();
    for _ in 0..30 {
        let start = send(navigate(anonymous.get(gw.url("/x")))).await;
        assert_eq!(
            start.status(),
            302,
            "a login start costs nothing: never limited"
        );
    }
    for _ in 0..30 {
        assert_eq!(status_of(gw.http1().get(gw.url("/"))).await, 200);
    }
}

// ---- unspoofable identity: object ids, vouched-for addresses, the user claim ----

/// `GET /` of `browser` is refused with 403: the JSON answer.
async fn refused(gw: &TestGateway, browser: &reqwest::Client) -> serde_json::Value {
    let denied = send(browser.get(gw.url("/"))).await;
    assert_eq!(denied.status(), 403);
    denied.json().await.unwrap()
}

/// `GET /` of `browser` with `headers` reaches the upstream: what it received.
async fn forwarded(
    gw: &TestGateway,
    browser: &reqwest::Client,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let mut request = browser.get(gw.url("/"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = send(request).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// A gateway with config `sections` whose IdP signs in `user` (not yet signed in).
async fn gateway_for(user: &str, sections: &str) -> TestGateway {
    let user = user.to_string();
    gateway(echo_upstream().await)
        .idp(move |o| o.auto_login = Some(user))
        .section(sections)
        .anonymous()
        .start()
        .await
}

#[tokio::test]
async fn a_forged_email_of_an_allowed_domain_is_refused_with_its_reason() {
    // nOAuth: an admin of the attacker's tenant sets the email of their own
    // account to an address of the allowed domain; Entra sends no xms_edov.
    const MALLORY: &str = "mallory@evil.example";
    let gw = gateway_for(MALLORY, "[access]\nemail_domains = [\"contoso.example\"]").await;
    gw.idp.set_unverified_email(MALLORY, "boss@contoso.example");
    let json = refused(&gw, &gw.signed_in_browser().await).await;
    assert_eq!(json["reason"], "unverified_address", "{json}");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("not one Microsoft vouches for"),
        "{json}"
    );

    // The same address with the domain owner's verification is one Entra vouches for.
    let mut verified = serde_json::Map::new();
    verified.insert("email".into(), "boss@contoso.example".into());
    verified.insert("xms_edov".into(), true.into());
    gw.idp.set_user_override(MALLORY, Some(verified));
    forwarded(&gw, &gw.signed_in_browser().await, &[]).await;
}

#[tokio::test]
async fn a_guests_home_address_does_not_satisfy_a_domain_rule() {
    let gw = gateway_for(USER, "[access]\nemail_domains = [\"contoso.example\"]").await;
    let mut guest = serde_json::Map::new();
    guest.insert(
        "idp".into(),
        "https://sts.windows.net/99999999-8888-7777-6666-555555555555/".into(),
    );
    gw.idp.set_user_override(USER, Some(guest));
    let json = refused(&gw, &gw.signed_in_browser().await).await;
    assert_eq!(json["reason"], "unverified_address", "{json}");
}

#[tokio::test]
async fn users_are_matched_by_object_id_and_oid_and_tid_reach_the_upstream() {
    let probe = gateway_for(USER, "").await;
    let oid = probe.idp.object_id(USER);
    let gw = gateway_for(USER, &format!("[access]\nusers = [\"{oid}\"]")).await;
    let echo = forwarded(
        &gw,
        &gw.signed_in_browser().await,
        &[
            ("X-Forwarded-Oid", "00000000-0000-0000-0000-000000000bad"),
            ("x_forwarded_tid", "00000000-0000-0000-0000-000000000bad"),
        ],
    )
    .await;
    assert_eq!(echoed(&echo, "x-forwarded-oid"), [oid.as_str()]);
    assert_eq!(echoed(&echo, "x-forwarded-tid"), [TENANT]);
    assert!(echoed(&echo, "x_forwarded_tid").is_empty(), "{echo}");

    // Another user of the same tenant is not that object.
    let other = gateway_for(
        "bob@contoso.example",
        &format!("[access]\nusers = [\"{oid}\"]"),
    )
    .await;
    let json = refused(&other, &other.signed_in_browser().await).await;
    assert_eq!(json["reason"], "user", "{json}");
}

#[tokio::test]
async fn user_claim_oid_fills_the_user_header_under_configured_names() {
    let gw = gateway_for(
        USER,
        "[headers]\nuser_claim = \"oid\"\noid = \"X-Entra-Object\"\ntid = \"X-Entra-Tenant\"",
    )
    .await;
    let oid = gw.idp.object_id(USER);
    let echo = forwarded(
        &gw,
        &gw.signed_in_browser().await,
        &[("x-entra-object", "spoofed")],
    )
    .await;
    assert_eq!(echoed(&echo, "x-forwarded-user"), [oid.as_str()]);
    assert_eq!(echoed(&echo, "x-entra-object"), [oid.as_str()]);
    assert_eq!(echoed(&echo, "x-entra-tenant"), [TENANT]);
    assert!(echoed(&echo, "x-forwarded-oid").is_empty(), "{echo}");
}

#[tokio::test]
async fn a_token_without_the_user_claim_is_refused_at_sign_in_with_its_name() {
    // The development IdP's ID tokens carry no upn (an optional claim in Entra).
    let gw = gateway_for(USER, "[headers]\nuser_claim = \"upn\"").await;
    let browser = gw.fresh_browser();
    let response = gw.sign_in(&browser, "/").await;
    assert_eq!(response.status(), 403);
    assert!(set_cookies(&response)
        .iter()
        .all(|c| !c.starts_with("__Host-oidc-gateway=")));
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "user_claim_missing", "{json}");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("claim `upn` (headers.user_claim) is missing"),
        "{json}"
    );
    assert_eq!(status_of(browser.get(gw.url("/"))).await, 401);
}
