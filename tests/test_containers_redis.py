"""Several gateways sharing keys, limits, usage and uploaded models through one Redis, in containers: the stack of
deploy/compose.redis.yaml (three gateway containers, the Redis image, the CPU Triton image and the export worker
`make images` built), started once for this module with one classification model, then used over HTTP as an operator
would: keys, limits, and an uploaded checkpoint served, replaced and served again (issue #27).

`make container-test` runs these after tests/test_containers.py (marker `container`); without an engine or the
images they skip and say so, and under `make container-test` that is a failure. The unmarked test compares the
compose file with compose.cpu.yaml and needs no engine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.test_containers import DEPLOY, GATEWAY_UID, _unavailable, containers, docker, engine, inspect

__all__ = ["engine"]  # the fixture, shared with tests/test_containers.py

REDIS_UID = 999
MODEL = "yolov8n-cls"  # one model, the quickest to load and run: these tests are about the shared state
PASSWORD_REF = "${REDIS_PASSWORD:?REDIS_PASSWORD is drawn by deploy/containers.py up --redis}"
REDIS_ENV = {"GATEWAY_REDIS_URL": "redis://redis:6379/0", "GATEWAY_REDIS_PASSWORD": PASSWORD_REF}
MODELS_DATA_REF = "${MODELS_DATA:?MODELS_DATA is made by deploy/containers.py up --redis}"
UPLOADS_ENV = {"GATEWAY_MODELS_DIR": "/var/lib/yolo-triton/models", "GATEWAY_MAX_MODEL_BYTES": "536870912"}
JOBS_ENV = {"GATEWAY_JOBS_DIR": "/var/lib/yolo-triton/jobs"}  # the gateways' video jobs, on the shared volume
WORKER_UID = 10001


@dataclass
class RedisStack:
    urls: list[str]
    env: dict[str, str]  # what compose interpolates, the generated REDIS_PASSWORD and TRITON_ADMIN_KEY included
    image: bytes  # the photo every prediction sends
    admin: str = ""  # an admin key, made with the compose file's keys tool

    project = containers.REDIS_PROJECT
    redis = f"{containers.REDIS_PROJECT}_redis_1"
    triton = f"{containers.REDIS_PROJECT}_triton_1"
    worker = f"{containers.REDIS_PROJECT}_worker_1"
    gateways = [f"{containers.REDIS_PROJECT}_{service}_1" for service in containers.REDIS_GATEWAYS]

    @property
    def models_data(self) -> Path:
        return Path(self.env["MODELS_DATA"])

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = ["docker-compose", "--ansi", "never", "-p", self.project, "-f", str(containers.REDIS_COMPOSE_FILE)]
        return subprocess.run(
            [*command, *args], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=120, check=True
        )

    def predict(self, gateway: int, key: str) -> requests.Response:
        files = {"image": ("bus.jpg", self.image)}
        return requests.post(f"{self.urls[gateway]}/v1/predict/{MODEL}", headers={"x-api-key": key}, files=files,
                             timeout=60)  # fmt: skip

    def create_key(self, gateway: int, **fields: Any) -> dict[str, Any]:
        """POST /v1/keys on one gateway with the admin key; the new key's public fields and the key itself."""
        r = requests.post(f"{self.urls[gateway]}/v1/keys", headers={"x-api-key": self.admin}, json=fields, timeout=30)
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()["data"]
        return data


