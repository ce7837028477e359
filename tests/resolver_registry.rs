//! The resolution engine against a real registry (Debian's `docker-registry`), mostly through the
//! counting proxy so that every cache claim of issue 2 is proved by the requests that reached the
//! registry, not by timings.
//!
//! What each lookup costs is the distribution API's minimum, and the tests hold it to that: a
//! cold tag is one manifest GET (plus the config blob for a single image), a tag past its TTL one
//! HEAD, and a registry's version endpoint (`GET /v2/`, "Base") is never asked: the first lookup's
//! own request is the probe (it teaches how the registry wants to be authenticated).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use archgate::metrics::Metrics;
use archgate::pipeline::{self, Exemptions, RECHECK_AFTER};
use archgate::platform::Platform;
use archgate::reference::ImageRef;
use archgate::resolver::{
    Credentials, Digest, RegistryOptions, Resolution, ResolveError, Resolver,
};
use archgate::scheduling::NodeView;
use archgate::workload::{Location, Placement, Target};
use base64::Engine;
use common::proxy::EventKind;
use common::{
    CountingProxy, Counts, Fault, FaultRule, Fixtures, ImageSpec, PlatformSpec, PushedImage,
    Registry, RequestKind, push_standard_fixtures,
};

/// A plain registry with the standard fixtures, and a counting proxy in front of it.
struct Setup {
    // Kept alive for the test's duration; dropped (killed) at its end.
    registry: Registry,
    proxy: CountingProxy,
    fixtures: Fixtures,
}

impl Setup {
    async fn start() -> Self {
        common::install_crypto_provider();
        let registry = Registry::start().await;
        let fixtures = push_standard_fixtures(&registry).await;
        let proxy = CountingProxy::start(registry.host()).await;
        Self {
            registry,
            proxy,
            fixtures,
        }
    }

    /// Options that speak plain HTTP to the proxy.
    fn options(&self) -> RegistryOptions {
        RegistryOptions {
            insecure: vec![self.proxy.host().to_owned()],
            ..RegistryOptions::default()
        }
    }

    /// A reference to `image` through the proxy: `127.0.0.1:PROXY/repository:tag`.
    fn tag_ref(&self, image: &PushedImage) -> ImageRef {
        self.written(&format!("{}:{}", image.repository, image.tag))
    }

    /// `127.0.0.1:PROXY/<path>`, parsed.
    fn written(&self, path: &str) -> ImageRef {
        ImageRef::parse(&format!("{}/{path}", self.proxy.host())).unwrap()
    }
}

fn resolver(options: RegistryOptions) -> Resolver {
    Resolver::new(options, Arc::new(Metrics::new())).unwrap()
}

fn anonymous() -> Credentials {
    Credentials::default()
}

/// `os/arch[/variant][ (os.version)]` of each platform, as messages show them.
fn names(resolution: &Resolution) -> Vec<String> {
    resolution
        .platforms
        .iter()
        .map(Platform::to_string)
        .collect()
}

/// Requests of one lookup, as `(base pings, HEAD manifest, GET manifest, GET blob, total)`.
fn tally(counts: &Counts) -> (u64, u64, u64, u64, u64) {
    (
        counts.get("GET", RequestKind::Base),
        counts.get("HEAD", RequestKind::Manifest),
        counts.get("GET", RequestKind::Manifest),
        counts.get("GET", RequestKind::Blob),
        counts.total(),
    )
}

#[tokio::test]
async fn every_fixture_shape_resolves_to_its_platforms_and_costs_what_it_should() {
    let setup = Setup::start().await;
    let resolver = resolver(setup.options());
    let f = &setup.fixtures;
    // (image, platforms as shown, config blob fetched?)
    let cases: [(&PushedImage, &[&str], bool); 6] = [
        // OCI index with buildkit attestations: the unknown/unknown entries are left out.
        (&f.multi, &["linux/amd64", "linux/arm64/v8"], false),
        (&f.ai_base_cuda, &["linux/arm64/v8"], false),
        (&f.docker_list, &["linux/amd64", "linux/arm/v7"], false),
        // Single manifests: the platform comes from the config blob.
        (&f.single_amd64, &["linux/amd64"], true),
        (&f.single_arm64, &["linux/arm64/v8"], true),
        // Windows keeps its os.version, which messages show.
        (&f.windows, &["windows/amd64 (10.0.17763.5329)"], false),
    ];
    for (image, platforms, via_config) in cases {
        setup.proxy.reset();
        let reference = setup.tag_ref(image);
        let resolution = resolver
            .resolve(&reference, &anonymous())
            .await
            .unwrap_or_else(|e| panic!("{reference}: {e}"));
        assert_eq!(
            resolution.digest,
            Some(Digest::new(&image.digest)),
            "{reference}"
        );
        assert_eq!(names(&resolution), platforms, "{reference}");
        let blobs = u64::from(via_config);
        // One GET of the tag (digest and content at once) and the config GET when there is
        // one, the very first lookup's too: no version probe.
        assert_eq!(
            tally(&setup.proxy.counts()),
            (0, 0, 1, blobs, 1 + blobs),
            "requests for {reference}: {:?}",
            setup.proxy.counts()
        );
    }
    let windows = resolver
        .resolve(&setup.tag_ref(&f.windows), &anonymous())
        .await
        .unwrap();
    assert_eq!(
        windows.platforms[0].os_version.as_deref(),
        Some("10.0.17763.5329")
    );
    assert!(
        windows.platforms[0].satisfies(&Platform::parse("windows/amd64").unwrap()),
        "os.version is shown, not matched"
    );
}

