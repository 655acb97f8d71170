//! Protection of the signal endpoints (K-GW-7), applied before any payload
//! is read: a per-source-IP rate limit (which also bounds guessing tokens),
//! bearer-token authentication against static tokens and the API server's
//! TokenReview, a per-identity rate limit, and a deadline on the request.
//! Every refusal is an RFC 7807 problem; 401 carries `WWW-Authenticate`, 429
//! and 503 carry `Retry-After`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hashlink::LruCache;
use kubernaut_api::TokenReviewer;
use kubernaut_api::signal::sha256_hex;

use crate::metrics::Metrics;
use crate::problem::Problem;

/// How long a TokenReview answer is trusted: a revoked token stops working
/// within a minute, and a storm does not turn into a storm of reviews.
const REVIEW_TTL_OK: Duration = Duration::from_secs(60);
const REVIEW_TTL_DENIED: Duration = Duration::from_secs(10);
/// Bound on cached review answers (by token digest); past it the least
/// recently used goes. Unknown tokens are cached too (as refused), so a
/// sender cycling through made-up tokens costs one review each, and no
/// more than this much memory.
const REVIEW_CACHE_MAX: usize = 10_000;
/// TokenReviews in flight at once; past it a request is answered 503
/// rather than queueing on the API server.
const REVIEWS_IN_FLIGHT: usize = 32;
/// Rate-limiter keys not seen for a while are dropped this often.
const LIMITER_CLEANUP_EVERY: u64 = 10_000;

/// Requests per second and burst for one key.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// Who may post signals when tokens are reviewed by the API server.
#[derive(Clone)]
pub struct ReviewPolicy {
    pub reviewer: Arc<dyn TokenReviewer>,
    /// Usernames allowed, e.g. `system:serviceaccount:monitoring:alertmanager`.
    pub allowed_users: Vec<String>,
    pub allowed_groups: Vec<String>,
}

#[derive(Clone)]
pub struct ProtectionConfig {
    /// Off only on a closed test network; everything is then "anonymous".
    pub auth_enabled: bool,
    pub static_tokens: Vec<String>,
    pub review: Option<ReviewPolicy>,
    pub per_source_ip: Rate,
    pub per_identity: Rate,
    pub request_timeout: Duration,
    /// Proxies in front of the gateway: for a connection from one of
    /// them, the per-IP limit applies to the client X-Forwarded-For names
    /// (the nearest address not itself a trusted proxy). From anyone else
    /// the header is ignored: a client cannot choose its own address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl ProtectionConfig {
    /// No authentication, generous limits: for unit tests and benchmarks.
    pub fn open() -> Self {
        let big = Rate {
            per_second: NonZeroU32::MAX,
            burst: NonZeroU32::MAX,
        };
        Self {
            auth_enabled: false,
            static_tokens: Vec::new(),
            review: None,
            per_source_ip: big,
            per_identity: big,
            request_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
        }
    }
}

/// X-Forwarded-For entries looked at, nearest first: a longer chain is a
/// client making things up.
const MAX_FORWARDED_HOPS: usize = 16;

/// The address the per-IP limit counts: the peer, or, when the peer is a
/// trusted proxy, the nearest X-Forwarded-For address that is not one.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .take(MAX_FORWARDED_HOPS)
        .map_while(|h| h.parse().ok())
        .collect();
    hops.into_iter().find(|ip| !is_trusted(ip)).unwrap_or(peer)
}

/// The request's bearer token, if it carries a non-empty one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Why a request was refused before its payload was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    MissingToken,
    InvalidToken,
    Forbidden(String),
    ReviewUnavailable(String),
    RateLimited(Duration),
}

type Verdict = Result<String, Refusal>;

