"""Your own models through the HTTP API (issue #27): the models API, predictions of uploaded ids, the Python client
and the page, on real parts: three gateways sharing a real Redis, the real export worker (sandboxed exports), a real
Triton in explicit model control with its repository API restricted.

Exports are few (each is ~15 s of 2 shared cores): the module uploads two models at once (a trained yolov8n, and a
checkpoint with 3 named classes made from it) and later tests build on them: parity, class names, scopes, a replace
under load, a version that fails, the page, the LRU, deletion. The first tests (`Aliases` on both registries) need
no Triton. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from bench.parity import assert_matches
from export.verify import triton_problems
from gateway.errors import NotFound, ServiceUnavailable
from gateway.models import FileRegistry, ModelSettings, Registry
from gateway.models.aliases import Aliases
from gateway.models.record import STAGES
from gateway.models.redis_backend import CHANNEL, RedisRegistry
from tests.conftest import CACHE, Gateway, start_gateway, stop_gateway
from tests.reference import image_wh
from tests.test_models_sandbox import Payload, trained_yolov8n
from tests.test_models_worker import ADMIN_KEY as TRITON_ADMIN_KEY  # the key the worker's Runner sends
from tests.test_models_worker import Runner, Stack
from tests.test_web import browser  # noqa: F401 - the module's Chromium (a fixture)
from tritonlocal import launcher, redisserver

WAIT_S = 300.0  # an export is ~15 s here; CI machines are busy
LIMIT = 16 * 2**20  # GATEWAY_MAX_MODEL_BYTES of the module's gateways (a trained yolov8n is 6.5 MB)
CLIENTS = 8  # the closed loop of the replace under load
FRUIT = {0: "apple", 1: "banana", 2: "cherry"}


# --- where a prediction goes (`Aliases`), on each registry: no Triton --------------------------------------------


async def _add(registry: Registry, model_id: str) -> None:
    await registry.add_version(model_id, sha256="a" * 64, size=1, filename="m.pt", upload=f"uploads/{model_id}/a.pt")


async def _serve(registry: Registry, model_id: str) -> None:
    claim = await registry.claim("test-worker", 30.0, STAGES)
    assert claim is not None and claim.model_id == model_id
    await registry.ready(model_id, claim.version.number, "test-worker", 60.0)


async def _resolves(aliases: Aliases, model_id: str, timeout_s: float = 5.0) -> str:
    """The Triton name `model_id` resolves to, once it resolves to a version (polled: a change notice is async)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            target = await aliases.resolve(model_id)
            if target.uploaded:
                return target.name
        except ServiceUnavailable:
            pass
        assert time.monotonic() < deadline, f"{model_id} still resolves to no version"
        await asyncio.sleep(0.05)


def test_file_registry_changes_reach_the_alias_at_once(tmp_path: Path) -> None:
    """In file mode the gateway sees a flip, a deletion and an unload at once, from the file's stat, although its
    cache would keep a record an hour; an `unloaded` version is asked to load again, and a served one is touched."""

    async def go() -> None:
        registry = FileRegistry(tmp_path / "models.json")
        aliases = Aliases(registry, cache_s=3600.0)
        assert (await aliases.resolve("yolov8n")).uploaded is False  # no upload by that id: Triton's own
        await _add(registry, "m")
        with pytest.raises(ServiceUnavailable) as preparing:
            await aliases.resolve("m")
        assert "is being prepared: version 1 is queued" in preparing.value.message
        assert preparing.value.headers["Retry-After"] == "5"
        await _serve(registry, "m")
        assert (await aliases.resolve("m")).name == "m--v1"  # no wait: the stat changed
        deadline = time.monotonic() + 5
        while (await registry.get("m")).last_used is None:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the request was not remembered (the LRU reads it)"
            await asyncio.sleep(0.05)
        with pytest.raises(NotFound, match="versions of a model are not called by name"):
            await aliases.resolve("m--v1")
        assert await registry.set_status("m", 1, "unloaded", expect=("ready",))
        with pytest.raises(ServiceUnavailable, match="was unloaded"):
            await aliases.resolve("m")
        deadline = time.monotonic() + 5
        while (v := (await registry.get("m")).version(1)).status != "queued":  # type: ignore[union-attr]
            assert time.monotonic() < deadline, v
            await asyncio.sleep(0.05)
        assert v.stage == "loading"  # the worker's reload lane takes it
        await registry.delete("m")
        with pytest.raises(NotFound, match="deleted"):
            await aliases.resolve("m")
        await aliases.close()

    asyncio.run(go())


