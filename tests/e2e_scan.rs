//! `archgate scan` and `archgate check --platform auto` (issue 16) against a real kube-apiserver
//! (with etcd) on 127.0.0.1 and a real registry: a cluster with an amd64 and an arm64 Node and a
//! few broken workloads, scanned as the built binary, its output compared line by line.
//!
//! Needs the binaries `.ci/kube-apiserver` installs, as tests/e2e.rs does (`.ci/test` sets
//! ARCHGATE_KUBE_BIN, and the tier then fails rather than skips). There is no kubelet: the pod
//! "running" on the wrong node is a Pod bound with `nodeName` whose status subresource the test
//! writes, as a kubelet would after pulling.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use common::apiserver::{Crd, Stage, TEKTON_CRDS};

struct World(Stage);

/// The stage's registries, images and control plane, as `w.plane`, `w.arm`, ...
impl std::ops::Deref for World {
    type Target = Stage;
    fn deref(&self) -> &Stage {
        &self.0
    }
}

impl World {
    fn apply(&self, object: &Value) {
        self.plane
            .must(&["apply", "-f", "-"], Some(&object.to_string()));
    }

    /// The built binary, reading the cluster through `kubeconfig`.
    fn archgate(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_archgate"));
        command
            .args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--insecure-registry", self.registry.host()])
            .arg("--registry-ca")
            .arg(self.private.ca_path())
            // Nothing here may leave the machine, not even through a proxy from the environment.
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("KUBECONFIG");
        command.output().expect("run archgate")
    }

    fn scan(&self, args: &[&str]) -> Output {
        let mut all = vec!["scan"];
        all.extend(args);
        self.archgate(&self.plane.kubeconfig, &all)
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn node(name: &str, arch: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/os": "linux", "kubernetes.io/arch": arch}},
        "spec": {},
    })
}

fn namespace(name: &str, mode: Option<&str>) -> Value {
    let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    if let Some(mode) = mode {
        ns["metadata"]["labels"] = json!({"archgate.io/mode": mode});
    }
    ns
}

/// A pod spec running `image` in a container "app".
fn pod_spec(image: &str) -> Value {
    json!({"containers": [{"name": "app", "image": image}], "restartPolicy": "Always"})
}

fn owner(api_version: &str, kind: &str, name: &str) -> Value {
    json!([{"apiVersion": api_version, "kind": kind, "name": name,
            "uid": "00000000-0000-0000-0000-000000000001", "controller": true}])
}

fn deployment(namespace: &str, name: &str, image: &str, arch: Option<&str>) -> Value {
    let mut spec = pod_spec(image);
    if let Some(arch) = arch {
        spec["nodeSelector"] = json!({"kubernetes.io/arch": arch});
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": spec}},
    })
}

async fn world() -> Option<World> {
    Stage::start("e2e scan tier").await.map(World)
}

