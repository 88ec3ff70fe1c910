"""GPU benchmark: Triton (python backend, onnx2torch on CUDA) + a multi-worker gateway, measured with bench's calls.

    python -m bench.gpu --repository .gpu/repo --data .gpu/data --out OUT [--models yolov8n]
        [--triton-levels 1,8,32,64,128,256] [--gateway-levels 1,8,32,64,128,256] [--seconds 8]

Starts tritonserver on the repository (tritonlocal.launcher, loopback) and `uvicorn gateway.app:create_app` with
--gateway-workers processes, then for each model: bare Triton (prepared tensor, async gRPC), the gateway (1080p JPEG
upload), parity of the FP16 and FP32 models with Ultralytics, and bare Triton on the FP32 model. Results are written
after every level (results.json), then results.md and chart.png, in bench's format plus CPU/GPU use and batching.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.gpu.drive import Driver, Target, parity
from bench.models import ROOT
from tritonlocal import launcher


def log(message: str) -> None:
    print(f"[bench.gpu {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "no GPU"
    except (OSError, subprocess.SubprocessError):
        return "no GPU"


def start_triton(repository: Path, work: Path, timeout: float, environment: dict[str, Any]) -> launcher.TritonServer:
    """tritonserver on `repository`; if it cannot start the KIND_GPU instances, again with them as KIND_CPU."""
    # Batches of up to 64 images of 737 kB cross to each stub through shared memory: start it large, not at 1 MB.
    shm = [
        "--backend-config=python,shm-default-byte-size=67108864",
        "--backend-config=python,shm-growth-byte-size=16777216",
    ]

    def start() -> launcher.TritonServer:
        return launcher.start(
            repository, cache=work / "triton", log_path=work / "tritonserver.log", timeout=timeout, extra_args=shm
        )

    environment["instance_kind"] = "KIND_GPU"
    try:
        return start()
    except launcher.TritonStartError as exc:
        first = str(exc)
    # The placement is Triton's bookkeeping only: model.py still runs on torch's CUDA device when there is one.
    # One retry as KIND_CPU, so a GPU host whose tritonserver cannot place GPU instances still gets measured.
    log(f"tritonserver failed with KIND_GPU instances; retrying as KIND_CPU:\n{first[-1500:]}")
    (work / "tritonserver-kind-gpu.log").write_text(first)
    for config in repository.glob("*/config.pbtxt"):
        config.write_text(config.read_text().replace("kind: KIND_GPU", "kind: KIND_CPU"))
    environment["instance_kind"] = "KIND_CPU (tritonserver failed with KIND_GPU: " + first.splitlines()[0][:200] + ")"
    return start()


def start_gateway(
    triton_grpc: str, work: Path, workers: int, threads: int, inflight: int
) -> tuple[subprocess.Popen[bytes], str, str]:
    """(process, url, key): uvicorn with `workers` gateway processes on a free loopback port, once /readyz is 200."""
    from gateway.keys.auth import KeyDraft, create_key

    keys = work / "keys.json"
    _, key = create_key(keys, KeyDraft("bench-gpu"))
    port = launcher.free_port()
    env = {
        **os.environ,
        "GATEWAY_TRITON_URL": triton_grpc,
        "GATEWAY_KEYS_FILE": str(keys),
        "GATEWAY_LETTERBOX": "rect",
        "GATEWAY_WORKERS": str(threads),
        "GATEWAY_MAX_INFLIGHT": str(inflight),
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "gateway.app:create_app",
        "--factory",
        "--workers",
        str(workers),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]
    with open(work / "gateway.log", "wb") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{(work / 'gateway.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url, key
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.terminate()
    raise RuntimeError(f"gateway not ready in 90 s:\n{(work / 'gateway.log').read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def headline(model: dict[str, Any]) -> dict[str, Any]:
    """The issue's numbers: best gateway img/s; bare Triton at the same concurrency; p99 ratio at that load."""
    gw, tr = model["modes"].get("gateway", []), model["modes"].get("triton", [])
    out: dict[str, Any] = {}
    if tr:
        best_tr = max(tr, key=lambda r: r["throughput"])
        out["triton_best"] = {k: best_tr[k] for k in ("concurrency", "throughput", "p50_ms", "p99_ms")}
    if gw:
        best = max(gw, key=lambda r: r["throughput"])
        out["gateway_best"] = {k: best[k] for k in ("concurrency", "throughput", "p50_ms", "p99_ms")}
        same = next((r for r in tr if r["concurrency"] == best["concurrency"]), None)
        if same:
            out["triton_at_same_concurrency"] = {k: same[k] for k in ("concurrency", "throughput", "p50_ms", "p99_ms")}
            out["p99_gateway_over_triton"] = round(best["p99_ms"] / same["p99_ms"], 2) if same["p99_ms"] else None
    return out


