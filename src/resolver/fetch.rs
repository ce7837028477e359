//! The registry reads behind a lookup (tag → digest, manifest, config blob), made with bounds
//! oci-client does not offer.
//!
//! Why not oci-client's own calls: `pull_manifest_raw` buffers the whole body (`bytes()`, a
//! hostile 150 MiB manifest cost 312 MB), its reqwest client follows any redirect to any host,
//! and its errors drop the HTTP status when the body parses as an error envelope (a 429 carrying
//! `DENIED` read as "unreachable"). So the requests are made here on the same reqwest stack,
//! with: bodies read as a stream against a cap ([`MAX_MANIFEST_BYTES`],
//! [`manifest::MAX_CONFIG_BYTES`]) and checked against their digest; the status kept; and a
//! redirect policy ([`check_redirect`]) plus a DNS filter that refuse link-local and
//! cloud-metadata addresses before any connection is made. oci-client still does the token
//! exchange (its `auth`) when the registry challenges; the answer is cached here per credential
//! identity and repository.
//!
//! Errors are expressed as oci-client's, so that classification, rate limiting and metrics in
//! the parent module see one error type whichever code made the request.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use futures::StreamExt;
use moka::Expiry;
use moka::future::Cache;
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, Url};

use super::credentials::Identity;
use super::manifest;

/// A manifest larger than this is refused while it streams in. The distribution spec asks
/// registries to accept manifests up to 4 MiB; none archgate needs comes near.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Redirects followed per request, at most (a blob is redirected once, to storage).
pub const MAX_REDIRECTS: usize = 5;
/// Bytes of an error answer read for its message, at most.
const MAX_ERROR_BYTES: usize = 64 << 10;
/// A token whose lifetime cannot be read from it is kept this long (oci-client's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// How long a registry's answer "send Basic credentials" is remembered before asking again.
const BASIC_LIFETIME: Duration = Duration::from_secs(3600);

type Result<T> = std::result::Result<T, OciDistributionError>;

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
pub fn forbidden(ip: IpAddr) -> bool {
    const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(v4));
            }
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

fn is_loopback_host(url: &Url) -> bool {
    match host_ip(url) {
        Some(ip) => ip.is_loopback(),
        None => url.host_str().is_some_and(|name| {
            let name = name.to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }),
    }
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

/// Resolves names with the system resolver and drops forbidden addresses, so a host name that
/// points at a metadata service is refused before connecting.
struct GuardedDns;

impl reqwest::dns::Resolve for GuardedDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| !forbidden(a.ip()))
                .collect();
            if allowed.is_empty() && !found.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> = format!(
                    "{host} resolves only to link-local or metadata addresses; archgate does not connect there"
                )
                .into();
                return Err(refused);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// How a request is authorised: the header value, if any.
type Authorization = Option<HeaderValue>;

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

/// (credential identity, registry host, repository)
type TokenKey = (Identity, String, String);

