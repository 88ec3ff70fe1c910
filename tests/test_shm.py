"""Tensors through Triton's system shared memory (GATEWAY_TRITON_SHM_BYTES, gateway/triton/shm.py) and inference over
Triton's HTTP port (GATEWAY_TRITON_HTTP_URL, gateway/triton/http.py): what `make serve` and the test gateways use.

Against the real Triton: the same answers as a gateway that sends the tensors in gRPC messages (as between separate
pods), regions that are reused, bounded, unlinked from /dev/shm and unregistered, and Triton's HTTP errors. The lean
worker threads (gateway/workers.py) keep anyio's guarantee that a cancelled caller waits for its call to end.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from tritonclient.grpc import aio as grpcaio

from gateway.triton.shm import FOLDER, SharedMemoryPool
from gateway.triton.http import TritonHTTP, TritonHTTPError
from gateway.workers import Workers
from tests.conftest import Gateway, start_gateway, stop_gateway
from tritonlocal import launcher

MODELS = ("yolov8n", "yolov8n-seg", "yolov8n-pose", "yolov8n-obb", "yolov8n-cls")


@pytest.fixture(scope="module")
def gateway_grpc(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway that sends tensors inside the gRPC messages, as the chart's separate pods do."""
    gw = start_gateway(triton, tmp_path_factory.mktemp("gateway-grpc"), triton_shm_bytes="0", triton_http_url="")
    yield gw
    stop_gateway(gw)


def transports(gw: Gateway) -> dict[str, float]:
    text = requests.get(f"{gw.url}/metrics", timeout=10).text
    return {m[1]: float(m[2]) for m in re.finditer(r'yolo_triton_requests_total\{transport="(\w+)"\} (\S+)', text)}


@pytest.mark.parametrize("model", MODELS)
def test_shared_memory_answers_equal_grpc_answers(
    gateway: Gateway, gateway_grpc: Gateway, images: dict[str, Path], model: str
) -> None:
    before = transports(gateway)
    for name in ("bus", "zidane", "wide"):
        data = images[name].read_bytes()
        shm = gateway.predict(model, files={"image": data})
        grpc = gateway_grpc.predict(model, files={"image": data})
        assert shm.status_code == 200 and grpc.status_code == 200, (shm.text[:300], grpc.text[:300])
        assert shm.json()["data"], f"{model} on {name}: no results, the comparison would prove nothing"
        assert shm.json()["data"] == grpc.json()["data"], f"{model} on {name}"
    after = transports(gateway)
    assert after.get("shm", 0) >= before.get("shm", 0) + 2  # the first of a shape learns the output sizes over gRPC
    assert "shm" not in transports(gateway_grpc)


def test_a_batch_of_images_goes_through_one_slot(gateway: Gateway, images: dict[str, Path]) -> None:
    data = images["bus"].read_bytes()
    files = [("image", (f"{i}.jpg", data, "image/jpeg")) for i in range(4)]
    one = gateway.predict("yolov8n", files={"image": data}).json()["data"]
    before = transports(gateway).get("shm", 0)
    batch = gateway.predict("yolov8n", files=files)
    assert batch.status_code == 200, batch.text[:300]
    entries = batch.json()["data"]
    assert len(entries) == 4 and one and all(entry["data"] == one for entry in entries)
    assert transports(gateway).get("shm", 0) > before


def test_pool_reuses_bounds_unlinks_and_unregisters(triton: launcher.TritonServer) -> None:
    async def run() -> None:
        client = grpcaio.InferenceServerClient(triton.grpc_url)
        pool = SharedMemoryPool(client, limit_bytes=2 * 2**20)

        async def registered() -> set[str]:
            status = await client.get_system_shared_memory_status(as_json=True)
            return {r["name"] for r in status.get("regions", {}).values()} if status else set()

        try:
            a = await pool.acquire(1000)
            assert a is not None and a.size == 2**20 and a.name in await registered()
            assert not any(FOLDER.glob(f"{pool.prefix}-*")), "the name must be unlinked once Triton mapped it"
            pool.release(a)
            again = await pool.acquire(5000)
            assert again is a  # reused, not registered anew
            b = await pool.acquire(2**20)
            assert b is not None and b is not a
            assert await pool.acquire(10) is None  # 2 MiB in use: over the bound, the caller goes over gRPC
            pool.release(b)
            big = await pool.acquire(2 * 2**20 - 1)  # room is made by dropping the idle slot
            assert big is None  # ... but `a` is still busy, so a 2 MiB slot cannot fit
            assert b.name not in await registered()
            pool.release(a)
            await pool.forget()  # after Triton refused a region: idle slots are dropped and unregistered
            assert pool.used_bytes == 0 and a.name not in await registered()
            c = await pool.acquire(10)
            assert c is not None and c.name not in (a.name, b.name) and c.name in await registered()
            pool.release(c)
        finally:
            await pool.close()
            assert not {n for n in await registered() if n.startswith(pool.prefix)}
            await client.close()

    asyncio.run(run())


