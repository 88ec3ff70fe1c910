"""Triton python-backend model: runs the exported ONNX file with ONNX Runtime.

Copied verbatim into `model_repository/<model_id>/1/model.py` by the exporter. The CUDA execution provider is used
when this ONNX Runtime build has it (the `gpu` extra), else the CPU one. Requests that Triton's dynamic batcher
hands over together are concatenated per input shape and run as one batch.

NumPy: the python-backend stub must be built against the NumPy major version installed beside it. nvidia-pytriton's
stubs (local development) are built against NumPy 1 (the wheel requires numpy<2); with NumPy 2 they send empty output
tensors (seen on the GPU host, bench/gpu/README.md). Sending outputs through DLPack instead crashed that stub with
NumPy 1, so this file keeps `pb_utils.Tensor(name, array)` and the environment keeps the matching NumPy.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))

        options = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0"))
        if threads > 0:
            options.intra_op_num_threads = threads
        # Idle intra-op threads spin-wait for the next run by default; on a host whose cores the gateway shares,
        # that spinning takes CPU from JPEG decoding and post-processing ("0" turns it off).
        options.add_session_config_entry("session.intra_op.allow_spinning", params.get("intra_op_spinning", "1"))
        available = ort.get_available_providers()
        providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in available:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        results: list[Any] = [None] * len(requests)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, a in enumerate(arrays):
            by_shape.setdefault(a.shape[1:], []).append(i)
        for indices in by_shape.values():
            batch = np.concatenate([arrays[i] for i in indices]) if len(indices) > 1 else arrays[indices[0]]
            try:
                outputs = self.session.run(self.output_names, {self.input_name: batch})
            except Exception as exc:  # ONNX Runtime rejects the tensor: report it on each request, keep serving
                for i in indices:
                    results[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ONNX Runtime: {exc}"))
                continue
            start = 0
            for i in indices:
                n = arrays[i].shape[0]
                tensors = [
                    pb_utils.Tensor(name, out[start : start + n]) for name, out in zip(self.output_names, outputs)
                ]
                results[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += n
        return results

    def finalize(self) -> None:
        self.session = None
