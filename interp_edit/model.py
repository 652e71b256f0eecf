"""The adapter's public names in one module (kept for ``from interp_edit.model import ...``).

The adapter itself is the package :mod:`interp_edit.adapter`; see its docstring.
"""

from interp_edit.adapter import *  # noqa: F401,F403
from interp_edit.adapter import __all__, _read_json  # noqa: F401
