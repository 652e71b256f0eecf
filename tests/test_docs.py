"""The documentation's structure: the README stays a short guide whose links resolve, the site's
home page carries the same quick start as the README (which tests/test_cli_and_demo.py executes),
and every page in docs/ is in the site's navigation."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_is_a_short_guide():
    assert (ROOT / "README.md").stat().st_size <= 15 * 1024


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    targets = [t for t in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) if "://" not in t]
    assert targets
    assert [t for t in targets if not (ROOT / t).exists()] == []


def test_home_page_has_the_readme_quick_start():
    readme = _python_blocks((ROOT / "README.md").read_text())
    home = _python_blocks((ROOT / "docs" / "index.md").read_text())
    assert readme and readme[0] == home[0]


def _nav_pages(nav) -> set[str]:
    pages = set()
    for item in nav:
        values = item.values() if isinstance(item, dict) else [item]
        for value in values:
            pages |= _nav_pages(value) if isinstance(value, list) else {value}
    return pages


def test_every_page_is_in_the_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages == _nav_pages(config["nav"])


def _doctest_fences():
    import importlib.util

    spec = importlib.util.spec_from_file_location("griffe_doctests", ROOT / "docs" / "hooks" / "griffe_doctests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.as_code_blocks


def test_api_reference_shows_doctests_as_code():
    """The API reference's Griffe extension fences each doctest run (Markdown would read
    ``x["a"][0, -1]`` as a link, and mkdocs --strict fails on it): a run after a list item is
    fenced too, prose and the blank line that ends a run are kept."""
    as_code_blocks = _doctest_fences()
    text = ("Intro.\n\n- item one\n- item two\n>>> r = f(model)\n>>> r.x[0, -1]\n0.5\n\nAfter.\n"
            "    >>> g()\n    3")
    assert as_code_blocks(text).splitlines() == [
        "Intro.", "", "- item one", "- item two", "", "```python", ">>> r = f(model)", ">>> r.x[0, -1]", "0.5",
        "```", "", "After.", "", "```python", "    >>> g()", "    3", "```"]


def test_every_doctest_line_of_the_package_is_fenced():
    import ast

    as_code_blocks = _doctest_fences()
    checked = 0
    for path in sorted((ROOT / "interp_edit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if not doc or ">>>" not in doc:
                    continue
                inside = False
                for line in as_code_blocks(doc).splitlines():
                    if line.strip() == "```" or line.startswith("```python"):
                        inside = not inside
                    elif line.lstrip().startswith(">>>"):
                        assert inside, f"{path.name}: {line!r} is outside a code block"
                assert not inside, f"{path.name}: a code block is left open"
                checked += 1
    assert checked > 50


def _section(text: str, start: str, end: str = "\n\n") -> str:
    i = text.index(start)
    return text[i : text.index(end, i)]


def test_home_page_matches_the_readme_where_they_say_the_same():
    """The site's home page repeats the README's summary, memory rule, notebook and documentation
    tables (links relative to docs/): a figure or a page changed in one is changed in both."""
    readme = (ROOT / "README.md").read_text().replace("](docs/", "](")
    home = (ROOT / "docs" / "index.md").read_text()
    for start, end in (("Mechanistic interpretability", "\n\n"), ("- **Memory**", "- **Extras**"),
                       ("| notebook |", "\n\n"), ("| page | about |", "\n\n")):
        assert _section(home, start, end) == _section(readme, start, end), start
