//! The e2e tier (issue 12): archgate behind a real kube-apiserver (with etcd) on 127.0.0.1,
//! registered with the shipped ValidatingWebhookConfiguration (only `clientConfig` changed, and
//! `failurePolicy` where that is what is tested), driven with kubectl and kube-rs.
//!
//! Needs the binaries `.ci/kube-apiserver` installs (`.ci/test` always runs it first); without
//! them the tier is skipped with one line. One control plane serves every scenario: they run in
//! order in one test, each in its own namespaces, because they share the one webhook
//! registration and the cluster's Nodes.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use common::apiserver::{Archgate, Stage};
use common::{ImageSpec, PlatformSpec, PushedImage, Registry};

const HOOK: &str = "platforms.archgate.io";
/// Bounds every "wait until archgate has seen it" loop (watch events arrive in milliseconds).
const CONVERGE: Duration = Duration::from_secs(30);

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// What every scenario shares.
struct World {
    stage: Stage,
    /// `archgate certs --ip 127.0.0.1` output.
    certs: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// The stage's registries, images and control plane, as `w.plane`, `w.arm`, ...
impl std::ops::Deref for World {
    type Target = Stage;
    fn deref(&self) -> &Stage {
        &self.stage
    }
}

impl World {
    fn image(&self, image: &PushedImage) -> String {
        image.reference()
    }

    /// `serve` flags common to every archgate run here.
    fn serve_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--platform",
            "auto",
            "--insecure-registry",
            self.registry.host(),
            "--review-deadline",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--registry-ca".into());
        args.push(self.private.ca_path().display().to_string());
        args.push("--tls-cert".into());
        args.push(self.certs.join("tls.crt").display().to_string());
        args.push("--tls-key".into());
        args.push(self.certs.join("tls.key").display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Registers the shipped webhook configuration, pointed at `archgate` (clientConfig only,
    /// plus `failure_policy` when given). Returns kubectl's output.
    fn register(&self, archgate: &Archgate, failure_policy: Option<&str>) -> String {
        let text =
            std::fs::read_to_string("deploy/base/validatingwebhookconfiguration.yaml").unwrap();
        let mut config: Value = serde_saphyr::from_str(&text).unwrap();
        let ca = std::fs::read_to_string(self.certs.join("ca-bundle.b64")).unwrap();
        let hook = &mut config["webhooks"][0];
        hook["clientConfig"] = json!({
            "url": format!("https://127.0.0.1:{}/validate", archgate.webhook.port()),
            "caBundle": ca.trim(),
        });
        if let Some(policy) = failure_policy {
            hook["failurePolicy"] = json!(policy);
        }
        self.plane
            .must(&["apply", "-f", "-"], Some(&config.to_string()))
    }

    fn namespace(&self, name: &str, mode: Option<&str>) {
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        if let Some(mode) = mode {
            ns["metadata"]["labels"] = json!({"archgate.io/mode": mode});
        }
        self.plane
            .must(&["apply", "-f", "-"], Some(&ns.to_string()));
    }

    fn node(&self, name: &str, arch: &str, taint: bool) {
        let mut node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/os": "linux", "kubernetes.io/arch": arch}},
            "spec": {},
        });
        if taint {
            node["spec"]["taints"] =
                json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
        }
        self.plane
            .must(&["apply", "-f", "-"], Some(&node.to_string()));
    }
}

fn pod(namespace: &str, name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": image}]},
    })
}

/// A workload of `kind` whose pod template runs `image` in a container "app".
fn workload(kind: &str, namespace: &str, name: &str, image: &str) -> Value {
    let labels = json!({"app": name});
    let template = json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "app", "image": image}], "restartPolicy": "Always"},
    });
    let mut job_template = template.clone();
    job_template["spec"]["restartPolicy"] = json!("Never");
    let (api_version, spec) = match kind {
        "Deployment" | "ReplicaSet" | "DaemonSet" => (
            "apps/v1",
            json!({"selector": {"matchLabels": labels}, "template": template}),
        ),
        "StatefulSet" => (
            "apps/v1",
            json!({"selector": {"matchLabels": labels}, "serviceName": name, "template": template}),
        ),
        "ReplicationController" => ("v1", json!({"selector": labels, "template": template})),
        "Job" => ("batch/v1", json!({"template": job_template})),
        "CronJob" => (
            "batch/v1",
            json!({"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": job_template}}}),
        ),
        other => panic!("no such workload kind {other}"),
    };
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// kubectl's line for an object the webhook denied, message as archgate wrote it.
fn denied(message: &str) -> String {
    format!(
        "Error from server (Forbidden): error when creating \"STDIN\": admission webhook \"{HOOK}\" denied the request: {message}\n"
    )
}

fn missing_amd64(at: &str, image: &str) -> String {
    format!(
        "{at} image \"{image}\" is missing linux/amd64 (available: linux/arm64)\nrebuild for every platform: docker buildx build --platform linux/amd64,linux/arm64 ..."
    )
}

