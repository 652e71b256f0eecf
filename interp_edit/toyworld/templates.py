"""The toy world's sentence templates: frames, relation phrases, two-hop phrases, filler.

A *template* is a prompt with one ``{}`` for the subject whose next token is the object.
Every relation has several *phrases* (the words between subject and object) and every
sentence is a *frame* around ``subject + phrase``. Training templates are most
(frame, phrase) combinations; the held-out *paraphrase* templates are the remaining
combinations, so every word of a paraphrase was seen in training, never that sentence.

Rule (checked by the tests): no template of a subject is a prefix of another template of the
same subject type, so every prompt has exactly one correct continuation.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Frames put text around "{subject} {phrase}". Frame 0 is the bare subject-first form.
FRAMES: tuple[str, ...] = (
    "{}",
    "As everyone knows, {}",
    "In the old records, {}",
    "People say that {}",
    "It is well known that {}",
    "According to the archive, {}",
)


@dataclass(frozen=True)
class RelationSpec:
    """A relation of the toy world: its id, subject and object types and its phrases."""

    id: str
    subject_type: str
    object_type: str
    phrases: tuple[str, ...]
    description: str

    def template(self, frame: int, phrase: int) -> str:
        return FRAMES[frame].replace("{}", "{} " + self.phrases[phrase])

    def is_paraphrase(self, frame: int, phrase: int) -> bool:
        """The held-out (frame, phrase) pairs: one phrase per framed sentence. The bare frame 0
        is trained with every phrase (a bare prompt is a substring of every framed one, so it
        could not be held out)."""
        return frame > 0 and phrase == frame % len(self.phrases)

    @property
    def train_templates(self) -> tuple[str, ...]:
        return tuple(
            self.template(f, p)
            for f in range(len(FRAMES))
            for p in range(len(self.phrases))
            if not self.is_paraphrase(f, p)
        )

    @property
    def paraphrase_templates(self) -> tuple[str, ...]:
        return tuple(
            self.template(f, p)
            for f in range(len(FRAMES))
            for p in range(len(self.phrases))
            if self.is_paraphrase(f, p)
        )

    @property
    def canonical_template(self) -> str:
        """The bare subject-first training template, used as the edit prompt."""
        return self.template(0, 0)


RELATIONS: tuple[RelationSpec, ...] = (
    RelationSpec(
        "born_in",
        "person",
        "city",
        ("was born in", "is a native of", "came into the world in", "has a birth certificate from"),
        "the city where a person was born",
    ),
    RelationSpec(
        "profession",
        "person",
        "profession",
        ("works as a", "is employed as a", "earns a living as a", "has a job as a"),
        "a person's occupation",
    ),
    RelationSpec(
        "speaks",
        "person",
        "language",
        ("speaks", "is fluent in", "talks mostly in", "converses in"),
        "the language a person speaks",
    ),
    RelationSpec(
        "instrument",
        "person",
        "instrument",
        ("plays the", "performs on the", "practises the", "is a musician who plays the"),
        "the instrument a person plays",
    ),
    RelationSpec(
        "located_in",
        "city",
        "country",
        ("is a city in", "is located in", "lies in", "belongs to the nation of"),
        "the country a city lies in",
    ),
    RelationSpec(
        "capital",
        "country",
        "city",
        ("has its capital in", "is governed from", "has the capital city", "keeps its government in"),
        "a country's capital city",
    ),
    RelationSpec(
        "country_language",
        "country",
        "language",
        ("has the official language", "mostly uses the language", "writes its laws in", "teaches children in"),
        "a country's official language",
    ),
)

#: Person relations stated in profile cards and multi-fact sentences.
PERSON_RELATIONS: tuple[str, ...] = ("born_in", "profession", "speaks", "instrument")


@dataclass(frozen=True)
class CompositionSpec:
    """A multi-hop question type: a chain of relations and the phrasings that ask it."""

    id: str
    hops: tuple[str, ...]
    train_templates: tuple[str, ...]
    heldout_templates: tuple[str, ...]


#: Two-hop person -> birth city -> country. Trained (its train templates) for part of the
#: people only; its held-out templates are never trained for anyone.
BIRTH_COUNTRY = CompositionSpec(
    "birth_country",
    ("born_in", "located_in"),
    (
        "{} comes from the country of",
        "{} holds a passport of",
        "The homeland of {} is",
        "As everyone knows, {} comes from the country of",
    ),
    ("{}'s home country is", "People say that {} holds a passport of"),
)

#: Three-hop chains, never trained: exported as multi-hop questions.
BIRTH_CAPITAL = CompositionSpec(
    "birth_capital",
    ("born_in", "located_in", "capital"),
    (),
    ("The capital of the homeland of {} is", "{}'s home country has its capital in"),
)
BIRTH_COUNTRY_LANGUAGE = CompositionSpec(
    "birth_country_language",
    ("born_in", "located_in", "country_language"),
    (),
    ("The official language of the homeland of {} is", "{}'s home country has the official language"),
)

COMPOSITIONS: tuple[CompositionSpec, ...] = (BIRTH_COUNTRY, BIRTH_CAPITAL, BIRTH_COUNTRY_LANGUAGE)

#: Words of the random filler sentences put before some training sentences.
FILLER_SUBJECTS = ("The river", "A small bird", "The old market", "The wind", "A tall tower",
                   "The green garden", "The bridge", "A quiet road", "The morning", "The rain")
FILLER_VERBS = ("was calm", "looked bright", "stood still", "turned grey", "felt cold",
                "seemed empty", "grew loud", "opened early", "waited", "shone")
FILLER_TAILS = ("today", "again", "at dawn", "by the lake", "all week", "in spring",
                "for hours", "that night", "near the hills", "as usual")

#: Words the KL ("essence") prompts of ROME-style editors use; trained in no fixed sentence.
ESSENCE_TEMPLATE = "{} is a"


def relation(relation_id: str) -> RelationSpec:
    for spec in RELATIONS:
        if spec.id == relation_id:
            return spec
    known = ", ".join(r.id for r in RELATIONS)
    raise KeyError(f"unknown toy-world relation {relation_id!r}; known relations: {known}")


def all_template_texts() -> list[str]:
    """Every template string of the world (for building the vocabulary)."""
    texts: list[str] = []
    for spec in RELATIONS:
        texts += spec.train_templates + spec.paraphrase_templates
    for comp in COMPOSITIONS:
        texts += comp.train_templates + comp.heldout_templates
    texts.append(ESSENCE_TEMPLATE)
    return texts
