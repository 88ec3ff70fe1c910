"""Gateway CPU per request, at concurrency 1: what one image costs the gateway, and how much of it is fixed.

    python -m bench cost [--models yolov8n,yolov8n-seg,yolov8n-pose] [--requests 100] [--sizes 1080p,360p]

For each model and upload (the benchmark's 1920x1080 JPEG and a 640x360 one), sends --requests sequential requests
to a local gateway and reads, from /proc, the CPU time its process burnt (all threads), and from Server-Timing the
request's own stages (decode + letterbox + postprocess). The difference is the **fixed cost**: HTTP, multipart,
the key check, thread hops, gRPC to Triton, JSON and logging, whatever the image. The gateway's threads are also
reported by name (event loop, worker threads, gRPC's own), so a change shows where it moved the cost.
Prints a table and writes cost.json next to the other results.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import cpu, stack
from bench.load import parse_timing
from bench.models import DEFAULT_MODELS, ROOT, SIZES, photo, repository

STAGES = ("decode", "letterbox", "postprocess")
TRANSPORTS = {
    "shm": "shared memory + Triton's HTTP port (one host: make serve)",
    "grpc": "in the gRPC messages (separate pods: the chart)",
}


def log(message: str) -> None:
    print(f"[bench cost] {message}", file=sys.stderr, flush=True)


def threads(pid: int) -> dict[str, float]:
    """CPU seconds so far of each of pid's threads, summed by thread name."""
    out: dict[str, float] = {}
    for task in (cpu.PROC / str(pid) / "task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        name = "event loop" if int(task.name) == pid else _family(name)
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / cpu.TICKS
    return out


def _family(name: str) -> str:
    """Thread names without their numbers: 'AnyIO worker thread', 'grpc_global_tim', 'default-executor'..."""
    return name.rstrip("0123456789-_ ") or name


def measure(
    url: str, key: str, model: str, jpeg: bytes, pid: int, triton_pid: int, requests: int, warmup: int
) -> dict[str, Any]:
    stages: dict[str, list[float]] = {s: [] for s in (*STAGES, "triton", "total")}
    with httpx.Client(timeout=120) as client:

        def one() -> None:
            r = client.post(
                f"{url}/v1/predict/{model}", headers={"x-api-key": key}, files={"image": ("photo.jpg", jpeg)}
            )
            if r.status_code != 200 or not r.json()["data"]:
                raise SystemExit(f"[bench cost] {model}: {r.status_code} {r.text[:300]} (expected detections)")
            for name, ms in parse_timing(r.headers["server-timing"]).items():
                if name in stages:
                    stages[name].append(ms)

        for _ in range(warmup):
            one()
        for values in stages.values():
            values.clear()
        before, by_thread, triton_before = cpu.seconds(pid), threads(pid), cpu.seconds(triton_pid)
        started = time.perf_counter()
        for _ in range(requests):
            one()
        wall = time.perf_counter() - started
        after, by_thread_after, triton_after = cpu.seconds(pid), threads(pid), cpu.seconds(triton_pid)
    total_ms = (after - before) * 1000 / requests
    stage_ms = {s: statistics.mean(stages[s]) for s in STAGES}
    return {
        "model": model,
        "requests": requests,
        "cpu_ms": round(total_ms, 2),
        "stages_ms": {s: round(v, 2) for s, v in stage_ms.items()},
        "fixed_ms": round(total_ms - sum(stage_ms.values()), 2),
        "p50_ms": round(statistics.median(stages["total"]), 2),
        "triton_ms": round(statistics.median(stages["triton"]), 2),
        "wall_s": round(wall, 1),
        "triton_cpu_ms": round((triton_after - triton_before) * 1000 / requests, 2),
        "threads_ms": {
            name: round((by_thread_after.get(name, 0.0) - by_thread.get(name, 0.0)) * 1000 / requests, 2)
            for name in sorted(by_thread_after)
            if by_thread_after.get(name, 0.0) - by_thread.get(name, 0.0) > 0
        },
    }


def in_process(repo: Path, model: str, size: str, runs: int) -> dict[str, Any]:
    """CPU per inference of the graph Triton serves (model.onnx: uint8 input, fused preprocessing) run in this
    process with the session options Triton's python backend gives it (threads, spinning), on the same tensor."""
    import cv2
    import onnxruntime as ort

    from gateway.vision import preprocess

    config = (repo / model / "config.pbtxt").read_text()
    params = dict(re.findall(r'key: "(\w+)"\s*value \{ string_value: "([^"]*)" \}', config))
    options = ort.SessionOptions()
    if int(params.get("intra_op_threads", "0")) > 0:
        options.intra_op_num_threads = int(params["intra_op_threads"])
    options.add_session_config_entry("session.intra_op.allow_spinning", params.get("intra_op_spinning", "1"))
    session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    width, height = SIZES[size]
    image = np.asarray(cv2.resize(np.full((1080, 1920, 3), 90, np.uint8), (width, height)), np.uint8)
    boxed, _ = preprocess.letterbox(image, 640, 32, rect=True)
    feed = {session.get_inputs()[0].name: boxed[None]}
    for _ in range(3):
        session.run(None, feed)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(runs):
        session.run(None, feed)
    after = resource.getrusage(resource.RUSAGE_SELF)
    burnt = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"model": model, "upload": size, "shape": list(boxed.shape), "cpu_ms": round(burnt * 1000 / runs, 2)}


