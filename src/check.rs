//! `archgate check`: the same pipeline as the webhook, for images and YAML files in CI.
//!
//! Exit codes (a contract other tools rely on): 0 all good; 1 some image lacks a platform or does
//! not exist; 2 bad usage, an invalid reference or platform, or a registry could not be asked.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::cli::{CheckArgs, Output};
use crate::config::{self, PlatformSource};
use crate::metrics::Metrics;
use crate::platform::{self, Platform};
use crate::policy::{Checked, Outcome};
use crate::resolver::{Credentials, RegistryOptions, Resolver};
use crate::review::{self, Exemptions};
use crate::scheduling::NodeView;
use crate::workload::{self, Catalog, ExtractOptions, Location, Placement, Target};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FINDINGS: i32 = 1;
pub const EXIT_TROUBLE: i32 = 2;

/// How long `check` waits for registries in all.
const CHECK_DEADLINE: Duration = Duration::from_secs(60);

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct Line {
    pub image: String,
    pub digest: Option<String>,
    pub platforms: Vec<String>,
    pub missing: Vec<String>,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Where a Dockerfile names the image: `Dockerfile line 3: FROM`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The policy's sentence for a Dockerfile finding.
    #[serde(skip)]
    finding: Option<String>,
    #[serde(skip)]
    scope: Option<String>,
    #[serde(skip)]
    exit: i32,
}

/// Runs the check and prints the report; returns the exit code.
pub async fn run(args: CheckArgs) -> i32 {
    match report(&args).await {
        Ok(lines) => {
            print(&lines, args.output);
            lines.iter().map(|l| l.exit).max().unwrap_or(EXIT_OK)
        }
        Err(message) => {
            eprintln!("archgate check: {message}");
            EXIT_TROUBLE
        }
    }
}

async fn report(args: &CheckArgs) -> Result<Vec<Line>, String> {
    let CheckArgs {
        platforms,
        files,
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
    let platforms = parse_platforms(platforms)?;
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

    let mut targets: Vec<(Target, Option<String>)> = images
        .iter()
        .map(|image| {
            let target = Target {
                location: Location {
                    object: None,
                    container: String::new(),
                    scope: String::new(),
                },
                image: image.clone(),
                placement: Arc::new(Placement::default()),
                known_platforms: None,
            };
            (target, None)
        })
        .collect();
    for path in files {
        targets.extend(targets_from_file(path)?);
    }
    // The build's pulls: each target carries its own platforms (-p, or the builder's).
    let build = crate::preflight::targets(dockerfile, &platforms)?;
    for warning in &build.warnings {
        eprintln!("archgate check: {warning}");
    }
    targets.extend(build.targets.into_iter().map(|t| (t, None)));

    let nodes: Vec<NodeView> = platforms.iter().map(NodeView::synthetic).collect();
    let deadline = tokio::time::Instant::now() + CHECK_DEADLINE;
    let (targets, objects): (Vec<Target>, Vec<Option<String>>) = targets.into_iter().unzip();
    let checked = review::check(
        targets,
        &nodes,
        &resolver,
        &credentials,
        &Exemptions::default(),
        deadline,
    )
    .await;
    Ok(checked
        .into_iter()
        .zip(objects)
        .map(|(c, object)| line(c, object))
        .collect())
}

/// The `serve` parsing (same spellings, same default), without `auto`: there is no cluster here.
fn parse_platforms(values: &[String]) -> Result<Vec<Platform>, String> {
    match config::parse_platforms(values).map_err(|e| e.to_string())? {
        PlatformSource::Static(platforms) => Ok(platforms),
        PlatformSource::Auto => {
            Err("--platform auto reads a cluster's nodes; name platforms, e.g. linux/amd64".into())
        }
    }
}

/// Reads every document of a YAML/JSON file (`-` is stdin) and extracts its targets. Tekton
/// Pipelines, Tasks and StepActions in the same files are used to resolve references.
fn targets_from_file(path: &Path) -> Result<Vec<(Target, Option<String>)>, String> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("stdin: {e}"))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
    };
    let docs = parse_documents(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let catalog = FileCatalog::new(&docs);
    let mut out = Vec::new();
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let extraction = workload::extract(kind, doc, &catalog, &ExtractOptions::default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(extraction) = extraction else {
            continue;
        };
        for warning in &extraction.warnings {
            eprintln!(
                "archgate check: {}: {kind} {}: {warning}",
                path.display(),
                workload::object_name(doc)
            );
        }
        let object = format!("{kind}/{}", workload::object_name(doc));
        out.extend(
            extraction
                .targets
                .into_iter()
                .map(|t| (t, Some(object.clone()))),
        );
    }
    Ok(out)
}

