//! Platforms (`os/arch[/variant]`, with Windows `os.version` and `os.features`) and the rules for
//! when a node's container runtime pulls an image's platform.
//!
//! The authority is containerd (github.com/containerd/platforms, which the CRI plugin on every
//! containerd node uses); each rule below names the function it mirrors. In short:
//!
//! - Names are normalised first (`Normalize`): `x86_64` is `amd64`, `aarch64` is `arm64`,
//!   `arm64/v8` is plain `arm64`, `amd64/v1` is plain `amd64`, a bare `arm` is `arm/v7`.
//! - A node without a variant pulls only the default variant: an index with only `amd64/v3` or
//!   `arm64/v8.2` has nothing for a plain amd64 or arm64 node (`matcher.Match` compares variants
//!   after normalising, so `""` never equals `v3`).
//! - An entry's `os.features` must all be features of the node (`matcher.Match`); on Windows
//!   `win32k` is dropped first (`windowsStripFeaturesMatcher`).
//! - An entry without `os` takes the node's OS (`normalizeOS("")` is the node's `runtime.GOOS`).
//! - Windows compares `os.version` builds (`windowsVersionMatcher`,
//!   `checkWindowsHostAndContainerCompat`).
//! - Fallbacks depend on the runtime ([`RuntimeMatcher`]): containerd 1.6/1.7 (and 2.x with
//!   `use_local_image_pull`) pull with `platforms.Default()`, which is `platforms.Only` on Linux
//!   (amd64 also takes 386, arm64 takes arm/v8..v5, arm/v7 takes v6 and v5); containerd 2.x's
//!   transfer service pulls with `platforms.Ordered(DefaultSpec())`, which takes only the node's
//!   own platform.
//!
//! Platforms keep the spelling the registry used ([`fmt::Display`]), so that a resolution shows
//! what `docker buildx imagetools inspect` shows; [`Platform::node_name`] is the same platform as
//! the node's containerd names it, used in findings.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One platform an image provides or a node runs.
///
/// On the node side (a candidate platform) `os_version` is the node's Windows build, `os_features`
/// the features its runtime offers, and `runtime` how its runtime picks among an image's
/// platforms. On the image side `runtime` is always the default and unused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Platform {
    /// Empty when an index entry names no OS: containerd then takes the node's.
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The Windows build an image needs (`10.0.17763.5329`) or a node runs (`10.0.17763`).
    #[serde(rename = "os.version", skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// OS features an image requires (`win32k`) or a node offers.
    #[serde(rename = "os.features", skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// Node side only: how the node's runtime matches an image's platforms.
    #[serde(skip)]
    pub runtime: RuntimeMatcher,
}

/// How a node's container runtime picks a platform out of an image index.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
pub enum RuntimeMatcher {
    // containerd 2.x's transfer service pulls with `platforms.Ordered(platforms.DefaultSpec())`
    // (`internal/cri/server/images`, `core/transfer/image` `Store.ImageFilter`).
    /// Only the node's own platform (containerd 2.x; also assumed for unknown runtimes).
    #[default]
    #[serde(rename = "strict")]
    #[value(name = "strict")]
    Strict,
    // `client.Pull` without a platform uses the client's `platforms.Default()`, which is
    // `platforms.Only(DefaultSpec())` on Linux (defaults_unix.go).
    /// The node's platform, then older ones its CPU runs (containerd 1.6/1.7).
    #[serde(rename = "containerd-1.7")]
    #[value(name = "containerd-1.7")]
    Containerd17,
}

impl RuntimeMatcher {
    /// The matcher a Node's `status.nodeInfo.containerRuntimeVersion` (`containerd://1.7.13`)
    /// implies. containerd before 2.0 pulls through `client.Pull`; 2.x through the transfer
    /// service unless `use_local_image_pull` is set, which the API server cannot tell. Other
    /// runtimes (CRI-O, cri-dockerd) are taken as strict: CRI-O's containers/image has no 386
    /// fallback, and strict never admits what a node would refuse.
    pub fn for_runtime_version(version: &str) -> Self {
        let Some(rest) = version.trim().strip_prefix("containerd://") else {
            return Self::Strict;
        };
        let rest = rest.trim_start_matches('v');
        match rest.split('.').next().and_then(|m| m.parse::<u32>().ok()) {
            Some(major) if major < 2 => Self::Containerd17,
            _ => Self::Strict,
        }
    }
}

