//! Issue 19: platforms exactly as the node's containerd pulls them, against a real registry.
//!
//! Images in every shape (OCI indexes, Docker lists, single OCI and Docker manifests) with
//! variants, `os.features`, Windows `os.version` and entries without `os` are pushed to Debian's
//! `docker-registry` on 127.0.0.1, resolved by archgate's resolver, and matched against every node
//! platform of the issue under both runtime matchers. The expected answers are containerd's
//! (`platforms.OnlyStrict` / `platforms.Only`, see src/platform.rs for the rule each row tests).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use archgate::cluster::node_view;
use archgate::metrics::Metrics;
use archgate::platform::{Platform, RuntimeMatcher};
use archgate::reference::ImageRef;
use archgate::resolver::{Credentials, RegistryOptions, Resolution, Resolver};
use archgate::scheduling::{self, NodeView};
use archgate::workload::Placement;
use common::{ImageSpec, PlatformSpec, PushedImage, Registry};
use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo};
use kube::api::ObjectMeta;

/// Every node platform of the issue, as `--platform` takes them.
const NODES: [&str; 11] = [
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/386",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
    "windows(10.0.17763)/amd64",
    "windows(10.0.20348)/amd64",
    "windows(10.0.26100)/amd64",
];

const W2019: &str = "windows(10.0.17763)/amd64";
const W2022: &str = "windows(10.0.20348)/amd64";
const W2025: &str = "windows(10.0.26100)/amd64";

fn spec(os: &str, arch: &str, variant: Option<&str>) -> PlatformSpec {
    PlatformSpec::from((os, arch, variant))
}

fn windows(build: &str) -> PlatformSpec {
    PlatformSpec::new("windows", "amd64").os_version(build)
}

/// One fixture image and the nodes that pull it: `(image, strict, containerd 1.7)`.
struct Row {
    image: ImageSpec,
    strict: &'static [&'static str],
    legacy: &'static [&'static str],
}

impl Row {
    fn new(
        image: ImageSpec,
        strict: &'static [&'static str],
        legacy: &'static [&'static str],
    ) -> Self {
        Self {
            image,
            strict,
            legacy,
        }
    }

    /// Pulled by the same nodes whichever containerd runs them.
    fn same(image: ImageSpec, nodes: &'static [&'static str]) -> Self {
        Self::new(image, nodes, nodes)
    }
}

