//! archgate's webhook started in process from real `serve` flags, with a kubelet-style mounted
//! certificate Secret, in front of the real registry harness.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::{Value, json};

use archgate::cli::{Cli, Command};
use archgate::config::Settings;
use archgate::serve::{self, Running};

use super::{CountingProxy, Fixtures, Registry};

/// The shared corpus of real AdmissionReviews; tests over it say so and skip when it is absent.
pub const FIXTURES: &str = "../shared/fixtures/admissionreview";
/// Reviews of the project's own making: what the core tests and benches send.
pub const OWN_FIXTURES: &str = "tests/data/admissionreview";

/// Whether the shared corpus sits beside the checkout (always in CI); when it does not, prints
/// one line saying what is not run.
pub fn shared_corpus(what: &str) -> bool {
    let present = Path::new(FIXTURES).is_dir();
    if !present {
        // Straight to stderr: the test harness captures `println!`, and this line is for the
        // person running the suite.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("skipped {what}: ../shared/fixtures is not beside the checkout\n").as_bytes(),
        );
    }
    present
}

/// A registry with the standard fixtures behind a counting proxy.
pub struct World {
    pub registry: Registry,
    pub proxy: CountingProxy,
    pub fixtures: Fixtures,
}

impl World {
    pub async fn new() -> Self {
        super::install_crypto_provider();
        let registry = Registry::start().await;
        let fixtures = super::push_standard_fixtures(&registry).await;
        let proxy = CountingProxy::start(registry.host()).await;
        Self {
            registry,
            proxy,
            fixtures,
        }
    }

    /// An image reference through the proxy, so every registry request is counted.
    pub fn image(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.proxy.host())
    }

    pub fn multi(&self) -> String {
        self.image(&self.fixtures.multi.repository, &self.fixtures.multi.tag)
    }

    pub fn arm_only(&self) -> String {
        self.image(
            &self.fixtures.ai_base_cuda.repository,
            &self.fixtures.ai_base_cuda.tag,
        )
    }
}

/// Serving certificates laid out the way the kubelet mounts a Secret: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<timestamp>`; rotation swaps `..data` atomically.
pub struct MountedSecret {
    dir: tempfile::TempDir,
    generation: u32,
    pub ca_pem: String,
}

impl MountedSecret {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut me = Self {
            dir,
            generation: 0,
            ca_pem: String::new(),
        };
        me.rotate();
        std::os::unix::fs::symlink("..data/tls.crt", me.path().join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", me.path().join("tls.key")).unwrap();
        me
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a new CA + certificate into a fresh timestamped directory and swaps `..data`.
    pub fn rotate(&mut self) {
        self.generation += 1;
        let bundle = archgate::certs::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let data = format!("..2026_11_23_{:02}", self.generation);
        let data_dir = self.path().join(&data);
        std::fs::create_dir(&data_dir).unwrap();
        std::fs::write(data_dir.join("tls.crt"), &bundle.cert_pem).unwrap();
        std::fs::write(data_dir.join("tls.key"), &bundle.key_pem).unwrap();
        let tmp = self.path().join("..data_tmp");
        std::os::unix::fs::symlink(&data, &tmp).unwrap();
        std::fs::rename(&tmp, self.path().join("..data")).unwrap();
        self.ca_pem = bundle.ca_pem;
    }

    pub fn cert(&self) -> PathBuf {
        self.path().join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.path().join("tls.key")
    }
}

pub struct Webhook {
    pub running: Option<Running>,
    pub secret: MountedSecret,
    pub client: reqwest::Client,
}

pub fn client_trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .no_proxy()
        .build()
        .unwrap()
}

/// `archgate serve` settings parsed from real flags: port 0 listeners, the certificate files, a
/// plain-HTTP registry, then `extra`.
pub fn serve_settings(cert: &Path, key: &Path, registry: &str, extra: &[&str]) -> Settings {
    let mut argv = vec![
        "archgate",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--insecure-registry",
        registry,
    ];
    argv.extend_from_slice(extra);
    let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    Settings::resolve(&args).unwrap()
}

impl Webhook {
    /// `archgate serve` parsed from real flags, with port 0 listeners.
    pub async fn start(world: &World, extra: &[&str]) -> Self {
        let secret = MountedSecret::new();
        let (cert, key) = (secret.cert(), secret.key());
        let settings = serve_settings(&cert, &key, world.proxy.host(), extra);
        let running = serve::start(settings).await.unwrap();
        let client = client_trusting(&secret.ca_pem);
        Self {
            running: Some(running),
            secret,
            client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{path}",
            self.running.as_ref().unwrap().webhook.port()
        )
    }

    /// The Prometheus text from the admin listener.
    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(self.admin("/metrics"))
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    }

    pub fn admin(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}{path}",
            self.running.as_ref().unwrap().admin.port()
        )
    }

    pub async fn post(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url("/validate"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Sends a review and returns its `response` object, checking the envelope on the way.
    pub async fn review(&self, review: &Value) -> Value {
        let resp = self.post(serde_json::to_vec(review).unwrap()).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["kind"], "AdmissionReview");
        let response = body["response"].clone();
        assert_eq!(
            response["uid"], review["request"]["uid"],
            "uid must be echoed"
        );
        assert!(response.get("patch").is_none() && response.get("patchType").is_none());
        response
    }
}

/// One of the project's own reviews (tests/data/admissionreview).
pub fn load(name: &str) -> Value {
    read_review(&Path::new(OWN_FIXTURES).join(name))
}

/// One review of the shared corpus.
pub fn load_shared(name: &str) -> Value {
    read_review(&Path::new(FIXTURES).join(name))
}

fn read_review(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).unwrap();
    if value.get("request").is_some() {
        value
    } else {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": value})
    }
}

/// Replaces every container image in the review's objects with `image`.
pub fn rewrite_images(value: &mut Value, image: &str) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "image" && v.is_string() {
                    *v = Value::String(image.to_string());
                } else {
                    rewrite_images(v, image);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_images(v, image)),
        _ => {}
    }
}

/// The project's own Pod review (a ReplicaSet's pod, as the API server sends it) with its one
/// container grown to three (`echo-server`, `envoy`,
/// `log-shipper`), one per image: the realistic review the benches measure.
pub fn three_container_pod(images: &[String; 3]) -> Value {
    let mut review = load("pod-create.json");
    let spec = &mut review["request"]["object"]["spec"];
    let template = spec["containers"][0].clone();
    let containers: Vec<Value> = ["echo-server", "envoy", "log-shipper"]
        .iter()
        .zip(images)
        .map(|(name, image)| {
            let mut c = template.clone();
            c["name"] = json!(name);
            c["image"] = json!(image);
            c
        })
        .collect();
    spec["containers"] = Value::Array(containers);
    review
}

/// A minimal Pod AdmissionReview (the fields the API server always sends) with `images`.
pub fn pod_review(uid: &str, images: &[String]) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "p",
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:default:deployer"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "namespace": "default"},
                "spec": {"containers": containers}
            },
            "dryRun": false
        }
    })
}
