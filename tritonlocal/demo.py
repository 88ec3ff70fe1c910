"""`make demo`: send one image to the running service and save the annotated result.

    python -m tritonlocal.demo --key yk_... [--url http://127.0.0.1:8000] [--model yolov8n] [--image bus.jpg]
                               [--out demo-yolov8n.jpg] [--format image|png]
    make demo API_KEY=yk_... [PORT=8000] [DEMO_ARGS="--model yolov8n-seg"]

The key comes from --key or $API_KEY (the key `make serve` printed, or one from `make key`). --create-key makes a
new key in the local keys file instead, and prints it so that later runs can reuse it. The annotated image is
written to --out (default: demo-<model>.jpg in the current folder, ignored by git) and its path printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tritonlocal.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
    parser.add_argument("--model", default="yolov8n")
    parser.add_argument("--image", type=Path, default=None, help="default: Ultralytics' bus.jpg")
    parser.add_argument("--key", default=os.environ.get("API_KEY", ""), help="default: $API_KEY")
    parser.add_argument("--create-key", action="store_true", help="create a new key (all models) and print it")
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
    if not key and not args.create_key:
        parser.error(
            "no API key: pass --key yk_... or set API_KEY (`make demo API_KEY=yk_...`) to the key `make serve` "
            "printed or one from `make key`; or --create-key to make a new one"
        )
    if not key:
        from gateway.keys.auth import KeyDraft, create_key
        from gateway.settings import Settings

        keys_file = Settings.from_env().keys_file
        entry, key = create_key(keys_file, KeyDraft(f"demo-{time.strftime('%Y%m%d-%H%M%S')}"))
        print(
            f"Created API key {entry.id} in {keys_file} (reuse it with API_KEY=...; revoke with "
            f"`python -m gateway.keys revoke {entry.id}`):\n\n    {key}\n",
            file=sys.stderr,
        )
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
    if r.status_code == 401:
        print(f"error: the key was refused (check --key / API_KEY): {r.text[:300]}", file=sys.stderr)
        return 1
    if r.status_code != 200:
        print(f"error: HTTP {r.status_code}: {r.text[:500]}", file=sys.stderr)
        return 1
    out.write_bytes(r.content)
    print(f"annotated image ({r.headers.get('server-timing', '')}):", file=sys.stderr)
    print(out.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
