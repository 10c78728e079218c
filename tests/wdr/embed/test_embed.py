"""The embed stage, training from cached embeddings, and similar-image search (wdr_pipe.wdr.embed, embed_data,
search; ``wdr-pipe embed`` / ``similar``).

Real stores written by the real stages (``wdr_store``: 48 train / 16 validation / 8 test images stored at
96 px), the real pretrained ``tf_efficientnet_lite0`` at 64 px, a real training run, real faiss.
"""
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from helpers import drawn_store
from wdr_pipe.cache import Store, commit_path, store_info
from wdr_pipe.cache.atomic import TMP_PREFIX
from wdr_pipe.cli import cli
from wdr_pipe.errors import UserError
from wdr_pipe.wdr import DataConfig, make_loader
from wdr_pipe.wdr.model.backbone import create_backbone
from wdr_pipe.wdr.runs.checkpoint import eval_weights, load_checkpoint
from wdr_pipe.wdr.runs.folder import RunFolder
from wdr_pipe.wdr.embed.stage import EmbedSpec, compute_embeddings, resolve
from wdr_pipe.wdr.embed.search import SearchIndex, similar
from wdr_pipe.wdr.train.loop import train
from wdr_pipe.wdr.train.config import TrainConfig, settings_diff

PX = 64
SPEC = EmbedSpec(pretrained=True, image_size=PX)


@pytest.fixture(scope="module")
def embedded(wdr_store, tmp_path_factory):
    """(store, result): a copy of ``wdr_store`` with float16 embeddings of every split at 64 px."""
    root = tmp_path_factory.mktemp("embedded") / "store"
    shutil.copytree(wdr_store, root)
    torch.set_num_threads(2)
    return root, compute_embeddings(root, SPEC, device="cpu")


def ids_of(path):
    return pq.read_table(path, columns=["image_id"]).column(0).to_pylist()


def marker_mtimes(store, key):
    return {p: p.stat().st_mtime_ns for p in Store(store).embeddings.root(key).rglob("*.stats.json")}


# -- the stage -------------------------------------------------------------------------------------------
def test_shards_are_row_aligned_committed_and_a_rerun_does_nothing(embedded):
    root, result = embedded
    store, key = Store(root), result.key
    assert result.ran == 4 and result.reused == 0 and result.counts == {"ok": 72, "failed": 0}
    assert result.details["images_per_s"] > 0 and result.details["dtype"] == "float16"
    for split in ("train", "validation", "test"):
        for image_shard, shard in store.embeddings.shards(key, split):
            assert ids_of(shard) == ids_of(image_shard)
            field = pq.read_schema(shard).field("embedding")
            assert str(field.type) == "fixed_size_list<element: halffloat>[1280]"
            assert json.loads(commit_path(shard).read_text())["device"] == "cpu"
    doc = json.loads(store.embeddings.config_path(key).read_text())
    assert doc["config"]["size"] == PX and doc["dim"] == 1280 and doc["source"]["pretrained"] is True
    assert (store.embeddings.root(key) / "result.json").exists()
    (listed,) = store_info(root)["embeddings"]
    assert listed["key"] == key and listed["shards"] == {"test": 1, "train": 2, "validation": 1}
    before = marker_mtimes(root, key)
    again = compute_embeddings(root, SPEC)
    assert (again.key, again.ran, again.reused) == (key, 0, 4) and marker_mtimes(root, key) == before


def test_vectors_are_the_backbone_on_the_trainers_validation_pixels(embedded):
    root, result = embedded
    model = create_backbone("tf_efficientnet_lite0", pretrained=True).eval()
    loader = make_loader(root, "validation", batch_size=16, num_workers=0, config=resolve(SPEC)[0].data_config,
                         train=False)
    batch = next(iter(loader))
    with torch.no_grad():
        want = model(loader.normalize(batch["image"])).numpy()
    got = make_loader(root, "validation", 16, embedding_key=result.key, train=False)
    emb = next(iter(got))
    assert emb["image_id"] == batch["image_id"]
    np.testing.assert_allclose(emb["embedding"].numpy(), want, rtol=2e-3, atol=2e-3)  # float16 storage


