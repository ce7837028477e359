//! The webhook end to end: `archgate serve` settings, real TLS, a real registry (through a counting
//! proxy), and the AdmissionReview payloads in ../shared/fixtures/admissionreview.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::webhook::{
    FIXTURES, Webhook, World, client_trusting, load, load_shared, rewrite_images,
};
use common::{Fault, RequestKind};

fn message(response: &Value) -> String {
    response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn fixture_files() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["", "kubewarden-verify-image-signatures"] {
        for entry in std::fs::read_dir(Path::new(FIXTURES).join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".json") {
                out.push(if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                });
            }
        }
    }
    out.sort();
    assert!(
        out.len() >= 13,
        "expected the shared AdmissionReview fixtures, found {out:?}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_gets_the_right_answer() {
    if !common::webhook::shared_corpus("the shared AdmissionReview corpus") {
        return;
    }
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    for name in fixture_files() {
        let original = load_shared(&name);
        let kind = original["request"]["kind"]["kind"]
            .as_str()
            .unwrap()
            .to_string();
        let has_images = original.to_string().contains("\"image\"");

        let mut good = original.clone();
        rewrite_images(&mut good, &world.multi());
        let r = hook.review(&good).await;
        assert_eq!(r["allowed"], true, "{name} with a multi-arch image: {r}");

        let mut bad = original.clone();
        rewrite_images(&mut bad, &world.arm_only());
        let r = hook.review(&bad).await;
        if !has_images {
            assert_eq!(r["allowed"], true, "{name} has no images: {r}");
            continue;
        }
        assert_eq!(r["allowed"], false, "{name} with an arm64-only image: {r}");
        assert_eq!(r["status"]["code"], 403, "{name}");
        let msg = message(&r);
        let expected = format!(
            "image \"{}\" is missing linux/amd64 (available: linux/arm64)",
            world.arm_only()
        );
        assert!(msg.contains(&expected), "{name}: {msg}");
        assert!(
            msg.contains("rebuild for every platform: docker buildx build --platform linux/amd64"),
            "{name}: {msg}"
        );
        let first = msg.lines().next().unwrap();
        // The first container the kubelet starts leads: an init container says so.
        let scope = if original["request"]["object"]
            .pointer("/spec/initContainers/0")
            .or_else(|| {
                original["request"]["object"].pointer("/spec/template/spec/initContainers/0")
            })
            .is_some()
        {
            "init container \""
        } else {
            "container \""
        };
        if kind == "Pod" {
            assert!(first.starts_with(scope), "{name}: {first}");
        } else {
            assert!(first.starts_with(&format!("{kind} ")), "{name}: {first}");
            assert!(first.contains(&format!(", {scope}")), "{name}: {first}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_messages_for_pods() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let missing = world.image("fixtures/multi", "no-such-tag");
    let mut review = load("pod-with-init-container.json");
    review["request"]["object"]["spec"]["initContainers"][0]["image"] = json!(missing);
    review["request"]["object"]["spec"]["containers"][0]["image"] = json!(world.arm_only());
    let r = hook.review(&review).await;
    assert_eq!(r["allowed"], false);
    let lines: Vec<String> = message(&r).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        vec![
            format!("init container \"init\" image \"{missing}\" not found in registry"),
            format!(
                "container \"nginx\" image \"{}\" is missing linux/amd64 (available: linux/arm64)",
                world.arm_only()
            ),
            "rebuild for every platform: docker buildx build --platform linux/amd64,linux/arm64 ..."
                .to_string(),
        ]
    );
    // An arm64 node selector makes the arm-only image fine; the missing one is still missing.
    review["request"]["object"]["spec"]["nodeSelector"] = json!({"kubernetes.io/arch": "arm64"});
    let hook2 = Webhook::start(&world, &["-p", "linux/amd64", "-p", "linux/arm64"]).await;
    let r = hook2.review(&review).await;
    let msg = message(&r);
    assert!(!msg.contains("is missing"), "{msg}");
    assert!(msg.contains("not found in registry"), "{msg}");
    // A selector no configured platform matches: allowed, with a warning.
    review["request"]["object"]["spec"]["nodeSelector"] = json!({"kubernetes.io/arch": "s390x"});
    let r = hook2.review(&review).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("no node platform matches"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_warn_and_audit_allow() {
    let world = World::new().await;
    let mut review = load("deployment-create.json");
    rewrite_images(&mut review, &world.arm_only());
    let warn = Webhook::start(&world, &["--mode", "warn"]).await;
    let r = warn.review(&review).await;
    assert_eq!(r["allowed"], true);
    let warnings = r["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{r}");
    let w = warnings[0].as_str().unwrap();
    // The problem first, whole, within the 256 characters the API server keeps (issue 15).
    assert!(
        w.chars().count() <= archgate::policy::MAX_WARNING_CHARS
            && w.starts_with("missing linux/amd64: Deployment nginx, container")
            && w.ends_with("(available: linux/arm64)"),
        "{w}"
    );
    let audit = Webhook::start(&world, &["--mode", "audit"]).await;
    let r = audit.review(&review).await;
    assert_eq!(r["allowed"], true);
    assert!(r.get("warnings").is_none(), "{r}");
    let metrics = audit.metrics().await;
    assert!(
        metrics.contains("archgate_reviews_total{decision=\"audited\",operation=\"CREATE\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_check_only_new_images_and_delete_is_allowed() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let mut review = load("deployment-create.json");
    rewrite_images(&mut review, &world.arm_only());
    let old = review["request"]["object"].clone();
    review["request"]["operation"] = json!("UPDATE");
    review["request"]["oldObject"] = old.clone();
    review["request"]["object"]["metadata"]["labels"] = json!({"edited": "yes"});
    let r = hook.review(&review).await;
    assert_eq!(
        r["allowed"], true,
        "an unrelated edit must never be blocked: {r}"
    );
    assert_eq!(
        world.proxy.counts().kind(RequestKind::Manifest),
        0,
        "no image was new, nothing to look up"
    );

    let containers = review["request"]["object"]["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap();
    containers.push(json!({"name": "side", "image": world.image("fixtures/single-arm64", "v1")}));
    let r = hook.review(&review).await;
    assert_eq!(r["allowed"], false);
    let msg = message(&r);
    assert!(msg.contains("container \"side\""), "{msg}");
    assert!(
        !msg.contains(&world.arm_only()),
        "the old image must not be re-judged: {msg}"
    );

    review["request"]["operation"] = json!("DELETE");
    assert_eq!(hook.review(&review).await["allowed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_containers_subresource() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let mut review = load("pod-with-init-container.json");
    rewrite_images(&mut review, &world.multi());
    let old = review["request"]["object"].clone();
    review["request"]["operation"] = json!("UPDATE");
    review["request"]["subResource"] = json!("ephemeralcontainers");
    review["request"]["oldObject"] = old;
    review["request"]["object"]["spec"]["ephemeralContainers"] =
        json!([{"name": "debugger", "image": world.arm_only()}]);
    let r = hook.review(&review).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        message(&r).starts_with("container \"debugger\""),
        "{}",
        message(&r)
    );
    // Other subresources never add images.
    review["request"]["subResource"] = json!("status");
    assert_eq!(hook.review(&review).await["allowed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_400_and_the_server_keeps_going() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let bad: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
        br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#
            .to_vec(),
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":5}}"#
            .to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01],
    ];
    for body in bad {
        let resp = hook.post(body.clone()).await;
        assert_eq!(resp.status(), 400, "{:?}", String::from_utf8_lossy(&body));
        assert!(!resp.text().await.unwrap().is_empty());
    }
    let huge = vec![b' '; 5 << 20];
    assert_eq!(hook.post(huge).await.status(), 413);
    let wrong_path = hook
        .client
        .post(hook.url("/admit"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_path.status(), 404);
    let mut review = load("pod-create.json");
    rewrite_images(&mut review, &world.multi());
    assert_eq!(
        hook.review(&review).await["allowed"],
        true,
        "still serving after bad input"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_reviews_make_no_registry_requests() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let mut review = load("pod-create.json");
    rewrite_images(&mut review, &world.multi());
    assert_eq!(hook.review(&review).await["allowed"], true);
    // Cold: one GET of the index, nothing more (no version probe).
    let cold = world.proxy.counts();
    assert_eq!(cold.get("GET", RequestKind::Base), 0, "{cold:?}");
    assert_eq!(cold.get("GET", RequestKind::Manifest), 1, "{cold:?}");
    assert_eq!(cold.total(), 1, "{cold:?}");
    world.proxy.reset();
    for _ in 0..50 {
        assert_eq!(hook.review(&review).await["allowed"], true);
    }
    assert_eq!(
        world.proxy.counts().total(),
        0,
        "{:?}",
        world.proxy.counts()
    );
    let metrics = hook.metrics().await;
    assert!(
        metrics.contains("archgate_lookups_total{cache=\"hit\"} 50"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_reviews_share_one_lookup() {
    let world = World::new().await;
    let hook = Arc::new(Webhook::start(&world, &[]).await);
    let mut review = load("pod-create.json");
    rewrite_images(&mut review, &world.image("fixtures/single-amd64", "v1"));
    // Slow the registry down so all 40 reviews arrive while the first lookup is in flight.
    world
        .proxy
        .set_fault(Fault::Delay(Duration::from_millis(300)));
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let hook = hook.clone();
            let review = review.clone();
            tokio::spawn(async move { hook.review(&review).await["allowed"].as_bool() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Some(true));
    }
    let counts = world.proxy.counts();
    assert_eq!(counts.get("GET", RequestKind::Base), 0, "{counts:?}");
    assert_eq!(counts.get("HEAD", RequestKind::Manifest), 0, "{counts:?}");
    assert_eq!(counts.get("GET", RequestKind::Manifest), 1, "{counts:?}");
    assert_eq!(
        counts.get("GET", RequestKind::Blob),
        1,
        "single-arch: one config blob: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_trouble_is_answered_within_the_deadline() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &["--review-deadline", "1"]).await;
    let mut review = load("pod-create.json");
    rewrite_images(&mut review, &world.multi());
    world.proxy.set_fault(Fault::Delay(Duration::from_secs(4)));
    let started = Instant::now();
    let r = hook.review(&review).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "answered after {took:?}"
    );
    assert_eq!(r["allowed"], true, "default --on-registry-error allow: {r}");
    let w = r["warnings"][0].as_str().unwrap();
    assert!(
        w.contains(world.proxy.host()) && w.contains("not checked"),
        "{w}"
    );

    let strict = Webhook::start(
        &world,
        &["--review-deadline", "1", "--on-registry-error", "deny"],
    )
    .await;
    let mut review = load("pod-create.json");
    rewrite_images(&mut review, &world.image("fixtures/dockerlist", "v1"));
    let r = strict.review(&review).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        message(&r).contains("did not answer in time"),
        "{}",
        message(&r)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_http2() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let get = |path: &str| hook.client.get(hook.admin(path)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let mut review = load("pod-create.json");
    rewrite_images(&mut review, &world.multi());
    let resp = hook.post(serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(
        resp.version(),
        reqwest::Version::HTTP_2,
        "ALPN should pick h2"
    );
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for name in [
        "archgate_reviews_total{decision=\"allowed\",operation=\"CREATE\"} 1",
        "archgate_review_duration_seconds_count 1",
        "archgate_lookups_total{cache=\"miss\"} 1",
        "archgate_registry_requests_total{status=\"2xx\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from {metrics}");
    }
    let h1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(hook.secret.ca_pem.as_bytes()).unwrap()])
        .http1_only()
        .build()
        .unwrap();
    let resp = h1
        .post(hook.url("/validate"))
        .body(serde_json::to_vec(&review).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_by_symlink_swap() {
    let world = World::new().await;
    let mut hook = Webhook::start(&world, &[]).await;
    let old_ca = hook.secret.ca_pem.clone();
    assert_eq!(
        hook.client
            .get(hook.url("/validate"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    hook.secret.rotate();
    let new_client = client_trusting(&hook.secret.ca_pem);
    // The poll interval is one second; allow a few.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match new_client.get(hook.url("/validate")).send().await {
            Ok(resp) => {
                assert_eq!(resp.status(), 405);
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("new certificate never served: {e}"),
        }
    }
    // A fresh connection trusting only the old CA is now refused: the old certificate is gone.
    let old_client = client_trusting(&old_ca);
    assert!(old_client.get(hook.url("/validate")).send().await.is_err());
    // A broken rotation (key does not match) keeps the current certificate.
    std::fs::write(hook.secret.path().join("..data/tls.key"), "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        client_trusting(&hook.secret.ca_pem)
            .get(hook.url("/validate"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    hook.running.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exempt_namespaces_and_image_globs_are_not_checked() {
    let world = World::new().await;
    let glob = format!("{}/cerebral/*", world.proxy.host());
    let hook = Webhook::start(
        &world,
        &["--exempt-namespace", "legacy", "--exempt-image", &glob],
    )
    .await;
    let mut review = load("pod-with-init-container.json");
    rewrite_images(&mut review, &world.arm_only());
    assert_eq!(
        hook.review(&review).await["allowed"],
        true,
        "the image matches the exempt glob"
    );
    rewrite_images(&mut review, &world.image("fixtures/single-arm64", "v1"));
    assert_eq!(
        hook.review(&review).await["allowed"],
        false,
        "outside the glob it is checked"
    );
    review["request"]["namespace"] = json!("legacy");
    assert_eq!(
        hook.review(&review).await["allowed"],
        true,
        "exempt namespace"
    );
    assert_eq!(
        world.proxy.counts().get("GET", RequestKind::Manifest),
        1,
        "exempt images and namespaces are never looked up"
    );
}

// ---- one pipeline, no way around it (issue 10) ----------------------------------------------

/// A review of `object` (kind `group/kind`) sent by `user`.
fn review_of(group: &str, kind: &str, resource: &str, user: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3f1c1b7e-0000-4000-8000-000000000010",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": user},
            "object": object,
        }
    })
}

fn deployment_on(arch_selector: Value, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "default"},
        "spec": {"template": {"spec": {
            "nodeSelector": arch_selector,
            "containers": [{"name": "api", "image": image}],
        }}},
    })
}

/// Before: "only new images are checked on UPDATE", so moving a Deployment whose amd64-only image
/// is unchanged onto arm64 nodes was allowed. Now an image is skipped only if the old object had it
/// on the same candidate platforms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_moves_a_workload_is_checked_again() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &["-p", "linux/amd64", "-p", "linux/arm64"]).await;
    let f = &world.fixtures;
    let amd64_only = world.image(&f.single_amd64.repository, &f.single_amd64.tag);
    let on_amd = deployment_on(json!({"kubernetes.io/arch": "amd64"}), &amd64_only);
    let on_arm = deployment_on(json!({"kubernetes.io/arch": "arm64"}), &amd64_only);

    let create =
        |object: &Value| review_of("apps", "Deployment", "deployments", "dev", object.clone());
    assert_eq!(hook.review(&create(&on_amd)).await["allowed"], true);
    let denied = hook.review(&create(&on_arm)).await;
    assert_eq!(denied["allowed"], false, "{denied}");

    let update = |old: &Value, new: &Value| {
        let mut r = create(new);
        r["request"]["operation"] = json!("UPDATE");
        r["request"]["oldObject"] = old.clone();
        r
    };
    // The same image, moved from amd64 to arm64 by its nodeSelector.
    let r = hook.review(&update(&on_amd, &on_arm)).await;
    assert_eq!(
        r["allowed"], false,
        "a move must be checked like a create: {r}"
    );
    assert!(
        message(&r).contains("is missing linux/arm64"),
        "{}",
        message(&r)
    );

    // The same move written as required node affinity.
    let mut by_affinity = on_amd.clone();
    by_affinity["spec"]["template"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("nodeSelector");
    by_affinity["spec"]["template"]["spec"]["affinity"] = json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
            "matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]
        }]}
    }});
    let r = hook.review(&update(&on_amd, &by_affinity)).await;
    assert_eq!(r["allowed"], false, "{r}");

    // An unrelated edit (same image, same placement) is still never blocked, and asks nothing.
    world.proxy.reset();
    let mut relabelled = on_arm.clone();
    relabelled["metadata"]["labels"] = json!({"edited": "yes"});
    let r = hook.review(&update(&on_arm, &relabelled)).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(world.proxy.counts().kind(RequestKind::Manifest), 0);
}

/// An UPDATE is compared with the old object target by target, all of them: containers added
/// after thousands of unchanged ones are still checked (a bound applied before the comparison
/// would leave only the unchanged ones, and allow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_adding_containers_after_thousands_of_unchanged_ones_is_checked() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let container = |i: usize, image: &str| json!({"name": format!("c{i}"), "image": image});
    let old: Vec<Value> = (0..2500).map(|i| container(i, &world.multi())).collect();
    let mut new = old.clone();
    new.push(container(2500, &world.arm_only()));
    let pod_of = |containers: Vec<Value>| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "big", "namespace": "dev"},
               "spec": {"containers": containers}})
    };
    let mut r = review_of("", "Pod", "pods", "dev", pod_of(new));
    r["request"]["operation"] = json!("UPDATE");
    r["request"]["oldObject"] = pod_of(old);
    let answer = hook.review(&r).await;
    assert_eq!(answer["allowed"], false, "{answer}");
    let msg = message(&answer);
    assert!(msg.starts_with("container \"c2500\""), "{msg}");
}

/// Before: an object archgate could not read (here a PipelineRun whose custom task nests its
/// spec deeper than the JSON reader's 128 levels, which the API server accepts) was allowed
/// whatever the policy, its other tasks' images unchecked. Not read is not checked: it follows
/// `--on-registry-error`, denied with `deny`, allowed with a warning by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_archgate_cannot_read_follows_on_registry_error() {
    let world = World::new().await;
    let mut deep = json!("leaf");
    for _ in 0..200 {
        deep = json!([deep]);
    }
    let run = json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"name": "deep", "namespace": "default"},
        "spec": {"pipelineSpec": {"tasks": [
            {"name": "custom", "taskSpec": {"apiVersion": "example.dev/v1", "kind": "Wait", "spec": deep}},
            {"name": "build", "taskSpec": {"steps": [{"name": "s", "image": world.arm_only()}]}},
        ]}},
    });
    let review = review_of(
        "tekton.dev",
        "PipelineRun",
        "pipelineruns",
        "dev@example.com",
        run,
    );
    let strict = Webhook::start(&world, &["--on-registry-error", "deny"]).await;
    let r = strict.review(&review).await;
    assert_eq!(r["allowed"], false, "{r}");
    let message = r["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("PipelineRun \"deep\""), "{r}");
    let lenient = Webhook::start(&world, &[]).await;
    let r = lenient.review(&review).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r["warnings"][0].as_str().unwrap().contains("deep"), "{r}");
}

