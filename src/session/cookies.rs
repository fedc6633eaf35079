//! The gateway's cookies.
//!
//! - Session: `__Host-oidc-gateway` = an opaque 256-bit random id (base64url);
//!   `Secure; HttpOnly; SameSite=Lax; Path=/`. The store keeps SHA-256(id).
//! - Login flows: `__Host-oidc-gateway-flow-<state prefix>`, one per login in
//!   progress (several tabs may log in at once), holding state, nonce and PKCE
//!   verifier encrypted and authenticated (AES-256-GCM with ring, [`Sealer`],
//!   the cookie name bound as associated data), valid 10 minutes. The number of
//!   flow cookies is capped; the oldest are dropped.
//!
//! Every gateway cookie is removed from the `Cookie` header sent upstream.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use cookie::{Cookie, SameSite};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::seal::Sealer;
use super::SessionKey;
use crate::crypto::{base64url, random_bytes};

pub const SESSION_COOKIE: &str = "__Host-oidc-gateway";
pub const FLOW_COOKIE_PREFIX: &str = "__Host-oidc-gateway-flow-";
/// Every cookie whose name starts with this belongs to the gateway.
const GATEWAY_COOKIE_PREFIX: &str = "__Host-oidc-gateway";
/// How long a login may take from redirect to callback.
pub const FLOW_LIFETIME: Duration = Duration::from_secs(600);
const FLOW_NAME_CHARS: usize = 16;

/// A login in progress, carried by the browser between the redirect to the IdP
/// and the callback.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoginFlow {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// Same-origin path (+ query) to return to after login.
    pub return_to: String,
    /// The redirect_uri sent to the IdP (must be repeated at the token endpoint).
    pub redirect_uri: String,
    /// Unix time in nanoseconds: expiry, and oldest-first eviction among flows
    /// started within the same second.
    pub created_ns: u64,
}

pub struct CookieCodec {
    /// Seals login-flow cookies (the binary's one crypto library, ring).
    sealer: Sealer,
    session_ttl: Duration,
    /// form_post callbacks are cross-site POSTs: Lax cookies would not be sent.
    flow_same_site: SameSite,
}

impl CookieCodec {
    /// `secret`: the configured session secret (≥ 32 bytes), or None for a random key.
    pub fn new(secret: Option<&[u8]>, session_ttl: Duration, form_post: bool) -> Self {
        let random;
        let secret = match secret {
            Some(bytes) if bytes.len() >= 32 => bytes,
            _ => {
                random = random_bytes::<32>();
                &random[..]
            }
        };
        CookieCodec {
            sealer: Sealer::derive(secret, b"login flow cookie"),
            session_ttl,
            flow_same_site: if form_post {
                SameSite::None
            } else {
                SameSite::Lax
            },
        }
    }

    /// A fresh session id and the key the store files it under.
    pub fn new_session_id() -> (String, SessionKey) {
        let id = base64url(&random_bytes::<32>());
        let key = session_key(id.as_bytes());
        (id, key)
    }

    /// The session id from the `Cookie` header(s). A plain scan of the pairs
    /// (every request does this): ids are unquoted base64url, 43 characters.
    pub fn session_id(headers: &HeaderMap) -> Option<&[u8]> {
        let value = cookie_pairs(headers).find_map(|pair| {
            let rest = pair.strip_prefix(SESSION_COOKIE.as_bytes())?;
            rest.trim_ascii_start().strip_prefix(b"=")
        })?;
        // Bytes, not text: the store files SHA-256(id), so whatever else a
        // client sends is simply not found.
        Some(value.trim_ascii()).filter(|id| id.len() == 43)
    }

    pub fn set_session(&self, id: &str) -> HeaderValue {
        let cookie = Cookie::build((SESSION_COOKIE, id.to_string()))
            .path("/")
            .secure(true)
            .http_only(true)
            .same_site(SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(
                self.session_ttl.as_secs() as i64
            ));
        set_cookie_value(&cookie.build())
    }

    pub fn clear_session(&self) -> HeaderValue {
        clear(SESSION_COOKIE, SameSite::Lax)
    }

    fn flow_cookie_name(state: &str) -> Option<String> {
        let prefix: String = state.chars().take(FLOW_NAME_CHARS).collect();
        let usable = prefix.len() == FLOW_NAME_CHARS
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        usable.then(|| format!("{FLOW_COOKIE_PREFIX}{prefix}"))
    }