/// Retries `check` (which answers whether archgate's view has caught up) within [`CONVERGE`].
async fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let started = Instant::now();
    loop {
        match check() {
            Ok(()) => return,
            Err(last) if started.elapsed() > CONVERGE => panic!("{what}: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn world() -> Option<World> {
    let stage = Stage::start("e2e tier").await?;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_archgate"))
        .args(["certs", "--ip", "127.0.0.1", "--out-dir"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let world = World {
        stage,
        certs,
        _dir: dir,
    };
    world.node("amd-1", "amd64", false);
    Some(world)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archgate_behind_a_real_api_server() {
    let Some(w) = world().await else { return };
    let started = Instant::now();

    // Tekton is not installed yet: archgate says so once per kind, not once per retry.
    let mut archgate =
        Archgate::start(&w.plane.kubeconfig, &w.serve_args(&["--pull-secrets"])).await;
    let out = w.register(&archgate, None);
    assert_eq!(
        out, "validatingwebhookconfiguration.admissionregistration.k8s.io/archgate created\n",
        "the shipped webhook configuration is accepted"
    );
    w.namespace("enforce", None);
    wait_for_webhook(&w).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    for kind in ["Pipeline", "Task", "ClusterTask", "StepAction"] {
        let said = archgate
            .logged("resource not served by the API server; treated as empty until it is")
            .into_iter()
            .filter(|l| l["kind"] == kind)
            .count();
        assert_eq!(said, 1, "{kind}: {:?}", archgate.logs());
    }
    install_tekton_crds(&w);

    pods_and_workloads_are_denied(&w).await;
    namespace_modes(&w, &archgate).await;
    namespace_modes_are_chosen_by_admins(&w).await;
    live_nodes_change_verdicts(&w).await;
    a_nodes_runtime_is_read_from_the_api_server(&w).await;
    bound_pods_and_image_updates(&w).await;
    pull_secrets_of_pods_and_service_accounts(&w).await;
    tekton_runs(&w, &archgate).await;
    tekton_pending_runs_are_checked_when_released(&w).await;
    tekton_when_skips_a_task(&w).await;
    static_platforms_keep_the_cluster(&w, &archgate).await;
    placement_steers_a_pod(&w, &archgate).await;
    pods_in_a_loop(&w, &archgate).await;
    shipped_rbac_with_a_service_account_token(&w).await;
    failure_policy(&w, &mut archgate).await;
    println!("e2e scenarios took {:?}", started.elapsed());
}

/// The registration takes effect when the API server's informer sees it: wait until a dry run
/// is denied.
async fn wait_for_webhook(w: &World) {
    let arm = w.image(&w.arm);
    eventually("the webhook takes effect", || {
        let out = w.plane.apply(&pod("enforce", "probe", &arm), true);
        (!out.ok() && out.stderr().contains(HOOK))
            .then_some(())
            .ok_or(out.stderr() + &out.stdout())
    })
    .await;
}

async fn pods_and_workloads_are_denied(w: &World) {
    let arm = w.image(&w.arm);
    let want = denied(&missing_amd64("container \"app\"", &arm));
    for dry_run in [true, false] {
        let out = w.plane.apply(&pod("enforce", "web", &arm), dry_run);
        assert!(!out.ok());
        assert_eq!(out.stderr(), want, "Pod, dry run {dry_run}");
    }
    let kinds = [
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "ReplicationController",
        "Job",
        "CronJob",
    ];
    for kind in kinds {
        let name = kind.to_lowercase();
        let at = format!("{kind} {name}, container \"app\"");
        for dry_run in [true, false] {
            let out = w
                .plane
                .apply(&workload(kind, "enforce", &name, &arm), dry_run);
            assert!(!out.ok(), "{kind} admitted");
            assert_eq!(
                out.stderr(),
                denied(&missing_amd64(&at, &arm)),
                "{kind}, dry run {dry_run}"
            );
        }
    }
    // Nothing was created; a good image is.
    let left = w
        .plane
        .must(&["get", "all", "-n", "enforce", "-o", "name"], None);
    assert_eq!(left, "", "denied objects exist: {left}");
    let out = w
        .plane
        .apply(&pod("enforce", "web", &w.image(&w.multi)), false);
    assert_eq!(out.stdout(), "pod/web created\n", "{}", out.stderr());
    assert_eq!(out.stderr(), "");
    for kind in kinds {
        let name = kind.to_lowercase();
        let out = w
            .plane
            .apply(&workload(kind, "enforce", &name, &w.image(&w.multi)), true);
        assert!(out.ok(), "{kind}: {}", out.stderr());
    }
}

async fn namespace_modes(w: &World, archgate: &Archgate) {
    let arm = w.image(&w.arm);
    w.namespace("warned", Some("warn"));
    w.namespace("audited", Some("audit"));
    w.namespace("unchecked", Some("off"));
    // archgate's Namespace watch must have seen the labels: dry runs until it has.
    let warning = format!(
        "Warning: missing linux/amd64: container \"app\" image \"{arm}\" (available: linux/arm64)\n"
    );
    eventually("the warn label is seen", || {
        let out = w.plane.apply(&pod("warned", "web", &arm), true);
        (out.stderr() == warning).then_some(()).ok_or(out.stderr())
    })
    .await;
    eventually("the audit label is seen", || {
        let out = w.plane.apply(&pod("audited", "web", &arm), true);
        (out.ok() && out.stderr().is_empty())
            .then_some(())
            .ok_or(out.stderr())
    })
    .await;

    let out = w.plane.apply(&pod("warned", "web", &arm), false);
    assert!(out.ok(), "{}", out.stderr());
    assert_eq!(out.stdout(), "pod/web created\n");
    assert_eq!(out.stderr(), warning);
    w.plane.must(&["get", "pod", "web", "-n", "warned"], None);

    let audited_before = archgate
        .metric("archgate_reviews_total", "decision=\"audited\"")
        .await;
    let out = w.plane.apply(&pod("audited", "web", &arm), false);
    assert_eq!(
        (out.stdout(), out.stderr()),
        ("pod/web created\n".into(), String::new())
    );
    let audited = archgate
        .metric("archgate_reviews_total", "decision=\"audited\"")
        .await;
    assert_eq!(audited, audited_before + 1.0);

    // `off` is excluded by the webhook's namespaceSelector: archgate never sees the pod.
    let reviews_before = archgate.metric("archgate_reviews_total", "").await;
    let out = w.plane.apply(&pod("unchecked", "web", &arm), false);
    assert_eq!(
        (out.stdout(), out.stderr()),
        ("pod/web created\n".into(), String::new())
    );
    assert_eq!(
        archgate.metric("archgate_reviews_total", "").await,
        reviews_before
    );
}

/// The shipped ValidatingAdmissionPolicy: someone who may create and label namespaces, but was
/// not granted `update` on `namespacemodes.archgate.io`, cannot choose a namespace's mode.
async fn namespace_modes_are_chosen_by_admins(w: &World) {
    let plane = &w.plane;
    let tenant = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["--as", "tenant"];
        all.extend_from_slice(args);
        plane.kubectl(&all, stdin)
    };
    // Applied as objects: `kubectl create clusterrole` asks discovery for the resource, and
    // `namespacemodes.archgate.io` is served by nobody (see the policy's comment).
    let grant = |name: &str, rule: Value| {
        let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": name}, "rules": [rule]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": name},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tenant"}]},
        ]});
        plane.must(&["apply", "-f", "-"], Some(&objects.to_string()));
    };
    grant(
        "tenant-namespaces",
        json!({"apiGroups": [""], "resources": ["namespaces"],
               "verbs": ["get", "list", "create", "update", "patch"]}),
    );
    plane.must(
        &["apply", "-f", "deploy/base/namespace-mode-policy.yaml"],
        None,
    );

    let labelled = |mode: &str| {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "tenant-new", "labels": {"archgate.io/mode": mode}}})
        .to_string()
    };
    let refused = |ns: &str, what: &str, verb: &str| {
        format!(
            "Error from server (Forbidden): {verb}namespaces \"{ns}\" is forbidden: \
             ValidatingAdmissionPolicy 'archgate-namespace-mode' with binding \
             'archgate-namespace-mode' denied request: archgate.io/mode {what} without \
             permission: it decides whether archgate checks images in namespace {ns}; ask a \
             cluster admin for update on namespacemodes.archgate.io\n"
        )
    };
    let on_create = "error when creating \"STDIN\": ";
    // The API server enforces a policy once its informer has the binding.
    eventually("the namespace mode policy takes effect", || {
        let out = tenant(
            &["create", "--dry-run=server", "-f", "-"],
            Some(&labelled("off")),
        );
        (!out.ok() && out.stderr().contains("archgate-namespace-mode"))
            .then_some(())
            .ok_or(out.stderr() + &out.stdout())
    })
    .await;
    let out = tenant(&["create", "-f", "-"], Some(&labelled("off")));
    assert_eq!(
        out.stderr(),
        refused("tenant-new", "set to \"off\"", on_create)
    );

    // Namespaces and their other labels are the tenant's to manage.
    let out = tenant(&["create", "namespace", "tenant-a"], None);
    assert_eq!(
        out.stdout(),
        "namespace/tenant-a created\n",
        "{}",
        out.stderr()
    );
    let out = tenant(&["label", "namespace", "tenant-a", "team=a"], None);
    assert_eq!(
        out.stdout(),
        "namespace/tenant-a labeled\n",
        "{}",
        out.stderr()
    );
    for mode in ["off", "warn"] {
        let out = tenant(
            &[
                "label",
                "namespace",
                "tenant-a",
                &format!("archgate.io/mode={mode}"),
            ],
            None,
        );
        assert_eq!(
            out.stderr(),
            refused("tenant-a", &format!("set to \"{mode}\""), "")
        );
    }
    // An admin's choice stands until an admin changes it: the tenant cannot remove it either.
    plane.must(
        &["label", "namespace", "tenant-a", "archgate.io/mode=warn"],
        None,
    );
    let out = tenant(
        &["label", "namespace", "tenant-a", "archgate.io/mode-"],
        None,
    );
    assert_eq!(out.stderr(), refused("tenant-a", "removed", ""));
    let out = tenant(
        &["label", "namespace", "tenant-a", "team=b", "--overwrite"],
        None,
    );
    assert_eq!(
        out.stdout(),
        "namespace/tenant-a labeled\n",
        "{}",
        out.stderr()
    );

    // Granted for tenant-a only (RBAC `resourceNames`).
    let out = tenant(&["create", "namespace", "tenant-b"], None);
    assert_eq!(
        out.stdout(),
        "namespace/tenant-b created\n",
        "{}",
        out.stderr()
    );
    grant(
        "tenant-modes",
        json!({"apiGroups": ["archgate.io"], "resources": ["namespacemodes"],
               "resourceNames": ["tenant-a"], "verbs": ["update"]}),
    );
    eventually("the grant is seen by the authorizer", || {
        let out = tenant(
            &[
                "label",
                "namespace",
                "tenant-a",
                "archgate.io/mode=off",
                "--overwrite",
            ],
            None,
        );
        out.ok().then_some(()).ok_or(out.stderr())
    })
    .await;
    let out = tenant(
        &["label", "namespace", "tenant-b", "archgate.io/mode=off"],
        None,
    );
    assert_eq!(out.stderr(), refused("tenant-b", "set to \"off\"", ""));
}