pub struct Protection {
    config: ProtectionConfig,
    /// SHA-256 of each static token: lookups compare digests, never the
    /// secret itself, so timing says nothing about a token's prefix.
    static_digests: HashMap<String, usize>,
    allowed_users: HashSet<String>,
    allowed_groups: HashSet<String>,
    reviews: Mutex<LruCache<String, (Instant, Verdict)>>,
    reviewing: tokio::sync::Semaphore,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_identity: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    seen: std::sync::atomic::AtomicU64,
}

fn quota(rate: Rate) -> Quota {
    Quota::per_second(rate.per_second).allow_burst(rate.burst)
}

impl Protection {
    pub fn new(config: ProtectionConfig) -> Self {
        let static_digests = config
            .static_tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (sha256_hex(t), i))
            .collect();
        let (allowed_users, allowed_groups) = match &config.review {
            Some(r) => (
                r.allowed_users.iter().cloned().collect(),
                r.allowed_groups.iter().cloned().collect(),
            ),
            None => Default::default(),
        };
        Self {
            per_ip: RateLimiter::keyed(quota(config.per_source_ip)),
            per_identity: RateLimiter::keyed(quota(config.per_identity)),
            config,
            static_digests,
            allowed_users,
            allowed_groups,
            reviews: Mutex::new(LruCache::new(REVIEW_CACHE_MAX)),
            reviewing: tokio::sync::Semaphore::new(REVIEWS_IN_FLIGHT),
            clock: DefaultClock::default(),
            seen: Default::default(),
        }
    }

    fn limit<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
    ) -> Result<(), Refusal> {
        limiter
            .check_key(key)
            .map_err(|not_until| Refusal::RateLimited(not_until.wait_time_from(self.clock.now())))
    }

    /// The caller's identity, or why it is refused.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Verdict {
        if !self.config.auth_enabled {
            return Ok("anonymous".into());
        }
        let token = bearer_token(headers).ok_or(Refusal::MissingToken)?;
        let digest = sha256_hex(token);
        if let Some(i) = self.static_digests.get(&digest) {
            return Ok(format!("static-token-{i}"));
        }
        let Some(policy) = &self.config.review else {
            return Err(Refusal::InvalidToken);
        };
        if let Some(cached) = self.cached_review(&digest) {
            return cached;
        }
        let Ok(_permit) = self.reviewing.try_acquire() else {
            return Err(Refusal::ReviewUnavailable(format!(
                "more than {REVIEWS_IN_FLIGHT} token reviews in flight"
            )));
        };
        let verdict = match policy.reviewer.review(token).await {
            Ok(None) => Err(Refusal::InvalidToken),
            Ok(Some(user)) => {
                let allowed = self.allowed_users.contains(&user.username)
                    || user.groups.iter().any(|g| self.allowed_groups.contains(g));
                if allowed {
                    Ok(user.username)
                } else {
                    Err(Refusal::Forbidden(user.username))
                }
            }
            // Not cached: the next request asks again.
            Err(e) => return Err(Refusal::ReviewUnavailable(e)),
        };
        let ttl = if verdict.is_ok() {
            REVIEW_TTL_OK
        } else {
            REVIEW_TTL_DENIED
        };
        self.reviews
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest, (Instant::now() + ttl, verdict.clone()));
        verdict
    }

    fn cached_review(&self, digest: &str) -> Option<Verdict> {
        let mut cache = self.reviews.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .get(digest)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, v)| v.clone())
    }

    /// Review answers held, for tests of the bound.
    pub fn cached_reviews(&self) -> usize {
        self.reviews
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The per-identity limit alone, for endpoints that authenticate the
    /// payload itself (SNS signatures) once it is read.
    pub fn limit_identity(&self, identity: &str) -> Result<(), Refusal> {
        self.limit(&self.per_identity, &identity.to_string())
    }

    /// Everything that happens before a payload is read. SNS cannot send a
    /// bearer token: its messages are authenticated by their signature, so
    /// for them only the per-IP limit applies here.
    pub async fn admit_signed(&self, ip: Option<IpAddr>) -> Result<(), Refusal> {
        self.tick();
        match ip {
            Some(ip) => self.limit(&self.per_ip, &ip),
            None => Ok(()),
        }
    }

    fn tick(&self) {
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % LIMITER_CLEANUP_EVERY == LIMITER_CLEANUP_EVERY - 1 {
            self.per_ip.retain_recent();
            self.per_identity.retain_recent();
        }
    }

    /// Everything that happens before a payload is read.
    pub async fn admit(&self, ip: Option<IpAddr>, headers: &HeaderMap) -> Verdict {
        self.tick();
        if let Some(ip) = ip {
            self.limit(&self.per_ip, &ip)?;
        }
        let identity = self.authenticate(headers).await?;
        self.limit(&self.per_identity, &identity)?;
        Ok(identity)
    }
}

