"""Models and registry: parameter counts, names, timm / torch.hub integration, errors (timm's generic model
checks on every name are in test_timm_interface.py)."""
from __future__ import annotations

import pytest
import timm
import torch

import wnzoo
from wnzoo.models import CifarResNet

RESNET_DEPTHS = (20, 32, 44, 56, 110, 164, 1202)
WRNS = ((16, 4), (16, 8), (28, 10), (40, 4), (40, 10))
ALL_NAMES = [f"{f}_resnet{d}" for f in ("wn", "bn") for d in RESNET_DEPTHS] + \
            [f"{f}_wrn{d}_{k}" for f in ("wn", "bn") for d, k in WRNS]


# ---- independent parameter count: derived from the paper's description, not from the model code ----
def _conv(cin: int, cout: int, k: int, wn: bool) -> int:
    # weight (or v) + bias, plus one gain per output channel for WN
    return cout * cin * k * k + cout + (cout if wn else 0)


def expected_params(name: str, num_classes: int = 10) -> int:
    family, arch = name.split("_", 1)
    wn = family == "wn"
    if arch.startswith("resnet"):
        n, widths, stem_bn, final_bn = (int(arch[6:]) - 2) // 6, (16, 32, 64), True, True
    else:
        d, k = map(int, arch[3:].split("_"))
        n, widths, stem_bn, final_bn = (d - 4) // 6, (16 * k, 32 * k, 64 * k), False, False
    total = _conv(3, 16, 3, wn) + (2 * 16 if (stem_bn and not wn) else 0)
    cin = 16
    for cout in widths:
        for b in range(n):
            i = cin if b == 0 else cout
            total += _conv(i, cout, 3, wn) + _conv(cout, cout, 3, wn)
            if i != cout:  # 1x1 projection shortcut where the shape changes
                total += _conv(i, cout, 1, wn)
            if not wn:
                total += 2 * i + 2 * cout  # bn1 on the block input, bn2 after conv1
        cin = cout
    if final_bn and not wn:
        total += 2 * widths[-1]
    return total + widths[-1] * num_classes + num_classes


def test_expected_params_formula_matches_hand_counts():
    # WN ResNet-20 by hand: stem 16*(27+2); stage 1: 6 convs 16*(144+2); stage 2: 32*(144+2) + 5*32*(288+2)
    # + shortcut 32*(16+2); stage 3: 64*(288+2) + 5*64*(576+2) + 64*(32+2); fc 64*10+10.
    hand = 16 * 29 + 6 * 16 * 146 + 32 * 146 + 5 * 32 * 290 + 32 * 18 + 64 * 290 + 5 * 64 * 578 + 64 * 34 + 650
    assert hand == expected_params("wn_resnet20") == 272_474


@pytest.mark.parametrize("name", ALL_NAMES)
def test_param_count(name):
    model = wnzoo.create_model(name, init="default" if name.startswith("wn_") else "he")
    assert sum(p.numel() for p in model.parameters()) == expected_params(name)


def test_param_counts_in_published_ballpark():
    # Published sizes of these architectures (He et al. / Zagoruyko & Komodakis), up to our conv
    # biases, WN gains and 1x1 projection shortcuts: within 3 %.
    for name, published in (("bn_resnet110", 1.7e6), ("bn_resnet1202", 19.4e6), ("bn_wrn28_10", 36.5e6),
                            ("bn_wrn40_4", 8.9e6), ("bn_wrn16_8", 11.0e6)):
        assert abs(expected_params(name) / published - 1) < 0.03, name


def test_registry_lists_every_name():
    assert sorted(wnzoo.list_models()) == sorted(ALL_NAMES)
    assert set(wnzoo.list_models("wn_wrn*")) == {n for n in ALL_NAMES if n.startswith("wn_wrn")}


def test_timm_interface():
    model = wnzoo.create_model("wn_resnet56")
    assert isinstance(model, CifarResNet) and model.num_features == 64 and model.num_classes == 10
    assert model.get_classifier() is model.fc
    model.reset_classifier(7)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == "wn_resnet56" and cfg["tag"] == "c10" and cfg["input_size"] == (3, 32, 32)
    assert cfg["mean"] == (0.4914, 0.4822, 0.4465) and cfg["classifier"] == "fc"
    c100 = wnzoo.create_model("wn_resnet164.c100")
    assert c100.num_classes == 100 and c100.pretrained_cfg["mean"][0] == pytest.approx(0.5071)


def test_timm_create_model_builds_the_same_model():
    torch.manual_seed(1)
    a = wnzoo.create_model("wn_resnet56")
    torch.manual_seed(1)
    b = timm.create_model("wn_resnet56")
    assert type(a) is type(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_torch_hub_local():
    import pathlib
    repo = pathlib.Path(__file__).resolve().parent.parent
    model = torch.hub.load(str(repo), "wn_resnet20", source="local", num_classes=5)
    assert isinstance(model, CifarResNet) and model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    bn = torch.hub.load(str(repo), "bn_wrn40_10", source="local", num_classes=3)
    assert bn.widths == (160, 320, 640) and bn.fc.out_features == 3


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'wn_resnt110'.*wn_resnet110"):
        wnzoo.create_model("wn_resnt110")
    with pytest.raises(ValueError, match=r"unknown tag 'in1k' for wn_resnet20; it has wn_resnet20\.c10, wn_resnet20\.c100$"):
        wnzoo.create_model("wn_resnet20.in1k")
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        wnzoo.create_model("resnet50")  # a timm model, but not one of the zoo


def test_pretrained_without_published_weights_is_a_clear_error():
    from wnzoo import published
    from wnzoo.hub import WeightsError
    name = next(n for n in wnzoo.list_models() if published.get(f"{n}.c10") is None)
    with pytest.raises(WeightsError, match="has no published weights"):
        wnzoo.create_model(name, pretrained=True)


def test_bad_init_for_family():
    with pytest.raises(ValueError, match="for weight-normalized models"):
        wnzoo.create_model("bn_resnet20", init="proposed")
    with pytest.raises(ValueError, match="for BN"):
        wnzoo.create_model("wn_resnet20", init="orthogonal")
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        wnzoo.create_model("wn_resnet20", init="xavier")
    with pytest.raises(ValueError, match="needs a batch"):
        wnzoo.create_model("wn_resnet20", init="datadep")


def test_family_and_twin_come_from_the_registry():
    from wnzoo.registry import bn_twin, norm_of, twin_name
    assert [norm_of(n) for n in ("wn_resnet110", "bn_wrn40_10.c100")] == ["wn", "bn"]
    assert twin_name("wn_wrn16_4.c10") == "bn_wrn16_4.c10" and bn_twin("bn_resnet20") is None
    with pytest.raises(ValueError, match="unknown model 'wn_resnet21'"):
        norm_of("wn_resnet21")
    with pytest.raises(ValueError, match="unknown model 'resnet20'"):
        twin_name("resnet20")


@pytest.mark.parametrize("num_classes", [-1, 2.5, True])
def test_a_negative_or_non_integer_num_classes_is_refused(num_classes):
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 0 \(0: no classifier\)"):
        wnzoo.create_model("wn_resnet20", num_classes=num_classes)
    assert wnzoo.create_model("wn_resnet20", num_classes=0)(torch.zeros(1, 3, 32, 32)).shape == (1, 64)
