"""The one-command demo: generated data -> loopback server -> fetch -> features -> stats.

``run_demo(out)`` draws a small FGVC5-style data set of garment photos under
``out/data``, serves it on 127.0.0.1, writes ``train/validation/test.json``
(with a few broken URLs, so failure accounting shows), and runs every stage
into the store ``out/store``. A second call reuses everything already done.
Later stages (train, evaluate) hang off the same store.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

from .pipeline import synth
from .pipeline.fetch import FetchConfig, FetchOptions, FetchSummary, fetch
from .pipeline.serve import ImageServer
from .progress import Hook, log

# broken entries appended to train.json: (fault kind served by serve.py, expected status)
FAULTS = [("404", "not_found"), ("truncated", "decode_error"), ("html", "not_image")]


@dataclass
class DemoResult:
    store: Path
    fetch: FetchSummary
    features: object = None
    stats: Dict[str, dict] = field(default_factory=dict)


def _add_faults(json_path: Path, srv: ImageServer, sample_path: str) -> None:
    import json

    doc = json.loads(json_path.read_text(encoding="utf-8"))
    for n, (kind, _) in enumerate(FAULTS, start=1):
        image_id = f"broken-{n}"
        doc["images"].append({"url": srv.fault_url(kind, sample_path), "imageId": image_id})
        doc["annotations"].append({"labelId": ["1"], "imageId": image_id})
    json_path.write_text(json.dumps(doc), encoding="utf-8")


def run_demo(out, n_train: int = 240, n_validation: int = 60, n_test: int = 60, size: int = 160, seed: int = 0,
             workers: Optional[int] = None, progress_for: Callable[[str], Hook] = lambda stage: None) -> DemoResult:
    """Run the pipeline end to end on generated data; ``progress_for(stage)`` gives each stage's hook."""
    from .pipeline.features import FeatureConfig, compute_features
    from .pipeline.stats import StatsConfig, compute_stats

    out = Path(out)
    data, store = out / "data", out / "store"
    log.info("drawing %d garment photos under %s", n_train + n_validation + n_test, data)
    records = synth.make_dataset(data, {"train": n_train, "validation": n_validation, "test": n_test}, seed=seed,
                                 progress=progress_for("draw"))
    port_file = data / "port.txt"  # the same port on a rerun keeps the indexes' URLs, so work is reused
    port = int(port_file.read_text()) if port_file.exists() else 0
    try:
        srv = ImageServer(data, port=port)
    except OSError:
        log.warning("port %d is taken; serving on a new port, so this rerun fetches into a new store", port)
        srv, store = ImageServer(data), out / "store-2"
    with srv:
        port_file.write_text(str(srv.port))
        paths = synth.write_fgvc5_json(data, records, srv.base_url)
        _add_faults(paths["train"], srv, records[0].path)
        fetched = fetch(store, [paths["train"], paths["validation"], paths["test"]], FetchConfig(size=size),
                        FetchOptions(shard_size=100), label_map=data / "label_map.csv", workers=workers,
                        progress=progress_for("fetch"))
    result = DemoResult(store, fetched)
    result.features = compute_features(store, cfg=FeatureConfig(), workers=workers, progress=progress_for("features"))
    result.stats = compute_stats(store, cfg=StatsConfig(), progress=progress_for("stats"))
    return result
