//! Tekton PipelineRuns and TaskRuns (and the Pipelines, Tasks and StepActions they refer to) as
//! arbitrary JSON.
//!
//! The input is one JSON object: the run, or the definition. Resources listed under the extra
//! top-level key `x-catalog` stand in for the cluster's catalog (looked up by kind and name, and as
//! bundle contents), so references, nesting and the depth limit are exercised too.
//!
//! Run with: cargo fuzz run -s none -a tekton_run fuzz/corpus/tekton_run fuzz/seeds/tekton_run
#![no_main]

use archgate::workload::tekton::{extract_definition, extract_pipeline_run, extract_task_run};
use archgate::workload::{BundleRef, Catalog, ExtractError, ExtractOptions, Extraction};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Extraction's warnings are whole sentences (the policy fits them into kubectl's budget); what
/// must hold is that they do not grow past what the input gave them to quote.
const WARNING_SLACK: usize = 1024;

struct Listed<'a>(&'a [Value]);

impl Listed<'_> {
    fn find(&self, kind: &str, name: &str) -> Option<Value> {
        self.0
            .iter()
            .find(|r| {
                r["kind"].as_str() == Some(kind) && r["metadata"]["name"].as_str() == Some(name)
            })
            .cloned()
    }
}

impl Catalog for Listed<'_> {
    fn get(&self, kind: &str, _namespace: &str, name: &str) -> Option<Value> {
        self.find(kind, name)
    }

    fn bundle(&self, reference: &BundleRef) -> Option<Value> {
        self.find(&reference.kind, &reference.name)
    }
}

fuzz_target!(|data: &[u8]| {
    // Nested pipelines repeat their task prefixes (at most eight deep): linear in the input,
    // never exponential.
    let bound = 16 * data.len() + WARNING_SLACK;
    let Ok(object) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let listed = object
        .get("x-catalog")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let catalog = Listed(listed);
    let options = ExtractOptions {
        tekton_image_params: vec!["IMAGE".into(), "BASE_IMAGE".into(), "builderImage".into()],
        ..ExtractOptions::default()
    };
    check(extract_pipeline_run(&object, &catalog, &options), bound);
    check(extract_task_run(&object, &catalog, &options), bound);
    check(
        extract_pipeline_run(
            &object,
            &archgate::workload::EmptyCatalog,
            &Default::default(),
        ),
        bound,
    );
    check(
        extract_task_run(
            &object,
            &archgate::workload::EmptyCatalog,
            &Default::default(),
        ),
        bound,
    );
    if let Some(kind @ ("Pipeline" | "Task" | "ClusterTask" | "StepAction")) =
        object["kind"].as_str()
    {
        check(extract_definition(kind, &object, &catalog, &options), bound);
    }
});

fn check(result: Result<Extraction, ExtractError>, bound: usize) {
    match result {
        Ok(extraction) => {
            for warning in &extraction.warnings {
                assert!(
                    warning.len() <= bound,
                    "warning of {} bytes from {bound} bytes of input: {warning:?}",
                    warning.len()
                );
            }
            for target in &extraction.targets {
                let _ = target.location.to_string();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
