//! What the gateway replicas share in Redis: the storm windows of each
//! alert name (K-GW-6), so that every replica sees one rate and one set of
//! targets; and the journal of duplicates (K-GW-5), so that a duplicate is
//! answered once Redis has numbered it rather than once the API server has
//! written it.
//!
//! The journal holds, per request, the occurrence count every replica
//! numbers from and the latest occurrence's time, and a set of the requests
//! whose count the API server has not caught up with yet, scored by their
//! last occurrence. The replica that numbered an occurrence writes it to
//! the request's status shortly after and then takes the request out of the
//! set if nothing was numbered since; a request left in the set (its
//! replica died) is written by any replica that finds it there.
//!
//! Redis is never the truth for creation: every call fails fast (no
//! queueing while disconnected) so that callers fall back at once (each
//! replica counting its own storm windows, duplicates counted through the
//! API server) when Redis is down.

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

/// Numbers one occurrence of a request. Two figures: `count`, the number
/// the duplicate is answered with (the request's occurrence count, resumed
/// from the status's when larger, so the numbering carries on from
/// Kubernetes), and `numbered`, how many occurrences the journal numbered
/// in all (resumed from the status's `journaled`), which is what settling
/// writes.
/// Several occurrences at once are numbered consecutively.
/// KEYS: the request's journal hash, the unsettled set. ARGV: the status's
/// count, the latest occurrence's time (ms), the request's id, the
/// journal's TTL (ms), the status's `journaled`, how many occurrences.
/// Returns the figures after the last of them.
const OCCURRENCE_COUNT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'count', 'numbered', 'last')
local n = tonumber(ARGV[6])
local count = math.max(tonumber(h[1] or '0'), tonumber(ARGV[1])) + n
local numbered = math.max(tonumber(h[2] or '0'), tonumber(ARGV[5])) + n
local last = math.max(tonumber(h[3] or '0'), tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'count', count, 'numbered', numbered, 'last', last)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], now, ARGV[3])
return {count, numbered}
";

/// Takes a request out of the unsettled set if its status now holds every
/// occurrence the journal numbered. KEYS: journal hash, unsettled set.
/// ARGV: the `journaled` figure written, the request's id.
const OCCURRENCE_SETTLED: &str = r"
local numbered = tonumber(redis.call('HGET', KEYS[1], 'numbered') or '0')
if numbered <= tonumber(ARGV[1]) then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 1
end
return 0
";

/// Requests unsettled for longer than ARGV[1] ms (at most ARGV[2]), on
/// Redis's clock. KEYS: the unsettled set.
const OCCURRENCES_STALE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
";

/// How long a request's journal outlives its last occurrence: long enough
/// that an incident's duplicates keep one numbering, short enough that
/// Redis does not keep every request ever counted. An expired journal
/// resumes from the status's count.
const JOURNAL_TTL: Duration = Duration::from_secs(3600);

/// Occurrences, numbered by the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Numbered {
    /// The request's occurrence count with the last of them: the last
    /// duplicate's answer (the others' are the numbers just below).
    pub count: i64,
    /// Occurrences the journal numbered in all: what settling writes.
    pub numbered: i64,
}

/// A request's journal: what its status must come to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Journal {
    /// Occurrences the journal numbered in all.
    pub numbered: i64,
    /// The latest occurrence, in milliseconds since the epoch.
    pub last_ms: i64,
}

/// What the storm windows of one alert name hold after a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowCounts {
    /// Distinct signal instances in the rate window.
    pub signals: u64,
    /// Distinct targets in the pattern window.
    pub targets: u64,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("Redis is unavailable: {0}")]
pub struct IndexError(#[from] fred::error::Error);

impl IndexError {
    /// A call that was abandoned before Redis answered.
    pub fn canceled(why: &'static str) -> Self {
        Self(fred::error::Error::new(
            fred::error::ErrorKind::Canceled,
            why,
        ))
    }
}

pub type IndexResult<T> = std::result::Result<T, IndexError>;

#[derive(Clone)]
pub struct SignalIndex {
    client: fred::prelude::Client,
    prefix: String,
    storm_windows: Script,
    occurrence_count: Script,
    occurrence_settled: Script,
    occurrences_stale: Script,
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
            occurrence_count: Script::from_lua(OCCURRENCE_COUNT),
            occurrence_settled: Script::from_lua(OCCURRENCE_SETTLED),
            occurrences_stale: Script::from_lua(OCCURRENCES_STALE),
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

    fn unsettled(&self) -> String {
        format!("{}:occ-unsettled", self.prefix)
    }

    /// Numbers `n` occurrences of `request` (`namespace/name`).
    /// `status_count` and `status_journaled` are what the request's status
    /// was last seen with; `at_ms` is the latest occurrence's time.
    pub async fn count_occurrences(
        &self,
        request: &str,
        status_count: i64,
        status_journaled: i64,
        n: usize,
        at_ms: i64,
    ) -> IndexResult<Numbered> {
        let ttl = i64::try_from(JOURNAL_TTL.as_millis()).unwrap_or(i64::MAX);
        let (count, numbered): (i64, i64) = self
            .occurrence_count
            .evalsha_with_reload(
                &self.fast(),
                vec![self.key("occ", request), self.unsettled()],
                vec![
                    status_count.to_string(),
                    at_ms.to_string(),
                    request.to_string(),
                    ttl.to_string(),
                    status_journaled.to_string(),
                    n.to_string(),
                ],
            )
            .await?;
        Ok(Numbered { count, numbered })
    }

    /// The journal of `request`, if it has one.
    pub async fn journal(&self, request: &str) -> IndexResult<Option<Journal>> {
        use fred::prelude::HashesInterface;
        let (numbered, last): (Option<i64>, Option<i64>) = self
            .fast()
            .hmget(self.key("occ", request), vec!["numbered", "last"])
            .await?;
        Ok(numbered.map(|numbered| Journal {
            numbered,
            last_ms: last.unwrap_or(0),
        }))
    }

    /// The status of `request` now holds `written` of the occurrences the
    /// journal numbered: it leaves the unsettled set unless more were
    /// numbered meanwhile. Returns whether it left.
    pub async fn settled(&self, request: &str, written: i64) -> IndexResult<bool> {
        let left: i64 = self
            .occurrence_settled
            .evalsha_with_reload(
                &self.fast(),
                vec![self.key("occ", request), self.unsettled()],
                vec![written.to_string(), request.to_string()],
            )
            .await?;
        Ok(left == 1)
    }

    /// `request` is gone: its journal goes too.
    pub async fn forget(&self, request: &str) -> IndexResult<()> {
        use fred::prelude::{KeysInterface, SortedSetsInterface};
        let fast = self.fast();
        let () = fast.del(self.key("occ", request)).await?;
        let () = fast.zrem(self.unsettled(), request).await?;
        Ok(())
    }

    /// Up to `limit` requests whose occurrences have waited longer than
    /// `age` for their status write: their replica died or lost the API
    /// server.
    pub async fn stale_unsettled(&self, age: Duration, limit: usize) -> IndexResult<Vec<String>> {
        let ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        Ok(self
            .occurrences_stale
            .evalsha_with_reload(
                &self.fast(),
                vec![self.unsettled()],
                vec![ms.to_string(), limit.to_string()],
            )
            .await?)
    }
}
