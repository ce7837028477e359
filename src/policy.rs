//! The verdict: checked targets in, allow/deny with messages out. Pure; every word a user reads
//! about a finding is written here.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::platform::{self, Platform};
use crate::reference::ReferenceError;
use crate::resolver::{Resolution, ResolveError};
use crate::scheduling::{self, Unplaceable};
use crate::workload::{BundleRef, ExtractError, Target};

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
    /// Shared by the targets of one pod.
    pub candidates: Arc<[Platform]>,
    /// Why `candidates` is empty, when it is (the warning names it).
    pub unplaceable: Option<Unplaceable>,
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
        /// The resolution's own list, shared: an object may name one image in 2000 containers,
        /// and a hostile index may list 1000 platforms.
        available: Arc<[Platform]>,
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
        reason: Unplaceable,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An image named on its own (`archgate check IMAGE`) has no place to name.
        let lead = |at: &str| {
            if at.is_empty() {
                String::new()
            } else {
                format!("{at} ")
            }
        };
        match self {
            Finding::Missing {
                at,
                image,
                missing,
                available,
            } => write!(
                f,
                "{}image {image:?} is missing {} (available: {})",
                lead(at),
                platform::node_list(missing),
                platform::node_list(available)
            ),
            Finding::NotFound { at, image } => {
                write!(f, "{}image {image:?} not found in registry", lead(at))
            }
            Finding::InvalidReference { at, error } if at.is_empty() => write!(f, "{error}"),
            Finding::InvalidReference { at, error } => write!(f, "{at}: {error}"),
            Finding::RegistryTrouble { at, image, error } => {
                write!(
                    f,
                    "{}image {image:?} was not checked: {}",
                    lead(at),
                    error.summary()
                )
            }
            Finding::NoCandidates { at, image, reason } => {
                write!(f, "{}image {image:?} was not checked: {reason}", lead(at))
            }
        }
    }
}

/// Why an image was not checked for lack of a candidate platform (see [`scheduling::unplaceable`]).
impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoNodes => "the cluster has no nodes",
            Self::Repelled { every_node: true } => "every node is cordoned or tainted",
            Self::Repelled { every_node: false } => {
                "every node the pod selects is cordoned or tainted"
            }
            Self::NoMatch => "no node platform matches the pod's node selector and affinity",
        })
    }
}

/// A container running now on a node whose platform its image does not provide: what `archgate
/// scan` finds in a pod's status (`imageID`), the pods failing with "exec format error".
#[derive(Debug, Clone, PartialEq)]
pub struct WrongNode {
    /// `Pod web-5d8f, container "app"`.
    pub at: String,
    /// The image as the pod spec writes it.
    pub image: String,
    pub node: String,
    pub node_platform: Platform,
    /// What the digest the node runs provides.
    pub available: Vec<Platform>,
}

impl fmt::Display for WrongNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} image {:?} is running on node {} ({}), which the image does not provide (available: {})",
            self.at,
            self.image,
            self.node,
            self.node_platform.node_name(),
            platform::node_list(&self.available)
        )
    }
}

/// A running container whose image could not be checked against its node.
pub fn running_not_checked(at: &str, image: &str, why: &str) -> String {
    format!("{at} image {image:?} running now was not checked: {why}")
}

/// The answer for one object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    pub allowed: bool,
    /// Set when denied: every denying finding on its own line, then the hints.
    pub message: Option<String>,
    /// Shown by kubectl; each within [`MAX_WARNING_CHARS`], all within [`MAX_WARNINGS_BYTES`].
    pub warnings: Vec<String>,
    /// Everything found, denying or not, for logs, metrics and `archgate check`.
    pub findings: Vec<Finding>,
}

/// The API server passes each warning of up to 256 characters on intact and cuts the list as a
/// whole at 4 KiB (k8s.io/apiserver/pkg/warning); kubectl shows one per line.
pub const MAX_WARNING_CHARS: usize = 256;
pub const MAX_WARNINGS_BYTES: usize = 4096;

