"""The model registry (gateway/models): the same tests on the file backend and on a real Redis.

The clock is the registry's own (`registry.clock`), set by the tests, so leases expire without waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.models import (
    FileRegistry,
    InvalidModelId,
    LeaseLost,
    ModelConflict,
    ModelNotFound,
    ModelSettings,
    Registry,
    RegistryError,
    check_model_id,
    open_registry,
    parse_triton_name,
    triton_name,
    upload_path,
)
from gateway.models.redis_backend import CHANNEL, RedisRegistry
from tritonlocal import redisserver

pytestmark = pytest.mark.anyio  # the async tests run on anyio's pytest plugin (anyio is installed with Starlette)
SHA = hashlib.sha256(b"weights").hexdigest()
LEASE_S = 30.0
EXPORT = ("checking", "exporting", "verifying")
LOAD = ("loading",)


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["file", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """("file", path) or ("redis", (url, password)) of an empty registry."""
    if request.param == "file":
        yield "file", tmp_path / "models.json"
        return
    server: redisserver.RedisServer = request.getfixturevalue("redis_server")
    url = server.url.rsplit("/", 1)[0] + "/7"  # a database of its own: the session's keys tests use /0

    async def flush() -> None:
        r = RedisRegistry(url, server.password)
        await r.redis.flushdb()
        await r.close()

    asyncio.run(flush())
    yield "redis", (url, server.password)


def open_backend(backend: tuple[str, Any], clock: Clock) -> Registry:
    kind, where = backend
    registry: Registry = FileRegistry(where) if kind == "file" else RedisRegistry(*where)
    registry.clock = clock  # type: ignore[method-assign]
    return registry


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def registry(backend: tuple[str, Any], clock: Clock) -> AsyncIterator[Registry]:
    r = open_backend(backend, clock)
    yield r
    await r.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def add(registry: Registry, model_id: str = "parts", **kw: Any) -> Any:
    return await registry.add_version(
        model_id, sha256=SHA, size=6_000_000, filename="best.pt", upload=upload_path(model_id, SHA), **kw
    )


def test_model_ids_and_triton_names() -> None:
    for good in ("a", "parts-v2", "Model_1.2", "x" * 64):
        assert check_model_id(good) == good
        assert parse_triton_name(triton_name(good, 12)) == (good, 12)
    for bad in ("", "-a", ".a", "a--b", "x" * 65, "a/b", "a b", "é"):
        with pytest.raises(InvalidModelId, match="Invalid model id"):
            check_model_id(bad)
    for builtin in ("yolov8n", "yolov8n-seg", "a--v0", "a--v01", "a--b--v1", "a--vx"):
        assert parse_triton_name(builtin) is None
    assert upload_path("parts", SHA) == f"uploads/parts/{SHA}.pt"


def test_open_registry_chooses_the_backend(tmp_path: Path) -> None:
    settings = ModelSettings(models_file=tmp_path / "m.json")
    assert isinstance(open_registry(settings), FileRegistry)
    assert isinstance(open_registry(settings, "redis://127.0.0.1:1/0"), RedisRegistry)


def test_settings_from_env_name_the_variable() -> None:
    s = ModelSettings.from_env({"GATEWAY_MAX_MODEL_BYTES": "1000", "GATEWAY_MODELS_DIR": "/srv/models"})
    assert s.max_model_bytes == 1000 and s.models_dir == Path("/srv/models")
    with pytest.raises(ValueError, match="GATEWAY_EXPORT_CONCURRENCY"):
        ModelSettings.from_env({"GATEWAY_EXPORT_CONCURRENCY": "0"})
    with pytest.raises(ValueError, match="GATEWAY_EXPORT_TIMEOUT_S"):
        ModelSettings.from_env({"GATEWAY_EXPORT_TIMEOUT_S": "soon"})


async def test_versions_are_numbered_and_queued(registry: Registry, clock: Clock) -> None:
    record, v1 = await add(registry)
    clock.t += 5
    record, v2 = await add(registry, imgsz=320)
    assert (v1.number, v2.number) == (1, 2)
    assert (v2.triton, v2.status, v2.stage, v2.imgsz, v2.upload) == ("parts--v2", "queued", "checking", 320, v1.upload)
    stored = await registry.get("parts")
    assert stored is not None and [v.number for v in stored.versions] == [1, 2]
    assert stored.serving is None and stored.serving_name is None and stored.created == v1.created
    assert [r.id for r in await registry.list()] == ["parts"]
    assert await registry.get("other") is None
    with pytest.raises(InvalidModelId):
        await add(registry, "a--v1")
    with pytest.raises(RegistryError, match="imgsz must be from 32 to 1280, not 2048"):
        await add(registry, imgsz=2048)
    with pytest.raises(RegistryError, match="sha256 must be 64 lowercase hex digits"):
        await registry.add_version("parts", sha256="abc", size=1, filename="x.pt", upload="uploads/parts/abc.pt")


async def test_claim_takes_the_oldest_and_one_version_per_model(registry: Registry, clock: Clock) -> None:
    await add(registry, "a")
    clock.t += 1
    await add(registry, "a")
    clock.t += 1
    await add(registry, "b")
    clock.t += 2
    first = await registry.claim("w1", LEASE_S, EXPORT)
    assert first is not None and (first.model_id, first.version.number) == ("a", 1)
    v = first.version
    assert (v.status, v.attempts, v.lease and v.lease.worker) == ("checking", 1, "w1")
    assert v.lease is not None and v.lease.until == clock.t + LEASE_S and v.timings["queued"] == 4.0
    second = await registry.claim("w2", LEASE_S, EXPORT)
    assert second is not None and (second.model_id, second.version.number) == ("b", 1)  # a's v2 waits for its v1
    assert await registry.claim("w3", LEASE_S, EXPORT) is None
    assert await registry.claim("w3", LEASE_S, LOAD) is None  # the loading lane takes no export work


async def test_two_claimers_never_take_the_same_version(registry: Registry) -> None:
    await add(registry)
    claims = await asyncio.gather(*(registry.claim(f"w{i}", LEASE_S, EXPORT) for i in range(6)))
    taken = [c for c in claims if c is not None]
    assert len(taken) == 1 and taken[0].version.attempts == 1


async def test_concurrent_writers_lose_no_update(registry: Registry) -> None:
    """20 uploads of one new id at once (threads on the file backend, connections on Redis): 20 distinct versions."""
    added = await asyncio.gather(*(add(registry) for _ in range(20)))
    assert sorted(v.number for _, v in added) == list(range(1, 21))
    stored = await registry.get("parts")
    assert stored is not None and [v.number for v in stored.versions] == list(range(1, 21))


async def test_progress_and_stages_need_the_lease(registry: Registry, clock: Clock) -> None:
    await add(registry)
    claim = await registry.claim("w1", LEASE_S, EXPORT)
    assert claim is not None
    record = await registry.progress(
        "parts", 1, "w1", progress=0.5, message="scanning", task="detect", names={0: "bolt"}, timings={"checking": 1.5}
    )
    record = await registry.progress("parts", 1, "w1", stage="exporting", timings={"exporting": 0.0})
    v = record.version(1)
    assert (v.status, v.stage, v.progress, v.task, v.names) == ("exporting", "exporting", 0.0, "detect", {0: "bolt"})
    assert v.timings == {"queued": 0.0, "checking": 1.5, "exporting": 0.0}
    with pytest.raises(LeaseLost):
        await registry.progress("parts", 1, "w2", progress=0.9)
    with pytest.raises(LeaseLost):
        await registry.renew("parts", 1, "w2", LEASE_S)
    clock.t += 10
    renewed = await registry.renew("parts", 1, "w1", LEASE_S)
    lease = renewed.version(1).lease
    assert lease is not None and lease.until == clock.t + LEASE_S


async def test_a_stopped_worker_is_resumed_then_failed_never_left_in_a_stage(registry: Registry, clock: Clock) -> None:
    await add(registry)
    claim = await registry.claim("w1", LEASE_S, EXPORT)
    assert claim is not None
    await registry.progress("parts", 1, "w1", stage="exporting")
    assert await registry.claim("w2", LEASE_S, EXPORT) is None  # the lease is live
    clock.t += LEASE_S + 1  # w1 stopped renewing
    resumed = await registry.claim("w2", LEASE_S, EXPORT)
    assert resumed is not None
    v = resumed.version
    assert (v.status, v.attempts, v.lease and v.lease.worker) == ("exporting", 2, "w2") and "resumed" in v.message
    with pytest.raises(LeaseLost):  # w1 comes back: it must stop, its lease was taken over
        await registry.progress("parts", 1, "w1", progress=0.5)
    clock.t += LEASE_S + 1  # w2 stopped too: the second attempt was the last
    assert await registry.claim("w3", LEASE_S, EXPORT) is None
    stored = await registry.get("parts")
    assert stored is not None
    v = stored.version(1)
    assert (v.status, v.stage, v.lease) == ("failed", "exporting", None)
    assert v.reason == "the export worker stopped during exporting (2 attempts); upload again"


async def test_ready_flips_the_alias_and_schedules_the_old_version(registry: Registry, clock: Clock) -> None:
    await add(registry)
    await add(registry)
    for number in (1, 2):
        claim = await registry.claim("w", LEASE_S, EXPORT)
        assert claim is not None and claim.version.number == number
        await registry.progress("parts", number, "w", stage="loading")
        clock.t += 1
        record = await registry.ready("parts", number, "w", grace_s=60)
        assert record.serving == number and record.serving_name == f"parts--v{number}"
    v1, v2 = record.versions
    assert (v1.status, v1.retire_at) == ("ready", clock.t + 60)  # still loaded for requests already resolved to it
    assert (v2.status, v2.retire_at, v2.lease, v2.loaded_at) == ("ready", None, None, clock.t)
    assert await registry.set_status("parts", 1, "retired", expect=("ready",))
    assert not await registry.set_status("parts", 1, "unloaded", expect=("ready",))  # not ready any more
    stored = await registry.get("parts")
    assert stored is not None and stored.version(1).status == "retired" and stored.version(1).retire_at is None


async def test_a_failed_version_leaves_the_alias_alone(registry: Registry) -> None:
    await add(registry)
    claim = await registry.claim("w", LEASE_S, EXPORT)
    assert claim is not None
    await registry.ready("parts", 1, "w", 60)
    await add(registry)
    claim = await registry.claim("w", LEASE_S, EXPORT)
    assert claim is not None
    record = await registry.fail("parts", 2, "w", "verifying", "box 0 differs by 3.2 px")
    assert record.serving == 1 and record.serving_name == "parts--v1"
    v2 = record.version(2)
    assert (v2.status, v2.stage, v2.reason, v2.lease) == ("failed", "verifying", "box 0 differs by 3.2 px", None)
    with pytest.raises(ModelConflict, match="only a version that was verified"):
        await registry.rollback("parts", 2)


async def test_rollback_queues_a_verified_version_for_loading(registry: Registry) -> None:
    for _ in range(2):
        await add(registry)
        claim = await registry.claim("w", LEASE_S, EXPORT)
        assert claim is not None
        await registry.ready("parts", claim.version.number, "w", 60)
    await registry.set_status("parts", 1, "retired", expect=("ready",))
    with pytest.raises(ModelConflict, match="already serving"):
        await registry.rollback("parts", 2)
    record, target = await registry.rollback("parts")
    assert (target.number, target.status, target.stage, target.rollback) == (1, "queued", "loading", True)
    assert record.serving == 2  # nothing flips before the worker has loaded and checked it
    assert await registry.claim("w", LEASE_S, EXPORT) is None
    claim = await registry.claim("w", LEASE_S, LOAD)
    assert claim is not None and claim.version.number == 1
    record = await registry.fail("parts", 1, "w", "loading", "Triton refused it")
    assert record.version(1).status == "retired" and record.version(1).reason == "Triton refused it"
    await registry.rollback("parts", 1)
    claim = await registry.claim("w", LEASE_S, LOAD)
    assert claim is not None
    record = await registry.ready("parts", 1, "w", 60)
    assert record.serving == 1 and record.version(2).retire_at is not None
    with pytest.raises(ModelConflict, match="no earlier version"):
        await registry.rollback("parts")
    with pytest.raises(ModelNotFound):
        await registry.rollback("nothing")


async def test_an_unloaded_version_is_loaded_again_on_request(registry: Registry, clock: Clock) -> None:
    await add(registry)
    claim = await registry.claim("w", LEASE_S, EXPORT)
    assert claim is not None
    await registry.ready("parts", 1, "w", 60)
    await registry.touch("parts")
    assert await registry.set_status("parts", 1, "unloaded", expect=("ready",))
    stored = await registry.get("parts")
    assert stored is not None and stored.serving == 1 and stored.serving_name is None and stored.last_used == clock.t
    record = await registry.request_load("parts")
    assert (record.version(1).status, record.version(1).stage) == ("queued", "loading")
    claim = await registry.claim("w", LEASE_S, LOAD)
    assert claim is not None and claim.version.status == "loading"
    record = await registry.fail("parts", 1, "w", "loading", "Triton is out of memory")
    assert record.version(1).status == "unloaded" and record.serving == 1  # still the alias: asked again later
    clock.t -= 100
    await registry.touch("parts")  # an older time never moves last_used back
    stored = await registry.get("parts")
    assert stored is not None and stored.last_used == clock.t + 100


async def test_delete_hides_the_model_and_purge_removes_it(registry: Registry) -> None:
    await add(registry)
    claim = await registry.claim("w", LEASE_S, EXPORT)
    assert claim is not None
    record = await registry.delete("parts")
    assert record.deleted and record.serving_name is None
    with pytest.raises(LeaseLost):  # the worker stops at its next write
        await registry.progress("parts", 1, "w", progress=0.5)
    with pytest.raises(ModelConflict, match="being deleted"):
        await add(registry)
    assert await registry.claim("w", LEASE_S, EXPORT) is None
    with pytest.raises(ModelNotFound):
        await registry.request_load("parts")
    assert await registry.purge("parts")
    assert await registry.get("parts") is None and await registry.list() == []
    assert not await registry.purge("parts")
    _, v = await add(registry)
    assert v.number == 1  # a new model under the old id starts again at 1


def test_a_second_process_sees_every_change(backend: tuple[str, Any], clock: Clock) -> None:
    """Two registries on the same file or Redis (as a gateway and a worker are) share every write."""

    async def scenario() -> None:
        gateway, worker = open_backend(backend, clock), open_backend(backend, clock)
        try:
            await add(gateway)
            claim = await worker.claim("w", LEASE_S, EXPORT)
            assert claim is not None
            await worker.ready("parts", 1, "w", 60)
            seen = await gateway.get("parts")
            assert seen is not None and seen.serving_name == "parts--v1"
        finally:
            await gateway.close()
            await worker.close()

    run(scenario())


def test_redis_publishes_each_changed_id(redis_server: redisserver.RedisServer, clock: Clock) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/7"

    async def scenario() -> list[str]:
        registry = RedisRegistry(url, redis_server.password)
        registry.clock = clock  # type: ignore[method-assign]
        seen: list[str] = []

        async def listen() -> None:
            async for model_id in registry.changes():
                seen.append(model_id)
                if len(seen) == 2:
                    return

        listener = asyncio.create_task(listen())
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while int((await registry.redis.pubsub_numsub(CHANNEL))[0][1]) == 0:  # subscribed
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            await add(registry, "first")
            await registry.touch("first")
            await asyncio.wait_for(listener, 10)
        finally:
            listener.cancel()
            await registry.close()
        return seen

    assert run(scenario()) == ["first", "first"]