def test_triton_http_errors_and_keep_alive(triton: launcher.TritonServer) -> None:
    async def run() -> None:
        http = TritonHTTP(triton.http_url, timeout_s=10)
        try:
            for _ in range(2):
                with pytest.raises(TritonHTTPError) as error:
                    await http.infer("no-such-model", {"inputs": []})
                assert error.value.status == 404 and "unknown model" in error.value.message.lower()
                assert len(http._idle) == 1  # the connection is kept and reused
            with pytest.raises(TritonHTTPError, match="shared memory region"):
                region = {"shared_memory_region": "never-registered", "shared_memory_byte_size": 3 * 32 * 32}
                inputs = [{"name": "image", "shape": [1, 32, 32, 3], "datatype": "UINT8", "parameters": region}]
                await http.infer("yolov8n", {"inputs": inputs})
        finally:
            await http.close()
        closed = TritonHTTP(f"http://127.0.0.1:{launcher.free_port()}", timeout_s=5)
        with pytest.raises(TritonHTTPError) as error:
            await closed.infer("yolov8n", {})
        assert error.value.status == 0 and "cannot connect" in error.value.message

    asyncio.run(run())
    with pytest.raises(ValueError, match="GATEWAY_TRITON_HTTP_URL"):
        TritonHTTP("https://triton:8000", 1)


def test_a_cancelled_caller_waits_for_its_worker_call_to_end() -> None:
    workers = Workers(2)
    release = threading.Event()
    ended: list[float] = []

    def slow() -> str:
        release.wait(5)
        time.sleep(0.05)
        ended.append(time.monotonic())
        return "done"

    async def run() -> None:
        task = asyncio.ensure_future(workers.run(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done(), "a cancelled caller must not leave while its call still runs"
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ended and time.monotonic() >= ended[0]
        assert await workers.run(pow, 2, 10) == 1024
        with pytest.raises(ZeroDivisionError):
            await workers.run(divmod, 1, 0)

    try:
        asyncio.run(run())
    finally:
        workers.close()
    assert not any(t.is_alive() for t in workers.threads)


class _Triton:
    """Triton's shared-memory calls as the pool sees them (tritonclient's signature): answered at once, or never
    (`hung`, like a SIGSTOPped server); records what was asked."""

    def __init__(self) -> None:
        self.hung = False
        self.registered: set[str] = set()
        self.unregistered: list[str] = []

    async def _wait(self) -> None:
        if self.hung:
            await asyncio.Event().wait()

    async def register_system_shared_memory(
        self,
        name: str,
        key: str,
        byte_size: int,
        offset: int = 0,
        headers: object = None,
        client_timeout: object = None,
    ) -> None:
        await self._wait()
        self.registered.add(name)

    async def unregister_system_shared_memory(
        self, name: str = "", headers: object = None, client_timeout: object = None
    ) -> None:
        await self._wait()
        self.registered.discard(name)
        self.unregistered.append(name)


def test_pool_calls_to_a_hung_triton_end_at_the_deadline_and_are_cleaned_up_later(tmp_path: Path) -> None:
    """A registration Triton never answers ends at the caller's deadline (the request goes over gRPC); the region,
    which Triton may have mapped, is counted and unregistered once Triton answers again. A slot whose request did not
    complete is never handed out again."""
    triton = _Triton()
    pool = SharedMemoryPool(triton, limit_bytes=8 * 2**20, folder=tmp_path)

    async def run() -> None:
        triton.hung = True
        started = time.monotonic()
        assert await pool.acquire(1000, timeout_s=0.5) is None
        assert 0.5 <= time.monotonic() - started < 0.5 + 3.0
        assert pool.used_bytes == 2**20 and not any(tmp_path.iterdir())  # counted until Triton lets go; unlinked
        triton.hung = False
        slot = await pool.acquire(1000)
        assert slot is not None and slot.name in triton.registered
        assert triton.unregistered and pool.used_bytes == 2**20  # the orphan first, then the new slot
        pool.release(slot, reuse=False)  # its request timed out: Triton may still write into it
        again = await pool.acquire(1000)
        assert again is not None and again is not slot and slot.name in triton.unregistered
        pool.release(again)
        assert await pool.acquire(1000) is again  # a completed request's slot is reused
        await pool.close()
        assert not triton.registered

    asyncio.run(run())
