//! Table-driven tests of Tekton extraction, one rule of issue 7 per test.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::*;
use crate::workload::EmptyCatalog;

/// Resources by (kind, name); namespaces are recorded so tests can see what was asked.
#[derive(Default)]
struct TestCatalog {
    resources: HashMap<(String, String), Value>,
    bundles: HashMap<BundleRef, Value>,
    asked: Mutex<Vec<String>>,
}

impl TestCatalog {
    fn with(mut self, kind: &str, name: &str, spec: Value) -> Self {
        let object = json!({"apiVersion": "tekton.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec});
        self.resources.insert((kind.into(), name.into()), object);
        self
    }
}

impl Catalog for TestCatalog {
    fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.asked
            .lock()
            .unwrap()
            .push(format!("{kind} {namespace}/{name}"));
        self.resources
            .get(&(kind.to_string(), name.to_string()))
            .cloned()
    }

    fn bundle(&self, reference: &BundleRef) -> Option<Value> {
        self.bundles.get(reference).cloned()
    }
}

fn pairs(ex: &Extraction) -> Vec<(String, String)> {
    ex.targets
        .iter()
        .map(|t| (t.location.scope.clone(), t.image.clone()))
        .collect()
}

fn p(scope: &str, image: &str) -> (String, String) {
    (scope.to_string(), image.to_string())
}

fn pr(spec: Value) -> Value {
    json!({"apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "metadata": {"generateName": "run-", "namespace": "ci"}, "spec": spec})
}

fn tr(spec: Value) -> Value {
    json!({"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "metadata": {"name": "tr", "namespace": "ci"}, "spec": spec})
}

fn run_pr(spec: Value, catalog: &TestCatalog) -> Extraction {
    extract_pipeline_run(&pr(spec), catalog, &ExtractOptions::default()).unwrap()
}

fn run_tr(spec: Value, catalog: &TestCatalog) -> Extraction {
    extract_task_run(&tr(spec), catalog, &ExtractOptions::default()).unwrap()
}

fn assert_clean_warnings(ex: &Extraction) {
    for w in &ex.warnings {
        // Bounded (the policy clips what kubectl shows; logs and `check` show all of it).
        assert!(w.chars().count() < 1024, "too long: {w}");
        assert!(!w.starts_with("Warning"), "{w}");
    }
    for t in &ex.targets {
        assert!(
            !t.image.contains("$("),
            "unsubstituted image in a target: {}",
            t.image
        );
    }
}

#[test]
fn every_param_reference_form_is_substituted() {
    let cases = [
        ("$(params.img)", "alpine:3"),
        ("$(params[\"img\"])", "alpine:3"),
        ("$(params['img'])", "alpine:3"),
        ("golang:$(params.version)", "golang:1.22"),
        ("$(params.obj.repo):$(params.obj.tag)", "busybox:1"),
        ("$(params.list[1])", "b:2"),
        ("$(inputs.params.img)", "alpine:3"),
    ];
    for (image, want) in cases {
        let spec = json!({
            "params": [{"name": "version", "value": "1.22"}],
            "taskSpec": {
                "params": [
                    {"name": "img", "default": "alpine:3"},
                    {"name": "version"},
                    {"name": "obj", "type": "object", "default": {"repo": "busybox", "tag": "1"}},
                    {"name": "list", "type": "array", "default": ["a:1", "b:2"]}
                ],
                "steps": [{"name": "s", "image": image}]
            }
        });
        let ex = run_tr(spec, &TestCatalog::default());
        assert_eq!(pairs(&ex), vec![p("step \"s\"", want)], "{image}");
        assert!(ex.warnings.is_empty(), "{image}: {:?}", ex.warnings);
    }
}

#[test]
fn params_follow_run_then_pipeline_task_then_defaults() {
    let catalog = TestCatalog::default()
        .with("Task", "kaniko", json!({
            "params": [{"name": "BUILDER_IMAGE", "default": "task-default"}, {"name": "IMAGE"}],
            "steps": [{"name": "build", "image": "$(params.BUILDER_IMAGE)"}]
        }))
        .with("Pipeline", "build", json!({
            "params": [{"name": "builder", "default": "pipeline-default"}],
            "tasks": [
                {"name": "passed", "taskRef": {"name": "kaniko"},
                 "params": [{"name": "BUILDER_IMAGE", "value": "$(params.builder)"}, {"name": "IMAGE", "value": "out"}]},
                {"name": "defaulted", "taskRef": {"name": "kaniko"}}
            ]
        }));
    let cases = [
        (
            json!([{"name": "builder", "value": "from-run"}]),
            "from-run",
        ),
        (json!([]), "pipeline-default"),
        // A run param a referenced Task declares does not reach it unless the pipeline passes it.
        (
            json!([{"name": "BUILDER_IMAGE", "value": "ignored"}]),
            "pipeline-default",
        ),
    ];
    for (run_params, want) in cases {
        let ex = run_pr(
            json!({"params": run_params, "pipelineRef": {"name": "build"}}),
            &catalog,
        );
        assert_eq!(
            pairs(&ex),
            vec![
                p("pipeline task \"passed\" step \"build\"", want),
                p("pipeline task \"defaulted\" step \"build\"", "task-default"),
            ],
            "{run_params}"
        );
    }
}

#[test]
fn embedded_specs_see_propagated_params_with_inner_scope_winning() {
    let step = json!([{"name": "echo", "image": "$(params.IMG)"}]);
    let cases = [
        // Propagated: the run's param reaches an embedded task that never declares it.
        (json!({"steps": step}), None, "from-run"),
        // The run's value beats the embedded task's own default.
        (
            json!({"params": [{"name": "IMG", "default": "task-default"}], "steps": step}),
            None,
            "from-run",
        ),
        // An explicit pipeline task param beats the run's value.
        (json!({"steps": step}), Some("from-task"), "from-task"),
    ];
    for (task_spec, explicit, want) in cases {
        let mut task = json!({"name": "t", "taskSpec": task_spec});
        if let Some(v) = explicit {
            task["params"] = json!([{"name": "IMG", "value": v}]);
        }
        let spec = json!({
            "params": [{"name": "IMG", "value": "from-run"}],
            "pipelineSpec": {"tasks": [task.clone()], "finally": [task]}
        });
        let ex = run_pr(spec, &TestCatalog::default());
        assert_eq!(
            pairs(&ex),
            vec![p("pipeline task \"t\" step \"echo\"", want)],
            "finally tasks share the words and dedupe: {task_spec}"
        );
    }
}

#[test]
fn step_template_image_is_inherited_and_unnamed_steps_are_numbered() {
    let spec = json!({"taskSpec": {
        "stepTemplate": {"image": "$(params.base)"},
        "params": [{"name": "base", "default": "ubuntu:24.04"}],
        "steps": [{"name": "own", "image": "alpine"}, {"script": "echo"}, {"name": "inherits"}],
        "sidecars": [{"name": "docker", "image": "docker:dind"}, {"image": "redis"}]
    }});
    let ex = run_tr(spec, &TestCatalog::default());
    assert_eq!(
        pairs(&ex),
        vec![
            p("step \"own\"", "alpine"),
            p("step #2", "ubuntu:24.04"),
            p("step \"inherits\"", "ubuntu:24.04"),
            p("sidecar \"docker\"", "docker:dind"),
            p("sidecar #2", "redis"),
        ]
    );
    assert_eq!(ex.targets[1].location.container, "unnamed-1");
    assert_eq!(ex.targets[0].location.object, None);
}

#[test]
fn matrix_gives_one_target_per_value() {
    let spec = json!({
        "params": [{"name": "versions", "value": ["1.21", "1.22"]}],
        "pipelineSpec": {
            "params": [{"name": "versions", "type": "array"}],
            "tasks": [{
                "name": "test",
                "matrix": {
                    "params": [{"name": "version", "value": "$(params.versions[*])"}],
                    "include": [{"name": "tip", "params": [{"name": "version", "value": "tip"}]}]
                },
                "taskSpec": {"params": [{"name": "version"}], "steps": [{"name": "go", "image": "golang:$(params.version)"}]}
            }]
        }
    });
    let ex = run_pr(spec, &TestCatalog::default());
    let scope = "pipeline task \"test\" step \"go\"";
    assert_eq!(
        pairs(&ex),
        vec![
            p(scope, "golang:1.21"),
            p(scope, "golang:1.22"),
            p(scope, "golang:tip")
        ]
    );
}

#[test]
fn matrix_params_choose_the_node_selector_per_combination() {
    let catalog = TestCatalog::default().with("Task", "buildah", json!({
        "params": [{"name": "IMAGE"}, {"name": "BUILDER_IMAGE", "default": "quay.io/buildah/stable:v1"}],
        "steps": [{"name": "build", "image": "$(params.BUILDER_IMAGE)"}]
    }));
    let spec = json!({
        "taskRunSpecs": [{"pipelineTaskName": "build", "podTemplate": {"nodeSelector": {"kubernetes.io/arch": "$(params.ARCH)"}}}],
        "pipelineSpec": {"tasks": [{
            "name": "build",
            "taskRef": {"name": "buildah"},
            "matrix": {"include": [
                {"name": "amd", "params": [{"name": "ARCH", "value": "amd64"}, {"name": "IMAGE", "value": "out:amd64"}]},
                {"name": "arm", "params": [{"name": "ARCH", "value": "arm64"}, {"name": "IMAGE", "value": "out:arm64"}]}
            ]}
        }]}
    });
    let ex = run_pr(spec, &catalog);
    let arches: Vec<_> = ex
        .targets
        .iter()
        .map(|t| {
            (
                t.image.as_str(),
                t.placement.node_selector["kubernetes.io/arch"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        arches,
        [
            ("quay.io/buildah/stable:v1", "amd64"),
            ("quay.io/buildah/stable:v1", "arm64")
        ]
    );
}

/// Tekton substitutes the pipeline's params into an embedded task spec before it fans the matrix
/// out (pkg/reconciler/pipelinerun/resources/apply.go `propagateParams`, called from
/// `ApplyParameters`), and only the pipeline task's own `params` override them there; the matrix
/// values reach the TaskRun's params, but no `$(params.builder)` is left in its spec to take them.
/// Whether the spec declares the param does not matter: `propagateParams` replaces text.
#[test]
fn matrix_params_do_not_override_propagated_pipeline_params_in_embedded_specs() {
    let catalog = TestCatalog::default().with(
        "Task",
        "ref",
        json!({"params": [{"name": "builder"}], "steps": [{"name": "s", "image": "$(params.builder)"}]}),
    );
    let fan = json!({"params": [{"name": "builder", "value": ["builder-arm64", "builder-s390x"]}]});
    for declared in [json!([]), json!([{"name": "builder"}])] {
        let spec = json!({"pipelineSpec": {
            "params": [{"name": "builder", "default": "builder-amd64"}],
            "tasks": [
                {"name": "emb", "matrix": fan,
                 "taskSpec": {"params": declared, "steps": [{"name": "s", "image": "$(params.builder)"}]}},
                // A referenced task gets nothing propagated: each TaskRun's matrix value counts.
                {"name": "referenced", "matrix": fan, "taskRef": {"name": "ref"}},
                // The pipeline task's own params do override the pipeline's in an embedded spec.
                {"name": "own", "params": [{"name": "builder", "value": "mine"}],
                 "matrix": {"params": [{"name": "other", "value": ["x", "y"]}]},
                 "taskSpec": {"params": declared, "steps": [{"name": "s", "image": "$(params.builder)"}]}}
            ]
        }});
        let ex = run_pr(spec, &catalog);
        let images: Vec<&str> = ex.targets.iter().map(|t| t.image.as_str()).collect();
        assert_eq!(
            images,
            // Two TaskRuns each for `emb` and `own`; the same image at the same site is one target.
            ["builder-amd64", "builder-arm64", "builder-s390x", "mine"],
            "declared: {declared}"
        );
    }
}

/// pkg/apis/pipeline/v1/matrix_types.go: `overwriteCombinations` compares an include with the
/// combination as earlier includes left it (`contains`), so `tag: "2"` does not overwrite the
/// `tag: "1"` the first include added; `addNewCombinations` then appends it as a combination of
/// its own. But the reconciler creates only `CountCombinations()` TaskRuns
/// (pipelinerunresolution.go `ResolvePipelineTask`, pipelinerun.go `createTaskRuns` pairing the
/// i-th name with the i-th combination), and that count adds only includes that name a matrix
/// param with a value the matrix lacks: one TaskRun here, `img:1`; `img:2` never runs.
#[test]
fn later_include_conflicting_with_earlier_include_gets_no_task_run() {
    let spec = json!({"pipelineSpec": {"tasks": [{
        "name": "t",
        "matrix": {
            "params": [{"name": "p", "value": ["a"]}],
            "include": [
                {"name": "i1", "params": [{"name": "tag", "value": "1"}]},
                {"name": "i2", "params": [{"name": "tag", "value": "2"}]}
            ]
        },
        "taskSpec": {"steps": [{"name": "s", "image": "img:$(params.tag)-$(context.taskRun.name)"}]}
    }]}});
    let images = images_of_run_named_run(spec);
    // One TaskRun, so its name has no `-<i>` (pipelinerunresolution.go `getNewRunNames`).
    assert_eq!(images, ["img:1-run-t"]);
}

/// pkg/apis/pipeline/v1/matrix_types.go `distribute`: each new matrix param loops its values on
/// the outside and the combinations so far inside, and TaskRun `<run>-<task>-<i>` runs the i-th
/// combination (pipelinerun.go `createTaskRuns`).
#[test]
fn matrix_order_matches_tekton_distribute() {
    let spec = json!({"pipelineSpec": {"tasks": [{
        "name": "t",
        "matrix": {"params": [
            {"name": "os", "value": ["linux", "windows"]},
            {"name": "arch", "value": ["amd64", "arm64"]}
        ]},
        "taskSpec": {"steps": [{"name": "s", "image": "r/$(context.taskRun.name):$(params.os)-$(params.arch)"}]}
    }]}});
    let images = images_of_run_named_run(spec);
    assert_eq!(
        images,
        [
            "r/run-t-0:linux-amd64",
            "r/run-t-1:windows-amd64",
            "r/run-t-2:linux-arm64",
            "r/run-t-3:windows-arm64"
        ]
    );
}

#[test]
fn step_actions_use_their_own_params() {
    let catalog = TestCatalog::default().with("StepAction", "clone", json!({
        "params": [{"name": "image", "default": "git:default"}, {"name": "tag", "default": "1"}],
        "image": "$(params.image)-$(params.tag)"
    }));
    let cases = [
        (json!([]), "git:default-1"),
        (
            json!([{"name": "tag", "value": "$(params.t)"}]),
            "git:default-2",
        ),
        (json!([{"name": "image", "value": "mine"}]), "mine-1"),
    ];
    for (step_params, want) in cases {
        let spec = json!({"taskSpec": {
            "params": [{"name": "t", "default": "2"}],
            "steps": [{"name": "clone", "ref": {"name": "clone"}, "params": step_params}]
        }});
        let ex = run_tr(spec, &catalog);
        assert_eq!(pairs(&ex), vec![p("step \"clone\"", want)], "{step_params}");
    }
}

#[test]
fn references_are_read_through_the_catalog() {
    let task = json!({"steps": [{"name": "s", "image": "alpine"}]});
    let catalog = TestCatalog::default()
        .with("Task", "t", task.clone())
        .with("ClusterTask", "ct", task.clone())
        .with(
            "Pipeline",
            "inner",
            json!({"tasks": [{"name": "i", "taskRef": {"name": "t"}}]}),
        );
    let cases = [
        (json!({"taskRef": {"name": "t"}}), "Task ci/t"),
        (
            json!({"taskRef": {"name": "ct", "kind": "clustertask"}}),
            "ClusterTask ci/ct",
        ),
        (
            json!({"taskRef": {"name": "ct", "kind": "ClusterTask"}}),
            "ClusterTask ci/ct",
        ),
        (
            json!({"taskRef": {"resolver": "cluster", "params": [
                {"name": "kind", "value": "task"}, {"name": "name", "value": "t"}, {"name": "namespace", "value": "shared"}]}}),
            "Task shared/t",
        ),
        (
            json!({"taskRef": {"resolver": "cluster", "params": [
                {"name": "name", "value": "$(params.which)"}, {"name": "namespace", "value": "ci"}]}}),
            "Task ci/t",
        ),
    ];
    for (task_ref, asked) in cases {
        let mut task = json!({"name": "x", "params": []});
        task.as_object_mut()
            .unwrap()
            .extend(task_ref.as_object().unwrap().clone());
        let spec =
            json!({"params": [{"name": "which", "value": "t"}], "pipelineSpec": {"tasks": [task]}});
        let ex = run_pr(spec, &catalog);
        assert_eq!(
            pairs(&ex),
            vec![p("pipeline task \"x\" step \"s\"", "alpine")],
            "{task_ref}"
        );
        assert!(ex.warnings.is_empty(), "{:?}", ex.warnings);
        assert_eq!(catalog.asked.lock().unwrap().pop().as_deref(), Some(asked));
    }
    // No namespace param: Tekton asks its resolver config, which archgate cannot read.
    let unnamespaced = json!({"name": "x", "taskRef": {"resolver": "cluster", "params": [
        {"name": "name", "value": "t"}]}});
    let ex = run_pr(json!({"pipelineSpec": {"tasks": [unnamespaced]}}), &catalog);
    assert!(ex.targets.is_empty());
    assert_eq!(
        ex.warnings,
        [
            "pipeline task \"x\": task \"t\" from the cluster resolver names no namespace (Tekton's resolver config decides it), not checked"
        ]
    );
    // Pipelines in pipelines, by reference and embedded, name the outer task first.
    let spec = json!({"pipelineSpec": {"tasks": [
        {"name": "outer", "pipelineRef": {"name": "inner"}},
        {"name": "emb", "pipelineSpec": {"tasks": [{"name": "deep", "taskSpec": task}]}}
    ]}});
    let ex = run_pr(spec, &catalog);
    assert_eq!(
        pairs(&ex),
        vec![
            p(
                "pipeline task \"outer\" pipeline task \"i\" step \"s\"",
                "alpine"
            ),
            p(
                "pipeline task \"emb\" pipeline task \"deep\" step \"s\"",
                "alpine"
            ),
        ]
    );
}

#[test]
fn unreadable_references_warn_and_never_fail() {
    let catalog = TestCatalog::default().with("Task", "broken", json!({"steps": "nope"}));
    let cases = [
        (
            json!({"taskRef": {"name": "absent"}}),
            "pipeline task \"x\": Task \"absent\" was not found",
        ),
        (
            json!({"taskRef": {"name": "broken"}}),
            "pipeline task \"x\": Task \"broken\" cannot be read (steps is not a list)",
        ),
        (
            json!({"taskRef": {"resolver": "git", "params": [{"name": "url", "value": "https://g/r"},
                {"name": "pathInRepo", "value": "task/x.yaml"}]}}),
            "pipeline task \"x\": task \"task/x.yaml\" from the git resolver was not checked",
        ),
        (
            json!({"taskRef": {"resolver": "hub", "params": [{"name": "name", "value": "kaniko"}]}}),
            "pipeline task \"x\": task \"kaniko\" from the hub resolver was not checked",
        ),
        (
            json!({"taskRef": {"resolver": "cluster", "params": [{"name": "name", "value": "$(tasks.a.results.n)"}]}}),
            "pipeline task \"x\": task from the cluster resolver uses $(tasks.a.results.n), not checked",
        ),
    ];
    for (task_ref, warning) in cases {
        let mut task = json!({"name": "x"});
        task.as_object_mut()
            .unwrap()
            .extend(task_ref.as_object().unwrap().clone());
        let ex = run_pr(json!({"pipelineSpec": {"tasks": [task]}}), &catalog);
        assert!(ex.targets.is_empty());
        assert_eq!(ex.warnings.len(), 1, "{:?}", ex.warnings);
        assert!(ex.warnings[0].starts_with(warning), "{:?}", ex.warnings);
        assert_clean_warnings(&ex);
    }
    let ex = run_pr(
        json!({"pipelineRef": {"resolver": "http", "params": [{"name": "url", "value": "https://x/p.yaml"}]}}),
        &catalog,
    );
    assert_eq!(
        ex.warnings,
        ["pipeline \"https://x/p.yaml\" from the http resolver was not checked"]
    );
}

#[test]
fn bundles_are_unresolved_until_the_caller_fetched_them() {
    let bundle_ref = BundleRef {
        bundle: "reg.example/tasks:1".into(),
        kind: "Task".into(),
        name: "golang-build".into(),
    };
    let spec = json!({"pipelineSpec": {"tasks": [
        {"name": "a", "taskRef": {"resolver": "bundles", "params": [
            {"name": "bundle", "value": "reg.example/tasks:1"}, {"name": "name", "value": "golang-build"},
            {"name": "kind", "value": "task"}]}},
        // The v1beta1 spelling of the same reference.
        {"name": "b", "taskRef": {"name": "golang-build", "bundle": "reg.example/tasks:1"}}
    ]}});
    let mut catalog = TestCatalog::default();
    let ex = run_pr(spec.clone(), &catalog);
    assert!(ex.targets.is_empty() && ex.warnings.is_empty(), "{ex:?}");
    assert_eq!(ex.unresolved_bundles, vec![bundle_ref.clone()]);
    catalog.bundles.insert(
        bundle_ref,
        json!({"kind": "Task", "spec": {"steps": [{"name": "build", "image": "golang:1.22"}]}}),
    );
    let ex = run_pr(spec, &catalog);
    assert!(ex.unresolved_bundles.is_empty());
    assert_eq!(
        pairs(&ex),
        vec![
            p("pipeline task \"a\" step \"build\"", "golang:1.22"),
            p("pipeline task \"b\" step \"build\"", "golang:1.22")
        ]
    );
}

#[test]
fn custom_tasks_are_skipped() {
    let cases = [
        json!({"name": "wait", "taskRef": {"apiVersion": "wait.testing.tekton.dev/v1beta1", "kind": "Wait"}}),
        json!({"name": "wait", "taskRef": {"apiVersion": "example.dev/v0", "kind": "Example", "name": "ex"}}),
        json!({"name": "wait", "taskSpec": {"apiVersion": "example.dev/v0", "kind": "Example", "spec": {"steps": [{"image": "x"}]}}}),
    ];
    for task in cases {
        let ex = run_pr(
            json!({"pipelineSpec": {"tasks": [task]}}),
            &TestCatalog::default(),
        );
        assert_eq!(ex, Extraction::default(), "{ex:?}");
    }
}

#[test]
fn unknown_values_skip_the_image_with_a_warning() {
    let cases = [
        (
            "$(tasks.build.results.IMAGE_URL)",
            "$(tasks.build.results.IMAGE_URL)",
        ),
        ("$(params.fromResult)", "$(tasks.build.results.digest)"),
        ("app@$(params.noDefault)", "$(params.noDefault)"),
        ("$(context.pipelineRun.name)", "$(context.pipelineRun.name)"),
        ("$(workspaces.src.path)", "$(workspaces.src.path)"),
    ];
    for (image, expr) in cases {
        let spec = json!({"pipelineSpec": {
            "params": [{"name": "noDefault"}],
            "tasks": [{"name": "t", "params": [{"name": "fromResult", "value": "$(tasks.build.results.digest)"}],
                       "taskSpec": {"steps": [{"name": "s", "image": image}]}}]
        }});
        let ex = run_pr(spec, &TestCatalog::default());
        assert!(ex.targets.is_empty(), "{image}");
        assert_eq!(
            ex.warnings,
            [format!(
                "pipeline task \"t\" step \"s\": image not checked: {expr} is unknown at admission"
            )]
        );
    }
}

#[test]
fn only_images_that_run_and_those_the_user_names_are_targets() {
    let kaniko = json!({
        "params": [{"name": "IMAGE"}, {"name": "BASE_IMAGE", "default": "debian:12"},
                   {"name": "BUILDER_IMAGE", "default": "gcr.io/kaniko-project/executor:v1"}],
        "steps": [{"name": "build", "image": "$(params.BUILDER_IMAGE)", "args": ["--destination=$(params.IMAGE)"]}]
    });
    let catalog = TestCatalog::default().with("Task", "kaniko", kaniko);
    let object = json!({
        "kind": "PipelineRun",
        "metadata": {"name": "r", "annotations": {"archgate.io/images": " node:22 , ,python:3.13"}},
        "spec": {"pipelineSpec": {"tasks": [
            {"name": "build", "taskRef": {"name": "kaniko"}, "params": [{"name": "IMAGE", "value": "reg/app:1"}]},
            {"name": "other", "taskRef": {"name": "missing"}, "params": [{"name": "BASE_IMAGE", "value": "alpine"}]}
        ]}}
    });
    let plain = extract_pipeline_run(&object, &catalog, &ExtractOptions::default()).unwrap();
    let options = ExtractOptions {
        tekton_image_params: vec!["BASE_IMAGE".into()],
        ..ExtractOptions::default()
    };
    let with_params = extract_pipeline_run(&object, &catalog, &options).unwrap();
    let build = p(
        "pipeline task \"build\" step \"build\"",
        "gcr.io/kaniko-project/executor:v1",
    );
    let annotation = "annotation \"archgate.io/images\"";
    assert_eq!(
        pairs(&plain),
        vec![
            build.clone(),
            p(annotation, "node:22"),
            p(annotation, "python:3.13")
        ]
    );
    assert_eq!(
        pairs(&with_params),
        vec![
            p("pipeline task \"build\" param \"BASE_IMAGE\"", "debian:12"),
            build,
            p("pipeline task \"other\" param \"BASE_IMAGE\"", "alpine"),
            p(annotation, "node:22"),
            p(annotation, "python:3.13"),
        ]
    );
    // TaskRun: the run's own param value.
    let spec = json!({"params": [{"name": "BASE_IMAGE", "value": "fedora"}], "taskRef": {"name": "kaniko"}});
    let ex = extract_task_run(&tr(spec), &catalog, &options).unwrap();
    assert_eq!(pairs(&ex)[0], p("param \"BASE_IMAGE\"", "fedora"));
}

#[test]
fn placement_comes_from_every_pod_template_field() {
    let task = json!({"steps": [{"name": "s", "image": "alpine"}]});
    let affinity = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}]}}});
    let tolerations = json!([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]);
    let selector = json!({"kubernetes.io/os": "windows"});
    let pipeline =
        json!({"tasks": [{"name": "a", "taskSpec": task}, {"name": "b", "taskSpec": task}]});
    let cases = [
        json!({"taskRunTemplate": {"podTemplate": {"nodeSelector": selector}},
               "taskRunSpecs": [{"pipelineTaskName": "b", "podTemplate": {"affinity": affinity, "tolerations": tolerations}}],
               "pipelineSpec": pipeline}),
        json!({"podTemplate": {"nodeSelector": selector},
               "taskRunSpecs": [{"pipelineTaskName": "b", "taskPodTemplate": {"affinity": affinity, "tolerations": tolerations}}],
               "pipelineSpec": pipeline}),
    ];
    for spec in cases {
        let ex = run_pr(spec, &TestCatalog::default());
        let [a, b] = &ex.targets[..] else {
            panic!("{ex:?}")
        };
        assert_eq!(a.placement.node_selector["kubernetes.io/os"], "windows");
        assert!(a.placement.required_affinity.is_none() && a.placement.tolerations.is_empty());
        assert_eq!(b.placement.node_selector["kubernetes.io/os"], "windows");
        assert!(b.placement.required_affinity.is_some());
        assert_eq!(b.placement.tolerations[0].key.as_deref(), Some("dedicated"));
    }
    let spec = json!({"podTemplate": {"tolerations": tolerations, "affinity": affinity}, "taskSpec": task});
    let ex = run_tr(spec, &TestCatalog::default());
    assert!(ex.targets[0].placement.required_affinity.is_some());
    assert_eq!(ex.targets[0].placement.tolerations.len(), 1);
}

#[test]
fn identical_targets_are_reported_once() {
    let step = json!({"name": "s", "image": "alpine"});
    let spec = json!({"taskSpec": {"steps": [step, step], "sidecars": [step]}});
    let ex = run_tr(spec, &TestCatalog::default());
    assert_eq!(
        pairs(&ex),
        vec![p("step \"s\"", "alpine"), p("sidecar \"s\"", "alpine")]
    );
}

#[test]
fn bad_input_is_an_error_that_names_the_field() {
    let cases = [
        (json!("text"), "it is not an object"),
        (
            json!({"metadata": {"generateName": "g-"}}),
            "it has no spec",
        ),
        (
            pr(json!({})),
            "spec has neither pipelineRef nor pipelineSpec",
        ),
        (
            pr(json!({"params": {"a": 1}, "pipelineSpec": {}})),
            "spec.params is not a list",
        ),
        (
            pr(json!({"pipelineSpec": {"tasks": [{"taskSpec": {}}]}})),
            "tasks[0].name is missing",
        ),
        (
            pr(
                json!({"pipelineSpec": {"tasks": [{"name": "t", "taskSpec": {"steps": [{"image": 3}]}}]}}),
            ),
            "steps[0].image is not a string",
        ),
        (
            pr(json!({"pipelineSpec": {"finally": [{"name": "t", "taskSpec": {"steps": {}}}]}})),
            "steps is not a list",
        ),
        (
            pr(json!({"podTemplate": {"tolerations": "x"}, "pipelineSpec": {}})),
            "the run's pod template",
        ),
        (
            pr(json!({"pipelineSpec": {"tasks": [{"name": "t"}]}})),
            "tasks[0] has no taskRef",
        ),
    ];
    for (object, reason) in cases {
        let err =
            extract_pipeline_run(&object, &EmptyCatalog, &ExtractOptions::default()).unwrap_err();
        assert_eq!(err.kind, "PipelineRun");
        assert!(err.reason.contains(reason), "{err}");
    }
    let err = extract_task_run(
        &json!({"metadata": {"generateName": "g-"}, "spec": {"taskSpec": {"sidecars": [1]}}}),
        &EmptyCatalog,
        &ExtractOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot read TaskRun \"g-*\": sidecars[0] is not an object"
    );
}

/// Extraction keeps the whole sentence; the policy's one `clip` fits it into the API server's
/// budget (issue 10: one clipping function).
#[test]
fn long_warnings_are_fitted_by_the_policy() {
    let name = "n".repeat(300);
    let ex = run_tr(json!({"taskRef": {"name": name}}), &TestCatalog::default());
    assert_eq!(ex.warnings.len(), 1);
    assert!(ex.warnings[0].contains(&name));
    let clipped = crate::policy::clip(&ex.warnings[0]);
    assert_eq!(clipped.chars().count(), crate::policy::MAX_WARNING_CHARS);
    assert!(clipped.ends_with('…'));
}

#[test]
fn definitions_extract_with_their_defaults() {
    let task = json!({"kind": "Task", "spec": {"params": [{"name": "v", "default": "3"}], "steps": [{"image": "alpine:$(params.v)"}]}});
    let ex = extract_definition("Task", &task, &EmptyCatalog, &ExtractOptions::default()).unwrap();
    assert_eq!(pairs(&ex), vec![p("step #1", "alpine:3")]);
    let action = json!({"kind": "StepAction", "spec": {"image": "git"}});
    let ex = extract_definition(
        "StepAction",
        &action,
        &EmptyCatalog,
        &ExtractOptions::default(),
    )
    .unwrap();
    assert_eq!(pairs(&ex), vec![p("image", "git")]);
    assert!(extract_definition("Pod", &task, &EmptyCatalog, &ExtractOptions::default()).is_err());
}

#[test]
fn a_matrix_over_tektons_limit_is_refused_not_expanded() {
    // 4^12 combinations: expanding them took more than 2 GB (found by `cargo fuzz run tekton_run`).
    let params: Vec<Value> = (0..12)
        .map(|i| json!({"name": format!("p{i}"), "value": ["a", "b", "c", "d"]}))
        .collect();
    let spec = json!({"pipelineSpec": {"tasks": [{
        "name": "t",
        "matrix": {"params": params},
        "taskSpec": {"steps": [{"name": "s", "image": "alpine:$(params.p0)"}]}
    }]}});
    let err = extract_pipeline_run(
        &pr(spec),
        &TestCatalog::default(),
        &ExtractOptions::default(),
    )
    .unwrap_err();
    assert!(err.reason.contains("more than 256 combinations"), "{err}");
}

#[test]
fn pipelines_that_refer_to_themselves_stop_at_the_task_run_budget() {
    // Five references to itself, eight levels deep: 5^8 pipeline tasks without the budget.
    let mut tasks: Vec<Value> = (0..5)
        .map(|i| json!({"name": format!("t{i}"), "pipelineRef": {"name": "outer"}}))
        .collect();
    tasks.push(json!({"name": "s", "taskSpec": {"steps": [{"name": "s", "image": "alpine"}]}}));
    let catalog = TestCatalog::default().with("Pipeline", "outer", json!({"tasks": tasks}));
    let ex = run_pr(json!({"pipelineRef": {"name": "outer"}}), &catalog);
    assert!(
        ex.incomplete
            .iter()
            .any(|w| w.contains("more than 1024 task runs")),
        "{:?}",
        ex.incomplete
    );
    assert_clean_warnings(&ex);
}

#[test]
fn a_run_naming_too_many_images_stops_at_the_target_cap() {
    // 4 tasks x 256 combinations x 100 steps: 102,400 distinct images, each compared with all
    // before it.
    let steps: Vec<Value> = (0..100)
        .map(|i| json!({"name": format!("s{i}"), "image": format!("r/i{i}:$(params.a)")}))
        .collect();
    let values: Vec<String> = (0..256).map(|v| v.to_string()).collect();
    let tasks: Vec<Value> = (0..4)
        .map(|j| {
            json!({"name": format!("t{j}"), "taskRef": {"name": "big"},
            "matrix": {"params": [{"name": "a", "value": values}]}})
        })
        .collect();
    let catalog = TestCatalog::default().with(
        "Task",
        "big",
        json!({"params": [{"name": "a"}], "steps": steps}),
    );
    let ex = run_pr(json!({"pipelineSpec": {"tasks": tasks}}), &catalog);
    assert_eq!(ex.targets.len(), 2048);
    assert!(
        ex.incomplete
            .iter()
            .any(|w| w.contains("more than 2048 images")),
        "{:?}",
        ex.incomplete
    );
}

// ---- issue 13: evaluate what Tekton evaluates ---------------------------------------------------

/// The images a PipelineRun named `run` with `spec` runs, in order.
fn images_of_run_named_run(spec: Value) -> Vec<String> {
    let ex = extract_pipeline_run(
        &named_pr("run", spec),
        &TestCatalog::default(),
        &ExtractOptions::default(),
    )
    .unwrap();
    ex.targets.into_iter().map(|t| t.image).collect()
}

fn named_pr(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
           "metadata": {"name": name, "namespace": "ci"}, "spec": spec})
}

