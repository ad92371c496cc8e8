"""The package's import graph: no cycles, no stage importing another stage (issue 17).

Every import counts: module top, function-level and `TYPE_CHECKING` ones alike (a lazy import
is still a dependency; hiding it in a function does not remove the edge), read with `ast`
so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "tts_pipeline"
SRC = Path(__file__).resolve().parent.parent / "src" / PACKAGE

#: The pipeline's stages: one module (or package) each, importing no other stage.
STAGES = ("collect", "preprocess", "speakers", "dataset", "train", "evaluate", "synthesize")
#: Applications built on a trained voice or on the stages' outputs: they import no stage either.
APPLICATIONS = ("webdemo", "writeback")

#: Known violations, allowed while being fixed (empty now). The tests below fail when an entry
#: is no longer true, so the lists only shrink.
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_STAGE_IMPORTS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import, known: set[str]) -> set[str]:
    """The package modules one import statement loads (`from . import x` may name a module)."""
    if isinstance(node, ast.Import):
        bases = [alias.name for alias in node.names]
        names: list[str] = []
    else:
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        bases = [base]
        names = [f"{base}.{alias.name}" for alias in node.names]
    found = {name for name in names if name in known}
    for base in bases:
        # the deepest package module the dotted name reaches (`tts_pipeline.vits.trainer.X`)
        parts = base.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts:
            found.add(".".join(parts))
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its source (short names, no prefix)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets |= _resolve(module, path.name == "__init__.py", node, known)
        graph[_short(module)] = {_short(t) for t in targets if t != module and t != PACKAGE}
    return graph


def _short(module: str) -> str:
    return module.removeprefix(PACKAGE + ".")


def _owner(module: str, groups: tuple[str, ...]) -> str | None:
    """The stage (or application) a module belongs to: itself, or the package it sits in."""
    top = module.split(".")[0]
    return top if top in groups else None


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components with more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def stage_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(importer, stage) for every stage or application that imports a stage other than itself."""
    found = set()
    for module, targets in graph.items():
        importer = _owner(module, STAGES + APPLICATIONS)
        if importer is None:
            continue
        for target in targets:
            stage = _owner(target, STAGES)
            if stage is not None and stage != importer:
                found.add((importer, stage))
    return found


def test_the_walk_sees_function_level_and_type_checking_imports() -> None:
    """The checker itself: a lazy import and a TYPE_CHECKING import are edges."""
    graph = import_graph()
    assert "gitlab_source" in graph["collect"]  # module top
    assert "config" in graph["writeback"]  # under TYPE_CHECKING
    assert {"errors", "config"} <= graph["cli"]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert stage_imports({"webdemo": {"synthesize"}, "speakers.review": {"speakers.cache", "train"}}) == {
        ("webdemo", "synthesize"),
        ("speakers", "train"),
    }


def test_no_import_cycle_beyond_the_known_ones() -> None:
    cycles = {frozenset(c) for c in strongly_connected(import_graph())}
    assert cycles <= KNOWN_CYCLES, f"new import cycle(s): {[sorted(c) for c in cycles - KNOWN_CYCLES]}"


def test_no_stage_imports_another_stage_beyond_the_known_ones() -> None:
    found = stage_imports(import_graph())
    assert found <= KNOWN_STAGE_IMPORTS, f"stage-to-stage import(s): {sorted(found - KNOWN_STAGE_IMPORTS)}"


def test_the_known_lists_only_shrink() -> None:
    """Strict: once a change breaks a known cycle or stage import, its entry above must go."""
    graph = import_graph()
    cycles = {frozenset(c) for c in strongly_connected(graph)}
    fixed_cycles = [sorted(c) for c in KNOWN_CYCLES if c not in cycles]
    assert not fixed_cycles, f"{fixed_cycles} fixed: remove from KNOWN_CYCLES in {Path(__file__).name}"
    fixed_imports = sorted(KNOWN_STAGE_IMPORTS - stage_imports(graph))
    assert not fixed_imports, f"{fixed_imports} fixed: remove from KNOWN_STAGE_IMPORTS in {Path(__file__).name}"
