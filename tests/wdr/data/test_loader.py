"""The streaming loader (wdr_pipe.wdr): coverage, order, sampling, resume, alignment and transforms.

Real stores (the ``image_store`` fixture, its shards rewritten with small row
groups), the real features and stats stages, real DataLoader workers and a
real timm model config. Images are cropped to 48 px to keep it quick.
"""
import io
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers import csv_store
from wdr_pipe.cache import Store, load_features, load_labels, sample_weights, commit_path
from wdr_pipe.cache.atomic import write_parquet_atomic
from wdr_pipe.cache.schema import FAILURES
from wdr_pipe.errors import UserError
from wdr_pipe.pipeline.features import FeatureConfig, compute_features
from wdr_pipe.pipeline.stats import StatsConfig, compute_stats
from wdr_pipe.wdr import DataConfig, Normalize, StoreDataset, TrainTransform, make_loader
from wdr_pipe.wdr.data.layout import _units, build_layout

SMALL = DataConfig(size=48)


def regroup(store_root, split="train", rows=7, corrupt=()):
    """Rewrite the image shards of ``split`` with ``rows``-row row groups; ``corrupt`` ids get broken JPEG bytes."""
    for shard in Store(store_root).image_shards(split):
        t = pq.read_table(shard)
        if corrupt:
            jpeg = [b"\xff\xd8 not a jpeg" if i in corrupt else j
                    for i, j in zip(t.column("image_id").to_pylist(), t.column("jpeg").to_pylist())]
            t = t.set_column(t.schema.get_field_index("jpeg"), "jpeg", pa.array(jpeg, pa.binary()))
        write_parquet_atomic(t, shard, row_group_size=rows)


def train_ids(store_root):
    return [i for s in Store(store_root).image_shards("train")
            for i in pq.read_table(s, columns=["image_id"]).column(0).to_pylist()]


def epoch_ids(loader):
    out = []
    for b in loader:
        out += b["image_id"]
    return out


@pytest.fixture
def store7(image_store):
    regroup(image_store)
    return image_store


def test_workers_start_after_opencv_ran_threads_in_this_process(store7):
    """Regression: forked workers used to hang in cv2.setNumThreads once the parent's pool ran."""
    import cv2

    cv2.setNumThreads(2)
    cv2.resize(np.zeros((1200, 1200, 3), np.uint8), (600, 600))  # starts OpenCV's thread pool here
    loader = make_loader(store7, "train", batch_size=16, num_workers=2, config=SMALL, timeout=60)
    assert sorted(epoch_ids(loader), key=int) == sorted(train_ids(store7), key=int)
    assert cv2.getNumThreads() == 2  # the caller's setting is restored


# -- plan ------------------------------------------------------------------------------
def test_units_are_cut_where_both_files_have_a_row_group_boundary():
    img = np.array([0, 7, 14, 20])
    units = _units("part-00000.parquet", img, np.array([0, 10, 14, 20]))
    assert [(u.start, u.rows, u.image_groups, u.feature_groups) for u in units] == \
        [(0, 14, (0, 1), (0, 1)), (14, 6, (2,), (2,))]
    assert [(u.start, u.rows) for u in _units("p", img, None)] == [(0, 7), (7, 7), (14, 6)]


# -- coverage --------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_every_row_exactly_once_per_epoch(store7, workers):
    loader = make_loader(store7, "train", batch_size=5, num_workers=workers, config=SMALL)
    batches = list(loader)
    seen = [i for b in batches for i in b["image_id"]]
    assert sorted(seen, key=int) == sorted(train_ids(store7), key=int)  # each of the 48 once
    assert [len(b["image_id"]) for b in batches] == [5] * 9 + [3] == [len(b["image"]) for b in batches]
    assert len(loader) == 10  # only the epoch's last batch is short, however many workers
    assert loader.epoch == 1 and loader.skipped == {"download": 0, "features": 0, "decode": 0}
    dropped = make_loader(store7, "train", batch_size=5, num_workers=workers, config=SMALL, drop_last=True)
    assert [len(b["image_id"]) for b in dropped] == [5] * 9 and len(dropped) == 9


