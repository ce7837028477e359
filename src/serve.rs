//! `archgate serve`: wires settings, resolver, cluster view, TLS and listeners together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::admission::Admission;
use crate::cli::ServeArgs;
use crate::cluster::{ClusterView, StaticCluster};
use crate::config::{PlatformSource, Settings, TlsSource};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::resolver::{Credentials, Resolver};
use crate::server::{self, Readiness};
use crate::tls::{self, CurrentKey};
use crate::{certs, telemetry};

/// How often certificate files are re-read; rotation takes effect within this.
pub const CERT_POLL: Duration = Duration::from_secs(1);

/// A running webhook: its bound addresses and a handle to stop it.
pub struct Running {
    pub webhook: SocketAddr,
    pub admin: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight reviews finish, and waits until both listeners are done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// `archgate serve`: start, then run until SIGTERM or Ctrl-C, then drain for at most the
/// webhook's drain grace (both listeners drain at once, each within its grace).
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args)?;
    telemetry::init(settings.log_format);
    let grace = settings
        .webhook_limits
        .drain_grace
        .max(settings.admin_limits.drain_grace);
    let signals = Signals::install()?;
    let running = start(settings).await?;
    signals.shutdown().await;
    info!(
        grace_s = grace.as_secs_f64(),
        "shutting down: finishing in-flight reviews"
    );
    // The listeners drop what is left at their grace; this is the backstop for anything else
    // (a stuck task must not outlive the kubelet's patience).
    if tokio::time::timeout(grace + Duration::from_secs(2), running.shutdown())
        .await
        .is_err()
    {
        warn!("drain did not finish within the grace; exiting anyway");
    }
    info!("stopped");
    Ok(())
}

/// Binds both listeners and serves in the background. Tests use this with port 0.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let resolver = Arc::new(Resolver::new(settings.registry.clone(), metrics.clone())?);
    let credentials = load_credentials(&settings)?;
    let cluster: Arc<dyn ClusterView> = match settings.cluster.client_config().await? {
        Some(config) => {
            let client = kube::Client::try_from(config).with_context(|| {
                format!("cannot build a Kubernetes client ({})", settings.cluster)
            })?;
            crate::cluster::watch(
                client,
                credentials,
                metrics.clone(),
                settings.pull_secrets,
                &settings.platforms,
            )
        }
        None => match &settings.platforms {
            PlatformSource::Static(platforms) => {
                Arc::new(StaticCluster::new(platforms, credentials))
            }
            // ClusterAccess::decide never leaves `auto` without a cluster.
            PlatformSource::Auto => anyhow::bail!(
                "--platform auto needs the Kubernetes API: run in the cluster or pass --kubeconfig"
            ),
        },
    };
    let current = serving_key(&settings.tls)?;
    let tls_config = tls::server_config(current)?;

    let admission = Arc::new(Admission {
        pipeline: Pipeline::new(
            resolver,
            settings.exemptions.clone(),
            settings.extract.clone(),
        ),
        cluster: cluster.clone(),
        policy: settings.policy,
        deadline: settings.deadline,
        exempt_namespaces: settings.exempt_namespaces.clone(),
        tekton_controller: settings.tekton_controller.clone(),
        metrics: metrics.clone(),
    });

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let readiness = Readiness::new(Arc::new(move || cluster.ready()));
    let admin_listener = server::bind(
        settings.admin_listen,
        "the admin endpoints (--admin-listen)",
    )
    .await?;
    let webhook_listener = server::bind(settings.listen, "the webhook (--listen)").await?;
    let (webhook, admin) = (webhook_listener.local_addr()?, admin_listener.local_addr()?);
    info!(
        version = %env!("CARGO_PKG_VERSION"),
        %webhook,
        %admin,
        mode = %settings.policy.mode,
        "archgate serving"
    );
    readiness.set_listening();
    let admin_task = tokio::spawn(server::serve(
        admin_listener,
        None,
        server::admin_router(readiness, metrics),
        settings.admin_limits.clone(),
        stopped(),
    ));
    let acceptor = TlsAcceptor::from(Arc::new(tls_config));
    let webhook_task = server::serve(
        webhook_listener,
        Some(acceptor),
        server::router_with(admission, &settings.webhook_limits),
        settings.webhook_limits.clone(),
        stopped(),
    );
    let task = tokio::spawn(async move {
        webhook_task.await;
        let _ = admin_task.await;
    });
    Ok(Running {
        webhook,
        admin,
        stop,
        task,
    })
}

/// The webhook's own docker config. An optional Secret that is not mounted means anonymous pulls.
fn load_credentials(settings: &Settings) -> anyhow::Result<Credentials> {
    match &settings.docker_config {
        Some(path) if !path.exists() => {
            warn!(path = %path.display(), "docker config not found; registries are asked anonymously");
            Ok(Credentials::default())
        }
        path => {
            let credentials = Credentials::load(path.as_deref())?;
            let helpers = credentials.helper_names();
            if !helpers.is_empty() {
                warn!(helpers = %helpers.join(","), "the docker config names credential helpers; the webhook runs no programs, so their registries are asked anonymously");
            }
            Ok(credentials.without_helpers())
        }
    }
}

fn serving_key(source: &TlsSource) -> anyhow::Result<Arc<CurrentKey>> {
    match source {
        TlsSource::Files(files) => {
            let (key, seen) = files.load()?;
            let current = CurrentKey::new(key);
            tokio::spawn(files.clone().watch(current.clone(), seen, CERT_POLL));
            Ok(current)
        }
        TlsSource::SelfSigned { ca_out, dns_names } => {
            let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            names.extend(dns_names.iter().cloned());
            let bundle = certs::generate(&names)?;
            if let Some(path) = ca_out {
                std::fs::write(path, &bundle.ca_pem)
                    .with_context(|| format!("--self-signed-ca-out {}", path.display()))?;
                info!(path = %path.display(), "wrote the self-signed CA certificate");
            }
            let key = tls::certified_key(
                bundle.cert_pem.as_bytes(),
                bundle.key_pem.as_bytes(),
                "self-signed".as_ref(),
                "self-signed".as_ref(),
            )?;
            Ok(CurrentKey::new(key))
        }
    }
}

/// The signals `serve` handles, installed before the listeners open (SIGHUP's default
/// action would kill the process and drop in-flight reviews).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
                hangup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on SIGTERM (the kubelet) or Ctrl-C. SIGHUP is logged and otherwise ignored:
    /// certificates are re-read every [`CERT_POLL`] anyway, and nothing else is reloadable.
    async fn shutdown(mut self) {
        #[cfg(unix)]
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
                _ = self.hangup.recv() => {
                    info!("SIGHUP ignored: certificates are re-read every second without it");
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
