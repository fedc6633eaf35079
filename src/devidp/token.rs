//! `/{tenant}/oauth2/v2.0/token`: client authentication (`client_secret_post`
//! or `client_secret_basic`), the `authorization_code` grant with PKCE, and the
//! `refresh_token` grant. Errors are Entra-shaped JSON.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use ring::digest::{digest, SHA256};
use serde_json::{json, Map, Value};
use std::time::Instant;

use super::client_assertion;
use super::tokens::{opaque_refresh_token, Login};
use super::web::{b64url, entra_error, form_decode, json, Params};
use super::{lock, RefreshGrant, Shared, TokenEndpointMode, CODE_LIFETIME};
use crate::Body;

/// A refusal; boxed, as responses are large.
type Rejected = Box<Response<Body>>;
type Answer = Result<Response<Body>, Rejected>;

/// Handles a token request; `body` is `None` if it could not be read.
pub(super) async fn token(
    shared: &Shared,
    headers: &HeaderMap,
    body: Option<Vec<u8>>,
) -> Response<Body> {
    let refusal = lock(&shared.knobs).token_error.clone();
    if let Some((status, error, description)) = refusal {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        return entra_error(status, &error, &description);
    }
    let mode = lock(&shared.knobs).token_mode;
    match mode {
        TokenEndpointMode::Normal => {}
        TokenEndpointMode::Status(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return entra_error(
                status,
                "server_error",
                "AADSTS50000: There was an error issuing a token.",
            );
        }
        TokenEndpointMode::Hang => {
            shared.stop.cancelled().await;
            return entra_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "The development IdP is shutting down.",
            );
        }
    }
    answer(shared, headers, body).unwrap_or_else(|error| *error)
}

fn answer(shared: &Shared, headers: &HeaderMap, body: Option<Vec<u8>>) -> Answer {
    let malformed = || {
        entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS9002313: Invalid request. Request is malformed or invalid.",
        )
    };
    let form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let body = body.filter(|_| form).ok_or_else(malformed)?;
    let params = Params::parse(&body).map_err(|_| malformed())?;
    let grant_type = params
        .non_empty("grant_type")
        .ok_or_else(|| missing("grant_type"))?;
    let client_id = authenticate(shared, headers, &params)?;
    match grant_type {
        "authorization_code" => redeem_code(shared, &client_id, &params),
        "refresh_token" => redeem_refresh_token(shared, &client_id, &params),
        super::obo::JWT_BEARER_GRANT => on_behalf_of(shared, &client_id, &params),
        other => Err(bad_request(
            "unsupported_grant_type",
            &format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
        )),
    }
}

fn missing(name: &str) -> Rejected {
    bad_request(
        "invalid_request",
        &format!("AADSTS900144: The request body must contain the following parameter: '{name}'."),
    )
}

fn bad_request(error: &str, description: &str) -> Rejected {
    Box::new(entra_error(StatusCode::BAD_REQUEST, error, description))
}

fn invalid_grant(description: &str) -> Rejected {
    bad_request("invalid_grant", description)
}

