//! [`ClusterState`]: the [`ClusterView`] of a live cluster, read from reflector stores.
//!
//! Everything here is synchronous and lock-light because it runs inside every review: the stores
//! are in-memory maps kept current by [`super::watch`], and what is expensive to derive from them
//! (node views, parsed pull secrets) is cached until the objects it came from change.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::Value;
use tracing::{debug, warn};

use super::ClusterView;
use crate::platform::{Platform, RuntimeMatcher};
use crate::policy::Mode;
use crate::resolver::{Credentials, CredentialsError};
use crate::scheduling::{ARCH_LABEL, NodeView, OS_LABEL, WINDOWS_BUILD_LABEL};
use crate::workload::{Catalog, Placement};

/// The namespace label that overrides the global mode.
pub const MODE_LABEL: &str = "archgate.io/mode";
/// Pre-1.14 spellings of the platform labels, still set by some node images and tools.
const BETA_OS_LABEL: &str = "beta.kubernetes.io/os";
const BETA_ARCH_LABEL: &str = "beta.kubernetes.io/arch";
/// Secret types that hold registry credentials, and the data key of each.
pub(crate) const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
pub(crate) const DOCKER_CFG: &str = "kubernetes.io/dockercfg";

/// The Tekton kinds a PipelineRun or TaskRun may name by reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TektonKind {
    Pipeline,
    Task,
    /// Deprecated and served as `v1beta1` only; still found on older clusters.
    ClusterTask,
    StepAction,
}

impl TektonKind {
    pub const ALL: [TektonKind; 4] = [
        Self::Pipeline,
        Self::Task,
        Self::ClusterTask,
        Self::StepAction,
    ];

    /// The kind as the extractor and [`Catalog::get`] name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pipeline => "Pipeline",
            Self::Task => "Task",
            Self::ClusterTask => "ClusterTask",
            Self::StepAction => "StepAction",
        }
    }

    /// Which API version is watched. `v1` for Pipelines and Tasks (served since Tekton 0.44, and
    /// the API server converts stored `v1beta1` objects); ClusterTasks never had a `v1`;
    /// StepActions are `v1beta1` since Tekton 0.59.
    pub fn api_resource(self) -> ApiResource {
        let (version, plural) = match self {
            Self::Pipeline => ("v1", "pipelines"),
            Self::Task => ("v1", "tasks"),
            Self::ClusterTask => ("v1beta1", "clustertasks"),
            Self::StepAction => ("v1beta1", "stepactions"),
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("tekton.dev", version, self.name()),
            plural,
        )
    }

    pub fn namespaced(self) -> bool {
        self != Self::ClusterTask
    }
}

/// One reflector store of Tekton resources.
#[derive(Clone)]
pub struct TektonStore {
    pub kind: TektonKind,
    pub store: Store<DynamicObject>,
}

/// The stores pull credentials come from; present only with `--pull-secrets`.
#[derive(Clone)]
pub struct PullSecretStores {
    pub service_accounts: Store<ServiceAccount>,
    /// Docker-config Secrets; one store per watched Secret type (see [`super::watch`]).
    pub secrets: Vec<Store<Secret>>,
}

/// Every store a [`ClusterState`] reads. [`super::watch`] fills them from the API server; tests fill
/// them through kube's store `Writer`.
#[derive(Clone)]
pub struct Stores {
    pub nodes: Store<Node>,
    pub namespaces: Store<Namespace>,
    pub pull_secrets: Option<PullSecretStores>,
    /// Empty means no Tekton lookups: every reference is reported as not found.
    pub tekton: Vec<TektonStore>,
}

/// The cluster as the reflectors last saw it.
pub struct ClusterState {
    stores: Stores,
    own: Arc<Credentials>,
    catalog: Arc<dyn Catalog>,
    nodes: RwLock<NodeCache>,
    /// A fixed platform list (`--platform linux/amd64` with cluster access): synthetic nodes, and
    /// the node store is neither watched nor waited for.
    fixed_nodes: Option<Arc<Vec<NodeView>>>,
    secrets: Mutex<HashMap<(String, String), ParsedSecret>>,
    /// (namespace, label value) pairs already warned about, so a bad label is logged once, not
    /// once per review.
    warned_modes: Mutex<HashSet<(String, String)>>,
}

/// Node views and the exact store entries they were built from.
///
/// The store replaces an object's `Arc` on every change, and holding the old `Arc`s here keeps
/// their addresses from being reused, so "every entry is pointer-identical to `seen`" means
/// "nothing changed". That check needs no allocation and no conversion; only a change rebuilds.
#[derive(Default)]
struct NodeCache {
    seen: Vec<Arc<Node>>,
    views: Arc<Vec<NodeView>>,
}

