"""Uploaded models end to end (issue #27), without the models API: versions recorded in a real Redis registry, the
real export worker (sandboxed exports), a real Triton in explicit model control with its repository API restricted,
and a real gateway (its registry the same Redis) predicting on each model by its id, whose serving version it
resolves (tests/test_models_api.py goes through the HTTP API).

The module shares one stack and, to keep the exports few on a small machine (each is ~10 CPU-seconds), one set of
versions that later tests build on: parts (trained yolov8n) v1, fruit (3 named classes) v1 and v2, ... Each test
waits on conditions (polls with deadlines), never on sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from bench import cpu
from bench.parity import assert_matches
from export.sandbox import FOLDER_PREFIX
from export.triton_control import TritonFleet
from export.verify import triton_problems
from export.worker import Worker
from gateway.models import ModelRecord, ModelSettings, Version, upload_path
from gateway.models.record import EXPORT_STAGES
from gateway.models.redis_backend import RedisRegistry
from tests.conftest import CACHE, ROOT, Gateway, start_gateway, stop_gateway
from tests.reference import image_wh
from tests.test_models_sandbox import Payload, three_class_checkpoint, trained_yolov8n
from tritonlocal import launcher, redisserver

pytestmark = pytest.mark.load
ADMIN_KEY = "worker-tests-admin-key"
WAIT_S = 300.0  # an export is ~15 s here; CI machines are busy


@dataclass
class Stack:
    repository: Path
    models_dir: Path
    triton: launcher.TritonServer
    redis_url: str
    redis_password: str
    settings: ModelSettings
    gateway: Gateway | None = None
    runner: Runner | None = None
    extra_tritons: list[launcher.TritonServer] = field(default_factory=list)

    def call(self, use: Callable[[RedisRegistry], Any]) -> Any:
        async def go() -> Any:
            registry = RedisRegistry(self.redis_url, self.redis_password)
            try:
                return await use(registry)
            finally:
                await registry.close()

        # in a thread of its own: the caller's thread may be running an event loop (Playwright's sync API does)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, go()).result()

    def get(self, model_id: str) -> ModelRecord | None:
        return self.call(lambda r: r.get(model_id))  # type: ignore[no-any-return]

    def upload(self, model_id: str, path: Path, **kw: Any) -> Version:
        """What the gateway's upload route will do: store the file by its content, then record the version."""
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        relative = upload_path(model_id, sha)
        (self.models_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (self.models_dir / relative).write_bytes(data)
        size = kw.pop("size", len(data))
        _, version = self.call(
            lambda r: r.add_version(model_id, sha256=sha, size=size, filename=path.name, upload=relative, **kw)
        )
        return version  # type: ignore[no-any-return]

    def wait(self, model_id: str, number: int, statuses: tuple[str, ...], timeout_s: float = WAIT_S) -> Version:
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.get(model_id)
            v = record.version(number) if record is not None else None
            if v is not None and v.status in statuses:
                return v
            assert time.monotonic() < deadline, f"{model_id} v{number} not {statuses} after {timeout_s:.0f} s: {v}"
            time.sleep(0.2)

    def states(self, triton: launcher.TritonServer | None = None) -> dict[str, str]:
        return (triton or self.triton).model_states()

    def wait_state(
        self, name: str, ok: Callable[[str | None], bool], triton: launcher.TritonServer | None = None
    ) -> str:
        deadline = time.monotonic() + 60
        while not ok(state := self.states(triton).get(name)):
            assert time.monotonic() < deadline, f"{name}: Triton state {state}"
            time.sleep(0.2)
        return state or ""


class Runner:
    """The export worker in a thread of this process (its own event loop, registry and Triton clients)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None

    def start(self, check_served: Any = None, triton_url: str = "", **overrides: Any) -> None:
        self.stop()
        settings = dataclasses.replace(self.stack.settings, **overrides)
        ready = threading.Event()

        async def go() -> None:
            registry = RedisRegistry(self.stack.redis_url, self.stack.redis_password)
            fleet = TritonFleet(triton_url or self.stack.triton.grpc_url, ADMIN_KEY)
            extra = {"check_served": check_served} if check_served else {}
            worker = Worker(registry, settings, self.stack.repository, fleet, **extra)
            self.loop, self.stop_event = asyncio.get_running_loop(), asyncio.Event()
            ready.set()
            try:
                await worker.run(self.stop_event)
            finally:
                await fleet.close()
                await registry.close()

        self.thread = threading.Thread(target=asyncio.run, args=(go(),), daemon=True)
        self.thread.start()
        assert ready.wait(30)

    def stop(self) -> None:
        if self.thread is None:
            return
        assert self.loop is not None and self.stop_event is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(60)
        assert not self.thread.is_alive(), "the worker did not stop"
        self.thread = None


@pytest.fixture(scope="module")
def stack(
    repository: Path, redis_server: redisserver.RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("models")
    repo = work / "repository"
    repo.mkdir()
    (repo / "yolov8n").symlink_to(repository / "yolov8n")  # a built-in model, as `make export` makes them
    triton = launcher.start(repo, cache=CACHE / "server", log_path=work / "triton.log", admin_key=ADMIN_KEY)
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    settings = ModelSettings(
        models_dir=work / "models",
        export_lease_s=3.0,
        retire_grace_s=2.0,
        models_poll_s=0.2,
        max_loaded_uploads=0,
    )
    s = Stack(repo, settings.models_dir, triton, url, redis_server.password, settings)
    s.call(lambda r: r.redis.flushdb())
    s.runner = Runner(s)
    s.runner.start()
    gateway = start_gateway(
        triton, work, redis_url=url, redis_password=redis_server.password, triton_admin_key=ADMIN_KEY
    )
    s.gateway = dataclasses.replace(gateway, key=asyncio.run(_redis_key(url, redis_server.password)))
    try:
        yield s
    finally:
        s.runner.stop()
        stop_gateway(s.gateway)
        for extra in s.extra_tritons:
            extra.stop()
        triton.stop()
        s.call(lambda r: r.redis.flushdb())


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained YOLOv8n with 3 named classes, built from Ultralytics' architecture YAML and saved as a .pt."""
    return three_class_checkpoint(tmp_path_factory.mktemp("three"))


async def _redis_key(url: str, password: str) -> str:
    """A prediction key in the stack's Redis (the gateway's keys are there in Redis mode)."""
    from gateway.keys.auth import KeyDraft
    from gateway.keys.redis_store import RedisStore

    store = RedisStore(url, password, timeout_s=2.0)
    try:
        return (await store.create_key(KeyDraft("worker-tests")))[1]
    finally:
        await store.close()


def predict(gw: Gateway, model: str, photo: Path) -> requests.Response:
    return gw.predict(model, files={"image": photo.read_bytes()}, data={"confidence": 0.25, "iou": 0.45})


def predict_served(gw: Gateway, model: str, photo: Path, timeout_s: float = 30.0) -> requests.Response:
    """The first answer that is not a 503 (the gateway may still hold the model's record from before it was ready:
    its alias cache lives a second, dropped as the change notice arrives)."""
    deadline = time.monotonic() + timeout_s
    while (r := predict(gw, model, photo)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    return r


def config_names(stack: Stack, name: str) -> dict[str, str]:
    with urllib.request.urlopen(f"{stack.triton.http_url}/v2/models/{name}/config", timeout=10) as r:
        config = json.loads(r.read())
    return json.loads(config["parameters"]["names"]["string_value"])  # type: ignore[no-any-return]


def test_uploads_that_are_not_served_fail_at_checking_with_the_reason(stack: Stack, tmp_path: Path) -> None:
    """A malicious pickle (its canary never appears), a file over GATEWAY_MAX_MODEL_BYTES (refused before it is read)
    and a YOLO-World checkpoint: each `failed` at `checking` with the reason, none ever served."""
    import torch
    from ultralytics import YOLO

    canary = tmp_path / "canary"
    torch.save({"model": Payload(os.system, f"touch {canary}")}, tmp_path / "evil.pt")
    limit = stack.settings.max_model_bytes
    empty = hashlib.sha256(b"").hexdigest()  # never compared: the size is refused before the file is read
    big = stack.models_dir / upload_path("big", empty)
    big.parent.mkdir(parents=True, exist_ok=True)
    with open(big, "wb") as f:
        f.truncate(limit + 1)  # sparse: no disk used, the size is what counts
    YOLO("yolov8s-worldv2.yaml", verbose=False).save(tmp_path / "world.pt")
    versions = {
        "evil": stack.upload("evil", tmp_path / "evil.pt"),
        "big": stack.call(
            lambda r: r.add_version(
                "big", sha256=empty, size=limit + 1, filename="big.pt", upload=upload_path("big", empty)
            )
        )[1],
        "world": stack.upload("world", tmp_path / "world.pt"),
        "half": stack.upload("half", tmp_path / "world.pt", half=True),
    }
    reasons = {}
    for model_id, v in versions.items():
        done = stack.wait(model_id, v.number, ("failed", "ready"))
        assert (done.status, done.stage, done.lease) == ("failed", "checking", None), done
        reasons[model_id] = done.reason
        assert stack.get(model_id).serving is None  # type: ignore[union-attr]
    assert reasons["evil"].startswith("unsafe checkpoint:") and "refuses global posix.system" in reasons["evil"]
    assert not canary.exists()
    assert reasons["big"] == (
        f"the file is {limit + 1} bytes; the limit is {limit} bytes (512.0 MiB, GATEWAY_MAX_MODEL_BYTES): upload a "
        "smaller checkpoint (a trained YOLOv8/YOLO11 .pt is 5-140 MiB)"
    )
    assert "a YOLO-World (open-vocabulary) model (WorldModel) is not served" in reasons["world"]
    assert reasons["half"].startswith("half precision (FP16) needs a GPU target")
    assert not any(name.startswith(("evil", "big", "world", "half")) for name in stack.states())


def test_an_uploaded_checkpoint_serves_what_ultralytics_answers(stack: Stack, images: dict[str, Path]) -> None:
    """A trained yolov8n under a new id: checked, exported, verified, loaded, then the gateway's answers on its Triton
    name equal Ultralytics' own predictions of the .pt, within the parity suite's tolerances."""
    from ultralytics import YOLO

    weights = trained_yolov8n()
    v = stack.upload("parts", weights)
    assert (v.number, v.status) == (1, "queued")
    done = stack.wait("parts", 1, ("ready", "failed"))
    assert done.status == "ready", done.reason
    assert set(done.timings) == {"queued", "checking", "exporting", "verifying", "loading"}
    assert (done.task, done.imgsz, len(done.names), done.names[0], done.attempts) == ("detect", 640, 80, "person", 1)
    assert set(done.built_with) == {"python", "torch", "torchvision", "ultralytics"}
    record = stack.get("parts")
    assert record is not None and record.serving == 1 and record.serving_name == "parts--v1"
    assert (stack.repository / "parts--v1" / "config.pbtxt").exists()
    assert not (stack.models_dir / "staging" / "parts--v1").exists()
    assert stack.states()["parts--v1"] == "READY"
    reference = YOLO(str(weights))
    assert stack.gateway is not None
    for photo in (images["bus"], images["zidane"]):
        r = predict_served(stack.gateway, "parts", photo)
        assert r.status_code == 200, r.text
        want = reference.predict(str(photo), imgsz=640, conf=0.25, iou=0.45, verbose=False)[0].summary()
        assert_matches(r.json()["data"], want, image_wh(photo), normalize=False)
    # the repository API is restricted: the worker loaded with its key, nobody else can
    refused = urllib.request.Request(f"{stack.triton.http_url}/v2/repository/models/parts--v1/unload", b"{}")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(refused, timeout=10)
    assert denied.value.code == 403


def test_a_checkpoint_with_its_own_classes_keeps_its_names(stack: Stack, three_classes: Path) -> None:
    stack.upload("fruit", three_classes)
    done = stack.wait("fruit", 1, ("ready", "failed"))
    assert done.status == "ready", done.reason
    assert done.names == {0: "apple", 1: "banana", 2: "cherry"}
    assert config_names(stack, "fruit--v1") == {"0": "apple", "1": "banana", "2": "cherry"}


def test_exports_wait_their_turn_and_a_failing_version_leaves_the_old_one_serving(
    stack: Stack, three_classes: Path, images: dict[str, Path]
) -> None:
    """Two versions queued at once are exported one after the other (GATEWAY_EXPORT_CONCURRENCY=1). parts v2 fails in
    its loading stage (a fault injected at the worker's own check of Triton's answers): it is `failed` with the
    reason, unloaded, out of the repository, and parts v1 serves throughout. fruit v2 replaces fruit v1, which is
    retired after the grace period: unloaded and moved to versions/."""

    async def failing(triton: Any, name: str, model_dir: Path) -> tuple[list[str], int]:
        problems, rows = await triton_problems(triton, name, model_dir)  # it really answered...
        if name == "parts--v2":
            return [*problems, "injected: bus.jpg row 0 differs"], rows  # ...and is made to look wrong
        return problems, rows

    assert stack.runner is not None and stack.gateway is not None
    stack.runner.stop()
    stack.upload("parts", trained_yolov8n())
    stack.upload("fruit", three_classes)
    stack.runner.start(check_served=failing)
    most_exporting, saw_waiting, parts_answers = 0, False, []
    deadline = time.monotonic() + 2 * WAIT_S
    while True:
        parts, fruit = stack.get("parts"), stack.get("fruit")
        assert parts is not None and fruit is not None
        p2, f2 = parts.version(2), fruit.version(2)
        exporting = [v for v in (p2, f2) if v.status in EXPORT_STAGES]
        most_exporting = max(most_exporting, len(exporting))
        saw_waiting = saw_waiting or (bool(exporting) and "queued" in (p2.status, f2.status))
        assert parts.serving == 1  # nothing flips to a version that was not verified
        if p2.status in ("loading", "failed"):
            parts_answers.append(predict(stack.gateway, "parts", images["bus"]).status_code)
        if p2.status == "failed" and f2.status in ("ready", "failed"):
            break
        assert time.monotonic() < deadline, (p2, f2)
        time.sleep(0.2)
    assert most_exporting == 1 and saw_waiting
    assert (p2.stage, p2.lease) == ("loading", None)
    assert p2.reason.startswith("its answers through Triton at") and "injected: bus.jpg row 0 differs" in p2.reason
    assert parts_answers and set(parts_answers) == {200}
    assert not (stack.repository / "parts--v2").exists()
    stack.wait_state("parts--v2", lambda s: s != "READY")
    assert stack.states()["parts--v1"] == "READY"
    assert f2.status == "ready", f2.reason
    assert stack.get("fruit").serving == 2  # type: ignore[union-attr]
    retired = stack.wait("fruit", 1, ("retired",))
    assert retired.retire_at is None
    assert (stack.models_dir / "versions" / "fruit--v1" / "config.pbtxt").exists()
    assert not (stack.repository / "fruit--v1").exists()
    stack.wait_state("fruit--v1", lambda s: s != "READY")
    stack.runner.start()  # without the fault


def test_a_rollback_serves_the_previous_version_again_on_every_triton(stack: Stack) -> None:
    """Rollback to fruit v1 (retired, in versions/): loaded, checked and flipped with no export. A Triton started later
    loads what is current at its start (the repository); with both Tritons, the worker loads the next rollback on
    each of them."""
    assert stack.runner is not None
    _, target = stack.call(lambda r: r.rollback("fruit"))
    assert (target.number, target.status, target.stage) == (1, "queued", "loading")
    done = stack.wait("fruit", 1, ("ready", "retired"))
    assert done.status == "ready", done.reason
    assert stack.get("fruit").serving == 1  # type: ignore[union-attr]
    stack.wait("fruit", 2, ("retired",))
    stack.wait_state("fruit--v2", lambda s: s != "READY")
    deadline = time.monotonic() + 30
    while (stack.repository / "fruit--v2").exists():  # moved to versions/ just after the status is written
        assert time.monotonic() < deadline
        time.sleep(0.1)
    second = launcher.start(
        stack.repository, cache=CACHE / "server", log_path=stack.models_dir / "triton2.log", admin_key=ADMIN_KEY
    )
    stack.extra_tritons.append(second)
    states = second.model_states()
    assert states.get("fruit--v1") == "READY" and states.get("parts--v1") == "READY"
    assert "fruit--v2" not in states and "parts--v2" not in states  # retired and failed ones left the repository
    stack.runner.start(triton_url=f"{stack.triton.grpc_url},{second.grpc_url}")
    stack.call(lambda r: r.rollback("fruit", 2))
    done = stack.wait("fruit", 2, ("ready", "retired"))
    assert done.status == "ready", done.reason
    for triton in (stack.triton, second):
        stack.wait_state("fruit--v2", lambda s: s == "READY", triton)
    stack.wait("fruit", 1, ("retired",))
    for triton in (stack.triton, second):
        stack.wait_state("fruit--v1", lambda s: s != "READY", triton)
    stack.runner.start()
    second.stop()
    stack.extra_tritons.remove(second)


def test_a_version_triton_cannot_load_fails_and_triton_stays_ready(stack: Stack, images: dict[str, Path]) -> None:
    """A rollback to a version whose files are broken: Triton refuses the load; the version goes back to `retired`
    with Triton's reason, /v2/health/ready stays 200 and everything it served still answers."""
    assert stack.gateway is not None
    kept = stack.models_dir / "versions" / "fruit--v1"
    (kept / "1" / "model.onnx").unlink()  # what a full disk or a bad copy might leave
    stack.call(lambda r: r.rollback("fruit", 1))
    done = stack.wait("fruit", 1, ("ready", "retired"))
    assert (
        done.status == "retired" and done.reason.startswith("Triton at") and "could not load fruit--v1" in done.reason
    )
    assert stack.get("fruit").serving == 2  # type: ignore[union-attr]
    assert urllib.request.urlopen(f"{stack.triton.http_url}/v2/health/ready", timeout=10).status == 200
    assert predict(stack.gateway, "fruit", images["bus"]).status_code == 200
    assert predict(stack.gateway, "parts", images["bus"]).status_code == 200
    assert predict(stack.gateway, "parts--v1", images["bus"]).status_code == 404  # versions are not called by name
    assert predict(stack.gateway, "yolov8n", images["bus"]).status_code == 200
    assert not (stack.repository / "fruit--v1").exists() and kept.exists()


def test_a_worker_killed_mid_export_never_leaves_the_version_exporting(stack: Stack) -> None:
    """SIGKILL the worker process (`python -m export worker`) during the export: its sandboxed export dies with it;
    after the lease expires the next worker resumes the version at its stage (attempt 2) and finishes it, and removes
    the private folder the killed one left."""
    assert stack.runner is not None
    stack.runner.stop()
    env = {
        **os.environ,
        "GATEWAY_REDIS_URL": stack.redis_url,
        "GATEWAY_REDIS_PASSWORD": stack.redis_password,
        "GATEWAY_MODELS_DIR": str(stack.models_dir),
        "GATEWAY_EXPORT_LEASE_S": "3",
        "GATEWAY_MODELS_POLL_S": "0.2",
        "GATEWAY_TRITON_ADMIN_KEY": ADMIN_KEY,
    }
    log_path = stack.models_dir / "killed-worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "export", "worker", "--repository", str(stack.repository)]
            + ["--triton-url", stack.triton.grpc_url],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        stack.upload("killed", trained_yolov8n())
        stack.wait("killed", 1, ("exporting",), timeout_s=120)
        deadline = time.monotonic() + 60
        while not (sandboxes := [p for p in cpu.tree(process.pid) if p != process.pid]):
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        folders = list(Path(os.environ.get("TMPDIR", "/tmp")).glob(f"{FOLDER_PREFIX}{process.pid}-*"))
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    deadline = time.monotonic() + 30
    while alive := [p for p in sandboxes if Path(f"/proc/{p}").exists() and b"export.sandbox" in _cmdline(p)]:
        assert time.monotonic() < deadline, f"the killed worker's sandbox {alive} outlived it"
        time.sleep(0.1)
    stopped = stack.get("killed").version(1)  # type: ignore[union-attr]
    assert stopped.status == "exporting" and stopped.lease is not None
    stack.runner.start()
    done = stack.wait("killed", 1, ("ready", "failed"))
    assert done.status == "ready", done.reason
    assert done.attempts == 2 and set(done.timings) >= {"exporting", "verifying", "loading"}
    assert folders and not any(f.exists() for f in folders)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_least_recently_used_uploads_are_unloaded_and_loaded_again_on_request(stack: Stack) -> None:
    """GATEWAY_MAX_LOADED_UPLOADS=1 over three serving versions: the two least recently used are unloaded; a request
    for one (request_load) loads it again, and the cap then unloads the other."""
    assert stack.runner is not None
    loaded = {"parts": "parts--v1", "fruit": "fruit--v2", "killed": "killed--v1"}
    for name in loaded.values():
        assert stack.states()[name] == "READY"
    stack.call(lambda r: r.touch("parts"))
    stack.runner.start(max_loaded_uploads=1)
    stack.wait("fruit", 2, ("unloaded",))
    stack.wait("killed", 1, ("unloaded",))
    for name in ("fruit--v2", "killed--v1"):
        stack.wait_state(name, lambda s: s != "READY")
    assert stack.get("parts").serving_name == "parts--v1" and stack.states()["parts--v1"] == "READY"  # type: ignore[union-attr]
    fruit = stack.get("fruit")
    assert fruit is not None and fruit.serving == 2 and fruit.serving_name is None  # the alias stays; it is not loaded
    stack.call(lambda r: r.request_load("fruit"))
    done = stack.wait("fruit", 2, ("ready", "failed"))
    assert done.status == "ready", done.reason
    stack.wait_state("fruit--v2", lambda s: s == "READY")
    stack.wait("parts", 1, ("unloaded",))
    stack.wait_state("parts--v1", lambda s: s != "READY")
    stack.runner.start()


def test_deleting_a_model_unloads_it_and_removes_its_files(stack: Stack) -> None:
    stack.call(lambda r: r.delete("killed"))
    deadline = time.monotonic() + 60
    while stack.get("killed") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert not (stack.repository / "killed--v1").exists()
    assert not (stack.models_dir / "uploads" / "killed").exists()
    assert stack.states().get("killed--v1") != "READY"


def test_the_worker_creates_its_repository_and_keeps_its_alive_file_fresh(tmp_path: Path) -> None:
    """What a container's probes and a Triton started before any upload rely on (deploy/Dockerfile.worker, the chart):
    `python -m export worker` creates the uploads' repository folder at start (a Triton whose repository folder is
    missing serves nothing), and touches its alive file every few seconds while it runs, even with no Triton to
    reach; SIGTERM stops it with code 0."""
    from export.worker import ALIVE_EVERY_S

    repository, alive = tmp_path / "shared" / "repository", tmp_path / "alive"
    env = {
        **os.environ,
        "GATEWAY_MODELS_FILE": str(tmp_path / "models.json"),
        "GATEWAY_MODELS_DIR": str(tmp_path / "shared" / "models"),
        "GATEWAY_MODELS_POLL_S": "0.2",
    }
    env.pop("GATEWAY_REDIS_URL", None)
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "export", "worker", "--repository", str(repository)]
            + ["--triton-url", f"127.0.0.1:{launcher.free_port()}", "--alive-file", str(alive)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        seen: list[float] = []
        deadline = time.monotonic() + 60 + 3 * ALIVE_EVERY_S
        while len(seen) < 2:  # touched, then touched again later
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"alive file touches seen: {seen}\n{log_path.read_text()}"
            if alive.exists() and (mtime := alive.stat().st_mtime) not in seen:
                seen.append(mtime)
            time.sleep(0.2)
        assert repository.is_dir() and not any(repository.iterdir())
        assert seen[1] - seen[0] >= ALIVE_EVERY_S / 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
