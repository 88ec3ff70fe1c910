"""Print the gateway's runtime requirements: `[project] dependencies` of pyproject.toml, one per line.

Used by deploy/Dockerfile so the image installs exactly that list (no extras: no torch, no Ultralytics):
    python runtime_requirements.py pyproject.toml > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def runtime_requirements(pyproject: Path) -> list[str]:
    with pyproject.open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
    print("\n".join(runtime_requirements(path)))
