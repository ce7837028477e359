//! Dockerfiles: which images a build pulls, and for which platform each must exist.
//!
//! The build-time twin of the pod extractors: a Kaniko or BuildKit build fails with `no matching
//! manifest for linux/amd64` when a base image lacks the target platform, and nothing at
//! admission can see it, because the Dockerfile lives in git. Pure: text and build options in,
//! [`Target`]s out; no registry, no file system.
//!
//! BuildKit's `frontend/dockerfile` is the authority (moby/buildkit, read at 73ed6825):
//! - `instructions/parse.go` `Parse`: ARGs before the first FROM are the global ("meta") ARGs;
//!   everything else belongs to the stage opened by the last FROM.
//! - `dockerfile2llb/platform.go` `defaultArgs`: `BUILDPLATFORM`, `BUILDOS`, `BUILDOSVERSION`,
//!   `BUILDARCH`, `BUILDVARIANT`, the same five `TARGET*` and `TARGETSTAGE` are always in the
//!   global scope; a `--build-arg` of the same name overrides.
//! - `dockerfile2llb/convert.go` `buildMetaArgs`: each global ARG is its `--build-arg` value
//!   (taken verbatim) or its default expanded with the globals before it; an ARG with neither
//!   stays unset. `buildDispatchStates`: FROM's image and `--platform` are expanded with the
//!   globals only, so an ARG inside a stage never changes a later FROM.
//! - `addState`: a FROM naming an earlier stage builds on it; `scratch` is no image.
//! - `toCommand` and `convert_runmount.go` `detectRunMount`: `COPY --from` names a stage (by name
//!   or index) or else an image; `RUN --mount=...,from=` a stage by name or else an image;
//!   neither expands variables (BuildKit refuses it).
//! - `resolveTarget` and `allReachableStages`: only the target stage (`--target`, default the
//!   last) and the stages it reaches through FROM, `COPY --from` and `--mount from` are built.
//! - `resolveBaseImage`: an image is pulled for its stage's `--platform`, or else for the
//!   target platform; images named by `COPY --from` and `--mount from` always for the target
//!   platform. A multi-platform build runs all of this once per target platform.
//!
//! Not seen from here: ONBUILD triggers of base images (they live in the registry) and named
//! build contexts (`--build-context`).

mod expand;
pub mod parse;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{Location, Placement, Target};
use crate::platform::Platform;
use parse::{Instruction, words};

/// Target platforms past this are refused (a bound on work: the file is evaluated per platform).
pub const MAX_TARGET_PLATFORMS: usize = 32;

/// What the build would be run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// `docker buildx build --platform`: the platforms of the image being built.
    pub target_platforms: Vec<Platform>,
    /// The builder's own platform: what `$BUILDPLATFORM` stages run on.
    pub build_platform: Platform,
    /// `--build-arg KEY=VALUE`.
    pub args: BTreeMap<String, String>,
    /// `--target STAGE`; the last stage when `None`.
    pub target: Option<String>,
}

/// The Dockerfile cannot be read as BuildKit would read it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileError {
    #[error("Dockerfile is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("Dockerfile has more than {limit} {what}")]
    TooMany { what: &'static str, limit: usize },
    #[error("Dockerfile line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    #[error("Dockerfile has no FROM instruction: nothing is built")]
    NoStages,
    #[error("--target {target:?} is not a stage of the Dockerfile (stages: {stages})")]
    UnknownTarget { target: String, stages: String },
}

/// The images a build pulls, and what could not be evaluated (warnings for the user).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extraction {
    pub targets: Vec<Target>,
    pub warnings: Vec<String>,
}