    /// The Set-Cookie value that stores `flow` in the browser.
    pub fn set_flow(&self, flow: &LoginFlow) -> Option<HeaderValue> {
        let name = Self::flow_cookie_name(&flow.state)?;
        let json = serde_json::to_vec(flow).ok()?;
        let sealed = base64url(&self.sealer.seal(name.as_bytes(), &json));
        let cookie = Cookie::build((name, sealed))
            .path("/")
            .secure(true)
            .http_only(true)
            .same_site(self.flow_same_site)
            .max_age(cookie::time::Duration::seconds(
                FLOW_LIFETIME.as_secs() as i64
            ));
        Some(set_cookie_value(&cookie.build()))
    }

    /// The flow for `state`, when the browser holds its cookie, it decrypts, it
    /// is that very state and it has not expired.
    pub fn read_flow(&self, headers: &HeaderMap, state: &str, now: u64) -> Option<LoginFlow> {
        let name = Self::flow_cookie_name(state)?;
        let sealed = request_cookies(headers).find(|c| c.name() == name)?;
        let flow = self.open_flow(&name, sealed.value())?;
        let fresh = now.saturating_sub(flow.created_ns / 1_000_000_000) <= FLOW_LIFETIME.as_secs();
        (flow.state == state && fresh).then_some(flow)
    }

    fn open_flow(&self, name: &str, sealed: &str) -> Option<LoginFlow> {
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sealed)
            .ok()?;
        let opened = self.sealer.open(name.as_bytes(), &sealed)?;
        serde_json::from_slice(&opened).ok()
    }

    pub fn clear_flow(&self, state: &str) -> Option<HeaderValue> {
        Self::flow_cookie_name(state).map(|name| clear(&name, self.flow_same_site))
    }

    /// Clearing cookies for the oldest flows so that, with the one about to be
    /// added, at most `max` remain. Undecryptable or expired flow cookies go too.
    pub fn evict_flows(&self, headers: &HeaderMap, max: usize, now: u64) -> Vec<HeaderValue> {
        let mut live = Vec::new();
        let mut evict = Vec::new();
        for cookie in request_cookies(headers).filter(|c| c.name().starts_with(FLOW_COOKIE_PREFIX))
        {
            match self.open_flow(cookie.name(), cookie.value()) {
                Some(flow)
                    if now.saturating_sub(flow.created_ns / 1_000_000_000)
                        <= FLOW_LIFETIME.as_secs() =>
                {
                    live.push((flow.created_ns, cookie.name().to_string()))
                }
                _ => evict.push(cookie.name().to_string()),
            }
        }
        live.sort();
        let excess = (live.len() + 1).saturating_sub(max);
        evict.extend(live.into_iter().take(excess).map(|(_, name)| name));
        evict
            .iter()
            .map(|name| clear(name, self.flow_same_site))
            .collect()
    }
}

/// SHA-256 of a session id: what the store is keyed by.
pub fn session_key(id: &[u8]) -> SessionKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, id);
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// The session key of the last session id seen on one connection. Browsers
/// send the same cookie with every request of a connection, and hashing it
/// (SHA-256) on each one was ~3% of a proxied request. Kept per connection, the
/// raw id lives no longer than that connection's own buffers hold it anyway.
#[derive(Debug, Default)]
pub struct SessionKeyMemo(Mutex<Option<(Box<[u8]>, SessionKey)>>);

impl SessionKeyMemo {
    pub fn key(&self, id: &[u8]) -> SessionKey {
        let mut memo = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, key)) = memo.as_ref() {
            // Only this connection's own ids are ever compared here.
            if **seen == *id {
                return *key;
            }
        }
        let key = session_key(id);
        *memo = Some((id.into(), key));
        key
    }
}

/// Removes the gateway's cookies from the `Cookie` header(s), keeping the
/// others byte for byte. The header goes away when nothing else is left.
pub fn strip_gateway_cookies(headers: &mut HeaderMap) {
    let ours = |pair: &[u8]| pair.starts_with(GATEWAY_COOKIE_PREFIX.as_bytes());
    let (mut any_ours, mut any_other) = (false, false);
    for pair in cookie_pairs(headers).filter(|pair| !pair.is_empty()) {
        if ours(pair) {
            any_ours = true;
        } else {
            any_other = true;
        }
    }
    if !any_ours {
        return;
    }
    // Allocated only when other cookies remain (the one header the upstream gets).
    let kept = any_other.then(|| {
        let mut kept = Vec::new();
        for pair in cookie_pairs(headers).filter(|pair| !pair.is_empty() && !ours(pair)) {
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair);
        }
        kept
    });
    headers.remove(COOKIE);
    if let Some(value) = kept.and_then(|kept| HeaderValue::from_bytes(&kept).ok()) {
        headers.insert(COOKIE, value);
    }
}

