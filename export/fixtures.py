"""Deterministic, untrained-but-lively fixture models for tests and offline machines.

A freshly initialised YOLOv8 scores every anchor the same (activations shrink layer by layer), so comparisons
against Ultralytics would be vacuous. We calibrate BatchNorm statistics on real photos (cumulative average over a
few train-mode passes) and then shift the classification biases so that a handful to ~100 boxes per photo clear
confidence 0.25, with well-spread scores (oriented-box models too; their angles come from the calibrated, untrained
angle head). Classifiers instead get their final layer scaled until the top class takes a sensible share of the
probability. Built from Ultralytics' architecture YAMLs with a fixed seed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from ultralytics import YOLO

from export.triton_config import Serving

FIXTURE_YAMLS = {
    "yolov8n": "yolov8n.yaml",
    "yolov8n-seg": "yolov8n-seg.yaml",
    "yolov8n-pose": "yolov8n-pose.yaml",
    "yolo11n": "yolo11n.yaml",
    "yolo11n-seg": "yolo11n-seg.yaml",
    "yolo11n-pose": "yolo11n-pose.yaml",
    "yolov8n-cls": "yolov8n-cls.yaml",
    "yolov8n-obb": "yolov8n-obb.yaml",
    "yolo11n-cls": "yolo11n-cls.yaml",
    "yolo11n-obb": "yolo11n-obb.yaml",
}
# Class names per task, from the datasets Ultralytics ships (the YAMLs alone name classes "0", "1", ...): ImageNet's
# 1000 for classifiers, DOTA v1's 15 for oriented boxes (the head is rebuilt for 15 classes), COCO's for the rest.
DATASETS = {"classify": "ImageNet.yaml", "obb": "DOTAv1.yaml"}

# Untrained features respond far more to some photos than to others (bus.jpg lights up ~30x more anchors than
# zidane.jpg), so the bias is tuned on the weaker photo: it should give a handful of detections at 0.25, which
# leaves bus.jpg below the 300-detection cap. Few active classes make class-aware NMS suppress like a real model.
TARGET_DETECTIONS = (4, 16)
ACTIVE_CLASSES = 8
MAX_CANDIDATES = 2000  # anchors over the threshold beyond which the count is "too many" (of 8400 at 640)
# Classifiers: the top class gets this much probability on the peakier photo, so neither photo saturates at 1.0.
TARGET_TOP1 = (0.3, 0.6)


def _calibration_batch(size: int = 640, classify: bool = False) -> "torch.Tensor":
    """Bundled photos and variants as the predictor sees them: letterboxed, or resized and centre-cropped (classify)."""
    import cv2
    import torch
    from PIL import Image
    from ultralytics.data.augment import LetterBox, classify_transforms
    from ultralytics.utils import ASSETS

    images = [cv2.imread(str(ASSETS / name)) for name in ("bus.jpg", "zidane.jpg")]
    variants = []
    for im in images:
        h, w = im.shape[:2]
        variants += [
            im,
            im[:, ::-1],
            im[h // 4 :, w // 4 :],
            cv2.cvtColor(cv2.cvtColor(im, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR),
        ]
    if classify:
        crop = classify_transforms(size).transforms[:2]
        batch = np.stack([np.asarray(crop[1](crop[0](Image.fromarray(np.ascontiguousarray(v))))) for v in variants])
    else:
        box = LetterBox((size, size), auto=False)
        batch = np.stack([box(image=np.ascontiguousarray(v)) for v in variants])
    return torch.from_numpy(batch[..., ::-1].transpose(0, 3, 1, 2).copy()).float() / 255


def build_fixture(model_id: str, out_dir: Path, seed: int | None = None) -> Path:
    """Build `<out_dir>/<model_id>.pt`, an Ultralytics checkpoint with real dataset names; returns its path."""
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load
    from ultralytics.utils import ROOT, YAML

    if model_id not in FIXTURE_YAMLS:
        raise ValueError(f"no fixture recipe for {model_id!r}; known: {', '.join(FIXTURE_YAMLS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{model_id}.pt"
    if target.exists():
        return target

    seed = zlib.crc32(model_id.encode()) if seed is None else seed
    torch.manual_seed(seed)
    yolo = YOLO(FIXTURE_YAMLS[model_id], verbose=False)
    names = YAML.load(ROOT / "cfg/datasets" / DATASETS.get(yolo.task, "coco.yaml"))["names"]
    if yolo.task == "obb":
        cfg = {**yaml_model_load(FIXTURE_YAMLS[model_id]), "nc": len(names)}
        rebuilt = type(yolo.model)(cfg, verbose=False)
        rebuilt.args, rebuilt.task = yolo.model.args, yolo.model.task
        yolo.model = rebuilt
    model = yolo.model
    head = model.model[-1]
    nc = head.linear.out_features if yolo.task == "classify" else head.nc
    model.names = {i: names[i] for i in range(nc)}  # pose: {0: "person"}, 17 COCO keypoints

    images = _calibration_batch(224, classify=True) if yolo.task == "classify" else _calibration_batch()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(images)
    model.eval()

    if yolo.task == "classify":
        _tune_classifier(yolo)
        yolo.ckpt["train_args"] = {"task": "classify", "imgsz": 224}  # loaded back as its size: the default `size`
    else:
        _tune_class_biases(yolo, seed)
    yolo.save(str(target))
    return target


def export_fixture(
    model_id: str,
    repository: Path,
    cache: Path,
    serving: Serving,
    imgsz: int | None = None,
    fuse: bool = True,
    compact: bool = True,
) -> Path:
    """Build (or reuse) the fixture checkpoint in `cache` and export it into `repository` as `model_id`, untrained."""
    from export.exporter import export_model

    pt = build_fixture(model_id, cache)
    return export_model(str(pt), repository, serving, model_id, imgsz, fuse, untrained=True, compact=compact)


def _tune_class_biases(yolo: "YOLO", seed: int) -> None:
    """Bisect a common classification-bias shift until zidane.jpg gets TARGET_DETECTIONS boxes at confidence 0.25."""
    import cv2
    import torch
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils import ASSETS

    head = yolo.model.model[-1]
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.full((head.nc,), -12.0)  # logit -12: a class that never fires
    offsets[torch.randperm(head.nc, generator=generator)[: min(ACTIVE_CLASSES, head.nc)]] = 0.0
    base = [seq[-1].bias.detach().clone() for seq in head.cv3]
    photo = cv2.imread(str(ASSETS / "zidane.jpg"))
    boxed = LetterBox((640, 640), auto=True, stride=32)(image=photo)
    tensor = torch.from_numpy(boxed[..., ::-1].transpose(2, 0, 1).copy())[None].float() / 255

    def count(shift: float) -> int:
        with torch.no_grad():
            for seq, bias in zip(head.cv3, base):
                seq[-1].bias.copy_(bias + offsets + shift)
            # Rotated NMS (obb) is quadratic in the candidates: thousands of anchors over the threshold are "too many"
            # without running it.
            pred = yolo.model(tensor)[0]
            pred = pred[0] if isinstance(pred, (list, tuple)) else pred  # segment: (predictions, prototypes)
            candidates = int((pred[:, 4 : 4 + head.nc].amax(1) > 0.25).sum())
        if candidates > MAX_CANDIDATES:
            return candidates
        yolo.predictor = None
        return len(yolo.predict(photo, imgsz=640, conf=0.25, verbose=False)[0])  # boxes, or oriented boxes

    _bisect(count, -10.0, 20.0, TARGET_DETECTIONS, "class biases (detections on zidane.jpg)")


def _tune_classifier(yolo: "YOLO") -> None:
    """Bisect a scale of the final linear layer until the peakier of the two photos gets TARGET_TOP1 for its top class.

    Scaling weights and bias together scales the logits, so the top probability rises monotonically with the scale.
    """
    import cv2
    import torch
    from ultralytics.utils import ASSETS

    linear = yolo.model.model[-1].linear
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    photos = [cv2.imread(str(ASSETS / name)) for name in ("bus.jpg", "zidane.jpg")]

    def top1(log_scale: float) -> float:
        with torch.no_grad():
            linear.weight.copy_(weight * 2**log_scale)
            linear.bias.copy_(bias * 2**log_scale)
        yolo.predictor = None
        return max(float(r.probs.top1conf) for r in yolo.predict(photos, imgsz=224, verbose=False))

    _bisect(top1, -4.0, 12.0, TARGET_TOP1, "classifier scale (top-1 probability)")


def _bisect(measure: Callable[[float], float], low: float, high: float, target: tuple[float, float], what: str) -> None:
    """Bisect x in [low, high] until measure(x), which rises with x and leaves the model set to x, lands in `target`."""
    for _ in range(24):
        mid = (low + high) / 2
        value = measure(mid)
        if target[0] <= value <= target[1]:
            return
        low, high = (mid, high) if value < target[0] else (low, mid)
    raise RuntimeError(f"could not tune the fixture's {what} into {target}")
