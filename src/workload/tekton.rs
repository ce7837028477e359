//! Tekton PipelineRuns and TaskRuns: every image their TaskRun pods will run, and where.
//!
//! A run names its work directly (`pipelineSpec`, `taskSpec`) or by reference (`pipelineRef`,
//! `taskRef`, `steps[].ref`, resolvers); references are read through the [`Catalog`] so this module
//! stays pure. Images come after Tekton's parameter and context substitution (see `params.rs`), and
//! pipeline tasks whose `when` is surely false are skipped as Tekton skips them (see `when.rs`);
//! anything only known at run time is skipped with a warning, because a false denial blocks a build
//! for nothing.
//! Build outputs (kaniko's `IMAGE`) never become targets: only images that run, plus what the user
//! names through the `archgate.io/images` annotation or `ExtractOptions::tekton_image_params`.

mod params;
mod placement;
#[cfg(test)]
mod tests;
pub mod update;
mod when;

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use self::params::{
    Forms, Param, Params, Unsubstituted, context_key, declared_defaults, declared_names, list,
    lookup, overlay, overlay_objects, passed,
};
use self::placement::{Templates, Unplaced};
use super::{
    BundleRef, Catalog, ExtractError, ExtractOptions, Extraction, Location, Placement, Target,
    object_name,
};
use crate::reference::MAX_REFERENCE_BYTES;

/// The run annotation listing extra images to check (comma-separated).
pub const IMAGES_ANNOTATION: &str = "archgate.io/images";

/// Pipelines in pipelines may refer to each other; stop following them this deep.
const MAX_DEPTH: usize = 8;

/// Pipeline tasks (each matrix combination counted, nested pipelines included) one run may expand
/// to; past this the rest is skipped with a warning. Pipelines that refer to each other fan out
/// exponentially within `MAX_DEPTH`, and extraction runs on the request path.
const MAX_TASK_RUNS: usize = 1024;

/// Images one run may name; past this the rest is skipped with a warning (each target is compared
/// with those before it, and every one of them is later resolved).
const MAX_TARGETS: usize = 2048;

/// Pipeline tasks, steps and sidecars one run may visit, whether or not they name an image; past
/// this the rest is skipped with a warning. `MAX_TARGETS` only counts images that could be
/// checked, and a step whose image is unknown or absent costs a visit (and a warning) too: 100,000
/// empty steps fit in 300 KB. Four times the largest real pipeline's count (`MAX_TASK_RUNS` task
/// runs of eight steps).
const MAX_WALK: usize = 1 << 15;

/// Distinct warnings one run keeps; past this one line counts the rest. The policy shows far fewer
/// (`policy::MAX_WARNINGS`) and counts the rest in its own last line; this bound is for memory and
/// for the logs and `archgate check`, which print every warning kept.
const MAX_WARNINGS_KEPT: usize = 256;

/// Why a run (or a resource it refers to) cannot be read: the field path and what is wrong.
#[derive(Debug, Clone, PartialEq)]
struct Bad(String);

/// Targets of a PipelineRun: every step and sidecar of every pipeline task, `finally` included.
pub fn extract_pipeline_run(
    object: &Value,
    catalog: &dyn Catalog,
    options: &ExtractOptions,
) -> Result<Extraction, ExtractError> {
    extract_run("PipelineRun", object, catalog, options, |w, o| {
        w.pipeline_run(o)
    })
}

/// Targets of a TaskRun: its steps and sidecars.
pub fn extract_task_run(
    object: &Value,
    catalog: &dyn Catalog,
    options: &ExtractOptions,
) -> Result<Extraction, ExtractError> {
    extract_run("TaskRun", object, catalog, options, |w, o| w.task_run(o))
}

/// Targets of a Pipeline, Task or StepAction on its own (its params at their defaults), for
/// checking definition files and for proving that a resource can be read at all.
pub fn extract_definition(
    kind: &str,
    object: &Value,
    catalog: &dyn Catalog,
    options: &ExtractOptions,
) -> Result<Extraction, ExtractError> {
    extract_run(kind, object, catalog, options, |walker, object| {
        walker.definition(kind, object)
    })
}

fn extract_run(
    kind: &str,
    object: &Value,
    catalog: &dyn Catalog,
    options: &ExtractOptions,
    walk: impl FnOnce(&mut Walker<'_>, &Value) -> Result<(), Bad>,
) -> Result<Extraction, ExtractError> {
    let error = |reason: String| ExtractError {
        kind: kind.to_string(),
        name: object_name(object),
        reason,
    };
    if !object.is_object() {
        return Err(error("it is not an object".to_string()));
    }
    let namespace = match object.pointer("/metadata/namespace") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(ns)) => ns.clone(),
        Some(_) => return Err(error("metadata.namespace is not a string".to_string())),
    };
    // Only a run's own name is a context value, never a definition's. A run written with only
    // `generateName` has none in a file (`check -f`); the API server names it after mutating and
    // before validating webhooks (kyverno/kyverno#4955), and that name is the one Tekton uses.
    let run_name = matches!(kind, "PipelineRun" | "TaskRun")
        .then(|| object.pointer("/metadata/name").and_then(Value::as_str))
        .flatten()
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut walker = Walker {
        catalog,
        options,
        namespace,
        run_name,
        api_version,
        out: Extraction::default(),
        depth: 0,
        task_runs: 0,
        visits: 0,
        warned: HashSet::new(),
        warnings_dropped: 0,
        long_images: 0,
    };
    walk(&mut walker, object).map_err(|Bad(reason)| error(reason))?;
    Ok(walker.finish())
}

