"""Accuracy of a model on a test set, and the reproduction table that ``python eval/cifar.py`` prints.

The table evaluates published variants (:mod:`wnzoo.published`) or a local checkpoint on their
dataset's official test split and puts each measured top-1 beside the model card's, the paper's
(Table 1, :mod:`wnzoo.paper`) and the BN twin's card. Only published weights are held to their
card; a local checkpoint is a row of its own, named by its file. Models are evaluated fused
(:func:`wnzoo.fuse`), channels_last, from uint8 data held on the device, in batches of 256 (the
fastest size measured on 2 CPU cores; 1000 was 20 % slower) under ``torch.inference_mode``: the
fast path, with the same predictions as the plain model.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from timm.models import split_model_name_tag
from torch import nn
from tqdm.auto import tqdm

from . import published
from ._cli import BAD_INPUT, CARD_MISMATCH, OK
from ._datasets import TAG_DATASET
from ._io import WeightsError, read_metadata, weights_path
from .data import DataError, DeviceData, HubUnreachable, load_split
from .layers import fuse
from .paper import PAPER_TABLE1, paper_row
from .registry import bn_twin, create_model

__all__ = ["predict", "evaluate", "resolve_device", "load_test_data", "inference_model", "reproduction_table",
           "card_mismatches", "problems", "exit_code", "format_table", "format_paper_table", "CARD_TOLERANCE",
           "TEST_SPLIT_SIZE"]

# A published checkpoint must reproduce its card's top-1 to within this many points, on the whole
# official test split (10,000 images for CIFAR-10 and CIFAR-100); a subset is not held to the card.
CARD_TOLERANCE = 0.05
TEST_SPLIT_SIZE = 10_000


@torch.inference_mode()
def predict(model: nn.Module, data: DeviceData, batch_size: int = 500, progress: bool = False,
            autocast: bool = False, desc: str = "eval") -> torch.Tensor:
    """Logits (float32, on the data's device) for every image of ``data``, in order."""
    model.eval()
    out = []
    batches = data.batches(0, batch_size, train=False)
    if progress:
        batches = tqdm(batches, total=data.num_batches(batch_size, False), desc=desc, unit="batch", leave=False)
    dev_type = data.labels.device.type
    for x, _ in batches:
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=autocast and dev_type == "cuda"):
            out.append(model(x).float())
    return torch.cat(out)


def evaluate(model: nn.Module, data: DeviceData, batch_size: int = 500, **kwargs) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over ``data``."""
    logits = predict(model, data, batch_size, **kwargs)
    y = data.labels
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return dict(top1=100.0 * (top5[:, 0] == y).float().mean().item(),
                top5=100.0 * (top5 == y[:, None]).any(1).float().mean().item(),
                loss=nn.functional.cross_entropy(logits, y).item(), n=len(y))


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """``device``, checked to exist here; ``None`` picks cuda when available, else cpu. Only the CPU and
    CUDA devices evaluate: torch knows other device types (meta, mps, xla), which fail later, or
    compute nothing (meta)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r} ({e}); use e.g. cpu, cuda or cuda:1") from e
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev.type not in ("cpu", "cuda") or (dev.type == "cuda" and (dev.index or 0) >= count):
        usable = ", ".join(["cpu"] + [f"cuda:{i}" for i in range(count)])
        raise ValueError(f"device {device!r} is not available here ({count} CUDA devices); use one of: {usable}")
    return dev


def load_test_data(source: str | Path | None, dataset: str, device: torch.device | str = "cpu",
                   channels_last: bool = True) -> DeviceData:
    """The official test split of ``dataset`` from any source :func:`wnzoo.data.load_split` accepts."""
    images, labels = load_split(source, dataset, "test")
    return DeviceData.from_arrays(images, labels, dataset, device, channels_last=channels_last)


def inference_model(model: nn.Module, device: torch.device | str = "cpu", channels_last: bool = True,
                    compile: bool = False) -> nn.Module:
    """The fast, prediction-identical form of ``model``: fused, on ``device``, channels_last, optionally compiled."""
    fused = fuse(model).to(device)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    return torch.compile(fused) if compile else fused


