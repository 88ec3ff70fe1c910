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
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    folder = Path(out.stdout.strip().splitlines()[-1].removeprefix("results: "))
    results = json.loads((folder / "results.json").read_text())
    assert (folder / "results.md").read_text().startswith("# Benchmark results")
    assert (folder / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    env = results["environment"]
    assert env["cores"] and env["cpu"] and env["versions"]["onnxruntime"]
    (model,) = results["models"]
    assert set(model["modes"]) == {"gateway", "triton", "onnxruntime", "ultralytics-server", "ultralytics-triton"}
    for mode, rows in model["modes"].items():
        assert [r["concurrency"] for r in rows] == [1, 4]
        for r in rows:
            assert r["errors"] == 0 and r["requests"] > 0, (mode, r)
            assert 0 < r["throughput"] < 10_000 and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"], (mode, r)
    stages = model["modes"]["gateway"][0]["stages_ms"]
    assert {"decode", "letterbox", "triton", "postprocess", "total"} <= set(stages)
    assert model["parity"]["fraction"] == 1.0, model["parity"]
    # Ultralytics' own Triton client, served the plain export from the same Triton, answers like Ultralytics too
    assert model["parity_ultralytics_triton"]["fraction"] == 1.0, model["parity_ultralytics_triton"]
    assert "gateway_vs_ultralytics_triton_throughput_c4" in results["ratios"]["yolov8n"]
    assert model["open_loop"]["errors"] == 0
    assert model["bytes_sent"]["gateway"] > 0 and model["bytes_sent"]["triton"] > 0
    assert "gateway_vs_onnxruntime_throughput" in results["ratios"]["yolov8n"]
    # CPU accounting: every role burnt some CPU, and no level burnt more than the cores could give it
    expected_roles = {"gateway": {"gateway", "triton", "harness"}, "triton": {"triton", "harness"},
                      "onnxruntime": {"harness"}, "ultralytics-server": {"ultralytics-server", "harness"},
                      "ultralytics-triton": {"ultralytics-triton", "triton", "harness"}}  # fmt: skip
    for mode, rows in model["modes"].items():
        for r in rows:
            assert set(r["cpu_ms"]) == expected_roles[mode], (mode, r)
            assert all(v > 0 for v in r["cpu_ms"].values()), (mode, r)
            assert sum(r["cpu_ms"].values()) <= env["cores"] * 1000 / r["throughput_min"] * 1.2, (mode, r)
    assert model["modes"]["gateway"][0]["cpu_ms"]["triton"] > model["modes"]["gateway"][0]["cpu_ms"]["gateway"] * 0.5
    assert results["ratios"]["yolov8n"]["gateway_process_cpu_ms_per_request"]["value"] > 0
    assert "CPU time per request" in (folder / "results.md").read_text()


def test_cost_reports_cpu_per_image_split_into_stages_and_fixed(tmp_path: Path, repository: Path) -> None:
    """`python -m bench cost`: per transport, upload and model, the gateway's CPU per image from /proc, its stages,
    the fixed rest and its threads; Triton's CPU beside in-process ONNX Runtime on the served graph."""
    command = [sys.executable, "-m", "bench", "cost", "--models", "yolov8n-pose", "--sizes", "360p", "--requests", "20"]
    command += ["--warmup", "2", "--repository", str(repository), "--out", str(tmp_path)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = Path(out.stdout.strip().splitlines()[-1].removeprefix("results: "))
    report = json.loads((folder / "cost.json").read_text())
    rows = {row["transport"]: row for row in report["rows"]}
    assert set(rows) == {"shm", "grpc"}
    for row in rows.values():
        assert row["upload"] == "640x360 JPEG" and row["requests"] == 20
        # /proc counts in 10 ms ticks: a thread that burnt less than one over the run is left out of `threads_ms`
        assert row["cpu_ms"] > 0 and row["triton_cpu_ms"] > 0 and sum(row["threads_ms"].values()) > 0
        assert all(v > 0 for v in row["stages_ms"].values())
        assert (
            row["fixed_ms"] == round(row["cpu_ms"] - sum(row["stages_ms"].values()), 2)
            or abs(row["fixed_ms"] - (row["cpu_ms"] - sum(row["stages_ms"].values()))) < 0.05
        )
    (engine,) = report["in_process"]
    assert engine["shape"] == [384, 640, 3] and engine["cpu_ms"] > 0
    assert "gateway cores per 1,000 img/s" in out.stdout and "Triton CPU / request" in out.stdout


def test_cpu_accounting_counts_a_process_tree() -> None:
    """A child that burns about 0.4 s of CPU is counted as such, and in its parent's tree but not the parent alone."""
    import os

    from bench import cpu

    script = (
        "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
        "print('done', flush=True)\ninput()"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        me = os.getpid()
        assert child.pid in cpu.tree(me)
        child_s = cpu.seconds(child.pid)
        assert 0.35 <= child_s <= 1.0, child_s
        with_children, alone = cpu.seconds(me), cpu.seconds(me, children=False)  # other children may add to it
        assert with_children - alone >= child_s - 0.02, (with_children, alone, child_s)
        assert set(cpu.snapshot({"child": (child.pid, True), "me": (me, False)})) == {"child", "me"}
        assert cpu.per_request_ms({"child": 0.5}, 10) == {"child": 50.0}
    finally:
        child.kill()
        child.wait()


# perf_analyzer 2.51's -f CSV for one level (microseconds), as written by a run of the perf-analyzer mode here.
PERF_ANALYZER_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
    "Avg latency,request/response,response wait\n"
    "2,5.12925,146,0,64361,320,309112,3159,3,343849,529555,695794,1074609,375736,149,379577\n"
)


def test_perf_analyzer_csv_becomes_a_result_row_in_milliseconds_with_the_server_split() -> None:
    from bench import perf_analyzer

    parsed = perf_analyzer.parse_csv(PERF_ANALYZER_CSV)
    assert list(parsed) == [2]
    summary = parsed[2]
    got = (summary["throughput"], summary["p50_ms"], summary["p90_ms"], summary["p99_ms"], summary["mean_ms"])
    assert got == pytest.approx((5.129, 343.849, 529.555, 1074.609, 375.736), abs=0.01)
    assert summary["stages_ms"]["server_queue"] == 64.361 and summary["stages_ms"]["server_compute_infer"] == 309.112
    assert set(summary["stages_ms"]) == set(perf_analyzer.STAGES.values())


def test_perf_analyzer_mode_measures_bare_triton_with_the_prepared_tensor(tmp_path: Path, repository: Path) -> None:
    from bench import perf_analyzer

    try:
        perf_analyzer.install()
    except perf_analyzer.ToolError as exc:
        pytest.skip(
            f"perf_analyzer (tritonclient 2.51.0 wheel, libb64-0d, CUDA 12 runtime) cannot be installed here: {exc}"
        )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--models",
            "yolov8n",
            "--modes",
            "perf-analyzer",
            "--concurrency",
            "1,2",
            "--seconds",
            "3",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--repository",
            str(repository),
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    folder = Path(out.stdout.strip().splitlines()[-1].removeprefix("results: "))
    results = json.loads((folder / "results.json").read_text())
    assert results["environment"]["versions"]["perf_analyzer"].startswith("2.51.0")
    (model,) = results["models"]
    rows = model["modes"]["perf-analyzer"]
    assert [r["concurrency"] for r in rows] == [1, 2]
    for r in rows:
        assert r["errors"] == 0 and r["requests"] > 0, r
        assert 0 < r["throughput"] < 10_000 and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"], r
        assert r["stages_ms"]["server_compute_infer"] > 0, r
    # The tensor the gateway would send for the 1080p photo at size 640 (rect letterbox: 384x640x3), byte for byte.
    sent = (folder / "perf-analyzer-yolov8n" / "input" / "image").read_bytes()
    assert len(sent) == model["bytes_sent"]["perf-analyzer"] == 384 * 640 * 3
    assert "Server Queue" in (folder / "results.md").read_text()
