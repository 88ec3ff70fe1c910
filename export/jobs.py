"""What the sandbox runs (export/sandbox.py): each job gets its arguments and its private folder, returns a JSON-able
answer, and raises Refused with a reason for the uploader when the checkpoint is not one we serve.

    check    the pickle allow-list scan (nothing unpickled yet), then Ultralytics' safe loader: a YOLOv8 or YOLO11
             model of a task we serve? Its task, class names, trained size, and the versions of what loaded it.
    export   the export (`export.exporter.export_model`, the serving defaults of `make export`) into out/<name>/,
             and the checkpoint's own answers on Ultralytics' photos beside it (export/verify.py `make_reference`).
    verify   the exported graph on ONNX Runtime through the gateway's pre- and post-processing vs that reference.
    probe    what the confinement allows (network, processes, writes outside the folder): the worker logs it at start.
"""

from __future__ import annotations

import ctypes
import os
import platform
import socket
import struct
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from export.sandbox import PROGRESS

# The model classes and heads we export and post-process (gateway/vision/postprocess.py), by class name.
SERVED = {
    "DetectionModel": ("detect", "Detect"),
    "SegmentationModel": ("segment", "Segment"),
    "PoseModel": ("pose", "Pose"),
    "OBBModel": ("obb", "OBB"),
    "ClassificationModel": ("classify", "Classify"),
}
# Architectures Ultralytics loads that this server does not serve, and how to say so.
KNOWN_OTHERS = {
    "WorldModel": "a YOLO-World (open-vocabulary) model",
    "YOLOEModel": "a YOLOE (open-vocabulary) model",
    "YOLOESegModel": "a YOLOE (open-vocabulary) segmentation model",
    "RTDETRDetectionModel": "an RT-DETR (transformer) detector",
}
SERVES = "this server serves YOLOv8 and YOLO11 detect, segment, pose, obb and classify checkpoints"


class Refused(Exception):
    """The checkpoint is not one we export; the message says why, for the uploader."""


def run(job: str, args: dict[str, Any], folder: Path) -> dict[str, Any]:
    if job == "check":
        return check(Path(args["path"]))
    if job == "export":
        return export(Path(args["path"]), folder / "out", str(args["name"]), args.get("imgsz"))
    if job == "verify":
        return verify(Path(args["model_dir"]))
    if job == "probe":
        return probe(folder, Path(args["outside"]), int(args["port"]))
    raise ValueError(f"unknown job {job!r}")


def progress(value: float) -> None:
    Path(PROGRESS).write_text(f"{value:.3f}")  # the working directory is the private folder


def built_with() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package, name in (("torch", "torch"), ("torchvision", "torchvision"), ("ultralytics", "ultralytics")):
        try:
            out[name] = version(package)
        except PackageNotFoundError:
            try:
                out[name] = version(f"{package}-opencv-headless")
            except PackageNotFoundError:
                out[name] = "unknown"
    return out


def load(path: Path) -> Any:
    """The checkpoint as an Ultralytics YOLO object, after the allow-list scan, through Ultralytics' safe loader."""
    from export.pickle_scan import UnsafeCheckpoint, scan_checkpoint

    try:
        scan_checkpoint(path)
    except UnsafeCheckpoint as exc:
        raise Refused(f"unsafe checkpoint: {exc}") from None
    progress(0.3)
    if os.environ.get("ULTRALYTICS_SAFE_LOAD") != "1":
        raise RuntimeError("ULTRALYTICS_SAFE_LOAD is not set: refusing to load a checkpoint without the safe loader")
    from ultralytics import YOLO

    try:
        return YOLO(str(path), verbose=False)
    except Exception as exc:  # the safe loader's refusals and a file that is no checkpoint: say which
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Refused(f"not an Ultralytics YOLO checkpoint Ultralytics' safe loader accepts: {first[:300]}") from None


def describe(yolo: Any) -> dict[str, Any]:
    """Task, class names, trained size of a loaded checkpoint we serve; Refused naming what it is otherwise."""
    from export.exporter import default_imgsz

    model = getattr(yolo, "model", None)
    kind = type(model).__name__
    if kind in KNOWN_OTHERS:
        raise Refused(f"{KNOWN_OTHERS[kind]} ({kind}) is not served: {SERVES}")
    if kind not in SERVED:
        raise Refused(f"a {kind} is not served: {SERVES}")
    task, head_kind = SERVED[kind]
    layers = getattr(model, "model", None)
    head = layers[-1] if layers is not None and len(layers) else None
    head_name = type(head).__name__
    if head_name != head_kind:
        raise Refused(f"a {task} model with a {head_name} head is not served (expected {head_kind}): {SERVES}")
    if getattr(head, "one2one_cv2", None) is not None or getattr(head, "end2end", False):
        raise Refused(f"an NMS-free (end-to-end) {task} head such as YOLOv10's or YOLO26's is not served yet: {SERVES}")
    names = {int(k): str(v) for k, v in dict(getattr(yolo, "names", {}) or {}).items()}
    if not names:
        raise Refused("the checkpoint has no class names")
    return {"task": task, "names": names, "imgsz": default_imgsz(yolo), "model": kind, "head": head_name}


def check(path: Path) -> dict[str, Any]:
    progress(0.1)
    yolo = load(path)
    progress(0.8)
    return {**describe(yolo), "built_with": built_with()}


def export(path: Path, out: Path, name: str, imgsz: int | None) -> dict[str, Any]:
    from export.exporter import export_model
    from export.triton_config import serving_defaults
    from export.verify import make_reference

    yolo = load(path)
    found = describe(yolo)
    size = int(imgsz or found["imgsz"])
    progress(0.4)
    model_dir = export_model(str(path), out, serving_defaults("python"), name, size)
    progress(0.8)
    make_reference(yolo, model_dir, size)
    progress(1.0)
    return {"model_dir": model_dir.name, "imgsz": size, "names": found["names"], "task": found["task"]}


def verify(model_dir: Path) -> dict[str, Any]:
    from export.verify import onnx_problems

    problems, rows = onnx_problems(model_dir)
    progress(1.0)
    return {"problems": problems, "rows": rows}


def probe(folder: Path, outside: Path, port: int) -> dict[str, Any]:
    """Try what the confinement must stop; each answer is "refused: ..." or what happened."""
    out: dict[str, Any] = {}

    def attempt(key: str, action: Any) -> None:
        try:
            action()
            out[key] = "allowed"
        except OSError as exc:
            out[key] = f"refused: {exc}"

    def connect() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass

    def write_outside() -> None:
        outside.write_text("written from the sandbox")

    def shell() -> None:
        if os.system(f"touch {outside}.system") != 0:
            raise OSError("the shell failed")

    def connect_native() -> None:
        """connect(2) through libc, beneath Python's audit hook: only the network namespace stops this one."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "socket() failed")
        address = struct.pack("=HH4s8x", socket.AF_INET, socket.htons(port), socket.inet_aton("127.0.0.1"))
        try:
            if libc.connect(fd, address, len(address)) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, os.strerror(errno))
        finally:
            libc.close(fd)

    attempt("connect", connect)
    attempt("connect_native", connect_native)
    attempt("write_outside", write_outside)
    attempt("os_system", shell)
    attempt("subprocess", lambda: subprocess.run(["true"], check=True))
    attempt("write_inside", lambda: (folder / "inside.txt").write_text("ok"))
    out["uid"] = os.getuid()
    out["environment"] = sorted(os.environ)  # the names only
    return out
