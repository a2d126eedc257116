"""Model cards: the Hub card (``README.md``) of one published variant, and the zoo's ``MODEL_CARD.md``.

Both are rendered from published records (:mod:`wnzoo.published`) and the run that produced the
weights, never written by hand, so a number on a card is always the one measured when the variant
was published. The cards' text is the Markdown of ``wnzoo/templates/`` (Jinja2, as the Hub's
``ModelCard.from_template``); this module only computes the values they show. The paper's numbers
come from :mod:`wnzoo.paper` (docs/paper.md §4.1).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from . import paper
from ._datasets import DATASETS, DatasetInfo
from .published import HubFolder, PublishedVariant
from .registry import norm_of, split_norm, twin_name

__all__ = ["describe_arch", "variant_card", "zoo_card", "zoo_status", "WNZOO_CITATION", "MODEL_CARD", "HUB_ORG_URL"]

MODEL_CARD = Path(__file__).resolve().parent.parent / "MODEL_CARD.md"
TEMPLATES = Path(__file__).resolve().parent / "templates"
HUB_ORG_URL = "https://huggingface.co/wnzoo"  # the Hub organisation of every published repo (``wnzoo/<arch>.<tag>``)

WNZOO_CITATION = f"""@software{{wnzoo,
  title  = {{wnzoo: weight-normalized residual networks for CIFAR with the initialization of Arpit, Campos and Bengio (2019), with batch-norm twins}},
  author = {{{{wnzoo contributors}}}},
  year   = {{2026}},
  url    = {{{HUB_ORG_URL}}},
  note   = {{Model zoo of PyTorch checkpoints published on the Hugging Face Hub}},
}}"""

# Both cards are rendered with the whitespace rules of the Hub's ``ModelCard.from_template`` (Jinja2's
# defaults), but a missing value fails instead of printing nothing.
_JINJA = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined)


class _PaperResult(NamedTuple):
    """The paper's Table 1 row a variant follows, as a card shows it."""

    method: str
    accuracy: str  # top-1 %, ``± std`` over seeds where the paper gives one


class _ZooRow(NamedTuple):
    """One variant of the zoo card's table, with what it is compared to."""

    rec: PublishedVariant
    dataset: DatasetInfo
    paper: _PaperResult | None
    twin_name: str
    twin: PublishedVariant | None


def _paper(variant: str) -> _PaperResult | None:
    """The paper's result for a zoo variant, if Table 1 has a row for it."""
    row = paper.paper_row(variant)
    return _PaperResult(row.method, row.top1_text) if row else None


def describe_arch(arch: str) -> str:
    """One sentence on the topology of a zoo architecture (README.md, 'Models')."""
    family = split_norm(arch)[1]
    if m := re.fullmatch(r"resnet(\d+)", family):
        depth = int(m.group(1))
        graph = (f"ResNet-{depth} for CIFAR: 6n+2 layers with n = {(depth - 2) // 6} basic blocks per stage, widths "
                 f"16/32/64, 1×1 projection shortcuts where the shape changes, global average pooling, plain linear "
                 f"classifier")
    else:
        depth, k = map(int, re.fullmatch(r"wrn(\d+)_(\d+)", family).groups())
        graph = (f"WRN-{depth}-{k}: 6n+4 layers with n = {(depth - 4) // 6} basic blocks per stage, widths "
                 f"{16 * k}/{32 * k}/{64 * k}, 1×1 projection shortcuts where the shape changes, global average "
                 f"pooling, plain linear classifier")
    if norm_of(arch) == "wn":
        return (f"{graph}. Every convolution is weight-normalized (w = g·v/‖v‖, per output channel) and there is no "
                f"batch norm: a block computes x + conv2(ReLU(conv1(x))) with no ReLU on the residual stream")
    return (f"{graph}. The batch-norm twin of the WN model: the same graph with the paper's pre-activation block "
            f"(BN-ReLU-conv)")


def _recipe(cfg: dict[str, Any], hardware: list[str]) -> list[tuple[str, Any]]:
    """(setting, value) rows of the card's recipe table, in words, from the resolved training config and
    the devices it trained on (bf16 autocast runs on GPUs only)."""
    wd_where = ("every parameter" if cfg.get("wd_on_gains_biases_bn") else
                "conv and classifier weights only (not WN gains, biases or BN parameters)")
    warm = (f"{cfg['warmup_epochs']:g} epochs, {cfg['warmup_shape']} from lr {cfg['warmup_lr']:g}"
            if cfg.get("warmup_epochs") else "none")
    sched = cfg["schedule"] + (f" (×{cfg['gamma']:g} at {', '.join(f'{m:g}' for m in cfg['milestones'])} of the run)"
                               if cfg["schedule"] == "step" else "")
    bf16 = cfg.get("amp") == "bf16" and any(h != "cpu" for h in hardware)
    return [("epochs", cfg["epochs"]), ("batch size", cfg["batch_size"]),
            ("optimizer", f"SGD, momentum {cfg['momentum']:g}" + (", Nesterov" if cfg.get("nesterov") else "")),
            ("learning rate", f"{cfg['lr']:g}, {sched} schedule"), ("warmup", warm),
            ("weight decay", f"{cfg['weight_decay']:g} on {wd_where}"), ("init", cfg.get("init") or "family default"),
            ("augmentation", "random crop (4 px zero padding), horizontal flip"
             + (f", cutout {cfg['cutout']} px" if cfg.get("cutout") else "")),
            ("label smoothing", f"{cfg.get('label_smoothing', 0):g}"), ("EMA", f"{cfg.get('ema_decay', 0):g}"),
            ("mixed precision", "bf16 autocast" if bf16 else "none (fp32)"), ("seed", cfg["seed"])]


