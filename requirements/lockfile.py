"""The dependency lock: every Python package any target installs, with exact versions and hashes.

    python requirements/lockfile.py compile [--upgrade]   # `make lock` / `make lock-upgrade`: pyproject.toml -> lock
    python requirements/lockfile.py sync                  # `make install`: the venv becomes exactly the lock
    python requirements/lockfile.py check                 # `make check`: pyproject.toml, the lock, its subsets and
                                                          # the installed packages agree, or it names what differs
    python requirements/lockfile.py system                # the Debian packages of requirements/system.txt: installed
                                                          # versions beside the recorded ones (CI prints them)

Files (all written by `compile`, none by hand):
    requirements/lock.txt            the lock: [project] dependencies, the extras of [tool.yolo-triton.lock], the
                                     installer and the build backend, resolved by uv for the images' Python
    requirements/image-gateway.txt   what deploy/Dockerfile installs: the gateway's runtime, a subset of the lock
    requirements/image-triton.txt    what deploy/Dockerfile.triton-cpu installs (PyTriton without its own deps)
    requirements/image-worker.txt    what deploy/Dockerfile.worker installs: the gateway's runtime and the exporter
    requirements/perf-analyzer.txt   what `python -m bench tools` downloads (outside the venv: Triton 2.51's client)

The install itself stays on plain pip (`pip install --require-hashes`): pip finds this machine's local torch wheel,
which uv does not look for, and the hashes are PyPI's, so a local copy is used only when it is the same file.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "requirements"
LOCK = HERE / "lock.txt"
SYSTEM = HERE / "system.txt"
# The project itself (installed editable, without dependencies, after the lock) is not a locked package.
PROJECT = "yolo-triton"
# The images' subsets: (file, pyproject lists, names installed without their own dependencies, names left out). The
# triton image needs only PyTriton's server binary and backends, not its Python API's dependencies
# (deploy/Dockerfile.triton-cpu). The export worker's image (deploy/Dockerfile.worker) leaves out `triton`, torch's
# GPU kernel compiler (897 MB installed), which only torch.compile uses: the exporter never compiles (an export and its
# verification run with it unimportable).
IMAGES = (
    ("image-gateway.txt", ("dependencies",), (), ()),
    ("image-triton.txt", ("triton",), ("nvidia-pytriton",), ()),
    ("image-worker.txt", ("dependencies", "export"), (), ("triton",)),
)
# `python -m bench tools` (bench/perf_analyzer.py): perf_analyzer from Triton 2.51's client wheel, and the CUDA 12
# runtime it links. Resolved on their own: the venv's tritonclient is newer.
PERF_ANALYZER = ("tritonclient==2.51.0", "nvidia-cuda-runtime-cu12==12.6.77")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")
INPUT = "# input: "
RUN_LOCK = "Run `make lock` (it keeps every other pin), then `make install` and the tests."


class LockError(RuntimeError):
    """The lock and what it was made from (or what is installed) disagree; the message says what to run."""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Config:
    """[tool.yolo-triton.lock] of pyproject.toml."""

    extras: tuple[str, ...]
    also: tuple[str, ...]
    python: str
    platform: str


def pyproject(path: Path = ROOT / "pyproject.toml") -> dict[str, object]:
    with path.open("rb") as f:
        return tomllib.load(f)


def config(project: dict[str, object]) -> Config:
    table = project["tool"]["yolo-triton"]["lock"]  # type: ignore[index]
    return Config(tuple(table["extras"]), tuple(table["also"]), str(table["python"]), str(table["platform"]))


def inputs(project: dict[str, object]) -> list[str]:
    """Every requirement the lock is made from, as written in pyproject.toml, in a stable order."""
    cfg = config(project)
    meta = project["project"]
    out = list(meta["dependencies"])  # type: ignore[index]
    for extra in cfg.extras:
        out += meta["optional-dependencies"][extra]  # type: ignore[index]
    out += project["build-system"]["requires"]  # type: ignore[index]
    out += cfg.also
    return sorted(dict.fromkeys(" ".join(r.split()) for r in out), key=str.lower)


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise LockError(f"cannot read the package name of {requirement!r} in pyproject.toml")
    return normalize(match.group(1))


@dataclass(frozen=True)
class Pin:
    name: str  # normalized
    version: str
    hashes: frozenset[str]
    text: str  # the entry as the lock writes it (`name==version \` and its hash lines)


def read_pins(path: Path) -> dict[str, Pin]:
    """The `name==version --hash=...` entries of a requirements file written by uv."""
    pins: dict[str, Pin] = {}
    entry: list[str] = []

    def close() -> None:
        if entry:
            match = PIN.match(entry[0])
            if not match:
                raise LockError(f"{path.name}: cannot read the entry {entry[0]!r}")
            text = "\n".join(entry)
            name = normalize(match.group(1))
            pins[name] = Pin(name, match.group(2), frozenset(HASH.findall(text)), text)
            entry.clear()

    for line in path.read_text().splitlines():
        if PIN.match(line):
            close()
            entry.append(line)
        elif entry and line.startswith("    --hash="):
            entry.append(line)
        else:
            close()
    close()
    return pins


def recorded_inputs(path: Path = LOCK) -> list[str]:
    return [line[len(INPUT) :] for line in path.read_text().splitlines() if line.startswith(INPUT)]


# --- compile ---------------------------------------------------------------------------------------------------


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        raise LockError("uv is not installed: run `make install` (the lint extra brings it)")
    return found


def _compile(
    cfg: Config,
    requirements: list[str],
    out: Path,
    constraints: Path | None,
    upgrade: bool,
    no_deps: bool = False,
    leave_out: tuple[str, ...] = (),
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "requirements.in"
        source.write_text("\n".join(requirements) + "\n")
        command = [
            uv(), "pip", "compile", "--quiet", "--no-config", "--no-header", "--generate-hashes",
            "--python-version", cfg.python, "--python-platform", cfg.platform,
            str(source), "-o", str(out),
        ]  # fmt: skip
        if no_deps:
            command.append("--no-deps")
        for name in leave_out:  # resolved (its dependencies stay), not written
            command += ["--no-emit-package", name]
        if constraints is not None:
            pins = read_pins(constraints)
            plain = Path(tmp) / "constraints.txt"
            plain.write_text("".join(f"{p.name}=={p.version}\n" for p in pins.values()))
            command += ["-c", str(plain)]
        if upgrade:
            command.append("--upgrade")
        result = subprocess.run(command, text=True, capture_output=True, check=False)
        if result.returncode != 0:
            raise LockError(f"uv could not resolve {out.name}:\n{result.stderr.strip()}")
        # uv writes the temporary file's path into its "# via -r ..." notes: say where it really came from
        text = out.read_text().replace(f"-r {source}", "pyproject.toml")
        out.write_text(text.replace(f"-c {Path(tmp) / 'constraints.txt'}", "requirements/lock.txt"))


def _header(what: str, cfg: Config, lines: list[str]) -> str:
    version = subprocess.run([uv(), "--version"], text=True, capture_output=True, check=True).stdout.split()[1]
    return (
        f"# {what}\n"
        "# Made by `make lock` (requirements/lockfile.py) from pyproject.toml: do not edit by hand.\n"
        f"# Resolved by uv {version} for CPython {cfg.python} on {cfg.platform} (Debian 12); installed with\n"
        "# `pip install --require-hashes`, so every file must match one of its hashes.\n"
        + "".join(f"{line}\n" for line in lines)
    )


def compile_lock(upgrade: bool = False) -> None:
    project = pyproject()
    cfg = config(project)
    wanted = inputs(project)
    # Pins of the existing lock are kept unless `--upgrade`: uv reads them from the output file.
    _compile(cfg, wanted, LOCK, None, upgrade)
    body = LOCK.read_text()
    what = "requirements/lock.txt: every Python package that any target installs, exact versions and hashes."
    notes = [
        "# The extras locked: " + ", ".join(cfg.extras) + " (and the [project] dependencies, the build backend and",
        "# the installer). The ranges in pyproject.toml say what the code accepts; what is tested is this lock.",
        *(INPUT + r for r in wanted),
    ]
    LOCK.write_text(_header(what, cfg, notes) + body)
    meta = project["project"]
    for name, sources, no_deps, leave_out in IMAGES:
        listed = [
            r
            for source in sources
            for r in (meta["dependencies"] if source == "dependencies" else meta["optional-dependencies"][source])  # type: ignore[index]
        ]
        resolved = [r for r in dict.fromkeys(listed) if requirement_name(r) not in no_deps]
        path = HERE / name
        _compile(cfg, resolved, path, LOCK, upgrade=False, leave_out=leave_out)
        pins = read_pins(LOCK)
        extra = "".join(pins[n].text + "\n    # installed without its dependencies\n" for n in no_deps)
        what = f"requirements/{name}: the image's packages, a subset of requirements/lock.txt (same versions)."
        notes = ["# installed with pip install --no-deps: the list is complete"]
        notes += [
            f"# left out (a dependency the image never imports; see IMAGES in lockfile.py): {n}" for n in leave_out
        ]
        path.write_text(_header(what, cfg, notes) + extra + path.read_text())
    path = HERE / "perf-analyzer.txt"
    _compile(cfg, list(PERF_ANALYZER), path, None, upgrade, no_deps=True)
    what = "requirements/perf-analyzer.txt: what `python -m bench tools` downloads (not installed into the venv)."
    path.write_text(_header(what, cfg, []) + path.read_text())
    print(f"[lock] wrote {LOCK.relative_to(ROOT)} ({len(read_pins(LOCK))} packages) and its subsets")


# --- check -----------------------------------------------------------------------------------------------------


def check_inputs(project: dict[str, object], lock: Path = LOCK) -> list[str]:
    """What changed in pyproject.toml since the lock was made, one line per package, and locked versions that do
    not satisfy their range (a hand-edited lock)."""
    from packaging.requirements import Requirement

    now = {requirement_name(r): r for r in inputs(project)}
    then = {requirement_name(r): r for r in recorded_inputs(lock)}
    problems = []
    for name in sorted(now.keys() | then.keys()):
        if name not in then:
            problems.append(f"{name}: `{now[name]}` is in pyproject.toml but not in the lock (added since)")
        elif name not in now:
            problems.append(f"{name}: `{then[name]}` is in the lock but no longer in pyproject.toml (removed since)")
        elif now[name] != then[name]:
            problems.append(f"{name}: pyproject.toml says `{now[name]}`, the lock was made from `{then[name]}`")
    pins = read_pins(lock)
    for name, text in now.items():
        requirement = Requirement(text)
        pin = pins.get(name)
        if name in then and pin is None:
            problems.append(f"{name}: required by pyproject.toml but missing from the lock")
        elif pin is not None and not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{name}: the lock pins {pin.version}, outside `{text}`")
    for name, pin in pins.items():
        if not pin.hashes:
            problems.append(f"{name}: no hash in the lock")
    return problems


def check_subsets() -> list[str]:
    """Each image's file pins what the lock pins, with hashes the lock lists."""
    pins = read_pins(LOCK)
    problems = []
    for name, _, _, _ in IMAGES:
        for pin in read_pins(HERE / name).values():
            locked = pins.get(pin.name)
            if locked is None or locked.version != pin.version:
                have = "is not in the lock" if locked is None else f"is {locked.version} in the lock"
                problems.append(f"{pin.name}: requirements/{name} pins {pin.version}, but it {have}")
            elif not pin.hashes <= locked.hashes:
                problems.append(f"{pin.name}: requirements/{name} lists hashes the lock does not")
    return problems