/// What is wrong (or unknowable) about one checked target; `None` when its image provides every
/// candidate platform.
pub fn finding(c: &Checked) -> Option<Finding> {
    // The common case first, before any text is built.
    if matches!(c.outcome, Outcome::Resolved(_))
        && !c.candidates.is_empty()
        && c.missing().is_empty()
    {
        return None;
    }
    let at = c.target.location.to_string();
    let image = c.target.image.clone();
    Some(match &c.outcome {
        _ if c.candidates.is_empty() => Finding::NoCandidates {
            at,
            image,
            reason: c.unplaceable.unwrap_or(Unplaceable::NoMatch),
        },
        Outcome::Invalid(error) => Finding::InvalidReference {
            at,
            error: error.clone(),
        },
        Outcome::Failed(e) if e.is_not_found() => Finding::NotFound { at, image },
        Outcome::Failed(error) => Finding::RegistryTrouble {
            at,
            image,
            error: error.clone(),
        },
        Outcome::Resolved(r) => {
            let missing = c.missing();
            if missing.is_empty() {
                return None;
            }
            Finding::Missing {
                at,
                image,
                missing,
                available: r.platforms.clone(),
            }
        }
    })
}

impl Finding {
    /// The finding as a kubectl warning: the problem first, then where, fitted into
    /// [`MAX_WARNING_CHARS`] by shortening the image reference in the middle (its registry and tag
    /// are what a reader recognises).
    pub fn warning(&self) -> String {
        let (problem, at, image, rest) = match self {
            Finding::Missing {
                at,
                image,
                missing,
                available,
            } => (
                format!("missing {}", platform::node_list(missing)),
                at,
                Some(image),
                format!(" (available: {})", platform::node_list(available)),
            ),
            Finding::NotFound { at, image } => (
                "not found in registry".into(),
                at,
                Some(image),
                String::new(),
            ),
            Finding::InvalidReference { at, error } => (error.to_string(), at, None, String::new()),
            Finding::RegistryTrouble { at, image, error } => (
                format!("{}; not checked", error.summary()),
                at,
                Some(image),
                String::new(),
            ),
            Finding::NoCandidates { at, image, reason } => (
                format!("{reason}; not checked"),
                at,
                Some(image),
                String::new(),
            ),
        };
        let compose = |image: Option<&str>| {
            let mut out = problem.clone();
            for part in [
                Some(at.as_str()),
                image.map(|i| format!("image {i:?}")).as_deref(),
            ]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            {
                out.push_str(if out == problem { ": " } else { " " });
                out.push_str(part);
            }
            out.push_str(&rest);
            out
        };
        let full = compose(image.map(String::as_str));
        let over = full.chars().count().saturating_sub(MAX_WARNING_CHARS);
        match image {
            Some(image) if over > 0 => clip(&compose(Some(&shorten_middle(image, over + 1)))),
            _ => clip(&full),
        }
    }

    /// Whether this finding denies the object in enforce mode.
    pub fn denies(&self, policy: &Policy) -> bool {
        match self {
            Finding::Missing { .. } | Finding::InvalidReference { .. } => true,
            Finding::NotFound { .. } => policy.on_missing_image == OnMissingImage::Deny,
            Finding::RegistryTrouble { .. } => policy.on_registry_error == OnRegistryError::Deny,
            Finding::NoCandidates { .. } => false,
        }
    }
}
/// Warnings per answer, at most; past it one line counts the rest (all are in the log).
pub const MAX_WARNINGS: usize = 25;
/// A denial message, at most (an index may list thousands of platforms).
pub const MAX_MESSAGE_CHARS: usize = 4096;

