"""The base of every editor's config: validated fields with documented defaults, and presets
per model (the published GPT-2 XL settings, tuned toy-world settings). An editor's config for
a model is its preset for that model with the caller's overrides on top."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from interp_edit.adapter.identity import preset_key
from interp_edit.editing.targets import TargetConfig, check_prefix_room
from interp_edit.errors import EditConfigError
from interp_edit.statistics.collect import PACKINGS
from interp_edit.validation import check_fields


@dataclass(frozen=True)
class EditorConfig(TargetConfig):
    """Fields every closed-form editor has, on top of :class:`TargetConfig`."""

    #: texts of the statistics corpus (ROME / MEMIT used 100,000 Wikipedia articles), or
    #: ``"auto"``: grow the sample until the edit's whitened request keys stop changing (see
    #: :mod:`interp_edit.statistics.auto`)
    stats_samples: int | Literal["auto"] = 100_000
    stats_batch_size: int = 32
    #: ``stats_samples="auto"``: the largest relative change of C⁻¹k (per request key and layer)
    #: between two consecutive sample sizes at which the sample stops growing
    stats_tolerance: float = 0.01
    #: ``stats_samples="auto"``: the most texts it may read
    stats_max_samples: int = 100_000
    #: how corpus texts become token rows for the statistics: ``"bos"`` (BOS first, not counted)
    #: or ``"rome"`` (ROME's ``layer_stats``: each text cut to the context, every token counted)
    stats_packing: str = "bos"
    #: the preset these settings started from (a key of ``PRESETS``, or "generic"), set by
    #: :func:`preset_config` and recorded in ``edit.config``; None for a config built by hand.
    #: Passed as an override, it selects that preset (e.g. ``preset="gpt-j-6B"``).
    preset: str | None = None

    #: published model (see :func:`interp_edit.adapter.identity.known_model`) or model name ->
    #: field values; the fields a preset leaves out keep the class defaults
    PRESETS: ClassVar[MappingProxyType] = MappingProxyType({})
    #: ``preset="paper"``: the fields that locate the edit in *this* model or size its data
    #: (e.g. ``("layer", "stats_samples")``), taken from the model's own preset; every other
    #: field keeps the class default, the reference code's settings. Empty: no "paper" preset.
    PAPER_MODEL_FIELDS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def generic(cls, model) -> dict[str, Any]:
        """Field values for a model without a preset (e.g. the layers scaled to its depth)."""
        return {}

    @classmethod
    def for_model(cls, model, **overrides: Any):
        """The preset for ``model`` (recognised from its architecture and dimensions, else by its
        TransformerLens ``model_name``) with ``overrides``."""
        return preset_config(cls, model, overrides)

    def validate(self) -> None:
        super().validate()
        if (self.stats_samples != "auto" and self.stats_samples < 1) or self.stats_batch_size < 1:
            raise EditConfigError("fields 'stats_samples' (an integer or 'auto') and 'stats_batch_size' must be >= 1")
        if self.stats_packing not in PACKINGS:
            raise EditConfigError(f"field 'stats_packing' must be one of {PACKINGS}, got {self.stats_packing!r}")
        if not 0 < self.stats_tolerance < 1 or self.stats_max_samples < 1:
            raise EditConfigError("field 'stats_tolerance' must be in (0, 1) and 'stats_max_samples' >= 1, got "
                                  f"{self.stats_tolerance!r} and {self.stats_max_samples!r}")

    def check_model(self, model) -> None:
        """The checks of the fields that need the model, before any compute: the context
        prefixes fit its context (:func:`~interp_edit.editing.targets.check_prefix_room`)."""
        check_prefix_room(model, n=self.n_prefixes, length=self.prefix_length, lengths=self.prefix_lengths,
                          starts=self.prefix_starts, given=self.prefixes)

    def target_config(self) -> TargetConfig:
        return TargetConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TargetConfig)})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


GENERIC = "generic"
#: the preset of the reference code's settings (see ``EditorConfig.PAPER_MODEL_FIELDS``)
PAPER = "paper"

#: ``edit_token`` values that are measured, not named: per subject length, or per request
TRACED_EDIT_TOKENS = ("traced", "traced_per_request")
#: what ``edit_token="traced"`` maximises (see :mod:`interp_edit.editing.edit_token_choice`)
TOKEN_TRACE_CURVES = ("mlp", "mlp_mediated")


@dataclass(frozen=True)
class SubjectTokenConfig(EditorConfig):
    """The fields of editors that write at a subject token (ROME, MEMIT, AlphaEdit, IntAttn)."""

    #: the subject token keys are read at and targets written to: ``"subject_last"`` (the
    #: papers'), ``"subject_first"``, ``"subject_<k>"`` (the k-th, from 0), or measured:
    #: ``"traced"`` (per subject length, the token with the largest MLP-mediated effect at the
    #: edited layers over the batch's requests of that length) or ``"traced_per_request"``;
    #: see :mod:`interp_edit.editing.edit_token_choice`
    edit_token: str = "subject_last"
    #: ``traced``: requests of each subject length traced (the first ones of the batch)
    token_trace_facts: int = 16
    #: ``traced``: noise draws per trace (ROME: 10)
    token_trace_noise_samples: int = 10
    #: ``traced``: the effect that decides, one of :data:`TOKEN_TRACE_CURVES`: ``"mlp"`` (default:
    #: restoring the edited layers' MLP output at the token, what these editors rewrite) or
    #: ``"mlp_mediated"`` (edit_token_aie's hidden − severed curve at the edited layers)
    token_trace_curve: str = "mlp"
    #: requests that share one key (see :func:`~interp_edit.editing.requests.key_collisions`):
    #: ``False`` warns (:class:`~interp_edit.errors.KeyCollisionWarning`) and records them in
    #: ``edit.info["key_collisions"]``; ``True`` raises :class:`~interp_edit.errors.EditRequestError`
    strict: bool = False

    def validate(self) -> None:
        super().validate()
        self.check_edit_token()
        if self.token_trace_facts < 1 or self.token_trace_noise_samples < 1:
            raise EditConfigError("fields 'token_trace_facts' and 'token_trace_noise_samples' must be >= 1")
        if self.token_trace_curve not in TOKEN_TRACE_CURVES:
            raise EditConfigError(f"field 'token_trace_curve' must be one of {list(TOKEN_TRACE_CURVES)}, got {self.token_trace_curve!r}")

    def check_edit_token(self) -> None:
        """Raise :class:`EditConfigError` unless ``edit_token`` is one this editor can write at."""
        from interp_edit.editing.requests import subject_offset

        if self.edit_token not in ("subject_last", "subject_first", *TRACED_EDIT_TOKENS) and subject_offset(self.edit_token) is None:
            raise EditConfigError(f"field 'edit_token': {self.edit_token!r} is not a subject token; use 'subject_last', "
                                  f"'subject_first', 'subject_<k>' or one of {list(TRACED_EDIT_TOKENS)}")


def preset_config(cls, model, overrides: dict[str, Any]):
    """``cls``'s preset for ``model`` with ``overrides`` on top, validated, its ``preset`` field
    naming the preset. The preset is ``cls.PRESETS[key]`` for the published model ``model`` is
    (:func:`~interp_edit.adapter.identity.preset_key`: recognised from the architecture and
    dimensions, however the model was loaded; else its ``model_name``), or
    ``cls.generic(model)`` (``preset="generic"``). ``overrides["preset"]`` names the preset
    instead. An unknown field or preset raises :class:`EditConfigError`. Any config class with
    ``PRESETS``, ``generic``, ``validate`` and a ``preset`` field can use it."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise EditConfigError(f"{cls.__name__} has no field(s) {unknown}; fields: {sorted(names)}")
    overrides = dict(overrides)
    key = overrides.pop("preset", None)
    own = preset_key(model)
    own = own if own in cls.PRESETS else GENERIC
    paper = getattr(cls, "PAPER_MODEL_FIELDS", ())
    if key is None:
        key = own
    elif key == PAPER and not paper:
        raise EditConfigError(f"field 'preset': {cls.__name__} has no {PAPER!r} preset; presets: "
                              f"{sorted(cls.PRESETS)} or {GENERIC!r}")
    elif key not in (GENERIC, PAPER) and key not in cls.PRESETS:
        raise EditConfigError(
            f"field 'preset': {cls.__name__} has no preset {key!r}; presets: {sorted(cls.PRESETS)}, {GENERIC!r}"
            f"{' or ' + repr(PAPER) if paper else ''}"
        )
    preset = dict(cls.generic(model) if key == GENERIC else cls.PRESETS[key] if key != PAPER else {})
    if key == PAPER:  # the reference settings, placed in this model by its own preset's layer(s) and data size
        base = {**cls.generic(model), **(cls.PRESETS[own] if own != GENERIC else {})}
        preset = {name: base[name] for name in paper if name in base}
    config = check_fields(cls(**{**preset, **overrides, "preset": key}), EditConfigError)
    config.validate()
    return config


