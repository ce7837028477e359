//! Table-style tests of what a build pulls, on Dockerfiles shaped like real ones.

use super::*;

fn p(s: &str) -> Platform {
    Platform::parse(s).unwrap()
}

fn build(targets: &[&str], args: &[(&str, &str)], target: Option<&str>) -> Build {
    Build {
        target_platforms: targets.iter().map(|t| p(t)).collect(),
        build_platform: p("linux/arm64"),
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        target: target.map(str::to_string),
    }
}

/// `(scope, image, platforms)` per target.
fn pulls(text: &str, build: &Build) -> Vec<(String, String, Vec<String>)> {
    extract(text, build)
        .unwrap()
        .targets
        .into_iter()
        .map(|t| {
            let platforms = t.placement.platforms.clone().unwrap_or_default();
            (
                t.location.scope,
                t.image,
                platforms.iter().map(Platform::to_string).collect(),
            )
        })
        .collect()
}

fn row(scope: &str, image: &str, platforms: &[&str]) -> (String, String, Vec<String>) {
    (
        scope.to_string(),
        image.to_string(),
        platforms.iter().map(|s| s.to_string()).collect(),
    )
}

/// The Dockerfile this project was born from (issue 18): the base comes from ARGs.
const AI_JOB: &str = r#"# syntax=docker/dockerfile:1
ARG REGISTRY=10.34.0.202:5000
ARG BASE_IMAGE_TAG=latest
FROM ${REGISTRY}/cerebral/ai-base:${BASE_IMAGE_TAG}
COPY requirements.txt .
RUN pip install -r requirements.txt
"#;

#[test]
fn arg_defaults_and_build_args_reach_from() {
    let got = pulls(AI_JOB, &build(&["linux/amd64"], &[], None));
    assert_eq!(
        got,
        [row(
            "Dockerfile line 4: FROM",
            "10.34.0.202:5000/cerebral/ai-base:latest",
            &["linux/amd64"]
        )]
    );
    let got = pulls(
        AI_JOB,
        &build(&["linux/amd64"], &[("BASE_IMAGE_TAG", "cuda")], None),
    );
    assert_eq!(got[0].1, "10.34.0.202:5000/cerebral/ai-base:cuda");
}

#[test]
fn unset_args_warn_and_build_args_need_a_global_arg() {
    let text = "FROM ${REGISTRY}/ai-base:1\n";
    // BuildKit only lets declared global ARGs into FROM: the build arg alone does nothing.
    let e = extract(
        text,
        &build(&["linux/amd64"], &[("REGISTRY", "r:5000")], None),
    )
    .unwrap();
    assert_eq!(e.targets[0].image, "/ai-base:1");
    assert_eq!(e.warnings.len(), 1, "{:?}", e.warnings);
    assert!(e.warnings[0].starts_with("Dockerfile line 1: FROM uses $REGISTRY"));
    let declared = format!("ARG REGISTRY\n{text}");
    let e = extract(
        &declared,
        &build(&["linux/amd64"], &[("REGISTRY", "r:5000")], None),
    )
    .unwrap();
    assert_eq!(e.targets[0].image, "r:5000/ai-base:1");
    assert!(e.warnings.is_empty());
}

#[test]
fn an_arg_inside_a_stage_does_not_change_a_later_from() {
    let text = "ARG TAG=1\nFROM a:${TAG} AS one\nARG TAG=2\nRUN true\nFROM b:${TAG}\nCOPY --from=one / /\n";
    let got = pulls(text, &build(&["linux/amd64"], &[], None));
    assert_eq!(
        got,
        [
            row("Dockerfile line 2: FROM", "a:1", &["linux/amd64"]),
            row("Dockerfile line 5: FROM", "b:1", &["linux/amd64"]),
        ]
    );
}

#[test]
fn global_args_see_earlier_globals_and_platform_args() {
    let text = "ARG GO=1.23\nARG BASE=golang:${GO}-${TARGETARCH}\nFROM $BASE\n";
    let got = pulls(text, &build(&["linux/amd64", "linux/arm64"], &[], None));
    assert_eq!(
        got,
        [
            row(
                "Dockerfile line 3: FROM",
                "golang:1.23-amd64",
                &["linux/amd64"]
            ),
            row(
                "Dockerfile line 3: FROM",
                "golang:1.23-arm64",
                &["linux/arm64"]
            ),
        ]
    );
    // A build arg is taken verbatim, not expanded.
    let got = pulls(text, &build(&["linux/amd64"], &[("BASE", "x:${GO}")], None));
    assert_eq!(got[0].1, "x:${GO}");
}

