//! `when` expressions of pipeline tasks: which tasks Tekton is sure to skip, given what is known at
//! admission.
//!
//! Tekton runs a pipeline task only when every expression holds
//! (pkg/apis/pipeline/v1/when_types.go `AllowsExecution`; docs/pipelines.md "Guard Task execution
//! using when expressions"). An expression is decided here only when its input and all its values
//! are known (params with their defaults, the run's fixed name); one that is decided false skips the
//! task, whatever the others say. Anything else (a task result, `$(tasks.status)`, an unknown
//! context variable, a `cel:` expression) may hold, so the task is checked: a task wrongly skipped
//! here would let a broken image through.
//!
//! Only pipeline tasks are skipped. A step's `when` is decided by the step's entrypoint inside the
//! running pod (docs/tasks.md "Guarding Step execution using when expressions"), whose image is pulled
//! either way.
//!
//! Inputs and values are read as Tekton reads them: only the exact reference forms are replaced
//! ([`Forms::Literal`]); `$( params.env )` stays that text, and the expression compares it.
//!
//! CEL (`cel:`, an alpha feature behind `enable-cel-in-whenexpression`) is not evaluated: Tekton's
//! CEL environment is its own (cel-go with substituted strings), and a Rust interpreter that
//! disagreed with it on one expression would skip a task Tekton runs. Unknown is the safe answer.

use serde_json::Value;

use super::Bad;
use super::params::{Forms, Param, Params, list, substitute_as, substitute_value_as};

