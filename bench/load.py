"""A small load generator: closed-loop (fixed concurrency) and open-loop (fixed arrival rate), bounded in count
and time.

Open-loop arrivals are scheduled on a clock, not after the previous answer, so a slow server shows up as latency
instead of silently lowering the offered load (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# One request: returns (status code, extra info such as Server-Timing stages in ms).
Call = Callable[[], Awaitable[tuple[int, dict[str, float]]]]


def parse_timing(header: str) -> dict[str, float]:
    """The gateway's `Server-Timing` header as stage -> ms, plus `json_and_http` (the total less the model-free
    stages)."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    if "total" in out:
        model_free = sum(out.get(k, 0.0) for k in ("decode", "letterbox", "triton", "postprocess"))
        out["json_and_http"] = max(0.0, out["total"] - model_free)
    return out


@dataclass
class Run:
    """What one measured run saw."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    stages: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != 200)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")

        stage_means = {}
        if self.stages:
            keys = set().union(*self.stages)
            stage_means = {k: statistics.fmean(s.get(k, 0.0) for s in self.stages) for k in sorted(keys)}
        return {
            "requests": sum(self.statuses.values()),
            "ok": self.ok,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "seconds": round(self.seconds, 3),
            "throughput": round(self.ok / self.seconds, 3) if self.seconds else 0.0,
            "p50_ms": round(pct(50), 2),
            "p90_ms": round(pct(90), 2),
            "p99_ms": round(pct(99), 2),
            "mean_ms": round(statistics.fmean(lat), 2) if lat else float("nan"),
            "stages_ms": {k: round(v, 3) for k, v in stage_means.items()},
        }


async def _timed(call: Call, run: Run) -> None:
    t = time.perf_counter()
    try:
        status, stages = await call()
    except Exception:  # a transport error is an error like any other non-200: counted, never dropped
        status, stages = 599, {}
    run.statuses[status] += 1
    if status == 200:
        run.latencies_ms.append((time.perf_counter() - t) * 1000)
        if stages:
            run.stages.append(stages)


async def closed_loop(call: Call, concurrency: int, requests: int, seconds: float) -> Run:
    """`concurrency` workers, each sending its next request when the previous answer arrives."""
    run = Run()
    deadline = time.perf_counter() + seconds
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            await _timed(call, run)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.seconds = time.perf_counter() - start
    return run


async def open_loop(call: Call, rate: float, requests: int, seconds: float, max_outstanding: int = 256) -> Run:
    """Requests started at a fixed `rate` per second regardless of answers (bounded outstanding)."""
    run = Run()
    count = min(requests, int(rate * seconds))
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks = [t for t in tasks if not t.done()]
        if len(tasks) >= max_outstanding:
            run.statuses[598] += 1  # generator-side overload: counted as an error
            continue
        tasks.append(asyncio.ensure_future(_timed(call, run)))
    await asyncio.gather(*tasks)
    run.seconds = time.perf_counter() - start
    return run
