//! Limits on login starts and callbacks per client address (governor's GCRA),
//! so that nobody can make the gateway hammer the IdP or fill browsers with flow
//! cookies. Signed-in traffic is never limited.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimitConfig;

pub struct LoginLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl LoginLimiter {
    pub fn new(config: &RateLimitConfig) -> Self {
        let limiter = NonZeroU32::new(config.login_per_minute).map(|per_minute| {
            let burst = NonZeroU32::new(config.login_burst).unwrap_or(per_minute);
            RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
        });
        LoginLimiter { limiter }
    }

    /// Ok, or how long the client should wait.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&client).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))
        })
    }

    /// Forgets clients whose limits have fully recovered (called periodically).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_beyond_the_quota_are_refused_per_client() {
        let limiter = LoginLimiter::new(&RateLimitConfig {
            login_per_minute: 1,
            login_burst: 3,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
        }
        let wait = limiter.check(a).unwrap_err();
        assert!(wait > Duration::from_secs(1), "{wait:?}");
        assert!(
            limiter.check(b).is_ok(),
            "another client has its own budget"
        );
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = LoginLimiter::new(&RateLimitConfig {
            login_per_minute: 0,
            login_burst: 0,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..1000).all(|_| limiter.check(a).is_ok()));
    }
}