/// The mixed cluster and its broken workloads; see each object for what it tests.
fn populate(w: &World) {
    let (arm, multi, amd) = (w.arm.reference(), w.multi.reference(), w.amd.reference());
    w.apply(&node("amd-1", "amd64"));
    w.apply(&node("arm-1", "arm64"));
    for (name, mode) in [("shop", None), ("quiet", Some("off")), ("infra", None)] {
        w.apply(&namespace(name, mode));
    }
    // Pinned to amd64 with an arm64-only image: enforce would deny it.
    w.apply(&deployment("shop", "web", &arm, Some("amd64")));
    // Fine everywhere.
    w.apply(&deployment("shop", "api", &multi, None));
    // Its Deployment stands for it: not reviewed on its own.
    w.apply(&json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-5d", "namespace": "shop",
                     "ownerReferences": owner("apps/v1", "Deployment", "web")},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec(&arm)}},
    }));
    // A bare pod that may land on either node.
    w.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "loner", "namespace": "shop"},
        "spec": pod_spec(&arm),
    }));
    let mut job_pod = pod_spec(&amd);
    job_pod["restartPolicy"] = json!("Never");
    w.apply(&json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "nightly", "namespace": "shop"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": job_pod}}}},
    }));
    // The CronJob's own Job: the CronJob stands for it.
    w.apply(&json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "nightly-29000000", "namespace": "shop",
                     "ownerReferences": owner("batch/v1", "CronJob", "nightly")},
        "spec": {"template": {"spec": job_pod}},
    }));
    // Running now: an amd64-only image on the arm64 node (exec format error), and a multi-arch
    // image on the same node (fine).
    for (name, image) in [("web-5d-x7k2p", &w.amd), ("api-7c-q9z1m", &w.multi)] {
        let mut spec = pod_spec(&image.reference());
        spec["nodeName"] = json!("arm-1");
        w.apply(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop",
                         "ownerReferences": owner("apps/v1", "ReplicaSet", "web-5d")},
            "spec": spec,
        }));
        let status = json!({"status": {"phase": "Running", "containerStatuses": [{
            "name": "app", "ready": true, "restartCount": 0,
            "image": image.reference(), "imageID": image.digest_reference(),
            "state": {"running": {"startedAt": "2026-12-01T10:00:00Z"}},
        }]}});
        w.plane.must(
            &[
                "patch",
                "pod",
                name,
                "-n",
                "shop",
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        );
    }
    // Not looked at, as the webhook would not: mode off, and an exempt namespace.
    w.apply(&deployment("quiet", "web", &arm, Some("amd64")));
    w.apply(&deployment("infra", "web", &arm, Some("amd64")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_a_mixed_cluster() {
    let Some(w) = world().await else { return };
    populate(&w);
    text_report(&w);
    json_report(&w);
    progress_on_a_terminal(&w);
    policy_reports(&w);
    registry_trouble(&w);
    many_objects_are_paged(&w);
    pull_secrets(&w);
    tekton_runs(&w);
    check_with_live_platforms(&w);
    shipped_rbac(&w);
    a_kind_it_may_not_list(&w);
    lenient_namespace(&w);
    webhook_config_file(&w);
}

/// `--config` reads the webhook's own config file: an image it exempts is not reported, and a
/// key it does not know is the error the webhook would give.
fn webhook_config_file(w: &World) {
    let arm = w.arm.reference();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, format!("exemptImages:\n  - \"{arm}\"\n")).unwrap();
    let config = config.to_str().unwrap();
    let before = stdout(&w.scan(&["-n", "shop"]));
    assert!(
        before.contains(&format!("image \"{arm}\" is missing")),
        "{before}"
    );
    let out = w.scan(&["-n", "shop", "--config", config]);
    let text = stdout(&out);
    assert!(!text.contains(&format!("image \"{arm}\"")), "{text}");
    assert!(text.contains("FAIL  CronJob nightly"), "{text}");
    assert_eq!(out.status.code(), Some(1));

    std::fs::write(dir.path().join("bad.yaml"), "exemptImage: [x]\n").unwrap();
    let bad = dir.path().join("bad.yaml");
    let out = w.scan(&["--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("exemptImage"), "{}", stderr(&out));
}

/// A namespace in warn mode is scanned as enforce would see it, and its heading says so.
fn lenient_namespace(w: &World) {
    let arm = w.arm.reference();
    w.apply(&namespace("lenient", Some("warn")));
    w.apply(&deployment("lenient", "web", &arm, Some("amd64")));
    let out = w.scan(&["-n", "lenient"]);
    let text = stdout(&out);
    assert_eq!(
        text.lines().next(),
        Some("namespace lenient (archgate.io/mode: warn: the webhook does not deny here)"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(1));
}

fn text_report(w: &World) {
    let (arm, amd) = (w.arm.reference(), w.amd.reference());
    let out = w.scan(&["--exempt-namespace", "infra"]);
    let rebuild = "  hint  rebuild for every platform: docker buildx build --platform linux/amd64,linux/arm64 ...";
    let want = [
        "namespace shop".to_string(),
        format!(
            "  FAIL  CronJob nightly, container \"app\" image \"{amd}\" is missing linux/arm64 (available: linux/amd64)"
        ),
        rebuild.to_string(),
        "  hint  pin it: nodeSelector kubernetes.io/arch: amd64".to_string(),
        format!(
            "  FAIL  Deployment web, container \"app\" image \"{arm}\" is missing linux/amd64 (available: linux/arm64)"
        ),
        rebuild.to_string(),
        format!(
            "  FAIL  Pod loner, container \"app\" image \"{arm}\" is missing linux/amd64 (available: linux/arm64)"
        ),
        rebuild.to_string(),
        "  hint  pin it: nodeSelector kubernetes.io/arch: arm64".to_string(),
        format!(
            "  WRONG Pod web-5d-x7k2p, container \"app\" image \"{amd}\" is running on node arm-1 (linux/arm64), which the image does not provide (available: linux/amd64)"
        ),
        String::new(),
        "scanned 4 objects in 1 namespace: 3 would be denied, 1 pod running on the wrong platform"
            .to_string(),
    ];
    let text = stdout(&out);
    let got: Vec<&str> = text.lines().collect();
    for (i, (got, want)) in got.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "line {}:\n{text}", i + 1);
    }
    assert_eq!(got.len(), want.len(), "{text}");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Tekton is not installed: said once; no progress indicator when stderr is not a terminal.
    let err = stderr(&out);
    assert_eq!(
        err,
        "archgate scan: Tekton is not installed (pipelineruns.tekton.dev is not served): no PipelineRun or TaskRun scanned\n"
    );

    // Without the exemption the namespace is scanned like any other; `-n` narrows the scan.
    let out = w.scan(&["-n", "infra"]);
    let text = stdout(&out);
    assert!(
        text.starts_with("namespace infra\n  FAIL  Deployment web, container \"app\""),
        "{text}"
    );
    assert!(
        text.ends_with(
            "scanned 1 object in 1 namespace: 1 would be denied, 0 pods running on the wrong platform\n"
        ),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(1));
    // Mode off is the namespace's own say, whatever the flags.
    let out = w.scan(&["-n", "quiet"]);
    assert_eq!(
        stdout(&out),
        "scanned 0 objects in 0 namespaces: 0 would be denied, 0 pods running on the wrong platform\n"
    );
    assert_eq!(out.status.code(), Some(0));
}

/// On a terminal (util-linux `script` gives the scan one) a progress line is drawn on stderr
/// and wiped before the report; in a pipe (every other scan here) there is none.
fn progress_on_a_terminal(w: &World) {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("progress test skipped: util-linux `script` is not installed");
        return;
    }
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let command = [
        env!("CARGO_BIN_EXE_archgate"),
        "scan",
        "-n",
        "shop",
        "--kubeconfig",
        w.plane.kubeconfig.to_str().unwrap(),
        "--insecure-registry",
        w.registry.host(),
    ]
    .map(quote)
    .join(" ");
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .unwrap();
    let seen = stdout(&out);
    assert!(
        seen.contains("\r\x1b[Kscanning: ") && seen.contains(" objects listed (Pod)"),
        "{seen:?}"
    );
    // The progress line is wiped before anything else is written.
    let after = seen.rsplit("\r\x1b[K").next().unwrap();
    assert!(
        after.starts_with("archgate scan: Tekton is not installed")
            && after.contains("\r\nnamespace shop\r\n")
            && !after.contains("scanning:"),
        "{after:?}"
    );
    assert_eq!(out.status.code(), Some(1));
}

fn json_report(w: &World) {
    let out = w.scan(&["--exempt-namespace", "infra", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(
        report["summary"],
        json!({"objects": 4, "namespaces": 1, "wouldBeDenied": 3,
               "runningOnWrongPlatform": 1, "notChecked": 0})
    );
    let findings = report["findings"].as_array().unwrap();
    let seen: Vec<(&str, &str, &str)> = findings
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap(),
                f["name"].as_str().unwrap(),
                f["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("CronJob", "nightly", "fail"),
            ("Deployment", "web", "fail"),
            ("Pod", "loner", "fail"),
            ("Pod", "web-5d-x7k2p", "wrong"),
        ]
    );
    let wrong = &findings[3];
    assert_eq!(wrong["namespace"], "shop");
    assert_eq!(wrong["node"], "arm-1");
    assert_eq!(wrong["missing"], json!(["linux/arm64"]));
    assert_eq!(wrong["available"], json!(["linux/amd64"]));
    assert_eq!(wrong["image"], w.amd.reference());
    assert_eq!(findings[1]["container"], "app");
    assert_eq!(findings[1]["missing"], json!(["linux/amd64"]));
    // The summary line still ends the run, on stderr, where it does not break the JSON.
    assert!(
        stderr(&out).ends_with(
            "scanned 4 objects in 1 namespace: 3 would be denied, 1 pod running on the wrong platform\n"
        ),
        "{}",
        stderr(&out)
    );
}

/// The wgpolicyk8s.io CRDs, cut to what the API server needs to store the reports (the real
/// ones, kubernetes-sigs/wg-policy-prototypes, validate the fields; the test reads the stored
/// reports back and checks them itself).
fn install_policy_report_crds(w: &World) {
    let crd = |plural, kind, scope| Crd {
        group: "wgpolicyk8s.io",
        plural,
        kind,
        version: "v1alpha2",
        scope,
    };
    w.plane.install_crds(&[
        crd("policyreports", "PolicyReport", "Namespaced"),
        crd("clusterpolicyreports", "ClusterPolicyReport", "Cluster"),
    ]);
}

fn policy_reports(w: &World) {
    let scan = ["--exempt-namespace", "infra", "-o", "policyreport"];
    let out = w.scan(&scan);
    assert_eq!(out.status.code(), Some(1));
    let list: Value = serde_json::from_slice(&out.stdout).expect("a List on stdout");
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one PolicyReport, for shop: {list}");
    assert_eq!(items[0]["kind"], "PolicyReport");

    // --apply before the CRDs exist: said as something to act on; the findings still decide.
    let mut applying = scan.to_vec();
    applying.push("--apply");
    let out = w.scan(&applying);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("install the PolicyReport CRDs"),
        "{}",
        stderr(&out)
    );
    // --apply is for reports only.
    let out = w.scan(&["--apply"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "archgate scan: --apply writes PolicyReports: add -o policyreport\n"
    );

    install_policy_report_crds(w);
    let out = w.scan(&applying);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "policyreports.wgpolicyk8s.io/archgate-scan in namespace shop serverside-applied\n"
    );
    let stored = |w: &World| -> Value {
        let text = w.plane.must(
            &[
                "get",
                "policyreport",
                "archgate-scan",
                "-n",
                "shop",
                "-o",
                "json",
            ],
            None,
        );
        serde_json::from_str(&text).unwrap()
    };
    let report = stored(w);
    assert_eq!(
        report["summary"],
        json!({"pass": 1, "fail": 4, "warn": 0, "error": 0, "skip": 0})
    );
    let results = report["results"].as_array().unwrap();
    let web = results
        .iter()
        .find(|r| r["resources"][0]["name"] == "web" && r["result"] == "fail")
        .expect("the Deployment's failure");
    assert_eq!(web["policy"], "archgate-platforms");
    assert_eq!(web["rule"], "image-platforms");
    assert_eq!(web["source"], "archgate");
    assert_eq!(web["resources"][0]["kind"], "Deployment");
    assert_eq!(web["resources"][0]["apiVersion"], "apps/v1");
    let uid = w.plane.must(
        &[
            "get",
            "deployment",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    );
    assert_eq!(web["resources"][0]["uid"], uid.as_str());
    assert_eq!(
        web["message"],
        format!(
            "Deployment web, container \"app\" image \"{}\" is missing linux/amd64 (available: linux/arm64)",
            w.arm.reference()
        )
    );
    assert!(
        web["properties"]["fix"]
            .as_str()
            .unwrap()
            .starts_with("rebuild for every platform")
    );
    let running = results
        .iter()
        .find(|r| r["rule"] == "running-platform")
        .expect("the pod on the wrong node");
    assert_eq!(running["resources"][0]["name"], "web-5d-x7k2p");
    assert_eq!(running["properties"]["node"], "arm-1");

    // Fixed in the cluster, scanned again: the same report now says so.
    w.apply(&deployment(
        "shop",
        "web",
        &w.multi.reference(),
        Some("amd64"),
    ));
    let out = w.scan(&applying);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stored(w)["summary"],
        json!({"pass": 2, "fail": 3, "warn": 0, "error": 0, "skip": 0})
    );
    w.apply(&deployment(
        "shop",
        "web",
        &w.arm.reference(),
        Some("amd64"),
    ));
}

/// An image that does not exist, and a registry that cannot be asked (a closed port on
/// 127.0.0.1): the first denies (or warns, as `--on-missing-image warn` makes the webhook do),
/// the second is said and exits 2 when nothing else is wrong.
fn registry_trouble(w: &World) {
    w.apply(&namespace("gone", None));
    let missing = format!("{}/team/never-pushed:v1", w.registry.host());
    w.apply(&deployment("gone", "ghost", &missing, None));
    let out = w.scan(&["-n", "gone"]);
    let text = stdout(&out);
    assert_eq!(
        text.lines().nth(1),
        Some(format!("  FAIL  Deployment ghost, container \"app\" image \"{missing}\" not found in registry").as_str()),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(1));
    let out = w.scan(&["-n", "gone", "--on-missing-image", "warn"]);
    let text = stdout(&out);
    assert!(text.contains("\n  warn  Deployment ghost,"), "{text}");
    assert!(
        text.ends_with(": 0 would be denied, 0 pods running on the wrong platform\n"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(0));

    w.apply(&namespace("offline", None));
    let unreachable = "127.0.0.1:1/team/app:v1";
    w.apply(&deployment("offline", "cut-off", unreachable, None));
    let text = scanned_not_checked(w, "offline", "cut-off", unreachable);
    assert!(
        text.ends_with("0 would be denied, 0 pods running on the wrong platform, 1 object could not be checked\n"),
        "{text}"
    );
}

/// Scans `namespace`, whose one Deployment's image could not be checked: exit 2, and the line
/// says so. Returns the text.
fn scanned_not_checked(w: &World, namespace: &str, deployment: &str, image: &str) -> String {
    let out = w.scan(&["-n", namespace]);
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "namespace {namespace}\n  ERROR Deployment {deployment}, container \"app\" image \"{image}\" was not checked: "
        )),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    text
}

