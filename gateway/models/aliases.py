"""Where a prediction for `<id>` goes (issue #27): a built-in model's own name, or an uploaded model's serving version
(`<id>--v<N>`), read from the registry and cached for ALIAS_CACHE_S.

The cache is dropped at once when the record changes: in Redis mode by the channel `yt:models` (a task listens for
as long as the gateway runs), in file mode when the registry file's stat changes (checked on every look-up: a stat,
no read). Each request resolves the alias once and keeps the name it got, so requests in flight finish on the
version they started on; the worker keeps a replaced version loaded GATEWAY_RETIRE_GRACE_S after the flip.

A request for an uploaded id also tells the registry it was used (at most every TOUCH_EVERY_S per model and process:
the worker's LRU reads it), and one for a version the LRU unloaded asks the worker to load it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import NotFound, ServiceUnavailable
from gateway.models.files import FileRegistry
from gateway.models.record import ACTIVE, ModelRecord, RegistryError, Version, parse_triton_name
from gateway.models.registry import Registry
from gateway.settings import Settings

log = logging.getLogger("gateway")
ALIAS_CACHE_S = 1.0  # how stale an alias may be when no change notice arrived (a lost pub/sub message, say)
TOUCH_EVERY_S = 5.0  # a model's last use is written at most this often per gateway process
RELOAD_EVERY_S = 10.0  # an unloaded version is asked to load again at most this often per gateway process
RETRY_AFTER_S = 5  # what a request for a model being prepared or loaded is told to wait (an export is ~15 s)
MAX_CACHED = 10_000  # ids remembered (answered requests with a valid key only); beyond it the cache starts over
WATCH_RETRY_S = 2.0  # the change listener's pause after Redis failed


@dataclass(frozen=True)
class Target:
    """The Triton model a prediction calls."""

    name: str  # Triton's name: the id itself (a built-in model), or the serving version `<id>--v<N>`
    uploaded: bool  # an uploaded model's version
    unsure: bool = False  # the registry could not be read and nothing was cached: the id may be an upload


@dataclass
class Aliases:
    """The alias cache of one gateway process (one event loop)."""

    registry: Registry
    cache_s: float = ALIAS_CACHE_S
    clock: Callable[[], float] = time.monotonic
    _cache: dict[str, tuple[float, ModelRecord | None]] = field(default_factory=dict, init=False, repr=False)
    _pending: dict[str, asyncio.Future[ModelRecord | None]] = field(default_factory=dict, init=False, repr=False)
    _generation: int = field(default=0, init=False, repr=False)  # bumped whenever cached records are dropped
    _stat: tuple[int, int, int] | None = field(default=None, init=False, repr=False)
    _touched: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _reloads: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set, init=False, repr=False)

    # --- the cache -----------------------------------------------------------------------------------------------

    def forget(self, model_id: str | None = None) -> None:
        """Drop a model's cached record (None: every one), and any look-up of it in progress."""
        self._generation += 1
        if model_id is None:
            self._cache.clear()
            self._pending.clear()
        else:
            self._cache.pop(model_id, None)
            self._pending.pop(model_id, None)

    def _check_file(self) -> None:
        if not isinstance(self.registry, FileRegistry):
            return
        try:
            st = os.stat(self.registry.path)
            stat: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stat = None
        if stat != self._stat:
            self._stat = stat
            self.forget()

    async def record(self, model_id: str) -> ModelRecord | None:
        """The model's record as stored at most `cache_s` ago (None: no upload by that id). RegistryError when the
        registry can't be read."""
        self._check_file()
        hit = self._cache.get(model_id)
        if hit is not None and self.clock() - hit[0] < self.cache_s:
            return hit[1]
        pending = self._pending.get(model_id)
        if pending is None:  # one look-up per id at a time, however many requests wait for it
            pending = asyncio.ensure_future(self._fetch(model_id, self._generation))
            self._pending[model_id] = pending
        return await asyncio.shield(pending)

    async def _fetch(self, model_id: str, generation: int) -> ModelRecord | None:
        try:
            record = await self.registry.get(model_id)
        finally:
            if self._pending.get(model_id) is asyncio.current_task():
                del self._pending[model_id]
        if generation == self._generation:  # not dropped meanwhile: what was read may be kept
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[model_id] = (self.clock(), record)
        return record

    # --- a prediction's target -----------------------------------------------------------------------------------

    async def resolve(self, model_id: str) -> Target:
        """The Triton model a prediction of `model_id` calls; NotFound or ServiceUnavailable (with Retry-After) for
        an uploaded model that can't answer now, saying why (README, "Predicting with an uploaded model")."""
        if parse_triton_name(model_id) is not None:
            base = model_id.rsplit("--v", 1)[0]
            raise NotFound(
                f"Model '{model_id[:80]}' not found: versions of a model are not called by name. Call '{base}' "
                f"(GET /v1/models/{base} shows which version serves)."
            )
        try:
            record = await self.record(model_id)
        except RegistryError as exc:
            stale = self._cache.get(model_id)
            if stale is None:
                log.warning("model registry unreachable; '%s' tried as a built-in model: %s", model_id[:64], exc)
                return Target(model_id, uploaded=False, unsure=True)
            record = stale[1]  # what this process last knew: better than refusing while the registry blinks
        if record is None:
            return Target(model_id, uploaded=False)
        return Target(self._serving(record), uploaded=True)

    def _serving(self, record: ModelRecord) -> str:
        model_id = record.id
        if record.deleted:
            raise NotFound(f"Model '{model_id}' not found (it was deleted). GET /v1/models lists the models.")
        name = record.serving_name
        if name is not None:
            self._touch(model_id)
            return name
        serving = record.serving_version
        if serving is not None:  # it served, and is not loaded now: the LRU unloaded it
            if serving.status == "unloaded":
                self._reload(model_id)
            raise ServiceUnavailable(
                f"Model '{model_id}' was unloaded (not used recently) and is being loaded again; retry in a few "
                "seconds.",
                RETRY_AFTER_S,
            )
        preparing = [v for v in record.versions if v.status == "queued" or v.status in ACTIVE]
        if preparing:
            raise ServiceUnavailable(
                f"Model '{model_id}' is being prepared: {_doing(preparing[0])}. Retry in a few seconds; "
                f"GET /v1/models/{model_id} shows its progress.",
                RETRY_AFTER_S,
            )
        last = record.versions[-1]
        raise NotFound(
            f"Model '{model_id}' has no version that can serve: version {last.number} failed during {last.stage}: "
            f"{last.reason or last.message}. Upload a new version with PUT /v1/models/{model_id}."
        )

    # --- what requests tell the registry -------------------------------------------------------------------------

    def _touch(self, model_id: str) -> None:
        now = self.clock()
        if now - self._touched.get(model_id, -TOUCH_EVERY_S) >= TOUCH_EVERY_S:
            self._touched[model_id] = now
            self._spawn(self.registry.touch(model_id), f"the last use of '{model_id}'")

    def _reload(self, model_id: str) -> None:
        now = self.clock()
        if now - self._reloads.get(model_id, -RELOAD_EVERY_S) >= RELOAD_EVERY_S:
            self._reloads[model_id] = now
            self._spawn(self.registry.request_load(model_id), f"a reload of '{model_id}'")

    def _spawn(self, work: Any, what: str) -> None:
        """Run a registry write beside the request (it never waits for it); failures are logged."""

        async def run() -> None:
            try:
                await work
            except RegistryError as exc:
                log.warning("could not record %s in the model registry: %s", what, exc)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the change listener (Redis) -----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen for changes when the registry publishes them (Redis), for as long as the gateway runs."""
        changes = getattr(self.registry, "changes", None)
        if changes is not None:
            task = asyncio.ensure_future(self._listen(changes))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _listen(self, changes: Callable[[], Any]) -> None:
        while True:
            try:
                async for model_id in changes():
                    self.forget(model_id)
            except Exception as exc:  # Redis down or restarted: the cache's short life covers the gap
                log.warning("model registry change listener: %s; listening again in %g s", exc, WATCH_RETRY_S)
            self.forget()  # changes may have been missed while not subscribed
            await asyncio.sleep(WATCH_RETRY_S)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.registry.close()


def open_registry(settings: Settings) -> Registry:
    """The gateway's registry: in Redis, beside the keys, when GATEWAY_REDIS_URL is set (each call bounded by
    GATEWAY_REDIS_TIMEOUT_S, as every Redis call in the request path), else GATEWAY_MODELS_FILE."""
    if settings.redis_url:
        from gateway.models.redis_backend import RedisRegistry

        return RedisRegistry(settings.redis_url, settings.redis_password, timeout_s=settings.redis_timeout_s)
    return FileRegistry(settings.models_file)


def _doing(v: Version) -> str:
    """'version 1 is exporting (40 %)'."""
    if v.status == "queued":
        return f"version {v.number} is queued for the export worker"
    return f"version {v.number} is {v.status} ({round(v.progress * 100)} %)"
