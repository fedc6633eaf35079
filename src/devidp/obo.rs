//! The on-behalf-of grant (`urn:ietf:params:oauth:grant-type:jwt-bearer`
//! with `requested_token_use=on_behalf_of`): an API that received a user's
//! token (a bearer caller of the gateway) trades it for a Microsoft Graph
//! token of the same user. Checked like Entra: the assertion is a token of
//! this IdP (signature with a published key, issuer, unexpired) whose
//! audience is the client presenting it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::tokens::{now_secs, Login};
use super::web::json;
use super::{lock, Shared};

/// The grant type of the on-behalf-of flow.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The user named by a valid on-behalf-of `assertion`, or Entra's
/// `(error, description)`.
pub(super) fn assertion_user(
    shared: &Shared,
    client_id: &str,
    assertion: &str,
) -> Result<String, (&'static str, String)> {
    let invalid = |description: &str| ("invalid_grant", description.to_string());
    let mut parts = assertion.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("AADSTS50027: JWT token is invalid or malformed."));
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).ok();
    let header: Map<String, Value> = decode(header)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("AADSTS50027: JWT token is invalid or malformed."))?;
    let claims: Map<String, Value> = decode(payload)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("AADSTS50027: JWT token is invalid or malformed."))?;
    let signature = decode(signature).unwrap_or_default();
    let input = &assertion[..assertion.rfind('.').unwrap_or(0)];
    let verified = {
        let keys = lock(&shared.keys);
        header
            .get("kid")
            .and_then(Value::as_str)
            .and_then(|kid| keys.published(kid))
            .is_some_and(|key| key.verify(input.as_bytes(), &signature))
    };
    if !verified {
        return Err(invalid(
            "AADSTS50013: Assertion failed signature validation.",
        ));
    }
    if claims.get("iss").and_then(Value::as_str) != Some(shared.token_issuer().as_str()) {
        return Err(invalid(
            "AADSTS50013: Assertion issuer is not this tenant's.",
        ));
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == client_id || *aud == format!("api://{client_id}"),
        _ => false,
    };
    if !audience_ok {
        return Err(invalid(
            "AADSTS50013: Assertion audience does not match the Client app presenting the assertion.",
        ));
    }
    let expired = claims
        .get("exp")
        .and_then(Value::as_u64)
        .is_none_or(|exp| exp <= now_secs());
    if expired {
        return Err(invalid(
            "AADSTS500133: Assertion is not within its valid time range.",
        ));
    }
    claims
        .get("preferred_username")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| invalid("AADSTS50027: The assertion names no user."))
}

/// A Graph access token for the assertion's user (the IdP's directory
/// groups), as Entra answers an on-behalf-of request.
pub(super) fn answer(shared: &Shared, user: String, scope: &str) -> http::Response<crate::Body> {
    shared
        .obo_requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let login = Login {
        user,
        groups: shared.options.groups.clone(),
        scope: scope.to_string(),
        sid: String::new(),
        auth_time: now_secs(),
    };
    let lifetime = shared.options.token_lifetime.as_secs();
    json(
        http::StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": shared.access_token(&login),
        }),
    )
}
