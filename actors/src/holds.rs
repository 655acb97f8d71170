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
        let status = rr.status.clone().unwrap_or_default();
        let entry = Entry {
            key: request_key(rr),
            created: rr
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
            phase: status.phase,
            action: status.analysis.map(|a| a.action),
            executed: status.execution.is_some(),
            started: status.execution.as_ref().map(|e| e.started_at.0),
            finished: status.completion_time.map(|t| t.0),
        };
        self.targets
            .insert(entry.key.clone(), rr.spec.target.clone());
        self.record(&rr.spec.target, entry);
    }

    fn record(&self, target: &ObjectRef, entry: Entry) {
        let mut list = self.by_target.entry(target_key(target)).or_default();
        match list.iter_mut().find(|e| e.key == entry.key) {
            Some(e) => *e = entry,
            None => list.push(entry),
        }
    }

    /// Forgets a deleted request; its target, if it was known.
    pub fn forget(&self, request: &RequestKey) -> Option<ObjectRef> {
        let (_, target) = self.targets.remove(request)?;
        let key = target_key(&target);
        let now_empty = self.by_target.get_mut(&key).is_some_and(|mut list| {
            list.retain(|e| e.key != *request);
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
    pub fn over_budget(&self, b: &Budget, me: &RequestKey, now: Timestamp) -> Option<String> {
        let minute = SignedDuration::from_secs(60);
        let (mut executing, mut started) = (0usize, 0usize);
        for list in self.by_target.iter() {
            for e in list.iter().filter(|e| e.key != *me) {
                if e.key.namespace == me.namespace && e.phase == Phase::Executing {
                    executing += 1;
                }
                if e.started
                    .is_some_and(|t| t <= now && now.duration_since(t) < minute)
                {
                    started += 1;
                }
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
