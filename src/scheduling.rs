//! Which platforms a pod could land on: its placement matched against nodes.
//!
//! The scheduler knows nothing of images, so every node a pod's constraints admit is a place it may
//! run. A static platform list (`--platform linux/amd64`) is treated as one synthetic node per
//! platform carrying only the `kubernetes.io/os` and `kubernetes.io/arch` labels (and
//! `node.kubernetes.io/windows-build` for a Windows build); live clusters supply real nodes with
//! every label, taint and the cordon flag. A node's platform also says how its runtime matches
//! image platforms ([`crate::platform::RuntimeMatcher`]).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};

use crate::platform::{Platform, RuntimeMatcher};
use crate::workload::Placement;

pub const OS_LABEL: &str = "kubernetes.io/os";
pub const ARCH_LABEL: &str = "kubernetes.io/arch";
/// The kubelet sets it on Windows nodes to `major.minor.build` (`10.0.17763`).
pub const WINDOWS_BUILD_LABEL: &str = "node.kubernetes.io/windows-build";

/// What scheduling needs to know of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub platform: Platform,
    /// Synthetic nodes only know os/arch: constraints on any other label cannot exclude them.
    pub synthetic: bool,
}

impl NodeView {
    /// A stand-in node for a configured platform.
    pub fn synthetic(platform: &Platform) -> Self {
        let labels = node_labels(platform)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        Self {
            name: platform.to_string(),
            labels,
            taints: Vec::new(),
            unschedulable: false,
            platform: platform.clone(),
            synthetic: true,
        }
    }
}

/// The node a pod is bound to by `nodeName`, when it is one of `nodes`.
///
/// A pod with `nodeName` never meets the scheduler: the kubelet of that node runs it
/// (pkg/scheduler/eventhandlers.go, `assignedPod`, keeps it out of the scheduling queue). So
/// only that node's platform counts: the scheduler's cordon and taint filters never see the pod,
/// and a running pod stays where it is when labels change (`IgnoredDuringExecution`). Where the
/// kubelet itself might still refuse the pod, checking the node anyway errs on the side of
/// checking.
///
/// A name archgate does not know is not "nowhere" (which would allow the pod unchecked): it may
/// be a node that registered after archgate last looked, so it is any node the pod's selector
/// and affinity admit, as a synthetic node (which stands for every node of its platform,
/// whatever their names) is.
fn bound_to<'a>(placement: &'a Placement, nodes: &[NodeView]) -> Option<&'a str> {
    let name = placement.node_name.as_deref()?;
    nodes
        .iter()
        .any(|n| !n.synthetic && n.name == name)
        .then_some(name)
}

/// Would `node` run a pod with `placement`? `bound` is [`bound_to`] of the same placement.
fn admits(placement: &Placement, node: &NodeView, bound: Option<&str>) -> bool {
    if placement.node_name.is_some() {
        // Bound by name: no scheduler, so cordons and taints do not apply.
        return selects(placement, node, bound);
    }
    selects(placement, node, bound) && !repels(placement, node)
}

/// Does the pod's `nodeName` (when bound to a known node), `nodeSelector` and required node
/// affinity allow `node`?
fn selects(placement: &Placement, node: &NodeView, bound: Option<&str>) -> bool {
    if let Some(name) = bound {
        return node.name == name;
    }
    let selector_ok = placement
        .node_selector
        .iter()
        .all(|(key, value)| label_unknown(node, key) || node.labels.get(key) == Some(value));
    let affinity_ok = match &placement.required_affinity {
        // Terms are ORed; an empty list of terms matches nothing, as in the scheduler.
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, node)),
        None => true,
    };
    selector_ok && affinity_ok
}

/// The taint a cordon (`spec.unschedulable`) stands for. The node lifecycle controller also
/// writes it into the node's taints, but the scheduler does not wait for that.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// Is `node` cordoned, or tainted with a taint the pod does not tolerate?
///
/// A cordon is not absolute: the scheduler's NodeUnschedulable plugin
/// (pkg/scheduler/framework/plugins/nodeunschedulable, `Filter`) lets a pod onto a cordoned node
/// when it tolerates `node.kubernetes.io/unschedulable:NoSchedule`, as every DaemonSet pod does.
fn repels(placement: &Placement, node: &NodeView) -> bool {
    // Built once: this runs for every node on every review.
    static CORDON: std::sync::LazyLock<[Taint; 1]> = std::sync::LazyLock::new(|| {
        [Taint {
            key: UNSCHEDULABLE_TAINT.into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        }]
    });
    (node.unschedulable && !tolerates_all(&placement.tolerations, &*CORDON))
        || !tolerates_all(
            &placement.tolerations,
            node.taints
                .iter()
                .filter(|t| !PASSING_TAINTS.contains(&t.key.as_str())),
        )
}

