//! ID-token validation, per the security rules: signature against the
//! issuer's JWKS with an algorithm from the allow-list (never `none`, never
//! HMAC), exact `iss` (or Entra's `{tenantid}` template with an allowed `tid`),
//! `aud` containing client_id, `exp`, `nbf`, `iat`, `sub`, `nonce`; clock skew
//! at most 60 s.

use std::collections::HashSet;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::provider::{Metadata, Provider};
use crate::config::Settings;
use crate::identity::Identity;
use crate::session::unix_now;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("signature algorithm {0:?} is not allowed (oidc.allowed_algs)")]
    AlgorithmNotAllowed(String),
    #[error("no signing key {0:?} in the identity provider's JWKS (also after re-reading it)")]
    UnknownKey(String),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf in the future)")]
    NotYetValid,
    #[error("the token was issued in the future (iat)")]
    IssuedInFuture,
    #[error("issuer {found:?} is not the configured issuer")]
    WrongIssuer { found: String },
    #[error("tenant {0:?} is not in oidc.allowed_tenants")]
    TenantNotAllowed(String),
    #[error("the audience does not contain this client")]
    WrongAudience,
    #[error("required claim {0:?} is missing")]
    MissingClaim(&'static str),
    #[error("the nonce does not match this login")]
    NonceMismatch,
    #[error("the identity provider's metadata is not loaded")]
    ProviderNotLoaded,
    #[error("the token was rejected: {0}")]
    Other(String),
    /// A claim the gateway would have to alter to send upstream.
    #[error("{0}: the gateway sends identity values unaltered or not at all")]
    UnsendableIdentity(crate::identity::UnsendableValue),
}

/// Claims the gateway reads (Entra v2.0 names).
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    iat: Option<i64>,
    /// Read here as well: jsonwebtoken skips an `nbf` it cannot parse (e.g. a
    /// string), and a not-before that cannot be checked must fail closed.
    #[serde(default)]
    nbf: Option<serde_json::Value>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    tid: Option<String>,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    /// Group overage: `{"groups": "src1"}` instead of the list.
    #[serde(default, rename = "_claim_names")]
    claim_names: Option<serde_json::Value>,
    #[serde(default)]
    hasgroups: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// What a valid token must satisfy, derived from the configuration.
pub struct TokenPolicy {
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    skew_secs: u64,
    allowed_tenants: Vec<String>,
}

impl TokenPolicy {
    pub fn new(settings: &Settings) -> Self {
        crate::jwt_ring::install();
        let oidc = &settings.config.oidc;
        TokenPolicy {
            audiences: vec![oidc.client_id.clone()],
            // Names were validated against the asymmetric allow-list at startup.
            algorithms: oidc
                .allowed_algs
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            skew_secs: oidc.clock_skew.as_secs(),
            allowed_tenants: oidc.allowed_tenants.clone(),
        }
    }

    /// The policy for `Authorization: Bearer` tokens: the same issuer, keys and
    /// checks, with `bearer.audiences` (default: the client id and `api://<client id>`).
    pub fn for_bearer(settings: &Settings) -> Self {
        let mut policy = TokenPolicy::new(settings);
        let configured = &settings.config.bearer.audiences;
        policy.audiences = if configured.is_empty() {
            let id = &settings.config.oidc.client_id;
            vec![id.clone(), format!("api://{id}")]
        } else {
            configured.clone()
        };
        policy
    }