#[tokio::test]
async fn missing_tag_and_unknown_repository_are_not_found() {
    let setup = Setup::start().await;
    let resolver = resolver(setup.options());
    let registry = setup.proxy.host().to_owned();
    for path in ["fixtures/multi:no-such-tag", "nobody/nothing:latest"] {
        let error = resolver
            .resolve(&setup.written(path), &anonymous())
            .await
            .unwrap_err();
        assert_eq!(
            error,
            ResolveError::NotFound {
                registry: registry.clone()
            },
            "{path}"
        );
        assert!(error.is_not_found());
    }
    // A digest that the repository does not hold is not found either.
    let absent = format!("fixtures/multi@sha256:{}", "0".repeat(64));
    let error = resolver
        .resolve(&setup.written(&absent), &anonymous())
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error:?}");
}

#[tokio::test]
async fn digest_references_resolve_the_digest_without_asking_for_a_tag() {
    let setup = Setup::start().await;
    let resolver = resolver(setup.options());
    let f = &setup.fixtures;
    // Another build of the same repository under another tag.
    let s390x = ImageSpec::oci_index("fixtures/multi", "old", [("linux", "s390x", None)])
        .push(&setup.registry)
        .await;

    let cases = [
        // Pinned index.
        (
            format!("fixtures/multi@{}", f.multi.digest),
            f.multi.digest.clone(),
            vec!["linux/amd64", "linux/arm64/v8"],
        ),
        // Tag and digest disagree: the runtime pulls the digest, and so do we.
        (
            format!("fixtures/multi:latest@{}", s390x.digest),
            s390x.digest.clone(),
            vec!["linux/s390x"],
        ),
        // A child manifest of an index, pinned: a single image, platform from its config.
        (
            format!(
                "fixtures/multi@{}",
                f.multi.manifest_for("linux/arm64/v8").digest
            ),
            f.multi.manifest_for("linux/arm64/v8").digest.clone(),
            vec!["linux/arm64/v8"],
        ),
    ];
    for (path, digest, platforms) in cases {
        setup.proxy.reset();
        let reference = setup.written(&path);
        let resolution = resolver.resolve(&reference, &anonymous()).await.unwrap();
        assert_eq!(resolution.digest, Some(Digest::new(&digest)), "{path}");
        assert_eq!(names(&resolution), platforms, "{path}");
        let counts = setup.proxy.counts();
        assert_eq!(
            counts.get("HEAD", RequestKind::Manifest),
            0,
            "{path}: a digest needs no tag lookup"
        );
        assert_eq!(counts.get("GET", RequestKind::Manifest), 1, "{path}");
        assert_eq!(resolver.tag_age(&reference, &anonymous()).await, None);
    }
}

#[tokio::test]
async fn warm_lookups_make_no_registry_requests() {
    let setup = Setup::start().await;
    let resolver = resolver(setup.options());
    let f = &setup.fixtures;
    let references = [
        setup.tag_ref(&f.multi),
        setup.tag_ref(&f.single_amd64),
        setup.written(&format!("fixtures/windows@{}", f.windows.digest)),
    ];
    let mut first = Vec::new();
    for reference in &references {
        first.push(resolver.resolve(reference, &anonymous()).await.unwrap());
    }
    setup.proxy.reset();
    for _ in 0..20 {
        for (reference, expected) in references.iter().zip(&first) {
            let again = resolver.resolve(reference, &anonymous()).await.unwrap();
            assert_eq!(&again, expected);
        }
    }
    assert_eq!(setup.proxy.counts(), Counts::default(), "warm lookups");
    assert_eq!(resolver.cached_images().await, 3);
}

#[tokio::test]
async fn a_tag_past_its_ttl_costs_one_head_and_nothing_more_when_the_digest_is_known() {
    let setup = Setup::start().await;
    let ttl = Duration::from_millis(300);
    let resolver = resolver(RegistryOptions {
        tag_ttl: ttl,
        ..setup.options()
    });
    let f = &setup.fixtures;
    // The single-manifest image would cost a manifest GET and a config GET if re-fetched.
    for image in [&f.single_amd64, &f.multi] {
        let reference = setup.tag_ref(image);
        let first = resolver.resolve(&reference, &anonymous()).await.unwrap();
        let age = resolver.tag_age(&reference, &anonymous()).await.unwrap();
        assert!(age < ttl, "{age:?}");

        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        setup.proxy.reset();
        let again = resolver.resolve(&reference, &anonymous()).await.unwrap();
        assert_eq!(again, first);
        // One HEAD, no manifest GET, no blob, no probe.
        assert_eq!(
            tally(&setup.proxy.counts()),
            (0, 1, 0, 0, 1),
            "{reference}: {:?}",
            setup.proxy.counts()
        );
        // The tag's answer is fresh again.
        let age = resolver.tag_age(&reference, &anonymous()).await.unwrap();
        assert!(age < ttl, "{age:?}");
    }
}

