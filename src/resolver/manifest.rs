//! Reading platforms out of registry documents: image indexes, manifest lists, image manifests and
//! their config blobs.
//!
//! These are small serde views rather than oci-client's types on purpose: oci-client's
//! `ConfigFile` drops `variant`, `os.version` and `os.features`, and its `Platform` maps
//! architectures into an enum; archgate must report exactly what the registry says, and
//! [`crate::platform`] matches on every one of those fields as containerd does.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};

use crate::platform::Platform;

/// Media types archgate asks for, most specific first.
pub const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// What `mediaType` may say of an index ([`ACCEPT`]'s first two), and of an image manifest.
const INDEX_TYPES: &[&str] = ACCEPT.split_at(2).0;
const IMAGE_TYPES: &[&str] = ACCEPT.split_at(2).1;

/// A config blob larger than this is not an image config; refuse to buffer it.
pub const MAX_CONFIG_BYTES: i64 = 4 << 20;

/// `os.features` kept per platform, and bytes per platform field (`os`, `architecture`,
/// `variant`, `os.version`, each feature). Real images list one or two features (`win32k`) and
/// no name comes near 64 bytes; a field past either bound is kept as [`UNREADABLE`], so a 4 MiB
/// document cannot put megabytes into the cached platforms.
const MAX_OS_FEATURES: usize = 16;
const MAX_FIELD_BYTES: usize = 64;
const MAX_DIGEST_BYTES: usize = 160;
/// Stands for a platform field archgate would not read: no node has it, and it is neither empty
/// (an empty `os` takes the node's) nor `unknown` (dropped as an attestation), so an entry
/// holding it never matches and is still shown.
const UNREADABLE: &str = "unreadable";
/// Index entries read, at most. Real indexes list a few dozen (platforms plus attestations);
/// an index listing more is refused as unreadable (a registry error for the policy).
pub const MAX_INDEX_ENTRIES: usize = 1000;

/// What a manifest document tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// An index or manifest list: the platforms are in it.
    Index(Vec<Platform>),
    /// A single image: the platform is in its config blob.
    Image {
        config_digest: String,
        config_size: i64,
    },
    /// Docker schema 1 carries the architecture inline (and is always Linux).
    Legacy(Platform),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON: {0}")]
    Json(String),
    #[error("the manifest has media type {0:?}, which is not an image index or image manifest")]
    MediaType(String),
    #[error("the manifest has neither `manifests` nor `config`")]
    Shape,
    #[error("the image config does not name an architecture")]
    ConfigPlatform,
    #[error("the image config is {0} bytes, larger than any real image config")]
    ConfigTooLarge(i64),
    #[error("the index lists more than {MAX_INDEX_ENTRIES} entries, the most archgate reads")]
    TooManyEntries,
    /// containerd reads such an entry's config to learn its platform; archgate reads only the
    /// index, and dropping the entry would deny pods for a platform the image may well have.
    #[error(
        "index entry {0} states no platform, and archgate does not read entry configs: push the index with a platform for each image"
    )]
    EntryWithoutPlatform(String),
    /// containerd's `validateMediaType` (the fix for GHSA-5j5w-g665-5m35) refuses these: read
    /// by its shape alone, one document could be an index to one reader and an image to another.
    #[error("the manifest is ambiguous: {0}; containerd refuses to pull such a document")]
    Ambiguous(&'static str),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Capped<RawEntry, MAX_INDEX_ENTRIES>>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    /// Only whether it is there: an index must not have it.
    #[serde(default)]
    layers: Option<IgnoredAny>,
    /// schema 1 only
    #[serde(default)]
    architecture: Option<Field>,
}

#[derive(Deserialize)]
struct RawEntry {
    /// Only for a message; a digest is at most `sha512:` and 128 hex digits.
    #[serde(default)]
    digest: Option<Field<MAX_DIGEST_BYTES>>,
    #[serde(default)]
    platform: Option<RawPlatform>,
    #[serde(default)]
    annotations: Option<RawAnnotations>,
}

