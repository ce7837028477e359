//! The live-cluster view (`--platform auto`) without an API server: Nodes, Namespaces,
//! ServiceAccounts, Secrets and Tekton objects built with k8s-openapi types are fed through kube's
//! reflector store `Writer`, exactly as the watchers feed them, and read back through
//! [`ClusterState`]. Pull secrets are also checked against a real TLS + htpasswd registry.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use archgate::cluster::{
    ClusterState, ClusterView, Health, PullSecretStores, Stores, TektonKind, TektonStore, drive,
};
use archgate::metrics::Metrics;
use archgate::platform::Platform;
use archgate::policy::Mode;
use archgate::reference::ImageRef;
use archgate::resolver::{Credentials, Digest, RegistryOptions, ResolveError, Resolver};
use archgate::scheduling::{self, ARCH_LABEL, OS_LABEL};
use archgate::workload::Placement;
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    LocalObjectReference, Namespace, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    NodeSpec, NodeStatus, NodeSystemInfo, Secret, ServiceAccount, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::core::Status;
use kube::runtime::reflector::Lookup;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};

// ---- building objects -------------------------------------------------------------------------

fn meta(name: &str, namespace: Option<&str>, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

/// A Node labelled with its platform the way the kubelet labels it.
fn node(name: &str, os: &str, arch: &str) -> Node {
    Node {
        metadata: meta(name, None, &[(OS_LABEL, os), (ARCH_LABEL, arch)]),
        ..Node::default()
    }
}

fn with_labels(mut node: Node, labels: &[(&str, &str)]) -> Node {
    let map = node.metadata.labels.get_or_insert_with(BTreeMap::new);
    map.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    node
}

fn tainted(mut node: Node, key: &str, effect: &str) -> Node {
    node.spec.get_or_insert_with(NodeSpec::default).taints = Some(vec![Taint {
        key: key.into(),
        effect: effect.into(),
        value: Some("true".into()),
        ..Taint::default()
    }]);
    node
}

fn cordoned(mut node: Node) -> Node {
    node.spec
        .get_or_insert_with(NodeSpec::default)
        .unschedulable = Some(true);
    node
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: meta(name, None, labels),
        ..Namespace::default()
    }
}

fn service_account(namespace: &str, name: &str, pull_secrets: &[&str]) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(name, Some(namespace), &[]),
        image_pull_secrets: Some(
            pull_secrets
                .iter()
                .map(|n| LocalObjectReference {
                    name: n.to_string(),
                })
                .collect(),
        ),
        ..ServiceAccount::default()
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn docker_config(host: &str, user: &str, password: &str) -> String {
    format!(
        r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
        b64(&format!("{user}:{password}"))
    )
}

/// A `kubernetes.io/dockerconfigjson` Secret for `host`.
fn pull_secret(namespace: &str, name: &str, host: &str, user: &str, password: &str) -> Secret {
    secret_of_type(
        namespace,
        name,
        "kubernetes.io/dockerconfigjson",
        ".dockerconfigjson",
        &docker_config(host, user, password),
    )
}

fn secret_of_type(namespace: &str, name: &str, type_: &str, key: &str, data: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            resource_version: Some("1".into()),
            ..meta(name, Some(namespace), &[])
        },
        type_: Some(type_.into()),
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(data.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

fn tekton_object(
    kind: TektonKind,
    namespace: Option<&str>,
    name: &str,
    image: &str,
) -> DynamicObject {
    let mut object = DynamicObject::new(name, &kind.api_resource()).data(serde_json::json!({
        "spec": {"steps": [{"name": "build", "image": image}]}
    }));
    object.metadata.namespace = namespace.map(str::to_string);
    object
}

fn placement() -> Placement {
    Placement::default()
}

// ---- feeding stores ---------------------------------------------------------------------------

/// The initial list, as a watcher delivers it: Init, one InitApply per object, InitDone.
fn list<K>(writer: &mut Writer<K>, objects: impl IntoIterator<Item = K>)
where
    K: Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer.apply_watcher_event(&Event::Init);
    for object in objects {
        writer.apply_watcher_event(&Event::InitApply(object));
    }
    writer.apply_watcher_event(&Event::InitDone);
}

/// One writer per store, as `cluster::watch` creates them, and the view over their stores.
struct Fixture {
    nodes: Writer<Node>,
    namespaces: Writer<Namespace>,
    service_accounts: Writer<ServiceAccount>,
    /// dockerconfigjson, dockercfg: one per field-selected watch.
    secrets: Vec<Writer<Secret>>,
    tekton: Vec<Writer<DynamicObject>>,
    view: ClusterState,
}

