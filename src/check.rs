//! `archgate check`: the webhook's pipeline for images and YAML files in CI.
//!
//! Every `-f` input is read document by document (a file or document that cannot be read is
//! reported on its own line and the rest are still checked; so is a `--dockerfile` that cannot,
//! and inputs holding nothing to review are said rather than passed), `List`s are expanded, and
//! YAML errors never quote the document (it may be a Secret). All documents form one
//! catalog, so a PipelineRun in one file finds its Pipeline in another. Each object goes through
//! [`Pipeline::review`] as the webhook's would, Tekton bundles included; findings are worded by
//! [`crate::policy`]. Candidate platforms are the `--platform` list, or with `--platform auto` a
//! live cluster's Nodes (`--kubeconfig`, `--context`): "would this pass in that cluster?".
//!
//! Exit codes (a contract other tools rely on): 0 all good; 1 some image lacks a platform or does
//! not exist, even if something else could not be checked; 2 nothing was found wrong but
//! something could not be checked (bad usage, an invalid reference or platform, an unreadable
//! file or document, a document without `kind`, `-f` input holding nothing to check, a registry
//! or bundle that could not be asked).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use serde::Serialize;
use serde_json::Value;

use crate::cli::{CheckArgs, ClusterArgs, Output, RegistryArgs, RuntimeArgs};
use crate::cluster::ClusterView;
use crate::config::{self, PlatformSource};
use crate::metrics::Metrics;
use crate::pipeline::{self, Exemptions, Pipeline};
use crate::platform::{self, Platform};
use crate::policy::{self, Checked, Finding, Outcome};
use crate::resolver::{Credentials, RegistryOptions, Resolver};
use crate::scheduling::NodeView;
use crate::subject::{Subject, expand_lists};
use crate::workload::{Catalog, ExtractOptions, Location, Placement, Target};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FINDINGS: i32 = 1;
pub const EXIT_TROUBLE: i32 = 2;

/// How long `check` waits for registries in all.
const CHECK_DEADLINE: Duration = Duration::from_secs(60);

/// One line of the report.
#[derive(Debug, Default, Serialize)]
pub struct Line {
    pub image: String,
    pub digest: Option<String>,
    pub platforms: Vec<String>,
    pub missing: Vec<String>,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Where a Dockerfile names the image: `Dockerfile line 3: FROM`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The text line, worded by the policy.
    #[serde(skip)]
    text: String,
    /// A hint line (how to fix what the lines before it found): text output only.
    #[serde(skip)]
    hint: bool,
    #[serde(skip)]
    exit: i32,
}

/// Runs the check and prints the report; returns the exit code.
pub async fn run(args: CheckArgs) -> i32 {
    cli_logging();
    match report(&args).await {
        Ok(lines) => {
            print(&lines, args.output);
            exit_code(&lines)
        }
        Err(message) => {
            eprintln!("archgate check: {message}");
            EXIT_TROUBLE
        }
    }
}

/// Logging for a command run by hand (`check`, `scan`): warnings only (a credential helper that
/// failed, a watch that was refused), as plain lines on stderr.
pub(crate) fn cli_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

