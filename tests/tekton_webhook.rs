//! Tekton runs through the real webhook and registry: a PipelineRun is rejected at create time,
//! naming the task and step, before any TaskRun starts.

mod common;

use serde_json::{Value, json};

use common::webhook::{Webhook, World};

fn review(kind: &str, version: &str, object: Value) -> Value {
    let resource = format!("{}s", kind.to_ascii_lowercase());
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "c0ffee00-0000-4000-8000-000000000001",
            "kind": {"group": "tekton.dev", "version": "v1", "kind": kind},
            "resource": {"group": "tekton.dev", "version": "v1", "resource": resource},
            "requestKind": {"group": "tekton.dev", "version": version, "kind": kind},
            "name": "",
            "namespace": "ci",
            "operation": "CREATE",
            "userInfo": {"username": "dev"},
            "object": object,
        }
    })
}

/// The incident: a kaniko step whose builder image exists only for arm64.
fn pipeline_run(builder: &str, base: &str) -> Value {
    json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"generateName": "build-", "namespace": "ci"},
        "spec": {
            "params": [{"name": "builder", "value": builder}],
            "pipelineSpec": {
                "params": [{"name": "builder"}],
                "tasks": [{
                    "name": "build",
                    "params": [{"name": "BUILDER_IMAGE", "value": "$(params.builder)"},
                               {"name": "IMAGE", "value": "registry.example/out/app:1"},
                               {"name": "BASE_IMAGE", "value": base}],
                    "taskSpec": {
                        "params": [{"name": "BUILDER_IMAGE"}, {"name": "IMAGE"}, {"name": "BASE_IMAGE"}],
                        "steps": [{"name": "kaniko", "image": "$(params.BUILDER_IMAGE)",
                                   "args": ["--destination=$(params.IMAGE)"]}]
                    }
                }]
            }
        }
    })
}

fn message(r: &Value) -> String {
    r["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_run_with_an_arm_only_builder_is_denied_naming_task_and_step() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let r = hook
        .review(&review(
            "PipelineRun",
            "v1",
            pipeline_run(&world.arm_only(), &world.multi()),
        ))
        .await;
    assert_eq!(r["allowed"], false, "{r}");
    let first = message(&r).lines().next().unwrap().to_string();
    assert_eq!(
        first,
        format!(
            "pipeline task \"build\" step \"kaniko\" image \"{}\" is missing linux/amd64 (available: linux/arm64)",
            world.arm_only()
        )
    );
    // The build output (IMAGE) is never looked up; a good builder is allowed.
    let r = hook
        .review(&review(
            "PipelineRun",
            "v1",
            pipeline_run(&world.multi(), &world.multi()),
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_base_image_named_by_image_params_is_denied() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let missing = world.image("cerebral/ai-base", "does-not-exist");
    let run = pipeline_run(&world.multi(), &missing);
    // Without configuration BASE_IMAGE is just a param.
    assert_eq!(
        hook.review(&review("PipelineRun", "v1beta1", run.clone()))
            .await["allowed"],
        true
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "tekton:\n  imageParams: [BASE_IMAGE]\n").unwrap();
    let strict = Webhook::start(&world, &["--config", config.to_str().unwrap()]).await;
    let r = strict.review(&review("PipelineRun", "v1beta1", run)).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        message(&r).contains(&format!("image \"{missing}\" not found in registry")),
        "{}",
        message(&r)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_run_sidecar_and_annotation_images_are_checked() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let task_run = json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "TaskRun",
        "metadata": {"generateName": "unit-", "annotations": {"archgate.io/images": world.arm_only()}},
        "spec": {"taskSpec": {
            "stepTemplate": {"image": world.multi()},
            "steps": [{"name": "test", "script": "make test"}],
            "sidecars": [{"name": "db", "image": world.multi()}]
        }}
    });
    let r = hook
        .review(&review("TaskRun", "v1", task_run.clone()))
        .await;
    assert_eq!(
        r["allowed"], false,
        "the annotated image is arm64-only: {r}"
    );
    assert!(message(&r).contains(&world.arm_only()));
    // On arm64 nodes (podTemplate nodeSelector) the same run is fine.
    let mut pinned = task_run;
    pinned["spec"]["podTemplate"] = json!({"nodeSelector": {"kubernetes.io/arch": "arm64"}});
    let both = Webhook::start(&world, &["-p", "linux/amd64,linux/arm64"]).await;
    assert_eq!(
        both.review(&review("TaskRun", "v1", pinned)).await["allowed"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_resolved_pipelines_are_allowed_with_a_warning() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let run = json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"name": "from-git"},
        "spec": {"pipelineRef": {"resolver": "git", "params": [
            {"name": "url", "value": "https://example.invalid/repo.git"},
            {"name": "pathInRepo", "value": "pipeline.yaml"}]}}
    });
    let r = hook.review(&review("PipelineRun", "v1", run)).await;
    assert_eq!(r["allowed"], true, "{r}");
    let warnings = r["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("not checked")),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_tasks_are_fetched_from_the_registry() {
    let world = World::new().await;
    let task = format!(
        "apiVersion: tekton.dev/v1\nkind: Task\nmetadata:\n  name: kaniko\nspec:\n  params:\n  - name: BUILDER_IMAGE\n    default: {}\n  steps:\n  - name: build-and-push\n    image: $(params.BUILDER_IMAGE)\n",
        world.arm_only()
    );
    common::push_tekton_bundle(
        &world.registry,
        "catalog/kaniko",
        "0.7",
        &[("Task", "kaniko", &task)],
    )
    .await;
    let bundle = format!("{}/catalog/kaniko:0.7", world.proxy.host());
    let run = |name: &str| {
        json!({
            "apiVersion": "tekton.dev/v1",
            "kind": "PipelineRun",
            "metadata": {"generateName": "bundle-"},
            "spec": {"pipelineSpec": {"tasks": [{
                "name": "build",
                "taskRef": {"resolver": "bundles", "params": [
                    {"name": "bundle", "value": bundle},
                    {"name": "name", "value": name},
                    {"name": "kind", "value": "task"}]}
            }]}}
        })
    };
    let hook = Webhook::start(&world, &[]).await;
    let r = hook
        .review(&review("PipelineRun", "v1", run("kaniko")))
        .await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        message(&r).starts_with(&format!(
            "pipeline task \"build\" step \"build-and-push\" image \"{}\"",
            world.arm_only()
        )),
        "{}",
        message(&r)
    );
    // A name the bundle does not hold: allowed, and the warning says what was not checked.
    let r = hook
        .review(&review("PipelineRun", "v1", run("buildah")))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let w = r["warnings"][0].as_str().unwrap();
    assert!(w.contains("buildah") && w.contains("not checked"), "{w}");
}
