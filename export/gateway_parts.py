"""The gateway's parts that the export worker uses, imported here only.

The worker checks a version through the gateway's own pre- and post-processing and Triton client, so that what it
verifies is what requests will get. Gateway modules live in layered folders (README.md, "Layout"): this module is
the one place outside the gateway that names them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.arguments import PredictArgs
from gateway.modelcard import COMPACT, RESIZE_CENTER_CROP, UINT8_NHWC_BGR, ModelInfo
from gateway.settings import Settings
from gateway.triton.client import Triton
from gateway.vision.pipeline import finish, model_input, prepare

__all__ = [
    "COMPACT",
    "RESIZE_CENTER_CROP",
    "UINT8_NHWC_BGR",
    "ModelInfo",
    "PredictArgs",
    "Settings",
    "Triton",
    "finish",
    "model_info",
    "model_input",
    "prepare",
]


def model_info(model_dir: Path) -> ModelInfo:
    """The model card of an exported version, from its config.pbtxt (as the gateway reads it from Triton)."""
    from google.protobuf.json_format import MessageToDict

    from export.triton_config import parse

    config: dict[str, Any] = MessageToDict(
        parse((model_dir / "config.pbtxt").read_text()),
        preserving_proto_field_name=True,
    )
    return ModelInfo.from_config(config)
