//! What an UPDATE of a PipelineRun or TaskRun sets going.
//!
//! Tekton refuses spec changes only once a run is done (tektoncd/pipeline
//! `pkg/apis/pipeline/v1/pipelinerun_validation.go` and `taskrun_validation.go`,
//! `ValidateUpdate`), and `spec.status` is how a user holds a run back, releases it, cancels or
//! stops it (`pipelinerun_types.go`, `taskrun_types.go`: `PipelineRunSpecStatus*`,
//! `TaskRunSpecStatus*`).

use serde_json::Value;

/// The `spec.status` values that hold a run back before it starts (PipelineRun, TaskRun).
const PENDING: [&str; 2] = ["PipelineRunPending", "TaskRunPending"];

/// What a run's UPDATE needs checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunUpdate {
    /// The spec changed only in `status`/`statusMessage` (a cancel, a stop, a message), and the
    /// run was already going: nothing new runs.
    Nothing,
    /// A pending run is released: it starts now, with the Tasks and Pipelines as they are now
    /// (not as they were when it was created), so every image is checked as on CREATE.
    Everything,
    /// Any other spec change: images the old spec did not run are checked.
    Changed,
}

/// Compares a run's old and new object.
pub fn run_update(old: &Value, new: &Value) -> RunUpdate {
    fn status(object: &Value) -> Option<&str> {
        object.pointer("/spec/status").and_then(Value::as_str)
    }
    let pending = |object: &Value| status(object).is_some_and(|s| PENDING.contains(&s));
    // Released: no status at all (cancelling a pending run starts nothing).
    if pending(old) && status(new).is_none_or(str::is_empty) {
        return RunUpdate::Everything;
    }
    let without_status = |object: &Value| {
        let mut spec = object.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(fields) = spec.as_object_mut() {
            fields.remove("status");
            fields.remove("statusMessage");
        }
        spec
    };
    if without_status(old) == without_status(new) {
        RunUpdate::Nothing
    } else {
        RunUpdate::Changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_runs_update_is_judged_by_what_it_sets_going() {
        let run = |status: Option<&str>, image: &str| {
            let mut spec = json!({"taskSpec": {"steps": [{"name": "build", "image": image}]}});
            if let Some(status) = status {
                spec["status"] = json!(status);
            }
            json!({"kind": "TaskRun", "spec": spec})
        };
        let cases = [
            (
                run(None, "a"),
                run(Some("TaskRunCancelled"), "a"),
                RunUpdate::Nothing,
            ),
            (
                run(Some("PipelineRunPending"), "a"),
                run(Some("Cancelled"), "a"),
                RunUpdate::Nothing,
            ),
            (
                run(Some("TaskRunPending"), "a"),
                run(None, "a"),
                RunUpdate::Everything,
            ),
            (
                run(Some("TaskRunPending"), "a"),
                run(None, "b"),
                RunUpdate::Everything,
            ),
            (
                run(Some("TaskRunPending"), "a"),
                run(Some("TaskRunPending"), "b"),
                RunUpdate::Changed,
            ),
            // StoppedRunFinally runs the finally tasks: a change to them is a change.
            (
                run(None, "a"),
                run(Some("StoppedRunFinally"), "b"),
                RunUpdate::Changed,
            ),
            (run(None, "a"), run(None, "a"), RunUpdate::Nothing),
        ];
        for (old, new, want) in cases {
            assert_eq!(run_update(&old, &new), want, "{old} -> {new}");
        }
    }
}
