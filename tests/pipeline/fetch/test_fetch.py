"""wdr-pipe fetch end to end against a real loopback server."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers import subprocess_env
from wdr_pipe.cache import Store, commit_path
from wdr_pipe.cli import cli
from wdr_pipe.errors import UserError
from wdr_pipe.pipeline.configs import DownloadConfig
from wdr_pipe.pipeline.fetch import FetchConfig, FetchOptions, fetch
from wdr_pipe.pipeline.runner import TaskFailed
from wdr_pipe.demo.serve import ImageServer

FAST = DownloadConfig(connect_timeout=2, read_timeout=2, deadline=5, retries=2, backoff=0.05, max_bytes=4_000_000)
EXPECTED = {  # fault kind -> final status
    "404": "not_found", "500-then-ok": "ok", "429": "ok", "drip": "timeout", "truncated": "decode_error",
    "html": "not_image", "oversized": "too_large", "bomb": "too_many_pixels", "bomb-jpeg": "too_many_pixels",
    "redirect": "ok", "redirect-loop": "too_many_redirects", "reset": "connection_error", "slow-headers": "timeout",
}


def write_csv(path: Path, rows) -> Path:
    lines = ["image_id,url,labels"] + [f"{i},{u},{' '.join(map(str, lab))}" for i, u, lab in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_split(store: Path, split: str):
    s = Store(store)
    ok = [r for p in s.image_shards(split) for r in pq.read_table(p).to_pylist()]
    failed = [r for p in s.image_shards(split)
              for r in pq.read_table(p.with_name(p.name.replace(".parquet", ".failures.parquet"))).to_pylist()]
    return ok, failed


@pytest.fixture(scope="module")
def server(synth_data):
    root, _ = synth_data
    with ImageServer(root) as srv:
        yield srv


def test_every_fault_ends_with_its_status_within_the_bound(server, tmp_path):
    rows = [(k, server.fault_url(k, "images/train/1.jpg"), [1]) for k in EXPECTED]
    rows += [(f"good{i}", server.url(f"images/train/{i}.jpg"), [2, 3]) for i in range(2, 8)]
    rows.append(("bad-scheme", "ftp://127.0.0.1/x.jpg", [1]))
    index = write_csv(tmp_path / "faults.csv", rows)
    t0 = time.monotonic()
    summary = fetch(tmp_path / "store", [index], FetchConfig(size=96), FetchOptions(shard_size=8, threads=8,
                    download=FAST), scheduler="inline")
    elapsed = time.monotonic() - t0
    ok, failed = read_split(tmp_path / "store", "faults")
    got = {r["image_id"]: "ok" for r in ok} | {r["image_id"]: r["status"] for r in failed}
    assert got == {**EXPECTED, **{f"good{i}": "ok" for i in range(2, 8)}, "bad-scheme": "bad_url"}
    assert summary.ok == len(ok) and summary.failed == len(failed)
    # liveness, not speed: drip and slow-headers are cut by the per-image deadline, and the 8 threads
    # take the faults side by side, so the run is bounded by a few deadlines, not by their sum
    assert elapsed < 4 * FAST.deadline
    for r in ok:
        im = Image.open(io.BytesIO(r["jpeg"]))
        assert min(im.size) == 96 and (r["width"], r["height"]) == im.size and r["labels"] in ([1], [2, 3])


def test_several_urls_are_tried_in_order(server, tmp_path):
    urls = [server.fault_url("404", "images/train/2.jpg"), server.url("images/train/2.jpg")]
    index = tmp_path / "multi.json"
    index.write_text(json.dumps({"images": [{"url": urls, "imageId": "1"}],
                                 "annotations": [{"labelId": ["3", "3", "5"], "imageId": "1"}]}))
    fetch(tmp_path / "s", [index], FetchConfig(size=64), FetchOptions(download=FAST), scheduler="inline")
    ok, _ = read_split(tmp_path / "s", "multi")
    assert [(r["url"], r["labels"]) for r in ok] == [(urls[1], [3, 5])]


def test_rerun_does_no_work_and_retry_failed_fetches_only_failures(server, tmp_path):
    flaky = server.fault_url("500-then-ok", "images/train/3.jpg", n=FAST.retries + 1)  # fails one whole run
    rows = [("flaky", flaky, [1])] + [(str(i), server.url(f"images/train/{i}.jpg"), [1]) for i in range(4, 9)]
    index = write_csv(tmp_path / "train.csv", rows)
    run = dict(cfg=FetchConfig(size=64), opts=FetchOptions(shard_size=3, download=FAST), scheduler="inline")
    first = fetch(tmp_path / "s", [index], **run)
    assert (first.ok, first.failed) == (5, 1)
    before = dict(server.hits)  # (not reset(): that would also restart the flaky URL's failure count)
    again = fetch(tmp_path / "s", [index], **run)
    assert dict(server.hits) == before and again.splits["train"]["shards_run"] == 0 and again.ok == 5
    retried = fetch(tmp_path / "s", [index], retry_failed=True, **run)
    new_hits = {k: v - before.get(k, 0) for k, v in server.hits.items() if v != before.get(k, 0)}
    assert new_hits == {"/fault/500-then-ok/images/train/3.jpg": 1}
    assert retried.ok == 6 and retried.failed == 0
    ok, failed = read_split(tmp_path / "s", "train")
    assert [r["image_id"] for r in ok] == ["flaky", "4", "5", "6", "7", "8"] and failed == []


def test_changed_image_settings_are_refused(server, tmp_path):
    index = write_csv(tmp_path / "train.csv", [("1", server.url("images/train/1.jpg"), [1])])
    fetch(tmp_path / "s", [index], FetchConfig(size=64), FetchOptions(download=FAST), scheduler="inline")
    with pytest.raises(UserError, match="size=64.*new --store"):
        fetch(tmp_path / "s", [index], FetchConfig(size=128), FetchOptions(download=FAST), scheduler="inline")


def test_duplicate_content_is_reported(server, tmp_path):
    url = server.url("images/train/5.jpg")
    index = write_csv(tmp_path / "train.csv", [("a", url, [1]), ("b", url, [2]), ("c", server.url("images/train/6.jpg"), [1])])
    summary = fetch(tmp_path / "s", [index], FetchConfig(size=64), FetchOptions(download=FAST), scheduler="inline")
    assert summary.splits["train"]["duplicates"] == 1
    dups = pq.read_table(tmp_path / "s" / "images" / "train" / "_duplicates.parquet").to_pylist()
    assert [sorted(d["image_ids"]) for d in dups] == [["a", "b"]]


def test_fetch_on_a_two_worker_cluster_by_address_matches_inline(server, dask_cluster, tmp_path):
    rows = [(str(i), server.url(f"images/train/{i}.jpg"), [i % 3 + 1]) for i in range(1, 13)]
    index = write_csv(tmp_path / "train.csv", rows)
    opts = FetchOptions(shard_size=4, download=FAST)
    fetch(tmp_path / "a", [index], FetchConfig(size=64), opts, scheduler="inline")
    seen = []
    summary = fetch(tmp_path / "b", [index], FetchConfig(size=64), opts, scheduler=dask_cluster, progress=seen.append)
    assert summary.ok == 12 and summary.splits["train"]["shards_run"] == 3
    assert seen[-1].done == 12 and seen[-1].total == 12
    a, _ = read_split(tmp_path / "a", "train")
    b, _ = read_split(tmp_path / "b", "train")
    assert [r["image_id"] for r in a] == [r["image_id"] for r in b]
    assert [r["jpeg"] for r in a] == [r["jpeg"] for r in b]


def test_cli_fetch_and_its_errors(server, tmp_path):
    index = write_csv(tmp_path / "train.csv", [(str(i), server.url(f"images/train/{i}.jpg"), [1]) for i in range(1, 4)])
    runner = CliRunner()
    res = runner.invoke(cli, ["fetch", str(index), "--store", str(tmp_path / "s"), "--size", "64", "--workers", "1",
                              "--scheduler", "inline", "--timeout", "2"])
    assert res.exit_code == 0, res.output
    assert "train: 3 ok, 0 failed" in res.output
    res = runner.invoke(cli, ["fetch", str(index), "--store", str(tmp_path / "s"), "--size", "99", "--scheduler", "inline"])
    assert res.exit_code == 1 and "Error: " in res.output and "new --store" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = runner.invoke(cli, ["fetch", str(bad), "--store", str(tmp_path / "s2")])
    assert res.exit_code == 1 and "bad.json" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_kill_and_resume_stores_every_image_exactly_once(synth_data, tmp_path):
    root, records = synth_data
    train = [r for r in records if r.split == "train"]
    with ImageServer(root) as srv:
        # every 4th URL drips until its 0.6 s deadline: each 4-row shard takes that long, so the run
        # (12 shards, one after the other inline) is slow enough to be killed in the middle
        rows = [(r.image_id, srv.fault_url("drip", r.path) if int(r.image_id) % 4 == 0 else srv.url(r.path), list(r.labels))
                for r in train]
        index = write_csv(tmp_path / "train.csv", rows)
        cmd = [sys.executable, "-m", "wdr_pipe.cli", "fetch", str(index), "--store", str(tmp_path / "s"), "--size", "64",
               "--shard-size", "4", "--workers", "1", "--threads", "4", "--deadline", "0.6", "--timeout", "0.5",
               "--scheduler", "inline"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        folder = tmp_path / "s" / "images" / "train"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(folder.glob("*.stats.json"))) < 2:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        committed = list(folder.glob("*.stats.json"))
        assert 2 <= len(committed) < len(train) // 4, "the kill should land mid-run"
        for p in folder.glob("part-*.parquet"):  # any file under a final name is complete
            pq.read_metadata(p)
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
    ok, failed = read_split(tmp_path / "s", "train")
    good = sorted(r.image_id for r in train if int(r.image_id) % 4)
    assert sorted(r["image_id"] for r in ok) == good  # exactly once each
    assert sorted(r["image_id"] for r in failed) == sorted(r.image_id for r in train if int(r.image_id) % 4 == 0)
    assert not list(folder.glob(".tmp-*"))
    assert all(commit_path(p).exists() for p in folder.glob("part-?????.parquet"))


def test_per_host_cap_is_respected_and_every_item_runs_once():
    import threading

    from wdr_pipe.pipeline.fetch.shard import run_per_host

    hosts = ["a"] * 6 + ["b"] * 3 + ["c"]
    running, peak, done = {}, {}, []
    lock = threading.Lock()

    def fn(i):
        with lock:
            running[hosts[i]] = running.get(hosts[i], 0) + 1
            peak[hosts[i]] = max(peak.get(hosts[i], 0), running[hosts[i]])
        time.sleep(0.01)
        with lock:
            running[hosts[i]] -= 1
            done.append(i)

    run_per_host(len(hosts), hosts, fn, threads=8, per_host=2)  # more threads than slots: must not hang
    assert sorted(done) == list(range(len(hosts)))
    assert peak["a"] == 2 and peak["b"] == 2 and peak["c"] == 1


def test_refused_connection_is_a_connection_error_not_a_timeout(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    index = write_csv(tmp_path / "train.csv", [("1", f"http://127.0.0.1:{port}/x.jpg", [1])])
    summary = fetch(tmp_path / "s", [index], FetchConfig(size=64), FetchOptions(download=FAST), scheduler="inline")
    assert summary.splits["train"]["by_status"] == {"connection_error": 1}


@pytest.fixture
def tiny_disk(tmpfs):
    """A 400k tmpfs (see conftest.tmpfs)."""
    return tmpfs("400k")


def test_full_disk_is_one_clear_error_and_leaves_no_partial_file(server, tmp_path, tiny_disk):
    index = write_csv(tmp_path / "train.csv", [(str(i), server.url(f"images/train/{i}.jpg"), [1]) for i in range(1, 31)])
    res = CliRunner().invoke(cli, ["fetch", str(index), "--store", str(tiny_disk / "s"), "--size", "320",
                                   "--shard-size", "10", "--scheduler", "inline"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "no space left on device; free some space and run the same command again" in res.output
    folder = tiny_disk / "s" / "images" / "train"
    assert not list(folder.glob(".tmp-*"))
    committed = [p for p in folder.glob("part-?????.parquet") if commit_path(p).exists()]
    assert committed, "the shards that fitted before the disk filled up are kept"
    for p in committed:  # whatever looks committed is whole
        assert pq.read_table(p).num_rows == json.loads(commit_path(p).read_text())["ok"]


# -- failures that are not an image's, exit codes, Ctrl-C, file modes -------------------

def test_an_unexpected_error_fails_the_shard_instead_of_every_image(server, tmp_path, monkeypatch):
    index = write_csv(tmp_path / "train.csv", [(str(i), server.url(f"images/train/{i}.jpg"), [1]) for i in range(1, 5)])
    monkeypatch.setenv("http_proxy", "ftp://proxy.invalid:21")  # a broken setup: urllib3 refuses that proxy
    with pytest.raises(TaskFailed) as e:
        fetch(tmp_path / "s", [index], FetchConfig(size=64), FetchOptions(shard_size=2, download=FAST),
              scheduler="inline")
    monkeypatch.delenv("http_proxy")
    assert "\n" not in str(e.value) and "part-00000.parquet failed with ProxySchemeUnknown" in str(e.value)
    assert e.value.log_path.parent == tmp_path / "s" / "_logs" and "Traceback" in e.value.log_path.read_text()
    folder = tmp_path / "s" / "images" / "train"
    assert not list(folder.glob("*.stats.json")) and not list(folder.glob("part-*.parquet"))  # nothing committed
    summary = fetch(tmp_path / "s", [index], FetchConfig(size=64), FetchOptions(shard_size=2, download=FAST),
                    scheduler="inline")  # the rerun does the shards: no image was recorded as failed
    assert (summary.ok, summary.failed) == (4, 0)


def test_a_bug_in_the_image_code_is_not_recorded_as_failed_images(server, tmp_path):
    index = write_csv(tmp_path / "train.csv", [(str(i), server.url(f"images/train/{i}.jpg"), [1]) for i in range(1, 5)])
    cfg = FetchConfig(size=64)
    object.__setattr__(cfg, "resize_mode", "bogus")  # slipped past the checks: the resize code raises ValueError
    with pytest.raises(TaskFailed, match=r"part-00000.parquet failed with ValueError: unknown resize mode 'bogus'"):
        fetch(tmp_path / "s", [index], cfg, FetchOptions(shard_size=2, threads=2, download=FAST), scheduler="inline")
    assert not list((tmp_path / "s" / "images" / "train").glob("*.stats.json"))  # no shard of "error" rows


def test_cli_unexpected_error_exits_4_with_one_line_and_the_log(server, tmp_path):
    index = write_csv(tmp_path / "train.csv", [(str(i), server.url(f"images/train/{i}.jpg"), [1]) for i in range(1, 4)])
    env = subprocess_env(http_proxy="ftp://proxy.invalid:21", no_proxy="")  # a proxy setting urllib3 refuses
    proc = subprocess.run([sys.executable, "-m", "wdr_pipe.cli", "fetch", str(index), "--store", str(tmp_path / "s"),
                           "--scheduler", "inline"], capture_output=True, text=True, timeout=120, env=env)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert proc.returncode == 4 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "failed with ProxySchemeUnknown" in errors[0]
    log = Path(errors[0].split("the traceback is in ")[1].split(";")[0])
    assert log.parent == tmp_path / "s" / "_logs" and "Traceback (most recent call last)" in log.read_text()
    assert not list((tmp_path / "s" / "images" / "train").glob("*.stats.json"))


def test_exit_code_is_0_with_failed_images_and_3_over_max_failed(server, tmp_path):
    rows = [(str(i), server.url(f"images/train/{i}.jpg"), [1]) for i in range(1, 4)]
    rows.append(("gone", server.fault_url("404", "images/train/4.jpg"), [1]))  # 1 of 4 fails: 25%
    index = write_csv(tmp_path / "train.csv", rows)
    base = ["fetch", str(index), "--store", str(tmp_path / "s"), "--size", "64", "--scheduler", "inline"]
    res = CliRunner().invoke(cli, base)
    assert res.exit_code == 0 and "train: 3 ok, 1 failed (not_found 1)" in res.output
    res = CliRunner().invoke(cli, base + ["--max-failed", "0.25"])  # not more than a quarter
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, base + ["--max-failed", "0.1"])  # the same store, nothing to fetch: same verdict
    assert res.exit_code == 3 and "train: 3 ok, 1 failed" in res.output
    assert "Error: 1 of 4 images failed (25.0%), more than --max-failed 0.1 allows" in res.output


def test_ctrl_c_ends_a_cluster_run_within_seconds_with_one_line_and_no_dask_noise(server, tmp_path):
    rows = [(str(i), server.fault_url("drip", f"images/train/{i}.jpg"), [1]) for i in range(1, 13)]
    index = write_csv(tmp_path / "train.csv", rows)
    proc = subprocess.Popen([sys.executable, "-m", "wdr_pipe.cli", "fetch", str(index), "--store", str(tmp_path / "s"),
                             "--shard-size", "3", "--workers", "2", "--threads", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=subprocess_env())
    deadline = time.monotonic() + 120
    drips = lambda: sum(n for path, n in server.hits.items() if path.startswith("/fault/drip/"))  # noqa: E731
    before = drips()
    while time.monotonic() < deadline and drips() < before + 4 and proc.poll() is None:
        time.sleep(0.1)  # both workers are downloading (slowly)
    assert proc.poll() is None, proc.communicate()
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert proc.returncode == 130 and took < 5, (proc.returncode, took, err)
    assert errors == ["Error: interrupted; finished shards are kept, run the same command again to resume"], err
    assert "Traceback" not in err and "distributed" not in err and "WARNING" not in err, err


def test_written_files_honour_the_umask(server, tmp_path):
    from wdr_pipe.cache.atomic import write_text_atomic

    index = write_csv(tmp_path / "train.csv", [(str(i), server.url(f"images/train/{i}.jpg"), [1]) for i in range(1, 4)])
    for umask, mode in ((0o022, 0o644), (0o002, 0o664)):
        old = os.umask(umask)
        try:
            store = tmp_path / f"s{umask:o}"
            fetch(store, [index], FetchConfig(size=64), FetchOptions(shard_size=2, download=FAST), scheduler="inline")
            write_text_atomic(tmp_path / f"plain{umask:o}.txt", "x")
        finally:
            os.umask(old)
        files = [p for p in store.rglob("*") if p.is_file()] + [tmp_path / f"plain{umask:o}.txt"]
        assert len(files) > 6
        assert {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in files} == \
               {p.relative_to(tmp_path).as_posix(): oct(mode) for p in files}
