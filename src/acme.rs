//! Certificates from an ACME CA (Let's Encrypt by default), validated with
//! TLS-ALPN-01 on the gateway's own TLS listener, renewed `acme.renew_before`
//! ahead of expiry and served without a restart.
//!
//! The protocol is `instant-acme` (ring, over the hyper stack the gateway already
//! has); this module decides when to order, answers the validation through
//! [`ServedCertificate`], and keeps the account and the certificate in
//! `acme.cache_dir` so a restart serves the cached certificate at once and
//! orders nothing while it is fresh.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::certificate::{CertificateOrigin, CertificatePair, ServedCertificate};
use crate::config::{AcmeChallenge, AcmeConfig};
use crate::tls;

/// The first retry after a failed order; doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);
/// A long wait for the renewal date is cut into pieces this long, so a changed
/// wall clock (suspend, NTP step) is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// How long the CA may take to validate, and to issue.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME directory {directory}: {source}")]
    Protocol {
        directory: String,
        source: instant_acme::Error,
    },
    #[error("ACME order for {domains:?} ended {status:?}: the CA could not validate TLS-ALPN-01 on this listener; it must reach port 443 (or the port it validates on) of each domain and find this gateway there")]
    NotValidated {
        domains: Vec<String>,
        status: OrderStatus,
    },
    #[error("the ACME CA offers no {kind} challenge for {name} (key acme.challenge)")]
    NoChallenge { kind: String, name: String },
    #[error("key `acme.cache_dir`: {path}: {reason}; the gateway must be able to create and write this directory")]
    Cache { path: PathBuf, reason: String },
    #[error("the certificate issued by the ACME CA does not load: {0}")]
    Issued(String),
    #[error("cannot build the TLS-ALPN-01 validation certificate for {0}")]
    ValidationCertificate(String),
    #[error("key `acme.directory_ca_file`: {0}")]
    CaFile(String),
}

/// Files in `acme.cache_dir`, per ACME directory (an account and a certificate
/// belong to the CA that made them; switching from staging to production must
/// not serve staging's certificate).
pub struct CacheFiles {
    dir: PathBuf,
}

