//! The sign-in limiter (governor's GCRA). It limits what costs — exchanges of
//! a code at the token endpoint and failed callbacks — never page views, login
//! starts or signed-in traffic, so that hundreds of people behind one address
//! (a corporate NAT, an unlisted front proxy) can all sign in.
//!
//! Addresses are keyed as networks see them: an IPv4 address on its own, an
//! IPv6 address by its prefix (/64 by default: one household or office gets a
//! whole /64, so its single addresses say nothing). A global ceiling over all
//! addresses keeps the IdP's throttling away from everyone.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimitConfig;
use crate::metrics;

/// Which limit refused a request (also the `reason` of logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReason {
    /// The address used up its sign-ins (token exchanges).
    AddressSignIns,
    /// The address used up its failed callbacks.
    AddressFailures,
    /// All addresses together used up the gateway's sign-ins.
    Global,
}

impl LimitReason {
    /// The same reason as the metrics' label.
    pub fn metric(self) -> metrics::Limit {
        match self {
            LimitReason::AddressSignIns => metrics::Limit::AddressSignIns,
            LimitReason::AddressFailures => metrics::Limit::AddressFailures,
            LimitReason::Global => metrics::Limit::Global,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LimitReason::AddressSignIns => "address_sign_ins",
            LimitReason::AddressFailures => "address_failures",
            LimitReason::Global => "global",
        }
    }
}

/// A refusal: why, and when trying again can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: LimitReason,
    pub retry_after: Duration,
}

type FailureLimiter =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

pub struct LoginLimiter {
    ipv6_prefix: u8,
    sign_ins: Option<DefaultKeyedRateLimiter<IpAddr>>,
    failures: Option<FailureLimiter>,
    /// Addresses whose failure budget is spent, until when. governor cannot
    /// look at a bucket without taking from it, and a callback must be refused
    /// *before* it costs anything.
    failing: DashMap<IpAddr, Instant>,
    global: Option<DefaultDirectRateLimiter>,
}

fn quota(per_minute: u32, burst: u32) -> Option<Quota> {
    let per_minute = NonZeroU32::new(per_minute)?;
    let burst = NonZeroU32::new(burst).unwrap_or(per_minute);
    Some(Quota::per_minute(per_minute).allow_burst(burst))
}

