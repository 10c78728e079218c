"""WDRModel on a real tf_efficientnet_lite0 at 64 px: parts, heads, freezing, embeddings, wide stats."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from timm.models import group_parameters

from wdr_pipe.errors import UserError
from wdr_pipe.wdr.model.network import ModelConfig, build_model, weight_layers

L, D, B = 6, 5, 2
MEAN = np.arange(D, dtype=np.float32)
STD = np.full(D, 2.0, dtype=np.float32)
VECTORS = np.random.default_rng(0).normal(size=(L, 8)).astype(np.float32)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def make(**kw):
    cfg = ModelConfig(**kw)
    return build_model(cfg, L, wide_dim=D, wide_mean=MEAN, wide_std=STD, label_vectors=VECTORS)


def batch():
    return torch.randn(B, 3, 64, 64), torch.randn(B, D)


def steps(model, n=2, lr=0.1):
    """A few SGD steps in train mode on a BCE loss."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    target = torch.randint(0, 2, (B, L)).float()
    for _ in range(n):
        image, wide = batch()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(image, wide), target)
        opt.zero_grad()
        loss.backward()
        opt.step()


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


PARTS = [("deep",), ("deep", "wide"), ("deep", "recurrent"), ("deep", "wide", "recurrent")]


@pytest.mark.parametrize("parts", PARTS)
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_output_shapes(parts, head):
    model = make(parts=parts, head=head, label_embeddings="random", embed_dim=4).eval()
    image, wide = batch()
    x = model.forward_features(image)
    assert x.shape == (B, model.num_features) == (B, 1280)
    out = model(image, wide)
    assert out.shape == (B, L)
    assert torch.allclose(out, model.forward_head(x, wide))
    extra = (100 if "wide" in parts else 0) + (L * 40 if "recurrent" in parts else 0)
    first = model.head if head == "linear" else model.head[0]
    assert first.in_features == 1280 + extra
    assert model.data_config["input_size"] == (3, 224, 224)


def test_parts_are_canonical():
    assert ModelConfig(parts=["recurrent", "deep", "wide"]).parts == ("deep", "wide", "recurrent")
    assert ModelConfig(parts=("deep", "deep")).parts == ("deep",)
    cfg = ModelConfig(parts=("deep", "wide"), head="mlp")
    assert ModelConfig(**cfg.to_dict()) == cfg


def test_fixed_freezes_backbone_and_batchnorm():
    model = make(deep="fixed")
    before, head_before = snapshot(model.backbone), snapshot(model.head)
    steps(model)
    assert not changed(before, model.backbone)  # weights and BN running stats, counters included
    assert changed(head_before, model.head) == {"weight", "bias"}
    assert model.frozen_modules() == [""] and not model.backbone.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert model.head.training


def test_tune_trains_backbone_and_its_batchnorm():
    model = make(deep="tune")
    before = snapshot(model.backbone)
    steps(model)
    moved = changed(before, model.backbone)
    assert "conv_stem.weight" in moved and "bn1.running_mean" in moved and "bn2.running_var" in moved


def test_half_freezes_first_half_of_groups():
    model = make(deep="half")
    groups = group_parameters(model.backbone, model.backbone.group_matcher(coarse=True))
    order = sorted(groups)
    assert len(order) == 8
    assert model.frozen_groups == ["conv_stem,bn1", "blocks.0", "blocks.1", "blocks.2"]
    frozen = {n for k in order[:4] for n in groups[k]}
    for n, p in model.backbone.named_parameters():
        assert p.requires_grad == (n not in frozen), n
    before = snapshot(model.backbone)
    steps(model)
    moved = changed(before, model.backbone)
    frozen_prefixes = ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.", "blocks.2.")
    assert not {k for k in moved if k.startswith(frozen_prefixes)}  # incl. BN running stats
    assert "blocks.3.0.conv_pw.weight" in moved and "blocks.3.0.bn1.running_mean" in moved
    assert "conv_head.weight" in moved and "bn2.running_mean" in moved
    assert not model.backbone.blocks[2].training and model.backbone.blocks[3].training


