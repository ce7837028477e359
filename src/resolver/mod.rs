//! Resolution: which platforms an image provides, asked of its registry once and then cached.
//!
//! Knows registries and caches, nothing of Kubernetes objects. Two moka caches make the hot path
//! one hash lookup (a tag read with a GET carries its platforms) or two:
//! - tag → digest, trusted for a short TTL (a tag moves when someone pushes), not-found more
//!   briefly; past that the entry stays, size-bounded, as the digest a HEAD checks;
//! - digest → platforms, size-bounded and never stale (a digest names immutable content).
//!
//! One computation per key at a time (moka's entry compute for tags, `try_get_with` for
//! digests), so concurrent reviews of one cold or stale image share a single registry round
//! trip; errors are returned to every waiter and not cached.
//!
//! Every request to a registry host passes its [`Throttle`]: at most `concurrency` in flight, none
//! while the host is paused after a 429. Mirrors (containerd's hosts.toml idea) are asked in order
//! before the origin; whatever host answers, cache entries stay keyed by the origin reference.
//!
//! A cold tag costs what the distribution API needs: one GET answers both "which digest" and
//! "which platforms" (an index lists them; a single image adds its config blob). A tag whose
//! answer has aged past `tag_ttl` is checked with one HEAD; an unchanged digest keeps the
//! platforms the entry had.
//!
//! By concern: `cache` (entries, keys, expiry), `route` (mirrors then origin, with credentials),
//! `errors` (what went wrong, classified), `fetch` (every request, bounded and counted), `auth`
//! and `headers` (challenges, tokens, Retry-After), `manifest` (what a manifest says),
//! `credentials` (who we are), `throttle` (manners per host), `dns` (host names, bounded); this
//! file is the [`Resolver`] that ties them together.

mod auth;
mod cache;
pub mod credentials;
pub mod dns;
mod errors;
pub mod fetch;
mod headers;
pub mod manifest;
mod route;
pub mod throttle;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moka::future::Cache;
use tracing::{debug, warn};

pub use credentials::{Auth, Credentials, CredentialsError, Identity};
use manifest::{Document, ManifestError};
pub use throttle::Throttle;

pub use cache::Digest;
use cache::{
    DigestEntry, DigestExpiry, Key, KeyHasher, TagEntry, TagLifetime, digest_key, tag_key,
};
pub use errors::{ResolveError, SetupError};
use errors::{classify, is_rate_limit, not_found};
use route::{Hop, Route, first_accepted};

use crate::metrics::{CacheResult, Metrics};
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
    /// The manifest the platforms were read from; `None` when they were not read from a
    /// registry (a Tekton step's platform commands). Kept compact and written out only where it
    /// is shown: a warm review answers every image with one.
    pub digest: Option<Digest>,
    pub platforms: Arc<[Platform]>,
}

/// Resolves images to platforms; cheap to share (`Arc`) across requests.
pub struct Resolver {
    /// Tag → digest. Entries outlive their [`TagLifetime`]: a stale one is what to check.
    tags: Cache<Key, TagEntry, KeyHasher>,
    tag_lifetime: TagLifetime,
    digests: Cache<Key, DigestEntry, KeyHasher>,
    /// `options.mirrors` with registry keys normalised (`index.docker.io` is `docker.io`).
    mirrors: BTreeMap<String, Vec<String>>,
    throttle: Throttle,
    /// Distinct platform sets, shared by the digest entries (bounded: a registry could serve
    /// endless distinct `os.version`s).
    platform_sets: Cache<Vec<Platform>, Arc<[Platform]>>,
    /// Every registry request, with byte caps, guarded redirects and authentication.
    fetcher: fetch::Fetcher,
    metrics: Arc<Metrics>,
    /// Registries that answered a lookup lately (see [`Resolver::answered_lately`]).
    answered: Cache<String, ()>,
}

/// Registries remembered as having answered, at most, and for how long.
const ANSWERED_HOSTS: u64 = 4096;
const ANSWERED_FOR: Duration = Duration::from_secs(600);

