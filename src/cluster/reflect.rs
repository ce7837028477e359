//! Keeping the stores in sync with the API server: one watcher per resource, each a spawned task
//! that feeds a kube reflector store `Writer`, and [`Health`], which says when the view is stale.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    Namespace, Node, NodeStatus, NodeSystemInfo, Secret, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{Lookup, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use super::ClusterView;
use super::state::{
    ClusterState, DOCKER_CFG, DOCKER_CONFIG_JSON, PullSecretStores, Stores, TektonKind, TektonStore,
};
use crate::config::PlatformSource;
use crate::metrics::Metrics;
use crate::resolver::Credentials;

/// Starts the reflectors and returns the view they feed. Returns at once: readiness
/// ([`ClusterView::ready`]) turns true when every store has listed once.
///
/// Secrets are watched through two field-selected watches (`type=kubernetes.io/dockerconfigjson`
/// and `type=kubernetes.io/dockercfg`: a field selector cannot say "either"), not one watch filtered
/// here. RBAC cannot narrow a grant by Secret type, so the privilege is the same either way, but
/// the API server then never sends archgate any other Secret: no service-account tokens, TLS keys or
/// Helm releases cross the wire or sit in its memory, and their churn costs nothing.
///
/// ServiceAccounts are watched only with `pull_secrets`: their pull-secret names are all archgate
/// reads from them.
///
/// With a fixed platform list (`platforms` is `Static`) Nodes are not watched: candidate platforms
/// come from the list, and the rest of the cluster still counts.
pub fn watch(
    client: Client,
    credentials: Credentials,
    metrics: Arc<Metrics>,
    pull_secrets: bool,
    platforms: &PlatformSource,
) -> Arc<dyn ClusterView> {
    let health = Arc::new(Health::new(metrics));
    health.spawn_prober();
    let start = |kind: &'static str| Start {
        kind,
        health: health.clone(),
    };
    let nodes = match platforms {
        PlatformSource::Auto => start("Node").spawn(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            (),
            false,
        ),
        PlatformSource::Static(_) => Writer::<Node>::default().as_reader(),
    };
    let namespaces = start("Namespace").spawn(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        (),
        false,
    );
    let pull_secrets = pull_secrets.then(|| PullSecretStores {
        service_accounts: start("ServiceAccount").spawn(
            Api::<ServiceAccount>::all(client.clone()),
            watcher::Config::default(),
            (),
            false,
        ),
        secrets: [DOCKER_CONFIG_JSON, DOCKER_CFG]
            .into_iter()
            .map(|kind| {
                start("Secret").spawn(
                    Api::<Secret>::all(client.clone()),
                    watcher::Config::default().fields(&format!("type={kind}")),
                    (),
                    false,
                )
            })
            .collect(),
    });
    let tekton = TektonKind::ALL
        .into_iter()
        .map(|kind| {
            let resource = kind.api_resource();
            TektonStore {
                kind,
                // Tekton may not be installed: a missing resource counts as empty and synced.
                store: start(kind.name()).spawn(
                    Api::<DynamicObject>::all_with(client.clone(), &resource),
                    watcher::Config::default(),
                    resource,
                    true,
                ),
            }
        })
        .collect();
    let stores = Stores {
        nodes,
        namespaces,
        pull_secrets,
        tekton,
    };
    let state = ClusterState::from_stores(stores, credentials);
    match platforms {
        PlatformSource::Auto => {
            info!("watching the cluster for nodes, namespaces, pull secrets and Tekton resources");
            Arc::new(state)
        }
        PlatformSource::Static(list) => {
            info!(
                "watching the cluster for namespaces, pull secrets and Tekton resources; platforms are fixed"
            );
            Arc::new(state.with_fixed_platforms(list))
        }
    }
}

struct Start {
    kind: &'static str,
    health: Arc<Health>,
}

impl Start {
    fn spawn<K>(
        self,
        api: Api<K>,
        config: watcher::Config,
        dyntype: <K as Resource>::DynamicType,
        optional: bool,
    ) -> Store<K>
    where
        K: Resource + Lookup<DynamicType = <K as Resource>::DynamicType> + Reduce,
        K: Clone + PartialEq + DeserializeOwned + Debug + Send + Sync + 'static,
        <K as Resource>::DynamicType: Eq + Hash + Clone + Send + Sync,
    {
        let writer = Writer::new(dyntype.clone());
        let store = writer.as_reader();
        let probe_api = api.clone();
        self.health.add_probe(
            self.kind,
            Box::new(move || {
                let api = probe_api.clone();
                Box::pin(async move {
                    api.list_metadata(&kube::api::ListParams::default().limit(1))
                        .await
                        .is_ok()
                })
            }),
        );
        let events = watcher(api, listed_in_pages(config)).default_backoff();
        tokio::spawn(drive(
            self.kind,
            events,
            writer,
            dyntype,
            optional,
            self.health,
        ));
        store
    }
}

