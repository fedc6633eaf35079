//! Sign-in flows against the mock Entra IdP: deep links, form_post, several
//! tabs, API clients, forged and replayed callbacks, sign-out, sessions.

mod common;

use std::time::Duration;

use common::*;
use oidc_gateway::devidp::{DevIdp, DevIdpOptions};

const BOUND: Duration = Duration::from_secs(20);

#[tokio::test]
async fn deep_link_login_returns_to_the_exact_page_signed_in() {
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    let browser = gw.fresh_browser();
    let first = send(navigate(
        browser.get(gw.url("/console/devices?page=2&q=a%20b")),
    ))
    .await;
    assert_eq!(first.status(), 302);
    let authorize = location(&first);
    assert!(authorize.starts_with(&gw.idp.base_url()), "{authorize}");
    assert_eq!(
        query_param(&authorize, "response_type").as_deref(),
        Some("code")
    );
    assert_eq!(
        query_param(&authorize, "client_id").as_deref(),
        Some(CLIENT_ID)
    );
    assert_eq!(
        query_param(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(&authorize, "code_challenge").map(|c| c.len()),
        Some(43)
    );
    assert!(query_param(&authorize, "state").is_some_and(|s| s.len() >= 43));
    assert!(query_param(&authorize, "nonce").is_some_and(|s| s.len() >= 43));
    assert_eq!(
        query_param(&authorize, "response_mode").as_deref(),
        Some("query")
    );
    assert_eq!(
        query_param(&authorize, "redirect_uri").unwrap(),
        format!("https://localhost:{}/api/oidc/callback", gw.addr.port())
    );
    let scope = query_param(&authorize, "scope").unwrap();
    assert!(scope.split(' ').any(|s| s == "openid"), "{scope}");
    // Sessions are not refreshed: no long-lived refresh token is asked for by default.
    assert!(!scope.split(' ').any(|s| s == "offline_access"), "{scope}");

    let callback = gw.follow_login(&browser, first).await;
    assert_eq!(callback.status(), 303);
    assert_eq!(location(&callback), "/console/devices?page=2&q=a%20b");
    let session_cookie = set_cookies(&callback)
        .into_iter()
        .find(|c| c.starts_with("__Host-oidc-gateway="))
        .expect("session cookie set");
    for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(
            session_cookie.contains(attribute),
            "{attribute} missing: {session_cookie}"
        );
    }
    assert!(!session_cookie.contains("Domain"), "{session_cookie}");

    let page = json_of(browser.get(gw.url("/console/devices?page=2&q=a%20b"))).await;
    assert_eq!(page["uri"], "/console/devices?page=2&q=a%20b");
    assert_eq!(echoed(&page, "x-forwarded-user"), [USER]);
    let cookies = echoed(&page, "cookie");
    assert!(
        cookies.iter().all(|c| !c.contains("oidc-gateway")),
        "gateway cookies leaked upstream: {cookies:?}"
    );
}

