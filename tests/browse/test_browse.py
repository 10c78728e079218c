"""``wdr-pipe browse``: the JSON API against a real server on 127.0.0.1, and the page in a real headless Chromium.

One store is written by the real stages from the shared generated data set (96 px, features, label
statistics), with one label whose name in the user's label map is HTML with a script in it. It is
embedded by the real embed stage (pretrained ``tf_efficientnet_lite0`` at 64 px), and a real run is
trained on it (Deep fixed from those embeddings + Wide). One uvicorn server over it serves the whole
module. Oracles are independent of the page's code: the run's probabilities as read back from its
Parquet file with pyarrow, the stored JPEGs read from the image shards, and ``wdr-pipe similar``'s
own search for a photo.
"""
import hashlib
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import urllib.parse
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from click.testing import CliRunner
from PIL import Image

from helpers import build_store
from wdr_pipe.browse import Background, bind, create_app, open_answers
from wdr_pipe.cache import Store, fetch_settings
from wdr_pipe.cli import cli
from wdr_pipe.demo.serve import ImageServer
from wdr_pipe.imaging import decode_rgb, process
from wdr_pipe.wdr.embed.stage import EmbedSpec, compute_embeddings
from wdr_pipe.wdr.score.predict import MAX_BYTES
from wdr_pipe.pipeline.configs import FetchConfig
from wdr_pipe.wdr.embed.search import similar
from wdr_pipe.wdr.train.loop import train
from wdr_pipe.wdr.train.config import TrainConfig

HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> & "T-shirt"'
PX = 64


def _with_label_name(data_root, folder, name):
    """A copy of the generated data set whose label map names label 1 ``name`` (label maps come from users)."""
    shutil.copytree(data_root, folder)
    path = folder / "label_map.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    import csv

    rows = list(csv.reader(lines))
    rows[1][2] = name
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def made(synth_data, tmp_path_factory):
    """(store, run, data folder): the module's store, embedded, and a run trained on it."""
    data_root, records = synth_data
    root = tmp_path_factory.mktemp("browse")
    data = _with_label_name(data_root, root / "data", HOSTILE)
    store = build_store(root / "store", data, records)
    compute_embeddings(store, EmbedSpec(pretrained=True, image_size=PX), device="cpu")
    run = root / "run"
    train(TrainConfig(store=str(store), out=str(run), image_size=PX, batch_size=16, loader_workers=0, checkpoint_every=0,
                      epochs=2, lr=3e-3, pretrained=True, deep="fixed", parts="deep,wide"))
    return store, run, data


def files_of(*folders):
    """path -> sha256 of every file under the folders."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def server(made):
    """(base URL, answers, the store's and run's files as they were when the server started)."""
    store, run, _ = made
    answers = open_answers(store, str(run), workers=0)
    before = files_of(store, run)
    with Background(create_app(answers), bind("127.0.0.1", 0)) as url:
        yield url.rstrip("/"), answers, before


def get(server, path, **params):
    return requests.get(server[0] + path, params=params, timeout=60)


def post_photo(server, data, headers=None, **params):
    return requests.post(server[0] + "/api/search/photo", params=params, data=data, timeout=60,
                         headers=headers or {"Content-Type": "image/jpeg"})


def stored_probs(run):
    """{(split, image_id): probs} and the label ids, read back from the run's kept probabilities."""
    out = {}
    for path in sorted((run / "browse").glob("*.parquet")):
        split = path.name.rsplit("-", 1)[0]
        meta = json.loads(pq.read_schema(path).metadata[b"wdr_pipe"])
        t = pq.read_table(path)
        for i, p in zip(t.column("image_id").to_pylist(), t.column("probs").to_pylist()):
            out[(split, i)] = np.asarray(p, np.float32)
    return out, meta["label_ids"], np.asarray(meta["thresholds"])


def stored_jpeg(store, split, image_id):
    for shard in Store(store).image_shards(split):
        t = pq.read_table(shard, columns=["image_id", "jpeg"])
        ids = t.column("image_id").to_pylist()
        if image_id in ids:
            return t.column("jpeg")[ids.index(image_id)].as_py()
    raise KeyError(image_id)


def original(made, split, image_id):
    """The generated photo a stored image was fetched from (not in the store: embedded on the fly)."""
    return (made[2] / "images" / split / f"{image_id}.jpg").read_bytes()