fn step_task(image: &str) -> Value {
    json!({"steps": [{"name": "s", "image": image}]})
}

/// docs/pipelines.md "Guard Task execution using when expressions" (Tekton v1.x): a task or
/// finally task whose `when` is false with what admission knows contributes nothing; one that
/// needs a result may run; the tasks after a skipped task still run.
#[test]
fn when_false_skips_a_task_and_a_finally_task_only() {
    let spec = json!({
        "params": [{"name": "arch", "value": "amd64"}],
        "pipelineSpec": {
            "params": [{"name": "arch"}, {"name": "mode", "default": "release"}],
            "tasks": [
                {"name": "arm", "when": [{"input": "$(params.arch)", "operator": "in", "values": ["arm64"]}],
                 "taskSpec": step_task("arm-only:1")},
                {"name": "amd", "when": [{"input": "$(params.arch)", "operator": "notin", "values": ["arm64"]}],
                 "taskSpec": step_task("amd:1")},
                {"name": "after-arm", "runAfter": ["arm"], "taskSpec": step_task("after:1")},
                {"name": "maybe", "when": [{"input": "$(tasks.amd.results.ok)", "operator": "in", "values": ["yes"]}],
                 "taskSpec": step_task("maybe:1")},
                {"name": "cel", "when": [{"cel": "'$(params.arch)' == 'arm64'"}], "taskSpec": step_task("cel:1")}
            ],
            "finally": [
                {"name": "debug-report", "when": [{"input": "$(params.mode)", "operator": "in", "values": ["debug"]}],
                 "taskSpec": step_task("report:1")},
                {"name": "on-failure", "when": [{"input": "$(tasks.status)", "operator": "in", "values": ["Failed"]}],
                 "taskSpec": step_task("notify:1")}
            ]
        }
    });
    let ex = run_pr(spec, &TestCatalog::default());
    let images: Vec<String> = ex.targets.iter().map(|t| t.image.clone()).collect();
    assert_eq!(images, ["amd:1", "after:1", "maybe:1", "cel:1", "notify:1"]);
    assert!(ex.warnings.is_empty(), "{:?}", ex.warnings);
}

