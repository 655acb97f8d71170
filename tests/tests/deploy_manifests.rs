//! What `deploy/` ships, checked by the tools that will read it: every
//! kustomize overlay as the real API server would take it (server-side dry
//! run, with prometheus-operator's CRDs installed for the ServiceMonitor and
//! PrometheusRule), the alerting rules by `promtool check rules` and their
//! unit tests by `promtool test rules`, and the Alertmanager receiver
//! example by `amtool check-config`.

use std::process::Command;

use anyhow::{Context, ensure};
use kubernaut_e2e::{Stack, repo_root};

/// Runs a program in the repository's root; its standard output, or an
/// error with everything it printed.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .with_context(|| format!("running {program} (scripts/deps.sh installs it)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{program} {args:?} failed with {}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

fn scratch(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(kubernaut_e2e::unique(name));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The overlay rendered by `kubectl kustomize`, as the list of its objects.
fn render(overlay: &str) -> anyhow::Result<(String, Vec<serde_json::Value>)> {
    let yaml = run(
        "kubectl",
        &["kustomize", &format!("deploy/overlays/{overlay}")],
    )?;
    let objects = serde_norway::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).context("a rendered object"))
        .collect::<anyhow::Result<Vec<serde_json::Value>>>()?;
    Ok((yaml, objects))
}

fn find<'a>(objects: &'a [serde_json::Value], kind: &str) -> Option<&'a serde_json::Value> {
    objects.iter().find(|o| o["kind"] == kind)
}

#[test]
fn every_overlay_is_accepted_by_the_api_server() -> anyhow::Result<()> {
    let stack = Stack::get();
    stack.kubectl(&["apply", "-f", "tests/fixtures/prometheus-operator/"])?;
    stack.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    ])?;
    let overlays: Vec<String> = std::fs::read_dir(repo_root().join("deploy/overlays"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    ensure!(overlays.len() >= 2, "deploy/overlays holds {overlays:?}");
    let dir = scratch("overlays")?;
    for overlay in &overlays {
        let (yaml, objects) = render(overlay)?;
        for kind in [
            "CustomResourceDefinition",
            "Deployment",
            "Service",
            "NetworkPolicy",
            "ServiceMonitor",
            "PrometheusRule",
            "ValidatingWebhookConfiguration",
            "ConfigMap",
        ] {
            ensure!(find(&objects, kind).is_some(), "{overlay} has no {kind}");
        }
        // The local API server is Kubernetes 1.20, which serves budgets as
        // policy/v1beta1 only (policy/v1 came in 1.21, and v1beta1 is gone
        // since 1.25, so the manifests say v1); the two versions' fields
        // used here are the same.
        let served = yaml.replace(
            "apiVersion: policy/v1\nkind: PodDisruptionBudget",
            "apiVersion: policy/v1beta1\nkind: PodDisruptionBudget",
        );
        let file = dir.join(format!("{overlay}.yaml"));
        std::fs::write(&file, served)?;
        let file = file.to_string_lossy();
        let applied = stack
            .kubectl(&["apply", "--dry-run=server", "-f", &file])
            .with_context(|| format!("the {overlay} overlay"))?;
        ensure!(
            applied.lines().count() == objects.len()
                && applied.lines().all(|l| l.ends_with("(server dry run)")),
            "{overlay}: {} objects, and the API server said:\n{applied}",
            objects.len()
        );
    }

    // What differs, and matters: production keeps two of three replicas
    // through disruptions, on different nodes; dev runs one, without a
    // budget that would block every drain.
    let (_, production) = render("production")?;
    let deployment = find(&production, "Deployment").context("a Deployment")?;
    ensure!(deployment["spec"]["replicas"] == 3);
    let pdb = find(&production, "PodDisruptionBudget").context("production's budget")?;
    ensure!(pdb["spec"]["minAvailable"] == 2, "{pdb}");
    let anti = &deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        [0];
    ensure!(
        anti["topologyKey"] == "kubernetes.io/hostname",
        "{deployment}"
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    ensure!(
        container["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("registry.example.com/")),
        "{container}"
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        ensure!(container[probe].is_object(), "no {probe}: {container}");
    }
    ensure!(container["securityContext"]["readOnlyRootFilesystem"] == true);
    ensure!(deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 65532);

    let (_, dev) = render("dev")?;
    ensure!(find(&dev, "PodDisruptionBudget").is_none());
    ensure!(find(&dev, "Deployment").context("dev's Deployment")?["spec"]["replicas"] == 1);
    let secrets: Vec<&str> = dev
        .iter()
        .filter(|o| o["kind"] == "Secret")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    for referenced in ["kubernaut-database", "kubernaut-redis"] {
        ensure!(secrets.contains(&referenced), "dev's Secrets: {secrets:?}");
    }
    Ok(())
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests() -> anyhow::Result<()> {
    let dir = scratch("rules")?;
    kubernaut_e2e::prometheus_rule_file(&dir)?;
    let rules = dir.join("rules.yaml");
    let checked = run("promtool", &["check", "rules", &rules.to_string_lossy()])?;
    ensure!(checked.contains("SUCCESS"), "{checked}");
    let tests = dir.join("prometheusrule.test.yaml");
    std::fs::copy(
        repo_root().join("deploy/tests/prometheusrule.test.yaml"),
        &tests,
    )?;
    let tested = run("promtool", &["test", "rules", &tests.to_string_lossy()])?;
    ensure!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

#[test]
fn the_alertmanager_receiver_example_passes_amtool() -> anyhow::Result<()> {
    let checked = run(
        "amtool",
        &["check-config", "deploy/examples/alertmanager.yaml"],
    )?;
    ensure!(
        checked.contains("SUCCESS") && checked.contains("2 receivers"),
        "{checked}"
    );
    Ok(())
}
