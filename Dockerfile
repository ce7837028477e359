# syntax=docker/dockerfile:1.10
#
# archgate's image: one static binary on an empty base, for linux/amd64 and linux/arm64.
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/archgate/archgate:0.1.0 .
# (ghcr.io/archgate is a placeholder registry: push wherever you host images.)
#
# Both platforms are cross-compiled on the build machine's own platform ($BUILDPLATFORM) with
# tonistiigi/xx, never under QEMU emulation: the build stage always runs natively and only the
# compiler's target changes. The result is a multi-platform image index, so archgate's own
# image passes archgate on amd64, arm64 and mixed clusters.
#
# Versions are pinned by tag. Pin by digest too in a release pipeline
# (`docker buildx imagetools inspect IMAGE:TAG`); no digest is written here because this
# repository's CI cannot reach an image registry to verify one.
ARG RUST_VERSION=1.95.0
ARG ALPINE_VERSION=3.23
ARG XX_VERSION=1.9.0

FROM --platform=$BUILDPLATFORM tonistiigi/xx:${XX_VERSION} AS xx

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-alpine${ALPINE_VERSION} AS build
SHELL ["/bin/ash", "-eo", "pipefail", "-c"]
# xx is a scripts-only image (xx-apk, xx-cargo, xx-info, xx-verify, ...) meant to be copied
# whole into the build stage; this is its documented use.
# hadolint ignore=DL3067
COPY --from=xx / /
# Build-platform tools: clang and lld link for any target through xx's wrappers;
# ca-certificates is copied into the final image (registries are reached over HTTPS).
# Package versions follow the pinned Alpine release of the base image; exact apk versions
# are not pinned because Alpine removes superseded ones from its mirrors.
# hadolint ignore=DL3018
RUN apk add --no-cache clang lld ca-certificates
WORKDIR /src
COPY . .
ARG TARGETPLATFORM
# Target-platform C runtime (ring compiles C and assembly, mimalloc C, for the target), then the build.
# The *-unknown-linux-musl targets link statically; xx-verify fails the build otherwise.
# The caches survive between builds; `locked` serialises the two platforms' builds, which
# share the build-platform artefacts (build scripts, proc macros) in one target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    xx-apk add --no-cache xx-c-essentials \
    && xx-cargo build --release --locked --bin archgate \
    && mkdir -p /out \
    && cp "target/$(xx-cargo --print-target-triple)/release/archgate" /out/archgate \
    && xx-verify --static /out/archgate

FROM scratch
LABEL org.opencontainers.image.title="archgate" \
      org.opencontainers.image.description="Admission webhook that denies images lacking a platform the pod could be scheduled on" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/archgate /archgate
# Numeric, so Kubernetes can check runAsNonRoot without a passwd file (there is none).
USER 65532:65532
# 8443: webhook (HTTPS, POST /validate); 8080: admin (GET /healthz, /readyz, /metrics).
EXPOSE 8443 8080
ENTRYPOINT ["/archgate"]
# The config path the manifests in deploy/ mount; override the command for anything else.
CMD ["serve", "--config", "/etc/archgate/config/config.yaml"]
