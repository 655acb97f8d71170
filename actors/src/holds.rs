//! Routing holds (K-RR-8), computed from the cluster's requests. The
//! registry keeps [`Holds`] up to date from the request watch (every
//! request, whoever drives it), and a supervisor asks it before it starts
//! work on a target and again before it acts:
//!
//! - **consecutive failures**: after `consecutive_failures` remediations of
//!   a target failed in a row, the target is blocked for `failure_block`
//!   from the last failure; after that one new attempt is let through.
//! - **backoff**: after fewer failures in a row, the next attempt waits
//!   `backoff_base × 2^(n-1)`, capped at `backoff_max`, from the last one.
//! - **busy**: another request is working on the target (any live phase),
//!   or is waiting for it and came first. A request held busy re-checks
//!   when the target frees (the registry nudges it) and otherwise after
//!   its own backoff.
//! - **recently remediated**: the same action completed on the same target
//!   within `recently_remediated`; checked once the action is known, and the
//!   request is skipped.
//!
//! The **remediation budget** (in the spirit of medik8s's `minHealthy`)
//! bounds how much Kubernaut changes at once: requests executing per
//! namespace, and remediations started per minute over the cluster. A
//! request past it is escalated to a human (AwaitingApproval) instead of
//! acting; see [`Holds::over_budget`].
//!
//! Only requests that executed something count as failures or successes:
//! a request skipped, cancelled, or failed before acting says nothing about
//! the target. Storm requests are not per-target work and are not indexed.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use kubernaut_api::k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubernaut_api::{ObjectRef, Phase, RemediationRequest, RequestKey};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldSettings {
    pub recently_remediated: Duration,
    pub consecutive_failures: u32,
    pub failure_block: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for HoldSettings {
    fn default() -> Self {
        Self {
            recently_remediated: Duration::from_secs(300),
            consecutive_failures: 3,
            failure_block: Duration::from_secs(3600),
            backoff_base: Duration::from_secs(60),
            backoff_max: Duration::from_secs(600),
        }
    }
}

impl HoldSettings {
    /// `backoff_base × 2^n`, capped at `backoff_max`.
    pub fn backoff(&self, n: u32) -> Duration {
        self.backoff_base
            .saturating_mul(2u32.saturating_pow(n.min(20)))
            .min(self.backoff_max)
    }
}

/// What the index knows of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: RequestKey,
    pub created: Timestamp,
    pub phase: Phase,
    /// The chosen actions (`AnalysisStatus::action`), once analysed.
    pub action: Option<String>,
    /// Whether it got as far as executing.
    pub executed: bool,
    /// When its execution started.
    pub started: Option<Timestamp>,
    pub finished: Option<Timestamp>,
}

/// How much Kubernaut may change at once (`controller.budget`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Requests executing at once in one namespace.
    pub max_executing_per_namespace: usize,
    /// Remediations started in any minute, over the whole cluster.
    pub max_starts_per_minute: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_executing_per_namespace: 5,
            max_starts_per_minute: 30,
        }
    }
}

/// Why a request may not start yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldReason {
    /// The target failed too often in a row; an escalation.
    ConsecutiveFailures,
    /// The target failed recently; the next attempt waits.
    Backoff,
    /// Another request works on the target.
    TargetBusy,
}

impl HoldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::ConsecutiveFailures => "ConsecutiveFailures",
            HoldReason::Backoff => "Backoff",
            HoldReason::TargetBusy => "TargetBusy",
        }
    }
}

/// A hold on starting: why, until when, and what to tell the humans.
#[derive(Clone, Debug, PartialEq)]
pub struct Hold {
    pub reason: HoldReason,
    pub until: Timestamp,
    pub message: String,
}

/// The request asking whether it may start.
pub struct Asking<'a> {
    pub key: &'a RequestKey,
    pub created: Timestamp,
    pub target: &'a ObjectRef,
    /// How often it was held busy before (its own backoff).
    pub times_held: u32,
}

