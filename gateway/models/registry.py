"""The registry's operations, written once over one primitive each backend provides: an atomic read-modify-write of
one model's record (`_update`). See gateway/models/__init__.py for the state machine and who calls what.

Every operation is a pure function of the record it is given (it may be run more than once when a Redis
transaction is retried), applied through `_update`; a refused operation raises a RegistryError and writes nothing.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Literal

from gateway.models.record import (
    ACTIVE,
    Claim,
    ROLLBACK_FROM,
    SHA256,
    Lease,
    ModelConflict,
    ModelNotFound,
    ModelRecord,
    RegistryError,
    Stage,
    Status,
    Version,
    busy,
    check_model_id,
    claimable,
    existing,
    expected,
    failed,
    leased,
    triton_name,
)

Change = Callable[[ModelRecord | None], ModelRecord | None]
IMGSZ_RANGE = (32, 1280)  # the `size` range requests may ask for (gateway/arguments.py SIZE_RANGE)


def worker_id() -> str:
    """A name for this worker process, unique across hosts and restarts (shown in leases)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Registry(ABC):
    """Models and their versions in the shared state; every method is a coroutine (the gateway calls them from its
    event loop). `clock`: epoch seconds (tests pass their own)."""

    clock: Callable[[], float] = staticmethod(time.time)

    # --- what a backend provides ---------------------------------------------------------------------------------

    @abstractmethod
    async def get(self, model_id: str) -> ModelRecord | None:
        """The model's record as stored now; None when there is none."""

    @abstractmethod
    async def list(self) -> list[ModelRecord]:
        """Every record (deleted ones too, until the worker purges them), by id."""

    @abstractmethod
    async def _update(self, model_id: str, change: Change) -> ModelRecord | None:
        """Apply `change` to the stored record (None: absent) atomically and store its result: a new record, None to
        remove it, or the very record it was given to write nothing. Returns what is stored afterwards. Exceptions
        from `change` propagate and nothing is written."""

    async def close(self) -> None:
        return None

    # --- the gateway's side --------------------------------------------------------------------------------------

    async def add_version(
        self,
        model_id: str,
        *,
        sha256: str,
        size: int,
        filename: str,
        upload: str,
        imgsz: int | None = None,
        half: bool = False,
        expect: Literal["any", "new", "existing"] = "any",
    ) -> tuple[ModelRecord, Version]:
        """Record a new version of `model_id` (the model too, when new) as `queued`; its number is the next one.

        `upload`: where the .pt already is, relative to the models dir (`upload_path`). The file must be complete
        before this call: a worker may claim the version at once. `expect`: see `record.expected` (same write).
        """
        check_model_id(model_id)
        if not SHA256.match(sha256):
            raise RegistryError(f"sha256 must be 64 lowercase hex digits, not {sha256[:80]!r}")
        if size <= 0:
            raise RegistryError("the upload is empty")
        if imgsz is not None and not IMGSZ_RANGE[0] <= imgsz <= IMGSZ_RANGE[1]:
            raise RegistryError(f"imgsz must be from {IMGSZ_RANGE[0]} to {IMGSZ_RANGE[1]}, not {imgsz}")
        added: list[Version] = []

        def change(record: ModelRecord | None) -> ModelRecord:
            t = self.clock()
            if record is not None and record.deleted:
                raise ModelConflict(f"Model '{model_id}' is being deleted; upload it again in a few seconds.")
            expected(record, model_id, expect)
            record = record or ModelRecord(id=model_id, created=t, updated=t)
            number = max((v.number for v in record.versions), default=0) + 1
            version = Version(
                number=number,
                created=t,
                sha256=sha256,
                size=size,
                filename=filename,
                upload=upload,
                imgsz=imgsz,
                half=half,
                triton=triton_name(model_id, number),
                message="waiting for the export worker",
            )
            added[:] = [version]
            return record.with_version(version, t)

        record = await self._update(model_id, change)
        assert record is not None
        return record, record.version(added[0].number)

    async def rollback(self, model_id: str, number: int | None = None) -> tuple[ModelRecord, Version]:
        """Queue `number` (default: the newest earlier version that served and still can) to serve again; the worker
        loads it, checks its answers and flips the alias. ModelConflict when there is nothing to roll back to."""
        chosen: list[int] = []

        def change(record: ModelRecord | None) -> ModelRecord:
            record = existing(record, model_id)
            if number is None:
                below = record.serving or 0
                older = [v for v in record.versions if v.number < below and v.status in ROLLBACK_FROM]
                if not older:
                    raise ModelConflict(
                        f"Model '{model_id}' has no earlier version to roll back to (none verified before version "
                        f"{below})."
                    )
                target = older[-1]
            else:
                target = record.version(number)
                if target.number == record.serving and target.status == "ready":
                    raise ModelConflict(f"Version {number} of model '{model_id}' is already serving.")
                if target.status not in ROLLBACK_FROM:
                    raise ModelConflict(
                        f"Version {number} of model '{model_id}' is {target.status}; only a version that was verified "
                        "and served can serve again."
                    )
            chosen[:] = [target.number]
            t = self.clock()
            queued = replace(
                target,
                status="queued",
                stage="loading",
                rollback=True,
                progress=0.0,
                reason="",
                message="rollback requested: waiting for the export worker to load it",
            )
            return record.with_version(queued, t)

        record = await self._update(model_id, change)
        assert record is not None
        return record, record.version(chosen[0])

    async def delete(self, model_id: str) -> ModelRecord:
        """Mark the model deleted: gateways answer 404 for it at once; the worker unloads its versions, removes its
        files and then the record (`purge`)."""

        def change(record: ModelRecord | None) -> ModelRecord:
            record = existing(record, model_id)
            return record if record.deleted else replace(record, deleted=True, updated=self.clock())

        record = await self._update(model_id, change)
        assert record is not None
        return record

    async def touch(self, model_id: str, when: float | None = None) -> None:
        """Remember a request for the model (LRU); callers write this at most every few seconds per model."""
        t = self.clock() if when is None else when

        def change(record: ModelRecord | None) -> ModelRecord | None:
            if record is None or (record.last_used or 0.0) >= t:
                return record
            return replace(record, last_used=t)

        await self._update(model_id, change)

    async def request_load(self, model_id: str) -> ModelRecord:
        """A request came for a model whose serving version was unloaded (LRU): queue it to be loaded again."""

        def change(record: ModelRecord | None) -> ModelRecord:
            record = existing(record, model_id)
            v = record.serving_version
            if v is None or v.status != "unloaded":
                return record
            queued = replace(v, status="queued", stage="loading", message="requested: waiting to be loaded again")
            return record.with_version(queued, self.clock())

        record = await self._update(model_id, change)
        assert record is not None
        return record

    # --- the worker's side ---------------------------------------------------------------------------------------

    async def claim(
        self, worker: str, lease_s: float, stages: Collection[Stage], max_attempts: int = 2
    ) -> Claim | None:
        """Lease the oldest version waiting for one of `stages`, or one whose worker stopped (its lease expired) during
        one of them; None when there is none. One version per model at a time: a model's next version waits until
        the one before it is done.

        A version whose lease expired is resumed at the stage it was in (every stage starts over from files that
        outlive the worker), unless it was tried `max_attempts` times: then it fails with the reason, so no version
        stays in a stage forever."""
        t = self.clock()
        candidates: list[tuple[float, str, int]] = []
        for record in await self.list():
            if record.deleted or busy(record, t):
                continue
            for v in record.versions:
                if claimable(v, stages, t):
                    candidates.append((v.created, record.id, v.number))
                    break  # the oldest of this model only
        for _, model_id, number in sorted(candidates):
            claimed: list[Version] = []

            def change(record: ModelRecord | None, number: int = number) -> ModelRecord | None:
                claimed.clear()
                t = self.clock()
                if record is None or record.deleted or busy(record, t):
                    return record
                v = record.version(number)
                if not claimable(v, stages, t):
                    return record
                if v.status in ACTIVE and v.attempts >= max_attempts:
                    stopped = v.status
                    why = f"the export worker stopped during {stopped} ({v.attempts} attempts); upload again"
                    return record.with_version(failed(v, stopped, why), t)
                stage: Stage = v.stage if v.status == "queued" else v.status  # type: ignore[assignment]
                timings = dict(v.timings)
                if v.attempts == 0 and v.status == "queued":
                    timings["queued"] = round(t - v.created, 3)
                resumed = v.status in ACTIVE
                taken = replace(
                    v,
                    status=stage,
                    stage=stage,
                    attempts=v.attempts + 1,
                    lease=Lease(worker, t + lease_s),
                    progress=0.0,
                    timings=timings,
                    message=f"{stage} (resumed after the previous worker stopped)" if resumed else stage,
                )
                claimed.append(taken)
                return record.with_version(taken, t)

            stored = await self._update(model_id, change)
            if claimed and stored is not None:
                return Claim(stored, stored.version(number))
        return None

    async def renew(self, model_id: str, number: int, worker: str, lease_s: float) -> ModelRecord:
        """Extend this worker's lease; LeaseLost when it is not this worker's any more (or the model was deleted)."""

        def change(record: ModelRecord | None) -> ModelRecord:
            record, v = leased(record, model_id, number, worker)
            t = self.clock()
            return record.with_version(replace(v, lease=Lease(worker, t + lease_s)), t)

        record = await self._update(model_id, change)
        assert record is not None
        return record

    async def progress(
        self,
        model_id: str,
        number: int,
        worker: str,
        *,
        stage: Stage | None = None,
        progress: float | None = None,
        message: str | None = None,
        timings: dict[str, float] | None = None,
        task: str | None = None,
        names: dict[int, str] | None = None,
        imgsz: int | None = None,
        built_with: dict[str, str] | None = None,
    ) -> ModelRecord:
        """Write what the leaseholder is doing: a new stage (status), the stage's progress 0..1, a message, seconds per
        finished stage, and what the checkpoint turned out to be. LeaseLost when the lease is not this worker's."""

        def change(record: ModelRecord | None) -> ModelRecord:
            record, v = leased(record, model_id, number, worker)
            updates: dict[str, object] = {}
            if stage is not None:
                updates |= {"status": stage, "stage": stage, "progress": 0.0}
            if progress is not None:
                updates["progress"] = min(1.0, max(0.0, progress))
            if message is not None:
                updates["message"] = message
            if timings:
                updates["timings"] = {**v.timings, **timings}
            if task is not None:
                updates["task"] = task
            if names is not None:
                updates["names"] = dict(names)
            if imgsz is not None:
                updates["imgsz"] = imgsz
            if built_with is not None:
                updates["built_with"] = dict(built_with)
            return record.with_version(replace(v, **updates), self.clock())  # type: ignore[arg-type]

        record = await self._update(model_id, change)
        assert record is not None
        return record

    async def fail(self, model_id: str, number: int, worker: str, stage: Stage, reason: str) -> ModelRecord:
        """The leaseholder gives up: `failed` at `stage` with `reason` (a rollback or a reload goes back to what it
        was, with the reason). The alias is not touched: the serving version keeps serving."""

        def change(record: ModelRecord | None) -> ModelRecord:
            record, v = leased(record, model_id, number, worker)
            return record.with_version(failed(v, stage, reason, record.serving), self.clock())

        record = await self._update(model_id, change)
        assert record is not None
        return record

    async def ready(self, model_id: str, number: int, worker: str, grace_s: float) -> ModelRecord:
        """The version is loaded everywhere and answered as its checkpoint does: it serves from now on (the alias flips
        in this one write), and the version that served before is retired `grace_s` from now, once requests that
        resolved the alias before the flip have finished."""

        def change(record: ModelRecord | None) -> ModelRecord:
            record, v = leased(record, model_id, number, worker)
            t = self.clock()
            done = replace(
                v, status="ready", lease=None, progress=1.0, reason="", message="serving", loaded_at=t, rollback=False
            )
            record = record.with_version(done, t)
            for other in record.versions:
                if other.number != number and other.status == "ready" and other.retire_at is None:
                    record = record.with_version(replace(other, retire_at=t + grace_s, message="replaced"), t)
            return replace(record, serving=number)

        record = await self._update(model_id, change)
        assert record is not None
        return record

    async def set_status(
        self, model_id: str, number: int, status: Status, expect: Collection[Status], message: str = ""
    ) -> bool:
        """Move a version that nobody leases from one of `expect` to `status` (the worker's housekeeping: `retired`,
        `unloaded`, `ready` again); False, with nothing written, when it is not in one of them any more."""
        done: list[bool] = []

        def change(record: ModelRecord | None) -> ModelRecord | None:
            done.clear()
            if record is None:
                return None
            try:
                v = record.version(number)
            except ModelNotFound:
                return record
            if v.status not in expect or v.lease is not None:
                return record
            t = self.clock()
            updates: dict[str, object] = {"status": status, "message": message or status}
            if status == "retired":
                updates["retire_at"] = None
            if status == "ready":
                updates["loaded_at"] = t
            done.append(True)
            return record.with_version(replace(v, **updates), t)  # type: ignore[arg-type]

        await self._update(model_id, change)
        return bool(done)

    async def purge(self, model_id: str) -> bool:
        """Remove a deleted model's record (after the worker removed its files); False when it is not deleted."""
        removed: list[bool] = []

        def change(record: ModelRecord | None) -> ModelRecord | None:
            removed.clear()
            if record is None or not record.deleted:
                return record
            removed.append(True)
            return None

        await self._update(model_id, change)
        return bool(removed)