async fn live_nodes_change_verdicts(w: &World) {
    w.namespace("nodes", None);
    let amd = w.image(&w.amd);
    let dry = |image: &str| w.plane.apply(&pod("nodes", "web", image), true);
    assert!(dry(&amd).ok(), "amd64-only image on an amd64 cluster");

    w.node("arm-1", "arm64", false);
    let want = denied(&format!(
        "container \"app\" image \"{amd}\" is missing linux/arm64 (available: linux/amd64)\nrebuild for every platform: docker buildx build --platform linux/amd64,linux/arm64 ...\npin it: nodeSelector kubernetes.io/arch: amd64"
    ));
    eventually("an arm64 node joins", || {
        let out = dry(&amd);
        (out.stderr() == want).then_some(()).ok_or(out.stderr())
    })
    .await;

    w.plane.must(&["delete", "node", "arm-1"], None);
    eventually("the arm64 node leaves", || {
        let out = dry(&amd);
        out.ok().then_some(()).ok_or(out.stderr())
    })
    .await;

    // Every node tainted, then none at all: allowed with a warning that says which.
    w.node("amd-1", "amd64", true);
    let arm = w.image(&w.arm);
    eventually("every node is tainted", || {
        let out = dry(&arm);
        let want = format!(
            "Warning: every node is cordoned or tainted; not checked: container \"app\" image \"{arm}\"\n"
        );
        (out.ok() && out.stderr() == want).then_some(()).ok_or(out.stderr())
    })
    .await;
    w.plane.must(&["delete", "node", "amd-1"], None);
    eventually("no nodes", || {
        let out = dry(&arm);
        let want = format!(
            "Warning: the cluster has no nodes; not checked: container \"app\" image \"{arm}\"\n"
        );
        (out.ok() && out.stderr() == want)
            .then_some(())
            .ok_or(out.stderr())
    })
    .await;
    w.node("amd-1", "amd64", false);
    eventually("the amd64 node is back", || {
        let out = dry(&arm);
        (!out.ok()).then_some(()).ok_or(out.stderr())
    })
    .await;
}