/// Every image the build of `build.target` pulls, each with the platforms it must provide.
pub fn extract(text: &str, build: &Build) -> Result<Extraction, DockerfileError> {
    if build.target_platforms.len() > MAX_TARGET_PLATFORMS {
        return Err(DockerfileError::TooMany {
            what: "target platforms",
            limit: MAX_TARGET_PLATFORMS,
        });
    }
    let parsed = parse::parse(text)?;
    let file = File::read(&parsed.instructions, parsed.escape)?;
    let target = file.target_stage(build.target.as_deref())?;

    // (line, instruction, image) -> platforms; ordered by line for the report.
    let mut needs: BTreeMap<(usize, &'static str, String), BTreeSet<Platform>> = BTreeMap::new();
    let mut warnings = BTreeSet::new();
    for target_platform in &build.target_platforms {
        let pulls = file.pulls(build, target_platform, target, &mut warnings)?;
        for pull in pulls {
            needs
                .entry((pull.line, pull.what, pull.image))
                .or_default()
                .insert(pull.platform.normalized());
        }
    }
    let targets = needs
        .into_iter()
        .map(|((line, what, image), platforms)| Target {
            location: Location {
                object: None,
                container: String::new(),
                scope: format!("Dockerfile line {line}: {what}"),
            },
            image,
            placement: Arc::new(Placement {
                platforms: Some(platforms.into_iter().collect()),
                ..Placement::default()
            }),
            known_platforms: None,
        })
        .collect();
    Ok(Extraction {
        targets,
        warnings: warnings.into_iter().collect(),
    })
}

/// A global ARG: `ARG NAME` or `ARG NAME=default` before the first FROM.
#[derive(Debug)]
struct GlobalArg {
    line: usize,
    name: String,
    default: Option<String>,
}

/// One `FROM` and what its stage pulls from elsewhere.
#[derive(Debug)]
struct Stage {
    line: usize,
    /// The image or stage as written, before expansion.
    base: String,
    /// `--platform=...` as written.
    platform: Option<String>,
    /// `AS name`, lower-cased as BuildKit does.
    name: Option<String>,
    sources: Vec<Source>,
}

/// `COPY --from=X` or `RUN --mount=...,from=X`.
#[derive(Debug)]
struct Source {
    line: usize,
    what: &'static str,
    from: String,
    /// `COPY --from=0` may name a stage by index; a mount's `from` may not.
    by_index: bool,
}

/// One image pull for one target platform.
struct Pull {
    line: usize,
    what: &'static str,
    image: String,
    platform: Platform,
}

/// What a FROM builds on, once expanded.
enum Base {
    Scratch,
    Stage(usize),
    Image(String),
}

/// Stages per BuildKit are at most this many (a bound on work: far above real files).
const MAX_STAGES: usize = 1_000;

struct File {
    globals: Vec<GlobalArg>,
    stages: Vec<Stage>,
    escape: char,
}

impl File {
    fn read(instructions: &[Instruction], escape: char) -> Result<Self, DockerfileError> {
        let mut globals = Vec::new();
        let mut stages: Vec<Stage> = Vec::new();
        for ins in instructions {
            let syntax = |reason: String| DockerfileError::Syntax {
                line: ins.line,
                reason,
            };
            match (ins.keyword.as_str(), stages.last_mut()) {
                ("ARG", None) => {
                    for word in words(&ins.rest, escape) {
                        let (name, default) = match word.split_once('=') {
                            Some((name, value)) => (name.to_string(), Some(value.to_string())),
                            None => (word, None),
                        };
                        if name.is_empty() {
                            return Err(syntax("ARG names can't be blank".into()));
                        }
                        globals.push(GlobalArg {
                            line: ins.line,
                            name,
                            default,
                        });
                    }
                }
                ("FROM", _) => {
                    stages.push(read_from(ins).map_err(syntax)?);
                    if stages.len() > MAX_STAGES {
                        return Err(DockerfileError::TooMany {
                            what: "stages",
                            limit: MAX_STAGES,
                        });
                    }
                }
                (_, None) => {
                    return Err(syntax(format!(
                        "{} before the first FROM: only ARG may come first",
                        ins.keyword
                    )));
                }
                ("COPY", Some(stage)) => {
                    // An empty `--from=` copies from the context, as no flag (BuildKit tests
                    // `c.From != ""`).
                    if let Some(from) = flag_value(&ins.flags, "from").filter(|f| !f.is_empty()) {
                        stage
                            .sources
                            .push(unexpanded(ins.line, "COPY --from", from, true)?);
                    }
                }
                ("RUN", Some(stage)) => {
                    for mount in ins.flags.iter().filter_map(|f| f.strip_prefix("--mount=")) {
                        if let Some(from) = mount_from(mount).map_err(syntax)? {
                            stage
                                .sources
                                .push(unexpanded(ins.line, "RUN --mount", &from, false)?);
                        }
                    }
                }
                _ => {}
            }
        }
        if stages.is_empty() {
            return Err(DockerfileError::NoStages);
        }
        Ok(Self {
            globals,
            stages,
            escape,
        })
    }

    /// A stage by name, case-insensitively; of two stages with one name the last wins, as in
    /// BuildKit's `statesByName`.
    fn find_stage(&self, name: &str) -> Option<usize> {
        let name = name.to_ascii_lowercase();
        self.stages
            .iter()
            .rposition(|s| s.name.as_deref() == Some(name.as_str()))
    }

    /// `--target`, matched case-insensitively; the last stage by default.
    fn target_stage(&self, target: Option<&str>) -> Result<usize, DockerfileError> {
        match target.filter(|t| !t.is_empty()) {
            None => Ok(self.stages.len() - 1),
            Some(t) => self.find_stage(t).ok_or_else(|| {
                let names: Vec<&str> = self
                    .stages
                    .iter()
                    .filter_map(|s| s.name.as_deref())
                    .collect();
                DockerfileError::UnknownTarget {
                    target: t.to_string(),
                    stages: if names.is_empty() {
                        "none named".into()
                    } else {
                        names.join(", ")
                    },
                }
            }),
        }
    }

    /// The global scope for one target platform: the automatic platform ARGs, then each global
    /// ARG in order.
    fn globals(
        &self,
        build: &Build,
        target_platform: &Platform,
        target: usize,
    ) -> Result<BTreeMap<String, String>, DockerfileError> {
        let bp = &build.build_platform;
        let tp = target_platform;
        let stage = self.stages[target]
            .name
            .clone()
            .unwrap_or_else(|| "default".into());
        let automatic = [
            ("BUILDPLATFORM", bp.to_string()),
            ("BUILDOS", bp.os.clone()),
            ("BUILDOSVERSION", bp.os_version.clone().unwrap_or_default()),
            ("BUILDARCH", bp.architecture.clone()),
            ("BUILDVARIANT", bp.variant.clone().unwrap_or_default()),
            ("TARGETPLATFORM", tp.to_string()),
            ("TARGETOS", tp.os.clone()),
            ("TARGETOSVERSION", tp.os_version.clone().unwrap_or_default()),
            ("TARGETARCH", tp.architecture.clone()),
            ("TARGETVARIANT", tp.variant.clone().unwrap_or_default()),
            ("TARGETSTAGE", stage),
        ];
        let mut env: BTreeMap<String, String> = automatic
            .into_iter()
            .map(|(k, v)| (k.to_string(), build.args.get(k).cloned().unwrap_or(v)))
            .collect();
        for arg in &self.globals {
            let value = match (build.args.get(&arg.name), &arg.default) {
                (Some(given), _) => Some(given.clone()),
                (None, Some(default)) => {
                    // An ARG default built from unset variables is common and harmless; a
                    // FROM that ends up using it is warned about on its own line.
                    Some(self.expand(default, &env, arg.line, "ARG", &mut BTreeSet::new())?)
                }
                (None, None) => None,
            };
            if let Some(value) = value {
                env.insert(arg.name.clone(), value);
            }
        }
        Ok(env)
    }

    fn expand(
        &self,
        word: &str,
        env: &BTreeMap<String, String>,
        line: usize,
        what: &str,
        warnings: &mut BTreeSet<String>,
    ) -> Result<String, DockerfileError> {
        let expanded =
            expand::expand(word, env, self.escape).map_err(|reason| DockerfileError::Syntax {
                line,
                reason: format!("{what} {word:?}: {reason}"),
            })?;
        for name in expanded.unset {
            warnings.insert(format!(
                "Dockerfile line {line}: {what} uses ${name}, which has no value here (declare `ARG {name}=...` before the first FROM, or give --build-arg {name}=...)"
            ));
        }
        Ok(expanded.text)
    }

    /// The pulls of a build for one target platform.
    fn pulls(
        &self,
        build: &Build,
        target_platform: &Platform,
        target: usize,
        warnings: &mut BTreeSet<String>,
    ) -> Result<Vec<Pull>, DockerfileError> {
        let env = self.globals(build, target_platform, target)?;
        let mut bases = Vec::with_capacity(self.stages.len());
        let mut platforms = Vec::with_capacity(self.stages.len());
        // Said only for the stages the build needs.
        let mut unset = vec![BTreeSet::new(); self.stages.len()];
        for (i, stage) in self.stages.iter().enumerate() {
            let warnings = &mut unset[i];
            let base = self.expand(&stage.base, &env, stage.line, "FROM", warnings)?;
            if base.is_empty() {
                return Err(DockerfileError::Syntax {
                    line: stage.line,
                    reason: format!("FROM {:?} expands to an empty image name", stage.base),
                });
            }
            // Only earlier stages can be built on (BuildKit's `addState` looks them up as it goes).
            let earlier = self.stages[..i]
                .iter()
                .rposition(|s| s.name.as_deref() == Some(base.as_str()));
            bases.push(match earlier {
                _ if base == "scratch" => Base::Scratch,
                Some(j) => Base::Stage(j),
                None => Base::Image(base),
            });
            let platform = match &stage.platform {
                None => None,
                Some(written) => {
                    let text =
                        self.expand(written, &env, stage.line, "FROM --platform", warnings)?;
                    Some(Platform::parse(&text).map_err(|e| DockerfileError::Syntax {
                        line: stage.line,
                        reason: format!("FROM --platform={written}: {e}"),
                    })?)
                }
            };
            platforms.push(platform);
        }

        let mut pulls = Vec::new();
        let mut seen = vec![false; self.stages.len()];
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            let stage = &self.stages[i];
            warnings.append(&mut unset[i]);
            match &bases[i] {
                Base::Scratch => {}
                Base::Stage(j) => todo.push(*j),
                Base::Image(image) => pulls.push(Pull {
                    line: stage.line,
                    what: "FROM",
                    image: image.clone(),
                    platform: platforms[i]
                        .clone()
                        .unwrap_or_else(|| target_platform.clone()),
                }),
            }
            for source in &stage.sources {
                let by_index = source
                    .by_index
                    .then(|| source.from.parse::<usize>().ok())
                    .flatten();
                let stage_ref = match by_index {
                    Some(n) if n < self.stages.len() => Some(n),
                    Some(n) => {
                        return Err(DockerfileError::Syntax {
                            line: source.line,
                            reason: format!(
                                "{} names stage {n}, which does not exist",
                                source.what
                            ),
                        });
                    }
                    None => self.find_stage(&source.from),
                };
                match stage_ref {
                    Some(j) => todo.push(j),
                    None if source.from == "scratch" => {}
                    None => pulls.push(Pull {
                        line: source.line,
                        what: source.what,
                        image: source.from.clone(),
                        platform: target_platform.clone(),
                    }),
                }
            }
        }
        Ok(pulls)
    }
}

