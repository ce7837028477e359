//! Servers under load, shared by the `load` and `warm` benches: each a child process listening
//! on 127.0.0.1, optionally pinned to CPU 0, serving one ECDSA P-256 certificate (rcgen's
//! default key, made by `archgate::certs::generate`) so the TLS work is the same for all:
//!
//! - `archgate serve`, the release binary;
//! - the null handler: the bench binary re-executed (role [`NULL_ROLE`]) running archgate's own
//!   `server::serve_tls` and `tls::server_config` with a router that answers fixed bytes;
//! - nginx (Debian's), `return 200` with the same bytes, one worker process.
//!
//! Plus a one-request HTTP/1.1 client to warm a server and read its answer.
//!
//! Each bench uses part of it, hence the module-wide `dead_code` allowance.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::routing;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower::limit::ConcurrencyLimitLayer;

use archgate::server::{self, MAX_BODY_BYTES, MAX_IN_FLIGHT, VALIDATE_PATH};

/// The environment variable that turns the bench binary into the null handler.
pub const NULL_ROLE: &str = "ARCHGATE_BENCH_ROLE";

/// One certificate for every server, on disk.
pub struct Certs {
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn write(dir: &Path) -> Self {
        let bundle = archgate::certs::generate(&["localhost".into(), "127.0.0.1".into()])
            .expect("certificates");
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, &bundle.cert_pem).expect("write cert");
        std::fs::write(&key, &bundle.key_pem).expect("write key");
        Self {
            ca_pem: bundle.ca_pem,
            cert,
            key,
        }
    }
}

/// A server under test.
pub struct Server {
    pub name: &'static str,
    pub child: Child,
    pub port: u16,
    pub connector: TlsConnector,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn cpu_ticks(&self) -> u64 {
        cpu_ticks(&format!("/proc/{}/stat", self.child.id()))
    }

    pub fn rss_kib(&self) -> u64 {
        vm_rss_kib(&format!("/proc/{}/status", self.child.id()))
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}{VALIDATE_PATH}", self.port)
    }
}

/// utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
pub fn cpu_ticks(stat: &str) -> u64 {
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

pub fn clock_ticks_per_second() -> f64 {
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

/// Whether to pin: `taskset` exists, there are at least 2 CPUs and `ARCHGATE_LOAD_PIN` is not 0.
pub fn pin_wanted() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::env::var("ARCHGATE_LOAD_PIN").map_or(true, |v| v != "0")
        && cpus >= 2
        && Command::new("taskset").arg("-V").output().is_ok()
}

/// `program` under `taskset -c cpu` when `cpu` is set.
pub fn pinned(cpu: Option<u8>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

pub fn connector(ca_pem: &str) -> TlsConnector {
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

impl Server {
    /// `child`, once it accepts connections on `port` (20 s at most).
    fn listening(name: &'static str, child: Child, port: u16, certs: &Certs) -> Self {
        let server = Self {
            name,
            child,
            port,
            connector: connector(&certs.ca_pem),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{name} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

/// `archgate serve` (the binary at `program`) with `certs`, reading `registry_host` over HTTP,
/// logging at the default `info` level into /dev/null.
pub fn start_archgate(
    program: &Path,
    registry_host: &str,
    dir: &Path,
    certs: &Certs,
    cpu: Option<u8>,
) -> Server {
    let (port, admin) = (free_port(), free_port());
    let docker_config = dir.join("docker");
    std::fs::create_dir_all(&docker_config).expect("docker config dir");
    let mut command = pinned(cpu, program);
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--tls-cert")
        .arg(&certs.cert)
        .arg("--tls-key")
        .arg(&certs.key)
        .args(["--insecure-registry", registry_host, "-p", "linux/amd64"])
        .env("DOCKER_CONFIG", &docker_config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // One line per denial or warning, as in production; written to /dev/null here.
        .stderr(Stdio::null());
    let child = command.spawn().expect("start archgate serve");
    Server::listening("archgate", child, port, certs)
}

/// The null handler: this bench binary again, in role [`NULL_ROLE`].
pub fn start_null(answer: &[u8], dir: &Path, certs: &Certs, cpu: Option<u8>) -> Server {
    let answer_path = dir.join("null-answer.json");
    std::fs::write(&answer_path, answer).expect("write answer");
    let mut command = pinned(cpu, std::env::current_exe().expect("current exe"));
    let mut child = command
        .env(NULL_ROLE, "null-server")
        .env("ARCHGATE_BENCH_ANSWER", &answer_path)
        .env("ARCHGATE_BENCH_CERT", &certs.cert)
        .env("ARCHGATE_BENCH_KEY", &certs.key)
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
    Server {
        name: "null",
        child,
        port,
        connector: connector(&certs.ca_pem),
    }
}

/// nginx answering `POST /validate` with `answer` over TLS with `certs`: one worker, no master
/// process (so the pinned process is the one that works), no access log, keep-alive without a
/// request limit. `None` when nginx is not installed.
pub fn start_nginx(answer: &[u8], dir: &Path, certs: &Certs, cpu: Option<u8>) -> Option<Server> {
    let program = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let answer = std::str::from_utf8(answer).expect("UTF-8 answer");
    // An nginx string in single quotes: `\` and `'` are escaped; `$` would start a variable.
    assert!(!answer.contains('$'), "answer holds a `$`: {answer}");
    let quoted = answer.replace('\\', "\\\\").replace('\'', "\\'");
    let port = free_port();
    let root = dir.join("nginx");
    std::fs::create_dir_all(&root).expect("nginx dir");
    let temp = |name: &str| root.join(name).display().to_string();
    let config = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\nerror_log stderr warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 120s;\n\
         client_max_body_size 4m;\n  client_body_buffer_size 64k;\n\
         client_body_temp_path {body};\n  proxy_temp_path {proxy};\n  fastcgi_temp_path {fastcgi};\n\
         uwsgi_temp_path {uwsgi};\n  scgi_temp_path {scgi};\n\
         server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n\
         ssl_certificate_key {key};\n    ssl_protocols TLSv1.2 TLSv1.3;\n\
         location = {VALIDATE_PATH} {{ default_type application/json; return 200 '{quoted}'; }}\n  }}\n}}\n",
        pid = temp("nginx.pid"),
        body = temp("body"),
        proxy = temp("proxy"),
        fastcgi = temp("fastcgi"),
        uwsgi = temp("uwsgi"),
        scgi = temp("scgi"),
        cert = certs.cert.display(),
        key = certs.key.display(),
    );
    let conf = root.join("nginx.conf");
    std::fs::write(&conf, config).expect("write nginx.conf");
    let child = pinned(cpu, program)
        .arg("-p")
        .arg(&root)
        .arg("-c")
        .arg(&conf)
        .args(["-e", "stderr"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    Some(Server::listening("nginx", child, port, certs))
}

/// The null handler's process: same TLS stack, fixed answer. Stops when stdin closes.
pub fn null_server() {
    archgate::tls::install_crypto_provider();
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let answer = Bytes::from(std::fs::read(var("ARCHGATE_BENCH_ANSWER")).expect("answer"));
    let files = archgate::tls::CertificateFiles {
        cert: var("ARCHGATE_BENCH_CERT").into(),
        key: var("ARCHGATE_BENCH_KEY").into(),
    };
    // The same runtime archgate's `#[tokio::main]` builds: multi-threaded, one worker per CPU.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (key, _) = files.load().expect("certificate");
        let config =
            archgate::tls::server_config(archgate::tls::CurrentKey::new(key)).expect("TLS config");
        let listener = server::bind("127.0.0.1:0".parse().unwrap(), "the null handler")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
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
            null_router(answer),
            stdin_closed,
        )
        .await;
    });
}

/// `POST /validate` → a fixed AdmissionReview, behind a body limit and a concurrency layer.
fn null_router(answer: Bytes) -> Router {
    Router::new()
        .route(
            VALIDATE_PATH,
            routing::post(move |_body: Bytes| {
                let answer = answer.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], answer) }
            }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(ConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
}

/// One keep-alive HTTP/1.1 connection over TLS.
pub async fn connect(server: &Server) -> SendRequest<Full<Bytes>> {
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

/// `POST /validate` with `body`: the status and the answer's bytes.
pub async fn post(
    sender: &mut SendRequest<Full<Bytes>>,
    body: &Bytes,
) -> Result<(u16, Bytes), String> {
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
    let status = response.status().as_u16();
    let answer = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, answer))
}

/// The review every load bench sends: the project's own Pod review with three containers (app,
/// sidecar, log shipper) whose images are a multi-arch OCI index, a Docker manifest list and a
/// single-arch Docker manifest, all with linux/amd64.
pub fn review_body(fixtures: &crate::common::Fixtures) -> Bytes {
    let images = [
        fixtures.multi.reference(),
        fixtures.docker_list.reference(),
        fixtures.single_amd64.reference(),
    ];
    let review = crate::common::webhook::three_container_pod(&images);
    Bytes::from(serde_json::to_vec(&review).expect("review JSON"))
}

/// One review through archgate (a cold lookup), then one more (warm); returns the warm answer
/// after checking that it allows the pod.
pub async fn warm_answer(archgate: &Server, body: &Bytes) -> Bytes {
    let mut sender = connect(archgate).await;
    let mut answer = Bytes::new();
    for _ in 0..2 {
        let (status, bytes) = post(&mut sender, body).await.expect("warm-up review");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        answer = bytes;
    }
    let review: serde_json::Value = serde_json::from_slice(&answer).expect("answer JSON");
    assert_eq!(
        review["response"]["allowed"], true,
        "the load review must be allowed: {review}"
    );
    answer
}
