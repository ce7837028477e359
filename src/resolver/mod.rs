//! Resolution: which platforms an image provides, asked of its registry once and then cached.
//!
//! Knows registries and caches, nothing of Kubernetes objects. Two moka caches make the hot path a
//! pair of hash lookups:
//! - tag → digest, for a short TTL (a tag moves when someone pushes); not-found kept briefly;
//! - digest → platforms, size-bounded and never stale (a digest names immutable content).
//!
//! moka's `try_get_with` runs one initialiser per key, so concurrent reviews of one cold image share
//! a single registry round trip; errors are returned to every waiter and not cached.

pub mod credentials;
pub mod manifest;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

pub use credentials::{Credentials, CredentialsError, Identity};
use manifest::{Document, ManifestError};

use crate::metrics::{CacheResult, Metrics, StatusClass};
use crate::platform::Platform;
use crate::reference::ImageRef;

/// How to reach registries and how long answers stay good.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Hosts (`HOST[:PORT]`, as in image references) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Extra CA certificates (PEM) trusted for registry TLS.
    pub ca_pem: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub tag_ttl: Duration,
    pub not_found_ttl: Duration,
    /// Upper bound on cached digests (each entry is a few hundred bytes).
    pub max_images: u64,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            ca_pem: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(6),
            tag_ttl: Duration::from_secs(60),
            not_found_ttl: Duration::from_secs(10),
            max_images: 100_000,
        }
    }
}

/// What a registry says an image provides.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub digest: String,
    pub platforms: Arc<[Platform]>,
}

/// Why an image's platforms could not be learned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("not found in registry {registry}")]
    NotFound { registry: String },
    #[error("registry {registry} refused access: check the docker config or imagePullSecrets")]
    Unauthorized { registry: String },
    #[error("registry {registry} is unreachable: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("registry {registry} did not answer in time")]
    Timeout { registry: String },
    #[error("registry {registry} served an unreadable manifest: {reason}")]
    InvalidManifest { registry: String, reason: String },
}

impl ResolveError {
    pub fn registry(&self) -> &str {
        match self {
            Self::NotFound { registry }
            | Self::Unauthorized { registry }
            | Self::Unreachable { registry, .. }
            | Self::Timeout { registry }
            | Self::InvalidManifest { registry, .. } => registry,
        }
    }

    /// One short clause for a warning line (the full reason goes to the log).
    pub fn summary(&self) -> String {
        match self {
            Self::Unreachable { registry, .. } => format!("registry {registry} is unreachable"),
            Self::InvalidManifest { registry, .. } => {
                format!("registry {registry} served an unreadable manifest")
            }
            other => other.to_string(),
        }
    }

