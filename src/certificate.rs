//! The certificate the TLS listener serves, and how it changes while running.
//!
//! [`ServedCertificate`] is the listener's rustls resolver: it hands every new
//! handshake the current pair from an `ArcSwap`, so a reload is one atomic store —
//! new handshakes get the new pair, open connections keep the one they started with.
//! A pair that fails to load never replaces the last good one.
//!
//! [`FileReloader`] re-reads `tls.cert`/`tls.key` on a reload request (SIGHUP) and
//! when their contents change. Change detection is a periodic content check
//! (SHA-256 of both files every `tls.reload_interval`) rather than an inotify
//! watcher: it sees the atomic symlink swap of Kubernetes secret volumes and
//! certbot's `live/` links, where a watch on the file itself sees nothing, needs no
//! extra dependency, and costs two small file reads per interval.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::tls::{TlsError, ACME_TLS_ALPN};

/// A certificate chain with its key, checked to match, and what the listener
/// reports about it.
#[derive(Clone, Debug)]
pub struct CertificatePair {
    pub key: Arc<CertifiedKey>,
    /// The leaf's notAfter (None when the leaf cannot be parsed as X.509).
    pub not_after: Option<SystemTime>,
    /// The leaf's DNS names and IP addresses (subjectAltName).
    pub names: Vec<String>,
}

impl CertificatePair {
    /// Builds a pair from PEM text; `cert_path`/`key_path` only name the files in errors.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, TlsError> {
        let cert_fail = |reason: String| TlsError::Cert {
            path: cert_path.to_path_buf(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_fail(e.to_string()))?;
        let Some(leaf) = chain.first() else {
            return Err(cert_fail("no CERTIFICATE block in the file".into()));
        };
        let (not_after, names) = leaf_facts(leaf);
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let provider = rustls::crypto::ring::default_provider();
        // from_der also checks that the key belongs to the leaf.
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            TlsError::Pair(format!(
                "{} and {} do not form a usable pair: {e}",
                cert_path.display(),
                key_path.display()
            ))
        })?;
        Ok(CertificatePair {
            key: Arc::new(certified),
            not_after,
            names,
        })
    }

    /// Reads and checks the pair from two PEM files.
    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let (cert, key) = read_pair(cert_path, key_path)?;
        Self::from_pem(&cert, &key, cert_path, key_path)
    }

    /// Time left until notAfter (zero once expired); None when unknown.
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        self.not_after
            .map(|t| t.duration_since(now).unwrap_or(Duration::ZERO))
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let cert = std::fs::read(cert_path).map_err(|e| TlsError::Cert {
        path: cert_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let key = std::fs::read(key_path).map_err(|e| TlsError::Key {
        path: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((cert, key))
}

/// notAfter and subjectAltNames of a DER certificate.
fn leaf_facts(der: &CertificateDer<'_>) -> (Option<SystemTime>, Vec<String>) {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return (None, Vec::new());
    };
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .ok()
        .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_string()),
                    GeneralName::IPAddress(bytes) => ip_from_bytes(bytes),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (not_after, names)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::IpAddr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::IpAddr::from(b).to_string()),
        _ => None,
    }
}

/// Where the served pair came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateOrigin {
    /// `tls.cert` / `tls.key`.
    Files,
    /// Obtained (or taken from the cache) by the ACME client.
    Acme,
}

/// What subscribers learn each time the served pair changes.
#[derive(Clone, Debug)]
pub struct ServedInfo {
    /// Counts installs: 1 for the pair the listener started with.
    pub generation: u64,
    pub origin: CertificateOrigin,
    pub not_after: Option<SystemTime>,
    pub names: Vec<String>,
    /// Reloads and ACME orders that failed so far (the previous pair stayed in service).
    pub reload_failures: u64,
    /// Why the last failed reload failed.
    pub last_error: Option<String>,
}

/// The listener's certificate resolver: the current pair, atomically replaceable,
/// plus the short-lived TLS-ALPN-01 answers of an ACME validation in progress.
#[derive(Debug)]
pub struct ServedCertificate {
    current: ArcSwap<CertifiedKey>,
    info: watch::Sender<ServedInfo>,
    /// ACME validation certificates by lower-case server name (empty but while an order runs).
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01 key authorizations by token (empty but while an order runs).
    http_challenges: Mutex<HashMap<String, String>>,
}

