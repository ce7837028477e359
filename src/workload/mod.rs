//! Extraction: which images an object will run, where each will run, and how to name it.
//!
//! Pure functions over the object's JSON; nothing here knows about registries. A new object kind
//! is a new extractor and nothing else changes.

pub mod dockerfile;
pub mod pod;
pub mod tekton;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{NodeSelector, Toleration};
use serde_json::Value;

use crate::platform::Platform;
use crate::subject::Kind;

/// One image that must run on some platforms: the unit the policy decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub location: Location,
    /// The image exactly as written in the object (after Tekton parameter substitution).
    pub image: String,
    /// Where the pod that runs this image may be scheduled.
    pub placement: Arc<Placement>,
    /// Platforms already known without asking a registry (Tekton's `TEKTON_PLATFORM_COMMANDS`).
    pub known_platforms: Option<Vec<Platform>>,
}

/// How a finding names the place an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// The enclosing object when it is not the pod itself: `Deployment web`, `PipelineRun build-x`.
    pub object: Option<String>,
    /// The container's (or step's) name.
    pub container: String,
    /// The path within the object as users say it: `container "app"`,
    /// `pipeline task "build" step "kaniko"`.
    pub scope: String,
}

impl Location {
    /// A container of a pod or pod template.
    pub fn container(object: Option<String>, name: &str) -> Self {
        Self {
            object,
            container: name.to_string(),
            scope: container_scope(name),
        }
    }
}

/// `container "name"`, as `format!("container {name:?}")` writes it. A name the API server
/// accepts is a DNS label, which needs no escaping; `Debug` escaped it char by char on every
/// review (1 % of a warm one, BENCHMARKS.md "Sixth pass").
fn container_scope(name: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    if name.bytes().all(plain) {
        ["container \"", name, "\""].concat()
    } else {
        format!("container {name:?}")
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(object) => write!(f, "{object}, {}", self.scope),
            None => f.write_str(&self.scope),
        }
    }
}

/// One pod as far as archgate cares: which nodes it may land on, and whose credentials the kubelet
/// pulls its images with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    pub node_selector: BTreeMap<String, String>,
    /// `affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution`.
    pub required_affinity: Option<NodeSelector>,
    pub tolerations: Vec<Toleration>,
    /// `nodeName`: the pod is bound to this node and bypasses the scheduler.
    pub node_name: Option<String>,
    /// `imagePullSecrets` names (same namespace), as written: an empty name still counts as
    /// naming one (see `cluster::pull_credentials`).
    pub pull_secrets: Vec<String>,
    /// `serviceAccountName`: that account's pull secrets are the pod's when it names none.
    pub service_account: Option<String>,
    /// `pull_secrets` is final: a Pod the API server has admitted, whose list the ServiceAccount
    /// plugin filled in at creation, so the account's secrets are never added (they may have
    /// changed since, and the kubelet reads the pod's list alone).
    pub pull_secrets_final: bool,
    /// Where the user sets this pod's node selector when that is not the pod spec itself, widest
    /// first: a Tekton run's pod template for every task, then the one for this task alone
    /// (`spec.taskRunSpecs[].podTemplate (pipelineTaskName: build)`). Empty for pods and templates.
    pub pin_at: Vec<String>,
    /// Platforms fixed by the object itself, whatever the nodes: a Dockerfile stage is pulled
    /// for the build's target platforms, or the builder's under `FROM --platform=$BUILDPLATFORM`.
    pub platforms: Option<Vec<Platform>>,
}

/// What an extractor found: the targets, and what it could not check (said as warnings).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extraction {
    pub targets: Vec<Target>,
    pub warnings: Vec<String>,
    /// What the walk left unchecked at one of its bounds (a run with more task runs, steps or
    /// images than archgate reads): like an image whose registry was not asked, it follows
    /// `--on-registry-error`.
    pub incomplete: Vec<String>,
    /// Tekton bundles (`resolver: bundles`) the catalog did not hold yet: the caller fetches them
    /// from their registry and extracts again.
    pub unresolved_bundles: Vec<BundleRef>,
}

/// One resource inside a Tekton bundle (an OCI image whose layers each hold one resource).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BundleRef {
    /// The bundle image reference, e.g. `gcr.io/tekton-releases/catalog/upstream/golang-build:0.1`.
    pub bundle: String,
    /// `Pipeline`, `Task` or `StepAction`.
    pub kind: String,
    pub name: String,
}

/// The object could not be read as the kind it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read {kind} {name:?}: {reason}")]
pub struct ExtractError {
    pub kind: String,
    pub name: String,
    pub reason: String,
}

/// Named resources that runs refer to, which only the cluster holds (Tekton Pipelines, Tasks, ...).
///
/// The admission path backs this with reflector stores; `archgate check` with the files it was given.
pub trait Catalog: Send + Sync {
    /// `kind` is `Pipeline`, `Task`, `ClusterTask` or `StepAction`; `namespace` is ignored for
    /// cluster-scoped kinds.
    fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value>;

    /// A resource from a Tekton bundle the caller has already fetched.
    fn bundle(&self, _reference: &BundleRef) -> Option<Value> {
        None
    }
}

/// A catalog that knows nothing: every reference is reported as unchecked.
pub struct EmptyCatalog;

impl Catalog for EmptyCatalog {
    fn get(&self, _kind: &str, _namespace: &str, _name: &str) -> Option<Value> {
        None
    }
}

/// Options that change what counts as an image to check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractOptions {
    /// Tekton param names whose values are images the run needs (e.g. `BASE_IMAGE`).
    pub tekton_image_params: Vec<String>,
    /// Whether a pod's `TEKTON_PLATFORM_COMMANDS` env var may stand in for the registry's answer.
    /// Anyone can write that variable into a pod spec, so the caller sets this only when the
    /// review's `userInfo` is the Tekton controller (never for `archgate check` files).
    pub trust_tekton_platforms: bool,
    /// Whether a Pod under review has been through the API server's admission (the webhook and
    /// `scan` read Pods from it; `check` reads files): its `imagePullSecrets` are then final, as
    /// the ServiceAccount admission plugin, which runs before any validating webhook, has
    /// already copied in the account's when it named none.
    pub admitted_pods: bool,
}

/// The extractor for each kind [`Kind::of`] accepts.
pub fn extract(
    kind: Kind,
    object: &Value,
    catalog: &dyn Catalog,
    options: &ExtractOptions,
) -> Result<Extraction, ExtractError> {
    match kind {
        Kind::PipelineRun => tekton::extract_pipeline_run(object, catalog, options),
        Kind::TaskRun => tekton::extract_task_run(object, catalog, options),
        Kind::Pod => pod::extract(kind, &["spec"], object, options),
        Kind::Workload(workload) => pod::extract(kind, workload.spec_path(), object, options),
    }
}

/// `metadata.name`, or `generateName` followed by `*` when the server has not named it yet.
pub fn object_name(object: &Value) -> String {
    let meta = &object["metadata"];
    match meta["name"].as_str().filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None => match meta["generateName"].as_str() {
            Some(prefix) => format!("{prefix}*"),
            None => String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_scope_is_written_as_debug_writes_its_name() {
        for name in [
            "echo-server",
            "a.b_c-9",
            "",
            "say \"hi\"",
            "tab\there",
            "naïve",
            "a\\b",
        ] {
            assert_eq!(
                Location::container(None, name).scope,
                format!("container {name:?}"),
                "{name:?}"
            );
        }
    }
}
