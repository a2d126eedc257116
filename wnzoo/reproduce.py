"""The paper's robustness experiments (Table 2, Figure 3) as presets, with the paper's numbers beside ours.

Each experiment has two scales: ``paper`` (the paper's settings where it gives them, for a GPU) and
``cpu`` (reduced to finish in minutes on a laptop; every reduction is listed in its output). A
preset is a set of config overrides on a training recipe plus the experiment's own parameters.
:func:`run_experiment` runs one into a folder (resumable: rows are journaled as they finish) and
writes ``results.json`` (settings and raw rows), ``table.md`` and a PNG in the style of the paper's
figure. The verdicts are computed from the rows, never written by hand.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import paper
from ._datasets import DATASETS
from ._io import atomic_write, write_json
from .robustness import Shard, depth_sweep, divergence_grid, hessian_sweep, parse_shard
from .registry import is_zoo_model, norm_of
from .training.config import ConfigError, TrainConfig, load_config, parse_overrides

__all__ = ["Preset", "Experiment", "EXPERIMENTS", "SCALES", "preset", "experiment_config", "run_experiment",
           "run_shard", "render",
           "Report", "cli"]

SCALES = ("cpu", "paper")
SCHEMES = tuple(paper.ROBUSTNESS_SCHEMES)
_K1 = {"widths": [16, 32, 64]}  # a WRN of width 1: the CPU presets' (and the depth sweep's) reduction


@dataclass(frozen=True)
class Preset:
    """One scale of one experiment: ``overrides`` on the recipe's config, the experiment's ``params``
    and, for reduced scales, what differs from the paper, in words."""

    overrides: dict[str, Any]
    params: dict[str, Any]
    reductions: tuple[str, ...] = ()


_HESSIAN = {
    "paper": Preset(dict(eval_every=0), dict(batches=39, iters=40, seeds=[0, 1, 2])),
    "cpu": Preset(dict(eval_every=0, subset=1024, model_args=_K1), dict(batches=2, iters=16, seeds=[0, 1, 2]),
                  ("stages of 16/32/64 channels (for WRN-40-10: width 1 instead of 10)",
                   "Hessian averaged over 2 batches of 128 instead of the first 10 % of an epoch (39 batches)",
                   "16 power iterations instead of 40", "3 seeds")),
}
# Where the paper is silent about Figure 3's optimizer, the authors' code defaults: plain SGD (momentum 0),
# constant lr (0.01 unless swept), no warmup; weight decay (5e-4) and cutout (16 px) stay the WRN-40-10
# recipe's. The paper gives neither the lr nor the width of the depth sweep.
_FIG3 = dict(momentum=0.0, nesterov=False, schedule="constant", warmup_epochs=0)
_DEPTH_BASE = dict(_FIG3, epochs=1, lr=0.01, model_args=_K1)
_DEPTH = {
    "paper": Preset(dict(_DEPTH_BASE), dict(depths=[10, 100, 1000, 10000], seeds=[0, 1, 2])),
    "cpu": Preset(dict(_DEPTH_BASE, batch_size=32, subset=2880, eval_subset=1000, log_every=1),
                  dict(depths=[10, 100, 1000], seeds=[0, 1]),
                  ("one 'epoch' of 2,880 training images (90 steps of 32) instead of 50,000 (390 steps of 128)",
                   "test accuracy on the first 1,000 test images", "depths 10, 100, 1,000 (not 10,000)",
                   "two seeds")),
}
# Figure 3 right: three epochs, with no warmup or one epoch of the authors' quadratic warmup from 0.
_GRID_BASE = dict(_FIG3, epochs=3, warmup_lr=0.0, warmup_shape="quadratic", eval_every=0)
_GRID_PARAMS = dict(lrs=[0.001, 0.005, 0.01, 0.05, 0.1], warmups=[0, 1])
_GRID = {
    "paper": Preset(dict(_GRID_BASE), dict(_GRID_PARAMS, seeds=list(range(20)))),
    "cpu": Preset(dict(_GRID_BASE, model_args=_K1, batch_size=64, subset=512, log_every=1),
                  dict(_GRID_PARAMS, seeds=[0, 1, 2]),
                  ("width 1 (16/32/64 channels) instead of 10",
                   "an 'epoch' is 512 training images (8 steps of 64): runs reach step 24 instead of epoch 3",
                   "3 seeds per cell instead of 20")),
}


def preset(experiment: str, scale: str) -> Preset:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {list(SCALES)}")
    return EXPERIMENTS[experiment].presets[scale]


# ---- reports ---------------------------------------------------------------------------------------

@dataclass
class Report:
    """What an experiment found: the table (markdown), the claim and whether our rows support it."""

    table: str
    claim: str
    verdict: str
    supported: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _mean_std(values: list[float | None]) -> tuple[float, float]:
    """Mean and std of the finite values; ``(inf, 0)`` when one overflowed (``None``)."""
    if any(v is None for v in values):
        return math.inf, 0.0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _hessian_report(rows: list[dict[str, Any]], model: str) -> Report:
    ref = paper.PAPER_HESSIAN[model]
    ours = {s: _mean_std([r["log_norm"] for r in rows if r["init"] == s]) for s in dict.fromkeys(r["init"] for r in rows)}
    body = []
    for s, (m, sd) in ours.items():
        p = ref.get(s)
        body.append([paper.ROBUSTNESS_SCHEMES.get(s, s), f"{p[0]:.2f} ± {p[1]:.2f}" if p else "N/A",
                     f"{m:.2f} ± {sd:.2f}" if math.isfinite(m) else "overflow", str(sum(r["init"] == s for r in rows))])
    best = min(ours, key=lambda s: ours[s][0])
    others = ", ".join(f"{s} {ours[s][0]:.2f}" for s in ours if s != best)
    supported = best == "proposed"
    verdict = (f"{'supported' if supported else 'not supported'}: the smallest ln spectral norm is {best}'s "
               f"({ours[best][0]:.2f}; {others})")
    return Report(_md(["init", f"paper log‖H‖ ({ref['label']})", "ours ln‖H‖", "seeds"], body),
                  "at init the proposed scheme has the smallest log spectral norm of the loss Hessian", verdict,
                  supported, dict(mean_std={s: list(v) if math.isfinite(v[0]) else None for s, v in ours.items()}))


def _verdict(checks: list[tuple[str, bool]]) -> tuple[bool, str]:
    """Supported when every part of a claim holds (and there is one); the text says which parts do."""
    supported = bool(checks) and all(c for _, c in checks)
    return supported, f"{'supported' if supported else 'not supported'}: " + "; ".join(
        f"{what}: {'yes' if c else 'no'}" for what, c in checks)


_CHANCE_MARGIN = 0.05  # "trains": survives and beats chance by 5 points after the budget


def _depth_report(rows: list[dict[str, Any]], num_classes: int) -> Report:
    depths = sorted({r["depth"] for r in rows})
    schemes = list(dict.fromkeys(r["init"] for r in rows))
    acc = {(d, s): [r["test_acc"] / 100 if r["survived"] else 0.0 for r in rows if (r["depth"], r["init"]) == (d, s)]
           for d in depths for s in schemes}
    died = {(d, s): sum(not r["survived"] for r in rows if (r["depth"], r["init"]) == (d, s)) for d in depths
            for s in schemes}
    body = []
    for d in depths:
        cells = []
        for s in schemes:
            p = paper.PAPER_DEPTH.get(d, {}).get(s)
            mark = f" ({died[d, s]} diverged)" if died[d, s] else ""
            cells.append(f"{p:.2f} / {statistics.fmean(acc[d, s]):.2f}{mark}" if p is not None
                         else f"— / {statistics.fmean(acc[d, s]):.2f}{mark}")
        body.append([f"{d:,}"] + cells)
    trains = 1 / num_classes + _CHANCE_MARGIN
    ok = lambda d, s: died[d, s] == 0 and min(acc[d, s]) >= trains  # noqa: E731
    checks = []
    if "proposed" in schemes:
        checks.append(("proposed trains at every depth", all(ok(d, "proposed") for d in depths)))
    if "default_orthogonal" in schemes and any(d >= 100 for d in depths):
        deep = [d for d in depths if d >= 100]
        checks.append(("PyTorch default fails from 100 layers on", not any(ok(d, "default_orthogonal") for d in deep)))
    supported, verdict = _verdict(checks)
    verdict += f" (trains = no divergence and accuracy ≥ {trains:.2f})"
    header = ["layers"] + [f"{paper.ROBUSTNESS_SCHEMES.get(s, s)} (paper / ours)" for s in schemes]
    return Report(_md(header, body), "the proposed init trains WN WRNs of every depth (10 to 10,000 layers); "
                  "PyTorch's default fails from 100 layers on", verdict, supported,
                  dict(chance=1 / num_classes,
                       mean_acc={f"{d}/{s}": statistics.fmean(acc[d, s]) for d in depths for s in schemes}))


def _grid_report(rows: list[dict[str, Any]]) -> Report:
    schemes = list(dict.fromkeys(r["init"] for r in rows))
    keys = list(dict.fromkeys((r["lr"], r["warmup_epochs"]) for r in rows))
    pct = {(k, s): 100 * statistics.fmean(r["survived"] for r in rows if (r["lr"], r["warmup_epochs"]) == k
                                          and r["init"] == s) for k in keys for s in schemes}
    body = []
    for lr, w in keys:
        cells = []
        for s in schemes:
            p = paper.PAPER_DIVERGENCE.get((lr, bool(w)), {}).get(s)
            cells.append(f"{'—' if p is None else p} / {pct[(lr, w), s]:.0f}")
        body.append([f"{lr:g}", f"{w:g} ep" if w else "no"] + cells)
    warm = {w: [k for k in keys if bool(k[1]) == w] for w in (False, True)}
    total = {(s, w): statistics.fmean(pct[k, s] for k in warm[w]) for s in schemes for w in warm if warm[w]}
    checks = []
    for w, label in ((False, "without warmup"), (True, "with warmup")):
        if "proposed" in schemes and warm[w]:
            checks.append((f"proposed survives most often {label}",
                           all(total["proposed", w] >= total[s, w] for s in schemes)))
    if warm[True] and warm[False]:  # "helps": more survivors, unless all survived already
        checks.append(("warmup helps every scheme", all(total[s, True] > total[s, False] or total[s, False] == 100
                                                        for s in schemes)))
    supported, verdict = _verdict(checks)
    header = ["lr", "warmup"] + [f"{paper.ROBUSTNESS_SCHEMES.get(s, s)} % (paper / ours)" for s in schemes]
    return Report(_md(header, body), "the proposed init survives the widest range of learning rates, with and "
                  "without warmup, and warmup helps every scheme", verdict, supported,
                  dict(survival_pct={f"{lr}/{w}/{s}": pct[(lr, w), s] for (lr, w) in keys for s in schemes}))


# ---- figures ---------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _hessian_figure(rows: list[dict[str, Any]], report: Report, model: str, title: str):
    plt = _pyplot()
    ref = paper.PAPER_HESSIAN[model]
    schemes = list(report.extra["mean_std"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = range(len(schemes))
    for off, label, vals in ((-0.2, "paper", [ref.get(s) for s in schemes]),
                             (0.2, "ours", [report.extra["mean_std"][s] for s in schemes])):
        ax.bar([x + off for x in xs], [v[0] if v else math.nan for v in vals], 0.4, yerr=[v[1] if v else 0 for v in vals],
               label=label, capsize=3, alpha=0.85)
    ax.set_xticks(list(xs), [paper.ROBUSTNESS_SCHEMES.get(s, s) for s in schemes])
    ax.set(ylabel="log spectral norm of the Hessian at init", title=title)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def _depth_figure(rows: list[dict[str, Any]], report: Report, model: str, title: str):
    plt = _pyplot()
    depths = sorted({r["depth"] for r in rows})
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, s in enumerate(dict.fromkeys(r["init"] for r in rows)):
        color = f"C{i}"
        ax.plot(depths, [report.extra["mean_acc"][f"{d}/{s}"] for d in depths], "o-", color=color,
                label=f"{paper.ROBUSTNESS_SCHEMES.get(s, s)} (ours)")
        pd = sorted(paper.PAPER_DEPTH)
        ax.plot(pd, [paper.PAPER_DEPTH[d][s] for d in pd], "x--", color=color, alpha=0.6, label="paper")
    ax.axhline(report.extra["chance"], color="grey", ls=":", lw=1)
    ax.text(depths[0], report.extra["chance"], " chance; 0 = diverged", va="bottom", fontsize=7, color="grey")
    ax.set(xscale="log", xlabel="number of layers", ylabel="test accuracy after the budget", title=title, ylim=(0, None))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _grid_figure(rows: list[dict[str, Any]], report: Report, model: str, title: str):
    plt = _pyplot()
    pct = report.extra["survival_pct"]
    lrs = sorted({r["lr"] for r in rows})
    warmups = sorted({r["warmup_epochs"] for r in rows})
    fig, axes = plt.subplots(1, len(warmups), figsize=(5.5 * len(warmups), 4), squeeze=False)
    for ax, w in zip(axes[0], warmups):
        for i, s in enumerate(dict.fromkeys(r["init"] for r in rows)):
            ax.plot(lrs, [pct[f"{lr}/{w}/{s}"] for lr in lrs], "o-", color=f"C{i}",
                    label=f"{paper.ROBUSTNESS_SCHEMES.get(s, s)} (ours)")
            ref = [(lr, paper.PAPER_DIVERGENCE[lr, bool(w)][s]) for lr in lrs if (lr, bool(w)) in paper.PAPER_DIVERGENCE]
            if ref:
                ax.plot(*zip(*ref), "x--", color=f"C{i}", alpha=0.6, label="paper")
        ax.set(xscale="log", xlabel="learning rate", ylabel="% of runs without divergence", ylim=(-5, 105),
               title=f"{'with' if w else 'without'} warmup")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---- experiments -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Experiment:
    """One of the paper's claims: its presets, how rows are produced, reported and drawn."""

    name: str
    what: str
    presets: dict[str, Preset]
    run: Callable[..., list[dict[str, Any]]]  # (config, preset, folder, progress, shard, merge): journaled rows
    report: Callable[..., Report]
    figure: Callable[..., Any]
    swept: tuple[str, ...] = ("init", "seed")  # config keys the experiment sets per cell


