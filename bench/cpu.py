"""CPU time of the processes a benchmark level drives, from /proc: where the cores go per request.

Server-Timing gives the gateway's stages as wall time inside one request; this counts what each process actually
burnt on all cores while a level ran (threads included, and for Triton its python-backend stub processes), so that
"CPU per request outside the model" is measured rather than inferred. Linux only; elsewhere nothing is reported.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def _ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100


TICKS = _ticks()


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces), or None if gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """pid and all its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))  # fields[1] is the parent pid
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def seconds(pid: int, children: bool = True) -> float:
    """User + system CPU seconds of pid (and its live descendants) from fields 14 and 15 of /proc/<pid>/stat."""
    total = 0
    for p in tree(pid) if children else [pid]:
        fields = _stat(p)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def available() -> bool:
    return _stat(os.getpid()) is not None


# role → (pid, with its descendants). The harness itself is counted without its children (they are the servers).
Roles = dict[str, tuple[int, bool]]


def snapshot(roles: Roles) -> dict[str, float]:
    """CPU seconds so far for each role."""
    return {role: seconds(pid, children) for role, (pid, children) in roles.items()}


def per_request_ms(burnt: dict[str, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per request for each role, from the CPU seconds it burnt serving `requests`."""
    if not requests:
        return {}
    return {role: round(seconds * 1000 / requests, 2) for role, seconds in burnt.items()}
