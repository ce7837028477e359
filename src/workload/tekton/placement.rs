//! Where the pods of a run's TaskRuns may land, whose credentials pull their images, and where
//! a user pins them, from Tekton pod templates and service accounts.
//!
//! Only the fields that decide which nodes qualify and which pull secrets apply are read. Values may
//! use `$(params.x)` (a matrix param naming the architecture), so templates are substituted per
//! parameter set before reading.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, LocalObjectReference, Toleration};
use serde::Deserialize;
use serde_json::Value;

use super::Bad;
use super::params::{Params, substitute};
use crate::workload::Placement;

/// The fields of a Tekton `PodTemplate` archgate reads (a subset of a pod spec, same JSON shape).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TemplateFields {
    node_selector: Option<BTreeMap<String, String>>,
    affinity: Option<Affinity>,
    tolerations: Option<Vec<Toleration>>,
    image_pull_secrets: Option<Vec<LocalObjectReference>>,
}

/// The pod templates and service accounts of a run: one for every TaskRun and one per pipeline
/// task, with the field paths a user edits to pin them.
#[derive(Debug, Default, Clone)]
pub struct Templates {
    run: Option<Value>,
    per_task: BTreeMap<String, Value>,
    run_account: Option<String>,
    per_task_account: BTreeMap<String, String>,
    /// `spec.taskRunTemplate.podTemplate` (v1) or `spec.podTemplate` (v1beta1, TaskRuns).
    run_pin: &'static str,
    /// The per-task template's field: `podTemplate` (v1) or `taskPodTemplate` (v1beta1).
    task_pin: &'static str,
}

impl Templates {
    /// A PipelineRun's templates and accounts, as Tekton's `GetTaskRunSpec` merges them
    /// (pkg/apis/pipeline/v1/pipelinerun_types.go): v1 `taskRunTemplate.{podTemplate,
    /// serviceAccountName}` and `taskRunSpecs[].{podTemplate, serviceAccountName}`; v1beta1
    /// `{podTemplate, serviceAccountName}` and `taskRunSpecs[].{taskPodTemplate,
    /// taskServiceAccountName}`. The version is read from the fields used, else `api_version`.
    pub fn of_pipeline_run(spec: &Value, api_version: &str) -> Result<Self, Bad> {
        let present = |v: Option<&Value>| v.is_some_and(|v| !v.is_null());
        let v1beta1 = if present(spec.get("taskRunTemplate")) {
            false
        } else if present(spec.get("podTemplate")) || present(spec.get("serviceAccountName")) {
            true
        } else {
            api_version == "tekton.dev/v1beta1"
        };
        let run = spec
            .pointer("/taskRunTemplate/podTemplate")
            .or_else(|| spec.get("podTemplate"))
            .filter(|v| !v.is_null())
            .cloned();
        let run_account = spec
            .pointer("/taskRunTemplate/serviceAccountName")
            .or_else(|| spec.get("serviceAccountName"));
        let run_account = account(run_account, "spec serviceAccountName")?;
        let mut per_task = BTreeMap::new();
        let mut per_task_account = BTreeMap::new();
        let specs = super::params::list(spec.get("taskRunSpecs"), "spec.taskRunSpecs")?;
        for (i, entry) in specs.iter().enumerate() {
            let Some(name) = entry.get("pipelineTaskName").and_then(Value::as_str) else {
                return Err(Bad(format!(
                    "spec.taskRunSpecs[{i}].pipelineTaskName is missing"
                )));
            };
            let template = entry
                .get("podTemplate")
                .or_else(|| entry.get("taskPodTemplate"));
            if let Some(template) = template.filter(|v| !v.is_null()) {
                per_task.insert(name.to_string(), template.clone());
            }
            let own = entry
                .get("serviceAccountName")
                .or_else(|| entry.get("taskServiceAccountName"));
            let path = format!("spec.taskRunSpecs[{i}] serviceAccountName");
            if let Some(own) = account(own, &path)? {
                per_task_account.insert(name.to_string(), own);
            }
        }
        Ok(Self {
            run,
            per_task,
            run_account,
            per_task_account,
            run_pin: if v1beta1 {
                "spec.podTemplate"
            } else {
                "spec.taskRunTemplate.podTemplate"
            },
            task_pin: if v1beta1 {
                "taskPodTemplate"
            } else {
                "podTemplate"
            },
        })
    }

