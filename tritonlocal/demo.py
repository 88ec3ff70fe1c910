"""`make demo`: send one image to the running service and save the annotated result.

    python -m tritonlocal.demo [--url http://127.0.0.1:8000] [--model yolov8n] [--image bus.jpg] [--out demo.jpg]

The key comes from --key or $API_KEY; without either, a new key is created in the local keys file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tritonlocal.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
    parser.add_argument("--model", default="yolov8n")
    parser.add_argument("--image", type=Path, default=None, help="default: Ultralytics' bus.jpg")
    parser.add_argument("--key", default=os.environ.get("API_KEY", ""))
    parser.add_argument("--out", type=Path, default=None, help="default: demo-<model>.jpg")
    parser.add_argument("--format", choices=("image", "png"), default="image")
    args = parser.parse_args(argv)

    image = args.image
    if image is None:
        from importlib.util import find_spec

        spec = find_spec("ultralytics")
        if spec is None or not spec.submodule_search_locations:
            parser.error("--image is required (ultralytics, which ships bus.jpg, is not installed)")
        image = Path(list(spec.submodule_search_locations)[0]) / "assets" / "bus.jpg"
    key = args.key
    if not key:
        from gateway.auth import create_key
        from gateway.settings import Settings

        _, key = create_key(Settings.from_env().keys_file, f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
        time.sleep(1.1)  # the gateway re-reads the keys file at most once a second
    out = args.out or Path(f"demo-{args.model}.{'png' if args.format == 'png' else 'jpg'}")
    try:
        r = httpx.post(
            f"{args.url}/v1/predict/{args.model}",
            headers={"x-api-key": key},
            files={"image": (image.name, image.read_bytes())},
            data={"format": args.format},
            timeout=120,
        )
    except httpx.HTTPError as exc:
        print(f"error: could not reach {args.url} ({exc}); is `make serve` running?", file=sys.stderr)
        return 2
    if r.status_code != 200:
        print(f"error: HTTP {r.status_code}: {r.text[:500]}", file=sys.stderr)
        return 1
    out.write_bytes(r.content)
    print(f"annotated image ({r.headers.get('server-timing', '')}):", file=sys.stderr)
    print(out.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
