"""The model registry's data: a model record, its versions, and the pure transitions between their states.

Both backends (gateway/models/files.py, gateway/models/redis_backend.py) store one JSON document per model
(`ModelRecord.to_json`) and change it only through a function `ModelRecord -> ModelRecord` applied atomically, so
every rule of the state machine lives here, once, and is tested against both backends.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args

Status = Literal["queued", "checking", "exporting", "verifying", "loading", "ready", "failed", "retired", "unloaded"]
Stage = Literal["checking", "exporting", "verifying", "loading"]
STATUSES: tuple[Status, ...] = get_args(Status)
STAGES: tuple[Stage, ...] = get_args(Stage)
# The stages that run the sandboxed exporter (one at a time per worker, GATEWAY_EXPORT_CONCURRENCY); `loading` only
# talks to Triton, so a reload or a rollback never waits behind an export.
EXPORT_STAGES: frozenset[Stage] = frozenset({"checking", "exporting", "verifying"})
# What a version is doing while a worker holds its lease.
ACTIVE: frozenset[Status] = frozenset(STAGES)
# A version that can serve again without an export (rollback): its verified files are in the repository or versions/.
ROLLBACK_FROM: frozenset[Status] = frozenset({"ready", "retired", "unloaded"})

MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
VERSION_SEPARATOR = "--v"  # Triton's name of version N of model `id`: `<id>--v<N>`
TRITON_NAME = re.compile(r"(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})--v(?P<number>[1-9][0-9]{0,8})\Z")
SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class RegistryError(Exception):
    """A registry operation was refused; the message says why and what to do."""


class InvalidModelId(RegistryError):
    pass


class ModelNotFound(RegistryError):
    pass


class ModelConflict(RegistryError):
    """The model's state does not allow the operation now (being deleted, nothing to roll back to, ...)."""


class LeaseLost(RegistryError):
    """The version is no longer leased to this worker (its lease expired and another worker took it over, or the
    model was deleted): the worker must stop working on it and write nothing more."""


def check_model_id(model_id: str) -> str:
    """`model_id`, or InvalidModelId naming the rule it breaks."""
    if not MODEL_ID.match(model_id) or "--" in model_id:
        raise InvalidModelId(
            f"Invalid model id {model_id[:80]!r}: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or "
            "digit, without '--' (reserved for version names)."
        )
    return model_id


def triton_name(model_id: str, number: int) -> str:
    """Triton's (immutable) name of version `number` of `model_id`."""
    return f"{model_id}{VERSION_SEPARATOR}{number}"


