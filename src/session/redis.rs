//! The shared store for replicas: Redis or Valkey (`session.store = "redis"`).
//!
//! - **Useless at rest without the cookie.** A record is sealed (AES-256-GCM)
//!   with a key derived from the session's cookie id, which only the browser
//!   holds; Redis holds it under `{prefix}session:<hex SHA-256 of the id>`
//!   (oauth2-proxy calls this design a ticket).
//! - **Expiry is a Redis TTL**: `min(idle_timeout, time left)`, extended by the
//!   `GETEX` a replica sends when it re-validates a session in use, so the idle
//!   timeout costs no write per request.
//! - **No round trip per request.** Each replica keeps the sessions it has
//!   validated and serves them for `session.cache_ttl` before asking Redis
//!   again: a sign-out on one replica is honoured by the others within that bound.
//! - **Redis down** never signs anyone out: a session in the local cache goes
//!   on being served; other lookups and new sign-ins get an error that the
//!   gateway answers with 503 (never a cookie cleared, never a login redirect);
//!   `/readyz` names the reason. A background probe notices when Redis is
//!   back, and start-up does not wait for Redis.
//! - **Behind Sentinel** (`session.redis_sentinels`) the primary is the one
//!   Sentinel names ([`super::sentinel`]); a command refused or cut off the way
//!   a failover does it makes the store ask again and move to the new primary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::seal::Sealer;
use super::sentinel::{Current, SentinelPrimary};
use super::store::{SessionHandle, SessionKey, SessionStore, StoreError, StoreInitError};
use super::{unix_now, Session, SessionRecord};
use crate::config::Settings;
use crate::health::Readiness;
use crate::metrics::{self, StoreFailure};

/// The readiness component this store reports under.
const COMPONENT: &str = "session_store";
/// How often Redis is probed while it is down, and while it is up.
const PROBE_DOWN: Duration = Duration::from_secs(1);
const PROBE_UP: Duration = Duration::from_secs(5);
/// Bounds on one Redis command and on one connection attempt.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a replica's claim to refresh a session's tokens lasts at most
/// (longer than one token request, bounded by oidc.http_timeout's default).
const REFRESH_CLAIM: Duration = Duration::from_secs(15);
/// Deletes a refresh claim only if it is still ours.
const RELEASE_CLAIM: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// A session this replica has validated, and when.
struct Cached {
    session: Arc<Session>,
    validated: Instant,
    /// The sealed record's nonce: a record rewritten elsewhere (refresh) has a
    /// new one, an unchanged record keeps this process's session object.
    nonce: [u8; 12],
}

/// Whether Redis answered the last command, and why not.
#[derive(Default)]
struct Health {
    down: AtomicBool,
    reason: Mutex<String>,
}

/// Where commands go.
#[derive(Clone)]
enum Primary {
    /// `session.redis_url`'s one address. The manager connects on first use
    /// and reconnects by itself after a failure.
    Fixed(ConnectionManager),
    /// The primary Sentinel names, followed across failovers.
    Sentinel(Arc<SentinelPrimary>),
}

impl Primary {
    /// The connection for the next command and, behind Sentinel, the primary
    /// it leads to (asking Sentinel when none is known yet).
    async fn connection(&self) -> Result<(ConnectionManager, Option<Arc<Current>>), String> {
        match self {
            Primary::Fixed(connection) => Ok((connection.clone(), None)),
            Primary::Sentinel(sentinel) => {
                let current = match sentinel.current() {
                    Some(current) => current,
                    None => sentinel.follow(sentinel.lookups(), None).await?,
                };
                Ok((current.connection.clone(), Some(current)))
            }
        }
    }

    /// One probe: PING; behind Sentinel, `ROLE` on the current primary, and
    /// Sentinel asked again when that is not (or no longer) the primary.
    async fn probe(&self) -> Result<(), String> {
        match self {
            Primary::Fixed(connection) => {
                let answer: redis::RedisResult<String> = redis::cmd("PING")
                    .query_async(&mut connection.clone())
                    .await;
                answer
                    .map(drop)
                    .map_err(|e| format!("Redis is unreachable: {e}"))
            }
            Primary::Sentinel(sentinel) => {
                let seen = sentinel.lookups();
                let current = sentinel.current();
                if let Some(current) = &current {
                    if is_primary(current).await.is_ok() {
                        return Ok(());
                    }
                }
                is_primary(&*sentinel.follow(seen, current.as_ref()).await?).await
            }
        }
    }
}

