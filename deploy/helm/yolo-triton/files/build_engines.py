#!/usr/bin/env python3
"""Build TensorRT plans for an exported model repository, on this machine's GPU, with this image's TensorRT.

    python3 build_engines.py --source /source --output /built --cache /cache

`--source` is what `python -m export model ... --target onnxruntime` wrote: `<id>/config.pbtxt` and
`<id>/1/model.onnx` (preprocessing fused in). For each such model this writes `<output>/<id>/config.pbtxt` (the
exporter's `tensorrt` config: `platform: "tensorrt_plan"`) and `<output>/<id>/1/model.plan`. Other models are
copied unchanged. A plan only runs on the GPU model and TensorRT version that built it, so plans are cached as
`<cache>/<gpu>-sm<cc>/trt-<version>/<id>-<hash>.plan`; the hash covers the ONNX bytes and the build options.
The optimisation profile is the exporter's (export/tensorrt.py): batch 1..max_batch_size, sides 32..1280.

Runs in the Triton container (or the TensorRT container of the same release): Python standard library only,
`trtexec` or the `tensorrt` Python package, and `nvidia-smi` to name the GPU.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

MIN_SIDE, OPT_SIDE, MAX_SIDE = 32, 640, 1280  # export/tensorrt.py: every `size` the API accepts
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/opt/tensorrt/bin/trtexec")
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/local/tensorrt/lib", "/opt/tensorrt/lib")


class BuildError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[build-engines] {message}", file=sys.stderr, flush=True)


# --- config.pbtxt (as written by export/triton_config.py) -------------------------------------------------------


def _parameter(text: str, key: str) -> str | None:
    m = re.search(r'key: "' + re.escape(key) + r'"\s*value \{ string_value: "((?:[^"\\]|\\.)*)" \}', text)
    return m.group(1) if m else None


def model_info(text: str) -> dict[str, object]:
    """Input name, max batch size, input layout and precision of an onnxruntime_onnx config."""
    name = re.search(r'input \[\s*\{\s*name: "([^"]+)"', text)
    batch = re.search(r"^max_batch_size: (\d+)$", text, re.MULTILINE)
    if not name or not batch:
        raise BuildError("config.pbtxt has no input name or max_batch_size")
    precision = re.search(r'key: "precision_mode" value: "(FP16|FP32)"', text)
    return {
        "input": name.group(1),
        "max_batch_size": max(1, int(batch.group(1))),
        "nhwc": (_parameter(text, "input_format") or "uint8_nhwc_bgr") == "uint8_nhwc_bgr",
        "fp16": precision is None or precision.group(1) == "FP16",
    }


def to_tensorrt_config(text: str) -> str:
    """The exporter's `tensorrt` config for the same model, from its `onnxruntime` config."""
    out = text.replace('platform: "onnxruntime_onnx"', 'platform: "tensorrt_plan"', 1)
    out = out.replace('default_model_filename: "model.onnx"', 'default_model_filename: "model.plan"', 1)
    out = re.sub(r"^optimization \{\n.*?^\}\n", "", out, count=1, flags=re.MULTILINE | re.DOTALL)
    out = re.sub(r'(key: "target"\n  value \{ string_value: )"onnxruntime"', r'\1"tensorrt"', out, count=1)
    if 'platform: "tensorrt_plan"' not in out or "model.plan" not in out:
        raise BuildError("config.pbtxt is not an onnxruntime_onnx config written by the exporter")
    return out


# --- the build ---------------------------------------------------------------------------------------------------


