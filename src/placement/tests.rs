//! The merge on Pod shapes the API server really sends, checked twice: the patch as written, and
//! the patched Pod read back through extraction and scheduling, which must admit exactly the
//! platforms every image provides.

use std::collections::HashMap;

use serde_json::json;

use super::*;
use crate::resolver::{Resolution, ResolveError};
use crate::scheduling::{self, NodeView};
use crate::subject::Kind;
use crate::workload::{self, EmptyCatalog, ExtractOptions};

fn p(s: &str) -> Platform {
    Platform::parse(s).unwrap()
}

fn nodes(list: &[&str]) -> Vec<NodeView> {
    list.iter().map(|s| NodeView::synthetic(&p(s))).collect()
}

/// What the pipeline would hand over: every container's image with the candidates the Pod's
/// placement admits and the platforms `images` says the registry has.
fn check(pod: &Value, nodes: &[NodeView], images: &HashMap<&str, Vec<&str>>) -> Vec<Checked> {
    let extraction =
        workload::extract(Kind::Pod, pod, &EmptyCatalog, &ExtractOptions::default()).unwrap();
    extraction
        .targets
        .into_iter()
        .map(|target| {
            let platforms: Vec<Platform> = images[target.image.as_str()]
                .iter()
                .map(|s| {
                    // Registries say arm64/v8; keep the spelling as a registry would.
                    let parts: Vec<&str> = s.split('/').collect();
                    Platform::new(parts[0], parts[1], parts.get(2).copied())
                })
                .collect();
            Checked {
                candidates: scheduling::candidates(&target.placement, nodes).into(),
                unplaceable: None,
                target,
                outcome: Outcome::Resolved(Resolution {
                    digest: None,
                    platforms: platforms.into(),
                }),
            }
        })
        .collect()
}

/// Where the patched Pod may go, as archgate's scheduling model reads it.
fn candidates_after(pod: &Value, steering: &Steering, nodes: &[NodeView]) -> (Value, Vec<String>) {
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &steering.patch.0).unwrap();
    let extraction = workload::extract(
        Kind::Pod,
        &patched,
        &EmptyCatalog,
        &ExtractOptions::default(),
    )
    .unwrap();
    let mut all: Vec<String> = extraction
        .targets
        .iter()
        .flat_map(|t| scheduling::candidates(&t.placement, nodes))
        .map(|p| p.to_string())
        .collect();
    all.sort();
    all.dedup();
    (patched, all)
}

fn steered(plan: Plan) -> Steering {
    match plan {
        Plan::Steer(s) => s,
        Plan::Leave(why) => panic!("expected a patch, left alone: {why:?}"),
    }
}

fn left(plan: Plan) -> Leave {
    match plan {
        Plan::Leave(why) => why,
        Plan::Steer(s) => panic!("expected no patch, got {:?}", s.patch),
    }
}

const ARM_ONLY: &str = "10.34.0.202:5000/cerebral/ai-base:cuda";
const MULTI: &str = "nginx:1.27";

fn images() -> HashMap<&'static str, Vec<&'static str>> {
    HashMap::from([
        (ARM_ONLY, vec!["linux/arm64/v8"]),
        (MULTI, vec!["linux/amd64", "linux/arm64/v8"]),
        (
            "mcr.microsoft.com/windows/nanoserver:ltsc2022",
            vec!["windows/amd64"],
        ),
        ("example.com/agent:1", vec!["linux/arm64", "windows/amd64"]),
        ("example.com/armv7:1", vec!["linux/arm/v7"]),
    ])
}

/// A Pod as the ReplicaSet controller creates it for a Deployment (trimmed of status).
fn replicaset_pod(image: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "api-7d9c5b6f4-",
            "namespace": "default",
            "labels": {"app": "api", "pod-template-hash": "7d9c5b6f4"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9c5b6f4",
                "uid": "5d0f1a2e-8f57-4c57-9a0e-2f1b8b6c1a11", "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "containers": [
                {"name": "api", "image": image, "ports": [{"containerPort": 8080}],
                 "resources": {"requests": {"cpu": "100m"}}},
                {"name": "proxy", "image": MULTI},
            ],
            "restartPolicy": "Always",
            "serviceAccountName": "default",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300},
            ],
        },
    })
}

