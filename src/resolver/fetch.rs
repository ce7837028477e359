//! Every request archgate sends to a registry or token endpoint: tag → digest, manifest, config
//! blob, and (with `auth.rs`) token requests, on one reqwest client.
//!
//! Why not oci-client's calls: `pull_manifest_raw` buffers the whole body (`bytes()`, a hostile
//! 150 MiB manifest cost 312 MB); its reqwest client is built privately, so its requests could
//! not be counted; it follows any redirect to any host; it pings `/v2/` before every call to a
//! registry that sends no challenge (19 of 38 requests in a cold `check` of 8 images); it hides
//! response headers (`Retry-After`, `RateLimit-*`); and its errors drop the HTTP status when the
//! body parses as an error envelope (a 429 carrying `DENIED` read as "unreachable"). So the
//! requests are made here, with: bodies read as a stream against a cap ([`MAX_MANIFEST_BYTES`],
//! [`manifest::MAX_CONFIG_BYTES`]) and checked against their digest; the status kept; and a
//! redirect policy ([`check_redirect`]) plus a resolver (`dns.rs`) that refuse link-local and
//! cloud-metadata addresses before any connection is made. Every request is counted in
//! `archgate_registry_requests_total` as it is sent.
//!
//! Errors keep oci-client's vocabulary ([`Failure`] wraps its error), so that classification,
//! rate limiting and messages in the parent module see one error type.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use moka::Expiry;
use moka::future::Cache;
use oci_client::Reference;
use oci_client::errors::{OciDistributionError, OciEnvelope};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, Url};

use super::auth::{self, Authorization, TokenKey};
use super::credentials::{Auth, Identity};
use super::dns::GuardedDns;
use super::headers::{self, Challenge};
use super::manifest;
use crate::metrics::{Metrics, StatusClass};

/// A manifest larger than this is refused while it streams in. The distribution spec asks
/// registries to accept manifests up to 4 MiB; none archgate needs comes near.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Redirects followed per request, at most (a blob is redirected once, to storage).
pub const MAX_REDIRECTS: usize = 5;
/// Bytes of an error answer read for its message, at most.
const MAX_ERROR_BYTES: usize = 64 << 10;
/// Errors of a registry's error answer kept, at most.
const MAX_ERRORS_KEPT: usize = 4;
/// What archgate reads from a registry, and the bound on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Manifest,
    Blob,
}

/// Why a redirect was not followed. Checked before any connection to the target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectRefused {
    #[error(
        "the registry redirected to {0}, a link-local or cloud-metadata address; archgate never fetches from there"
    )]
    Metadata(String),
    #[error(
        "the registry redirected to {0}, a loopback address, though the registry itself is not on this host"
    )]
    Loopback(String),
    #[error(
        "the registry redirected a manifest request to another host ({0}); only blob downloads may leave the registry"
    )]
    ManifestElsewhere(String),
    #[error("the registry redirected from https to plain http ({0})")]
    Downgrade(String),
    #[error("the registry redirected more than {MAX_REDIRECTS} times")]
    TooMany,
}

/// Addresses no registry content is fetched from, whatever a registry or DNS says: link-local
/// (169.254.0.0/16 holds the cloud metadata services), the AWS IPv6 metadata address
/// `fd00:ec2::254`, IPv6 link-local, and unspecified, broadcast or multicast addresses.
/// An IPv4 address mapped into IPv6 (`::ffff:169.254.169.254`) is judged as the IPv4 address.
pub fn forbidden(ip: IpAddr) -> bool {
    const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()
        }
        IpAddr::V6(v6) => {
            v6 == AWS_METADATA_V6
                || v6.is_unicast_link_local()
                || v6.is_unspecified()
                || v6.is_multicast()
        }
    }
}