impl fmt::Display for RuntimeMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Strict => "strict",
            Self::Containerd17 => "containerd-1.7",
        })
    }
}

/// Why a platform string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    #[error(
        "invalid platform {0:?}: expected OS/ARCH or OS/ARCH/VARIANT, e.g. linux/amd64, linux/arm/v7 \
         or windows(10.0.17763)/amd64"
    )]
    Shape(String),
    #[error(
        "invalid platform {0:?}: each part must be lower-case letters, digits, '_' or '.' \
         (a Windows build goes in parentheses after the OS: windows(10.0.20348)/amd64)"
    )]
    Characters(String),
}

/// Windows Server LTSC builds whose containers later hosts keep running (containerd's
/// `compatLTSCReleases`: Windows Server 2022, 2025), ascending.
const WINDOWS_LTSC_BUILDS: [u16; 2] = [20348, 26100];

impl Platform {
    /// A platform as a registry described it, kept verbatim.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_string),
            os_version: None,
            os_features: Vec::new(),
            runtime: RuntimeMatcher::default(),
        }
    }

    /// The same platform on a node whose runtime matches with `runtime`.
    pub fn pulled_with(mut self, runtime: RuntimeMatcher) -> Self {
        self.runtime = runtime;
        self
    }

    /// Parses what a user typed (`linux/amd64`, `linux/arm64/v8`, `linux/x86_64`, and containerd's
    /// `windows(10.0.17763)/amd64` or `windows(10.0.20348+win32k)/amd64` for a Windows build and
    /// features, as `platforms.Parse` reads them) into normalised form.
    pub fn parse(text: &str) -> Result<Self, PlatformError> {
        let trimmed = text.trim();
        let parts: Vec<&str> = trimmed.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(PlatformError::Shape(text.to_string()));
        }
        let (os, options) = match parts[0].split_once('(') {
            Some((os, rest)) => {
                let options = rest
                    .strip_suffix(')')
                    .ok_or_else(|| PlatformError::Shape(text.to_string()))?;
                (os, Some(options))
            }
            None => (parts[0], None),
        };
        let valid = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
        };
        if !valid(os) || !parts[1..].iter().all(|p| valid(p)) {
            return Err(PlatformError::Characters(text.to_string()));
        }
        let mut platform = Self::new(os, parts[1], parts.get(2).copied());
        if let Some(options) = options {
            let mut pieces = options.split('+');
            let version = pieces.next().unwrap_or_default();
            let option_ok = |p: &str| {
                p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            };
            let features: Vec<&str> = pieces.collect();
            if !option_ok(version) || !features.iter().all(|f| !f.is_empty() && option_ok(f)) {
                return Err(PlatformError::Characters(text.to_string()));
            }
            platform.os_version = Some(version.to_string()).filter(|v| !v.is_empty());
            platform.os_features = features.into_iter().map(str::to_string).collect();
        }
        Ok(platform.normalized())
    }

    /// containerd's normal form (`platforms.Normalize` with `normalizeOS` and `normalizeArch`):
    /// canonical names, default variants dropped (`amd64/v1`, `arm64/v8`) or added (`arm/v7`),
    /// features sorted without repeats. An empty OS stays empty: only a node can fill it in.
    pub fn normalized(&self) -> Self {
        let os = match self.os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_string(),
            other => other.to_string(),
        };
        let arch = self.architecture.to_ascii_lowercase();
        let variant = self.variant.as_deref().map(str::to_ascii_lowercase);
        let (architecture, variant) = match (arch.as_str(), variant.as_deref()) {
            ("i386", _) => ("386", None),
            ("x86_64" | "x86-64" | "amd64", Some("v1") | None) => ("amd64", None),
            ("x86_64" | "x86-64" | "amd64", Some(v)) => ("amd64", Some(v.to_string())),
            ("aarch64" | "arm64", Some("8" | "v8" | "v8.0") | None) => ("arm64", None),
            ("aarch64" | "arm64", Some("9" | "9.0" | "v9.0")) => ("arm64", Some("v9".to_string())),
            ("aarch64" | "arm64", Some(v)) => ("arm64", Some(v.to_string())),
            ("armhf", _) => ("arm", Some("v7".to_string())),
            ("armel", _) => ("arm", Some("v6".to_string())),
            ("arm", None | Some("7")) => ("arm", Some("v7".to_string())),
            ("arm", Some(v @ ("5" | "6" | "8"))) => ("arm", Some(format!("v{v}"))),
            (other, v) => (other, v.map(str::to_string)),
        };
        let mut os_features = self.os_features.clone();
        os_features.sort();
        os_features.dedup();
        Self {
            os,
            architecture: architecture.to_string(),
            variant,
            os_version: self.os_version.clone(),
            os_features,
            runtime: self.runtime,
        }
    }

    /// [`Self::normalized`] without a copy when the platform already is in normal form, as
    /// parsed platforms and most registry entries are: a review compares them per image.
    pub fn normal(&self) -> Cow<'_, Self> {
        if self.is_normal() {
            Cow::Borrowed(self)
        } else {
            Cow::Owned(self.normalized())
        }
    }

    /// Whether [`Self::normalized`] would change nothing (`tests::normal_is_what_normalized_keeps`).
    fn is_normal(&self) -> bool {
        let lower = |s: &str| !s.bytes().any(|b| b.is_ascii_uppercase());
        let renamed = matches!(
            (self.architecture.as_str(), self.variant.as_deref()),
            (
                "i386" | "x86_64" | "x86-64" | "aarch64" | "armhf" | "armel",
                _
            ) | ("amd64", Some("v1"))
                | ("arm64", Some("8" | "v8" | "v8.0" | "9" | "9.0" | "v9.0"))
                | ("arm", None | Some("5" | "6" | "7" | "8"))
        );
        lower(&self.os)
            && self.os != "macos"
            && lower(&self.architecture)
            && self.variant.as_deref().is_none_or(lower)
            && !renamed
            && self.os_features.windows(2).all(|w| w[0] < w[1])
    }

    /// Would a node running `node` pull this (image) platform out of an index?
    ///
    /// `node.runtime` decides the fallbacks: strict tries only the node's own platform
    /// (`platforms.OnlyStrict`, `platforms.Ordered`); containerd 1.7 on Linux tries `platforms.Only`'s
    /// list (`platformVector`). On Windows containerd's `Default()` is a plain
    /// `NewMatcher(DefaultSpec())` in every version (defaults_windows.go): no fallbacks.
    pub fn satisfies(&self, node: &Platform) -> bool {
        let node = node.normal();
        // `windowsStripFeaturesMatcher`: win32k is on every Windows host, so it never excludes.
        let image = match self.os_features.iter().position(|f| f == "win32k") {
            Some(i) if node.os == "windows" => {
                let mut stripped = self.clone();
                stripped.os_features.remove(i);
                Cow::Owned(stripped.normalized())
            }
            _ => self.normal(),
        };
        let build = self.os_version.as_deref();
        // The node's own platform heads every list below: the common answer, without building one.
        if matches(&node, &image, build) {
            return true;
        }
        if node.runtime == RuntimeMatcher::Strict || node.os == "windows" {
            return false;
        }
        platform_vector(&node)
            .iter()
            .any(|want| matches(want, &image, build))
    }

    /// `unknown/unknown` entries in an index are attestations and signatures, not runnable images.
    pub fn is_unknown(&self) -> bool {
        self.os == "unknown" || self.architecture == "unknown"
    }

    /// The platform as containerd on a node names it (`platforms.FormatAll` of the normalised
    /// form): `linux/arm64` for `linux/arm64/v8`, `windows(10.0.17763)/amd64` with a build,
    /// `*/amd64` for an entry that names no OS. The same text `--platform` accepts.
    pub fn node_name(&self) -> String {
        let p = self.normalized();
        let mut out = if p.os.is_empty() {
            "*".to_string()
        } else {
            p.os.clone()
        };
        if p.os_version.is_some() || !p.os_features.is_empty() {
            out.push('(');
            out.push_str(p.os_version.as_deref().unwrap_or_default());
            for feature in &p.os_features {
                out.push('+');
                out.push_str(feature);
            }
            out.push(')');
        }
        out.push('/');
        out.push_str(&p.architecture);
        if let Some(variant) = &p.variant {
            out.push('/');
            out.push_str(variant);
        }
        out
    }

    /// `os/arch[/variant]` only, normalised: what `docker buildx build --platform` takes.
    pub fn build_name(&self) -> String {
        let p = self.normalized();
        match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        }
    }
}

