//! How the gateway proves to the token endpoint that it is the registered
//! client: today a client secret, sent as `client_secret_post` when discovery
//! allows it (Entra's Basic handling of URL-encoded secrets has been
//! inconsistent), else `client_secret_basic` (the OIDC default).

use base64::Engine;

use super::provider::Metadata;

/// The configured client credential.
pub enum ClientCredential {
    Secret(String),
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCredential::Secret(_) => f.write_str("Secret(<redacted>)"),
        }
    }
}

/// What client authentication adds to a token request: form fields and, for
/// `client_secret_basic`, an `Authorization` header.
#[derive(Default)]
pub struct Authentication {
    pub form: Vec<(&'static str, String)>,
    pub authorization: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    #[error("{0}")]
    Credential(String),
}

impl ClientCredential {
    /// The client authentication for one request to `metadata.token_endpoint`.
    pub fn authenticate(
        &self,
        client_id: &str,
        metadata: &Metadata,
    ) -> Result<Authentication, ClientAuthError> {
        match self {
            ClientCredential::Secret(secret) => Ok(secret_authentication(
                client_id,
                secret,
                metadata.prefers_client_secret_post(),
            )),
        }
    }
}

fn secret_authentication(client_id: &str, secret: &str, post: bool) -> Authentication {
    if post {
        return Authentication {
            form: vec![("client_secret", secret.to_string())],
            authorization: None,
        };
    }
    // RFC 6749 §2.3.1: form-urlencode id and secret before Basic.
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        enc(client_id),
        enc(secret)
    ));
    Authentication {
        form: Vec::new(),
        authorization: Some(format!("Basic {basic}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_before_base64() {
        let auth = secret_authentication("app id", "p@ss:w/rd+", false);
        assert!(auth.form.is_empty());
        let header = auth.authorization.unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(header.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "app+id:p%40ss%3Aw%2Frd%2B"
        );
    }

    #[test]
    fn post_sends_the_secret_in_the_form_only() {
        let auth = secret_authentication("id", "s3cret", true);
        assert!(auth.authorization.is_none());
        assert_eq!(auth.form, vec![("client_secret", "s3cret".to_string())]);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let shown = format!("{:?}", ClientCredential::Secret("s3cret".into()));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
