//! The session store as a component: one trait, chosen by `session.store` and
//! handed to the sign-in code. Stores are keyed by the SHA-256 of the cookie's
//! session id, so a leaked store (or a heap dump) does not hand out usable
//! cookies; the Redis store also encrypts each record with a key derived from
//! the cookie (see [`SessionHandle::record_secret`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::cookies::session_key;
use super::{Session, SessionRecord};
use crate::config::{SessionStoreKind, Settings};
use crate::health::Readiness;

/// SHA-256 of a session id.
pub type SessionKey = [u8; 32];

/// The store cannot be used right now (Redis unreachable, …): the reason, for
/// logs, the 503 answer and `/readyz`. Never a reason to forget a session.
#[derive(Debug, Clone, thiserror::Error)]
#[error("session store unavailable: {0}")]
pub struct StoreError(pub String);

/// A session as a request names it: the cookie's id and the key it is filed under.
#[derive(Debug, Clone, Copy)]
pub struct SessionHandle<'a> {
    pub key: SessionKey,
    id: &'a [u8],
}

impl<'a> SessionHandle<'a> {
    /// The handle of the session id `id` (hashes it).
    pub fn new(id: &'a [u8]) -> Self {
        SessionHandle {
            key: session_key(id),
            id,
        }
    }

    /// The handle of `id` whose key the caller has already computed
    /// ([`super::cookies::SessionKeyMemo`]); `key` must be `session_key(id)`.
    pub fn with_key(id: &'a [u8], key: SessionKey) -> Self {
        debug_assert_eq!(key, session_key(id));
        SessionHandle { key, id }
    }

    /// Key material that only the cookie holds (the store has only its hash):
    /// what a shared store encrypts the record with.
    pub fn record_secret(&self) -> &[u8] {
        self.id
    }
}

/// What every session store provides. Futures are boxed so that the gateway can
/// hold any store as `Arc<dyn SessionStore>`.
pub trait SessionStore: Send + Sync + 'static {
    /// "memory" or "redis" (logs, `/readyz`).
    fn kind(&self) -> &'static str;
    /// The session of `handle`, if the store has it. Expiry is the caller's decision.
    fn get<'a>(
        &'a self,
        handle: SessionHandle<'a>,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>>;
    /// Stores (or replaces) the record of `handle`; returns the session as held now.
    fn insert<'a>(
        &'a self,
        handle: SessionHandle<'a>,
        record: SessionRecord,
    ) -> BoxFuture<'a, Result<Arc<Session>, StoreError>>;
    fn remove<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Ends every session whose ID token carried Entra's `sid` (front-channel
    /// logout); returns how many this store knew of.
    fn remove_by_sid<'a>(&'a self, sid: &'a str) -> BoxFuture<'a, Result<usize, StoreError>>;
    /// Forgets sessions this process holds that are expired at `now` (absolute
    /// or idle); returns how many. Shared stores expire their own copy.
    fn sweep(&self, now: u64, idle: Duration) -> BoxFuture<'_, Result<usize, StoreError>>;
    /// Sessions held by this process.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether sessions can be created and looked up right now.
    fn available(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The session of `handle` as the shared store has it now, bypassing any
    /// local cache (waiting for another replica's write).
    fn get_fresh<'a>(
        &'a self,
        handle: SessionHandle<'a>,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>> {
        self.get(handle)
    }
    /// Claims the right to refresh `key`'s tokens for a few seconds, across
    /// replicas; Ok(false) while another replica holds it. (A store only one
    /// process uses has nobody to share with.)
    fn claim_refresh<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        let _ = key;
        Box::pin(async { Ok(true) })
    }
    fn release_refresh<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = key;
        Box::pin(async { Ok(()) })
    }
    /// At a graceful stop: keep the sessions for the next start, where the
    /// store does that (memory with a state file); returns how many were kept.
    fn persist(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async { Ok(0) })
    }
}

/// Why a store could not be set up (a start-up error naming the key).
#[derive(Debug, thiserror::Error)]
#[error("key `{key}`: {reason}")]
pub struct StoreInitError {
    pub key: &'static str,
    pub reason: String,
}

/// The store `session.store` names, ready to be handed to the sign-in code.
/// Must be called inside a Tokio runtime (the Redis store connects in the background).
pub fn open_store(
    settings: &Settings,
    readiness: &Readiness,
) -> Result<Arc<dyn SessionStore>, StoreInitError> {
    let session = &settings.config.session;
    Ok(match session.store {
        SessionStoreKind::Memory => Arc::new(super::memory::MemoryStore::open(settings)),
        SessionStoreKind::Redis => Arc::new(super::redis::RedisStore::start(
            settings,
            readiness.clone(),
        )?),
    })
}