impl CacheFiles {
    pub fn new(config: &AcmeConfig) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, config.directory.as_bytes());
        let tag: String = digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        CacheFiles {
            dir: config.cache_dir.join(tag),
        }
    }

    pub fn certificate(&self) -> PathBuf {
        self.dir.join("certificate.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("certificate.key")
    }

    fn account(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The cached certificate when it loads and covers every configured domain.
    pub fn cached_pair(&self, domains: &[String]) -> Option<CertificatePair> {
        let pair = CertificatePair::from_files(&self.certificate(), &self.key()).ok()?;
        covers(&pair, domains).then_some(pair)
    }

    fn write_secret(&self, path: &Path, contents: &[u8]) -> Result<(), AcmeError> {
        write_atomically(path, contents, 0o600).map_err(|e| AcmeError::Cache {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    fn store(&self, chain_pem: &str, key_pem: &str) -> Result<(), AcmeError> {
        // Key first: a certificate next to an older key would not load, while
        // a new key next to the older certificate is only re-ordered.
        self.write_secret(&self.key(), key_pem.as_bytes())?;
        write_atomically(&self.certificate(), chain_pem.as_bytes(), 0o644).map_err(|e| {
            AcmeError::Cache {
                path: self.certificate(),
                reason: e.to_string(),
            }
        })
    }
}

/// Writes through a temporary file and a rename: a reader never sees half a file.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

fn covers(pair: &CertificatePair, domains: &[String]) -> bool {
    domains
        .iter()
        .all(|d| pair.names.iter().any(|n| n.eq_ignore_ascii_case(d)))
}

/// When the served certificate should be replaced: now, unless it is an ACME
/// certificate for every domain with more than `renew_before` left.
fn renewal_due(served: &ServedCertificate, config: &AcmeConfig) -> SystemTime {
    let info = served.info();
    let ours = info.origin == CertificateOrigin::Acme
        && config
            .domains
            .iter()
            .all(|d| info.names.iter().any(|n| n.eq_ignore_ascii_case(d)));
    match info.not_after {
        Some(not_after) if ours => not_after
            .checked_sub(config.renew_before)
            .unwrap_or(SystemTime::UNIX_EPOCH),
        _ => SystemTime::UNIX_EPOCH,
    }
}

/// Orders certificates until `stop`: at once when the served one is not a fresh
/// ACME certificate for the configured domains, then `renew_before` ahead of
/// each expiry; failures are logged and retried with backoff.
pub async fn run(config: AcmeConfig, served: Arc<ServedCertificate>, stop: CancellationToken) {
    let cache = CacheFiles::new(&config);
    let mut retry = FIRST_RETRY;
    loop {
        let due = renewal_due(&served, &config);
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        if !wait.is_zero() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait.min(MAX_SLEEP)) => continue,
            }
        }
        let ordered = tokio::select! {
            _ = stop.cancelled() => return,
            ordered = order_certificate(&config, &cache, &served) => ordered,
        };
        served.clear_challenges();
        match ordered {
            Ok(pair) => {
                tracing::info!(
                    domains = ?config.domains,
                    not_after = ?pair.not_after.map(humantime::format_rfc3339_seconds),
                    "ACME certificate obtained; new connections get it"
                );
                served.install(pair, CertificateOrigin::Acme);
                retry = FIRST_RETRY;
            }
            Err(e) => {
                served.record_failure(&e);
                tracing::error!(
                    error = %e,
                    retry_in_secs = retry.as_secs(),
                    "ACME order failed; still serving the previous certificate"
                );
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

/// One order, from account to stored certificate.
async fn order_certificate(
    config: &AcmeConfig,
    cache: &CacheFiles,
    served: &ServedCertificate,
) -> Result<CertificatePair, AcmeError> {
    let protocol = |source| AcmeError::Protocol {
        directory: config.directory.clone(),
        source,
    };
    let account = account(config, cache).await?;
    let identifiers: Vec<Identifier> = config
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(protocol)?;
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(protocol)?;
        if authorization.status == AuthorizationStatus::Valid {
            continue;
        }
        let name = authorization.identifier().to_string();
        let kind = match config.challenge {
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Http01 => ChallengeType::Http01,
        };
        let mut challenge =
            authorization
                .challenge(kind.clone())
                .ok_or_else(|| AcmeError::NoChallenge {
                    kind: format!("{kind:?}"),
                    name: name.clone(),
                })?;
        let key_authorization = challenge.key_authorization();
        match config.challenge {
            AcmeChallenge::TlsAlpn01 => {
                let key = validation_certificate(&name, key_authorization.digest().as_ref())?;
                served.set_challenge(&name, key);
            }
            AcmeChallenge::Http01 => {
                served.set_http_challenge(&challenge.token, key_authorization.as_str())
            }
        }
        challenge.set_ready().await.map_err(protocol)?;
    }
    let retries = RetryPolicy::new().timeout(ORDER_TIMEOUT);
    let status = order.poll_ready(&retries).await.map_err(protocol)?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::NotValidated {
            domains: config.domains.clone(),
            status,
        });
    }
    let key_pem = order.finalize().await.map_err(protocol)?;
    let chain_pem = order.poll_certificate(&retries).await.map_err(protocol)?;
    let pair = CertificatePair::from_pem(
        chain_pem.as_bytes(),
        key_pem.as_bytes(),
        &cache.certificate(),
        &cache.key(),
    )
    .map_err(|e| AcmeError::Issued(e.to_string()))?;
    cache.store(&chain_pem, &key_pem)?;
    Ok(pair)
}

/// The cached account for this directory, or a new one (then cached).
async fn account(config: &AcmeConfig, cache: &CacheFiles) -> Result<Account, AcmeError> {
    let protocol = |source| AcmeError::Protocol {
        directory: config.directory.clone(),
        source,
    };
    let builder = || -> Result<_, AcmeError> {
        Ok(Account::builder_with_http(Box::new(AcmeHttp::new(
            config.directory_ca_file.as_deref(),
        )?)))
    };
    if let Ok(text) = std::fs::read(cache.account()) {
        match serde_json::from_slice::<AccountCredentials>(&text) {
            Ok(credentials) => {
                return builder()?
                    .from_credentials(credentials)
                    .await
                    .map_err(protocol)
            }
            Err(e) => tracing::warn!(
                file = %cache.account().display(),
                error = %e,
                "unreadable ACME account file; registering a new account"
            ),
        }
    }
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await
        .map_err(protocol)?;
    let json = serde_json::to_vec(&credentials).map_err(|e| AcmeError::Cache {
        path: cache.account(),
        reason: e.to_string(),
    })?;
    cache.write_secret(&cache.account(), &json)?;
    tracing::info!(directory = %config.directory, "ACME account registered");
    Ok(account)
}

/// The TLS-ALPN-01 answer for `name` (RFC 8737): a self-signed certificate for
/// exactly that name carrying the key authorization's digest in the critical
/// acmeIdentifier extension.
fn validation_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let failed =
        |e: &dyn std::fmt::Display| AcmeError::ValidationCertificate(format!("{name}: {e}"));
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| failed(&e))?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate().map_err(|e| failed(&e))?;
    let cert = params.self_signed(&key).map_err(|e| failed(&e))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not CertifiedKey::from_der: its key check parses the certificate with
    // webpki, which refuses the critical acmeIdentifier extension. The key is
    // the one the certificate was just made with.
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| failed(&e))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

/// instant-acme's HTTP client: hyper over rustls (ring) with the web PKI roots
/// plus `acme.directory_ca_file`, the gateway's own stack.
struct AcmeHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
}

impl AcmeHttp {
    fn new(ca_file: Option<&Path>) -> Result<Self, AcmeError> {
        let tls = tls::client_config(ca_file, "acme.directory_ca_file")
            .map_err(|e| AcmeError::CaFile(e.to_string()))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(AcmeHttp {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        request: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.client.request(request);
        Box::pin(async move {
            response
                .await
                .map(BytesResponse::from)
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))
        })
    }
}