impl ServedCertificate {
    pub fn new(pair: CertificatePair, origin: CertificateOrigin) -> Self {
        let info = ServedInfo {
            generation: 1,
            origin,
            not_after: pair.not_after,
            names: pair.names,
            reload_failures: 0,
            last_error: None,
        };
        ServedCertificate {
            current: ArcSwap::new(pair.key),
            info: watch::channel(info).0,
            challenges: Mutex::new(HashMap::new()),
            http_challenges: Mutex::new(HashMap::new()),
        }
    }

    /// Serves `pair` to every handshake from now on.
    pub fn install(&self, pair: CertificatePair, origin: CertificateOrigin) {
        self.current.store(pair.key);
        self.info.send_modify(|info| {
            info.generation += 1;
            info.origin = origin;
            info.not_after = pair.not_after;
            info.names = pair.names;
        });
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Facts about the served pair; `changed()` on the receiver completes at the
    /// next install or failed reload.
    pub fn subscribe(&self) -> watch::Receiver<ServedInfo> {
        self.info.subscribe()
    }

    pub fn info(&self) -> ServedInfo {
        self.info.borrow().clone()
    }

    /// Records a reload or ACME order that failed; the served pair stays.
    pub fn record_failure(&self, reason: &dyn std::fmt::Display) {
        self.info.send_modify(|info| {
            info.reload_failures += 1;
            info.last_error = Some(reason.to_string());
        });
    }

    /// Answers TLS-ALPN-01 validation for `name` with `key` until removed.
    pub fn set_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        if let Ok(mut challenges) = self.challenges.lock() {
            challenges.insert(name.to_ascii_lowercase(), key);
        }
    }

    /// Answers HTTP-01 validation for `token` with `key_authorization` until removed.
    pub fn set_http_challenge(&self, token: &str, key_authorization: &str) {
        if let Ok(mut challenges) = self.http_challenges.lock() {
            challenges.insert(token.to_string(), key_authorization.to_string());
        }
    }

    /// The key authorization for an HTTP-01 `token` of an order in progress.
    pub fn http_challenge(&self, token: &str) -> Option<String> {
        self.http_challenges.lock().ok()?.get(token).cloned()
    }

    pub fn clear_challenges(&self) {
        if let Ok(mut challenges) = self.challenges.lock() {
            challenges.clear();
        }
        if let Ok(mut challenges) = self.http_challenges.lock() {
            challenges.clear();
        }
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme_validation = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme_validation {
            // Only the validation certificate may answer acme-tls/1 (RFC 8737 §3);
            // without one the handshake fails, which is what the CA should see.
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.lock().ok()?.get(&name).cloned();
        }
        Some(self.current.load_full())
    }
}

/// Re-reads `tls.cert` and `tls.key` into a [`ServedCertificate`].
pub struct FileReloader {
    cert: PathBuf,
    key: PathBuf,
    served: Arc<ServedCertificate>,
    /// SHA-256 of the file contents last tried, good or bad: a periodic check
    /// retries only when the files change again, instead of logging the same error.
    last_seen: Mutex<Option<[u8; 32]>>,
}

/// Why a reload was attempted, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadCause {
    Requested,
    FilesChanged,
}

/// The result of one reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Installed,
    Unchanged,
}

impl FileReloader {
    pub fn new(cert: PathBuf, key: PathBuf, served: Arc<ServedCertificate>) -> Self {
        let last_seen = read_pair(&cert, &key)
            .ok()
            .map(|(c, k)| fingerprint(&c, &k));
        FileReloader {
            cert,
            key,
            served,
            last_seen: Mutex::new(last_seen),
        }
    }

    /// Loads the files and serves them when they form a good pair. A request
    /// reloads even unchanged files; a file check only changed ones. Failures are
    /// logged and counted, and the served pair stays.
    pub fn reload(&self, cause: ReloadCause) -> Result<ReloadOutcome, TlsError> {
        let result = self.try_reload(cause);
        match &result {
            Ok(ReloadOutcome::Installed) => {
                let info = self.served.info();
                tracing::info!(
                    cert = %self.cert.display(),
                    ?cause,
                    names = ?info.names,
                    not_after = ?info.not_after.map(humantime::format_rfc3339_seconds),
                    "TLS certificate reloaded; new connections get it"
                );
            }
            Ok(ReloadOutcome::Unchanged) => {}
            Err(e) => {
                self.served.record_failure(e);
                tracing::error!(
                    ?cause,
                    error = %e,
                    "TLS certificate reload failed; still serving the previous certificate"
                );
            }
        }
        result
    }

