"""WN layers: the weight formula, copies and pickling, safetensors, legacy formats, fusing, compile."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import wnzoo
from wnzoo.layers import WNConv2d, WNLinear


def test_weight_is_g_times_unit_direction():
    layer = WNConv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        layer.g.copy_(torch.arange(1.0, 7.0))
    w = layer.weight
    assert torch.allclose(w.flatten(1).norm(dim=1), torch.arange(1.0, 7.0), atol=1e-5)
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(layer(x), nn.functional.conv2d(x, w, layer.bias, padding=1), atol=1e-6)
    assert set(layer.state_dict()) == {"g", "v", "bias"}
    assert layer.state_dict()["g"].shape == (6,)


def test_deepcopy_and_pickle():
    model = wnzoo.create_model("wn_resnet20")
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    assert torch.equal(copy.deepcopy(model)(x), ref)
    buf = io.BytesIO()
    pickle.dump(model, buf)
    assert torch.equal(pickle.loads(buf.getvalue())(x), ref)


def test_safetensors_round_trip(tmp_path):
    model = wnzoo.create_model("wn_resnet32")
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    other = wnzoo.create_model("wn_resnet32", init="default")
    other.load_state_dict(load_file(tmp_path / "m.safetensors"), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(other(x), model(x))


def _legacy_pair(layer):
    """The same layer as a plain module wrapped by torch's two weight_norm implementations."""
    if isinstance(layer, WNConv2d):
        plain = lambda: nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
    else:
        plain = lambda: nn.Linear(layer.in_features, layer.out_features)
    old, new = plain(), plain()
    for m in (old, new):
        with torch.no_grad():
            m.weight.copy_(layer.weight)
            m.bias.copy_(layer.bias)
    with pytest.warns(FutureWarning):  # deprecated in torch, but it is what the authors' checkpoints hold
        old = torch.nn.utils.weight_norm(old)  # weight_g / weight_v
    new = torch.nn.utils.parametrizations.weight_norm(new)  # parametrizations.weight.original0/1
    return old, new


@pytest.mark.parametrize("make", [lambda: WNConv2d(5, 7, 3, padding=1), lambda: WNLinear(9, 4)])
def test_legacy_formats_load(make):
    src = make()
    with torch.no_grad():
        src.g.uniform_(0.5, 2.0)
        src.bias.normal_()
    old, new = _legacy_pair(src)
    assert {"weight_g", "weight_v"} <= set(old.state_dict())
    assert {"parametrizations.weight.original0", "parametrizations.weight.original1"} <= set(new.state_dict())
    x = torch.randn(3, 5, 6, 6) if isinstance(src, WNConv2d) else torch.randn(3, 9)
    for legacy in (old, new):
        dst = make()
        dst.load_state_dict(legacy.state_dict(), strict=True)
        assert torch.allclose(dst(x), legacy(x), atol=1e-5)
        assert torch.allclose(dst(x), src(x), atol=1e-5)


def test_legacy_format_whole_model():
    model = wnzoo.create_model("wn_resnet20")
    legacy = {}
    for k, v in model.state_dict().items():
        if k.endswith(".g") or k == "stem.g":
            legacy[k[:-1] + "weight_g"] = v.view(-1, 1, 1, 1)
        elif k.endswith(".v"):
            legacy[k[:-1] + "weight_v"] = v
        else:
            legacy[k] = v
    other = wnzoo.create_model("wn_resnet20", init="default")
    other.load_state_dict(legacy, strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(other(x), model(x), atol=1e-6)
    with pytest.raises(RuntimeError, match="Missing key"):
        other.load_state_dict({k: v for k, v in legacy.items() if "stem" not in k}, strict=True)


def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)


@pytest.mark.parametrize("name", ["wn_resnet20", "bn_resnet20", "wn_wrn16_4", "bn_wrn16_4"])
def test_fuse_matches_and_has_plain_weights(name):
    model = wnzoo.create_model(name).eval()
    _randomize_bn(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.05 * torch.randn_like(p))  # non-trivial gains / biases
    fused = wnzoo.fuse(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-4, rtol=1e-4)
    keys = fused.state_dict().keys()
    assert not any(k.endswith((".g", ".v")) for k in keys) and "stem.weight" in keys
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    n_bn_before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if name.startswith("bn_"):
        assert n_bn < n_bn_before  # bn2 of every block (and stem/final BN) folded away
        assert n_bn == len(list(model.residual_blocks()))  # only bn1 (pre-activation) stays
    if name.startswith("wn_"):
        assert any(k.endswith(".g") for k in model.state_dict())  # the input model is untouched
    with torch.no_grad():
        assert torch.equal(wnzoo.fuse(fused)(x), fused(x))  # fusing a fused model changes nothing


def test_torch_compile_smoke():
    model = wnzoo.create_model("wn_resnet20")
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    out = compiled(x)
    assert torch.allclose(out, model(x), atol=1e-5)
    out.sum().backward()
    assert model.stem.g.grad is not None


def test_weight_norm_reads_channels_last_v_without_copying_it(record_ops):
    layer = WNConv2d(16, 32, 3, padding=1).to(memory_format=torch.channels_last)
    assert not layer.v.is_contiguous()
    with record_ops() as ops:
        w = layer.weight
    copies = [op for op in ops.seen if op in ("clone", "_to_copy", "copy_", "contiguous")]
    assert not copies, ops.seen
    v = layer.v.detach()
    ref = layer.g.detach()[:, None, None, None] * v / v.flatten(1).norm(dim=1)[:, None, None, None]
    assert torch.allclose(w, ref, atol=1e-6)
