//! Placement mode: in a mixed cluster, steer a Pod to the nodes its images run on instead of
//! refusing it.
//!
//! Pure: the Pod as the API server sent it and the pipeline's checked targets in, a [`Plan`] out:
//! either an RFC 6902 JSON Patch that adds a required node affinity on `kubernetes.io/os` and
//! `kubernetes.io/arch`, or the reason the Pod is left as it is. Whether the
//! Pod may run at all stays the validating webhook's decision ([`crate::policy`]); this module only
//! narrows where the scheduler may put it, and only when labels can say exactly where that is.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::NodeSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::platform::Platform;
use crate::policy::{self, Checked, Outcome};
use crate::scheduling::{self, ARCH_LABEL, NodeView, OS_LABEL};
use crate::workload::Placement;

/// The annotation archgate sets on a Pod it steered: what it added and why.
pub const ANNOTATION: &str = "archgate.io/placement";

/// The kubelet marks the API copy of a static pod with this annotation.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Node selector terms after the merge, at most. Existing terms are ORed, and a restriction that
/// needs one term per OS multiplies them; past this the Pod is left to the validator rather than
/// handing the API server an affinity nobody can read.
pub const MAX_TERMS: usize = 64;

/// Findings named in the annotation, at most (the rest are counted): annotations share a 256 KiB
/// budget per object, and a Pod may have many containers.
const MAX_NOTED: usize = 4;

const AFFINITY_PATH: [&str; 3] = ["spec", "affinity", "nodeAffinity"];
const REQUIRED: &str = "requiredDuringSchedulingIgnoredDuringExecution";

/// What to do with a Pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Add this patch: the Pod's nodes run more platforms than every image provides.
    Steer(Steering),
    /// Leave the Pod as it is.
    Leave(Leave),
}

/// A mutation: the platforms the Pod is steered to, the patch, and the annotation's text.
#[derive(Debug, Clone, PartialEq)]
pub struct Steering {
    pub restriction: Restriction,
    pub patch: Patch,
    pub note: String,
}

/// Why a Pod is left as it is. A closed set: it is also the `outcome` label of the mutations
/// metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leave {
    /// Not a Pod at CREATE (an UPDATE, a subresource, a workload template, another kind), or a
    /// namespace archgate does not review or only audits.
    NotApplicable,
    /// Owned by a DaemonSet: its controller pins each pod to one node by name.
    DaemonSet,
    /// A static pod's mirror: the kubelet already runs it.
    Mirror,
    /// `nodeName` is set: the scheduler is bypassed, affinity cannot move it.
    NodeName,
    /// Every image runs on every platform the Pod could land on (or there are no images).
    Fits,
    /// No platform the Pod could land on is provided by every image: the validator denies.
    Nowhere,
    /// An image's platforms are unknown (registry trouble, invalid reference) or no node matches
    /// the Pod's constraints: the validator words what is wrong.
    Unknown,
    /// The Pod already constrains `kubernetes.io/arch` (or the OS where that must narrow too):
    /// the author chose; the validator decides.
    Constrained,
    /// The platforms that fit and those that do not share an OS and architecture: they differ in
    /// what those two node labels do not say (`arm/v6` and `arm/v7`, Windows builds, runtimes).
    Indistinct,
    /// The merged affinity would exceed [`MAX_TERMS`], or its shape is not a Pod's.
    TooComplex,
    /// Read back against the nodes, the patch would not admit exactly the nodes every image runs
    /// on: a node states its platform only in `beta.kubernetes.io/*` labels or `status.nodeInfo`,
    /// or spells it otherwise (`kubernetes.io/arch: aarch64`), so `kubernetes.io/os`/`arch`
    /// cannot select it.
    Unselectable,
}

impl Leave {
    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotApplicable => "not_applicable",
            Self::DaemonSet => "daemonset",
            Self::Mirror => "mirror",
            Self::NodeName => "node_name",
            Self::Fits => "fits",
            Self::Nowhere => "nowhere",
            Self::Unknown => "unknown",
            Self::Constrained => "constrained",
            Self::Indistinct => "indistinct",
            Self::TooComplex => "too_complex",
            Self::Unselectable => "unselectable",
        }
    }
}

