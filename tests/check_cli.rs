//! `archgate check` as CI runs it: the built binary, a real registry, and the exit-code and
//! output contract of issue 2 (other tools parse this, so it is asserted exactly).
//!
//! The child never sees the developer's docker config or `ARCHGATE_*` settings: `HOME` and
//! `DOCKER_CONFIG` point at empty temporary directories and the variables are removed.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use base64::Engine;
use common::{Fixtures, ImageSpec, Registry, push_standard_fixtures};
use serde_json::{Value, json};
use tempfile::TempDir;

const ARCHGATE: &str = env!("CARGO_BIN_EXE_archgate");

/// What the binary did: exit code, stdout, stderr.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }

    /// The one stdout line mentioning `needle`.
    #[track_caller]
    fn line_with(&self, needle: &str) -> &str {
        let lines: Vec<&str> = self.stdout.lines().filter(|l| l.contains(needle)).collect();
        assert_eq!(lines.len(), 1, "lines with {needle:?}:\n{self}");
        lines[0]
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A sandbox for the child: empty HOME and DOCKER_CONFIG.
struct Sandbox {
    home: TempDir,
    docker_config: TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
            docker_config: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command =
            common::sandbox::check_command(ARCHGATE, self.home.path(), self.docker_config.path());
        command.args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, None)
    }

    fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        self.run_with_env(args, stdin, &[])
    }

    /// `run_with_stdin`, with variables set in the child's environment.
    fn run_with_env(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
        let mut child = self
            .command(args)
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run archgate");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        Run::from(child.wait_with_output().unwrap())
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        let Output {
            status,
            stdout,
            stderr,
        } = output;
        Run {
            code: status.code().expect("archgate was killed by a signal"),
            stdout: String::from_utf8(stdout).unwrap(),
            stderr: String::from_utf8(stderr).unwrap(),
        }
    }
}

/// A plain registry with the standard fixtures; `insecure` is the flag that reaches it.
struct Setup {
    registry: Registry,
    fixtures: Fixtures,
    insecure: String,
    sandbox: Sandbox,
}

impl Setup {
    async fn start() -> Self {
        common::install_crypto_provider();
        let registry = Registry::start().await;
        let fixtures = push_standard_fixtures(&registry).await;
        let insecure = format!("--insecure-registry={}", registry.host());
        Self {
            registry,
            fixtures,
            insecure,
            sandbox: Sandbox::new(),
        }
    }

    /// `archgate check --insecure-registry HOST args...`
    fn check(&self, args: &[&str]) -> Run {
        let mut all = vec![self.insecure.as_str()];
        all.extend_from_slice(args);
        self.sandbox.run(&all)
    }

    fn check_stdin(&self, args: &[&str], stdin: &str) -> Run {
        let mut all = vec![self.insecure.as_str()];
        all.extend_from_slice(args);
        self.sandbox.run_with_stdin(&all, Some(stdin))
    }

    fn image(&self, path: &str) -> String {
        format!("{}/{path}", self.registry.host())
    }
}

#[tokio::test]
async fn images_pass_fail_or_are_not_found_with_the_contracted_exit_codes() {
    let setup = Setup::start().await;
    let f = &setup.fixtures;

    let multi = f.multi.reference();
    let run = setup.check(&[&multi]);
    assert_eq!(run.code, 0, "{run}");
    let line = run.line_with(&multi);
    assert!(line.starts_with("ok"), "{run}");
    assert!(line.contains("linux/amd64, linux/arm64/v8"), "{run}");
    assert!(
        !line.contains("unknown"),
        "attestations are not platforms:\n{run}"
    );

    // Single manifests (platform from the config) and a Docker list pass on amd64 too.
    for image in [&f.single_amd64, &f.docker_list] {
        let run = setup.check(&[&image.reference()]);
        assert_eq!(run.code, 0, "{run}");
    }

    // The image built on an Apple Silicon laptop.
    let cuda = f.ai_base_cuda.reference();
    let run = setup.check(&[&cuda]);
    assert_eq!(run.code, 1, "{run}");
    let line = run.line_with(&cuda);
    assert!(line.contains("missing linux/amd64"), "{run}");
    // Platforms in a finding are named as a node names them (issue 19): arm64, not arm64/v8.
    assert!(line.contains("(available: linux/arm64)"), "{run}");

    let missing = setup.image("cerebral/ai-base:no-such-tag");
    let run = setup.check(&[&missing]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.line_with(&missing).contains("not found"), "{run}");

    // One report for several images; the worst exit code wins.
    let run = setup.check(&[&multi, &cuda, &missing]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.stdout.lines().count(), 3, "{run}");

    // Windows keeps its os.version in the report.
    let run = setup.check(&["-p", "windows/amd64", &f.windows.reference()]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains("windows/amd64 (10.0.17763.5329)"),
        "{run}"
    );
}

