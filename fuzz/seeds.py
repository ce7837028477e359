#!/usr/bin/env python3
"""Regenerates fuzz/seeds/<target>/ from the shared fixtures (../shared/fixtures) plus a few
hand-written documents. The output is committed; CI only copies it, so Python is not a CI need.

Usage: python3 fuzz/seeds.py [FIXTURES_DIR]   (needs PyYAML: apt-get install python3-yaml)
"""
import hashlib
import json
import pathlib
import shutil
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent
FIXTURES = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "../../shared/fixtures").resolve()
SEEDS = ROOT / "seeds"
MAX_SEED_BYTES = 8 << 10  # keep every seed small: libFuzzer's max_len follows the largest seed


def compact(value):
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str).encode()


def write(target, data, name=None):
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, bytes):
        data = compact(data)
    if len(data) > MAX_SEED_BYTES:
        return False
    name = name or hashlib.sha1(data).hexdigest()[:16]
    (SEEDS / target / name).write_bytes(data)
    return True


def envelope(request):
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def request(kind, group, version, obj, operation="CREATE", old=None, sub_resource=None):
    plural = kind.lower() + "s"
    req = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": plural},
        "name": obj.get("metadata", {}).get("name", ""),
        "namespace": "default",
        "operation": operation,
        "userInfo": {"username": "fuzz"},
        "object": obj,
        "oldObject": old,
        "dryRun": False,
    }
    if sub_resource:
        req["subResource"] = sub_resource
    return req


def tekton_docs():
    """Every YAML document under tekton/, with the file it came from."""
    for path in sorted((FIXTURES / "tekton").rglob("*.yaml")):
        rel = path.relative_to(FIXTURES / "tekton")
        if "300-crds" in str(rel):
            continue
        # v1beta1 examples that v1 also has add nothing; of the catalog, the oldest and newest
        # version of each task are enough.
        parts = rel.parts
        if parts[:3] == ("pipeline", "examples", "v1beta1"):
            if (FIXTURES / "tekton/pipeline/examples/v1" / pathlib.Path(*parts[3:])).exists():
                continue
        if parts[0] == "catalog":
            versions = sorted((p.name for p in (FIXTURES / "tekton" / pathlib.Path(*parts[:3])).iterdir()),
                              key=lambda v: tuple(int(x) for x in v.split(".")))
            if parts[3] not in (versions[0], versions[-1]):
                continue
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        except yaml.YAMLError:
            continue
        yield path, docs


