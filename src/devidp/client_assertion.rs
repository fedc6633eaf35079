//! Client assertions at the token endpoint, checked the way Entra does:
//! - a certificate credential (`private_key_jwt`): the header names a registered
//!   certificate by `x5t` (SHA-1) or `x5t#S256`; the signature (RS256 or PS256)
//!   verifies with that certificate's key; `aud` is this token endpoint;
//!   `iss` = `sub` = the client id; `exp` not passed, `nbf` reached, at most
//!   10 minutes of lifetime; each `jti` is accepted once;
//! - a federated credential: a token of the trusted workload issuer (this IdP
//!   signs those too, [`super::DevIdp::mint_workload_token`]) with the
//!   federated subject and `aud = api://AzureADTokenExchange`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY, SHA256};
use ring::signature::{
    UnparsedPublicKey, VerificationAlgorithm, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value};

use super::tokens::now_secs;
use super::web::b64url;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The audience of federated credentials in the global cloud.
pub const FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Longest client-assertion lifetime accepted.
const MAX_LIFETIME_SECS: u64 = 600;
const SKEW_SECS: u64 = 60;

/// A certificate registered for the app: its thumbprints and public key.
#[derive(Clone)]
pub(super) struct RegisteredCertificate {
    x5t: String,
    x5t_s256: String,
    /// PKCS#1 RSAPublicKey DER.
    public_key: Vec<u8>,
}

impl RegisteredCertificate {
    pub(super) fn from_pem(pem: &str) -> Result<Self, String> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("dev IdP: a client certificate is not PEM: {e}"))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("dev IdP: a client certificate does not parse: {e}"))?;
        Ok(RegisteredCertificate {
            x5t: b64url(digest(&SHA1_FOR_LEGACY_USE_ONLY, der.as_ref())),
            x5t_s256: b64url(digest(&SHA256, der.as_ref())),
            public_key: parsed.public_key().subject_public_key.data.to_vec(),
        })
    }
}

/// `jti`s seen, kept until their assertion would have expired anyway.
#[derive(Default)]
pub(super) struct SeenAssertions {
    jtis: HashMap<String, Instant>,
}

impl SeenAssertions {
    /// True the first time `jti` is presented.
    fn first_use(&mut self, jti: &str) -> bool {
        let now = Instant::now();
        let keep = Duration::from_secs(MAX_LIFETIME_SECS + SKEW_SECS);
        self.jtis.retain(|_, at| now.duration_since(*at) <= keep);
        self.jtis.insert(jti.to_string(), now).is_none()
    }
}

/// A parsed JWT: header, claims, signing input and signature.
struct Jwt {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    input: String,
    signature: Vec<u8>,
}

fn parse(token: &str) -> Option<Jwt> {
    let mut parts = token.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let object = |part: &str| -> Option<Map<String, Value>> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
    };
    Some(Jwt {
        header: object(h)?,
        claims: object(c)?,
        input: format!("{h}.{c}"),
        signature: URL_SAFE_NO_PAD.decode(s).ok()?,
    })
}

/// Verifies a workload-issuer token signature: `(kid, signing input, signature)`.
pub(super) type WorkloadKeyCheck<'a> = &'a dyn Fn(Option<&str>, &[u8], &[u8]) -> bool;

/// What the token endpoint needs to check an assertion.
pub(super) struct AssertionContext<'a> {
    pub client_id: &'a str,
    pub token_endpoint: &'a str,
    pub certificates: &'a [RegisteredCertificate],
    /// `(issuer, subject)` of the federated credential, when one is registered.
    pub federation: Option<(&'a str, &'a str)>,
    pub workload_key: WorkloadKeyCheck<'a>,
}

