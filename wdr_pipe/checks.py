"""A setting, said once: its accepted range (``Bound``) or choices, its help line, and the checks.

A config declares each setting as a dataclass field whose metadata is a ``Setting``
(``setting(default, bound=..., choices=...)``) and checks itself in ``__post_init__`` with
``check_settings``; a command's settings class takes fields from the configs with ``from_config``
(the default, range and choices come along, the help line is added) and builds the configs back
with ``build``. The CLI's options (``cli/options.py``) and the ``run`` file's keys
(``workflow/schema.py``) are generated from those fields, so all of them refuse the same values
with a message that names the option, the value and the range:
``fetch config: size 5 (--size): use 8 to 4,096 px``. A refusal is a ``BadSetting``.
(This module imports nothing heavy, so the CLI reads the settings without loading the stages.)
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

from .errors import BadSetting

Number = Union[int, float]
SETTING = "wdr_pipe.setting"  # the metadata key of a field's ``Setting``


def _number(v: Number) -> str:
    """``4,096``, ``1,000,000``, ``0.5``: whole numbers with thousands separators, never ``1e+06``."""
    return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"


@dataclass(frozen=True)
class Bound:
    """An accepted range ``lo .. hi`` of an int or float setting (``hi=None``: no upper end;
    ``lo_open`` / ``hi_open``: that end itself excluded; ``optional``: ``None`` is accepted too,
    the setting's default)."""

    option: str                 # how the user spells it: "--size" (or a field name for library-only settings)
    lo: Number
    hi: Optional[Number]
    integer: bool = True
    lo_open: bool = False
    unit: str = ""
    hi_open: bool = False
    optional: bool = False

    def text(self) -> str:
        """The accepted range in words: ``8 to 4,096 px``, ``more than 0 up to 3,600 s``,
        ``0 or more and less than 1``, ``1 or more``."""
        unit = f" {self.unit}" if self.unit else ""
        lo = _number(self.lo)
        if self.hi is None:
            return f"{'more than ' + lo if self.lo_open else lo + ' or more'}{unit}"
        hi = _number(self.hi)
        if self.hi_open:
            return f"{'more than ' + lo if self.lo_open else lo + ' or more'} and less than {hi}{unit}"
        if self.lo_open:
            return f"more than {lo} up to {hi}{unit}"
        return f"{lo} to {hi}{unit}"

    def problem(self, value) -> Optional[str]:
        """Why ``value`` is refused, or ``None``."""
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.integer else numbers.Real):
            return f"not {'an integer' if self.integer else 'a number'}; use {self.text()}"
        if not math.isfinite(value):
            return f"use a finite number, {self.text()}"
        low = value <= self.lo if self.lo_open else value < self.lo
        high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if low or high:
            return f"use {self.text()}"
        return None

    def check(self, what: str, value, field: str = "") -> None:
        """``BadSetting('WHAT: FIELD VALUE (OPTION): use LO to HI')`` when ``value`` is out of range
        (the option is left out where it is the field's own name)."""
        problem = self.problem(value)
        if problem:
            name = field or self.option
            also = f" ({self.option})" if self.option != name else ""
            raise BadSetting(f"{what}: {name} {value!r}{also}: {problem}", field or self.option)


def check_all(what: str, obj, bounds: dict) -> None:
    """Check every ``{field: Bound}`` of a config object."""
    for name, bound in bounds.items():
        bound.check(what, getattr(obj, name), name)


def check_choice(what: str, option: str, value, choices, field: str = "") -> None:
    if value not in choices:
        raise BadSetting(f"{what}: {option} {value!r}: use one of {', '.join(map(str, choices))}", field or option)


