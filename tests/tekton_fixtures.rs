//! Every PipelineRun and TaskRun in the shared Tekton fixtures, extracted and compared with an
//! image list written by hand from the YAML (`tests/data/tekton/expected.txt`).
//!
//! The catalog of each run holds the Pipelines, Tasks, ClusterTasks and StepActions of its own file
//! (which win) and of its folder. Runs in the Tekton catalog's `tests/` and `samples/` folders also
//! see their version folder, where the task under test lives. Nothing else is resolvable (no
//! cluster, no bundles), so other references become warnings.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use archgate::workload::tekton::{extract_definition, extract_pipeline_run, extract_task_run};
use archgate::workload::{Catalog, ExtractOptions, Extraction, object_name};
use serde_json::Value;

const FIXTURES: &str = "../shared/fixtures/tekton";
const EXPECTED: &str = "tests/data/tekton/expected.txt";
const RESOURCE_KINDS: [&str; 4] = ["Pipeline", "Task", "ClusterTask", "StepAction"];

/// Resources by (kind, name).
struct FolderCatalog(HashMap<(String, String), Value>);

impl Catalog for FolderCatalog {
    fn get(&self, kind: &str, _namespace: &str, name: &str) -> Option<Value> {
        self.0.get(&(kind.to_string(), name.to_string())).cloned()
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURES)
}

/// The shared Tekton corpus sits beside the checkout in CI; a plain clone says what it skips.
fn corpus_present() -> bool {
    let present = root().is_dir();
    if !present {
        // Straight to stderr: the test harness captures `println!`, and this line is for the
        // person running the suite.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            "skipped the shared Tekton corpus: ../shared/fixtures is not beside the checkout\n"
                .as_bytes(),
        );
    }
    present
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn documents(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(Value::is_object)
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

/// The folders whose resources a run in `dir` may refer to, nearest last (later ones win).
fn catalog_folders(dir: &Path) -> Vec<PathBuf> {
    let mut folders = Vec::new();
    let mut current = dir;
    while let Some(parent) = current.parent() {
        let name = current
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == "tests" || name == "samples" {
            folders.push(parent.to_path_buf());
            break;
        }
        current = parent;
        if !current.starts_with(root()) {
            break;
        }
    }
    folders.push(dir.to_path_buf());
    folders
}

fn catalog_for(file: &Path, docs: &BTreeMap<PathBuf, Vec<Value>>) -> FolderCatalog {
    let mut resources = HashMap::new();
    let mut add = |doc: &Value, overwrite: bool| {
        if RESOURCE_KINDS.contains(&kind(doc)) {
            let key = (kind(doc).to_string(), object_name(doc));
            if overwrite || !resources.contains_key(&key) {
                resources.insert(key, doc.clone());
            }
        }
    };
    // Nearer folders win over farther ones, the run's own file over everything.
    for folder in catalog_folders(file.parent().unwrap()).iter().rev() {
        let mut in_folder = Vec::new();
        for (path, file_docs) in docs.iter().filter(|(p, _)| p.parent() == Some(folder)) {
            in_folder.extend(file_docs.iter().map(|d| (path, d)));
        }
        for (_, doc) in in_folder {
            add(doc, false);
        }
    }
    for doc in &docs[file] {
        add(doc, true);
    }
    FolderCatalog(resources)
}

fn all_documents() -> BTreeMap<PathBuf, Vec<Value>> {
    let root = root();
    assert!(
        root.is_dir(),
        "the Tekton fixtures are missing at {}",
        root.display()
    );
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    files.retain(|f| !f.components().any(|c| c.as_os_str() == "config"));
    files
        .into_iter()
        .map(|f| (f.clone(), documents(&f)))
        .collect()
}

/// `[path Kind name]` headers, each followed by `scope = image` lines.
fn expected() -> BTreeMap<String, Vec<String>> {
    let text = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(EXPECTED)).unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Some(key) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            assert!(
                out.insert(key.to_string(), Vec::new()).is_none(),
                "duplicate section {key}"
            );
            current = Some(key.to_string());
        } else {
            let key = current
                .as_ref()
                .unwrap_or_else(|| panic!("line before any section: {line}"));
            out.get_mut(key).unwrap().push(line.to_string());
        }
    }
    for images in out.values_mut() {
        images.sort();
    }
    out
}

