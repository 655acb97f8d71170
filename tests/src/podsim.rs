//! A kubelet stand-in for the local stack, in the spirit of
//! kubernetes-sigs/kwok: the stack has an API server and a
//! controller-manager but no kubelet and no scheduler, so without this every
//! pod stays Pending and no health can be observed.
//!
//! What it simulates, for pods in namespaces labelled
//! [`ENABLED_LABEL`]`=true` only (so tests that want Pending pods keep them):
//! - a few Nodes (`podsim-0` …), Ready, with room for many pods;
//! - scheduling: an unbound pod is bound to a node through `pods/binding`;
//! - the kubelet's status writes, as [`Behaviour`] says from the image tag:
//!   Running and Ready; a crash loop with a rising `restartCount`
//!   (`CrashLoopBackOff`, last state `Error` or `OOMKilled`); Running but never
//!   Ready (a failing readiness probe); Ready only after a slow start;
//!   pods that are not restarted (`restartPolicy` Never or OnFailure) of a
//!   healthy image succeed after [`Sim::job_seconds`];
//! - graceful deletion: a pod marked for deletion is removed at once, as a
//!   kubelet does once its containers stopped.
//!
//! Not simulated: probes' timings, resource accounting, volumes, images,
//! node failures, init containers beyond being reported done.

use std::time::Duration;

use serde_json::{Value, json};

/// The namespace label that opts a namespace's pods in.
pub const ENABLED_LABEL: &str = "podsim.kubernaut.io/enabled";

/// What a pod's containers do, from the image tag's `-`-separated words:
/// `crashloop`, `oom`, `unready`, `slow` (optionally `slow-<seconds>`);
/// anything else is healthy. `registry.local/app:2.0-crashloop` crash-loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Healthy,
    /// Exits with an error every crash period.
    CrashLoop,
    /// Is killed for memory every crash period.
    OomLoop,
    /// Runs, and its readiness probe never passes.
    NeverReady,
    /// Runs, and is Ready after this long.
    SlowStart(Duration),
}

const SLOW_DEFAULT: Duration = Duration::from_secs(20);

impl Behaviour {
    pub fn of_image(image: &str) -> Behaviour {
        let image = image.split('@').next().unwrap_or(image);
        let last = image.rsplit('/').next().unwrap_or(image);
        let Some((_, tag)) = last.split_once(':') else {
            return Behaviour::Healthy;
        };
        let words: Vec<&str> = tag.split('-').collect();
        for (i, w) in words.iter().enumerate() {
            match *w {
                "crashloop" => return Behaviour::CrashLoop,
                "oom" => return Behaviour::OomLoop,
                "unready" => return Behaviour::NeverReady,
                "slow" => {
                    let secs = words.get(i + 1).and_then(|n| n.parse::<u64>().ok());
                    return Behaviour::SlowStart(secs.map_or(SLOW_DEFAULT, Duration::from_secs));
                }
                _ => {}
            }
        }
        Behaviour::Healthy
    }
}

/// The simulation's timings.
#[derive(Clone, Copy, Debug)]
pub struct Sim {
    /// A crash-looping container restarts this often.
    pub crash_period: Duration,
    /// A healthy pod that is not restarted succeeds after this long.
    pub job_seconds: Duration,
}

impl Default for Sim {
    fn default() -> Self {
        Sim {
            crash_period: Duration::from_secs(3),
            job_seconds: Duration::from_secs(2),
        }
    }
}

/// One container as the simulated kubelet reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub behaviour: Behaviour,
}

/// What the kubelet would report for a pod that has been running for
/// `age`, started at `started` (RFC 3339). Deterministic: the same inputs
/// give the same status, so a restart of the simulator rewrites nothing.
pub fn status(
    sim: &Sim,
    containers: &[Container],
    restarted: bool,
    age: Duration,
    started: &str,
    host_ip: &str,
    pod_ip: &str,
) -> Value {
    let mut all_ready = true;
    let mut succeeded = !restarted;
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let (ready, value, done) = container(sim, c, restarted, age, started);
            all_ready &= ready;
            succeeded &= done;
            value
        })
        .collect();
    let phase = if succeeded { "Succeeded" } else { "Running" };
    let ready = all_ready && !succeeded;
    let cond = |t: &str, ok: bool| {
        json!({"type": t, "status": if ok { "True" } else { "False" },
               "lastTransitionTime": started,
               "reason": if ok { Value::Null } else { json!("ContainersNotReady") }})
    };
    json!({
        "phase": phase,
        "hostIP": host_ip,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": started,
        "qosClass": "BestEffort",
        "conditions": [
            cond("Initialized", true),
            cond("Ready", ready),
            cond("ContainersReady", ready),
            cond("PodScheduled", true),
        ],
        "containerStatuses": statuses,
    })
}

