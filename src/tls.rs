//! TLS material: PEM loading, self-signed generation, the server's rustls config,
//! the upstream client's rustls config, and the pinned-certificate client config
//! used by `oidc-gateway healthcheck`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ResolvesServerCert;
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("key `tls.cert`: cannot read certificate {path}: {reason}; point tls.cert at a PEM certificate chain (or remove both files and set tls.self_signed = true)")]
    Cert { path: PathBuf, reason: String },
    #[error("key `tls.key`: cannot read private key {path}: {reason}; point tls.key at a PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    Key { path: PathBuf, reason: String },
    #[error("keys `tls.cert`/`tls.key`: {0}")]
    Pair(String),
    #[error("key `tls.cert`: {cert} and {key} are both missing and tls.self_signed = false; provide a certificate and key, or set tls.self_signed = true to create a development pair")]
    Missing { cert: PathBuf, key: PathBuf },
    #[error("key `tls.cert`: only one of {present} and {absent} exists; refusing to overwrite it with a self-signed pair; provide the other file or remove both")]
    HalfPresent { present: PathBuf, absent: PathBuf },
    #[error("cannot write self-signed {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("key `{key}`: cannot read {path}: {reason}; point it at a PEM file of the CA certificate(s)")]
    CaFile {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// ALPN protocol of ACME TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The process-wide crypto provider: ring, installed once before any rustls use.
pub fn install_crypto_provider() {
    // Err only means it is installed already (tests start many servers).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What `ensure_certificate` found or did, for logs and `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateSource {
    Files,
    Generated,
    WouldGenerate,
}

/// Makes sure the configured certificate files exist: with `self_signed = true` and
/// both files missing, writes a new self-signed pair (key at mode 0600).
/// With `dry_run`, only reports what it would do.
pub fn ensure_certificate(
    settings: &Settings,
    dry_run: bool,
) -> Result<CertificateSource, TlsError> {
    let tls = &settings.config.tls;
    match (tls.cert.exists(), tls.key.exists()) {
        (true, true) => Ok(CertificateSource::Files),
        (true, false) => Err(TlsError::HalfPresent {
            present: tls.cert.clone(),
            absent: tls.key.clone(),
        }),
        (false, true) => Err(TlsError::HalfPresent {
            present: tls.key.clone(),
            absent: tls.cert.clone(),
        }),
        (false, false) if !tls.self_signed => Err(TlsError::Missing {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        }),
        (false, false) if dry_run => Ok(CertificateSource::WouldGenerate),
        (false, false) => {
            let names = self_signed_names(settings);
            write_self_signed(&tls.cert, &tls.key, names)?;
            Ok(CertificateSource::Generated)
        }
    }
}

/// SANs of a generated certificate: loopback names plus the public_url host.
pub fn self_signed_names(settings: &Settings) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Some(host) = settings.public_url.as_ref().and_then(|u| u.host()) {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

fn write_self_signed(
    cert_path: &Path,
    key_path: &Path,
    names: Vec<String>,
) -> Result<(), TlsError> {
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Write {
        path: cert_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let write = |path: &Path, contents: &str, mode: u32| -> Result<(), TlsError> {
        let fail = |e: std::io::Error| TlsError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        let mut file = options.open(path).map_err(fail)?;
        file.write_all(contents.as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)
    };
    // Key first: if writing the certificate fails, a lone key is refused at the next start
    // instead of silently pairing with some other certificate.
    write(key_path, &generated.signing_key.serialize_pem(), 0o600)?;
    write(cert_path, &generated.cert.pem(), 0o644)?;
    Ok(())
}

/// Loads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::Cert {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no CERTIFICATE block in the file".into()));
    }
    Ok(certs)
}

/// Is the leaf certificate in `path` self-signed (its issuer is its subject)?
/// Unreadable or unparsable counts as self-signed: HSTS, which depends on
/// this, is then left off rather than pinned to a certificate browsers reject.
pub fn is_self_signed(path: &Path) -> bool {
    load_certs(path)
        .ok()
        .and_then(|certs| issuer_and_subject(&certs[0]).map(|(issuer, subject)| issuer == subject))
        .unwrap_or(true)
}

/// The DER of a certificate's issuer and subject names (RFC 5280 §4.1:
/// Certificate → TBSCertificate → [0] version, serial, signature algorithm,
/// issuer, validity, subject).
fn issuer_and_subject(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let certificate = DerElement::first(der)?;
    let tbs = DerElement::first(certificate.content)?;
    let first = DerElement::first(tbs.content)?;
    // The [0] version is optional (v1 certificates have none); the serial follows.
    let serial = if first.tag == 0xa0 {
        DerElement::first(first.rest)?
    } else {
        first
    };
    let algorithm = DerElement::first(serial.rest)?;
    let issuer = DerElement::first(algorithm.rest)?;
    let validity = DerElement::first(issuer.rest)?;
    let subject = DerElement::first(validity.rest)?;
    Some((issuer.whole, subject.whole))
}

/// One DER element (tag, length, content) at the start of some input.
struct DerElement<'a> {
    tag: u8,
    /// Tag, length and content.
    whole: &'a [u8],
    content: &'a [u8],
    /// What follows the element.
    rest: &'a [u8],
}

