"""What the benchmarks measure: the checkout they run from (`ROOT`), the default models, the model repositories
they serve (fixture models built once and cached, plus Ultralytics' plain exports for the peer mode), and the photo
every request sends.

Light to import (the standard library only at the top): the GPU host imports it without Ultralytics or ONNX.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = "yolov8n,yolov8n-seg,yolov8n-pose"
SIZES = {"1080p": (1920, 1080), "360p": (640, 360)}  # the uploads: bus.jpg on a canvas of this size


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def repository(args: argparse.Namespace, models: list[str]) -> Path:
    """The model repository to serve: --repository if given, else the fixture models (built once, cached)."""
    if args.repository:
        return Path(args.repository)
    from export.fixtures import export_fixture
    from export.triton_config import serving_defaults

    import hashlib
    import shutil

    sources = sorted([*(ROOT / "export").rglob("*.py"), ROOT / "gateway" / "modelcard.py"])
    recipe = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    repo = ROOT / ".triton" / "bench-repository"
    stamp = repo / ".recipe"
    if repo.exists() and (not stamp.exists() or stamp.read_text() != recipe):
        log("the exporter changed since the cached benchmark models were built: rebuilding them")
        shutil.rmtree(repo)
    repo.mkdir(parents=True, exist_ok=True)
    stamp.write_text(recipe)
    for model in models:
        if not (repo / model / "config.pbtxt").exists():
            log(f"building fixture model {model} for the benchmark")
            export_fixture(model, repo, ROOT / "weights" / "fixtures", serving_defaults("python"))
    return repo


def peer_repository(repo: Path, models: list[str]) -> Path:
    """`repo`'s models plus `<model>-plain` for each model, exported the way Ultralytics' Triton guide does it (plain
    float32 NCHW input, raw output, the checkpoint's metadata in the config's `metadata` parameter, which
    `YOLO("grpc://...")` reads for names, stride and task). Served by the same Triton as the gateway's models:
    the plain exports are built once (cached), and the combined repository links to both."""
    import ast
    import hashlib

    import onnx

    from export.exporter import export_model
    from export.triton_config import serving_defaults

    recipe = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((ROOT / "export").rglob("*.py"))))
    for model in models:
        recipe.update(weights_for(model, repo).read_bytes()[: 1 << 20])
    plain = ROOT / ".triton" / f"bench-plain-{recipe.hexdigest()[:12]}"
    for model in models:
        target = plain / f"{model}-plain"
        if (target / "config.pbtxt").exists():
            continue
        weights = weights_for(model, repo)
        if weights.suffix != ".pt":
            raise SystemExit(
                f"[bench] ultralytics-triton needs {model}'s .pt weights (weights/{model}.pt) to export it plainly"
            )
        log(f"exporting {model}-plain for the ultralytics-triton mode (float32 input, raw output)")
        export_model(str(weights), plain, serving_defaults("python"), f"{model}-plain", fuse=False, compact=False)
        meta = {p.key: p.value for p in onnx.load(str(target / "source.onnx"), load_external_data=False).metadata_props}
        meta = {
            k: v for k, v in meta.items() if k in ("stride", "task", "batch", "imgsz", "names", "kpt_shape", "channels")
        }
        text = repr(meta)
        assert ast.literal_eval(text) == meta
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        with (target / "config.pbtxt").open("a") as config:  # as the guide appends it to its config.pbtxt
            config.write(f'parameters {{\n  key: "metadata"\n  value {{ string_value: "{escaped}" }}\n}}\n')
    combined = (
        ROOT
        / ".triton"
        / f"bench-combined-{hashlib.sha256(str(repo.resolve()).encode() + plain.name.encode()).hexdigest()[:12]}"
    )
    combined.mkdir(parents=True, exist_ok=True)
    for folder in [
        *(d for d in repo.iterdir() if (d / "config.pbtxt").exists()),
        *(plain / f"{m}-plain" for m in models),
    ]:
        link = combined / folder.name
        if not link.exists():
            link.symlink_to(folder.resolve(), target_is_directory=True)
    return combined


def task_of(model: str, repo: Path) -> str:
    import onnx

    meta = onnx.load(str(repo / model / "source.onnx"), load_external_data=False).metadata_props
    return next((p.value for p in meta if p.key == "task"), "detect")


def weights_for(model: str, repo: Path) -> Path:
    candidates = (
        ROOT / "weights" / f"{model}.pt",
        ROOT / "weights" / "fixtures" / f"{model}.pt",
        repo.parent / "weights" / f"{model}.pt",  # the tests' fixture cache keeps its checkpoints beside the repository
    )
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return repo / model / "source.onnx"


def photo(folder: Path, name: str) -> Path:
    """bus.jpg letterboxed onto a canvas of the named size (`SIZES`), as a JPEG (quality 90)."""
    import cv2
    import numpy as np
    from ultralytics.utils import ASSETS

    width, height = SIZES[name]
    bus = cv2.imread(str(ASSETS / "bus.jpg"))
    scale = height / bus.shape[0]
    resized = cv2.resize(bus, (round(bus.shape[1] * scale), height), interpolation=cv2.INTER_AREA)
    canvas = np.full((height, width, 3), 90, np.uint8)
    x = (width - resized.shape[1]) // 2
    canvas[:, x : x + resized.shape[1]] = resized
    path = folder / f"photo-{name}.jpg"
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path
