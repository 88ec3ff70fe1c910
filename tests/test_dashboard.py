"""The Grafana dashboard only queries metrics that the gateway and the real Triton actually expose."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import requests

from tests.conftest import ROOT, Gateway
from tritonlocal import launcher

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
FUNCTIONS = {"sum", "by", "rate", "histogram_quantile", "clamp_min", "le", "model", "stage", "status", "reason"}


def _metric_names(expr: str) -> set[str]:
    return {n for n in re.findall(r"[a-z_][a-z0-9_]*", expr) if n not in FUNCTIONS and ("_" in n)}


def test_dashboard_queries_exposed_metrics(
    gateway: Gateway, triton: launcher.TritonServer, images: dict[str, Path]
) -> None:
    assert gateway.predict("yolov8n", files={"image": images["bus"].read_bytes()}).status_code == 200
    assert (
        gateway.predict("yolov8n", files={"image": b"not an image"}).status_code == 415
    )  # labelled series appear once used
    exposed = requests.get(f"{gateway.url}/metrics", timeout=5).text
    with urllib.request.urlopen(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=5) as r:
        exposed += r.read().decode()
    families = {line.split("{")[0].split(" ")[0] for line in exposed.splitlines() if line and not line.startswith("#")}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    used = set().union(*(_metric_names(e) for e in exprs))
    assert any(n.startswith("nv_") for n in used) and any(n.startswith("yolo_") for n in used)
    missing = sorted(n for n in used if n not in families)
    assert not missing, f"dashboard uses metrics nobody exposes: {missing}"
