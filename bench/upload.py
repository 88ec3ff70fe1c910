"""An uploaded checkpoint's way to serving, measured (issue #27).

    python -m bench.upload [--mode registry|api|replace] [--weights .triton/weights-cache/pypi/yolov8n@....pt]
                           [--runs 1] [--clients 8] [--json out.json]

Each mode starts a Triton on a private repository (explicit model control; one built-in model linked in, as
`make serve` has them) and stops everything it started by its process id; nothing is kept.

- `registry` (default): records the checkpoint as version N of `bench-upload` in a file registry, runs the export
  worker in this process until the version is `ready`, and prints the worker's timings per stage (queued, checking,
  exporting, verifying, loading), the total from the upload to the alias flip, and what each sandboxed step cost
  (wall, CPU seconds, peak resident memory), from the worker's log.
- `api`: the stack `make serve` runs (the gateway and `python -m export worker`, file registry), and the upload
  through the HTTP API: the time to the 202 (the body, then the worker's checks), and **upload to first answer**:
  from the start of `POST /v1/models` to the first 200 of `POST /v1/predict/bench-upload` (polled every 0.25 s).
- `replace`: the same stack, the model uploaded and serving, then `--clients` clients in a closed loop on it while
  `PUT /v1/models/bench-upload` replaces it: the answers by status (the goal: no non-200), and the latency before,
  during (from the PUT to the alias flip) and after, p50 / p99 / max.
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


# --- through the HTTP API (modes api and replace) -----------------------------------------------------------------


def _percentiles(seconds: list[float]) -> dict[str, float | int | None]:
    """count, p50, p99 and max in milliseconds (None: no request)."""
    if not seconds:
        return {"requests": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {"requests": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(ordered[-1] * 1000, 1)}


def _upload(url: str, admin: str, weights: Path, put: bool) -> tuple[float, Any]:
    """POST (or PUT) the checkpoint, streamed from its file: (seconds to the answer, the answer)."""
    import httpx

    t0 = time.monotonic()
    with open(weights, "rb") as f:
        files = {"file": (weights.name, f)}
        headers = {"x-api-key": admin}
        if put:
            answer = httpx.put(f"{url}/v1/models/{MODEL}", headers=headers, files=files, timeout=900)
        else:
            answer = httpx.post(f"{url}/v1/models", headers=headers, files=files, data={"id": MODEL}, timeout=900)
    if answer.status_code != 202:
        raise SystemExit(f"the upload was refused: {answer.status_code} {answer.text[:500]}")
    return time.monotonic() - t0, answer


def _first_answer(url: str, key: str, photo: bytes, since: float) -> float:
    """Seconds from `since` to the first 200 of a prediction of the uploaded model (asked every 0.25 s)."""
    import httpx

    while True:
        answer = httpx.post(f"{url}/v1/predict/{MODEL}", headers={"x-api-key": key}, files={"image": photo}, timeout=60)
        if answer.status_code == 200:
            return time.monotonic() - since
        if answer.status_code not in (503,) or time.monotonic() - since > 900:
            raise SystemExit(f"no answer from the uploaded model: {answer.status_code} {answer.text[:500]}")
        time.sleep(0.25)


def _closed_loop(url: str, key: str, photo: bytes, clients: int, stop: Any) -> list[tuple[float, float, int]]:
    """`clients` threads, each sending the next prediction as soon as the last is answered, until `stop` is set:
    (start, seconds, status) per request (status 0: no answer)."""
    import threading

    import httpx

    results: list[tuple[float, float, int]] = []

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    status = http.post(
                        f"{url}/v1/predict/{MODEL}", headers={"x-api-key": key}, files={"image": photo}
                    ).status_code
                except httpx.HTTPError:
                    status = 0
                results.append((t0, time.monotonic() - t0, status))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(180)
    return results


def through_api(mode: str, weights: Path, runs: int, clients: int) -> dict[str, Any]:
    """The `api` and `replace` modes (module docstring), on the stack `make serve` runs."""
    import threading

    import httpx

    from bench.stack import uvicorn
    from gateway.keys.auth import KeyDraft, create_key
    from tritonlocal import launcher
    from tritonlocal.serve import start_worker, stop_worker
    from ultralytics.utils import ASSETS

    photo = (ASSETS / "bus.jpg").read_bytes()
    out: dict[str, Any] = {"mode": mode, "weights": weights.name}
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        work = Path(tmp)
        repository = work / "repository"
        repository.mkdir()
        (repository / "yolov8n").symlink_to(builtin_model().resolve())
        env = {
            "GATEWAY_MODELS_FILE": str(work / "models.json"),
            "GATEWAY_MODELS_DIR": str(work / "models"),
            "GATEWAY_KEYS_FILE": str(work / "keys.json"),
            "GATEWAY_MODELS_POLL_S": "0.2",
            "GATEWAY_MAX_LOADED_UPLOADS": "0",
        }
        _, admin = create_key(work / "keys.json", KeyDraft("bench-admin", admin=True))
        _, key = create_key(work / "keys.json", KeyDraft("bench"))
        server = launcher.start(repository, cache=ROOT / ".triton" / "bench-server", log_path=work / "triton.log")
        worker = start_worker(repository, server, env)
        try:
            gateway_env = {**launcher.gateway_environment(server), **env}
            with uvicorn("gateway.app:create_app", work, gateway_env, "/healthz", factory=True) as gateway:
                if mode == "api":
                    out["runs"] = []
                    for i in range(runs):
                        t0 = time.monotonic()
                        accepted_s, answer = _upload(gateway.url, admin, weights, put=i > 0)
                        number = answer.json()["data"]["requested_version"]
                        if i > 0:  # a new version: wait for the flip before asking for an answer
                            while httpx.get(f"{gateway.url}/v1/models/{MODEL}").json()["data"]["serving"] != number:
                                time.sleep(0.1)
                        first = _first_answer(gateway.url, key, photo, t0)
                        v = httpx.get(f"{gateway.url}/v1/models/{MODEL}").json()["data"]["versions"][-1]
                        out["runs"].append(
                            {"version": number, "accepted_s": round(accepted_s, 2),
                             "upload_to_first_answer_s": round(first, 2), **{s: v["timings"].get(s) for s in STAGES}}
                        )  # fmt: skip
                    return out
                t0 = time.monotonic()
                _upload(gateway.url, admin, weights, put=False)
                out["first_upload_to_first_answer_s"] = round(_first_answer(gateway.url, key, photo, t0), 2)
                stop = threading.Event()
                results: list[tuple[float, float, int]] = []
                loop = threading.Thread(
                    target=lambda: results.extend(_closed_loop(gateway.url, key, photo, clients, stop))
                )
                loop.start()
                time.sleep(10.0)  # the loop's own latency before the replace
                started = time.monotonic()
                _upload(gateway.url, admin, weights, put=True)
                while httpx.get(f"{gateway.url}/v1/models/{MODEL}").json()["data"]["serving"] != 2:
                    time.sleep(0.1)
                flipped = time.monotonic()
                time.sleep(10.0)
                stop.set()
                loop.join(300)
                statuses: dict[str, int] = {}
                for _, _, status in results:
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                out |= {
                    "clients": clients,
                    "statuses": statuses,
                    "non_200": sum(n for s, n in statuses.items() if s != "200"),
                    "replace_s": round(flipped - started, 2),
                    "before": _percentiles([s for t, s, _ in results if t < started]),
                    "during": _percentiles([s for t, s, _ in results if started <= t <= flipped]),
                    "after": _percentiles([s for t, s, _ in results if t > flipped]),
                }
                return out
        finally:
            stop_worker(worker)
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("registry", "api", "replace"), default="registry")
    parser.add_argument("--weights", type=Path, default=None, help="the .pt to upload (default: cached yolov8n)")
    parser.add_argument("--runs", type=int, default=1, help="uploads, one after the other (each a new version)")
    parser.add_argument("--clients", type=int, default=8, help="replace: clients in the closed loop")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.mode != "registry":
        report = through_api(args.mode, args.weights or default_weights(), args.runs, args.clients)
        print(json.dumps(report, indent=1))
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        return 0
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
