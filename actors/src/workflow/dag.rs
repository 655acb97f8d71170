//! The workflow's scheduling rules (K-EX-1) as plain functions over the
//! steps' states: which steps start now, which are skipped, when the run is
//! over, when a failure ratio stops it, and in which order completed steps
//! are undone. The workflow actor applies them; the tests below pin them.

use kubernaut_api::StepPhase;
use kubernaut_api::workflow::Workflow;

/// A workflow's shape, by step index.
#[derive(Clone, Debug)]
pub struct Dag {
    deps: Vec<Vec<usize>>,
    rollback: Vec<bool>,
    continue_on_failure: Vec<bool>,
    max_parallel: Option<usize>,
    max_failure_ratio: Option<f64>,
}

/// What to do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub start: Vec<usize>,
    pub skip: Vec<usize>,
    /// Nothing runs and every step has started or was skipped.
    pub finished: bool,
}

impl Dag {
    /// The shape of a workflow already validated (every dependency names
    /// a step).
    pub fn of(w: &Workflow) -> Self {
        let index = |id: &str| w.steps.iter().position(|s| s.id == id);
        Self {
            deps: w
                .steps
                .iter()
                .map(|s| s.depends_on.iter().filter_map(|d| index(d)).collect())
                .collect(),
            rollback: w.steps.iter().map(|s| s.rollback).collect(),
            continue_on_failure: w.steps.iter().map(|s| s.continue_on_failure).collect(),
            max_parallel: w.max_parallel.map(|m| m as usize),
            max_failure_ratio: w.max_failure_ratio,
        }
    }

