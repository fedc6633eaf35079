//! Renewing a session's access token with its refresh token (`session.refresh`,
//! implied by `headers.pass_access_token`), before it expires: at most 60 s
//! ahead, or half the token's lifetime for short-lived tokens.
//!
//! - **Once per session**, however many requests are in flight: one refresh
//!   per session in this process (the others go on with the still-valid token,
//!   or wait for the renewal once it has expired), and across replicas a short
//!   claim in the shared store (Redis `SET NX PX`).
//! - **A transient IdP failure** keeps the session and its still-valid token
//!   (retried after [`RETRY_AFTER_FAILURE`]); once that token has expired the
//!   request gets 503, never the expired token. **`invalid_grant`** (refresh
//!   token revoked or expired at the IdP) ends the session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::token_endpoint::TokenEndpointError;
use super::{Auth, SessionLookup, SessionUnavailable};
use crate::metrics;
use crate::session::{unix_now, Session, SessionHandle, SessionKey, SessionRecord};

/// Renew this long before the access token expires (less for short tokens).
const RENEW_AHEAD: u64 = 60;
/// After a failed refresh, the still-valid token is used this long before the
/// next attempt (the IdP is not asked on every request).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// How long a request whose token has expired waits for another replica's refresh.
const WAIT_FOR_OTHER_REPLICA: Duration = Duration::from_secs(5);

/// The refreshes in progress in this process, one per session.
#[derive(Default)]
pub struct RefreshFlights {
    flights: DashMap<SessionKey, Arc<tokio::sync::Mutex<Option<Instant>>>>,
}

/// When to renew an access token valid until `expires_at` that was issued for
/// `lifetime` seconds.
pub fn renew_at(expires_at: u64, lifetime: u64) -> u64 {
    expires_at.saturating_sub(RENEW_AHEAD.min(lifetime / 2))
}

/// Copies what a token answer renews into `record`.
pub fn apply_tokens(
    record: &mut SessionRecord,
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
    now: u64,
) {
    if let Some(access) = access_token {
        record.access_token = Some(access.into());
        record.access_expires_at = expires_in.map(|lifetime| now.saturating_add(lifetime));
        record.access_renew_at = expires_in.map(|lifetime| renew_at(now + lifetime, lifetime));
    }
    // Entra sends a new refresh token with each use (the old one stays valid).
    if let Some(refresh) = refresh_token {
        record.refresh_token = Some(refresh.into());
    }
}

fn due(session: &Session, now: u64) -> bool {
    session.record.access_renew_at.is_some_and(|at| now >= at)
}

fn expired(session: &Session, now: u64) -> bool {
    session.record.access_expires_at.is_some_and(|at| now >= at)
}

impl Auth {
    /// `session` as it may be used now: renewed when its access token is due.
    pub(super) async fn renewed(
        &self,
        handle: SessionHandle<'_>,
        session: Arc<Session>,
    ) -> SessionLookup {
        let now = unix_now();
        if !due(&session, now) {
            return SessionLookup::Live(session);
        }
        let flight = self
            .refresh_flights
            .flights
            .entry(handle.key)
            .or_default()
            .clone();
        // Another request of this process is renewing: a still-valid token goes on.
        let mut last_failure = match flight.try_lock() {
            Ok(guard) => guard,
            Err(_) if !expired(&session, now) => return SessionLookup::Live(session),
            Err(_) => flight.lock().await,
        };
        let result = self.renew_locked(handle, session, &mut last_failure).await;
        drop(last_failure);
        // The flight is forgotten when no other request holds it.
        self.refresh_flights
            .flights
            .remove_if(&handle.key, |_, f| Arc::strong_count(f) <= 2);
        result
    }

