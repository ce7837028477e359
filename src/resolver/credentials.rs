//! Registry credentials from docker `config.json` files (the webhook's own, and pull secrets).
//!
//! Never log or display a secret: `Debug` on [`RegistryAuth`] redacts, and identities are hashes.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// Credentials per registry host, with an identity that keys clients and cache entries.
#[derive(Clone, Default)]
pub struct Credentials {
    by_host: BTreeMap<String, Auth>,
    /// Credential helpers a developer's docker config names; only `archgate check` runs them.
    helpers: Option<Arc<Helpers>>,
}

/// `credsStore` and `credHelpers`: `docker-credential-<name>` programs that hold the secrets
/// (Docker Desktop's default, so a laptop's config.json often has no `auths` at all).
#[derive(Default)]
struct Helpers {
    store: Option<String>,
    per_host: BTreeMap<String, String>,
    /// Each host's answer, asked once per process.
    answers: Mutex<HashMap<String, Option<Auth>>>,
}

/// A helper that has not answered by then is killed; its answer is a few hundred bytes.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HELPER_OUTPUT: u64 = 64 << 10;

/// How archgate authenticates to one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// Handed to oci-client as it is: anonymous, basic, or a registry token.
    Direct(RegistryAuth),
    /// An OAuth2 refresh token (`identitytoken`), exchanged per repository for an access token
    /// (see `oauth.rs`); never sent as a password.
    IdentityToken(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Direct(auth) => auth.fmt(f),
            Auth::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// Who archgate is when it talks to one registry: `0` is anonymous. A hash, so it can key caches
/// and clients without keeping a secret in a log line or a map key.
pub type Identity = u64;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read docker config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("docker config {origin} is not valid JSON: {reason}")]
    Json { origin: String, reason: String },
    #[error("docker config {origin}: the `auth` for {host} is not base64 of user:password")]
    Auth { origin: String, host: String },
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl Credentials {
    /// Parses a docker `config.json` (or the `.dockerconfigjson` of a Secret). `credsStore` and
    /// `credHelpers` name programs: from a Secret they are the author's words and are never run.
    pub fn from_docker_config(json: &[u8], origin: &str) -> Result<Self, CredentialsError> {
        Ok(Self::with_helpers(json, origin)?.without_helpers())
    }

    /// A docker `config.json` from the user's own machine, with its credential helpers (see
    /// [`Credentials::helper_names`]); `archgate check` runs them, the webhook drops them.
    fn with_helpers(json: &[u8], origin: &str) -> Result<Self, CredentialsError> {
        // Where, never serde's words: they quote the offending value, which here is a password
        // or a token (`invalid type: string "dXNlcjpwdw==", expected struct AuthEntry`).
        let config: DockerConfig =
            serde_json::from_slice(json).map_err(|e| CredentialsError::Json {
                origin: origin.to_string(),
                reason: format!(
                    "{:?} error at line {} column {}",
                    e.classify(),
                    e.line(),
                    e.column()
                )
                .to_lowercase(),
            })?;
        let mut credentials = Self::from_auths(config.auths, origin)?;
        let per_host: BTreeMap<String, String> = config
            .cred_helpers
            .into_iter()
            .map(|(host, helper)| (normalize_host(&host), helper))
            .filter(|(_, helper)| !helper.is_empty())
            .collect();
        let store = config.creds_store.filter(|s| !s.is_empty());
        if store.is_some() || !per_host.is_empty() {
            credentials.helpers = Some(Arc::new(Helpers {
                store,
                per_host,
                answers: Mutex::default(),
            }));
        }
        Ok(credentials)
    }

    /// The credential helpers this config names (`osxkeychain`, `desktop`, `ecr-login`, ...).
    pub fn helper_names(&self) -> Vec<String> {
        let Some(helpers) = &self.helpers else {
            return Vec::new();
        };
        let mut names: Vec<String> = helpers.store.iter().cloned().collect();
        names.extend(helpers.per_host.values().cloned());
        names.sort();
        names.dedup();
        names
    }

    /// The same credentials without helpers: a webhook runs no programs named in a config file.
    pub fn without_helpers(mut self) -> Self {
        self.helpers = None;
        self
    }

    /// Parses a legacy `.dockercfg` (a bare map of host to entry).
    pub fn from_dockercfg(json: &[u8], origin: &str) -> Result<Self, CredentialsError> {
        let auths: BTreeMap<String, AuthEntry> =
            serde_json::from_slice(json).map_err(|e| CredentialsError::Json {
                origin: origin.to_string(),
                reason: e.to_string(),
            })?;
        Self::from_auths(auths, origin)
    }

    fn from_auths(
        auths: BTreeMap<String, AuthEntry>,
        origin: &str,
    ) -> Result<Self, CredentialsError> {
        let mut by_host = BTreeMap::new();
        for (key, entry) in auths {
            let host = normalize_host(&key);
            if let Some(auth) = entry.into_auth().map_err(|()| CredentialsError::Auth {
                origin: origin.to_string(),
                host: host.clone(),
            })? {
                by_host.insert(host, auth);
            }
        }
        Ok(Self {
            by_host,
            helpers: None,
        })
    }

    /// Reads `path`, or the default places docker looks: `$DOCKER_CONFIG/config.json`, then
    /// `~/.docker/config.json`. A default that does not exist means anonymous access.
    pub fn load(path: Option<&Path>) -> Result<Self, CredentialsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| CredentialsError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        if let Some(path) = path {
            return Self::with_helpers(&read(path)?, &path.display().to_string());
        }
        let defaults = [
            // An empty DOCKER_CONFIG is unset, as docker reads it (not "the current directory").
            std::env::var_os("DOCKER_CONFIG")
                .filter(|d| !d.is_empty())
                .map(|d| PathBuf::from(d).join("config.json")),
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
        ];
        for path in defaults.into_iter().flatten() {
            if path.is_file() {
                return Self::with_helpers(&read(&path)?, &path.display().to_string());
            }
        }
        Ok(Self::default())
    }

    /// Adds `other`'s hosts where this set has none (the first source of a host wins, as the
    /// kubelet does with a pod's pull secrets), and its credential helpers where this set has
    /// none: `check` merges a pod's pull secrets into an empty set before the user's own config,
    /// whose `credsStore` must still answer for the other registries.
    pub fn merge(&mut self, other: &Credentials) {
        for (host, auth) in &other.by_host {
            self.by_host
                .entry(host.clone())
                .or_insert_with(|| auth.clone());
        }
        if self.helpers.is_none() {
            self.helpers = other.helpers.clone();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// The credentials for `registry` (as written in an image reference), and who they make us.
    /// Just the identity for `registry`: the warm path needs it for cache keys and nothing else.
    pub fn identity_for(&self, registry: &str) -> Identity {
        if self.by_host.is_empty() && self.helpers.is_none() {
            return 0;
        }
        self.for_registry(registry).1
    }

    pub fn for_registry(&self, registry: &str) -> (Auth, Identity) {
        let host = normalize_host(registry);
        let helped = || self.helpers.as_ref().and_then(|h| h.answer(&host));
        match self.by_host.get(&host).cloned().or_else(helped) {
            Some(auth) => {
                let id = identity(registry, &auth);
                (auth, id)
            }
            None => (Auth::Direct(RegistryAuth::Anonymous), 0),
        }
    }
}

impl Helpers {
    /// The helper's credentials for `host`, asked once. `credHelpers` wins over `credsStore`, as in
    /// docker. A helper that fails is reported and the host is asked anonymously.
    fn answer(&self, host: &str) -> Option<Auth> {
        let helper = self.per_host.get(host).or(self.store.as_ref())?;
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(answer) = answers.get(host) {
            return answer.clone();
        }
        // Docker Hub's entry in a helper is keyed by the old index URL.
        let server = if host == "docker.io" {
            "https://index.docker.io/v1/"
        } else {
            host
        };
        let answer = match run_helper(helper, server) {
            Ok(answer) => answer,
            Err(reason) => {
                crate::telemetry::about_registry(
                    || tracing::warn!(helper = %helper, registry = %host, %reason, "credential helper failed; asking anonymously"),
                );
                None
            }
        };
        answers.insert(host.to_string(), answer.clone());
        answer
    }
}

/// The reply of `docker-credential-<name> get` (the docker-credential-helpers protocol).
#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `docker-credential-<helper> get` with the server on stdin, within [`HELPER_TIMEOUT`] and
/// [`MAX_HELPER_OUTPUT`]. `Ok(None)`: the helper holds nothing for this server. A child process
/// with a deadline is a few lines with `try_wait`; no crate needed for it.
fn run_helper(helper: &str, server: &str) -> Result<Option<Auth>, String> {
    if helper.contains(['/', '\\']) {
        return Err("a helper name cannot contain a path".into());
    }
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading closes the pipe; its answer still counts.
        let _ = std::io::Write::write_all(&mut stdin, server.as_bytes());
    }
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stdout).take(MAX_HELPER_OUTPUT).read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} did not answer within {HELPER_TIMEOUT:?}"
                ));
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        // "credentials not found in native keychain": nothing stored for this server.
        return if String::from_utf8_lossy(&out).contains("not found") {
            Ok(None)
        } else {
            Err(format!("{program} get failed ({status})"))
        };
    }
    let reply: HelperReply =
        serde_json::from_slice(&out).map_err(|_| format!("{program} get answered no JSON"))?;
    Ok(match (reply.username.as_str(), reply.secret) {
        (_, secret) if secret.is_empty() => None,
        // The helper protocol's marker for an identity token (an OAuth2 refresh token).
        ("<token>", secret) => Some(Auth::IdentityToken(secret)),
        (user, secret) => Some(Auth::Direct(RegistryAuth::Basic(user.to_string(), secret))),
    })
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hosts only: never the secrets.
        f.debug_set().entries(self.by_host.keys()).finish()
    }
}