fn rows() -> Vec<Row> {
    let linux_set = [
        spec("linux", "amd64", None),
        spec("linux", "arm64", Some("v8")),
        spec("linux", "arm", Some("v7")),
        spec("linux", "386", None),
        spec("linux", "ppc64le", None),
        spec("linux", "s390x", None),
        spec("linux", "riscv64", None),
    ];
    vec![
        // Variants a plain node never pulls.
        Row::same(
            ImageSpec::oci_index("v/amd64v3", "1", [spec("linux", "amd64", Some("v3"))]),
            &[],
        ),
        Row::same(
            ImageSpec::oci_index(
                "v/amd64v3-arm64",
                "1",
                [
                    spec("linux", "amd64", Some("v3")),
                    spec("linux", "arm64", None),
                ],
            ),
            &["linux/arm64"],
        ),
        Row::same(
            ImageSpec::docker_list("v/arm64v82", "1", [spec("linux", "arm64", Some("v8.2"))]),
            &[],
        ),
        Row::same(
            ImageSpec::oci_index("v/arm64v9", "1", [spec("linux", "arm64", Some("v9"))]),
            &[],
        ),
        Row::same(
            ImageSpec::oci_index("v/rva23", "1", [spec("linux", "riscv64", Some("rva23u64"))]),
            &[],
        ),
        // Default variants in every spelling.
        Row::same(
            ImageSpec::docker_list(
                "v/defaults",
                "1",
                [
                    spec("linux", "arm64", Some("v8")),
                    spec("linux", "amd64", Some("v1")),
                ],
            ),
            &["linux/amd64", "linux/arm64"],
        ),
        Row::new(
            ImageSpec::docker_list("v/arm-bare", "1", [spec("linux", "arm", None)]),
            &["linux/arm/v7"],
            &["linux/arm/v7", "linux/arm64"],
        ),
        // Fallbacks only containerd 1.7 takes.
        Row::new(
            ImageSpec::docker_list("f/i386", "1", [spec("linux", "386", None)]),
            &["linux/386"],
            &["linux/386", "linux/amd64"],
        ),
        Row::new(
            ImageSpec::oci_index(
                "f/armv6v5",
                "1",
                [
                    spec("linux", "arm", Some("v6")),
                    spec("linux", "arm", Some("v5")),
                ],
            ),
            &["linux/arm/v6"],
            &["linux/arm/v6", "linux/arm/v7", "linux/arm64"],
        ),
        Row::same(
            ImageSpec::docker_list("f/linux-set", "1", linux_set),
            &[
                "linux/amd64",
                "linux/arm64",
                "linux/arm/v7",
                "linux/386",
                "linux/ppc64le",
                "linux/s390x",
                "linux/riscv64",
            ],
        ),
        // An entry without os takes the node's; os.features must be the node's.
        Row::same(
            ImageSpec::oci_index("o/no-os", "1", [spec("", "amd64", None)]),
            &["linux/amd64", W2019, W2022, W2025],
        ),
        Row::same(
            ImageSpec::oci_index(
                "o/erofs",
                "1",
                [PlatformSpec::new("linux", "amd64").os_features(&["erofs"])],
            ),
            &[],
        ),
        // Windows builds: exact before 2022, previous LTSC up to their own after; win32k is free.
        Row::same(
            ImageSpec::oci_index(
                "w/ltsc2019-2022",
                "1",
                [
                    windows("10.0.17763.5329").os_features(&["win32k"]),
                    windows("10.0.20348.2227"),
                ],
            ),
            &[W2019, W2022, W2025],
        ),
        Row::same(
            ImageSpec::docker_list("w/ltsc2022", "1", [windows("10.0.20348.2227")]),
            &[W2022, W2025],
        ),
        Row::same(
            ImageSpec::oci_index("w/ltsc2025", "1", [windows("10.0.26100.1742")]),
            &[W2025],
        ),
        // Single manifests: the config blob's platform under the same rules.
        Row::same(
            ImageSpec::oci_manifest("s/amd64v3", "1", spec("linux", "amd64", Some("v3"))),
            &[],
        ),
        Row::new(
            ImageSpec::docker_manifest("s/i386", "1", spec("linux", "i386", None)),
            &["linux/386"],
            &["linux/386", "linux/amd64"],
        ),
        Row::same(
            ImageSpec::oci_manifest("s/no-os-arm64", "1", spec("", "arm64", Some("v8"))),
            &["linux/arm64"],
        ),
        Row::same(
            ImageSpec::oci_manifest("s/windows", "1", windows("10.0.17763.5329")),
            &[W2019],
        ),
    ]
}

fn resolver(registry: &Registry) -> Resolver {
    let options = RegistryOptions {
        insecure: vec![registry.host().to_owned()],
        ..RegistryOptions::default()
    };
    Resolver::new(options, Arc::new(Metrics::new())).unwrap()
}

async fn resolve(resolver: &Resolver, image: &PushedImage) -> Resolution {
    let reference = ImageRef::parse(&image.reference()).unwrap();
    resolver
        .resolve(&reference, &Credentials::default())
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", image.reference()))
}

/// The node names (as `NODES` spells them) that pull `resolution` among `nodes`.
fn pulled_by(resolution: &Resolution, nodes: &[NodeView]) -> Vec<String> {
    let mut out: Vec<String> = scheduling::candidates(&Placement::default(), nodes)
        .iter()
        .filter(|node| resolution.platforms.iter().any(|p| p.satisfies(node)))
        .map(Platform::node_name)
        .collect();
    out.sort();
    out
}

