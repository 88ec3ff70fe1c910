"""The Kubernetes deployment in deploy/, checked offline: no cluster, no Docker, no network.

The chart is rendered with the Helm v4 SDK (helm-python-sdk), every object is validated against the Kubernetes
1.29 and 1.33 schemas (kubernetes-validate, strict, a missing schema is an error), and the invariants live in
deploy/check.py, so `make deploy-check` and these tests assert the same things. The gateway image, the compose
file and the TensorRT plan builder are checked without building or running anything.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import helm_python as helm
import pytest
import yaml

from export import tensorrt as export_tensorrt
from export import triton_config
from export.triton_config import ModelSpec, Serving, Tensor

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "yolo-triton"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ inside deploy/ or the chart
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


check = _load("deploy_check", DEPLOY / "check.py")
build_engines = _load("deploy_build_engines", CHART / "files" / "build_engines.py")
lockfile = _load("requirements_lockfile", ROOT / "requirements" / "lockfile.py")

VALUES_FILES = {p.name: p for p in check.values_files()}
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    """Each ci values file rendered on the cluster it stands for (check.CLUSTER_APIS), as `make deploy-check` does."""
    return {
        name: check.render(check.load_values(path), api_versions=check.CLUSTER_APIS.get(name, ()))
        for name, path in VALUES_FILES.items()
    }


def find(docs: list[Doc], kind: str, comp: str) -> Doc:
    found = check.one(docs, kind, comp)
    assert found is not None, f"no single {kind} for {comp}"
    return found


def triton_container(docs: list[Doc]) -> Doc:
    c = check.container(find(docs, "Deployment", "triton"), "triton")
    assert c is not None
    return c


def gateway_container(docs: list[Doc]) -> Doc:
    c = check.container(find(docs, "Deployment", "gateway"), "gateway")
    assert c is not None
    return c


def render_with(**overrides: Any) -> list[Doc]:
    return check.render(overrides)


def notes(values: dict[str, Any], api_versions: tuple[str, ...] = ()) -> str:
    return check.render_files(values, api_versions=api_versions)["yolo-triton/templates/NOTES.txt"]


# --- rendering, lint and schemas ----------------------------------------------------------------------------------


def test_ci_values_cover_default_and_gpu_tensorrt_ingress() -> None:
    assert "default-values.yaml" in VALUES_FILES
    gpu = check.load_values(VALUES_FILES["gpu-tensorrt-ingress-values.yaml"])
    assert gpu["models"]["target"] == "tensorrt" and gpu["ingress"]["enabled"] and gpu["triton"]["gpus"] >= 1


@pytest.mark.parametrize("values_file", sorted(VALUES_FILES))
def test_chart_lints_strict(values_file: str) -> None:
    assert check.lint(check.load_values(VALUES_FILES[values_file])) == []


@pytest.mark.parametrize("values_file", sorted(VALUES_FILES))
def test_every_rendered_object_validates_against_kubernetes_1_29_and_1_33(
    values_file: str, rendered: dict[str, list[Doc]]
) -> None:
    docs = rendered[values_file]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget", "Secret", "ServiceAccount"} <= kinds
    assert check.KUBE_VERSIONS == ("1.29", "1.33")
    assert check.validate(docs) == []


@pytest.mark.parametrize("values_file", sorted(VALUES_FILES))
def test_rendered_objects_keep_every_invariant(values_file: str, rendered: dict[str, list[Doc]]) -> None:
    assert check.invariants(rendered[values_file]) == []


def test_missing_schema_fails_validation_except_allowlisted_crds() -> None:
    old_hpa = {
        "apiVersion": "autoscaling/v2beta2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "old"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 2},
    }
    unknown_crd = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "m"},
        "spec": {},
    }
    problems = check.validate([old_hpa, unknown_crd, monitor])
    assert sum("no Kubernetes 1.29 schema" in p for p in problems) == 2
    assert sum("no Kubernetes 1.33 schema" in p for p in problems) == 2
    assert not any("ServiceMonitor" in p for p in problems)


def test_validation_is_strict_about_unknown_fields(rendered: dict[str, list[Doc]]) -> None:
    docs = copy.deepcopy(rendered["default-values.yaml"])
    gateway_container(docs)["readynessProbe"] = {"httpGet": {"path": "/readyz", "port": 8080}}
    problems = check.validate([find(docs, "Deployment", "gateway")])
    assert len(problems) == 2 and all("readynessProbe" in p for p in problems)


# --- values.schema.json and template guards -----------------------------------------------------------------------

BAD_VALUES = {
    "top-level replicaCount 'two'": {"replicaCount": "two"},
    "gateway replicaCount 'two'": {"gateway": {"replicaCount": "two"}},
    "triton replicaCount 'two'": {"triton": {"replicaCount": "two"}},
    "unknown top-level key": {"gatway": {"replicaCount": 2}},
    "letterbox not rect/square": {"gateway": {"letterbox": "diagonal"}},
    "upload limit as text": {"gateway": {"limits": {"maxUploadBytes": "20MB"}}},
    "export target": {"models": {"target": "tflite"}},
    "zero GPUs": {"triton": {"gpus": 0}},
    "gateway :latest": {"gateway": {"image": {"tag": "latest"}}},
    "triton :latest": {"triton": {"image": {"tag": "latest"}}},
    "model source type": {"models": {"source": {"type": "ftp"}}},
    "s3 without a bucket": {"models": {"source": {"type": "s3"}}},
    "ingress without TLS": {"ingress": {"enabled": True, "host": "yolo.example.com"}},
    "gateway without resources limits": {
        "gateway": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": None}}
    },
    "triton requests apart from limits": {"triton": {"resources": {"requests": {"cpu": "2", "memory": "8Gi"}}}},
    "negative decode budget": {"gateway": {"decodeBudgetBytes": -1}},
    "progress deadline under 10 min": {"triton": {"progressDeadlineSeconds": 300}},
    "uploads not a boolean": {"models": {"uploads": {"enabled": "yes"}}},
    "model limit of a few bytes": {"models": {"uploads": {"enabled": False, "maxModelBytes": 10}}},
    "worker :latest": {"worker": {"image": {"tag": "latest"}}},
    "worker without resources limits": {
        "worker": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": None}}
    },
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_values_schema_rejects_bad_values(case: str) -> None:
    values = BAD_VALUES[case]
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        check.render(values)
    assert check.lint(values), "helm lint --strict must report the bad value"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"triton": {"image": {"tag": "25.03-py3"}}}, "older than 25.07"),
        ({"triton": {"image": {"tag": "24.12-py3"}}}, "older than 25.07"),
        ({"triton": {"extraArgs": ["--model-control-mode=explicit"]}}, "may not set"),
        ({"triton": {"extraArgs": ["--load-model=*"]}}, "may not set"),
        ({"triton": {"extraArgs": ["--strict-readiness=true"]}}, "may not set"),
        ({"triton": {"extraArgs": ["--exit-on-error=true"]}}, "may not set"),
        ({"models": {"uploads": {"enabled": True, "existingClaim": "c"}}}, "needs redis.enabled"),
        ({"models": {"uploads": {"enabled": True}}, "redis": {"enabled": True}}, "existingClaim is required"),
        (
            {
                "gateway": {
                    "autoscaling": {
                        "enabled": True,
                        "minReplicas": 5,
                        "maxReplicas": 2,
                        "targetCPUUtilizationPercentage": 70,
                    }
                }
            },
            "at least minReplicas",
        ),
        (
            {
                "triton": {
                    "autoscaling": {
                        "enabled": True,
                        "minReplicas": 3,
                        "maxReplicas": 2,
                        "metricName": "m",
                        "targetQueueTimeUs": 1,
                    }
                }
            },
            "at least minReplicas",
        ),
        (
            {
                "models": {
                    "target": "tensorrt",
                    "tensorrt": {"builderImage": {"repository": "nvcr.io/nvidia/tensorrt", "tag": "25.09-py3"}},
                }
            },
            "same YY.MM",
        ),
        (
            {
                "gateway": {
                    "shutdown": {
                        "preStopSleepSeconds": 5,
                        "gracefulTimeoutSeconds": 30,
                        "terminationGracePeriodSeconds": 30,
                    }
                }
            },
            "terminationGracePeriodSeconds",
        ),
        ({"gateway": {"decodeBudgetBytes": 2 * 2**30}}, "exceeds gateway.resources.limits.memory"),
        (
            {"gateway": {"decodeBudgetBytes": 1536 * 2**20 + 1}},  # 1.5 GiB + 512 MiB is the 2 GiB limit, plus one byte
            "exceeds gateway.resources.limits.memory",
        ),
        ({"triton": {"shmSize": "15Gi"}}, "/dev/shm counts against the memory limit"),
        ({"triton": {"progressDeadlineSeconds": 1200}}, "progressDeadlineSeconds"),
        ({"triton": {"extraArgs": ["--grpc-keepalive-permit-without-calls=0"]}}, "may not set"),
        ({"triton": {"extraArgs": ["--grpc-http2-min-recv-ping-interval-without-data=300000"]}}, "may not set"),
        ({"models": {"target": "onnxruntime"}}, "engineCache.existingClaim"),
    ],
)
def test_chart_refuses_unsafe_combinations(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        check.render(values)


def test_newer_triton_and_matching_tensorrt_builder_render() -> None:
    docs = render_with(
        triton={"image": {"tag": "26.01-py3"}},
        models={
            "target": "tensorrt",
            "tensorrt": {"builderImage": {"repository": "nvcr.io/nvidia/tensorrt", "tag": "26.01-py3"}},
        },
    )
    spec = find(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert triton_container(docs)["image"] == "nvcr.io/nvidia/tritonserver:26.01-py3"
    assert spec["initContainers"][0]["image"] == "nvcr.io/nvidia/tensorrt:26.01-py3"
    assert check.invariants(docs) == []


# --- the invariants catch what an edit could drop -----------------------------------------------------------------


def _svc(docs: list[Doc]) -> Doc:
    return find(docs, "Service", "triton")


def _tspec(docs: list[Doc]) -> Doc:
    return find(docs, "Deployment", "triton")["spec"]["template"]["spec"]


def _gspec(docs: list[Doc]) -> Doc:
    return find(docs, "Deployment", "gateway")["spec"]["template"]["spec"]


def _drop_kind(kind: str) -> Callable[[list[Doc]], None]:
    def mutate(docs: list[Doc]) -> None:
        docs[:] = [d for d in docs if d["kind"] != kind]

    return mutate


def _set_arg(prefix: str, value: str | None) -> Callable[[list[Doc]], None]:
    def mutate(docs: list[Doc]) -> None:
        c = triton_container(docs)
        c["args"] = [a for a in c["args"] if not a.startswith(prefix)] + ([value] if value else [])

    return mutate


def _extra_lb_service(docs: list[Doc]) -> None:
    svc = copy.deepcopy(_svc(docs))
    svc["metadata"]["name"] += "-public"
    svc["metadata"]["labels"]["app.kubernetes.io/component"] = "public"
    svc["spec"] = {"type": "LoadBalancer", "selector": svc["spec"]["selector"], "ports": [{"port": 8001}]}
    docs.append(svc)


def _open_triton_policy(docs: list[Doc]) -> None:
    policy = next(p for p in check.of_kind(docs, "NetworkPolicy") if check.component(p) == "triton")
    policy["spec"]["ingress"].append({"ports": [{"port": 8001}]})


MUTATIONS: dict[str, tuple[Callable[[list[Doc]], None], str]] = {
    "triton startupProbe removed": (lambda d: triton_container(d).pop("startupProbe"), "startupProbe"),
    "triton startup budget 100 s": (
        lambda d: triton_container(d)["startupProbe"].update(failureThreshold=10),
        "startupProbe",
    ),
    "triton readinessProbe removed": (lambda d: triton_container(d).pop("readinessProbe"), "readinessProbe"),
    "triton livenessProbe on ready": (
        lambda d: triton_container(d)["livenessProbe"]["httpGet"].update(path="/v2/health/ready"),
        "livenessProbe",
    ),
    "triton Service LoadBalancer": (lambda d: _svc(d)["spec"].update(type="LoadBalancer", clusterIP=None), "headless"),
    "triton Service NodePort": (lambda d: _svc(d)["spec"].update(type="NodePort"), "headless"),
    "triton Service not headless": (lambda d: _svc(d)["spec"].pop("clusterIP"), "headless"),
    "second Service exposing Triton": (_extra_lb_service, "must not also select"),
    "NetworkPolicies removed": (_drop_kind("NetworkPolicy"), "NetworkPolicy must select the Triton pods"),
    "Triton policy with an open rule": (_open_triton_policy, "name its peers"),
    "gateway image :latest": (lambda d: gateway_container(d).update(image="yolo-triton-gateway:latest"), "pinned tag"),
    "gateway image untagged": (
        lambda d: gateway_container(d).update(image="registry.example.com/gateway"),
        "pinned tag",
    ),
    "triton 25.03": (lambda d: triton_container(d).update(image="nvcr.io/nvidia/tritonserver:25.03-py3"), ">= 25.07"),
    "model control none": (
        _set_arg("--model-control-mode", "--model-control-mode=none"),
        "--model-control-mode=explicit",
    ),
    "repository not loaded at start": (_set_arg("--load-model", None), "--load-model=*"),
    "one model loaded at start": (_set_arg("--load-model", "--load-model=yolov8n"), "--load-model=*"),
    "strict readiness": (_set_arg("--strict-readiness", "--strict-readiness=true"), "--strict-readiness=false"),
    "exit on error": (_set_arg("--exit-on-error", "--exit-on-error=true"), "--exit-on-error=false"),
    "gRPC repository protocol open": (
        _set_arg(
            "--grpc-restricted-protocol",
            "--grpc-restricted-protocol=shared-memory,statistics,trace,logging:admin-key=$(TRITON_ADMIN_KEY)",
        ),
        "--grpc-restricted-protocol",
    ),
    "startup probe on /v2/health/ready": (
        lambda d: triton_container(d).update(
            startupProbe={"httpGet": {"path": "/v2/health/ready", "port": "http"}, "failureThreshold": 60}
        ),
        "every built-in model",
    ),
    "gateway without the admin key": (
        lambda d: gateway_container(d).update(
            env=[e for e in gateway_container(d)["env"] if e["name"] != "GATEWAY_TRITON_ADMIN_KEY"]
        ),
        "GATEWAY_TRITON_ADMIN_KEY",
    ),
    "gateway admin key as a literal": (
        lambda d: next(e for e in gateway_container(d)["env"] if e["name"] == "GATEWAY_TRITON_ADMIN_KEY").update(
            value="k", valueFrom={}
        ),
        "GATEWAY_TRITON_ADMIN_KEY",
    ),
    "model control poll added": (_set_arg("--repository-poll-secs", "--repository-poll-secs=5"), "polling"),
    "HTTP admin APIs open": (_set_arg("--http-restricted-api", None), "--http-restricted-api"),
    "gRPC admin protocols open": (_set_arg("--grpc-restricted-protocol", None), "--grpc-restricted-protocol"),
    "/dev/shm removed": (
        lambda d: triton_container(d).update(
            volumeMounts=[m for m in triton_container(d)["volumeMounts"] if m["mountPath"] != "/dev/shm"]
        ),
        "/dev/shm",
    ),
    "no GPU": (lambda d: triton_container(d)["resources"]["limits"].pop("nvidia.com/gpu"), "nvidia.com/gpu"),
    "models writable": (
        lambda d: next(m for m in triton_container(d)["volumeMounts"] if m["mountPath"] == "/models").pop("readOnly"),
        "read-only at /models",
    ),
    "no metrics scraping": (
        lambda d: find(d, "Deployment", "triton")["spec"]["template"]["metadata"].pop("annotations"),
        "ServiceMonitor",
    ),
    "gateway root filesystem writable": (
        lambda d: gateway_container(d)["securityContext"].update(readOnlyRootFilesystem=False),
        "readOnlyRootFilesystem",
    ),
    "gateway without limits": (lambda d: gateway_container(d)["resources"].pop("limits"), "resources.limits"),
    "triton without requests memory": (
        lambda d: triton_container(d)["resources"]["requests"].pop("memory"),
        "resources.requests lacks memory",
    ),
    "privilege escalation": (
        lambda d: gateway_container(d)["securityContext"].update(allowPrivilegeEscalation=True),
        "allowPrivilegeEscalation",
    ),
    "capabilities kept": (lambda d: triton_container(d)["securityContext"].pop("capabilities"), "drop ALL"),
    "root user": (
        lambda d: (
            _gspec(d)["securityContext"].pop("runAsNonRoot"),
            gateway_container(d)["securityContext"].pop("runAsNonRoot"),
        ),
        "runAsNonRoot",
    ),
    "no seccomp": (lambda d: _tspec(d)["securityContext"].pop("seccompProfile"), "seccompProfile"),
    "service account token": (lambda d: _gspec(d).pop("automountServiceAccountToken"), "automountServiceAccountToken"),
    "PDBs removed": (_drop_kind("PodDisruptionBudget"), "PodDisruptionBudget"),
    "HPAs removed": (_drop_kind("HorizontalPodAutoscaler"), "neither an HPA nor a replica count"),
    "HPA on another metric": (
        lambda d: next(h for h in check.of_kind(d, "HorizontalPodAutoscaler") if check.component(h) == "triton")[
            "spec"
        ]["metrics"][0]["pods"]["metric"].update(name="gpu_util"),
        "Pods metric",
    ),
    "HPA v2beta2": (
        lambda d: check.of_kind(d, "HorizontalPodAutoscaler")[0].update(apiVersion="autoscaling/v2beta2"),
        "autoscaling/v2",
    ),
    "gateway without CPU metric": (
        lambda d: next(h for h in check.of_kind(d, "HorizontalPodAutoscaler") if check.component(h) == "gateway")[
            "spec"
        ].update(metrics=[]),
        "scale on CPU",
    ),
    "keys through subPath": (
        lambda d: gateway_container(d)["volumeMounts"][0].update(subPath="keys.json"),
        "no subPath",
    ),
    "keys from a ConfigMap": (
        lambda d: _gspec(d)["volumes"].__setitem__(0, {"name": "keys", "configMap": {"name": "keys"}}),
        "Secret volume",
    ),
    "Triton through a ClusterIP name": (
        lambda d: gateway_container(d)["env"][0].update(value="yolo-triton-triton:8001"),
        "dns:///",
    ),
    "gateway readiness removed": (lambda d: gateway_container(d).pop("readinessProbe"), "/readyz"),
    "gateway liveness removed": (lambda d: gateway_container(d).pop("livenessProbe"), "/healthz"),
    "no preStop": (lambda d: gateway_container(d).pop("lifecycle"), "preStop"),
    "grace period too short": (
        lambda d: _gspec(d).update(terminationGracePeriodSeconds=10),
        "terminationGracePeriodSeconds",
    ),
    "no topology spread": (lambda d: _gspec(d).pop("topologySpreadConstraints"), "topologySpreadConstraints"),
    "no OpenCV pixel cap": (
        lambda d: gateway_container(d).update(
            env=[e for e in gateway_container(d)["env"] if e["name"] != "OPENCV_IO_MAX_IMAGE_PIXELS"]
        ),
        "OPENCV_IO_MAX_IMAGE_PIXELS",
    ),
    "no writable /tmp": (
        lambda d: gateway_container(d).update(
            volumeMounts=[m for m in gateway_container(d)["volumeMounts"] if m["mountPath"] != "/tmp"]
        ),
        "/tmp",
    ),
}


def _tdeploy(docs: list[Doc]) -> Doc:
    return find(docs, "Deployment", "triton")


def _gateway_policy(docs: list[Doc]) -> Doc:
    return next(p for p in check.of_kind(docs, "NetworkPolicy") if check.component(p) == "gateway")


def _drop_triton_arg(prefix: str) -> Callable[[list[Doc]], None]:
    return _set_arg(prefix, None)


MUTATIONS.update(
    {
        "triton progress deadline the default 600 s": (
            lambda d: _tdeploy(d)["spec"].update(progressDeadlineSeconds=600),
            "progressDeadlineSeconds",
        ),
        "triton without minReadySeconds": (lambda d: _tdeploy(d)["spec"].pop("minReadySeconds"), "minReadySeconds"),
        "triton rollout without surge": (
            lambda d: _tdeploy(d)["spec"]["strategy"]["rollingUpdate"].update(maxSurge=0, maxUnavailable=1),
            "surge",
        ),
        "triton without preStop": (lambda d: triton_container(d).pop("lifecycle"), "preStop"),
        "triton without topology spread": (
            lambda d: _tspec(d).pop("topologySpreadConstraints"),
            "triton: topologySpreadConstraints",
        ),
        "triton requests below limits": (
            lambda d: triton_container(d)["resources"]["requests"].update(memory="8Gi"),
            "requests must equal limits",
        ),
        "builder requests below limits": (
            lambda d: _tspec(d)["initContainers"][0]["resources"]["requests"].update(cpu="1"),
            "container build-engines requests must equal limits",
        ),
        "/dev/shm as large as the memory limit": (
            lambda d: next(v for v in _tspec(d)["volumes"] if v["name"] == "dshm")["emptyDir"].update(sizeLimit="16Gi"),
            "counts against it",
        ),
        "Triton refusing idle pings": (
            _drop_triton_arg("--grpc-keepalive-permit-without-calls"),
            "--grpc-keepalive-permit-without-calls",
        ),
        "Triton's default ping interval": (
            _set_arg(
                "--grpc-http2-min-recv-ping-interval-without-data",
                "--grpc-http2-min-recv-ping-interval-without-data=300000",
            ),
            "too_many_pings",
        ),
        "chart version label on the Triton pods": (
            lambda d: _tdeploy(d)["spec"]["template"]["metadata"]["labels"].update(
                {"helm.sh/chart": "yolo-triton-0.1.0"}
            ),
            "restarts every pod on a chart bump",
        ),
        "app version label on the gateway pods": (
            lambda d: find(d, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"].update(
                {"app.kubernetes.io/version": "0.1.0"}
            ),
            "restarts every pod on a chart bump",
        ),
        "admin Secret checksum on the Triton pods": (
            lambda d: _tdeploy(d)["spec"]["template"]["metadata"]["annotations"].update({"checksum/admin-key": "0f"}),
            "generated Secret",
        ),
        "emptyDir the autoscaler may not evict": (
            lambda d: _tdeploy(d)["spec"]["template"]["metadata"]["annotations"].update(
                {"cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes": "dshm"}
            ),
            "safe-to-evict-local-volumes",
        ),
        "gateway deadline shorter than Triton's": (
            lambda d: find(d, "Deployment", "gateway")["spec"].update(progressDeadlineSeconds=600),
            "gateway: progressDeadlineSeconds",
        ),
        "decode budget over the gateway's memory": (
            lambda d: gateway_container(d)["env"].append({"name": "GATEWAY_DECODE_BUDGET_BYTES", "value": str(2**31)}),
            "GATEWAY_DECODE_BUDGET_BYTES",
        ),
        "uvicorn keep-alive shorter than the ingress'": (
            lambda d: gateway_container(d).update(
                args=[a for a in gateway_container(d)["args"] if not a.startswith("--timeout-keep-alive")]
                + ["--timeout-keep-alive=5"]
            ),
            "--timeout-keep-alive",
        ),
        "gateway without a body deadline": (
            lambda d: gateway_container(d).update(
                env=[e for e in gateway_container(d)["env"] if e["name"] != "GATEWAY_BODY_TIMEOUT_S"]
            ),
            "GATEWAY_BODY_TIMEOUT_S",
        ),
        "gateway /tmp sized for images only": (  # the size before videos: 64 bodies of 21 MiB + 64 MiB
            lambda d: next(v for v in _gspec(d)["volumes"] if v["name"] == "tmp")["emptyDir"].update(
                sizeLimit="1408Mi"
            ),
            "/tmp's sizeLimit",
        ),
    }
)


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_invariants_catch_a_dropped_safeguard(case: str, rendered: dict[str, list[Doc]]) -> None:
    mutate, expected = MUTATIONS[case]
    docs = copy.deepcopy(rendered["default-values.yaml"])
    mutate(docs)
    problems = check.invariants(docs)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("case", "mutate", "expected"),
    [
        ("ingress without TLS", lambda i: i["spec"].pop("tls"), "TLS"),
        (
            "ingress body limit below the gateway's",
            lambda i: i["metadata"]["annotations"].update({"nginx.ingress.kubernetes.io/proxy-body-size": "10m"}),
            "proxy-body-size",
        ),
        (
            "ingress body limit far above the gateway's",
            lambda i: i["metadata"]["annotations"].update({"nginx.ingress.kubernetes.io/proxy-body-size": "1g"}),
            "proxy-body-size",
        ),
        (
            "ingress streaming bodies to the gateways",
            lambda i: i["metadata"]["annotations"].update(
                {"nginx.ingress.kubernetes.io/proxy-request-buffering": "off"}
            ),
            "proxy-request-buffering",
        ),
        (
            "ingress giving up before the gateway's own deadline",
            lambda i: i["metadata"]["annotations"].update({"nginx.ingress.kubernetes.io/proxy-read-timeout": "30"}),
            "proxy-read-timeout",
        ),
        ("builder on another TensorRT", None, "same TensorRT"),
        (
            "ingress publishing everything",
            lambda i: i["spec"]["rules"][0]["http"].update(
                paths=[{**i["spec"]["rules"][0]["http"]["paths"][0], "path": "/", "pathType": "Prefix"}]
            ),
            "/metrics",
        ),
        (
            "ingress without the newer API",
            lambda i: i["spec"]["rules"][0]["http"].update(
                paths=[p for p in i["spec"]["rules"][0]["http"]["paths"] if p["path"] != "/api/models"]
            ),
            "/api/models/acme/shop/yolov8n/predict is served by the gateway but not routed",
        ),
        (
            "ingress publishing /readyz",
            lambda i: i["spec"]["rules"][0]["http"]["paths"].append(
                {**i["spec"]["rules"][0]["http"]["paths"][0], "path": "/readyz", "pathType": "Exact"}
            ),
            "/readyz",
        ),
        (
            "ingress publishing /metrics",
            lambda i: i["spec"]["rules"][0]["http"]["paths"].append(
                {**i["spec"]["rules"][0]["http"]["paths"][0], "path": "/metrics", "pathType": "Exact"}
            ),
            "/metrics",
        ),
    ],
)
def test_invariants_catch_ingress_and_builder_drift(
    case: str, mutate: Any, expected: str, rendered: dict[str, list[Doc]]
) -> None:
    docs = copy.deepcopy(rendered["gpu-tensorrt-ingress-values.yaml"])
    assert check.invariants(docs) == []
    if mutate is None:
        builder = next(c for c in _tspec(docs)["initContainers"] if c["name"] == "build-engines")
        builder["image"] = "nvcr.io/nvidia/tensorrt:25.01-py3"
    else:
        mutate(check.of_kind(docs, "Ingress")[0])
    assert any(expected in p for p in check.invariants(docs)), case


# --- what the chart renders -----------------------------------------------------------------------------------------


def test_default_triton_builds_tensorrt_plans_from_a_read_only_pvc_before_serving(
    rendered: dict[str, list[Doc]],
) -> None:
    """TensorRT is the default: plans are built in an init container, before the pod is ready, never in a request."""
    docs = rendered["default-values.yaml"]
    spec = _tspec(docs)
    assert [c["name"] for c in spec["initContainers"]] == ["build-engines"]
    source = next(v for v in spec["volumes"] if v["name"] == "source")
    assert source["persistentVolumeClaim"] == {"claimName": "yolo-triton-models", "readOnly": True}
    served = next(m for m in triton_container(docs)["volumeMounts"] if m["mountPath"] == "/models")
    assert served["name"] == "built" and served["readOnly"]
    c = triton_container(docs)
    assert c["image"] == "nvcr.io/nvidia/tritonserver:25.08-py3"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 == c["resources"]["requests"]["nvidia.com/gpu"]
    assert check.probe_budget(c["startupProbe"]) >= 300
    assert spec["securityContext"]["runAsUser"] == 1000  # the official image's triton-server user
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_tensorrt_from_s3_fetches_then_builds_on_the_pods_gpu(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["gpu-tensorrt-ingress-values.yaml"]
    spec = _tspec(docs)
    fetch, build = spec["initContainers"]
    assert fetch["name"] == "fetch-models" and fetch["args"][:4] == [
        "s3",
        "sync",
        "s3://acme-models/yolo/model_repository",
        "/source",
    ]
    assert fetch["envFrom"] == [{"secretRef": {"name": "yolo-models-s3"}}]
    assert build["name"] == "build-engines" and build["image"] == triton_container(docs)["image"]
    assert (
        build["resources"]["limits"]["nvidia.com/gpu"]
        == 2
        == triton_container(docs)["resources"]["limits"]["nvidia.com/gpu"]
    )
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["engine-cache"]["persistentVolumeClaim"]["claimName"] == "yolo-trt-cache"
    served = next(m for m in triton_container(docs)["volumeMounts"] if m["mountPath"] == "/models")
    assert served["name"] == "built" and served["readOnly"]
    configmap = check.of_kind(docs, "ConfigMap")[0]
    assert configmap["data"]["build_engines.py"] == (CHART / "files" / "build_engines.py").read_text().rstrip("\n")
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_pvc_sub_path_reaches_the_builder(rendered: dict[str, list[Doc]]) -> None:
    spec = _tspec(rendered["pvc-tensorrt-fixed-replicas-values.yaml"])
    (build,) = spec["initContainers"]
    source = next(m for m in build["volumeMounts"] if m["name"] == "source")
    assert source == {"name": "source", "mountPath": "/source", "readOnly": True, "subPath": "yolo/model_repository"}


def test_fixed_replicas_without_autoscalers(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["pvc-tensorrt-fixed-replicas-values.yaml"]
    assert check.of_kind(docs, "HorizontalPodAutoscaler") == []
    assert find(docs, "Deployment", "gateway")["spec"]["replicas"] == 3
    assert find(docs, "Deployment", "triton")["spec"]["replicas"] == 2


def test_gateway_settings_come_from_values(rendered: dict[str, list[Doc]]) -> None:
    env = check.env_of(gateway_container(rendered["gpu-tensorrt-ingress-values.yaml"]))
    assert env["GATEWAY_MAX_UPLOAD_BYTES"] == "52428800"  # an int, not Helm's float64 "5.24288e+07"
    assert env["GATEWAY_MAX_PIXELS"] == "60000000"
    assert env["GATEWAY_LETTERBOX"] == "square"
    assert env["GATEWAY_MAX_INFLIGHT"] == "128"
    assert env["GATEWAY_TRITON_TIMEOUT_S"] == "20" and env["GATEWAY_URL_TIMEOUT_S"] == "5"
    assert env["GATEWAY_URL_MAX_REDIRECTS"] == "2"
    assert env["GATEWAY_TRITON_URL"] == "dns:///yolo-triton-triton.yolo.svc.cluster.local:8001"
    assert env["GATEWAY_KEYS_FILE"] == "/etc/yolo-triton/keys/keys.json"


def test_gateway_settings_parse_as_the_gateway_reads_them(rendered: dict[str, list[Doc]]) -> None:
    from gateway.settings import Settings

    for docs in rendered.values():
        env = check.env_of(gateway_container(docs))
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("GATEWAY_")})
        assert settings.triton_url.startswith("dns:///") and settings.max_upload_bytes == int(
            env["GATEWAY_MAX_UPLOAD_BYTES"]
        )


def test_keys_secret_is_mounted_as_a_directory_for_rotation(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["gpu-tensorrt-ingress-values.yaml"]
    mount = next(m for m in gateway_container(docs)["volumeMounts"] if m["name"] == "keys")
    assert mount == {"name": "keys", "mountPath": "/etc/yolo-triton/keys", "readOnly": True}
    volume = next(v for v in _gspec(docs)["volumes"] if v["name"] == "keys")
    assert volume["secret"]["secretName"] == "yolo-api-keys"
    assert volume["secret"]["defaultMode"] == 0o440  # group-readable: fsGroup 10001, the gateway's group


def test_body_deadline_and_ingress_timeouts_agree() -> None:
    """The gateway's body deadline and per-key cap come from values; the ingress buffers bodies (a slow client holds
    nginx, not a gateway), waits longer than the gateway's own deadlines, and uvicorn keeps idle connections longer
    than nginx's upstream keep-alive (60 s)."""
    from gateway.settings import Settings

    limits = check.load_values(CHART / "values.yaml")["gateway"]["limits"]
    for body in ({}, {"bodyTimeoutS": 30, "bodyMinRate": 4096, "bodyGraceS": 5, "maxInflightPerKey": 8}):
        docs = render_with(
            gateway={"limits": {**limits, **body}},
            ingress={"enabled": True, "host": "yolo.example.com", "tls": {"secretName": "tls"}},
        )
        assert check.invariants(docs) == []
        env = check.env_of(gateway_container(docs))
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("GATEWAY_")})
        want = {**limits, **body}
        assert settings.body_timeout_s == want["bodyTimeoutS"] and settings.body_min_rate == want["bodyMinRate"]
        assert (
            settings.body_grace_s == want["bodyGraceS"] and settings.max_inflight_per_key == want["maxInflightPerKey"]
        )
        assert settings.body_timeout_s <= 60 and settings.per_key_inflight < settings.max_inflight
        annotations = check.of_kind(docs, "Ingress")[0]["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "on"
        own = settings.url_timeout_s + settings.triton_timeout_s + settings.decode_budget_wait_s
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > own
        assert int(check.flag(gateway_container(docs)["args"], "timeout-keep-alive") or 0) > 60


@pytest.mark.parametrize(
    ("upload", "video", "workers", "body", "tmp_mib"),
    [
        (20 * 2**20, 100 * 2**20, 1, "101m", 64 * 101 + 101 + 64),  # the defaults: a video's 100 MiB decides
        (20 * 2**20, 20 * 2**20, 1, "21m", 64 * 21 + 21 + 64),  # videos kept at the image size
        (50 * 2**20, 30 * 2**20, 2, "51m", 64 * 51 + 2 * 31 + 64),  # images larger than videos
        (10_000_000, 60 * 2**20, 1, "61m", 64 * 61 + 61 + 64),
    ],
)
def test_ingress_body_limit_and_tmp_follow_the_gateway_upload_and_video_limits(
    upload: int, video: int, workers: int, body: str, tmp_mib: int
) -> None:
    """The ingress lets through every body the gateway accepts (a video's up to GATEWAY_MAX_VIDEO_BYTES), and the
    gateway's /tmp holds what its requests in flight may spool: each its body, and a video per video worker."""
    limits = check.load_values(CHART / "values.yaml")["gateway"]["limits"]
    docs = render_with(
        gateway={"limits": {**limits, "maxUploadBytes": upload, "maxVideoBytes": video}, "videoWorkers": workers},
        ingress={"enabled": True, "host": "yolo.example.com", "tls": {"secretName": "tls"}},
    )
    ingress = check.of_kind(docs, "Ingress")[0]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == body
    assert ingress["spec"]["tls"] == [{"hosts": ["yolo.example.com"], "secretName": "tls"}]
    published = {(p["path"], p["pathType"]) for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert published == {
        ("/v1", "Prefix"),
        ("/api/models", "Prefix"),
        ("/api/deployments", "Prefix"),
        ("/predict", "Exact"),
        ("/dedicated", "Prefix"),
        ("/dialects", "Prefix"),
        ("/openapi.json", "Exact"),
        ("/static", "Prefix"),
        ("/", "Exact"),
    }
    env = check.env_of(gateway_container(docs))
    assert env["GATEWAY_MAX_UPLOAD_BYTES"] == str(upload) and env["GATEWAY_MAX_VIDEO_BYTES"] == str(video)
    assert env["GATEWAY_VIDEO_WORKERS"] == str(workers)
    tmp = next(v for v in _gspec(docs)["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"] == {"sizeLimit": f"{tmp_mib}Mi"}
    assert check.invariants(docs) == []


def test_network_policies_admit_only_the_gateway_to_triton(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["default-values.yaml"]
    policies = {check.component(p): p for p in check.of_kind(docs, "NetworkPolicy")}
    grpc_rule = policies["triton"]["spec"]["ingress"][0]
    assert grpc_rule["ports"] == [{"port": 8001, "protocol": "TCP"}]
    gateway_selector = find(docs, "Deployment", "gateway")["spec"]["selector"]["matchLabels"]
    assert grpc_rule["from"] == [{"podSelector": {"matchLabels": gateway_selector}}]
    egress = policies["gateway"]["spec"]["egress"]
    public = next(r for r in egress if any("ipBlock" in t for t in r.get("to", [])))
    excluded = public["to"][0]["ipBlock"]["except"]
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8"} <= set(excluded)
    assert {"Ingress", "Egress"} == set(policies["gateway"]["spec"]["policyTypes"])


def test_triton_admin_key_is_generated_and_passed_from_a_secret(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["default-values.yaml"]
    secret = next(d for d in check.of_kind(docs, "Secret") if check.component(d) == "triton")
    assert len(secret["data"]["admin-key"]) >= 40
    env = triton_container(docs)["env"]
    assert env[0]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "admin-key"}
    args = triton_container(docs)["args"]
    assert [a for a in args if "admin-key=" in a] == [
        "--http-restricted-api=metadata,inference,shared-memory,model-config,model-repository,statistics,trace,"
        "logging:admin-key=$(TRITON_ADMIN_KEY)",
        "--grpc-restricted-protocol=shared-memory,statistics,trace,logging,model-repository:admin-key=$(TRITON_ADMIN_KEY)",
    ]
    # The gateways list models through the (restricted) repository index: they hold the key, from the same Secret.
    assert check.secret_ref(gateway_container(docs), "GATEWAY_TRITON_ADMIN_KEY") == env[0]["valueFrom"]["secretKeyRef"]


# --- issue 19: first install, rollouts, monitoring ------------------------------------------------------------------


def _sample_path(path: str) -> str:
    """A concrete URL path for a Starlette route template (`{slug:path}` gets several segments)."""
    path = re.sub(r"\{[a-z_]+:path\}", "acme/shop/yolov8n", path)
    return re.sub(r"\{[a-z_]+(:[a-z]+)?\}", "yolov8n", path)


def _app_paths() -> list[tuple[str, Any]]:
    """(sample path, route) for every route the gateway app serves, read from the app itself."""
    from starlette.routing import Mount, Route

    from gateway.app import create_app
    from gateway.settings import Settings

    out: list[tuple[str, Any]] = []
    for route in create_app(Settings()).routes:
        if isinstance(route, Mount):
            out.append((route.path.rstrip("/") + "/app.js", route))
        elif isinstance(route, Route):
            out.append((_sample_path(route.path), route))
    return out


def test_ingress_routes_every_route_the_gateway_serves(rendered: dict[str, list[Doc]]) -> None:
    """Each route of the app is reachable through the rendered Ingress, except the in-cluster probes and metrics."""
    from starlette.routing import Match

    app_paths = _app_paths()
    assert any(p.startswith("/api/models/") for p, _ in app_paths)  # the newer format is one of them
    ingress = check.of_kind(rendered["gpu-tensorrt-ingress-values.yaml"], "Ingress")[0]
    routed = [(p["path"], p["pathType"]) for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    for url_path, _ in app_paths:
        published = any(check.routes(url_path, path, kind) for path, kind in routed)
        assert published == (url_path not in check.INTERNAL_PATHS), url_path
    # check.py's own list (what `make deploy-check` tests) has a sample for every route of the app, and no other.
    for url_path in check.PUBLIC_PATHS + check.INTERNAL_PATHS:
        scope = {"type": "http", "path": url_path, "method": "GET", "root_path": ""}
        assert any(route.matches(scope)[0] != Match.NONE for _, route in app_paths), url_path
    for _, route in app_paths:
        assert any(
            route.matches({"type": "http", "path": p, "method": "GET", "root_path": ""})[0] != Match.NONE
            for p in check.PUBLIC_PATHS + check.INTERNAL_PATHS
        ), route.path


def test_first_rollout_allows_the_image_pull_and_plan_builds(rendered: dict[str, list[Doc]]) -> None:
    for name, docs in rendered.items():
        triton = _tdeploy(docs)
        startup = check.probe_budget(triton_container(docs)["startupProbe"])
        deadline = triton["spec"]["progressDeadlineSeconds"]
        assert deadline >= startup + triton["spec"]["minReadySeconds"] + check.IMAGE_PULL_S, name
        assert find(docs, "Deployment", "gateway")["spec"]["progressDeadlineSeconds"] >= deadline, name
    # NOTES' `kubectl rollout status` waits as long as the Deployment may take.
    text = notes({})
    timeouts = [int(m) for m in re.findall(r"rollout status deploy/\S+ --timeout=(\d+)m", text)]
    assert len(timeouts) == 2 and all(t * 60 >= 3600 for t in timeouts)


def test_single_triton_rollout_surges_and_outlasts_the_gateways_reconnects(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["default-values.yaml"]
    spec = _tdeploy(docs)["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    args = triton_container(docs)["args"]
    age_s = (
        int(check.flag(args, "grpc-max-connection-age")) + int(check.flag(args, "grpc-max-connection-age-grace"))
    ) / 1000
    assert spec["minReadySeconds"] >= age_s == 90
    pre_stop = triton_container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) >= 5
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > int(pre_stop[1]) + 30
    keys = {c["topologyKey"] for c in spec["template"]["spec"]["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


def test_helm_test_pod_reaches_a_gateway_restricted_to_the_ingress_controller(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["gpu-tensorrt-ingress-values.yaml"]
    policy = _gateway_policy(docs)
    assert policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]  # restricted: not an open rule
    (test_pod,) = check.of_kind(docs, "Pod")
    assert check.admits(policy, test_pod["metadata"]["labels"], 8080)
    assert not check.admits(policy, {**test_pod["metadata"]["labels"], "app.kubernetes.io/component": "x"}, 8080)
    # Prometheus (networkPolicy.metricsFrom) may scrape the gateway's /metrics too.
    metrics_from = check.load_values(VALUES_FILES["gpu-tensorrt-ingress-values.yaml"])["networkPolicy"]["metricsFrom"]
    assert all(peer in policy["spec"]["ingress"][0]["from"] for peer in metrics_from)


def test_service_monitors_only_where_the_operator_crd_exists() -> None:
    values = check.load_values(VALUES_FILES["gpu-tensorrt-ingress-values.yaml"])
    without = check.render(values)
    assert check.of_kind(without, "ServiceMonitor") == []
    assert "ServiceMonitor(s) for triton and gateway were asked for but not created" in notes(values)
    with_crd = check.render(values, api_versions=(check.SERVICE_MONITOR,))
    monitors = {check.component(m): m for m in check.of_kind(with_crd, "ServiceMonitor")}
    assert set(monitors) == {"triton", "gateway"}
    gateway_service = find(with_crd, "Service", "gateway")
    assert check.matches(monitors["gateway"]["spec"]["selector"]["matchLabels"], gateway_service["metadata"]["labels"])
    assert monitors["gateway"]["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    assert {p["name"] for p in gateway_service["spec"]["ports"]} >= {"http"}
    assert monitors["gateway"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert "asked for but not created" not in notes(values, (check.SERVICE_MONITOR,))
    assert check.validate(with_crd) == []


def _pod_templates(docs: list[Doc]) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d["spec"]["template"] for d in check.of_kind(docs, "Deployment")}


def test_rerender_and_chart_bump_leave_pod_templates_unchanged(tmp_path: Path) -> None:
    """A GitOps sync (a new render: the admin key is redrawn) or a chart bump must not restart the GPU pods."""
    first, second = render_with(), render_with()
    secret = lambda docs: next(d for d in check.of_kind(docs, "Secret") if check.component(d) == "triton")  # noqa: E731
    assert secret(first)["data"] != secret(second)["data"]  # offline, lookup sees no cluster: a new key each render
    assert _pod_templates(first) == _pod_templates(second)
    bumped = tmp_path / "yolo-triton"
    shutil.copytree(CHART, bumped)
    chart_yaml = yaml.safe_load((bumped / "Chart.yaml").read_text())
    chart_yaml.update(version="9.9.9", appVersion="9.9.9")
    (bumped / "Chart.yaml").write_text(yaml.safe_dump(chart_yaml))
    later = check.render({}, chart_dir=bumped)
    assert find(later, "Deployment", "triton")["metadata"]["labels"]["helm.sh/chart"] == "yolo-triton-9.9.9"
    assert _pod_templates(later) == _pod_templates(first)


def test_admin_key_from_an_existing_secret() -> None:
    docs = render_with(
        triton={"adminKey": {"existingSecret": "ops-triton-admin", "key": "token"}},
        redis={"enabled": True},
        models={"uploads": {"enabled": True, "existingClaim": "uploads"}},
    )
    assert not [d for d in check.of_kind(docs, "Secret") if check.component(d) == "triton"]
    env = triton_container(docs)["env"][0]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "ops-triton-admin", "key": "token"}
    for c in (gateway_container(docs), check.container(find(docs, "Deployment", "worker"), "worker")):
        assert check.secret_ref(c, "GATEWAY_TRITON_ADMIN_KEY") == {"name": "ops-triton-admin", "key": "token"}
    assert check.invariants(docs) == []


def test_triton_pods_are_guaranteed_qos_with_room_for_dev_shm(rendered: dict[str, list[Doc]]) -> None:
    for name, docs in rendered.items():
        spec = _tspec(docs)
        for c in check.containers(spec):
            assert c["resources"]["requests"] == c["resources"]["limits"], (name, c["name"])
        memory = check.quantity_bytes(triton_container(docs)["resources"]["limits"]["memory"])
        shm = check.quantity_bytes(next(v for v in spec["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"])
        assert memory - shm >= 2 * 2**30, name


def test_emptydirs_are_safe_to_evict_for_the_cluster_autoscaler(rendered: dict[str, list[Doc]]) -> None:
    for name, docs in rendered.items():
        for deployment in check.of_kind(docs, "Deployment"):
            template = deployment["spec"]["template"]
            empty = {v["name"] for v in template["spec"]["volumes"] if "emptyDir" in v}
            listed = template["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"]
            assert set(listed.split(",")) == empty, (name, deployment["metadata"]["name"])


def test_onnxruntime_keeps_its_engine_cache_on_a_persistent_volume(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["onnxruntime-engine-cache-values.yaml"]
    spec = _tspec(docs)
    assert "initContainers" not in spec
    workdir = next(v for v in spec["volumes"] if v["name"] == "workdir")
    assert workdir == {"name": "workdir", "persistentVolumeClaim": {"claimName": "yolo-ort-cache"}}
    mount = next(m for m in triton_container(docs)["volumeMounts"] if m["name"] == "workdir")
    assert mount["mountPath"] == triton_container(docs)["workingDir"] and mount["subPath"] == "onnxruntime-25.08-py3"
    # Opting out is explicit.
    ephemeral = render_with(models={"target": "onnxruntime", "onnxruntime": {"engineCache": {"allowEphemeral": True}}})
    assert "emptyDir" in next(v for v in _tspec(ephemeral)["volumes"] if v["name"] == "workdir")


def test_url_allow_hosts_notes_that_the_policy_still_needs_egress() -> None:
    values = check.load_values(VALUES_FILES["onnxruntime-engine-cache-values.yaml"])
    text = notes(values)
    assert "images.internal.example.com" in text and "networkPolicy.gatewayExtraEgress" in text
    assert "gatewayExtraEgress" not in notes({})
    comment = (CHART / "values.yaml").read_text().split("urlAllowHosts:")[0].rsplit("\n\n", 1)[-1]
    assert "also open networkPolicy egress" not in comment


def test_decode_budget_is_rendered_only_when_set() -> None:
    assert "GATEWAY_DECODE_BUDGET_BYTES" not in {e["name"] for e in gateway_container(render_with())["env"]}
    docs = render_with(gateway={"decodeBudgetBytes": 1536 * 2**20})  # + 512 MiB = the default 2 GiB limit exactly
    assert check.env_of(gateway_container(docs))["GATEWAY_DECODE_BUDGET_BYTES"] == str(1536 * 2**20)
    assert check.invariants(docs) == []
    resources = {"requests": {"cpu": "1", "memory": "3584Mi"}, "limits": {"cpu": "2", "memory": "3584Mi"}}
    bigger = render_with(gateway={"decodeBudgetBytes": 3 * 2**30, "resources": resources})
    assert check.env_of(gateway_container(bigger))["GATEWAY_DECODE_BUDGET_BYTES"] == str(3 * 2**30)


def test_gateway_keepalive_is_what_triton_accepts_locally_and_in_the_chart(rendered: dict[str, list[Doc]]) -> None:
    """The client's pings (gateway/triton/client.py) fit the server flags of `make serve` and of the chart, so Triton
    never answers GOAWAY ENHANCE_YOUR_CALM too_many_pings."""
    from gateway.triton.client import CHANNEL_ARGS
    from tritonlocal import launcher

    client = dict(CHANNEL_ARGS)
    interval, idle = client["grpc.keepalive_time_ms"], bool(client["grpc.keepalive_permit_without_calls"])
    assert (interval, idle) == (check.GATEWAY_KEEPALIVE_TIME_MS, check.GATEWAY_KEEPALIVE_WITHOUT_CALLS)
    servers = {"launcher": list(launcher.KEEPALIVE_ARGS)}
    servers.update({name: [str(a) for a in triton_container(docs)["args"]] for name, docs in rendered.items()})
    for name, args in servers.items():
        # gRPC timers jitter: the server must accept pings at up to twice the client's rate.
        assert int(check.flag(args, "grpc-http2-min-recv-ping-interval-without-data") or 300_000) <= interval // 2, name
        if idle:
            assert check.flag(args, "grpc-keepalive-permit-without-calls") in ("1", "true"), name
    assert client["grpc.keepalive_timeout_ms"] <= interval


# --- Prometheus Adapter ---------------------------------------------------------------------------------------------


def test_adapter_rule_serves_queue_time_per_request_to_the_triton_hpa(rendered: dict[str, list[Doc]]) -> None:
    rule = check.adapter_rule()
    query = " ".join(rule["metricsQuery"].split())
    assert re.search(
        r"rate\(nv_inference_queue_duration_us\{<<\.LabelMatchers>>\}\[\w+\]\)\) / "
        r"clamp_min\(sum by \(<<\.GroupBy>>\) \(rate\(nv_inference_request_success\{<<\.LabelMatchers>>\}",
        query,
    )
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    chart_default = check.load_values(CHART / "values.yaml")["triton"]["autoscaling"]["metricName"]
    assert rule["name"]["as"] == chart_default
    for name in ("default-values.yaml", "gpu-tensorrt-ingress-values.yaml"):
        hpa = next(
            h for h in check.of_kind(rendered[name], "HorizontalPodAutoscaler") if check.component(h) == "triton"
        )
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
        assert metric["pods"]["target"]["type"] == "AverageValue"


def test_adapter_rate_window_spans_four_scrapes(rendered: dict[str, list[Doc]]) -> None:
    """rate() needs two samples; over 1 m with Prometheus' default 1 m scrape the HPA reads <unknown>."""
    assert check.adapter_window_s() >= 4 * check.ASSUMED_SCRAPE_INTERVAL_S
    windows = re.findall(r"\[(\w+)\]", check.adapter_rule()["metricsQuery"])
    assert len(windows) == 2 and len(set(windows)) == 1  # numerator and denominator over the same window


# --- the gateway image, without building it ------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage: (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " " if raw.rstrip().endswith("\\") else raw.strip()
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                lines.append(current.strip())
            current = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for line in lines:
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def test_dockerfile_is_multi_stage_on_a_pinned_slim_base() -> None:
    preamble, *stages = dockerfile_stages()
    assert len(stages) >= 2
    base = next(a for i, a in preamble if i == "ARG" and a.startswith("PYTHON_IMAGE="))
    image = base.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), image
    assert all(args.startswith("${PYTHON_IMAGE}") for s in stages for i, args in s if i == "FROM")
    runtime = stages[-1]
    assert runtime[0][1].endswith(" AS runtime")
    # The runtime stage installs nothing: it copies the virtual environment and the gateway package.
    runs = " ".join(a for i, a in runtime if i == "RUN")
    assert "pip" not in runs and "apt-get" not in runs


def test_dockerfile_installs_exactly_the_locked_runtime_dependencies() -> None:
    """The image installs requirements/image-gateway.txt: the [project] dependencies and what they need, at the
    lock's versions, every file checked against a locked hash, nothing resolved."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = lockfile.read_pins(ROOT / "requirements" / "image-gateway.txt")
    locked = lockfile.read_pins(lockfile.LOCK)
    direct = {lockfile.requirement_name(r) for r in pyproject["project"]["dependencies"]}
    assert direct <= set(pins), direct - set(pins)
    assert all(pin.version == locked[name].version and pin.hashes <= locked[name].hashes for name, pin in pins.items())

    build = dockerfile_stages()[1]
    copies = [a for i, a in build if i == "COPY"]
    assert "requirements/image-gateway.txt requirements.txt" in copies
    installs = [cmd.strip() for i, a in build if i == "RUN" for cmd in a.split("&&") if "pip install" in cmd]
    assert len(installs) == 1, installs
    words = shlex.split(installs[0])
    assert words[words.index("install") + 1 :] == [
        "--only-binary=:all:", "--require-hashes", "--no-deps", "-r", "requirements.txt"
    ]  # fmt: skip
    text = " ".join(f"{i} {a}" for stage in dockerfile_stages() for i, a in stage).lower()  # instructions, not comments
    for forbidden in (
        "torch",
        "ultralytics",
        "onnxruntime",
        "gcc",
        "build-essential",
        "[export",
        "[triton",
        "[test",
        ".[",
        "-e .",
    ):
        assert forbidden not in text, forbidden
    runtime = {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in pyproject["project"]["dependencies"]}
    assert not runtime & {"torch", "torchvision", "ultralytics", "ultralytics-opencv-headless", "onnxruntime"}


def test_dockerfile_copies_only_the_gateway_package() -> None:
    stages = dockerfile_stages()
    sources = [a.split()[0] for s in stages[1:] for i, a in s if i == "COPY" and not a.startswith("--from")]
    # deploy/wheels/ and deploy/debs/ are empty unless an offline build (deploy/containers.py) placed wheels and
    # Debian packages (binutils, for the build stage only) there.
    assert sources == ["requirements/image-gateway.txt", "deploy/wheels/", "deploy/debs/", "gateway/"]
    ignore = [
        line
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().split("\n")
        if line and not line.startswith("#")
    ]
    assert ignore[0] == "*" and {
        "!requirements/image-gateway.txt",
        "!deploy/wheels/",
        "!deploy/debs/",
        "!gateway/",
    } <= set(ignore)


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    runtime = dockerfile_stages()[-1]
    users = [a for i, a in runtime if i == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users
    uid = users[-1].split(":")[0]
    assert any(f"--uid {uid}" in a for i, a in runtime if i == "RUN")
    health = next(a for i, a in runtime if i == "HEALTHCHECK")
    assert "http://127.0.0.1:8080/healthz" in health
    expose = [a for i, a in runtime if i == "EXPOSE"]
    assert expose == ["8080"]
    env = " ".join(a for i, a in runtime if i == "ENV")
    assert "OPENCV_IO_MAX_IMAGE_PIXELS=1073741824" in env and "PYTHONDONTWRITEBYTECODE=1" in env


def test_dockerfile_entrypoint_starts_the_same_app_as_make_serve(rendered: dict[str, list[Doc]]) -> None:
    runtime = dockerfile_stages()[-1]
    entrypoint = json.loads(next(a for i, a in runtime if i == "ENTRYPOINT"))
    cmd = json.loads(next(a for i, a in runtime if i == "CMD"))
    assert entrypoint == ["uvicorn", "gateway.app:create_app", "--factory", "--http=gateway.server:DrainingProtocol"]
    from tritonlocal import launcher

    assert entrypoint[3:] == launcher.gateway_command("127.0.0.1", 8080)[-1:]  # as `make serve` and the tests run it
    serve = (ROOT / "tritonlocal" / "serve.py").read_text()
    assert "from gateway.app import create_app" in serve  # what `make serve` runs
    module, _, attr = entrypoint[1].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    assert "--timeout-graceful-shutdown=20" in cmd and "--port=8080" in cmd
    # The chart passes the same arguments (its port and shutdown values are the image's defaults).
    assert gateway_container(rendered["default-values.yaml"])["args"] == cmd


# --- compose: the single-GPU-host alternative ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


ADMIN_KEY_REF = "${TRITON_ADMIN_KEY:?set the key of Triton's restricted APIs (deploy/README.md)}"


def _normalise_admin_key(args: list[str]) -> list[str]:
    return [a.replace("$(TRITON_ADMIN_KEY)", "<key>").replace(ADMIN_KEY_REF, "<key>") for a in args]


def _compose_triton_args(service: dict[str, Any]) -> list[str]:
    """tritonserver's command line in compose: the chart's arguments, with the key from TRITON_ADMIN_KEY."""
    return [str(a) for a in service["command"]]


def test_compose_triton_runs_like_the_chart(compose: dict[str, Any], rendered: dict[str, list[Doc]]) -> None:
    service = compose["services"]["triton"]
    chart = triton_container(rendered["default-values.yaml"])
    assert service["image"] == chart["image"]
    assert _normalise_admin_key(_compose_triton_args(service)) == _normalise_admin_key(chart["args"])
    assert "<key>" in " ".join(_normalise_admin_key(chart["args"]))
    # Compose has one healthcheck, which the gateway waits for: the chart's startup probe (every built-in model).
    assert service["healthcheck"]["test"] == ["CMD", *chart["startupProbe"]["exec"]["command"]]
    assert service["user"] == "1000:1000" and service["read_only"] and service["cap_drop"] == ["ALL"]
    assert service["volumes"][0].endswith(":/models:ro")
    assert service["shm_size"] == "1gb" and check.load_values(CHART / "values.yaml")["triton"]["shmSize"] == "1Gi"
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert (
        sorted(int(p) for p in service["expose"])
        == [8000, 8001, 8002]
        == sorted(p["containerPort"] for p in chart["ports"])
    )
    # Only metrics is published, and only on the host's loopback; inference goes through the gateway.
    assert service["ports"] == ["127.0.0.1:8002:8002"]


def test_compose_gateway_settings_match_the_chart_defaults(
    compose: dict[str, Any], rendered: dict[str, list[Doc]]
) -> None:
    service = compose["services"]["gateway"]
    chart = gateway_container(rendered["default-values.yaml"])
    chart_env, compose_env = check.env_of(chart), {k: str(v) for k, v in service["environment"].items()}
    # The admin key: from TRITON_ADMIN_KEY here, Triton's Secret on the chart (a secretKeyRef, not in env_of).
    assert compose_env.pop("GATEWAY_TRITON_ADMIN_KEY") == ADMIN_KEY_REF
    assert check.secret_ref(chart, "GATEWAY_TRITON_ADMIN_KEY") is not None
    assert set(compose_env) == set(chart_env)
    for name, value in chart_env.items():
        if name == "GATEWAY_TRITON_URL":
            assert value.endswith(":8001") and compose_env[name] == "triton:8001"
        else:
            assert compose_env[name] == value, name
    assert service["command"] == chart["args"]
    assert service["ports"] == ["${GATEWAY_PORT:-8000}:8080"] and chart["ports"][0]["containerPort"] == 8080
    assert service["user"] == "10001:10001" and service["read_only"] and "/tmp" in service["tmpfs"]
    assert service["volumes"] == ["../data:/etc/yolo-triton/keys:ro"]
    assert service["depends_on"]["triton"]["condition"] == "service_healthy"
    assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}


def test_compose_engine_builder_uses_the_chart_script_and_triton_image(
    compose: dict[str, Any], rendered: dict[str, list[Doc]]
) -> None:
    engines = compose["services"]["engines"]
    build = next(
        c
        for c in _tspec(rendered["pvc-tensorrt-fixed-replicas-values.yaml"])["initContainers"]
        if c["name"] == "build-engines"
    )
    assert engines["image"] == build["image"] and engines["command"] == build["args"]
    assert "./helm/yolo-triton/files/build_engines.py:/opt/yolo-triton/build_engines.py:ro" in engines["volumes"]
    assert engines["profiles"] == ["tensorrt"]


# --- the TensorRT plan builder -------------------------------------------------------------------------------------

SPEC = ModelSpec(
    name="yolov8n",
    task="detect",
    names={0: "person", 1: "bicycle"},
    stride=32,
    imgsz=640,
    inputs=[Tensor("images", "uint8", [-1, -1, 3])],
    outputs=[Tensor("output0", "float32", [6, -1])],
    input_format="uint8_nhwc_bgr",
)


def _serving(target: str, fp16: bool = True) -> Serving:
    base = triton_config.serving_defaults(target)  # type: ignore[arg-type]
    return Serving(
        target,
        base.max_batch_size,
        base.instances,
        base.queue_delay_us,
        base.max_queue_size,
        base.preferred_batch_sizes,
        fp16,
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("fp16", [True, False])
def test_builder_config_equals_the_exporters_tensorrt_config(fp16: bool) -> None:
    onnxruntime = triton_config.render(SPEC, _serving("onnxruntime", fp16))
    converted = build_engines.to_tensorrt_config(onnxruntime)
    assert converted == triton_config.render(SPEC, _serving("tensorrt", fp16))
    triton_config.parse(converted)
    assert build_engines.model_info(onnxruntime)["fp16"] is fp16


@pytest.mark.parametrize("input_format", ["uint8_nhwc_bgr", "float32_nchw_rgb"])
def test_builder_trtexec_command_equals_the_exporters(input_format: str) -> None:
    spec = ModelSpec(**{**SPEC.__dict__, "input_format": input_format})
    serving = _serving("tensorrt")
    info = build_engines.model_info(triton_config.render(spec, _serving("onnxruntime")))
    onnx, plan = Path("/source/m/1/model.onnx"), Path("/built/m/1/model.plan")
    ours = build_engines.trtexec_command("trtexec", onnx, plan, info)
    assert ours == export_tensorrt.trtexec_command(onnx, plan, spec, serving)


def _fake_trtexec(bin_dir: Path, calls: Path) -> None:
    script = bin_dir / "trtexec"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        'for a in "$@"; do case "$a" in --saveEngine=*) printf plan > "${a#--saveEngine=}";; esac; done\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_builder_builds_once_per_gpu_and_tensorrt_version(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "yolov8n" / "1").mkdir(parents=True)
    (source / "yolov8n" / "config.pbtxt").write_text(triton_config.render(SPEC, _serving("onnxruntime")))
    (source / "yolov8n" / "1" / "model.onnx").write_bytes(b"onnx bytes")
    (source / "yolov8n" / "source.onnx").write_bytes(b"reference")
    python_model = source / "cpu-model"
    (python_model / "1").mkdir(parents=True)
    (python_model / "config.pbtxt").write_text('name: "cpu-model"\nbackend: "python"\n')
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    _fake_trtexec(bin_dir, calls)

    def run(gpu: str, trt: str, output: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GPU_NAME": gpu, "TRT_VERSION": trt}
        script = CHART / "files" / "build_engines.py"
        return subprocess.run(
            [
                sys.executable,
                str(script),
                f"--source={source}",
                f"--output={tmp_path / output}",
                f"--cache={tmp_path / 'cache'}",
            ],
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = run("NVIDIA H100 80GB HBM3", "10.11.0.33", "out1")
    assert first.returncode == 0, first.stderr
    assert "yolov8n: built in" in first.stderr and "cpu-model: copied unchanged" in first.stderr
    out = tmp_path / "out1"
    assert (out / "yolov8n" / "1" / "model.plan").read_bytes() == b"plan"
    assert not (out / "yolov8n" / "1" / "model.onnx").exists() and not (out / "yolov8n" / "source.onnx").exists()
    assert (out / "yolov8n" / "config.pbtxt").read_text() == triton_config.render(SPEC, _serving("tensorrt"))
    assert (out / "cpu-model" / "config.pbtxt").exists()
    cached = list((tmp_path / "cache").rglob("*.plan"))
    assert [p.relative_to(tmp_path / "cache").parts[:2] for p in cached] == [
        ("nvidia-h100-80gb-hbm3", "trt-10.11.0.33")
    ]

    second = run("NVIDIA H100 80GB HBM3", "10.11.0.33", "out2")
    assert second.returncode == 0 and "yolov8n: cache hit" in second.stderr
    assert (tmp_path / "out2" / "yolov8n" / "1" / "model.plan").read_bytes() == b"plan"
    assert len(calls.read_text().splitlines()) == 1

    other_gpu = run("NVIDIA L4", "10.11.0.33", "out3")
    other_trt = run("NVIDIA H100 80GB HBM3", "10.13.2.6", "out4")
    assert "built in" in other_gpu.stderr and "built in" in other_trt.stderr
    assert len(calls.read_text().splitlines()) == 3
    assert len(list((tmp_path / "cache").rglob("*.plan"))) == 3


def _builder_repository(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    source = tmp_path / "source"
    (source / "yolov8n" / "1").mkdir(parents=True)
    (source / "yolov8n" / "config.pbtxt").write_text(triton_config.render(SPEC, _serving("onnxruntime")))
    (source / "yolov8n" / "1" / "model.onnx").write_bytes(b"onnx bytes")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_trtexec(bin_dir, tmp_path / "calls.txt")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "GPU_NAME": "NVIDIA L4",
        "TRT_VERSION": "10.11.0.33",
    }
    return source, env


def _run_builder(source: Path, output: Path, cache: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(CHART / "files" / "build_engines.py"),
            f"--source={source}",
            f"--output={output}",
            f"--cache={cache}",
        ],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("broken", ["cache root is a file", "cached plan is a directory"])
def test_builder_warns_and_builds_when_the_cache_fails(tmp_path: Path, broken: str) -> None:
    """The cache only saves time: an unusable one is a warning, and the init container still succeeds."""
    source, env = _builder_repository(tmp_path)
    cache = tmp_path / "cache"
    if broken == "cache root is a file":
        cache.write_text("not a directory")  # mkdir under it fails (NotADirectoryError), like a broken mount
    else:
        assert _run_builder(source, tmp_path / "warm", cache, env).returncode == 0
        (plan,) = cache.rglob("*.plan")
        plan.unlink()
        plan.mkdir()  # storing the new plan there fails (IsADirectoryError)
    result = _run_builder(source, tmp_path / "out", cache, env)
    assert result.returncode == 0, result.stderr
    assert "warning: cannot write the plan cache" in result.stderr
    assert "yolov8n: built in" in result.stderr and "(not cached)" in result.stderr
    assert (tmp_path / "out" / "yolov8n" / "1" / "model.plan").read_bytes() == b"plan"


def test_builder_failed_build_is_an_error(tmp_path: Path) -> None:
    source, env = _builder_repository(tmp_path)
    (Path(env["PATH"].split(":")[0]) / "trtexec").write_text("#!/bin/sh\necho 'parse error' >&2\nexit 3\n")
    result = _run_builder(source, tmp_path / "out", tmp_path / "cache", env)
    assert result.returncode == 1
    assert "error: trtexec failed (3)" in result.stderr and "parse error" in result.stderr


def test_builder_fails_clearly_without_models(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(CHART / "files" / "build_engines.py"),
            f"--source={tmp_path}",
            f"--output={tmp_path / 'out'}",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "no models" in result.stderr


# --- the check script and the README ---------------------------------------------------------------------------------


def test_check_script_passes_with_a_readable_summary() -> None:
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "check.py")], check=False, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(VALUES_FILES)} of {len(VALUES_FILES)} values files passed" in result.stdout
    for name in VALUES_FILES:
        assert f"[ok] deploy/helm/yolo-triton/ci/{name}" in result.stdout


def test_check_script_fails_on_a_bad_values_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text("gateway:\n  replicaCount: two\n")
    report = check.check_values_file(bad)
    assert any("replicaCount" in p for p in report.problems)
    monkeypatch.setattr(check, "values_files", lambda: [bad])
    assert check.main() == 1
    assert "[FAIL]" in capsys.readouterr().out


def test_readme_names_only_files_that_exist() -> None:
    readme = (DEPLOY / "README.md").read_text()
    # `deploy/yolo-triton-...` are kubectl resource names (deployment/<name>), not files.
    paths = {p for p in re.findall(r"\bdeploy/[\w./-]+\w", readme) if not p.startswith("deploy/yolo-triton-")}
    assert {
        "deploy/Dockerfile",
        "deploy/compose.yaml",
        "deploy/check.py",
        "deploy/prometheus-adapter/values.yaml",
    } <= paths
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert missing == []


def _redis_docs(rendered: dict[str, list[Doc]]) -> list[Doc]:
    return copy.deepcopy(rendered["redis-values.yaml"])


def _redis_container(docs: list[Doc]) -> Doc:
    return next(d for d in check.of_kind(docs, "StatefulSet") if check.component(d) == "redis")["spec"]["template"][
        "spec"
    ]["containers"][0]


REDIS_MUTATIONS: dict[str, tuple[Callable[[list[Doc]], Any], str]] = {
    "password as a literal": (
        lambda d: next(e for e in gateway_container(d)["env"] if e["name"] == "GATEWAY_REDIS_PASSWORD").update(
            value="hunter2", valueFrom={}
        ),
        "GATEWAY_REDIS_PASSWORD",
    ),
    "no egress to Redis": (
        lambda d: d.remove(
            next(
                p
                for p in check.of_kind(d, "NetworkPolicy")
                if p["metadata"]["name"].endswith("-redis") and check.component(p) == "gateway"
            )
        ),
        "egress rule reaches Redis",
    ),
    "Redis without a password": (lambda d: _redis_container(d).update(args=["exec redis-server"]), "password"),
    "Redis without a PVC": (
        lambda d: next(s for s in check.of_kind(d, "StatefulSet") if check.component(s) == "redis")["spec"].pop(
            "volumeClaimTemplates"
        ),
        "PersistentVolumeClaim",
    ),
    "Redis open to every pod": (
        lambda d: next(p for p in check.of_kind(d, "NetworkPolicy") if check.component(p) == "redis")["spec"][
            "ingress"
        ][0].update({"from": [{"podSelector": {}}]}),
        "admit only the gateway",
    ),
}


def test_redis_values_deploy_redis_and_point_every_gateway_at_it(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["redis-values.yaml"]
    env = {e["name"]: e for e in gateway_container(docs)["env"]}
    assert env["GATEWAY_REDIS_URL"]["value"] == "redis://yolo-triton-redis.yolo.svc.cluster.local:6379/0"
    assert env["GATEWAY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "yolo-triton-redis"
    job = check.of_kind(docs, "Job")[0]
    assert "import" in job["spec"]["template"]["spec"]["containers"][0]["command"]
    default_env = {e["name"] for e in gateway_container(rendered["default-values.yaml"])["env"]}
    assert "GATEWAY_REDIS_URL" not in default_env  # the keys file stays the default


@pytest.mark.parametrize("case", sorted(REDIS_MUTATIONS))
def test_redis_invariants_catch_a_dropped_safeguard(case: str, rendered: dict[str, list[Doc]]) -> None:
    mutate, expected = REDIS_MUTATIONS[case]
    docs = _redis_docs(rendered)
    assert check.invariants(docs) == []
    mutate(docs)
    assert any(expected in p for p in check.invariants(docs)), check.invariants(docs)


# --- uploaded models (issue #27): Triton in explicit model control, the export worker, one shared volume ------------


def _uploads_docs(rendered: dict[str, list[Doc]]) -> list[Doc]:
    return copy.deepcopy(rendered["uploads-values.yaml"])


def _worker(docs: list[Doc]) -> Doc:
    return find(docs, "Deployment", "worker")


def _worker_container(docs: list[Doc]) -> Doc:
    c = check.container(_worker(docs), "worker")
    assert c is not None
    return c


def _policy(docs: list[Doc], comp: str) -> Doc:
    return next(p for p in check.of_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == f"yolo-triton-{comp}")


def _env_entry(c: Doc, name: str) -> Doc:
    return next(e for e in c["env"] if e["name"] == name)


def test_triton_loads_every_repository_at_start_in_explicit_model_control(rendered: dict[str, list[Doc]]) -> None:
    for name, docs in rendered.items():
        args = triton_container(docs)["args"]
        assert {a for a in args if a.split("=")[0] in ("--model-control-mode", "--load-model", "--strict-readiness",
                "--exit-on-error")} == {"--model-control-mode=explicit", "--load-model=*",
                                        "--strict-readiness=false", "--exit-on-error=false"}, name  # fmt: skip
        assert not any(a.startswith("--repository-poll-secs") for a in args), name
        assert ("--model-repository=/var/lib/yolo-triton/repository" in args) == (name == "uploads-values.yaml"), name


def test_triton_startup_probe_waits_for_every_built_in_model(tmp_path: Path) -> None:
    """The startup probe's script, run here against a fake Triton: it passes only when every folder of /models with
    a config.pbtxt answers ready (a failed built-in keeps the pod out of its Service), and never on an empty
    repository."""
    import http.server
    import threading

    command = triton_container(render_with())["startupProbe"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"]
    ready: set[str] = set()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            name = self.path.removeprefix("/v2/models/").removesuffix("/ready")
            self.send_response(200 if name in ready else 400)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    models = tmp_path / "models"
    # The pod's paths and Triton's port, here: this test's folder and server.
    script = command[2].replace('"/models/*/config.pbtxt"', repr(f"{models}/*/config.pbtxt"))
    script = script.replace("127.0.0.1:8000/", f"127.0.0.1:{server.server_port}/")
    assert script.count(str(models)) == 1 and script.count(str(server.server_port)) == 1

    def probe() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)

    try:
        models.mkdir()
        assert probe().returncode == 1  # no model at all: not started
        for name in ("yolov8n", "yolov8n-seg"):
            (models / name).mkdir()
            (models / name / "config.pbtxt").write_text("")
        (models / "notes").mkdir()  # a folder without a config is no model
        ready.add("yolov8n")
        assert probe().returncode == 1 and "not ready: yolov8n-seg" in probe().stdout
        ready.add("yolov8n-seg")
        done = probe()
        assert done.returncode == 0 and "2 models in /models ready" in done.stdout
    finally:
        server.shutdown()


def test_uploads_share_one_volume_between_the_gateways_the_worker_and_triton(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["uploads-values.yaml"]
    assert check.invariants(docs) == []
    worker, wc = _worker(docs), _worker_container(docs)
    assert worker["spec"]["replicas"] == 2 and wc["image"] == "registry.example.com/ml/yolo-triton-worker:0.1.0"
    assert wc["args"] == ["--repository=/var/lib/yolo-triton/repository", "--alive-file=/tmp/export-worker.alive"]
    env = check.env_of(wc)
    assert env["GATEWAY_TRITON_URL"] == "dns:///yolo-triton-triton.yolo.svc.cluster.local:8001"
    assert env["GATEWAY_MODELS_DIR"] == "/var/lib/yolo-triton/models" and env["OMP_NUM_THREADS"] == "2"
    assert env["GATEWAY_REDIS_URL"] == "redis://yolo-triton-redis.yolo.svc.cluster.local:6379/0"
    wspec, tspec, gspec = worker["spec"]["template"]["spec"], _tspec(docs), _gspec(docs)
    claim = ("yolo-uploads", "repository")
    assert check.volume_path(wspec, wc, "/var/lib/yolo-triton/repository") == claim
    assert check.volume_path(tspec, triton_container(docs), "/var/lib/yolo-triton/repository") == claim
    gc = gateway_container(docs)
    assert check.env_of(gc)["GATEWAY_MODELS_DIR"] == "/var/lib/yolo-triton/models"
    assert check.volume_path(gspec, gc, "/var/lib/yolo-triton/models/uploads/x.pt") == (
        "yolo-uploads", "models/uploads/x.pt"
    )  # fmt: skip
    assert check.volume_path(gspec, gc, "/var/lib/yolo-triton/repository") is None  # the gateway never sees it
    # Triton reads it all, read-only; the gateways' init container makes the folders as their user first.
    (mount,) = [m for m in triton_container(docs)["volumeMounts"] if m["name"] == "uploads"]
    assert mount["readOnly"] and "subPath" not in mount
    (init,) = gspec["initContainers"]
    assert init["name"] == "uploads-folders" and init["image"] == gc["image"]
    assert "models/uploads" in init["command"][2] and "repository" in init["command"][2]
    assert wspec["securityContext"]["runAsUser"] == gspec["securityContext"]["runAsUser"] == 10001
    # Both read the admin key from Triton's Secret; the ingress lets an uploaded checkpoint through.
    assert check.secret_ref(wc, "GATEWAY_TRITON_ADMIN_KEY") == check.secret_ref(
        triton_container(docs), "TRITON_ADMIN_KEY"
    )
    assert check.env_of(gc)["GATEWAY_MAX_MODEL_BYTES"] == "536870912"
    assert "uploads" not in {m["name"] for m in triton_container(rendered["default-values.yaml"])["volumeMounts"]}
    assert check.one(rendered["default-values.yaml"], "Deployment", "worker") is None


def test_uploads_raise_the_ingress_body_limit_to_a_checkpoint_but_not_the_gateways_tmp() -> None:
    base = {"ingress": {"enabled": True, "host": "yolo.example.com", "tls": {"secretName": "tls"}}}
    plain = render_with(**base)
    uploads = render_with(**base, redis={"enabled": True}, models={"uploads": {"enabled": True, "existingClaim": "u"}})
    body = lambda docs: check.of_kind(docs, "Ingress")[0]["metadata"]["annotations"][  # noqa: E731
        "nginx.ingress.kubernetes.io/proxy-body-size"
    ]
    tmp = lambda docs: next(v for v in _gspec(docs)["volumes"] if v["name"] == "tmp")["emptyDir"]["sizeLimit"]  # noqa: E731
    assert (body(plain), body(uploads)) == ("101m", "513m")  # a 100 MiB video; a 512 MiB checkpoint, + the form
    assert tmp(plain) == tmp(uploads)  # checkpoints stream to the uploads volume, never to /tmp
    assert check.invariants(uploads) == []


def test_worker_policy_admits_nothing_and_reaches_only_triton_redis_and_dns(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["uploads-values.yaml"]
    policy = _policy(docs, "worker")
    assert policy["spec"]["ingress"] == [] and set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ports = sorted(p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"])
    assert ports == [53, 53, 6379, 8001]
    worker_labels = check.pod_labels(_worker(docs))
    assert check.admits(_policy(docs, "triton"), worker_labels, 8001)
    assert check.admits(_policy(docs, "redis"), worker_labels, 6379)
    assert not check.admits(_policy(docs, "triton"), worker_labels, 8000)


UPLOADS_MUTATIONS: dict[str, tuple[Callable[[list[Doc]], Any], str]] = {
    "worker root filesystem writable": (
        lambda d: _worker_container(d)["securityContext"].update(readOnlyRootFilesystem=False),
        "worker: readOnlyRootFilesystem",
    ),
    "worker /tmp without a size limit": (
        lambda d: next(v for v in _worker(d)["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp").update(
            emptyDir={}
        ),
        "/tmp must be an emptyDir with a sizeLimit",
    ),
    "worker without liveness": (lambda d: _worker_container(d).pop("livenessProbe"), "livenessProbe"),
    "worker privilege escalation": (
        lambda d: _worker_container(d)["securityContext"].update(allowPrivilegeEscalation=True),
        "allowPrivilegeEscalation",
    ),
    "worker without limits": (lambda d: _worker_container(d)["resources"].pop("limits"), "resources.limits"),
    "worker as root": (
        lambda d: _worker_container(d)["securityContext"].update(runAsUser=0, runAsNonRoot=False),
        "uid 0",
    ),
    "worker as another user": (
        lambda d: _worker(d)["spec"]["template"]["spec"]["securityContext"].update(runAsUser=10002),
        "the gateways' user",
    ),
    "worker through a ClusterIP name": (
        lambda d: _env_entry(_worker_container(d), "GATEWAY_TRITON_URL").update(value="yolo-triton-triton:8001"),
        "headless",
    ),
    "worker without Redis": (
        lambda d: _worker_container(d).update(
            env=[e for e in _worker_container(d)["env"] if e["name"] != "GATEWAY_REDIS_URL"]
        ),
        "GATEWAY_REDIS_URL",
    ),
    "worker admin key as a literal": (
        lambda d: _env_entry(_worker_container(d), "GATEWAY_TRITON_ADMIN_KEY").update(value="k", valueFrom={}),
        "worker: GATEWAY_TRITON_ADMIN_KEY",
    ),
    "worker policy removed": (
        lambda d: d.remove(_policy(d, "worker")),
        "select the export worker",
    ),
    "worker reachable": (
        lambda d: _policy(d, "worker")["spec"].update(ingress=[{"ports": [{"port": 8080}]}]),
        "nothing may connect",
    ),
    "worker egress to the internet": (
        lambda d: _policy(d, "worker")["spec"]["egress"].append(
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
        ),
        "may reach only Triton",
    ),
    "worker egress on every port": (
        lambda d: _policy(d, "worker")["spec"]["egress"].append({"to": [{"podSelector": {}}]}),
        "may reach only Triton",
    ),
    "worker egress to 8001 of any pod": (
        lambda d: _policy(d, "worker")["spec"]["egress"][0].pop("to"),
        "must name the Triton pods",
    ),
    "Triton policy without the worker": (
        lambda d: _policy(d, "triton")["spec"]["ingress"][0]["from"].pop(1),
        "admit the export worker to 8001",
    ),
    "Redis policy without the worker": (
        lambda d: _policy(d, "redis")["spec"]["ingress"][0]["from"].pop(2),
        "redis: the NetworkPolicy must admit the export worker",
    ),
    "Triton without the uploads' repository": (
        _set_arg("--model-repository=/var/lib", None),
        "name the worker's repository",
    ),
    "Triton writing the uploads' volume": (
        lambda d: next(m for m in triton_container(d)["volumeMounts"] if m["name"] == "uploads").pop("readOnly"),
        "must lie in a read-only mount",
    ),
    "worker repository on an emptyDir": (
        lambda d: _worker_container(d).update(args=["--repository=/tmp/repository"]),
        "--repository must lie on the shared PersistentVolumeClaim",
    ),
    "gateway mounting the whole volume": (
        lambda d: next(m for m in gateway_container(d)["volumeMounts"] if m["name"] == "uploads").update(
            mountPath="/var/lib/yolo-triton", subPath=""
        ),
        "must mount only the uploads folder",
    ),
    "gateway uploads elsewhere": (
        lambda d: _env_entry(gateway_container(d), "GATEWAY_MODELS_DIR").update(value="/tmp/models"),
        "GATEWAY_MODELS_DIR/uploads must be the worker's",
    ),
    "gateway uploads read-only": (
        lambda d: next(m for m in gateway_container(d)["volumeMounts"] if m["name"] == "uploads").update(readOnly=True),
        "GATEWAY_MODELS_DIR/uploads must be the worker's",
    ),
}


@pytest.mark.parametrize("case", sorted(UPLOADS_MUTATIONS))
def test_uploads_invariants_catch_a_dropped_safeguard(case: str, rendered: dict[str, list[Doc]]) -> None:
    mutate, expected = UPLOADS_MUTATIONS[case]
    docs = _uploads_docs(rendered)
    assert check.invariants(docs) == []
    mutate(docs)
    assert any(expected in p for p in check.invariants(docs)), check.invariants(docs)
