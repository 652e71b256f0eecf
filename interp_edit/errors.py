"""Every exception interp_edit raises on purpose, in one place.

Each error message names the offending input (the model name, the file, the prompt, the
record) so that a researcher can fix the call without reading a traceback.
"""

from __future__ import annotations


class InterpEditError(Exception):
    """Base class of all errors raised on purpose by interp_edit.

    Catch it to handle any of the toolkit's own errors; each also derives from the matching
    built-in exception (``ValueError``, ``OSError``, ``RuntimeError``):

    >>> try:
    ...     edit(model, [], "rome")
    ... except InterpEditError as err:
    ...     print(type(err).__name__, isinstance(err, ValueError))
    EditRequestError True
    """


class ModelNotFoundError(InterpEditError, ValueError):
    """`load_model` was given a name it cannot resolve.

    >>> issubclass(ModelNotFoundError, ValueError)
    True
    >>> sorted(BUILTIN_MODELS)         # names that always resolve, offline
    ['toyworld']
    """


class CheckpointError(InterpEditError, OSError):
    """A checkpoint file is missing, unreadable or inconsistent with its config.

    >>> Edit.load("missing.edit", model)
    Traceback (most recent call last):
    ...
    interp_edit.errors.CheckpointError: missing edit file missing.edit
    """


class TokenizationError(InterpEditError, ValueError):
    """A string does not tokenise the way the caller requires (e.g. an object that is not
    a single token).

    >>> from interp_edit.prompts import encode_target
    >>> encode_target(model.tokenizer, "Karsa", "Talvik Corlo was born in")   # one token
    (...,)
    >>> issubclass(TokenizationError, ValueError)
    True
    """


class SubjectNotFoundError(InterpEditError, ValueError):
    """The subject string does not occur in the tokenised prompt.

    >>> causal_trace(model, "Talvik Corlo was born in", "Mermi Corgun", samples=2)
    Traceback (most recent call last):
    ...
    interp_edit.errors.SubjectNotFoundError: ...
    """


class ExportError(InterpEditError, ValueError):
    """A model cannot be exported to another library's format without changing it.

    :func:`to_hf` raises it naming the property a GPT-2 cannot represent:

    >>> from interp_edit.adapter.tiny import tiny_hf_model
    >>> llama = load_model("tiny-llama", tokenizer=model.tokenizer,
    ...                    hf_model=tiny_hf_model("llama", vocab_size=len(model.tokenizer)))
    >>> to_hf(llama)
    Traceback (most recent call last):
    ...
    interp_edit.errors.ExportError: cannot export to GPT2LMHeadModel: ...rotary...
    """


class EmptyInputError(InterpEditError, ValueError):
    """A prompt, subject or target is empty."""


class PromptTooLongError(InterpEditError, ValueError):
    """A prompt (with its teacher-forced target) is longer than the model's context."""


class InvalidArgumentError(InterpEditError, ValueError):
    """An analysis argument is out of range (noise <= 0, window < 1, an unknown kind...)."""


class EditRequestError(InterpEditError, ValueError):
    """An edit request is malformed; the message names the request index and the field.

    >>> edit(model, [], "rome")
    Traceback (most recent call last):
    ...
    interp_edit.errors.EditRequestError: ...
    """


class EditConfigError(InterpEditError, ValueError):
    """An editor's configuration is invalid (a layer out of range, a negative step count...);
    the message names the field.

    >>> rome(model, records[:1], layer=99)
    Traceback (most recent call last):
    ...
    interp_edit.errors.EditConfigError: ...layer...
    """


class EditOptimizationError(InterpEditError, RuntimeError):
    """An editor's optimisation failed (NaN or inf appeared); the model is left unchanged.

    >>> try:
    ...     e = finetune(model, records[:1], steps=2)
    ... except EditOptimizationError as err:  # the message says which step or layer diverged
    ...     print(err)
    >>> issubclass(EditOptimizationError, RuntimeError)
    True
    """


