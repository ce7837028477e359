//! Resolution: which platforms an image provides, asked of its registry once and then cached.
//!
//! Knows registries and caches, nothing of Kubernetes objects. Two moka caches make the hot path a
//! pair of hash lookups:
//! - tag → digest, for a short TTL (a tag moves when someone pushes); not-found kept briefly;
//! - digest → platforms, size-bounded and never stale (a digest names immutable content).
//!
//! moka's `try_get_with` runs one initialiser per key, so concurrent reviews of one cold image share
//! a single registry round trip; errors are returned to every waiter and not cached.
//!
//! Every request to a registry host passes its [`Throttle`]: at most `concurrency` in flight, none
//! while the host is paused after a 429. Mirrors (containerd's hosts.toml idea) are asked in order
//! before the origin; whatever host answers, cache entries stay keyed by the origin reference.

pub mod credentials;
pub mod fetch;
pub mod manifest;
mod oauth;
pub mod throttle;

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tracing::{debug, warn};

pub use credentials::{Auth, Credentials, CredentialsError, Identity};
use manifest::{Document, ManifestError};
pub use throttle::Throttle;

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
    /// Requests in flight to one registry host, at most (mirrors count as their own hosts).
    pub concurrency: usize,
    /// Registry host (`docker.io`, `HOST[:PORT]`) → mirror hosts asked in order before it.
    /// Insecure and CA settings apply to a mirror by its own host name.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registries (`HOST[:PORT]`) whose manifest requests may follow a redirect to another
    /// host. Blob downloads may always leave the registry (except to metadata addresses).
    pub manifest_redirects: Vec<String>,
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
            concurrency: throttle::DEFAULT_CONCURRENCY,
            mirrors: BTreeMap::new(),
            manifest_redirects: Vec::new(),
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
    /// The object names more images than one review checks
    /// ([`crate::review::MAX_IMAGES_PER_REVIEW`], [`crate::review::MAX_TARGETS_PER_REVIEW`]);
    /// this one (and, for targets, every one after it) was not asked for.
    #[error(
        "the object is too large to check: it names more than {limit} {counted}, the most archgate checks in one object"
    )]
    TooLarge {
        registry: String,
        limit: usize,
        counted: &'static str,
    },
    /// The registry answered 429; no request goes to it until the pause is over.
    #[error(
        "registry {registry} is rate limiting archgate (429 Too Many Requests): not asked again for {}s",
        whole_seconds(*.retry_in)
    )]
    RateLimited {
        registry: String,
        retry_in: Duration,
    },
}

/// Seconds for a message, rounded up: "0s" would read as "now".
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl ResolveError {
    pub fn registry(&self) -> &str {
        match self {
            Self::NotFound { registry }
            | Self::Unauthorized { registry }
            | Self::Unreachable { registry, .. }
            | Self::Timeout { registry }
            | Self::InvalidManifest { registry, .. }
            | Self::TooLarge { registry, .. }
            | Self::RateLimited { registry, .. } => registry,
        }
    }

    /// One short clause for a warning line (the full reason goes to the log).
    pub fn summary(&self) -> String {
        match self {
            Self::Unreachable { registry, .. } => format!("registry {registry} is unreachable"),
            Self::InvalidManifest { registry, .. } => {
                format!("registry {registry} served an unreadable manifest")
            }
            Self::TooLarge { limit, counted, .. } => {
                format!("object too large to check (over {limit} {counted})")
            }
            Self::RateLimited { registry, retry_in } => format!(
                "registry {registry} is rate limiting (paused {}s)",
                whole_seconds(*retry_in)
            ),
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
    digest: Option<Digest>,
    checked: Instant,
}

/// A digest's platforms, or the knowledge that it does not exist. Platform lists are interned:
/// most images share one of a handful of sets.
#[derive(Debug, Clone)]
struct DigestEntry(Option<Arc<[Platform]>>);

/// Cache key: who asked (credential identity) and a 128-bit hash of the reference (host,
/// repository and tag, or host, repository and digest). A hash instead of the string keeps a cached image
/// at a fixed few hundred bytes (the 100k-image memory budget); at 128 bits a collision among
/// even millions of keys is out of reach.
type Key = (Identity, u128);

fn key(identity: Identity, parts: &[&str]) -> Key {
    // Hashing the parts (each `str` hash ends with a separator byte) avoids building the
    // reference string on the warm path.
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        parts.iter().for_each(|p| p.hash(&mut h));
        h.finish()
    };
    (identity, (u128::from(half(0)) << 64) | u128::from(half(1)))
}

fn tag_key(identity: Identity, image: &ImageRef) -> Key {
    let tag = image.tag().unwrap_or("latest");
    key(identity, &[image.registry(), image.repository(), ":", tag])
}

fn digest_key(identity: Identity, image: &ImageRef, digest: &str) -> Key {
    key(
        identity,
        &[image.registry(), image.repository(), "@", digest],
    )
}

/// A manifest digest, stored compactly: 32 bytes for sha256 (every registry today), the text
/// otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Digest {
    Sha256([u8; 32]),
    Other(Box<str>),
}

