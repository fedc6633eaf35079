//! Answers the gateway writes itself: a small HTML page for browsers, JSON for
//! everything else (API clients such as RustDesk desktop clients break on HTML).

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::{full_body, Body};

/// Does the client want an HTML page? Browsers navigating send `Accept: text/html`;
/// XHR/fetch, curl and API clients do not.
pub fn wants_html(headers: &HeaderMap) -> bool {
    let xhr = headers
        .get("x-requested-with")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"xmlhttprequest"));
    !xhr && headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// One error answer: a stable machine `code`, a human title and detail.
pub struct ErrorPage<'a> {
    pub status: StatusCode,
    pub code: &'a str,
    pub title: &'a str,
    pub detail: &'a str,
    pub request_id: &'a str,
}

impl ErrorPage<'_> {
    pub fn render(&self, html: bool) -> Response<Body> {
        let (content_type, body) = if html {
            ("text/html; charset=utf-8", self.html())
        } else {
            ("application/json", self.json())
        };
        let mut response = Response::new(full_body(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    fn json(&self) -> String {
        serde_json::json!({
            "error": self.code,
            "message": self.detail,
            "status": self.status.as_u16(),
            "request_id": self.request_id,
        })
        .to_string()
    }

    fn html(&self) -> String {
        format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{status} {title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}}
h1{{font-size:1.4rem}}p.meta{{color:#777;font-size:.85rem}}a{{color:#0067b8}}</style></head>
<body><h1>{title}</h1><p>{detail}</p><p><a href="javascript:location.reload()">Try again</a></p>
<p class="meta">Error {status} &middot; request id {request_id}</p></body></html>
"#,
            status = self.status.as_u16(),
            title = escape_html(self.title),
            detail = escape_html(self.detail),
            request_id = escape_html(self.request_id),
        )
    }
}

/// Headers on every answer the gateway makes itself — pages, JSON, redirects:
/// never stored by a cache (they carry per-user state, and the callback's URL
/// holds a code), never sniffed as another type, never sent as a `Referer`,
/// never framed (clickjacking of the sign-out and error pages), and HSTS when
/// `hsts` is given. A header an answer already has is kept: an endpoint that
/// must be framable (front-channel logout, loaded by the IdP in an iframe)
/// sets its own `Content-Security-Policy`, and `jwks.json` its own caching.
pub fn add_security_headers(headers: &mut HeaderMap, hsts: Option<&HeaderValue>) {
    use http::header::{
        CONTENT_SECURITY_POLICY, REFERRER_POLICY, STRICT_TRANSPORT_SECURITY,
        X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
    };
    headers
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers
        .entry(X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    headers
        .entry(REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("no-referrer"));
    if !headers.contains_key(CONTENT_SECURITY_POLICY) {
        headers.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'none'"),
        );
        // For browsers without CSP level 2; ignored where frame-ancestors is known.
        headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    if let Some(hsts) = hsts {
        headers
            .entry(STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| hsts.clone());
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A complete HTML page answer (never cached).
pub fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut response = Response::new(full_body(page));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A small JSON answer (health endpoints, API answers).
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full_body(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_get_html_xhr_and_apis_get_json() {
        let mut h = HeaderMap::new();
        assert!(!wants_html(&h));
        h.insert("accept", "text/html,application/xhtml+xml".parse().unwrap());
        assert!(wants_html(&h));
        h.insert("x-requested-with", "XMLHttpRequest".parse().unwrap());
        assert!(!wants_html(&h));
    }

    #[test]
    fn security_headers_are_added_but_an_answers_own_are_kept() {
        let mut h = HeaderMap::new();
        let hsts = HeaderValue::from_static("max-age=60");
        add_security_headers(&mut h, Some(&hsts));
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["content-security-policy"], "frame-ancestors 'none'");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["strict-transport-security"], "max-age=60");

        let mut framable = HeaderMap::new();
        framable.insert(
            "content-security-policy",
            "frame-ancestors https://login.microsoftonline.com"
                .parse()
                .unwrap(),
        );
        framable.insert("cache-control", "public, max-age=300".parse().unwrap());
        add_security_headers(&mut framable, None);
        assert_eq!(
            framable["content-security-policy"],
            "frame-ancestors https://login.microsoftonline.com"
        );
        assert!(!framable.contains_key("x-frame-options"));
        assert_eq!(framable["cache-control"], "public, max-age=300");
        assert!(!framable.contains_key("strict-transport-security"));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
