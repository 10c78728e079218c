"""The checkpoint file format: a tree of tensors and plain values in one safetensors file, never a pickle."""
import os
import pickle
import random

import numpy as np
import pytest
import torch

from wdr_pipe.cache.tensorfile import OldFormat, read_tree, write_tree
from wdr_pipe.errors import UserError


def _training_state():
    import timm.optim
    import timm.scheduler

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = timm.optim.create_optimizer_v2(model, opt="nadam", lr=1e-3)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    sched, _ = timm.scheduler.create_scheduler_v2(opt, sched="cosine", num_epochs=3, updates_per_epoch=5,
                                                  step_on_epochs=False)
    return model, opt, sched


def test_a_training_state_comes_back_equal(tmp_path):
    model, opt, sched = _training_state()
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "cuda": None}
    tree = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": [rng], "step": 7, "best": float("-inf"), "loader": {"consumed": [32, 16]}, "ids": (1, 2)}
    write_tree(tmp_path / "c.safetensors", tree, "checkpoint")
    back = read_tree(tmp_path / "c.safetensors", "checkpoint", "fix")
    assert set(back["model"]) == set(tree["model"])
    assert all(torch.equal(back["model"][k], v) for k, v in tree["model"].items())
    assert back["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]  # tuples (betas) stay tuples
    assert set(back["optimizer"]["state"]) == set(opt.state_dict()["state"])     # int keys stay ints
    assert back["scheduler"] == sched.state_dict()
    assert back["rng"][0]["python"] == rng["python"]
    np.testing.assert_array_equal(back["rng"][0]["numpy"][1], rng["numpy"][1])
    assert back["step"] == 7 and back["best"] == float("-inf") and back["ids"] == (1, 2)
    assert back["loader"] == {"consumed": [32, 16]}
    random.setstate(back["rng"][0]["python"])  # what a resumed run does with them
    np.random.set_state(back["rng"][0]["numpy"])
    torch.set_rng_state(back["rng"][0]["torch"])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_is_refused_and_never_unpickled(tmp_path, how):
    marker = tmp_path / "ran"
    path = tmp_path / "last.safetensors"
    if how == "torch.save":
        torch.save({"model": _Payload(str(marker))}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(OldFormat, match="never loads"):
        read_tree(path, "checkpoint", "convert it")
    assert not marker.exists()


def test_damaged_foreign_and_missing_files_are_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}")
    with pytest.raises(UserError, match=r"bad\.safetensors: unreadable .*; fix it"):
        read_tree(bad, "checkpoint", "fix it")
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="not a checkpoint file of wdr-pipe"):
        read_tree(foreign, "checkpoint", "fix it")
    write_tree(tmp_path / "other.safetensors", {"a": 1}, "stacker")
    with pytest.raises(UserError, match="kind 'stacker'"):
        read_tree(tmp_path / "other.safetensors", "checkpoint", "fix it")
    with pytest.raises(UserError, match="missing; fix it"):
        read_tree(tmp_path / "none.safetensors", "checkpoint", "fix it")


def test_object_arrays_and_unknown_types_are_refused_when_written(tmp_path):
    with pytest.raises(TypeError, match="object array"):
        write_tree(tmp_path / "x", {"a": np.array([{}], dtype=object)}, "checkpoint")
    with pytest.raises(TypeError, match="cannot be stored"):
        write_tree(tmp_path / "x", {"a": object()}, "checkpoint")
    assert not os.path.exists(tmp_path / "x")


def test_a_safetensors_file_whose_header_length_starts_like_a_pickle_is_read(tmp_path):
    """The header length is the file's first 8 bytes: 128 + 256 k starts with 0x80, a pickle's first byte."""
    for pad in range(300):
        path = tmp_path / "c.safetensors"
        write_tree(path, {"name": "x" * pad, "w": torch.ones(2)}, "checkpoint")
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no header length of 128 + 256 k was drawn")
    assert read_tree(path, "checkpoint", "fix")["name"] == "x" * pad