/// The URL's host as an address, when it is written as one.
fn host_ip(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Whether the URL names this host. An address is judged in its canonical form:
/// `Ipv6Addr::is_loopback` is false for `::ffff:127.0.0.1`, which reaches 127.0.0.1 all the same.
fn is_loopback_host(url: &Url) -> bool {
    match host_ip(url) {
        Some(ip) => ip.to_canonical().is_loopback(),
        None => url.host_str().is_some_and(is_loopback_name),
    }
}

/// Whether a host name means this host wherever it is resolved (RFC 6761: `localhost` and
/// names under it).
pub(super) fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Whether a request to `origin` may follow a redirect to `target`. Blob downloads may go to
/// another host (registries redirect to object storage); manifest requests stay on the
/// registry unless `manifest_hosts` names it; nobody goes to a metadata address, or to this
/// host from a registry elsewhere, or from https down to http.
pub fn check_redirect(
    origin: &Url,
    target: &Url,
    manifest_hosts: &[String],
) -> std::result::Result<(), RedirectRefused> {
    let shown = || {
        let mut s = format!("{}://{}", target.scheme(), target.host_str().unwrap_or(""));
        if let Some(port) = target.port() {
            s.push_str(&format!(":{port}"));
        }
        s
    };
    if host_ip(target).is_some_and(forbidden) {
        return Err(RedirectRefused::Metadata(shown()));
    }
    if is_loopback_host(target) && !is_loopback_host(origin) {
        return Err(RedirectRefused::Loopback(shown()));
    }
    if origin.scheme() == "https" && target.scheme() != "https" {
        return Err(RedirectRefused::Downgrade(shown()));
    }
    let same_host = origin.host_str() == target.host_str()
        && origin.port_or_known_default() == target.port_or_known_default();
    let origin_host = match origin.port() {
        Some(port) => format!("{}:{port}", origin.host_str().unwrap_or("")),
        None => origin.host_str().unwrap_or("").to_string(),
    };
    if origin.path().contains("/manifests/") && !same_host && !manifest_hosts.contains(&origin_host)
    {
        return Err(RedirectRefused::ManifestElsewhere(shown()));
    }
    Ok(())
}

/// A registry request that failed: oci-client's vocabulary for what went wrong (the
/// classification in `errors.rs` speaks it), plus what the answer said about waiting and
/// authenticating. Cloneable, so one failed token request answers every lookup that
/// was waiting on it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: Arc<OciDistributionError>,
    /// A 429's `Retry-After`, when it had a readable one.
    pub retry_after: Option<Duration>,
    /// A 401's challenge.
    pub(super) challenge: Option<Challenge>,
}