fn static_nodes(runtime: RuntimeMatcher) -> Vec<NodeView> {
    NODES
        .iter()
        .map(|n| NodeView::synthetic(&Platform::parse(n).unwrap().pulled_with(runtime)))
        .collect()
}

fn sorted(list: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

#[tokio::test]
async fn every_node_platform_against_every_image_shape() {
    common::install_crypto_provider();
    let registry = Registry::start().await;
    let resolver = resolver(&registry);
    let strict = static_nodes(RuntimeMatcher::Strict);
    let legacy = static_nodes(RuntimeMatcher::Containerd17);
    let mut wrong = Vec::new();
    for row in rows() {
        let pushed = row.image.push(&registry).await;
        let resolution = resolve(&resolver, &pushed).await;
        for (matcher, nodes, want) in [
            ("strict", &strict, row.strict),
            ("containerd-1.7", &legacy, row.legacy),
        ] {
            let have = pulled_by(&resolution, nodes);
            if have != sorted(want) {
                wrong.push(format!(
                    "{} {:?} ({matcher}): pulled by {have:?}, want {:?}",
                    pushed.reference(),
                    resolution.platforms,
                    sorted(want)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A Node as the API server shows it: labels and the kubelet's report.
fn live_node(name: &str, labels: &[(&str, &str)], os: &str, arch: &str, runtime: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            node_info: Some(NodeSystemInfo {
                operating_system: os.into(),
                architecture: arch.into(),
                container_runtime_version: runtime.into(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

/// With live nodes each node's containerd version picks the matcher, and a Windows node's build
/// label its `os.version` rule: a 386-only image runs on the containerd 1.7 amd64 node only.
#[tokio::test]
async fn live_nodes_match_with_their_own_runtime_and_build() {
    common::install_crypto_provider();
    let registry = Registry::start().await;
    let resolver = resolver(&registry);
    let i386 = ImageSpec::docker_list("live/i386", "1", [spec("linux", "386", None)])
        .push(&registry)
        .await;
    let ltsc2022 = ImageSpec::oci_index("live/win", "1", [windows("10.0.20348.2227")])
        .push(&registry)
        .await;
    let build = "node.kubernetes.io/windows-build";
    let nodes: Vec<NodeView> = [
        live_node("amd-17", &[], "linux", "amd64", "containerd://1.7.22"),
        live_node("amd-20", &[], "linux", "amd64", "containerd://2.0.1"),
        live_node("amd-crio", &[], "linux", "amd64", "cri-o://1.30.0"),
        live_node(
            "win-2019",
            &[(build, "10.0.17763")],
            "windows",
            "amd64",
            "containerd://1.7.22",
        ),
        live_node(
            "win-2022",
            &[(build, "10.0.20348")],
            "windows",
            "amd64",
            "containerd://1.7.22",
        ),
    ]
    .iter()
    .filter_map(node_view)
    .collect();
    let runs_on = |resolution: &Resolution| -> Vec<String> {
        let mut out: Vec<String> = nodes
            .iter()
            .filter(|n| {
                resolution
                    .platforms
                    .iter()
                    .any(|p| p.satisfies(&n.platform))
            })
            .map(|n| n.name.clone())
            .collect();
        out.sort();
        out
    };
    assert_eq!(runs_on(&resolve(&resolver, &i386).await), ["amd-17"]);
    assert_eq!(runs_on(&resolve(&resolver, &ltsc2022).await), ["win-2022"]);
    // The three amd64 nodes are one candidate: the strict ones decide, so the 386 image is
    // missing linux/amd64 for a pod that may land on any of them.
    let candidates = scheduling::candidates(&Placement::default(), &nodes);
    let names: Vec<String> = candidates.iter().map(Platform::node_name).collect();
    assert_eq!(
        names,
        [
            "linux/amd64",
            "windows(10.0.17763)/amd64",
            "windows(10.0.20348)/amd64"
        ]
    );
    assert_eq!(candidates[0].runtime, RuntimeMatcher::Strict);
}
