//! How the gateway proves to the token endpoint that it is the registered
//! client — exactly one of:
//! - a client secret, sent as `client_secret_post` when discovery allows it
//!   (Entra's Basic handling of URL-encoded secrets has been inconsistent),
//!   else `client_secret_basic` (the OIDC default);
//! - a certificate: a fresh `private_key_jwt` client assertion per request
//!   ([`ClientCertificate`]);
//! - a federated credential: the assertion another issuer wrote to a file
//!   (Kubernetes workload identity rewrites it), read at each use.

use std::path::{Path, PathBuf};

use base64::Engine;

use super::client_certificate::{CertificateError, ClientCertificate, JWT_BEARER};
use super::provider::Metadata;
use crate::config::OidcConfig;

/// The configured client credential.
pub enum ClientCredential {
    Secret(String),
    Certificate(ClientCertificate),
    AssertionFile(PathBuf),
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCredential::Secret(_) => f.write_str("Secret(<redacted>)"),
            ClientCredential::Certificate(c) => {
                write!(f, "Certificate({})", c.facts().thumbprint_sha1)
            }
            ClientCredential::AssertionFile(path) => write!(f, "AssertionFile({path:?})"),
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
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error("cannot read the federated assertion in oidc.client_assertion_file {path}: {reason}")]
    AssertionFile { path: String, reason: String },
}

impl ClientCredential {
    /// The credential the (validated) configuration names; the certificate
    /// files are read and checked now.
    pub fn from_config(oidc: &OidcConfig) -> Result<Self, ClientAuthError> {
        if let (Some(certificate), Some(key)) = (&oidc.client_certificate, &oidc.client_key) {
            return Ok(ClientCredential::Certificate(ClientCertificate::load(
                certificate,
                key,
                oidc.client_assertion_alg,
            )?));
        }
        if let Some(path) = &oidc.client_assertion_file {
            return Ok(ClientCredential::AssertionFile(path.clone()));
        }
        Ok(ClientCredential::Secret(oidc.client_secret.clone()))
    }

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
            ClientCredential::Certificate(certificate) => Ok(assertion_authentication(
                certificate.assertion(client_id, &metadata.token_endpoint)?,
            )),
            ClientCredential::AssertionFile(path) => {
                Ok(assertion_authentication(read_assertion_file(path)?))
            }
        }
    }
}

fn assertion_authentication(assertion: String) -> Authentication {
    Authentication {
        form: vec![
            ("client_assertion_type", JWT_BEARER.to_string()),
            ("client_assertion", assertion),
        ],
        authorization: None,
    }
}

/// The federated assertion as the platform last wrote it.
fn read_assertion_file(path: &Path) -> Result<String, ClientAuthError> {
    let fail = |reason: String| ClientAuthError::AssertionFile {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let assertion = text.trim();
    if assertion.is_empty() {
        return Err(fail("the file is empty".into()));
    }
    if assertion.split('.').count() != 3 {
        return Err(fail("the file does not hold a JWT".into()));
    }
    Ok(assertion.to_string())
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
    fn federated_assertion_is_read_at_each_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "a.b.c\n").unwrap();
        assert_eq!(read_assertion_file(&path).unwrap(), "a.b.c");
        std::fs::write(&path, "d.e.f").unwrap();
        assert_eq!(read_assertion_file(&path).unwrap(), "d.e.f");
        std::fs::write(&path, "").unwrap();
        let error = read_assertion_file(&path).unwrap_err().to_string();
        assert!(
            error.contains("oidc.client_assertion_file") && error.contains("empty"),
            "{error}"
        );
        std::fs::write(&path, "not a jwt").unwrap();
        let error = read_assertion_file(&path).unwrap_err().to_string();
        assert!(error.contains("does not hold a JWT"), "{error}");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let shown = format!("{:?}", ClientCredential::Secret("s3cret".into()));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