def resolve(config_class, model, config, overrides: dict[str, Any]):
    """A config instance for an edit of ``model``: ``config`` (an instance) with ``overrides``,
    or the model's preset; its fields are checked against the model too (:func:`check_against_model`:
    layers, context prefixes, ...), before any compute. (``for_model`` alone does not: it also
    shows another model's preset, e.g. ``ROMEConfig.for_model(model, preset="gpt2-xl")``.)"""
    if config is None:
        config = config_class.for_model(model, **overrides)
        check_against_model(config, model)
        return config
    if not isinstance(config, config_class):
        raise EditConfigError(f"expected a {config_class.__name__}, got {type(config).__name__}")
    if "preset" in overrides:  # replacing the field would relabel the config without applying the preset
        raise EditConfigError(
            f"field 'preset' ({overrides['preset']!r}) selects a preset's settings, but a {config_class.__name__} was "
            f"given (preset {config.preset!r}); pass preset= without config=, or {config_class.__name__}.for_model(model, "
            "preset=...) as config"
        )
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:
        raise EditConfigError(f"{config_class.__name__} has no field(s) {unknown}")
    config = dataclasses.replace(config, **overrides) if overrides else config
    config = check_fields(config, EditConfigError)
    config.validate()
    check_against_model(config, model)
    return config


#: config fields that name layers of the model (an int, or a tuple of ints, where set)
LAYER_FIELDS = ("layer", "layers", "mlp_layers", "attn_layers", "query_layers", "value_layers", "min_layer")


def check_layers(model, layers: Sequence[int], field: str) -> None:
    """Every layer of ``layers`` (non-empty) is one of the model's, else :class:`EditConfigError`
    naming ``field``."""
    bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
    if bad or not layers:
        raise EditConfigError(
            f"field {field!r}: layers {list(layers)} out of range for this {model.cfg.n_layers}-layer model "
            f"(valid: 0..{model.cfg.n_layers - 1})"
        )


def check_layer_fields(config, model) -> None:
    """The :data:`LAYER_FIELDS` ``config`` sets to layers (not ``None`` or ``"auto"``) are the model's."""
    for name in LAYER_FIELDS:
        value = getattr(config, name, None)
        layers = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
        if isinstance(layers, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
            check_layers(model, layers, name)


def check_against_model(config, model) -> None:
    """A config's checks that need the model: its layer fields, and its own ``check_model``
    where it has one (e.g. the context prefixes fit the context)."""
    check_layer_fields(config, model)
    check = getattr(config, "check_model", None)
    if check is not None:
        check(model)
