//! Tables for every rule in [`super`], each checked against what containerd's `platforms`
//! package answers for the same pair (its compare_test.go and platforms_test.go cover the same
//! ground).

use super::*;

fn p(s: &str) -> Platform {
    Platform::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// An image platform as a registry writes it (not normalised).
fn image(os: &str, arch: &str, variant: Option<&str>) -> Platform {
    Platform::new(os, arch, variant)
}

fn with_version(mut platform: Platform, version: &str) -> Platform {
    platform.os_version = Some(version.into());
    platform
}

fn with_features(mut platform: Platform, features: &[&str]) -> Platform {
    platform.os_features = features.iter().map(|f| f.to_string()).collect();
    platform
}

const STRICT: RuntimeMatcher = RuntimeMatcher::Strict;
const LEGACY: RuntimeMatcher = RuntimeMatcher::Containerd17;

#[test]
fn parse_normalises_like_containerd() {
    let cases = [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/amd64/v3", "linux/amd64/v3"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/arm64/v8.0", "linux/arm64"),
        ("linux/arm64/9", "linux/arm64/v9"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/7", "linux/arm/v7"),
        ("linux/arm/6", "linux/arm/v6"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/arm/v6", "linux/arm/v6"),
        ("linux/i386", "linux/386"),
        ("windows/amd64", "windows/amd64"),
        (" linux/s390x ", "linux/s390x"),
        ("windows(10.0.17763)/amd64", "windows/amd64 (10.0.17763)"),
        (
            "windows(10.0.20348+win32k)/amd64",
            "windows/amd64 (10.0.20348, win32k)",
        ),
        ("linux(+erofs)/amd64", "linux/amd64 (erofs)"),
    ];
    for (input, want) in cases {
        assert_eq!(p(input).to_string(), want, "{input}");
    }
}

#[test]
fn parse_rejects_bad_shapes() {
    for bad in [
        "",
        "linux",
        "linux/",
        "/amd64",
        "linux/amd64/v8/x",
        "Linux/AMD64",
        "linux/am d64",
        "windows(10.0.17763/amd64",
        "windows(10 0)/amd64",
        "windows(10.0++x)/amd64",
        "(10.0)/amd64",
    ] {
        assert!(Platform::parse(bad).is_err(), "{bad:?} should be rejected");
    }
    let msg = Platform::parse("amd64").unwrap_err().to_string();
    assert!(msg.contains("OS/ARCH"), "{msg}");
}

/// The node platforms of the issue, each under both runtime matchers, against image platforms as
/// registries spell them. `(image, node, strict, containerd-1.7)`: does the node pull it?
#[test]
fn every_node_platform_against_image_platforms() {
    let cases: Vec<(Platform, &str, bool, bool)> = vec![
        // amd64 nodes: only the default variant; 386 only with containerd 1.7.
        (image("linux", "amd64", None), "linux/amd64", true, true),
        (image("linux", "x86_64", None), "linux/amd64", true, true),
        (
            image("linux", "amd64", Some("v1")),
            "linux/amd64",
            true,
            true,
        ),
        (
            image("linux", "amd64", Some("v2")),
            "linux/amd64",
            false,
            false,
        ),
        (
            image("linux", "amd64", Some("v3")),
            "linux/amd64",
            false,
            false,
        ),
        (image("linux", "386", None), "linux/amd64", false, true),
        (image("linux", "i386", None), "linux/amd64", false, true),
        (image("linux", "arm64", None), "linux/amd64", false, false),
        (image("windows", "amd64", None), "linux/amd64", false, false),
        // a node that says it is x86-64-v3 runs v3..v1 and 386 with containerd 1.7 only
        (image("linux", "amd64", None), "linux/amd64/v3", false, true),
        (
            image("linux", "amd64", Some("v2")),
            "linux/amd64/v3",
            false,
            true,
        ),
        (
            image("linux", "amd64", Some("v3")),
            "linux/amd64/v3",
            true,
            true,
        ),
        (
            image("linux", "amd64", Some("v4")),
            "linux/amd64/v3",
            false,
            false,
        ),
        // arm64 nodes: v8 only; 32-bit arm v8..v5 with containerd 1.7.
        (image("linux", "arm64", None), "linux/arm64", true, true),
        (
            image("linux", "arm64", Some("v8")),
            "linux/arm64",
            true,
            true,
        ),
        (image("linux", "aarch64", None), "linux/arm64", true, true),
        (
            image("linux", "arm64", Some("v8.2")),
            "linux/arm64",
            false,
            false,
        ),
        (
            image("linux", "arm64", Some("v9")),
            "linux/arm64",
            false,
            false,
        ),
        (
            image("linux", "arm", Some("v8")),
            "linux/arm64",
            false,
            true,
        ),
        (
            image("linux", "arm", Some("v7")),
            "linux/arm64",
            false,
            true,
        ),
        (image("linux", "arm", None), "linux/arm64", false, true),
        (
            image("linux", "arm", Some("v6")),
            "linux/arm64",
            false,
            true,
        ),
        (
            image("linux", "arm", Some("v5")),
            "linux/arm64",
            false,
            true,
        ),
        (image("linux", "amd64", None), "linux/arm64", false, false),
        // arm64/v9.2 nodes (static lists): v9.2..v9, v8.7..v8, then arm
        (
            image("linux", "arm64", Some("v9.1")),
            "linux/arm64/v9.2",
            false,
            true,
        ),
        (
            image("linux", "arm64", Some("v8.7")),
            "linux/arm64/v9.2",
            false,
            true,
        ),
        (
            image("linux", "arm64", Some("v8.8")),
            "linux/arm64/v9.2",
            false,
            false,
        ),
        (
            image("linux", "arm64", None),
            "linux/arm64/v9.2",
            false,
            true,
        ),
        (
            image("linux", "arm64", Some("v9.3")),
            "linux/arm64/v9.2",
            false,
            false,
        ),
        // arm/v7 nodes: v7 (a bare arm is v7); v6, v5 with containerd 1.7; never v8.
        (
            image("linux", "arm", Some("v7")),
            "linux/arm/v7",
            true,
            true,
        ),
        (image("linux", "arm", None), "linux/arm/v7", true, true),
        (image("linux", "armhf", None), "linux/arm/v7", true, true),
        (
            image("linux", "arm", Some("v6")),
            "linux/arm/v7",
            false,
            true,
        ),
        (
            image("linux", "arm", Some("v5")),
            "linux/arm/v7",
            false,
            true,
        ),
        (
            image("linux", "arm", Some("v8")),
            "linux/arm/v7",
            false,
            false,
        ),
        (image("linux", "arm64", None), "linux/arm/v7", false, false),
        // arm/v6 nodes
        (
            image("linux", "arm", Some("v6")),
            "linux/arm/v6",
            true,
            true,
        ),
        (image("linux", "armel", None), "linux/arm/v6", true, true),
        (
            image("linux", "arm", Some("v5")),
            "linux/arm/v6",
            false,
            true,
        ),
        (
            image("linux", "arm", Some("v7")),
            "linux/arm/v6",
            false,
            false,
        ),
        // 386, ppc64le, s390x, riscv64: no fallbacks, no variants a node would pull
        (image("linux", "386", None), "linux/386", true, true),
        (image("linux", "amd64", None), "linux/386", false, false),
        (image("linux", "ppc64le", None), "linux/ppc64le", true, true),
        (image("linux", "ppc64", None), "linux/ppc64le", false, false),
        (image("linux", "s390x", None), "linux/s390x", true, true),
        (image("linux", "riscv64", None), "linux/riscv64", true, true),
        (
            image("linux", "riscv64", Some("rva23u64")),
            "linux/riscv64",
            false,
            false,
        ),
        // an entry without os takes the node's
        (image("", "amd64", None), "linux/amd64", true, true),
        (image("", "amd64", None), "windows/amd64", true, true),
        (image("", "arm64", None), "linux/amd64", false, false),
        (image("", "386", None), "linux/amd64", false, true),
        // os.features must be offered by the node; Windows drops win32k first
        (
            with_features(image("linux", "amd64", None), &["erofs"]),
            "linux/amd64",
            false,
            false,
        ),
        (
            with_features(image("linux", "amd64", None), &["erofs"]),
            "linux(+erofs)/amd64",
            true,
            true,
        ),
        (
            with_features(image("windows", "amd64", None), &["win32k"]),
            "windows/amd64",
            true,
            true,
        ),
        (
            with_features(image("linux", "amd64", None), &["win32k"]),
            "linux/amd64",
            false,
            false,
        ),
        (
            with_features(image("windows", "amd64", None), &["win32k", "gpu"]),
            "windows/amd64",
            false,
            false,
        ),
        // windows nodes: no 386 fallback in any containerd version
        (image("windows", "amd64", None), "windows/amd64", true, true),
        (image("windows", "386", None), "windows/amd64", false, false),
        (image("linux", "amd64", None), "windows/amd64", false, false),
    ];
    for (have, node, strict, legacy) in cases {
        let node = p(node);
        for (runtime, want) in [(STRICT, strict), (LEGACY, legacy)] {
            let on = node.clone().pulled_with(runtime);
            assert_eq!(
                have.satisfies(&on),
                want,
                "image {have} on node {} ({runtime})",
                node.node_name()
            );
        }
    }
}

/// `checkWindowsHostAndContainerCompat`: older hosts need the exact build; Windows Server 2022
/// and later run from the previous LTSC up to their own build.
#[test]
fn windows_builds() {
    const LTSC2019: &str = "10.0.17763";
    const LTSC2022: &str = "10.0.20348";
    const WIN11_22H2: &str = "10.0.22621";
    const LTSC2025: &str = "10.0.26100";
    let cases = [
        // (image os.version, node build, runs?)
        (Some("10.0.17763.5329"), Some(LTSC2019), true),
        (Some("10.0.20348.2227"), Some(LTSC2019), false),
        (Some("10.0.17134.1"), Some(LTSC2019), false),
        (Some("10.0.17763.5329"), Some(LTSC2022), false),
        (Some("10.0.20348.2227"), Some(LTSC2022), true),
        (Some("10.0.20348.2227"), Some(WIN11_22H2), true),
        (Some("10.0.22621.1"), Some(WIN11_22H2), true),
        (Some("10.0.25398.1"), Some(WIN11_22H2), false),
        (Some("10.0.20348.2227"), Some(LTSC2025), true),
        (Some("10.0.26100.1"), Some(LTSC2025), true),
        (Some("10.0.17763.5329"), Some(LTSC2025), false),
        (Some("6.3.9600.1"), Some(LTSC2022), false),
        // an image without os.version, or a node whose build is unknown: no constraint
        (None, Some(LTSC2019), true),
        (Some("10.0.20348.2227"), None, true),
        (Some("garbage"), Some(LTSC2022), false),
    ];
    for (image_version, node_build, want) in cases {
        let mut have = image("windows", "amd64", None);
        have.os_version = image_version.map(str::to_string);
        let mut node = p("windows/amd64");
        node.os_version = node_build.map(str::to_string);
        for runtime in [STRICT, LEGACY] {
            let on = node.clone().pulled_with(runtime);
            assert_eq!(have.satisfies(&on), want, "{have} on {}", on.node_name());
        }
    }
    // Linux nodes never compare os.version.
    let odd = with_version(image("linux", "amd64", None), "10.0.1");
    assert!(odd.satisfies(&p("linux/amd64")));
}

/// Before: Rust's `from_str` takes a leading `+`, so an image `os.version` of `+10.+0.+17763`
/// read as 10.0.17763 and ran on an LTSC 2019 node. containerd's `strconv.ParseUint` refuses a
/// sign: such a version is no version (0.0.0), which runs on no host whose build is known.
#[test]
fn windows_version_parts_are_plain_digits() {
    let node = with_version(p("windows/amd64"), "10.0.17763");
    for version in [
        "+10.+0.+17763",
        "10.0.+17763",
        "+10.0.17763.1",
        "10.0.17763 ",
        " 10.0.17763",
        "10..17763",
        "10.0.1_7763",
    ] {
        let have = with_version(image("windows", "amd64", None), version);
        for runtime in [STRICT, LEGACY] {
            let on = node.clone().pulled_with(runtime);
            assert!(!have.satisfies(&on), "{version:?} on {}", on.node_name());
        }
    }
    // A host build written with a sign is unknown: it constrains nothing, as in containerd.
    let signed_host = with_version(p("windows/amd64"), "+10.0.17763");
    let ltsc2022 = with_version(image("windows", "amd64", None), "10.0.20348.1");
    assert!(ltsc2022.satisfies(&signed_host));
    // Leading zeros are digits (ParseUint takes them).
    let padded = with_version(image("windows", "amd64", None), "10.00.017763.1");
    assert!(padded.satisfies(&node));
}

#[test]
fn runtime_version_picks_the_matcher() {
    let cases = [
        ("containerd://1.6.28", LEGACY),
        ("containerd://1.7.13", LEGACY),
        ("containerd://v1.7.0-rc.1", LEGACY),
        ("containerd://2.0.0", STRICT),
        ("containerd://2.1.4-k3s1", STRICT),
        ("containerd://", STRICT),
        ("cri-o://1.29.1", STRICT),
        ("docker://24.0.7", STRICT),
        ("", STRICT),
    ];
    for (version, want) in cases {
        assert_eq!(
            RuntimeMatcher::for_runtime_version(version),
            want,
            "{version}"
        );
    }
}

#[test]
fn node_names_are_containerds() {
    let cases = [
        (image("linux", "arm64", Some("v8")), "linux/arm64"),
        (image("linux", "aarch64", None), "linux/arm64"),
        (image("linux", "amd64", Some("v1")), "linux/amd64"),
        (image("linux", "amd64", Some("v3")), "linux/amd64/v3"),
        (image("linux", "arm", None), "linux/arm/v7"),
        (image("", "amd64", None), "*/amd64"),
        (
            with_version(image("windows", "amd64", None), "10.0.17763.5329"),
            "windows(10.0.17763.5329)/amd64",
        ),
        (
            with_features(image("linux", "amd64", None), &["b", "a", "a"]),
            "linux(+a+b)/amd64",
        ),
    ];
    for (platform, want) in cases {
        assert_eq!(platform.node_name(), want, "{platform}");
        // What a node name says, `--platform` reads back.
        if !platform.os.is_empty() {
            assert_eq!(p(want).node_name(), want);
        }
    }
    let both = [
        image("linux", "arm64", Some("v8")),
        image("linux", "arm64", None),
    ];
    assert_eq!(node_list(&both), "linux/arm64");
    assert_eq!(node_list(&[]), "none");
    assert_eq!(
        with_version(image("windows", "amd64", None), "10.0.17763").build_name(),
        "windows/amd64"
    );
}

#[test]
fn display_keeps_registry_spelling_and_os_version() {
    let p = with_version(image("windows", "amd64", None), "10.0.17763.5329");
    assert_eq!(p.to_string(), "windows/amd64 (10.0.17763.5329)");
    assert_eq!(
        image("linux", "arm64", Some("v8")).to_string(),
        "linux/arm64/v8"
    );
    assert_eq!(list(&[]), "none");
}

/// The fuzz target's invariants (fuzz/fuzz_targets/reference_platform.rs), on its seeds and on
/// the new spellings: parse output is normal, its node name reads back, and every platform
/// satisfies itself and its normal form under both matchers.
#[test]
fn fuzz_invariants_on_seeds() {
    let mut inputs: Vec<String> = Vec::new();
    for entry in std::fs::read_dir("fuzz/seeds/reference_platform").unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        inputs.extend(text.lines().map(str::to_string));
    }
    inputs.extend(
        [
            "windows(10.0.99999)/amd64",
            "windows(300.0.1)/amd64",
            "windows(1.2.3)/amd64",
            "windows(+win32k)/amd64",
            "linux/arm64/v9.7",
            "linux/arm64/v10",
            "linux/amd64/v9",
            "linux/arm/v9",
            "linux/amd64/v4000000000",
            "linux/arm/v4000000000",
        ]
        .map(str::to_string),
    );
    assert!(inputs.len() > 20, "{inputs:?}");
    for input in &inputs {
        let Ok(parsed) = Platform::parse(input) else {
            continue;
        };
        assert_eq!(parsed.normalized(), parsed, "{input}");
        assert_eq!(
            Platform::parse(&parsed.node_name()),
            Ok(parsed.clone()),
            "{input}"
        );
        let mut parts = input.splitn(3, '/');
        let raw = Platform::new(
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next(),
        );
        for p in [parsed, raw] {
            let n = p.normalized();
            assert_eq!(n.normalized(), n, "{input}");
            for runtime in [STRICT, LEGACY] {
                let node = n.clone().pulled_with(runtime);
                assert!(p.satisfies(&node), "{p:?} on its normal form ({runtime})");
                assert!(
                    p.satisfies(&p.clone().pulled_with(runtime)),
                    "{p:?} on itself"
                );
            }
        }
    }
}

/// `normal` skips the copy only when `normalized` would change nothing, and every normalised
/// platform counts as normal (else `satisfies` would copy where it need not).
#[test]
fn normal_is_what_normalized_keeps() {
    let arches = [
        "amd64", "AMD64", "x86_64", "x86-64", "i386", "386", "arm64", "aarch64", "arm", "armhf",
        "armel", "riscv64", "ppc64le", "s390x", "",
    ];
    let variants = [
        None,
        Some("v1"),
        Some("v2"),
        Some("V3"),
        Some("5"),
        Some("6"),
        Some("7"),
        Some("8"),
        Some("v5"),
        Some("v6"),
        Some("v7"),
        Some("v8"),
        Some("v8.0"),
        Some("v8.2"),
        Some("9"),
        Some("9.0"),
        Some("v9.0"),
        Some("v9"),
        Some("v9.1"),
    ];
    let features: [&[&str]; 4] = [&[], &["win32k"], &["b", "a"], &["a", "a"]];
    let mut seen = 0;
    for os in ["linux", "Linux", "windows", "macos", "darwin", ""] {
        for arch in arches {
            for variant in variants {
                for f in features {
                    let platform = with_features(image(os, arch, variant), f);
                    let normalized = platform.normalized();
                    assert_eq!(
                        *platform.normal(),
                        normalized,
                        "{platform:?} must read as {normalized:?}"
                    );
                    assert!(
                        normalized.is_normal(),
                        "{normalized:?} is normalised, so normal"
                    );
                    seen += usize::from(platform.is_normal());
                }
            }
        }
    }
    assert!(
        seen > 100,
        "most registry platforms are already normal ({seen})"
    );
}
