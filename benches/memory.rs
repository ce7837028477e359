//! Run with: cargo bench --bench memory
//!
//! Memory (issue 6, item 2): resident set size of the real `archgate serve` process (the release
//! binary, `CARGO_BIN_EXE_archgate`), idle and with N distinct images cached (default 100,000;
//! goal < 30 MB idle, < 150 MB with 100k).
//!
//! Method. A real registry (Debian's `docker-registry` on 127.0.0.1) gets one two-platform OCI
//! index pushed the ordinary way, then N more OCI indexes that point at the same two child
//! manifests and differ only in an annotation, each under its own tag: N distinct digests for one
//! manifest PUT each, no blob uploads. `archgate serve` is started with `--self-signed` and a
//! config file raising the tag TTL to an hour (so no tag expires while the cache fills) and
//! `cache.maxImages` to N + 10% (so the size bound does not evict while filling). The cache is
//! filled the way production fills it: AdmissionReviews over TLS, 50 containers per Pod, each
//! image a cold lookup (one GET of the tag: digest and index); both caches then hold N entries. RSS is
//! `VmRSS` from `/proc/<pid>/status` of the server process: after start-up (idle), after one
//! review, and after the fill; `VmHWM` (peak) is printed too. A sample of the images is reviewed
//! again afterwards and the server's own `/metrics` must show only hits for it, proving the
//! entries are still cached when RSS is read.
//!
//! `ARCHGATE_MEMORY_IMAGES` overrides N. Under `cargo test --all-targets` (no `--bench`
//! argument) N is 500, so it stays quick; nothing is asserted about sizes. Figures are in
//! BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use common::{ImageSpec, PlatformSpec, Registry, media_types};

const FIXTURE: &str = "tests/data/admissionreview/pod-create.json";
const CONTAINERS_PER_POD: usize = 50;
const PUSH_CONCURRENCY: usize = 16;
const REVIEW_CONCURRENCY: usize = 4;