def test_two_ranks_two_workers_cover_the_split_with_equal_batches(store7):
    per_rank = []
    for rank in range(2):
        loader = make_loader(store7, "train", batch_size=4, num_workers=2, config=SMALL, rank=rank, world_size=2)
        batches = list(loader)
        assert len(batches) == len(loader)
        per_rank.append([i for b in batches for i in b["image_id"]])
    assert len(per_rank[0]) == len(per_rank[1]) == 24
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1], key=int) == sorted(train_ids(store7), key=int)


def test_uneven_ranks_pad_by_wrapping_and_get_equal_batch_counts(store7):
    """47 rows over 3 ranks: every rank gets ceil(47/3) = 16 samples; one row is seen twice."""
    regroup(store7, rows=5)
    shard = Store(store7).image_shards("train")[-1]  # drop one row of the last shard: 47 rows, uneven units
    t = pq.read_table(shard)
    write_parquet_atomic(t.slice(0, t.num_rows - 1), shard, row_group_size=3)
    counts, seen = [], []
    for rank in range(3):
        loader = make_loader(store7, "train", batch_size=3, num_workers=2, config=SMALL, rank=rank, world_size=3)
        batches = list(loader)
        counts.append(len(batches))
        seen += [i for b in batches for i in b["image_id"]]
        assert len(batches) == len(loader)
    assert counts[0] == counts[1] == counts[2] == 6  # 16 samples per rank: 5 batches of 3 and one of 1
    c = Counter(seen)
    assert len(seen) == 48 and len(c) == 47 and sorted(c.values())[-1] == 2


# -- order -----------------------------------------------------------------------------
def test_same_seed_same_stream_other_epoch_or_seed_another(store7):
    def run(seed, epoch):
        loader = make_loader(store7, "train", batch_size=6, num_workers=2, config=SMALL, seed=seed)
        loader.set_epoch(epoch)
        batches = list(loader)
        return [i for b in batches for i in b["image_id"]], torch.cat([b["image"] for b in batches])

    ids_a, img_a = run(0, 0)
    ids_b, img_b = run(0, 0)
    assert ids_a == ids_b and torch.equal(img_a, img_b)  # augmentation is seeded too
    assert run(0, 1)[0] != ids_a
    assert run(1, 0)[0] != ids_a
    assert sorted(run(0, 1)[0]) == sorted(ids_a)


@pytest.mark.parametrize("workers", [0, 1])
def test_iterating_leaves_torchs_global_random_stream_alone(store7, workers):
    """A new iterator seeds its workers from the loader's own generator: dropout after a validation
    pass draws what it would have drawn without one (exact resume relies on it)."""
    loader = make_loader(store7, "train", batch_size=16, num_workers=workers, config=SMALL)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    for _ in range(2):  # a persistent worker's second epoch too
        next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)


def test_no_shuffle_keeps_store_order_per_worker(store7):
    loader = make_loader(store7, "train", batch_size=50, num_workers=0, config=SMALL, train=False)
    assert epoch_ids(loader) == train_ids(store7)