#[test]
fn a_pod_without_affinity_gets_one_and_the_annotation_path_is_escaped() {
    let pod = replicaset_pod(ARM_ONLY);
    let nodes = nodes(&["linux/amd64", "linux/arm64"]);
    let s = steered(plan(&pod, &check(&pod, &nodes, &images()), &nodes));
    let patch = serde_json::to_value(&s.patch).unwrap();
    // The OS too, though every node is Linux today: the patch states where the image runs, so
    // a Windows arm64 node that joins later stays out.
    assert_eq!(
        patch,
        json!([
            {"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [
                        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                        {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]},
                    ]},
                ]},
            }}},
            {"op": "add", "path": "/metadata/annotations", "value": {"archgate.io/placement": s.note}},
        ])
    );
    assert_eq!(
        s.note,
        format!(
            "archgate added required node affinity kubernetes.io/os In (linux) and \
             kubernetes.io/arch In (arm64): container \"api\" image \"{ARM_ONLY}\" is missing linux/amd64 (available: linux/arm64)"
        )
    );
    let (patched, after) = candidates_after(&pod, &s, &nodes);
    assert_eq!(after, ["linux/arm64"]);
    assert_eq!(patched["spec"]["tolerations"], pod["spec"]["tolerations"]);

    // With annotations present, one member is added: `/` in the key is `~1` in the pointer.
    let mut annotated = pod.clone();
    annotated["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/restartedAt": "x"});
    let s = steered(plan(
        &annotated,
        &check(&annotated, &nodes, &images()),
        &nodes,
    ));
    let last = serde_json::to_value(s.patch.0.last().unwrap()).unwrap();
    assert_eq!(last["path"], "/metadata/annotations/archgate.io~1placement");
    let (patched, _) = candidates_after(&annotated, &s, &nodes);
    assert_eq!(
        patched["metadata"]["annotations"],
        json!({"kubectl.kubernetes.io/restartedAt": "x", "archgate.io/placement": s.note})
    );
}

#[test]
fn every_level_of_an_existing_affinity_is_kept() {
    let nodes = nodes(&["linux/amd64", "linux/arm64"]);
    let anti = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app": "api"}}}},
    ]}});
    let preferred = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": {"matchExpressions": [
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
        ]}},
    ]}});
    for (affinity, path) in [
        (anti, "/spec/affinity/nodeAffinity"),
        (
            preferred,
            "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
        ),
        (json!(null), "/spec/affinity"),
    ] {
        let mut pod = replicaset_pod(ARM_ONLY);
        pod["spec"]["affinity"] = affinity.clone();
        let s = steered(plan(&pod, &check(&pod, &nodes, &images()), &nodes));
        let first = serde_json::to_value(&s.patch.0[0]).unwrap();
        assert_eq!(first["path"], path, "{affinity}");
        let (patched, after) = candidates_after(&pod, &s, &nodes);
        assert_eq!(after, ["linux/arm64"], "{affinity}");
        // What was there is still there: a preference on arch is not a constraint and stays.
        for (key, value) in affinity.as_object().into_iter().flatten() {
            for (inner, v) in value.as_object().unwrap() {
                assert_eq!(&patched["spec"]["affinity"][key][inner], v);
            }
        }
    }
}