#[tokio::test]
async fn form_post_login_completes_with_a_cross_site_capable_flow_cookie() {
    let gw = gateway(echo_upstream().await)
        .oidc(r#"response_mode = "form_post""#)
        .anonymous()
        .start()
        .await;
    let browser = gw.fresh_browser();
    let start = send(browser.get(format!("{}?rd=%2Freport", gw.url("/.gateway/sign_in")))).await;
    assert_eq!(start.status(), 302);
    let flow_cookie = set_cookies(&start)
        .into_iter()
        .find(|c| c.starts_with("__Host-oidc-gateway-flow-"))
        .expect("flow cookie");
    // The IdP posts back cross-site: a Lax cookie would not come along.
    assert!(
        flow_cookie.contains("SameSite=None") && flow_cookie.contains("Secure"),
        "{flow_cookie}"
    );
    let authorize = location(&start);
    assert_eq!(
        query_param(&authorize, "response_mode").as_deref(),
        Some("form_post")
    );

    let form_page = send(browser.get(authorize)).await.text().await.unwrap();
    let field = |name: &str| {
        let marker = format!("name=\"{name}\" value=\"");
        let start = form_page
            .find(&marker)
            .unwrap_or_else(|| panic!("{name} in {form_page}"))
            + marker.len();
        let end = form_page[start..].find('"').unwrap() + start;
        form_page[start..end].replace("&amp;", "&")
    };
    let callback = send(
        browser
            .post(gw.url("/api/oidc/callback"))
            .form(&[("code", field("code")), ("state", field("state"))]),
    )
    .await;
    assert_eq!(callback.status(), 303);
    assert_eq!(location(&callback), "/report");
    let me = json_of(browser.get(gw.url("/.gateway/me"))).await;
    assert_eq!(me["user"], USER);
}

#[tokio::test]
async fn logins_in_several_tabs_all_succeed_in_any_order() {
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    let browser = gw.fresh_browser();
    // Three tabs start logging in before any of them finishes.
    let mut callbacks = Vec::new();
    for tab in ["/tab-a", "/tab-b", "/tab-c"] {
        let start = send(navigate(browser.get(gw.url(tab)))).await;
        assert_eq!(start.status(), 302);
        let idp = send(browser.get(location(&start))).await;
        assert_eq!(idp.status(), 302);
        callbacks.push((tab, location(&idp)));
    }
    // …and they come back in reverse order.
    for (tab, callback) in callbacks.into_iter().rev() {
        let done = send(browser.get(callback)).await;
        assert_eq!(done.status(), 303, "tab {tab}");
        assert_eq!(location(&done), tab);
    }
}

#[tokio::test]
async fn login_flow_cookies_are_capped_oldest_first() {
    let gw = gateway(echo_upstream().await)
        .session("max_login_flows = 2")
        .anonymous()
        .start()
        .await;
    let browser = gw.fresh_browser();
    let mut callbacks = Vec::new();
    for tab in ["/one", "/two", "/three"] {
        let start = send(navigate(browser.get(gw.url(tab)))).await;
        let idp = send(browser.get(location(&start))).await;
        callbacks.push(location(&idp));
    }
    // The oldest flow was dropped to keep at most two: its callback is refused.
    let oldest = send(browser.get(&callbacks[0])).await;
    assert_eq!(oldest.status(), 400);
    for callback in &callbacks[1..] {
        assert_eq!(status_of(browser.get(callback)).await, 303);
    }
}

#[tokio::test]
async fn api_clients_xhr_and_websockets_get_401_json_never_a_redirect() {
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "xhr",
            vec![
                ("x-requested-with", "XMLHttpRequest"),
                ("accept", "text/html"),
            ],
        ),
        (
            "fetch",
            vec![
                ("sec-fetch-mode", "cors"),
                ("sec-fetch-dest", "empty"),
                ("accept", "*/*"),
            ],
        ),
        ("api", vec![("accept", "application/json")]),
        ("plain", vec![]),
        (
            "websocket",
            vec![
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("accept", "text/html"),
            ],
        ),
    ];
    // HTTP/1.1: an Upgrade header means nothing over HTTP/2.
    let client = gw.fresh_http1();
    for (name, headers) in cases {
        let mut request = client.get(gw.url("/api/peers?x=1"));
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = send(request).await;
        assert_eq!(response.status(), 401, "{name}");
        assert!(!response.headers().contains_key("location"), "{name}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthenticated", "{name}");
        let login_url = body["login_url"].as_str().unwrap();
        assert_eq!(
            login_url,
            format!(
                "https://localhost:{}/.gateway/sign_in?rd=%2Fapi%2Fpeers%3Fx%3D1",
                gw.addr.port()
            ),
            "{name}"
        );
    }
    // A POST, even from a browser, is never redirected (the body would be lost).
    let post = send(navigate(client.post(gw.url("/form")))).await;
    assert_eq!(post.status(), 401);
}

