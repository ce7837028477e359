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
#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;

use common::{Registry, push_standard_fixtures};
use support::{Certs, Server, connect};

const PINNED: &str = "ARCHGATE_LOAD_PINNED";

fn main() {
    if std::env::var_os(support::NULL_ROLE).is_some() {
        return support::null_server();
    }
    let bench = std::env::args().any(|a| a == "--bench");
    if bench && support::pin_wanted() && std::env::var_os(PINNED).is_none() {
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

/// Sends the review; `Ok` only for a 200 whose body is exactly the expected answer.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    body: &Bytes,
    expected: &Bytes,
) -> Result<(), String> {
    match support::post(sender, body).await? {
        (200, answer) if answer == *expected => Ok(()),
        (status, answer) => Err(format!("{status}: {}", String::from_utf8_lossy(&answer))),
    }
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
    let tck = support::clock_ticks_per_second();
    let (s0, g0) = (server.cpu_ticks(), support::cpu_ticks("/proc/self/stat"));
    let mut outcome = phase.await;
    let (s1, g1) = (server.cpu_ticks(), support::cpu_ticks("/proc/self/stat"));
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
    let body = support::review_body(&fixtures);
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = Certs::write(dir.path());
    let cpu = pin.then_some(0);
    let archgate = support::start_archgate(
        env!("CARGO_BIN_EXE_archgate").as_ref(),
        registry.host(),
        dir.path(),
        &certs,
        cpu,
    );
    // Warm the cache and learn the answer the null handler will give.
    let expected = support::warm_answer(&archgate, &body).await;
    let null = support::start_null(&expected, dir.path(), &certs, cpu);
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
