"""The packages' import graph, read from the source with `ast`: gateway/ and bench/ in layers, each importing only
the layers below it, with no import circles, and no module of the gateway over MAX_LINES lines.

Every import counts: module-level, inside functions, and under `if TYPE_CHECKING:`. LAYERS is the table README.md's
Layout section documents: top to bottom, each layer a list of units (a package folder, or a module); a module may
import its own unit and any unit of a lower layer, nothing else. A module that is in no unit fails the test: a new
module is placed in the table when it is written.

    python tests/test_layers.py [ROOT]    # prints each package's modules, floors and circles (ROOT: another checkout)
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "bench")
MAX_LINES = 400  # a gateway module past this holds a second noun (STYLE.md 1)
LAYERS: tuple[tuple[str, ...], ...] = (
    # bench/ sits on the gateway: its entry points, their commands, the harness, the tools, what it measures
    ("bench.__main__", "bench.gpu.__main__"),
    ("bench.cost", "bench.tracking", "bench.fairness", "bench.soak", "bench.state_overhead", "bench.trained",
     "bench.wire_format", "bench.ultralytics_server", "bench.ultralytics_triton_server", "bench.upload",
     "bench.gpu.prepare", "bench.gpu.check"),
    ("bench.stack", "bench.report", "bench.gpu.drive", "bench.gpu.model", "bench.gpu.torch_graph"),
    ("bench.load", "bench.cpu", "bench.parity", "bench.perf_analyzer"),
    ("bench.models", "bench", "bench.gpu"),
    # the gateway, top to bottom
    ("gateway.app", "gateway.server"),  # wiring; uvicorn's protocol
    ("gateway.api",),  # HTTP: routes, forms, admin, OpenAPI, the page
    ("gateway.live", "gateway.jobs"),  # live streams and video jobs (leased work)
    ("gateway.work",),  # leased work's shared state: records, leases, owners, URL guard, webhooks
    ("gateway.predict",),  # one prediction request: images, videos, answers, URL fetch
    ("gateway.services",),  # what requests share; one admitted prediction
    # tracks from detections (uses vision's rotated IoU); Ultralytics' API dialects: how requests read, answers look
    ("gateway.tracking", "gateway.dialects"),
    ("gateway.vision", "gateway.keys", "gateway.models", "gateway.sequences"),  # pixels; keys; models; tracking state
    ("gateway.triton", "gateway.arguments", "gateway.budget", "gateway.metrics", "gateway.streams"),
    ("gateway.modelcard", "gateway.errors", "gateway.settings", "gateway.workers", "gateway.observability"),
    ("gateway.redis_client",),  # one Redis client's options, for every store kept in Redis
    ("gateway",),  # the package: environment set before any module loads
)  # fmt: skip


def modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> its file, for every .py file of `packages` under `root` (a package as its __init__)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    """The known modules one import statement names (`from package import module` names the module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            here = here[: len(here) - (node.level - 1)]
            base = ".".join([*here, *([node.module] if node.module else [])])
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    out = set()
    for name in names:
        parts = name.split(".")
        while parts and ".".join(parts) not in known:  # `import a.b.c` where c is a name: the module a.b
            parts.pop()
        if parts:
            out.add(".".join(parts))
    return out


def graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports (itself and its own parent packages left out: Python imports a
    module's parents before it whatever it says)."""
    known = modules(root, packages)
    edges: dict[str, set[str]] = {}
    for module, path in known.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets |= _imported(module, path, node, known)
        edges[module] = {t for t in targets if t != module and not module.startswith(t + ".")}
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            advanced = False
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(edges[target]))))
                    advanced = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def floors(edges: dict[str, set[str]]) -> dict[str, int]:
    """Each module's floor: 1 for a module that imports none of the others, else one more than the highest floor it
    imports (a circle counts as one module, on one floor)."""
    component = {m: m for m in edges}
    for circle in circles(edges):
        for member in circle:
            component[member] = circle[0]
    members: dict[str, list[str]] = {}
    for module, head in component.items():
        members.setdefault(head, []).append(module)
    floor: dict[str, int] = {}

    def of(head: str) -> int:
        if head not in floor:
            below = {component[t] for m in members[head] for t in edges[m]} - {head}
            floor[head] = 1 + max((of(b) for b in sorted(below)), default=0)
        return floor[head]

    return {m: of(component[m]) for m in edges}