/// Pods that are never steered, whatever their images, read from the object itself.
///
/// `ownerReferences` are the author's claim, not a fact; trusting one here only skips a
/// mutation, which is the safe direction: the validating webhook still reviews the Pod.
pub fn never_steered(metadata: &ObjectMeta, spec: &Value) -> Option<Leave> {
    let by_daemonset = metadata.owner_references.iter().flatten().any(|o| {
        o.kind == "DaemonSet" && matches!(o.api_version.as_str(), "apps/v1" | "extensions/v1beta1")
    });
    if by_daemonset {
        return Some(Leave::DaemonSet);
    }
    if metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
    {
        return Some(Leave::Mirror);
    }
    if spec["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
        return Some(Leave::NodeName);
    }
    None
}

/// Where a Pod is steered: terms ORed, each the AND of its requirements, exactly the runnable
/// platforms among the candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restriction {
    pub terms: Vec<Vec<Requirement>>,
}

/// `key In (values)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: &'static str,
    pub values: Vec<String>,
}

impl Requirement {
    fn to_json(&self) -> Value {
        json!({"key": self.key, "operator": "In", "values": self.values})
    }
}

impl fmt::Display for Restriction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let term = |reqs: &[Requirement]| {
            reqs.iter()
                .map(|r| format!("{} In ({})", r.key, r.values.join(", ")))
                .collect::<Vec<_>>()
                .join(" and ")
        };
        match self.terms.as_slice() {
            [one] => f.write_str(&term(one)),
            many => {
                let parts: Vec<String> = many.iter().map(|t| format!("({})", term(t))).collect();
                f.write_str(&parts.join(" or "))
            }
        }
    }
}

/// Decides whether and how to steer `pod` (`metadata` and `spec` as the API server sent them),
/// given what the pipeline learned of its images and the cluster's `nodes`, against which the
/// patch is read back before it is made.
pub fn plan(pod: &Value, checked: &[Checked], nodes: &[NodeView]) -> Plan {
    match steer(pod, checked, nodes) {
        Ok(steering) => Plan::Steer(steering),
        Err(leave) => Plan::Leave(leave),
    }
}

fn steer(pod: &Value, checked: &[Checked], nodes: &[NodeView]) -> Result<Steering, Leave> {
    if checked.is_empty() {
        return Err(Leave::Fits);
    }
    let mut provided = Vec::with_capacity(checked.len());
    for c in checked {
        match &c.outcome {
            Outcome::Resolved(r) if !c.candidates.is_empty() => provided.push(&r.platforms),
            _ => return Err(Leave::Unknown),
        }
    }
    // Every target of a Pod shares its placement, so they share candidates; the union is safe
    // either way.
    let candidates: BTreeSet<Platform> = checked
        .iter()
        .flat_map(|c| c.candidates.iter().map(Platform::normalized))
        .collect();
    let (runnable, unrunnable): (Vec<&Platform>, Vec<&Platform>) =
        candidates.iter().partition(|need| {
            provided
                .iter()
                .all(|have| have.iter().any(|p| p.satisfies(need)))
        });
    if unrunnable.is_empty() {
        return Err(Leave::Fits);
    }
    if runnable.is_empty() {
        return Err(Leave::Nowhere);
    }
    let os_arch = |p: &Platform| (p.os.clone(), p.architecture.clone());
    let labelled: BTreeSet<(String, String)> = runnable.iter().map(|p| os_arch(p)).collect();
    if unrunnable.iter().any(|p| labelled.contains(&os_arch(p))) {
        return Err(Leave::Indistinct);
    }
    let (restriction, os_narrows) = restriction(&labelled, &candidates);
    let spec = &pod["spec"];
    // An OS the author already pinned where it does not narrow (`kubernetes.io/os: linux` in a
    // Linux-only cluster, common in charts) is no choice about platforms: the restriction's own
    // OS requirement is ANDed with it.
    if constrains(spec, ARCH_LABEL) || (os_narrows && constrains(spec, OS_LABEL)) {
        return Err(Leave::Constrained);
    }
    let mut patch = affinity_patch(spec, &restriction)?;
    let runs = |node: &Platform| {
        provided
            .iter()
            .all(|have| have.iter().any(|p| p.satisfies(node)))
    };
    verify(spec, &patch, &checked[0].target.placement, runs, nodes)?;
    let findings: Vec<String> = checked
        .iter()
        .filter_map(policy::finding)
        .map(|f| f.to_string())
        .collect();
    let note = policy::steered(&restriction.to_string(), &findings, MAX_NOTED);
    patch.push(annotation_patch(&pod["metadata"], &note));
    Ok(Steering {
        restriction,
        patch: Patch(patch),
        note,
    })
}