struct Server {
    child: Child,
    port: u16,
    admin: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn status(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        self.status("VmRSS:")
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let images: usize = std::env::var("ARCHGATE_MEMORY_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 100_000 } else { 500 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(images));
}

async fn run(n: usize) {
    common::install_crypto_provider();
    let registry = Registry::start().await;
    let base = ImageSpec::oci_index(
        "mem/base",
        "seed",
        [
            PlatformSpec::new("linux", "amd64"),
            PlatformSpec::new("linux", "arm64").variant("v8"),
        ],
    )
    .push(&registry)
    .await;
    let children: Vec<Value> = base
        .manifests
        .iter()
        .map(|m| {
            let mut platform = json!({"os": m.platform.os, "architecture": m.platform.architecture});
            if let Some(v) = &m.platform.variant {
                platform["variant"] = json!(v);
            }
            json!({"mediaType": m.media_type, "digest": m.digest, "size": m.size, "platform": platform})
        })
        .collect();

    let started = Instant::now();
    let pushes = futures::stream::iter(0..n).map(|i| {
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_INDEX,
            "manifests": children,
            "annotations": {"org.opencontainers.image.revision": format!("{i:08}")},
        }))
        .expect("index JSON");
        let request = registry
            .request(Method::PUT, &format!("/v2/mem/base/manifests/t{i}"))
            .header("content-type", media_types::OCI_INDEX)
            .body(index);
        async move {
            let response = request.send().await.expect("PUT manifest");
            assert_eq!(response.status(), 201, "push t{i}");
        }
    });
    pushes
        .buffer_unordered(PUSH_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let pushed = started.elapsed();
    println!(
        "pushed {n} distinct OCI indexes in {:.1}s ({:.0}/s)",
        pushed.as_secs_f64(),
        n as f64 / pushed.as_secs_f64()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_archgate(registry.host(), dir.path(), n);
    let ca = std::fs::read(dir.path().join("ca.pem")).expect("CA");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("CA PEM")])
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("https://localhost:{}/validate", server.port);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = server.rss_kib();

    let image = |i: usize| format!("{}/mem/base:t{i}", registry.host());
    let review = |images: &[String]| pod(images);
    let send = |body: Vec<u8>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("review");
            assert_eq!(response.status(), 200);
            let answer: Value = response.json().await.expect("answer");
            assert_eq!(answer["response"]["allowed"], true, "{answer}");
            assert!(
                answer["response"].get("warnings").is_none(),
                "every image must be checked: {answer}"
            );
        }
    };
    send(review(&[base.reference()])).await;
    let one_review = server.rss_kib();

    let started = Instant::now();
    let chunks: Vec<Vec<String>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(CONTAINERS_PER_POD)
        .map(|c| c.iter().map(|&i| image(i)).collect())
        .collect();
    futures::stream::iter(chunks)
        .map(|images| send(review(&images)))
        .buffer_unordered(REVIEW_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let filled = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let full = server.rss_kib();
    let peak = server.status("VmHWM:");

    // Still cached: a sample of the images comes back as hits only.
    let before = lookups(&client, server.admin).await;
    let sample: Vec<String> = (0..n).step_by((n / 200).max(1)).map(image).collect();
    for images in sample.chunks(CONTAINERS_PER_POD) {
        send(review(images)).await;
    }
    let after = lookups(&client, server.admin).await;
    assert_eq!(
        after.miss, before.miss,
        "sampled images were evicted before RSS was read"
    );
    assert_eq!(after.hit - before.hit, sample.len() as u64);
    println!(
        "filled {n} images through {} reviews in {:.1}s; cold lookups {} (sample of {} re-reviewed: all hits)",
        n.div_ceil(CONTAINERS_PER_POD),
        filled.as_secs_f64(),
        before.miss,
        sample.len()
    );
    println!("\n| archgate serve | VmRSS |");
    println!("|---|---|");
    println!("| idle, after start-up | {:.1} MiB |", mib(idle));
    println!("| after one review | {:.1} MiB |", mib(one_review));
    println!("| {n} images cached | {:.1} MiB |", mib(full));
    println!("| peak (VmHWM) | {:.1} MiB |", mib(peak));
    println!(
        "per cached image: {:.0} bytes ((cached - after one review) / {n})",
        (full.saturating_sub(one_review) * 1024) as f64 / n as f64
    );
    drop(server);
    drop(registry);
}

struct Lookups {
    hit: u64,
    miss: u64,
}

async fn lookups(client: &reqwest::Client, admin: u16) -> Lookups {
    let text = client
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let count = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("archgate_lookups_total{{cache=\"{label}\"}} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Lookups {
        hit: count("hit"),
        miss: count("miss"),
    }
}

/// The project's own Pod review with one container per image.
fn pod(images: &[String]) -> Vec<u8> {
    let text = std::fs::read_to_string(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e} "));
    let mut review: Value = serde_json::from_str(&text).expect("fixture JSON");
    let spec = &mut review["request"]["object"]["spec"];
    let template = spec["containers"][0].clone();
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let mut c = template.clone();
            c["name"] = json!(format!("c{i}"));
            c["image"] = json!(image);
            c
        })
        .collect();
    spec["containers"] = Value::Array(containers);
    serde_json::to_vec(&review).expect("review JSON")
}

fn start_archgate(registry_host: &str, dir: &Path, n: usize) -> Server {
    let (port, admin) = (free_port(), free_port());
    let config = dir.join("archgate.yaml");
    let max_images = (n + n / 10).max(1000);
    std::fs::write(
        &config,
        format!("cache:\n  tagTtl: 1h\n  maxImages: {max_images}\n"),
    )
    .expect("config");
    let docker_config = dir.join("docker");
    std::fs::create_dir_all(&docker_config).expect("docker config dir");
    let ca = dir.join("ca.pem");
    let child = Command::new(env!("CARGO_BIN_EXE_archgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--self-signed", "--self-signed-ca-out"])
        .arg(&ca)
        .args(["--insecure-registry", registry_host])
        .env("DOCKER_CONFIG", &docker_config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start archgate serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || !ca.exists() {
        assert!(Instant::now() < deadline, "archgate serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, port, admin }
}