/// The node's container runtime, reported in its status, picks the platforms it falls back to:
/// containerd 1.7 runs a 386-only image on amd64, a runtime archgate does not know is matched
/// strictly. The node watch once dropped the runtime, so every live node was strict.
async fn a_nodes_runtime_is_read_from_the_api_server(w: &World) {
    w.namespace("runtime", None);
    let i386 = ImageSpec::oci_index("team/i386-only", "v1", [PlatformSpec::new("linux", "386")])
        .push(&w.registry)
        .await;
    let i386 = w.image(&i386);
    let dry = || w.plane.apply(&pod("runtime", "legacy", &i386), true);
    let runtime = |version: &str| {
        let status = json!({"status": {"nodeInfo": {
            "operatingSystem": "linux", "architecture": "amd64",
            "containerRuntimeVersion": version, "kernelVersion": "6.1.0"}}});
        let patch = status.to_string();
        let args = [
            "patch",
            "node",
            "amd-1",
            "--subresource=status",
            "--type=merge",
            "-p",
        ];
        w.plane.must(&[&args[..], &[patch.as_str()]].concat(), None);
    };
    assert!(
        !dry().ok(),
        "a 386-only image on an amd64 node of unknown runtime"
    );

    runtime("containerd://1.7.22");
    eventually("archgate reads the node's containerd 1.7", || {
        let out = dry();
        out.ok().then_some(()).ok_or(out.stderr())
    })
    .await;

    runtime("cri-o://1.30.0");
    eventually("archgate reads the node's CRI-O", || {
        let out = dry();
        let want = format!("image \"{i386}\" is missing linux/amd64 (available: linux/386)");
        (!out.ok() && out.stderr().contains(&want))
            .then_some(())
            .ok_or(out.stderr())
    })
    .await;
    runtime("");
}

/// A Pod bound by `nodeName` skips the scheduler, so it runs on that node even when the
/// scheduler would keep pods off it (GKE taints Arm nodes `kubernetes.io/arch=arm64:NoSchedule`);
/// and a Pod's images are mutable, so `kubectl set image` is reviewed like a create.
async fn bound_pods_and_image_updates(w: &World) {
    w.namespace("updates", None);
    let arm_node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "arm-1", "labels": {
            "kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}},
        "spec": {"taints": [{"key": "kubernetes.io/arch", "value": "arm64", "effect": "NoSchedule"}]},
    });
    w.plane
        .must(&["apply", "-f", "-"], Some(&arm_node.to_string()));
    let (amd, multi, arm) = (w.image(&w.amd), w.image(&w.multi), w.image(&w.arm));
    let bound = |name: &str, image: &str| {
        let mut pod = pod("updates", name, image);
        pod["spec"]["nodeName"] = json!("arm-1");
        pod
    };
    let denial = |at_image: &str, missing: &str, available: &str| {
        format!(
            "admission webhook \"{HOOK}\" denied the request: container \"app\" image \"{at_image}\" is missing {missing} (available: {available})\n"
        )
    };
    let on_arm = denial(&amd, "linux/arm64", "linux/amd64");
    eventually("the tainted arm64 node is seen", || {
        let out = w.plane.apply(&bound("bound", &amd), true);
        (!out.ok() && out.stderr().contains(&on_arm))
            .then_some(())
            .ok_or(out.stderr())
    })
    .await;
    // Not bound, the same pod goes where the scheduler sends it: amd-1, the taint keeps it off
    // arm-1.
    let out = w.plane.apply(&pod("updates", "free", &amd), true);
    assert!(out.ok() && out.stderr().is_empty(), "{}", out.stderr());

    // Created with images that run where they are, then set to images that do not.
    for (name, object, wrong, right, words) in [
        ("web", bound("web", &multi), &amd, &arm, on_arm.clone()),
        (
            "free",
            pod("updates", "free", &multi),
            &arm,
            &amd,
            denial(&arm, "linux/amd64", "linux/arm64"),
        ),
    ] {
        let out = w.plane.apply(&object, false);
        assert_eq!(
            out.stdout(),
            format!("pod/{name} created\n"),
            "{}",
            out.stderr()
        );
        let set = |image: &str| {
            w.plane.kubectl(
                &[
                    "set",
                    "image",
                    &format!("pod/{name}"),
                    &format!("app={image}"),
                    "-n",
                    "updates",
                ],
                None,
            )
        };
        let out = set(wrong);
        assert!(!out.ok(), "{name}: {}", out.stdout());
        assert!(out.stderr().contains(&words), "{name}: {}", out.stderr());
        let running = w.plane.must(
            &[
                "get",
                "pod",
                name,
                "-n",
                "updates",
                "-o",
                "jsonpath={.spec.containers[0].image}",
            ],
            None,
        );
        assert_eq!(running, multi, "{name}: the denied image was not stored");
        // An update that changes no image is not blocked; an image that runs there is allowed.
        w.plane
            .must(&["label", "pod", name, "-n", "updates", "tier=web"], None);
        let out = set(right);
        assert!(out.ok(), "{name}: {}", out.stderr());
    }
    w.plane.must(&["delete", "node", "arm-1"], None);
}

