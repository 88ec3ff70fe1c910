"""Weights → ONNX → Triton model directory.

`model_repository/<model_id>/` gets `config.pbtxt`, `source.onnx` (Ultralytics' plain export, the reference for
`YOLO("source.onnx")`) and `1/` with the served file: ONNX with preprocessing fused in, or a TensorRT plan.
"""

from __future__ import annotations

import ast
import platform
import shutil
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from export import onnx_graph, triton_config
from export.triton_config import ModelSpec, Serving, Tensor
from gateway.modelcard import COMPACT, COMPACT_TASKS, FLOAT32_NCHW_RGB, RAW, TASKS, UINT8_NHWC_BGR
from gateway.modelcard import InputFormat, OutputLayout, Task

if TYPE_CHECKING:
    from ultralytics import YOLO

PYTHON_BACKEND_MODEL = Path(__file__).parent / "python_backend" / "model.py"


class ExportError(Exception):
    """A problem the user can fix; the CLI prints it without a traceback."""


def log(message: str) -> None:
    print(f"[export] {message}", file=sys.stderr, flush=True)


def load_model(source: str) -> "object":
    """An Ultralytics YOLO object from a .pt/.yaml path or a model name Ultralytics can download."""
    from ultralytics import YOLO

    path = Path(source)
    if path.suffix not in {".pt", ".yaml", ".yml"}:
        raise ExportError(f"{source!r}: expected a .pt weights file, a model .yaml or a name like 'yolov8n-seg.pt'")
    is_local = path.exists() or len(path.parts) > 1
    if is_local and not path.exists():
        raise ExportError(f"{source}: no such file")
    if not is_local and path.suffix == ".pt":
        log(f"{source} is not a local file: asking Ultralytics to download it")
    try:
        return YOLO(source, verbose=False)
    except FileNotFoundError as exc:
        raise ExportError(f"{source}: not a local file and not a model Ultralytics knows ({exc})") from exc
    except (ConnectionError, OSError) as exc:
        raise ExportError(
            f"{source}: download failed ({exc}). This machine may be offline: put the weights file under "
            "weights/ and pass its path, or build the offline fixture models with `python -m export fixtures`."
        ) from exc


def supported_task(task: object) -> Task | None:
    """`task` when this server serves it, else None."""
    return next((t for t in TASKS if t == task), None)


def default_imgsz(yolo: object) -> int:
    """The size the weights were trained at (what Ultralytics' predict uses by default), else 224 for a classifier
    (Ultralytics' ImageNet size) and 640 for the rest."""
    size = getattr(yolo, "overrides", {}).get("imgsz")
    if isinstance(size, int):
        return size
    if isinstance(size, (list, tuple)) and size:
        return int(max(size))
    return 224 if getattr(yolo, "task", None) == "classify" else 640


def export_onnx(yolo: YOLO, workdir: Path, imgsz: int) -> Path:
    """Ultralytics' own ONNX export with dynamic batch/height/width; returns the .onnx path."""
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"exporting to ONNX (dynamic batch and image size, imgsz={imgsz}) ...")
    started = time.perf_counter()
    out = yolo.export(format="onnx", dynamic=True, simplify=True, imgsz=imgsz, batch=1, device="cpu", verbose=False)
    path = Path(out)
    target = workdir / "source.onnx"
    shutil.move(str(path), target)
    log(f"ONNX export done in {time.perf_counter() - started:.1f} s")
    return target


def built_with() -> dict[str, str]:
    """The versions of what exports a model (recorded in its config; the newer APIs' answers report them as `version`:
    the gateway itself runs neither torch nor Ultralytics). "unknown" for a package that is not installed."""
    out = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "ultralytics"):
        out[package] = "unknown"
        for distribution in (package, f"{package}-opencv-headless"):  # Ultralytics' headless build names itself so
            try:
                out[package] = version(distribution)
                break
            except PackageNotFoundError:
                continue
    return out


def model_spec(
    name: str,
    source_onnx: Path,
    served_onnx: Path,
    input_format: InputFormat,
    origin: str,
    untrained: bool,
    output_layout: OutputLayout = RAW,
) -> ModelSpec:
    meta = onnx_graph.read_metadata(source_onnx)
    found = meta.get("task", "")
    task = supported_task(found)
    if task is None:
        raise ExportError(f"task {found!r} is not supported: this server serves {', '.join(TASKS)} models")
    names = {int(k): v for k, v in ast.literal_eval(meta["names"]).items()}
    imgsz = ast.literal_eval(meta.get("imgsz", "[640, 640]"))
    inputs, outputs = onnx_graph.io_signature(served_onnx)
    kpt_shape = ast.literal_eval(meta["kpt_shape"]) if "kpt_shape" in meta else None
    return ModelSpec(
        name=name,
        task=task,
        names=names,
        stride=int(float(meta.get("stride", "32"))),
        imgsz=int(max(imgsz)) if isinstance(imgsz, (list, tuple)) else int(imgsz),
        inputs=[Tensor(n, d, dims[1:]) for n, d, dims in inputs],
        outputs=[Tensor(n, d, dims[1:]) for n, d, dims in outputs],
        input_format=input_format,
        output_layout=output_layout,
        kpt_shape=list(kpt_shape) if kpt_shape else None,
        source=origin,
        untrained=untrained,
        built_with=built_with(),
    )