#[test]
fn when_uses_the_runs_fixed_name_and_generated_names_stay_unknown() {
    let spec = json!({"pipelineSpec": {"tasks": [
        {"name": "nightly-only", "when": [{"input": "$(context.pipelineRun.name)", "operator": "in", "values": ["nightly"]}],
         "taskSpec": step_task("nightly:1")}
    ]}});
    let named = |name: &str| {
        extract_pipeline_run(
            &named_pr(name, spec.clone()),
            &EmptyCatalog,
            &ExtractOptions::default(),
        )
        .unwrap()
        .targets
        .len()
    };
    assert_eq!(named("nightly"), 1);
    assert_eq!(named("pr-1234"), 0);
    // generateName: the name is chosen after admission, so the task may run.
    assert_eq!(run_pr(spec, &TestCatalog::default()).targets.len(), 1);
}

/// docs/variables.md: `$(context.pipelineRun.name|namespace)` in the pipeline spec (embedded task
/// specs included) and `$(context.taskRun.name|namespace)` in any task spec; TaskRun names are
/// `<run>-<task>` (`-<i>` per matrix combination).
#[test]
fn context_variables_are_substituted_for_fixed_names() {
    let catalog = TestCatalog::default().with(
        "Task",
        "ref",
        json!({"steps": [{"name": "s", "image": "r/$(context.taskRun.name):$(context.taskRun.namespace)"}]}),
    );
    let spec = json!({"pipelineSpec": {"tasks": [
        {"name": "emb", "taskSpec": {"steps": [
            {"name": "s", "image": "r/$(context.pipelineRun.name):$(context.pipelineRun.namespace)"},
            {"name": "t", "image": "r/$(context.taskRun.name)"}]}},
        {"name": "referenced", "taskRef": {"name": "ref"}},
        {"name": "fan", "matrix": {"params": [{"name": "v", "value": ["a", "b"]}]},
         "taskSpec": {"params": [{"name": "v"}], "steps": [{"name": "s", "image": "r/$(context.taskRun.name):$(params.v)"}]}}
    ]}});
    let ex = extract_pipeline_run(
        &named_pr("nightly", spec.clone()),
        &catalog,
        &ExtractOptions::default(),
    )
    .unwrap();
    let images: Vec<&str> = ex.targets.iter().map(|t| t.image.as_str()).collect();
    assert_eq!(
        images,
        [
            "r/nightly:ci",
            "r/nightly-emb",
            "r/nightly-referenced:ci",
            "r/nightly-fan-0:a",
            "r/nightly-fan-1:b"
        ]
    );
    // A name Tekton would shorten with a hash, and a generated name: unknown, skipped with a warning.
    let long = "n".repeat(60);
    for object in [named_pr(&long, spec.clone()), pr(spec)] {
        let ex = extract_pipeline_run(&object, &catalog, &ExtractOptions::default()).unwrap();
        assert!(
            !ex.targets.iter().any(|t| t.image.contains("-emb")),
            "{:?}",
            pairs(&ex)
        );
        assert!(
            ex.warnings
                .iter()
                .any(|w| w.contains("$(context.taskRun.name)")),
            "{:?}",
            ex.warnings
        );
    }
    // A TaskRun's own name.
    let ex = run_tr(
        json!({"taskSpec": {"steps": [{"name": "s", "image": "r/$(context.taskRun.name):$(context.taskRun.namespace)"}]}}),
        &TestCatalog::default(),
    );
    assert_eq!(pairs(&ex), vec![p("step \"s\"", "r/tr:ci")]);
}