class EditApplicationError(InterpEditError, RuntimeError):
    """An edit cannot be applied or undone on this model (another base model, undone out of
    order, already applied).

    >>> e = rome(model, records[:1])
    >>> with e.applied(model):
    ...     e.apply(model)
    Traceback (most recent call last):
    ...
    interp_edit.errors.EditApplicationError: this rome edit is already applied to the model; applying it again would add its deltas twice
    """


class DatasetError(InterpEditError, ValueError):
    """A dataset file or record is malformed, or a dataset name is unknown; the message names
    the file, the record index and the field.

    >>> load_dataset("no-such-dataset")
    Traceback (most recent call last):
    ...
    interp_edit.errors.DatasetError: ...
    """


class ExperimentError(InterpEditError, RuntimeError):
    """An experiment cannot run or resume (e.g. its results file was written with other
    settings).

    >>> issubclass(ExperimentError, RuntimeError)
    True
    """


class UnsupportedArchitectureError(InterpEditError, ValueError):
    """A model has an architectural property (named in the message) that a method, or the
    toolkit as a whole, does not cover."""


class SweepSpecError(InterpEditError, ValueError):
    """A sweep's grid is invalid (an unknown editor, config field, dataset or model, an empty
    axis); the message names the cell (or axis) and the field. Raised before any cell runs.

    >>> spec = {"models": ["toyworld"], "editors": [{"method": "no-such-editor"}],
    ...         "datasets": [{"name": "toyworld-counterfact", "n": 1}]}
    >>> run_sweep(spec, "sweep", progress=False)
    Traceback (most recent call last):
    ...
    interp_edit.errors.SweepSpecError: ...
    """


class SweepExecutorError(InterpEditError, RuntimeError):
    """A sweep executor cannot start (Ray not installed, a Ray address that cannot be reached).

    >>> spec = {"models": ["toyworld"], "editors": [{"method": "rome"}],
    ...         "datasets": [{"name": "toyworld-counterfact", "n": 1}]}
    >>> run_sweep(spec, "sweep", executor="no-such-executor", progress=False)
    Traceback (most recent call last):
    ...
    interp_edit.errors.SweepExecutorError: unknown executor 'no-such-executor'; ...
    """


class CorpusError(DatasetError, EditConfigError):
    """A statistics corpus is empty, unreadable, or lacks its text field; the message names the
    corpus (the file, the record and the field). Raised before any forward."""


class CorpusUnavailableError(CorpusError):
    """A hub dataset was named as a corpus but the network is missing (offline mode, or the hub
    cannot be reached); the message says so and names the local alternatives."""


class StatisticsMismatchError(InterpEditError, ValueError):
    """Key statistics (a cache or an imported ROME/MEMIT/EasyEdit file) belong to another model,
    site, layer or key dimension; the message says which, and what was expected."""


class KeyCollisionWarning(UserWarning):
    """Requests an editor cannot tell apart: a key-value editor (ROME, MEMIT, AlphaEdit,
    IntAttn) reads one key per request at its edit token, and requests whose tokens up to that
    position are the same have the same key — so at most one of their new targets can hold
    (e.g. one subject's facts of several relations, keyed at the subject's last token). The
    message names the request indices; ``edit.info["key_collisions"]`` lists them and the
    edit's repr says so. With the editor's ``strict=True`` it is an :class:`EditRequestError`.

    >>> issubclass(KeyCollisionWarning, UserWarning)
    True
    """


class ThinStatisticsWarning(UserWarning):
    """Rank-deficient key statistics: counted from fewer tokens than the key width, or of a
    numerical rank below it (a few texts repeated, templated texts whose keys span few
    directions). A closed-form edit that solves with C⁻¹ can then be large and rewrite facts it
    was not asked to (raise ``stats_samples``, or give more varied texts). The message names the
    site, the layer and the counts or the rank; the edit's repr says so (from
    ``edit.info["stats"]``).

    >>> issubclass(ThinStatisticsWarning, UserWarning)
    True
    """