def _run_hessian(base: TrainConfig, p: Preset, out: Path, progress: bool, shard: Shard | None = None,
                 merge: bool = False) -> list[dict[str, Any]]:
    return hessian_sweep(base, SCHEMES, p.params["seeds"], p.params["batches"], p.params["iters"], out,
                         dict(experiment="hessian"), progress, shard, merge)


def _run_depth(base: TrainConfig, p: Preset, out: Path, progress: bool, shard: Shard | None = None,
               merge: bool = False) -> list[dict[str, Any]]:
    return depth_sweep(base, p.params["depths"], SCHEMES, p.params["seeds"], out, dict(experiment="depth"), progress,
                       shard, merge)


def _run_grid(base: TrainConfig, p: Preset, out: Path, progress: bool, shard: Shard | None = None,
              merge: bool = False) -> list[dict[str, Any]]:
    return divergence_grid(base, p.params["lrs"], p.params["warmups"], SCHEMES, p.params["seeds"], out,
                           dict(experiment="lr_robustness"), progress, shard, merge)


EXPERIMENTS: dict[str, Experiment] = {
    "hessian": Experiment("hessian", "Table 2: log spectral norm of the loss Hessian at initialization", _HESSIAN,
                          _run_hessian, lambda rows, cfg: _hessian_report(rows, cfg.model), _hessian_figure),
    "depth_sweep": Experiment("depth_sweep", "Figure 3, left: test accuracy after one epoch vs number of layers",
                              _DEPTH, _run_depth,
                              lambda rows, cfg: _depth_report(rows, DATASETS[cfg.dataset].num_classes), _depth_figure),
    "lr_robustness": Experiment("lr_robustness", "Figure 3, right: % of runs that reach epoch 3 without diverging",
                                _GRID, _run_grid, lambda rows, cfg: _grid_report(rows), _grid_figure,
                                swept=("init", "seed", "lr", "warmup_epochs")),
}
RECIPE = "configs/wn_wrn40_10_c10_proposed.yaml"  # what every preset starts from, relative to the repository