#[tokio::test]
async fn every_platform_flag_must_be_provided() {
    let setup = Setup::start().await;
    let f = &setup.fixtures;
    let both = ["-p", "linux/amd64", "-p", "linux/arm64"];

    let run = setup.check(&[&both[..], &[&f.multi.reference()]].concat());
    assert_eq!(run.code, 0, "{run}");

    // amd64 + arm/v7: arm64 is missing, amd64 is not.
    let list = f.docker_list.reference();
    let run = setup.check(&[&both[..], &[&list]].concat());
    assert_eq!(run.code, 1, "{run}");
    let line = run.line_with(&list);
    assert!(line.contains("missing linux/arm64"), "{run}");
    assert!(!line.contains("missing linux/amd64"), "{run}");
    assert!(
        line.contains("available: linux/amd64, linux/arm/v7"),
        "{run}"
    );

    // arm64 only: amd64 is missing, arm64 (written arm64/v8 by the registry) is there.
    let cuda = f.ai_base_cuda.reference();
    let run = setup.check(&[&both[..], &[&cuda]].concat());
    assert_eq!(run.code, 1, "{run}");
    let line = run.line_with(&cuda);
    assert!(line.contains("missing linux/amd64"), "{run}");
    assert!(!line.contains("missing linux/amd64, linux/arm64"), "{run}");

    // Only arm64 required: the arm-only image passes and the amd64-only image fails.
    let run = setup.check(&["--platform", "linux/arm64/v8", &cuda]);
    assert_eq!(run.code, 0, "{run}");
    let amd64 = f.single_amd64.reference();
    let run = setup.check(&["-p", "linux/aarch64", &amd64]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.line_with(&amd64).contains("missing linux/arm64"),
        "{run}"
    );

    // Comma-separated values are the same as repeated flags.
    let run = setup.check(&["-p", "linux/amd64,linux/arm64", "-o", "json", &list]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.json()[0]["missing"], json!(["linux/arm64"]), "{run}");
}

#[tokio::test]
async fn json_output_has_the_contracted_shape() {
    let setup = Setup::start().await;
    let f = &setup.fixtures;
    let missing = setup.image("nobody/nothing:v1");
    let run = setup.check(&[
        "-o",
        "json",
        &f.multi.reference(),
        &f.ai_base_cuda.reference(),
        &missing,
    ]);
    assert_eq!(run.code, 1, "{run}");
    let report = run.json();
    assert_eq!(
        report,
        json!([
            {
                "image": f.multi.reference(),
                "digest": f.multi.digest,
                "platforms": ["linux/amd64", "linux/arm64/v8"],
                "missing": [],
                "error": null,
            },
            {
                "image": f.ai_base_cuda.reference(),
                "digest": f.ai_base_cuda.digest,
                "platforms": ["linux/arm64/v8"],
                "missing": ["linux/amd64"],
                "error": null,
            },
            {
                "image": missing,
                "digest": null,
                "platforms": [],
                "missing": [],
                "error": "not found",
            },
        ]),
        "{run}"
    );
}

/// A multi-document file: a Deployment (init + regular container), a Pod, a CronJob and a
/// ConfigMap that is not a workload (its image-looking value must be ignored).
fn workloads_yaml(setup: &Setup) -> String {
    let f = &setup.fixtures;
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      initContainers:
        - name: migrate
          image: {cuda}
      containers:
        - name: app
          image: {multi}
---
apiVersion: v1
kind: Pod
metadata:
  name: debug
spec:
  containers:
    - name: shell
      image: {single}
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - name: report
              image: {list}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  image: {nothing}
"#,
        cuda = f.ai_base_cuda.reference(),
        multi = f.multi.reference(),
        single = f.single_amd64.reference(),
        list = f.docker_list.reference(),
        nothing = setup.image("nobody/nothing:v1"),
    )
}