def _refuse_other_formats(checkpoint: str | Path) -> None:
    """A weights file says format 'pt' (safetensors' torch files) or nothing; a run's training state is
    a safetensors file too, of format 'wnzoo.run-state.v1', which holds the weights under other names.
    A file that cannot be read is left to the weights loader, which says how to fix it."""
    path = weights_path(checkpoint)
    try:
        fmt = read_metadata(path).get("format", "pt")
    except (SafetensorError, OSError, ValueError):
        return
    if fmt != "pt":
        raise WeightsError(f"{path} holds no model weights but format {fmt[:40]!r}: a run's training state "
                           f"(state.safetensors) is not weights; pass the run's model.safetensors, or write it "
                           f"with python train/train.py --export {path.parent}")


def _build(name: str, checkpoint: str | Path | None) -> tuple[nn.Module, str]:
    """Model with weights (the published ones without ``checkpoint``: the hub verifies their pinned
    sha256) and its ``arch.tag``."""
    if checkpoint is None:
        model = create_model(name, pretrained=True)
    else:
        _refuse_other_formats(checkpoint)
        model = create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint)))
    cfg = model.pretrained_cfg
    return model, f"{cfg['architecture']}.{cfg['tag']}"


def _card_top1(variant: str | None) -> float | None:
    rec = published.get(variant) if variant else None
    return rec.top1 if rec else None


