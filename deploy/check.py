"""Render the Helm chart with every ci/*-values.yaml, validate it offline, assert the deployment invariants.

    python deploy/check.py            # exit 0: every values file renders, validates and keeps the invariants

For each values file: `helm lint --strict` (Helm v4 SDK, no binary, no cluster), render (on a cluster with the APIs
that CLUSTER_APIS names for that file, e.g. the Prometheus Operator's ServiceMonitor), validate every object
against the Kubernetes 1.29 and 1.33 OpenAPI schemas in strict mode (a missing schema is an error, except for the
allow-listed CRDs), then check the invariants a later edit must not drop (probes, security contexts, resources,
GPUs, the headless Triton Service, NetworkPolicies, autoscalers, PDBs, the keys Secret mount, image tags, Triton's
flags, rollout timing, gRPC keepalive, ingress routes, memory budgets, and with uploaded models the export worker and
the volume it shares with the gateways and Triton). Prints one summary line per values file and every problem found.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import json

import helm_python as helm
import kubernetes_validate
import yaml
from helm_python import _native

DEPLOY = Path(__file__).resolve().parent
sys.path.insert(0, str(DEPLOY.parent))  # the gateway of this checkout, whose limits the chart must let through

from gateway.settings import FORM_OVERHEAD  # noqa: E402

CHART = DEPLOY / "helm" / "yolo-triton"
ADAPTER_VALUES = DEPLOY / "prometheus-adapter" / "values.yaml"
RELEASE, NAMESPACE = "yolo-triton", "yolo"
KUBE_VERSIONS = ("1.29", "1.33")
# CRDs have no schema in kubernetes-validate; these are the only ones the chart may render.
CRD_ALLOWLIST = {("monitoring.coreos.com/v1", "ServiceMonitor")}
MIN_TRITON_RELEASE = (25, 7)  # the 2025 Triton security fixes
TRITON_STARTUP_BUDGET_S = 300  # model loading (and engine deserialisation) before liveness applies
IMAGE_PULL_S = 600  # the ~10 GB Triton image on a new node: a rollout's deadline must leave room for it
SERVICE_MONITOR = "monitoring.coreos.com/v1/ServiceMonitor"
# The cluster each ci values file stands for: API versions beyond the built-in ones (what `helm install` would see).
CLUSTER_APIS: dict[str, tuple[str, ...]] = {"gpu-tensorrt-ingress-values.yaml": (SERVICE_MONITOR,)}
# gateway/triton/client.py CHANNEL_ARGS (tests/test_deploy.py checks they agree): the client pings every 60 s, idle too.
GATEWAY_KEEPALIVE_TIME_MS = 60_000
GATEWAY_KEEPALIVE_WITHOUT_CALLS = True
ASSUMED_SCRAPE_INTERVAL_S = 60  # Prometheus' default, where no ServiceMonitor sets one
DECODE_RESERVE = 512 * 2**20  # the gateway's memory beside its decode budget (GATEWAY_DECODE_BUDGET_BYTES)
# Paths the gateway serves to clients (one sample per route of gateway/app.py; tests/test_deploy.py derives the
# routes from the app and checks this list covers them) and the ones that stay inside the cluster.
PUBLIC_PATHS = (
    "/v1/predict/yolov8n", "/api/models/acme/shop/yolov8n/predict", "/", "/v1/models", "/v1/models/yolov8n",
    "/openapi.json", "/static/app.js",
    "/v1/keys", "/v1/keys/0a1b2c3d", "/v1/keys/0a1b2c3d/usage",  # the admin API (keys with the admin scope)
    "/v1/streams", "/v1/streams/s1", "/v1/streams/s1/events", "/v1/webhooks/secret",  # live streams (#28)
    "/v1/models/fruit/rollback",  # the models API (#27: its other routes share /v1/models/{id})
    "/v1/jobs", "/v1/jobs/j1", "/v1/jobs/j1/result",  # video jobs (#28)
    # the Ultralytics dialects' other doors: hub-sdk's login, the Platform SDK's deployments, dedicated endpoints,
    # and the base paths that pin a dialect
    "/v1/auth", "/api/deployments/acme/yolov8n/predict", "/predict", "/dedicated/yolov8n",
    "/dedicated/yolov8n/predict", "/dialects/platform", "/dialects/hub-xywhn/v1/auth",
)  # fmt: skip
INTERNAL_PATHS = ("/metrics", "/healthz", "/readyz")
# ingress-nginx's upstream-keepalive-timeout: uvicorn's --timeout-keep-alive must be longer, or nginx may send a
# request on a connection uvicorn is closing (a 502 for a request the gateway never saw).
INGRESS_UPSTREAM_KEEPALIVE_S = 60
DECODE_BUDGET_WAIT_S = 5.0  # GATEWAY_DECODE_BUDGET_WAIT_S's default: a request may wait this long for memory
HTTP_RESTRICTED = {
    "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics", "trace", "logging",
}  # fmt: skip
# gRPC's repository protocol too (load, unload, index): only the gateways (the index) and the export worker (loads and
# unloads) hold the key.
GRPC_RESTRICTED = {"shared-memory", "statistics", "trace", "logging", "model-repository"}
# Triton in explicit model control (issue #27; tritonlocal/launcher.py measured why): everything in the repositories
# loaded at start, strict readiness and exit-on-error off (one failed load must not take a pod out of its Service or
# stop it).
TRITON_CONTROL_FLAGS = {
    "model-control-mode": "explicit",
    "load-model": "*",
    "strict-readiness": "false",
    "exit-on-error": "false",
}
WORKER_EGRESS_PORTS = {8001, 53}  # Triton's gRPC and DNS; and Redis' port (from GATEWAY_REDIS_URL)
GATEWAY_SETTINGS = (
    "GATEWAY_TRITON_URL", "GATEWAY_KEYS_FILE", "GATEWAY_MAX_UPLOAD_BYTES", "GATEWAY_MAX_PIXELS", "GATEWAY_LETTERBOX",
    "GATEWAY_TRITON_TIMEOUT_S", "GATEWAY_MAX_INFLIGHT", "GATEWAY_URL_TIMEOUT_S", "GATEWAY_URL_MAX_REDIRECTS",
    "GATEWAY_URL_ALLOW_HOSTS", "GATEWAY_WORKERS", "OPENCV_IO_MAX_IMAGE_PIXELS",
    "GATEWAY_MAX_INFLIGHT_PER_KEY", "GATEWAY_BODY_TIMEOUT_S", "GATEWAY_BODY_MIN_RATE", "GATEWAY_BODY_GRACE_S",
    "GATEWAY_MAX_VIDEO_BYTES", "GATEWAY_VIDEO_WORKERS",
)  # fmt: skip

Doc = dict[str, Any]


# --- rendering and validation -------------------------------------------------------------------------------------


def values_files() -> list[Path]:
    return sorted((CHART / "ci").glob("*-values.yaml"))


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def lint(values: dict[str, Any]) -> list[str]:
    """`helm lint --strict`: errors and warnings (info messages such as 'icon is recommended' are not problems)."""
    problems: list[str] = []
    for version in KUBE_VERSIONS:
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{version}.0")
        found = [
            f"lint: {m['path']}: {m['error'].strip()}" for m in report.get("messages", []) if m.get("severity", 0) >= 2
        ]
        found += [f"lint: {e.strip()}" for e in report.get("errors", [])]
        problems += [p for p in found if p not in problems]
    return problems


def render_files(
    values: dict[str, Any],
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    api_versions: Iterable[str] = (),
    chart_dir: Path = CHART,
) -> dict[str, str]:
    """Template path -> rendered text (helm template), NOTES.txt included; `api_versions` as `--api-versions`."""
    with helm.Chart.load(chart_dir) as chart:
        if not api_versions:
            return chart.render(values=values, name=release, namespace=namespace, is_install=True)
        # helm-python's Chart.render has no api_versions argument; its native call takes the option.
        opts = {"name": release, "namespace": namespace, "is_install": True, "api_versions": list(api_versions)}
        raw = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts))
        return dict(json.loads(raw))


def render(
    values: dict[str, Any],
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    api_versions: Iterable[str] = (),
    chart_dir: Path = CHART,
) -> list[Doc]:
    """Every object the chart renders (helm template), hooks included. Raises helm_python errors on bad values."""
    manifests = render_files(values, release, namespace, api_versions, chart_dir)
    docs: list[Doc] = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def validate(docs: Iterable[Doc], versions: Iterable[str] = KUBE_VERSIONS) -> list[str]:
    """Strict OpenAPI validation of each object for each Kubernetes version; an unknown kind is an error."""
    problems = []
    for version in versions:
        for doc in docs:
            what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')} ({doc.get('apiVersion')}) on {version}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                if (doc.get("apiVersion"), doc.get("kind")) not in CRD_ALLOWLIST:
                    problems.append(f"schema: no Kubernetes {version} schema for {what}")
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                problems.append(f"schema: {what}: {path}: {exc.message}")
    return problems


# --- the rendered objects -----------------------------------------------------------------------------------------


def of_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


def component(doc: Doc) -> str:
    labels = doc.get("metadata", {}).get("labels", {})
    return str(labels.get("app.kubernetes.io/component", ""))


def one(docs: Iterable[Doc], kind: str, comp: str) -> Doc | None:
    found = [d for d in of_kind(docs, kind) if component(d) == comp]
    return found[0] if len(found) == 1 else None


def pod_specs(docs: Iterable[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield name, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield name, doc["spec"]


def containers(spec: Doc) -> list[Doc]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def container(deployment: Doc | None, name: str) -> Doc | None:
    if deployment is None:
        return None
    return next((c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name), None)


def env_of(c: Doc) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", []) if "value" in e}


def mount_of(c: Doc, path: str) -> Doc | None:
    """The volumeMount of container `c` that holds `path` (the deepest one)."""
    found = [
        m
        for m in c.get("volumeMounts", [])
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    return max(found, key=lambda m: len(m["mountPath"])) if found else None


def volume_path(spec: Doc, c: Doc, path: str) -> tuple[str, str] | None:
    """Where `path` of container `c` lies on a PersistentVolumeClaim: (claim, folder inside it), or None."""
    mount = mount_of(c, path)
    if mount is None:
        return None
    volume = next((v for v in spec.get("volumes", []) if v["name"] == mount["name"]), {})
    claim = volume.get("persistentVolumeClaim", {}).get("claimName")
    if claim is None:
        return None
    inside = path[len(mount["mountPath"].rstrip("/")) :].strip("/")
    return str(claim), "/".join(p for p in (str(mount.get("subPath", "")).strip("/"), inside) if p)


def secret_ref(c: Doc | None, name: str) -> Doc | None:
    """The secretKeyRef an env variable of `c` comes from (None: absent, or a literal value)."""
    entry = next((e for e in (c or {}).get("env", []) if e["name"] == name), {})
    ref = entry.get("valueFrom", {}).get("secretKeyRef")
    return dict(ref) if ref else None


def probe_budget(probe: Doc) -> int:
    return int(probe.get("initialDelaySeconds", 0)) + int(probe.get("periodSeconds", 10)) * int(
        probe.get("failureThreshold", 3)
    )


def release_of(image: str) -> tuple[int, int] | None:
    m = re.search(r":(\d{2})\.(\d{2})(?:-|$)", image)
    return (int(m.group(1)), int(m.group(2))) if m else None


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(deployment: Doc) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"].get("labels", {}))


def restricted_groups(args: list[str], flag: str) -> set[str]:
    groups: set[str] = set()
    for a in args:
        if a.startswith(flag + "="):
            apis, _, credential = a[len(flag) + 1 :].partition(":")
            if "=" in credential and credential.split("=", 1)[1]:
                groups.update(apis.split(","))
    return groups


def routes(url_path: str, path: str, path_type: str | None) -> bool:
    """Whether an Ingress path of this type sends `url_path` to its backend."""
    if path_type == "Exact":
        return url_path == path
    return path == "/" or url_path == path.rstrip("/") or url_path.startswith(path.rstrip("/") + "/")


def size_bytes(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]?)", value.strip().lower())
    if not m:
        raise ValueError(f"not a size: {value!r}")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2)]


QUANTITY_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


def quantity_bytes(value: object) -> int:
    """A Kubernetes memory quantity ('16Gi', '512Mi', 1073741824) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?|)", str(value).strip())
    if not m or m.group(2) not in QUANTITY_UNITS:
        raise ValueError(f"not a memory quantity: {value!r}")
    return int(float(m.group(1)) * QUANTITY_UNITS[m.group(2)])


