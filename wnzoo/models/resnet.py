"""CIFAR ResNets (6n+2, basic blocks): weight-normalized, initialized as Arpit et al. (2019), and BN twins.

WN block (docs/paper.md §2.1): ``x + conv2(ReLU(conv1(x)))`` with no ReLU on the residual stream,
a 1×1 projection shortcut only where the shape changes, no ReLU after the stem, global average
pooling and a plain (non-WN) linear classifier. The BN twin has the same graph with the paper's
pre-activation BN block, a BN after the stem and a final BN (no ReLU), as in the authors' ResNet
class. :class:`CifarResNet` also builds the paper's WideResNets (``wide_resnet.py``).
"""
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import DropPath, create_classifier
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices  # timm's own models import it from here
from torch import nn

from .. import paper
from .._datasets import DATASETS
from .._io import WeightsError
from ..hub import published_cfg, resolve_pretrained
from ..init import DEFAULT_INIT, apply_init
from ..layers import WNConv2d, adapt_wn_input_conv, rename_legacy_keys

__all__ = ["CifarResNet", "WNBasicBlock", "PreActBasicBlock", "checkpoint_filter_fn"]


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0 else nn.Identity()


class WNBasicBlock(nn.Module):
    """``conv2(ReLU(conv1(x))) + shortcut(x)``, every conv weight-normalized with a bias.

    ``drop_path`` drops the residual branch per sample (stochastic depth, a fine-tuning option;
    the paper trains without it).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, stage_blocks: int, block_index: int,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = WNConv2d(in_chs, out_chs, 3, stride, 1)
        self.conv1.init_role = "relu"
        self.conv2 = WNConv2d(out_chs, out_chs, 3, 1, 1)
        self.conv2.init_role, self.conv2.stage_blocks, self.conv2.block_index = "residual", stage_blocks, block_index
        self.shortcut = WNConv2d(in_chs, out_chs, 1, stride) if stride != 1 or in_chs != out_chs else nn.Identity()
        self.drop_path = _drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.conv2(F.relu(self.conv1(x)))) + self.shortcut(x)


class PreActBasicBlock(nn.Module):
    """The paper's BN block: ``conv2(ReLU(BN2(conv1(ReLU(BN1(x)))))) + x`` or ``+ conv1x1(BN1(x))``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, stage_blocks: int, block_index: int,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride) if stride != 1 or in_chs != out_chs else None
        self.drop_path = _drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.bn1(x)
        out = self.drop_path(self.conv2(F.relu(self.bn2(self.conv1(F.relu(pre))))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class CifarResNet(nn.Module):
    """Stem conv, three stages of ``blocks`` basic blocks (stride 2 at stages 2 and 3), pooling, linear.

    Args:
        blocks: residual blocks per stage (B_k, the same for every stage).
        widths: channels of the three stages.
        norm: ``'wn'`` (weight-normalized, paper's init) or ``'bn'`` (the BN twin).
        stem_width: channels of the stem conv (16 for every model of the paper).
        stem_norm / final_norm: BN after the stem / before pooling (BN family only; the paper's
            ResNet class has both, its WideResNet class neither).
        global_pool: ``'avg'`` (the paper's), ``'max'``, ``'avgmax'``, or ``''`` (none; needs ``num_classes=0``).
        drop_rate: dropout before the classifier; drop_path_rate: stochastic depth, rising linearly
            over the blocks to this rate. Both are 0 in the paper; they are there for fine-tuning.
        init: init scheme name (``wnzoo.init``); default ``wnzoo.init.DEFAULT_INIT[norm]``.
        init_batch: a normalized input batch, which data-dependent schemes use (``datadep``).
    """

    def __init__(self, blocks: int, widths: Sequence[int] = (16, 32, 64), norm: str = "wn", num_classes: int = 10,
                 in_chans: int = 3, stem_width: int = 16, stem_norm: bool = True, final_norm: bool = True,
                 global_pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 init: Optional[str] = None, init_batch: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        if norm not in DEFAULT_INIT:
            raise ValueError(f"norm must be {' or '.join(map(repr, DEFAULT_INIT))}, got {norm!r}")
        if blocks < 1 or len(widths) != 3:
            raise ValueError(f"need blocks >= 1 and three stage widths, got blocks={blocks}, widths={widths}")
        self.norm, self.blocks, self.widths = norm, blocks, tuple(widths)
        self.drop_rate = drop_rate
        self.num_features = widths[-1]
        self.grad_checkpointing = False
        wn = norm == "wn"
        self.stem = WNConv2d(in_chans, stem_width, 3, 1, 1) if wn else nn.Conv2d(in_chans, stem_width, 3, 1, 1)
        self.stem_norm = nn.BatchNorm2d(stem_width) if (not wn and stem_norm) else nn.Identity()
        stem_out = "stem_norm" if isinstance(self.stem_norm, nn.BatchNorm2d) else "stem"
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module=stem_out)]
        block_cls = WNBasicBlock if wn else PreActBasicBlock
        dpr = torch.linspace(0, drop_path_rate, 3 * blocks).tolist()
        stages, in_chs = [], stem_width
        for i, out_chs in enumerate(widths):
            stage = [block_cls(in_chs if b == 0 else out_chs, out_chs, 2 if (i > 0 and b == 0) else 1, blocks, b + 1,
                               drop_path=dpr[i * blocks + b]) for b in range(blocks)]
            stages.append(nn.Sequential(*stage))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2 ** i, module=f"stages.{i}"))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)
        self.final_norm = nn.BatchNorm2d(in_chs) if (not wn and final_norm) else nn.Identity()
        self.reset_classifier(num_classes, global_pool)
        apply_init(self, init or DEFAULT_INIT[norm], init_batch)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_norm(self.stem(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x, flatten=True)
        else:
            x = self.stages(x)
        return self.final_norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The stem's and each stage's output (timm's API): ``indices`` takes the last n if an int,
        those listed if a sequence, all if None; ``norm`` applies the final BN (BN family) to the
        last stage's output, as ``forward_features`` does."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        intermediates = []
        x = self.stem_norm(self.stem(x))
        if 0 in take_indices:
            intermediates.append(x)
        last = len(self.stages)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index]
        for feat_idx, stage in enumerate(stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.final_norm(x) if norm and feat_idx == last else x)
        if intermediates_only:
            return intermediates
        return (self.final_norm(x) if len(stages) == last else x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last intermediate kept (and the final BN and head if asked)."""
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        self.stages = self.stages[:max_index]
        if prune_norm or max_index < len(self.feature_info) - 1:
            self.final_norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, str]:
        """Parameter groups for layer-wise lr decay: the stem, then each stage (coarse) or block."""
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Parameters the paper's recipe keeps out of weight decay: none. The authors decay every
        parameter, WN gains and biases and BN affine included (their ``graph_def.py``); a recipe with
        ``wd_on_gains_biases_bn: false`` also exempts every 1-d tensor, as timm's optimizer factory does."""
        return set()

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: no classifier), got {num_classes!r}")
        if not global_pool and num_classes:
            raise ValueError(f"global_pool='' (no pooling) needs num_classes=0, got num_classes={num_classes}")
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()  # 'catavgmax' doubles it

    def residual_blocks(self) -> Iterator[Tuple[int, nn.Module]]:
        """(stage index, block) for every residual block, in forward order."""
        for s, stage in enumerate(self.stages):
            for block in stage:
                yield s, block

    def bn_folds(self) -> List[Tuple[str, str]]:
        """(producer, BN) pairs that :func:`wnzoo.fuse` folds: a conv followed by a BN, or the
        final BN into the classifier through average pooling (linear; max pooling is not)."""
        folds = [("stem", "stem_norm")] if isinstance(self.stem_norm, nn.BatchNorm2d) else []
        for s, stage in enumerate(self.stages):
            for b, block in enumerate(stage):
                if isinstance(block, PreActBasicBlock):
                    folds.append((f"stages.{s}.{b}.conv1", f"stages.{s}.{b}.bn2"))
        if (isinstance(self.final_norm, nn.BatchNorm2d) and isinstance(self.fc, nn.Linear)
                and self.global_pool.pool_type == "avg"):
            folds.append(("fc", "final_norm"))
        return folds


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: CifarResNet) -> Dict[str, torch.Tensor]:
    """Fit a checkpoint to ``model`` before timm's loader sees it.

    timm adapts a plain stem to ``in_chans`` and drops a classifier of another ``num_classes``; this
    renames legacy WN keys, adapts the WN stem, whose weight is ``g`` and ``v``
    (:func:`adapt_wn_input_conv`), and turns any other mismatch into a :class:`WeightsError` naming
    the file, where timm's non-strict load (new head, ``features_only``) would skip keys silently.
    """
    rename_legacy_keys(state_dict)
    v = state_dict.get("stem.v")
    if v is not None and v.shape[1] != model.stem.in_channels:
        g, v = adapt_wn_input_conv(model.stem.in_channels, state_dict["stem.g"], v)
        state_dict["stem.g"], state_dict["stem.v"] = g, v
    cfg = getattr(model, "pretrained_cfg", {})
    new_head = model.num_classes != cfg.get("num_classes", model.num_classes)  # timm drops the old classifier
    want = {k: v.shape for k, v in model.state_dict().items() if not (new_head and k.startswith("fc."))}
    got = {k: v.shape for k, v in state_dict.items() if not (new_head and k.startswith("fc."))}
    missing, unexpected = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    # a plain stem's weight may differ in input channels: timm adapts it after this filter
    wrong = [f"{k} {tuple(got[k])} vs {tuple(want[k])}" for k in sorted(want.keys() & got.keys())
             if got[k] != want[k] and not (k == "stem.weight" and got[k][0] == want[k][0])]
    if missing or unexpected or wrong:
        head = [w for w in wrong if w.startswith("fc.")]
        fix = (f"its classifier has {got['fc.bias'][0]} classes: pass num_classes={got['fc.bias'][0]} (the dataset's "
               f"tag, e.g. .c10 or .c100)" if head and len(head) == len(wrong) and not (missing or unexpected)
               and "fc.bias" in got else "load it into the architecture it was trained as (its config.yaml names it)")
        raise WeightsError(f"{cfg.get('file', 'the checkpoint')} does not fit {cfg.get('architecture', 'the model')}: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}; {fix}")
    return state_dict


