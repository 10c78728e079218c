"""Index readers: every input format, every malformed case, ingest into a store."""
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io

from helpers import REPO
from wdr_pipe.cache import Store
from wdr_pipe.cache.schema import INDEX, LABEL_MAP
from wdr_pipe.errors import UserError
from wdr_pipe.demo import synth
from wdr_pipe.pipeline.index import clothing
from wdr_pipe.pipeline.index import ingest, read_index, read_label_map

FGVC5 = {
    "info": {},
    "images": [
        {"url": "https://a.example/1.jpg", "imageId": "1"},
        {"url": ["https://a.example/2.jpg", "https://b.example/2.jpg"], "imageId": "2"},
        {"url": "https://a.example/3.jpg", "imageId": "3"},
    ],
    "annotations": [
        {"labelId": ["95", "66", "137", "66"], "imageId": "2"},
        {"labelId": ["20"], "imageId": "1"},
        {"labelId": [], "imageId": "3"},
    ],
    "license": {},
}


def write_json(path, doc):
    path.write_text(json.dumps(doc))
    return path


def only(result):
    """The one (split, table) of a read_index result, with the table's schema checked."""
    assert len(result) == 1
    name, table = result[0]
    assert table.schema.equals(INDEX)
    return name, table.to_pylist()


# -- FGVC5 JSON -------------------------------------------------------------------

def test_fgvc5_json(tmp_path):
    name, rows = only(read_index(write_json(tmp_path / "train.json", FGVC5)))
    assert name == "train"
    assert rows == [
        {"image_id": "1", "urls": ["https://a.example/1.jpg"], "labels": [20]},
        {"image_id": "2", "urls": ["https://a.example/2.jpg", "https://b.example/2.jpg"], "labels": [66, 95, 137]},
        {"image_id": "3", "urls": ["https://a.example/3.jpg"], "labels": []},
    ]


def test_fgvc5_test_split_is_unlabelled_and_split_can_be_renamed(tmp_path):
    doc = {"images": FGVC5["images"]}
    name, rows = only(read_index(write_json(tmp_path / "test.json", doc), split="holdout"))
    assert name == "holdout"
    assert [r["labels"] for r in rows] == [None, None, None]


def test_fgvc5_image_without_annotation_is_null(tmp_path):
    doc = dict(FGVC5, annotations=FGVC5["annotations"][:2])
    _, rows = only(read_index(write_json(tmp_path / "train.json", doc)))
    assert [r["labels"] for r in rows] == [[20], [66, 95, 137], None]


def test_fgvc5_from_the_synthetic_generator(tmp_path):
    records = synth.make_dataset(tmp_path, {"train": 4, "test": 2}, size_range=(32, 40))
    paths = synth.write_fgvc5_json(tmp_path, records, "http://127.0.0.1:1")
    _, train = only(read_index(paths["train"]))
    assert [(r["image_id"], tuple(r["labels"])) for r in train] == \
        [(r.image_id, r.labels) for r in records if r.split == "train"]
    assert train[0]["urls"] == ["http://127.0.0.1:1/images/train/1.jpg"]
    _, test = only(read_index(paths["test"]))
    assert all(r["labels"] is None for r in test)


# -- CSV / TSV / Parquet ---------------------------------------------------------

def test_csv_urls_and_labels(tmp_path):
    p = tmp_path / "shop.csv"
    p.write_text("image_id,url,labels\n"
                 "007,https://x/7.jpg|https://y/7.jpg,3 1 3\n"
                 "NA, https://x/8.jpg  https://y/8.jpg ,\n"
                 "010,https://x/10.jpg,12\n")
    name, rows = only(read_index(p))
    assert name == "shop"
    assert rows == [
        {"image_id": "007", "urls": ["https://x/7.jpg", "https://y/7.jpg"], "labels": [1, 3]},
        {"image_id": "NA", "urls": ["https://x/8.jpg", "https://y/8.jpg"], "labels": []},
        {"image_id": "010", "urls": ["https://x/10.jpg"], "labels": [12]},
    ]


