"""The toy world's knowledge base: people, cities, countries and the facts between them.

Everything is a pure function of the seed. Attributes are drawn independently (a person's
language has nothing to do with their birth country), so multi-hop questions have no
shortcut: answering them needs the chain of facts.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from functools import cached_property

from interp_edit.errors import InvalidArgumentError
from interp_edit.toyworld.templates import BIRTH_COUNTRY, PERSON_RELATIONS, relation

CITIES = (
    "Veltra", "Osmark", "Briva", "Calden", "Dunmor", "Elvast", "Farrow", "Gemmel",
    "Haldor", "Isken", "Karsa", "Lumen", "Morvel", "Nesk", "Ortha", "Pellin",
    "Rudna", "Sarnet", "Tivel", "Ulmora", "Varsk", "Wendel", "Yskar", "Zorin",
)
COUNTRIES = ("Ardonia", "Belmark", "Corvania", "Dalvia", "Estrel", "Frosland", "Galdor", "Heskia")
LANGUAGES = ("Ardonian", "Belmaric", "Corvanese", "Dalvish", "Estrelan", "Froslandic",
             "Galdoric", "Heskian")
PROFESSIONS = ("baker", "pilot", "farmer", "doctor", "teacher", "painter", "sailor", "lawyer",
               "tailor", "miner", "nurse", "poet", "chemist", "butcher", "dancer", "judge")
INSTRUMENTS = ("harp", "violin", "flute", "drum", "cello", "piano", "trumpet", "guitar",
               "oboe", "banjo", "lute", "organ")

OBJECTS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "city": CITIES,
    "country": COUNTRIES,
    "language": LANGUAGES,
    "profession": PROFESSIONS,
    "instrument": INSTRUMENTS,
}

#: Name syllables. First names and "short" last names become single tokens; "long" last
#: names (an initial syllable and a continuation) are two tokens, so subjects have 2-3 tokens.
_INITIALS = ("Tal", "Mer", "Kor", "Bel", "Dra", "Sol", "Fen", "Gar", "Hul", "Jor", "Lis",
             "Nor", "Pim", "Quen", "Ros", "Sev", "Tor", "Wen", "Yar", "Zel", "Ast", "Bran",
             "Cor", "Dem", "Ev", "Hal", "Ith", "Kel", "Mor", "Ped")
_CONTINUATIONS = ("vo", "ra", "len", "dor", "mi", "sa", "tin", "bek", "ro", "na", "vik",
                  "del", "ko", "rin", "wa", "lo", "ser", "mon", "ta", "fi", "gun", "pas")
#: first names, and one-token last names, of every world (the other syllable pairs are long last names)
_N_FIRST_NAMES = _N_SHORT_LAST_NAMES = 40
#: the most people a world holds: every first name with every last name (the same for every seed)
MAX_PEOPLE = _N_FIRST_NAMES * (len(_INITIALS) * len(_CONTINUATIONS) - _N_FIRST_NAMES)


def stable_seed(*parts: object) -> int:
    """A seed derived from the parts with SHA-256 (stable across processes, unlike hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class Person:
    name: str
    first: str
    last: str
    #: whether the "last" name is one token or an initial + continuation syllable
    long_last: bool
    #: whether the two-hop composition (birth country) is stated in training
    composition_trained: bool


@dataclass(frozen=True)
class Fact:
    """One (subject, relation, object) triple of the world."""

    subject: str
    relation_id: str
    object: str


@dataclass(frozen=True)
class ToyWorld:
    """The knowledge base. Build it with :func:`build_world`."""

    seed: int
    people: tuple[Person, ...]
    first_names: tuple[str, ...]
    short_last_names: tuple[str, ...]
    last_name_initials: tuple[str, ...]
    last_name_continuations: tuple[str, ...]
    city_country: dict[str, str] = field(hash=False)
    country_capital: dict[str, str] = field(hash=False)
    country_language: dict[str, str] = field(hash=False)
    person_attributes: dict[str, dict[str, str]] = field(hash=False)

    @cached_property
    def facts(self) -> tuple[Fact, ...]:
        """All single-hop facts: people's four relations, then the world's geography."""
        out = [
            Fact(p.name, rel, self.person_attributes[p.name][rel])
            for p in self.people
            for rel in PERSON_RELATIONS
        ]
        out += [Fact(c, "located_in", k) for c, k in self.city_country.items()]
        out += [Fact(k, "capital", c) for k, c in self.country_capital.items()]
        out += [Fact(k, "country_language", lang) for k, lang in self.country_language.items()]
        return tuple(out)

    @cached_property
    def _index(self) -> dict[tuple[str, str], str]:
        return {(f.subject, f.relation_id): f.object for f in self.facts}

    def lookup(self, subject: str, relation_id: str) -> str:
        """The object of (subject, relation); a KeyError names both if there is none."""
        try:
            return self._index[(subject, relation_id)]
        except KeyError:
            raise KeyError(f"the toy world has no fact ({subject!r}, {relation_id!r})") from None

    def chain(self, subject: str, hops: tuple[str, ...]) -> list[str]:
        """The entities visited by following the relations from the subject."""
        entities = [subject]
        for rel in hops:
            entities.append(self.lookup(entities[-1], rel))
        return entities

    def birth_country(self, person: str) -> str:
        return self.chain(person, BIRTH_COUNTRY.hops)[-1]

    def subjects_of_type(self, subject_type: str) -> tuple[str, ...]:
        if subject_type == "person":
            return tuple(p.name for p in self.people)
        if subject_type == "city":
            return tuple(self.city_country)
        if subject_type == "country":
            return tuple(self.country_capital)
        raise KeyError(f"unknown subject type {subject_type!r}")

    def vocabulary_words(self) -> dict[str, list[str]]:
        """Words the tokenizer must know, by role (objects and name parts)."""
        return {
            "objects": sorted({o for objs in OBJECTS_BY_TYPE.values() for o in objs}),
            "first_names": list(self.first_names),
            "short_last_names": list(self.short_last_names),
            "last_name_initials": list(self.last_name_initials),
            "last_name_continuations": list(self.last_name_continuations),
        }


def check_n_people(n_people: object) -> None:
    """Raise :class:`InvalidArgumentError` unless ``n_people`` is an integer from 2 to
    :data:`MAX_PEOPLE` (checked before anything is built or trained)."""
    if isinstance(n_people, bool) or not isinstance(n_people, int) or not 2 <= n_people <= MAX_PEOPLE:
        raise InvalidArgumentError(f"n_people must be an integer from 2 to {MAX_PEOPLE}, got {n_people!r}")


def build_world(seed: int = 0, n_people: int = 400) -> ToyWorld:
    """Build the toy world deterministically from ``seed``.

    ``n_people`` made-up people (two- or three-token names) get a birth city, a profession, a
    language and an instrument, each drawn independently and uniformly. 24 cities lie in 8
    countries (3 each); each country's capital is one of its cities and it has its own
    language. The birth-country composition is trained for half of the people.
    """
    check_n_people(n_people)
    rng = random.Random(stable_seed("toyworld", seed))

    # Name parts: each syllable combination is a distinct word.
    combos = [i + c for i in _INITIALS for c in _CONTINUATIONS]
    rng.shuffle(combos)
    first_names = tuple(sorted(combos[:_N_FIRST_NAMES]))
    short_last = tuple(sorted(combos[_N_FIRST_NAMES : _N_FIRST_NAMES + _N_SHORT_LAST_NAMES]))
    used = set(first_names) | set(short_last)
    last_initials = tuple(sorted(set(_INITIALS)))
    last_conts = tuple(sorted(set(_CONTINUATIONS)))
    long_last = sorted(c for c in combos[_N_FIRST_NAMES + _N_SHORT_LAST_NAMES :] if c not in used)
    assert len(first_names) * (len(short_last) + len(long_last)) == MAX_PEOPLE
    people: list[Person] = []
    seen: set[str] = set()
    while len(people) < n_people:
        first = rng.choice(first_names)
        is_long = rng.random() < 0.5
        last = rng.choice(long_last if is_long else short_last)
        name = f"{first} {last}"
        if name in seen:
            continue
        seen.add(name)
        people.append(Person(name, first, last, is_long, composition_trained=False))
    trained = set(rng.sample(range(n_people), n_people // 2))
    people = [
        Person(p.name, p.first, p.last, p.long_last, composition_trained=i in trained)
        for i, p in enumerate(people)
    ]

    cities = list(CITIES)
    rng.shuffle(cities)
    city_country = {c: COUNTRIES[i // 3] for i, c in enumerate(cities)}
    country_capital = {k: rng.choice(sorted(c for c in CITIES if city_country[c] == k)) for k in COUNTRIES}
    country_language = dict(zip(COUNTRIES, LANGUAGES, strict=True))

    person_attributes = {
        p.name: {rel: rng.choice(OBJECTS_BY_TYPE[relation(rel).object_type]) for rel in PERSON_RELATIONS}
        for p in people
    }
    return ToyWorld(
        seed=seed,
        people=tuple(people),
        first_names=first_names,
        short_last_names=short_last,
        last_name_initials=last_initials,
        last_name_continuations=last_conts,
        city_country=city_country,
        country_capital=country_capital,
        country_language=country_language,
        person_attributes=person_attributes,
    )

