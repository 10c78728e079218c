"""The schema of a ``wdr-pipe run`` file: every table, every key and its type, and the check of a file.

It is generated, never listed by hand: the top level and the data tables from the settings
classes of the data commands (``runner.Cluster``, ``pipeline/settings.py``), the model tables
from the fields of the model side's configs (``TrainConfig``, ``EvalConfig``, ``EnsembleConfig``,
``PredictConfig``) less the ones ``run`` sets itself (store, run and out folders). A value is
checked against its field's type (a list stays a list: ``indexes = "x.json"`` is refused, never
read as six one-letter paths) and, for the data settings, against its range and choices; every
refusal is one line naming the file, the line, the key and the fix.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..checks import Setting, problem_of, settings
from ..errors import UserError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Key:
    """One key of a table: its type, whether it must be there, and what else it declares."""

    hint: Any
    required: bool = False
    setting: Optional[Setting] = None
    text_list: bool = False  # a list that may also be given as comma-separated text ("deep,wide")


@dataclass(frozen=True)
class Table:
    """``[NAME]``, or ``[NAME.RUN]`` tables when ``named``, and the keys each may hold."""

    name: str
    keys: Dict[str, Key]
    named: bool = False


@dataclass(frozen=True)
class Report:
    """``[report]``: the HTML report of one run of the file."""

    run: str
    split: Optional[str] = None  # default: the [evaluate] split


def _keys(cls, leave_out: Tuple[str, ...] = (), text_lists: Tuple[str, ...] = ()) -> Dict[str, Key]:
    """The keys of ``cls``'s fields: the settings' own where it declares them, else every field."""
    hints = typing.get_type_hints(cls)
    declared = settings(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in leave_out and (not declared or f.name in declared)]
    return {f.name: Key(hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                        declared.get(f.name, (None, None))[1], f.name in text_lists) for f in fields}


@functools.lru_cache(maxsize=None)
def tables() -> Dict[str, Table]:
    """Every table of a run file; ``""`` is the top level."""
    from ..pipeline.runner import Cluster
    from ..pipeline.settings import FeatureSettings, FetchSettings, StatsSettings
    from ..wdr.score.ensemble import EnsembleConfig
    from ..wdr.score.evaluate import EvalConfig
    from ..wdr.score.predict import PredictConfig
    from ..wdr.train.config import ALIASES, TrainConfig

    top = {"store": Key(str, required=True, setting=Setting(path="dir")), "runs": Key(str, setting=Setting(path="dir")),
           **_keys(Cluster)}
    named = {"train": _keys(TrainConfig, ("store", "out"), text_lists=("parts",)),
             "ensemble": _keys(EnsembleConfig, ("store", "out"))}
    named["train"].update({old: named["train"][new] for old, new in ALIASES.items()})  # earlier names still read
    single = {"fetch": _keys(FetchSettings), "features": _keys(FeatureSettings), "stats": _keys(StatsSettings),
              "evaluate": _keys(EvalConfig, ("store", "run")), "predict": _keys(PredictConfig, ("store",)),
              "report": _keys(Report)}
    out = {"": Table("", top)}
    out.update({name: Table(name, keys, named=True) for name, keys in named.items()})
    out.update({name: Table(name, keys) for name, keys in single.items()})
    return out


# -- types ----------------------------------------------------------------------------------
def _is_list(hint) -> bool:
    return typing.get_origin(hint) in (tuple, list)


def _choices(hint) -> Tuple[Any, ...]:
    """The plain types a value of ``hint`` may have (``Optional`` and ``Union`` opened)."""
    if typing.get_origin(hint) is typing.Union:
        return tuple(t for a in typing.get_args(hint) if a is not type(None) for t in _choices(a))
    return (hint,)


def _fits(value, hint) -> bool:
    if _is_list(hint):
        inner = (typing.get_args(hint) or (str,))[0]
        return isinstance(value, list) and all(_fits(v, inner) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    return True  # a type the file has no form for is left to the config's own check


def _kind(hint) -> str:
    return ("a list of texts" if _is_list(hint) else {str: "text", int: "an integer", float: "a number",
                                                       bool: "true or false"}.get(hint, "a value"))


def _example(key: str, hint, value) -> str:
    if _is_list(hint):
        items = value if isinstance(value, list) else [value] if isinstance(value, str) else ["a", "b"]
        return f"{key} = {json.dumps([str(v) for v in items])}"
    return f"{key} = " + {str: '"text"', int: "3", float: "0.5", bool: "true"}.get(hint, "...")


def toml_value(value) -> str:
    """``value`` as the file spells it (for messages)."""
    return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value, default=str)


def value_problem(key: str, spec: Key, value) -> Optional[str]:
    """Why ``value`` does not fit ``spec``: not its type (with the fix), or refused by its setting."""
    kinds = _choices(spec.hint)
    if spec.text_list and isinstance(value, str):
        return None
    if not any(_fits(value, k) for k in kinds):
        return (f"not {' or '.join(_kind(k) for k in kinds)}; write "
                f"{' or '.join(_example(key, k, value) for k in kinds)}")
    if spec.setting is not None and not _is_list(spec.hint):
        return problem_of(spec.setting, value)
    return None


# -- the check of a file ------------------------------------------------------------------------
def line_of(text: str, key: str, table: str = "") -> int:
    """The first line that sets ``key`` (after the table header ``[table]`` if given), 1-based; the
    table's header line when the key is not there; 0 when neither is."""
    start = 0
    if table:
        m = re.search(rf"^[ \t]*\[{re.escape(table)}\][ \t]*(#.*)?$", text, re.M)
        start = m.end() if m else 0
    m = re.search(rf"^[ \t]*{re.escape(key)}[ \t]*=", text[start:], re.M) if key else None
    if m:
        return text.count("\n", 0, start + m.start()) + 1
    m = re.search(rf"^[ \t]*\[{re.escape(table or key)}\]", text, re.M)
    return text.count("\n", 0, m.start()) + 1 if m else 0


