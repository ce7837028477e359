//! Registry documents: image indexes, manifest lists, image manifests (schema 1 and 2) and config
//! blobs, as a registry (or anything in its place) may send them.
//!
//! Run with: cargo fuzz run -s none -a manifest fuzz/corpus/manifest fuzz/seeds/manifest
#![no_main]

use archgate::platform::{self, Platform};
use archgate::resolver::manifest::{Document, parse_config, parse_manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    match parse_manifest(body) {
        Ok(Document::Index(platforms)) => {
            for p in &platforms {
                assert!(!p.is_unknown(), "index kept {p}");
                check(p);
            }
            let _ = platform::list(&platforms);
        }
        Ok(Document::Legacy(p)) => check(&p),
        Ok(Document::Image { config_digest, .. }) => {
            let _ = config_digest.len();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match parse_config(body) {
        Ok(p) => check(&p),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});

/// What the resolver and policy do with a platform a registry reported.
fn check(p: &Platform) {
    let _ = p.to_string();
    let n = p.normalized();
    assert_eq!(n.normalized(), n, "normalising {p:?} twice changed it");
    assert!(
        p.satisfies(&n),
        "{p:?} does not satisfy its own normal form"
    );
    assert!(p.satisfies(p), "{p:?} does not satisfy itself");
}
