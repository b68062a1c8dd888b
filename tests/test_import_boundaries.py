"""The import table of DESIGN.md, enforced from the source and at run time.

Static: every `import` in our packages obeys who-may-import-whom, and the heavy ML libraries appear
only under learner/ and agent/engines/, never at module level (they are imported lazily).
Run time: importing the API side does not pull in torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tools", "store", "agent", "learner", "api")
ALLOWED = {
    "tools": set(),
    "store": set(),
    "agent": {"tools", "store"},
    "learner": {"tools", "store", "agent"},
    "api": {"agent", "store", "tools"},
}
HEAVY = ("torch", "transformers", "peft", "trl", "accelerate", "vllm", "datasets")
HEAVY_OK = ("learner/", "agent/engines/")


def _imports(tree: ast.AST) -> list[tuple[ast.stmt, str, bool]]:
    """(node, module name, at module level?) for every absolute import in a module."""
    top_level = {id(node) for node in getattr(tree, "body", [])}
    # Imports under `if TYPE_CHECKING:` at module level never run.
    guarded: set[int] = set()
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded.update(id(sub) for sub in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        if id(node) in guarded:
            continue
        for name in names:
            found.append((node, name, id(node) in top_level))
    return found


def _violations() -> list[str]:
    problems = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
            for node, name, module_level in _imports(tree):
                top = name.split(".")[0]
                if top in PACKAGES and top != pkg and top not in ALLOWED[pkg]:
                    problems.append(f"{rel}:{node.lineno}: {pkg} may not import {top}")
                if top in HEAVY:
                    if not rel.startswith(HEAVY_OK):
                        problems.append(f"{rel}:{node.lineno}: {top} imported outside learner/ and agent/engines/")
                    elif module_level:
                        problems.append(f"{rel}:{node.lineno}: {top} must be imported lazily (inside a function)")
    return problems


def test_import_table_of_design_is_respected() -> None:
    assert _violations() == []


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    tree = ast.parse("import torch\nfrom api import app\n\ndef f():\n    import peft\n")
    found = [(name, level) for _, name, level in _imports(tree)]
    assert found == [("torch", True), ("api", True), ("peft", False)]
    guarded = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n")
    assert [name for _, name, _ in _imports(guarded)] == ["typing"]


def test_api_side_imports_without_torch() -> None:
    code = (
        "import sys, importlib, pkgutil\n"
        "for pkg in ('tools', 'store', 'agent', 'api'):\n"
        "    mod = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
        "        if '.migrations' in info.name:\n"
        "            continue\n"
        "        importlib.import_module(info.name)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""
