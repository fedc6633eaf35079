//! The development IdP (`oidc_gateway::devidp`) behaves like Entra ID v2.0:
//! discovery, JWKS, the authorization code flow with PKCE, client
//! authentication, refresh, logout, and the test knobs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use oidc_gateway::devidp::{
    DevIdp, DevIdpOptions, SignAs, SigningAlg, TokenEndpointMode, TokenTweak,
};
use reqwest::redirect::Policy;
use reqwest::{StatusCode, Url};
use ring::digest::{digest, SHA256};
use ring::signature::{
    RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
};
use serde_json::{json, Map, Value};

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT_ID: &str = "test-client";
const SECRET: &str = "test-secret";
const REDIRECT: &str = "https://gateway.example:8443/api/oidc/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mJ92K9zwq7xaVtuDV8J3pmkhDm8rVy-ZXa0";
const GROUP_A: &str = "0b6a3e2c-1d4f-4a5b-9c8d-7e6f5a4b3c2d";
const GROUP_B: &str = "f1e2d3c4-b5a6-4978-8a9b-0c1d2e3f4a5b";

fn fixture_key(n: u8) -> String {
    let path = format!(
        "{}/tests/fixtures/idp-rsa-{n}.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path).expect("fixture key")
}

fn options() -> DevIdpOptions {
    DevIdpOptions {
        tenant_id: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: SECRET.into(),
        rsa_keys_pem: vec![fixture_key(1), fixture_key(2), fixture_key(3)],
        alg: SigningAlg::Rs256,
        groups: vec![GROUP_A.into(), GROUP_B.into()],
        auto_login: Some("alice@contoso.example".into()),
        ..DevIdpOptions::default()
    }
}

async fn start(options: DevIdpOptions) -> DevIdp {
    DevIdp::start(options).await.expect("dev IdP starts")
}

/// Starts the IdP with the test [`options`] changed by `change`.
async fn start_with(change: impl FnOnce(&mut DevIdpOptions)) -> DevIdp {
    let mut options = options();
    change(&mut options);
    start(options).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()))
}

fn endpoint(idp: &DevIdp, rest: &str) -> String {
    format!("{}/{TENANT}/{rest}", idp.base_url())
}

