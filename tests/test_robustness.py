"""The robustness measures of Table 2 and Figure 3: Hessian power iteration, sweeps, verdicts, CLIs."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from wnzoo import create_model, reproduce, robustness
from wnzoo.robustness import (blocks_for_depth, depth_sweep, divergence_grid, hessian_at_init, hessian_spectral_norm,
                               hessian_sweep)
from wnzoo.training.config import TrainConfig

from conftest import REPO


class _Quadratic(nn.Module):
    """``loss = ½ wᵀAw``: its Hessian is A, whatever the batch."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(a.shape[0]))
        self.register_buffer("a", a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w


def _quadratic_loss(model):
    return lambda out, y: 0.5 * out @ model.a @ out


@pytest.mark.parametrize("eigs", [[10.0, 6.0, 3.0, 1.0, 0.5], [-8.0, 5.0, 2.0, -1.0, 0.1]])
def test_power_iteration_recovers_the_top_eigenvalue_of_a_known_quadratic(eigs):
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=torch.Generator().manual_seed(1)))
    model = _Quadratic(q @ torch.diag(torch.tensor(eigs)) @ q.T)
    batches = [(torch.zeros(1), torch.zeros(1))] * 3
    top = hessian_spectral_norm(model, batches, iters=40, seed=0, loss_fn=_quadratic_loss(model))
    assert top == pytest.approx(max(abs(e) for e in eigs), rel=0.01)
    few = hessian_spectral_norm(model, batches, iters=1, seed=0, loss_fn=_quadratic_loss(model))
    assert abs(few - max(abs(e) for e in eigs)) > 0.01 * abs(few)  # one iteration has not converged: the test can fail


def test_hessian_is_deterministic_and_leaves_bn_statistics_alone():
    model = create_model("bn_resnet20", widths=(4, 8, 8))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = {k: b.clone() for k, b in model.named_buffers()}
    a = hessian_spectral_norm(model.eval(), [(x, y)], iters=3, seed=5)
    assert a == hessian_spectral_norm(model, [(x, y)], iters=3, seed=5) and a > 0
    assert not model.training and all(torch.equal(before[k], b) for k, b in model.named_buffers())


def _base(data, **kw) -> TrainConfig:
    d = dict(model="wn_wrn16_4", model_args={"widths": [4, 8, 8]}, data=str(data), epochs=1, batch_size=64,
             schedule="constant", warmup_epochs=0, lr=0.01, channels_last=False, subset=256, eval_subset=64)
    return TrainConfig.from_dict(dict(d, **kw))


def test_hessian_at_init_follows_the_init_scheme(tiny_data):
    cfg = _base(tiny_data, eval_every=0)
    prop = hessian_at_init(cfg, batches=1, iters=4)
    assert prop == hessian_at_init(cfg, batches=1, iters=4)
    assert hessian_at_init(TrainConfig.from_dict(dict(cfg.to_dict(), init="default")), batches=1, iters=4) > 10 * prop
    with pytest.raises(ValueError, match="only 4 batches"):
        hessian_at_init(cfg, batches=5, iters=1)


def test_divergence_grid_counts_a_diverging_run_and_resumes_from_its_journal(tiny_data, tmp_path, monkeypatch):
    base = _base(tiny_data, epochs=2, eval_every=0)
    rows = divergence_grid(base, [0.01, 1e5], [0, 1], ["proposed"], [0], tmp_path / "g", progress=False)
    got = {(r["lr"], r["warmup_epochs"]): r["survived"] for r in rows}
    assert got == {(0.01, 0): True, (1e5, 0): False, (0.01, 1): True, (1e5, 1): False}
    assert all(r["diverged_at"]["lr"] > 1 for r in rows if not r["survived"])
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [".lock", "journal.jsonl"]  # and no run folders
    monkeypatch.setattr("wnzoo.robustness.train", lambda *a, **k: pytest.fail("a journaled cell was trained again"))
    with open(tmp_path / "g" / "journal.jsonl", "a") as f:
        f.write('{"init": "propo')  # a kill while a row was written
    assert divergence_grid(base, [0.01, 1e5], [0, 1], ["proposed"], [0], tmp_path / "g", progress=False) == rows
    with pytest.raises(RuntimeError, match="other settings"):
        divergence_grid(base, [0.01], [0], ["proposed"], [0], tmp_path / "g", progress=False)


