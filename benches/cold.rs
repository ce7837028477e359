//! Run with: cargo bench --bench cold
//!
//! The cold path (issue 14): what archgate asks a registry, and how long that takes, when
//! nothing is cached. A real registry (Debian's `docker-registry` on 127.0.0.1) sits behind the
//! counting proxy of `tests/common/proxy.rs`, which adds [`LATENCY`] before serving each new
//! connection and before answering each request, as a network round trip would; every request
//! that reaches it is counted by method and kind. Measured, each over [`ROUNDS`] rounds:
//!
//! 1. `archgate check` of 8 uncached images (4 indexes or lists, 4 single manifests), a fresh
//!    process each round: wall time from spawn to exit, requests, and the time from spawn to the
//!    first request at the proxy (startup). The distribution API's minimum is one GET per index
//!    and a GET plus a config blob per single manifest (12 requests), so in parallel one new
//!    connection and two requests: 3 × [`LATENCY`]. The proxy's timeline of the median run
//!    (each connection accepted, request arrived and answer sent, in ms from spawn) is printed:
//!    where the time goes, round trip by round trip.
//! 2. The same images with skopeo (Debian's; `apt-get install skopeo`), one image at a time as
//!    a script would: `skopeo inspect --raw` per image, plus `--config` for single manifests.
//! 3. `archgate check` of an invalid reference: startup and exit without any request.
//! 4. A cold review of a 3-container Pod by `archgate serve` (the release binary): each round
//!    pushes three new images (an OCI index, a Docker list, a single manifest) so nothing is
//!    cached, then sends the review. Minimum: a GET of each tag and the single image's config
//!    blob, 2 × [`LATENCY`] on pooled connections, 3 × on a new one.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs one round without skopeo
//! and asserts the request counts (never timings). `ARCHGATE_BIN=<path>` measures another
//! build instead (the "before" column: counts are then printed, not asserted). Figures are in
//! BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{Event, EventKind};
use common::{CountingProxy, ImageSpec, PlatformSpec, Registry, RequestKind};

/// Added per new connection and per request by the proxy.
const LATENCY: Duration = Duration::from_millis(25);
const ROUNDS: usize = 7;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run(bench));
}

/// Eight images at `host` (the proxy), all providing linux/amd64: the 4 multi-platform ones
/// are indexes or lists, the 4 others single manifests.
async fn push_eight(registry: &Registry, host: &str) -> Vec<String> {
    let both = || {
        [
            PlatformSpec::new("linux", "amd64"),
            PlatformSpec::new("linux", "arm64").variant("v8"),
        ]
    };
    let amd64 = || PlatformSpec::new("linux", "amd64");
    let specs = [
        ImageSpec::oci_index("cold/index-a", "v1", both()),
        ImageSpec::oci_index("cold/index-b", "v1", both()).with_attestations(),
        ImageSpec::docker_list("cold/list-a", "v1", both()),
        ImageSpec::docker_list("cold/list-b", "v1", both()),
        ImageSpec::oci_manifest("cold/single-a", "v1", amd64()),
        ImageSpec::oci_manifest("cold/single-b", "v1", amd64()),
        ImageSpec::docker_manifest("cold/single-c", "v1", amd64()),
        ImageSpec::docker_manifest("cold/single-d", "v1", amd64()),
    ];
    let mut images = Vec::new();
    for spec in specs {
        let pushed = spec.push(registry).await;
        images.push(format!("{host}/{}:{}", pushed.repository, pushed.tag));
    }
    images
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The archgate binary measured: this build's, unless `ARCHGATE_BIN` names another.
fn archgate() -> std::ffi::OsString {
    std::env::var_os("ARCHGATE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_archgate").into())
}

/// Whether the request counts are this build's promises (not another build's).
fn own_build() -> bool {
    std::env::var_os("ARCHGATE_BIN").is_none()
}

