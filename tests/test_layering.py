"""The dependency direction between packages, as docs/ARCHITECTURE.md draws it.

Every import in every module counts, including those inside functions (a lazy import is
still a dependency). A package may import only packages below it in ``LAYERS``; the
simulated hardware only from the composition roots; and no module may reach itself
through its imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Lowest first: a package may import the ones before it, never one after it.
LAYERS = ("buffer", "recorder", "secure_store", "link", "export", "dock", "firmware")
SIMULATOR = "hw_sim"
# The only modules that may choose simulated hardware (the --sim switch and the demo).
COMPOSITION_ROOTS = {"firmware.device", "firmware.demo", "firmware.console"}
PACKAGES = (*LAYERS, SIMULATOR)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every in-repo module this file imports (absolute and relative, at any depth)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path, name):
            # "from pkg import mod" names a module; "from mod import func" names the module itself.
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


GRAPH = _graph()


def test_the_scan_sees_the_packages() -> None:
    # Guards the test itself: a scan that found nothing would pass every check below.
    assert {"link.transport", "dock.client", "export.exporter", "firmware.update.install"} <= GRAPH.keys()
    assert "link.protocol" in GRAPH["link.transport"]
    assert "secure_store.sealer" in GRAPH["secure_store.store"]


@pytest.mark.parametrize("package", LAYERS)
def test_packages_import_only_lower_layers(package: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    wrong = sorted(f"{m} imports {t}" for m, targets in GRAPH.items() if m.split(".")[0] == package
                   for t in targets if t.split(".")[0] not in allowed and t.split(".")[0] != SIMULATOR)
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_simulated_hardware_only_from_composition_roots() -> None:
    wrong = sorted(f"{m} imports {t}" for m, targets in GRAPH.items() if m.split(".")[0] != SIMULATOR
                   for t in targets if t.split(".")[0] == SIMULATOR and m not in COMPOSITION_ROOTS)
    assert not wrong, "hw_sim used outside the composition roots:\n" + "\n".join(wrong)


def test_simulator_depends_on_no_product_package_above_the_seams() -> None:
    # hw_sim plays the hardware: it may use the frame type and codecs, never the device or dock.
    wrong = sorted(f"{m} imports {t}" for m, targets in GRAPH.items() if m.split(".")[0] == SIMULATOR
                   for t in targets if t.split(".")[0] in ("link", "export", "dock", "firmware"))
    assert not wrong, "\n".join(wrong)


def _cycle() -> list[str] | None:
    """One import cycle between modules, or None (iterative DFS, three colours)."""
    colour: dict[str, int] = {}
    for start in sorted(GRAPH):
        if colour.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(GRAPH[start]))]
        path = [start]
        colour[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop()
            if colour.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not colour.get(nxt):
                colour[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(GRAPH.get(nxt, ()))))
    return None


def test_no_import_cycles() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle() -> None:
    # Guards the test itself on a graph with a known cycle.
    global GRAPH
    saved = GRAPH
    try:
        GRAPH = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
        assert _cycle() == ["a", "b", "c", "a"]
    finally:
        GRAPH = saved
