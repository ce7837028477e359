//! Run with: cargo bench --bench load
//!
//! Load test (issue 6, item 1): what archgate costs on top of TLS and HTTP. A realistic
//! three-container Pod AdmissionReview (the project's own Pod review in tests/data, its one
//! container grown to three, images in a real local `docker-registry`) is sent over keep-alive
//! HTTP/1.1 + TLS to two servers started side by side:
//!
//! - `archgate serve`: the release binary itself (`CARGO_BIN_EXE_archgate`), `--self-signed`, its
//!   cache warmed by one review before anything is measured;
//! - a null handler: this bench binary re-executed as a child that runs the same
//!   `archgate::server::serve_tls` with the same rustls config, the same body limit and
//!   concurrency layers, and a router that answers every POST with archgate's own answer to the
//!   same review (byte for byte: same body shape and size), without parsing anything.
//!
//! The load generator is this process: hyper's HTTP/1.1 client over tokio-rustls, one request at
//! a time per connection, every response checked byte for byte (a wrong or failed answer is
//! counted as an error, never as a success). Two phases, each bounded in requests and time:
//!
//! 1. Throughput (closed loop): `CONNECTIONS` connections send back to back for `SECONDS`;
//!    rounds alternate null, archgate, null, archgate, and the ratio is archgate / null.
//! 2. Fixed rate (open loop): 1,000 requests/s spread over 8 connections; connection `k` sends
//!    its `i`-th request at `start + (i * 8 + k) ms`. Latency counts from the send, or from the
//!    scheduled time when the connection was still busy with the previous answer at that time, so
//!    a slow answer cannot hide the requests queued behind it (coordinated omission); the tokio
//!    timer's ~1 ms wake-up granularity is not charged to the server.
//!
//! The machine has 2 cores; generator and servers share them. By default (when `taskset` exists
//! and there are at least 2 CPUs) both servers run pinned to CPU 0 and the generator re-executes
//! itself pinned to CPU 1, so each server gets one whole core and the generator the other;
//! `ARCHGATE_LOAD_PIN=0` turns this off. The report prints each side's CPU use so a saturated
//! generator is visible. Everything listens on 127.0.0.1.
//!
//! Knobs (environment): `ARCHGATE_LOAD_SECONDS` (default 10), `ARCHGATE_LOAD_CONNECTIONS`
//! (default 16), `ARCHGATE_LOAD_RATE` (default 1000), `ARCHGATE_LOAD_PIN` (default 1).
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a smoke pass of a few hundred
//! requests and asserts only correctness, never timings. Figures are in BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::routing::post;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower::limit::ConcurrencyLimitLayer;

use archgate::server::{self, MAX_BODY_BYTES, MAX_IN_FLIGHT, VALIDATE_PATH};
use common::{Registry, push_standard_fixtures};

const ROLE: &str = "ARCHGATE_LOAD_ROLE";
const PINNED: &str = "ARCHGATE_LOAD_PINNED";

fn main() {
    let role = std::env::var(ROLE).unwrap_or_default();
    if role == "null-server" {
        return null_server();
    }
    let bench = std::env::args().any(|a| a == "--bench");
    if bench && pin_wanted() && std::env::var_os(PINNED).is_none() {
        // Re-execute this generator on CPU 1; servers are started on CPU 0.
        let status = Command::new("taskset")
            .args(["-c", "1"])
            .arg(std::env::current_exe().expect("current exe"))
            .args(std::env::args_os().skip(1))
            .env(PINNED, "1")
            .status()
            .expect("taskset");
        std::process::exit(status.code().unwrap_or(1));
    }
    let plan = if bench { Plan::bench() } else { Plan::smoke() };
    let workers = if std::env::var_os(PINNED).is_some() {
        1
    } else {
        2
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(plan));
}

fn pin_wanted() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::env::var("ARCHGATE_LOAD_PIN").map_or(true, |v| v != "0")
        && cpus >= 2
        && Command::new("taskset").arg("-V").output().is_ok()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How much load to send. Every phase stops at whichever bound comes first.
#[derive(Debug, Clone, Copy)]
struct Plan {
    bench: bool,
    rounds: usize,
    connections: usize,
    seconds: Duration,
    max_requests: usize,
    rate: u64,
    rate_seconds: Duration,
}

impl Plan {
    fn bench() -> Self {
        Self {
            bench: true,
            rounds: 2,
            connections: env_or("ARCHGATE_LOAD_CONNECTIONS", 16),
            seconds: Duration::from_secs(env_or("ARCHGATE_LOAD_SECONDS", 10)),
            max_requests: 2_000_000,
            rate: env_or("ARCHGATE_LOAD_RATE", 1000),
            rate_seconds: Duration::from_secs(env_or("ARCHGATE_LOAD_SECONDS", 10)),
        }
    }

