"""Accuracies of a model on the toy world (top-1 next token = the object)."""

from __future__ import annotations

from interp_edit.batching import last_token_logits
from interp_edit.errors import DatasetError, TokenizationError
from interp_edit.toyworld.model_world import WorldSpec, world_spec_of
from interp_edit.toyworld.templates import BIRTH_COUNTRY, relation
from interp_edit.toyworld.world import ToyWorld


def object_token_id(tokenizer, obj: str) -> int:
    ids = tokenizer.encode(" " + obj, add_special_tokens=False)
    if len(ids) != 1:
        raise TokenizationError(f"object {obj!r} is {len(ids)} tokens, expected one")
    return ids[0]


def top1_accuracy(model, prompts: list[str], answers: list[str], batch_size: int = 512) -> float:
    """Share of prompts whose argmax next token is the answer's (single) token."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if not prompts:
        return float("nan")
    targets = [object_token_id(model.tokenizer, a) for a in answers]
    predicted = last_token_logits(model, prompts, batch_size).argmax(-1).tolist()
    return sum(p == t for p, t in zip(predicted, targets, strict=True)) / len(prompts)


def evaluation_sets(world: ToyWorld) -> dict[str, tuple[list[str], list[str]]]:
    """(prompts, answers) of every accuracy ``toy eval`` reports."""
    sets: dict[str, tuple[list[str], list[str]]] = {"fact": ([], []), "paraphrase": ([], [])}
    for fact in world.facts:
        spec = relation(fact.relation_id)
        for key, templates in (("fact", spec.train_templates), ("paraphrase", spec.paraphrase_templates)):
            sets[key][0].extend(t.format(fact.subject) for t in templates)
            sets[key][1].extend([fact.object] * len(templates))
    for key, trained, templates in (
        ("twohop_trained", True, BIRTH_COUNTRY.train_templates),
        ("twohop_heldout", False, BIRTH_COUNTRY.train_templates),
        ("twohop_trained_paraphrase", True, BIRTH_COUNTRY.heldout_templates),
    ):
        people = [p.name for p in world.people if p.composition_trained == trained]
        sets[key] = (
            [t.format(p) for p in people for t in templates],
            [world.birth_country(p) for p in people for _ in templates],
        )
    return sets


def evaluate_toyworld(model, world: ToyWorld, batch_size: int = 512) -> dict[str, float]:
    """``fact_acc`` (training templates), ``paraphrase_acc`` (held-out templates),
    ``twohop_trained_acc`` / ``twohop_heldout_acc`` (birth country of people whose composition
    was / was not trained, training phrasings) and ``twohop_trained_paraphrase_acc``.

    ``world`` must be the model's own (``world_of(model)``) when the model carries one: the
    accuracies of another world's facts would measure nothing, so that is refused before any forward."""
    model_spec, given = world_spec_of(model), WorldSpec.of(world)
    if model_spec is not None and model_spec != given:
        raise DatasetError(f"evaluate_toyworld was given the {given}, but the model was trained on the {model_spec}: "
                           "its people and facts are not the model's; pass world_of(model)")
    return {
        f"{key}_acc": top1_accuracy(model, prompts, answers, batch_size)
        for key, (prompts, answers) in evaluation_sets(world).items()
    }