/// `(object, container, missing)` of each JSON report entry.
fn located(report: &Value) -> Vec<(String, String, Value)> {
    report
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["object"].as_str().unwrap().to_owned(),
                entry["container"].as_str().unwrap().to_owned(),
                entry["missing"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn files_check_every_container_of_every_workload_and_name_them() {
    let setup = Setup::start().await;
    let f = &setup.fixtures;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("workloads.yaml");
    let yaml = workloads_yaml(&setup);
    std::fs::write(&path, &yaml).unwrap();
    let file = path.to_str().unwrap();

    let run = setup.check(&["-f", file]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.stdout.lines().count(), 5, "ConfigMap skipped:\n{run}");
    assert!(!run.stdout.contains("nobody/nothing"), "{run}");
    // Each line names the object once, then the container, then the image as written: the
    // webhook's own sentence for a finding (issue 10: one place words findings).
    let expected = [
        format!(
            "FAIL  Deployment web, init container \"migrate\" image {:?} is missing linux/amd64 \
             (available: linux/arm64)",
            f.ai_base_cuda.reference()
        ),
        format!(
            "ok    Deployment web, container \"app\" image {:?} (linux/amd64, linux/arm64/v8)",
            f.multi.reference()
        ),
        // The webhook's hint after the object's findings: what the nodes need plus what the image
        // already has (issue 15: a Mac user must not lose the arm64 build).
        "hint  rebuild for every platform: docker buildx build --platform linux/amd64,linux/arm64 ..."
            .to_string(),
        format!(
            "ok    Pod debug, container \"shell\" image {:?} (linux/amd64)",
            f.single_amd64.reference()
        ),
        format!(
            "ok    CronJob nightly, container \"report\" image {:?} (linux/amd64, linux/arm/v7)",
            f.docker_list.reference()
        ),
    ];
    assert_eq!(run.stdout.lines().collect::<Vec<_>>(), expected, "{run}");

    let run = setup.check(&["-f", file, "-o", "json"]);
    assert_eq!(run.code, 1, "{run}");
    let report = run.json();
    assert_eq!(
        located(&report),
        [
            (
                "Deployment/web".into(),
                "migrate".into(),
                json!(["linux/amd64"])
            ),
            ("Deployment/web".into(), "app".into(), json!([])),
            ("Pod/debug".into(), "shell".into(), json!([])),
            ("CronJob/nightly".into(), "report".into(), json!([])),
        ],
        "{run}"
    );
    let entry = &report[3];
    assert_eq!(entry["image"], f.docker_list.reference());
    assert_eq!(entry["digest"], f.docker_list.digest);
    assert_eq!(entry["platforms"], json!(["linux/amd64", "linux/arm/v7"]));
    assert_eq!(entry["error"], Value::Null);

    // `-f -` reads the same documents from stdin; files and images mix.
    let run = setup.check_stdin(&["-f", "-", "-o", "json", &f.multi.reference()], &yaml);
    assert_eq!(run.code, 1, "{run}");
    let report = run.json();
    assert_eq!(report.as_array().unwrap().len(), 5, "{run}");
    assert_eq!(
        located(&Value::Array(report.as_array().unwrap()[1..].to_vec())).len(),
        4
    );
    assert_eq!(report[0]["image"], f.multi.reference());
    assert!(report[0].get("object").is_none(), "{run}");
}

#[tokio::test]
async fn a_pod_pinned_to_arm64_is_checked_against_arm64_only() {
    let setup = Setup::start().await;
    let cuda = setup.fixtures.ai_base_cuda.reference();
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: on-arm
spec:
  nodeSelector:
    kubernetes.io/arch: arm64
  containers:
    - name: trainer
      image: {cuda}
---
apiVersion: v1
kind: Pod
metadata:
  name: anywhere
spec:
  containers:
    - name: trainer
      image: {cuda}
"#
    );
    let both = ["-p", "linux/amd64", "-p", "linux/arm64", "-f", "-"];
    let run = setup.check_stdin(&[&both[..], &["-o", "json"]].concat(), &yaml);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(
        located(&run.json()),
        [
            ("Pod/on-arm".into(), "trainer".into(), json!([])),
            (
                "Pod/anywhere".into(),
                "trainer".into(),
                json!(["linux/amd64"])
            ),
        ],
        "{run}"
    );
    let run = setup.check_stdin(&both, &yaml);
    assert!(run.line_with("on-arm").starts_with("ok"), "{run}");
    let line = run.line_with("anywhere");
    assert!(
        line.starts_with("FAIL") && line.contains("missing linux/amd64"),
        "{run}"
    );

    // Only the pinned pod, only arm64 nodes would take it: it passes.
    let pinned = yaml.split("---").next().unwrap();
    let run = setup.check_stdin(&both, pinned);
    assert_eq!(run.code, 0, "{run}");
}

#[tokio::test]
async fn usage_errors_and_unreachable_registries_exit_2() {
    let setup = Setup::start().await;
    let multi = setup.fixtures.multi.reference();

    let run = setup.check(&["Not/A:Valid:Reference"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stdout.contains("invalid image reference"), "{run}");
    assert!(run.stdout.contains("Not/A:Valid:Reference"), "{run}");

    for bad in ["linux", "Linux/AMD64", "linux/amd64/v8/x"] {
        let run = setup.check(&["-p", bad, &multi]);
        assert_eq!(run.code, 2, "{bad}: {run}");
        assert!(run.stderr.contains("invalid platform"), "{run}");
        assert!(run.stdout.is_empty(), "{run}");
    }

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let image = format!("{closed}/team/app:v1");
    let run = setup.sandbox.run(&["--insecure-registry", &closed, &image]);
    assert_eq!(run.code, 2, "{run}");
    let line = run.line_with(&image);
    assert!(
        line.contains("refused the connection") && line.contains(&closed),
        "{run}"
    );

    // A finding and a registry that could not be asked: the finding (1) wins, so CI fails on what
    // is known to be wrong (issue 10; before, trouble (2) outranked it).
    let cuda = setup.fixtures.ai_base_cuda.reference();
    let run = setup.sandbox.run(&[
        "--insecure-registry",
        &closed,
        "--insecure-registry",
        setup.registry.host(),
        &cuda,
        &image,
    ]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.line_with(&image).starts_with("ERROR"), "{run}");

    let run = setup.check(&["--no-such-flag", &multi]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("--no-such-flag"), "{run}");

    let run = setup.check(&["-o", "yaml", &multi]);
    assert_eq!(run.code, 2, "{run}");

    let run = setup.check(&[]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("nothing to check"), "{run}");

    // A file that cannot be read is said as one input not checked (the others still are).
    let run = setup.check(&["-f", "/nonexistent/pods.yaml"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.line_with("/nonexistent/pods.yaml")
            .starts_with("ERROR /nonexistent/pods.yaml: cannot be read: "),
        "{run}"
    );
}

/// Writes a docker `config.json` with basic-auth credentials for `host` into `dir`.
fn write_docker_config(dir: &Path, host: &str, user: &str, password: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let json = json!({ "auths": { host: { "auth": auth } } });
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&json).unwrap()).unwrap();
}

#[tokio::test]
async fn tls_registry_with_docker_config_and_registry_ca() {
    common::install_crypto_provider();
    let registry = Registry::start_tls_auth("ci", "s3cret-pw").await;
    let fixtures = push_standard_fixtures(&registry).await;
    let sandbox = Sandbox::new();
    let credentials = tempfile::tempdir().unwrap();
    write_docker_config(credentials.path(), registry.host(), "ci", "s3cret-pw");
    let config = credentials.path().join("config.json");
    let config = config.to_str().unwrap();
    let ca = registry.ca_path().to_str().unwrap();
    let multi = fixtures.multi.reference();
    let cuda = fixtures.ai_base_cuda.reference();

    let run = sandbox.run(&["--docker-config", config, "--registry-ca", ca, &multi]);
    assert_eq!(run.code, 0, "{run}");
    let run = sandbox.run(&["--docker-config", config, "--registry-ca", ca, &cuda]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.line_with(&cuda).contains("missing linux/amd64"),
        "{run}"
    );

    // No credentials: the registry refuses, so it could not be asked.
    let run = sandbox.run(&["--registry-ca", ca, &multi]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.line_with(&multi).contains("refused access"), "{run}");

    // Wrong password: the same.
    let wrong = tempfile::tempdir().unwrap();
    write_docker_config(wrong.path(), registry.host(), "ci", "wrong");
    let wrong_config = wrong.path().join("config.json");
    let run = sandbox.run(&[
        "--docker-config",
        wrong_config.to_str().unwrap(),
        "--registry-ca",
        ca,
        &multi,
    ]);
    assert_eq!(run.code, 2, "{run}");

    // Without the CA the certificate is not trusted, and the line says what to do.
    let run = sandbox.run(&["--docker-config", config, &multi]);
    assert_eq!(run.code, 2, "{run}");
    let line = run.line_with(&multi);
    assert!(
        line.contains("not trusted") && line.contains("--registry-ca"),
        "{run}"
    );

    // The default place: $DOCKER_CONFIG/config.json.
    let run = Run::from(
        sandbox
            .command(&["--registry-ca", ca, &multi])
            .env("DOCKER_CONFIG", credentials.path())
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{run}");

    // An empty DOCKER_CONFIG is unset, as docker reads it: ~/.docker/config.json applies, and a
    // config.json in the current directory does not.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".docker")).unwrap();
    std::fs::copy(
        credentials.path().join("config.json"),
        home.path().join(".docker/config.json"),
    )
    .unwrap();
    let decoy = tempfile::tempdir().unwrap();
    write_docker_config(decoy.path(), registry.host(), "ci", "wrong");
    let run = Run::from(
        sandbox
            .command(&["--registry-ca", ca, &multi])
            .env("DOCKER_CONFIG", "")
            .env("HOME", home.path())
            .current_dir(decoy.path())
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{run}");

    // A --docker-config that does not exist is bad usage, naming the file.
    let run = sandbox.run(&[
        "--docker-config",
        "/nonexistent/config.json",
        "--registry-ca",
        ca,
        &multi,
    ]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("/nonexistent/config.json"), "{run}");
}

// ---- the webhook's pipeline in `check -f` (issue 10) ------------------------------------------

/// Before: a Pipeline in another `-f` file was "not found", `kind: List` passed with nothing
/// checked, and bundles were skipped without a word.
#[tokio::test]
async fn files_are_one_catalog_lists_are_expanded_and_bundles_fetched() {
    let setup = Setup::start().await;
    let cuda = setup.fixtures.ai_base_cuda.reference();
    let multi = setup.fixtures.multi.reference();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| write_file(&dir, name, text);
    let run_file = write(
        "run.yaml",
        "apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata: {name: release-1, namespace: ci}\n\
         spec:\n  pipelineRef: {name: release}\n",
    );
    let pipeline_file = write(
        "pipeline.yaml",
        &format!(
            "apiVersion: tekton.dev/v1\nkind: Pipeline\nmetadata: {{name: release}}\nspec:\n  tasks:\n\
             \x20 - name: build\n    taskSpec:\n      steps: [{{name: compile, image: \"{cuda}\"}}]\n"
        ),
    );
    let run = setup.check(&["-f", &run_file, "-f", &pipeline_file]);
    assert_eq!(run.code, 1, "{run}");
    let line = run.line_with(&cuda);
    assert!(
        line.starts_with(
            "FAIL  PipelineRun ci/release-1, pipeline task \"build\" step \"compile\""
        ),
        "{run}"
    );

    let list = write(
        "list.yaml",
        &format!(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {{name: a}}\n\
             \x20 spec:\n    containers: [{{name: app, image: \"{cuda}\"}}]\n\
             - apiVersion: v1\n  kind: Pod\n  metadata: {{name: b}}\n  spec:\n    containers: [{{name: app, image: \"{multi}\"}}]\n"
        ),
    );
    let run = setup.check(&["-f", &list]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.line_with("Pod a,").starts_with("FAIL"), "{run}");
    assert!(run.line_with("Pod b,").starts_with("ok"), "{run}");

    let task = format!(
        "apiVersion: tekton.dev/v1\nkind: Task\nmetadata: {{name: kaniko}}\nspec:\n  steps:\n  - name: build\n    image: \"{cuda}\"\n"
    );
    common::push_tekton_bundle(
        &setup.registry,
        "catalog/kaniko",
        "0.7",
        &[("Task", "kaniko", &task)],
    )
    .await;
    let bundle = setup.image("catalog/kaniko:0.7");
    let by_resolver = write(
        "bundle-run.yaml",
        &format!(
            "apiVersion: tekton.dev/v1\nkind: TaskRun\nmetadata: {{name: t1}}\nspec:\n  taskRef:\n    resolver: bundles\n\
             \x20   params:\n    - {{name: bundle, value: \"{bundle}\"}}\n    - {{name: name, value: kaniko}}\n    - {{name: kind, value: task}}\n"
        ),
    );
    let run = setup.check(&["-f", &by_resolver]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.line_with(&cuda)
            .starts_with("FAIL  TaskRun t1, step \"build\""),
        "{run}"
    );
    let by_v1beta1_field = write(
        "bundle-run-v1beta1.yaml",
        &format!(
            "apiVersion: tekton.dev/v1beta1\nkind: TaskRun\nmetadata: {{name: t2}}\nspec:\n  taskRef: {{name: kaniko, bundle: \"{bundle}\"}}\n"
        ),
    );
    let run = setup.check(&["-f", &by_v1beta1_field]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.line_with(&cuda).starts_with("FAIL"), "{run}");
    // A bundle that cannot be fetched is trouble, said on its own line: exit 2.
    let absent = write(
        "absent.yaml",
        &format!(
            "apiVersion: tekton.dev/v1beta1\nkind: TaskRun\nmetadata: {{name: t3}}\nspec:\n  taskRef: {{name: buildah, bundle: \"{bundle}\"}}\n"
        ),
    );
    let run = setup.check(&["-f", &absent]);
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.line_with("buildah").starts_with("ERROR TaskRun t3"),
        "{run}"
    );
}

/// Before: one unreadable document failed the whole file and hid every finding in it.
#[tokio::test]
async fn an_unreadable_document_is_its_own_error_and_the_rest_is_checked() {
    let setup = Setup::start().await;
    let cuda = setup.fixtures.ai_base_cuda.reference();
    let multi = setup.fixtures.multi.reference();
    let pod = |name: &str, image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: app, image: \"{image}\"}}]\n"
        )
    };
    let broken = "apiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed\n";
    let text = format!(
        "{}---\n{broken}---\n{}",
        pod("bad", &cuda),
        pod("good", &multi)
    );
    let run = setup.check_stdin(&["-f", "-"], &text);
    assert_eq!(
        run.code, 1,
        "a finding outranks the unreadable document:\n{run}"
    );
    assert!(run.line_with("Pod bad,").starts_with("FAIL"), "{run}");
    assert!(run.line_with("Pod good,").starts_with("ok"), "{run}");
    assert!(
        run.line_with("document 2")
            .starts_with("ERROR - document 2"),
        "{run}"
    );

    // Nothing wrong but something unreadable: 2.
    let text = format!("{broken}---\n{}", pod("good", &multi));
    let run = setup.check_stdin(&["-f", "-"], &text);
    assert_eq!(run.code, 2, "{run}");
}

/// `TEKTON_PLATFORM_COMMANDS` in a file is the author's claim: never trusted by `check`.
#[tokio::test]
async fn tekton_platform_commands_in_files_are_not_trusted() {
    let setup = Setup::start().await;
    let cuda = setup.fixtures.ai_base_cuda.reference();
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: step}}\nspec:\n  containers:\n  - name: step-build\n    image: \"{cuda}\"\n\
         \x20   env: [{{name: TEKTON_PLATFORM_COMMANDS, value: '{{\"linux/amd64\":[\"/tool\"]}}'}}]\n"
    );
    let run = setup.check_stdin(&["-f", "-"], &yaml);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.line_with(&cuda).contains("is missing linux/amd64"),
        "{run}"
    );
}

