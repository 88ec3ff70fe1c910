"""The Triton side: model metadata from config.pbtxt parameters, and inference over gRPC (asyncio client)."""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from numpy.typing import NDArray
from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from gateway.errors import GatewayError, GatewayTimeout, NotFound, ServiceUnavailable
from gateway.modelcard import ModelInfo
from gateway.triton.http import TritonHTTP, TritonHTTPError
from gateway.triton.shm import SharedMemoryPool, Slot, aligned

log_shm = logging.getLogger("gateway.shm")

# tritonclient's defaults plus a short reconnect backoff (a restarted Triton is used again within ~2 s, not after
# gRPC's default of up to 2 minutes) and round-robin over every address a `dns:///` name resolves to (headless
# Service in Kubernetes: one connection per Triton pod instead of pinning all traffic to one). Keepalive pings find
# a vanished Triton pod within ~80 s; Triton must accept them (--grpc-keepalive-permit-without-calls=1 and
# --grpc-http2-min-recv-ping-interval-without-data <= 30000: tritonlocal/launcher.py and the Helm chart), else it
# answers GOAWAY ENHANCE_YOUR_CALM too_many_pings. tests/test_deploy.py checks the three agree.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.lb_policy_name", "round_robin"),
]
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
METADATA_TIMEOUT_S = 5.0  # a model's config, the repository index: small answers, so this only bounds a hung Triton
READY_TIMEOUT_S = 2.0  # the readiness probe


def to_gateway_error(exc: InferenceServerException, model: str) -> GatewayError:
    """One place that maps Triton/gRPC failures to API errors."""
    status = str(exc.status() or "")
    text = str(exc.message() or exc)
    lowered = text.lower()
    if "unknown model" in lowered or ("not found" in lowered and "model" in lowered):
        return NotFound(f"Model '{model}' not found. GET /v1/models lists the available models.")
    if "DEADLINE_EXCEEDED" in status or "deadline exceeded" in lowered:
        return GatewayTimeout(f"Inference on '{model}' timed out. Try again, or use a smaller `size`.")
    if "maximum queue size" in lowered or "RESOURCE_EXHAUSTED" in status:
        return ServiceUnavailable(f"Model '{model}' is at capacity. Retry after the indicated delay.", retry_after=1)
    if "not ready" in lowered or "UNAVAILABLE" in status or "connect" in lowered:
        return ServiceUnavailable(f"Model '{model}' is not ready (inference server unavailable). Retry shortly.", 5)
    return ServiceUnavailable(f"Inference on '{model}' failed in the inference server: {text}", retry_after=1)


def _metadata_error(exc: InferenceServerException, model: str) -> GatewayError:
    """As to_gateway_error, but a question about models that got no answer in time is a 503 (Triton overloaded or
    hung), not the 504 that means an inference ran past its deadline."""
    error = to_gateway_error(exc, model)
    if isinstance(error, GatewayTimeout):
        return ServiceUnavailable(
            f"The inference server did not answer within {METADATA_TIMEOUT_S:g} s (overloaded or stuck). Retry soon.",
            5,
        )
    return error


@dataclass(frozen=True, kw_only=True)
class VersionInfo(ModelInfo):
    """An uploaded model's serving version (issue #27): `name` is the id clients call (answers, messages, metrics say
    it), `triton_name` the version Triton serves (`<id>--v<N>`), resolved once per request so that the request stays
    on that version to its end."""

    triton_name: str

    @classmethod
    def of(cls, info: ModelInfo, model_id: str) -> VersionInfo:
        """The card Triton gave for the version (`info`, named `<id>--v<N>`), called `model_id`."""
        values = {f.name: getattr(info, f.name) for f in fields(info)}
        return cls(**{**values, "name": model_id, "triton_name": info.name})


def served_name(info: ModelInfo) -> str:
    """The name Triton serves the model under."""
    return info.triton_name if isinstance(info, VersionInfo) else info.name


@dataclass(frozen=True)
class TritonHealth:
    """What one probe learned about Triton (for /readyz and the yolo_triton_up gauge)."""

    up: bool  # Triton answered ready with at least one model
    models: tuple[str, ...]
    last_up_s: float | None  # seconds since Triton was last up (a probe or an inference); None: not since the start
    problem: str = ""

    def ready(self, grace_s: float) -> bool:
        """Whether this gateway can serve: Triton is up, or was within `grace_s` (a rollout or a blip)."""
        return self.up or (self.last_up_s is not None and self.last_up_s <= grace_s)


