"""Editing methods by name: each is a config dataclass and a function
``fn(model, requests, config=None, **overrides) -> Edit``.

The registry is built by a function (no module-level mutable table), so later methods add
themselves by being listed here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from interp_edit.errors import EditConfigError


@dataclass(frozen=True)
class Editor:
    name: str
    config_class: type
    fn: Callable
    description: str
    #: the editor needs whole dataset cases (e.g. ACE: a fact plus its multi-hop questions),
    #: not plain single-fact requests; the experiment runner passes cases to it
    takes_cases: bool = False
    #: the built-in data set an experiment (``interp-edit evaluate``) uses when none is given
    default_data: str = "toyworld-counterfact"
    #: run once per experiment, before any edit: ``prepare(model, items, config) -> config``
    #: (``items``: what ``fn`` takes, for every case of the experiment). It raises when the cases
    #: do not suit the editor, naming the data set that does, and may fix config fields every
    #: batch then shares (e.g. layers chosen by tracing)
    prepare: Callable | None = None


def editors() -> dict[str, Editor]:
    """Every registered editing method, by name.

    >>> sorted(editors())
    ['ace', 'alphaedit', 'emmet', 'fine', 'ft', 'grace', 'intattn', 'kn', 'mega', 'memit', 'memit_csk', 'pmet', 'rome', 'ultraedit', 'wise']
    >>> editors()["memit"].description
    'batch update spread over MLP layers (Meng et al. 2023)'
    """
    from interp_edit.editing.methods.ace import ACEConfig, ace, check_ace_items
    from interp_edit.editing.methods.alphaedit import AlphaEditConfig, alphaedit
    from interp_edit.editing.methods.emmet import EMMETConfig, emmet
    from interp_edit.editing.methods.fine import FiNEConfig, fine
    from interp_edit.editing.methods.finetune import FTConfig, finetune
    from interp_edit.editing.methods.grace import GRACEConfig, grace
    from interp_edit.editing.methods.intattn import IntAttnConfig, intattn
    from interp_edit.editing.methods.kn import KNConfig, kn
    from interp_edit.editing.methods.mega import MEGAConfig, mega
    from interp_edit.editing.methods.memit import MEMITConfig, memit
    from interp_edit.editing.methods.memit_csk import MEMITCSKConfig, fix_auto_layers, memit_csk
    from interp_edit.editing.methods.pmet import PMETConfig, pmet
    from interp_edit.editing.methods.rome import ROMEConfig, rome
    from interp_edit.editing.methods.ultraedit import UltraEditConfig, ultraedit
    from interp_edit.editing.methods.wise import WISEConfig, wise

    found = [
        Editor("rome", ROMEConfig, rome, "rank-one update of one MLP W_out (Meng et al. 2022)"),
        Editor("memit", MEMITConfig, memit, "batch update spread over MLP layers (Meng et al. 2023)"),
        Editor("alphaedit", AlphaEditConfig, alphaedit, "MEMIT projected on the preserved keys' null space (Fang et al. 2025)"),
        Editor("ft", FTConfig, finetune, "fine-tuning of one W_out with an L-infinity constraint (FT-L)"),
        Editor("fine", FiNEConfig, fine, "neuron-level edit of selected W_out rows (FiNE, Pan et al. 2025)"),
        Editor("memit_csk", MEMITCSKConfig, memit_csk, "MEMIT at a chosen subject / verb / object token, layers by tracing (Gupta et al. 2023)",
               prepare=fix_auto_layers),
        Editor("intattn", IntAttnConfig, intattn, "joint MLP W_out + attention W_O update, attention share alpha (IntAttn-Edit)"),
        Editor("mega", MEGAConfig, mega, "gated linear maps on attention outputs, no weight change (MEGA activation steering)"),
        Editor("emmet", EMMETConfig, emmet, "batched ROME: equality constraints per request (EMMET, Gupta et al. 2024)"),
        Editor("grace", GRACEConfig, grace, "discrete key-value codebook replacing one layer's output, no weight change (GRACE, Hartvigsen et al. 2023)"),
        Editor("kn", KNConfig, kn, "knowledge neurons by integrated gradients, W_out rows moved between embeddings (KN, Dai et al. 2022)"),
        Editor("pmet", PMETConfig, pmet, "MEMIT with joint attention + FFN targets, FFN target written (PMET, Li et al. 2024)"),
        Editor("ultraedit", UltraEditConfig, ultraedit, "lifelong closed-form W_out update from normalised keys and gradients (UltraEdit, Gu et al. 2025)"),
        Editor("wise", WISEConfig, wise, "side memory of one layer's W_out behind an activation router, no weight change (WISE, Wang et al. 2024)"),
        Editor("ace", ACEConfig, ace, "multi-hop edit of value- then query-layer FFNs along Q-V pathways (ACE, 2026)",
               takes_cases=True, default_data="toyworld-mquake", prepare=check_ace_items),
    ]
    return {e.name: e for e in found}


def get_editor(name: str) -> Editor:
    """The editor registered as ``name`` (an error lists the known names).

    >>> editor = get_editor("rome")
    >>> editor.config_class.for_model(model).preset
    'toyworld'
    >>> get_editor("romee")
    Traceback (most recent call last):
    ...
    interp_edit.errors.EditConfigError: unknown editing method 'romee'; known: [...]
    """
    known = editors()
    if not isinstance(name, str) or name not in known:
        raise EditConfigError(f"unknown editing method {name!r}; known: {sorted(known)}")
    return known[name]


def edit(model, requests, method: str = "rome", *, config=None, apply: bool = False, **kwargs):
    """One call: compute an edit of ``requests`` with ``method`` (config fields as keyword
    arguments, e.g. ``layer=3``; ``corpus=`` / ``cache_dir=`` / ``stats=`` for the statistics,
    see :mod:`interp_edit.statistics.collect`). The model is
    left unchanged unless ``apply=True``, in which case the edit is applied before returning.

    >>> e = edit(model, records[:1], "rome", layer=1)     # config fields as keywords
    >>> e.layers()
    [1]
    >>> e = edit(model, records[:2], "ft", steps=5, apply=True)
    >>> len(e.requests)
    2
    >>> _ = e.undo(model)                                 # back to the original weights
    """
    editor = get_editor(method)
    if not isinstance(apply, bool):
        raise EditConfigError(f"apply must be True or False, got {apply!r}")
    result = editor.fn(model, requests, config, **kwargs)
    if apply:
        result.apply(model)
    return result


def check_editor_config(model, method, config) -> dict:
    """``config`` (the editor's config fields, and keyword arguments of its function such as
    ``corpus``) as a dict, after resolving its fields against ``model`` as the editor does
    (:func:`~interp_edit.editing.config.resolve`: the model's preset with the fields on top): an
    unknown method, a config that is not a mapping, an unknown field or a bad value (a layer the
    model lacks included) raises here, before any evaluation or file. The editor still gets the
    dict itself, so a valid config computes as before."""
    import inspect
    from collections.abc import Mapping

    from interp_edit.editing.config import resolve
    from interp_edit.errors import InvalidArgumentError
    from interp_edit.validation import check_str

    check_str(method, "method")
    editor = get_editor(method)
    config = {} if config is None else config
    if not isinstance(config, Mapping):
        raise InvalidArgumentError(f"config must be a dict of {editor.config_class.__name__} fields, "
                                   f"got {config!r:.80} ({type(config).__name__})")
    config = dict(config)
    keywords = {name for name, p in inspect.signature(editor.fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    resolve(editor.config_class, model, None, {k: v for k, v in config.items() if k not in keywords})
    return config
