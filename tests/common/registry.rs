//! A real CNCF distribution registry (`/usr/bin/docker-registry`) started per test on 127.0.0.1,
//! either plain HTTP, TLS with htpasswd (bcrypt) basic auth, or plain HTTP with bearer-token auth
//! backed by the harness's [`TokenServer`].
//!
//! The package's default config listens on every interface, so it is never used: each registry
//! gets its own config, storage and log inside a tempdir that is removed on drop.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, StatusCode, header};
use tempfile::TempDir;

use super::install_crypto_provider;
use super::token::{BearerChallenge, TokenPolicy, TokenServer};

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// A port picked from 127.0.0.1:0 is released before the registry binds it, so another process
/// can win the race; the registry then exits with "address already in use" and we try again.
const START_ATTEMPTS: usize = 5;
/// Generous: the test machine is often busy compiling on its two cores.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Basic-auth credentials of a registry started with [`Registry::start_tls_auth`].
#[derive(Clone, Debug)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// The CA and server certificate of a TLS registry, as PEM text and files in its tempdir.
struct TlsFiles {
    ca_pem: String,
    ca_path: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
}

/// The token server a token-auth registry sends clients to, and its root bundle on disk.
struct TokenAuth {
    server: TokenServer,
    bundle_path: PathBuf,
}

/// What kind of registry to launch.
struct Launch {
    tls: Option<TlsFiles>,
    credentials: Option<Credentials>,
    token: Option<TokenAuth>,
}

/// A running registry. Dropping it kills the process and removes its storage.
pub struct Registry {
    process: Process,
    host: String,
    launch: Launch,
    client: reqwest::Client,
    /// Bearer tokens the harness obtained for its own requests (token auth only), by repository.
    bearer: Mutex<HashMap<String, String>>,
    // Declared last so the directory outlives the process that writes into it.
    dir: TempDir,
}

impl Registry {
    /// Starts a plain-HTTP registry without auth on 127.0.0.1 and waits until it answers `/v2/`.
    pub async fn start() -> Self {
        let launch = Launch {
            tls: None,
            credentials: None,
            token: None,
        };
        Self::launch(tempdir(), launch).await
    }

    /// Starts a plain-HTTP registry that requires bearer tokens (distribution's `auth: token`)
    /// issued by a fresh [`TokenServer`] applying `policy`. The harness pushes (see
    /// [`Registry::send`]) with the policy's first admin, so give it one to push fixtures.
    pub async fn start_token_auth(policy: TokenPolicy) -> Self {
        let dir = tempdir();
        let server = TokenServer::start(policy).await;
        let bundle_path = dir.path().join("token-root.pem");
        fs::write(&bundle_path, server.root_pem()).expect("write token-root.pem");
        let launch = Launch {
            tls: None,
            credentials: None,
            token: Some(TokenAuth {
                server,
                bundle_path,
            }),
        };
        Self::launch(dir, launch).await
    }

    /// Starts a registry serving TLS (a fresh CA and a server certificate for `127.0.0.1` and
    /// `localhost`) that requires basic auth with `user`/`password` (bcrypt htpasswd file).
    pub async fn start_tls_auth(user: &str, password: &str) -> Self {
        let dir = tempdir();
        let credentials = Credentials {
            user: user.to_owned(),
            password: password.to_owned(),
        };
        write_htpasswd(dir.path(), &credentials);
        let launch = Launch {
            tls: Some(write_tls_files(dir.path())),
            credentials: Some(credentials),
            token: None,
        };
        Self::launch(dir, launch).await
    }