def duration_s(value: str) -> float:
    """A Prometheus duration ('15s', '1m', '500ms') in seconds."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", value.strip())
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name=value` in a command line (the last one wins, as in tritonserver)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return values[-1] if values else None


def admits(policy: Doc, labels: dict[str, str], port: int) -> bool:
    """Whether a NetworkPolicy's ingress rules let a pod with `labels`, in the release's namespace, reach `port`."""
    for rule in policy["spec"].get("ingress", []):
        ports = {p.get("port") for p in rule.get("ports", [])}
        if ports and port not in ports:
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            selector = peer.get("podSelector")
            if "namespaceSelector" not in peer and "ipBlock" not in peer and selector is not None:
                if matches(selector.get("matchLabels", {}), labels) or selector == {}:
                    return True
    return False


# --- the invariants -----------------------------------------------------------------------------------------------


def invariants(docs: list[Doc]) -> list[str]:
    """Everything RELIABILITY.md's deployment checklist and issue 6 ask of the rendered objects."""
    problems: list[str] = []
    problems += _pod_invariants(docs)
    problems += _triton_invariants(docs)
    problems += _gateway_invariants(docs)
    problems += _policy_invariants(docs)
    problems += _rollout_invariants(docs)
    problems += _monitoring_invariants(docs)
    problems += _redis_invariants(docs)
    problems += _uploads_invariants(docs)
    return problems


