"""The import order of docs/design.md, enforced from the source and at run time.

Static: each package imports only those before it in
    tools -> store -> engines -> adapters -> agent -> evals -> learner
`api` imports up to `agent` (never `evals` or `learner`); `demo` and `cli` may import anything.
The heavy ML libraries appear only under learner/, engines/ and demo/, and never at module level
(they are imported lazily). Run time: importing the API side does not pull in torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("tools", "store", "engines", "adapters", "agent", "evals", "learner")
ALLOWED = {pkg: set(ORDER[:i]) for i, pkg in enumerate(ORDER)}
ALLOWED["api"] = set(ORDER[: ORDER.index("agent") + 1])
PACKAGES = (*ORDER, "api")
OURS = (*PACKAGES, "demo", "cli")
HEAVY = ("torch", "transformers", "peft", "trl", "accelerate", "vllm", "datasets")
HEAVY_OK = ("learner/", "engines/", "demo/")
API_SIDE = tuple(p for p in ("tools", "store", "engines", "adapters", "agent", "api") if (ROOT / p).is_dir())


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


def _violations(root: Path = ROOT) -> list[str]:
    problems = []
    for pkg in (*PACKAGES, "demo"):
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
            for node, name, module_level in _imports(tree):
                top = name.split(".")[0]
                if pkg in ALLOWED and top in OURS and top != pkg and top not in ALLOWED[pkg]:
                    problems.append(f"{rel}:{node.lineno}: {pkg} may not import {top}")
                if top in HEAVY:
                    if not rel.startswith(HEAVY_OK):
                        problems.append(f"{rel}:{node.lineno}: {top} imported outside learner/, engines/ and demo/")
                    elif module_level:
                        problems.append(f"{rel}:{node.lineno}: {top} must be imported lazily (inside a function)")
    return problems


def test_import_order_of_design_is_respected() -> None:
    assert _violations() == []


def test_checker_catches_a_forbidden_import() -> None:
    tree = ast.parse("import torch\nfrom api import app\n\ndef f():\n    import peft\n")
    found = [(name, level) for _, name, level in _imports(tree)]
    assert found == [("torch", True), ("api", True), ("peft", False)]
    guarded = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n")
    assert [name for _, name, _ in _imports(guarded)] == ["typing"]


def test_checker_enforces_the_order_on_a_tree(tmp_path: Path) -> None:
    files = {
        "engines/a.py": "from adapters import serving\n",  # backwards: engines is before adapters
        "api/b.py": "from evals import run\nfrom agent import loop\n",  # api stops at agent
        "agent/c.py": "def f():\n    import torch\n",  # torch outside learner/engines/demo
        "learner/d.py": "import torch\nfrom evals import stats\n",  # torch at module level
        "demo/e.py": "from learner import cycle\nfrom api import app\n",  # demo may import anything
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert _violations(tmp_path) == [
        "engines/a.py:1: engines may not import adapters",
        "agent/c.py:2: torch imported outside learner/, engines/ and demo/",
        "learner/d.py:1: torch must be imported lazily (inside a function)",
        "api/b.py:1: api may not import evals",
    ]


def test_api_side_imports_without_torch() -> None:
    code = (
        "import sys, importlib, pkgutil\n"
        f"for pkg in {API_SIDE!r}:\n"
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
