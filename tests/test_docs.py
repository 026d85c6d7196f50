"""The documentation holds together.

* The README's and docs/' relative links lead somewhere: the file exists and a ``#anchor`` names one of its
  headings. Anchors follow GitHub's rule for headings: lower case, punctuation other than ``-`` and ``_`` dropped,
  each space a ``-``; a repeated heading gets ``-1``, ``-2``, ... Links to web pages are not checked (no network).
* Every public function and class of ``ptmdd_lightning`` (listed in its module's ``__all__``, or not ``_``-named in
  a module without one) has a docstring with a ``Raises`` section: the errors it raises, or "Nothing of its own".
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading's text (without the leading ``#``s)."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor the headings of ``path`` define, repeated headings numbered as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


def test_slug_follows_githubs_rule():
    assert slug("Findings campaign (issue 14 section 3)") == "findings-campaign-issue-14-section-3"
    assert slug("Smoke: finding 1, N_m (`configs/paper/cpu/sweeps/nm.yaml`)") == (
        "smoke-finding-1-n_m-configspapercpusweepsnmyaml"
    )
    assert slug("Determinism: what is bitwise and what is not") == "determinism-what-is-bitwise-and-what-is-not"


def test_repeated_headings_are_numbered(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# Runs\n\n```\n# not a heading\n```\n## Runs\n")
    assert anchors(page) == {"runs", "runs-1"}


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading of {dest.name} has the anchor #{anchor}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


RAISES = re.compile(r"^\s*Raises( \([^)]*\))?:\s*$", re.M)


def public_definitions(package: Path) -> list[tuple[str, ast.AST]]:
    """``("module.py:name", node)`` of every public top-level function and class under ``package``."""
    out = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = None
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                names = set(ast.literal_eval(node.value))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
                if names is None or node.name in names:
                    out.append((f"{path.relative_to(package.parent)}:{node.name}", node))
    return out


def test_every_public_docstring_says_what_it_raises():
    defs = public_definitions(REPO / "ptmdd_lightning")
    assert len(defs) > 200  # the package's public API, not an empty walk
    lacking = [name for name, node in defs if not RAISES.search(ast.get_docstring(node) or "")]
    assert not lacking, "public docstrings without a Raises section: " + ", ".join(lacking)


def test_the_raises_rule_finds_a_missing_section(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.py").write_text(
        '__all__ = ["f", "g"]\n\n\ndef f():\n    """F.\n\n    Raises:\n        ValueError: never here.\n    """\n'
        '\n\ndef g():\n    """G, which raises nothing it says."""\n\n\ndef h():\n    """Not public."""\n'
    )
    defs = dict(public_definitions(package))
    assert sorted(defs) == ["pkg/m.py:f", "pkg/m.py:g"]
    assert [n for n, node in defs.items() if not RAISES.search(ast.get_docstring(node))] == ["pkg/m.py:g"]