impl<'a> DerElement<'a> {
    fn first(input: &'a [u8]) -> Option<Self> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |l, &b| (l << 8) | usize::from(b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        let header = input.len() - rest.len();
        Some(DerElement {
            tag,
            whole: &input[..header + len],
            content: &rest[..len],
            rest: &rest[len..],
        })
    }
}

/// The listener's TLS config: TLS 1.2 and 1.3 (rustls offers nothing older),
/// ALPN h2 then http/1.1 (plus `acme-tls/1` when ACME validates on this
/// listener), certificates from `resolver` (swapped on reload).
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    acme_validation: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Pair(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme_validation {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok(Arc::new(config))
}

/// TLS for https upstreams: the Mozilla roots plus an optional private CA.
pub fn upstream_client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    client_config(ca_file, "upstream.ca_file")
}

/// A TLS client trusting the Mozilla roots plus the CA certificates in `ca_file`
/// (the config key `key` names it in errors).
pub fn client_config(
    ca_file: Option<&Path>,
    key: &'static str,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let fail = |reason: String| TlsError::CaFile {
            key,
            path: path.to_path_buf(),
            reason,
        };
        let certs = load_certs(path).map_err(|e| fail(e.to_string()))?;
        for cert in certs {
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
        }
    }
    // No ALPN here: hyper-rustls sets it (http/1.1 only: the upstream hop carries upgrades).
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pair(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client config that trusts exactly one certificate: the one the gateway serves.
/// `healthcheck` uses it to ask its own listener without a CA and whatever host name
/// the certificate carries.
pub fn pinned_client_config(cert: CertificateDer<'static>) -> rustls::ClientConfig {
    let verifier = Arc::new(PinnedCertificate {
        cert,
        provider: provider(),
    });
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| unreachable_config())
}

// with_safe_default_protocol_versions cannot fail for the ring provider; keep a
// total function anyway rather than panic.
fn unreachable_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

#[derive(Debug)]
struct PinnedCertificate {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the listener presents a different certificate than tls.cert".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificates_are_told_from_ca_issued_ones() {
        let dir = tempfile::tempdir().unwrap();
        let own = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let self_signed = dir.path().join("self.crt");
        std::fs::write(&self_signed, own.cert.pem()).unwrap();
        assert!(is_self_signed(&self_signed));

        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["console.example".into()]).unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "console.example");
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let issued = dir.path().join("issued.crt");
        std::fs::write(&issued, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        assert!(!is_self_signed(&issued));

        // Nothing readable: treated as self-signed (no HSTS).
        assert!(is_self_signed(&dir.path().join("missing.crt")));
    }
}
