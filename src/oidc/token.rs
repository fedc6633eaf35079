//! ID-token validation, per the security rules: signature against the
//! issuer's JWKS with an algorithm from the allow-list (never `none`, never
//! HMAC), exact `iss` (or Entra's `{tenantid}` template per Microsoft's
//! multi-tenant recipe: `tid` a GUID, `iss` the template with that `tid`, the
//! signing key's own `issuer` agreeing, the tenant allowed), `aud` containing
//! client_id, `exp`, `nbf`, `iat`, `sub`, `nonce`; clock skew at most 60 s.
//! The user header's claim (`headers.user_claim`) must be present: never
//! another claim in its place.

use std::collections::HashSet;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::provider::{Metadata, Provider};
use crate::config::{Settings, UserClaim};
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
    #[error("tid {0:?} is not a GUID (a multi-tenant issuer is filled in only with a tenant id)")]
    TenantNotGuid(String),
    #[error(
        "the signing key's own issuer {key_issuer:?} does not match the token's iss {found:?}"
    )]
    KeyIssuerMismatch { key_issuer: String, found: String },
    #[error("the audience does not contain this client")]
    WrongAudience,
    #[error("required claim {0:?} is missing")]
    MissingClaim(&'static str),
    /// E.g. a date as a string: a check that cannot be made fails closed.
    #[error("claim {0:?} does not have the type the standard gives it")]
    InvalidClaimFormat(String),
    #[error("the nonce does not match this login")]
    NonceMismatch,
    /// The claim `headers.user_claim` names is absent (or, for `email`, unverified).
    #[error("claim `{claim}` (headers.user_claim) {problem}")]
    UserClaimMissing {
        claim: &'static str,
        problem: &'static str,
    },
    #[error("the user authenticated {age_secs}s ago, longer ago than oidc.max_age allows")]
    AuthenticationTooOld { age_secs: i64 },
    #[error("the identity provider's metadata is not loaded")]
    ProviderNotLoaded,
    #[error("the token was rejected: {0}")]
    Other(String),
    /// A claim the gateway would have to alter to send upstream.
    #[error("{0}: the gateway sends identity values unaltered or not at all")]
    UnsendableIdentity(crate::identity::UnsendableValue),
}

