"""The package layout holds (docs/architecture.md): no import circle, planes that do not import
each other (learn -> prepare.units aside), a core that imports no plane or concern package, and
no module over ~500 lines. Read from the source's own imports, lazy ones included."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "ser_ray"
PLANES = ("prepare", "learn", "score")
CONCERNS = ("corpora", "features", "models", "synth")
FACE = ("cli", "catalog", "demo")  # the command and what it lists: may reach every plane
MAX_LINES = 500


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """ser_ray module -> the ser_ray modules it imports (``from pkg import mod`` as pkg.mod)."""
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("ser_ray")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                if not base.startswith("ser_ray"):
                    continue
                for a in node.names:  # a submodule imported by name is an arrow to it
                    found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
        out[name] = {m for m in found if m in modules and m != name}
    return out


def _kind(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "face"
    if parts[1] in PLANES:
        return parts[1]
    if parts[1] in CONCERNS:
        return "concern"
    return "face" if parts[1] in FACE else "core"


def test_no_import_circle():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(d):] + [m, d]))
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("plane", PLANES)
def test_a_plane_imports_no_other_plane(plane):
    allowed = {("learn", "ser_ray.prepare.units")}  # augmented copies, made as prepare makes rows
    crossing = sorted((m, d) for m, deps in _imports().items() if _kind(m) == plane
                      for d in deps if _kind(d) in PLANES and _kind(d) != plane
                      and (plane, d) not in allowed)
    assert not crossing, crossing


def test_the_core_imports_no_plane_and_no_concern_package():
    reaching = sorted((m, d) for m, deps in _imports().items() if _kind(m) == "core"
                      for d in deps if _kind(d) not in ("core",))
    assert not reaching, reaching


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
