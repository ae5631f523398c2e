"""The engine's packages import each other in one direction only: no import runs back up the
layers (io below preprocessing below inference..., the command line and the warm engine on top).
Imports only a type checker reads (``if TYPE_CHECKING:``) do not count."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "src" / "asdseg"


def runtime_imports(tree: ast.AST) -> Iterator[str]:
    """Every ``asdseg`` module ``tree`` imports when it runs, in functions too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from runtime_imports(ast.Module(body=node.orelse, type_ignores=[]))
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("asdseg"):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("asdseg"))
        yield from runtime_imports(node)


def unit_of(module: str) -> str:
    """The package (or top-level module) of ``asdseg.<unit>...``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "asdseg"


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ENGINE.rglob("*.py"):
        unit = path.relative_to(ENGINE).parts[0].removesuffix(".py")
        targets = {unit_of(module) for module in runtime_imports(ast.parse(path.read_text(encoding="utf-8")))}
        graph.setdefault(unit, set()).update(targets - {unit, "asdseg"})
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its nodes in order, the first repeated at the end), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    return next(filter(None, (visit(node, []) for node in sorted(graph))), None)


def test_the_engines_packages_import_each_other_in_one_direction() -> None:
    cycle = find_cycle(package_graph())
    assert cycle is None, "imports run in a circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_and_accepts_layers() -> None:
    assert find_cycle({"io": set(), "inference": {"io"}, "cli": {"inference", "io"}}) is None
    assert find_cycle({"io": {"training"}, "training": {"io"}}) == ["io", "training", "io"]
