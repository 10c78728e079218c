"""Arrow schemas of every table in the store (documented in docs/store.md).

Bump ``SCHEMA_VERSION`` when a change would make an older reader misread a
store; readers refuse a store whose major version they do not know.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

INDEX = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("urls", pa.list_(pa.string()), nullable=False),
        pa.field("labels", pa.list_(pa.int32())),  # null for unlabelled splits
    ]
)

IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("jpeg", pa.binary(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("src_width", pa.int32(), nullable=False),
        pa.field("src_height", pa.int32(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("labels", pa.list_(pa.int32())),
    ]
)

FAILURES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
    ]
)

LABEL_MAP = pa.schema(
    [
        pa.field("labelId", pa.int32(), nullable=False),
        pa.field("taskId", pa.int32()),
        pa.field("labelName", pa.string()),
        pa.field("taskName", pa.string()),
    ]
)


def features_schema(hog_dim: int, hist_dim: int, dtype: str = "float32") -> pa.Schema:
    """Schema of a feature shard: fixed-size lists so readers get a dense matrix."""
    t = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("hog", pa.list_(t, hog_dim)),         # null where the image failed to decode
            pa.field("color_hist", pa.list_(t, hist_dim)),
            pa.field("error", pa.string()),                # null when ok
        ]
    )


# -- label statistics (stats/<split>/, written by pipeline/stats/) ------------------------
LABEL_COUNTS = pa.schema([("label", pa.int32()), ("count", pa.int64())])
COOCCURRENCE = pa.schema([("label_a", pa.int32()), ("label_b", pa.int32()), ("count", pa.int64())])
LABEL_WEIGHTS = pa.schema([("label", pa.int32()), ("count", pa.int64()), ("weight", pa.float32()),
                           ("pos_weight", pa.float32())])
SAMPLE_WEIGHTS = pa.schema([pa.field("image_id", pa.string(), nullable=False), ("weight", pa.float32())])


def label_embeddings_schema(dim: int) -> pa.Schema:
    """Schema of ``label_embeddings.parquet``: one vector per label id."""
    return pa.schema([("label", pa.int32()), ("vector", pa.list_(pa.float32(), dim))])


# -- image embeddings (embeddings/<key>/<split>/, written by wdr/embed/stage.py) ---------------
def image_embeddings_schema(dim: int, dtype: str = "float16") -> pa.Schema:
    """Schema of an embedding shard: the backbone's pooled vector per image, row-aligned with its image shard."""
    t = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(t, dim)),   # null where the image failed to decode
            pa.field("error", pa.string()),             # null when ok
        ]
    )


# the search index's row table (embeddings/<key>/<split>/_search/ids.parquet): index row -> image
SEARCH_IDS = pa.schema([pa.field("image_id", pa.string(), nullable=False), ("shard", pa.string()),
                        ("row", pa.int32())])
