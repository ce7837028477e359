//! Run with: cargo bench --bench review
//!
//! The review path (issue 6, item 2) without HTTP or TLS: request bytes → `admission::decode` →
//! `Admission::review` (extract → warm resolve → decide) → `serde_json::to_vec` of the answer,
//! exactly what `server::router`'s handler does per request. Three objects:
//!
//! - Pod: the project's own Pod review (tests/data/admissionreview) with three containers;
//! - Deployment: the project's own Deployment review;
//! - PipelineRun: ten tasks with embedded `pipelineSpec`/`taskSpec`, two or three steps each,
//!   step images given directly and through pipeline and task params (Tekton substitution).
//!
//! Images live in a real registry (Debian's `docker-registry` on 127.0.0.1) and the resolver is
//! warmed before measuring, so the loop never leaves the process. No tracing subscriber is
//! installed for the main groups (the per-review log line costs nothing then); the last group
//! installs one that formats every event into a sink, as `archgate serve` does into stderr, to
//! show what logging adds. Figures and the machine they came from are in BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;

/// The allocator `archgate` itself runs with (src/main.rs), so the loop measures what it does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use serde_json::{Value, json};

use archgate::admission::{Admission, decode, subjects};
use archgate::cluster::StaticCluster;
use archgate::metrics::Metrics;
use archgate::pipeline::{Exemptions, Pipeline};
use archgate::platform::Platform;
use archgate::policy::Policy;
use archgate::resolver::{Credentials, RegistryOptions, Resolver};
use archgate::workload::EmptyCatalog;
use archgate::workload::ExtractOptions;
use common::webhook::{load, rewrite_images, three_container_pod};
use common::{CountingProxy, Counts, Registry, push_standard_fixtures};

struct Warm {
    _registry: Registry,
    proxy: CountingProxy,
    admission: Admission,
    reviews: Vec<(&'static str, Vec<u8>)>,
}

fn deployment(image: &str) -> Value {
    let mut review = load("deployment-create.json");
    rewrite_images(&mut review, image);
    review
}

/// A PipelineRun of ten tasks (clone, lint, unit tests, builds, scans, deploy, notify), each a
/// `taskSpec` with two or three steps; some images come through params.
fn pipeline_run(images: &[String; 3]) -> Value {
    let [multi, list, single] = images;
    let mut tasks = Vec::new();
    let names = [
        "clone",
        "lint",
        "unit",
        "build-api",
        "build-web",
        "scan-api",
        "scan-web",
        "integration",
        "push",
        "deploy",
    ];
    for (i, name) in names.iter().enumerate() {
        let mut steps = vec![
            json!({"name": "prepare", "image": multi, "script": "#!/bin/sh\nset -e\necho prepare\n"}),
            json!({"name": "run", "image": "$(params.TOOL)", "args": ["--task", name],
                   "env": [{"name": "TASK", "value": name}]}),
        ];
        if i % 2 == 0 {
            steps.push(json!({"name": "report", "image": "$(params.REPORTER)",
                              "command": ["report"], "args": ["$(params.TOOL)"]}));
        }
        let mut task = json!({
            "name": name,
            "params": [{"name": "TOOL", "value": if i % 3 == 0 { "$(params.builder)" } else { list.as_str() }}],
            "taskSpec": {
                "params": [
                    {"name": "TOOL", "type": "string"},
                    {"name": "REPORTER", "type": "string", "default": single},
                ],
                "steps": steps,
            },
        });
        if i > 0 {
            task["runAfter"] = json!([names[i - 1]]);
        }
        tasks.push(task);
    }
    let object = json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"name": "release-7f3k2", "namespace": "ci", "labels": {"app": "shop"}},
        "spec": {
            "params": [{"name": "builder", "value": single}],
            "pipelineSpec": {
                "params": [{"name": "builder", "type": "string", "default": list}],
                "tasks": tasks,
            },
            "taskRunTemplate": {"serviceAccountName": "builder"},
        },
    });
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "tekton.dev", "version": "v1", "kind": "PipelineRun"},
            "resource": {"group": "tekton.dev", "version": "v1", "resource": "pipelineruns"},
            "requestKind": {"group": "tekton.dev", "version": "v1", "kind": "PipelineRun"},
            "requestResource": {"group": "tekton.dev", "version": "v1", "resource": "pipelineruns"},
            "name": "release-7f3k2",
            "namespace": "ci",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:ci:trigger", "groups": ["system:serviceaccounts"]},
            "object": object,
            "dryRun": false,
        },
    })
}

