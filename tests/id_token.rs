mod common;

// ID-token validation at the callback, end to end: the mock Entra IdP issues
// (tweaked) ID tokens, the gateway must accept exactly the valid ones. A
// rejected token answers `502 invalid_id_token`, sets no session cookie, and
// the browser stays signed out. Also: JWKS re-fetch on an unknown `kid`,
// multi-tenant issuers, group overage, token-endpoint failures and IdP error
// redirects.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use oidc_gateway::devidp::{SignAs, TokenEndpointMode};
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};

/// Where every test login wants to go back to.
const RETURN_TO: &str = "/deep?x=1";
/// Bound for anything that would otherwise hang when the behaviour is broken.
const BOUND: Duration = Duration::from_secs(30);
/// A tenant that is not the IdP's.
const OTHER_TENANT: &str = "99999999-8888-7777-6666-555555555555";

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {BOUND:?}"))
}

/// Seconds since the Unix epoch, for exp/iat/nbf.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// The callback's answer to one login.
struct Login {
    status: StatusCode,
    location: Option<String>,
    /// The `__Host-oidc-gateway=…` Set-Cookie, if the answer sets a session.
    session_cookie: Option<String>,
    content_type: String,
    body: String,
    /// The body as JSON (Null when it is not JSON).
    json: Value,
    /// The browser that logged in (its jar holds whatever the gateway set).
    client: reqwest::Client,
}

async fn read_login(response: reqwest::Response, client: reqwest::Client) -> Login {
    assert_eq!(
        response.url().path(),
        "/api/oidc/callback",
        "the login reached the callback"
    );
    let status = response.status();
    let headers = response.headers().clone();
    let location = headers
        .get(LOCATION)
        .map(|v| v.to_str().expect("ascii location").to_string());
    let session_cookie = headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii cookie").to_string())
        .find(|c| c.starts_with("__Host-oidc-gateway="));
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let body = response.text().await.expect("callback body");
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    Login {
        status,
        location,
        session_cookie,
        content_type,
        body,
        json,
        client,
    }
}

/// A login in a new browser (no `Accept`: error answers are JSON).
async fn login(gw: &TestGateway) -> Login {
    let client = gw.fresh_browser();
    let response = bounded("login", gw.sign_in(&client, RETURN_TO)).await;
    read_login(response, client).await
}

async fn anonymous_gateway() -> TestGateway {
    gateway(echo_upstream().await).anonymous().start().await
}

/// Every ID token from now on goes through `tweak` (header, claims) → how to sign.
fn set_tweak<F>(gw: &TestGateway, tweak: F)
where
    F: Fn(&mut Map<String, Value>, &mut Map<String, Value>) -> SignAs + Send + Sync + 'static,
{
    gw.idp.set_token_tweak(Some(Arc::new(tweak)));
}

/// A new gateway + IdP whose ID tokens go through `tweak`, and one login.
async fn login_with_tweak<F>(tweak: F) -> (Login, TestGateway)
where
    F: Fn(&mut Map<String, Value>, &mut Map<String, Value>) -> SignAs + Send + Sync + 'static,
{
    let gw = anonymous_gateway().await;
    set_tweak(&gw, tweak);
    let login = login(&gw).await;
    (login, gw)
}

/// A tweak that only rewrites claims and signs with the active key.
fn claims_tweak<F>(
    change: F,
) -> impl Fn(&mut Map<String, Value>, &mut Map<String, Value>) -> SignAs + Send + Sync + 'static
where
    F: Fn(&mut Map<String, Value>) + Send + Sync + 'static,
{
    move |_header, claims| {
        change(claims);
        SignAs::ActiveKey
    }
}

/// A tweak that sets the claims of `claims` (a JSON object), each replacing the IdP's.
fn set_claims(
    claims: Value,
) -> impl Fn(&mut Map<String, Value>, &mut Map<String, Value>) -> SignAs + Send + Sync + 'static {
    let Value::Object(claims) = claims else {
        panic!("set_claims takes a JSON object, not {claims}");
    };
    claims_tweak(move |token| token.extend(claims.clone()))
}

