//! `archgate scan`: the webhook's third front door. What would enforce mode deny in this cluster
//! today, and which pods run now on a node whose platform their image lacks?
//!
//! Every object the webhook reviews is listed page by page ([`list`]) and goes through the same
//! [`Pipeline::review`] as a webhook request would, with the same live cluster view
//! ([`crate::cluster::watch`]: node platforms, namespace modes, pull secrets, Tekton catalog) and
//! the same namespace exemptions and modes ([`Admission`]'s own rule). The policy words the
//! findings; [`running`] adds what only a pod's status shows; [`report`] writes them. Read-only
//! unless `--apply` writes PolicyReports.
//!
//! Exit codes are `check`'s: 0 clean, 1 findings, 2 could not scan (see
//! [`crate::cli::SCAN_EXIT_CODES`]).

mod list;
pub mod report;
pub mod running;

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::future::BoxFuture;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::Value;
use tokio::time::Instant;

use crate::admission::Admission;
use crate::check::{EXIT_OK, EXIT_TROUBLE};
use crate::cli::{RuntimeArgs, ScanArgs, ScanOutput, ServeArgs};
use crate::config::{self, ConfigError};
use crate::metrics::Metrics;
use crate::pipeline::{self, Pipeline};
use crate::platform::Platform;
use crate::policy::{self, Finding, Mode, OnRegistryError, Policy};
use crate::resolver::{Credentials, Resolver};
use crate::scheduling::NodeView;
use crate::subject::{Kind, Subject};

use list::{Pager, Source};
use report::{Entry, Group, ObjectId, Report, Status};

/// How long the cluster view may take to list everything once.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// One object's review, registries included (a webhook review has 8 s; a scan is not in a hurry).
const REVIEW_DEADLINE: Duration = Duration::from_secs(30);
/// The field manager of `--apply`.
const FIELD_MANAGER: &str = "archgate-scan";

/// Why a scan could not run at all (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("--apply writes PolicyReports: add -o policyreport")]
    ApplyNeedsPolicyReport,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("{0}")]
    Registry(String),
    #[error(
        "the cluster view did not sync within {} s (the warnings above say which list was refused): deploy/components/scan/rbac.yaml grants what scan reads",
        .0.as_secs()
    )]
    NotSynced(Duration),
}

/// The webhook's settings, resolved from its config file (`--config`) and scan's flags by the
/// webhook's own code, so that a scan judges with the same registries, mirrors, credentials,
/// exemptions, Tekton parameters and platforms. What enforce mode would do is the question, so
/// `mode` and `onRegistryError` are not taken from the file; the platforms are the live Nodes'
/// unless the file lists its own.
fn webhook_settings(args: &ScanArgs) -> Result<config::Settings, ScanError> {
    let file_platforms = match &args.config {
        Some(path) => config::read_file(path)?.platforms,
        None => Vec::new(),
    };
    let serve = ServeArgs {
        config: args.config.clone(),
        listen: None,
        admin_listen: None,
        tls_cert: None,
        tls_key: None,
        // A scan serves nothing: this only satisfies the TLS settings, which are not read.
        self_signed: true,
        self_signed_ca_out: None,
        dns_names: Vec::new(),
        platforms: if file_platforms.is_empty() {
            vec!["auto".to_string()]
        } else {
            Vec::new()
        },
        mode: None,
        on_registry_error: None,
        on_missing_image: args.on_missing_image,
        review_deadline: None,
        exempt: args.exempt.clone(),
        pull_secrets: args.pull_secrets,
        // Scan reads the cluster through its own --kubeconfig/--context (`kube_config`); this
        // only tells the settings that there is one, which pull secrets need.
        kubeconfig: Some(args.cluster.kubeconfig.clone().unwrap_or_default()),
        tekton_controller: None,
        log_format: None,
        runtime: RuntimeArgs::default(),
        registry: args.registry.clone(),
    };
    Ok(config::Settings::resolve(&serve)?)
}

