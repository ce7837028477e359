//! The verdict: checked targets in, allow/deny with messages out. Pure; every word a user reads
//! about a finding is written here.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::platform::{self, Platform};
use crate::reference::ReferenceError;
use crate::resolver::{Resolution, ResolveError};
use crate::scheduling;
use crate::workload::Target;

/// What archgate does with a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny the object.
    Enforce,
    /// Allow it, with one warning per finding shown by kubectl.
    Warn,
    /// Allow it silently; log and count.
    Audit,
    /// Do not look at all (per-namespace only).
    #[value(skip)]
    Off,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Audit => "audit",
            Mode::Off => "off",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "warn" => Ok(Mode::Warn),
            "audit" => Ok(Mode::Audit),
            "off" => Ok(Mode::Off),
            other => Err(format!(
                "unknown mode {other:?}: use enforce, warn, audit or off"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnRegistryError {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnMissingImage {
    Deny,
    Warn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub on_registry_error: OnRegistryError,
    pub on_missing_image: OnMissingImage,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            on_registry_error: OnRegistryError::Allow,
            on_missing_image: OnMissingImage::Deny,
        }
    }
}

/// What was learned about one target's image.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Resolved(Resolution),
    Failed(ResolveError),
    Invalid(ReferenceError),
}

/// A target with the platforms it must run on and what its registry said.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub target: Target,
    pub candidates: Vec<Platform>,
    pub outcome: Outcome,
}

impl Checked {
    /// Candidate platforms the image does not provide.
    pub fn missing(&self) -> Vec<Platform> {
        match &self.outcome {
            Outcome::Resolved(r) => self
                .candidates
                .iter()
                .filter(|need| !r.platforms.iter().any(|have| have.satisfies(need)))
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// One thing wrong (or unknowable) about an object.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    Missing {
        at: String,
        image: String,
        missing: Vec<Platform>,
        available: Vec<Platform>,
    },
    NotFound {
        at: String,
        image: String,
    },
    InvalidReference {
        at: String,
        error: ReferenceError,
    },
    RegistryTrouble {
        at: String,
        image: String,
        error: ResolveError,
    },
    NoCandidates {
        at: String,
        image: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Missing {
                at,
                image,
                missing,
                available,
            } => write!(
                f,
                "{at} image {image:?} is missing {} (available: {})",
                platform::list(missing),
                platform::list(available)
            ),
            Finding::NotFound { at, image } => {
                write!(f, "{at} image {image:?} not found in registry")
            }
            Finding::InvalidReference { at, error } => write!(f, "{at}: {error}"),
            Finding::RegistryTrouble { at, image, error } => {
                write!(
                    f,
                    "{at} image {image:?} was not checked: {}",
                    error.summary()
                )
            }
            Finding::NoCandidates { at, image } => write!(
                f,
                "{at} image {image:?} was not checked: no node platform matches the pod's node selector and affinity"
            ),
        }
    }
}

/// The answer for one object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    pub allowed: bool,
    /// Set when denied: every denying finding on its own line, then the hints.
    pub message: Option<String>,
    /// Shown by kubectl; each under 120 characters.
    pub warnings: Vec<String>,
    /// Everything found, denying or not, for logs, metrics and `archgate check`.
    pub findings: Vec<Finding>,
}

/// The API server truncates long warnings; kubectl shows them one per line.
pub const MAX_WARNING_CHARS: usize = 120;
/// Warnings per answer, at most; past it one line counts the rest (all are in the log).
pub const MAX_WARNINGS: usize = 25;
/// A denial message, at most (an index may list thousands of platforms).
pub const MAX_MESSAGE_CHARS: usize = 4096;

/// Turns checked targets (and extraction's own warnings) into a verdict under `policy`.
pub fn decide(checked: &[Checked], notes: &[String], policy: &Policy) -> Verdict {
    let mut findings = Vec::new();
    let mut denying = Vec::new();
    for c in checked {
        let at = c.target.location.to_string();
        let image = c.target.image.clone();
        let (finding, denies) = match &c.outcome {
            _ if c.candidates.is_empty() => (Finding::NoCandidates { at, image }, false),
            Outcome::Invalid(error) => (
                Finding::InvalidReference {
                    at,
                    error: error.clone(),
                },
                true,
            ),
            Outcome::Failed(e) if e.is_not_found() => (
                Finding::NotFound { at, image },
                policy.on_missing_image == OnMissingImage::Deny,
            ),
            Outcome::Failed(error) => (
                Finding::RegistryTrouble {
                    at,
                    image,
                    error: error.clone(),
                },
                policy.on_registry_error == OnRegistryError::Deny,
            ),
            Outcome::Resolved(r) => {
                let missing = c.missing();
                if missing.is_empty() {
                    continue;
                }
                let finding = Finding::Missing {
                    at,
                    image,
                    missing,
                    available: r.platforms.to_vec(),
                };
                (finding, true)
            }
        };
        if denies {
            denying.push(findings.len());
        }
        findings.push(finding);
    }

    let mut warnings: Vec<String> = notes.iter().map(|n| clip(n)).collect();
    let deny = policy.mode == Mode::Enforce && !denying.is_empty();
    for (i, finding) in findings.iter().enumerate() {
        let shown_as_warning = match policy.mode {
            Mode::Enforce => !denying.contains(&i),
            Mode::Warn => true,
            Mode::Audit | Mode::Off => false,
        };
        if shown_as_warning {
            warnings.push(clip(&finding.to_string()));
        }
    }
    if warnings.len() > MAX_WARNINGS {
        let more = warnings.len() - (MAX_WARNINGS - 1);
        warnings.truncate(MAX_WARNINGS - 1);
        warnings.push(format!(
            "… and {more} more warnings (archgate's log has them all)"
        ));
    }
    let message = deny.then(|| {
        let mut lines: Vec<String> = denying.iter().map(|&i| findings[i].to_string()).collect();
        lines.extend(hints(checked));
        clip_to(&lines.join("\n"), MAX_MESSAGE_CHARS)
    });
    Verdict {
        allowed: !deny,
        message,
        warnings,
        findings,
    }
}