/// Multi-document YAML (JSON is YAML too). Empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().filter(|d| d.is_object()).collect())
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

fn line(c: Checked, object: Option<String>) -> Line {
    let scope = &c.target.location.scope;
    let source = (object.is_none() && !scope.is_empty()).then(|| scope.clone());
    let finding = source.as_ref().and_then(|_| {
        let verdict = crate::policy::decide(std::slice::from_ref(&c), &[], &Default::default());
        verdict.findings.first().map(ToString::to_string)
    });
    let missing: Vec<String> = c.missing().iter().map(Platform::to_string).collect();
    let (digest, platforms, error, exit) = match &c.outcome {
        _ if c.candidates.is_empty() && object.is_some() => (None, vec![], None, EXIT_OK),
        Outcome::Resolved(r) => (
            Some(r.digest.clone()).filter(|d| !d.is_empty()),
            r.platforms.iter().map(Platform::to_string).collect(),
            None,
            if missing.is_empty() {
                EXIT_OK
            } else {
                EXIT_FINDINGS
            },
        ),
        Outcome::Failed(e) if e.is_not_found() => {
            (None, vec![], Some("not found".to_string()), EXIT_FINDINGS)
        }
        Outcome::Failed(e) => (None, vec![], Some(e.to_string()), EXIT_TROUBLE),
        Outcome::Invalid(e) => (None, vec![], Some(e.to_string()), EXIT_TROUBLE),
    };
    let has_object = object.is_some();
    Line {
        image: c.target.image,
        digest,
        platforms,
        missing,
        error,
        object,
        container: has_object.then(|| c.target.location.container.clone()),
        scope: has_object.then(|| c.target.location.scope.clone()),
        source,
        finding,
        exit,
    }
}

fn print(lines: &[Line], output: Output) {
    match output {
        Output::Json => match serde_json::to_string_pretty(lines) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("archgate check: {e}"),
        },
        Output::Text => {
            for l in lines {
                println!("{}", text_line(l));
            }
        }
    }
}

/// `ok    IMAGE (platforms)`, `FAIL  IMAGE: missing linux/amd64 (available: ...)`,
/// `FAIL  IMAGE: not found`, `ERROR IMAGE: reason`; with -f the object and container lead.
fn text_line(l: &Line) -> String {
    let at = match (&l.object, &l.scope) {
        (Some(object), Some(scope)) => format!("{object} {scope} image "),
        _ => String::new(),
    };
    let image = &l.image;
    let available = platform_list(&l.platforms);
    if let Some(source) = &l.source {
        return match (&l.finding, l.exit) {
            (Some(finding), EXIT_FINDINGS) => format!("FAIL  {finding}"),
            (Some(finding), _) => format!("ERROR {finding}"),
            (None, _) => format!("ok    {source} image {image:?} ({available})"),
        };
    }
    match (&l.error, l.exit) {
        (Some(error), EXIT_FINDINGS) => format!("FAIL  {at}{image}: {error}"),
        (Some(error), _) => format!("ERROR {at}{image}: {error}"),
        (None, EXIT_FINDINGS) => format!(
            "FAIL  {at}{image}: missing {} (available: {available})",
            l.missing.join(", ")
        ),
        (None, _) if l.platforms.is_empty() => {
            format!("skip  {at}{image}: no --platform matches its node selector")
        }
        (None, _) => format!("ok    {at}{image} ({available})"),
    }
}

fn platform_list(names: &[String]) -> String {
    if names.is_empty() {
        platform::list(&[])
    } else {
        names.join(", ")
    }
}
