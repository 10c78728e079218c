"""Embedding commands: ``embed`` (the backbone's vectors into the store) and ``similar`` (search them)."""
from __future__ import annotations

import json

import click

from ..wdr.checks import EMBED_BATCH, IMAGE_SIZE, K
from . import cli
from .common import (CONTEXT, bounded, device_option, echo_result, json_option, not_empty, progress_bar, store_option,
                     user_errors)


@cli.command(context_settings=CONTEXT)
@store_option()
@click.option("--backbone", default=None, help="A timm model name [default: the run's with --run, else "
                                               "tf_efficientnet_lite0].")
@click.option("--pretrained", is_flag=True, help="ImageNet weights (tf_efficientnet_lite0 offline from its package).")
@click.option("--weights", type=click.Path(dir_okay=False), callback=not_empty,
              help="A local .pth/.safetensors file of the backbone.")
@click.option("--run", "run", type=click.Path(file_okay=False), callback=not_empty,
              help="A training run folder: embed with its (fine-tuned) backbone, keyed by its checkpoint.")
@click.option("--image-size", type=bounded(IMAGE_SIZE), default=None,
              help="Input size [default: the run's, else the backbone's own].")
@click.option("--split", "splits", multiple=True, help="Split to embed (repeatable; default: every split with images).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="How the vectors are stored.")
@click.option("--batch-size", type=bounded(EMBED_BATCH), default=None,
              help="Images per forward pass [default: 32 on the CPU; sized to free memory on CUDA].")
@device_option()
@click.option("--rebuild", is_flag=True, help="Recompute every shard of these splits under this key.")
@json_option
def embed(store, backbone, pretrained, weights, run, image_size, splits, dtype, batch_size, device, rebuild, as_json):
    """Store the backbone's pooled vector of every fetched image, once.

    Writes STORE/embeddings/KEY/SPLIT/part-NNNNN.parquet, one per image shard, where KEY
    hashes the backbone, its weights' bytes, the data config and the dtype. A rerun does no
    work; a re-fetched image shard is recomputed alone; other weights or sizes get another KEY.
    'wdr-pipe train --deep fixed' trains from these and 'wdr-pipe similar' searches them.

    \b
    Examples:
      wdr-pipe embed --store store/ --backbone tf_efficientnet_lite0 --pretrained
      wdr-pipe embed --store store/ --backbone resnet50 --weights resnet50.safetensors --split train
      wdr-pipe embed --store store/ --run runs/wdr --dtype float32
    """
    from ..wdr.embed.stage import EmbedSpec, compute_embeddings

    with user_errors():
        spec = EmbedSpec(backbone=backbone, pretrained=pretrained, weights=weights, run=run, image_size=image_size,
                         dtype=dtype)
        with progress_bar("embed") as bar:
            result = compute_embeddings(store, spec, splits or None, device=device, batch_size=batch_size,
                                        rebuild=rebuild, progress=bar)
    echo_result(result, as_json)


@cli.command(context_settings=CONTEXT)
@store_option()
@click.argument("query")
@click.option("--embeddings", "key", default=None, help="Embedding key [default: the store's only one].")
@click.option("-k", "k", type=bounded(K), default=10, show_default=True, help="How many images.")
@click.option("--split", default="train", show_default=True, help="The split to search.")
@click.option("--with-labels", is_flag=True, help="Show each image's labels (names when the store has a label map).")
@device_option(help="Where a query file is embedded: auto (CUDA when there is one), cpu, cuda or cuda:N.")
@json_option
def similar(store, query, key, k, split, with_labels, device, as_json):
    """The K stored images most like QUERY, by cosine similarity of their embeddings.

    QUERY is an image id of the store or an image file (embedded on the fly with the same
    backbone, weights and data config). The index (faiss, exact inner product) is built once
    per key and split and kept under STORE/embeddings/KEY/SPLIT/_search/.

    \b
    Examples:
      wdr-pipe similar --store store/ 1234 -k 5 --with-labels
      wdr-pipe similar --store store/ --embeddings 4dad0432899d photo.jpg --json
    """
    from ..wdr.embed.search import similar as run_similar

    with user_errors():
        found = run_similar(store, query, key=key, split=split, k=k, with_labels=with_labels, device=device)
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=2))
    else:
        click.echo("\n".join(found.lines()))
