//! The tokens of the development IdP: Entra v2.0-shaped ID token claims, a
//! Graph-like access token, and signing per [`SignAs`].

use std::time::{SystemTime, UNIX_EPOCH};

use ring::digest::{digest, SHA256};
use serde_json::{json, Map, Value};

use super::keys::{signing_input, SigningKey};
use super::web::{b64url, random_uuid, uuid_string};
use super::{lock, random_token, Shared, SignAs};

/// The audience of the access token: Microsoft Graph's application id.
pub(super) const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// Domain appended to user names without one (`alice` → `alice@devidp.example`).
pub(super) const DEFAULT_DOMAIN: &str = "devidp.example";

/// Who signed in, and with what.
#[derive(Debug, Clone)]
pub(super) struct Login {
    pub(super) user: String,
    pub(super) groups: Vec<String>,
    pub(super) scope: String,
    /// The IdP's session of this sign-in (Entra's `sid` claim and the
    /// `session_state` of the authorization response); refresh keeps it.
    pub(super) sid: String,
    /// When the user authenticated (Unix seconds): `auth_time`; refresh keeps it.
    pub(super) auth_time: u64,
}

/// Seconds since the Unix epoch.
pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// `sub`: pairwise per user and client, 43 base64url characters like Entra's.
pub(super) fn subject(user: &str, client_id: &str) -> String {
    b64url(digest(&SHA256, format!("{user}|{client_id}").as_bytes()))
}

