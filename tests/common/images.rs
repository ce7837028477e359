//! Fixture images pushed over the raw distribution API, in every shape archgate must read: OCI
//! indexes (with buildkit-style attestation entries), Docker manifest lists, and single-platform
//! Docker v2 or OCI manifests whose platform lives only in the config blob.
//!
//! Push order matters: distribution refuses a manifest whose blobs or child manifests it does not
//! have, so layers and configs go first, then child manifests by digest, then the index by tag.
//! Every digest is computed here from the exact bytes sent, so tests can compare it with what the
//! registry (and archgate) report.
//!
//! Every request goes through [`Registry::send`], which on a token-auth registry answers the
//! registry's Bearer challenge with a push token from its token server.

use std::fmt;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use super::registry::Registry;
use super::sha256_digest;

/// The media types the harness writes, and the `Accept` value that asks for any of them.
pub mod media_types {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const IN_TOTO: &str = "application/vnd.in-toto+json";
    /// distribution 2.8 answers 404 for an OCI index unless the client accepts it, so every
    /// manifest GET in tests should send this.
    pub const ACCEPT_ANY_MANIFEST: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.v2+json";
}

use media_types::*;

/// Annotation buildkit puts on attestation entries of an index.
pub const ATTESTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// Annotation pointing from an attestation entry to the image manifest it describes.
pub const ATTESTATION_REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

/// One platform of a fixture image, as an index entry and an image config describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    /// Windows build, e.g. `10.0.17763.5329` (the `os.version` field).
    pub os_version: Option<String>,
    /// Required OS features (the `os.features` field), e.g. `win32k`.
    pub os_features: Vec<String>,
}

impl PlatformSpec {
    pub fn new(os: &str, architecture: &str) -> Self {
        Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
            os_version: None,
            os_features: Vec::new(),
        }
    }

    pub fn variant(mut self, variant: &str) -> Self {
        self.variant = Some(variant.to_owned());
        self
    }

    pub fn os_version(mut self, os_version: &str) -> Self {
        self.os_version = Some(os_version.to_owned());
        self
    }

    pub fn os_features(mut self, features: &[&str]) -> Self {
        self.os_features = features.iter().map(|f| f.to_string()).collect();
        self
    }

    /// The `platform` object of an index entry; config blobs use the same field names. An empty
    /// `os` is left out, as some tools write index entries.
    fn to_json(&self) -> Value {
        let mut platform = json!({ "architecture": self.architecture });
        if !self.os.is_empty() {
            platform["os"] = json!(self.os);
        }
        if !self.os_features.is_empty() {
            platform["os.features"] = json!(self.os_features);
        }
        if let Some(variant) = &self.variant {
            platform["variant"] = json!(variant);
        }
        if let Some(os_version) = &self.os_version {
            platform["os.version"] = json!(os_version);
        }
        platform
    }
}

/// `(os, architecture, variant)`, the short form used by [`push_image`].
impl From<(&str, &str, Option<&str>)> for PlatformSpec {
    fn from((os, architecture, variant): (&str, &str, Option<&str>)) -> Self {
        let platform = PlatformSpec::new(os, architecture);
        match variant {
            Some(v) => platform.variant(v),
            None => platform,
        }
    }
}

/// `os/architecture[/variant]`, the form users write.
impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

/// The shape of the manifest a tag points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// OCI image index over OCI image manifests.
    OciIndex,
    /// Docker manifest list v2 over Docker v2 manifests.
    DockerList,
    /// A single OCI image manifest; the platform is only in its config.
    OciManifest,
    /// A single Docker v2 manifest; the platform is only in its config.
    DockerManifest,
}

impl ImageFormat {
    fn top_media_type(self) -> &'static str {
        match self {
            ImageFormat::OciIndex => OCI_INDEX,
            ImageFormat::DockerList => DOCKER_LIST,
            ImageFormat::OciManifest => OCI_MANIFEST,
            ImageFormat::DockerManifest => DOCKER_MANIFEST,
        }
    }

    /// Docker-flavoured formats use Docker media types all the way down.
    fn is_docker(self) -> bool {
        matches!(self, ImageFormat::DockerList | ImageFormat::DockerManifest)
    }

    fn manifest_media_type(self) -> &'static str {
        if self.is_docker() {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        }
    }

    fn config_media_type(self) -> &'static str {
        if self.is_docker() {
            DOCKER_CONFIG
        } else {
            OCI_CONFIG
        }
    }

    fn layer_media_type(self) -> &'static str {
        if self.is_docker() {
            DOCKER_LAYER_GZIP
        } else {
            OCI_LAYER_GZIP
        }
    }

    fn is_multi_platform(self) -> bool {
        matches!(self, ImageFormat::OciIndex | ImageFormat::DockerList)
    }
}