impl AuthEntry {
    /// `Err(())` for a malformed `auth`; `Ok(None)` for an entry with nothing usable.
    fn into_auth(mut self) -> Result<Option<Auth>, ()> {
        if let Some(token) = self.registrytoken.take().filter(|t| !t.is_empty()) {
            return Ok(Some(Auth::Direct(RegistryAuth::Bearer(token))));
        }
        if let Some(token) = self.identitytoken.take().filter(|t| !t.is_empty()) {
            // An OAuth2 refresh token: exchanged for access tokens, whatever `auth` says.
            return Ok(Some(Auth::IdentityToken(token)));
        }
        self.into_direct().map(|a| a.map(Auth::Direct))
    }

    fn into_direct(self) -> Result<Option<RegistryAuth>, ()> {
        if let Some(encoded) = self.auth.filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| ())?;
            let text = String::from_utf8(decoded).map_err(|_| ())?;
            let (user, pass) = text.split_once(':').ok_or(())?;
            return Ok(Some(RegistryAuth::Basic(
                user.to_string(),
                pass.to_string(),
            )));
        }
        match (self.username, self.password) {
            (Some(u), Some(p)) if !u.is_empty() => Ok(Some(RegistryAuth::Basic(u, p))),
            _ => Ok(None),
        }
    }
}