/// What to do about it: rebuild for every platform, or pin the pod where its images already run.
fn hints(checked: &[Checked]) -> Vec<String> {
    let mut out = Vec::new();
    let needed: BTreeSet<String> = checked
        .iter()
        .filter(|c| !c.missing().is_empty())
        .flat_map(|c| c.candidates.iter().map(|p| p.to_string()))
        .collect();
    if !needed.is_empty() {
        let list: Vec<String> = needed.into_iter().collect();
        out.push(format!(
            "rebuild for every platform: docker buildx build --platform {} ...",
            list.join(",")
        ));
    }
    // Mixed clusters: a platform every image provides that some node offers.
    let resolved: Vec<(&Checked, &Resolution)> = checked
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::Resolved(r) => Some((c, r)),
            _ => None,
        })
        .collect();
    let any_missing = resolved.iter().any(|(c, _)| !c.missing().is_empty());
    if any_missing {
        let candidates: BTreeSet<&Platform> = resolved
            .iter()
            .flat_map(|(c, _)| c.candidates.iter())
            .collect();
        let shared = candidates.into_iter().find(|cand| {
            resolved
                .iter()
                .all(|(_, r)| r.platforms.iter().any(|have| have.satisfies(cand)))
        });
        if let Some(platform) = shared
            && candidates_differ(&resolved)
        {
            out.push(scheduling::pin_hint(platform));
        }
    }
    out
}

/// Pinning only helps when the pod could land on more than one platform.
fn candidates_differ(resolved: &[(&Checked, &Resolution)]) -> bool {
    resolved.iter().any(|(c, _)| c.candidates.len() > 1)
}

/// Keeps a warning within what the API server passes on intact.
fn clip(text: &str) -> String {
    clip_to(text, MAX_WARNING_CHARS)
}

