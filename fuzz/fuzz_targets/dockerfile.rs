//! Dockerfiles as `archgate check --dockerfile` reads them: any text, with the properties the
//! report relies on. The first line of the input picks the build (target platforms, builder,
//! target stage); the rest is the Dockerfile.
//!
//! Run with: cargo fuzz run -s none -a dockerfile fuzz/corpus/dockerfile fuzz/seeds/dockerfile
#![no_main]

use std::collections::BTreeMap;

use archgate::platform::Platform;
use archgate::workload::dockerfile::{Build, extract};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, dockerfile) = text.split_once('\n').unwrap_or(("", text));
    let mut words = first.split_whitespace();
    let platform = |w: Option<&str>, default: &str| {
        w.and_then(|w| Platform::parse(w).ok())
            .unwrap_or_else(|| Platform::parse(default).unwrap())
    };
    let build = Build {
        target_platforms: vec![
            platform(words.next(), "linux/amd64"),
            Platform::parse("linux/arm64").unwrap(),
        ],
        build_platform: platform(words.next(), "linux/arm64"),
        args: BTreeMap::from([("TAG".to_string(), "1".to_string())]),
        target: words.next().map(str::to_string),
    };
    let Ok(extraction) = extract(dockerfile, &build) else {
        return;
    };
    let lines = dockerfile.lines().count().max(1);
    for target in &extraction.targets {
        let scope = &target.location.scope;
        let line: usize = scope
            .strip_prefix("Dockerfile line ")
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("scope {scope:?} names no line"));
        assert!((1..=lines).contains(&line), "line {line} of {lines}");
        let platforms = target.placement.platforms.as_deref().unwrap_or_default();
        assert!(!platforms.is_empty(), "{scope}: no platform");
        assert!(!target.image.is_empty(), "{scope}: empty image");
    }
});
