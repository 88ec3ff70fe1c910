"""The HUB inference arguments: parsing and validation (the answers are shaped in `responses`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import BadRequest

SIZE_RANGE = (32, 1280)
CONFIDENCE_RANGE = (0.01, 1.0)
IOU_RANGE = (0.0, 0.95)
MAX_DET_RANGE = (1, 300)
FORMATS = {"json": "json", "image": "jpeg", "jpeg": "jpeg", "jpg": "jpeg", "png": "png"}
TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off"}

# The response format a route answers in: v1 = the HUB API, v2 = the newer Ultralytics API.
Style = Literal["v1", "v2"]


@dataclass(frozen=True)
class PredictArgs:
    size: int = 640
    confidence: float = 0.25
    iou: float = 0.45
    normalize: bool = False
    url: str = ""
    format: str = "json"  # extension to the HUB arguments: "json", or an annotated "jpeg"/"png"
    max_det: int = 300  # extensions: Ultralytics' max_det, classes and agnostic_nms
    classes: tuple[int, ...] | None = None
    agnostic: bool = False


def _number(name: str, raw: str, kind: type, low: float, high: float) -> Any:
    text = raw.strip()
    try:
        value = kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise BadRequest(f"Invalid '{name}' value {raw[:32]!r}: must be {noun} from {low:g} to {high:g}.") from None
    if isinstance(value, float) and not math.isfinite(value) or not low <= value <= high:
        raise BadRequest(f"Invalid '{name}' value {raw[:32]!r}: valid range is {low:g} to {high:g}.")
    return value


# The newer Ultralytics API's names for the HUB v1 arguments, and its NMS IoU default (that of `YOLO.predict`).
ALIASES = {"imgsz": "size", "conf": "confidence"}
IOU_DEFAULT: dict[Style, float] = {"v1": 0.45, "v2": 0.7}


def parse_args(fields: Mapping[str, str], default_size: int = 640, style: Style = "v1") -> PredictArgs:
    """PredictArgs from merged query/form fields (form wins; merged by the caller). Unknown fields are ignored.

    Both styles accept both spellings (`size`/`imgsz`, `confidence`/`conf`); only the IoU default differs.
    """
    fields = dict(fields)
    for alias, name in ALIASES.items():
        if fields.get(alias, "").strip():
            if fields.get(name, "").strip():
                raise BadRequest(f"Both '{alias}' and '{name}' were given; they are the same argument, send one.")
            fields[name] = fields[alias]
    size = default_size
    if fields.get("size", "").strip():
        size = _number("size", fields["size"], int, *SIZE_RANGE)
    confidence = _number("confidence", fields["confidence"], float, *CONFIDENCE_RANGE) if fields.get("confidence", "").strip() else 0.25
    iou = _number("iou", fields["iou"], float, *IOU_RANGE) if fields.get("iou", "").strip() else IOU_DEFAULT[style]
    normalize = _flag(fields, "normalize")
    agnostic = _flag(fields, "agnostic")
    max_det = _number("max_det", fields["max_det"], int, *MAX_DET_RANGE) if fields.get("max_det", "").strip() else 300
    classes = None
    if fields.get("classes", "").strip():
        try:
            classes = tuple(sorted({int(c) for c in fields["classes"].replace(" ", "").split(",") if c}))
        except ValueError:
            classes = ()
        if not classes or min(classes) < 0:
            raise BadRequest(f"Invalid 'classes' value {fields['classes'][:64]!r}: use class ids like 0,2,5.")
    fmt = fields.get("format", "").strip().lower() or "json"
    if fmt not in FORMATS:
        raise BadRequest(f"Invalid 'format' value {fields['format'][:32]!r}: use json, image (JPEG) or png.")
    return PredictArgs(size, confidence, iou, normalize, fields.get("url", "").strip(), FORMATS[fmt], max_det, classes, agnostic)


def _flag(fields: Mapping[str, str], name: str) -> bool:
    raw = fields.get(name, "").strip().lower()
    if raw and raw not in TRUE | FALSE:
        raise BadRequest(f"Invalid '{name}' value {fields[name][:32]!r}: use true or false.")
    return raw in TRUE
