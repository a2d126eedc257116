"""Stacked runs: N runs of one architecture trained as one grouped model compute what each computes alone.

The step-level tests run in float64, where the stack matches the runs trained alone to rounding
(1e-15): any mix-up of runs (a gradient, a learning rate, a BN statistic, a momentum buffer of the
wrong run) shows as a difference of order 1. In float32 the same comparison is limited by the
convolution kernels themselves: oneDNN sums a grouped convolution's gradient in another order than a
plain one, and the first step's gradients of two correct implementations already differ by 5e-4 to
7e-4 relative (a BN ResNet-20, whose gradients cancel most). The loop-level tests (float32, the real
data pipeline, schedules and run folders) therefore compare with a tolerance far below the distance
between two different runs, as the torchrun test does.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from wnzoo import create_model
from wnzoo.data import DeviceData
from wnzoo.training import ConfigError, RunFolder, RunState, TrainConfig, train, train_stack
from wnzoo.training.loop import weight_decay_of
from wnzoo.training.stack import GroupedLinear, stack_models
from wnzoo.training.step import RunOptim, TrainStep



def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """‖a - b‖ / ‖b‖ over every tensor of a run (weights with BN statistics, or momentum)."""
    fa = torch.cat([a[k].double().flatten() for k in sorted(b)])
    fb = torch.cat([b[k].double().flatten() for k in sorted(b)])
    return ((fa - fb).norm() / fb.norm()).item()


# ---- the stacked model -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["wn_resnet20", "bn_resnet20", "wn_wrn16_4"])
def test_a_stacked_model_computes_each_model_side_by_side(name):
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(create_model(name).train())
    stacked = stack_models(copy.deepcopy(models))
    xs = [torch.randn(4, 3, 32, 32) for _ in models]
    out = stacked.module(stacked.inputs(xs)).unflatten(1, (3, -1))
    for k, m in enumerate(models):
        torch.testing.assert_close(out[:, k], m(xs[k]), rtol=1e-5, atol=1e-5)
        mine = stacked.member(stacked.module.state_dict(), k)  # BN statistics updated per run, too
        assert mine.keys() == m.state_dict().keys()
        for key, t in m.state_dict().items():
            torch.testing.assert_close(mine[key], t, rtol=1e-5, atol=1e-6)
    assert stack_models(models[:1]).module is models[0]  # a stack of one is the model itself


def test_grouped_linear_is_the_runs_classifiers_side_by_side():
    layer = GroupedLinear(3 * 5, 3 * 4, groups=3)
    x = torch.randn(2, 15)
    ref = [torch.nn.functional.linear(x[:, 5 * k:5 * k + 5], layer.weight[4 * k:4 * k + 4], layer.bias[4 * k:4 * k + 4])
           for k in range(3)]
    torch.testing.assert_close(layer(x), torch.cat(ref, 1))


def test_what_cannot_be_stacked_is_refused():
    with pytest.raises(ValueError, match="stochastic depth"):
        stack_models([create_model("wn_resnet20", drop_path_rate=0.1) for _ in range(2)])
    with pytest.raises(ValueError, match="global_pool='catavgmax' mixes"):
        stack_models([create_model("wn_resnet20", global_pool="catavgmax") for _ in range(2)])
    with pytest.raises(ValueError, match="one architecture"):
        stack_models([create_model("wn_resnet20"), create_model("wn_resnet32")])
    base = TrainConfig(model="wn_resnet20")
    with pytest.raises(ConfigError, match=r"must share batch_size \(batch_size: 128 vs 64\).*only seed, init"):
        train_stack([base, dataclasses.replace(base, batch_size=64)], ["/nonexistent/a", "/nonexistent/b"])
    with pytest.raises(ConfigError, match="share an output folder"):
        train_stack([base, base], ["/nonexistent/a", "/nonexistent/a"])


# ---- one step, in float64: the stack is the runs alone, to rounding -----------------------------------

def _runs(name: str, **kw) -> list[TrainConfig]:
    """Three runs that differ in every way a stack lets them: seed, init, lr, momentum, Nesterov,
    weight decay and its exemptions, label smoothing, gradient clipping."""
    other = "he" if name.startswith("bn") else "proposed_he"
    base = TrainConfig(model=name, batch_size=16, lr=0.05, **kw)
    return [base, dataclasses.replace(base, seed=1, lr=0.1, nesterov=True, weight_decay=5e-4, label_smoothing=0.1),
            dataclasses.replace(base, seed=2, init=other, momentum=0.5, grad_clip=1.0, wd_on_gains_biases_bn=False)]


def _model(cfg: TrainConfig) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    return create_model(cfg.model, init=cfg.init, **cfg.model_args).double().train()


def _optim(model: torch.nn.Module, cfg: TrainConfig) -> RunOptim:
    return RunOptim(cfg.momentum, cfg.nesterov, weight_decay_of(model, cfg), cfg.grad_clip, cfg.label_smoothing)


def _data(cfgs: list[TrainConfig]) -> list:
    """Each run's own epoch of augmented batches (its seed: its order, crops and flips)."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (96, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, 96)
    return [list(DeviceData.from_arrays(images, labels, "cifar10", seed=c.seed).batches(0, c.batch_size, train=True))
            for c in cfgs]


