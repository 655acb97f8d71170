//! What the gateway replicas share in Redis: the storm windows of each
//! alert name (K-GW-6), so that every replica sees one rate and one set of
//! targets.
//!
//! Redis is never the truth: every call fails fast (no queueing while
//! disconnected) so that callers fall back at once (each replica counting
//! its own windows) when Redis is down.

use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config, Options, ReconnectPolicy};
use fred::types::scripts::Script;

/// Redis is on the hot path of every signal: a slow Redis must not slow the
/// gateway down more than this before the API-server fallback takes over.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// Records one signal in the storm windows of its alert name (K-GW-6) and
/// returns how many distinct signal instances the rate window holds and how
/// many distinct targets the pattern window holds. Atomic, on Redis's clock,
/// so every replica sees the same windows.
/// KEYS: rate zset, pattern zset. ARGV: rate window ms, pattern window ms,
/// instance, target.
const STORM_WINDOWS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate_ms = tonumber(ARGV[1])
local pattern_ms = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - rate_ms)
redis.call('PEXPIRE', KEYS[1], rate_ms)
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - pattern_ms)
redis.call('PEXPIRE', KEYS[2], pattern_ms)
return {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])}
";

/// What the storm windows of one alert name hold after a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowCounts {
    /// Distinct signal instances in the rate window.
    pub signals: u64,
    /// Distinct targets in the pattern window.
    pub targets: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("Redis is unavailable: {0}")]
pub struct IndexError(#[from] fred::error::Error);

pub type IndexResult<T> = std::result::Result<T, IndexError>;

#[derive(Clone)]
pub struct SignalIndex {
    client: fred::prelude::Client,
    prefix: String,
    storm_windows: Script,
}

impl SignalIndex {
    /// Starts connecting in the background and returns at once: the gateway
    /// serves (through the API server) while Redis is unreachable, and the
    /// client reconnects with backoff for as long as the process lives.
    /// `prefix` separates installations sharing one Redis.
    pub fn connect(url: &str, prefix: &str) -> IndexResult<Self> {
        let config = Config {
            // Apply the reconnect policy to the first connection too.
            fail_fast: false,
            ..Config::from_url(url)?
        };
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
            // 0 attempts: never give up; 100 ms doubling to 5 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()?;
        client.connect();
        Ok(Self {
            client,
            prefix: prefix.to_string(),
            storm_windows: Script::from_lua(STORM_WINDOWS),
        })
    }

    /// Waits until the first connection is up (for tests and start-up logs).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.client.wait_for_connect())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The client with per-call options: fail instead of queueing while
    /// disconnected, one attempt, bounded time.
    fn fast(&self) -> fred::clients::WithOptions<fred::prelude::Client> {
        self.client.with_options(&Options {
            fail_fast: true,
            max_attempts: Some(1),
            timeout: Some(COMMAND_TIMEOUT),
            ..Default::default()
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    /// Records a signal in the storm windows of `scope` (namespace and alert
    /// name) and returns what they hold.
    pub async fn storm_windows(
        &self,
        scope: &str,
        instance: &str,
        target: &str,
        rate_window: Duration,
        pattern_window: Duration,
    ) -> IndexResult<WindowCounts> {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let (signals, targets): (u64, u64) = self
            .storm_windows
            .evalsha_with_reload(
                &self.fast(),
                vec![
                    self.key("storm-rate", scope),
                    self.key("storm-pattern", scope),
                ],
                vec![
                    ms(rate_window).to_string(),
                    ms(pattern_window).to_string(),
                    instance.to_string(),
                    target.to_string(),
                ],
            )
            .await?;
        Ok(WindowCounts { signals, targets })
    }
}