    /// A TaskRun's `spec.podTemplate` and `spec.serviceAccountName`.
    pub fn of_task_run(spec: &Value) -> Result<Self, Bad> {
        Ok(Self {
            run: spec.get("podTemplate").filter(|v| !v.is_null()).cloned(),
            run_account: account(spec.get("serviceAccountName"), "spec.serviceAccountName")?,
            run_pin: "spec.podTemplate",
            ..Self::default()
        })
    }

    /// The placement of one pipeline task's pods (`None`: the run-wide template), with `$(params)`
    /// substituted from `scope`. `Err(Ok(expr))` when a value is only known at run time.
    pub fn placement(&self, task: Option<&str>, scope: &Params) -> Result<Placement, Unplaced> {
        let own = task.and_then(|t| self.per_task.get(t));
        let run = read(self.run.as_ref(), scope, "the run's pod template")?;
        let own = read(own, scope, "spec.taskRunSpecs pod template")?;
        // Tekton merges field by field (`MergePodTemplateWithDefault`): a task's own template wins
        // where it sets a field, and its own service account wins where it names one.
        let node_selector = own.node_selector.or(run.node_selector).unwrap_or_default();
        let affinity = own.affinity.or(run.affinity);
        let tolerations = own.tolerations.or(run.tolerations).unwrap_or_default();
        let pull_secrets = own
            .image_pull_secrets
            .or(run.image_pull_secrets)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .collect();
        let service_account = task
            .and_then(|t| self.per_task_account.get(t))
            .or(self.run_account.as_ref())
            .cloned();
        let mut pin_at = Vec::new();
        if !self.run_pin.is_empty() {
            pin_at.push(self.run_pin.to_string());
        }
        if let Some(task) = task.filter(|_| !self.task_pin.is_empty()) {
            pin_at.push(format!(
                "spec.taskRunSpecs[].{} (pipelineTaskName: {task})",
                self.task_pin
            ));
        }
        Ok(Placement {
            node_selector,
            required_affinity: affinity
                .and_then(|a| a.node_affinity)
                .and_then(|n| n.required_during_scheduling_ignored_during_execution),
            tolerations,
            pull_secrets,
            service_account,
            pin_at,
            ..Placement::default()
        })
    }
}

/// An optional service account name; empty means Tekton's default account.
fn account(value: Option<&Value>, path: &str) -> Result<Option<String>, Bad> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => Ok(Some(name.clone()).filter(|n| !n.is_empty())),
        Some(_) => Err(Bad(format!("{path} is not a string"))),
    }
}

/// Why a placement cannot be known.
#[derive(Debug, Clone, PartialEq)]
pub enum Unplaced {
    /// The template uses this expression, known only at run time.
    Unknown(String),
    /// The template is malformed.
    Bad(Bad),
}

fn read(template: Option<&Value>, scope: &Params, what: &str) -> Result<TemplateFields, Unplaced> {
    let Some(template) = template else {
        return Ok(TemplateFields::default());
    };
    if !template.is_object() {
        return Err(Unplaced::Bad(Bad(format!("{what} is not an object"))));
    }
    let mut fields = serde_json::Map::new();
    for key in [
        "nodeSelector",
        "affinity",
        "tolerations",
        "imagePullSecrets",
    ] {
        if let Some(value) = template.get(key) {
            fields.insert(key.to_string(), substitute_strings(value, scope)?);
        }
    }
    TemplateFields::deserialize(Value::Object(fields))
        .map_err(|e| Unplaced::Bad(Bad(format!("{what}: {e}"))))
}