    fn smoke() -> Self {
        Self {
            bench: false,
            rounds: 1,
            connections: 2,
            seconds: Duration::from_secs(2),
            max_requests: 200,
            rate: 1000,
            rate_seconds: Duration::from_millis(100),
        }
    }
}

/// A server under test: a child process listening on 127.0.0.1 with its own CA.
struct Server {
    name: &'static str,
    child: Child,
    port: u16,
    connector: TlsConnector,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn cpu_ticks(&self) -> u64 {
        cpu_ticks(&format!("/proc/{}/stat", self.child.id()))
    }

    fn rss_kib(&self) -> u64 {
        vm_rss_kib(&format!("/proc/{}/status", self.child.id()))
    }
}

/// utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(stat: &str) -> u64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command name, field 3 of the line is index 0 here.
    let get = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    get(14).unwrap_or(0) + get(15).unwrap_or(0)
}

fn vm_rss_kib(status: &str) -> u64 {
    std::fs::read_to_string(status)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// The review: the GKE Pod from the shared fixtures with three containers (app, sidecar, log
/// shipper) whose images are a multi-arch OCI index, a Docker manifest list and a single-arch
/// Docker manifest, all with linux/amd64.
fn three_container_pod(images: [String; 3]) -> Vec<u8> {
    serde_json::to_vec(&common::webhook::three_container_pod(&images)).expect("review JSON")
}

fn start_archgate(registry_host: &str, dir: &Path, pin: bool) -> Server {
    let (port, admin) = (free_port(), free_port());
    let ca_out = dir.join("archgate-ca.pem");
    let docker_config = dir.join("docker");
    std::fs::create_dir_all(&docker_config).expect("docker config dir");
    let mut command = pinned(pin, env!("CARGO_BIN_EXE_archgate"));
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--self-signed", "--self-signed-ca-out"])
        .arg(&ca_out)
        .args(["--insecure-registry", registry_host, "-p", "linux/amd64"])
        .env("DOCKER_CONFIG", &docker_config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // One info line per review, as in production; written to /dev/null here.
        .stderr(Stdio::null());
    let child = command.spawn().expect("start archgate serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    let ca = loop {
        let ready = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if ready && let Ok(ca) = std::fs::read_to_string(&ca_out) {
            break ca;
        }
        assert!(Instant::now() < deadline, "archgate serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    Server {
        name: "archgate",
        child,
        port,
        connector: connector(&ca),
    }
}

fn start_null(answer: &[u8], dir: &Path, pin: bool) -> Server {
    let answer_path = dir.join("null-answer.json");
    std::fs::write(&answer_path, answer).expect("write answer");
    let ca_out = dir.join("null-ca.pem");
    let mut command = pinned(pin, std::env::current_exe().expect("current exe"));
    let mut child = command
        .env(ROLE, "null-server")
        .env("ARCHGATE_LOAD_ANSWER", &answer_path)
        .env("ARCHGATE_LOAD_CA_OUT", &ca_out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start null server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("null server port");
    let port = line.trim().parse().expect("null server printed its port");
    let ca = std::fs::read_to_string(&ca_out).expect("null server CA");
    Server {
        name: "null",
        child,
        port,
        connector: connector(&ca),
    }
}

fn pinned(pin: bool, program: impl AsRef<std::ffi::OsStr>) -> Command {
    if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The null handler's process: same TLS stack, fixed answer. Stops when stdin closes.
fn null_server() {
    archgate::tls::install_crypto_provider();
    let answer = Bytes::from(
        std::fs::read(std::env::var("ARCHGATE_LOAD_ANSWER").expect("answer path")).expect("answer"),
    );
    let ca_out = std::env::var("ARCHGATE_LOAD_CA_OUT").expect("CA path");
    // The same runtime archgate's `#[tokio::main]` builds: multi-threaded, one worker per CPU.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let bundle = archgate::certs::generate(&["localhost".into(), "127.0.0.1".into()])
            .expect("certificates");
        let key = archgate::tls::certified_key(
            bundle.cert_pem.as_bytes(),
            bundle.key_pem.as_bytes(),
            "null".as_ref(),
            "null".as_ref(),
        )
        .expect("key");
        let config =
            archgate::tls::server_config(archgate::tls::CurrentKey::new(key)).expect("TLS config");
        std::fs::write(&ca_out, &bundle.ca_pem).expect("write CA");
        let listener = server::bind("127.0.0.1:0".parse().unwrap(), "the null handler")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let router = null_router(answer);
        let stdin_closed = async {
            tokio::task::spawn_blocking(|| {
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            })
            .await
            .ok();
        };
        println!("{port}");
        std::io::stdout().flush().expect("flush");
        server::serve_tls(
            listener,
            tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            router,
            stdin_closed,
        )
        .await;
    });
}

/// `POST /validate` → a fixed AdmissionReview, behind the layers `server::router` uses.
fn null_router(answer: Bytes) -> Router {
    Router::new()
        .route(
            VALIDATE_PATH,
            post(move |_body: Bytes| {
                let answer = answer.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], answer) }
            }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(ConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
}

/// One keep-alive HTTP/1.1 connection over TLS.
async fn connect(server: &Server) -> SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = server
        .connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    sender
}

/// Sends the review; `Ok` only for a 200 whose body is exactly the expected answer.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    body: &Bytes,
    expected: &Bytes,
) -> Result<(), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = hyper::Request::post(VALIDATE_PATH)
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != 200 || answer != *expected {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&answer)));
    }
    Ok(())
}