def _alone(cfg: TrainConfig) -> TrainStep:
    model = _model(cfg)
    return TrainStep(stack_models([model]), [_optim(model, cfg)])


def _stacked(cfgs: list[TrainConfig], states: list[RunState] | None = None) -> TrainStep:
    models = [_model(c) for c in cfgs]
    momentum = None
    if states is not None:
        for m, s in zip(models, states):
            s.restore(m)
    stacked = stack_models(models)
    if states is not None:
        momentum = stacked.stack([s.momentum for s in states])
    return TrainStep(stacked, [_optim(m, c) for m, c in zip(models, cfgs)], momentum)


def _step(step: TrainStep, batches: list[tuple[torch.Tensor, torch.Tensor]], lrs: list[float]):
    x = step.stacked.inputs([b[0].double() for b in batches])
    return step(x, torch.stack([b[1] for b in batches], 1), torch.tensor(lrs, dtype=torch.float64))


def _run_state(step: TrainStep, k: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return step.stacked.member(step.module.state_dict(), k), step.stacked.member(step.momentum, k)


@pytest.mark.parametrize("name", ["wn_resnet20", "bn_resnet20"])
def test_a_stack_trains_each_run_as_it_trains_alone(name):
    cfgs = _runs(name)
    data, stack, alone = _data(cfgs), _stacked(cfgs), [_alone(c) for c in cfgs]
    for i in range(5):
        losses, correct = _step(stack, [d[i] for d in data], [c.lr for c in cfgs])
        for k, (cfg, solo) in enumerate(zip(cfgs, alone)):
            loss, right = _step(solo, [data[k][i]], [cfg.lr])
            assert losses[k].item() == pytest.approx(loss.item(), rel=1e-12) and correct[k] == right
    for k, solo in enumerate(alone):
        weights, momentum = _run_state(stack, k)
        assert _rel(weights, solo.module.state_dict()) < 1e-12
        assert _rel(momentum, solo.momentum) < 1e-12
    assert _rel(_run_state(stack, 1)[0], alone[0].module.state_dict()) > 0.1  # the runs differ from each other


def test_a_stack_resumes_from_its_runs_states_exactly(tmp_path):
    cfgs = _runs("bn_resnet20", model_args={"blocks": 1})
    data, lrs = _data(cfgs), [c.lr for c in cfgs]
    straight = _stacked(cfgs)
    for i in range(5):
        _step(straight, [d[i] for d in data], lrs)
    first = _stacked(cfgs)
    for i in range(3):
        _step(first, [d[i] for d in data], lrs)
    states = []
    for k, cfg in enumerate(cfgs):  # each run's own state file, as the loop writes it after an epoch
        weights, momentum = _run_state(first, k)
        RunState(3, cfg.to_dict(), [], weights, momentum).save(tmp_path / f"{k}.safetensors")
        states.append(RunState.load(tmp_path / f"{k}.safetensors"))
    resumed = _stacked(cfgs, states)
    for i in range(3, 5):
        _step(resumed, [d[i] for d in data], lrs)
    for k in range(3):
        for a, b in zip(_run_state(resumed, k), _run_state(straight, k)):
            assert all(torch.equal(a[n], b[n]) for n in b)


def test_a_run_that_diverges_leaves_the_others_unchanged():
    cfgs = _runs("wn_resnet20", model_args={"blocks": 1})
    cfgs[1] = dataclasses.replace(cfgs[1], lr=1e8)
    data, stack, alone = _data(cfgs), _stacked(cfgs), [_alone(c) for c in cfgs]
    for i in range(4):
        losses, _ = _step(stack, [d[i] for d in data], [c.lr for c in cfgs])
        for k in (0, 2):
            _step(alone[k], [data[k][i]], [cfgs[k].lr])
    assert not torch.isfinite(losses[1]) and torch.isfinite(losses[[0, 2]]).all()
    assert not all(torch.isfinite(t).all() for t in _run_state(stack, 1)[0].values())
    for k in (0, 2):  # NaN and inf stay in their run's channels
        weights, momentum = _run_state(stack, k)
        assert _rel(weights, alone[k].module.state_dict()) < 1e-12 and _rel(momentum, alone[k].momentum) < 1e-12


# ---- the loop, in float32 ---------------------------------------------------------------------------------

def _cfg(data: Path, **kw) -> TrainConfig:
    """A WN ResNet-8 (one block a stage): the loop's wiring does not need depth."""
    base = dict(model="wn_resnet20", model_args={"blocks": 1}, data=str(data), epochs=2, batch_size=64, lr=0.05,
                warmup_epochs=1, schedule="cosine", log_every=5, channels_last=False)
    return TrainConfig.from_dict(dict(base, **kw))


def _three(data: Path, **kw) -> list[TrainConfig]:
    return [_cfg(data, **kw), _cfg(data, seed=1, lr=0.1, **kw),
            _cfg(data, seed=2, init="proposed_he", momentum=0.5, **kw)]


def _state(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    t = load_file(run / RunFolder.STATE)
    return ({k[6:]: v for k, v in t.items() if k.startswith("model.")},
            {k[9:]: v for k, v in t.items() if k.startswith("momentum.")})


def test_train_stack_writes_each_run_as_train_writes_it(tiny_data, tmp_path):
    torch.set_num_threads(1)
    cfgs = _three(tiny_data)
    summaries = train_stack(cfgs, [tmp_path / f"s{k}" for k in range(3)], progress=False)
    assert [s["status"] for s in summaries] == ["finished"] * 3
    for k, cfg in enumerate(cfgs):
        alone = train(cfg, tmp_path / f"a{k}", progress=False)
        for f in ("model.safetensors", "state.safetensors", "metrics.jsonl", "summary.json", "curves.png"):
            assert (tmp_path / f"s{k}" / f).is_file(), f
        (w, m), (w0, m0) = _state(tmp_path / f"s{k}"), _state(tmp_path / f"a{k}")
        assert _rel(w, w0) < 1e-3 and _rel(m, m0) < 5e-2, (k, _rel(w, w0), _rel(m, m0))
        rows = [json.loads(x) for x in (tmp_path / f"s{k}" / "metrics.jsonl").read_text().splitlines()]
        ref = [json.loads(x) for x in (tmp_path / f"a{k}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["train_loss"] for r in rows] == pytest.approx([r["train_loss"] for r in ref], rel=1e-3)
        assert [r["lr"] for r in rows] == [r["lr"] for r in ref]  # each run's own schedule
        assert summaries[k]["test_acc"] == pytest.approx(alone["test_acc"], abs=1.0)
        assert rows[0]["stack"] == 3 and ref[0]["stack"] == 1
    assert _rel(_state(tmp_path / "s1")[0], _state(tmp_path / "a0")[0]) > 0.1  # far above the tolerance


def test_an_interrupted_stack_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    cfgs = _three(tiny_data, eval_every=0)
    straight = [tmp_path / f"s{k}" for k in range(3)]
    train_stack(cfgs, straight, progress=False, export=False)
    calls, real_call = [0], TrainStep.__call__

    def interrupted(self, *a):
        calls[0] += 1
        if calls[0] == 14:  # epoch 2, step 4 (10 steps an epoch)
            raise KeyboardInterrupt
        return real_call(self, *a)

    monkeypatch.setattr(TrainStep, "__call__", interrupted)
    split = [tmp_path / f"i{k}" for k in range(3)]
    with pytest.raises(KeyboardInterrupt):
        train_stack(cfgs, split, progress=False, export=False)
    assert [RunFolder(f).epochs_done() for f in split] == [1, 1, 1]
    monkeypatch.setattr(TrainStep, "__call__", real_call)
    train_stack(cfgs, split, resume=True, progress=False, export=False)
    for a, b in zip(straight, split):
        x, y = load_file(a / RunFolder.STATE), load_file(b / RunFolder.STATE)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_a_run_that_diverges_leaves_the_stack_and_the_others_finish(tiny_data, tmp_path, capsys):
    from wnzoo.training.cli import main

    torch.set_num_threads(1)
    cfgs = _three(tiny_data)
    cfgs[1] = dataclasses.replace(cfgs[1], lr=1e5, warmup_epochs=0)
    outs = [tmp_path / f"s{k}" for k in range(3)]
    summaries = train_stack(cfgs, outs, progress=False)
    assert [s["status"] for s in summaries] == ["finished", "diverged", "finished"]
    assert "training diverged: loss is" in summaries[1]["error"] and summaries[1]["diverged_at"]["epoch"] == 1
    assert json.loads((outs[1] / "summary.json").read_text())["status"] == "diverged"
    for k in (0, 2):
        train(cfgs[k], tmp_path / f"a{k}", progress=False)
        assert _rel(_state(outs[k])[0], _state(tmp_path / f"a{k}")[0]) < 1e-3
    # the command line: several recipes and folders, exit 3 when a run of the stack diverged
    recipes = []
    for k, cfg in enumerate(cfgs[:2]):
        recipes.append(tmp_path / f"r{k}.yaml")
        recipes[-1].write_text(json.dumps(dict(cfg.to_dict(), epochs=1)))
    code = main(["-c", *map(str, recipes), "--out", str(tmp_path / "c0"), str(tmp_path / "c1"), "-q"])
    err = capsys.readouterr()
    assert code == 3 and "training diverged" in err.err and "finished (1 epochs)" in err.out
    assert main(["-c", *map(str, recipes), "--out", str(tmp_path / "c2")]) == 2
    assert "2 recipes but 1 --out folders" in capsys.readouterr().err


# ---- the compiled step ----------------------------------------------------------------------------------

def _compiled_against_eager() -> dict:
    """A stack's steps compiled and eager, in float64: the compiler's graph count and breaks, and the
    largest relative difference of losses, weights and momentum."""
    torch.set_num_threads(2)
    cfgs = _runs("bn_resnet20", model_args={"blocks": 1, "widths": [8, 16, 32]})
    data = _data(cfgs)
    steps = {}
    for mode in ("none", "default"):
        models = [_model(c) for c in cfgs]
        step = TrainStep(stack_models(models), [_optim(m, c) for m, c in zip(models, cfgs)], compile=mode)
        losses = [_step(step, [d[i] for d in data], [c.lr for c in cfgs])[0] for i in range(4)]
        steps[mode] = (step, torch.stack(losses))
    (compiled, lc), (eager, le) = steps["default"], steps["none"]
    counters = torch._dynamo.utils.counters
    return dict(graphs=counters["stats"]["unique_graphs"], breaks=dict(counters["graph_break"]), used=compiled.used,
                losses=((lc - le).abs() / le.abs()).max().item(),
                weights=max(_rel(_run_state(compiled, k)[0], _run_state(eager, k)[0]) for k in range(3)),
                momentum=max(_rel(_run_state(compiled, k)[1], _run_state(eager, k)[1]) for k in range(3)))


@pytest.mark.slow  # compiling on the CPU: 60 s
def test_the_compiled_step_is_one_graph_and_computes_the_eager_step():
    """Forward, backward and the SGD update of a stack in one graph (one CUDA graph replay on a GPU),
    equal to the eager step (in float64, where kernel summation order does not show). In a process
    of its own: what the compiler leaves behind must not reach the other tests (TorchScript)."""
    code = "import json, test_stack; print('RESULT', json.dumps(test_stack._compiled_against_eager()))"
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert res["graphs"] == 1 and not res["breaks"] and res["used"] == "default", res
    assert res["losses"] < 1e-10 and res["weights"] < 1e-10 and res["momentum"] < 1e-10, res
