"""What commands write, and the one line instead of a crash (issue 19 §2-§4), on the shared run and store
(``conftest.shared``: a vendor's label names that are mathtext, HTML and formulas; test ids with commas,
quotes, a newline and ``../``), through the real CLI.

- Writes that destroy: no output inside a store or a run folder (a ``run`` file's at plan time too), no two
  outputs on one path, only the output's own folder created.
- Files that are what they say: the submission and ``per_label.csv`` by the csv module, neutralised as OWASP
  advises; ``result.json`` of an evaluation after its report.
- One line, exit 1: mathtext in label names, a full disk while checkpointing, a damaged store, a text file or
  a decompression bomb as a photo (checked before any model is loaded).
"""
import csv
import io
import json
import shutil
import struct
import zlib

import pytest
from PIL import Image

from helpers import HOSTILE_IDS, HOSTILE_LABELS, cli_run, error_line
from wdr_pipe.cache import index_ids
from wdr_pipe.wdr.runs.checkpoint import load_checkpoint
from wdr_pipe.wdr.runs.evalfiles import read_cell, safe_cell
from wdr_pipe.wdr.runs.folder import RunFolder

FAST = ["--loader-workers", "0", "--batch-size", "16"]




@pytest.fixture
def copies(shared, tmp_path):
    """The shared store and run, copied (the run's store path left as it is: the shared store, unchanged)."""
    shutil.copytree(shared.store, tmp_path / "store")
    shutil.copytree(shared.run, tmp_path / "run")
    return tmp_path / "store", tmp_path / "run"


