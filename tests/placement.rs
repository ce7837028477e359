//! Placement mode over real TLS in front of a real registry: `POST /mutate` steers Pods in a mixed
//! cluster, the patch it returns is applied here with an RFC 6902 implementation, and the
//! validating webhook is asked again about the result.

mod common;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use serde_json::{Value, json};

use common::webhook::{Webhook, World};

const MIXED: &[&str] = &["-p", "linux/amd64", "-p", "linux/arm64"];
const TERMS: &str = "requiredDuringSchedulingIgnoredDuringExecution";

async fn post(hook: &Webhook, body: impl Into<reqwest::Body>) -> reqwest::Response {
    let request = hook.client.post(hook.url("/mutate"));
    let request = request.header("content-type", "application/json");
    request.body(body).send().await.unwrap()
}

/// The response of `/mutate` and the patch it carries (empty when none), checking the envelope.
async fn mutate(hook: &Webhook, review: &Value) -> (Value, Vec<Value>) {
    let resp = post(hook, serde_json::to_vec(review).unwrap()).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    let response = body["response"].clone();
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(
        response["allowed"], true,
        "placement never denies: {response}"
    );
    let Some(encoded) = response["patch"].as_str() else {
        assert!(response.get("patch").is_none(), "{response}");
        assert!(response.get("patchType").is_none(), "{response}");
        return (response, Vec::new());
    };
    assert_eq!(response["patchType"], "JSONPatch");
    // The API server reads `patch` as base64 (`[]byte` in admission.k8s.io/v1).
    let bytes = BASE64_STANDARD.decode(encoded).unwrap();
    let patch: Vec<Value> = serde_json::from_slice(&bytes).unwrap();
    (response, patch)
}

/// The request's object with `patch` applied, as the API server would store it.
fn apply(review: &Value, patch: &[Value]) -> Value {
    let mut object = review["request"]["object"].clone();
    let ops: json_patch::Patch = serde_json::from_value(Value::Array(patch.to_vec())).unwrap();
    json_patch::patch(&mut object, &ops).unwrap();
    object
}

fn with_object(review: &Value, object: Value) -> Value {
    let mut review = review.clone();
    review["request"]["object"] = object;
    review
}

