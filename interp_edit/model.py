"""Retired: the model adapter is :mod:`interp_edit.adapter`. Importing this module still works
(it re-exports the adapter) but warns; it will be removed in a later release."""

import warnings

from interp_edit.adapter import *  # noqa: F401,F403
from interp_edit.adapter import __all__  # noqa: F401

warnings.warn("interp_edit.model is retired: import from interp_edit.adapter instead "
              "(e.g. `from interp_edit.adapter import load_model`)", DeprecationWarning, stacklevel=2)