#[test]
fn the_restriction_is_added_to_every_ored_term() {
    // Two terms: a zone, or one node by name (matchFields, no matchExpressions at all).
    let mut pod = replicaset_pod(ARM_ONLY);
    pod["spec"]["affinity"] = json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-west-1a"]},
            ]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["big-1"]}]},
        ]},
    }});
    let mut nodes = nodes(&["linux/amd64", "linux/arm64"]);
    for (node, zone) in nodes.iter_mut().zip(["eu-west-1a", "eu-west-1a"]) {
        node.synthetic = false;
        node.labels
            .insert("topology.kubernetes.io/zone".into(), zone.into());
    }
    nodes[0].name = "big-1".into();
    let s = steered(plan(&pod, &check(&pod, &nodes, &images()), &nodes));
    // Two requirements (os and arch, both always) appended to the first term, a list for the
    // second.
    let paths: Vec<String> = s.patch.0[..3]
        .iter()
        .map(|op| op.path().to_string())
        .collect();
    let terms = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms";
    assert_eq!(
        paths,
        [
            format!("{terms}/0/matchExpressions/-"),
            format!("{terms}/0/matchExpressions/-"),
            format!("{terms}/1/matchExpressions")
        ]
    );
    let (patched, after) = candidates_after(&pod, &s, &nodes);
    assert_eq!(after, ["linux/arm64"]);
    let patched_terms = &patched["spec"]["affinity"]["nodeAffinity"][REQUIRED]["nodeSelectorTerms"];
    let os = json!({"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]});
    let arch = json!({"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]});
    assert_eq!(patched_terms[0]["matchExpressions"][1], os);
    assert_eq!(patched_terms[0]["matchExpressions"][2], arch);
    assert_eq!(patched_terms[1]["matchExpressions"], json!([os, arch]));
    assert_eq!(
        patched_terms[1]["matchFields"],
        pod["spec"]["affinity"]["nodeAffinity"][REQUIRED]["nodeSelectorTerms"][1]["matchFields"]
    );
}

#[test]
fn one_term_names_os_and_arch_or_one_term_per_os() {
    // Linux and Windows nodes of one architecture: only the OS tells them apart today, but the
    // architecture is named too (the_restriction_keeps_out_nodes_that_join_later): the
    // runnable candidates' only, never wider than what archgate has checked.
    let nodes = nodes(&["linux/amd64", "windows/amd64"]);
    let pod = replicaset_pod(MULTI);
    let s = steered(plan(&pod, &check(&pod, &nodes, &images()), &nodes));
    assert_eq!(
        s.restriction.to_string(),
        "kubernetes.io/os In (linux) and kubernetes.io/arch In (amd64)"
    );
    assert_eq!(candidates_after(&pod, &s, &nodes).1, ["linux/amd64"]);

    // linux/arm64 and windows/amd64 fit, linux/amd64 does not: one term per OS.
    let nodes = nodes_with_terms();
    let mut pod = replicaset_pod("example.com/agent:1");
    pod["spec"]["containers"].as_array_mut().unwrap().pop();
    pod["spec"]["affinity"] = json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["legacy"]}]},
        ]},
    }});
    let s = steered(plan(&pod, &check(&pod, &nodes, &images()), &nodes));
    assert_eq!(
        s.restriction.to_string(),
        "(kubernetes.io/os In (linux) and kubernetes.io/arch In (arm64)) or \
         (kubernetes.io/os In (windows) and kubernetes.io/arch In (amd64))"
    );
    let (patched, after) = candidates_after(&pod, &s, &nodes);
    assert_eq!(after, ["linux/arm64", "windows/amd64"]);
    let terms = patched["spec"]["affinity"]["nodeAffinity"][REQUIRED]["nodeSelectorTerms"]
        .as_array()
        .unwrap();
    assert_eq!(terms.len(), 2);
    assert!(
        terms
            .iter()
            .all(|t| t["matchExpressions"][0]["key"] == "pool")
    );
}

fn nodes_with_terms() -> Vec<NodeView> {
    nodes(&["linux/amd64", "linux/arm64", "windows/amd64"])
}