def utilisation_table(results: dict[str, Any]) -> str:
    lines = ["## Host and Triton during each level", ""]
    for m in results["models"]:
        lines += [
            f"### {m['model']}",
            "",
            "| mode | conc. | load procs | CPU busy % | GPU util % | GPU MiB | avg batch | queue ms/req "
            "| compute ms/batch |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, rows in m["modes"].items():
            for r in rows:
                t = r.get("triton", {})
                lines.append(
                    f"| {mode} | {r['concurrency']} | {r.get('processes', '')} | {r.get('cpu_busy_pct', '')} "
                    f"| {r.get('gpu_util_pct', '')} | {r.get('gpu_mem_mib', '')} | {t.get('average_batch', '')} "
                    f"| {t.get('queue_ms_per_request', '')} | {t.get('compute_ms_per_batch', '')} |"
                )
        lines += ["", "Headline: `" + json.dumps(m.get("headline", {})) + "`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument(
        "--data", type=Path, required=True, help="prepare.py's data folder: photos and Ultralytics references"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/bench-gpu"), help="logs and caches (large; tails are copied to --out)"
    )
    parser.add_argument("--models", default="yolov8n")
    parser.add_argument("--triton-levels", default="1,8,32,64,128,256")
    parser.add_argument("--gateway-levels", default="1,8,32,64,128,256")
    parser.add_argument("--fp32-levels", default="64", help="bare-Triton levels for the FP32 model (empty: none)")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--processes", type=int, default=4, help="load-generator processes per level")
    parser.add_argument("--gateway-workers", type=int, default=8, help="uvicorn worker processes")
    parser.add_argument(
        "--gateway-threads", type=int, default=3, help="GATEWAY_WORKERS: decode/post-process threads per process"
    )
    parser.add_argument("--gateway-inflight", type=int, default=256, help="GATEWAY_MAX_INFLIGHT per process")
    parser.add_argument("--triton-timeout", type=float, default=240)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops Triton and the gateway below

    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    card = gpu_name()
    results: dict[str, Any] = {
        "environment": {
            "cpu": next(
                (
                    x.split(":", 1)[1].strip()
                    for x in Path("/proc/cpuinfo").read_text().splitlines()
                    if x.startswith("model name")
                ),
                platform.processor(),
            ),
            "cores": os.cpu_count(),
            "gpu": card,
            "python": platform.python_version(),
            "versions": versions(),
            "target": args.label
            or f"{card.split(',')[0]}: python backend, onnx2torch on CUDA (FP16 autocast; -fp32: IEEE fp32), "
            "dynamic batching",
            "gateway_url": "local",
            "triton_url": "local",
            "letterbox": "rect",
            "size": 640,
            "input": "1920x1080 JPEG (bus.jpg on a 1080p canvas)",
            "command": " ".join(["python -m bench.gpu", *sys.argv[1:]]),
            "gateway_processes": args.gateway_workers,
            "gateway_threads": args.gateway_threads,
            "load_processes": args.processes,
        },
        "models": [],
    }
    started = time.perf_counter()

    def save() -> None:
        results["environment"]["wall_seconds"] = round(time.perf_counter() - started, 1)
        results["ratios"] = report.ratios(results)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))

    log(f"GPU: {card}; starting tritonserver on {args.repository}")
    triton = start_triton(args.repository, args.work, args.triton_timeout, results["environment"])
    results["environment"]["triton_ready_seconds"] = round(time.perf_counter() - started, 1)
    log(
        f"triton ready after {results['environment']['triton_ready_seconds']} s; "
        f"starting {args.gateway_workers} gateway processes"
    )
    gateway = driver = None
    try:
        gateway, url, key = start_gateway(
            triton.grpc_url, args.work, args.gateway_workers, args.gateway_threads, args.gateway_inflight
        )
        metrics = f"http://127.0.0.1:{triton.metrics_port}/metrics"
        driver = Driver(args.processes)
        photo = args.data / "photo-1080p.jpg"
        for model in args.models.split(","):
            entry: dict[str, Any] = {
                "model": model,
                "modes": {},
                "bytes_sent": {"gateway": photo.stat().st_size, "triton": 640 * 384 * 3, "triton-fp32": 640 * 384 * 3},
            }
            results["models"].append(entry)
            plan = [
                ("triton", model, args.triton_levels),
                ("gateway", model, args.gateway_levels),
                ("triton-fp32", f"{model}-fp32", args.fp32_levels),
            ]
            for mode, served, levels in plan:
                target = Target(mode.split("-")[0], served, photo, url, key, triton.grpc_url)
                for c in (int(v) for v in levels.split(",") if v):
                    row = driver.level(target, c, args.seconds, metrics_url=metrics)
                    entry["modes"].setdefault(mode, []).append(row)
                    t = row["triton"]
                    log(
                        f"{served} {mode:<11} c={c:<4} {row['throughput']:8.1f} img/s  "
                        f"p50 {row['p50_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  "
                        f"errors {row['errors']}  cpu {row['cpu_busy_pct']}%  gpu {row.get('gpu_util_pct', '-')}%  "
                        f"batch {t.get('average_batch', '-')}"
                    )
                    save()
                if mode == "gateway":
                    reference = json.loads((args.data / f"reference-{model}.json").read_text())
                    entry["parity"] = parity(url, key, model, args.data, reference)
                    entry["parity_fp32"] = parity(url, key, f"{model}-fp32", args.data, reference)
                    log(
                        f"{model} parity fp16 {entry['parity']['matched']}/{entry['parity']['cases']}, "
                        f"fp32 {entry['parity_fp32']['matched']}/{entry['parity_fp32']['cases']} "
                        f"{entry['parity']['failures'] + entry['parity_fp32']['failures']}"
                    )
            entry["headline"] = headline(entry)
            log(f"{model} headline {json.dumps(entry['headline'])}")
            save()
    finally:
        if driver:
            driver.close()
        if gateway:
            stop(gateway)
        triton.stop()
        for name in ("tritonserver.log", "gateway.log"):
            path = args.work / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()
                (args.out / name).write_text("\n".join(lines[:60] + ["[...]"] + lines[-300:]) + "\n")
    save()
    text = report.markdown(results) + "\n" + utilisation_table(results)
    (args.out / "results.md").write_text(text)
    try:
        report.chart(results, args.out / "chart.png")
    except Exception as exc:  # noqa: BLE001 - a chart is a nicety; the numbers are already written
        log(f"no chart: {exc}")
    print(text)
    return 0


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in (
        "torch",
        "onnx2torch",
        "onnx",
        "tritonclient",
        "starlette",
        "uvicorn",
        "numpy",
        "opencv-python-headless",
        "httpx",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    out["tritonserver"] = "2.51 (nvidia-pytriton 0.7.0 wheel)"
    return out


if __name__ == "__main__":
    raise SystemExit(main())
