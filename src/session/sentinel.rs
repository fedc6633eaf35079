//! The Redis primary behind Sentinel (`session.redis_sentinels`), followed
//! across a failover.
//!
//! The `redis` crate's [`SentinelClient`] finds the primary Sentinel names
//! (and checks with `ROLE` that it is one), but a `ConnectionManager` built on
//! it keeps talking to that address for good. [`SentinelPrimary`] holds the
//! connection to the current primary and asks Sentinel again when the store
//! says a command failed in a way a failover explains; when Sentinel names
//! another address, a new connection replaces the old one for every later
//! command. Lookups are single-flight: requests failing together cause one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, ErrorKind, IntoConnectionInfo, TlsCertificates, TlsMode};

use super::store::StoreInitError;

/// A lookup asks up to three Sentinels at once and checks the primary each
/// names with `ROLE`; the crate sets no timeout of its own on these.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The primary in use: its connection and the address Sentinel gave for it.
pub(super) struct Current {
    pub connection: ConnectionManager,
    pub address: String,
}

/// What the last lookup found (read by requests that waited for it).
struct Lookup {
    client: SentinelClient,
    outcome: Result<(), String>,
}

pub(super) struct SentinelPrimary {
    master: String,
    lookup: tokio::sync::Mutex<Lookup>,
    /// Lookups finished so far: a request whose command failed before one
    /// finished takes that one's answer instead of asking again.
    lookups: AtomicU64,
    current: ArcSwapOption<Current>,
    config: ConnectionManagerConfig,
}

impl SentinelPrimary {
    /// Parses the keys; connects to nothing (the first lookup is the store's probe).
    pub fn new(
        sentinels: &[String],
        master: &str,
        redis_url: &str,
        ca: Option<&[u8]>,
        config: ConnectionManagerConfig,
    ) -> Result<SentinelPrimary, StoreInitError> {
        let sentinel_error = |reason: String| StoreInitError {
            key: "session.redis_sentinels",
            reason,
        };
        let mut addresses = Vec::new();
        let mut credentials = None;
        for (i, url) in sentinels.iter().enumerate() {
            let info = url.trim().into_connection_info().map_err(|e| {
                // The URL may hold a password: only the parser's words.
                sentinel_error(format!(
                    "entry {} is not a usable Sentinel URL ({}); write it as redis://[user:password@]host:26379",
                    i + 1,
                    e.detail().unwrap_or(e.category())
                ))
            })?;
            let redis = info.redis_settings();
            if redis.db() != 0 {
                return Err(sentinel_error(format!(
                    "entry {} names database {}; Sentinel has none: put the database in session.redis_url",
                    i + 1,
                    redis.db()
                )));
            }
            let these = (
                redis.username().map(str::to_string),
                redis.password().map(str::to_string),
            );
            if credentials.get_or_insert_with(|| these.clone()) != &these {
                return Err(sentinel_error(
                    "gives the Sentinels different users or passwords; the gateway logs in to every Sentinel with the same ones"
                        .into(),
                ));
            }
            addresses.push(info.addr().clone());
        }
        let tls_to_sentinels = matches!(addresses.first(), Some(ConnectionAddr::TcpTls { .. }));
        let mut builder =
            SentinelClientBuilder::new(addresses, master.trim(), SentinelServerType::Master)
                .map_err(|e| sentinel_error(format!("cannot set up the Sentinel client: {e}")))?;
        if let Some((username, password)) = credentials {
            if let Some(username) = username {
                builder = builder.set_client_to_sentinel_username(username);
            }
            if let Some(password) = password {
                builder = builder.set_client_to_sentinel_password(password);
            }
        }
        let certificates = || TlsCertificates {
            client_tls: None,
            root_cert: ca.map(<[u8]>::to_vec),
        };
        if tls_to_sentinels && ca.is_some() {
            builder = builder.set_client_to_sentinel_certificates(certificates());
        }
        builder = with_primary_settings(builder, redis_url, ca.map(|_| certificates()))?;
        let client = builder
            .build()
            .map_err(|e| sentinel_error(format!("cannot set up the Sentinel client: {e}")))?;
        Ok(SentinelPrimary {
            master: master.trim().to_string(),
            lookup: tokio::sync::Mutex::new(Lookup {
                client,
                outcome: Err("Redis Sentinel not asked yet".into()),
            }),
            lookups: AtomicU64::new(0),
            current: ArcSwapOption::empty(),
            config,
        })
    }

    /// The primary in use, if a lookup has found one.
    pub fn current(&self) -> Option<Arc<Current>> {
        self.current.load_full()
    }