def experiment_config(experiment: str, scale: str, recipe: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """The recipe with the preset's overrides, then the user's ``--set`` overrides; refuses to set a key
    the experiment sweeps, and settings it cannot report."""
    exp, user = EXPERIMENTS[experiment], parse_overrides(overrides or [])
    swept = sorted(set(user) & set(exp.swept))
    if swept:
        raise ConfigError(f"{experiment} sets {', '.join(swept)} itself, per cell (see its preset in wnzoo/reproduce.py); "
                          f"drop them from --set")
    model = user.get("model")
    if isinstance(model, str) and is_zoo_model(model) and norm_of(model) != "wn":  # before the recipe's init fails
        raise ConfigError(f"{experiment} compares the init schemes of WN models, and {model} is a BN one; pass a "
                          f"WN model (e.g. --set model={model.replace('bn_', 'wn_', 1)})")
    cfg = load_config(recipe, user)
    cfg = dataclasses.replace(cfg, **{k: copy.deepcopy(v) for k, v in preset(experiment, scale).overrides.items()
                                      if k not in user})
    if experiment == "depth_sweep" and not cfg.eval_every:
        raise ConfigError("depth_sweep reports test accuracy: eval_every must be at least 1")
    ref = paper.PAPER_HESSIAN.get(cfg.model)
    if experiment == "hessian" and (ref is None or ref["dataset"] != cfg.dataset):
        rows = " and ".join(f"{m} on {r['dataset']}" for m, r in paper.PAPER_HESSIAN.items())
        raise ConfigError(f"Table 2 reports {rows}, not {cfg.model} on {cfg.dataset}; use one of them "
                          f"(e.g. -c configs/wn_resnet164_c100_proposed.yaml)")
    return cfg


def run_shard(experiment: str, scale: str, cfg: TrainConfig, out: str | Path, shard: Shard,
              progress: bool = True) -> int:
    """Run (or resume) the cells of one shard ``(i, n)`` of ``experiment`` into ``out`` (shared by
    the shards; see :mod:`wnzoo.robustness`); returns how many cells it holds. The report waits for
    :func:`run_experiment` with ``merge=True``."""
    exp, p = EXPERIMENTS[experiment], preset(experiment, scale)
    return len(exp.run(cfg, p, Path(out), progress, shard))


def run_experiment(experiment: str, scale: str, cfg: TrainConfig, out: str | Path,
                   progress: bool = True, merge: bool = False) -> tuple[Report, dict[str, Any], str]:
    """Run (or resume) ``experiment`` at ``scale`` from ``cfg`` (see :func:`experiment_config`) into
    ``out``; write ``results.json``, ``table.md`` and ``<experiment>.png`` there. Rows that shards
    finished in ``out`` are taken as they are; with ``merge`` nothing is measured, and a cell that no
    shard finished is an error. Returns the report, the results and the text of ``table.md``."""
    exp, p, out = EXPERIMENTS[experiment], preset(experiment, scale), Path(out)
    rows = exp.run(cfg, p, out, progress, None, merge)
    report = exp.report(rows, cfg)
    title = _title(experiment, cfg, scale)
    results = dict(experiment=experiment, what=exp.what, scale=scale, config=cfg.to_dict(), params=p.params,
                   reductions=list(p.reductions), claim=report.claim, verdict=report.verdict,
                   supported=report.supported, summary=report.extra, rows=rows,
                   seconds_in_cells=round(sum(r["seconds"] for r in rows), 1))
    text = render(exp.what, title, report, p.reductions)
    write_json(out / "results.json", results)
    atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text(text))
    fig = exp.figure(rows, report, cfg.model, title)
    fig.savefig(out / f"{experiment}.png", dpi=110)
    _pyplot().close(fig)
    return report, results, text