    /// The image does not exist: a finding about the image, not trouble with the registry.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--registry-ca: {0}")]
    Ca(String),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// A tag's digest, or the knowledge that the tag does not exist, and when we learned it.
#[derive(Debug, Clone)]
struct TagEntry {
    digest: Option<String>,
    checked: Instant,
}

/// A digest's platforms, or the knowledge that it does not exist.
#[derive(Debug, Clone)]
struct DigestEntry(Option<Arc<[Platform]>>);

/// Cache key: who asked (credential identity) and the canonical reference.
type Key = (Identity, String);

struct TagExpiry {
    found: Duration,
    missing: Duration,
}

impl Expiry<Key, TagEntry> for TagExpiry {
    fn expire_after_create(&self, _: &Key, value: &TagEntry, _: Instant) -> Option<Duration> {
        Some(if value.digest.is_some() {
            self.found
        } else {
            self.missing
        })
    }
}

struct DigestExpiry {
    missing: Duration,
}

impl Expiry<Key, DigestEntry> for DigestExpiry {
    fn expire_after_create(&self, _: &Key, value: &DigestEntry, _: Instant) -> Option<Duration> {
        value.0.is_none().then_some(self.missing)
    }
}

/// Resolves images to platforms; cheap to share (`Arc`) across requests.
pub struct Resolver {
    options: RegistryOptions,
    ca: Vec<Certificate>,
    /// oci-client binds the first credentials it sees to a registry for the client's life, so
    /// each credential identity gets a client of its own.
    clients: std::sync::RwLock<std::collections::HashMap<Identity, Arc<Client>>>,
    tags: Cache<Key, TagEntry>,
    digests: Cache<Key, DigestEntry>,
    metrics: Arc<Metrics>,
}

impl Resolver {
    pub fn new(options: RegistryOptions, metrics: Arc<Metrics>) -> Result<Self, SetupError> {
        let ca = match &options.ca_pem {
            Some(pem) => {
                if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(SetupError::Ca("the file holds no PEM certificate".into()));
                }
                vec![Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                }]
            }
            None => Vec::new(),
        };
        let tags = Cache::builder()
            .max_capacity(options.max_images)
            .expire_after(TagExpiry {
                found: options.tag_ttl,
                missing: options.not_found_ttl,
            })
            .build();
        let digests = Cache::builder()
            .max_capacity(options.max_images)
            .expire_after(DigestExpiry {
                missing: options.not_found_ttl,
            })
            .build();
        let clients = Default::default();
        let resolver = Self {
            options,
            ca,
            clients,
            tags,
            digests,
            metrics,
        };
        // Build the anonymous client now so a bad CA fails at start, not on the first review.
        resolver
            .client(0)
            .map_err(|e| SetupError::Ca(e.to_string()))?;
        Ok(resolver)
    }

    fn client(&self, identity: Identity) -> Result<Arc<Client>, OciDistributionError> {
        if let Some(client) = self
            .clients
            .read()
            .ok()
            .and_then(|m| m.get(&identity).cloned())
        {
            return Ok(client);
        }
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.options.insecure.clone()),
            extra_root_certificates: self.ca.clone(),
            // Never let the library pick "the" platform out of an index: we read them all.
            platform_resolver: None,
            connect_timeout: Some(self.options.connect_timeout),
            read_timeout: Some(self.options.request_timeout),
            user_agent: concat!("archgate/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = Arc::new(Client::try_from(config)?);
        // Identities are bounded by the docker config and the pull secrets in the cluster.
        if let Ok(mut clients) = self.clients.write() {
            clients.insert(identity, client.clone());
        }
        Ok(client)
    }

    /// The registry client and credentials archgate would use for `image`, for callers that
    /// fetch other content from registries (Tekton bundles). Same client per identity as lookups.
    pub fn client_for(
        &self,
        image: &ImageRef,
        credentials: &Credentials,
    ) -> Result<(Arc<Client>, RegistryAuth), ResolveError> {
        let (auth, identity) = credentials.for_registry(image.registry());
        let client = self.client(identity).map_err(|e| classify(image, e))?;
        Ok((client, auth))
    }

    /// The platforms `image` provides, as seen with `credentials`.
    pub async fn resolve(
        &self,
        image: &ImageRef,
        credentials: &Credentials,
    ) -> Result<Resolution, ResolveError> {
        let (auth, identity) = credentials.for_registry(image.registry());
        let cold = AtomicBool::new(false);
        let result = self.lookup(image, &auth, identity, &cold).await;
        let cache = if cold.load(Ordering::Relaxed) {
            CacheResult::Miss
        } else {
            CacheResult::Hit
        };
        self.metrics.observe_lookup(cache);
        result
    }

    /// Forgets what the tag pointed to and asks again: used before denying on a cached answer,
    /// because the tag may just have been rebuilt for more platforms.
    pub async fn refresh(
        &self,
        image: &ImageRef,
        credentials: &Credentials,
    ) -> Result<Resolution, ResolveError> {
        let (_, identity) = credentials.for_registry(image.registry());
        self.tags.invalidate(&(identity, image.canonical())).await;
        self.resolve(image, credentials).await
    }

    /// How long ago the tag's answer (digest or not-found) came from the registry; `None` when
    /// not cached or pinned by digest.
    pub async fn tag_age(&self, image: &ImageRef, credentials: &Credentials) -> Option<Duration> {
        if image.digest().is_some() {
            return None;
        }
        let (_, identity) = credentials.for_registry(image.registry());
        let entry = self.tags.get(&(identity, image.canonical())).await?;
        Some(entry.checked.elapsed())
    }

    async fn lookup(
        &self,
        image: &ImageRef,
        auth: &RegistryAuth,
        identity: Identity,
        cold: &AtomicBool,
    ) -> Result<Resolution, ResolveError> {
        let digest = match image.digest() {
            Some(digest) => digest.to_string(),
            None => {
                let entry = self
                    .tags
                    .try_get_with((identity, image.canonical()), async {
                        cold.store(true, Ordering::Relaxed);
                        self.head(image, auth, identity).await
                    })
                    .await
                    .map_err(|e| (*e).clone())?;
                let Some(digest) = entry.digest else {
                    return Err(not_found(image));
                };
                digest
            }
        };
        let key = (identity, format!("{}@{digest}", image.repository_path()));
        let entry = self
            .digests
            .try_get_with(key, async {
                cold.store(true, Ordering::Relaxed);
                self.fetch_platforms(image, &digest, auth, identity).await
            })
            .await
            .map_err(|e| (*e).clone())?;
        match entry.0 {
            Some(platforms) => Ok(Resolution { digest, platforms }),
            None => Err(not_found(image)),
        }
    }

    /// Tag → digest with one HEAD request (Docker Hub does not count HEADs against pull limits).
    async fn head(
        &self,
        image: &ImageRef,
        auth: &RegistryAuth,
        identity: Identity,
    ) -> Result<TagEntry, ResolveError> {
        let client = self.client(identity).map_err(|e| classify(image, e))?;
        let result = self
            .timed(client.fetch_manifest_digest(image.reference(), auth))
            .await;
        let checked = Instant::now();
        match result.map_err(|e| classify(image, e)) {
            Ok(digest) => Ok(TagEntry {
                digest: Some(digest),
                checked,
            }),
            Err(ResolveError::NotFound { .. }) => Ok(TagEntry {
                digest: None,
                checked,
            }),
            Err(e) => Err(e),
        }
    }

    /// Digest → platforms: the index lists them; a single image keeps its platform in the config.
    async fn fetch_platforms(
        &self,
        image: &ImageRef,
        digest: &str,
        auth: &RegistryAuth,
        identity: Identity,
    ) -> Result<DigestEntry, ResolveError> {
        let client = self.client(identity).map_err(|e| classify(image, e))?;
        let reference = image.with_digest(digest);
        let pulled = self
            .timed(client.pull_manifest_raw(&reference, auth, manifest::ACCEPT))
            .await;
        let body = match pulled.map_err(|e| classify(image, e)) {
            Ok((body, _)) => body,
            Err(ResolveError::NotFound { .. }) => return Ok(DigestEntry(None)),
            Err(e) => return Err(e),
        };
        let invalid = |e: ManifestError| ResolveError::InvalidManifest {
            registry: image.registry().to_string(),
            reason: e.to_string(),
        };
        let platforms = match manifest::parse_manifest(&body).map_err(invalid)? {
            Document::Index(platforms) => platforms,
            Document::Legacy(platform) => vec![platform],
            Document::Image {
                config_digest,
                config_size,
            } => {
                if config_size > manifest::MAX_CONFIG_BYTES {
                    return Err(invalid(ManifestError::ConfigTooLarge(config_size)));
                }
                vec![
                    self.fetch_config(&client, &reference, &config_digest, image)
                        .await?,
                ]
            }
        };
        Ok(DigestEntry(Some(platforms.into())))
    }

    async fn fetch_config(
        &self,
        client: &Client,
        reference: &Reference,
        config_digest: &str,
        image: &ImageRef,
    ) -> Result<Platform, ResolveError> {
        let mut blob = Vec::new();
        self.timed(client.pull_blob(reference, config_digest, &mut blob))
            .await
            .map_err(|e| classify(image, e))?;
        manifest::parse_config(&blob).map_err(|e| ResolveError::InvalidManifest {
            registry: image.registry().to_string(),
            reason: e.to_string(),
        })
    }

    /// Runs one registry call, recording its latency and status class.
    async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, OciDistributionError>>,
    ) -> Result<T, OciDistributionError> {
        let started = Instant::now();
        let result = call.await;
        let class = match &result {
            Ok(_) => StatusClass::Success,
            Err(e) => status_class(e),
        };
        self.metrics.observe_registry(class, started.elapsed());
        result
    }

    /// Number of digests currently cached (eventually consistent; for measurements and tests).
    pub async fn cached_images(&self) -> u64 {
        self.digests.run_pending_tasks().await;
        self.digests.entry_count()
    }
}