def _pod_invariants(docs: list[Doc]) -> list[str]:
    problems = []
    for name, spec in pod_specs(docs):
        pod_sc = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: automountServiceAccountToken must be false (no component uses the API)")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: pod seccompProfile must be RuntimeDefault")
        for c in containers(spec):
            where = f"{name} container {c['name']}"
            sc = c.get("securityContext", {})
            image = str(c.get("image", ""))
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{where}: image {image!r} must have a pinned tag, never :latest")
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot must be true")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                problems.append(f"{where}: runs as uid 0")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            if sc.get("privileged"):
                problems.append(f"{where}: must not be privileged")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
                problems.append(f"{where}: capabilities must drop ALL and add none")
            if sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile must be RuntimeDefault")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(kind, {}))
                if missing:
                    problems.append(f"{where}: resources.{kind} lacks {', '.join(sorted(missing))}")
    return problems


def _triton_invariants(docs: list[Doc]) -> list[str]:
    problems = []
    deployment = one(docs, "Deployment", "triton")
    triton = container(deployment, "triton")
    if deployment is None or triton is None:
        return ["triton: exactly one Triton Deployment with a 'triton' container is required"]
    spec = deployment["spec"]["template"]["spec"]
    args = [str(a) for a in triton.get("args", [])] + [str(a) for a in triton.get("command", [])]

    release = release_of(str(triton.get("image", "")))
    if release is None or release < MIN_TRITON_RELEASE:
        problems.append(f"triton: image {triton.get('image')!r} must be a tritonserver release >= 25.07")
    builder = next((c for c in spec.get("initContainers", []) if c["name"] == "build-engines"), None)
    if builder is not None and release_of(str(builder.get("image", ""))) != release:
        problems.append("triton: the TensorRT builder image must be the Triton image's release (same TensorRT)")

    for name, value in TRITON_CONTROL_FLAGS.items():
        given = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=") or a == f"--{name}"]
        if given != [value]:
            problems.append(
                f"triton: args must contain --{name}={value} once (have {given or 'none'}): explicit model control "
                "loads every repository at start; strict readiness and exit-on-error off keep one failed load from "
                "taking the pod out of its Service or stopping it"
            )
    if any(a.startswith(("--repository-poll-secs", "--allow-sagemaker=true", "--allow-vertex-ai=true")) for a in args):
        problems.append("triton: no repository polling or extra protocol endpoints may be enabled")
    if not HTTP_RESTRICTED <= restricted_groups(args, "--http-restricted-api"):
        problems.append(f"triton: --http-restricted-api must restrict {sorted(HTTP_RESTRICTED)} with a key")
    if not GRPC_RESTRICTED <= restricted_groups(args, "--grpc-restricted-protocol"):
        problems.append(f"triton: --grpc-restricted-protocol must restrict {sorted(GRPC_RESTRICTED)} with a key")
    if "health" in restricted_groups(args, "--http-restricted-api"):
        problems.append("triton: HTTP health must stay open for the kubelet's probes")

    ports = {p.get("containerPort") for p in triton.get("ports", [])}
    if not {8000, 8001, 8002} <= ports:
        problems.append("triton: container ports 8000 (HTTP), 8001 (gRPC) and 8002 (metrics) are required")
    startup, ready, live = (triton.get(k) or {} for k in ("startupProbe", "readinessProbe", "livenessProbe"))
    script = " ".join(str(a) for a in startup.get("exec", {}).get("command", []))
    if (
        "/v2/models/" not in script
        or "/models/*/config.pbtxt" not in script
        or probe_budget(startup) < TRITON_STARTUP_BUDGET_S
    ):
        problems.append(
            "triton: the startupProbe must wait for every built-in model (each /models/*/config.pbtxt ready on "
            f"/v2/models/<name>/ready; without strict readiness /v2/health/ready does not), with a budget >= "
            f"{TRITON_STARTUP_BUDGET_S} s"
        )
    if ready.get("httpGet", {}).get("path") != "/v2/health/ready":
        problems.append("triton: readinessProbe must be /v2/health/ready")
    if live.get("httpGet", {}).get("path") != "/v2/health/live":
        problems.append("triton: livenessProbe must be /v2/health/live")

    for c in [triton] + ([builder] if builder else []):
        res = c.get("resources", {})
        gpus = res.get("limits", {}).get("nvidia.com/gpu")
        if not isinstance(gpus, int) or gpus < 1:
            problems.append(f"triton: container {c['name']} needs limits nvidia.com/gpu >= 1")
        elif res.get("requests", {}).get("nvidia.com/gpu", gpus) != gpus:
            problems.append(f"triton: container {c['name']} nvidia.com/gpu requests must equal limits")

    for c in containers(spec):
        res = c.get("resources", {})
        if res.get("requests") != res.get("limits"):
            problems.append(f"triton: container {c['name']} requests must equal limits (Guaranteed QoS for GPU pods)")

    keepalive = flag(args, "grpc-http2-min-recv-ping-interval-without-data")
    if keepalive is None or int(keepalive) > GATEWAY_KEEPALIVE_TIME_MS // 2:
        problems.append(
            f"triton: --grpc-http2-min-recv-ping-interval-without-data must be <= half the gateway's keepalive "
            f"({GATEWAY_KEEPALIVE_TIME_MS} ms), or Triton answers GOAWAY too_many_pings"
        )
    if GATEWAY_KEEPALIVE_WITHOUT_CALLS and flag(args, "grpc-keepalive-permit-without-calls") not in ("1", "true"):
        problems.append(
            "triton: --grpc-keepalive-permit-without-calls=1 is required (the gateway pings idle connections)"
        )

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    shm = next((m for m in triton.get("volumeMounts", []) if m.get("mountPath") == "/dev/shm"), None)
    if shm is None or volumes.get(shm["name"], {}).get("emptyDir", {}).get("medium") != "Memory":
        problems.append("triton: /dev/shm must be a memory-backed emptyDir (python backend, default 64 MiB)")
    else:
        shm_size = volumes[shm["name"]]["emptyDir"].get("sizeLimit")
        memory = triton.get("resources", {}).get("limits", {}).get("memory")
        if shm_size is None or memory is None or quantity_bytes(memory) - quantity_bytes(shm_size) < 2 * 2**30:
            problems.append("triton: the memory limit must exceed /dev/shm's sizeLimit by 2 GiB (it counts against it)")
    models = next((m for m in triton.get("volumeMounts", []) if m.get("mountPath") == "/models"), None)
    if models is None or not models.get("readOnly"):
        problems.append("triton: the model repository must be mounted read-only at /models")
    if flag(args, "model-repository") is None or "--model-repository=/models" not in args:
        problems.append("triton: --model-repository=/models (the built-in models) is required")
    for repository in (a.split("=", 1)[1] for a in args if a.startswith("--model-repository=")):
        mount = mount_of(triton, repository)
        if mount is None or not mount.get("readOnly"):
            problems.append(f"triton: the model repository {repository} must lie in a read-only mount")

    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    scraped = annotations.get("prometheus.io/scrape") == "true" and annotations.get("prometheus.io/port") == "8002"
    if not scraped and not of_kind(docs, "ServiceMonitor"):
        problems.append("triton: metrics need prometheus.io scrape annotations (port 8002) or a ServiceMonitor")

    service = one(docs, "Service", "triton")
    if service is None:
        problems.append("triton: a Triton Service is required")
    else:
        if service["spec"].get("type", "ClusterIP") != "ClusterIP" or service["spec"].get("clusterIP") != "None":
            problems.append("triton: the Service must be headless (clusterIP: None), never LoadBalancer/NodePort")
        if not matches(service["spec"].get("selector", {}), pod_labels(deployment)):
            problems.append("triton: the Service selector must match the Triton pods")
        if {p.get("port") for p in service["spec"].get("ports", [])} != {8000, 8001, 8002}:
            problems.append("triton: the Service must publish 8000, 8001 and 8002")
    for svc in of_kind(docs, "Service"):
        if svc is not service and matches(svc["spec"].get("selector", {}), pod_labels(deployment)):
            problems.append(f"triton: Service {svc['metadata']['name']} must not also select the Triton pods")
    return problems


