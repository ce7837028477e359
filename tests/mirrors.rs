//! Registry mirrors (containerd's hosts.toml idea): `mirrors: {origin: [mirror, ...]}` asks each
//! mirror in order before the origin and falls back on not-found or error. Two real registries,
//! each behind a counting proxy, show which host answered.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Parser;
use serde_json::{Value, json};

use archgate::cli::{Cli, Command};
use archgate::config::Settings;
use archgate::metrics::Metrics;
use archgate::reference::ImageRef;
use archgate::resolver::{Credentials, RegistryOptions, ResolveError, Resolver};
use archgate::serve;
use common::{CountingProxy, Fault, FaultRule, ImageSpec, PlatformSpec, Registry, RequestKind};

/// An origin registry and a mirror registry, each behind its own proxy.
struct Pair {
    _origin_registry: Registry,
    _mirror_registry: Registry,
    origin: CountingProxy,
    mirror: CountingProxy,
}

fn amd64() -> PlatformSpec {
    PlatformSpec::new("linux", "amd64")
}

fn arm64() -> PlatformSpec {
    PlatformSpec::new("linux", "arm64").variant("v8")
}

impl Pair {
    /// `team/only-origin:v1` (amd64 + arm64) in the origin; `team/only-mirror:v1` (index,
    /// amd64 + arm64) and `team/single:v1` (one arm64 manifest) in the mirror.
    async fn start() -> Self {
        common::install_crypto_provider();
        let origin_registry = Registry::start().await;
        let mirror_registry = Registry::start().await;
        ImageSpec::oci_index("team/only-origin", "v1", [amd64(), arm64()])
            .push(&origin_registry)
            .await;
        ImageSpec::oci_index("team/only-mirror", "v1", [amd64(), arm64()])
            .push(&mirror_registry)
            .await;
        ImageSpec::oci_manifest("team/single", "v1", arm64())
            .push(&mirror_registry)
            .await;
        let origin = CountingProxy::start(origin_registry.host()).await;
        let mirror = CountingProxy::start(mirror_registry.host()).await;
        Self {
            _origin_registry: origin_registry,
            _mirror_registry: mirror_registry,
            origin,
            mirror,
        }
    }

    /// An image as a pod spec writes it: always at the origin.
    fn image(&self, path: &str) -> ImageRef {
        ImageRef::parse(&format!("{}/{path}", self.origin.host())).unwrap()
    }

    fn resolver(&self, mirrors: &[&str]) -> Resolver {
        let mut insecure = vec![self.origin.host().to_owned()];
        insecure.extend(mirrors.iter().map(|m| m.to_string()));
        let options = RegistryOptions {
            insecure,
            mirrors: BTreeMap::from([(
                self.origin.host().to_owned(),
                mirrors.iter().map(|m| m.to_string()).collect(),
            )]),
            ..RegistryOptions::default()
        };
        Resolver::new(options, Arc::new(Metrics::new())).unwrap()
    }

    fn reset(&self) {
        self.origin.reset();
        self.mirror.reset();
    }
}

fn anonymous() -> Credentials {
    Credentials::default()
}

fn names(platforms: &[archgate::platform::Platform]) -> Vec<String> {
    platforms.iter().map(|p| p.to_string()).collect()
}

