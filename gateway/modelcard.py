"""The model card: what the exporter writes into a model's config.pbtxt `parameters` and the gateway reads back
(`ModelInfo`: the card of a model Triton serves, with its name and batch limit).

The exporter (export/triton_config.py) and the gateway both use this module, so every name and value of the
contract is written once, with what the gateway says of a model exported without trained weights. It needs only the
standard library (the gateway imports neither torch nor Ultralytics). Adding a task starts here: `Task`, and what
`preprocess_for` and `COMPACT_TASKS` say about it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

Task = Literal["detect", "segment", "pose", "obb", "classify"]
TASKS: tuple[Task, ...] = get_args(Task)
# Tasks whose first output has rows of box, class scores, extra (what the exporter can compact); a classifier
# returns probabilities.
COMPACT_TASKS: tuple[Task, ...] = ("detect", "segment", "pose", "obb")

# What the served graph takes: uint8 BGR images with RGB, CHW and /255 fused into the graph, or the float32 RGB
# tensor of Ultralytics' plain export (which the gateway then prepares itself).
InputFormat = Literal["uint8_nhwc_bgr", "float32_nchw_rgb"]
UINT8_NHWC_BGR: InputFormat = "uint8_nhwc_bgr"
FLOAT32_NCHW_RGB: InputFormat = "float32_nchw_rgb"
INPUT_FORMATS: tuple[InputFormat, ...] = get_args(InputFormat)

# The first output's rows: Ultralytics' own (box, one score per class, extra), or box, best score, best class, extra.
OutputLayout = Literal["raw", "compact"]
RAW: OutputLayout = "raw"
COMPACT: OutputLayout = "compact"
OUTPUT_LAYOUTS: tuple[OutputLayout, ...] = get_args(OutputLayout)

# How an image becomes the model input: Ultralytics' LetterBox, or classify_transforms' resize and centre crop.
Preprocess = Literal["letterbox", "resize_center_crop"]
LETTERBOX: Preprocess = "letterbox"
RESIZE_CENTER_CROP: Preprocess = "resize_center_crop"
PREPROCESSES: tuple[Preprocess, ...] = get_args(Preprocess)

# Where Triton runs the model (the exporter's --target; GET /v1/models shows it as `backend`).
Target = Literal["python", "onnxruntime", "tensorrt"]
TARGETS: tuple[Target, ...] = get_args(Target)


def preprocess_for(task: Task) -> Preprocess:
    """Classifiers see the image resized on its short side and centre-cropped, detectors see it letterboxed."""
    return RESIZE_CENTER_CROP if task == "classify" else LETTERBOX


Card = TypeVar("Card", bound="ModelCard")
# Said wherever a model exported without trained weights (the offline fixtures) is served, so that nobody takes its
# boxes for real detections: in GET /v1/models, on every prediction (a header, and the newer format's `warning`),
# and in the gateway's log at start-up.
UNTRAINED_WARNING = "Untrained fixture weights: results are not real detections."


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """What the gateway needs to pre- and post-process a served model, as its config `parameters` carry it."""

    task: Task
    names: dict[int, str]
    stride: int = 32
    imgsz: int = 640
    input_name: str = "image"
    input_format: InputFormat = UINT8_NHWC_BGR
    outputs: tuple[str, ...] = ("output0",)
    output_layout: OutputLayout = RAW
    preprocess: Preprocess = LETTERBOX
    target: str = ""  # a Target when written by the exporter; "" when a config does not say
    source: str = ""  # the weights file it was exported from
    untrained: bool = False
    kpt_shape: tuple[int, int] | None = None
    # what exported it: {python, torch, torchvision, ultralytics} versions ({} when a config does not say)
    built_with: dict[str, str] = field(default_factory=dict)

    def parameters(self) -> dict[str, str]:
        """The config.pbtxt `parameters` (string values), in the order the exporter writes them."""
        params = {
            "task": self.task,
            "names": json.dumps({str(k): v for k, v in self.names.items()}, ensure_ascii=False),
            "stride": str(self.stride),
            "imgsz": str(self.imgsz),
            "input_name": self.input_name,
            "input_format": self.input_format,
            "outputs": json.dumps(list(self.outputs)),
            "output_layout": self.output_layout,
            "preprocess": self.preprocess,
            "target": self.target,
            "source": self.source,
            "untrained": "true" if self.untrained else "false",
        }
        if self.kpt_shape:
            params["kpt_shape"] = json.dumps(list(self.kpt_shape))
        if self.built_with:
            params["built_with"] = json.dumps(self.built_with, sort_keys=True)
        return params

    @classmethod
    def from_parameters(cls: type[Card], params: Mapping[str, str], **extra: Any) -> Card:
        """The card from config `parameters` (string values); ValueError when they don't describe a model we serve.

        extra: the fields a subclass adds (e.g. the gateway's name and max_batch_size).
        """
        task = _one_of(params, "task", TASKS, None)
        kpt = json.loads(params["kpt_shape"]) if params.get("kpt_shape") else None
        return cls(
            task=task,
            names={int(k): v for k, v in json.loads(params["names"]).items()},
            stride=int(params.get("stride", "32")),
            imgsz=int(params.get("imgsz", "640")),
            input_name=params.get("input_name", "image"),
            input_format=_one_of(params, "input_format", INPUT_FORMATS, UINT8_NHWC_BGR),
            outputs=tuple(json.loads(params.get("outputs", '["output0"]'))),
            output_layout=_one_of(params, "output_layout", OUTPUT_LAYOUTS, RAW),
            preprocess=_one_of(params, "preprocess", PREPROCESSES, preprocess_for(task)),
            target=params.get("target", ""),
            source=params.get("source", ""),
            untrained=params.get("untrained") == "true",
            kpt_shape=(int(kpt[0]), int(kpt[1])) if kpt else None,
            built_with={str(k): str(v) for k, v in json.loads(params.get("built_with") or "{}").items()},
            **extra,
        )


@dataclass(frozen=True, kw_only=True)
class ModelInfo(ModelCard):
    """One served model: its card (from its config `parameters`), its name and Triton's batch limit."""

    name: str
    max_batch_size: int = 0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelInfo:
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        try:
            return cls.from_parameters(params, name=config["name"], max_batch_size=int(config.get("max_batch_size", 0)))
        except ValueError as exc:
            raise ValueError(f"model {config.get('name')!r}: {exc}") from None

    def public(self) -> dict[str, Any]:
        """The model as GET /v1/models shows it."""
        out: dict[str, Any] = {
            "id": self.name,
            "task": self.task,
            "names": {str(k): v for k, v in self.names.items()},
            "default_size": self.imgsz,
            "stride": self.stride,
            "backend": self.target,
            "untrained": self.untrained,
        }
        if self.kpt_shape:
            out["kpt_shape"] = list(self.kpt_shape)
        if self.untrained:
            out["warning"] = UNTRAINED_WARNING
        return out


T = TypeVar("T", bound=str)


def _one_of(params: Mapping[str, str], key: str, allowed: tuple[T, ...], default: T | None) -> T:
    value = params.get(key)
    if value is None and default is not None:
        return default
    for choice in allowed:
        if value == choice:
            return choice
    if key == "task":  # the parameter every model we export has
        raise ValueError("no supported task parameter (exported by us?)")
    raise ValueError(f"parameter {key}={value!r} is not one of {', '.join(allowed)}")