def _body_limit(env: dict[str, str]) -> int:
    """The largest request body the gateway accepts: its image or video upload limit, the larger, + the form."""
    return (
        max(int(env.get("GATEWAY_MAX_UPLOAD_BYTES", "0")), int(env.get("GATEWAY_MAX_VIDEO_BYTES", "0"))) + FORM_OVERHEAD
    )


def _largest_body(env: dict[str, str]) -> int:
    """The largest request body at all: an image's or a video's, or an uploaded checkpoint's (streamed to the uploads
    volume, never to /tmp) + the form."""
    model = int(env.get("GATEWAY_MAX_MODEL_BYTES", "0"))
    return max(_body_limit(env), model + FORM_OVERHEAD if model else 0)


def _gateway_invariants(docs: list[Doc]) -> list[str]:
    problems = []
    deployment = one(docs, "Deployment", "gateway")
    gateway = container(deployment, "gateway")
    if deployment is None or gateway is None:
        return ["gateway: exactly one gateway Deployment with a 'gateway' container is required"]
    spec = deployment["spec"]["template"]["spec"]
    env = env_of(gateway)
    sc = gateway.get("securityContext", {})
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("gateway: readOnlyRootFilesystem must be true")
    ready, live = gateway.get("readinessProbe") or {}, gateway.get("livenessProbe") or {}
    if ready.get("httpGet", {}).get("path") != "/readyz":
        problems.append("gateway: readinessProbe must be /readyz")
    if live.get("httpGet", {}).get("path") != "/healthz":
        problems.append("gateway: livenessProbe must be /healthz")
    missing = [k for k in GATEWAY_SETTINGS if k not in env]
    if missing:
        problems.append(f"gateway: settings missing from env: {', '.join(missing)}")

    triton_args = [str(a) for a in (container(one(docs, "Deployment", "triton"), "triton") or {}).get("args", [])]
    admin = secret_ref(container(one(docs, "Deployment", "triton"), "triton"), "TRITON_ADMIN_KEY")
    if "model-repository" in restricted_groups(triton_args, "--grpc-restricted-protocol") and (
        admin is None or secret_ref(gateway, "GATEWAY_TRITON_ADMIN_KEY") != admin
    ):
        problems.append(
            "gateway: GATEWAY_TRITON_ADMIN_KEY must come from Triton's admin Secret (secretKeyRef): Triton's gRPC "
            "repository protocol is restricted, and the gateway lists models (/v1/models, /readyz) through it"
        )

    triton_service = one(docs, "Service", "triton")
    if triton_service is not None:
        name = triton_service["metadata"]["name"]
        if not re.fullmatch(
            rf"dns:///{re.escape(name)}\.[a-z0-9-]+\.svc\.[a-z0-9.-]+:8001", env.get("GATEWAY_TRITON_URL", "")
        ):
            problems.append(
                f"gateway: GATEWAY_TRITON_URL must be dns:///{name}.<namespace>.svc.<domain>:8001 "
                "(headless, round-robin)"
            )

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    keys_file = env.get("GATEWAY_KEYS_FILE", "")
    mount = next(
        (m for m in gateway.get("volumeMounts", []) if keys_file.startswith(m["mountPath"].rstrip("/") + "/")), None
    )
    if mount is None or "secret" not in volumes.get(mount["name"], {}):
        problems.append("gateway: GATEWAY_KEYS_FILE must lie in a mounted Secret volume")
    elif mount.get("subPath") or not mount.get("readOnly"):
        problems.append(
            "gateway: the keys Secret must be mounted read-only as a directory (no subPath, so updates arrive)"
        )
    tmp = next((m for m in gateway.get("volumeMounts", []) if m.get("mountPath") == "/tmp"), None)
    if tmp is None:
        problems.append(
            "gateway: /tmp must be a writable volume (uploads spool there; the root filesystem is read-only)"
        )
    elif (size := volumes.get(tmp["name"], {}).get("emptyDir", {}).get("sizeLimit")) is not None:
        # every request in flight may spool its body, and each video worker one more video while it copies it
        video = int(env.get("GATEWAY_MAX_VIDEO_BYTES", "0"))
        needed = (
            int(env.get("GATEWAY_MAX_INFLIGHT", "0")) * _body_limit(env)
            + int(env.get("GATEWAY_VIDEO_WORKERS", "1")) * video
        )
        if quantity_bytes(size) < needed:
            problems.append(
                f"gateway: /tmp's sizeLimit {size} is less than the uploads in flight may spool ({needed} bytes: "
                "GATEWAY_MAX_INFLIGHT bodies and a video per video worker); the kubelet evicts a pod past it"
            )

    pre_stop = gateway.get("lifecycle", {}).get("preStop", {})
    sleep = pre_stop.get("exec", {}).get("command", []) or []
    graceful = next(
        (int(a.split("=", 1)[1]) for a in gateway.get("args", []) if str(a).startswith("--timeout-graceful-shutdown=")),
        None,
    )
    if not pre_stop or graceful is None:
        problems.append("gateway: preStop and --timeout-graceful-shutdown are required for graceful termination")
    else:
        pause = (
            int(sleep[-1]) if sleep and str(sleep[-1]).isdigit() else int(pre_stop.get("sleep", {}).get("seconds", 0))
        )
        if int(spec.get("terminationGracePeriodSeconds", 30)) <= pause + graceful:
            problems.append("gateway: terminationGracePeriodSeconds must exceed preStop + graceful shutdown")
    keep_alive = flag(gateway.get("args", []), "timeout-keep-alive")
    if keep_alive is None or float(keep_alive) <= INGRESS_UPSTREAM_KEEPALIVE_S:
        problems.append(
            f"gateway: --timeout-keep-alive must exceed the ingress' upstream keep-alive "
            f"({INGRESS_UPSTREAM_KEEPALIVE_S} s), so nginx never reuses a connection uvicorn is closing"
        )
    if not spec.get("topologySpreadConstraints"):
        problems.append("gateway: topologySpreadConstraints are required")
    triton = one(docs, "Deployment", "triton")
    if triton is not None and int(deployment["spec"].get("progressDeadlineSeconds", 600)) < int(
        triton["spec"].get("progressDeadlineSeconds", 600)
    ):
        problems.append("gateway: progressDeadlineSeconds must cover Triton's (a gateway is ready once Triton is)")
    if "OPENCV_IO_MAX_IMAGE_PIXELS" not in env:
        problems.append("gateway: OPENCV_IO_MAX_IMAGE_PIXELS must be set")
    budget = env.get("GATEWAY_DECODE_BUDGET_BYTES")
    memory = gateway.get("resources", {}).get("limits", {}).get("memory")
    if budget is not None and memory is not None and int(budget) + DECODE_RESERVE > quantity_bytes(memory):
        problems.append(
            f"gateway: GATEWAY_DECODE_BUDGET_BYTES {budget} + 512 MiB exceeds the memory limit {memory} "
            "(the budget and the limit are derived from each other)"
        )

    for ingress in of_kind(docs, "Ingress"):
        where = f"Ingress/{ingress['metadata']['name']}"
        hosts = {r.get("host") for r in ingress["spec"].get("rules", [])}
        tls_hosts = {h for t in ingress["spec"].get("tls", []) if t.get("secretName") for h in t.get("hosts", [])}
        if not hosts or not hosts <= tls_hosts:
            problems.append(f"{where}: every host must be covered by TLS with a secretName")
        routed = [
            (p.get("path", "/"), p.get("pathType"))
            for r in ingress["spec"].get("rules", [])
            for p in r["http"]["paths"]
        ]
        for url_path in INTERNAL_PATHS:
            if any(routes(url_path, path, kind) for path, kind in routed):
                problems.append(f"{where}: must not publish the gateway's {url_path} (it stays inside the cluster)")
        for url_path in PUBLIC_PATHS:
            if not any(routes(url_path, path, kind) for path, kind in routed):
                problems.append(
                    f"{where}: {url_path} is served by the gateway but not routed (the ingress answers 404)"
                )
        annotations = ingress["metadata"].get("annotations", {})
        if annotations.get("nginx.ingress.kubernetes.io/proxy-request-buffering") != "on":
            problems.append(
                f'{where}: proxy-request-buffering must be "on": nginx reads a slow client\'s body, then hands it to a '
                "gateway at cluster speed (the gateway's own body deadline is GATEWAY_BODY_TIMEOUT_S)"
            )
        # the gateway answers its own JSON 502/503/504 before nginx gives up: URL fetch, waiting for memory, inference
        own = sum(float(env.get(k, "0")) for k in ("GATEWAY_URL_TIMEOUT_S", "GATEWAY_TRITON_TIMEOUT_S"))
        own += float(env.get("GATEWAY_DECODE_BUDGET_WAIT_S", DECODE_BUDGET_WAIT_S))
        for name in ("proxy-read-timeout", "proxy-send-timeout"):
            value = annotations.get(f"nginx.ingress.kubernetes.io/{name}", "")
            if not value.isdigit() or int(value) <= own:
                problems.append(
                    f"{where}: {name} {value!r} must exceed the gateway's own deadlines ({own:g} s: URL fetch, "
                    "memory wait, inference), so clients get the gateway's JSON error, not the ingress' HTML one"
                )
        body = ingress["metadata"].get("annotations", {}).get("nginx.ingress.kubernetes.io/proxy-body-size")
        limit = _largest_body(env)
        if body is None or not limit <= size_bytes(body) < limit + 2**20:
            problems.append(
                f"{where}: proxy-body-size {body!r} must match the gateway's limit ({limit} bytes, rounded up to MiB)"
            )
    return problems


