//! `archgate check --dockerfile`: from the flags and the file on disk to the build's targets,
//! which then go through the same pipeline as every other image `check` looks at.

use std::io::Read;
use std::path::PathBuf;

use crate::cli::DockerfileArgs;
use crate::platform::{Platform, PlatformError};
use crate::workload::dockerfile::{self, Build, DockerfileError, Extraction, parse::MAX_BYTES};

/// Why the build's targets could not be found. A flag's value is bad usage (the run stops); a
/// Dockerfile that cannot be read is one input not checked, said on its own line while the
/// others still are ([`PreflightError::is_usage`]).
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("--build-platform: {0}")]
    BuildPlatform(#[source] PlatformError),
    #[error("--build-arg {given:?}: expected KEY=VALUE with a KEY of no spaces")]
    BuildArg { given: String },
    #[error("cannot be read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{source}")]
    Dockerfile {
        path: PathBuf,
        #[source]
        source: DockerfileError,
    },
}

impl PreflightError {
    /// Bad usage: nothing is checked. Otherwise the Dockerfile is one input that was not.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::BuildPlatform(_) | Self::BuildArg { .. })
    }

    /// Where the report says it: the flag and file for one that cannot be read, the file for
    /// what is wrong in it.
    pub fn at(&self) -> String {
        match self {
            Self::Read { path, .. } => format!("--dockerfile {}", path.display()),
            Self::Dockerfile { path, .. } => path.display().to_string(),
            Self::BuildPlatform(_) | Self::BuildArg { .. } => String::new(),
        }
    }
}

/// Reads the Dockerfile named by `--dockerfile` and extracts what its build pulls for the
/// target platforms `platforms` (`-p`). The flags are read first, so bad usage is said whatever
/// the file holds.
pub fn targets(
    args: &DockerfileArgs,
    platforms: &[Platform],
) -> Result<Extraction, PreflightError> {
    let DockerfileArgs {
        dockerfile,
        build_args,
        target,
        build_platform,
    } = args;
    let Some(path) = dockerfile else {
        return Ok(Extraction::default());
    };
    let build_platform = match build_platform.as_deref().map(str::trim) {
        // Empty is "not given": a Tekton param cannot leave a flag out.
        None | Some("") => dockerfile::host_platform(),
        Some(p) => Platform::parse(p).map_err(PreflightError::BuildPlatform)?,
    };
    let build = Build {
        target_platforms: platforms.to_vec(),
        build_platform,
        args: parse_build_args(build_args, |key| std::env::var(key).ok())?,
        target: target.clone(),
    };
    let read = |source| PreflightError::Read {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    // Read one byte past the bound so that an oversized file is refused, not cut.
    let mut text = String::new();
    file.take(MAX_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    dockerfile::extract(&text, &build).map_err(|source| PreflightError::Dockerfile {
        path: path.clone(),
        source,
    })
}

/// `KEY=VALUE`, or `KEY` alone for the value of `$KEY` (left unset when the environment has
/// none), as `docker build --build-arg` does. Blank entries (from a trailing newline in
/// `ARCHGATE_BUILD_ARGS`) are skipped.
fn parse_build_args(
    values: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<std::collections::BTreeMap<String, String>, PreflightError> {
    let mut out = std::collections::BTreeMap::new();
    for given in values.iter().map(|v| v.trim_end_matches('\r')) {
        if given.trim().is_empty() {
            continue;
        }
        let (key, value) = match given.split_once('=') {
            Some((key, value)) => (key.trim(), Some(value.to_string())),
            None => (given.trim(), env(given.trim())),
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(PreflightError::BuildArg {
                given: given.to_string(),
            });
        }
        if let Some(value) = value {
            out.insert(key.to_string(), value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args_as_docker_reads_them() {
        let values: Vec<String> = ["A=1", "B=x=y", "", "FROM_ENV", "UNSET", "C=\r", "D="]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let env = |k: &str| (k == "FROM_ENV").then(|| "e".to_string());
        let got = parse_build_args(&values, env).unwrap();
        let want = [
            ("A", "1"),
            ("B", "x=y"),
            ("C", ""),
            ("D", ""),
            ("FROM_ENV", "e"),
        ];
        assert_eq!(
            got.iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
            want
        );
        assert!(parse_build_args(&["=1".to_string()], env).is_err());
        assert!(parse_build_args(&["A B=1".to_string()], env).is_err());
    }
}