#[test]
fn an_existing_constraint_or_a_fit_or_the_unknown_is_left_alone() {
    let nodes = nodes(&["linux/amd64", "linux/arm64"]);
    // The author said something about arch: the validator decides.
    let mut pod = replicaset_pod(ARM_ONLY);
    pod["spec"]["affinity"] = json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "NotIn", "values": ["s390x"]},
            ]},
        ]},
    }});
    assert_eq!(
        left(plan(&pod, &check(&pod, &nodes, &images()), &nodes)),
        Leave::Constrained
    );
    // A nodeSelector on arch that no image fits: nowhere to steer to.
    let mut pod = replicaset_pod(ARM_ONLY);
    pod["spec"]["nodeSelector"] = json!({"kubernetes.io/arch": "amd64"});
    assert_eq!(
        left(plan(&pod, &check(&pod, &nodes, &images()), &nodes)),
        Leave::Nowhere
    );
    // Every image runs everywhere.
    let pod = replicaset_pod(MULTI);
    assert_eq!(
        left(plan(&pod, &check(&pod, &nodes, &images()), &nodes)),
        Leave::Fits
    );
    // An arm64-only image in an amd64-only cluster: the validator denies.
    let amd = self::nodes(&["linux/amd64"]);
    let pod = replicaset_pod(ARM_ONLY);
    assert_eq!(
        left(plan(&pod, &check(&pod, &amd, &images()), &amd)),
        Leave::Nowhere
    );
    // An image the registry did not answer for: its platforms are unknown.
    let pod = replicaset_pod(ARM_ONLY);
    let mut checked = check(&pod, &nodes, &images());
    checked[1].outcome = Outcome::Failed(ResolveError::Timeout {
        registry: "docker.io".into(),
    });
    assert_eq!(left(plan(&pod, &checked, &nodes)), Leave::Unknown);
    assert_eq!(left(plan(&pod, &[], &nodes)), Leave::Fits);
}

#[test]
fn variants_that_labels_cannot_tell_apart_are_left_alone() {
    let nodes = nodes(&["linux/arm/v6", "linux/arm/v7"]);
    let mut pod = replicaset_pod("example.com/armv7:1");
    pod["spec"]["containers"].as_array_mut().unwrap().pop();
    assert_eq!(
        left(plan(&pod, &check(&pod, &nodes, &images()), &nodes)),
        Leave::Indistinct
    );
}

#[test]
fn an_affinity_past_the_bound_is_left_alone() {
    let nodes = nodes_with_terms();
    let mut pod = replicaset_pod("example.com/agent:1");
    pod["spec"]["containers"].as_array_mut().unwrap().pop();
    let term = json!({"matchExpressions": [{"key": "pool", "operator": "Exists"}]});
    let terms: Vec<Value> = (0..MAX_TERMS / 2 + 1).map(|_| term.clone()).collect();
    pod["spec"]["affinity"] = json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms},
    }});
    assert_eq!(
        left(plan(&pod, &check(&pod, &nodes, &images()), &nodes)),
        Leave::TooComplex
    );
    // Not a Pod's shape (the API server would have refused it, but nothing is assumed).
    let mut pod = replicaset_pod(ARM_ONLY);
    let nodes = self::nodes(&["linux/amd64", "linux/arm64"]);
    let checked = check(&pod, &nodes, &images());
    pod["spec"]["affinity"] = json!("oops");
    assert_eq!(left(plan(&pod, &checked, &nodes)), Leave::TooComplex);
}

#[test]
fn tekton_task_pods_are_steered_like_any_pod() {
    // The shape of a TaskRun pod: owned by the TaskRun, with the affinity assistant's
    // podAffinity, steps as containers.
    let pod = json!({
        "metadata": {
            "name": "build-x-clone-pod",
            "namespace": "ci",
            "labels": {"tekton.dev/taskRun": "build-x-clone", "app.kubernetes.io/managed-by": "tekton-pipelines"},
            "annotations": {"pipeline.tekton.dev/release": "v1.0.0"},
            "ownerReferences": [{"apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                "name": "build-x-clone", "uid": "0b9e", "controller": true}],
        },
        "spec": {
            "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "affinity-assistant-1"}},
                 "topologyKey": "kubernetes.io/hostname"},
            ]}},
            "initContainers": [{"name": "prepare", "image": MULTI}],
            "containers": [{"name": "step-build", "image": ARM_ONLY}],
        },
    });
    let meta: ObjectMeta = serde_json::from_value(pod["metadata"].clone()).unwrap();
    assert_eq!(never_steered(&meta, &pod["spec"]), None);
    let nodes = nodes(&["linux/amd64", "linux/arm64"]);
    let s = steered(plan(&pod, &check(&pod, &nodes, &images()), &nodes));
    let (patched, after) = candidates_after(&pod, &s, &nodes);
    assert_eq!(after, ["linux/arm64"]);
    assert_eq!(
        patched["spec"]["affinity"]["podAffinity"],
        pod["spec"]["affinity"]["podAffinity"]
    );
    assert_eq!(
        patched["metadata"]["annotations"]["pipeline.tekton.dev/release"],
        "v1.0.0"
    );
}