# -- failures ----------------------------------------------------------------------------
def test_failed_rows_are_skipped_and_counted(image_store):
    regroup(image_store, corrupt=("5", "30"))
    first = Store(image_store).image_shards("train")[0]
    fails = pa.table({"image_id": ["900", "901"], "url": ["u1", "u2"], "status": ["http_404", "timeout"],
                      "error": ["", ""]}, schema=FAILURES)
    write_parquet_atomic(fails, first.with_name(first.name.replace(".parquet", ".failures.parquet")))
    # without features: the broken JPEGs are found at run time, dropped from their batch and counted
    loader = make_loader(image_store, "train", batch_size=4, num_workers=2, config=SMALL)
    seen = epoch_ids(loader)
    assert sorted(seen, key=int) == sorted(set(train_ids(image_store)) - {"5", "30"}, key=int)
    assert loader.skipped == {"download": 2, "features": 0, "decode": 2}
    # with features: the features stage recorded the failures, so the plan leaves the rows out
    key = compute_features(image_store, ["train"], FeatureConfig(hog_size=32), scheduler="inline").key
    loader = make_loader(image_store, "train", batch_size=4, num_workers=2, config=SMALL, feature_key=key)
    seen = epoch_ids(loader)
    assert sorted(seen, key=int) == sorted(set(train_ids(image_store)) - {"5", "30"}, key=int)
    assert loader.skipped == {"download": 2, "features": 2, "decode": 0}
    assert len(loader) == -(-46 // 4)  # 46 usable rows


def test_missing_or_misaligned_features_are_user_errors(store7):
    key = compute_features(store7, ["train"], FeatureConfig(hog_size=32), scheduler="inline").key
    with pytest.raises(UserError, match="no feature config 'nope'"):
        StoreDataset(store7, "train", feature_key="nope")
    shard = Store(store7).features.dir(key, "train") / "part-00001.parquet"
    t = pq.read_table(shard)
    write_parquet_atomic(t.take(list(range(t.num_rows))[::-1]), shard)  # same rows, wrong order
    ds = StoreDataset(store7, "train", feature_key=key, transform=TrainTransform(48), shuffle=False, batch_size=8)
    with pytest.raises(UserError, match="image_ids of rows .* differ"):
        list(ds)
    commit_path(shard).unlink()
    with pytest.raises(UserError, match="no committed feature shard.*wdr-pipe features"):
        StoreDataset(store7, "train", feature_key=key)


# -- alignment -----------------------------------------------------------------------------
def test_features_labels_and_weights_belong_to_their_image_id(store7):
    key = compute_features(store7, ["train"], FeatureConfig(hog_size=32), scheduler="inline").key
    compute_stats(store7, ["train"])
    ids, hog, hist = load_features(store7, "train", key)
    wide = {i: np.concatenate([h, c]) for i, h, c in zip(ids, hog, hist)}
    lab_ids, y = load_labels(store7, "train")
    labels = dict(zip(lab_ids, y))
    w_ids, w = sample_weights(store7, "train")
    weights = dict(zip(w_ids, w))
    assert len(set(weights.values())) > 3  # real, varying weights
    loader = make_loader(store7, "train", batch_size=5, num_workers=2, config=SMALL, feature_key=key)
    n = 0
    for b in loader:
        assert b["wide"].shape[1] == loader.dataset.wide_dim == hog.shape[1] + hist.shape[1]
        for j, i in enumerate(b["image_id"]):
            np.testing.assert_array_equal(b["wide"][j].numpy(), wide[i])
            np.testing.assert_array_equal(b["labels"][j].numpy(), labels[i].astype(np.float32))
            assert b["weight"][j].item() == pytest.approx(float(weights[i]))
            n += 1
    assert n == 48


# -- weighted sampling -------------------------------------------------------------------------
PER_LABEL = (1, 2, 3, 5, 8, 12, 17)  # label k is on PER_LABEL[k - 1] of the 48 train images, one label each


@pytest.fixture
def weighted_store(synth_data, tmp_path):
    """The 48 train images fetched again, each with one label chosen so that the real stats stage, with
    alpha=0 (inverse label frequency), gives weights from 6.9 down to 0.4 (mean 1), none near a whole
    number, so no row's count is the same in every epoch. 7-row row groups, as ``store7``."""
    data_root, records = synth_data
    train = [r for r in records if r.split == "train"]
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(1, 8), PER_LABEL))
    root, _ = csv_store(tmp_path, data_root, train, [[lab] for lab in labels], size=64, shard_size=20)
    regroup(root)
    compute_stats(root, ["train"], cfg=StatsConfig(alpha=0.0, epochs=10))
    return root, {r.image_id: int(lab) for r, lab in zip(train, labels)}