impl TokenError {
    /// A stable name of the reason, for pages, JSON answers, logs and metrics
    /// (the message may carry token values; this never does).
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::WrongIssuer { .. } => "wrong_issuer",
            TokenError::TenantNotAllowed(_) => "tenant_not_allowed",
            TokenError::TenantNotGuid(_) => "tenant_not_guid",
            TokenError::KeyIssuerMismatch { .. } => "key_issuer_mismatch",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::MissingClaim("exp") => "missing_exp",
            TokenError::MissingClaim("aud") => "missing_aud",
            TokenError::MissingClaim("iat") => "missing_iat",
            TokenError::MissingClaim("sub") => "missing_sub",
            TokenError::MissingClaim("nonce") => "missing_nonce",
            TokenError::MissingClaim("tid") => "missing_tid",
            TokenError::MissingClaim("auth_time") => "missing_auth_time",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::InvalidClaimFormat(_) => "invalid_claim_format",
            TokenError::NonceMismatch => "nonce_mismatch",
            TokenError::UserClaimMissing { .. } => "user_claim_missing",
            TokenError::AuthenticationTooOld { .. } => "authentication_too_old",
            TokenError::ProviderNotLoaded => "provider_not_loaded",
            TokenError::Other(_) => "other",
            TokenError::UnsendableIdentity(_) => "unsendable_identity",
        }
    }
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
    /// When the user authenticated (Entra: an optional claim; needed for oidc.max_age).
    #[serde(default)]
    auth_time: Option<i64>,
    #[serde(default)]
    tid: Option<String>,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    upn: Option<String>,
    #[serde(default)]
    email: Option<String>,
    /// "Email domain owner verified": a boolean (some tenants send "true"/1).
    #[serde(default)]
    xms_edov: Option<serde_json::Value>,
    #[serde(default)]
    idp: Option<String>,
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
    user_claim: UserClaim,
    /// oidc.max_age: `auth_time` must be at most this old (sign-in only).
    max_age_secs: Option<u64>,
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
            user_claim: settings.config.headers.user_claim,
            max_age_secs: oidc.max_age.map(|age| age.as_secs()),
        }
    }

    /// The policy for `Authorization: Bearer` tokens: the same issuer, keys and
    /// checks, with `bearer.audiences` (default: the client id and `api://<client id>`).
    pub fn for_bearer(settings: &Settings) -> Self {
        let mut policy = TokenPolicy::new(settings);
        // max_age is a sign-in request parameter; API tokens carry no auth_time.
        policy.max_age_secs = None;
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
    /// A rejection is counted in the metrics by its reason.
    pub async fn validate(
        &self,
        provider: &Provider,
        token: &str,
        nonce: Option<&str>,
    ) -> Result<Identity, TokenError> {
        let checked = self.check(provider, token, nonce).await;
        if let Err(e) = &checked {
            crate::metrics::id_token_rejected(e.code());
        }
        checked
    }

    async fn check(
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
        if loaded.metadata.issuer_is_template() {
            check_key_issuer(loaded.key_issuer(header.kid.as_deref()), &claims)?;
        }
        let iat = claims.iat.ok_or(TokenError::MissingClaim("iat"))?;
        if iat > unix_now() as i64 + self.skew_secs as i64 {
            return Err(TokenError::IssuedInFuture);
        }
        if let Some(max_age) = self.max_age_secs {
            let auth_time = claims
                .auth_time
                .ok_or(TokenError::MissingClaim("auth_time"))?;
            let age_secs = unix_now() as i64 - auth_time;
            if age_secs > max_age as i64 + self.skew_secs as i64 {
                return Err(TokenError::AuthenticationTooOld { age_secs });
            }
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
        let identity = identity(claims, subject, self.user_claim)?;
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
            if !is_guid(tid) {
                return Err(TokenError::TenantNotGuid(tid.to_string()));
            }
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

/// Microsoft's recipe: a key whose JWKS entry names an issuer signs only for
/// that issuer (a `{tenantid}` template filled in with the token's `tid`).
fn check_key_issuer(key_issuer: Option<&str>, claims: &Claims) -> Result<(), TokenError> {
    let Some(key_issuer) = key_issuer else {
        return Ok(());
    };
    let expected = match claims.tid.as_deref() {
        Some(tid) => key_issuer.replace("{tenantid}", tid),
        None => key_issuer.to_string(),
    };
    if expected != claims.iss {
        return Err(TokenError::KeyIssuerMismatch {
            key_issuer: key_issuer.to_string(),
            found: claims.iss.clone(),
        });
    }
    Ok(())
}

/// `8-4-4-4-12` hexadecimal digits, as Entra's tenant ids are.
fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `xms_edov` as Entra sends it: `true` (or, from some tenants, "true"/"1"/1).
fn is_true(value: Option<&serde_json::Value>) -> bool {
    match value {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true" || s == "1",
        Some(serde_json::Value::Number(n)) => n.as_u64() == Some(1),
        _ => false,
    }
}

/// The value of the user header: exactly the claim `user_claim` names.
fn user_value(claims: &Claims, subject: &str, user_claim: UserClaim) -> Result<String, TokenError> {
    let missing = |problem| TokenError::UserClaimMissing {
        claim: user_claim.name(),
        problem,
    };
    let value = match user_claim {
        UserClaim::PreferredUsername => claims.preferred_username.clone(),
        UserClaim::Upn => claims.upn.clone(),
        UserClaim::Oid => claims.oid.clone(),
        UserClaim::Sub => Some(subject.to_string()),
        UserClaim::Email => {
            if claims.email.is_some() && !is_true(claims.xms_edov.as_ref()) {
                return Err(missing(
                    "is not verified by its domain's owner (no xms_edov: true)",
                ));
            }
            claims.email.clone()
        }
    };
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| missing("is missing or empty"))
}

fn identity(
    claims: Claims,
    subject: String,
    user_claim: UserClaim,
) -> Result<Identity, TokenError> {
    let groups_overage = claims
        .claim_names
        .as_ref()
        .is_some_and(|names| names.get("groups").is_some())
        || matches!(claims.hasgroups, Some(serde_json::Value::Bool(true)))
        || matches!(&claims.hasgroups, Some(serde_json::Value::String(s)) if s == "true");
    let user = user_value(&claims, &subject, user_claim)?;
    let email_domain_verified = claims.email.is_some() && is_true(claims.xms_edov.as_ref());
    Ok(Identity {
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
        upn: claims.upn,
        email_domain_verified,
        idp: claims.idp,
        header_values: Default::default(),
    })
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
        ErrorKind::InvalidClaimFormat(c) => TokenError::InvalidClaimFormat(c.clone()),
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

#[cfg(test)]
mod tests {
    //! Each rejection names its reason, against tokens from a running
    //! development IdP (ES256) read through a real [`Provider`].
    use super::*;
    use crate::devidp::{DevIdp, DevIdpOptions};
    use crate::health::Readiness;
    use serde_json::{json, Value};

    const TENANT: &str = "11111111-2222-3333-4444-555555555555";
    const OTHER_TENANT: &str = "99999999-8888-7777-6666-555555555555";
    const USER: &str = "alice@contoso.example";
    const NONCE: &str = "nonce-of-this-login";

    struct Fixture {
        idp: DevIdp,
        provider: Provider,
        policy: TokenPolicy,
    }

    async fn fixture_with(change: impl FnOnce(&mut DevIdpOptions), config: &str) -> Fixture {
        let mut options = DevIdpOptions {
            tenant_id: TENANT.into(),
            ..DevIdpOptions::default()
        };
        change(&mut options);
        let idp = DevIdp::start(options).await.expect("dev IdP starts");
        let (oidc, rest) = config.split_once("\n[").unwrap_or((config, ""));
        let text = format!(
            "[oidc]\nissuer = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"x\"\nallowed_algs = [\"ES256\"]\n{oidc}\n[upstream]\nurl = \"http://127.0.0.1:9\"\n{}",
            idp.issuer(),
            idp.options().client_id,
            if rest.is_empty() { String::new() } else { format!("[{rest}") },
        );
        let settings = crate::config::load_str(&text, &[]).expect("valid config");
        let provider = Provider::new(&settings, reqwest::Client::new(), Readiness::default());
        provider.load().await.expect("discovery and keys load");
        Fixture {
            idp,
            provider,
            policy: TokenPolicy::new(&settings),
        }
    }

    async fn fixture() -> Fixture {
        fixture_with(|_| {}, "").await
    }

    impl Fixture {
        /// A token for USER with `extra` claims merged in (null removes one).
        fn token(&self, extra: Value) -> String {
            let Value::Object(extra) = extra else {
                panic!("claims are an object")
            };
            self.idp.mint_id_token(USER, Some(NONCE), extra)
        }

        async fn check(&self, token: &str) -> Result<Identity, TokenError> {
            self.policy
                .validate(&self.provider, token, Some(NONCE))
                .await
        }

        async fn refused(&self, extra: Value) -> TokenError {
            let token = self.token(extra.clone());
            self.check(&token)
                .await
                .expect_err(&format!("a token with {extra} is refused"))
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// `token`'s payload under another header and signature.
    fn resigned(token: &str, header: Value, signature: impl FnOnce(&str) -> Vec<u8>) -> String {
        let payload = token.split('.').nth(1).expect("a JWT");
        let input = format!("{}.{payload}", b64(header.to_string().as_bytes()));
        let signature = b64(&signature(&input));
        format!("{input}.{signature}")
    }

    #[tokio::test]
    async fn a_valid_token_names_the_user_by_preferred_username() {
        let f = fixture().await;
        let identity = f.check(&f.token(json!({}))).await.expect("valid");
        assert_eq!(identity.user, USER);
        assert_eq!(
            identity.oid.as_deref(),
            Some(f.idp.object_id(USER).as_str())
        );
        assert_eq!(identity.tid.as_deref(), Some(TENANT));
        assert!(!identity.email_domain_verified);
    }

    #[tokio::test]
    async fn claim_rejections_name_their_reason() {
        let f = fixture().await;
        let now = unix_now() as i64;
        let cases = [
            (json!({"iss": "https://evil.example/v2.0"}), "wrong_issuer"),
            (
                json!({"iss": format!("{}/", f.idp.token_issuer())}),
                "wrong_issuer",
            ),
            (json!({"aud": "another-app"}), "wrong_audience"),
            (json!({"aud": null}), "missing_aud"),
            (
                json!({"exp": now - 3600, "iat": now - 7200, "nbf": now - 7200}),
                "expired",
            ),
            (json!({"exp": null}), "missing_exp"),
            (json!({"nbf": now + 600}), "not_yet_valid"),
            (
                json!({"nbf": (now + 600).to_string()}),
                "invalid_claim_format",
            ),
            // jsonwebtoken reads an exp it cannot parse as absent: refused all the same.
            (json!({"exp": (now + 600).to_string()}), "missing_exp"),
            (json!({"iat": null}), "missing_iat"),
            (
                json!({"iat": now + 3600, "exp": now + 7200}),
                "issued_in_future",
            ),
            (json!({"sub": null}), "missing_sub"),
            (json!({"sub": ""}), "missing_sub"),
            (json!({"nonce": null}), "missing_nonce"),
            (json!({"nonce": "another-login"}), "nonce_mismatch"),
            (json!({"preferred_username": null}), "user_claim_missing"),
            (
                json!({"preferred_username": "adm\u{200B}in@contoso.example"}),
                "unsendable_identity",
            ),
            (json!({"groups": ["staff,admins"]}), "unsendable_identity"),
        ];
        for (claims, reason) in cases {
            let error = f.refused(claims.clone()).await;
            assert_eq!(error.code(), reason, "{claims}: {error}");
        }
    }

    #[tokio::test]
    async fn signature_rejections_name_their_reason() {
        let f = fixture().await;
        let token = f.token(json!({}));
        let kid = f.idp.active_kid();

        let unsigned = resigned(&token, json!({"alg": "none", "typ": "JWT"}), |_| Vec::new());
        assert_eq!(
            f.check(&unsigned).await.unwrap_err(),
            TokenError::AlgorithmNotAllowed("none".into())
        );
        let hmac = resigned(&token, json!({"alg": "HS256", "kid": kid}), |input| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"x");
            ring::hmac::sign(&key, input.as_bytes()).as_ref().to_vec()
        });
        assert_eq!(
            f.check(&hmac).await.unwrap_err(),
            TokenError::AlgorithmNotAllowed("HS256".into())
        );
        // ES256 key, RS256 allowed only: refused by name before any key is used.
        let rs256 = resigned(&token, json!({"alg": "RS256", "kid": kid}), |_| {
            vec![1; 256]
        });
        assert_eq!(
            f.check(&rs256).await.unwrap_err(),
            TokenError::AlgorithmNotAllowed("RS256".into())
        );

        let (input, signature) = token.rsplit_once('.').expect("a JWT");
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .expect("base64url signature");
        bytes[10] ^= 0x01;
        let corrupt = format!("{input}.{}", b64(&bytes));
        assert_eq!(
            f.check(&corrupt).await.unwrap_err(),
            TokenError::BadSignature
        );

        let unknown = resigned(
            &token,
            json!({"alg": "ES256", "kid": "no-such-key"}),
            |_| bytes.clone(),
        );
        assert_eq!(
            f.check(&unknown).await.unwrap_err(),
            TokenError::UnknownKey("no-such-key".into())
        );
        for garbage in ["", "a.b", "not-base64!.x.y", "e30.e30.e30.e30"] {
            assert_eq!(
                f.check(garbage).await.unwrap_err(),
                TokenError::Malformed,
                "{garbage:?}"
            );
        }
    }

    #[tokio::test]
    async fn allowed_tenants_restrict_a_single_tenant_issuer() {
        let f = fixture_with(|_| {}, &format!("allowed_tenants = [\"{OTHER_TENANT}\"]")).await;
        assert_eq!(
            f.refused(json!({})).await,
            TokenError::TenantNotAllowed(TENANT.into())
        );
    }

    async fn multi_tenant(allowed: &[&str]) -> Fixture {
        let list = allowed
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        fixture_with(
            |o| o.multi_tenant = true,
            &format!("allowed_tenants = [{list}]"),
        )
        .await
    }

    #[tokio::test]
    async fn multi_tenant_tokens_follow_microsofts_recipe() {
        let f = multi_tenant(&[TENANT, OTHER_TENANT, "contoso"]).await;
        let base = f.idp.base_url();
        let identity = f.check(&f.token(json!({}))).await.expect("own tenant");
        assert_eq!(identity.tid.as_deref(), Some(TENANT));

        // iss must be the template filled in with the token's own tid.
        let other_iss = format!("{base}/{OTHER_TENANT}/v2.0");
        assert_eq!(
            f.refused(json!({"iss": other_iss})).await,
            TokenError::WrongIssuer { found: other_iss }
        );
        assert_eq!(
            f.refused(json!({"tid": null})).await,
            TokenError::MissingClaim("tid")
        );
        // tid must be a GUID, even when the substituted issuer would match.
        assert_eq!(
            f.refused(json!({"tid": "contoso", "iss": format!("{base}/contoso/v2.0")}))
                .await,
            TokenError::TenantNotGuid("contoso".into())
        );
    }

    #[tokio::test]
    async fn multi_tenant_tenant_must_be_allowed() {
        let f = multi_tenant(&[OTHER_TENANT]).await;
        assert_eq!(
            f.refused(json!({})).await,
            TokenError::TenantNotAllowed(TENANT.into())
        );
    }

    #[tokio::test]
    async fn multi_tenant_key_must_agree_with_its_published_issuer() {
        let f = multi_tenant(&[TENANT, OTHER_TENANT]).await;
        // A key published for one tenant only signs that tenant's tokens.
        let other_iss = format!("{}/{OTHER_TENANT}/v2.0", f.idp.base_url());
        f.idp.set_key_issuer(Some(other_iss.clone()));
        f.provider.load().await.expect("keys reload");
        assert_eq!(
            f.refused(json!({})).await,
            TokenError::KeyIssuerMismatch {
                key_issuer: other_iss,
                found: f.idp.token_issuer(),
            }
        );
    }

    #[tokio::test]
    async fn the_user_claim_is_exactly_the_configured_one() {
        let by_oid = fixture_with(|_| {}, "\n[headers]\nuser_claim = \"oid\"").await;
        let identity = by_oid.check(&by_oid.token(json!({}))).await.expect("valid");
        assert_eq!(identity.user, by_oid.idp.object_id(USER));
        assert_eq!(
            by_oid.refused(json!({"oid": null})).await,
            TokenError::UserClaimMissing {
                claim: "oid",
                problem: "is missing or empty"
            }
        );

        let by_upn = fixture_with(|_| {}, "\n[headers]\nuser_claim = \"upn\"").await;
        let error = by_upn.refused(json!({})).await;
        assert_eq!(
            error.code(),
            "user_claim_missing",
            "no upn, no fallback: {error}"
        );
        let identity = by_upn
            .check(&by_upn.token(json!({"upn": "alice@contoso.example"})))
            .await
            .expect("with upn");
        assert_eq!(identity.user, "alice@contoso.example");

        let by_email = fixture_with(|_| {}, "\n[headers]\nuser_claim = \"email\"").await;
        let error = by_email
            .refused(json!({"email": "boss@contoso.example"}))
            .await;
        assert!(
            error.to_string().contains("xms_edov"),
            "an unverified email never names the user: {error}"
        );
        let identity = by_email
            .check(&by_email.token(json!({"email": "alice@contoso.example", "xms_edov": true})))
            .await
            .expect("verified email");
        assert_eq!(identity.user, "alice@contoso.example");
        assert!(identity.email_domain_verified);
    }

    #[test]
    fn reason_codes_are_distinct() {
        let errors = [
            TokenError::Malformed,
            TokenError::AlgorithmNotAllowed(String::new()),
            TokenError::UnknownKey(String::new()),
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::IssuedInFuture,
            TokenError::WrongIssuer {
                found: String::new(),
            },
            TokenError::TenantNotAllowed(String::new()),
            TokenError::TenantNotGuid(String::new()),
            TokenError::KeyIssuerMismatch {
                key_issuer: String::new(),
                found: String::new(),
            },
            TokenError::WrongAudience,
            TokenError::MissingClaim("exp"),
            TokenError::MissingClaim("aud"),
            TokenError::MissingClaim("iat"),
            TokenError::MissingClaim("auth_time"),
            TokenError::AuthenticationTooOld { age_secs: 0 },
            TokenError::MissingClaim("sub"),
            TokenError::MissingClaim("nonce"),
            TokenError::MissingClaim("tid"),
            TokenError::InvalidClaimFormat(String::new()),
            TokenError::NonceMismatch,
            TokenError::UserClaimMissing {
                claim: "oid",
                problem: "",
            },
            TokenError::ProviderNotLoaded,
            TokenError::Other(String::new()),
            TokenError::UnsendableIdentity(crate::identity::UnsendableValue {
                claim: "sub",
                problem: "is empty",
            }),
        ];
        let codes: HashSet<&str> = errors.iter().map(TokenError::code).collect();
        assert_eq!(codes.len(), errors.len());
        for code in codes {
            assert!(
                crate::metrics::ID_TOKEN_REASONS.contains(&code),
                "{code} is counted under its own label, not \"other\""
            );
        }
    }

    #[test]
    fn tenant_ids_must_be_guids() {
        assert!(is_guid(TENANT));
        assert!(is_guid("9188040D-6C67-4C5B-B112-36A304B66DAD"));
        for not in [
            "contoso",
            "contoso.onmicrosoft.com",
            "11111111-2222-3333-4444-55555555555",
            "11111111-2222-3333-4444-555555555555-6",
            "1111111g-2222-3333-4444-555555555555",
            "{tenantid}",
        ] {
            assert!(!is_guid(not), "{not}");
        }
    }
}
