//! Identity headers sent upstream, and the removal of any inbound header that
//! could impersonate them.
//!
//! Matching ignores case (HTTP names are case-insensitive; `http` lower-cases
//! them) and treats `_` as `-`: many servers (nginx with underscores_in_headers,
//! CGI/WSGI, PHP) fold `X_Forwarded_User` into the same variable as
//! `X-Forwarded-User`, the smuggling vector of oauth2-proxy's advisory.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::config::HeadersConfig;

/// Who a signed-in user is, from the ID token's claims (Entra v2.0 names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// What X-Forwarded-User carries: the claim `headers.user_claim` names.
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
    /// The group list is missing: Entra sent an overage marker instead (more
    /// than ~200 groups) and it was not read from Microsoft Graph (bearer tokens).
    pub groups_overage: bool,
    pub issuer: String,
    /// The optional `upn` claim.
    #[serde(default)]
    pub upn: Option<String>,
    /// `xms_edov: true`: the owner of the `email` claim's domain verified it.
    #[serde(default)]
    pub email_domain_verified: bool,
    /// `idp`: who authenticated the user when it was not the token's tenant
    /// (a guest's home tenant, `live.com`).
    #[serde(default)]
    pub idp: Option<String>,
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
    pub oid: Option<HeaderValue>,
    pub tid: Option<HeaderValue>,
}

impl IdentityValues {
    /// Sets the values present under `names` (user, email, preferred username,
    /// groups, oid, tid), replacing what was there.
    pub fn insert_into(&self, headers: &mut HeaderMap, names: [&HeaderName; 6]) {
        let values = [
            &self.user,
            &self.email,
            &self.preferred_username,
            &self.groups,
            &self.oid,
            &self.tid,
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
        Self::example(user)
    }

    /// An identity with just a user name (tests, benchmarks, the store
    /// conformance suite).
    pub fn example(user: &str) -> Self {
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
            upn: None,
            email_domain_verified: false,
            idp: None,
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
            oid: self.oid.as_deref().and_then(header_value),
            tid: self.tid.as_deref().and_then(header_value),
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
    oid: HeaderName,
    tid: HeaderName,
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
        let oid = parse(&config.oid, "x-forwarded-oid");
        let tid = parse(&config.tid, "x-forwarded-tid");
        let configured = [&user, &email, &preferred_username, &groups, &oid, &tid]
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
            oid,
            tid,
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
                &self.oid,
                &self.tid,
            ],
        );
    }
}

/// Why an identity value cannot be sent upstream as it is. Such a value is
/// refused (at sign-in, or for that bearer request), never rewritten: a value
/// cleaned for a header would differ from the one in the signed assertion,
/// and cleaning is how `adm\u{200B}in@…` becomes `admin@…`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("claim `{claim}` {problem}")]
pub struct UnsendableValue {
    pub claim: &'static str,
    pub problem: &'static str,
}

/// Checks one identity value (a claim sent in a header and in the assertion):
/// not empty, no control character, no invisible or direction-changing
/// character (zero-width, bidi controls, BOM, soft hyphen, line separators),
/// no leading or trailing whitespace. Engineers adding identity headers call
/// this (or [`check_list_item`]) for each value they send.
pub fn check_value(claim: &'static str, text: &str) -> Result<(), UnsendableValue> {
    let fail = |problem| Err(UnsendableValue { claim, problem });
    if text.is_empty() {
        return fail("is empty");
    }
    if text.chars().any(char::is_control) {
        return fail("contains a control character");
    }
    if text.chars().any(is_invisible) {
        return fail("contains an invisible or direction-changing character");
    }
    if text.starts_with(char::is_whitespace) || text.ends_with(char::is_whitespace) {
        return fail("begins or ends with whitespace");
    }
    Ok(())
}

/// [`check_value`] for an item of a comma-separated header (groups, roles):
/// a comma inside one item would read as two.
pub fn check_list_item(claim: &'static str, text: &str) -> Result<(), UnsendableValue> {
    check_value(claim, text)?;
    if text.contains(',') {
        return Err(UnsendableValue {
            claim,
            problem: "contains a comma (the header is a comma-separated list)",
        });
    }
    Ok(())
}

/// Every value of `identity` that is sent upstream, checked.
pub fn check_identity(identity: &Identity) -> Result<(), UnsendableValue> {
    check_value("sub", &identity.subject)?;
    for (claim, value) in [
        ("email", &identity.email),
        ("preferred_username", &identity.preferred_username),
        ("oid", &identity.oid),
        ("tid", &identity.tid),
        ("upn", &identity.upn),
    ] {
        if let Some(value) = value {
            check_value(claim, value)?;
        }
    }
    // The claim it came from is named above; this covers what else it may be.
    check_value("user", &identity.user)?;
    for group in &identity.groups {
        check_list_item("groups", group)?;
    }
    for role in &identity.roles {
        check_list_item("roles", role)?;
    }
    Ok(())
}

/// Format characters (Unicode Cf) and separators that render as nothing or
/// reorder text, which a console would show as another account's name.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
}

/// A header value from an identity value checked by [`check_value`]: the
/// text itself, never altered. None (no header) for text that was not
/// checked and would not pass — defensive only, sign-in refuses those.
/// UTF-8 (names like "Zoë") travels as obs-text bytes, as proxies commonly do.
pub fn header_value(text: &str) -> Option<HeaderValue> {
    if check_value("value", text).is_err() {
        return None;
    }
    HeaderValue::from_bytes(text.as_bytes()).ok()
}

/// Identity headers the gateway sets (and therefore never accepts from a client).
pub const IDENTITY_HEADERS: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-oid",
    "x-forwarded-tid",
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
    fn identity_values_are_refused_not_rewritten() {
        for (text, problem) in [
            ("alice\r\nX-Admin: yes", "control character"),
            ("adm\u{200B}in@contoso.example", "invisible"),
            ("\u{202E}nimda", "invisible"),
            ("\u{200B}\u{200C}", "invisible"),
            (" admin@contoso.example", "whitespace"),
            ("admin@contoso.example\u{3000}", "whitespace"),
            ("", "empty"),
        ] {
            let error = check_value("preferred_username", text).unwrap_err();
            assert!(error.problem.contains(problem), "{text:?}: {error}");
            assert!(header_value(text).is_none(), "{text:?} would be sent");
        }
        assert_eq!(
            check_list_item("groups", "staff,admins")
                .unwrap_err()
                .problem,
            "contains a comma (the header is a comma-separated list)"
        );
        // Letters of any script are values like others, sent byte for byte.
        for text in [
            "Zoë Müller",
            "张伟@contoso.example",
            "o'brien@contoso.example",
        ] {
            assert!(check_value("name", text).is_ok(), "{text}");
            assert_eq!(header_value(text).unwrap().as_bytes(), text.as_bytes());
        }
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