def _policy_invariants(docs: list[Doc]) -> list[str]:
    problems = []
    gateway, triton = one(docs, "Deployment", "gateway"), one(docs, "Deployment", "triton")
    if gateway is None or triton is None:
        return []
    gw_labels, tr_labels = pod_labels(gateway), pod_labels(triton)
    worker = one(docs, "Deployment", "worker")
    clients = [gw_labels] + ([pod_labels(worker)] if worker is not None else [])

    policies = of_kind(docs, "NetworkPolicy")
    triton_policies = [
        p for p in policies if matches(p["spec"].get("podSelector", {}).get("matchLabels", {}), tr_labels)
    ]
    if not triton_policies:
        problems.append("networkpolicy: a NetworkPolicy must select the Triton pods")
    for p in triton_policies:
        if "Ingress" not in p["spec"].get("policyTypes", []):
            problems.append("networkpolicy: the Triton policy must restrict Ingress")
        for rule in p["spec"].get("ingress", []):
            if not rule.get("from"):
                problems.append("networkpolicy: every Triton ingress rule must name its peers (no open rule)")
            ports = {pt.get("port") for pt in rule.get("ports", [])}
            if not ports:
                problems.append("networkpolicy: every Triton ingress rule must name its ports")
            if 8001 in ports and not all(
                any(matches(peer.get("podSelector", {}).get("matchLabels", {}), labels) for labels in clients)
                and "namespaceSelector" not in peer
                for peer in rule.get("from", [])
            ):
                problems.append(
                    "networkpolicy: only the gateway pods (and the export worker) may reach Triton's gRPC port"
                )
    if not any(matches(p["spec"].get("podSelector", {}).get("matchLabels", {}), gw_labels) for p in policies):
        problems.append("networkpolicy: a NetworkPolicy must select the gateway pods")

    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    for hpa in hpas:
        if hpa["apiVersion"] != "autoscaling/v2":
            problems.append(f"hpa: {hpa['metadata']['name']} must be autoscaling/v2")
    by_target = {h["spec"]["scaleTargetRef"]["name"]: h for h in hpas}
    for deployment, comp in ((gateway, "gateway"), (triton, "triton")):
        hpa = by_target.get(deployment["metadata"]["name"])
        if hpa is None:
            if "replicas" not in deployment["spec"]:
                problems.append(f"hpa: the {comp} Deployment has neither an HPA nor a replica count")
            continue
        if "replicas" in deployment["spec"]:
            problems.append(f"hpa: the {comp} Deployment must not set replicas when an HPA owns it")
        metrics = hpa["spec"].get("metrics", [])
        if comp == "gateway" and not any(
            m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for m in metrics
        ):
            problems.append("hpa: the gateway HPA must scale on CPU")
        if comp == "triton":
            names = {m["pods"]["metric"]["name"] for m in metrics if m.get("type") == "Pods"}
            if adapter_metric_name() not in names:
                problems.append(
                    f"hpa: the Triton HPA must scale on the adapter's {adapter_metric_name()} (Pods metric)"
                )

    pdbs = of_kind(docs, "PodDisruptionBudget")
    for deployment, comp in ((gateway, "gateway"), (triton, "triton")):
        if not any(matches(p["spec"].get("selector", {}).get("matchLabels", {}), pod_labels(deployment)) for p in pdbs):
            problems.append(f"pdb: a PodDisruptionBudget must cover the {comp} pods")
    return problems