/// A tweak that leaves claim `name` out of the ID token.
fn remove_claim(
    name: &'static str,
) -> impl Fn(&mut Map<String, Value>, &mut Map<String, Value>) -> SignAs + Send + Sync + 'static {
    claims_tweak(move |claims| {
        claims.remove(name);
    })
}

/// The login succeeded: 303 back to the return path with a session cookie, and
/// the browser's next request reaches the upstream as [`USER`].
async fn assert_signed_in(gw: &TestGateway, login: &Login) {
    assert_eq!(
        login.status,
        StatusCode::SEE_OTHER,
        "login accepted; body: {}",
        login.body
    );
    assert_eq!(login.location.as_deref(), Some(RETURN_TO));
    let cookie = login
        .session_cookie
        .as_deref()
        .expect("a session cookie is set");
    let value = cookie
        .split(';')
        .next()
        .and_then(|pair| pair.strip_prefix("__Host-oidc-gateway="))
        .unwrap_or_default();
    assert!(!value.is_empty(), "session cookie has a value: {cookie}");
    let response = bounded("GET /", login.client.get(gw.url("/")).send())
        .await
        .expect("GET /");
    assert_eq!(response.status(), 200, "the signed-in request is forwarded");
    let echo: Value = response.json().await.expect("echo JSON");
    assert_eq!(echo["uri"], "/");
    assert_eq!(echoed(&echo, "x-forwarded-user"), vec![USER]);
}

/// The browser is not signed in: its `GET /` never reaches the upstream.
async fn assert_not_forwarded(gw: &TestGateway, client: &reqwest::Client) {
    let response = bounded("GET /", client.get(gw.url("/")).send())
        .await
        .expect("GET /");
    let status = response.status();
    let body = response.text().await.expect("body");
    let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert!(
        json.get("headers").is_none() && json.get("uri").is_none(),
        "the upstream must not answer a signed-out browser: {status} {body}"
    );
    assert_eq!(status, 401, "signed out: 401; body: {body}");
    assert_eq!(json["error"], "unauthenticated");
}

/// The login failed with `status` and JSON `error` = `code`, no session.
async fn assert_failed(gw: &TestGateway, login: &Login, status: u16, code: &str) {
    assert_eq!(
        login.status.as_u16(),
        status,
        "login rejected with {status}; body: {}",
        login.body
    );
    assert_eq!(login.json["error"], code, "body: {}", login.body);
    assert!(
        login.session_cookie.is_none(),
        "no session cookie on a failed login: {:?}",
        login.session_cookie
    );
    assert!(
        login.location.is_none(),
        "no redirect on a failed login: {:?}",
        login.location
    );
    assert_not_forwarded(gw, &login.client).await;
}

/// The ID token was rejected for `reason` (the code the answer names).
async fn assert_rejected(gw: &TestGateway, login: &Login, reason: &str) {
    assert_failed(gw, login, 502, "invalid_id_token").await;
    let message = login.json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("(reason: {reason})")),
        "rejected for {reason}, not another reason: {}",
        login.body
    );
}

/// A new gateway + IdP whose ID token goes through `tweak`: its login is
/// rejected for `reason`.
async fn assert_tweak_rejected<F>(tweak: F, reason: &str)
where
    F: Fn(&mut Map<String, Value>, &mut Map<String, Value>) -> SignAs + Send + Sync + 'static,
{
    let (login, gw) = login_with_tweak(tweak).await;
    assert_rejected(&gw, &login, reason).await;
}

/// `/.gateway/me` of a signed-in browser.
async fn me(gw: &TestGateway, client: &reqwest::Client) -> Value {
    let response = bounded("me", client.get(gw.url("/.gateway/me")).send())
        .await
        .expect("me");
    assert_eq!(response.status(), 200, "me of a signed-in browser");
    response.json().await.expect("me JSON")
}

/// A browser that sends `Accept: text/html` on every request (error pages are HTML).
fn html_browser(gw: &TestGateway) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        ACCEPT,
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
            .parse()
            .expect("accept"),
    );
    client_builder(&gw.cert_pem, gw.addr)
        .cookie_store(true)
        .default_headers(headers)
        .build()
        .expect("client")
}

// ---------------------------------------------------------------- control

