"""The model card: what the exporter writes into config.pbtxt is what the gateway reads back, for every task and
target, and a config the gateway can't serve is refused with the parameter named."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
from google.protobuf.json_format import MessageToDict

from export import triton_config
from export.triton_config import ModelSpec, Tensor, serving_defaults
from gateway import modelcard
from gateway.modelcard import TARGETS, TASKS, ModelCard
from gateway.modelcard import ModelInfo


def _spec(task: modelcard.Task, input_format: modelcard.InputFormat, layout: modelcard.OutputLayout) -> ModelSpec:
    outputs = [Tensor("output0", "float32", [6 + 51, -1])]
    if task == "segment":
        outputs.append(Tensor("output1", "float32", [32, -1, -1]))
    return ModelSpec(
        name=f"m-{task}",
        task=task,
        names={0: "person", 1: 'a "quoted" name', 2: "café"},
        stride=1 if task == "classify" else 32,
        imgsz=224 if task == "classify" else 640,
        inputs=[Tensor("image", "uint8", [-1, -1, 3])],
        outputs=outputs,
        input_format=input_format,
        kpt_shape=[17, 3] if task == "pose" else None,
        output_layout=layout,
        source=f"{task}.pt",
        untrained=task == "obb",
        built_with={"python": "3.11.7", "torch": "2.14.1", "torchvision": "0.29.1", "ultralytics": "8.4.190"},
    )


def _read_back(text: str) -> ModelInfo:
    """What the gateway builds from Triton's model-config answer (JSON, as tritonclient's as_json gives it)."""
    config = MessageToDict(triton_config.parse(text), preserving_proto_field_name=True)
    return ModelInfo.from_config(config)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("task", TASKS)
def test_the_gateway_reads_back_the_card_the_exporter_wrote(task: modelcard.Task, target: modelcard.Target) -> None:
    layout = modelcard.COMPACT if task in modelcard.COMPACT_TASKS else modelcard.RAW
    fmt = modelcard.FLOAT32_NCHW_RGB if target == "tensorrt" else modelcard.UINT8_NHWC_BGR
    spec = _spec(task, fmt, layout)
    info = _read_back(triton_config.render(spec, serving_defaults(target)))
    assert info.name == spec.name and info.max_batch_size == serving_defaults(target).max_batch_size
    card = spec.card(target)
    assert {f.name: getattr(info, f.name) for f in fields(ModelCard)} == card.__dict__
    assert info.task == task and info.target == target and info.outputs == tuple(t.name for t in spec.outputs)
    assert info.preprocess == ("resize_center_crop" if task == "classify" else "letterbox")
    assert info.kpt_shape == ((17, 3) if task == "pose" else None)
    assert info.names[1] == 'a "quoted" name' and info.names[2] == "café"
    assert info.built_with == spec.built_with  # what the newer APIs' answers report as `version`


def test_parameters_keep_the_order_and_spelling_of_the_served_configs() -> None:
    card = ModelCard(task="pose", names={0: "person"}, kpt_shape=(17, 3), target="python", untrained=True)
    params = card.parameters()
    assert list(params) == [
        "task", "names", "stride", "imgsz", "input_name", "input_format", "outputs", "output_layout", "preprocess",
        "target", "source", "untrained", "kpt_shape",
    ]  # fmt: skip
    assert params["input_format"] == "uint8_nhwc_bgr" and params["output_layout"] == "raw"
    assert params["outputs"] == '["output0"]' and params["kpt_shape"] == "[17, 3]" and params["untrained"] == "true"
    assert json.loads(params["names"]) == {"0": "person"}


@pytest.mark.parametrize(
    "key,value,message",
    [("task", "depth", "no supported task"), ("input_format", "float16_nchw", "input_format='float16_nchw'"),
     ("output_layout", "packed", "output_layout='packed'"), ("preprocess", "stretch", "preprocess='stretch'")],
)  # fmt: skip
def test_a_config_the_gateway_cannot_serve_is_refused_naming_the_parameter(key: str, value: str, message: str) -> None:
    params = ModelCard(task="detect", names={0: "a"}).parameters() | {key: value}
    with pytest.raises(ValueError, match=message):
        ModelCard.from_parameters(params)
    config = {"name": "odd", "parameters": {k: {"string_value": v} for k, v in params.items()}}
    with pytest.raises(ValueError, match="model 'odd'"):
        ModelInfo.from_config(config)


def test_missing_optional_parameters_take_the_defaults_of_older_exports() -> None:
    card = ModelCard.from_parameters({"task": "classify", "names": '{"0": "tench"}'})
    assert card.preprocess == "resize_center_crop", "a classifier is never letterboxed"
    assert (card.input_format, card.output_layout, card.outputs) == ("uint8_nhwc_bgr", "raw", ("output0",))
    assert (card.stride, card.imgsz, card.target, card.untrained) == (32, 640, "", False)
    assert card.built_with == {}, "exported before the versions were recorded: the answers say unknown"
