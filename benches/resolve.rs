//! Run with: cargo bench --bench resolve
//!
//! Warm lookups (issue 2): what a review pays per image once the caches hold the answer. A real
//! registry (Debian's `docker-registry` on 127.0.0.1) is started, the standard fixtures pushed and
//! the cache warmed; the measured loop then makes no registry request at all, so the figures are
//! the cost of the resolver's own work: credential choice, two moka lookups, and the metrics.
//! Reference and platform parsing are measured too, since every review parses what it checks.
//! Goal: < 1 µs per warm lookup. Figures and the machine they came from are in BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use archgate::metrics::Metrics;
use archgate::platform::Platform;
use archgate::reference::ImageRef;
use archgate::resolver::{Credentials, RegistryOptions, Resolver};
use common::{CountingProxy, Counts, Registry, push_standard_fixtures};
use criterion::Criterion;

/// A registry, the counting proxy that proves the loop stays off the network, and a warm
/// resolver. Dropping it stops the registry.
struct Warm {
    _registry: Registry,
    proxy: CountingProxy,
    resolver: Resolver,
    by_tag: ImageRef,
    by_digest: ImageRef,
}

async fn warm() -> Warm {
    common::install_crypto_provider();
    let registry = Registry::start().await;
    let fixtures = push_standard_fixtures(&registry).await;
    let proxy = CountingProxy::start(registry.host()).await;
    let options = RegistryOptions {
        insecure: vec![proxy.host().to_owned()],
        // Long enough that no tag expires during the measurement.
        tag_ttl: Duration::from_secs(3600),
        ..RegistryOptions::default()
    };
    let resolver = Resolver::new(options, Arc::new(Metrics::new())).expect("resolver");
    let image = &fixtures.multi;
    let by_tag = ImageRef::parse(&format!(
        "{}/{}:{}",
        proxy.host(),
        image.repository,
        image.tag
    ))
    .expect("tag reference");
    let by_digest = ImageRef::parse(&format!(
        "{}/{}@{}",
        proxy.host(),
        image.repository,
        image.digest
    ))
    .expect("digest reference");
    for reference in [&by_tag, &by_digest] {
        resolver
            .resolve(reference, &Credentials::default())
            .await
            .expect("warm-up lookup");
    }
    proxy.reset();
    Warm {
        _registry: registry,
        proxy,
        resolver,
        by_tag,
        by_digest,
    }
}

fn warm_lookups(c: &mut Criterion, runtime: &tokio::runtime::Runtime, warm: &Warm) {
    let credentials = Credentials::default();
    let mut group = c.benchmark_group("warm lookup");
    for (name, reference) in [("by tag", &warm.by_tag), ("by digest", &warm.by_digest)] {
        group.bench_function(name, |b| {
            b.to_async(runtime).iter(|| async {
                warm.resolver
                    .resolve(black_box(reference), &credentials)
                    .await
                    .expect("warm lookup")
            })
        });
    }
    group.finish();
    assert_eq!(
        warm.proxy.counts(),
        Counts::default(),
        "a warm lookup reached the registry"
    );
}

fn parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.bench_function("ImageRef registry:port/path:tag", |b| {
        b.iter(|| ImageRef::parse(black_box("10.34.0.202:5000/cerebral/ai-base:cuda")).unwrap())
    });
    group.bench_function("ImageRef docker hub short name", |b| {
        b.iter(|| ImageRef::parse(black_box("nginx")).unwrap())
    });
    group.bench_function("Platform linux/arm64/v8", |b| {
        b.iter(|| Platform::parse(black_box("linux/arm64/v8")).unwrap())
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
    warm_lookups(&mut criterion, &runtime, &warm);
    parsing(&mut criterion);
    criterion.final_summary();
    // The registry is stopped here, inside the runtime its proxy runs on.
    runtime.block_on(async move { drop(warm) });
}