#[tokio::test]
async fn callback_with_a_state_this_browser_never_started_is_rejected() {
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    let browser = gw.fresh_browser();
    // A state that was never issued.
    let forged = send(browser.get(
        gw.url("/api/oidc/callback?code=abc&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ))
    .await;
    assert_eq!(forged.status(), 400);
    let body: serde_json::Value = forged.json().await.unwrap();
    assert_eq!(body["error"], "login_state_mismatch");
    assert!(body["login_url"].is_string(), "offers a way to try again");
    // No state at all.
    let stateless = send(browser.get(gw.url("/api/oidc/callback?code=abc"))).await;
    assert_eq!(stateless.status(), 400);
    // Our own flow cookie, but the state altered.
    let start = send(browser.get(gw.url("/.gateway/sign_in"))).await;
    let idp = send(browser.get(location(&start))).await;
    let callback = location(&idp);
    let state = query_param(&callback, "state").unwrap();
    let mut altered = state.clone();
    altered.replace_range(20..21, if &state[20..21] == "A" { "B" } else { "A" });
    let tampered = send(browser.get(callback.replace(&state, &altered))).await;
    assert_eq!(tampered.status(), 400);
    assert_eq!(
        gw.idp.token_requests(),
        0,
        "no code was redeemed for a foreign state"
    );
}

#[tokio::test]
async fn login_csrf_an_attackers_callback_does_not_sign_the_victim_in() {
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    // The attacker starts a login in their own browser and stops at the callback URL…
    let attacker = gw.fresh_browser();
    let start = send(attacker.get(gw.url("/.gateway/sign_in"))).await;
    let idp = send(attacker.get(location(&start))).await;
    let trap = location(&idp);
    // …and makes the victim's browser open it.
    let victim = gw.fresh_browser();
    let response = send(victim.get(&trap)).await;
    assert_eq!(response.status(), 400);
    assert!(set_cookies(&response)
        .iter()
        .all(|c| !c.starts_with("__Host-oidc-gateway=")));
    let me = send(victim.get(gw.url("/.gateway/me"))).await;
    assert_eq!(me.status(), 401);
}

#[tokio::test]
async fn a_replayed_callback_is_refused_and_creates_no_session() {
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    let browser = gw.fresh_browser();
    let start = send(browser.get(gw.url("/.gateway/sign_in"))).await;
    let flow_cookie = set_cookies(&start)
        .into_iter()
        .find(|c| c.starts_with("__Host-oidc-gateway-flow-"))
        .unwrap();
    let flow_pair = flow_cookie.split(';').next().unwrap().to_string();
    let idp = send(browser.get(location(&start))).await;
    let callback = location(&idp);
    assert_eq!(status_of(browser.get(&callback)).await, 303);

    // Replay in the same browser: the flow cookie is gone.
    let again = send(browser.get(&callback)).await;
    assert_eq!(again.status(), 400);
    // Replay with the old flow cookie restored: the IdP refuses the used code.
    let replayer = gw.fresh_browser();
    let replay = send(replayer.get(&callback).header("cookie", flow_pair)).await;
    assert_eq!(replay.status(), 400);
    let replay_cookies = set_cookies(&replay);
    let body: serde_json::Value = replay.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(replay_cookies
        .iter()
        .all(|c| !c.starts_with("__Host-oidc-gateway=") || c.contains("Max-Age=0")));
    assert_eq!(gw.idp.token_requests(), 2);
}

#[tokio::test]
async fn return_to_is_always_a_same_origin_path() {
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    for rd in [
        "//evil.example/x",
        "/\\evil.example",
        "https://evil.example/",
        "/%2F%2Fevil.example",
        "/%09/evil.example",
    ] {
        let browser = gw.fresh_browser();
        let done = gw.sign_in(&browser, rd).await;
        assert_eq!(done.status(), 303, "{rd}");
        assert_eq!(location(&done), "/", "rd={rd:?} must not leave the origin");
    }
}

#[tokio::test]
async fn sign_out_ends_the_session_here_and_at_the_idp() {
    let gw = gateway(echo_upstream().await).start().await;
    let old_cookie = gw.session_cookie();
    let browser = gw.http1();
    assert_eq!(status_of(browser.get(gw.url("/.gateway/me"))).await, 200);

    let out = send(
        browser
            .get(gw.url("/.gateway/sign_out"))
            // The console's own sign-out link, as a browser follows it.
            .header("sec-fetch-site", "same-origin"),
    )
    .await;
    assert_eq!(out.status(), 302);
    let end_session = location(&out);
    assert!(end_session.contains("/oauth2/v2.0/logout"), "{end_session}");
    let hint = query_param(&end_session, "id_token_hint").expect("id_token_hint sent");
    assert!(set_cookies(&out)
        .iter()
        .any(|c| c.starts_with("__Host-oidc-gateway=;") && c.contains("Max-Age=0")));
    send(browser.get(end_session)).await;
    assert_eq!(gw.idp.logouts(), vec![Some(hint)]);

    // The old cookie is dead server-side, even if a client kept it.
    let replayed = send(
        gw.fresh_browser()
            .get(gw.url("/api/data"))
            .header("cookie", old_cookie),
    )
    .await;
    assert_eq!(replayed.status(), 401);
}

#[tokio::test]
async fn signing_in_again_replaces_the_previous_session() {
    let gw = gateway(echo_upstream().await).start().await;
    let first = gw.session_cookie();
    let again = gw.sign_in(&gw.http1(), "/").await;
    assert_eq!(again.status(), 303);
    let second = gw.session_cookie();
    assert_ne!(first, second, "a new session id after a new login");
    let stale = send(gw.fresh_browser().get(gw.url("/")).header("cookie", first)).await;
    assert_eq!(stale.status(), 401, "the previous session must be gone");
}

#[tokio::test]
async fn me_describes_the_session_and_401s_without_one() {
    let gw = gateway(echo_upstream().await)
        .idp(|o| o.email_claim = true)
        .start()
        .await;
    let me = json_of(gw.http2().get(gw.url("/.gateway/me"))).await;
    assert_eq!(me["user"], USER);
    assert_eq!(me["tid"], TENANT);
    assert_eq!(
        me["groups"],
        serde_json::json!(["0b5e7a3c-admins", "5f1d2e4b-users"])
    );
    assert!(me["email"].is_string());
    assert!(me["oid"].is_string());
    let anonymous = send(gw.fresh_browser().get(gw.url("/.gateway/me"))).await;
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn users_without_email_sign_in_and_claims_cannot_inject_headers() {
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    let mut claims = serde_json::Map::new();
    claims.insert(
        "preferred_username".into(),
        "mallory@contoso.example".into(),
    );
    claims.remove("email");
    gw.idp.set_user_override(USER, Some(claims.clone()));
    let browser = gw.fresh_browser();
    assert_eq!(gw.sign_in(&browser, "/").await.status(), 303);
    let echo = json_of(browser.get(gw.url("/"))).await;
    assert_eq!(
        echoed(&echo, "x-forwarded-user"),
        ["mallory@contoso.example"]
    );
    assert!(echoed(&echo, "x-forwarded-email").is_empty());

    // A claim that would split headers is refused at sign-in, not cleaned
    // (the assertion would carry the raw value): no session at all.
    claims.insert(
        "preferred_username".into(),
        "mallory\r\nX-Admin: yes".into(),
    );
    gw.idp.set_user_override(USER, Some(claims));
    let browser = gw.fresh_browser();
    let refused = gw.sign_in(&browser, "/").await;
    assert_eq!(refused.status(), 403);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("claim `preferred_username` contains a control character"));
    assert_eq!(status_of(browser.get(gw.url("/"))).await, 401);
}

#[tokio::test]
async fn access_token_is_passed_upstream_only_when_configured() {
    let gw = gateway(echo_upstream().await).start().await;
    let echo = json_of(
        gw.http1()
            .get(gw.url("/"))
            .header("authorization", "Bearer client-own"),
    )
    .await;
    assert_eq!(
        echoed(&echo, "authorization"),
        ["Bearer client-own"],
        "off by default: the client's header passes"
    );

    let passing = gateway(echo_upstream().await)
        .section("[headers]\npass_access_token = true")
        .start()
        .await;
    let echo = json_of(passing.http1().get(passing.url("/"))).await;
    let auth = echoed(&echo, "authorization");
    assert_eq!(auth.len(), 1);
    assert!(auth[0].starts_with("Bearer ey"), "{auth:?}");
}

#[tokio::test]
async fn idp_down_at_startup_means_not_ready_then_ready_when_it_appears() {
    // An address for the IdP, with nothing answering there yet.
    let reserved = released_port().await;
    let options = DevIdpOptions {
        tenant_id: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        auto_login: Some(USER.into()),
        ..idp_options()
    };
    let issuer = format!("http://{reserved}/{TENANT}/v2.0");
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &dir,
        &format!("http://{}", echo_upstream().await),
        &issuer,
        &Extra::default(),
    );
    let settings = std::sync::Arc::new(oidc_gateway::config::load_str(&text, &[]).unwrap());
    oidc_gateway::tls::install_crypto_provider();
    let server = oidc_gateway::server::start(settings)
        .await
        .expect("starts without its IdP");
    let cert =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("gateway.crt")).unwrap())
            .unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(cert)
        .resolve("localhost", server.https_addr)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let url = |p: &str| format!("https://localhost:{}{p}", server.https_addr.port());

    let ready = send(client.get(url("/readyz"))).await;
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(
        body["reasons"][0].as_str().unwrap().starts_with("oidc:"),
        "{body}"
    );
    assert_eq!(
        status_of(client.get(url("/healthz"))).await,
        200,
        "alive while not ready"
    );
    let login = send(navigate(client.get(url("/console")))).await;
    assert_eq!(login.status(), 503, "a clear 503, not a crash or a 500");

    let idp = DevIdp::start_on(options, reserved).await.unwrap();
    tokio::time::timeout(Duration::from_secs(40), server.readiness.wait_ready())
        .await
        .expect("ready once the IdP answers (retried with backoff)");
    assert_eq!(status_of(client.get(url("/readyz"))).await, 200);
    let login = send(navigate(client.get(url("/console")))).await;
    assert_eq!(login.status(), 302);
    assert!(location(&login).starts_with(&idp.base_url()));
    tokio::time::timeout(BOUND, server.shutdown())
        .await
        .unwrap();
}