/// Cross-compiling: the builder stages run on the build platform, the final one on each target.
const CROSS: &str = r#"# syntax=docker/dockerfile:1.10
ARG GO_VERSION=1.23
FROM --platform=$BUILDPLATFORM tonistiigi/xx:1.5.0 AS xx
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-alpine AS build
COPY --from=xx / /
ARG TARGETPLATFORM
RUN --mount=type=cache,target=/root/.cache \
    --mount=type=bind,from=ghcr.io/org/protos:v3,source=/protos,target=/protos \
    xx-go build -o /out/app ./cmd/app
FROM gcr.io/distroless/static:nonroot AS release
COPY --from=build /out/app /app
FROM alpine:3.20 AS debug
COPY --from=build /out/app /app
COPY --from=busybox:1.36 /bin/busybox /bin/busybox
"#;

#[test]
fn build_platform_stages_need_the_builder_platform_only() {
    let got = pulls(
        CROSS,
        &build(&["linux/amd64", "linux/arm64"], &[], Some("release")),
    );
    assert_eq!(
        got,
        [
            row(
                "Dockerfile line 3: FROM",
                "tonistiigi/xx:1.5.0",
                &["linux/arm64"]
            ),
            row(
                "Dockerfile line 4: FROM",
                "golang:1.23-alpine",
                &["linux/arm64"]
            ),
            row(
                "Dockerfile line 7: RUN --mount",
                "ghcr.io/org/protos:v3",
                &["linux/amd64", "linux/arm64"]
            ),
            row(
                "Dockerfile line 10: FROM",
                "gcr.io/distroless/static:nonroot",
                &["linux/amd64", "linux/arm64"]
            ),
        ]
    );
}