/// Removes an upstream's `Set-Cookie` for one of the gateway's own cookie
/// names (any case: browsers match the `__Host-` prefix case-insensitively),
/// so that the console can neither set nor clear the session or a login
/// flow. Returns how many were dropped.
pub fn drop_gateway_set_cookies(headers: &mut HeaderMap) -> usize {
    let ours = |value: &HeaderValue| is_gateway_cookie_name(set_cookie_name(value.as_bytes()));
    if !headers.get_all(SET_COOKIE).iter().any(ours) {
        return 0;
    }
    let all: Vec<HeaderValue> = headers.get_all(SET_COOKIE).iter().cloned().collect();
    headers.remove(SET_COOKIE);
    let before = all.len();
    let mut kept = 0;
    for value in all.into_iter().filter(|v| !ours(v)) {
        headers.append(SET_COOKIE, value);
        kept += 1;
    }
    before - kept
}

/// The cookie name of a `Set-Cookie` value: what precedes the first `=` of
/// its first `;`-piece, trimmed (a piece without `=` is a nameless cookie
/// whose value browsers may still read as a name: taken whole).
fn set_cookie_name(value: &[u8]) -> &[u8] {
    let first = value.split(|&b| b == b';').next().unwrap_or_default();
    let name = first.split(|&b| b == b'=').next().unwrap_or_default();
    name.trim_ascii()
}

fn is_gateway_cookie_name(name: &[u8]) -> bool {
    name.len() >= GATEWAY_COOKIE_PREFIX.len()
        && name[..GATEWAY_COOKIE_PREFIX.len()]
            .eq_ignore_ascii_case(GATEWAY_COOKIE_PREFIX.as_bytes())
}

/// The `name=value` pairs of the `Cookie` header(s), trimmed, as sent (bytes,
/// no decoding): for the hot paths that only look for a name.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| Pairs(value.as_bytes()))
        .map(<[u8]>::trim_ascii)
}

/// `;`-separated pieces of a header value, found with memchr (a cookie header
/// is mostly one long session id: no byte-by-byte walk).
struct Pairs<'a>(&'a [u8]);

impl<'a> Iterator for Pairs<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        match memchr::memchr(b';', self.0) {
            Some(at) => {
                let pair = &self.0[..at];
                self.0 = &self.0[at + 1..];
                Some(pair)
            }
            None => Some(std::mem::take(&mut self.0)),
        }
    }
}

fn request_cookies(headers: &HeaderMap) -> impl Iterator<Item = Cookie<'_>> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
}

fn clear(name: &str, same_site: SameSite) -> HeaderValue {
    let cookie = Cookie::build((name.to_string(), ""))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(same_site)
        .max_age(cookie::time::Duration::ZERO);
    set_cookie_value(&cookie.build())
}