/// A pull secret parsed once per resourceVersion. `None`: unusable (already warned about).
struct ParsedSecret {
    resource_version: Option<String>,
    object: Arc<Secret>,
    credentials: Option<Arc<Credentials>>,
}

impl ClusterState {
    /// The view over `stores`, with the webhook's own `credentials` used for every pull.
    pub fn from_stores(stores: Stores, credentials: Credentials) -> Self {
        let catalog = Arc::new(StoreCatalog {
            stores: stores.tekton.clone(),
        });
        Self {
            stores,
            own: Arc::new(credentials),
            catalog,
            nodes: RwLock::new(NodeCache::default()),
            fixed_nodes: None,
            secrets: Mutex::new(HashMap::new()),
            warned_modes: Mutex::new(HashSet::new()),
        }
    }

    /// Candidate platforms from a fixed list instead of the node store; everything else (namespace
    /// modes, pull secrets, Tekton resources) still comes from the cluster.
    pub fn with_fixed_platforms(mut self, platforms: &[Platform]) -> Self {
        self.fixed_nodes = Some(Arc::new(
            platforms.iter().map(NodeView::synthetic).collect(),
        ));
        self
    }

    /// Whether the node store still holds exactly what `seen` was built from.
    fn nodes_unchanged(&self, seen: &[Arc<Node>]) -> bool {
        let index = Cell::new(0usize);
        // `find` walks the store under one read lock; it stops at the first entry that differs.
        let differs = self
            .stores
            .nodes
            .find(|node| {
                let i = index.get();
                index.set(i + 1);
                seen.get(i)
                    .is_none_or(|s| !std::ptr::eq(Arc::as_ptr(s), node))
            })
            .is_some();
        !differs && index.get() == seen.len()
    }

    /// Credentials parsed from the Secret `name` in `namespace`, if it exists and is a docker config.
    fn secret_credentials(
        &self,
        stores: &PullSecretStores,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<Credentials>> {
        let key = ObjectRef::<Secret>::new(name).within(namespace);
        let Some(secret) = stores.secrets.iter().find_map(|s| s.get(&key)) else {
            debug!(
                namespace,
                secret = name,
                "pull secret not found (or not a docker config secret)"
            );
            return None;
        };
        // The store is keyed by namespace already; checking again costs nothing and keeps a
        // credential from ever crossing namespaces should the keying change.
        if secret.metadata.namespace.as_deref() != Some(namespace) {
            return None;
        }
        let mut cache = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        let cache_key = (namespace.to_string(), name.to_string());
        if let Some(hit) = cache.get(&cache_key) {
            let same_version = hit.resource_version.is_some()
                && hit.resource_version == secret.metadata.resource_version;
            if same_version || Arc::ptr_eq(&hit.object, &secret) {
                return hit.credentials.clone();
            }
        }
        let credentials = parse_secret(&secret, namespace, name).map(Arc::new);
        if cache.len() >= prune_threshold(stores) {
            // Drop entries of Secrets that no longer exist, so deleted Secrets do not pile up.
            cache.retain(|(ns, n), _| {
                let key = ObjectRef::<Secret>::new(n).within(ns);
                stores.secrets.iter().any(|s| s.get(&key).is_some())
            });
        }
        cache.insert(
            cache_key,
            ParsedSecret {
                resource_version: secret.metadata.resource_version.clone(),
                object: secret,
                credentials: credentials.clone(),
            },
        );
        credentials
    }
}

fn prune_threshold(stores: &PullSecretStores) -> usize {
    2 * stores.secrets.iter().map(Store::len).sum::<usize>() + 64
}

/// `Credentials::from_docker_config` or `Credentials::from_dockercfg`.
type ParseConfig = fn(&[u8], &str) -> Result<Credentials, CredentialsError>;

/// A docker config Secret's credentials. Never logs the data: serde's messages can quote the
/// offending value, so a parse failure is reported without its reason.
fn parse_secret(secret: &Secret, namespace: &str, name: &str) -> Option<Credentials> {
    let kind = secret.type_.as_deref().unwrap_or_default();
    let (data_key, parse): (&str, ParseConfig) = match kind {
        DOCKER_CONFIG_JSON => (".dockerconfigjson", Credentials::from_docker_config),
        DOCKER_CFG => (".dockercfg", Credentials::from_dockercfg),
        _ => {
            debug!(
                namespace,
                secret = name,
                "secret is not of a docker config type; ignored"
            );
            return None;
        }
    };
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(data_key)) else {
        warn!(
            namespace,
            secret = name,
            key = data_key,
            "pull secret lacks its data key; ignored"
        );
        return None;
    };
    let origin = format!("secret {namespace}/{name}");
    match parse(&bytes.0, &origin) {
        Ok(credentials) => Some(credentials),
        Err(CredentialsError::Auth { host, .. }) => {
            warn!(namespace, secret = name, %host, "pull secret has a malformed auth entry; ignored");
            None
        }
        Err(_) => {
            warn!(
                namespace,
                secret = name,
                "pull secret is not a valid docker config; ignored"
            );
            None
        }
    }
}

