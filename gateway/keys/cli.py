"""CLI for API keys: `python -m gateway.keys create|list|revoke|usage|import` (`make key` = create).

Works against either state store: the keys file (default), or Redis with `--redis URL`, GATEWAY_REDIS_URL, or
`--state redis` (the Redis that `make serve STATE=redis` started; its URL is in data/redis.url).

What the stores hold is printed with every non-printable character escaped (`\x1b`, `\u202e`): a key's name comes
from whoever created it, and raw terminal escape sequences in it would otherwise drive the administrator's terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from gateway.arguments import DIALECT_NAMES
from gateway.errors import GatewayError
from gateway.keys.auth import KeyDraft, KeyEntry, read_entries
from gateway.keys.ratelimit import check_rate
from gateway.keys.store import FileStore, Store
from gateway.settings import Settings

CONFIRM = "Are you sure you want to delete this access key?"
REDIS_URL_FILE = Path("data/redis.url")  # written (mode 0600) by `make serve STATE=redis`


def _rate(text: str) -> float:
    try:
        return check_rate(float(text.removesuffix("/s")))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}/s") from None


def _name(text: str) -> str:
    if not 0 < len(text.strip()) <= 64 or not text.isprintable():
        raise argparse.ArgumentTypeError("a name is 1 to 64 printable characters (no control characters)")
    return text.strip()


def _days(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 400):
        raise argparse.ArgumentTypeError(f"{text!r}: days is a whole number from 1 to 400")
    return int(text)


def shown(text: str) -> str:
    """`text` with each non-printable character (ESC, other controls, bidi overrides, newlines) as its escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _open(args: argparse.Namespace) -> tuple[Store, str]:
    """The store the command works on, and how to name it in messages."""
    settings = Settings.from_env()
    url = args.redis or settings.redis_url
    if not url and args.state == "redis":
        if not REDIS_URL_FILE.exists():
            raise SystemExit(f"error: no {REDIS_URL_FILE}: start the stack with `make serve STATE=redis` first")
        url = REDIS_URL_FILE.read_text().strip()
    if url:
        from gateway.keys.redis_store import RedisStore

        where = url.split("@")[-1]  # never print the password
        return RedisStore(url, settings.redis_password, timeout_s=2.0), f"Redis at {where}"
    path = args.file or settings.keys_file
    return FileStore(path), str(path)


def _confirmed() -> bool:
    """Ask on a terminal; read one line from a pipe (`echo y | ... revoke ID`)."""
    try:
        answer = input(f"{CONFIRM} [y/N] ") if sys.stdin.isatty() else sys.stdin.readline()
    except (OSError, EOFError):
        answer = ""
    return answer.strip().lower() in {"y", "yes"}


def _print_keys(entries: list[KeyEntry]) -> None:
    print(
        f"{'ID':16} {'NAME':20} {'CREATED':21} {'MODELS':20} {'RATE':8} {'SCOPE':6} {'DIALECT':10} {'LAST USED':21} "
        "STATUS"
    )
    for e in entries:
        models = shown(",".join(e.models)) if e.models is not None else "*"
        rate = f"{e.rate:g}/s" if e.rate else "-"
        print(
            f"{shown(e.id):16} {shown(e.name)[:20]:20} {shown(e.created):21} {models[:20]:20} {rate:8} "
            f"{'admin' if e.admin else '-':6} {shown(e.dialect or '-')[:10]:10} {shown(e.last_used or '-'):21} "
            f"{'revoked' if e.revoked else 'active'}"
        )


def _print_usage(rows: list[dict[str, Any]]) -> None:
    print(f"{'DAY':11} {'MODEL':20} {'REQUESTS':>9} {'IMAGES':>8} {'P50 MS':>7} {'P95 MS':>7} ERRORS")
    for r in rows:
        errors = " ".join(f"{status}:{n}" for status, n in r["errors"].items()) or "-"
        p50, p95 = (r["latency_ms"][q] for q in ("p50", "p95"))
        print(
            f"{r['day']:11} {shown(r['model'])[:20]:20} {r['requests']:>9} {r['images']:>8} "
            f"{p50 if p50 is not None else '-':>7} {p95 if p95 is not None else '-':>7} {errors}"
        )


