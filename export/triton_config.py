"""config.pbtxt for a YOLO model, for each backend target.

Everything the gateway needs to post-process travels in `parameters` (the model card, gateway/modelcard.py), so it
reads them back through Triton's model-config API and never needs the weights or Ultralytics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.modelcard import (
    RAW,
    TARGETS,
    InputFormat,
    ModelCard,
    OutputLayout,
    Target,
    Task,
    preprocess_for,
)

__all__ = ["TARGETS", "MODEL_FILES", "ModelSpec", "Serving", "Target", "Tensor", "parameters", "render", "parse"]

_TRITON_DTYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64"}
MODEL_FILES: dict[Target, str] = {"python": "model.onnx", "onnxruntime": "model.onnx", "tensorrt": "model.plan"}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # numpy dtype name
    dims: list[int]  # without the batch dimension; -1 for dynamic axes


@dataclass(frozen=True)
class ModelSpec:
    """What the exporter learned about a model: its tensors, and the model card it writes into config.pbtxt."""

    name: str
    task: Task
    names: dict[int, str]
    stride: int
    imgsz: int
    inputs: list[Tensor]
    outputs: list[Tensor]
    input_format: InputFormat
    kpt_shape: list[int] | None = None
    output_layout: OutputLayout = RAW
    source: str = ""
    untrained: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    built_with: dict[str, str] = field(default_factory=dict)  # python, torch, torchvision, ultralytics versions

    def card(self, target: Target) -> ModelCard:
        """The model card the gateway reads back from the config (`ModelInfo`, gateway/modelcard.py)."""
        kpt = (int(self.kpt_shape[0]), int(self.kpt_shape[1])) if self.kpt_shape else None
        return ModelCard(
            task=self.task,
            names=self.names,
            stride=self.stride,
            imgsz=self.imgsz,
            input_name=self.inputs[0].name,
            input_format=self.input_format,
            outputs=tuple(t.name for t in self.outputs),
            output_layout=self.output_layout,
            preprocess=preprocess_for(self.task),
            target=target,
            source=self.source,
            untrained=self.untrained,
            kpt_shape=kpt,
            built_with=self.built_with,
        )


@dataclass(frozen=True)
class Serving:
    """Batching and placement; defaults per target come from `serving_defaults`."""

    target: Target
    max_batch_size: int = 8
    instances: int = 1
    queue_delay_us: int = 2000
    max_queue_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = ()
    trt_fp16: bool = True
    intra_op_threads: int = 0  # 0: ONNX Runtime decides
    intra_op_spinning: bool = True  # ONNX Runtime's idle threads spin-wait (fast hand-off, but burns shared cores)


def serving_defaults(target: Target) -> Serving:
    if target == "python":
        # CPU default: two instances, each free to use every core through ONNX Runtime's intra-op pool, with idle
        # threads sleeping instead of spin-waiting: a lone request still gets all cores, concurrent ones overlap
        # instead of queueing, and the gateway's decoding is not starved. Measured on 2 cores (bench, yolov8n,
        # 1080p JPEG): gateway 12.5-13.4 img/s at concurrency 4 vs 9.1-9.5 for one spinning instance, same p50 at
        # concurrency 1 (bench/RESULTS.md). A short queue delay lets concurrent same-shape requests share a run.
        return Serving(target, max_batch_size=8, instances=2, queue_delay_us=2000, intra_op_spinning=False)
    # GPU targets: two instances overlap copies with compute; batches of 4-16 keep the GPU busy.
    return Serving(target, max_batch_size=16, instances=2, queue_delay_us=1000, preferred_batch_sizes=(4, 8, 16))


def _quote(value: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept as is; text format has no \\u escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dims(dims: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensor_block(kind: str, tensors: list[Tensor]) -> str:
    items = []
    for t in tensors:
        items.append(
            f'  {{\n    name: "{t.name}"\n    data_type: {_TRITON_DTYPES[t.dtype]}\n    dims: {_dims(t.dims)}\n  }}'
        )
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def parameters(spec: ModelSpec, serving: Serving) -> dict[str, str]:
    """The config's `parameters`: the model card, then what the python backend's model.py reads, then `extra`."""
    params = spec.card(serving.target).parameters()
    if serving.target == "python":
        params["onnx_file"] = MODEL_FILES["python"]
        params["intra_op_threads"] = str(serving.intra_op_threads)
        params["intra_op_spinning"] = "1" if serving.intra_op_spinning else "0"
    params.update(spec.extra)
    return params


def render(spec: ModelSpec, serving: Serving) -> str:
    """The config.pbtxt text for `spec` served by `serving`."""
    lines = [f'name: "{spec.name}"']
    if serving.target == "python":
        lines.append('backend: "python"')
    elif serving.target == "onnxruntime":
        lines.append('platform: "onnxruntime_onnx"')
        lines.append(f'default_model_filename: "{MODEL_FILES["onnxruntime"]}"')
    else:
        lines.append('platform: "tensorrt_plan"')
        lines.append(f'default_model_filename: "{MODEL_FILES["tensorrt"]}"')
    lines.append(f"max_batch_size: {serving.max_batch_size}")
    text = "\n".join(lines) + "\n"
    text += _tensor_block("input", spec.inputs)
    text += _tensor_block("output", spec.outputs)

    preferred = ""
    if serving.preferred_batch_sizes:
        preferred = f"  preferred_batch_size: {_dims(list(serving.preferred_batch_sizes))}\n"
    text += (
        "dynamic_batching {\n"
        f"{preferred}"
        f"  max_queue_delay_microseconds: {serving.queue_delay_us}\n"
        "  default_queue_policy {\n"
        f"    max_queue_size: {serving.max_queue_size}\n"
        "  }\n"
        "}\n"
    )
    kind = "KIND_CPU" if serving.target == "python" else "KIND_GPU"
    text += f"instance_group [\n  {{\n    count: {serving.instances}\n    kind: {kind}\n  }}\n]\n"

    if serving.target == "onnxruntime":
        precision = "FP16" if serving.trt_fp16 else "FP32"
        text += (
            "optimization {\n"
            "  execution_accelerators {\n"
            "    gpu_execution_accelerator: [\n"
            "      {\n"
            '        name: "tensorrt"\n'
            f'        parameters {{ key: "precision_mode" value: "{precision}" }}\n'
            '        parameters { key: "max_workspace_size_bytes" value: "4294967296" }\n'
            '        parameters { key: "trt_engine_cache_enable" value: "1" }\n'
            "      }\n"
            "    ]\n"
            "  }\n"
            "}\n"
        )

    for key, value in parameters(spec, serving).items():
        text += f'parameters {{\n  key: "{key}"\n  value {{ string_value: {_quote(value)} }}\n}}\n'
    return text


def parse(text: str) -> "object":
    """Parse config.pbtxt text as Triton's ModelConfig protobuf (raises on any error)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())