fn not_found(image: &ImageRef) -> ResolveError {
    ResolveError::NotFound {
        registry: image.registry().to_string(),
    }
}

fn status_class(e: &OciDistributionError) -> StatusClass {
    let code = match e {
        OciDistributionError::ServerError { code, .. } => *code,
        OciDistributionError::RegistryError { .. }
        | OciDistributionError::UnauthorizedError { .. } => 400,
        OciDistributionError::RequestError(e) => match e.status() {
            Some(s) => s.as_u16(),
            None => return StatusClass::Transport,
        },
        _ => 200,
    };
    match code {
        500.. => StatusClass::ServerError,
        400..500 => StatusClass::ClientError,
        _ => StatusClass::Success,
    }
}

/// Maps oci-client's errors onto what an operator can act on.
fn classify(image: &ImageRef, e: OciDistributionError) -> ResolveError {
    let registry = image.registry().to_string();
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => ResolveError::NotFound { registry },
        OciDistributionError::ServerError { code: 404, .. } => ResolveError::NotFound { registry },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                ResolveError::NotFound { registry }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ResolveError::Unauthorized { registry }
            } else {
                ResolveError::Unreachable {
                    registry,
                    reason: envelope.to_string(),
                }
            }
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => ResolveError::Unauthorized { registry },
        OciDistributionError::ServerError { code, .. } => ResolveError::Unreachable {
            registry,
            reason: format!("HTTP {code}"),
        },
        OciDistributionError::RequestError(e) if e.is_timeout() => {
            ResolveError::Timeout { registry }
        }
        OciDistributionError::RequestError(e) => ResolveError::Unreachable {
            registry,
            reason: describe_transport(&e),
        },
        OciDistributionError::DigestError(e) => ResolveError::InvalidManifest {
            registry,
            reason: e.to_string(),
        },
        OciDistributionError::ManifestParsingError(reason)
        | OciDistributionError::VersionedParsingError(reason)
        | OciDistributionError::SpecViolationError(reason) => {
            ResolveError::InvalidManifest { registry, reason }
        }
        other => ResolveError::Unreachable {
            registry,
            reason: other.to_string(),
        },
    }
}

/// reqwest's top-level message is "error sending request"; the cause is in the source chain.
fn describe_transport(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.dedup();
    parts.join(": ")
}
