"""An accepted range (``Bound``) and the checks that use it, for every config of the library.

A config checks its numeric settings in ``__post_init__`` with ``check_all`` over a table of
``{field: Bound}`` (the data stages' tables are in ``pipeline/checks.py``, the model side's in
``wdr/checks.py``), and the CLI builds its click type from the same ``Bound``, so both refuse the
same values with a message that names the option, the value and the accepted range:
``fetch config: size 5 (--size): use 8 to 4,096 px``. (This module imports nothing heavy, so the
CLI reads the ranges without loading the stages.)
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Union

from .errors import UserError

Number = Union[int, float]


def _number(v: Number) -> str:
    """``4,096``, ``1,000,000``, ``0.5``: whole numbers with thousands separators, never ``1e+06``."""
    return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"


@dataclass(frozen=True)
class Bound:
    """An accepted range ``lo .. hi`` of an int or float setting (``lo_open`` / ``hi_open``: that end
    itself excluded; ``optional``: ``None`` is accepted too, the setting's default)."""

    option: str                 # how the user spells it: "--size" (or a field name for library-only settings)
    lo: Number
    hi: Number
    integer: bool = True
    lo_open: bool = False
    unit: str = ""
    hi_open: bool = False
    optional: bool = False

    def text(self) -> str:
        """The accepted range in words: ``8 to 4,096 px``, ``more than 0 up to 3,600 s``,
        ``0 or more and less than 1``."""
        unit = f" {self.unit}" if self.unit else ""
        lo, hi = _number(self.lo), _number(self.hi)
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
        high = value >= self.hi if self.hi_open else value > self.hi
        if low or high:
            return f"use {self.text()}"
        return None

    def check(self, what: str, value, field: str = "") -> None:
        """``UserError('WHAT: FIELD VALUE (OPTION): use LO to HI')`` when ``value`` is out of range
        (the option is left out where it is the field's own name)."""
        problem = self.problem(value)
        if problem:
            name = field or self.option
            also = f" ({self.option})" if self.option != name else ""
            raise UserError(f"{what}: {name} {value!r}{also}: {problem}")


def check_all(what: str, obj, bounds: dict) -> None:
    """Check every ``{field: Bound}`` of a config object."""
    for name, bound in bounds.items():
        bound.check(what, getattr(obj, name), name)


def check_choice(what: str, option: str, value, choices) -> None:
    if value not in choices:
        raise UserError(f"{what}: {option} {value!r}: use one of {', '.join(map(str, choices))}")