/// Checks `assertion` (`client_assertion_type` was checked by the caller).
pub(super) fn check(
    context: &AssertionContext<'_>,
    seen: &mut SeenAssertions,
    assertion: &str,
) -> Result<(), String> {
    let jwt = parse(assertion).ok_or_else(|| {
        "AADSTS50027: JWT token is invalid or malformed (client_assertion).".to_string()
    })?;
    let text = |name: &str| jwt.claims.get(name).and_then(Value::as_str);
    let thumbprint = jwt
        .header
        .get("x5t#S256")
        .or_else(|| jwt.header.get("x5t"))
        .and_then(Value::as_str);
    let federated = thumbprint.is_none();
    if federated {
        let Some((issuer, subject)) = context.federation else {
            return Err(format!(
                "AADSTS700027: Client assertion failed signature validation. [Reason - The key \
                 was not found.] (no x5t or x5t#S256 header, and app '{}' has no federated \
                 credential)",
                context.client_id
            ));
        };
        let kid = jwt.header.get("kid").and_then(Value::as_str);
        if jwt.header.get("alg").and_then(Value::as_str) != Some("RS256")
            && jwt.header.get("alg").and_then(Value::as_str) != Some("ES256")
            || !(context.workload_key)(kid, jwt.input.as_bytes(), &jwt.signature)
        {
            return Err(
                "AADSTS700211: No matching federated identity record found for presented \
                 assertion issuer (signature does not verify with the issuer's keys)."
                    .into(),
            );
        }
        if text("iss") != Some(issuer) {
            return Err(format!(
                "AADSTS700211: No matching federated identity record found for presented \
                 assertion issuer '{}'.",
                text("iss").unwrap_or_default()
            ));
        }
        if text("sub") != Some(subject) {
            return Err(format!(
                "AADSTS700213: No matching federated identity record found for presented \
                 assertion subject '{}'.",
                text("sub").unwrap_or_default()
            ));
        }
        if !audience_contains(&jwt.claims, FEDERATION_AUDIENCE) {
            return Err(format!(
                "AADSTS700212: No matching federated identity record found for presented \
                 assertion audience (expected '{FEDERATION_AUDIENCE}')."
            ));
        }
        check_times(&jwt.claims, false)?;
        return Ok(());
    }

    let thumbprint = thumbprint.unwrap_or_default();
    let by_sha256 = jwt.header.contains_key("x5t#S256");
    let certificate = context.certificates.iter().find(|c| {
        if by_sha256 {
            c.x5t_s256 == thumbprint
        } else {
            c.x5t == thumbprint
        }
    });
    let Some(certificate) = certificate else {
        return Err(format!(
            "AADSTS700027: Client assertion failed signature validation. [Reason - The key was \
             not found., Thumbprint of key used by client: '{thumbprint}'. Please visit the \
             Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for \
             app Id '{}'.]",
            context.client_id
        ));
    };
    let algorithm: &'static dyn VerificationAlgorithm =
        match jwt.header.get("alg").and_then(Value::as_str) {
            Some("RS256") => &RSA_PKCS1_2048_8192_SHA256,
            Some("PS256") => &RSA_PSS_2048_8192_SHA256,
            other => {
                return Err(format!(
                    "AADSTS5002738: Invalid JWT token. '{}' is not a supported signature \
                     algorithm (RS256, PS256).",
                    other.unwrap_or("none")
                ))
            }
        };
    UnparsedPublicKey::new(algorithm, &certificate.public_key)
        .verify(jwt.input.as_bytes(), &jwt.signature)
        .map_err(|_| {
            "AADSTS700027: Client assertion failed signature validation. [Reason - The \
             signature is invalid.]"
                .to_string()
        })?;
    if !audience_contains(&jwt.claims, context.token_endpoint) {
        return Err(format!(
            "AADSTS700024: Client assertion audience claim does not match Realm issuer \
             (expected '{}').",
            context.token_endpoint
        ));
    }
    if text("iss") != Some(context.client_id) || text("sub") != Some(context.client_id) {
        return Err(
            "AADSTS700023: Client assertion issuer and subject must both be the client id.".into(),
        );
    }
    check_times(&jwt.claims, true)?;
    let jti = text("jti").filter(|j| !j.is_empty()).ok_or_else(|| {
        "AADSTS700025: Client assertion has no jti claim (a unique identifier is required)."
            .to_string()
    })?;
    if !seen.first_use(jti) {
        return Err(
            "AADSTS700025: Client assertion was already used (jti replayed); each request \
             needs a new assertion."
                .into(),
        );
    }
    Ok(())
}

fn audience_contains(claims: &Map<String, Value>, audience: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

/// `exp` in the future, `nbf` reached; with `bounded`, at most 10 minutes long.
fn check_times(claims: &Map<String, Value>, bounded: bool) -> Result<(), String> {
    let now = now_secs();
    let number = |name: &str| claims.get(name).and_then(Value::as_u64);
    let exp = number("exp").ok_or_else(|| {
        "AADSTS700024: Client assertion is not within its valid time range (no exp).".to_string()
    })?;
    if exp + SKEW_SECS < now {
        return Err(format!(
            "AADSTS700024: Client assertion is not within its valid time range. Current time: \
             {now}, assertion valid until {exp}."
        ));
    }
    if number("nbf").is_some_and(|nbf| nbf > now + SKEW_SECS) {
        return Err(
            "AADSTS700024: Client assertion is not within its valid time range (nbf in \
                    the future)."
                .into(),
        );
    }
    if bounded {
        let start = number("nbf").or(number("iat")).unwrap_or(now);
        if exp.saturating_sub(start) > MAX_LIFETIME_SECS {
            return Err(format!(
                "AADSTS700024: Client assertion lifetime exceeds {MAX_LIFETIME_SECS} seconds."
            ));
        }
    }
    Ok(())
}