fn set_cookie_value(cookie: &Cookie<'_>) -> HeaderValue {
    // Names and values here are base64url/JSON-free ASCII: always a valid header.
    HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> CookieCodec {
        CookieCodec::new(Some(&[9u8; 32]), Duration::from_secs(3600), false)
    }

    fn cookie_headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(COOKIE, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn session_id_is_found_among_other_cookies_and_headers() {
        let id = "a".repeat(43);
        let flow = format!("{FLOW_COOKIE_PREFIX}abcdefgh=xyz");
        for values in [
            vec![format!("{SESSION_COOKIE}={id}")],
            vec![format!(
                "theme=dark; {flow};  {SESSION_COOKIE}={id} ; lang=en"
            )],
            vec!["theme=dark".to_string(), format!("{SESSION_COOKIE}={id}")],
            vec![format!("{SESSION_COOKIE} = {id};")],
        ] {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            assert_eq!(
                CookieCodec::session_id(&cookie_headers(&refs)),
                Some(id.as_bytes()),
                "{values:?}"
            );
        }
        for values in [
            format!("{SESSION_COOKIE}x={id}"),
            format!("{SESSION_COOKIE}={id}b"),
            format!("{SESSION_COOKIE}=short"),
            format!("x{SESSION_COOKIE}={id}"),
            "theme=dark".to_string(),
        ] {
            assert_eq!(
                CookieCodec::session_id(&cookie_headers(&[&values])),
                None,
                "{values}"
            );
        }
    }

    #[test]
    fn session_key_memo_gives_the_same_keys_as_hashing_each_time() {
        let memo = SessionKeyMemo::default();
        let (a, b) = ("a".repeat(43), "b".repeat(43));
        for id in [&a, &a, &b, &a, &b, &b] {
            assert_eq!(memo.key(id.as_bytes()), session_key(id.as_bytes()));
        }
    }

    fn flow(state: &str, created_secs: u64) -> LoginFlow {
        LoginFlow {
            state: state.into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            return_to: "/x".into(),
            redirect_uri: "https://localhost/api/oidc/callback".into(),
            created_ns: created_secs * 1_000_000_000,
        }
    }

    fn request_with(set_cookies: &[HeaderValue]) -> HeaderMap {
        let pairs: Vec<String> = set_cookies
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect();
        let mut h = HeaderMap::new();
        h.insert(COOKIE, pairs.join("; ").parse().unwrap());
        h
    }

    #[test]
    fn flow_cookie_round_trips_and_is_bound_to_its_state() {
        let c = codec();
        let state = base64url(&random_bytes::<32>());
        let set = c.set_flow(&flow(&state, 1000)).unwrap();
        let text = set.to_str().unwrap();
        assert!(
            text.contains("Secure") && text.contains("HttpOnly") && text.contains("SameSite=Lax")
        );
        assert!(
            !text.contains(&state[FLOW_NAME_CHARS..]),
            "the state must not be readable in the cookie"
        );
        let headers = request_with(&[set]);
        assert_eq!(c.read_flow(&headers, &state, 1001).unwrap().state, state);
        // Expired, other state, other key: nothing.
        assert!(c.read_flow(&headers, &state, 1000 + 601).is_none());
        let mut other = state.clone();
        other.push('x');
        assert!(c.read_flow(&headers, &other, 1001).is_none());
        let other_key = CookieCodec::new(Some(&[1u8; 32]), Duration::from_secs(1), false);
        assert!(other_key.read_flow(&headers, &state, 1001).is_none());
    }

    #[test]
    fn oldest_flows_are_evicted_beyond_the_cap() {
        let c = codec();
        let states: Vec<String> = (0..4).map(|_| base64url(&random_bytes::<32>())).collect();
        let sets: Vec<HeaderValue> = states
            .iter()
            .enumerate()
            .map(|(i, s)| c.set_flow(&flow(s, 1000 + i as u64)).unwrap())
            .collect();
        let headers = request_with(&sets);
        let evicted = c.evict_flows(&headers, 3, 1010);
        assert_eq!(evicted.len(), 2, "4 present + 1 new, cap 3: two oldest go");
        let names: Vec<String> = evicted
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert!(names[0].contains(&states[0][..FLOW_NAME_CHARS]));
        assert!(names[1].contains(&states[1][..FLOW_NAME_CHARS]));
    }

    #[test]
    fn gateway_cookies_are_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            "a=1; __Host-oidc-gateway=secret; b=2".parse().unwrap(),
        );
        h.append(COOKIE, "__Host-oidc-gateway-flow-abc=x".parse().unwrap());
        strip_gateway_cookies(&mut h);
        assert_eq!(h.get(COOKIE).unwrap(), "a=1; b=2");
        let mut only_ours = HeaderMap::new();
        only_ours.insert(COOKIE, "__Host-oidc-gateway=secret".parse().unwrap());
        strip_gateway_cookies(&mut only_ours);
        assert!(only_ours.get(COOKIE).is_none());
        // A name that merely contains ours is someone else's.
        let mut lookalike = HeaderMap::new();
        lookalike.insert(COOKIE, "x__Host-oidc-gateway=1;a=2".parse().unwrap());
        strip_gateway_cookies(&mut lookalike);
        assert_eq!(lookalike.get(COOKIE).unwrap(), "x__Host-oidc-gateway=1;a=2");
    }
}

