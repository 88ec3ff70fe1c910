"""Build the images and run the stack in containers on this machine: `make images`, `make container-test`.

    python deploy/containers.py images           # engine, base image, wheels, then the images; prints sizes, times
    python deploy/containers.py test [ARGS...]   # images, then `pytest -m container tests/test_containers.py ARGS`
    python deploy/containers.py up | down        # the CPU stack of deploy/compose.cpu.yaml on 127.0.0.1:$GATEWAY_PORT
    python deploy/containers.py up --redis       # three gateways, one Redis and the export worker
                                                 # (deploy/compose.redis.yaml) on 127.0.0.1:$GATEWAY_PORT, +1 and
                                                 # +2, uploads in $MODELS_DATA; `down --redis` stops it
    python deploy/containers.py engine-stop      # stop the engine this script started (after `images` or `up`)

No image registry is needed. The base image is Debian 12 made with `debootstrap` from Debian's mirror and
`docker import`ed (its Debian point release is recorded in a label and printed); Python packages are the wheels of
requirements/image-*.txt (subsets of the lock, requirements/lock.txt), downloaded on the host with their hashes
checked, and installed in the image with `--no-index --require-hashes`. Where registries are reachable,
`docker build -f deploy/Dockerfile .` builds the same gateway image from the public `python` image instead.

When no Docker engine answers, Debian's `docker.io` (and `docker-compose`, `debootstrap`) are installed with apt
and `dockerd` is started with its own data folder and socket under the cache, without touching the host's
iptables or IP forwarding, and stopped afterwards by its process id. Everything cached (the root filesystem, the
wheels, the .deb files, the engine's layers) lives outside the repository in $YOLO_TRITON_CACHE (default
/var/cache/yolo-triton) and only makes a second run faster; deleting it is always safe.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CACHE = Path(os.environ.get("YOLO_TRITON_CACHE", "/var/cache/yolo-triton"))
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
GATEWAY_IMAGE = f"yolo-triton-gateway:{VERSION}"
TRITON_IMAGE = f"yolo-triton-triton-cpu:{VERSION}"
REDIS_IMAGE = f"yolo-triton-redis:{VERSION}"
WORKER_IMAGE = f"yolo-triton-worker:{VERSION}"
COMPOSE_FILE = DEPLOY / "compose.cpu.yaml"
PROJECT = "yolo-triton-cpu"
REDIS_COMPOSE_FILE = DEPLOY / "compose.redis.yaml"
REDIS_PROJECT = "yolo-triton-redis"
REDIS_GATEWAYS = ("gateway-1", "gateway-2", "gateway-3")
# The generated password of the Redis stack (mode 0600), for `down` and for the keys tool by hand.
REDIS_PASSWORD_FILE = CACHE / "redis-stack.password"
# The key of Triton's restricted APIs (repository, metadata, ...), drawn by `up` for each stack and given to Triton,
# the gateways (their model index calls) and the export worker (loads, unloads); mode 0600, for `down` and by hand.
ADMIN_KEY_FILE = {PROJECT: CACHE / "cpu-stack.triton-admin-key", REDIS_PROJECT: CACHE / "redis-stack.triton-admin-key"}
# The uploads volume's layout in the Redis stack (the chart's too): models/ is GATEWAY_MODELS_DIR (uploads/ written by
# the gateways; staging/, versions/ by the worker), repository/ the uploads' Triton repository (the worker writes it,
# Triton reads it). Owned by the gateway's and worker's uid; Triton (uid 1000) reads through the others' bits.
MODELS_DATA_DIRS = ("models/uploads", "repository", "jobs")  # jobs/: GATEWAY_JOBS_DIR, shared by the gateways
WORKER_UID = 10001
LABEL = "io.yolo-triton.local=1"  # every image built here carries it, so pruning never touches anyone else's
DEBIAN_LABEL = "io.yolo-triton.debian"  # the base's Debian point release and archive dates (`debian_release`)

SUITE = "bookworm"
MIRROR = os.environ.get("YOLO_TRITON_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("YOLO_TRITON_DEBIAN_SECURITY", "http://deb.debian.org/debian-security")
# The base both images start from: Debian's Python 3.11 (the gateway's venv), and libpython for Triton's stub.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "libpython3.11")
# Wheels for the images' interpreter (Debian 12: CPython 3.11, glibc 2.36), whatever Python runs this script. pip
# takes a given platform literally (no older glibc implied), so every manylinux tag up to 2.36 is listed.
MANYLINUX = ["manylinux1", "manylinux2010", "manylinux2014", *(f"manylinux_2_{minor}" for minor in range(5, 37))]
WHEEL_TAGS = [
    *(a for tag in MANYLINUX for a in ("--platform", f"{tag}_x86_64")),
    *("--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none"),
]

# Debian packages the image builds install (they run without network): `strip` for the build stages, Redis.
BUILD_DEBS = ("binutils",)
REDIS_DEBS = ("redis-server",)

PACKAGE_OF = {
    "dockerd": "docker.io",
    "docker": "docker.io",
    "docker-compose": "docker-compose",
    "debootstrap": "debootstrap",
}


class StepError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[containers] {message}", flush=True)


def run(
    args: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    check: bool = True,
    capture: bool = False,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """One step with a time bound; on failure the error names the command and shows its output's tail."""
    try:
        result = subprocess.run(
            list(args), env=env, cwd=cwd, text=True, timeout=timeout,
            stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise StepError(f"timed out after {timeout:.0f} s: {' '.join(args)}") from exc
    if check and result.returncode != 0:
        tail = "\n".join((result.stdout or "").splitlines()[-30:])
        raise StepError(f"exit {result.returncode}: {' '.join(args)}\n{tail}")
    return result


@contextlib.contextmanager
def timed(what: str, times: dict[str, float]) -> Iterator[None]:
    start = time.monotonic()
    yield
    times[what] = time.monotonic() - start
    log(f"{what}: {times[what]:.1f} s")


# --- the engine ------------------------------------------------------------------------------------------------


_apt_updated: list[bool] = []


def apt_install(packages: Sequence[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing with apt: {' '.join(packages)}")
    if not _apt_updated:
        run(["apt-get", "update", "-qq"], timeout=300, env=env, capture=True)
        _apt_updated.append(True)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], timeout=900, env=env, capture=True)


def ensure_commands(*commands: str) -> None:
    missing = sorted({PACKAGE_OF[c] for c in commands if shutil.which(c) is None})
    if missing:
        if os.geteuid() != 0:
            raise StepError(
                f"missing {', '.join(missing)}; install them (apt-get install {' '.join(missing)}) or run as root"
            )
        apt_install(missing)


@dataclass
class Engine:
    """A Docker engine to talk to; `pid` is set when this script started it (and so must stop it)."""

    env: dict[str, str]
    pid: int | None = None
    home: Path = field(default_factory=lambda: CACHE / "docker")
    process: subprocess.Popen[bytes] | None = None  # when started by this process: reaped after stopping

    def docker(self, *args: str, timeout: float = 120, check: bool = True, capture: bool = True) -> str:
        return run(["docker", *args], env=self.env, timeout=timeout, check=check, capture=capture).stdout or ""

    def compose(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300, redis: bool = False) -> str:
        project, path = (REDIS_PROJECT, REDIS_COMPOSE_FILE) if redis else (PROJECT, COMPOSE_FILE)
        command = ["docker-compose", "--ansi", "never", "-p", project, "-f", str(path), *args]
        return run(command, env={**self.env, **(env or {})}, timeout=timeout, capture=True).stdout or ""

    def stop(self) -> None:
        """SIGTERM the dockerd this script started, by its process id; it stops its containerd and containers."""
        if self.pid is None:
            return
        log(f"stopping dockerd (pid {self.pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _alive(self.pid):
                time.sleep(0.2)
            if _alive(self.pid):
                log("dockerd still running after 60 s: SIGKILL")
                os.kill(self.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(30)
        self.pid = None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _answers(env: dict[str, str]) -> bool:
    if shutil.which("docker") is None:
        return False
    result = run(
        ["docker", "version", "--format", "{{.Server.Version}}"], env=env, timeout=20, check=False, capture=True
    )
    return result.returncode == 0


def engine(start: bool = True) -> Engine:
    """The engine in DOCKER_HOST or the default socket if one answers, else ours (started when `start`)."""
    home = CACHE / "docker"
    own = {**os.environ, "DOCKER_HOST": f"unix://{home / 'docker.sock'}"}
    pidfile = home / "dockerd.pid"
    if _answers(own):  # left by an earlier run of this script (e.g. `up`): ours to stop
        return Engine(own, int(pidfile.read_text()) if pidfile.exists() else None, home)
    if os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists():
        if _answers(dict(os.environ)):
            return Engine(dict(os.environ), None, home)
    if not start:
        raise StepError("no Docker engine answers (run `make images` first)")
    ensure_commands("dockerd", "docker", "docker-compose")
    if os.geteuid() != 0:
        raise StepError("no Docker engine answers and starting dockerd needs root")
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "dockerd.log"
    # --iptables/--ip-forward/--ip-masq=false: the host's firewall and forwarding stay as they were, containers get
    # no route off this machine, and published ports go through docker-proxy on the address given (127.0.0.1).
    command = [
        "dockerd",
        f"--data-root={home / 'data'}",
        f"--exec-root={home / 'run'}",
        f"--pidfile={pidfile}",
        f"--host=unix://{home / 'docker.sock'}",
        "--iptables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--bridge=none",
        "--log-level=warn",
    ]
    if storage := os.environ.get("YOLO_TRITON_STORAGE_DRIVER"):  # e.g. vfs where overlayfs is not available
        command.append(f"--storage-driver={storage}")
    with open(log_path, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started = Engine(own, process.pid, home, process)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise StepError(f"dockerd exited with {process.returncode}:\n{tail}")
        if _answers(own):
            driver = started.docker("info", "--format", "{{.Driver}}").strip()
            log(f"started dockerd (pid {process.pid}, storage {driver}, data {home / 'data'})")
            return started
        time.sleep(0.5)
    started.stop()
    raise StepError(f"dockerd did not answer within 90 s; see {log_path}")


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """One run at a time on this machine: they share the engine, its socket and the image tags."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "containers.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another run holds the lock; waiting (at most 30 min)")
            deadline = time.monotonic() + 1800
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StepError("lock still held after 30 min") from None
                    time.sleep(2)
        yield


# --- the base image --------------------------------------------------------------------------------------------


def base_image(eng: Engine) -> str:
    """Debian 12 with Python 3.11, made with debootstrap (cached as a tarball), imported into the engine."""
    recipe = json.dumps([SUITE, BASE_PACKAGES, 3]).encode()  # bump when _debootstrap changes
    tag = f"yolo-triton-base:{SUITE}-{hashlib.sha256(recipe).hexdigest()[:10]}"
    if run(["docker", "image", "inspect", tag], env=eng.env, timeout=30, check=False, capture=True).returncode == 0:
        return tag
    tarball = CACHE / "base" / f"{tag.split(':')[1]}.tar"
    if not tarball.exists() or not tarball.with_suffix(".release").exists():
        _debootstrap(tarball)
    release = tarball.with_suffix(".release").read_text().strip()
    log(f"importing {tarball.name} as {tag}: {release}")
    eng.docker(
        "import", "--change", 'CMD ["bash"]', "--change", "LABEL " + LABEL,
        "--change", f"LABEL {DEBIAN_LABEL}={json.dumps(release)}",
        "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        str(tarball), tag, timeout=600,
    )  # fmt: skip
    for old in (CACHE / "base").glob("*.tar"):  # an earlier recipe's root filesystem and image
        if old != tarball:
            old.unlink()
            old.with_suffix(".release").unlink(missing_ok=True)
    stale = eng.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "yolo-triton-base").split()
    for image in set(stale) - {tag}:
        eng.docker("rmi", image, check=False)
    return tag


def _debootstrap(tarball: Path) -> None:
    ensure_commands("debootstrap")
    rootfs = tarball.with_suffix(".rootfs")
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.mkdir(parents=True)
    log(f"debootstrap {SUITE} from {MIRROR} (a few minutes; cached in {tarball.parent})")
    try:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), MIRROR],
            timeout=1500, capture=True)  # fmt: skip
        # Security and point-release updates on top of the release itself.
        (rootfs / "etc/apt/sources.list").write_text(
            f"deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\n"
            f"deb {SECURITY_MIRROR} {SUITE}-security main\n"
        )
        shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        run(["chroot", str(rootfs), "apt-get", "update", "-qq"], timeout=300, env=env, capture=True)
        run(["chroot", str(rootfs), "apt-get", "-y", "-qq", "upgrade"], timeout=600, env=env, capture=True)
        run(["chroot", str(rootfs), "apt-get", "clean"], timeout=60, env=env)
        # Debian's mirror keeps only the newest build of each package, so the base can't be pinned to a snapshot
        # (snapshot.debian.org is not reachable here): what it was built from is recorded instead.
        tarball.with_suffix(".release").write_text(debian_release(rootfs) + "\n")
        # Package lists, documentation and message translations (33 MB): nothing in the images reads them.
        junk = ("var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale")
        for folder in junk:
            for child in (rootfs / folder).glob("*"):
                if child.name == "locale.alias":  # read by glibc's setlocale
                    continue
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        (rootfs / "etc/resolv.conf").unlink()  # the engine provides it per container
        partial = tarball.with_suffix(".partial")
        run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), "."], timeout=600)
        partial.rename(tarball)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def debian_release(rootfs: Path) -> str:
    """`Debian 12.15; bookworm of <date>, bookworm-updates of <date>, ...`: the point release, and the date of each
    suite's index that apt read (which archive state the packages came from)."""
    version = (rootfs / "etc/debian_version").read_text().strip()
    suites = []
    for index in sorted((rootfs / "var/lib/apt/lists").glob("*_dists_*_InRelease")):
        suite = index.name.split("_dists_")[1].removesuffix("_InRelease").replace("_", "/")
        date = next(
            (line[5:].strip() for line in index.read_text(errors="replace").splitlines() if line.startswith("Date:")),
            "?",
        )
        suites.append(f"{suite} of {date}")
    return f"Debian {version}; " + ", ".join(sorted(suites))  # bookworm, bookworm-security, bookworm-updates


# --- wheels and build contexts ---------------------------------------------------------------------------------


def image_requirements(name: str) -> Path:
    """The locked list an image installs (`make lock` writes it: requirements/lockfile.py)."""
    return ROOT / "requirements" / f"image-{name}.txt"


def wheels(name: str) -> Path:
    """Download (once) the wheels of requirements/image-<name>.txt into CACHE/wheels/<name>-<hash>/; pip checks each
    file against the lock's hashes, and resolves nothing (the list is complete)."""
    requirements = image_requirements(name)
    key = hashlib.sha256(json.dumps([requirements.read_text(), WHEEL_TAGS]).encode()).hexdigest()[:12]
    folder = CACHE / "wheels" / f"{name}-{key}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log(f"downloading wheels for {name} ({requirements.relative_to(ROOT)})")
    run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
         "--require-hashes", "--no-deps", *WHEEL_TAGS, "--dest", str(folder), "-r", str(requirements)],
        timeout=900, capture=True,
    )  # fmt: skip
    for old in (CACHE / "wheels").glob(f"{name}-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    (folder / ".complete").write_text("")
    return folder


def debs(eng: Engine, base: str, name: str, packages: Sequence[str]) -> Path:
    """Download (once) `packages` and what they need beyond `base` into CACHE/debs/<name>-<hash>/: apt resolves them
    inside the base image, in a container on the host's network (the image builds themselves run without one)."""
    key = hashlib.sha256(json.dumps([base, list(packages)]).encode()).hexdigest()[:12]
    folder = CACHE / "debs" / f"{name}-{key}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log(f"downloading Debian packages for {name}: {' '.join(packages)}")
    script = (
        "export DEBIAN_FRONTEND=noninteractive && apt-get update -qq && "
        f"apt-get install -y -qq --download-only --no-install-recommends {' '.join(packages)} && "
        "cp /var/cache/apt/archives/*.deb /out/"
    )
    eng.docker(
        "run", "--rm", "--network=host", "-v", f"{folder}:/out", "--entrypoint=sh", base, "-c", script, timeout=600
    )
    if not list(folder.glob("*.deb")):
        raise StepError(f"apt downloaded no package for {' '.join(packages)} (all of them already in {base}?)")
    for old in (CACHE / "debs").glob(f"{name}-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    (folder / ".complete").write_text("")
    return folder


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _link_files(source: Path, target: Path, pattern: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for whl in source.glob(pattern):
        try:
            os.link(whl, target / whl.name)
        except OSError:
            shutil.copy2(whl, target / whl.name)


def context(name: str, wheel_dir: Path | None, deb_dir: Path | None) -> Path:
    """What deploy/Dockerfile*.dockerignore let through, plus the wheels in deploy/wheels/ and the .deb files in
    deploy/debs/. The classic builder reads no per-Dockerfile ignore file, and the repository holds .venv and model
    caches that must not be sent."""
    ctx = CACHE / "context" / name
    shutil.rmtree(ctx, ignore_errors=True)
    (ctx / "deploy").mkdir(parents=True)
    if wheel_dir is not None:
        (ctx / "requirements").mkdir()
        shutil.copy2(image_requirements(name), ctx / "requirements" / image_requirements(name).name)
        _link_files(wheel_dir, ctx / "deploy" / "wheels", "*.whl")
    if name in ("gateway", "worker"):
        _copy_tree(ROOT / "gateway", ctx / "gateway")
    if name == "worker":  # the exporter, and the parity tolerances its verification shares with the tests
        _copy_tree(ROOT / "export", ctx / "export")
        (ctx / "bench").mkdir()
        for module in ("__init__.py", "parity.py"):
            shutil.copy2(ROOT / "bench" / module, ctx / "bench" / module)
    if deb_dir is not None:
        _link_files(deb_dir, ctx / "deploy" / "debs", "*.deb")
    return ctx


def image_id(eng: Engine, tag: str) -> str | None:
    result = run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", tag], env=eng.env, timeout=30, check=False, capture=True
    )
    return result.stdout.strip() if result.returncode == 0 else None


def build(eng: Engine, tag: str, dockerfile: Path, context: Path, base: str, base_arg: str = "PYTHON_IMAGE") -> None:
    env_args = ["--build-arg", f"{base_arg}={base}"]
    if base_arg == "PYTHON_IMAGE":
        env_args += ["--build-arg", "PIP_NO_INDEX=1"]
    previous = image_id(eng, tag)
    log(f"building {tag} (log: {CACHE / 'logs' / context.name}.log)")
    # The classic builder: BuildKit would fetch the `# syntax=` frontend from a registry. No network inside.
    result = run(
        ["docker", "build", "--network=none", "--rm", "--force-rm", "--label", LABEL, "-f", str(dockerfile),
         "-t", tag, *env_args, str(context)],
        env={**eng.env, "DOCKER_BUILDKIT": "0"}, timeout=1800, capture=True,
    )  # fmt: skip
    (CACHE / "logs").mkdir(exist_ok=True)
    (CACHE / "logs" / f"{context.name}.log").write_text(result.stdout or "")
    if previous and previous != image_id(eng, tag):
        eng.docker("rmi", previous, check=False)  # the tag's previous image; its build-stage layers stay as cache
    # Build-stage layers of inputs that changed a week ago or more: the engine's folder does not grow forever.
    eng.docker("image", "prune", "--force", "--filter", "until=168h", check=False)


def image_size(eng: Engine, tag: str) -> int:
    return int(eng.docker("image", "inspect", "--format", "{{.Size}}", tag).strip())


def images(eng: Engine) -> dict[str, float]:
    times: dict[str, float] = {}
    with timed("base image", times):
        base = base_image(eng)
    with timed("wheels", times):
        gateway_wheels, triton_wheels = wheels("gateway"), wheels("triton")
    with timed("wheels for the worker", times):
        worker_wheels = wheels("worker")
    with timed("debs", times):
        build_debs, redis_debs = debs(eng, base, "build", BUILD_DEBS), debs(eng, base, "redis", REDIS_DEBS)
    with timed(f"build {GATEWAY_IMAGE}", times):
        build(eng, GATEWAY_IMAGE, DEPLOY / "Dockerfile", context("gateway", gateway_wheels, build_debs), base)
    with timed(f"build {TRITON_IMAGE}", times):
        build(eng, TRITON_IMAGE, DEPLOY / "Dockerfile.triton-cpu", context("triton", triton_wheels, build_debs), base)
    with timed(f"build {REDIS_IMAGE}", times):
        build(eng, REDIS_IMAGE, DEPLOY / "Dockerfile.redis", context("redis", None, redis_debs), base, "BASE_IMAGE")
    with timed(f"build {WORKER_IMAGE}", times):
        build(eng, WORKER_IMAGE, DEPLOY / "Dockerfile.worker", context("worker", worker_wheels, None), base)
    for tag in (GATEWAY_IMAGE, TRITON_IMAGE, REDIS_IMAGE, WORKER_IMAGE):
        log(f"{tag}: {image_size(eng, tag) / 1e6:.0f} MB")
    return times


# --- the stack -------------------------------------------------------------------------------------------------


def stack_env(
    repository: Path, keys: Path, port: int, admin_key: str, redis_password: str = "", models_data: Path | None = None
) -> dict[str, str]:
    """What compose interpolates: the folders, the ports and the stack's secrets."""
    env = {
        "MODEL_REPOSITORY": str(repository.resolve()),
        "KEYS_DIR": str(keys.resolve()),
        "GATEWAY_PORT": str(port),
        "TRITON_ADMIN_KEY": admin_key,
    }
    if redis_password:  # the Redis stack: its gateways on `port`, `port` + 1 and `port` + 2, and the uploads volume
        env |= {"GATEWAY_PORT_2": str(port + 1), "GATEWAY_PORT_3": str(port + 2), "REDIS_PASSWORD": redis_password}
        env["MODELS_DATA"] = str((models_data or ROOT / "build" / "models-data").resolve())
    return env


def _draw(path: Path) -> str:
    """A new secret, URL- and shell-safe (it goes into a redis:// URL, a heredoc, a command line), kept in `path`
    (mode 0600) for `down` and for use by hand."""
    value = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return value


def prepare_models_data(folder: Path) -> None:
    """The uploads volume of the Redis stack: its folders made, owned by the gateways' and worker's user, readable by
    Triton's (MODELS_DATA_DIRS)."""
    for sub in ("", *MODELS_DATA_DIRS):
        path = folder / sub
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        for part in (path, *path.relative_to(folder).parents):
            target = folder / part
            if target.stat().st_uid != WORKER_UID:
                try:
                    os.chown(target, WORKER_UID, WORKER_UID)
                except PermissionError:
                    raise StepError(
                        f"{target} must belong to uid {WORKER_UID} (the gateways and the worker write it): "
                        f"chown -R {WORKER_UID}:{WORKER_UID} {folder}, or run as root"
                    ) from None
            target.chmod(0o755)


def up(
    eng: Engine,
    repository: Path,
    keys: Path,
    port: int,
    timeout: float = 600,
    redis: bool = False,
    models_data: Path | None = None,
) -> dict[str, str]:
    """Start the CPU stack (or the Redis stack: three gateways, Redis and the export worker), each with a new Triton
    admin key (and Redis password), and wait until every gateway's healthcheck passes (Triton first loads every
    model). Returns what compose was given, the secrets included."""
    down(eng, repository, keys, port, redis=redis, models_data=models_data)  # leftovers of an interrupted run
    project = REDIS_PROJECT if redis else PROJECT
    admin_key = _draw(ADMIN_KEY_FILE[project])
    password = _draw(REDIS_PASSWORD_FILE) if redis else ""
    env = stack_env(repository, keys, port, admin_key, password, models_data)
    if redis:
        prepare_models_data(Path(env["MODELS_DATA"]))
    eng.compose("up", "-d", "--no-build", env=env, timeout=timeout, redis=redis)
    services = REDIS_GATEWAYS if redis else ("gateway",)
    waiting = [f"{project}_{service}_1" for service in services]
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        status = eng.docker("inspect", "--format", "{{.State.Health.Status}}", waiting[0], check=False)
        if status.strip() == "healthy":
            waiting.pop(0)
            continue
        time.sleep(1)
    if waiting:
        logs = eng.compose("logs", "--tail=40", env=env, redis=redis)
        raise StepError(f"{', '.join(waiting)} not healthy within {timeout:.0f} s:\n{logs}")
    return env


def down(
    eng: Engine, repository: Path, keys: Path, port: int, redis: bool = False, models_data: Path | None = None
) -> None:
    """Remove the stack's containers, network and volumes (the Redis stack's data too; MODELS_DATA is a folder of
    the host's and stays)."""
    placeholder = "none: only read by `up`"
    password = placeholder if redis else ""
    env = stack_env(repository, keys, port, placeholder, password, models_data)
    eng.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", env=env, redis=redis)
    ADMIN_KEY_FILE[REDIS_PROJECT if redis else PROJECT].unlink(missing_ok=True)
    if redis:
        REDIS_PASSWORD_FILE.unlink(missing_ok=True)


# --- commands --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/containers.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["images", "test", "up", "down", "engine-stop"])
    parser.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="(test) more pytest arguments; (up, down) --redis"
    )
    args = parser.parse_args(argv)
    if (
        args.command != "test"
        and args.pytest_args not in ([], ["--redis"])
        or (args.pytest_args == ["--redis"] and args.command not in ("up", "down"))
    ):
        parser.error(f"unexpected arguments for {args.command}: {' '.join(args.pytest_args)}")
    os.environ.setdefault("COMPOSE_DOCKER_CLI_BUILD", "0")
    # A CI timeout or `kill` still stops the engine this script started (the `finally` below).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with locked():
            if args.command == "engine-stop":
                engine(start=False).stop()
                return 0
            eng = engine()
            stop_after = eng.pid is not None and args.command in ("images", "test", "down")
            try:
                return _command(eng, args.command, args.pytest_args)
            finally:
                if stop_after:
                    eng.stop()
    except StepError as exc:
        print(f"[containers] FAILED: {exc}", file=sys.stderr)
        return 1


def _command(eng: Engine, command: str, pytest_args: list[str]) -> int:
    repository = Path(os.environ.get("MODEL_REPOSITORY", ROOT / "build" / "model_repository"))
    keys = Path(os.environ.get("KEYS_DIR", ROOT / "data"))
    port = int(os.environ.get("GATEWAY_PORT", "8000"))
    if command == "images":
        times = images(eng)
        log("times: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
        return 0
    if command == "test":
        start = time.monotonic()
        images(eng)
        env = {**eng.env, "YOLO_CONTAINER_TESTS": "1"}
        modules = ["tests/test_containers.py", "tests/test_containers_redis.py"]
        test = [sys.executable, "-m", "pytest", "-m", "container", *modules, *pytest_args]
        result = run(test, env=env, cwd=ROOT, timeout=2400, check=False)
        log(f"container-test: {time.monotonic() - start:.0f} s in all")
        return result.returncode
    redis = pytest_args == ["--redis"]
    models_data = Path(os.environ["MODELS_DATA"]) if os.environ.get("MODELS_DATA") else None
    if command == "up" and redis:
        env = up(eng, repository, keys, port, redis=True, models_data=models_data)
        log(f"gateways on http://127.0.0.1:{port}, :{port + 1} and :{port + 2}, sharing keys through Redis;")
        log(f"uploaded models in {env['MODELS_DATA']} (the export worker turns them into served versions);")
        log(f"password in {REDIS_PASSWORD_FILE}; `python deploy/containers.py down --redis` stops them")
        return 0
    if command == "up":
        keys.mkdir(parents=True, exist_ok=True)
        os.chown(keys, 10001, 10001)  # the gateway's user reads (and the keys tool writes) the keys file
        up(eng, repository, keys, port)
        log(f"gateway on http://127.0.0.1:{port} (keys in {keys}); `python deploy/containers.py down` stops it")
        return 0
    down(eng, repository, keys, port, redis=redis, models_data=models_data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