/// Substitute params in every string of a JSON value.
fn substitute_strings(value: &Value, scope: &Params) -> Result<Value, Unplaced> {
    Ok(match value {
        Value::String(s) => Value::String(substitute(s, scope).map_err(Unplaced::Unknown)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute_strings(v, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute_strings(v, scope)?)))
                .collect::<Result<_, Unplaced>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::tekton::params::Param;
    use serde_json::json;

    fn arch(p: &Placement) -> Option<&str> {
        p.node_selector
            .get("kubernetes.io/arch")
            .map(String::as_str)
    }

    #[test]
    fn reads_each_template_field_of_v1_and_v1beta1() {
        let affinity = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}]}}});
        let tolerations =
            json!([{"key": "arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"}]);
        let v1 = json!({
            "taskRunTemplate": {"podTemplate": {"nodeSelector": {"kubernetes.io/arch": "amd64"}}},
            "taskRunSpecs": [{"pipelineTaskName": "b", "podTemplate": {"affinity": affinity, "tolerations": tolerations}}]
        });
        let v1beta1 = json!({
            "podTemplate": {"nodeSelector": {"kubernetes.io/arch": "amd64"}},
            "taskRunSpecs": [{"pipelineTaskName": "b", "taskPodTemplate": {"affinity": affinity, "tolerations": tolerations}}]
        });
        for spec in [v1, v1beta1] {
            let t = Templates::of_pipeline_run(&spec, "tekton.dev/v1").unwrap();
            let run = t.placement(None, &Params::new()).unwrap();
            assert_eq!(arch(&run), Some("amd64"));
            assert!(run.required_affinity.is_none() && run.tolerations.is_empty());
            let b = t.placement(Some("b"), &Params::new()).unwrap();
            // The task's template adds affinity and tolerations; the run's nodeSelector still applies.
            assert_eq!(arch(&b), Some("amd64"));
            let terms = &b.required_affinity.as_ref().unwrap().node_selector_terms;
            assert_eq!(
                terms[0].match_expressions.as_ref().unwrap()[0]
                    .values
                    .as_ref()
                    .unwrap()[0],
                "arm64"
            );
            assert_eq!(b.tolerations[0].value.as_deref(), Some("arm64"));
            let other = t.placement(Some("other"), &Params::new()).unwrap();
            assert_eq!(other.node_selector, run.node_selector);
            assert!(other.required_affinity.is_none() && other.tolerations.is_empty());
        }
    }

    /// Tekton's `GetTaskRunSpec` (v1 and v1beta1 pipelinerun_types.go): a task's own service
    /// account and pod template fields win, the run's apply otherwise; the pin hint names the
    /// field of the version the run was written in.
    #[test]
    fn accounts_pull_secrets_and_pin_sites_follow_the_run_version() {
        let secrets =
            |names: &[&str]| json!(names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>());
        let v1 = json!({
            "taskRunTemplate": {"serviceAccountName": "builder",
                "podTemplate": {"imagePullSecrets": secrets(&["run-cred"])}},
            "taskRunSpecs": [
                {"pipelineTaskName": "push", "serviceAccountName": "pusher",
                 "podTemplate": {"imagePullSecrets": secrets(&["push-cred", ""])}},
                {"pipelineTaskName": "test", "serviceAccountName": ""}
            ]
        });
        let v1beta1 = json!({
            "serviceAccountName": "builder",
            "podTemplate": {"imagePullSecrets": secrets(&["run-cred"])},
            "taskRunSpecs": [
                {"pipelineTaskName": "push", "taskServiceAccountName": "pusher",
                 "taskPodTemplate": {"imagePullSecrets": secrets(&["push-cred"])}},
                {"pipelineTaskName": "test", "taskServiceAccountName": ""}
            ]
        });
        for (spec, run_pin, task_pin) in [
            (
                v1,
                "spec.taskRunTemplate.podTemplate",
                "spec.taskRunSpecs[].podTemplate",
            ),
            (
                v1beta1,
                "spec.podTemplate",
                "spec.taskRunSpecs[].taskPodTemplate",
            ),
        ] {
            // The version comes from the fields used, not the (possibly converted) apiVersion.
            let t = Templates::of_pipeline_run(&spec, "tekton.dev/v1").unwrap();
            let push = t.placement(Some("push"), &Params::new()).unwrap();
            assert_eq!(push.service_account.as_deref(), Some("pusher"));
            // An empty name is kept: it still counts as naming one (`cluster::pull_credentials`).
            let named: Vec<&String> = push.pull_secrets.iter().filter(|n| !n.is_empty()).collect();
            assert_eq!(named, ["push-cred"]);
            assert_eq!(
                push.pin_at,
                [
                    run_pin.to_string(),
                    format!("{task_pin} (pipelineTaskName: push)")
                ]
            );
            let test = t.placement(Some("test"), &Params::new()).unwrap();
            assert_eq!(test.service_account.as_deref(), Some("builder"));
            assert_eq!(test.pull_secrets, ["run-cred"]);
            let run = t.placement(None, &Params::new()).unwrap();
            assert_eq!(run.pin_at, [run_pin]);
        }
        // Nothing set: the API version decides the pin site; no account means Tekton's default.
        let bare = Templates::of_pipeline_run(&json!({}), "tekton.dev/v1beta1").unwrap();
        let run = bare.placement(None, &Params::new()).unwrap();
        assert_eq!(run.pin_at, ["spec.podTemplate"]);
        assert_eq!(run.service_account, None);
        let tr = Templates::of_task_run(&json!({"serviceAccountName": "ci",
            "podTemplate": {"imagePullSecrets": secrets(&["tr-cred"])}}))
        .unwrap();
        let placed = tr.placement(None, &Params::new()).unwrap();
        assert_eq!(placed.service_account.as_deref(), Some("ci"));
        assert_eq!(placed.pull_secrets, ["tr-cred"]);
        assert_eq!(placed.pin_at, ["spec.podTemplate"]);
        assert!(Templates::of_task_run(&json!({"serviceAccountName": 1})).is_err());
    }

    #[test]
    fn substitutes_params_and_reports_unknown_values() {
        let spec = json!({"taskRunSpecs": [{"pipelineTaskName": "b",
            "podTemplate": {"nodeSelector": {"kubernetes.io/arch": "$(params.ARCH)"}}}]});
        let t = Templates::of_pipeline_run(&spec, "tekton.dev/v1").unwrap();
        let mut scope = Params::new();
        scope.insert("ARCH".into(), Param::Known(json!("arm64")));
        assert_eq!(
            arch(&t.placement(Some("b"), &scope).unwrap()),
            Some("arm64")
        );
        assert_eq!(
            t.placement(Some("b"), &Params::new()),
            Err(Unplaced::Unknown("$(params.ARCH)".into()))
        );
    }

    #[test]
    fn malformed_templates_are_bad_input() {
        let bad = json!({"podTemplate": {"nodeSelector": ["amd64"]}});
        let t = Templates::of_pipeline_run(&bad, "tekton.dev/v1").unwrap();
        assert!(matches!(
            t.placement(None, &Params::new()),
            Err(Unplaced::Bad(_))
        ));
        assert!(
            Templates::of_pipeline_run(&json!({"taskRunSpecs": [{}]}), "tekton.dev/v1").is_err()
        );
        assert!(Templates::of_pipeline_run(&json!({"taskRunSpecs": {}}), "tekton.dev/v1").is_err());
        let tr = Templates::of_task_run(
            &json!({"podTemplate": {"nodeSelector": {"kubernetes.io/os": "windows"}}}),
        )
        .unwrap();
        assert_eq!(
            tr.placement(None, &Params::new()).unwrap().node_selector["kubernetes.io/os"],
            "windows"
        );
    }
}
