//! Where the pods of a run's TaskRuns may land, from Tekton pod templates.
//!
//! Only the fields that decide which nodes qualify are read. Values may use `$(params.x)` (a matrix
//! param naming the architecture), so templates are substituted per parameter set before reading.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration};
use serde::Deserialize;
use serde_json::Value;

use super::Bad;
use super::params::{Params, substitute};
use crate::workload::Placement;

/// The scheduling fields of a Tekton `PodTemplate` (a subset of a pod spec, same JSON shape).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchedulingFields {
    node_selector: Option<BTreeMap<String, String>>,
    affinity: Option<Affinity>,
    tolerations: Option<Vec<Toleration>>,
}

/// The pod templates of a run: one for every TaskRun and one per pipeline task.
#[derive(Debug, Default, Clone)]
pub struct Templates {
    run: Option<Value>,
    per_task: BTreeMap<String, Value>,
}

impl Templates {
    /// A PipelineRun's templates: v1 `taskRunTemplate.podTemplate` and `taskRunSpecs[].podTemplate`,
    /// v1beta1 `podTemplate` and `taskRunSpecs[].taskPodTemplate`.
    pub fn of_pipeline_run(spec: &Value) -> Result<Self, Bad> {
        let run = spec
            .pointer("/taskRunTemplate/podTemplate")
            .or_else(|| spec.get("podTemplate"))
            .filter(|v| !v.is_null())
            .cloned();
        let mut per_task = BTreeMap::new();
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
        }
        Ok(Self { run, per_task })
    }

    /// A TaskRun's `spec.podTemplate`.
    pub fn of_task_run(spec: &Value) -> Self {
        Self {
            run: spec.get("podTemplate").filter(|v| !v.is_null()).cloned(),
            per_task: BTreeMap::new(),
        }
    }

    /// The placement of one pipeline task's pods (`None`: the run-wide template), with `$(params)`
    /// substituted from `scope`. `Err(Ok(expr))` when a value is only known at run time.
    pub fn placement(&self, task: Option<&str>, scope: &Params) -> Result<Placement, Unplaced> {
        let own = task.and_then(|t| self.per_task.get(t));
        let run = read(self.run.as_ref(), scope, "the run's pod template")?;
        let own = read(own, scope, "spec.taskRunSpecs pod template")?;
        // Tekton merges field by field: a task's own template wins where it sets a field.
        let node_selector = own.node_selector.or(run.node_selector).unwrap_or_default();
        let affinity = own.affinity.or(run.affinity);
        let tolerations = own.tolerations.or(run.tolerations).unwrap_or_default();
        Ok(Placement {
            node_selector,
            required_affinity: affinity
                .and_then(|a| a.node_affinity)
                .and_then(|n| n.required_during_scheduling_ignored_during_execution),
            tolerations,
            ..Placement::default()
        })
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

fn read(
    template: Option<&Value>,
    scope: &Params,
    what: &str,
) -> Result<SchedulingFields, Unplaced> {
    let Some(template) = template else {
        return Ok(SchedulingFields::default());
    };
    if !template.is_object() {
        return Err(Unplaced::Bad(Bad(format!("{what} is not an object"))));
    }
    let mut fields = serde_json::Map::new();
    for key in ["nodeSelector", "affinity", "tolerations"] {
        if let Some(value) = template.get(key) {
            fields.insert(key.to_string(), substitute_strings(value, scope)?);
        }
    }
    SchedulingFields::deserialize(Value::Object(fields))
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
            let t = Templates::of_pipeline_run(&spec).unwrap();
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
            assert_eq!(t.placement(Some("other"), &Params::new()).unwrap(), run);
        }
    }

    #[test]
    fn substitutes_params_and_reports_unknown_values() {
        let spec = json!({"taskRunSpecs": [{"pipelineTaskName": "b",
            "podTemplate": {"nodeSelector": {"kubernetes.io/arch": "$(params.ARCH)"}}}]});
        let t = Templates::of_pipeline_run(&spec).unwrap();
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
        let t = Templates::of_pipeline_run(&bad).unwrap();
        assert!(matches!(
            t.placement(None, &Params::new()),
            Err(Unplaced::Bad(_))
        ));
        assert!(Templates::of_pipeline_run(&json!({"taskRunSpecs": [{}]})).is_err());
        assert!(Templates::of_pipeline_run(&json!({"taskRunSpecs": {}})).is_err());
        let tr = Templates::of_task_run(
            &json!({"podTemplate": {"nodeSelector": {"kubernetes.io/os": "windows"}}}),
        );
        assert_eq!(
            tr.placement(None, &Params::new()).unwrap().node_selector["kubernetes.io/os"],
            "windows"
        );
    }
}