/// `FROM [--platform=P] IMAGE [AS NAME]`.
fn read_from(ins: &Instruction) -> Result<Stage, String> {
    let args: Vec<&str> = ins.rest.split_whitespace().collect();
    let name = match args.as_slice() {
        [_] => None,
        [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
            let name = name.to_ascii_lowercase();
            let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !valid {
                return Err(format!(
                    "invalid stage name {name:?}: it must start with a letter and hold only letters, digits, '-', '_' and '.'"
                ));
            }
            Some(name)
        }
        _ => return Err("FROM takes an image and optionally `AS name`".into()),
    };
    let mut platform = None;
    for flag in &ins.flags {
        match flag.strip_prefix("--platform=") {
            Some(value) => platform = Some(value.to_string()),
            None => return Err(format!("unknown FROM flag {flag}")),
        }
    }
    Ok(Stage {
        line: ins.line,
        base: args[0].to_string(),
        platform,
        name,
        sources: Vec::new(),
    })
}

/// The value of `--name=value` among builder flags (the last one wins).
fn flag_value<'a>(flags: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    flags.iter().rev().find_map(|f| f.strip_prefix(&prefix))
}

/// BuildKit refuses variables in `--from` and mount `from` (`toCommand`, `parseMount`).
fn unexpanded(
    line: usize,
    what: &'static str,
    from: &str,
    by_index: bool,
) -> Result<Source, DockerfileError> {
    if from.contains('$') && !from.ends_with('$') {
        return Err(DockerfileError::Syntax {
            line,
            reason: format!(
                "{what}={from}: BuildKit does not expand variables here; add a stage `FROM {from} AS name` and use its name"
            ),
        });
    }
    Ok(Source {
        line,
        what,
        from: from.to_string(),
        by_index,
    })
}

