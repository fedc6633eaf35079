//! Groups of bearer callers whose token carries Entra's overage marker: read
//! from Microsoft Graph with a Graph token the on-behalf-of grant trades the
//! caller's token for, and remembered per user for [`TTL`] (a failure for
//! [`FAILURE_TTL`]) so that an API client's requests do not each cost two
//! calls to Microsoft.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a user's groups from Graph are used for bearer requests.
pub const TTL: Duration = Duration::from_secs(300);
/// How long a failed lookup is not retried for the same user (so that an
/// API client's requests do not each wait on a Graph that is down).
pub const FAILURE_TTL: Duration = Duration::from_secs(10);
/// Users remembered at most; beyond, the expired go, then everyone.
const MAX_USERS: usize = 10_000;

/// What was read for a user, and when: the groups, or None when it failed.
type Entry = (Instant, Option<Arc<Vec<String>>>);

/// What is known of a user's groups.
#[derive(Debug, PartialEq, Eq)]
pub enum Known {
    Groups(Arc<Vec<String>>),
    /// The lookup failed moments ago: do not ask again yet.
    RecentFailure,
}

/// The groups per user (`tid/oid`).
#[derive(Default)]
pub struct BearerGroups {
    users: Mutex<HashMap<String, Entry>>,
}

impl BearerGroups {
    /// What is known of the user's groups, while it is fresh.
    pub fn get(&self, user: &str) -> Option<Known> {
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        match users.get(user)? {
            (at, Some(groups)) if at.elapsed() < TTL => Some(Known::Groups(groups.clone())),
            (at, None) if at.elapsed() < FAILURE_TTL => Some(Known::RecentFailure),
            _ => None,
        }
    }

    /// Remembers the user's groups (`None`: the lookup failed).
    pub fn insert(&self, user: String, groups: Option<Arc<Vec<String>>>) {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if users.len() >= MAX_USERS {
            users.retain(|_, (at, _)| at.elapsed() < TTL);
            if users.len() >= MAX_USERS {
                users.clear();
            }
        }
        users.insert(user, (Instant::now(), groups));
    }
}

/// The cache key of an identity: its tenant and object id (else subject).
pub fn user_key(identity: &crate::identity::Identity) -> String {
    format!(
        "{}/{}",
        identity.tid.as_deref().unwrap_or_default(),
        identity.oid.as_deref().unwrap_or(&identity.subject)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_kept_per_user() {
        let cache = BearerGroups::default();
        cache.insert("t/a".into(), Some(Arc::new(vec!["g1".into()])));
        assert_eq!(
            cache.get("t/a"),
            Some(Known::Groups(Arc::new(vec!["g1".to_string()])))
        );
        assert!(cache.get("t/b").is_none());
        cache.insert("t/b".into(), None);
        assert_eq!(cache.get("t/b"), Some(Known::RecentFailure));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = BearerGroups::default();
        for i in 0..=MAX_USERS {
            cache.insert(format!("t/{i}"), Some(Arc::new(Vec::new())));
        }
        assert!(cache.users.lock().unwrap().len() <= MAX_USERS);
    }
}
