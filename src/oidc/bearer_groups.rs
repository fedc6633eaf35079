//! Groups of bearer callers whose token carries Entra's overage marker: read
//! from Microsoft Graph with a Graph token the on-behalf-of grant trades the
//! caller's token for, and remembered per user for [`TTL`] so that an API
//! client's requests do not each cost two calls to Microsoft.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a user's groups from Graph are used for bearer requests.
pub const TTL: Duration = Duration::from_secs(300);
/// Users remembered at most; beyond, the expired go, then everyone.
const MAX_USERS: usize = 10_000;

/// A user's groups and when they were read.
type Entry = (Instant, Arc<Vec<String>>);

/// The groups per user (`tid/oid`).
#[derive(Default)]
pub struct BearerGroups {
    users: Mutex<HashMap<String, Entry>>,
}

impl BearerGroups {
    /// The user's groups, if read less than [`TTL`] ago.
    pub fn get(&self, user: &str) -> Option<Arc<Vec<String>>> {
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        users
            .get(user)
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, groups)| groups.clone())
    }

    pub fn insert(&self, user: String, groups: Arc<Vec<String>>) {
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
        cache.insert("t/a".into(), Arc::new(vec!["g1".into()]));
        assert_eq!(cache.get("t/a").as_deref(), Some(&vec!["g1".to_string()]));
        assert!(cache.get("t/b").is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = BearerGroups::default();
        for i in 0..=MAX_USERS {
            cache.insert(format!("t/{i}"), Arc::new(Vec::new()));
        }
        assert!(cache.users.lock().unwrap().len() <= MAX_USERS);
    }
}
