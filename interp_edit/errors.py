"""Every exception interp_edit raises on purpose, in one place.

Each error message names the offending input (the model name, the file, the prompt, the
record) so that a researcher can fix the call without reading a traceback.
"""

from __future__ import annotations


class InterpEditError(Exception):
    """Base class of all errors raised on purpose by interp_edit."""


class ModelNotFoundError(InterpEditError, ValueError):
    """`load_model` was given a name it cannot resolve."""


class CheckpointError(InterpEditError, OSError):
    """A checkpoint file is missing, unreadable or inconsistent with its config."""


class TokenizationError(InterpEditError, ValueError):
    """A string does not tokenise the way the caller requires (e.g. an object that is not
    a single token)."""


class SubjectNotFoundError(InterpEditError, ValueError):
    """The subject string does not occur in the tokenised prompt."""


class ExportError(InterpEditError, ValueError):
    """A model cannot be exported to another library's format without changing it."""


class EmptyInputError(InterpEditError, ValueError):
    """A prompt, subject or target is empty."""


class PromptTooLongError(InterpEditError, ValueError):
    """A prompt (with its teacher-forced target) is longer than the model's context."""


class InvalidArgumentError(InterpEditError, ValueError):
    """An analysis argument is out of range (noise <= 0, window < 1, an unknown kind...)."""


class EditRequestError(InterpEditError, ValueError):
    """An edit request is malformed; the message names the request index and the field."""


class EditConfigError(InterpEditError, ValueError):
    """An editor's configuration is invalid (a layer out of range, a negative step count...);
    the message names the field."""


class EditOptimizationError(InterpEditError, RuntimeError):
    """An editor's optimisation failed (NaN or inf appeared); the model is left unchanged."""


class EditApplicationError(InterpEditError, RuntimeError):
    """An edit cannot be applied or undone on this model (another base model, undone out of
    order, already applied)."""


class DatasetError(InterpEditError, ValueError):
    """A dataset file or record is malformed, or a dataset name is unknown; the message names
    the file, the record index and the field."""


class ExperimentError(InterpEditError, RuntimeError):
    """An experiment cannot run or resume (e.g. its results file was written with other
    settings)."""


class UnsupportedArchitectureError(InterpEditError, ValueError):
    """A model has an architectural property (named in the message) that a method, or the
    toolkit as a whole, does not cover."""


class SweepSpecError(InterpEditError, ValueError):
    """A sweep's grid is invalid (an unknown editor, config field, dataset or model, an empty
    axis); the message names the cell (or axis) and the field. Raised before any cell runs."""


class SweepExecutorError(InterpEditError, RuntimeError):
    """A sweep executor cannot start (Ray not installed, a Ray address that cannot be reached)."""


class CorpusError(DatasetError, EditConfigError):
    """A statistics corpus is empty, unreadable, or lacks its text field; the message names the
    corpus (the file, the record and the field). Raised before any forward."""


class CorpusUnavailableError(CorpusError):
    """A hub dataset was named as a corpus but the network is missing (offline mode, or the hub
    cannot be reached); the message says so and names the local alternatives."""


class StatisticsMismatchError(InterpEditError, ValueError):
    """Key statistics (a cache or an imported ROME/MEMIT/EasyEdit file) belong to another model,
    site, layer or key dimension; the message says which, and what was expected."""
