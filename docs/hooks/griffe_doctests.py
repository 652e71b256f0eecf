"""A Griffe extension for the API reference: a docstring's doctest examples (runs of lines that
start with ``>>>``, up to the next blank line) are shown as code blocks. Without it Markdown reads
them as prose, so ``res.results["resid_pre"][0, -1]`` becomes a broken link and ``mkdocs build
--strict`` fails. The docstrings themselves are unchanged (the doctests run as written)."""

from __future__ import annotations


def as_code_blocks(text: str) -> str:
    """``text`` with each doctest run fenced as a Python code block (a fence also ends a list
    that the run follows, where an indented block would continue the list item)."""
    out: list[str] = []
    in_block = False
    for line in text.splitlines():
        if line.lstrip().startswith(">>>") and not in_block:
            out += ["", "```python"] if out and out[-1].strip() else ["```python"]
            in_block = True
        elif in_block and not line.strip():
            out += ["```"]
            in_block = False
        out.append(line)
    if in_block:
        out.append("```")
    return "\n".join(out)


try:  # the docs extra installs Griffe; the tests read as_code_blocks without it
    import griffe
except ImportError:  # pragma: no cover
    griffe = None

if griffe is not None:

    class DoctestCodeBlocks(griffe.Extension):
        def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
            if obj.docstring is not None and ">>>" in obj.docstring.value:
                obj.docstring.value = as_code_blocks(obj.docstring.value)
