"""Does a served version answer as its checkpoint does? Ultralytics' answers vs ours, within the suite's tolerances.

The reference is made in the sandbox from the checkpoint itself (`make_reference`: torch, Ultralytics' predict) on the
photos Ultralytics ships (bus.jpg, zidane.jpg) and saved beside the export as `reference.json` (the summaries) and
`reference.npz` (each photo letterboxed as Ultralytics' predict does, and the model's raw first output on it). A
version is checked twice against it: in the verifying stage on ONNX Runtime, and in the loading stage through every
Triton; both times through the gateway's own pre- and post-processing (export/gateway_parts.py).

Two comparisons, with the tolerances of tests/test_parity.py (bench/parity.py):
- the answers (`compare_answers`): class, name and confidence (1e-3), box corners (1 px), keypoints, polygons (IoU
  0.95). A detection whose confidence is within 1e-3 of where the answer was cut (the confidence threshold, or the
  last row kept when the list was truncated) may be missing on either side: both sides computed it within the
  tolerance, and a rounding decided which side of the cut it fell.
- the raw output (`compare_raw`): every anchor's box (1 px) and best class score (1e-3) on the same letterboxed input,
  so that a model without confident detections on the photos (an untrained one) is still compared on something.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.parity import CONF_TOL, MIN_POLYGON_IOU, PIXEL_TOL, polygon_iou

PHOTOS = ("bus.jpg", "zidane.jpg")
CONFIDENCE = 0.25  # Ultralytics' and the gateway's default
IOU = 0.45  # the v1 API's default
CLASSIFY_TOP = 5
MAX_DET = 300
REFERENCE_JSON = "reference.json"
REFERENCE_NPZ = "reference.npz"


def photo_dir() -> Path:
    """Ultralytics' bundled photos, found without importing it (the worker imports neither torch nor Ultralytics)."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the ultralytics package (its bundled photos) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "assets"


def make_reference(yolo: Any, model_dir: Path, imgsz: int) -> dict[str, Any]:
    """Ultralytics' own answers of the checkpoint `yolo` (a YOLO object on the .pt) on the photos, and its raw first
    output on each letterboxed photo; written into `model_dir` (sandbox only: imports torch)."""
    import cv2
    import torch
    from ultralytics.data.augment import LetterBox

    photos = photo_dir()
    entries = []
    letterboxed: dict[str, NDArray[Any]] = {}
    for name in PHOTOS:
        result = yolo.predict(str(photos / name), imgsz=imgsz, conf=CONFIDENCE, iou=IOU, verbose=False)[0]
        entries.append({"photo": name, "summary": result.summary()})
        if yolo.task == "classify":
            continue  # its top five are compared in full; its raw output is those probabilities
        boxed = LetterBox((imgsz, imgsz), auto=True, stride=int(max(yolo.model.stride)))(
            image=cv2.imread(str(photos / name))
        )
        x = torch.from_numpy(np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1)))[None].float() / 255
        with torch.no_grad():
            raw = _first_tensor(yolo.model(x)).float().numpy()
        letterboxed[f"{name}:input"] = boxed
        letterboxed[f"{name}:output"] = raw
    reference = {"imgsz": imgsz, "confidence": CONFIDENCE, "iou": IOU, "task": yolo.task, "photos": entries}
    (model_dir / REFERENCE_JSON).write_text(json.dumps(reference))
    if letterboxed:
        np.savez_compressed(model_dir / REFERENCE_NPZ, **letterboxed)
    return reference


def _first_tensor(out: Any) -> Any:
    """The model's first output tensor: Ultralytics' heads return (tensor, extras) or [[tensor, protos], extras]."""
    while isinstance(out, (list, tuple)):
        out = out[0]
    return out


def load_reference(model_dir: Path) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
    reference: dict[str, Any] = json.loads((model_dir / REFERENCE_JSON).read_text())
    raw: dict[str, NDArray[Any]] = {}
    if (model_dir / REFERENCE_NPZ).exists():
        with np.load(model_dir / REFERENCE_NPZ, allow_pickle=False) as data:
            raw = {k: data[k] for k in data.files}
    return reference, raw


