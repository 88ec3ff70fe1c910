"""The local Triton: real server, loopback only, all models READY, tensors arrive intact over gRPC."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import ALL_MODELS
from tritonlocal import launcher


def test_repository_index_lists_every_model_ready(
    triton: launcher.TritonServer, served_models: tuple[str, ...]
) -> None:
    req = urllib.request.Request(f"{triton.http_url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        index = json.loads(r.read())
    assert {m["name"]: m["state"] for m in index} == {m: "READY" for m in served_models}


def test_triton_listens_on_loopback_only(triton: launcher.TritonServer) -> None:
    args = " ".join(triton.process.args)  # type: ignore[arg-type]
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in args
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    bound: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                address, port = local.split(":")
                bound.setdefault(int(port, 16), set()).add(address)
    for port in (triton.http_port, triton.grpc_port, triton.metrics_port):
        assert bound.get(port), f"nothing listens on port {port}"
        assert bound[port] <= loopback, f"port {port} is bound beyond loopback: {bound[port]}"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_known_tensor_round_trip_matches_onnxruntime(
    triton: launcher.TritonServer, repository: Path, model: str
) -> None:
    """Garbled inputs (the stub importing a mismatched NumPy) would show up here as a large difference."""
    import onnxruntime as ort

    rng = np.random.default_rng(42)
    image = rng.integers(0, 256, size=(2, 320, 256, 3), dtype=np.uint8)  # batch of 2, non-square
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    inp = grpcclient.InferInput("image", list(image.shape), "UINT8")
    inp.set_data_from_numpy(image)
    result = client.infer(model, [inp])
    session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for out, want in zip(session.get_outputs(), session.run(None, {"image": image})):
        got = result.as_numpy(out.name)
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) <= 1e-4


def test_start_fails_clearly_on_an_empty_repository(tmp_path: Path) -> None:
    with pytest.raises(launcher.TritonStartError, match="holds no models"):
        launcher.start(tmp_path)
