//! Rotation and shutdown while reviews keep coming (issue 6, item 5). Everything on 127.0.0.1,
//! every loop bounded in count and time, no timing asserted.
//!
//! - Certificates are swapped the way the kubelet updates a mounted Secret (a new timestamped
//!   directory, then an atomic rename of the `..data` symlink) twice while clients drive reviews
//!   without pause, over kept-alive connections and over a fresh connection per review. Clients
//!   trust every CA of the run, as a caBundle holding old and new does during a rotation. Not one
//!   review may fail, and once the new certificate is seen, every later fresh connection must be
//!   served with it.
//! - The real binary gets SIGTERM while reviews are in flight (held there by a slow registry):
//!   each of them is answered 200 with a real verdict, the listener refuses new connections as
//!   soon as draining starts, and the process exits 0.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

use archgate::certs::Bundle;
use archgate::serve;
use common::{CountingProxy, Fault, Registry, RequestKind};

const FIXTURE: &str = "tests/data/admissionreview/pod-create.json";

/// The project's own Pod review with three containers running `images`.
fn pod_review(images: &[String]) -> Value {
    let text = std::fs::read_to_string(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e} "));
    let mut review: Value = serde_json::from_str(&text).unwrap();
    let spec = &mut review["request"]["object"]["spec"];
    let template = spec["containers"][0].clone();
    let containers: Vec<Value> = ["echo-server", "envoy", "log-shipper"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut c = template.clone();
            c["name"] = json!(name);
            c["image"] = json!(images[i % images.len()]);
            c
        })
        .collect();
    spec["containers"] = Value::Array(containers);
    review
}

/// Checks a webhook answer: 200, the uid echoed, allowed without warnings (every image checked).
async fn expect_allowed(response: reqwest::Response, uid: &Value) -> Result<(), String> {
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("HTTP {status}: {body}"));
    }
    let answer: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    let r = &answer["response"];
    if r["uid"] != *uid || r["allowed"] != true || r.get("warnings").is_some() {
        return Err(format!("unexpected answer: {answer}"));
    }
    Ok(())
}

/// Serving certificates laid out the way the kubelet mounts a Secret (as in tests/webhook.rs),
/// with every bundle of the run made up front so clients can trust all CAs from the start.
struct MountedSecret {
    dir: tempfile::TempDir,
    bundles: Vec<Bundle>,
    current: usize,
}