/// Turns checked targets into a verdict under `policy`. `unchecked` says what was not checked at
/// all (a bundle not fetched, a run past extraction's bounds): like a registry that could not be
/// asked, it denies under `--on-registry-error deny` and is a warning otherwise. `notes` are
/// extraction's own warnings (values known only at run time).
pub fn decide(
    checked: &[Checked],
    unchecked: &[String],
    notes: &[String],
    policy: &Policy,
) -> Verdict {
    let findings: Vec<Finding> = checked.iter().filter_map(finding).collect();
    let denies: Vec<bool> = findings.iter().map(|f| f.denies(policy)).collect();
    let denying: Vec<usize> = (0..findings.len()).filter(|&i| denies[i]).collect();
    let enforce = policy.mode == Mode::Enforce;
    let unchecked_denies =
        enforce && policy.on_registry_error == OnRegistryError::Deny && !unchecked.is_empty();

    let mut warnings: Vec<String> = if unchecked_denies {
        notes.iter().map(|n| clip(n)).collect()
    } else {
        unchecked.iter().chain(notes).map(|n| clip(n)).collect()
    };
    let deny = enforce && (!denying.is_empty() || unchecked_denies);
    for (i, finding) in findings.iter().enumerate() {
        let shown_as_warning = match policy.mode {
            Mode::Enforce => !denies[i],
            Mode::Warn => true,
            Mode::Audit | Mode::Off => false,
        };
        if shown_as_warning {
            warnings.push(finding.warning());
        }
    }
    fit_budget(&mut warnings);
    let message = deny.then(|| {
        // Written only until past the bound (a char is at most 4 bytes): an object may deny in
        // 2000 containers, and the API server shows one screen of it anyway.
        let mut text = String::new();
        if unchecked_denies {
            text = unchecked.join("\n");
        }
        for &i in &denying {
            if text.len() > 4 * MAX_MESSAGE_CHARS {
                break;
            }
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&findings[i].to_string());
        }
        if text.chars().count() < MAX_MESSAGE_CHARS {
            for hint in hints(checked) {
                text.push('\n');
                text.push_str(&hint);
            }
        }
        clip_to(&text, MAX_MESSAGE_CHARS)
    });
    Verdict {
        allowed: !deny,
        message,
        warnings,
        findings,
    }
}

/// What to do about it: rebuild for every platform, or pin the pod where its images already run.
/// Empty unless an image lacks a platform.
pub fn hints(checked: &[Checked]) -> Vec<String> {
    let mut out = Vec::new();
    // The platforms the nodes need plus those the image already has: following the hint must not
    // lose the arm64 build a Mac user pushed.
    // Targets share their pod's candidates and their image's resolution (`Arc`s): each pair is
    // read once, however many containers name the image.
    let mut seen = std::collections::HashSet::new();
    let needed: BTreeSet<String> = checked
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::Resolved(r) => Some((c, &r.platforms)),
            _ => None,
        })
        .filter(|(c, has)| seen.insert((Arc::as_ptr(&c.candidates), Arc::as_ptr(has))))
        .filter(|(c, _)| !c.missing().is_empty())
        .flat_map(|(c, has)| {
            c.candidates
                .iter()
                .chain(has.iter())
                .map(Platform::build_name)
        })
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
    if any_missing && candidates_differ(&resolved) {
        let candidates: BTreeSet<&Platform> = resolved
            .iter()
            .flat_map(|(c, _)| c.candidates.iter())
            .collect();
        let candidates: Vec<&Platform> = candidates.into_iter().collect();
        let runs_everything = |cand: &Platform| {
            resolved
                .iter()
                .all(|(_, r)| r.platforms.iter().any(|have| have.satisfies(cand)))
        };
        if let Some(hint) = scheduling::pin_hint(&candidates, runs_everything) {
            out.push(match pin_site(checked) {
                Some(site) => format!("{hint} in {site}"),
                None => hint,
            });
        }
    }
    out
}