# -- the precomputed answers ------------------------------------------------------------------------------
def test_a_restart_reads_the_kept_probabilities_and_scores_nothing(made, server):
    store, run, _ = made
    kept = sorted((run / "browse").glob("*.parquet"))
    assert [p.name.rsplit("-", 1)[0] for p in kept] == ["test", "train", "validation"]
    mtimes = [p.stat().st_mtime_ns for p in kept]
    again = open_answers(store, str(run), workers=0)
    assert "model" not in again.seconds and "kept" in again.seconds  # served before the model is loaded
    assert again.model is None and again.loading is not None
    np.testing.assert_array_equal(again.probs, server[1].probs)
    assert again.ready() is None and again.model is not None  # then it loads, and its sources are the kept ones
    (record,) = (run / "browse").glob("start-*.json")
    assert [p.stat().st_mtime_ns for p in kept] == mtimes and record.exists()
    # a checkpoint touched since: everything is loaded and checked again, but nothing is scored again
    ckpt, text = run / "checkpoints" / "best.safetensors", record.read_bytes()
    was = ckpt.stat()
    os.utime(ckpt, ns=(was.st_atime_ns, was.st_mtime_ns + 10**9))
    try:
        third = open_answers(store, str(run), workers=0)
        assert "model" in third.seconds and third.loading is None and third.model is not None
        assert [p.stat().st_mtime_ns for p in kept] == mtimes and record.read_bytes() != text
        np.testing.assert_array_equal(third.probs, server[1].probs)
    finally:
        os.utime(ckpt, ns=(was.st_atime_ns, was.st_mtime_ns))
        record.write_bytes(text)
    assert not np.isnan(again.probs).any() and again.probs.shape == (72, 24)
    manifest = Store(store).search_files(again.embeddings.key, "train")["manifest"]
    assert manifest.exists()  # similar's own index, built once and kept in the store


# -- the API ----------------------------------------------------------------------------------------------
def test_info_and_labels_describe_the_store_and_run(server):
    info = get(server, "/api/info").json()
    assert info["store"] == "store" and info["images"] == 72 and info["network"] is False
    assert info["allow_urls"] is False and info["max_upload_bytes"] == MAX_BYTES == 20 * 2**20  # predict's cap
    assert [(s["name"], s["images"], s["searchable"]) for s in info["splits"]] == [
        ("test", 8, True), ("train", 48, True), ("validation", 16, True)]
    assert info["run"]["name"] == "run" and info["run"]["thresholds"] == "tuned" and "path" not in info["run"]
    labels = get(server, "/api/labels").json()["labels"]
    assert len(labels) == 24 and labels[0]["name"] == HOSTILE and all(lab["model"] for lab in labels)


def test_photo_query_gives_tags_and_the_most_similar_images(made, server, tmp_path):
    store, run, _ = made
    r = post_photo(server, original(made, "validation", "3"))
    assert r.status_code == 200, r.text
    doc = r.json()
    probs, label_ids, thresholds = stored_probs(run)
    tags = doc["query"]["tags"]
    assert [t["on"] for t in tags] == sorted([t["on"] for t in tags], reverse=True)
    assert all(t["on"] == (t["p"] >= t["threshold"]) for t in tags)
    # the photo is the very image fetched into the store: the same pixels, the same probabilities
    want = probs[("validation", "3")]
    for t in tags:
        assert t["p"] == pytest.approx(float(want[label_ids.index(t["id"])]), abs=0.02)
    first = doc["results"][0]
    assert (first["split"], first["image_id"]) == ("validation", "3") and first["score"] > 0.97
    scores = [x["score"] for x in doc["results"]]
    assert scores == sorted(scores, reverse=True) and doc["total"] == 72 and len(scores) == 24
    # the train split's order is wdr-pipe similar's for the photo as fetch stores it (resized, re-encoded)
    photo = made[2] / "images" / "validation" / "3.jpg"
    as_stored = tmp_path / "as-stored.jpg"
    spec = {k: v for k, v in fetch_settings(store, "train").items() if k in FetchConfig.__dataclass_fields__}
    as_stored.write_bytes(process(photo.read_bytes(), FetchConfig(**spec))[0])
    want_ids = [x["image_id"] for x in similar(store, str(as_stored), k=5, split="train").results]
    r = post_photo(server, photo.read_bytes(), **{"in": "train", "per_page": "5"})
    assert [x["image_id"] for x in r.json()["results"]] == want_ids
    assert all(x["split"] == "train" and x["labels"] for x in r.json()["results"])
    card = r.json()["results"][0]
    assert card["thumb"].startswith("/api/image/thumb?") and "predicted" in card


