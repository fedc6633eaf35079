//! The embedded store: sessions in this process's memory. With `session.secret`
//! set, a graceful stop writes the live sessions to `session.state_file`
//! (sealed with a key derived from the secret, mode 0600) and the next start
//! reads them back, so a restart or an upgrade signs nobody out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::seal::Sealer;
use super::store::{SessionHandle, SessionKey, SessionStore, StoreError};
use super::{unix_now, Session, SessionRecord};
use crate::config::Settings;

/// First bytes of a state file; also bound into its encryption.
const STATE_MAGIC: &[u8] = b"oidc-gateway sessions v1\n";

/// Sessions in this process's memory.
#[derive(Default)]
pub struct MemoryStore {
    sessions: DashMap<SessionKey, Arc<Session>>,
    /// Entra `sid` → the sessions it signed in (front-channel logout).
    by_sid: DashMap<Box<str>, Vec<SessionKey>>,
    state_file: Option<StateFile>,
}

impl MemoryStore {
    /// A store that forgets everything at exit.
    pub fn new() -> Self {
        Self::default()
    }

    /// The configured memory store: with a secret, it keeps its sessions in
    /// `session.state_file` across restarts, and reads that file now.
    pub fn open(settings: &Settings) -> Self {
        let session = &settings.config.session;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(session.secret.trim())
            .ok()
            .filter(|s| s.len() >= 32);
        match secret {
            Some(secret) => {
                let store = Self::with_state_file(session.state_file.clone(), &secret);
                store.load(unix_now(), session.idle_timeout);
                store
            }
            None => {
                tracing::info!(
                    "session.secret is not set: sessions are kept in memory only and end when \
                     the gateway stops"
                );
                Self::new()
            }
        }
    }

    /// A store that [`persist`](SessionStore::persist)s to `path`, sealed with a
    /// key derived from `secret`. Nothing is read yet: see [`MemoryStore::load`].
    pub fn with_state_file(path: PathBuf, secret: &[u8]) -> Self {
        MemoryStore {
            state_file: Some(StateFile {
                sealer: Sealer::derive(secret, b"memory store state file"),
                path,
            }),
            ..Self::default()
        }
    }

    /// Reads the state file, keeping the sessions still live at `now`; returns
    /// how many. A missing, unreadable, corrupt or foreign file (another secret)
    /// is a warning and an empty store, never an error.
    pub fn load(&self, now: u64, idle: Duration) -> usize {
        let Some(state) = &self.state_file else {
            return 0;
        };
        let records = match state.read() {
            Ok(Some(records)) => records,
            Ok(None) => return 0,
            Err(reason) => {
                tracing::warn!(
                    file = %state.path.display(),
                    "{reason}; starting with no sessions (users sign in again)"
                );
                return 0;
            }
        };
        let total = records.len();
        let mut kept = 0;
        for (key, record) in records {
            let session = Session::from_record(record);
            if session.is_live(now, idle.as_secs()) {
                self.put(key, Arc::new(session));
                kept += 1;
            }
        }
        tracing::info!(
            file = %state.path.display(),
            sessions = kept,
            expired = total - kept,
            "sessions restored from the state file"
        );
        kept
    }

    fn put(&self, key: SessionKey, session: Arc<Session>) {
        if let Some(sid) = &session.record.sid {
            let mut keys = self.by_sid.entry(sid.clone()).or_default();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        if let Some(old) = self.sessions.insert(key, session) {
            self.unindex(&key, &old);
        }
    }

    /// Drops `key` from the sid index of `session` (unless it is indexed again).
    fn unindex(&self, key: &SessionKey, session: &Session) {
        let Some(sid) = &session.record.sid else {
            return;
        };
        let still_there = self
            .sessions
            .get(key)
            .is_some_and(|now| now.record.sid.as_ref() == Some(sid));
        if still_there {
            return;
        }
        self.by_sid.remove_if_mut(sid, |_, keys| {
            keys.retain(|k| k != key);
            keys.is_empty()
        });
    }

    fn take(&self, key: &SessionKey) -> Option<Arc<Session>> {
        let (_, session) = self.sessions.remove(key)?;
        self.unindex(key, &session);
        Some(session)
    }
}

impl SessionStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(
        &'a self,
        handle: SessionHandle<'a>,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>> {
        let found = self.sessions.get(&handle.key).map(|s| s.value().clone());
        Box::pin(async move { Ok(found) })
    }

