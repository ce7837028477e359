//! What `archgate serve` writes to its log, read the way a log pipeline reads it: the built
//! binary, its stderr parsed line by line (issue 15).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

const ARCHGATE: &str = env!("CARGO_BIN_EXE_archgate");

/// A registry address nothing listens on: every lookup fails fast, and is logged.
const CLOSED: &str = "127.0.0.1:1";

struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
    ca_pem: String,
    webhook: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Served {
    /// `archgate serve` on loopback with a self-signed certificate, in `format`.
    fn start(format: &str) -> Self {
        Self::start_reading(format, CLOSED)
    }

    /// The same, reading `registry` over plain HTTP.
    fn start_reading(format: &str, registry: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let mut command = Command::new(ARCHGATE);
        command
            .args(["serve", "--self-signed", "--self-signed-ca-out"])
            .arg(&ca)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--log-format", format, "--insecure-registry", registry])
            .env("HOME", dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ARCHGATE_") {
                command.env_remove(name);
            }
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut me = Self {
            child,
            lines,
            ca_pem: String::new(),
            webhook: String::new(),
            admin: String::new(),
            _dir: dir,
        };
        let serving = me.wait_for("archgate serving");
        let field = |key: &str| match format {
            "json" => serde_json::from_str::<Value>(&serving).unwrap()[key]
                .as_str()
                .unwrap()
                .to_string(),
            _ => serving
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .unwrap()
                .to_string(),
        };
        me.webhook = field("webhook");
        me.admin = field("admin");
        assert_eq!(field("version"), env!("CARGO_PKG_VERSION"), "{serving}");
        me.ca_pem = std::fs::read_to_string(&ca).unwrap();
        me
    }

    /// The next stderr line containing `needle` (within 20 s).
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    /// The README's example Pod, with an image on a registry nobody answers for.
    async fn review(&self) -> Value {
        self.review_of(&format!("{CLOSED}/team/app:v1")).await
    }

    /// The README's example Pod running `image`.
    async fn review_of(&self, image: &str) -> Value {
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default", "operation": "CREATE", "userInfo": {"username": "dev"},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                "spec": {"containers": [{"name": "app", "image": image}]}}}});
        let client = common::webhook::client_trusting(&self.ca_pem);
        let port = self.webhook.rsplit(':').next().unwrap();
        client
            .post(format!("https://localhost:{port}/validate"))
            .json(&review)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Before: JSON lines carried `"name"` twice (the span's and the object's; parsers keep the
/// last), and the README's own example logged `name=` empty.
#[tokio::test]
async fn json_logs_name_each_thing_once() {
    common::install_crypto_provider();
    let mut served = Served::start("json");
    let answer = served.review().await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    // The first line logged in the review's span already says which review it is: the span's
    // fields are written when a line is due, not when the span is created.
    let finding = served.wait_for("\"finding\"");
    let finding: Value =
        serde_json::from_str(&finding).unwrap_or_else(|e| panic!("{e}: {finding}"));
    assert_eq!(
        finding["span"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002",
        "{finding}"
    );
    assert_eq!(finding["span"]["object"], "web", "{finding}");
    let line = served.wait_for("\"reviewed\"");
    let parsed: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(
        line.matches("\"name\":").count(),
        1,
        "one `name` key per line: {line}"
    );
    let span = &parsed["span"];
    assert_eq!(span["name"], "review", "{line}");
    assert_eq!(span["object"], "web", "{line}");
    assert_eq!(span["kind"], "Pod", "{line}");

    // The version is in the startup line (checked in `start`) and in a metric.
    let metrics = reqwest::get(format!("http://{}/metrics", served.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let build = format!(
        "archgate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.contains(&build), "{metrics}");
}

/// Before: a registry's 429, met by a review, was logged inside that review's span before the
/// span said which review it was (`"span":{"name":"review"}` and nothing else). A line about a
/// registry as a whole now has a span of its own.
#[tokio::test]
async fn a_registry_wide_line_is_not_logged_in_an_unnamed_review() {
    common::install_crypto_provider();
    let registry = common::Registry::start().await;
    let proxy = common::CountingProxy::start(registry.host()).await;
    proxy.set_fault(common::Fault::Status {
        status: 429,
        retry_after: Some(30),
    });
    let mut served = Served::start_reading("json", proxy.host());
    let answer = served
        .review_of(&format!("{}/team/app:v1", proxy.host()))
        .await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(proxy.counts().total() > 0, "the registry was asked");
    let line = served.wait_for("registry rate limited");
    let parsed: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(parsed["span"]["name"], "registry", "{line}");
    assert_eq!(parsed["registry"], proxy.host(), "{line}");
    // The review's own lines still say which review they are.
    let reviewed = served.wait_for("\"reviewed\"");
    let reviewed: Value = serde_json::from_str(&reviewed).unwrap();
    assert_eq!(
        reviewed["span"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002",
        "{reviewed}"
    );
}

/// Before: plain logs written to a pipe carried ANSI colour codes.
#[tokio::test]
async fn plain_logs_to_a_pipe_have_no_colour_codes() {
    common::install_crypto_provider();
    let mut served = Served::start("plain");
    served.review().await;
    let line = served.wait_for("reviewed");
    assert!(!line.contains('\u{1b}'), "{line:?}");
    assert!(line.contains("object=web"), "{line}");
}

/// Before: `archgate serve --config missing.yaml` said "(os error 2)" twice.
#[test]
fn errors_say_their_cause_once() {
    let out = Command::new(ARCHGATE)
        .args([
            "serve",
            "--self-signed",
            "--config",
            "/nonexistent/archgate.yaml",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/archgate.yaml"), "{stderr}");
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
}
