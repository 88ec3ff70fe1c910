"""Several gateways sharing keys, limits and usage through one Redis, in containers: the stack of
deploy/compose.redis.yaml (three gateway containers, the Redis image and the CPU Triton image `make images` built),
started once for this module with one classification model, then used over HTTP as an operator would.

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


@dataclass
class RedisStack:
    urls: list[str]
    env: dict[str, str]  # what compose interpolates, the generated REDIS_PASSWORD included
    image: bytes  # the photo every prediction sends
    admin: str = ""  # an admin key, made with the compose file's keys tool

    project = containers.REDIS_PROJECT
    redis = f"{containers.REDIS_PROJECT}_redis_1"
    gateways = [f"{containers.REDIS_PROJECT}_{service}_1" for service in containers.REDIS_GATEWAYS]

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
    if subprocess.run(["docker", "image", "inspect", containers.REDIS_IMAGE], capture_output=True,
                      timeout=30).returncode != 0:  # fmt: skip
        _unavailable(f"image {containers.REDIS_IMAGE} is not built")
    models = tmp_path_factory.mktemp("redis-stack-models")
    models.chmod(0o755)  # pytest makes it 0700: Triton's user could not read it
    shutil.copytree(repository / MODEL, models / MODEL, ignore=shutil.ignore_patterns("source.onnx", "__pycache__"))
    keys_dir = tmp_path_factory.mktemp("redis-stack-keys")  # not mounted: the keys are in Redis
    port = _three_free_ports()
    started = time.monotonic()
    try:
        password = containers.up(engine, models, keys_dir, port, timeout=300, redis=True)
        print(f"\n[redis stack] three gateways healthy after {time.monotonic() - started:.0f} s")
        stack = RedisStack(
            [f"http://127.0.0.1:{port + i}" for i in range(3)],
            containers.stack_env(models, keys_dir, port, password),
            images["bus"].read_bytes(),
        )
        created = stack.compose("run", "--rm", "keys", "create", "--name", "container-admin", "--admin")
        stack.admin = created.stdout.strip().splitlines()[-1]
        assert stack.admin.startswith("yk_"), created.stdout + created.stderr
        yield stack
    finally:
        containers.down(engine, models, keys_dir, port, redis=True)


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
    assert stack["services"]["triton"] == cpu["services"]["triton"]
    one = cpu["services"]["gateway"]
    gateways = {name: s for name, s in stack["services"].items() if name.startswith("gateway")}
    assert sorted(gateways) == list(containers.REDIS_GATEWAYS)
    ports = set()
    for gateway in gateways.values():
        assert gateway["environment"] == one["environment"] | REDIS_ENV
        assert gateway["depends_on"] == one["depends_on"] | {"redis": {"condition": "service_healthy"}}
        assert "volumes" not in gateway  # no keys folder: the keys are in Redis
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