impl Fixture {
    fn new(pull_secrets: bool, own: Credentials) -> Self {
        let nodes = Writer::<Node>::default();
        let namespaces = Writer::<Namespace>::default();
        let service_accounts = Writer::<ServiceAccount>::default();
        let secrets = vec![Writer::<Secret>::default(), Writer::<Secret>::default()];
        let tekton: Vec<Writer<DynamicObject>> = TektonKind::ALL
            .iter()
            .map(|k| Writer::new(k.api_resource()))
            .collect();
        let stores = Stores {
            nodes: nodes.as_reader(),
            namespaces: namespaces.as_reader(),
            pull_secrets: pull_secrets.then(|| PullSecretStores {
                service_accounts: service_accounts.as_reader(),
                secrets: secrets.iter().map(Writer::as_reader).collect(),
            }),
            tekton: TektonKind::ALL
                .iter()
                .zip(&tekton)
                .map(|(kind, w)| TektonStore {
                    kind: *kind,
                    store: w.as_reader(),
                })
                .collect(),
        };
        Self {
            nodes,
            namespaces,
            service_accounts,
            secrets,
            tekton,
            view: ClusterState::from_stores(stores, own),
        }
    }

    /// Every store listed once with `nodes` and nothing else.
    fn synced(pull_secrets: bool, nodes: Vec<Node>) -> Self {
        let mut f = Self::new(pull_secrets, Credentials::default());
        list(&mut f.nodes, nodes);
        list(&mut f.namespaces, []);
        list(&mut f.service_accounts, []);
        for w in &mut f.secrets {
            list(w, []);
        }
        for w in &mut f.tekton {
            list(w, []);
        }
        f
    }

    fn candidates(&self, placement: &Placement) -> Vec<String> {
        scheduling::candidates(placement, &self.view.nodes())
            .iter()
            .map(Platform::to_string)
            .collect()
    }
}

fn mixed_cluster() -> Vec<Node> {
    vec![
        node("amd-1", "linux", "amd64"),
        node("amd-2", "linux", "amd64"),
        with_labels(node("arm-1", "linux", "arm64"), &[("pool", "graviton")]),
        tainted(
            node("gpu-1", "linux", "arm64"),
            "nvidia.com/gpu",
            "NoSchedule",
        ),
        tainted(node("win-1", "windows", "amd64"), "os", "NoExecute"),
    ]
}

// ---- nodes ------------------------------------------------------------------------------------

#[test]
fn platforms_come_from_labels_then_node_info() {
    let from_info = Node {
        metadata: meta("kubelet-only", None, &[]),
        status: Some(NodeStatus {
            node_info: Some(NodeSystemInfo {
                operating_system: "linux".into(),
                architecture: "arm64".into(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
        ..Node::default()
    };
    // Labels win over nodeInfo: they are what pods select on.
    let mut both = node("labelled", "linux", "amd64");
    both.status = from_info.status.clone();
    let nothing = Node {
        metadata: meta("unknown", None, &[]),
        ..Node::default()
    };
    let f = Fixture::synced(false, vec![from_info, both, nothing]);
    let nodes = f.view.nodes();
    let platforms: Vec<(String, String)> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.platform.to_string()))
        .collect();
    assert_eq!(
        platforms,
        [
            ("kubelet-only".to_string(), "linux/arm64".to_string()),
            ("labelled".to_string(), "linux/amd64".to_string()),
        ],
        "a node stating no platform is not a candidate"
    );
    assert!(nodes.iter().all(|n| !n.synthetic));
}

#[test]
fn cordoned_and_tainted_nodes_are_not_candidates() {
    let f = Fixture::synced(
        false,
        vec![
            node("amd-1", "linux", "amd64"),
            cordoned(node("arm-cordoned", "linux", "arm64")),
            tainted(
                node("s390x-tainted", "linux", "s390x"),
                "dedicated",
                "NoSchedule",
            ),
            // PreferNoSchedule does not keep a pod away.
            tainted(
                node("ppc-soft", "linux", "ppc64le"),
                "soft",
                "PreferNoSchedule",
            ),
        ],
    );
    assert_eq!(f.candidates(&placement()), ["linux/amd64", "linux/ppc64le"]);
    let tolerating = Placement {
        tolerations: vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        }],
        ..placement()
    };
    assert_eq!(
        f.candidates(&tolerating),
        ["linux/amd64", "linux/ppc64le", "linux/s390x"],
        "a tolerated taint admits the node; a cordon never does"
    );
}

#[test]
fn mixed_cluster_candidates_follow_selectors_affinity_and_taints() {
    let f = Fixture::synced(false, mixed_cluster());
    // Anywhere the untainted nodes are: both architectures.
    assert_eq!(f.candidates(&placement()), ["linux/amd64", "linux/arm64"]);
    let pinned = Placement {
        node_selector: BTreeMap::from([(ARCH_LABEL.to_string(), "amd64".to_string())]),
        ..placement()
    };
    assert_eq!(f.candidates(&pinned), ["linux/amd64"]);
    // Any label, not only os/arch: only arm-1 carries pool=graviton.
    let pool = Placement {
        node_selector: BTreeMap::from([("pool".to_string(), "graviton".to_string())]),
        ..placement()
    };
    assert_eq!(f.candidates(&pool), ["linux/arm64"]);
    let not_arm = Placement {
        required_affinity: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: ARCH_LABEL.into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["arm64".into()]),
                }]),
                ..NodeSelectorTerm::default()
            }],
        }),
        ..placement()
    };
    assert_eq!(f.candidates(&not_arm), ["linux/amd64"]);
    // Tolerating everything reaches the GPU and Windows nodes too.
    let everywhere = Placement {
        tolerations: vec![Toleration {
            operator: Some("Exists".into()),
            ..Toleration::default()
        }],
        ..placement()
    };
    assert_eq!(
        f.candidates(&everywhere),
        ["linux/amd64", "linux/arm64", "windows/amd64"]
    );
    // A selector nothing matches: no candidates (the policy allows with a warning).
    let nowhere = Placement {
        node_selector: BTreeMap::from([(ARCH_LABEL.to_string(), "riscv64".to_string())]),
        ..placement()
    };
    assert!(f.candidates(&nowhere).is_empty());
}