fn retry_after(d: Duration) -> u32 {
    u32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or(u32::MAX)
        .max(1)
}

impl Refusal {
    fn metric_outcome(&self) -> &'static str {
        match self {
            Refusal::MissingToken | Refusal::InvalidToken => "unauthorized",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::ReviewUnavailable(_) => "error",
            Refusal::RateLimited(_) => "rate_limited",
        }
    }

    /// The refusal's answer, counted.
    pub(crate) fn respond(self, metrics: &Metrics, source: &'static str) -> Response {
        metrics.count(source, self.metric_outcome(), "");
        self.into_response()
    }

    fn into_response(self) -> Response {
        match self {
            Refusal::MissingToken | Refusal::InvalidToken => {
                let detail = if self == Refusal::MissingToken {
                    "a bearer token is required (Authorization: Bearer <token>)"
                } else {
                    "the bearer token is not valid"
                };
                let mut r =
                    Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail.to_string())
                        .into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"kubernaut\""),
                );
                r
            }
            Refusal::Forbidden(user) => Problem::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("{user} may not post signals"),
            )
            .into_response(),
            Refusal::ReviewUnavailable(e) => {
                tracing::warn!(error = %e, "TokenReview failed; asking the sender to retry");
                Problem::unavailable(5).into_response()
            }
            Refusal::RateLimited(wait) => {
                Problem::too_many_requests(retry_after(wait)).into_response()
            }
        }
    }
}

/// The source name of a signal endpoint path, for metrics.
pub(crate) fn source_of(path: &str) -> &'static str {
    match path.rsplit('/').next().unwrap_or("") {
        "alertmanager" => "alertmanager",
        "cloudwatch" => "cloudwatch",
        "kubernetes-event" => "kubernetes-event",
        "generic" => "generic",
        _ => "unknown",
    }
}

/// How a route's callers are admitted before the payload is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Bearer token, then the per-identity limit.
    Bearer,
    /// The payload authenticates itself (SNS signatures): only the per-IP
    /// limit here; the handler checks the rest once it has read the body.
    Signed,
}

/// axum middleware over the signal routes.
pub async fn middleware(
    State((protection, metrics, admission)): State<(Arc<Protection>, Metrics, Admission)>,
    req: Request,
    next: Next,
) -> Response {
    let source = source_of(req.uri().path());
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| client_ip(c.0.ip(), req.headers(), &protection.config.trusted_proxies));
    let admitted = match admission {
        Admission::Bearer => protection.admit(ip, req.headers()).await.map(drop),
        Admission::Signed => protection.admit_signed(ip).await,
    };
    if let Err(refusal) = admitted {
        return refusal.respond(&metrics, source);
    }
    let timeout = protection.config.request_timeout;
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            // Everything the intake does is idempotent: a re-send finds what
            // this attempt got done and counts the rest.
            metrics.count(source, "error", "timeout");
            tracing::warn!(
                ?timeout,
                source,
                "signal handling timed out; asking the sender to retry"
            );
            Problem::unavailable(5).into_response()
        }
    }
}