#[tokio::test]
async fn valid_login_is_accepted_and_forwards_the_user() {
    let gw = anonymous_gateway().await;
    let login = login(&gw).await;
    assert_signed_in(&gw, &login).await;
    let me = me(&gw, &login.client).await;
    assert_eq!(me["user"], USER);
    assert_eq!(me["tid"], TENANT);
    assert_eq!(me["subject"], gw.idp.subject(USER).as_str());
    assert_eq!(me["oid"], gw.idp.object_id(USER).as_str());
    assert_eq!(me["issuer"], gw.idp.token_issuer().as_str());
    assert_eq!(me["groups"], json!(["0b5e7a3c-admins", "5f1d2e4b-users"]));
}

// ---------------------------------------------------------------- signature

#[tokio::test]
async fn corrupt_signature_is_rejected() {
    assert_tweak_rejected(|_, _| SignAs::CorruptSignature, "bad_signature").await;
}

#[tokio::test]
async fn unsigned_alg_none_token_is_rejected() {
    assert_tweak_rejected(|_, _| SignAs::Unsigned, "algorithm_not_allowed").await;
}

#[tokio::test]
async fn hs256_signed_with_the_client_secret_is_rejected() {
    assert_tweak_rejected(
        |_, _| SignAs::Hs256(CLIENT_SECRET.as_bytes().to_vec()),
        "algorithm_not_allowed",
    )
    .await;
}

// ---------------------------------------------------------------- iss, aud

#[tokio::test]
async fn wrong_issuer_is_rejected() {
    let evil = set_claims(json!({"iss": "https://evil.example/v2.0"}));
    assert_tweak_rejected(evil, "wrong_issuer").await;
}

#[tokio::test]
async fn issuer_with_a_trailing_slash_is_rejected() {
    let gw = anonymous_gateway().await;
    let issuer = format!("{}/", gw.idp.token_issuer());
    set_tweak(&gw, set_claims(json!({ "iss": issuer })));
    let login = login(&gw).await;
    assert_rejected(&gw, &login, "wrong_issuer").await;
}

#[tokio::test]
async fn wrong_audience_is_rejected() {
    let other_app = set_claims(json!({"aud": "some-other-app"}));
    assert_tweak_rejected(other_app, "wrong_audience").await;
}

#[tokio::test]
async fn audience_array_containing_the_client_is_accepted() {
    let (login, gw) = login_with_tweak(set_claims(json!({
        "aud": [CLIENT_ID, "some-other-app"],
        "azp": CLIENT_ID,
    })))
    .await;
    assert_signed_in(&gw, &login).await;
}

// ---------------------------------------------------------------- time

#[tokio::test]
async fn expired_token_is_rejected() {
    let now = now();
    let expired = set_claims(json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}));
    assert_tweak_rejected(expired, "expired").await;
}

#[tokio::test]
async fn token_expired_within_the_clock_skew_is_accepted() {
    let now = now();
    let (login, gw) = login_with_tweak(set_claims(json!({
        "iat": now - 3600,
        "nbf": now - 3600,
        "exp": now - 30,
    })))
    .await;
    assert_signed_in(&gw, &login).await;
}

#[tokio::test]
async fn token_with_nbf_in_the_future_is_rejected() {
    let not_yet = set_claims(json!({"nbf": now() + 600}));
    assert_tweak_rejected(not_yet, "not_yet_valid").await;
}

#[tokio::test]
async fn token_with_fractional_nbf_in_the_future_is_rejected() {
    // RFC 7519 NumericDate may be non-integer.
    let not_yet = set_claims(json!({"nbf": now() as f64 + 600.5}));
    assert_tweak_rejected(not_yet, "not_yet_valid").await;
}

#[tokio::test]
async fn token_with_nbf_as_a_string_is_rejected() {
    // Not a NumericDate: fail closed rather than skip the check.
    let text_nbf = set_claims(json!({"nbf": (now() + 600).to_string()}));
    assert_tweak_rejected(text_nbf, "invalid_claim_format").await;
}

#[tokio::test]
async fn missing_iat_is_rejected() {
    assert_tweak_rejected(remove_claim("iat"), "missing_iat").await;
}

#[tokio::test]
async fn iat_far_in_the_future_is_rejected() {
    let now = now();
    let future = set_claims(json!({"iat": now + 3600, "exp": now + 7200}));
    assert_tweak_rejected(future, "issued_in_future").await;
}