    async fn renew_locked(
        &self,
        handle: SessionHandle<'_>,
        session: Arc<Session>,
        last_failure: &mut Option<Instant>,
    ) -> SessionLookup {
        // Renewed meanwhile (by a request that held the flight before us)?
        let session = match self.store.get(handle).await {
            Ok(Some(current)) => current,
            Ok(None) => return SessionLookup::None,
            Err(_) => session,
        };
        let now = unix_now();
        if !due(&session, now) {
            return SessionLookup::Live(session);
        }
        let recently_failed = last_failure.is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE);
        if recently_failed && !expired(&session, now) {
            return SessionLookup::Live(session);
        }
        let Some(refresh_token) = session.record.refresh_token.clone() else {
            if expired(&session, now) {
                tracing::warn!(user = %session.identity().user, "the access token expired and the identity provider gave no refresh token (is offline_access granted?): the session ends");
                metrics::refresh(metrics::Refresh::NoRefreshToken);
                let _ = self.store.remove(&handle.key).await;
                return SessionLookup::None;
            }
            return SessionLookup::Live(session);
        };
        // Across replicas: one claims the refresh, the others use the
        // still-valid token or wait for the renewed record.
        match self.store.claim_refresh(&handle.key).await {
            Ok(true) => {}
            Ok(false) => return self.wait_for_other_replica(handle, session).await,
            Err(e) if expired(&session, now) => {
                return SessionLookup::Unavailable(SessionUnavailable::Store(e))
            }
            Err(_) => return SessionLookup::Live(session),
        }
        // Another replica may have renewed it just before our claim, while this
        // replica's cache still held the old record.
        let session = match self.store.get_fresh(handle).await {
            Ok(Some(current)) if !due(&current, unix_now()) => {
                let _ = self.store.release_refresh(&handle.key).await;
                return SessionLookup::Live(current);
            }
            Ok(Some(current)) => current,
            Ok(None) => {
                let _ = self.store.release_refresh(&handle.key).await;
                return SessionLookup::None;
            }
            Err(_) => session,
        };
        let answer = self.token_endpoint.refresh(&refresh_token, None).await;
        let outcome = match answer {
            Ok(tokens) => {
                metrics::refresh(metrics::Refresh::Renewed);
                let mut record = session.to_record();
                apply_tokens(
                    &mut record,
                    tokens.access_token,
                    tokens.refresh_token,
                    tokens.expires_in,
                    unix_now(),
                );
                *last_failure = None;
                match self.store.insert(handle, record).await {
                    Ok(renewed) => {
                        tracing::info!(user = %renewed.identity().user, "access token renewed");
                        SessionLookup::Live(renewed)
                    }
                    Err(e) if expired(&session, unix_now()) => {
                        SessionLookup::Unavailable(SessionUnavailable::Store(e))
                    }
                    Err(_) => SessionLookup::Live(session),
                }
            }
            Err(TokenEndpointError::Refused { error, .. }) if error.error == "invalid_grant" => {
                metrics::refresh(metrics::Refresh::InvalidGrant);
                tracing::info!(user = %session.identity().user, description = %error.error_description,
                    "the identity provider refused the refresh token (invalid_grant): the session ends");
                let _ = self.store.remove(&handle.key).await;
                SessionLookup::None
            }
            Err(e) => {
                metrics::refresh(metrics::Refresh::Failed);
                *last_failure = Some(Instant::now());
                tracing::warn!(user = %session.identity().user, error = %e, "access token renewal failed; the session is kept");
                if expired(&session, unix_now()) {
                    SessionLookup::Unavailable(SessionUnavailable::Renewal(e.to_string()))
                } else {
                    SessionLookup::Live(session)
                }
            }
        };
        let _ = self.store.release_refresh(&handle.key).await;
        outcome
    }

    /// Another replica is renewing: go on with a still-valid token, else wait
    /// (bounded) for the renewed record to appear in the store.
    async fn wait_for_other_replica(
        &self,
        handle: SessionHandle<'_>,
        session: Arc<Session>,
    ) -> SessionLookup {
        if !expired(&session, unix_now()) {
            return SessionLookup::Live(session);
        }
        let deadline = Instant::now() + WAIT_FOR_OTHER_REPLICA;
        while Instant::now() < deadline {
            // Polling a shared store for another process's write.
            tokio::time::sleep(Duration::from_millis(100)).await;
            match self.store.get_fresh(handle).await {
                Ok(Some(current)) if !expired(&current, unix_now()) => {
                    return SessionLookup::Live(current)
                }
                Ok(Some(_)) => {}
                Ok(None) => return SessionLookup::None,
                Err(e) => return SessionLookup::Unavailable(SessionUnavailable::Store(e)),
            }
        }
        SessionLookup::Unavailable(SessionUnavailable::Renewal(
            "another replica is renewing the access token and has not finished".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_a_minute_ahead_or_half_a_short_lifetime() {
        assert_eq!(renew_at(10_000 + 3600, 3600), 10_000 + 3600 - 60);
        assert_eq!(renew_at(10_000 + 30, 30), 10_000 + 15);
        assert_eq!(renew_at(10, 0), 10);
    }
}
