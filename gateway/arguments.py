"""The prediction arguments: their names, ranges and defaults, parsing and validation (the answers are shaped in
gateway/predict/responses.py)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from gateway.errors import BadRequest

SIZE_RANGE = (32, 1280)
CONFIDENCE_RANGE = (0.01, 1.0)
IOU_RANGE = (0.0, 0.95)
# Ultralytics' predict defaults, shared with post-processing (postprocess.non_max_suppression).
CONFIDENCE_DEFAULT = 0.25
MAX_DET = 300  # the default and the most detections per image
MAX_DET_RANGE = (1, MAX_DET)
DECIMALS = 5  # Results.summary()'s default
DECIMALS_RANGE = (0, 10)  # the newer Ultralytics API's range
VID_STRIDE_RANGE = (1, 1000)  # a video: every n-th frame is analysed
# Tracking (`track`): model.track()'s default confidence, which feeds the trackers' second association (scores from
# 0.1 to 0.25 only extend tracks); the trackers by name (Ultralytics' tracker=bytetrack.yaml is accepted too); what a
# `sequence` name may hold (it is part of a Redis key, after the API key's id)
TRACK_CONFIDENCE = 0.1
TRACKERS = ("bytetrack", "botsort")
SEQUENCE_PATTERN = re.compile(r"[A-Za-z0-9._:/@-]{1,128}")
FORMATS = {"json": "json", "image": "jpeg", "jpeg": "jpeg", "jpg": "jpeg", "png": "png"}
# One vocabulary for every yes/no argument, everywhere (README, OpenAPI, messages). "on" is what an HTML checkbox
# sends, so it stays.
BOOLEAN_WORDS = (("true", "false"), ("1", "0"), ("yes", "no"), ("on", "off"))
TRUE = {t for t, _ in BOOLEAN_WORDS}
FALSE = {f for _, f in BOOLEAN_WORDS}
BOOLEAN_HELP = ", ".join(f"{t}/{f}" for t, f in BOOLEAN_WORDS) + " (any case)"

# Every argument the prediction routes read (`parse_args` reads no other name; the OpenAPI description is built from
# these, and tests/test_docs.py checks both), and the newer Ultralytics API's names for two of them.
ARGUMENTS = (
    "size", "confidence", "iou", "url", "normalize", "format", "max_det", "classes", "agnostic", "vid_stride", "stream",
    "decimals", "source",
    "track", "tracker", "sequence", "details",
)  # fmt: skip
ALIASES = {"imgsz": "size", "conf": "confidence"}

# The dialects of Ultralytics' inference APIs the gateway speaks (gateway/dialects/ knows each one's request and
# answer): HUB v1 as first documented, HUB v1 with the later docs' normalized rows, HUB v1's URL with the newer body,
# predict.ultralytics.com, and the Ultralytics Platform. Named here, below the key store, which records a key's own.
DialectName = Literal["hub", "hub-xywhn", "hub-images", "predict", "platform"]
DIALECT_NAMES: tuple[DialectName, ...] = get_args(DialectName)
# The NMS IoU default of the HUB's dialects and of the Platform's (that of `YOLO.predict`).
IOU_DEFAULT: dict[str, float] = {"hub": 0.45, "platform": 0.7}


@dataclass(frozen=True)
class PredictArgs:
    size: int = 640
    confidence: float = CONFIDENCE_DEFAULT
    iou: float = IOU_DEFAULT["hub"]
    normalize: bool = False
    url: str = ""
    format: str = "json"  # extension to the HUB arguments: "json", or an annotated "jpeg"/"png"
    max_det: int = MAX_DET  # extensions: Ultralytics' max_det, classes and agnostic_nms
    classes: tuple[int, ...] | None = None
    agnostic: bool = False
    vid_stride: int = 1  # a video only: every n-th frame (Ultralytics' vid_stride)
    stream: bool = False  # a video only: answer NDJSON, one line per frame
    decimals: int = DECIMALS  # digits the rows' numbers are rounded to (Ultralytics' summary(decimals=...))
    source: str = ""  # the newer API's alternative to a file: an image URL, or the image's bytes in base64
    track: bool = False  # rows get a track_id (gateway/tracking), as model.track(); implied by `sequence`
    tracker: str = "bytetrack"  # bytetrack or botsort
    sequence: str = ""  # images: continue the tracks of this key's sequence of that name (a camera id, say)
    details: bool = False  # the `{images, metadata}` answers: add the gateway's own fields (arguments, warning, video)


def _given(fields: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """The non-empty arguments: canonical name → (the name the client sent, its value)."""
    given = {name: (name, fields.get(name, "")) for name in ARGUMENTS}
    for alias, name in ALIASES.items():
        value = fields.get(alias, "")
        if value.strip():
            if given[name][1].strip():
                raise BadRequest(f"Both '{alias}' and '{name}' were given; they are the same argument, send one.")
            given[name] = (alias, value)
    return {name: sent for name, sent in given.items() if sent[1].strip()}


def _number(sent: tuple[str, str], kind: type, low: float, high: float) -> Any:
    name, raw = sent
    try:
        value = kind(raw.strip())
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise BadRequest(f"Invalid '{name}' value {raw[:32]!r}: must be {noun} from {low:g} to {high:g}.") from None
    if isinstance(value, float) and not math.isfinite(value) or not low <= value <= high:
        raise BadRequest(f"Invalid '{name}' value {raw[:32]!r}: valid range is {low:g} to {high:g}.")
    return value


def _flag(sent: tuple[str, str] | None) -> bool:
    if sent is None:
        return False
    name, raw = sent
    if raw.strip().lower() not in TRUE | FALSE:
        raise BadRequest(f"Invalid '{name}' value {raw[:32]!r}: use {BOOLEAN_HELP}.")
    return raw.strip().lower() in TRUE


def _classes(raw: str) -> tuple[int, ...]:
    try:
        classes = tuple(sorted({int(c) for c in raw.replace(" ", "").split(",") if c}))
    except ValueError:
        classes = ()
    if not classes or min(classes) < 0:
        raise BadRequest(f"Invalid 'classes' value {raw[:64]!r}: use class ids like 0,2,5.")
    return classes


def _format(raw: str) -> str:
    fmt = raw.strip().lower()
    if fmt not in FORMATS:
        raise BadRequest(f"Invalid 'format' value {raw[:32]!r}: use json, image (JPEG), jpeg, jpg or png.")
    return FORMATS[fmt]


def parse_args(
    fields: Mapping[str, str], default_size: int = 640, iou_default: float = IOU_DEFAULT["hub"]
) -> PredictArgs:
    """PredictArgs from merged query/form fields (form wins; merged by the caller). Unknown fields are ignored.

    Every dialect accepts both spellings (`size`/`imgsz`, `confidence`/`conf`); the dialect gives the IoU default.
    Messages name the argument as the client spelled it.
    """
    given = _given(fields)
    sequence = _sequence(given["sequence"][1]) if "sequence" in given else ""
    track = _flag(given["track"]) if "track" in given else bool(sequence or "tracker" in given)
    if sequence and not track:
        raise BadRequest("'sequence' continues tracks: send it with track=true (or leave 'track' out).")
    return PredictArgs(
        size=_number(given["size"], int, *SIZE_RANGE) if "size" in given else default_size,
        confidence=_number(given["confidence"], float, *CONFIDENCE_RANGE)
        if "confidence" in given
        else (TRACK_CONFIDENCE if track else CONFIDENCE_DEFAULT),
        iou=_number(given["iou"], float, *IOU_RANGE) if "iou" in given else iou_default,
        normalize=_flag(given.get("normalize")),
        url=given["url"][1].strip() if "url" in given else "",
        format=_format(given["format"][1]) if "format" in given else "json",
        max_det=_number(given["max_det"], int, *MAX_DET_RANGE) if "max_det" in given else MAX_DET,
        classes=_classes(given["classes"][1]) if "classes" in given else None,
        agnostic=_flag(given.get("agnostic")),
        vid_stride=_number(given["vid_stride"], int, *VID_STRIDE_RANGE) if "vid_stride" in given else 1,
        stream=_flag(given.get("stream")),
        decimals=_number(given["decimals"], int, *DECIMALS_RANGE) if "decimals" in given else DECIMALS,
        source=given["source"][1].strip() if "source" in given else "",
        track=track,
        tracker=_tracker(given["tracker"][1]) if "tracker" in given else TRACKERS[0],
        sequence=sequence,
        details=_flag(given.get("details")),
    )


def _tracker(raw: str) -> str:
    name = raw.strip().lower().removesuffix(".yaml")
    if name not in TRACKERS:
        raise BadRequest(f"Invalid 'tracker' value {raw[:32]!r}: use bytetrack or botsort.")
    return name


def _sequence(raw: str) -> str:
    name = raw.strip()
    if not SEQUENCE_PATTERN.fullmatch(name):
        raise BadRequest(
            f"Invalid 'sequence' value {raw[:32]!r}: use 1 to 128 letters, digits and . _ : / @ - (e.g. a camera id)."
        )
    return name


def check_classes(classes: tuple[int, ...] | None, model: str, count: int) -> None:
    """BadRequest when a requested class id is not one of the model's (which would silently find nothing)."""
    outside = [c for c in classes or () if c >= count]
    if outside:
        raise BadRequest(
            f"Invalid 'classes' value: {','.join(map(str, outside[:8]))} is not a class of model '{model}', "
            f"whose class ids are 0 to {count - 1} (GET /v1/models/{model} lists their names)."
        )