def test_tsv_without_labels_is_unlabelled(tmp_path):
    p = tmp_path / "test.tsv"
    p.write_text("image_id\turls\n1\thttps://x/1.jpg\n2\thttps://x/2.jpg|https://x/2b.jpg\n")
    name, rows = only(read_index(p))
    assert name == "test"
    assert rows == [{"image_id": "1", "urls": ["https://x/1.jpg"], "labels": None},
                    {"image_id": "2", "urls": ["https://x/2.jpg", "https://x/2b.jpg"], "labels": None}]


def test_parquet_with_lists(tmp_path):
    p = tmp_path / "val.parquet"
    pq.write_table(pa.table({"image_id": ["a", "b", "c"],
                             "urls": [["https://x/a"], ["https://x/b", "https://y/b"], ["https://x/c"]],
                             "labels": pa.array([[5, 2, 5], None, []], pa.list_(pa.int64()))}), p)
    name, rows = only(read_index(p))
    assert name == "val"
    assert [r["labels"] for r in rows] == [[2, 5], None, []]
    assert rows[1]["urls"] == ["https://x/b", "https://y/b"]


def test_parquet_with_strings_and_integer_ids(tmp_path):
    p = tmp_path / "train.parquet"
    pq.write_table(pa.table({"image_id": [1, 2], "url": ["https://x/1", "https://x/2 https://y/2"],
                             "labels": ["66 95 66", "1"]}), p)
    _, rows = only(read_index(p))
    assert rows == [{"image_id": "1", "urls": ["https://x/1"], "labels": [66, 95]},
                    {"image_id": "2", "urls": ["https://x/2", "https://y/2"], "labels": [1]}]


# -- Clothing Attributes folder ------------------------------------------------

NAN = math.nan
GT = {  # 5 images; rows are images 000001..000005
    "category": [7, NAN, 3, 1, NAN],
    "sleevelength": [3, 2, NAN, 1, NAN],
    "neckline": [2, NAN, 1, 3, NAN],
    "gender": [2, 1, NAN, 1, NAN],
    "pattern_stripe": [2, 1, NAN, 2, NAN],
    "black": [1, 2, 2, NAN, NAN],
}


def make_clothing(root, gt=GT, n=5, images=None):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in images or range(1, n + 1):
        img = synth.draw_image(synth.sample_garment(rng), 40, 48, seed=i)
        (root / "images" / f"{i:06d}.jpg").write_bytes(synth.encode_jpeg(img))
    for attr, values in gt.items():
        scipy.io.savemat(root / "labels" / f"{attr}_GT.mat", {"GT": np.array(values, float).reshape(-1, 1)})
    return root


def lid(name):
    return next(r[0] for r in clothing.LABEL_MAP_ROWS if r[2] == name)


def test_clothing_folder(tmp_path):
    folder = make_clothing(tmp_path / "ClothingAttributeDataset")
    name, rows = only(read_index(folder))
    assert name == "clothing"
    assert [r["image_id"] for r in rows] == ["000001", "000002", "000003", "000004", "000005"]
    assert rows[0]["urls"] == [(folder / "images" / "000001.jpg").resolve().as_uri()]
    assert rows[0]["urls"][0].startswith("file://")
    expected = [
        ["category=dress", "sleevelength=long", "neckline=round", "gender=female", "pattern_stripe=yes"],
        ["sleevelength=short", "gender=male", "black=yes"],
        ["category=t-shirt", "neckline=v", "black=yes"],
        ["category=shirt", "sleevelength=none", "neckline=other", "gender=male", "pattern_stripe=yes"],
        [],  # every attribute unknown
    ]
    assert [r["labels"] for r in rows] == [sorted(lid(x) for x in names) for names in expected]