fn wait_from(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> Duration {
    not_until.wait_time_from(DefaultClock::default().now())
}

impl LoginLimiter {
    pub fn new(config: &RateLimitConfig) -> Self {
        LoginLimiter {
            ipv6_prefix: config.ipv6_prefix.min(128),
            sign_ins: quota(config.login_per_minute, config.login_burst).map(RateLimiter::keyed),
            failures: quota(config.failed_per_minute, config.failed_burst)
                .map(|q| RateLimiter::keyed(q).with_middleware::<StateInformationMiddleware>()),
            failing: DashMap::new(),
            global: quota(config.global_per_minute, config.global_burst).map(RateLimiter::direct),
        }
    }

    /// The bucket an address counts in: IPv4 (also IPv4-mapped IPv6) exactly,
    /// IPv6 by its configured prefix.
    pub fn bucket(&self, client: IpAddr) -> IpAddr {
        bucket_of(client, self.ipv6_prefix)
    }

    /// Before a callback is looked at: refused while its address's failure budget is spent.
    pub fn check_callback(&self, client: IpAddr) -> Result<(), Refusal> {
        let key = self.bucket(client);
        let Some(until) = self.failing.get(&key).map(|entry| *entry) else {
            return Ok(());
        };
        let now = Instant::now();
        if until > now {
            return Err(Refusal {
                reason: LimitReason::AddressFailures,
                retry_after: until - now,
            });
        }
        self.failing.remove_if(&key, |_, until| *until <= now);
        Ok(())
    }

    /// Before a code is exchanged at the token endpoint: the address's sign-ins,
    /// then the global ceiling (an address over its own limit takes nothing
    /// from everyone else's).
    pub fn check_exchange(&self, client: IpAddr) -> Result<(), Refusal> {
        if let Some(sign_ins) = &self.sign_ins {
            sign_ins
                .check_key(&self.bucket(client))
                .map_err(|not_until| Refusal {
                    reason: LimitReason::AddressSignIns,
                    retry_after: wait_from(not_until),
                })?;
        }
        if let Some(global) = &self.global {
            global.check().map_err(|not_until| Refusal {
                reason: LimitReason::Global,
                retry_after: wait_from(not_until),
            })?;
        }
        Ok(())
    }

    /// After a callback failed (answered with a client error): takes from the
    /// address's failure budget; once it is spent, [`check_callback`] refuses
    /// until the next failure is allowed again.
    ///
    /// [`check_callback`]: LoginLimiter::check_callback
    pub fn record_failure(&self, client: IpAddr) {
        let Some(failures) = &self.failures else {
            return;
        };
        let key = self.bucket(client);
        let blocked_for = match failures.check_key(&key) {
            Ok(snapshot) if snapshot.remaining_burst_capacity() > 0 => return,
            // That was the last one: the next is allowed one interval later.
            Ok(snapshot) => snapshot.quota().replenish_interval(),
            Err(not_until) => wait_from(not_until),
        };
        self.failing.insert(key, Instant::now() + blocked_for);
    }

    /// Forgets addresses whose limits have fully recovered (called periodically).
    pub fn forget_idle(&self) {
        if let Some(sign_ins) = &self.sign_ins {
            sign_ins.retain_recent();
            sign_ins.shrink_to_fit();
        }
        if let Some(failures) = &self.failures {
            failures.retain_recent();
            failures.shrink_to_fit();
        }
        let now = Instant::now();
        self.failing.retain(|_, until| *until > now);
        self.failing.shrink_to_fit();
    }
}

/// IPv4 as is; IPv4-mapped IPv6 as its IPv4 address; other IPv6 with the bits
/// past `prefix` cleared.
pub fn bucket_of(client: IpAddr, prefix: u8) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RateLimitConfig {
        RateLimitConfig {
            login_per_minute: 0,
            login_burst: 0,
            failed_per_minute: 0,
            failed_burst: 0,
            global_per_minute: 0,
            global_burst: 0,
            ipv6_prefix: 64,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_addresses_share_their_64_and_ipv4_addresses_stand_alone() {
        let limiter = LoginLimiter::new(&config());
        let a = limiter.bucket(ip("2001:db8:1:2:aaaa::1"));
        assert_eq!(a, ip("2001:db8:1:2::"));
        assert_eq!(a, limiter.bucket(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_ne!(a, limiter.bucket(ip("2001:db8:1:3::1")), "another /64");
        assert_ne!(
            limiter.bucket(ip("192.0.2.1")),
            limiter.bucket(ip("192.0.2.2"))
        );
        assert_eq!(
            limiter.bucket(ip("::ffff:192.0.2.1")),
            ip("192.0.2.1"),
            "an IPv4-mapped address counts as its IPv4 address"
        );
    }

    #[test]
    fn the_ipv6_prefix_is_configurable_from_0_to_128() {
        let v6 = ip("2001:db8:1:2:3:4:5:6");
        assert_eq!(bucket_of(v6, 128), v6);
        assert_eq!(bucket_of(v6, 48), ip("2001:db8:1::"));
        assert_eq!(bucket_of(v6, 0), ip("::"));
    }

    #[test]
    fn sign_ins_are_limited_per_bucket() {
        let limiter = LoginLimiter::new(&RateLimitConfig {
            login_per_minute: 1,
            login_burst: 3,
            ..config()
        });
        let a = ip("2001:db8::1");
        let same_64 = ip("2001:db8::2");
        for _ in 0..2 {
            assert!(limiter.check_exchange(a).is_ok());
        }
        assert!(limiter.check_exchange(same_64).is_ok());
        let refusal = limiter.check_exchange(same_64).unwrap_err();
        assert_eq!(refusal.reason, LimitReason::AddressSignIns);
        assert!(refusal.retry_after > Duration::from_secs(1), "{refusal:?}");
        assert!(
            limiter.check_exchange(ip("2001:db8:0:1::1")).is_ok(),
            "another /64 has its own budget"
        );
    }

    #[test]
    fn the_global_ceiling_covers_all_addresses() {
        let limiter = LoginLimiter::new(&RateLimitConfig {
            login_per_minute: 100,
            login_burst: 100,
            global_per_minute: 1,
            global_burst: 2,
            ..config()
        });
        assert!(limiter.check_exchange(ip("192.0.2.1")).is_ok());
        assert!(limiter.check_exchange(ip("192.0.2.2")).is_ok());
        let refusal = limiter.check_exchange(ip("192.0.2.3")).unwrap_err();
        assert_eq!(refusal.reason, LimitReason::Global);
    }

    #[test]
    fn an_address_over_its_own_limit_takes_nothing_from_the_global_ceiling() {
        let limiter = LoginLimiter::new(&RateLimitConfig {
            login_per_minute: 1,
            login_burst: 1,
            global_per_minute: 1,
            global_burst: 2,
            ..config()
        });
        let greedy = ip("192.0.2.1");
        assert!(limiter.check_exchange(greedy).is_ok());
        for _ in 0..10 {
            let refusal = limiter.check_exchange(greedy).unwrap_err();
            assert_eq!(refusal.reason, LimitReason::AddressSignIns);
        }
        assert!(limiter.check_exchange(ip("192.0.2.2")).is_ok());
    }

    #[test]
    fn callbacks_are_refused_once_the_failure_budget_is_spent() {
        let limiter = LoginLimiter::new(&RateLimitConfig {
            failed_per_minute: 1,
            failed_burst: 3,
            ..config()
        });
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(limiter.check_callback(a).is_ok());
            limiter.record_failure(a);
        }
        let refusal = limiter.check_callback(a).unwrap_err();
        assert_eq!(refusal.reason, LimitReason::AddressFailures);
        assert!(
            refusal.retry_after > Duration::from_secs(50)
                && refusal.retry_after <= Duration::from_secs(60),
            "one failure per minute: {refusal:?}"
        );
        assert!(limiter.check_callback(ip("192.0.2.2")).is_ok());
        limiter.forget_idle();
        assert!(limiter.check_callback(a).is_err(), "still refused");
    }

    #[test]
    fn zero_turns_each_limit_off() {
        let limiter = LoginLimiter::new(&config());
        let a = ip("192.0.2.1");
        for _ in 0..1000 {
            assert!(limiter.check_exchange(a).is_ok());
            limiter.record_failure(a);
            assert!(limiter.check_callback(a).is_ok());
        }
    }
}