/// docs/tasks.md "Specifying Parameters": an object given only some keys takes the rest from the
/// Task's (or StepAction's) default.
#[test]
fn partly_given_object_params_take_the_missing_keys_from_the_default() {
    let catalog = TestCatalog::default()
        .with("Task", "build", json!({
            "params": [{"name": "tool", "type": "object",
                        "properties": {"registry": {}, "name": {}, "tag": {}},
                        "default": {"registry": "quay.io", "name": "kaniko", "tag": "1"}}],
            "steps": [{"name": "s", "image": "$(params.tool.registry)/$(params.tool.name):$(params.tool.tag)"},
                      {"name": "act", "ref": {"name": "act"},
                       "params": [{"name": "cfg", "value": {"tag": "9"}}]}]
        }))
        .with("StepAction", "act", json!({
            "params": [{"name": "cfg", "type": "object", "default": {"image": "helper", "tag": "1"}}],
            "image": "$(params.cfg.image):$(params.cfg.tag)"
        }));
    let ex = run_pr(
        json!({"pipelineSpec": {"tasks": [{"name": "b", "taskRef": {"name": "build"},
            "params": [{"name": "tool", "value": {"tag": "2"}}]}]}}),
        &catalog,
    );
    assert_eq!(
        pairs(&ex),
        vec![
            p("pipeline task \"b\" step \"s\"", "quay.io/kaniko:2"),
            p("pipeline task \"b\" step \"act\"", "helper:9"),
        ]
    );
    assert!(ex.warnings.is_empty(), "{:?}", ex.warnings);
}