/// Where to pin, when the pods are not written as pods (Tekton runs): the narrowest pod template
/// every failing target shares, e.g. one task's `taskRunSpecs` entry or the run-wide template.
fn pin_site(checked: &[Checked]) -> Option<&str> {
    let mut failing = checked
        .iter()
        .filter(|c| !c.missing().is_empty())
        .map(|c| c.target.placement.pin_at.as_slice());
    let first = failing.next()?;
    let shared = failing.fold(first.len(), |n, other| {
        first
            .iter()
            .zip(other)
            .take(n)
            .take_while(|(a, b)| a == b)
            .count()
    });
    first[..shared].last().map(String::as_str)
}

/// Pinning only helps when the pod could land on more than one platform.
fn candidates_differ(resolved: &[(&Checked, &Resolution)]) -> bool {
    resolved.iter().any(|(c, _)| c.candidates.len() > 1)
}

/// The annotation on a Pod the mutating webhook steered (`archgate.io/placement`): what
/// was added, and the findings (at most `at_most`, the rest counted) that made it necessary.
pub fn steered(restriction: &str, findings: &[String], at_most: usize) -> String {
    let mut text = format!("archgate added required node affinity {restriction}: ");
    let named: Vec<&str> = findings.iter().take(at_most).map(String::as_str).collect();
    text.push_str(&named.join("; "));
    let more = findings.len().saturating_sub(at_most);
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    text
}

/// The warning kubectl shows for a steered Pod: short enough to arrive whole, pointing at the
/// annotation that says why.
pub fn steered_warning(restriction: &str, annotation: &str) -> String {
    clip(&format!(
        "archgate added node affinity {restriction}; why: annotation {annotation}"
    ))
}

/// The warning kubectl shows for a Pod placement mode would have steered but did not, because
/// the node labels an affinity selects on do not say where its images run
/// ([`crate::placement::Leave::Unselectable`]).
pub fn unselectable_warning() -> String {
    clip(
        "archgate did not steer this pod: the kubernetes.io/os and kubernetes.io/arch labels would \
         not select exactly the nodes its images run on (a node states its platform only in \
         beta.kubernetes.io labels or status.nodeInfo, or as aarch64)",
    )
}

/// A resource named through a Tekton bundle that could not be fetched.
pub fn bundle_not_checked(reference: &BundleRef, why: &str) -> String {
    clip(&format!(
        "{} {:?} from bundle {} was not checked: {why}",
        reference.kind, reference.name, reference.bundle
    ))
}

/// An object that cannot be read as the kind it claims to be (allowed, with this warning).
pub fn unreadable(error: &ExtractError) -> String {
    clip(&error.to_string())
}