/// Whether Tekton surely skips a task guarded by `when` (`true`), or may run it.
pub fn surely_skipped(when: Option<&Value>, scope: &Params, path: &str) -> Result<bool, Bad> {
    for (i, expression) in list(when, path)?.iter().enumerate() {
        if decide(expression, scope, &format!("{path}[{i}]"))? == Some(false) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `Some(holds)` when the expression can be decided at admission, `None` when only the run knows.
fn decide(expression: &Value, scope: &Params, path: &str) -> Result<Option<bool>, Bad> {
    let Some(fields) = expression.as_object() else {
        return Err(Bad(format!("{path} is not an object")));
    };
    if fields.get("cel").is_some_and(|c| !c.is_null()) {
        return Ok(None);
    }
    let operator = match fields.get("operator") {
        Some(Value::String(op)) => op.as_str(),
        _ => return Err(Bad(format!("{path}.operator is missing or not a string"))),
    };
    // Tekton's validation accepts only these two; anything else is Tekton's to reject.
    let wanted = match operator {
        "in" => true,
        "notin" => false,
        _ => return Ok(None),
    };
    let Some(input) = input(fields.get("input"), scope, path)? else {
        return Ok(None);
    };
    let Some(values) = values(fields.get("values"), scope, path)? else {
        return Ok(None);
    };
    Ok(Some(values.contains(&input) == wanted))
}

/// The input after substitution; absent means the empty string (docs/pipelines.md). A whole array
/// param (`$(params.list[*])`) becomes its JSON text, as Tekton's `applyReplacementsAsString` does.
fn input(input: Option<&Value>, scope: &Params, path: &str) -> Result<Option<String>, Bad> {
    let text = match input {
        None | Some(Value::Null) => return Ok(Some(String::new())),
        Some(Value::String(text)) => text,
        Some(_) => return Err(Bad(format!("{path}.input is not a string"))),
    };
    if text.ends_with("[*])") {
        let whole = Value::String(text.clone());
        return Ok(
            match substitute_value_as(&whole, scope, path, Forms::Literal)? {
                Param::Known(Value::Array(items)) => Some(Value::Array(items).to_string()),
                Param::Known(Value::String(literal)) => Some(literal),
                _ => None,
            },
        );
    }
    Ok(substitute_as(text, scope, Forms::Literal).ok())
}

/// The values after substitution, `$(params.list[*])` spliced in.
fn values(values: Option<&Value>, scope: &Params, path: &str) -> Result<Option<Vec<String>>, Bad> {
    let items = list(values, &format!("{path}.values"))?;
    if items.iter().any(|v| !v.is_string()) {
        return Err(Bad(format!("{path}.values must be strings")));
    }
    let array = Value::Array(items.to_vec());
    Ok(
        match substitute_value_as(&array, scope, &format!("{path}.values"), Forms::Literal)? {
            Param::Known(Value::Array(items)) => Some(
                items
                    .into_iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Params {
        [
            ("env", json!("prod")),
            ("archs", json!(["amd64", "arm64"])),
            ("empty", json!("")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Param::Known(v)))
        .collect()
    }

    /// docs/pipelines.md "Guard Task execution using when expressions" (Tekton v1.x): each case
    /// is `when` and whether the task is surely skipped.
    #[test]
    fn known_in_and_notin_decide_unknown_values_never_skip() {
        let cases = [
            (
                json!([{"input": "$(params.env)", "operator": "in", "values": ["prod"]}]),
                false,
            ),
            (
                json!([{"input": "$(params.env)", "operator": "in", "values": ["dev"]}]),
                true,
            ),
            (
                json!([{"input": "$(params.env)", "operator": "notin", "values": ["prod"]}]),
                true,
            ),
            (
                json!([{"input": "arm64", "operator": "in", "values": ["$(params.archs[*])"]}]),
                false,
            ),
            (
                json!([{"input": "s390x", "operator": "in", "values": ["$(params.archs[*])"]}]),
                true,
            ),
            (
                json!([{"input": "$(params.archs[*])", "operator": "in", "values": ["[\"amd64\",\"arm64\"]"]}]),
                false,
            ),
            // Absent input is the empty string.
            (
                json!([{"operator": "in", "values": ["$(params.empty)"]}]),
                false,
            ),
            // Every expression must hold: one known false skips, whatever the unknown ones say.
            (
                json!([
                    {"input": "$(tasks.a.results.go)", "operator": "in", "values": ["yes"]},
                    {"input": "$(params.env)", "operator": "in", "values": ["dev"]}
                ]),
                true,
            ),
            // Results, task status, unknown context and CEL may hold.
            (
                json!([{"input": "$(tasks.a.results.go)", "operator": "in", "values": ["yes"]}]),
                false,
            ),
            (
                json!([{"input": "$(tasks.status)", "operator": "in", "values": ["Failed"]}]),
                false,
            ),
            (
                json!([{"input": "$(context.pipelineRun.name)", "operator": "in", "values": ["x"]}]),
                false,
            ),
            (
                json!([{"input": "prod", "operator": "in", "values": ["$(params.missing)"]}]),
                false,
            ),
            (json!([{"cel": "'$(params.env)' == 'dev'"}]), false),
            (
                json!([{"input": "a", "operator": "exists", "values": ["b"]}]),
                false,
            ),
            (Value::Null, false),
        ];
        for (when, skipped) in cases {
            assert_eq!(
                surely_skipped(Some(&when), &scope(), "when").unwrap(),
                skipped,
                "{when}"
            );
        }
    }

    #[test]
    fn malformed_expressions_are_bad_input() {
        for when in [
            json!({"input": "a"}),
            json!(["x"]),
            json!([{"input": "a", "values": ["a"]}]),
            json!([{"input": 1, "operator": "in", "values": ["a"]}]),
            json!([{"input": "a", "operator": "in", "values": [["a"]]}]),
        ] {
            assert!(
                surely_skipped(Some(&when), &scope(), "when").is_err(),
                "{when}"
            );
        }
    }
    /// Tekton replaces only the literal forms (`$(params.x)`, `$(params["x"])`, `$(params['x'])`;
    /// pkg/reconciler/pipelinerun/resources/apply.go `paramPatterns`, applied by
    /// pkg/substitution/replacements.go `ApplyReplacements` as exact text). `$( params.env )` and
    /// v1alpha1's `$(inputs.params.env)` stay as written, and the expression compares that text.
    #[test]
    fn when_with_spaced_or_v1alpha1_reference_compares_the_literal_text() {
        let cases = [
            // env is "prod", but Tekton compares the literal text: notin holds, the task runs.
            (
                json!([{"input": "$( params.env )", "operator": "notin", "values": ["prod"]}]),
                false,
            ),
            (
                json!([{"input": "$(inputs.params.env)", "operator": "notin", "values": ["prod"]}]),
                false,
            ),
            (
                json!([{"input": "prod", "operator": "in", "values": ["$( params.env )"]}]),
                true,
            ),
            (
                json!([{"input": "$(inputs.params.env)", "operator": "in", "values": ["$(inputs.params.env)"]}]),
                false,
            ),
            // The literal forms still substitute.
            (
                json!([{"input": "$(params['env'])", "operator": "notin", "values": ["prod"]}]),
                true,
            ),
            (
                json!([{"input": "$(params[\"archs\"][1])", "operator": "in", "values": ["arm64"]}]),
                false,
            ),
        ];
        for (when, skipped) in cases {
            assert_eq!(
                surely_skipped(Some(&when), &scope(), "when").unwrap(),
                skipped,
                "{when}"
            );
        }
    }
}
