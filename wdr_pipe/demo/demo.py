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

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..checks import Bound, bounds, check_settings, setting
from ..pipeline.configs import FetchConfig
from ..progress import Hook, log
from ..wdr.checks import IMAGE_SIZE
from ..workflow.schema import toml_value

# broken entries added to train.json: (fault kind served by serve.py, expected status)
FAULTS = [("404", "not_found"), ("truncated", "decode_error"), ("html", "not_image")]

# The ablation rows: (run name, the paper's row, train flags over COMMON; the flags name the single phase's
# shape, so each runs as the paper did, --recipe single).
ROWS = [
    ("deep_fixed", "Deep (fixed all)", {"deep": "fixed", "lr": 3e-3, "epochs_factor": 2}),
    ("deep_half", "Deep (fixed half)", {"deep": "half"}),
    ("deep_tune", "Deep (fine-tuned)", {"deep": "tune"}),
    ("wdr", "Deep + Wide + Recurrent", {"deep": "tune", "parts": "deep,wide,recurrent"}),
    ("wdr_weighted", "Deep + Wide + Recurrent, weighted", {"deep": "tune", "parts": "deep,wide,recurrent",
                                                           "weighting": "loss"}),
    # not a paper row: wdr-pipe's default recipe (the heads on the embeddings, then the fine-tune)
    ("wdr_lpft", "Deep + Wide + Recurrent, lp-ft", {"recipe": "lp-ft", "parts": "deep,wide,recurrent"}),
]
COMMON = {"backbone": "tf_efficientnet_lite0", "pretrained": True, "batch_size": 16, "lr": 1e-3,
          "thresholds": "tune"}
LOADER_WORKERS = 1  # each run's loader workers (the data stages' dask workers are the demo's --workers)
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


@dataclass(frozen=True)
class DemoSettings:
    """``wdr-pipe demo``: the generated data set's sizes and the runs' image size and length."""

    n_train: int = setting(480, bound=Bound("--train", COMMON["batch_size"], 1_000_000, unit="images"),
                           option="--train", help="Generated training images (at least one batch of the demo's runs).")
    n_validation: int = setting(120, bound=Bound("--validation", 4, 1_000_000, unit="images"),
                                option="--validation", help="Generated validation images.")
    n_test: int = setting(60, bound=Bound("--test", 1, 1_000_000, unit="images"), option="--test",
                          help="Generated test images.")
    size: int = setting(160, bound=Bound("--size", 32, bounds(FetchConfig)["size"].hi, unit="px"),
                        help="Stored image size (shorter side).")
    image_size: int = setting(128, bound=Bound("--image-size", 32, IMAGE_SIZE.hi, unit="px"),
                              help="Training image size.")
    epochs: int = setting(4, bound=Bound("--epochs", 1, 1000),
                          help="Epochs of each fine-tuned run (Deep fixed gets twice as many).")
    seed: int = 0  # of the drawn images

    def __post_init__(self):
        check_settings("demo", self)

    def splits(self) -> Dict[str, int]:
        return {"train": self.n_train, "validation": self.n_validation, "test": self.n_test}


@dataclass
class DemoResult:
    store: Path
    config: Path
    outcomes: List = field(default_factory=list)  # the run's workflow.Outcome of every step

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

    def lines(self) -> List[str]:
        """What ``wdr-pipe demo`` prints: the fetch by split, each step's line, the label statistics by
        split, the ablation table and where everything went."""
        results = {o.step.name: o.result for o in self.outcomes}
        lines = [f"fetch    {line}" for line in results["fetch"].summary]
        lines += [o.result.line() for o in self.outcomes]
        lines += [f"stats    {split}: {s['status']}" for split, s in results["stats"].splits.items()]
        lines += ["", "Validation micro-F1 (the WDR paper's table, on generated data):", "",
                  f"| {'model':<36} | {'F1 at 0.5':>9} | {'per-class thresholds':>20} |",
                  f"|{'-' * 38}|{'-' * 10}:|{'-' * 21}:|"]
        for row in self.table():
            tuned = "-" if row["f1_tuned"] is None else f"{row['f1_tuned']:.3f}"
            lines.append(f"| {row['row']:<36} | {row['f1_at_0.5']:>9.3f} | {tuned:>20} |")
        return lines + ["", f"report: {self.output_of('report')}", f"submission: {self.output_of('predict')}",
                        f"store: {self.store}; runs: {self.store.parent / 'runs'}; config: {self.config}",
                        f"search it by photo or by tags: wdr-pipe browse --store {self.store} "
                        f"--run {self.store.parent / 'runs' / 'wdr'}"]


def _fault_entries(base_url: str, sample_path: str) -> Dict[str, list]:
    """FGVC5 ``images`` and ``annotations`` entries whose URLs hit the server's fault paths."""
    images = [{"url": f"{base_url}/fault/{kind}/{sample_path}", "imageId": f"broken-{n}"}
              for n, (kind, _) in enumerate(FAULTS, start=1)]
    return {"images": images, "annotations": [{"labelId": ["1"], "imageId": e["imageId"]} for e in images]}


def _write_indexes(data: Path, records, base_url: str) -> Dict[str, Path]:
    from ..cache import write_json
    from . import synth

    paths = synth.write_fgvc5_json(data, records, base_url, extra={"train": _fault_entries(base_url, records[0].path)})
    write_json(data / "indexes.json", {k: str(v) for k, v in paths.items()})
    return paths


def demo_config(settings: DemoSettings = DemoSettings()) -> str:
    """The built-in ``run`` config (paths relative to the demo folder)."""
    runs = ""
    for name, row, flags in ROWS:
        flags = {**COMMON, "image_size": settings.image_size, "loader_workers": LOADER_WORKERS, **flags}
        flags["epochs"] = settings.epochs * flags.pop("epochs_factor", 1)
        runs += f"\n# {row}\n[train.{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in flags.items())
    return (f'# The demo: generated garment photos, the WDR paper\'s ablation with ImageNet transfer learning.\n'
            f'# Edit and run: wdr-pipe run demo.toml\nstore = "store"\nruns = "runs"\n\n'
            f'[fetch]\nindexes = ["data/train.json", "data/validation.json", "data/test.json"]\n'
            f'label_map = "data/label_map.csv"\nsize = {settings.size}\nshard_size = 100\n\n'
            f'[features]\n\n[stats]\n{runs}{TAIL}')


def run_demo(out, settings: DemoSettings = DemoSettings(), workers: Optional[int] = None,
             progress_for: Callable[[str], Hook] = lambda stage: None) -> DemoResult:
    """Run the pipeline end to end on generated data; ``workers``: the data stages' dask workers;
    ``progress_for(stage)`` gives each stage's hook."""
    from ..workflow import execute, load_config, make_plan, with_cluster
    from . import synth
    from .serve import ImageServer

    out = Path(out)
    data = out / "data"
    log.info("drawing %d garment photos under %s", sum(settings.splits().values()), data)
    records = synth.make_dataset(data, settings.splits(), seed=settings.seed, progress=progress_for("draw"))
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
        config.write_text(demo_config(settings), encoding="utf-8")
    with srv:
        if not written.exists():
            port_file.write_text(str(srv.port))
            _write_indexes(data, records, srv.base_url)
        cfg = load_config(config)
        if workers is not None:
            cfg = with_cluster(cfg, dataclasses.replace(cfg.cluster, workers=workers))
        outcomes = execute(make_plan(cfg), progress_for=progress_for)
    return DemoResult(cfg.store, config, outcomes)