def test_a_changed_image_shard_or_a_killed_run_recomputes_exactly_those_shards(embedded, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(embedded[0], root)
    store, key = Store(root), embedded[1].key
    marker = commit_path(store.image_shards("train")[0])
    marker.write_text(marker.read_text() + " ")  # as a re-fetch does
    killed = store.embeddings.dir(key, "validation") / "part-00000.parquet"
    commit_path(killed).unlink()
    (killed.parent / f"{TMP_PREFIX}part-00000.parquet.x").write_bytes(b"half")
    before = marker_mtimes(root, key)
    again = compute_embeddings(root, SPEC, device="cpu")
    assert (again.ran, again.reused, again.details["images_computed"]) == (2, 2, 40 + 16)
    changed = {p for p, t in marker_mtimes(root, key).items() if before.get(p) != t}
    assert changed == {store.embeddings.dir(key, "train") / "part-00000.stats.json", commit_path(killed)}
    assert not list(killed.parent.glob(TMP_PREFIX + "*"))


def test_a_damaged_embedding_shard_is_named_and_rebuild_fixes_it(embedded, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(embedded[0], root)
    store, key = Store(root), embedded[1].key
    shard = store.embeddings.dir(key, "validation") / "part-00000.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.take(list(range(table.num_rows))[::-1]), shard)  # the rows in another order
    with pytest.raises(UserError, match=r"part-00000\.parquet: damaged embedding shard \(its image_ids are not "
                                        r"those of .* in the same order\); run 'wdr-pipe embed .* --rebuild'"):
        compute_embeddings(root, SPEC, device="cpu")
    shard.write_bytes(b"not parquet")
    with pytest.raises(UserError, match=r"part-00000\.parquet: unreadable embedding shard"):
        compute_embeddings(root, SPEC, device="cpu")
    again = compute_embeddings(root, SPEC, ["validation"], device="cpu", rebuild=True)
    assert (again.ran, again.reused) == (1, 0) and ids_of(shard) == ids_of(store.image_shards("validation")[0])


def test_the_key_follows_weights_size_and_dtype(embedded, tmp_path):
    key = embedded[1].key
    state = create_backbone("tf_efficientnet_lite0").state_dict()
    torch.save(state, tmp_path / "w.pth")
    keys = {resolve(EmbedSpec(weights=str(tmp_path / "w.pth"), image_size=PX))[0].key,
            resolve(EmbedSpec(pretrained=True, image_size=96))[0].key,
            resolve(EmbedSpec(pretrained=True, image_size=PX, dtype="float32"))[0].key}
    assert key not in keys and len(keys) == 3 and resolve(SPEC)[0].key == key
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "w.pth")
    assert resolve(EmbedSpec(weights=str(tmp_path / "w.pth"), image_size=PX))[0].key not in keys


# -- training from the cache ------------------------------------------------------------------------------
def small_cfg(store, out, **kw):
    return TrainConfig(store=str(store), out=str(out), **{**dict(image_size=PX, batch_size=16, loader_workers=0,
                                                                 checkpoint_every=0, epochs=1, pretrained=True,
                                                                 thresholds="none"), **kw})


def test_deep_fixed_trains_from_cached_embeddings_and_decodes_no_image(embedded, tmp_path, monkeypatch, caplog):
    root = tmp_path / "store"
    shutil.copytree(embedded[0], root)
    shutil.rmtree(Store(root).embeddings.root(embedded[1].key))
    cfg = small_cfg(root, tmp_path / "first", deep="fixed", parts="deep,wide,recurrent")
    with caplog.at_level("INFO", logger="wdr_pipe"):
        first = train(cfg)  # no embeddings yet: computed first
    assert "training from the cached embeddings" in caplog.text and "computed 64 images' vectors first" in caplog.text
    key = json.loads(RunFolder(cfg.out).config.read_text())["embedding_key"]
    assert key == embedded[1].key == first.details["embedding_key"] and first.counts["samples"] == 48

    def no_decode(*a, **k):
        raise AssertionError("an image was decoded")

    import wdr_pipe.wdr.data.loader
    import wdr_pipe.wdr.embed.embedder

    monkeypatch.setattr(wdr_pipe.wdr.data.loader, "decode_rgb", no_decode)
    monkeypatch.setattr(wdr_pipe.wdr.embed.embedder, "decode_rgb", no_decode)
    caplog.clear()
    with caplog.at_level("INFO", logger="wdr_pipe"):
        second = train(small_cfg(root, tmp_path / "second", deep="fixed", parts="deep,wide,recurrent"))
    assert "all 3 shards were there" in caplog.text
    assert second.details["val_f1_at_0.5"] == pytest.approx(first.details["val_f1_at_0.5"])
    with pytest.raises(AssertionError, match="an image was decoded"):  # the images are still streamed when asked
        train(small_cfg(root, tmp_path / "stream", deep="fixed", stream_images=True))


def test_run_embeddings_are_keyed_by_its_checkpoint_and_init_reuses_them(embedded, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(embedded[0], root)
    run = small_cfg(root, tmp_path / "tuned", deep="tune", lr=1e-3)
    train(run)
    result = compute_embeddings(root, EmbedSpec(run=run.out, image_size=PX), splits=["validation"])
    assert result.key != embedded[1].key and result.ran == 1
    model = create_backbone("tf_efficientnet_lite0")
    weights = eval_weights(load_checkpoint(RunFolder(run.out).best))
    model.load_state_dict({k[9:]: v for k, v in weights.items() if k.startswith("backbone.")})
    loader = make_loader(root, "validation", 16, num_workers=0, config=resolve(SPEC)[0].data_config, train=False)
    batch = next(iter(loader))
    with torch.no_grad():
        want = model.eval()(loader.normalize(batch["image"])).numpy()
    got = next(iter(make_loader(root, "validation", 16, embedding_key=result.key, train=False)))
    np.testing.assert_allclose(got["embedding"].numpy(), want, rtol=2e-3, atol=2e-3)
    phase2 = small_cfg(root, tmp_path / "phase2", init=run.out, deep="fixed", parts="deep,recurrent")
    train(phase2)
    assert json.loads(RunFolder(phase2.out).config.read_text())["embedding_key"] == result.key
    with pytest.raises(UserError, match="the run .* trained tf_efficientnet_lite0; leave --backbone out"):
        resolve(EmbedSpec(run=run.out, backbone="resnet18"))


def test_runs_made_before_stream_images_existed_still_resume(tmp_path):
    cfg = small_cfg("s", tmp_path, deep="fixed")
    older = {k: v for k, v in cfg.settings().items() if k != "stream_images"}
    assert settings_diff(older, cfg.settings()) == []
    assert settings_diff(older, small_cfg("s", tmp_path, deep="fixed", stream_images=True).settings()) == [
        "--stream-images True (the run has False)"]


def test_embedding_loader_streams_the_image_loaders_rows_in_the_same_order(embedded):
    root, result = embedded
    key = Store(root).features.keys()[0]
    common = dict(batch_size=5, num_workers=2, seed=4, weighted=True, feature_key=key, rank=1, world_size=2,
                  drop_last=True)
    images = list(make_loader(root, "train", config=DataConfig(size=32), **common))
    embeddings = make_loader(root, "train", embedding_key=result.key, **common)
    batches = list(embeddings)
    assert len(batches) == len(images) == len(embeddings)
    assert [b["image_id"] for b in batches] == [b["image_id"] for b in images]
    for a, b in zip(batches, images):
        for name in ("labels", "weight", "wide"):
            assert torch.equal(a[name], b[name])


def test_embedding_loader_resumes_mid_epoch_repeating_and_skipping_nothing(embedded):
    root, result = embedded

    def loader():
        return make_loader(root, "train", 3, 2, embedding_key=result.key, seed=5)

    whole = [i for b in loader() for i in b["image_id"]]
    first, before = loader(), []
    for k, b in enumerate(first):
        before += b["image_id"]
        if k == 6:
            break
    state = json.loads(json.dumps(first.state_dict()))
    assert state["consumed"] == [12, 9] and state["embedding_key"] == result.key
    second = loader()
    second.load_state_dict(state)
    after = [i for b in second for i in b["image_id"]]
    assert Counter(before + after) == Counter(whole) and len(before + after) == 48
    images = make_loader(root, "train", 3, 2, config=DataConfig(size=32), seed=5)
    with pytest.raises(UserError, match="embedding_key=None"):
        second.load_state_dict(images.state_dict())  # a run that streamed images cannot resume on embeddings


# -- search ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def search_store(tmp_path_factory):
    """(store, records, key): 160 generated garments stored at 64 px, embedded at 64 px."""
    store, records = drawn_store(tmp_path_factory.mktemp("search"), {"train": 160, "validation": 4}, seed=5,
                                 size_range=(96, 128), size=PX, shard_size=64, features=False, stats=False)
    return store, records, compute_embeddings(store, SPEC, device="cpu").key


def test_precision_at_k_of_same_template_and_colour_beats_random_order(search_store):
    store, records, key = search_store
    kind = {}  # image_id -> (category, colours): the template it was drawn from and its colours
    for r in records:
        if r.split == "train":
            kind[r.image_id] = (next(x for x in r.labels if x <= 6), frozenset(x for x in r.labels if 7 <= x <= 14))
    relevant = lambda a, b: kind[a][0] == kind[b][0] and kind[a][1] & kind[b][1]  # noqa: E731
    k, found, chance, index = 5, [], [], SearchIndex(store, key)
    for q in kind:
        others = [i for i in kind if i != q]
        n_rel = sum(bool(relevant(q, i)) for i in others)
        if not n_rel:
            continue
        hits = similar(store, q, key=key, k=k, index=index).results
        assert len(hits) == k and q not in [h["image_id"] for h in hits]
        found.append(sum(bool(relevant(q, h["image_id"])) for h in hits) / k)
        chance.append(n_rel / len(others))  # the expected precision@k of a random order
    assert len(found) > 80
    p_at_k, p_random = float(np.mean(found)), float(np.mean(chance))
    print(f"precision@{k}: {p_at_k:.3f} against {p_random:.3f} for random order ({len(found)} queries)")
    assert p_at_k > 3 * p_random and p_at_k > 0.25


def test_similar_cli_by_id_and_by_file_with_labels_and_json(search_store, tmp_path):
    store, records, key = search_store
    runner = CliRunner()
    out = runner.invoke(cli, ["similar", "--store", str(store), "7", "-k", "4", "--with-labels", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    scores = [r["score"] for r in doc["results"]]
    assert doc["query"] == {"image_id": "7", "split": "train"} and len(scores) == 4 and scores == sorted(scores)[::-1]
    first = doc["results"][0]
    assert first["url"].startswith("file://") and first["labels"] and all(isinstance(n, str)
                                                                           for n in first["label_names"])
    manifest = Store(store).search_files(key, "train")["manifest"]
    mtime = manifest.stat().st_mtime_ns
    original = Path(records[0].path)  # a train image's own file, not in the store: embedded on the fly
    out = runner.invoke(cli, ["similar", "--store", str(store), str(store.parent / "data" / original), "-k", "3"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[1].split()[2] == records[0].image_id  # itself, first
    assert manifest.stat().st_mtime_ns == mtime  # the index was reused
    out = runner.invoke(cli, ["similar", "--store", str(store), "2", "--split", "validation", "-k", "2"])
    assert out.exit_code == 0 and len(out.output.splitlines()) == 3  # a new split: its own index


# -- bad input --------------------------------------------------------------------------------------
def test_bad_input_is_one_clear_message(embedded, search_store, tmp_path):
    root, key = embedded[0], embedded[1].key
    empty = Store(tmp_path / "empty", create=True).root
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not an image")
    torch.save(create_backbone("resnet18").state_dict(), tmp_path / "resnet18.pth")
    cases = [
        (lambda: compute_embeddings(empty, SPEC), r"no image shards under images/; run 'wdr-pipe fetch INDEX"),
        (lambda: compute_embeddings(root, SPEC, splits=["nope"]), r"no committed image shards for split 'nope'"),
        (lambda: EmbedSpec(), r"pass one of --pretrained, --weights PATH or --run RUN: a backbone with random"),
        (lambda: EmbedSpec(pretrained=True, run="r"), r"pass only one of .* \(got --pretrained and --run\)"),
        (lambda: EmbedSpec(pretrained=True, dtype="int8"), r"--dtype int8: use float16 or float32"),
        (lambda: EmbedSpec(pretrained=True, backbone="resnet_51"), r"--backbone 'resnet_51' is not a timm model"),
        (lambda: compute_embeddings(root, EmbedSpec(weights=str(tmp_path / "resnet18.pth"), image_size=PX)),
         r"resnet18.pth cannot be loaded into backbone tf_efficientnet_lite0 .*; pass a state dict"),
        (lambda: compute_embeddings(root, EmbedSpec(weights=str(tmp_path / "none.pth"))), r"none.pth: no such file"),
        (lambda: compute_embeddings(root, EmbedSpec(run=str(tmp_path))), r"--run .*: not a wdr-pipe run folder"),
        (lambda: similar(root, "999", key=key), r"image id '999' is not in the store .*; pass an image id"),
        (lambda: similar(root, str(tmp_path / "broken.jpg"), key=key),
         r"broken.jpg: not a decodable image .*; pass a photo"),
        (lambda: similar(root, "nowhere/x.jpg", key=key), r"nowhere/x.jpg: no such image file"),
        (lambda: similar(root, "1", key="abc"), r"no embeddings 'abc'; the store has: " + key),
        (lambda: similar(empty, "1"), r"no embeddings yet; run 'wdr-pipe embed --store"),
        (lambda: make_loader(root, "train", embedding_key=key, config=DataConfig(size=96)),
         r"embeddings .* were made at 64 px .* not at the 96 px .* asked for"),
        (lambda: small_cfg(root, tmp_path / "r", stream_images=True), r"--stream-images True: only --deep fixed"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message):
            call()
    assert Store(root).embeddings.keys() == [key] and not Store(empty).embeddings.keys()
    assert not (tmp_path / "r").exists()
    res = CliRunner().invoke(cli, ["similar", "--store", str(root), "--embeddings", key, "999"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "image id '999'" in res.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_embeddings_agree_with_the_cpus(embedded, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(embedded[0], root)
    shutil.rmtree(Store(root).embeddings.root(embedded[1].key))
    gpu = compute_embeddings(root, SPEC, splits=["validation"], device="cuda")
    shard = Store(root).embeddings.dir(gpu.key, "validation") / "part-00000.parquet"
    assert json.loads(commit_path(shard).read_text())["precision"] == "bf16" and gpu.details["batch_size"] >= 8
    a = next(iter(make_loader(root, "validation", 16, embedding_key=gpu.key, train=False)))["embedding"]
    b = next(iter(make_loader(embedded[0], "validation", 16, embedding_key=gpu.key, train=False)))
    cos = torch.nn.functional.cosine_similarity(a, b["embedding"])
    assert float(cos.min()) > 0.99