def test_clothing_label_map_is_complete_and_numbered():
    table = clothing.label_map_table()
    assert table.schema.equals(LABEL_MAP)
    assert table["labelId"].to_pylist() == list(range(1, 38))
    assert len(set(table["taskName"].to_pylist())) == 26
    names = table["labelName"].to_pylist()
    assert {"pattern_stripe=yes", "sleevelength=long", "category=dress", "gender=female", "gender=male",
            "skin_exposure=high"} <= set(names)
    assert "black=no" not in names and "skin_exposure=low" not in names


def test_clothing_gaps_in_images_keep_rows_aligned(tmp_path):
    folder = make_clothing(tmp_path / "c", images=[2, 4])
    _, rows = only(read_index(folder, split="clothes"))
    assert [r["image_id"] for r in rows] == ["000002", "000004"]
    assert rows[1]["labels"] == sorted(lid(x) for x in ["category=shirt", "sleevelength=none", "neckline=other",
                                                         "gender=male", "pattern_stripe=yes"])


# -- malformed input: one UserError naming file, record and problem ----------

BAD_JSON = {
    "not JSON": ("train.json", "{images: [", "train.json: not valid JSON"),
    "no images key": ("train.json", {"annotations": []}, "train.json: no 'images' list"),
    "image without url": ("train.json", {"images": [{"imageId": "1"}]}, r"images\[0\]: no 'url' key"),
    "image without id": ("train.json", {"images": [{"url": "u"}]}, r"images\[0\]: no 'imageId' key"),
    "duplicate image id": ("train.json", {"images": [{"url": "u", "imageId": "1"}, {"url": "v", "imageId": "1"}]},
                           r"images\[1\] \(image '1'\): image id '1' appears twice"),
    "unknown image": ("train.json", dict(FGVC5, annotations=[{"labelId": ["1"], "imageId": "9"}]),
                      r"annotations\[0\]: image '9' is not in 'images'"),
    "annotation without labels": ("train.json", dict(FGVC5, annotations=[{"imageId": "1"}]),
                                  r"annotations\[0\]: no 'labelId' key"),
    "label not an integer": ("train.json", dict(FGVC5, annotations=[{"labelId": ["1", "x7"], "imageId": "2"}]),
                             r"images\[1\] \(image '2'\): label 'x7' is not an integer"),
    "label is a float": ("train.json", dict(FGVC5, annotations=[{"labelId": [1.5], "imageId": "2"}]),
                         r"image '2'\): label 1.5 is not an integer"),
    "two annotations for one image": ("train.json", dict(FGVC5, annotations=FGVC5["annotations"] * 2),
                                      r"annotations\[3\]: image '2' already has an annotation \(annotations\[0\]\)"),
    "url of the wrong type": ("train.json", {"images": [{"url": 5, "imageId": "1"}]},
                              r"image '1'\): url must be a string or a list"),
    "no images": ("train.json", {"images": []}, "no images in the file"),
    "empty file": ("train.json", "", "train.json: empty file"),
    "csv without url": ("a.csv", "image_id,link\n1,u\n", "a.csv: needs columns image_id and url"),
    "csv without image_id": ("a.csv", "id,url\n1,u\n", "needs columns image_id and url .*found id, url"),
    "csv bad label": ("a.csv", "image_id,url,labels\n1,u,3\n2,v,3;4\n", r"row 2 \(image '2'\): label '3;4'"),
    "csv duplicate id": ("a.csv", "image_id,url\n1,u\n1,v\n", r"row 2 \(image '1'\): image id '1' appears twice"),
    "csv missing url": ("a.csv", "image_id,url\n1,u\n2,\n", r"row 2 \(image '2'\): no URL"),
    "csv header only": ("a.csv", "image_id,url\n", "no images in the file"),
    "tsv negative label": ("a.tsv", "image_id\turl\tlabels\n1\tu\t-3\n", "image '1'\\): negative label id"),
    "unknown extension": ("train.xml", "<images/>", r"unknown extension '.xml'"),
    "split name": ("my train.json", FGVC5, "split name 'my train' is not a plain name.*--split"),
    "not parquet": ("a.parquet", "image_id,url\n", "a.parquet: not a readable Parquet file"),
}


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_malformed_input(tmp_path, case):
    name, content, message = BAD_JSON[case]
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UserError, match=message) as err:
        read_index(path)
    assert "\n" not in str(err.value) and str(path.name) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="nope.json: no such file; check the path"):
        read_index(tmp_path / "nope.json")