def compare_answers(photo: str, ours: Sequence[dict[str, Any]], ref: Sequence[dict[str, Any]], cut: float) -> list[str]:
    """Why `ours` (the gateway's rows for one photo) differs from Ultralytics' `ref`; [] when it does not. `cut`: the
    confidence threshold of both (classifiers: 0)."""
    limit = CLASSIFY_TOP if ref and "box" not in ref[0] else MAX_DET
    edges = [cut]
    for rows in (ref, ours):
        if len(rows) >= limit:  # truncated: the last row kept is a cut too
            edges.append(min(r["confidence"] for r in rows))
    edge = max(edges)

    def firm(row: dict[str, Any]) -> bool:
        return bool(row["confidence"] >= edge + CONF_TOL)

    problems: list[str] = []
    used: set[int] = set()
    for i, want in enumerate(ref):
        best: tuple[float, int, list[str]] | None = None
        for j, got in enumerate(ours):
            if j in used or (got["class"], got["name"]) != (want["class"], want["name"]):
                continue
            why = _differences(got, want)
            distance = _box_distance(got, want)
            if best is None or (not why, -distance) > (not best[2], -best[0]):
                best = (distance, j, why)
        if best is not None and not best[2]:
            used.add(best[1])
        elif firm(want):
            label = f"{want['name']} {want['confidence']:.3f}"
            detail = "; ".join(best[2]) if best is not None else "no row of that class"
            problems.append(f"{photo}: Ultralytics' row {i} ({label}) has no equal in the served answer ({detail})")
    for j, got in enumerate(ours):
        if j not in used and firm(got):
            problems.append(
                f"{photo}: the served answer has a row Ultralytics does not ({got['name']} {got['confidence']:.3f})"
            )
    return problems


def _box_distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    if "box" not in b or "box" not in a:
        return 0.0
    return max((abs(a["box"].get(k, np.inf) - v) for k, v in b["box"].items()), default=0.0)


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """How row `a` differs from `b` beyond the tolerances (pixels, not normalised)."""
    out = []
    if abs(a["confidence"] - b["confidence"]) > CONF_TOL:
        out.append(f"confidence {a['confidence']:.4f} vs {b['confidence']:.4f}")
    if ("box" in a) != ("box" in b) or ("box" in b and set(a["box"]) != set(b["box"])):
        out.append("box corners differ in kind")
    elif "box" in b and (d := _box_distance(a, b)) > PIXEL_TOL:
        out.append(f"box corner off by {d:.2f} px")
    if "keypoints" in b:
        ka, kb = a.get("keypoints"), b["keypoints"]
        if ka is None:
            out.append("no keypoints")
        else:
            dxy = max(_max_diff(ka["x"], kb["x"]), _max_diff(ka["y"], kb["y"]))
            dv = _max_diff(ka["visible"], kb["visible"])
            if dxy > PIXEL_TOL or dv > CONF_TOL:
                out.append(f"keypoints off by {dxy:.2f} px, visibility by {dv:.4f}")
    if "segments" in b:
        if "segments" not in a:
            out.append("no polygon")
        elif (iou := polygon_iou(a["segments"], b["segments"], (1.0, 1.0))) < MIN_POLYGON_IOU:
            out.append(f"polygon IoU {iou:.3f} < {MIN_POLYGON_IOU}")
    return out


