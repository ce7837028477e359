//! What only the API server knows: nodes, namespace modes, pull credentials, Tekton resources.
//!
//! The review path reads this through [`ClusterView`] and never calls the API server itself.
//! [`StaticCluster`] serves a fixed platform list with the webhook's own credentials, for
//! `--platform linux/amd64` runs and for running without a cluster. [`ClusterState`] serves
//! `--platform auto` from kube reflector stores that [`watch`] keeps in sync; tests build the same
//! view from stores they fill through kube's store `Writer` ([`ClusterState::from_stores`]).

mod reflect;
mod state;

use std::sync::Arc;

pub use reflect::{Health, Reduce, drive, watch};
#[cfg(test)]
pub(crate) use state::test_node;
pub use state::{ClusterState, PullSecretStores, Stores, TektonKind, TektonStore, node_view};

use crate::platform::Platform;
use crate::policy::Mode;
use crate::resolver::Credentials;
use crate::scheduling::NodeView;
use crate::workload::{Catalog, EmptyCatalog, Placement};
use tracing::warn;

/// Pull secrets merged for one pod at most. The kubelet has no bound, but every named Secret is
/// parsed and merged into the pod's keyring on a review, so a pod naming thousands of them (or a
/// PipelineRun with a thousand task runs naming them) would make one review do that much work.
/// Names past the bound are not used and the log says so: a pull they would have opened is then
/// refused, which follows `--on-registry-error` like any refusal, never a silent allow.
pub const MAX_PULL_SECRETS: usize = 64;
/// Credential entries merged for one pod at most (a 1 MiB Secret can hold ~20,000): a Secret
/// that would take the keyring past this is not used, with a log line as above.
pub const MAX_PULL_ENTRIES: usize = 4096;

/// What the kubelet pulls with: the pod's `imagePullSecrets`, or when it names none its
/// ServiceAccount's (`account_secrets` of the account's name), as `secret` finds them, in one
/// keyring (`MakeDockerKeyring`), then archgate's own after them (`UnionDockerKeyring`, with the
/// node's credentials in the kubelet's place). Every credential matching an image is kept, in
/// the order the kubelet tries them (see `resolver::credentials`).
///
/// The kubelet itself reads only the pod's list. The account's secrets reach it through the
/// ServiceAccount admission plugin, which copies them into a pod at creation only when its list
/// is empty (`len(pod.Spec.ImagePullSecrets) == 0`, plugin/pkg/admission/serviceaccount). So a
/// template or run naming a secret of its own never gets the account's, and a Pod the API
/// server has admitted already carries them: its list is final (`pull_secrets_final`), and an
/// account that gained secrets since the pod was created does not lend them.
pub fn pull_credentials(
    own: &Arc<Credentials>,
    namespace: &str,
    placement: &Placement,
    account_secrets: impl FnOnce(&str) -> Vec<String>,
    secret: impl Fn(&str) -> Option<Arc<Credentials>>,
) -> Arc<Credentials> {
    let from_account;
    let names = if placement.pull_secrets.is_empty() && !placement.pull_secrets_final {
        let account = placement
            .service_account
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        from_account = account_secrets(account);
        &from_account
    } else {
        &placement.pull_secrets
    };
    let mut merged: Option<Credentials> = None;
    let mut used = std::collections::HashSet::new();
    // An entry named "" counts for the plugin's rule above, and the kubelet skips it.
    for name in names.iter().filter(|n| !n.is_empty()) {
        if !used.insert(name.as_str()) {
            continue;
        }
        if used.len() > MAX_PULL_SECRETS {
            warn!(
                namespace,
                bound = MAX_PULL_SECRETS,
                "a pod names more pull secrets than archgate merges: the rest are not used"
            );
            break;
        }
        let Some(found) = secret(name) else { continue };
        let merged = merged.get_or_insert_with(Credentials::default);
        if merged.len() + found.len() > MAX_PULL_ENTRIES {
            warn!(
                namespace,
                secret = name.as_str(),
                bound = MAX_PULL_ENTRIES,
                "pull secret not used: the pod's secrets hold more registry entries than archgate merges"
            );
            continue;
        }
        merged.add(&found);
    }
    match merged {
        None => own.clone(),
        Some(mut credentials) => {
            credentials.then(own);
            Arc::new(credentials)
        }
    }
}

/// Nodes per list request when listing them once.
const NODE_PAGE: u32 = 500;
/// Pages of Nodes read at most (a million nodes): a server that keeps handing out continue
/// tokens cannot keep the command listing forever.
const MAX_NODE_PAGES: usize = 2000;