fn check_command(host: &str, docker_config: &Path) -> Command {
    let mut command = Command::new(archgate());
    command
        .args(["check", "-p", "linux/amd64", "--insecure-registry", host])
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

async fn run(bench: bool) {
    common::install_crypto_provider();
    let rounds = if bench { ROUNDS } else { 1 };
    let registry = Registry::start().await;
    let proxy = CountingProxy::start(registry.host()).await;
    let images = push_eight(&registry, registry.host()).await;
    let via_proxy: Vec<String> = images
        .iter()
        .map(|i| i.replacen(registry.host(), proxy.host(), 1))
        .collect();
    proxy.set_latency(LATENCY);
    let dir = tempfile::tempdir().expect("temp dir");
    let docker_config = dir.path().join("docker");
    std::fs::create_dir_all(&docker_config).expect("docker config dir");

    // 1. archgate check, a fresh (cold) process per round.
    let (mut walls, mut startups) = (Vec::new(), Vec::new());
    let mut counts = None;
    let mut timeline = Vec::new();
    for _ in 0..rounds {
        proxy.reset();
        let started = Instant::now();
        let output = tokio::task::spawn_blocking({
            let mut command = check_command(proxy.host(), &docker_config);
            command.args(&via_proxy);
            move || command.output().expect("run archgate check")
        })
        .await
        .expect("check task");
        walls.push(started.elapsed());
        assert!(
            output.status.success(),
            "archgate check: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let first = proxy
            .first_request_at()
            .expect("a request reached the proxy");
        startups.push(first.saturating_duration_since(started));
        timeline.push((walls[walls.len() - 1], started, proxy.timeline()));
        let seen = proxy.counts();
        if own_build() {
            // The API's minimum (8 manifest GETs, 4 config blobs), and no version probe: the
            // first requests are the probe.
            assert_eq!(seen.get("GET", RequestKind::Base), 0, "{seen:?}");
            assert_eq!(seen.get("GET", RequestKind::Manifest), 8, "{seen:?}");
            assert_eq!(seen.get("GET", RequestKind::Blob), 4, "{seen:?}");
            assert_eq!(seen.total(), 12, "{seen:?}");
        }
        counts = Some(seen);
    }
    let check_wall = median(walls.clone());
    let minimum = LATENCY * 3;

    // 3. An invalid reference: no request at all.
    let mut invalid = Vec::new();
    for _ in 0..rounds {
        proxy.reset();
        let started = Instant::now();
        let status = check_command(proxy.host(), &docker_config)
            .arg("Not A Reference!")
            .status()
            .expect("run archgate check");
        invalid.push(started.elapsed());
        assert_eq!(status.code(), Some(2), "an invalid reference exits 2");
        assert_eq!(proxy.counts().total(), 0);
    }

    // 4. Cold reviews through `archgate serve`.
    let server = serve::start(proxy.host(), dir.path());
    let mut reviews = Vec::new();
    let mut review_counts = Vec::new();
    for round in 0..rounds.max(2) {
        let revision = format!("r{round}");
        let both = [
            PlatformSpec::new("linux", "amd64"),
            PlatformSpec::new("linux", "arm64").variant("v8"),
        ];
        let mut three = Vec::new();
        for spec in [
            ImageSpec::oci_index("pod/index", &revision, both.clone()),
            ImageSpec::docker_list("pod/list", &revision, both.clone()),
            ImageSpec::oci_manifest("pod/single", &revision, PlatformSpec::new("linux", "amd64")),
        ] {
            let pushed = spec.with_revision(&revision).push(&registry).await;
            three.push(format!(
                "{}/{}:{}",
                proxy.host(),
                pushed.repository,
                pushed.tag
            ));
        }
        let three: [String; 3] = three.try_into().expect("three images");
        let body =
            serde_json::to_vec(&common::webhook::three_container_pod(&three)).expect("review JSON");
        proxy.reset();
        let started = Instant::now();
        let answer = server.review(body).await;
        reviews.push(started.elapsed());
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        let seen = proxy.counts();
        if own_build() {
            // 3 manifest GETs and 1 config blob, the first review's too (no version probe).
            assert_eq!(seen.get("GET", RequestKind::Base), 0, "{seen:?}");
            assert_eq!(seen.kind(RequestKind::Manifest), 3, "{seen:?}");
            assert_eq!(seen.kind(RequestKind::Blob), 1, "{seen:?}");
            assert_eq!(seen.total(), 4, "{seen:?}");
        }
        review_counts.push(seen.total());
    }
    drop(server);

    println!("cold path, {LATENCY:?} added per connection and per request by the proxy");
    println!(
        "  archgate check, 8 uncached images: median {} over {rounds} runs ({:.2}x the {} round-trip minimum); {} requests: {:?}",
        ms(check_wall),
        check_wall.as_secs_f64() / minimum.as_secs_f64(),
        ms(minimum),
        counts.as_ref().map_or(0, |c| c.total()),
        counts.unwrap_or_default()
    );
    println!(
        "  archgate check, spawn to first request: median {}",
        ms(median(startups))
    );
    if bench {
        // The median round's timeline: where the wall time goes, round trip by round trip.
        timeline.sort_by_key(|(wall, _, _)| *wall);
        let (wall, started, events) = &timeline[timeline.len() / 2];
        print_timeline(*started, *wall, events);
    }
    println!(
        "  archgate check, invalid reference (spawn to exit, no request): median {}",
        ms(median(invalid))
    );
    println!(
        "  cold review, 3 images (archgate serve): first (new connections) {}, then median {} ({:.2}x the {} pooled minimum); requests per review {:?}",
        ms(reviews[0]),
        ms(median(reviews[1..].to_vec())),
        median(reviews[1..].to_vec()).as_secs_f64() / (LATENCY * 2).as_secs_f64(),
        ms(LATENCY * 2),
        review_counts
    );

    // 2. skopeo, one image at a time (bench only: it is not installed by CI).
    if !bench {
        return;
    }
    if Command::new("skopeo").arg("--version").output().is_err() {
        println!("  skopeo: not installed (apt-get install skopeo); comparison skipped");
        return;
    }
    let mut walls = Vec::new();
    let mut skopeo_counts = None;
    for _ in 0..rounds {
        proxy.reset();
        let started = Instant::now();
        for (i, image) in via_proxy.iter().enumerate() {
            let mut reads = vec![vec!["inspect", "--raw"]];
            if i >= 4 {
                reads.push(vec!["inspect", "--config", "--raw"]);
            }
            for args in reads {
                let output = Command::new("skopeo")
                    .args(&args)
                    .args(["--tls-verify=false", "--authfile"])
                    .arg(docker_config.join("config.json"))
                    .arg(format!("docker://{image}"))
                    .output()
                    .expect("run skopeo");
                assert!(
                    output.status.success(),
                    "skopeo {args:?} {image}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        walls.push(started.elapsed());
        skopeo_counts = Some(proxy.counts());
    }
    let skopeo = median(walls);
    println!(
        "  skopeo, the same 8 images one at a time: median {} ({:.1}x archgate check); {} requests: {:?}",
        ms(skopeo),
        skopeo.as_secs_f64() / check_wall.as_secs_f64(),
        skopeo_counts.as_ref().map_or(0, |c| c.total()),
        skopeo_counts.unwrap_or_default()
    );
}

/// Each proxy event of one `check` run, in milliseconds from the spawn of the process.
fn print_timeline(started: Instant, wall: Duration, events: &[Event]) {
    println!("  timeline of the median run (ms from spawn; connection numbers in accept order):");
    let first = events.iter().map(|e| e.connection).min().unwrap_or(0);
    for event in events {
        let at = event.at.saturating_duration_since(started).as_secs_f64() * 1000.0;
        let what = match &event.what {
            EventKind::Connected => "connection accepted".to_string(),
            EventKind::Arrived { method, kind, .. } => format!("{method} {kind:?} arrived"),
            EventKind::Answered { status } => format!("answered {status}"),
        };
        println!("    {at:7.1}  #{:<2} {what}", event.connection - first);
    }
    println!("    {:7.1}  exit", wall.as_secs_f64() * 1000.0);
}

/// `archgate serve` as a child process, and an HTTPS client for it.
mod serve {
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub struct Server {
        child: Child,
        url: String,
        client: reqwest::Client,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port")
    }

    pub fn start(registry_host: &str, dir: &Path) -> Server {
        let (port, admin) = (free_port(), free_port());
        let ca_out = dir.join("serve-ca.pem");
        let child = Command::new(super::archgate())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--self-signed", "--self-signed-ca-out"])
            .arg(&ca_out)
            .args(["--insecure-registry", registry_host, "-p", "linux/amd64"])
            .env("DOCKER_CONFIG", dir.join("docker"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start archgate serve");
        let deadline = Instant::now() + Duration::from_secs(20);
        let ca = loop {
            let ready = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if ready && let Ok(ca) = std::fs::read(&ca_out) {
                break ca;
            }
            assert!(Instant::now() < deadline, "archgate serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        let ca = reqwest::Certificate::from_pem(&ca).expect("archgate's CA");
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .no_proxy()
            .build()
            .expect("HTTPS client");
        Server {
            child,
            url: format!("https://localhost:{port}/validate"),
            client,
        }
    }

    impl Server {
        pub async fn review(&self, body: Vec<u8>) -> serde_json::Value {
            self.client
                .post(&self.url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("review sent")
                .json()
                .await
                .expect("review answer")
        }
    }
}