// ---------------------------------------------------------------- sub, nonce

#[tokio::test]
async fn missing_sub_is_rejected() {
    assert_tweak_rejected(remove_claim("sub"), "missing_sub").await;
}

#[tokio::test]
async fn nonce_mismatch_is_rejected() {
    let other_nonce = claims_tweak(|claims| {
        assert!(claims.contains_key("nonce"), "the IdP echoes the nonce");
        claims.insert("nonce".into(), json!("not-the-nonce-of-this-login"));
    });
    assert_tweak_rejected(other_nonce, "nonce_mismatch").await;
}

#[tokio::test]
async fn missing_nonce_is_rejected() {
    assert_tweak_rejected(remove_claim("nonce"), "missing_nonce").await;
}

// ---------------------------------------------------------------- keys

#[tokio::test]
async fn unknown_kid_is_rejected_after_one_rate_limited_jwks_refetch() {
    let gw = anonymous_gateway().await;
    set_tweak(&gw, |_, _| SignAs::UnpublishedKey);
    let before = gw.idp.jwks_requests();

    let first = login(&gw).await;
    assert_rejected(&gw, &first, "unknown_key").await;
    assert_eq!(
        gw.idp.jwks_requests(),
        before + 1,
        "an unknown kid makes the gateway re-read the JWKS exactly once"
    );

    let second = login(&gw).await;
    assert_rejected(&gw, &second, "unknown_key").await;
    assert_eq!(
        gw.idp.jwks_requests(),
        before + 1,
        "another unknown kid right after does not re-read the JWKS again (rate limit)"
    );
}

#[tokio::test]
async fn rotated_signing_key_is_accepted_after_a_jwks_refetch() {
    let gw = anonymous_gateway().await;
    let old_kid = gw.idp.active_kid();
    let before = gw.idp.jwks_requests();

    gw.idp.rotate_keys();
    assert_ne!(gw.idp.active_kid(), old_kid, "the IdP signs with a new key");
    let rotated = login(&gw).await;
    assert_signed_in(&gw, &rotated).await;
    assert_eq!(
        gw.idp.jwks_requests(),
        before + 1,
        "the new kid was found by re-reading the JWKS once"
    );

    gw.idp.retire_old_keys();
    let after_retire = login(&gw).await;
    assert_signed_in(&gw, &after_retire).await;
}

// ---------------------------------------------------------------- multi-tenant

async fn multi_tenant_gateway(allowed: &[&str]) -> TestGateway {
    let list = allowed
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let gw = gateway(echo_upstream().await)
        .idp(|o| o.multi_tenant = true)
        .oidc(&format!("allowed_tenants = [{list}]"))
        .anonymous()
        .start()
        .await;
    assert!(
        gw.idp.issuer().ends_with("/organizations/v2.0"),
        "the gateway trusts the multi-tenant authority {}",
        gw.idp.issuer()
    );
    gw
}

#[tokio::test]
async fn multi_tenant_login_of_an_allowed_tenant_is_accepted() {
    let gw = multi_tenant_gateway(&[TENANT]).await;
    let login = login(&gw).await;
    assert_signed_in(&gw, &login).await;
    let me = me(&gw, &login.client).await;
    assert_eq!(me["tid"], TENANT);
    assert_eq!(me["issuer"], gw.idp.token_issuer().as_str());
}

#[tokio::test]
async fn multi_tenant_login_of_a_tenant_not_allowed_is_rejected() {
    let gw = multi_tenant_gateway(&[OTHER_TENANT]).await;
    let login = login(&gw).await;
    assert_rejected(&gw, &login, "tenant_not_allowed").await;
}

#[tokio::test]
async fn multi_tenant_issuer_of_another_tenant_than_tid_is_rejected() {
    // Both tenants are allowed: only the iss/tid mismatch can reject the token.
    let gw = multi_tenant_gateway(&[TENANT, OTHER_TENANT]).await;
    let other_issuer = format!("{}/{OTHER_TENANT}/v2.0", gw.idp.base_url());
    set_tweak(
        &gw,
        claims_tweak(move |claims| {
            assert_eq!(claims["tid"], TENANT);
            claims.insert("iss".into(), json!(other_issuer));
        }),
    );
    let login = login(&gw).await;
    assert_rejected(&gw, &login, "wrong_issuer").await;
}