def parse_triton_name(name: str) -> tuple[str, int] | None:
    """(model id, version number) of a version's Triton name; None for any other name (a built-in model)."""
    found = TRITON_NAME.match(name)
    if not found or "--" in found["id"]:
        return None
    return found["id"], int(found["number"])


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a version: nobody else works on it until `until` (epoch seconds) passes."""

    worker: str
    until: float


@dataclass(frozen=True)
class Version:
    """One uploaded checkpoint and what became of it. Times are epoch seconds."""

    number: int
    created: float
    sha256: str
    size: int  # bytes of the uploaded .pt
    filename: str  # as the client named it (shown, never used as a path)
    upload: str  # the .pt, relative to the models dir (`uploads/<id>/<sha256>.pt`)
    imgsz: int | None = None  # asked for at upload; None: the size the checkpoint was trained at
    half: bool = False
    status: Status = "queued"
    stage: Stage = "checking"  # queued: the stage to start at; active: the one running; failed: where it failed
    progress: float = 0.0  # of the current stage, 0..1
    message: str = ""  # what is happening, for people
    reason: str = ""  # why it failed (or why a rollback or reload did not happen), for the uploader to act on
    task: str = ""
    names: dict[int, str] = field(default_factory=dict)
    triton: str = ""  # its Triton model name, `<id>--v<N>`
    lease: Lease | None = None
    attempts: int = 0  # claims so far (a claim after an expired lease is an attempt)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, and "queued"
    built_with: dict[str, str] = field(default_factory=dict)  # python, torch, torchvision, ultralytics of the export
    retire_at: float | None = None  # after a replace: when the worker unloads it and moves its files to versions/
    loaded_at: float | None = None  # when it last became loaded in Triton (LRU recency with the record's last_used)
    rollback: bool = False  # queued/loading because of a rollback (a failure then leaves it `retired`, not `failed`)
    updated: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["names"] = {str(k): v for k, v in self.names.items()}
        out["lease"] = None if self.lease is None else {"worker": self.lease.worker, "until": self.lease.until}
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Version:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}  # fields a newer writer added are kept out, not fatal
        values["names"] = {int(k): str(v) for k, v in (raw.get("names") or {}).items()}
        lease = raw.get("lease")
        values["lease"] = Lease(str(lease["worker"]), float(lease["until"])) if lease else None
        return cls(**values)


@dataclass(frozen=True)
class ModelRecord:
    """One uploaded model id: its versions (oldest first) and which one the alias `id` serves."""

    id: str
    created: float
    updated: float = 0.0
    serving: int | None = None  # the alias: the version number requests for `id` go to
    versions: tuple[Version, ...] = ()
    deleted: bool = False  # set by DELETE: answered 404 at once; the worker unloads, removes files, then the record
    last_used: float | None = None  # the last request for it, written by gateways at most every few seconds

    def version(self, number: int) -> Version:
        for v in self.versions:
            if v.number == number:
                return v
        raise ModelNotFound(f"Model '{self.id}' has no version {number}.")

    @property
    def serving_version(self) -> Version | None:
        return None if self.serving is None else self.version(self.serving)

    @property
    def serving_name(self) -> str | None:
        """The Triton name requests for this model go to when its serving version is loaded; else None."""
        v = self.serving_version
        return v.triton if v is not None and v.status == "ready" and not self.deleted else None

    def with_version(self, version: Version, now: float) -> ModelRecord:
        """This record with `version` replacing the one of its number (or appended), stamped `now`."""
        version = replace(version, updated=now)
        kept = [v for v in self.versions if v.number != version.number]
        return replace(self, versions=tuple(sorted([*kept, version], key=lambda v: v.number)), updated=now)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "updated": self.updated,
            "serving": self.serving,
            "versions": [v.to_json() for v in self.versions],
            "deleted": self.deleted,
            "last_used": self.last_used,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ModelRecord:
        return cls(
            id=str(raw["id"]),
            created=float(raw["created"]),
            updated=float(raw.get("updated") or 0.0),
            serving=raw.get("serving"),
            versions=tuple(Version.from_json(v) for v in raw.get("versions", [])),
            deleted=bool(raw.get("deleted", False)),
            last_used=raw.get("last_used"),
        )


def now() -> float:
    return time.time()


def existing(record: ModelRecord | None, model_id: str) -> ModelRecord:
    """The record of a model that exists (not deleted); ModelNotFound otherwise."""
    if record is None or record.deleted:
        raise ModelNotFound(f"Model '{model_id}' not found.")
    return record


def expected(record: ModelRecord | None, model_id: str, expect: Literal["any", "new", "existing"]) -> None:
    """Refuse an upload that is not what the caller meant: "new" (POST) refuses a model with a version that serves or
    is in progress (ModelConflict; one whose every version failed may be uploaded again), "existing" (PUT) one that
    has no record (ModelNotFound)."""
    if expect == "existing" and record is None:
        raise ModelNotFound(f"Model '{model_id}' not found: upload it first (POST /v1/models).")
    if expect == "new" and record is not None and any(v.status != "failed" for v in record.versions):
        raise ModelConflict(
            f"Model '{model_id}' already exists: upload a new version with PUT /v1/models/{model_id}, or choose "
            "another id."
        )


def busy(record: ModelRecord, t: float) -> bool:
    """Whether a worker holds a live lease on one of the model's versions."""
    return any(v.status in ACTIVE and v.lease is not None and v.lease.until > t for v in record.versions)


def claimable(v: Version, stages: Collection[Stage], t: float) -> bool:
    """Whether a worker may take `v` for one of `stages`: waiting for one, or in one with its lease run out."""
    if v.status == "queued":
        return v.stage in stages
    return v.status in ACTIVE and v.status in stages and (v.lease is None or v.lease.until <= t)


def leased(record: ModelRecord | None, model_id: str, number: int, worker: str) -> tuple[ModelRecord, Version]:
    """The record and version `number`, which `worker` must hold the lease of; LeaseLost otherwise."""
    if record is None or record.deleted:
        raise LeaseLost(f"model '{model_id}' was deleted")
    v = record.version(number)
    if v.lease is None or v.lease.worker != worker or v.status not in ACTIVE:
        holder = v.lease.worker if v.lease else "nobody"
        raise LeaseLost(f"version {number} of '{model_id}' is {v.status}, leased by {holder}, not by {worker}")
    return record, v


def failed(v: Version, stage: Status, reason: str, serving: int | None = None) -> Version:
    """`v` after a failure at `stage`: `failed`; a rollback goes back to `retired` and a reload of the serving version
    to `unloaded`, each with the reason (their files are still good)."""
    status: Status = "failed"
    if v.rollback:
        status = "retired"
    elif v.stage == "loading" and v.number == serving and v.loaded_at is not None:
        status = "unloaded"
    return replace(
        v,
        status=status,
        stage=stage if stage != "queued" else v.stage,  # type: ignore[arg-type]
        lease=None,
        reason=reason,
        message=f"{'failed' if status == 'failed' else 'not loaded'} during {stage}",
        rollback=False,
    )


@dataclass(frozen=True)
class Claim:
    """A version a worker now holds the lease of, and the record as it was written by the claim."""

    record: ModelRecord
    version: Version

    @property
    def model_id(self) -> str:
        return self.record.id


def upload_path(model_id: str, sha256: str) -> str:
    """Where an upload is kept, relative to the models dir: named by its content, so the same file uploaded twice is
    stored once, and the name is known before the version number is (the number is drawn by `add_version`)."""
    return f"uploads/{check_model_id(model_id)}/{sha256}.pt"