/// More objects than one list page holds (`limit` 250): every page is read, through the
/// continue token, and each object is counted once.
fn many_objects_are_paged(w: &World) {
    w.apply(&namespace("many", None));
    let pods: Vec<Value> = (0..300)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("p{i:03}"), "namespace": "many"},
                   "spec": pod_spec(&w.multi.reference())})
        })
        .collect();
    w.apply(&json!({"apiVersion": "v1", "kind": "List", "items": pods}));
    let out = w.scan(&["-n", "many", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["summary"]["objects"], 300);
    assert_eq!(report["findings"], json!([]));
}

/// A private image pulled with a ServiceAccount's pull secret: without `--pull-secrets` scan
/// uses only the user's own credentials (none here) and says the image was not checked; with
/// it, the kubelet's credentials, as the webhook's `--pull-secrets` does.
fn pull_secrets(w: &World) {
    use base64::Engine;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    w.apply(&namespace("private", None));
    let config = json!({"auths": {w.private.host(): {"auth": b64("puller:s3cret-pull")}}});
    w.apply(&json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": "sa-cred", "namespace": "private"},
        "data": {".dockerconfigjson": b64(&config.to_string())},
    }));
    w.apply(&json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "builder", "namespace": "private"},
        "imagePullSecrets": [{"name": "sa-cred"}],
    }));
    let image = w.private_arm.reference();
    let mut vault = deployment("private", "vault", &image, Some("amd64"));
    vault["spec"]["template"]["spec"]["serviceAccountName"] = json!("builder");
    w.apply(&vault);

    scanned_not_checked(w, "private", "vault", &image);
    let out = w.scan(&["-n", "private", "--pull-secrets"]);
    let text = stdout(&out);
    assert_eq!(
        text.lines().nth(1),
        Some(format!("  FAIL  Deployment vault, container \"app\" image \"{image}\" is missing linux/amd64 (available: linux/arm64)").as_str()),
        "{text}\n{}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(1));
}