def _max_diff(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float("inf") if x.shape != y.shape else float(np.abs(x - y).max(initial=0.0))


def compare_raw(photo: str, served: NDArray[Any], raw: NDArray[Any], nc: int, compact: bool) -> list[str]:
    """Why the served graph's first output differs from the checkpoint's raw one on the same letterboxed photo.

    raw: (1, 4+nc+extra, A) from torch; served: the same, or (1, 6+extra, A) when compacted (box, best score, class).
    Compared: every anchor's box rows (letterboxed pixels) and best class score."""
    if served.ndim != 3 or raw.ndim != 3 or served.shape[2] != raw.shape[2]:
        return [f"{photo}: the served output has shape {served.shape}, the checkpoint's {raw.shape}"]
    box = float(np.abs(served[0, :4] - raw[0, :4]).max())
    want = raw[0, 4 : 4 + nc].max(axis=0)
    got = served[0, 4] if compact else served[0, 4 : 4 + nc].max(axis=0)
    score = float(np.abs(got - want).max())
    problems = []
    if box > PIXEL_TOL:
        problems.append(f"{photo}: raw boxes differ by up to {box:.3f} px (tolerance {PIXEL_TOL:g})")
    if score > CONF_TOL:
        problems.append(f"{photo}: raw class scores differ by up to {score:.5f} (tolerance {CONF_TOL:g})")
    return problems


def _cut(reference: dict[str, Any]) -> float:
    return 0.0 if reference.get("task") == "classify" else float(reference["confidence"])


def _args(reference: dict[str, Any]) -> Any:
    from export.gateway_parts import PredictArgs

    return PredictArgs(size=int(reference["imgsz"]), confidence=float(reference["confidence"]), iou=reference["iou"])


def onnx_problems(model_dir: Path) -> tuple[list[str], int]:
    """The verifying stage: the served graph on ONNX Runtime through the gateway's pre- and post-processing, against
    the reference; (problems, rows compared)."""
    import onnxruntime as ort

    from export.gateway_parts import COMPACT, model_info, prepare, finish

    info = model_info(model_dir)
    reference, raw = load_reference(model_dir)
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    photos, args = photo_dir(), _args(reference)
    problems: list[str] = []
    rows = 0
    for entry in reference["photos"]:
        name = entry["photo"]
        prepared = prepare((photos / name).read_bytes(), info, args.size, True, 10**9, {})
        outputs = session.run(list(info.outputs), {info.input_name: prepared.tensor[None]})
        answer = finish(info, {k: v[0] for k, v in zip(info.outputs, outputs)}, prepared.box, args)
        problems += compare_answers(name, answer, entry["summary"], _cut(reference))
        rows += len(entry["summary"])
        if f"{name}:input" in raw:
            served = session.run([info.outputs[0]], {info.input_name: _feed(info, raw[f"{name}:input"])})[0]
            problems += compare_raw(name, served, raw[f"{name}:output"], len(info.names), info.output_layout == COMPACT)
    return problems, rows


async def triton_problems(triton: Any, name: str, model_dir: Path) -> tuple[list[str], int]:
    """The loading stage: the same checks through a Triton (`gateway.triton.Triton`) serving the version as `name`."""
    from dataclasses import replace

    from export.gateway_parts import COMPACT, finish, prepare

    info = replace(await triton.model(name), name=name)
    reference, raw = load_reference(model_dir)
    photos, args = photo_dir(), _args(reference)
    problems: list[str] = []
    rows = 0
    for entry in reference["photos"]:
        photo = entry["photo"]
        prepared = prepare((photos / photo).read_bytes(), info, args.size, True, 10**9, {})
        async with triton.infer(info, [prepared.tensor]) as outputs:
            answer = finish(info, {k: v[0] for k, v in outputs.items()}, prepared.box, args)
        problems += compare_answers(photo, answer, entry["summary"], _cut(reference))
        rows += len(entry["summary"])
        if f"{photo}:input" in raw:
            async with triton.infer(info, [_feed(info, raw[f"{photo}:input"])[0]]) as outputs:
                served = np.array(outputs[info.outputs[0]])
            problems += compare_raw(
                photo, served, raw[f"{photo}:output"], len(info.names), info.output_layout == COMPACT
            )
    return problems, rows


def _feed(info: Any, boxed: NDArray[np.uint8]) -> NDArray[Any]:
    """The served graph's input for one letterboxed (H, W, 3) BGR photo, with the batch dimension."""
    from export.gateway_parts import UINT8_NHWC_BGR

    if info.input_format == UINT8_NHWC_BGR:
        return boxed[None]
    return (np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1)).astype(np.float32) / np.float32(255))[None]