def test_depth_sweep_builds_each_depth_and_reports_accuracy(tiny_data, tmp_path, monkeypatch):
    import wnzoo.robustness

    built, train = [], wnzoo.robustness.train
    monkeypatch.setattr(wnzoo.robustness, "train", lambda cfg, *a, **k: built.append(cfg.model_args) or train(cfg, *a, **k))
    rows = depth_sweep(_base(tiny_data), [10, 16], ["proposed"], [0], tmp_path / "d", progress=False)
    assert built == [{"widths": [4, 8, 8], "blocks": 1}, {"widths": [4, 8, 8], "blocks": 2}]  # 6n + 4 layers
    assert [r["depth"] for r in rows] == [10, 16] and all(r["survived"] and 0 <= r["test_acc"] <= 100 for r in rows)
    journal = [json.loads(x) for x in (tmp_path / "d" / "journal.jsonl").read_text().splitlines()]
    assert journal[0]["settings"]["base"]["model_args"] == {"widths": [4, 8, 8]} and journal[1:] == rows
    assert blocks_for_depth("wn_wrn40_10", 1000) == 166 and blocks_for_depth("wn_resnet20", 110) == 18
    with pytest.raises(ValueError, match="6n \\+ 4"):
        blocks_for_depth("wn_wrn40_10", 12)


def _grid_rows(survival: dict[str, list[bool]]) -> list[dict]:
    lrs = [0.01, 0.1]
    return [dict(init=s, lr=lr, warmup_epochs=w, seed=0, survived=ok) for s, oks in survival.items()
            for (w, lr), ok in zip([(0, lrs[0]), (0, lrs[1]), (1, lrs[0]), (1, lrs[1])], oks)]


def test_verdicts_are_computed_from_the_rows():
    good = reproduce._grid_report(_grid_rows({"proposed": [True, True, True, True],
                                              "default_orthogonal": [True, False, True, True]}))
    bad = reproduce._grid_report(_grid_rows({"proposed": [True, False, True, False],
                                             "default_orthogonal": [True, True, True, True]}))
    flat = reproduce._grid_report(_grid_rows({"proposed": [True, True, True, True],
                                              "default_orthogonal": [False, False, False, False]}))
    assert good.supported and "proposed survives most often without warmup: yes" in good.verdict
    assert not bad.supported and "proposed survives most often with warmup: no" in bad.verdict
    assert not flat.supported and "warmup helps every scheme: no" in flat.verdict  # 0 % stays 0 %: no help
    assert "| 0.01 | no | 100 / 100 | 0 / 100 |" in good.table  # paper / ours, per scheme
    rows = [dict(depth=d, init=s, seed=0, survived=not (s == "default_orthogonal" and d > 10), test_acc=30.0)
            for d in (10, 100) for s in ("proposed", "default_orthogonal")]
    assert reproduce._depth_report(rows, 10).supported
    rows[1]["survived"] = True  # default trains at 10 layers too; now make it train at 100
    rows[3]["survived"] = True
    assert not reproduce._depth_report(rows, 10).supported
    h = [dict(init=s, seed=0, spectral_norm=math.exp(v), log_norm=v)
         for s, v in (("proposed", 2.0), ("default_orthogonal", 9.0), ("datadep", 1.0))]
    assert not reproduce._hessian_report(h, "wn_wrn40_10", "WRN-40-1").supported


def test_a_zero_hessian_vector_product_is_reported_as_such_not_as_an_overflow(tiny_data, tmp_path, monkeypatch):
    flat = _Quadratic(torch.zeros(3, 3))
    assert hessian_spectral_norm(flat, [(torch.zeros(1), torch.zeros(1))], iters=3, loss_fn=_quadratic_loss(flat)) == 0
    norms = {"proposed": 0.0, "datadep": math.inf, "default_orthogonal": math.exp(2.0)}
    monkeypatch.setattr("wnzoo.robustness.hessian_at_init", lambda cfg, *a: norms[cfg.init])
    rows = hessian_sweep(_base(tiny_data, eval_every=0), list(norms), [0], 1, 1, tmp_path / "h", progress=False)
    assert [(r["spectral_norm"], r["log_norm"]) for r in rows] == [(0.0, None), (None, None), (norms["default_orthogonal"],
                                                                                                pytest.approx(2.0))]
    assert [robustness._outcome(r) for r in rows] == ["zero HVP", "overflow", "ln|H| 2.00"]
    report = reproduce._hessian_report(rows, "wn_wrn40_10", "WRN-40-1")
    assert "| proposed | 1.31 ± 0.12 | zero HVP | 1 |" in report.table
    assert "| data-dependent | 3.01 ± 0.02 | overflow | 1 |" in report.table
    assert not report.supported and "smallest ln spectral norm is default_orthogonal's (2.00; proposed zero HVP" in \
        report.verdict  # a zero product measured nothing; an overflow ranks last


