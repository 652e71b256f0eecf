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
