//! Registry credentials from docker `config.json` files (the webhook's own, and pull secrets).
//!
//! Never log or display a secret: `Debug` on [`RegistryAuth`] redacts, and identities are hashes.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// Credentials per registry host, with an identity that keys clients and cache entries.
#[derive(Clone, Default)]
pub struct Credentials {
    by_host: BTreeMap<String, Auth>,
}

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
    /// Parses a docker `config.json` (or the `.dockerconfigjson` of a Secret).
    ///
    /// `credsStore`/`credHelpers` name programs on a developer's machine that a webhook cannot run;
    /// they are ignored.
    pub fn from_docker_config(json: &[u8], origin: &str) -> Result<Self, CredentialsError> {
        let config: DockerConfig =
            serde_json::from_slice(json).map_err(|e| CredentialsError::Json {
                origin: origin.to_string(),
                reason: e.to_string(),
            })?;
        Self::from_auths(config.auths, origin)
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
        Ok(Self { by_host })
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
            return Self::from_docker_config(&read(path)?, &path.display().to_string());
        }
        let defaults = [
            std::env::var_os("DOCKER_CONFIG").map(|d| PathBuf::from(d).join("config.json")),
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
        ];
        for path in defaults.into_iter().flatten() {
            if path.is_file() {
                return Self::from_docker_config(&read(&path)?, &path.display().to_string());
            }
        }
        Ok(Self::default())
    }

    /// Adds `other`'s hosts where this set has none (the first source of a host wins, as the
    /// kubelet does with a pod's pull secrets).
    pub fn merge(&mut self, other: &Credentials) {
        for (host, auth) in &other.by_host {
            self.by_host
                .entry(host.clone())
                .or_insert_with(|| auth.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// The credentials for `registry` (as written in an image reference), and who they make us.
    /// Just the identity for `registry`: the warm path needs it for cache keys and nothing else.
    pub fn identity_for(&self, registry: &str) -> Identity {
        if self.by_host.is_empty() {
            return 0;
        }
        self.for_registry(registry).1
    }

    pub fn for_registry(&self, registry: &str) -> (Auth, Identity) {
        match self.by_host.get(&normalize_host(registry)) {
            Some(auth) => (auth.clone(), identity(registry, auth)),
            None => (Auth::Direct(RegistryAuth::Anonymous), 0),
        }
    }
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
    let mut h = DefaultHasher::new();
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
