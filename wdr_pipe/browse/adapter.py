"""The one module of ``browse`` that calls the model side (``wdr_pipe.wdr``): runs, scorers, the faiss
index, the embedder, Grad-CAM and URL reading. Everything else in ``browse`` works on what this returns
(numpy arrays, dicts, bytes), so a move of the model side's modules is fixed here alone.

``Model``: a run folder (training run or ensemble) loaded once: its label columns and tuned thresholds,
what a split's probabilities depend on (``source``), a split scored (or its stored probabilities read
back), a few new photos scored, and Grad-CAM of one image for one label. ``Embeddings``: an embedding
key of the store: which key a run's photo search uses (``pick_embeddings``), the exact ``wdr-pipe
embed`` command that makes a missing one, the cached faiss index per split and the vector of a photo.
Model calls run one at a time (a lock): the CPU is shared anyway, and the model is not re-entrant.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import shlex
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..cache import Store, read_json
from ..errors import UserError
from ..progress import Hook

log = logging.getLogger("wdr_pipe")

WideFn = Callable[[Store, str, List[bytes]], np.ndarray]  # (store, feature key, stored JPEGs) -> (N, D)
_HTTP = re.compile(r"^https?://", re.IGNORECASE)


MAX_UPLOAD = 20 * 2**20  # predict's MAX_BYTES (tests check they agree), said here so a start imports no torch


def max_upload_bytes() -> int:
    """The size cap of an uploaded or fetched photo: ``predict``'s (20 MB)."""
    return MAX_UPLOAD


def read_url(url: str, timeout: float = 15.0) -> bytes:
    """An http(s) URL's bytes with ``predict``'s timeout and size cap (never a file or another scheme)."""
    from ..wdr.score.predict import read_source

    if not _HTTP.match(url or ""):
        raise UserError(f"url {url!r}: only http:// and https:// URLs are fetched")
    return read_source(url, timeout=timeout, max_bytes=max_upload_bytes())


def read_predictions(path):
    """A predictions file (evaluate's format) back as ``(Scored, metadata)``: pyarrow alone, no torch."""
    from ..wdr.runs.evalfiles import read_predictions as _read

    return _read(path)


def open_run(path) -> Any:
    from ..wdr.runs.folder import open_run as _open

    return _open(path)


def fetch_spec(store: Store, run=None):
    """The fetch settings a new photo is resized with: the run's training split's in ``store``, else those
    of the store's first split with images, else fetch's defaults."""
    from ..wdr.score.checks import image_spec, split_spec

    if run is not None:
        return image_spec(run, store)[0]
    return split_spec(store, store.image_splits())[0]


def _backbone_run(run):
    """The training run whose backbone a run uses (an ensemble: its first member)."""
    if run.kind == "ensemble":
        return open_run(run.doc["members"][0]["path"])
    return run


# -- the run ----------------------------------------------------------------------------------------
def check_run(run, store: Store, splits: Sequence[str], checkpoint: Optional[str]) -> None:
    """Every check of a run against the store that needs no model: its checkpoint is there, the label
    space is the store's, a run with the wide part has its feature config in the store."""
    from ..wdr.score.checks import check_inputs

    if run.kind == "train":
        run.checkpoint(checkpoint or "best")
    for split in splits:
        check_inputs(run, store, split)


def describe_run(run, checkpoint: Optional[str], tta: Optional[str]) -> Dict[str, Any]:
    b = _backbone_run(run).doc.get("backbone", {})
    fixed = run.kind == "ensemble"
    return {"name": run.name, "kind": run.kind, "backbone": b.get("name"), "labels": int(len(run.label_ids)),
            "checkpoint": "members'" if fixed else checkpoint or "best", "tta": "members'" if fixed else tta or "none"}


def start_files(run, checkpoint: Optional[str]) -> List[Path]:
    """The run's files a start depends on: its config and thresholds, and the checkpoint(s) it loads."""
    files = [run.config, run.thresholds]
    if run.kind == "ensemble":
        files.append(run.stacker)
        for m in run.doc["members"]:
            member = open_run(m["path"])
            files += [member.config, member.checkpoint(m["checkpoint"])]
    else:
        files.append(run.checkpoint(checkpoint or "best"))
    return files


