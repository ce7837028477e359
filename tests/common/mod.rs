//! Shared integration-test harness: a real registry (Debian's `docker-registry`, CNCF distribution
//! 2.8) on 127.0.0.1, fixture images pushed over the plain distribution API, a counting proxy
//! that can inject faults in front of the registry, and a minimal token server for registries
//! with bearer-token auth. Nothing here touches the internet.
//!
//! Each test binary includes this with `mod common;` and uses only part of it, hence the
//! crate-wide `dead_code` allowance below.
#![allow(dead_code, unused_imports)]

pub mod apiserver;
pub mod images;
pub mod proxy;
pub mod registry;
pub mod sandbox;
pub mod token;
pub mod webhook;

pub use images::{
    Fixtures, ImageFormat, ImageSpec, PlatformSpec, PushedImage, PushedManifest, media_types,
    push_image, push_standard_fixtures, push_tekton_bundle,
};
pub use proxy::{CountingProxy, Counts, Fault, FaultRule, RequestKind};
pub use registry::{Credentials, Registry};
pub use token::{
    Access, BearerChallenge, Presented, TokenCounts, TokenPolicy, TokenRequest, TokenServer,
};

/// Installs the ring rustls provider for this test binary. Every harness entry point calls it,
/// because reqwest built without a provider panics on `Client::build` otherwise; the error from a
/// second install is the expected "already installed" and is ignored.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `sha256:<hex>` of `bytes`, the digest form the distribution API speaks.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The error kube's watcher yields when the API server does not serve a resource (a CRD that is
/// not installed): the initial list answered 404.
pub fn missing_resource_error() -> kube::runtime::watcher::Error {
    kube::runtime::watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
        kube::core::Status::failure(
            "the server could not find the requested resource",
            "NotFound",
        )
        .with_code(404),
    )))
}