/// Defaults naming other params: Pipelines (v1.9+) and StepActions (v0.68+) see what they were
/// given, Tasks (v0.68+) see their other defaults (pkg/reconciler/taskrun/resources/apply.go).
#[test]
fn defaults_that_name_other_params_resolve_as_tekton_resolves_them() {
    let catalog = TestCatalog::default()
        .with("Task", "t", json!({
            "params": [{"name": "registry", "default": "task.example"},
                       {"name": "image", "default": "$(params.registry)/tool:1"}],
            "steps": [{"name": "s", "image": "$(params.image)"},
                      {"name": "act", "ref": {"name": "act"}, "params": [{"name": "registry", "value": "$(params.registry)"}]}]
        }))
        .with("StepAction", "act", json!({
            "params": [{"name": "registry"}, {"name": "image", "default": "$(params.registry)/helper:1"}],
            "image": "$(params.image)"
        }));
    let spec = json!({
        "params": [{"name": "registry", "value": "run.example"}],
        "pipelineSpec": {
            "params": [{"name": "registry"}, {"name": "builder", "default": "$(params.registry)/builder:1"}],
            "tasks": [
                {"name": "emb", "taskSpec": step_task("$(params.builder)")},
                {"name": "ref", "taskRef": {"name": "t"}, "params": [{"name": "registry", "value": "$(params.registry)"}]}
            ]
        }
    });
    let ex = run_pr(spec, &catalog);
    assert_eq!(
        pairs(&ex),
        vec![
            p("pipeline task \"emb\" step \"s\"", "run.example/builder:1"),
            p("pipeline task \"ref\" step \"s\"", "task.example/tool:1"),
            p("pipeline task \"ref\" step \"act\"", "run.example/helper:1"),
        ]
    );
}

