"""The stack in containers, as a platform engineer runs it: the images `make images` built, started from
deploy/compose.cpu.yaml with the fixture model repository mounted read-only, then used over HTTP.

`make container-test` builds the images (deploy/containers.py starts a Docker engine when none runs) and runs the
`container` tests here. Without an engine or the images they skip and say so; under `make container-test`
(YOLO_CONTAINER_TESTS=1) that is a failure instead. The chart is rendered offline (deploy/check.py) and compared
with the built images: command, user, ports, probe paths and mount points. Unmarked tests compare the CPU compose
file with the GPU one and need no engine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests
import yaml

from tests.test_api import CURL_SNIPPET, _check_schema

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
REQUIRED = os.environ.get("YOLO_CONTAINER_TESTS") == "1"
TASK_MODELS = {
    "detect": "yolov8n",
    "segment": "yolov8n-seg",
    "pose": "yolov8n-pose",
    "classify": "yolov8n-cls",
    "obb": "yolov8n-obb",
}
GATEWAY_UID = 10001
TRITON_UID = 1000


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ inside deploy/
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


containers = _load("deploy_containers", DEPLOY / "containers.py")
check = _load("deploy_check_for_containers", DEPLOY / "check.py")


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} -> {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def inspect(name: str) -> dict[str, Any]:
    return dict(json.loads(docker("inspect", name))[0])


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(f"{reason} (`make container-test` builds the images and starts an engine)")


@dataclass
class Stack:
    url: str
    key: str
    keys_dir: Path
    repository: Path
    port: int
    engine: Any
    env: dict[str, str] | None = None  # what compose was given, the drawn TRITON_ADMIN_KEY included

    gateway = f"{containers.PROJECT}_gateway_1"
    triton = f"{containers.PROJECT}_triton_1"
    network = f"{containers.PROJECT}_default"

    def post(self, model: str, image: Path, key: str | None = None, **data: str) -> requests.Response:
        files = {"image": (image.name, image.read_bytes())}
        headers = {"x-api-key": key or self.key}
        return requests.post(f"{self.url}/v1/predict/{model}", headers=headers, files=files, data=data, timeout=120)

    def keys(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The image's keys tool on the mounted keys folder, as compose's `keys` service runs it."""
        command = [
            "docker", "run", "--rm", "--network=none", "--read-only", "--cap-drop=ALL",
            f"--user={GATEWAY_UID}:{GATEWAY_UID}",
            "-v", f"{self.keys_dir}:/etc/yolo-triton/keys", "-e", "GATEWAY_KEYS_FILE=/etc/yolo-triton/keys/keys.json",
            "--entrypoint", "python", containers.GATEWAY_IMAGE, "-m", "gateway.keys", *args,
        ]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def engine() -> Any:
    if shutil.which("docker") is None:
        _unavailable("no docker client")
    eng = containers.Engine(dict(os.environ))  # never stopped here: deploy/containers.py owns the engine it started
    if subprocess.run(["docker", "version"], capture_output=True, timeout=30).returncode != 0:
        _unavailable("no Docker engine answers")
    for image in (containers.GATEWAY_IMAGE, containers.TRITON_IMAGE):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30).returncode != 0:
            _unavailable(f"image {image} is not built")
    return eng