/// `oid`: a stable UUID-shaped object id per user.
pub(super) fn object_id(user: &str) -> String {
    let hash = digest(&SHA256, user.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_ref()[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid_string(&bytes)
}

/// `preferred_username`: the user name, with `@devidp.example` when it has no domain.
pub(super) fn preferred_username(user: &str) -> String {
    if user.contains('@') {
        user.to_string()
    } else {
        format!("{user}@{DEFAULT_DOMAIN}")
    }
}

/// `name`: the part of the user name before any `@`.
fn display_name(user: &str) -> String {
    user.split('@').next().unwrap_or(user).to_string()
}

/// Merges `extra` into `claims`; a `null` value removes the claim.
pub(super) fn merge_claims(claims: &mut Map<String, Value>, extra: &Map<String, Value>) {
    for (name, value) in extra {
        if value.is_null() {
            claims.remove(name);
        } else {
            claims.insert(name.clone(), value.clone());
        }
    }
}

impl Shared {
    /// The `iss` of every token: `http://127.0.0.1:PORT/<tenant>/v2.0`, or the
    /// declared [`DevIdpOptions::issuer`](super::DevIdpOptions::issuer).
    pub(super) fn token_issuer(&self) -> String {
        match &self.options.issuer {
            Some(issuer) => issuer.clone(),
            None => format!("{}/{}/v2.0", self.base_url, self.options.tenant_id),
        }
    }

    /// The claims of an ID token for `login` (per-user overrides applied).
    pub(super) fn id_token_claims(&self, login: &Login, nonce: Option<&str>) -> Map<String, Value> {
        let options = &self.options;
        let iat = now_secs();
        let exp = iat + options.token_lifetime.as_secs();
        let mut claims = Map::new();
        let mut put = |name: &str, value: Value| {
            claims.insert(name.to_string(), value);
        };
        put("aud", json!(options.client_id));
        put("iss", json!(self.token_issuer()));
        put("iat", json!(iat));
        put("nbf", json!(iat));
        put("exp", json!(exp));
        put("aio", json!(b64url(random_token::<48>())));
        put("auth_time", json!(login.auth_time));
        put("name", json!(display_name(&login.user)));
        if let Some(nonce) = nonce {
            put("nonce", json!(nonce));
        }
        put("oid", json!(object_id(&login.user)));
        put("preferred_username", json!(preferred_username(&login.user)));
        if options.email_claim {
            // The UPN as address, on a domain the tenant owns: Entra adds
            // xms_edov (when configured as optional claim) as verified.
            put("email", json!(preferred_username(&login.user)));
            put("xms_edov", json!(true));
        }
        if !login.groups.is_empty() {
            put("groups", json!(login.groups));
        }
        put("rh", json!(format!("0.{}.", b64url(random_token::<40>()))));
        if options.sid_claim && !login.sid.is_empty() {
            put("sid", json!(login.sid));
        }
        put("sub", json!(subject(&login.user, &options.client_id)));
        put("tid", json!(options.tenant_id));
        put("uti", json!(b64url(random_token::<16>())));
        put("ver", json!("2.0"));
        if let Some(extra) = lock(&self.knobs).user_claims.get(&login.user) {
            merge_claims(&mut claims, extra);
        }
        super::graph::apply_overage(self, &mut claims, &object_id(&login.user));
        claims
    }

    /// A Graph-like access token (v1.0 shape, audience Microsoft Graph). Its
    /// `scp` holds `User.Read` like Entra's for an app registration with the
    /// default (consented) permission, requested or not.
    pub(super) fn access_token(&self, login: &Login) -> String {
        let options = &self.options;
        let iat = now_secs();
        let scp = login
            .scope
            .split_whitespace()
            .filter(|s| {
                !matches!(
                    *s,
                    "openid" | "profile" | "email" | "offline_access" | "User.Read"
                )
            })
            .chain(["User.Read", "openid", "profile", "email"])
            .collect::<Vec<_>>()
            .join(" ");
        let claims = json!({
            "aud": GRAPH_APP_ID,
            "iss": format!("https://sts.windows.net/{}/", options.tenant_id),
            "iat": iat, "nbf": iat, "exp": iat + options.token_lifetime.as_secs(),
            "app_displayname": "oidc-gateway (development IdP)",
            "appid": options.client_id,
            "name": display_name(&login.user),
            "oid": object_id(&login.user),
            "scp": scp,
            "sub": subject(&login.user, GRAPH_APP_ID),
            "tid": options.tenant_id,
            "unique_name": preferred_username(&login.user),
            "upn": preferred_username(&login.user),
            "uti": b64url(random_token::<16>()),
            "ver": "1.0",
        });
        let claims = match claims {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let token = self.sign(self.default_header(), claims, SignAs::ActiveKey);
        let mut directory = lock(&self.directory);
        directory.issued(&token, object_id(&login.user), &scp, options.token_lifetime);
        // The user's groups as Graph will list them (also those beyond the token's limit).
        directory.set_groups(object_id(&login.user), login.groups.clone());
        token
    }

    /// An ID token as the token endpoint issues it: the token tweak (if any)
    /// rewrites header and claims and chooses how to sign.
    pub(super) fn issued_id_token(&self, login: &Login, nonce: Option<&str>) -> String {
        let mut header = self.default_header();
        let mut claims = self.id_token_claims(login, nonce);
        let tweak = lock(&self.knobs).tweak.clone();
        let how = match tweak {
            Some(tweak) => tweak(&mut header, &mut claims),
            None => SignAs::ActiveKey,
        };
        self.sign(header, claims, how)
    }

    /// `{"typ":"JWT","alg":…,"kid":…}` of the active key.
    pub(super) fn default_header(&self) -> Map<String, Value> {
        let key = lock(&self.keys).active();
        let mut header = Map::new();
        header.insert("typ".into(), json!("JWT"));
        header.insert("alg".into(), json!(key.alg()));
        header.insert("kid".into(), json!(key.kid));
        header
    }

    /// Serializes and signs a JWT per `how`. `Unsigned`, `Hs256` and
    /// `UnpublishedKey` set the header's `alg` (and `kid`) to match.
    pub(super) fn sign(
        &self,
        mut header: Map<String, Value>,
        claims: Map<String, Value>,
        how: SignAs,
    ) -> String {
        let (input, signature) = match how {
            SignAs::ActiveKey | SignAs::CorruptSignature => {
                let input = signing_input(&header, &claims);
                let mut signature = self.sign_with_active(input.as_bytes());
                if matches!(how, SignAs::CorruptSignature) {
                    if let Some(first) = signature.first_mut() {
                        *first ^= 0x5a;
                    }
                }
                (input, signature)
            }
            #[cfg(feature = "devidp-forgeries")]
            SignAs::Unsigned => {
                header.insert("alg".into(), json!("none"));
                header.remove("kid");
                (signing_input(&header, &claims), Vec::new())
            }
            #[cfg(feature = "devidp-forgeries")]
            SignAs::Hs256(secret) => {
                header.insert("alg".into(), json!("HS256"));
                let input = signing_input(&header, &claims);
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
                let tag = ring::hmac::sign(&key, input.as_bytes()).as_ref().to_vec();
                (input, tag)
            }
            SignAs::UnpublishedKey => {
                let key = lock(&self.keys).unpublished();
                header.insert("alg".into(), json!(key.alg()));
                header.insert("kid".into(), json!(key.kid));
                let input = signing_input(&header, &claims);
                let signature = sign_or_log(&key, input.as_bytes());
                (input, signature)
            }
        };
        format!("{input}.{}", b64url(signature))
    }

    fn sign_with_active(&self, message: &[u8]) -> Vec<u8> {
        let key = lock(&self.keys).active();
        sign_or_log(&key, message)
    }
}

/// The signature, or an empty one (an invalid token) if ring fails.
fn sign_or_log(key: &SigningKey, message: &[u8]) -> Vec<u8> {
    key.sign(message).unwrap_or_else(|| {
        tracing::error!(kid = %key.kid, "dev IdP could not sign a token");
        Vec::new()
    })
}

/// An opaque refresh token (Entra's are opaque too).
pub(super) fn opaque_refresh_token() -> String {
    format!("0.{}.{}", random_uuid(), b64url(random_token::<64>()))
}
