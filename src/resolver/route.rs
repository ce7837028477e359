//! Where to ask for an image: the mirrors (containerd's hosts.toml idea), then the origin, each
//! with the credentials that host gets; the origin once per credential the kubelet would try.

use oci_client::Reference;
use tracing::debug;

use super::errors::ResolveError;
use super::fetch::Target;
use super::{Auth, Credentials, Identity};
use crate::reference::ImageRef;

/// One host to ask for an image: a mirror, or (always last) the origin registry.
pub(super) struct Hop<'a> {
    /// `HOST[:PORT]` the requests go to; throttles and error messages are per host.
    pub(super) host: &'a str,
    pub(super) mirror: bool,
    pub(super) auth: Auth,
    /// This credential's own identity: tokens are bought and kept per credential.
    pub(super) identity: Identity,
}

impl<'a> Hop<'a> {
    /// `image`'s own registry, once per credential to try, in the kubelet's order
    /// (`Credentials::pulls_for`); anonymous, once, when no credential matches (as
    /// `PullImage` pulls without credentials only then).
    pub(super) fn origins(image: &'a ImageRef, credentials: &Credentials) -> Vec<Self> {
        let host = image.registry();
        let pulls = credentials.pulls_for(host, image.repository());
        if pulls.is_empty() {
            return vec![Hop {
                host,
                mirror: false,
                auth: Auth::Direct(oci_client::secrets::RegistryAuth::Anonymous),
                identity: 0,
            }];
        }
        pulls
            .into_iter()
            .map(|(auth, identity)| Hop {
                host,
                mirror: false,
                auth,
                identity,
            })
            .collect()
    }

    /// `origin` addressed to this hop (oci-client sends the origin as `?ns=` to a mirror).
    pub(super) fn reference(&self, origin: &Reference) -> Reference {
        let mut reference = origin.clone();
        if self.mirror {
            reference.set_mirror_registry(self.host.to_string());
        }
        reference
    }

    /// A request about `reference` (already addressed to this hop) with this hop's credentials.
    pub(super) fn target<'b>(&'b self, reference: &'b Reference) -> Target<'b> {
        Target {
            host: self.host,
            reference,
            auth: &self.auth,
            identity: self.identity,
        }
    }
}

/// Where to ask, in order, and who is asking.
pub(super) struct Route<'a> {
    /// The mirrors, then the origin once per credential (at least once).
    pub(super) hops: Vec<Hop<'a>>,
    /// The cache key's identity: the origin's (`Credentials::identity_for`: of the ordered
    /// list of credentials tried, not of the one that worked), mixed with the mirrors' when
    /// any mirror is asked with credentials (what a private mirror showed must not be served
    /// to a caller without them).
    pub(super) identity: Identity,
}

impl Route<'_> {
    pub(super) fn mirrors(&self) -> &[Hop<'_>] {
        &self.hops[..self.first_origin()]
    }

    /// The origin with each credential to try, in order; never empty.
    pub(super) fn origins(&self) -> &[Hop<'_>] {
        &self.hops[self.first_origin()..]
    }

    fn first_origin(&self) -> usize {
        self.hops.iter().take_while(|hop| hop.mirror).count()
    }
}

/// `ask` with each of `origins` in turn until one is not refused, as the kubelet's `PullImage`
/// tries each credential the keyring returned and stops at the first that works. Only a
/// refusal (401 or 403, from the registry or its token endpoint) moves on: a timeout, a 5xx or
/// a 429 is about the registry, and the next credential would wait for the same. The last
/// credential's answer is the answer.
pub(super) async fn first_accepted<'h, 'a, T, F, Fut>(
    origins: &'h [Hop<'a>],
    mut ask: F,
) -> Result<T, ResolveError>
where
    F: FnMut(&'h Hop<'a>) -> Fut,
    Fut: Future<Output = Result<T, ResolveError>>,
{
    let mut hops = origins.iter();
    while let Some(hop) = hops.next() {
        match ask(hop).await {
            Err(ResolveError::Unauthorized { .. }) if hops.len() > 0 => {
                debug!(
                    registry = hop.host,
                    "credentials refused; trying the pod's next ones"
                )
            }
            answer => return answer,
        }
    }
    // Not reached: a route always has its origin.
    Err(ResolveError::Unreachable {
        registry: String::new(),
        reason: "no host to ask".into(),
    })
}