def test_freeze_first_n_weight_layers():
    model = make(freeze_first=12)
    layers = weight_layers(model.backbone)
    assert model.frozen_layers == layers[:12]
    for name in layers:
        weight = model.backbone.get_submodule(name).weight
        assert weight.requires_grad == (name not in layers[:12]), name
    frozen_bn = [n for n, p in model.backbone.named_parameters() if not p.requires_grad and "bn" in n]
    assert "bn1.weight" in frozen_bn  # BatchNorms between frozen layers are frozen too
    before = snapshot(model.backbone)
    steps(model)
    moved = changed(before, model.backbone)
    assert not {k for k in moved if any(k.startswith(n + ".") for n in layers[:12])}
    assert f"{layers[12]}.weight" in moved
    with pytest.raises(UserError, match="--freeze-first 9999"):
        make(freeze_first=9999)


@pytest.mark.parametrize("mode", ["frozen", "trainable", "random"])
def test_label_embeddings(mode):
    model = make(parts=("deep", "recurrent"), label_embeddings=mode, embed_dim=3)
    emb = model.recurrent.embeddings
    assert emb.shape == ((L, 3) if mode == "random" else VECTORS.shape)
    assert "recurrent.embeddings" in model.state_dict()
    is_param = any(p is emb for p in [p for p in model.parameters() if p.requires_grad])
    assert is_param == (mode != "frozen")
    before = emb.detach().clone()
    if mode != "random":
        assert torch.equal(before, torch.from_numpy(VECTORS))
    steps(model)
    assert torch.equal(model.recurrent.embeddings, before) == (mode == "frozen")


def test_wide_standardisation_and_state_dict_round_trip():
    model = make(parts=("deep", "wide")).eval()
    assert torch.equal(model.wide_mean, torch.from_numpy(MEAN)) and torch.equal(model.wide_std, torch.from_numpy(STD))
    image, wide = batch()
    wide[0, 1] = float("nan")
    x = model.forward_features(image)
    z = torch.nan_to_num((wide - torch.from_numpy(MEAN)) / torch.from_numpy(STD))
    assert z[0, 1] == 0
    expected = model.head(torch.cat([x, torch.relu(model.wide[0](z))], 1))
    assert torch.allclose(model.forward_head(x, wide), expected, atol=1e-6)

    other = build_model(model.cfg, L, wide_dim=D, wide_mean=np.zeros(D), wide_std=np.ones(D)).eval()
    other.load_state_dict(copy.deepcopy(model.state_dict()))
    assert torch.equal(other.wide_mean, model.wide_mean) and torch.equal(other.wide_std, model.wide_std)
    assert torch.allclose(other(image, wide), model(image, wide), atol=1e-6)


def test_wide_zero_std_becomes_one():
    std = STD.copy()
    std[2] = 0.0
    model = build_model(ModelConfig(parts=("deep", "wide")), L, wide_dim=D, wide_mean=MEAN, wide_std=std)
    assert model.wide_std[2] == 1.0


def test_gradients_reach_wide_and_recurrent():
    model = make(parts=("deep", "wide", "recurrent"), label_embeddings="trainable", deep="fixed").train()
    image, wide = batch()
    model(image, wide).square().mean().backward()
    for name in ["wide.0.weight", "recurrent.h0_fwd.weight", "recurrent.h0_bwd.weight",
                 "recurrent.gru.weight_ih_l0", "recurrent.gru.weight_hh_l0_reverse", "recurrent.embeddings",
                 "head.weight"]:
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.backbone.parameters())


