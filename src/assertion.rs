//! The signed identity assertion: a short-lived ES256 JWT in `X-Gateway-Assertion`
//! (name configurable) with `iss`, `aud` (the origin of the upstream the request
//! goes to, unless `assertion.audience` fixes one), `sub`, `email`,
//! `groups`, `iat`, `exp`, so that a console able to verify it no longer needs to
//! trust plain headers. The public key is served at `<prefix>/jwks.json`.
//!
//! Signing costs tens of microseconds, so a session reuses its assertion within a
//! window of half the lifetime: every assertion sent has at least half its
//! lifetime left.

use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::config::Settings;
use crate::crypto::base64url;
use crate::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("key `assertion.key_file`: cannot read {path}: {reason}; it must be a PKCS#8 PEM P-256 key (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)")]
    Key { path: String, reason: String },
    #[error("cannot create the assertion signing key: {0}")]
    Generate(String),
}

pub struct AssertionSigner {
    key: EcdsaKeyPair,
    header_name: HeaderName,
    /// Pre-encoded JOSE header (`{"alg":"ES256","typ":"JWT","kid":…}`).
    jose: String,
    issuer: String,
    /// `assertion.audience`: one `aud` for every upstream; None: each upstream's origin.
    audience: Option<String>,
    lifetime_secs: u64,
    jwks: Bytes,
    rng: SystemRandom,
}

/// An assertion already signed for a session, reusable within its window and
/// for the same audience.
#[derive(Debug, Default)]
pub struct AssertionCache {
    slot: Mutex<Option<CachedAssertion>>,
}

#[derive(Debug)]
struct CachedAssertion {
    window: u64,
    audience: String,
    value: HeaderValue,
}

impl AssertionSigner {
    pub fn new(settings: &Settings) -> Result<Self, AssertionError> {
        let config = &settings.config.assertion;
        let rng = SystemRandom::new();
        let key = match &config.key_file {
            Some(path) => {
                let fail = |reason: String| AssertionError::Key {
                    path: path.display().to_string(),
                    reason,
                };
                let der = PrivateKeyDer::from_pem_file(path).map_err(|e| fail(e.to_string()))?;
                let PrivateKeyDer::Pkcs8(pkcs8) = der else {
                    return Err(fail(
                        "not a PKCS#8 key (convert with openssl pkcs8 -topk8 -nocrypt)".into(),
                    ));
                };
                EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.secret_pkcs8_der(),
                    &rng,
                )
                .map_err(|e| fail(format!("not a P-256 key ({e})")))?
            }
            None => {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|e| AssertionError::Generate(e.to_string()))?;
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .map_err(|e| AssertionError::Generate(e.to_string()))?
            }
        };
        // Uncompressed point: 0x04 || x (32) || y (32).
        let point = key.public_key().as_ref();
        let (x, y) = (base64url(&point[1..33]), base64url(&point[33..65]));
        // RFC 7638 thumbprint as the key id.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid =
            base64url(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref());
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": x, "y": y, "use": "sig", "alg": "ES256", "kid": kid,
        }]});
        let jose = base64url(
            serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid})
                .to_string()
                .as_bytes(),
        );
        let issuer = config.issuer.clone().unwrap_or_else(|| {
            settings
                .public_url
                .as_ref()
                .map(|u| u.to_string().trim_end_matches('/').to_string())
                .unwrap_or_else(|| "oidc-gateway".into())
        });
        Ok(AssertionSigner {
            key,
            header_name: HeaderName::from_bytes(config.header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-gateway-assertion")),
            jose,
            issuer,
            audience: config.audience.clone(),
            lifetime_secs: config.lifetime.as_secs().max(1),
            jwks: Bytes::from(jwks.to_string()),
            rng,
        })
    }

    pub fn header_name(&self) -> &HeaderName {
        &self.header_name
    }

    /// The JWKS document with the public key.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// The assertion for `identity` at `now` (Unix seconds) for the upstream
    /// whose origin is `upstream_origin`, reusing `cache` within its window when given.
    pub fn assertion(
        &self,
        identity: &Identity,
        upstream_origin: &str,
        now: u64,
        cache: Option<&AssertionCache>,
    ) -> Option<HeaderValue> {
        let audience = self.audience.as_deref().unwrap_or(upstream_origin);
        let window = now / (self.lifetime_secs / 2).max(1);
        if let Some(cache) = cache {
            if let Ok(slot) = cache.slot.lock() {
                if let Some(cached) = slot.as_ref() {
                    if cached.window == window && cached.audience == audience {
                        return Some(cached.value.clone());
                    }
                }
            }
        }
        let value = self.sign(identity, audience, now)?;
        if let Some(cache) = cache {
            if let Ok(mut slot) = cache.slot.lock() {
                *slot = Some(CachedAssertion {
                    window,
                    audience: audience.to_string(),
                    value: value.clone(),
                });
            }
        }
        Some(value)
    }

    fn sign(&self, identity: &Identity, audience: &str, now: u64) -> Option<HeaderValue> {
        let claims = serde_json::json!({
            "iss": self.issuer,
            "aud": audience,
            "sub": identity.subject,
            "name": identity.user,
            "email": identity.email,
            "preferred_username": identity.preferred_username,
            "oid": identity.oid,
            "tid": identity.tid,
            "groups": identity.groups,
            "roles": identity.roles,
            "iat": now,
            "exp": now + self.lifetime_secs,
        });
        let signing_input = format!("{}.{}", self.jose, base64url(claims.to_string().as_bytes()));
        let signature = self.key.sign(&self.rng, signing_input.as_bytes()).ok()?;
        HeaderValue::from_str(&format!(
            "{signing_input}.{}",
            base64url(signature.as_ref())
        ))
        .ok()
    }
}
