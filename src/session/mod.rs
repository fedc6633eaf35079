//! Sessions: what a signed-in browser holds (an opaque cookie) and what the
//! gateway keeps for it.
//!
//! - [`SessionRecord`]: what is persisted — identity, tokens, times, Entra's
//!   `sid`. Serializable: the memory store's state file and the Redis store
//!   keep exactly this, encrypted.
//! - [`Session`]: a record as one process holds it, with what never leaves the
//!   process — idle-time bookkeeping and the cached signed assertion (the
//!   identity's prepared header values are cached inside the identity).

pub mod cookies;
pub mod memory;
pub mod redis;
pub mod seal;
mod sentinel;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::identity::Identity;

pub use memory::MemoryStore;
pub use store::{open_store, SessionHandle, SessionKey, SessionStore, StoreError};

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What is kept of one signed-in browser, in any store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub identity: Arc<Identity>,
    /// Kept for RP-initiated logout (`id_token_hint`).
    pub id_token: Option<Box<str>>,
    /// Kept only when it is sent upstream (`headers.pass_access_token`).
    pub access_token: Option<Box<str>>,
    /// When the access token expires (Unix seconds), when known.
    #[serde(default)]
    pub access_expires_at: Option<u64>,
    /// When to renew it (refresh configured): ahead of its expiry.
    #[serde(default)]
    pub access_renew_at: Option<u64>,
    /// Kept only when refresh is configured (`session.refresh`).
    #[serde(default)]
    pub refresh_token: Option<Box<str>>,
    /// Entra's session id (`sid` claim of the ID token): front-channel logout.
    #[serde(default)]
    pub sid: Option<Box<str>>,
    pub created_at: u64,
    /// Absolute end: created_at + session.ttl.
    pub expires_at: u64,
    /// Last request seen when the record was written (state file); a store
    /// that keeps the idle timeout itself (Redis TTL) leaves it at creation.
    #[serde(default)]
    pub last_seen: u64,
}

impl SessionRecord {
    pub fn new(identity: Identity, ttl_secs: u64, now: u64) -> Self {
        SessionRecord {
            identity: Arc::new(identity),
            id_token: None,
            access_token: None,
            access_expires_at: None,
            access_renew_at: None,
            refresh_token: None,
            sid: None,
            created_at: now,
            expires_at: now.saturating_add(ttl_secs),
            last_seen: now,
        }
    }
}

/// A session as this process holds it: the record plus per-process state.
#[derive(Debug)]
pub struct Session {
    pub record: SessionRecord,
    /// Last request seen (idle timeout), updated without locking.
    last_seen: AtomicU64,
    /// The signed identity assertion, reused within its window.
    pub assertion: crate::assertion::AssertionCache,
}

impl Session {
    /// A session for `record`; its idle clock starts at the record's `last_seen`.
    pub fn from_record(record: SessionRecord) -> Self {
        Session {
            last_seen: AtomicU64::new(record.last_seen),
            record,
            assertion: Default::default(),
        }
    }

    /// A record of this session, as it is now (idle clock included).
    pub fn to_record(&self) -> SessionRecord {
        SessionRecord {
            last_seen: self.last_seen(),
            ..self.record.clone()
        }
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.record.identity
    }

    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    pub fn touch(&self, now: u64) {
        self.last_seen.fetch_max(now, Ordering::Relaxed);
    }

    /// Still valid at `now` under the absolute and idle limits?
    pub fn is_live(&self, now: u64, idle_secs: u64) -> bool {
        now < self.record.expires_at && now.saturating_sub(self.last_seen()) < idle_secs
    }
}
