"""ONNX graph surgery: fuse Ultralytics' input preprocessing into the model.

The served graph takes the letterboxed image as it leaves OpenCV — uint8, NHWC, BGR — and does the rest inside:
BGR→RGB, HWC→CHW, float32, /255. That sends a quarter of the bytes over gRPC and keeps the arithmetic identical
to Ultralytics' `preprocess` (a float32 division by 255 is the same IEEE operation in torch and ONNX).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

FUSED_INPUT = "image"


def fuse_preprocessing(source: Path, target: Path) -> None:
    """Write `target`: `source` with a uint8 NHWC BGR input named FUSED_INPUT replacing its float32 NCHW input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    original = graph.input[0]
    dims = original.type.tensor_type.shape.dim
    batch, height, width = (d.dim_param or d.dim_value for d in (dims[0], dims[2], dims[3]))
    fused = helper.make_tensor_value_info(FUSED_INPUT, TensorProto.UINT8, [batch, height, width, 3])

    prefix = "fused_preprocess/"
    constants = [
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), prefix + "scale"),
        numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), prefix + "bgr_to_rgb"),
    ]
    nodes = [
        helper.make_node("Transpose", [FUSED_INPUT], [prefix + "nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Gather", [prefix + "nchw", prefix + "bgr_to_rgb"], [prefix + "rgb"], axis=1),
        helper.make_node("Cast", [prefix + "rgb"], [prefix + "float"], to=TensorProto.FLOAT),
        helper.make_node("Div", [prefix + "float", prefix + "scale"], [original.name]),
    ]
    graph.input.remove(original)
    graph.input.insert(0, fused)
    graph.initializer.extend(constants)
    for node in reversed(nodes):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def compact_output(path: Path, nc: int) -> None:
    """Rewrite `path` so output0 carries (box, best score, best class, extra) per anchor instead of every class score.

    The gateway's NMS only ever uses the best class of each anchor (Ultralytics' multi_label=False), so the model
    can reduce the nc class rows to two: for detect at 640 that is 6 rows instead of 84, 14× fewer bytes back over
    gRPC. Max and first-index argmax are exact, so results don't change.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    out = graph.output[0]
    raw = out.name + "_all_classes"
    for node in graph.node:
        node.output[:] = [raw if o == out.name else o for o in node.output]
    p = "compact_output/"
    rows = out.type.tensor_type.shape.dim[1].dim_value
    constants = {
        "box_start": 0,
        "box_end": 4,
        "cls_start": 4,
        "cls_end": 4 + nc,
        "extra_start": 4 + nc,
        "extra_end": rows,
        "axis": 1,
    }
    graph.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), p + k) for k, v in constants.items())
    nodes = [
        helper.make_node("Slice", [raw, p + "box_start", p + "box_end", p + "axis"], [p + "box"]),
        helper.make_node("Slice", [raw, p + "cls_start", p + "cls_end", p + "axis"], [p + "scores"]),
        helper.make_node("ReduceMax", [p + "scores", p + "axis"], [p + "best"], keepdims=1),
        helper.make_node("ArgMax", [p + "scores"], [p + "class_i64"], axis=1, keepdims=1, select_last_index=0),
        helper.make_node("Cast", [p + "class_i64"], [p + "class"], to=TensorProto.FLOAT),
    ]
    parts = [p + "box", p + "best", p + "class"]
    if rows > 4 + nc:
        nodes.append(helper.make_node("Slice", [raw, p + "extra_start", p + "extra_end", p + "axis"], [p + "extra"]))
        parts.append(p + "extra")
    nodes.append(helper.make_node("Concat", parts, [out.name], axis=1))
    graph.node.extend(nodes)
    out.type.tensor_type.shape.dim[1].dim_value = 6 + rows - 4 - nc
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def compact_reference(raw: NDArray[np.float32], nc: int) -> NDArray[np.float32]:
    """What compact_output computes, in NumPy: (B, 4+nc+extra, A) -> (B, 6+extra, A)."""
    scores = raw[:, 4 : 4 + nc]
    best = scores.max(axis=1, keepdims=True)
    cls = scores.argmax(axis=1)[:, None].astype(np.float32)
    return np.concatenate([raw[:, :4], best, cls, raw[:, 4 + nc :]], axis=1)


def read_metadata(path: Path) -> dict[str, str]:
    """Ultralytics' export metadata (names, stride, task, imgsz, kpt_shape, ...) as raw strings."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def io_signature(path: Path) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """(inputs, outputs) of an ONNX file as (name, numpy dtype, dims with -1 for dynamic axes)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)

    def describe(values: "list[onnx.ValueInfoProto]") -> list[tuple[str, str, list[int]]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name
            out.append((v.name, dtype, [d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim]))
        return out

    return describe(model.graph.input), describe(model.graph.output)