def test_a_version_that_failed_is_a_404_naming_why(tmp_path: Path) -> None:
    async def go() -> None:
        registry = FileRegistry(tmp_path / "models.json")
        aliases = Aliases(registry)
        await _add(registry, "broken")
        claim = await registry.claim("test-worker", 30.0, STAGES)
        assert claim is not None
        await registry.fail("broken", 1, "test-worker", "checking", "not a YOLO checkpoint")
        with pytest.raises(NotFound) as failed:
            await aliases.resolve("broken")
        assert "version 1 failed during checking: not a YOLO checkpoint" in failed.value.message
        assert "PUT /v1/models/broken" in failed.value.message
        await aliases.close()

    asyncio.run(go())


def test_redis_registry_changes_reach_the_alias_by_the_channel(redis_server: redisserver.RedisServer) -> None:
    """In Redis mode a change is published on `yt:models` and every gateway drops its cached record at once (here:
    an hour's cache, so only the notice can explain the new answer)."""
    url = redis_server.url.rsplit("/", 1)[0] + "/8"

    async def go() -> None:
        writer = RedisRegistry(url, redis_server.password)
        await writer.redis.flushdb()
        aliases = Aliases(RedisRegistry(url, redis_server.password), cache_s=3600.0)
        aliases.start()
        deadline = time.monotonic() + 10
        while (await writer.redis.pubsub_numsub(CHANNEL))[0][1] < 1:  # the listener is subscribed
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await _add(writer, "r")
        with pytest.raises(ServiceUnavailable):
            await aliases.resolve("r")
        await _serve(writer, "r")
        assert await _resolves(aliases, "r") == "r--v1"
        await writer.delete("r")
        deadline = time.monotonic() + 5
        while True:
            try:
                await aliases.resolve("r")
            except NotFound:
                break
            assert time.monotonic() < deadline, "the deletion did not reach the alias"
            await asyncio.sleep(0.05)
        await aliases.close()
        await writer.redis.flushdb()
        await writer.close()

    asyncio.run(go())


# --- the stack: three gateways, Redis, the worker, Triton ----------------------------------------------------------


@dataclass
class Api:
    stack: Stack
    gateways: list[Gateway]
    admin: str
    key: str
    work: Path

    @property
    def runner(self) -> Runner:
        assert self.stack.runner is not None
        return self.stack.runner

    def model(self, model_id: str, gw: int = 0) -> requests.Response:
        return requests.get(f"{self.gateways[gw].url}/v1/models/{model_id}", timeout=30)

    def data(self, model_id: str, gw: int = 0) -> dict[str, Any]:
        r = self.model(model_id, gw)
        assert r.status_code == 200, r.text
        return r.json()["data"]  # type: ignore[no-any-return]

    def upload(self, path: Path, model_id: str, gw: int = 0, put: bool = False, **fields: str) -> requests.Response:
        url = self.gateways[gw].url
        headers = {"x-api-key": fields.pop("key", self.admin)}
        with open(path, "rb") as f:
            files = {"file": (path.name, f)}
            if put:
                return requests.put(
                    f"{url}/v1/models/{model_id}", headers=headers, files=files, data=fields, timeout=300
                )
            data = {"id": model_id, **fields}
            return requests.post(f"{url}/v1/models", headers=headers, files=files, data=data, timeout=300)

    def wait(self, model_id: str, number: int, statuses: tuple[str, ...], timeout_s: float = WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            data = self.data(model_id)
            v = next(x for x in data["versions"] if x["number"] == number)
            if v["status"] in statuses:
                return v  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, f"{model_id} v{number} not {statuses} after {timeout_s:.0f} s: {v}"
            time.sleep(0.25)

    def predict(self, model: str, photo: Path, gw: int = 0, key: str = "", **data: Any) -> requests.Response:
        fields = {"confidence": 0.25, "iou": 0.45, **data}
        headers = {"x-api-key": key or self.key}
        return requests.post(
            f"{self.gateways[gw].url}/v1/predict/{model}",
            headers=headers,
            files={"image": photo.read_bytes()},
            data=fields,
            timeout=120,
        )

    def served(self, model: str, photo: Path, gw: int = 0, timeout_s: float = 60.0) -> requests.Response:
        """The first answer that is not a 503 (a model that was just flipped or is being loaded again)."""
        deadline = time.monotonic() + timeout_s
        while (r := self.predict(model, photo, gw)).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.25)
        return r


