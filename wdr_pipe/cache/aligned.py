"""The row-alignment rule at read time: a derived shard's rows are its image shard's rows, in order.

``Store.feature_shard`` / ``embedding_shard`` check a derived shard's commit
marker and row count from the footers before anything is read; a reader that
then reads the rows themselves (the loader, one unit of row groups at a time)
checks their image ids here, so the fix a user sees is said in one place.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ..errors import UserError


def check_rows_aligned(ids: pa.Array, other_ids: pa.Array, path: Path, command: str, rows: str = "") -> None:
    """``other_ids`` (the image ids read from the derived shard ``path``) must equal ``ids`` (its image
    shard's, same rows); else a ``UserError`` naming the shard and ``wdr-pipe COMMAND --rebuild``."""
    if not other_ids.equals(ids):
        where = f" of rows {rows}" if rows else ""
        raise UserError(f"{path}: image_ids{where} differ from its image shard's; rerun 'wdr-pipe {command} "
                        "--rebuild' for this split")


__all__ = ["check_rows_aligned"]
