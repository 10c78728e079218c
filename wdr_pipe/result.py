"""The one result type every stage returns: :class:`StageResult`.

A stage (fetch, features, stats, train, embed, evaluate, ...) returns what it
did as counts by status, how many units it ran and reused, its time and where
its output went, and the lines a person reads (``summary``). The CLI prints
``result.lines()``, ``--json`` prints
``result.to_dict()``, and the store layer writes the same dict beside the
stage's output (``cache.write_result``), which is what ``run``, the demo and
the report read back with :meth:`StageResult.from_dict`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List


@dataclass
class StageResult:
    stage: str                                                # "fetch", "features", "stats", "train", ...
    key: str                                                  # the config key of the output
    output: str                                               # where the output went (a folder or file)
    seconds: float = 0.0
    ran: int = 0                                              # units (shards, splits, steps) computed by this run
    reused: int = 0                                           # units found done and left alone
    counts: Dict[str, int] = field(default_factory=dict)      # whole output, by status: ok, failed, ...
    splits: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # per split: counts and stage details
    details: Dict[str, Any] = field(default_factory=dict)     # stage-specific figures (metrics, sizes)
    summary: List[str] = field(default_factory=list)          # lines for a person, printed before ``line()``

    @property
    def ok(self) -> int:
        return int(self.counts.get("ok", 0))

    @property
    def failed(self) -> int:
        return int(self.counts.get("failed", 0))

    def line(self) -> str:
        """One line for a terminal: ``fetch 3f2a..: 96 ok, 3 failed; ran 2, reused 1 in 4.1 s -> PATH``."""
        counts = ", ".join(f"{v} {k}" for k, v in self.counts.items()) or "nothing"
        return (f"{self.stage} {self.key}: {counts}; ran {self.ran}, reused {self.reused} "
                f"in {self.seconds:.1f} s -> {self.output}")

    def lines(self) -> List[str]:
        """What the CLI prints: the stage's own summary lines, then ``line()``."""
        return [*self.summary, self.line()]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> "StageResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})