/// The `from` field of a `--mount` value: comma-separated `key=value` fields, CSV-quoted.
fn mount_from(spec: &str) -> Result<Option<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    if quoted {
        return Err(format!("--mount={spec}: unterminated quote"));
    }
    fields.push(field);
    // An empty `from=` mounts nothing from elsewhere (`detectRunMount`: scratch).
    Ok(fields.iter().find_map(|f| {
        let (key, value) = f.split_once('=')?;
        (key.trim().eq_ignore_ascii_case("from") && !value.is_empty()).then(|| value.to_string())
    }))
}

/// The default builder platform (`$BUILDPLATFORM`): Linux on the CPU archgate runs on, in Go's
/// spelling, since a CI step usually runs beside the build it guards. Always Linux, never the
/// host's OS: BuildKit runs Linux builds, and on macOS or Windows Docker Desktop runs it in a Linux
/// VM of the host's architecture, so a Mac's builder is linux/arm64, not darwin/arm64.
pub fn host_platform() -> Platform {
    builder_platform(std::env::consts::ARCH)
}

/// `linux/<arch>` for a Rust target architecture name (`std::env::consts::ARCH`).
fn builder_platform(rust_arch: &str) -> Platform {
    let arch = match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    Platform::new("linux", arch, None).normalized()
}

#[cfg(test)]
mod tests;
