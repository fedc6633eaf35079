//! `/healthz` (alive: the process serves) and `/readyz` (ready: every component
//! reports ready and the gateway is not draining). Exact paths, GET/HEAD only;
//! answered by the gateway itself and never forwarded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Response, StatusCode};

use crate::pages;
use crate::Body;

pub const LIVENESS_PATH: &str = "/healthz";
pub const READINESS_PATH: &str = "/readyz";

/// Components that are not ready, each with a reason shown by `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    not_ready: Arc<Mutex<BTreeMap<&'static str, String>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Readiness {
    pub fn set_not_ready(&self, component: &'static str, reason: impl Into<String>) {
        if let Ok(mut map) = self.not_ready.lock() {
            map.insert(component, reason.into());
        }
        self.changed.notify_waiters();
    }

    pub fn set_ready(&self, component: &'static str) {
        if let Ok(mut map) = self.not_ready.lock() {
            map.remove(component);
        }
        self.changed.notify_waiters();
    }

    pub fn is_ready(&self) -> bool {
        self.reasons().is_empty()
    }

    /// Completes when every component is ready (at once if they are).
    pub async fn wait_ready(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register before checking, so a change in between is not missed.
            changed.as_mut().enable();
            if self.is_ready() {
                return;
            }
            changed.await;
        }
    }

    /// `component: reason` for every component that is not ready.
    pub fn reasons(&self) -> Vec<String> {
        match self.not_ready.lock() {
            Ok(map) => map.iter().map(|(c, r)| format!("{c}: {r}")).collect(),
            Err(_) => vec!["internal: readiness state poisoned".into()],
        }
    }
}

pub fn is_health_path(path: &str) -> bool {
    path == LIVENESS_PATH || path == READINESS_PATH
}

/// Answers a request for a health path, or `None` when it is not one.
/// `show_reasons`: the peer may read why the gateway is not ready (loopback
/// and trusted proxies); others learn only that it is not, since reasons name
/// internal hosts and errors.
pub fn answer(
    method: &Method,
    path: &str,
    readiness: &Readiness,
    show_reasons: bool,
) -> Option<Response<Body>> {
    if !is_health_path(path) {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = pages::json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "method_not_allowed", "allow": "GET, HEAD"}),
        );
        response.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return Some(response);
    }
    let response = if path == LIVENESS_PATH {
        pages::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
    } else {
        let reasons = readiness.reasons();
        if reasons.is_empty() {
            pages::json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
        } else if show_reasons {
            pages::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not_ready", "reasons": reasons}),
            )
        } else {
            pages::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not_ready"}),
            )
        }
    };
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_text(response: Response<Body>) -> String {
        use http_body_util::BodyExt;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn readyz_reasons_are_for_insiders_only() {
        let readiness = Readiness::default();
        readiness.set_not_ready("oidc", "discovery at https://10.0.0.9/ failed");
        let inside = answer(&Method::GET, READINESS_PATH, &readiness, true).unwrap();
        assert_eq!(inside.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body_text(inside).await.contains("10.0.0.9"));
        let outside = answer(&Method::GET, READINESS_PATH, &readiness, false).unwrap();
        assert_eq!(outside.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body_text(outside).await, r#"{"status":"not_ready"}"#);
    }
}
