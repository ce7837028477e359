//! Tekton runs through the real webhook and registry: a PipelineRun is rejected at create time,
//! naming the task and step, before any TaskRun starts.

mod common;
mod tekton_runs;

use std::sync::Arc;
use std::time::Duration;

use archgate::admission::Admission;
use archgate::cluster::{ClusterState, PullSecretStores, Stores};
use archgate::metrics::Metrics;
use archgate::pipeline::{Exemptions, Pipeline};
use archgate::policy::Policy;
use archgate::resolver::{Credentials, RegistryOptions, Resolver};
use archgate::workload::ExtractOptions;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, ServiceAccount};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use tower::ServiceExt;

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

/// A run naming more bundle resources than one review fetches (64): those past the bound are
/// reported as not checked. They used to be dropped in silence, their images admitted unchecked
/// with no warning. And a resource that cannot be fetched is warned about once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_past_the_bound_are_reported_not_skipped() {
    let world = World::new().await;
    let count = 70;
    let mut tasks = Vec::new();
    for i in 0..count {
        let name = format!("t{i}");
        let task = format!(
            "apiVersion: tekton.dev/v1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  steps:\n  - name: run\n    image: {}\n",
            world.multi()
        );
        let tag = format!("v{i}");
        common::push_tekton_bundle(
            &world.registry,
            "catalog/many",
            &tag,
            &[("Task", &name, &task)],
        )
        .await;
        tasks.push(json!({
            "name": name,
            "taskRef": {"resolver": "bundles", "params": [
                {"name": "bundle", "value": format!("{}/catalog/many:{tag}", world.proxy.host())},
                {"name": "name", "value": name},
                {"name": "kind", "value": "task"}]}
        }));
    }
    let run = json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"generateName": "many-bundles-"},
        "spec": {"pipelineSpec": {"tasks": tasks}}
    });
    let hook = Webhook::start(&world, &[]).await;
    // One resource fetched, one the bundle does not hold: the second is warned about once (it
    // was fetched and warned about again in the round the first one started).
    let two = json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"generateName": "two-bundles-"},
        "spec": {"pipelineSpec": {"tasks": [tasks[0].clone(), {
            "name": "absent",
            "taskRef": {"resolver": "bundles", "params": [
                {"name": "bundle", "value": format!("{}/catalog/many:v0", world.proxy.host())},
                {"name": "name", "value": "absent"},
                {"name": "kind", "value": "task"}]}
        }]}}
    });
    let r = hook.review(&review("PipelineRun", "v1", two)).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(warnings(&r).len(), 1, "{r}");
    assert!(warnings(&r)[0].contains("\"absent\""), "{r}");

    let r = hook.review(&review("PipelineRun", "v1", run.clone())).await;
    assert_eq!(r["allowed"], true, "{r}");
    let over: Vec<String> = warnings(&r)
        .into_iter()
        .filter(|w| w.contains("over the limit of 64 bundle resources per object"))
        .collect();
    assert_eq!(over.len(), count - 64, "{r}");
    for w in &over {
        assert!(
            w.contains("from bundle") && w.contains("not checked"),
            "{w}"
        );
    }

    // Not checked is not checked: under `--on-registry-error deny` it denies, as an image whose
    // registry could not be asked does (it was a warning whatever the setting).
    let strict = Webhook::start(&world, &["--on-registry-error", "deny"]).await;
    let r = strict.review(&review("PipelineRun", "v1", run)).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        message(&r).contains("over the limit of 64 bundle resources per object"),
        "{r}"
    );
}

/// A run padded past extraction's bounds (here more than 1024 task runs, by matrix) leaves the
/// rest unchecked: a warning by default, a denial under `--on-registry-error deny`. Before, it
/// was a warning whatever the setting, so the padding let an image past a strict cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_past_extractions_bounds_follow_on_registry_error() {
    let world = World::new().await;
    let values: Vec<String> = (0..256).map(|v| v.to_string()).collect();
    let tasks: Vec<Value> = (0..5)
        .map(|i| {
            json!({"name": format!("t{i}"),
                   "matrix": {"params": [{"name": "n", "value": values}]},
                   "taskSpec": {"params": [{"name": "n"}],
                                "steps": [{"name": "run", "image": world.multi()}]}})
        })
        .collect();
    let run = json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"generateName": "padded-"},
        "spec": {"pipelineSpec": {"tasks": tasks}}
    });
    let stopped = "the run expands to more than 1024 task runs, the rest were not checked";
    let lenient = Webhook::start(&world, &[]).await;
    let r = lenient
        .review(&review("PipelineRun", "v1", run.clone()))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(warnings(&r), [stopped], "{r}");
    let strict = Webhook::start(&world, &["--on-registry-error", "deny"]).await;
    let r = strict.review(&review("PipelineRun", "v1", run)).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(message(&r), stopped, "{r}");
}

// ---- issue 13: evaluate what Tekton evaluates --------------------------------------------------