fn container(
    sim: &Sim,
    c: &Container,
    restarted: bool,
    age: Duration,
    started: &str,
) -> (bool, Value, bool) {
    let id = format!("podsim://{}", c.name);
    let base = |ready: bool, restarts: u64, state: Value, last: Value| {
        json!({"name": c.name, "image": c.image, "imageID": format!("podsim://{}", c.image),
               "containerID": id, "ready": ready, "started": state.get("running").is_some(),
               "restartCount": restarts, "state": state, "lastState": last})
    };
    let running = json!({"running": {"startedAt": started}});
    match c.behaviour {
        Behaviour::Healthy if !restarted && age >= sim.job_seconds => {
            let done = json!({"terminated": {"exitCode": 0, "reason": "Completed",
                              "startedAt": started, "finishedAt": started}});
            (false, base(false, 0, done, json!({})), true)
        }
        Behaviour::Healthy => (true, base(true, 0, running, json!({})), false),
        Behaviour::NeverReady => (false, base(false, 0, running, json!({})), false),
        Behaviour::SlowStart(after) => {
            let ready = age >= after;
            (ready, base(ready, 0, running, json!({})), false)
        }
        Behaviour::CrashLoop | Behaviour::OomLoop => {
            let period = sim.crash_period.max(Duration::from_millis(100));
            let restarts = (age.as_millis() / period.as_millis()) as u64;
            if restarts == 0 {
                return (false, base(false, 0, running, json!({})), false);
            }
            let (reason, code) = if c.behaviour == Behaviour::OomLoop {
                ("OOMKilled", 137)
            } else {
                ("Error", 1)
            };
            let waiting = json!({"waiting": {"reason": "CrashLoopBackOff",
                "message": format!("back-off restarting failed container {}", c.name)}});
            let last = json!({"terminated": {"exitCode": code, "reason": reason,
                              "startedAt": started, "finishedAt": started}});
            (false, base(false, restarts, waiting, last), false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(image: &str) -> Vec<Container> {
        vec![Container {
            name: "app".into(),
            image: image.into(),
            behaviour: Behaviour::of_image(image),
        }]
    }

    fn at(image: &str, secs: u64, restarted: bool) -> Value {
        status(
            &Sim::default(),
            &one(image),
            restarted,
            Duration::from_secs(secs),
            "2026-12-01T00:00:00Z",
            "10.0.0.1",
            "10.244.0.1",
        )
    }

    fn ready(s: &Value) -> bool {
        s["conditions"][1]["status"] == "True"
    }

    #[test]
    fn the_tag_chooses_the_behaviour() {
        use Behaviour::*;
        assert_eq!(Behaviour::of_image("registry.local/app:1.0"), Healthy);
        assert_eq!(Behaviour::of_image("app"), Healthy);
        assert_eq!(Behaviour::of_image("localhost:5000/app"), Healthy);
        assert_eq!(Behaviour::of_image("r/app:2.0-crashloop"), CrashLoop);
        assert_eq!(Behaviour::of_image("r/app:oom"), OomLoop);
        assert_eq!(Behaviour::of_image("r/app:unready"), NeverReady);
        assert_eq!(
            Behaviour::of_image("r/app:slow"),
            SlowStart(Duration::from_secs(20))
        );
        assert_eq!(
            Behaviour::of_image("r/app:1-slow-5"),
            SlowStart(Duration::from_secs(5))
        );
        assert_eq!(Behaviour::of_image("r/app:crashloop@sha256:ab"), CrashLoop);
    }

    #[test]
    fn a_healthy_pod_is_ready_and_a_finished_job_succeeds() {
        let s = at("r/app:1.0", 0, true);
        assert_eq!(s["phase"], "Running");
        assert!(ready(&s));
        let job = at("r/job:1.0", 5, false);
        assert_eq!(job["phase"], "Succeeded");
        assert!(!ready(&job));
        assert_eq!(at("r/job:1.0", 1, false)["phase"], "Running");
    }

    #[test]
    fn a_crash_loop_restarts_more_as_time_passes() {
        let early = at("r/app:crashloop", 1, true);
        assert_eq!(early["containerStatuses"][0]["restartCount"], 0);
        let later = at("r/app:crashloop", 10, true);
        let c = &later["containerStatuses"][0];
        assert_eq!(c["restartCount"], 3);
        assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
        assert!(!ready(&later));
        let oom = at("r/app:oom", 4, true);
        assert_eq!(
            oom["containerStatuses"][0]["lastState"]["terminated"]["reason"],
            "OOMKilled"
        );
    }

    #[test]
    fn readiness_follows_the_probe() {
        assert!(!ready(&at("r/app:unready", 600, true)));
        assert!(!ready(&at("r/app:slow-5", 4, true)));
        assert!(ready(&at("r/app:slow-5", 5, true)));
    }
}
