//! The command line: `serve`, `check`, `scan` and `certs`. Flags that the config file can also
//! set are `Option`s here, so that "not given" is distinguishable from a default and the file can
//! fill it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::platform::RuntimeMatcher;
use crate::policy::{Mode, OnMissingImage, OnRegistryError};

#[derive(Debug, Parser)]
#[command(
    name = "archgate",
    version,
    propagate_version = true,
    about = "Deny images that lack a platform the pod could be scheduled on"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The command line of this process; on a usage error, says it and exits 2 as clap does.
    pub fn from_command_line() -> Self {
        Self::try_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// [`Parser::try_parse_from`], plus the rules clap's derive cannot say.
    ///
    /// `--build-arg` needs `--dockerfile`, but only when given on the command line: clap's
    /// `requires` counts a value from the environment as given, so ARCHGATE_BUILD_ARGS, exported
    /// by a CI job for its Dockerfile step, would make every other `check` of that job a usage
    /// error. From the environment it is a setting for whichever `check` reads a Dockerfile.
    pub fn try_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Self::command();
        let matches = command.try_get_matches_from_mut(args)?;
        if let Some(("check", check)) = matches.subcommand() {
            let given = check.value_source("build_args") == Some(ValueSource::CommandLine);
            if given && !check.contains_id("dockerfile") {
                let check_command = command
                    .find_subcommand_mut("check")
                    .expect("`check` is a subcommand");
                return Err(check_command.error(
                    ErrorKind::MissingRequiredArgument,
                    "--build-arg needs --dockerfile: build arguments are for the Dockerfile being checked",
                ));
            }
        }
        Self::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
    }
}

// Parsed once at startup; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the admission webhook (HTTPS) and its admin endpoints (plain HTTP).
    Serve(ServeArgs),
    /// Check images, or the pods in Kubernetes YAML, from the command line (for CI pre-flight).
    Check(CheckArgs),
    /// Report what enforce mode would deny in a live cluster today, and pods running now on a
    /// node whose platform their image lacks (read-only unless --apply).
    Scan(ScanArgs),
    /// Write a CA and a serving certificate for the webhook's Service (the self-signed install).
    Certs(CertsArgs),
    /// Print a shell completion script: `archgate completions bash > /etc/bash_completion.d/archgate`.
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `archgate check`'s exit codes, shown in its `--help` (other tools rely on them).
pub const CHECK_EXIT_CODES: &str = "Exit status:
  0  every image provides every platform it needs
  1  an image lacks a platform or does not exist (even if something else could not be checked)
  2  nothing was found wrong, but something could not be checked: bad usage, an invalid
     reference or platform, an unreadable file or document, -f input holding nothing to check,
     a registry or bundle that could not be asked";

/// `archgate scan`'s exit codes, shown in its `--help`; the same meanings as `check`'s.
pub const SCAN_EXIT_CODES: &str = "Exit status:
  0  nothing would be denied and no pod runs on a platform its image lacks
  1  something would be denied, or a pod runs on a platform its image lacks (even if something
     else could not be checked)
  2  nothing was found wrong, but something could not be scanned: bad usage, the cluster could
     not be read, a registry that could not be asked, or --apply could not write a report";