/// `text` within `max` characters, an ellipsis marking a cut.
fn clip_to(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Location, Placement};
    use std::sync::Arc;

    fn target(name: &str, image: &str) -> Target {
        Target {
            location: Location::container(None, name),
            image: image.into(),
            placement: Arc::new(Placement::default()),
            known_platforms: None,
        }
    }

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    fn resolved(platforms: &[Platform]) -> Outcome {
        Outcome::Resolved(Resolution {
            digest: "sha256:x".into(),
            platforms: platforms.to_vec().into(),
        })
    }

    fn checked(name: &str, image: &str, candidates: &[&str], outcome: Outcome) -> Checked {
        Checked {
            target: target(name, image),
            candidates: candidates.iter().map(|c| p(c)).collect(),
            outcome,
        }
    }

    const REF: &str = "10.34.0.202:5000/cerebral/ai-base:cuda";

    #[test]
    fn enforce_denies_with_the_contract_message_and_hint() {
        let arm = Platform::new("linux", "arm64", Some("v8"));
        let c = vec![
            checked("app", REF, &["linux/amd64"], resolved(&[arm])),
            checked(
                "ok",
                "nginx",
                &["linux/amd64"],
                resolved(&[p("linux/amd64")]),
            ),
        ];
        let v = decide(&c, &[], &Policy::default());
        assert!(!v.allowed);
        assert_eq!(
            v.message.as_deref().unwrap(),
            "container \"app\" image \"10.34.0.202:5000/cerebral/ai-base:cuda\" is missing linux/amd64 (available: linux/arm64/v8)\n\
             rebuild for every platform: docker buildx build --platform linux/amd64 ..."
        );
        assert!(v.warnings.is_empty());
        assert_eq!(v.findings.len(), 1);
    }

    #[test]
    fn messages_and_warnings_are_bounded_however_many_platforms_and_findings() {
        // Issue 11: an index with 10,000 platforms made a 159 KB denial.
        let many: Vec<Platform> = (0..10_000)
            .map(|i| Platform::new("linux", &format!("arch{i}"), None))
            .collect();
        let c = vec![checked("app", REF, &["linux/amd64"], resolved(&many))];
        let v = decide(&c, &[], &Policy::default());
        let message = v.message.unwrap();
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS);
        assert!(message.ends_with('…') && message.starts_with("container \"app\""));

        let trouble = Outcome::Failed(ResolveError::Timeout {
            registry: "r".into(),
        });
        let c: Vec<Checked> = (0..1000)
            .map(|i| checked(&format!("c{i}"), "r/x:1", &["linux/amd64"], trouble.clone()))
            .collect();
        let v = decide(&c, &[], &Policy::default());
        assert!(v.allowed);
        assert_eq!(v.warnings.len(), MAX_WARNINGS);
        assert_eq!(
            v.warnings.last().unwrap(),
            "… and 976 more warnings (archgate's log has them all)"
        );
        assert_eq!(v.findings.len(), 1000, "the log still gets every finding");
    }

    #[test]
    fn not_found_denies_unless_configured_to_warn() {
        let nf = Outcome::Failed(ResolveError::NotFound {
            registry: "r".into(),
        });
        let c = vec![checked("app", "r/x:1", &["linux/amd64"], nf)];
        let v = decide(&c, &[], &Policy::default());
        assert_eq!(
            v.message.as_deref(),
            Some("container \"app\" image \"r/x:1\" not found in registry")
        );
        let lenient = Policy {
            on_missing_image: OnMissingImage::Warn,
            ..Policy::default()
        };
        let v = decide(&c, &[], &lenient);
        assert!(v.allowed);
        assert_eq!(
            v.warnings,
            vec!["container \"app\" image \"r/x:1\" not found in registry"]
        );
    }

    #[test]
    fn registry_trouble_allows_by_default_and_names_the_registry() {
        let down = Outcome::Failed(ResolveError::Timeout {
            registry: "10.0.0.1:5000".into(),
        });
        let c = vec![checked("app", "10.0.0.1:5000/x", &["linux/amd64"], down)];
        let v = decide(&c, &[], &Policy::default());
        assert!(v.allowed);
        assert_eq!(v.warnings.len(), 1);
        assert!(
            v.warnings[0].contains("registry 10.0.0.1:5000"),
            "{:?}",
            v.warnings
        );
        let strict = Policy {
            on_registry_error: OnRegistryError::Deny,
            ..Policy::default()
        };
        assert!(!decide(&c, &[], &strict).allowed);
    }

    #[test]
    fn warn_and_audit_modes_allow() {
        let c = vec![checked(
            "app",
            REF,
            &["linux/amd64", "linux/arm64"],
            resolved(&[p("linux/arm64")]),
        )];
        let warn = decide(
            &c,
            &[],
            &Policy {
                mode: Mode::Warn,
                ..Policy::default()
            },
        );
        assert!(warn.allowed && warn.message.is_none());
        assert_eq!(warn.warnings.len(), 1);
        assert!(warn.warnings[0].len() <= MAX_WARNING_CHARS + 2);
        assert!(
            warn.warnings[0].ends_with('…') || warn.warnings[0].contains("missing linux/amd64")
        );
        let audit = decide(
            &c,
            &[],
            &Policy {
                mode: Mode::Audit,
                ..Policy::default()
            },
        );
        assert!(audit.allowed && audit.warnings.is_empty() && audit.findings.len() == 1);
    }

    #[test]
    fn no_candidate_allows_with_a_warning() {
        let c = vec![checked("app", "x", &[], resolved(&[p("linux/amd64")]))];
        let v = decide(&c, &["a note".to_string()], &Policy::default());
        assert!(v.allowed);
        assert_eq!(v.warnings.len(), 2);
        assert!(v.warnings[1].contains("no node platform matches"));
    }

    #[test]
    fn mixed_cluster_hint_pins_to_a_shared_platform() {
        let c = vec![
            checked(
                "a",
                "x",
                &["linux/amd64", "linux/arm64"],
                resolved(&[p("linux/amd64")]),
            ),
            checked(
                "b",
                "y",
                &["linux/amd64", "linux/arm64"],
                resolved(&[p("linux/amd64"), p("linux/arm64")]),
            ),
        ];
        let v = decide(&c, &[], &Policy::default());
        let msg = v.message.unwrap();
        assert!(
            msg.ends_with("pin it: nodeSelector kubernetes.io/arch: amd64"),
            "{msg}"
        );
        assert!(msg.contains("--platform linux/amd64,linux/arm64"), "{msg}");
    }

    #[test]
    fn invalid_reference_denies() {
        let err = crate::reference::ImageRef::parse("UPPER:x").unwrap_err();
        let c = vec![checked(
            "app",
            "UPPER:x",
            &["linux/amd64"],
            Outcome::Invalid(err),
        )];
        let v = decide(&c, &[], &Policy::default());
        assert!(!v.allowed);
        assert!(
            v.message
                .unwrap()
                .starts_with("container \"app\": invalid image reference")
        );
    }
}