def feature_keys(run) -> List[str]:
    runs = [open_run(m["path"]) for m in run.doc["members"]] if run.kind == "ensemble" else [run]
    return sorted({r.feature_key for r in runs if r.feature_key})


class Model:
    """A run loaded for browsing (timm and the checkpoint: seconds): probabilities of splits and photos,
    Grad-CAM of one image."""

    def __init__(self, run, store: Store, checkpoint: Optional[str] = None, tta: Optional[str] = None,
                 device: str = "auto", batch_size: int = 64, workers: int = 2, wide_fn: Optional[WideFn] = None):
        from ..wdr.score.ensemble import scorer_for

        if wide_fn is None:  # the features stage's own code, with the store's feature config
            from ..wdr.data.wide import photo_wide as wide_fn
        self.run, self.store, self.wide_fn = run, store, wide_fn
        self.scorer = scorer_for(run, checkpoint, tta, device, batch_size, loader_workers=workers)
        self.label_ids = np.asarray(run.label_ids, dtype=np.int64)
        self.thresholds, self.threshold_source = run.read_thresholds()
        self.lock = threading.Lock()
        self._cam = self.scorer if run.kind == "train" else self.scorer.members[0]  # as evaluate's grid does

    @property
    def root(self) -> Path:
        return Path(self.run.root)

    def source(self, split: str) -> Dict[str, Any]:
        """What the probabilities of ``split`` depend on: weights digest, checkpoint, TTA, store fingerprint."""
        return self.scorer.source(self.store, split)

    def score_split(self, split: str, progress: Hook = None) -> Tuple[np.ndarray, np.ndarray]:
        """(image ids, (N, L) probabilities) of every loadable image of ``split`` (reusing evaluate's file)."""
        with self.lock:
            scored = self.scorer.score_split(self.store, split, labelled=False, progress=progress)
        return np.asarray(scored.ids, dtype=object), np.asarray(scored.probs, np.float32)

    def write_probs(self, path: Path, ids: np.ndarray, probs: np.ndarray, source: Dict[str, Any]) -> None:
        from ..wdr.runs.evalfiles import Scored, write_predictions

        write_predictions(path, Scored(ids, probs), self.label_ids, self.thresholds, source)

    def shares(self, embedding_key: str) -> bool:
        """Whether the run's Deep part is the backbone of ``embedding_key`` as is (a ``--deep fixed`` run trained
        from those embeddings, no TTA): then a photo's vector is its deep features, and the head alone scores it,
        as the stored images were scored."""
        return (self.run.kind == "train" and self.scorer.tta == "none"
                and self.run.doc.get("embedding_key") == embedding_key)

    def photo_probs(self, images: Sequence[np.ndarray], jpegs: Sequence[bytes],
                    vectors: Optional[np.ndarray] = None) -> np.ndarray:
        """(N, L) probabilities of decoded photos (``jpegs``: the same photos as stored JPEGs, for the wide part;
        ``vectors``: their embeddings, when the run ``shares`` their backbone: the head alone runs)."""
        wide = {k: self.wide_fn(self.store, k, list(jpegs)) for k in self.scorer.feature_keys()} or None
        with self.lock:
            if vectors is None:
                return self.scorer.score_images(list(images), wide)
            import torch

            w = None if wide is None else torch.from_numpy(np.asarray(wide[self.run.feature_key], np.float32))
            return self.scorer.head_probs(torch.from_numpy(np.asarray(vectors, np.float32)).to(self.scorer.device),
                                          None if w is None else w.to(self.scorer.device)).cpu().numpy()

    def grad_cam(self, image: np.ndarray, jpeg: bytes, label_id: int) -> Tuple[np.ndarray, np.ndarray]:
        """(the pixels the model saw (S, S, 3) uint8, the Grad-CAM map (S, S) in [0, 1]) of a stored image for
        one label id (the report's method and layer)."""
        import torch

        from ..wdr.data.transforms import EvalTransform
        from ..wdr.model.saliency import grad_cam, target_layer

        m = self._cam
        col = int(np.flatnonzero(m.label_ids == label_id)[0])
        dc = m.data_config
        seen = EvalTransform(dc.size, dc.crop_pct, dc.interpolation)(image)
        wide = None
        if m.feature_keys():
            wide = torch.from_numpy(np.asarray(self.wide_fn(self.store, m.feature_keys()[0], [jpeg]), np.float32))
            wide = wide.to(m.device)
        with self.lock:
            x = m.normalize(torch.from_numpy(np.array(seen)[None]).permute(0, 3, 1, 2).to(m.device))
            maps = grad_cam(m.model, x.contiguous(memory_format=torch.channels_last), wide, [[col]],
                            target_layer(m.model.backbone))
        return seen, maps[0, 0]