async def _run(args: argparse.Namespace) -> int:
    store, where = _open(args)
    try:
        if args.command == "create":
            models = tuple(m.strip() for m in args.models.split(",") if m.strip()) or None
            entry, key = await store.create_key(KeyDraft(args.name, models, args.rate, args.admin, args.dialect))
            scope = " with the admin scope" if entry.admin else ""
            scope += f", answered in the {entry.dialect} dialect" if entry.dialect else ""
            print(
                f"Created key {entry.id} ({shown(entry.name)}){scope} in {shown(where)}. "
                "Keep it safe; it is not stored and won't be shown again:",
                file=sys.stderr,
            )
            print(key)
            return 0
        if args.command == "list":
            _print_keys(await store.list_keys())
            return 0
        if args.command == "import":
            return await _import(store, where, args.source)
        if await store.get_key(args.id) is None:
            print(f"error: no key with id {args.id!r} in {where}", file=sys.stderr)
            return 2
        if args.command == "usage":
            rows = await store.usage(args.id, args.days)
            if not rows and store.kind == "file":
                print(
                    "note: with the keys file, usage is counted inside the gateway process: "
                    f"ask it with GET /v1/keys/{args.id}/usage (an admin key).",
                    file=sys.stderr,
                )
            _print_usage(rows)
            return 0
        if not args.yes and not _confirmed():
            print("Not revoked (answer y, pipe `echo y |`, or pass --yes).", file=sys.stderr)
            return 1
        await store.revoke_key(args.id)
        print(f"Revoked key {args.id}.")
        return 0
    except GatewayError as exc:
        print(f"error: {exc.message} ({where}; is `make serve STATE=redis` running?)", file=sys.stderr)
        return 2
    finally:
        await store.close()


async def _import(store: Store, where: str, source: Path) -> int:
    """Copy every key of a keys file (hashes, scopes, revocations) into Redis; ids already there are kept."""
    from gateway.keys.redis_store import RedisStore

    if not isinstance(store, RedisStore):
        print("error: import copies a keys file into Redis: give --redis URL or --state redis", file=sys.stderr)
        return 2
    existing = {e.id for e in await store.list_keys()}
    added = [e for e in read_entries(source) if e.id not in existing]
    for entry in added:
        await store.put_entry(entry)
    print(f"Imported {len(added)} key(s) from {source} into {where} ({len(existing)} were there already).")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.keys", description="Manage API keys.")
    parser.add_argument(
        "--file", type=Path, default=None, help="keys file (default: GATEWAY_KEYS_FILE or data/keys.json)"
    )
    parser.add_argument(
        "--redis",
        default="",
        help="Redis URL (default: GATEWAY_REDIS_URL); password in it or in GATEWAY_REDIS_PASSWORD",
    )
    parser.add_argument(
        "--state",
        choices=("file", "redis"),
        default="file",
        help="redis: the Redis of `make serve STATE=redis` (data/redis.url)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("--name", required=True, type=_name)
    create.add_argument("--models", default="", help="comma-separated model ids this key may use (default: all)")
    create.add_argument("--rate", type=_rate, default=None, help="images per second, e.g. 10/s (default: unlimited)")
    create.add_argument("--admin", action="store_true", help="may manage keys through the admin API (/v1/keys)")
    create.add_argument(
        "--dialect",
        choices=DIALECT_NAMES,
        default=None,
        help="the Ultralytics dialect its requests are answered in where the route can't tell (README, Dialects); "
        "platform keys read ul_ and 40 hex digits, as Ultralytics' tools expect (default: each route's own)",
    )
    sub.add_parser("list", help="list keys (never the secret)")
    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    revoke.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    usage = sub.add_parser("usage", help="a key's usage per day and model")
    usage.add_argument("id")
    usage.add_argument("--days", type=_days, default=7)
    imp = sub.add_parser("import", help="copy a keys file into Redis (with --redis or --state redis)")
    imp.add_argument("source", type=Path, nargs="?", default=None, help="default: GATEWAY_KEYS_FILE or data/keys.json")
    args = parser.parse_args(argv)
    if args.command == "import" and args.source is None:
        args.source = args.file or Settings.from_env().keys_file
    return asyncio.run(_run(args))


if __name__ == "__main__":
    raise SystemExit(main())