fn identity(registry: &str, auth: &Auth) -> Identity {
    let mut h = super::cache::hasher();
    normalize_host(registry).hash(&mut h);
    match auth {
        Auth::Direct(RegistryAuth::Anonymous) => return 0,
        Auth::Direct(RegistryAuth::Basic(u, p)) => ("basic", u, p).hash(&mut h),
        Auth::Direct(RegistryAuth::Bearer(t)) => ("bearer", t).hash(&mut h),
        Auth::IdentityToken(t) => ("identity", t).hash(&mut h),
    }
    // Never 0: that is anonymous.
    h.finish().max(1)
}

/// `https://index.docker.io/v1/` and `registry-1.docker.io` are both Docker Hub; keys in docker
/// configs carry schemes and paths that image references do not.
pub fn normalize_host(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// serde's message quoted the value: a password or token in the webhook's startup error.
    #[test]
    fn json_errors_never_quote_values() {
        for json in [
            r#"{"auths": {"r.io": "dXNlcjpwdw=="}}"#,
            r#"{"auths": {"r.io": {"password": 12345678}}}"#,
            r#"{"auths": {"r.io": {"auth": "dXNlcjpwdw==" "#,
        ] {
            let error = Credentials::from_docker_config(json.as_bytes(), "test")
                .unwrap_err()
                .to_string();
            assert!(error.contains("line 1 column"), "{error}");
            for secret in ["dXNlcjpwdw==", "12345678"] {
                assert!(!error.contains(secret), "{error}");
            }
        }
    }

    /// `check` merges a pod's pull secrets into an empty set, then the user's own config: its
    /// `credsStore` was dropped, and every other registry asked anonymously.
    #[test]
    fn merged_credentials_keep_the_own_helpers() {
        let own = Credentials::with_helpers(br#"{"credsStore": "desktop"}"#, "own").unwrap();
        let secret = format!(r#"{{"auths": {{"x.io": {{"auth": "{}"}}}}}}"#, b64("u:p"));
        let mut merged = Credentials::from_docker_config(secret.as_bytes(), "secret").unwrap();
        merged.merge(&own);
        assert_eq!(merged.helper_names(), own.helper_names());
        assert!(!merged.helper_names().is_empty());
    }

    #[test]
    fn reads_every_kind_of_entry() {
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "10.34.0.202:5000": {{"username": "ci", "password": "pw"}},
                "myreg.azurecr.io": {{"identitytoken": "refresh"}},
                "ghcr.io": {{"registrytoken": "tok"}},
                "empty.example": {{}}
            }}, "credsStore": "osxkeychain"}}"#,
            b64("alice:s3cr:et")
        );
        let c = Credentials::from_docker_config(json.as_bytes(), "test").unwrap();
        let basic = |u: &str, p: &str| format!("{:?}", RegistryAuth::Basic(u.into(), p.into()));
        let (auth, id) = c.for_registry("docker.io");
        assert!(
            matches!(&auth, Auth::Direct(RegistryAuth::Basic(u, p)) if u == "alice" && p == "s3cr:et")
        );
        assert_ne!(id, 0);
        assert_eq!(
            format!("{:?}", c.for_registry("10.34.0.202:5000").0),
            basic("ci", "pw")
        );
        assert_eq!(
            c.for_registry("myreg.azurecr.io").0,
            Auth::IdentityToken("refresh".into())
        );
        assert!(
            matches!(c.for_registry("ghcr.io").0, Auth::Direct(RegistryAuth::Bearer(t)) if t == "tok")
        );
        assert_eq!(c.for_registry("empty.example").1, 0);
        assert_eq!(c.for_registry("quay.io").1, 0);
        // Debug shows hosts, never secrets.
        let shown = format!("{c:?}");
        assert!(
            shown.contains("docker.io") && !shown.contains("s3cr") && !shown.contains("pw"),
            "{shown}"
        );
    }

    #[test]
    fn identity_differs_per_secret_and_host() {
        let a = Credentials::from_docker_config(
            format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("a:1")).as_bytes(),
            "a",
        )
        .unwrap();
        let b = Credentials::from_docker_config(
            format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("a:2")).as_bytes(),
            "b",
        )
        .unwrap();
        assert_ne!(a.for_registry("r.io").1, b.for_registry("r.io").1);
        assert_eq!(a.for_registry("r.io").1, a.clone().for_registry("r.io").1);
    }

    #[test]
    fn malformed_configs_are_errors_naming_the_source() {
        let err = Credentials::from_docker_config(b"{", "/etc/docker/config.json").unwrap_err();
        assert!(err.to_string().contains("/etc/docker/config.json"), "{err}");
        let err = Credentials::from_docker_config(br#"{"auths":{"r.io":{"auth":"!!!"}}}"#, "x")
            .unwrap_err();
        assert!(err.to_string().contains("r.io"), "{err}");
        let missing = Credentials::load(Some(Path::new("/nonexistent/config.json"))).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/config.json"),
            "{missing}"
        );
    }

    #[test]
    fn legacy_dockercfg() {
        let json = format!(r#"{{"r.io": {{"auth": "{}"}}}}"#, b64("u:p"));
        let c = Credentials::from_dockercfg(json.as_bytes(), "s").unwrap();
        assert_ne!(c.for_registry("r.io").1, 0);
    }
}
