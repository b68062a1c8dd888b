"""The documents stay true: the code points only at documents in the repository, every test that
docs/reliability.md cites exists, and the README's architecture map names every module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tools", "store", "engines", "adapters", "agent", "evals", "learner", "api", "demo", "cli")
OUTSIDE = re.compile(r"shared/\w|\b(DESIGN|RELIABILITY|STYLE)\.md\b|vllm-contract|trl-notes|demo-notes")


def _tracked_text_files() -> list[Path]:
    files = [p for pkg in (*PACKAGES, "tests", "benchmarks", "docs", "docker") for p in (ROOT / pkg).rglob("*")]
    files += [ROOT / name for name in ("README.md", "Makefile", "pyproject.toml", "docker-compose.yml")]
    return [
        p
        for p in files
        if p.is_file()
        and p.suffix in (".py", ".md", ".yml", ".yaml", ".toml", "")
        and ".venv" not in p.parts
        and p.name != "test_docs.py"
    ]


def test_nothing_points_at_documents_outside_the_repository() -> None:
    found = []
    for path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert found == []


def test_every_document_the_code_points_at_exists() -> None:
    named = set()
    for path in _tracked_text_files():
        try:
            named |= set(re.findall(r"\bdocs/[\w-]+\.md\b", path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue
    assert {"docs/design.md", "docs/reliability.md", "docs/vllm.md"} <= named
    assert sorted(n for n in named if not (ROOT / n).is_file()) == []


def test_every_test_the_reliability_document_cites_exists() -> None:
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    cited = re.findall(r"`(tests/[\w/]+\.py)::(\w+)", text)
    assert len(cited) >= 40
    promises = re.findall(r"\*\*(R\d+)\*\*", text)
    assert promises == [f"R{n}" for n in range(1, 21)]
    missing = [
        f"{path}::{name}"
        for path, name in cited
        if not (ROOT / path).is_file()
        or not re.search(rf"^\s*(async )?def {name}\(", (ROOT / path).read_text(encoding="utf-8"), re.M)
    ]
    assert missing == []


def test_the_readme_architecture_map_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Architecture") :]
    section = section[: section.index("\n## ", 4)]
    missing = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT / pkg)
            if path.name in ("__init__.py", "__main__.py") or "migrations" in rel.parts:
                continue
            # A module is named as `name.py`, or bare inside its folder's list: `server/` (`app`, ...).
            if f"`{path.name}`" not in section and f"`{path.stem}`" not in section and path.name not in section:
                missing.append(f"{pkg}/{rel}")
    assert missing == []