def _three_free_ports() -> int:
    """A port p with p, p + 1 and p + 2 free on loopback (the gateways' ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            for p in (port + 1, port + 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise AssertionError("no three consecutive free ports on 127.0.0.1")


@pytest.fixture(scope="module")
def redis_stack(
    engine: Any, repository: Path, images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisStack]:
    for image in (containers.REDIS_IMAGE, containers.WORKER_IMAGE):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30).returncode != 0:
            _unavailable(f"image {image} is not built")
    models = tmp_path_factory.mktemp("redis-stack-models")
    models.chmod(0o755)  # pytest makes it 0700: Triton's user could not read it
    shutil.copytree(repository / MODEL, models / MODEL, ignore=shutil.ignore_patterns("source.onnx", "__pycache__"))
    keys_dir = tmp_path_factory.mktemp("redis-stack-keys")  # not mounted: the keys are in Redis
    models_data = tmp_path_factory.mktemp("redis-stack-uploads")  # `up` makes its folders, as the worker's user
    port = _three_free_ports()
    started = time.monotonic()
    try:
        env = containers.up(engine, models, keys_dir, port, timeout=300, redis=True, models_data=models_data)
        print(f"\n[redis stack] three gateways healthy after {time.monotonic() - started:.0f} s")
        stack = RedisStack([f"http://127.0.0.1:{port + i}" for i in range(3)], env, images["bus"].read_bytes())
        created = stack.compose("run", "--rm", "keys", "create", "--name", "container-admin", "--admin")
        stack.admin = created.stdout.strip().splitlines()[-1]
        assert stack.admin.startswith("yk_"), created.stdout + created.stderr
        yield stack
    finally:
        containers.down(engine, models, keys_dir, port, redis=True, models_data=models_data)


def _status_becomes(call: Any, wanted: int, within_s: float) -> requests.Response:
    deadline = time.monotonic() + within_s
    while (r := call()).status_code != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    return r  # type: ignore[no-any-return]


# --- the state is shared --------------------------------------------------------------------------------------


@pytest.mark.container
def test_a_key_created_on_one_gateway_works_is_counted_and_revoked_on_every_gateway(redis_stack: RedisStack) -> None:
    stack = redis_stack
    created = stack.create_key(0, name="shared", models=[MODEL])
    key, key_id = created["key"], created["id"]
    for gateway in (1, 2):  # never told about the key but through Redis
        r = stack.predict(gateway, key)
        assert r.status_code == 200 and r.json()["success"] is True, r.text
    listed = requests.get(f"{stack.urls[2]}/v1/keys", headers={"x-api-key": stack.admin}, timeout=30)
    assert key_id in {k["id"] for k in listed.json()["data"]}

    def served() -> int:  # requests of this key on MODEL today, as gateway 1 reads them from Redis
        r = requests.get(f"{stack.urls[0]}/v1/keys/{key_id}/usage", headers={"x-api-key": stack.admin}, timeout=30)
        assert r.status_code == 200, r.text
        return sum(row["requests"] for row in r.json()["data"]["usage"] if row["model"] == MODEL)

    deadline = time.monotonic() + 10  # each gateway writes its usage every half second
    while served() != 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert served() == 2  # counted by gateways 2 and 3, read on gateway 1

    revoked = requests.delete(f"{stack.urls[1]}/v1/keys/{key_id}", headers={"x-api-key": stack.admin}, timeout=30)
    assert revoked.status_code == 200, revoked.text
    for gateway in (0, 2):  # the gateway that served it and one that never did: both refuse it within a second
        r = _status_becomes(lambda g=gateway: stack.predict(g, key), 401, within_s=5)
        assert r.status_code == 401, r.text
        assert r.json()["success"] is False and "revoked" in r.json()["message"].lower()


@pytest.mark.container
def test_a_rate_limit_holds_across_the_gateways_as_one(redis_stack: RedisStack) -> None:
    """0.2 images per second: a bucket of one image, refilled after 5 s. Per-gateway buckets would let one request
    through on each gateway; a shared one lets exactly one through on all three together."""
    stack = redis_stack
    key = stack.create_key(1, name="limited", rate=0.2)["key"]
    started = time.monotonic()
    responses = [stack.predict(i % 3, key) for i in range(6)]  # gateways 1, 2, 3, 1, 2, 3
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"too slow to test a 5 s refill: {elapsed:.1f} s"
    assert [r.status_code for r in responses] == [200] + [429] * 5, [r.text[:200] for r in responses]
    for r in responses[1:]:
        body = r.json()
        assert body["success"] is False and "rate limit" in body["message"].lower(), body
        assert 1 <= int(r.headers["Retry-After"]) <= 5 and r.headers["X-RateLimit-Limit"] == "1"


# --- uploaded models (issue #27) -----------------------------------------------------------------------------


def _send_model(stack: RedisStack, gateway: int, method: str, path: str, checkpoint: Path, **fields: str) -> Any:
    with open(checkpoint, "rb") as f:
        return requests.request(
            method, f"{stack.urls[gateway]}{path}", headers={"x-api-key": stack.admin},
            files={"file": (checkpoint.name, f)}, data=fields, timeout=120,
        )  # fmt: skip


def _serving(stack: RedisStack, gateway: int, model: str, version: int, within_s: float) -> dict[str, Any]:
    """Poll GET /v1/models/{model} on one gateway until `version` serves (a failed version fails the test at once)."""
    deadline = time.monotonic() + within_s
    while True:
        r = requests.get(f"{stack.urls[gateway]}/v1/models/{model}", timeout=30)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()["data"]
        mine = next((v for v in data.get("versions", []) if v["number"] == version), None)
        assert mine is None or mine["status"] != "failed", mine
        if data.get("serving") == version:
            return data
        assert time.monotonic() < deadline, f"{model} v{version} not serving after {within_s:.0f} s: {data}"
        time.sleep(1)


@pytest.mark.container
def test_an_upload_serves_on_every_gateway_and_a_replace_drops_no_request(
    redis_stack: RedisStack, tmp_path: Path
) -> None:
    """The trained yolov8n uploaded through gateway 1 is exported by the worker container, loaded on Triton and served
    by all three gateways; replaced through gateway 2 by a checkpoint of its own (3 classes) while requests keep going
    to every gateway: none fails, and the new version serves everywhere. Then Triton restarts: it loads the versions
    from the uploads volume at start (--load-model=*), and the model serves again."""
    from tests.test_models_sandbox import three_class_checkpoint, trained_yolov8n

    stack = redis_stack
    user = stack.create_key(0, name="uploads-user", models=["parts"])["key"]
    started = time.monotonic()
    r = _send_model(stack, 0, "POST", "/v1/models", trained_yolov8n(), id="parts")
    assert r.status_code == 202, r.text
    assert r.headers["Location"].endswith("/v1/models/parts") and r.json()["data"]["id"] == "parts"
    data = _serving(stack, 1, "parts", 1, within_s=600)
    v1_s = time.monotonic() - started
    assert data["task"] == "detect" and data["names"]["0"] == "person"

    def predict(gateway: int) -> requests.Response:
        files = {"image": ("bus.jpg", stack.image)}
        return requests.post(f"{stack.urls[gateway]}/v1/predict/parts", headers={"x-api-key": user}, files=files,
                             timeout=60)  # fmt: skip

    for gateway in range(3):
        r = predict(gateway)
        assert r.status_code == 200, r.text
        assert {"person", "bus"} <= {row["name"] for row in r.json()["data"]}, r.text[:500]

    # The files, on the shared volume as the chart lays it out: the upload, and the version Triton loaded.
    uploads = stack.models_data / "models" / "uploads" / "parts"
    assert [p.suffix for p in uploads.iterdir()] == [".pt"]
    version = stack.models_data / "repository" / "parts--v1"
    assert (version / "config.pbtxt").is_file() and version.stat().st_uid == WORKER_UID

    # Replace, with requests going to every gateway the whole time.
    codes: list[int] = []
    names: set[str] = set()
    stop = threading.Event()

    def keep_predicting() -> None:
        i = 0
        while not stop.is_set():
            r = predict(i % 3)
            codes.append(r.status_code)
            if r.status_code == 200:
                names.update(row["name"] for row in r.json()["data"])
            i += 1

    load = threading.Thread(target=keep_predicting)
    load.start()
    try:
        started = time.monotonic()
        r = _send_model(stack, 1, "PUT", "/v1/models/parts", three_class_checkpoint(tmp_path))
        assert r.status_code == 202, r.text
        data = _serving(stack, 2, "parts", 2, within_s=600)
        v2_s = time.monotonic() - started
        served_before = len(codes)
        deadline = time.monotonic() + 30  # every gateway drops its cached alias within about a second
        while len(codes) < served_before + 6 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        load.join(120)
    print(f"\n[uploads] v1 served after {v1_s:.0f} s, v2 after {v2_s:.0f} s; {len(codes)} requests during the replace")
    assert codes and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
    assert data["names"] == {"0": "apple", "1": "banana", "2": "cherry"}
    assert {"person", "bus"} <= names  # version 1 answered during the replace
    for gateway in range(3):  # and version 2 after it, everywhere (an untrained model's answer may be empty)
        r = predict(gateway)
        assert r.status_code == 200 and {row["name"] for row in r.json()["data"]} <= {"apple", "banana", "cherry"}

    # A Triton that starts later serves what is current: restart it, and the alias' version answers again.
    docker("restart", "--time=30", stack.triton, timeout=120)
    deadline = time.monotonic() + 300
    while docker("inspect", "--format", "{{.State.Health.Status}}", stack.triton).strip() != "healthy":
        assert time.monotonic() < deadline, "Triton not healthy again within 300 s"
        time.sleep(1)
    r = _status_becomes(lambda: predict(0), 200, within_s=60)
    assert r.status_code == 200, r.text


@pytest.mark.container
def test_the_worker_runs_confined_and_says_how(redis_stack: RedisStack) -> None:
    """The export worker container: the gateways' user, read-only root, no capabilities, no port, healthy (its alive
    file); and its log says how its sandbox is kept off the network in a container (a network namespace needs user
    namespaces, which the engine's default seccomp profile refuses without CAP_SYS_ADMIN: then the audit hook)."""
    stack = redis_stack
    info = inspect(stack.worker)
    assert info["Config"]["User"] == f"{WORKER_UID}:{WORKER_UID}"
    assert info["HostConfig"]["ReadonlyRootfs"] is True and info["HostConfig"]["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in info["HostConfig"]["SecurityOpt"]
    assert not info["HostConfig"]["PortBindings"] and not info["NetworkSettings"]["Ports"]
    deadline = time.monotonic() + 120
    while docker("inspect", "--format", "{{.State.Health.Status}}", stack.worker).strip() != "healthy":
        assert time.monotonic() < deadline, docker("logs", "--tail=40", stack.worker)
        time.sleep(1)
    write = subprocess.run(["docker", "exec", stack.worker, "python", "-c", "open('/opt/app/written', 'w')"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    logs = subprocess.run(["docker", "logs", stack.worker], capture_output=True, text=True, timeout=60)
    line = next((x for x in (logs.stdout + logs.stderr).splitlines() if "export sandbox: network namespace" in x), "")
    print(f"\n[worker] {line}")
    assert "audit hook yes" in line and "connect refused" in line and "os.system refused" in line, line


# --- how Redis runs --------------------------------------------------------------------------------------------


def _redis_replies(container: str, *commands: str) -> list[str]:
    """One connection from inside a gateway container to Redis; the reply line of each inline command. `$PASSWORD`
    in a command stands for that gateway's GATEWAY_REDIS_PASSWORD (so it is the one the gateways were given)."""
    code = (
        "import os, socket, sys\n"
        "s = socket.create_connection(('redis', 6379), timeout=5)\n"
        "commands = [c.replace('$PASSWORD', os.environ['GATEWAY_REDIS_PASSWORD']) for c in sys.argv[1:]]\n"
        "s.sendall(''.join(c + '\\r\\n' for c in commands).encode())\n"
        "data = b''\n"
        "while data.count(b'\\r\\n') < len(commands):\n"
        "    chunk = s.recv(4096)\n"
        "    if not chunk: break\n"
        "    data += chunk\n"
        "print(data.decode())\n"
    )
    return docker("exec", container, "python", "-c", code, *commands).splitlines()[: len(commands)]


@pytest.mark.container
def test_redis_runs_non_root_read_only_unpublished_and_only_with_the_password(redis_stack: RedisStack) -> None:
    stack = redis_stack
    info = inspect(stack.redis)
    assert info["Config"]["User"] == f"{REDIS_UID}:{REDIS_UID}"
    assert docker("exec", stack.redis, "id", "-u").strip() == str(REDIS_UID)
    assert info["HostConfig"]["ReadonlyRootfs"] is True and info["HostConfig"]["CapDrop"] == ["ALL"]
    write = subprocess.run(["docker", "exec", stack.redis, "sh", "-c", "echo x > /etc/written"], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    # Exposed to the stack's network, published nowhere.
    assert not info["HostConfig"]["PortBindings"] and docker("port", stack.redis).strip() == ""
    assert set(info["NetworkSettings"]["Ports"]) == {"6379/tcp"}
    assert all(binding is None for binding in info["NetworkSettings"]["Ports"].values())
    # No password, a wrong one: refused. The gateways' one: accepted (so the refusals are not a dead Redis).
    assert _redis_replies(stack.gateways[0], "PING", "GET yt:keys")[0].startswith("-NOAUTH")
    assert _redis_replies(stack.gateways[1], "AUTH not-the-password", "PING") == [
        "-WRONGPASS invalid username-password pair or user is disabled.",
        "-NOAUTH Authentication required.",
    ]
    assert _redis_replies(stack.gateways[2], "AUTH $PASSWORD", "PING") == ["+OK", "+PONG"]
    # The password is on no command line (`ps` on the host shows those) and the image refuses to run without one.
    assert stack.env["REDIS_PASSWORD"] not in json.dumps([info["Config"]["Cmd"], info["Config"]["Entrypoint"]])
    bare = subprocess.run(["docker", "run", "--rm", "--network=none", containers.REDIS_IMAGE], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert bare.returncode != 0 and "REDIS_PASSWORD" in bare.stderr
    for gateway in stack.gateways:
        env = dict(e.split("=", 1) for e in inspect(gateway)["Config"]["Env"])
        assert env["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
        assert env["GATEWAY_REDIS_PASSWORD"] == stack.env["REDIS_PASSWORD"]
        assert inspect(gateway)["Config"]["User"] == f"{GATEWAY_UID}:{GATEWAY_UID}"


@pytest.mark.container
def test_keys_survive_a_redis_restart(redis_stack: RedisStack) -> None:
    """The append-only file in the stack's volume: a key no gateway has cached (so no gateway can answer from its
    cache while Redis is away) works after Redis restarts."""
    stack = redis_stack
    key = stack.create_key(0, name="kept")["key"]
    docker("restart", "--time=10", stack.redis, timeout=60)
    deadline = time.monotonic() + 30
    while docker("inspect", "--format", "{{.State.Health.Status}}", stack.redis).strip() != "healthy":
        assert time.monotonic() < deadline, "Redis not healthy again within 30 s"
        time.sleep(0.5)
    r = _status_becomes(lambda: stack.predict(2, key), 200, within_s=10)
    assert r.status_code == 200, r.text


# --- the compose file (no engine needed) ----------------------------------------------------------------------


def _compose(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / name).read_text()))


def test_redis_compose_is_the_cpu_stack_with_three_gateways_sharing_one_redis() -> None:
    cpu, stack = _compose("compose.cpu.yaml"), _compose("compose.redis.yaml")
    assert "name" not in stack and stack["x-hardening"] == cpu["x-hardening"]
    # Triton: compose.cpu.yaml's, also loading the uploaded versions from the uploads volume, read-only.
    triton, cpu_triton = dict(stack["services"]["triton"]), dict(cpu["services"]["triton"])
    repository = "--model-repository=/var/lib/yolo-triton/repository"
    assert triton.pop("command") == [
        *cpu_triton.pop("command")[:2],
        repository,
        *cpu["services"]["triton"]["command"][2:],
    ]
    assert triton.pop("volumes") == [*cpu_triton.pop("volumes"), f"{MODELS_DATA_REF}:/var/lib/yolo-triton:ro"]
    assert triton == cpu_triton
    one = cpu["services"]["gateway"]
    gateways = {name: s for name, s in stack["services"].items() if name.startswith("gateway")}
    assert sorted(gateways) == list(containers.REDIS_GATEWAYS)
    ports = set()
    for gateway in gateways.values():
        assert gateway["environment"] == one["environment"] | REDIS_ENV | UPLOADS_ENV | JOBS_ENV
        assert gateway["depends_on"] == one["depends_on"] | {"redis": {"condition": "service_healthy"}}
        # No keys folder (the keys are in Redis); of the uploads volume, only its uploads and jobs folders.
        assert gateway["volumes"] == [f"{MODELS_DATA_REF}/models/uploads:/var/lib/yolo-triton/models/uploads",
                                      f"{MODELS_DATA_REF}/jobs:/var/lib/yolo-triton/jobs"]  # fmt: skip
        for key in ("image", "command", "user", "tmpfs", "stop_grace_period", "restart", *cpu["x-hardening"]):
            assert gateway[key] == one[key], key
        (port,) = gateway["ports"]
        assert port.startswith("127.0.0.1:${GATEWAY_PORT") and port.endswith(":8080")
        ports.add(port)
    assert len(ports) == 3
    redis = stack["services"]["redis"]
    assert redis["image"] == containers.REDIS_IMAGE and redis["user"] == f"{REDIS_UID}:{REDIS_UID}"
    assert "ports" not in redis and redis["expose"] == ["6379"]
    assert {k: redis[k] for k in cpu["x-hardening"]} == cpu["x-hardening"]
    assert redis["environment"] == {"REDIS_PASSWORD": PASSWORD_REF}  # from `up`, never written here
    assert redis["volumes"] == ["redis-data:/data"] and "redis-data" in stack["volumes"]
    tool = stack["services"]["keys"]
    assert tool["entrypoint"] == cpu["services"]["keys"]["entrypoint"] and tool["environment"] == REDIS_ENV
    assert "requirepass" not in (DEPLOY / "compose.redis.yaml").read_text()
    # The worker: the gateways' user and hardening, no port, the whole uploads volume, the same Redis and key.
    worker = stack["services"]["worker"]
    assert worker["image"] == containers.WORKER_IMAGE and worker["user"] == f"{WORKER_UID}:{WORKER_UID}"
    assert {k: worker[k] for k in cpu["x-hardening"]} == cpu["x-hardening"] and "ports" not in worker
    assert worker["volumes"] == [f"{MODELS_DATA_REF}:/var/lib/yolo-triton"] and worker["tmpfs"] == ["/tmp"]
    shared = {k: v for k, v in one["environment"].items() if k in ("GATEWAY_TRITON_URL", "GATEWAY_TRITON_ADMIN_KEY")}
    assert worker["environment"] == shared | REDIS_ENV | UPLOADS_ENV | {
        "GATEWAY_TRITON_TIMEOUT_S": one["environment"]["GATEWAY_TRITON_TIMEOUT_S"],
        "OMP_NUM_THREADS": "2",
    }
    assert set(worker["depends_on"]) == {"triton", "redis"}
