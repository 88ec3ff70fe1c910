"""TensorRT engine build for the `tensorrt` target (GPU hosts only).

Uses TensorRT's Python API when importable, else `trtexec` on PATH. The optimisation profile covers batch 1..max
and image sides 32..1280, so one engine serves every `size` the API accepts.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from export.triton_config import ModelSpec, Serving
from gateway.modelcard import UINT8_NHWC_BGR

MIN_SIDE, OPT_SIDE, MAX_SIDE = 32, 640, 1280


class TensorRTUnavailable(RuntimeError):
    pass


def profile_shapes(spec: ModelSpec, serving: Serving) -> dict[str, tuple[int, ...]]:
    """min/opt/max input shapes for the optimisation profile, in the served input's layout."""
    nhwc = spec.input_format == UINT8_NHWC_BGR

    def shape(batch: int, side: int) -> tuple[int, ...]:
        return (batch, side, side, 3) if nhwc else (batch, 3, side, side)

    opt_batch = max(1, serving.max_batch_size // 2)
    return {
        "min": shape(1, MIN_SIDE),
        "opt": shape(opt_batch, OPT_SIDE),
        "max": shape(serving.max_batch_size, MAX_SIDE),
    }


def trtexec_command(onnx: Path, plan: Path, spec: ModelSpec, serving: Serving) -> list[str]:
    shapes = profile_shapes(spec, serving)
    name = spec.inputs[0].name

    def fmt(s: tuple[int, ...]) -> str:
        return f"{name}:" + "x".join(str(d) for d in s)

    cmd = [
        "trtexec",
        f"--onnx={onnx}",
        f"--saveEngine={plan}",
        f"--minShapes={fmt(shapes['min'])}",
        f"--optShapes={fmt(shapes['opt'])}",
        f"--maxShapes={fmt(shapes['max'])}",
    ]
    if serving.trt_fp16:
        cmd.append("--fp16")
    return cmd


def build_engine(onnx: Path, plan: Path, spec: ModelSpec, serving: Serving, log: Callable[[str], None]) -> None:
    try:
        import tensorrt as trt
    except ImportError:
        trt = None
    if trt is None:
        if shutil.which("trtexec") is None:
            raise TensorRTUnavailable(
                "the tensorrt target needs a GPU host with TensorRT (Python package `tensorrt` or `trtexec` on PATH); "
                "export with --target onnxruntime here and build the engine on the GPU host"
            )
        cmd = trtexec_command(onnx, plan, spec, serving)
        log("building TensorRT engine with trtexec (several minutes) ...")
        subprocess.run(cmd, check=True)
        return

    log(f"building TensorRT {trt.__version__} engine (several minutes) ...")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx}: {errors}")
    config = builder.create_builder_config()
    if serving.trt_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(spec, serving)
    profile.set_shape(spec.inputs[0].name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    plan.write_bytes(bytes(engine))
    log(f"engine written: {plan} ({plan.stat().st_size / 1e6:.1f} MB)")