impl MountedSecret {
    fn new(generations: usize) -> Self {
        let bundles = (0..generations)
            .map(|_| archgate::certs::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap())
            .collect();
        let me = Self {
            dir: tempfile::tempdir().unwrap(),
            bundles,
            current: 0,
        };
        me.write_and_swap(0);
        std::os::unix::fs::symlink("..data/tls.crt", me.path().join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", me.path().join("tls.key")).unwrap();
        me
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes bundle `generation` into a fresh timestamped directory and swaps `..data` to it.
    fn write_and_swap(&self, generation: usize) {
        let bundle = &self.bundles[generation];
        let data = format!("..2026_11_23_{generation:02}");
        let data_dir = self.path().join(&data);
        std::fs::create_dir(&data_dir).unwrap();
        std::fs::write(data_dir.join("tls.crt"), &bundle.cert_pem).unwrap();
        std::fs::write(data_dir.join("tls.key"), &bundle.key_pem).unwrap();
        let tmp = self.path().join("..data_tmp");
        std::os::unix::fs::symlink(&data, &tmp).unwrap();
        std::fs::rename(&tmp, self.path().join("..data")).unwrap();
    }

    fn rotate(&mut self) {
        self.current += 1;
        self.write_and_swap(self.current);
    }

    /// Which generation a served leaf certificate belongs to.
    fn generation_of(&self, leaf: &[u8]) -> Option<usize> {
        self.bundles.iter().position(|b| {
            CertificateDer::pem_slice_iter(b.cert_pem.as_bytes())
                .next()
                .is_some_and(|c| c.unwrap().as_ref() == leaf)
        })
    }

    fn cert(&self) -> PathBuf {
        self.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.path().join("tls.key")
    }
}

fn client(cas: &[&str], fresh_connections: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .tls_info(true)
        .no_proxy()
        .timeout(Duration::from_secs(10));
    if !fresh_connections {
        let certs = cas
            .iter()
            .map(|pem| reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
        return builder.tls_certs_only(certs).build().unwrap();
    }
    // No idle connection is kept: every review does its own TCP and full TLS handshake. TLS
    // session resumption is off, because a resumed session presents no certificate at all (the
    // client would report the one from the original handshake), and the point here is to see
    // which certificate a new connection is given.
    let mut roots = rustls::RootCertStore::empty();
    for pem in cas {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.resumption = rustls::client::Resumption::disabled();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    builder
        .tls_backend_preconfigured(tls)
        .pool_max_idle_per_host(0)
        .http1_only()
        .build()
        .unwrap()
}

/// The leaf certificate the server presented for this response's connection.
fn served_leaf(response: &reqwest::Response) -> Option<Vec<u8>> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(<[u8]>::to_vec)
}

/// What one client task saw: reviews answered, failures, and for fresh connections the leaf
/// certificate each review was served with, in order, with the time the review was sent.
#[derive(Default)]
struct Seen {
    ok: usize,
    failures: Vec<String>,
    leaves: Vec<(Instant, Vec<u8>)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_review() {
    common::install_crypto_provider();
    let registry = Registry::start().await;
    let multi = common::push_image(
        &registry,
        "load/app",
        "v1",
        &[("linux", "amd64", None), ("linux", "arm64", Some("v8"))],
    )
    .await;
    let mut secret = MountedSecret::new(3);
    let (cert, key) = (secret.cert(), secret.key());
    let settings = common::webhook::serve_settings(&cert, &key, registry.host(), &[]);
    let running = serve::start(settings).await.unwrap();
    let url = format!("https://localhost:{}/validate", running.webhook.port());
    let review = pod_review(&[multi.reference()]);
    let uid = review["request"]["uid"].clone();
    let body = serde_json::to_vec(&review).unwrap();
    let cas: Vec<&str> = secret.bundles.iter().map(|b| b.ca_pem.as_str()).collect();

    // Two clients on kept-alive connections (h2), two opening a connection per review (HTTP/1.1).
    let stop = Arc::new(AtomicBool::new(false));
    const MAX_PER_CLIENT: usize = 20_000;
    let drivers: Vec<_> = [false, false, true, true]
        .into_iter()
        .map(|fresh| {
            let (client, url, body, uid, stop) = (
                client(&cas, fresh),
                url.clone(),
                body.clone(),
                uid.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut seen = Seen::default();
                for _ in 0..MAX_PER_CLIENT {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let sent = Instant::now();
                    let result = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let outcome = match result {
                        Ok(response) => {
                            let leaf = served_leaf(&response);
                            let checked = expect_allowed(response, &uid).await;
                            if fresh && let Some(leaf) = leaf {
                                seen.leaves.push((sent, leaf));
                            }
                            checked
                        }
                        Err(e) => Err(format!("{e:?}")),
                    };
                    match outcome {
                        Ok(()) => seen.ok += 1,
                        Err(e) => seen.failures.push(e),
                    }
                }
                seen
            })
        })
        .collect();

    // Load first, then each rotation; after a swap, wait (bounded) until a client trusting only
    // the new CA is served, and note when: fresh connections sent after that must see it too.
    let mut served_since = Vec::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for generation in 1..secret.bundles.len() {
        secret.rotate();
        let only_new = client(&[&secret.bundles[generation].ca_pem], true);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let probe = only_new
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            if let Ok(response) = probe {
                expect_allowed(response, &uid).await.unwrap();
                served_since.push((generation, Instant::now()));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "generation {generation} never served"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    let mut failures = Vec::new();
    let mut fresh_by_generation = vec![0usize; secret.bundles.len()];
    for driver in drivers {
        let seen = driver.await.unwrap();
        assert!(seen.ok > 0, "every client must have been answered");
        total += seen.ok;
        failures.extend(seen.failures);
        for (sent, leaf) in &seen.leaves {
            let generation = secret
                .generation_of(leaf)
                .expect("served a certificate of this run");
            fresh_by_generation[generation] += 1;
            for (rotated, since) in &served_since {
                if sent > since {
                    assert!(
                        generation >= *rotated,
                        "a connection opened after generation {rotated} was served was given generation {generation}"
                    );
                }
            }
        }
    }
    eprintln!(
        "reviews answered during two rotations: {total}; fresh connections per certificate \
         generation: {fresh_by_generation:?}; failed: {}",
        failures.len()
    );
    assert!(failures.is_empty(), "failed reviews: {failures:#?}");
    assert!(
        fresh_by_generation.iter().all(|&n| n > 0),
        "every generation should have served fresh connections: {fresh_by_generation:?}"
    );
    running.shutdown().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child on drop, so a failed assertion leaves no server behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_reviews_finish_and_refuses_new_connections() {
    const IN_FLIGHT: usize = 16;
    common::install_crypto_provider();
    let registry = Registry::start().await;
    // One tag per review, so each review holds its own registry lookup and the proxy's count of
    // manifest HEADs says exactly how many reviews are inside the server.
    let mut images = Vec::new();
    for i in 0..IN_FLIGHT {
        let pushed = common::push_image(
            &registry,
            "load/slow",
            &format!("v{i}"),
            &[("linux", "amd64", None)],
        )
        .await;
        images.push(pushed);
    }
    let proxy = CountingProxy::start(registry.host()).await;
    proxy.set_fault(Fault::Delay(Duration::from_millis(1500)));

    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let ca_path = dir.path().join("ca.pem");
    let log_path = dir.path().join("archgate.log");
    std::fs::create_dir(dir.path().join("docker")).unwrap();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_archgate"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--self-signed", "--self-signed-ca-out"])
            .arg(&ca_path)
            .args(["--insecure-registry", proxy.host()])
            .env("DOCKER_CONFIG", dir.path().join("docker"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = plain
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready && ca_path.exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archgate serve never became ready:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca = std::fs::read_to_string(&ca_path).unwrap();
    let url = format!("https://localhost:{port}/validate");
    // Half on one h2 connection (streams), half on HTTP/1.1 connections of their own.
    let h2 = client(&[&ca], false);
    let reviews: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let review = pod_review(&[image.reference().replace(registry.host(), proxy.host())]);
            let client = if i % 2 == 0 {
                h2.clone()
            } else {
                client(&[&ca], true)
            };
            let url = url.clone();
            tokio::spawn(async move {
                let uid = review["request"]["uid"].clone();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&review).unwrap())
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                expect_allowed(response, &uid).await
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.counts().get("GET", RequestKind::Manifest) < IN_FLIGHT as u64 {
        assert!(
            Instant::now() < deadline,
            "reviews never reached the registry: {:?}\n{}",
            proxy.counts(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // Draining: the listener is closed at once, while the reviews still wait on the registry.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "still accepting after SIGTERM:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let still_in_flight = reviews.iter().filter(|r| !r.is_finished()).count();

    let mut failures = Vec::new();
    for review in reviews {
        if let Err(e) = review.await.unwrap() {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "in-flight reviews failed: {failures:#?}\n{}",
        log()
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "did not exit after draining:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit {exit:?}:\n{}", log());
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "a new connection was accepted after exit");
    let log = log();
    assert!(log.contains("shutting down"), "{log}");
    eprintln!(
        "SIGTERM with {IN_FLIGHT} reviews in flight: all answered 200; {still_in_flight} were still \
         waiting on the registry when the listener already refused connections; exit {exit}"
    );
}