/// Whether the Redis Sentinel named is (still) the primary.
async fn is_primary(current: &Current) -> Result<(), String> {
    let role: redis::Role = redis::cmd("ROLE")
        .query_async(&mut current.connection.clone())
        .await
        .map_err(|e| {
            format!(
                "the Redis primary {} that Sentinel named is unreachable: {e}",
                current.address
            )
        })?;
    match role {
        redis::Role::Primary { .. } => Ok(()),
        _ => Err(format!(
            "the Redis {} that Sentinel named is no longer the primary",
            current.address
        )),
    }
}

/// Sessions in Redis, with a short-lived local cache.
pub struct RedisStore {
    primary: Primary,
    prefix: String,
    cache: DashMap<SessionKey, Cached>,
    cache_ttl: Duration,
    idle: Duration,
    /// The refresh claims this replica holds, with the value that proves it.
    claims: DashMap<SessionKey, String>,
    health: Arc<Health>,
    readiness: Readiness,
}

impl RedisStore {
    /// A store for `session.redis_url`, or for the primary Sentinel names;
    /// connects in the background (the gateway starts not ready while Redis
    /// is unreachable, and retries).
    pub fn start(settings: &Settings, readiness: Readiness) -> Result<Self, StoreInitError> {
        let session = &settings.config.session;
        let ca = session
            .redis_ca_file
            .as_deref()
            .map(private_ca)
            .transpose()?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let primary = if session.redis_sentinels.is_empty() {
            Primary::Fixed(fixed_primary(&session.redis_url, ca, config)?)
        } else {
            Primary::Sentinel(Arc::new(SentinelPrimary::new(
                &session.redis_sentinels,
                &session.redis_sentinel_master,
                &session.redis_url,
                ca.as_deref(),
                config,
            )?))
        };
        let store = RedisStore {
            primary,
            prefix: session.redis_prefix.clone(),
            cache: DashMap::new(),
            cache_ttl: session.cache_ttl,
            idle: session.idle_timeout,
            claims: DashMap::new(),
            health: Arc::new(Health::default()),
            readiness,
        };
        store.mark_down("connecting to Redis".into());
        store.spawn_probe();
        Ok(store)
    }