// ---- The sign-in limiter: what costs, per address (IPv6 by /64), and over all ----

/// A browser of its own whose requests reach the gateway through a trusted
/// proxy on behalf of `client` (`X-Forwarded-For`).
fn browser_of(gw: &TestGateway, client: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", client.parse().expect("address"));
    client_builder(&gw.cert_pem, gw.addr)
        .cookie_provider(std::sync::Arc::new(reqwest::cookie::Jar::default()))
        .default_headers(headers)
        .build()
        .expect("client")
}

/// Asserts a 429 from the limit named by `code`, with a `Retry-After` of at
/// most `max_wait` seconds that the message repeats.
async fn assert_limited(response: reqwest::Response, code: &str, max_wait: u64) {
    assert_eq!(response.status(), 429, "{code}");
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=max_wait).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("Try again in {retry_after} seconds")),
        "{message}"
    );
}

#[tokio::test]
async fn five_hundred_people_behind_one_address_all_sign_in_with_the_default_limits() {
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    const PEOPLE: usize = 500;
    const BROWSERS: usize = 10;
    // Ten browsers at a time on 127.0.0.1, each signing in a new person after the other.
    let gw = std::sync::Arc::new(gw);
    let mut tasks = Vec::new();
    for _ in 0..BROWSERS {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..PEOPLE / BROWSERS {
                let browser = gw.fresh_browser();
                statuses.push(gw.sign_in(&browser, "/").await.status().as_u16());
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(task.await.unwrap());
    }
    assert_eq!(statuses.len(), PEOPLE);
    let refused: Vec<_> = statuses.iter().filter(|s| **s != 303).collect();
    assert!(refused.is_empty(), "{} refused: {refused:?}", refused.len());
    assert_eq!(gw.idp.token_requests(), PEOPLE);
}

#[tokio::test]
async fn failed_callbacks_trip_the_per_address_limit_before_anything_is_exchanged() {
    let gw = gateway(echo_upstream().await)
        .anonymous()
        .server("trusted_proxies = [\"127.0.0.1\"]")
        .section("[rate_limit]\nfailed_per_minute = 1\nfailed_burst = 3")
        .start()
        .await;
    let forged = "/api/oidc/callback?code=abc&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let attacker = browser_of(&gw, "198.51.100.7");
    for _ in 0..3 {
        let response = send(attacker.get(gw.url(forged))).await;
        assert_eq!(response.status(), 400);
    }
    assert_limited(
        send(attacker.get(gw.url(forged))).await,
        "too_many_failed_logins",
        60,
    )
    .await;
    // A real sign-in from that address is refused too, before its code is redeemed…
    let refused = gw.sign_in(&attacker, "/").await;
    assert_limited(refused, "too_many_failed_logins", 60).await;
    assert_eq!(gw.idp.token_requests(), 0);
    // …while another address signs in.
    assert_eq!(
        gw.sign_in(&browser_of(&gw, "198.51.100.8"), "/")
            .await
            .status(),
        303
    );
}

#[tokio::test]
async fn ipv6_clients_share_the_budget_of_their_64_and_another_64_has_its_own() {
    // Over ::1: the gateway listens there and trusts ::1 as the proxy.
    let gw = gateway(echo_upstream().await)
        .anonymous()
        .listen("[::1]:0".parse().unwrap())
        .server("trusted_proxies = [\"::1\"]")
        .section("[rate_limit]\nlogin_per_minute = 1\nlogin_burst = 2")
        .start()
        .await;
    assert!(gw.addr.is_ipv6());
    for client in ["2001:db8:1:2::a", "2001:db8:1:2:ffff::b"] {
        let response = gw.sign_in(&browser_of(&gw, client), "/").await;
        assert_eq!(response.status(), 303, "{client}");
    }
    let same_64 = gw.sign_in(&browser_of(&gw, "2001:db8:1:2::c"), "/").await;
    assert_limited(same_64, "too_many_logins", 60).await;
    let next_64 = gw.sign_in(&browser_of(&gw, "2001:db8:1:3::a"), "/").await;
    assert_eq!(next_64.status(), 303, "another /64 has its own budget");
    // ::1 itself (no proxy header) counts in ::/64, not in anyone's above.
    let direct = gw.sign_in(&gw.fresh_browser(), "/").await;
    assert_eq!(direct.status(), 303);
    assert_eq!(
        gw.idp.token_requests(),
        4,
        "the refused code was not redeemed"
    );
}

#[tokio::test]
async fn the_global_ceiling_holds_over_all_addresses() {
    let gw = gateway(echo_upstream().await)
        .anonymous()
        .server("trusted_proxies = [\"127.0.0.1\"]")
        .section("[rate_limit]\nglobal_per_minute = 1\nglobal_burst = 2")
        .start()
        .await;
    for client in ["192.0.2.1", "192.0.2.2"] {
        let response = gw.sign_in(&browser_of(&gw, client), "/").await;
        assert_eq!(response.status(), 303, "{client}");
    }
    let third = gw.sign_in(&browser_of(&gw, "192.0.2.3"), "/").await;
    assert_limited(third, "sign_in_busy", 60).await;
    assert_eq!(gw.idp.token_requests(), 2);
}
