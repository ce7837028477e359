//! Issue 13 through `archgate check -f`: the built binary reads a Tekton run from a file and asks a
//! real registry, after evaluating what Tekton evaluates (`when`, defaults, objects, context).
//! The webhook door asks the same runs in tests/tekton_webhook.rs.

mod common;
mod tekton_runs;

use std::process::Command;

use common::webhook::World;
use common::{Registry, push_standard_fixtures};
use serde_json::Value;

const ARCHGATE: &str = env!("CARGO_BIN_EXE_archgate");

struct Report {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The registry harness (behind its in-process counting proxy) and the binary that asks it. The
/// binary is waited for on a test thread, so tests run multi-threaded to keep the proxy serving.
struct Setup(World);

impl Setup {
    async fn start() -> Self {
        Self(World::new().await)
    }

    fn host(&self) -> &str {
        self.0.proxy.host()
    }

    fn arm(&self) -> String {
        self.0.arm_only()
    }

    fn multi(&self) -> String {
        self.0.multi()
    }

    /// `archgate check --insecure-registry HOST -f run.json ARGS`, with no docker config, proxy
    /// or `ARCHGATE_*` setting of the developer's leaking in.
    fn check(&self, run: &Value, args: &[&str]) -> Report {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("run.json");
        std::fs::write(&file, run.to_string()).unwrap();
        let mut command = Command::new(ARCHGATE);
        command
            .args(["check", "--insecure-registry", self.host(), "-f"])
            .arg(&file)
            .args(args)
            .env("HOME", home.path())
            .env("DOCKER_CONFIG", home.path())
            .env_remove("RUST_LOG");
        for (name, _) in std::env::vars() {
            if name.starts_with("ARCHGATE_") || name.to_ascii_lowercase().ends_with("_proxy") {
                command.env_remove(name);
            }
        }
        let out = command.output().expect("run archgate");
        Report {
            code: out.status.code().expect("archgate was killed by a signal"),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }
}

/// Tekton v1.x `when` (docs/pipelines.md "Guard Task execution using when expressions"): the
/// arm64-only task and finally task are skipped when `arch` is not arm64, so the run passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_false_skips_the_arm64_only_task_and_finally_task() {
    let s = Setup::start().await;
    let run = tekton_runs::guarded_by_when("amd64", &s.arm(), &s.multi());
    let r = s.check(&run, &[]);
    assert_eq!(r.code, 0, "{r}");
    assert!(!r.stdout.contains(&s.arm()), "{r}");
    assert!(
        r.stdout.contains(&format!(
            "pipeline task \"build\" step \"run\" image {:?}",
            s.multi()
        )),
        "{r}"
    );
    let r = s.check(
        &tekton_runs::guarded_by_when("arm64", &s.arm(), &s.multi()),
        &[],
    );
    assert_eq!(r.code, 1, "{r}");
    for task in ["arm-test", "arm-report"] {
        let want = format!(
            "pipeline task \"{task}\" step \"run\" image {:?} is missing linux/amd64",
            s.arm()
        );
        assert!(r.stdout.contains(&want), "{want}\n{r}");
    }
}

/// docs/tasks.md "Specifying Parameters": the object's missing `repo` comes from the default, so
/// the image is known and checked (it was skipped as unknown before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_given_object_param_is_completed_from_its_default() {
    let s = Setup::start().await;
    let repo = format!("{}/cerebral/ai-base", s.host());
    let r = s.check(&tekton_runs::partly_given_object(&repo, "cuda"), &[]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout
            .contains(&format!("image {:?} is missing linux/amd64", s.arm())),
        "{r}"
    );
    assert!(r.stderr.is_empty(), "nothing is left unknown: {r}");
}

/// Pipelines v1.9+ and Tasks v0.68+ resolve defaults that name other params; both images are the
/// arm64-only fixture (they were literal `$(params.registry)/...` text before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_that_name_other_params_are_resolved() {
    let s = Setup::start().await;
    let run = tekton_runs::defaults_naming_params(s.host(), "cerebral/ai-base:cuda");
    let r = s.check(&run, &[]);
    assert_eq!(r.code, 1, "{r}");
    for task in ["pipeline-default", "task-default"] {
        let want = format!(
            "pipeline task \"{task}\" step \"run\" image {:?} is missing",
            s.arm()
        );
        assert!(r.stdout.contains(&want), "{want}\n{r}");
    }
}

/// docs/variables.md: `$(context.pipelineRun.name)` and `$(context.taskRun.name)` are known when
/// the run has a name; a file with only generateName leaves the image unknown, skipped with a
/// warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_names_are_substituted_for_a_fixed_run_name() {
    let s = Setup::start().await;
    let r = s.check(&tekton_runs::named_by_context(Some("ai"), s.host()), &[]);
    assert_eq!(r.code, 1, "{r}");
    for step in ["by-run", "by-task-run"] {
        let want = format!(
            "/ai, pipeline task \"base\" step \"{step}\" image {:?} is missing",
            s.arm()
        );
        assert!(r.stdout.contains(&want), "{want}\n{r}");
    }
    let r = s.check(&tekton_runs::named_by_context(None, s.host()), &[]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stderr.contains("$(context.pipelineRun.name)"), "{r}");
}

/// The pin hint names the run's pod template; `check` prints the webhook's hints after an object's
/// findings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_hint_names_the_runs_pod_template() {
    let s = Setup::start().await;
    let run = tekton_runs::two_tasks(&s.arm(), &s.multi(), false);
    let r = s.check(&run, &["-p", "linux/amd64,linux/arm64"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains(
            "pin it: nodeSelector kubernetes.io/arch: arm64 in spec.taskRunSpecs[].podTemplate (pipelineTaskName: build)"
        ),
        "{r}"
    );
}

/// A run's service account and pull secrets choose the credentials; `check` reads the Secrets and
/// ServiceAccounts in the files it is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_pull_secret_in_the_same_file_opens_a_private_registry() {
    common::install_crypto_provider();
    let registry = Registry::start_tls_auth("ci-bot", "s3cret").await;
    let fixtures = push_standard_fixtures(&registry).await;
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ci-bot:s3cret");
    let config = serde_json::json!({"auths": {registry.host(): {"auth": auth}}}).to_string();
    let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "regcred", "namespace": "ci"}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, config)}});
    let run =
        tekton_runs::with_credentials(&fixtures.ai_base_cuda.reference(), None, Some("regcred"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.yaml");
    std::fs::write(&file, format!("{secret}\n---\n{run}\n")).unwrap();
    std::fs::write(dir.path().join("ca.pem"), registry.ca_pem()).unwrap();
    let out = Command::new(ARCHGATE)
        .args(["check", "--registry-ca"])
        .arg(dir.path().join("ca.pem"))
        .arg("-f")
        .arg(&file)
        .env("HOME", dir.path())
        .env("DOCKER_CONFIG", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("missing linux/amd64"), "{stdout}");
}