/// An authorization URL with the usual parameters, `overrides` replacing or
/// (with an empty value) removing them.
fn authorize_url(idp: &DevIdp, overrides: &[(&str, &str)]) -> Url {
    let challenge = challenge(VERIFIER);
    let mut params: Vec<(&str, &str)> = vec![
        ("client_id", CLIENT_ID),
        ("response_type", "code"),
        ("redirect_uri", REDIRECT),
        ("scope", "openid profile email offline_access"),
        ("state", "st-123"),
        ("nonce", "n-456"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("response_mode", "query"),
    ];
    for (name, value) in overrides {
        params.retain(|(n, _)| n != name);
        if !value.is_empty() {
            params.push((name, value));
        }
    }
    let params: Vec<(&str, &str)> = params;
    Url::parse_with_params(&endpoint(idp, "oauth2/v2.0/authorize"), &params).expect("url")
}

fn location(response: &reqwest::Response) -> Url {
    let location = response
        .headers()
        .get("location")
        .expect("Location header")
        .to_str()
        .expect("ascii");
    Url::parse(location).expect("absolute Location")
}

fn query_of(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// Runs `authorize` (auto-login) and returns the code from the redirect.
async fn get_code(idp: &DevIdp, overrides: &[(&str, &str)]) -> String {
    let response = client()
        .get(authorize_url(idp, overrides))
        .send()
        .await
        .expect("authorize");
    assert_eq!(response.status(), StatusCode::FOUND);
    let query = query_of(&location(&response));
    query.get("code").expect("code").clone()
}

/// Posts a token request (client_secret_post unless `form` says otherwise).
async fn token_request(idp: &DevIdp, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = client()
        .post(endpoint(idp, "oauth2/v2.0/token"))
        .form(form)
        .send()
        .await
        .expect("token request");
    let status = response.status();
    (status, response.json().await.expect("JSON body"))
}

/// A token request's form fields, built from a grant's usual fields
/// (client_secret_post) and changed one field at a time.
struct TokenForm(Vec<(&'static str, String)>);

impl TokenForm {
    /// Redeeming `code` as the gateway does: secret, redirect URI and PKCE verifier.
    fn code_grant(code: &str) -> Self {
        Self::grant("authorization_code")
            .with("code", code)
            .with("redirect_uri", REDIRECT)
            .with("code_verifier", VERIFIER)
    }

    /// Trading `refresh_token` for new tokens.
    fn refresh_grant(refresh_token: &str) -> Self {
        Self::grant("refresh_token").with("refresh_token", refresh_token)
    }

    fn grant(grant_type: &str) -> Self {
        TokenForm(Vec::new())
            .with("grant_type", grant_type)
            .with("client_id", CLIENT_ID)
            .with("client_secret", SECRET)
    }

    /// `name` set to `value` (replaced where it was, else added).
    fn with(mut self, name: &'static str, value: &str) -> Self {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(field) => field.1 = value.to_string(),
            None => self.0.push((name, value.to_string())),
        }
        self
    }

    /// `name` left out of the form.
    fn without(mut self, name: &str) -> Self {
        self.0.retain(|(n, _)| *n != name);
        self
    }

    async fn send(&self, idp: &DevIdp) -> (StatusCode, Value) {
        let form: Vec<(&str, &str)> = self.0.iter().map(|(n, v)| (*n, v.as_str())).collect();
        token_request(idp, &form).await
    }
}

async fn redeem(idp: &DevIdp, code: &str) -> (StatusCode, Value) {
    TokenForm::code_grant(code).send(idp).await
}

/// Asserts that a token endpoint refused with `status` and OAuth `error`, and
/// that Entra's `error_description` starts with `aadsts` (its AADSTS code,
/// perhaps followed by the start of its message): the reason of the refusal.
#[track_caller]
fn assert_refused(answer: &(StatusCode, Value), status: StatusCode, error: &str, aadsts: &str) {
    let (actual, body) = answer;
    assert_eq!(*actual, status, "expected {status} for {aadsts}: {body}");
    assert_eq!(
        body["error"], error,
        "expected {error} for {aadsts}: {body}"
    );
    assert_aadsts(body, aadsts);
}

/// Asserts that the token endpoint refused the grant (400 `invalid_grant`) for
/// the reason `aadsts` names.
#[track_caller]
fn assert_invalid_grant(answer: &(StatusCode, Value), aadsts: &str) {
    assert_refused(answer, StatusCode::BAD_REQUEST, "invalid_grant", aadsts);
}

/// Asserts that Entra's `error_description` in `body` starts with `aadsts`.
#[track_caller]
fn assert_aadsts(body: &Value, aadsts: &str) {
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.starts_with(aadsts),
        "expected an error_description starting with {aadsts:?}: {body}"
    );
}

fn b64_json(part: &str) -> Map<String, Value> {
    let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url");
    match serde_json::from_slice(&bytes).expect("JSON") {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// (header, claims) of a JWT, unverified.
fn decode(jwt: &str) -> (Map<String, Value>, Map<String, Value>) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "three JWT parts: {jwt}");
    (b64_json(parts[0]), b64_json(parts[1]))
}

/// A GET answered with JSON.
async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

async fn jwks(idp: &DevIdp) -> Vec<Value> {
    let body = get_json(&endpoint(idp, "discovery/v2.0/keys")).await;
    body["keys"].as_array().expect("keys array").clone()
}

fn kids(keys: &[Value]) -> Vec<String> {
    keys.iter()
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect()
}

fn b64_field(key: &Value, name: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(key[name].as_str().expect("key field"))
        .expect("base64url key field")
}

/// Verifies `jwt` against the published JWKS (RS256 or ES256) by reconstructing the key.
async fn verify_with_jwks(idp: &DevIdp, jwt: &str) -> bool {
    let (header, _) = decode(jwt);
    let keys = jwks(idp).await;
    let Some(key) = keys.iter().find(|k| Some(&k["kid"]) == header.get("kid")) else {
        return false;
    };
    let (input, signature) = jwt.rsplit_once('.').expect("signature part");
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("base64url signature");
    match key["kty"].as_str() {
        Some("RSA") => {
            let n = b64_field(key, "n");
            let e = b64_field(key, "e");
            assert_ne!(n[0], 0, "n has no leading zero");
            assert_ne!(e[0], 0, "e has no leading zero");
            RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &signature)
                .is_ok()
        }
        Some("EC") => {
            let mut point = vec![0x04];
            point.extend(b64_field(key, "x"));
            point.extend(b64_field(key, "y"));
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(input.as_bytes(), &signature)
                .is_ok()
        }
        other => panic!("unexpected kty {other:?}"),
    }
}

#[tokio::test]
async fn discovery_has_entra_fields() {
    let idp = start(options()).await;
    let doc = get_json(&format!(
        "{}/.well-known/openid-configuration",
        idp.issuer()
    ))
    .await;
    let base = format!("{}/{TENANT}", idp.base_url());
    assert_eq!(idp.issuer(), format!("{base}/v2.0"));
    assert_eq!(doc["issuer"], json!(idp.issuer()));
    assert_eq!(
        doc["authorization_endpoint"],
        json!(format!("{base}/oauth2/v2.0/authorize"))
    );
    assert_eq!(
        doc["token_endpoint"],
        json!(format!("{base}/oauth2/v2.0/token"))
    );
    assert_eq!(
        doc["jwks_uri"],
        json!(format!("{base}/discovery/v2.0/keys"))
    );
    assert_eq!(
        doc["end_session_endpoint"],
        json!(format!("{base}/oauth2/v2.0/logout"))
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    assert_eq!(
        doc["code_challenge_methods_supported"],
        json!(["plain", "S256"])
    );
    assert_eq!(doc["subject_types_supported"], json!(["pairwise"]));
    assert_eq!(
        doc["response_modes_supported"],
        json!(["query", "fragment", "form_post"])
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!([
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic"
        ])
    );
    assert!(doc["response_types_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("code")));
    assert!(doc["claims_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("nonce")));

    let unknown = client()
        .get(format!(
            "{}/other-tenant/v2.0/.well-known/openid-configuration",
            idp.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn multi_tenant_discovery_uses_the_issuer_template() {
    let idp = start_with(|o| o.multi_tenant = true).await;
    let base = idp.base_url();
    assert_eq!(idp.issuer(), format!("{base}/organizations/v2.0"));
    let doc = get_json(&format!(
        "{}/.well-known/openid-configuration",
        idp.issuer()
    ))
    .await;
    assert_eq!(doc["issuer"], json!(format!("{base}/{{tenantid}}/v2.0")));
    assert_eq!(
        doc["jwks_uri"],
        json!(format!("{base}/organizations/discovery/v2.0/keys"))
    );
    // The organizations endpoints work; tokens carry the tenant's own issuer.
    let keys = get_json(doc["jwks_uri"].as_str().unwrap()).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1);
    // Each key names its issuer as Entra's do: the template here, the tenant's own there.
    assert_eq!(keys["keys"][0]["issuer"], doc["issuer"]);
    assert_eq!(jwks(&idp).await[0]["issuer"], json!(idp.token_issuer()));
    let (_, claims) = decode(&idp.mint_id_token("bob", None, Map::new()));
    assert_eq!(claims["iss"], json!(format!("{base}/{TENANT}/v2.0")));
    assert_eq!(claims["iss"], json!(idp.token_issuer()));
    assert_eq!(claims["tid"], json!(TENANT));
}

#[tokio::test]
async fn a_declared_issuer_is_the_one_of_discovery_tokens_and_keys() {
    // An External ID tenant's issuer, served from the IdP's own address.
    let ciam = format!("https://{TENANT}.ciamlogin.com/{TENANT}/v2.0");
    let idp = start_with(|o| o.issuer = Some(ciam.clone())).await;
    assert_eq!(idp.issuer(), ciam);
    let doc = get_json(&idp.discovery_url()).await;
    assert_eq!(doc["issuer"], json!(ciam));
    assert!(
        doc["token_endpoint"]
            .as_str()
            .unwrap()
            .starts_with(&idp.base_url()),
        "endpoints stay at the IdP's address: {doc}"
    );
    assert_eq!(jwks(&idp).await[0]["issuer"], json!(ciam));
    let (_, claims) = decode(&idp.mint_id_token("bob", None, Map::new()));
    assert_eq!(claims["iss"], json!(ciam));

    // A foreign key issuer, for the multi-tenant rejection tests.
    idp.set_key_issuer(Some("https://login.microsoftonline.com/other/v2.0".into()));
    assert_eq!(
        jwks(&idp).await[0]["issuer"],
        "https://login.microsoftonline.com/other/v2.0"
    );
}

#[tokio::test]
async fn emails_are_verified_unless_forged() {
    let idp = start_with(|o| o.email_claim = true).await;
    let (_, claims) = decode(&idp.mint_id_token("bob@contoso.example", None, Map::new()));
    assert_eq!(claims["email"], "bob@contoso.example");
    assert_eq!(
        claims["xms_edov"], true,
        "the tenant's own address is verified"
    );
    // nOAuth: an address the user's tenant does not own, set by its admin.
    idp.set_unverified_email("bob@contoso.example", "ceo@fabrikam.example");
    let (_, claims) = decode(&idp.mint_id_token("bob@contoso.example", None, Map::new()));
    assert_eq!(claims["email"], "ceo@fabrikam.example");
    assert!(claims.get("xms_edov").is_none(), "{claims:?}");
    assert_eq!(claims["preferred_username"], "bob@contoso.example");
}

#[tokio::test]
async fn jwks_rs256_keys_verify_minted_tokens() {
    let idp = start(options()).await;
    let keys = jwks(&idp).await;
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["alg"], "RS256");
    assert_eq!(key["kid"], json!(idp.active_kid()));
    assert_eq!(b64_field(key, "n").len(), 256, "2048-bit modulus");
    assert_eq!(b64_field(key, "e"), vec![1, 0, 1]);

    let token = idp.mint_id_token("carol", Some("nonce-1"), Map::new());
    let (header, claims) = decode(&token);
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], key["kid"]);
    assert_eq!(claims["nonce"], "nonce-1");
    assert!(verify_with_jwks(&idp, &token).await);
    assert_eq!(idp.jwks_requests(), 2);

    let mut extra = Map::new();
    extra.insert("aud".into(), json!("someone-else"));
    extra.insert("groups".into(), Value::Null);
    let (_, claims) = decode(&idp.mint_id_token("carol", None, extra));
    assert_eq!(claims["aud"], "someone-else");
    assert!(claims.get("groups").is_none());
    assert!(claims.get("nonce").is_none());
}

#[tokio::test]
async fn default_options_sign_es256_with_generated_keys() {
    let idp = start(DevIdpOptions {
        auto_login: Some("dev".into()),
        ..DevIdpOptions::default()
    })
    .await;
    assert!(idp
        .issuer()
        .ends_with("/00000000-0000-0000-0000-00000000d3e0/v2.0"));
    let keys = get_json(&format!(
        "{}/00000000-0000-0000-0000-00000000d3e0/discovery/v2.0/keys",
        idp.base_url()
    ))
    .await;
    let key = &keys["keys"][0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["alg"], "ES256");
    let token = idp.mint_id_token("dev", None, Map::new());
    assert_eq!(decode(&token).0["alg"], "ES256");
    let (input, signature) = token.rsplit_once('.').unwrap();
    let mut point = vec![0x04];
    point.extend(b64_field(key, "x"));
    point.extend(b64_field(key, "y"));
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    assert_eq!(signature.len(), 64);
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(input.as_bytes(), &signature)
        .expect("ES256 signature verifies");
}

#[tokio::test]
async fn code_flow_with_pkce_and_client_secret_post() {
    let idp = start(options()).await;
    let response = client().get(authorize_url(&idp, &[])).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let back = location(&response);
    assert!(back.as_str().starts_with(REDIRECT), "{back}");
    let query = query_of(&back);
    assert_eq!(query["state"], "st-123");
    assert_eq!(query["code"].len(), 43);
    assert!(query.contains_key("session_state"));

    let (status, body) = redeem(&idp, &query["code"]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["ext_expires_in"], 3600);
    assert!(body["refresh_token"].is_string());
    assert!(body["scope"].as_str().unwrap().contains("openid"));

    let id_token = body["id_token"].as_str().unwrap();
    assert!(verify_with_jwks(&idp, id_token).await);
    let (_, claims) = decode(id_token);
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["iss"], json!(idp.issuer()));
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(claims["nonce"], "n-456");
    assert_eq!(claims["ver"], "2.0");
    assert_eq!(claims["preferred_username"], "alice@contoso.example");
    assert_eq!(claims["name"], "alice");
    assert_eq!(claims["groups"], json!([GROUP_A, GROUP_B]));
    assert_eq!(claims["oid"], json!(idp.object_id("alice@contoso.example")));
    assert_eq!(claims["sub"], json!(idp.subject("alice@contoso.example")));
    assert_eq!(claims["sub"].as_str().unwrap().len(), 43);
    let oid = claims["oid"].as_str().unwrap();
    assert_eq!(oid.len(), 36);
    assert_eq!(oid.matches('-').count(), 4);
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["nbf"].as_u64().unwrap(), iat);
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 3600);
    assert!(claims.get("email").is_none(), "no email claim by default");
    for claim in ["aio", "uti", "rh"] {
        assert!(claims[claim].is_string(), "{claim}");
    }

    let (_, access) = decode(body["access_token"].as_str().unwrap());
    assert_eq!(access["aud"], "00000003-0000-0000-c000-000000000000");
    assert_eq!(idp.token_requests(), 1);
}

#[tokio::test]
async fn client_secret_basic_works_with_encoded_credentials() {
    let secret = "s3c:r+t/&= x";
    let idp = start(DevIdpOptions {
        client_secret: secret.into(),
        email_claim: true,
        ..options()
    })
    .await;
    let code = get_code(&idp, &[]).await;
    let credentials = STANDARD.encode(format!("{}:{}", url_form(CLIENT_ID), url_form(secret)));
    let response = client()
        .post(endpoint(&idp, "oauth2/v2.0/token"))
        .header("authorization", format!("Basic {credentials}"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let (_, claims) = decode(body["id_token"].as_str().unwrap());
    assert_eq!(claims["email"], "alice@contoso.example");
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn url_form(value: &str) -> String {
    let encoded = Url::parse_with_params("http://x/", &[("v", value)]).unwrap();
    encoded
        .query()
        .unwrap()
        .trim_start_matches("v=")
        .to_string()
}

#[tokio::test]
async fn wrong_or_missing_secret_is_invalid_client() {
    let idp = start(options()).await;
    let code = get_code(&idp, &[]).await;
    let answer = TokenForm::code_grant(&code)
        .with("client_secret", "wrong")
        .send(&idp)
        .await;
    assert_refused(
        &answer,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "AADSTS7000215: Invalid client secret provided",
    );
    let (_, body) = answer;
    assert_eq!(body["error_codes"], json!([7000215]));
    assert!(body["trace_id"].is_string() && body["correlation_id"].is_string());

    let (status, body) = TokenForm::code_grant(&code)
        .without("client_secret")
        .without("redirect_uri")
        .without("code_verifier")
        .send(&idp)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");

    // A failed client authentication does not burn the code.
    let (status, _) = redeem(&idp, &code).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_verifier_is_invalid_grant_and_burns_the_code() {
    let idp = start(options()).await;
    let code = get_code(&idp, &[]).await;
    let answer = TokenForm::code_grant(&code)
        .with(
            "code_verifier",
            "a-different-verifier-that-is-long-enough-0123456789",
        )
        .send(&idp)
        .await;
    assert_invalid_grant(&answer, "AADSTS501481: The Code_Verifier does not match");
    let (_, body) = redeem(&idp, &code).await;
    assert_aadsts(&body, "AADSTS54005");
}

#[tokio::test]
async fn code_replay_is_refused() {
    let idp = start(options()).await;
    let code = get_code(&idp, &[]).await;
    assert_eq!(redeem(&idp, &code).await.0, StatusCode::OK);
    assert_invalid_grant(
        &redeem(&idp, &code).await,
        "AADSTS54005: OAuth2 Authorization code was already redeemed",
    );
    assert_eq!(idp.token_requests(), 2);

    let (status, body) = redeem(&idp, "never-issued").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn redirect_uri_mismatch_is_invalid_grant() {
    let idp = start(options()).await;
    let code = get_code(&idp, &[]).await;
    let answer = TokenForm::code_grant(&code)
        .with("redirect_uri", "https://gateway.example:8443/other")
        .send(&idp)
        .await;
    assert_invalid_grant(&answer, "AADSTS500112");
}

#[tokio::test]
async fn form_post_returns_an_auto_submitting_form() {
    let idp = start(options()).await;
    let response = client()
        .get(authorize_url(
            &idp,
            &[("response_mode", "form_post"), ("state", "a\"b<c>&d")],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    let html = response.text().await.unwrap();
    assert!(html.contains(&format!(
        "method=\"post\" name=\"hiddenform\" action=\"{REDIRECT}\""
    )));
    assert!(html.contains("<input type=\"hidden\" name=\"code\" value=\""));
    assert!(html.contains("name=\"state\" value=\"a&quot;b&lt;c&gt;&amp;d\""));
    assert!(html.contains("<script>document.forms[0].submit()</script>"));
    assert!(html.contains("<noscript>"));
    assert!(html.contains("NOT Microsoft"));
    // The posted code is redeemable.
    let start = html.find("name=\"code\" value=\"").unwrap() + "name=\"code\" value=\"".len();
    let code = &html[start..start + 43];
    assert_eq!(redeem(&idp, code).await.0, StatusCode::OK);
}

#[tokio::test]
async fn authorize_error_knob_redirects_back_with_the_error() {
    let idp = start(options()).await;
    idp.set_authorize_error(Some((
        "access_denied".into(),
        "AADSTS65004: User declined to consent to access the app.".into(),
    )));
    let response = client().get(authorize_url(&idp, &[])).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let query = query_of(&location(&response));
    assert_eq!(query["error"], "access_denied");
    let description = &query["error_description"];
    assert!(
        description.starts_with("AADSTS65004: User declined to consent to access the app.")
            && description.contains("Trace ID: ")
            && description.contains("Correlation ID: "),
        "Entra's description with its ids: {description}"
    );
    assert_eq!(
        query["error_uri"],
        "https://login.microsoftonline.com/error?code=65004"
    );
    assert_eq!(query["state"], "st-123");
    assert!(!query.contains_key("code"));

    idp.set_authorize_error(None);
    get_code(&idp, &[]).await;
}

#[tokio::test]
async fn authorize_validates_client_redirect_uri_and_pkce() {
    let idp = start(options()).await;
    let http = client();

    let response = http
        .get(authorize_url(&idp, &[("client_id", "unknown-app")]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("location").is_none());
    assert!(response.text().await.unwrap().contains("AADSTS700016"));

    let evil = "http://evil.example/cb?x=<script>";
    let response = http
        .get(authorize_url(&idp, &[("redirect_uri", evil)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let html = response.text().await.unwrap();
    assert!(html.contains("AADSTS50011"));
    assert!(html.contains("http://evil.example/cb?x=&lt;script&gt;"));
    assert!(!html.contains("<script>"));

    for uri in [
        "http://localhost.evil.example/cb",
        "javascript:alert(1)",
        "https://a/#frag",
    ] {
        let response = http
            .get(authorize_url(&idp, &[("redirect_uri", uri)]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{uri}");
    }

    // Loopback http redirect URIs are fine, and their query is preserved.
    let local = "http://127.0.0.1:9999/cb?tenant=a%20b";
    let response = http
        .get(authorize_url(&idp, &[("redirect_uri", local)]))
        .send()
        .await
        .unwrap();
    let back = location(&response);
    assert_eq!(back.path(), "/cb");
    let query = query_of(&back);
    assert_eq!(query["tenant"], "a b");
    assert_eq!(query["state"], "st-123");
    assert!(query.contains_key("code"));

    for (overrides, error) in [
        (vec![("code_challenge", "")], "invalid_request"),
        (vec![("code_challenge_method", "plain")], "invalid_request"),
        (vec![("code_challenge_method", "")], "invalid_request"),
        (
            vec![("response_type", "id_token")],
            "unsupported_response_type",
        ),
        (vec![("scope", "")], "invalid_request"),
    ] {
        let response = http
            .get(authorize_url(&idp, &overrides))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FOUND, "{overrides:?}");
        let query = query_of(&location(&response));
        assert_eq!(query["error"], error, "{overrides:?}");
        assert_eq!(query["state"], "st-123");
        assert!(!query.contains_key("code"));
    }

    // A repeated parameter is refused.
    let url = format!("{}&state=again", authorize_url(&idp, &[]));
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn rotate_and_retire_keys() {
    let idp = start(options()).await;
    let first = idp.active_kid();
    let old_token = idp.mint_id_token("dave", None, Map::new());

    idp.rotate_keys();
    let second = idp.active_kid();
    assert_ne!(first, second);
    let code = get_code(&idp, &[]).await;
    let (_, body) = redeem(&idp, &code).await;
    let id_token = body["id_token"].as_str().unwrap();
    assert_eq!(decode(id_token).0["kid"], json!(second));
    let published = kids(&jwks(&idp).await);
    assert_eq!(published, vec![second.clone(), first.clone()]);
    assert!(verify_with_jwks(&idp, id_token).await);
    assert!(verify_with_jwks(&idp, &old_token).await);

    idp.retire_old_keys();
    assert_eq!(kids(&jwks(&idp).await), vec![second.clone()]);
    assert!(!verify_with_jwks(&idp, &old_token).await);

    // The third key, then back to the first (the list wraps around).
    idp.rotate_keys();
    let third = idp.active_kid();
    assert!(third != first && third != second);
    idp.rotate_keys();
    assert_eq!(idp.active_kid(), first);
    assert_eq!(kids(&jwks(&idp).await), vec![first, third, second]);
}

/// The features `cargo` enables for this package, from `cargo tree` (no build):
/// with dev-dependencies (what `cargo test` compiles) or without (`cargo build`).
fn package_features(with_dev: bool) -> String {
    let mut command = std::process::Command::new(env!("CARGO"));
    command.args(["tree", "--offline", "--depth", "0", "--format", "{f}"]);
    if !with_dev {
        command.args(["--edges", "no-dev"]);
    }
    let output = command
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The first line is the package itself; dev-dependencies follow.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn forged_token_switches_are_compiled_for_the_tests_but_not_into_the_binary() {
    // SignAs::Unsigned and SignAs::Hs256 exist only with `devidp-forgeries`
    // (cfg on the variants): the tests here use them, so this file compiling
    // shows `cargo test` has them; `cargo build` (release or not) resolves no
    // dev-dependency and so leaves the feature, and the switches, out.
    assert!(
        package_features(true).contains("devidp-forgeries"),
        "the self dev-dependency enables the switches for the tests"
    );
    assert_eq!(
        package_features(false),
        "",
        "`cargo build --release` compiles the gateway without any feature"
    );
}

#[tokio::test]
async fn token_tweaks_rewrite_and_mis_sign_id_tokens() {
    let idp = start(options()).await;
    let cases: Vec<(SignAs, &str)> = vec![
        (SignAs::ActiveKey, "RS256"),
        (SignAs::Unsigned, "none"),
        (SignAs::Hs256(SECRET.as_bytes().to_vec()), "HS256"),
        (SignAs::CorruptSignature, "RS256"),
        (SignAs::UnpublishedKey, "RS256"),
    ];
    for (how, alg) in cases {
        let sign_as = how.clone();
        let tweak: TokenTweak = Arc::new(move |header, claims| {
            header.insert("x-test".into(), json!(true));
            claims.insert("aud".into(), json!("tweaked"));
            sign_as.clone()
        });
        idp.set_token_tweak(Some(tweak));
        let code = get_code(&idp, &[]).await;
        let (status, body) = redeem(&idp, &code).await;
        assert_eq!(status, StatusCode::OK);
        let token = body["id_token"].as_str().unwrap();
        let (header, claims) = decode(token);
        assert_eq!(header["alg"], alg, "{how:?}");
        assert_eq!(header["x-test"], true);
        assert_eq!(claims["aud"], "tweaked");
        let valid = verify_with_jwks(&idp, token).await;
        match how {
            SignAs::ActiveKey => assert!(valid),
            SignAs::Unsigned => {
                assert!(token.ends_with('.'));
                assert!(header.get("kid").is_none());
            }
            SignAs::Hs256(secret) => {
                let (input, signature) = token.rsplit_once('.').unwrap();
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
                let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
                ring::hmac::verify(&key, input.as_bytes(), &signature).expect("HMAC");
            }
            SignAs::CorruptSignature => {
                assert_eq!(header["kid"], json!(idp.active_kid()));
                assert!(!valid);
            }
            SignAs::UnpublishedKey => {
                assert!(
                    !kids(&jwks(&idp).await).contains(&header["kid"].as_str().unwrap().to_string())
                );
                assert!(!valid);
            }
        }
    }
    idp.set_token_tweak(None);
    let code = get_code(&idp, &[]).await;
    let (_, body) = redeem(&idp, &code).await;
    assert_eq!(
        decode(body["id_token"].as_str().unwrap()).1["aud"],
        CLIENT_ID
    );
}

#[tokio::test]
async fn token_endpoint_status_and_hang_modes() {
    let idp = start(options()).await;
    idp.set_token_endpoint(TokenEndpointMode::Status(500));
    let code = get_code(&idp, &[]).await;
    assert_refused(
        &redeem(&idp, &code).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "AADSTS50000: There was an error issuing a token.",
    );

    idp.set_token_endpoint(TokenEndpointMode::Hang);
    let hung = tokio::time::timeout(Duration::from_millis(300), redeem(&idp, &code)).await;
    assert!(hung.is_err(), "the token endpoint must not answer");
    assert_eq!(idp.token_requests(), 2);

    // The code was not consumed by the failing modes.
    idp.set_token_endpoint(TokenEndpointMode::Normal);
    assert_eq!(redeem(&idp, &code).await.0, StatusCode::OK);
}

#[tokio::test]
async fn hung_requests_end_when_the_idp_stops() {
    let idp = start(options()).await;
    idp.set_token_endpoint(TokenEndpointMode::Hang);
    let url = endpoint(&idp, "oauth2/v2.0/token");
    let pending = tokio::spawn(async move {
        client()
            .post(url)
            .form(&[("grant_type", "authorization_code")])
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    idp.shutdown().await;
    let result = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the held request ends after shutdown")
        .unwrap();
    // Either the 503 made it out or the connection was closed: both end the wait.
    if let Ok(response) = result {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

#[tokio::test]
async fn refresh_token_grant_issues_an_id_token_without_nonce() {
    let idp = start(options()).await;
    let code = get_code(&idp, &[]).await;
    let (_, first) = redeem(&idp, &code).await;
    let refresh_token = first["refresh_token"].as_str().unwrap();
    let (status, body) = TokenForm::refresh_grant(refresh_token).send(&idp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, claims) = decode(body["id_token"].as_str().unwrap());
    assert!(claims.get("nonce").is_none());
    let (_, original) = decode(first["id_token"].as_str().unwrap());
    assert_eq!(claims["sub"], original["sub"]);
    assert_eq!(claims["groups"], original["groups"]);
    assert!(body["refresh_token"].is_string());

    let (status, body) = TokenForm::refresh_grant("bogus").send(&idp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    // Without offline_access: no refresh token.
    let code = get_code(&idp, &[("scope", "openid profile")]).await;
    let (_, body) = redeem(&idp, &code).await;
    assert!(body.get("refresh_token").is_none());
    assert!(body["id_token"].is_string());
}

#[tokio::test]
async fn logout_redirects_back_with_state_and_records_the_hint() {
    let idp = start(options()).await;
    let url = Url::parse_with_params(
        &endpoint(&idp, "oauth2/v2.0/logout"),
        &[
            ("post_logout_redirect_uri", "https://gateway.example:8443/"),
            ("id_token_hint", "the.id.token"),
            ("state", "bye & see you"),
        ],
    )
    .unwrap();
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let back = location(&response);
    assert_eq!(back.host_str(), Some("gateway.example"));
    assert_eq!(query_of(&back)["state"], "bye & see you");

    let response = client()
        .get(endpoint(&idp, "oauth2/v2.0/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("You have signed out"));
    assert_eq!(idp.logouts(), vec![Some("the.id.token".to_string()), None]);
}

#[tokio::test]
async fn login_form_signs_in_the_typed_user() {
    let idp = start_with(|o| o.auto_login = None).await;
    let hostile = "\"><script>alert(1)</script>";
    let url = authorize_url(&idp, &[("state", hostile), ("login_hint", "eve")]);
    let response = client().get(url.clone()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().await.unwrap();
    assert!(html.contains("oidc-gateway development sign-in — NOT Microsoft"));
    assert!(!html.contains("<script>alert(1)</script>"));
    assert!(html.contains("&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("name=\"username\" value=\"eve\""));
    assert!(html.contains(&format!("value=\"{GROUP_A}, {GROUP_B}\"")));

    // Post the form back: the hidden fields plus user name and groups.
    let groups = format!("{GROUP_B}, extra-group");
    let response = submit_login_form(&url, &[("username", "  erin  "), ("groups", &groups)]).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let query = query_of(&location(&response));
    assert_eq!(query["state"], hostile);
    let (_, body) = redeem(&idp, &query["code"]).await;
    let (_, claims) = decode(body["id_token"].as_str().unwrap());
    assert_eq!(claims["preferred_username"], "erin@devidp.example");
    assert_eq!(claims["name"], "erin");
    assert_eq!(claims["groups"], json!([GROUP_B, "extra-group"]));

    // An empty user name shows the form again; prompt=none cannot sign in silently.
    let response = submit_login_form(&url, &[("username", " ")]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("Enter a user name."));
    let response = client()
        .get(authorize_url(&idp, &[("prompt", "none")]))
        .send()
        .await
        .unwrap();
    assert_eq!(query_of(&location(&response))["error"], "login_required");
}

#[tokio::test]
async fn user_override_changes_claims() {
    let idp = start(options()).await;
    let mut claims = Map::new();
    claims.insert("groups".into(), Value::Null);
    claims.insert("_claim_names".into(), json!({"groups": "src1"}));
    idp.set_user_override("alice@contoso.example", Some(claims));
    let code = get_code(&idp, &[]).await;
    let (_, body) = redeem(&idp, &code).await;
    let (_, id) = decode(body["id_token"].as_str().unwrap());
    assert!(id.get("groups").is_none());
    assert_eq!(id["_claim_names"]["groups"], "src1");

    idp.set_user_override("alice@contoso.example", None);
    let code = get_code(&idp, &[]).await;
    let (_, body) = redeem(&idp, &code).await;
    assert!(decode(body["id_token"].as_str().unwrap()).1["groups"].is_array());
}

#[tokio::test]
async fn refuses_non_loopback_addresses_and_bad_options() {
    let error = DevIdp::start_on(options(), "0.0.0.0:0".parse().unwrap())
        .await
        .err()
        .expect("non-loopback refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    let error = DevIdp::start(DevIdpOptions {
        rsa_keys_pem: Vec::new(),
        ..options()
    })
    .await
    .err()
    .expect("RS256 without keys refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    let idp = DevIdp::start_on(options(), "[::1]:0".parse().unwrap()).await;
    if let Ok(idp) = idp {
        assert!(idp.issuer().starts_with("http://[::1]:"));
    }
}

/// Posts the development login form of the authorization request `url` back
/// with its hidden fields plus `fields`.
async fn submit_login_form(url: &Url, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    form.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    client()
        .post(url.as_str().split('?').next().unwrap())
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// An on-behalf-of request for a Graph token with `assertion`.
async fn on_behalf_of(idp: &DevIdp, assertion: &str) -> (StatusCode, Value) {
    TokenForm::grant("urn:ietf:params:oauth:grant-type:jwt-bearer")
        .with("requested_token_use", "on_behalf_of")
        .with("assertion", assertion)
        .with("scope", "https://graph.microsoft.com/User.Read")
        .send(idp)
        .await
}

#[tokio::test]
async fn on_behalf_of_trades_a_users_token_for_a_graph_token_like_entra() {
    let idp = start(options()).await;
    let user_token = idp.mint_id_token("alice@contoso.example", None, Map::new());
    let (status, body) = on_behalf_of(&idp, &user_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, claims) = decode(body["access_token"].as_str().expect("an access token"));
    assert_eq!(claims["aud"], "00000003-0000-0000-c000-000000000000");
    assert_eq!(claims["upn"], "alice@contoso.example");
    assert_eq!(idp.on_behalf_of_grants(), 1);

    // Refused like Entra: a token for another app, a forged signature, an expired token.
    let other_app = idp.mint_id_token(
        "alice@contoso.example",
        None,
        serde_json::from_value(json!({"aud": "another-app"})).unwrap(),
    );
    let mut forged = user_token.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    let expired = idp.mint_id_token(
        "alice@contoso.example",
        None,
        serde_json::from_value(json!({"exp": 1_000_000})).unwrap(),
    );
    for (assertion, code) in [
        (other_app, "AADSTS50013"),
        (forged, "AADSTS50013"),
        (expired, "AADSTS500133"),
    ] {
        assert_invalid_grant(&on_behalf_of(&idp, &assertion).await, code);
    }
    assert_eq!(idp.on_behalf_of_grants(), 1);
}

#[tokio::test]
async fn a_user_in_more_than_200_groups_gets_entras_overage_marker_and_graph_lists_them() {
    let idp = start_with(|o| o.auto_login = None).await;
    let url = authorize_url(&idp, &[]);
    let response = submit_login_form(
        &url,
        &[
            ("username", "frank"),
            ("groups", GROUP_A),
            ("many_groups", "1"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let (_, body) = redeem(&idp, &query_of(&location(&response))["code"]).await;
    let (_, claims) = decode(body["id_token"].as_str().unwrap());
    assert!(claims.get("groups").is_none(), "{claims:?}");
    assert_eq!(claims["_claim_names"], json!({"groups": "src1"}));
    assert!(claims["_claim_sources"]["src1"]["endpoint"].is_string());

    // Graph lists all 251 for the sign-in's access token, in pages.
    let access_token = body["access_token"].as_str().unwrap();
    let mut url = format!("{}/v1.0/me/getMemberObjects", idp.graph_url());
    let mut listed = Vec::new();
    loop {
        let page: Value = client()
            .post(&url)
            .bearer_auth(access_token)
            .json(&json!({"securityEnabledOnly": false}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed.extend(page["value"].as_array().unwrap().iter().cloned());
        match page["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!(listed.len(), 251);
    assert!(listed.contains(&json!(GROUP_A)));
    // Without a token Graph refuses, as Graph does.
    let refused = client()
        .post(format!("{}/v1.0/me/getMemberObjects", idp.graph_url()))
        .json(&json!({"securityEnabledOnly": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "InvalidAuthenticationToken");
}
