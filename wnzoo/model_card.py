"""Model cards: the Hub card (``README.md``) of one published variant, and the zoo's ``MODEL_CARD.md``.

Both are rendered from published records (``wnzoo/published.json``) and the run that produced the
weights, never written by hand, so a number on a card is always the one measured when the variant
was published. The paper's numbers come from ``wnzoo.evaluation.PAPER_TABLE1`` (docs/paper.md §4.1).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ._constants import DATASET_STATS, PAPER_CITATION
from .registry import twin_name

__all__ = ["describe_arch", "variant_card", "zoo_card", "WNZOO_CITATION",
           "MODEL_CARD"]

MODEL_CARD = Path(__file__).resolve().parent.parent / "MODEL_CARD.md"
PAPER_URL = "https://arxiv.org/abs/1906.02341"
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

WNZOO_CITATION = """@software{wnzoo,
  title = {wnzoo: weight-normalized residual networks for CIFAR with the initialization of Arpit, Campos and Bengio (2019), with batch-norm twins},
  note  = {Model zoo of PyTorch checkpoints published on the Hugging Face Hub},
}"""


def _paper(variant: str) -> tuple[str, str] | None:
    """(method, accuracy ± std as text) of the paper's Table 1 row a zoo variant follows, if any."""
    from .evaluation import paper_row  # the table lives with the evaluation, which prints it too

    row = paper_row(variant)
    return (row.method, _acc(row.top1, row.std)) if row else None


def _acc(acc: float, std: float | None) -> str:
    return f"{acc:.2f} ± {std:.2f}" if std is not None else f"{acc:.2f}"


def describe_arch(arch: str) -> str:
    """One sentence on the topology of a zoo architecture (docs/design.md, 'Models and names')."""
    norm, family = arch.split("_", 1)
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
    if norm == "wn":
        return (f"{graph}. Every convolution is weight-normalized (w = g·v/‖v‖, per output channel) and there is no "
                f"batch norm: a block computes x + conv2(ReLU(conv1(x))) with no ReLU on the residual stream")
    return (f"{graph}. The batch-norm twin of the WN model: the same graph with the paper's pre-activation block "
            f"(BN-ReLU-conv)")


def _hub_or_release(rec: dict, name: str) -> str:
    """A link to the variant: the Hub repo once pushed, otherwise the release copy in this repository."""
    if rec.get("pushed"):
        return f"[{rec['repo_id']}](https://huggingface.co/{rec['repo_id']})"
    return f"[release copy](hub/{name}/) (not on the Hub yet)"