#[test]
fn ephemeral_containers_run_on_the_pods_node() {
    let f = Fixture::synced(false, mixed_cluster());
    let on_gpu = Placement {
        node_name: Some("gpu-1".into()),
        ..placement()
    };
    // The pod is already there: the taint and any selector no longer matter.
    assert_eq!(f.candidates(&on_gpu), ["linux/arm64"]);
    let on_windows = Placement {
        node_name: Some("win-1".into()),
        ..placement()
    };
    assert_eq!(f.candidates(&on_windows), ["windows/amd64"]);
    assert!(f.view.nodes().iter().any(|n| n.name == "win-1"));
}

#[test]
fn node_views_are_rebuilt_only_when_the_store_changes() {
    let mut f = Fixture::synced(false, mixed_cluster());
    let first = f.view.nodes();
    let second = f.view.nodes();
    assert!(
        Arc::ptr_eq(&first, &second),
        "an unchanged store must not rebuild the views"
    );

    f.nodes
        .apply_watcher_event(&Event::Apply(node("arm-2", "linux", "arm64")));
    let added = f.view.nodes();
    assert!(!Arc::ptr_eq(&first, &added));
    assert_eq!(added.len(), first.len() + 1);
    assert!(Arc::ptr_eq(&added, &f.view.nodes()));

    // A relabel in place (same key, new object) is seen too.
    f.nodes
        .apply_watcher_event(&Event::Apply(node("arm-2", "linux", "amd64")));
    let relabelled = f.view.nodes();
    let arm2 = relabelled.iter().find(|n| n.name == "arm-2").unwrap();
    assert_eq!(arm2.platform.to_string(), "linux/amd64");

    f.nodes
        .apply_watcher_event(&Event::Delete(node("arm-2", "linux", "amd64")));
    assert_eq!(f.view.nodes().len(), first.len());
    f.nodes
        .apply_watcher_event(&Event::Apply(cordoned(node("amd-1", "linux", "amd64"))));
    assert!(
        f.view
            .nodes()
            .iter()
            .find(|n| n.name == "amd-1")
            .unwrap()
            .unschedulable
    );
}

// ---- namespaces -------------------------------------------------------------------------------

#[test]
fn namespace_label_sets_the_mode() {
    let mut f = Fixture::synced(false, vec![]);
    list(
        &mut f.namespaces,
        [
            namespace("strict", &[("archgate.io/mode", "enforce")]),
            namespace("lenient", &[("archgate.io/mode", "warn")]),
            namespace("quiet", &[("archgate.io/mode", "audit")]),
            namespace("legacy", &[("archgate.io/mode", "off")]),
            namespace("typo", &[("archgate.io/mode", "enforcing")]),
            namespace("plain", &[("team", "x")]),
        ],
    );
    let mode = |ns: &str| f.view.namespace_mode(ns);
    assert_eq!(mode("strict"), Some(Mode::Enforce));
    assert_eq!(mode("lenient"), Some(Mode::Warn));
    assert_eq!(mode("quiet"), Some(Mode::Audit));
    assert_eq!(mode("legacy"), Some(Mode::Off));
    assert_eq!(
        mode("typo"),
        None,
        "an invalid value falls back to the global mode"
    );
    assert_eq!(mode("typo"), None);
    assert_eq!(mode("plain"), None);
    assert_eq!(mode("absent"), None);
    f.namespaces.apply_watcher_event(&Event::Apply(namespace(
        "plain",
        &[("archgate.io/mode", "audit")],
    )));
    assert_eq!(f.view.namespace_mode("plain"), Some(Mode::Audit));
}

