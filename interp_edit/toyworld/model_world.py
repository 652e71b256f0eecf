"""Which toy world a model knows. A toy-world checkpoint's ``config.json`` names its world (the
``world`` section: seed and sizes); :func:`~interp_edit.adapter.load_checkpoint` keeps the
checkpoint's config on the model (``model.checkpoint_config``) and :func:`train_toy_model`
sets it on the model it trains. Every consumer of "the toy world" (built-in datasets, the
default statistics corpus, ``evaluate``, ``contrast``, the demo) asks :func:`world_of` for the
model's world, and refuses data of another world with :func:`check_same_world`.

A model that carries no world (a Hugging Face model, a model built in code) gets the shipped
model's world where a toy world is needed (:func:`world_or_shipped`), as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp_edit.errors import CheckpointError, DatasetError
from interp_edit.toyworld.world import ToyWorld, build_world

#: the attribute of a model holding the config of the checkpoint it was loaded from
CHECKPOINT_CONFIG_ATTRIBUTE = "checkpoint_config"


@dataclass(frozen=True)
class WorldSpec:
    """What determines a toy world: :func:`build_world`'s arguments."""

    seed: int
    n_people: int

    @classmethod
    def from_section(cls, section: Any, where: str) -> WorldSpec:
        """The spec of a checkpoint config's ``world`` section; a malformed one raises
        :class:`CheckpointError` naming ``where``."""
        if not isinstance(section, dict) or not {"seed", "n_people"} <= set(section):
            raise CheckpointError(f"{where}: the 'world' section must hold 'seed' and 'n_people', got {section!r}")
        seed, n_people = section["seed"], section["n_people"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (seed, n_people)):
            raise CheckpointError(f"{where}: the 'world' section's 'seed' and 'n_people' must be integers, got {section!r}")
        return cls(seed, n_people)

    @classmethod
    def of(cls, world: ToyWorld) -> WorldSpec:
        return cls(world.seed, len(world.people))

    def as_section(self) -> dict[str, int]:
        return {"seed": self.seed, "n_people": self.n_people}

    def build(self) -> ToyWorld:
        return build_world(self.seed, self.n_people)

    def __str__(self) -> str:
        return f"toy world (seed {self.seed}, {self.n_people} people)"


def attach_world(model, spec: WorldSpec) -> None:
    """Record on ``model`` that it was trained on the world ``spec`` (as a loaded checkpoint does)."""
    config = dict(getattr(model, CHECKPOINT_CONFIG_ATTRIBUTE, None) or {})
    config["world"] = spec.as_section()
    setattr(model, CHECKPOINT_CONFIG_ATTRIBUTE, config)


def world_spec_of(model) -> WorldSpec | None:
    """The spec of the world ``model`` was trained on, or ``None`` if it carries none."""
    config = getattr(model, CHECKPOINT_CONFIG_ATTRIBUTE, None)
    if not isinstance(config, dict) or "world" not in config:
        return None
    return WorldSpec.from_section(config["world"], f"the checkpoint config of model {model.cfg.model_name!r}")


def world_of(model) -> ToyWorld:
    """The toy world ``model`` was trained on; a model that carries none raises
    :class:`CheckpointError` (use :func:`world_or_shipped` to fall back to the shipped world)."""
    spec = world_spec_of(model)
    if spec is None:
        raise CheckpointError(
            f"model {model.cfg.model_name!r} carries no toy world (it was not loaded from a toy-world checkpoint "
            "or trained by train_toy_model); pass the world explicitly"
        )
    return spec.build()


def world_or_shipped(model) -> ToyWorld:
    """The model's own toy world, or the shipped model's world for a model that carries none."""
    spec = world_spec_of(model)
    return spec.build() if spec is not None else shipped_world()


def shipped_world() -> ToyWorld:
    """The world of the checkpoint that ships with the package."""
    return checkpoint_world_spec(None).build()


def checkpoint_world_spec(folder: str | Path | None) -> WorldSpec:
    """The world spec in a checkpoint folder's config (``None``: the shipped checkpoint)."""
    from interp_edit.adapter import BUILTIN_MODELS, CONFIG_FILE, _read_json

    path = (Path(folder) if folder else BUILTIN_MODELS["toyworld"]) / CONFIG_FILE
    meta = _read_json(path)
    if "world" not in meta:
        raise CheckpointError(f"checkpoint file {path} has no 'world' section (not a toy-world model)")
    return WorldSpec.from_section(meta["world"], f"checkpoint file {path}")


def check_same_world(model, data_world: WorldSpec | None, what: str) -> None:
    """Raise :class:`DatasetError` naming both worlds if ``what`` (e.g. a dataset) was built
    from another toy world than the one ``model`` was trained on. Nothing is checked when
    either side carries no world."""
    model_spec = world_spec_of(model)
    if data_world is None or model_spec is None or data_world == model_spec:
        return
    raise DatasetError(
        f"{what} was built from the {data_world}, but the model was trained on the {model_spec}: its people "
        f"and facts are not the model's; build the data from the model's world (e.g. load_dataset(name, model=model))"
    )