async def _keys(url: str, password: str) -> tuple[str, str, str, str]:
    """An admin key, a prediction key, a key for `fruit` only, and an admin key for `fruit` only, in Redis."""
    from gateway.keys.auth import KeyDraft
    from gateway.keys.redis_store import RedisStore

    store = RedisStore(url, password, timeout_s=2.0)
    try:
        admin = (await store.create_key(KeyDraft("api-admin", admin=True)))[1]
        key = (await store.create_key(KeyDraft("api-user")))[1]
        fruit = (await store.create_key(KeyDraft("fruit-only", models=("fruit",))))[1]
        fruit_admin = (await store.create_key(KeyDraft("fruit-admin", models=("fruit",), admin=True)))[1]
        return admin, key, fruit, fruit_admin
    finally:
        await store.close()


SCOPED: dict[str, str] = {}


@pytest.fixture(scope="module")
def api(
    repository: Path, redis_server: redisserver.RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    work = tmp_path_factory.mktemp("models-api")
    repo = work / "repository"
    repo.mkdir()
    (repo / "yolov8n").symlink_to(repository / "yolov8n")  # a built-in model
    triton = launcher.start(repo, cache=CACHE / "server", log_path=work / "triton.log", admin_key=TRITON_ADMIN_KEY)
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    settings = ModelSettings(
        models_dir=work / "models",
        max_model_bytes=LIMIT,
        export_lease_s=5.0,
        retire_grace_s=10.0,  # longer than any request of the closed loop takes on 2 busy cores
        models_poll_s=0.2,
        max_loaded_uploads=0,
    )
    stack = Stack(repo, settings.models_dir, triton, url, redis_server.password, settings)
    stack.call(lambda r: r.redis.flushdb())
    admin, key, fruit, fruit_admin = asyncio.run(_keys(url, redis_server.password))
    SCOPED.update(fruit=fruit, fruit_admin=fruit_admin)
    stack.runner = Runner(stack)
    stack.runner.start()
    gateways: list[Gateway] = []
    try:
        for i in range(3):
            gateways.append(
                start_gateway(
                    triton,
                    tmp_path_factory.mktemp(f"gateway-{i}"),
                    redis_url=url,
                    redis_password=redis_server.password,
                    models_dir=str(settings.models_dir),
                    max_model_bytes=str(LIMIT),
                    model_check_wait_s="60",  # the worker is idle when a refusal is tested: it always decides
                    triton_admin_key=TRITON_ADMIN_KEY,
                )
            )
        yield Api(stack, gateways, admin, key, work)
    finally:
        stack.runner.stop()
        for gw in gateways:
            stop_gateway(gw)
        triton.stop()
        stack.call(lambda r: r.redis.flushdb())


@pytest.fixture(scope="module")
def fruit_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint with its own 3 named classes that does detect things: the trained yolov8n with its class outputs
    cut to the first three (person, bicycle, car), renamed apple, banana, cherry."""
    import torch
    from ultralytics import YOLO

    yolo = YOLO(str(trained_yolov8n()))
    head = yolo.model.model[-1]
    for branch in head.cv3:
        last = branch[-1]
        cut = torch.nn.Conv2d(last.in_channels, len(FRUIT), 1)
        with torch.no_grad():
            cut.weight.copy_(last.weight[: len(FRUIT)])
            cut.bias.copy_(last.bias[: len(FRUIT)])
        branch[-1] = cut
    head.nc = len(FRUIT)
    head.no = head.nc + head.reg_max * 4
    yolo.model.yaml["nc"] = len(FRUIT)
    yolo.model.names = dict(FRUIT)
    path = tmp_path_factory.mktemp("fruit") / "fruit.pt"
    yolo.save(path)
    return path


@dataclass
class Uploaded:
    parts: requests.Response  # the raw POST of `parts`
    early: requests.Response  # a prediction of `parts` right after its 202
    fruit: Any  # the client's ModelStatus of `fruit`
    events: list[Any]  # the client's progress reports


@pytest.fixture(scope="module")
def uploaded(api: Api, fruit_checkpoint: Path, images: dict[str, Path]) -> Uploaded:
    """Two uploads at once: `parts` (the trained yolov8n) by a raw POST to gateway 0, `fruit` by the Python client
    through gateway 1 (waiting until it serves); both are exported one after the other (one export at a time)."""
    from yolo_triton_client import Client

    out: dict[str, Any] = {}
    events: list[Any] = []

    def fruit() -> None:
        try:
            with Client(api.gateways[1].url, api.admin, timeout=300) as client:
                out["fruit"] = client.models.upload(fruit_checkpoint, "fruit", progress=events.append, wait=True)
        except Exception as exc:  # reported by the assertion below
            out["error"] = exc

    other = threading.Thread(target=fruit)
    other.start()
    parts = api.upload(trained_yolov8n(), "parts")
    early = api.predict("parts", images["bus"], gw=2)
    other.join(2 * WAIT_S)
    assert not other.is_alive() and "fruit" in out, out
    assert parts.status_code == 202, parts.text
    assert api.wait("parts", 1, ("ready", "failed"))["status"] == "ready"
    return Uploaded(parts, early, out["fruit"], events)


@pytest.mark.load
def test_two_uploads_at_once_are_both_served(api: Api, uploaded: Uploaded) -> None:
    r = uploaded.parts
    assert r.headers["location"] == "/v1/models/parts"
    body = r.json()
    data = body["data"]
    assert body["success"] is True and data["requested_version"] == 1 and data["source"] == "upload"
    assert data["versions"][0]["sha256"] == hashlib.sha256(trained_yolov8n().read_bytes()).hexdigest()
    # not refused: past its checks, or still queued behind `fruit`'s export (one at a time) when the check wait ended
    assert data["versions"][0]["status"] in (*STAGES, "ready"), data
    # the first version still being prepared: 503 naming its state, with Retry-After
    early = uploaded.early
    assert early.status_code == 503 and early.headers["retry-after"] == "5", early.text
    assert "Model 'parts' is being prepared: version 1 is" in early.json()["message"]
    fruit = uploaded.fruit
    assert (fruit.id, fruit.status, fruit.serving, fruit.requested_version) == ("fruit", "ready", 1, 1)
    sent = [e for e in uploaded.events if e.phase == "upload"]
    assert sent[0].done == 0 and sent[-1].done == sent[-1].total == fruit.versions[0].size
    stages = [e.phase for e in uploaded.events if e.phase != "upload"]
    assert stages[-1] == "ready" and set(stages) & {"exporting", "verifying", "loading"}, stages
    listed = requests.get(f"{api.gateways[2].url}/v1/models", timeout=30).json()["data"]
    sources = {m["id"]: (m["source"], m.get("status")) for m in listed}
    assert sources["yolov8n"] == ("builtin", None)
    assert sources["parts"] == sources["fruit"] == ("upload", "ready")
    assert not any("--v" in m["id"] for m in listed)  # versions are not models


@pytest.mark.load
def test_an_upload_via_one_gateway_answers_as_ultralytics_via_the_others(
    api: Api, uploaded: Uploaded, images: dict[str, Path], tmp_path: Path
) -> None:
    """Uploaded through gateway 0; gateways 1 and 2 answer with what `YOLO(<same .pt>).predict` answers (the parity
    suite's tolerances), on every prediction route, a video too; the version's own name is not callable."""
    from ultralytics import YOLO

    reference = YOLO(str(trained_yolov8n()))
    for gw in (1, 2):
        for photo in (images["bus"], images["zidane"]):
            r = api.served("parts", photo, gw)
            assert r.status_code == 200, r.text
            want = reference.predict(str(photo), imgsz=640, conf=0.25, iou=0.45, verbose=False)[0].summary()
            assert_matches(r.json()["data"], want, image_wh(photo), normalize=False)
    platform = requests.post(
        f"{api.gateways[1].url}/api/models/parts/predict",
        headers={"x-api-key": api.key},
        files={"file": images["bus"].read_bytes()},
        timeout=60,
    )
    assert platform.status_code == 200 and platform.json()["metadata"]["model"] == "parts"
    from tests.test_video import write_video

    video = write_video(tmp_path / "clip.avi", "MJPG", 3, (320, 240))
    frames = requests.post(
        f"{api.gateways[2].url}/v1/predict/parts", headers={"x-api-key": api.key}, files={"image": video.read_bytes()}
    )
    assert frames.status_code == 200 and len(frames.json()["data"]) == 3, frames.text
    hidden = api.predict("parts--v1", images["bus"], gw=1)
    assert hidden.status_code == 404 and "Call 'parts'" in hidden.json()["message"]


@pytest.mark.load
def test_a_checkpoint_with_its_own_class_names_answers_with_them(
    api: Api, uploaded: Uploaded, fruit_checkpoint: Path, images: dict[str, Path]
) -> None:
    from ultralytics import YOLO

    assert api.data("fruit", gw=2)["names"] == {str(k): v for k, v in FRUIT.items()}
    r = api.served("fruit", images["bus"], gw=2)
    assert r.status_code == 200, r.text
    rows = r.json()["data"]
    assert rows and {row["name"] for row in rows} <= set(FRUIT.values()) and rows[0]["name"] == "apple"
    want = YOLO(str(fruit_checkpoint)).predict(str(images["bus"]), conf=0.25, iou=0.45, verbose=False)[0].summary()
    assert_matches(rows, want, image_wh(images["bus"]), normalize=False)


@pytest.mark.load
def test_key_scopes_apply_to_uploaded_ids(api: Api, uploaded: Uploaded, images: dict[str, Path]) -> None:
    assert api.predict("fruit", images["bus"], key=SCOPED["fruit"]).status_code == 200
    refused = api.predict("parts", images["bus"], key=SCOPED["fruit"])
    assert refused.status_code == 403 and "fruit" in refused.json()["message"]
    # an admin key for `fruit` manages only `fruit`: refused before its body is read
    denied = api.upload(trained_yolov8n(), "parts", put=True, key=SCOPED["fruit_admin"])
    assert denied.status_code == 403, denied.text
    plain = api.upload(trained_yolov8n(), "other", key=api.key)  # a key without the admin scope
    assert plain.status_code == 403 and "admin scope" in plain.json()["message"]
    builtin = api.upload(trained_yolov8n(), "yolov8n")
    assert builtin.status_code == 409 and "built-in model" in builtin.json()["message"]
    taken = api.upload(trained_yolov8n(), "parts")
    assert taken.status_code == 409 and "PUT /v1/models/parts" in taken.json()["message"]


def _closed_loop(
    api: Api, model: str, photo: Path, clients: int, stop: threading.Event
) -> list[tuple[float, float, int]]:
    """`clients` threads each sending the next request as soon as the last is answered, spread over the gateways,
    until `stop`: (start, seconds, status) per request."""
    results: list[tuple[float, float, int]] = []
    body = photo.read_bytes()

    def client(i: int) -> None:
        session = requests.Session()
        url = f"{api.gateways[i % len(api.gateways)].url}/v1/predict/{model}"
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                status = session.post(
                    url, headers={"x-api-key": api.key}, files={"image": body}, timeout=120
                ).status_code
            except requests.RequestException:
                status = 0
            results.append((t0, time.monotonic() - t0, status))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(180)
    return results


@pytest.mark.load
def test_a_replace_under_load_answers_every_request(api: Api, uploaded: Uploaded, images: dict[str, Path]) -> None:
    """8 clients in a closed loop on `parts` (over the three gateways) while the async client replaces it and waits
    for version 2 to serve: every answer is a 200, and the version that serves changed."""
    from yolo_triton_client import AsyncClient

    assert api.served("parts", images["bus"]).status_code == 200
    stop = threading.Event()
    results: list[tuple[float, float, int]] = []
    loop = threading.Thread(target=lambda: results.extend(_closed_loop(api, "parts", images["bus"], CLIENTS, stop)))
    loop.start()

    async def replace() -> Any:
        async with AsyncClient(api.gateways[1].url, api.admin, timeout=300) as client:
            return await client.models.replace(trained_yolov8n(), "parts", wait=True)

    try:
        started = time.monotonic()
        model = asyncio.run(replace())
        flipped = time.monotonic()
        deadline = time.monotonic() + 3.0  # the loop goes on past the flip (gateways holding the old alias)
        while time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        loop.join(240)
    assert (model.serving, model.requested_version) == (2, 2)
    assert api.data("parts", gw=2)["serving"] == 2
    statuses = collections.Counter(status for _, _, status in results)
    assert statuses[200] > 2 * CLIENTS and set(statuses) == {200}, statuses
    during = sorted(s for t0, s, _ in results if started <= t0 <= flipped)
    p99 = during[min(len(during) - 1, int(0.99 * len(during)))] if during else float("nan")
    print(
        f"\n[replace] {len(results)} requests, all 200; during the replace ({flipped - started:.1f} s): "
        f"{len(during)} requests, p50 {statistics.median(during) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )


@pytest.mark.load
def test_a_version_that_fails_never_serves_and_the_previous_one_keeps_serving(
    api: Api, uploaded: Uploaded, fruit_checkpoint: Path, images: dict[str, Path]
) -> None:
    """fruit v2 is exported and verified, then fails its check through Triton (a fault injected at the worker's own
    check): it is `failed` with the reason, and fruit v1 answers every request throughout."""

    async def failing(triton: Any, name: str, model_dir: Path) -> tuple[list[str], int]:
        problems, rows = await triton_problems(triton, name, model_dir)
        return ([*problems, "injected: bus.jpg row 0 differs"] if name == "fruit--v2" else problems), rows

    api.runner.start(check_served=failing)
    stop = threading.Event()
    results: list[tuple[float, float, int]] = []
    loop = threading.Thread(target=lambda: results.extend(_closed_loop(api, "fruit", images["bus"], 2, stop)))
    loop.start()
    try:
        r = api.upload(fruit_checkpoint, "fruit", gw=2, put=True)
        assert r.status_code == 202 and r.json()["data"]["requested_version"] == 2, r.text
        v2 = api.wait("fruit", 2, ("ready", "failed"))
    finally:
        stop.set()
        loop.join(240)
        api.runner.start()
    assert (v2["status"], v2["stage"]) == ("failed", "loading") and "injected" in v2["reason"], v2
    assert api.data("fruit")["serving"] == 1
    statuses = collections.Counter(status for _, _, status in results)
    assert statuses[200] > 0 and set(statuses) == {200}, statuses


@pytest.mark.load
def test_the_page_uploads_rolls_back_tries_and_deletes(
    api: Api,
    uploaded: Uploaded,
    browser: Any,
    fruit_checkpoint: Path,
    images: dict[str, Path],  # noqa: F811
) -> None:
    """The Models view with an admin key: an upload whose bar shows the bytes, then the stages, until it serves; the
    versions of `parts` and a rollback to version 1; "Try" on the new model with an image; delete."""
    if api.data("parts")["serving"] < 2:  # run alone (the replace test before it made version 2): make it here
        assert api.upload(trained_yolov8n(), "parts", put=True).status_code == 202
        api.wait("parts", 2, ("ready",))
        deadline = time.monotonic() + WAIT_S
        while api.data("parts")["serving"] != 2:
            assert time.monotonic() < deadline, api.data("parts")
            time.sleep(0.25)
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        page.goto(f"{api.gateways[0].url}/")
        page.wait_for_selector("#model:not([disabled])")
        page.fill("#api-key", api.admin)
        page.click("#models-load")
        page.wait_for_selector("#models-admin:not([hidden])")
        assert page.is_visible("#models-table tr[data-model-id='parts']")
        page.evaluate(
            """() => { window.phases = []; new MutationObserver(() => {
                 const p = document.getElementById('upload-progress').dataset.phase;
                 if (window.phases[window.phases.length - 1] !== p) window.phases.push(p);
               }).observe(document.getElementById('upload-progress'), {attributes: true}); }"""
        )
        page.fill("#upload-id", "page-model")
        page.set_input_files("#upload-file", str(fruit_checkpoint))
        page.click("#model-upload button[type=submit]")
        page.wait_for_selector("#upload-progress[data-phase='ready'], #upload-progress[data-phase='failed']",
                               timeout=WAIT_S * 1000)  # fmt: skip
        phases = page.evaluate("() => window.phases")
        assert phases[0] == "upload" and phases[-1] == "ready", phases
        assert set(phases) & {"exporting", "verifying", "loading"}, phases
        # the versions of `parts` (v2 serves since the replace) and a rollback to v1
        page.click("#models-table tr[data-model-id='parts'] button:has-text('Versions')")
        page.wait_for_selector("#versions-table tr[data-version='1'] button:has-text('Roll back')")
        page.click("#versions-table tr[data-version='1'] button:has-text('Roll back')")
        page.wait_for_function(
            "() => document.querySelector(\"#versions-table tr[data-version='1']\")?.textContent.includes('serving')",
            timeout=WAIT_S * 1000,
        )
        assert api.data("parts")["serving"] == 1
        # try the new model on an image
        page.click("#models-table tr[data-model-id='page-model'] button:has-text('Try')")
        assert page.input_value("#model") == "page-model"
        page.fill("#confidence", "0.25")
        page.set_input_files("#file", str(images["bus"]))
        page.wait_for_selector("#overlay[data-detections]")
        rows = json_of(page)["data"]
        assert rows and {row["name"] for row in rows} <= set(FRUIT.values())
        # delete it (the confirmation is accepted)
        page.click("#models-table tr[data-model-id='page-model'] button:has-text('Delete')")
        page.wait_for_selector("#models-table tr[data-model-id='page-model']", state="detached")
        assert api.model("page-model").status_code == 404
    finally:
        context.close()
    assert not errors, errors


def json_of(page: Any) -> dict[str, Any]:
    import json

    return json.loads(page.text_content("#json") or "")  # type: ignore[no-any-return]


@pytest.mark.load
def test_an_unloaded_model_answers_503_and_is_loaded_again(
    api: Api, uploaded: Uploaded, images: dict[str, Path]
) -> None:
    """GATEWAY_MAX_LOADED_UPLOADS=1 unloads the least recently used upload (`fruit`); a prediction of it answers 503
    with Retry-After, asks the worker to load it, and is answered 200 a few seconds later."""
    api.stack.call(lambda r: r.touch("parts"))
    api.stack.call(lambda r: r.touch("page-model"))  # deleted by the page test: no effect if it is gone
    api.runner.start(max_loaded_uploads=1)
    try:
        api.stack.wait("fruit", 1, ("unloaded",))
        api.stack.wait_state("fruit--v1", lambda s: s != "READY")
        first = api.predict("fruit", images["bus"], gw=1)
        assert first.status_code == 503 and first.headers["retry-after"] == "5", first.text
        assert "unloaded (not used recently) and is being loaded again" in first.json()["message"]
        again = api.served("fruit", images["bus"], gw=1, timeout_s=WAIT_S)
        assert again.status_code == 200, again.text
    finally:
        api.runner.start()  # no cap: everything requested loads again
    assert api.served("parts", images["bus"], timeout_s=WAIT_S).status_code == 200


@pytest.mark.load
def test_deleting_a_model_answers_404_on_every_gateway(api: Api, uploaded: Uploaded, images: dict[str, Path]) -> None:
    r = requests.delete(f"{api.gateways[0].url}/v1/models/fruit", headers={"x-api-key": api.admin}, timeout=30)
    assert r.status_code == 200 and r.json()["data"]["deleted"] is True, r.text
    assert api.predict("fruit", images["bus"], gw=0).status_code == 404  # this gateway: at once
    deadline = time.monotonic() + 10
    while {api.predict("fruit", images["bus"], gw=gw).status_code for gw in (1, 2)} != {404}:
        assert time.monotonic() < deadline, "another gateway still answers for a deleted model"
        time.sleep(0.2)
    assert api.model("fruit", gw=2).status_code == 404
    deadline = time.monotonic() + 60
    while (api.stack.models_dir / "uploads" / "fruit").exists() or api.stack.get("fruit") is not None:
        assert time.monotonic() < deadline, "the worker did not remove the deleted model's files"
        time.sleep(0.2)
    again = api.upload(trained_yolov8n(), "fruit", put=True)
    assert again.status_code == 404, again.text
    builtin = requests.delete(f"{api.gateways[0].url}/v1/models/yolov8n", headers={"x-api-key": api.admin}, timeout=30)
    assert builtin.status_code == 409


@pytest.mark.load
def test_a_malicious_pickle_is_refused_with_422_and_never_runs(
    api: Api, tmp_path: Path, images: dict[str, Path]
) -> None:
    import torch

    canary = tmp_path / "canary"
    torch.save({"model": Payload(os.system, f"touch {canary}")}, tmp_path / "evil.pt")
    r = api.upload(tmp_path / "evil.pt", "evil", gw=1)
    assert r.status_code == 422, r.text
    message = r.json()["message"]
    assert message.startswith("The checkpoint was refused during checking: unsafe checkpoint:")
    assert "refuses global posix.system" in message
    assert not canary.exists()
    data = api.data("evil")
    assert (data["status"], data["serving"], data["versions"][0]["stage"]) == ("failed", None, "checking")
    answer = api.predict("evil", images["bus"], gw=2)
    assert answer.status_code == 404 and "version 1 failed during checking: unsafe checkpoint" in answer.text


@pytest.mark.load
def test_an_unserved_architecture_is_refused_with_422(api: Api, tmp_path: Path) -> None:
    from ultralytics import YOLO

    YOLO("yolov8n-worldv2.yaml", verbose=False).save(tmp_path / "world.pt")  # 7.8 MB: under LIMIT
    r = api.upload(tmp_path / "world.pt", "world")
    assert r.status_code == 422, r.text
    assert "YOLO-World (open-vocabulary) model (WorldModel) is not served" in r.json()["message"]


@pytest.mark.load
def test_an_oversized_upload_is_413_naming_the_setting_and_leaves_nothing(api: Api, tmp_path: Path) -> None:
    big = tmp_path / "big.pt"
    with open(big, "wb") as f:
        f.truncate(LIMIT + 1)
    declared = api.upload(big, "big")  # Content-Length over the limit: refused before the body is read
    assert declared.status_code == 413 and "GATEWAY_MAX_MODEL_BYTES" in declared.json()["message"]

    def chunked() -> Iterator[bytes]:
        boundary = b"--b0undary"
        yield boundary + b'\r\nContent-Disposition: form-data; name="id"\r\n\r\nbig\r\n'
        yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.pt"\r\n\r\n'
        for _ in range(LIMIT // 2**20 + 2):
            yield b"\0" * 2**20
        yield b"\r\n" + boundary + b"--\r\n"

    streamed = requests.post(
        f"{api.gateways[1].url}/v1/models",
        headers={"x-api-key": api.admin, "content-type": "multipart/form-data; boundary=b0undary"},
        data=chunked(),
        timeout=120,
    )
    assert streamed.status_code == 413 and "GATEWAY_MAX_MODEL_BYTES" in streamed.json()["message"]
    assert api.model("big").status_code == 404
    incoming = api.stack.models_dir / "uploads" / ".incoming"
    assert not incoming.exists() or not any(incoming.iterdir())
    assert not (api.stack.models_dir / "uploads" / "big").exists()
