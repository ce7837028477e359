//! A real control plane for the e2e tier: etcd and kube-apiserver on 127.0.0.1 (free ports, a
//! tempdir each), plus `kubectl` and a kube-rs client pointed at them, and `archgate serve` run as
//! the built binary with a kubeconfig.
//!
//! The binaries come from `.ci/kube-apiserver` (kube-apiserver and kubectl built once from the Go
//! module k8s.io/kubernetes, etcd from Debian's etcd-server, all cached); [`Binaries::find`] looks
//! in `ARCHGATE_KUBE_BIN`, then the script's default cache.
//! There is no scheduler, controller-manager or kubelet: Nodes are created by hand, pods stay
//! Pending. The ServiceAccount admission plugin is off (nothing creates `default` accounts; for
//! templates archgate reads an account's pull secrets itself, and a Pod's list is taken as the
//! plugin left it), and so is TaintNodesByCondition (no kubelet ever clears its `not-ready` taint).
//! The test authenticates with a static admin token (group `system:masters`); authorization is
//! RBAC, so archgate run with a ServiceAccount token gets exactly what deploy/ grants.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use tempfile::TempDir;

use super::{ImageSpec, PlatformSpec, PushedImage, Registry};

/// The version `.ci/kube-apiserver` builds by default: where its cache puts the binaries.
const DEFAULT_KUBE_VERSION: &str = "1.37.2";
/// Both start in seconds here; generous for a machine busy compiling on two cores.
const START_TIMEOUT: Duration = Duration::from_secs(90);
const ADMIN_TOKEN: &str = "archgate-e2e-admin";

/// kube-apiserver, etcd and kubectl.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub apiserver: PathBuf,
    pub etcd: PathBuf,
    pub kubectl: PathBuf,
}

impl Binaries {
    /// The binaries, or `None` (and the reason) if `.ci/kube-apiserver` has not been run.
    pub fn find() -> Result<Self, String> {
        let dir = match std::env::var_os("ARCHGATE_KUBE_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let cache = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .unwrap_or_else(|| PathBuf::from("/root/.cache"));
                cache.join(format!("archgate/kube/v{DEFAULT_KUBE_VERSION}/bin"))
            }
        };
        let found = Self {
            apiserver: dir.join("kube-apiserver"),
            etcd: dir.join("etcd"),
            kubectl: dir.join("kubectl"),
        };
        for path in [&found.apiserver, &found.etcd, &found.kubectl] {
            if !path.exists() {
                return Err(format!(
                    "{} is missing (run `bash .ci/kube-apiserver`, or set ARCHGATE_KUBE_BIN)",
                    path.display()
                ));
            }
        }
        Ok(found)
    }
}

/// A child process killed (and reaped) on drop.
pub struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// etcd + kube-apiserver, stopped and removed on drop.
pub struct ControlPlane {
    pub binaries: Binaries,
    pub url: String,
    /// The API server's serving CA (PEM), for kubeconfigs.
    pub ca_pem: String,
    /// A kubeconfig with the admin token.
    pub kubeconfig: PathBuf,
    // Field order: the API server stops before etcd, and both before their directory goes.
    apiserver: Process,
    etcd: Process,
    pub dir: TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

fn spawn_logged(mut command: Command, log: &Path) -> Process {
    let file = std::fs::File::create(log).expect("create a log file");
    let child = command
        // Nothing here may leave the machine, not even through a proxy from the environment.
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
    Process(child)
}

impl ControlPlane {
    pub async fn start(binaries: Binaries) -> Self {
        super::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);

        // Serving certificate, service-account signing key, admin token: all made now.
        let serving = archgate::certs::generate(&["127.0.0.1".into(), "localhost".into()]).unwrap();
        std::fs::write(path("serving.crt"), &serving.cert_pem).unwrap();
        std::fs::write(path("serving.key"), &serving.key_pem).unwrap();
        let sa_key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(path("sa.key"), sa_key.serialize_pem()).unwrap();
        std::fs::write(path("sa.pub"), sa_key.public_key_pem()).unwrap();
        std::fs::write(
            path("tokens.csv"),
            format!("{ADMIN_TOKEN},e2e-admin,e2e-admin-uid,system:masters\n"),
        )
        .unwrap();