def main():
    if SEEDS.exists():
        shutil.rmtree(SEEDS)
    for target in ["admission_review", "manifest", "reference_platform", "tekton_run", "dockerfile"]:
        (SEEDS / target).mkdir(parents=True)

    # admission_review: every fixture, request-only ones wrapped in the v1 envelope.
    for path in sorted((FIXTURES / "admissionreview").rglob("*.json")):
        doc = json.loads(path.read_text())
        if "request" not in doc and "response" not in doc:
            doc = envelope(doc)
        write("admission_review", doc, path.stem)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "annotations": {"a": "b"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/arch": "arm64"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]}}},
            "tolerations": [{"key": "arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"}],
            "imagePullSecrets": [{"name": "regcred"}],
            "serviceAccountName": "builder",
            "initContainers": [{"name": "init", "image": "busybox:1.36"}],
            "containers": [{"name": "app", "image": "ghcr.io/org/app@sha256:" + "0" * 64},
                           {"name": "side", "image": "10.0.0.1:5000/team/side:1"}],
        },
    }
    old = json.loads(json.dumps(pod))
    old["spec"]["containers"] = old["spec"]["containers"][:1]
    write("admission_review", envelope(request("Pod", "", "v1", pod)), "pod-create")
    write("admission_review", envelope(request("Pod", "", "v1", pod, "UPDATE", old)), "pod-update")
    eph = json.loads(json.dumps(pod))
    eph["spec"]["nodeName"] = "node-1"
    eph["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "nicolaka/netshoot"}]
    write("admission_review", envelope(request("Pod", "", "v1", eph, "UPDATE", pod, "ephemeralcontainers")), "pod-ephemeral")
    write("admission_review", envelope(request("Pod", "", "v1", pod, "DELETE")), "pod-delete")
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"generateName": "web-"},
              "spec": {"template": {"spec": pod["spec"]}}}
    write("admission_review", envelope(request("Deployment", "apps", "v1", deploy)), "deployment")
    cron = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": pod["spec"]}}}}}
    write("admission_review", envelope(request("CronJob", "batch", "v1", cron)), "cronjob")

    # tekton_run: every run and definition; a file's other resources become its catalog.
    runs = 0
    for path, docs in tekton_docs():
        for doc in docs:
            kind = doc.get("kind")
            if kind not in ("PipelineRun", "TaskRun", "Pipeline", "Task", "ClusterTask", "StepAction"):
                continue
            others = [d for d in docs if d is not doc and d.get("kind") in ("Pipeline", "Task", "ClusterTask", "StepAction")]
            seed = dict(doc)
            if others and kind in ("PipelineRun", "TaskRun"):
                seed["x-catalog"] = others
            if not write("tekton_run", seed) and others:
                write("tekton_run", doc)
            if kind in ("PipelineRun", "TaskRun") and runs < 24:
                # A few runs also go through the admission envelope, as the API server sends them.
                group, version = doc.get("apiVersion", "tekton.dev/v1").split("/")
                if write("admission_review", envelope(request(kind, group, version, doc))):
                    runs += 1
    # The kaniko catalog test run with its Task: a reference the catalog resolves.
    for version_dir in sorted((FIXTURES / "tekton/catalog/task/kaniko").iterdir()):
        task = yaml.safe_load((version_dir / "kaniko.yaml").read_text())
        for doc in yaml.safe_load_all((version_dir / "tests/run.yaml").read_text()):
            if isinstance(doc, dict) and doc.get("kind") in ("PipelineRun", "TaskRun"):
                write("tekton_run", dict(doc, **{"x-catalog": [task]}))
    nested = {
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "metadata": {"generateName": "nest-"},
        "spec": {"params": [{"name": "arch", "value": ["amd64", "arm64"]}],
                 "pipelineRef": {"name": "outer"},
                 "taskRunTemplate": {"podTemplate": {"nodeSelector": {"kubernetes.io/arch": "$(params.arch)"}}}},
        "x-catalog": [
            {"kind": "Pipeline", "metadata": {"name": "outer"}, "spec": {
                "params": [{"name": "arch", "type": "array"}],
                "tasks": [{"name": "inner", "pipelineRef": {"name": "outer"}},
                          {"name": "build", "taskRef": {"name": "build"},
                           "matrix": {"params": [{"name": "a", "value": "$(params.arch[*])"}],
                                      "include": [{"name": "x", "params": [{"name": "a", "value": "s390x"}]}]}}]}},
            {"kind": "Task", "metadata": {"name": "build"}, "spec": {
                "params": [{"name": "a"}, {"name": "IMAGE", "default": "golang:$(params.a)"}],
                "stepTemplate": {"image": "alpine:3"},
                "steps": [{"name": "s", "image": "$(params.IMAGE)"}, {"name": "t"},
                          {"name": "u", "ref": {"name": "act"}}],
                "sidecars": [{"name": "dind", "image": "docker:dind"}]}},
            {"kind": "StepAction", "metadata": {"name": "act"}, "spec": {"image": "$(params[\"img\"])",
                "params": [{"name": "img", "default": "bash:5"}]}},
        ],
    }
    write("tekton_run", nested, "nested-self-reference")

    # manifest: the document shapes registries send.
    def plat(os, arch, variant=None, version=None):
        p = {"os": os, "architecture": arch}
        if variant:
            p["variant"] = variant
        if version:
            p["os.version"] = version
        return p

    digest = "sha256:" + "a" * 64
    entry = lambda p, mt="application/vnd.oci.image.manifest.v1+json", ann=None: dict(
        {"mediaType": mt, "digest": digest, "size": 1234, "platform": p}, **({"annotations": ann} if ann else {}))
    write("manifest", {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        entry(plat("linux", "amd64")), entry(plat("linux", "arm64", "v8")), entry(plat("linux", "arm", "v7")),
        entry(plat("windows", "amd64", version="10.0.17763.5329")),
        entry(plat("unknown", "unknown"), ann={"vnd.docker.reference.type": "attestation-manifest",
                                               "vnd.docker.reference.digest": digest})]}, "oci-index")
    write("manifest", {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
                       "manifests": [entry(plat("linux", "386"), "application/vnd.docker.distribution.manifest.v2+json"),
                                     entry(plat("linux", "s390x"), "application/vnd.docker.distribution.manifest.v2+json")]},
          "docker-list")
    write("manifest", {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": 1469},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": 3}]},
          "oci-manifest")
    write("manifest", {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": digest, "size": 7023},
                       "layers": []}, "docker-manifest")
    write("manifest", {"schemaVersion": 1, "name": "library/hello", "tag": "latest", "architecture": "amd64",
                       "fsLayers": [{"blobSum": digest}], "history": [{"v1Compatibility": "{}"}]}, "schema1")
    write("manifest", {"architecture": "arm", "os": "linux", "variant": "v6", "config": {"Cmd": ["/bin/sh"]},
                       "rootfs": {"type": "layers", "diff_ids": [digest]}}, "config-arm-v6")
    write("manifest", {"architecture": "amd64", "os": "windows", "os.version": "10.0.20348.2340"}, "config-windows")
    write("manifest", {"schemaVersion": 2, "mediaType": "text/html"}, "wrong-media-type")

    # reference_platform: "image\nplatform" lines.
    images = ["nginx", "nginx:1.27", "bitnami/redis:7", "index.docker.io/library/busybox",
              "10.34.0.202:5000/cerebral/ai-base:cuda", "localhost:5000/app", "ghcr.io/org/app@" + digest,
              "nginx:1.27@" + digest, "[::1]:5000/app:v1", "UPPER/case", "golang:$(params.version)",
              "registry.example.com/a/b/c/d:tag_1.2-3", "linux/arm64/v8", " linux/x86_64 "]
    platforms = ["linux/amd64", "linux/arm/v7", "linux/arm64/v8", "windows/amd64", "linux/i386", "linux/armhf",
                 "linux/amd64/v3", "linux/aarch64", "darwin/arm64", "linux/arm/5"]
    for i, image in enumerate(images):
        write("reference_platform", f"{image}\n{platforms[i % len(platforms)]}", f"ref-{i:02}")
    for i, a in enumerate(platforms):
        write("reference_platform", f"{a}\n{platforms[(i + 3) % len(platforms)]}", f"platform-{i:02}")

    # dockerfile: "TARGET_PLATFORM BUILD_PLATFORM [STAGE]" then a Dockerfile: archgate's own and
    # hand-written shapes (ARG-heavy, cross-compiling, heredocs, escape directive, mounts).
    write("dockerfile", "linux/amd64 linux/arm64\n" + (ROOT / "../Dockerfile").read_text(), "archgate")
    dockerfiles = {
        "ai-job": "ARG REGISTRY=10.34.0.202:5000\nARG BASE_IMAGE_TAG=latest\n"
                  "FROM ${REGISTRY}/cerebral/ai-base:${BASE_IMAGE_TAG}\nRUN pip install -r req.txt\n",
        "cross": "ARG GO=1.23\nFROM --platform=$BUILDPLATFORM golang:${GO%.*}-alpine AS build\n"
                 "RUN --mount=type=cache,target=/root/.cache \\\n    --mount=type=bind,from=ghcr.io/o/p:v1,target=/p \\\n"
                 "    go build\nFROM --platform=$TARGETPLATFORM gcr.io/distroless/static AS release\n"
                 "COPY --from=build /out /\nCOPY --from=busybox:1.36 /bin/sh /bin/sh\n",
        "heredoc": "# syntax=docker/dockerfile:1\nFROM alpine:3.20 AS base\nRUN <<EOF\nFROM x\nEOF\n"
                   "COPY <<-'CONF' 3<<X /etc/a\n\tFROM y\n\tCONF\nFROM z\nX\nFROM base\nCOPY --from=0 / /\n",
        "escape": "# escape=`\nARG WIN=ltsc2022\nFROM mcr.microsoft.com/windows/servercore:${WIN:-x} `\n  AS b\n"
                  "RUN dir c:\\\nFROM scratch\nCOPY --from=b / /\n",
    }
    for name, text in dockerfiles.items():
        write("dockerfile", "linux/amd64 linux/arm64\n" + text, name)

    for target in sorted(p.name for p in SEEDS.iterdir()):
        files = list((SEEDS / target).iterdir())
        print(f"{target}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