/// Requests by target (`kind/namespace/name`), and the target of each
/// request (to forget it when it is deleted).
#[derive(Default)]
pub struct Holds {
    by_target: DashMap<String, Vec<Entry>>,
    targets: DashMap<RequestKey, ObjectRef>,
    /// What the budget counts, kept as entries change: asking must not
    /// walk every request the watch shows (a decision per request would
    /// cost O(requests) in a cluster with thousands of them).
    budget: Mutex<BudgetCounts>,
}

/// The other side of [`Holds::over_budget`]: requests executing per
/// namespace, and execution starts by time (a multiset). Both change only
/// with an entry, so they hold exactly what a walk over the entries would
/// count.
#[derive(Default)]
struct BudgetCounts {
    executing: HashMap<String, usize>,
    starts: BTreeMap<Timestamp, usize>,
}

impl BudgetCounts {
    fn add(&mut self, e: &Entry) {
        if e.phase == Phase::Executing {
            *self.executing.entry(e.key.namespace.clone()).or_default() += 1;
        }
        if let Some(t) = e.started {
            *self.starts.entry(t).or_default() += 1;
        }
    }

    fn remove(&mut self, e: &Entry) {
        if e.phase == Phase::Executing
            && let Some(n) = self.executing.get_mut(&e.key.namespace)
        {
            *n -= 1;
            if *n == 0 {
                self.executing.remove(&e.key.namespace);
            }
        }
        if let Some(t) = e.started
            && let Some(n) = self.starts.get_mut(&t)
        {
            *n -= 1;
            if *n == 0 {
                self.starts.remove(&t);
            }
        }
    }
}

/// Whether `t` is within the minute up to `now` (`now` included).
fn in_last_minute(t: Timestamp, now: Timestamp) -> bool {
    t <= now && now.duration_since(t) < SignedDuration::from_secs(60)
}

pub fn target_key(t: &ObjectRef) -> String {
    format!("{}/{}/{}", t.kind, t.namespace, t.name)
}

fn request_key(rr: &RemediationRequest) -> RequestKey {
    RequestKey::new(
        rr.metadata.namespace.as_deref().unwrap_or_default(),
        rr.metadata.name.as_deref().unwrap_or_default(),
    )
}

impl Holds {
    /// Records the latest state of a request (from the watch).
    pub fn observe(&self, rr: &RemediationRequest) {
        if rr.spec.storm.is_some() {
            return;
        }
        // Borrowed, not cloned: this runs on every watch event.
        let status = rr.status.as_ref();
        let execution = status.and_then(|s| s.execution.as_ref());
        let entry = Entry {
            key: request_key(rr),
            created: rr
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
            phase: status.map(|s| s.phase).unwrap_or_default(),
            action: status
                .and_then(|s| s.analysis.as_ref())
                .map(|a| a.action.clone()),
            executed: execution.is_some(),
            started: execution.map(|e| e.started_at.0),
            finished: status.and_then(|s| s.completion_time.as_ref()).map(|t| t.0),
        };
        self.targets
            .insert(entry.key.clone(), rr.spec.target.clone());
        self.record(&rr.spec.target, entry);
    }

    fn record(&self, target: &ObjectRef, entry: Entry) {
        let mut list = self.by_target.entry(target_key(target)).or_default();
        let mut budget = self.budget();
        budget.add(&entry);
        match list.iter_mut().find(|e| e.key == entry.key) {
            Some(e) => {
                budget.remove(e);
                *e = entry;
            }
            None => list.push(entry),
        }
    }

    fn budget(&self) -> MutexGuard<'_, BudgetCounts> {
        // The counts are plain numbers: a panic elsewhere leaves them whole.
        self.budget.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry of `key`, if the watch has shown it.
    fn entry_of(&self, key: &RequestKey) -> Option<Entry> {
        let target = self.targets.get(key)?.clone();
        let list = self.by_target.get(&target_key(&target))?;
        list.iter().find(|e| e.key == *key).cloned()
    }