/// The requirements that admit exactly the runnable `(os, arch)` pairs among the candidates, and
/// whether the OS narrows among today's candidates (only then does the Pod's own OS constraint
/// make it [`Leave::Constrained`]).
///
/// Both labels always: the restriction states where the images run, not only what tells today's
/// nodes apart, so a node that joins later (cluster-autoscaler and Karpenter choose node types
/// from the Pod's own requirements) is admitted only if it runs them. When every OS runs the same
/// architectures, one term; otherwise one term per OS.
fn restriction(
    runnable: &BTreeSet<(String, String)>,
    candidates: &BTreeSet<Platform>,
) -> (Restriction, bool) {
    let mut by_os: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (os, arch) in runnable {
        by_os.entry(os).or_default().push(arch.clone());
    }
    let archs: Vec<String> = by_os.values().next().cloned().unwrap_or_default();
    if by_os.values().all(|a| *a == archs) {
        let oses: Vec<String> = by_os.keys().map(|o| o.to_string()).collect();
        let os_narrows = candidates
            .iter()
            .any(|c| archs.contains(&c.architecture) && !oses.contains(&c.os));
        let term = vec![
            Requirement {
                key: OS_LABEL,
                values: oses,
            },
            Requirement {
                key: ARCH_LABEL,
                values: archs,
            },
        ];
        return (Restriction { terms: vec![term] }, os_narrows);
    }
    let terms = by_os
        .into_iter()
        .map(|(os, archs)| {
            vec![
                Requirement {
                    key: OS_LABEL,
                    values: vec![os.to_string()],
                },
                Requirement {
                    key: ARCH_LABEL,
                    values: archs,
                },
            ]
        })
        .collect();
    (Restriction { terms }, true)
}

/// Reads the affinity patch back: applied to the Pod's placement, it must admit exactly the
/// `nodes` the unpatched Pod could land on whose platform every image provides (`runs`), and at
/// least one. The restriction is worked out on platforms, the patch selects on labels; where a
/// node's platform comes from elsewhere (`beta.kubernetes.io/*`, `status.nodeInfo`, `aarch64`)
/// the two part, and a patch that keeps the Pod off a node it runs on, or off every node, is
/// not made.
fn verify(
    spec: &Value,
    affinity: &[PatchOperation],
    placement: &Placement,
    runs: impl Fn(&Platform) -> bool,
    nodes: &[NodeView],
) -> Result<(), Leave> {
    // The affinity operations touch `/spec/affinity` only: the rest of the Pod is not copied.
    let mut patched = json!({"spec": {"affinity": spec["affinity"].clone()}});
    json_patch::patch(&mut patched, affinity).map_err(|_| Leave::TooComplex)?;
    let required: NodeSelector =
        serde_json::from_value(patched["spec"]["affinity"]["nodeAffinity"][REQUIRED].take())
            .map_err(|_| Leave::TooComplex)?;
    let steered = Placement {
        required_affinity: Some(required),
        ..placement.clone()
    };
    let wanted: Vec<bool> = scheduling::admitted(placement, nodes)
        .into_iter()
        .zip(nodes)
        .map(|(admitted, node)| admitted && runs(&node.platform.normalized()))
        .collect();
    if !wanted.contains(&true) || scheduling::admitted(&steered, nodes) != wanted {
        return Err(Leave::Unselectable);
    }
    Ok(())
}