async fn warm() -> Warm {
    common::install_crypto_provider();
    let registry = Registry::start().await;
    let fixtures = push_standard_fixtures(&registry).await;
    let proxy = CountingProxy::start(registry.host()).await;
    let through_proxy = |image: &common::PushedImage| {
        format!("{}/{}:{}", proxy.host(), image.repository, image.tag)
    };
    let images = [
        through_proxy(&fixtures.multi),
        through_proxy(&fixtures.docker_list),
        through_proxy(&fixtures.single_amd64),
    ];
    let options = RegistryOptions {
        insecure: vec![proxy.host().to_owned()],
        // Long enough that no tag expires during the measurement.
        tag_ttl: Duration::from_secs(3600),
        ..RegistryOptions::default()
    };
    let metrics = Arc::new(Metrics::new());
    let resolver = Arc::new(Resolver::new(options, metrics.clone()).expect("resolver"));
    let platforms = [Platform::parse("linux/amd64").expect("platform")];
    let admission = Admission {
        pipeline: Pipeline::new(resolver, Exemptions::default(), ExtractOptions::default()),
        cluster: Arc::new(StaticCluster::new(&platforms, Credentials::default())),
        policy: Policy::default(),
        deadline: Duration::from_secs(8),
        exempt_namespaces: Vec::new(),
        tekton_controller: archgate::admission::DEFAULT_TEKTON_CONTROLLER.to_string(),
        metrics,
    };
    let reviews = vec![
        ("Pod, 3 containers", three_container_pod(&images)),
        ("Deployment", deployment(&images[0])),
        ("PipelineRun, 10 tasks", pipeline_run(&images)),
    ];
    let reviews: Vec<(&'static str, Vec<u8>)> = reviews
        .into_iter()
        .map(|(name, review)| (name, serde_json::to_vec(&review).expect("JSON")))
        .collect();
    // Warm the caches, and make sure each review is what it claims: allowed, images checked.
    for (name, body) in &reviews {
        let answer = admission.review(decode(body).expect("decode")).await;
        let answer = serde_json::to_value(&answer).expect("answer");
        assert_eq!(answer["response"]["allowed"], true, "{name}: {answer}");
        assert!(
            answer["response"].get("warnings").is_none(),
            "{name}: every image must be checked, not skipped: {answer}"
        );
    }
    assert!(
        proxy.counts().total() > 0,
        "the warm-up must reach the registry"
    );
    proxy.reset();
    Warm {
        _registry: registry,
        proxy,
        admission,
        reviews,
    }
}

fn review_path(c: &mut Criterion, runtime: &tokio::runtime::Runtime, warm: &Warm, group: &str) {
    let mut group = c.benchmark_group(group);
    for (name, body) in &warm.reviews {
        group.throughput(criterion::Throughput::Bytes(body.len() as u64));
        group.bench_function(*name, |b| {
            b.to_async(runtime).iter(|| async {
                let request = decode(black_box(body)).expect("decode");
                let answer = warm.admission.review(request).await;
                serde_json::to_vec(&answer).expect("encode")
            })
        });
    }
    group.finish();
    assert_eq!(
        warm.proxy.counts(),
        Counts::default(),
        "a warm review reached the registry"
    );
}

/// The pieces of the review for the Pod: decoding the request, reading the object, encoding the
/// answer.
fn pieces(c: &mut Criterion, runtime: &tokio::runtime::Runtime, warm: &Warm) {
    let (_, body) = &warm.reviews[0];
    let answer = runtime.block_on(warm.admission.review(decode(body).expect("decode")));
    let options = ExtractOptions::default();
    let mut group = c.benchmark_group("review pieces (Pod)");
    // The floor for this body with serde_json: every byte scanned, nothing kept.
    group.bench_function("scan only (IgnoredAny)", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)).expect("JSON"))
    });
    group.bench_function("decode", |b| {
        b.iter(|| decode(black_box(body)).expect("decode"))
    });
    // How much of the review is turning the request into what the extractor reads, and
    // reading it: the rest is lookups, the decision and the answer.
    group.bench_function("decode + subjects + extract", |b| {
        b.iter(|| {
            let mut req = decode(black_box(body)).expect("decode");
            let (subject, _) = subjects(&mut req).expect("a Pod");
            archgate::workload::extract(subject.kind, &subject.object, &EmptyCatalog, &options)
                .expect("extract")
        })
    });
    group.bench_function("encode answer", |b| {
        b.iter(|| serde_json::to_vec(black_box(&answer)).expect("encode"))
    });
    group.finish();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let warm = runtime.block_on(warm());
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    review_path(&mut criterion, &runtime, &warm, "review path");
    pieces(&mut criterion, &runtime, &warm);
    // As served: the per-review span and "reviewed" line formatted (into a sink, not a pipe).
    tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    review_path(
        &mut criterion,
        &runtime,
        &warm,
        "review path, info logs formatted",
    );
    criterion.final_summary();
    runtime.block_on(async move { drop(warm) });
}
