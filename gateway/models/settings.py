"""Settings of the export worker, read once from the same GATEWAY_* environment as the gateway's
(`ModelSettings.from_env`). The four the gateway needs as well (the registry file, the models folder, the upload
limit, Triton's admin key) are the gateway's (gateway/settings.py): they are read from the same variables here, with
the gateway's defaults, so both sides always agree on them.

The sandbox's limits are sized from a measured yolov8n export (`python -m bench.upload`, 2 cores): peak address space
3.9 GiB (torch's CUDA build maps about 3.4 GiB of libraries before it does anything; below 4 GiB the import itself
fails), peak resident 1.05 GiB, 9-10 CPU-seconds. The defaults leave twice the address space and ~90 times the CPU
for the largest YOLOv8/YOLO11 checkpoints (an x-scale model has ~25 times the parameters of an n-scale one).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.settings import Settings, check_numbers, env_values

GATEWAY = Settings()  # the defaults of the settings the gateway and the worker share
POSITIVE = frozenset(
    {"max_model_bytes", "export_concurrency", "export_cpu_s", "export_memory_bytes", "export_timeout_s"}
    | {"export_lease_s", "export_attempts", "models_poll_s", "triton_load_timeout_s"}
)


@dataclass(frozen=True)
class ModelSettings:
    models_file: Path = GATEWAY.models_file  # the registry without Redis (GATEWAY_REDIS_URL empty)
    models_dir: Path = GATEWAY.models_dir  # uploads/, staging/, versions/ (on the chart: the shared volume)
    max_model_bytes: int = GATEWAY.max_model_bytes  # an uploaded .pt
    export_concurrency: int = 1  # exports at once per worker; more uploads wait queued (inference keeps its CPUs)
    export_cpu_s: int = 900  # CPU-seconds of one sandboxed step (RLIMIT_CPU; all its threads together)
    export_memory_bytes: int = 8 * 2**30  # address space of one sandboxed step (RLIMIT_AS)
    export_timeout_s: float = 900.0  # wall-clock limit of one sandboxed step; its process group is killed after
    export_lease_s: float = 30.0  # a worker renews its lease every third of this; a dead worker's version is resumed
    export_attempts: int = 2  # claims of one version (the first and one resume) before it fails
    retire_grace_s: float = 60.0  # the replaced version stays loaded this long (> Triton timeout, video budget)
    max_loaded_uploads: int = 8  # uploaded versions loaded in Triton at once; least recently used unloaded; 0: no cap
    models_poll_s: float = 1.0  # how often the worker looks for work and reconciles Triton with the registry
    triton_admin_key: str = field(default=GATEWAY.triton_admin_key, repr=False)  # Triton's restricted repository API
    triton_load_timeout_s: float = 300.0  # one model load in Triton (python backend: its instances start)

    def __post_init__(self) -> None:
        check_numbers(self, POSITIVE)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ModelSettings:
        """From GATEWAY_MODELS_FILE, GATEWAY_MAX_MODEL_BYTES, ...; ValueError naming the variable of a bad value."""
        return cls(**env_values(cls, environ))