def test_a_photos_tags_from_the_shared_backbone_equal_the_whole_models(made, server):
    a = server[1]
    assert a.model.shares(a.embeddings.key)  # a Deep fixed run from these embeddings: the head alone scores a photo
    jpeg = process(original(made, "test", "5"), a.spec)[0]
    image = decode_rgb(jpeg)
    whole = a.model.photo_probs([image], [jpeg])
    head = a.model.photo_probs([image], [jpeg], a.embeddings.vectors([image]))
    np.testing.assert_allclose(head, whole, atol=1e-4)


def test_pasted_png_and_paged_photo_results(made, server):
    buf = io.BytesIO()
    Image.open(io.BytesIO(original(made, "train", "5"))).save(buf, "PNG")
    one = post_photo(server, buf.getvalue(), {"Content-Type": "image/png"}, per_page="10").json()
    two = post_photo(server, buf.getvalue(), {"Content-Type": "image/png"}, per_page="10", page="2").json()
    assert one["results"][0]["image_id"] == "5" and one["pages"] == 8 and two["page"] == 2
    seen = {(x["split"], x["image_id"]) for x in one["results"]}
    assert not seen & {(x["split"], x["image_id"]) for x in two["results"]}
    assert one["results"][-1]["score"] >= two["results"][0]["score"]


def test_tag_query_ranks_by_the_models_probability(made, server):
    _, run, _ = made
    probs, label_ids, _ = stored_probs(run)
    a, b = label_ids.index(2), label_ids.index(7)
    for mode, combine in (("and", lambda p: p[a] * p[b]), ("or", lambda p: 1 - (1 - p[a]) * (1 - p[b]))):
        doc = get(server, "/api/search/tags", tags="2,7", mode=mode, per_page="100").json()
        assert doc["total"] == 72 and doc["query"]["mode"] == mode
        got = [(x["split"], x["image_id"]) for x in doc["results"]]
        want = sorted(probs, key=lambda k: (-combine(probs[k]), 0))
        scores = [x["score"] for x in doc["results"]]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, [combine(probs[k]) for k in got], atol=1e-4)
        assert scores[0] == pytest.approx(combine(probs[want[0]]), abs=1e-4)
    by_name = get(server, "/api/search/tags", tags="dress, RED").json()
    assert [t["id"] for t in by_name["query"]["tags"]] == [2, 7]


def test_tag_query_on_true_labels_a_split_and_pages(server):
    doc = get(server, "/api/search/tags", tags="2,7", match="true", per_page="100").json()
    assert doc["total"] > 0 and doc["query"]["match"] == "true"
    assert all({2, 7} <= {lab["id"] for lab in x["labels"]} for x in doc["results"])
    either = get(server, "/api/search/tags", tags="2,7", match="true", mode="or", per_page="100").json()
    assert either["total"] > doc["total"]
    assert all({2, 7} & {lab["id"] for lab in x["labels"]} for x in either["results"])
    val = get(server, "/api/search/tags", tags="2", **{"in": "validation"}, per_page="5").json()
    assert val["total"] == 16 and val["pages"] == 4 and {x["split"] for x in val["results"]} == {"validation"}
    pages = [get(server, "/api/search/tags", tags="2", per_page="7", page=str(p)).json() for p in (1, 2, 11)]
    assert [len(p["results"]) for p in pages] == [7, 7, 2] and pages[0]["pages"] == 11
    all_ids = [(x["split"], x["image_id"]) for p in pages for x in p["results"]]
    assert len(set(all_ids)) == len(all_ids)