# -- settings as dataclass fields ------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """What a field declares beside its default. ``bound`` / ``choices`` / ``check`` (value -> the
    problem in words, or ``None``) say what it accepts; the rest says how a command takes it:
    ``help``, ``option`` (its spelling when not ``--FIELD``), ``metavar``, ``argument`` (a
    positional argument), ``path`` ("file", "dir" or "any": a path, relative to a run file's
    folder; ``exists``: it must exist), ``invert`` (a flag that sets the config field to its
    opposite) and ``source`` (the config class and fields it is copied from)."""

    help: str = ""
    bound: Optional[Bound] = None
    choices: Optional[Tuple[Any, ...]] = None
    check: Optional[Callable[[Any], Optional[str]]] = None
    option: str = ""
    metavar: str = ""
    argument: bool = False
    path: str = ""
    exists: bool = False
    invert: bool = False
    source: Optional[Tuple[type, Tuple[str, ...]]] = None


def setting(default: Any = dataclasses.MISSING, **declared) -> Any:
    """A dataclass field with a ``Setting`` (``declared``: its fields) as its metadata."""
    return dataclasses.field(default=default, metadata={SETTING: Setting(**declared)})


def setting_of(f: dataclasses.Field) -> Optional[Setting]:
    return f.metadata.get(SETTING)


def settings(cls) -> Dict[str, Tuple[dataclasses.Field, Setting]]:
    """``{name: (field, Setting)}`` of every field of ``cls`` that declares one, in order."""
    return {f.name: (f, s) for f in dataclasses.fields(cls) if (s := setting_of(f)) is not None}


def bounds(cls) -> Dict[str, Bound]:
    """``{field: Bound}`` of a config or settings class."""
    return {name: s.bound for name, (_, s) in settings(cls).items() if s.bound is not None}


def default_of(cls, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls`` (where a default is said)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def problem_of(s: Setting, value) -> Optional[str]:
    """Why ``value`` is refused by the range, choices or check of ``s``; ``None`` when it is fine."""
    if s.bound is not None and (problem := s.bound.problem(value)):
        return problem
    if s.choices is not None and value not in s.choices:
        return f"use one of {', '.join(map(str, s.choices))}"
    return s.check(value) if s.check is not None else None


def option_name(name: str, s: Optional[Setting] = None) -> str:
    """How the command line spells field ``name``: ``--resize-mode`` (or the setting's ``option``)."""
    return (s.option if s is not None and s.option else "") or "--" + name.replace("_", "-")


def check_settings(what: str, obj) -> None:
    """Check every field of ``obj`` that declares a range, choices or a check; the first refusal
    is a ``BadSetting`` naming the field, the value, its option and what it accepts."""
    for name, (_, s) in settings(type(obj)).items():
        value = getattr(obj, name)
        if s.bound is not None:
            s.bound.check(what, value, name)
        if s.choices is not None:
            check_choice(what, option_name(name, s), value, s.choices, name)
        if s.check is not None and (problem := s.check(value)):
            raise BadSetting(f"{what}: {option_name(name, s)} {value!r}: {problem}", name)


def from_config(config: type, *names: str, **declared) -> Any:
    """A field of a command's settings copied from ``config``'s field ``names[0]``: its default
    (negated with ``invert=True``), range and choices; ``declared`` adds the help and the rest. Every
    field in ``names`` is set from it when ``build`` makes the config."""
    f = {f.name: f for f in dataclasses.fields(config)}[names[0]]
    s = setting_of(f) or Setting()
    default = default_of(config, names[0])
    if declared.get("invert"):
        default = not default
    declared = {"bound": s.bound, "choices": s.choices, "check": s.check, **declared, "source": (config, names)}
    return setting(default, **declared)


def build(config: type, obj, **more):
    """``config`` made from the fields of ``obj`` copied from it (``from_config``) and ``more``."""
    kwargs = dict(more)
    for name, (_, s) in settings(type(obj)).items():
        if s.source is not None and s.source[0] is config:
            value = getattr(obj, name)
            for target in s.source[1]:
                kwargs[target] = (not value) if s.invert else value
    return config(**kwargs)
