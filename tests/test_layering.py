"""The layers import only downward: api -> engine -> {scheduler, kernels}; scheduler has no torch.
Inside a package, modules import without cycles and never take another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "api": {"engine"},
    "engine": {"scheduler", "kernels"},
    "scheduler": set(),
    "kernels": set(),
}
# engine/__main__.py reaches the CLI with one lazy import so that `python -m engine serve` works.
EXCEPTIONS = {("engine/__main__.py", "api")}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_downward(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    for file in files:
        relative = file.relative_to(ROOT).as_posix()
        for name in _imports(file):
            if name in ALLOWED and name != package and name not in ALLOWED[package]:
                assert (relative, name) in EXCEPTIONS, f"{relative} imports {name}: {package} may import {ALLOWED[package] or 'nothing of ours'}"
            if package == "scheduler":
                assert name not in ("torch", "numpy"), f"{relative} imports {name}: scheduler/ is pure Python"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_from(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def package_graph(package_dir: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the modules of the same package it imports (at any depth of the file), and every
    ``from X import _name`` of a private name from another module."""
    modules = {_module_name(path, package_dir.parent): path for path in sorted(package_dir.rglob("*.py"))}
    graph, private = {}, []
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                source = _imported_from(module, path, node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.add(submodule if submodule in modules else source)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{module} imports {alias.name} from {source}")
        graph[module] = {target for target in targets if target in modules and target != module}
    return graph, private


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [module, target] if target in path else [module, target]
            if target not in state and (cycle := visit(target, path + [module])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [])):
            return cycle
    return None


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_import_cycles_and_no_private_imports_inside_a_package(package):
    graph, private = package_graph(ROOT / package)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    assert not private, f"private names imported across modules: {private}"


def test_the_checks_catch_a_planted_cycle_and_a_planted_private_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import _helper\n")
    graph, private = package_graph(package)
    assert find_cycle(graph) in (["pkg.a", "pkg.sub.b", "pkg.a"], ["pkg.sub.b", "pkg.a", "pkg.sub.b"])
    assert private == ["pkg.sub.b imports _helper from pkg.a"]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = readme.split("```bash\n")[1:]
    commands = [block.split("\n```")[0].strip() for block in blocks]
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in ci


def _module_state(path: Path) -> list[str]:
    """Module-level names bound to anything but an UPPER_CASE constant, and ``global`` statements."""
    tree = ast.parse(path.read_text(), str(path))
    found = [f"global {', '.join(node.names)}" for node in ast.walk(tree) if isinstance(node, ast.Global)]
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and name.id != "__all__" and not name.id.lstrip("_").isupper():
                    found.append(name.id)
    return found


def test_kernels_keep_no_module_state():
    """Per-step data travels with the step (the ForwardBatch's plans), never in a module of kernels/:
    engines on two threads, or two engines in a process, cannot see each other's."""
    for file in sorted((ROOT / "kernels").rglob("*.py")):
        assert not _module_state(file), f"{file.relative_to(ROOT)} keeps module state: {_module_state(file)}"


def test_the_state_check_catches_a_memo(tmp_path):
    planted = tmp_path / "memo.py"
    planted.write_text("class Memo:\n    pass\n\n_layout_memo = Memo()\nBLOCK = 16\n\ndef f():\n    global BLOCK\n")
    assert _module_state(planted) == ["global BLOCK", "_layout_memo"]