#[test]
fn daemonset_mirror_and_bound_pods_are_never_steered() {
    let meta = |value: Value| -> ObjectMeta { serde_json::from_value(value).unwrap() };
    let owned = |kind: &str, api_version: &str| {
        meta(json!({"ownerReferences": [
            {"apiVersion": api_version, "kind": kind, "name": "x", "uid": "1"},
        ]}))
    };
    let spec = json!({"containers": []});
    let cases = [
        (
            owned("DaemonSet", "apps/v1"),
            spec.clone(),
            Some(Leave::DaemonSet),
        ),
        (owned("ReplicaSet", "apps/v1"), spec.clone(), None),
        // Some CRD's DaemonSet is not the built-in one.
        (
            owned("DaemonSet", "apps.kruise.io/v1alpha1"),
            spec.clone(),
            None,
        ),
        (
            meta(json!({"annotations": {"kubernetes.io/config.mirror": "abc"}})),
            spec.clone(),
            Some(Leave::Mirror),
        ),
        (
            ObjectMeta::default(),
            json!({"nodeName": "node-a", "containers": []}),
            Some(Leave::NodeName),
        ),
        (
            ObjectMeta::default(),
            json!({"nodeName": "", "containers": []}),
            None,
        ),
    ];
    for (meta, spec, want) in cases {
        assert_eq!(never_steered(&meta, &spec), want, "{meta:?} {spec}");
    }
}

#[test]
fn the_annotation_names_a_bounded_number_of_findings() {
    let findings: Vec<String> = (0..7).map(|i| format!("finding {i}")).collect();
    let text = policy::steered("kubernetes.io/arch In (arm64)", &findings, 4);
    assert_eq!(
        text,
        "archgate added required node affinity kubernetes.io/arch In (arm64): \
         finding 0; finding 1; finding 2; finding 3; and 3 more"
    );
}

#[test]
fn windows_builds_that_labels_do_not_carry_are_left_alone() {
    // Two Windows Server builds: an ltsc2019 image runs on neither arch nor os label alone.
    let build = |version: &str| {
        let mut platform = p("windows/amd64");
        platform.os_version = Some(version.into());
        NodeView::synthetic(&platform)
    };
    let nodes = vec![build("10.0.17763.5329"), build("10.0.20348.2227")];
    let mut pod = replicaset_pod("mcr.microsoft.com/windows/nanoserver:ltsc2022");
    pod["spec"]["containers"].as_array_mut().unwrap().pop();
    let mut checked = check(&pod, &nodes, &images());
    let mut ltsc2019 = p("windows/amd64");
    ltsc2019.os_version = Some("10.0.17763.5329".into());
    checked[0].outcome = Outcome::Resolved(Resolution {
        digest: None,
        platforms: vec![ltsc2019].into(),
    });
    assert_eq!(
        checked[0].candidates.len(),
        2,
        "{:?}",
        checked[0].candidates
    );
    assert_eq!(left(plan(&pod, &checked, &nodes)), Leave::Indistinct);
}

/// A real node of `platform` named `name` in zone `zone`.
fn zoned(platform: &Platform, name: &str, zone: &str) -> NodeView {
    let mut node = NodeView::synthetic(platform);
    node.synthetic = false;
    node.name = name.into();
    node.labels
        .insert("topology.kubernetes.io/zone".into(), zone.into());
    node
}