    /// Probes Redis (connecting the first time) so that readiness follows it
    /// even when no request arrives: every second while it is down.
    fn spawn_probe(&self) {
        let primary = self.primary.clone();
        let health = Arc::downgrade(&self.health);
        let readiness = self.readiness.clone();
        tokio::spawn(async move {
            // Ends with the store.
            while let Some(health) = health.upgrade() {
                let probe = Probe {
                    health,
                    readiness: readiness.clone(),
                };
                let wait = match primary.probe().await {
                    Ok(()) => {
                        probe.up();
                        PROBE_UP
                    }
                    Err(reason) => {
                        probe.down(reason);
                        PROBE_DOWN
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
    }

    fn session_key(&self, key: &SessionKey) -> String {
        format!("{}session:{}", self.prefix, hex(key))
    }

    fn sid_key(&self, sid: &str) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, sid.as_bytes());
        format!("{}sid:{}", self.prefix, hex(digest.as_ref()))
    }

    /// Runs one command (or pipeline), keeping the health state current. A
    /// command that finds the connection broken (Redis restarted since the last
    /// one) is sent once more: the connection manager has reconnected by then.
    /// Behind Sentinel, a failure a failover explains makes the store ask
    /// Sentinel (once for all the commands failing together); on a new primary
    /// the command is sent again if it was refused (it did not run) or is
    /// [`RedisCommand::repeatable`].
    async fn query<T: redis::FromRedisValue>(
        &self,
        command: impl FnOnce() -> RedisCommand,
    ) -> Result<T, StoreError> {
        let command = command();
        let mut reconnected = false;
        let mut followed = false;
        let failure = loop {
            let (mut connection, used) = match self.primary.connection().await {
                Ok(found) => found,
                Err(reason) => {
                    metrics::session_store_error(StoreFailure::Unreachable);
                    break reason;
                }
            };
            let answer = match &command {
                RedisCommand::One(cmd) | RedisCommand::OneShot(cmd) => {
                    cmd.query_async(&mut connection).await
                }
                RedisCommand::Pipeline(pipe) => pipe.query_async(&mut connection).await,
            };
            let e = match answer {
                Ok(value) => {
                    if self.health.down.load(Ordering::Relaxed) {
                        self.mark_up();
                    }
                    return Ok(value);
                }
                Err(e) => e,
            };
            let kind = FailureKind::of(&e);
            if kind == FailureKind::Connection && !reconnected {
                reconnected = true;
                continue;
            }
            if let (Primary::Sentinel(sentinel), false) = (&self.primary, followed) {
                if kind != FailureKind::Other {
                    followed = true;
                    let seen = sentinel.lookups();
                    match sentinel.follow(seen, used.as_ref()).await {
                        Ok(next) => {
                            let moved = used.is_none_or(|used| !Arc::ptr_eq(&used, &next));
                            if moved && (kind == FailureKind::Refused || command.repeatable()) {
                                continue;
                            }
                        }
                        Err(reason) => {
                            metrics::session_store_error(StoreFailure::Unreachable);
                            break reason;
                        }
                    }
                }
            }
            if kind == FailureKind::Connection {
                metrics::session_store_error(StoreFailure::Unreachable);
                break format!("Redis is unreachable: {e}");
            }
            // Redis answered with an error (out of memory, an ACL refusal, still
            // loading, a replica's READONLY): it is there but cannot serve sessions either.
            metrics::session_store_error(StoreFailure::Refused);
            break format!("Redis refused a command: {e}");
        };
        self.mark_down(failure.clone());
        Err(StoreError(failure))
    }

    fn mark_down(&self, reason: String) {
        Probe {
            health: self.health.clone(),
            readiness: self.readiness.clone(),
        }
        .down(reason);
    }

    fn mark_up(&self) {
        Probe {
            health: self.health.clone(),
            readiness: self.readiness.clone(),
        }
        .up();
    }

    fn sealer(handle: &SessionHandle<'_>) -> Sealer {
        Sealer::derive(handle.record_secret(), b"redis session record")
    }

    /// Reads and re-validates a session from Redis, extending its idle TTL.
    async fn fetch(&self, handle: SessionHandle<'_>) -> Result<Option<Arc<Session>>, StoreError> {
        let redis_key = self.session_key(&handle.key);
        let idle = self.idle.as_secs().max(1);
        let sealed: Option<Vec<u8>> = self
            .query(|| {
                let mut cmd = redis::cmd("GETEX");
                cmd.arg(&redis_key).arg("EX").arg(idle);
                RedisCommand::One(cmd)
            })
            .await?;
        let Some(sealed) = sealed else {
            self.cache.remove(&handle.key);
            return Ok(None);
        };
        let Some(record) = open_record(&handle, &redis_key, &sealed) else {
            // Not sealed for this cookie (or damaged): as good as absent.
            tracing::warn!("a Redis session record does not open with its cookie; ignored");
            self.cache.remove(&handle.key);
            return Ok(None);
        };
        let now = unix_now();
        if now >= record.expires_at {
            self.cache.remove(&handle.key);
            let _: Result<i64, _> = self
                .query(|| RedisCommand::One(redis::cmd("DEL").arg(&redis_key).clone()))
                .await;
            return Ok(None);
        }
        let nonce = nonce_of(&sealed);
        let session = match self.cache.get(&handle.key) {
            Some(cached) if cached.nonce == nonce => cached.session.clone(),
            _ => {
                let session = Arc::new(Session::from_record(SessionRecord {
                    last_seen: now,
                    ..record
                }));
                session.touch(now);
                session
            }
        };
        self.cache.insert(
            handle.key,
            Cached {
                session: session.clone(),
                validated: Instant::now(),
                nonce,
            },
        );
        Ok(Some(session))
    }
}

/// What [`RedisStore::query`] sends.
enum RedisCommand {
    /// A read, or a write whose repetition changes nothing.
    One(redis::Cmd),
    /// A write not to send again after it may have run (a claim).
    OneShot(redis::Cmd),
    /// Writes whose repetition changes nothing.
    Pipeline(redis::Pipeline),
}

impl RedisCommand {
    /// Whether it may be sent again to a new primary after the old one failed
    /// mid-command (it may have run there).
    fn repeatable(&self) -> bool {
        !matches!(self, RedisCommand::OneShot(_))
    }
}

/// How a command failed, as far as following a failover goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// No answer: the connection broke, was refused or timed out.
    Connection,
    /// Refused without running by a Redis that is not (or not yet) a usable
    /// primary: a demoted one (READONLY), one without its primary (MASTERDOWN),
    /// one loading its data (LOADING).
    Refused,
    /// Any other error.
    Other,
}

impl FailureKind {
    fn of(e: &redis::RedisError) -> FailureKind {
        use redis::{ErrorKind, ServerErrorKind};
        let failover = |kind: Option<ServerErrorKind>| {
            matches!(
                kind,
                Some(
                    ServerErrorKind::ReadOnly
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                )
            )
        };
        if is_connection_error(e) {
            return FailureKind::Connection;
        }
        let refused = match e.kind() {
            ErrorKind::Server(ServerErrorKind::ExecAbort) => e
                .clone()
                .into_server_errors()
                .is_some_and(|errors| errors.iter().any(|(_, error)| failover(error.kind()))),
            ErrorKind::Server(kind) => failover(Some(kind)),
            _ => false,
        };
        if refused {
            FailureKind::Refused
        } else {
            FailureKind::Other
        }
    }
}

/// A manager for `session.redis_url` (trusting `session.redis_ca_file`).
fn fixed_primary(
    url: &str,
    ca: Option<Vec<u8>>,
    config: ConnectionManagerConfig,
) -> Result<ConnectionManager, StoreInitError> {
    let url = url.trim();
    let client = match ca {
        None => redis::Client::open(url),
        Some(root_cert) => {
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            };
            redis::Client::build_with_tls(url, certificates)
        }
    }
    .map_err(|e| StoreInitError {
        key: "session.redis_url",
        // The URL may hold a password: only the parser's words.
        reason: format!(
            "is not a usable Redis URL ({}); write it as redis://[user:password@]host[:port][/db] or rediss:// for TLS",
            e.detail().unwrap_or(e.category())
        ),
    })?;
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| StoreInitError {
        key: "session.redis_url",
        reason: format!("cannot set up the Redis client: {e}"),
    })
}

