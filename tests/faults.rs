//! Registry faults, injected by the counting proxy in front of the real registry: delays past the
//! review deadline, connection resets, 429 (with `Retry-After`), 500 and truncated bodies.
//!
//! Through `archgate serve` started from real flags, every review is answered inside its deadline
//! under both `--on-registry-error` policies, a truncated answer is never remembered, and nothing
//! leaks. Against the resolver itself: a 429 pauses the host (lookups fail fast, no request is
//! sent) and requests in flight to one host never exceed the bound.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

use archgate::cli::{Cli, Command};
use archgate::config::Settings;
use archgate::metrics::Metrics;
use archgate::reference::ImageRef;
use archgate::resolver::{Credentials, Digest, RegistryOptions, ResolveError, Resolver};
use archgate::serve::{self, Running};
use common::{CountingProxy, Fault, FaultRule, Fixtures, Registry, RequestKind};

/// The review deadline the webhook tests run with.
const DEADLINE: Duration = Duration::from_millis(1500);
/// What an answer may take beyond the deadline: encoding, TLS, a busy two-core machine.
const SLACK: Duration = Duration::from_millis(500);

/// One test at a time: the leak test counts this process's descriptors, which the others'
/// registries, proxies and webhooks would change under it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A registry with the standard fixtures behind a counting, fault-injecting proxy.
struct World {
    _registry: Registry,
    proxy: CountingProxy,
    fixtures: Fixtures,
}

impl World {
    async fn new() -> Self {
        common::install_crypto_provider();
        let registry = Registry::start().await;
        let fixtures = common::push_standard_fixtures(&registry).await;
        let proxy = CountingProxy::start(registry.host()).await;
        Self {
            _registry: registry,
            proxy,
            fixtures,
        }
    }

    /// `repository:tag` through the proxy.
    fn image(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.proxy.host())
    }

    fn multi(&self) -> String {
        let m = &self.fixtures.multi;
        self.image(&m.repository, &m.tag)
    }

    fn arm_only(&self) -> String {
        let a = &self.fixtures.ai_base_cuda;
        self.image(&a.repository, &a.tag)
    }

    fn single_arm64(&self) -> String {
        let s = &self.fixtures.single_arm64;
        self.image(&s.repository, &s.tag)
    }

    fn resolver(&self, options: RegistryOptions) -> Resolver {
        let options = RegistryOptions {
            insecure: vec![self.proxy.host().to_owned()],
            ..options
        };
        Resolver::new(options, Arc::new(Metrics::new())).unwrap()
    }
}

/// `archgate serve` from real flags: self-signed, port 0, the proxy as an insecure registry.
struct Hook {
    running: Running,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Hook {
    async fn start(world: &World, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        let deadline = DEADLINE.as_secs_f64().to_string();
        let mut argv = vec![
            "archgate",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--self-signed",
            "--self-signed-ca-out",
            ca.to_str().unwrap(),
            "--insecure-registry",
            world.proxy.host(),
            "--review-deadline",
            &deadline,
        ];
        argv.extend_from_slice(extra);
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        let running = serve::start(Settings::resolve(&args).unwrap())
            .await
            .unwrap();
        let ca_pem = std::fs::read(&ca).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca_pem).unwrap()])
            .no_proxy()
            .build()
            .unwrap();
        Self {
            running,
            client,
            _dir: dir,
        }
    }

    /// Reviews a Pod creation with `images` and returns the `response`, and how long it took.
    async fn review(&self, images: &[&str]) -> (Value, Duration) {
        let containers: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
            .collect();
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "5f1e7c0a-0000-4000-8000-000000000001",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "default",
                "operation": "CREATE",
                "userInfo": {"username": "faults"},
                "object": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "p", "namespace": "default"},
                    "spec": {"containers": containers}
                }
            }
        });
        let port = self.running.webhook.port();
        let started = Instant::now();
        let response = self
            .client
            .post(format!("https://localhost:{port}/validate"))
            .json(&review)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        (body["response"].clone(), started.elapsed())
    }
}