/// The highest x86-64 microarchitecture level (x86-64-v4) and 32-bit ARM version (ARMv8) that
/// exist. containerd walks down from any number a variant holds; archgate gives a variant past
/// these no older ones, so a typo like `amd64/v4000000000` cannot cost a billion comparisons.
const AMD64_LEVELS: u32 = 4;
const ARM_LEVELS: u32 = 8;

/// containerd's `platformVector`: the node's platform and every older one its CPU also runs.
fn platform_vector(node: &Platform) -> Vec<Platform> {
    let with_variant = |arch: &str, variant: Option<String>| {
        let mut p = node.clone();
        p.architecture = arch.to_string();
        p.variant = variant;
        p.normalized()
    };
    let version = |variant: &Option<String>| {
        variant
            .as_deref()
            .and_then(|v| v.strip_prefix('v').unwrap_or(v).parse::<u32>().ok())
    };
    match node.architecture.as_str() {
        // amd64/vN also runs vN-1 .. v1; every amd64 runs 386.
        "amd64" => {
            let mut out = vec![node.clone()];
            if let Some(level) = version(&node.variant).filter(|&l| (2..=AMD64_LEVELS).contains(&l))
            {
                out.extend(
                    (1..level)
                        .rev()
                        .map(|l| with_variant("amd64", Some(format!("v{l}")))),
                );
            }
            out.push(with_variant("386", None));
            out
        }
        // arm/vN also runs vN-1 .. v5.
        "arm" => {
            let mut out = vec![node.clone()];
            if let Some(level) = version(&node.variant).filter(|&l| (6..=ARM_LEVELS).contains(&l)) {
                out.extend(
                    (5..level)
                        .rev()
                        .map(|l| with_variant("arm", Some(format!("v{l}")))),
                );
            }
            out
        }
        // arm64/vX.Y runs the arm64 variants in `arm64_variants`, then 32-bit arm/v8 and below.
        "arm64" => {
            let variant = node.variant.clone().unwrap_or_else(|| "v8".to_string());
            let variants = arm64_variants(&variant);
            if variants.is_empty() {
                // containerd's `platformVector` returns an empty list here, so `Only` would match
                // nothing, not even the node's own platform; archgate keeps that one (as strict).
                return vec![node.clone()];
            }
            let mut out: Vec<Platform> = variants
                .into_iter()
                .map(|v| with_variant("arm64", Some(v)))
                .collect();
            out.extend(platform_vector(&with_variant("arm", Some("v8".into()))));
            out
        }
        _ => vec![node.clone()],
    }
}