/// A stale tag is revalidated once however many lookups want it at that moment, and the HEAD
/// that finds the digest unchanged leaves the tag as warm as a GET did: the next lookups send
/// nothing.
#[tokio::test]
async fn concurrent_lookups_of_a_stale_tag_share_one_head() {
    let setup = Setup::start().await;
    let ttl = Duration::from_millis(300);
    let resolver = resolver(RegistryOptions {
        tag_ttl: ttl,
        ..setup.options()
    });
    let reference = setup.tag_ref(&setup.fixtures.single_amd64);
    let first = resolver.resolve(&reference, &anonymous()).await.unwrap();

    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    setup.proxy.reset();
    let credentials = anonymous();
    let lookups = (0..8).map(|_| resolver.resolve(&reference, &credentials));
    for again in futures::future::join_all(lookups).await {
        assert_eq!(again.unwrap(), first);
    }
    assert_eq!(
        tally(&setup.proxy.counts()),
        (0, 1, 0, 0, 1),
        "{:?}",
        setup.proxy.counts()
    );

    setup.proxy.reset();
    assert_eq!(
        resolver.resolve(&reference, &anonymous()).await.unwrap(),
        first
    );
    assert_eq!(setup.proxy.counts(), Counts::default());
}

#[tokio::test]
async fn not_found_is_remembered_for_its_ttl_then_asked_again() {
    let setup = Setup::start().await;
    let not_found_ttl = Duration::from_millis(1500);
    let resolver = resolver(RegistryOptions {
        not_found_ttl,
        ..setup.options()
    });
    let reference = setup.written("fixtures/late:v1");
    let started = Instant::now();
    let error = resolver
        .resolve(&reference, &anonymous())
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error:?}");
    // A missing tag: one GET answered 404 (the status is the answer), no probe.
    assert_eq!(tally(&setup.proxy.counts()), (0, 0, 1, 0, 1));

    // The tag appears now, but the not-found answer stands until its TTL ends.
    let late = ImageSpec::oci_index("fixtures/late", "v1", [("linux", "amd64", None)])
        .push(&setup.registry)
        .await;
    setup.proxy.reset();
    let error = resolver
        .resolve(&reference, &anonymous())
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < not_found_ttl,
        "the machine was too slow to observe the cached not-found"
    );
    assert!(error.is_not_found());
    assert_eq!(setup.proxy.counts(), Counts::default(), "cached not-found");

    tokio::time::sleep(
        not_found_ttl.saturating_sub(started.elapsed()) + Duration::from_millis(100),
    )
    .await;
    let found = resolver.resolve(&reference, &anonymous()).await.unwrap();
    assert_eq!(found.digest, Some(Digest::new(&late.digest)));
    assert_eq!(names(&found), ["linux/amd64"]);
    // No digest was ever known for the tag: one GET, no HEAD.
    assert_eq!(tally(&setup.proxy.counts()), (0, 0, 1, 0, 1));
}

#[tokio::test]
async fn registry_errors_are_not_cached() {
    let setup = Setup::start().await;
    let resolver = resolver(setup.options());
    let reference = setup.tag_ref(&setup.fixtures.multi);
    // A manifest GET answered 500 is the answer (no retry).
    setup.proxy.set_fault(
        FaultRule::new(Fault::Status {
            status: 500,
            retry_after: None,
        })
        .only(RequestKind::Manifest)
        .times(1),
    );
    let error = resolver
        .resolve(&reference, &anonymous())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ResolveError::ServerFault { status: 500, .. }),
        "{error:?}"
    );
    assert_eq!(setup.proxy.counts().kind(RequestKind::Manifest), 1);
    assert_eq!(resolver.tag_age(&reference, &anonymous()).await, None);

    // The registry recovered: the very next lookup asks again and succeeds.
    setup.proxy.reset();
    let resolution = resolver.resolve(&reference, &anonymous()).await.unwrap();
    assert_eq!(
        resolution.digest,
        Some(Digest::new(&setup.fixtures.multi.digest))
    );
    assert_eq!(tally(&setup.proxy.counts()), (0, 0, 1, 0, 1));

    // The same for the digest → platforms step: a failed manifest GET is not remembered either.
    let pinned = setup.written(&format!(
        "fixtures/dockerlist@{}",
        setup.fixtures.docker_list.digest
    ));
    setup.proxy.set_fault(
        FaultRule::new(Fault::Status {
            status: 503,
            retry_after: None,
        })
        .only(RequestKind::Manifest)
        .times(1),
    );
    let error = resolver.resolve(&pinned, &anonymous()).await.unwrap_err();
    assert!(
        matches!(error, ResolveError::ServerFault { status: 503, .. }),
        "{error:?}"
    );
    let resolution = resolver.resolve(&pinned, &anonymous()).await.unwrap();
    assert_eq!(names(&resolution), ["linux/amd64", "linux/arm/v7"]);
}

