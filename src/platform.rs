//! Platforms (`os/arch[/variant]`) and the rules for when an image's platform satisfies a node's.
//!
//! Matching follows containerd's normalisation (`platforms.Normalize`): `x86_64` is `amd64`,
//! `aarch64` is `arm64`, `arm64/v8` is plain `arm64`, `amd64/v1` is plain `amd64`, and a bare `arm` is
//! `arm/v7`. Platforms keep the spelling the registry used so that messages show what the developer
//! will find in `docker buildx imagetools inspect`; only comparisons normalise.

use std::fmt;

use serde::Serialize;

/// One platform an image provides or a node runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Windows images name the OS build they need (`10.0.17763.5329`); shown, not matched.
    #[serde(rename = "os.version", skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

/// Why a platform string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    #[error(
        "invalid platform {0:?}: expected OS/ARCH or OS/ARCH/VARIANT, e.g. linux/amd64 or linux/arm/v7"
    )]
    Shape(String),
    #[error("invalid platform {0:?}: each part must be lower-case letters, digits, '_' or '.'")]
    Characters(String),
}

impl Platform {
    /// A platform as a registry described it, kept verbatim.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_string),
            os_version: None,
        }
    }

    /// Parses what a user typed (`linux/amd64`, `linux/arm64/v8`, `linux/x86_64`) into normalised form.
    pub fn parse(text: &str) -> Result<Self, PlatformError> {
        let trimmed = text.trim();
        let parts: Vec<&str> = trimmed.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(PlatformError::Shape(text.to_string()));
        }
        let valid = |p: &str| {
            p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
        };
        if !parts.iter().all(|p| valid(p)) {
            return Err(PlatformError::Characters(text.to_string()));
        }
        Ok(Self::new(parts[0], parts[1], parts.get(2).copied()).normalized())
    }

    /// containerd's normal form: canonical architecture names and default variants dropped or added.
    pub fn normalized(&self) -> Self {
        let os = self.os.to_ascii_lowercase();
        let arch = self.architecture.to_ascii_lowercase();
        let variant = self.variant.as_deref().map(str::to_ascii_lowercase);
        let (architecture, variant) = match (arch.as_str(), variant.as_deref()) {
            ("i386", _) => ("386", None),
            ("x86_64" | "x86-64" | "amd64", Some("v1") | None) => ("amd64", None),
            ("x86_64" | "x86-64" | "amd64", Some(v)) => ("amd64", Some(v.to_string())),
            ("aarch64" | "arm64", Some("v8" | "8") | None) => ("arm64", None),
            ("aarch64" | "arm64", Some(v)) => ("arm64", Some(v.to_string())),
            ("armhf", _) => ("arm", Some("v7".to_string())),
            ("armel", _) => ("arm", Some("v6".to_string())),
            ("arm", None | Some("7" | "v7")) => ("arm", Some("v7".to_string())),
            ("arm", Some("5" | "v5")) => ("arm", Some("v5".to_string())),
            ("arm", Some("6" | "v6")) => ("arm", Some("v6".to_string())),
            ("arm", Some("8" | "v8")) => ("arm", Some("v8".to_string())),
            (other, v) => (other, v.map(str::to_string)),
        };
        Self {
            os,
            architecture: architecture.to_string(),
            variant,
            os_version: self.os_version.clone(),
        }
    }

    /// Does an image built for `self` run where `required` is needed?
    ///
    /// Same OS and architecture after normalisation. A required variant must match exactly
    /// (`arm/v6` and `arm/v7` stay apart); a required platform without a variant (`linux/amd64`,
    /// which is all a node label says) accepts any variant of that architecture.
    pub fn satisfies(&self, required: &Platform) -> bool {
        let have = self.normalized();
        let need = required.normalized();
        have.os == need.os
            && have.architecture == need.architecture
            && (need.variant.is_none() || have.variant == need.variant)
    }

    /// `unknown/unknown` entries in an index are attestations and signatures, not runnable images.
    pub fn is_unknown(&self) -> bool {
        self.os == "unknown" || self.architecture == "unknown"
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        if let Some(version) = &self.os_version {
            write!(f, " ({version})")?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalises_like_containerd() {
        let cases = [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("linux/i386", "linux/386"),
            ("windows/amd64", "windows/amd64"),
            (" linux/s390x ", "linux/s390x"),
        ];
        for (input, want) in cases {
            assert_eq!(Platform::parse(input).unwrap().to_string(), want, "{input}");
        }
    }

    #[test]
    fn parse_rejects_bad_shapes() {
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "Linux/AMD64",
            "linux/am d64",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let msg = Platform::parse("amd64").unwrap_err().to_string();
        assert!(msg.contains("OS/ARCH"), "{msg}");
    }

    #[test]
    fn satisfies_table() {
        // (image provides, node requires, runs?)
        let cases = [
            (
                Platform::new("linux", "arm64", Some("v8")),
                "linux/arm64",
                true,
            ),
            (
                Platform::new("linux", "arm64", None),
                "linux/arm64/v8",
                true,
            ),
            (Platform::new("linux", "aarch64", None), "linux/arm64", true),
            (Platform::new("linux", "x86_64", None), "linux/amd64", true),
            (
                Platform::new("linux", "amd64", Some("v3")),
                "linux/amd64",
                true,
            ),
            (
                Platform::new("linux", "amd64", None),
                "linux/amd64/v3",
                false,
            ),
            (Platform::new("linux", "arm", None), "linux/arm/v7", true),
            (
                Platform::new("linux", "arm", Some("v6")),
                "linux/arm/v7",
                false,
            ),
            (
                Platform::new("linux", "arm", Some("v7")),
                "linux/arm/v6",
                false,
            ),
            (
                Platform::new("linux", "arm64", Some("v8")),
                "linux/amd64",
                false,
            ),
            (
                Platform::new("windows", "amd64", None),
                "linux/amd64",
                false,
            ),
            (
                Platform::new("linux", "amd64", None),
                "windows/amd64",
                false,
            ),
            (Platform::new("linux", "386", None), "linux/amd64", false),
        ];
        for (have, need, want) in cases {
            let need = Platform::parse(need).unwrap();
            assert_eq!(have.satisfies(&need), want, "{have} on {need}");
        }
    }

    #[test]
    fn display_keeps_registry_spelling_and_os_version() {
        let mut p = Platform::new("windows", "amd64", None);
        p.os_version = Some("10.0.17763.5329".into());
        assert_eq!(p.to_string(), "windows/amd64 (10.0.17763.5329)");
        assert_eq!(
            Platform::new("linux", "arm64", Some("v8")).to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(list(&[]), "none");
    }
}