        let (client_port, peer_port) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(&binaries.etcd);
        etcd.arg("--data-dir")
            .arg(path("etcd"))
            .args(["--name", "e2e"])
            .args(["--listen-client-urls", &etcd_url])
            .args(["--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("e2e={peer_url}")])
            // A throwaway cluster: durability buys nothing and fsync is slow on shared disks.
            .arg("--unsafe-no-fsync");
        let etcd = spawn_logged(etcd, &path("etcd.log"));

        let port = free_port();
        let mut apiserver = Command::new(&binaries.apiserver);
        apiserver
            .args(["--etcd-servers", &etcd_url])
            .args(["--bind-address", "127.0.0.1"])
            .args(["--advertise-address", "127.0.0.1"])
            .args(["--secure-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(path("serving.crt"))
            .arg("--tls-private-key-file")
            .arg(path("serving.key"))
            .arg("--token-auth-file")
            .arg(path("tokens.csv"))
            .args(["--authorization-mode", "RBAC"])
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .arg("--service-account-key-file")
            .arg(path("sa.pub"))
            .arg("--service-account-signing-key-file")
            .arg(path("sa.key"))
            .args(["--service-cluster-ip-range", "10.0.0.0/24"])
            // TaintNodesByCondition taints every new Node `not-ready` until a kubelet reports:
            // there is no kubelet here, and hand-made Nodes must take pods.
            .args([
                "--disable-admission-plugins",
                "ServiceAccount,TaintNodesByCondition",
            ])
            // No Endpoints for the `kubernetes` Service: nothing in this cluster reaches it.
            .args(["--endpoint-reconciler-type", "none"]);
        let apiserver = spawn_logged(apiserver, &path("apiserver.log"));

        let url = format!("https://127.0.0.1:{port}");
        let kubeconfig = path("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, &url, &serving.ca_pem, ADMIN_TOKEN);
        let plane = Self {
            binaries,
            url,
            ca_pem: serving.ca_pem,
            kubeconfig,
            apiserver,
            etcd,
            dir,
        };
        plane.wait_ready().await;
        plane
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()])
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            let ready = client
                .get(format!("{}/readyz", self.url))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await;
            if let Ok(response) = ready
                && response.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "kube-apiserver not ready after {START_TIMEOUT:?}\n--- apiserver\n{}\n--- etcd\n{}",
            tail(&self.dir.path().join("apiserver.log")),
            tail(&self.dir.path().join("etcd.log"))
        );
    }

    /// A kube-rs client as the admin.
    pub async fn client(&self) -> kube::Client {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// A kubeconfig that authenticates with `token` (a ServiceAccount's, say).
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        write_kubeconfig(&path, &self.url, &self.ca_pem, token);
        path
    }

    /// Runs kubectl as the admin with `stdin` (YAML or JSON) if given.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Kubectl {
        let mut command = Command::new(&self.binaries.kubectl);
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .args(["--request-timeout", "30s"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("run kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        Kubectl(child.wait_with_output().unwrap())
    }

    /// `kubectl apply -f -` (server-side dry run with `dry_run`), expecting nothing in particular.
    pub fn apply(&self, object: &Value, dry_run: bool) -> Kubectl {
        let mut args = vec!["apply", "-f", "-"];
        if dry_run {
            args.push("--dry-run=server");
        }
        self.kubectl(&args, Some(&object.to_string()))
    }

    /// Like [`ControlPlane::kubectl`], panicking unless it succeeds.
    #[track_caller]
    pub fn must(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(out.ok(), "kubectl {args:?} failed:\n{}", out.stderr());
        out.stdout()
    }
}

/// A CustomResourceDefinition to install with [`ControlPlane::install_crds`].
pub struct Crd<'a> {
    pub group: &'a str,
    pub plural: &'a str,
    pub kind: &'a str,
    pub version: &'a str,
    /// `Namespaced` or `Cluster`.
    pub scope: &'a str,
}

/// Tekton's kinds, as the e2e tiers install them.
pub const TEKTON_CRDS: [Crd<'static>; 6] = [
    Crd::tekton("pipelines", "Pipeline", "v1", "Namespaced"),
    Crd::tekton("tasks", "Task", "v1", "Namespaced"),
    Crd::tekton("pipelineruns", "PipelineRun", "v1", "Namespaced"),
    Crd::tekton("taskruns", "TaskRun", "v1", "Namespaced"),
    Crd::tekton("stepactions", "StepAction", "v1beta1", "Namespaced"),
    Crd::tekton("clustertasks", "ClusterTask", "v1beta1", "Cluster"),
];

impl Crd<'static> {
    const fn tekton(
        plural: &'static str,
        kind: &'static str,
        version: &'static str,
        scope: &'static str,
    ) -> Self {
        Self {
            group: "tekton.dev",
            plural,
            kind,
            version,
            scope,
        }
    }
}

impl ControlPlane {
    /// Installs `crds` with no schema beyond "an object" (what the API server needs to store
    /// and serve them; tests check the fields they care about themselves), and waits until the
    /// API server serves them.
    pub fn install_crds(&self, crds: &[Crd<'_>]) {
        let items: Vec<Value> = crds
            .iter()
            .map(|c| {
                serde_json::json!({
                    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                    "metadata": {"name": format!("{}.{}", c.plural, c.group)},
                    "spec": {
                        "group": c.group, "scope": c.scope,
                        "names": {"plural": c.plural, "kind": c.kind,
                                  "singular": c.kind.to_lowercase()},
                        "versions": [{"name": c.version, "served": true, "storage": true,
                            "schema": {"openAPIV3Schema": {"type": "object",
                                "x-kubernetes-preserve-unknown-fields": true}}}],
                    },
                })
            })
            .collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        self.must(&["apply", "-f", "-"], Some(&list.to_string()));
        let names: Vec<String> = crds
            .iter()
            .map(|c| format!("crd/{}.{}", c.plural, c.group))
            .collect();
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend(names.iter().map(String::as_str));
        self.must(&args, None);
    }
}

/// What one kubectl run printed.
pub struct Kubectl(pub Output);

impl Kubectl {
    pub fn ok(&self) -> bool {
        self.0.status.success()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
}

fn write_kubeconfig(path: &Path, url: &str, ca_pem: &str, token: &str) {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": url, "certificate-authority-data": ca}}],
        "users": [{"name": "e2e", "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e"}}],
        "current-context": "e2e",
    });
    std::fs::write(path, config.to_string()).unwrap();
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `archgate serve` run as the built binary, its JSON log lines collected as they come.
pub struct Archgate {
    pub webhook: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<Value>>>,
    process: Option<Process>,
}

impl Archgate {
    /// Starts `archgate serve --log-format json` with `args` and `KUBECONFIG=kubeconfig`, and
    /// waits until it is ready (its listeners bound and every watch synced).
    pub async fn start(kubeconfig: &Path, args: &[String]) -> Self {
        let archgate = Self::start_unready(kubeconfig, args).await;
        archgate.wait_ready().await;
        archgate
    }

