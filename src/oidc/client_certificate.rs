//! The certificate credential (`private_key_jwt`): an RSA key and its X.509
//! certificate (PEM files, `oidc.client_key` / `oidc.client_certificate`), the
//! certificate uploaded to the app registration. Each token request carries a
//! fresh client assertion signed with the key; its header names the
//! certificate by thumbprint — SHA-1 `x5t` with RS256 (what Entra has accepted
//! longest), or SHA-256 `x5t#S256` with PS256 (what Microsoft documents today).
//!
//! The files are re-read when they change (rotation without a restart); a
//! change that does not load (half-written, key and certificate not a pair)
//! keeps the last good pair and is logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ring::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

use crate::config::ClientAssertionAlg;
use crate::crypto::{base64url, random_bytes};

/// `exp - iat` of a client assertion (Microsoft: 5 to 10 minutes at most).
pub const ASSERTION_LIFETIME_SECS: u64 = 300;
/// The `client_assertion_type` of a JWT client assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CertificateError {
    #[error("cannot read {key} {path}: {reason}")]
    Read {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("{key} {path} is not usable: {reason}")]
    Invalid {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("oidc.client_key does not belong to oidc.client_certificate (their public keys differ); upload the certificate made from this key")]
    NotAPair,
    #[error("signing the client assertion failed")]
    Sign,
}

/// What an operator needs to know about the certificate (and what `check` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    pub subject: String,
    /// SHA-1 of the DER, upper-case hex: the "Thumbprint" the Azure portal shows.
    pub thumbprint_sha1: String,
    pub thumbprint_sha256: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// Warn this long before the certificate expires.
pub const EXPIRY_WARNING_SECS: i64 = 30 * 24 * 3600;

impl CertificateFacts {
    /// A warning when the certificate is expired, not valid yet, or expires
    /// within 30 days of `now` (unix seconds).
    pub fn expiry_warning(&self, now: i64) -> Option<String> {
        let until = humantime::format_rfc3339_seconds(unix_time(self.not_after));
        if self.not_after <= now {
            Some(format!(
                "the client certificate expired at {until}: Entra refuses it; upload a new one and point oidc.client_certificate/oidc.client_key at it"
            ))
        } else if self.not_before > now {
            Some(format!(
                "the client certificate is not valid before {}",
                humantime::format_rfc3339_seconds(unix_time(self.not_before))
            ))
        } else if self.not_after - now <= EXPIRY_WARNING_SECS {
            Some(format!(
                "the client certificate expires in {} day(s), at {until}: upload its successor to Azure now, then replace the files (they are re-read without a restart)",
                (self.not_after - now) / 86400
            ))
        } else {
            None
        }
    }

    /// `not_after` as RFC 3339.
    pub fn expires(&self) -> String {
        humantime::format_rfc3339_seconds(unix_time(self.not_after)).to_string()
    }
}

fn unix_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// A loaded pair.
#[derive(Clone)]
struct Pair {
    key: Arc<RsaKeyPair>,
    facts: CertificateFacts,
    /// base64url thumbprints for the JOSE header.
    x5t: String,
    x5t_s256: String,
    /// Modification times the pair was read at.
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

pub struct ClientCertificate {
    certificate: PathBuf,
    key: PathBuf,
    alg: ClientAssertionAlg,
    current: Mutex<Arc<Pair>>,
    rng: SystemRandom,
}

impl ClientCertificate {
    /// Loads the pair; an error names the key and file at fault.
    pub fn load(
        certificate: &Path,
        key: &Path,
        alg: ClientAssertionAlg,
    ) -> Result<Self, CertificateError> {
        let pair = read_pair(certificate, key)?;
        Ok(ClientCertificate {
            certificate: certificate.to_path_buf(),
            key: key.to_path_buf(),
            alg,
            current: Mutex::new(Arc::new(pair)),
            rng: SystemRandom::new(),
        })
    }

    /// The certificate in use (after re-reading changed files).
    pub fn facts(&self) -> CertificateFacts {
        self.pair().facts.clone()
    }

    /// A fresh client assertion for `audience` (the token endpoint).
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<String, CertificateError> {
        let pair = self.pair();
        let header = match self.alg {
            ClientAssertionAlg::Rs256 => json!({"alg": "RS256", "typ": "JWT", "x5t": pair.x5t}),
            ClientAssertionAlg::Ps256 => {
                json!({"alg": "PS256", "typ": "JWT", "x5t#S256": pair.x5t_s256})
            }
        };
        let now = crate::session::unix_now();
        let claims = json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid_v4(),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let input = format!(
            "{}.{}",
            base64url(header.to_string().as_bytes()),
            base64url(claims.to_string().as_bytes())
        );
        let padding: &'static dyn ring::signature::RsaEncoding = match self.alg {
            ClientAssertionAlg::Rs256 => &RSA_PKCS1_SHA256,
            ClientAssertionAlg::Ps256 => &RSA_PSS_SHA256,
        };
        let mut signature = vec![0; pair.key.public().modulus_len()];
        pair.key
            .sign(padding, &self.rng, input.as_bytes(), &mut signature)
            .map_err(|_| CertificateError::Sign)?;
        Ok(format!("{input}.{}", base64url(&signature)))
    }

