"""The layers import only downward, across the install's one root ``engine``: api -> the engine's
folders -> {scheduler, kernels}; inside engine/, frontend -> step -> processing -> {sampling, model};
scheduler has no torch. Modules import without cycles and never take another module's private names."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The install maps these folders of the repository under the one import root (pyproject.toml's package-dir).
FOLDERS = {"engine": "engine", "engine.api": "api", "engine.kernels": "kernels", "engine.scheduler": "scheduler"}
ENGINE_BELOW_API = {"engine", "engine.frontend", "engine.step", "engine.processing", "engine.sampling", "engine.model",
                    "engine.config", "engine.import_path"}
ALLOWED = {  # layer -> the layers it may import; a module is in the longest layer its name starts with
    "engine.api": ENGINE_BELOW_API,
    "engine": ENGINE_BELOW_API | {"engine.scheduler", "engine.kernels"},  # __init__ (the public names), __main__
    "engine.frontend": {"engine.step", "engine.processing", "engine.sampling", "engine.model", "engine.config",
                        "engine.scheduler", "engine.kernels"},
    "engine.step": {"engine.processing", "engine.sampling", "engine.model", "engine.config", "engine.scheduler",
                    "engine.kernels"},
    "engine.processing": {"engine.sampling", "engine.model", "engine.scheduler", "engine.kernels"},
    "engine.sampling": set(),
    "engine.model": {"engine.scheduler", "engine.kernels"},
    "engine.config": {"engine.kernels"},
    "engine.import_path": set(),
    "engine.scheduler": set(),
    "engine.kernels": set(),
}
# engine/__main__.py reaches the CLI with one lazy import so that `python -m engine serve` works.
EXCEPTIONS = {("engine.__main__", "engine.api")}


def layer_of(module: str) -> str | None:
    matches = [layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def installed_modules() -> dict[str, Path]:
    """Every module of the install, by its import name (``api/app.py`` is ``engine.api.app``)."""
    modules = {}
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join([package, *parts])] = path
    return modules


def _imported_from(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(modules: dict[str, Path]) -> tuple[dict[str, set[str]], set[tuple[str, str]], list[str]]:
    """Module -> the modules of ``modules`` it imports (at any depth of the file); every (module,
    imported name) pair, for the layering; and every ``from X import _name`` of a private name."""
    graph, imports, private = {}, set(), []
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
        imports.update((module, target) for target in targets)
        graph[module] = {target for target in targets if target in modules and target != module}
    return graph, imports, private


def test_every_folder_of_the_install_is_a_layer():
    for package, folder in FOLDERS.items():
        assert Path(importlib.util.find_spec(package).origin).resolve() == ROOT / folder / "__init__.py"
    for folder in (ROOT / "engine").iterdir():
        if folder.is_dir() and (folder / "__init__.py").exists():
            assert f"engine.{folder.name}" in ALLOWED, f"engine/{folder.name}/ has no place in ALLOWED"


def test_the_lazy_public_names_are_the_ones_type_checkers_see_and_all_load():
    """engine/__init__.py names each public name twice: in ``_EXPORTS`` (loaded on first use) and in its
    TYPE_CHECKING imports (what editors and type checkers read). They must agree, and each must load."""
    import engine

    tree = ast.parse((ROOT / "engine" / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    typed = {alias.name: node.module for node in block.body for alias in node.names}
    assert typed == engine._EXPORTS
    assert all(getattr(engine, name).__module__.startswith("engine.") for name in engine.__all__)


def layering_violations(imports: set[tuple[str, str]]) -> list[str]:
    """Each (module, imported name) pair that breaks the layering, said in words."""
    found = []
    for module, target in sorted(imports):
        layer, target_layer = layer_of(module), layer_of(target)
        if target.split(".")[0] in ("kernels", "scheduler", "api"):
            found.append(f"{module} imports {target}: our folders install as engine.{target}")
        elif layer == "engine.scheduler" and target.split(".")[0] in ("torch", "numpy"):
            found.append(f"{module} imports {target}: scheduler/ is pure Python")
        elif target_layer not in (None, layer, *ALLOWED[layer]) and (module, target_layer) not in EXCEPTIONS:
            found.append(f"{module} imports {target}: {layer} may import {sorted(ALLOWED[layer]) or 'nothing of ours'}")
    return found


def test_layers_import_only_downward():
    modules = installed_modules()
    assert {layer_of(module) for module in modules} == set(ALLOWED), "a layer without modules, or a module in none"
    _, imports, _ = import_graph(modules)
    assert not layering_violations(imports)


def test_the_layering_catches_upward_sideways_and_old_imports():
    planted = {("engine.model.layers.attention", "engine.step.llm_engine"),
               ("engine.sampling.sampler", "engine.model.parallel"), ("engine.step.model_runner", "kernels.cpu"),
               ("engine.scheduler.block_pool", "torch"), ("engine.frontend.llm", "engine.api.cli"),
               ("engine.step.llm_engine", "engine.model.parallel")}  # the last one is allowed
    assert [v.split(":")[0] for v in layering_violations(planted)] == [
        "engine.frontend.llm imports engine.api.cli", "engine.model.layers.attention imports engine.step.llm_engine",
        "engine.sampling.sampler imports engine.model.parallel", "engine.scheduler.block_pool imports torch",
        "engine.step.model_runner imports kernels.cpu"]


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


def test_no_import_cycles_and_no_private_imports():
    graph, _, private = import_graph(installed_modules())
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    assert not private, f"private names imported across modules: {private}"


def test_the_checks_catch_a_planted_cycle_and_a_planted_private_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import _helper\n")
    modules = {"pkg": package / "__init__.py", "pkg.a": package / "a.py", "pkg.sub": package / "sub" / "__init__.py",
               "pkg.sub.b": package / "sub" / "b.py"}
    graph, _, private = import_graph(modules)
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