/// Updates the health flag and readiness together.
struct Probe {
    health: Arc<Health>,
    readiness: Readiness,
}

impl Probe {
    fn down(&self, reason: String) {
        let was_down = self.health.down.swap(true, Ordering::Relaxed);
        *self
            .health
            .reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = reason.clone();
        if !was_down {
            tracing::warn!(reason = %reason, "session store unavailable: signed-in users keep their cookies; cached sessions are still served");
        }
        self.readiness.set_not_ready(COMPONENT, reason);
    }

    fn up(&self) {
        if self.health.down.swap(false, Ordering::Relaxed) {
            tracing::info!("session store (Redis) available");
        }
        self.readiness.set_ready(COMPONENT);
    }
}

impl Health {
    fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn open_record(
    handle: &SessionHandle<'_>,
    redis_key: &str,
    sealed: &[u8],
) -> Option<SessionRecord> {
    let plain = RedisStore::sealer(handle).open(redis_key.as_bytes(), sealed)?;
    serde_json::from_slice(&plain).ok()
}

/// `session.redis_ca_file`: PEM holding at least one certificate, checked here
/// so that a wrong file is an error at start naming the key, not a TLS failure
/// on every connection attempt.
fn private_ca(path: &std::path::Path) -> Result<Vec<u8>, StoreInitError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let error = |reason: String| StoreInitError {
        key: "session.redis_ca_file",
        reason,
    };
    let pem =
        std::fs::read(path).map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
    let mut count = 0;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.map_err(|e| {
            error(format!(
                "{} is not a PEM certificate file ({e}); give the CA certificate that signed the Redis server's certificate",
                path.display()
            ))
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(error(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA certificate that signed the Redis server's certificate",
            path.display()
        )));
    }
    Ok(pem)
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

fn nonce_of(sealed: &[u8]) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    if let Some(bytes) = sealed.get(..12) {
        nonce.copy_from_slice(bytes);
    }
    nonce
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl SessionStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(
        &'a self,
        handle: SessionHandle<'a>,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>> {
        // The hot path: a session validated within cache_ttl, no Redis round trip.
        let cached = self
            .cache
            .get(&handle.key)
            .map(|c| (c.session.clone(), c.validated.elapsed() < self.cache_ttl));
        if let Some((session, true)) = cached {
            return Box::pin(std::future::ready(Ok(Some(session))));
        }
        Box::pin(async move {
            match self.fetch(handle).await {
                // Redis is down: a session this replica knows goes on.
                Err(e) => match cached {
                    Some((session, _)) => Ok(Some(session)),
                    None => Err(e),
                },
                found => found,
            }
        })
    }