/// Which cluster to read, as kubectl chooses it; shared by `scan` and `check --platform auto`.
#[derive(Debug, Args, Clone, Default)]
pub struct ClusterArgs {
    /// Kubeconfig to read the cluster through [default: $KUBECONFIG or ~/.kube/config, then
    /// the in-cluster ServiceAccount when running in a pod].
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use [default: its current-context].
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// What is never checked; shared by `serve` and `scan`.
#[derive(Debug, Args, Clone, Default)]
pub struct ExemptArgs {
    /// Namespace never checked (repeatable).
    #[arg(long = "exempt-namespace", value_name = "NAME")]
    pub exempt_namespaces: Vec<String>,
    /// Image glob never checked, e.g. 'registry.k8s.io/*' (repeatable).
    #[arg(long = "exempt-image", value_name = "GLOB")]
    pub exempt_images: Vec<String>,
}

/// How to reach registries; shared by `serve` and `check`.
#[derive(Debug, Args, Clone, Default)]
pub struct RegistryArgs {
    /// Registry spoken to over plain HTTP (HOST[:PORT], as written in image references).
    #[arg(
        long = "insecure-registry",
        value_name = "HOST[:PORT]",
        env = "ARCHGATE_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Extra CA certificate (PEM) to trust for registry TLS.
    #[arg(long, value_name = "PEM", env = "ARCHGATE_REGISTRY_CA")]
    pub registry_ca: Option<PathBuf>,
    /// Docker config.json with registry credentials [default: $DOCKER_CONFIG/config.json, then
    /// ~/.docker/config.json].
    #[arg(long, value_name = "PATH", env = "ARCHGATE_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
}

/// How the nodes of a `--platform` list pick an image's platform; shared by `serve` and `check`.
#[derive(Debug, Args, Clone, Default)]
pub struct RuntimeArgs {
    /// How the nodes of a --platform list pull: `strict` takes only the listed platform, as
    /// containerd 2.x does; `containerd-1.7` also takes what the CPU runs (amd64: 386; arm64:
    /// arm/v8 to v5; arm/v7: v6, v5), as containerd 1.6/1.7 and 2.x with use_local_image_pull do
    /// [default: strict]. With `--platform auto` each node's container runtime decides.
    #[arg(long, value_enum, value_name = "MATCHER")]
    pub runtime_matcher: Option<RuntimeMatcher>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// YAML config file; flags given on the command line override it.
    #[arg(long, value_name = "FILE", env = "ARCHGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the HTTPS webhook listener [default: 0.0.0.0:8443].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the plain-HTTP admin listener (/healthz, /readyz, /metrics) [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Serving certificate chain (PEM); reloaded when the file changes.
    #[arg(
        long,
        value_name = "PEM",
        requires = "tls_key",
        conflicts_with = "self_signed"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Serving private key (PEM).
    #[arg(
        long,
        value_name = "PEM",
        requires = "tls_cert",
        conflicts_with = "self_signed"
    )]
    pub tls_key: Option<PathBuf>,
    /// Make a CA and a serving certificate for localhost, 127.0.0.1 and every --dns-name.
    #[arg(long)]
    pub self_signed: bool,
    /// With --self-signed (or `selfSigned: true` in the config): write the CA certificate (PEM)
    /// here, for clients to trust.
    #[arg(long, value_name = "PATH")]
    pub self_signed_ca_out: Option<PathBuf>,
    /// With --self-signed (or `selfSigned: true`): an extra DNS name for the serving certificate.
    #[arg(long = "dns-name", value_name = "NAME")]
    pub dns_names: Vec<String>,
    /// Platform every candidate node may run (OS/ARCH[/VARIANT]; a Windows build as
    /// windows(10.0.17763)/amd64), or `auto` to read the cluster's nodes [default: linux/amd64].
    #[arg(short = 'p', long = "platform", value_name = "P")]
    pub platforms: Vec<String>,
    /// What to do with a finding [default: enforce].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// When a registry cannot be asked (unreachable, timeout, unauthorized) [default: allow].
    #[arg(long, value_enum)]
    pub on_registry_error: Option<OnRegistryError>,
    /// When an image does not exist [default: deny].
    #[arg(long, value_enum)]
    pub on_missing_image: Option<OnMissingImage>,
    /// Answer every review within this many seconds (under the webhook's timeoutSeconds) [default: 8].
    #[arg(long, value_name = "SECONDS")]
    pub review_deadline: Option<f64>,
    #[command(flatten)]
    pub exempt: ExemptArgs,
    /// Also use the pod's imagePullSecrets, or its ServiceAccount's when it names none (needs
    /// Secret read access and a cluster: in-cluster or --kubeconfig).
    #[arg(long)]
    pub pull_secrets: bool,
    /// Read the cluster (namespace modes, pull secrets, Tekton resources, and Nodes with
    /// `--platform auto`) through this kubeconfig [default: in-cluster when running in a pod;
    /// with `--platform auto` also $KUBECONFIG or ~/.kube/config].
    #[arg(long, value_name = "PATH", env = "ARCHGATE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// `userInfo.username` of the Tekton controller: only pods it creates may vouch for their
    /// platforms with TEKTON_PLATFORM_COMMANDS
    /// [default: system:serviceaccount:tekton-pipelines:tekton-pipelines-controller].
    #[arg(long, value_name = "USERNAME")]
    pub tekton_controller: Option<String>,
    /// Log format [default: plain].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
