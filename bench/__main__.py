"""Benchmark harness: the gateway beside bare Triton, in-process ONNX Runtime and an Ultralytics server, in one run.

    python -m bench run [--quick] [--models yolov8n,yolov8n-seg] [--concurrency 1,2,4,8,16,32] [--rate 5]
    python -m bench cost [--models ...] [--sizes 1080p,360p]  # gateway CPU per request and its fixed part (c=1)
    python -m bench track [--objects 50]  # tracking's CPU per frame and state size, beside Ultralytics' trackers
    python -m bench tools  # installs Triton's perf_analyzer under .triton/perf-analyzer (for --modes ...,perf-analyzer)

Writes results.json, results.md and chart.png under bench/results/<timestamp>/ and prints the folder.
Loopback only; every level is bounded by --requests and --seconds; warm-up first; --repeats rounds, each of which
drives every mode at every level in turn (all servers stay up for the whole model), so drift in the machine's speed
shifts all modes alike. Each level also records the CPU time per request of every process involved (bench/cpu.py).
The opt-in mode perf-analyzer measures the same bare Triton with Triton's own perf_analyzer (tritonclient 2.51.0
wheel's binary, installed on first use): same prepared tensor, gRPC, one run per level made of 3 time windows that
fill --seconds (it counts every request completing in them; --requests does not cap it), with Triton's server-side
queue/compute split in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench import cost, cpu, load, models, perf_analyzer, report, stack
from bench.load import parse_timing
from bench.models import DEFAULT_MODELS, ROOT, SIZES, log

MODES = ("gateway", "triton", "onnxruntime", "ultralytics-server", "ultralytics-triton")
DESCRIPTIONS = {
    "gateway": "HTTP upload of a {upload} JPEG, size {size}",
    "triton": "prepared uint8 tensor over gRPC, async client",
    "onnxruntime": "in-process, source.onnx, prepared float32 tensor",
    "ultralytics-server": "Starlette + YOLO(weights).predict per request",
    "ultralytics-triton": (
        "Starlette + YOLO('grpc://<triton>/<model>-plain').predict per request (Ultralytics' Triton guide)"
    ),
}
OPT_IN_MODES = ("perf-analyzer",)  # needs a tool installed from PyPI and Debian on first use


def level_row(c: int, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One result row from --repeats run summaries at concurrency c: median throughput, the best run's latencies."""
    best = max(summaries, key=lambda s: s["throughput"])
    throughputs = [s["throughput"] for s in summaries]
    row = {
        "concurrency": c,
        **{k: best[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stages_ms")},
        "throughput": statistics.median(throughputs),
        "throughput_min": min(throughputs),
        "throughput_max": max(throughputs),
        "requests": sum(s["requests"] for s in summaries),
        "errors": sum(s["errors"] for s in summaries),
        "statuses": summaries[-1]["statuses"],
    }
    log(
        f"  c={c:<3} {row['throughput']:7.2f} img/s  p50 {best['p50_ms']:7.1f} ms  p99 {best['p99_ms']:7.1f} ms  "
        f"errors {row['errors']}"
    )
    return row


@dataclass
class Mode:
    """One way of serving the model, ready to be driven: its request, its levels, the processes whose CPU counts."""

    name: str
    call: load.Call
    levels: list[int]
    roles: cpu.Roles


async def measure(modes: list[Mode], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Rows per mode and level from --repeats rounds. Each round drives every mode at every level in turn, so a
    machine whose speed drifts during the run (a shared VM does) shifts all modes alike instead of whichever ran
    last: the targets are ratios between modes. CPU per request (from /proc) is summed over a level's runs."""
    for mode in modes:
        for _ in range(args.warmup):
            await mode.call()
    use_cpu = cpu.available()
    summaries: dict[tuple[str, int], list[dict[str, Any]]] = {}
    burnt: dict[tuple[str, int], dict[str, float]] = {}
    for round_ in range(1, args.repeats + 1):
        log(f"round {round_}/{args.repeats}: " + ", ".join(m.name for m in modes))
        for mode in modes:
            for c in mode.levels:
                before = cpu.snapshot(mode.roles) if use_cpu else {}
                run = await load.closed_loop(mode.call, c, args.requests, args.seconds)
                after = cpu.snapshot(mode.roles) if use_cpu else {}
                summary = run.summary()
                summaries.setdefault((mode.name, c), []).append(summary)
                total = burnt.setdefault((mode.name, c), dict.fromkeys(before, 0.0))
                for role in before:
                    total[role] += after[role] - before[role]
                log(
                    f"  {mode.name:<18} c={c:<3} {summary['throughput']:7.2f} img/s  p50 {summary['p50_ms']:7.1f} ms  "
                    f"errors {summary['errors']}"
                )
    rows: dict[str, list[dict[str, Any]]] = {}
    for mode in modes:
        log(f"{mode.name}:")
        for c in mode.levels:
            row = level_row(c, summaries[(mode.name, c)])
            if burnt[(mode.name, c)]:
                row["cpu_ms"] = cpu.per_request_ms(burnt[(mode.name, c)], row["requests"])
            rows.setdefault(mode.name, []).append(row)
    return rows


def measure_perf_analyzer(
    tool: perf_analyzer.Tool,
    model: str,
    url: str,
    tensor: NDArray[np.uint8],
    workdir: Path,
    levels: list[int],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Rows like `measure`'s, from one perf_analyzer process per level and repeat. tensor: (H, W, 3) uint8, as sent."""
    data = perf_analyzer.write_input(tensor, workdir / f"perf-analyzer-{model}" / "input")
    if args.warmup:
        perf_analyzer.warm_up(tool, model, url, tensor.shape, data, args.warmup)
    rows = []
    for c in levels:
        rows.append(
            level_row(
                c,
                [
                    perf_analyzer.level(tool, model, url, tensor.shape, data, c, args.seconds)
                    for _ in range(args.repeats)
                ],
            )
        )
    return rows


async def bench_model(
    model: str, repo: Path, photo: Path, workdir: Path, args: argparse.Namespace, pa: perf_analyzer.Tool | None
) -> dict[str, Any]:
    import cv2
    import httpx
    import onnxruntime as ort
    import tritonclient.grpc.aio as grpcaio

    from gateway.vision import preprocess

    jpeg = photo.read_bytes()
    image = np.asarray(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), np.uint8)
    boxed, _ = preprocess.letterbox(image, args.size, 32, rect=args.letterbox == "rect")
    levels = [int(c) for c in args.concurrency.split(",")]
    out: dict[str, Any] = {"model": model, "modes": {}, "bytes_sent": {}}
    limits = httpx.Limits(max_connections=max(levels) + 4, max_keepalive_connections=max(levels) + 4)
    files = {"image": ("photo.jpg", jpeg, "image/jpeg")}
    harness: cpu.Roles = {"harness": (os.getpid(), False)}  # the load generator (and, in-process, the model)
    modes: dict[str, Mode] = {}

    async with contextlib.AsyncExitStack() as running:
        gateway_url, triton_url, key = args.gateway_url, args.triton_url, args.api_key
        gateway_roles: cpu.Roles = {}
        triton_roles: cpu.Roles = {}
        bare = "triton" in args.modes or "perf-analyzer" in args.modes
        peer = "ultralytics-triton" in args.modes
        if ("gateway" in args.modes and not gateway_url) or ((bare or peer) and not triton_url):
            served = models.peer_repository(repo, [model]) if peer else repo
            triton, gw, local_key = running.enter_context(stack.triton_and_gateway(served, workdir, args.letterbox))
            if not gateway_url:
                gateway_url, key = gw.url, local_key
                gateway_roles["gateway"] = (gw.process.pid, True)
            if not args.triton_url:
                triton_roles["triton"] = (triton.process.pid, True)  # tritonserver and its python-backend stubs
            triton_url = triton_url or triton.grpc_url
        client = await running.enter_async_context(httpx.AsyncClient(limits=limits, timeout=300))

        if "gateway" in args.modes:

            async def via_gateway() -> tuple[int, dict[str, float]]:
                r = await client.post(
                    f"{gateway_url}/v1/predict/{model}",
                    headers={"x-api-key": key},
                    files=files,
                    data={"size": str(args.size)},
                )
                return r.status_code, parse_timing(r.headers.get("server-timing", ""))

            modes["gateway"] = Mode("gateway", via_gateway, levels, {**gateway_roles, **triton_roles, **harness})
            out["bytes_sent"]["gateway"] = len(jpeg)

        if "triton" in args.modes:
            grpc_client = grpcaio.InferenceServerClient(triton_url)
            running.push_async_callback(grpc_client.close)
            tensor = boxed[None]

            async def via_triton() -> tuple[int, dict[str, float]]:
                inp = grpcaio.InferInput("image", list(tensor.shape), "UINT8")
                inp.set_data_from_numpy(tensor)
                await grpc_client.infer(model, [inp])
                return 200, {}

            modes["triton"] = Mode("triton", via_triton, levels, {**triton_roles, **harness})
            out["bytes_sent"]["triton"] = int(tensor.nbytes)

        if "onnxruntime" in args.modes:
            session = ort.InferenceSession(str(repo / model / "source.onnx"), providers=["CPUExecutionProvider"])
            x = np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1)[None]).astype(np.float32) / np.float32(255)
            pool = running.enter_context(ThreadPoolExecutor(max_workers=max(levels)))
            loop = asyncio.get_running_loop()

            async def in_process() -> tuple[int, dict[str, float]]:
                await loop.run_in_executor(pool, session.run, None, {"images": x})
                return 200, {}

            modes["onnxruntime"] = Mode("onnxruntime", in_process, levels, harness)
            out["bytes_sent"]["onnxruntime"] = 0

        if "ultralytics-server" in args.modes:
            weights = models.weights_for(model, repo)
            srv = running.enter_context(
                stack.uvicorn("bench.ultralytics_server:app", workdir, {"BENCH_WEIGHTS": str(weights)}, "/docs-missing")
            )

            async def via_ultralytics() -> tuple[int, dict[str, float]]:
                r = await client.post(f"{srv.url}/v1/predict/{model}", files=files, data={"size": str(args.size)})
                return r.status_code, {}

            ul_levels = [c for c in levels if c <= args.ultralytics_max_concurrency] or levels[:1]
            modes["ultralytics-server"] = Mode(
                "ultralytics-server",
                via_ultralytics,
                ul_levels,
                {"ultralytics-server": (srv.process.pid, True), **harness},
            )
            out["bytes_sent"]["ultralytics-server"] = len(jpeg)
            out["ultralytics_weights"] = weights.name

        if peer:
            env = {
                "BENCH_TRITON_MODEL": f"grpc://{triton_url}/{model}-plain",
                "BENCH_TASK": models.task_of(model, repo),
            }
            peer_srv = running.enter_context(
                stack.uvicorn("bench.ultralytics_triton_server:app", workdir, env, "/docs-missing")
            )

            async def via_ultralytics_triton() -> tuple[int, dict[str, float]]:
                r = await client.post(f"{peer_srv.url}/v1/predict/{model}", files=files, data={"size": str(args.size)})
                return r.status_code, {}

            peer_levels = [c for c in levels if c <= args.ultralytics_max_concurrency] or levels[:1]
            peer_roles: cpu.Roles = {"ultralytics-triton": (peer_srv.process.pid, True), **triton_roles, **harness}
            modes["ultralytics-triton"] = Mode("ultralytics-triton", via_ultralytics_triton, peer_levels, peer_roles)
            out["bytes_sent"]["ultralytics-triton"] = len(jpeg)

        for name in modes:
            log(f"{model}: {name} — {DESCRIPTIONS[name].format(size=args.size, upload=args.upload)}")
        out["modes"] = await measure([modes[m] for m in args.modes if m in modes], args)

        if "gateway" in modes:
            if args.rate:
                log(f"{model}: gateway open loop at {args.rate}/s")
                run = await load.open_loop(modes["gateway"].call, args.rate, args.requests, args.seconds)
                out["open_loop"] = {"rate": args.rate, **run.summary()}
            out["parity"] = await parity(model, repo, photo, client, gateway_url, key, args)
        if peer:  # the peer letterboxes to a square (no `rect` for Triton models in Ultralytics' predictor)
            out["parity_ultralytics_triton"] = await parity(
                model, repo, photo, client, peer_srv.url, "", args, rect=False
            )

        if pa is not None:
            log(
                f"{model}: perf-analyzer (Triton's perf_analyzer, the same uint8 tensor over gRPC, "
                f"{perf_analyzer.window_ms(args.seconds)} ms windows)"
            )
            try:
                out["modes"]["perf-analyzer"] = await asyncio.to_thread(
                    measure_perf_analyzer, pa, model, triton_url, boxed, workdir, levels, args
                )
            except perf_analyzer.RunError as exc:  # the other modes' results are still worth writing
                log(f"{model}: perf-analyzer failed: {exc}")
                out.setdefault("failures", {})["perf-analyzer"] = str(exc)
            out["bytes_sent"]["perf-analyzer"] = int(boxed.nbytes)
    return out


async def parity(
    model: str,
    repo: Path,
    photo: Path,
    client: Any,
    url: str,
    key: str,
    args: argparse.Namespace,
    rect: bool | None = None,
) -> dict[str, Any]:
    """Fraction of gateway answers equal to Ultralytics' within the parity tolerances, on a small image set."""
    import cv2
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    from bench.parity import assert_matches

    reference = YOLO(str(repo / model / "source.onnx"))
    cases, matched, failures = 0, 0, []
    for path in (photo, ASSETS / "bus.jpg", ASSETS / "zidane.jpg"):
        r = await client.post(
            f"{url}/v1/predict/{model}",
            headers={"x-api-key": key},
            files={"image": path.read_bytes()},
            data={"size": str(args.size)},
        )
        want = reference.predict(
            str(path),
            imgsz=args.size,
            conf=0.25,
            iou=0.45,
            rect=args.letterbox == "rect" if rect is None else rect,
            verbose=False,
        )[0].summary()
        h, w = cv2.imread(str(path)).shape[:2]
        cases += 1
        try:
            assert r.status_code == 200
            assert_matches(r.json()["data"], want, (w, h), normalize=False)
            matched += 1
        except AssertionError as exc:
            failures.append(f"{path.name}: {str(exc)[:200]}")
    return {"cases": cases, "matched": matched, "fraction": matched / cases, "failures": failures}


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.metadata as md

    cpu_name = next(
        (
            row.split(":", 1)[1].strip()
            for row in Path("/proc/cpuinfo").read_text().splitlines()
            if row.startswith("model name")
        ),
        platform.processor(),
    )
    versions = {}
    for pkg in (
        "onnxruntime",
        "tritonclient",
        "nvidia-pytriton",
        "starlette",
        "uvicorn",
        "numpy",
        "opencv-python-headless",
        "simplejpeg",
        "ultralytics-opencv-headless",
        "torch",
    ):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {
        "cpu": cpu_name,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "target": args.label
        or (
            "remote deployment"
            if args.gateway_url or args.triton_url
            else "python (ONNX Runtime in Triton's python backend, CPU)"
        ),
        "gateway_url": args.gateway_url or "local",
        "triton_url": args.triton_url or "local",
        "letterbox": args.letterbox,
        "size": args.size,
        "input": f"{'x'.join(map(str, SIZES[args.upload]))} JPEG (bus.jpg on a {args.upload} canvas)",
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cost"]:
        return cost.main(argv[1:])
    if argv[:1] == ["track"]:
        from bench import tracking

        return tracking.main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("cost", help="gateway CPU per request at concurrency 1 and its fixed part (python -m bench cost -h)")
    sub.add_parser("track", help="tracking's CPU per frame and state size (python -m bench track -h)")
    sub.add_parser(
        "tools",
        help="install perf_analyzer (tritonclient 2.51.0 wheel's binary, libb64-0d, a CUDA 12 runtime) "
        "under .triton/perf-analyzer",
    )
    run = sub.add_parser("run", help="run the benchmark")
    run.add_argument("--quick", action="store_true", help="small, CI-sized run (< 3 minutes here)")
    run.add_argument("--models", default=DEFAULT_MODELS)
    run.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated, from {', '.join(MODES + OPT_IN_MODES)}; default: all but perf-analyzer, "
        "which is opt-in (it installs Triton's perf_analyzer on first use)",
    )
    run.add_argument("--concurrency", default="1,2,4,8,16,32")
    run.add_argument("--requests", type=int, default=200, help="requests per run (upper bound)")
    run.add_argument("--seconds", type=float, default=20, help="seconds per run (upper bound)")
    run.add_argument("--repeats", type=int, default=3)
    run.add_argument("--warmup", type=int, default=5)
    run.add_argument("--rate", type=float, default=0, help="also run the gateway open-loop at this many requests/s")
    run.add_argument("--size", type=int, default=640)
    run.add_argument(
        "--upload",
        choices=("1080p", "360p"),
        default="1080p",
        help="the JPEG each request sends (1920x1080 or 640x360)",
    )
    run.add_argument("--letterbox", choices=("rect", "square"), default="rect")
    run.add_argument(
        "--ultralytics-max-concurrency",
        type=int,
        default=8,
        help="the baseline serialises requests; higher levels only queue",
    )
    run.add_argument("--repository", default="", help="model repository (default: fixture models)")
    run.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    run.add_argument(
        "--gateway-url", default="", help="measure this running gateway instead of a local one (e.g. a GPU deployment)"
    )
    run.add_argument("--api-key", default="", help="key for --gateway-url")
    run.add_argument(
        "--triton-url", default="", help="measure this running Triton (gRPC host:port) instead of a local one"
    )
    run.add_argument("--label", default="", help="what is measured, for the report (e.g. 'H100, tensorrt FP16')")
    args = parser.parse_args(argv)
    if args.command == "tools":
        return _tools()
    if args.quick:
        args.concurrency, args.requests, args.seconds, args.repeats, args.warmup = "1,4", 24, 8, 1, 2
        args.models = "yolov8n" if args.models == run.get_default("models") else args.models
        args.rate = args.rate or 2
    args.modes = [m for m in args.modes.split(",") if m]
    if args.gateway_url and not args.api_key:
        parser.error("--gateway-url needs --api-key")
    unknown = set(args.modes) - set(MODES + OPT_IN_MODES)
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}; choose from {', '.join(MODES + OPT_IN_MODES)}")
    pa = None
    if "perf-analyzer" in args.modes:
        try:  # before anything starts: a missing tool should cost seconds, not a half-finished run
            pa = perf_analyzer.install(say=log)
        except perf_analyzer.ToolError as exc:
            parser.exit(2, f"[bench] perf-analyzer mode: {exc}\n")

    folder = args.out / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    names = args.models.split(",")
    repo = models.repository(args, names)
    photo = models.photo(folder, args.upload)
    results: dict[str, Any] = {"environment": environment(args), "models": []}
    if pa is not None:
        results["environment"]["versions"]["perf_analyzer"] = perf_analyzer.version(pa)
    started = time.perf_counter()
    for model in names:
        results["models"].append(asyncio.run(bench_model(model, repo, photo, folder, args, pa)))
    results["environment"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["ratios"] = report.ratios(results)
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    (folder / "results.md").write_text(report.markdown(results))
    report.chart(results, folder / "chart.png")
    print(report.markdown(results))
    print(f"results: {folder}")
    return 1 if any(m.get("failures") for m in results["models"]) else 0


def _tools() -> int:
    started = time.perf_counter()
    try:
        tool = perf_analyzer.install(say=log)
    except perf_analyzer.ToolError as exc:
        log(str(exc))
        return 2
    log(f"perf_analyzer {perf_analyzer.version(tool)} at {tool.binary}, ready in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
