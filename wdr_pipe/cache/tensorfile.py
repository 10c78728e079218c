"""One file format for a tree of tensors and plain values: safetensors, never pickle.

A checkpoint is a plain dict (weights, optimizer and schedule state, random
generator states, the loader's position, counters, settings). ``write_tree``
stores it as ONE safetensors file: every tensor (and numpy array) is a named
entry, everything else (numbers, text, lists, tuples, dicts with any plain
keys) is JSON in the file's metadata, with a marker where each tensor goes.
``read_tree`` rebuilds the same dict. Reading parses a JSON header and raw
tensor bytes only: a crafted file can be refused, never run code (no pickle,
no ``torch.load``).

Tensor entries are named by their place in the tree (``model/backbone.conv.weight``,
``optimizer/state/3/exp_avg``), so ``safetensors`` tools show what a file holds.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Tuple

from ..errors import UserError

FORMAT = "wdr-pipe tree"
VERSION = 1
_MAGIC_PICKLE_ZIP = b"PK\x03\x04"       # torch.save's zip container
_MAGIC_PICKLE = b"\x80"                 # a bare pickle stream (protocol 2+)


class OldFormat(UserError):
    """The file is a pickle (torch.save) from an older wdr-pipe: it is never loaded."""


def pack(tree: Any) -> Tuple[Dict[str, "torch.Tensor"], Any]:
    """``tree`` -> (named tensors, a JSON-ready skeleton that refers to them)."""
    import numpy as np
    import torch

    tensors: Dict[str, torch.Tensor] = {}

    def name_for(path: str) -> str:
        name = path or "_"
        while name in tensors:
            name += "'"
        return name

    def walk(v: Any, path: str) -> Any:
        if isinstance(v, torch.Tensor):
            name = name_for(path)
            tensors[name] = v.detach().to("cpu").contiguous().clone()
            return {"__tensor__": name}
        if isinstance(v, np.ndarray):
            if v.dtype == object:
                raise TypeError(f"{path}: an object array cannot be stored")
            name = name_for(path)
            raw = np.ascontiguousarray(v)
            tensors[name] = torch.from_numpy(raw.view(np.uint8).reshape(-1).copy())
            return {"__ndarray__": name, "dtype": raw.dtype.str, "shape": list(raw.shape)}
        if isinstance(v, np.generic):
            return walk(v.item(), path)
        if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {"__float__": repr(v)}
        if isinstance(v, torch.Size):
            return {"__tuple__": [int(x) for x in v]}
        if isinstance(v, tuple):
            return {"__tuple__": [walk(x, f"{path}/{i}") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [walk(x, f"{path}/{i}") for i, x in enumerate(v)]
        if isinstance(v, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in v):
                return {k: walk(x, f"{path}/{k}" if path else k) for k, x in v.items()}
            items = []
            for k, x in v.items():
                if not isinstance(k, (str, int, float, bool)) and k is not None:
                    raise TypeError(f"{path}: a dict key of type {type(k).__name__} cannot be stored")
                items.append([k, walk(x, f"{path}/{k}")])
            return {"__dict__": items}
        raise TypeError(f"{path or 'the tree'}: a {type(v).__name__} cannot be stored (tensors, arrays, "
                        "numbers, text, lists, tuples and dicts only)")

    return tensors, walk(tree, "")


def unpack(tensors: Dict[str, "torch.Tensor"], skeleton: Any) -> Any:
    """The inverse of ``pack``."""
    import numpy as np

    def walk(v: Any) -> Any:
        if isinstance(v, list):
            return [walk(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "__tensor__" in v:
            return tensors[v["__tensor__"]]
        if "__ndarray__" in v:
            raw = tensors[v["__ndarray__"]].numpy().tobytes()
            return np.frombuffer(raw, dtype=np.dtype(v["dtype"])).reshape(v["shape"]).copy()
        if "__float__" in v:
            return float(v["__float__"])
        if "__tuple__" in v:
            return tuple(walk(x) for x in v["__tuple__"])
        if "__dict__" in v:
            return {k: walk(x) for k, x in v["__dict__"]}
        return {k: walk(x) for k, x in v.items()}

    return walk(skeleton)


def tree_bytes(tree: Any, kind: str) -> bytes:
    """``tree`` as the bytes of one safetensors file whose metadata names ``kind``."""
    from safetensors.torch import save

    tensors, skeleton = pack(tree)
    meta = {"format": FORMAT, "version": str(VERSION), "kind": kind,
            "tree": json.dumps(skeleton, separators=(",", ":"), allow_nan=False)}
    return save(tensors, metadata=meta)


def write_tree(path, tree: Any, kind: str) -> None:
    """``tree`` written to ``path`` atomically (temp file, fsync, rename); a full disk is a ``UserError``."""
    from .atomic import write_bytes_atomic

    write_bytes_atomic(Path(path), tree_bytes(tree, kind))


def is_pickle(path) -> bool:
    """True for a file that starts like ``torch.save`` output or a pickle stream (never opened as one). A
    safetensors file (8 bytes of header length, then its JSON header) is not one, whatever its first byte:
    a header length of 128 + 256 k starts with the byte a pickle starts with."""
    with open(path, "rb") as f:
        head = f.read(9)
        size = os.fstat(f.fileno()).st_size
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return False
    return head.startswith(_MAGIC_PICKLE_ZIP) or head[:1] == _MAGIC_PICKLE


def read_skeleton(path, kind: str) -> Any:
    """The plain values of a tree stored by ``write_tree`` (tensors left as ``{"__tensor__": name}``), from
    the file's header alone; None for anything else (a pickle is never opened as one)."""
    from safetensors import safe_open

    try:
        if is_pickle(path):
            return None
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
        return json.loads(meta["tree"]) if meta.get("format") == FORMAT and meta.get("kind") == kind else None
    except Exception:  # missing, damaged or foreign: the caller reads it properly to get the error
        return None


def read_tree(path, kind: str, fix: str) -> Any:
    """The tree stored in ``path`` by ``write_tree`` with the same ``kind``; a ``UserError`` naming the
    file and ``fix`` for anything else (``OldFormat`` for a pickle, which is never unpickled)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing; {fix}")
    try:
        if is_pickle(path):
            raise OldFormat(f"{path}: a pickle (torch.save) file, which wdr-pipe never loads because unpickling "
                            f"can run code; {fix}")
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("kind") != kind:
                raise UserError(f"{path}: not a {kind} file of wdr-pipe (format {meta.get('format')!r}, kind "
                                f"{meta.get('kind')!r}); {fix}")
            if int(meta.get("version", "0")) > VERSION:
                raise UserError(f"{path}: written by a newer wdr-pipe (format version {meta.get('version')}); "
                                "upgrade wdr-pipe to read it")
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
        return unpack(tensors, json.loads(meta["tree"]))
    except UserError:
        raise
    except Exception as e:  # a damaged or foreign file: safetensors' header or our JSON did not parse
        raise UserError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                        f"{fix}") from None


__all__ = ["FORMAT", "OldFormat", "is_pickle", "pack", "read_skeleton", "read_tree", "tree_bytes", "unpack", "write_tree"]
