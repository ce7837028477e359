//! What can go wrong asking a registry, classified from oci-client's error vocabulary (which
//! `fetch` reports in) into sentences a user can act on.

use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciErrorCode};

use super::CredentialsError;
use crate::reference::ImageRef;

/// Why an image's platforms could not be learned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("not found in registry {registry}")]
    NotFound { registry: String },
    #[error("registry {registry} refused access: check the docker config or imagePullSecrets")]
    Unauthorized { registry: String },
    #[error("registry {registry} is unreachable: {reason}")]
    Unreachable { registry: String, reason: String },
    /// Nothing accepts connections at the address: a wrong port, or the registry is down.
    #[error("registry {registry} refused the connection: nothing listens there, or it is down")]
    Refused { registry: String },
    /// The TLS certificate does not chain to a CA archgate trusts.
    #[error(
        "registry {registry} presented a TLS certificate archgate does not trust ({reason}): add its CA with --registry-ca"
    )]
    Untrusted { registry: String, reason: String },
    /// A 5xx: the registry is up but failing.
    #[error("registry {registry} failed with HTTP {status}: a fault on the registry's side")]
    ServerFault { registry: String, status: u16 },
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
pub(super) fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl ResolveError {
    pub fn registry(&self) -> &str {
        match self {
            Self::NotFound { registry }
            | Self::Unauthorized { registry }
            | Self::Unreachable { registry, .. }
            | Self::Refused { registry }
            | Self::Untrusted { registry, .. }
            | Self::ServerFault { registry, .. }
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
            Self::Untrusted { registry, .. } => format!(
                "registry {registry}'s TLS certificate is not trusted (add its CA with --registry-ca)"
            ),
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

pub(super) fn not_found(image: &ImageRef) -> ResolveError {
    ResolveError::NotFound {
        registry: image.registry().to_string(),
    }
}

/// A 429, bare or as a distribution error envelope (`TOOMANYREQUESTS`).
pub(super) fn is_rate_limit(e: &OciDistributionError) -> bool {
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
pub(super) fn classify(registry: &str, e: &OciDistributionError) -> ResolveError {
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
        OciDistributionError::ServerError { code, .. } if *code >= 500 => {
            ResolveError::ServerFault {
                registry,
                status: *code,
            }
        }
        OciDistributionError::ServerError { code, .. } => ResolveError::Unreachable {
            registry,
            reason: format!("HTTP {code}"),
        },
        OciDistributionError::RequestError(e) if e.is_timeout() => {
            ResolveError::Timeout { registry }
        }
        OciDistributionError::RequestError(e) => transport(registry, e),
        OciDistributionError::DigestError(e) => ResolveError::InvalidManifest {
            registry,
            reason: e.to_string(),
        },
        OciDistributionError::ManifestParsingError(reason)
        | OciDistributionError::VersionedParsingError(reason)
        | OciDistributionError::SpecViolationError(reason) => ResolveError::InvalidManifest {
            registry,
            reason: reason.clone(),
        },
        other => ResolveError::Unreachable {
            registry,
            reason: other.to_string(),
        },
    }
}

/// A request that got no HTTP answer, by its cause: a refused connection, an untrusted
/// certificate, or (anything else: DNS, resets) unreachable. rustls and the OS say which only in
/// their messages, so the cause chain's text is matched.
pub(super) fn transport(registry: String, e: &(dyn std::error::Error + 'static)) -> ResolveError {
    let reason = describe_transport(e);
    if reason.contains("Connection refused") || reason.contains("os error 111") {
        ResolveError::Refused { registry }
    } else if let Some(cause) = [
        "UnknownIssuer",
        "NotValidForName",
        "Expired",
        "BadSignature",
    ]
    .into_iter()
    .find(|c| reason.contains(c))
    .filter(|_| reason.contains("certificate"))
    {
        ResolveError::Untrusted {
            registry,
            reason: cause.to_string(),
        }
    } else {
        ResolveError::Unreachable { registry, reason }
    }
}

/// reqwest's top-level message is "error sending request"; the cause is in the source chain.
pub(super) fn describe_transport(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.dedup();
    parts.join(": ")
}