    fn try_reload(&self, cause: ReloadCause) -> Result<ReloadOutcome, TlsError> {
        let (cert, key) = read_pair(&self.cert, &self.key)?;
        let seen = fingerprint(&cert, &key);
        {
            let mut last = self
                .last_seen
                .lock()
                .map_err(|_| TlsError::Pair("certificate reloader state poisoned".into()))?;
            if cause == ReloadCause::FilesChanged && *last == Some(seen) {
                return Ok(ReloadOutcome::Unchanged);
            }
            *last = Some(seen);
        }
        let pair = CertificatePair::from_pem(&cert, &key, &self.cert, &self.key)?;
        self.served.install(pair, CertificateOrigin::Files);
        Ok(ReloadOutcome::Installed)
    }

    /// Reloads on every request and, with a non-zero `interval`, whenever the
    /// files' contents change; until `stop`.
    pub async fn run(
        self,
        mut requests: watch::Receiver<u64>,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut ticks = (!interval.is_zero()).then(|| {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = requests.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let _ = self.reload(ReloadCause::Requested);
                }
                _ = tick(ticks.as_mut()) => {
                    // A file that cannot be read during a check is most likely being
                    // replaced: a check that fails to read is retried at the next tick.
                    if read_pair(&self.cert, &self.key).is_ok() {
                        let _ = self.reload(ReloadCause::FilesChanged);
                    }
                }
            }
        }
    }
}

async fn tick(ticks: Option<&mut tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(cert.len() as u64).to_be_bytes());
    ctx.update(cert);
    ctx.update(key);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `check`'s expiry verdict: a warning when the certificate ends within `window`.
pub fn expiry_warning(pair: &CertificatePair, now: SystemTime, window: Duration) -> Option<String> {
    let not_after = pair.not_after?;
    let date = humantime::format_rfc3339_seconds(not_after);
    match not_after.duration_since(now) {
        Err(_) => Some(format!(
            "the certificate EXPIRED on {date}; browsers refuse it: replace the files (the running gateway picks them up) or enable [acme]"
        )),
        Ok(left) if left < window => Some(format!(
            "the certificate expires in {} days ({date}); renew it soon (the running gateway picks up new files without a restart)",
            left.as_secs() / 86_400
        )),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair_for(names: &[&str]) -> (String, String) {
        let generated = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (generated.cert.pem(), generated.signing_key.serialize_pem())
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_by_name() {
        let (cert, _) = pair_for(&["a.example"]);
        let (_, other_key) = pair_for(&["b.example"]);
        let err = CertificatePair::from_pem(
            cert.as_bytes(),
            other_key.as_bytes(),
            Path::new("a.crt"),
            Path::new("b.key"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("a.crt and b.key do not form a usable pair"),
            "{err}"
        );
    }

    #[test]
    fn names_and_expiry_are_read_from_the_leaf() {
        let (cert, key) = pair_for(&["a.example", "127.0.0.1"]);
        let pair = CertificatePair::from_pem(
            cert.as_bytes(),
            key.as_bytes(),
            Path::new("a.crt"),
            Path::new("a.key"),
        )
        .unwrap();
        assert_eq!(pair.names, vec!["a.example", "127.0.0.1"]);
        // rcgen's default validity ends in 4096.
        let left = pair.remaining(SystemTime::now()).unwrap();
        assert!(
            left > Duration::from_secs(3600 * 24 * 365 * 1000),
            "{left:?}"
        );
        assert_eq!(
            expiry_warning(&pair, SystemTime::now(), Duration::from_secs(30 * 86_400)),
            None
        );
        let far = SystemTime::now() + left - Duration::from_secs(10 * 86_400);
        let warning = expiry_warning(&pair, far, Duration::from_secs(30 * 86_400)).unwrap();
        assert!(
            warning.contains("expires in 9 days") || warning.contains("expires in 10 days"),
            "{warning}"
        );
        let later = SystemTime::now() + left + Duration::from_secs(86_400);
        assert!(
            expiry_warning(&pair, later, Duration::from_secs(30 * 86_400))
                .unwrap()
                .contains("EXPIRED")
        );
    }
}