/// 40 reviews of one cold image at once: one set of registry requests, shared by all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_lookups_share_one_registry_round_trip() {
    let setup = Setup::start().await;
    let resolver = Arc::new(resolver(setup.options()));
    // (image, config blob GETs); no version probe, even for the 40 first contacts at once.
    for (image, blobs) in [
        (&setup.fixtures.single_arm64, 1),
        (&setup.fixtures.multi, 0),
    ] {
        setup.proxy.reset();
        let reference = setup.tag_ref(image);
        let lookups: Vec<_> = (0..40)
            .map(|_| {
                let resolver = resolver.clone();
                let reference = reference.clone();
                tokio::spawn(async move { resolver.resolve(&reference, &anonymous()).await })
            })
            .collect();
        for lookup in lookups {
            let resolution = lookup.await.unwrap().unwrap();
            assert_eq!(resolution.digest, Some(Digest::new(&image.digest)));
        }
        assert_eq!(
            tally(&setup.proxy.counts()),
            (0, 0, 1, blobs, 1 + blobs),
            "{reference}: {:?}",
            setup.proxy.counts()
        );
    }
}

#[tokio::test]
async fn refresh_re_resolves_a_moved_tag() {
    let setup = Setup::start().await;
    let resolver = resolver(setup.options()); // default 60 s tag TTL
    let reference = setup.tag_ref(&setup.fixtures.ai_base_cuda);
    let before = resolver.resolve(&reference, &anonymous()).await.unwrap();
    assert_eq!(names(&before), ["linux/arm64/v8"]);

    // Rebuilt with buildx for both platforms and pushed to the same tag.
    let rebuilt = ImageSpec::oci_index(
        "cerebral/ai-base",
        "cuda",
        [
            PlatformSpec::new("linux", "amd64"),
            PlatformSpec::new("linux", "arm64").variant("v8"),
        ],
    )
    .with_attestations()
    .with_revision("2")
    .push(&setup.registry)
    .await;
    assert_ne!(Some(Digest::new(&rebuilt.digest)), before.digest);

    setup.proxy.reset();
    let cached = resolver.resolve(&reference, &anonymous()).await.unwrap();
    assert_eq!(cached, before, "within the TTL the cached digest stands");
    assert_eq!(setup.proxy.counts(), Counts::default());

    let after = resolver.refresh(&reference, &anonymous()).await.unwrap();
    assert_eq!(after.digest, Some(Digest::new(&rebuilt.digest)));
    assert_eq!(names(&after), ["linux/amd64", "linux/arm64/v8"]);
    // A HEAD finds the new digest, whose index one GET reads.
    assert_eq!(tally(&setup.proxy.counts()), (0, 1, 1, 0, 2));

    // The refreshed answer is what later lookups see.
    setup.proxy.reset();
    assert_eq!(
        resolver.resolve(&reference, &anonymous()).await.unwrap(),
        after
    );
    assert_eq!(setup.proxy.counts(), Counts::default());
}

/// Writes a docker `config.json` with basic-auth credentials for `host`.
fn docker_config(dir: &tempfile::TempDir, host: &str, user: &str, password: &str) -> PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let json = serde_json::json!({ "auths": { host: { "auth": auth } } });
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    path
}

/// A TLS registry that requires Basic auth (bcrypt htpasswd) with the standard fixtures, the
/// right credentials for it, and options that trust its CA.
async fn basic_auth_registry() -> (Registry, Fixtures, Credentials, RegistryOptions) {
    common::install_crypto_provider();
    let registry = Registry::start_tls_auth("ci", "s3cret-pw").await;
    let fixtures = push_standard_fixtures(&registry).await;
    let dir = tempfile::tempdir().unwrap();
    let config = docker_config(&dir, registry.host(), "ci", "s3cret-pw");
    let good = Credentials::load(Some(&config)).unwrap();
    let options = RegistryOptions {
        ca_pem: Some(registry.ca_pem().as_bytes().to_vec()),
        ..RegistryOptions::default()
    };
    (registry, fixtures, good, options)
}

