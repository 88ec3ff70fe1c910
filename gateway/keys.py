"""CLI for API keys: `python -m gateway.keys create|list|revoke` (`make key` = create)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from gateway.auth import create_key, read_entries, write_entries
from gateway.settings import Settings

CONFIRM = "Are you sure you want to delete this access key?"


def _rate(text: str) -> float:
    value = float(text.removesuffix("/s"))
    if value <= 0:
        raise argparse.ArgumentTypeError("rate must be positive, e.g. 10/s")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.keys", description="Manage API keys.")
    parser.add_argument("--file", type=Path, default=None, help="keys file (default: GATEWAY_KEYS_FILE or data/keys.json)")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("--name", required=True)
    create.add_argument("--models", default="", help="comma-separated model ids this key may use (default: all)")
    create.add_argument("--rate", type=_rate, default=None, help="requests per second, e.g. 10/s (default: unlimited)")
    sub.add_parser("list", help="list keys (never the secret)")
    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    revoke.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    args = parser.parse_args(argv)
    path = args.file or Settings.from_env().keys_file

    if args.command == "create":
        models = [m.strip() for m in args.models.split(",") if m.strip()] or None
        entry, key = create_key(path, args.name, models, args.rate)
        print(f"Created key {entry.id} ({entry.name}) in {path}. Keep it safe; it is not stored and won't be shown again:", file=sys.stderr)
        print(key)
        return 0
    entries = read_entries(path)
    if args.command == "list":
        print(f"{'ID':10} {'NAME':20} {'CREATED':21} {'MODELS':20} {'RATE':8} STATUS")
        for e in entries:
            models = ",".join(e.models) if e.models is not None else "*"
            rate = f"{e.rate:g}/s" if e.rate else "-"
            print(f"{e.id:10} {e.name[:20]:20} {e.created:21} {models[:20]:20} {rate:8} {'revoked' if e.revoked else 'active'}")
        return 0
    match = [e for e in entries if e.id == args.id]
    if not match:
        print(f"error: no key with id {args.id!r} in {path}", file=sys.stderr)
        return 2
    if not args.yes:
        answer = input(f"{CONFIRM} [y/N] ") if sys.stdin.isatty() else ""
        if answer.strip().lower() not in {"y", "yes"}:
            print("Not revoked (confirm interactively or pass --yes).", file=sys.stderr)
            return 1
    write_entries(path, [replace(e, revoked=True) if e.id == args.id else e for e in entries])
    print(f"Revoked key {args.id}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
