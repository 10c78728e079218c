"""Files from elsewhere are data, never code (issue 19 §1): a run folder and a store as a colleague might share
them, with a crafted pickle in every checkpoint-like file a command reads, through the real CLI.

A crafted file is what ``torch.save`` or ``pickle`` writes of an object whose unpickling runs ``touch MARKER``
(the ``os.system`` of the issue's reproduction). Every command that reads a run or a store is run over it; the
marker must never appear, and a command that needs the file fails with one line (exit 1). One finished run,
its twin, their stacked ensemble and a store with the run's embeddings are built once (``conftest.shared``);
each case works on copies. ``convert-checkpoint`` is checked on a real checkpoint written the old way.
"""
import json
import os
import pickle
import shutil

import pytest
import torch
from helpers import cli_run, error_line
from wdr_pipe.wdr.embed.stage import EmbedConfig
from wdr_pipe.wdr.model.backbone import file_sha256
from wdr_pipe.wdr.runs.checkpoint import load_checkpoint, state_digest
from wdr_pipe.wdr.runs.folder import RunFolder

FAST = ["--loader-workers", "0", "--batch-size", "16"]


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def craft(path, marker, how="torch.save"):
    """Replace ``path`` with a pickle whose loading would create ``marker``."""
    path.unlink(missing_ok=True)
    if how == "torch.save":
        torch.save({"model": Payload(marker), "step": 1}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))


@pytest.fixture
def world(shared, tmp_path):
    """Copies of the shared store and run folders under ``tmp_path`` (the ensemble's members and the store's
    embeddings pointed at the copies, as a colleague's folders would be)."""
    w = type(shared)(**vars(shared))
    for name in ("store", "run", "twin", "ensemble"):
        setattr(w, name, tmp_path / name)
        shutil.copytree(getattr(shared, name), getattr(w, name))
    doc = json.loads((w.ensemble / "config.json").read_text())
    for m, path in zip(doc["members"], (w.run, w.twin)):
        m["path"] = str(path)
    (w.ensemble / "config.json").write_text(json.dumps(doc))
    w.tmp = tmp_path
    return w


def point_embeddings_at(w, checkpoint):
    """The store's embeddings made from ``checkpoint`` of the run copy: config, key and folder as a hostile
    store would have them (the key is the hash of a config naming that very file)."""
    folder = w.store / "embeddings" / w.key
    doc = json.loads((folder / "config.json").read_text())
    doc["config"]["weights"] = file_sha256(checkpoint)
    doc["source"] = {"run": str(w.run), "checkpoint": str(checkpoint)}
    key = EmbedConfig(**{k: v for k, v in doc["config"].items() if k in EmbedConfig.__dataclass_fields__}).key
    (folder / "config.json").write_text(json.dumps(doc))
    folder.rename(folder.with_name(key))
    return key




