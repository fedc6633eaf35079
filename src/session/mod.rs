//! Sessions: what a signed-in browser holds (an opaque cookie) and what the
//! gateway keeps for it (identity and the tokens needed later).

pub mod cookies;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::identity::Identity;

pub use store::{MemoryStore, SessionKey, SessionStore, StoreError};

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One signed-in browser.
#[derive(Debug)]
pub struct Session {
    pub identity: Arc<Identity>,
    /// Kept for RP-initiated logout (`id_token_hint`).
    pub id_token: Option<Box<str>>,
    pub access_token: Option<Box<str>>,
    pub created_at: u64,
    /// Absolute end: created_at + session.ttl.
    pub expires_at: u64,
    /// Last request seen (idle timeout), updated without locking.
    last_seen: AtomicU64,
    /// The signed identity assertion, reused within its window.
    pub assertion: crate::assertion::AssertionCache,
}

impl Session {
    pub fn new(identity: Identity, ttl_secs: u64, now: u64) -> Self {
        Session {
            identity: Arc::new(identity),
            id_token: None,
            access_token: None,
            created_at: now,
            expires_at: now.saturating_add(ttl_secs),
            last_seen: AtomicU64::new(now),
            assertion: Default::default(),
        }
    }

    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    pub fn touch(&self, now: u64) {
        self.last_seen.fetch_max(now, Ordering::Relaxed);
    }

    /// Still valid at `now` under the absolute and idle limits?
    pub fn is_live(&self, now: u64, idle_secs: u64) -> bool {
        now < self.expires_at && now.saturating_sub(self.last_seen()) < idle_secs
    }
}
