//! Settings for `serve`: the YAML config file merged with flags (flags win), validated with
//! errors that name the fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{LogFormat, ServeArgs};
use crate::pipeline::Exemptions;
use crate::platform::{Platform, RuntimeMatcher};
use crate::policy::{Mode, OnMissingImage, OnRegistryError, Policy};
use crate::resolver::RegistryOptions;
use crate::tls::CertificateFiles;
use crate::workload::ExtractOptions;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_PLATFORM: &str = "linux/amd64";
/// Under the webhook's default `timeoutSeconds: 10`, leaving time for the network.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(8);

/// The config file. Keys are camelCase, as in Kubernetes manifests; unknown keys are errors so
/// a typo does not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub self_signed: Option<bool>,
    pub self_signed_ca_out: Option<PathBuf>,
    #[serde(default)]
    pub dns_names: Vec<String>,
    #[serde(default)]
    pub platforms: Vec<String>,
    /// How the nodes of `platforms` pick an image's platform (`strict` or `containerd-1.7`).
    pub runtime_matcher: Option<RuntimeMatcher>,
    pub mode: Option<Mode>,
    pub on_registry_error: Option<OnRegistryError>,
    pub on_missing_image: Option<OnMissingImage>,
    /// Seconds, or a string like `8s` / `500ms`.
    pub review_deadline: Option<DurationValue>,
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    pub registry_ca: Option<PathBuf>,
    /// Requests in flight to one registry host, at most (default 16).
    pub registry_concurrency: Option<usize>,
    /// Registry host → mirror hosts (`HOST[:PORT]`) asked in order before it, as containerd's
    /// hosts.toml: `{"docker.io": ["mirror.internal:5000"]}`.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registries (`HOST[:PORT]`) whose manifest requests may follow a redirect to another
    /// host (blob downloads always may, except to link-local or metadata addresses).
    #[serde(default)]
    pub manifest_redirects: Vec<String>,
    pub docker_config: Option<PathBuf>,
    pub pull_secrets: Option<bool>,
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub exempt_namespaces: Vec<String>,
    #[serde(default)]
    pub exempt_images: Vec<String>,
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub tekton: TektonConfig,
    #[serde(default)]
    pub cache: CacheConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TektonConfig {
    /// Param names whose values are images a run needs (e.g. `BASE_IMAGE`).
    #[serde(default)]
    pub image_params: Vec<String>,
    /// `userInfo.username` of the Tekton controller.
    pub controller_username: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    pub tag_ttl: Option<DurationValue>,
    pub not_found_ttl: Option<DurationValue>,
    pub max_images: Option<u64>,
}

/// A duration in a config file: `8`, `8s`, `500ms`, `1m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct DurationValue(pub Duration);

impl TryFrom<serde_json::Value> for DurationValue {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, Self::Error> {
        match &v {
            serde_json::Value::Number(n) => n
                .as_f64()
                .ok_or_else(|| format!("{v} is not a duration"))
                .and_then(seconds),
            serde_json::Value::String(s) => parse_duration(s),
            _ => Err(format!(
                "{v} is not a duration: use seconds or a string like \"8s\""
            )),
        }
        .map(DurationValue)
    }
}

/// `s` seconds; `Duration::from_secs_f64` panics past ~584 billion years (`1e20`).
fn seconds(s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s.max(0.0)).map_err(|_| format!("{s} seconds is not a duration"))
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => seconds(v * scale),
        _ => Err(format!(
            "{text:?} is not a duration: use e.g. \"8s\", \"500ms\", \"1m\" or \"1h\""
        )),
    }
}

/// Where the platforms a pod may run on come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PlatformSource {
    /// The cluster's Nodes, through a watch.
    Auto,
    Static(Vec<Platform>),
}

