//! Pods and the pod templates of the built-in workload kinds.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{LocalObjectReference, NodeAffinity, Toleration};
use serde::Deserialize;
use serde_json::Value;

use crate::platform::Platform;

use super::{ExtractError, ExtractOptions, Extraction, Location, Placement, Target, object_name};
use crate::subject::{Kind, Workload};

mod view;
pub(crate) use view::SpecView;

/// The parts of a pod spec archgate reads, with k8s-openapi types for each part. serde skips
/// everything else (volumes, probes, resources, ...) without building it: on the review hot path
/// a whole `PodSpec` cost more than the rest of the review together. Names, images and env
/// entries are borrowed from the object they are read from; a target copies what it keeps.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec<'a> {
    #[serde(borrow)]
    containers: Vec<Container<'a>>,
    #[serde(borrow)]
    init_containers: Option<Vec<Container<'a>>>,
    #[serde(borrow)]
    ephemeral_containers: Option<Vec<Container<'a>>>,
    node_selector: Option<BTreeMap<String, String>>,
    affinity: Option<Affinity>,
    tolerations: Option<Vec<Toleration>>,
    image_pull_secrets: Option<Vec<LocalObjectReference>>,
    service_account_name: Option<String>,
    node_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    image: Option<Cow<'a, str>>,
    #[serde(borrow)]
    env: Option<Vec<EnvEntry<'a>>>,
    /// Read only to tell whether Tekton's own lookup wrote `TEKTON_PLATFORM_COMMANDS`.
    #[serde(borrow)]
    command: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    args: Option<Vec<Cow<'a, str>>>,
}

/// An env entry as extraction reads it: the name and a literal value. Not k8s-openapi's
/// `EnvVar`, whose `valueFrom` (field and resource references, often on every container) would be
/// built on every review for nothing; the API server has checked its shape already.
#[derive(Deserialize)]
struct EnvEntry<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    value: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Affinity {
    node_affinity: Option<NodeAffinity>,
}

/// Targets for every container, init container and ephemeral container of the pod spec at `path`.
pub fn extract(
    kind: Kind,
    path: &[&str],
    object: &Value,
    options: &ExtractOptions,
) -> Result<Extraction, ExtractError> {
    let name = object_name(object);
    let error = |reason: String| ExtractError {
        kind: kind.to_string(),
        name: name.clone(),
        reason,
    };
    let spec_value = path.iter().try_fold(object, |v, key| v.get(key));
    let Some(spec_value) = spec_value else {
        return Err(error(format!("it has no {}", path.join("."))));
    };
    let mut spec = PodSpec::deserialize(spec_value).map_err(|e| error(e.to_string()))?;
    // The API server refuses such a pod or template before any webhook sees it; a file that
    // holds one would otherwise pass `check` with nothing checked.
    if spec.containers.is_empty() {
        return Err(error(format!(
            "{} is empty",
            [path, &["containers"]].concat().join(".")
        )));
    }
    if kind == Kind::Workload(Workload::DaemonSet) {
        add_daemon_pod_tolerations(&mut spec);
    }
    // Findings in a Pod say `container "x"`; in a workload they name the template's owner.
    let owner = (kind != Kind::Pod).then(|| format!("{kind} {name}"));
    let placement = placement(&mut spec, kind == Kind::Pod && options.admitted_pods);
    Ok(Extraction {
        targets: targets(spec, placement, owner, options.trust_tekton_platforms),
        ..Extraction::default()
    })
}

/// The DaemonSet controller adds tolerations to every pod it creates, whatever the template says
/// (pkg/controller/daemon/util/daemonset_util.go, `AddOrUpdateDaemonPodTolerations`): its pods
/// run on cordoned nodes, so a template is checked against them. The others it adds are for the
/// condition taints, which keep no pod away here (`scheduling::PASSING_TAINTS`).
fn add_daemon_pod_tolerations(spec: &mut PodSpec) {
    spec.tolerations
        .get_or_insert_with(Vec::new)
        .push(Toleration {
            key: Some(crate::scheduling::UNSCHEDULABLE_TAINT.to_string()),
            operator: Some("Exists".to_string()),
            effect: Some("NoSchedule".to_string()),
            ..Toleration::default()
        });
}

