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