#[command(after_help = CHECK_EXIT_CODES)]
pub struct CheckArgs {
    /// Platform every image must provide (repeatable; a Windows build as
    /// windows(10.0.17763)/amd64), or `auto` for the platforms of a live cluster's Nodes
    /// (--kubeconfig, --context) [default: linux/amd64].
    #[arg(short = 'p', long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub platforms: Vec<String>,
    /// Kubernetes YAML or JSON (multi-document; `-` for stdin): checks every container of Pods,
    /// workload pod templates and Tekton runs.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// With `--platform auto`: the cluster whose Nodes give the platforms.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub dockerfile: DockerfileArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Images to check.
    #[arg(value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
#[command(after_help = SCAN_EXIT_CODES)]
pub struct ScanArgs {
    /// The webhook's YAML config file (its ConfigMap's `config.yaml`): registries, mirrors,
    /// credentials, exemptions, Tekton parameters and platforms as the webhook has them; the
    /// flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only this namespace (repeatable) [default: every namespace].
    #[arg(short = 'n', long = "namespace", value_name = "NAME")]
    pub namespaces: Vec<String>,
    /// As the webhook's: what is never checked.
    #[command(flatten)]
    pub exempt: ExemptArgs,
    /// Also use the pods' imagePullSecrets, or their ServiceAccounts' when they name none (reads
    /// Secrets), as the webhook's --pull-secrets.
    #[arg(long)]
    pub pull_secrets: bool,
    /// When an image does not exist [default: deny].
    #[arg(long, value_enum)]
    pub on_missing_image: Option<OnMissingImage>,
    /// Objects reviewed at once (registry requests are bounded per registry host as well).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Output format: text, json, or wgpolicyk8s.io PolicyReports (as Kyverno and Policy
    /// Reporter read them).
    #[arg(short = 'o', long, value_enum, default_value_t = ScanOutput::Text)]
    pub output: ScanOutput,
    /// With `-o policyreport`: write the reports to the cluster (server-side apply) instead of
    /// printing them.
    #[arg(long)]
    pub apply: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScanOutput {
    Text,
    Json,
    Policyreport,
}

/// `check --dockerfile`: the images a build pulls, for the platforms it pulls them for.
#[derive(Debug, Args, Clone, Default)]
pub struct DockerfileArgs {
    /// Dockerfile to check before it is built: the FROM images of the stages the target needs,
    /// and `COPY --from` and `RUN --mount=...,from=` images, for the build's target platforms (-p).
    #[arg(long, value_name = "PATH")]
    pub dockerfile: Option<PathBuf>,
    /// Build argument, as `docker build --build-arg` (repeatable; KEY alone takes $KEY from the
    /// environment; ARCHGATE_BUILD_ARGS holds one per line).
    #[arg(
        long = "build-arg",
        value_name = "KEY=VALUE",
        env = "ARCHGATE_BUILD_ARGS",
        value_delimiter = '\n'
    )]
    // Needs --dockerfile when given as a flag: checked by `Cli::try_from_args`, not `requires`.
    pub build_args: Vec<String>,
    /// Stage to build [default: the last stage].
    #[arg(long, value_name = "STAGE", requires = "dockerfile")]
    pub target: Option<String>,
    /// The builder's platform, for stages `FROM --platform=$BUILDPLATFORM` [default: linux on
    /// the CPU archgate runs on, as BuildKit builds even on macOS].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", requires = "dockerfile")]
    pub build_platform: Option<String>,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// The webhook's Service name.
    #[arg(long, default_value = "archgate")]
    pub service: String,
    /// The webhook's namespace.
    #[arg(long, default_value = "archgate")]
    pub namespace: String,
    /// Where to write ca.crt, tls.crt, tls.key and ca-bundle.b64.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// An extra DNS name for the serving certificate (repeatable), for a webhook reached by
    /// `clientConfig.url` instead of its Service.
    #[arg(long = "dns-name", value_name = "NAME")]
    pub dns_names: Vec<String>,
    /// An IP address for the serving certificate (repeatable), e.g. 127.0.0.1 for a webhook the
    /// API server reaches at `https://127.0.0.1:PORT`.
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}
