"""Checks of inputs where they enter the library, in one place.

Every public entry point (analyses, editors and their configs, ``Edit.load``, the data loaders,
the CLI) checks its arguments with these helpers *before any compute*, so that bad input gets
an error from :mod:`interp_edit.errors` naming the argument (and, in batches, the item's index)
and the value, never a ``TypeError`` deep inside. The rules:

- an integer is an ``int`` (not a ``bool``, not ``10.0`` nor ``"10"``);
- a real number is an ``int`` or ``float`` (not a ``bool``) and finite: ``inf`` and ``nan``
  are refused (a check written ``not x > 0`` lets ``inf`` through);
- a text is a ``str``; a prompt or subject is a non-empty one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Sequence
from typing import Any

from interp_edit.errors import EmptyInputError, InvalidArgumentError, PromptTooLongError


def _where(name: str, index: int | None) -> str:
    return name if index is None else f"{name}[{index}]"


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None,
              error: type[Exception] = InvalidArgumentError, index: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum]; else ``error`` naming ``name`` and the value."""
    where = _where(name, index)
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{where} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise error(f"{where} must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise error(f"{where} must be <= {maximum}, got {value!r}")
    return value


def check_real(value: Any, name: str, *, minimum: float | None = None, positive: bool = False,
               error: type[Exception] = InvalidArgumentError, index: int | None = None) -> float:
    """``value`` as a finite float (``> 0`` with ``positive``, ``>= minimum`` with ``minimum``)."""
    where = _where(name, index)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{where} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise error(f"{where} must be finite, got {value!r}")
    if positive and not value > 0:
        raise error(f"{where} must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise error(f"{where} must be >= {minimum}, got {value!r}")
    return value


def check_positive_finite(value: Any, name: str, **kwargs) -> float:
    """``value`` as a finite float > 0."""
    return check_real(value, name, positive=True, **kwargs)


def check_str(value: Any, name: str, *, optional: bool = False, nonempty: bool = True,
              error: type[Exception] | None = None, index: int | None = None) -> str | None:
    """``value`` as a str (``None`` allowed with ``optional``; non-blank with ``nonempty``)."""
    where = _where(name, index)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise (error or InvalidArgumentError)(f"{where} must be a string, got {value!r} ({type(value).__name__})")
    if nonempty and not value.strip():
        raise (error or EmptyInputError)(f"empty {where} {value!r}")
    return value


def check_choice(value: Any, name: str, choices: Sequence, *, error: type[Exception] = InvalidArgumentError) -> Any:
    """``value`` if it is one of ``choices`` (compared as given, hashable or not)."""
    if isinstance(value, bool) or not any(type(value) is type(c) and value == c for c in choices):
        raise error(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_sequence(value: Any, name: str, *, nonempty: bool = True,
                   error: type[Exception] = InvalidArgumentError) -> list:
    """``value`` (a list, tuple or other iterable but not a str / bytes / dict) as a list."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise error(f"{name} must be a list, got {value!r} ({type(value).__name__})")
    items = list(value)
    if nonempty and not items:
        raise error(f"{name} is empty")
    return items


def check_prompt_batch(model, prompts: Any, name: str = "prompts", *, extra_tokens: Sequence[int] | int = 0,
                       allow_empty: bool = False) -> list[list[int]]:
    """The token ids (BOS first) of a batch of prompts, after checking that every prompt is a
    non-empty str and fits the model's context (with ``extra_tokens`` more, e.g. a
    teacher-forced target: one count for all or one per prompt); the error names the prompt's
    index. Nothing is run."""
    items = check_sequence(prompts, name, nonempty=not allow_empty)
    for i, prompt in enumerate(items):
        check_str(prompt, name, index=i)
    tokenizer = model.tokenizer
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    extras = [extra_tokens] * len(items) if isinstance(extra_tokens, int) else list(extra_tokens)
    ids = [bos + tokenizer.encode(p, add_special_tokens=False) for p in items]
    for i, (prompt, row) in enumerate(zip(items, ids, strict=True)):
        if len(row) + extras[i] > model.cfg.n_ctx:
            raise PromptTooLongError(f"{name}[{i}] {prompt!r} is {len(row) + extras[i]} tokens; "
                                     f"the model's context is {model.cfg.n_ctx}")
    return ids


# --- dataclass fields ------------------------------------------------------------------------

def _accepts(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_accepts(v, args[0]) for v in value)
        return len(args) == len(value) and all(_accepts(v, a) for v, a in zip(value, args, strict=True))
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation this checker does not know: not checked


def _describe(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return "a finite float" if annotation is float else text.removeprefix("<class '").removesuffix("'>")


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    """A dataclass's resolved field annotations (a class's annotations do not change, and
    resolving them compiles every string annotation anew: most of a config check's time)."""
    return typing.get_type_hints(cls)


def check_fields(instance, error: type[Exception], *, in_place: bool = False):
    """A dataclass instance whose every field has its annotated type (lists given for tuple
    fields are turned into tuples; floats must be finite); else ``error`` naming the field, the
    value and the expected type. Returns the (possibly converted) instance; ``in_place`` (for
    ``__post_init__``) converts the instance itself, frozen or not."""
    hints = _field_hints(type(instance))
    changes = {}
    for f in dataclasses.fields(instance):
        if not f.init or f.name not in hints:
            continue
        value = getattr(instance, f.name)
        annotation = hints[f.name]
        if isinstance(value, list) and not _accepts(value, annotation) and _accepts(tuple(value), annotation):
            value = changes[f.name] = tuple(value)
        if not _accepts(value, annotation):
            raise error(f"{type(instance).__name__} field {f.name!r} must be {_describe(annotation)}, "
                        f"got {value!r} ({type(value).__name__})")
    if in_place:
        for name, value in changes.items():
            object.__setattr__(instance, name, value)
        return instance
    return dataclasses.replace(instance, **changes) if changes else instance


def _check_value(value: Any, annotation: Any, path: str, fail) -> Any:
    """``value`` (lists turned into tuples where the annotation wants one) if it has the
    annotated type, its texts non-blank and its dataclasses' fields checked in turn; else
    ``fail(path, problem)`` naming the innermost item at fault (``field[i][j]``)."""
    if typing.get_origin(annotation) is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(args) != len(value):
            fail(path, f"must be {_describe(annotation)} ({len(args)} items), got {value!r}")
        return tuple(_check_value(v, a, f"{path}[{j}]", fail) for j, (v, a) in enumerate(zip(value, args, strict=True)))
    if isinstance(value, list) and not _accepts(value, annotation) and _accepts(tuple(value), annotation):
        value = tuple(value)
    if not _accepts(value, annotation):
        fail(path, f"must be {_describe(annotation)}, got {value!r} ({type(value).__name__})")
    if isinstance(value, str) and not value.strip():
        fail(path, f"is an empty string {value!r}")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _check_tree(value, path + ".", fail)
    return value


def _check_tree(instance, prefix: str, fail, fields: Sequence[str] | None = None):
    hints = _field_hints(type(instance))
    changes = {}
    for f in dataclasses.fields(instance):
        if not f.init or f.name not in hints or (fields is not None and f.name not in fields):
            continue
        value = getattr(instance, f.name)
        checked = _check_value(value, hints[f.name], prefix + f.name, fail)
        if checked is not value and (type(checked) is not type(value) or checked != value):
            changes[f.name] = checked
    return dataclasses.replace(instance, **changes) if changes else instance


def check_records(items: Any, name: str, kind: type | tuple[type, ...], *, convert=None, required: Sequence[str] = (),
                  fields: Sequence[str] | None = None, hint: str = "", error: type[Exception] = InvalidArgumentError) -> list:
    """The records an evaluation entry point scores, checked before any compute: ``items`` a
    list; each one a ``kind`` (after ``convert(item, index)``, which turns an input it can read
    unambiguously, such as a public dataset dict, into one, and returns anything else as
    given); every field of the annotated type (recursively into nested records, lists given for
    tuples), every text non-blank, and the dotted ``required`` fields not ``None``
    (``fields``: the only top-level fields checked, those the entry point reads). A bad item
    raises ``error`` naming ``name[index]`` and the field (``hint``: what to pass instead of an
    item of the wrong type)."""
    records = check_sequence(items, name, nonempty=False, error=error)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    out = []
    for index, item in enumerate(records):
        where = _where(name, index)
        if convert is not None and not isinstance(item, kinds):
            item = convert(item, index)
        if not isinstance(item, kinds):
            raise error(f"{where}: expected a {' or '.join(k.__name__ for k in kinds)}, got {type(item).__name__}"
                        f"{'; ' + hint if hint else ''}")

        def fail(path: str, problem: str, where=where, item=item):
            raise error(f"{where}: field {path!r} of the {type(item).__name__} {problem}")

        item = _check_tree(item, "", fail, fields)
        for path in required:
            value = item
            for part in path.split("."):
                value = getattr(value, part)
            if value is None:
                fail(path, "is required here, got None")
        out.append(item)
    return out


__all__ = ["check_choice", "check_fields", "check_int", "check_positive_finite", "check_prompt_batch", "check_real",
           "check_records", "check_sequence", "check_str"]