// ---- the command line people meet (issue 15) -------------------------------------------------

/// Before: `archgate check ... | head` panicked with "Broken pipe" (exit 101).
#[test]
fn a_reader_that_goes_away_is_not_a_panic() {
    let sandbox = Sandbox::new();
    // Invalid references need no registry; 3,000 lines overflow any pipe buffer.
    let images: Vec<String> = (0..3000).map(|i| format!("Bad/Reference:{i}:x")).collect();
    let mut command = sandbox.command(&images.iter().map(String::as_str).collect::<Vec<_>>());
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then hang up, as `head -n 1` does.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 64];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(2), "{stderr}");
}

#[test]
fn help_version_and_completions() {
    let run = |args: &[&str]| {
        let out = Command::new(ARCHGATE).args(args).output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, help) = run(&["check", "--help"]);
    assert_eq!(code, Some(0));
    assert!(help.contains("Exit status:"), "{help}");
    assert!(help.contains("1  an image lacks a platform"), "{help}");
    let version = format!("archgate {}", env!("CARGO_PKG_VERSION"));
    for sub in ["serve", "check", "certs"] {
        let (code, out) = run(&[sub, "--version"]);
        assert_eq!(code, Some(0), "{sub} --version");
        assert_eq!(
            out.trim(),
            version.replace("archgate", &format!("archgate-{sub}")),
            "{sub}"
        );
    }
    for (shell, marker) in [
        ("bash", "_archgate()"),
        ("zsh", "#compdef archgate"),
        ("fish", "complete -c archgate"),
    ] {
        let (code, script) = run(&["completions", shell]);
        assert_eq!(code, Some(0), "{shell}");
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("dockerfile") || script.contains("platform"),
            "{shell}"
        );
    }
}

