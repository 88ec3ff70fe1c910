"""`python -m gateway.keys ...`: the keys command line (gateway/keys/cli.py)."""

from __future__ import annotations

from gateway.keys.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