/// Registry reads with caps, digest checks and guarded redirects.
pub struct Fetcher {
    http: reqwest::Client,
    insecure: Vec<String>,
    tokens: Cache<TokenKey, (Authorization, Duration)>,
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

impl Fetcher {
    pub fn new(options: FetchOptions<'_>) -> std::result::Result<Self, reqwest::Error> {
        let manifest_hosts = options.manifest_redirect_hosts.to_vec();
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
            .dns_resolver(GuardedDns)
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .pool_max_idle_per_host(options.concurrency)
            .user_agent(concat!("archgate/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = options.ca_pem {
            builder = builder.tls_certs_merge([reqwest::Certificate::from_pem(pem)?]);
        }
        Ok(Self {
            http: builder.build()?,
            insecure: options.insecure.to_vec(),
            tokens: Cache::builder()
                .max_capacity(10_000)
                .expire_after(TokenLifetime)
                .build(),
        })
    }

    /// `scheme://host[:port]` of the registry `reference` is asked at.
    fn origin(&self, reference: &Reference) -> String {
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

    fn manifest_url(reference: &Reference) -> String {
        match reference.digest() {
            Some(digest) => format!("manifests/{digest}"),
            None => format!("manifests/{}", reference.tag().unwrap_or("latest")),
        }
    }

    /// The Authorization header for pulling from `reference`'s repository with `auth`:
    /// oci-client's token exchange, cached until the token expires.
    async fn authorization(
        &self,
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        identity: Identity,
    ) -> Result<Authorization> {
        if let RegistryAuth::Bearer(token) = auth {
            return Ok(header(&format!("Bearer {token}")));
        }
        let key = (
            identity,
            reference.resolve_registry().to_string(),
            reference.repository().to_string(),
        );
        if let Some((authorization, _)) = self.tokens.get(&key).await {
            return Ok(authorization);
        }
        // The API version check says whether the registry wants credentials at all. Made
        // here (not by oci-client) so that anonymous registries see one HTTP client only.
        let ping = self
            .http
            .get(format!("{}/v2/", self.origin(reference)))
            .send()
            .await?;
        let challenged = ping.headers().contains_key(WWW_AUTHENTICATE);
        let _ = read_capped(ping, Content::Blob, MAX_ERROR_BYTES).await;
        if !challenged {
            // Anonymous. Not remembered, as oci-client did not: the registry may start
            // asking, and the ping is how archgate would learn it.
            return Ok(None);
        }
        let token = client
            .auth(reference, auth, RegistryOperation::Pull)
            .await?;
        let (authorization, lifetime) = match (token, auth) {
            (Some(token), _) => (header(&format!("Bearer {token}")), token_lifetime(&token)),
            // A Basic challenge: the credentials go as they are.
            (None, RegistryAuth::Basic(user, password)) => {
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                (header(&format!("Basic {pair}")), BASIC_LIFETIME)
            }
            // A challenge archgate has no credentials for: ask anonymously.
            (None, _) => return Ok(None),
        };
        if !lifetime.is_zero() {
            self.tokens
                .insert(key, (authorization.clone(), lifetime))
                .await;
        }
        Ok(authorization)
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        accept: &[&str],
        authorization: Authorization,
    ) -> Result<reqwest::Response> {
        let mut request = self.http.request(method, url);
        if !accept.is_empty() {
            request = request.header(ACCEPT, accept.join(", "));
        }
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        Err(failure(response, url).await)
    }

    /// Tag (or digest) → manifest digest: a HEAD, or a capped GET when the registry does not
    /// send `Docker-Content-Digest`.
    pub async fn digest(
        &self,
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        identity: Identity,
    ) -> Result<String> {
        let authorization = self
            .authorization(client, reference, auth, identity)
            .await?;
        let url = self.url(reference, &Self::manifest_url(reference));
        let head = self
            .send(Method::HEAD, &url, manifest::ACCEPT, authorization.clone())
            .await?;
        if let Some(digest) = content_digest(&head) {
            return Ok(digest);
        }
        let response = self
            .send(Method::GET, &url, manifest::ACCEPT, authorization)
            .await?;
        let body = read_capped(response, Content::Manifest, MAX_MANIFEST_BYTES).await?;
        Ok(sha256(&body))
    }

    /// The manifest `reference` names (by digest), read against [`MAX_MANIFEST_BYTES`] and
    /// checked against the digest.
    pub async fn manifest(
        &self,
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        identity: Identity,
    ) -> Result<Vec<u8>> {
        let authorization = self
            .authorization(client, reference, auth, identity)
            .await?;
        let url = self.url(reference, &Self::manifest_url(reference));
        let response = self
            .send(Method::GET, &url, manifest::ACCEPT, authorization)
            .await?;
        let body = read_capped(response, Content::Manifest, MAX_MANIFEST_BYTES).await?;
        if let Some(expected) = reference.digest() {
            verify(&body, expected)?;
        }
        Ok(body)
    }

    /// A blob of `reference`'s repository, at most `cap` bytes, checked against `digest`.
    pub async fn blob(
        &self,
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        identity: Identity,
        digest: &str,
        cap: usize,
    ) -> Result<Vec<u8>> {
        let authorization = self
            .authorization(client, reference, auth, identity)
            .await?;
        let url = self.url(reference, &format!("blobs/{digest}"));
        let response = self.send(Method::GET, &url, &[], authorization).await?;
        let body = read_capped(response, Content::Blob, cap).await?;
        verify(&body, digest)?;
        Ok(body)
    }
}

fn header(value: &str) -> Authorization {
    HeaderValue::from_str(value).ok().map(|mut v| {
        v.set_sensitive(true);
        v
    })
}

/// A JWT's `exp` from now, less a second; [`DEFAULT_TOKEN_LIFETIME`] for opaque tokens.
fn token_lifetime(token: &str) -> Duration {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: u64,
    }
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<Claims>(&json).ok())
        .map(|c| c.exp);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match exp {
        Some(exp) => Duration::from_secs(exp.saturating_sub(now).saturating_sub(1)),
        None => DEFAULT_TOKEN_LIFETIME,
    }
}

fn content_digest(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.starts_with("sha256:") || v.starts_with("sha512:"))
        .map(str::to_string)
}

/// A non-success answer as oci-client would report it, but keeping the status: a 429 is
/// reported as 429 and a 5xx as a server fault, whatever the body says.
async fn failure(response: reqwest::Response, url: &str) -> OciDistributionError {
    let code = response.status().as_u16();
    let body = read_capped(response, Content::Blob, MAX_ERROR_BYTES)
        .await
        .unwrap_or_default();
    if !matches!(code, 401 | 403 | 404 | 429 | 500..=599)
        && let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(&body)
        && !envelope.errors.is_empty()
    {
        return OciDistributionError::RegistryError {
            envelope,
            url: url.to_string(),
        };
    }
    let text = String::from_utf8_lossy(&body);
    OciDistributionError::ServerError {
        code,
        url: url.to_string(),
        message: text.chars().take(200).collect(),
    }
}

/// Reads `response`'s body as it streams, failing as soon as it passes `cap` bytes (a
/// `Content-Length` over the cap fails before any byte is read).
async fn read_capped(response: reqwest::Response, what: Content, cap: usize) -> Result<Vec<u8>> {
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
    let hash = ring::digest::digest(&ring::digest::SHA256, body);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Content fetched by digest must hash to it (mirrors and redirects make this the only
/// guarantee of what was read). Only sha256 is checked; other algorithms are taken as served.
fn verify(body: &[u8], expected: &str) -> Result<()> {
    if !expected.starts_with("sha256:") {
        return Ok(());
    }
    let actual = sha256(body);
    if actual.eq_ignore_ascii_case(expected) {
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

    #[test]
    fn token_lifetimes_come_from_the_jwt() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{{\"exp\":{}}}", now + 300));
        let lifetime = token_lifetime(&format!("e30.{claims}.sig"));
        assert!(lifetime <= Duration::from_secs(299) && lifetime >= Duration::from_secs(290));
        assert_eq!(token_lifetime("opaque"), DEFAULT_TOKEN_LIFETIME);
    }
}
