//! Image references as written in a pod spec, normalised the way the container runtime reads them.
//!
//! Parsing is the distribution reference grammar, as oci-spec reads it (matched by hand in
//! `grammar`, without oci-spec's regex): `nginx` is
//! `docker.io/library/nginx:latest`, a port stays part of the host (`10.34.0.202:5000/team/app:cuda`),
//! and when both a tag and a digest are given the runtime pulls the digest, so we resolve the digest.

use std::fmt;

use oci_client::Reference;

pub mod grammar;

/// An image reference: the text the user wrote and what it means.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    written: String,
    reference: Reference,
}

/// A reference that the runtime could not pull either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {written:?}: {reason}")]
pub struct ReferenceError {
    pub written: String,
    pub reason: String,
}

impl ImageRef {
    pub fn parse(written: &str) -> Result<Self, ReferenceError> {
        let fail = |reason: String| ReferenceError {
            written: written.to_string(),
            reason,
        };
        let trimmed = written.trim();
        if trimmed.is_empty() {
            return Err(fail("the image is empty".into()));
        }
        if trimmed.contains("$(") {
            return Err(fail("it still holds an unresolved $(...) variable".into()));
        }
        let parsed = grammar::parse(trimmed).map_err(|e| fail(e.reason().to_string()))?;
        // The grammar lets `UPPER/case` through as a Docker Hub path; the runtime rejects it.
        if parsed.repository().chars().any(|c| c.is_ascii_uppercase()) {
            return Err(fail("repository name must be lowercase".into()));
        }
        // The digest wins over the tag, exactly as containerd pulls `name:tag@digest`.
        let reference = match parsed.digest() {
            Some(digest) => Reference::with_digest(
                parsed.registry().to_string(),
                parsed.repository().to_string(),
                digest.to_string(),
            ),
            None => parsed,
        };
        Ok(Self {
            written: trimmed.to_string(),
            reference,
        })
    }

    /// The reference as the user wrote it; every message quotes this.
    pub fn written(&self) -> &str {
        &self.written
    }

    /// The normalised reference for registry calls.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Registry host as written after normalisation (`docker.io`, `10.34.0.202:5000`).
    pub fn registry(&self) -> &str {
        self.reference.registry()
    }

    pub fn repository(&self) -> &str {
        self.reference.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.reference.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.reference.digest()
    }

    /// `registry/repository`, the unit registries grant access to.
    pub fn repository_path(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// The same repository pinned to `digest`.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.registry().to_string(),
            self.repository().to_string(),
            digest.to_string(),
        )
    }

    /// Fully-qualified form, e.g. `docker.io/library/nginx:latest`.
    pub fn canonical(&self) -> String {
        self.reference.whole()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalises_like_the_runtime() {
        let with_tag_and_digest = format!("nginx:1.27@{DIGEST}");
        let by_digest = format!("ghcr.io/org/app@{DIGEST}");
        // (written, canonical, registry, repository, tag, digest)
        type Case<'a> = (
            &'a str,
            String,
            &'a str,
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "nginx",
                "docker.io/library/nginx:latest".into(),
                "docker.io",
                "library/nginx",
                Some("latest"),
                None,
            ),
            (
                "nginx:1.27",
                "docker.io/library/nginx:1.27".into(),
                "docker.io",
                "library/nginx",
                Some("1.27"),
                None,
            ),
            (
                "bitnami/redis:7",
                "docker.io/bitnami/redis:7".into(),
                "docker.io",
                "bitnami/redis",
                Some("7"),
                None,
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest".into(),
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "10.34.0.202:5000/cerebral/ai-base:cuda",
                "10.34.0.202:5000/cerebral/ai-base:cuda".into(),
                "10.34.0.202:5000",
                "cerebral/ai-base",
                Some("cuda"),
                None,
            ),
            (
                "localhost:5000/app",
                "localhost:5000/app:latest".into(),
                "localhost:5000",
                "app",
                Some("latest"),
                None,
            ),
            (
                &by_digest,
                format!("ghcr.io/org/app@{DIGEST}"),
                "ghcr.io",
                "org/app",
                None,
                Some(DIGEST),
            ),
            // tag + digest: the digest wins
            (
                &with_tag_and_digest,
                format!("docker.io/library/nginx@{DIGEST}"),
                "docker.io",
                "library/nginx",
                None,
                Some(DIGEST),
            ),
        ];
        for (written, canonical, registry, repository, tag, digest) in cases {
            let r = ImageRef::parse(written).unwrap_or_else(|e| panic!("{written}: {e}"));
            assert_eq!(r.written(), written);
            assert_eq!(r.canonical(), canonical, "{written}");
            assert_eq!(r.registry(), registry, "{written}");
            assert_eq!(r.repository(), repository, "{written}");
            assert_eq!(r.tag(), tag, "{written}");
            assert_eq!(r.digest(), digest, "{written}");
        }
    }

    #[test]
    fn rejects_invalid_references_with_a_reason() {
        for bad in [
            "",
            "  ",
            "UPPER/case",
            "nginx:",
            "nginx@sha256:123",
            "a:b:c:d",
            "$(params.IMAGE)",
            "golang:$(params.version)",
        ] {
            let err = ImageRef::parse(bad).expect_err(bad);
            let msg = err.to_string();
            assert!(msg.starts_with("invalid image reference"), "{msg}");
        }
        assert!(
            ImageRef::parse("$(params.IMAGE)")
                .unwrap_err()
                .reason
                .contains("unresolved"),
        );
    }
}
