"""The paper's signal-propagation claims (docs/paper.md §5 and §6 items 2-4), measured.

Synthetic nets: Figure 1 (deep WN MLP, 40-block WN ResNet), averaged over several network draws.
Zoo models: per-stage forward growth c = (1 + 1/B)^(B/2) in [sqrt 2, sqrt e] with the proposed
init at any depth; PyTorch's default explodes; data-dependent init grows like sqrt(1 + B).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import wnzoo
from wnzoo import init as winit
from wnzoo.diagnostics import (compare_inits, plot_signal_propagation, signal_propagation, signal_propagation_figure,
                               stage_ratios, synthetic_mlp, synthetic_propagation, synthetic_resnet)

DRAWS = 4


def _set_unit_gains(net):
    """The paper's 'He (g=1)' baseline: unit-norm rows, g = 1."""
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, "g") and hasattr(m, "v"):
                torch.nn.init.normal_(m.v)
                m.g.fill_(1.0)
    return net


def _mean_over_draws(make, init, n=200):
    fwd, bwd = [], []
    for d in range(DRAWS):
        torch.manual_seed(100 + d)
        net = init(make(d))
        sp = synthetic_propagation(net, n=n, seed=d)
        fwd.append(sp.forward)
        bwd.append(sp.backward)
    return np.mean(fwd, 0), np.mean(bwd, 0)


def test_deep_mlp_proposed_preserves_norms():
    fwd, bwd = _mean_over_draws(lambda d: synthetic_mlp(depth=20, width=1000, seed=d), winit.proposed)
    assert np.all(np.abs(fwd - 1) < 0.1), fwd           # paper: ~1 at every layer
    assert np.all(np.abs(bwd[1:] - 1) < 0.15), bwd       # backward analogue, layers 2..20


def test_deep_mlp_unit_gain_baseline_vanishes():
    fwd, bwd = _mean_over_draws(lambda d: synthetic_mlp(depth=20, width=1000, seed=d), _set_unit_gains)
    assert fwd[0] == pytest.approx(1.0, abs=0.05)        # first layer sqrt(m/1000)
    assert fwd[9] < 0.05 and fwd[19] < 0.002             # x0.71 per layer (paper: 0.047, 0.001)
    assert bwd[1] < 0.01                                 # paper: 0.002 at layer 2


def test_resnet40_proposed_matches_figure1():
    fwd, bwd = _mean_over_draws(lambda d: synthetic_resnet(blocks=40, dim=500, hidden=1000), winit.proposed)
    c = (1 + 1 / 40) ** 20  # 1.639
    assert fwd[-1] == pytest.approx(c, abs=0.07)         # paper: 1.62-1.65 +- 0.07
    assert fwd[0] == pytest.approx(1.013, abs=0.01)
    assert fwd[19] == pytest.approx(1.28, abs=0.05)      # block 20
    assert bwd[1] == pytest.approx(1.60, abs=0.08)       # block 2
    assert bwd[38] == pytest.approx(1.013, abs=0.01)     # block 39


def test_resnet40_unit_gain_explodes():
    fwd, bwd = _mean_over_draws(lambda d: synthetic_resnet(blocks=40, dim=500, hidden=200), _set_unit_gains, n=100)
    assert fwd[-1] > 1e3 and bwd[1] > 1e3                # paper: ~2700 / ~2600 (x1.5^(1/2) per block)
    assert fwd[0] == pytest.approx(1.22, abs=0.03)


def _stage_ratios(name, scheme, draws=1, size=32, batch=4, **kwargs):
    """Per-stage forward growth averaged over network draws. 32x32 inputs: at smaller maps the
    zero padding of 3x3 convs (border positions) visibly shrinks the last stage's branches."""
    runs = [compare_inits(name, [scheme], batch=batch, image_size=size, seed=d, **kwargs)[scheme] for d in range(draws)]
    return np.mean([stage_ratios(r) for r in runs], 0), runs[0]