/// Where archgate reads the cluster from. Where it runs decides this, not `--platform`, which
/// only says where candidate platforms come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterAccess {
    /// No cluster: namespace modes, pull secrets and Tekton references cannot be read.
    None,
    /// The pod's ServiceAccount (KUBERNETES_SERVICE_HOST is set).
    InCluster,
    /// `--kubeconfig`.
    Kubeconfig(PathBuf),
    /// `--platform auto` outside a pod: kube's usual search ($KUBECONFIG, ~/.kube/config).
    Inferred,
}

impl ClusterAccess {
    /// `None` with neither a kubeconfig nor a pod around it, unless `--platform auto` asks for
    /// a cluster anyway.
    fn decide(kubeconfig: Option<PathBuf>, platforms: &PlatformSource) -> Self {
        match kubeconfig {
            Some(path) => Self::Kubeconfig(path),
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Self::InCluster,
            None if *platforms == PlatformSource::Auto => Self::Inferred,
            None => Self::None,
        }
    }

    /// The client configuration, or `None` without a cluster.
    pub async fn client_config(&self) -> Result<Option<kube::Config>, ConfigError> {
        let error = |reason: String| ConfigError::Cluster {
            access: self.clone(),
            reason,
        };
        Ok(Some(match self {
            Self::None => return Ok(None),
            Self::InCluster => kube::Config::incluster().map_err(|e| error(e.to_string()))?,
            Self::Kubeconfig(path) => {
                let kubeconfig =
                    kube::config::Kubeconfig::read_from(path).map_err(|e| error(e.to_string()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| error(e.to_string()))?
            }
            Self::Inferred => kube::Config::infer()
                .await
                .map_err(|e| error(e.to_string()))?,
        }))
    }
}

/// The client configuration for a command run by hand (`scan`, `check --platform auto`), chosen
/// as kubectl chooses it: `--kubeconfig`, else $KUBECONFIG or ~/.kube/config, else in a pod its
/// ServiceAccount (kube's `Config::infer`); `--context` picks another context of the file.
pub async fn kube_config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Config, ConfigError> {
    let access = match kubeconfig {
        Some(path) => ClusterAccess::Kubeconfig(path.to_path_buf()),
        None => ClusterAccess::Inferred,
    };
    let error = |reason: String| ConfigError::Cluster {
        access: access.clone(),
        reason,
    };
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    match (kubeconfig, context) {
        (Some(path), _) => {
            let file =
                kube::config::Kubeconfig::read_from(path).map_err(|e| error(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| error(e.to_string()))
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| error(e.to_string())),
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| error(e.to_string())),
    }
}

impl std::fmt::Display for ClusterAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("no cluster"),
            Self::InCluster => f.write_str("the in-cluster ServiceAccount"),
            Self::Kubeconfig(path) => write!(f, "--kubeconfig {}", path.display()),
            Self::Inferred => f.write_str("$KUBECONFIG or ~/.kube/config"),
        }
    }
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    Files(CertificateFiles),
    SelfSigned {
        ca_out: Option<PathBuf>,
        dns_names: Vec<String>,
    },
}

