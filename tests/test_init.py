"""The init schemes: exact gains of the paper's rule, orthogonal directions, zero biases, baselines."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import wnzoo
from wnzoo import init as winit
from wnzoo.layers import is_wn


def _gains(layer) -> torch.Tensor:
    return layer.g.detach()


def _is_orthogonal(v: torch.Tensor) -> bool:
    m = v.flatten(1)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-5)


def test_resnet110_block_conv2_gain_is_one_over_sqrt_18():
    model = wnzoo.create_model("wn_resnet110")
    for _, block in model.residual_blocks():
        assert torch.allclose(_gains(block.conv2), torch.full((block.conv2.out_channels,), 1 / math.sqrt(18)))
    assert 1 / math.sqrt(18) == pytest.approx(0.2357, abs=1e-4)


def test_wrn40_10_gains_match_the_paper():
    model = wnzoo.create_model("wn_wrn40_10")
    s1, s2 = model.stages[0], model.stages[1]
    expect = {
        "stem (3->16, gamma=1: our stem rule)": (model.stem, math.sqrt(27 / 144)),  # 0.433
        "stage-1 conv1 16->160": (s1[0].conv1, 0.447),
        "stage-1 conv2": (s1[0].conv2, 0.408),
        "shortcut 16->160": (s1[0].shortcut, 0.316),
        "stage-2 first conv1 160->320": (s2[0].conv1, 1.0),
        "shortcut 160->320": (s2[0].shortcut, 0.707),
        "other conv1": (s2[1].conv1, 1.414),
    }
    for what, (layer, value) in expect.items():
        g = _gains(layer)
        assert torch.allclose(g, torch.full_like(g, value), atol=5e-4), what
    assert model.stem.g[0].item() == pytest.approx(0.433, abs=5e-4)


@pytest.mark.parametrize("name", ["wn_resnet20", "wn_wrn16_4"])
def test_proposed_biases_zero_and_v_orthogonal(name):
    model = wnzoo.create_model(name)
    layers = [m for m in model.modules() if is_wn(m)]
    assert len(layers) > 10
    for layer in layers:
        assert torch.count_nonzero(layer.bias) == 0
        assert _is_orthogonal(layer.v.detach())


def test_proposed_he_gaussian_directions_same_gains():
    a = wnzoo.create_model("wn_resnet20", init="proposed")
    b = wnzoo.create_model("wn_resnet20", init="proposed_he")
    for la, lb in zip((m for m in a.modules() if is_wn(m)), (m for m in b.modules() if is_wn(m))):
        assert torch.allclose(la.g, lb.g)
        std = lb.v.std().item() * math.sqrt(lb.fan_in)
        assert 0.6 < std < 1.4  # v ~ N(0, 1/fan_in)
    assert not _is_orthogonal(b.stages[2][1].conv1.v.detach())


@pytest.mark.parametrize("scheme", ["default", "default_orthogonal"])
def test_default_keeps_pytorch_weights(scheme):
    model = wnzoo.create_model("wn_resnet20", init=scheme)
    for layer in (m for m in model.modules() if is_wn(m)):
        assert torch.allclose(layer.g, layer.v.flatten(1).norm(dim=1))  # effective weight == v
        assert torch.allclose(layer.weight, layer.v, atol=1e-6)
    assert _is_orthogonal(model.stages[2][1].conv1.v.detach()) == (scheme == "default_orthogonal")


def test_hanin_decays_branch_gains_geometrically():
    model = wnzoo.create_model("wn_resnet56", init="hanin")
    for _, block in model.residual_blocks():
        b = block.conv2.block_index
        assert block.conv2.g[0].item() == pytest.approx(0.9 ** b, rel=1e-5)
    assert model.stages[1][3].conv1.g[0].item() == pytest.approx(math.sqrt(2))


def test_datadep_normalizes_every_layer_on_the_batch():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    model = wnzoo.create_model("wn_resnet20", init="datadep", init_batch=x)
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o.detach()))
             for n, m in model.named_modules() if is_wn(m)]
    model(x)
    for h in hooks:
        h.remove()
    assert len(outs) == 1 + 9 * 2 + 2  # stem, 9 blocks, 2 projection shortcuts
    for name, o in outs.items():
        mu, sd = o.mean((0, 2, 3)), o.std((0, 2, 3), unbiased=False)
        assert torch.allclose(mu, torch.zeros_like(mu), atol=1e-4), name
        assert torch.allclose(sd, torch.ones_like(sd), atol=1e-3), name
    # the same scheme as a public function on a model built otherwise
    other = winit.datadep(wnzoo.create_model("wn_resnet20"), x)
    assert other.stem.g.shape == (16,)


def test_bn_schemes():
    model = wnzoo.create_model("bn_resnet20")  # default: orthogonal
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(_is_orthogonal(c.weight.detach()) and torch.count_nonzero(c.bias) == 0 for c in convs)
    he = wnzoo.create_model("bn_resnet20", init="he")
    w = he.stages[2][1].conv1.weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / w[0].numel()), rel=0.1)


def test_schemes_are_public_functions_on_any_zoo_model():
    model = wnzoo.create_model("wn_wrn16_4", init="default")
    winit.proposed(model)
    assert model.stages[0][0].conv2.g[0].item() == pytest.approx(math.sqrt(1 / 2))  # B_k = 2
    winit.hanin(model)
    assert model.stages[0][1].conv2.g[0].item() == pytest.approx(0.81)


def test_every_scheme_takes_the_same_path_with_a_batch():
    """A caller may always pass an input batch: data-dependent schemes use it, the others ignore it."""
    from wnzoo.init import DATA_DEPENDENT, apply_init
    x = torch.randn(8, 3, 32, 32)
    for name, scheme in (("wn_resnet20", "proposed"), ("wn_resnet20", "hanin"), ("bn_resnet20", "orthogonal")):
        torch.manual_seed(0)
        a = apply_init(wnzoo.create_model(name), scheme).state_dict()
        torch.manual_seed(0)
        b = apply_init(wnzoo.create_model(name), scheme, x).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), scheme
    assert DATA_DEPENDENT == {"datadep"}
    with pytest.raises(ValueError, match="needs a batch"):
        apply_init(wnzoo.create_model("wn_resnet20"), "datadep")
