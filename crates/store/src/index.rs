//! The signal index in Redis (K-GW-5), shared by every gateway replica:
//! signal instance → request, fingerprint → open request, and short-lived
//! creation claims per fingerprint.
//!
//! Redis is a cache in front of Kubernetes, never the truth: every entry is
//! checked against the API server before it is trusted, and every call fails
//! fast (no queueing while disconnected) so that callers can fall back to the
//! API server at once when Redis is down.

use std::time::Duration;

use fred::prelude::{
    Builder, ClientLike, Config, Expiration, KeysInterface, Options, ReconnectPolicy, SetOptions,
};
use fred::types::scripts::Script;
use kubernaut_api::RequestKey;

/// Redis is on the hot path of every signal: a slow Redis must not slow the
/// gateway down more than this before the API-server fallback takes over.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// Deletes a key only if it still holds the caller's value, so that a claim
/// or index entry that expired and was re-taken by someone else survives.
const COMPARE_AND_DELETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

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

/// How long index entries live.
#[derive(Clone, Copy, Debug)]
pub struct IndexTtl {
    /// Instance → request: as long as a request is kept (K-RR-9 retention),
    /// so a late re-delivery is still recognised.
    pub instance: Duration,
    /// Fingerprint → open request: the global timeout of a request (K-RR-4);
    /// entries are verified against the API server anyway.
    pub open: Duration,
}

impl Default for IndexTtl {
    fn default() -> Self {
        Self {
            instance: Duration::from_secs(24 * 3600),
            open: Duration::from_secs(3600),
        }
    }
}

#[derive(Clone)]
pub struct SignalIndex {
    client: fred::prelude::Client,
    ttl: IndexTtl,
    prefix: String,
    compare_and_delete: Script,
    storm_windows: Script,
}

impl SignalIndex {
    /// Starts connecting in the background and returns at once: the gateway
    /// serves (through the API server) while Redis is unreachable, and the
    /// client reconnects with backoff for as long as the process lives.
    /// `prefix` separates installations sharing one Redis.
    pub fn connect(url: &str, prefix: &str, ttl: IndexTtl) -> IndexResult<Self> {
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
            ttl,
            prefix: prefix.to_string(),
            compare_and_delete: Script::from_lua(COMPARE_AND_DELETE),
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

    async fn get_request(&self, key: String) -> IndexResult<Option<RequestKey>> {
        let v: Option<String> = self.fast().get(key).await?;
        Ok(v.as_deref().and_then(RequestKey::parse))
    }

    async fn put(&self, key: String, value: String, ttl: Duration) -> IndexResult<()> {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let () = self
            .fast()
            .set(key, value, Some(Expiration::PX(ms)), None, false)
            .await?;
        Ok(())
    }

    async fn delete_if(&self, key: String, value: String) -> IndexResult<bool> {
        let deleted: i64 = self
            .compare_and_delete
            .evalsha_with_reload(&self.client, vec![key], vec![value])
            .await?;
        Ok(deleted == 1)
    }

    /// The request a signal instance was created or counted on.
    pub async fn instance(&self, instance: &str) -> IndexResult<Option<RequestKey>> {
        self.get_request(self.key("inst", instance)).await
    }

    pub async fn remember_instance(&self, instance: &str, request: &RequestKey) -> IndexResult<()> {
        self.put(
            self.key("inst", instance),
            request.to_string(),
            self.ttl.instance,
        )
        .await
    }

    /// The open request of a fingerprint, as last recorded.
    pub async fn open_request(&self, fingerprint: &str) -> IndexResult<Option<RequestKey>> {
        self.get_request(self.key("fp", fingerprint)).await
    }

    pub async fn remember_open(&self, fingerprint: &str, request: &RequestKey) -> IndexResult<()> {
        self.put(
            self.key("fp", fingerprint),
            request.to_string(),
            self.ttl.open,
        )
        .await
    }

    /// Drops a stale fingerprint entry, unless it already names another request.
    pub async fn forget_open(&self, fingerprint: &str, request: &RequestKey) -> IndexResult<()> {
        self.delete_if(self.key("fp", fingerprint), request.to_string())
            .await
            .map(drop)
    }

    /// `SET NX PX`: true when this holder now owns the right to create the
    /// fingerprint's request. The claim expires on its own if the holder dies.
    pub async fn claim(&self, fingerprint: &str, holder: &str, ttl: Duration) -> IndexResult<bool> {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let set: Option<String> = self
            .fast()
            .set(
                self.key("claim", fingerprint),
                holder,
                Some(Expiration::PX(ms)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        Ok(set.is_some())
    }

    pub async fn release(&self, fingerprint: &str, holder: &str) -> IndexResult<()> {
        self.delete_if(self.key("claim", fingerprint), holder.to_string())
            .await
            .map(drop)
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
                &self.client,
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