// ---- readiness --------------------------------------------------------------------------------

#[test]
fn ready_only_after_every_store_has_listed_once() {
    let mut f = Fixture::new(true, Credentials::default());
    assert!(!f.view.ready());
    // Objects delivered during the initial list are not enough: InitDone is.
    f.nodes.apply_watcher_event(&Event::Init);
    f.nodes
        .apply_watcher_event(&Event::InitApply(node("amd-1", "linux", "amd64")));
    assert!(!f.view.ready());
    assert!(f.view.nodes().is_empty(), "a partial list is not served");
    f.nodes.apply_watcher_event(&Event::InitDone);
    assert_eq!(f.view.nodes().len(), 1);
    list(&mut f.namespaces, []);
    list(&mut f.service_accounts, []);
    for w in &mut f.secrets {
        list(w, []);
    }
    assert!(!f.view.ready(), "Tekton stores have not listed yet");
    for w in &mut f.tekton {
        list(w, []);
    }
    assert!(f.view.ready());
    // A later relist (after an outage) does not make it unready.
    f.nodes.apply_watcher_event(&Event::Init);
    assert!(f.view.ready());
    assert_eq!(
        f.view.nodes().len(),
        1,
        "the last known state is kept during a relist"
    );
}

#[test]
fn without_pull_secrets_no_secret_or_account_store_is_awaited() {
    let mut f = Fixture::new(false, Credentials::default());
    list(&mut f.nodes, []);
    list(&mut f.namespaces, []);
    for w in &mut f.tekton {
        list(w, []);
    }
    assert!(f.view.ready());
}

fn stale_error() -> watcher::Error {
    watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
        Status::failure("connection refused", "ServiceUnavailable").with_code(503),
    )))
}

type Feed<K> = tokio::sync::mpsc::UnboundedSender<watcher::Result<Event<K>>>;

/// Runs `drive` over a channel, as `watch` runs it over a live watcher.
fn driven<K>(
    kind: &'static str,
    writer: Writer<K>,
    dyntype: K::DynamicType,
    optional: bool,
    health: Arc<Health>,
) -> Feed<K>
where
    K: Lookup + archgate::cluster::Reduce + Clone + PartialEq + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let events =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    tokio::spawn(drive(kind, events, writer, dyntype, optional, health));
    tx
}

/// Lets the spawned driver run until it has consumed what was sent.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn losing_the_api_server_keeps_the_last_state_and_says_so() {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(metrics.clone()));
    let writer = Writer::<Node>::default();
    let nodes = writer.as_reader();
    let feed = driven("Node", writer, (), false, health.clone());
    let ns_writer = Writer::<Namespace>::default();
    let ns_feed = driven("Namespace", ns_writer, (), false, health.clone());

    feed.send(Ok(Event::Init)).unwrap();
    feed.send(Ok(Event::InitApply(node("amd-1", "linux", "amd64"))))
        .unwrap();
    feed.send(Ok(Event::InitDone)).unwrap();
    settle().await;
    assert_eq!(nodes.len(), 1);
    assert_eq!(metrics.cluster_stale.get(), 0);

    // Both watches fail: stale, and the nodes are still served.
    feed.send(Err(stale_error())).unwrap();
    ns_feed.send(Err(stale_error())).unwrap();
    settle().await;
    assert_eq!(metrics.cluster_stale.get(), 1);
    assert!(health.stale());
    assert_eq!(nodes.len(), 1, "the last known state is kept");
    assert!(metrics.encode().contains("archgate_cluster_view_stale 1"));

    // One recovers: still stale until every watch is back.
    feed.send(Ok(Event::Init)).unwrap();
    feed.send(Ok(Event::InitApply(node("amd-1", "linux", "amd64"))))
        .unwrap();
    feed.send(Ok(Event::InitApply(node("arm-1", "linux", "arm64"))))
        .unwrap();
    feed.send(Ok(Event::InitDone)).unwrap();
    settle().await;
    assert_eq!(nodes.len(), 2);
    assert_eq!(metrics.cluster_stale.get(), 1);
    ns_feed.send(Ok(Event::Init)).unwrap();
    settle().await;
    assert_eq!(metrics.cluster_stale.get(), 0);
    assert!(!health.stale());

    // An expired watch (410) just relists: not an outage.
    feed.send(Err(watcher::Error::WatchError(Box::new(
        Status::failure("too old resource version", "Expired").with_code(410),
    ))))
    .unwrap();
    settle().await;
    assert_eq!(metrics.cluster_stale.get(), 0);
}