/// A required term with no requirements matches no node (core/v1 NodeSelectorTerm: "A null or
/// empty node selector term matches no objects"), so the patch leaves it as it is, on both the
/// append path and the one-term-per-OS path: a patch only ever narrows.
///
/// Before: the restriction was appended to `{}` too, turning a term that matched nothing into
/// "every node of the runnable platforms, in any zone": the zone-a pod could land on
/// windows/arm64 in zone b (append path), or on a Windows node of another build in zone b (the
/// product path).
#[test]
fn an_empty_term_still_matches_no_node_after_the_patch() {
    let zone_a = json!({"matchExpressions": [
        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]},
    ]});
    let with_terms = |image: &str, empty: &Value| {
        let mut pod = replicaset_pod(image);
        pod["spec"]["affinity"] = json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [empty.clone(), zone_a.clone()],
            },
        }});
        pod
    };
    let patched_terms = |patched: &Value| {
        patched["spec"]["affinity"]["nodeAffinity"][REQUIRED]["nodeSelectorTerms"].clone()
    };

    // One term to AND in: appended to each term that has requirements.
    let nodes = vec![
        zoned(&p("linux/amd64"), "a-amd", "a"),
        zoned(&p("linux/arm64"), "a-arm", "a"),
        zoned(&p("windows/arm64"), "b-win-arm", "b"),
    ];
    for empty in [json!({}), json!({"matchExpressions": []})] {
        let pod = with_terms(ARM_ONLY, &empty);
        let checked = check(&pod, &nodes, &images());
        let before: Vec<String> = checked[0]
            .candidates
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(before, ["linux/amd64", "linux/arm64"], "{empty}");
        let s = steered(plan(&pod, &checked, &nodes));
        let (patched, after) = candidates_after(&pod, &s, &nodes);
        assert_eq!(
            after,
            ["linux/arm64"],
            "{empty}: {}",
            patched_terms(&patched)
        );
        assert_eq!(patched_terms(&patched)[0], empty);
    }

    // One term per OS: the terms are multiplied, the empty one kept once as it was.
    let mut build = p("windows/amd64");
    build.os_version = Some("10.0.20348".into());
    let nodes = vec![
        zoned(&p("linux/amd64"), "a-amd", "a"),
        zoned(&p("linux/arm64"), "a-arm", "a"),
        zoned(&p("windows/amd64"), "a-win", "a"),
        zoned(&build, "b-win", "b"),
    ];
    let mut pod = with_terms("example.com/agent:1", &json!({}));
    pod["spec"]["containers"].as_array_mut().unwrap().pop();
    let s = steered(plan(&pod, &check(&pod, &nodes, &images()), &nodes));
    assert_eq!(s.restriction.terms.len(), 2);
    let (patched, after) = candidates_after(&pod, &s, &nodes);
    assert_eq!(
        after,
        ["linux/arm64", "windows/amd64"],
        "{}",
        patched_terms(&patched)
    );
    assert_eq!(patched_terms(&patched)[0], json!({}));
}

/// The restriction names both the OS and the architecture the images run on, even where the
/// nodes of today differ in only one of them: a node that joins later (cluster-autoscaler and
/// Karpenter pick node types from the pod's own requirements) is kept out unless it runs them.
///
/// Before: linux/amd64 and windows/amd64 nodes and a linux/amd64-only image gave only
/// `kubernetes.io/os In (linux)`; a linux/arm64 node added while the pod was Pending admitted it,
/// and the image could not run there (exec format error).
#[test]
fn the_restriction_keeps_out_nodes_that_join_later() {
    let amd_only = "example.com/amd:1";
    let mut images = images();
    images.insert(amd_only, vec!["linux/amd64"]);
    let now = nodes(&["linux/amd64", "windows/amd64"]);
    let mut pod = replicaset_pod(amd_only);
    pod["spec"]["containers"].as_array_mut().unwrap().pop();
    let s = steered(plan(&pod, &check(&pod, &now, &images), &now));
    let later = nodes(&[
        "linux/amd64",
        "linux/arm64",
        "windows/amd64",
        "windows/arm64",
    ]);
    let (_, after) = candidates_after(&pod, &s, &later);
    assert_eq!(after, ["linux/amd64"], "restriction {}", s.restriction);

    // amd64 and arm64 Linux nodes today: a Windows arm64 node added later stays out too.
    let now = nodes(&["linux/amd64", "linux/arm64"]);
    let pod = replicaset_pod(ARM_ONLY);
    let s = steered(plan(&pod, &check(&pod, &now, &self::images()), &now));
    let (_, after) = candidates_after(&pod, &s, &later);
    assert_eq!(after, ["linux/arm64"], "restriction {}", s.restriction);

    // A chart's `kubernetes.io/os: linux` where the OS does not narrow is no choice of
    // platform: the pod is still steered, the OS requirement ANDed with the selector.
    let mut pod = replicaset_pod(ARM_ONLY);
    pod["spec"]["nodeSelector"] = json!({"kubernetes.io/os": "linux"});
    let s = steered(plan(&pod, &check(&pod, &now, &self::images()), &now));
    assert_eq!(candidates_after(&pod, &s, &later).1, ["linux/arm64"]);
}