/// The Tekton CRDs (as tests/e2e.rs installs them), one active PipelineRun and a
/// finished TaskRun: only the active run can still start pods.
fn tekton_runs(w: &World) {
    w.plane.install_crds(&TEKTON_CRDS);
    w.apply(&namespace("ci", None));
    let arm = w.arm.reference();
    let step = json!({"name": "compile", "image": arm, "script": "make"});
    w.apply(&json!({
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": "release-1", "namespace": "ci"},
        "spec": {"pipelineSpec": {"tasks": [{"name": "build", "taskSpec": {"steps": [step]}}]},
                 "taskRunTemplate": {"podTemplate": {"nodeSelector": {"kubernetes.io/arch": "amd64"}}}},
        "status": {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}]},
    }));
    w.apply(&json!({
        "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
        "metadata": {"name": "old-build", "namespace": "ci"},
        "spec": {"taskSpec": {"steps": [step]}},
        "status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}]},
    }));
    let out = w.scan(&["-n", "ci"]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "namespace ci", "{text}");
    assert_eq!(
        lines[1],
        format!(
            "  FAIL  PipelineRun release-1, pipeline task \"build\" step \"compile\" image \"{arm}\" is missing linux/amd64 (available: linux/arm64)"
        ),
        "{text}"
    );
    assert!(
        !text.contains("old-build"),
        "a finished run is left alone: {text}"
    );
    assert!(
        text.ends_with(
            "scanned 1 object in 1 namespace: 1 would be denied, 0 pods running on the wrong platform\n"
        ),
        "{text}"
    );
    assert_eq!(stderr(&out), "", "Tekton is installed now: nothing to say");
}