/// Lists are read in pages of [`LIST_PAGE`] objects, each page cut down ([`Reduce`]) before the
/// next is asked for. A list at `resourceVersion=0` (kube's "any" semantic) comes from the watch
/// cache whole, whatever the page size asks (apiserver `cacher.go`, `shouldDelegateList`): a few
/// thousand Nodes with their image lists are hundreds of MB of JSON read at once, past the pod's
/// 256 MiB. The default semantic's consistent list is paged, and since Kubernetes 1.31 served
/// from the watch cache too (ConsistentListFromCache), so a relist is still no load spike.
pub const LIST_PAGE: u32 = 250;

fn listed_in_pages(config: watcher::Config) -> watcher::Config {
    config.page_size(LIST_PAGE)
}

/// Cuts an object down to what archgate reads before it enters a store: memory, and for Nodes
/// fewer changes (heartbeat status updates become no-ops that do not invalidate the node views).
pub trait Reduce {
    fn reduce(self) -> Self;
}

impl Reduce for Node {
    fn reduce(self) -> Self {
        let info = self
            .status
            .and_then(|s| s.node_info)
            // The runtime picks the node's platform fallbacks and a Windows kernel version is
            // its build (`state::node_view`); both change only when the node is upgraded.
            .map(|i| NodeSystemInfo {
                operating_system: i.operating_system,
                architecture: i.architecture,
                container_runtime_version: i.container_runtime_version,
                kernel_version: i.kernel_version,
                ..NodeSystemInfo::default()
            });
        Node {
            metadata: ObjectMeta {
                name: self.metadata.name,
                labels: self.metadata.labels,
                ..ObjectMeta::default()
            },
            spec: self.spec.map(|s| k8s_openapi::api::core::v1::NodeSpec {
                taints: s.taints,
                unschedulable: s.unschedulable,
                ..Default::default()
            }),
            status: info.map(|i| NodeStatus {
                node_info: Some(i),
                ..NodeStatus::default()
            }),
        }
    }
}