def _rollout_invariants(docs: list[Doc]) -> list[str]:
    """A rollout that finishes, drops no request, and restarts no pod for a chart bump or a re-render."""
    problems = []
    triton = one(docs, "Deployment", "triton")
    tc = container(triton, "triton")
    if triton is None or tc is None:
        return []
    spec = triton["spec"]
    args = [str(a) for a in tc.get("args", [])]
    startup = probe_budget(tc.get("startupProbe") or {})
    min_ready = int(spec.get("minReadySeconds", 0))
    deadline = int(spec.get("progressDeadlineSeconds", 600))
    if deadline < startup + min_ready + IMAGE_PULL_S:
        problems.append(
            f"triton: progressDeadlineSeconds {deadline} must exceed the startup budget ({startup} s) + "
            f"minReadySeconds ({min_ready} s) + {IMAGE_PULL_S} s of image pull, or the first rollout is reported failed"
        )
    age = int(flag(args, "grpc-max-connection-age") or 0) + int(flag(args, "grpc-max-connection-age-grace") or 0)
    if age == 0 or min_ready * 1000 < age:
        problems.append(
            f"triton: minReadySeconds ({min_ready}) must cover the gRPC connection age + grace ({age / 1000:.0f} s): "
            "every gateway must reconnect to the new pod before the old one stops"
        )
    hpa = next(
        (
            h
            for h in of_kind(docs, "HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == triton["metadata"]["name"]
        ),
        None,
    )
    smallest = int(hpa["spec"].get("minReplicas", 1)) if hpa else int(spec.get("replicas", 1))
    rolling = spec.get("strategy", {}).get("rollingUpdate", {})
    if smallest == 1 and (str(rolling.get("maxUnavailable", "25%")) not in ("0", "0%") or not rolling.get("maxSurge")):
        problems.append("triton: with one replica a rollout must surge (maxSurge >= 1, maxUnavailable 0)")
    pre_stop = tc.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if not pre_stop:
        problems.append("triton: a preStop sleep is required (DNS and the gateways let go before Triton drains)")
    elif int(spec["template"]["spec"].get("terminationGracePeriodSeconds", 30)) <= int(pre_stop[-1]) + 30:
        problems.append("triton: terminationGracePeriodSeconds must exceed preStop + Triton's 30 s exit timeout")
    if not spec["template"]["spec"].get("topologySpreadConstraints"):
        problems.append("triton: topologySpreadConstraints are required")

    for deployment in of_kind(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        labels = template["metadata"].get("labels", {})
        for key in ("helm.sh/chart", "app.kubernetes.io/version"):
            if key in labels:
                problems.append(f"{name}: pod template label {key} restarts every pod on a chart bump")
        annotations = template["metadata"].get("annotations", {})
        if any("admin" in k or "secret" in k for k in annotations):
            problems.append(f"{name}: no checksum of a generated Secret in the pod template (every render restarts it)")
        volumes = template["spec"].get("volumes", [])
        empty = {v["name"] for v in volumes if "emptyDir" in v}
        listed = set(
            filter(None, annotations.get("cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes", "").split(","))
        )
        if empty - listed:
            problems.append(
                f"{name}: cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes must list the emptyDirs "
                f"{sorted(empty - listed)} (else the autoscaler never drains the node)"
            )
        if listed - {v["name"] for v in volumes if "emptyDir" in v}:
            problems.append(
                f"{name}: safe-to-evict-local-volumes names {sorted(listed - empty)}, which are no emptyDirs"
            )

    gateway = one(docs, "Deployment", "gateway")
    gateway_policy = next(
        (
            p
            for p in of_kind(docs, "NetworkPolicy")
            if gateway is not None
            and matches(p["spec"].get("podSelector", {}).get("matchLabels", {}), pod_labels(gateway))
        ),
        None,
    )
    gc = container(gateway, "gateway")
    port = gc["ports"][0]["containerPort"] if gc else 8080
    for test in of_kind(docs, "Pod"):
        if "test" in test["metadata"].get("annotations", {}).get("helm.sh/hook", "") and gateway_policy is not None:
            if not admits(gateway_policy, test["metadata"].get("labels", {}), port):
                problems.append(
                    f"networkpolicy: the gateway's policy blocks the chart's own test pod {test['metadata']['name']}"
                )
    return problems


def _monitoring_invariants(docs: list[Doc]) -> list[str]:
    """Under the Prometheus Operator both components are scraped; the adapter's rate window fits the scrapes."""
    problems = []
    monitors = of_kind(docs, "ServiceMonitor")
    monitored = {component(m) for m in monitors}
    if monitors and not {"gateway", "triton"} <= monitored:
        problems.append(
            f"servicemonitor: with the Prometheus Operator both gateway and triton need one (have {sorted(monitored)})"
        )
    window = adapter_window_s()
    intervals = [duration_s(e["interval"]) for m in monitors for e in m["spec"].get("endpoints", []) if "interval" in e]
    longest = max([ASSUMED_SCRAPE_INTERVAL_S, *intervals])
    if window < 4 * longest:
        problems.append(
            f"adapter: rate() over {window:.0f} s needs >= 4 scrapes ({4 * longest:.0f} s at a {longest:.0f} s "
            "interval), else the Triton HPA reads <unknown>"
        )
    return problems


def adapter_window_s() -> float:
    """The shortest rate() window in the adapter's metricsQuery, in seconds."""
    windows = re.findall(r"\[(\d+[smh])\]", adapter_rule()["metricsQuery"])
    return min(duration_s(w) for w in windows) if windows else 0.0


def _redis_invariants(docs: list[Doc]) -> list[str]:
    """Redis mode: the gateways get the URL and a password from a Secret (never a literal), may reach Redis, and a
    Redis deployed here has a password, a PVC and admits only the gateways and the key bootstrap job."""
    gateway = container(one(docs, "Deployment", "gateway"), "gateway")
    env = {e["name"]: e for e in (gateway or {}).get("env", [])}
    if "GATEWAY_REDIS_URL" not in env:
        return []
    problems = []
    if "secretKeyRef" not in env.get("GATEWAY_REDIS_PASSWORD", {}).get("valueFrom", {}):
        problems.append("gateway: GATEWAY_REDIS_PASSWORD must come from a Secret (secretKeyRef)")
    egress = [
        rule
        for pol in of_kind(docs, "NetworkPolicy")
        if component(pol) == "gateway"
        for rule in pol["spec"].get("egress", [])
    ]
    port = int(str(env["GATEWAY_REDIS_URL"].get("value", "")).rsplit(":", 1)[-1].split("/")[0] or 6379)
    if not any(p.get("port") == port for rule in egress for p in rule.get("ports", [])):
        problems.append(f"gateway: no NetworkPolicy egress rule reaches Redis on port {port}")
    redis = one(docs, "StatefulSet", "redis")
    if redis is None:
        return problems
    spec = redis["spec"]
    if not spec.get("volumeClaimTemplates"):
        problems.append("redis: needs a PersistentVolumeClaim (volumeClaimTemplates)")
    c = spec["template"]["spec"]["containers"][0]
    if (
        "requirepass" not in " ".join(c.get("args", []))
        or "--requirepass" in " ".join(c.get("args", []))
        or not any("secretKeyRef" in e.get("valueFrom", {}) for e in c.get("env", []))
    ):
        problems.append("redis: must require a password taken from a Secret, given on standard input (not in argv)")
    policy = one(docs, "NetworkPolicy", "redis")
    allowed = {"gateway", "redis-bootstrap", "worker"}
    peers = [peer for rule in (policy or {}).get("spec", {}).get("ingress", []) for peer in rule.get("from", [])]
    if (
        policy is None
        or not peers
        or any(
            peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") not in allowed
            for peer in peers
        )
    ):
        problems.append("redis: a NetworkPolicy must admit only the gateway pods (and the key bootstrap job)")
    worker = one(docs, "Deployment", "worker")
    if worker is not None and (policy is None or not admits(policy, pod_labels(worker), 6379)):
        problems.append("redis: the NetworkPolicy must admit the export worker (the model registry is in Redis)")
    return problems


def _uploads_invariants(docs: list[Doc]) -> list[str]:
    """Uploaded models: the export worker is confined (non-root, read-only root but its scratch space, probes, a
    NetworkPolicy that admits nothing and lets it reach only Triton, Redis and DNS), reaches every Triton pod with the
    admin key, and shares one volume with the gateways (uploads) and Triton (the repository, read-only)."""
    worker = one(docs, "Deployment", "worker")
    if worker is None:
        return []
    wc = container(worker, "worker")
    if wc is None:
        return ["worker: the worker Deployment needs a 'worker' container"]
    problems = []
    spec = worker["spec"]["template"]["spec"]
    if wc.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
        problems.append("worker: readOnlyRootFilesystem must be true (its scratch space is /tmp)")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    tmp = mount_of(wc, "/tmp")
    if tmp is None or tmp["mountPath"] != "/tmp" or "sizeLimit" not in volumes.get(tmp["name"], {}).get("emptyDir", {}):
        problems.append("worker: /tmp must be an emptyDir with a sizeLimit (the sandbox's private folders)")
    for probe in ("livenessProbe", "readinessProbe"):
        if not wc.get(probe):
            problems.append(f"worker: a {probe} is required (its alive file)")
    env = {e["name"]: e for e in wc.get("env", [])}
    if not str(env.get("GATEWAY_TRITON_URL", {}).get("value", "")).startswith("dns:///"):
        problems.append(
            "worker: GATEWAY_TRITON_URL must be the headless Service (dns:///...), whose name resolves to every Triton "
            "pod: the worker loads each version on each of them"
        )
    if "GATEWAY_REDIS_URL" not in env or secret_ref(wc, "GATEWAY_REDIS_PASSWORD") is None:
        problems.append(
            "worker: GATEWAY_REDIS_URL and GATEWAY_REDIS_PASSWORD (a secretKeyRef): the registry is in Redis"
        )
    tc = container(one(docs, "Deployment", "triton"), "triton")
    admin = secret_ref(tc, "TRITON_ADMIN_KEY")
    if admin is None or secret_ref(wc, "GATEWAY_TRITON_ADMIN_KEY") != admin:
        problems.append("worker: GATEWAY_TRITON_ADMIN_KEY must come from Triton's admin Secret (loads and unloads)")
    gateway = one(docs, "Deployment", "gateway")
    gc = container(gateway, "gateway")

    def uid(deployment: Doc | None, c: Doc | None) -> object:
        pod = (deployment or {}).get("spec", {}).get("template", {}).get("spec", {}).get("securityContext", {})
        return (c or {}).get("securityContext", {}).get("runAsUser", pod.get("runAsUser"))

    if uid(worker, wc) != uid(gateway, gc):
        problems.append("worker: must run as the gateways' user (both write the uploads folder)")

    labels = pod_labels(worker)
    policies = [
        p for p in of_kind(docs, "NetworkPolicy") if matches(p["spec"]["podSelector"].get("matchLabels", {}), labels)
    ]
    redis_url = str(env.get("GATEWAY_REDIS_URL", {}).get("value", ""))
    redis_port = int(redis_url.rsplit(":", 1)[-1].split("/")[0]) if redis_url.rsplit(":", 1)[-1][:1].isdigit() else 6379
    triton = one(docs, "Deployment", "triton")
    if not policies:
        problems.append("networkpolicy: a NetworkPolicy must select the export worker")
    for policy in policies:
        where = f"networkpolicy: {policy['metadata']['name']}"
        if not {"Ingress", "Egress"} <= set(policy["spec"].get("policyTypes", [])):
            problems.append(f"{where}: must restrict the worker's Ingress and Egress")
        if policy["spec"].get("ingress"):
            problems.append(f"{where}: nothing may connect to the worker (no ingress rule)")
        for rule in policy["spec"].get("egress", []):
            ports = {pt.get("port") for pt in rule.get("ports", [])}
            if not ports or not ports <= WORKER_EGRESS_PORTS | {redis_port}:
                problems.append(
                    f"{where}: the worker may reach only Triton (8001), Redis ({redis_port}) and DNS (53); "
                    f"a rule allows {sorted(ports, key=str) or 'every port'}"
                )
            if 8001 in ports and (
                triton is None
                or not rule.get("to")
                or not all(
                    matches(peer.get("podSelector", {}).get("matchLabels", {}), pod_labels(triton))
                    for peer in rule["to"]
                )  # fmt: skip
            ):
                problems.append(f"{where}: the worker's egress to 8001 must name the Triton pods")
    triton_policy = next(
        (p for p in of_kind(docs, "NetworkPolicy") if triton is not None
         and matches(p["spec"]["podSelector"].get("matchLabels", {}), pod_labels(triton))), None
    )  # fmt: skip
    if triton_policy is not None and not admits(triton_policy, labels, 8001):
        problems.append("networkpolicy: Triton's policy must admit the export worker to 8001 (loads, unloads)")

    # One volume: the worker's repository is a repository of Triton's (read-only there); the gateways' uploads/ is the
    # worker's, and the gateways mount nothing else of it (they could change what Triton loads).
    repository = flag([str(a) for a in wc.get("args", [])], "repository")
    on_worker = volume_path(spec, wc, repository) if repository else None
    if on_worker is None or (mount_of(wc, repository or "/") or {}).get("readOnly"):
        problems.append("worker: --repository must lie on the shared PersistentVolumeClaim, mounted read-write")
    if triton is not None and tc is not None:
        tspec = triton["spec"]["template"]["spec"]
        loaded = [
            volume_path(tspec, tc, a.split("=", 1)[1]) for a in map(str, tc.get("args", []))
            if a.startswith("--model-repository=")
        ]  # fmt: skip
        if on_worker is not None and on_worker not in loaded:
            problems.append(
                "triton: --model-repository must name the worker's repository folder of the shared volume "
                "(each Triton pod loads the uploaded versions at start)"
            )
    models_dir = str(env.get("GATEWAY_MODELS_DIR", {}).get("value", ""))
    uploads = volume_path(spec, wc, f"{models_dir}/uploads") if models_dir else None
    if gateway is not None and gc is not None:
        gspec = gateway["spec"]["template"]["spec"]
        g_models = next((str(e.get("value", "")) for e in gc.get("env", []) if e["name"] == "GATEWAY_MODELS_DIR"), "")
        g_uploads = volume_path(gspec, gc, f"{g_models}/uploads") if g_models else None
        if uploads is None or g_uploads != uploads or (mount_of(gc, f"{g_models}/uploads") or {}).get("readOnly"):
            problems.append(
                "gateway: GATEWAY_MODELS_DIR/uploads must be the worker's (the same folder of the shared volume, "
                "writable): the gateways store uploads there, the worker reads them"
            )
        claim = on_worker[0] if on_worker else None
        for m in gc.get("volumeMounts", []):
            held = volume_path(gspec, gc, m["mountPath"])
            if on_worker is not None and held is not None and held[0] == claim:
                inside = held[1]
                if not inside or on_worker[1] == inside or on_worker[1].startswith(inside + "/"):
                    problems.append(
                        "gateway: must mount only the uploads folder of the shared volume, not the repository "
                        "Triton loads (a gateway could change what Triton runs)"
                    )
    return problems


def adapter_rule() -> Doc:
    """The Prometheus Adapter rule that serves Triton's queue time per request."""
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    return next(r for r in rules if "nv_inference_queue_duration_us" in r["seriesQuery"])


def adapter_metric_name() -> str:
    return str(adapter_rule()["name"]["as"])


# --- the report ---------------------------------------------------------------------------------------------------


@dataclass
class Report:
    values_file: str
    objects: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_values_file(path: Path) -> Report:
    report = Report(path.relative_to(DEPLOY.parent).as_posix() if path.is_relative_to(DEPLOY.parent) else str(path))
    values = load_values(path)
    report.problems += lint(values)
    try:
        docs = render(values, api_versions=CLUSTER_APIS.get(path.name, ()))
    except helm.HelmError as exc:
        report.problems.append(f"render: {exc}")
        return report
    report.objects = [f"{d['kind']}/{d['metadata']['name']}" for d in docs]
    report.problems += validate(docs)
    report.problems += invariants(docs)
    report.notes = summary(docs)
    return report


def summary(docs: list[Doc]) -> list[str]:
    """What a reader wants to see at a glance: images, target, GPUs, scaling, exposure."""
    notes = []
    triton, gateway = one(docs, "Deployment", "triton"), one(docs, "Deployment", "gateway")
    tc, gc = container(triton, "triton"), container(gateway, "gateway")
    if triton and tc:
        spec = triton["spec"]["template"]["spec"]
        inits = [c["name"] for c in spec.get("initContainers", [])]
        gpus = tc["resources"]["limits"].get("nvidia.com/gpu")
        notes.append(f"triton {tc['image']}, {gpus} GPU/pod, init: {', '.join(inits) or 'none'}")
    if gateway and gc:
        env = env_of(gc)
        notes.append(
            f"gateway {gc['image']}, upload {int(env['GATEWAY_MAX_UPLOAD_BYTES']) // 2**20} MiB, "
            f"video {int(env.get('GATEWAY_MAX_VIDEO_BYTES', '0')) // 2**20} MiB, "
            f"letterbox {env['GATEWAY_LETTERBOX']}, triton {env['GATEWAY_TRITON_URL']}"
        )
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    notes.append(
        "autoscaling: "
        + (
            ", ".join(f"{h['metadata']['name']} {h['spec']['minReplicas']}-{h['spec']['maxReplicas']}" for h in hpas)
            or "off (fixed replicas)"
        )
    )
    ingresses = of_kind(docs, "Ingress")
    notes.append(
        "ingress: " + (", ".join(r["host"] for i in ingresses for r in i["spec"]["rules"]) or "none (ClusterIP only)")
    )
    return notes


def main() -> int:
    files = values_files()
    if not files:
        print(f"no values files in {CHART / 'ci'}", file=sys.stderr)
        return 2
    print(
        f"chart {CHART.relative_to(DEPLOY.parent)}: Helm {helm.helm_sdk_version()}, "
        f"Kubernetes {' and '.join(KUBE_VERSIONS)} (strict)"
    )
    failed = 0
    for path in files:
        report = check_values_file(path)
        status = "FAIL" if report.problems else "ok"
        kinds: dict[str, int] = {}
        for o in report.objects:
            kinds[o.split("/")[0]] = kinds.get(o.split("/")[0], 0) + 1
        print(
            f"\n[{status}] {report.values_file}: {len(report.objects)} objects "
            f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})"
        )
        for note in report.notes:
            print(f"    {note}")
        for problem in report.problems:
            print(f"  ! {problem}")
        failed += bool(report.problems)
    print(f"\n{len(files) - failed} of {len(files)} values files passed" + ("" if not failed else f"; {failed} failed"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
