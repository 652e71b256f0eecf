"""Short text (``__repr__``) and HTML table (``_repr_html_``) summaries of results, one format
for every result type: ``Name(field=value, ...)`` capped at :data:`REPR_LIMIT` characters."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

#: no result's repr is longer than this
REPR_LIMIT = 480
#: quoted strings (prompts, targets) are cut to this many characters
TEXT_LIMIT = 60


def text(value, limit: int = TEXT_LIMIT) -> str:
    """``repr`` of a value, a long string cut with an ellipsis inside the quotes."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[: limit - 1] + "…")
    return repr(value)


def number(value, digits: int = 4) -> str:
    """A float with ``digits`` significant digits (``nan`` as such), an int as it is."""
    if value is None:
        return "None"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.{digits}g}"


def short_repr(name: str, **fields) -> str:
    """``name(key=value, ...)`` with the values already formatted as strings (``None`` fields are
    left out), cut to :data:`REPR_LIMIT`."""
    body = ", ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    out = f"{name}({body})"
    return out if len(out) <= REPR_LIMIT else out[: REPR_LIMIT - 2] + "…)"


def html_table(caption: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A small HTML table (every cell escaped; floats with 4 significant digits)."""
    def cell(v):
        return html.escape(number(v) if isinstance(v, float) else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return (f"<table><caption style='text-align:left'>{html.escape(caption)}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