    /// The current pair, re-read first when either file changed since.
    fn pair(&self) -> Arc<Pair> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stamp = (modified(&self.certificate), modified(&self.key));
        if stamp != current.stamp {
            match read_pair(&self.certificate, &self.key) {
                Ok(pair) => {
                    tracing::info!(
                        thumbprint = %pair.facts.thumbprint_sha1,
                        not_after = pair.facts.not_after,
                        "client certificate reloaded"
                    );
                    *current = Arc::new(pair);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "client certificate files changed but do not load; keeping the previous pair");
                    // Do not retry on every request until the files change again.
                    let mut kept = Pair::clone(&current);
                    kept.stamp = stamp;
                    *current = Arc::new(kept);
                }
            }
        }
        current.clone()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads and checks a certificate and key pair.
fn read_pair(certificate: &Path, key: &Path) -> Result<Pair, CertificateError> {
    let stamp = (modified(certificate), modified(key));
    let cert_der =
        CertificateDer::from_pem_file(certificate).map_err(|e| CertificateError::Read {
            key: "oidc.client_certificate",
            path: certificate.display().to_string(),
            reason: format!("{e} (a PEM \"CERTIFICATE\" is expected)"),
        })?;
    let invalid_cert = |reason: String| CertificateError::Invalid {
        key: "oidc.client_certificate",
        path: certificate.display().to_string(),
        reason,
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(cert_der.as_ref())
        .map_err(|e| invalid_cert(format!("not an X.509 certificate ({e})")))?;
    let key_pair = read_key(key)?;
    let cert_public = parsed.public_key().subject_public_key.data.as_ref();
    if cert_public != key_pair.public().as_ref() {
        return Err(CertificateError::NotAPair);
    }
    let sha1 = digest(&SHA1_FOR_LEGACY_USE_ONLY, cert_der.as_ref());
    let sha256 = digest(&SHA256, cert_der.as_ref());
    let facts = CertificateFacts {
        subject: parsed.subject().to_string(),
        thumbprint_sha1: hex_upper(sha1.as_ref()),
        thumbprint_sha256: hex_upper(sha256.as_ref()),
        not_before: parsed.validity().not_before.timestamp(),
        not_after: parsed.validity().not_after.timestamp(),
    };
    Ok(Pair {
        key: Arc::new(key_pair),
        facts,
        x5t: base64url(sha1.as_ref()),
        x5t_s256: base64url(sha256.as_ref()),
        stamp,
    })
}

fn read_key(path: &Path) -> Result<RsaKeyPair, CertificateError> {
    let invalid = |reason: String| CertificateError::Invalid {
        key: "oidc.client_key",
        path: path.display().to_string(),
        reason,
    };
    let der = PrivateKeyDer::from_pem_file(path).map_err(|e| CertificateError::Read {
        key: "oidc.client_key",
        path: path.display().to_string(),
        reason: format!("{e} (an unencrypted PEM RSA private key is expected)"),
    })?;
    match der {
        PrivateKeyDer::Pkcs8(pkcs8) => RsaKeyPair::from_pkcs8(pkcs8.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(pkcs1) => RsaKeyPair::from_der(pkcs1.secret_pkcs1_der()),
        _ => {
            return Err(invalid(
                "not an RSA key (Entra certificate credentials are RSA)".into(),
            ))
        }
    }
    .map_err(|e| invalid(format!("not a usable RSA key ({e}); at least 2048 bits")))
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A random (version 4) UUID, the `jti` Microsoft's samples use.
fn uuid_v4() -> String {
    let mut bytes = random_bytes::<16>();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(not_before: i64, not_after: i64) -> CertificateFacts {
        CertificateFacts {
            subject: "CN=oidc-gateway".into(),
            thumbprint_sha1: "AB".into(),
            thumbprint_sha256: "CD".into(),
            not_before,
            not_after,
        }
    }

    #[test]
    fn expiry_is_warned_from_thirty_days_ahead() {
        let now = 1_800_000_000;
        let day = 86_400;
        assert_eq!(facts(now - day, now + 31 * day).expiry_warning(now), None);
        let soon = facts(now - day, now + 29 * day)
            .expiry_warning(now)
            .unwrap();
        assert!(soon.contains("expires in 29 day(s)"), "{soon}");
        let expired = facts(now - 2 * day, now - day).expiry_warning(now).unwrap();
        assert!(expired.contains("expired"), "{expired}");
        let early = facts(now + day, now + 90 * day)
            .expiry_warning(now)
            .unwrap();
        assert!(early.contains("not valid before"), "{early}");
    }

    #[test]
    fn jti_is_a_random_version_4_uuid() {
        let (a, b) = (uuid_v4(), uuid_v4());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key_a = include_str!("../../tests/fixtures/idp-rsa-2.pem");
        let key_b = include_str!("../../tests/fixtures/idp-rsa-3.pem");
        let signer = rcgen::KeyPair::from_pem(key_a).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a".into()])
            .unwrap()
            .self_signed(&signer)
            .unwrap()
            .pem();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key_b).unwrap();
        let error = ClientCertificate::load(&cert_path, &key_path, ClientAssertionAlg::Rs256)
            .err()
            .unwrap();
        assert_eq!(error, CertificateError::NotAPair);
        std::fs::write(&key_path, key_a).unwrap();
        let loaded =
            ClientCertificate::load(&cert_path, &key_path, ClientAssertionAlg::Rs256).unwrap();
        assert_eq!(loaded.facts().thumbprint_sha1.len(), 40);
        std::fs::write(&key_path, "not a key").unwrap();
        let error = ClientCertificate::load(&cert_path, &key_path, ClientAssertionAlg::Rs256)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("oidc.client_key"), "{error}");
    }
}