#[tokio::test]
async fn tls_registry_with_htpasswd_needs_the_ca_and_the_credentials() {
    let (registry, fixtures, good, options) = basic_auth_registry().await;
    let resolver = resolver(options);
    let multi = ImageRef::parse(&fixtures.multi.reference()).unwrap();
    let single = ImageRef::parse(&fixtures.single_arm64.reference()).unwrap();
    let unauthorized = ResolveError::Unauthorized {
        registry: registry.host().to_owned(),
    };

    // Anonymous first, on the same resolver: the refusal must not stick to the host.
    let error = resolver.resolve(&multi, &anonymous()).await.unwrap_err();
    assert_eq!(error, unauthorized);

    let resolution = resolver.resolve(&multi, &good).await.unwrap();
    assert_eq!(resolution.digest, Some(Digest::new(&fixtures.multi.digest)));
    assert_eq!(names(&resolution), ["linux/amd64", "linux/arm64/v8"]);
    // The config blob is fetched with the credentials too.
    let resolution = resolver.resolve(&single, &good).await.unwrap();
    assert_eq!(names(&resolution), ["linux/arm64/v8"]);

    // Cached per credential identity: anonymous still cannot see what `good` resolved.
    let error = resolver.resolve(&multi, &anonymous()).await.unwrap_err();
    assert_eq!(error, unauthorized);

    let wrong_dir = tempfile::tempdir().unwrap();
    let wrong = Credentials::load(Some(&docker_config(
        &wrong_dir,
        registry.host(),
        "ci",
        "wrong",
    )))
    .unwrap();
    let error = resolver.resolve(&multi, &wrong).await.unwrap_err();
    assert_eq!(error, unauthorized);

    // Without the CA the registry's certificate is not trusted: it cannot be asked.
    let untrusting = self::resolver(RegistryOptions::default());
    let error = untrusting.resolve(&multi, &good).await.unwrap_err();
    assert!(
        matches!(&error, ResolveError::Untrusted { reason, .. } if reason == "UnknownIssuer"),
        "{error:?}"
    );
}