    fn insert<'a>(
        &'a self,
        handle: SessionHandle<'a>,
        record: SessionRecord,
    ) -> BoxFuture<'a, Result<Arc<Session>, StoreError>> {
        // A replaced record (refresh) keeps the idle clock of the one it replaces.
        let last_seen = self
            .sessions
            .get(&handle.key)
            .map(|s| s.last_seen())
            .unwrap_or(record.last_seen);
        let session = Arc::new(Session::from_record(record));
        session.touch(last_seen);
        self.put(handle.key, session.clone());
        Box::pin(async move { Ok(session) })
    }

    fn remove<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<(), StoreError>> {
        self.take(key);
        Box::pin(async { Ok(()) })
    }

    fn remove_by_sid<'a>(&'a self, sid: &'a str) -> BoxFuture<'a, Result<usize, StoreError>> {
        let keys = self.by_sid.remove(sid).map(|(_, keys)| keys);
        let removed = keys
            .unwrap_or_default()
            .iter()
            .filter(|key| self.sessions.remove(*key).is_some())
            .count();
        Box::pin(async move { Ok(removed) })
    }

    fn sweep(&self, now: u64, idle: Duration) -> BoxFuture<'_, Result<usize, StoreError>> {
        let idle = idle.as_secs();
        let expired: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|entry| !entry.value().is_live(now, idle))
            .map(|entry| *entry.key())
            .collect();
        let removed = expired
            .iter()
            .filter(|key| self.take(key).is_some())
            .count();
        Box::pin(async move { Ok(removed) })
    }

    fn len(&self) -> usize {
        self.sessions.len()
    }

    fn persist(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        let result = match &self.state_file {
            None => Ok(0),
            Some(state) => {
                let records: Vec<(SessionKey, SessionRecord)> = self
                    .sessions
                    .iter()
                    .map(|entry| (*entry.key(), entry.value().to_record()))
                    .collect();
                let count = records.len();
                match state.write(&records) {
                    Ok(()) => {
                        tracing::info!(file = %state.path.display(), sessions = count,
                            "sessions written to the state file for the next start");
                        Ok(count)
                    }
                    Err(reason) => {
                        crate::metrics::session_store_error(
                            crate::metrics::StoreFailure::StateFile,
                        );
                        tracing::error!(file = %state.path.display(), "{reason}; sessions \
                            will end with this process");
                        Err(StoreError(reason))
                    }
                }
            }
        };
        Box::pin(async move { result })
    }
}

/// The sealed file the memory store keeps its sessions in between runs.
struct StateFile {
    path: PathBuf,
    sealer: Sealer,
}

/// What the state file holds, sealed.
#[derive(Serialize, Deserialize)]
struct StateContents {
    written_at: u64,
    sessions: Vec<StoredSession>,
}

#[derive(Serialize, Deserialize)]
struct StoredSession {
    /// The store key (SHA-256 of the cookie's id), base64url.
    key: String,
    record: SessionRecord,
}

