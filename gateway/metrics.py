"""Prometheus metrics for the gateway (`GET /metrics`).

Label values are bounded: model ids only for models the gateway has seen served by Triton (else "other"),
statuses, tasks, stages and rejection reasons from fixed sets; never keys.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from gateway.observability import RequestRecord

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BYTES_BUCKETS = (1e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 2.5e7)
STAGES = ("fetch", "decode", "letterbox", "triton", "postprocess", "render")
REASONS = {
    401: "auth",
    403: "auth",
    404: "not_found",
    408: "slow_body",
    413: "too_large",
    415: "bad_input",
    422: "bad_input",
    400: "bad_input",
    429: "rate_limit",
    502: "upstream",
    503: "overload",
    504: "timeout",
}
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """One registry per app, so every app (and test) counts on its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("yolo_requests", "Prediction requests.", ["model", "task", "status"], registry=r)
        self.latency = Histogram(
            "yolo_request_duration_seconds",
            "Whole prediction request.",
            ["model", "task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "yolo_stage_duration_seconds", "Time per pipeline stage.", ["stage"], buckets=STAGE_BUCKETS, registry=r
        )
        self.images = Counter("yolo_images", "Images in requests answered 200.", ["model"], registry=r)
        self.inflight = Gauge("yolo_requests_in_flight", "Prediction requests being processed.", registry=r)
        self.budget_used = Gauge(
            "yolo_memory_budget_used_bytes", "Memory reserved by uploads and images in flight.", registry=r
        )
        self.budget_capacity = Gauge("yolo_memory_budget_bytes", "The memory budget for images in flight.", registry=r)
        self.rejections = Counter("yolo_rejections", "Requests refused, by reason.", ["reason"], registry=r)
        self.triton_up = Gauge("yolo_triton_up", "1 if Triton was ready with a model at the last /readyz.", registry=r)
        self.received = Histogram(
            "yolo_request_body_bytes", "Bytes received per prediction request.", buckets=BYTES_BUCKETS, registry=r
        )
        self.triton_requests = Counter(
            "yolo_triton_requests",
            "Inference requests sent to Triton, by how their tensors travelled: shm (Triton's shared memory, "
            "GATEWAY_TRITON_SHM_BYTES) or grpc (inside the messages).",
            ["transport"],
            registry=r,
        )
        self.shared_memory = Gauge(
            "yolo_triton_shared_memory_bytes", "Shared memory registered with Triton for tensors.", registry=r
        )
        self.models: set[str] = set()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # labels() looked up once per label set

    def child(self, metric: Any, *values: str) -> Any:
        """metric.labels(*values), cached: prometheus_client validates and locks on every labels() call, and the
        label sets are few (bounded, see the module's docstring)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def label(self, model: str | None) -> str:
        """The label of a model: its id once Triton has served it, else "other" (so label sets stay bounded)."""
        return model if model is not None and model in self.models else "other"

    def count_triton(self, transport: str) -> None:
        """One inference request sent to Triton, its tensors travelling by `transport` ("shm" or "grpc")."""
        self.child(self.triton_requests, transport).inc()

    def observe(self, record: RequestRecord, status: int, seconds: float) -> None:
        """Record one finished prediction request."""
        label = self.label(record.model)
        task = record.task or "unknown"
        self.child(self.requests, label, task, str(status)).inc()
        if status == 200:
            self.child(self.latency, label, task).observe(seconds)
            self.child(self.images, label).inc(record.images or 0)
        elif status in REASONS:
            self.child(self.rejections, REASONS[status]).inc()
        for stage, ms in record.timings.items():
            if stage in STAGES:
                self.child(self.stage, stage).observe(ms / 1000)
        if record.body_bytes is not None:
            self.received.observe(record.body_bytes)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
