//! Generated files in deploy/ must match their sources; regenerate with
//! `make crds` (the CRD, the generic webhook's schema and the ConfigMap of config/default.yaml).

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}"))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

#[test]
fn deploy_crd_matches_the_rust_types() {
    let generated = kubernaut_api::RemediationRequest::crd_yaml().expect("the CRD serialises");
    assert!(
        read("deploy/crds/remediationrequests.kubernaut.io.yaml") == generated,
        "deploy/crds/ is stale: run `make crds`"
    );
}

#[test]
fn published_generic_schema_matches_the_rust_types() {
    assert!(
        read("docs/generic-signal.schema.json") == kubernaut_gateway::generic::schema_json(),
        "docs/generic-signal.schema.json is stale: run `make crds`"
    );
}

#[test]
fn deploy_configmap_carries_the_default_config() {
    let cm: serde_norway::Value =
        serde_norway::from_str(&read("deploy/base/config.yaml")).expect("valid YAML");
    let embedded = cm["data"]["config.yaml"]
        .as_str()
        .expect("data.config.yaml");
    assert_eq!(
        embedded,
        read("config/default.yaml"),
        "deploy/base/config.yaml is stale"
    );
}

#[test]
fn the_controller_dashboard_uses_only_metrics_the_controller_exposes() {
    use kubernaut_actors::metrics::*;
    let mut registry = prometheus_client::registry::Registry::with_prefix("kubernaut");
    let m = Metrics::register(registry.sub_registry_with_prefix("controller"));
    // A family is only encoded once it has a child.
    let actor = m.actor(ActorKind::step);
    m.mailbox_depth.get_or_create(&actor).set(0);
    m.mailbox_wait.get_or_create(&actor).observe(0.0);
    m.handling.get_or_create(&actor).observe(0.0);
    m.handled.get_or_create(&actor).inc();
    m.restarts.get_or_create(&actor).inc();
    m.live.get_or_create(&actor).set(1);
    let phase = PhaseLabels { phase: "Executing" };
    m.supervisors_by_phase.get_or_create(&phase).set(1);
    let (from, to) = ("Executing", "Verifying");
    m.transitions
        .get_or_create(&TransitionLabels { from, to })
        .inc();
    let action = "restart_pod".to_string();
    m.actions
        .get_or_create(&ActionLabels {
            action,
            result: "succeeded",
        })
        .inc();
    m.stage_seconds
        .get_or_create(&StageLabels { stage: "analysis" })
        .observe(1.0);
    m.escalations
        .get_or_create(&StageLabels {
            stage: "ExecutingTimeout",
        })
        .inc();
    m.retention_deferred
        .get_or_create(&ReasonLabels {
            reason: "unconfirmed",
        })
        .inc();
    let provider = "openai";
    m.llm_calls
        .get_or_create(&LlmLabels {
            provider,
            outcome: "ok",
        })
        .inc();
    m.llm_seconds
        .get_or_create(&ProviderLabels { provider })
        .observe(1.0);
    m.llm_tokens
        .get_or_create(&TokenLabels {
            provider,
            kind: "prompt",
        })
        .inc();
    m.llm_breaker
        .get_or_create(&ProviderLabels { provider })
        .set(0);
    m.analyses.get_or_create(&PathLabels { path: "llm" }).inc();
    let reason = "timeout";
    m.fallbacks.get_or_create(&ReasonLabels { reason }).inc();
    let reason = "required";
    m.approvals.get_or_create(&ReasonLabels { reason }).inc();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
    let exposed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let dashboard = read("deploy/dashboards/controller.json");
    let used: std::collections::BTreeSet<&str> = dashboard
        .match_indices("kubernaut_controller_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    assert!(used.len() >= 10, "the dashboard's queries: {used:?}");
    for name in used {
        let family = ["_bucket", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            exposed.contains(&family),
            "the dashboard queries {name}, which the controller does not expose ({exposed:?})"
        );
    }
}