/// Everything `serve` runs with, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: TlsSource,
    pub platforms: PlatformSource,
    pub policy: Policy,
    pub deadline: Duration,
    pub registry: RegistryOptions,
    pub docker_config: Option<PathBuf>,
    pub pull_secrets: bool,
    pub cluster: ClusterAccess,
    /// `userInfo.username` of the Tekton controller.
    pub tekton_controller: String,
    pub exempt_namespaces: Vec<String>,
    pub exemptions: Exemptions,
    pub log_format: LogFormat,
    pub extract: ExtractOptions,
    /// Time, count and byte bounds on the webhook port's clients ([`crate::server::Limits`]).
    pub webhook_limits: crate::server::Limits,
    /// The same for the admin port.
    pub admin_limits: crate::server::Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error(
        "no serving certificate: pass --tls-cert and --tls-key (or tlsCert/tlsKey in the config), or --self-signed"
    )]
    NoTls,
    #[error(
        "--self-signed-ca-out and --dns-name shape the self-signed certificate: add --self-signed (or selfSigned: true in the config)"
    )]
    SelfSignedOnly,
    #[error("tlsCert and tlsKey must be set together")]
    HalfTls,
    #[error(
        "the config file sets both selfSigned: true and tlsCert/tlsKey: keep the one the webhook's caBundle trusts"
    )]
    TwoTlsSources,
    #[error("--platform: {0}")]
    Platform(String),
    #[error(
        "--runtime-matcher (runtimeMatcher) applies to a --platform list; with --platform auto each \
         node's container runtime decides (status.nodeInfo.containerRuntimeVersion): remove one"
    )]
    RuntimeMatcherWithAuto,
    #[error(
        "--review-deadline must be between 0.1 and 29 seconds (the API server waits at most 30), got {0:?}"
    )]
    Deadline(Duration),
    #[error("registryConcurrency must be at least 1 (requests in flight to one registry host)")]
    RegistryConcurrency,
    #[error(
        "mirrors.{registry}: {value:?} is not a registry host: write HOST[:PORT] without scheme or path, and list plain-HTTP mirrors in insecureRegistries"
    )]
    Mirror { registry: String, value: String },
    #[error(
        "--pull-secrets reads Secrets from the Kubernetes API: run archgate in the cluster or pass --kubeconfig"
    )]
    PullSecretsNeedCluster,
    #[error("cannot reach the Kubernetes API through {access}: {reason}")]
    Cluster {
        access: ClusterAccess,
        reason: String,
    },
    #[error("{key}: {value:?} is not a registry host: write HOST[:PORT] without scheme or path")]
    Host { key: &'static str, value: String },
    #[error("--registry-ca {path}: {source}")]
    RegistryCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Parses `-p` values: OS/ARCH[/VARIANT] each, or the single word `auto`.
pub fn parse_platforms(values: &[String]) -> Result<PlatformSource, ConfigError> {
    let values: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if values.contains(&"auto") {
        if values.len() > 1 {
            return Err(ConfigError::Platform(
                "`auto` cannot be combined with explicit platforms".into(),
            ));
        }
        return Ok(PlatformSource::Auto);
    }
    let mut platforms = Vec::new();
    for v in values {
        platforms.push(Platform::parse(v).map_err(|e| ConfigError::Platform(e.to_string()))?);
    }
    if platforms.is_empty() {
        platforms.push(
            Platform::parse(DEFAULT_PLATFORM).map_err(|e| ConfigError::Platform(e.to_string()))?,
        );
    }
    platforms.dedup();
    Ok(PlatformSource::Static(platforms))
}

/// A static list's nodes pull with `runtime` (default strict); live nodes say it themselves.
pub fn pulled_with(
    source: PlatformSource,
    runtime: Option<RuntimeMatcher>,
) -> Result<PlatformSource, ConfigError> {
    match (source, runtime) {
        (PlatformSource::Auto, Some(_)) => Err(ConfigError::RuntimeMatcherWithAuto),
        (PlatformSource::Auto, None) => Ok(PlatformSource::Auto),
        (PlatformSource::Static(list), runtime) => Ok(PlatformSource::Static(
            list.into_iter()
                .map(|p| p.pulled_with(runtime.unwrap_or_default()))
                .collect(),
        )),
    }
}

pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    crate::yaml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        reason: crate::yaml::describe(&e, 1),
    })
}

fn first<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

fn list(flag: &[String], file: Vec<String>) -> Vec<String> {
    if flag.is_empty() { file } else { flag.to_vec() }
}

