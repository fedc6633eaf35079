//! Front-channel logout: when a user signs out at Entra, Entra loads
//! `GET {gateway.prefix}/frontchannel_logout?sid=<sid>` in a hidden iframe of
//! that browser — without `iss` (Entra leaves it out, against the spec) and
//! without our cookie (a third-party context). Every session whose ID token
//! carried that `sid` ends, in every replica (within `session.cache_ttl` for a
//! Redis store's local caches). The request is unauthenticated: its only
//! effect is that sign-out, and the answer is an empty page only the IdP may frame.

use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY};
use http::{HeaderValue, Method, Response, StatusCode};

use super::{Auth, RequestFacts};
use crate::pages::{self, ErrorPage};
use crate::Body;

/// Longest `sid` looked up (Entra's are GUIDs).
const MAX_SID: usize = 128;

impl Auth {
    /// `GET {prefix}/frontchannel_logout?sid=…[&iss=…]`.
    pub async fn frontchannel_logout(
        &self,
        method: &Method,
        uri: &http::Uri,
        facts: &RequestFacts<'_>,
    ) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            return refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "front-channel logout is a GET",
                facts,
            );
        }
        let mut sid = None;
        let mut iss = None;
        for (name, value) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
            match name.as_ref() {
                "sid" if sid.is_none() => sid = Some(value.into_owned()),
                "iss" if iss.is_none() => iss = Some(value.into_owned()),
                "sid" | "iss" => {
                    return refused(
                        StatusCode::BAD_REQUEST,
                        "sid and iss may appear once each",
                        facts,
                    )
                }
                _ => {}
            }
        }
        let Some(sid) = sid.filter(|s| !s.is_empty() && s.len() <= MAX_SID) else {
            return refused(
                StatusCode::BAD_REQUEST,
                "the sid parameter is missing or too long; in Azure, add the optional claim \
                 `sid` to the ID token so that Entra sends it",
                facts,
            );
        };
        if let Some(iss) = &iss {
            if !self.is_our_issuer(iss) {
                tracing::warn!(request_id = %facts.request_id, "front-channel logout refused: its iss is not the configured issuer");
                return refused(
                    StatusCode::BAD_REQUEST,
                    "iss is not the issuer this gateway signs in with",
                    facts,
                );
            }
        }
        match self.store.remove_by_sid(&sid).await {
            Ok(ended) => {
                tracing::info!(request_id = %facts.request_id, sessions = ended, "front-channel logout");
            }
            Err(e) => return self.session_unavailable(&super::SessionUnavailable::Store(e), facts),
        }
        let mut response = pages::html(StatusCode::OK, String::new());
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let ancestors = match self.idp_origin() {
            Some(origin) => format!("frame-ancestors {origin}"),
            None => "frame-ancestors 'none'".into(),
        };
        if let Ok(value) = HeaderValue::from_str(&ancestors) {
            headers.insert(CONTENT_SECURITY_POLICY, value);
        }
        response
    }

    /// `iss` names the configured issuer (for a multi-tenant authority: its
    /// template with some tenant id in place of `{tenantid}`).
    fn is_our_issuer(&self, iss: &str) -> bool {
        let iss = iss.trim_end_matches('/');
        let configured = self.settings.config.oidc.issuer.trim_end_matches('/');
        if iss == configured {
            return true;
        }
        let Some(loaded) = self.provider.current() else {
            return false;
        };
        let published = loaded.metadata.issuer.trim_end_matches('/');
        if iss == published {
            return true;
        }
        match published.split_once("{tenantid}") {
            Some((before, after)) => iss
                .strip_prefix(before)
                .and_then(|rest| rest.strip_suffix(after))
                .is_some_and(|tid| {
                    !tid.is_empty() && tid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                }),
            None => false,
        }
    }

    /// `scheme://host[:port]` of the issuer: the only origin that may frame
    /// the front-channel logout answer.
    fn idp_origin(&self) -> Option<String> {
        let url = url::Url::parse(&self.settings.config.oidc.issuer).ok()?;
        let origin = url.origin();
        origin.is_tuple().then(|| origin.ascii_serialization())
    }
}

fn refused(status: StatusCode, detail: &'static str, facts: &RequestFacts<'_>) -> Response<Body> {
    ErrorPage {
        status,
        code: "bad_frontchannel_logout",
        title: "Bad front-channel logout request",
        detail,
        request_id: facts.request_id,
    }
    .render(facts.wants_html)
}