/// What one phase against one server measured.
#[derive(Debug, Default)]
struct Outcome {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    server_cpu: f64,
    generator_cpu: f64,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Needs `latencies_us` sorted (`merge` sorts them).
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

/// Runs `phase`, recording the CPU both sides used while it ran.
async fn measured<F: Future<Output = Outcome>>(server: &Server, phase: F) -> Outcome {
    let tck = clock_ticks_per_second();
    let (s0, g0) = (server.cpu_ticks(), cpu_ticks("/proc/self/stat"));
    let mut outcome = phase.await;
    let (s1, g1) = (server.cpu_ticks(), cpu_ticks("/proc/self/stat"));
    let secs = outcome.elapsed.as_secs_f64();
    outcome.server_cpu = (s1 - s0) as f64 / tck / secs;
    outcome.generator_cpu = (g1 - g0) as f64 / tck / secs;
    outcome
}

/// Closed loop: every connection sends back to back until the time or request budget is spent.
async fn throughput(server: &Server, plan: Plan, body: &Bytes, expected: &Bytes) -> Outcome {
    let mut senders = Vec::new();
    for _ in 0..plan.connections {
        senders.push(connect(server).await);
    }
    let per_connection = plan.max_requests / plan.connections;
    let started = Instant::now();
    let stop = started + plan.seconds;
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let (body, expected) = (body.clone(), expected.clone());
            tokio::spawn(async move {
                let mut out = Outcome::default();
                for _ in 0..per_connection {
                    let sent = Instant::now();
                    if sent >= stop {
                        break;
                    }
                    match send(&mut sender, &body, &expected).await {
                        Ok(()) => {
                            out.ok += 1;
                            out.latencies_us.push(micros(sent.elapsed()));
                        }
                        Err(e) => {
                            out.errors += 1;
                            out.first_error.get_or_insert(e);
                            // A failed connection is not reused: count it and stop this one.
                            break;
                        }
                    }
                }
                out
            })
        })
        .collect();
    merge(tasks, started).await
}

/// Open loop at `plan.rate` requests/s over 8 connections; see the module docs for the clock.
async fn fixed_rate(server: &Server, plan: Plan, body: &Bytes, expected: &Bytes) -> Outcome {
    const CONNECTIONS: u64 = 8;
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        senders.push(connect(server).await);
    }
    let interval = Duration::from_nanos(1_000_000_000 / plan.rate);
    let total = (plan.rate as f64 * plan.rate_seconds.as_secs_f64()) as u64;
    let per_connection = total / CONNECTIONS;
    let started = Instant::now() + Duration::from_millis(20);
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(k, mut sender)| {
            let (body, expected) = (body.clone(), expected.clone());
            tokio::spawn(async move {
                let mut out = Outcome::default();
                let mut previous_done = started;
                for i in 0..per_connection {
                    let scheduled = started + interval * (i * CONNECTIONS + k as u64) as u32;
                    tokio::time::sleep_until(scheduled.into()).await;
                    let sent = Instant::now();
                    let from = if previous_done > scheduled {
                        scheduled
                    } else {
                        sent
                    };
                    let result = send(&mut sender, &body, &expected).await;
                    previous_done = Instant::now();
                    match result {
                        Ok(()) => {
                            out.ok += 1;
                            out.latencies_us.push(micros(previous_done - from));
                        }
                        Err(e) => {
                            out.errors += 1;
                            out.first_error.get_or_insert(e);
                            break;
                        }
                    }
                }
                out
            })
        })
        .collect();
    let mut outcome = merge(tasks, Instant::now()).await;
    outcome.elapsed = started.elapsed();
    outcome
}