/// What to push: a repository and tag, a format, the platforms, and options.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    repository: String,
    tag: String,
    format: ImageFormat,
    platforms: Vec<PlatformSpec>,
    attestations: bool,
    revision: String,
}

impl ImageSpec {
    /// An OCI index with one OCI manifest per platform.
    pub fn oci_index<P: Into<PlatformSpec>>(
        repository: &str,
        tag: &str,
        platforms: impl IntoIterator<Item = P>,
    ) -> Self {
        Self::new(repository, tag, ImageFormat::OciIndex, platforms)
    }

    /// A Docker manifest list with one Docker v2 manifest per platform.
    pub fn docker_list<P: Into<PlatformSpec>>(
        repository: &str,
        tag: &str,
        platforms: impl IntoIterator<Item = P>,
    ) -> Self {
        Self::new(repository, tag, ImageFormat::DockerList, platforms)
    }

    /// A single OCI manifest; `platform` is written only into its config blob.
    pub fn oci_manifest(repository: &str, tag: &str, platform: impl Into<PlatformSpec>) -> Self {
        Self::new(repository, tag, ImageFormat::OciManifest, [platform])
    }

    /// A single Docker v2 manifest; `platform` is written only into its config blob.
    pub fn docker_manifest(repository: &str, tag: &str, platform: impl Into<PlatformSpec>) -> Self {
        Self::new(repository, tag, ImageFormat::DockerManifest, [platform])
    }

    fn new<P: Into<PlatformSpec>>(
        repository: &str,
        tag: &str,
        format: ImageFormat,
        platforms: impl IntoIterator<Item = P>,
    ) -> Self {
        let platforms: Vec<PlatformSpec> = platforms.into_iter().map(Into::into).collect();
        assert!(
            !platforms.is_empty(),
            "an image needs at least one platform"
        );
        Self {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            format,
            platforms,
            attestations: false,
            revision: "1".to_owned(),
        }
    }

    /// Adds, as buildkit does, one attestation manifest per platform to the index: an entry with
    /// platform `unknown/unknown` and `vnd.docker.reference.type: attestation-manifest`. A checker
    /// that counts those as platforms is wrong, which is what these entries are here to catch.
    pub fn with_attestations(mut self) -> Self {
        assert_eq!(
            self.format,
            ImageFormat::OciIndex,
            "buildkit attestations only appear in OCI indexes"
        );
        self.attestations = true;
        self
    }

    /// Changes every config and layer, hence every digest: the same tag "rebuilt", for tests
    /// where a tag moves to new content.
    pub fn with_revision(mut self, revision: &str) -> Self {
        self.revision = revision.to_owned();
        self
    }

    /// Pushes blobs, child manifests and finally the tag; panics with the registry's answer if
    /// any step is refused.
    pub async fn push(&self, registry: &Registry) -> PushedImage {
        let mut manifests = Vec::new();
        for platform in &self.platforms {
            manifests.push(self.push_platform(registry, platform).await);
        }
        let mut attestations = Vec::new();
        if self.attestations {
            for subject in &manifests {
                attestations.push(self.push_attestation(registry, subject).await);
            }
        }
        let (digest, media_type) = if self.format.is_multi_platform() {
            let index = self.index_json(&manifests, &attestations);
            let media_type = self.format.top_media_type();
            let repository = &self.repository;
            let digest = push_manifest(registry, repository, &self.tag, media_type, &index).await;
            (digest, media_type)
        } else {
            // The single manifest was pushed under the tag already.
            (manifests[0].digest.clone(), manifests[0].media_type)
        };
        PushedImage {
            host: registry.host().to_owned(),
            repository: self.repository.clone(),
            tag: self.tag.clone(),
            digest,
            media_type,
            manifests,
            attestations,
        }
    }