def test_parquet_null_url_names_the_row(tmp_path):
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"image_id": ["a", "b"], "urls": [["https://x/a"], ["https://x/b", None]]}), p)
    with pytest.raises(UserError, match=r"row 2 \(image 'b'\): null or empty URL"):
        read_index(p)


@pytest.mark.parametrize("case, message", [
    ("value out of range", r"sleevelength_GT.mat: row 2 \(image 000002\): value 4 is not one of 1..3 or NaN"),
    ("rows differ", r"black_GT.mat: GT has 3 rows but the other _GT.mat files have 5"),
    ("no GT variable", r"category_GT.mat: no variable 'GT'"),
    ("image beyond GT", r"000009.jpg: image file name does not match a GT row"),
    ("no labels folder", r"c: a folder must be the Clothing Attributes Dataset with images/ and labels/"),
])
def test_malformed_clothing_folder(tmp_path, case, message):
    gt = dict(GT)
    if case == "value out of range":
        gt["sleevelength"] = [3, 4, NAN, 1, NAN]
    if case == "rows differ":
        gt["black"] = [1, 2, 2]
    folder = make_clothing(tmp_path / "c", gt=gt, images=[1, 2, 9] if case == "image beyond GT" else None)
    if case == "no GT variable":
        scipy.io.savemat(folder / "labels" / "category_GT.mat", {"labels": np.ones((5, 1))})
    if case == "no labels folder":
        for p in (folder / "labels").iterdir():
            p.unlink()
        (folder / "labels").rmdir()
    with pytest.raises(UserError, match=message):
        read_index(folder)


# -- label map -------------------------------------------------------------------

def test_label_map_round_trip(tmp_path):
    p = tmp_path / "iMat_fashion_2018_label_map_228.csv"
    p.write_text("labelId,taskId,labelName,taskName\n131,2,Pink,color\n66,3,Female,gender\n20,1,Jacket,\n")
    table = read_label_map(p)
    assert table.schema.equals(LABEL_MAP)
    assert table.to_pylist() == [
        {"labelId": 20, "taskId": 1, "labelName": "Jacket", "taskName": None},
        {"labelId": 66, "taskId": 3, "labelName": "Female", "taskName": "gender"},
        {"labelId": 131, "taskId": 2, "labelName": "Pink", "taskName": "color"},
    ]
    store = Store(tmp_path / "store", create=True)
    doc = dict(FGVC5, annotations=[{"labelId": ["66", "131"], "imageId": "2"}, {"labelId": ["20"], "imageId": "1"}])
    ingest(store, [write_json(tmp_path / "train.json", doc)], label_map=p)
    assert pq.read_table(store.label_map_path).equals(table)
    assert read_label_map(store.label_map_path).equals(table)  # a stored map reads back the same


@pytest.mark.parametrize("content, message", [
    ("id,name\n1,a\n", "no labelId column"),
    ("labelId,labelName\n1,a\nx,b\n", "row 2: labelId 'x' is not an integer"),
    ("labelId,labelName\n1,a\n1,b\n", "labelId 1 appears twice"),
])
def test_bad_label_map(tmp_path, content, message):
    p = tmp_path / "map.csv"
    p.write_text(content)
    with pytest.raises(UserError, match=message):
        read_label_map(p)


# -- ingest ----------------------------------------------------------------------