async fn merge(tasks: Vec<tokio::task::JoinHandle<Outcome>>, started: Instant) -> Outcome {
    let mut all = Outcome::default();
    for task in tasks {
        let out = task.await.expect("load task");
        all.ok += out.ok;
        all.errors += out.errors;
        if all.first_error.is_none() {
            all.first_error = out.first_error;
        }
        all.latencies_us.extend(out.latencies_us);
    }
    all.elapsed = started.elapsed();
    all.latencies_us.sort_unstable();
    all
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

async fn run(plan: Plan) {
    common::install_crypto_provider();
    let pin = std::env::var_os(PINNED).is_some();
    let registry = Registry::start().await;
    let fixtures = push_standard_fixtures(&registry).await;
    let images = [
        fixtures.multi.reference(),
        fixtures.docker_list.reference(),
        fixtures.single_amd64.reference(),
    ];
    let body = Bytes::from(three_container_pod(images));
    let dir = tempfile::tempdir().expect("tempdir");

    let archgate = start_archgate(registry.host(), dir.path(), pin);
    // Warm the cache and learn the answer the null handler will give.
    let mut sender = connect(&archgate).await;
    let answer = warm_answer(&mut sender, &body).await;
    let null = start_null(&answer, dir.path(), pin);
    drop(sender);
    let expected = Bytes::from(answer);
    println!(
        "review body {} bytes, answer {} bytes: {}",
        body.len(),
        expected.len(),
        String::from_utf8_lossy(&expected)
    );
    println!(
        "plan: {plan:?}; servers pinned to CPU 0 and generator to CPU 1: {pin}; archgate RSS {} KiB after warm-up",
        archgate.rss_kib()
    );

    let mut rows = Vec::new();
    for round in 0..plan.rounds {
        for server in [&null, &archgate] {
            let outcome = measured(server, throughput(server, plan, &body, &expected)).await;
            rows.push((round, server.name, outcome));
        }
    }
    println!(
        "\n## Throughput ({} keep-alive connections, {:?} per run)",
        plan.connections, plan.seconds
    );
    println!(
        "| round | server | requests | errors | req/s | p50 ms | p99 ms | server CPU | generator CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let (mut null_rps, mut archgate_rps) = (Vec::new(), Vec::new());
    let mut failures = 0;
    for (round, name, outcome) in &rows {
        let (p50, p99) = (outcome.percentile(0.50), outcome.percentile(0.99));
        println!(
            "| {round} | {name} | {} | {} | {:.0} | {p50:.3} | {p99:.3} | {:.2} | {:.2} |",
            outcome.ok,
            outcome.errors,
            outcome.rps(),
            outcome.server_cpu,
            outcome.generator_cpu
        );
        if let Some(e) = &outcome.first_error {
            println!("  first error: {e}");
        }
        failures += outcome.errors;
        if *name == "null" {
            null_rps.push(outcome.rps());
        } else {
            archgate_rps.push(outcome.rps());
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "ratio archgate/null: {:.3} (mean of rounds: archgate {:.0} req/s, null {:.0} req/s; goal >= 0.8)",
        mean(&archgate_rps) / mean(&null_rps),
        mean(&archgate_rps),
        mean(&null_rps)
    );

    println!(
        "\n## Fixed rate {} req/s over 8 connections for {:?}",
        plan.rate, plan.rate_seconds
    );
    println!(
        "| server | requests | errors | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for server in [&null, &archgate] {
        let outcome = measured(server, fixed_rate(server, plan, &body, &expected)).await;
        println!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} |",
            server.name,
            outcome.ok,
            outcome.errors,
            outcome.rps(),
            outcome.percentile(0.50),
            outcome.percentile(0.90),
            outcome.percentile(0.99),
            outcome.percentile(0.999),
            outcome.percentile(1.0),
            outcome.server_cpu
        );
        if let Some(e) = &outcome.first_error {
            println!("  first error: {e}");
        }
        failures += outcome.errors;
    }
    println!("\narchgate RSS after load: {} KiB", archgate.rss_kib());
    drop(null);
    drop(archgate);
    drop(registry);
    if !plan.bench {
        assert_eq!(failures, 0, "every review must be answered correctly");
        println!("load smoke test: ok");
    }
}

/// One review through archgate (a cold lookup), then one more (warm); returns the warm answer
/// after checking that it allows the pod.
async fn warm_answer(sender: &mut SendRequest<Full<Bytes>>, body: &Bytes) -> Vec<u8> {
    let mut answer = Vec::new();
    for _ in 0..2 {
        sender.ready().await.expect("ready");
        let request = hyper::Request::post(VALIDATE_PATH)
            .header(header::HOST, "localhost")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
            .expect("request");
        let response = sender.send_request(request).await.expect("warm-up review");
        assert_eq!(response.status(), 200);
        answer = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
    }
    let review: Value = serde_json::from_slice(&answer).expect("answer JSON");
    assert_eq!(
        review["response"]["allowed"], true,
        "the load review must be allowed: {review}"
    );
    answer
}