/// containerd's `arm64variantToVersion` walked as `platformVector` walks it: arm64/v8.x runs
/// v8.x down to v8; v9.x runs v9.x down to v9, then v8.(x+5) down to v8. Unknown variants: none.
fn arm64_variants(variant: &str) -> Vec<String> {
    let (major, minor) = match variant.strip_prefix('v').map(|v| v.split_once('.')) {
        Some(Some((major, minor))) => (major, minor.parse::<u32>().ok()),
        Some(None) => (&variant[1..], Some(0)),
        None => return Vec::new(),
    };
    let ranges: Vec<(u32, u32)> = match (major, minor) {
        ("8", Some(m @ 0..=9)) => vec![(8, m)],
        ("9", Some(m @ 0..=7)) => vec![(9, m), (8, (m + 5).min(9))],
        _ => return Vec::new(),
    };
    ranges
        .into_iter()
        .flat_map(|(major, top)| {
            (0..=top).rev().map(move |minor| match minor {
                0 => format!("v{major}"),
                m => format!("v{major}.{m}"),
            })
        })
        .collect()
}

/// containerd's `matcher.Match` for one wanted (normalised, node-side) platform against an
/// image's normalised platform; `build` is the image's `os.version` as the registry wrote it.
fn matches(want: &Platform, have: &Platform, build: Option<&str>) -> bool {
    // `normalizeOS("")` is the node's own OS, on the node where containerd runs.
    let os = if have.os.is_empty() {
        &want.os
    } else {
        &have.os
    };
    os == &want.os
        && have.architecture == want.architecture
        && have.variant == want.variant
        && (want.os != "windows" || windows_build_runs(want.os_version.as_deref(), build))
        && have
            .os_features
            .iter()
            .all(|f| want.os_features.binary_search(f).is_ok())
}