    fn insert<'a>(
        &'a self,
        handle: SessionHandle<'a>,
        record: SessionRecord,
    ) -> BoxFuture<'a, Result<Arc<Session>, StoreError>> {
        Box::pin(async move {
            let now = unix_now();
            let redis_key = self.session_key(&handle.key);
            let plain = serde_json::to_vec(&record)
                .map_err(|e| StoreError(format!("cannot serialize the session: {e}")))?;
            let sealed = Self::sealer(&handle).seal(redis_key.as_bytes(), &plain);
            let left = record.expires_at.saturating_sub(now).max(1);
            let ttl = left.min(self.idle.as_secs().max(1));
            let sid_key = record.sid.as_deref().map(|sid| self.sid_key(sid));
            let key_hex = hex(&handle.key);
            let () = self
                .query(|| {
                    let mut pipe = redis::pipe();
                    pipe.atomic().set_ex(&redis_key, &sealed, ttl).ignore();
                    if let Some(sid_key) = &sid_key {
                        pipe.sadd(sid_key, &key_hex)
                            .ignore()
                            .expire(sid_key, left as i64)
                            .ignore();
                    }
                    RedisCommand::Pipeline(pipe)
                })
                .await?;
            let last_seen = self
                .cache
                .get(&handle.key)
                .map(|c| c.session.last_seen())
                .unwrap_or(now);
            let session = Arc::new(Session::from_record(record));
            session.touch(last_seen);
            self.cache.insert(
                handle.key,
                Cached {
                    session: session.clone(),
                    validated: Instant::now(),
                    nonce: nonce_of(&sealed),
                },
            );
            Ok(session)
        })
    }

    fn get_fresh<'a>(
        &'a self,
        handle: SessionHandle<'a>,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>> {
        Box::pin(self.fetch(handle))
    }

    fn claim_refresh<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let claim_key = format!("{}refresh:{}", self.prefix, hex(key));
            let token = hex(&crate::crypto::random_bytes::<16>());
            let answer: Option<String> = self
                .query(|| {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&claim_key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(REFRESH_CLAIM.as_millis() as u64);
                    RedisCommand::OneShot(cmd)
                })
                .await?;
            let claimed = answer.is_some();
            if claimed {
                self.claims.insert(*key, token);
            }
            Ok(claimed)
        })
    }

    fn release_refresh<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let Some((_, token)) = self.claims.remove(key) else {
                return Ok(());
            };
            let claim_key = format!("{}refresh:{}", self.prefix, hex(key));
            let _: i64 = self
                .query(|| {
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(RELEASE_CLAIM).arg(1).arg(&claim_key).arg(&token);
                    RedisCommand::One(cmd)
                })
                .await?;
            Ok(())
        })
    }

    fn remove<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.cache.remove(key);
            let redis_key = self.session_key(key);
            let _: i64 = self
                .query(|| RedisCommand::One(redis::cmd("DEL").arg(&redis_key).clone()))
                .await?;
            Ok(())
        })
    }

    fn remove_by_sid<'a>(&'a self, sid: &'a str) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let sid_key = self.sid_key(sid);
            let members: Vec<String> = self
                .query(|| RedisCommand::One(redis::cmd("SMEMBERS").arg(&sid_key).clone()))
                .await?;
            let keys: Vec<SessionKey> = members.iter().filter_map(|m| unhex(m)).collect();
            for key in &keys {
                self.cache.remove(key);
            }
            let redis_keys: Vec<String> = keys.iter().map(|k| self.session_key(k)).collect();
            let (deleted,): (i64,) = self
                .query(|| {
                    let mut pipe = redis::pipe();
                    pipe.atomic();
                    if redis_keys.is_empty() {
                        pipe.cmd("EXISTS").arg(&sid_key);
                    } else {
                        pipe.cmd("DEL").arg(&redis_keys);
                    }
                    pipe.cmd("DEL").arg(&sid_key).ignore();
                    RedisCommand::Pipeline(pipe)
                })
                .await?;
            Ok(if redis_keys.is_empty() {
                0
            } else {
                deleted as usize
            })
        })
    }

    fn sweep(&self, now: u64, idle: Duration) -> BoxFuture<'_, Result<usize, StoreError>> {
        let idle = idle.as_secs();
        let before = self.cache.len();
        self.cache.retain(|_, c| c.session.is_live(now, idle));
        let removed = before.saturating_sub(self.cache.len());
        Box::pin(async move { Ok(removed) })
    }

    fn len(&self) -> usize {
        self.cache.len()
    }

    fn available(&self) -> Result<(), StoreError> {
        if self.health.down.load(Ordering::Relaxed) {
            return Err(StoreError(self.health.reason()));
        }
        Ok(())
    }
}

fn unhex(text: &str) -> Option<SessionKey> {
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::private_ca;

    #[test]
    fn a_private_ca_file_that_is_not_a_pem_certificate_names_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (path, problem) in [
            (&missing, "cannot read"),
            (&empty, "holds no PEM certificate"),
            (&broken, "is not a PEM certificate file"),
        ] {
            let e = private_ca(path).unwrap_err();
            assert_eq!(e.key, "session.redis_ca_file");
            assert!(
                e.reason.contains(problem) && e.reason.contains(&*path.to_string_lossy()),
                "{}: {}",
                path.display(),
                e.reason
            );
        }
    }
}