fn message(response: &Value) -> String {
    response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn warnings(response: &Value) -> String {
    response["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Every fault a registry (or the network to it) can throw at a review.
fn faults() -> Vec<(&'static str, FaultRule)> {
    vec![
        (
            "delay past the deadline",
            FaultRule::new(Fault::Delay(Duration::from_secs(4))),
        ),
        ("connection reset", FaultRule::new(Fault::Reset)),
        (
            "429 with Retry-After",
            FaultRule::new(Fault::Status {
                status: 429,
                retry_after: Some(7),
            }),
        ),
        (
            "500",
            FaultRule::new(Fault::Status {
                status: 500,
                retry_after: None,
            }),
        ),
        (
            "truncated manifest",
            FaultRule::new(Fault::Truncate).only(RequestKind::Manifest),
        ),
    ]
}

/// Each fault in its own words (issue 15: a 500, a timeout and a reset are different sentences,
/// not all "unreachable").
fn said(name: &str) -> &'static str {
    match name {
        "delay past the deadline" => "did not answer in time",
        "connection reset" => "is unreachable",
        "429 with Retry-After" => "is rate limiting",
        "500" => "failed with HTTP 500",
        // The body is cut short on the wire: a transport failure.
        _ => "is unreachable",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_answered_inside_the_deadline_per_policy() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let host = world.proxy.host().to_owned();
    let mut figures = Vec::new();
    for (name, rule) in faults() {
        for policy in ["allow", "deny"] {
            // A fresh webhook per case: an empty cache, and no pause left by the 429 case.
            let hook = Hook::start(&world, &["--on-registry-error", policy]).await;
            world.proxy.set_fault(rule.clone());
            let (r, took) = hook.review(&[&world.multi()]).await;
            world.proxy.clear_fault();
            figures.push(format!("{name} ({policy}): {took:?}"));
            assert!(
                took < DEADLINE + SLACK,
                "{name}, {policy}: answered after {took:?}"
            );
            if policy == "allow" {
                assert_eq!(r["allowed"], true, "{name}: {r}");
                let w = warnings(&r);
                assert!(w.contains(said(name)), "{name}: {w}");
                assert!(
                    w.contains(&host) && w.contains("not checked"),
                    "{name}: the warning must name the registry: {w}"
                );
            } else {
                assert_eq!(r["allowed"], false, "{name}: {r}");
                let m = message(&r);
                assert!(
                    m.contains(&host),
                    "{name}: the denial must name the registry: {m}"
                );
            }
        }
    }
    eprintln!("answer times under faults:\n  {}", figures.join("\n  "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_says_so_and_pauses_the_registry_for_the_webhook_too() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let hook = Hook::start(&world, &[]).await;
    // The registry asks for a second's rest (Retry-After: 1), which archgate honours.
    world.proxy.set_fault(Fault::Status {
        status: 429,
        retry_after: Some(1),
    });
    let (r, _) = hook.review(&[&world.multi()]).await;
    assert!(warnings(&r).contains("rate limiting"), "{r}");
    // The registry has recovered, but archgate stays away for the pause: no request at all.
    world.proxy.clear_fault();
    world.proxy.reset();
    let (r, took) = hook.review(&[&world.multi(), &world.arm_only()]).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(warnings(&r).contains("rate limiting"), "{r}");
    assert_eq!(
        world.proxy.counts().total(),
        0,
        "{:?}",
        world.proxy.counts()
    );
    assert!(took < Duration::from_millis(200), "fail fast: {took:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (r, _) = hook.review(&[&world.arm_only()]).await;
    assert_eq!(r["allowed"], false, "asked again after the pause: {r}");
    assert!(message(&r).contains("is missing linux/amd64"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_answer_is_never_remembered() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let hook = Hook::start(&world, &[]).await;
    // An index cut in half, then a single-platform manifest's config blob cut in half.
    for (image, only) in [
        (world.arm_only(), RequestKind::Manifest),
        (world.single_arm64(), RequestKind::Blob),
    ] {
        world
            .proxy
            .set_fault(FaultRule::new(Fault::Truncate).only(only));
        let (r, _) = hook.review(&[&image]).await;
        assert_eq!(r["allowed"], true, "{image}: {r}");
        assert!(warnings(&r).contains("not checked"), "{image}: {r}");
        world.proxy.clear_fault();
        let (r, _) = hook.review(&[&image]).await;
        assert_eq!(r["allowed"], false, "{image}: resolved afresh: {r}");
        assert!(
            message(&r).contains("is missing linux/amd64 (available: linux/arm64)"),
            "{image}: {r}"
        );
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits (up to `limit`) for `done`, polling.
async fn settle(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_leaks_after_bursts_of_faulted_reviews() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let hook = Arc::new(Hook::start(&world, &[]).await);
    // Warm every pool once (webhook client, archgate's registry client, proxy upstream).
    let (r, _) = hook.review(&[&world.multi()]).await;
    assert_eq!(r["allowed"], true);
    let baseline = open_fds();
    let rules = [
        FaultRule::new(Fault::Delay(Duration::from_secs(3))),
        FaultRule::new(Fault::Reset),
        FaultRule::new(Fault::Status {
            status: 500,
            retry_after: None,
        }),
        FaultRule::new(Fault::Truncate).only(RequestKind::Manifest),
    ];
    let mut after_rounds = Vec::new();
    for round in 0..3 {
        for rule in &rules {
            world.proxy.set_fault(rule.clone());
            let reviews: Vec<_> = (0..20)
                .map(|i| {
                    let hook = hook.clone();
                    // Distinct (missing) tags: every review is a cold lookup of its own.
                    let image = world.image("fixtures/multi", &format!("r{round}-{i}"));
                    tokio::spawn(async move { hook.review(&[&image]).await })
                })
                .collect();
            for review in reviews {
                let (r, took) = review.await.unwrap();
                // A truncated manifest answer to a missing tag is a complete 404 to HEAD (there
                // is no body to cut): "not found" is the right answer then.
                let not_found = rule.fault == Fault::Truncate
                    && r["status"]["message"]
                        .as_str()
                        .is_some_and(|m| m.ends_with("not found in registry"));
                assert!(r["allowed"] == true || not_found, "{rule:?}: {r}");
                assert!(took < DEADLINE + SLACK, "{rule:?}: {took:?}");
            }
            world.proxy.clear_fault();
        }
        // Delayed requests finish at the proxy; their connections, dropped by archgate at the
        // deadline, close. Idle keep-alive connections may stay, bounded by the concurrency.
        let drained = settle(Duration::from_secs(10), || {
            world.proxy.open_connections() <= 16
        })
        .await;
        assert!(
            drained,
            "proxy connections did not drain: {}",
            world.proxy.open_connections()
        );
        let fds = open_fds();
        after_rounds.push((fds, world.proxy.open_connections()));
    }
    eprintln!(
        "fds: baseline {baseline}, after each round (fds, proxy connections): {after_rounds:?}"
    );
    // Idle keep-alive connections to the proxy hold two descriptors each (both ends are in
    // this process) and may come and go; without them, nothing may grow with the number of
    // faulted reviews.
    let without_idle = |(fds, connections): (usize, usize)| fds - 2 * connections;
    let first = without_idle(after_rounds[0]);
    let last = without_idle(after_rounds[after_rounds.len() - 1]);
    assert!(
        last <= first + 4,
        "descriptors grew from {first} to {last} over two more rounds"
    );
    assert!(
        last <= baseline + 16,
        "descriptors: baseline {baseline}, now {last} (idle connections aside)"
    );
}

fn anonymous() -> Credentials {
    Credentials::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_429_lookups_fail_fast_without_requests_then_resume() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let resolver = world.resolver(RegistryOptions::default());
    let f = &world.fixtures;
    let parse = |s: String| ImageRef::parse(&s).unwrap();
    let warm = parse(world.image(&f.docker_list.repository, &f.docker_list.tag));
    resolver.resolve(&warm, &anonymous()).await.unwrap();
    let multi = parse(world.multi());

    // The manifest GET answered 429 without Retry-After: that is the answer (no retry), and
    // the pause is the backoff's first.
    world.proxy.set_fault(
        FaultRule::new(Fault::Status {
            status: 429,
            retry_after: None,
        })
        .only(RequestKind::Manifest),
    );
    world.proxy.reset();
    let error = resolver.resolve(&multi, &anonymous()).await.unwrap_err();
    let paused_at = Instant::now();
    let ResolveError::RateLimited { registry, retry_in } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(registry, world.proxy.host());
    assert_eq!(*retry_in, Duration::from_secs(1), "first pause");
    let counts = world.proxy.counts();
    assert_eq!(counts.kind(RequestKind::Manifest), 1, "{counts:?}");
    world.proxy.clear_fault();
    world.proxy.reset();

    // Within the pause: cold lookups fail fast and send nothing; cached answers still serve.
    let cold: Vec<ImageRef> = f
        .all()
        .iter()
        .map(|i| parse(world.image(&i.repository, &i.tag)))
        .chain((0..5).map(|i| parse(world.image("fixtures/multi", &format!("cold-{i}")))))
        .filter(|i| *i != warm)
        .collect();
    assert_eq!(cold.len(), 10);
    for image in &cold {
        let started = Instant::now();
        let error = resolver.resolve(image, &anonymous()).await.unwrap_err();
        assert!(
            matches!(error, ResolveError::RateLimited { .. }),
            "{image}: {error:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(50));
    }
    resolver.resolve(&warm, &anonymous()).await.unwrap();
    assert!(
        paused_at.elapsed() < Duration::from_secs(1),
        "test too slow"
    );
    assert_eq!(
        world.proxy.counts().total(),
        0,
        "{:?}",
        world.proxy.counts()
    );

    // After the pause the registry is asked again; another 429 doubles the pause.
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(paused_at.elapsed())).await;
    world.proxy.set_fault(Fault::Status {
        status: 429,
        retry_after: None,
    });
    let error = resolver.resolve(&multi, &anonymous()).await.unwrap_err();
    assert!(
        matches!(error, ResolveError::RateLimited { retry_in, .. } if retry_in == Duration::from_secs(2)),
        "{error:?}"
    );
    assert!(world.proxy.counts().total() > 0);
    world.proxy.clear_fault();
    tokio::time::sleep(Duration::from_secs(2)).await;
    world.proxy.reset();
    let resolution = resolver.resolve(&multi, &anonymous()).await.unwrap();
    assert_eq!(resolution.digest, Some(Digest::new(&f.multi.digest)));
    assert_eq!(world.proxy.counts().kind(RequestKind::Manifest), 1);

    // A success forgets the streak: the next 429 pauses for the first pause again.
    world.proxy.set_fault(Fault::Status {
        status: 429,
        retry_after: None,
    });
    let fresh = parse(world.image("fixtures/multi", "after-success"));
    let error = resolver.resolve(&fresh, &anonymous()).await.unwrap_err();
    assert!(
        matches!(error, ResolveError::RateLimited { retry_in, .. } if retry_in == Duration::from_secs(1)),
        "{error:?}"
    );

    // A Retry-After is the registry's word and is honoured (Docker Hub sends one with its
    // pull limit), however long the backoff would have been.
    tokio::time::sleep(Duration::from_secs(1)).await;
    world.proxy.set_fault(Fault::Status {
        status: 429,
        retry_after: Some(5),
    });
    let error = resolver.resolve(&fresh, &anonymous()).await.unwrap_err();
    assert!(
        matches!(error, ResolveError::RateLimited { retry_in, .. } if retry_in == Duration::from_secs(5)),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("not asked again for 5s"),
        "{error}"
    );
}

/// Issue 14: the first request to a registry is also what teaches archgate how to authenticate
/// there (there is no version probe). A 503 or a 429 answering it is that lookup's answer, as
/// for any request (a server fault; a rate limit that pauses the host), it teaches nothing, and
/// the next lookup costs one GET, with no probe and no retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_or_a_429_on_first_contact_fails_only_that_lookup() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let multi = ImageRef::parse(&world.multi()).unwrap();
    for (status, retry_after) in [(503, None), (429, Some(1))] {
        let resolver = world.resolver(RegistryOptions::default());
        world.proxy.set_fault(
            FaultRule::new(Fault::Status {
                status,
                retry_after,
            })
            .times(1),
        );
        world.proxy.reset();
        let error = resolver.resolve(&multi, &anonymous()).await.unwrap_err();
        let paused_at = Instant::now();
        match status {
            503 => assert!(
                matches!(error, ResolveError::ServerFault { status: 503, .. }),
                "{error:?}"
            ),
            _ => assert!(
                matches!(error, ResolveError::RateLimited { retry_in, .. } if retry_in == Duration::from_secs(1)),
                "{error:?}"
            ),
        }
        let counts = world.proxy.counts();
        assert_eq!(counts.get("GET", RequestKind::Manifest), 1, "{counts:?}");
        assert_eq!(counts.total(), 1, "{counts:?}");

        if retry_after.is_some() {
            tokio::time::sleep(Duration::from_secs(1).saturating_sub(paused_at.elapsed())).await;
        }
        world.proxy.reset();
        let resolution = resolver.resolve(&multi, &anonymous()).await.unwrap();
        assert_eq!(
            resolution.digest,
            Some(Digest::new(&world.fixtures.multi.digest))
        );
        let counts = world.proxy.counts();
        assert_eq!(counts.get("GET", RequestKind::Manifest), 1, "{counts:?}");
        assert_eq!(counts.total(), 1, "{counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_to_one_registry_never_exceed_the_bound() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let bound = 4;
    let resolver = Arc::new(world.resolver(RegistryOptions {
        concurrency: bound,
        ..RegistryOptions::default()
    }));
    world
        .proxy
        .set_fault(Fault::Delay(Duration::from_millis(200)));
    let images: Vec<ImageRef> = world
        .fixtures
        .all()
        .iter()
        .map(|i| world.image(&i.repository, &i.tag))
        .chain((0..18).map(|i| world.image("fixtures/multi", &format!("missing-{i}"))))
        .map(|s| ImageRef::parse(&s).unwrap())
        .collect();
    let started = Instant::now();
    let lookups: Vec<_> = images
        .into_iter()
        .map(|image| {
            let resolver = resolver.clone();
            tokio::spawn(async move { resolver.resolve(&image, &anonymous()).await })
        })
        .collect();
    let mut found = 0;
    for lookup in lookups {
        match lookup.await.unwrap() {
            Ok(_) => found += 1,
            Err(e) => assert!(e.is_not_found(), "{e:?}"),
        }
    }
    assert_eq!(found, 6);
    let max = world.proxy.max_in_flight();
    eprintln!(
        "24 cold lookups, bound {bound}: {} requests, at most {max} in flight, {:?}",
        world.proxy.counts().total(),
        started.elapsed()
    );
    assert!(max <= bound, "{max} requests in flight, bound {bound}");
    assert_eq!(max, bound, "the burst should have reached the bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_keeps_to_the_configured_bound() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "registryConcurrency: 3\n").unwrap();
    let hook = Hook::start(&world, &["--config", config.to_str().unwrap()]).await;
    world
        .proxy
        .set_fault(Fault::Delay(Duration::from_millis(100)));
    let images: Vec<String> = (0..12)
        .map(|i| world.image("fixtures/multi", &format!("bound-{i}")))
        .collect();
    let images: Vec<&str> = images.iter().map(String::as_str).collect();
    let (r, took) = hook.review(&images).await;
    assert!(took < DEADLINE + SLACK, "{took:?}");
    assert_eq!(r["allowed"], false, "12 missing images: {r}");
    let max = world.proxy.max_in_flight();
    assert_eq!(max, 3, "at most (and here exactly) the bound in flight");
}