    /// Pushes one platform's layer, config and manifest (by digest for a child of an index, by
    /// tag for a single-manifest image).
    async fn push_platform(&self, registry: &Registry, platform: &PlatformSpec) -> PushedManifest {
        let content = format!(
            "{}:{} {platform} r{}\n",
            self.repository, self.tag, self.revision
        );
        let tar = tar_with_file("etc/archgate-fixture", content.as_bytes());
        let layer = Blob::new(self.format.layer_media_type(), gzip_stored(&tar));
        let config = Blob::new(
            self.format.config_media_type(),
            self.config_json(platform, &sha256_digest(&tar)),
        );
        let media_type = self.format.manifest_media_type();
        let manifest = to_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        }));
        push_blob(registry, &self.repository, &layer.bytes).await;
        push_blob(registry, &self.repository, &config.bytes).await;
        let reference = if self.format.is_multi_platform() {
            sha256_digest(&manifest)
        } else {
            self.tag.clone()
        };
        let repository = &self.repository;
        PushedManifest {
            digest: push_manifest(registry, repository, &reference, media_type, &manifest).await,
            media_type,
            size: manifest.len(),
            platform: platform.clone(),
            config_digest: config.digest(),
        }
    }

    /// Pushes a buildkit-shaped attestation manifest for `subject`: an OCI manifest whose config
    /// says `unknown/unknown` and whose layer is an in-toto statement.
    async fn push_attestation(
        &self,
        registry: &Registry,
        subject: &PushedManifest,
    ) -> PushedManifest {
        let subject_hex = subject.digest.trim_start_matches("sha256:");
        let statement = Blob::new(
            IN_TOTO,
            to_bytes(&json!({
                "_type": "https://in-toto.io/Statement/v0.1",
                "predicateType": "https://spdx.dev/Document",
                "subject": [{
                    "name": format!("pkg:docker/{}@{}", self.repository, self.tag),
                    "digest": { "sha256": subject_hex },
                }],
                "predicate": {},
            })),
        );
        let config = Blob::new(
            OCI_CONFIG,
            to_bytes(&json!({
                "architecture": "unknown",
                "os": "unknown",
                "config": {},
                "rootfs": { "type": "layers", "diff_ids": [statement.digest()] },
            })),
        );
        let mut layer = statement.descriptor();
        layer["annotations"] = json!({ "in-toto.io/predicate-type": "https://spdx.dev/Document" });
        let manifest = to_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer],
        }));
        push_blob(registry, &self.repository, &statement.bytes).await;
        push_blob(registry, &self.repository, &config.bytes).await;
        let digest = sha256_digest(&manifest);
        push_manifest(registry, &self.repository, &digest, OCI_MANIFEST, &manifest).await;
        PushedManifest {
            digest,
            media_type: OCI_MANIFEST,
            size: manifest.len(),
            platform: PlatformSpec::new("unknown", "unknown"),
            config_digest: config.digest(),
        }
    }

    /// The image config: platform fields, a label naming the fixture (so configs, and therefore
    /// digests, differ per image, platform and revision), and rootfs diff_ids.
    fn config_json(&self, platform: &PlatformSpec, diff_id: &str) -> Vec<u8> {
        let mut config = platform.to_json();
        config["created"] = json!("2024-01-01T00:00:00Z");
        config["config"] = json!({
            "Labels": {
                "org.opencontainers.image.title": format!("{}:{}", self.repository, self.tag),
                "org.opencontainers.image.revision": self.revision,
            },
        });
        config["rootfs"] = json!({ "type": "layers", "diff_ids": [diff_id] });
        config["history"] =
            json!([{ "created": "2024-01-01T00:00:00Z", "created_by": "archgate test harness" }]);
        to_bytes(&config)
    }

    fn index_json(&self, manifests: &[PushedManifest], attestations: &[PushedManifest]) -> Vec<u8> {
        let mut entries: Vec<Value> = manifests
            .iter()
            .map(|m| {
                json!({
                    "mediaType": m.media_type,
                    "digest": m.digest,
                    "size": m.size,
                    "platform": m.platform.to_json(),
                })
            })
            .collect();
        for (attestation, subject) in attestations.iter().zip(manifests) {
            entries.push(json!({
                "mediaType": attestation.media_type,
                "digest": attestation.digest,
                "size": attestation.size,
                "platform": attestation.platform.to_json(),
                "annotations": {
                    ATTESTATION_REFERENCE_DIGEST: subject.digest,
                    ATTESTATION_REFERENCE_TYPE: "attestation-manifest",
                },
            }));
        }
        to_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": self.format.top_media_type(),
            "manifests": entries,
        }))
    }
}

/// A manifest the harness pushed, with the digest it computed from the bytes it sent.
#[derive(Clone, Debug)]
pub struct PushedManifest {
    pub digest: String,
    pub media_type: &'static str,
    pub size: usize,
    /// The platform written into the index entry and the config (`unknown/unknown` for
    /// attestations).
    pub platform: PlatformSpec,
    pub config_digest: String,
}

/// A pushed image: its tag, top-level digest, and per-platform manifests.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// `127.0.0.1:PORT` of the registry it was pushed to.
    pub host: String,
    pub repository: String,
    pub tag: String,
    /// Digest of the manifest the tag points at (index, list, or single manifest).
    pub digest: String,
    /// Media type of that manifest.
    pub media_type: &'static str,
    /// One per platform, in the order given. For a single-manifest image this is the image
    /// itself (same digest), with the platform its config declares.
    pub manifests: Vec<PushedManifest>,
    /// Attestation manifests, one per platform, when requested.
    pub attestations: Vec<PushedManifest>,
}