def cifar_cfg(dataset: str = "cifar10", **kwargs) -> dict:
    """timm pretrained cfg for a CIFAR model; normalization stats come from ``wnzoo._datasets``."""
    ds = DATASETS[dataset]
    return dict(input_size=(3, 32, 32), pool_size=(8, 8), mean=ds.mean, std=ds.std, num_classes=ds.num_classes,
                crop_pct=1.0, interpolation="bilinear", first_conv="stem", classifier="fc", license="mit",
                paper_ids=f"arXiv:{paper.ARXIV_ID}", paper_name=paper.TITLE, **kwargs)


def zoo_cfgs(archs: Sequence[str]) -> dict:
    """A cfg per arch and dataset tag (``arch.c10``, ``arch.c100``), with the published weights' locations."""
    return {f"{arch}.{ds.tag}": cifar_cfg(ds.name, **published_cfg(f"{arch}.{ds.tag}"))
            for arch in archs for ds in DATASETS.values()}


def create_cifar_model(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    """Build through timm's builder: cfg resolution, ``features_only`` wrapping, and the pretrained
    load (classifier swap, ``in_chans`` adaptation) from the file :mod:`wnzoo.hub` resolved and verified."""
    cache_dir = kwargs.pop("cache_dir", None)
    if pretrained:
        asked, path = resolve_pretrained(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"),
                                         cache_dir)
        kwargs["pretrained_cfg_overlay"] = dict(kwargs.get("pretrained_cfg_overlay") or {}, file=str(path), source="")
    model = build_model_with_cfg(CifarResNet, variant, pretrained, feature_cfg=dict(flatten_sequential=True,
                                 out_indices=(0, 1, 2, 3)), pretrained_filter_fn=checkpoint_filter_fn, **kwargs)
    if pretrained:  # timm's loader read the verified local file; the cfgs keep the source the caller named
        for cfg in [m.pretrained_cfg for m in model.modules() if hasattr(m, "pretrained_cfg")]:  # a wrapper's too
            for key in ("file", "source"):
                cfg.pop(key, None)
                if asked.get(key):
                    cfg[key] = asked[key]
    return model


_DEPTHS = (20, 32, 44, 56, 110, 164, 1202)
default_cfgs = generate_default_cfgs(zoo_cfgs([f"{n}_resnet{d}" for n in ("wn", "bn") for d in _DEPTHS]))


def _resnet(variant: str, depth: int, norm: str, pretrained: bool, **kwargs) -> CifarResNet:
    return create_cifar_model(variant, pretrained, **dict(dict(blocks=(depth - 2) // 6, norm=norm), **kwargs))


@register_model
def wn_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("wn_resnet20", 20, "wn", pretrained, **kwargs)


@register_model
def wn_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("wn_resnet32", 32, "wn", pretrained, **kwargs)


@register_model
def wn_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("wn_resnet44", 44, "wn", pretrained, **kwargs)


@register_model
def wn_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("wn_resnet56", 56, "wn", pretrained, **kwargs)


@register_model
def wn_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("wn_resnet110", 110, "wn", pretrained, **kwargs)


@register_model
def wn_resnet164(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Basic-block 6·27+2 net, what the authors' code builds for 'ResNet-164' (docs/paper.md §2.3)."""
    return _resnet("wn_resnet164", 164, "wn", pretrained, **kwargs)


@register_model
def wn_resnet1202(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("wn_resnet1202", 1202, "wn", pretrained, **kwargs)


@register_model
def bn_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet20", 20, "bn", pretrained, **kwargs)


@register_model
def bn_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet32", 32, "bn", pretrained, **kwargs)


@register_model
def bn_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet44", 44, "bn", pretrained, **kwargs)


@register_model
def bn_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet56", 56, "bn", pretrained, **kwargs)


@register_model
def bn_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet110", 110, "bn", pretrained, **kwargs)


@register_model
def bn_resnet164(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet164", 164, "bn", pretrained, **kwargs)


@register_model
def bn_resnet1202(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet1202", 1202, "bn", pretrained, **kwargs)
