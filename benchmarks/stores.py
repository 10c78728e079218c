"""Stores written by the real stages from a generated data set, for the benchmarks and the tests
(``tests/helpers.py`` imports it from here; it is not part of the package).

``build_store`` takes the records of a drawn data set (``synth.make_dataset``),
writes its FGVC5 indexes with ``file://`` URLs to the drawn JPEG files, and runs
the real ``fetch`` in this process (``scheduler="inline"``: no cluster, no
server), then, if asked, the real ``features`` and label-statistics stages. What
it leaves is what ``wdr-pipe fetch`` writes: shards, row groups, commit markers,
index, label map and the stage's record all come from the stages themselves, so
a store built here can never drift from the real layout. ``generated_store``
draws the data set first. Both are idempotent: a second call reuses the drawn
files and every committed shard.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

from wdr_pipe.demo import synth
from wdr_pipe.pipeline.configs import FeatureConfig, FetchConfig, FetchOptions, StatsConfig
from wdr_pipe.pipeline.features import compute_features
from wdr_pipe.pipeline.fetch import fetch
from wdr_pipe.pipeline.stats import compute_stats


def build_store(root: Path, data_root: Path, records: Sequence[synth.Record], *, size: int = 96,
                resize_mode: str = "shorter", quality: int = 95, shard_size: int = 40, threads: int = 4,
                features: bool = True, hog_size: int = 64, stats: bool = True, stats_epochs: int = 200) -> Path:
    """Fetch ``records`` (drawn under ``data_root``) into the store at ``root``, inline.

    ``size``, ``resize_mode`` and ``quality`` are fetch's image settings (``FetchConfig``),
    ``shard_size`` and ``threads`` its options; the split names are the records' own
    (``test`` is unlabelled, as in FGVC5). ``features`` adds feature shards at ``hog_size``,
    ``stats`` label statistics (``stats_epochs`` epochs of the label-embedding fit).
    Raises ``RuntimeError`` if any image failed to fetch. Returns ``root``.
    """
    root, data_root = Path(root), Path(data_root).resolve()
    paths = synth.write_fgvc5_json(data_root, records, data_root.as_uri())
    result = fetch(root, [paths[s] for s in sorted(paths)],
                   FetchConfig(size=size, resize_mode=resize_mode, quality=quality),
                   FetchOptions(shard_size=shard_size, threads=threads),
                   label_map=data_root / "label_map.csv", scheduler="inline")
    if result.failed:
        raise RuntimeError(f"{root}: {result.failed} of {len(records)} generated images failed to fetch "
                           f"({result.line()})")
    if features:
        compute_features(root, cfg=FeatureConfig(hog_size=hog_size), scheduler="inline")
    if stats:
        compute_stats(root, cfg=StatsConfig(epochs=stats_epochs))
    return root


def generated_store(root: Path, data_root: Path, splits: Dict[str, int], *, seed: int = 0,
                    size_range: Tuple[int, int] = (600, 1000), draw_quality: int = 90, **fetch_and_stages) -> Path:
    """Draw ``splits[name]`` images per split under ``data_root`` (``synth.make_dataset``: both
    sides drawn in ``size_range`` px, JPEG ``draw_quality``) and ``build_store`` them into ``root``;
    ``fetch_and_stages`` are ``build_store``'s keywords (size, quality, shard_size, features, ...)."""
    records = synth.make_dataset(data_root, splits, seed=seed, size_range=size_range, quality=draw_quality)
    return build_store(root, data_root, records, **fetch_and_stages)