/// What a pipeline task runs.
enum Body {
    Task {
        spec: Value,
        from: Origin,
    },
    Pipeline {
        spec: Value,
        from: Origin,
    },
    /// A custom task, or a reference that could not be followed (already warned about).
    Nothing,
}

/// Where a spec came from: embedded specs see their parent's params (Tekton's propagated params)
/// and their errors are the run's errors; a referenced resource's errors become warnings.
#[derive(Clone, Debug)]
enum Origin {
    Embedded,
    Referenced(String),
}

/// Where a task's pods go and how its images are named.
struct TaskSite<'s> {
    /// `pipeline task "build"` (nested: `pipeline task "outer" pipeline task "inner"`), or empty.
    prefix: &'s str,
    placement: Arc<Placement>,
    /// `$(context.taskRun.*)` values known at admission (see [`Walker::task_context`]).
    context: Params,
}

struct Walker<'a> {
    catalog: &'a dyn Catalog,
    options: &'a ExtractOptions,
    namespace: String,
    /// The run's `metadata.name`, when it has one (not only `generateName`).
    run_name: Option<String>,
    api_version: String,
    out: Extraction,
    depth: usize,
    /// Pipeline tasks expanded so far, against `MAX_TASK_RUNS`.
    task_runs: usize,
    /// Pipeline tasks, steps and sidecars visited so far, against `MAX_WALK`.
    visits: usize,
    /// Every warning in `out.warnings`, to say each once in constant time.
    warned: HashSet<String>,
    /// Warnings past `MAX_WARNINGS_KEPT`, counted in one last line.
    warnings_dropped: usize,
    /// Images over `MAX_REFERENCE_BYTES` met so far; only the first becomes a target.
    long_images: usize,
}

/// What an embedded task spec reads for each param of one combination (`given`: the pipeline
/// task's `params` over the matrix values). Tekton puts the pipeline's params into an embedded
/// spec before it fans the matrix out (pkg/reconciler/pipelinerun/resources/apply.go
/// `propagateParams`, from `ApplyParameters`), letting only the pipeline task's own `params`
/// override them; so where the pipeline has a string param of a matrix param's name, every
/// TaskRun's spec already holds the pipeline's value, declared in the spec or not. An array or
/// object pipeline param is replaced only in its `[*]`, `[i]` and `.key` forms, leaving
/// `$(params.name)` for the TaskRun's (matrix) value.
fn propagated_over_matrix(pipeline: &Params, explicit: &Params, mut given: Params) -> Params {
    let shadowed: Vec<(String, Param)> = given
        .keys()
        .filter(|name| !explicit.contains_key(*name))
        .filter_map(|name| match lookup(pipeline, name) {
            Some(Param::Known(Value::Array(_) | Value::Object(_))) | None => None,
            Some(value) => Some((name.clone(), value.clone())),
        })
        .collect();
    given.extend(shadowed);
    given
}

