"""Exporter: configs parse as Triton's ModelConfig for every target, errors are clear, the fused graph is exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export import triton_config
from export.onnx_graph import compact_reference
from export.__main__ import main as export_main
from export.exporter import ExportError, load_model
from export.tensorrt import profile_shapes, trtexec_command
from export.triton_config import TARGETS, ModelSpec, Serving, Tensor, serving_defaults
from tests.conftest import CLASSIFY, MODELS, OBB


def _spec(repository: Path, model: str) -> ModelSpec:
    from export.exporter import model_spec

    d = repository / model
    return model_spec(model, d / "source.onnx", d / "1" / "model.onnx", "uint8_nhwc_bgr", f"{model}.pt", True)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model", MODELS)
def test_config_parses_as_model_config_for_every_target(repository: Path, model: str, target: str) -> None:
    from tritonclient.grpc import model_config_pb2

    spec = _spec(repository, model)
    config = triton_config.parse(triton_config.render(spec, serving_defaults(target)))  # type: ignore[arg-type]
    assert config.name == model
    assert config.max_batch_size >= 1
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert config.input[0].name == "image" and list(config.input[0].dims) == [-1, -1, 3]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["task"] == {"yolov8n": "detect", "yolov8n-seg": "segment", "yolov8n-pose": "pose"}[model]
    assert len(json.loads(params["names"])) == (1 if model.endswith("pose") else 80)
    if target == "python":
        assert config.backend == "python"
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    elif target == "onnxruntime":
        assert config.platform == "onnxruntime_onnx"
        accel = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    else:
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"


def test_served_config_in_repository_parses(repository: Path) -> None:
    for model in MODELS:
        config = triton_config.parse((repository / model / "config.pbtxt").read_text())
        assert config.parameters["untrained"].string_value == "true"


def test_names_with_quotes_and_unicode_survive_pbtxt() -> None:
    spec = ModelSpec(
        "m",
        "detect",
        {0: 'a "quoted" name', 1: "café\\n"},
        32,
        640,
        [Tensor("image", "uint8", [-1, -1, 3])],
        [Tensor("output0", "float32", [6, -1])],
        "uint8_nhwc_bgr",
    )
    config = triton_config.parse(triton_config.render(spec, serving_defaults("python")))
    assert json.loads(config.parameters["names"].string_value) == {"0": 'a "quoted" name', "1": "café\\n"}


def test_served_graph_equals_source_graph_on_random_input(repository: Path) -> None:
    import onnxruntime as ort

    d = repository / "yolov8n-seg"
    fused = ort.InferenceSession(str(d / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    source = ort.InferenceSession(str(d / "source.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(1).integers(0, 256, (2, 160, 96, 3), dtype=np.uint8)
    want = source.run(None, {"images": image[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)})
    got = fused.run(None, {"image": image})
    assert "compact" in (d / "config.pbtxt").read_text()
    want[0] = compact_reference(want[0], 80)  # served output0: box, best score, best class, mask coefficients
    assert got[0].shape[1] == 6 + 32
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= 1e-5


def test_tensorrt_profile_covers_every_api_size() -> None:
    spec = ModelSpec("m", "detect", {0: "a"}, 32, 640, [Tensor("image", "uint8", [-1, -1, 3])], [], "uint8_nhwc_bgr")
    shapes = profile_shapes(spec, Serving("tensorrt", max_batch_size=16))
    assert shapes["min"] == (1, 32, 32, 3) and shapes["max"] == (16, 1280, 1280, 3)
    cmd = trtexec_command(Path("m.onnx"), Path("m.plan"), spec, Serving("tensorrt", max_batch_size=16))
    assert "--minShapes=image:1x32x32x3" in cmd and "--maxShapes=image:16x1280x1280x3" in cmd and "--fp16" in cmd


def test_tensorrt_target_without_tensorrt_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ultralytics")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: the GPU test covers the real build")
    except ImportError:
        pass
    import shutil

    if shutil.which("trtexec"):
        pytest.skip("trtexec is on PATH: the GPU test covers the real build")
    code = export_main(["model", "yolov8n.yaml", "--target", "tensorrt", "--repository", str(tmp_path)])
    assert code == 2
    assert "GPU host with TensorRT" in capsys.readouterr().err
    assert not (tmp_path / "yolov8n").exists()


@pytest.mark.gpu
def test_tensorrt_engine_builds_on_gpu(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="needs an NVIDIA GPU with TensorRT (not available on this machine)")
    code = export_main(
        ["model", "yolov8n.yaml", "--target", "tensorrt", "--repository", str(tmp_path), "--max-batch-size", "4"]
    )
    assert code == 0 and (tmp_path / "yolov8n" / "1" / "model.plan").stat().st_size > 1_000_000


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no such file"):
        load_model(str(tmp_path / "missing.pt"))


def test_unknown_extension_is_a_clear_error() -> None:
    with pytest.raises(ExportError, match="expected a .pt weights file"):
        load_model("weights.bin")


def test_unsupported_task_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = export_main(["model", "yolo26n-depth.yaml", "--repository", str(tmp_path)])
    assert code == 2
    assert "not supported" in capsys.readouterr().err


def test_pose_model_with_one_class_keeps_the_raw_layout(repository: Path) -> None:
    config = triton_config.parse((repository / "yolov8n-pose" / "config.pbtxt").read_text())
    assert config.parameters["output_layout"].string_value == "raw" and list(config.output[0].dims) == [56, -1]
    detect = triton_config.parse((repository / "yolov8n" / "config.pbtxt").read_text())
    assert detect.parameters["output_layout"].string_value == "compact" and list(detect.output[0].dims) == [6, -1]


@pytest.mark.parametrize("model", CLASSIFY + OBB)
def test_classify_and_obb_configs_describe_their_task(repository: Path, model: str) -> None:
    config = triton_config.parse((repository / model / "config.pbtxt").read_text())
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.input[0].name == "image" and list(config.input[0].dims) == [-1, -1, 3]
    assert params["input_format"] == "uint8_nhwc_bgr"
    names = json.loads(params["names"])
    if model in CLASSIFY:
        assert params["task"] == "classify" and params["preprocess"] == "resize_center_crop"
        assert len(names) == 1000 and names["0"] == "tench", "ImageNet's names, from Ultralytics' ImageNet.yaml"
        assert params["imgsz"] == "224" and params["stride"] == "1"
        assert params["output_layout"] == "raw" and list(config.output[0].dims) == [1000]
    else:
        assert params["task"] == "obb" and params["preprocess"] == "letterbox"
        assert len(names) == 15 and names["0"] == "plane" and names["14"] == "swimming pool", "DOTA v1"
        assert params["imgsz"] == "640" and params["stride"] == "32"
        # box, best score, best class, angle instead of box, 15 class scores, angle
        assert params["output_layout"] == "compact" and list(config.output[0].dims) == [7, -1]


@pytest.mark.parametrize("model", ["yolov8n-cls", "yolov8n-obb"])
def test_served_classify_and_obb_graphs_equal_their_source_graphs(repository: Path, model: str) -> None:
    import onnxruntime as ort

    d = repository / model
    fused = ort.InferenceSession(str(d / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    source = ort.InferenceSession(str(d / "source.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(2).integers(0, 256, (2, 224, 160, 3), dtype=np.uint8)
    want = source.run(None, {"images": image[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)})[0]
    got = fused.run(None, {"image": image})[0]
    if model in OBB:
        want = compact_reference(want, 15)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5