def _title(experiment: str, cfg: TrainConfig, scale: str) -> str:
    """``wn_wrn40_10 with widths=[16, 32, 64] on CIFAR-10, scale cpu``: what the rows were measured on."""
    args = {k: v for k, v in cfg.model_args.items() if not (experiment == "depth_sweep" and k == "blocks")}
    arch = ("WN WRNs" if experiment == "depth_sweep" else cfg.model) + (
        " with " + ", ".join(f"{k}={v}" for k, v in args.items()) if args else "")
    return f"{arch} on {DATASETS[cfg.dataset].display}, scale {scale}"


def render(what: str, title: str, report: Report, reductions: tuple[str, ...]) -> str:
    """The markdown ``table.md`` holds and the CLI prints."""
    red = "".join(f"\n- {r}" for r in reductions)
    claim, verdict = report.claim[0].upper() + report.claim[1:], report.verdict[0].upper() + report.verdict[1:]
    return (f"# {what}\n\n{title}.\n\n{report.table}\n\n**Claim.** {claim}.\n\n**Our run.** {verdict}.\n"
            + (f"\nReduced from the paper's settings:{red}\n" if red else ""))


def cli(experiment: str, argv: list[str] | None = None, repo: Path = Path(".")) -> int:
    """The command line of ``eval/<experiment>.py``: ``--scale``, a recipe, ``--set`` overrides, ``--out``."""
    import argparse

    from ._cli import EXIT_CODES, resumable, run
    from ._io import check_writable

    exp = EXPERIMENTS[experiment]
    ap = argparse.ArgumentParser(
        description=f"Reproduce the paper's {exp.what}, with the paper's numbers beside ours.",
        epilog=f"Writes results.json (settings and raw rows), table.md and {experiment}.png into --out, row by row: "
               f"run the same command again to resume a stopped run.\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=SCALES, default="cpu",
                    help="cpu: reduced to minutes on 2 cores (the reductions are printed); paper: the paper's settings, "
                         "for a GPU")
    ap.add_argument("-c", "--config", default=str(repo / RECIPE), help="training recipe the presets start from "
                    "(default %(default)s)")
    ap.add_argument("--data", default=None, help="data folder or HF dataset id (default: $WNZOO_DATA, else the Hub)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides, applied after the preset's (e.g. device=cuda compile=default)")
    ap.add_argument("--out", default=None, help="output folder (default results/<experiment>-<scale>)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--shard", metavar="I/N", help="run only the I-th of N shards of the cells (0 <= I < N; e.g. a "
                    "cluster array job, every task with the same --out): no report until --merge")
    ap.add_argument("--merge", action="store_true", help="report from the rows the shards wrote into --out, "
                    "training nothing; fails while a cell is missing")
    args = ap.parse_args(argv)
    started: list[Path] = []

    def hint(e: BaseException) -> str | None:
        if started and resumable(e):
            return f"every finished cell is kept in {started[0]}; continue with the same command"
        return None

    def main() -> int:
        if args.shard is not None and args.merge:
            raise ConfigError("--shard runs a shard and --merge reports them all; pass one of them")
        shard = parse_shard(args.shard) if args.shard is not None else None  # '': an unset variable
        if args.data and any(item.split("=", 1)[0].strip() == "data" for item in args.set):
            raise ConfigError("--data and --set data=... both name the data; pass one of them")
        overrides = list(args.set) + ([f"data={args.data}"] if args.data else [])
        cfg = experiment_config(experiment, args.scale, args.config, overrides)
        recipe = Path(args.config).resolve()
        if recipe.is_relative_to(repo.resolve()):  # results name the repository's recipe, not this machine's path
            cfg = dataclasses.replace(cfg, recipe=str(recipe.relative_to(repo.resolve())))
        out = check_writable(args.out or Path("results") / f"{experiment}-{args.scale}", folder=True)
        started.append(out)
        t0 = time.time()
        if shard is not None:
            cells = run_shard(experiment, args.scale, cfg, out, shard, progress=not args.quiet)
            print(f"shard {shard[0]}/{shard[1]}: its {cells} cells are in {out} ({time.time() - t0:.0f} s); when every "
                  f"shard is done, report them with the same command and --merge instead of --shard")
            return 0
        text = run_experiment(experiment, args.scale, cfg, out, progress=not args.quiet, merge=args.merge)[2]
        print(text)
        print(f"wrote {out}/results.json, table.md and {experiment}.png ({time.time() - t0:.0f} s)")
        return 0

    return run(main, hint)
