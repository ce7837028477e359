//! Pods running now on a node whose platform their image lacks (the "exec format error" ones):
//! the digest each container runs (`status.containerStatuses[].imageID`) resolved through the
//! resolver, against the platform of the Node the pod is bound to.

use serde_json::Value;
use tokio::time::Instant;

use crate::cluster::ClusterView;
use crate::pipeline::Exemptions;
use crate::policy::{self, WrongNode};
use crate::reference::ImageRef;
use crate::resolver::Resolver;
use crate::scheduling::NodeView;
use crate::workload::Placement;

/// One container of a pod bound to a node, with the digest the node pulled.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub container: String,
    /// The image as the pod spec writes it (the status repeats it normalised).
    pub image: String,
    /// `repository@sha256:...`: what the runtime pulled.
    pub image_id: Option<ImageRef>,
    pub node: String,
}

/// What was found about one running container.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Wrong(WrongNode),
    /// Why the container could not be checked, worded by the policy.
    NotChecked(String),
}

/// The containers of `pod` that run (or keep restarting) on its node. A pod that has finished
/// (`Succeeded`, `Failed`) runs nothing; init containers have run their course either way.
pub fn containers(pod: &Value) -> Vec<Running> {
    let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Vec::new();
    };
    if matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) {
        return Vec::new();
    }
    let written = |name: &str| {
        pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .and_then(|c| c["image"].as_str())
            .map(str::to_string)
    };
    pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|status| {
            let id = status["imageID"].as_str().filter(|i| !i.is_empty())?;
            let container = status["name"].as_str()?.to_string();
            let image = written(&container)
                .or_else(|| status["image"].as_str().map(str::to_string))
                .unwrap_or_default();
            Some(Running {
                image_id: pulled(id),
                container,
                image,
                node: node.to_string(),
            })
        })
        .collect()
}

/// The repository digest in an `imageID`, as runtimes write it: `repo@sha256:...` (containerd,
/// CRI-O) or `docker-pullable://repo@sha256:...` (dockershim). A bare `sha256:...` (an image
/// built or loaded on the node, never pulled) names no repository to ask: `None`.
pub fn pulled(image_id: &str) -> Option<ImageRef> {
    let id = image_id
        .split_once("://")
        .map_or(image_id, |(_, rest)| rest);
    let (_, digest) = id.split_once('@')?;
    if !digest.starts_with("sha256:") {
        return None;
    }
    ImageRef::parse(id).ok()
}

/// Checks each running container of `pod` against its node: `None` when the image provides
/// the node's platform, or when there is nothing to check (no such node, an exempt image).
pub async fn check(
    pod: &Value,
    label: &str,
    nodes: &[NodeView],
    resolver: &Resolver,
    cluster: &dyn ClusterView,
    exemptions: &Exemptions,
    deadline: Instant,
) -> Vec<(Running, Found)> {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let placement = Placement {
        pull_secrets: pod["spec"]["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect(),
        service_account: pod["spec"]["serviceAccountName"]
            .as_str()
            .map(str::to_string),
        // A running pod's list is what the kubelet pulls with, whatever its account holds now.
        pull_secrets_final: true,
        ..Placement::default()
    };
    let credentials = cluster.credentials(namespace, &placement);
    let mut found = Vec::new();
    for running in containers(pod) {
        // A node archgate cannot place (no platform labels or report) says nothing to check.
        let Some(node) = nodes.iter().find(|n| n.name == running.node) else {
            continue;
        };
        let at = format!("{label}, container {:?}", running.container);
        let Some(image) = &running.image_id else {
            let why = "the node reports no registry digest for it (built or loaded on the node)";
            found.push((
                running.clone(),
                Found::NotChecked(policy::running_not_checked(&at, &running.image, why)),
            ));
            continue;
        };
        if exemptions.covers(&running.image, Some(&image.canonical())) {
            continue;
        }
        let answer =
            tokio::time::timeout_at(deadline, resolver.resolve(image, credentials.as_ref())).await;
        let outcome = match answer {
            Ok(Ok(resolution)) => {
                let runs = resolution
                    .platforms
                    .iter()
                    .any(|have| have.satisfies(&node.platform));
                if runs {
                    continue;
                }
                Found::Wrong(WrongNode {
                    at,
                    image: running.image.clone(),
                    node: node.name.clone(),
                    node_platform: node.platform.clone(),
                    available: resolution.platforms.to_vec(),
                })
            }
            Ok(Err(e)) => Found::NotChecked(policy::running_not_checked(
                &at,
                &running.image,
                &e.summary(),
            )),
            Err(_) => Found::NotChecked(policy::running_not_checked(
                &at,
                &running.image,
                "the registry did not answer in time",
            )),
        };
        found.push((running, outcome));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn image_ids_as_runtimes_write_them() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let cases = [
            (
                format!("docker.io/library/nginx@{digest}"),
                Some("docker.io/library/nginx"),
            ),
            (
                format!("docker-pullable://nginx@{digest}"),
                Some("docker.io/library/nginx"),
            ),
            (
                format!("127.0.0.1:5000/team/app@{digest}"),
                Some("127.0.0.1:5000/team/app"),
            ),
            (digest.clone(), None),
            (format!("docker://{digest}"), None),
            ("".to_string(), None),
            ("not a reference@sha256:zz".to_string(), None),
        ];
        for (id, want) in cases {
            let got = pulled(&id);
            assert_eq!(
                got.as_ref()
                    .map(|r| format!("{}/{}", r.registry(), r.repository())),
                want.map(str::to_string),
                "{id}"
            );
            if let Some(r) = got {
                assert_eq!(r.digest(), Some(digest.as_str()));
            }
        }
    }

    #[test]
    fn only_containers_of_a_bound_unfinished_pod() {
        let digest = format!("sha256:{}", "b".repeat(64));
        let pod = |phase: &str, node: Option<&str>| {
            json!({
                "metadata": {"name": "p", "namespace": "ns"},
                "spec": {"nodeName": node, "containers": [
                    {"name": "app", "image": "team/app:v1"},
                    {"name": "side", "image": "team/side:v1"}]},
                "status": {"phase": phase, "containerStatuses": [
                    {"name": "app", "image": "docker.io/team/app:v1",
                     "imageID": format!("docker.io/team/app@{digest}")},
                    {"name": "side", "image": "docker.io/team/side:v1", "imageID": ""}]},
            })
        };
        let running = containers(&pod("Running", Some("arm-1")));
        assert_eq!(
            running.len(),
            1,
            "a container not yet pulled has no imageID"
        );
        assert_eq!(running[0].container, "app");
        assert_eq!(
            running[0].image, "team/app:v1",
            "the image as the spec writes it"
        );
        assert_eq!(running[0].node, "arm-1");
        assert!(running[0].image_id.is_some());
        assert!(containers(&pod("Succeeded", Some("arm-1"))).is_empty());
        assert!(containers(&pod("Running", None)).is_empty());
    }
}
