"""The package's layout as the README's architecture section draws it: subpackages by stage, each importing
only from stages below it, no import cycle between modules, long modules and function-local imports saying
why."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "imagemasknet"
#: Each stage may import from the stages of lower rank only (the README's architecture section, top down).
RANK = {"core": 0, "data": 1, "models": 1, "evaluation": 2, "inference": 3, "training": 3, "ops": 4, "app": 4,
        "cli": 5, "__main__": 6, "__init__": 0}
MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return ".".join(("imagemasknet", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def _stage(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules of the package that ``path`` imports (``from imagemasknet.x import y`` names y when it is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:  # relative: only inside models/
            base = _name(path).rsplit(".", node.level)[0] if path.name != "__init__.py" else _name(path)
            node_module = f"{base}.{node.module}" if node.module else base
        elif isinstance(node, ast.ImportFrom):
            node_module = node.module or ""
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("imagemasknet")}
            continue
        else:
            continue
        if not node_module.startswith("imagemasknet"):
            continue
        for alias in node.names:
            candidate = f"{node_module}.{alias.name}"
            found.add(candidate if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() else node_module)
    return found


def test_every_stage_imports_only_from_the_stages_below_it():
    upward = []
    for path in MODULES:
        module = _name(path)
        for target in _imports(path):
            source_stage, target_stage = _stage(module), _stage(target)
            if source_stage != target_stage and RANK[target_stage] >= RANK[source_stage]:
                upward.append(f"{module} imports {target}")
    assert not upward, upward


def test_no_import_cycle_between_modules():
    graph = {_name(p): {t for t in _imports(p, top_level_only=True) if t != _name(p)} for p in MODULES}
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            pytest.fail("import cycle: " + " -> ".join(trail[trail.index(module):] + [module]))
        if module in done:
            return
        for target in graph.get(module, ()):
            visit(target, trail + [module])
        done.add(module)

    for module in graph:
        visit(module, [])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_over_500_lines_says_why_at_its_top(path):
    lines = path.read_text(encoding="utf-8").count("\n")
    if lines > 500:
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert "on purpose" in docstring, f"{path.name} has {lines} lines and its docstring does not say why"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_function_local_import_says_why(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    silent = []
    for function in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        local = sorted((n for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))),
                       key=lambda n: n.lineno)
        if not local:
            continue
        above = lines[local[0].lineno - 2].strip()
        if above.startswith("#"):
            continue  # one comment above a function's imports covers them all
        silent += [f"line {n.lineno}: {lines[n.lineno - 1].strip()}" for n in local if "#" not in lines[n.lineno - 1]]
    assert not silent, silent
