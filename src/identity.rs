//! Identity headers sent upstream, and the removal of any inbound header that
//! could impersonate them.
//!
//! Matching ignores case (HTTP names are case-insensitive; `http` lower-cases
//! them) and treats `_` as `-`: many servers (nginx with underscores_in_headers,
//! CGI/WSGI, PHP) fold `X_Forwarded_User` into the same variable as
//! `X-Forwarded-User`, the smuggling vector of oauth2-proxy's advisory.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use crate::config::HeadersConfig;

/// Who a signed-in user is, from the ID token's claims (Entra v2.0 names).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Identity {
    /// What X-Forwarded-User carries: preferred_username, else email, else sub.
    pub user: String,
    pub subject: String,
    pub email: Option<String>,
    pub preferred_username: Option<String>,
    pub name: Option<String>,
    /// Entra object id (stable user id in the tenant).
    pub oid: Option<String>,
    /// Entra tenant id.
    pub tid: Option<String>,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    /// Entra sent an overage marker instead of the group list (more than ~200 groups).
    pub groups_overage: bool,
    pub issuer: String,
    /// The sanitized header values, built on first use and reused by every
    /// request of the session (sanitizing claims on each request cost more
    /// than all other identity work together).
    #[serde(skip)]
    pub header_values: HeaderValuesCache,
}

/// The identity as header values (see [`header_value`]); None where the claim
/// is absent or nothing visible is left of it.
#[derive(Debug, Clone, Default)]
pub struct IdentityValues {
    pub user: Option<HeaderValue>,
    pub email: Option<HeaderValue>,
    pub preferred_username: Option<HeaderValue>,
    /// Comma-joined.
    pub groups: Option<HeaderValue>,
}