/// Before: `credsStore`/`credHelpers` in ~/.docker/config.json (Docker Desktop's default) were
/// ignored without a word. Here the helper is a real one: Debian's `docker-credential-pass`
/// (installed by `.ci/credential-helpers`) over a `pass` store with a throwaway GPG key.
#[tokio::test]
async fn docker_credential_helpers_are_run() {
    let Some(helpers) = std::env::var_os("ARCHGATE_CREDENTIAL_HELPERS")
        .map(std::path::PathBuf::from)
        .filter(|d| d.join("docker-credential-pass").is_file())
    else {
        // Straight to stderr: the harness captures `println!`.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"skipped docker_credential_helpers_are_run: run .ci/credential-helpers (bash .ci/test does)\n",
        );
        return;
    };
    common::install_crypto_provider();
    let registry = Registry::start_tls_auth("ci", "s3cret-pw").await;
    let fixtures = push_standard_fixtures(&registry).await;
    let sandbox = Sandbox::new();
    let gnupg = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        helpers.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = |c: &mut Command| {
        c.env("GNUPGHOME", gnupg.path())
            .env("PASSWORD_STORE_DIR", store.path())
            .env("PATH", &path);
    };
    let run = |program: &str, args: &[&str], stdin: Option<&str>| {
        let mut c = Command::new(program);
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        env(&mut c);
        let mut child = c.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // A key without a passphrase, a store for it, and the registry's credentials in the store.
    run(
        "gpg",
        &[
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "archgate-test@example.invalid",
            "default",
            "default",
            "never",
        ],
        None,
    );
    let keys = run("gpg", &["--list-keys", "--with-colons"], None);
    let fingerprint = keys
        .lines()
        .find_map(|l| {
            l.strip_prefix("fpr:")
                .map(|f| f.trim_matches(':').to_string())
        })
        .unwrap();
    run("pass", &["init", &fingerprint], None);
    let entry = json!({"ServerURL": registry.host(), "Username": "ci", "Secret": "s3cret-pw"});
    run(
        "docker-credential-pass",
        &["store"],
        Some(&entry.to_string()),
    );

    let config = sandbox.docker_config.path().join("config.json");
    std::fs::write(&config, r#"{"auths": {}, "credsStore": "pass"}"#).unwrap();
    let ca = registry.ca_path().to_str().unwrap();
    let multi = fixtures.multi.reference();
    let cuda = fixtures.ai_base_cuda.reference();
    let mut command = sandbox.command(&["--registry-ca", ca, &multi, &cuda]);
    env(&mut command);
    let run = Run::from(command.output().unwrap());
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains(&format!("ok    {multi}")), "{run}");
    assert!(run.stdout.contains("is missing linux/amd64"), "{run}");

    // A helper that is not installed: said on stderr, the registry asked anonymously (refused).
    std::fs::write(&config, r#"{"credsStore": "absent"}"#).unwrap();
    let run = sandbox.run(&["--registry-ca", ca, &multi]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("docker-credential-absent"), "{run}");
}

/// Issue 19: `check` assumes strict nodes unless told `--runtime-matcher containerd-1.7`, and
/// compares a Windows image's build with the one in `--platform windows(BUILD)/amd64`.
#[tokio::test]
async fn runtime_matcher_and_windows_builds() {
    let setup = Setup::start().await;
    let i386 = ImageSpec::docker_list("fallback/i386", "1", [("linux", "386", None)])
        .push(&setup.registry)
        .await
        .reference();
    let run = setup.check(&["-p", "linux/amd64", &i386]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.line_with(&i386).contains("missing linux/amd64"),
        "{run}"
    );
    let run = setup.check(&[
        "-p",
        "linux/amd64",
        "--runtime-matcher",
        "containerd-1.7",
        &i386,
    ]);
    assert_eq!(run.code, 0, "{run}");

    // The fixture is built for Windows Server 2019 (10.0.17763.5329).
    let windows = setup.fixtures.windows.reference();
    let run = setup.check(&["-p", "windows(10.0.17763)/amd64", &windows]);
    assert_eq!(run.code, 0, "{run}");
    let run = setup.check(&["-p", "windows(10.0.20348)/amd64", &windows]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.line_with(&windows).contains("missing windows"), "{run}");
}

// ---- the audit of `check`'s exit contract ---------------------------------------------------

/// Before: `printf '' | archgate check -f -` exited 0 with no output, so a failed
/// `kustomize build | archgate check -f -` passed CI having checked nothing.
#[test]
fn check_of_empty_input_exits_2() {
    let sandbox = Sandbox::new();
    for text in [
        "",
        "# generated\n---\n---\n# nothing\n...\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n",
    ] {
        let run = sandbox.run_with_stdin(&["-f", "-"], Some(text));
        assert_eq!(run.code, 2, "{text:?}: {run}");
        assert_eq!(run.stdout.lines().count(), 1, "{text:?}: {run}");
        let line = run.line_with("nothing was checked");
        assert!(line.starts_with("ERROR -: "), "{run}");
    }
    // An empty file among other inputs: said for all of them at once.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap();
    let run = sandbox.run(&["-f", empty, "-f", empty]);
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.line_with("nothing was checked").contains(empty),
        "{run}"
    );
}