def test_weighted_sampling_counts_are_proportional_to_weights(weighted_store):
    """Counts over both ranks. Per-epoch counts are independent across epochs, so the mean count of each
    row is normal around lambda * weight with a standard error from its own spread over epochs; the sum
    of the squared z-scores is chi2(N - 1)."""
    from scipy.stats import chi2

    root, label_of = weighted_store
    w_ids, w_stored = sample_weights(root, "train")
    weights = dict(zip(w_ids.tolist(), w_stored.tolist()))
    assert sorted(weights) == sorted(train_ids(root)) == sorted(label_of)
    assert all(w == pytest.approx(48 / 7 / PER_LABEL[label_of[i] - 1], rel=1e-6) for i, w in weights.items())
    ranks = [StoreDataset(root, "train", transform=TrainTransform(48), batch_size=4, weighted=True, seed=3,
                          rank=r, world_size=2, num_workers=2) for r in range(2)]
    ds = ranks[1]
    plan_ids = [i for u in ds.layout.units for i in pq.read_table(ds.layout.images_dir / u.shard, columns=["image_id"])
                .column(0).to_pylist()[u.start:u.start + u.rows]]
    epochs = 400
    counts = np.zeros((epochs, ds.layout.num_rows))
    for epoch in range(epochs):
        for rank in ranks:
            for worker in range(2):
                rows = rank.worker_rows(epoch, worker)
                assert len(rows) == rank.worker_samples(worker) == 12  # the same quota as without weights
                np.add.at(counts[epoch], rows, 1)
    w = np.array([weights[i] for i in plan_ids])
    mean, se = counts.mean(0), counts.std(0, ddof=1) / np.sqrt(epochs)

    def p_value(expected):
        return chi2.sf((((mean - expected) / se) ** 2).sum(), len(w) - 1)

    assert p_value(mean.sum() * w / w.sum()) > 1e-3
    assert p_value(np.full(len(w), mean.mean())) < 1e-12  # the test can tell proportional from uniform
    assert p_value(mean.sum() * np.sqrt(w) / np.sqrt(w).sum()) < 1e-12  # ... and from a milder weighting
    # through the loader: the stream is that order, and the loss weight is 1 (the sampling applied it)
    loader = make_loader(root, "train", batch_size=4, num_workers=2, config=SMALL, weighted=True, seed=3,
                         rank=1, world_size=2)
    batches = list(loader)
    got = Counter(i for b in batches for i in b["image_id"])
    want = Counter(plan_ids[r] for wk in range(2) for r in ds.worker_rows(0, wk))
    assert got == want and all(float(b["weight"].min()) == 1.0 for b in batches)


def test_weighted_sampling_needs_stats(store7):
    with pytest.raises(UserError, match="no label statistics.*wdr-pipe stats"):
        StoreDataset(store7, "train", weighted=True)


# -- resume ------------------------------------------------------------------------------------
def test_resume_mid_epoch_with_two_workers_repeats_and_skips_nothing(store7):
    def loader():
        return make_loader(store7, "train", batch_size=3, num_workers=2, config=SMALL, seed=5)

    whole = {}
    for b in loader():
        for j, i in enumerate(b["image_id"]):
            whole[i] = b["image"][j]
    first = loader()
    before = []
    for k, b in enumerate(first):
        before += b["image_id"]
        if k == 6:  # 7 batches: worker 0 gave 4, worker 1 gave 3
            break
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint file
    assert state["epoch"] == 0 and state["consumed"] == [12, 9]
    second = loader()
    second.load_state_dict(state)
    after = {}
    for b in second:
        for j, i in enumerate(b["image_id"]):
            after[i] = b["image"][j]
    assert not set(before) & set(after)
    assert sorted(before + list(after), key=int) == sorted(whole, key=int)
    assert all(torch.equal(after[i], whole[i]) for i in after)  # same crops as the uninterrupted run
    assert second.state_dict()["epoch"] == 1 and second.state_dict()["consumed"] == [0, 0]
    # breaking out and iterating again in the same process also continues where it stopped
    again = before + epoch_ids(first)
    assert sorted(again, key=int) == sorted(whole, key=int)


@pytest.mark.parametrize("workers", [2, 3])
def test_resume_keeps_the_batch_order_for_any_number_of_workers(store7, workers):
    """A loader resumed after any number of batches yields the rest of the epoch in the unbroken run's order,
    the same crops too (the DataLoader restarts its round-robin at process 0; the streams turn with it)."""
    def loader():
        return make_loader(store7, "train", batch_size=3, num_workers=workers, config=SMALL, seed=5)

    whole = [(b["image_id"], b["image"]) for b in loader()]
    for stop in (1, 2, len(whole) - 2):
        first = loader()
        for k, _ in enumerate(first):
            if k + 1 == stop:
                break
        second = loader()
        second.load_state_dict(json.loads(json.dumps(first.state_dict())))
        rest = [(b["image_id"], b["image"]) for b in second]
        assert [ids for ids, _ in rest] == [ids for ids, _ in whole[stop:]], (workers, stop)
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, whole[stop:]))


