//! Registry credentials from docker `config.json` files (the webhook's own, and pull secrets),
//! chosen for an image as the kubelet chooses them (`pkg/credentialprovider/keyring.go`):
//! - each `auths` key is a host, with a port, a path and `*` wildcards, as
//!   `BasicDockerKeyring.Add` keys it (scheme, query and a leading `/v1/` or `/v2/` dropped);
//! - an image matches a key when `URLsMatch` says so: the same port, the same number of host
//!   labels each globbed on its own (`*.corp.example` is `a.corp.example`, not
//!   `a.b.corp.example`), and the key's path a prefix of the image's repository;
//! - every matching credential is tried, most specific key first: `Lookup` walks its index
//!   reverse-sorted, and the pull (`kuberuntime_image.go` `PullImage`) tries each in turn and
//!   stops at the first that works; anonymous only when none matches;
//! - a pod's secrets form one keyring, tried before the webhook's own (`UnionDockerKeyring`);
//!   within one, `index.docker.io` answers for Docker Hub only when no key matched
//!   (`isDefaultRegistryMatch`).
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

use crate::reference::ImageRef;

/// Credentials per registry key (host, port, path, wildcards), each with an identity that keys
/// tokens and cache entries.
#[derive(Clone, Default)]
pub struct Credentials {
    /// Sorted as the kubelet walks them: by keyring, then key descending (`Lookup`'s
    /// reverse-sorted index: `r.io/team` before `r.io`), a key's entries in the order added.
    entries: Vec<Ranked>,
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

/// Credentials tried for one image, at most. The kubelet tries every match; a pod lists a
/// handful of secrets, and a rotation needs two. Each refused credential costs a round trip
/// to the registry (and one to its token endpoint) within the review's deadline, so a pod
/// cannot make one lookup ask more than this many times; matches past it are not tried.
pub const MAX_CANDIDATES: usize = 4;

/// One credential and the keyring it belongs to (see [`Credentials::then`]).
#[derive(Clone)]
struct Ranked {
    keyring: u32,
    entry: Arc<Entry>,
}

/// One `auths` entry, keyed as the kubelet's keyring keys it.
struct Entry {
    /// `HOST[:PORT][/PATH]`, as `BasicDockerKeyring.Add` makes it.
    key: String,
    /// Where `key`'s path begins (`key.len()` when it has none).
    path_at: usize,
    /// The host holds a `*`: matched label by label; otherwise it is compared whole.
    wildcard: bool,
    auth: Auth,
    identity: Identity,
}

/// The key Docker Hub's credentials have in docker configs (`https://index.docker.io/v1/`):
/// the kubelet's `defaultRegistryHost`, used for Hub images only when no key matched.
const HUB_KEY: &str = "index.docker.io";

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
        let mut entries = Vec::with_capacity(auths.len());
        for (written, entry) in auths {
            let auth = entry.into_auth().map_err(|()| CredentialsError::Auth {
                origin: origin.to_string(),
                host: normalize_host(&written),
            })?;
            // An entry with nothing usable is left out: tried, it would be an anonymous pull.
            if let Some(entry) = auth.and_then(|auth| Entry::new(&written, auth)) {
                entries.push(Arc::new(entry));
            }
        }
        let mut credentials = Self {
            entries: Vec::new(),
            helpers: None,
        };
        credentials.join(0, entries.into_iter());
        Ok(credentials)
    }

    /// `entries` into keyring `keyring`, keeping the kubelet's order.
    fn join(&mut self, keyring: u32, entries: impl Iterator<Item = Arc<Entry>>) {
        self.entries
            .extend(entries.map(|entry| Ranked { keyring, entry }));
        // Stable: a key's entries stay in the order they were added (the kubelet appends a
        // later secret's credentials for a key after an earlier one's).
        self.entries.sort_by(|a, b| {
            (a.keyring.cmp(&b.keyring)).then_with(|| b.entry.key.cmp(&a.entry.key))
        });
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

    /// Adds `other`'s entries to this set's last keyring, as the kubelet adds each of a pod's
    /// pull secrets to one keyring (`MakeDockerKeyring`, `BasicDockerKeyring.Add`): every
    /// entry is kept, a key's entries in the order added, so that a pod listing an old and a
    /// new secret for one registry is tried with both.
    pub fn add(&mut self, other: &Credentials) {
        let last = self.entries.last().map_or(0, |r| r.keyring);
        self.join(last, other.entries.iter().map(|r| r.entry.clone()));
        self.adopt_helpers(other);
    }

    /// Appends `fallback`'s keyrings after this set's, as `UnionDockerKeyring` puts the node's
    /// credentials after a pod's: its matches are tried after all of this set's.
    pub fn then(&mut self, fallback: &Credentials) {
        let next = self.entries.last().map_or(0, |r| r.keyring + 1);
        let ranked = fallback.entries.iter().map(|r| Ranked {
            keyring: next + r.keyring,
            entry: r.entry.clone(),
        });
        // Already in order: this set's keyrings, then the fallback's, each sorted.
        self.entries.extend(ranked);
        self.adopt_helpers(fallback);
    }

    /// `other`'s credential helpers where this set has none: `check` merges a pod's pull
    /// secrets into an empty set before the user's own config, whose `credsStore` must still
    /// answer for the other registries.
    fn adopt_helpers(&mut self, other: &Credentials) {
        if self.helpers.is_none() {
            self.helpers = other.helpers.clone();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Registry entries held (a key listed by two sources counts twice).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Who pulling `image` makes us, for cache keys: `0` (anonymous) when no credential
    /// matches, the credential's identity when one does, and a hash of the ordered list when
    /// several do. The list, not the credential that worked: which one works is learned only
    /// by asking, and the warm path must not ask. Whoever holds the same list in the same order
    /// would be answered the same by the registry (the kubelet tries them in that order and
    /// keeps the first that works), so sharing its answers leaks nothing; a pod holding a
    /// different list (one secret fewer, another namespace's) has another identity and never
    /// reads them. A single credential's identity is the one it has alone, so pods naming just
    /// one secret share answers as before.
    ///
    /// The warm path calls this per image: no allocation, one pass over the entries.
    pub fn identity_for(&self, image: &ImageRef) -> Identity {
        if self.entries.is_empty() && self.helpers.is_none() {
            return 0;
        }
        let found = self.matching(image.registry(), image.repository());
        match found.len {
            0 => self
                .helped(image.registry())
                .map_or(0, |auth| identity(&auth)),
            1 => found.found[0].map_or(0, |e| e.identity),
            _ => list_identity(found.iter().map(|e| e.identity)),
        }
    }

    /// The credentials to pull `image` with, in the order to try them (at most
    /// [`MAX_CANDIDATES`]); empty when the pull is anonymous.
    pub fn pulls_for(&self, registry: &str, repository: &str) -> Vec<(Auth, Identity)> {
        let found = self.matching(registry, repository);
        if found.len == 0 {
            return self
                .helped(registry)
                .map(|auth| {
                    let id = identity(&auth);
                    vec![(auth, id)]
                })
                .unwrap_or_default();
        }
        found.iter().map(|e| (e.auth.clone(), e.identity)).collect()
    }

    /// The first credential for `registry` itself (a mirror, a host without a repository),
    /// and who it makes us; anonymous when none matches.
    pub fn for_registry(&self, registry: &str) -> (Auth, Identity) {
        self.first_for(registry, "")
    }

    /// The first credential the kubelet would try for `repository` at `registry`.
    pub fn first_for(&self, registry: &str, repository: &str) -> (Auth, Identity) {
        self.pulls_for(registry, repository)
            .into_iter()
            .next()
            .unwrap_or((Auth::Direct(RegistryAuth::Anonymous), 0))
    }

    /// A credential helper's answer for `registry` (only `check` has helpers).
    fn helped(&self, registry: &str) -> Option<Auth> {
        let helpers = self.helpers.as_ref()?;
        helpers.answer(&normalize_host(registry))
    }

    /// The entries matching `repository` at `registry`, in the kubelet's order, each secret
    /// once (the same secret twice would be answered the same), at most [`MAX_CANDIDATES`].
    fn matching(&self, registry: &str, repository: &str) -> Matches<'_> {
        let mut found = Matches::default();
        let hub = registry == "docker.io";
        for keyring in self.entries.chunk_by(|a, b| a.keyring == b.keyring) {
            let mut matched = false;
            for ranked in keyring {
                if ranked.entry.matches(registry, repository) {
                    matched = true;
                    found.push(&ranked.entry);
                }
            }
            // `BasicDockerKeyring.Lookup`: Docker Hub's old key, only when nothing matched.
            if !matched && hub {
                for ranked in keyring.iter().filter(|r| r.entry.key == HUB_KEY) {
                    found.push(&ranked.entry);
                }
            }
            if found.len == MAX_CANDIDATES {
                break;
            }
        }
        found
    }
}

/// Up to [`MAX_CANDIDATES`] entries, on the stack: the warm path allocates nothing for them.
#[derive(Default)]
struct Matches<'a> {
    found: [Option<&'a Entry>; MAX_CANDIDATES],
    len: usize,
}

impl<'a> Matches<'a> {
    fn push(&mut self, entry: &'a Entry) {
        let known = self.iter().any(|e| e.identity == entry.identity);
        if !known && self.len < MAX_CANDIDATES {
            self.found[self.len] = Some(entry);
            self.len += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = &'a Entry> + '_ {
        self.found[..self.len].iter().flatten().copied()
    }
}

/// The identity of an ordered list of credentials: never 0 (anonymous), and not its first
/// member's (the list is answered where its first member alone may be refused).
fn list_identity(ids: impl Iterator<Item = Identity>) -> Identity {
    let mut h = super::cache::hasher();
    "candidates".hash(&mut h);
    for id in ids {
        id.hash(&mut h);
    }
    h.finish().max(1)
}

impl Entry {
    /// The entry for the `auths` key `written`, keyed as `BasicDockerKeyring.Add` keys it:
    /// `https://` assumed, parsed as a URL (host, then path; `?` and `#` end it), a leading
    /// `/v1/` or `/v2/` dropped from the path, and a path of `/` dropped. `None` for a key
    /// with no host, which nothing can match.
    fn new(written: &str, auth: Auth) -> Option<Entry> {
        let rest = written
            .strip_prefix("https://")
            .or_else(|| written.strip_prefix("http://"))
            .unwrap_or(written);
        let rest = rest.split(['#', '?']).next().unwrap_or_default();
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        // `user@host`: url.Parse keeps the user out of the host.
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() {
            return None;
        }
        let path = match path.get(..4) {
            Some("/v1/" | "/v2/") => &path[3..],
            _ => path,
        };
        let path = if path == "/" { "" } else { path };
        Some(Entry {
            key: format!("{host}{path}"),
            path_at: host.len(),
            wildcard: host.contains('*'),
            identity: identity(&auth),
            auth,
        })
    }

    /// `URLsMatch(key, registry/repository)`: same port, same number of host labels, each
    /// matching its glob, and the key's path a prefix of the repository's (as a string: the
    /// kubelet's `strings.HasPrefix`, so `r.io/team` also covers `r.io/team-b`).
    fn matches(&self, registry: &str, repository: &str) -> bool {
        let (host, path) = self.key.split_at(self.path_at);
        let path_matches = match path.strip_prefix('/') {
            None => true,
            // The image's path is `/` + repository; a bare host has none.
            Some(prefix) => !repository.is_empty() && repository.starts_with(prefix),
        };
        path_matches
            && if self.wildcard {
                host_matches(host, registry)
            } else {
                host == registry
            }
    }
}

/// `URLsMatch` on hosts: `SplitURL` on both (the port apart, the host split at dots), equal
/// ports, as many labels, each label matched by its glob.
fn host_matches(glob: &str, target: &str) -> bool {
    let (glob, glob_port) = split_port(glob);
    let (target, target_port) = split_port(target);
    if glob_port != target_port {
        return false;
    }
    let mut globs = glob.split('.');
    let mut labels = target.split('.');
    loop {
        match (globs.next(), labels.next()) {
            (Some(g), Some(l)) if label_matches(g, l) => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// `net.SplitHostPort`, falling back to the whole host with no port as `SplitURL` does.
fn split_port(host: &str) -> (&str, &str) {
    if let Some(bracketed) = host.strip_prefix('[') {
        return match bracketed.split_once("]:") {
            Some((ip, port)) => (ip, port),
            None => (host, ""),
        };
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => (name, port),
        _ => (host, ""),
    }
}

/// `filepath.Match` on one label. Only `*` can reach here: `url.Parse` ends a key's host at
/// `?`, and refuses a `[` that does not open an IPv6 address.
fn label_matches(glob: &str, label: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = label.strip_prefix(first) else {
        return false;
    };
    let mut parts = parts.peekable();
    if parts.peek().is_none() {
        return rest.is_empty();
    }
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
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
        // Keys only: never the secrets.
        f.debug_list()
            .entries(self.entries.iter().map(|r| &r.entry.key))
            .finish()
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

/// Who `auth` makes us: a hash of the secret, whichever key it came under (the same secret
/// under two keys is one credential, tried once). Registry and repository are in every cache
/// and token key beside it.
fn identity(auth: &Auth) -> Identity {
    let mut h = super::cache::hasher();
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
        merged.then(&own);
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

    /// Who each credential the kubelet would try for `image` belongs to, in the order it tries
    /// them.
    fn users(c: &Credentials, image: &str) -> Vec<String> {
        let image = ImageRef::parse(image).unwrap();
        c.pulls_for(image.registry(), image.repository())
            .into_iter()
            .map(|(auth, _)| match auth {
                Auth::Direct(RegistryAuth::Basic(user, _)) => user,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn config(entries: &[(&str, &str)]) -> Credentials {
        let auths: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(key, user)| {
                let entry = serde_json::json!({ "auth": b64(&format!("{user}:pw")) });
                (key.to_string(), entry)
            })
            .collect();
        let json = serde_json::json!({ "auths": auths }).to_string();
        Credentials::from_docker_config(json.as_bytes(), "test").unwrap()
    }

    /// Keys with a path were cut to their host and the last one won for the whole host: the
    /// kubelet's keyring (`BasicDockerKeyring.Add`, `Lookup`) keeps host and path, matches the
    /// path as a prefix, and tries the most specific key first.
    #[test]
    fn path_scoped_entries_match_by_longest_prefix() {
        let c = config(&[
            ("r.io", "a"),
            ("r.io/team-a", "b"),
            ("https://r.io/v2/team-a/app", "c"),
        ]);
        assert_eq!(users(&c, "r.io/team-a/app:1"), ["c", "b", "a"]);
        assert_eq!(users(&c, "r.io/team-a/tool:1"), ["b", "a"]);
        assert_eq!(users(&c, "r.io/team-b/app:1"), ["a"]);
        assert_eq!(users(&c, "other.io/team-a/app:1"), Vec::<String>::new());
        // `docker.io` matches Docker Hub images; the old index URL only when nothing else does
        // (`isDefaultRegistryMatch`).
        let hub = config(&[("docker.io", "d"), ("https://index.docker.io/v1/", "i")]);
        assert_eq!(users(&hub, "nginx:1.27"), ["d"]);
        let old_style = config(&[("https://index.docker.io/v1/", "i")]);
        assert_eq!(users(&old_style, "library/nginx:1.27"), ["i"]);
        let team = config(&[
            ("docker.io/team", "t"),
            ("https://index.docker.io/v1/", "i"),
        ]);
        assert_eq!(users(&team, "team/app:1"), ["t"]);
        assert_eq!(users(&team, "nginx:1.27"), ["i"]);
    }

    /// Wildcard keys never matched. The kubelet (`URLsMatch`) globs each host label on its own
    /// (`filepath.Match`), so `*` stands for exactly one label, and the port must be equal.
    #[test]
    fn wildcard_keys_match_one_label() {
        let c = config(&[
            ("*.corp.example", "w"),
            ("a.corp.example", "e"),
            ("*.corp.example:5000", "p"),
            ("r.*.example", "m"),
            // `url.Parse` reads `?` as the start of a query: the key is the host `r`, which
            // matches no image (as in the kubelet).
            ("r?.corp.example", "q"),
        ]);
        assert_eq!(users(&c, "a.corp.example/app:1"), ["e", "w"]);
        assert_eq!(users(&c, "b.corp.example/app:1"), ["w"]);
        assert_eq!(users(&c, "b.corp.example:5000/app:1"), ["p"]);
        assert_eq!(users(&c, "r.corp.example/app:1"), ["m", "w"]);
        assert_eq!(users(&c, "r1.corp.example/app:1"), ["w"]);
        for image in [
            "a.b.corp.example/app:1",
            "corp.example/app:1",
            "a.corp.example:5001/app:1",
            "r.a.b.example/app:1",
        ] {
            assert_eq!(users(&c, image), Vec::<String>::new(), "{image}");
        }
    }

    #[test]
    fn legacy_dockercfg() {
        let json = format!(r#"{{"r.io": {{"auth": "{}"}}}}"#, b64("u:p"));
        let c = Credentials::from_dockercfg(json.as_bytes(), "s").unwrap();
        assert_ne!(c.for_registry("r.io").1, 0);
    }
}