def test_ingest_writes_indexes_and_is_idempotent(tmp_path):
    store = Store(tmp_path / "store", create=True)
    train = write_json(tmp_path / "train.json", FGVC5)
    test = write_json(tmp_path / "test.json", {"images": FGVC5["images"]})
    assert ingest(store, [test, train]) == ["test", "train"]
    assert store.splits() == ["test", "train"]
    written = pq.read_table(store.index_path("train"))
    assert written.equals(read_index(train)[0][1]) and written.schema.equals(INDEX)
    assert not store.label_map_path.exists()
    before = store.index_path("train").stat()
    assert ingest(store, [train]) == ["train"]
    after = store.index_path("train").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten


def test_ingest_refuses_a_different_index_for_the_same_split(tmp_path):
    store = Store(tmp_path / "store", create=True)
    ingest(store, [write_json(tmp_path / "train.json", FGVC5)])
    other = tmp_path / "other" / "train.json"
    other.parent.mkdir()
    write_json(other, dict(FGVC5, annotations=FGVC5["annotations"][:1]))
    with pytest.raises(UserError, match="index for split 'train' differs from the one already in .*--split NEWNAME"):
        ingest(store, [other])
    assert ingest(store, [other], split="train2") == ["train2"]


def test_ingest_refuses_two_inputs_for_one_split_and_writes_nothing(tmp_path):
    store = Store(tmp_path / "store", create=True)
    a = write_json(tmp_path / "train.json", FGVC5)
    b = tmp_path / "train.csv"
    b.write_text("image_id,url\n1,https://x/1.jpg\n")
    with pytest.raises(UserError, match="gives split 'train', as does .*train.json"):
        ingest(store, [a, b])
    bad = tmp_path / "validation.json"
    bad.write_text("[")
    with pytest.raises(UserError, match="validation.json: not valid JSON"):
        ingest(store, [a, bad])
    assert store.splits() == []


def test_ingest_clothing_folder_writes_its_label_map(tmp_path):
    store = Store(tmp_path / "store", create=True)
    assert ingest(store, [make_clothing(tmp_path / "c")]) == ["clothing"]
    assert pq.read_table(store.label_map_path).equals(clothing.label_map_table())
    assert pq.read_table(store.index_path("clothing")).num_rows == 5


def test_ingest_checks_labels_against_the_label_map(tmp_path):
    store = Store(tmp_path / "store", create=True)
    p = tmp_path / "map.csv"
    p.write_text("labelId,taskId,labelName,taskName\n20,1,Jacket,category\n66,3,Female,gender\n")
    with pytest.raises(UserError, match=r"train.json: image '2': label 95 is not in the label map .*map.csv"):
        ingest(store, [write_json(tmp_path / "train.json", FGVC5)], label_map=p)
    assert store.splits() == [] and not store.label_map_path.exists()


def test_docs_list_the_clothing_table():
    doc = (REPO / "docs" / "inputs.md").read_text(encoding="utf-8")
    rows = [line.strip("| ").split(" | ") for line in doc.splitlines() if line.startswith("| ") and "`" in line
            and "=" in line]
    documented = [(int(lid), int(task), name.strip("`"), attr) for attr, _, lid, name, task in rows]
    assert documented == clothing.LABEL_MAP_ROWS
    assert {(attr, int(value)): int(lid) for attr, value, lid, _, _ in rows} == clothing.LABEL_IDS


# -- URLs, compressed indexes and label ids, checked when read ------------------------

def test_csv_url_with_a_space_is_an_error_naming_the_row(tmp_path):
    p = tmp_path / "shop.csv"
    p.write_text("image_id,url\n1,https://x/1.jpg\n2,https://x/summer dress.jpg\n")
    with pytest.raises(UserError, match=r"shop.csv: row 2 \(image '2'\): 'dress.jpg' is not a URL .*%20") as e:
        read_index(p)
    assert "\n" not in str(e.value)