async fn pull_secrets_of_pods_and_service_accounts(w: &World) {
    w.namespace("private", None);
    let host = w.private.host();
    let auth = b64("puller:s3cret-pull");
    let config = json!({"auths": {host: {"auth": auth}}}).to_string();
    for name in ["pod-cred", "sa-cred"] {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": name, "namespace": "private"},
            "data": {".dockerconfigjson": b64(&config)},
        });
        w.plane
            .must(&["apply", "-f", "-"], Some(&secret.to_string()));
    }
    let sa = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "builder", "namespace": "private"},
        "imagePullSecrets": [{"name": "sa-cred"}],
    });
    w.plane.must(&["apply", "-f", "-"], Some(&sa.to_string()));
    let image = w.image(&w.private_arm);
    let want = denied(&missing_amd64("container \"app\"", &image));

    // Without credentials the registry refuses archgate: allowed under onRegistryError=allow.
    let out = w.plane.apply(&pod("private", "anon", &image), true);
    assert!(out.ok(), "{}", out.stderr());
    assert!(
        out.stderr().starts_with("Warning: registry ")
            && out.stderr().contains("refused access")
            && out
                .stderr()
                .contains("not checked: container \"app\" image"),
        "{}",
        out.stderr()
    );

    let mut with_secret = pod("private", "web", &image);
    with_secret["spec"]["imagePullSecrets"] = json!([{"name": "pod-cred"}]);
    eventually("the pod's pull secret is used", || {
        let out = w.plane.apply(&with_secret, true);
        (out.stderr() == want).then_some(()).ok_or(out.stderr())
    })
    .await;

    // A template naming no secret: the ServiceAccount admission plugin will copy the account's
    // into each pod it creates, so the account's secret is used.
    let mut with_account = workload("Deployment", "private", "web", &image);
    with_account["spec"]["template"]["spec"]["serviceAccountName"] = json!("builder");
    let want_deployment = denied(&missing_amd64("Deployment web, container \"app\"", &image));
    eventually("the ServiceAccount's pull secret is used", || {
        let out = w.plane.apply(&with_account, true);
        (out.stderr() == want_deployment)
            .then_some(())
            .ok_or(out.stderr())
    })
    .await;

    // A Pod is past that plugin when archgate sees it: its list is what the kubelet pulls with.
    // This API server runs without the plugin, so a Pod naming no secret has none, and the
    // account's are not lent to it (before, archgate used them and judged a pull the kubelet
    // would make anonymously, and be refused).
    let mut pod_of_account = pod("private", "web", &image);
    pod_of_account["spec"]["serviceAccountName"] = json!("builder");
    let out = w.plane.apply(&pod_of_account, true);
    assert!(
        out.ok() && out.stderr().contains("refused access"),
        "{}",
        out.stderr()
    );

    // A pod naming a secret of its own does not get the account's: the ServiceAccount
    // admission plugin copies them only into a pod that names none, and the kubelet pulls with
    // the pod's list alone. Before, archgate merged both and answered for a pull the kubelet
    // would be refused.
    let wrong = json!({"auths": {host: {"auth": b64("puller:wrong")}}}).to_string();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": "wrong-cred", "namespace": "private"},
        "data": {".dockerconfigjson": b64(&wrong)},
    });
    w.plane
        .must(&["apply", "-f", "-"], Some(&secret.to_string()));
    let mut own_and_account = pod("private", "own", &image);
    own_and_account["spec"]["serviceAccountName"] = json!("builder");
    own_and_account["spec"]["imagePullSecrets"] = json!([{"name": "wrong-cred"}]);
    eventually("only the pod's own pull secret is used", || {
        let out = w.plane.apply(&own_and_account, true);
        (out.ok() && out.stderr().contains("refused access"))
            .then_some(())
            .ok_or(out.stderr())
    })
    .await;
}

/// Minimal CRDs of our own making (any field accepted), served as Tekton serves them: v1 for
/// runs, Pipelines and Tasks, v1beta1 for StepActions and ClusterTasks.
fn install_tekton_crds(w: &World) {
    w.plane.install_crds(&common::apiserver::TEKTON_CRDS);
}

async fn tekton_runs(w: &World, archgate: &Archgate) {
    // Installed after archgate started: noticed (and said once) without a restart.
    eventually("archgate notices the Tekton CRDs", || {
        let said = archgate.logged("resource now served by the API server");
        let kinds: Vec<&str> = said.iter().filter_map(|l| l["kind"].as_str()).collect();
        (["Pipeline", "Task", "StepAction"]
            .iter()
            .all(|k| kinds.contains(k)))
        .then_some(())
        .ok_or(format!("{kinds:?}"))
    })
    .await;

    w.namespace("ci", None);
    let arm = w.image(&w.arm);
    let step = json!({"name": "build", "image": arm, "script": "make"});
    let task = json!({
        "apiVersion": "tekton.dev/v1", "kind": "Task",
        "metadata": {"name": "build", "namespace": "ci"},
        "spec": {"steps": [step]},
    });
    let pipeline = json!({
        "apiVersion": "tekton.dev/v1", "kind": "Pipeline",
        "metadata": {"name": "release", "namespace": "ci"},
        "spec": {"tasks": [{"name": "compile", "taskRef": {"name": "build"}}]},
    });
    for object in [&task, &pipeline] {
        w.plane
            .must(&["apply", "-f", "-"], Some(&object.to_string()));
    }
    let run = |kind: &str, name: &str, spec: Value| {
        json!({
            "apiVersion": "tekton.dev/v1", "kind": kind,
            "metadata": {"name": name, "namespace": "ci"},
            "spec": spec,
        })
    };
    let cases = [
        (
            run("TaskRun", "by-spec", json!({"taskSpec": {"steps": [step]}})),
            "TaskRun by-spec",
        ),
        (
            run("TaskRun", "by-ref", json!({"taskRef": {"name": "build"}})),
            "TaskRun by-ref",
        ),
        (
            run(
                "PipelineRun",
                "by-spec",
                json!({"pipelineSpec": {"tasks": [{"name": "compile", "taskSpec": {"steps": [step]}}]}}),
            ),
            "PipelineRun by-spec",
        ),
        (
            run(
                "PipelineRun",
                "by-ref",
                json!({"pipelineRef": {"name": "release"}}),
            ),
            "PipelineRun by-ref",
        ),
    ];
    for (object, what) in cases {
        eventually(what, || {
            let out = w.plane.apply(&object, false);
            let stderr = out.stderr();
            (!out.ok()
                && stderr.starts_with(&format!(
                    "Error from server (Forbidden): error when creating \"STDIN\": admission webhook \"{HOOK}\" denied the request: "
                ))
                && stderr.contains(&format!("step \"build\" image \"{arm}\" is missing linux/amd64 (available: linux/arm64)")))
            .then_some(())
            .ok_or(stderr)
        })
        .await;
    }
}