def snapshot(*roots):
    return {p: p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


# -- writes that destroy --------------------------------------------------------------------------------
def test_outputs_inside_a_run_or_a_store_or_on_one_path_are_refused_and_nothing_changes(copies, tmp_path):
    store, run = copies
    before = snapshot(store, run)
    (tmp_path / "link.csv").symlink_to(run / "config.json")
    predict = ["predict", "--store", store, "--run", run, *FAST]
    cases = [
        (predict + ["--out", run / "checkpoints" / "best.safetensors"], f"inside the run folder {run}"),
        (predict + ["--out", tmp_path / "sub.csv", "--probs", run / "checkpoints" / "last.safetensors"],
         "--probs .*: inside the run folder"),
        (predict + ["--out", run / "config.json"], "inside the run folder"),
        (predict + ["--out", tmp_path / "link.csv"], "inside the run folder"),  # a link is where it points
        (predict + ["--out", store / "images" / "train" / "part-00000.parquet"], f"inside the store {store}"),
        (predict + ["--out", tmp_path / "x.csv", "--probs", tmp_path / "." / "x.csv"],
         "--out and --probs are the same file"),
        (predict + ["--out", tmp_path / "no" / "such" / "x.csv"], f"the folder {tmp_path / 'no'} does not exist"),
        (["ensemble", run, tmp_path / "nope", "--out", run / "ens"], "--out .*: inside the run folder"),
        (["ensemble", run, tmp_path / "nope", "--out", store], f"inside the store {store}"),
        (["train", "--store", store, "--out", store / "runs" / "r", "--epochs", "1"], "inside the store"),
    ]
    for args, says in cases:
        import re

        assert re.search(says, error_line(cli_run(*args))), args
    assert snapshot(store, run) == before and not (tmp_path / "no").exists() and not (store / "runs").exists()


def test_a_run_files_predict_output_in_a_run_folder_is_refused_at_plan_time(shared, tmp_path):
    """The issue's file: ``[predict] out`` into a run folder of the same file, which does not exist yet."""
    cfg = tmp_path / "exp" / "run.toml"
    cfg.parent.mkdir()
    cfg.write_text(f'store = "{shared.store}"\nruns = "../runs"\n\n[train.t1]\nepochs = 1\n\n'
                   f'[predict]\nrun = "t1"\nout = "../runs/t1/checkpoints/best.safetensors"\n')
    line = error_line(cli_run("run", cfg, "--dry-run"))
    assert "[predict]" in line and "out " in line and f"inside the run folder {tmp_path / 'runs' / 't1'}" in line
    assert not (tmp_path / "runs").exists()


# -- files that are what they say ----------------------------------------------------------------------------
def test_submission_keeps_every_id_one_field_and_neutralises_formulas(copies, tmp_path):
    store, run = copies
    out = tmp_path / "new" / "sub.csv"  # its own folder is made
    res = cli_run("predict", "--store", store, "--run", run, "--split", "test", "--out", out, *FAST)
    assert res.exit_code == 0, res.output
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert rows[0] == ["image_id", "label_id"] and all(len(r) == 2 for r in rows)
    ids = [read_cell(r[0]) for r in rows[1:]]
    assert ids == index_ids(store, "test") and set(HOSTILE_IDS) <= set(ids)  # every row, exactly, in order
    written = {read_cell(r[0]): r[0] for r in rows[1:]}
    assert written['=HYPERLINK("http://x.example","y")'] == '\'=HYPERLINK("http://x.example","y")'
    assert written["@sum"] == "'@sum" and written["-5"] == "-5" and written["line\nbreak"] == "line\nbreak"
    assert not [r[0] for r in rows[1:] if r[0][:1] in "=+-@\t\r" and r[0] != "-5"]
    assert not [p for p in tmp_path.parents[1].rglob("escape*")]  # an id is never a path


def test_per_label_csv_and_the_report_show_label_names_as_text(shared):
    folder = shared.run / "eval" / "validation"
    rows = list(csv.DictReader(open(folder / "per_label.csv", newline="", encoding="utf-8")))
    names = {int(r["label_id"]): r["name"] for r in rows}
    for lid, name in HOSTILE_LABELS.items():
        assert names[lid] == safe_cell(name) and read_cell(names[lid]) == name
        assert names[lid][:1] not in "=+-@\t\r"
    assert [r["name"] for r in RunFolder(shared.run).evaluation("validation").read_per_label()][:8] == \
        [HOSTILE_LABELS[i] for i in range(1, 9)]
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert safe_cell("-0.5") == "-0.5" and safe_cell("'x") == "''x" and safe_cell(3) == 3
    assert safe_cell("\tx") == "'\tx" and safe_cell("\rx") == "'\rx" and safe_cell("1e5") == "1e5"


def test_evaluate_commits_after_the_report_and_a_failed_report_leaves_no_marker(copies, monkeypatch):
    """result.json is the evaluation's commit marker: written after report.html; when the report fails (a
    kill there, say), the folder holds no marker and no report of another evaluation."""
    store, run = copies
    folder = run / "eval" / "validation"
    res = cli_run("evaluate", "--store", store, "--run", run, "--saliency", "0", *FAST)  # mathtext names too
    assert res.exit_code == 0, res.output
    assert (folder / "result.json").stat().st_mtime_ns >= (folder / "report.html").stat().st_mtime_ns
    import wdr_pipe.report

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(wdr_pipe.report, "build_report", killed)
    res = cli_run("evaluate", "--store", store, "--run", run, "--tta", "flip", "--saliency", "0", *FAST)
    assert res.exit_code == 130
    assert json.loads((folder / "metrics.json").read_text())["tta"] == "flip"
    assert not (folder / "result.json").exists() and not (folder / "report.html").exists()


# -- one line instead of a crash ----------------------------------------------------------------------------
def bomb_png(path, side=30000):
    """A small valid PNG whose header says ``side`` x ``side`` pixels."""
    buf = io.BytesIO()
    Image.new("1", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_a_text_file_or_a_bomb_as_a_photo_is_one_line_before_any_model(shared, tmp_path, monkeypatch):
    import wdr_pipe.wdr.embed.search as search
    import wdr_pipe.wdr.score.predict as predict

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the query was checked")

    monkeypatch.setattr(search, "SearchIndex", no_model)
    monkeypatch.setattr(predict, "scorer_for", no_model)
    (tmp_path / "notes.jpg").write_text("not a photo")
    bomb = bomb_png(tmp_path / "huge.png")
    for args, says in [(("predict", "--run", shared.run, tmp_path / "notes.jpg"), "not a decodable image"),
                       (("predict", "--run", shared.run, bomb), "pass a smaller image"),
                       (("similar", "--store", shared.store, tmp_path / "notes.jpg"), "not a decodable image"),
                       (("similar", "--store", shared.store, bomb), "pass a smaller image")]:
        line = error_line(cli_run(*args))
        assert says in line and "tjDecompress" not in line


def test_a_photo_url_that_drips_is_one_line_within_its_bound(shared, monkeypatch):
    import time

    import wdr_pipe.wdr.score.predict as predict
    from wdr_pipe.demo.serve import ImageServer

    monkeypatch.setattr(predict, "DEADLINE", 1.0)
    with ImageServer(shared.data_root) as srv:
        t0 = time.monotonic()
        line = error_line(cli_run("predict", "--run", shared.run,
                                  srv.fault_url("drip", shared.photo.relative_to(shared.data_root).as_posix())))
    assert "still downloading after 1 s" in line and time.monotonic() - t0 < 30


@pytest.mark.parametrize("damage, command, says", [
    (lambda s: (s / "images" / "validation" / "part-00000.parquet").write_bytes(b"garbage!"),
     lambda s, r: ["evaluate", "--store", s, "--run", r, *FAST],
     "images/validation/part-00000.parquet: not a Parquet file.*remove part-00000.parquet and part-00000.stats"),
    (lambda s: (s / "index" / "test.parquet").write_bytes(b"PAR1 cut short"),
     lambda s, r: ["predict", "--store", s, "--run", r, "--out", s.parent / "sub.csv", *FAST],
     "index/test.parquet: unreadable .*run the same 'wdr-pipe fetch"),
    (lambda s: (s / "stats" / "train" / "cooccurrence.parquet").write_bytes(b"garbage!"),
     lambda s, r: ["report", "--run", r, "--store", s],
     "stats/train/cooccurrence.parquet: not a Parquet file.*wdr-pipe stats --store"),
    (lambda s: next((s / "embeddings").glob("*/train/part-00000.parquet")).unlink(),
     lambda s, r: ["similar", "--store", s, "1"],
     "embeddings/.*/train/part-00000.parquet: missing.*'wdr-pipe embed --store .* --split train --rebuild'"),
])
def test_a_damaged_store_names_the_file_and_the_stage_that_writes_it(copies, damage, command, says):
    import re

    store, run = copies
    damage(store)
    line = error_line(cli_run(*command(store, run)))
    assert re.search(says, line) and "unexpected" not in line, line


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(shared, tmpfs):
    """A tmpfs with room for one set of checkpoints (the shared run's sizes) and a little more: the second
    epoch's checkpoint does not fit."""
    sizes = sum(p.stat().st_size for p in (shared.run / "checkpoints").iterdir())
    disk = tmpfs(str(sizes + 3 * 2 ** 20))
    out = disk / "run"
    res = cli_run("train", "--store", shared.store, "--out", out, "--pretrained", "--epochs", "2",
                  "--image-size", "64", "--checkpoint-every", "0", "--lr", "1e-3", *FAST)
    line = error_line(res)
    assert "no space left on device while writing the checkpoint" in line and "is kept" in line
    run = RunFolder(out)
    assert load_checkpoint(run.last)["step"] == 3 and load_checkpoint(run.best)["step"] <= 3
    assert not list(run.checkpoints.glob(".tmp-*")) and not run.result.exists()
