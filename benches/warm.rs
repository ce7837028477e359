//! Run with: bash benches/warm.sh (installs h2load and nginx, then `cargo bench --bench warm`)
//!
//! Warm-path throughput and latency (issue 14) with h2load as the load generator: archgate
//! answering a warm three-container Pod review against the cheapest HTTPS responders measured in
//! the same run, all serving the same ECDSA P-256 certificate and the same answer bytes:
//!
//! - `archgate serve` (the release binary; `ARCHGATE_WARM_BIN` picks another one, e.g. a build
//!   of an older commit for a before/after table), its cache warmed before anything is measured;
//! - `null`: archgate's own TLS and HTTP stack (`server::serve_tls`, `tls::server_config`)
//!   answering fixed bytes without reading them (this bench binary re-executed);
//! - `nginx` (Debian's): `return 200 '<answer>'`, one worker process.
//!
//! Each server runs pinned to CPU 0 and h2load to CPU 1 (`ARCHGATE_LOAD_PIN=0` turns pinning
//! off). Every answer is checked once byte for byte before the load; under load h2load checks
//! status codes and this bench checks the answer bytes h2load counted (requests × answer size).
//!
//! 1. Throughput: `h2load --h1 -c 16` (HTTP/1.1 keep-alive, one request at a time per
//!    connection). A 2,000-request run per server measures its rate; the measured run then sends
//!    rate × `ARCHGATE_WARM_SECONDS` (default 10) requests, at most 2,000,000. Two rounds.
//! 2. Fixed rate: `h2load --h1 -c 8 --rps 125` (1,000 req/s) for `ARCHGATE_WARM_SECONDS`, with
//!    `--log-file`; percentiles come from that per-request log. h2load times a request from
//!    when it is sent, so a request held back behind a slow one is not charged its wait
//!    (benches/load.rs measures the same rate free of that, with its own client).
//!
//! Every h2load run is bounded in requests and killed past a time limit. Under `cargo test
//! --bench warm` (no `--bench` argument) it runs a few hundred requests per server when h2load
//! is installed, asserting only that every answer was right; nothing about timings.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Registry, push_standard_fixtures};
use support::{Certs, Server};

fn main() {
    if std::env::var_os(support::NULL_ROLE).is_some() {
        return support::null_server();
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(bench));
}

/// What to send. Every run is bounded in requests and in time.
#[derive(Debug, Clone, Copy)]
struct Plan {
    bench: bool,
    rounds: usize,
    connections: u32,
    seconds: f64,
    calibration: u64,
    max_requests: u64,
    rate_clients: u32,
    rate_per_client: u32,
}