/// Properties of the cookie scanner against an independent reader, the
/// `cookie` crate (as a console's framework would read the same headers):
/// the session id found is the session cookie's; what goes upstream is every
/// other cookie, unchanged and in order, and none of the gateway's.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Cookie names: the gateway's, look-alikes (case, prefix, suffix) and others.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                SESSION_COOKIE,
                "__Host-oidc-gateway-flow-AbCd1234",
                "__host-oidc-gateway",
                "__HOST-OIDC-GATEWAY",
                "x__Host-oidc-gateway",
                "__Host-oidc-gatewayx",
                "__Host-oidc-gatewa",
                "__Host-other",
            ])
            .prop_map(String::from),
            2 => "[A-Za-z0-9_.-]{1,8}",
        ]
    }

    /// Values: base64url of the session id's length or not, empty included.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z0-9_-]{43}",
            "[A-Za-z0-9_-]{0,50}",
            "[A-Za-z0-9%!#$&'()*+./:<=>?@]{0,12}"
        ]
    }

    /// `name=value` pieces with optional spaces around them and empty pieces,
    /// spread over one or more `Cookie` headers (HTTP/2 sends crumbs).
    fn cookie_headers() -> impl Strategy<Value = HeaderMap> {
        let piece = prop_oneof![
            8 => (name(), value(), " {0,2}", " {0,2}", " ?")
                .prop_map(|(n, v, before, after, gap)| format!("{before}{n}{gap}={v}{after}")),
            1 => Just(String::new()),
            1 => name(), // no `=`: not a cookie to any reader
        ];
        prop::collection::vec((piece, any::<bool>()), 0..8).prop_map(|pieces| {
            let mut headers = HeaderMap::new();
            let mut current = String::new();
            for (piece, new_header) in pieces {
                if new_header && !current.is_empty() {
                    headers.append(COOKIE, HeaderValue::from_str(&current).unwrap());
                    current.clear();
                }
                if !current.is_empty() {
                    current.push(';');
                }
                current.push_str(&piece);
            }
            if !current.is_empty() {
                headers.append(COOKIE, HeaderValue::from_str(&current).unwrap());
            }
            headers
        })
    }

    /// (name, value) of every cookie the `cookie` crate reads, in order.
    fn read(headers: &HeaderMap) -> Vec<(String, String)> {
        request_cookies(headers)
            .map(|c| (c.name().to_string(), c.value().to_string()))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The scanner finds exactly the session id a full parser finds: the
        /// first cookie named `__Host-oidc-gateway`, if 43 characters long.
        #[test]
        fn the_session_id_found_is_the_first_session_cookie(headers in cookie_headers()) {
            let expected = read(&headers)
                .into_iter()
                .find(|(name, _)| name == SESSION_COOKIE)
                .map(|(_, value)| value)
                .filter(|value| value.len() == 43);
            let found = CookieCodec::session_id(&headers)
                .map(|id| String::from_utf8(id.to_vec()).unwrap());
            prop_assert_eq!(found, expected);
        }

        /// Upstream gets every other cookie, unchanged and in order, and none
        /// whose name starts with the gateway's (sessions and login flows).
        #[test]
        fn upstream_gets_every_other_cookie_and_none_of_the_gateways(headers in cookie_headers()) {
            let ours = |name: &str| name.starts_with(GATEWAY_COOKIE_PREFIX);
            let expected: Vec<_> = read(&headers).into_iter().filter(|(n, _)| !ours(n)).collect();
            // Pieces, not just cookies: a bare `__Host-oidc-gateway…` goes too.
            let had_ours = headers
                .get_all(COOKIE)
                .iter()
                .flat_map(|v| v.to_str().unwrap().split(';'))
                .any(|piece| ours(piece.trim()));
            let mut forwarded = headers.clone();
            strip_gateway_cookies(&mut forwarded);
            prop_assert_eq!(read(&forwarded), expected);
            if had_ours {
                prop_assert!(forwarded.get_all(COOKIE).iter().count() <= 1);
            } else {
                prop_assert_eq!(&forwarded, &headers, "untouched when none is ours");
            }
        }

        /// An upstream `Set-Cookie` naming a gateway cookie (in any case) is
        /// dropped; every other one passes byte for byte, in order.
        #[test]
        fn upstream_set_cookies_for_gateway_names_are_dropped(
            cookies in prop::collection::vec((name(), value(), " ?", prop::sample::select(vec!["", "; Path=/", "; Max-Age=0; Secure"])), 0..6)
        ) {
            let values: Vec<String> = cookies
                .iter()
                .map(|(n, v, gap, attributes)| format!("{n}{gap}={v}{attributes}"))
                .collect();
            let mut headers = HeaderMap::new();
            for value in &values {
                headers.append(SET_COOKIE, HeaderValue::from_str(value).unwrap());
            }
            let gateways = |value: &String| {
                Cookie::parse(value.as_str()).is_ok_and(|c| {
                    c.name().to_ascii_lowercase().starts_with(&GATEWAY_COOKIE_PREFIX.to_ascii_lowercase())
                })
            };
            let expected: Vec<&String> = values.iter().filter(|v| !gateways(v)).collect();
            let dropped = drop_gateway_set_cookies(&mut headers);
            let kept: Vec<&str> = headers.get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
            prop_assert_eq!(kept, expected.iter().map(|v| v.as_str()).collect::<Vec<_>>());
            prop_assert_eq!(dropped, values.len() - expected.len());
        }
    }
}
