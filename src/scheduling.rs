//! Which platforms a pod could land on: its placement matched against nodes.
//!
//! The scheduler knows nothing of images, so every node a pod's constraints admit is a place it may
//! run. A static platform list (`--platform linux/amd64`) is treated as one synthetic node per
//! platform carrying only the `kubernetes.io/os` and `kubernetes.io/arch` labels; live clusters
//! supply real nodes with every label, taint and the cordon flag.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};

use crate::platform::Platform;
use crate::workload::Placement;

pub const OS_LABEL: &str = "kubernetes.io/os";
pub const ARCH_LABEL: &str = "kubernetes.io/arch";

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
        let labels = BTreeMap::from([
            (OS_LABEL.to_string(), platform.os.clone()),
            (ARCH_LABEL.to_string(), platform.architecture.clone()),
        ]);
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

/// Would the scheduler place a pod with `placement` on `node`?
pub fn admits(placement: &Placement, node: &NodeView) -> bool {
    if let Some(name) = &placement.node_name {
        return node.synthetic || &node.name == name;
    }
    if node.unschedulable {
        return false;
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
    selector_ok && affinity_ok && tolerates_all(&placement.tolerations, &node.taints)
}

fn label_unknown(node: &NodeView, key: &str) -> bool {
    node.synthetic && key != OS_LABEL && key != ARCH_LABEL
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
fn tolerates_all(tolerations: &[Toleration], taints: &[Taint]) -> bool {
    taints
        .iter()
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
    let value_ok = match toleration.operator.as_deref() {
        Some("Exists") => true,
        _ => toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    };
    key_ok && value_ok
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
    let mut out: Vec<Platform> = nodes
        .iter()
        .filter(|n| admits(placement, n))
        .map(|n| n.platform.normalized())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A selector that would make the pod admissible if every image provides `platform`: the mixed-
/// cluster hint (`pin it: nodeSelector kubernetes.io/arch: amd64`).
pub fn pin_hint(platform: &Platform) -> String {
    format!(
        "pin it: nodeSelector {ARCH_LABEL}: {}",
        platform.architecture
    )
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
        for (placement, want) in cases {
            assert_eq!(
                names(&candidates(&placement, &nodes)),
                want,
                "{placement:?}"
            );
        }
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
            (
                Placement {
                    tolerations: vec![tol(None, "Exists", None)],
                    ..Default::default()
                },
                vec!["linux/amd64", "linux/arm64", "linux/ppc64le"],
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
        for (placement, want) in cases {
            assert_eq!(
                names(&candidates(&placement, &nodes)),
                want,
                "{placement:?}"
            );
        }
    }
}