/// containerd's `windowsVersionMatcher.Match`: an unknown host build or an image without
/// `os.version` matches; otherwise `checkWindowsHostAndContainerCompat`.
fn windows_build_runs(host: Option<&str>, image: Option<&str>) -> bool {
    let (Some(host), Some(image)) = (host, image) else {
        return true;
    };
    if image.is_empty() {
        return true;
    }
    let host = windows_version(host);
    if host == WindowsVersion::default() {
        return true;
    }
    let image = windows_version(image);
    if (host.major, host.minor) != (image.major, image.minor) {
        return false;
    }
    // Hosts older than Windows Server 2022 need the exact build (process isolation).
    if host.build < WINDOWS_LTSC_BUILDS[0] {
        return host.build == image.build;
    }
    // Newer hosts run from the previous LTSC up to their own build.
    let oldest = WINDOWS_LTSC_BUILDS
        .iter()
        .rev()
        .find(|&&ltsc| host.build > ltsc)
        .copied()
        .unwrap_or(WINDOWS_LTSC_BUILDS[0]);
    (oldest..=host.build).contains(&image.build)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct WindowsVersion {
    major: u8,
    minor: u8,
    build: u16,
}

/// containerd's `getWindowsOSVersion`: `major.minor.build[.revision]`; anything else is zero.
/// Each part must be what Go's `strconv.ParseUint(part, 10, _)` reads: ASCII digits only. Rust's
/// `from_str` also takes a leading `+`, which would read `+10.+0.+17763` as a real build.
fn windows_version(text: &str) -> WindowsVersion {
    fn number<T: std::str::FromStr>(part: &str) -> Option<T> {
        let digits = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| part.parse().ok()).flatten()
    }
    let mut parts = text.split('.');
    let (Some(major), Some(minor), Some(build)) = (parts.next(), parts.next(), parts.next()) else {
        return WindowsVersion::default();
    };
    match (number(major), number(minor), number(build)) {
        (Some(major), Some(minor), Some(build)) => WindowsVersion {
            major,
            minor,
            build,
        },
        _ => WindowsVersion::default(),
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = if self.os.is_empty() { "*" } else { &self.os };
        write!(f, "{os}/{}", self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        match (&self.os_version, self.os_features.is_empty()) {
            (Some(version), true) => write!(f, " ({version})"),
            (Some(version), false) => write!(f, " ({version}, {})", self.os_features.join(", ")),
            (None, false) => write!(f, " ({})", self.os_features.join(", ")),
            (None, true) => Ok(()),
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Joins platforms for a message: `linux/amd64, linux/arm64/v8`, or `none` when empty.
pub fn list(platforms: &[Platform]) -> String {
    if platforms.is_empty() {
        return "none".to_string();
    }
    platforms
        .iter()
        .map(Platform::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Platforms a finding names, at most; the rest are counted. Real images list a dozen, and a
/// registry may list 1000 in an index.
pub const MAX_LISTED: usize = 32;

/// Joins platforms as nodes name them ([`Platform::node_name`]), each once, in order: what a
/// finding lists, so that `linux/arm64/v8` and `linux/arm64` are one platform, as on the node.
/// Past [`MAX_LISTED`] names the entries left are counted, not read: a finding is written per
/// container, and a hostile index lists 1000.
pub fn node_list(platforms: &[Platform]) -> String {
    let mut names: Vec<String> = Vec::new();
    let mut read = 0;
    for platform in platforms {
        if names.len() == MAX_LISTED {
            break;
        }
        read += 1;
        let name = platform.node_name();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    match (names.len(), platforms.len() - read) {
        (0, _) => "none".to_string(),
        (_, 0) => names.join(", "),
        (_, more) => format!("{} and {more} more", names.join(", ")),
    }
}

#[cfg(test)]
mod tests;
