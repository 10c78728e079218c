"""Click parameters generated from a settings dataclass: each field with a ``checks.Setting`` is one
option (or argument), its default, range, choices and help taken from the field, as sqlite-utils
shares its option decorators. ``@options(FetchSettings)`` declares every setting of ``fetch``;
``from_options(FetchSettings, given)`` makes the settings back from what click parsed.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Dict, Tuple

import click

from ..checks import Setting, option_name, settings
from .common import bounded, not_empty


def _shape(hint) -> Tuple[Any, bool]:
    """``(base type, several values)`` of a field's type: ``Optional[int]`` -> ``(int, False)``,
    ``Tuple[str, ...]`` -> ``(str, True)``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return (args[0] if args else str), True
    if origin is typing.Union and len(args) == 1:
        return _shape(args[0])
    return hint, False


def _type(s: Setting, base) -> Any:
    if s.bound is not None:
        return bounded(s.bound)
    if s.choices is not None:
        return click.Choice([str(c) for c in s.choices])
    if s.path:
        return click.Path(exists=s.exists, file_okay=s.path != "dir", dir_okay=s.path != "file")
    return base if base in (int, float) else str


def _checked(check: Callable[[Any], Any]):
    """A click callback that refuses what the setting's own ``check`` refuses, as click refuses a range."""
    def callback(ctx, param, value):
        problem = check(value)
        if problem:
            raise click.BadParameter(f"{value!r}: {problem}.", ctx, param)
        return value

    return callback


def parameter(name: str, f: dataclasses.Field, s: Setting, hint) -> Callable:
    """The click decorator of one setting."""
    base, many = _shape(hint)
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    if s.argument:
        return click.argument(name, nargs=-1 if many else 1, required=required, type=_type(s, base))
    kw: Dict[str, Any] = {"help": s.help}
    if base is bool:
        return click.option(option_name(name, s), name, is_flag=True, **kw)
    kw["type"] = _type(s, base)
    if many:
        kw["multiple"] = True
    else:
        kw.update(default=None if required else f.default, required=required, show_default=f.default is not None)
    if s.metavar:
        kw["metavar"] = s.metavar
    if s.check is not None:
        kw["callback"] = _checked(s.check)
    elif s.path:
        kw["callback"] = not_empty
    return click.option(option_name(name, s), name, **kw)


def options(cls, only: Tuple[str, ...] = ()) -> Callable:
    """A decorator that adds the click parameter of every setting of ``cls`` (or of the ``only`` ones),
    in field order."""
    hints = typing.get_type_hints(cls)
    found = settings(cls)
    made = [parameter(name, f, s, hints[name]) for name, (f, s) in found.items() if not only or name in only]

    def decorate(fn):
        for p in reversed(made):
            fn = p(fn)
        return fn

    return decorate


def from_options(cls, given: Dict[str, Any]):
    """``cls`` made from the values click parsed (the keys of ``given`` that are settings of ``cls``)."""
    return cls(**{name: given[name] for name in settings(cls) if name in given})


__all__ = ["from_options", "options", "parameter"]