def unit_of(module: str) -> tuple[int, str] | None:
    """The layer (0: the top) and unit of a module: the longest unit naming it or a package above it (a top-level
    package names only its own __init__, so a new module is never placed by default); None when there is none."""
    found = None
    for layer, units in enumerate(LAYERS):
        for unit in units:
            inside = module == unit or (unit not in PACKAGES and module.startswith(unit + "."))
            if inside and (found is None or len(unit) > len(found[1])):
                found = (layer, unit)
    return found


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Every import that is not of the module's own unit nor of a lower layer, said as `a (layer) -> b (layer)`; and
    every module that is in no unit."""
    problems = [f"{m}: in no unit of LAYERS (place it)" for m in sorted(edges) if unit_of(m) is None]
    for module in sorted(edges):
        here = unit_of(module)
        for target in sorted(edges[module]):
            there = unit_of(target)
            if here is None or there is None or here[1] == there[1] or there[0] > here[0]:
                continue
            problems.append(f"{module} (layer {here[0]}: {here[1]}) imports {target} (layer {there[0]}: {there[1]})")
    return problems


def test_no_import_circles() -> None:
    """A circle means no module of it can be read, tested or replaced without the others."""
    assert circles(graph()) == []


def test_each_layer_imports_only_the_layers_below() -> None:
    assert upward(graph()) == []


def test_no_gateway_module_is_over_the_line_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "gateway").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"over {MAX_LINES} lines: find the second noun in each and give it a module"


def test_the_readme_layout_says_the_layers_and_what_lives_in_each_unit() -> None:
    """README.md's Layout block gives the gateway's layers in the table's order, and one line to each of its folders
    and modules (`  api/  ...`, `  app.py  ...`); every package folder of the gateway is in the table."""
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    table = [[_shown(u) for u in layer] for layer in LAYERS if layer[0].startswith("gateway.")]
    assert "Top to bottom:" in layout, "README's Layout does not say the gateway's layers (`Top to bottom: ...`)"
    said = " ".join(layout.split("Top to bottom:", 1)[1].split("\n  app.py", 1)[0].split())
    assert [group.split(", ") for group in said.split(" · ")] == table
    for name in (name for layer in table for name in layer):
        assert re.search(rf"^  {re.escape(name)} +\S", layout, re.M), f"README's Layout has no line for {name}"
    folders = {f"{p.name}/" for p in (ROOT / "gateway").iterdir() if (p / "__init__.py").exists()}
    assert folders <= {name for layer in table for name in layer}, "a gateway folder is missing from LAYERS"


def _shown(unit: str) -> str:
    """A unit as the README names it: `api/` for a folder, `app.py` for a module."""
    name = unit.removeprefix("gateway.")
    return f"{name}/" if (ROOT / "gateway" / name).is_dir() else f"{name}.py"


def test_the_layer_check_refuses_an_upward_import_and_an_unplaced_module() -> None:
    edges = {"gateway.vision.render": {"gateway.api.routes"}, "gateway.api.routes": {"gateway.errors"},
             "gateway.errors": set(), "gateway.newthing": set()}  # fmt: skip
    assert upward(edges) == [
        "gateway.newthing: in no unit of LAYERS (place it)",
        "gateway.vision.render (layer 12: gateway.vision) imports gateway.api.routes (layer 6: gateway.api)",
    ]


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """Function-local and TYPE_CHECKING imports count, `from package import module` names the module, and relative
    imports resolve: a circle made of each is found."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg import sub\nimport os\n")
    edges = graph(tmp_path, ["pkg"])
    assert edges["pkg.a"] == {"pkg.sub.b"} and edges["pkg.sub.b"] == {"pkg.c"} and edges["pkg.c"] == {"pkg.a"}
    assert edges["pkg.d"] == {"pkg.sub"}
    assert circles(edges) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert floors(edges)["pkg.d"] == 2 and floors(edges)["pkg.a"] == 1


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    edges = graph(root)
    level = floors(edges)
    for package in PACKAGES:
        names = [m for m in edges if m.split(".")[0] == package]
        inside = [c for c in circles(edges) if c[0].split(".")[0] == package]
        print(f"{package}: {len(names)} modules, {max(level[m] for m in names)} floors, {len(inside)} circles {inside}")