/// `check --platform auto`: the candidate platforms are the live Nodes', with their labels.
fn check_with_live_platforms(w: &World) {
    let arm = w.arm.reference();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    let pinned = deployment("dev", "edge", &arm, Some("arm64"));
    let anywhere = deployment("dev", "web", &arm, None);
    std::fs::write(&file, format!("{anywhere}\n---\n{pinned}\n")).unwrap();
    let kubeconfig = &w.plane.kubeconfig;
    let out = w.archgate(
        kubeconfig,
        &["check", "--platform", "auto", "-f", file.to_str().unwrap()],
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "FAIL  Deployment dev/web, container \"app\" image \"{arm}\" is missing linux/amd64 (available: linux/arm64)"
            )
            .as_str(),
            "hint  rebuild for every platform: docker buildx build --platform linux/amd64,linux/arm64 ...",
            "hint  pin it: nodeSelector kubernetes.io/arch: arm64",
            format!(
                "ok    Deployment dev/edge, container \"app\" image \"{arm}\" (linux/arm64/v8)"
            )
            .as_str(),
        ],
        "{}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(1));
    // A bare image must run on every node's platform.
    let out = w.archgate(kubeconfig, &["check", "-p", "auto", &w.multi.reference()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A context the kubeconfig lacks, and a kubeconfig without `auto`: errors that say why.
    let out = w.archgate(
        kubeconfig,
        &["check", "-p", "auto", "--context", "nowhere", &arm],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nowhere"), "{}", stderr(&out));
    let out = w.archgate(kubeconfig, &["check", "-p", "linux/amd64", &arm]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("add --platform auto"),
        "{}",
        stderr(&out)
    );
}

/// A kind the identity may not list (here Jobs and CronJobs) is an ERROR line, and the rest of
/// the scan still reports: before, the 403 ended the scan with exit 2 and no findings, though
/// exit 1 (something would be denied) beats 2.
fn a_kind_it_may_not_list(w: &World) {
    let plane = &w.plane;
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "archgate-scan-no-batch"},
        "rules": [
            {"apiGroups": [""], "resources": ["nodes", "namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["pods", "replicationcontrollers"], "verbs": ["list"]},
            {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"], "verbs": ["list"]},
            {"apiGroups": ["tekton.dev"], "resources": ["pipelines", "tasks", "clustertasks", "stepactions"], "verbs": ["list", "watch"]},
            {"apiGroups": ["tekton.dev"], "resources": ["pipelineruns", "taskruns"], "verbs": ["list"]},
        ],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "archgate-scan-no-batch"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "archgate-scan-no-batch"},
        "subjects": [{"kind": "ServiceAccount", "name": "no-batch", "namespace": "archgate"}],
    });
    plane.must(
        &["create", "serviceaccount", "no-batch", "-n", "archgate"],
        None,
    );
    for object in [role, binding] {
        plane.must(&["apply", "-f", "-"], Some(&object.to_string()));
    }
    let token = plane.must(
        &[
            "create",
            "token",
            "no-batch",
            "-n",
            "archgate",
            "--duration",
            "1h",
        ],
        None,
    );
    let kubeconfig = plane.kubeconfig_with_token("no-batch", token.trim());
    let out = w.archgate(&kubeconfig, &["scan", "--exempt-namespace", "infra"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("would be denied"), "{text}");
    for resource in ["jobs (batch/v1)", "cronjobs (batch/v1)"] {
        assert!(
            text.lines()
                .any(|l| l.contains("ERROR") && l.contains(&format!("cannot list {resource}"))),
            "{resource}: {text}"
        );
    }
}

/// Scan run as the ServiceAccount of deploy/components/scan/rbac.yaml: what it grants is enough
/// to scan and to apply reports, and nothing more.
fn shipped_rbac(w: &World) {
    let plane = &w.plane;
    plane.must(&["create", "namespace", "archgate"], None);
    plane.must(&["apply", "-f", "deploy/components/scan/rbac.yaml"], None);
    let token = plane.must(
        &[
            "create",
            "token",
            "archgate-scan",
            "-n",
            "archgate",
            "--duration",
            "1h",
        ],
        None,
    );
    let kubeconfig = plane.kubeconfig_with_token("archgate-scan", token.trim());
    let as_admin = w.scan(&["--exempt-namespace", "infra"]);
    let out = w.archgate(&kubeconfig, &["scan", "--exempt-namespace", "infra"]);
    assert_eq!(stdout(&out), stdout(&as_admin), "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(1));
    let out = w.archgate(
        &kubeconfig,
        &[
            "scan",
            "--exempt-namespace",
            "infra",
            "-o",
            "policyreport",
            "--apply",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("serverside-applied"),
        "{}",
        stderr(&out)
    );
    for (verb, resource) in [
        ("create", "pods"),
        ("patch", "deployments.apps"),
        ("list", "secrets"),
    ] {
        let out = Command::new(&plane.binaries.kubectl)
            .env("KUBECONFIG", &kubeconfig)
            .args(["auth", "can-i", verb, resource, "-A"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "no\n",
            "{verb} {resource}"
        );
    }
}