/// The conformance suite every store passes (oauth2-proxy's pattern: one suite,
/// run against each store; `tests/session_store.rs` runs it on the memory store
/// and on Redis).
pub mod conformance {
    use super::*;
    use crate::identity::Identity;
    use crate::session::cookies::CookieCodec;
    use crate::session::unix_now;

    fn record(user: &str, sid: Option<&str>) -> SessionRecord {
        let mut identity = Identity::example(user);
        identity.groups = vec!["g1".into(), "g2".into()];
        let mut record = SessionRecord::new(identity, 3600, unix_now());
        record.sid = sid.map(Into::into);
        record.id_token = Some("header.payload.signature".into());
        record
    }

    /// Runs every check on `store`, which must start empty of these sessions.
    pub async fn run(store: &dyn SessionStore) {
        let (id, _) = CookieCodec::new_session_id();
        let alice = SessionHandle::new(id.as_bytes());
        assert!(
            store.get(alice).await.expect("store available").is_none(),
            "an unknown session is not found"
        );
        let mut stored = record("alice", Some("sid-1"));
        stored.access_token = Some("access".into());
        stored.access_expires_at = Some(stored.created_at + 60);
        stored.access_renew_at = Some(stored.created_at + 30);
        stored.refresh_token = Some("refresh".into());
        let held = store.insert(alice, stored.clone()).await.expect("insert");
        assert_eq!(held.record.identity.user, "alice");
        let got = store
            .get(alice)
            .await
            .expect("get")
            .expect("an inserted session is found");
        assert_eq!(
            *got.record.identity, *stored.identity,
            "identity round-trips"
        );
        assert_eq!(got.record.sid.as_deref(), Some("sid-1"));
        assert_eq!(got.record.id_token, stored.id_token);
        assert_eq!(got.record.access_token, stored.access_token);
        assert_eq!(got.record.access_expires_at, stored.access_expires_at);
        assert_eq!(got.record.access_renew_at, stored.access_renew_at);
        assert_eq!(got.record.refresh_token, stored.refresh_token);
        assert_eq!(got.record.expires_at, stored.expires_at);

        let (other_id, _) = CookieCodec::new_session_id();
        assert!(
            store
                .get(SessionHandle::new(other_id.as_bytes()))
                .await
                .expect("get")
                .is_none(),
            "another id finds nothing"
        );

        // Replacing a record (a refreshed access token) is seen by the next get.
        let mut renewed = stored.clone();
        renewed.access_token = Some("access-2".into());
        store.insert(alice, renewed).await.expect("replace");
        let got = store.get(alice).await.expect("get").expect("still there");
        assert_eq!(got.record.access_token.as_deref(), Some("access-2"));
        let fresh = store.get_fresh(alice).await.expect("get_fresh");
        assert_eq!(
            fresh.expect("still there").record.access_token.as_deref(),
            Some("access-2")
        );

        // The refresh claim: held once, free again after release.
        assert!(store.claim_refresh(&alice.key).await.expect("claim"));
        store.release_refresh(&alice.key).await.expect("release");
        assert!(store.claim_refresh(&alice.key).await.expect("claim again"));
        store.release_refresh(&alice.key).await.expect("release");

        // Front-channel logout: every session with the sid, and only those.
        let (bob_id, _) = CookieCodec::new_session_id();
        let bob = SessionHandle::new(bob_id.as_bytes());
        let (carol_id, _) = CookieCodec::new_session_id();
        let carol = SessionHandle::new(carol_id.as_bytes());
        store
            .insert(bob, record("bob", Some("sid-1")))
            .await
            .expect("insert");
        store
            .insert(carol, record("carol", Some("sid-2")))
            .await
            .expect("insert");
        assert_eq!(
            store.remove_by_sid("sid-1").await.expect("remove_by_sid"),
            2,
            "both sessions of sid-1 end"
        );
        assert!(store.get(alice).await.expect("get").is_none());
        assert!(store.get(bob).await.expect("get").is_none());
        assert!(
            store.get(carol).await.expect("get").is_some(),
            "another sid's session stays"
        );
        assert_eq!(
            store.remove_by_sid("sid-unknown").await.expect("remove"),
            0,
            "an unknown sid ends nothing"
        );

        store.remove(&carol.key).await.expect("remove");
        assert!(
            store.get(carol).await.expect("get").is_none(),
            "a removed session is gone"
        );
        store
            .remove(&carol.key)
            .await
            .expect("removing twice is fine");
    }
}