#[tokio::test]
async fn a_missing_tekton_resource_is_empty_and_synced() {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(metrics.clone()));
    let resource = TektonKind::StepAction.api_resource();
    let writer = Writer::<DynamicObject>::new(resource.clone());
    let store = writer.as_reader();
    let feed = driven("StepAction", writer, resource.clone(), true, health.clone());
    feed.send(Err(common::missing_resource_error())).unwrap();
    feed.send(Err(common::missing_resource_error())).unwrap();
    settle().await;
    assert!(store.wait_until_ready().await.is_ok());
    assert!(store.is_empty());
    assert_eq!(
        metrics.cluster_stale.get(),
        0,
        "an absent CRD is not an outage"
    );

    // Installed later: the retrying watcher fills the store.
    feed.send(Ok(Event::Init)).unwrap();
    feed.send(Ok(Event::InitApply(tekton_object(
        TektonKind::StepAction,
        Some("ci"),
        "git-clone",
        "alpine/git",
    ))))
    .unwrap();
    feed.send(Ok(Event::InitDone)).unwrap();
    // The driver waits (1 s, then 2 s) after each "not found" before taking the next event.
    let started = std::time::Instant::now();
    while store.len() != 1 && started.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(store.len(), 1);

    // A required resource's 404 is an outage like any other error.
    let nodes_feed = driven("Node", Writer::<Node>::default(), (), false, health.clone());
    nodes_feed
        .send(Err(common::missing_resource_error()))
        .unwrap();
    settle().await;
    assert_eq!(metrics.cluster_stale.get(), 1);
}

#[tokio::test]
async fn node_heartbeats_do_not_invalidate_the_node_views() {
    let health = Arc::new(Health::new(Arc::new(Metrics::new())));
    let writer = Writer::<Node>::default();
    let nodes = writer.as_reader();
    let feed = driven("Node", writer, (), false, health);
    let with_status = |heartbeat: &str| {
        let mut n = node("amd-1", "linux", "amd64");
        n.metadata.resource_version = Some(heartbeat.into());
        n.status = Some(NodeStatus {
            phase: Some(heartbeat.into()),
            ..NodeStatus::default()
        });
        n
    };
    feed.send(Ok(Event::Init)).unwrap();
    feed.send(Ok(Event::InitApply(with_status("1")))).unwrap();
    feed.send(Ok(Event::InitDone)).unwrap();
    settle().await;
    let before = nodes.state();
    feed.send(Ok(Event::Apply(with_status("2")))).unwrap();
    settle().await;
    assert!(
        Arc::ptr_eq(&before[0], &nodes.state()[0]),
        "a status-only update leaves the store entry (and so the cached views) alone"
    );
    feed.send(Ok(Event::Apply(with_labels(
        with_status("3"),
        &[("pool", "a")],
    ))))
    .unwrap();
    settle().await;
    assert!(!Arc::ptr_eq(&before[0], &nodes.state()[0]));
}

// ---- pull secrets -----------------------------------------------------------------------------

const HOST: &str = "registry.example:5000";

fn identity(credentials: &Credentials) -> u64 {
    credentials.for_registry(HOST).1
}

fn pod_with_secrets(secrets: &[&str]) -> Placement {
    Placement {
        pull_secrets: secrets.iter().map(|s| s.to_string()).collect(),
        ..placement()
    }
}

#[test]
fn a_pull_secret_is_used_only_in_its_own_namespace() {
    let mut f = Fixture::synced(true, vec![]);
    list(
        &mut f.secrets[0],
        [pull_secret("team-a", "regcred", HOST, "alice", "pw-a")],
    );
    let in_a = f
        .view
        .credentials("team-a", &pod_with_secrets(&["regcred"]));
    assert_ne!(identity(&in_a), 0, "namespace A's pod uses A's secret");
    let in_b = f
        .view
        .credentials("team-b", &pod_with_secrets(&["regcred"]));
    assert_eq!(
        identity(&in_b),
        0,
        "B names a secret it does not have: anonymous, never A's"
    );
    // B's own secret of the same name is B's, and a different identity.
    f.secrets[0].apply_watcher_event(&Event::Apply(pull_secret(
        "team-b", "regcred", HOST, "bob", "pw-b",
    )));
    let in_b = f
        .view
        .credentials("team-b", &pod_with_secrets(&["regcred"]));
    assert_ne!(identity(&in_b), 0);
    assert_ne!(identity(&in_b), identity(&in_a));
}

