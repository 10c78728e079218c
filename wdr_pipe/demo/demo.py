"""The one-command demo: generated data -> loopback server -> fetch -> features -> stats.

``run_demo(out)`` draws a small FGVC5-style data set of garment photos under
``out/data``, writes ``train/validation/test.json`` once (with a few broken
URLs, so failure accounting shows), serves the folder on 127.0.0.1 and runs
every stage into the store ``out/store``. A second call reuses everything
already done: the indexes are not rewritten, so the store does not depend on
which loopback port is free.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..pipeline.features import FeatureConfig, compute_features
from ..pipeline.fetch import FetchConfig, FetchOptions, fetch
from ..pipeline.label_stats import StatsConfig, compute_stats
from ..progress import Hook, log
from ..result import StageResult
from . import synth
from .serve import ImageServer

# broken entries added to train.json: (fault kind served by serve.py, expected status)
FAULTS = [("404", "not_found"), ("truncated", "decode_error"), ("html", "not_image")]


@dataclass
class DemoResult:
    store: Path
    stages: List[StageResult] = field(default_factory=list)


def _fault_entries(base_url: str, sample_path: str) -> Dict[str, list]:
    """FGVC5 ``images`` and ``annotations`` entries whose URLs hit the server's fault paths."""
    images = [{"url": f"{base_url}/fault/{kind}/{sample_path}", "imageId": f"broken-{n}"}
              for n, (kind, _) in enumerate(FAULTS, start=1)]
    return {"images": images, "annotations": [{"labelId": ["1"], "imageId": e["imageId"]} for e in images]}


def _write_indexes(data: Path, records, base_url: str) -> Dict[str, Path]:
    paths = synth.write_fgvc5_json(data, records, base_url, extra={"train": _fault_entries(base_url, records[0].path)})
    (data / "indexes.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}), encoding="utf-8")
    return paths


def run_demo(out, n_train: int = 240, n_validation: int = 60, n_test: int = 60, size: int = 160, seed: int = 0,
             workers: Optional[int] = None, progress_for: Callable[[str], Hook] = lambda stage: None) -> DemoResult:
    """Run the pipeline end to end on generated data; ``progress_for(stage)`` gives each stage's hook."""
    out = Path(out)
    data, store = out / "data", out / "store"
    log.info("drawing %d garment photos under %s", n_train + n_validation + n_test, data)
    records = synth.make_dataset(data, {"train": n_train, "validation": n_validation, "test": n_test}, seed=seed,
                                 progress=progress_for("draw"))
    port_file, written = data / "port.txt", data / "indexes.json"
    port = int(port_file.read_text()) if port_file.exists() and written.exists() else 0
    try:
        srv = ImageServer(data, port=port)
    except OSError:
        log.warning("port %d is taken; serving on another port (finished shards need no server; a shard that "
                    "still needs one records its rows as failed: rerun with the port free to fetch them)", port)
        srv = ImageServer(data)
    result = DemoResult(store)
    with srv:
        if written.exists():
            paths = {k: Path(v) for k, v in json.loads(written.read_text(encoding="utf-8")).items()}
        else:
            port_file.write_text(str(srv.port))
            paths = _write_indexes(data, records, srv.base_url)
        result.stages.append(fetch(store, [paths["train"], paths["validation"], paths["test"]], FetchConfig(size=size),
                                   FetchOptions(shard_size=100), label_map=data / "label_map.csv", workers=workers,
                                   progress=progress_for("fetch")))
    result.stages.append(compute_features(store, cfg=FeatureConfig(), workers=workers, progress=progress_for("features")))
    result.stages.append(compute_stats(store, cfg=StatsConfig(), progress=progress_for("stats")))
    return result