    /// `127.0.0.1:PORT`, the registry part of image references pushed here.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        scheme(&self.launch)
    }

    /// `scheme://host` followed by `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme(), self.host)
    }

    /// PEM of the CA that signed the server certificate. Panics on a plain-HTTP registry.
    #[track_caller]
    pub fn ca_pem(&self) -> &str {
        &self.tls().ca_pem
    }

    /// File holding [`Registry::ca_pem`]. Panics on a plain-HTTP registry.
    #[track_caller]
    pub fn ca_path(&self) -> &Path {
        &self.tls().ca_path
    }

    /// The basic-auth credentials, if the registry requires them.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.launch.credentials.as_ref()
    }

    /// A client that trusts this registry's CA (if any) and never uses an environment proxy.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// A request to `path` on this registry, with basic auth when the registry requires it.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.authorize(self.client.request(method, self.url(path)))
    }

    /// Adds this registry's basic auth (if any) to a request built elsewhere, e.g. to an upload
    /// `Location` the registry returned.
    pub fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.launch.credentials {
            Some(c) => request.basic_auth(&c.user, Some(&c.password)),
            None => request,
        }
    }

    /// The token server of a registry started with [`Registry::start_token_auth`]; panics on
    /// any other registry.
    #[track_caller]
    pub fn token_server(&self) -> &TokenServer {
        &self
            .launch
            .token
            .as_ref()
            .expect("this registry has no token auth; use Registry::start_token_auth")
            .server
    }

    /// Sends a request built with [`Registry::request`] or [`Registry::authorize`]. On a
    /// token-auth registry it adds the bearer token the harness holds for the request's
    /// repository and, when the registry answers 401 with a Bearer challenge, asks the token
    /// server for the challenged scope as the policy's first admin and sends the request once
    /// more with the new token. On other registries it is a plain `send`.
    pub async fn send(&self, request: RequestBuilder) -> reqwest::Result<reqwest::Response> {
        let Some(token_auth) = &self.launch.token else {
            return request.send().await;
        };
        let (client, request) = request.build_split();
        let mut request = request?;
        let repository = repository_of(request.url().path());
        let held = repository
            .as_ref()
            .and_then(|r| self.bearer.lock().unwrap().get(r).cloned());
        if let Some(token) = held {
            set_bearer(&mut request, &token);
        }
        // Bodies here are in memory, so the request can be sent again.
        let retry = request.try_clone();
        let response = client.execute(request).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(BearerChallenge::parse);
        let (Some(challenge), Some(mut retry)) = (challenge, retry) else {
            return Ok(response);
        };
        let Some(token) = self.harness_token(&token_auth.server, &challenge).await else {
            return Ok(response);
        };
        if let Some(repository) = repository {
            self.bearer
                .lock()
                .unwrap()
                .insert(repository, token.clone());
        }
        set_bearer(&mut retry, &token);
        client.execute(retry).await
    }

    /// A token for `challenge` as the policy's first admin; `None` without an admin. Panics
    /// with the token server's answer if it refuses.
    async fn harness_token(
        &self,
        server: &TokenServer,
        challenge: &BearerChallenge,
    ) -> Option<String> {
        let policy = server.policy();
        let (user, password) = policy.admin_credentials()?;
        let mut query = Vec::new();
        if let Some(service) = &challenge.service {
            query.push(("service", service.as_str()));
        }
        if let Some(scope) = &challenge.scope {
            query.push(("scope", scope.as_str()));
        }
        let response = self
            .client
            .get(&challenge.realm)
            .query(&query)
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("ask the token server for the harness's token");
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::OK,
            "token server refused the harness ({user}): {body}"
        );
        let token = body["token"].as_str().expect("token in the token response");
        Some(token.to_owned())
    }

    /// The registry's own log so far (stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// The registry's process id, e.g. to check which sockets it listens on.
    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    #[track_caller]
    fn tls(&self) -> &TlsFiles {
        self.launch
            .tls
            .as_ref()
            .expect("this registry is plain HTTP; use Registry::start_tls_auth for TLS")
    }

    async fn launch(dir: TempDir, launch: Launch) -> Self {
        install_crypto_provider();
        let client = http_client(launch.tls.as_ref());
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let config = write_config(dir.path(), port, &launch);
            let mut process = Process::spawn(dir.path(), &config);
            let host = format!("127.0.0.1:{port}");
            let base = format!("{}://{host}/v2/", scheme(&launch));
            match wait_ready(&mut process, &client, &base, dir.path()).await {
                Ok(()) => {
                    return Registry {
                        process,
                        host,
                        launch,
                        client,
                        bearer: Mutex::default(),
                        dir,
                    };
                }
                // Lost the race for the port: `process` is dropped (reaped), pick another.
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("docker-registry failed to start:\n{log}"),
            }
        }
        panic!("docker-registry found no free port in {START_ATTEMPTS} attempts:\n{last_log}");
    }
}

/// The registry child process; killed and reaped on drop so no test leaks a server.
struct Process(Child);

impl Process {
    fn spawn(dir: &Path, config: &Path) -> Self {
        let log = fs::File::create(dir.join("registry.log")).expect("create registry.log");
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(config)
            // distribution lets REGISTRY_* variables override the config file; an inherited one
            // could make it listen elsewhere, so the environment is emptied.
            .env_clear()
            .env("TMPDIR", dir)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {REGISTRY_BINARY} (apt install docker-registry): {e}")
            });
        Process(child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until this child logs that it listens and then answers `/v2/` (200, or 401 with auth).
/// Waiting for the child's own "listening on" line first means a registry of another test that
/// grabbed the same port is never mistaken for ours. Returns the log on failure.
async fn wait_ready(
    process: &mut Process,
    client: &reqwest::Client,
    base: &str,
    dir: &Path,
) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = process.0.try_wait() {
            return Err(format!("exited with {status}:\n{}", read_log(dir)));
        }
        if read_log(dir).contains("listening on")
            && let Ok(response) = client.get(base).send().await
            && matches!(response.status(), StatusCode::OK | StatusCode::UNAUTHORIZED)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "not ready after {START_TIMEOUT:?}:\n{}",
        read_log(dir)
    ))
}

