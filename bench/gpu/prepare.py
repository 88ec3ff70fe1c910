"""Build, on a CPU machine, everything the GPU run needs: the model repository and the parity references.

    python -m bench.gpu.prepare --out .gpu --weights weights/fixtures [--models yolov8n]

For each model: the exporter's python-backend export (fixture weights unless `<weights>/<id>.pt` is real), then two
Triton models over the same served ONNX file: `<id>` (FP16 autocast) and `<id>-fp32` (IEEE float32), both
`KIND_GPU` running bench/gpu/model.py. References: Ultralytics' own `predict(...).summary()` on `source.onnx` for
the benchmark photo, bus.jpg and zidane.jpg, so the GPU host needs neither Ultralytics nor the source file.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.models import ROOT

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class GpuServing:
    """Batching and placement of the GPU models (the knobs the benchmark turns)."""

    max_batch_size: int = 64
    instances: int = 2  # two stub processes: one prepares a batch while the other's runs on the GPU
    queue_delay_us: int = 1000
    max_queue_size: int = 2048  # above the highest benchmark concurrency: the bench measures latency, not rejections
    warmup_shapes: tuple[str, ...] = ("384x640",)  # a 1920x1080 photo letterboxed (rect) at size 640


def gpu_config(text: str, name: str, precision: str, serving: GpuServing, channels_last: bool) -> str:
    """The exporter's python-target config.pbtxt, renamed to `name`, placed on the GPU, with the torch parameters."""
    lines = text.splitlines()
    if not lines[0].startswith("name: ") or "kind: KIND_CPU" not in text:
        raise ValueError("not a python-target config.pbtxt from the exporter")
    lines[0] = f'name: "{name}"'
    text = "\n".join(lines) + "\n"
    text = text.replace("kind: KIND_CPU", "kind: KIND_GPU")
    extra = {
        "precision": precision,
        "channels_last": "true" if channels_last else "false",
        "warmup_shapes": ",".join(serving.warmup_shapes),
        "runtime": "onnx2torch on CUDA (bench/gpu)",
    }
    for key, value in extra.items():
        text += f'parameters {{\n  key: "{key}"\n  value {{ string_value: "{value}" }}\n}}\n'
    return text


def build_model(model_id: str, out: Path, weights: Path, serving: GpuServing) -> None:
    from export.fixtures import export_fixture
    from export.triton_config import Serving, parse

    staging = out / "build"
    base = Serving(
        "python",
        max_batch_size=serving.max_batch_size,
        instances=serving.instances,
        queue_delay_us=serving.queue_delay_us,
        max_queue_size=serving.max_queue_size,
    )
    exported = export_fixture(model_id, staging, weights, base)
    repo = out / "repo"
    for name, precision in ((model_id, "fp16"), (f"{model_id}-fp32", "fp32")):
        folder = repo / name
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "1").mkdir(parents=True)
        text = gpu_config(
            (exported / "config.pbtxt").read_text(), name, precision, serving, channels_last=precision == "fp16"
        )
        parse(text)  # Triton's own ModelConfig schema, as the exporter checks its configs
        (folder / "config.pbtxt").write_text(text)
        for source in ("model.py", "torch_graph.py"):
            shutil.copy2(HERE / source, folder / "1" / source)
        if name == model_id:
            shutil.copy2(exported / "1" / "model.onnx", folder / "1" / "model.onnx")
        else:  # one copy of the weights travels; the fp32 model reads the same file
            (folder / "1" / "model.onnx").symlink_to(Path("..") / ".." / model_id / "1" / "model.onnx")


def references(model_id: str, out: Path, size: int = 640) -> None:
    """Ultralytics' summaries for the parity images, and the images themselves, under `<out>/data/`."""
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    from bench.models import photo

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    images = [photo(data, "1080p")]
    for name in ("bus.jpg", "zidane.jpg"):
        shutil.copy2(ASSETS / name, data / name)
        images.append(data / name)
    reference = YOLO(str(out / "build" / model_id / "source.onnx"))
    summaries = {
        p.name: reference.predict(str(p), imgsz=size, conf=0.25, iou=0.45, rect=True, verbose=False)[0].summary()
        for p in images
    }
    (data / f"reference-{model_id}.json").write_text(json.dumps(summaries))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu")
    parser.add_argument("--weights", type=Path, default=ROOT / "weights" / "fixtures")
    parser.add_argument("--models", default="yolov8n")
    args = parser.parse_args(argv)
    for model_id in args.models.split(","):
        build_model(model_id, args.out, args.weights, GpuServing())
        references(model_id, args.out)
        print(f"prepared {model_id}: {args.out / 'repo' / model_id}, {args.out / 'repo' / (model_id + '-fp32')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
