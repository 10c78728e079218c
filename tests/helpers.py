"""What many test modules share and is not a fixture (the fixtures are in ``conftest.py``).

- ``subprocess_env``: the environment of a subprocess that must import this checkout's ``wdr_pipe``.
- Stores written by the real stages: ``build_store`` (``benchmarks/stores.py``: fetch over ``file://``
  URLs, inline, then features and label statistics), ``drawn_store`` (a data set drawn for one module,
  then ``build_store``), ``csv_store`` (records fetched from an index CSV, with labels the test
  chooses and no label map).
- Damage a store as a bad disk or a failed fetch would: ``break_image``, ``add_failures``.
- The command line in this process: ``cli_run``, ``error_line``.
- ``HOSTILE_LABELS`` and ``HOSTILE_IDS``: the names in ``conftest.shared``'s store.

Test modules import it by name (``from helpers import ...``): tests/conftest.py lies in no package,
so pytest puts tests/ on ``sys.path`` before it imports it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

import wdr_pipe
from wdr_pipe.demo import synth
from wdr_pipe.pipeline.configs import FeatureConfig

REPO = Path(__file__).resolve().parents[1]  # this checkout: docs/, benchmarks/
PACKAGE_PARENT = Path(wdr_pipe.__file__).resolve().parents[1]  # the folder of the wdr_pipe imported here

sys.path.insert(0, str(REPO / "benchmarks"))  # stores.py: stores from the real stages


def subprocess_env(**extra: str) -> Dict[str, str]:
    """This process's environment with the imported ``wdr_pipe`` first on ``PYTHONPATH`` (a subprocess
    imports this checkout's package, whatever is installed), plus ``extra`` variables."""
    return {**os.environ, "PYTHONPATH": str(PACKAGE_PARENT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


# -- stores -------------------------------------------------------------------------------------------------

def build_store(root: Path, data_root: Path, records, *, size: int = 96, shard_size: int = 40,
                features: bool = True, stats: bool = True) -> Path:
    """A store written by the real stages (inline, no cluster): fetch over ``file://``
    URLs, then features and label statistics (``benchmarks/stores.py``)."""
    from stores import build_store as build

    return build(root, data_root, records, size=size, shard_size=shard_size, features=features, stats=stats)


def drawn_store(root: Path, splits: Dict[str, int], *, seed: int, size_range: Tuple[int, int],
                **build) -> Tuple[Path, list]:
    """(store, records): ``splits[name]`` images drawn under ``root/data`` (one process), then
    ``build_store`` into ``root/store`` with ``build``'s keywords (size, shard_size, features, stats)."""
    records = synth.make_dataset(root / "data", splits, seed=seed, size_range=size_range, processes=1)
    return build_store(root / "store", root / "data", records, **build), records


def csv_index(path: Path, data_root: Path, records, labels: Optional[Sequence[Sequence[int]]] = None,
              urls: Optional[Dict[str, str]] = None) -> Path:
    """An index CSV (``image_id,url,labels``) of ``records``: the ``file://`` URL of each drawn image
    (or ``urls[image_id]``) and its labels (or ``labels[i]`` for the i-th record). Returns ``path``."""
    labels = [r.labels for r in records] if labels is None else labels
    urls = urls or {}
    path.write_text("image_id,url,labels\n" + "".join(
        f"{r.image_id},{urls.get(r.image_id, (data_root / r.path).as_uri())},{' '.join(map(str, lab))}\n"
        for r, lab in zip(records, labels)))
    return path


def csv_store(root: Path, data_root: Path, records, labels: Optional[Sequence[Sequence[int]]] = None, *,
              size: int, shard_size: int, name: str = "store") -> Tuple[Path, Path]:
    """(store, index): ``csv_index(root/train.csv, ...)`` fetched into ``root/name`` by the real fetch,
    inline, without a label map (the label space is the labels' own)."""
    from wdr_pipe.pipeline.fetch import FetchConfig, FetchOptions, fetch

    index = csv_index(root / "train.csv", data_root, records, labels)
    fetch(root / name, [index], FetchConfig(size=size), FetchOptions(shard_size=shard_size, threads=2),
          scheduler="inline")
    return root / name, index


BROKEN = "3"  # the image break_image damages unless told another
# the features of tests/cache/conftest.py's feature_store: hog 36, colour histogram 8
SMALL_FEATURES = FeatureConfig(hog_size=16, bins=2)


def break_image(root: Path, image_id: str = BROKEN, splits: Optional[Sequence[str]] = None) -> None:
    """Damage one image's stored JPEG bytes in the image shards of ``splits`` (default: every split),
    as a bad disk would (the fetch stores only what decodes); the shards stay committed."""
    from wdr_pipe.cache import Store
    from wdr_pipe.cache.atomic import write_parquet_atomic

    store = Store(root)
    for split in store.splits() if splits is None else splits:
        for shard in store.image_shards(split):
            t = pq.read_table(shard)
            ids = t.column("image_id").to_pylist()
            if image_id in ids:
                jpeg = t.column("jpeg").to_pylist()
                jpeg[ids.index(image_id)] = b"not a jpeg at all"
                col = t.schema.get_field_index("jpeg")
                write_parquet_atomic(t.set_column(col, t.schema.field(col), pa.array(jpeg, pa.binary())), shard)


def add_failures(root: Path) -> None:
    """A failures file beside the first train shard: two ``http_404`` rows and one ``timeout``."""
    from wdr_pipe.cache import Store, failures_path
    from wdr_pipe.cache.atomic import write_parquet_atomic
    from wdr_pipe.cache.schema import FAILURES

    shard = Store(root).image_shards("train")[0]
    t = pa.table({"image_id": ["900", "901", "902"], "url": ["http://x/900", "http://x/901", None],
                  "status": ["http_404", "timeout", "http_404"], "error": ["404", "read timeout", None]},
                 schema=FAILURES)
    write_parquet_atomic(t, failures_path(shard))


# -- the command line ---------------------------------------------------------------------------------------

def cli_run(*args):
    """The real ``wdr-pipe`` command line, in this process."""
    from click.testing import CliRunner

    from wdr_pipe.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(res) -> str:
    """A command's refusal: exit 1, one ``Error:`` line, the last one (log lines may come before), no traceback."""
    lines = res.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert res.exit_code == 1 and errors == lines[-1:] and "Traceback" not in res.output, res.output
    return errors[0]


# -- a run folder and a store as a colleague might share them (conftest.shared, test_hostile.py,
# test_outputs.py): label names and image ids that are legal in a label map and an index, and that a careless
# tool would run as mathtext, HTML, a spreadsheet formula or a path
HOSTILE_LABELS = {1: "$\\frac{$", 2: "=cmd|' /C calc'!A0", 3: "<script>alert(1)</script>", 4: "+SUM(1)",
                  5: "-2+3", 6: "@attack", 7: 'a,b "quoted"', 8: "- dash"}
HOSTILE_IDS = ['=HYPERLINK("http://x.example","y")', "a,b", 'quo"te', "line\nbreak", "../../../escape", "-5",
               "@sum"]