/// A pending run is reviewed again when it is released: it starts with the Tasks as they are
/// then. Before, runs were reviewed on CREATE only, so editing the Task a held run refers to (Tasks
/// are not reviewed) and then releasing the run started an arm64-only image unchecked. A cancel
/// that changes nothing else is never blocked.
async fn tekton_pending_runs_are_checked_when_released(w: &World) {
    w.namespace("held", None);
    let task = |image: &str| {
        json!({
            "apiVersion": "tekton.dev/v1", "kind": "Task",
            "metadata": {"name": "later", "namespace": "held"},
            "spec": {"steps": [{"name": "build", "image": image, "script": "make"}]},
        })
    };
    let held = |name: &str, status: Option<&str>| {
        let mut spec =
            json!({"pipelineSpec": {"tasks": [{"name": "compile", "taskRef": {"name": "later"}}]}});
        if let Some(status) = status {
            spec["status"] = json!(status);
        }
        json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": name, "namespace": "held"},
            "spec": spec,
        })
    };
    let (multi, arm) = (w.image(&w.multi), w.image(&w.arm));
    w.plane
        .must(&["apply", "-f", "-"], Some(&task(&multi).to_string()));
    for name in ["release-me", "cancel-me"] {
        eventually("a held run of a Task that runs everywhere", || {
            let out = w
                .plane
                .apply(&held(name, Some("PipelineRunPending")), false);
            out.ok().then_some(()).ok_or(out.stderr())
        })
        .await;
    }

    w.plane
        .must(&["apply", "-f", "-"], Some(&task(&arm).to_string()));
    let want =
        format!("step \"build\" image \"{arm}\" is missing linux/amd64 (available: linux/arm64)");
    eventually("releasing the run after its Task changed", || {
        let out = w.plane.apply(&held("release-me", None), false);
        (!out.ok() && out.stderr().contains(HOOK) && out.stderr().contains(&want))
            .then_some(())
            .ok_or(out.stderr())
    })
    .await;
    let out = w.plane.apply(&held("cancel-me", Some("Cancelled")), false);
    assert!(out.ok(), "a cancel is never blocked: {}", out.stderr());
}

/// Issue 13 through the real API server: a task whose `when` is false with the run's params is
/// skipped by Tekton (docs/pipelines.md, "Guard Task execution using when expressions"), so its
/// arm64-only image does not deny the run; with the param that makes it run, it does.
async fn tekton_when_skips_a_task(w: &World) {
    let arm = w.image(&w.arm);
    let run = |name: &str, arch: &str| {
        json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": name, "namespace": "ci"},
            "spec": {
                "params": [{"name": "arch", "value": arch}],
                "pipelineSpec": {
                    "params": [{"name": "arch", "type": "string"}],
                    "tasks": [{
                        "name": "arm-only",
                        "when": [{"input": "$(params.arch)", "operator": "in", "values": ["arm64"]}],
                        "taskSpec": {"steps": [{"name": "build", "image": arm, "script": "make"}]},
                    }],
                },
            },
        })
    };
    let out = w.plane.apply(&run("when-skipped", "amd64"), false);
    assert_eq!(
        out.stdout(),
        "pipelinerun.tekton.dev/when-skipped created\n",
        "{}",
        out.stderr()
    );
    let out = w.plane.apply(&run("when-runs", "arm64"), false);
    assert!(!out.ok(), "{}", out.stdout());
    assert!(
        out.stderr().contains(&format!(
            "pipeline task \"arm-only\" step \"build\" image \"{arm}\" is missing linux/amd64"
        )),
        "{}",
        out.stderr()
    );
}