/// Before: any Pod could carry `TEKTON_PLATFORM_COMMANDS` claiming linux/amd64 and pass with no
/// registry request. Now only pods created by the Tekton controller's identity are trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tekton_platform_commands_are_trusted_only_from_the_tekton_controller() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let claim = r#"{"linux/amd64":["/ko-app/tool"]}"#;
    let pod = |image: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "step-pod", "namespace": "default"},
            // As Tekton builds a step whose image it looked up (no command of its own).
            "spec": {"containers": [{"name": "step-build", "image": image,
                "command": ["/tekton/bin/entrypoint"], "args": ["-post_file", "/tekton/run/0/out", "--"],
                "env": [{"name": "TEKTON_PLATFORM_COMMANDS", "value": claim}]}]},
        })
    };
    let missing = world.image("cerebral/ai-base", "no-such-tag");
    for image in [world.arm_only(), missing] {
        let r = hook
            .review(&review_of(
                "",
                "Pod",
                "pods",
                "dev@example.com",
                pod(&image),
            ))
            .await;
        assert_eq!(
            r["allowed"], false,
            "a hand-written claim must not pass: {r}"
        );
    }

    world.proxy.reset();
    let controller = archgate::admission::DEFAULT_TEKTON_CONTROLLER;
    let r = hook
        .review(&review_of(
            "",
            "Pod",
            "pods",
            controller,
            pod(&world.arm_only()),
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(
        world.proxy.counts().total(),
        0,
        "the controller's own answer needs no registry request"
    );

    // The identity is a setting.
    let hook = Webhook::start(
        &world,
        &["--tekton-controller", "system:serviceaccount:ci:tekton"],
    )
    .await;
    let r = hook
        .review(&review_of(
            "",
            "Pod",
            "pods",
            controller,
            pod(&world.arm_only()),
        ))
        .await;
    assert_eq!(r["allowed"], false, "{r}");
    let r = hook
        .review(&review_of(
            "",
            "Pod",
            "pods",
            "system:serviceaccount:ci:tekton",
            pod(&world.arm_only()),
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
}

/// The kind is decided by group and kind: a custom `example.com/v1 Job` is not a batch Job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_are_decided_by_group_and_kind() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let job = json!({
        "apiVersion": "example.com/v1", "kind": "Job",
        "metadata": {"name": "etl", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"name": "x", "image": world.arm_only()}]}}},
    });
    let r = hook
        .review(&review_of("example.com", "Job", "jobs", "dev", job.clone()))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(world.proxy.counts().total(), 0);
    let r = hook
        .review(&review_of("batch", "Job", "jobs", "dev", job))
        .await;
    assert_eq!(r["allowed"], false, "{r}");
}
