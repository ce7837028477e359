//! The two caches' entries and keys: tag → digest (fresh for a short while, then kept to be
//! checked with a HEAD) and digest → platforms (for good), keyed by who asked and a hash of the
//! reference.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use moka::Expiry;

use super::Identity;
use crate::platform::Platform;
use crate::reference::ImageRef;

/// A tag's digest, or the knowledge that the tag does not exist, and when we learned it.
#[derive(Debug, Clone)]
pub(super) struct TagEntry {
    pub(super) digest: Option<Digest>,
    /// The digest's platforms, when this answer read them (a GET of the tag): a warm lookup by
    /// tag is then one cache read, not two. What a digest names never changes.
    pub(super) platforms: Option<Arc<[Platform]>>,
    pub(super) checked: Instant,
    /// Asked to be read again before its lifetime ends ([`super::Resolver::refresh`]).
    pub(super) stale: bool,
}

/// A digest's platforms, or the knowledge that it does not exist. Platform lists are interned:
/// most images share one of a handful of sets.
#[derive(Debug, Clone)]
pub(super) struct DigestEntry(pub(super) Option<Arc<[Platform]>>);

/// Cache key: who asked (credential identity) and a 128-bit hash of the reference (host,
/// repository and tag, or host, repository and digest). A hash instead of the string keeps a cached image
/// at a fixed few hundred bytes (the 100k-image memory budget); at 128 bits a collision among
/// even millions of keys is out of reach.
pub(super) type Key = (Identity, u128);

/// How the caches spread [`Key`]s over their buckets. A key is already a hash keyed with this
/// process's secret ([`hasher`]), so the caches' own hash needs no collision resistance, only
/// speed: it runs on every warm lookup.
pub(super) type KeyHasher = foldhash::fast::RandomState;

/// The secret of every hash that keys a cache (references here, credential identities), drawn
/// once per process. SipHash resists collisions only while its key is unknown: with a fixed key
/// (`DefaultHasher::new()`) anyone could search offline for an arm64-only image whose key equals
/// a multi-platform one's, and be answered from its entry.
static SECRET: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// A hasher keyed with this process's secret.
pub(super) fn hasher() -> impl Hasher {
    SECRET.build_hasher()
}

pub(super) fn key<P: AsRef<[u8]>>(identity: Identity, parts: &[P]) -> Key {
    // Hashing the parts (each ends with a separator byte, as a `str` hash does) avoids building
    // the reference string on the warm path.
    let half = |salt: u8| {
        let mut h = hasher();
        salt.hash(&mut h);
        for part in parts {
            h.write(part.as_ref());
            h.write_u8(0xff);
        }
        h.finish()
    };
    (identity, (u128::from(half(0)) << 64) | u128::from(half(1)))
}

pub(super) fn tag_key(identity: Identity, image: &ImageRef) -> Key {
    let tag = image.tag().unwrap_or("latest");
    key(identity, &[image.registry(), image.repository(), ":", tag])
}

/// A digest is hashed as it is stored (a sha256 as its 32 bytes), so a warm lookup never writes
/// it out as text.
pub(super) fn digest_key(identity: Identity, image: &ImageRef, digest: &Digest) -> Key {
    let (algorithm, value): (&[u8], &[u8]) = match digest {
        Digest::Sha256(bytes) => (b"@sha256", bytes),
        Digest::Other(text) => (b"@", text.as_bytes()),
    };
    let (registry, repository) = (image.registry().as_bytes(), image.repository().as_bytes());
    key(identity, &[registry, repository, algorithm, value])
}

/// A manifest digest, stored compactly: 32 bytes for sha256 (every registry today), the text
/// otherwise: a sha384 or sha512, or a pinned reference's upper-case hex, at most 135 bytes (a
/// registry's `Docker-Content-Digest` is taken only when well formed, `fetch::content_digest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Digest {
    Sha256([u8; 32]),
    Other(Box<str>),
}

impl Digest {
    pub fn new(text: &str) -> Self {
        let sha256 = text
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64)
            .and_then(|hex| {
                let mut bytes = [0u8; 32];
                for (i, byte) in bytes.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some(bytes)
            });
        match sha256 {
            Some(bytes) if text[7..].bytes().all(|b| !b.is_ascii_uppercase()) => {
                Digest::Sha256(bytes)
            }
            _ => Digest::Other(text.into()),
        }
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Digest::Sha256(bytes) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut text = [0u8; 64];
                for (i, b) in bytes.iter().enumerate() {
                    text[2 * i] = HEX[usize::from(b >> 4)];
                    text[2 * i + 1] = HEX[usize::from(b & 0xf)];
                }
                f.write_str("sha256:")?;
                // Only ASCII hex digits were written.
                f.write_str(std::str::from_utf8(&text).unwrap_or_default())
            }
            Digest::Other(text) => f.write_str(text),
        }
    }
}

/// How long a tag's answer is trusted: a digest for `found`, "no such tag" for `missing`.
/// Past that the entry stays (until the cache is full) as what to revalidate: a HEAD that finds
/// the same digest keeps its platforms, so an unchanged tag never costs a GET. One entry per
/// tag, rather than an expiring one beside a long-lived "last digest": a second cache entry
/// per image was a third of the memory per cached image.
#[derive(Clone, Copy)]
pub(super) struct TagLifetime {
    pub(super) found: Duration,
    pub(super) missing: Duration,
}

impl TagLifetime {
    pub(super) fn is_fresh(&self, entry: &TagEntry) -> bool {
        let lifetime = if entry.digest.is_some() {
            self.found
        } else {
            self.missing
        };
        !entry.stale && entry.checked.elapsed() < lifetime
    }
}

pub(super) struct DigestExpiry {
    pub(super) missing: Duration,
}

impl Expiry<Key, DigestEntry> for DigestExpiry {
    fn expire_after_create(&self, _: &Key, value: &DigestEntry, _: Instant) -> Option<Duration> {
        value.0.is_none().then_some(self.missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    /// The key of a reference cannot be worked out from the reference alone: it is not the
    /// fixed-key SipHash of its parts, and it is the same for every lookup in this process.
    #[test]
    fn keys_are_hashed_with_a_secret() {
        let parts = ["registry.example", "team/app", ":", "1.0"];
        let fixed = |salt: u8| {
            let mut h = DefaultHasher::new();
            salt.hash(&mut h);
            parts.iter().for_each(|p| p.hash(&mut h));
            h.finish()
        };
        let public = (u128::from(fixed(0)) << 64) | u128::from(fixed(1));
        let (identity, hashed) = key(Identity::default(), &parts);
        assert_ne!(hashed, public);
        assert_eq!(key(identity, &parts), (identity, hashed));
        assert_ne!(
            key(identity, &["registry.example", "team/app", ":", "1.1"]).1,
            hashed
        );
    }
}