/// The cluster's Nodes as scheduling sees them, listed once, page by page: for commands run by
/// hand (`check --platform auto`); the webhook and `scan` watch them instead. Nodes whose
/// platform nothing states are left out, as the watch leaves them out.
pub async fn list_nodes(client: &kube::Client) -> Result<Vec<NodeView>, kube::Error> {
    let api = kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone());
    let mut params = kube::api::ListParams::default().limit(NODE_PAGE);
    let mut nodes = Vec::new();
    for _ in 0..MAX_NODE_PAGES {
        let page = api.list(&params).await?;
        nodes.extend(page.items.iter().filter_map(node_view));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    Ok(nodes)
}

/// The cluster state a review reads; cheap to call on every review.
pub trait ClusterView: Send + Sync {
    /// Nodes (real or synthetic) that pods may be scheduled on.
    fn nodes(&self) -> Arc<Vec<NodeView>>;
    /// A namespace's `archgate.io/mode` label, if set and valid.
    fn namespace_mode(&self, namespace: &str) -> Option<Mode>;
    /// Credentials for pulls on behalf of a pod in `namespace` with these `imagePullSecrets` and
    /// service account: the webhook's own, plus (with --pull-secrets) the pod's. Never another
    /// namespace's.
    fn credentials(&self, namespace: &str, placement: &Placement) -> Arc<Credentials>;
    /// Tekton Pipelines, Tasks and StepActions by name.
    fn catalog(&self) -> Arc<dyn Catalog>;
    /// Whether every watch has synced once (readiness).
    fn ready(&self) -> bool;
}

/// A fixed platform list and the webhook's own credentials.
pub struct StaticCluster {
    nodes: Arc<Vec<NodeView>>,
    credentials: Arc<Credentials>,
    catalog: Arc<dyn Catalog>,
}

impl StaticCluster {
    pub fn new(platforms: &[Platform], credentials: Credentials) -> Self {
        Self {
            nodes: Arc::new(platforms.iter().map(NodeView::synthetic).collect()),
            credentials: Arc::new(credentials),
            catalog: Arc::new(EmptyCatalog),
        }
    }
}

impl ClusterView for StaticCluster {
    fn nodes(&self) -> Arc<Vec<NodeView>> {
        self.nodes.clone()
    }
    fn namespace_mode(&self, _namespace: &str) -> Option<Mode> {
        None
    }
    fn credentials(&self, _namespace: &str, _placement: &Placement) -> Arc<Credentials> {
        self.credentials.clone()
    }
    fn catalog(&self) -> Arc<dyn Catalog> {
        self.catalog.clone()
    }
    fn ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::Auth;
    use base64::Engine;
    use oci_client::secrets::RegistryAuth;

    fn secret(entries: &[(&str, &str)]) -> Arc<Credentials> {
        let auths: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(key, user)| {
                let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw"));
                (key.to_string(), serde_json::json!({ "auth": pair }))
            })
            .collect();
        let json = serde_json::json!({ "auths": auths }).to_string();
        Arc::new(Credentials::from_docker_config(json.as_bytes(), "test").unwrap())
    }

    /// Before, the first source of a host won and the rest were dropped. The kubelet puts a
    /// pod's secrets in one keyring (a path key of a later secret before a host key of an
    /// earlier one; one key's credentials in the order the secrets are listed), the node's
    /// after it, and tries them all in turn.
    #[test]
    fn pull_secrets_then_the_own_credentials_in_the_kubelets_order() {
        let secrets = [
            ("old", secret(&[("r.io", "old")])),
            ("new", secret(&[("r.io", "new"), ("r.io/team", "team")])),
        ];
        let own = secret(&[("r.io/team/app", "own"), ("r.io", "own-host")]);
        let lookup = |name: &str| {
            let found = secrets.iter().find(|(n, _)| *n == name);
            found.map(|(_, c)| c.clone())
        };
        let placement = Placement {
            pull_secrets: ["old", "new", "old"].map(String::from).to_vec(),
            ..Placement::default()
        };
        let pod = pull_credentials(&own, "ns", &placement, |_| Vec::new(), lookup);
        let users = |repository: &str| -> Vec<String> {
            let pulls = pod.pulls_for("r.io", repository);
            let users = pulls.into_iter().map(|(auth, _)| match auth {
                Auth::Direct(RegistryAuth::Basic(user, _)) => user,
                other => panic!("{other:?}"),
            });
            users.collect()
        };
        assert_eq!(users("other/app"), ["old", "new", "own-host"]);
        // At most MAX_CANDIDATES: the own host key, fifth, is not tried.
        assert_eq!(users("team/app"), ["team", "old", "new", "own"]);
    }
}