@dataclass
class Triton:
    """One long-lived asyncio gRPC client (one per event loop) and a short-lived cache of model configs; with
    `shm_bytes`, tensors go through Triton's system shared memory (shm.py) instead of the gRPC messages."""

    url: str
    timeout_s: float
    cache_s: float = 10.0
    shm_bytes: int = 0
    http_url: str = ""  # with shm_bytes: inference requests over Triton's HTTP endpoint (gateway/triton/http.py)
    count: Callable[[str], None] = lambda transport: None  # told "shm" or "grpc" for each inference request sent
    admin_key: str = field(default="", repr=False)  # Triton's restricted repository API (the index), when set
    client: grpcclient.InferenceServerClient = field(init=False)
    shm: SharedMemoryPool | None = field(default=None, init=False)
    http: TritonHTTP | None = field(default=None, init=False)
    _models: dict[str, tuple[float, ModelInfo]] = field(default_factory=dict, init=False)
    _last_up: float | None = field(default=None, init=False)  # monotonic time Triton last answered
    # bytes of each output for (model, input shape), learnt from an answer: what to reserve for them in a slot
    _output_bytes: dict[tuple[str, tuple[int, ...]], dict[str, int]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.client = grpcclient.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
        if self.shm_bytes:
            self.shm = SharedMemoryPool(self.client, self.shm_bytes)
            if self.http_url:
                self.http = TritonHTTP(self.http_url, self.timeout_s)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.shm is not None:
            await self.shm.close()
        await self.client.close()

    async def model(self, model_id: str) -> ModelInfo:
        """The model's info; NotFound for unknown or malformed ids, ServiceUnavailable when Triton is down."""
        if not MODEL_ID.match(model_id):
            raise NotFound(f"Model '{model_id[:64]}' not found. Model ids are letters, digits, '.', '_' and '-'.")
        cached = self._models.get(model_id)
        if cached and time.monotonic() - cached[0] < self.cache_s:
            return cached[1]
        try:
            config = await self.client.get_model_config(model_id, as_json=True, client_timeout=METADATA_TIMEOUT_S)
        except InferenceServerException as exc:
            raise _metadata_error(exc, model_id) from None
        try:
            info = ModelInfo.from_config(config["config"])
        except (KeyError, ValueError) as exc:
            raise NotFound(f"Model '{model_id}' is not a YOLO model served by this API ({exc}).") from None
        self._models[model_id] = (time.monotonic(), info)
        return info

    async def ready_models(self) -> list[ModelInfo]:
        """Models Triton reports READY, with their info (skips models we can't describe)."""
        try:
            index = await self.client.get_model_repository_index(
                headers=self._admin_headers, as_json=True, client_timeout=METADATA_TIMEOUT_S
            )
        except InferenceServerException as exc:
            raise _metadata_error(exc, "*") from None
        out = []
        for entry in index.get("models", []):
            if entry.get("state") != "READY":
                continue
            try:
                out.append(await self.model(entry["name"]))
            except GatewayError:
                continue
        return sorted(out, key=lambda m: m.name)

    @property
    def _admin_headers(self) -> dict[str, str] | None:
        # over gRPC Triton reads a restricted protocol's key from `triton-grpc-protocol-<name>`
        # (export/triton_control.py)
        return {"triton-grpc-protocol-admin-key": self.admin_key} if self.admin_key else None

    async def server_ready(self) -> bool:
        try:
            return bool(await self.client.is_server_ready(client_timeout=READY_TIMEOUT_S))
        except InferenceServerException:
            return False

    async def probe(self) -> TritonHealth:
        """Ask Triton whether it is ready and which models it serves; remembers when it last was."""
        models: tuple[str, ...] = ()
        problem = ""
        if not await self.server_ready():
            problem = "the inference server is unreachable or still loading models"
        else:
            try:
                models = tuple(m.name for m in await self.ready_models())
            except GatewayError as exc:
                problem = exc.message
            if not models and not problem:
                problem = "no model is loaded in the inference server"
        now = time.monotonic()
        if models:
            self._last_up = now
        last = None if self._last_up is None else now - self._last_up
        return TritonHealth(bool(models), models, last, problem)

    @contextlib.asynccontextmanager
    async def infer(self, info: ModelInfo, tensors: list[NDArray[Any]]) -> AsyncIterator[dict[str, NDArray[Any]]]:
        """Run same-shaped images (model inputs without batch dim) as one request; the outputs, which keep the batch
        dim, are valid inside the `async with` block only (they may be views of a shared-memory slot).

        One deadline, `timeout_s` from now, bounds every call to Triton this makes (setting up a shared-memory slot,
        then the inference): a hung Triton gives 504 at the deadline, not later."""
        deadline = time.monotonic() + self.timeout_s
        shape = (len(tensors), *tensors[0].shape)
        key = (served_name(info), shape)
        known = self._output_bytes.get(key)
        slot = None
        if self.shm is not None:
            _, nbytes = _layout(tensors[0].nbytes * len(tensors), info.outputs, known or {})
            slot = await self.shm.acquire(nbytes, timeout_s=self.timeout_s)
        answered = False  # Triton finished with the slot: it may be reused (else Triton may still write into it)
        try:
            if slot is not None:
                try:
                    outputs = await self._infer_shared(info, tensors, slot, known, deadline)
                except _SharedMemoryLost as exc:  # Triton restarted, or an output outgrew what was learnt
                    assert self.shm is not None
                    log_shm.warning("shared memory: %s; forgetting the regions, this request goes over gRPC", exc)
                    await self.shm.forget()
                    self._output_bytes.pop(key, None)
                    outputs = await self._infer_grpc(info, tensors, deadline)
                else:
                    self.count("shm")
            else:
                outputs = await self._infer_grpc(info, tensors, deadline)
            answered = True
            if known is None and self.shm is not None:
                if len(self._output_bytes) >= 1024:
                    self._output_bytes.clear()
                self._output_bytes[key] = {name: int(out.nbytes) for name, out in outputs.items()}
            yield outputs
        finally:
            if slot is not None:
                assert self.shm is not None
                self.shm.release(slot, reuse=answered)

    def _left(self, info: ModelInfo, deadline: float) -> float:
        """Seconds left before the request's deadline, or GatewayTimeout when none."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise GatewayTimeout(f"Inference on '{info.name}' timed out. Try again, or use a smaller `size`.")
        return left

    async def _infer_grpc(
        self, info: ModelInfo, tensors: list[NDArray[Any]], deadline: float
    ) -> dict[str, NDArray[Any]]:
        self.count("grpc")
        batch = tensors[0][None] if len(tensors) == 1 else np.stack(tensors)
        inp = grpcclient.InferInput(info.input_name, list(batch.shape), _datatype(batch))
        inp.set_data_from_numpy(batch)
        outputs = [grpcclient.InferRequestedOutput(name) for name in info.outputs]
        result = await self._send(info, inp, outputs, deadline)
        return {name: result.as_numpy(name) for name in info.outputs}

    async def _infer_shared(
        self, info: ModelInfo, tensors: list[NDArray[Any]], slot: Slot, known: dict[str, int] | None, deadline: float
    ) -> dict[str, NDArray[Any]]:
        """The input copied into the slot; the outputs written by Triton after it, when their sizes are known."""
        shape = (len(tensors), *tensors[0].shape)
        batch: NDArray[Any] = np.ndarray(shape, tensors[0].dtype, buffer=slot.buffer)
        if len(tensors) == 1:
            batch[0] = tensors[0]
        else:
            np.stack(tensors, out=batch)
        if known is not None and self.http is not None:
            return await self._infer_shared_http(info, batch, slot, known, deadline)
        inp = grpcclient.InferInput(info.input_name, list(shape), _datatype(batch))
        inp.set_shared_memory(slot.name, batch.nbytes)
        offsets, _ = _layout(batch.nbytes, info.outputs, known or {})
        requested = []
        for name in info.outputs:
            out = grpcclient.InferRequestedOutput(name)
            if known is not None:
                out.set_shared_memory(slot.name, known[name], offsets[name])
            requested.append(out)
        result = await self._send(info, inp, requested, deadline)
        if known is None:
            return {name: result.as_numpy(name) for name in info.outputs}
        answer = [(name, result.get_output(name)) for name in info.outputs]
        return _views(slot, offsets, [(name, meta.datatype, tuple(meta.shape)) for name, meta in answer])

    async def _infer_shared_http(
        self, info: ModelInfo, batch: NDArray[Any], slot: Slot, known: dict[str, int], deadline: float
    ) -> dict[str, NDArray[Any]]:
        """The same request as JSON over Triton's HTTP endpoint: every tensor is in the slot."""
        assert self.http is not None
        offsets, _ = _layout(batch.nbytes, info.outputs, known)
        outputs = [
            {
                "name": name,
                "parameters": {
                    "shared_memory_region": slot.name,
                    "shared_memory_byte_size": known[name],
                    "shared_memory_offset": offsets[name],
                },
            }
            for name in info.outputs
        ]
        region = {"shared_memory_region": slot.name, "shared_memory_byte_size": batch.nbytes}
        request = {
            "inputs": [
                {
                    "name": info.input_name,
                    "shape": list(batch.shape),
                    "datatype": _datatype(batch),
                    "parameters": region,
                }
            ],
            "outputs": outputs,
        }
        try:
            answer = await self.http.infer(served_name(info), request, self._left(info, deadline))
        except TimeoutError:
            raise GatewayTimeout(f"Inference on '{info.name}' timed out. Try again, or use a smaller `size`.") from None
        except TritonHTTPError as exc:
            status = "UNAVAILABLE" if exc.status in (0, 502, 503) else None
            raise self._refused(info, InferenceServerException(exc.message, status)) from None
        self._last_up = time.monotonic()
        try:
            metas = {out["name"]: (out["datatype"], tuple(out["shape"])) for out in answer["outputs"]}
            return _views(slot, offsets, [(name, *metas[name]) for name in info.outputs])
        except (KeyError, TypeError, ValueError) as exc:
            raise ServiceUnavailable(f"Inference on '{info.name}' gave an unexpected answer ({exc}).", 1) from None

    async def _send(
        self,
        info: ModelInfo,
        inp: grpcclient.InferInput,
        outputs: list[grpcclient.InferRequestedOutput],
        deadline: float,
    ) -> grpcclient.InferResult:
        left = self._left(info, deadline)
        try:
            result = await self.client.infer(served_name(info), [inp], outputs=outputs, client_timeout=left)
        except InferenceServerException as exc:
            raise self._refused(info, exc) from None
        self._last_up = time.monotonic()
        return result

    def _refused(self, info: ModelInfo, exc: InferenceServerException) -> Exception:
        """What to raise for Triton's refusal of an inference, over either transport: a lost shared-memory region is
        retried by `infer`; anything else is an API error, and the model's config is read again next time."""
        message = str(exc.message() or exc)
        if "shared memory" in message.lower():
            return _SharedMemoryLost(message)
        self._models.pop(served_name(info), None)
        return to_gateway_error(exc, info.name)


class _SharedMemoryLost(Exception):
    """Triton refused a request's shared-memory region (it restarted and lost it, or a size no longer fits)."""


def _layout(input_bytes: int, names: tuple[str, ...], output_bytes: dict[str, int]) -> tuple[dict[str, int], int]:
    """Where each output goes in a slot (the input at offset 0, then the outputs whose sizes are known, aligned),
    and the bytes the whole request needs."""
    offsets: dict[str, int] = {}
    end = aligned(input_bytes)
    for name in names:
        if name in output_bytes:
            offsets[name] = end
            end += aligned(output_bytes[name])
    return offsets, end


def _views(slot: Slot, offsets: dict[str, int], outputs: list[tuple[str, str, tuple[int, ...]]]) -> dict[str, Any]:
    """The outputs Triton wrote into the slot, as arrays viewing it (name, Triton datatype, shape each)."""
    views = {}
    for name, datatype, shape in outputs:
        dtype = np.dtype(triton_to_np_dtype(datatype))
        views[name] = np.frombuffer(slot.buffer, dtype, math.prod(shape), offsets[name]).reshape(shape)
    return views


def _datatype(batch: NDArray[Any]) -> str:
    return "UINT8" if batch.dtype == np.uint8 else "FP32"