/// The one annotation archgate reads; every other key is skipped without being copied (a map
/// of them was a 4 MiB allocation per entry the registry chose to fill).
#[derive(Deserialize)]
struct RawAnnotations {
    /// Buildx and other tools mark attestation and signature entries in an index this way.
    #[serde(rename = "vnd.docker.reference.type", default)]
    reference_type: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    digest: String,
    #[serde(default)]
    size: i64,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    architecture: Field,
    #[serde(default)]
    os: Field,
    #[serde(default)]
    variant: Option<Field>,
    #[serde(rename = "os.version", default)]
    os_version: Option<Field>,
    #[serde(rename = "os.features", default)]
    os_features: Option<Capped<Field, MAX_OS_FEATURES>>,
}

impl RawPlatform {
    /// The platform, or `None` without an architecture (no node can match it). An empty `os` is
    /// kept: containerd reads it as the node's own OS (`normalizeOS`).
    fn into_platform(self) -> Option<Platform> {
        let architecture = self.architecture.text();
        if architecture.is_empty() {
            return None;
        }
        let variant = self.variant.map(Field::text);
        let mut p = Platform::new(&self.os.text(), &architecture, variant.as_deref());
        // Every review compares (and copies) this; a real build is `10.0.20348.2227`.
        p.os_version = self.os_version.map(Field::text).filter(|v| !v.is_empty());
        let (features, overflowed) = match self.os_features {
            Some(list) => (list.items, list.overflowed),
            None => (Vec::new(), false),
        };
        // Past a bound the entry needs a feature no node offers: never a silent match. An
        // empty feature is one too: containerd keeps "" as a feature the image needs, and no
        // node lists it (dropped, the entry would match every node of its platform).
        let unreadable = overflowed
            || features.iter().any(|f| {
                matches!(f, Field::TooLong) || matches!(f, Field::Text(t) if t.is_empty())
            });
        p.os_features = if unreadable {
            vec![UNREADABLE.to_string()]
        } else {
            features.into_iter().map(Field::text).collect()
        };
        Some(p)
    }
}

/// A platform field as the registry wrote it, or the knowledge that it was longer than `N`
/// bytes ([`MAX_FIELD_BYTES`] unless said). Read from the borrowed input: an oversized value is
/// never copied.
enum Field<const N: usize = MAX_FIELD_BYTES> {
    Text(String),
    TooLong,
}

impl<const N: usize> Field<N> {
    /// The text, with [`UNREADABLE`] standing for a value past the bound.
    fn text(self) -> String {
        match self {
            Field::Text(text) => text,
            Field::TooLong => UNREADABLE.to_string(),
        }
    }
}

impl<const N: usize> Default for Field<N> {
    fn default() -> Self {
        Field::Text(String::new())
    }
}

impl<'de, const N: usize> Deserialize<'de> for Field<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor<const N: usize>;
        impl<const N: usize> Visitor<'_> for FieldVisitor<N> {
            type Value = Field<N>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Field<N>, E> {
                Ok(if v.len() > N {
                    Field::TooLong
                } else {
                    Field::Text(v.to_string())
                })
            }
        }
        deserializer.deserialize_str(FieldVisitor::<N>)
    }
}

/// A list read element by element that keeps at most `N` elements: the rest are skipped as
/// they are read (`IgnoredAny` copies nothing) and only counted as `overflowed`. A fully read
/// `Vec` of a 4 MiB `[{},{},...]` was ~1.4 million entries, hundreds of MB per lookup, before
/// its length could be checked.
pub(crate) struct Capped<T, const N: usize> {
    pub(crate) items: Vec<T>,
    pub(crate) overflowed: bool,
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Capped<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CappedVisitor<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for CappedVisitor<T, N> {
            type Value = Capped<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while items.len() < N {
                    match seq.next_element()? {
                        Some(item) => items.push(item),
                        None => {
                            return Ok(Capped {
                                items,
                                overflowed: false,
                            });
                        }
                    }
                }
                let mut overflowed = false;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    overflowed = true;
                }
                Ok(Capped { items, overflowed })
            }
        }
        deserializer.deserialize_seq(CappedVisitor::<T, N>(PhantomData))
    }
}

/// Characters of the parser's message kept: serde quotes a mistyped string whole (a 4 MiB
/// `"os.features": "..."` was a 4 MiB message), and the message goes to logs and warnings.
const MAX_JSON_MESSAGE_CHARS: usize = 200;

fn json_error(e: serde_json::Error) -> ManifestError {
    let text = e.to_string();
    if text.chars().count() <= MAX_JSON_MESSAGE_CHARS {
        return ManifestError::Json(text);
    }
    let cut: String = text.chars().take(MAX_JSON_MESSAGE_CHARS).collect();
    ManifestError::Json(format!("{cut}… at line {} column {}", e.line(), e.column()))
}