/// Issue 10: with a fixed platform list (`-p linux/amd64`) and `--kubeconfig`, namespace modes,
/// `--pull-secrets` and Tekton references by name still come from the cluster (before, all
/// three were silently ignored unless `--platform auto`).
async fn static_platforms_keep_the_cluster(w: &World, auto: &Archgate) {
    let args: Vec<String> = w
        .serve_args(&["--pull-secrets"])
        .into_iter()
        .map(|a| {
            if a == "auto" {
                "linux/amd64".to_string()
            } else {
                a
            }
        })
        .chain([
            "--kubeconfig".to_string(),
            w.plane.kubeconfig.display().to_string(),
        ])
        .collect();
    let fixed = Archgate::start(&w.plane.kubeconfig, &args).await;
    w.register(&fixed, None);
    let arm = w.image(&w.arm);
    let reviews = || async { fixed.metric("archgate_reviews_total", "").await };

    // The `warn` label of namespace "warned": admitted with the warning, by this archgate.
    let warning = format!(
        "Warning: missing linux/amd64: container \"app\" image \"{arm}\" (available: linux/arm64)\n"
    );
    eventually("the fixed-platform archgate answers", || {
        let out = w.plane.apply(&pod("warned", "fixed", &arm), true);
        (out.ok() && out.stderr() == warning)
            .then_some(())
            .ok_or(out.stderr())
    })
    .await;
    assert!(
        reviews().await >= 1.0,
        "the fixed-platform archgate answered"
    );

    // A Pipeline by name: found in the cluster, not "was not found".
    let by_ref = json!({
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": "fixed-by-ref", "namespace": "ci"},
        "spec": {"pipelineRef": {"name": "release"}},
    });
    let out = w.plane.apply(&by_ref, true);
    assert!(
        !out.ok()
            && out.stderr().contains(&format!(
                "step \"build\" image \"{arm}\" is missing linux/amd64"
            )),
        "{}",
        out.stderr()
    );

    // A ServiceAccount's pull secret opens the private registry (for a template: a Pod takes
    // the account's secrets from the admission plugin, which this API server does not run).
    let private = w.image(&w.private_arm);
    let mut with_account = workload("Deployment", "private", "fixed", &private);
    with_account["spec"]["template"]["spec"]["serviceAccountName"] = json!("builder");
    let out = w.plane.apply(&with_account, true);
    assert_eq!(
        out.stderr(),
        denied(&missing_amd64(
            "Deployment fixed, container \"app\"",
            &private
        )),
        "pull secrets with a fixed platform list"
    );

    // Back to the `--platform auto` archgate for the scenarios after this one.
    w.register(auto, None);
    let before = reviews().await;
    eventually("the auto archgate answers again", || {
        let out = w.plane.apply(&pod("enforce", "probe", &arm), true);
        (!out.ok() && out.stderr().contains(HOOK))
            .then_some(())
            .ok_or(out.stderr())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = w.plane.apply(&pod("enforce", "probe", &arm), true);
    assert!(!out.ok());
    let after = reviews().await;
    assert!(
        after - before <= 1.0,
        "the fixed archgate is no longer asked"
    );
}

/// Issue 17 through the real API server: with the shipped MutatingWebhookConfiguration (only
/// `clientConfig` changed) and arm64 plus amd64 nodes, an arm64-only pod comes back from
/// `kubectl apply` with required node affinity on arm64 and archgate's annotation.
async fn placement_steers_a_pod(w: &World, archgate: &Archgate) {
    let text =
        std::fs::read_to_string("deploy/components/placement/mutatingwebhookconfiguration.yaml")
            .unwrap();
    let mut config: Value = serde_saphyr::from_str(&text).unwrap();
    let ca = std::fs::read_to_string(w.certs.join("ca-bundle.b64")).unwrap();
    config["webhooks"][0]["clientConfig"] = json!({
        "url": format!("https://127.0.0.1:{}/mutate", archgate.webhook.port()),
        "caBundle": ca.trim(),
    });
    w.plane
        .must(&["apply", "-f", "-"], Some(&config.to_string()));
    w.node("amd-1", "amd64", false);
    w.node("arm-1", "arm64", false);
    w.namespace("steered", None);
    let arm = w.image(&w.arm);
    eventually("the arm64-only pod is steered", || {
        let out = w.plane.apply(&pod("steered", "web", &arm), true);
        (out.ok() && out.stderr().contains("archgate.io/placement"))
            .then_some(())
            .ok_or(out.stderr() + &out.stdout())
    })
    .await;
    let out = w.plane.apply(&pod("steered", "web", &arm), false);
    assert!(out.ok(), "{}", out.stderr());
    let got = w
        .plane
        .must(&["get", "pod", "web", "-n", "steered", "-o", "json"], None);
    let got: Value = serde_json::from_str(&got).unwrap();
    let terms = &got["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(
        terms,
        // Both labels, though the OS does not narrow today: a node that joins later is
        // admitted only if it runs the image.
        &json!([{"matchExpressions": [
            {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}
        ]}]),
        "{got}"
    );
    assert!(
        got["metadata"]["annotations"]["archgate.io/placement"]
            .as_str()
            .is_some_and(|a| a.contains("arm64")),
        "{got}"
    );

    // A node that states its platform only in the beta labels: no patch on the
    // `kubernetes.io/*` labels would select exactly where the image runs, so the pod is left
    // alone with a warning and the validating webhook decides (here: denied, amd-1 is a
    // candidate).
    let beta = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "arm-beta", "labels": {
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "arm64"}},
        "spec": {},
    });
    w.plane.must(&["apply", "-f", "-"], Some(&beta.to_string()));
    let unselectable = format!("Warning: {}\n", archgate::policy::unselectable_warning());
    let before = archgate
        .metric("archgate_mutations_total", "outcome=\"unselectable\"")
        .await;
    eventually("the beta-labelled node is seen", || {
        let out = w.plane.apply(&pod("steered", "web2", &arm), true);
        out.stderr()
            .starts_with(&unselectable)
            .then_some(())
            .ok_or(out.stderr())
    })
    .await;
    let out = w.plane.apply(&pod("steered", "web2", &arm), false);
    let stderr = out.stderr();
    let denial = stderr
        .strip_prefix(&unselectable)
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        denial.starts_with(&denied(&missing_amd64("container \"app\"", &arm))),
        "{denial}"
    );
    assert!(
        archgate
            .metric("archgate_mutations_total", "outcome=\"unselectable\"")
            .await
            >= before + 2.0
    );
    w.plane.must(
        &["delete", "mutatingwebhookconfiguration", "archgate"],
        None,
    );
    w.plane.must(&["delete", "node", "arm-1", "arm-beta"], None);
}

/// 200 pods created with kube-rs, over four images: archgate's registry request count and the
/// registry's own access log must agree, and every pod is answered.
async fn pods_in_a_loop(w: &World, archgate: &Archgate) {
    w.namespace("load", None);
    let client = w.plane.client().await;
    let pods: Api<Pod> = Api::namespaced(client, "load");
    let amd64 = PlatformSpec::new("linux", "amd64");
    let mut images = Vec::new();
    for tag in ["a", "b", "c", "d"] {
        images.push(
            ImageSpec::oci_index("load/app", tag, [amd64.clone()])
                .push(&w.registry)
                .await
                .reference(),
        );
    }
    let logged_before = RegistryLog::read(&w.registry);
    let counted_before = archgate
        .metric("archgate_registry_requests_total", "")
        .await;
    let allowed_before = archgate
        .metric("archgate_reviews_total", "decision=\"allowed\"")
        .await;
    let started = Instant::now();
    for i in 0..200 {
        let object: Pod =
            serde_json::from_value(pod("load", &format!("p{i}"), &images[i % images.len()]))
                .unwrap();
        pods.create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("pod {i}: {e}"));
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "200 pods took too long"
        );
    }
    println!(
        "200 pods created through the webhook in {:?}",
        started.elapsed()
    );
    let allowed = archgate
        .metric("archgate_reviews_total", "decision=\"allowed\"")
        .await;
    assert_eq!(allowed - allowed_before, 200.0);
    // The registry logs a request after answering it: give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logged = RegistryLog::read(&w.registry);
    let (pings, lookups) = (
        logged.pings - logged_before.pings,
        logged.other - logged_before.other,
    );
    let counted = archgate
        .metric("archgate_registry_requests_total", "")
        .await
        - counted_before;
    println!("registry log: {lookups} lookups + {pings} pings; archgate counted {counted}");
    // Four tags: one manifest GET each, once (then cached), and no version probe (a first
    // request is its own probe).
    assert_eq!(lookups, 4.0, "{}", logged.text);
    assert_eq!(pings, 0.0, "{}", logged.text);
    assert_eq!(
        counted,
        lookups + pings,
        "archgate counts every request the registry logged"
    );
}

