//! Reading platforms out of registry documents: image indexes, manifest lists, image manifests and
//! their config blobs.
//!
//! These are small serde views rather than oci-client's types on purpose: oci-client's
//! `ConfigFile` drops `variant`, `os.version` and `os.features`, and its `Platform` maps
//! architectures into an enum; archgate must report exactly what the registry says, and
//! [`crate::platform`] matches on every one of those fields as containerd does.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::platform::Platform;

/// Media types archgate asks for, most specific first.
pub const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A config blob larger than this is not an image config; refuse to buffer it.
pub const MAX_CONFIG_BYTES: i64 = 4 << 20;

/// `os.features` kept per platform, and bytes per `os.version` or feature. Real images list one
/// or two features (`win32k`); an entry past either bound is kept as needing [`UNREADABLE`].
const MAX_OS_FEATURES: usize = 16;
const MAX_OS_FIELD_BYTES: usize = 64;
/// Stands for an `os.version` or `os.features` archgate would not read: no node has it.
const UNREADABLE: &str = "unreadable";
/// Index entries read, at most. Real indexes list a few dozen (platforms plus attestations);
/// an index listing more is refused as unreadable (a registry error for the policy).
pub const MAX_INDEX_ENTRIES: usize = 1000;

/// Buildx and other tools mark attestation and signature entries in an index this way.
const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";

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
    #[error("the index lists {0} entries, more than the {MAX_INDEX_ENTRIES} archgate reads")]
    TooManyEntries(usize),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<RawEntry>>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    /// schema 1 only
    #[serde(default)]
    architecture: Option<String>,
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(default)]
    platform: Option<RawPlatform>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
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
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(rename = "os.version", default)]
    os_version: Option<String>,
    #[serde(rename = "os.features", default)]
    os_features: Option<Vec<String>>,
}

impl RawPlatform {
    /// The platform, or `None` without an architecture (no node can match it). An empty `os` is
    /// kept: containerd reads it as the node's own OS (`normalizeOS`).
    fn into_platform(self) -> Option<Platform> {
        if self.architecture.is_empty() {
            return None;
        }
        let mut p = Platform::new(&self.os, &self.architecture, self.variant.as_deref());
        p.os_version = self.os_version.filter(|v| !v.is_empty()).map(|v| {
            // Every review compares (and copies) this; a real build is `10.0.20348.2227`.
            if v.len() > MAX_OS_FIELD_BYTES {
                UNREADABLE.to_string()
            } else {
                v
            }
        });
        let features: Vec<String> = self
            .os_features
            .unwrap_or_default()
            .into_iter()
            .filter(|f| !f.is_empty())
            .collect();
        // Past the bound the entry needs a feature no node offers: never a silent match.
        let too_many = features.len() > MAX_OS_FEATURES
            || features.iter().any(|f| f.len() > MAX_OS_FIELD_BYTES);
        p.os_features = if too_many {
            vec![UNREADABLE.to_string()]
        } else {
            features
        };
        Some(p)
    }
}

/// Parses a manifest body. Index entries that are attestations are left out.
pub fn parse_manifest(body: &[u8]) -> Result<Document, ManifestError> {
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    if let Some(media_type) = raw.media_type.as_deref()
        && !ACCEPT.contains(&media_type)
        && !media_type.starts_with("application/vnd.docker.distribution.manifest.v1")
    {
        return Err(ManifestError::MediaType(media_type.to_string()));
    }
    if let Some(entries) = raw.manifests {
        if entries.len() > MAX_INDEX_ENTRIES {
            return Err(ManifestError::TooManyEntries(entries.len()));
        }
        let mut platforms: Vec<Platform> = entries
            .into_iter()
            .filter(|e| {
                !e.annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(REFERENCE_TYPE_ANNOTATION))
            })
            .filter_map(|e| e.platform.and_then(RawPlatform::into_platform))
            .filter(|p| !p.is_unknown())
            .collect();
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
        && let Some(arch) = raw.architecture.filter(|a| !a.is_empty())
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
    let raw: RawPlatform =
        serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    raw.into_platform().ok_or(ManifestError::ConfigPlatform)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn index_skips_attestations_and_keeps_spelling() {
        let doc = parse_manifest(&body(json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": "sha256:a", "size": 1, "mediaType": "x", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"digest": "sha256:b", "size": 1, "mediaType": "x", "platform": {"os": "unknown", "architecture": "unknown"}},
                {"digest": "sha256:c", "size": 1, "mediaType": "x", "platform": {"os": "linux", "architecture": "amd64"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
                {"digest": "sha256:d", "size": 1, "mediaType": "x", "platform": {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.5329"}}
            ]
        })))
        .unwrap();
        let Document::Index(platforms) = doc else {
            panic!("{doc:?}")
        };
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
        let doc = parse_manifest(&body(json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": "sha256:a", "size": 1, "mediaType": "x", "platform": {"architecture": "amd64"}},
                {"digest": "sha256:b", "size": 1, "mediaType": "x", "platform": {"os": "windows", "architecture": "amd64",
                 "os.version": "10.0.20348.2227", "os.features": ["win32k"]}},
                {"digest": "sha256:c", "size": 1, "mediaType": "x", "platform": {"os": "linux"}}
            ]
        })))
        .unwrap();
        let Document::Index(platforms) = doc else {
            panic!("{doc:?}")
        };
        let shown: Vec<String> = platforms.iter().map(|p| p.node_name()).collect();
        assert_eq!(shown, ["*/amd64", "windows(10.0.20348.2227+win32k)/amd64"]);
        assert!(platforms[0].satisfies(&Platform::parse("linux/amd64").unwrap()));
    }

    #[test]
    fn oversized_os_fields_never_match() {
        let many: Vec<String> = (0..=MAX_OS_FEATURES).map(|i| format!("f{i}")).collect();
        let long = "9".repeat(MAX_OS_FIELD_BYTES + 1);
        for platform in [
            json!({"os": "linux", "architecture": "amd64", "os.features": many}),
            json!({"os": "linux", "architecture": "amd64", "os.features": [long]}),
            json!({"os": "windows", "architecture": "amd64", "os.version": format!("10.0.17763.{long}")}),
        ] {
            let p = parse_config(&body(platform)).unwrap();
            assert!(p.to_string().len() < 80, "{p}");
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
            Err(ManifestError::TooManyEntries(MAX_INDEX_ENTRIES + 1))
        );
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
