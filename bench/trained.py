"""Fixture vs trained weights: detections and post-processing cost per photo, in-process.

    python -m bench.trained --fixtures .triton/test-cache/repository-<hash> --trained model_repository

For each task it runs the served ONNX graph (ONNX Runtime, CPU) on Ultralytics' bus.jpg and zidane.jpg, then times
the gateway's own post-processing (`gateway.pipeline.finish`, median of repeats) on those outputs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

PAIRS = {  # task: (fixture id, trained id)
    "detect": ("yolov8n", "yolov8n"),
    "segment": ("yolov8n-seg", "yolov8n-seg"),
    "pose": ("yolov8n-pose", "yolo11n-pose"),
    "obb": ("yolov8n-obb", "yolov8n-obb"),
}


def _info(model_dir: Path) -> Any:
    from google.protobuf.json_format import MessageToDict

    from export.triton_config import parse
    from gateway.triton import ModelInfo

    config = MessageToDict(parse((model_dir / "config.pbtxt").read_text()), preserving_proto_field_name=True)
    return ModelInfo.from_config(config)


def measure(model_dir: Path, photo: Path, repeats: int) -> dict[str, Any]:
    import onnxruntime as ort

    from gateway.pipeline import finish, prepare
    from gateway.schemas import PredictArgs

    info = _info(model_dir)
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    _, tensor, box = prepare(photo.read_bytes(), info, info.imgsz, True, 10**9, {})
    raw = session.run(None, {info.input_name: tensor[None]})
    outputs = {name: value[0] for name, value in zip(info.outputs, raw)}  # one image: the batch axis off
    args = PredictArgs()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rows = finish(info, outputs, box, args)
        times.append((time.perf_counter() - t0) * 1000)
    points = [len(r["segments"]["x"]) for r in rows if "segments" in r]
    return {
        "detections": len(rows),
        "postprocess_ms": statistics.median(times),
        "polygon_points": int(np.median(points)) if points else None,
    }


def main(argv: list[str] | None = None) -> int:
    from ultralytics.utils import ASSETS

    parser = argparse.ArgumentParser(prog="python -m bench.trained", description=__doc__)
    parser.add_argument("--fixtures", type=Path, required=True, help="a repository with the fixture models")
    parser.add_argument("--trained", type=Path, required=True, help="a repository with the trained models")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    print("| task | photo | weights | model | detections | post-processing ms (median) | polygon points (median) |")
    print("|---|---|---|---|---|---|---|")
    for task, (fixture, trained) in PAIRS.items():
        for photo in ("bus.jpg", "zidane.jpg"):
            for kind, repo, model in (("fixture", args.fixtures, fixture), ("trained", args.trained, trained)):
                m = measure(repo / model, ASSETS / photo, args.repeats)
                print(f"| {task} | {photo} | {kind} | {model} | {m['detections']} | {m['postprocess_ms']:.1f} | "
                      f"{m['polygon_points'] or '–'} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