/// `reference` with `drop` more characters cut from its middle (marked `…`), keeping at least a
/// few characters at each end.
fn shorten_middle(reference: &str, drop: usize) -> String {
    let chars: Vec<char> = reference.chars().collect();
    let keep = chars.len().saturating_sub(drop + 1).max(8).min(chars.len());
    if keep >= chars.len() {
        return reference.to_string();
    }
    let head = keep / 2;
    let tail = keep - head;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// Keeps the whole list within what the API server passes on (at most [`MAX_WARNINGS`] lines and
/// [`MAX_WARNINGS_BYTES`]): the rest is counted in a last line instead of being cut off
/// mid-sentence.
fn fit_budget(warnings: &mut Vec<String>) {
    const RESERVE: usize = 64;
    let mut used = 0;
    let fits = warnings
        .iter()
        .take(MAX_WARNINGS)
        .take_while(|w| {
            used += w.len();
            used <= MAX_WARNINGS_BYTES - RESERVE
        })
        .count();
    if fits < warnings.len() {
        let kept = fits.min(MAX_WARNINGS - 1);
        let more = warnings.len() - kept;
        warnings.truncate(kept);
        warnings.push(format!(
            "… and {more} more warnings (archgate's log has them all)"
        ));
    }
}

/// Keeps a warning within what the API server passes on intact. The one clipping function
/// (with [`clip_to`] for the denial message's own bound).
pub fn clip(text: &str) -> String {
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
            digest: None,
            platforms: platforms.to_vec().into(),
        })
    }

    fn checked(name: &str, image: &str, candidates: &[&str], outcome: Outcome) -> Checked {
        Checked {
            target: target(name, image),
            candidates: candidates.iter().map(|c| p(c)).collect(),
            unplaceable: None,
            outcome,
        }
    }

    const REF: &str = "10.34.0.202:5000/cerebral/ai-base:cuda";

    /// Before: every container's finding copied its image's whole platform list, and listing it
    /// compared each name with every other; an index of 1000 made-up platforms named in 2000
    /// containers was 2 million copies and billions of comparisons, outside the review deadline.
    /// Now the list is shared, a finding names at most `MAX_LISTED` platforms and counts the
    /// rest, and the denial is written only as far as it is shown.
    #[test]
    fn a_huge_index_named_by_every_container_stays_small() {
        let platforms: Arc<[Platform]> = (0..1000)
            .map(|i| Platform::new("linux", &format!("arch{i}"), None))
            .collect();
        let outcome = Outcome::Resolved(Resolution {
            digest: None,
            platforms: platforms.clone(),
        });
        let candidates: Arc<[Platform]> = Arc::from(vec![p("linux/amd64")]);
        let checked: Vec<Checked> = (0..2000)
            .map(|i| Checked {
                target: target(&format!("c{i}"), REF),
                candidates: candidates.clone(),
                unplaceable: None,
                outcome: outcome.clone(),
            })
            .collect();
        let verdict = decide(&checked, &[], &[], &Policy::default());
        assert!(!verdict.allowed);
        assert_eq!(verdict.findings.len(), 2000);
        for finding in &verdict.findings {
            let Finding::Missing { available, .. } = finding else {
                panic!("{finding:?}")
            };
            assert!(Arc::ptr_eq(available, &platforms));
        }
        let listed = platform::node_list(&platforms);
        assert!(listed.ends_with(", linux/arch31 and 968 more"), "{listed}");
        let message = verdict.message.unwrap();
        assert!(message.chars().count() <= MAX_MESSAGE_CHARS);
        assert!(message.starts_with("container \"c0\" image"), "{message}");
    }

    #[test]
    fn a_pod_on_the_wrong_node_leads_with_where_it_runs() {
        let wrong = WrongNode {
            at: "Pod web-1, container \"app\"".into(),
            image: "r/app:v1".into(),
            node: "arm-1".into(),
            node_platform: p("linux/arm64"),
            available: vec![p("linux/amd64"), p("linux/amd64/v3")],
        };
        assert_eq!(
            wrong.to_string(),
            "Pod web-1, container \"app\" image \"r/app:v1\" is running on node arm-1 (linux/arm64), which the image does not provide (available: linux/amd64, linux/amd64/v3)"
        );
    }

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
        let v = decide(&c, &[], &[], &Policy::default());
        assert!(!v.allowed);
        assert_eq!(
            v.message.as_deref().unwrap(),
            "container \"app\" image \"10.34.0.202:5000/cerebral/ai-base:cuda\" is missing linux/amd64 (available: linux/arm64)\n\
             rebuild for every platform: docker buildx build --platform linux/amd64,linux/arm64 ..."
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
        let v = decide(&c, &[], &[], &Policy::default());
        let message = v.message.unwrap();
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS);
        assert!(message.ends_with('…') && message.starts_with("container \"app\""));

        let trouble = Outcome::Failed(ResolveError::Timeout {
            registry: "r".into(),
        });
        let c: Vec<Checked> = (0..1000)
            .map(|i| checked(&format!("c{i}"), "r/x:1", &["linux/amd64"], trouble.clone()))
            .collect();
        let v = decide(&c, &[], &[], &Policy::default());
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
        let v = decide(&c, &[], &[], &Policy::default());
        assert_eq!(
            v.message.as_deref(),
            Some("container \"app\" image \"r/x:1\" not found in registry")
        );
        let lenient = Policy {
            on_missing_image: OnMissingImage::Warn,
            ..Policy::default()
        };
        let v = decide(&c, &[], &[], &lenient);
        assert!(v.allowed);
        assert_eq!(
            v.warnings,
            vec!["not found in registry: container \"app\" image \"r/x:1\""]
        );
    }

    #[test]
    fn registry_trouble_allows_by_default_and_names_the_registry() {
        let down = Outcome::Failed(ResolveError::Timeout {
            registry: "10.0.0.1:5000".into(),
        });
        let c = vec![checked("app", "10.0.0.1:5000/x", &["linux/amd64"], down)];
        let v = decide(&c, &[], &[], &Policy::default());
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
        assert!(!decide(&c, &[], &[], &strict).allowed);
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
        let mut c = vec![checked("app", "x", &[], resolved(&[p("linux/amd64")]))];
        let v = decide(&c, &[], &["a note".to_string()], &Policy::default());
        assert!(v.allowed);
        assert_eq!(v.warnings.len(), 2);
        assert!(v.warnings[1].contains("no node platform matches"));
        // The reason scheduling found is the one named.
        c[0].unplaceable = Some(Unplaceable::Repelled { every_node: true });
        let v = decide(&c, &[], &[], &Policy::default());
        assert_eq!(
            v.warnings,
            [r#"every node is cordoned or tainted; not checked: container "app" image "x""#]
        );
        for (reason, words) in [
            (Unplaceable::NoNodes, "the cluster has no nodes"),
            (
                Unplaceable::Repelled { every_node: false },
                "every node the pod selects is cordoned or tainted",
            ),
            (
                Unplaceable::NoMatch,
                "no node platform matches the pod's node selector and affinity",
            ),
        ] {
            assert_eq!(reason.to_string(), words);
        }
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
        let v = decide(&c, &[], &[], &Policy::default());
        let msg = v.message.unwrap();
        assert!(
            msg.ends_with("pin it: nodeSelector kubernetes.io/arch: amd64"),
            "{msg}"
        );
        assert!(msg.contains("--platform linux/amd64,linux/arm64"), "{msg}");
    }

    /// Issue 13: a Tekton run is pinned in its pod templates, not with a pod's nodeSelector.
    #[test]
    fn tekton_pin_hint_names_the_narrowest_shared_pod_template() {
        let run = "spec.taskRunTemplate.podTemplate";
        let task = |t: &str| format!("spec.taskRunSpecs[].podTemplate (pipelineTaskName: {t})");
        let both = ["linux/amd64", "linux/arm64"];
        let in_task = |name: &str, pipeline_task: &str, platforms: &[Platform]| {
            let mut c = checked(name, name, &both, resolved(platforms));
            c.target.placement = Arc::new(Placement {
                pin_at: vec![run.to_string(), task(pipeline_task)],
                ..Placement::default()
            });
            c
        };
        let amd = [p("linux/amd64")];
        let all = [p("linux/amd64"), p("linux/arm64")];
        let hint = |c: &[Checked]| {
            let msg = decide(c, &[], &[], &Policy::default()).message.unwrap();
            msg.lines().last().unwrap().to_string()
        };
        let one_task = [in_task("a", "build", &amd), in_task("b", "test", &all)];
        assert_eq!(
            hint(&one_task),
            format!(
                "pin it: nodeSelector kubernetes.io/arch: amd64 in {}",
                task("build")
            )
        );
        let two_tasks = [in_task("a", "build", &amd), in_task("b", "test", &amd)];
        assert_eq!(
            hint(&two_tasks),
            format!("pin it: nodeSelector kubernetes.io/arch: amd64 in {run}")
        );
    }

    #[test]
    fn findings_and_hints_name_platforms_as_nodes_do() {
        let build = |b: &str| {
            let mut w = p("windows/amd64");
            w.os_version = Some(b.into());
            w
        };
        let win2019 = build("10.0.17763");
        let win2022 = build("10.0.20348");
        let mut image_2022 = Platform::new("windows", "amd64", None);
        image_2022.os_version = Some("10.0.20348.2227".into());
        let c = vec![Checked {
            target: target("app", "x"),
            candidates: vec![p("linux/amd64"), win2019, win2022].into(),
            unplaceable: None,
            outcome: resolved(&[Platform::new("linux", "arm64", Some("v8")), image_2022]),
        }];
        let msg = decide(&c, &[], &[], &Policy::default()).message.unwrap();
        assert_eq!(
            msg,
            "container \"app\" image \"x\" is missing linux/amd64, windows(10.0.17763)/amd64 \
             (available: linux/arm64, windows(10.0.20348.2227)/amd64)\n\
             rebuild for every platform: docker buildx build --platform linux/amd64,linux/arm64,windows/amd64 ...\n\
             pin it: nodeSelector kubernetes.io/os: windows, kubernetes.io/arch: amd64, \
             node.kubernetes.io/windows-build: 10.0.20348"
        );
    }

    #[test]
    fn no_pin_hint_when_labels_cannot_tell_nodes_apart() {
        // arm/v6 and arm/v7 nodes both say `kubernetes.io/arch: arm`.
        let c = vec![checked(
            "app",
            "x",
            &["linux/arm/v6", "linux/arm/v7"],
            resolved(&[p("linux/arm/v7")]),
        )];
        let msg = decide(&c, &[], &[], &Policy::default()).message.unwrap();
        assert!(!msg.contains("pin it"), "{msg}");
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
        let v = decide(&c, &[], &[], &Policy::default());
        assert!(!v.allowed);
        assert!(
            v.message
                .unwrap()
                .starts_with("container \"app\": invalid image reference")
        );
    }

    /// Issue 15: warnings lead with the problem, use the API server's real budget (256), and
    /// shorten a long reference in the middle rather than cutting off what is missing.
    #[test]
    fn warnings_lead_with_the_problem_and_keep_it() {
        let warn = Policy {
            mode: Mode::Warn,
            ..Policy::default()
        };
        let long = format!(
            "10.34.0.202:5000/cerebral/{}/ai-base:cuda-12.4-runtime",
            "payments-service-worker-canary/".repeat(8)
        );
        let c = vec![checked(
            "payments-worker-sidecar",
            &long,
            &["linux/amd64"],
            resolved(&[p("linux/arm64")]),
        )];
        let v = decide(&c, &[], &[], &warn);
        let w = &v.warnings[0];
        assert!(w.starts_with("missing linux/amd64: container \"payments-worker-sidecar\" image \"10.34.0.202:5000/"), "{w}");
        assert!(
            w.ends_with("ai-base:cuda-12.4-runtime\" (available: linux/arm64)"),
            "{w}"
        );
        assert!(w.contains('…'), "{w}");
        assert!(
            w.chars().count() <= MAX_WARNING_CHARS,
            "{}",
            w.chars().count()
        );
        // A short one is whole.
        let c = vec![checked(
            "app",
            "nginx:1.27",
            &["linux/amd64"],
            resolved(&[p("linux/arm64")]),
        )];
        assert_eq!(
            decide(&c, &[], &[], &warn).warnings,
            [
                "missing linux/amd64: container \"app\" image \"nginx:1.27\" (available: linux/arm64)"
            ]
        );
        // Many findings stay within the 4 KiB the API server keeps, and say how many were left out.
        let many: Vec<Checked> = (0..100)
            .map(|i| {
                checked(
                    &format!("c{i}"),
                    &format!("registry.example/team/app-{i}:v1"),
                    &["linux/amd64"],
                    resolved(&[p("linux/arm64")]),
                )
            })
            .collect();
        let v = decide(&many, &[], &[], &warn);
        let total: usize = v.warnings.iter().map(String::len).sum();
        assert!(total <= MAX_WARNINGS_BYTES, "{total}");
        assert!(
            v.warnings
                .last()
                .unwrap()
                .contains("more warnings (archgate's log has them all)"),
            "{:?}",
            v.warnings.last()
        );
    }
}