fn warnings(r: &Value) -> Vec<String> {
    r["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|w| w.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Tekton v1.x `when` (docs/pipelines.md "Guard Task execution using when expressions"): an
/// arm64-only task and finally task skipped by their `when` do not deny the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_false_skips_the_arm64_only_task_and_finally_task() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let run = tekton_runs::guarded_by_when("amd64", &world.arm_only(), &world.multi());
    let r = hook.review(&review("PipelineRun", "v1", run)).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(warnings(&r).is_empty(), "{r}");
    let run = tekton_runs::guarded_by_when("arm64", &world.arm_only(), &world.multi());
    let r = hook.review(&review("PipelineRun", "v1", run)).await;
    assert_eq!(r["allowed"], false, "{r}");
    let lines: Vec<String> = message(&r).lines().map(str::to_string).collect();
    for (line, task) in lines.iter().zip(["arm-test", "arm-report"]) {
        let want = format!(
            "pipeline task \"{task}\" step \"run\" image \"{}\" is missing linux/amd64",
            world.arm_only()
        );
        assert!(line.starts_with(&want), "{want}\n{r}");
    }
}

/// docs/tasks.md "Specifying Parameters": the missing `repo` key comes from the Task's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_given_object_param_is_completed_from_its_default() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let repo = format!("{}/cerebral/ai-base", world.proxy.host());
    let run = tekton_runs::partly_given_object(&repo, "cuda");
    let r = hook.review(&review("PipelineRun", "v1", run)).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        message(&r).starts_with(&format!(
            "pipeline task \"build\" step \"run\" image \"{}\" is missing",
            world.arm_only()
        )),
        "{r}"
    );
}

/// Pipelines v1.9+ and Tasks v0.68+ resolve defaults naming other params.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_that_name_other_params_are_resolved() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let run = tekton_runs::defaults_naming_params(world.proxy.host(), "cerebral/ai-base:cuda");
    let r = hook.review(&review("PipelineRun", "v1", run)).await;
    assert_eq!(r["allowed"], false, "{r}");
    for task in ["pipeline-default", "task-default"] {
        let want = format!(
            "pipeline task \"{task}\" step \"run\" image \"{}\" is missing",
            world.arm_only()
        );
        assert!(message(&r).contains(&want), "{want}\n{r}");
    }
}

/// docs/variables.md: `$(context.pipelineRun.name)` and `$(context.taskRun.name)` for a run with
/// a name; a run not named yet (only `generateName`, as a mutating webhook would see it) leaves
/// them unknown (allowed, with a warning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_names_are_substituted_for_a_fixed_run_name() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &[]).await;
    let run = tekton_runs::named_by_context(Some("ai"), world.proxy.host());
    let r = hook.review(&review("PipelineRun", "v1", run)).await;
    assert_eq!(r["allowed"], false, "{r}");
    for step in ["by-run", "by-task-run"] {
        let want = format!(
            "pipeline task \"base\" step \"{step}\" image \"{}\"",
            world.arm_only()
        );
        assert!(message(&r).contains(&want), "{want}\n{r}");
    }
    let run = tekton_runs::named_by_context(None, world.proxy.host());
    let r = hook.review(&review("PipelineRun", "v1", run)).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(
        warnings(&r)
            .iter()
            .any(|w| w.contains("$(context.pipelineRun.name)")),
        "{r}"
    );
}

/// Issue 13 point 6: on a mixed cluster the hint names where a Tekton user pins: one task's
/// `taskRunSpecs[].podTemplate` when only its images miss a platform, else the run's template
/// (`spec.podTemplate` in v1beta1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_hint_names_the_runs_pod_template() {
    let world = World::new().await;
    let hook = Webhook::start(&world, &["-p", "linux/amd64,linux/arm64"]).await;
    let last_line = |r: &Value| message(r).lines().last().unwrap_or_default().to_string();
    let run = tekton_runs::two_tasks(&world.arm_only(), &world.multi(), false);
    let r = hook.review(&review("PipelineRun", "v1", run)).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(
        last_line(&r),
        "pin it: nodeSelector kubernetes.io/arch: arm64 in spec.taskRunSpecs[].podTemplate (pipelineTaskName: build)"
    );
    let run = tekton_runs::two_tasks(&world.arm_only(), &world.arm_only(), true);
    let r = hook.review(&review("PipelineRun", "v1beta1", run)).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(
        last_line(&r),
        "pin it: nodeSelector kubernetes.io/arch: arm64 in spec.podTemplate"
    );
}

// ---- pull credentials of a run (issue 13 point 5) ----------------------------------------------

const USER: &str = "ci-bot";
const PASSWORD: &str = "s3cret-pass";

/// The webhook's router in process over a cluster view fed the way the reflectors feed it: one
/// amd64 node, namespace `ci` with the ServiceAccounts `default` (no secrets) and `builder`
/// (secret `regcred`), `pusher` (secret `pushcred`), and the two secrets for the TLS + htpasswd
/// registry. No API server runs here, so the stores are written directly (as tests/cluster.rs).
struct PrivateCluster {
    /// Kept for its process: the registry stops when dropped.
    _registry: common::Registry,
    fixtures: common::Fixtures,
    router: axum::Router,
}

