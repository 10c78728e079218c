"""The one-command demo: generated data -> loopback server -> ``wdr-pipe run`` on a built-in config.

``run_demo(out)`` draws a small FGVC5-style data set of garment photos under
``out/data``, writes ``train/validation/test.json`` once (with a few broken
URLs, so failure accounting shows), serves the folder on 127.0.0.1, writes the
built-in config to ``out/demo.toml`` and executes it: fetch, features, label
statistics, then the WDR paper's ablation with real ImageNet transfer learning
(``tf_efficientnet_lite0`` from its package). A second call reuses everything
already done: the indexes are not rewritten, so the store does not depend on
which loopback port is free. Edit ``out/demo.toml`` and run ``wdr-pipe run`` on it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..progress import Hook, log
from ..workflow import Outcome, execute, load_config, make_plan
from . import synth
from .serve import ImageServer

# broken entries added to train.json: (fault kind served by serve.py, expected status)
FAULTS = [("404", "not_found"), ("truncated", "decode_error"), ("html", "not_image")]

# The ablation rows: (run name, the paper's row, train flags over COMMON).
ROWS = [
    ("deep_fixed", "Deep (fixed all)", {"deep": "fixed", "lr": 3e-3, "epochs_factor": 2}),
    ("deep_half", "Deep (fixed half)", {"deep": "half"}),
    ("deep_tune", "Deep (fine-tuned)", {"deep": "tune"}),
    ("wdr", "Deep + Wide + Recurrent", {"deep": "tune", "parts": "deep,wide,recurrent"}),
    ("wdr_weighted", "Deep + Wide + Recurrent, weighted", {"deep": "tune", "parts": "deep,wide,recurrent",
                                                           "weighting": "loss"}),
]
COMMON = {"backbone": "tf_efficientnet_lite0", "pretrained": True, "batch_size": 16, "lr": 1e-3,
          "thresholds": "tune"}
# after the runs: the paper's ensemble row, evaluation of every run, the submission and the report
TAIL = """
# the paper's "Ensembled" row: the mean of the fine-tuned runs, thresholds tuned on the mean
[ensemble.ensemble]
runs = ["deep_tune", "wdr", "wdr_weighted"]
method = "mean"

[evaluate]
split = "validation"

[predict]
run = "ensemble"
split = "test"
out = "submission.csv"

[report]
run = "wdr"
"""


def _toml_value(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v) if isinstance(v, str) else repr(v)


@dataclass
class DemoResult:
    store: Path
    config: Path
    outcomes: List[Outcome] = field(default_factory=list)

    def output_of(self, step: str) -> Optional[str]:
        return next((o.result.output for o in self.outcomes if o.step.name == step), None)

    def table(self) -> List[Dict[str, object]]:
        """The ablation in the paper's form: one row per run, validation micro-F1 at 0.5 and tuned."""
        names = {**{name: row for name, row, _ in ROWS}, "ensemble": "Ensembled"}
        rows = []
        for o in self.outcomes:
            kind, _, name = o.step.name.partition(".")
            if kind in ("train", "ensemble"):
                d = o.result.details
                rows.append({"run": name, "row": names.get(name, name),
                             "f1_at_0.5": d.get("val_f1_at_0.5"), "f1_tuned": d.get("val_f1_tuned"),
                             "seconds": o.result.seconds})
        return rows


def _fault_entries(base_url: str, sample_path: str) -> Dict[str, list]:
    """FGVC5 ``images`` and ``annotations`` entries whose URLs hit the server's fault paths."""
    images = [{"url": f"{base_url}/fault/{kind}/{sample_path}", "imageId": f"broken-{n}"}
              for n, (kind, _) in enumerate(FAULTS, start=1)]
    return {"images": images, "annotations": [{"labelId": ["1"], "imageId": e["imageId"]} for e in images]}


def _write_indexes(data: Path, records, base_url: str) -> Dict[str, Path]:
    paths = synth.write_fgvc5_json(data, records, base_url, extra={"train": _fault_entries(base_url, records[0].path)})
    (data / "indexes.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}), encoding="utf-8")
    return paths


def demo_config(size: int = 160, image_size: int = 128, epochs: int = 4, loader_workers: int = 1) -> str:
    """The built-in ``run`` config (paths relative to the demo folder)."""
    runs = ""
    for name, row, flags in ROWS:
        flags = {**COMMON, "image_size": image_size, "loader_workers": loader_workers, **flags}
        flags["epochs"] = epochs * flags.pop("epochs_factor", 1)
        runs += f"\n# {row}\n[train.{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in flags.items())
    return (f'# The demo: generated garment photos, the WDR paper\'s ablation with ImageNet transfer learning.\n'
            f'# Edit and run: wdr-pipe run demo.toml\nstore = "store"\nruns = "runs"\n\n'
            f'[fetch]\nindexes = ["data/train.json", "data/validation.json", "data/test.json"]\n'
            f'label_map = "data/label_map.csv"\nsize = {size}\nshard_size = 100\n\n'
            f'[features]\n\n[stats]\n{runs}{TAIL}')


def run_demo(out, n_train: int = 480, n_validation: int = 120, n_test: int = 60, size: int = 160,
             image_size: int = 128, epochs: int = 4, seed: int = 0, workers: Optional[int] = None,
             progress_for: Callable[[str], Hook] = lambda stage: None) -> DemoResult:
    """Run the pipeline end to end on generated data; ``progress_for(stage)`` gives each stage's hook."""
    out = Path(out)
    data = out / "data"
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
    config = out / "demo.toml"
    if not config.exists():  # the user's edits are kept
        config.write_text(demo_config(size, image_size, epochs), encoding="utf-8")
    with srv:
        if not written.exists():
            port_file.write_text(str(srv.port))
            _write_indexes(data, records, srv.base_url)
        cfg = load_config(config)
        if workers is not None:
            cfg.workers = workers
        outcomes = execute(make_plan(cfg), progress_for=progress_for)
    return DemoResult(cfg.store, config, outcomes)
