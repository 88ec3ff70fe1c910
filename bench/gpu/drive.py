"""Closed-loop load from several processes against a running gateway or Triton, merged into bench's row format.

One asyncio process tops out near a thousand small requests per second, below what a GPU-backed Triton serves, so
each level splits its concurrency over up to `processes` spawned workers that start together on a shared clock; the
latencies are pooled before percentiles are taken. Each request is exactly bench's: the gateway mode uploads the
1080p JPEG as multipart, the triton mode sends the letterboxed uint8 tensor over gRPC with the asyncio client.
Beside each level: Triton's own counters (average batch, queue and compute time per request), the host's CPU busy
share and the GPU's utilisation, read over the same window.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx

from bench import load


@dataclass(frozen=True)
class Target:
    """Where the load goes and what it sends."""

    mode: str  # "gateway" or "triton"
    model: str
    photo: Path
    gateway_url: str = ""
    api_key: str = ""
    triton_url: str = ""
    size: int = 640


def _share(total: int, parts: int) -> list[int]:
    """`total` concurrency split over at most `parts` workers, as evenly as possible, none empty."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def _run(target: Target, concurrency: int, seconds: float, warmup: int, start_at: float) -> dict[str, Any]:
    import cv2
    import numpy as np
    import tritonclient.grpc.aio as grpcaio

    from bench.load import parse_timing
    from gateway.vision import preprocess

    jpeg = target.photo.read_bytes()
    closers = []
    if target.mode == "gateway":
        limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
        client = httpx.AsyncClient(limits=limits, timeout=120)
        closers.append(client.aclose)
        files = {"image": ("photo.jpg", jpeg, "image/jpeg")}
        url = f"{target.gateway_url}/v1/predict/{target.model}"

        async def call() -> tuple[int, dict[str, float]]:
            r = await client.post(
                url, headers={"x-api-key": target.api_key}, files=files, data={"size": str(target.size)}
            )
            return r.status_code, parse_timing(r.headers.get("server-timing", ""))

    else:
        image = np.asarray(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), np.uint8)
        tensor = preprocess.letterbox(image, target.size, 32, rect=True)[0][None]
        triton = grpcaio.InferenceServerClient(target.triton_url)
        closers.append(triton.close)

        async def call() -> tuple[int, dict[str, float]]:
            inp = grpcaio.InferInput("image", list(tensor.shape), "UINT8")
            inp.set_data_from_numpy(tensor)
            await triton.infer(target.model, [inp])
            return 200, {}

    try:
        await load.closed_loop(call, concurrency, warmup * concurrency, 10)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        run = await load.closed_loop(call, concurrency, 10**9, seconds)
    finally:
        for close in closers:
            await close()
    return {
        "latencies_ms": run.latencies_ms,
        "statuses": dict(run.statuses),
        "stages": run.stages,
        "seconds": run.seconds,
    }


def _worker(target: Target, concurrency: int, seconds: float, warmup: int, start_at: float) -> dict[str, Any]:
    return asyncio.run(_run(target, concurrency, seconds, warmup, start_at))


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


_METRIC = re.compile(r'^(nv_inference_[a-z_]+)\{model="([^"]+)",version="[^"]*"\} ([0-9.eE+-]+)$')


def triton_counters(metrics_url: str, model: str) -> dict[str, float]:
    """Triton's cumulative per-model counters (nv_inference_*) from its Prometheus endpoint."""
    out: dict[str, float] = {}
    if not metrics_url:
        return out
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.HTTPError:
        return out
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m and m.group(2) == model:
            out[m.group(1)] = float(m.group(3))
    return out


