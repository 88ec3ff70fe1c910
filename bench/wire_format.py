"""Measure the served input format: uint8 NHWC with preprocessing fused into the graph vs the raw float32 NCHW graph.

Exports the same fixture detect model both ways into a temporary repository, starts a local Triton, and times
gRPC round trips (client tensor preparation included) for a 1080p photo letterboxed at `--size`.

    .venv/bin/python -m bench.wire_format --size 640 --runs 40
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()

    import cv2
    import tritonclient.grpc as grpcclient
    from ultralytics.utils import ASSETS

    from export.exporter import export_model
    from export.fixtures import build_fixture
    from export.triton_config import serving_defaults
    from gateway.vision import preprocess
    from tritonlocal import launcher

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        pt = build_fixture("yolov8n", Path(".triton/bench-weights"))
        export_model(str(pt), repo, serving_defaults("python"), "fused", fuse=True, untrained=True)
        export_model(str(pt), repo, serving_defaults("python"), "raw", fuse=False, untrained=True)
        server = launcher.start(repo, cache=Path(".triton/bench-server"))
        try:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            photo = np.asarray(cv2.resize(cv2.imread(str(ASSETS / "bus.jpg")), (1920, 1080)), np.uint8)
            boxed, _ = preprocess.letterbox(photo, args.size, 32, rect=True)

            def fused() -> None:
                inp = grpcclient.InferInput("image", [1, *boxed.shape], "UINT8")
                inp.set_data_from_numpy(boxed[None])
                client.infer("fused", [inp])

            def raw() -> None:
                x = (boxed[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32)) / np.float32(255)
                inp = grpcclient.InferInput("images", list(x.shape), "FP32")
                inp.set_data_from_numpy(np.ascontiguousarray(x))
                client.infer("raw", [inp])

            variants = (("uint8 NHWC, fused", fused), ("float32 NCHW, raw", raw))
            results: dict[str, list[float]] = {name: [] for name, _ in variants}
            for _ in range(5):
                fused()
                raw()
            for _ in range(args.runs):  # interleaved, so drift on a busy machine hits both alike
                for name, fn in variants:
                    t = time.perf_counter()
                    fn()
                    results[name].append((time.perf_counter() - t) * 1000)
            nbytes = boxed.nbytes
            print(f"input {boxed.shape[1]}x{boxed.shape[0]} from a 1920x1080 photo, {args.runs} runs each")
            print(f"{'format':22} {'bytes sent':>11} {'p50 ms':>8} {'mean ms':>8}")
            for name, times in results.items():
                sent = nbytes if name.startswith("uint8") else nbytes * 4
                print(f"{name:22} {sent:>11,} {statistics.median(times):>8.1f} {statistics.mean(times):>8.1f}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
