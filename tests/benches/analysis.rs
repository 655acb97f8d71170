//! Analysis latency with the local LLM (issue 6): N requests analysed one
//! after another by an in-process control plane whose analysis asks the
//! real llama.cpp server (scripts/llm.sh, Gemma 3 270M). Each request's
//! `status.analysis.elapsedMillis` (context gathering, every attempt) is
//! collected; p50, p95 and max are printed with the path that decided. It
//! asserts nothing.
//!
//!   cargo bench -p kubernaut-e2e --bench analysis -- [N]
//!
//! N defaults to 20. One at a time, so that the figures are the analysis
//! and not the queue on a single-slot server.

use std::time::Duration;

use kube::Api;
use kubernaut_api::RemediationRequest;
use kubernaut_e2e::{
    Stack, control_plane, create_request, deployments, eventually, llm_overrides, llm_server,
    managed_namespace,
};
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let (url, model) = llm_server()?;
    let ns = managed_namespace(&admin, "bench-analysis", "staging").await?;
    let targets = deployments(&admin, &ns, "svc", n, 1).await?;
    let o = llm_overrides(&url, &model);
    let o: Vec<(&str, &str)> = o.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let rules = json!([{ "signal": "BenchErrorRate", "action": "notify_only" }]);
    let running = control_plane(stack, &ns, &o, rules).await?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    let mut samples: Vec<(u64, String, u32)> = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let name = create_request(&admin, "BenchErrorRate", target, false).await?;
        let a = eventually("the analysis", Duration::from_secs(600), || async {
            Ok(api.get(&name).await?.status.and_then(|s| s.analysis))
        })
        .await?;
        println!(
            "  {i:>3}: {:>6} ms  {:<5} attempts {}  {}",
            a.elapsed_millis, a.decided_by, a.attempts, a.action
        );
        samples.push((a.elapsed_millis, a.decided_by.to_string(), a.attempts));
    }
    running.shutdown().await?;
    let mut ms: Vec<u64> = samples.iter().map(|s| s.0).collect();
    ms.sort_unstable();
    let pct = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
    let llm = samples.iter().filter(|s| s.1 == "llm").count();
    let first = samples.iter().filter(|s| s.1 == "llm" && s.2 == 1).count();
    println!(
        "analysis latency over {n} requests: p50 {} ms, p95 {} ms, max {} ms; decided by the LLM {llm}/{n} ({first} on the first attempt), by the rules {}",
        pct(0.50),
        pct(0.95),
        pct(1.0),
        n - llm
    );
    Ok(())
}