/// A `127.0.0.1` port nothing listens on: connections are refused.
fn dead_host() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    drop(listener);
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_only_in_the_mirror_is_resolved_there_without_asking_the_origin() {
    let pair = Pair::start().await;
    let resolver = pair.resolver(&[pair.mirror.host()]);
    pair.reset();
    let index = resolver
        .resolve(&pair.image("team/only-mirror:v1"), &anonymous())
        .await
        .unwrap();
    assert_eq!(names(&index.platforms), ["linux/amd64", "linux/arm64/v8"]);
    // A single manifest needs its config blob too: also from the mirror.
    let single = resolver
        .resolve(&pair.image("team/single:v1"), &anonymous())
        .await
        .unwrap();
    assert_eq!(names(&single.platforms), ["linux/arm64/v8"]);
    assert_eq!(
        pair.origin.counts().total(),
        0,
        "{:?}",
        pair.origin.counts()
    );
    let mirror = pair.mirror.counts();
    // One GET per tag (digest and content at once) and the single image's config blob; no
    // version probe.
    assert_eq!(mirror.get("GET", RequestKind::Manifest), 2, "{mirror:?}");
    assert_eq!(mirror.get("GET", RequestKind::Blob), 1, "{mirror:?}");
    assert_eq!(mirror.total(), 3, "{mirror:?}");

    // Cached under the origin reference: asking again asks nobody.
    pair.reset();
    for path in ["team/only-mirror:v1", "team/single:v1"] {
        resolver
            .resolve(&pair.image(path), &anonymous())
            .await
            .unwrap();
    }
    assert_eq!(
        pair.origin.counts().total() + pair.mirror.counts().total(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_only_in_the_origin_is_found_by_falling_back() {
    let pair = Pair::start().await;
    let resolver = pair.resolver(&[pair.mirror.host()]);
    pair.reset();
    let resolution = resolver
        .resolve(&pair.image("team/only-origin:v1"), &anonymous())
        .await
        .unwrap();
    assert_eq!(
        names(&resolution.platforms),
        ["linux/amd64", "linux/arm64/v8"]
    );
    assert!(pair.mirror.counts().kind(RequestKind::Manifest) > 0);
    let origin = pair.origin.counts();
    assert_eq!(origin.get("HEAD", RequestKind::Manifest), 0, "{origin:?}");
    assert_eq!(origin.get("GET", RequestKind::Manifest), 1, "{origin:?}");

    // In neither: the origin's not-found is the answer.
    let error = resolver
        .resolve(&pair.image("team/nowhere:v1"), &anonymous())
        .await
        .unwrap_err();
    assert_eq!(
        error,
        ResolveError::NotFound {
            registry: pair.origin.host().to_owned()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_that_are_down_or_failing_fall_back_in_order_to_the_origin() {
    let pair = Pair::start().await;
    let dead = dead_host();
    // First mirror refuses connections, the second answers 500 to everything.
    let resolver = pair.resolver(&[&dead, pair.mirror.host()]);
    pair.mirror.set_fault(Fault::Status {
        status: 500,
        retry_after: None,
    });
    pair.reset();
    let resolution = resolver
        .resolve(&pair.image("team/only-origin:v1"), &anonymous())
        .await
        .unwrap();
    assert_eq!(resolution.platforms.len(), 2);
    assert!(
        pair.mirror.counts().total() > 0,
        "the second mirror was asked"
    );
    assert_eq!(pair.origin.counts().kind(RequestKind::Manifest), 1);

    // Every host failing: the origin's failure is what the operator hears about.
    pair.origin.set_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    let error = resolver
        .resolve(&pair.image("team/only-mirror:v1"), &anonymous())
        .await
        .unwrap_err();
    assert_eq!(error.registry(), pair.origin.host(), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_mirror_is_skipped_without_requests_during_its_pause() {
    let pair = Pair::start().await;
    let resolver = pair.resolver(&[pair.mirror.host()]);
    pair.mirror.set_fault(
        FaultRule::new(Fault::Status {
            status: 429,
            retry_after: Some(30),
        })
        .only(RequestKind::Manifest),
    );
    let first = resolver
        .resolve(&pair.image("team/only-origin:v1"), &anonymous())
        .await
        .unwrap();
    assert_eq!(first.platforms.len(), 2, "the origin answered");
    pair.mirror.clear_fault();
    pair.reset();
    // The mirror is paused: the next cold lookups go straight to the origin.
    let error = resolver
        .resolve(&pair.image("team/only-mirror:v1"), &anonymous())
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error:?}");
    assert_eq!(
        pair.mirror.counts().total(),
        0,
        "{:?}",
        pair.mirror.counts()
    );
    assert!(pair.origin.counts().total() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirrors_key_of_the_config_file_reaches_the_webhook() {
    let pair = Pair::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let ca = dir.path().join("ca.crt");
    std::fs::write(
        &config,
        format!(
            "selfSigned: true\nlisten: 127.0.0.1:0\nadminListen: 127.0.0.1:0\n\
             platforms: [linux/amd64]\nregistryConcurrency: 2\n\
             insecureRegistries: [\"{o}\", \"{m}\"]\nmirrors:\n  \"{o}\": [\"{m}\"]\n",
            o = pair.origin.host(),
            m = pair.mirror.host()
        ),
    )
    .unwrap();
    let argv = [
        "archgate",
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--self-signed-ca-out",
        ca.to_str().unwrap(),
        "--self-signed",
    ];
    let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    let settings = Settings::resolve(&args).unwrap();
    assert_eq!(settings.registry.concurrency, 2);
    let running = serve::start(settings).await.unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap()])
        .no_proxy()
        .build()
        .unwrap();
    pair.reset();
    let image = pair.image("team/single:v1").written().to_owned();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "7d0c3a52-0000-4000-8000-000000000002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "mirrors"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "namespace": "default"},
                "spec": {"containers": [{"name": "app", "image": image}]}
            }
        }
    });
    let body: Value = client
        .post(format!(
            "https://localhost:{}/validate",
            running.webhook.port()
        ))
        .json(&review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = &body["response"];
    assert_eq!(response["allowed"], false, "{response}");
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "image \"{image}\" is missing linux/amd64 (available: linux/arm64)"
        )),
        "{message}"
    );
    assert_eq!(
        pair.origin.counts().total(),
        0,
        "{:?}",
        pair.origin.counts()
    );
    assert!(pair.mirror.counts().total() > 0);
}