def profile_shapes(info: dict[str, object]) -> dict[str, tuple[int, ...]]:
    """min/opt/max input shapes, as export/tensorrt.py's profile_shapes."""
    mbs = int(info["max_batch_size"])  # type: ignore[call-overload]

    def shape(batch: int, side: int) -> tuple[int, ...]:
        return (batch, side, side, 3) if info["nhwc"] else (batch, 3, side, side)

    return {"min": shape(1, MIN_SIDE), "opt": shape(max(1, mbs // 2), OPT_SIDE), "max": shape(mbs, MAX_SIDE)}


def trtexec_command(trtexec: str, onnx: Path, plan: Path, info: dict[str, object]) -> list[str]:
    """The same command as export/tensorrt.py's trtexec_command."""
    shapes = profile_shapes(info)

    def fmt(s: tuple[int, ...]) -> str:
        return f"{info['input']}:" + "x".join(str(d) for d in s)

    cmd = [
        trtexec,
        f"--onnx={onnx}",
        f"--saveEngine={plan}",
        f"--minShapes={fmt(shapes['min'])}",
        f"--optShapes={fmt(shapes['opt'])}",
        f"--maxShapes={fmt(shapes['max'])}",
    ]
    if info["fp16"]:
        cmd.append("--fp16")
    return cmd


def find_trtexec() -> str | None:
    found = shutil.which("trtexec")
    if found:
        return found
    return next((p for p in TRTEXEC_PATHS if os.access(p, os.X_OK)), None)


def build_with_python_api(onnx: Path, plan: Path, info: dict[str, object]) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx.read_bytes()):
        raise BuildError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    if info["fp16"]:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(info)
    profile.set_shape(str(info["input"]), shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise BuildError("TensorRT engine build failed (see the TensorRT log above)")
    plan.write_bytes(bytes(engine))


def build_plan(onnx: Path, plan: Path, info: dict[str, object]) -> None:
    trtexec = find_trtexec()
    if trtexec:
        result = subprocess.run(trtexec_command(trtexec, onnx, plan, info), check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"trtexec failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return
    try:
        build_with_python_api(onnx, plan, info)
    except ImportError:
        raise BuildError(
            "this image has neither trtexec nor the tensorrt Python package: set models.tensorrt.builderImage to "
            "nvcr.io/nvidia/tensorrt with the Triton image's YY.MM tag (the same TensorRT)"
        ) from None


# --- what the cache is keyed by ----------------------------------------------------------------------------------


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def gpu_identity() -> str:
    """e.g. 'nvidia-h100-80gb-hbm3-sm9.0', from GPU_NAME or nvidia-smi (the first GPU of this pod)."""
    if os.environ.get("GPU_NAME"):
        return slug(os.environ["GPU_NAME"])
    for query in ("name,compute_cap", "name"):
        try:
            out = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                check=False,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            break
        lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        if out.returncode == 0 and lines:
            if len(set(lines)) > 1:
                log(f"warning: this pod sees different GPU models {sorted(set(lines))}; plans are built on the first")
            fields = [f.strip() for f in lines[0].split(",")]
            return slug(fields[0]) + (f"-sm{fields[1]}" if len(fields) > 1 else "")
    raise BuildError("cannot name this pod's GPU: nvidia-smi is unavailable (set GPU_NAME to the GPU model)")


def tensorrt_version() -> str | None:
    """TensorRT version of this image: NGC's TRT_VERSION, the libnvinfer file name, or the Python package."""
    if os.environ.get("TRT_VERSION"):
        return os.environ["TRT_VERSION"]
    versions = []
    for directory in LIB_DIRS:
        for path in glob.glob(os.path.join(directory, "libnvinfer.so.*.*.*")):
            versions.append(tuple(int(p) for p in re.findall(r"\d+", path.rsplit("libnvinfer.so.", 1)[1])))
    if versions:
        return ".".join(str(p) for p in max(versions))
    try:
        import tensorrt as trt

        return str(trt.__version__)
    except ImportError:
        return None


def plan_key(onnx: Path, info: dict[str, object]) -> str:
    digest = hashlib.sha256(onnx.read_bytes())
    digest.update(repr(sorted((k, str(v)) for k, v in profile_shapes(info).items())).encode())
    digest.update(f"fp16={info['fp16']}".encode())
    return digest.hexdigest()[:16]


# --- the repository ----------------------------------------------------------------------------------------------


def convert_model(model_dir: Path, out_dir: Path, cache_dir: Path | None) -> str:
    """Write `out_dir` (config + plan) for one model; returns 'cache hit', 'built in N s' or 'copied'."""
    text = (model_dir / "config.pbtxt").read_text()
    onnx = model_dir / "1" / "model.onnx"
    if 'platform: "onnxruntime_onnx"' not in text or not onnx.is_file():
        shutil.copytree(model_dir, out_dir, ignore=shutil.ignore_patterns("source.onnx"))
        return "copied unchanged (not an onnxruntime model)"
    info = model_info(text)
    config = to_tensorrt_config(text)
    (out_dir / "1").mkdir(parents=True)
    target = out_dir / "1" / "model.plan"
    cached = cache_dir / f"{model_dir.name}-{plan_key(onnx, info)}.plan" if cache_dir else None
    if cached and read_cache(cached, target):
        outcome = "cache hit"
    else:
        started = time.monotonic()
        partial = target.with_suffix(".partial")
        build_plan(onnx, partial, info)
        if not partial.is_file() or partial.stat().st_size == 0:
            raise BuildError(f"{model_dir.name}: the builder wrote no plan")
        partial.rename(target)
        outcome = f"built in {time.monotonic() - started:.1f} s"
        if cached and not write_cache(target, cached):
            outcome += " (not cached)"
    (out_dir / "config.pbtxt").write_text(config)
    return outcome


# The cache only saves time: a cache that cannot be read or written (full, read-only, permissions, a stale NFS
# handle) is a warning and the plan is built or served without it. Exiting would restart this init container in a
# loop while it holds the pod's GPUs.


def read_cache(cached: Path, target: Path) -> bool:
    """Copy a cached plan to `target`; False (with a warning on I/O errors) when there is none to use."""
    try:
        if not cached.is_file() or cached.stat().st_size == 0:
            return False
        shutil.copyfile(cached, target)
        return True
    except OSError as exc:
        log(f"warning: cannot read the plan cache ({exc}); building instead")
        target.unlink(missing_ok=True)
        return False


def write_cache(plan: Path, cached: Path) -> bool:
    """Store a built plan in the cache, atomically; False (with a warning) when the cache cannot be written."""
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plan, tmp)
        os.replace(tmp, cached)  # atomic: pods building the same plan at once never see half a file
        return True
    except OSError as exc:
        log(f"warning: cannot write the plan cache ({exc}); the next pod on this GPU builds again")
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="exported model repository (onnxruntime target)")
    parser.add_argument("--output", type=Path, required=True, help="repository to write (served by Triton)")
    parser.add_argument("--cache", type=Path, default=None, help="plan cache shared by pods (optional)")
    args = parser.parse_args(argv)

    models = sorted(p.parent for p in args.source.glob("*/config.pbtxt") if not p.parent.name.startswith("."))
    if not models:
        log(f"error: no models (<id>/config.pbtxt) in {args.source}")
        return 2
    try:
        gpu, trt_version = gpu_identity(), tensorrt_version()
        cache_dir = None
        if args.cache and trt_version:
            cache_dir = args.cache / gpu / f"trt-{slug(trt_version)}"
        elif args.cache:
            log("warning: TensorRT version unknown; building without the cache")
        log(f"GPU {gpu}, TensorRT {trt_version or 'unknown'}, {len(models)} model(s), cache {cache_dir or 'off'}")
        for model_dir in models:
            out_dir = args.output / model_dir.name
            shutil.rmtree(out_dir, ignore_errors=True)
            outcome = convert_model(model_dir, out_dir, cache_dir)
            log(f"{model_dir.name}: {outcome}")
    except (BuildError, OSError) as exc:
        # A failed build (or an unwritable output) is an error: Triton cannot serve this repository.
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
