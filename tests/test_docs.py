"""The documentation: the mkdocs site builds in strict mode, and the README stays short with working links."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

from conftest import REPO

README = REPO / "README.md"
README_MAX_LINES = 250

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _without_code(markdown: str) -> str:
    """Markdown with fenced code blocks and inline code spans removed (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", _FENCE.sub("", markdown))


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (lowercase, punctuation dropped, spaces to '-')."""
    anchors: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", markdown)):
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
        text = re.sub(r"[`*]", "", text).strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        unique, n = slug, 0
        while unique in anchors:
            n += 1
            unique = f"{slug}-{n}"
        anchors.add(unique)
    return anchors


def relative_links(markdown: str) -> list[str]:
    return [
        target
        for target in _LINK.findall(_without_code(markdown))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: ...
    ]


def test_docs_build_strict(tmp_path: Path) -> None:
    """mkdocs.yml is strict: a broken link or anchor, or a page missing from nav, fails the build."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(REPO / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pages = sorted(p.relative_to(REPO / "docs").with_suffix("") for p in (REPO / "docs").glob("**/*.md"))
    for page in pages:
        built = "index.html" if page.name == "index" else f"{page}/index.html"
        assert (tmp_path / "site" / built).is_file(), page


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_relative_links_resolve() -> None:
    markdown = README.read_text(encoding="utf-8")
    links = relative_links(markdown)
    assert any(link.startswith("docs/") for link in links)
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (REPO / unquote(path)) if path else README
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in github_anchors(target.read_text(encoding="utf-8")):
            broken.append(f"{link}: no heading with that anchor")
    assert not broken, broken


def test_github_anchors() -> None:
    markdown = "# Quick start\n## 4. Load with `PeftModel.from_pretrained`\n## Quick start\n```\n# not a heading\n```\n"
    assert github_anchors(markdown) == {"quick-start", "4-load-with-peftmodelfrom_pretrained", "quick-start-1"}


_REPO_PATH = re.compile(r"`((?:dpo_recipe|tests|benchmarks|recipes|cards|examples|\.github)/[\w./-]*\w)`")


def test_named_repository_paths_exist() -> None:
    """A file the pages name in code (`dpo_recipe/data/forms.py`, `tests/deploy/test_llama_cpp.py`) is there:
    a module moved without its docs is caught here, not by a reader."""
    pages = [README, REPO / "recipes" / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
    missing = [
        f"{page.relative_to(REPO)}: {path}"
        for page in pages
        for path in _REPO_PATH.findall(page.read_text(encoding="utf-8"))
        if not (REPO / path).exists()
    ]
    assert not missing, missing


_IMPORT = re.compile(r"^\s*(from dpo_recipe[\w.]* import [\w, ]+|import dpo_recipe[\w.]*)\s*(?:#.*)?$", re.MULTILINE)
_DOTTED = re.compile(r"`(dpo_recipe(?:\.\w+)+)`")


def test_documented_imports_and_names_resolve() -> None:
    """Every ``from dpo_recipe... import ...`` in the pages' code runs, and every dotted ``dpo_recipe.x.y`` they
    name is a module or an attribute of one: a module moved without its docs fails here."""
    import importlib

    pages = [README, *sorted((REPO / "docs").glob("**/*.md"))]
    statements = {s.strip() for page in pages for s in _IMPORT.findall(page.read_text(encoding="utf-8"))}
    from dpo_recipe import api

    imported = {
        name.strip() for s in statements if s.startswith("from dpo_recipe import ") for name in s[23:].split(",")
    }
    assert set(api.__all__) <= imported  # the README shows every API function
    for statement in statements:
        exec(statement, {})  # noqa: S102 - the statement is an import line taken from our own docs
    for page in pages:
        for dotted in _DOTTED.findall(page.read_text(encoding="utf-8")):
            module, _, attribute = dotted.rpartition(".")
            try:
                importlib.import_module(dotted)
            except ModuleNotFoundError:
                assert hasattr(importlib.import_module(module), attribute), f"{page.name}: {dotted}"