impl Settings {
    /// Flags over file over defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let FileConfig {
            listen,
            admin_listen,
            tls_cert,
            tls_key,
            self_signed,
            self_signed_ca_out,
            dns_names,
            platforms,
            runtime_matcher,
            mode,
            on_registry_error,
            on_missing_image,
            review_deadline,
            insecure_registries,
            registry_ca,
            registry_concurrency,
            mirrors,
            manifest_redirects,
            docker_config,
            pull_secrets,
            kubeconfig,
            exempt_namespaces,
            exempt_images,
            log_format,
            tekton,
            cache,
        } = file;

        // A flag overrides the file; within the file, two sources of the serving certificate
        // cannot both take effect. Silently preferring the self-signed one served a certificate
        // the API server does not trust: every review failed, and `failurePolicy: Ignore`
        // admitted everything unchecked.
        if self_signed == Some(true)
            && (tls_cert.is_some() || tls_key.is_some())
            && !args.self_signed
            && args.tls_cert.is_none()
        {
            return Err(ConfigError::TwoTlsSources);
        }
        let self_signed =
            args.self_signed || (args.tls_cert.is_none() && self_signed == Some(true));
        if !self_signed && (args.self_signed_ca_out.is_some() || !args.dns_names.is_empty()) {
            return Err(ConfigError::SelfSignedOnly);
        }
        let tls = if self_signed {
            TlsSource::SelfSigned {
                ca_out: first(args.self_signed_ca_out.clone(), self_signed_ca_out),
                dns_names: list(&args.dns_names, dns_names),
            }
        } else {
            match (
                first(args.tls_cert.clone(), tls_cert),
                first(args.tls_key.clone(), tls_key),
            ) {
                (Some(cert), Some(key)) => TlsSource::Files(CertificateFiles { cert, key }),
                (None, None) => return Err(ConfigError::NoTls),
                _ => return Err(ConfigError::HalfTls),
            }
        };

        let deadline = match args.review_deadline {
            // Past what a Duration holds is past the bound below.
            Some(secs) if secs.is_finite() && secs >= 0.0 => {
                Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
            }
            Some(_) => Duration::ZERO,
            None => review_deadline.map(|d| d.0).unwrap_or(DEFAULT_DEADLINE),
        };
        if deadline < Duration::from_millis(100) || deadline > Duration::from_secs(29) {
            return Err(ConfigError::Deadline(deadline));
        }

        let registry_ca = first(args.registry.registry_ca.clone(), registry_ca);
        let ca_pem = match &registry_ca {
            Some(path) => Some(
                std::fs::read(path).map_err(|source| ConfigError::RegistryCa {
                    path: path.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let defaults = RegistryOptions::default();
        let registry = RegistryOptions {
            insecure: list(&args.registry.insecure_registries, insecure_registries),
            ca_pem,
            tag_ttl: cache.tag_ttl.map(|d| d.0).unwrap_or(defaults.tag_ttl),
            not_found_ttl: cache
                .not_found_ttl
                .map(|d| d.0)
                .unwrap_or(defaults.not_found_ttl),
            max_images: cache.max_images.unwrap_or(defaults.max_images),
            concurrency: match registry_concurrency {
                Some(0) => return Err(ConfigError::RegistryConcurrency),
                Some(n) => n,
                None => defaults.concurrency,
            },
            mirrors: check_mirrors(mirrors)?,
            manifest_redirects: check_hosts(manifest_redirects, "manifestRedirects")?,
            ..defaults
        };

        let platforms = pulled_with(
            parse_platforms(&list(&args.platforms, platforms))?,
            first(args.runtime.runtime_matcher, runtime_matcher),
        )?;
        let cluster = ClusterAccess::decide(first(args.kubeconfig.clone(), kubeconfig), &platforms);
        let pull_secrets = args.pull_secrets || pull_secrets.unwrap_or(false);
        if pull_secrets && cluster == ClusterAccess::None {
            return Err(ConfigError::PullSecretsNeedCluster);
        }
        let TektonConfig {
            image_params,
            controller_username,
        } = tekton;

        Ok(Self {
            listen: first(args.listen, listen).unwrap_or_else(|| parse_addr(DEFAULT_LISTEN)),
            admin_listen: first(args.admin_listen, admin_listen)
                .unwrap_or_else(|| parse_addr(DEFAULT_ADMIN_LISTEN)),
            tls,
            platforms,
            policy: Policy {
                mode: first(args.mode, mode).unwrap_or(Mode::Enforce),
                on_registry_error: first(args.on_registry_error, on_registry_error)
                    .unwrap_or(OnRegistryError::Allow),
                on_missing_image: first(args.on_missing_image, on_missing_image)
                    .unwrap_or(OnMissingImage::Deny),
            },
            deadline,
            registry,
            docker_config: first(args.registry.docker_config.clone(), docker_config),
            pull_secrets,
            cluster,
            tekton_controller: first(args.tekton_controller.clone(), controller_username)
                .unwrap_or_else(|| crate::admission::DEFAULT_TEKTON_CONTROLLER.to_string()),
            exempt_namespaces: list(&args.exempt.exempt_namespaces, exempt_namespaces),
            exemptions: Exemptions::new(list(&args.exempt.exempt_images, exempt_images)),
            log_format: first(args.log_format, log_format).unwrap_or(LogFormat::Plain),
            extract: ExtractOptions {
                tekton_image_params: image_params,
                trust_tekton_platforms: false,
                // `serve` and `scan` read Pods from the API server, past its admission.
                admitted_pods: true,
            },
            webhook_limits: crate::server::Limits::webhook(),
            admin_limits: crate::server::Limits::admin(),
        })
    }
}

/// Mirror hosts are written as in image references; a URL would silently never match.
fn check_mirrors(
    mirrors: BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    for (registry, hosts) in &mirrors {
        for value in std::iter::once(registry).chain(hosts) {
            if !is_registry_host(value) {
                return Err(ConfigError::Mirror {
                    registry: registry.clone(),
                    value: value.clone(),
                });
            }
        }
    }
    Ok(mirrors)
}

/// `HOST[:PORT]` as in image references (no scheme, no path).
fn is_registry_host(value: &str) -> bool {
    !(value.is_empty()
        || value.contains("://")
        || value.contains('/')
        || value.chars().any(char::is_whitespace))
}

/// A list of registry hosts under config key `key`.
fn check_hosts(hosts: Vec<String>, key: &'static str) -> Result<Vec<String>, ConfigError> {
    match hosts.iter().find(|h| !is_registry_host(h)) {
        Some(value) => Err(ConfigError::Host {
            key,
            value: value.clone(),
        }),
        None => Ok(hosts),
    }
}

fn parse_addr(text: &str) -> SocketAddr {
    // The defaults above are valid literals.
    text.parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn manifest_redirect_hosts_are_plain_hosts() {
        let ok = vec!["registry.example:5000".to_string()];
        assert_eq!(check_hosts(ok.clone(), "manifestRedirects").unwrap(), ok);
        let err = check_hosts(vec!["https://r.example".into()], "manifestRedirects").unwrap_err();
        assert_eq!(
            err.to_string(),
            "manifestRedirects: \"https://r.example\" is not a registry host: write HOST[:PORT] without scheme or path"
        );
    }

    fn serve(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut argv = vec!["archgate", "serve"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv).expect("flags parse");
        let crate::cli::Command::Serve(serve) = cli.command else {
            unreachable!()
        };
        Settings::resolve(&serve)
    }

    #[test]
    fn defaults() {
        let s = serve(&["--self-signed"]).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(
            s.platforms,
            PlatformSource::Static(vec![Platform::parse("linux/amd64").unwrap()])
        );
        assert_eq!(s.policy, Policy::default());
        assert_eq!(s.deadline, DEFAULT_DEADLINE);
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "listen: 127.0.0.1:9443\nplatforms: [linux/amd64, linux/arm64]\nmode: warn\nreviewDeadline: 3s\n\
             selfSigned: true\nexemptImages: ['registry.k8s.io/*']\ntekton:\n  imageParams: [BASE_IMAGE]\ncache:\n  tagTtl: 30s\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = serve(&["--config", p]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9443");
        assert_eq!(s.policy.mode, Mode::Warn);
        assert_eq!(s.deadline, Duration::from_secs(3));
        assert_eq!(s.registry.tag_ttl, Duration::from_secs(30));
        assert_eq!(s.extract.tekton_image_params, vec!["BASE_IMAGE"]);
        assert_eq!(
            s.registry.concurrency,
            crate::resolver::throttle::DEFAULT_CONCURRENCY
        );
        assert!(s.registry.mirrors.is_empty());
        let PlatformSource::Static(list) = &s.platforms else {
            panic!()
        };
        assert_eq!(list.len(), 2);
        let s = serve(&["--config", p, "--mode", "audit", "-p", "linux/s390x"]).unwrap();
        assert_eq!(s.policy.mode, Mode::Audit);
        assert_eq!(
            s.platforms,
            PlatformSource::Static(vec![Platform::parse("linux/s390x").unwrap()])
        );
    }

    #[test]
    fn runtime_matcher_for_static_lists_only() {
        let runtimes = |s: &Settings| match &s.platforms {
            PlatformSource::Static(list) => list.iter().map(|p| p.runtime).collect::<Vec<_>>(),
            PlatformSource::Auto => panic!("static expected"),
        };
        let s = serve(&["--self-signed", "-p", "linux/amd64,linux/arm64"]).unwrap();
        assert_eq!(runtimes(&s), [RuntimeMatcher::Strict; 2]);
        let s = serve(&["--self-signed", "--runtime-matcher", "containerd-1.7"]).unwrap();
        assert_eq!(runtimes(&s), [RuntimeMatcher::Containerd17]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "selfSigned: true\nruntimeMatcher: containerd-1.7\n").unwrap();
        let file = path.to_str().unwrap();
        let s = serve(&["--config", file]).unwrap();
        assert_eq!(runtimes(&s), [RuntimeMatcher::Containerd17]);
        let s = serve(&["--config", file, "--runtime-matcher", "strict"]).unwrap();
        assert_eq!(runtimes(&s), [RuntimeMatcher::Strict]);
        // With live nodes the setting could not take effect: an error, not a silent no-op.
        let err = serve(&["--config", file, "-p", "auto"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--platform auto"), "{err}");
        std::fs::write(&path, "selfSigned: true\nruntimeMatcher: containerd-2\n").unwrap();
        let err = serve(&["--config", file]).unwrap_err().to_string();
        assert!(
            err.contains("runtimeMatcher") || err.contains("containerd-2"),
            "{err}"
        );
    }

    #[test]
    fn registry_manners_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "selfSigned: true\nregistryConcurrency: 4\nmirrors:\n  docker.io: [mirror-a.internal:5000, mirror-b.internal]\n",
        )
        .unwrap();
        let s = serve(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(s.registry.concurrency, 4);
        assert_eq!(
            s.registry.mirrors["docker.io"],
            ["mirror-a.internal:5000", "mirror-b.internal"]
        );
    }

    /// Where archgate runs decides what it reads; `--platform` only where platforms come from.
    /// Before, `-p linux/amd64` silently dropped namespace modes, pull secrets and Tekton refs.
    #[test]
    fn cluster_access_is_not_tied_to_platform_auto() {
        // The test process is not in a pod.
        assert!(std::env::var_os("KUBERNETES_SERVICE_HOST").is_none());
        let s = serve(&[
            "--self-signed",
            "-p",
            "linux/amd64",
            "--kubeconfig",
            "/k/config",
        ])
        .unwrap();
        assert_eq!(s.cluster, ClusterAccess::Kubeconfig("/k/config".into()));
        assert!(matches!(s.platforms, PlatformSource::Static(_)));
        let s = serve(&["--self-signed", "-p", "linux/amd64"]).unwrap();
        assert_eq!(s.cluster, ClusterAccess::None);
        let s = serve(&["--self-signed", "-p", "auto"]).unwrap();
        assert_eq!(s.cluster, ClusterAccess::Inferred);
        // A setting that cannot take effect is a startup error, never a silent no-op.
        let err = serve(&["--self-signed", "--pull-secrets"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--kubeconfig"), "{err}");
        let s = serve(&[
            "--self-signed",
            "--pull-secrets",
            "--kubeconfig",
            "/k/config",
        ])
        .unwrap();
        assert!(s.pull_secrets);
        assert_eq!(
            s.tekton_controller,
            crate::admission::DEFAULT_TEKTON_CONTROLLER
        );
    }

    /// Before, `--self-signed-ca-out`/`--dns-name` were refused unless `--self-signed` was on the
    /// command line, even with `selfSigned: true` in the config file.
    #[test]
    fn self_signed_details_combine_with_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "selfSigned: true\n").unwrap();
        let p = path.to_str().unwrap();
        let s = serve(&[
            "--config",
            p,
            "--self-signed-ca-out",
            "/tmp/ca.pem",
            "--dns-name",
            "hook.local",
        ])
        .unwrap();
        let TlsSource::SelfSigned { ca_out, dns_names } = s.tls else {
            panic!("self-signed expected")
        };
        assert_eq!(ca_out, Some("/tmp/ca.pem".into()));
        assert_eq!(dns_names, ["hook.local"]);
        let err = serve(&["--tls-cert", "a", "--tls-key", "b", "--dns-name", "x"]).unwrap_err();
        assert!(err.to_string().contains("--self-signed"), "{err}");
    }

    /// Before, a file with both served the self-signed certificate without a word (and nothing
    /// the API server trusts); a flag still overrides the file.
    #[test]
    fn a_file_with_two_serving_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "selfSigned: true\ntlsCert: /c/tls.crt\ntlsKey: /c/tls.key\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let err = serve(&["--config", p]).unwrap_err().to_string();
        assert!(err.contains("selfSigned: true and tlsCert/tlsKey"), "{err}");
        assert!(matches!(
            serve(&["--config", p, "--self-signed"]).unwrap().tls,
            TlsSource::SelfSigned { .. }
        ));
        assert!(matches!(
            serve(&["--config", p, "--tls-cert", "a", "--tls-key", "b"])
                .unwrap()
                .tls,
            TlsSource::Files(_)
        ));
    }

    /// `Duration::from_secs_f64` panicked on these (exit 101).
    #[test]
    fn durations_past_what_a_duration_holds_are_errors_not_panics() {
        assert!(
            parse_duration("1e300h")
                .unwrap_err()
                .contains("not a duration")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "selfSigned: true\nreviewDeadline: 1e20\n").unwrap();
        let err = serve(&["--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a duration"), "{err}");
        let err = serve(&["--self-signed", "--review-deadline", "1e20"]).unwrap_err();
        assert!(matches!(err, ConfigError::Deadline(_)), "{err}");
    }

    #[test]
    fn errors_name_the_fix() {
        assert!(serve(&[]).unwrap_err().to_string().contains("--tls-cert"));
        assert!(
            serve(&["--self-signed", "-p", "linux"])
                .unwrap_err()
                .to_string()
                .starts_with("--platform")
        );
        assert!(serve(&["--self-signed", "-p", "auto", "-p", "linux/amd64"]).is_err());
        assert_eq!(
            serve(&["--self-signed", "-p", "auto"]).unwrap().platforms,
            PlatformSource::Auto
        );
        assert!(
            serve(&["--self-signed", "--review-deadline", "45"])
                .unwrap_err()
                .to_string()
                .contains("29")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "lisen: 1.2.3.4:1\n").unwrap();
        let err = serve(&["--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        std::fs::write(&path, "registryConcurrency: 0\n").unwrap();
        let err = serve(&["--self-signed", "--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("registryConcurrency"), "{err}");
        std::fs::write(
            &path,
            "mirrors:\n  docker.io: [\"https://mirror.example/v2\"]\n",
        )
        .unwrap();
        let err = serve(&["--self-signed", "--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mirrors.docker.io") && err.contains("HOST[:PORT]"),
            "{err}"
        );
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    }
}
