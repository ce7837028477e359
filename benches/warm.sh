#!/usr/bin/env bash
# Run with: bash benches/warm.sh            (by hand, not by CI; needs root for apt-get)
#
# The warm-path figures of BENCHMARKS.md ("Warm path"), one command: installs what the benchmarks
# need from Debian (docker-registry for the images, h2load from nghttp2-client, nginx-light),
# builds release, then runs
#   1. benches/review.rs, the in-process review (criterion), Pod rows only;
#   2. benches/warm.rs, h2load against archgate, the null handler and nginx (throughput and
#      p99 at a fixed 1,000 req/s), each server pinned to CPU 0 and h2load to CPU 1.
# Every load is bounded in requests and time (see the benches' docs). Everything listens on
# 127.0.0.1 only.
#
# Environment: ARCHGATE_WARM_SECONDS (default 10) per measured run; ARCHGATE_WARM_BIN to measure
# another archgate binary (e.g. one built from an older commit) against the same servers;
# ARCHGATE_LOAD_PIN=0 to run unpinned; WARM_SKIP_REVIEW=1 to skip the criterion part.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v docker-registry >/dev/null || [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
cargo bench --no-run --bench review --bench warm

if [ "${WARM_SKIP_REVIEW:-0}" != 1 ]; then
    # Criterion: 1 s warm-up, 3 s measurement, 30 samples per benchmark (set in the bench).
    cargo bench --bench review -- 'Pod'
fi
cargo bench --bench warm
