//! Image references and platform strings as users write them (pod specs, `--platform`, node
//! labels), with the properties the cache and the policy rely on.
//!
//! The input is split at its first newline: the first part is parsed as an image reference and as
//! a platform, the second as another platform to match against.
//!
//! Run with: cargo fuzz run -s none -a reference_platform fuzz/corpus/reference_platform fuzz/seeds/reference_platform
#![no_main]

use archgate::platform::Platform;
use archgate::reference::{ImageRef, grammar};
use libfuzzer_sys::fuzz_target;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, second) = text.split_once('\n').unwrap_or((text, ""));

    // archgate's hand-written grammar accepts and builds what oci-spec's regex does; it refuses
    // non-ASCII tags, which distribution's (ASCII) grammar and the runtime refuse too.
    let ours = grammar::parse(first).map_err(|e| e.reason().to_string());
    let theirs = oci_client::Reference::try_from(first).map_err(|e| e.to_string());
    if first.is_ascii() {
        assert_eq!(ours, theirs, "{first:?}");
    } else if ours.is_ok() {
        assert_eq!(ours, theirs, "{first:?}");
    }

    if let Ok(image) = ImageRef::parse(first) {
        assert_eq!(image.written(), first.trim());
        assert_eq!(image.to_string(), image.written());
        let canonical = image.canonical();
        let _ = image.repository_path();
        let _ = image.with_digest(DIGEST).whole();
        // The canonical form is the cache key: it must name the same image when read back.
        let again = ImageRef::parse(&canonical)
            .unwrap_or_else(|e| panic!("canonical {canonical:?} of {first:?} does not parse: {e}"));
        assert_eq!(
            again.canonical(),
            canonical,
            "canonical of {first:?} is not stable"
        );
    }

    let a = Platform::parse(first);
    let b = Platform::parse(second);
    for p in [&a, &b].into_iter().flatten() {
        check(p);
        // What `parse` returns is already normal, and its node name (containerd's spelling,
        // with a Windows build) reads back as itself.
        assert_eq!(&p.normalized(), p);
        assert_eq!(Platform::parse(&p.node_name()).as_ref(), Ok(p));
    }
    if let (Ok(a), Ok(b)) = (&a, &b) {
        let _ = a.satisfies(b);
        let _ = b.satisfies(a);
    }

    // Platforms as registries report them: any spelling, not validated.
    let mut parts = first.splitn(3, '/');
    let raw = Platform::new(
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next(),
    );
    check(&raw);
    if let Ok(b) = &b {
        let _ = raw.satisfies(b);
    }
});

fn check(p: &Platform) {
    let _ = p.to_string();
    let _ = p.is_unknown();
    let n = p.normalized();
    assert_eq!(n.normalized(), n, "normalising {p:?} twice changed it");
    assert!(
        p.satisfies(&n),
        "{p:?} does not satisfy its own normal form"
    );
    assert!(p.satisfies(p), "{p:?} does not satisfy itself");
}