def test_one_image_marks_missed_and_extra_labels(made, server):
    _, run, _ = made
    probs, label_ids, thresholds = stored_probs(run)
    doc = get(server, "/api/image", id="4", split="validation").json()
    true = {lab["id"] for lab in doc["labels"]}
    on = {label_ids[j] for j in np.flatnonzero(probs[("validation", "4")] >= thresholds)}
    status = {t["id"]: t["status"] for t in doc["tags"]}
    assert {i for i, s in status.items() if s == "correct"} == true & on
    assert {i for i, s in status.items() if s == "missed"} == true - on
    assert {i for i, s in status.items() if s == "extra"} == on - true
    sim = doc["similar"]["results"]
    assert len(sim) == 12 and ("validation", "4") not in {(x["split"], x["image_id"]) for x in sim}
    like = get(server, "/api/search/like", id="4", split="validation", per_page="12").json()
    assert [x["image_id"] for x in like["results"]] == [x["image_id"] for x in sim]
    assert like["total"] == 71 and like["query"]["image_id"] == "4"
    test = get(server, "/api/image", id="2", split="test").json()
    assert test["labels"] is None and all(t["status"] in ("predicted", "") for t in test["tags"])


def test_thumbnails_and_images_come_from_the_shards_with_caching_headers(made, server):
    store = made[0]
    jpeg = stored_jpeg(store, "train", "9")
    item = get(server, "/api/image", id="9", split="train").json()
    r = requests.get(server[0] + item["jpeg"], timeout=30)
    assert r.status_code == 200 and r.content == jpeg and r.headers["content-type"] == "image/jpeg"
    assert "immutable" in r.headers["cache-control"] and r.headers["etag"]
    assert requests.get(server[0] + item["jpeg"], headers={"If-None-Match": r.headers["etag"]},
                        timeout=30).status_code == 304
    thumb = requests.get(server[0] + item["thumb"], timeout=30)
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == Image.open(io.BytesIO(jpeg)).size
    plain = get(server, "/api/image/thumb", id="9", split="train")  # no version: revalidated each time
    assert plain.headers["cache-control"] == "private, no-cache" and plain.headers["etag"] == thumb.headers["etag"]
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_saliency_map_for_a_chosen_label(server):
    r = get(server, "/api/image/saliency", id="4", split="validation", label="2")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(r.content))
    assert im.size == (PX, PX) and np.asarray(im).std() > 5
    again = get(server, "/api/image/saliency", id="4", split="validation", label="Dress")
    assert again.content == r.content


