"""The converted graph against ONNX Runtime, and its time per batch, before anything is served.

    python -m bench.gpu.check --onnx .gpu/repo/yolov8n/1/model.onnx --photo .gpu/data/photo-1080p.jpg --out OUT

For fp32, fp16 (autocast) and fp16 with channels-last weights: the largest difference from ONNX Runtime (CPU, the
exporter's reference) in box coordinates and scores over anchors that clear confidence 0.25, whether those anchors
keep their class, and the median wall time of one call (pinned upload, forward, download) at batch 1, 32 and 64.
Exits non-zero when fp32 differs by more than the parity tolerances (1 px, 1e-3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
import torch

from bench.gpu import torch_graph

VARIANTS = (("fp32", False), ("fp16", False), ("fp16", True))


def compare(ours: NDArray[np.float32], ref: NDArray[np.float32], conf: float = 0.25) -> dict[str, float]:
    """Differences over anchors whose reference score clears `conf`. ours, ref: (B, 6, A) compact outputs."""
    keep = ref[:, 4] >= conf
    boxes = np.abs(ours[:, :4] - ref[:, :4]).max(axis=1)[keep]
    return {
        "anchors": int(keep.sum()),
        "max_box_px": float(boxes.max()) if boxes.size else 0.0,
        "max_score": float(np.abs(ours[:, 4] - ref[:, 4])[keep].max()) if keep.any() else 0.0,
        "class_agreement": float((ours[:, 5] == ref[:, 5])[keep].mean()) if keep.any() else 1.0,
    }


def timed(runner: torch_graph.Runner, batch: torch.Tensor) -> float:
    cuda = runner.device.type == "cuda"
    warmups, repeats = (3, 10) if cuda else (1, 2)  # the CPU run is a rehearsal of the steps, not a measurement
    for _ in range(warmups):
        runner([batch])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        runner([batch])
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    import cv2
    import onnxruntime as ort

    from gateway.vision import preprocess

    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu.check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--photo", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", default="1,32,64")
    args = parser.parse_args(argv)

    image = np.asarray(cv2.imread(str(args.photo)), np.uint8)
    one = preprocess.letterbox(image, 640, 32, rect=True)[0][None]
    rng = np.random.default_rng()
    flipped = np.ascontiguousarray(one[:, :, ::-1])
    noisy = np.clip(one.astype(np.int16) + rng.integers(-20, 21, one.shape), 0, 255).astype(np.uint8)  # fresh each run
    probe = np.concatenate([one, flipped, noisy])
    session = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"image": probe})[0]

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "shape": list(one.shape),
        "variants": [],
    }
    for precision, channels_last in VARIANTS:
        t = time.perf_counter()
        runner = torch_graph.load(args.onnx, device, precision, channels_last)
        load_s = time.perf_counter() - t
        row: dict[str, Any] = {"precision": precision, "channels_last": channels_last, "load_s": round(load_s, 2)}
        row.update(compare(runner([torch.from_numpy(probe)])[0].numpy(), ref))
        for b in (int(v) for v in args.batches.split(",")):
            ms = timed(runner, torch.from_numpy(np.repeat(one, b, axis=0)))
            row[f"ms_batch{b}"] = round(ms, 2)
            row[f"img_s_batch{b}"] = round(1000 * b / ms, 1)
        report["variants"].append(row)
        print(json.dumps(row), flush=True)
        del runner
        if device.type == "cuda":
            torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "check.json").write_text(json.dumps(report, indent=2))
    fp32 = report["variants"][0]
    ok = fp32["max_box_px"] <= 1.0 and fp32["max_score"] <= 1e-3
    print(f"fp32 {'within' if ok else 'OUTSIDE'} the parity tolerances (1 px, 1e-3)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