/// `archgate_registry_requests_total` for one status class (`2xx`, `4xx`, ...).
fn requests_answered(metrics: &Metrics, class: &str) -> u64 {
    let line = format!("archgate_registry_requests_total{{status=\"{class}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Issue 14: the first request to a registry goes out anonymously (it is the probe); only its
/// 401 `Basic` challenge makes archgate send the credentials, and from then on they go with
/// every request at once, without another 401.
#[tokio::test]
async fn basic_credentials_go_once_the_registry_asks_then_with_every_request() {
    let (_registry, fixtures, good, options) = basic_auth_registry().await;
    let metrics = Arc::new(Metrics::new());
    let resolver = Resolver::new(options, metrics.clone()).unwrap();
    let answered = || {
        (
            requests_answered(&metrics, "2xx"),
            requests_answered(&metrics, "4xx"),
        )
    };

    let multi = ImageRef::parse(&fixtures.multi.reference()).unwrap();
    let resolution = resolver.resolve(&multi, &good).await.unwrap();
    assert_eq!(resolution.digest, Some(Digest::new(&fixtures.multi.digest)));
    // The anonymous first GET refused (401 Basic), then the same GET with the credentials.
    assert_eq!(answered(), (1, 1));

    // The challenge is known: manifest and config blob go with the credentials at once.
    let single = ImageRef::parse(&fixtures.single_arm64.reference()).unwrap();
    let resolution = resolver.resolve(&single, &good).await.unwrap();
    assert_eq!(names(&resolution), ["linux/arm64/v8"]);
    assert_eq!(answered(), (3, 1));

    // Without credentials the request is refused once: retrying it unchanged would be pointless.
    let windows = ImageRef::parse(&fixtures.windows.reference()).unwrap();
    let error = resolver.resolve(&windows, &anonymous()).await.unwrap_err();
    assert!(
        matches!(error, ResolveError::Unauthorized { .. }),
        "{error:?}"
    );
    assert_eq!(answered(), (3, 2));
}

/// Credentials configured for a registry that lets anyone pull are never sent to it: the first
/// (anonymous) answer says it does not ask for them.
#[tokio::test]
async fn credentials_for_a_registry_that_does_not_ask_are_never_sent() {
    let setup = Setup::start().await;
    let resolver = resolver(setup.options());
    let dir = tempfile::tempdir().unwrap();
    let config = docker_config(&dir, setup.proxy.host(), "ci", "s3cret-pw");
    let credentials = Credentials::load(Some(&config)).unwrap();
    for image in [&setup.fixtures.single_amd64, &setup.fixtures.multi] {
        resolver
            .resolve(&setup.tag_ref(image), &credentials)
            .await
            .unwrap();
    }
    let arrived: Vec<(String, RequestKind, Option<String>)> = setup
        .proxy
        .timeline()
        .into_iter()
        .filter_map(|event| match event.what {
            EventKind::Arrived {
                method,
                kind,
                authorization,
            } => Some((method, kind, authorization)),
            _ => None,
        })
        .collect();
    // Two manifest GETs and a config blob, none with an Authorization header.
    assert_eq!(arrived.len(), 3, "{arrived:?}");
    assert!(arrived.iter().all(|(_, _, a)| a.is_none()), "{arrived:?}");
}

#[tokio::test]
async fn a_closed_port_refuses_the_connection() {
    common::install_crypto_provider();
    let host = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let resolver = resolver(RegistryOptions {
        insecure: vec![host.clone()],
        ..RegistryOptions::default()
    });
    let reference = ImageRef::parse(&format!("{host}/team/app:v1")).unwrap();
    let error = resolver
        .resolve(&reference, &anonymous())
        .await
        .unwrap_err();
    match &error {
        ResolveError::Refused { registry } => assert_eq!(registry, &host),
        other => panic!("expected Refused, got {other:?}"),
    }
    // Not cached: asking again asks again (and fails the same way).
    assert_eq!(resolver.tag_age(&reference, &anonymous()).await, None);
}

#[tokio::test]
async fn a_registry_slower_than_the_request_timeout_is_a_timeout() {
    let setup = Setup::start().await;
    let request_timeout = Duration::from_millis(300);
    let resolver = resolver(RegistryOptions {
        request_timeout,
        ..setup.options()
    });
    setup.proxy.set_fault(
        FaultRule::new(Fault::Delay(Duration::from_secs(3))).only(RequestKind::Manifest),
    );
    let reference = setup.tag_ref(&setup.fixtures.multi);
    let started = Instant::now();
    let error = resolver
        .resolve(&reference, &anonymous())
        .await
        .unwrap_err();
    assert_eq!(
        error,
        ResolveError::Timeout {
            registry: setup.proxy.host().to_owned()
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up after {:?}",
        started.elapsed()
    );

    // Timeouts are not cached either.
    setup.proxy.clear_fault();
    let resolution = resolver.resolve(&reference, &anonymous()).await.unwrap();
    assert_eq!(
        resolution.digest,
        Some(Digest::new(&setup.fixtures.multi.digest))
    );
}

fn target(image: &ImageRef) -> Target {
    Target {
        location: Location::container(None, "app"),
        image: image.written().to_owned(),
        placement: Arc::new(Placement::default()),
        known_platforms: None,
    }
}

/// Runs the review pipeline for `images` on linux/amd64 nodes; returns each image's missing
/// platforms, or `None` when its lookup failed (not found).
async fn review_missing(resolver: &Resolver, images: &[&ImageRef]) -> Vec<Option<Vec<String>>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    review(resolver, images, deadline)
        .await
        .iter()
        .map(|checked| match &checked.outcome {
            archgate::policy::Outcome::Resolved(_) => {
                Some(checked.missing().iter().map(Platform::to_string).collect())
            }
            archgate::policy::Outcome::Failed(e) => {
                assert!(e.is_not_found(), "{e:?}");
                None
            }
            archgate::policy::Outcome::Invalid(e) => panic!("{e}"),
        })
        .collect()
}

/// The review pipeline's lookups for `images` on linux/amd64 nodes, due by `deadline`.
async fn review(
    resolver: &Resolver,
    images: &[&ImageRef],
    deadline: tokio::time::Instant,
) -> Vec<archgate::policy::Checked> {
    let nodes = [NodeView::synthetic(
        &Platform::parse("linux/amd64").unwrap(),
    )];
    pipeline::resolve(
        images.iter().map(|i| target(i)).collect(),
        &nodes,
        resolver,
        |_| Arc::new(anonymous()),
        &Exemptions::default(),
        deadline,
    )
    .await
}

/// A resolver through `setup`'s proxy whose tag and "not found" answers live `lifetime`.
fn resolver_living(setup: &Setup, lifetime: Duration) -> Resolver {
    resolver(RegistryOptions {
        tag_ttl: lifetime,
        not_found_ttl: lifetime,
        ..setup.options()
    })
}

/// Before: past the 64 lookups a review runs at once, lookups started in the order written, so
/// an object naming 100 images on a registry that never answers, before a real one, held every
/// slot until the deadline and the real image timed out (allowed under the default
/// `--on-registry-error allow`). Now images on registries that answered lately go first, one
/// per registry in turn: here the stalling registry has answered before, too.
#[tokio::test]
async fn images_on_silent_registries_cannot_starve_a_real_one() {
    let setup = Setup::start().await;
    let silent = CountingProxy::start(setup.registry.host()).await;
    let resolver = resolver(RegistryOptions {
        insecure: vec![setup.proxy.host().to_owned(), silent.host().to_owned()],
        ..RegistryOptions::default()
    });
    // Both registries have answered this process before; then one stalls.
    let multi = setup.tag_ref(&setup.fixtures.multi);
    resolver.resolve(&multi, &anonymous()).await.unwrap();
    let warm_up = ImageRef::parse(&format!("{}/pad/first:v1", silent.host())).unwrap();
    let gone = resolver.resolve(&warm_up, &anonymous()).await.unwrap_err();
    assert!(gone.is_not_found(), "{gone:?}");
    assert!(resolver.answered_lately(multi.registry()));
    assert!(resolver.answered_lately(silent.host()));
    silent.set_fault(Fault::Delay(Duration::from_secs(30)));

    let mut images: Vec<ImageRef> = (0..100)
        .map(|i| ImageRef::parse(&format!("{}/pad/p{i}:v1", silent.host())).unwrap())
        .collect();
    let real = setup.tag_ref(&setup.fixtures.single_amd64);
    images.push(real.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let checked = review(&resolver, &images.iter().collect::<Vec<_>>(), deadline).await;
    let last = checked.last().unwrap();
    assert_eq!(last.target.image, real.written());
    assert!(
        matches!(last.outcome, archgate::policy::Outcome::Resolved(_)),
        "{:?}",
        last.outcome
    );
    // The silent registry's images were still asked, and timed out.
    assert!(
        matches!(
            &checked[0].outcome,
            archgate::policy::Outcome::Failed(e) if e.summary().contains("in time")
        ),
        "{:?}",
        checked[0].outcome
    );
}

/// A recheck that fails (a 5xx, a 429, a refused connection) leaves a denial archgate already
/// knows standing: before, the recheck's error replaced it, and `--on-registry-error allow`
/// admitted an image seen lacking the platform, or seen not to exist.
#[tokio::test]
async fn a_recheck_that_fails_keeps_the_denial() {
    let setup = Setup::start().await;
    let resolver = resolver_living(&setup, Duration::from_secs(600));
    let ai_base = setup.tag_ref(&setup.fixtures.ai_base_cuda);
    let absent = setup.written("cerebral/absent:v1");
    let images = [&ai_base, &absent];
    let first_asked = Instant::now();
    let first = review_missing(&resolver, &images).await;
    assert_eq!(first, [Some(vec!["linux/amd64".to_owned()]), None]);

    let wait = (RECHECK_AFTER + Duration::from_millis(200)).saturating_sub(first_asked.elapsed());
    tokio::time::sleep(wait).await;
    for status in [503, 429] {
        setup.proxy.set_fault(Fault::Status {
            status,
            retry_after: None,
        });
        setup.proxy.reset();
        // `review_missing` fails the test on any error but "not found".
        let again = review_missing(&resolver, &images).await;
        assert_eq!(again, first, "after a {status}");
        if status == 503 {
            assert!(setup.proxy.counts().total() >= 2, "both were asked again");
        }
    }
}

/// Before: once a denying answer was past the tag's lifetime (60 s by default, 10 s for "not
/// found"), its revalidation went to the registry, and if that failed (a 503, a 429) the error
/// alone answered: allowed under the default `--on-registry-error allow`. What the registry said
/// before now stands when it denies.
#[tokio::test]
async fn a_denial_past_its_lifetime_stands_while_the_registry_fails() {
    let setup = Setup::start().await;
    let lifetime = Duration::from_secs(1);
    let resolver = resolver_living(&setup, lifetime);
    let ai_base = setup.tag_ref(&setup.fixtures.ai_base_cuda);
    let absent = setup.written("cerebral/absent:v1");
    let multi = setup.tag_ref(&setup.fixtures.multi);
    let images = [&ai_base, &absent];
    let first = review_missing(&resolver, &images).await;
    assert_eq!(first, [Some(vec!["linux/amd64".to_owned()]), None]);
    review_missing(&resolver, &[&multi]).await;

    tokio::time::sleep(lifetime + Duration::from_millis(200)).await;
    setup.proxy.set_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    setup.proxy.reset();
    // `review_missing` fails the test on any error but "not found".
    assert_eq!(review_missing(&resolver, &images).await, first);
    assert!(setup.proxy.counts().total() >= 2, "both were asked again");
    // An answer that allowed is not kept past its lifetime: the error is the answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let checked = review(&resolver, &[&multi], deadline).await;
    assert!(
        matches!(&checked[0].outcome, archgate::policy::Outcome::Failed(e) if !e.is_not_found()),
        "{:?}",
        checked[0].outcome
    );
}

/// Never deny on a stale tag: an answer that would deny (a missing platform, or not found) is
/// asked again once it is older than `RECHECK_AFTER`; a younger one stands, and an answer that
/// allows is never re-asked. Both TTLs are long, so only the recheck can see the new pushes.
#[tokio::test]
async fn a_denying_answer_older_than_recheck_after_is_asked_again() {
    let setup = Setup::start().await;
    let resolver = resolver_living(&setup, Duration::from_secs(600));
    let ai_base = setup.tag_ref(&setup.fixtures.ai_base_cuda);
    let multi = setup.tag_ref(&setup.fixtures.multi);
    let late = setup.written("cerebral/late:v1");
    let images = [&ai_base, &multi, &late];

    let first_asked = Instant::now();
    let first = review_missing(&resolver, &images).await;
    assert_eq!(
        first,
        [Some(vec!["linux/amd64".to_owned()]), Some(vec![]), None]
    );

    // The developer rebuilds for amd64 and pushes the missing image.
    let rebuilt = ImageSpec::oci_index(
        "cerebral/ai-base",
        "cuda",
        [
            PlatformSpec::new("linux", "amd64"),
            PlatformSpec::new("linux", "arm64").variant("v8"),
        ],
    )
    .with_attestations()
    .with_revision("2")
    .push(&setup.registry)
    .await;
    ImageSpec::oci_index("cerebral/late", "v1", [("linux", "amd64", None)])
        .push(&setup.registry)
        .await;

    // Answers younger than RECHECK_AFTER stand: the denial is repeated without asking.
    setup.proxy.reset();
    let young = review_missing(&resolver, &images).await;
    assert!(
        first_asked.elapsed() < RECHECK_AFTER,
        "the machine was too slow to observe a young answer"
    );
    assert_eq!(young, first);
    assert_eq!(setup.proxy.counts(), Counts::default());

    let wait = (RECHECK_AFTER + Duration::from_millis(200)).saturating_sub(first_asked.elapsed());
    tokio::time::sleep(wait).await;
    setup.proxy.reset();
    let old = review_missing(&resolver, &images).await;
    assert_eq!(old, [Some(vec![]), Some(vec![]), Some(vec![])]);
    // Two rechecks: ai-base, a HEAD (its digest was known) and a GET of the new index; late,
    // never found before, one GET of the tag. multi was allowed, so it was not asked again.
    assert_eq!(
        tally(&setup.proxy.counts()),
        (0, 1, 2, 0, 3),
        "{:?}",
        setup.proxy.counts()
    );
    let now = resolver.resolve(&ai_base, &anonymous()).await.unwrap();
    assert_eq!(now.digest, Some(Digest::new(&rebuilt.digest)));
}

/// The manifest `image`'s tag points at, exactly as the registry serves it.
async fn manifest_bytes(setup: &Setup, image: &PushedImage) -> Vec<u8> {
    let url = format!(
        "http://{}/v2/{}/manifests/{}",
        setup.registry.host(),
        image.repository,
        image.digest
    );
    let response = reqwest::Client::new()
        .get(url)
        .header("accept", image.media_type)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    response.bytes().await.unwrap().to_vec()
}

fn sha512(body: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA512, body);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha512:{hex}")
}

/// A `Docker-Content-Digest` in sha512 is checked like a sha256 one: content that does not hash
/// to it is refused (it was taken as served), content that does is resolved under it.
#[tokio::test]
async fn a_stated_sha512_digest_is_checked_against_the_content() {
    let setup = Setup::start().await;
    let f = &setup.fixtures;
    let reference = setup.tag_ref(&f.multi);
    let stating = |digest: String| {
        FaultRule::new(Fault::Header {
            name: "docker-content-digest",
            value: digest,
        })
        .only(RequestKind::Manifest)
    };

    setup.proxy.set_fault(stating(sha512(b"other content")));
    let error = resolver(setup.options())
        .resolve(&reference, &anonymous())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ResolveError::InvalidManifest { reason, .. } if reason.contains("does not match")),
        "{error}"
    );

    let right = sha512(&manifest_bytes(&setup, &f.multi).await);
    setup.proxy.set_fault(stating(right.clone()));
    let resolution = resolver(setup.options())
        .resolve(&reference, &anonymous())
        .await
        .unwrap();
    assert_eq!(resolution.digest, Some(Digest::new(&right)));
    assert_eq!(names(&resolution), ["linux/amd64", "linux/arm64/v8"]);
}

