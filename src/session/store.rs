//! Session stores. The store is keyed by the SHA-256 of the cookie's session id,
//! so a leaked store (or a heap dump) does not hand out usable cookies.
//! `MemoryStore` is the in-process store; a shared store (Redis) implements the
//! same trait.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures_util::future::BoxFuture;

use super::Session;

/// SHA-256 of a session id.
pub type SessionKey = [u8; 32];

#[derive(Debug, thiserror::Error)]
#[error("session store: {0}")]
pub struct StoreError(pub String);

/// What every session store provides. Futures are boxed so that the gateway can
/// hold any store as `Arc<dyn SessionStore>`.
pub trait SessionStore: Send + Sync + 'static {
    /// The live session under `key`, if any. Expiry is the caller's decision.
    fn get(&self, key: &SessionKey) -> BoxFuture<'_, Result<Option<Arc<Session>>, StoreError>>;
    fn insert(&self, key: SessionKey, session: Session) -> BoxFuture<'_, Result<(), StoreError>>;
    fn remove(&self, key: &SessionKey) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Drops sessions expired at `now` (absolute or idle); returns how many.
    fn sweep(&self, now: u64, idle: Duration) -> BoxFuture<'_, Result<usize, StoreError>>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sessions in this process's memory (lost on restart).
#[derive(Default)]
pub struct MemoryStore {
    sessions: DashMap<SessionKey, Arc<Session>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl SessionStore for MemoryStore {
    fn get(&self, key: &SessionKey) -> BoxFuture<'_, Result<Option<Arc<Session>>, StoreError>> {
        let found = self.sessions.get(key).map(|s| s.value().clone());
        Box::pin(async move { Ok(found) })
    }

    fn insert(&self, key: SessionKey, session: Session) -> BoxFuture<'_, Result<(), StoreError>> {
        self.sessions.insert(key, Arc::new(session));
        Box::pin(async { Ok(()) })
    }

    fn remove(&self, key: &SessionKey) -> BoxFuture<'_, Result<(), StoreError>> {
        self.sessions.remove(key);
        Box::pin(async { Ok(()) })
    }

    fn sweep(&self, now: u64, idle: Duration) -> BoxFuture<'_, Result<usize, StoreError>> {
        let before = self.sessions.len();
        let idle = idle.as_secs();
        self.sessions.retain(|_, s| s.is_live(now, idle));
        let removed = before.saturating_sub(self.sessions.len());
        Box::pin(async move { Ok(removed) })
    }

    fn len(&self) -> usize {
        self.sessions.len()
    }
}

/// The conformance suite every store must pass (oauth2-proxy's pattern: one
/// suite, run against each store): a future store's unit tests call it too.
#[cfg(test)]
pub async fn conformance(store: &dyn SessionStore) {
    use crate::identity::Identity;
    let now = 1_000_000;
    let identity = Identity::for_tests("alice");
    let key = [7u8; 32];
    assert!(
        store.get(&key).await.unwrap().is_none(),
        "empty store returns nothing"
    );
    store
        .insert(key, Session::new(identity.clone(), 3600, now))
        .await
        .unwrap();
    let got = store
        .get(&key)
        .await
        .unwrap()
        .expect("inserted session is found");
    assert_eq!(got.identity.user, "alice");
    assert!(
        store.get(&[8u8; 32]).await.unwrap().is_none(),
        "other keys find nothing"
    );

    // Sweep: absolute expiry and idle timeout.
    store
        .insert([1u8; 32], Session::new(identity.clone(), 10, now))
        .await
        .unwrap();
    let idle = Session::new(identity.clone(), 3600, now - 100);
    store.insert([2u8; 32], idle).await.unwrap();
    let removed = store
        .sweep(now + 20, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(removed, 2, "expired and idle sessions are swept");
    assert!(
        store.get(&key).await.unwrap().is_some(),
        "live session survives the sweep"
    );

    store.remove(&key).await.unwrap();
    assert!(
        store.get(&key).await.unwrap().is_none(),
        "removed session is gone"
    );
    assert!(store.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_the_conformance_suite() {
        conformance(&MemoryStore::new()).await;
    }
}
