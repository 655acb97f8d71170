//! What every provider call goes through (K-AI-5): a circuit breaker, so
//! that a provider that keeps failing is left alone for a while and the
//! analysis falls back to the rules at once instead of waiting out a
//! timeout per request; a concurrency limit, so that an alert storm does
//! not queue hundreds of generations on one model server; and a rate
//! limit (governor), for providers that bill or throttle per call.
//!
//! The breaker is a few lines of state kept here rather than a crate's:
//! its state is exported as a metric and its clock is a parameter, which
//! keeps its tests free of sleeps.

use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::{Answer, LlmError, Provider};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Calls fail at once until the cooldown has passed.
    Open,
    /// One trial call is let through; its outcome closes or reopens.
    HalfOpen,
}

impl BreakerState {
    /// For the gauge: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// Opens after `threshold` provider failures in a row; after `cooldown`
/// lets one trial through.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    state: BreakerState,
    /// When the breaker opened, or when the half-open trial started.
    since: Instant,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration, now: Instant) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            state: BreakerState::Closed,
            since: now,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a call may go out now; `Err` is how long until it may.
    pub fn allow(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.since);
        match self.state {
            BreakerState::Closed => Ok(()),
            // A trial that never reported (its caller gave up) does not
            // keep the breaker half-open forever: after a cooldown another
            // trial goes.
            BreakerState::Open | BreakerState::HalfOpen if elapsed >= self.cooldown => {
                self.state = BreakerState::HalfOpen;
                self.since = now;
                Ok(())
            }
            BreakerState::Open | BreakerState::HalfOpen => Err(self.cooldown - elapsed),
        }
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.state = BreakerState::Closed;
    }

    pub fn failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        if self.state == BreakerState::HalfOpen || self.failures >= self.threshold {
            self.state = BreakerState::Open;
            self.since = now;
        }
    }
}

/// The limits of one provider.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Calls started per minute, with bursts of up to `burst`.
    pub per_minute: u32,
    pub burst: u32,
    /// Provider failures in a row that open the breaker.
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// How long a call waits for a concurrency slot and for the rate limit
    /// before it gives up (and the analysis falls back).
    pub max_wait: Duration,
}

/// A provider with its breaker and limits.
pub struct Guarded {
    provider: Provider,
    limits: Limits,
    breaker: Mutex<Breaker>,
    slots: Semaphore,
    rate: DefaultDirectRateLimiter,
}

impl Guarded {
    pub fn new(provider: Provider, limits: Limits) -> Self {
        let per_minute = NonZeroU32::new(limits.per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
        let rate = RateLimiter::direct(Quota::per_minute(per_minute).allow_burst(burst));
        let breaker = Breaker::new(
            limits.breaker_failures,
            limits.breaker_cooldown,
            Instant::now(),
        );
        Self {
            provider,
            slots: Semaphore::new(limits.concurrency.max(1)),
            breaker: Mutex::new(breaker),
            rate,
            limits,
        }
    }

    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker().state()
    }

    /// One call through the breaker and the limits.
    pub async fn structured(
        &self,
        system: &str,
        user: &str,
        name: &str,
        schema: &Value,
    ) -> Result<Answer, LlmError> {
        self.breaker()
            .allow(Instant::now())
            .map_err(LlmError::CircuitOpen)?;
        let wait = self.limits.max_wait;
        let _slot = tokio::time::timeout(wait, self.slots.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(LlmError::Busy(self.limits.concurrency))?;
        tokio::time::timeout(wait, self.rate.until_ready())
            .await
            .map_err(|_| LlmError::RateLimited(wait))?;
        let result = self.provider.structured(system, user, name, schema).await;
        match &result {
            Err(e) if e.is_provider_failure() => self.breaker().failure(Instant::now()),
            _ => self.breaker().success(),
        }
        result
    }

    /// A panic while holding this lock cannot leave the breaker
    /// inconsistent (every update is one assignment): go on with its state.
    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_and_tries_again_after_the_cooldown() {
        let t0 = Instant::now();
        let cooldown = Duration::from_secs(30);
        let mut b = Breaker::new(3, cooldown, t0);
        b.failure(t0);
        b.failure(t0);
        b.success();
        b.failure(t0);
        b.failure(t0);
        assert_eq!(b.allow(t0), Ok(()), "a success resets the count");
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.allow(t0 + Duration::from_secs(10)),
            Err(Duration::from_secs(20))
        );
        let later = t0 + cooldown;
        assert_eq!(b.allow(later), Ok(()), "one trial after the cooldown");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow(later).is_err(), "only one trial at a time");
        b.failure(later);
        assert_eq!(b.state(), BreakerState::Open, "a failed trial reopens");
        assert!(b.allow(later + Duration::from_secs(1)).is_err());
        let again = later + cooldown;
        assert_eq!(b.allow(again), Ok(()));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.allow(again), Ok(()));
    }

    #[test]
    fn a_trial_that_never_reports_does_not_hold_the_breaker() {
        let t0 = Instant::now();
        let cooldown = Duration::from_secs(5);
        let mut b = Breaker::new(1, cooldown, t0);
        b.failure(t0);
        assert_eq!(b.allow(t0 + cooldown), Ok(()));
        assert!(b.allow(t0 + cooldown).is_err());
        assert_eq!(b.allow(t0 + cooldown * 2), Ok(()));
    }

    fn guarded(url: String, limits: Limits) -> Guarded {
        let client = crate::OpenAiClient::new(crate::OpenAiConfig {
            base_url: url,
            model: "m".into(),
            api_key: None,
            timeout: Duration::from_secs(5),
            schema_mode: crate::SchemaMode::JsonObjectSchema,
            max_tokens: 10,
            fold_system_prompt: false,
        })
        .unwrap();
        Guarded::new(Provider::OpenAi(client), limits)
    }

    fn limits(concurrency: usize, per_minute: u32) -> Limits {
        Limits {
            concurrency,
            per_minute,
            burst: 1,
            breaker_failures: 100,
            breaker_cooldown: Duration::from_secs(60),
            max_wait: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn a_call_waits_for_a_slot_at_most_max_wait() {
        // A server that accepts and never answers holds the only slot.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", silent.local_addr().unwrap());
        let g = std::sync::Arc::new(guarded(url, limits(1, 1000)));
        let first = {
            let g = g.clone();
            tokio::spawn(async move { g.structured("s", "u", "n", &serde_json::json!({})).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = g.structured("s", "u", "n", &serde_json::json!({})).await;
        assert!(matches!(second, Err(LlmError::Busy(1))), "{second:?}");
        first.abort();
        drop(silent);
    }

    #[tokio::test]
    async fn calls_beyond_the_rate_limit_give_up_after_max_wait() {
        // Nothing listens: each call fails fast, so only the limit waits.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", closed.local_addr().unwrap());
        drop(closed);
        let g = guarded(url, limits(4, 1));
        let first = g.structured("s", "u", "n", &serde_json::json!({})).await;
        assert!(matches!(first, Err(LlmError::Unreachable(_))), "{first:?}");
        let second = g.structured("s", "u", "n", &serde_json::json!({})).await;
        assert!(
            matches!(second, Err(LlmError::RateLimited(_))),
            "{second:?}"
        );
    }
}