impl Plan {
    fn new(bench: bool) -> Self {
        let seconds = std::env::var("ARCHGATE_WARM_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10.0);
        if bench {
            Self {
                bench,
                rounds: 2,
                connections: 16,
                seconds,
                calibration: 2_000,
                max_requests: 2_000_000,
                rate_clients: 8,
                rate_per_client: 125,
            }
        } else {
            Self {
                bench,
                rounds: 1,
                connections: 2,
                seconds: 0.2,
                calibration: 100,
                max_requests: 200,
                rate_clients: 2,
                rate_per_client: 50,
            }
        }
    }
}

/// What h2load reported for one run.
#[derive(Debug, Default)]
struct Report {
    requests: u64,
    succeeded: u64,
    failed: u64,
    ok_2xx: u64,
    data_bytes: u64,
    rps: f64,
    elapsed: Duration,
    server_cpu: f64,
}

fn h2load_installed() -> bool {
    Command::new("h2load")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs h2load against `server` with `args`, killing it after `limit`.
fn h2load(server: &Server, body: &Path, args: &[String], pin: bool, limit: Duration) -> Report {
    let mut command = support::pinned(pin.then_some(1), "h2load");
    command
        .args(["--h1", "-d"])
        .arg(body)
        .args(["-H", "content-type: application/json"])
        .args(args)
        .arg(server.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let tck = support::clock_ticks_per_second();
    let cpu_before = server.cpu_ticks();
    let started = Instant::now();
    let mut child = command.spawn().expect("start h2load");
    let mut stdout = child.stdout.take().expect("h2load stdout");
    // Read on a thread so the time limit below still applies while h2load writes.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    loop {
        if child.try_wait().expect("h2load status").is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("h2load against {} ran past {limit:?}", server.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    let text = reader.join().expect("h2load output");
    let mut report = parse_h2load(&text);
    report.elapsed = elapsed;
    report.server_cpu = (server.cpu_ticks() - cpu_before) as f64 / tck / elapsed.as_secs_f64();
    assert!(report.requests > 0, "h2load printed no result:\n{text}");
    report
}

/// The figures of h2load's summary (`finished in`, `requests:`, `status codes:`, `traffic:`).
fn parse_h2load(text: &str) -> Report {
    let mut report = Report::default();
    // "12 succeeded" → 12
    let count = |line: &str, label: &str| -> u64 {
        line.split(',')
            .find_map(|part| part.trim().strip_suffix(label)?.trim().rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("finished in ") {
            report.rps = rest
                .split(',')
                .nth(1)
                .and_then(|p| p.trim().strip_suffix(" req/s"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            report.requests = count(rest, "total");
            report.succeeded = count(rest, "succeeded");
            report.failed = count(rest, "failed") + count(rest, "errored") + count(rest, "timeout");
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            report.ok_2xx = count(rest, "2xx");
        } else if let Some(rest) = line.strip_prefix("traffic: ") {
            // "..., 10.53MB (11040000) data"
            report.data_bytes = rest
                .rsplit_once(',')
                .and_then(|(_, last)| last.split_once('(')?.1.split_once(')'))
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or(0);
        }
    }
    report
}

/// Latency percentiles (ms) from an h2load `--log-file`: start time, status, microseconds.
fn log_percentiles(log: &Path) -> (usize, usize, [f64; 5]) {
    let text = std::fs::read_to_string(log).expect("h2load log");
    let mut micros: Vec<u64> = Vec::new();
    let mut not_ok = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let (Some(status), Some(us)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        if *status != "200" {
            not_ok += 1;
        }
        if let Ok(us) = us.trim().parse() {
            micros.push(us);
        }
    }
    micros.sort_unstable();
    let at = |p: f64| {
        micros
            .get(((micros.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    (
        micros.len(),
        not_ok,
        [at(0.5), at(0.9), at(0.99), at(0.999), at(1.0)],
    )
}

/// Checks that a run answered every request with 200 and the expected bytes.
fn check(server: &Server, report: &Report, answer_len: usize) -> Result<(), String> {
    let want = report.requests * answer_len as u64;
    if report.failed > 0 || report.ok_2xx != report.requests || report.data_bytes != want {
        return Err(format!(
            "{}: {} requests, {} failed, {} 2xx, {} answer bytes (expected {want})",
            server.name, report.requests, report.failed, report.ok_2xx, report.data_bytes
        ));
    }
    Ok(())
}

async fn run(bench: bool) {
    common::install_crypto_provider();
    let plan = Plan::new(bench);
    let pin = bench && support::pin_wanted();
    if !h2load_installed() {
        assert!(
            !bench,
            "h2load is not installed: run benches/warm.sh, or apt-get install nghttp2-client"
        );
        eprintln!("warm smoke test skipped: h2load (nghttp2-client) is not installed");
        return;
    }
    let registry = Registry::start().await;
    let fixtures = push_standard_fixtures(&registry).await;
    let body = support::review_body(&fixtures);
    let dir = tempfile::tempdir().expect("tempdir");
    let body_file = dir.path().join("review.json");
    std::fs::write(&body_file, &body).expect("write review");
    let certs = Certs::write(dir.path());
    let cpu = pin.then_some(0);
    let program: PathBuf = std::env::var_os("ARCHGATE_WARM_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_archgate").into(), PathBuf::from);
    let archgate = support::start_archgate(&program, registry.host(), dir.path(), &certs, cpu);
    let answer = support::warm_answer(&archgate, &body).await;
    let null = support::start_null(&answer, dir.path(), &certs, cpu);
    let nginx = support::start_nginx(&answer, dir.path(), &certs, cpu);
    let mut servers: Vec<&Server> = vec![&null];
    match &nginx {
        Some(nginx) => servers.push(nginx),
        None => eprintln!("nginx is not installed: comparing with the null handler only"),
    }
    servers.push(&archgate);
    for server in &servers {
        let mut sender = support::connect(server).await;
        let (status, got) = support::post(&mut sender, &body).await.expect("one review");
        assert_eq!(
            (status, &got),
            (200, &answer),
            "{} must answer the same bytes as archgate",
            server.name
        );
    }
    println!(
        "review {} bytes ({}), answer {} bytes: {}",
        body.len(),
        program.display(),
        answer.len(),
        String::from_utf8_lossy(&answer)
    );
    println!("plan: {plan:?}; servers on CPU 0 and h2load on CPU 1: {pin}");

    let mut failures = Vec::new();
    let limit = |requests: u64| Duration::from_secs_f64(60.0 + requests as f64 / 1_000.0);
    println!(
        "\n## Throughput: h2load --h1 -c {} (keep-alive), server pinned to one core",
        plan.connections
    );
    println!("| round | server | requests | req/s | server CPU | µs CPU/request |");
    println!("|---|---|---|---|---|---|");
    let mut rates: Vec<(&str, f64)> = Vec::new();
    for round in 0..plan.rounds {
        for server in &servers {
            let clients = plan.connections.to_string();
            let calibration = h2load(
                server,
                &body_file,
                &[
                    "-c".into(),
                    clients.clone(),
                    "-n".into(),
                    plan.calibration.to_string(),
                ],
                pin,
                limit(plan.calibration),
            );
            let requests = ((calibration.rps * plan.seconds) as u64)
                .clamp(plan.calibration, plan.max_requests);
            let report = h2load(
                server,
                &body_file,
                &["-c".into(), clients, "-n".into(), requests.to_string()],
                pin,
                limit(requests),
            );
            if let Err(e) = check(server, &report, answer.len()) {
                failures.push(e);
            }
            let cpu_us = report.server_cpu * 1e6 / report.rps.max(1.0);
            println!(
                "| {round} | {} | {} | {:.0} | {:.2} | {cpu_us:.1} |",
                server.name, report.requests, report.rps, report.server_cpu
            );
            rates.push((server.name, report.rps));
        }
    }
    let mean = |name: &str| {
        let v: Vec<f64> = rates
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, r)| *r)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let archgate_rps = mean("archgate").unwrap_or(0.0);
    for name in ["null", "nginx"] {
        if let Some(rps) = mean(name) {
            println!(
                "archgate / {name}: {:.3} ({archgate_rps:.0} / {rps:.0} req/s, mean of rounds)",
                archgate_rps / rps
            );
        }
    }

    let total = u64::from(plan.rate_clients * plan.rate_per_client) as f64 * plan.seconds;
    let total = (total as u64).max(u64::from(plan.rate_clients));
    println!(
        "\n## Fixed rate: h2load --h1 -c {} --rps {} ({} req/s), {total} requests",
        plan.rate_clients,
        plan.rate_per_client,
        plan.rate_clients * plan.rate_per_client
    );
    println!(
        "| server | requests | non-200 | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for server in &servers {
        let log = dir.path().join(format!("{}.log", server.name));
        let report = h2load(
            server,
            &body_file,
            &[
                "-c".into(),
                plan.rate_clients.to_string(),
                "--rps".into(),
                plan.rate_per_client.to_string(),
                "-n".into(),
                total.to_string(),
                "--log-file".into(),
                log.display().to_string(),
            ],
            pin,
            limit(total) + Duration::from_secs_f64(plan.seconds * 2.0),
        );
        if let Err(e) = check(server, &report, answer.len()) {
            failures.push(e);
        }
        let (logged, not_ok, [p50, p90, p99, p999, max]) = log_percentiles(&log);
        if not_ok > 0 || logged as u64 != report.requests {
            failures.push(format!(
                "{}: {logged} requests logged for {}, {not_ok} not 200",
                server.name, report.requests
            ));
        }
        println!(
            "| {} | {logged} | {not_ok} | {p50:.3} | {p90:.3} | {p99:.3} | {p999:.3} | {max:.3} | {:.2} |",
            server.name, report.server_cpu
        );
    }
    println!("\narchgate RSS after load: {} KiB", archgate.rss_kib());
    drop(nginx);
    drop(null);
    drop(archgate);
    drop(registry);
    assert!(failures.is_empty(), "wrong answers: {failures:#?}");
    if !plan.bench {
        println!("warm smoke test: ok");
    }
}
