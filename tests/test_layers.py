"""The floor plan: low floors import nothing above them, and no module imports itself through others."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("rlstack", "actors", "rollout", "reward")
LOW_FLOORS = {
    "rlstack.types": (),
    "rlstack.config": ("rlstack.hardware",),
    "rlstack.algorithms": ("rlstack.algorithms",),
    "rlstack.data": ("rlstack.data", "rlstack.types", "rlstack.config", "rlstack.hardware", "reward"),
}
"""Each low floor and the only project modules (or packages) it may import."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Project modules ``path`` imports anywhere in it (lazy and type-only imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


MODULES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
GRAPH = {name: {m for m in project_imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


@pytest.mark.parametrize("floor", list(LOW_FLOORS))
def test_a_low_floor_imports_nothing_above_it(floor):
    allowed = LOW_FLOORS[floor]
    members = [m for m in MODULES if m == floor or m.startswith(floor + ".")]
    above = {
        (m, imported)
        for m in members
        for imported in GRAPH[m]
        if not any(imported == a or imported.startswith(a + ".") for a in (floor, *allowed))
    }
    assert not above, sorted(above)


def test_no_module_imports_itself_through_others():
    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in GRAPH[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [cycle for name in MODULES if (cycle := cycle_from(name))]
    assert not cycles, cycles[0]
