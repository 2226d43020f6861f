//! `RATE_LIMIT_EXEC_PER_MINUTE`: how many runs each (tenant, user) may start per minute.
//! A generic cell rate (governor): a burst of the whole minute's allowance, then one more
//! every `60 / N` seconds. A caller that names no user shares its tenant's allowance.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::session::Tenant;

/// Forget callers whose allowance is full again this often (checks, not time), so the
/// table does not grow with every user ever seen.
const PRUNE_EVERY: u64 = 4096;

pub struct ExecRateLimit {
    limiter: Option<DefaultKeyedRateLimiter<(Tenant, String)>>,
    per_minute: u32,
    checks: AtomicU64,
}

/// Over the limit: the allowance, and when the next run would be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub per_minute: u32,
    pub retry_after: Duration,
}

impl ExecRateLimit {
    /// `0` turns the limit off.
    pub fn per_minute(per_minute: u32) -> Self {
        ExecRateLimit {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            per_minute,
            checks: AtomicU64::new(0),
        }
    }

    /// Take one run from the caller's allowance.
    pub fn check(&self, tenant: &Tenant, user_id: Option<&str>) -> Result<(), Limited> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            limiter.retain_recent();
        }
        let key = (tenant.clone(), user_id.unwrap_or_default().to_owned());
        limiter.check_key(&key).map_err(|not_until| Limited {
            per_minute: self.per_minute,
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_and_user_has_its_own_allowance() {
        let limit = ExecRateLimit::per_minute(2);
        let (a, b) = (Tenant("a".into()), Tenant("b".into()));
        assert!(limit.check(&a, Some("u1")).is_ok());
        assert!(limit.check(&a, Some("u1")).is_ok());
        let over = limit.check(&a, Some("u1")).unwrap_err();
        assert_eq!(over.per_minute, 2);
        // One more every 30 s.
        assert!(
            over.retry_after > Duration::from_secs(25)
                && over.retry_after <= Duration::from_secs(30)
        );
        assert!(limit.check(&a, Some("u2")).is_ok());
        assert!(limit.check(&b, Some("u1")).is_ok());
        assert!(limit.check(&a, None).is_ok());
    }

    #[test]
    fn zero_means_no_limit() {
        let limit = ExecRateLimit::per_minute(0);
        for _ in 0..1000 {
            assert!(limit.check(&Tenant::local(), None).is_ok());
        }
    }
}