impl Failure {
    /// The HTTP status, when the registry answered.
    pub fn status(&self) -> Option<u16> {
        match &*self.error {
            OciDistributionError::ServerError { code, .. } => Some(*code),
            OciDistributionError::RequestError(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }
}

impl From<OciDistributionError> for Failure {
    fn from(error: OciDistributionError) -> Self {
        Self {
            error: Arc::new(error),
            retry_after: None,
            challenge: None,
        }
    }
}

impl From<reqwest::Error> for Failure {
    fn from(error: reqwest::Error) -> Self {
        OciDistributionError::RequestError(error).into()
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// One registry request's subject: the host it is throttled and counted under (`docker.io`,
/// a mirror's `HOST[:PORT]`), the reference as addressed to that host, and who asks.
pub struct Target<'a> {
    pub host: &'a str,
    pub reference: &'a Reference,
    pub auth: &'a Auth,
    pub identity: Identity,
}

/// Registry reads with caps, digest checks and guarded redirects, on one HTTP client that
/// every request to a registry or token endpoint goes through (so every one is counted).
pub struct Fetcher {
    settings: ClientSettings,
    /// Built on first use: loading the system's root certificates is most of a CLI run's
    /// startup, and a run that sends nothing (a bad reference, a cached answer) skips it.
    http: OnceLock<reqwest::Client>,
    insecure: Vec<String>,
    /// Registry origin → how it wants to be authenticated, learned from the first answer.
    pub(super) challenges: Cache<String, Challenge>,
    pub(super) tokens: Cache<TokenKey, (Authorization, Duration)>,
    metrics: Arc<Metrics>,
}

/// Registry settings the fetcher needs.
pub struct FetchOptions<'a> {
    pub insecure: &'a [String],
    pub ca_pem: Option<&'a [u8]>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Registries (`HOST[:PORT]`) whose manifest requests may follow a redirect elsewhere.
    pub manifest_redirect_hosts: &'a [String],
    /// Requests in flight per host, at most (the throttle's bound); idle connections kept
    /// per host are bounded by the same number.
    pub concurrency: usize,
}

/// What the HTTP client is built from.
struct ClientSettings {
    ca: Option<reqwest::Certificate>,
    connect_timeout: Duration,
    read_timeout: Duration,
    manifest_redirect_hosts: Vec<String>,
    concurrency: usize,
    /// The system resolver, bounded; tests put a name of their own on 127.0.0.1 with it.
    dns: GuardedDns,
}

struct TokenLifetime;

impl Expiry<TokenKey, (Authorization, Duration)> for TokenLifetime {
    fn expire_after_create(
        &self,
        _: &TokenKey,
        value: &(Authorization, Duration),
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

/// Registry hosts whose challenge is remembered, at most (a challenge is at most a few KiB:
/// `headers::MAX_CHALLENGE_PARAM_BYTES`).
const MAX_HOSTS: u64 = 10_000;

impl Fetcher {
    pub fn new(
        options: FetchOptions<'_>,
        metrics: Arc<Metrics>,
    ) -> std::result::Result<Self, reqwest::Error> {
        let ca = options
            .ca_pem
            .map(reqwest::Certificate::from_pem)
            .transpose()?;
        Ok(Self {
            settings: ClientSettings {
                ca,
                connect_timeout: options.connect_timeout,
                read_timeout: options.read_timeout,
                manifest_redirect_hosts: options.manifest_redirect_hosts.to_vec(),
                concurrency: options.concurrency,
                dns: GuardedDns::system(),
            },
            http: OnceLock::new(),
            insecure: options.insecure.to_vec(),
            challenges: Cache::new(MAX_HOSTS),
            // Weighed in bytes, not counted: 10,000 tokens of up to 64 KiB each were 640 MB.
            tokens: Cache::builder()
                .weigher(auth::token_weight)
                .max_capacity(auth::MAX_TOKEN_CACHE_BYTES)
                .expire_after(TokenLifetime)
                .build(),
            metrics,
        })
    }

    /// This fetcher with `dns` in place of the system resolver: a test's registry can then have
    /// a name that is not a loopback name, and be treated as on another host.
    #[cfg(test)]
    pub(super) fn with_dns(mut self, dns: GuardedDns) -> Self {
        self.settings.dns = dns;
        self
    }

    /// The HTTP client, built on first use.
    pub(super) fn http(&self) -> Result<&reqwest::Client> {
        if let Some(client) = self.http.get() {
            return Ok(client);
        }
        let built = self.settings.build()?;
        Ok(self.http.get_or_init(|| built))
    }

    /// `scheme://host[:port]` of the registry `reference` is asked at.
    pub(super) fn origin(&self, reference: &Reference) -> String {
        let registry = reference.resolve_registry();
        let scheme = if self.insecure.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{registry}")
    }

    fn url(&self, reference: &Reference, tail: &str) -> String {
        let ns = reference
            .namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default();
        format!(
            "{}/v2/{}/{tail}{ns}",
            self.origin(reference),
            reference.repository()
        )
    }

    fn manifest_url(&self, reference: &Reference) -> String {
        let tail = match reference.digest() {
            Some(digest) => format!("manifests/{digest}"),
            None => format!("manifests/{}", reference.tag().unwrap_or("latest")),
        };
        self.url(reference, &tail)
    }

    /// Sends one request, counting it under `host` with its status class and latency and
    /// reading the registry's rate-limit headers; any status but 2xx is a [`Failure`].
    pub(super) async fn send(
        &self,
        host: &str,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response> {
        let started = Instant::now();
        let sent = request.send().await;
        let class = match &sent {
            Ok(response) => StatusClass::of(response.status().as_u16()),
            Err(e) => e
                .status()
                .map_or(StatusClass::Transport, |s| StatusClass::of(s.as_u16())),
        };
        self.metrics.observe_registry(class, started.elapsed());
        let response = sent?;
        let count = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(headers::rate_limit_count)
        };
        if let Some(remaining) = count("ratelimit-remaining") {
            self.metrics
                .observe_rate_limit(host, count("ratelimit-limit"), remaining);
        }
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(failure(response, url).await)
        }
    }

    /// An authorised request about `target`. A 401 carrying a challenge other than the one
    /// archgate answered (on first contact: any challenge) is learned from, and the request
    /// made once more with what the challenge asks for, unless that is what was just refused.
    async fn request(
        &self,
        target: &Target<'_>,
        method: Method,
        url: &str,
        accept: &[&str],
    ) -> Result<reqwest::Response> {
        let origin = self.origin(target.reference);
        let mut retried = false;
        // The refused attempt's Authorization and answer, while its retry is prepared.
        let mut refused: Option<(Authorization, Failure)> = None;
        loop {
            let known = self.challenges.get(&origin).await;
            let authorization = self.authorization(target, &origin, known.as_ref()).await?;
            // Learning the challenge changed nothing (a Basic challenge and no Basic
            // credentials): the same request would be refused the same way.
            if let Some((sent, failure)) = refused.take()
                && sent == authorization
            {
                return Err(failure);
            }
            let mut request = self.http()?.request(method.clone(), url);
            if !accept.is_empty() {
                request = request.header(ACCEPT, accept.join(", "));
            }
            if let Some(value) = authorization.clone() {
                request = request.header(AUTHORIZATION, value);
            }
            let answered = self.send(target.host, request, url).await;
            match answered {
                Err(failure) if failure.status() == Some(401) && !retried => {
                    match failure.challenge.clone() {
                        Some(challenge) if Some(&challenge) != known.as_ref() => {
                            self.challenged(
                                target,
                                &origin,
                                known.as_ref(),
                                challenge,
                                &authorization,
                            )
                            .await;
                        }
                        // The same Bearer challenge refused the token it asked for (revoked,
                        // or signed with a key the registry has since rotated): kept, it would
                        // fail every lookup until it expired. Bought afresh, once.
                        Some(Challenge::Bearer { .. }) if authorization.is_some() => {
                            self.refused_token(target, &origin, &authorization).await;
                        }
                        _ => return Err(failure),
                    }
                    retried = true;
                    refused = Some((authorization, failure));
                }
                answered => {
                    if known.is_none() {
                        self.learn(&origin, &answered).await;
                    }
                    return answered;
                }
            }
        }
    }

    /// Reads `response`'s body against `cap` (as a blob or an error answer).
    pub(super) async fn read(&self, response: reqwest::Response, cap: usize) -> Result<Vec<u8>> {
        Ok(read_capped(response, Content::Blob, cap).await?)
    }

    /// Tag → manifest digest with one HEAD (a GET, capped, when the registry sends no
    /// `Docker-Content-Digest`): how a cached tag past its lifetime is checked.
    pub async fn digest(&self, target: &Target<'_>) -> Result<String> {
        let url = self.manifest_url(target.reference);
        let head = self
            .request(target, Method::HEAD, &url, manifest::ACCEPT)
            .await?;
        if let Some(digest) = content_digest(&head) {
            return Ok(digest);
        }
        let response = self
            .request(target, Method::GET, &url, manifest::ACCEPT)
            .await?;
        let body = read_capped(response, Content::Manifest, MAX_MANIFEST_BYTES).await?;
        Ok(sha256(&body))
    }

    /// The manifest `target` names (by tag or digest) and its digest, in one GET: the body is
    /// read against [`MAX_MANIFEST_BYTES`] and checked against the digest asked for, or the one
    /// the registry states.
    pub async fn manifest(&self, target: &Target<'_>) -> Result<(String, Vec<u8>)> {
        let url = self.manifest_url(target.reference);
        let response = self
            .request(target, Method::GET, &url, manifest::ACCEPT)
            .await?;
        let stated = content_digest(&response);
        let body = read_capped(response, Content::Manifest, MAX_MANIFEST_BYTES).await?;
        let digest = match target.reference.digest().map(str::to_string).or(stated) {
            Some(expected) => {
                verify(&body, &expected)?;
                expected
            }
            None => sha256(&body),
        };
        Ok((digest, body))
    }

    /// A blob of `target`'s repository, at most `cap` bytes, checked against `digest`.
    pub async fn blob(&self, target: &Target<'_>, digest: &str, cap: usize) -> Result<Vec<u8>> {
        // The digest is the manifest's claim: one archgate could not check is refused before
        // it goes into a URL.
        checkable(digest)?;
        let url = self.url(target.reference, &format!("blobs/{digest}"));
        let response = self.request(target, Method::GET, &url, &[]).await?;
        let body = read_capped(response, Content::Blob, cap).await?;
        verify(&body, digest)?;
        Ok(body)
    }
}

impl ClientSettings {
    fn build(&self) -> std::result::Result<reqwest::Client, reqwest::Error> {
        let manifest_hosts = self.manifest_redirect_hosts.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(RedirectRefused::TooMany);
            }
            let verdict = match attempt.previous().first() {
                Some(origin) => check_redirect(origin, attempt.url(), &manifest_hosts),
                None => Ok(()),
            };
            match verdict {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let mut builder = reqwest::Client::builder()
            .redirect(policy)
            .dns_resolver(self.dns.clone())
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .pool_max_idle_per_host(self.concurrency)
            .user_agent(concat!("archgate/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &self.ca {
            builder = builder.tls_certs_merge([ca.clone()]);
        }
        builder.build()
    }
}

/// The registry's `Docker-Content-Digest`, when well formed: a digest archgate can check
/// ([`checkable`]) in the lowercase hex the OCI image spec requires. Any other value is ignored,
/// not refused: the header is only a claim, and without it archgate uses the sha256 of what it
/// read, so a registry (or a proxy in front of it) that mangles the header keeps working, and the
/// mangled value (up to hyper's ~400 KB header buffer) never reaches a cache or a message.
fn content_digest(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .filter(|v| checkable(v).is_ok_and(|(_, hex)| !hex.bytes().any(|b| b.is_ascii_uppercase())))
        .map(str::to_string)
}

/// A non-success answer as oci-client would report it, but keeping the status (a 429 is
/// reported as 429 and a 5xx as a server fault, whatever the body says), a 429's
/// `Retry-After` and a 401's challenge.
async fn failure(response: reqwest::Response, url: &str) -> Failure {
    let code = response.status().as_u16();
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let retry_after = (code == 429)
        .then(|| header(RETRY_AFTER))
        .flatten()
        .and_then(|v| headers::retry_after(v, SystemTime::now()));
    // A challenge is the registry's only when its answer came from the registry: a 401 from a
    // host it redirected to (blob storage) would otherwise be learned as the registry's, and its
    // realm, of that host's choosing, sent the registry's credentials.
    let from_registry = Url::parse(url).is_ok_and(|asked| {
        let answered = response.url();
        (
            asked.scheme(),
            asked.host_str(),
            asked.port_or_known_default(),
        ) == (
            answered.scheme(),
            answered.host_str(),
            answered.port_or_known_default(),
        )
    });
    let challenge = (code == 401 && from_registry)
        .then(|| header(WWW_AUTHENTICATE))
        .flatten()
        .and_then(Challenge::parse);
    let body = read_capped(response, Content::Blob, MAX_ERROR_BYTES)
        .await
        .unwrap_or_default();
    let error = match serde_json::from_slice::<OciEnvelope>(&body) {
        Ok(mut envelope)
            if !matches!(code, 401 | 403 | 404 | 429 | 500..=599)
                && !envelope.errors.is_empty() =>
        {
            // The registry's own words reach logs and a lookup's reason: a few, kept short,
            // like the other server errors below (64 KiB of them is allowed on the wire).
            envelope.errors.truncate(MAX_ERRORS_KEPT);
            for e in &mut envelope.errors {
                e.message = e.message.chars().take(200).collect();
                e.detail = serde_json::Value::Null;
            }
            OciDistributionError::RegistryError {
                envelope,
                url: url.to_string(),
            }
        }
        _ => OciDistributionError::ServerError {
            code,
            url: url.to_string(),
            message: String::from_utf8_lossy(&body).chars().take(200).collect(),
        },
    };
    Failure {
        error: Arc::new(error),
        retry_after,
        challenge,
    }
}

/// Reads `response`'s body as it streams, failing as soon as it passes `cap` bytes (a
/// `Content-Length` over the cap fails before any byte is read).
async fn read_capped(
    response: reqwest::Response,
    what: Content,
    cap: usize,
) -> std::result::Result<Vec<u8>, OciDistributionError> {
    let too_large = || {
        OciDistributionError::SpecViolationError(match what {
            Content::Manifest => format!("the manifest is larger than {cap} bytes"),
            Content::Blob => format!("the blob is larger than {cap} bytes"),
        })
    };
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn sha256(body: &[u8]) -> String {
    format!("sha256:{}", hex(&ring::digest::SHA256, body))
}

fn hex(algorithm: &'static ring::digest::Algorithm, body: &[u8]) -> String {
    let hash = ring::digest::digest(algorithm, body);
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Characters of a digest archgate could not read that a message quotes, at most.
const MAX_SHOWN_DIGEST: usize = 80;

/// The algorithm and hex of a digest archgate can check: sha256, sha384 or sha512 (the OCI image
/// spec's registered algorithms, all in `ring`) with exactly their length of hex digits. Any other
/// digest is unreadable: content it names would be taken unchecked.
fn checkable(
    digest: &str,
) -> std::result::Result<(&'static ring::digest::Algorithm, &str), OciDistributionError> {
    let (name, hex) = digest.split_once(':').unwrap_or((digest, ""));
    let algorithm = match name {
        "sha256" => Some(&ring::digest::SHA256),
        "sha384" => Some(&ring::digest::SHA384),
        "sha512" => Some(&ring::digest::SHA512),
        _ => None,
    };
    let length = crate::reference::grammar::digest_hex_length(name);
    if let (Some(algorithm), Some(length)) = (algorithm, length)
        && hex.len() == length
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Ok((algorithm, hex));
    }
    let mut shown: String = digest.chars().take(MAX_SHOWN_DIGEST).collect();
    if shown.len() < digest.len() {
        shown.push('…');
    }
    Err(OciDistributionError::SpecViolationError(format!(
        "the digest {shown:?} is not one archgate can check: sha256, sha384 or sha512 in hex"
    )))
}

/// Content fetched by digest must hash to it (mirrors and redirects make this the only
/// guarantee of what was read), in whichever of [`checkable`]'s algorithms it names; a digest in
/// any other is refused, never taken as served.
fn verify(body: &[u8], expected: &str) -> std::result::Result<(), OciDistributionError> {
    let (algorithm, expected_hex) = checkable(expected)?;
    let actual = hex(algorithm, body);
    if actual.eq_ignore_ascii_case(expected_hex) {
        Ok(())
    } else {
        Err(OciDistributionError::SpecViolationError(format!(
            "the content does not match its digest {expected} (got {actual})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn metadata_and_link_local_addresses_are_forbidden() {
        for bad in [
            "169.254.169.254",
            "169.254.0.1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            assert!(forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "10.34.0.202",
            "127.0.0.1",
            "::1",
            "2001:db8::1",
            "fd00:ec2::253",
        ] {
            assert!(!forbidden(good.parse().unwrap()), "{good}");
        }
    }

    fn digest_of(algorithm: &'static ring::digest::Algorithm, name: &str, body: &[u8]) -> String {
        format!("{name}:{}", hex(algorithm, body))
    }

    /// sha256, sha384 and sha512 are all checked; content that does not hash to its digest is
    /// refused whatever the algorithm, and a digest in any other algorithm is refused unread.
    #[test]
    fn content_is_checked_in_every_algorithm() {
        let body = br#"{"schemaVersion":2}"#;
        let other = br#"{"schemaVersion":3}"#;
        for (algorithm, name) in [
            (&ring::digest::SHA256, "sha256"),
            (&ring::digest::SHA384, "sha384"),
            (&ring::digest::SHA512, "sha512"),
        ] {
            let digest = digest_of(algorithm, name, body);
            assert!(verify(body, &digest).is_ok(), "{digest}");
            // A pinned reference may write the hex in upper case.
            let upper = format!("{name}:{}", hex(algorithm, body).to_ascii_uppercase());
            assert!(verify(body, &upper).is_ok(), "{upper}");
            let wrong = digest_of(algorithm, name, other);
            assert!(verify(body, &wrong).is_err(), "{wrong}");
        }
        let huge = format!("sha512:{}", "z".repeat(400_000));
        for unreadable in [
            "md5:5d41402abc4b2a76b9719d911017c592",
            "sha512:abcd",
            "sha256",
            "",
            huge.as_str(),
        ] {
            let error = verify(body, unreadable).unwrap_err().to_string();
            assert!(error.len() < 300, "{} bytes", error.len());
        }
    }

    fn with_digest_header(value: &str) -> reqwest::Response {
        let response = axum::http::Response::builder()
            .header("docker-content-digest", value)
            .body(Vec::<u8>::new())
            .unwrap();
        response.into()
    }

    /// A `Docker-Content-Digest` is taken only when it is a digest archgate can check, written
    /// as the spec writes it; anything else (a garbage or overlong header) is ignored.
    #[test]
    fn only_well_formed_content_digests_are_taken() {
        let sha256 = sha256(b"x");
        let sha512 = digest_of(&ring::digest::SHA512, "sha512", b"x");
        for good in [&sha256, &sha512] {
            assert_eq!(
                content_digest(&with_digest_header(good)).as_ref(),
                Some(good)
            );
        }
        for bad in [
            format!("sha512:{}", "z".repeat(200_000)),
            format!("sha256:{}", "a".repeat(65)),
            format!(
                "sha256:{}",
                hex(&ring::digest::SHA256, b"x").to_ascii_uppercase()
            ),
            "sha256:".to_string(),
            "sha1:0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33".to_string(),
        ] {
            let taken = content_digest(&with_digest_header(&bad));
            assert!(taken.is_none(), "{bad:.80}");
        }
    }

    /// A 401 whose challenge is past its bounds carries no challenge: there is nothing to
    /// remember for the host, and the 401 is the answer.
    #[tokio::test]
    async fn an_oversized_challenge_is_not_read() {
        let url = "https://r.example/v2/a/manifests/1";
        // Answered by the registry asked (a challenge from anywhere else is not learned).
        let unauthorized = |challenge: &str| -> reqwest::Response {
            use reqwest::ResponseBuilderExt;
            axum::http::Response::builder()
                .status(401)
                .url(Url::parse(url).unwrap())
                .header(WWW_AUTHENTICATE, challenge)
                .body(Vec::<u8>::new())
                .unwrap()
                .into()
        };
        let huge = format!(
            r#"Bearer realm="https://auth.example/{}""#,
            "r".repeat(400_000)
        );
        let refused = failure(unauthorized(&huge), url).await;
        assert_eq!(refused.status(), Some(401));
        assert!(refused.challenge.is_none());
        let real = failure(
            unauthorized(r#"Bearer realm="https://auth.example/token""#),
            url,
        )
        .await;
        assert!(real.challenge.is_some());
    }

    /// Before: an error answer's envelope was kept as sent, up to 64 KiB of messages and
    /// details, and went into logs and a lookup's reason whole.
    #[tokio::test]
    async fn a_registry_error_envelope_is_kept_short() {
        let message = "m".repeat(500);
        let errors: Vec<serde_json::Value> = (0..50)
            .map(|_| serde_json::json!({"code": "NAME_INVALID", "message": message, "detail": {"x": message}}))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "errors": errors })).unwrap();
        let response: reqwest::Response = axum::http::Response::builder()
            .status(400)
            .body(body)
            .unwrap()
            .into();
        let failed = failure(response, "https://r.example/v2/a/manifests/1").await;
        let OciDistributionError::RegistryError { envelope, .. } = &*failed.error else {
            panic!("{:?}", failed.error)
        };
        assert_eq!(envelope.errors.len(), MAX_ERRORS_KEPT);
        assert!(
            envelope
                .errors
                .iter()
                .all(|e| e.message.len() == 200 && e.detail.is_null())
        );
    }

    /// A registry on 127.0.0.1 known by a name that is not a loopback name (so it counts as
    /// elsewhere) redirects a blob download to `target` (`{port}` is a local service's port).
    /// Returns whether the local service was reached, and the download's error.
    async fn redirected_from_elsewhere_to(target: &str) -> (bool, String) {
        use std::sync::atomic::{AtomicBool, Ordering};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let reached = Arc::new(AtomicBool::new(false));
        let local = axum::Router::new().fallback({
            let reached = reached.clone();
            move || {
                reached.store(true, Ordering::SeqCst);
                std::future::ready("hello")
            }
        });
        let serve = |router: axum::Router| async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let task = tokio::spawn(async move { axum::serve(listener, router).await });
            (port, task)
        };
        let (local_port, local_task) = serve(local).await;
        let target = target.replace("{port}", &local_port.to_string());
        let registry = axum::Router::new().fallback(move || {
            let target = target.clone();
            std::future::ready(axum::response::IntoResponse::into_response((
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, target)],
            )))
        });
        let (port, registry_task) = serve(registry).await;
        let host = format!("registry.test:{port}");
        // Every name is on 127.0.0.1 here, as a rebinding DNS server would answer.
        let dns = GuardedDns::with_lookup(Arc::new(|_: &str| {
            Ok(vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))])
        }))
        .with_loopback_aliases(&["registry.test"]);
        let insecure = [host.clone()];
        let fetcher = Fetcher::new(
            FetchOptions {
                insecure: &insecure,
                ca_pem: None,
                connect_timeout: Duration::from_secs(2),
                read_timeout: Duration::from_secs(2),
                manifest_redirect_hosts: &[],
                concurrency: 1,
            },
            Arc::new(Metrics::new()),
        )
        .unwrap()
        .with_dns(dns);
        let reference: Reference = format!("{host}/a/b:1").parse().unwrap();
        let auth = Auth::Direct(oci_client::secrets::RegistryAuth::Anonymous);
        let target = Target {
            host: &host,
            reference: &reference,
            auth: &auth,
            identity: 0,
        };
        let answer = fetcher.blob(&target, &sha256(b"hello"), 1 << 10).await;
        local_task.abort();
        registry_task.abort();
        let error = match answer {
            Ok(_) => String::new(),
            Err(e) => super::super::errors::describe_transport(&*e.error),
        };
        (reached.load(Ordering::SeqCst), error)
    }

