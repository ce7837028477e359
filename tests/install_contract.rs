//! deploy/ against the code: ports, paths, config keys and RBAC must agree with what the binary
//! serves and watches. (.ci/install-check validates the manifests against Kubernetes schemas.)

use std::path::Path;

use clap::Parser;
use serde_json::Value;

use archgate::check::parse_documents;
use archgate::cli::{Cli, Command};
use archgate::config::{self, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, PlatformSource, Settings};
use archgate::server::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH, VALIDATE_PATH};

fn docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new("deploy").join(path)).unwrap();
    parse_documents(&text).unwrap()
}

fn port(addr: &str) -> i64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn one(docs: &[Value], kind: &str) -> Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
        .clone()
}

#[test]
fn ports_and_paths_match_the_server() {
    let deployment = one(&docs("base/deployment.yaml"), "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let ports: Vec<(String, i64)> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(
        ports.contains(&("webhook".into(), port(DEFAULT_LISTEN))),
        "{ports:?}"
    );
    assert!(
        ports.contains(&("admin".into(), port(DEFAULT_ADMIN_LISTEN))),
        "{ports:?}"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], READYZ_PATH);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], HEALTHZ_PATH);
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"],
        METRICS_PATH
    );

    let service = one(&docs("base/service.yaml"), "Service");
    let sp = &service["spec"]["ports"][0];
    assert_eq!(sp["port"], 443);
    assert_eq!(sp["targetPort"], "webhook");

    let webhook = one(
        &docs("base/validatingwebhookconfiguration.yaml"),
        "ValidatingWebhookConfiguration",
    );
    let w = &webhook["webhooks"][0];
    assert_eq!(w["clientConfig"]["service"]["path"], VALIDATE_PATH);
    assert_eq!(w["clientConfig"]["service"]["port"], 443);
    assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["timeoutSeconds"], 10);
    assert_eq!(w["matchPolicy"], "Equivalent");
    // A Pod's images are mutable: an UPDATE can put an image on nodes it lacks; a pending
    // Tekton run can be edited, and starts when released.
    let operations = |group: &str, resource: &str| -> Vec<Value> {
        let rules = w["rules"].as_array().unwrap();
        let rule = rules.iter().find(|r| {
            r["apiGroups"] == serde_json::json!([group])
                && r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
        });
        rule.unwrap_or_else(|| panic!("no rule for {resource}"))["operations"]
            .as_array()
            .unwrap()
            .clone()
    };
    assert_eq!(operations("", "pods"), ["CREATE", "UPDATE"]);
    assert_eq!(operations("", "pods/ephemeralcontainers"), ["UPDATE"]);
    for run in ["pipelineruns", "taskruns"] {
        assert_eq!(operations("tekton.dev", run), ["CREATE", "UPDATE"], "{run}");
    }
    let rules = w["rules"].to_string();
    for resource in [
        "pods",
        "pods/ephemeralcontainers",
        "deployments",
        "cronjobs",
        "pipelineruns",
        "taskruns",
    ] {
        assert!(
            rules.contains(&format!("\"{resource}\"")),
            "webhook rules lack {resource}: {rules}"
        );
    }
}

#[test]
fn shipped_config_files_are_valid_settings() {
    for path in [
        "deploy/base/config.yaml",
        "deploy/components/pull-secrets/config.yaml",
    ] {
        let file = config::read_file(Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
        assert!(file.tls_cert.is_some(), "{path}");
        let argv = ["archgate", "serve", "--config", path];
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        let settings = Settings::resolve(&args).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(settings.platforms, PlatformSource::Auto, "{path}");
        assert!(
            settings.deadline.as_secs() < 10,
            "{path}: deadline must stay under timeoutSeconds"
        );
        assert_eq!(settings.listen.port() as i64, port(DEFAULT_LISTEN));
    }
}

#[test]
fn rbac_grants_what_the_code_watches_and_nothing_to_write() {
    let rbac = docs("base/rbac.yaml");
    let role = one(&rbac, "ClusterRole");
    let rules = role["rules"].as_array().unwrap();
    let grants = |resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == resource)
                && r["verbs"].as_array().unwrap().iter().any(|v| v == verb)
        })
    };
    for resource in [
        "nodes",
        "namespaces",
        "pipelines",
        "tasks",
        "clustertasks",
        "stepactions",
    ] {
        assert!(
            grants(resource, "list") && grants(resource, "watch"),
            "{resource}"
        );
    }
    // Pull credentials (Secrets, and ServiceAccounts for the secrets they carry) are watched
    // only with --pull-secrets, so only the opt-in overlay grants them.
    for resource in ["secrets", "serviceaccounts"] {
        assert!(
            !grants(resource, "list"),
            "{resource} only in the opt-in overlay"
        );
    }
    for rule in rules {
        for verb in rule["verbs"].as_array().unwrap() {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str().unwrap()),
                "write verb {verb}"
            );
        }
    }
    let extra = docs("components/pull-secrets/rbac.yaml");
    let text = serde_json::to_string(&extra).unwrap();
    assert!(
        text.contains("\"secrets\"") && text.contains("\"serviceaccounts\""),
        "the pull-secrets overlay grants secrets and serviceaccounts: {text}"
    );
}

#[test]
fn the_placement_webhook_calls_the_mutate_path_for_pods_at_create() {
    let webhook = one(
        &docs("components/placement/mutatingwebhookconfiguration.yaml"),
        "MutatingWebhookConfiguration",
    );
    let w = &webhook["webhooks"][0];
    assert_eq!(
        w["clientConfig"]["service"]["path"],
        archgate::mutation::MUTATE_PATH
    );
    assert_eq!(
        w["rules"],
        serde_json::json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
            "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert_eq!(w["reinvocationPolicy"], "IfNeeded");
    assert_eq!(w["sideEffects"], "None");
}