impl Walker<'_> {
    fn pipeline_run(&mut self, object: &Value) -> Result<(), Bad> {
        let spec = spec_of(object, "spec")?;
        let run_scope = passed(spec.get("params"), &Params::new(), "spec.params")?;
        let templates = Templates::of_pipeline_run(spec, &self.api_version)?;
        validate_templates(&templates, spec)?;
        let body = if let Some(pipeline) = spec.get("pipelineSpec").filter(|v| !v.is_null()) {
            Body::Pipeline {
                spec: pipeline.clone(),
                from: Origin::Embedded,
            }
        } else if let Some(reference) = spec.get("pipelineRef").filter(|v| !v.is_null()) {
            self.resolve_body(reference, "Pipeline", "", &run_scope, "spec.pipelineRef")?
        } else {
            return Err(Bad("spec has neither pipelineRef nor pipelineSpec".into()));
        };
        if let Body::Pipeline {
            spec: pipeline,
            from,
        } = body
        {
            let result = self.walk_pipeline(&pipeline, &run_scope, "", Some(&templates));
            self.contain(result, &from, "")?;
        }
        match templates.placement(None, &run_scope) {
            Ok(placement) => self.annotation_targets(object, Arc::new(placement)),
            Err(unplaced) => self.unplaced(unplaced, "annotation images")?,
        }
        Ok(())
    }

    fn task_run(&mut self, object: &Value) -> Result<(), Bad> {
        let spec = spec_of(object, "spec")?;
        let run_scope = passed(spec.get("params"), &Params::new(), "spec.params")?;
        let placement = match Templates::of_task_run(spec)?.placement(None, &run_scope) {
            Ok(placement) => Arc::new(placement),
            Err(unplaced) => return self.unplaced(unplaced, "its images"),
        };
        let body = if let Some(task) = spec.get("taskSpec").filter(|v| !v.is_null()) {
            // A TaskRun's `taskSpec` is a plain TaskSpec: it has no apiVersion or kind to make it
            // a custom task.
            embedded_task(task, "spec.taskSpec", false)?
        } else if let Some(reference) = spec.get("taskRef").filter(|v| !v.is_null()) {
            self.task_ref_body(reference, "", &run_scope, "spec.taskRef")?
        } else {
            return Err(Bad("spec has neither taskRef nor taskSpec".into()));
        };
        if let Body::Task { spec: task, from } = &body {
            let site = TaskSite {
                prefix: "",
                placement: placement.clone(),
                context: self.task_context(self.run_name.clone()),
            };
            let result = self.run_task(task, &run_scope, &run_scope, &site, from);
            self.contain(result, from, "")?;
        } else {
            self.image_params("", run_scope.keys(), &run_scope, &placement);
        }
        self.annotation_targets(object, placement);
        Ok(())
    }

    fn definition(&mut self, kind: &str, object: &Value) -> Result<(), Bad> {
        let spec = spec_of(object, "spec")?;
        let site = TaskSite {
            prefix: "",
            placement: Arc::new(Placement::default()),
            context: Params::new(),
        };
        let none = Params::new();
        match kind.to_ascii_lowercase().as_str() {
            "pipeline" => self.walk_pipeline(spec, &none, "", None),
            "task" | "clustertask" => self.run_task(spec, &none, &none, &site, &Origin::Embedded),
            "stepaction" => {
                let scope = declared_defaults(spec.get("params"), &none, "spec.params")?;
                let image = string_field(spec, "image", "spec")?;
                if let Some(image) = image {
                    self.target(&site, "image", "", image, &scope);
                }
                Ok(())
            }
            _ => Err(Bad(format!(
                "{kind} is not a Tekton Pipeline, Task or StepAction"
            ))),
        }
    }

    /// A run's own errors stop extraction; a referenced resource's become a warning, because the
    /// run itself is fine and Tekton will report the broken resource when it runs.
    fn contain(&mut self, result: Result<(), Bad>, from: &Origin, at: &str) -> Result<(), Bad> {
        match (result, from) {
            (Err(Bad(reason)), Origin::Referenced(what)) => {
                self.warn(
                    at,
                    &format!("{what} cannot be read ({reason}), not checked"),
                );
                Ok(())
            }
            (result, _) => result,
        }
    }

    fn unplaced(&mut self, unplaced: Unplaced, what: &str) -> Result<(), Bad> {
        match unplaced {
            Unplaced::Unknown(expr) => {
                self.warn("", &format!("pod template uses {expr}, {what} not checked"));
                Ok(())
            }
            Unplaced::Bad(bad) => Err(bad),
        }
    }

    /// Every pipeline task of a pipeline spec, `finally` included; `scope` is what the pipeline
    /// was given (run params, or a pipeline task's params for a nested pipeline).
    fn walk_pipeline(
        &mut self,
        spec: &Value,
        given: &Params,
        prefix: &str,
        templates: Option<&Templates>,
    ) -> Result<(), Bad> {
        if !spec.is_object() {
            return Err(Bad("the pipeline spec is not an object".into()));
        }
        // A run's pipeline sees `$(context.pipelineRun.*)` (Tekton's `ApplyContexts` over the whole
        // pipeline spec, embedded task specs included); a pipeline nested in it runs as a child
        // PipelineRun of another name.
        let context = if self.depth == 0 {
            self.pipeline_context()
        } else {
            Params::new()
        };
        let given = overlay(given, &context);
        let defaults = declared_defaults(spec.get("params"), &given, "params")?;
        let scope = overlay(&defaults, &given);
        for field in ["tasks", "finally"] {
            for (i, task) in list(spec.get(field), field)?.iter().enumerate() {
                self.walk_pipeline_task(task, &scope, prefix, templates, &format!("{field}[{i}]"))?;
            }
        }
        Ok(())
    }

    /// One pipeline task, once per matrix combination (combinations may differ in image or node).
    fn walk_pipeline_task(
        &mut self,
        task: &Value,
        pipeline_scope: &Params,
        prefix: &str,
        templates: Option<&Templates>,
        path: &str,
    ) -> Result<(), Bad> {
        if !self.visit() {
            return Ok(());
        }
        let name = match task.get("name") {
            Some(Value::String(name)) => name.as_str(),
            _ => return Err(Bad(format!("{path}.name is missing or not a string"))),
        };
        // A task whose `when` is surely false never runs, and neither do its images; the tasks
        // after it still run (Tekton's `skipBecauseParentTaskWasSkipped` ignores `when` skips).
        if when::surely_skipped(task.get("when"), pipeline_scope, &format!("{path}.when"))? {
            return Ok(());
        }
        if !self.spend_task_run() {
            return Ok(());
        }
        let at = join(prefix, &format!("pipeline task {name:?}"));
        let explicit = passed(
            task.get("params"),
            pipeline_scope,
            &format!("{path}.params"),
        )?;
        let combos = params::matrix_combinations(
            task.get("matrix"),
            pipeline_scope,
            &format!("{path}.matrix"),
        )?;
        let ref_scope = overlay(pipeline_scope, &explicit);
        let body = self.pipeline_task_body(task, &at, &ref_scope, path)?;
        // Only the run's own pipeline tasks have taskRunSpecs; nested pipelines get the run default.
        let own_template = prefix.is_empty().then_some(name);
        let count = combos.len();
        for (i, combo) in combos.into_iter().enumerate() {
            if i > 0 && !self.spend_task_run() {
                return Ok(());
            }
            let given = overlay(&explicit, &combo);
            let visible = overlay(pipeline_scope, &given);
            let placement = match templates.map(|t| t.placement(own_template, &visible)) {
                None => Placement::default(),
                Some(Ok(placement)) => placement,
                Some(Err(Unplaced::Unknown(expr))) => {
                    self.warn(
                        &at,
                        &format!("pod template uses {expr}, images not checked"),
                    );
                    continue;
                }
                Some(Err(Unplaced::Bad(bad))) => return Err(bad),
            };
            let task_run = own_template.and_then(|task| self.task_run_name(task, i, count));
            let site = TaskSite {
                prefix: &at,
                placement: Arc::new(placement),
                context: self.task_context(task_run),
            };
            let given = match &body {
                Body::Task {
                    from: Origin::Embedded,
                    ..
                } => propagated_over_matrix(pipeline_scope, &explicit, given),
                _ => given,
            };
            self.run_body(&body, pipeline_scope, &given, &site, templates)?;
        }
        Ok(())
    }

    /// `$(context.pipelineRun.name|namespace)` where known: the name only when the run has a fixed
    /// `metadata.name`, the namespace whenever the object or request names it.
    fn pipeline_context(&self) -> Params {
        self.context("pipelineRun", self.run_name.clone())
    }

    /// `$(context.taskRun.name|namespace)` of a TaskRun named `name` (when known).
    fn task_context(&self, name: Option<String>) -> Params {
        self.context("taskRun", name)
    }

    fn context(&self, run: &str, name: Option<String>) -> Params {
        let known = [
            ("name", name),
            (
                "namespace",
                Some(self.namespace.clone()).filter(|n| !n.is_empty()),
            ),
        ];
        known
            .into_iter()
            .filter_map(|(field, value)| {
                let key = context_key(&format!("context.{run}.{field}"));
                value.map(|v| (key, Param::Known(Value::String(v))))
            })
            .collect()
    }

    /// The name Tekton gives the TaskRun of pipeline task `task` (combination `index` of
    /// `count`): `<run>-<task>`, or `<run>-<task>-<index>` for a matrix of several
    /// (pkg/reconciler/pipelinerun/resources/pipelinerunresolution.go `getNewRunNames`). Past 63
    /// characters knative's `ChildName` shortens it with a hash: left unknown here.
    fn task_run_name(&self, task: &str, index: usize, count: usize) -> Option<String> {
        let run = self.run_name.as_deref()?;
        let name = if count == 1 {
            format!("{run}-{task}")
        } else {
            format!("{run}-{task}-{index}")
        };
        (name.len() <= 63).then_some(name)
    }

    /// Counts one more pipeline task run; `false` (said once, as a warning) past `MAX_TASK_RUNS`.
    fn spend_task_run(&mut self) -> bool {
        if self.is_full() {
            return false;
        }
        if self.task_runs == MAX_TASK_RUNS {
            self.task_runs += 1;
            self.stop_short(&format!(
                "the run expands to more than {MAX_TASK_RUNS} task runs, the rest were not checked"
            ));
        }
        if self.task_runs > MAX_TASK_RUNS {
            return false;
        }
        self.task_runs += 1;
        true
    }

    /// `MAX_TARGETS` or `MAX_WALK` reached (and said, as a warning): nothing more is walked.
    fn is_full(&self) -> bool {
        self.out.targets.len() >= MAX_TARGETS || self.visits > MAX_WALK
    }

    /// Counts one more pipeline task, step or sidecar; `false` (said once, as a warning) past
    /// `MAX_WALK` or when the walk is otherwise full.
    fn visit(&mut self) -> bool {
        if self.is_full() {
            return false;
        }
        self.visits += 1;
        if self.visits > MAX_WALK {
            self.stop_short(&format!(
                "the run has more than {MAX_WALK} pipeline tasks, steps and sidecars to walk, the rest were not checked"
            ));
            return false;
        }
        true
    }

    fn run_body(
        &mut self,
        body: &Body,
        outer: &Params,
        given: &Params,
        site: &TaskSite<'_>,
        templates: Option<&Templates>,
    ) -> Result<(), Bad> {
        match body {
            Body::Task { spec, from } => {
                let result = self.run_task(spec, outer, given, site, from);
                self.contain(result, from, site.prefix)
            }
            Body::Pipeline { spec, from } => {
                if self.depth >= MAX_DEPTH {
                    self.warn(
                        site.prefix,
                        "pipelines nest too deep, inner pipeline not checked",
                    );
                    return Ok(());
                }
                self.depth += 1;
                let inner = match from {
                    Origin::Embedded => overlay(outer, given),
                    Origin::Referenced(_) => given.clone(),
                };
                let result = self.walk_pipeline(spec, &inner, site.prefix, templates);
                self.depth -= 1;
                self.contain(result, from, site.prefix)
            }
            Body::Nothing => {
                self.image_params(site.prefix, given.keys(), given, &site.placement);
                Ok(())
            }
        }
    }

    /// A task spec's params (defaults < propagated outer params for embedded specs < given), its
    /// image params, then its steps and sidecars.
    fn run_task(
        &mut self,
        spec: &Value,
        outer: &Params,
        given: &Params,
        site: &TaskSite<'_>,
        from: &Origin,
    ) -> Result<(), Bad> {
        if !spec.is_object() {
            return Err(Bad("the task spec is not an object".into()));
        }
        // Task defaults see the other defaults, not the TaskRun's values (module docs of `params`).
        let defaults = declared_defaults(spec.get("params"), &site.context, "params")?;
        let scope = match from {
            Origin::Embedded => overlay_objects(&overlay(&defaults, outer), given),
            Origin::Referenced(_) => overlay_objects(&defaults, given),
        };
        let scope = overlay(&scope, &site.context);
        let mut names = declared_names(spec.get("params"), "params")?;
        names.extend(given.keys().cloned());
        self.image_params(site.prefix, names.iter(), &scope, &site.placement);
        self.walk_task(spec, &scope, site)
    }

    fn pipeline_task_body(
        &mut self,
        task: &Value,
        at: &str,
        scope: &Params,
        path: &str,
    ) -> Result<Body, Bad> {
        let field = |name: &str| task.get(name).filter(|v| !v.is_null());
        if let Some(spec) = field("taskSpec") {
            embedded_task(spec, &format!("{path}.taskSpec"), true)
        } else if let Some(reference) = field("taskRef") {
            if is_custom_task(reference) {
                return Ok(Body::Nothing);
            }
            self.task_ref_body(reference, at, scope, &format!("{path}.taskRef"))
        } else if let Some(spec) = field("pipelineSpec") {
            Ok(Body::Pipeline {
                spec: spec.clone(),
                from: Origin::Embedded,
            })
        } else if let Some(reference) = field("pipelineRef") {
            self.resolve_body(
                reference,
                "Pipeline",
                at,
                scope,
                &format!("{path}.pipelineRef"),
            )
        } else {
            Err(Bad(format!(
                "{path} has no taskRef, taskSpec, pipelineRef or pipelineSpec"
            )))
        }
    }

    fn task_ref_body(
        &mut self,
        reference: &Value,
        at: &str,
        scope: &Params,
        path: &str,
    ) -> Result<Body, Bad> {
        if !reference.is_object() {
            return Err(Bad(format!("{path} is not an object")));
        }
        // Tekton v1.0 removed ClusterTasks and since then looks a `taskRef` up as a Task whatever
        // its kind; v0.x still reads `kind: ClusterTask` (pkg/reconciler/taskrun/resources/
        // taskref.go `LocalTaskRefResolver.GetTask`, before and after "remove deprecated
        // clustertask source"), so that one kind is still followed.
        let cluster_task = reference
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.eq_ignore_ascii_case("ClusterTask"));
        let kind = if cluster_task { "ClusterTask" } else { "Task" };
        self.resolve_body(reference, kind, at, scope, path)
    }

    fn resolve_body(
        &mut self,
        reference: &Value,
        kind: &str,
        at: &str,
        scope: &Params,
        path: &str,
    ) -> Result<Body, Bad> {
        let Some((label, object)) = self.resolve(reference, kind, at, scope, path)? else {
            return Ok(Body::Nothing);
        };
        let Some(spec) = object.get("spec").filter(|s| s.is_object()).cloned() else {
            self.warn(at, &format!("{label} has no spec, not checked"));
            return Ok(Body::Nothing);
        };
        let from = Origin::Referenced(label);
        Ok(match kind {
            "Pipeline" => Body::Pipeline { spec, from },
            _ => Body::Task { spec, from },
        })
    }

    /// Follow a reference through the catalog: `(label for messages, the resource)`, or `None`
    /// after saying why it could not be followed.
    fn resolve(
        &mut self,
        reference: &Value,
        kind: &str,
        at: &str,
        scope: &Params,
        path: &str,
    ) -> Result<Option<(String, Value)>, Bad> {
        if !reference.is_object() {
            return Err(Bad(format!("{path} is not an object")));
        }
        let name = string_field(reference, "name", path)?;
        if let Some(resolver) = string_field(reference, "resolver", path)? {
            let given = passed(reference.get("params"), scope, &format!("{path}.params"))?;
            return Ok(self.resolve_remote(resolver, &given, kind, at));
        }
        if let Some(bundle) = string_field(reference, "bundle", path)? {
            // v1beta1's `bundle` field, before the bundles resolver replaced it.
            let name = name.unwrap_or_default();
            return Ok(self.bundle(bundle, kind, name, at));
        }
        let Some(name) = name else {
            return Err(Bad(format!("{path} has neither name nor resolver")));
        };
        Ok(self.lookup(kind, &self.namespace.clone(), name, at))
    }

    fn lookup(
        &mut self,
        kind: &str,
        namespace: &str,
        name: &str,
        at: &str,
    ) -> Option<(String, Value)> {
        let label = format!("{kind} {name:?}");
        match self.catalog.get(kind, namespace, name) {
            Some(object) => Some((label, object)),
            None => {
                self.warn(
                    at,
                    &format!("{label} was not found, its images were not checked"),
                );
                None
            }
        }
    }

    fn bundle(
        &mut self,
        bundle: &str,
        kind: &str,
        name: &str,
        at: &str,
    ) -> Option<(String, Value)> {
        let reference = BundleRef {
            bundle: bundle.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
        };
        if let Some(object) = self.catalog.bundle(&reference) {
            return Some((format!("{kind} {name:?} from bundle {bundle}"), object));
        }
        if name.is_empty() || bundle.is_empty() {
            self.warn(
                at,
                "a bundle reference lacks its bundle or name, not checked",
            );
        } else if !self.out.unresolved_bundles.contains(&reference) {
            // The caller fetches the bundle and extracts again; no warning until it has tried.
            self.out.unresolved_bundles.push(reference);
        }
        None
    }

    /// `resolver: cluster` and `resolver: bundles` can be read at admission; the others cannot.
    fn resolve_remote(
        &mut self,
        resolver: &str,
        given: &Params,
        kind: &str,
        at: &str,
    ) -> Option<(String, Value)> {
        let text = |key: &str| match lookup(given, key) {
            Some(Param::Known(Value::String(s))) => Ok(Some(s.clone())),
            Some(Param::Unknown(expr)) => Err(expr.clone()),
            _ => Ok(None),
        };
        let words = kind_word(kind);
        let fields = (
            text("kind"),
            text("name"),
            text("namespace"),
            text("bundle"),
        );
        let (kind_param, name, namespace, bundle) = match fields {
            (Ok(k), Ok(n), Ok(ns), Ok(b)) => (k, n, ns, b),
            (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
                self.warn(
                    at,
                    &format!("{words} from the {resolver} resolver uses {e}, not checked"),
                );
                return None;
            }
        };
        let kind = kind_param.map_or(kind.to_string(), |k| normalise_kind(&k));
        match (resolver, name) {
            ("cluster", Some(name)) => {
                // Without the param Tekton takes its resolver config's `default-namespace` (and
                // fails the run without one), never the run's namespace
                // (pkg/resolution/resolver/cluster/resolver.go, `populateParamsWithDefaults`).
                let Some(namespace) = namespace.filter(|ns| !ns.trim().is_empty()) else {
                    let message = format!(
                        "{words} {name:?} from the cluster resolver names no namespace (Tekton's resolver config decides it), not checked"
                    );
                    self.warn(at, &message);
                    return None;
                };
                self.lookup(&kind, &namespace, &name, at)
            }
            ("bundles", Some(name)) => self.bundle(&bundle.unwrap_or_default(), &kind, &name, at),
            _ => {
                let what = ["name", "pathInRepo", "url", "pipeline", "task"]
                    .into_iter()
                    .find_map(|key| text(key).ok().flatten())
                    .map(|w| format!(" {w:?}"))
                    .unwrap_or_default();
                let message = format!("{words}{what} from the {resolver} resolver was not checked");
                self.warn(at, &message);
                None
            }
        }
    }

    /// Steps (a step without `image` takes `stepTemplate.image`) and sidecars of a task spec.
    fn walk_task(&mut self, spec: &Value, scope: &Params, site: &TaskSite<'_>) -> Result<(), Bad> {
        let template = match spec.get("stepTemplate").filter(|v| !v.is_null()) {
            Some(t) if t.is_object() => string_field(t, "image", "stepTemplate")?,
            Some(_) => return Err(Bad("stepTemplate is not an object".into())),
            None => None,
        };
        for (i, step) in list(spec.get("steps"), "steps")?.iter().enumerate() {
            if !self.visit() {
                return Ok(());
            }
            let path = format!("steps[{i}]");
            let (label, container) = container_label("step", step, i, &path)?;
            if let Some(reference) = step.get("ref").filter(|v| !v.is_null()) {
                self.step_action(reference, step, scope, site, &label, &container, &path)?;
            } else if let Some(image) = string_field(step, "image", &path)?
                // An empty image is no image: Tekton's merge with the template skips it (omitempty).
                .filter(|image| !image.is_empty())
                .or(template)
            {
                self.target(site, &label, &container, image, scope);
            }
        }
        for (i, sidecar) in list(spec.get("sidecars"), "sidecars")?.iter().enumerate() {
            if !self.visit() {
                return Ok(());
            }
            let path = format!("sidecars[{i}]");
            let (label, container) = container_label("sidecar", sidecar, i, &path)?;
            if let Some(image) = string_field(sidecar, "image", &path)? {
                self.target(site, &label, &container, image, scope);
            }
        }
        Ok(())
    }

    /// A step that runs a StepAction: the action's image, substituted with its own params
    /// (defaults < `step.params`, whose values may use the task's params).
    #[allow(clippy::too_many_arguments)]
    fn step_action(
        &mut self,
        reference: &Value,
        step: &Value,
        task_scope: &Params,
        site: &TaskSite<'_>,
        label: &str,
        container: &str,
        path: &str,
    ) -> Result<(), Bad> {
        let given = passed(step.get("params"), task_scope, &format!("{path}.params"))?;
        let at = join(site.prefix, label);
        let ref_path = format!("{path}.ref");
        let Some((what, action)) =
            self.resolve(reference, "StepAction", &at, task_scope, &ref_path)?
        else {
            return Ok(());
        };
        let read = |action: &Value| -> Result<(Params, Option<String>), Bad> {
            let spec = spec_of(action, "spec")?;
            let refs = overlay(&given, &site.context);
            let defaults = declared_defaults(spec.get("params"), &refs, "spec.params")?;
            let image = string_field(spec, "image", "spec")?.map(str::to_string);
            Ok((
                overlay(&overlay_objects(&defaults, &given), &site.context),
                image,
            ))
        };
        match read(&action) {
            Ok((scope, Some(image))) => self.target(site, label, container, &image, &scope),
            Ok((_, None)) => self.warn(&at, &format!("{what} has no image, not checked")),
            Err(Bad(reason)) => self.warn(
                &at,
                &format!("{what} cannot be read ({reason}), not checked"),
            ),
        }
        Ok(())
    }

    /// One image to check, after substitution; skipped with a warning when it cannot be known.
    fn target(
        &mut self,
        site: &TaskSite<'_>,
        label: &str,
        container: &str,
        raw: &str,
        scope: &Params,
    ) {
        let at = join(site.prefix, label);
        // A template's image is inherited by every step: a long one is never copied per step.
        if raw.len() > MAX_REFERENCE_BYTES {
            return self.long_image(at, container, raw, &site.placement);
        }
        let substituted =
            params::substitute_within(raw, scope, Forms::Lenient, MAX_REFERENCE_BYTES);
        match substituted {
            Ok(image) if image.len() > MAX_REFERENCE_BYTES => {
                self.long_image(at, container, &image, &site.placement);
            }
            Err(Unsubstituted::TooLong { partial, .. }) => {
                self.long_image(at, container, &partial, &site.placement);
            }
            Ok(image) if image.contains("$(") => {
                self.warn(
                    &at,
                    &format!("image {image:?} is only known at run time, not checked"),
                );
            }
            Ok(image) if image.trim().is_empty() => {
                self.warn(
                    &at,
                    &format!("image {raw:?} is empty after substitution, not checked"),
                );
            }
            Ok(image) => self.push(at, container, image, site.placement.clone()),
            Err(Unsubstituted::Unknown(expr)) => {
                self.warn(
                    &at,
                    &format!("image not checked: {expr} is unknown at admission"),
                );
            }
        }
    }

    /// An image longer than any valid reference: no registry can be asked for it, so it goes to
    /// the policy as written, where it is an invalid reference like any other (denied in enforce
    /// mode). Only the first becomes a target: one step template's image is inherited by every
    /// step, and a copy per step was the whole 4 MiB body many times over (128 KiB x 2048 steps
    /// was 256 MiB). The rest are counted in one warning.
    fn long_image(&mut self, at: String, container: &str, image: &str, placement: &Arc<Placement>) {
        self.long_images += 1;
        if self.long_images == 1 {
            self.push(at, container, image.to_string(), placement.clone());
        }
    }

    /// Params the operator listed as images (`tekton_image_params`), among `names`.
    fn image_params<'n>(
        &mut self,
        prefix: &str,
        names: impl Iterator<Item = &'n String>,
        scope: &Params,
        placement: &Arc<Placement>,
    ) {
        let mut names: Vec<&String> = names
            .filter(|n| self.options.tekton_image_params.contains(n))
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let at = join(prefix, &format!("param {name:?}"));
            match lookup(scope, name) {
                Some(Param::Known(Value::String(image))) => self.image(&at, image, placement),
                Some(Param::Known(Value::Array(images))) => {
                    for image in images.iter().filter_map(Value::as_str) {
                        self.image(&at, image, placement);
                    }
                }
                Some(Param::Unknown(expr)) => {
                    self.warn(
                        &at,
                        &format!("image not checked: {expr} is unknown at admission"),
                    );
                }
                // No value at all (declared without default, or an object): nothing runs from it.
                _ => {}
            }
        }
    }

    /// Images named in the run's `archgate.io/images` annotation.
    fn annotation_targets(&mut self, object: &Value, placement: Arc<Placement>) {
        let Some(list) = object
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(IMAGES_ANNOTATION))
            .and_then(Value::as_str)
        else {
            return;
        };
        let at = format!("annotation {IMAGES_ANNOTATION:?}");
        for image in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            self.image(&at, image, &placement);
        }
    }

    /// An image given as a value (param, annotation): it must already be a plain reference.
    fn image(&mut self, at: &str, image: &str, placement: &Arc<Placement>) {
        // A param holds up to 16 KiB, and its images are named again for every task run.
        if image.len() > MAX_REFERENCE_BYTES {
            self.long_image(at.to_string(), "", image, placement);
        } else if image.contains("$(") {
            self.warn(
                at,
                &format!("image {image:?} is only known at run time, not checked"),
            );
        } else if !image.trim().is_empty() {
            self.push(at.to_string(), "", image.to_string(), placement.clone());
        }
    }

    fn push(&mut self, scope: String, container: &str, image: String, placement: Arc<Placement>) {
        if self.is_full() {
            return;
        }
        let duplicate =
            self.out.targets.iter().any(|t| {
                t.location.scope == scope && t.image == image && *t.placement == *placement
            });
        if duplicate {
            return;
        }
        self.out.targets.push(Target {
            location: Location {
                object: None,
                container: container.to_string(),
                scope,
            },
            image,
            placement,
            known_platforms: None,
        });
        if self.out.targets.len() >= MAX_TARGETS {
            self.stop_short(&format!(
                "the run names more than {MAX_TARGETS} images, the rest were not checked"
            ));
        }
    }

    /// A warning for `kubectl`: prefixed with where it applies, once.
    fn warn(&mut self, at: &str, message: &str) {
        let text = if at.is_empty() {
            message.to_string()
        } else {
            format!("{at}: {message}")
        };
        // Fitting it into the API server's warning budget is the policy's job (`policy::clip`).
        if self.warned.contains(&text) {
            return;
        }
        if self.out.warnings.len() >= MAX_WARNINGS_KEPT {
            self.warnings_dropped += 1;
            return;
        }
        self.warned.insert(text.clone());
        self.out.warnings.push(text);
    }

    /// The walk stopped short at a bound: not a warning but what was left unchecked
    /// (`Extraction::incomplete`), which `--on-registry-error deny` denies; padding a run past a
    /// bound must not smuggle an image through. Said at most once per bound.
    fn stop_short(&mut self, message: &str) {
        if self.warned.insert(message.to_string()) {
            self.out.incomplete.push(message.to_string());
        }
    }

    fn finish(mut self) -> Extraction {
        if self.long_images > 1 {
            let more = self.long_images - 1;
            self.warn(
                "",
                &format!(
                    "{more} more images longer than {MAX_REFERENCE_BYTES} bytes were not checked"
                ),
            );
        }
        if self.warnings_dropped > 0 {
            let more = self.warnings_dropped;
            self.out.warnings.push(format!(
                "… and {more} more warnings about this run were not kept"
            ));
        }
        self.out
    }
}