def _recipe_lines(cfg: dict[str, Any], device: str) -> list[str]:
    wd_where = ("every parameter" if cfg.get("wd_on_gains_biases_bn") else
                "conv and classifier weights only (not WN gains, biases or BN parameters)")
    warm = (f"{cfg['warmup_epochs']:g} epochs, {cfg['warmup_shape']} from lr {cfg['warmup_lr']:g}"
            if cfg.get("warmup_epochs") else "none")
    sched = cfg["schedule"] + (f" (×{cfg['gamma']:g} at {', '.join(f'{m:g}' for m in cfg['milestones'])} of the run)"
                               if cfg["schedule"] == "step" else "")
    rows = [("epochs", cfg["epochs"]), ("batch size", cfg["batch_size"]),
            ("optimizer", f"SGD, momentum {cfg['momentum']:g}" + (", Nesterov" if cfg.get("nesterov") else "")),
            ("learning rate", f"{cfg['lr']:g}, {sched} schedule"), ("warmup", warm),
            ("weight decay", f"{cfg['weight_decay']:g} on {wd_where}"), ("init", cfg.get("init") or "family default"),
            ("augmentation", "random crop (4 px zero padding), horizontal flip"
             + (f", cutout {cfg['cutout']} px" if cfg.get("cutout") else "")),
            ("label smoothing", f"{cfg.get('label_smoothing', 0):g}"), ("EMA", f"{cfg.get('ema_decay', 0):g}"),
            ("mixed precision", "bf16 autocast" if cfg.get("amp") == "bf16" and device.startswith("cuda") else
             "none (fp32)"),
            ("seed", cfg["seed"])]
    return ["| setting | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]


def variant_card(rec: dict, *, train_cfg: dict[str, Any], summary: dict[str, Any], history: list[dict[str, Any]],
                 reproduce: str, recipe_notes: str, files: list[str], twin: dict | None) -> ModelCard:
    """The Hub model card of one variant: what it is, how to load it, its measured accuracy beside the
    paper's and the BN twin's, how it was trained and how to reproduce it."""
    name, dataset = f"{rec['arch']}.{rec['tag']}", rec["dataset"]
    arch, tag = rec["arch"], rec["tag"]
    stats, ds_name = DATASET_STATS[dataset], DATASET_NAMES[dataset]
    top1, top5, n = rec["metrics"]["top1"], rec["metrics"]["top5"], rec["eval"]["n"]
    data = ModelCardData(
        license="mit", library_name="timm", pipeline_tag="image-classification", datasets=[stats["hf_id"]],
        metrics=["accuracy"], model_name=name,
        tags=["image-classification", "timm", "wnzoo", "weight-normalization" if arch.startswith("wn_") else
              "batch-normalization", "resnet", dataset],
        eval_results=[EvalResult(task_type="image-classification", task_name="Image Classification",
                                 dataset_type=stats["hf_id"], dataset_name=ds_name, dataset_split="test",
                                 metric_type="accuracy", metric_name="Top-1 accuracy (%)", metric_value=top1)],
    )
    norm_word = "weight-normalized" if arch.startswith("wn_") else "batch-normalized"
    twin_norm = "BN" if arch.startswith("wn_") else "WN"
    lines = [
        f"# {name}", "",
        f"A {norm_word} CIFAR residual network (`{arch}`) trained on {ds_name} "
        + ("with the initialization of Arpit, Campos & Bengio, *How to Initialize your Network? Robust "
           f"Initialization for WeightNorm & ResNets* (NeurIPS 2019, [arXiv:1906.02341]({PAPER_URL}))"
           if arch.startswith("wn_") else
           f"as the batch-norm baseline of Arpit, Campos & Bengio (NeurIPS 2019, [arXiv:1906.02341]({PAPER_URL}))")
        + ". It is part of **wnzoo**, a model zoo of weight-normalized ResNets and their batch-norm twins.", "",
        f"**Top-1 accuracy: {top1:.2f} %** (top-5 {top5:.2f} %) on the {n:,} images of the {ds_name} test split, "
        f"measured when this checkpoint was published (fp32 on CPU, WN folded into plain weights).", "",
        "## Model details", "",
        "| | |", "| --- | --- |",
        f"| architecture | {describe_arch(arch)} |",
        f"| parameters | {rec['params']:,} |",
        f"| input | 3×32×32 RGB, pixels scaled to [0, 1], normalized with mean {tuple(stats['mean'])} and std "
        f"{tuple(stats['std'])} |",
        f"| output | {stats['num_classes']} logits, classes in the label order of `{stats['hf_id']}` |",
        f"| weights | `model.safetensors` (float32, final epoch {summary.get('epochs_done', train_cfg['epochs'])}: "
        f"no EMA, no checkpoint selection), sha256 `{rec['sha256']}` |",
        "| license | MIT |", "",
        "## Intended use", "",
        f"Research and teaching: a batch-norm-free residual baseline, studies of initialization and signal "
        f"propagation, comparisons with the BN twin, and fine-tuning on small 32×32 image tasks. It classifies "
        f"32×32 natural images into the {stats['num_classes']} {ds_name} classes and nothing else; it is not meant "
        f"for production or safety-relevant decisions.", "",
        "## How to use", "",
        "```python",
        "import wnzoo",
        f'model = wnzoo.create_model("{name}", pretrained=True).eval()',
        "fast = wnzoo.fuse(model)  # optional: WN folded into plain conv weights, same outputs, faster",
        "```", "",
        "With timm (importing wnzoo registers the architectures), or torch.hub from a clone of wnzoo:", "",
        "```python",
        "import timm, torch, wnzoo",
        f'model = timm.create_model("hf-hub:{rec["repo_id"]}", pretrained=True)',
        f'model = torch.hub.load("path/to/wnzoo", "{arch}", source="local", pretrained=True, pretrained_cfg="{tag}")',
        "```", "",
        "The weights are pinned to a revision and their sha256 is checked on load. `HF_ENDPOINT` selects a "
        "mirror, `HF_HUB_OFFLINE=1` loads from the Hugging Face cache, a fresh clone of wnzoo falls back to its "
        f"release copy `hub/{name}/`, and `pretrained_cfg_overlay=dict(file=\"model.safetensors\")` loads a local "
        "file. Preprocess as above: `timm.data.resolve_data_config({}, model=model)` returns the mean and std.", "",
        "## Results", "",
        f"| model | {ds_name} test top-1 (%) | source |", "| --- | --- | --- |",
        f"| **this checkpoint** | **{top1:.2f}** | measured at publish time on the {n:,} test images |",
    ]
    rows = [(f"paper, {label}", _paper(v)) for label, v in (("this recipe", name), (f"{twin_norm} twin", twin_name(name)))]
    for label, row in rows:
        if row:
            lines.append(f"| {label}: {row[0]} | {row[1]} | Arpit et al. (2019), Table 1 (mean ± std over seeds where "
                         f"given) |")
    lines.append(f"| {twin_norm} twin `{twin_name(name)}` | " + (
        f"{twin['metrics']['top1']:.2f} | wnzoo, {twin['epochs']} epochs |" if twin else "not published yet | |"))
    lines.append("")
    if not any(row for _, row in rows):
        lines += [f"The paper's Table 1 has no row for {arch.split('_', 1)[1]} on {ds_name} (it reports ResNet-56, "
                  "ResNet-110 and WRN-40-10 on CIFAR-10 and ResNet-164 on CIFAR-100).", ""]
    if train_cfg["epochs"] < 150:
        lines += [f"This checkpoint was trained for only {train_cfg['epochs']} epochs, while the paper's recipes "
                  "train for about 200: expect it to fall short of the paper's numbers.", ""]
    lines += [
        "## Training", "",
        f"Data: the {ds_name} training split (`{stats['hf_id']}`), "
        + (f"its first {train_cfg['subset']:,} images" if train_cfg.get("subset") else
           "45,000 images (5,000 held out for validation)" if train_cfg.get("val_split") else "all 50,000 images")
        + ", normalized with the mean and std above. Recipe:", "",
        *_recipe_lines(train_cfg, summary.get("device", "")), "",
    ]
    if summary.get("device"):
        secs = sum(r.get("epoch_time_s", 0.0) for r in history)
        world = f" × {summary['world_size']}" if summary.get("world_size", 1) > 1 else ""
        where = " then ".join(summary.get("hardware") or [summary["device"]])  # GPU names, when known
        lines += [f"Trained on {where}{world}" + (f", {secs / 60:.0f} minutes of training epochs."
                                                               if secs else "."), ""]
    if recipe_notes:
        lines += ["Notes from the recipe file:", ""] + [f"> {ln}" if ln else ">" for ln in recipe_notes.splitlines()] + [""]
    extras = [f"[`{f}`]({f})" for f in ("recipe.yaml", "metrics.jsonl") if f in files]
    if extras:
        lines += [f"Files: {' (the resolved training config) and '.join(extras)} (one line per epoch).", ""]
    if "curves.png" in files:
        lines += ["![training curves](curves.png)", ""]
    lines += [
        "## Reproduce", "",
        "From a clone of wnzoo, with CIFAR in one of the forms `wnzoo.data` reads (`--data`):", "",
        "```bash",
        f"{reproduce}   # trains a new checkpoint",
        f"python eval/cifar.py --model {name}   # evaluates these weights: prints the number above",
        "```", "",
        "Evaluating these weights reproduces the number above. Retraining gives a new checkpoint whose accuracy "
        "varies with the seed and the hardware (the paper's standard deviations over seeds are 0.1 to 0.5 points).", "",
        "## Evaluation protocol", "",
        f"Top-1 accuracy of the final checkpoint on the official {ds_name} test split ({n:,} images), no test-time "
        "augmentation. The test set was never used for model selection: hyperparameters come from the recipe, and "
        "the published weights are those of the last epoch.", "",
        "## Limitations", "",
        f"- Trained on {ds_name} only: 32×32 inputs of its {stats['num_classes']} classes; other sizes or domains "
        "need fine-tuning. Accuracy under distribution shift, calibration and robustness were not evaluated.",
        "- One seed: the number above is a single run, not a mean over seeds as in the paper.",
        f"- {ds_name} has known label noise and near-duplicates between its splits; its classes and images carry the "
        "biases of the web images it was built from.",
        "- Weight-normalized nets without BN are sensitive to the learning rate; the init and warmup of the paper "
        "make them trainable, and fine-tuning should keep a warmup." if arch.startswith("wn_") else
        "- Batch-norm statistics were estimated on the training data; fine-tuning with small batches changes them.",
        "",
        "## Citation", "",
        "```bibtex", PAPER_CITATION, "", WNZOO_CITATION, "```", "",
    ]
    return ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(lines))