def test_resume_state_from_other_settings_is_refused(store7):
    a = make_loader(store7, "train", batch_size=3, num_workers=2, config=SMALL)
    b = make_loader(store7, "train", batch_size=3, num_workers=1, config=SMALL)
    with pytest.raises(UserError, match="num_workers=2 .this loader: 1."):
        b.load_state_dict(a.state_dict())


# -- transforms ----------------------------------------------------------------------------------
def test_eval_batches_match_timms_own_transform(image_store):
    import timm
    from PIL import Image

    model = timm.create_model("mobilenetv3_small_050", pretrained=False)
    cfg = timm.data.resolve_model_data_config(model)
    reference = timm.data.create_transform(**cfg, is_training=False)
    shard = Store(image_store).image_shards("validation")[0]
    jpegs = dict(zip(*[pq.read_table(shard).column(c).to_pylist() for c in ("image_id", "jpeg")]))
    loader = make_loader(image_store, "validation", batch_size=8, num_workers=0, model=model, device="cpu")
    assert loader.dataset.shuffle is False
    b = next(iter(loader))
    assert b["image"].shape == (8, 3, 224, 224) and b["image"].dtype == torch.float32
    for j, i in enumerate(b["image_id"]):
        want = reference(Image.open(io.BytesIO(jpegs[i])).convert("RGB"))
        diff = (b["image"][j] - want).abs()
        assert diff.mean() < 0.005 and diff.max() < 0.05  # 0.05 ~ 3/255 after normalisation


def test_normalize_on_device_equals_in_workers(store7):
    kw = dict(batch_size=6, num_workers=1, config=SMALL, seed=2)
    raw = next(iter(make_loader(store7, "train", **kw)))
    on_device = next(iter(make_loader(store7, "train", device="cpu", **kw)))
    in_workers = next(iter(make_loader(store7, "train", normalize_in_workers=True, **kw)))
    assert raw["image"].dtype == torch.uint8
    mean, std = torch.tensor(SMALL.mean).view(3, 1, 1), torch.tensor(SMALL.std).view(3, 1, 1)
    expect = (raw["image"].float() / 255 - mean) / std
    torch.testing.assert_close(on_device["image"], expect)
    torch.testing.assert_close(in_workers["image"], expect)
    assert Normalize(dtype=torch.bfloat16)(raw["image"]).dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_arrive_on_the_gpu_normalised(store7):
    loader = make_loader(store7, "train", batch_size=6, num_workers=2, config=SMALL, device="cuda")
    assert loader.dataloader.pin_memory
    cpu = make_loader(store7, "train", batch_size=6, num_workers=2, config=SMALL)
    n = 0
    for b, c in zip(loader, cpu):
        assert b["image"].is_cuda and b["image"].dtype == torch.float32 and b["labels"].is_cuda
        assert b["image_id"] == c["image_id"]
        torch.testing.assert_close(b["image"].cpu(), cpu.normalize(c["image"]))
        torch.testing.assert_close(b["labels"].cpu(), c["labels"])
        n += len(b["image_id"])
    assert n == 48


def test_train_crops_stay_inside_the_image():
    t = TrainTransform(48, scale=(0.08, 1.0))
    rng = np.random.default_rng(0)
    for h, w in [(160, 213), (300, 120), (64, 64)]:
        for _ in range(200):
            top, left, ch, cw = t.box(h, w, rng)
            assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
    out = t(np.zeros((160, 213, 3), np.uint8), rng)
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8


def test_plan_has_one_unit_per_row_group(store7):
    plan = build_layout(Store(store7), "train")
    assert plan.num_rows == 48 and sum(u.rows for u in plan.units) == 48
    assert all(len(u.image_groups) == 1 for u in plan.units)  # 7-row row groups, one unit each