# the paper's band [sqrt 2, sqrt e] with a margin for width-16 finite-width and border effects
LOW, HIGH = math.sqrt(2) * 0.92, math.sqrt(math.e) * 1.07


def test_zoo_proposed_stage_growth_is_c_flat_in_depth():
    shallow, _ = _stage_ratios("wn_resnet20", "proposed", draws=4)
    deep, sp = _stage_ratios("wn_resnet1202", "proposed", batch=2)
    for ratios in (shallow, deep):
        assert all(LOW < r < HIGH for r in ratios), (shallow, deep)
    assert np.mean(shallow) == pytest.approx((1 + 1 / 3) ** 1.5, rel=0.1)  # c for B = 3: 1.54
    assert 0.85 < np.mean(deep) / np.mean(shallow) < 1.2                     # flat in depth: 3 vs 200 blocks
    assert all(math.isfinite(v) for v in sp.forward + sp.backward)


def test_zoo_very_deep_wrn_proposed_is_finite_and_flat():
    # WRN-1000 (166 blocks per stage) at width k=1: the paper's 1000-layer net, CPU-sized.
    ratios, sp = _stage_ratios("wn_wrn40_4", "proposed", draws=2, batch=2, blocks=166, widths=(16, 32, 64))
    assert len(sp.forward) == 3 * 166
    assert all(LOW < r < HIGH for r in ratios), ratios


def test_zoo_default_explodes_at_depth_110():
    ratios, sp = _stage_ratios("wn_resnet110", "default")
    assert sp.forward[-1] > 1e6 and min(ratios) > 100, ratios  # ~3^(N/2) per stage with He directions
    proposed, _ = _stage_ratios("wn_resnet110", "proposed")
    assert max(proposed) < 2


@pytest.mark.parametrize("name,blocks", [("wn_resnet56", 9), ("wn_resnet110", 18)])
def test_zoo_datadep_grows_like_sqrt_1_plus_n(name, blocks):
    ratios, _ = _stage_ratios(name, "datadep", batch=8, size=16)
    # The first stage starts from the normalized stem; later stages restart at the normalized
    # projection shortcut, so their growth is measured from the stream each stage receives.
    assert ratios[0] == pytest.approx(math.sqrt(1 + blocks), rel=0.2), ratios


def test_signal_propagation_leaves_model_untouched_and_plots(tmp_path):
    model = wnzoo.create_model("bn_resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sp = signal_propagation(model, torch.randn(4, 3, 16, 16))
    assert len(sp.forward) == len(sp.backward) == 9 and sp.stage == [0] * 3 + [1] * 3 + [2] * 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    res = compare_inits("wn_resnet20", ["proposed", "default"], batch=2, image_size=16)
    plot_signal_propagation(res, tmp_path / "sp.png")
    assert (tmp_path / "sp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = signal_propagation_figure(res)
    assert [[t.get_text() for t in a.texts] for a in fig.axes] == [["stage 1", "stage 2", "stage 3"]] * 2
    assert all(a.get_legend() is None for a in fig.axes) and len(fig.legends) == 1  # under the panels, off the curves


@pytest.mark.slow  # 9 s, a process of its own; the figure itself is drawn in the fast suite
def test_cli_writes_png(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "cli.png"
    r = subprocess.run([sys.executable, str(repo / "eval" / "signal_propagation.py"), "--model", "wn_resnet20",
                        "--batch", "2", "--image-size", "16", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 10_000 and "proposed: per-stage forward ratio" in r.stdout
    bad = subprocess.run([sys.executable, str(repo / "eval" / "signal_propagation.py"), "--model", "wn_resnet99"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown model" in bad.stderr


def test_compared_schemes_by_family():
    from wnzoo.diagnostics import compared_schemes
    assert compared_schemes("wn_resnet110") == ["proposed", "default", "datadep", "hanin"]
    assert compared_schemes("bn_wrn40_10") == ["orthogonal", "he"]