#[test]
fn runs_carry_service_accounts_pull_secrets_and_pin_sites() {
    let spec = json!({
        "taskRunTemplate": {"serviceAccountName": "builder",
                            "podTemplate": {"imagePullSecrets": [{"name": "run-cred"}]}},
        "taskRunSpecs": [{"pipelineTaskName": "push", "serviceAccountName": "pusher",
                          "podTemplate": {"imagePullSecrets": [{"name": "push-cred"}]}}],
        "pipelineSpec": {"tasks": [
            {"name": "build", "taskSpec": step_task("b:1")},
            {"name": "push", "taskSpec": step_task("p:1")}
        ]}
    });
    let ex = run_pr(spec, &TestCatalog::default());
    let placement = |i: usize| ex.targets[i].placement.clone();
    assert_eq!(placement(0).service_account.as_deref(), Some("builder"));
    assert_eq!(placement(0).pull_secrets, ["run-cred"]);
    assert_eq!(placement(1).service_account.as_deref(), Some("pusher"));
    assert_eq!(placement(1).pull_secrets, ["push-cred"]);
    assert_eq!(
        placement(1).pin_at,
        [
            "spec.taskRunTemplate.podTemplate",
            "spec.taskRunSpecs[].podTemplate (pipelineTaskName: push)"
        ]
    );
    let ex = run_tr(
        json!({"serviceAccountName": "ci", "podTemplate": {"imagePullSecrets": [{"name": "c"}]},
               "taskSpec": step_task("t:1")}),
        &TestCatalog::default(),
    );
    assert_eq!(
        ex.targets[0].placement.service_account.as_deref(),
        Some("ci")
    );
    assert_eq!(ex.targets[0].placement.pull_secrets, ["c"]);
    assert_eq!(ex.targets[0].placement.pin_at, ["spec.podTemplate"]);
}