#[tokio::test]
async fn multi_tenant_tid_that_is_not_a_guid_is_rejected() {
    // "contoso" is even allowed and the substituted issuer matches: only the
    // GUID rule of Microsoft's recipe can reject the token.
    let gw = multi_tenant_gateway(&[TENANT, "contoso"]).await;
    let issuer = format!("{}/contoso/v2.0", gw.idp.base_url());
    set_tweak(&gw, set_claims(json!({"tid": "contoso", "iss": issuer})));
    let login = login(&gw).await;
    assert_rejected(&gw, &login, "tenant_not_guid").await;
}

#[tokio::test]
async fn multi_tenant_token_signed_with_a_key_of_another_issuer_is_rejected() {
    let gw = multi_tenant_gateway(&[TENANT, OTHER_TENANT]).await;
    // The IdP now publishes its keys as another tenant's only; a rotation
    // makes the gateway read them (unknown kid).
    gw.idp
        .set_key_issuer(Some(format!("{}/{OTHER_TENANT}/v2.0", gw.idp.base_url())));
    gw.idp.rotate_keys();
    let login = login(&gw).await;
    assert_rejected(&gw, &login, "key_issuer_mismatch").await;
}

// ---------------------------------------------------------------- clouds

#[tokio::test]
async fn external_id_issuer_signs_in_as_a_single_tenant_issuer() {
    let issuer = format!("https://{TENANT}.ciamlogin.com/{TENANT}/v2.0");
    let gw = gateway(echo_upstream().await)
        .idp_declaring_issuer(&issuer)
        .anonymous()
        .start()
        .await;
    let login = login(&gw).await;
    assert_signed_in(&gw, &login).await;
    let me = me(&gw, &login.client).await;
    assert_eq!(me["issuer"], issuer.as_str());
    assert_eq!(me["tid"], TENANT);
}

/// A gateway with `oidc.cloud = "china"` whose IdP declares `issuer`.
async fn china_cloud_gateway(issuer: &str) -> TestGateway {
    gateway(echo_upstream().await)
        .idp_declaring_issuer(issuer)
        .oidc("cloud = \"china\"")
        .anonymous()
        .start()
        .await
}

#[tokio::test]
async fn china_cloud_issuer_signs_in_with_oidc_cloud_china() {
    let issuer = format!("https://login.partner.microsoftonline.cn/{TENANT}/v2.0");
    let gw = china_cloud_gateway(&issuer).await;
    let login = login(&gw).await;
    assert_signed_in(&gw, &login).await;
    assert_eq!(me(&gw, &login.client).await["issuer"], issuer.as_str());
}

#[tokio::test]
async fn token_of_the_global_cloud_is_rejected_by_a_china_cloud_gateway() {
    let gw = china_cloud_gateway(&format!("https://login.chinacloudapi.cn/{TENANT}/v2.0")).await;
    set_tweak(
        &gw,
        claims_tweak(|claims| {
            claims.insert(
                "iss".into(),
                json!(format!("https://login.microsoftonline.com/{TENANT}/v2.0")),
            );
        }),
    );
    let login = login(&gw).await;
    assert_rejected(&gw, &login, "wrong_issuer").await;
}

// ---------------------------------------------------------------- groups

#[tokio::test]
async fn group_overage_groups_come_from_graph_without_group_rules_too() {
    let (login, gw) = login_with_tweak(claims_tweak(|claims| {
        assert!(claims.remove("groups").is_some(), "the IdP sends groups");
        claims.insert("_claim_names".into(), json!({"groups": "src1"}));
        claims.insert(
            "_claim_sources".into(),
            json!({"src1": {"endpoint": "https://graph.windows.net/x/users/y/getMemberObjects"}}),
        );
    }))
    .await;
    assert_signed_in(&gw, &login).await;
    let me = me(&gw, &login.client).await;
    assert_eq!(me["user"], USER);
    assert_eq!(
        me["groups"],
        json!(gw.idp.options().groups),
        "the groups Graph lists: {me}"
    );
    let echo: Value = bounded("GET /", login.client.get(gw.url("/")).send())
        .await
        .expect("GET /")
        .json()
        .await
        .expect("echo");
    assert_eq!(
        echoed(&echo, "x-forwarded-groups"),
        vec![gw.idp.options().groups.join(",").as_str()],
        "{echo}"
    );
    assert_eq!(gw.idp.graph_requests(), 1);
}