/// What a steered pod's terms gain: the OS too, though every node is Linux, so that a node
/// that joins later is admitted only if it runs the image.
fn linux_arm64() -> [Value; 2] {
    [
        json!({"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}),
        json!({"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}),
    ]
}

/// A Pod CREATE review as the API server sends it for a ReplicaSet's pod (written here so the
/// tests run without ../shared), with its one container running `image`.
fn pod_review(image: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "6c2a4f0e-1b7d-4e8a-9c3f-000000000017",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "generateName": "echo-7d9c5b6f4-",
                    "namespace": "shop",
                    "labels": {"app": "echo", "pod-template-hash": "7d9c5b6f4"},
                    "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-30T09:00:00Z"},
                    "ownerReferences": [{
                        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "echo-7d9c5b6f4",
                        "uid": "5d0f1a2e-8f57-4c57-9a0e-2f1b8b6c1a11", "controller": true,
                        "blockOwnerDeletion": true,
                    }],
                },
                "spec": {
                    "containers": [{
                        "name": "echo-server",
                        "image": image,
                        "ports": [{"name": "http-port", "containerPort": 8080, "protocol": "TCP"}],
                        "resources": {},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                        "imagePullPolicy": "Always",
                    }],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "serviceAccountName": "default",
                    "securityContext": {},
                    "schedulerName": "default-scheduler",
                    "tolerations": [
                        {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                         "effect": "NoExecute", "tolerationSeconds": 300},
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                         "effect": "NoExecute", "tolerationSeconds": 300},
                    ],
                    "priority": 0,
                    "enableServiceLinks": true,
                },
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arm64_only_pod_is_steered_and_then_admitted() {
    let world = World::new().await;
    let hook = Webhook::start(&world, MIXED).await;
    let review = pod_review(&world.arm_only());

    // Without placement mode the validator refuses it and says how to pin it.
    let denied = hook.review(&review).await;
    assert_eq!(denied["allowed"], false);
    let message = denied["status"]["message"].as_str().unwrap();
    assert!(
        message.ends_with("pin it: nodeSelector kubernetes.io/arch: arm64"),
        "{message}"
    );

    let (response, patch) = mutate(&hook, &review).await;
    let pod = apply(&review, &patch);
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"][TERMS]["nodeSelectorTerms"],
        json!([{"matchExpressions": linux_arm64()}])
    );
    let note = format!(
        "archgate added required node affinity kubernetes.io/os In (linux) and \
         kubernetes.io/arch In (arm64): container \"echo-server\" image \"{}\" is missing linux/amd64 (available: linux/arm64)",
        world.arm_only()
    );
    assert_eq!(
        pod["metadata"]["annotations"]["archgate.io/placement"],
        note
    );
    // The fixture's own annotations are kept (the new key went in as `archgate.io~1placement`).
    let before = review["request"]["object"]["metadata"]["annotations"]
        .as_object()
        .unwrap();
    for (key, value) in before {
        assert_eq!(&pod["metadata"]["annotations"][key], value, "{key}");
    }
    assert_eq!(
        response["warnings"],
        json!([
            "archgate added node affinity kubernetes.io/os In (linux) and kubernetes.io/arch In (arm64); \
             why: annotation archgate.io/placement"
        ])
    );
    // Everything else is untouched.
    let mut unsteered = pod.clone();
    unsteered["spec"]
        .as_object_mut()
        .unwrap()
        .remove("affinity");
    unsteered["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("archgate.io/placement");
    assert_eq!(unsteered, review["request"]["object"]);

    // Mutating webhooks run before validating ones: the steered Pod is admitted.
    let admitted = hook.review(&with_object(&review, pod.clone())).await;
    assert_eq!(admitted["allowed"], true, "{admitted}");

    // Reinvocation (reinvocationPolicy: IfNeeded) sees its own affinity and adds nothing.
    let (_, again) = mutate(&hook, &with_object(&review, pod)).await;
    assert!(again.is_empty(), "{again:?}");

    let metrics = hook.metrics().await;
    assert!(
        metrics.contains("archgate_mutations_total{outcome=\"steered\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("archgate_mutations_total{outcome=\"fits\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ored_term_gets_the_restriction() {
    let world = World::new().await;
    let hook = Webhook::start(&world, MIXED).await;
    let mut review = pod_review(&world.arm_only());
    let terms = json!([
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "node.kubernetes.io/instance-type", "operator": "Exists"}]},
    ]);
    review["request"]["object"]["spec"]["affinity"] =
        json!({"nodeAffinity": {TERMS: {"nodeSelectorTerms": terms}}});
    let (_, patch) = mutate(&hook, &review).await;
    let pod = apply(&review, &patch);
    let merged = &pod["spec"]["affinity"]["nodeAffinity"][TERMS]["nodeSelectorTerms"];
    for (i, term) in terms.as_array().unwrap().iter().enumerate() {
        let mut want = term["matchExpressions"].as_array().unwrap().clone();
        want.extend(linux_arm64());
        assert_eq!(merged[i]["matchExpressions"], json!(want), "term {i}");
    }
    assert_eq!(merged.as_array().unwrap().len(), 2);
    let admitted = hook.review(&with_object(&review, pod)).await;
    assert_eq!(admitted["allowed"], true, "{admitted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_placement_leaves_alone() {
    let world = World::new().await;
    let hook = Webhook::start(&world, MIXED).await;
    let arm = world.arm_only();
    let base = pod_review(&arm);

    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut daemonset = base.clone();
    daemonset["request"]["object"]["metadata"]["ownerReferences"] = json!([
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "1", "controller": true},
    ]);
    cases.push(("DaemonSet pod", daemonset));
    let mut mirror = base.clone();
    mirror["request"]["object"]["metadata"]["annotations"]["kubernetes.io/config.mirror"] =
        json!("3c2f9b");
    cases.push(("mirror pod", mirror));
    let mut bound = base.clone();
    bound["request"]["object"]["spec"]["nodeName"] = json!("node-a");
    cases.push(("nodeName set", bound));
    let mut update = base.clone();
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = base["request"]["object"].clone();
    cases.push(("UPDATE", update));
    cases.push(("every image fits", pod_review(&world.multi())));
    // A workload template is never mutated: GitOps tools would fight the webhook.
    let mut deployment = base.clone();
    let request = &mut deployment["request"];
    request["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    request["resource"] = json!({"group": "apps", "version": "v1", "resource": "deployments"});
    request["object"] = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"template": {"spec": {"containers": [{"name": "api", "image": arm}]}}},
    });
    cases.push(("Deployment", deployment.clone()));
    for (what, review) in &cases {
        let (_, patch) = mutate(&hook, review).await;
        assert!(patch.is_empty(), "{what}: {patch:?}");
    }
    // The validator still denies the template on its own.
    assert_eq!(hook.review(&deployment).await["allowed"], false);

    // Bodies that are not an AdmissionReview get 400, as on /validate.
    for body in [
        "",
        "{",
        "null",
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    ] {
        assert_eq!(post(&hook, body).await.status(), 400, "{body:?}");
    }

    // No node runs arm64: nothing to steer to, and the validator denies the pod.
    let amd64_only = Webhook::start(&world, &["-p", "linux/amd64"]).await;
    let (_, patch) = mutate(&amd64_only, &base).await;
    assert!(patch.is_empty(), "{patch:?}");
    let denied = amd64_only.review(&base).await;
    assert_eq!(denied["allowed"], false);

    // Audit promises not to interfere; exempt namespaces are not looked at. Warn steers.
    let mixed_with = |extra: &'static [&'static str]| [MIXED, extra].concat();
    for (flags, steered) in [
        (mixed_with(&["--mode", "audit"]), false),
        (mixed_with(&["--exempt-namespace", "shop"]), false),
        (mixed_with(&["--mode", "warn"]), true),
    ] {
        let other = Webhook::start(&world, &flags).await;
        let (_, patch) = mutate(&other, &base).await;
        assert_eq!(!patch.is_empty(), steered, "{flags:?}: {patch:?}");
    }

    let metrics = hook.metrics().await;
    for (outcome, count) in [
        ("daemonset", 1),
        ("mirror", 1),
        ("node_name", 1),
        ("not_applicable", 2),
        ("fits", 1),
    ] {
        let line = format!("archgate_mutations_total{{outcome=\"{outcome}\"}} {count}");
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    assert!(!metrics.contains("outcome=\"steered\""), "{metrics}");
    assert!(
        amd64_only
            .metrics()
            .await
            .contains("archgate_mutations_total{outcome=\"nowhere\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tekton_task_pod_is_steered() {
    let world = World::new().await;
    let hook = Webhook::start(&world, MIXED).await;
    let mut review = pod_review(&world.arm_only());
    let request = &mut review["request"];
    request["userInfo"]["username"] =
        json!("system:serviceaccount:tekton-pipelines:tekton-pipelines-controller");
    let object = &mut request["object"];
    object["metadata"]["ownerReferences"] = json!([
        {"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "name": "build-x", "uid": "7", "controller": true},
    ]);
    object["metadata"]["labels"]["tekton.dev/taskRun"] = json!("build-x");
    object["spec"]["containers"][0]["name"] = json!("step-build");
    let (_, patch) = mutate(&hook, &review).await;
    let pod = apply(&review, &patch);
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"][TERMS]["nodeSelectorTerms"][0]["matchExpressions"],
        json!(linux_arm64())
    );
    assert_eq!(
        hook.review(&with_object(&review, pod)).await["allowed"],
        true
    );
}