/// The run's pod templates belong to the run: reject malformed ones now, whatever task they
/// name, so that a broken template is never mistaken for a broken referenced resource.
fn validate_templates(templates: &Templates, spec: &Value) -> Result<(), Bad> {
    let names = list(spec.get("taskRunSpecs"), "spec.taskRunSpecs")?
        .iter()
        .filter_map(|s| s.get("pipelineTaskName").and_then(Value::as_str));
    for name in std::iter::once(None).chain(names.map(Some)) {
        if let Err(Unplaced::Bad(bad)) = templates.placement(name, &Params::new()) {
            return Err(bad);
        }
    }
    Ok(())
}

fn embedded_task(spec: &Value, path: &str, may_be_custom: bool) -> Result<Body, Bad> {
    if !spec.is_object() {
        return Err(Bad(format!("{path} is not an object")));
    }
    // An embedded custom task carries its own apiVersion and kind; its controller runs no steps.
    if may_be_custom && is_custom_task(spec) {
        return Ok(Body::Nothing);
    }
    Ok(Body::Task {
        spec: spec.clone(),
        from: Origin::Embedded,
    })
}

/// A pipeline task's `taskRef` or embedded `taskSpec` is a custom task, run by its own controller
/// with no steps, when it names both an `apiVersion` and a `kind`, whatever they say (Tekton's
/// `TaskRef.IsCustomTask` and `EmbeddedTask.IsCustomTask`, pkg/apis/pipeline/v1; even
/// `tekton.dev/v1` `Task` counts, tektoncd/pipeline#6457). A TaskRun's `taskRef` never is: its
/// reconciler looks the name up as a Task (see [`Walker::task_ref_body`]).
fn is_custom_task(reference: &Value) -> bool {
    let named = |key: &str| {
        reference
            .get(key)
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
    };
    named("apiVersion") && named("kind")
}

