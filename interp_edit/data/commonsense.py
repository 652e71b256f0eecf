"""Relation statements with verb and object spans (format ``commonsense``), the toy world's
stand-in for MEMIT-CSK's plausibility statements.

The toy model never read " True" / " False" statements, so the task is built from the facts it
knows, as statements whose spans an editor can target (methods.md B4):

- ``simple``: ``"{} was born in"`` → the person's city; ``verb`` = the relation phrase, no
  object in the prompt.
- ``compound``: ``"{} was born in Karsa and works as a"`` → the person's profession; one fact is
  stated (its object, here ``"Karsa"``, is the ``object`` span) and another is asked (its
  phrase is the ``verb``). The toy corpus holds such multi-fact sentences, and the model answers
  them.

Each case rewrites its statement's answer to another object of the same type and carries
paraphrases (the asked relation's held-out templates) and a fixed set of *relapse* statements
with their true answers: the same subject's other relations and other people's facts of the
same relation. Every statement names its fact as ``"subject|relation"`` so a metric can leave
out the facts an edit batch rewrites on purpose.

Record layout: ``case_id``, ``kind`` (simple | compound), ``fact``, ``requested_rewrite``
{``prompt`` with ``{}``, ``subject``, ``verb``, ``object`` (may be null), ``target_new``,
``target_true``}, ``paraphrase_prompts`` (non-empty), ``relapse`` (non-empty list of
{``prompt``, ``answer``, ``fact``}).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from interp_edit.data.cases import Rewrite
from interp_edit.data.formats import Where, _case_id, _get, _text, _texts, parse_rewrite

STATEMENT_KINDS = ("simple", "compound")


@dataclass(frozen=True)
class StatementRewrite(Rewrite):
    """A rewrite whose prompt names its ``verb`` and (optional) ``object`` spans."""

    verb: str | None = None
    object: str | None = None

    def as_dict(self) -> dict:
        return {**super().as_dict(), "verb": self.verb, "object": self.object}


@dataclass(frozen=True)
class Statement:
    """A statement the model should keep answering: the full prompt, its answer and its fact."""

    prompt: str
    answer: str
    fact: str


@dataclass(frozen=True)
class CommonsenseCase:
    """One relation statement to rewrite (see the module docstring)."""

    case_id: str
    kind: str
    fact: str
    rewrite: StatementRewrite
    paraphrase_prompts: tuple[str, ...]
    relapse: tuple[Statement, ...]

    def rewrites(self) -> tuple[StatementRewrite, ...]:
        return (self.rewrite,)


def _span(data: dict, key: str, text: str, where: Where, prefix: str) -> str | None:
    if data.get(key) is None:
        return None
    span = _text(data, key, where, prefix)
    if span not in text:
        raise where.error(prefix + key, f"span {span!r} does not occur in the prompt {text!r}")
    return span


def parse_commonsense(record: dict, where: Where) -> CommonsenseCase:
    """Validate one ``commonsense`` record (see the module docstring)."""
    prefix = "requested_rewrite."
    data = _get(record, "requested_rewrite", where)
    base = parse_rewrite(data, where, prefix)
    rewrite = StatementRewrite(base.prompt, base.subject, base.target_new, base.target_true,
                               _span(data, "verb", base.text, where, prefix), _span(data, "object", base.text, where, prefix))
    kind = _text(record, "kind", where)
    if kind not in STATEMENT_KINDS:
        raise where.error("kind", f"expected one of {STATEMENT_KINDS}, got {kind!r}")
    relapse = _get(record, "relapse", where)
    if not isinstance(relapse, list) or not relapse:
        raise where.error("relapse", "expected a non-empty list of statements")
    statements = tuple(Statement(_text(s, "prompt", where, f"relapse[{i}]."), _text(s, "answer", where, f"relapse[{i}]."),
                                 _text(s, "fact", where, f"relapse[{i}].")) for i, s in enumerate(relapse))
    return CommonsenseCase(_case_id(record, where), kind, _text(record, "fact", where), rewrite,
                           _texts(record, "paraphrase_prompts", where), statements)


def toy_commonsense(world, seed: int = 0, n_neighbours: int = 3) -> list[dict]:
    """The toy world's statements: one ``simple`` case per person fact, one ``compound`` case
    per person (a random pair of their relations), each with the person's other relations and
    ``n_neighbours`` other people's facts of the asked relation as relapse statements."""
    from interp_edit.toyworld.templates import PERSON_RELATIONS, relation
    from interp_edit.toyworld.world import OBJECTS_BY_TYPE, stable_seed

    people = [p.name for p in world.people]

    def statement(person: str, rel: str) -> dict:
        return {"prompt": relation(rel).canonical_template.format(person), "answer": world.lookup(person, rel),
                "fact": f"{person}|{rel}"}

    def case(kind: str, person: str, asked: str, stated: str | None, rng: random.Random) -> dict | None:
        spec = relation(asked)
        prompt = spec.canonical_template
        obj = None
        if stated is not None:
            obj = world.lookup(person, stated)
            prompt = f"{relation(stated).canonical_template} {obj} and {spec.phrases[0]}"
        text = prompt.format(person)
        # the spans must be found where they are meant, after the subject
        if text.count(spec.phrases[0]) != 1 or (obj is not None and text.count(obj) != 1) or person in text[len(person):]:
            return None
        true = world.lookup(person, asked)
        others = rng.sample([p for p in people if p != person], n_neighbours)
        return {
            "case_id": f"{kind}-{person}-{asked}", "kind": kind, "fact": f"{person}|{asked}",
            "requested_rewrite": {"prompt": prompt, "subject": person, "verb": spec.phrases[0], "object": obj,
                                  "target_new": rng.choice([o for o in OBJECTS_BY_TYPE[spec.object_type] if o != true]),
                                  "target_true": true},
            "paraphrase_prompts": [t.format(person) for t in spec.paraphrase_templates],
            "relapse": [statement(person, r) for r in PERSON_RELATIONS if r != asked] + [statement(p, asked) for p in others],
        }

    out = []
    for person in people:
        for rel in PERSON_RELATIONS:
            rng = random.Random(stable_seed("toy-csk", world.seed, seed, person, rel))
            out.append(case("simple", person, rel, None, rng))
        rng = random.Random(stable_seed("toy-csk-compound", world.seed, seed, person))
        stated, asked = rng.sample(PERSON_RELATIONS, 2)
        out.append(case("compound", person, asked, stated, rng))
    return [c for c in out if c is not None]
