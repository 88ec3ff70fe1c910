"""Triton python-backend model: the exported ONNX graph converted to PyTorch and run on the instance's GPU.

Copied with torch_graph.py into `<repository>/<model_id>/1/` by bench/gpu/repository.py, for GPU hosts that have
neither TensorRT nor onnxruntime-gpu. Requests that Triton's dynamic batcher hands over together are batched per
input shape, padded to a power of two (cuDNN keeps one plan per bucket), and each bucket is warmed up at load time
for the shapes listed in the `warmup_shapes` parameter, so no request pays for autotuning.

Tensors cross the stub boundary as DLPack, not NumPy: the stubs of the nvidia-pytriton 0.7.0 wheel were built
against NumPy 1, and under NumPy 2 `pb_utils.Tensor(name, array)` sends zero bytes (seen on Python 3.12 with
NumPy 2.5; the DLPack path returns the right values under both NumPy majors).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch
import triton_python_backend_utils as pb_utils

# The stub's embedded interpreter builds sys.path without PYTHONPATH, where a GPU host's carried wheels (onnx2torch)
# are installed; torch_graph.py sits beside this file, in a folder Triton does put on sys.path.
sys.path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
import torch_graph


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # The host work here is a few copies per batch. torch's default of one OpenMP thread per core, in every stub
        # process beside the gateway and Triton, oversubscribes the CPU: on a 16-core H200 host each request then
        # cost ~11 ms of execute time (195 img/s bare Triton, CPU 94% busy, GPU 5%), while one batch of 64 alone
        # takes 18 ms.
        torch.set_num_threads(int(params.get("cpu_threads", "1")))
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        if torch.cuda.is_available():
            device = torch.device("cuda", int(args.get("model_instance_device_id") or 0))
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        max_batch = int(config.get("max_batch_size") or 1)
        self.runner = torch_graph.load(
            path, device, params.get("precision", "fp32"), params.get("channels_last", "false") == "true", max_batch
        )
        self.input_name = params.get("input_name", "image")
        self.output_names = json.loads(params.get("outputs", '["output0"]'))
        for shape in filter(None, params.get("warmup_shapes", "").split(",")):
            h, w = (int(v) for v in shape.split("x"))
            b = 1
            while b <= max_batch:
                self.runner([torch.zeros((b, h, w, 3), dtype=torch.uint8)])
                b *= 2
        self.timings = {"batches": 0.0, "images": 0.0, "gather": 0.0, "run": 0.0, "respond": 0.0}

    def execute(self, requests: list[Any]) -> list[Any]:
        t0 = time.perf_counter()
        arrays = [
            torch.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input_name).to_dlpack()) for r in requests
        ]
        t1 = time.perf_counter()
        run = 0.0
        results: list[Any] = [None] * len(requests)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, a in enumerate(arrays):
            by_shape.setdefault(tuple(a.shape[1:]), []).append(i)
        for indices in by_shape.values():
            t = time.perf_counter()
            try:
                outputs = self.runner([arrays[i] for i in indices])
            except Exception as exc:  # noqa: BLE001 - the graph rejects the tensor: report it per request, keep serving
                for i in indices:
                    results[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"torch: {exc}"))
                continue
            finally:
                run += time.perf_counter() - t
            start = 0
            for i in indices:
                n = arrays[i].shape[0]
                tensors = [
                    pb_utils.Tensor.from_dlpack(name, out[start : start + n])
                    for name, out in zip(self.output_names, outputs)
                ]
                results[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += n
        self._account(len(requests), t1 - t0, run, time.perf_counter() - t1 - run)
        return results

    def _account(self, images: int, gather: float, run: float, respond: float) -> None:
        """Every 200 batches, a line in Triton's log: where this instance's execute time goes, in ms per batch."""
        t = self.timings
        for key, value in (("batches", 1), ("images", images), ("gather", gather), ("run", run), ("respond", respond)):
            t[key] += value
        if t["batches"] % 200 == 0:
            per = {k: round(1000 * t[k] / t["batches"], 2) for k in ("gather", "run", "respond")}
            print(
                f"[bench.gpu model] batches {t['batches']:.0f} images {t['images']:.0f} ms/batch {per}",
                file=sys.stderr,
                flush=True,
            )

    def finalize(self) -> None:
        self.runner = None