def _card_data(rec: PublishedVariant, ds: DatasetInfo) -> ModelCardData:
    """The card's YAML front matter: what the Hub indexes (license, library, dataset, the measured top-1)."""
    norm_tag = "weight-normalization" if norm_of(rec.name) == "wn" else "batch-normalization"
    return ModelCardData(
        license="mit", library_name="timm", pipeline_tag="image-classification", datasets=[ds.hf_id],
        metrics=["accuracy"], model_name=rec.name,
        tags=["image-classification", "timm", "wnzoo", norm_tag, "resnet", rec.dataset],
        eval_results=[EvalResult(task_type="image-classification", task_name="Image Classification",
                                 dataset_type=ds.hf_id, dataset_name=ds.display, dataset_split="test",
                                 metric_type="accuracy", metric_name="Top-1 accuracy (%)", metric_value=rec.top1)],
    )


def variant_card(rec: PublishedVariant, *, train_cfg: dict[str, Any], trained: dict[str, Any],
                 history: list[dict[str, Any]], reproduce: str, recipe_notes: str, files: list[str],
                 twin: PublishedVariant | None) -> ModelCard:
    """The Hub model card of one variant: what it is, how to load it, its measured accuracy beside the
    paper's and the BN twin's, how it was trained and how to reproduce it (``templates/variant_card.md``).

    ``trained`` is where it trained (``hardware``: the devices' names in order, ``world_size``), as its
    folder's ``config.json`` keeps it; ``twin`` the twin's record, if it is published."""
    ds, twin_variant = DATASETS[rec.dataset], twin_name(rec.name)
    data = _card_data(rec, ds)
    text = _JINJA.get_template("variant_card.md").render(
        card_data=data.to_yaml(), rec=rec, ds=ds, paper=paper, hub=HubFolder, norm=norm_of(rec.name),
        topology=split_norm(rec.arch)[1], architecture=describe_arch(rec.arch),
        own_paper=_paper(rec.name), twin_paper=_paper(twin_variant),
        twin_name=twin_variant, twin_norm=norm_of(twin_variant).upper(), twin=twin,
        train_cfg=train_cfg, trained=trained, recipe=_recipe(train_cfg, trained.get("hardware", [])),
        train_seconds=sum(r.get("epoch_time_s", 0.0) for r in history),
        reproduce=reproduce, recipe_notes=recipe_notes, files=files, wnzoo_citation=WNZOO_CITATION)
    return ModelCard(text)


def zoo_status(records: dict[str, PublishedVariant]) -> str:
    """What exists today, in the README's first lines: the published weights, and the paper's
    variants that have none yet. Generated from the records, so it stays true as checkpoints land."""
    def listing(items: list[str]) -> str:
        return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"

    done = [f"`{n}` ({r.top1:.2f} % top-1 after {r.epochs} epochs)" for n, r in sorted(records.items())]
    todo = [f"`{r.variant}`" for r in paper.PAPER_TABLE1 if r.variant and r.variant not in records]
    short = " (short runs, not the paper's schedules)" if any(r.epochs < 100 for r in records.values()) else ""
    text = (f"**What exists today.** Published weights{short}: {listing(done)}." if done else
            "**What exists today.** No published weights yet.")
    if todo:
        text += (f" The paper's variants {listing(todo)} have recipes in `configs/` but no weights yet: "
                 f"`pretrained=True` on them raises an error that says so. Every architecture builds and "
                 f"trains from scratch.")
    return text


def zoo_card(records: dict[str, PublishedVariant]) -> str:
    """``MODEL_CARD.md``: every published variant with its accuracy beside the paper's and the BN twin's
    (``templates/zoo_card.md``)."""
    rows = [_ZooRow(rec, DATASETS[rec.dataset], _paper(name), twin_name(name), records.get(twin_name(name)))
            for name, rec in sorted(records.items())]
    return _JINJA.get_template("zoo_card.md").render(rows=rows, paper=paper, datasets=list(DATASETS.values()),
                                                     wnzoo_citation=WNZOO_CITATION)
