//! `archgate check --dockerfile`: the build pre-flight of issue 18, as CI runs it: the built
//! binary, Dockerfiles shaped like real ones, and a real registry holding their base images.
//!
//! The child never sees the developer's docker config or `ARCHGATE_*` settings.

mod common;

use common::{Fixtures, Registry, push_standard_fixtures};
use serde_json::Value;
use tempfile::TempDir;

const ARCHGATE: &str = env!("CARGO_BIN_EXE_archgate");

/// A registry with the standard fixtures and a directory to write Dockerfiles into.
struct Build {
    registry: Registry,
    fixtures: Fixtures,
    dir: TempDir,
}

/// Exit code, stdout and stderr of one `archgate check`.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            code,
            stdout,
            stderr,
        } = self;
        write!(f, "exit {code}\n--- stdout\n{stdout}--- stderr\n{stderr}")
    }
}

impl Build {
    async fn start() -> Self {
        common::install_crypto_provider();
        let registry = Registry::start().await;
        let fixtures = push_standard_fixtures(&registry).await;
        Self {
            registry,
            fixtures,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn host(&self) -> &str {
        self.registry.host()
    }

    /// Writes `text` (with `@REGISTRY@` replaced by the test registry) as `name`, returns its path.
    fn dockerfile(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text.replace("@REGISTRY@", self.host())).unwrap();
        path.display().to_string()
    }

    fn check(&self, args: &[&str]) -> Ran {
        self.check_env(args, &[])
    }

    fn check_env(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let mut command =
            common::sandbox::check_command(ARCHGATE, self.dir.path(), self.dir.path());
        command
            .arg(format!("--insecure-registry={}", self.host()))
            .args(args)
            .envs(env.iter().copied());
        let out = command.output().expect("run archgate");
        Ran {
            code: out.status.code().expect("archgate was killed by a signal"),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }
}

/// The Dockerfile of the Kaniko build this project was born from: the base comes from ARGs.
const AI_JOB: &str = r#"# syntax=docker/dockerfile:1
ARG REGISTRY=@REGISTRY@
ARG BASE_IMAGE_TAG=latest
FROM ${REGISTRY}/cerebral/ai-base:${BASE_IMAGE_TAG}
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
CMD ["python", "train.py"]
"#;

#[tokio::test]
async fn the_arm64_only_base_fails_the_build_preflight_with_the_contract_message() {
    let b = Build::start().await;
    let path = b.dockerfile("Dockerfile", AI_JOB);
    let run = b.check(&["--dockerfile", &path, "--build-arg", "BASE_IMAGE_TAG=cuda"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(
        run.stdout,
        format!(
            "FAIL  Dockerfile line 4: FROM image \"{}/cerebral/ai-base:cuda\" is missing linux/amd64 (available: linux/arm64)\n",
            b.host()
        ),
        "{run}"
    );
    // Built for arm64 only, the same base is fine.
    let run = b.check(&[
        "--dockerfile",
        &path,
        "--build-arg",
        "BASE_IMAGE_TAG=cuda",
        "-p",
        "linux/arm64",
    ]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout
            .starts_with("ok    Dockerfile line 4: FROM image"),
        "{run}"
    );

    // Tekton passes build args one per line in ARCHGATE_BUILD_ARGS.
    let run = b.check_env(
        &["--dockerfile", &path],
        &[("ARCHGATE_BUILD_ARGS", "PIP_INDEX=x\nBASE_IMAGE_TAG=cuda\n")],
    );
    assert_eq!(run.code, 1, "{run}");

    // Without the build arg, the default tag does not exist at all.
    let run = b.check(&["--dockerfile", &path]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout
            .ends_with("cerebral/ai-base:latest\" not found in registry\n"),
        "{run}"
    );
}

/// Cross-compiling as this project's own image does: tools run on the builder's platform, only
/// the final stage is pulled for each target platform.
const CROSS: &str = r#"# syntax=docker/dockerfile:1.10
ARG TOOLCHAIN=@REGISTRY@/cerebral/ai-base:cuda
ARG RUNTIME_TAG=latest

FROM --platform=$BUILDPLATFORM ${TOOLCHAIN} AS build
ARG TARGETPLATFORM
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache \
    --mount=type=bind,from=@REGISTRY@/fixtures/dockerlist:v1,source=/protos,target=/protos \
    make TARGET="$TARGETPLATFORM" OUT=/out/app

FROM @REGISTRY@/fixtures/multi:${RUNTIME_TAG} AS runtime
COPY --from=build /out/app /usr/local/bin/app
ENTRYPOINT ["/usr/local/bin/app"]
"#;

#[tokio::test]
async fn build_platform_stages_are_checked_against_the_builder_not_the_targets() {
    let b = Build::start().await;
    let path = b.dockerfile("Dockerfile.cross", CROSS);
    let both = "linux/amd64,linux/arm64";
    // An arm64 builder (the Mac) cross-compiling for both platforms: the arm64-only toolchain is
    // fine; the bind-mounted image lacks arm64 (it is amd64 + arm/v7).
    let run = b.check(&[
        "--dockerfile",
        &path,
        "-p",
        both,
        "--build-platform",
        "linux/arm64",
    ]);
    assert_eq!(run.code, 1, "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{run}");
    assert!(
        lines[0].starts_with("ok    Dockerfile line 5: FROM image"),
        "{run}"
    );
    assert_eq!(
        lines[1],
        format!(
            "FAIL  Dockerfile line 8: RUN --mount image \"{}/fixtures/dockerlist:v1\" is missing linux/arm64 (available: linux/amd64, linux/arm/v7)",
            b.host()
        ),
        "{run}"
    );
    assert!(
        lines[2].starts_with("ok    Dockerfile line 12: FROM image"),
        "{run}"
    );

    // The same build on an amd64 builder cannot pull the toolchain.
    let run = b.check(&[
        "--dockerfile",
        &path,
        "-p",
        "linux/amd64",
        "--build-platform",
        "linux/amd64",
    ]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.starts_with(&format!(
            "FAIL  Dockerfile line 5: FROM image \"{}/cerebral/ai-base:cuda\" is missing linux/amd64",
            b.host()
        )),
        "{run}"
    );

    // JSON names where each image comes from.
    let run = b.check(&[
        "--dockerfile",
        &path,
        "--build-platform",
        "linux/arm64",
        "-o",
        "json",
    ]);
    let json: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}\n{run}"));
    let sources: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        [
            "Dockerfile line 5: FROM",
            "Dockerfile line 8: RUN --mount",
            "Dockerfile line 12: FROM"
        ],
        "{run}"
    );
}

/// Multi-stage with heredocs, a stage the target does not need, and an image copied from.
const MULTI: &str = r#"# syntax=docker/dockerfile:1
# escape=\
ARG BASE=@REGISTRY@/fixtures/multi:latest

FROM ${BASE} AS deps
RUN <<EOF
set -e
# The heredoc body is shell, not Dockerfile:
FROM @REGISTRY@/no/such-image:1
EOF

FROM @REGISTRY@/fixtures/single-arm64:v1 AS docs
RUN make docs

FROM deps AS app
COPY --from=@REGISTRY@/fixtures/single-amd64:v1 /bin/tool /bin/tool
COPY <<-CONF /etc/app.conf
	FROM @REGISTRY@/no/such-image:2
	CONF
COPY --from=deps /usr/lib /usr/lib

FROM scratch AS export
COPY --from=app /bin/tool /
"#;

#[tokio::test]
async fn only_what_the_target_needs_and_never_heredoc_bodies() {
    let b = Build::start().await;
    let path = b.dockerfile("Containerfile", MULTI);
    let run = b.check(&["--dockerfile", &path]);
    assert_eq!(run.code, 0, "{run}");
    let images: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| l.split('"').nth(1).unwrap())
        .collect();
    assert_eq!(
        images,
        [
            b.fixtures.multi.reference(),
            b.fixtures.single_amd64.reference()
        ],
        "{run}"
    );
    // The docs stage (arm64 only) matters only when it is the target.
    let run = b.check(&["--dockerfile", &path, "--target", "DOCS"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("line 12: FROM image"), "{run}");
    // For arm64 the image copied from is the problem.
    let run = b.check(&["--dockerfile", &path, "-p", "linux/arm64"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains(&format!(
            "FAIL  Dockerfile line 16: COPY --from image \"{}\" is missing linux/arm64",
            b.fixtures.single_amd64.reference()
        )),
        "{run}"
    );
}

#[tokio::test]
async fn trouble_is_exit_2_with_a_sentence() {
    let b = Build::start().await;
    let path = b.dockerfile("Dockerfile", AI_JOB);
    let cases: [(&[&str], &str); 4] = [
        (&["--target", "nope"], "--target \"nope\" is not a stage"),
        (
            &["--build-platform", "linux"],
            "--build-platform: invalid platform",
        ),
        (&["--build-arg", "=x"], "--build-arg \"=x\""),
        (
            &["--build-arg", "BASE_IMAGE_TAG=not a tag"],
            "invalid image reference",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["--dockerfile", path.as_str()];
        args.extend_from_slice(extra);
        let run = b.check(&args);
        assert_eq!(run.code, 2, "{extra:?}: {run}");
        assert!(
            run.stderr.contains(needle) || run.stdout.contains(needle),
            "{extra:?}: {run}"
        );
    }
    let missing = b.dir.path().join("nope").display().to_string();
    let run = b.check(&["--dockerfile", &missing]);
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stdout
            .starts_with(&format!("ERROR --dockerfile {missing}: cannot be read: ")),
        "{run}"
    );

    // An ARG used in FROM without a value is said, not guessed.
    let path = b.dockerfile("Dockerfile.unset", "ARG TAG\nFROM @REGISTRY@/fixtures/multi:${TAG:-latest}\nFROM ${NOPE}@REGISTRY@/fixtures/multi\n");
    let run = b.check(&["--dockerfile", &path]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("line 3: FROM uses $NOPE"), "{run}");
    assert!(!run.stderr.contains("$TAG"), "{run}");
}

// ---- deploy/tekton: the Task, the StepAction and the example Pipeline agree ----------------

mod tekton {
    use std::collections::BTreeSet;

    use clap::{CommandFactory, Parser};
    use serde_json::Value;

    use archgate::cli::Cli;

    fn manifest(name: &str) -> Value {
        let path = format!("deploy/tekton/{name}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut docs = archgate::check::parse_documents(&text).unwrap();
        assert_eq!(docs.len(), 1, "{path}");
        docs.remove(0)
    }

    fn names(list: &Value) -> BTreeSet<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// `$(params.X)` names used anywhere in `value`.
    fn params_used(value: &Value) -> BTreeSet<String> {
        let text = value.to_string();
        text.split("$(params.")
            .skip(1)
            .map(|rest| rest.split(')').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn the_example_pipeline_passes_the_task_exactly_its_params() {
        let task = manifest("task.yaml");
        let pipeline = manifest("example-pipeline.yaml");
        let spec = &task["spec"];
        let declared = names(&spec["params"]);
        let required: BTreeSet<String> = spec["params"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p.get("default").is_none())
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        let tasks = pipeline["spec"]["tasks"].as_array().unwrap();
        let preflight = tasks
            .iter()
            .find(|t| t["taskRef"]["name"] == task["metadata"]["name"])
            .expect("the example Pipeline runs the Task");
        let passed = names(&preflight["params"]);
        assert!(
            passed.is_subset(&declared),
            "the Pipeline passes params the Task lacks: {:?}",
            passed.difference(&declared).collect::<Vec<_>>()
        );
        assert!(required.is_subset(&passed), "required {required:?}");
        // Every workspace the Pipeline binds exists in the Task, and the Task's required ones are bound.
        let bound = names(&preflight["workspaces"]);
        assert!(bound.is_subset(&names(&spec["workspaces"])), "{bound:?}");
        assert!(bound.contains("source"));
        // Every $(params.X) in the Pipeline is one of its own params.
        let pipeline_params = names(&pipeline["spec"]["params"]);
        let used = params_used(&pipeline["spec"]["tasks"]);
        assert!(
            used.is_subset(&pipeline_params),
            "{used:?} vs {pipeline_params:?}"
        );
        // And every $(params.X) in the Task is declared there.
        assert!(params_used(&spec["steps"]).is_subset(&declared));

        // The pre-flight runs after the clone and before the build.
        let order: Vec<&str> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(order, ["fetch-source", "preflight", "build"]);
        assert_eq!(preflight["runAfter"][0], "fetch-source");
        let build = &tasks[2];
        assert_eq!(build["taskRef"]["name"], "kaniko");
        assert_eq!(build["runAfter"][0], "preflight");
    }

    #[test]
    fn the_step_action_runs_what_the_task_runs() {
        let task = manifest("task.yaml");
        let action = manifest("stepaction.yaml");
        let step = &task["spec"]["steps"][0];
        assert_eq!(step["args"], action["spec"]["args"]);
        assert_eq!(step["image"], action["spec"]["image"]);
        let mut task_params = names(&task["spec"]["params"]);
        task_params.insert("DOCKER_CONFIG".into());
        assert_eq!(task_params, names(&action["spec"]["params"]));
        assert_eq!(names(&step["env"]), names(&action["spec"]["env"]));
        assert!(params_used(&action["spec"]).is_subset(&names(&action["spec"]["params"])));
    }

    /// The Task's command line, with its defaults, is one archgate accepts, and its env names are
    /// ones archgate reads.
    #[test]
    fn the_task_speaks_archgates_command_line() {
        let task = manifest("task.yaml");
        let step = &task["spec"]["steps"][0];
        let defaults: Vec<(String, String)> = task["spec"]["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let name = p["name"].as_str().unwrap();
                let value = p["default"].as_str().unwrap_or("x");
                (format!("$(params.{name})"), value.to_string())
            })
            .collect();
        let mut argv = vec!["archgate".to_string()];
        for arg in step["args"].as_array().unwrap() {
            let mut arg = arg.as_str().unwrap().to_string();
            for (from, to) in &defaults {
                arg = arg.replace(from, to);
            }
            argv.push(arg);
        }
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let archgate::cli::Command::Check(check) = cli.command else {
            panic!("{argv:?} is not `check`");
        };
        assert_eq!(
            check.dockerfile.dockerfile.as_deref(),
            Some(std::path::Path::new("./Dockerfile"))
        );
        let mut command = Cli::command();
        command.build();
        let env_names: BTreeSet<String> = command
            .find_subcommand("check")
            .unwrap()
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .chain(["DOCKER_CONFIG".to_string()])
            .collect();
        let used = names(&step["env"]);
        assert!(used.is_subset(&env_names), "{used:?} vs {env_names:?}");
    }
}
