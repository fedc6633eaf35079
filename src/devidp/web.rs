//! HTTP plumbing of the development IdP: parameter parsing, bodies, and the
//! JSON, HTML and redirect answers (Entra's shapes).

use std::time::SystemTime;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, PRAGMA, REFERRER_POLICY,
    X_FRAME_OPTIONS,
};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use ring::digest::{digest, SHA256};

use super::random_token;
use crate::pages::escape_html;
use crate::{full_body, Body};

/// Largest request body (form posts) the IdP reads.
const MAX_BODY: usize = 64 * 1024;

/// The one inline script the IdP ever serves (the `form_post` auto-submit).
pub(super) const AUTO_SUBMIT_SCRIPT: &str = "document.forms[0].submit()";

/// Request parameters (query string or form body), each name at most once
/// (RFC 6749 §3.1: parameters MUST NOT be included more than once).
#[derive(Debug, Default, Clone)]
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    /// Decodes `application/x-www-form-urlencoded` text; `Err(name)` names a
    /// repeated parameter.
    pub(super) fn parse(bytes: &[u8]) -> Result<Params, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (name, value) in form_urlencoded::parse(bytes) {
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(name.into_owned());
            }
            pairs.push((name.into_owned(), value.into_owned()));
        }
        Ok(Params(pairs))
    }

    /// The value of `name`, if present (possibly empty).
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every parameter, in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The value of `name` if present and not empty.
    pub(super) fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }
}

/// Reads a request body of at most [`MAX_BODY`] bytes.
pub(super) async fn read_body(body: Incoming) -> Option<Vec<u8>> {
    let collected = Limited::new(body, MAX_BODY).collect().await.ok()?;
    Some(collected.to_bytes().to_vec())
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space),
/// as used inside `client_secret_basic` credentials (RFC 6749 §2.3.1).
pub(super) fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `application/x-www-form-urlencoded` text of `pairs`.
pub(super) fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

/// `uri` with `encoded` parameters appended to its query, keeping any query it has.
pub(super) fn append_query(uri: &str, encoded: &str) -> String {
    let separator = if !uri.contains('?') {
        "?"
    } else if uri.ends_with('?') || uri.ends_with('&') {
        ""
    } else {
        "&"
    };
    format!("{uri}{separator}{encoded}")
}

fn with_headers(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<bytes::Bytes>,
) -> Response<Body> {
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A JSON answer (`Cache-Control: no-store`, as for every token response).
pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    with_headers(status, "application/json; charset=utf-8", value.to_string())
}

/// The Entra-style JSON error body: `error`, `error_description` (with the
/// trace/correlation trailer Entra appends), `error_codes` (from a leading
/// `AADSTSnnnn`), `timestamp`, `trace_id`, `correlation_id`, `error_uri`.
pub(super) fn entra_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    let trace_id = random_uuid();
    let correlation_id = random_uuid();
    let timestamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace('T', " ");
    let codes: Vec<u64> = description
        .strip_prefix("AADSTS")
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|digits| digits.parse().ok())
        .into_iter()
        .collect();
    let body = serde_json::json!({
        "error": error,
        "error_description": format!(
            "{description} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}"
        ),
        "error_codes": codes,
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": "https://login.microsoftonline.com/error",
    });
    json(status, &body)
}

/// An HTML page (already escaped by the caller) with a strict CSP: no scripts
/// but the auto-submit one, forms may post anywhere (`form_post` responses).
pub(super) fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut response = with_headers(status, "text/html; charset=utf-8", page);
    let script_hash = STANDARD.encode(digest(&SHA256, AUTO_SUBMIT_SCRIPT.as_bytes()));
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; \
         form-action *; frame-ancestors 'none'; base-uri 'none'"
    );
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// A plain-text answer.
pub(super) fn text(status: StatusCode, message: &str) -> Response<Body> {
    with_headers(status, "text/plain; charset=utf-8", message.to_string())
}

/// A `302 Found` to `location`; a location that cannot be a header value
/// becomes an error page.
pub(super) fn redirect(location: &str) -> Response<Body> {
    let Ok(value) = HeaderValue::from_str(location) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "AADSTS50011",
            "The redirect URI cannot be sent in a Location header.",
            Some(location),
        );
    };
    let mut response = with_headers(StatusCode::FOUND, "text/html; charset=utf-8", "");
    response.headers_mut().insert(LOCATION, value);
    response
}

/// A page of the development IdP, clearly marked as not Microsoft.
pub(super) fn page(title: &str, content: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:30rem;margin:3rem auto;padding:0 1rem;color:#222}}
.dev{{background:#fff3cd;border:1px solid #e0c36c;padding:.5rem 1rem;border-radius:4px}}
label{{display:block;margin:1rem 0 .25rem}}input[type=text]{{width:100%;padding:.4rem;box-sizing:border-box}}
button{{margin-top:1rem;padding:.4rem 1.2rem}}.error{{color:#a00}}code{{word-break:break-all}}</style></head>
<body><p class="dev"><strong>Development identity provider — NOT Microsoft.</strong>
This is the built-in test IdP of oidc-gateway; it accepts any user name and must never protect anything real.</p>
<h1>{title}</h1>
{content}
</body></html>"#,
        title = escape_html(title),
    )
}

/// An Entra-style sign-in error page ("AADSTSnnnn: …"), shown when the IdP
/// cannot safely redirect back to the client.
pub(super) fn error_page(
    status: StatusCode,
    code: &str,
    message: &str,
    detail: Option<&str>,
) -> Response<Body> {
    let detail = detail
        .map(|d| format!("<p>Value: <code>{}</code></p>", escape_html(d)))
        .unwrap_or_default();
    let content = format!(
        "<p>Sorry, but we're having trouble signing you in.</p>\
         <p class=\"error\"><strong>{code}</strong>: {message}</p>{detail}",
        code = escape_html(code),
        message = escape_html(message),
    );
    html(status, page("Sign in error (development IdP)", &content))
}

/// A random version-4 UUID string.
pub(super) fn random_uuid() -> String {
    let mut bytes: [u8; 16] = random_token::<16>();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid_string(&bytes)
}

/// `bytes` formatted as a UUID (8-4-4-4-12 lower-case hex).
pub(super) fn uuid_string(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Base64url (no padding) of `bytes`.
pub(super) fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
