"""The layers import only downward: api -> engine -> {scheduler, kernels}; scheduler has no torch."""

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


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = readme.split("```bash\n")[1:]
    commands = [block.split("\n```")[0].strip() for block in blocks]
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in ci