// ---------------------------------------------------------------- Entra's errors

/// The value after `label` in an Entra error description.
fn labelled<'a>(description: &'a str, label: &str) -> Option<&'a str> {
    let at = description.find(label)? + label.len();
    description[at..].split_whitespace().next()
}

#[tokio::test]
async fn each_aadsts_error_page_says_what_to_do_with_microsofts_ids() {
    let gw = anonymous_gateway().await;
    // (code, the redirect (true) or the token endpoint, status, a phrase of the
    // user's advice, a phrase of the operator's fix)
    let cases: &[(u32, bool, u16, &str, &str)] = &[
        (50011, true, 400, "nothing you can do", "Redirect URIs"),
        (
            50105,
            true,
            403,
            "Ask the administrator for access",
            "Assignment required",
        ),
        (50196, true, 400, "wait a minute", "sign-in loop"),
        (53003, true, 403, "compliant device", "Conditional Access"),
        (54005, true, 400, "already used", "redeemed twice"),
        (
            65001,
            true,
            403,
            "cannot give yourself",
            "Grant admin consent",
        ),
        (700016, true, 502, "nothing you can do", "oidc.client_id"),
        (700016, false, 502, "nothing you can do", "oidc.client_id"),
        (
            7000215,
            false,
            503,
            "cannot sign anyone in",
            "Value (not its Secret ID)",
        ),
        (7000222, false, 503, "cannot sign anyone in", "has expired"),
    ];
    for &(code, redirect, status, user, operator) in cases {
        let text = format!("AADSTS{code}: what Microsoft says about {code}.");
        if redirect {
            gw.idp
                .set_authorize_error(Some(("invalid_request".into(), text.clone())));
        } else {
            gw.idp
                .set_token_error(Some((401, "invalid_client".into(), text.clone())));
        }
        let client = gw.fresh_browser();
        let response = bounded("login", gw.sign_in(&client, RETURN_TO)).await;
        let callback = response.url().clone();
        let login = read_login(response, client).await;
        gw.idp.set_authorize_error(None);
        gw.idp.set_token_error(None);

        let case = format!(
            "AADSTS{code} via the {}",
            if redirect {
                "redirect"
            } else {
                "token endpoint"
            }
        );
        assert_eq!(login.status.as_u16(), status, "{case}: {}", login.body);
        assert!(login.session_cookie.is_none(), "{case}");
        let json = &login.json;
        assert_eq!(json["aadsts"], format!("AADSTS{code}"), "{case}: {json}");
        let message = json["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(user),
            "{case}: user advice {user:?} in {message}"
        );
        assert!(
            message.contains(&text),
            "{case}: Microsoft's words in {message}"
        );
        let fix = json["operator_action"].as_str().unwrap_or_default();
        assert!(
            fix.contains(operator),
            "{case}: operator fix {operator:?} in {fix}"
        );
        let guid = |v: &Value| {
            v.as_str().is_some_and(|s| {
                s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
            })
        };
        assert!(
            guid(&json["trace_id"]) && guid(&json["correlation_id"]),
            "{case}: {json}"
        );
        assert!(
            json["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{case}"
        );
        if redirect {
            // The ids are Microsoft's, read from its error_description.
            let description =
                query_param(callback.as_str(), "error_description").unwrap_or_default();
            assert_eq!(
                json["trace_id"].as_str(),
                labelled(&description, "Trace ID:"),
                "{case}"
            );
            assert_eq!(
                json["correlation_id"].as_str(),
                labelled(&description, "Correlation ID:"),
                "{case}"
            );
        }
    }
}

#[tokio::test]
async fn an_aadsts_html_page_names_both_readers_and_every_id() {
    let gw = anonymous_gateway().await;
    gw.idp.set_authorize_error(Some((
        "access_denied".into(),
        "AADSTS50105: The signed in user is not assigned to a role for the application.".into(),
    )));
    let client = html_browser(&gw);
    let response = bounded("login", gw.sign_in(&client, RETURN_TO)).await;
    let description = query_param(response.url().as_str(), "error_description").unwrap_or_default();
    let request_id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let login = read_login(response, client).await;
    assert_eq!(login.status, 403);
    let body = &login.body;
    assert!(
        body.contains("<h1>You don"),
        "the title for AADSTS50105: {body}"
    );
    assert!(body.contains("Ask the administrator for access"), "{body}");
    assert!(body.contains("Assignment required"), "{body}");
    assert!(body.contains("For the administrator:"), "{body}");
    assert!(body.contains("Error AADSTS50105"), "{body}");
    let trace = labelled(&description, "Trace ID:").expect("Entra sends a trace id");
    let correlation = labelled(&description, "Correlation ID:").expect("and a correlation id");
    assert!(
        body.contains(&format!("Microsoft trace id {trace}")),
        "{body}"
    );
    assert!(
        body.contains(&format!("correlation id {correlation}")),
        "{body}"
    );
    let request_id = request_id.expect("the gateway names its request id");
    assert!(body.contains(&format!("request id {request_id}")), "{body}");
}

// ---------------------------------------------------------------- sign-in options

/// The authorization request the gateway redirects to for `path`.
async fn authorize_query(
    gw: &TestGateway,
    path: &str,
) -> std::collections::HashMap<String, String> {
    let response = gw
        .fresh_browser()
        .get(gw.url(path))
        .send()
        .await
        .expect("sign_in");
    assert_eq!(response.status(), 302, "{path}");
    let location = location(&response);
    assert!(location.starts_with(&gw.idp.base_url()), "{location}");
    url::Url::parse(&location)
        .expect("URL")
        .query_pairs()
        .into_owned()
        .collect()
}

#[tokio::test]
async fn sign_in_options_appear_in_the_authorize_redirect() {
    let gw = gateway(echo_upstream().await)
        .oidc("prompt = \"login\"")
        .oidc("domain_hint = \"contoso.example\"")
        .oidc("max_age = \"1h\"")
        .anonymous()
        .start()
        .await;
    let query = authorize_query(
        &gw,
        "/.gateway/sign_in?login_hint=bob%40contoso.example&rd=%2Fx",
    )
    .await;
    assert_eq!(query["prompt"], "login");
    assert_eq!(query["domain_hint"], "contoso.example");
    assert_eq!(query["max_age"], "3600");
    assert_eq!(query["login_hint"], "bob@contoso.example");
    let plain = authorize_query(&gw, "/.gateway/sign_in?rd=%2Fx").await;
    assert!(!plain.contains_key("login_hint"));
    assert_eq!(plain["prompt"], "login");

    for bad in ["a%20b", "a%0Ab", &"x".repeat(513)] {
        let response = gw
            .fresh_browser()
            .get(gw.url(&format!("/.gateway/sign_in?login_hint={bad}&rd=%2F")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["error"], "bad_login_hint", "{json}");
    }
}

#[tokio::test]
async fn select_account_gives_way_to_a_login_hint() {
    let gw = gateway(echo_upstream().await)
        .oidc("prompt = \"select_account\"")
        .anonymous()
        .start()
        .await;
    assert_eq!(
        authorize_query(&gw, "/.gateway/sign_in").await["prompt"],
        "select_account"
    );
    let hinted = authorize_query(&gw, "/.gateway/sign_in?login_hint=bob%40contoso.example").await;
    assert!(
        !hinted.contains_key("prompt"),
        "Entra refuses both: {hinted:?}"
    );
}

#[tokio::test]
async fn max_age_refuses_an_older_authentication() {
    let gw = gateway(echo_upstream().await)
        .oidc("max_age = \"10m\"")
        .anonymous()
        .start()
        .await;
    let fresh = login(&gw).await;
    assert_signed_in(&gw, &fresh).await;
    let stale = now() - 3600;
    set_tweak(&gw, set_claims(json!({ "auth_time": stale })));
    let old = login(&gw).await;
    assert_rejected(&gw, &old, "authentication_too_old").await;
    set_tweak(&gw, remove_claim("auth_time"));
    let missing = login(&gw).await;
    assert_rejected(&gw, &missing, "missing_auth_time").await;
}

// ---------------------------------------------------------------- token endpoint

#[tokio::test]
async fn token_endpoint_error_answers_502_without_a_session() {
    let gw = anonymous_gateway().await;
    gw.idp.set_token_endpoint(TokenEndpointMode::Status(500));
    let before = gw.idp.token_requests();
    let login = login(&gw).await;
    assert_failed(&gw, &login, 502, "token_endpoint_error").await;
    assert_eq!(gw.idp.token_requests(), before + 1);
}

#[tokio::test]
async fn token_endpoint_hang_times_out_with_504_and_blocks_nothing_else() {
    // Not anonymous: `gw.http1()` is a signed-in browser.
    let gw = gateway(echo_upstream().await)
        .oidc("http_timeout = \"1s\"")
        .start()
        .await;
    gw.idp.set_token_endpoint(TokenEndpointMode::Hang);
    let before = gw.idp.token_requests();

    let client = gw.fresh_browser();
    let hanging = gw.sign_in(&client, RETURN_TO);
    tokio::pin!(hanging);
    let others = async {
        // Until the login's code exchange is held by the IdP…
        while gw.idp.token_requests() == before {
            tokio::task::yield_now().await;
        }
        // …other requests are answered.
        let health = gw
            .fresh_browser()
            .get(gw.url("/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.status(), 200);
        let page = gw.http1().get(gw.url("/")).send().await.expect("GET /");
        assert_eq!(page.status(), 200);
        let echo: Value = page.json().await.expect("echo");
        assert_eq!(echoed(&echo, "x-forwarded-user"), vec![USER]);
    };
    tokio::select! {
        biased;
        answered = tokio::time::timeout(Duration::from_secs(5), others) => {
            answered.expect("other requests are answered within 5 s while a login hangs");
        }
        _ = &mut hanging => {
            panic!("the hanging login finished before the other requests were answered");
        }
    }

    let response = tokio::time::timeout(Duration::from_secs(10), hanging)
        .await
        .expect("the hanging login is answered within 10 s (http_timeout = 1s)");
    let login = read_login(response, client.clone()).await;
    assert_failed(&gw, &login, 504, "token_endpoint_timeout").await;
}

// ---------------------------------------------------------------- IdP errors

#[tokio::test]
async fn idp_access_denied_answers_403_with_the_description_and_a_retry_link() {
    let gw = anonymous_gateway().await;
    let description = "AADSTS65004: User declined to consent to access the app.";
    gw.idp
        .set_authorize_error(Some(("access_denied".into(), description.into())));
    let login = login(&gw).await;
    assert_failed(&gw, &login, 403, "access_denied").await;
    let message = login.json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(description),
        "the IdP's description is shown: {message}"
    );
    assert_eq!(
        login.json["login_url"],
        format!("/.gateway/sign_in?rd={}", urlencode(RETURN_TO)).as_str(),
        "a link to try again, back to the same place"
    );
    assert_eq!(gw.idp.token_requests(), 0, "no code was exchanged");
}

#[tokio::test]
async fn idp_redirect_uri_mismatch_page_shows_the_exact_callback_url() {
    let gw = anonymous_gateway().await;
    let description = "AADSTS50011: The redirect URI specified in the request does not match \
                       the redirect URIs configured for the application.";
    gw.idp
        .set_authorize_error(Some(("invalid_request".into(), description.into())));
    let client = html_browser(&gw);
    let response = bounded("login", gw.sign_in(&client, RETURN_TO)).await;
    let login = read_login(response, client).await;

    assert_eq!(login.status, 400, "body: {}", login.body);
    assert!(
        login.content_type.starts_with("text/html"),
        "a browser gets HTML: {}",
        login.content_type
    );
    assert!(login.session_cookie.is_none());
    let callback = format!("https://localhost:{}/api/oidc/callback", gw.addr.port());
    assert!(
        login.body.contains(&format!("<code>{callback}</code>")),
        "the page names the exact redirect URI {callback}: {}",
        login.body
    );
    assert!(login.body.contains("AADSTS50011"), "{}", login.body);
    assert!(
        login.body.contains(&format!(
            "href=\"/.gateway/sign_in?rd={}\"",
            urlencode(RETURN_TO)
        )),
        "a link to try again: {}",
        login.body
    );
}