/// Parses a manifest body. Index entries that are attestations are left out.
pub fn parse_manifest(body: &[u8]) -> Result<Document, ManifestError> {
    let raw: RawManifest = serde_json::from_slice(body).map_err(json_error)?;
    if let Some(media_type) = raw.media_type.as_deref()
        && !ACCEPT.contains(&media_type)
        && !media_type.starts_with("application/vnd.docker.distribution.manifest.v1")
    {
        return Err(ManifestError::MediaType(media_type.to_string()));
    }
    // archgate does not see the Content-Type the registry served, so it refuses what
    // containerd refuses under the index type: `manifests` beside `config` or `layers`.
    let media_type = raw.media_type.as_deref().unwrap_or_default();
    if raw.manifests.is_some() && (raw.config.is_some() || raw.layers.is_some()) {
        return Err(ManifestError::Ambiguous(
            "it has `manifests` as an index does and `config` or `layers` as an image does",
        ));
    }
    if raw.manifests.is_some() && IMAGE_TYPES.contains(&media_type) {
        return Err(ManifestError::Ambiguous(
            "its mediaType says image manifest, but it lists `manifests` as an index does",
        ));
    }
    if raw.config.is_some() && INDEX_TYPES.contains(&media_type) {
        return Err(ManifestError::Ambiguous(
            "its mediaType says index, but it has `config` as an image manifest does",
        ));
    }
    if let Some(entries) = raw.manifests {
        if entries.overflowed {
            return Err(ManifestError::TooManyEntries);
        }
        let mut platforms: Vec<Platform> = Vec::new();
        for (position, entry) in entries.items.into_iter().enumerate() {
            let attestation = entry
                .annotations
                .as_ref()
                .is_some_and(|a| a.reference_type.is_some());
            if attestation {
                continue;
            }
            let Some(platform) = entry.platform else {
                let named = match entry.digest {
                    Some(Field::Text(digest)) if !digest.is_empty() => digest,
                    _ => format!("#{}", position + 1),
                };
                return Err(ManifestError::EntryWithoutPlatform(named));
            };
            if let Some(p) = platform.into_platform().filter(|p| !p.is_unknown()) {
                platforms.push(p);
            }
        }
        platforms.dedup();
        return Ok(Document::Index(platforms));
    }
    if let Some(config) = raw.config {
        return Ok(Document::Image {
            config_digest: config.digest,
            config_size: config.size,
        });
    }
    if raw.schema_version == Some(1)
        && let Some(arch) = raw.architecture.map(Field::text).filter(|a| !a.is_empty())
    {
        return Ok(Document::Legacy(Platform::new("linux", &arch, None)));
    }
    Err(ManifestError::Shape)
}