# -- embeddings and search ------------------------------------------------------------------------
def _embed_doc(store: Store, key: str) -> Dict[str, Any]:
    return read_json(store.embeddings.config_path(key), f"run 'wdr-pipe embed --store {store.root}' again")


def embed_command(store: Store, key_doc: Optional[Dict[str, Any]] = None, run=None, split: Optional[str] = None) -> str:
    """The exact ``wdr-pipe embed`` command that writes (or completes) an embedding key: from its own
    ``config.json`` when there is one, else with the run's own backbone (``--run``)."""
    q = shlex.quote
    parts = ["wdr-pipe", "embed", "--store", q(str(store.root))]
    if key_doc is None:
        parts += ["--run", q(str(_backbone_run(run).root))] if run is not None else ["--pretrained"]
    else:
        cfg, src = key_doc.get("config", {}), key_doc.get("source", {})
        if src.get("run"):
            parts += ["--run", q(str(src["run"]))]
        else:
            parts += ["--backbone", q(str(cfg.get("backbone")))]
            parts += ["--weights", q(str(src["weights"]))] if src.get("weights") else ["--pretrained"]
        parts += ["--image-size", str(cfg.get("size"))]
        if cfg.get("dtype", "float16") != "float16":
            parts += ["--dtype", str(cfg["dtype"])]
    if split:
        parts += ["--split", q(split)]
    return " ".join(parts)


def pick_embeddings(store: Store, run=None, key: Optional[str] = None) -> str:
    """The embedding key photo search uses: ``key`` when given; else, with a run, the key it trained from,
    then one made with its own checkpoint, then its backbone with the same weights, then its backbone;
    without a run, the store's only key. A ``UserError`` with the ``embed`` command when there is none."""
    keys = store.embeddings.keys()
    if key is not None:
        if key not in keys:
            raise UserError(f"--embeddings {key}: the store {store.root} has no such key (it has: "
                            f"{', '.join(keys) or 'none'}); pass one of those, or run "
                            f"'{embed_command(store, run=run)}' first")
        return key
    if run is None:
        if len(keys) == 1:
            return keys[0]
        if not keys:
            raise UserError(f"--store {store.root}: no embeddings to search by photo; run "
                            f"'{embed_command(store)}' first")
        raise UserError(f"--store {store.root}: several embedding keys ({', '.join(keys)}); pass one with --embeddings")
    brun = _backbone_run(run)
    backbone = brun.doc.get("backbone", {})
    docs = {k: _embed_doc(store, k) for k in keys}
    rules = [
        lambda k, d: k == brun.doc.get("embedding_key"),
        lambda k, d: str(d.get("source", {}).get("run") or "") == str(brun.root),
        lambda k, d: d.get("config", {}).get("backbone") == backbone.get("name")
        and d.get("config", {}).get("weights") == backbone.get("weights_digest"),
        lambda k, d: d.get("config", {}).get("backbone") == backbone.get("name"),
    ]
    for rule in rules:
        found = [k for k in keys if rule(k, docs[k])]
        if found:
            return found[0]
    raise UserError(f"--store {store.root}: no embeddings of the run's backbone {backbone.get('name')} (the store "
                    f"has: {', '.join(keys) or 'none'}); run '{embed_command(store, run=run)}' first, or pass "
                    "--embeddings KEY")


