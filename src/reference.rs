//! Image references as written in a pod spec, normalised the way the container runtime reads them.
//!
//! Parsing is the distribution reference grammar, as oci-spec reads it (matched by hand in
//! `grammar`, without oci-spec's regex): `nginx` is
//! `docker.io/library/nginx:latest`, a port stays part of the host (`10.34.0.202:5000/team/app:cuda`),
//! and when both a tag and a digest are given the runtime pulls the digest, so we resolve the digest.
//!
//! A parse builds four strings (registry, repository, tag or digest, the text); every review names
//! the same few hundred images again and again, so parsed references are kept in a small bounded
//! cache ([`PARSED_CACHE_ENTRIES`]) keyed by the trimmed text, and an [`ImageRef`] is an `Arc`: a
//! hit costs a lock, a hash and a reference count. (oci-spec's regex, which `grammar` replaced,
//! also cleared a backtracker's visited set per call: a few microseconds per reference.)

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

use oci_client::Reference;

pub mod grammar;

/// Distinct parsed references kept; when full, the cache is emptied and refills (a cluster
/// names a few hundred images; a flood of distinct names costs parsing, never memory).
pub const PARSED_CACHE_ENTRIES: usize = 4096;

/// Longer texts are parsed every time rather than cached, so an entry stays under a few KiB.
const CACHED_TEXT_BYTES: usize = 512;

/// An image reference: the text the user wrote and what it means. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef(Arc<Parsed>);

#[derive(Debug, PartialEq, Eq, Hash)]
struct Parsed {
    written: String,
    reference: Reference,
}

/// Parse results by trimmed text, errors included as their reason only (a bad reference is
/// written again and again too, by every replica of a broken Deployment; the text around it,
/// which the error quotes, can be as long as a request body, so it is not kept).
static PARSED: LazyLock<Mutex<ParseCache>> = LazyLock::new(Mutex::default);

type ParseCache = HashMap<Box<str>, Result<ImageRef, String>>;

/// The longest text read as a reference. The grammar allows a 255-character name, a 128-character
/// tag and a digest (at most 135 characters, sha512), about 520 in all; anything longer is invalid
/// without parsing. Extraction holds images to this bound too, so that one long string (a Tekton
/// step template's image, inherited by every step) is never copied per container.
pub const MAX_REFERENCE_BYTES: usize = 1024;

/// Characters of an invalid reference quoted in its message: enough to recognise it, and short
/// enough that the reason after it survives the API server's 256-character warnings.
const QUOTED_CHARS: usize = 96;

/// A reference that the runtime could not pull either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {:?}: {reason}", quoted(written))]
pub struct ReferenceError {
    pub written: String,
    pub reason: String,
}

/// `written`, or for a long one its start and end around a `…`.
fn quoted(written: &str) -> std::borrow::Cow<'_, str> {
    let count = written.chars().count();
    if count <= QUOTED_CHARS {
        return written.into();
    }
    let head: String = written.chars().take(QUOTED_CHARS - 24).collect();
    let tail: String = written.chars().skip(count - 23).collect();
    format!("{head}…{tail}").into()
}

impl ImageRef {
    pub fn parse(written: &str) -> Result<Self, ReferenceError> {
        let trimmed = written.trim();
        if trimmed.len() > CACHED_TEXT_BYTES {
            return Self::parse_uncached(written, trimmed);
        }
        let cache = || PARSED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache().get(trimmed) {
            return match hit {
                Ok(image) => Ok(image.clone()),
                // The error quotes the text as this caller wrote it, surrounding space included.
                Err(reason) => Err(ReferenceError {
                    written: written.to_string(),
                    reason: reason.clone(),
                }),
            };
        }
        let parsed = Self::parse_uncached(written, trimmed);
        let mut cache = cache();
        if cache.len() >= PARSED_CACHE_ENTRIES {
            cache.clear();
        }
        let kept = match &parsed {
            Ok(image) => Ok(image.clone()),
            Err(e) => Err(e.reason.clone()),
        };
        cache.insert(trimmed.into(), kept);
        parsed
    }

    fn parse_uncached(written: &str, trimmed: &str) -> Result<Self, ReferenceError> {
        let fail = |reason: String| ReferenceError {
            written: written.to_string(),
            reason,
        };
        if trimmed.is_empty() {
            return Err(fail("the image is empty".into()));
        }
        if trimmed.len() > MAX_REFERENCE_BYTES {
            return Err(fail(format!(
                "it is {} bytes long, longer than any valid reference ({MAX_REFERENCE_BYTES} bytes here)",
                trimmed.len()
            )));
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
        Ok(Self(Arc::new(Parsed {
            written: trimmed.to_string(),
            reference,
        })))
    }

    /// The reference as the user wrote it; every message quotes this.
    pub fn written(&self) -> &str {
        &self.0.written
    }

    /// The normalised reference for registry calls.
    pub fn reference(&self) -> &Reference {
        &self.0.reference
    }

    /// Registry host as written after normalisation (`docker.io`, `10.34.0.202:5000`).
    pub fn registry(&self) -> &str {
        self.0.reference.registry()
    }

    pub fn repository(&self) -> &str {
        self.0.reference.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.0.reference.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.0.reference.digest()
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
        self.0.reference.whole()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.written)
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

    #[test]
    fn cached_parses_answer_like_fresh_ones_and_the_cache_is_bounded() {
        for written in [
            "nginx:1.27",
            "  ghcr.io/org/app:v1 ",
            "10.34.0.202:5000/team/app",
        ] {
            let first = ImageRef::parse(written).unwrap();
            let again = ImageRef::parse(written).unwrap();
            let fresh = ImageRef::parse_uncached(written, written.trim()).unwrap();
            assert_eq!(first, fresh, "{written}");
            assert_eq!(again, fresh, "{written}");
            assert_eq!(again.canonical(), fresh.canonical());
        }
        // A cached error still quotes the text exactly as this caller wrote it.
        let _ = ImageRef::parse("UPPER/cached");
        let err = ImageRef::parse(" UPPER/cached").unwrap_err();
        assert_eq!(err.written, " UPPER/cached");
        assert_eq!(err.reason, "repository name must be lowercase");
        // The cache keeps the short key and the reason, never the (unbounded) text around it.
        let padded = format!("UPPER/padded{}", " ".repeat(100_000));
        assert_eq!(ImageRef::parse(&padded).unwrap_err().written, padded);
        let cache = PARSED.lock().unwrap();
        let (key, kept) = cache.get_key_value("UPPER/padded").expect("cached");
        assert_eq!(key.len(), "UPPER/padded".len());
        assert_eq!(kept, &Err("repository name must be lowercase".to_string()));
        drop(cache);

        // Last, and in this test only: filling the cache empties it, which would race with
        // the lookups above in a test of their own.
        for i in 0..PARSED_CACHE_ENTRIES + 100 {
            let image = ImageRef::parse(&format!("registry.example/bound/app-{i}:v1")).unwrap();
            assert_eq!(image.repository(), format!("bound/app-{i}"));
        }
        assert!(PARSED.lock().unwrap().len() <= PARSED_CACHE_ENTRIES);
        // Long texts are never kept.
        let long = format!("{}.example/app:v1", "a".repeat(CACHED_TEXT_BYTES));
        let image = ImageRef::parse(&long).expect("a long host is a valid reference");
        assert_eq!(image.registry().len(), CACHED_TEXT_BYTES + ".example".len());
        assert!(!PARSED.lock().unwrap().contains_key(long.as_str()));
    }
}