    /// How many lookups have finished: read when a command fails, before
    /// [`Self::follow`].
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Acquire)
    }

    /// The primary to use after a command sent to `used` failed when `seen`
    /// lookups had finished: the current one if it is no longer `used` (a
    /// lookup moved on meanwhile), else the answer of a lookup finished since
    /// `seen`, else Sentinel's answer now. Swaps in a connection to a new
    /// address; the error names Sentinel.
    pub async fn follow(
        &self,
        seen: u64,
        used: Option<&Arc<Current>>,
    ) -> Result<Arc<Current>, String> {
        let mut lookup = self.lookup.lock().await;
        let current = self.current();
        if let (Some(current), Some(used)) = (&current, used) {
            if !Arc::ptr_eq(current, used) {
                return Ok(current.clone());
            }
        }
        if self.lookups() == seen {
            lookup.outcome = self.ask(&mut lookup.client).await;
            self.lookups.fetch_add(1, Ordering::AcqRel);
        }
        lookup.outcome.clone()?;
        self.current()
            .ok_or_else(|| "Redis Sentinel named no primary yet".to_string())
    }

    async fn ask(&self, client: &mut SentinelClient) -> Result<(), String> {
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, client.async_get_client())
            .await
            .map_err(|_| {
                format!(
                    "Redis Sentinel did not name the primary \"{}\" within {}s (session.redis_sentinels)",
                    self.master,
                    LOOKUP_TIMEOUT.as_secs()
                )
            })?;
        let primary = found.map_err(|e| {
            if e.kind() == ErrorKind::MasterNameNotFoundBySentinel {
                format!(
                    "no Redis Sentinel names a reachable primary \"{}\" (session.redis_sentinel_master)",
                    self.master
                )
            } else {
                format!(
                    "cannot find the Redis primary \"{}\" through Sentinel: {e}",
                    self.master
                )
            }
        })?;
        let address = address_of(primary.get_connection_info().addr());
        if self
            .current()
            .is_some_and(|current| current.address == address)
        {
            return Ok(());
        }
        let connection = ConnectionManager::new_lazy_with_config(primary, self.config.clone())
            .map_err(|e| {
                format!("cannot set up a connection to the Redis primary {address}: {e}")
            })?;
        match self.current() {
            Some(old) => {
                tracing::warn!(from = %old.address, to = %address, master = %self.master, "Redis Sentinel names a new primary: following it")
            }
            None => {
                tracing::info!(primary = %address, master = %self.master, "Redis Sentinel names the primary")
            }
        }
        self.current.store(Some(Arc::new(Current {
            connection,
            address,
        })));
        Ok(())
    }
}

/// `session.redis_url` with Sentinel: the scheme, user, password and db used
/// with the primary (its host and port are not used: Sentinel names them).
fn with_primary_settings(
    mut builder: SentinelClientBuilder,
    redis_url: &str,
    certificates: Option<TlsCertificates>,
) -> Result<SentinelClientBuilder, StoreInitError> {
    let redis_url = redis_url.trim();
    if redis_url.is_empty() {
        return Ok(builder);
    }
    let info = redis_url.into_connection_info().map_err(|e| StoreInitError {
        key: "session.redis_url",
        reason: format!(
            "is not a usable Redis URL ({}); write it as redis://[user:password@]host[/db] or rediss:// for TLS (with Sentinel the host is not used)",
            e.detail().unwrap_or(e.category())
        ),
    })?;
    let redis = info.redis_settings();
    builder = builder.set_client_to_redis_db(redis.db());
    if let Some(username) = redis.username() {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = redis.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let ConnectionAddr::TcpTls { insecure, .. } = info.addr() {
        let mode = if *insecure {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        };
        builder = builder.set_client_to_redis_tls_mode(mode);
        if let Some(certificates) = certificates {
            builder = builder.set_client_to_redis_certificates(certificates);
        }
    }
    Ok(builder)
}

fn address_of(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::SentinelPrimary;
    use redis::aio::ConnectionManagerConfig;

    #[test]
    fn sentinel_settings_the_client_cannot_use_name_the_key_and_show_no_password() {
        let cases: [(&[&str], &str, &str, &str); 5] = [
            (
                &[
                    "redis://:pw1@127.0.0.1:26379",
                    "redis://:pw2@127.0.0.1:26380",
                ],
                "",
                "session.redis_sentinels",
                "different users or passwords",
            ),
            (
                &["redis://:pw@127.0.0.1:26379/3"],
                "",
                "session.redis_sentinels",
                "entry 1 names database 3",
            ),
            (
                &["redis://127.0.0.1:26379", "redis://:pw@127.0.0.1:port"],
                "",
                "session.redis_sentinels",
                "entry 2 is not a usable Sentinel URL",
            ),
            (
                &["redis://127.0.0.1:26379"],
                "redis://:pw@primary:99999/0",
                "session.redis_url",
                "is not a usable Redis URL",
            ),
            (
                &["redis://127.0.0.1:26379"],
                "redis://:pw@primary/notadb",
                "session.redis_url",
                "is not a usable Redis URL",
            ),
        ];
        for (sentinels, url, key, problem) in cases {
            let sentinels: Vec<String> = sentinels.iter().map(|s| s.to_string()).collect();
            let e = SentinelPrimary::new(
                &sentinels,
                "mymaster",
                url,
                None,
                ConnectionManagerConfig::new(),
            )
            .err()
            .unwrap_or_else(|| panic!("{sentinels:?} {url}: accepted"));
            assert_eq!(e.key, key, "{sentinels:?} {url}: {}", e.reason);
            assert!(
                e.reason.contains(problem),
                "{sentinels:?} {url}: {}",
                e.reason
            );
            assert!(!e.reason.contains("pw"), "no password: {}", e.reason);
        }
        // The same credentials on every Sentinel, TLS to them, and the
        // primary's user, password and db from redis_url: accepted.
        let accepted = SentinelPrimary::new(
            &[
                "rediss://u:pw@a:26379".into(),
                "rediss://u:pw@b:26379".into(),
            ],
            "mymaster",
            "rediss://gw:pw@ignored:6379/2",
            None,
            ConnectionManagerConfig::new(),
        );
        if let Err(e) = accepted {
            panic!("{e}");
        }
    }
}
