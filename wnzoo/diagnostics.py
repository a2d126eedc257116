"""Signal propagation at initialization: per residual block forward / backward norm ratios.

This is the paper's Figure 1 measured on real zoo models (and on its synthetic nets). The norm of
a feature map is the RMS over positions of the per-position channel vector's norm,
``||h|| / sqrt(H·W)``: the paper's rule preserves the norm of the whole hidden vector at each
position, so with this measure a stage boundary (stride 2, channels doubled) shows no spurious
factor and a stage's ratio is directly the paper's c = (1 + 1/B)^(B/2).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .init import apply_init
from .layers import WNLinear
from .registry import create_model, norm_of

__all__ = ["SignalProp", "signal_propagation", "stage_ratios", "synthetic_mlp", "synthetic_resnet",
           "synthetic_propagation", "compare_inits", "compared_schemes", "plot_signal_propagation",
           "signal_propagation_figure"]

# The schemes Figure 1 compares for each family: the paper's init and its baselines.
_COMPARED = {"wn": ("proposed", "default", "datadep", "hanin"), "bn": ("orthogonal", "he")}


@dataclass
class SignalProp:
    """Per residual block b = 1..B: ``forward[b-1] = E[n(h_b) / n(h_0)]`` (h_0 is the input to
    the first block, n the per-position norm above) and ``backward[b-1] = E[n(dL/dh_b) / n(dL/dh_B)]``
    for a random Gaussian gradient injected at the last block's output. ``stage[b-1]`` is the block's stage index."""

    forward: list[float]
    backward: list[float]
    stage: list[int] = field(default_factory=list)


def _rms(t: torch.Tensor) -> torch.Tensor:
    positions = t[0, 0].numel() if t.dim() == 4 else 1
    return t.flatten(1).norm(dim=1) / math.sqrt(positions)


def signal_propagation(model: nn.Module, x: torch.Tensor, seed: int = 0) -> SignalProp:
    """Measure a zoo model (anything with ``residual_blocks()`` and ``forward_features``) at its
    current weights, averaged over the samples of ``x``.

    Runs on a train-mode copy: BN twins normalize with batch statistics, as they do at the start
    of training, and the caller's model (and its BN running stats) is left untouched."""
    model = copy.deepcopy(model).train()
    blocks = list(model.residual_blocks())
    outs: list[torch.Tensor] = []
    first_in: list[torch.Tensor] = []

    def keep(_m, _inp, out):
        out.retain_grad()
        outs.append(out)

    def keep_in(_m, inp):
        first_in.append(inp[0].detach())

    handles = [b.register_forward_hook(keep) for _, b in blocks]
    handles.append(blocks[0][1].register_forward_pre_hook(keep_in))
    try:
        x = x.detach()
        model.forward_features(x)
        gen = torch.Generator().manual_seed(seed)
        top = outs[-1]
        top.backward(torch.randn(top.shape, generator=gen).to(top))
    finally:
        for h in handles:
            h.remove()
    h0 = _rms(first_in[0])
    g_top = _rms(outs[-1].grad)
    fwd = [(_rms(o.detach()) / h0).mean().item() for o in outs]
    bwd = [(_rms(o.grad) / g_top).mean().item() for o in outs]
    return SignalProp(fwd, bwd, [s for s, _ in blocks])


def stage_ratios(sp: SignalProp) -> list[float]:
    """Forward RMS growth of each stage: (output of its last block) / (input of its first block)."""
    ratios, prev = [], 1.0
    stages = sorted(set(sp.stage))
    for s in stages:
        last = max(i for i, st in enumerate(sp.stage) if st == s)
        ratios.append(sp.forward[last] / prev)
        prev = sp.forward[last]
    return ratios


# ---- the paper's synthetic nets (docs/paper.md §5) ---------------------------------------------

class _MLPNet(nn.Module):
    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(WNLinear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:]))
        for layer in self.layers:
            layer.init_role = "relu"


class _ResBlock(nn.Module):
    def __init__(self, dim: int, hidden: int, blocks: int, index: int) -> None:
        super().__init__()
        self.w0 = WNLinear(dim, hidden, bias=False)
        self.w0.init_role = "relu"
        self.w1 = WNLinear(hidden, dim, bias=False)
        self.w1.init_role, self.w1.stage_blocks, self.w1.block_index = "residual", blocks, index

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.w1(torch.relu(self.w0(h)))