def test_the_depth_verdict_checks_every_scheme_against_the_paper_figure():
    def rows(diverge: set[str]) -> list[dict]:  # these schemes diverge from 100 layers on, the others train
        return [dict(depth=d, init=s, seed=0, survived=not (s in diverge and d > 10), test_acc=30.0)
                for d in (10, 100) for s in reproduce.SCHEMES]

    paper_like = reproduce._depth_report(rows({"default_orthogonal"}), 10)
    assert paper_like.supported and paper_like.verdict.startswith(
        "supported: PyTorch default (orth.) trains at 10 layers and fails at 100: yes; data-dependent trains at every "
        "depth: yes; stage-wise Hanin trains at every depth: yes; proposed trains at every depth: yes")
    ours = reproduce._depth_report(rows({"default_orthogonal", "datadep", "hanin"}), 10)
    assert not ours.supported and "data-dependent trains at every depth: no; stage-wise Hanin trains at every depth: " \
        "no; proposed trains at every depth: yes" in ours.verdict


def test_presets_follow_the_authors_code_and_the_cpu_warmup_is_a_ramp():
    recipe = REPO / reproduce.RECIPE
    for experiment in ("depth_sweep", "lr_robustness"):
        for scale in reproduce.SCALES:
            cfg = reproduce.experiment_config(experiment, scale, recipe)
            assert (cfg.weight_decay, cfg.cutout, cfg.momentum, cfg.schedule) == (0, 0, 0, "constant")
    depth = reproduce.experiment_config("depth_sweep", "paper", recipe)
    assert (depth.model_args, depth.lr, depth.batch_size) == ({"widths": [32, 64, 128]}, 0.01, 128)  # --wrn_k 2
    assert reproduce.preset("hessian", "paper").params["batches"] == 35  # 10 % of the code's 352 batches
    grid = reproduce.experiment_config("lr_robustness", "cpu", recipe)
    steps = grid.subset // grid.batch_size  # one 'epoch', the warmup's length
    assert steps >= 32 and f"{steps} steps of {grid.batch_size}" in " ".join(reproduce.preset("lr_robustness",
                                                                                              "cpu").reductions)
    assert reproduce._title("hessian", reproduce.experiment_config("hessian", "cpu", recipe), "cpu") == \
        "WRN-40-1 (wn_wrn40_10 with widths=[16, 32, 64]) on CIFAR-10, scale cpu"


def test_figures_give_each_scheme_its_own_panel_and_keep_the_legend_off_the_data():
    recipe, names = REPO / reproduce.RECIPE, list(reproduce.paper.ROBUSTNESS_SCHEMES.values())
    same = [dict(init=s, lr=lr, warmup_epochs=w, seed=0, survived=lr < 0.05) for s in reproduce.SCHEMES
            for w in (0, 1) for lr in (0.001, 0.01, 0.1)]  # identical curves: once they hid each other
    depth = [dict(depth=d, init=s, seed=0, survived=d == 10, test_acc=30.0) for d in (10, 100) for s in reproduce.SCHEMES]
    hess = [dict(init=s, seed=0, spectral_norm=2.0, log_norm=math.log(2.0)) for s in reproduce.SCHEMES]
    for experiment, rows, panels in (("lr_robustness", same, 8), ("depth_sweep", depth, 4), ("hessian", hess, 2)):
        exp, cfg = reproduce.EXPERIMENTS[experiment], reproduce.experiment_config(experiment, "cpu", recipe)
        fig = exp.figure(rows, exp.report(rows, cfg), cfg, "t")
        assert len(fig.axes) == panels and all(ax.get_legend() is None for ax in fig.axes)
        if experiment == "hessian":  # the paper's log and our ln on axes of their own
            assert [ax.get_title() for ax in fig.axes] == ["paper: log‖H‖ (base unstated), WRN-40-10",
                                                           "ours: ln‖H‖, WRN-40-1"]
            continue
        assert len(fig.legends) == 1 and [ax.get_title() for ax in fig.axes[:4]] == names
        for ax in fig.axes:  # ours and the paper's curve, of the panel's scheme only
            assert len({line.get_color() for line in ax.get_lines() if line.get_marker() == "o"}) == 1
        legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
        assert ("after 90 steps of 32" if experiment == "depth_sweep" else "runs of 80 steps of 64") in legend