impl PushedImage {
    /// `host/repository:tag`, the reference as a pod spec would write it.
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.host, self.repository, self.tag)
    }

    /// `host/repository@sha256:...`, the pinned reference.
    pub fn digest_reference(&self) -> String {
        format!("{}/{}@{}", self.host, self.repository, self.digest)
    }

    /// The real platforms, as `os/arch[/variant]` (attestations excluded).
    pub fn platforms(&self) -> Vec<String> {
        self.manifests
            .iter()
            .map(|m| m.platform.to_string())
            .collect()
    }

    /// The manifest for `platform` written as `os/arch[/variant]`; panics if there is none.
    #[track_caller]
    pub fn manifest_for(&self, platform: &str) -> &PushedManifest {
        self.manifests
            .iter()
            .find(|m| m.platform.to_string() == platform)
            .unwrap_or_else(|| {
                panic!(
                    "{} has no {platform}; it has {:?}",
                    self.reference(),
                    self.platforms()
                )
            })
    }
}

/// Pushes an OCI index (no attestations) for `(os, architecture, variant)` platforms.
pub async fn push_image(
    registry: &Registry,
    repository: &str,
    tag: &str,
    platforms: &[(&str, &str, Option<&str>)],
) -> PushedImage {
    ImageSpec::oci_index(repository, tag, platforms.iter().copied())
        .push(registry)
        .await
}

/// The standard fixture set, one image per shape archgate must handle.
#[derive(Clone, Debug)]
pub struct Fixtures {
    /// `fixtures/multi:latest`: OCI index, linux/amd64 + linux/arm64/v8, with attestations.
    pub multi: PushedImage,
    /// `cerebral/ai-base:cuda`: OCI index with only linux/arm64/v8 (+ attestation), the image
    /// built on an Apple Silicon laptop that cannot run on amd64 nodes.
    pub ai_base_cuda: PushedImage,
    /// `fixtures/dockerlist:v1`: Docker manifest list, linux/amd64 + linux/arm/v7.
    pub docker_list: PushedImage,
    /// `fixtures/single-amd64:v1`: single Docker v2 manifest, config says linux/amd64.
    pub single_amd64: PushedImage,
    /// `fixtures/single-arm64:v1`: single OCI manifest, config says linux/arm64/v8.
    pub single_arm64: PushedImage,
    /// `fixtures/windows:ltsc2019`: OCI index, windows/amd64 with os.version 10.0.17763.5329.
    pub windows: PushedImage,
}

impl Fixtures {
    pub fn all(&self) -> [&PushedImage; 6] {
        [
            &self.multi,
            &self.ai_base_cuda,
            &self.docker_list,
            &self.single_amd64,
            &self.single_arm64,
            &self.windows,
        ]
    }
}

/// Pushes [`Fixtures`] to `registry` (plain or TLS with auth).
pub async fn push_standard_fixtures(registry: &Registry) -> Fixtures {
    let amd64 = PlatformSpec::new("linux", "amd64");
    let arm64 = PlatformSpec::new("linux", "arm64").variant("v8");
    let arm_v7 = PlatformSpec::new("linux", "arm").variant("v7");
    let windows = PlatformSpec::new("windows", "amd64").os_version("10.0.17763.5329");
    Fixtures {
        multi: ImageSpec::oci_index("fixtures/multi", "latest", [amd64.clone(), arm64.clone()])
            .with_attestations()
            .push(registry)
            .await,
        ai_base_cuda: ImageSpec::oci_index("cerebral/ai-base", "cuda", [arm64.clone()])
            .with_attestations()
            .push(registry)
            .await,
        docker_list: ImageSpec::docker_list("fixtures/dockerlist", "v1", [amd64.clone(), arm_v7])
            .push(registry)
            .await,
        single_amd64: ImageSpec::docker_manifest("fixtures/single-amd64", "v1", amd64)
            .push(registry)
            .await,
        single_arm64: ImageSpec::oci_manifest("fixtures/single-arm64", "v1", arm64)
            .push(registry)
            .await,
        windows: ImageSpec::oci_index("fixtures/windows", "ltsc2019", [windows])
            .push(registry)
            .await,
    }
}

/// Bytes to push plus the media type its descriptor carries.
struct Blob {
    media_type: &'static str,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Self {
        Self { media_type, bytes }
    }

    fn digest(&self) -> String {
        sha256_digest(&self.bytes)
    }

    fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest(), "size": self.bytes.len() })
    }
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialize JSON")
}

