//! Where to ask for an image: the mirrors (containerd's hosts.toml idea), then the origin, each
//! with the credentials that host gets.

use oci_client::Reference;

use super::fetch::Target;
use super::{Auth, Credentials, Identity};
use crate::reference::ImageRef;

/// One host to ask for an image: a mirror, or (always last) the origin registry.
pub(super) struct Hop<'a> {
    /// `HOST[:PORT]` the requests go to; throttles and error messages are per host.
    pub(super) host: &'a str,
    pub(super) mirror: bool,
    pub(super) auth: Auth,
    pub(super) identity: Identity,
}

impl<'a> Hop<'a> {
    /// `image`'s own registry, with the credentials it gets.
    pub(super) fn origin(image: &'a ImageRef, credentials: &Credentials) -> Self {
        let (auth, identity) = credentials.for_registry(image.registry());
        Hop {
            host: image.registry(),
            mirror: false,
            auth,
            identity,
        }
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
    pub(super) hops: Vec<Hop<'a>>,
    /// The cache key's identity: the origin credentials' identity, mixed with the mirrors' when
    /// any mirror is asked with credentials (what a private mirror showed must not be served
    /// to a caller without them).
    pub(super) identity: Identity,
}

impl Route<'_> {
    pub(super) fn mirrors(&self) -> &[Hop<'_>] {
        &self.hops[..self.hops.len() - 1]
    }

    pub(super) fn origin(&self) -> &Hop<'_> {
        &self.hops[self.hops.len() - 1]
    }
}
