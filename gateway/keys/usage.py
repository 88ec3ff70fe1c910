"""Usage counted per key, day and model: what one finished request adds, the book a process keeps until it is
stored (in memory for the keys file, flushed to Redis in Redis mode), and the rows the admin API and CLI show."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from gateway.metrics import LATENCY_BUCKETS

BUCKETS_MS = tuple(round(b * 1000) for b in LATENCY_BUCKETS)  # latency histogram bounds per key, model and day


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def bucket_of(seconds: float) -> str:
    """The histogram field a latency falls in: the smallest bound >= it, in ms ("inf" past the last)."""
    ms = seconds * 1000
    for bound in BUCKETS_MS:
        if ms <= bound:
            return str(bound)
    return "inf"


def usage_fields(images: int, status: int, seconds: float) -> dict[str, int]:
    """The counters one request adds: requests, images (answered 200), errors by status, latency bucket (200s)."""
    if status == 200:
        return {"requests": 1, "images": images, f"lat:{bucket_of(seconds)}": 1}
    return {"requests": 1, f"status:{status}": 1}


def usage_rows(counters: dict[tuple[str, str], dict[str, int]]) -> list[dict[str, Any]]:
    """(day, model) -> counters  →  the rows the admin API and CLI show, newest day first."""
    rows = []
    for (day, model), c in sorted(counters.items(), key=lambda kv: (kv[0][0], kv[0][1]), reverse=True):
        buckets = {k.removeprefix("lat:"): v for k, v in c.items() if k.startswith("lat:")}
        ordered = [(str(b), buckets.get(str(b), 0)) for b in BUCKETS_MS] + [("inf", buckets.get("inf", 0))]
        rows.append(
            {
                "day": day,
                "model": model,
                "requests": c.get("requests", 0),
                "images": c.get("images", 0),
                "errors": {k.removeprefix("status:"): v for k, v in sorted(c.items()) if k.startswith("status:")},
                "latency_ms": {
                    "buckets": {b: n for b, n in ordered if n},
                    "p50": _quantile(ordered, 0.5),
                    "p95": _quantile(ordered, 0.95),
                },
            }
        )
    return rows


def _quantile(ordered: list[tuple[str, int]], q: float) -> float | None:
    """Upper bound (ms) of the bucket holding the q-quantile; None without samples (inf: past the last bound)."""
    total = sum(n for _, n in ordered)
    if not total:
        return None
    seen = 0
    for bound, n in ordered:
        seen += n
        if seen >= q * total:
            return float(bound) if bound != "inf" else float("inf")
    return float("inf")


@dataclass
class UsageBook:
    """Usage counters kept in the process: (key id, day, model) -> counter -> value, and last use per key."""

    counters: dict[tuple[str, str, str], dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    last_used: dict[str, str] = field(default_factory=dict)

    def add(self, key_id: str, model: str, images: int, status: int, seconds: float) -> None:
        row = self.counters[(key_id, today(), model[:64] or "-")]
        for name, value in usage_fields(images, status, seconds).items():
            row[name] = row.get(name, 0) + value
        self.last_used[key_id] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def merge(self, other: UsageBook) -> None:
        """Add `other`'s counts back (a flush that failed)."""
        for where, row in other.counters.items():
            mine = self.counters[where]
            for name, value in row.items():
                mine[name] = mine.get(name, 0) + value
        for key_id, when in other.last_used.items():
            self.last_used.setdefault(key_id, when)

    def rows(self, key_id: str, days: int) -> list[dict[str, Any]]:
        keep = set(last_days(days))
        return usage_rows({(d, m): c for (k, d, m), c in self.counters.items() if k == key_id and d in keep})


def last_days(days: int) -> list[str]:
    now = time.time()
    return [time.strftime("%Y-%m-%d", time.gmtime(now - 86400 * i)) for i in range(max(1, days))]
