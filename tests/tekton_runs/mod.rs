//! Tekton runs of issue 13, shared by the `archgate check -f` tests (tests/tekton_check.rs) and
//! the webhook tests (tests/tekton_webhook.rs), so both doors are asked the same question. Each
//! builder names the Tekton behaviour it follows; images are the registry harness's fixtures:
//! `arm` exists for linux/arm64 only, `multi` for linux/amd64 and linux/arm64.
#![allow(dead_code)]

use serde_json::{Value, json};

/// A v1 PipelineRun with a fixed name (`Some`) or a generated one.
pub fn pipeline_run(name: Option<&str>, spec: Value) -> Value {
    let metadata = match name {
        Some(name) => json!({"name": name, "namespace": "ci"}),
        None => json!({"generateName": "run-", "namespace": "ci"}),
    };
    json!({"apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "metadata": metadata, "spec": spec})
}

fn steps(image: &str) -> Value {
    json!({"steps": [{"name": "run", "image": image}]})
}

/// `when` (Tekton v1.x docs/pipelines.md "Guard Task execution using when expressions"): the
/// arm64-only task and finally task run only when `arch` is `arm64`; `build` always runs.
pub fn guarded_by_when(arch: &str, arm: &str, multi: &str) -> Value {
    let only_arm = json!([{"input": "$(params.arch)", "operator": "in", "values": ["arm64"]}]);
    pipeline_run(
        None,
        json!({
            "params": [{"name": "arch", "value": arch}],
            "pipelineSpec": {
                "params": [{"name": "arch", "default": "amd64"}],
                "tasks": [
                    {"name": "build", "taskSpec": steps(multi)},
                    {"name": "arm-test", "when": only_arm, "taskSpec": steps(arm)}
                ],
                "finally": [{"name": "arm-report", "when": only_arm, "taskSpec": steps(arm)}]
            }
        }),
    )
}

/// An object param given one key (docs/tasks.md "Specifying Parameters": a subset of the default's
/// keys may be given): `repo` comes from the Task's default, `tag` from the pipeline task.
pub fn partly_given_object(repo: &str, tag: &str) -> Value {
    pipeline_run(
        None,
        json!({"pipelineSpec": {"tasks": [{
            "name": "build",
            "params": [{"name": "img", "value": {"tag": tag}}],
            "taskSpec": {
                "params": [{"name": "img", "type": "object",
                            "properties": {"repo": {"type": "string"}, "tag": {"type": "string"}},
                            "default": {"repo": repo, "tag": "latest"}}],
                "steps": [{"name": "run", "image": "$(params.img.repo):$(params.img.tag)"}]
            }
        }]}}),
    )
}

/// Defaults that name other params (Pipelines v1.9+, Tasks v0.68+,
/// pkg/reconciler/pipelinerun/resources/apply.go `ApplyParameters`): the run gives `registry`,
/// the pipeline's `builder` default builds the image from it, an embedded Task's `image` default
/// from its own `registry` default.
pub fn defaults_naming_params(registry: &str, path: &str) -> Value {
    pipeline_run(
        None,
        json!({
            "params": [{"name": "registry", "value": registry}],
            "pipelineSpec": {
                "params": [{"name": "registry"},
                           {"name": "builder", "default": format!("$(params.registry)/{path}")}],
                "tasks": [
                    {"name": "pipeline-default", "taskSpec": steps("$(params.builder)")},
                    {"name": "task-default", "taskSpec": {
                        "params": [{"name": "reg", "default": registry},
                                   {"name": "image", "default": format!("$(params.reg)/{path}")}],
                        "steps": [{"name": "run", "image": "$(params.image)"}]
                    }}
                ]
            }
        }),
    )
}

/// `$(context.pipelineRun.name)` and `$(context.taskRun.name)` (docs/variables.md): with the run
/// named `ai`, pipeline task `base` runs as TaskRun `ai-base`, so both steps name
/// `{registry}/cerebral/ai-base:cuda`, the arm64-only fixture.
pub fn named_by_context(run_name: Option<&str>, registry: &str) -> Value {
    pipeline_run(
        run_name,
        json!({"pipelineSpec": {"tasks": [{"name": "base", "taskSpec": {"steps": [
            {"name": "by-run", "image": format!("{registry}/cerebral/$(context.pipelineRun.name)-base:cuda")},
            {"name": "by-task-run", "image": format!("{registry}/cerebral/$(context.taskRun.name):cuda")}
        ]}}]}}),
    )
}

/// Two tasks on a mixed cluster, `build` with the arm64-only image: the pin hint names build's
/// own `taskRunSpecs` pod template (v1), or the run-wide `spec.podTemplate` (v1beta1) when both
/// tasks miss the same platform.
pub fn two_tasks(build: &str, test: &str, v1beta1: bool) -> Value {
    let mut run = pipeline_run(
        Some("mixed"),
        json!({"pipelineSpec": {"tasks": [
            {"name": "build", "taskSpec": steps(build)},
            {"name": "test", "taskSpec": steps(test)}
        ]}}),
    );
    if v1beta1 {
        run["apiVersion"] = json!("tekton.dev/v1beta1");
        run["spec"]["serviceAccountName"] = json!("default");
    }
    run
}

/// Pull credentials of a run (Tekton's `GetTaskRunSpec`): the run's service account, or a pod
/// template `imagePullSecrets`, or one task's own `taskRunSpecs` service account.
pub fn with_credentials(image: &str, account: Option<&str>, pull_secret: Option<&str>) -> Value {
    let mut template = json!({});
    if let Some(account) = account {
        template["serviceAccountName"] = json!(account);
    }
    if let Some(secret) = pull_secret {
        template["podTemplate"] = json!({"imagePullSecrets": [{"name": secret}]});
    }
    pipeline_run(
        Some("private"),
        json!({"taskRunTemplate": template,
               "pipelineSpec": {"tasks": [{"name": "build", "taskSpec": steps(image)}]}}),
    )
}

/// A first task pulling with the default account and a second that only its own `taskRunSpecs`
/// service account can pull.
pub fn per_task_account(public: &str, private: &str, account: &str) -> Value {
    pipeline_run(
        Some("per-task"),
        json!({
            "taskRunSpecs": [{"pipelineTaskName": "push", "serviceAccountName": account}],
            "pipelineSpec": {"tasks": [
                {"name": "build", "taskSpec": steps(public)},
                {"name": "push", "taskSpec": steps(private)}
            ]}
        }),
    )
}