    /// Forgets a deleted request; its target, if it was known.
    pub fn forget(&self, request: &RequestKey) -> Option<ObjectRef> {
        let (_, target) = self.targets.remove(request)?;
        let key = target_key(&target);
        let now_empty = self.by_target.get_mut(&key).is_some_and(|mut list| {
            let mut budget = self.budget();
            list.retain(|e| {
                let gone = e.key == *request;
                if gone {
                    budget.remove(e);
                }
                !gone
            });
            list.is_empty()
        });
        if now_empty {
            self.by_target.remove_if(&key, |_, list| list.is_empty());
        }
        Some(target)
    }

    /// Why request `me` may not start executing now without a human: the
    /// budget's bound it would pass, or `None`. Counts every other request
    /// the watch shows (storm requests aside, which are approved by hand).
    ///
    /// O(starts in the last minute), which the budget itself bounds, not
    /// O(requests): the counts are kept as the watch changes entries.
    pub fn over_budget(&self, b: &Budget, me: &RequestKey, now: Timestamp) -> Option<String> {
        // Taken before the counts' lock: `record` holds a target's list
        // while it takes that lock, so the other order could deadlock.
        let mine = self.entry_of(me);
        let (mut executing, mut started) = {
            let counts = self.budget();
            let executing = counts.executing.get(&me.namespace).copied().unwrap_or(0);
            let from = now
                .checked_sub(SignedDuration::from_secs(60))
                .unwrap_or(now);
            let started: usize = counts
                .starts
                .range((Bound::Excluded(from), Bound::Included(now)))
                .map(|(_, n)| n)
                .sum();
            (executing, started)
        };
        // `me` does not count against itself.
        if let Some(m) = &mine {
            if m.phase == Phase::Executing {
                executing = executing.saturating_sub(1);
            }
            if m.started.is_some_and(|t| in_last_minute(t, now)) {
                started = started.saturating_sub(1);
            }
        }
        if executing >= b.max_executing_per_namespace {
            return Some(format!(
                "remediation budget: {executing} requests are executing in namespace {} (at most {})",
                me.namespace, b.max_executing_per_namespace
            ));
        }
        if started >= b.max_starts_per_minute {
            return Some(format!(
                "remediation budget: {started} remediations started in the last minute (at most {})",
                b.max_starts_per_minute
            ));
        }
        None
    }