/// Taints controllers set while a node is unhealthy, starting or shut down, and take away on
/// their own when it recovers: the node lifecycle controller's condition taints
/// (pkg/controller/nodelifecycle, `nodeConditionToTaintKeyStatusMap`, and not-ready/unreachable)
/// and the cloud node controllers' (k8s.io/cloud-provider, `TaintExternalCloudProvider`,
/// `ShutdownTaint`). A node carrying one is still where a pending pod, or a workload's next pod,
/// runs once it clears, so it stays a candidate: excluded, an amd64-only image passed while the
/// arm64 pool was NotReady and crashed on it minutes later. A cordon and taints an administrator
/// sets (`out-of-service` too) do keep pods away.
const PASSING_TAINTS: [&str; 8] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/network-unavailable",
    "node.cloudprovider.kubernetes.io/uninitialized",
    "node.cloudprovider.kubernetes.io/shutdown",
];

/// Why a pod has no candidate platform, for the warning that says its images were not checked
/// (worded in [`crate::policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unplaceable {
    /// The cluster has no nodes (or archgate has not seen any yet).
    NoNodes,
    /// Nodes match the pod's constraints (`every_node`: all of them do), but each is cordoned or
    /// has a taint the pod does not tolerate.
    Repelled { every_node: bool },
    /// No node matches the pod's node selector and required affinity (a pod bound to a known
    /// node by `nodeName` always has that node).
    NoMatch,
}

/// The reason [`candidates`] is empty for `placement` on `nodes` (call it only then).
pub fn unplaceable(placement: &Placement, nodes: &[NodeView]) -> Unplaceable {
    let bound = bound_to(placement, nodes);
    let selected = nodes
        .iter()
        .filter(|n| selects(placement, n, bound))
        .count();
    match (nodes.len(), selected) {
        (0, _) => Unplaceable::NoNodes,
        (_, 0) => Unplaceable::NoMatch,
        (all, selected) => Unplaceable::Repelled {
            every_node: selected == all,
        },
    }
}

/// Synthetic nodes know only the labels their platform implies ([`node_labels`]); a
/// Windows build label is known to be absent from a node that is not Windows.
fn label_unknown(node: &NodeView, key: &str) -> bool {
    node.synthetic
        && !node.labels.contains_key(key)
        && !(key == WINDOWS_BUILD_LABEL && node.platform.normalized().os != "windows")
}

/// The labels a node of `platform` carries that say its platform, as the kubelet sets them.
fn node_labels(platform: &Platform) -> Vec<(&'static str, String)> {
    let p = platform.normalized();
    let mut labels = vec![
        (OS_LABEL, p.os.clone()),
        (ARCH_LABEL, p.architecture.clone()),
    ];
    if let (true, Some(build)) = (p.os == "windows", &p.os_version) {
        labels.push((WINDOWS_BUILD_LABEL, build.clone()));
    }
    labels
}

/// Requirements within a term are ANDed. `matchFields` can only name `metadata.name`.
fn term_matches(term: &NodeSelectorTerm, node: &NodeView) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| label_unknown(node, &r.key) || requirement_matches(r, node.labels.get(&r.key)))
        && fields.iter().all(|r| {
            node.synthetic || (r.key == "metadata.name" && requirement_matches(r, Some(&node.name)))
        })
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let as_int = |s: &str| s.trim().parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(|v| as_int(v)),
                values.first().and_then(|v| as_int(v)),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

/// Taints with NoSchedule or NoExecute keep a pod away unless it tolerates them.
fn tolerates_all<'a>(
    tolerations: &[Toleration],
    taints: impl IntoIterator<Item = &'a Taint>,
) -> bool {
    taints
        .into_iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
}

fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key_ok = match toleration.key.as_deref() {
        None | Some("") => toleration.operator.as_deref() == Some("Exists"),
        Some(key) => key == taint.key,
    };
    let (wanted, found) = (
        toleration.value.as_deref().unwrap_or(""),
        taint.value.as_deref().unwrap_or(""),
    );
    // `Gt`/`Lt` compare the taint's value with the toleration's as integers; values that are not
    // integers tolerate nothing (k8s.io/api core/v1 `Toleration.ToleratesTaint`, behind the
    // TaintTolerationComparisonOperators gate). Read as `Equal`, a pod tolerating `sla Gt 900`
    // kept the `sla=950` nodes out of its candidates.
    let number = |text: &str| text.parse::<i64>().ok();
    let value_ok = match toleration.operator.as_deref() {
        Some("Exists") => true,
        Some(op @ ("Gt" | "Lt")) => match (number(found), number(wanted)) {
            (Some(found), Some(wanted)) if op == "Gt" => found > wanted,
            (Some(found), Some(wanted)) => found < wanted,
            _ => false,
        },
        _ => wanted == found,
    };
    key_ok && value_ok
}

/// For each of `nodes`, whether a pod with `placement` may run there (the nodes [`candidates`]
/// takes its platforms from). Placement mode reads its own patch back with it, node by node.
pub fn admitted(placement: &Placement, nodes: &[NodeView]) -> Vec<bool> {
    let bound = bound_to(placement, nodes);
    nodes.iter().map(|n| admits(placement, n, bound)).collect()
}

/// The distinct platforms of the nodes a placement admits, in a stable order; a placement that
/// fixes its platforms (a Dockerfile's pulls) needs exactly those, whatever the nodes.
pub fn candidates(placement: &Placement, nodes: &[NodeView]) -> Vec<Platform> {
    if let Some(fixed) = &placement.platforms {
        let mut out: Vec<Platform> = fixed.iter().map(Platform::normalized).collect();
        out.sort();
        out.dedup();
        return out;
    }
    let bound = bound_to(placement, nodes);
    let mut out: Vec<Platform> = nodes
        .iter()
        .filter(|n| admits(placement, n, bound))
        .map(|n| n.platform.normalized())
        .collect();
    out.sort();
    out.dedup();
    // A strict node pulls a subset of what a containerd-1.7 node of the same platform pulls, so
    // the strict one alone decides.
    let strict: Vec<Platform> = out
        .iter()
        .filter(|p| p.runtime == RuntimeMatcher::Strict)
        .map(|p| p.clone().pulled_with(RuntimeMatcher::Containerd17))
        .collect();
    out.retain(|p| p.runtime == RuntimeMatcher::Strict || !strict.contains(p));
    out
}