    /// Validates `token` and returns who it names. `nonce`: the login's nonce
    /// (required and compared), or None where the spec has none (refresh).
    pub async fn validate(
        &self,
        provider: &Provider,
        token: &str,
        nonce: Option<&str>,
    ) -> Result<Identity, TokenError> {
        let header = raw_header(token)?;
        let algorithm = header
            .alg
            .parse::<Algorithm>()
            .ok()
            .filter(|a| self.algorithms.contains(a))
            .ok_or_else(|| TokenError::AlgorithmNotAllowed(header.alg.clone()))?;
        let jwk = provider
            .key(header.kid.as_deref())
            .await
            .ok_or_else(|| TokenError::UnknownKey(header.kid.clone().unwrap_or_default()))?;
        // A JWKS entry that pins another algorithm is not usable for this token.
        if let Some(key_alg) = jwk.common.key_algorithm {
            if format!("{key_alg:?}") != format!("{algorithm:?}") {
                return Err(TokenError::AlgorithmNotAllowed(header.alg));
            }
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| TokenError::Other(e.to_string()))?;
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.skew_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_audience(&self.audiences);
        validation.required_spec_claims = HashSet::from(["exp".to_string(), "aud".to_string()]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(map_jwt_error)?
            .claims;

        if claims.nbf.as_ref().is_some_and(|nbf| !nbf.is_number()) {
            return Err(TokenError::NotYetValid);
        }
        let loaded = provider.current().ok_or(TokenError::ProviderNotLoaded)?;
        self.check_issuer(&loaded.metadata, &claims)?;
        let iat = claims.iat.ok_or(TokenError::MissingClaim("iat"))?;
        if iat > unix_now() as i64 + self.skew_secs as i64 {
            return Err(TokenError::IssuedInFuture);
        }
        let subject = claims
            .sub
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::MissingClaim("sub"))?;
        if let Some(expected) = nonce {
            match claims.nonce.as_deref() {
                None => return Err(TokenError::MissingClaim("nonce")),
                Some(found) if !constant_time_eq(found.as_bytes(), expected.as_bytes()) => {
                    return Err(TokenError::NonceMismatch)
                }
                Some(_) => {}
            }
        }
        let identity = identity(claims, subject);
        crate::identity::check_identity(&identity).map_err(TokenError::UnsendableIdentity)?;
        Ok(identity)
    }

    fn check_issuer(&self, metadata: &Metadata, claims: &Claims) -> Result<(), TokenError> {
        let wrong = || TokenError::WrongIssuer {
            found: claims.iss.clone(),
        };
        if metadata.issuer_is_template() {
            // Multi-tenant: iss must be the template filled with the token's own tid,
            // and that tenant must be allowed.
            let tid = claims
                .tid
                .as_deref()
                .ok_or(TokenError::MissingClaim("tid"))?;
            if claims.iss != metadata.issuer.replace("{tenantid}", tid) {
                return Err(wrong());
            }
            if !self
                .allowed_tenants
                .iter()
                .any(|t| t.eq_ignore_ascii_case(tid))
            {
                return Err(TokenError::TenantNotAllowed(tid.to_string()));
            }
        } else {
            // Exact, as OIDC Core 3.1.3.7 requires (not even a trailing slash of difference).
            if claims.iss != metadata.issuer {
                return Err(wrong());
            }
            if let (false, Some(tid)) = (self.allowed_tenants.is_empty(), claims.tid.as_deref()) {
                if !self
                    .allowed_tenants
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(tid))
                {
                    return Err(TokenError::TenantNotAllowed(tid.to_string()));
                }
            }
        }
        Ok(())
    }
}

fn identity(claims: Claims, subject: String) -> Identity {
    let groups_overage = claims
        .claim_names
        .as_ref()
        .is_some_and(|names| names.get("groups").is_some())
        || matches!(claims.hasgroups, Some(serde_json::Value::Bool(true)))
        || matches!(&claims.hasgroups, Some(serde_json::Value::String(s)) if s == "true");
    let user = claims
        .preferred_username
        .clone()
        .or_else(|| claims.email.clone())
        .unwrap_or_else(|| subject.clone());
    Identity {
        user,
        subject,
        email: claims.email,
        preferred_username: claims.preferred_username,
        name: claims.name,
        oid: claims.oid,
        tid: claims.tid,
        groups: claims.groups.unwrap_or_default(),
        roles: claims.roles.unwrap_or_default(),
        groups_overage,
        issuer: claims.iss,
        header_values: Default::default(),
    }
}

/// The JOSE header, read before anything else so that `none` and HMAC are
/// refused by name, not by accident of parsing.
fn raw_header(token: &str) -> Result<RawHeader, TokenError> {
    let encoded = token.split('.').next().ok_or(TokenError::Malformed)?;
    if token.split('.').count() != 3 {
        return Err(TokenError::Malformed);
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "exp" => TokenError::MissingClaim("exp"),
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::MissingClaim("aud"),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => TokenError::Malformed,
        other => TokenError::Other(format!("{other:?}")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