    /// The requests recorded for a target.
    pub fn requests_for(&self, target: &ObjectRef) -> Vec<RequestKey> {
        self.by_target
            .get(&target_key(target))
            .map(|l| l.iter().map(|e| e.key.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether the request `me` may start work on its target now.
    pub fn before_start(&self, s: &HoldSettings, me: &Asking<'_>, now: Timestamp) -> Option<Hold> {
        let list = self.by_target.get(&target_key(me.target))?;
        let others: Vec<&Entry> = list.iter().filter(|e| e.key != *me.key).collect();
        let what = format!("{}/{}", me.target.kind, me.target.name);
        // The failure streak: executed, finished requests, newest first, up
        // to the last success.
        let mut settled: Vec<&&Entry> = others
            .iter()
            .filter(|e| e.executed && e.finished.is_some())
            .filter(|e| matches!(e.phase, Phase::Completed | Phase::Failed | Phase::TimedOut))
            .collect();
        settled.sort_by_key(|e| std::cmp::Reverse(e.finished));
        let streak = settled
            .iter()
            .take_while(|e| e.phase != Phase::Completed)
            .count() as u32;
        if let Some(last) = settled.first().and_then(|e| e.finished)
            && streak > 0
        {
            let hold = if streak >= s.consecutive_failures {
                Hold {
                    reason: HoldReason::ConsecutiveFailures,
                    until: plus(last, s.failure_block),
                    message: format!(
                        "the last {streak} remediations of {what} failed; it is blocked for {:?} after the last one",
                        s.failure_block
                    ),
                }
            } else {
                let wait = s.backoff(streak - 1);
                Hold {
                    reason: HoldReason::Backoff,
                    until: plus(last, wait),
                    message: format!(
                        "the last remediation of {what} failed ({streak} in a row); the next waits {wait:?}"
                    ),
                }
            };
            if hold.until > now {
                return Some(hold);
            }
        }
        let busy = others.iter().find(|e| match e.phase {
            Phase::Processing
            | Phase::Analyzing
            | Phase::AwaitingApproval
            | Phase::Executing
            | Phase::Verifying => true,
            // Waiting requests go in order of arrival.
            Phase::Pending | Phase::Blocked => (e.created, &e.key) < (me.created, me.key),
            _ => false,
        });
        busy.map(|e| Hold {
            reason: HoldReason::TargetBusy,
            until: plus(now, s.backoff(me.times_held)),
            message: format!("{what} is busy: request {} is {}", e.key, e.phase),
        })
    }

    /// Whether the same actions completed on `target` recently: the
    /// request that did it, and how long ago.
    pub fn recently_remediated(
        &self,
        s: &HoldSettings,
        me: &RequestKey,
        target: &ObjectRef,
        action: &str,
        now: Timestamp,
    ) -> Option<(RequestKey, Duration)> {
        let list = self.by_target.get(&target_key(target))?;
        list.iter()
            .filter(|e| e.key != *me && e.phase == Phase::Completed && e.executed)
            .filter(|e| e.action.as_deref() == Some(action))
            .filter_map(|e| Some((e, age(now, e.finished?))))
            .filter(|(_, ago)| *ago < s.recently_remediated)
            .min_by_key(|(_, ago)| *ago)
            .map(|(e, ago)| (e.key.clone(), ago))
    }
}

fn age(now: Timestamp, then: Timestamp) -> Duration {
    now.duration_since(then)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn entry(name: &str, created: i64, phase: Phase, finished: Option<i64>) -> Entry {
        Entry {
            key: RequestKey::parse(name).unwrap(),
            created: at(created),
            phase,
            action: Some("restart_pod".into()),
            executed: finished.is_some() || phase == Phase::Executing,
            started: None,
            finished: finished.map(at),
        }
    }

    #[test]
    fn the_budget_bounds_executing_requests_per_namespace_and_starts_per_minute() {
        let holds = Holds::default();
        let b = Budget {
            max_executing_per_namespace: 2,
            max_starts_per_minute: 3,
        };
        let me = RequestKey::new("shop", "me");
        let on = |name: &str| ObjectRef::new("Deployment", "shop", name);
        holds.record(
            &on("a"),
            Entry {
                started: Some(at(0)),
                ..entry("shop/a", 0, Phase::Executing, None)
            },
        );
        assert_eq!(holds.over_budget(&b, &me, at(10)), None);
        holds.record(
            &on("b"),
            Entry {
                started: Some(at(5)),
                ..entry("shop/b", 0, Phase::Executing, None)
            },
        );
        let why = holds.over_budget(&b, &me, at(10)).unwrap();
        assert!(
            why.contains("2 requests are executing in namespace shop"),
            "{why}"
        );
        assert_eq!(
            holds.over_budget(&b, &RequestKey::new("bank", "me"), at(10)),
            None,
            "another namespace has its own budget"
        );
        holds.record(
            &ObjectRef::new("Deployment", "bank", "c"),
            Entry {
                started: Some(at(8)),
                ..entry("bank/c", 0, Phase::Completed, Some(9))
            },
        );
        let why = holds
            .over_budget(&b, &RequestKey::new("bank", "me"), at(10))
            .unwrap();
        assert!(
            why.contains("3 remediations started in the last minute"),
            "{why}"
        );
        assert_eq!(
            holds.over_budget(&b, &RequestKey::new("bank", "me"), at(61)),
            None,
            "a minute later the starts are spent"
        );
    }

    /// What the budget counted before it kept counts: a walk over every
    /// entry. The kept counts must agree with it after any sequence of
    /// updates and deletions.
    fn walked(holds: &Holds, me: &RequestKey, now: Timestamp) -> (usize, usize) {
        let (mut executing, mut started) = (0, 0);
        for list in holds.by_target.iter() {
            for e in list.iter().filter(|e| e.key != *me) {
                if e.key.namespace == me.namespace && e.phase == Phase::Executing {
                    executing += 1;
                }
                if e.started.is_some_and(|t| in_last_minute(t, now)) {
                    started += 1;
                }
            }
        }
        (executing, started)
    }

    #[test]
    fn the_budget_counts_follow_updates_and_deletions_as_a_walk_would() {
        let holds = Holds::default();
        let b = Budget {
            max_executing_per_namespace: 1_000,
            max_starts_per_minute: 1_000,
        };
        let phases = [
            Phase::Pending,
            Phase::Executing,
            Phase::Verifying,
            Phase::Completed,
        ];
        // A fixed pseudo-random walk: requests move between phases, start
        // at various times, move between targets and are deleted.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let names: Vec<RequestKey> = (0..12)
            .map(|i| RequestKey::new(["shop", "bank"][i % 2], format!("r{i}")))
            .collect();
        for round in 0..400 {
            let key = &names[next(names.len() as u64) as usize];
            if next(6) == 0 {
                holds.forget(key);
            } else {
                let target = ObjectRef::new("Deployment", &key.namespace, &format!("t{}", next(3)));
                // A request keeps its target (the spec's); a new one may
                // take any.
                let target = holds.targets.get(key).map_or(target, |t| t.clone());
                holds.targets.insert(key.clone(), target.clone());
                let phase = phases[next(4) as usize];
                holds.record(
                    &target,
                    Entry {
                        key: key.clone(),
                        created: at(0),
                        phase,
                        action: None,
                        executed: phase != Phase::Pending,
                        started: (phase != Phase::Pending).then(|| at(next(120) as i64)),
                        finished: None,
                    },
                );
            }
            for me in [&names[0], &names[1], &RequestKey::new("shop", "other")] {
                let now = at(30 + next(90) as i64);
                let (executing, started) = walked(&holds, me, now);
                let tight = Budget {
                    max_executing_per_namespace: executing.max(1),
                    max_starts_per_minute: started.max(1),
                };
                let why = holds.over_budget(&tight, me, now);
                assert_eq!(
                    why.is_some(),
                    executing >= 1 || started >= 1,
                    "round {round}, {me} at {now}: walked {executing} executing, {started} started; {why:?}"
                );
                if let Some(why) = why {
                    assert!(
                        why.contains(&format!("{executing} requests are executing"))
                            || why.contains(&format!("{started} remediations started")),
                        "round {round}: walked {executing}/{started}; {why}"
                    );
                }
                assert_eq!(holds.over_budget(&b, me, now), None);
            }
        }
    }

    /// Asks for `shop/me` (created at 1000) with `others` on its target.
    fn check(others: &[Entry], now: i64) -> Option<Hold> {
        let holds = Holds::default();
        let target = ObjectRef::new("Deployment", "shop", "web");
        for e in others {
            holds.record(&target, e.clone());
        }
        let key = RequestKey::new("shop", "me");
        let me = Asking {
            key: &key,
            created: at(1000),
            target: &target,
            times_held: 0,
        };
        holds.before_start(&HoldSettings::default(), &me, at(now))
    }

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let s = HoldSettings::default();
        let secs: Vec<u64> = (0..6).map(|n| s.backoff(n).as_secs()).collect();
        assert_eq!(secs, [60, 120, 240, 480, 600, 600]);
        assert_eq!(s.backoff(u32::MAX).as_secs(), 600);
    }

    #[test]
    fn a_live_request_on_the_target_makes_it_busy() {
        for phase in [Phase::Processing, Phase::Executing, Phase::AwaitingApproval] {
            let hold = check(&[entry("shop/a", 2000, phase, None)], 3000).unwrap();
            assert_eq!(hold.reason, HoldReason::TargetBusy, "{phase}");
            assert_eq!(hold.until, at(3060));
        }
    }

    #[test]
    fn waiting_requests_go_in_order_of_arrival() {
        let older = entry("shop/a", 500, Phase::Pending, None);
        assert_eq!(
            check(&[older], 3000).unwrap().reason,
            HoldReason::TargetBusy
        );
        let newer = entry("shop/z", 1500, Phase::Blocked, None);
        assert_eq!(check(&[newer], 3000), None);
    }

    #[test]
    fn three_failures_in_a_row_block_for_an_hour_from_the_last() {
        let failed = [
            entry("shop/a", 0, Phase::Failed, Some(100)),
            entry("shop/b", 0, Phase::TimedOut, Some(200)),
            entry("shop/c", 0, Phase::Failed, Some(300)),
        ];
        let hold = check(&failed, 400).unwrap();
        assert_eq!(hold.reason, HoldReason::ConsecutiveFailures);
        assert_eq!(hold.until, at(300 + 3600));
        // After the hour, one attempt is let through.
        assert_eq!(check(&failed, 300 + 3600), None);
    }

    #[test]
    fn a_success_ends_the_streak_and_non_executed_requests_do_not_count() {
        let mut list = vec![
            entry("shop/a", 0, Phase::Failed, Some(100)),
            entry("shop/b", 0, Phase::Failed, Some(200)),
            entry("shop/ok", 0, Phase::Completed, Some(250)),
            entry("shop/c", 0, Phase::Failed, Some(300)),
        ];
        // Skipped without acting: neutral.
        list.push(Entry {
            executed: false,
            ..entry("shop/s", 0, Phase::Failed, Some(350))
        });
        let hold = check(&list, 320).unwrap();
        assert_eq!(hold.reason, HoldReason::Backoff);
        assert_eq!(hold.until, at(360), "one failure: 60 s");
        assert_eq!(check(&list, 360), None);
    }

    #[test]
    fn backoff_grows_with_the_streak() {
        let list = [
            entry("shop/a", 0, Phase::Failed, Some(100)),
            entry("shop/b", 0, Phase::Failed, Some(200)),
        ];
        assert_eq!(check(&list, 250).unwrap().until, at(320));
    }

    #[test]
    fn recently_remediated_needs_the_same_action_completed_within_the_window() {
        let holds = Holds::default();
        let s = HoldSettings::default();
        let target = ObjectRef::new("Deployment", "shop", "web");
        for e in [
            entry("shop/a", 0, Phase::Completed, Some(100)),
            Entry {
                action: Some("scale_deployment".into()),
                ..entry("shop/b", 0, Phase::Completed, Some(200))
            },
        ] {
            holds.record(&target, e);
        }
        let recent = |action: &str, now| {
            holds.recently_remediated(&s, &RequestKey::new("shop", "me"), &target, action, at(now))
        };
        assert_eq!(
            recent("restart_pod", 250),
            Some((RequestKey::new("shop", "a"), Duration::from_secs(150)))
        );
        assert_eq!(recent("restart_pod", 400), None, "outside 5 min");
        assert_eq!(recent("rollout_restart", 250), None, "another action");
        assert_eq!(
            holds.recently_remediated(
                &s,
                &RequestKey::new("shop", "a"),
                &target,
                "restart_pod",
                at(250)
            ),
            None,
            "a request is not its own history"
        );
    }
}