def place(path: Path, text: str, table: str = "", key: str = "") -> str:
    """``FILE:LINE: [table]`` (the line of ``key`` when given): where a message points."""
    line = line_of(text, key, table)
    return f"{path}:{line}: [{table}]" if table else f"{path}:{line}:"


def check_table(path: Path, text: str, table: Table, where: str, doc: Dict[str, Any]) -> None:
    """Every key of ``doc`` (the table ``[where]``) known, of its type and accepted; the required ones there."""
    for key, value in doc.items():
        spec = table.keys.get(key)
        if spec is None:
            allowed = ", ".join(sorted(table.keys))
            label = f"[{where}] " if where else ""
            raise UserError(f"{path}:{line_of(text, key, where)}: unknown key {label}{key!r}; use one of: {allowed}")
        if isinstance(value, dict):
            raise UserError(f"{place(path, text, where, key)} {key}: a table here; give {key} a value "
                            f"(or fix the table name)")
        problem = value_problem(key, spec, value)
        if problem:
            raise UserError(f"{place(path, text, where, key)} {key} = {toml_value(value)}: {problem}")
    for key, spec in table.keys.items():
        if spec.required and key not in doc:
            if not where:
                raise UserError(f"{path}: no 'store = \"FOLDER\"' line; say where the store is (or goes)")
            raise UserError(f"{place(path, text, where)} needs {_example(key, _choices(spec.hint)[0], None)}")


def check_file(path: Path, text: str, doc: Dict[str, Any]) -> None:
    """The whole file against ``tables()``: before anything is planned, let alone run."""
    schema = tables()
    top = schema[""]
    allowed = set(top.keys) | set(schema) - {""}
    for key in doc:
        if key not in allowed:
            raise UserError(f"{path}:{line_of(text, key)}: unknown key {key!r}; use one of: {', '.join(sorted(allowed))}")
    check_table(path, text, top, "", {k: v for k, v in doc.items() if k in top.keys})
    for name, table in schema.items():
        if not name or name not in doc:
            continue
        value = doc[name]
        if not isinstance(value, dict) or (table.named and any(not isinstance(v, dict) for v in value.values())):
            form = f"tables [{name}.NAME]" if table.named else f"a table [{name}]"
            raise UserError(f"{path}:{line_of(text, name)}: {name} must be {form}")
        for run, flags in (value.items() if table.named else [("", value)]):
            if table.named and not RUN_NAME.match(run):
                raise UserError(f"{path}:{line_of(text, '', f'{name}.{run}')}: [{name}.{run}]: a name is letters, "
                                "digits, '_', '.' or '-'")
            check_table(path, text, table, f"{name}.{run}" if table.named else name, flags)


__all__ = ["Key", "RUN_NAME", "Report", "Table", "check_file", "check_table", "line_of", "place", "tables",
           "toml_value", "value_problem"]
