"""What requests share (`Services`, created in the app's lifespan, one per event loop), how a route finds it, and
one admitted prediction request (`Prediction`): what it holds and what it is charged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from gateway.budget import Hold, MemoryBudget, default_budget, memory_limit
from gateway.dialects import Dialect
from gateway.errors import NotFound, ServiceUnavailable
from gateway.keys.auth import KeyEntry
from gateway.keys.ratelimit import KeySlots
from gateway.keys.store import Store
from gateway.metrics import Metrics
from gateway.modelcard import UNTRAINED_WARNING, ModelInfo
from gateway.models import upload
from gateway.models.aliases import Aliases, open_registry
from gateway.observability import RequestRecord
from gateway.sequences import MemorySequences, Sequences, open_sequences
from gateway.settings import Settings
from gateway.triton.client import Triton, VersionInfo
from gateway.vision import videofile
from gateway.workers import Workers

log = logging.getLogger("gateway")
VIDEO_NICE = (
    10  # the video threads' niceness above the process's (a tenth of an image thread's CPU share when both run)
)


@dataclass
class Services:
    """The gateway's long-lived parts, shared by every request (`open_services` creates and closes them)."""

    settings: Settings
    triton: Triton
    store: Store  # keys, rate limits and usage: the keys file or Redis (gateway/keys/store.py)
    workers: Workers  # threads for decode, letterbox and post-processing
    metrics: Metrics
    budget: MemoryBudget
    key_slots: KeySlots  # each key's requests in progress in this process (GATEWAY_MAX_INFLIGHT_PER_KEY)
    inflight: int = 0
    video_workers: Workers | None = None  # threads for video decoding (GATEWAY_VIDEO_WORKERS); None: `workers`
    sequences: Sequences = field(default_factory=MemorySequences)  # tracking across requests: in process or Redis
    models: Aliases | None = None  # uploaded models: the registry and where each id's predictions go (issue #27)

    def check_room(self) -> None:
        """ServiceUnavailable (503) when GATEWAY_MAX_INFLIGHT predictions are being processed."""
        if self.inflight >= self.settings.max_inflight:
            raise ServiceUnavailable("The server is busy (too many requests in flight). Retry shortly.", retry_after=1)

    def enter(self) -> None:
        """Take an in-flight slot (`check_room` first); `leave` gives it back."""
        self.check_room()
        self.inflight += 1
        self.metrics.inflight.inc()

    def leave(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.dec()

    async def model(self, model_id: str) -> ModelInfo:
        """The model a prediction of `model_id` uses, resolved once for the whole request: a built-in model's card,
        or an uploaded model's serving version (`VersionInfo`, called `model_id`); NotFound, ServiceUnavailable."""
        if self.models is None:
            return await self.triton.model(model_id)
        target = await self.models.resolve(model_id)
        try:
            info = await self.triton.model(target.name)
        except NotFound:
            if target.unsure:  # the id may be an upload this process has not seen while the registry is unreachable
                raise ServiceUnavailable("The model registry is unreachable; retry shortly.", 2) from None
            raise
        return VersionInfo.of(info, model_id) if target.uploaded else info


@contextlib.asynccontextmanager
async def open_services(settings: Settings, metrics: Metrics, store: Store) -> AsyncIterator[Services]:
    """The services for one event loop, closed when the block ends; says which served models are untrained."""
    triton = Triton(
        settings.triton_url,
        settings.triton_timeout_s,
        settings.model_cache_s,
        settings.triton_shm_bytes,
        settings.triton_http_url,
        metrics.count_triton,
        admin_key=settings.triton_admin_key,
    )
    if (pool := triton.shm) is not None:
        metrics.shared_memory.set_function(lambda: pool.used_bytes)
    threads = Workers(settings.workers)
    # lower CPU priority: a decoding video takes the CPU the images leave, not the other way round
    video_threads = Workers(settings.video_workers, nice=VIDEO_NICE, name="video")
    if removed := videofile.sweep():
        log.warning("removed %d video file(s) a previous gateway process left in the temporary folder", removed)
    budget = MemoryBudget(
        settings.decode_budget_bytes or default_budget(memory_limit()),
        settings.decode_budget_wait_s,
        settings.max_key_budget_share,
    )
    log.info("memory budget for images in flight: %d MiB", budget.capacity // 2**20)
    metrics.budget_capacity.set(budget.capacity)
    metrics.budget_used.set_function(lambda: budget.used)
    slots = KeySlots(settings.per_key_inflight)
    models = Aliases(open_registry(settings))
    # a partial upload is written to at least every body deadline: older ones are a killed gateway's
    if removed := await asyncio.to_thread(upload.sweep, settings.models_dir, 2 * settings.body_timeout_s + 60):
        log.warning("removed %d partial model upload(s) a stopped gateway left in %s", removed, settings.models_dir)
    services = Services(
        settings, triton, store, threads, metrics, budget, slots, video_workers=video_threads, models=models
    )
    services.sequences = open_sequences(settings)
    await store.start()
    models.start()
    try:
        try:
            for model in await triton.ready_models():
                if model.untrained:
                    log.warning("model %s: %s", model.name, UNTRAINED_WARNING)
        except Exception as exc:  # Triton may still be starting; /readyz reports it
            log.warning("inference server not reachable at start-up (%s): %s", settings.triton_url, exc)
        yield services
    finally:
        await services.sequences.close()
        await models.close()
        await store.close()
        await triton.close()
        video_threads.close()
        threads.close()


def services_of(request: HTTPConnection) -> Services:
    """The services of the app serving `request` (set by its lifespan)."""
    services = request.app.state.services
    assert isinstance(services, Services)
    return services


def finished(metrics: Metrics, store: Store) -> Callable[[RequestRecord, int, float], None]:
    """What to do when a prediction request ends (`RequestContext`): count it in the metrics, and in its key's usage
    under the same model label (only models Triton served: the counters stay bounded)."""

    def count(record: RequestRecord, status: int, seconds: float) -> None:
        metrics.observe(record, status, seconds)
        if record.key_id:
            store.record(record.key_id, metrics.label(record.model), record.images or 0, status, seconds)

    return count


@dataclass
class Prediction:
    """One admitted prediction request: its key, its record, the memory it reserved (`hold`) and everything it holds
    until its answer is sent (`held`, released in reverse order; a streamed answer takes it with it)."""

    services: Services
    entry: KeyEntry
    record: RequestRecord
    hold: Hold
    held: contextlib.AsyncExitStack
    dialect: Dialect  # how it reads the request and shapes the answer (chosen anew once the form is read)
    started: float  # time.perf_counter() when the request arrived

    async def charge(self, extra: int) -> None:
        """Take `extra` more tokens (the request's other images, or a video's other frames); they may put the key in
        debt, since the request was already admitted."""
        if extra <= 0:
            return
        quota = await self.services.store.spend(self.entry, extra, force=True)
        if quota is not None:
            self.record.headers = self.dialect.rate_headers(quota)

    async def charge_frames(self, frames: int) -> None:
        """A video's analysed frames: each costs one token and counts as an image in the key's usage."""
        self.record.images = (self.record.images or 0) + frames
        await self.charge(frames)
