"""Print the runtime requirements of pyproject.toml, one per line: `[project] dependencies`, or one extra's.

Used by deploy/Dockerfile so the image installs exactly that list (no extras: no torch, no Ultralytics):
    python runtime_requirements.py pyproject.toml > requirements.txt
and by deploy/Dockerfile.triton-cpu for the local Triton (`nvidia-pytriton`, ONNX Runtime):
    python runtime_requirements.py pyproject.toml triton > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def runtime_requirements(pyproject: Path, extra: str | None = None) -> list[str]:
    with pyproject.open("rb") as f:
        project = tomllib.load(f)["project"]
    return list(project["optional-dependencies"][extra] if extra else project["dependencies"])


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
    print("\n".join(runtime_requirements(path, sys.argv[2] if len(sys.argv) > 2 else None)))