fn actual(ex: &Extraction) -> Vec<String> {
    let mut pairs: Vec<String> = ex
        .targets
        .iter()
        .map(|t| format!("{} = {}", t.location.scope, t.image))
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

#[test]
fn every_run_extracts_the_images_read_from_its_yaml() {
    if !corpus_present() {
        return;
    }
    let docs = all_documents();
    let root = root();
    let mut want = expected();
    let mut failures = Vec::new();
    let mut runs = 0;
    for (file, file_docs) in &docs {
        let relative = file.strip_prefix(&root).unwrap().display().to_string();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for doc in file_docs
            .iter()
            .filter(|d| matches!(kind(d), "PipelineRun" | "TaskRun"))
        {
            runs += 1;
            let mut key = format!("{relative} {} {}", kind(doc), object_name(doc));
            let n = seen.entry(key.clone()).or_default();
            *n += 1;
            if *n > 1 {
                key = format!("{key} #{n}");
            }
            let catalog = catalog_for(file, &docs);
            let options = ExtractOptions::default();
            let result = match kind(doc) {
                "PipelineRun" => extract_pipeline_run(doc, &catalog, &options),
                _ => extract_task_run(doc, &catalog, &options),
            };
            let got = match result {
                Ok(ex) => {
                    for w in &ex.warnings {
                        // Bounded; the policy fits it into what kubectl shows.
                        assert!(
                            w.chars().count() < 1024 && !w.starts_with("Warning"),
                            "{key}: {w}"
                        );
                    }
                    actual(&ex)
                }
                Err(e) => {
                    failures.push(format!("[{key}] error: {e}"));
                    continue;
                }
            };
            match want.remove(&key) {
                None => failures.push(format!(
                    "[{key}] has no expectation; got:\n  {}",
                    got.join("\n  ")
                )),
                Some(expected) if expected != got => failures.push(format!(
                    "[{key}]\n  expected:\n    {}\n  got:\n    {}",
                    expected.join("\n    "),
                    got.join("\n    ")
                )),
                Some(_) => {}
            }
        }
    }
    for key in want.keys() {
        failures.push(format!("[{key}] is expected but no such run exists"));
    }
    assert!(
        runs > 400,
        "only {runs} runs found under {}",
        root.display()
    );
    assert!(
        failures.is_empty(),
        "{} of {runs} runs differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_pipeline_task_and_step_action_reads_without_error() {
    if !corpus_present() {
        return;
    }
    let docs = all_documents();
    let mut checked = 0;
    for (file, file_docs) in &docs {
        let catalog = catalog_for(file, &docs);
        for doc in file_docs
            .iter()
            .filter(|d| RESOURCE_KINDS.contains(&kind(d)))
        {
            checked += 1;
            if let Err(e) = extract_definition(kind(doc), doc, &catalog, &ExtractOptions::default())
            {
                panic!("{}: {e}", file.display());
            }
        }
    }
    assert!(checked > 200, "only {checked} definitions found");
}

#[test]
fn windows_selectors_and_affinity_come_through_unchanged() {
    if !corpus_present() {
        return;
    }
    let docs = all_documents();
    let root = root();
    for version in ["v1", "v1beta1"] {
        for (file, kind) in [
            (
                "pipelineruns/no-ci/windows-node-selectors.yaml",
                "PipelineRun",
            ),
            ("taskruns/no-ci/windows-node-selectors.yaml", "TaskRun"),
            (
                "pipelineruns/no-ci/windows-node-affinity.yaml",
                "PipelineRun",
            ),
            ("taskruns/no-ci/windows-node-affinity.yaml", "TaskRun"),
        ] {
            let path = root.join("pipeline/examples").join(version).join(file);
            let run = docs[&path].iter().find(|d| self::kind(d) == kind).unwrap();
            let catalog = catalog_for(&path, &docs);
            let options = ExtractOptions::default();
            let ex = match kind {
                "PipelineRun" => extract_pipeline_run(run, &catalog, &options),
                _ => extract_task_run(run, &catalog, &options),
            }
            .unwrap();
            let placement = &ex.targets[0].placement;
            if file.ends_with("selectors.yaml") {
                assert_eq!(
                    placement.node_selector["kubernetes.io/os"], "windows",
                    "{file}"
                );
            } else {
                let terms = &placement
                    .required_affinity
                    .as_ref()
                    .unwrap()
                    .node_selector_terms;
                let expr = &terms[0].match_expressions.as_ref().unwrap()[0];
                assert_eq!(
                    (expr.key.as_str(), expr.values.as_ref().unwrap()[0].as_str()),
                    ("kubernetes.io/os", "windows")
                );
            }
        }
    }
}
