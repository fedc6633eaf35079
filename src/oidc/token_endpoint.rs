//! The client of the IdP's token endpoint: one POST per grant, client
//! authentication from [`ClientCredential`], Entra-shaped errors read into
//! [`TokenEndpointError`]. Used by the code exchange at the callback and by
//! anything else that needs a grant (refresh tokens).

use std::sync::Arc;

use serde::Deserialize;

use super::client_auth::{ClientAuthError, ClientCredential};
use super::provider::Provider;
use crate::metrics::{self, IdpCall};

/// What the token endpoint answered (the fields the gateway reads).
#[derive(Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub scope: Option<String>,
}

// Hand-written: tokens never reach a log line through `{:?}`.
impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("id_token", &self.id_token.as_ref().map(|_| "<redacted>"))
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

/// An error answer of the token endpoint, as Entra shapes it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct IdpError {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_description: String,
    /// Entra: the AADSTS numbers, e.g. `[7000215]`.
    #[serde(default)]
    pub error_codes: Vec<u64>,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
}

/// Why a grant failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenEndpointError {
    #[error("the token endpoint did not answer in time")]
    Timeout,
    #[error("the token endpoint could not be reached: {0}")]
    Unreachable(String),
    #[error("the token endpoint refused the grant (HTTP {status}): {} {}", .error.error, .error.error_description)]
    Refused { status: u16, error: IdpError },
    #[error("the token endpoint's answer could not be read: {0}")]
    Invalid(String),
    #[error("the client credential could not be used: {0}")]
    Credential(#[from] ClientAuthError),
}

pub struct TokenEndpoint {
    http: reqwest::Client,
    provider: Arc<Provider>,
    client_id: String,
    credential: ClientCredential,
}

impl TokenEndpoint {
    pub fn new(
        http: reqwest::Client,
        provider: Arc<Provider>,
        client_id: String,
        credential: ClientCredential,
    ) -> Self {
        TokenEndpoint {
            http,
            provider,
            client_id,
            credential,
        }
    }

    /// The `authorization_code` grant with its PKCE verifier; the answer must
    /// carry an ID token.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<TokenResponse, TokenEndpointError> {
        let started = std::time::Instant::now();
        let tokens = self
            .post_grant(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", code_verifier),
            ])
            .await;
        metrics::idp_call(IdpCall::Token, started.elapsed());
        let tokens = tokens?;
        if tokens.id_token.as_deref().is_none_or(str::is_empty) {
            return Err(TokenEndpointError::Invalid(
                "the answer to the code exchange carries no id_token".into(),
            ));
        }
        Ok(tokens)
    }

    /// The `refresh_token` grant; `scope` narrows (or, at Entra, changes the
    /// resource of) the new access token.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        scope: Option<&str>,
    ) -> Result<TokenResponse, TokenEndpointError> {
        let mut params = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        if let Some(scope) = scope {
            params.push(("scope", scope));
        }
        let started = std::time::Instant::now();
        let tokens = self.post_grant(&params).await;
        metrics::idp_call(IdpCall::Refresh, started.elapsed());
        tokens
    }

    /// The on-behalf-of grant: the user's token to this app (`assertion`)
    /// for a token of another resource (`scope`, e.g. Graph's `User.Read`).
    pub async fn on_behalf_of(
        &self,
        assertion: &str,
        scope: &str,
    ) -> Result<TokenResponse, TokenEndpointError> {
        self.post_grant(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("requested_token_use", "on_behalf_of"),
            ("assertion", assertion),
            ("scope", scope),
        ])
        .await
    }

    /// Any grant: `params` plus `client_id` and the client authentication,
    /// POSTed form-encoded to the token endpoint from discovery.
    pub async fn post_grant(
        &self,
        params: &[(&str, &str)],
    ) -> Result<TokenResponse, TokenEndpointError> {
        let loaded = self.provider.current().ok_or_else(|| {
            TokenEndpointError::Unreachable("the identity provider's metadata is not loaded".into())
        })?;
        let endpoint = &loaded.metadata.token_endpoint;
        let authentication = self
            .credential
            .authenticate(&self.client_id, &loaded.metadata)?;
        let mut form: Vec<(&str, &str)> = params.to_vec();
        form.push(("client_id", &self.client_id));
        form.extend(authentication.form.iter().map(|(k, v)| (*k, v.as_str())));
        let mut request = self
            .http
            .post(endpoint)
            .header(http::header::ACCEPT, "application/json")
            .form(&form);
        if let Some(value) = &authentication.authorization {
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                TokenEndpointError::Timeout
            } else {
                TokenEndpointError::Unreachable(crate::errors::error_chain(&e))
            }
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                TokenEndpointError::Timeout
            } else {
                TokenEndpointError::Unreachable(crate::errors::error_chain(&e))
            }
        })?;
        if !status.is_success() {
            return Err(TokenEndpointError::Refused {
                status: status.as_u16(),
                error: serde_json::from_slice(&body).unwrap_or_default(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| TokenEndpointError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entra_error_answers_keep_codes_and_ids() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215],"timestamp":"2026-11-28 01:00:00Z","trace_id":"t-1","correlation_id":"c-1"}"#;
        let error: IdpError = serde_json::from_slice(body).unwrap();
        assert_eq!(error.error, "invalid_client");
        assert_eq!(error.error_codes, vec![7000215]);
        assert_eq!(error.trace_id.as_deref(), Some("t-1"));
        assert_eq!(error.correlation_id.as_deref(), Some("c-1"));
    }

    #[test]
    fn token_response_debug_hides_tokens() {
        let tokens: TokenResponse = serde_json::from_str(
            r#"{"id_token":"eyJ.secret.id","access_token":"eyJ.secret.at","refresh_token":"rt-secret","expires_in":3600}"#,
        )
        .unwrap();
        let shown = format!("{tokens:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("3600"));
    }
}
