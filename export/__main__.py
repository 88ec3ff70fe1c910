"""CLI: `python -m export {model,fixtures,defaults}` (also installed as `yolo-triton-export`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from export.triton_config import TARGETS, Serving, serving_defaults

DEFAULT_MODELS = ("yolov8n", "yolov8n-seg", "yolov8n-pose")
WEIGHTS_DIR = Path("weights")
FIXTURE_DIR = WEIGHTS_DIR / "fixtures"


def _serving(args: argparse.Namespace) -> Serving:
    base = serving_defaults(args.target)
    return Serving(
        target=args.target,
        max_batch_size=args.max_batch_size or base.max_batch_size,
        instances=args.instances or base.instances,
        queue_delay_us=base.queue_delay_us if args.queue_delay_us is None else args.queue_delay_us,
        max_queue_size=args.max_queue_size or base.max_queue_size,
        preferred_batch_sizes=base.preferred_batch_sizes,
        trt_fp16=not args.fp32,
        intra_op_threads=args.threads,
        intra_op_spinning=base.intra_op_spinning if args.spinning is None else args.spinning == "on",
    )


def _add_serving_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="Triton model repository")
    p.add_argument("--target", choices=TARGETS, default="python", help="backend (default: python = ONNX Runtime inside Triton's python backend)")
    p.add_argument("--max-batch-size", type=int, default=0, help="Triton max_batch_size (default per target)")
    p.add_argument("--instances", type=int, default=0, help="instance_group count (default per target)")
    p.add_argument("--queue-delay-us", type=int, default=None, help="dynamic batcher max_queue_delay_microseconds")
    p.add_argument("--max-queue-size", type=int, default=0, help="dynamic batcher queue bound; beyond it Triton rejects")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads for the python target (0: all cores)")
    p.add_argument(
        "--spinning", choices=("on", "off"), default=None,
        help="python target: ONNX Runtime's idle intra-op threads spin-wait (default per target)",
    )
    p.add_argument("--fp32", action="store_true", help="TensorRT (engine or ORT accelerator) in FP32 instead of FP16")
    p.add_argument("--no-fuse", action="store_true", help="serve the raw float32 NCHW graph instead of fusing preprocessing")
    p.add_argument("--no-compact", action="store_true", help="return every class score per anchor (Ultralytics' raw output0)")
    p.add_argument(
        "--imgsz", type=int, default=None,
        help="export trace size and the model's default `size` (default: the size the weights were trained at, "
        "else 224 for classifiers and 640 for the rest)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    one = sub.add_parser("model", help="export one model: a .pt file, a model .yaml or an Ultralytics name")
    one.add_argument("source", help="path/to/weights.pt, yolov8n-seg.pt (downloaded when online) or yolov8n.yaml")
    one.add_argument("--id", dest="model_id", help="model id in the repository and the URL (default: file stem)")
    _add_serving_flags(one)

    fx = sub.add_parser("fixtures", help="build the deterministic offline fixture models and export them")
    fx.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated fixture model ids")
    fx.add_argument("--cache", type=Path, default=FIXTURE_DIR, help="where the fixture .pt files are cached")
    _add_serving_flags(fx)

    df = sub.add_parser("defaults", help="yolov8n, -seg, -pose: weights/<id>.pt, else a download, else fixtures")
    df.add_argument("--force", action="store_true", help="re-export models that are already in the repository")
    _add_serving_flags(df)

    args = parser.parse_args(argv)
    from export.exporter import ExportError, export_model, log
    from export.tensorrt import TensorRTUnavailable

    serving = _serving(args)
    try:
        if args.command == "model":
            export_model(args.source, args.repository, serving, args.model_id, args.imgsz, fuse=not args.no_fuse, compact=not args.no_compact)
        elif args.command == "fixtures":
            from export.fixtures import export_fixture

            for model_id in args.models.split(","):
                log(f"building fixture model {model_id} (untrained, calibrated on bundled photos) ...")
                export_fixture(model_id, args.repository, args.cache, serving, args.imgsz, not args.no_fuse, not args.no_compact)
        else:
            _defaults(args, serving)
    except (ExportError, TensorRTUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _defaults(args: argparse.Namespace, serving: Serving) -> None:
    from export.exporter import ExportError, export_model, log
    from export.fixtures import export_fixture

    for model_id in DEFAULT_MODELS:
        if (args.repository / model_id / "config.pbtxt").exists() and not args.force:
            log(f"{model_id}: already in {args.repository} (use --force to re-export)")
            continue
        local = WEIGHTS_DIR / f"{model_id}.pt"
        if local.exists():
            export_model(str(local), args.repository, serving, model_id, args.imgsz, not args.no_fuse, compact=not args.no_compact)
            continue
        if os.environ.get("YOLO_OFFLINE", "") not in {"1", "true"}:
            try:
                export_model(f"{model_id}.pt", args.repository, serving, model_id, args.imgsz, not args.no_fuse, compact=not args.no_compact)
                continue
            except ExportError as exc:
                log(f"{model_id}: pretrained weights unavailable ({exc})")
        log("!" * 78)
        log(f"WARNING: serving UNTRAINED fixture weights for {model_id}: results are not real detections.")
        log(f"Put pretrained weights at {local} and run `make export` to serve the real model.")
        log("!" * 78)
        export_fixture(model_id, args.repository, FIXTURE_DIR, serving, args.imgsz, not args.no_fuse, not args.no_compact)


if __name__ == "__main__":
    raise SystemExit(main())
