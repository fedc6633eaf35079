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

/// Properties of identity values (`identity::check_identity`): whatever is
/// admitted reaches the upstream byte for byte, in the headers and in the
/// assertion alike; whatever a reader would see differently is refused.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::config::HeadersConfig;
    use crate::identity::{check_identity, IdentityHeaders};
    use base64::Engine as _;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// Characters a console or an HTTP reader may drop, show as nothing or
    /// reorder: zero-width, bidi controls, BOM, soft hyphen, word joiner, tags.
    const INVISIBLE: &[char] = &[
        '\u{200B}',
        '\u{200E}',
        '\u{202E}',
        '\u{2066}',
        '\u{FEFF}',
        '\u{00AD}',
        '\u{2060}',
        '\u{E0041}',
        '\u{180E}',
    ];

    fn plain() -> impl Strategy<Value = char> {
        prop::sample::select(vec![
            'a', 'd', 'm', 'i', 'n', 'Z', '0', '7', '@', '.', '-', '_', 'é', 'ö', '中', ' ',
            '\u{A0}',
        ])
    }

    /// Any text, the characters of names and every troublesome one.
    fn text() -> BoxedStrategy<String> {
        let plain = plain();
        let mut troublesome = vec![
            ',', ' ', '\t', '\n', '\r', '\0', '\x7f', '\u{85}', '\u{A0}', '\u{3000}',
        ];
        troublesome.extend_from_slice(INVISIBLE);
        let tricky = prop::sample::select(troublesome);
        prop::collection::vec(prop_oneof![12 => plain, 1 => tricky], 0..10)
            .prop_map(|chars| chars.into_iter().collect())
            .boxed()
    }

    /// Text that passes: names' characters, spaces only inside.
    fn admissible_text() -> BoxedStrategy<String> {
        prop::collection::vec(plain(), 1..10)
            .prop_map(|chars| chars.into_iter().collect::<String>())
            .prop_filter("no outer whitespace", |t: &String| t.trim() == t)
            .boxed()
    }

    /// The value as a reader that trims whitespace and drops controls and
    /// invisible characters would see it.
    fn as_read(value: &str) -> String {
        value
            .chars()
            .filter(|c| !c.is_control() && !INVISIBLE.contains(c))
            .collect::<String>()
            .trim()
            .to_string()
    }

    fn sendable(value: &str) -> bool {
        !value.is_empty() && as_read(value) == value
    }

    /// A list item must also stay one item in a comma-separated header.
    fn sendable_item(value: &str) -> bool {
        sendable(value) && !value.contains(',')
    }

    fn identity(text: fn() -> BoxedStrategy<String>) -> impl Strategy<Value = Identity> {
        let optional = || prop::option::of(text());
        (
            (text(), text(), optional(), optional()),
            (optional(), optional(), optional()),
            (
                prop::collection::vec(text(), 0..3),
                prop::collection::vec(text(), 0..3),
            ),
        )
            .prop_map(
                |((user, subject, email, preferred), (oid, tid, upn), (groups, roles))| {
                    let mut identity = Identity::example("x");
                    identity.user = user;
                    identity.subject = subject;
                    identity.email = email;
                    identity.preferred_username = preferred;
                    identity.oid = oid;
                    identity.tid = tid;
                    identity.upn = upn;
                    identity.groups = groups;
                    identity.roles = roles;
                    identity
                },
            )
    }

    fn signer() -> &'static AssertionSigner {
        static SIGNER: OnceLock<AssertionSigner> = OnceLock::new();
        SIGNER.get_or_init(|| {
            let settings = crate::config::load_str(
                "[oidc]\nissuer = \"https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0\"\n\
                 client_id = \"abc\"\nclient_secret = \"s3cret\"\n[upstream]\nurl = \"http://127.0.0.1:21114\"\n",
                &[],
            )
            .expect("config");
            AssertionSigner::new(&settings).expect("signer")
        })
    }

    /// The assertion's claims, read back from the JWT's payload.
    fn claims(assertion: &HeaderValue) -> serde_json::Value {
        let token = assertion.to_str().expect("ASCII JWT");
        let payload = token.split('.').nth(1).expect("three parts");
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url");
        serde_json::from_slice(&json).expect("JSON")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Refused exactly when some value would have to change to be sent:
        /// empty, or read differently (controls, invisible characters, outer
        /// whitespace), or a group/role that reads as two.
        #[test]
        fn identities_are_refused_exactly_when_a_value_would_need_altering(identity in identity(text)) {
            let optional = [&identity.email, &identity.preferred_username, &identity.oid, &identity.tid, &identity.upn];
            let expected = sendable(&identity.user)
                && sendable(&identity.subject)
                && optional.iter().all(|v| v.as_deref().is_none_or(sendable))
                && identity.groups.iter().all(|g| sendable_item(g))
                && identity.roles.iter().all(|r| sendable_item(r));
            prop_assert_eq!(check_identity(&identity).is_ok(), expected, "{:?}", check_identity(&identity));
        }

        /// What is admitted goes upstream unaltered: each header carries the
        /// value's exact bytes, the groups header splits back into the groups,
        /// and the assertion's claims are the same strings.
        #[test]
        fn admitted_identities_are_sent_byte_for_byte_in_headers_and_assertion(identity in identity(admissible_text)) {
            prop_assert!(check_identity(&identity).is_ok(), "{:?}", check_identity(&identity));
            let names = IdentityHeaders::new(&HeadersConfig::default(), &[]);
            let mut headers = http::HeaderMap::new();
            names.insert(&mut headers, &identity);
            let header = |name: &str| headers.get(name).map(|v| v.as_bytes().to_vec());
            let bytes = |v: &Option<String>| v.as_ref().map(|v| v.as_bytes().to_vec());
            prop_assert_eq!(header("x-forwarded-user"), Some(identity.user.as_bytes().to_vec()));
            prop_assert_eq!(header("x-forwarded-email"), bytes(&identity.email));
            prop_assert_eq!(header("x-forwarded-preferred-username"), bytes(&identity.preferred_username));
            prop_assert_eq!(header("x-forwarded-oid"), bytes(&identity.oid));
            prop_assert_eq!(header("x-forwarded-tid"), bytes(&identity.tid));
            let groups = header("x-forwarded-groups")
                .map(|v| String::from_utf8(v).unwrap().split(',').map(String::from).collect::<Vec<_>>())
                .unwrap_or_default();
            prop_assert_eq!(&groups, &identity.groups);

            let assertion = signer()
                .assertion(&identity, "http://console", 1_700_000_000, None)
                .expect("signed");
            let claims = claims(&assertion);
            prop_assert_eq!(claims["name"].as_str(), Some(identity.user.as_str()));
            prop_assert_eq!(claims["sub"].as_str(), Some(identity.subject.as_str()));
            prop_assert_eq!(claims["email"].as_str(), identity.email.as_deref());
            prop_assert_eq!(claims["preferred_username"].as_str(), identity.preferred_username.as_deref());
            prop_assert_eq!(claims["oid"].as_str(), identity.oid.as_deref());
            prop_assert_eq!(claims["tid"].as_str(), identity.tid.as_deref());
            let list = |claim: &serde_json::Value| -> Vec<String> {
                claim.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
            };
            prop_assert_eq!(list(&claims["groups"]), identity.groups.clone());
            prop_assert_eq!(list(&claims["roles"]), identity.roles.clone());
        }
    }
}