@pytest.mark.parametrize("experiment", list(reproduce.EXPERIMENTS))
def test_cli_help_says_the_default_scale_the_measured_time_and_the_exit_codes_that_apply(experiment, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.cli(experiment, ["--help"], repo=REPO)
    exp, text = reproduce.EXPERIMENTS[experiment], " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and "cpu (the default)" in text and f"--scale cpu took {exp.cpu_time}" in text
    assert "Exit codes: 0 ok, 2 bad input" in text and "1 a published" not in text and "3 training" not in text
    assert all(" ".join(d.split()) in text for d in exp.differences)


@pytest.mark.parametrize("args, message", [
    (["--scale", "gpu"], "invalid choice"),
    (["--set", "lr=-1"], "lr must be > 0"),
    (["--set", "model=wn_resnet20"], "Table 2 reports wn_wrn40_10 on cifar10 and wn_resnet164 on cifar100"),
    (["--set", "seed=3"], "hessian sets seed itself"),
    (["--set", "model_args={depth: 3}"], "model_args ['depth'] are not arguments"),
    (["-c", "nowhere.yaml"], "config file nowhere.yaml does not exist"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    argv = ["--out", str(tmp_path / "o"), *args]
    try:
        code = reproduce.cli("hessian", argv, repo=REPO)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_cli_never_writes_into_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    assert reproduce.cli("lr_robustness", ["--out", str(tmp_path), "--quiet"], repo=REPO) == 2
    assert "holds no sweep" in capsys.readouterr().err and [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("experiment", list(reproduce.EXPERIMENTS))
def test_the_committed_cpu_results_are_what_their_rows_say(experiment):
    folder = REPO / "results" / f"{experiment}-cpu"
    res = json.loads((folder / "results.json").read_text())
    journal = [json.loads(x) for x in (folder / "journal.jsonl").read_text().splitlines()]
    key = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
    assert sorted(journal[1:], key=key) == sorted(res["rows"], key=key)  # the table is built from every journaled
    # row, and only those (a merge journals the shards' rows shard by shard, the results hold them in cell order)
    cfg = TrainConfig.from_dict(res["config"])
    report = reproduce.EXPERIMENTS[experiment].report(res["rows"], cfg)
    exp = reproduce.EXPERIMENTS[experiment]
    text = reproduce.render(res["what"], reproduce._title(experiment, cfg, "cpu"), report, tuple(res["reductions"]),
                            exp.differences)
    assert (folder / "table.md").read_text() == text and res["verdict"] == report.verdict
    assert res["reductions"] == list(reproduce.preset(experiment, "cpu").reductions)
    assert res["differences"] == list(exp.differences)
    assert (folder / f"{experiment}.png").stat().st_size > 10_000


def test_a_grid_split_over_shards_in_several_processes_merges_to_the_whole_grid(tiny_data, tmp_path, monkeypatch):
    """An array job: every shard a process of its own, in one folder; then one merge, which trains nothing."""
    import os
    import subprocess
    import sys

    from wnzoo._cli import UserError
    from wnzoo.robustness import parse_shard

    base = _base(tiny_data, epochs=1, eval_every=0)
    grid = ([0.01, 1e5], [0], ["proposed", "default"], [0, 1])  # 8 cells
    whole = divergence_grid(base, *grid, tmp_path / "whole", progress=False)
    out = tmp_path / "sharded"
    code = ("import json, sys; from wnzoo.robustness import divergence_grid; from wnzoo.training.config import "
            "TrainConfig; divergence_grid(TrainConfig.from_dict(json.loads(sys.argv[1])), *json.loads(sys.argv[2]), "
            "sys.argv[3], progress=False, shard=(int(sys.argv[4]), 3))")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", code, json.dumps(base.to_dict()), json.dumps(grid), str(out),
                               str(i)], env=env, stderr=subprocess.PIPE, text=True) for i in range(2)]
    assert all(p.wait(timeout=600) == 0 for p in procs), [p.stderr.read()[-2000:] for p in procs]
    with pytest.raises(UserError, match="2 of 8 cells are in no journal.*run the shards"):
        divergence_grid(base, *grid, out, progress=False, merge=True)  # shard 2/3 has not run
    assert len(divergence_grid(base, *grid, out, progress=False, shard=(2, 3))) == 2
    monkeypatch.setattr("wnzoo.robustness.train", lambda *a, **k: pytest.fail("the merge trained a cell"))
    merged = divergence_grid(base, *grid, out, progress=False, merge=True)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(merged) == drop(whole)
    assert sorted(p.name for p in out.iterdir()) == [".lock", ".lock-shard-0-of-3", ".lock-shard-1-of-3",
                                                     ".lock-shard-2-of-3", "journal-shard-0-of-3.jsonl",
                                                     "journal-shard-1-of-3.jsonl", "journal-shard-2-of-3.jsonl",
                                                     "journal.jsonl"]
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "a/b", "1"):
        with pytest.raises(ValueError, match="i/n with 0 <= i < n"):
            parse_shard(bad)