impl IdentityValues {
    /// Sets the values present under `names` (user, email, preferred username,
    /// groups), replacing what was there.
    pub fn insert_into(&self, headers: &mut HeaderMap, names: [&HeaderName; 4]) {
        let values = [
            &self.user,
            &self.email,
            &self.preferred_username,
            &self.groups,
        ];
        for (name, value) in names.into_iter().zip(values) {
            if let Some(value) = value {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// A cache, not part of who someone is: equal whatever it holds.
#[derive(Debug, Clone, Default)]
pub struct HeaderValuesCache(OnceLock<IdentityValues>);

impl PartialEq for HeaderValuesCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for HeaderValuesCache {}

impl Identity {
    /// An identity with just a user name (unit tests).
    #[cfg(test)]
    pub fn for_tests(user: &str) -> Self {
        Identity {
            user: user.into(),
            subject: format!("sub-{user}"),
            email: None,
            preferred_username: Some(user.into()),
            name: None,
            oid: None,
            tid: None,
            groups: Vec::new(),
            roles: Vec::new(),
            groups_overage: false,
            issuer: "https://issuer.invalid".into(),
            header_values: Default::default(),
        }
    }

    /// The identity's header values, sanitized once per identity.
    pub fn header_values(&self) -> &IdentityValues {
        self.header_values.0.get_or_init(|| IdentityValues {
            user: header_value(&self.user),
            email: self.email.as_deref().and_then(header_value),
            preferred_username: self.preferred_username.as_deref().and_then(header_value),
            groups: (!self.groups.is_empty())
                .then(|| header_value(&self.groups.join(",")))
                .flatten(),
        })
    }
}

/// The configured names of the identity headers, parsed once.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    user: HeaderName,
    email: HeaderName,
    preferred_username: HeaderName,
    groups: HeaderName,
    /// Lower-cased configured names, stripped from requests like the defaults.
    configured: Vec<String>,
}

impl IdentityHeaders {
    /// Invalid names were rejected by config validation; fall back to defaults defensively.
    /// `also_strip`: further names the gateway sets (the assertion header).
    pub fn new(config: &HeadersConfig, also_strip: &[&str]) -> Self {
        let parse = |name: &str, default: &'static str| {
            HeaderName::from_bytes(name.as_bytes()).unwrap_or(HeaderName::from_static(default))
        };
        let user = parse(&config.user, "x-forwarded-user");
        let email = parse(&config.email, "x-forwarded-email");
        let preferred_username =
            parse(&config.preferred_username, "x-forwarded-preferred-username");
        let groups = parse(&config.groups, "x-forwarded-groups");
        let configured = [&user, &email, &preferred_username, &groups]
            .iter()
            .map(|n| n.as_str().replace('_', "-"))
            .chain(
                also_strip
                    .iter()
                    .map(|n| n.to_ascii_lowercase().replace('_', "-")),
            )
            .collect();
        IdentityHeaders {
            user,
            email,
            preferred_username,
            groups,
            configured,
        }
    }

    /// Is `name` one of ours (default or configured, any case, `_` for `-`)?
    pub fn is_identity_header(&self, name: &str) -> bool {
        is_identity_header(name) || self.configured.iter().any(|c| same_header(name, c))
    }

    /// Removes every variant of every identity header; returns how many values went.
    pub fn strip(&self, headers: &mut HeaderMap) -> usize {
        let spoofed: Vec<_> = headers
            .keys()
            .filter(|name| self.is_identity_header(name.as_str()))
            .cloned()
            .collect();
        let mut removed = 0;
        for name in spoofed {
            removed += headers.get_all(&name).iter().count();
            headers.remove(&name);
        }
        removed
    }

    /// Adds the identity headers for `identity` (after [`IdentityHeaders::strip`]).
    pub fn insert(&self, headers: &mut HeaderMap, identity: &Identity) {
        identity.header_values().insert_into(
            headers,
            [
                &self.user,
                &self.email,
                &self.preferred_username,
                &self.groups,
            ],
        );
    }
}

/// A header value from claim text: control characters (CR, LF, NUL, DEL, C1)
/// and other invisible characters are dropped, so a claim can never split or
/// forge headers. None when nothing visible is left.
pub fn header_value(text: &str) -> Option<HeaderValue> {
    let clean: String = text
        .chars()
        .filter(|c| {
            !c.is_control()
                && !matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{FEFF}')
        })
        .collect();
    let clean = clean.trim();
    if clean.is_empty() {
        return None;
    }
    // UTF-8 (names like "Zoë") travels as obs-text bytes, as proxies commonly do.
    HeaderValue::from_bytes(clean.as_bytes()).ok()
}

/// Identity headers the gateway sets (and therefore never accepts from a client).
pub const IDENTITY_HEADERS: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-gateway-assertion",
];

/// `true` when `name` equals `canonical` ignoring case and `_`/`-`.
fn same_header(name: &str, canonical: &str) -> bool {
    name.len() == canonical.len()
        && name.bytes().zip(canonical.bytes()).all(|(a, b)| {
            let a = if a == b'_' {
                b'-'
            } else {
                a.to_ascii_lowercase()
            };
            a == b
        })
}

/// Is `name` an identity header (or an underscore/case variant of one)?
pub fn is_identity_header(name: &str) -> bool {
    IDENTITY_HEADERS
        .iter()
        .any(|canonical| same_header(name, canonical))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_recognised() {
        for name in [
            "x-forwarded-user",
            "x_forwarded_user",
            "x-forwarded_email",
            "x_gateway_assertion",
        ] {
            assert!(is_identity_header(name), "{name}");
        }
        for name in [
            "x-forwarded-for",
            "x-forwarded-users",
            "x-forwarded-use",
            "cookie",
        ] {
            assert!(!is_identity_header(name), "{name}");
        }
    }

    #[test]
    fn claim_text_cannot_inject_headers() {
        assert_eq!(
            header_value("alice\r\nX-Admin: yes").unwrap(),
            "aliceX-Admin: yes"
        );
        assert_eq!(
            header_value("Zoë\u{200B}").unwrap().as_bytes(),
            "Zoë".as_bytes()
        );
        assert!(header_value("\u{0}\u{7f}").is_none());
    }

    #[test]
    fn configured_names_are_stripped_too() {
        let config = HeadersConfig {
            user: "X-Remote-User".into(),
            ..HeadersConfig::default()
        };
        let headers = IdentityHeaders::new(&config, &["X-Signed-Identity"]);
        assert!(headers.is_identity_header("x_remote_user"));
        assert!(headers.is_identity_header("x-signed_identity"));
        assert!(headers.is_identity_header("x-forwarded-user"));
    }

    #[test]
    fn strip_removes_every_value_of_every_variant() {
        let headers = IdentityHeaders::new(&HeadersConfig::default(), &[]);
        let mut h = HeaderMap::new();
        h.append("x-forwarded-user", "a".parse().unwrap());
        h.append("x-forwarded-user", "b".parse().unwrap());
        h.append("x_forwarded_groups", "admins".parse().unwrap());
        h.append("accept", "*/*".parse().unwrap());
        assert_eq!(headers.strip(&mut h), 3);
        assert_eq!(h.len(), 1);
    }
}