def _triton_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    requests, execs = d.get("nv_inference_request_success", 0.0), d.get("nv_inference_exec_count", 0.0)
    if not requests or not execs:
        return {}
    return {
        "average_batch": round(requests / execs, 2),
        "queue_ms_per_request": round(d.get("nv_inference_queue_duration_us", 0.0) / requests / 1000, 3),
        "compute_ms_per_batch": round(d.get("nv_inference_compute_infer_duration_us", 0.0) / requests / 1000, 3),
        "input_ms_per_request": round(d.get("nv_inference_compute_input_duration_us", 0.0) / requests / 1000, 3),
        "output_ms_per_request": round(d.get("nv_inference_compute_output_duration_us", 0.0) / requests / 1000, 3),
    }


class GpuSampler:
    """Mean GPU utilisation and peak memory over a window, sampled with nvidia-smi every half second."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.wait(0.5):
            try:
                util, mem = (
                    subprocess.run(query, capture_output=True, text=True, timeout=5, check=False)
                    .stdout.split("\n")[0]
                    .split(",")
                )
                self.samples.append((float(util), float(mem)))
            except (ValueError, subprocess.SubprocessError, OSError):
                pass

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(6)

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {
            "gpu_util_pct": round(sum(u for u, _ in self.samples) / len(self.samples), 1),
            "gpu_mem_mib": max(m for _, m in self.samples),
        }


class Driver:
    """A pool of load processes, reused across levels."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"))

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)

    def level(
        self, target: Target, concurrency: int, seconds: float, warmup: int = 2, metrics_url: str = ""
    ) -> dict[str, Any]:
        """One closed-loop level: a bench row plus the processes used, CPU/GPU use and Triton's batching counters."""
        shares = _share(concurrency, self.processes)
        start_at = time.time() + 2.5 + 0.005 * concurrency  # after every worker's warm-up, on one clock
        futures = [self.pool.submit(_worker, target, c, seconds, warmup, start_at) for c in shares]
        time.sleep(max(0.0, start_at - time.time()))
        counters, cpu = triton_counters(metrics_url, target.model), _cpu_times()
        with GpuSampler() as gpu:
            parts = [f.result() for f in futures]
        busy, total = (a - b for a, b in zip(_cpu_times(), cpu))
        run = load.Run(seconds=max(p["seconds"] for p in parts))
        for p in parts:
            run.latencies_ms += p["latencies_ms"]
            run.stages += p["stages"]
            for status, n in p["statuses"].items():
                run.statuses[int(status)] += n
        s = run.summary()
        return {
            "concurrency": concurrency,
            **{
                k: s[k]
                for k in (
                    "p50_ms",
                    "p90_ms",
                    "p99_ms",
                    "mean_ms",
                    "stages_ms",
                    "throughput",
                    "requests",
                    "errors",
                    "statuses",
                )
            },
            "throughput_min": s["throughput"],
            "throughput_max": s["throughput"],
            "processes": len(shares),
            "cpu_busy_pct": round(100 * busy / total, 1) if total else None,
            **gpu.summary(),
            "triton": _triton_summary(counters, triton_counters(metrics_url, target.model)),
        }


def parity(
    gateway_url: str, api_key: str, model: str, data: Path, reference: dict[str, Any], size: int = 640
) -> dict[str, Any]:
    """bench's parity: gateway answers against Ultralytics' summaries (computed beforehand by prepare.py)."""
    import cv2

    from bench.parity import assert_matches

    cases, matched, failures = 0, 0, []
    for name, want in reference.items():
        path = data / name
        r = httpx.post(
            f"{gateway_url}/v1/predict/{model}",
            headers={"x-api-key": api_key},
            files={"image": path.read_bytes()},
            data={"size": str(size)},
            timeout=120,
        )
        h, w = cv2.imread(str(path)).shape[:2]
        cases += 1
        try:
            assert r.status_code == 200, f"status {r.status_code}: {r.text[:200]}"
            assert_matches(r.json()["data"], want, (w, h), normalize=False)
            matched += 1
        except AssertionError as exc:
            failures.append(f"{name}: {str(exc)[:200]}")
    return {"cases": cases, "matched": matched, "fraction": matched / cases if cases else 0.0, "failures": failures}
