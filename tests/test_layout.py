"""The package's layout as docs/architecture.md draws it: subpackages by stage, each importing only from stages
below it, no import cycle between modules, long modules saying why, and no function-local import that defers
nothing."""
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


#: What a module may put off importing: packages that are slow to load, or missing on some systems (fcntl).
HEAVY = ("torch", "torchvision", "pydicom", "streamlit", "captum", "fcntl")


def _heavy_closure() -> dict[str, set[str]]:
    """module → the heavy packages that importing it at the top loads (through the package's own modules too)."""
    own: dict[str, set[str]] = {}
    for path in MODULES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        own[_name(path)] = {n for n in names if n in HEAVY}
    graph = {_name(p): _imports(p, top_level_only=True) for p in MODULES}
    closure: dict[str, set[str]] = {}

    def heavy(module: str, trail: frozenset = frozenset()) -> set[str]:
        if module in closure:
            return closure[module]
        found = set(own.get(module, set()))
        for target in graph.get(module, ()):
            if target not in trail and target in own:
                found |= heavy(target, trail | {module})
        closure[module] = found
        return found

    for module in own:
        heavy(module)
    return closure


def _local_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module or package) of every import inside a function."""
    found = []
    for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    found += [(node.lineno, node.module)]
    return found


def test_a_function_local_import_puts_off_loading_something_heavy():
    """Outside the command line (whose handlers import their work when they run, so `--help` stays light: see
    tests/test_cli.py), an import inside a function is there only because importing it at the top would load a
    heavy or optional package (PyTorch, pydicom, Streamlit, fcntl) that the module does not load otherwise."""
    closure = _heavy_closure()
    needless = []
    for path in MODULES:
        module = _name(path)
        if module == "imagemasknet.cli":
            continue
        for line, target in _local_imports(path):
            deferred = ({target.split(".")[0]} & set(HEAVY)) | closure.get(target, set())
            if not deferred - closure.get(module, set()):
                needless.append(f"{module} line {line}: {target}")
    assert not needless, needless