/// Before: a YAML error printed serde-saphyr's source snippet, lines of the document around the
/// error: a broken Secret's password went to the CI log, over several lines of output.
#[test]
fn an_unreadable_secret_is_not_echoed() {
    let sandbox = Sandbox::new();
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData:\n  password: hunter2-TOPSECRET\n  user: [admin\n";
    let run = sandbox.run_with_stdin(&["-f", "-"], Some(secret));
    assert_eq!(run.code, 2, "{run}");
    assert!(!run.stdout.contains("hunter2"), "{run}");
    assert!(!run.stderr.contains("hunter2"), "{run}");
    assert_eq!(
        run.stdout.lines().count(),
        1,
        "one line per finding:\n{run}"
    );
    let line = run.line_with("document 1");
    assert!(line.starts_with("ERROR - document 1: "), "{run}");
    assert!(
        line.contains("line "),
        "where the error is stays said:\n{run}"
    );
}

/// Before: an unreadable `-f` file or a Dockerfile syntax error ended the run before anything
/// was checked: a failing image named beside it was never reported, and the exit was 2, not 1.
#[tokio::test]
async fn a_missing_file_does_not_hide_a_failure_elsewhere() {
    let setup = Setup::start().await;
    let cuda = setup.fixtures.ai_base_cuda.reference();
    let run = setup.check(&["-f", "/nonexistent/pods.yaml", &cuda]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.line_with(&cuda).starts_with("FAIL"), "{run}");
    assert!(
        run.line_with("/nonexistent/pods.yaml")
            .starts_with("ERROR /nonexistent/pods.yaml: "),
        "{run}"
    );

    let dir = tempfile::tempdir().unwrap();
    let dockerfile = dir.path().join("Dockerfile");
    std::fs::write(&dockerfile, "FROM a b c\n").unwrap();
    let dockerfile = dockerfile.to_str().unwrap();
    let run = setup.check(&["--dockerfile", dockerfile, &cuda]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.line_with(&cuda).starts_with("FAIL"), "{run}");
    assert!(run.line_with("line 1").starts_with("ERROR "), "{run}");

    let run = setup.check(&["--dockerfile", "/nonexistent/Dockerfile", &cuda]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.line_with("/nonexistent/Dockerfile")
            .starts_with("ERROR "),
        "{run}"
    );
}

/// Before: clap counts a value from the environment as given, so ARCHGATE_BUILD_ARGS (exported
/// by a CI job for its Dockerfile step) made every other `check` a usage error.
#[tokio::test]
async fn build_args_from_the_environment_need_no_dockerfile_flag() {
    let setup = Setup::start().await;
    let multi = setup.fixtures.multi.reference();
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: app}}\nspec:\n  containers: [{{name: app, image: \"{multi}\"}}]\n"
    );
    for value in ["", "BASE_IMAGE_TAG=cuda\n"] {
        let run = setup.sandbox.run_with_env(
            &[&setup.insecure, "-f", "-"],
            Some(&pod),
            &[("ARCHGATE_BUILD_ARGS", value)],
        );
        assert_eq!(run.code, 0, "{value:?}: {run}");
        assert!(run.line_with("Pod app,").starts_with("ok"), "{run}");
    }
    // On the command line, a build argument without a Dockerfile is still a mistake to say.
    let run = setup.check(&["--build-arg", "A=1", &multi]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("--dockerfile"), "{run}");
}

/// Before, each of these exited 0 when another input was checked and passed: an empty file
/// among others (a failed `kustomize build > out.yaml`), a document whose `kind:` key is
/// misspelt, and a Pod with `containers: []`. None of them was checked, and nothing said so.
#[tokio::test]
async fn inputs_that_hold_nothing_checkable_are_said_beside_a_pass() {
    let setup = Setup::start().await;
    let multi = setup.fixtures.multi.reference();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| write_file(&dir, name, text);
    let good = write(
        "good.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: app}}\nspec:\n  containers: [{{name: app, image: \"{multi}\"}}]\n"
        ),
    );
    let alone = setup.check(&["-f", &good]);
    assert_eq!(alone.code, 0, "{alone}");

    let empty = write("empty.yaml", "# generated by kustomize\n");
    let kindless = write(
        "kindless.yaml",
        &format!(
            "apiVersion: v1\nKind: Pod\nmetadata: {{name: typo}}\nspec:\n  containers: [{{name: app, image: \"{multi}\"}}]\n"
        ),
    );
    let no_containers = write(
        "none.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers: []\n",
    );
    for (file, at, says) in [
        (&empty, empty.clone(), "holds no YAML document"),
        (&kindless, format!("{kindless} document 1"), "has no kind"),
        (
            &no_containers,
            "Deployment web".to_string(),
            "spec.template.spec.containers is empty",
        ),
    ] {
        let run = setup.check(&["-f", &good, "-f", file]);
        assert_eq!(run.code, 2, "{file}: {run}");
        assert!(run.line_with("Pod app,").starts_with("ok"), "{run}");
        let line = run.line_with(says);
        assert!(line.starts_with(&format!("ERROR {at}")), "{run}");
    }
}

/// Writes `text` to `name` in `dir`, giving its path.
fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}
