"""Where an uploaded version's files are, and how they move (each move atomic: a hidden name, then a rename).

<models dir>/uploads/<id>/<sha256>.pt     the uploaded checkpoints (removed with the model)
<models dir>/staging/<id>--v<N>/          exported, between the exporting and loading stages
<repository>/<id>--v<N>/                  loaded in Triton (or unloaded by the LRU: it loads from here again)
<models dir>/versions/<id>--v<N>/         retired; a rollback copies it back into the repository
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from gateway.models import ModelRecord, Version

SAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


class OutsideModelsDir(ValueError):
    """A path from the registry points outside the models folder."""


@dataclass(frozen=True)
class Places:
    repository: Path  # the Triton model repository (shared by every Triton)
    models_dir: Path

    def upload(self, v: Version) -> Path:
        """The version's uploaded .pt; OutsideModelsDir when the record points elsewhere."""
        root = self.models_dir.resolve()
        path = (root / v.upload).resolve()
        if root not in path.parents:
            raise OutsideModelsDir(f"the upload path {v.upload!r} is outside the models folder")
        return path

    def staging(self, name: str) -> Path:
        return self.models_dir / "staging" / name

    def versions(self, name: str) -> Path:
        return self.models_dir / "versions" / name

    def served(self, name: str) -> Path:
        return self.repository / name

    def out_of_repository(self, name: str, keep: bool) -> None:
        """Take a version out of the repository: moved to versions/ when `keep` (and not there yet), else removed."""
        target = self.served(name)
        if not target.exists():
            return
        if keep and not self.versions(name).exists():
            place(target, self.versions(name), move=True)
        else:
            remove(target)

    def tidy_after_ready(self, name: str) -> None:
        """A version is served from the repository: its staging/ or versions/ copy is no longer needed."""
        remove(self.staging(name))
        remove(self.versions(name))

    def remove_model(self, record: ModelRecord) -> None:
        for v in record.versions:
            for path in (self.served(v.triton), self.staging(v.triton), self.versions(v.triton)):
                remove(path)
        remove(self.models_dir / "uploads" / record.id)


def checkpoint_name(v: Version) -> str:
    """The file name the export records as its source (the uploader's, made safe)."""
    stem = SAFE_FILENAME.sub("_", Path(v.filename).stem)[:80].strip("._") or f"v{v.number}"
    return f"{stem}.pt"


def place(source: Path, target: Path, move: bool = False) -> None:
    """Put `source` at `target` atomically: copied (or moved) to a hidden name beside it, then renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    hidden = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    if move:
        shutil.move(str(source), hidden)
    else:
        shutil.copytree(source, hidden, symlinks=True)
    remove(target)
    os.replace(hidden, target)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
