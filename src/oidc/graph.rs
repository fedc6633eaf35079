//! Microsoft Graph, for one thing: the groups of a user whose ID token carries
//! Entra's overage marker (`_claim_names.groups`) instead of the `groups`
//! claim. `POST {oidc.graph_url}/v1.0/me/getMemberObjects` with the access
//! token of the same sign-in (delegated `User.Read`).
//!
//! The `_claim_sources` endpoint the token names is never called (it points at
//! the retired AAD Graph, and a token must not choose where the gateway sends
//! its credentials): only the configured Graph, and only its own `nextLink`s.
//! Any failure is an error — never an empty group list.

use serde::Deserialize;

/// Pages followed at most (Graph answers up to thousands of ids per page).
const MAX_PAGES: usize = 20;
/// Group ids kept at most (Graph's own ceiling for memberships is 11 000).
const MAX_OBJECTS: usize = 11_000;

/// Why the groups could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("the sign-in returned no access token to call Microsoft Graph with")]
    NoAccessToken,
    #[error("Microsoft Graph did not answer in time")]
    Timeout,
    #[error("Microsoft Graph could not be reached: {0}")]
    Unreachable(String),
    #[error("Microsoft Graph refused the request (HTTP {status}, {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("Microsoft Graph's answer could not be read: {0}")]
    Invalid(String),
}

impl GraphError {
    /// Graph answered that the token lacks a permission (or consent).
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            GraphError::Refused {
                status: 401 | 403,
                ..
            }
        )
    }
}

/// One page of `getMemberObjects`.
#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    value: Vec<String>,
    #[serde(default, rename = "@odata.nextLink")]
    next_link: Option<String>,
}

/// Graph's error body: `{"error":{"code":…,"message":…}}`.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// The Graph client: the IdP's HTTP client (bounded by oidc.http_timeout, no
/// redirects followed) and the configured Graph origin.
pub struct Graph {
    http: reqwest::Client,
    /// `scheme://host[:port]`, no trailing slash.
    origin: String,
}

impl Graph {
    pub fn new(http: reqwest::Client, origin: &str) -> Self {
        Graph {
            http,
            origin: origin.trim_end_matches('/').to_string(),
        }
    }

    /// The object ids (groups, directory roles, administrative units) the
    /// signed-in user is a member of, transitively.
    pub async fn member_objects(&self, access_token: &str) -> Result<Vec<String>, GraphError> {
        if access_token.is_empty() {
            return Err(GraphError::NoAccessToken);
        }
        let mut url = format!("{}/v1.0/me/getMemberObjects", self.origin);
        let mut objects = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self.page(&url, access_token).await?;
            objects.extend(page.value);
            if objects.len() > MAX_OBJECTS {
                return Err(GraphError::Invalid(format!(
                    "more than {MAX_OBJECTS} memberships"
                )));
            }
            match page.next_link {
                None => return Ok(objects),
                // Only Graph's own pages: the token goes nowhere else.
                Some(next) if self.is_own(&next) => url = next,
                Some(next) => {
                    return Err(GraphError::Invalid(format!(
                        "a nextLink to another host ({:?})",
                        next.split('/').take(3).collect::<Vec<_>>().join("/")
                    )))
                }
            }
        }
        Err(GraphError::Invalid(format!(
            "more than {MAX_PAGES} pages of memberships"
        )))
    }

    fn is_own(&self, link: &str) -> bool {
        link.strip_prefix(&self.origin)
            .is_some_and(|rest| rest.starts_with('/'))
    }

    async fn page(&self, url: &str, access_token: &str) -> Result<Page, GraphError> {
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                GraphError::Timeout
            } else {
                GraphError::Unreachable(crate::errors::error_chain(&e))
            }
        };
        let response = self
            .http
            .post(url)
            .bearer_auth(access_token)
            .header(http::header::ACCEPT, "application/json")
            .json(&serde_json::json!({"securityEnabledOnly": false}))
            .send()
            .await
            .map_err(failed)?;
        let status = response.status();
        let body = response.bytes().await.map_err(failed)?;
        if !status.is_success() {
            let error: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
            return Err(GraphError::Refused {
                status: status.as_u16(),
                code: error.error.code,
                message: error.error.message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| GraphError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_must_stay_on_the_configured_graph() {
        let graph = Graph::new(reqwest::Client::new(), "https://graph.microsoft.com/");
        assert!(graph.is_own("https://graph.microsoft.com/v1.0/me/getMemberObjects?$skiptoken=x"));
        assert!(!graph.is_own("https://graph.microsoft.com.evil.example/v1.0/x"));
        assert!(!graph.is_own("https://graph.windows.net/tenant/users/x/getMemberObjects"));
    }

    #[test]
    fn graph_errors_are_read_from_its_error_body() {
        let body: ErrorBody = serde_json::from_str(
            r#"{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges to complete the operation."}}"#,
        )
        .unwrap();
        assert_eq!(body.error.code, "Authorization_RequestDenied");
        let error = GraphError::Refused {
            status: 403,
            code: body.error.code,
            message: body.error.message,
        };
        assert!(error.is_permission());
    }
}