/// The scheduling part of a pod spec, moved out of it (the spec is read once per extraction).
/// `admitted`: a Pod past the API server's admission, whose pull secrets are final.
fn placement(spec: &mut PodSpec, admitted: bool) -> Placement {
    Placement {
        node_selector: spec.node_selector.take().unwrap_or_default(),
        required_affinity: spec
            .affinity
            .take()
            .and_then(|a| a.node_affinity)
            .and_then(|n| n.required_during_scheduling_ignored_during_execution),
        tolerations: spec.tolerations.take().unwrap_or_default(),
        // Bound by name, every container runs on that node, not only ephemeral ones
        // (see `scheduling::bound_to`). The API server treats "" as unset.
        node_name: spec.node_name.take().filter(|n| !n.is_empty()),
        pull_secrets: spec
            .image_pull_secrets
            .take()
            .into_iter()
            .flatten()
            .map(|s| s.name)
            .collect(),
        service_account: spec.service_account_name.take().filter(|n| !n.is_empty()),
        pull_secrets_final: admitted,
        pin_at: Vec::new(),
        platforms: None,
    }
}

/// One target per container image of a pod spec, in the order the kubelet starts them.
fn targets(
    spec: PodSpec,
    placement: Placement,
    owner: Option<String>,
    trust_tekton: bool,
) -> Vec<Target> {
    let placement = Arc::new(placement);
    let mut out = Vec::new();
    // `container "x"`, or `init container "x"`: the kubelet's own words for where it failed.
    let mut push = |init: bool,
                    name: &str,
                    image: Option<&Cow<'_, str>>,
                    placement: &Arc<Placement>,
                    known: Option<Vec<Platform>>| {
        if let Some(image) = image {
            let mut location = Location::container(owner.clone(), name);
            if init {
                location.scope = format!("init {}", location.scope);
            }
            out.push(Target {
                location,
                image: image.to_string(),
                placement: placement.clone(),
                known_platforms: known,
            });
        }
    };
    for c in spec.init_containers.iter().flatten() {
        push(
            true,
            &c.name,
            c.image.as_ref(),
            &placement,
            tekton_platforms(c, trust_tekton),
        );
    }
    for c in &spec.containers {
        push(
            false,
            &c.name,
            c.image.as_ref(),
            &placement,
            tekton_platforms(c, trust_tekton),
        );
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        // Ephemeral containers join the pod where it runs: its `nodeName` pins them as it pins
        // the others.
        push(false, &c.name, c.image.as_ref(), &placement, None);
    }
    out
}

/// The env var of a TaskRun pod's step containers that names each platform the image provides.
const PLATFORM_COMMANDS: &str = "TEKTON_PLATFORM_COMMANDS";

/// The command of every step container in a TaskRun's pod: Tekton's entrypoint binary
/// (tektoncd/pipeline `pkg/pod/entrypoint.go`, `entrypointBinary`).
const TEKTON_ENTRYPOINT: &str = "/tekton/bin/entrypoint";

/// Tekton's entrypoint resolution stores, in the step containers of a TaskRun's pod, a JSON map
/// from each platform the image provides to its command (`TEKTON_PLATFORM_COMMANDS`). Where Tekton
/// wrote it, it is the registry's answer already, so no lookup is needed; anywhere else it is the
/// author's claim, not a fact. Tekton wrote it only in a pod the Tekton controller created
/// (`trusted`) and only where [`tekton_looked_up`] holds; a step's own env can carry the name too.
fn tekton_platforms(c: &Container, trusted: bool) -> Option<Vec<Platform>> {
    if !trusted || !tekton_looked_up(c) {
        return None;
    }
    // The kubelet gives a repeated name its last value, and Tekton appends its entry after the
    // step's own: the last entry is the one the entrypoint reads, and Tekton's.
    let value = c
        .env
        .as_deref()?
        .iter()
        .rev()
        .find(|e| e.name == PLATFORM_COMMANDS)?
        .value
        .as_deref()?;
    let map: serde_json::Map<String, Value> = serde_json::from_str(value).ok()?;
    let platforms: Vec<Platform> = map
        .keys()
        .filter_map(|k| {
            let mut parts = k.split('/');
            let (os, arch) = (parts.next()?, parts.next()?);
            Some(Platform::new(os, arch, parts.next()))
        })
        .collect();
    (!platforms.is_empty()).then_some(platforms)
}