def test_autocast_bf16_and_channels_last():
    model = make(parts=("deep", "wide", "recurrent"), label_embeddings="frozen")
    model = model.to(memory_format=torch.channels_last).train()
    image, wide = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(image.to(memory_format=torch.channels_last), wide)
    assert out.shape == (B, L) and torch.isfinite(out.float()).all()
    out.float().mean().backward()
    assert model.head.weight.grad is not None


@pytest.mark.parametrize("kw, field", [
    (dict(parts=("wide",)), "parts"),
    (dict(parts=("deep", "sideways")), "parts"),
    (dict(deep="frozen"), "deep"),
    (dict(head="transformer"), "head"),
    (dict(pretrained=True, weights="w.pth"), "weights"),
    (dict(label_embeddings="glove"), "label_embeddings"),
    (dict(head_dropout=1.0), "head_dropout"),
    (dict(freeze_first=-1), "freeze_first"),
    (dict(rnn_hidden=0), "rnn_hidden"),
])
def test_bad_config_is_user_error(kw, field):
    with pytest.raises(UserError, match=f"model config(: {field} | {field}=)"):
        ModelConfig(**kw)


def test_missing_inputs_are_user_errors():
    with pytest.raises(UserError, match="parts include wide"):
        build_model(ModelConfig(parts=("deep", "wide")), L)
    with pytest.raises(UserError, match="wide_mean / wide_std have 3 / 3 values for 5"):
        build_model(ModelConfig(parts=("deep", "wide")), L, wide_dim=D, wide_mean=np.zeros(3), wide_std=np.ones(3))
    with pytest.raises(UserError, match="label-embeddings frozen needs"):
        build_model(ModelConfig(parts=("deep", "recurrent")), L)
    with pytest.raises(UserError, match="do not fit 6 labels"):
        build_model(ModelConfig(parts=("deep", "recurrent")), L, label_vectors=np.zeros((L + 1, 4)))
    model = make(parts=("deep", "wide"))
    with pytest.raises(UserError, match="no wide features"):
        model(torch.zeros(B, 3, 64, 64))
    with pytest.raises(UserError, match="wide features have 4 values"):
        model(torch.zeros(B, 3, 64, 64), torch.zeros(B, 4))


def test_weights_file_through_config(tmp_path):
    import hashlib

    import timm

    state = timm.create_model("tf_efficientnet_lite0", num_classes=0).state_dict()
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    cfg = ModelConfig(weights=path, deep="fixed")
    assert cfg.weights == str(path)
    model = make(**cfg.to_dict())
    assert torch.equal(model.backbone.conv_stem.weight, state["conv_stem.weight"])
    assert model.weights_digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert make().weights_digest is None


def test_vgg16_first_12_layers_fixed_on_meta():
    """The VGG-16 paper's setting, shapes only (meta device: no weights are made or run)."""
    import timm

    from wdr_pipe.wdr.model.network import WDRModel

    with torch.device("meta"):
        backbone = timm.create_model("vgg16", num_classes=0)
        model = WDRModel(ModelConfig(backbone="vgg16", freeze_first=12, head="mlp"), backbone, L)
        out = model(torch.zeros(B, 3, 64, 64))
    assert out.shape == (B, L) and model.num_features == 4096  # fc7 width, not num_features (512)
    trainable = [n for n in weight_layers(backbone) if backbone.get_submodule(n).weight.requires_grad]
    assert trainable == ["features.28", "pre_logits.fc1", "pre_logits.fc2"] and len(model.frozen_layers) == 12


def test_half_group_names_resnet_on_meta():
    import timm

    from wdr_pipe.wdr.model.network import WDRModel

    with torch.device("meta"):
        model = WDRModel(ModelConfig(backbone="resnet18", deep="half"), timm.create_model("resnet18", num_classes=0), L)
    assert model.frozen_groups == ["conv1,bn1", "layer1"]
    assert not model.backbone.layer1[0].conv1.weight.requires_grad and model.backbone.layer2[0].conv1.weight.requires_grad
