//! `controller:`: timeouts, holds, restarts, membership, retention and
//! fault injection.

use super::*;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Controller {
    pub verify_timeout_seconds: u64,
    pub restart: Restart,
    pub dry_run: bool,
    /// Supervise the requests of this namespace only; empty for all.
    #[serde(default)]
    pub watch_namespace: String,
    pub timeouts: TimeoutsConfig,
    /// K-RR-7: a replica whose membership Lease is older than this is dead.
    pub lease_duration_seconds: u64,
    pub lease_renew_seconds: u64,
    /// On shutdown, running workflows may finish within this.
    pub shutdown_grace_seconds: u64,
    /// How long a request's status that nothing waits for may wait for the
    /// next one, so that both go in one write.
    #[serde(default = "default_status_linger")]
    pub status_linger_millis: u64,
    /// A terminal request is deleted this long after it ended (K-RR-9).
    pub retention_seconds: u64,
    /// How often the janitor looks for expired requests.
    pub janitor_interval_seconds: u64,
    /// After this, a terminal request's missing audit records are rebuilt
    /// from its status.
    pub audit_grace_seconds: u64,
    pub holds: HoldsConfig,
    pub storm: StormPolicyConfig,
    pub budget: BudgetConfig,
    /// Off unless set: the next `times` actors of one kind panic.
    #[serde(default)]
    pub fault_injection: Option<FaultInjection>,
}

fn default_status_linger() -> u64 {
    kubernaut_actors::supervisor::status::LINGER.as_millis() as u64
}

/// K-RR-4, in seconds.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsConfig {
    pub request_seconds: u64,
    pub processing_seconds: u64,
    pub analyzing_seconds: u64,
    pub approval_seconds: u64,
    pub executing_seconds: u64,
    pub verifying_seconds: u64,
}

impl TimeoutsConfig {
    pub fn timeouts(&self) -> Timeouts {
        let s = Duration::from_secs;
        let mut t = Timeouts::default();
        t.request = s(self.request_seconds);
        t.with(Phase::Processing, s(self.processing_seconds))
            .with(Phase::Analyzing, s(self.analyzing_seconds))
            .with(Phase::AwaitingApproval, s(self.approval_seconds))
            .with(Phase::Executing, s(self.executing_seconds))
            .with(Phase::Verifying, s(self.verifying_seconds))
    }
}

/// How an approved storm runs over its targets.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StormPolicyConfig {
    pub max_parallel: u32,
    pub max_failure_ratio: f64,
}

/// How much Kubernaut changes at once before it asks a human.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetConfig {
    pub max_executing_per_namespace: usize,
    pub max_starts_per_minute: usize,
}

impl BudgetConfig {
    pub fn budget(&self) -> kubernaut_actors::holds::Budget {
        kubernaut_actors::holds::Budget {
            max_executing_per_namespace: self.max_executing_per_namespace,
            max_starts_per_minute: self.max_starts_per_minute,
        }
    }
}

/// Routing holds (K-RR-8), in seconds.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HoldsConfig {
    pub recently_remediated_seconds: u64,
    pub consecutive_failures: u32,
    pub failure_block_seconds: u64,
    pub backoff_base_seconds: u64,
    pub backoff_max_seconds: u64,
}

impl HoldsConfig {
    pub fn settings(&self) -> kubernaut_actors::holds::HoldSettings {
        let s = Duration::from_secs;
        kubernaut_actors::holds::HoldSettings {
            recently_remediated: s(self.recently_remediated_seconds),
            consecutive_failures: self.consecutive_failures.max(1),
            failure_block: s(self.failure_block_seconds),
            backoff_base: s(self.backoff_base_seconds),
            backoff_max: s(self.backoff_max_seconds),
        }
    }
}

/// The restart policy of every level of the supervision tree.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Restart {
    pub max_restarts: u32,
    pub first_backoff_millis: u64,
    pub max_backoff_seconds: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjection {
    /// An actor kind: processing, analysis, workflow, step, verification,
    /// membership.
    pub panic_in: String,
    pub times: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Logging {
    /// `text` or `json`.
    pub format: String,
    pub level: String,
}

impl Controller {
    pub fn verify_timeout(&self) -> Duration {
        Duration::from_secs(self.verify_timeout_seconds)
    }

    pub fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy {
            max_restarts: self.restart.max_restarts,
            first_backoff: Duration::from_millis(self.restart.first_backoff_millis),
            max_backoff: Duration::from_secs(self.restart.max_backoff_seconds),
        }
    }

    pub fn chaos(&self) -> anyhow::Result<Chaos> {
        let Some(f) = &self.fault_injection else {
            return Ok(Chaos::default());
        };
        let kind = match f.panic_in.as_str() {
            "processing" => ActorKind::processing,
            "analysis" => ActorKind::analysis,
            "workflow" => ActorKind::workflow,
            "step" => ActorKind::step,
            "verification" => ActorKind::verification,
            "membership" => ActorKind::membership,
            other => anyhow::bail!(
                "controller.faultInjection.panicIn: {other:?} is not one of processing, analysis, workflow, step, verification, membership"
            ),
        };
        Ok(Chaos::panics(kind, f.times))
    }
}