def zoo_card(records: dict[str, dict]) -> str:
    """``MODEL_CARD.md``: every published variant with its accuracy beside the paper's and the BN twin's."""
    rows = []
    for name in sorted(records):
        rec = records[name]
        paper = _paper(name)
        twin = records.get(twin_name(name))
        rows.append(
            f"| `{name}` | {DATASET_NAMES[rec['dataset']]} | {rec['params'] / 1e6:.2f} M | {rec['epochs']} "
            f"| **{rec['metrics']['top1']:.2f}** | {paper[1] if paper else '—'} "
            f"| {f'{twin_name(name)}: ' + format(twin['metrics']['top1'], '.2f') if twin else '—'} "
            f"| [{rec['recipe']}]({rec['recipe']}) | {_hub_or_release(rec, name)} |")
    table = (["| variant | dataset | params | epochs | top-1 (%) | paper (%) | twin (%) | recipe | weights |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"] + rows) if rows else \
        ["No variant is published yet: `python hub/publish.py RUN_DIR --repo-id wnzoo/<arch>.<tag>` publishes one."]
    lines = [
        "<!-- Generated from wnzoo/published.json by `python hub/publish.py --model-card`; do not edit by hand. -->",
        "", "# wnzoo model card", "",
        "wnzoo publishes weight-normalized (WN) CIFAR ResNets and WideResNets initialized as Arpit, Campos & Bengio, "
        f"*How to Initialize your Network? Robust Initialization for WeightNorm & ResNets* (NeurIPS 2019, "
        f"[arXiv:1906.02341]({PAPER_URL})), each beside a batch-norm (BN) twin of the same topology. Every variant "
        "is one Hugging Face Hub repo `wnzoo/<arch>.<tag>` (`c10`: CIFAR-10, `c100`: CIFAR-100) with its weights, "
        "a model card, its training recipe and its training metrics.", "",
        "## Published checkpoints", "",
        *table, "",
        "Top-1 is the accuracy on the full official test split, measured when the variant was published (fp32 on "
        "CPU); `python eval/cifar.py --model <variant>` reproduces it. *Paper* is the paper's Table 1 for the same "
        "architecture and dataset (its best WN recipe for WN variants, its BN baseline for BN ones; mean ± std over "
        "seeds, — where the paper has no row). *Twin* is the published BN twin of a WN variant and vice versa. "
        "*Epochs* tells short pipeline-proof runs from full recipes (the paper trains for about 200 epochs).", "",
        "## Loading", "",
        "```python",
        "import wnzoo",
        'model = wnzoo.create_model("wn_resnet20.c10", pretrained=True)',
        "```", "",
        "Weights are pinned to a Hub revision and checked against their sha256. They resolve from "
        "`pretrained_cfg_overlay=dict(file=...)`, then the Hugging Face cache or Hub (`HF_ENDPOINT` for a mirror, "
        "`HF_HUB_OFFLINE=1` for the cache only), then the release copy under `hub/<variant>/` in this repository "
        "(weight files up to 10 MB), so a fresh clone loads them with no network. "
        "`timm.create_model(\"hf-hub:wnzoo/<variant>\", pretrained=True)` works after `import wnzoo`.", "",
        "## Intended use", "",
        "Research and teaching: batch-norm-free residual baselines, initialization and signal-propagation studies, "
        "WN versus BN comparisons, and fine-tuning on small 32×32 image tasks. Not for production or "
        "safety-relevant decisions.", "",
        "## Training data", "",
        "CIFAR-10 and CIFAR-100 (`uoft-cs/cifar10`, `uoft-cs/cifar100` on the Hub): 50,000 training and 10,000 "
        "test images of 32×32 pixels. Training uses the training split (45,000 images when a recipe holds out a "
        "validation split) with random crops (4 px padding) and horizontal flips, plus cutout where the recipe "
        "says so; each variant's card lists its full recipe.", "",
        "## Evaluation protocol", "",
        "Top-1 accuracy of the final checkpoint on the official test split, without test-time augmentation. The "
        "test set is never used for model selection: recipes are fixed in `configs/` before training (each file says "
        "how its values were chosen; `val_split: true` tunes on a 45k/5k train/validation split as the paper did), "
        "and the published weights are the last epoch's, whatever the per-epoch test curve shows.", "",
        "## Limitations", "",
        "- Each variant recognizes the 10 or 100 CIFAR classes in 32×32 images only; robustness, calibration and "
        "fairness were not evaluated. CIFAR has label noise and carries the biases of its web images.",
        "- Numbers are single runs; the paper reports means over seeds (standard deviations of 0.1 to 0.5 points).",
        "- Short runs (few epochs) prove the pipeline and fall short of the paper's numbers; the table shows the "
        "epochs of each.", "",
        "## Citation", "",
        "```bibtex", PAPER_CITATION, "", WNZOO_CITATION, "```", "",
    ]
    return "\n".join(lines)
