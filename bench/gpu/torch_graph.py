"""The served ONNX graph as a PyTorch module on CUDA, for GPU hosts without TensorRT or onnxruntime-gpu.

`onnx2torch` rebuilds the graph op by op (uint8 NHWC input, fused preprocessing and compact output included), so the
GPU runs the very file the exporter wrote. Ultralytics exports opset 18, for which onnx2torch 1.5.15 lacks three
converters; they are registered here from their opset-13 equivalents, which compute the same thing for how our graph
uses them (Split without sizes, ReduceMax over constant axes, Resize without the opset-18 attributes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PRECISIONS = ("fp32", "fp16")


def _register_opset18() -> None:
    from onnx import defs
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    def known(op: str, version: int) -> bool:
        return OperationDescription(defs.ONNX_DOMAIN, op, version) in _CONVERTER_REGISTRY

    if known("Split", 18):
        return
    add_converter("Split", 18)(_CONVERTER_REGISTRY[OperationDescription(defs.ONNX_DOMAIN, "Split", 13)])

    def resize18(node: Any, graph: Any) -> Any:
        a = node.attributes
        if (
            a.get("antialias", 0)
            or a.get("axes") is not None
            or a.get("keep_aspect_ratio_policy", "stretch") != "stretch"
        ):
            raise NotImplementedError(f"Resize-18 attributes beyond opset 13 in {node.name}")
        return _CONVERTER_REGISTRY[OperationDescription(defs.ONNX_DOMAIN, "Resize", 13)](node, graph)

    add_converter("Resize", 18)(resize18)

    def reduce_max18(node: Any, graph: Any) -> Any:
        axes = get_const_value(node.input_values[1], graph).tolist() if len(node.input_values) > 1 else None
        module = OnnxReduceStaticAxes(
            operation_type="ReduceMax", axes=axes, keepdims=node.attributes.get("keepdims", 1)
        )
        return OperationConverterResult(
            torch_module=module, onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
        )

    add_converter("ReduceMax", 18)(reduce_max18)


@dataclass
class Runner:
    """A converted graph on one device. __call__: parts of (n_i, H, W, 3) uint8 BGR letterboxed images -> outputs."""

    module: torch.nn.Module
    device: torch.device
    precision: str
    channels_last: bool
    max_batch: int
    _pinned: dict[tuple[int, ...], torch.Tensor]

    def __call__(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs for the concatenation of `parts` (CPU uint8, one per request): CPU float32, (sum n_i, ...) each."""
        with torch.inference_mode():
            n = sum(p.shape[0] for p in parts)
            if self.device.type != "cuda":
                x = torch.cat(parts) if len(parts) > 1 else parts[0]
            else:
                shape = (bucket(n, self.max_batch), *parts[0].shape[1:])
                staging = self._pinned.get(shape)
                if staging is None:
                    if len(self._pinned) > 32:
                        self._pinned.clear()
                    staging = self._pinned[shape] = torch.zeros(shape, dtype=torch.uint8).pin_memory()
                start = 0
                for p in parts:  # straight into pinned memory: one host copy, then an asynchronous upload
                    staging[start : start + p.shape[0]].copy_(p)
                    start += p.shape[0]
                x = staging.to(self.device, non_blocking=True)
            # fp16 is for CUDA; a CPU rehearsal autocasts to bfloat16, the half type CPU kernels have.
            half = torch.float16 if self.device.type == "cuda" else torch.bfloat16
            with torch.autocast(self.device.type, dtype=half, enabled=self.precision == "fp16"):
                out = self.module(x)
            outs = out if isinstance(out, (list, tuple)) else [out]
            return [o[:n].float().cpu().contiguous() for o in outs]


def load(
    path: Path, device: torch.device, precision: str = "fp32", channels_last: bool = False, max_batch: int = 64
) -> Runner:
    """Convert the ONNX file at `path` and place it on `device`; fp32 keeps IEEE float32 convolutions (no TF32)."""
    import onnx
    from onnx2torch import convert

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    _register_opset18()
    module = convert(onnx.load(str(path))).eval().to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        # TF32 convolutions move boxes by up to a pixel at 1080p; fp32 is the parity reference, so it stays IEEE.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True  # batch sizes are padded to a few buckets, so autotuning pays once each
    return Runner(module, device, precision, channels_last, max_batch, {})


def bucket(n: int, max_batch: int) -> int:
    """The padded batch size for `n` images: the next power of two, at most `max_batch` (keeps cuDNN's plans few)."""
    b = 1
    while b < n:
        b *= 2
    return max(n, min(b, max_batch))
