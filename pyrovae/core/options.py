"""Options stated once: each is a field of a dataclass that owns it (a family's, the data's, the
training's, an estimator's), carrying its default, its help and its check. The library validates
with :func:`validate`; the CLI builds its flags from the same fields (``pyrovae.cli.options``),
so a default lives in exactly one place.

    @dataclass
    class FlowOptions:
        flows: int = option(2, "IAF steps per latent layer.", check=between(1, 100))
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

from .errors import UsageError
from .errors import option as named

Check = Callable[[Any], "str | None"]   # the value -> what is wrong with it ("must be ..."), or None
MAX_SIZE = 100_000   # widths, latent dims and particles beyond this are typos, not models that fit in memory


class Options:
    """The base of an options dataclass: :meth:`validate` runs every field's check, then
    :meth:`check`, where a subclass states rules across its fields."""

    def validate(self) -> "Options":
        validate(self)
        self.check()
        return self

    def check(self) -> None:
        """Rules across fields (raise :class:`UsageError`); none by default."""


@dataclasses.dataclass
class NoOptions(Options):
    """The options of a family that has none."""


def option(default: Any, help: str, *, check: Check | None = None, parse: Callable[[str], Any] | None = None,
           choices: Sequence[str] | Callable[[], Sequence[str]] | None = None, cli: bool = True,
           flag: bool = False, secondary: str | None = None) -> Any:
    """A dataclass field that is an option. ``help``: one sentence for ``--help`` (say what 0 or
    none means); ``check(value)``: what is wrong with a value, or None; ``parse``: the command
    line's text to a value (e.g. a comma list); ``choices``: the allowed names (or a function
    giving them, from a registry); ``flag``: a boolean ``--name/--no-name`` (``secondary``: the
    off name, when not ``no-name``); ``cli=False``: Python only."""
    metadata = {"help": help, "check": check, "parse": parse, "choices": choices, "cli": cli, "flag": flag,
                "secondary": secondary}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def fields(options: Any) -> Iterator[dataclasses.Field]:
    """The option fields of an options dataclass (or class)."""
    return (f for f in dataclasses.fields(options) if "help" in f.metadata)


def default(f: dataclasses.Field) -> Any:
    """A field's default (a new copy, for a list-valued one)."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def field_of(options: type, name: str) -> dataclasses.Field:
    """The field ``name`` of the dataclass ``options``."""
    found = next((f for f in dataclasses.fields(options) if f.name == name), None)
    if found is None:
        raise KeyError(f"{options.__name__} has no field {name!r}")
    return found


def default_of(options: type, name: str) -> Any:
    """The default of the field ``name`` of the (options) dataclass ``options``: what a family's
    constructor, or a flag, defaults to where it takes that option, so the default is stated once."""
    return default(field_of(options, name))


def values(options: Any, without: Sequence[str] = ()) -> dict[str, Any]:
    """{name: value} of the options of ``options`` but those ``without``: the keywords of a
    family's constructor, which are named as its options are."""
    return {f.name: getattr(options, f.name) for f in fields(options) if f.name not in without}


def choices_of(f: dataclasses.Field) -> Sequence[str] | None:
    found = f.metadata.get("choices")
    return found() if callable(found) else found


def validate(options: Any) -> Any:
    """Raise :class:`UsageError` naming the first option of ``options`` whose value its check
    refuses (or that is not among its choices); return ``options``."""
    for f in fields(options):
        value = getattr(options, f.name)
        if isinstance(value, list) and f.metadata.get("parse") is not None:
            value = tuple(value)   # from JSON
            object.__setattr__(options, f.name, value)   # frozen settings too
        allowed = choices_of(f)
        if allowed is not None and value is not None and value not in allowed:
            raise UsageError(f"unknown {named(f.name)} {value!r}; use {', '.join(map(str, allowed))}")
        check = f.metadata.get("check")
        problem = check(value) if check is not None else None
        if problem:
            raise UsageError(f"{named(f.name)} {problem}, got {value}")
    return options


# ---------------------------------------------------------------------------- checks

def at_least(low: int | float) -> Check:
    return lambda value: None if _number(value) and value >= low else f"must be at least {low}"


def between(low: float, high: float, what: str = "") -> Check:
    return lambda value: None if _number(value) and low <= value <= high else f"must lie in [{low}, {high}]{what}"


def size(value: Any) -> str | None:
    """A count of units or draws: at least 1, at most ``MAX_SIZE``."""
    if not _number(value) or value < 1:
        return "must be at least 1"
    if value > MAX_SIZE:
        return f"is too large (at most {MAX_SIZE})"
    return None


def positive(value: Any) -> str | None:
    return None if _number(value) and math.isfinite(value) and value > 0 else "must be a positive number"


def non_negative(unit: str = "", zero: str = "") -> Check:
    """>= 0 (``unit``: e.g. 'epochs'; ``zero``: what 0 means)."""
    text = f"must be >= 0{' ' + unit if unit else ''}{f' ({zero})' if zero else ''}"
    return lambda value: None if _number(value) and math.isfinite(value) and value >= 0 else text


def open_interval(low: float, high: float) -> Check:
    return lambda value: None if _number(value) and low < value < high else f"must lie in ({low}, {high})"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def widths(value: Any) -> str | None:
    """Layer widths: positive whole numbers up to ``MAX_SIZE`` ('' or () is linear)."""
    if not isinstance(value, tuple) or not all(isinstance(w, int) and not isinstance(w, bool) for w in value):
        return "must be positive whole numbers"
    if any(w <= 0 for w in value):
        return "has a width <= 0; every layer needs at least one unit"
    if any(w > MAX_SIZE for w in value):
        return f"widths must be at most {MAX_SIZE}"
    return None


def parse_widths(text: str, flag: str = "--hidden", example: str | None = None) -> tuple[int, ...]:
    """A comma list of layer widths as typed on the command line (``400``, ``500,500``; empty is
    linear); ``example``: the advice for text that is not one (default: hidden widths')."""
    text = text.strip()
    if text in ("", "none", "linear"):
        return ()
    try:
        parsed = tuple(int(part) for part in text.split(","))
    except ValueError:
        example = example or f"{flag} 400 or {flag} 500,500 (or {flag} '' for a linear decoder)"
        raise UsageError(f"{flag} {text!r} is not a comma list of integers; write e.g. {example}") from None
    problem = widths(parsed)
    if problem:
        raise UsageError(f"{flag} {text!r} {problem}")
    return parsed
