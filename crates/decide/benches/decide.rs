//! What deciding costs a request in CPU, apart from any I/O: the approval
//! policy's evaluation (default policy, a notify-only and a restart
//! input) and a read of the action catalogue, each timed over N runs on
//! one thread. Prints the mean per call; asserts nothing.
//!
//! `cargo bench -p kubernaut-decide --bench decide -- 20000`

use std::hint::black_box;
use std::time::Instant;

use kubernaut_decide::approval::{ApprovalPolicy, DEFAULT_POLICY};
use serde_json::json;

fn time(what: &str, n: u32, mut f: impl FnMut()) {
    f();
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    let per = start.elapsed().as_secs_f64() / f64::from(n);
    println!("  {what:<44} {:>9.1} µs per call", per * 1e6);
}

fn main() {
    let n: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let policy = ApprovalPolicy::new("approval.rego", DEFAULT_POLICY).expect("the default policy");
    let input = |action: &str, risk: &str| {
        json!({
            "environment": "production", "priority": "P2", "decidedBy": "rules",
            "confidence": 1.0,
            "target": {"kind": "Deployment", "namespace": "shop", "name": "api"},
            "actions": [{"name": action, "risk": risk, "destructive": false}],
            "storm": false,
            "signal": {"name": "HighLatency", "severity": "warning", "source": "prometheus"},
        })
    };
    let notify = input("notify_only", "low");
    let restart = input("rollout_restart", "medium");
    println!("decide bench, N = {n}, one thread");
    time("approval policy, notify_only", n, || {
        black_box(policy.evaluate(black_box(&notify)));
    });
    time("approval policy, rollout_restart", n, || {
        black_box(policy.evaluate(black_box(&restart)));
    });
    time("the action catalogue, one action by name", n, || {
        black_box(
            kubernaut_cluster::catalogue()
                .iter()
                .find(|a| a.name == "notify_only")
                .map(|a| a.destructive),
        );
    });
}