/// archgate's requests in the registry's own log (`msg="response completed"` lines).
struct RegistryLog {
    pings: f64,
    other: f64,
    text: String,
}

impl RegistryLog {
    fn read(registry: &Registry) -> Self {
        let text = registry.log();
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("msg=\"response completed\"") && l.contains("useragent=archgate/")
            })
            .collect();
        let pings = ours
            .iter()
            .filter(|l| l.contains("http.request.uri=/v2/ "))
            .count();
        Self {
            pings: pings as f64,
            other: (ours.len() - pings) as f64,
            text: ours.join("\n"),
        }
    }
}

/// archgate run as the shipped ServiceAccount with only deploy/'s RBAC: a missing grant shows as
/// not ready and a logged error; with the pull-secrets grant applied it recovers and works.
async fn shipped_rbac_with_a_service_account_token(w: &World) {
    let plane = &w.plane;
    plane.must(&["create", "namespace", "archgate"], None);
    plane.must(
        &["create", "serviceaccount", "archgate", "-n", "archgate"],
        None,
    );
    plane.must(&["apply", "-f", "deploy/base/rbac.yaml"], None);
    let token = plane.must(
        &[
            "create",
            "token",
            "archgate",
            "-n",
            "archgate",
            "--duration",
            "1h",
        ],
        None,
    );
    let kubeconfig = plane.kubeconfig_with_token("archgate-sa", token.trim());

    // --pull-secrets without the pull-secrets component: Secrets and ServiceAccounts forbidden.
    let archgate = Archgate::start_unready(&kubeconfig, &w.serve_args(&["--pull-secrets"])).await;
    eventually("the missing grant is logged", || {
        let lost =
            archgate.logged("lost the API server watch; serving the last known cluster state");
        lost.iter()
            .any(|l| l["error"].as_str().unwrap_or("").contains("forbidden"))
            .then_some(())
            .ok_or(format!("{:?}", archgate.logs()))
    })
    .await;
    assert_eq!(archgate.readyz().await, Some(503));
    assert_eq!(
        archgate.metric("archgate_cluster_view_stale", "").await,
        1.0
    );

    plane.must(
        &["apply", "-f", "deploy/components/pull-secrets/rbac.yaml"],
        None,
    );
    let started = Instant::now();
    while archgate.readyz().await != Some(200) {
        assert!(started.elapsed() < CONVERGE, "{:?}", archgate.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        archgate.metric("archgate_cluster_view_stale", "").await,
        0.0
    );
    w.register(&archgate, None);
    let image = w.image(&w.private_arm);
    // A template: its pods will take the account's secrets (see pull_secrets_of_pods_and_…).
    let mut with_account = workload("Deployment", "private", "sa-run", &image);
    with_account["spec"]["template"]["spec"]["serviceAccountName"] = json!("builder");
    let want = denied(&missing_amd64(
        "Deployment sa-run, container \"app\"",
        &image,
    ));
    // The first archgate answers the same until the API server uses the new registration: wait
    // for a denial counted by this one.
    let started = Instant::now();
    loop {
        let out = w.plane.apply(&with_account, true);
        let here = archgate
            .metric("archgate_reviews_total", "decision=\"denied\"")
            .await;
        if here >= 1.0 {
            assert_eq!(out.stderr(), want);
            break;
        }
        assert!(started.elapsed() < CONVERGE, "{}", out.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing in the ClusterRoles writes: the token cannot create a pod.
    let out = std::process::Command::new(&plane.binaries.kubectl)
        .env("KUBECONFIG", &kubeconfig)
        .args(["auth", "can-i", "create", "pods", "-A"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no\n");
}

/// archgate stopped: `Ignore` admits unchecked, `Fail` refuses.
async fn failure_policy(w: &World, archgate: &mut Archgate) {
    w.register(archgate, None);
    archgate.stop();
    w.namespace("outage", None);
    let arm = w.image(&w.arm);
    let out = w.plane.apply(&pod("outage", "ignored", &arm), false);
    assert_eq!(out.stdout(), "pod/ignored created\n", "{}", out.stderr());

    w.register(archgate, Some("Fail"));
    let refused = |out: &common::apiserver::Kubectl| {
        let stderr = out.stderr();
        (!out.ok()
            && stderr.starts_with(&format!(
                "Error from server (InternalError): error when creating \"STDIN\": Internal error occurred: failed calling webhook \"{HOOK}\": failed to call webhook: Post \"https://127.0.0.1:{}/validate?timeout=10s\"",
                archgate.webhook.port()
            ))
            && stderr.contains("connection refused"))
        .then_some(())
        .ok_or(stderr)
    };
    // Dry runs until the API server uses the new registration (a real create under the old
    // `Ignore` one would succeed and turn later attempts into unchecked updates).
    eventually("failurePolicy Fail refuses", || {
        refused(&w.plane.apply(&pod("outage", "failed", &arm), true))
    })
    .await;
    refused(&w.plane.apply(&pod("outage", "failed", &arm), false)).unwrap();
    let out = w
        .plane
        .kubectl(&["get", "pod", "failed", "-n", "outage"], None);
    assert!(!out.ok(), "a refused pod was created");
}