impl Digest {
    fn new(text: &str) -> Self {
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

/// One host to ask for an image: a mirror, or (always last) the origin registry.
struct Hop<'a> {
    /// `HOST[:PORT]` the requests go to; throttles and error messages are per host.
    host: &'a str,
    mirror: bool,
    auth: Auth,
    identity: Identity,
}

impl Hop<'_> {
    /// `origin` addressed to this hop (oci-client sends the origin as `?ns=` to a mirror).
    fn reference(&self, origin: &Reference) -> Reference {
        let mut reference = origin.clone();
        if self.mirror {
            reference.set_mirror_registry(self.host.to_string());
        }
        reference
    }
}

/// Where to ask, in order, and who is asking.
struct Route<'a> {
    hops: Vec<Hop<'a>>,
    /// The cache key's identity: the origin credentials' identity, mixed with the mirrors' when
    /// any mirror is asked with credentials (what a private mirror showed must not be served
    /// to a caller without them).
    identity: Identity,
}

impl Route<'_> {
    fn mirrors(&self) -> &[Hop<'_>] {
        &self.hops[..self.hops.len() - 1]
    }

    fn origin(&self) -> &Hop<'_> {
        &self.hops[self.hops.len() - 1]
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
    /// `options.mirrors` with registry keys normalised (`index.docker.io` is `docker.io`).
    mirrors: BTreeMap<String, Vec<String>>,
    throttle: Throttle,
    /// Distinct platform sets, shared by the digest entries (bounded: a registry could serve
    /// endless distinct `os.version`s).
    platform_sets: Cache<Vec<Platform>, Arc<[Platform]>>,
    access_tokens: oauth::AccessTokens,
    /// Manifest and blob reads with byte caps and guarded redirects.
    fetcher: fetch::Fetcher,
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
        let mirrors = options
            .mirrors
            .iter()
            .filter(|(_, hosts)| !hosts.is_empty())
            .map(|(registry, hosts)| (credentials::normalize_host(registry), hosts.clone()))
            .collect();
        let throttle = Throttle::new(options.concurrency);
        let clients = Default::default();
        let access_tokens = oauth::AccessTokens::new(token_http_client(&options)?);
        let fetcher = fetch::Fetcher::new(fetch::FetchOptions {
            insecure: &options.insecure,
            ca_pem: options.ca_pem.as_deref(),
            connect_timeout: options.connect_timeout,
            read_timeout: options.request_timeout,
            manifest_redirect_hosts: &options.manifest_redirects,
            concurrency: options.concurrency,
        })
        .map_err(|e| SetupError::Ca(e.to_string()))?;
        let resolver = Self {
            options,
            ca,
            clients,
            tags,
            digests,
            mirrors,
            throttle,
            platform_sets: Cache::new(10_000),
            access_tokens,
            fetcher,
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

    /// The hosts to ask for `image` (its mirrors, then its registry) with their credentials.
    fn route<'a>(&'a self, image: &'a ImageRef, credentials: &Credentials) -> Route<'a> {
        let mirrors = self
            .mirrors
            .get(&credentials::normalize_host(image.registry()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut hops: Vec<Hop<'a>> = Vec::with_capacity(mirrors.len() + 1);
        for host in mirrors {
            let (auth, identity) = credentials.for_registry(host);
            hops.push(Hop {
                host,
                mirror: true,
                auth,
                identity,
            });
        }
        let (auth, identity) = credentials.for_registry(image.registry());
        hops.push(Hop {
            host: image.registry(),
            mirror: false,
            auth,
            identity,
        });
        let identity = if hops.iter().all(|h| !h.mirror || h.identity == 0) {
            identity
        } else {
            let mut hasher = DefaultHasher::new();
            for hop in &hops {
                (hop.host, hop.identity).hash(&mut hasher);
            }
            // Never 0: that is anonymous.
            hasher.finish().max(1)
        };
        Route { hops, identity }
    }

    /// The registry client and credentials archgate would use for `image`, for callers that
    /// fetch other content from registries (Tekton bundles). Same client per identity as lookups.
    pub async fn client_for(
        &self,
        image: &ImageRef,
        credentials: &Credentials,
    ) -> Result<(Arc<Client>, RegistryAuth), ResolveError> {
        let (auth, identity) = credentials.for_registry(image.registry());
        let hop = Hop {
            host: image.registry(),
            mirror: false,
            auth,
            identity,
        };
        let client = self
            .client(identity)
            .map_err(|e| classify(image.registry(), e))?;
        let auth = self.authorize(&client, &hop, image.reference()).await?;
        Ok((client, auth))
    }

    /// What to hand oci-client for requests about `reference` at `hop`. An identity token is
    /// exchanged for an access token to that repository, which is then placed in the client's
    /// token cache for that repository (oci-client keeps the first credentials it saw per
    /// registry, so passing the token alone would not reach a second repository).
    async fn authorize(
        &self,
        client: &Client,
        hop: &Hop<'_>,
        reference: &Reference,
    ) -> Result<RegistryAuth, ResolveError> {
        let refresh_token = match &hop.auth {
            Auth::Direct(auth) => return Ok(auth.clone()),
            Auth::IdentityToken(token) => token,
        };
        let scheme = if self.options.insecure.iter().any(|h| h == hop.host) {
            "http"
        } else {
            "https"
        };
        let access = self
            .access_tokens
            .get(
                scheme,
                hop.host,
                reference.repository(),
                refresh_token,
                hop.identity,
            )
            .await?;
        let bearer = RegistryAuth::Bearer(access);
        client
            .auth(reference, &bearer, oci_client::RegistryOperation::Pull)
            .await
            .map_err(|e| classify(hop.host, e))?;
        Ok(bearer)
    }

    /// The platforms `image` provides, as seen with `credentials`.
    pub async fn resolve(
        &self,
        image: &ImageRef,
        credentials: &Credentials,
    ) -> Result<Resolution, ResolveError> {
        // The warm path: two cache reads, no route, no registry client.
        if let Some(hit) = self
            .cached(image, self.cache_identity(image, credentials))
            .await
        {
            self.metrics.observe_lookup(CacheResult::Hit);
            return hit;
        }
        let route = self.route(image, credentials);
        let cold = AtomicBool::new(false);
        let result = self.lookup(image, &route, &cold).await;
        let cache = if cold.load(Ordering::Relaxed) {
            CacheResult::Miss
        } else {
            CacheResult::Hit
        };
        self.metrics.observe_lookup(cache);
        result
    }

    /// The identity that keys `image`'s cache entries; the same as `route(..).identity`, without
    /// building the route when no mirror is configured.
    fn cache_identity(&self, image: &ImageRef, credentials: &Credentials) -> Identity {
        if self.mirrors.is_empty() {
            credentials.identity_for(image.registry())
        } else {
            self.route(image, credentials).identity
        }
    }

    /// Both answers from the caches, or `None` when either must be asked for.
    async fn cached(
        &self,
        image: &ImageRef,
        identity: Identity,
    ) -> Option<Result<Resolution, ResolveError>> {
        let digest = match image.digest() {
            Some(digest) => digest.to_string(),
            None => match self.tags.get(&tag_key(identity, image)).await?.digest {
                Some(digest) => digest.to_string(),
                None => return Some(Err(not_found(image))),
            },
        };
        let key = digest_key(identity, image, &digest);
        let entry = self.digests.get(&key).await?;
        Some(match entry.0 {
            Some(platforms) => Ok(Resolution { digest, platforms }),
            None => Err(not_found(image)),
        })
    }

    /// Forgets what the tag pointed to and asks again: used before denying on a cached answer,
    /// because the tag may just have been rebuilt for more platforms.
    pub async fn refresh(
        &self,
        image: &ImageRef,
        credentials: &Credentials,
    ) -> Result<Resolution, ResolveError> {
        let identity = self.cache_identity(image, credentials);
        self.tags.invalidate(&tag_key(identity, image)).await;
        self.resolve(image, credentials).await
    }

    /// How long ago the tag's answer (digest or not-found) came from the registry; `None` when
    /// not cached or pinned by digest.
    pub async fn tag_age(&self, image: &ImageRef, credentials: &Credentials) -> Option<Duration> {
        if image.digest().is_some() {
            return None;
        }
        let identity = self.cache_identity(image, credentials);
        let entry = self.tags.get(&tag_key(identity, image)).await?;
        Some(entry.checked.elapsed())
    }

    async fn lookup(
        &self,
        image: &ImageRef,
        route: &Route<'_>,
        cold: &AtomicBool,
    ) -> Result<Resolution, ResolveError> {
        let digest = match image.digest() {
            Some(digest) => digest.to_string(),
            None => {
                let entry = self
                    .tags
                    .try_get_with(tag_key(route.identity, image), async {
                        cold.store(true, Ordering::Relaxed);
                        self.head(image, route).await
                    })
                    .await
                    .map_err(|e| (*e).clone())?;
                let Some(digest) = entry.digest else {
                    return Err(not_found(image));
                };
                digest.to_string()
            }
        };
        let key = digest_key(route.identity, image, &digest);
        let entry = self
            .digests
            .try_get_with(key, async {
                cold.store(true, Ordering::Relaxed);
                self.fetch_platforms(image, &digest, route).await
            })
            .await
            .map_err(|e| (*e).clone())?;
        match entry.0 {
            Some(platforms) => Ok(Resolution { digest, platforms }),
            None => Err(not_found(image)),
        }
    }

    /// Tag → digest: the first mirror that knows the tag, else the origin's answer.
    async fn head(&self, image: &ImageRef, route: &Route<'_>) -> Result<TagEntry, ResolveError> {
        for hop in route.mirrors() {
            match self.head_at(image, hop).await {
                Ok(entry) if entry.digest.is_some() => return Ok(entry),
                Ok(_) => debug!(mirror = hop.host, "tag not in mirror; trying the next host"),
                Err(error) => {
                    debug!(mirror = hop.host, %error, "mirror failed; trying the next host")
                }
            }
        }
        self.head_at(image, route.origin()).await
    }

    /// Tag → digest at one host with one HEAD request (Docker Hub does not count HEADs against
    /// pull limits).
    async fn head_at(&self, image: &ImageRef, hop: &Hop<'_>) -> Result<TagEntry, ResolveError> {
        let client = self
            .client(hop.identity)
            .map_err(|e| classify(hop.host, e))?;
        let reference = hop.reference(image.reference());
        let auth = self.authorize(&client, hop, &reference).await?;
        let result = self
            .ask(
                hop.host,
                self.fetcher
                    .digest(&client, &reference, &auth, hop.identity),
            )
            .await;
        let checked = Instant::now();
        match result {
            Ok(digest) => Ok(TagEntry {
                digest: Some(Digest::new(&digest)),
                checked,
            }),
            Err(ResolveError::NotFound { .. }) => Ok(TagEntry {
                digest: None,
                checked,
            }),
            Err(e) => Err(e),
        }
    }

    /// Digest → platforms: the first mirror that serves the digest, else the origin's answer.
    /// The content is checked against the digest, so any host's copy is as good as the origin's.
    async fn fetch_platforms(
        &self,
        image: &ImageRef,
        digest: &str,
        route: &Route<'_>,
    ) -> Result<DigestEntry, ResolveError> {
        for hop in route.mirrors() {
            match self.platforms_at(image, digest, hop).await {
                Ok(entry) if entry.0.is_some() => return Ok(entry),
                Ok(_) => debug!(
                    mirror = hop.host,
                    "digest not in mirror; trying the next host"
                ),
                Err(error) => {
                    debug!(mirror = hop.host, %error, "mirror failed; trying the next host")
                }
            }
        }
        self.platforms_at(image, digest, route.origin()).await
    }

    /// Digest → platforms at one host: the index lists them; a single image keeps its platform
    /// in the config.
    async fn platforms_at(
        &self,
        image: &ImageRef,
        digest: &str,
        hop: &Hop<'_>,
    ) -> Result<DigestEntry, ResolveError> {
        let client = self
            .client(hop.identity)
            .map_err(|e| classify(hop.host, e))?;
        let reference = hop.reference(&image.with_digest(digest));
        let auth = self.authorize(&client, hop, &reference).await?;
        let pulled = self
            .ask(
                hop.host,
                self.fetcher
                    .manifest(&client, &reference, &auth, hop.identity),
            )
            .await;
        let body = match pulled {
            Ok(body) => body,
            Err(ResolveError::NotFound { .. }) => return Ok(DigestEntry(None)),
            Err(e) => return Err(e),
        };
        let invalid = |e: ManifestError| ResolveError::InvalidManifest {
            registry: hop.host.to_string(),
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
                // The declared size is the registry's claim: the read is capped on its own.
                let blob = self
                    .ask(
                        hop.host,
                        self.fetcher.blob(
                            &client,
                            &reference,
                            &auth,
                            hop.identity,
                            &config_digest,
                            manifest::MAX_CONFIG_BYTES as usize,
                        ),
                    )
                    .await?;
                vec![manifest::parse_config(&blob).map_err(invalid)?]
            }
        };
        Ok(DigestEntry(Some(self.intern(platforms).await)))
    }

    /// Runs one registry call through `host`'s throttle, recording its latency and status
    /// class; a 429 pauses the host. Public so that other registry reads (Tekton bundles) keep
    /// to the same per-registry bound and backoff.
    pub async fn ask<T>(
        &self,
        host: &str,
        call: impl Future<Output = Result<T, OciDistributionError>>,
    ) -> Result<T, ResolveError> {
        let rate_limited = |retry_in| ResolveError::RateLimited {
            registry: host.to_string(),
            retry_in,
        };
        // The call is a lazy future: nothing is sent before the throttle lets it through.
        let pass = self.throttle.enter(host).await.map_err(rate_limited)?;
        let started = Instant::now();
        let result = call.await;
        let class = match &result {
            Ok(_) => StatusClass::Success,
            Err(e) => status_class(e),
        };
        self.metrics.observe_registry(class, started.elapsed());
        match result {
            Ok(value) => {
                pass.succeeded();
                Ok(value)
            }
            Err(e) if is_rate_limit(&e) => {
                let retry_in = pass.rate_limited();
                warn!(
                    registry = host,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "registry rate limited; pausing lookups"
                );
                Err(rate_limited(retry_in))
            }
            Err(e) => Err(classify(host, e)),
        }
    }

    /// One shared list per distinct set of platforms.
    async fn intern(&self, platforms: Vec<Platform>) -> Arc<[Platform]> {
        let shared = platforms.clone();
        self.platform_sets
            .get_with(platforms, async move { shared.into() })
            .await
    }

    /// Number of digests currently cached (eventually consistent; for measurements and tests).
    pub async fn cached_images(&self) -> u64 {
        self.digests.run_pending_tasks().await;
        self.digests.entry_count()
    }
}

/// The plain HTTP client for token endpoints: same CA and timeouts as the registry clients.
fn token_http_client(options: &RegistryOptions) -> Result<reqwest::Client, SetupError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .user_agent(concat!("archgate/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &options.ca_pem {
        let ca = reqwest::Certificate::from_pem(pem).map_err(|e| SetupError::Ca(e.to_string()))?;
        builder = builder.tls_certs_merge([ca]);
    }
    builder.build().map_err(|e| SetupError::Ca(e.to_string()))
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

/// A 429, bare or as a distribution error envelope (`TOOMANYREQUESTS`).
fn is_rate_limit(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code: 429, .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == OciErrorCode::Toomanyrequests),
        _ => false,
    }
}