    /// Like [`Archgate::start`], returning once the listeners are bound, ready or not.
    pub async fn start_unready(kubeconfig: &Path, args: &[String]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_archgate"))
            .arg("serve")
            .args(["--log-format", "json"])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start archgate serve");
        let stderr = child.stderr.take().unwrap();
        let logs: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "message": line }));
                sink.lock().unwrap().push(value);
            }
        });
        let mut process = Process(child);
        let started = Instant::now();
        let (webhook, admin) = loop {
            let bound = logs.lock().unwrap().iter().find_map(|l| {
                (l["message"] == "archgate serving").then(|| {
                    (
                        l["webhook"].as_str().unwrap().parse().unwrap(),
                        l["admin"].as_str().unwrap().parse().unwrap(),
                    )
                })
            });
            if let Some(bound) = bound {
                break bound;
            }
            if let Ok(Some(status)) = process.0.try_wait() {
                panic!("archgate exited with {status}: {:?}", logs.lock().unwrap());
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "archgate did not bind: {:?}",
                logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Self {
            webhook,
            admin,
            logs,
            process: Some(process),
        }
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if self.readyz().await == Some(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("archgate not ready: {:?}", self.logs());
    }

    /// `/readyz` status, `None` if it does not answer.
    pub async fn readyz(&self) -> Option<u16> {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}/readyz", self.admin))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of every series of `name` (e.g. `archgate_registry_requests_total`) whose labels
    /// contain `labels` (e.g. `decision="denied"`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter(|l| l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn logs(&self) -> Vec<Value> {
        self.logs.lock().unwrap().clone()
    }

    /// Log lines whose message is `message`.
    pub fn logged(&self, message: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["message"] == message)
            .collect()
    }

    /// Kills the process (the webhook is then unreachable), keeping the logs.
    pub fn stop(&mut self) {
        self.process.take();
    }
}

/// What every e2e scenario starts from: a control plane, a public registry and a private one,
/// holding the images the scenarios use.
pub struct Stage {
    pub plane: ControlPlane,
    pub registry: Registry,
    /// TLS, and pulls only with the user `puller`.
    pub private: Registry,
    /// linux/arm64/v8 only (the Apple Silicon build).
    pub arm: PushedImage,
    /// linux/amd64 + linux/arm64/v8.
    pub multi: PushedImage,
    /// linux/amd64 only.
    pub amd: PushedImage,
    /// On the private registry: linux/arm64/v8 only.
    pub private_arm: PushedImage,
}

impl Stage {
    /// The started stage, or `None` (saying so, with `tier`'s name) when the binaries are absent
    /// outside CI: `.ci/test` sets ARCHGATE_KUBE_BIN after installing them, and there a missing
    /// binary is a failure.
    pub async fn start(tier: &str) -> Option<Self> {
        let binaries = match Binaries::find() {
            Ok(b) => b,
            Err(why) if std::env::var_os("ARCHGATE_KUBE_BIN").is_some() => panic!("{why}"),
            Err(why) => {
                eprintln!("{tier} skipped: {why}");
                return None;
            }
        };
        super::install_crypto_provider();
        let (plane, registry, private) = tokio::join!(
            ControlPlane::start(binaries),
            Registry::start(),
            Registry::start_tls_auth("puller", "s3cret-pull"),
        );
        let amd64 = PlatformSpec::new("linux", "amd64");
        let arm64 = PlatformSpec::new("linux", "arm64").variant("v8");
        let arm = ImageSpec::oci_index("team/arm-only", "v1", [arm64.clone()])
            .push(&registry)
            .await;
        let multi = ImageSpec::oci_index("team/multi", "v1", [amd64.clone(), arm64.clone()])
            .push(&registry)
            .await;
        let amd = ImageSpec::oci_index("team/amd-only", "v1", [amd64])
            .push(&registry)
            .await;
        let private_arm = ImageSpec::oci_index("secret/arm-only", "v1", [arm64])
            .push(&private)
            .await;
        Some(Self {
            plane,
            registry,
            private,
            arm,
            multi,
            amd,
            private_arm,
        })
    }
}