/// Did Tekton look this container's image up itself? It does so only for a step that names no
/// command: it pins the image by digest and appends `TEKTON_PLATFORM_COMMANDS`
/// (`pkg/pod/entrypoint_lookup.go`, `resolveEntrypoints`), and the step's container then runs
/// Tekton's entrypoint with no `-entrypoint` flag before `--`, the one case where the entrypoint
/// reads the variable (`cmd/entrypoint/main.go`). A step that names its command gets
/// `-entrypoint` and no variable from Tekton; sidecars and init containers are not `step-`.
fn tekton_looked_up(c: &Container) -> bool {
    let is_step = c.name.starts_with("step-")
        && matches!(c.command.as_deref(), Some([only]) if only == TEKTON_ENTRYPOINT);
    // Any spelling Go's flag package reads counts as naming a command.
    let names_command = |arg: &Cow<'_, str>| {
        let flag = arg.trim_start_matches('-');
        arg.starts_with('-') && (flag == "entrypoint" || flag.starts_with("entrypoint="))
    };
    let mut flags = c.args.iter().flatten().take_while(|a| *a != "--");
    is_step && !flags.any(names_command)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Pod read from the API server is past the ServiceAccount admission plugin: its pull
    /// secrets are final. A template (its pods are not created yet) and a Pod in a `check` file
    /// (never admitted) are not.
    #[test]
    fn only_an_admitted_pods_pull_secrets_are_final() {
        let spec = json!({"containers": [{"name": "app", "image": "a"}]});
        let pod = json!({"kind": "Pod", "spec": spec});
        let deployment = json!({"kind": "Deployment", "spec": {"template": {"spec": spec}}});
        let admitted = ExtractOptions {
            admitted_pods: true,
            ..ExtractOptions::default()
        };
        let final_of = |kind: Kind, path: &[&str], object: &Value, options: &ExtractOptions| {
            super::extract(kind, path, object, options).unwrap().targets[0]
                .placement
                .pull_secrets_final
        };
        let (pod_kind, deployment_kind) = (Kind::of("", "Pod"), Kind::of("apps", "Deployment"));
        let (pod_kind, deployment_kind) = (pod_kind.unwrap(), deployment_kind.unwrap());
        let template = ["spec", "template", "spec"];
        assert!(final_of(pod_kind, &["spec"], &pod, &admitted));
        assert!(!final_of(
            pod_kind,
            &["spec"],
            &pod,
            &ExtractOptions::default()
        ));
        assert!(!final_of(
            deployment_kind,
            &template,
            &deployment,
            &admitted
        ));
    }
    use crate::scheduling::{self, NodeView};
    use k8s_openapi::api::core::v1::Taint;
    use serde_json::json;

    /// The pod extractor as the pipeline calls it, trusting `TEKTON_PLATFORM_COMMANDS` as it does
    /// for the Tekton controller.
    fn extract(kind: &str, object: &Value) -> Result<Extraction, ExtractError> {
        let group = match kind {
            "Pod" | "ReplicationController" => "",
            "Job" | "CronJob" => "batch",
            _ => "apps",
        };
        let kind = Kind::of(group, kind).expect("a pod kind");
        let options = ExtractOptions {
            trust_tekton_platforms: true,
            ..ExtractOptions::default()
        };
        crate::workload::extract(kind, object, &crate::workload::EmptyCatalog, &options)
    }

    fn images(ex: &Extraction) -> Vec<(String, String)> {
        ex.targets
            .iter()
            .map(|t| (t.location.to_string(), t.image.clone()))
            .collect()
    }

    #[test]
    fn pod_lists_init_regular_and_ephemeral_containers() {
        let pod = json!({
            "metadata": {"name": "web"},
            "spec": {
                "nodeName": "node-a",
                "nodeSelector": {"kubernetes.io/arch": "amd64"},
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [{"name": "app", "image": "nginx:1.27"}, {"name": "side", "image": "envoy"}],
                "ephemeralContainers": [{"name": "debug", "image": "alpine"}]
            }
        });
        let ex = extract("Pod", &pod).unwrap();
        assert_eq!(
            images(&ex),
            vec![
                ("init container \"init\"".to_string(), "busybox".to_string()),
                ("container \"app\"".to_string(), "nginx:1.27".to_string()),
                ("container \"side\"".to_string(), "envoy".to_string()),
                ("container \"debug\"".to_string(), "alpine".to_string()),
            ]
        );
        assert_eq!(
            ex.targets[0].placement.node_selector["kubernetes.io/arch"],
            "amd64"
        );
        // nodeName binds the whole pod: init, regular and ephemeral containers alike.
        for target in &ex.targets {
            assert_eq!(
                target.placement.node_name.as_deref(),
                Some("node-a"),
                "{}",
                target.location
            );
        }
    }

    /// A real node `name` of `linux/ARCH`, with `taints` (`key=value:Effect`) and the cordon.
    fn node(name: &str, arch: &str, taints: &[&str], cordoned: bool) -> NodeView {
        let mut node = NodeView::synthetic(&Platform::parse(&format!("linux/{arch}")).unwrap());
        node.name = name.to_string();
        node.synthetic = false;
        node.unschedulable = cordoned;
        node.taints = taints
            .iter()
            .map(|t| {
                let (key_value, effect) = t.split_once(':').unwrap();
                let (key, value) = key_value.split_once('=').unwrap_or((key_value, ""));
                Taint {
                    key: key.to_string(),
                    value: (!value.is_empty()).then(|| value.to_string()),
                    effect: effect.to_string(),
                    time_added: None,
                }
            })
            .collect();
        node
    }

    /// Every target's candidate platforms on `nodes`, as `location: platforms`.
    fn candidates_of(ex: &Extraction, nodes: &[NodeView]) -> Vec<String> {
        ex.targets
            .iter()
            .map(|t| {
                let platforms: Vec<String> = scheduling::candidates(&t.placement, nodes)
                    .iter()
                    .map(Platform::to_string)
                    .collect();
                format!("{}: {}", t.location, platforms.join(", "))
            })
            .collect()
    }

    /// `nodeName` pins every container to that node: an amd64-only image must not pass because
    /// the arm64 node it is bound to is tainted (GKE taints Arm nodes
    /// `kubernetes.io/arch=arm64:NoSchedule`) or cordoned, leaving only the amd64 nodes.
    #[test]
    fn node_name_pins_every_container_to_that_node() {
        let nodes = [
            node("amd-1", "amd64", &[], false),
            node(
                "arm-1",
                "arm64",
                &["kubernetes.io/arch=arm64:NoSchedule"],
                false,
            ),
            node("arm-2", "arm64", &[], true),
        ];
        let spec = |node_name: &str| {
            json!({
                "nodeName": node_name,
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [{"name": "app", "image": "amd64-only"}],
                "ephemeralContainers": [{"name": "debug", "image": "alpine"}]
            })
        };
        for bound in ["arm-1", "arm-2"] {
            let pod = json!({"metadata": {"name": "web"}, "spec": spec(bound)});
            assert_eq!(
                candidates_of(&extract("Pod", &pod).unwrap(), &nodes),
                [
                    "init container \"init\": linux/arm64",
                    "container \"app\": linux/arm64",
                    "container \"debug\": linux/arm64",
                ],
                "{bound}"
            );
            let template = json!({"spec": spec(bound)});
            let deployment = json!({"metadata": {"name": "web"}, "spec": {"template": template}});
            let seen = candidates_of(&extract("Deployment", &deployment).unwrap(), &nodes);
            assert!(
                seen.iter().all(|c| c.ends_with(": linux/arm64")),
                "{bound}: {seen:?}"
            );
        }
        // Unbound (or "", which the API server treats as unset), the scheduler keeps it off both.
        for unbound in [json!({}), json!({"nodeName": ""})] {
            let mut pod = json!({"metadata": {"name": "web"}, "spec": spec("")});
            pod["spec"]["nodeName"] = unbound["nodeName"].clone();
            let seen = candidates_of(&extract("Pod", &pod).unwrap(), &nodes);
            assert!(
                seen.iter().all(|c| c.ends_with(": linux/amd64")),
                "{unbound}: {seen:?}"
            );
        }
    }

    /// The DaemonSet controller adds tolerations to every pod it makes, the cordon's among them:
    /// a DaemonSet's new image will run on a cordoned arm64 node, a Deployment's will not. A node
    /// under pressure counts for both (the taint clears on its own).
    #[test]
    fn a_daemonset_template_tolerates_what_its_controller_adds() {
        let nodes = [
            node("amd-1", "amd64", &[], false),
            node(
                "arm-1",
                "arm64",
                &["node.kubernetes.io/unschedulable:NoSchedule"],
                true,
            ),
            node(
                "s390x-1",
                "s390x",
                &["node.kubernetes.io/memory-pressure:NoSchedule"],
                false,
            ),
            node("ppc-1", "ppc64le", &["dedicated:NoSchedule"], false),
        ];
        let with = |kind: &str| {
            let template = json!({"spec": {
                "containers": [{"name": "agent", "image": "amd64-only"}]
            }});
            let object = json!({"metadata": {"name": "agent"}, "spec": {"template": template}});
            candidates_of(&extract(kind, &object).unwrap(), &nodes)
        };
        assert_eq!(
            with("DaemonSet"),
            ["DaemonSet agent, container \"agent\": linux/amd64, linux/arm64, linux/s390x"]
        );
        assert_eq!(
            with("Deployment"),
            ["Deployment agent, container \"agent\": linux/amd64, linux/s390x"]
        );
    }

    #[test]
    fn workload_templates_name_their_owner() {
        let template = json!({"spec": {"containers": [{"name": "side", "image": "envoy"}]}});
        for kind in [
            "Deployment",
            "StatefulSet",
            "DaemonSet",
            "ReplicaSet",
            "ReplicationController",
            "Job",
        ] {
            let obj = json!({"metadata": {"name": "web"}, "spec": {"template": template}});
            let ex = extract(kind, &obj).unwrap();
            assert_eq!(
                images(&ex),
                vec![(
                    format!("{kind} web, container \"side\""),
                    "envoy".to_string()
                )]
            );
        }
        let cron = json!({"metadata": {"name": "nightly"}, "spec": {"jobTemplate": {"spec": {"template": template}}}});
        let ex = extract("CronJob", &cron).unwrap();
        assert_eq!(images(&ex)[0].0, "CronJob nightly, container \"side\"");
    }

    #[test]
    fn tekton_platform_commands_answer_without_a_lookup() {
        let env = r#"{"linux/amd64":["/ko-app/x"],"linux/arm64/v8":["/ko-app/x"]}"#;
        // As Tekton builds a step that named no command (its image looked up and pinned).
        let pod = json!({"metadata": {"name": "run-pod"}, "spec": {"containers": [
            {"name": "step-build", "image": "gcr.io/x/y@sha256:abc",
             "command": ["/tekton/bin/entrypoint"],
             "args": ["-wait_file", "/tekton/downward/ready", "-post_file", "/tekton/run/0/out", "--", "build"],
             "env": [{"name": "TEKTON_PLATFORM_COMMANDS", "value": env}]},
            {"name": "step-plain", "image": "busybox"}
        ]}});
        let ex = extract("Pod", &pod).unwrap();
        let known: Vec<String> = ex.targets[0]
            .known_platforms
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(known, vec!["linux/amd64", "linux/arm64/v8"]);
        assert_eq!(ex.targets[1].known_platforms, None);

        // Written by anyone else, the variable is only a claim: the registry is asked.
        let untrusted =
            super::extract(Kind::Pod, &["spec"], &pod, &ExtractOptions::default()).unwrap();
        assert!(
            untrusted
                .targets
                .iter()
                .all(|t| t.known_platforms.is_none())
        );
    }

    /// Before: the first `TEKTON_PLATFORM_COMMANDS` of any container in a pod the controller
    /// created was trusted, and a step's env (written by whoever wrote the Task) comes first, so a
    /// Task could vouch for an image that lacks the node's platform. Now only the entry Tekton's
    /// own lookup appended counts.
    #[test]
    fn a_tasks_own_platform_commands_are_not_tektons_answer() {
        let tekton = r#"{"linux/arm64":["/app"]}"#;
        let claim = r#"{"linux/amd64":["/app"],"linux/arm64":["/app"]}"#;
        let env = |values: &[&str]| -> Value {
            values
                .iter()
                .map(|v| json!({"name": "TEKTON_PLATFORM_COMMANDS", "value": v}))
                .collect()
        };
        let entrypoint = json!(["/tekton/bin/entrypoint"]);
        let container = |name: &str, command: &Value, args: Value, values: &[&str]| {
            json!({"name": name, "image": "registry.example/team/tool@sha256:abc",
                   "command": command, "args": args, "env": env(values)})
        };
        let known = |c: Value| -> Option<Vec<String>> {
            let pod = json!({"metadata": {"name": "run-pod"}, "spec": {"containers": [c]}});
            let ex = extract("Pod", &pod).unwrap();
            ex.targets[0]
                .known_platforms
                .as_ref()
                .map(|ps| ps.iter().map(|p| p.to_string()).collect())
        };
        let looked_up = json!(["-post_file", "/tekton/run/0/out", "--", "run"]);
        // The step's own entry first, Tekton's appended after it: Tekton's is read.
        assert_eq!(
            known(container(
                "step-s",
                &entrypoint,
                looked_up.clone(),
                &[claim, tekton]
            )),
            Some(vec!["linux/arm64".to_string()])
        );
        // A step that names its command: Tekton looked nothing up and wrote nothing.
        for flag in [
            json!(["-post_file", "/x", "-entrypoint", "/app", "--"]),
            json!(["--entrypoint=/app", "--"]),
        ] {
            assert_eq!(
                known(container("step-s", &entrypoint, flag, &[claim])),
                None
            );
        }
        // `-entrypoint` after `--` is the step's own argument, not the entrypoint's flag.
        let own_arg = json!(["-post_file", "/x", "--", "-entrypoint"]);
        assert!(known(container("step-s", &entrypoint, own_arg, &[tekton])).is_some());
        // Not a step running Tekton's entrypoint: a sidecar, or a container with another command.
        assert_eq!(
            known(container(
                "sidecar-s",
                &entrypoint,
                looked_up.clone(),
                &[claim]
            )),
            None
        );
        assert_eq!(
            known(container("step-s", &json!(["/app"]), looked_up, &[claim])),
            None
        );
    }

    #[test]
    fn other_kinds_are_not_pods_and_broken_pods_are_errors() {
        let err = extract(
            "Deployment",
            &json!({"metadata": {"name": "x"}, "spec": {}}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("spec.template.spec"), "{err}");
        let err = extract(
            "Pod",
            &json!({"metadata": {"name": "x"}, "spec": {"containers": "nope"}}),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read Pod \"x\""),
            "{err}"
        );
    }
}
