"""Reconcile (each round of the export worker): make every Triton and the files agree with the registry.

Idempotent, and safe with several workers (each change is a registry write that only one of them wins):
- every `ready` version is loaded on every Triton (one that restarted, or joined, is loaded what it lacks; a failed
  load is retried every LOAD_RETRY_S), and no other uploaded version stays loaded;
- a replaced version whose `retire_at` passed is unloaded, `retired`, and moved to versions/;
- a deleted model's versions are unloaded, its files removed, then its record (`purge`);
- beyond GATEWAY_MAX_LOADED_UPLOADS loaded versions, the least recently used serving ones (by the later of their
  model's last request and their own load) are marked `unloaded`, and unloaded LRU_UNLOAD_DELAY_S later, once
  gateways stopped sending to them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from export.places import Places
from export.triton_control import TritonControlError, TritonFleet
from gateway.models import ModelRecord, ModelSettings, Registry, Version, parse_triton_name
from gateway.models.record import ACTIVE, Status

log = logging.getLogger("export.worker")
READY: tuple[Status] = ("ready",)
LRU_UNLOAD_DELAY_S = 3.0  # gateways cache an alias about a second: unload after they stopped sending to it
LOAD_RETRY_S = 30.0  # a Triton that failed to load a ready version is asked again this often


@dataclass
class Reconciler:
    registry: Registry
    settings: ModelSettings
    places: Places
    fleet: TritonFleet
    _pending_unloads: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _load_retry: dict[tuple[str, str], float] = field(default_factory=dict, init=False, repr=False)

    async def reconcile(self) -> None:
        """Make every Triton and the files agree with the registry (idempotent; safe with several workers)."""
        records = await self.registry.list()
        t = self.registry.clock()
        endpoints = await self.fleet.endpoints()
        indexes: dict[str, dict[str, str]] = {}
        for endpoint in endpoints:
            try:
                indexes[endpoint] = await self.fleet.index(endpoint)
            except TritonControlError as exc:
                log.warning("%s", exc)
        known: dict[str, tuple[ModelRecord, Version]] = {}
        for record in records:
            if record.deleted:
                if not any(v.status in ACTIVE and v.lease and v.lease.until > t for v in record.versions):
                    await self._remove_model(record)
                continue
            for v in record.versions:
                known[v.triton] = (record, v)
                if v.status == "ready" and v.retire_at is not None and v.retire_at <= t and v.number != record.serving:
                    await self._retire(record, v)
                    continue
                if v.status == "retired" and self.places.served(v.triton).exists():
                    loaded = any(index.get(v.triton) == "READY" for index in indexes.values())
                    if not loaded:
                        await asyncio.to_thread(self.places.out_of_repository, v.triton, True)
        await self._lru(records, t)
        for endpoint, index in indexes.items():
            for name, state in index.items():
                if parse_triton_name(name) is None:
                    continue  # a built-in model
                entry = known.get(name)
                wanted = entry is not None and entry[1].status == "ready" and name not in self._pending_unloads
                busy = entry is not None and entry[1].status in ACTIVE or name in self._pending_unloads
                if wanted and state != "READY" and self.places.served(name).exists():
                    await self._load_missing(name, endpoint)
                elif not wanted and not busy and state == "READY":
                    log.info("%s: loaded on Triton at %s but not wanted: unloading it", name, endpoint)
                    for problem in await self.fleet.unload(name, [endpoint]):
                        log.warning("%s", problem)
            for name, (_, v) in known.items():
                if v.status == "ready" and name not in index and self.places.served(name).exists():
                    await self._load_missing(name, endpoint)  # the index lists the repository: rare
        now = time.monotonic()
        for name, when in list(self._pending_unloads.items()):
            if when <= now:
                del self._pending_unloads[name]
                entry = known.get(name)
                if entry is not None and entry[1].status == "unloaded":
                    for problem in await self.fleet.unload(name):
                        log.warning("%s", problem)

    async def _load_missing(self, name: str, endpoint: str) -> None:
        """A ready version a Triton does not serve (it restarted or joined): load it there, retrying a failure only
        every LOAD_RETRY_S."""
        if self._load_retry.get((endpoint, name), 0.0) > time.monotonic():
            return
        log.info("%s: not loaded on Triton at %s: loading it", name, endpoint)
        try:
            await self.fleet.load(name, [endpoint])
            self._load_retry.pop((endpoint, name), None)
        except TritonControlError as exc:
            log.warning("%s", exc)
            self._load_retry[(endpoint, name)] = time.monotonic() + LOAD_RETRY_S

    async def _retire(self, record: ModelRecord, v: Version) -> None:
        log.info(
            "%s: replaced %.0f s ago: unloading and moving it to versions/", v.triton, self.settings.retire_grace_s
        )
        for problem in await self.fleet.unload(v.triton):
            log.warning("%s", problem)
        if await self.registry.set_status(record.id, v.number, "retired", expect=READY, message="replaced"):
            await asyncio.to_thread(self.places.out_of_repository, v.triton, True)

    async def _lru(self, records: list[ModelRecord], t: float) -> None:
        cap = self.settings.max_loaded_uploads
        if not cap:
            return
        loaded = []
        for record in records:
            v = record.serving_version
            if not record.deleted and v is not None and v.status == "ready":
                loaded.append((max(record.last_used or 0.0, v.loaded_at or 0.0), record, v))
        for _, record, v in sorted(loaded, key=lambda e: e[0])[: max(0, len(loaded) - cap)]:
            if await self.registry.set_status(
                record.id, v.number, "unloaded", expect=READY, message="unloaded: not used recently"
            ):
                log.info("%s: least recently used of %d loaded uploads (cap %d): unloading", v.triton, len(loaded), cap)
                self._pending_unloads[v.triton] = time.monotonic() + LRU_UNLOAD_DELAY_S

    async def _remove_model(self, record: ModelRecord) -> None:
        log.info("model %s was deleted: unloading its versions and removing its files", record.id)
        for v in record.versions:
            for problem in await self.fleet.unload(v.triton):
                log.warning("%s", problem)
        await asyncio.to_thread(self.places.remove_model, record)
        await self.registry.purge(record.id)