/// A malformed or overlong `Docker-Content-Digest` is ignored, on a GET and on the HEAD that
/// revalidates a tag: the tag resolves to the sha256 of what was read, and the header's text
/// never becomes the cached digest.
#[tokio::test]
async fn a_malformed_content_digest_header_is_ignored_and_never_cached() {
    let setup = Setup::start().await;
    let f = &setup.fixtures;
    let reference = setup.tag_ref(&f.multi);
    let ttl = Duration::from_millis(300);
    for garbage in [
        format!("sha512:{}", "z".repeat(200_000)),
        format!("sha256:{}", "0".repeat(65)),
        "md5:5d41402abc4b2a76b9719d911017c592".to_string(),
    ] {
        let shown = &garbage[..20];
        let resolver = resolver(RegistryOptions {
            tag_ttl: ttl,
            ..setup.options()
        });
        setup.proxy.set_fault(
            FaultRule::new(Fault::Header {
                name: "docker-content-digest",
                value: garbage.clone(),
            })
            .only(RequestKind::Manifest),
        );
        let first = resolver
            .resolve(&reference, &anonymous())
            .await
            .unwrap_or_else(|e| panic!("{shown}: {e:.200}"));
        assert_eq!(first.digest, Some(Digest::new(&f.multi.digest)), "{shown}");
        // Past the TTL the HEAD's header is no answer either: the tag is read again.
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        setup.proxy.reset();
        let again = resolver
            .resolve(&reference, &anonymous())
            .await
            .unwrap_or_else(|e| panic!("{shown}: {e:.200}"));
        assert_eq!(again, first, "{shown}");
        assert_eq!(
            tally(&setup.proxy.counts()),
            (0, 1, 1, 0, 2),
            "{shown}: a HEAD, then the GET its unreadable digest needs"
        );
    }
    setup.proxy.clear_fault();
}
