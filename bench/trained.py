"""Fixture vs trained weights: detections and post-processing cost per photo, in-process.

    python -m bench.trained --fixtures .triton/test-cache/repository-<hash> --trained model_repository

For each task it runs the served ONNX graph (ONNX Runtime, CPU) on Ultralytics' bus.jpg and zidane.jpg, then times
the gateway's own post-processing (`gateway.vision.pipeline.finish`, median of repeats) on those outputs.

    python -m bench.trained --fp16 fixture=.triton/test-cache/weights/yolov8n.pt --fp16 trained=weights/yolov8n.pt

compares a checkpoint's class scores in FP16 with FP32 (torch on the CPU; ONNX Runtime's CPU provider has no FP16
path for these graphs): the largest change over the anchors that score 0.25 or more in FP32, before NMS.
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
    from gateway.modelcard import ModelInfo

    config = MessageToDict(parse((model_dir / "config.pbtxt").read_text()), preserving_proto_field_name=True)
    return ModelInfo.from_config(config)


def fp16_drift(checkpoint: Path, photo: Path, size: int = 640) -> tuple[int, float]:
    """(anchors scoring >= 0.25 in FP32, largest |FP16 - FP32| best-class score among them) for one photo."""
    import cv2
    import torch
    from ultralytics import YOLO
    from ultralytics.data.augment import LetterBox

    boxed: Any = LetterBox((size, size), auto=True, stride=32)(image=cv2.imread(str(photo)))
    x = torch.from_numpy(boxed[..., ::-1].transpose(2, 0, 1).copy())[None].float() / 255
    scores = []
    for half in (False, True):
        model: Any = YOLO(str(checkpoint), verbose=False).model
        model = (model.half() if half else model.float()).eval()
        with torch.no_grad():
            out = model(x.half() if half else x)[0]
        out = out[0] if isinstance(out, (list, tuple)) else out
        scores.append(out[0, 4 : 4 + len(model.names)].float().amax(0))
    keep = scores[0] >= 0.25
    return int(keep.sum()), float((scores[1] - scores[0])[keep].abs().max()) if bool(keep.any()) else 0.0


def measure(model_dir: Path, photo: Path, repeats: int) -> dict[str, Any]:
    import onnxruntime as ort

    from gateway.vision.pipeline import finish, prepare
    from gateway.arguments import PredictArgs

    info = _info(model_dir)
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    prepared = prepare(photo.read_bytes(), info, info.imgsz, True, 10**9, {})
    tensor, box = prepared.tensor, prepared.box
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
    parser.add_argument("--fixtures", type=Path, help="a repository with the fixture models")
    parser.add_argument("--trained", type=Path, help="a repository with the trained models")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--fp16", action="append", default=[], metavar="LABEL=PATH.pt", help="FP16 vs FP32 scores")
    args = parser.parse_args(argv)
    if args.fp16:
        print("| checkpoint | photo | anchors >= 0.25 (FP32) | largest FP16 score change |")
        print("|---|---|---|---|")
        for item in args.fp16:
            label, _, path = item.partition("=")
            for photo in ("bus.jpg", "zidane.jpg"):
                n, drift = fp16_drift(Path(path), ASSETS / photo)
                print(f"| {label} | {photo} | {n} | {drift:.4f} |", flush=True)
    if not (args.fixtures and args.trained):
        return 0
    print("| task | photo | weights | model | detections | post-processing ms (median) | polygon points (median) |")
    print("|---|---|---|---|---|---|---|")
    for task, (fixture, trained) in PAIRS.items():
        for photo in ("bus.jpg", "zidane.jpg"):
            for kind, repo, model in (("fixture", args.fixtures, fixture), ("trained", args.trained, trained)):
                m = measure(repo / model, ASSETS / photo, args.repeats)
                print(
                    f"| {task} | {photo} | {kind} | {model} | {m['detections']} | {m['postprocess_ms']:.1f} | "
                    f"{m['polygon_points'] or '–'} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