class Embeddings:
    """An embedding key of the store: its faiss index per split (``similar``'s cache) and a photo's vector."""

    def __init__(self, store: Store, key: str, device: str = "auto"):
        self.store, self.key, self.device = store, key, device
        self.doc = _embed_doc(store, key)
        self._embedder = None
        self.lock = threading.Lock()

    def describe(self) -> Dict[str, Any]:
        cfg = self.doc.get("config", {})
        return {"key": self.key, "backbone": cfg.get("backbone"), "size": cfg.get("size"),
                "dim": self.doc.get("dim"), "dtype": cfg.get("dtype")}

    def splits(self) -> Tuple[List[str], List[str]]:
        """(splits whose every image shard has a committed embedding shard of the key, the others)."""
        have, missing = [], []
        for split in self.store.image_splits():
            try:
                self.store.embeddings.shards(self.key, split)
                have.append(split)
            except UserError:
                missing.append(split)
        return have, missing

    def source_files(self) -> List[Path]:
        """The files the key's backbone weights come from (a run's checkpoint, a weights file) and its config."""
        src = self.doc.get("source", {})
        extra = [Path(str(src[k])) for k in ("checkpoint", "weights") if src.get(k)]
        return [self.store.embeddings.config_path(self.key), *extra]

    def command(self, split: Optional[str] = None) -> str:
        return embed_command(self.store, self.doc, split=split)

    def index(self, split: str):
        """The loaded faiss index of ``split`` (built once and kept in the store, then reused):
        ``(index, image ids, shard names, rows)``."""
        from ..wdr.embed.search import SearchIndex

        try:
            idx = SearchIndex(self.store, self.key, split)
        except PermissionError as e:
            raise UserError(f"{e.filename}: cannot write the search index (permission denied); run "
                            f"'wdr-pipe similar --store {self.store.root} --embeddings {self.key} --split {split} "
                            "ID' once as a user who can write the store") from None
        ids = idx.ids
        return (idx.index, np.asarray(ids.column("image_id").to_pylist(), dtype=object),
                np.asarray(ids.column("shard").to_pylist(), dtype=object), ids.column("row").to_numpy())

    def load(self) -> None:
        """The backbone of the key with its weights, checked to be the bytes the key names."""
        from ..wdr.dist import pick_device
        from ..wdr.embed.embedder import Embedder
        from ..wdr.embed.stage import EmbedConfig, load_backbone

        fields = {f.name for f in dataclasses.fields(EmbedConfig)}
        cfg = EmbedConfig(**{k: v for k, v in self.doc["config"].items() if k in fields})
        if cfg.key != self.key:
            raise UserError(f"{self.store.embeddings.config_path(self.key)}: its settings hash to {cfg.key}, not "
                            f"{self.key}; the file was edited: run '{self.command()}'")
        self._embedder = Embedder(load_backbone(cfg, self.doc.get("source", {})), cfg.data_config,
                                  pick_device(self.device), batch_size=8)

    def vectors(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float32 vectors of decoded photos, as the embed stage computes them."""
        if self._embedder is None:
            self.load()
        e = self._embedder
        with self.lock:
            return e.vectors(np.stack([e.transform(im) for im in images]))


def search_threads() -> int:
    """Give faiss half the cores (at least one) for the page's one-vector queries, and return how many.

    A flat search of one vector over 100,000 x 1,280 took 47 ms on one thread and 100-155 ms on two on
    the shared 2-core machine (OpenMP's second thread waits for a core that torch or another request
    holds); the other half of the cores is left to the model and to concurrent requests."""
    import os

    import faiss  # loaded already: the indexes are

    n = max(1, (os.cpu_count() or 2) // 2)
    faiss.omp_set_num_threads(n)
    return n


def normalise(x: np.ndarray) -> np.ndarray:
    from ..wdr.embed.search import normalise as _normalise

    return _normalise(x)


__all__ = ["Embeddings", "Model", "WideFn", "check_run", "describe_run", "embed_command", "feature_keys", "fetch_spec",
           "max_upload_bytes", "normalise", "open_run", "pick_embeddings", "read_predictions", "read_url", "search_threads", "start_files"]