def export_model(
    source: str,
    repository: Path,
    serving: Serving,
    model_id: str | None = None,
    imgsz: int | None = None,
    fuse: bool = True,
    untrained: bool = False,
    compact: bool = True,
) -> Path:
    """Export `source` into `repository/<model_id>/`; returns that directory. Verifies what it wrote.

    imgsz: trace size and the model's default `size`; None: `default_imgsz`.
    """
    yolo = load_model(source)
    found = getattr(yolo, "task", None)
    task = supported_task(found)
    if task is None:
        raise ExportError(f"{source}: task {found!r} is not supported; use a {', '.join(TASKS)} model")
    imgsz = imgsz or default_imgsz(yolo)
    model_id = model_id or Path(source).stem
    if not model_id or "/" in model_id or model_id.startswith("."):
        raise ExportError(f"invalid model id {model_id!r}")
    untrained = untrained or Path(source).suffix in {".yaml", ".yml"}

    model_dir = repository / model_id
    staging = repository / f".{model_id}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "1").mkdir(parents=True)

    source_onnx = export_onnx(yolo, staging, imgsz)
    served_onnx = staging / "1" / "model.onnx"
    if fuse:
        log("fusing preprocessing (uint8 NHWC BGR in; RGB, CHW, /255 inside the graph)")
        onnx_graph.fuse_preprocessing(source_onnx, served_onnx)
        input_format: InputFormat = UINT8_NHWC_BGR
    else:
        shutil.copy(source_onnx, served_onnx)
        input_format = FLOAT32_NCHW_RGB
    nc = len(getattr(yolo, "names", {}) or {})
    output_layout: OutputLayout = RAW
    if compact and nc > 2 and task in COMPACT_TASKS:  # with one or two classes the compact rows save nothing
        log(f"compacting output0: best score and class instead of {nc} class scores per anchor")
        onnx_graph.compact_output(served_onnx, nc)
        output_layout = COMPACT
    spec = model_spec(model_id, source_onnx, served_onnx, input_format, Path(source).name, untrained, output_layout)

    if serving.target == "python":
        shutil.copy(PYTHON_BACKEND_MODEL, staging / "1" / "model.py")
    elif serving.target == "tensorrt":
        from export import tensorrt

        tensorrt.build_engine(served_onnx, staging / "1" / "model.plan", spec, serving, log)
        served_onnx.unlink()

    text = triton_config.render(spec, serving)
    triton_config.parse(text)  # verify before anything is replaced
    (staging / "config.pbtxt").write_text(text)
    verify(staging, spec, serving)

    shutil.rmtree(model_dir, ignore_errors=True)
    staging.rename(model_dir)
    log(f"wrote {model_dir} (task={spec.task}, classes={len(spec.names)}, target={serving.target})")
    return model_dir


def verify(model_dir: Path, spec: ModelSpec, serving: Serving) -> None:
    """Run the served ONNX once on a letterboxed-size dummy and check its outputs match the source graph."""
    if serving.target == "tensorrt":
        return  # the engine was checked by the builder; it cannot run without a GPU
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(1, 96, 128, 3), dtype=np.uint8)
    served = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(model_dir / "source.onnx"), providers=["CPUExecutionProvider"])
    as_float = (image[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)) / np.float32(255)
    feed = image if spec.input_format == UINT8_NHWC_BGR else as_float
    got = served.run(None, {spec.inputs[0].name: feed})
    want = reference.run(None, {reference.get_inputs()[0].name: as_float})
    if spec.output_layout == COMPACT:
        want[0] = onnx_graph.compact_reference(want[0], len(spec.names))
    for g, w, t in zip(got, want, spec.outputs):
        diff = float(np.abs(g - w).max())
        if g.shape != w.shape or diff > 1e-4:
            raise ExportError(f"verification failed for output {t.name}: shape {g.shape} vs {w.shape}, max diff {diff}")
    log(f"verified {model_dir.name}: served graph matches source.onnx on a test input")