/// Resolver params spell kinds in lower case (`task`, `pipeline`, `stepaction`).
fn normalise_kind(kind: &str) -> String {
    match kind.to_ascii_lowercase().as_str() {
        "task" => "Task".into(),
        "pipeline" => "Pipeline".into(),
        "stepaction" => "StepAction".into(),
        "clustertask" => "ClusterTask".into(),
        _ => kind.to_string(),
    }
}

fn kind_word(kind: &str) -> &'static str {
    match kind {
        "Pipeline" => "pipeline",
        "StepAction" => "step action",
        _ => "task",
    }
}

/// `step "build"` / `step #2` (1-based, as users count) and the container name Tekton gives it.
fn container_label(
    word: &str,
    item: &Value,
    index: usize,
    path: &str,
) -> Result<(String, String), Bad> {
    if !item.is_object() {
        return Err(Bad(format!("{path} is not an object")));
    }
    Ok(
        match string_field(item, "name", path)?.filter(|n| !n.is_empty()) {
            Some(name) => (format!("{word} {name:?}"), name.to_string()),
            None => (format!("{word} #{}", index + 1), format!("unnamed-{index}")),
        },
    )
}

fn spec_of<'v>(object: &'v Value, path: &str) -> Result<&'v Value, Bad> {
    match object.get("spec") {
        Some(spec) if spec.is_object() => Ok(spec),
        Some(_) => Err(Bad(format!("{path} is not an object"))),
        None => Err(Bad(format!("it has no {path}"))),
    }
}

/// An optional string field; any other type is bad input.
fn string_field<'v>(object: &'v Value, key: &str, path: &str) -> Result<Option<&'v str>, Bad> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Bad(format!("{path}.{key} is not a string"))),
    }
}

fn join(prefix: &str, label: &str) -> String {
    if prefix.is_empty() {
        label.to_string()
    } else {
        format!("{prefix} {label}")
    }
}