// ---- hardening: bounds on what one run may cost -------------------------------------------------

/// A step template's image is inherited by every step without one: a long one must not be copied
/// per step (128 KiB x 2048 steps was 256 MiB). It stands once for all, as an invalid reference.
#[test]
fn a_long_template_image_is_one_target_not_one_per_step() {
    let long = format!("registry.example/{}:1", "a".repeat(4096));
    let steps = vec![json!({}); 64];
    let spec = json!({"taskSpec": {"stepTemplate": {"image": long}, "steps": steps}});
    let ex = run_tr(spec, &TestCatalog::default());
    assert_eq!(ex.targets.len(), 1, "{} targets", ex.targets.len());
    let error = crate::reference::ImageRef::parse(&ex.targets[0].image).unwrap_err();
    assert!(error.reason.contains("longer than"), "{}", error.reason);
    // A value that grows long only after substitution is held to the same bound.
    let spec = json!({"taskSpec": {
        "params": [{"name": "big", "default": "b".repeat(8192)}],
        "stepTemplate": {"image": "$(params.big)"}, "steps": vec![json!({}); 64]
    }});
    let ex = run_tr(spec, &TestCatalog::default());
    assert_eq!(ex.targets.len(), 1, "{} targets", ex.targets.len());
}

/// 40,000 steps whose image is unknown: every warning used to be compared with every earlier one,
/// and none of them counted against `MAX_TARGETS`, so the walk never stopped.
#[test]
fn many_unknown_step_images_stay_linear() {
    let steps = vec![json!({}); 40_000];
    let spec = json!({"taskSpec": {"stepTemplate": {"image": "$(params.nope)"}, "steps": steps}});
    let ex = run_tr(spec, &TestCatalog::default());
    assert!(ex.targets.is_empty());
    // The kept warnings, then one line counting the rest; the walk's stop is what was left
    // unchecked.
    assert_eq!(
        ex.warnings.len(),
        MAX_WARNINGS_KEPT + 1,
        "{}",
        ex.warnings.len()
    );
    assert_eq!(ex.incomplete.len(), 1, "{:?}", ex.incomplete);
    assert!(
        ex.incomplete[0].contains(&format!(
            "more than {MAX_WALK} pipeline tasks, steps and sidecars"
        )),
        "{}",
        ex.incomplete[0]
    );
    let dropped = MAX_WALK - MAX_WARNINGS_KEPT;
    assert_eq!(
        ex.warnings.last().unwrap(),
        &format!("… and {dropped} more warnings about this run were not kept")
    );
}