/// The resolver and the user's own registry credentials, from the registry flags.
pub(crate) fn registry_access(registry: &RegistryArgs) -> Result<(Resolver, Credentials), String> {
    let ca_pem = match &registry.registry_ca {
        Some(path) => Some(
            std::fs::read(path).map_err(|e| format!("--registry-ca {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let options = RegistryOptions {
        insecure: registry.insecure_registries.clone(),
        ca_pem,
        ..RegistryOptions::default()
    };
    let resolver = Resolver::new(options, Arc::new(Metrics::new())).map_err(|e| e.to_string())?;
    let credentials =
        Credentials::load(registry.docker_config.as_deref()).map_err(|e| e.to_string())?;
    Ok((resolver, credentials))
}

/// A finding anywhere outranks trouble elsewhere: CI must fail on what is known to be wrong.
fn exit_code(lines: &[Line]) -> i32 {
    let has = |code| lines.iter().any(|l| l.exit == code);
    if has(EXIT_FINDINGS) {
        EXIT_FINDINGS
    } else if has(EXIT_TROUBLE) {
        EXIT_TROUBLE
    } else {
        EXIT_OK
    }
}

async fn report(args: &CheckArgs) -> Result<Vec<Line>, String> {
    let CheckArgs {
        platforms,
        files,
        runtime,
        cluster,
        dockerfile,
        registry,
        output: _,
        images,
    } = args;
    if images.is_empty() && files.is_empty() && dockerfile.dockerfile.is_none() {
        return Err(
            "nothing to check: name images, YAML files with -f, or a Dockerfile with --dockerfile"
                .into(),
        );
    }
    let nodes = candidate_nodes(platforms, runtime, cluster).await?;
    // The Dockerfile's pulls are for the build's platforms, whatever the nodes' runtimes.
    let mut platforms: Vec<Platform> = Vec::new();
    for node in nodes.iter() {
        if !platforms.contains(&node.platform) {
            platforms.push(node.platform.clone());
        }
    }
    let (resolver, credentials) = registry_access(registry)?;
    let deadline = tokio::time::Instant::now() + CHECK_DEADLINE;

    let mut documents = Vec::new();
    let mut lines = Vec::new();
    let mut empty_files = Vec::new();
    for path in files {
        // A file that cannot be read is one input not checked: the others still are, so a
        // finding elsewhere is reported and outranks it.
        let read = match read_documents(path) {
            Ok(read) => read,
            Err(e) => {
                let at = path.display().to_string();
                lines.push(not_checked(
                    at.clone(),
                    &at,
                    &format!("cannot be read: {e}"),
                ));
                continue;
            }
        };
        if read.is_empty() {
            empty_files.push(path);
        }
        for (index, document) in read.into_iter().enumerate() {
            match document {
                // `kubectl apply` refuses an object without a kind; skipping it as a kind
                // `check` does not review would pass a Pod whose `kind:` key is misspelt.
                Ok(document) if document["kind"].as_str().is_none_or(str::is_empty) => {
                    lines.push(unreadable(path, index + 1, KINDLESS));
                }
                Ok(document) => documents.extend(expand_lists(document)),
                Err(reason) => lines.push(unreadable(path, index + 1, &reason)),
            }
        }
    }
    let cluster = Files::new(nodes, credentials, &documents);
    let subjects: Vec<Subject> = documents
        .into_iter()
        .filter_map(Subject::from_document)
        .collect();
    // Files with nothing to review, and nothing else to check: most likely the output of a
    // command that failed (`kustomize build ... | archgate check -f -` reads an empty stdin).
    // Passing would pass CI on nothing. Said only when every input was read, as an unreadable
    // one is already said.
    if subjects.is_empty()
        && images.is_empty()
        && dockerfile.dockerfile.is_none()
        && lines.is_empty()
    {
        lines.push(nothing_found(files));
    } else {
        // One empty input among others that were checked: the same likely failure, said for it.
        lines.extend(empty_files.into_iter().map(|path| {
            let at = path.display().to_string();
            not_checked(at.clone(), &at, EMPTY_INPUT)
        }));
    }

    let pipeline = Pipeline::new(
        Arc::new(resolver),
        Exemptions::default(),
        ExtractOptions::default(),
    );
    let nodes = cluster.nodes();

    // The build's pulls (--dockerfile): each target carries its own platforms (-p, or the
    // builder's for `FROM --platform=$BUILDPLATFORM`).
    let build = match crate::preflight::targets(dockerfile, &platforms) {
        Ok(build) => build,
        Err(e) if e.is_usage() => return Err(e.to_string()),
        // A Dockerfile that cannot be read or has a syntax error is one input not checked.
        Err(e) => {
            let at = e.at();
            lines.push(not_checked(at.clone(), &at, &e.to_string()));
            Default::default()
        }
    };
    for warning in &build.warnings {
        eprintln!("archgate check: {warning}");
    }
    let checked = pipeline::resolve(
        images
            .iter()
            .map(|image| bare_target(image))
            .chain(build.targets)
            .collect(),
        &nodes,
        &pipeline.resolver,
        |placement| cluster.credentials("", placement),
        &Exemptions::default(),
        deadline,
    )
    .await;
    let mut out: Vec<Line> = checked.into_iter().map(|c| line(c, None)).collect();

    let reviews = join_all(subjects.iter().map(|subject| {
        pipeline.review(pipeline::Request {
            subject,
            old: None,
            cluster: &cluster,
            // Files are anyone's: TEKTON_PLATFORM_COMMANDS in them is a claim, never trusted.
            from_tekton_controller: false,
            deadline,
        })
    }))
    .await;
    for (subject, reviewed) in subjects.iter().zip(reviews) {
        let name = subject.display_name();
        match reviewed {
            Ok(reviewed) => {
                for note in &reviewed.notes {
                    eprintln!("archgate check: {name}: {note}");
                }
                for reason in &reviewed.unchecked {
                    out.push(trouble(subject, reason));
                }
                let hints = policy::hints(&reviewed.checked);
                out.extend(reviewed.checked.into_iter().map(|c| line(c, Some(subject))));
                out.extend(hints.iter().map(|h| hint(h)));
            }
            Err(e) => out.push(trouble(subject, &policy::unreadable(&e))),
        }
    }
    out.extend(lines);
    Ok(out)
}

/// The nodes pods may land on: one synthetic node per `--platform` (the `serve` parsing, same
/// spellings, same default), or with `--platform auto` the live cluster's Nodes, each with its
/// labels, taints and runtime, as the webhook sees them.
async fn candidate_nodes(
    values: &[String],
    runtime: &RuntimeArgs,
    cluster: &ClusterArgs,
) -> Result<Vec<NodeView>, String> {
    let source = config::parse_platforms(values).map_err(|e| e.to_string())?;
    match config::pulled_with(source, runtime.runtime_matcher).map_err(|e| e.to_string())? {
        PlatformSource::Static(platforms) => {
            if cluster.kubeconfig.is_some() || cluster.context.is_some() {
                return Err("--kubeconfig and --context name the cluster whose Nodes `--platform auto` reads: add --platform auto or remove them".into());
            }
            Ok(platforms.iter().map(NodeView::synthetic).collect())
        }
        PlatformSource::Auto => {
            let config =
                config::kube_config(cluster.kubeconfig.as_deref(), cluster.context.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
            let client = kube::Client::try_from(config)
                .map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
            let nodes = crate::cluster::list_nodes(&client)
                .await
                .map_err(|e| format!("cannot list the cluster's Nodes for --platform auto: {e}"))?;
            if nodes.is_empty() {
                return Err(
                    "--platform auto: the cluster has no Node with a known platform".into(),
                );
            }
            Ok(nodes)
        }
    }
}

/// The documents of a YAML/JSON file (`-` is stdin), each parsed on its own: YAML's limits on
/// size and nesting apply per document, and one broken document does not hide the others.
fn read_documents(path: &Path) -> std::io::Result<Vec<Result<Value, String>>> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(path)?
    };
    Ok(documents(&text))
}

/// Each YAML document (JSON is YAML too), or why it could not be read. Empty documents are
/// skipped; so are documents that are not objects (a bare string is nothing Kubernetes reads).
///
/// The text is split at document markers here rather than by serde-saphyr's stream reader, which
/// cannot resume after a syntax error (an unclosed bracket ends the whole stream). YAML forbids
/// `---` and `...` at the start of a content line, so a line that begins with one is always a
/// document boundary.
fn documents(text: &str) -> Vec<Result<Value, String>> {
    let mut pieces = vec![(1usize, String::new())];
    for (number, line) in text.lines().enumerate() {
        let marker = ["---", "..."].iter().find_map(|m| line.strip_prefix(m));
        match marker {
            Some(rest) if rest.is_empty() || rest.starts_with([' ', '\t']) => {
                // `--- {inline: doc}` keeps what follows the marker, as the document's first
                // line: its own line, or `--- # comment` would swallow the next one, and line
                // numbers in errors count from the marker's line.
                pieces.push((number + 1, format!("{rest}\n")));
            }
            _ => {
                let piece = &mut pieces.last_mut().expect("one piece at least").1;
                piece.push_str(line);
                piece.push('\n');
            }
        }
    }
    pieces
        .into_iter()
        .filter(|(_, piece)| {
            piece
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .filter_map(
            |(line, piece)| match crate::yaml::from_str::<Value>(&piece) {
                Ok(value) if value.is_object() => Some(Ok(value)),
                Ok(_) => None,
                Err(e) => Some(Err(unreadable_document(line, &e))),
            },
        )
        .collect()
}

/// Why a document could not be read, in words a user can act on. YAML's limits (nodes, depth,
/// anchors) protect `check` from hostile input; a real manifest past them is one to split.
fn unreadable_document(line: usize, error: &serde_saphyr::Error) -> String {
    let text = crate::yaml::describe(error, line);
    if text.contains("budget") {
        format!(
            "the document starting at line {line} is too large for archgate to read ({text}): split it into smaller documents"
        )
    } else {
        format!("the document starting at line {line} is not valid YAML: {text}")
    }
}

/// Multi-document YAML as objects; any unreadable document is an error. For callers that need
/// every document (the install checks).
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    documents(text).into_iter().collect()
}

/// What `check` knows in place of a cluster: the `--platform` list, the user's own credentials,
/// and what the files hold: Tekton resources, docker-config Secrets and ServiceAccounts. Objects
/// without a namespace are in `default`, as `kubectl apply` would put them.
struct Files {
    nodes: Arc<Vec<NodeView>>,
    own: Arc<Credentials>,
    catalog: Arc<FileCatalog>,
    /// Parsed docker-config Secrets by (namespace, name).
    secrets: HashMap<(String, String), Arc<Credentials>>,
    /// ServiceAccounts' imagePullSecrets names by (namespace, name).
    accounts: HashMap<(String, String), Vec<String>>,
}

impl Files {
    fn new(nodes: Vec<NodeView>, own: Credentials, documents: &[Value]) -> Self {
        let key = |d: &Value| {
            let namespace = d["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = d["metadata"]["name"].as_str().unwrap_or_default();
            (namespace.to_string(), name.to_string())
        };
        let of_kind = |kind: &'static str| {
            documents
                .iter()
                .filter(move |d| d["apiVersion"] == "v1" && d["kind"] == kind)
        };
        let secrets = of_kind("Secret")
            .filter_map(|d| Some((key(d), Arc::new(secret_credentials(d)?))))
            .collect();
        let accounts = of_kind("ServiceAccount")
            .map(|d| {
                let names = d["imagePullSecrets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["name"].as_str().map(str::to_string))
                    .collect();
                (key(d), names)
            })
            .collect();
        Self {
            nodes: Arc::new(nodes),
            own: Arc::new(own),
            catalog: Arc::new(FileCatalog::new(documents)),
            secrets,
            accounts,
        }
    }
}

/// A docker-config Secret's credentials (`data` is base64, `stringData` plain). A Secret of
/// another type, or one that does not parse, gives none: said on stderr, never its content.
fn secret_credentials(secret: &Value) -> Option<Credentials> {
    let (key, parse): (&str, fn(&[u8], &str) -> _) = match secret["type"].as_str()? {
        "kubernetes.io/dockerconfigjson" => (".dockerconfigjson", Credentials::from_docker_config),
        "kubernetes.io/dockercfg" => (".dockercfg", Credentials::from_dockercfg),
        _ => return None,
    };
    let bytes = match (
        secret["data"][key].as_str(),
        secret["stringData"][key].as_str(),
    ) {
        (_, Some(plain)) => plain.as_bytes().to_vec(),
        (Some(encoded), None) => {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded.trim())
                .ok()?
        }
        (None, None) => return None,
    };
    let name = secret["metadata"]["name"].as_str().unwrap_or_default();
    match parse(&bytes, &format!("Secret {name}")) {
        Ok(credentials) => Some(credentials),
        Err(_) => {
            eprintln!("archgate check: Secret {name} is not a readable docker config; ignored");
            None
        }
    }
}

impl ClusterView for Files {
    fn nodes(&self) -> Arc<Vec<NodeView>> {
        self.nodes.clone()
    }
    fn namespace_mode(&self, _namespace: &str) -> Option<crate::policy::Mode> {
        None
    }
    fn credentials(&self, namespace: &str, placement: &Placement) -> Arc<Credentials> {
        if self.secrets.is_empty() {
            return self.own.clone();
        }
        let namespace = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        let account_secrets = |account: &str| {
            self.accounts
                .get(&(namespace.to_string(), account.to_string()))
                .cloned()
                .unwrap_or_default()
        };
        crate::cluster::pull_credentials(&self.own, namespace, placement, account_secrets, |name| {
            self.secrets
                .get(&(namespace.to_string(), name.to_string()))
                .cloned()
        })
    }
    fn catalog(&self) -> Arc<dyn Catalog> {
        self.catalog.clone()
    }
    fn ready(&self) -> bool {
        true
    }
}

/// Tekton resources found in the files being checked, by kind and name.
struct FileCatalog(HashMap<(String, String), Value>);

impl FileCatalog {
    fn new(docs: &[Value]) -> Self {
        let map = docs
            .iter()
            .filter_map(|d| {
                let kind = d["kind"].as_str()?;
                let name = d["metadata"]["name"].as_str()?;
                Some(((kind.to_string(), name.to_string()), d.clone()))
            })
            .collect();
        Self(map)
    }
}

impl Catalog for FileCatalog {
    fn get(&self, kind: &str, _namespace: &str, name: &str) -> Option<Value> {
        self.0.get(&(kind.to_string(), name.to_string())).cloned()
    }
}

/// An image named on the command line: no object, no placement.
fn bare_target(image: &str) -> Target {
    Target {
        location: Location {
            object: None,
            container: String::new(),
            scope: String::new(),
        },
        image: image.to_string(),
        placement: Arc::new(Placement::default()),
        known_platforms: None,
    }
}

/// `Kind name` (or `Kind namespace/name`), as text output names objects.
fn object_label(subject: &Subject) -> String {
    let name = crate::workload::object_name(&subject.object);
    match subject.namespace() {
        "" => format!("{} {name}", subject.kind),
        namespace => format!("{} {namespace}/{name}", subject.kind),
    }
}

fn line(mut c: Checked, subject: Option<&Subject>) -> Line {
    if let Some(subject) = subject {
        // Findings in the webhook leave the pod's own name out (the user just applied it); in a
        // report over many files every line names its object.
        c.target.location.object = Some(object_label(subject));
    }
    let finding = policy::finding(&c);
    let missing: Vec<String> = c.missing().iter().map(Platform::to_string).collect();
    let (digest, platforms, error) = match &c.outcome {
        Outcome::Resolved(r) => (
            r.digest.as_ref().map(ToString::to_string),
            r.platforms.iter().map(Platform::to_string).collect(),
            None,
        ),
        Outcome::Failed(e) if e.is_not_found() => (None, vec![], Some("not found".to_string())),
        Outcome::Failed(e) => (None, vec![], Some(e.to_string())),
        Outcome::Invalid(e) => (None, vec![], Some(e.to_string())),
    };
    let (text, exit) = match &finding {
        None => (ok_text(&c), EXIT_OK),
        Some(f @ (Finding::Missing { .. } | Finding::NotFound { .. })) => {
            (format!("FAIL  {f}"), EXIT_FINDINGS)
        }
        Some(f @ (Finding::InvalidReference { .. } | Finding::RegistryTrouble { .. })) => {
            (format!("ERROR {f}"), EXIT_TROUBLE)
        }
        // A pod pinned where no --platform can take it: nothing to check against.
        Some(f @ Finding::NoCandidates { .. }) => (format!("skip  {f}"), EXIT_OK),
    };
    Line {
        image: c.target.image,
        digest,
        platforms,
        missing,
        error,
        object: subject.map(|s| format!("{}/{}", s.kind, crate::workload::object_name(&s.object))),
        namespace: subject
            .map(Subject::namespace)
            .filter(|n| !n.is_empty())
            .map(str::to_string),
        container: subject.map(|_| c.target.location.container.clone()),
        source: (subject.is_none() && !c.target.location.scope.is_empty())
            .then(|| c.target.location.scope.clone()),
        text,
        hint: false,
        exit,
    }
}

/// `ok    Deployment web, container "app" image "nginx:1.27" (linux/amd64, linux/arm64)`, or
/// `ok    IMAGE (platforms)` for an image named on the command line. Platforms as the registry
/// lists them (variants, Windows builds): the report says what the image is.
fn ok_text(c: &Checked) -> String {
    let available = match &c.outcome {
        Outcome::Resolved(r) => platform::list(&r.platforms),
        _ => platform::list(&[]),
    };
    let image = &c.target.image;
    match c.target.location.to_string() {
        at if at.is_empty() => format!("ok    {image} ({available})"),
        at => format!("ok    {at} image {image:?} ({available})"),
    }
}

/// `hint  rebuild for every platform: ...` / `hint  pin it: ...` after an object's findings.
fn hint(text: &str) -> Line {
    Line {
        text: format!("hint  {text}"),
        hint: true,
        ..Line::default()
    }
}

/// Something about an object that could not be checked (exit 2 unless a finding exists).
fn trouble(subject: &Subject, reason: &str) -> Line {
    let object = format!(
        "{}/{}",
        subject.kind,
        crate::workload::object_name(&subject.object)
    );
    not_checked(object, &object_label(subject), reason)
}

/// A document that is not YAML archgate can read.
fn unreadable(path: &Path, number: usize, reason: &str) -> Line {
    let at = format!("{} document {number}", path.display());
    not_checked(at.clone(), &at, reason)
}

/// Why a document without `kind` is not checked.
const KINDLESS: &str = "has no kind: not a Kubernetes object (kubectl apply refuses it too), so nothing in it was checked";

/// Why an `-f` input without a single document is not checked, when others were.
const EMPTY_INPUT: &str = "holds no YAML document, so nothing in it was checked; if it was written by a command, did the command fail?";

/// `-f` inputs that hold nothing `check` reviews: exit 2, never a pass on nothing.
fn nothing_found(files: &[std::path::PathBuf]) -> Line {
    let at = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    not_checked(
        at.clone(),
        &at,
        "nothing was checked: no Pod, workload (Deployment, Job, ...) or Tekton PipelineRun or \
         TaskRun found; if the YAML was piped in, did the command writing it fail?",
    )
}

/// `ERROR {at}: {reason}`: something (not an image) that could not be checked.
fn not_checked(object: String, at: &str, reason: &str) -> Line {
    Line {
        error: Some(reason.to_string()),
        object: Some(object),
        text: format!("ERROR {at}: {reason}"),
        exit: EXIT_TROUBLE,
        ..Line::default()
    }
}

/// Writes the report to stdout. A reader that went away (`archgate check ... | head`) is not an
/// error: `println!` would panic on the broken pipe, so the report is written by hand.
fn print(lines: &[Line], output: Output) {
    let mut out = std::io::stdout().lock();
    let written = match output {
        Output::Json => {
            let entries: Vec<&Line> = lines.iter().filter(|l| !l.hint).collect();
            serde_json::to_writer_pretty(&mut out, &entries)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(out))
        }
        Output::Text => lines.iter().try_for_each(|l| writeln!(out, "{}", l.text)),
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => eprintln!("archgate check: {e}"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_broken_document_does_not_hide_the_others() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\nkind: [unclosed\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 3, "{docs:?}");
        assert_eq!(docs[0].as_ref().unwrap()["metadata"]["name"], "a");
        assert!(docs[1].is_err());
        assert_eq!(docs[2].as_ref().unwrap()["metadata"]["name"], "b");
        assert!(parse_documents(text).is_err());
    }

    #[test]
    fn the_node_budget_is_per_document() {
        // Two documents of 150k scalars each: over 250k in all, under it each.
        let big = |name: &str| {
            let items: Vec<String> = (0..150_000).map(|i| i.to_string()).collect();
            format!(
                "kind: ConfigMap\nmetadata: {{name: {name}}}\ndata: [{}]\n",
                items.join(",")
            )
        };
        let text = format!("{}---\n{}", big("one"), big("two"));
        let docs = documents(&text);
        assert_eq!(docs.len(), 2);
        assert!(
            docs.iter().all(Result::is_ok),
            "{:?}",
            docs.iter().map(|d| d.as_ref().err()).collect::<Vec<_>>()
        );
        // One document past the budget: said as something to act on, the other still read.
        let items: Vec<String> = (0..260_000).map(|i| i.to_string()).collect();
        let huge = format!(
            "kind: ConfigMap\ndata: [{}]\n---\n{}",
            items.join(","),
            big("ok")
        );
        let docs = documents(&huge);
        assert_eq!(docs.len(), 2);
        let err = docs[0].as_ref().unwrap_err();
        assert!(
            err.contains("too large") && err.contains("split it"),
            "{err}"
        );
        assert!(docs[1].is_ok());
    }

    /// Before: what follows `---` on its line began the document without a line break, so
    /// `--- # the web app` swallowed the next line (`apiVersion: apps/v1`) into the comment and the
    /// Deployment was no kind archgate reviews: skipped, exit 0.
    #[test]
    fn a_comment_after_the_marker_keeps_the_next_line() {
        let text = "--- # the web app\napiVersion: apps/v1\nkind: Deployment\n--- {kind: Pod}\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert_eq!(docs[0].as_ref().unwrap()["apiVersion"], "apps/v1");
        assert_eq!(docs[1].as_ref().unwrap()["kind"], "Pod");
    }

    /// A YAML error names the line in the file, not in the document, and never its text.
    #[test]
    fn a_yaml_error_says_the_line_in_the_file() {
        let text =
            "kind: Pod\n---\nkind: Secret\nstringData:\n  password: hunter2\n  user: [admin\n";
        let docs = documents(text);
        let err = docs[1].as_ref().unwrap_err();
        assert!(err.contains("starting at line 2"), "{err}");
        assert!(err.contains("line 6, column 9"), "{err}");
        assert!(!err.contains("hunter2") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn findings_outrank_trouble() {
        let line = |exit| Line {
            exit,
            ..Line::default()
        };
        assert_eq!(exit_code(&[line(EXIT_OK)]), EXIT_OK);
        assert_eq!(
            exit_code(&[line(EXIT_OK), line(EXIT_TROUBLE)]),
            EXIT_TROUBLE
        );
        assert_eq!(
            exit_code(&[line(EXIT_TROUBLE), line(EXIT_FINDINGS), line(EXIT_OK)]),
            EXIT_FINDINGS
        );
    }
}