impl StateFile {
    /// Ok(None): there is no state file.
    fn read(&self) -> Result<Option<Vec<(SessionKey, SessionRecord)>>, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read the session state file: {e}")),
        };
        // Read once: a stale file must not sign anyone in again at a later start.
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot remove the session state file after reading it");
        }
        let sealed = bytes.strip_prefix(STATE_MAGIC).ok_or(
            "the session state file is not one the gateway wrote (unknown format)".to_string(),
        )?;
        let plain = self.sealer.open(STATE_MAGIC, sealed).ok_or(
            "the session state file does not open with this session.secret (corrupt, or \
             written with another secret)"
                .to_string(),
        )?;
        let contents: StateContents = serde_json::from_slice(&plain)
            .map_err(|e| format!("the session state file is unreadable: {e}"))?;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        Ok(Some(
            contents
                .sessions
                .into_iter()
                .filter_map(|s| {
                    let key: SessionKey = engine.decode(&s.key).ok()?.try_into().ok()?;
                    Some((key, s.record))
                })
                .collect(),
        ))
    }

    /// Writes atomically (a temporary file renamed over the old one), mode 0600.
    fn write(&self, records: &[(SessionKey, SessionRecord)]) -> Result<(), String> {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let contents = StateContents {
            written_at: unix_now(),
            sessions: records
                .iter()
                .map(|(key, record)| StoredSession {
                    key: engine.encode(key),
                    record: record.clone(),
                })
                .collect(),
        };
        let plain = serde_json::to_vec(&contents)
            .map_err(|e| format!("cannot serialize the sessions: {e}"))?;
        let mut bytes = STATE_MAGIC.to_vec();
        bytes.extend_from_slice(&self.sealer.seal(STATE_MAGIC, &plain));
        let temporary = temporary_path(&self.path);
        write_private(&temporary, &bytes)
            .and_then(|()| std::fs::rename(&temporary, &self.path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&temporary);
                format!("cannot write the session state file: {e}")
            })
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Creates (or truncates) `path` readable and writable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        // An existing file keeps its mode on open: narrow it.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::session::store::conformance;

    #[tokio::test]
    async fn memory_store_passes_the_conformance_suite() {
        conformance::run(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn sweep_drops_expired_and_idle_sessions_and_their_sid() {
        let store = MemoryStore::new();
        let now = 1_000_000;
        let ids: Vec<String> = (0..3).map(|i| format!("{i:043}")).collect();
        let handle = |i: usize| SessionHandle::new(ids[i].as_bytes());
        let live = SessionRecord::new(Identity::example("live"), 3600, now);
        let short = SessionRecord::new(Identity::example("short"), 10, now);
        let mut idle = SessionRecord::new(Identity::example("idle"), 3600, now - 100);
        idle.sid = Some("sid-idle".into());
        store.insert(handle(0), live).await.unwrap();
        store.insert(handle(1), short).await.unwrap();
        store.insert(handle(2), idle).await.unwrap();
        let removed = store
            .sweep(now + 20, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(removed, 2, "expired and idle sessions are swept");
        assert!(store.get(handle(0)).await.unwrap().is_some());
        assert!(
            store.by_sid.is_empty(),
            "the sid index forgets swept sessions"
        );
    }

    #[tokio::test]
    async fn state_file_round_trips_live_sessions_only_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.state");
        let secret = [5u8; 32];
        let now = unix_now();
        let store = MemoryStore::with_state_file(path.clone(), &secret);
        let (a, b) = ("a".repeat(43), "b".repeat(43));
        let mut record = SessionRecord::new(Identity::example("alice"), 3600, now);
        record.sid = Some("sid-a".into());
        store
            .insert(SessionHandle::new(a.as_bytes()), record)
            .await
            .unwrap();
        let old = SessionRecord::new(Identity::example("old"), 3600, now - 7200);
        store
            .insert(SessionHandle::new(b.as_bytes()), old)
            .await
            .unwrap();
        assert_eq!(store.persist().await.unwrap(), 2);
        let bytes = std::fs::read(&path).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("alice"), "sealed");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let next = MemoryStore::with_state_file(path.clone(), &secret);
        assert_eq!(
            next.load(now, Duration::from_secs(3600)),
            1,
            "idle one dropped"
        );
        let alice = next
            .get(SessionHandle::new(a.as_bytes()))
            .await
            .unwrap()
            .expect("alice restored");
        assert_eq!(alice.record.identity.user, "alice");
        assert_eq!(
            next.remove_by_sid("sid-a").await.unwrap(),
            1,
            "sid index rebuilt"
        );
        assert!(!path.exists(), "the file is read once");
    }

    #[tokio::test]
    async fn a_corrupt_or_foreign_state_file_means_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.state");
        let store = MemoryStore::with_state_file(path.clone(), &[1u8; 32]);
        store
            .insert(
                SessionHandle::new("c".repeat(43).as_bytes()),
                SessionRecord::new(Identity::example("carol"), 3600, unix_now()),
            )
            .await
            .unwrap();
        store.persist().await.unwrap();
        let other_secret = MemoryStore::with_state_file(path.clone(), &[2u8; 32]);
        assert_eq!(other_secret.load(unix_now(), Duration::from_secs(60)), 0);
        assert!(other_secret.is_empty());

        std::fs::write(&path, b"garbage").unwrap();
        let garbage = MemoryStore::with_state_file(path.clone(), &[1u8; 32]);
        assert_eq!(garbage.load(unix_now(), Duration::from_secs(60)), 0);
        let missing = MemoryStore::with_state_file(dir.path().join("none"), &[1u8; 32]);
        assert_eq!(missing.load(unix_now(), Duration::from_secs(60)), 0);
    }
}
