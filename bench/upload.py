"""Upload-to-ready of one checkpoint through the registry and the export worker, per stage (issue #27).

    python -m bench.upload [--weights .triton/weights-cache/pypi/yolov8n@....pt] [--runs 1]

Starts a Triton on a private repository (explicit model control; one built-in model linked in, as `make serve` has
them), records the checkpoint as version N of the model `bench-upload` in a file registry, runs the export worker
until the version is `ready`, and prints the worker's own timings per stage (queued, checking, exporting, verifying,
loading), the total from the upload to the alias flip, and what each sandboxed step cost (wall, CPU seconds, peak
resident memory), from the worker's log. Everything it starts is stopped by its process id; nothing is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench-upload"
STAGES = ("queued", "checking", "exporting", "verifying", "loading")


def default_weights() -> Path:
    found = sorted((ROOT / ".triton" / "weights-cache" / "pypi").glob("yolov8n@*.pt"))
    if not found:
        raise SystemExit("no yolov8n checkpoint cached: run the trained tests once, or pass --weights")
    return found[0]


def builtin_model() -> Path:
    """A built-in model directory to start Triton with (`make export`'s, else the test suite's fixture)."""
    candidates = [
        ROOT / "model_repository" / "yolov8n",
        *sorted((ROOT / ".triton" / "test-cache").glob("repository-*/yolov8n")),
    ]
    for path in candidates:
        if (path / "config.pbtxt").exists():
            return path
    raise SystemExit("no built-in model to start Triton with: run `make export` (or the tests) first")


class StepLog(logging.Handler):
    """Collects the worker's "sandboxed <job>: ..." lines."""

    PATTERN = re.compile(r"sandboxed (\w+): ([\d.]+) s, ([\d.]+) CPU-s, peak (\d+) MiB resident, (\d+) MiB address")

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = self.PATTERN.search(record.getMessage())
        if found:
            job, wall, cpu, rss, space = found.groups()
            self.steps.append(
                {
                    "job": job,
                    "wall_s": float(wall),
                    "cpu_s": float(cpu),
                    "peak_rss_mib": int(rss),
                    "peak_vm_mib": int(space),
                }
            )


async def one_upload(worker: Any, registry: Any, models_dir: Path, weights: Path) -> dict[str, Any]:
    from gateway.models import upload_path

    data = weights.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    relative = upload_path(MODEL, sha)
    (models_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, models_dir / relative)
    t0 = time.monotonic()
    _, version = await registry.add_version(MODEL, sha256=sha, size=len(data), filename=weights.name, upload=relative)
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    try:
        while True:
            record = await registry.get(MODEL)
            v = record.version(version.number)
            if v.status in ("ready", "failed"):
                break
            if time.monotonic() - t0 > 900:
                raise SystemExit(f"not ready after 900 s: {v}")
            await asyncio.sleep(0.05)
        total = time.monotonic() - t0
    finally:
        stop.set()
        await runner
    if v.status != "ready":
        raise SystemExit(f"the version failed during {v.stage}: {v.reason}")
    return {"version": v.number, "upload_to_ready_s": round(total, 2), **{s: v.timings.get(s) for s in STAGES}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="the .pt to upload (default: cached yolov8n)")
    parser.add_argument("--runs", type=int, default=1, help="uploads, one after the other (each a new version)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from export.triton_control import TritonFleet
    from export.worker import Worker
    from gateway.models import FileRegistry, ModelSettings
    from tritonlocal import launcher

    weights = args.weights or default_weights()
    steps = StepLog()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("export.worker").addHandler(steps)
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        work = Path(tmp)
        repository = work / "repository"
        repository.mkdir()
        (repository / "yolov8n").symlink_to(builtin_model().resolve())
        server = launcher.start(repository, cache=ROOT / ".triton" / "bench-server", log_path=work / "triton.log")
        settings = ModelSettings(models_file=work / "models.json", models_dir=work / "models", models_poll_s=0.2)
        registry = FileRegistry(settings.models_file)
        try:

            async def runs() -> list[dict[str, Any]]:
                fleet = TritonFleet(server.grpc_url)
                worker = Worker(registry, settings, repository, fleet)
                try:
                    return [await one_upload(worker, registry, settings.models_dir, weights) for _ in range(args.runs)]
                finally:
                    await fleet.close()

            results = asyncio.run(runs())
        finally:
            server.stop()
    report = {"weights": weights.name, "runs": results, "sandboxed_steps": steps.steps}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
