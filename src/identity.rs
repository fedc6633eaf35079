//! Identity headers sent upstream, and the removal of any inbound header that
//! could impersonate them.
//!
//! Matching ignores case (HTTP names are case-insensitive; `http` lower-cases
//! them) and treats `_` as `-`: many servers (nginx with underscores_in_headers,
//! CGI/WSGI, PHP) fold `X_Forwarded_User` into the same variable as
//! `X-Forwarded-User`, the smuggling vector of oauth2-proxy's advisory.

use http::HeaderMap;

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

/// Removes every header whose name is a variant of an identity header.
/// Returns how many were removed (the caller logs spoofing attempts).
pub fn strip_identity_headers(headers: &mut HeaderMap) -> usize {
    let spoofed: Vec<_> = headers
        .keys()
        .filter(|name| is_identity_header(name.as_str()))
        .cloned()
        .collect();
    let mut removed = 0;
    for name in spoofed {
        removed += headers.get_all(&name).iter().count();
        headers.remove(&name);
    }
    removed
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
    fn strip_removes_every_value_of_every_variant() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-user", "a".parse().unwrap());
        h.append("x-forwarded-user", "b".parse().unwrap());
        h.append("x_forwarded_groups", "admins".parse().unwrap());
        h.append("accept", "*/*".parse().unwrap());
        assert_eq!(strip_identity_headers(&mut h), 3);
        assert_eq!(h.len(), 1);
    }
}