/// Reads the platform out of an image config blob: os, architecture, variant, `os.version` and
/// `os.features`, as containerd's `images.ConfigPlatform` does.
///
/// containerd pulls a single-manifest image without checking its platform (`images.Manifest`
/// skips the root); the unpacker then decides. containerd 1.x compares only OS and architecture
/// (`unpack.Unpacker.unpack` builds the platform from `i.OS`, `i.Architecture`), 2.x the whole
/// config platform. archgate applies the whole platform to every node, as 2.x does: an
/// `amd64/v3` single image is denied for a plain amd64 node that 1.x would unpack and then fail
/// to run on an older CPU.
pub fn parse_config(body: &[u8]) -> Result<Platform, ManifestError> {
    let raw: RawPlatform = serde_json::from_slice(body).map_err(json_error)?;
    raw.into_platform().ok_or(ManifestError::ConfigPlatform)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    /// The platforms of an index, which `v` must be.
    fn index(v: serde_json::Value) -> Vec<Platform> {
        match parse_manifest(&body(v)).unwrap() {
            Document::Index(platforms) => platforms,
            doc => panic!("{doc:?}"),
        }
    }

    #[test]
    fn index_skips_attestations_and_keeps_spelling() {
        let platforms = index(json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": "sha256:a", "size": 1, "mediaType": "x", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"digest": "sha256:b", "size": 1, "mediaType": "x", "platform": {"os": "unknown", "architecture": "unknown"}},
                {"digest": "sha256:c", "size": 1, "mediaType": "x", "platform": {"os": "linux", "architecture": "amd64"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
                {"digest": "sha256:d", "size": 1, "mediaType": "x", "platform": {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.5329"}}
            ]
        }));
        let shown: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shown,
            vec!["linux/arm64/v8", "windows/amd64 (10.0.17763.5329)"]
        );
    }

    #[test]
    fn index_keeps_features_and_entries_without_os() {
        let doc = parse_manifest(&body(json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": "sha256:a", "size": 1, "mediaType": "x", "platform": {"architecture": "amd64"}},
                {"digest": "sha256:b", "size": 1, "mediaType": "x", "platform": {"os": "windows", "architecture": "amd64",
                 "os.version": "10.0.20348.2227", "os.features": ["win32k"]}},
                {"digest": "sha256:c", "size": 1, "mediaType": "x", "platform": {"os": "linux"}},
                {"digest": "sha256:d", "size": 1, "mediaType": "x", "platform": {"os": "linux", "architecture": "amd64", "os.features": 7}}
            ]
        })));
        // A malformed field is a malformed manifest, not a silently narrower platform.
        assert!(doc.is_err(), "{doc:?}");
        let platforms = index(json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": "sha256:a", "size": 1, "mediaType": "x", "platform": {"architecture": "amd64"}},
                {"digest": "sha256:b", "size": 1, "mediaType": "x", "platform": {"os": "windows", "architecture": "amd64",
                 "os.version": "10.0.20348.2227", "os.features": ["win32k"]}},
                {"digest": "sha256:c", "size": 1, "mediaType": "x", "platform": {"os": "linux"}}
            ]
        }));
        let shown: Vec<String> = platforms.iter().map(|p| p.node_name()).collect();
        assert_eq!(shown, ["*/amd64", "windows(10.0.20348.2227+win32k)/amd64"]);
        assert!(platforms[0].satisfies(&Platform::parse("linux/amd64").unwrap()));
    }

    #[test]
    fn oversized_os_fields_never_match() {
        let many: Vec<String> = (0..=MAX_OS_FEATURES).map(|i| format!("f{i}")).collect();
        let long = "9".repeat(MAX_FIELD_BYTES + 1);
        for platform in [
            json!({"os": "linux", "architecture": "amd64", "os.features": many}),
            json!({"os": "linux", "architecture": "amd64", "os.features": [long]}),
            json!({"os": "windows", "architecture": "amd64", "os.version": format!("10.0.17763.{long}")}),
            // Every other platform field is held to the same bound: a cached platform is small.
            json!({"os": format!("linux{long}"), "architecture": "amd64"}),
            json!({"os": "linux", "architecture": format!("amd64{long}")}),
            json!({"os": "linux", "architecture": "amd64", "variant": format!("v1{long}")}),
        ] {
            let p = parse_config(&body(platform)).unwrap();
            assert!(p.to_string().len() < 40, "{p}");
            for node in ["linux/amd64", "windows(10.0.17763)/amd64"] {
                let node = Platform::parse(node).unwrap();
                assert!(!p.satisfies(&node), "{p} on {}", node.node_name());
            }
        }
    }

    #[test]
    fn docker_list_and_single_manifests() {
        let list = parse_manifest(&body(json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": [{"digest": "sha256:a", "size": 1, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}]
        })))
        .unwrap();
        assert_eq!(
            list,
            Document::Index(vec![Platform::new("linux", "arm", Some("v7"))])
        );
        let single = parse_manifest(&body(json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"digest": "sha256:cfg", "size": 1234, "mediaType": "application/vnd.docker.container.image.v1+json"},
            "layers": []
        })))
        .unwrap();
        assert_eq!(
            single,
            Document::Image {
                config_digest: "sha256:cfg".into(),
                config_size: 1234
            }
        );
    }

    #[test]
    fn config_blob_gives_the_platform() {
        let p = parse_config(&body(
            json!({"architecture": "arm64", "os": "linux", "variant": "v8", "rootfs": {}}),
        ))
        .unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!(
            parse_config(b"{\"rootfs\":{}}"),
            Err(ManifestError::ConfigPlatform)
        );
        // containerd's `ConfigPlatform` reads the same fields, so a config without `os` runs on
        // any OS with its architecture, and `os.features` count.
        let p = parse_config(&body(
            json!({"architecture": "amd64", "variant": "v3", "os.features": ["x"]}),
        ))
        .unwrap();
        assert_eq!(p.node_name(), "*(+x)/amd64/v3");
    }

    #[test]
    fn indexes_past_the_entry_bound_are_refused() {
        let entry = json!({"digest": "sha256:a", "size": 1, "platform": {"os": "linux", "architecture": "amd64"}});
        let index =
            |n: usize| body(json!({"schemaVersion": 2, "manifests": vec![entry.clone(); n]}));
        assert!(parse_manifest(&index(MAX_INDEX_ENTRIES)).is_ok());
        assert_eq!(
            parse_manifest(&index(MAX_INDEX_ENTRIES + 1)),
            Err(ManifestError::TooManyEntries)
        );
    }

    /// An entry whose fields are all past the bound is kept (shown, never matched), not dropped
    /// as an attestation nor read as "any OS"; a field at the bound is kept as written.
    #[test]
    fn index_platform_fields_are_bounded() {
        let at = "a".repeat(MAX_FIELD_BYTES);
        let past = "a".repeat(MAX_FIELD_BYTES + 1);
        let platforms = index(json!({
            "schemaVersion": 2,
            "manifests": [
                {"platform": {"os": past, "architecture": past, "variant": past}},
                {"platform": {"os": "linux", "architecture": at}}
            ]
        }));
        let shown: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shown,
            [
                format!("{UNREADABLE}/{UNREADABLE}/{UNREADABLE}"),
                format!("linux/{at}")
            ]
        );
        for node in ["linux/amd64", "linux/arm64", "windows/amd64"] {
            let node = Platform::parse(node).unwrap();
            assert!(!platforms[0].satisfies(&node), "{}", node.node_name());
        }
        let legacy = parse_manifest(&body(
            json!({"schemaVersion": 1, "architecture": format!("amd64{past}")}),
        ))
        .unwrap();
        assert_eq!(
            legacy,
            Document::Legacy(Platform::new("linux", UNREADABLE, None))
        );
    }

    /// Entries past the bound are skipped, never read as entries: one that is not an entry at
    /// all (`"platform": 7`, an error when read) after the 1001st leaves the answer "too many".
    #[test]
    fn index_entries_past_the_bound_are_not_kept() {
        let index = |n: usize, tail: &str| {
            // Entries with an empty platform: read, and dropped (no architecture).
            let entries = vec![r#"{"platform":{}}"#; n].join(",");
            format!(r#"{{"schemaVersion":2,"manifests":[{entries}{tail}]}}"#).into_bytes()
        };
        assert_eq!(
            parse_manifest(&index(MAX_INDEX_ENTRIES, "")),
            Ok(Document::Index(Vec::new()))
        );
        assert_eq!(
            parse_manifest(&index(MAX_INDEX_ENTRIES + 1, r#",{"platform":7}"#)),
            Err(ManifestError::TooManyEntries)
        );
        // Within the bound the same entry is read, and is an error.
        assert!(matches!(
            parse_manifest(&index(3, r#",{"platform":7}"#)),
            Err(ManifestError::Json(_))
        ));
    }

    /// Only `vnd.docker.reference.type` is read out of an entry's annotations: other keys, of
    /// any type, are skipped.
    #[test]
    fn only_the_reference_type_annotation_is_read() {
        let doc = parse_manifest(&body(json!({
            "schemaVersion": 2,
            "manifests": [
                {"platform": {"os": "linux", "architecture": "amd64"},
                 "annotations": {"org.example.big": {"nested": [1, 2, 3]}, "n": 5}},
                {"platform": {"os": "linux", "architecture": "arm64"},
                 "annotations": {"n": 5, "vnd.docker.reference.type": "attestation-manifest"}}
            ]
        })))
        .unwrap();
        assert_eq!(
            doc,
            Document::Index(vec![Platform::new("linux", "amd64", None)])
        );
    }

    /// Before: a document with `manifests` and `config` (or `layers`) was read as an index, and
    /// one whose `mediaType` named the other kind by its shape alone, so archgate could answer
    /// for other platforms than containerd pulls. containerd refuses both (`validateMediaType`,
    /// GHSA-5j5w-g665-5m35); so does archgate now: an unreadable manifest, --on-registry-error.
    #[test]
    fn ambiguous_manifests_are_unreadable() {
        let entries = json!([{"digest": "sha256:a", "size": 1, "platform": {"os": "linux", "architecture": "amd64"}}]);
        let config = json!({"digest": "sha256:cfg", "size": 2});
        for (what, doc) in [
            (
                "manifests and config",
                json!({"schemaVersion": 2, "manifests": entries, "config": config}),
            ),
            (
                "manifests and layers",
                json!({"schemaVersion": 2, "manifests": entries, "layers": []}),
            ),
            (
                "an empty manifests and config",
                json!({"schemaVersion": 2, "manifests": [], "config": config, "layers": []}),
            ),
            (
                "an image manifest media type on an index",
                json!({"schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "manifests": entries}),
            ),
            (
                "a Docker manifest media type on an index",
                json!({"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "manifests": entries}),
            ),
            (
                "an index media type on an image manifest",
                json!({"schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json", "config": config, "layers": []}),
            ),
            (
                "a list media type on an image manifest",
                json!({"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json", "config": config}),
            ),
        ] {
            let read = parse_manifest(&body(doc));
            assert!(
                matches!(read, Err(ManifestError::Ambiguous(_))),
                "{what}: {read:?}"
            );
        }
    }

    /// Before: `os.features: [""]` lost its empty feature and matched every node of the
    /// platform; containerd keeps "" as a feature the entry needs, which no node has.
    #[test]
    fn an_empty_os_feature_is_required_and_no_node_has_it() {
        for features in [json!([""]), json!(["win32k", ""])] {
            let platforms = index(json!({"schemaVersion": 2, "manifests": [
                {"digest": "sha256:a", "size": 1, "platform": {"os": "linux", "architecture": "amd64", "os.features": features}}
            ]}));
            assert_eq!(
                platforms.len(),
                1,
                "{features}: the entry is kept and shown"
            );
            for node in ["linux/amd64", "linux(+win32k)/amd64"] {
                let node = Platform::parse(node).unwrap();
                assert!(
                    !platforms[0].satisfies(&node),
                    "{features} on {}",
                    node.node_name()
                );
            }
        }
        let config = parse_config(&body(
            json!({"architecture": "amd64", "os": "linux", "os.features": [""]}),
        ))
        .unwrap();
        assert!(
            !config.satisfies(&Platform::parse("linux/amd64").unwrap()),
            "{config}"
        );
    }

    /// Before: an index entry without `platform` (optional in the OCI image spec) was dropped,
    /// so an index of such entries provided "none" and every pod was denied, while containerd
    /// reads each such entry's config to learn its platform. archgate does not fetch entry
    /// configs: such an index is unreadable (--on-registry-error), with a message naming the
    /// entry. Attestation entries stay ignored, with or without a platform.
    #[test]
    fn an_index_entry_without_a_platform_makes_the_index_unreadable() {
        let digest = format!("sha256:{}", "b".repeat(64));
        let read = parse_manifest(&body(json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": "sha256:a", "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 2}
            ]
        })));
        let Err(error) = read else { panic!("{read:?}") };
        let text = error.to_string();
        assert!(
            text.contains(&digest) && text.contains("states no platform"),
            "{text}"
        );
        let attested = index(json!({
            "schemaVersion": 2,
            "manifests": [
                {"digest": "sha256:a", "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
                {"digest": "sha256:c", "size": 1, "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}
            ]
        }));
        assert_eq!(attested, [Platform::new("linux", "amd64", None)]);
    }

    /// A mistyped value is not echoed whole: the message stays short and says where.
    #[test]
    fn parse_errors_do_not_quote_whole_values() {
        let huge = "x".repeat(100_000);
        let errors = [
            parse_manifest(&body(json!({"schemaVersion": 2, "manifests": huge}))).unwrap_err(),
            parse_config(&body(json!({"architecture": "amd64", "os.features": huge}))).unwrap_err(),
        ];
        for error in errors.map(|e| e.to_string()) {
            assert!(error.len() < 400, "{} bytes: {error:.300}", error.len());
            assert!(error.contains("line 1 column"), "{error:.300}");
        }
    }

    #[test]
    fn bad_documents_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"mediaType\": \"text/html\"}",
            b"{}",
            b"null",
            b"{\"manifests\": 3}",
        ] {
            assert!(
                parse_manifest(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