def _png_claiming(width, height):
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_every_bad_request_is_a_4xx_with_one_line(made, server):
    jpeg = original(made, "train", "1")
    cases = [
        (lambda: post_photo(server, b"this is not an image at all, just text"), 422, r"upload: not a decodable image"),
        (lambda: post_photo(server, b""), 400, r"upload: empty"),
        (lambda: post_photo(server, jpeg[: len(jpeg) // 2]), 422, r"corrupt or truncated image"),
        (lambda: post_photo(server, _png_claiming(30000, 30000)), 422, r"decompression bomb.*\(too_many_pixels\)"),
        (lambda: post_photo(server, _png_claiming(9000, 9000)), 422, r"9000x9000 pixels is over the limit of 80000000 \(too_many_pixels\)"),
        (lambda: post_photo(server, b"\xff" * (20 * 2**20 + 1)), 413, r"over the cap of 20 MB"),
        (lambda: requests.post(server[0] + "/api/search/photo", files={"f": jpeg}, timeout=30), 415, r"not a form"),
        (lambda: post_photo(server, jpeg, url="http://127.0.0.1:9/x.jpg"), 403, r"start .* with --allow-urls"),
        (lambda: post_photo(server, jpeg, page="0"), 400, r"page=0: out of range"),
        (lambda: post_photo(server, jpeg, page="50", per_page="24"), 400, r"similarity results go 1000 deep"),
        (lambda: get(server, "/api/image", id="424242", split="train"), 404, r"image '424242' is not in split 'train'"),
        (lambda: get(server, "/api/image", id="../../etc/passwd"), 404, r"'../../etc/passwd' is not in the store"),
        (lambda: get(server, "/api/image/jpeg", id="/etc/passwd", split="train"), 404, r"not in split"),
        (lambda: get(server, "/api/image/thumb", id="1", split="../images"), 404, r"split '../images' is not in"),
        (lambda: get(server, "/api/image", id="3"), 400, r"id '3' is in several splits \(test, train, validation\)"),
        (lambda: get(server, "/api/image"), 400, r"id: missing"),
        (lambda: get(server, "/api/search/like", id="nope", split="train"), 404, r"not in split 'train'"),
        (lambda: get(server, "/api/search/tags", tags="2,no such label"), 400, r"unknown label 'no such label'"),
        (lambda: get(server, "/api/search/tags", tags=""), 400, r"tags: none given"),
        (lambda: get(server, "/api/search/tags", tags=",".join(["2"] * 21)), 400, r"at most 20"),
        (lambda: get(server, "/api/search/tags", tags="999"), 400, r"unknown label '999'"),
        (lambda: get(server, "/api/search/tags", tags="2", page="abc"), 400, r"page='abc': not a whole number"),
        (lambda: get(server, "/api/search/tags", tags="2", page="-3"), 400, r"page=-3: out of range"),
        (lambda: get(server, "/api/search/tags", tags="2", page="99"), 400, r"past the last page \(3\) of 72"),
        (lambda: get(server, "/api/search/tags", tags="2", per_page="1000"), 400, r"per_page=1000: out of range"),
        (lambda: get(server, "/api/search/tags", tags="2", mode="xor"), 400, r"mode='xor': use one of and, or"),
        (lambda: get(server, "/api/search/tags", tags="2", match="guess"), 400, r"match='guess'"),
        (lambda: get(server, "/api/search/tags", tags="2", **{"in": "holdout"}), 400, r"in='holdout': split"),
        (lambda: get(server, "/api/image/saliency", id="4", split="validation", label="2,7"), 400, r"one label"),
        (lambda: get(server, "/api/nope"), 404, r"/api/nope: no such page or API route"),
        (lambda: get(server, "/api/search/photo"), 405, r"GET /api/search/photo: not allowed"),
        (lambda: requests.get(server[0] + "/api/info", headers={"Host": "evil.example:80"}, timeout=30), 421,
         r"Host 'evil.example:80' is not this server's address"),
    ]
    for call, status, message in cases:
        r = call()
        assert r.status_code == status, (message, r.status_code, r.text)
        error = r.json()["error"]
        assert re.search(message, error) and "\n" not in error and "Traceback" not in error, error
    assert post_photo(server, jpeg).status_code == 200  # the server is still well


def test_without_a_run_photo_search_over_the_embeddings_and_true_labels(made, server):
    store = made[0]
    key = server[1].embeddings.key
    bare = open_answers(store, embeddings=key)
    assert not bare.has_model and bare.run is None and bare.loading is None
    with Background(create_app(bare), bind("127.0.0.1", 0)) as url:
        info = requests.get(url + "api/info", timeout=30).json()
        assert info["run"] is None and info["embeddings"]["key"] == key
        r = requests.post(url + "api/search/photo", data=original(made, "train", "7"), timeout=60).json()
        assert "tags" not in r["query"] and r["results"][0]["image_id"] == "7"
        assert "predicted" not in r["results"][0] and r["results"][0]["labels"]
        doc = requests.get(url + "api/search/tags", params={"tags": "2"}, timeout=30).json()
        assert doc["query"]["match"] == "true" and doc["predicted"] is None
        with_dress = len(bare.postings[bare.labels.position(2)])
        assert doc["total"] == with_dress and all(2 in {x["id"] for x in r["labels"]} for r in doc["results"])
        for path, params, message in (("api/search/tags", {"tags": "2", "match": "model"}, r"no run was given"),
                                      ("api/image/saliency", {"id": "4", "split": "validation", "label": "2"},
                                       r"no run was given")):
            bad = requests.get(url + path, params=params, timeout=30)
            assert bad.status_code == 400 and re.search(message, bad.json()["error"])
        assert requests.get(url + "api/image", params={"id": "4", "split": "validation"}, timeout=30).json()["similar"]


def test_urls_are_fetched_only_when_allowed_with_fetchs_limits(made, server):
    answers = server[1]
    with ImageServer(made[2]) as files, Background(create_app(answers, allow_urls=True), bind("127.0.0.1", 0)) as url:
        ok = requests.post(url + "api/search/photo", params={"url": f"{files.base_url}/images/train/6.jpg"}, timeout=60)
        assert ok.status_code == 200 and ok.json()["results"][0]["image_id"] == "6"
        for target, message in ((f"{files.base_url}/images/train/none.jpg", r"answered HTTP 404"),
                                ((made[2] / "images" / "train" / "6.jpg").as_uri(), r"only http:// and https://"),
                                ("/etc/passwd", r"only http:// and https://")):
            r = requests.post(url + "api/search/photo", params={"url": target}, timeout=60)
            assert r.status_code == 422 and re.search(message, r.json()["error"]), r.text
        assert requests.get(url + "api/info", timeout=30).json()["allow_urls"] is True


def test_served_on_the_network_only_when_asked(server):
    sock = bind("0.0.0.0", 0)
    port = sock.getsockname()[1]
    app = create_app(server[1], network=True, address="http://example:1/", loopback_only=False)
    with Background(app, sock):
        info = requests.get(f"http://127.0.0.1:{port}/api/info", headers={"Host": "buildhost:1"}, timeout=30).json()
        assert info["network"] is True and info["address"] == "http://example:1/"
    assert next(p for p in cli.commands["browse"].params if p.name == "host").default == "127.0.0.1"


# -- the page, in a real headless Chromium ---------------------------------------------------------------
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    import os

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                "--window-size=1280,1100", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def visible(driver, css):
    from selenium.webdriver.common.by import By

    return [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]


def open_page(driver, server, query=""):
    driver.get(server[0] + "/" + query)
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


def cards(driver):
    """(image id, split) of the grid's cards, once they are there."""
    wait(driver, lambda d: visible(d, "#grid .card"))
    return [tuple(e.text.split(" · ")) for e in visible(driver, "#grid .card .id")]


def no_page_errors(driver):
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_page_photo_upload_shows_tags_and_similar_images_then_one_image(made, server, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    assert "127.0.0.1" not in browser.find_element(By.ID, "network").text  # the banner is off on loopback
    assert not visible(browser, "#network")
    browser.find_element(By.ID, "file").send_keys(str(made[2] / "images" / "validation" / "3.jpg"))
    assert cards(browser)[0] == ("3", "validation")
    tags = [e.text for e in visible(browser, "#query .tag")]
    assert tags and all(re.search(r"\d\.\d{3}$", t) for t in tags)
    assert "Most similar stored images" in browser.find_element(By.ID, "grid-title").text
    score = visible(browser, "#grid .card .score")[0].text
    assert float(score) > 0.97
    first_page = cards(browser)
    browser.find_element(By.XPATH, "//nav[@id='pager']/button[text()='Next']").click()  # the same photo, page 2
    wait(browser, lambda d: "page 2 of 3" in d.find_element(By.ID, "pager").text)
    assert not set(cards(browser)) & set(first_page)
    browser.find_element(By.XPATH, "//nav[@id='pager']/button[text()='Previous']").click()
    wait(browser, lambda d: "page 1 of 3" in d.find_element(By.ID, "pager").text)
    assert cards(browser) == first_page
    visible(browser, "#grid .card a.thumb")[1].click()  # the second most similar image
    wait(browser, lambda d: visible(d, "#view table.labels"))
    q = urllib.parse.parse_qs(urllib.parse.urlparse(browser.current_url).query)
    assert set(q) == {"image", "split"}
    statuses = {e.text for e in visible(browser, "#view table.labels td:last-child")}
    assert statuses & {"✓ correct", "✗ missed", "+ extra"}
    browser.find_element(By.XPATH, "//button[text()='Show saliency']").click()
    wait(browser, lambda d: d.execute_script(
        "const i = document.querySelector('.saliency img'); return i && !i.hidden && i.naturalWidth > 0"))
    assert len(cards(browser)) == 12  # its similar images
    browser.find_element(By.LINK_TEXT, "More like this →").click()
    wait(browser, lambda d: "like=" in d.current_url and visible(d, "#query .preview"))
    assert "More like image" in browser.find_element(By.CSS_SELECTOR, "#query h2").text
    no_page_errors(browser)


def test_page_tag_search_with_the_keyboard_and_a_shared_address(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(browser, server)
    browser.find_element(By.TAG_NAME, "body").send_keys("/")  # focuses the label field
    field = browser.switch_to.active_element
    assert field.get_attribute("id") == "tag-input"
    field.send_keys("dre")
    wait(browser, lambda d: visible(d, "#suggest li"))
    assert visible(browser, "#suggest li")[0].text.startswith("Dress")
    field.send_keys(Keys.ENTER)
    field.send_keys("red", Keys.ARROW_DOWN, Keys.ARROW_UP, Keys.ENTER)
    assert [e.text.rstrip("×").strip() for e in visible(browser, "#chips .chip")] == ["Dress", "Red"]
    field.send_keys(Keys.ENTER)  # no list open: submits
    wait(browser, lambda d: "tags=" in d.current_url)
    shown = cards(browser)
    q = urllib.parse.parse_qs(urllib.parse.urlparse(browser.current_url).query)
    assert q["tags"] == ["2,7"] and q["mode"] == ["and"]
    api = get(server, "/api/search/tags", tags="2,7", mode="and").json()
    assert shown == [(x["image_id"], x["split"]) for x in api["results"]]
    # the address is the query: opened afresh (bookmarked, shared), it shows the same page
    shared = "?tags=2,7&mode=or&in=train&page=2"
    open_page(browser, server, shared)
    api = get(server, "/api/search/tags", tags="2,7", mode="or", page="2", **{"in": "train"}).json()
    assert cards(browser) == [(x["image_id"], x["split"]) for x in api["results"]]
    assert "page 2 of 2" in browser.find_element(By.ID, "pager").text
    assert browser.find_element(By.ID, "split").get_attribute("value") == "train"
    browser.find_element(By.LINK_TEXT, "Previous").click()
    wait(browser, lambda d: "page=1" in d.current_url)
    open_page(browser, server, "?image=5&split=train")
    wait(browser, lambda d: visible(d, "#view h2"))
    assert browser.find_element(By.CSS_SELECTOR, "#view h2").text == "Image 5"
    browser.back()
    wait(browser, lambda d: "page=1" in d.current_url and visible(d, "#grid .card"))
    no_page_errors(browser)


def test_page_shows_a_hostile_label_name_as_text(server, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, server, "?tags=1&match=true")
    cards(browser)
    heading = browser.find_element(By.ID, "grid-title").text
    assert HOSTILE in heading
    assert any(e.text == HOSTILE for e in visible(browser, "#grid .tag"))
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.execute_script("return document.scripts.length") == 1
    assert not browser.find_elements(By.CSS_SELECTOR, "img[src='x']")
    no_page_errors(browser)


def test_page_drop_and_paste_and_a_bad_file(made, server, browser):
    from selenium.webdriver.common.by import By
    import base64

    open_page(browser, server)
    send = """const [kind, b64, type] = arguments;
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "photo", {type}));
        if (kind === "drop") document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        else document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: dt, bubbles: true, cancelable: true}));"""
    photo = base64.b64encode(original(made, "train", "8")).decode()
    browser.execute_script(send, "drop", photo, "image/jpeg")
    wait(browser, lambda d: visible(d, "#grid .card") and cards(d)[0] == ("8", "train"))
    open_page(browser, server, "?tags=2")
    cards(browser)
    browser.execute_script(send, "paste", photo, "image/jpeg")
    wait(browser, lambda d: visible(d, "#query .preview") and cards(d)[0] == ("8", "train"))
    assert urllib.parse.urlparse(browser.current_url).query == ""
    browser.execute_script(send, "drop", base64.b64encode(b"just some text").decode(), "text/plain")
    wait(browser, lambda d: visible(d, "#error"))
    assert "not a decodable image" in browser.find_element(By.ID, "error").text
    assert not visible(browser, "#grid .card")




def test_the_store_and_run_are_unchanged_by_the_requests(made, server):
    assert files_of(made[0], made[1]) == server[2]


# -- the command: where it listens, and every bad input before the server starts --------------------------
def _outbound_address():
    """This machine's address towards the network (not loopback), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_the_command_prints_the_address_serves_on_loopback_and_stops_on_ctrl_c(made, server):
    import signal

    store, run, _ = made
    p = subprocess.Popen([sys.executable, "-m", "wdr_pipe.cli", "browse", "--store", str(store), "--run", str(run),
                          "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        m = re.match(r"wdr-pipe browse: (http://127\.0\.0\.1:(\d+)/)  \(72 images, tags of run run; ready in "
                     r"[\d.]+ s; Ctrl-C stops it\)$", line.rstrip("\n"))
        assert m, line
        url, port = m.group(1), int(m.group(2))
        assert requests.get(url + "api/info", timeout=30).json()["images"] == 72
        r = requests.post(url + "api/search/photo", data=original(made, "train", "2"), timeout=300)
        assert r.status_code == 200 and r.json()["results"][0]["image_id"] == "2"  # waited for the model
        ip = _outbound_address()
        if ip is not None:  # bound to loopback: not reachable on the machine's other address
            with pytest.raises(OSError):
                socket.create_connection((ip, port), timeout=5).close()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0 and "wdr-pipe browse: stopped" in err and "Traceback" not in err


def one_line_error(args, fragment):
    res = CliRunner().invoke(cli, ["browse", *args])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert re.search(fragment, lines[0]), lines[0]
    return lines[0]


def test_bad_input_is_one_line_before_the_server_starts(made, synth_data, tmp_path):
    store, run, data = made
    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        one_line_error(["--store", str(store), "--run", str(run), "--port", str(port)],
                       rf"--port {port}: already in use on 127.0.0.1 .*; pass another --port, or --port 0")
    finally:
        taken.close()
    one_line_error(["--store", str(store), "--host", "10.255.255.1", "--port", "0"],
                   r"--host 10.255.255.1: not an address of this machine .*; use 127.0.0.1, 0.0.0.0")
    one_line_error(["--store", str(store), "--host", "no.such.host.invalid"], r"--host no.such.host.invalid: not a name")
    one_line_error(["--store", str(store), "--run", str(tmp_path), "--port", "0"], r"not a wdr-pipe run folder")
    one_line_error(["--store", str(store), "--embeddings", "0123abcd", "--port", "0"],
                   r"--embeddings 0123abcd: the store .* has no such key \(it has: [0-9a-f]{12}\)")
    bare = tmp_path / "bare"
    shutil.copytree(store, bare, ignore=shutil.ignore_patterns("embeddings"))
    one_line_error(["--store", str(bare), "--port", "0"],
                   rf"no embeddings to search by photo; run 'wdr-pipe embed --store {bare} --pretrained' first")
    # a store whose label space is not the run's: its label map has one label more
    other = _with_label_name(data, tmp_path / "data", "T-shirt")
    with open(other / "label_map.csv", "a", encoding="utf-8") as f:
        f.write("99,9,Extra,extra\n")
    records = [r for r in synth_data[1] if r.split == "test"]
    wider = build_store(tmp_path / "wider", other, records, features=False, stats=False)
    one_line_error(["--store", str(wider), "--run", str(run), "--port", "0"],
                   r"its label space \(25 labels, ids 1..99\) differs from the run's \(24 labels, ids 1..24\)")


def test_missing_embeddings_name_the_embed_command_that_makes_them(made, tmp_path):
    store, run, _ = made
    bare, run_copy = tmp_path / "store", tmp_path / "run"
    shutil.copytree(store, bare, ignore=shutil.ignore_patterns("embeddings"))
    shutil.copytree(run, run_copy, ignore=shutil.ignore_patterns("browse"))
    line = one_line_error(["--store", str(bare), "--run", str(run_copy), "--port", "0"],
                          rf"no embeddings of the run's backbone tf_efficientnet_lite0 \(the store has: none\); "
                          rf"run 'wdr-pipe embed --store {bare} --run {run_copy}' first")
    command = re.search(r"run '(wdr-pipe embed [^']+)'", line).group(1).split()[1:]
    res = CliRunner().invoke(cli, [*command, "--split", "train", "--split", "validation"])
    assert res.exit_code == 0, res.output
    a = open_answers(bare, str(run_copy), workers=0)
    (note,) = [n for n in a.notes if n.startswith("split test")]
    assert f"run 'wdr-pipe embed --store {bare} --run {run_copy} --image-size {PX} --split test' to add it" in note
    assert [x.split for x in a.indexes] == ["train", "validation"] and not np.isnan(a.probs).any()
    res = CliRunner().invoke(cli, re.search(r"run '(wdr-pipe embed [^']+)'", note).group(1).split()[1:])
    assert res.exit_code == 0, res.output
    again = open_answers(bare, str(run_copy), workers=0)
    assert not again.notes and [x.split for x in again.indexes] == ["test", "train", "validation"]
    assert "model" in again.seconds  # the store changed (a split's embeddings): checked and loaded again
