"""The dependency lock (requirements/lock.txt, `make lock`): pyproject.toml, the lock, the images' subsets and the
installed environment agree, and `make check` names the package and says to run `make lock` when they do not.

These run the real script on copies of the real files; nothing here needs the network (re-locking does).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("requirements_lockfile", ROOT / "requirements" / "lockfile.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lockfile = _load()


def test_the_lock_was_made_from_this_pyproject() -> None:
    assert lockfile.check_inputs(lockfile.pyproject()) == []
    assert lockfile.check_subsets() == []
    pins = lockfile.read_pins(lockfile.LOCK)
    assert len(pins) > 100 and all(pin.hashes for pin in pins.values())
    # the versions that broke CI once, and the ones parity is defined against, are pinned exactly
    assert {"redis", "starlette", "tritonclient", "numpy", "torch", "ultralytics-opencv-headless", "pip"} <= set(pins)


def test_this_environment_is_exactly_the_lock() -> None:
    """`make install` made this environment in an empty folder from the lock: the same names and versions as
    `pip freeze --all` lists (the project itself, installed editable, aside)."""
    assert lockfile.check_environment() == []
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    frozen = {lockfile.normalize(line.split("==")[0]): line.split("==")[1] for line in freeze if "==" in line}
    assert frozen == {name: pin.version for name, pin in lockfile.read_pins(lockfile.LOCK).items()}


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """pyproject.toml and requirements/ in a folder of their own: the script takes its root from its own path."""
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    script = root / "requirements" / "lockfile.py"
    return subprocess.run([sys.executable, str(script), "check"], capture_output=True, text=True, timeout=120)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_check_passes_on_an_unchanged_copy(copy: Path) -> None:
    done = _check(copy)
    assert done.returncode == 0, done.stderr
    assert "agree" in done.stdout


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ('"redis>=5,<9"', '"redis>=5,<8"', "redis: pyproject.toml says `redis>=5,<8`, the lock was made from"),
        ('"orjson>=3.9",', '"orjson>=3.9",\n    "rich>=13",', "rich: `rich>=13` is in pyproject.toml but not in"),
        ('    "orjson>=3.9",\n', "", "orjson: `orjson>=3.9` is in the lock but no longer in pyproject.toml"),
    ],
    ids=["re-ranged", "added", "removed"],
)
def test_check_names_the_package_when_pyproject_changed_without_make_lock(
    copy: Path, old: str, new: str, named: str
) -> None:
    _edit(copy / "pyproject.toml", old, new)
    done = _check(copy)
    assert done.returncode == 1
    assert named in done.stderr
    assert "Run `make lock`" in done.stderr


def test_check_refuses_a_hand_edited_pin_outside_its_range(copy: Path) -> None:
    _edit(copy / "requirements" / "lock.txt", "\nruff==0.14.14 \\", "\nruff==0.14.13 \\")
    done = _check(copy)
    assert done.returncode == 1
    assert "ruff: the lock pins 0.14.13, outside `ruff==0.14.14`" in done.stderr


def test_check_refuses_an_image_subset_that_differs_from_the_lock(copy: Path) -> None:
    pins = lockfile.read_pins(copy / "requirements" / "image-gateway.txt")
    starlette = pins["starlette"].version
    _edit(copy / "requirements" / "image-gateway.txt", f"starlette=={starlette}", "starlette==1.0.0")
    done = _check(copy)
    assert done.returncode == 1
    assert f"starlette: requirements/image-gateway.txt pins 1.0.0, but it is {starlette} in the lock" in done.stderr


def test_makefile_ci_and_images_install_only_from_the_lock() -> None:
    """No target resolves a version of its own: the venv is synced from the lock, the images install their locked
    subsets with hashes, and nothing else in the repository runs a bare `pip install <name>`."""
    makefile = (ROOT / "Makefile").read_text()
    assert "requirements/lockfile.py sync" in makefile and "pip install" not in makefile
    for dockerfile in ("Dockerfile", "Dockerfile.triton-cpu"):
        text = (ROOT / "deploy" / dockerfile).read_text()
        installs = [line for line in text.splitlines() if "pip install" in line and not line.startswith("#")]
        assert installs and all("--require-hashes" in line for line in installs), installs
    perf = (ROOT / "bench" / "perf_analyzer.py").read_text()  # the one tool downloaded outside the venv
    assert perf.count('"--require-hashes"') == 2 and "perf-analyzer.txt" in perf


def _apt_packages_named_in_the_repository() -> set[str]:
    """Every package an `apt-get install` in a script or the Makefile names, and the Debian packages
    deploy/containers.py installs through its constants."""
    found: set[str] = set()
    sources = [
        ROOT / "Makefile",
        *ROOT.glob("deploy/*.py"),
        *ROOT.glob("bench/**/*.py"),
        *ROOT.glob("tritonlocal/*.py"),
    ]
    for path in sources:
        for match in re.finditer(r"apt-get install ([^\n\"')>;&|`]*)", path.read_text()):
            words = match.group(1).replace('",', " ").split()
            found |= {
                w for w in words if not w.startswith(("-", "$", "{")) and re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", w)
            }
    containers = (ROOT / "deploy" / "containers.py").read_text()
    for constant in ("BASE_PACKAGES", "BUILD_DEBS", "REDIS_DEBS"):
        body = re.search(rf"^{constant} = \(([^)]*)\)", containers, re.M)
        assert body, constant
        found |= set(re.findall(r'"([a-z0-9.+-]+)"', body.group(1)))
    mapping = re.search(r"^PACKAGE_OF = \{(.*?)^\}", containers, re.M | re.S)
    assert mapping
    found |= set(re.findall(r':\s*"([a-z0-9.+-]+)"', mapping.group(1)))
    return found - {"y", "qq"}


def test_every_debian_package_the_scripts_install_is_recorded_with_a_version() -> None:
    recorded = lockfile.system_packages()
    named = _apt_packages_named_in_the_repository()
    assert {"chromium", "curl", "redis-server", "docker.io", "debootstrap", "libb64-0d"} <= named
    assert named - set(recorded) == set(), "add them to requirements/system.txt"
    assert all(re.match(r"[0-9]", version) for version in recorded.values()), recorded
