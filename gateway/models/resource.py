"""An uploaded model as the models API shows it (`GET /v1/models/{id}` and every answer of the models API): its status
resource, described in README.md ("Your own models: the API"). Pure functions of a record: no I/O.

Shown: ids, tasks, class names, states, progress, reasons, sizes and SHA-256 of the versions, times. Never shown: the
file names the uploader chose, where files are kept, or which worker holds a lease (the routes that read this need
no key, like the built-in models' own).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.models.record import ACTIVE, ModelRecord, Version


def iso(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (`2026-12-02T10:11:12Z`), as the keys API writes times."""
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def names_json(v: Version) -> dict[str, str]:
    """The class names by class id, in id order (as a built-in model's card lists them)."""
    return {str(k): v.names[k] for k in sorted(v.names)}


def described(record: ModelRecord) -> Version:
    """The version the model's own status speaks of: the serving one when it is loaded, else the one in progress
    (the oldest: the worker's next), else the serving one (unloaded), else the newest (failed)."""
    serving = record.serving_version
    if serving is not None and serving.status == "ready":
        return serving
    preparing = [v for v in record.versions if v.status == "queued" or v.status in ACTIVE]
    if preparing:
        return preparing[0]
    return serving if serving is not None else record.versions[-1]


def version_json(record: ModelRecord, v: Version) -> dict[str, Any]:
    return {
        "number": v.number,
        "status": v.status,
        "stage": v.stage,
        "progress": round(v.progress, 3),
        "message": v.message,
        "reason": v.reason,
        "serving": v.number == record.serving,
        "created": iso(v.created),
        "updated": iso(v.updated or None),
        "sha256": v.sha256,
        "size": v.size,
        "task": v.task or None,
        "names": names_json(v),
        "imgsz": v.imgsz,
        "half": v.half,
        "timings": dict(v.timings),
        "built_with": dict(v.built_with),
    }


def model_json(record: ModelRecord, versions: bool = True, card: dict[str, Any] | None = None) -> dict[str, Any]:
    """The status resource of an uploaded model; `card`: its serving version's card from Triton (`ModelInfo.public`,
    when it is loaded), whose fields come first, as a built-in model's do."""
    v = described(record)
    status = "deleted" if record.deleted else v.status
    out: dict[str, Any] = {
        "id": record.id,
        "task": v.task or None,
        "names": names_json(v),
        "default_size": v.imgsz,
        **(card or {}),
        "source": "upload",
        "status": status,
        "version": v.number,
        "stage": v.stage,
        "progress": round(v.progress, 3),
        "message": v.message,
        "reason": v.reason,
        "serving": record.serving,
        "created": iso(record.created),
        "updated": iso(record.updated or None),
        "last_used": iso(record.last_used),
    }
    out["id"] = record.id  # the card names the version Triton serves; the model is called by its id
    if versions:
        out["versions"] = [version_json(record, x) for x in record.versions]
    return out


def summary(record: ModelRecord, number: int | None = None) -> str:
    """One sentence for the envelope's `message`: the model's state, or that of version `number` (an upload's)."""
    if record.deleted:
        return f"Model '{record.id}' is deleted."
    v = record.version(number) if number is not None else described(record)
    serving = f"; version {record.serving} serves" if record.serving is not None and record.serving != v.number else ""
    if v.status == "ready" and v.number == record.serving:
        return f"Model '{record.id}' is ready (version {v.number})."
    if v.status == "failed":
        return f"Model '{record.id}' version {v.number} failed during {v.stage}: {v.reason}{serving}."
    doing = "queued for the export worker" if v.status == "queued" else f"{v.status} ({round(v.progress * 100)} %)"
    return f"Model '{record.id}' version {v.number} is {doing}{serving}. GET /v1/models/{record.id} shows its progress."