impl PrivateCluster {
    async fn start() -> Self {
        common::install_crypto_provider();
        let registry = common::Registry::start_tls_auth(USER, PASSWORD).await;
        let fixtures = common::push_standard_fixtures(&registry).await;
        let mut nodes = Writer::<Node>::default();
        let mut namespaces = Writer::<Namespace>::default();
        let mut accounts = Writer::<ServiceAccount>::default();
        let mut secrets = [Writer::<Secret>::default(), Writer::<Secret>::default()];
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "amd",
            "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}}))
        .unwrap();
        let account = |name: &str, secrets: &[&str]| -> ServiceAccount {
            let refs: Vec<Value> = secrets.iter().map(|s| json!({"name": s})).collect();
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ci"},
                "imagePullSecrets": refs}))
            .unwrap()
        };
        let auth = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{USER}:{PASSWORD}"),
        );
        let config = json!({"auths": {registry.host(): {"auth": auth}}}).to_string();
        let secret = |name: &str| -> Secret {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ci", "resourceVersion": "1"},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD, &config)}
            }))
            .unwrap()
        };
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "ci"}})).unwrap();
        let stores = Stores {
            nodes: nodes.as_reader(),
            namespaces: namespaces.as_reader(),
            pull_secrets: Some(PullSecretStores {
                service_accounts: accounts.as_reader(),
                secrets: secrets.iter().map(Writer::as_reader).collect(),
            }),
            tekton: Vec::new(),
        };
        listed(&mut nodes, [node]);
        listed(&mut namespaces, [namespace]);
        listed(
            &mut accounts,
            [
                account("default", &[]),
                account("builder", &["regcred"]),
                account("pusher", &["pushcred"]),
            ],
        );
        let [first, second] = &mut secrets;
        listed(first, [secret("regcred"), secret("pushcred")]);
        listed(second, []);
        let metrics = Arc::new(Metrics::new());
        let options = RegistryOptions {
            ca_pem: Some(registry.ca_pem().as_bytes().to_vec()),
            ..RegistryOptions::default()
        };
        let admission = Admission {
            pipeline: Pipeline::new(
                Arc::new(Resolver::new(options, metrics.clone()).unwrap()),
                Exemptions::default(),
                ExtractOptions::default(),
            ),
            cluster: Arc::new(ClusterState::from_stores(stores, Credentials::default())),
            policy: Policy::default(),
            deadline: Duration::from_secs(10),
            exempt_namespaces: Vec::new(),
            tekton_controller: archgate::admission::DEFAULT_TEKTON_CONTROLLER.to_string(),
            metrics,
        };
        Self {
            _registry: registry,
            fixtures,
            router: archgate::server::router(Arc::new(admission)),
        }
    }

    async fn review(&self, run: Value) -> Value {
        let body = review("PipelineRun", "v1", run).to_string();
        let request = axum::http::Request::post(archgate::server::VALIDATE_PATH)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let reply: Value = serde_json::from_slice(&bytes).unwrap();
        reply["response"].clone()
    }
}

/// The initial list, as a watcher delivers it.
fn listed<K>(writer: &mut Writer<K>, objects: impl IntoIterator<Item = K>)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    writer.apply_watcher_event(&Event::Init);
    for object in objects {
        writer.apply_watcher_event(&Event::InitApply(object));
    }
    writer.apply_watcher_event(&Event::InitDone);
}

/// Tekton's TaskRun pods pull with the run's `taskRunTemplate.serviceAccountName` or pod template
/// `imagePullSecrets` (v1 `GetTaskRunSpec`): with either, the private arm64-only image is read and
/// denied; with neither (the namespace's default account has no secret) it cannot be checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_service_account_and_pull_secrets_open_its_registry() {
    let cluster = PrivateCluster::start().await;
    let image = cluster.fixtures.ai_base_cuda.reference();
    for (account, secret) in [(Some("builder"), None), (None, Some("regcred"))] {
        let r = cluster
            .review(tekton_runs::with_credentials(&image, account, secret))
            .await;
        assert_eq!(r["allowed"], false, "{account:?} {secret:?}: {r}");
        assert!(
            message(&r).contains(&format!("image \"{image}\" is missing linux/amd64")),
            "{r}"
        );
    }
    let r = cluster
        .review(tekton_runs::with_credentials(&image, None, None))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(
        warnings(&r).iter().any(|w| w.contains("not checked")),
        "{r}"
    );
}

/// `taskRunSpecs[].serviceAccountName` gives one task its own credentials: each target pulls with
/// its own pod's (before, every target of an object used the first target's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tasks_own_service_account_opens_its_registry() {
    let cluster = PrivateCluster::start().await;
    let private = cluster.fixtures.ai_base_cuda.reference();
    // `build` pulls with the namespace's default account, which has no secret for this registry.
    let public = cluster.fixtures.multi.reference();
    let run = tekton_runs::per_task_account(&public, &private, "pusher");
    let r = cluster.review(run).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        message(&r).contains(&format!(
            "pipeline task \"push\" step \"run\" image \"{private}\" is missing"
        )),
        "{r}"
    );
}