/// Runs the scan and writes the report; returns the exit code.
pub async fn run(args: ScanArgs) -> i32 {
    crate::check::cli_logging();
    let scanned = match Scanner::connect(&args).await {
        Ok(scanner) => scanner.scan(&args).await.map(|r| (scanner, r)),
        Err(e) => Err(e),
    };
    let (scanner, report) = match scanned {
        Ok(done) => done,
        Err(e) => {
            eprintln!("archgate scan: {e}");
            return EXIT_TROUBLE;
        }
    };
    for note in &report.notes {
        eprintln!("archgate scan: {note}");
    }
    let mut code = report.exit_code();
    let text = match args.output {
        ScanOutput::Text => report.text(),
        ScanOutput::Json => pretty(&report.json()),
        ScanOutput::Policyreport => {
            let reports = report.policy_reports(now());
            if args.apply {
                let mut said = String::new();
                for r in &reports {
                    match apply(&scanner.client, r).await {
                        Ok(line) => said.push_str(&format!("{line}\n")),
                        Err(why) => {
                            eprintln!("archgate scan: {why}");
                            if code == EXIT_OK {
                                code = EXIT_TROUBLE;
                            }
                        }
                    }
                }
                said
            } else {
                pretty(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": reports}))
            }
        }
    };
    if args.output != ScanOutput::Text {
        eprintln!("{}", report.summary_line());
    }
    write_stdout(&text);
    code
}

/// The webhook's pieces, pointed at a cluster.
struct Scanner {
    client: Client,
    /// The webhook's own front door: its pipeline, cluster view, policy and namespace rule.
    admission: Admission,
    concurrency: usize,
}

impl Scanner {
    /// Connects, starts the cluster view and waits until it has listed everything once.
    async fn connect(args: &ScanArgs) -> Result<Self, ScanError> {
        if args.apply && args.output != ScanOutput::Policyreport {
            return Err(ScanError::ApplyNeedsPolicyReport);
        }
        let settings = webhook_settings(args)?;
        let cluster = &args.cluster;
        let config =
            config::kube_config(cluster.kubeconfig.as_deref(), cluster.context.as_deref()).await?;
        let client = Client::try_from(config).map_err(ScanError::Client)?;
        let resolver = Resolver::new(settings.registry.clone(), Arc::new(Metrics::new()))
            .map_err(|e| ScanError::Registry(e.to_string()))?;
        // As the webhook: a docker config the file names but this machine lacks (the shipped
        // config names the pod's mount) means anonymous pulls, said once.
        let credentials = match settings.docker_config.as_deref() {
            Some(path) if !path.exists() => {
                eprintln!(
                    "archgate scan: docker config {} not found; registries are asked anonymously",
                    path.display()
                );
                Credentials::default()
            }
            path => Credentials::load(path).map_err(|e| ScanError::Registry(e.to_string()))?,
        };
        let metrics = Arc::new(Metrics::new());
        let view = crate::cluster::watch(
            client.clone(),
            credentials,
            metrics.clone(),
            settings.pull_secrets,
            &settings.platforms,
        );
        let started = Instant::now();
        while !view.ready() {
            if started.elapsed() > SYNC_TIMEOUT {
                return Err(ScanError::NotSynced(SYNC_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let admission = Admission {
            pipeline: Pipeline::new(Arc::new(resolver), settings.exemptions, settings.extract),
            cluster: view,
            // What enforce mode would do; a registry that cannot be asked is said, not denied.
            policy: Policy {
                mode: Mode::Enforce,
                on_registry_error: OnRegistryError::Allow,
                on_missing_image: settings.policy.on_missing_image,
            },
            deadline: REVIEW_DEADLINE,
            exempt_namespaces: settings.exempt_namespaces,
            tekton_controller: settings.tekton_controller,
            metrics,
        };
        Ok(Self {
            client,
            admission,
            concurrency: usize::from(args.concurrency),
        })
    }

    /// Lists every kind, a page at a time, and reviews each page with bounded concurrency.
    async fn scan(&self, args: &ScanArgs) -> Result<Report, ScanError> {
        let mut report = Report::default();
        let mut progress = Progress::new();
        let namespaces: Vec<Option<&str>> = if args.namespaces.is_empty() {
            vec![None]
        } else {
            args.namespaces.iter().map(|n| Some(n.as_str())).collect()
        };
        let mut tekton_missing = false;
        let mut resumed_note = false;
        for source in Source::all() {
            for namespace in &namespaces {
                let mut pager = Pager::new(&self.client, &source, *namespace);
                loop {
                    let page = match pager.next().await {
                        Ok(Some(page)) => page,
                        Ok(None) => break,
                        Err(e) if source.optional() && is_not_found(&e) => {
                            if !tekton_missing {
                                report.notes.push(format!(
                                    "Tekton is not installed ({}.{} is not served): no PipelineRun or TaskRun scanned",
                                    source.resource.plural, source.resource.group
                                ));
                                tekton_missing = true;
                            }
                            break;
                        }
                        // One kind not listed (a 403 where RBAC lacks it) is what could not
                        // be checked, not the end of the scan: what was found elsewhere is
                        // still reported, and exit 1 still beats 2.
                        Err(error) => {
                            // The API server's own sentence, not kube's debug dump of its Status.
                            let reason = match &error {
                                kube::Error::Api(status) => status.message.clone(),
                                other => other.to_string(),
                            };
                            let refused = format!(
                                "cannot list {} ({}): {reason}",
                                source.resource.plural, source.resource.api_version
                            );
                            report.groups.push(Group {
                                object: ObjectId {
                                    namespace: namespace.unwrap_or_default().to_string(),
                                    kind: source.kind.name().to_string(),
                                    name: "*".to_string(),
                                    api_version: source.resource.api_version.clone(),
                                    uid: None,
                                },
                                reviewed: false,
                                entries: vec![Entry::new(Status::Error, refused)],
                            });
                            break;
                        }
                    };
                    if pager.resumed && !resumed_note {
                        report.notes.push(format!(
                            "the list of {} outlived its snapshot and went on in a newer one: objects changed meanwhile may be missed",
                            source.resource.plural
                        ));
                        resumed_note = true;
                    }
                    let listed = page.len();
                    self.page(&source, page, &mut report).await;
                    progress.add(listed, source.kind);
                }
            }
        }
        progress.clear();
        Ok(report)
    }

    /// Reviews one page: each object the webhook would review on its own, and each pod's running
    /// containers against their nodes; at most `concurrency` at once.
    async fn page(&self, source: &Source, page: Vec<DynamicObject>, report: &mut Report) {
        let items: Vec<(ObjectId, Subject)> = page
            .into_iter()
            .filter_map(|object| {
                let id = ObjectId {
                    namespace: object.metadata.namespace.clone().unwrap_or_default(),
                    kind: source.kind.name().to_string(),
                    name: object.metadata.name.clone().unwrap_or_default(),
                    api_version: source.resource.api_version.clone(),
                    uid: object.metadata.uid.clone(),
                };
                // Exempt namespaces and those labelled `archgate.io/mode: off`, as the webhook.
                let mode = self.admission.mode_for(&id.namespace)?;
                if mode != Mode::Enforce {
                    report.lenient.insert(id.namespace.clone(), mode);
                }
                let subject = Subject {
                    kind: source.kind,
                    object: list::object_json(object),
                };
                Some((id, subject))
            })
            .collect();
        report
            .namespaces
            .extend(items.iter().map(|(id, _)| id.namespace.clone()));
        let nodes = self.admission.cluster.nodes();
        let mut work: Vec<BoxFuture<'_, (Option<Group>, Vec<String>)>> = Vec::new();
        for (id, subject) in &items {
            if source.kind == Kind::Pod {
                let nodes = nodes.clone();
                work.push(Box::pin(async move {
                    (self.running(id, &subject.object, &nodes).await, Vec::new())
                }));
            }
            if list::reviewed_on_its_own(source.kind, &subject.object) {
                work.push(Box::pin(async move {
                    let (group, notes) = self.review(id, subject).await;
                    (Some(group), notes)
                }));
            }
        }
        let done: Vec<(Option<Group>, Vec<String>)> = futures::stream::iter(work)
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for (group, notes) in done {
            report.groups.extend(group);
            report.notes.extend(notes);
        }
    }

    /// One object through the webhook's pipeline, worded as the webhook words it; the notes
    /// (values known only at run time, ...) go to stderr.
    async fn review(&self, id: &ObjectId, subject: &Subject) -> (Group, Vec<String>) {
        let label = id.label();
        let request = pipeline::Request {
            subject,
            old: None,
            cluster: self.admission.cluster.as_ref(),
            from_tekton_controller: false,
            deadline: Instant::now() + REVIEW_DEADLINE,
        };
        let mut entries = Vec::new();
        let mut notes = Vec::new();
        match self.admission.pipeline.review(request).await {
            Ok(reviewed) => {
                notes.extend(
                    reviewed
                        .notes
                        .iter()
                        .map(|n| format!("{} {}/{}: {n}", id.kind, id.namespace, id.name)),
                );
                for reason in &reviewed.unchecked {
                    entries.push(Entry::new(Status::Error, format!("{label}: {reason}")));
                }
                let mut checked = reviewed.checked;
                for c in &mut checked {
                    // A report over a namespace names each object, as `check` does.
                    c.target.location.object = Some(label.clone());
                }
                for c in &checked {
                    if let Some(finding) = policy::finding(c) {
                        entries.push(self.entry(c, &finding));
                    }
                }
                entries.extend(
                    policy::hints(&checked)
                        .into_iter()
                        .map(|h| Entry::new(Status::Hint, h)),
                );
            }
            Err(e) => entries.push(Entry::new(
                Status::Error,
                format!("{label}: {}", policy::unreadable(&e)),
            )),
        }
        let group = Group {
            object: id.clone(),
            reviewed: true,
            entries,
        };
        (group, notes)
    }

    /// A finding as a report line: `FAIL` when enforce mode would deny for it.
    fn entry(&self, c: &policy::Checked, finding: &Finding) -> Entry {
        let status = match finding {
            f if f.denies(&self.admission.policy) => Status::Fail,
            Finding::NotFound { .. } => Status::Warn,
            Finding::NoCandidates { .. } => Status::Skip,
            _ => Status::Error,
        };
        let (available, missing) = match &c.outcome {
            policy::Outcome::Resolved(r) => (
                r.platforms.iter().map(Platform::node_name).collect(),
                c.missing().iter().map(Platform::node_name).collect(),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        Entry {
            container: Some(c.target.location.container.clone()).filter(|n| !n.is_empty()),
            image: Some(c.target.image.clone()),
            missing,
            available,
            ..Entry::new(status, finding.to_string())
        }
    }

    /// A pod's running containers against their nodes; `None` when nothing is wrong.
    async fn running(&self, id: &ObjectId, pod: &Value, nodes: &[NodeView]) -> Option<Group> {
        let found = running::check(
            pod,
            &id.label(),
            nodes,
            &self.admission.pipeline.resolver,
            self.admission.cluster.as_ref(),
            &self.admission.pipeline.exemptions,
            Instant::now() + REVIEW_DEADLINE,
        )
        .await;
        let entries: Vec<Entry> = found
            .into_iter()
            .map(|(container, found)| {
                let base = match found {
                    running::Found::Wrong(wrong) => Entry {
                        available: wrong.available.iter().map(Platform::node_name).collect(),
                        missing: vec![wrong.node_platform.node_name()],
                        ..Entry::new(Status::Wrong, wrong.to_string())
                    },
                    running::Found::NotChecked(why) => Entry::new(Status::Error, why),
                };
                Entry {
                    container: Some(container.container),
                    image: Some(container.image),
                    node: Some(container.node),
                    ..base
                }
            })
            .collect();
        (!entries.is_empty()).then(|| Group {
            object: id.clone(),
            reviewed: false,
            entries,
        })
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Writes one report with server-side apply; says what was written, as kubectl would.
async fn apply(client: &Client, report: &Value) -> Result<String, String> {
    let kind = report["kind"].as_str().unwrap_or_default();
    let plural = format!("{}s", kind.to_lowercase());
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", kind),
        &plural,
    );
    let namespace = report["metadata"]["namespace"].as_str();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let place = namespace
        .map(|ns| format!(" in namespace {ns}"))
        .unwrap_or_default();
    match api
        .patch(report::REPORT_NAME, &params, &Patch::Apply(report))
        .await
    {
        Ok(_) => Ok(format!(
            "{plural}.wgpolicyk8s.io/{}{place} serverside-applied",
            report::REPORT_NAME
        )),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(format!(
            "cannot write {kind} {}{place}: the cluster does not serve wgpolicyk8s.io/v1alpha2 {kind}s: install the PolicyReport CRDs (Kyverno and Policy Reporter ship them)",
            report::REPORT_NAME
        )),
        Err(kube::Error::Api(s)) if s.code == 403 => Err(format!(
            "cannot write {kind} {}{place}: forbidden: bind the ClusterRole archgate-scan-reports (deploy/components/scan/rbac.yaml)",
            report::REPORT_NAME
        )),
        Err(e) => Err(format!(
            "cannot write {kind} {}{place}: {e}",
            report::REPORT_NAME
        )),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// A reader that went away (`archgate scan | head`) is not an error.
fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => eprintln!("archgate scan: {e}"),
        _ => {}
    }
}

/// `scanned 1200 objects (Pod)` on one rewritten stderr line, only when stderr is a terminal:
/// in a pipe or a log it would be noise.
struct Progress {
    tty: bool,
    objects: usize,
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            objects: 0,
            shown: false,
        }
    }

    fn add(&mut self, listed: usize, kind: Kind) {
        self.objects += listed;
        if self.tty {
            eprint!("\r\x1b[Kscanning: {} objects listed ({kind})", self.objects);
            self.shown = true;
        }
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}