def installed() -> dict[str, str]:
    """Distributions in the running interpreter's environment (what `pip freeze --all` lists), but the project."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and normalize(name) != PROJECT:
            out[normalize(name)] = dist.version
    return out


def check_environment(lock: Path = LOCK) -> list[str]:
    pins = {name: pin.version for name, pin in read_pins(lock).items()}
    have = installed()
    problems = []
    for name in sorted(pins.keys() | have.keys()):
        if name not in have:
            problems.append(f"{name}=={pins[name]} is in the lock but not installed")
        elif name not in pins:
            problems.append(f"{name}=={have[name]} is installed but not in the lock")
        elif pins[name] != have[name]:
            problems.append(f"{name}: {have[name]} is installed, the lock pins {pins[name]}")
    return problems


def check() -> None:
    project = pyproject()
    stale = check_inputs(project) + check_subsets()
    if stale:
        raise LockError("pyproject.toml and requirements/lock.txt disagree:\n  " + "\n  ".join(stale) + f"\n{RUN_LOCK}")
    drift = check_environment()
    if drift:
        raise LockError(
            f"the environment of {sys.prefix} is not the lock:\n  " + "\n  ".join(drift)
            + "\nRun `make install` (it installs exactly requirements/lock.txt)."
        )  # fmt: skip
    print(f"[lock] pyproject.toml, requirements/lock.txt and {len(installed())} installed packages agree")


# --- sync ------------------------------------------------------------------------------------------------------


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    if subprocess.run(command, check=False).returncode != 0:
        raise LockError(f"failed: {' '.join(command[2:])}")


def sync() -> None:
    """Install the lock, remove what it does not list, install the project itself (no dependencies, no build
    isolation: its build backend is locked too), then check that the environment is exactly the lock."""
    pip("install", "-qq", "--require-hashes", "-r", str(LOCK))  # -qq: not the warnings of unused local indexes
    extra = sorted(set(installed()) - set(read_pins(LOCK)))
    if extra:
        print(f"[lock] removing what the lock does not list: {' '.join(extra)}")
        pip("uninstall", "--quiet", "--yes", *extra)
    pip("install", "-qq", "--no-deps", "--no-build-isolation", "--editable", str(ROOT))
    drift = check_environment()
    if drift:
        raise LockError("after installing, the environment is not the lock:\n  " + "\n  ".join(drift))


# --- system packages -------------------------------------------------------------------------------------------


def system_packages(path: Path = SYSTEM) -> dict[str, str]:
    """requirements/system.txt: Debian package -> the version recorded (what CI used)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version, *_ = line.split()
            out[name] = version
    return out


def system() -> None:
    """Print each recorded Debian package's installed version beside the recorded one."""
    for name, recorded in system_packages().items():
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", name], text=True, capture_output=True, check=False
        )
        now = result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "not installed"
        note = "" if now == recorded else "   (differs from the recorded version)"
        print(f"[system] {name:28} {now:36} recorded {recorded}{note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="requirements/lockfile.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["compile", "sync", "check", "system"])
    parser.add_argument("--upgrade", action="store_true", help="(compile) move every package to its newest release")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    try:
        if args.command == "compile":
            compile_lock(args.upgrade)
        elif args.command == "sync":
            sync()
        elif args.command == "check":
            check()
        else:
            system()
    except LockError as exc:
        print(f"[lock] {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