#[test]
fn service_account_pull_secrets_are_used_when_the_pod_names_none() {
    let mut f = Fixture::synced(true, vec![]);
    list(
        &mut f.service_accounts,
        [
            service_account("team-a", "default", &["default-cred"]),
            service_account("team-a", "builder", &["builder-cred"]),
        ],
    );
    list(
        &mut f.secrets[0],
        [
            pull_secret("team-a", "default-cred", HOST, "default", "pw"),
            pull_secret("team-a", "builder-cred", "other.example", "builder", "pw"),
            pull_secret("team-a", "pod-cred", HOST, "pod", "pw"),
        ],
    );
    // No serviceAccountName: the `default` account's secrets.
    let by_default = f.view.credentials("team-a", &placement());
    assert_ne!(identity(&by_default), 0);
    // A named account's secrets when the pod names none.
    let builder = Placement {
        service_account: Some("builder".into()),
        ..placement()
    };
    let account = f.view.credentials("team-a", &builder);
    assert_ne!(account.for_registry("other.example").1, 0);
    // A pod naming a secret of its own never gets the account's: the ServiceAccount admission
    // plugin copies them only into a pod whose list is empty, and the kubelet reads the pod's.
    let both = f.view.credentials(
        "team-a",
        &Placement {
            service_account: Some("builder".into()),
            ..pod_with_secrets(&["pod-cred"])
        },
    );
    assert_ne!(identity(&both), 0, "the pod's secret covers {HOST}");
    assert_eq!(
        both.for_registry("other.example").1,
        0,
        "the account's secret is not the pod's"
    );
    let pod_and_default = f
        .view
        .credentials("team-a", &pod_with_secrets(&["pod-cred"]));
    let pod_alone =
        Credentials::from_docker_config(docker_config(HOST, "pod", "pw").as_bytes(), "pod")
            .unwrap();
    assert_eq!(identity(&pod_and_default), identity(&pod_alone));
    // A list holding only an empty name still names one: no account secrets either.
    let empty_name = f.view.credentials("team-a", &pod_with_secrets(&[""]));
    assert_eq!(identity(&empty_name), 0);
    // An admitted Pod's list is final: the plugin has run, and an account that holds secrets
    // now (it may have gained them since) lends none.
    let admitted = Placement {
        pull_secrets_final: true,
        ..placement()
    };
    assert_eq!(identity(&f.view.credentials("team-a", &admitted)), 0);
}

#[test]
fn a_pods_pull_secrets_are_merged_up_to_a_bound() {
    use archgate::cluster::{MAX_PULL_ENTRIES, MAX_PULL_SECRETS};
    let mut f = Fixture::synced(true, vec![]);
    // Past the bound on names: the secret for HOST comes last and is not used.
    let mut names: Vec<String> = (0..MAX_PULL_SECRETS).map(|i| format!("s{i}")).collect();
    let mut secrets: Vec<Secret> = names
        .iter()
        .map(|n| pull_secret("team-a", n, &format!("{n}.example"), "u", "pw"))
        .collect();
    names.push("last".into());
    secrets.push(pull_secret("team-a", "last", HOST, "u", "pw"));
    // One Secret holding more entries than the keyring takes: skipped, the others kept.
    let auths: serde_json::Map<String, serde_json::Value> = (0..=MAX_PULL_ENTRIES)
        .map(|i| (format!("r{i}.example"), serde_json::json!({"auth": "dTpw"})))
        .collect();
    let huge = serde_json::json!({"auths": auths}).to_string();
    secrets.push(secret_of_type(
        "team-a",
        "huge",
        "kubernetes.io/dockerconfigjson",
        ".dockerconfigjson",
        &huge,
    ));
    list(&mut f.secrets[0], secrets);
    let many = Placement {
        pull_secrets: names.clone(),
        ..placement()
    };
    let merged = f.view.credentials("team-a", &many);
    assert_eq!(
        merged.len(),
        MAX_PULL_SECRETS,
        "one entry per secret merged"
    );
    assert_ne!(merged.for_registry("s0.example").1, 0);
    assert_eq!(
        identity(&merged),
        0,
        "the secret past the bound is not used"
    );

    let with_huge = f
        .view
        .credentials("team-a", &pod_with_secrets(&["huge", "s1"]));
    assert_eq!(with_huge.len(), 1, "the oversized secret is skipped");
    assert_ne!(with_huge.for_registry("s1.example").1, 0);
}