/// Tekton's TaskRun reconciler resolves `taskRef` by name (or resolver) whatever its `kind` says
/// (pkg/reconciler/taskrun/resources/taskref.go `GetTaskFunc`, `LocalTaskRefResolver.GetTask`):
/// custom tasks exist only as pipeline tasks.
#[test]
fn taskrun_taskref_kind_is_ignored_as_tekton_ignores_it() {
    let catalog = TestCatalog::default().with("Task", "build", step_task("golang:1.22"));
    for reference in [
        json!({"name": "build", "apiVersion": "example.dev/v1", "kind": "Whatever"}),
        json!({"name": "build", "apiVersion": "", "kind": "Whatever"}),
        json!({"name": "build", "kind": "Whatever"}),
        json!({"name": "build", "apiVersion": "example.dev/v1"}),
    ] {
        let ex = run_tr(json!({"taskRef": reference}), &catalog);
        assert_eq!(
            pairs(&ex),
            vec![p("step \"s\"", "golang:1.22")],
            "{reference}"
        );
    }
}

/// A pipeline task is a custom task only when `apiVersion` and `kind` are both non-empty
/// (pkg/apis/pipeline/v1/taskref_types.go `TaskRef.IsCustomTask`, pipeline_types.go
/// `EmbeddedTask.IsCustomTask`).
#[test]
fn pipeline_task_is_custom_only_with_both_api_version_and_kind() {
    let catalog = TestCatalog::default().with("Task", "build", step_task("golang:1.22"));
    let task = |body: Value| {
        let mut task = json!({"name": "t"});
        task.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        json!({"pipelineSpec": {"tasks": [task]}})
    };
    let runs = [
        json!({"taskRef": {"name": "build", "kind": "Whatever"}}),
        json!({"taskRef": {"name": "build", "apiVersion": "", "kind": "Whatever"}}),
        json!({"taskRef": {"name": "build", "apiVersion": "example.dev/v1", "kind": ""}}),
        json!({"taskSpec": {"apiVersion": "", "kind": "Example", "steps": [{"name": "s", "image": "golang:1.22"}]}}),
    ];
    for body in runs {
        let ex = run_pr(task(body.clone()), &catalog);
        assert_eq!(
            pairs(&ex),
            vec![p("pipeline task \"t\" step \"s\"", "golang:1.22")],
            "{body}"
        );
    }
    // Both set: a custom task, even when they name Tekton's own Task (tektoncd/pipeline#6457).
    let custom =
        json!({"taskRef": {"name": "build", "apiVersion": "tekton.dev/v1", "kind": "Task"}});
    assert_eq!(run_pr(task(custom), &catalog), Extraction::default());
}

/// Tekton merges a step over `stepTemplate` with omitempty: `image: ""` takes the template's.
#[test]
fn an_empty_step_image_takes_the_templates() {
    let spec = json!({"taskSpec": {"stepTemplate": {"image": "golang:1.22"},
                                   "steps": [{"name": "build", "image": ""}]}});
    let ex = run_tr(spec, &TestCatalog::default());
    assert_eq!(pairs(&ex), vec![p("step \"build\"", "golang:1.22")]);
    assert!(ex.warnings.is_empty(), "{:?}", ex.warnings);
}