/// A node selector that keeps a pod where its images run, if one exists: the mixed-cluster hint
/// (`pin it: nodeSelector kubernetes.io/arch: amd64`). `runs` says whether every image runs on a
/// candidate platform. A selector is offered only if every candidate it still admits runs them
/// all (arm/v6 and arm/v7 nodes share `kubernetes.io/arch: arm`, so neither can be pinned apart).
pub fn pin_hint(candidates: &[&Platform], runs: impl Fn(&Platform) -> bool) -> Option<String> {
    let oses: BTreeSet<String> = candidates.iter().map(|c| c.normalized().os).collect();
    candidates.iter().filter(|c| runs(c)).find_map(|target| {
        let target_labels = node_labels(target);
        let selector: Vec<&(&str, String)> = target_labels
            .iter()
            .filter(|(key, value)| match *key {
                OS_LABEL => oses.len() > 1,
                ARCH_LABEL => true,
                // The build only where another candidate runs another Windows build.
                _ => candidates
                    .iter()
                    .any(|c| node_labels(c).iter().any(|(k, v)| k == key && v != value)),
            })
            .collect();
        let admitted = |c: &Platform| {
            let labels = node_labels(c);
            selector.iter().all(|pair| labels.contains(pair))
        };
        candidates
            .iter()
            .filter(|c| admitted(c))
            .all(|c| runs(c))
            .then(|| {
                let pairs: Vec<String> =
                    selector.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("pin it: nodeSelector {}", pairs.join(", "))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSelector;

    fn static_nodes(list: &[&str]) -> Vec<NodeView> {
        list.iter()
            .map(|p| NodeView::synthetic(&Platform::parse(p).unwrap()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn affinity(reqs: Vec<NodeSelectorRequirement>) -> Option<NodeSelector> {
        Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(reqs),
                match_fields: None,
            }],
        })
    }

    fn names(p: &[Platform]) -> Vec<String> {
        p.iter().map(|p| p.to_string()).collect()
    }

    /// Each placement's candidates on `nodes` are the platforms it is paired with.
    fn assert_candidates(cases: &[(Placement, Vec<&str>)], nodes: &[NodeView]) {
        for (placement, want) in cases {
            assert_eq!(names(&candidates(placement, nodes)), *want, "{placement:?}");
        }
    }

    #[test]
    fn fixed_platforms_do_not_depend_on_nodes() {
        let nodes = static_nodes(&["linux/amd64"]);
        let fixed = Placement {
            platforms: Some(vec![
                Platform::parse("linux/s390x").unwrap(),
                Platform::new("linux", "aarch64", Some("v8")),
            ]),
            ..Placement::default()
        };
        assert_eq!(
            names(&candidates(&fixed, &nodes)),
            ["linux/arm64", "linux/s390x"]
        );
    }

    #[test]
    fn static_platforms_narrowed_by_selector_and_affinity() {
        let nodes = static_nodes(&["linux/amd64", "linux/arm64", "windows/amd64"]);
        let sel = |pairs: &[(&str, &str)]| Placement {
            node_selector: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Placement::default()
        };
        let cases: Vec<(Placement, Vec<&str>)> = vec![
            (
                Placement::default(),
                vec!["linux/amd64", "linux/arm64", "windows/amd64"],
            ),
            (sel(&[(ARCH_LABEL, "arm64")]), vec!["linux/arm64"]),
            (sel(&[(OS_LABEL, "windows")]), vec!["windows/amd64"]),
            // other labels cannot be judged on synthetic nodes, so they do not narrow
            (
                sel(&[("disktype", "ssd")]),
                vec!["linux/amd64", "linux/arm64", "windows/amd64"],
            ),
            (sel(&[(ARCH_LABEL, "riscv64")]), vec![]),
            (
                Placement {
                    required_affinity: affinity(vec![
                        req(ARCH_LABEL, "NotIn", &["arm64"]),
                        req(OS_LABEL, "In", &["linux"]),
                    ]),
                    ..Placement::default()
                },
                vec!["linux/amd64"],
            ),
            (
                Placement {
                    required_affinity: Some(NodeSelector {
                        node_selector_terms: vec![],
                    }),
                    ..Placement::default()
                },
                vec![],
            ),
        ];
        assert_candidates(&cases, &nodes);
    }

    fn node(name: &str, arch: &str, extra: &[(&str, &str)]) -> NodeView {
        let platform = Platform::parse(&format!("linux/{arch}")).unwrap();
        let mut n = NodeView::synthetic(&platform);
        n.name = name.into();
        n.synthetic = false;
        for (k, v) in extra {
            n.labels.insert(k.to_string(), v.to_string());
        }
        n
    }

    #[test]
    fn no_candidate_names_the_reason() {
        let mut tainted = node("gpu", "arm64", &[("gpu", "true")]);
        tainted.taints = vec![Taint {
            key: "gpu".into(),
            value: None,
            effect: "NoSchedule".into(),
            time_added: None,
        }];
        let mut cordoned = node("old", "amd64", &[]);
        cordoned.unschedulable = true;
        let repelling = vec![tainted, cordoned];
        let on_gpu = Placement {
            node_selector: [("gpu".to_string(), "true".to_string())].into(),
            ..Placement::default()
        };
        let cases = [
            (Placement::default(), vec![], Unplaceable::NoNodes),
            (
                Placement::default(),
                repelling.clone(),
                Unplaceable::Repelled { every_node: true },
            ),
            (
                on_gpu,
                repelling.clone(),
                Unplaceable::Repelled { every_node: false },
            ),
            (
                Placement {
                    node_selector: [(ARCH_LABEL.to_string(), "riscv64".to_string())].into(),
                    ..Placement::default()
                },
                repelling,
                Unplaceable::NoMatch,
            ),
        ];
        for (placement, nodes, want) in cases {
            assert!(candidates(&placement, &nodes).is_empty());
            assert_eq!(unplaceable(&placement, &nodes), want);
        }
    }

    #[test]
    fn real_nodes_honour_every_label_taints_and_cordons() {
        let mut gpu = node("gpu", "arm64", &[("gpu", "true"), ("cores", "64")]);
        gpu.taints = vec![Taint {
            key: "gpu".into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }];
        let mut cordoned = node("old", "s390x", &[]);
        cordoned.unschedulable = true;
        let mut soft = node("soft", "ppc64le", &[]);
        soft.taints = vec![Taint {
            key: "x".into(),
            value: None,
            effect: "PreferNoSchedule".into(),
            time_added: None,
        }];
        let nodes = vec![node("a", "amd64", &[("cores", "8")]), gpu, cordoned, soft];
        let tol = |key: Option<&str>, op: &str, value: Option<&str>| Toleration {
            key: key.map(str::to_string),
            operator: Some(op.into()),
            value: value.map(str::to_string),
            effect: None,
            toleration_seconds: None,
        };
        let cases: Vec<(Placement, Vec<&str>)> = vec![
            (Placement::default(), vec!["linux/amd64", "linux/ppc64le"]),
            (
                Placement {
                    tolerations: vec![tol(Some("gpu"), "Equal", Some("true"))],
                    ..Default::default()
                },
                vec!["linux/amd64", "linux/arm64", "linux/ppc64le"],
            ),
            (
                Placement {
                    tolerations: vec![tol(Some("gpu"), "Equal", Some("no"))],
                    ..Default::default()
                },
                vec!["linux/amd64", "linux/ppc64le"],
            ),
            // Tolerating every taint tolerates the cordon's too.
            (
                Placement {
                    tolerations: vec![tol(None, "Exists", None)],
                    ..Default::default()
                },
                vec!["linux/amd64", "linux/arm64", "linux/ppc64le", "linux/s390x"],
            ),
            (
                Placement {
                    tolerations: vec![tol(None, "Exists", None)],
                    required_affinity: affinity(vec![req("cores", "Gt", &["16"])]),
                    ..Default::default()
                },
                vec!["linux/arm64"],
            ),
            (
                Placement {
                    required_affinity: affinity(vec![req("cores", "Lt", &["16"])]),
                    ..Default::default()
                },
                vec!["linux/amd64"],
            ),
            (
                Placement {
                    required_affinity: affinity(vec![req("gpu", "DoesNotExist", &[])]),
                    ..Default::default()
                },
                vec!["linux/amd64", "linux/ppc64le"],
            ),
            (
                Placement {
                    node_selector: [("disktype".to_string(), "ssd".to_string())].into(),
                    ..Default::default()
                },
                vec![],
            ),
            (
                Placement {
                    node_name: Some("old".into()),
                    ..Default::default()
                },
                vec!["linux/s390x"],
            ),
        ];
        assert_candidates(&cases, &nodes);
    }

    /// A DaemonSet's pods tolerate the cordon (the DaemonSet controller adds the toleration), so
    /// a cordoned arm64 node is still where its new image will run.
    #[test]
    fn gt_and_lt_tolerations_compare_numbers() {
        let taint = |value: &str| Taint {
            key: "sla".into(),
            value: Some(value.into()),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        let toleration = |op: &str, value: &str| Toleration {
            key: Some("sla".into()),
            operator: Some(op.into()),
            value: Some(value.into()),
            ..Toleration::default()
        };
        let cases = [
            ("Gt", "900", "950", true),
            ("Gt", "950", "800", false),
            ("Gt", "950", "950", false),
            ("Lt", "20", "5", true),
            ("Lt", "-3", "-5", true),
            ("Lt", "5", "20", false),
            ("Gt", "900", "high", false),
            ("Equal", "950", "950", true),
        ];
        for (op, wanted, found, tolerated) in cases {
            assert_eq!(
                tolerates(&toleration(op, wanted), &taint(found)),
                tolerated,
                "{op} {wanted} against {found}"
            );
        }
    }

    #[test]
    fn taints_that_clear_on_their_own_keep_a_node_a_candidate() {
        let taint = |key: &str, effect: &str| Taint {
            key: key.into(),
            effect: effect.into(),
            ..Taint::default()
        };
        let mut not_ready = node("arm-1", "arm64", &[]);
        not_ready.taints = vec![
            taint("node.kubernetes.io/not-ready", "NoSchedule"),
            taint("node.kubernetes.io/not-ready", "NoExecute"),
        ];
        let mut starting = node("s390x-1", "s390x", &[]);
        starting.taints = vec![
            taint(
                "node.cloudprovider.kubernetes.io/uninitialized",
                "NoSchedule",
            ),
            taint("node.kubernetes.io/network-unavailable", "NoSchedule"),
        ];
        let mut dedicated = node("ppc-1", "ppc64le", &[]);
        dedicated.taints = vec![
            taint("node.kubernetes.io/memory-pressure", "NoSchedule"),
            taint("dedicated", "NoSchedule"),
        ];
        let nodes = vec![node("amd-1", "amd64", &[]), not_ready, starting, dedicated];
        let names: Vec<String> = candidates(&Placement::default(), &nodes)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(names, ["linux/amd64", "linux/arm64", "linux/s390x"]);
    }

    #[test]
    fn a_cordon_repels_only_pods_that_do_not_tolerate_it() {
        let mut cordoned = node("arm-1", "arm64", &[]);
        cordoned.unschedulable = true;
        let mut cordoned_and_tainted = node("arm-2", "s390x", &[]);
        cordoned_and_tainted.unschedulable = true;
        cordoned_and_tainted.taints = vec![Taint {
            key: ARCH_LABEL.into(),
            value: Some("s390x".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }];
        let nodes = vec![node("amd-1", "amd64", &[]), cordoned, cordoned_and_tainted];
        let tolerating = |key: Option<&str>, effect: Option<&str>| Placement {
            tolerations: vec![Toleration {
                key: key.map(str::to_string),
                operator: Some("Exists".into()),
                effect: effect.map(str::to_string),
                ..Toleration::default()
            }],
            ..Placement::default()
        };
        let cases: Vec<(Placement, Vec<&str>)> = vec![
            (Placement::default(), vec!["linux/amd64"]),
            // As the DaemonSet controller writes it.
            (
                tolerating(Some(UNSCHEDULABLE_TAINT), Some("NoSchedule")),
                vec!["linux/amd64", "linux/arm64"],
            ),
            (
                tolerating(Some(UNSCHEDULABLE_TAINT), None),
                vec!["linux/amd64", "linux/arm64"],
            ),
            (
                tolerating(None, Some("NoSchedule")),
                vec!["linux/amd64", "linux/arm64", "linux/s390x"],
            ),
            // The cordon is a NoSchedule taint: a NoExecute toleration does not cover it.
            (
                tolerating(Some(UNSCHEDULABLE_TAINT), Some("NoExecute")),
                vec!["linux/amd64"],
            ),
            (
                tolerating(Some("other"), Some("NoSchedule")),
                vec!["linux/amd64"],
            ),
        ];
        assert_candidates(&cases, &nodes);
    }

    /// A pod bound by `nodeName` runs on that node whatever its taints, cordon and labels; a
    /// name archgate does not know could be any node the selector admits, as on a static list.
    #[test]
    fn a_bound_pod_runs_on_its_node_or_any_when_the_name_is_unknown() {
        let mut arm = node("arm-1", "arm64", &[]);
        arm.unschedulable = true;
        arm.taints = vec![Taint {
            key: ARCH_LABEL.into(),
            value: Some("arm64".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }];
        let real = vec![node("amd-1", "amd64", &[]), arm];
        let static_list = static_nodes(&["linux/amd64", "linux/arm64"]);
        let bound = |name: &str, arch: Option<&str>| Placement {
            node_name: Some(name.into()),
            node_selector: arch
                .map(|a| (ARCH_LABEL.to_string(), a.to_string()))
                .into_iter()
                .collect(),
            ..Placement::default()
        };
        let cases: Vec<(Placement, &[NodeView], Vec<&str>)> = vec![
            (bound("arm-1", None), &real, vec!["linux/arm64"]),
            (bound("amd-1", None), &real, vec!["linux/amd64"]),
            // Labels do not move a pod that is already on its node.
            (bound("arm-1", Some("amd64")), &real, vec!["linux/arm64"]),
            (
                bound("new-1", None),
                &real,
                vec!["linux/amd64", "linux/arm64"],
            ),
            (bound("new-1", Some("arm64")), &real, vec!["linux/arm64"]),
            (
                bound("any", None),
                &static_list,
                vec!["linux/amd64", "linux/arm64"],
            ),
            (
                bound("any", Some("arm64")),
                &static_list,
                vec!["linux/arm64"],
            ),
        ];
        for (placement, nodes, want) in cases {
            assert_eq!(names(&candidates(&placement, nodes)), want, "{placement:?}");
        }
        let nowhere = bound("new-1", Some("riscv64"));
        assert!(candidates(&nowhere, &real).is_empty());
        assert_eq!(unplaceable(&nowhere, &real), Unplaceable::NoMatch);
    }

    #[test]
    fn static_windows_builds_and_runtimes() {
        let mut legacy_amd64 = Platform::parse("linux/amd64").unwrap();
        legacy_amd64.runtime = RuntimeMatcher::Containerd17;
        let nodes: Vec<NodeView> = [
            Platform::parse("windows(10.0.17763)/amd64").unwrap(),
            Platform::parse("windows(10.0.20348)/amd64").unwrap(),
            Platform::parse("linux/amd64").unwrap(),
            legacy_amd64.clone(),
            legacy_amd64.pulled_with(RuntimeMatcher::Containerd17),
        ]
        .iter()
        .map(NodeView::synthetic)
        .collect();
        let build = |b: &str| Placement {
            node_selector: [(WINDOWS_BUILD_LABEL.to_string(), b.to_string())].into(),
            ..Placement::default()
        };
        let shown = |placement: &Placement| -> Vec<String> {
            candidates(placement, &nodes)
                .iter()
                .map(|p| format!("{} {}", p.node_name(), p.runtime))
                .collect()
        };
        // The strict amd64 node decides for both amd64 nodes; the builds stay apart.
        assert_eq!(
            shown(&Placement::default()),
            [
                "linux/amd64 strict",
                "windows(10.0.17763)/amd64 strict",
                "windows(10.0.20348)/amd64 strict"
            ]
        );
        // The build label narrows Windows nodes; Linux nodes do not have it.
        assert_eq!(
            shown(&build("10.0.20348")),
            ["windows(10.0.20348)/amd64 strict"]
        );
        let only_legacy = [NodeView::synthetic(
            &Platform::parse("linux/amd64")
                .unwrap()
                .pulled_with(RuntimeMatcher::Containerd17),
        )];
        let kept = candidates(&Placement::default(), &only_legacy);
        assert_eq!(kept[0].runtime, RuntimeMatcher::Containerd17);
    }

    #[test]
    fn pin_hint_names_only_labels_that_tell_candidates_apart() {
        let parse = |list: &[&str]| -> Vec<Platform> {
            list.iter().map(|p| Platform::parse(p).unwrap()).collect()
        };
        let cases: Vec<(Vec<Platform>, &str, Option<&str>)> = vec![
            (
                parse(&["linux/amd64", "linux/arm64"]),
                "linux/arm64",
                Some("pin it: nodeSelector kubernetes.io/arch: arm64"),
            ),
            (
                parse(&["linux/amd64", "windows/amd64"]),
                "linux/amd64",
                Some("pin it: nodeSelector kubernetes.io/os: linux, kubernetes.io/arch: amd64"),
            ),
            (
                parse(&["windows(10.0.17763)/amd64", "windows(10.0.20348)/amd64"]),
                "windows(10.0.17763)/amd64",
                Some(
                    "pin it: nodeSelector kubernetes.io/arch: amd64, node.kubernetes.io/windows-build: 10.0.17763",
                ),
            ),
            (
                parse(&["linux/arm/v6", "linux/arm/v7"]),
                "linux/arm/v7",
                None,
            ),
            (parse(&["linux/amd64", "linux/arm64"]), "linux/s390x", None),
        ];
        for (list, runs_on, want) in cases {
            let refs: Vec<&Platform> = list.iter().collect();
            let runs_on = Platform::parse(runs_on).unwrap();
            let hint = pin_hint(&refs, |c| c == &runs_on);
            assert_eq!(hint.as_deref(), want, "{list:?}");
        }
    }
}