# case: (files to craft, relative to the world, or to remove: "rm:PATH"; the command; what its one line says)
CASES = {
    "evaluate": (["run/checkpoints/best.safetensors"], lambda w: ["evaluate", "--store", w.store, "--run", w.run,
                                                                  *FAST], "never loads"),
    "evaluate --checkpoint last": (["run/checkpoints/last.safetensors"],
                                   lambda w: ["evaluate", "--store", w.store, "--run", w.run, "--checkpoint",
                                              "last", *FAST], "never loads"),
    "predict a split": (["run/checkpoints/best.safetensors"],
                        lambda w: ["predict", "--store", w.store, "--run", w.run, "--split", "test", "--out",
                                   w.tmp / "sub.csv", *FAST], "never loads"),
    "predict a photo": (["run/checkpoints/best.safetensors"], lambda w: ["predict", "--run", w.run, w.photo],
                        "never loads"),
    "thresholds": (["run/checkpoints/best.safetensors"], lambda w: ["thresholds", "--run", w.run,
                                                                    "--loader-workers", "0"], "never loads"),
    "ensemble": (["twin/checkpoints/best.safetensors"],
                 lambda w: ["ensemble", w.run, w.twin, "--out", w.tmp / "e2", "--store", w.store, *FAST],
                 "never loads"),
    "an ensemble's member": (["twin/checkpoints/best.safetensors"],
                             lambda w: ["evaluate", "--store", w.store, "--run", w.ensemble, *FAST], "never loads"),
    "an ensemble's stacker": (["ensemble/stacker.safetensors"],
                              lambda w: ["evaluate", "--store", w.store, "--run", w.ensemble, *FAST],
                              "never loads"),
    "train --resume": (["run/checkpoints/last.safetensors", "rm:run/result.json"],
                       lambda w: ["train", "--resume", w.run], "never loads"),
    "train --init": (["run/checkpoints/best.safetensors"],
                     lambda w: ["train", "--store", w.store, "--out", w.tmp / "new", "--init", w.run, "--epochs",
                                "1", "--image-size", "64", "--loader-workers", "0"], "never loads"),
    "embed --run": (["run/checkpoints/best.safetensors"], lambda w: ["embed", "--store", w.store, "--run", w.run],
                    "never loads"),
    "similar with a photo": (["run/checkpoints/best.safetensors"],
                             lambda w: ["similar", "--store", w.store, "--embeddings",
                                        point_embeddings_at(w, w.run / "checkpoints" / "best.safetensors"), w.photo],
                             "never loads"),
    "report": (["run/eval/validation/saliency.safetensors"], lambda w: ["report", "--run", w.run], "never loads"),
    "a run of the old format": (["run/checkpoints/best.pt", "run/checkpoints/last.pt",
                                 "rm:run/checkpoints/best.safetensors", "rm:run/checkpoints/last.safetensors"],
                                lambda w: ["evaluate", "--store", w.store, "--run", w.run, *FAST],
                                "convert-checkpoint"),
    "similar naming an old checkpoint": (["run/checkpoints/best.pt"],
                                         lambda w: ["similar", "--store", w.store, "--embeddings",
                                                    point_embeddings_at(w, w.run / "checkpoints" / "best.pt"),
                                                    w.photo], "convert-checkpoint"),
    "convert-checkpoint": (["run/checkpoints/best.pt", "rm:run/checkpoints/best.safetensors"],
                           lambda w: ["convert-checkpoint", w.run],
                           "not a checkpoint of wdr-pipe"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_crafted_file_is_refused_in_one_line_and_never_runs(world, case):
    files, command, says = CASES[case]
    marker = world.tmp / "RAN"
    for i, rel in enumerate(files):
        if rel.startswith("rm:"):  # e.g. result.json: an unfinished run, what --resume continues
            (world.tmp / rel[3:]).unlink()
        else:
            craft(world.tmp / rel, marker, "torch.save" if i % 2 == 0 else "pickle")
    res = cli_run(*command(world))
    assert not marker.exists(), f"{case}: the crafted file ran"
    assert res.exit_code == 1, res.output
    assert says in error_line(res)


@pytest.mark.parametrize("args", [lambda w: ["store", "info", w.store], lambda w: ["compare", w.run, w.ensemble],
                                  lambda w: ["similar", "--store", w.store, "1", "-k", "3"]])
def test_commands_that_do_not_need_those_files_never_open_them(world, args):
    """With every checkpoint-like file crafted (and the search cache's vectors a pickled object array), the
    commands that read only tables and JSON still work, and nothing runs (a damaged search cache is rebuilt)."""
    marker = world.tmp / "RAN"
    for path in [*world.tmp.glob("*/checkpoints/*.safetensors"), world.ensemble / "stacker.safetensors",
                 world.run / "eval" / "validation" / "saliency.safetensors"]:
        craft(path, marker)
    vectors = world.store / "embeddings" / world.key / "train" / "_search" / "vectors.npy"
    import numpy as np

    with open(vectors, "wb") as f:
        np.save(f, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    res = cli_run(*args(world))
    assert not marker.exists()
    assert res.exit_code == 0, res.output


def test_convert_checkpoint_turns_a_real_old_run_into_the_same_weights(world):
    """A checkpoint written the old way (torch.save of the checkpoint dict, numpy random state included) is
    refused by every command with the conversion, converted once on request, and then scores the same."""
    run = RunFolder(world.run)
    before = {n: load_checkpoint(p) for n, p in (("best", run.best), ("last", run.last))}
    metrics = json.loads((world.run / "eval" / "validation" / "metrics.json").read_text())
    for name, ckpt in before.items():
        torch.save(ckpt, world.run / "checkpoints" / f"{name}.pt")  # what wdr-pipe wrote before
        (world.run / "checkpoints" / f"{name}.safetensors").unlink()
    assert isinstance(torch.load(world.run / "checkpoints" / "last.pt", weights_only=False)["rng"][0]["numpy"][1],
                      __import__("numpy").ndarray)
    res = cli_run("evaluate", "--store", world.store, "--run", world.run, *FAST)
    assert res.exit_code == 1 and "the conversion trusts the files" in error_line(res)
    res = cli_run("convert-checkpoint", world.run)
    assert res.exit_code == 0, res.output
    assert "2 file(s) converted" in res.output and not list((world.run / "checkpoints").glob("*.pt"))
    for name, ckpt in before.items():
        back = load_checkpoint(world.run / "checkpoints" / f"{name}.safetensors")
        assert state_digest(back["model"]) == state_digest(ckpt["model"]) and back["step"] == ckpt["step"]
    assert back["rng"][0]["python"] == ckpt["rng"][0]["python"] and back["optimizer"]["param_groups"] == \
        ckpt["optimizer"]["param_groups"]
    res = cli_run("evaluate", "--store", world.store, "--run", world.run, "--no-report", *FAST)
    assert res.exit_code == 0, res.output
    again = json.loads((world.run / "eval" / "validation" / "metrics.json").read_text())
    assert again["micro_f1"] == pytest.approx(metrics["micro_f1"])
    assert "nothing to convert" in cli_run("convert-checkpoint", world.run).output


def test_a_stacker_of_the_old_format_converts_and_an_object_array_is_refused(world):
    import numpy as np

    folder = RunFolder(world.ensemble)
    stacker = folder.read_stacker()
    folder.stacker.unlink()
    np.savez(world.ensemble / "stacker.npz", **stacker)
    res = cli_run("evaluate", "--store", world.store, "--run", world.ensemble, *FAST)
    assert res.exit_code == 1 and "stacker.npz in the pickle format" in error_line(res)
    assert cli_run("convert-checkpoint", world.ensemble).exit_code == 0
    assert all(np.array_equal(folder.read_stacker()[k], stacker[k]) for k in stacker)
    folder.stacker.unlink()
    marker = world.tmp / "RAN"
    np.savez(world.ensemble / "stacker.npz", coef=np.array([Payload(marker)], dtype=object),
             intercept=stacker["intercept"], fitted=stacker["fitted"])
    res = cli_run("convert-checkpoint", world.ensemble)
    assert res.exit_code == 1 and "not a stacker of wdr-pipe" in error_line(res) and not marker.exists()


def test_no_pickle_is_written_anywhere(shared):
    """Every file the shared run, ensemble and store hold: none starts like a pickle."""
    from wdr_pipe.cache.tensorfile import is_pickle

    files = [p for root in (shared.store, shared.run, shared.ensemble) for p in root.rglob("*") if p.is_file()]
    assert files and not [p for p in files if is_pickle(p)]
    assert {p.suffix for p in files} <= {".parquet", ".json", ".jsonl", ".safetensors", ".csv", ".html", ".npy",
                                         ""} | {p.suffix for p in files if "tb" in p.parts}