fn scheme(launch: &Launch) -> &'static str {
    if launch.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("archgate-registry-")
        .tempdir()
        .expect("create registry tempdir")
}

fn read_log(dir: &Path) -> String {
    fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
}

/// Asks the kernel for a free loopback port, then releases it for the registry to bind.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A YAML string literal; JSON strings are valid YAML, which keeps paths with odd characters safe.
fn yaml_str(path: &Path) -> String {
    serde_json::to_string(&path.to_string_lossy()).expect("path as JSON string")
}

/// Writes `config.yml`: loopback only, storage in the tempdir, deletes enabled, info logs (to the
/// log file; the "listening on" line is the readiness signal) without access logs.
fn write_config(dir: &Path, port: u16, launch: &Launch) -> PathBuf {
    let storage = dir.join("storage");
    let mut config = format!(
        "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: archgate-test-upload-secret
",
        storage = yaml_str(&storage),
    );
    if let Some(tls) = &launch.tls {
        config.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            yaml_str(&tls.cert_path),
            yaml_str(&tls.key_path)
        ));
    }
    if launch.credentials.is_some() {
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: archgate-test\n    path: {}\n",
            yaml_str(&dir.join("htpasswd"))
        ));
    }
    if let Some(token) = &launch.token {
        let json = |s: &str| serde_json::to_string(s).expect("JSON string");
        config.push_str(&format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            json(&token.server.realm()),
            json(token.server.service()),
            json(token.server.issuer()),
            yaml_str(&token.bundle_path),
        ));
    }
    let path = dir.join("config.yml");
    fs::write(&path, config).expect("write registry config");
    path
}

/// Writes a bcrypt htpasswd file with `htpasswd -B`; the password goes through stdin so it never
/// appears in a process list.
fn write_htpasswd(dir: &Path, credentials: &Credentials) {
    let mut child = Command::new("htpasswd")
        .args(["-B", "-i", "-n", &credentials.user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run htpasswd (apt install apache2-utils)");
    child
        .stdin
        .take()
        .expect("htpasswd stdin")
        .write_all(credentials.password.as_bytes())
        .expect("write password to htpasswd");
    let output = child.wait_with_output().expect("wait for htpasswd");
    assert!(
        output.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    fs::write(dir.join("htpasswd"), output.stdout).expect("write htpasswd file");
}

/// Creates a CA and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files.
fn write_tls_files(dir: &Path) -> TlsFiles {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    let ca_key = KeyPair::generate().expect("generate CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "archgate test registry CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("generate server key");
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("sign server certificate");

    let files = TlsFiles {
        ca_pem: ca_cert.pem(),
        ca_path: dir.join("ca.pem"),
        cert_path: dir.join("server.pem"),
        key_path: dir.join("server-key.pem"),
    };
    fs::write(&files.ca_path, &files.ca_pem).expect("write ca.pem");
    fs::write(&files.cert_path, server_cert.pem()).expect("write server.pem");
    fs::write(&files.key_path, server_key.serialize_pem()).expect("write server-key.pem");
    files
}

/// The repository a distribution API path (`/v2/<name>/blobs/...`, `/manifests/`, `/tags/`)
/// addresses.
fn repository_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    ["/blobs/", "/manifests/", "/tags/"]
        .iter()
        .filter_map(|marker| rest.find(marker))
        .min()
        .map(|end| rest[..end].to_owned())
}

fn set_bearer(request: &mut reqwest::Request, token: &str) {
    let value = header::HeaderValue::from_str(&format!("Bearer {token}")).expect("token header");
    request.headers_mut().insert(header::AUTHORIZATION, value);
}

/// The harness's own HTTP client: trusts only the registry CA, ignores proxy variables, and does
/// not follow redirects so tests see exactly what the registry answered.
fn http_client(tls: Option<&TlsFiles>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    if let Some(tls) = tls {
        let ca = reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).expect("parse CA PEM");
        builder = builder.tls_certs_only([ca]);
    }
    builder.build().expect("build harness HTTP client")
}