def _row(model: nn.Module, variant: str, checkpoint: str | Path | None, data: DeviceData, batch_size: int,
         compile: bool, progress: bool) -> dict:
    """One row of the table. A checkpoint's row shows the published variant's card for reference (the
    user's weights are not the card's): ``published`` False, no ``delta_card``, never a mismatch."""
    device = data.labels.device
    fast = inference_model(model, device, channels_last=data.channels_last, compile=compile)
    if compile:  # compile on a warm-up batch, so images/s measures the compiled model, not the compiler
        with torch.inference_mode():
            fast(next(data.batches(0, batch_size, train=False))[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    res = evaluate(fast, data, batch_size, progress=progress, desc=str(checkpoint or variant))
    seconds = time.perf_counter() - start
    card, paper, is_published = _card_top1(variant), paper_row(variant), checkpoint is None
    return dict(model=variant, weights="published" if is_published else str(checkpoint), published=is_published,
                params=sum(p.numel() for p in model.parameters()), dataset=_dataset(variant), n=res["n"],
                full_test_split=res["n"] == TEST_SPLIT_SIZE, top1=round(res["top1"], 2),
                top5=round(res["top5"], 2), loss=round(res["loss"], 4), card_top1=card,
                paper_top1=paper.top1 if paper else None, bn_twin_top1=_card_top1(bn_twin(variant)),
                delta_card=(round(res["top1"] - card, 2) + 0.0  # + 0.0: no "-0.00"
                            if is_published and card is not None else None),
                images_per_s=round(res["n"] / seconds, 1), device=str(device))


def _dataset(variant: str) -> str:
    rec = published.get(variant)
    return rec.dataset if rec else TAG_DATASET[split_model_name_tag(variant)[1]]


def reproduction_table(models: list[str] | None = None, checkpoint: str | Path | None = None,
                       data: str | Path | None = None, device: torch.device | str | None = None,
                       batch_size: int = 256, compile: bool = False, progress: bool = False) -> list[dict]:
    """Evaluate ``models`` (default: every published variant) on their datasets' test splits.

    ``checkpoint`` evaluates a local safetensors file as the one architecture in ``models``: its row
    has ``weights`` the file and ``published`` False, and is never compared with a card.
    ``data`` is any source :func:`wnzoo.data.load_split` accepts (a folder holding ``cifar10/`` and
    ``cifar100/`` serves both); ``None`` means each dataset's HF id. Each test split is loaded once.
    Returns one dict per model (the columns of :func:`format_table`); a model whose weights or data
    cannot be had gets ``{'model', 'error'}`` instead, so one missing dataset or download does not
    hide the rest of the table. Unknown names and devices raise ``ValueError``, and so does a Hub
    that cannot be reached for the data (:class:`~wnzoo.data.HubUnreachable`): no row could have it.
    """
    if checkpoint is not None and (not models or len(models) != 1):
        raise ValueError("a checkpoint needs exactly one architecture to load it into, e.g. "
                         "--checkpoint model.safetensors --model wn_resnet20")
    device = resolve_device(device)
    loaded: dict[str, DeviceData | DataError] = {}
    rows = []
    for name in models or sorted(published.variants()):
        try:
            model, variant = _build(name, checkpoint)
        except WeightsError as e:
            rows.append(dict(model=name, error=str(e)))
            continue
        dataset = _dataset(variant)
        if dataset not in loaded:
            try:
                loaded[dataset] = load_test_data(data, dataset, device)
            except HubUnreachable:
                raise
            except DataError as e:
                loaded[dataset] = e
        if isinstance(loaded[dataset], DataError):
            rows.append(dict(model=variant, error=str(loaded[dataset])))
            continue
        rows.append(_row(model, variant, checkpoint, loaded[dataset], batch_size, compile, progress))
    return rows


def card_mismatches(rows: list[dict], tolerance: float = CARD_TOLERANCE) -> list[dict]:
    """Rows of published weights, measured on the whole test split, whose top-1 is off their card by
    more than ``tolerance`` points."""
    return [r for r in rows if "error" not in r and r["published"] and r["full_test_split"] and r["card_top1"] is not None
            and abs(r["top1"] - r["card_top1"]) > tolerance + 1e-9]


def problems(rows: list[dict], tolerance: float = CARD_TOLERANCE) -> list[str]:
    """What ``eval/cifar.py`` reports on stderr besides the table: rows that could not be evaluated,
    published weights measured on part of the test split only, and card mismatches."""
    lines = [f"error: {r['model']}: {r['error']}" for r in rows if "error" in r]
    lines += [f"note: {r['model']} was measured on {r['n']} images, not the whole test split; not compared with its "
              f"card" for r in rows if "error" not in r and r["published"] and not r["full_test_split"]]
    lines += [f"error: {r['model']} measures {r['top1']:.2f} % top-1, its card says {r['card_top1']:.2f} % "
              f"(tolerance {tolerance}); the weights or the evaluation changed"
              for r in card_mismatches(rows, tolerance)]
    return lines


def exit_code(rows: list[dict], tolerance: float = CARD_TOLERANCE) -> int:
    """1 when a published checkpoint is off its card, 2 when a row could not be evaluated, else 0."""
    return CARD_MISMATCH if card_mismatches(rows, tolerance) else BAD_INPUT if any("error" in r for r in rows) else OK


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def _render(header: list[str], body: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


def format_table(rows: list[dict]) -> str:
    """The reproduction table: top-5 only for CIFAR-100 rows (no column without one), '—' where there is
    nothing to compare. A checkpoint's row is named by its file: it is not the published variant."""
    header = ["model", "params", "dataset", "top-1", "top-5", "card", "paper", "BN twin", "Δ card", "img/s"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["model"], "—", "—", "error"] + ["—"] * 6)
            continue
        body.append([r["model"] if r["published"] else r["weights"], f"{r['params'] / 1e6:.2f}M", r["dataset"], _fmt(r["top1"]),
                     _fmt(r["top5"] if r["dataset"] == "cifar100" else None), _fmt(r["card_top1"]),
                     _fmt(r["paper_top1"]), _fmt(r["bn_twin_top1"]), _fmt(r["delta_card"], "+.2f"),
                     _fmt(r["images_per_s"], ".0f")])
    if not any(r.get("dataset") == "cifar100" for r in rows):
        header, body = header[:4] + header[5:], [b[:4] + b[5:] for b in body]
    return _render(header, body, right=set(range(3, len(header))))


def format_paper_table(rows: Sequence[dict] = ()) -> str:
    """The paper's Table 1 (test error %) with our measured error beside each row we have a checkpoint for."""
    measured = {}
    for r in rows:
        if "error" not in r:
            measured.setdefault(r["model"], r)
    header = ["dataset", "architecture", "method", "paper error %", "our error %", "zoo model"]
    body = []
    for p in PAPER_TABLE1:
        ours = measured.get(p.variant)
        zoo = p.variant or "—"
        if p.variant and published.get(p.variant) is None:
            zoo += " (not published)"
        body.append([p.dataset, p.architecture, p.method, p.error_text, _fmt(100.0 - ours["top1"] if ours else None),
                     zoo])
    return _render(header, body, right={3, 4})