/// Uploads a blob in two steps (POST for an upload session, PUT with `?digest=`), the flow every
/// registry supports.
async fn push_blob(registry: &Registry, repository: &str, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let start = registry
        .send(registry.request(Method::POST, &format!("/v2/{repository}/blobs/uploads/")))
        .await
        .expect("POST blob upload");
    let location = expect_status(start, StatusCode::ACCEPTED, "start blob upload")
        .await
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("blob upload answer has a Location")
        .to_owned();
    let url = upload_url(registry, &location, &digest);
    let put = registry.authorize(registry.client().put(url));
    let put = registry
        .send(
            put.header(header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes.to_vec()),
        )
        .await
        .expect("PUT blob");
    expect_status(put, StatusCode::CREATED, "finish blob upload").await;
    digest
}

/// The upload `Location` may be absolute or relative and already carries a query (`_state`).
fn upload_url(registry: &Registry, location: &str, digest: &str) -> String {
    let absolute = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        registry.url(location)
    };
    let separator = if absolute.contains('?') { '&' } else { '?' };
    format!("{absolute}{separator}digest={digest}")
}

/// PUTs a manifest under `reference` (tag or digest) and checks the registry computed the same
/// digest as the harness.
async fn push_manifest(
    registry: &Registry,
    repository: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> String {
    let digest = sha256_digest(bytes);
    let path = format!("/v2/{repository}/manifests/{reference}");
    let request = registry
        .request(Method::PUT, &path)
        .header(header::CONTENT_TYPE, media_type)
        .body(bytes.to_vec());
    let response = registry.send(request).await.expect("PUT manifest");
    let what = format!("push manifest {repository}:{reference}");
    let response = expect_status(response, StatusCode::CREATED, &what).await;
    let answered = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok());
    assert_eq!(
        answered,
        Some(digest.as_str()),
        "{what}: registry digest differs"
    );
    digest
}

/// Returns the response if it has `expected` status; otherwise panics with the registry's error
/// body, which names the missing blob or invalid field.
async fn expect_status(
    response: reqwest::Response,
    expected: StatusCode,
    what: &str,
) -> reqwest::Response {
    if response.status() == expected {
        return response;
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    panic!("{what}: expected {expected}, registry answered {status}: {body}");
}

/// A ustar archive holding one regular file; real enough for `tar -t` and for diff_ids.
pub fn tar_with_file(name: &str, contents: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 512;
    assert!(
        name.len() < 100,
        "tar name too long for a plain ustar header"
    );
    let mut header = [0u8; BLOCK];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(format!("{:011o}\0", contents.len()).as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field read as spaces.
    header[148..156].copy_from_slice(b"        ");
    let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());

    let mut tar = header.to_vec();
    tar.extend_from_slice(contents);
    tar.resize(tar.len().next_multiple_of(BLOCK), 0);
    // End of archive: two zero blocks.
    tar.resize(tar.len() + 2 * BLOCK, 0);
    tar
}

/// gzip with one stored (uncompressed) deflate block: valid gzip without a compression crate.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(data.len()).expect("a stored deflate block holds at most 65535 bytes");
    // Magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    // Final block, type "stored", then LEN and its one's complement.
    out.push(1);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE), bit by bit: layers are a few KiB, so speed does not matter.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Pushes a Tekton bundle (one gzipped-tar layer per resource, annotated with kind and name as
/// Tekton's bundle contract requires) and returns the manifest digest.
pub async fn push_tekton_bundle(
    registry: &Registry,
    repository: &str,
    tag: &str,
    resources: &[(&str, &str, &str)],
) -> String {
    let config = b"{}".to_vec();
    let config_digest = push_blob(registry, repository, &config).await;
    let mut layers = Vec::new();
    for (kind, name, yaml) in resources {
        let layer = gzip_stored(&tar_with_file(
            &format!("{kind}-{name}.yaml"),
            yaml.as_bytes(),
        ));
        let digest = push_blob(registry, repository, &layer).await;
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": layer.len(),
            "annotations": {
                "dev.tekton.image.apiVersion": "tekton.dev/v1",
                "dev.tekton.image.kind": kind.to_ascii_lowercase(),
                "dev.tekton.image.name": name,
            }
        }));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.cdf.tekton.catalog.v1beta1+yaml", "digest": config_digest, "size": config.len()},
        "layers": layers,
    });
    push_manifest(
        registry,
        repository,
        tag,
        media_types::OCI_MANIFEST,
        &to_bytes(&manifest),
    )
    .await
}