/// What scheduling needs of a Node, or `None` for a node whose platform nothing states.
///
/// The `kubernetes.io/os`/`arch` labels are what pods select on, so they win; the kubelet's own
/// report in `status.nodeInfo` stands in when a node lacks them. The node's runtime
/// (`containerRuntimeVersion`) says how it matches image platforms, and a Windows node's build
/// (`node.kubernetes.io/windows-build`) which `os.version`s it runs. A 32-bit arm node is taken as
/// arm/v7: no label says the CPU's variant.
pub fn node_view(node: &Node) -> Option<NodeView> {
    let name = node.metadata.name.clone()?;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
    let pick = |label: &str, beta: &str, reported: Option<&String>| {
        [labels.get(label), labels.get(beta), reported]
            .into_iter()
            .flatten()
            .find(|v| !v.is_empty())
            .cloned()
    };
    let os = pick(OS_LABEL, BETA_OS_LABEL, info.map(|i| &i.operating_system));
    let arch = pick(ARCH_LABEL, BETA_ARCH_LABEL, info.map(|i| &i.architecture));
    let (Some(os), Some(arch)) = (os, arch) else {
        debug!(node = %name, "node states no platform; not a candidate");
        return None;
    };
    let mut platform = Platform::new(&os, &arch, None);
    if platform.normalized().os == "windows" {
        // The kubelet's label is `major.minor.build`; the kernel version it reports on Windows is
        // `major.minor.build.revision`, which containerd's `getWindowsOSVersion` reads the same.
        platform.os_version = [
            labels.get(WINDOWS_BUILD_LABEL),
            info.map(|i| &i.kernel_version),
        ]
        .into_iter()
        .flatten()
        .find(|v| !v.is_empty())
        .cloned();
    }
    // An unknown runtime (or none reported) is matched strictly: never admit what it may refuse.
    let runtime = info
        .map(|i| RuntimeMatcher::for_runtime_version(&i.container_runtime_version))
        .unwrap_or_default();
    let spec = node.spec.as_ref();
    Some(NodeView {
        name,
        labels,
        taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        platform: platform.pulled_with(runtime),
        synthetic: false,
    })
}

fn synced<K>(store: &Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    // `wait_until_ready` resolves once the writer has applied its first InitDone; polling it once
    // answers "has it?" without blocking.
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

impl ClusterView for ClusterState {
    fn nodes(&self) -> Arc<Vec<NodeView>> {
        if let Some(fixed) = &self.fixed_nodes {
            return fixed.clone();
        }
        {
            let cache = self.nodes.read().unwrap_or_else(|e| e.into_inner());
            if self.nodes_unchanged(&cache.seen) {
                return cache.views.clone();
            }
        }
        let mut cache = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        // Another review may have rebuilt it while this one waited for the lock.
        if self.nodes_unchanged(&cache.seen) {
            return cache.views.clone();
        }
        let seen = self.stores.nodes.state();
        let mut views: Vec<NodeView> = seen.iter().filter_map(|n| node_view(n)).collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        debug!(nodes = views.len(), "node views rebuilt");
        *cache = NodeCache {
            seen,
            views: Arc::new(views),
        };
        cache.views.clone()
    }

    fn namespace_mode(&self, namespace: &str) -> Option<Mode> {
        let ns = self.stores.namespaces.get(&ObjectRef::new(namespace))?;
        let value = ns.metadata.labels.as_ref()?.get(MODE_LABEL)?;
        match value.parse::<Mode>() {
            Ok(mode) => Some(mode),
            Err(reason) => {
                let mut warned = self.warned_modes.lock().unwrap_or_else(|e| e.into_inner());
                if warned.insert((namespace.to_string(), value.clone())) {
                    warn!(namespace, label = MODE_LABEL, %value, %reason, "namespace mode label ignored");
                }
                None
            }
        }
    }

    /// The pod's `imagePullSecrets`, or its ServiceAccount's when it names none, then the
    /// webhook's own, tried in the kubelet's order (see [`super::pull_credentials`]), so the
    /// pull is checked with what the kubelet would use.
    fn credentials(&self, namespace: &str, placement: &Placement) -> Arc<Credentials> {
        let Some(stores) = &self.stores.pull_secrets else {
            return self.own.clone();
        };
        if namespace.is_empty() {
            return self.own.clone();
        }
        let account_secrets = |account: &str| {
            let account = stores
                .service_accounts
                .get(&ObjectRef::new(account).within(namespace));
            account
                .iter()
                .flat_map(|sa| sa.image_pull_secrets.iter().flatten())
                .map(|r| r.name.clone())
                .collect()
        };
        super::pull_credentials(&self.own, namespace, placement, account_secrets, |name| {
            self.secret_credentials(stores, namespace, name)
        })
    }

    fn catalog(&self) -> Arc<dyn Catalog> {
        self.catalog.clone()
    }

    fn ready(&self) -> bool {
        let stores = &self.stores;
        (self.fixed_nodes.is_some() || synced(&stores.nodes))
            && synced(&stores.namespaces)
            && stores
                .pull_secrets
                .as_ref()
                .is_none_or(|p| synced(&p.service_accounts) && p.secrets.iter().all(synced))
            && stores.tekton.iter().all(|t| synced(&t.store))
    }
}

/// Tekton resources from reflector stores.
struct StoreCatalog {
    stores: Vec<TektonStore>,
}

impl Catalog for StoreCatalog {
    fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let tekton = self.stores.iter().find(|t| t.kind.name() == kind)?;
        let mut key = ObjectRef::new_with(name, tekton.kind.api_resource());
        if tekton.kind.namespaced() {
            key = key.within(namespace);
        }
        let object = tekton.store.get(&key)?;
        serde_json::to_value(&*object).ok()
    }
}