/// A node as the reflector sees it: `labels`, and the kubelet's report when `info` is set.
fn real_node(name: &str, labels: &[(&str, &str)], info: Option<(&str, &str)>) -> NodeView {
    use k8s_openapi::api::core::v1::NodeSystemInfo;
    let info = info.map(|(os, arch)| NodeSystemInfo {
        operating_system: os.into(),
        architecture: arch.into(),
        container_runtime_version: "containerd://2.0.2".into(),
        ..NodeSystemInfo::default()
    });
    crate::cluster::node_view(&crate::cluster::test_node(name, labels, info)).unwrap()
}

/// archgate reads a node's platform from `kubernetes.io/*`, else `beta.kubernetes.io/*`, else
/// `status.nodeInfo`, normalised (`aarch64` is arm64), but the patch selects on the
/// `kubernetes.io/*` labels with normalised values. The patch is read back against the nodes:
/// where it would not admit exactly the nodes the images run on, the pod is left alone
/// (`unselectable`) for the validating webhook to decide.
///
/// Before: the pod was steered to `kubernetes.io/arch In (arm64)`, which no node carrying its
/// platform only in beta labels, only in nodeInfo, or as `aarch64` matches: created, and Pending
/// forever (the validator only warns of no candidates).
#[test]
fn a_patch_that_would_not_select_the_nodes_the_images_run_on_is_not_made() {
    let amd = || {
        real_node(
            "amd",
            &[(OS_LABEL, "linux"), (ARCH_LABEL, "amd64")],
            Some(("linux", "amd64")),
        )
    };
    let ga = || {
        real_node(
            "arm-ga",
            &[(OS_LABEL, "linux"), (ARCH_LABEL, "arm64")],
            Some(("linux", "arm64")),
        )
    };
    let beta = real_node(
        "arm-beta",
        &[
            ("beta.kubernetes.io/os", "linux"),
            ("beta.kubernetes.io/arch", "arm64"),
        ],
        None,
    );
    let info = real_node("arm-info", &[], Some(("linux", "arm64")));
    let alias = real_node(
        "arm-alias",
        &[(OS_LABEL, "linux"), (ARCH_LABEL, "aarch64")],
        None,
    );
    let pod = replicaset_pod(ARM_ONLY);
    for nodes in [
        vec![amd(), beta.clone()],
        vec![amd(), info.clone()],
        vec![amd(), alias.clone()],
        // The labelled node alone would be reached, the other arm64 node never.
        vec![amd(), ga(), beta],
    ] {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        match plan(&pod, &check(&pod, &nodes, &images()), &nodes) {
            Plan::Leave(why) => assert_eq!(why.label(), "unselectable", "{names:?}"),
            Plan::Steer(s) => {
                let (_, after) = candidates_after(&pod, &s, &nodes);
                panic!(
                    "{names:?}: steered with {}; the patched pod's candidates: {after:?}",
                    s.restriction
                );
            }
        }
    }
    // kubectl shows why, whole.
    let warning = policy::unselectable_warning();
    assert!(
        warning.contains("beta.kubernetes.io") && !warning.ends_with('…'),
        "{warning}"
    );
    // Labelled the GA way: steered, and the patched pod reaches every arm64 node.
    let nodes = vec![amd(), ga()];
    let s = steered(plan(&pod, &check(&pod, &nodes, &images()), &nodes));
    assert_eq!(candidates_after(&pod, &s, &nodes).1, ["linux/arm64"]);
}