/// Maps oci-client's errors onto what an operator can act on (429 is [`is_rate_limit`]'s).
fn classify(registry: &str, e: OciDistributionError) -> ResolveError {
    let registry = registry.to_string();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_compactly() {
        let sha = "sha256:89102e348749bb17a6a651a4b2a17420e1a66d2a44a675b981973d49a5af3a5e";
        assert!(matches!(Digest::new(sha), Digest::Sha256(_)));
        assert_eq!(Digest::new(sha).to_string(), sha);
        for other in [
            "sha512:abcd",
            "sha256:short",
            "sha256:89102E348749BB17A6A651A4B2A17420E1A66D2A44A675B981973D49A5AF3A5E",
        ] {
            assert!(matches!(Digest::new(other), Digest::Other(_)), "{other}");
            assert_eq!(Digest::new(other).to_string(), other);
        }
        assert_ne!(key(0, &["a", "b", ":", "1"]), key(0, &["a", "b", ":", "2"]));
        assert_ne!(key(0, &["a", "b", ":", "1"]), key(1, &["a", "b", ":", "1"]));
        assert_ne!(key(0, &["a", "b:1"]), key(0, &["a:b", "1"]));
        assert_eq!(key(7, &["a", "b"]), key(7, &["a", "b"]));
    }
    use oci_client::errors::{OciEnvelope, OciError};

    #[test]
    fn a_429_in_any_shape_is_rate_limiting() {
        let bare = OciDistributionError::ServerError {
            code: 429,
            url: "u".into(),
            message: String::new(),
        };
        let envelope = OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code: OciErrorCode::Toomanyrequests,
                    message: "pull rate limit".into(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "u".into(),
        };
        assert!(is_rate_limit(&bare) && is_rate_limit(&envelope));
        let other = OciDistributionError::ServerError {
            code: 503,
            url: "u".into(),
            message: String::new(),
        };
        assert!(!is_rate_limit(&other));

        let e = ResolveError::RateLimited {
            registry: "docker.io".into(),
            retry_in: Duration::from_millis(1500),
        };
        assert_eq!(e.registry(), "docker.io");
        assert_eq!(
            e.summary(),
            "registry docker.io is rate limiting (paused 2s)"
        );
        assert!(e.to_string().contains("429") && !e.is_not_found());
    }

    #[test]
    fn mirrors_come_first_and_credentials_for_them_split_the_cache() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = RegistryOptions {
            mirrors: BTreeMap::from([(
                "index.docker.io".to_string(),
                vec!["m1.internal:5000".to_string(), "m2.internal".to_string()],
            )]),
            ..RegistryOptions::default()
        };
        let resolver = Resolver::new(options, Arc::new(Metrics::new())).unwrap();
        let nginx = ImageRef::parse("nginx:1.27").unwrap();
        let anonymous = Credentials::default();
        let route = resolver.route(&nginx, &anonymous);
        let hosts: Vec<&str> = route.hops.iter().map(|h| h.host).collect();
        assert_eq!(hosts, ["m1.internal:5000", "m2.internal", "docker.io"]);
        assert_eq!(route.identity, 0);
        let to_mirror = route.hops[0].reference(nginx.reference());
        assert_eq!(to_mirror.resolve_registry(), "m1.internal:5000");
        assert_eq!(
            to_mirror.whole(),
            nginx.canonical(),
            "cache keys stay the origin's"
        );

        let other = ImageRef::parse("ghcr.io/a/b:1").unwrap();
        assert_eq!(resolver.route(&other, &anonymous).hops.len(), 1);

        let config = br#"{"auths": {"m2.internal": {"auth": "dTpw"}}}"#;
        let with_mirror_secret = Credentials::from_docker_config(config, "test").unwrap();
        let route = resolver.route(&nginx, &with_mirror_secret);
        assert_ne!(
            route.identity, 0,
            "a private mirror's answers are not anonymous"
        );
    }
}