impl Resolver {
    pub fn new(options: RegistryOptions, metrics: Arc<Metrics>) -> Result<Self, SetupError> {
        if let Some(pem) = &options.ca_pem
            && !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----")
        {
            return Err(SetupError::Ca("the file holds no PEM certificate".into()));
        }
        let tags = Cache::builder()
            .max_capacity(options.max_images)
            .build_with_hasher(KeyHasher::default());
        let tag_lifetime = TagLifetime {
            found: options.tag_ttl,
            missing: options.not_found_ttl,
        };
        let digests = Cache::builder()
            .max_capacity(options.max_images)
            .expire_after(DigestExpiry {
                missing: options.not_found_ttl,
            })
            .build_with_hasher(KeyHasher::default());
        let mirrors = options
            .mirrors
            .iter()
            .filter(|(_, hosts)| !hosts.is_empty())
            .map(|(registry, hosts)| (credentials::normalize_host(registry), hosts.clone()))
            .collect();
        let throttle = Throttle::new(options.concurrency);
        // The CA is parsed here, so a bad one fails at start, not on the first review.
        let fetcher = fetch::Fetcher::new(
            fetch::FetchOptions {
                insecure: &options.insecure,
                ca_pem: options.ca_pem.as_deref(),
                connect_timeout: options.connect_timeout,
                read_timeout: options.request_timeout,
                manifest_redirect_hosts: &options.manifest_redirects,
                concurrency: options.concurrency,
            },
            metrics.clone(),
        )
        .map_err(|e| SetupError::Ca(e.to_string()))?;
        Ok(Self {
            tags,
            tag_lifetime,
            digests,
            mirrors,
            throttle,
            platform_sets: Cache::new(10_000),
            fetcher,
            metrics,
            answered: Cache::builder()
                .max_capacity(ANSWERED_HOSTS)
                .time_to_live(ANSWERED_FOR)
                .build(),
        })
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
            // A mirror is asked with the first credential matching it (as if the image were
            // there); a mirror that refuses is passed over for the next host anyway.
            let (auth, identity) = credentials.first_for(host, image.repository());
            hops.push(Hop {
                host,
                mirror: true,
                auth,
                identity,
            });
        }
        hops.extend(Hop::origins(image, credentials));
        let origin_identity = credentials.identity_for(image);
        let identity = if hops.iter().all(|h| !h.mirror || h.identity == 0) {
            origin_identity
        } else {
            let mut hasher = cache::hasher();
            for hop in hops.iter().filter(|h| h.mirror) {
                (hop.host, hop.identity).hash(&mut hasher);
            }
            (image.registry(), origin_identity).hash(&mut hasher);
            // Never 0: that is anonymous.
            hasher.finish().max(1)
        };
        Route { hops, identity }
    }

    /// The manifest `image` names, read from its registry with the credentials lookups use,
    /// through the same throttle: for callers that read other content (Tekton bundles).
    pub async fn read_manifest(
        &self,
        image: &ImageRef,
        credentials: &Credentials,
    ) -> Result<Vec<u8>, ResolveError> {
        let origins = Hop::origins(image, credentials);
        let (_, body) = first_accepted(&origins, |hop| {
            let target = hop.target(image.reference());
            self.ask(
                hop.host,
                async move { self.fetcher.manifest(&target).await },
            )
        })
        .await?;
        Ok(body)
    }

    /// A blob of `image`'s repository, at most `cap` bytes, checked against `digest`.
    pub async fn read_blob(
        &self,
        image: &ImageRef,
        credentials: &Credentials,
        digest: &str,
        cap: usize,
    ) -> Result<Vec<u8>, ResolveError> {
        let origins = Hop::origins(image, credentials);
        first_accepted(&origins, |hop| {
            let target = hop.target(image.reference());
            self.ask(hop.host, async move {
                self.fetcher.blob(&target, digest, cap).await
            })
        })
        .await
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
        // Boxed: the registry path's state (clients, token exchange, streamed bodies) is ~30 KB,
        // and unboxed it would size every lookup's future, warm ones included, which the
        // pipeline allocates and moves per image (BENCHMARKS.md, "Warm path", fourth pass).
        let result = Box::pin(self.lookup(image, &route, &cold)).await;
        let cache = if cold.load(Ordering::Relaxed) {
            let no_answer = matches!(
                result,
                Err(ResolveError::Timeout { .. } | ResolveError::Unreachable { .. })
            );
            if !no_answer {
                self.answered.insert(image.registry().to_string(), ()).await;
            }
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
            credentials.identity_for(image)
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
        self.read_caches(image, identity, true).await
    }

    /// The last answer the caches hold for `image`, however old: what its registry said
    /// before, for when it cannot be asked now. `None` when nothing is cached.
    pub async fn last_known(
        &self,
        image: &ImageRef,
        credentials: &Credentials,
    ) -> Option<Result<Resolution, ResolveError>> {
        let identity = self.cache_identity(image, credentials);
        self.read_caches(image, identity, false).await
    }

    /// Both answers from the caches; with `fresh_only`, a tag past its lifetime is `None`.
    async fn read_caches(
        &self,
        image: &ImageRef,
        identity: Identity,
        fresh_only: bool,
    ) -> Option<Result<Resolution, ResolveError>> {
        let digest = match image.digest() {
            Some(digest) => Digest::new(digest),
            None => {
                let entry = self.tags.get(&tag_key(identity, image)).await?;
                if fresh_only && !self.tag_lifetime.is_fresh(&entry) {
                    return None;
                }
                match by_tag(entry, image) {
                    ByTag::Answer(answer) => return Some(answer),
                    ByTag::Digest(digest) => digest,
                }
            }
        };
        let key = digest_key(identity, image, &digest);
        let entry = self.digests.get(&key).await?;
        Some(by_digest(entry, digest, image))
    }

    /// Forgets what the tag pointed to and asks again: used before denying on a cached answer,
    /// because the tag may just have been rebuilt for more platforms.
    pub async fn refresh(
        &self,
        image: &ImageRef,
        credentials: &Credentials,
    ) -> Result<Resolution, ResolveError> {
        let key = tag_key(self.cache_identity(image, credentials), image);
        // Marked, not dropped: its digest is what the HEAD checks.
        let before = self.tags.get(&key).await;
        if let Some(entry) = &before {
            let stale = TagEntry {
                stale: true,
                ..entry.clone()
            };
            self.tags.insert(key, stale).await;
        }
        let fresh = self.resolve(image, credentials).await;
        // A recheck that failed leaves the answer as it was (the caller keeps it too): marked
        // stale, every later review would ask the failing registry first and read its error.
        if let (Err(e), Some(before)) = (&fresh, before)
            && !e.is_not_found()
            && self
                .tags
                .get(&key)
                .await
                .is_some_and(|now| now.stale && now.checked == before.checked)
        {
            self.tags.insert(key, before).await;
        }
        fresh
    }

    /// Did `registry` answer a lookup in the last ten minutes? A registry that never answers
    /// (or that no lookup has reached yet) is not known to.
    pub fn answered_lately(&self, registry: &str) -> bool {
        self.answered.contains_key(registry)
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
            Some(digest) => Digest::new(digest),
            None => match by_tag(self.fresh_tag(image, route, cold).await?, image) {
                ByTag::Answer(answer) => return answer,
                ByTag::Digest(digest) => digest,
            },
        };
        // Usually a hit: a HEAD found a digest it holds.
        let key = digest_key(route.identity, image, &digest);
        let entry = self
            .digests
            .try_get_with(key, async {
                cold.store(true, Ordering::Relaxed);
                self.fetch_platforms(image, &digest.to_string(), route)
                    .await
            })
            .await
            .map_err(|e| (*e).clone())?;
        by_digest(entry, digest, image)
    }

    /// The tag's entry, read or revalidated when missing or stale. Concurrent lookups of one
    /// tag wait for one answer: the entry's computation runs once per key at a time, and the
    /// lookups queued behind it find it fresh.
    async fn fresh_tag(
        &self,
        image: &ImageRef,
        route: &Route<'_>,
        cold: &AtomicBool,
    ) -> Result<TagEntry, ResolveError> {
        use moka::ops::compute::Op;
        let key = tag_key(route.identity, image);
        if let Some(entry) = self.tags.get(&key).await
            && self.tag_lifetime.is_fresh(&entry)
        {
            return Ok(entry);
        }
        let computed = self
            .tags
            .entry(key)
            .and_try_compute_with(|current| async move {
                let last = match current {
                    Some(entry) if self.tag_lifetime.is_fresh(entry.value()) => {
                        return Ok(Op::Nop);
                    }
                    current => current.map(|entry| entry.into_value()),
                };
                cold.store(true, Ordering::Relaxed);
                self.tag(image, route, last).await.map(Op::Put)
            })
            .await?;
        match computed.into_entry() {
            Some(entry) => Ok(entry.into_value()),
            // Not reached: the computation above never removes the entry nor leaves it empty.
            // Should it, the tag is read without the cache.
            None => self.tag(image, route, None).await,
        }
    }

    /// Tag → digest, and the digest's platforms on the way when they are not cached: a tag
    /// whose `last` digest is still cached is checked with a HEAD (and keeps its platforms if
    /// the digest is unchanged); otherwise one GET of the tag reads the manifest, whose digest
    /// and platforms both go in the caches.
    async fn tag(
        &self,
        image: &ImageRef,
        route: &Route<'_>,
        last: Option<TagEntry>,
    ) -> Result<TagEntry, ResolveError> {
        let last = last.and_then(|entry| Some((entry.digest?, entry.platforms)));
        let revalidate = match &last {
            Some((digest, _)) => {
                self.digests
                    .contains_key(&digest_key(route.identity, image, digest))
            }
            None => false,
        };
        let mut answer = None;
        for hop in route.mirrors() {
            match self.tag_at(image, route, hop, revalidate).await {
                Ok(entry) if entry.digest.is_some() => {
                    answer = Some(entry);
                    break;
                }
                Ok(_) => debug!(mirror = hop.host, "tag not in mirror; trying the next host"),
                Err(error) => {
                    debug!(mirror = hop.host, %error, "mirror failed; trying the next host")
                }
            }
        }
        let entry = match answer {
            Some(entry) => entry,
            None => {
                first_accepted(route.origins(), |hop| {
                    self.tag_at(image, route, hop, revalidate)
                })
                .await?
            }
        };
        Ok(match (entry, last) {
            // The HEAD found the digest the tag had: its platforms are the ones known.
            (entry, Some((digest, platforms)))
                if entry.platforms.is_none() && entry.digest.as_ref() == Some(&digest) =>
            {
                TagEntry { platforms, ..entry }
            }
            (entry, _) => entry,
        })
    }

    /// The tag at one host: a HEAD when `revalidate`, else a GET whose manifest's platforms
    /// are cached under its digest.
    async fn tag_at(
        &self,
        image: &ImageRef,
        route: &Route<'_>,
        hop: &Hop<'_>,
        revalidate: bool,
    ) -> Result<TagEntry, ResolveError> {
        let reference = hop.reference(image.reference());
        let target = hop.target(&reference);
        let result = if revalidate {
            let digest = self.ask(hop.host, self.fetcher.digest(&target)).await;
            digest.map(|digest| (Digest::new(&digest), None))
        } else {
            match self.ask(hop.host, self.fetcher.manifest(&target)).await {
                Ok((digest, body)) => {
                    let with_digest = hop.reference(&image.with_digest(&digest));
                    let platforms = self.platforms_in(&body, &hop.target(&with_digest)).await?;
                    let digest = Digest::new(&digest);
                    let key = digest_key(route.identity, image, &digest);
                    let entry = DigestEntry(Some(platforms.clone()));
                    self.digests.insert(key, entry).await;
                    Ok((digest, Some(platforms)))
                }
                Err(e) => Err(e),
            }
        };
        let checked = Instant::now();
        match result {
            Ok((digest, platforms)) => Ok(TagEntry {
                digest: Some(digest),
                platforms,
                checked,
                stale: false,
            }),
            Err(ResolveError::NotFound { .. }) => Ok(TagEntry {
                digest: None,
                platforms: None,
                checked,
                stale: false,
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
        first_accepted(route.origins(), |hop| self.platforms_at(image, digest, hop)).await
    }

    /// Digest → platforms at one host.
    async fn platforms_at(
        &self,
        image: &ImageRef,
        digest: &str,
        hop: &Hop<'_>,
    ) -> Result<DigestEntry, ResolveError> {
        let reference = hop.reference(&image.with_digest(digest));
        let target = hop.target(&reference);
        match self.ask(hop.host, self.fetcher.manifest(&target)).await {
            Ok((_, body)) => Ok(DigestEntry(Some(self.platforms_in(&body, &target).await?))),
            Err(ResolveError::NotFound { .. }) => Ok(DigestEntry(None)),
            Err(e) => Err(e),
        }
    }

    /// The platforms a manifest names: an index lists them; a single image keeps its platform
    /// in the config blob, read from `target` (the manifest's own reference).
    async fn platforms_in(
        &self,
        body: &[u8],
        target: &fetch::Target<'_>,
    ) -> Result<Arc<[Platform]>, ResolveError> {
        let invalid = |e: ManifestError| ResolveError::InvalidManifest {
            registry: target.host.to_string(),
            reason: e.to_string(),
        };
        let platforms = match manifest::parse_manifest(body).map_err(invalid)? {
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
                        target.host,
                        self.fetcher.blob(
                            target,
                            &config_digest,
                            manifest::MAX_CONFIG_BYTES as usize,
                        ),
                    )
                    .await?;
                vec![manifest::parse_config(&blob).map_err(invalid)?]
            }
        };
        Ok(self.intern(platforms).await)
    }

    /// Runs one registry call through `host`'s throttle; a 429 pauses the host for its
    /// `Retry-After`, or by backoff when it gives none.
    async fn ask<T>(
        &self,
        host: &str,
        call: impl Future<Output = fetch::Result<T>>,
    ) -> Result<T, ResolveError> {
        let rate_limited = |retry_in| ResolveError::RateLimited {
            registry: host.to_string(),
            retry_in,
        };
        // The call is a lazy future: nothing is sent before the throttle lets it through.
        let pass = self.throttle.enter(host).await.map_err(rate_limited)?;
        match call.await {
            Ok(value) => {
                pass.succeeded();
                Ok(value)
            }
            Err(failure) if is_rate_limit(&failure.error) => {
                let retry_in = pass.rate_limited(failure.retry_after);
                crate::telemetry::about_registry(|| {
                    warn!(
                        registry = host,
                        retry_in_ms = retry_in.as_millis() as u64,
                        "registry rate limited; pausing lookups"
                    )
                });
                Err(rate_limited(retry_in))
            }
            Err(failure) => Err(classify(host, &failure.error)),
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

/// What a tag's entry answers by itself, or the digest whose platforms to look up.
enum ByTag {
    /// The tag does not exist, or its entry carries the platforms (read with the tag, or kept
    /// by a HEAD that found the digest unchanged).
    Answer(Result<Resolution, ResolveError>),
    Digest(Digest),
}

fn by_tag(entry: TagEntry, image: &ImageRef) -> ByTag {
    match (entry.digest, entry.platforms) {
        (None, _) => ByTag::Answer(Err(not_found(image))),
        (Some(digest), Some(platforms)) => ByTag::Answer(Ok(Resolution {
            digest: Some(digest),
            platforms,
        })),
        (Some(digest), None) => ByTag::Digest(digest),
    }
}

/// A digest's entry as the answer for `image`.
fn by_digest(
    entry: DigestEntry,
    digest: Digest,
    image: &ImageRef,
) -> Result<Resolution, ResolveError> {
    match entry.0 {
        Some(platforms) => Ok(Resolution {
            digest: Some(digest),
            platforms,
        }),
        None => Err(not_found(image)),
    }
}

#[cfg(test)]
mod tests {
    use super::cache::key;
    use super::*;
    use oci_client::errors::OciErrorCode;

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
    use oci_client::errors::{OciDistributionError, OciEnvelope, OciError};

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

    /// A lookup's future is allocated per distinct image of a review (up to
    /// `MAX_IMAGES_PER_REVIEW` at once) and moved around on the warm path: the registry path's
    /// ~30 KB of state must stay behind a box, not inline in every lookup.
    #[test]
    fn a_lookups_future_is_small_whatever_the_registry_path_holds() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let resolver = Resolver::new(RegistryOptions::default(), Arc::new(Metrics::new())).unwrap();
        let image = ImageRef::parse("nginx:1.27").unwrap();
        let anonymous = Credentials::default();
        let route = resolver.route(&image, &anonymous);
        let cold = AtomicBool::new(false);
        let registry_path = std::mem::size_of_val(&resolver.lookup(&image, &route, &cold));
        let lookup = std::mem::size_of_val(&resolver.resolve(&image, &anonymous));
        let refresh = std::mem::size_of_val(&resolver.refresh(&image, &anonymous));
        assert!(lookup < 4096 && refresh < 4096, "{lookup}, {refresh} bytes");
        assert!(
            registry_path > 4 * lookup,
            "{registry_path} bytes: nothing to box any more?"
        );
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