fn invalid_client(description: &str) -> Rejected {
    Box::new(entra_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        description,
    ))
}

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`.
/// `None`: no Basic credentials; `Some(Err)`: malformed.
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let parse = || {
        let decoded = STANDARD.decode(encoded.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        Some((form_decode(id)?, form_decode(secret)?))
    };
    Some(parse().ok_or(()))
}

/// Authenticates the client by client assertion (certificate or federated
/// credential) or by secret; returns its id.
fn authenticate(shared: &Shared, headers: &HeaderMap, params: &Params) -> Result<String, Rejected> {
    if let Some(assertion) = params.get("client_assertion") {
        return authenticate_assertion(shared, headers, params, assertion);
    }
    let (client_id, secret) = match basic_credentials(headers) {
        Some(Ok((id, secret))) => {
            if params.get("client_secret").is_some() {
                return Err(bad_request(
                    "invalid_request",
                    "AADSTS9002313: Invalid request. Only one client authentication method may be \
                     used (client_secret_basic and client_secret_post were both present).",
                ));
            }
            if params.get("client_id").is_some_and(|body_id| body_id != id) {
                return Err(invalid_client(
                    "AADSTS7000215: Invalid client secret provided (client_id in the body and the \
                     Authorization header differ).",
                ));
            }
            (id, Some(secret))
        }
        Some(Err(())) => {
            return Err(invalid_client(
                "AADSTS7000215: Invalid client secret provided (malformed Basic credentials).",
            ))
        }
        None => (
            params
                .non_empty("client_id")
                .ok_or_else(|| missing("client_id"))?
                .to_string(),
            params.get("client_secret").map(str::to_string),
        ),
    };
    let options = &shared.options;
    if client_id != options.client_id {
        return Err(bad_request(
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the \
                 directory of the development IdP."
            ),
        ));
    }
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return Err(invalid_client(
            "AADSTS7000218: The request body must contain the following parameter: \
             'client_assertion' or 'client_secret'.",
        ));
    };
    if !same_secret(&secret, &options.client_secret) {
        return Err(invalid_client(&format!(
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the \
             request is the client secret value, not the client secret ID, for a secret added to \
             app '{client_id}'."
        )));
    }
    Ok(client_id)
}

fn authenticate_assertion(
    shared: &Shared,
    headers: &HeaderMap,
    params: &Params,
    assertion: &str,
) -> Result<String, Rejected> {
    lock(&shared.assertions).push(assertion.to_string());
    if headers.contains_key(AUTHORIZATION) || params.get("client_secret").is_some() {
        return Err(bad_request(
            "invalid_request",
            "AADSTS9002313: Invalid request. Only one client authentication method may be used \
             (client_assertion together with a client secret).",
        ));
    }
    if params.get("client_assertion_type") != Some(client_assertion::JWT_BEARER) {
        return Err(bad_request(
            "invalid_request",
            "AADSTS7000216: 'client_assertion_type' must be \
             urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
        ));
    }
    let options = &shared.options;
    let client_id = params
        .non_empty("client_id")
        .ok_or_else(|| missing("client_id"))?;
    if client_id != options.client_id {
        return Err(bad_request(
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the \
                 directory of the development IdP."
            ),
        ));
    }
    let token_endpoint = format!(
        "{}/{}/oauth2/v2.0/token",
        shared.base_url, options.tenant_id
    );
    let workload_issuer = shared.workload_issuer();
    let verify_workload = |kid: Option<&str>, input: &[u8], signature: &[u8]| {
        let keys = lock(&shared.keys);
        kid.and_then(|kid| keys.published(kid))
            .is_some_and(|key| key.verify(input, signature))
    };
    let context = client_assertion::AssertionContext {
        client_id,
        token_endpoint: &token_endpoint,
        certificates: &shared.certificates,
        federation: options
            .federated_subject
            .as_deref()
            .map(|subject| (workload_issuer.as_str(), subject)),
        workload_key: &verify_workload,
    };
    let mut seen = lock(&shared.seen_assertions);
    client_assertion::check(&context, &mut seen, assertion)
        .map_err(|description| invalid_client(&description))?;
    Ok(client_id.to_string())
}

/// Compares SHA-256 digests without an early exit.
fn same_secret(given: &str, expected: &str) -> bool {
    let given = digest(&SHA256, given.as_bytes());
    let expected = digest(&SHA256, expected.as_bytes());
    given
        .as_ref()
        .iter()
        .zip(expected.as_ref())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// The `authorization_code` grant. Like Entra, a code counts as redeemed
/// as soon as it is presented with valid client credentials, even if the
/// redemption then fails.
fn redeem_code(shared: &Shared, client_id: &str, params: &Params) -> Answer {
    let code = params.non_empty("code").ok_or_else(|| missing("code"))?;
    let grant = {
        let mut grants = lock(&shared.grants);
        let Some(grant) = grants.codes.get_mut(code) else {
            return Err(invalid_grant(
                "AADSTS70000: The provided value for the 'code' parameter is not valid.",
            ));
        };
        if grant.used {
            return Err(invalid_grant(
                "AADSTS54005: OAuth2 Authorization code was already redeemed, please retry with \
                 a new valid code or use an existing refresh token.",
            ));
        }
        grant.used = true;
        grant.clone()
    };
    if grant.issued_at.elapsed() > CODE_LIFETIME {
        return Err(invalid_grant(
            "AADSTS70008: The provided authorization code or refresh token has expired due to \
             inactivity. Send a new interactive authorization request for this user and resource.",
        ));
    }
    if grant.client_id != client_id {
        return Err(invalid_grant(
            "AADSTS70000: The provided authorization code was issued to a different client.",
        ));
    }
    let given_redirect = params.get("redirect_uri").unwrap_or_default();
    if given_redirect != grant.redirect_uri {
        return Err(invalid_grant(&format!(
            "AADSTS500112: The reply address '{given_redirect}' does not match the reply address \
             '{}' provided when requesting Authorization code.",
            grant.redirect_uri
        )));
    }
    let verifier = params.get("code_verifier").unwrap_or_default();
    if b64url(digest(&SHA256, verifier.as_bytes())) != grant.code_challenge {
        return Err(invalid_grant(
            "AADSTS501481: The Code_Verifier does not match the code_challenge supplied in the \
             authorization request.",
        ));
    }
    Ok(issue_tokens(
        shared,
        client_id,
        &grant.login,
        grant.nonce.as_deref(),
    ))
}

/// The `refresh_token` grant: new tokens for the same login; the ID token has no nonce.
fn redeem_refresh_token(shared: &Shared, client_id: &str, params: &Params) -> Answer {
    let token = params
        .non_empty("refresh_token")
        .ok_or_else(|| missing("refresh_token"))?;
    let grant = lock(&shared.grants).refresh_grant(token);
    let Some(grant) = grant.filter(|g| g.client_id == client_id) else {
        return Err(invalid_grant(
            "AADSTS9002313: Invalid request. Request is malformed or invalid. (unknown refresh token)",
        ));
    };
    let mut login = grant.login;
    if let Some(scope) = params.non_empty("scope") {
        login.scope = scope.to_string();
    }
    Ok(issue_tokens(shared, client_id, &login, None))
}

/// The on-behalf-of grant: a user's token to this app for a Graph token.
fn on_behalf_of(shared: &Shared, client_id: &str, params: &Params) -> Answer {
    if params.get("requested_token_use") != Some("on_behalf_of") {
        return Err(bad_request(
            "invalid_request",
            "AADSTS70003: requested_token_use must be on_behalf_of.",
        ));
    }
    let assertion = params
        .non_empty("assertion")
        .ok_or_else(|| missing("assertion"))?;
    let scope = params.non_empty("scope").ok_or_else(|| missing("scope"))?;
    let user = super::obo::assertion_user(shared, client_id, assertion)
        .map_err(|(error, description)| bad_request(error, &description))?;
    Ok(super::obo::answer(shared, user, scope))
}

/// The successful token response. `id_token` only with `openid` in scope,
/// `refresh_token` only with `offline_access` (Entra's rules).
fn issue_tokens(
    shared: &Shared,
    client_id: &str,
    login: &Login,
    nonce: Option<&str>,
) -> Response<Body> {
    let lifetime = shared.options.token_lifetime.as_secs();
    let scopes: Vec<&str> = login.scope.split_whitespace().collect();
    let granted: Vec<&str> = scopes
        .iter()
        .copied()
        .filter(|s| *s != "offline_access")
        .chain(["https://graph.microsoft.com/User.Read"])
        .collect();
    let mut body = Map::new();
    body.insert("token_type".into(), json!("Bearer"));
    body.insert("scope".into(), json!(granted.join(" ")));
    body.insert("expires_in".into(), json!(lifetime));
    body.insert("ext_expires_in".into(), json!(lifetime));
    body.insert("access_token".into(), json!(shared.access_token(login)));
    if scopes.contains(&"openid") {
        body.insert(
            "id_token".into(),
            json!(shared.issued_id_token(login, nonce)),
        );
    }
    if scopes.contains(&"offline_access") {
        let refresh_token = opaque_refresh_token();
        let grant = RefreshGrant {
            client_id: client_id.to_string(),
            login: login.clone(),
            issued_at: Instant::now(),
        };
        lock(&shared.grants).insert_refresh(refresh_token.clone(), grant);
        body.insert("refresh_token".into(), json!(refresh_token));
    }
    json(StatusCode::OK, &Value::Object(body))
}