def triton_table(rows: list[dict[str, Any]], engine: list[dict[str, Any]]) -> str:
    """Triton's CPU per request (tritonserver and its python-backend stubs) beside in-process ONNX Runtime's."""
    alone = {(e["model"], e["shape"][0], e["shape"][1]): e["cpu_ms"] for e in engine}
    lines = [
        "| tensors | upload | model | Triton CPU / request | in-process ONNX Runtime, same graph and options | ratio |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        height = 384  # both uploads letterbox (rect) to 640x384
        base = alone.get((row["model"], height, 640))
        ratio = f"{row['triton_cpu_ms'] / base:.2f}×" if base else "–"
        lines.append(
            f"| {row['transport']} | {row['upload']} | {row['model']} | {row['triton_cpu_ms']:.1f} ms | "
            f"{base if base is not None else '–'} ms | {ratio} |"
        )
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| tensors | upload | model | gateway CPU / request | stages (decode + letterbox + postprocess) | fixed | "
        "gateway cores per 1,000 img/s | by thread |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        s = row["stages_ms"]
        by = ", ".join(f"{k} {v:.1f}" for k, v in sorted(row["threads_ms"].items(), key=lambda kv: -kv[1]))
        lines.append(
            f"| {row['transport']} | {row['upload']} | {row['model']} | {row['cpu_ms']:.1f} ms | "
            f"{s['decode']:.1f} + {s['letterbox']:.1f} + {s['postprocess']:.1f} = {sum(s.values()):.1f} ms | "
            f"{row['fixed_ms']:.1f} ms | "
            f"{row['cpu_ms']:.1f} | {by} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench cost", description=__doc__)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--sizes", default="1080p,360p", help=f"uploads, from {', '.join(SIZES)}")
    parser.add_argument("--transports", default="shm,grpc", help=f"from {', '.join(TRANSPORTS)}")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repository", default="", help="model repository (default: the benchmark's fixture models)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    folder = args.out / ("cost-" + time.strftime("%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True, exist_ok=True)
    repo = repository(argparse.Namespace(repository=args.repository), models)
    rows = []
    for transport in args.transports.split(","):
        log(f"tensors to Triton: {TRANSPORTS[transport]}")
        with stack.triton_and_gateway(repo, folder, "rect", transport == "shm") as (server, gateway, key):
            for name in args.sizes.split(","):
                jpeg = photo(folder, name).read_bytes()
                for model in models:
                    upload = f"{SIZES[name][0]}x{SIZES[name][1]} JPEG"
                    row = {"transport": transport, "upload": upload, **measure(
                        gateway.url, key, model, jpeg, gateway.process.pid, server.process.pid, args.requests,
                        args.warmup,
                    )}  # fmt: skip
                    log(
                        f"{transport} {upload} {model}: {row['cpu_ms']:.2f} ms CPU/request, fixed {row['fixed_ms']:.2f}"
                    )
                    rows.append(row)
    engine = [in_process(repo, model, name, args.requests) for name in args.sizes.split(",") for model in models]
    (folder / "cost.json").write_text(
        json.dumps({"command": " ".join(sys.argv), "rows": rows, "in_process": engine}, indent=2)
    )
    print(table(rows))
    print()
    print(triton_table(rows, engine))
    print(f"results: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