    pub fn len(&self) -> usize {
        self.deps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    /// Whether step `i` ending in `state` fails the workflow.
    pub fn fails(&self, i: usize, state: StepPhase) -> bool {
        state == StepPhase::Failed && !self.continue_on_failure[i]
    }

    /// The steps to start and to skip, given which have started, the
    /// settled states, how many run, and whether the workflow has failed.
    /// A step starts once every dependency succeeded (and within
    /// `maxParallel`); a dependency that did not succeed skips it; once the
    /// workflow failed, nothing new starts and the rest is skipped when
    /// nothing runs any more.
    pub fn plan(
        &self,
        started: &[bool],
        states: &[Option<StepPhase>],
        mut running: usize,
        failed: bool,
    ) -> Plan {
        let mut plan = Plan::default();
        let mut started = started.to_vec();
        for (i, deps) in self.deps.iter().enumerate() {
            if started[i] {
                continue;
            }
            let deps: Vec<Option<StepPhase>> = deps.iter().map(|d| states[*d]).collect();
            let blocked = deps.iter().any(|d| matches!(d, Some(s) if !s.succeeded()));
            if failed || blocked {
                if failed && running > 0 && !blocked {
                    continue;
                }
                started[i] = true;
                plan.skip.push(i);
                continue;
            }
            let full = self.max_parallel.is_some_and(|max| running >= max);
            if deps.iter().all(Option::is_some) && !full {
                started[i] = true;
                running += 1;
                plan.start.push(i);
            }
        }
        plan.finished = running == 0 && started.iter().all(|s| *s);
        plan
    }

    /// Why the failure ratio stops the workflow, once more than its share
    /// of the settled steps failed.
    pub fn stopped(&self, states: &[Option<StepPhase>]) -> Option<String> {
        let ratio = self.max_failure_ratio?;
        let settled: Vec<StepPhase> = states
            .iter()
            .flatten()
            .copied()
            .filter(|s| {
                matches!(
                    s,
                    StepPhase::Succeeded | StepPhase::AlreadyDone | StepPhase::Failed
                )
            })
            .collect();
        let failed = settled.iter().filter(|s| **s == StepPhase::Failed).count();
        (failed as f64 > ratio * settled.len() as f64).then(|| {
            format!(
                "stopped after {failed} of {} settled steps failed (more than {:.0}%)",
                settled.len(),
                ratio * 100.0
            )
        })
    }

    /// The steps to undo after a failure, newest completion first: those
    /// marked `rollback` that succeeded.
    pub fn rollback_order(
        &self,
        completion_order: &[usize],
        states: &[Option<StepPhase>],
    ) -> Vec<usize> {
        completion_order
            .iter()
            .rev()
            .copied()
            .filter(|i| self.rollback[*i] && states[*i] == Some(StepPhase::Succeeded))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StepPhase::*;
    use kubernaut_api::workflow::Step;

    fn step(id: &str, deps: &[&str]) -> Step {
        serde_json::from_value(serde_json::json!({
            "id": id, "action": "notify_only", "dependsOn": deps
        }))
        .unwrap()
    }

    fn dag(steps: Vec<Step>) -> Dag {
        Dag::of(&Workflow {
            steps,
            ..Default::default()
        })
    }

    #[test]
    fn independent_steps_start_together_and_dependants_wait() {
        let d = dag(vec![step("a", &[]), step("b", &[]), step("c", &["a", "b"])]);
        let p = d.plan(&[false; 3], &[None; 3], 0, false);
        assert_eq!(p.start, vec![0, 1]);
        assert!(!p.finished);
        let p = d.plan(
            &[true, true, false],
            &[Some(Succeeded), None, None],
            1,
            false,
        );
        assert!(p.start.is_empty(), "c waits for b");
        let p = d.plan(
            &[true, true, false],
            &[Some(Succeeded), Some(AlreadyDone), None],
            0,
            false,
        );
        assert_eq!(p.start, vec![2], "already done counts as succeeded");
        let p = d.plan(&[true; 3], &[Some(Succeeded); 3], 0, false);
        assert!(p.finished);
    }

    #[test]
    fn max_parallel_bounds_what_starts() {
        let mut w = Workflow {
            steps: vec![step("a", &[]), step("b", &[]), step("c", &[])],
            ..Default::default()
        };
        w.max_parallel = Some(2);
        let d = Dag::of(&w);
        assert_eq!(d.plan(&[false; 3], &[None; 3], 0, false).start, vec![0, 1]);
        let p = d.plan(&[true, true, false], &[Some(Failed), None, None], 1, false);
        assert_eq!(p.start, vec![2], "a failed step frees its slot");
    }

    #[test]
    fn a_failed_dependency_skips_its_dependants_at_once() {
        let d = dag(vec![step("a", &[]), step("b", &["a"]), step("c", &[])]);
        let p = d.plan(&[true, false, true], &[Some(Failed), None, None], 1, false);
        assert_eq!(p.skip, vec![1]);
        assert!(p.start.is_empty() && !p.finished, "c still runs");
    }

    #[test]
    fn after_a_failure_nothing_starts_and_the_rest_is_skipped_once_nothing_runs() {
        let d = dag(vec![step("a", &[]), step("b", &[]), step("c", &[])]);
        let states = [Some(Failed), None, None];
        let p = d.plan(&[true, true, false], &states, 1, true);
        assert!(
            p.start.is_empty() && p.skip.is_empty(),
            "c waits while b runs"
        );
        let p = d.plan(
            &[true, true, false],
            &[Some(Failed), Some(Succeeded), None],
            0,
            true,
        );
        assert_eq!(p.skip, vec![2]);
        assert!(p.finished);
    }

    #[test]
    fn only_a_failure_without_continue_on_failure_fails_the_workflow() {
        let mut s = step("a", &[]);
        s.continue_on_failure = true;
        let d = dag(vec![s, step("b", &[])]);
        assert!(!d.fails(0, Failed));
        assert!(d.fails(1, Failed));
        assert!(!d.fails(1, Skipped));
    }

    #[test]
    fn the_failure_ratio_stops_past_its_share_of_settled_steps() {
        let mut w = Workflow {
            steps: (0..4).map(|i| step(&format!("s{i}"), &[])).collect(),
            ..Default::default()
        };
        w.max_failure_ratio = Some(0.5);
        let d = Dag::of(&w);
        assert_eq!(
            d.stopped(&[Some(Failed), Some(Succeeded), None, None]),
            None
        );
        let why = d.stopped(&[Some(Failed), Some(Failed), Some(Succeeded), Some(Skipped)]);
        assert_eq!(
            why.as_deref(),
            Some("stopped after 2 of 3 settled steps failed (more than 50%)")
        );
        assert_eq!(dag(vec![step("a", &[])]).stopped(&[Some(Failed)]), None);
    }

    #[test]
    fn rollback_undoes_succeeded_rollback_steps_newest_first() {
        let mut steps: Vec<Step> = (0..4).map(|i| step(&format!("s{i}"), &[])).collect();
        for i in [0, 1, 3] {
            steps[i].rollback = true;
        }
        let d = dag(steps);
        let states = [
            Some(Succeeded),
            Some(Succeeded),
            Some(Succeeded),
            Some(Failed),
        ];
        assert_eq!(d.rollback_order(&[1, 0, 2, 3], &states), vec![0, 1]);
    }
}