@pytest.fixture(scope="module")
def stack(engine: Any, repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keys_dir = tmp_path_factory.mktemp("container-keys")
    os.chown(keys_dir, GATEWAY_UID, GATEWAY_UID)  # the gateway's user owns its keys folder (deploy/README.md)
    port = _free_port()
    stack = Stack(f"http://127.0.0.1:{port}", "", keys_dir, repository.resolve(), port, engine)
    stack.key = stack.keys("create", "--name", "container-smoke").stdout.strip().splitlines()[-1]
    started = time.monotonic()
    try:
        stack.env = containers.up(engine, stack.repository, keys_dir, port, timeout=900)
        print(f"\n[stack] healthy after {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        containers.down(engine, stack.repository, keys_dir, port)


# --- the stack, used as a user would ----------------------------------------------------------------------------


@pytest.mark.container
def test_readyz_lists_the_models_triton_serves(stack: Stack) -> None:
    assert requests.get(f"{stack.url}/healthz", timeout=10).status_code == 200
    r = requests.get(f"{stack.url}/readyz", timeout=10)
    assert r.status_code == 200, r.text
    served = {p.name for p in stack.repository.iterdir() if (p / "config.pbtxt").exists()}
    assert set(r.json()["data"]["models"]) == served and set(TASK_MODELS.values()) <= served


@pytest.mark.container
def test_seed_curl_request_with_a_key(stack: Stack, images: dict[str, Path]) -> None:
    cmd = (
        CURL_SNIPPET.replace("https://api.ultralytics.com", stack.url)
        .replace("MODEL_ID", "yolov8n")
        .replace("API_KEY", stack.key)
        .replace("/path/to/image.jpg", str(images["zidane"]))
    )
    out = subprocess.run(["bash", "-c", cmd.rstrip() + " -s"], capture_output=True, timeout=120, check=True)
    _check_schema(json.loads(out.stdout), "detect")


@pytest.mark.container
@pytest.mark.parametrize("task", list(TASK_MODELS))
def test_one_request_per_task(stack: Stack, images: dict[str, Path], task: str) -> None:
    r = stack.post(TASK_MODELS[task], images["bus"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["data"], "expected results"
    rows = body["data"]
    if task == "classify":
        assert len(rows) == 5 and all({"name", "class", "confidence"} <= set(row) for row in rows)
        return
    corners = {f"{a}{i}" for i in range(1, 5) for a in "xy"}
    assert all(set(row["box"]) == (corners if task == "obb" else {"x1", "y1", "x2", "y2"}) for row in rows)
    assert all(("segments" in row) == (task == "segment") and ("keypoints" in row) == (task == "pose") for row in rows)


@pytest.mark.container
def test_requests_without_a_key_and_with_a_revoked_key_are_refused(stack: Stack, images: dict[str, Path]) -> None:
    missing = requests.post(
        f"{stack.url}/v1/predict/yolov8n-cls", files={"image": images["bus"].read_bytes()}, timeout=60
    )
    assert missing.status_code == 401 and missing.json()["success"] is False
    created = stack.keys("create", "--name", "to-revoke")
    key = created.stdout.strip().splitlines()[-1]
    key_id = re.search(r"Created key (\S+)", created.stderr)
    assert key_id, created.stderr

    def status_becomes(wanted: int) -> requests.Response:
        deadline = time.monotonic() + 30  # the gateway notices the changed file within about a second
        while (r := stack.post("yolov8n-cls", images["bus"], key=key)).status_code != wanted:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return r

    assert status_becomes(200).status_code == 200
    stack.keys("revoke", key_id.group(1), "--yes")
    r = status_becomes(401)
    assert r.status_code == 401, r.text
    assert r.json()["success"] is False and "key" in r.json()["message"].lower()
    assert stack.post("yolov8n-cls", images["bus"]).status_code == 200  # the other key still works


def _counter(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.container
def test_metrics_count_requests(stack: Stack, images: dict[str, Path]) -> None:
    def count() -> float:
        r = requests.get(f"{stack.url}/metrics", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return _counter(r.text, "yolo_requests_total", model="yolov8n-pose", status="200")

    before = count()
    assert stack.post("yolov8n-pose", images["zidane"]).status_code == 200
    assert count() == before + 1


@pytest.mark.container
def test_a_60_mib_video_passes_through_the_stack(stack: Stack, tmp_path: Path) -> None:
    """A video three times the image limit (60 MiB of MJPEG; the images' limit is 20 MiB, the videos' 100 MiB) goes
    through the gateway container: streamed into its tmpfs /tmp on a read-only root, copied for FFmpeg, scanned and
    decoded by the image's OpenCV, every fifth frame inferred; its files are gone from /tmp afterwards."""
    import cv2
    import numpy as np

    from tests.test_video import write_avi

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (720, 1280, 3), np.uint8)  # noise: JPEG keeps it large
    packets: list[bytes] = []
    while sum(map(len, packets)) < 60 * 2**20:
        ok, jpeg = cv2.imencode(".jpg", np.roll(frame, len(packets) * 8, axis=1), [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        packets.append(bytes(jpeg))
    video = write_avi(tmp_path / "sixty.avi", packets, 1280, 720)
    assert 60 * 2**20 <= video.stat().st_size < 100 * 2**20
    r = stack.post("yolov8n", video, vid_stride="5")
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert body["success"] is True and body["video"]["container"] == "AVI"
    assert [f["frame"] for f in body["data"]] == [5 * k + 4 for k in range(len(packets) // 5)]
    assert (body["video"]["width"], body["video"]["height"]) == (1280, 720)
    left = docker("exec", stack.gateway, "ls", "-A", "/tmp").split()
    assert not [name for name in left if name.startswith("gateway-video-")], left


# --- how the containers run ------------------------------------------------------------------------------------


_DISTRIBUTIONS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
)


@pytest.mark.container
@pytest.mark.parametrize("image", ["gateway", "triton", "worker"])
def test_images_hold_exactly_the_locked_packages(engine: Any, image: str) -> None:
    """Each image's Python packages are its subset of the lock (requirements/image-*.txt), at the lock's versions:
    nothing more, nothing less, nothing resolved on its own at build time."""
    lockfile = _load("requirements_lockfile_for_containers", ROOT / "requirements" / "lockfile.py")
    tag = {"gateway": containers.GATEWAY_IMAGE, "triton": containers.TRITON_IMAGE, "worker": containers.WORKER_IMAGE}[
        image
    ]
    out = docker("run", "--rm", "--network=none", "--entrypoint", "python", tag, "-c", _DISTRIBUTIONS)
    held = {lockfile.normalize(name): version for name, version in json.loads(out).items()}
    wanted = {name: pin.version for name, pin in lockfile.read_pins(containers.image_requirements(image)).items()}
    locked = {name: pin.version for name, pin in lockfile.read_pins(lockfile.LOCK).items()}
    assert held == wanted, {"extra": held.keys() - wanted.keys(), "missing": wanted.keys() - held.keys()}
    assert all(locked[name] == version for name, version in held.items())
    label = inspect(tag)["Config"]["Labels"].get(containers.DEBIAN_LABEL, "")
    assert re.match(r"Debian 12\.\d+; .*\bbookworm of \w{3}, \d", label), (
        label
    )  # the base records what it was made from


@pytest.mark.container
def test_gateway_runs_as_non_root_on_a_read_only_root_filesystem(stack: Stack) -> None:
    info = inspect(stack.gateway)
    assert info["Config"]["User"] == f"{GATEWAY_UID}:{GATEWAY_UID}"
    assert info["HostConfig"]["ReadonlyRootfs"] is True and info["HostConfig"]["CapDrop"] == ["ALL"]
    assert docker("exec", stack.gateway, "id", "-u").strip() == str(GATEWAY_UID)
    write = subprocess.run(
        ["docker", "exec", stack.gateway, "python", "-c", "open('/opt/app/written', 'w')"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    docker("exec", stack.gateway, "python", "-c", "open('/tmp/written', 'w').write('tmpfs is writable')")
    assert inspect(stack.triton)["HostConfig"]["ReadonlyRootfs"] is True
    assert docker("exec", stack.triton, "id", "-u").strip() == str(TRITON_UID)


@pytest.mark.container
def test_only_the_gateway_is_published_and_only_on_loopback(stack: Stack) -> None:
    triton = inspect(stack.triton)
    assert not triton["HostConfig"]["PortBindings"]
    assert set(triton["NetworkSettings"]["Ports"]) == {"8000/tcp", "8001/tcp", "8002/tcp"}  # exposed, not published
    assert all(binding is None for binding in triton["NetworkSettings"]["Ports"].values())
    assert docker("port", stack.triton).strip() == ""
    assert docker("port", stack.gateway).split() == ["8080/tcp", "->", f"127.0.0.1:{stack.port}"]
    # Triton is there for the gateway: its probes answer inside the stack's network.
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert _probe(stack.gateway, f"http://triton:8000{path}") == 200


@pytest.mark.container
def test_triton_repository_api_needs_the_admin_key_over_grpc_and_http(stack: Stack) -> None:
    """Explicit model control makes load and unload reachable: from inside the stack's network (a gateway container,
    with its own tritonclient), the repository index is refused without the key, over gRPC and HTTP, and answered
    with it; the gateway itself holds the key (its /v1/models comes from that index)."""
    assert stack.env is not None
    key = stack.env["TRITON_ADMIN_KEY"]
    code = (
        "import json, sys, urllib.request, tritonclient.grpc as g\n"
        "client = g.InferenceServerClient('triton:8001')\n"
        "out = {}\n"
        "for name, headers in (('none', None), ('wrong', {'triton-grpc-protocol-admin-key': 'x'}),\n"
        "                      ('key', {'triton-grpc-protocol-admin-key': sys.argv[1]})):\n"
        "    try:\n"
        "        index = client.get_model_repository_index(headers=headers)\n"
        "        out['grpc ' + name] = sorted(m.name for m in index.models)\n"
        "    except Exception as exc:\n"
        "        out['grpc ' + name] = 'refused: ' + str(exc)[:200]\n"
        "for name, headers in (('none', {}), ('key', {'admin-key': sys.argv[1]})):\n"
        "    url = 'http://triton:8000/v2/repository/index'\n"
        "    request = urllib.request.Request(url, b'{}', headers, method='POST')\n"
        "    try:\n"
        "        out['http ' + name] = urllib.request.urlopen(request, timeout=10).status\n"
        "    except urllib.error.HTTPError as exc:\n"
        "        out['http ' + name] = exc.code\n"
        "print(json.dumps(out))\n"
    )
    out = json.loads(docker("exec", stack.gateway, "python", "-c", code, key))
    served = sorted(p.name for p in stack.repository.iterdir() if (p / "config.pbtxt").exists())
    assert out["grpc key"] == served, out
    for refused in ("grpc none", "grpc wrong"):
        assert str(out[refused]).startswith("refused:") and "admin-key" in out[refused], out
    assert (out["http none"], out["http key"]) == (403, 200), out
    env = dict(e.split("=", 1) for e in inspect(stack.gateway)["Config"]["Env"])
    assert env["GATEWAY_TRITON_ADMIN_KEY"] == key
    listed = requests.get(f"{stack.url}/v1/models", timeout=30).json()["data"]
    assert sorted(m["id"] for m in listed) == served


def _probe(container: str, url: str) -> int:
    """HTTP status of `url` fetched from inside `container` (with its own Python)."""
    code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=5).status)"
    return int(docker("exec", container, "python", "-c", code).strip())


# --- the chart and the images agree -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> list[dict[str, Any]]:
    return list(check.render(check.load_values(DEPLOY / "helm" / "yolo-triton" / "ci" / "default-values.yaml")))


def _container(docs: list[dict[str, Any]], component: str) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = check.one(docs, "Deployment", component)
    assert deployment is not None
    spec = deployment["spec"]["template"]["spec"]
    return spec, next(c for c in spec["containers"] if c["name"] == component)


def _image_config(image: str) -> dict[str, Any]:
    return dict(json.loads(docker("image", "inspect", image))[0]["Config"])


def test_every_chart_image_is_built_here_or_named_upstream() -> None:
    # the CPU Triton image stands in for the first; Redis (the chart's own Redis for several gateways) is upstream's
    upstream = {"nvcr.io/nvidia/tritonserver", "amazon/aws-cli", "redis"}
    built = {tuple(image.split(":")) for image in (containers.GATEWAY_IMAGE, containers.WORKER_IMAGE)}
    images: set[str] = set()
    for path in check.values_files():
        for _, spec in check.pod_specs(check.render(check.load_values(path))):
            images |= {c["image"] for c in spec.get("initContainers", []) + spec["containers"]}
    ours = {i for i in images if i.split(":")[0] not in upstream}
    # The gateway image as built here, or pushed to a registry (values files with `registry.example.com/...`).
    names = {(ref.rsplit("/", 1)[-1], tag) for ref, _, tag in (i.rpartition(":") for i in ours)}
    # Uploaded models need the official Triton image plus the `onnxruntime` package, built by the user (not here:
    # deploy/README.md, "Uploaded models"): the only other image a values file may name.
    assert ("tritonserver-onnxruntime", "25.08-py3") in names
    assert names - {("tritonserver-onnxruntime", "25.08-py3")} == built, (
        f"chart images neither built here nor upstream: {ours}"
    )


@pytest.mark.container
def test_chart_gateway_spec_runs_the_gateway_image(stack: Stack, chart: list[dict[str, Any]]) -> None:
    """The chart's gateway container, as its pod spec says, started from the built image: user, read-only root,
    no command (the image's entrypoint), its args, env, mounts and port; its probes answer on the probe paths."""
    pod, c = _container(chart, "gateway")
    assert c["image"] == containers.GATEWAY_IMAGE and "command" not in c
    config = _image_config(c["image"])
    entrypoint = ["uvicorn", "gateway.app:create_app", "--factory", "--http=gateway.server:DrainingProtocol"]
    assert config["Entrypoint"] == entrypoint and config["Cmd"] == c["args"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert config["User"] == user == f"{GATEWAY_UID}:{GATEWAY_UID}"
    port = c["ports"][0]["containerPort"]
    assert set(config["ExposedPorts"]) == {f"{port}/tcp"} and f"--port={port}" in c["args"]
    image_env = dict(e.split("=", 1) for e in config["Env"])
    # The stack's own values where the pod spec has them from a Secret (only Triton's admin key here) or from its
    # Service names (the stack's Triton).
    secrets = {"GATEWAY_TRITON_ADMIN_KEY": (stack.env or {})["TRITON_ADMIN_KEY"]}
    assert {e["name"] for e in c["env"] if "valueFrom" in e} <= set(secrets)
    env = {e["name"]: e["value"] if "value" in e else secrets[e["name"]] for e in c["env"]}
    env |= {"GATEWAY_TRITON_URL": "triton:8001"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert Path(env["GATEWAY_KEYS_FILE"]).parent == Path(image_env["GATEWAY_KEYS_FILE"]).parent
    assert str(Path(env["GATEWAY_KEYS_FILE"]).parent) in mounts and "/tmp" in mounts
    volumes = {"/tmp": ["--tmpfs", "/tmp"]}
    volumes[str(Path(env["GATEWAY_KEYS_FILE"]).parent)] = [
        "-v",
        f"{stack.keys_dir}:{Path(env['GATEWAY_KEYS_FILE']).parent}:ro",
    ]
    assert set(volumes) == set(mounts)
    name = f"{containers.PROJECT}-chart-gateway"
    docker("rm", "--force", name, check=False)
    command = [
        "run", "--detach", f"--name={name}", f"--network={stack.network}", f"--user={user}",
        "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges:true",
        *[a for m in volumes.values() for a in m], *[a for k, v in env.items() for a in ("-e", f"{k}={v}")],
        c["image"], *c["args"],
    ]  # fmt: skip
    docker(*command)
    try:
        probes = [c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]]
        assert {p["port"] for p in probes} == {c["ports"][0]["name"]}
        deadline = time.monotonic() + 60
        while True:
            try:
                assert [_probe(name, f"http://127.0.0.1:{port}{p['path']}") for p in probes] == [200, 200]
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise AssertionError(docker("logs", name, check=False)) from None
                time.sleep(1)
        assert docker("exec", name, "id", "-u").strip() == str(GATEWAY_UID)
        # The preStop hook runs in this image, and so does `helm test`'s pod (pointed at this container).
        docker("exec", name, *c["lifecycle"]["preStop"]["exec"]["command"], timeout=60)
        test_pod = next(
            d for d in chart if d["kind"] == "Pod" and d["metadata"]["annotations"]["helm.sh/hook"] == "test"
        )
        (tc,) = test_pod["spec"]["containers"]
        service = check.one(chart, "Service", "gateway")
        assert tc["image"] == c["image"] and service is not None
        address = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
        script = [a.replace(address, f"{name}:{port}") for a in tc["command"]]
        assert script != tc["command"], f"the test pod does not call {address}"
        security = test_pod["spec"]["securityContext"]
        out = docker(
            "run", "--rm", f"--network={stack.network}", f"--user={security['runAsUser']}:{security['runAsGroup']}",
            "--read-only", "--cap-drop=ALL", f"--entrypoint={script[0]}", tc["image"], *script[1:],
        )  # fmt: skip
        assert out.startswith("200 "), out
    finally:
        docker("rm", "--force", name, check=False)


@pytest.mark.container
def test_chart_triton_spec_agrees_with_the_cpu_triton_image(stack: Stack, chart: list[dict[str, Any]]) -> None:
    """The official image runs Triton on GPU nodes; the CPU image is laid out like it. The stack's Triton runs the
    chart's arguments (tests below: only GPU metrics differ) as the chart's user, with its mounts, and answers the
    chart's probe paths on the chart's port."""
    pod, c = _container(chart, "triton")
    config = _image_config(containers.TRITON_IMAGE)
    assert "command" not in c and c["args"][0] == "tritonserver" and not config["Entrypoint"]
    assert docker(
        "run", "--rm", "--network=none", "--entrypoint=bash", containers.TRITON_IMAGE, "-c", "command -v tritonserver"
    ).strip()
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert config["User"] == user == f"{TRITON_UID}:{TRITON_UID}"
    assert set(config["ExposedPorts"]) == {f"{p['containerPort']}/tcp" for p in c["ports"]}
    assert config["WorkingDir"] == c["workingDir"]
    args = " ".join(inspect(stack.triton)["Config"]["Cmd"])
    for flag in c["args"][1:]:
        if "admin-key=" not in flag:
            assert flag.replace("--allow-gpu-metrics=true", "--allow-gpu-metrics=false") in args
    # Every mount point exists in the image (or is a tmpfs there), and /models holds the repository, read-only.
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    present = docker("exec", stack.triton, "bash", "-c", " ".join(f"test -d {p} && echo {p};" for p in mounts))
    assert present.split() == mounts
    assert any(m["Destination"] == "/models" and not m["RW"] for m in inspect(stack.triton)["Mounts"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        url = f"http://127.0.0.1:{ports[get['port']]}{get['path']}"
        assert _probe(stack.triton, url) == 200, probe
    # The startup probe runs in the image (its python3), and passes: every built-in model answers ready.
    command = c["startupProbe"]["exec"]["command"]
    served = sum(1 for p in stack.repository.iterdir() if (p / "config.pbtxt").exists())
    assert docker("exec", stack.triton, *command).strip() == f"{served} models in /models ready"


# --- graceful stop (last: it stops the gateway) ----------------------------------------------------------------


@pytest.mark.container
def test_sigterm_lets_in_flight_requests_finish_then_exits(
    stack: Stack, images: dict[str, Path], tmp_path: Path
) -> None:
    import cv2

    big = tmp_path / "big.jpg"  # segmentation of a large photo: long enough to be caught in flight
    bus = cv2.imread(str(images["bus"]))
    cv2.imwrite(str(big), cv2.resize(bus, (bus.shape[1] * 3, bus.shape[0] * 3)))

    def predict() -> tuple[requests.Response, float]:
        response = stack.post("yolov8n-seg", big, size="1280")
        return response, time.monotonic()

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(predict) for _ in range(4)]
        deadline = time.monotonic() + 30
        while _counter(requests.get(f"{stack.url}/metrics", timeout=10).text, "yolo_requests_in_flight") < 1:
            assert time.monotonic() < deadline, "no request in flight"
            time.sleep(0.05)
        stopped: dict[str, float] = {}

        def stop() -> None:  # `docker stop`: SIGTERM, then SIGKILL after stop_grace_period (30 s)
            stopped["at"] = time.monotonic()
            docker("stop", "--time=30", stack.gateway, timeout=60)
            stopped["after"] = time.monotonic() - stopped["at"]

        stopper = threading.Thread(target=stop)
        stopper.start()
        results = [f.result(timeout=90) for f in futures]
        stopper.join(90)
    assert [r.status_code for r, _ in results] == [200] * 4, [r.text[:200] for r, _ in results]
    assert all(r.json()["data"] for r, _ in results)
    assert max(done for _, done in results) > stopped["at"], "every request ended before SIGTERM: nothing was in flight"
    state = inspect(stack.gateway)["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 0 and not state["OOMKilled"], state
    assert stopped["after"] < 25, stopped  # drained and exited by itself, not killed at the deadline
    logs = subprocess.run(["docker", "logs", stack.gateway], capture_output=True, text=True, timeout=60)
    assert "Waiting for connections to close" in logs.stdout + logs.stderr  # uvicorn saw requests in flight
    assert "Finished server process" in logs.stdout + logs.stderr


# --- the CPU compose file and the GPU one agree (no engine needed) ----------------------------------------------


def _compose(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / name).read_text()))


def test_cpu_compose_differs_from_the_gpu_one_only_where_documented() -> None:
    gpu, cpu = _compose("compose.yaml"), _compose("compose.cpu.yaml")
    assert "name" not in cpu  # Compose v1 (Debian's docker-compose) refuses it
    assert cpu["x-hardening"] == gpu["x-hardening"]
    g, c = gpu["services"]["triton"], cpu["services"]["triton"]
    assert c["image"] == containers.TRITON_IMAGE and "deploy" not in c and "ports" not in c
    assert c["command"] == [a.replace("--allow-gpu-metrics=true", "--allow-gpu-metrics=false") for a in g["command"]]
    for key in ("user", "working_dir", "tmpfs", "shm_size", "expose", "read_only", "cap_drop"):
        assert c.get(key) == g.get(key), key
    assert c["ulimits"] == {k: v for k, v in g["ulimits"].items() if k != "memlock"}
    assert c["volumes"] == g["volumes"]
    assert c["healthcheck"]["test"] == g["healthcheck"]["test"]
    g, c = gpu["services"]["gateway"], cpu["services"]["gateway"]
    assert c["image"] == g["image"] == containers.GATEWAY_IMAGE and "build" not in c
    for key in ("command", "user", "environment", "tmpfs", "stop_grace_period", "depends_on", "read_only", "cap_drop"):
        assert c[key] == g[key], key
    assert c["ports"] == ["127.0.0.1:${GATEWAY_PORT:-8000}:8080"]
    assert c["volumes"] == [g["volumes"][0].replace("../data", "${KEYS_DIR:-../data}")]
    assert cpu["services"]["keys"]["entrypoint"] == gpu["services"]["keys"]["entrypoint"]