class _ResNet(nn.Module):
    def __init__(self, dim: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[_ResBlock(dim, hidden, blocks, b + 1) for b in range(blocks)])

    def residual_blocks(self):
        return ((0, b) for b in self.blocks)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def synthetic_mlp(depth: int = 20, width: int = 1000, in_dim: int = 500, seed: int = 0) -> nn.Module:
    """The Figure-1 MLP: ``depth`` Linear→ReLU layers without bias, widths i.i.d. in [w-50, w+50)."""
    gen = torch.Generator().manual_seed(seed)
    widths = [in_dim] + torch.randint(width - 50, width + 50, (depth,), generator=gen).tolist()
    return _MLPNet(widths)


def synthetic_resnet(blocks: int = 40, dim: int = 500, hidden: int = 1000) -> nn.Module:
    """The Figure-1 ResNet: ``h <- h + W1 ReLU(W0 h)``, one stage of ``blocks`` blocks, no bias."""
    return _ResNet(dim, hidden, blocks)


def synthetic_propagation(net: nn.Module, n: int = 1000, seed: int = 0) -> SignalProp:
    """Forward ``||h_i||/||x||`` and backward ``||dL/da_i|| / ||dL/da_L||`` of a synthetic net.

    MLP: ``h_i`` is the post-ReLU output of layer i and the gradient is injected at the last
    pre-activation; ResNet: per block, as :func:`signal_propagation`. Plain (not RMS) norms, as
    the paper's figure."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(net, _ResNet):
        x = torch.randn(n, net.blocks[0].w0.in_features, generator=gen)
        sp = signal_propagation(net, x, seed)
        return SignalProp(sp.forward, sp.backward, sp.stage)
    x = torch.randn(n, net.layers[0].in_features, generator=gen)
    pre, h = [], x
    for layer in net.layers:
        a = layer(h)
        a.retain_grad()
        pre.append(a)
        h = torch.relu(a)
    xn = x.norm(dim=1)
    fwd = [(torch.relu(a).norm(dim=1) / xn).mean().item() for a in pre]
    delta = torch.randn(pre[-1].shape, generator=gen)
    pre[-1].backward(delta)
    top = delta.norm(dim=1)
    bwd = [(a.grad.norm(dim=1) / top).mean().item() for a in pre]
    net.zero_grad(set_to_none=True)
    return SignalProp(fwd, bwd, [0] * len(fwd))


def compare_inits(name: str, schemes: list[str], batch: int = 16, image_size: int = 32, seed: int = 0,
                  **model_kwargs) -> dict[str, SignalProp]:
    """Signal propagation of zoo model ``name`` under each init scheme, on the same random inputs.

    Inputs are standard-normal images (what normalized data looks like to the stem at init), and
    they are the batch that data-dependent schemes initialize from.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen)
    out = {}
    for scheme in schemes:
        torch.manual_seed(seed)
        model = create_model(name, **model_kwargs)
        with torch.no_grad():
            apply_init(model, scheme, x)
        out[scheme] = signal_propagation(model, x, seed)
    return out


def compared_schemes(name: str) -> list[str]:
    """The init schemes compared for zoo model ``name``: the paper's and its baselines, by family."""
    return list(_COMPARED[norm_of(name)])


def plot_signal_propagation(results: dict[str, SignalProp], path: str, title: str = "") -> None:
    """Two panels (forward, backward), log scale, one line per scheme; stages dashed and labelled; the
    legend under the panels, where it hides no curve."""
    import matplotlib.pyplot as plt

    fig = signal_propagation_figure(results, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def signal_propagation_figure(results: dict[str, SignalProp], title: str = ""):
    """The figure :func:`plot_signal_propagation` saves (a matplotlib ``Figure``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for scheme, sp in results.items():
        b = range(1, len(sp.forward) + 1)
        ax[0].plot(b, sp.forward, label=scheme)
        ax[1].plot(b, sp.backward, label=scheme)
    any_sp = next(iter(results.values()))
    bounds = [i + 0.5 for i in range(1, len(any_sp.stage)) if any_sp.stage[i] != any_sp.stage[i - 1]]
    edges = [0.5, *bounds, len(any_sp.stage) + 0.5]
    for a, ylabel in zip(ax, ("forward  rms(h_b) / rms(h_0)", "backward  rms(dL/dh_b) / rms(dL/dh_B)")):
        for x in bounds:
            a.axvline(x, color="grey", ls="--", lw=0.8)
        for k, (lo, hi) in enumerate(zip(edges, edges[1:])):
            a.text((lo + hi) / 2, 0.98, f"stage {k + 1}", transform=a.get_xaxis_transform(), ha="center", va="top",
                   fontsize=8, color="grey")
        a.set(yscale="log", xlabel="residual block b", ylabel=ylabel)
        a.grid(alpha=0.3, which="both")
    fig.suptitle(title or "signal propagation at initialization")
    fig.legend(*ax[0].get_legend_handles_labels(), loc="lower center", ncol=len(results), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
