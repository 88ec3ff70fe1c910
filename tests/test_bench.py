"""The benchmark harness runs end to end (--quick) and its numbers are sane. No speed thresholds here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.load


def test_quick_benchmark_runs_and_reports_sane_numbers(tmp_path: Path, repository: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--quick", "--repository", str(repository), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    folder = Path(out.stdout.strip().splitlines()[-1].removeprefix("results: "))
    results = json.loads((folder / "results.json").read_text())
    assert (folder / "results.md").read_text().startswith("# Benchmark results")
    assert (folder / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    env = results["environment"]
    assert env["cores"] and env["cpu"] and env["versions"]["onnxruntime"]
    (model,) = results["models"]
    assert set(model["modes"]) == {"gateway", "triton", "onnxruntime", "ultralytics-server"}
    for mode, rows in model["modes"].items():
        assert [r["concurrency"] for r in rows] == [1, 4]
        for r in rows:
            assert r["errors"] == 0 and r["requests"] > 0, (mode, r)
            assert 0 < r["throughput"] < 10_000 and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"], (mode, r)
    stages = model["modes"]["gateway"][0]["stages_ms"]
    assert {"decode", "letterbox", "triton", "postprocess", "total"} <= set(stages)
    assert model["parity"]["fraction"] == 1.0, model["parity"]
    assert model["open_loop"]["errors"] == 0
    assert model["bytes_sent"]["gateway"] > 0 and model["bytes_sent"]["triton"] > 0
    assert "gateway_vs_onnxruntime_throughput" in results["ratios"]["yolov8n"]