#[test]
fn only_the_stages_the_target_needs_are_pulled() {
    // Default target: the last stage (debug), which also pulls busybox by COPY --from.
    let got = pulls(CROSS, &build(&["linux/amd64"], &[], None));
    let images: Vec<&str> = got.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        images,
        [
            "tonistiigi/xx:1.5.0",
            "golang:1.23-alpine",
            "ghcr.io/org/protos:v3",
            "alpine:3.20",
            "busybox:1.36"
        ]
    );
    assert_eq!(got[4].0, "Dockerfile line 14: COPY --from");
    // --target matches case-insensitively; the xx stage alone pulls one image.
    let got = pulls(CROSS, &build(&["linux/amd64"], &[], Some("XX")));
    assert_eq!(got.len(), 1);
    let err = extract(CROSS, &build(&["linux/amd64"], &[], Some("nope"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--target \"nope\" is not a stage of the Dockerfile (stages: xx, build, release, debug)"
    );
}

#[test]
fn scratch_stage_names_and_indexes_are_not_images() {
    let text = "FROM scratch AS empty\nFROM alpine:3.20 AS base\nFROM base AS app\nCOPY --from=0 / /\nCOPY --from=empty / /\nRUN --mount=from=base,target=/b true\nFROM app\n";
    let got = pulls(text, &build(&["linux/amd64"], &[], None));
    assert_eq!(
        got,
        [row(
            "Dockerfile line 2: FROM",
            "alpine:3.20",
            &["linux/amd64"]
        )]
    );
    // Found by fuzzing: an empty --from is the build context, not an image named "".
    let got = pulls(
        "FROM a:1\nCOPY --from= /x /x\nRUN --mount=type=bind,from=,target=/y true\n",
        &build(&["linux/amd64"], &[], None),
    );
    assert_eq!(
        got,
        [row("Dockerfile line 1: FROM", "a:1", &["linux/amd64"])]
    );
    let err = extract(
        "FROM a\nCOPY --from=3 / /\n",
        &build(&["linux/amd64"], &[], None),
    )
    .unwrap_err();
    assert!(
        matches!(err, DockerfileError::Syntax { line: 2, .. }),
        "{err}"
    );
}

#[test]
fn fixed_platform_stage_and_platform_args() {
    let text = "FROM --platform=linux/arm/v7 arm32v7/alpine AS a\nFROM --platform=${TARGETOS}/${TARGETARCH} alpine\nCOPY --from=a / /\n";
    let got = pulls(text, &build(&["linux/amd64"], &[], None));
    assert_eq!(
        got,
        [
            row(
                "Dockerfile line 1: FROM",
                "arm32v7/alpine",
                &["linux/arm/v7"]
            ),
            row("Dockerfile line 2: FROM", "alpine", &["linux/amd64"]),
        ]
    );
    // The builder's platform can also be given as a build arg, as with BuildKit.
    let got = pulls(
        "FROM --platform=$BUILDPLATFORM golang\n",
        &build(&["linux/amd64"], &[("BUILDPLATFORM", "linux/s390x")], None),
    );
    assert_eq!(got[0].2, ["linux/s390x"]);
}

#[test]
fn heredocs_and_escape_directive_in_a_real_shape() {
    let text = "# escape=`\nARG WIN=ltsc2022\nFROM mcr.microsoft.com/windows/servercore:${WIN} `\n    AS base\nRUN <<EOF\nFROM not:an-image\nEOF\nCOPY <<-EOT C:\\app\\config.ini\n\tFROM neither:this\n\tEOT\n";
    let got = pulls(text, &build(&["windows/amd64"], &[], None));
    assert_eq!(
        got,
        [row(
            "Dockerfile line 3: FROM",
            "mcr.microsoft.com/windows/servercore:ltsc2022",
            &["windows/amd64"]
        )]
    );
}

#[test]
fn malformed_files_are_errors_with_their_line() {
    let b = build(&["linux/amd64"], &[], None);
    let cases = [
        ("RUN echo\nFROM a\n", 1),
        ("FROM\n", 1),
        ("FROM a AS 1bad\n", 1),
        ("FROM a b c d\n", 1),
        ("FROM --pltform=linux/amd64 a\n", 1),
        ("FROM a\nCOPY --from=$X / /\n", 2),
        ("FROM a\nRUN --mount=from=${X},target=/x true\n", 2),
        ("ARG E=\nFROM $E\n", 2),
        ("FROM --platform=linux a\n", 1),
        ("FROM ${A:?set A}\n", 1),
    ];
    for (text, line) in cases {
        match extract(text, &b) {
            Err(DockerfileError::Syntax { line: l, .. }) => assert_eq!(l, line, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    assert_eq!(extract("# only\n", &b), Err(DockerfileError::NoStages));
}

#[test]
fn work_is_bounded() {
    let mut b = build(&["linux/amd64"], &[], None);
    b.target_platforms = vec![p("linux/amd64"); MAX_TARGET_PLATFORMS + 1];
    assert!(matches!(
        extract("FROM a\n", &b),
        Err(DockerfileError::TooMany { .. })
    ));
    // 20 doublings would be a megabyte per word: refused at the expansion bound.
    let mut text = String::from("ARG A0=xxxxxxxxxxxxxxxx\n");
    for i in 1..=20 {
        text.push_str(&format!("ARG A{i}=${{A{}}}${{A{}}}\n", i - 1, i - 1));
    }
    text.push_str("FROM $A20\n");
    let b = build(&["linux/amd64"], &[], None);
    assert!(matches!(
        extract(&text, &b),
        Err(DockerfileError::Syntax { .. })
    ));
}

#[test]
fn mount_from_reads_csv_fields() {
    assert_eq!(
        mount_from("type=bind,\"from=a,b\",target=/x").unwrap(),
        Some("a,b".into())
    );
    assert_eq!(mount_from("type=cache,target=/x").unwrap(), None);
    assert!(mount_from("from=\"a").is_err());
}

#[test]
fn this_projects_own_dockerfile() {
    let text = include_str!("../../../Dockerfile");
    let got = pulls(text, &build(&["linux/amd64", "linux/arm64"], &[], None));
    let images: Vec<(&str, &[String])> = got.iter().map(|r| (r.1.as_str(), &r.2[..])).collect();
    assert_eq!(images.len(), 2, "{got:?}");
    assert!(images[0].0.starts_with("tonistiigi/xx:"), "{got:?}");
    assert_eq!(images[0].1, ["linux/arm64"]);
    assert!(images[1].0.starts_with("rust:"), "{got:?}");
    assert_eq!(images[1].1, ["linux/arm64"]);
}

/// Before: the builder's OS was archgate's own, so on a Mac `$BUILDPLATFORM` was darwin/arm64,
/// a platform no base image has; Docker Desktop's BuildKit runs in a Linux VM.
#[test]
fn the_default_builder_is_linux_on_this_cpu_in_go_spelling() {
    let host = host_platform();
    assert_eq!(host.os, "linux");
    assert_eq!(host, builder_platform(std::env::consts::ARCH));
    for (rust_arch, go) in [
        ("x86_64", "linux/amd64"),
        ("aarch64", "linux/arm64"),
        ("x86", "linux/386"),
        ("loongarch64", "linux/loong64"),
        ("riscv64", "linux/riscv64"),
    ] {
        assert_eq!(builder_platform(rust_arch).to_string(), go, "{rust_arch}");
    }
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    assert_eq!(host.to_string(), "linux/amd64");
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    assert_eq!(host.to_string(), "linux/arm64");
}

#[test]
fn of_two_stages_with_one_name_the_last_wins() {
    let text = "FROM a:1 AS x\nFROM b:1 AS x\nFROM c:1\nCOPY --from=x / /\n";
    let got = pulls(text, &build(&["linux/amd64"], &[], None));
    let images: Vec<&str> = got.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(images, ["b:1", "c:1"]);
}