def test_a_bare_local_path_becomes_a_file_url_and_a_relative_one_is_refused(tmp_path):
    p = tmp_path / "local.csv"
    p.write_text("image_id,url\n1,/data/img/1.jpg\n2,file:///data/img/2.jpg|/data/my%img.jpg\n")
    _, rows = only(read_index(p))
    assert [r["urls"] for r in rows] == [["file:///data/img/1.jpg"], ["file:///data/img/2.jpg",
                                                                       "file:///data/my%25img.jpg"]]
    p.write_text("image_id,url\n1,img/1.jpg\n")
    with pytest.raises(UserError, match=r"row 1 \(image '1'\): 'img/1.jpg' is not a URL .*absolute path or a file://"):
        read_index(p)
    j = write_json(tmp_path / "train.json", {"images": [{"url": "www.example.com/1.jpg", "imageId": "1"}]})
    with pytest.raises(UserError, match=r"images\[0\] \(image '1'\): 'www.example.com/1.jpg' is not a URL"):
        read_index(j)


def test_json_and_list_urls_are_one_url_each_so_spaces_are_encoded(tmp_path):
    j = write_json(tmp_path / "train.json", {"images": [
        {"url": " https://x/summer dress.jpg\n", "imageId": "1"},
        {"url": ["https://x/a b.jpg", "/local/c d.jpg"], "imageId": "2"}]})
    _, rows = only(read_index(j))
    assert [r["urls"] for r in rows] == [["https://x/summer%20dress.jpg"],
                                          ["https://x/a%20b.jpg", "file:///local/c%20d.jpg"]]
    p = tmp_path / "val.parquet"
    pq.write_table(pa.table({"image_id": ["a"], "urls": [["https://x/a\tb.jpg"]]}), p)
    assert only(read_index(p))[1][0]["urls"] == ["https://x/a%09b.jpg"]


def test_gzipped_json_and_csv_read_like_their_plain_forms(tmp_path):
    import gzip

    (tmp_path / "plain").mkdir()
    plain = write_json(tmp_path / "plain" / "train.json", FGVC5)
    packed = tmp_path / "train.json.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert only(read_index(packed)) == only(read_index(plain))
    csv = tmp_path / "shop.csv.gz"
    csv.write_bytes(gzip.compress(b"image_id,url,labels\n1,https://x/1.jpg,3 2\n"))
    assert only(read_index(csv)) == ("shop", [{"image_id": "1", "urls": ["https://x/1.jpg"], "labels": [2, 3]}])
    tsv = tmp_path / "test.tsv.gz"
    tsv.write_bytes(gzip.compress(b"image_id\turl\n1\thttps://x/1.jpg\n"))
    assert only(read_index(tsv))[0] == "test"
    bad = tmp_path / "broken.json.gz"
    bad.write_bytes(gzip.compress(plain.read_bytes())[:40])  # truncated
    with pytest.raises(UserError, match=r"broken.json.gz: not a readable gzip file"):
        read_index(bad)
    (tmp_path / "x.parquet.gz").write_bytes(gzip.compress(b"PAR1"))
    with pytest.raises(UserError, match=r"gzipped .parquet is not read"):
        read_index(tmp_path / "x.parquet.gz")
    store = Store(tmp_path / "store", create=True)
    assert ingest(store, [packed]) == ["train"]


def test_label_ids_are_bounded_without_a_label_map(tmp_path):
    store = Store(tmp_path / "store", create=True)
    p = tmp_path / "train.csv"
    p.write_text("image_id,url,labels\n1,https://x/1.jpg,3 99999\n2,https://x/2.jpg,100000\n")
    with pytest.raises(UserError, match=r"train.csv: image '2': label 100000 is over 99,999, the largest label id "
                                        r"accepted without a label map; pass --label-map"):
        ingest(store, [p])
    assert not store.index_path("train").exists()
    lm = tmp_path / "labels.csv"
    lm.write_text("labelId,taskId,labelName,taskName\n3,1,a,x\n99999,1,b,x\n100000,1,c,x\n")
    assert ingest(store, [p], label_map=lm) == ["train"]  # a label map says which ids exist
    p2 = tmp_path / "validation.csv"
    p2.write_text("image_id,url,labels\n1,https://x/1.jpg,99999\n")
    assert ingest(Store(tmp_path / "other", create=True), [p2]) == ["validation"]