/// A Node as the API server shows it, for unit tests: `labels`, and the kubelet's report when
/// `info` is set.
#[cfg(test)]
pub(crate) fn test_node(
    name: &str,
    labels: &[(&str, &str)],
    info: Option<k8s_openapi::api::core::v1::NodeSystemInfo>,
) -> Node {
    use k8s_openapi::api::core::v1::NodeStatus;
    Node {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        status: info.map(|info| NodeStatus {
            node_info: Some(info),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Reduce;
    use k8s_openapi::api::core::v1::NodeSystemInfo;

    fn node(labels: &[(&str, &str)], info: NodeSystemInfo) -> Node {
        test_node("n", labels, Some(info))
    }

    fn info(os: &str, arch: &str, runtime: &str, kernel: &str) -> NodeSystemInfo {
        NodeSystemInfo {
            operating_system: os.into(),
            architecture: arch.into(),
            container_runtime_version: runtime.into(),
            kernel_version: kernel.into(),
            ..NodeSystemInfo::default()
        }
    }

    #[test]
    fn node_view_reads_runtime_and_windows_build_also_from_a_reduced_node() {
        let cases = [
            (
                node(&[], info("linux", "amd64", "containerd://1.7.13", "6.1.0")),
                "linux/amd64",
                RuntimeMatcher::Containerd17,
            ),
            (
                node(&[], info("linux", "arm64", "containerd://2.0.2", "6.1.0")),
                "linux/arm64",
                RuntimeMatcher::Strict,
            ),
            (
                node(&[], info("linux", "amd64", "cri-o://1.29.1", "6.1.0")),
                "linux/amd64",
                RuntimeMatcher::Strict,
            ),
            (
                node(
                    &[(OS_LABEL, "linux"), (ARCH_LABEL, "arm")],
                    NodeSystemInfo::default(),
                ),
                "linux/arm/v7",
                RuntimeMatcher::Strict,
            ),
            (
                node(
                    &[(OS_LABEL, "windows"), (WINDOWS_BUILD_LABEL, "10.0.17763")],
                    info("windows", "amd64", "containerd://1.7.0", "10.0.17763.5329"),
                ),
                "windows(10.0.17763)/amd64",
                RuntimeMatcher::Containerd17,
            ),
            (
                node(
                    &[],
                    info("windows", "amd64", "containerd://2.0.0", "10.0.20348.2227"),
                ),
                "windows(10.0.20348.2227)/amd64",
                RuntimeMatcher::Strict,
            ),
        ];
        for (node, name, runtime) in cases {
            let view = node_view(&node).unwrap();
            assert_eq!(view.platform.node_name(), name);
            assert_eq!(view.platform.runtime, runtime, "{name}");
            // What the node watch stores (`Reduce`) must keep all of that.
            assert_eq!(node_view(&node.reduce()), Some(view), "{name} reduced");
        }
    }
}