#[test]
fn secrets_of_other_types_are_ignored() {
    let mut f = Fixture::synced(true, vec![]);
    let config = docker_config(HOST, "alice", "pw");
    list(
        &mut f.secrets[0],
        [
            // Should a field selector ever let one through, the type is checked again here.
            secret_of_type("team-a", "opaque", "Opaque", ".dockerconfigjson", &config),
            secret_of_type(
                "team-a",
                "broken",
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                "{",
            ),
            secret_of_type(
                "team-a",
                "wrong-key",
                "kubernetes.io/dockerconfigjson",
                "config.json",
                &config,
            ),
        ],
    );
    let legacy = format!(r#"{{"{HOST}":{{"auth":"{}"}}}}"#, b64("carol:pw"));
    list(
        &mut f.secrets[1],
        [secret_of_type(
            "team-a",
            "legacy",
            "kubernetes.io/dockercfg",
            ".dockercfg",
            &legacy,
        )],
    );
    for name in ["opaque", "broken", "wrong-key", "missing"] {
        assert_eq!(
            identity(&f.view.credentials("team-a", &pod_with_secrets(&[name]))),
            0,
            "{name}"
        );
    }
    assert_ne!(
        identity(&f.view.credentials("team-a", &pod_with_secrets(&["legacy"]))),
        0
    );
}

#[test]
fn the_webhooks_own_credentials_always_apply() {
    let own = Credentials::from_docker_config(
        docker_config("own.example", "archgate", "pw").as_bytes(),
        "own",
    )
    .unwrap();
    let mut f = Fixture::new(true, own.clone());
    list(
        &mut f.secrets[0],
        [pull_secret("team-a", "regcred", HOST, "alice", "pw-a")],
    );
    let merged = f
        .view
        .credentials("team-a", &pod_with_secrets(&["regcred"]));
    assert_ne!(identity(&merged), 0);
    assert_ne!(merged.for_registry("own.example").1, 0);
    // With --pull-secrets off, the pod's secrets are not read at all.
    let mut off = Fixture::new(false, own);
    list(
        &mut off.secrets[0],
        [pull_secret("team-a", "regcred", HOST, "alice", "pw-a")],
    );
    let only_own = off
        .view
        .credentials("team-a", &pod_with_secrets(&["regcred"]));
    assert_eq!(identity(&only_own), 0);
    assert_ne!(only_own.for_registry("own.example").1, 0);
}

#[test]
fn a_changed_secret_is_parsed_again() {
    let mut f = Fixture::synced(true, vec![]);
    list(
        &mut f.secrets[0],
        [pull_secret("team-a", "regcred", HOST, "alice", "old")],
    );
    let pod = pod_with_secrets(&["regcred"]);
    let old = identity(&f.view.credentials("team-a", &pod));
    assert_eq!(old, identity(&f.view.credentials("team-a", &pod)));
    let mut rotated = pull_secret("team-a", "regcred", HOST, "alice", "new");
    rotated.metadata.resource_version = Some("2".into());
    f.secrets[0].apply_watcher_event(&Event::Apply(rotated));
    let new = identity(&f.view.credentials("team-a", &pod));
    assert_ne!(new, 0);
    assert_ne!(new, old, "a new resourceVersion is a new credential");
    f.secrets[0].apply_watcher_event(&Event::Delete(pull_secret(
        "team-a", "regcred", HOST, "alice", "new",
    )));
    assert_eq!(identity(&f.view.credentials("team-a", &pod)), 0);
}

// ---- Tekton catalog ---------------------------------------------------------------------------

#[test]
fn the_catalog_reads_tekton_stores_by_namespace() {
    let mut f = Fixture::synced(false, vec![]);
    let index = |kind: TektonKind| TektonKind::ALL.iter().position(|k| *k == kind).unwrap();
    list(
        &mut f.tekton[index(TektonKind::Task)],
        [tekton_object(
            TektonKind::Task,
            Some("ci"),
            "build",
            "golang:1.22",
        )],
    );
    list(
        &mut f.tekton[index(TektonKind::ClusterTask)],
        [tekton_object(
            TektonKind::ClusterTask,
            None,
            "git-clone",
            "alpine/git",
        )],
    );
    let catalog = f.view.catalog();
    let task = catalog
        .get("Task", "ci", "build")
        .expect("the Task in its namespace");
    assert_eq!(task["spec"]["steps"][0]["image"], "golang:1.22");
    assert_eq!(task["kind"], "Task");
    assert!(
        catalog.get("Task", "other", "build").is_none(),
        "Tasks are namespaced"
    );
    assert!(catalog.get("Pipeline", "ci", "build").is_none());
    let cluster_task = catalog
        .get("ClusterTask", "any-namespace", "git-clone")
        .unwrap();
    assert_eq!(cluster_task["spec"]["steps"][0]["image"], "alpine/git");
}

// ---- against a real registry ------------------------------------------------------------------

#[tokio::test]
async fn a_private_image_resolves_with_its_namespaces_secret_only() {
    common::install_crypto_provider();
    let registry = common::Registry::start_tls_auth("team-a-bot", "s3cret-pass").await;
    let fixtures = common::push_standard_fixtures(&registry).await;
    let resolver = Resolver::new(
        RegistryOptions {
            ca_pem: Some(registry.ca_pem().as_bytes().to_vec()),
            ..RegistryOptions::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();

    let mut f = Fixture::synced(true, vec![]);
    list(
        &mut f.service_accounts,
        [service_account("team-a", "default", &["regcred"])],
    );
    list(
        &mut f.secrets[0],
        [
            pull_secret(
                "team-a",
                "regcred",
                registry.host(),
                "team-a-bot",
                "s3cret-pass",
            ),
            // B has a secret for the registry too, but not a valid one.
            pull_secret("team-c", "regcred", registry.host(), "team-a-bot", "wrong"),
        ],
    );
    let image = ImageRef::parse(&fixtures.ai_base_cuda.reference()).unwrap();

    // Team A: the pod's own imagePullSecrets, and (separately) the default ServiceAccount's.
    let a = f
        .view
        .credentials("team-a", &pod_with_secrets(&["regcred"]));
    let resolved = resolver
        .resolve(&image, &a)
        .await
        .expect("A's secret opens the registry");
    assert_eq!(
        resolved.digest,
        Some(Digest::new(&fixtures.ai_base_cuda.digest))
    );
    assert_eq!(
        resolved
            .platforms
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        fixtures.ai_base_cuda.platforms()
    );
    let a_by_account = f.view.credentials("team-a", &placement());
    assert!(resolver.resolve(&image, &a_by_account).await.is_ok());

    // Team B names the same secret, which it does not have: A's credentials are not used, and
    // A's cached answer is not served to B either (cache entries are keyed by identity).
    let b = f
        .view
        .credentials("team-b", &pod_with_secrets(&["regcred"]));
    let err = resolver.resolve(&image, &b).await.unwrap_err();
    assert!(matches!(err, ResolveError::Unauthorized { .. }), "{err:?}");
    let c = f
        .view
        .credentials("team-c", &pod_with_secrets(&["regcred"]));
    let err = resolver.resolve(&image, &c).await.unwrap_err();
    assert!(matches!(err, ResolveError::Unauthorized { .. }), "{err:?}");
}

/// With cluster access and a fixed platform list (`-p linux/amd64 --kubeconfig ...`), candidate
/// platforms come from the list while namespace modes and Tekton resources still come from the
/// cluster, and readiness does not wait for a node store nobody watches.
#[test]
fn fixed_platforms_keep_the_rest_of_the_cluster() {
    let f = Fixture::new(false, Credentials::default());
    let Fixture {
        mut namespaces,
        mut tekton,
        view,
        ..
    } = f;
    let view = view.with_fixed_platforms(&[Platform::parse("linux/amd64").unwrap()]);
    list(
        &mut namespaces,
        [namespace("legacy", &[("archgate.io/mode", "off")])],
    );
    assert!(!view.ready(), "Tekton stores have not listed yet");
    for w in &mut tekton {
        list(w, []);
    }
    assert!(view.ready(), "the node store is not awaited");
    let nodes = view.nodes();
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].synthetic);
    assert_eq!(nodes[0].platform.to_string(), "linux/amd64");
    assert_eq!(view.namespace_mode("legacy"), Some(Mode::Off));
}

/// Issue 15: a watch that resumes after an outage delivers nothing until an object changes, which
/// left `archgate_cluster_view_stale` at 1 for as long; now the flag clears as soon as the kind's
/// API answers a probe, and only then.
#[tokio::test]
async fn the_stale_flag_clears_when_the_api_answers_again() {
    let metrics = Arc::new(archgate::metrics::Metrics::new());
    let health = archgate::cluster::Health::new(metrics.clone());
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers = up.clone();
    health.add_probe(
        "Node",
        Box::new(move || {
            let up = answers.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { up })
        }),
    );
    health.failed("Node", &stale_error());
    assert!(health.stale());
    assert!(metrics.encode().contains("archgate_cluster_view_stale 1"));
    health.probe().await;
    assert!(health.stale(), "the API server is still down");
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    health.probe().await;
    assert!(!health.stale());
    assert!(metrics.encode().contains("archgate_cluster_view_stale 0"));
}
