"""Your own models (issue #27): the registry of uploaded models, shared by gateways and export workers.

No torch and no Ultralytics here: this package is shared state only. The worker that exports, verifies and loads
versions is export/worker.py (`python -m export worker`).

Vocabulary
    model id   what clients call (`/v1/predict/<id>`): 1-64 of [A-Za-z0-9_.-], starting with a letter or digit, no `--`
    version    one uploaded .pt, numbered 1, 2, ... per id, immutable; served by Triton as `<id>--v<N>`
    alias      `serving`: the version number requests for `<id>` go to; it flips in one atomic write

Backends (one key layout each, in their module docstrings)
    FileRegistry   gateway/models/files.py          data/models.json under flock (GATEWAY_MODELS_FILE)
    RedisRegistry  gateway/models/redis_backend.py  yt:model:<id>, yt:models, channel yt:models (GATEWAY_REDIS_URL)
Both implement `Registry` (gateway/models/registry.py): every method is a coroutine, every change one atomic
read-modify-write of one model's record; tests/test_models_registry.py runs the same tests on both.

Record (`ModelRecord`, JSON): id, created, updated, serving (N or null), versions [...], deleted, last_used.
Version (`Version`): number, created, sha256, size, filename, upload (the .pt, relative to GATEWAY_MODELS_DIR), imgsz,
half, status, stage, progress (0..1), message, reason (why it failed, for the uploader to act on), task, names,
triton (its Triton name), lease {worker, until} | null, attempts, timings {stage: seconds}, built_with {python, torch,
torchvision, ultralytics}, retire_at, loaded_at, rollback, updated. Times are epoch seconds.

States of a version

    queued ─claim─▶ checking ─▶ exporting ─▶ verifying ─▶ loading ─▶ ready ──(replaced; retire_at passes)──▶ retired
                      │             │            │            │        │  ▲                                     │
                      └─────────────┴────────────┴────────────┴─▶ failed  └──(LRU: idle)──▶ unloaded           │
    retired / ready / unloaded ──rollback──▶ queued (stage loading) ─▶ loading ─▶ ready  ◀───────────────────┘
    unloaded ──request_load (a request for it)──▶ queued (stage loading) ─▶ loading ─▶ ready

    `stage` says where: for `queued` the stage to start at (checking for an upload; loading for a rollback or a
    reload), for an active status the one running, for `failed` the one that failed (with `reason`). A version whose
    worker stopped (its lease expired) is resumed at the stage it was in by the next claim, and fails after
    GATEWAY_EXPORT_ATTEMPTS claims with "the export worker stopped during <stage> ...": never left in a stage.
    A failed rollback goes back to `retired`, a failed reload to `unloaded`, each with the reason. The alias only
    ever flips to a version that reached `ready` (loaded on every Triton, answers equal to the checkpoint's).

Who writes what
    gateway   add_version (upload: the file is stored first, at `upload_path`), rollback, delete, touch (last use,
              at most every few seconds per model), request_load (a request for an `unloaded` version).
    worker    claim, renew, progress, fail, ready (the flip), set_status (retired, unloaded, ready again), purge.
A gateway resolves `<id>` with `record.serving_name` (the Triton name while the serving version is `ready`) once
per request and keeps that name, so requests in flight finish on the version they started on.

Files (under GATEWAY_MODELS_DIR; the Triton repository is the worker's --repository)
    uploads/<id>/<sha256>.pt     the uploaded checkpoints
    staging/<id>--v<N>/          an exported, not yet loaded version (between the export and loading stages)
    <repository>/<id>--v<N>/     a loaded (or LRU-unloaded) version: config.pbtxt, 1/, source.onnx, reference.*
    versions/<id>--v<N>/         a retired version (a rollback copies it back into the repository)
"""

from __future__ import annotations

from gateway.models.files import FileRegistry
from gateway.models.record import (
    Claim,
    InvalidModelId,
    LeaseLost,
    ModelConflict,
    ModelNotFound,
    ModelRecord,
    RegistryError,
    Status,
    Version,
    check_model_id,
    parse_triton_name,
    triton_name,
    upload_path,
)
from gateway.models.registry import Registry, worker_id
from gateway.models.settings import ModelSettings

__all__ = [
    "Claim",
    "FileRegistry",
    "InvalidModelId",
    "LeaseLost",
    "ModelConflict",
    "ModelNotFound",
    "ModelRecord",
    "ModelSettings",
    "Registry",
    "RegistryError",
    "Status",
    "Version",
    "check_model_id",
    "open_registry",
    "parse_triton_name",
    "triton_name",
    "upload_path",
    "worker_id",
]


def open_registry(settings: ModelSettings, redis_url: str = "", redis_password: str = "") -> Registry:
    """The Redis registry when `redis_url` is set (GATEWAY_REDIS_URL), else the file registry."""
    if redis_url:
        from gateway.models.redis_backend import RedisRegistry

        return RedisRegistry(redis_url, redis_password)
    return FileRegistry(settings.models_file)