/// Does the Pod's spec already say something about node label `key` that the scheduler must
/// honour (its nodeSelector or a required node affinity term)?
fn constrains(spec: &Value, key: &str) -> bool {
    if spec["nodeSelector"].get(key).is_some() {
        return true;
    }
    let terms = &spec["affinity"]["nodeAffinity"][REQUIRED]["nodeSelectorTerms"];
    terms.as_array().into_iter().flatten().any(|term| {
        term["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["key"].as_str() == Some(key))
    })
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// The operations that AND `restriction` into the Pod's required node affinity.
///
/// Terms are ORed by the scheduler, so a restriction added to only one term would leave the
/// others open: it goes into every one that can match a node ([`matches_nothing`]). A missing
/// level is added whole (`add` on a member that is present but null replaces it).
fn affinity_patch(spec: &Value, restriction: &Restriction) -> Result<Vec<PatchOperation>, Leave> {
    let expressions =
        |reqs: &[Requirement]| Value::Array(reqs.iter().map(Requirement::to_json).collect());
    let affinity = &spec["affinity"];
    let node_affinity = &affinity["nodeAffinity"];
    // Indexing a non-object gives null: tell "absent" from "not an object" first.
    let object_or_null = |v: &Value| v.is_object() || v.is_null();
    if !object_or_null(affinity) || !object_or_null(node_affinity) {
        return Err(Leave::TooComplex);
    }
    let Some(existing) = node_affinity[REQUIRED]["nodeSelectorTerms"].as_array() else {
        let terms: Vec<Value> = restriction
            .terms
            .iter()
            .map(|t| json!({"matchExpressions": expressions(t)}))
            .collect();
        let required = json!({ "nodeSelectorTerms": terms });
        let op = if node_affinity.is_object() {
            let [spec, affinity, node_affinity] = AFFINITY_PATH;
            add(
                pointer(&[spec, affinity, node_affinity, REQUIRED]),
                required,
            )
        } else if affinity.is_object() {
            add(pointer(&AFFINITY_PATH), json!({ REQUIRED: required }))
        } else {
            add(
                pointer(&AFFINITY_PATH[..2]),
                json!({ "nodeAffinity": { REQUIRED: required } }),
            )
        };
        return Ok(vec![op]);
    };
    if existing.is_empty() || existing.len() * restriction.terms.len() > MAX_TERMS {
        return Err(Leave::TooComplex);
    }
    let terms_path = [
        AFFINITY_PATH[0],
        AFFINITY_PATH[1],
        AFFINITY_PATH[2],
        REQUIRED,
        "nodeSelectorTerms",
    ];
    if let [only] = restriction.terms.as_slice() {
        // One term to AND in: append to each existing term, the smallest patch to review.
        let mut ops = Vec::new();
        for (i, term) in existing.iter().enumerate() {
            if matches_nothing(term) {
                continue;
            }
            let index = i.to_string();
            let mut path = terms_path.to_vec();
            path.extend([index.as_str(), "matchExpressions"]);
            match &term["matchExpressions"] {
                Value::Array(_) => {
                    for r in only {
                        let mut append = path.clone();
                        append.push("-");
                        ops.push(add(pointer(&append), r.to_json()));
                    }
                }
                Value::Null => ops.push(add(pointer(&path), expressions(only))),
                _ => return Err(Leave::TooComplex),
            }
        }
        return Ok(ops);
    }
    // Several terms to AND in: (a or b) and (x or y) = ax or ay or bx or by.
    let mut product = Vec::with_capacity(existing.len() * restriction.terms.len());
    for term in existing {
        if matches_nothing(term) {
            product.push(term.clone());
            continue;
        }
        let Value::Object(term) = term else {
            return Err(Leave::TooComplex);
        };
        for extra in &restriction.terms {
            let mut merged = term.clone();
            let exprs = merged
                .entry("matchExpressions")
                .or_insert_with(|| Value::Array(Vec::new()));
            if exprs.is_null() {
                *exprs = Value::Array(Vec::new());
            }
            let Value::Array(exprs) = exprs else {
                return Err(Leave::TooComplex);
            };
            exprs.extend(extra.iter().map(Requirement::to_json));
            product.push(Value::Object(merged));
        }
    }
    Ok(vec![PatchOperation::Replace(ReplaceOperation {
        path: pointer(&terms_path),
        value: Value::Array(product),
    })])
}

/// A null or empty node selector term "matches no objects" (core/v1 `NodeSelectorTerm`), and the
/// scheduler skips it (component-helpers `nodeaffinity`). ANDing the restriction into it would
/// make it match every node of the runnable platforms: a patch that widens. It is left as it is.
fn matches_nothing(term: &Value) -> bool {
    let none = |v: &Value| v.is_null() || v.as_array().is_some_and(Vec::is_empty);
    (term.is_object() || term.is_null())
        && none(&term["matchExpressions"])
        && none(&term["matchFields"])
}

/// Sets [`ANNOTATION`]; its `/` is escaped as `~1` in the JSON Pointer.
fn annotation_patch(metadata: &Value, note: &str) -> PatchOperation {
    if metadata["annotations"].is_object() {
        add(
            pointer(&["metadata", "annotations", ANNOTATION]),
            json!(note),
        )
    } else {
        add(
            pointer(&["metadata", "annotations"]),
            json!({ ANNOTATION: note }),
        )
    }
}

#[cfg(test)]
mod tests;