impl Reduce for Namespace {
    fn reduce(self) -> Self {
        Namespace {
            metadata: ObjectMeta {
                name: self.metadata.name,
                labels: self.metadata.labels,
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }
}

impl Reduce for ServiceAccount {
    fn reduce(self) -> Self {
        ServiceAccount {
            metadata: identity(self.metadata),
            image_pull_secrets: self.image_pull_secrets,
            ..ServiceAccount::default()
        }
    }
}

impl Reduce for Secret {
    /// Annotations go: `kubectl.kubernetes.io/last-applied-configuration` repeats the data.
    fn reduce(self) -> Self {
        Secret {
            metadata: identity(self.metadata),
            type_: self.type_,
            data: self.data,
            ..Secret::default()
        }
    }
}

impl Reduce for DynamicObject {
    fn reduce(mut self) -> Self {
        self.metadata.managed_fields = None;
        if let Some(annotations) = &mut self.metadata.annotations {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        if let Some(map) = self.data.as_object_mut() {
            map.remove("status");
        }
        self
    }
}

/// Name, namespace and resourceVersion: what keys a store entry and the parsed-secret cache.
fn identity(meta: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        resource_version: meta.resource_version,
        uid: meta.uid,
        ..ObjectMeta::default()
    }
}

/// Applies a watcher's events to `writer` until the stream ends (it never does for a live
/// watcher with backoff). Errors are the stream's to retry; here they only mark the view stale.
///
/// `optional` is for CRDs that may not be installed: "the resource does not exist" (404) then
/// makes the store empty and synced, once, instead of holding readiness back forever. The watcher
/// keeps retrying, so installing Tekton later fills the store without a restart; see `Absent`
/// for how often it asks meanwhile.
pub async fn drive<K, S>(
    kind: &'static str,
    events: S,
    mut writer: Writer<K>,
    dyntype: K::DynamicType,
    optional: bool,
    health: Arc<Health>,
) where
    K: Lookup + Reduce + Clone + PartialEq + 'static,
    K::DynamicType: Eq + Hash + Clone,
    S: Stream<Item = watcher::Result<watcher::Event<K>>>,
{
    let store = writer.as_reader();
    let mut events = std::pin::pin!(events);
    let mut absent = Absent::default();
    while let Some(item) = events.next().await {
        let event = match item {
            Ok(event) => event,
            Err(error) if optional && is_missing(&error) => {
                health.recovered(kind);
                if !absent.noticed() {
                    info!(
                        kind,
                        "resource not served by the API server; treated as empty until it is"
                    );
                    writer.apply_watcher_event(&watcher::Event::Init);
                    writer.apply_watcher_event(&watcher::Event::InitDone);
                }
                tokio::time::sleep(absent.next_wait()).await;
                continue;
            }
            Err(error) if is_expired(&error) => {
                // 410 Gone: the watch fell behind and the watcher relists; routine, not an outage.
                debug!(kind, %error, "watch expired; relisting");
                continue;
            }
            Err(error) => {
                health.failed(kind, &error);
                continue;
            }
        };
        health.recovered(kind);
        // `Init` comes before every list attempt, including the next one that finds the
        // resource still missing: only what a successful list or watch yields proves it is served.
        if !matches!(event, watcher::Event::Init) && absent.served() {
            info!(kind, "resource now served by the API server");
        }
        let event = match event {
            watcher::Event::Apply(object) => {
                let object = object.reduce();
                let key = ObjectRef::from_obj_with(&object, dyntype.clone());
                if store.get(&key).is_some_and(|old| *old == object) {
                    // Nothing archgate reads changed (e.g. a Node's status heartbeat).
                    continue;
                }
                watcher::Event::Apply(object)
            }
            watcher::Event::InitApply(object) => watcher::Event::InitApply(object.reduce()),
            other => other,
        };
        writer.apply_watcher_event(&event);
    }
}

/// How long an optional resource (a CRD) has been missing, and when to ask again.
///
/// kube's watcher backoff restarts after every `Init` it yields, and it yields one before each
/// list attempt, so on its own an absent CRD would be listed about once a second forever (issue
/// 12). The driver waits here instead, from [`Absent::FIRST_WAIT`] doubling to
/// [`Absent::MAX_WAIT`]: installing Tekton is noticed within half a minute, and a cluster without
/// it costs two requests a minute per resource.
#[derive(Debug, Default)]
struct Absent {
    /// The wait before the next attempt; `None` while the resource is served.
    wait: Option<std::time::Duration>,
}

impl Absent {
    const FIRST_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
    const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

    /// Whether this absence was already noticed (logged, store emptied).
    fn noticed(&self) -> bool {
        self.wait.is_some()
    }

    /// The wait before asking again, doubling per consecutive "not found".
    fn next_wait(&mut self) -> std::time::Duration {
        let wait = self.wait.unwrap_or(Self::FIRST_WAIT);
        self.wait = Some((wait * 2).min(Self::MAX_WAIT));
        wait
    }

    /// Records that the resource is served; true if it was missing until now.
    fn served(&mut self) -> bool {
        self.wait.take().is_some()
    }
}

fn api_status(error: &watcher::Error) -> Option<u16> {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

fn is_missing(error: &watcher::Error) -> bool {
    api_status(error) == Some(404)
}

fn is_expired(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(s) if s.code == 410)
}

/// Which watches are failing, reflected in `archgate_cluster_view_stale` and logged once per
/// outage (not once per watch or per retry).
pub struct Health {
    metrics: Arc<Metrics>,
    failing: Mutex<HashSet<&'static str>>,
    /// A cheap list per kind (one object), to tell when a failed watch's API is back: a watch
    /// that resumes from its resourceVersion delivers nothing until an object changes, so
    /// waiting for an event would leave the view "stale" long after the outage.
    probes: Mutex<Vec<(&'static str, Probe)>>,
    /// Fast path: every event calls [`Health::recovered`], which usually has nothing to do.
    any_failing: AtomicBool,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            failing: Mutex::new(HashSet::new()),
            probes: Mutex::new(Vec::new()),
            any_failing: AtomicBool::new(false),
        }
    }

    /// A watch of `kind` failed; its store keeps the last known state.
    pub fn failed(&self, kind: &'static str, error: &watcher::Error) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let outage_starts = failing.is_empty();
        if failing.insert(kind) {
            if outage_starts {
                warn!(kind, %error, "lost the API server watch; serving the last known cluster state");
            } else {
                debug!(kind, %error, "watch failing");
            }
        }
        self.any_failing.store(true, Ordering::Release);
        self.metrics.cluster_stale.set(1);
    }

    /// A watch of `kind` delivered an event again.
    pub fn recovered(&self, kind: &'static str) {
        if !self.any_failing.load(Ordering::Acquire) {
            return;
        }
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if failing.remove(kind) && failing.is_empty() {
            self.any_failing.store(false, Ordering::Release);
            self.metrics.cluster_stale.set(0);
            info!("API server watches recovered; cluster view is current");
        }
    }

    /// Whether any watch is failing now.
    pub fn stale(&self) -> bool {
        self.any_failing.load(Ordering::Acquire)
    }

    /// How [`Health::probe`] asks whether `kind`'s API answers again.
    pub fn add_probe(&self, kind: &'static str, probe: Probe) {
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((kind, probe));
    }

    /// Asks each failing kind's probe once; a kind whose API answers is recovered.
    pub async fn probe(&self) {
        if !self.stale() {
            return;
        }
        let asks: Vec<(&'static str, BoxFuture<'static, bool>)> = {
            let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
            let probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            probes
                .iter()
                .filter(|(kind, _)| failing.contains(kind))
                .map(|(kind, probe)| (*kind, probe()))
                .collect()
        };
        for (kind, ask) in asks {
            if tokio::time::timeout(PROBE_EVERY, ask).await == Ok(true) {
                self.recovered(kind);
            }
        }
    }

    /// Probes every [`PROBE_EVERY`] while anything is stale, for as long as the process runs.
    pub fn spawn_prober(self: &Arc<Self>) {
        let health = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(health) = health.upgrade() else {
                    return;
                };
                health.probe().await;
            }
        });
    }
}

/// Lists one object of a kind; `true` when the API server answered.
pub type Probe = Box<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// How often a stale view asks whether the API server is back.
const PROBE_EVERY: Duration = Duration::from_secs(2);