    /// Before: the loopback rule compared the redirect target with `Ipv6Addr::is_loopback`, false
    /// for the IPv4-mapped form, so a registry elsewhere could send archgate to
    /// `http://[::ffff:127.0.0.1]:PORT/`, a service on archgate's own host.
    #[tokio::test]
    async fn a_remote_registry_cannot_redirect_to_mapped_loopback() {
        let (reached, error) =
            redirected_from_elsewhere_to("http://[::ffff:127.0.0.1]:{port}/secret").await;
        assert!(!reached, "the local service was reached");
        assert!(error.contains("a loopback address"), "{error}");
    }

    /// Before: the rule read the target's address as written, so a name of the registry's
    /// choosing whose DNS answers 127.0.0.1 (`rebind.test` here) reached the local service.
    #[tokio::test]
    async fn a_remote_registry_cannot_redirect_to_a_name_on_loopback() {
        let (reached, error) =
            redirected_from_elsewhere_to("http://rebind.test:{port}/secret").await;
        assert!(!reached, "the local service was reached");
        assert!(
            error.contains("rebind.test resolves only to loopback addresses"),
            "{error}"
        );
    }

    #[test]
    fn redirect_rules() {
        let none: &[String] = &[];
        let blob = url("https://registry.example/v2/a/blobs/sha256:x");
        let manifest = url("https://registry.example/v2/a/manifests/v1");
        let storage = url("https://storage.example/bucket/x?sig=1");
        assert_eq!(check_redirect(&blob, &storage, none), Ok(()));
        assert!(matches!(
            check_redirect(&manifest, &storage, none),
            Err(RedirectRefused::ManifestElsewhere(_))
        ));
        assert_eq!(
            check_redirect(&manifest, &storage, &["registry.example".into()]),
            Ok(())
        );
        assert_eq!(
            check_redirect(
                &manifest,
                &url("https://registry.example/other/manifests/v1"),
                none
            ),
            Ok(())
        );
        for metadata in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
        ] {
            assert!(matches!(
                check_redirect(&blob, &url(metadata), none),
                Err(RedirectRefused::Metadata(_))
            ));
        }
        assert!(matches!(
            check_redirect(&blob, &url("https://127.0.0.1:8080/x"), none),
            Err(RedirectRefused::Loopback(_))
        ));
        assert!(matches!(
            check_redirect(&blob, &url("https://localhost/x"), none),
            Err(RedirectRefused::Loopback(_))
        ));
        // Loopback however it is written: IPv6, and IPv4 mapped into IPv6.
        for loopback in [
            "https://[::1]/x",
            "https://[::ffff:127.0.0.1]:8080/x",
            "https://[::ffff:127.1.2.3]/x",
        ] {
            assert!(
                matches!(
                    check_redirect(&blob, &url(loopback), none),
                    Err(RedirectRefused::Loopback(_))
                ),
                "{loopback}"
            );
        }
        // A registry on this host written in the mapped form is on this host.
        let mapped = url("http://[::ffff:127.0.0.1]:5000/v2/a/blobs/sha256:x");
        assert_eq!(
            check_redirect(&mapped, &url("http://127.0.0.1:5001/x"), none),
            Ok(())
        );
        assert!(matches!(
            check_redirect(&blob, &url("http://storage.example/x"), none),
            Err(RedirectRefused::Downgrade(_))
        ));
        // A registry on this host may redirect within this host.
        let local = url("http://127.0.0.1:5000/v2/a/blobs/sha256:x");
        assert_eq!(
            check_redirect(&local, &url("http://127.0.0.1:5001/x"), none),
            Ok(())
        );
    }
}
