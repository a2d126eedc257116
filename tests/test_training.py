"""Training: schedules, config validation, exact resume (also after SIGKILL), divergence, DDP, outputs."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from wnzoo.data import DeviceData
from wnzoo.training import ConfigError, LRSchedule, RunFolder, StateError, TrainingDiverged, load_config, train
from wnzoo.training.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def _cfg(data: Path, **kw) -> TrainConfig:
    base = dict(model="wn_resnet20", data=str(data), epochs=2, batch_size=64, lr=0.05, warmup_epochs=1,
                schedule="cosine", log_every=5, channels_last=False)
    base.update(kw)
    return TrainConfig.from_dict(base)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


# ---- schedules -----------------------------------------------------------------------------------

def test_quadratic_warmup_matches_the_authors_formula():
    s = LRSchedule(lr=0.1, epochs=10, steps_per_epoch=10, warmup_epochs=2, warmup_lr=0.0, kind="step",
                   milestones=(0.5, 0.75))
    # alpha_j = (e + (j + 1)/nb) / E (off = 1 since warmup_lr = 0); lr = alpha^2 * lr
    assert s.lr_at(0) == pytest.approx(0.1 * 0.05 ** 2)
    assert s.lr_at(9) == pytest.approx(0.1 * 0.5 ** 2)
    assert s.lr_at(14) == pytest.approx(0.1 * 0.75 ** 2)
    assert s.lr_at(19) == pytest.approx(0.1)       # reaches lr exactly at the last warmup step
    assert s.lr_at(20) == pytest.approx(0.1)
    w = LRSchedule(lr=0.1, epochs=10, steps_per_epoch=10, warmup_epochs=2, warmup_lr=0.01, kind="step")
    assert w.lr_at(0) == pytest.approx(0.01)       # off = 0: starts at warmup_lr
    assert w.lr_at(10) == pytest.approx(0.01 + 0.25 * 0.09)
    lin = LRSchedule(lr=0.1, epochs=10, steps_per_epoch=10, warmup_epochs=2, warmup_shape="linear", kind="step")
    assert lin.lr_at(9) == pytest.approx(0.05)
    frac = LRSchedule(lr=0.1, epochs=10, steps_per_epoch=10, warmup_epochs=1.5, kind="step")
    assert max(frac.lr_at(i) for i in range(30)) == pytest.approx(0.1)  # no overshoot for fractional E


def test_step_and_cosine_schedules():
    he = LRSchedule(lr=0.1, epochs=182, steps_per_epoch=391, kind="step", milestones=(0.5, 0.75), gamma=0.1)
    assert he.lr_at(90 * 391 + 390) == pytest.approx(0.1)
    assert he.lr_at(91 * 391) == pytest.approx(0.01)     # He et al.: epoch 91 ...
    assert he.lr_at(136 * 391) == pytest.approx(0.001)   # ... and 136 of 182
    wrn = LRSchedule(lr=0.1, epochs=200, steps_per_epoch=10, kind="step", milestones=(0.3, 0.6, 0.8), gamma=0.2)
    assert [wrn.lr_at(e * 10) for e in (59, 60, 120, 160)] == pytest.approx([0.1, 0.02, 0.004, 0.0008])
    cos = LRSchedule(lr=0.2, epochs=12, steps_per_epoch=10, warmup_epochs=2, kind="cosine")
    assert cos.lr_at(20) == pytest.approx(0.2)
    assert cos.lr_at(70) == pytest.approx(0.1)           # halfway through the post-warmup part
    assert cos.lr_at(119) == pytest.approx(0.2 * 0.5 * (1 + np.cos(np.pi * 9.9 / 10)))


def test_lambdalr_follows_the_closed_form():
    s = LRSchedule(lr=0.1, epochs=4, steps_per_epoch=5, warmup_epochs=1, kind="step", milestones=(0.5,))
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, s)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([s.lr_at(i) for i in range(20)])


# ---- config ----------------------------------------------------------------------------------------

def test_config_validation_messages(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['lrr'\]; valid keys: .*'lr'"):
        load_config(None, ["lrr=0.1"])
    with pytest.raises(ConfigError, match=r"schedule='poly' is not valid; choose one of \['step', 'cosine', 'constant'\]"):
        load_config(None, ["schedule=poly"])
    with pytest.raises(ConfigError, match="lr must be a number"):
        load_config(None, ["lr=fast"])
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        load_config(None, ["epochs=1.5"])
    with pytest.raises(ConfigError, match="(?i)did you mean"):
        load_config(None, ["model=wn_resnet21"])
    with pytest.raises(ConfigError, match="init='orthogonal' does not apply to wn_resnet20"):
        load_config(None, ["init=orthogonal"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expects key=value"):
        load_config(None, ["lr"])
    cfg = load_config(REPO / "configs" / "wn_resnet20_c10_short.yaml", ["lr=0.05", "nesterov=false"])
    assert cfg.lr == 0.05 and cfg.nesterov is False and cfg.epochs == 15


def test_every_recipe_is_valid():
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert len(configs) >= 17
    for path in configs:
        cfg = load_config(path)
        assert cfg.model in path.stem, path.name


# ---- data pipeline determinism -------------------------------------------------------------------------

def test_device_data_is_deterministic_and_shards_partition_the_global_batch():
    rng = np.random.default_rng(1)
    d = DeviceData.from_arrays(rng.integers(0, 256, (100, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, 100),
                               "cifar10", seed=3, cutout=8)
    a = [x for x, _ in d.batches(0, 20, train=True)]
    b = [x for x, _ in d.batches(0, 20, train=True)]
    c = [x for x, _ in d.batches(1, 20, train=True)]
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not torch.equal(a[0], c[0])
    shards = [list(d.batches(0, 20, train=True, shard=(r, 2))) for r in (0, 1)]
    for i, (x, y) in enumerate(d.batches(0, 20, train=True)):
        assert torch.equal(torch.stack([shards[0][i][0], shards[1][i][0]], 1).flatten(0, 1), x)
    assert (a[0] == 0).any()  # cutout zeroed some normalized pixels


def test_an_epochs_randomness_is_drawn_before_its_first_batch(record_ops):
    """No step draws random numbers or copies from the host: on a GPU each would be a stream sync."""
    rng = np.random.default_rng(1)
    d = DeviceData.from_arrays(rng.integers(0, 256, (200, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, 200),
                               "cifar10", seed=3, cutout=8)
    batches = d.batches(0, 20, train=True)
    with record_ops() as first:
        next(batches)
    with record_ops() as rest:
        assert len(list(batches)) == 9
    random_ops = {"randint", "randperm", "rand", "uniform_", "random_", "bernoulli"}
    assert random_ops & set(first.seen)
    assert not random_ops & set(rest.seen), sorted(set(rest.seen))
    draws = d.epoch_randomness(0)  # the same draws as the epoch used, for any device
    x0 = next(d.batches(0, 20, train=True))[0]
    ref = DeviceData._augment(d.images[draws["order"][:20]], draws["offset"][:20], draws["flip"][:20])
    assert torch.equal(x0, d._cutout(((ref.float() / 255) - d.mean) / d.std, draws["centre"][:20]))


def test_crop_and_flip_are_a_padded_crop_then_a_mirror():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).reshape(2, 3, 32, 32) % 251 + 1
    out = DeviceData._augment(x, torch.tensor([[4, 4], [0, 8]]), torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(-1))                    # offset (4, 4) is the identity crop
    padded = torch.nn.functional.pad(x[1], (4, 4, 4, 4))
    assert torch.equal(out[1], padded[:, 0:32, 8:40])


# ---- runs ----------------------------------------------------------------------------------------

def test_run_folder_contents(tiny_data, tmp_path):
    run = tmp_path / "run"
    summary = train(_cfg(tiny_data, ema_decay=0.9, label_smoothing=0.1, grad_clip=5.0, cutout=8), run,
                    progress=False)
    assert summary["status"] == "finished" and summary["survived"] is True
    for f in ("model.safetensors", "model_ema.safetensors", "state.safetensors", "config.yaml", "metrics.jsonl",
              "summary.json", "curves.png"):
        assert (run / f).is_file(), f
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "train_acc", "test_acc", "test_acc_ema", "lr", "img_per_s"} <= set(rows[0])
    assert json.loads((run / "summary.json").read_text())["test_acc"] == rows[-1]["test_acc"]
    with pytest.raises(StateError, match="pass --resume"):
        train(_cfg(tiny_data), run, progress=False)


def test_val_split_and_datadep(tiny_data, tmp_path, monkeypatch):
    import wnzoo.training.loop as loop
    monkeypatch.setattr(loop, "train_val_indices", lambda n: (np.arange(100, n), np.arange(100)))
    summary = train(_cfg(tiny_data, epochs=1, init="datadep", val_split=True), tmp_path / "r", progress=False)
    assert summary["eval_split"] == "val" and "test_acc" not in summary
    assert "val_acc" in summary["final"]


def test_resume_is_bit_exact(tiny_data, tmp_path):
    torch.set_num_threads(1)
    cfg = _cfg(tiny_data)
    train(cfg, tmp_path / "straight", progress=False)
    paused = train(cfg, tmp_path / "split", progress=False, time_limit_s=1e-9)
    assert paused["status"] == "paused" and paused["epochs_done"] == 1
    folder = RunFolder(tmp_path / "split")  # a run started before model_args existed resumes with its default
    state = folder.read_state()
    del state.config["model_args"]
    state.save(folder.state)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="different recipe.*lr"):
        train(_cfg(tiny_data, lr=0.2), tmp_path / "split", resume=True, progress=False)


def test_resume_may_change_what_is_not_the_recipe(tiny_data, tmp_path):
    """The keys a resume may change are the ones a card's reproduce command leaves out: one list."""
    from wnzoo.training.config import NON_RECIPE_KEYS

    assert {"data", "device", "compile", "eval_every", "eval_subset", "notes"} <= set(NON_RECIPE_KEYS)
    train(_cfg(tiny_data), tmp_path / "r", progress=False, time_limit_s=1e-9)
    done = train(_cfg(tiny_data, notes="moved", eval_subset=10, log_every=1), tmp_path / "r", resume=True,
                 progress=False)
    assert done["status"] == "finished"


def test_state_only_run_exports_what_a_full_run_writes(tiny_data, tmp_path):
    """A time-boxed job keeps only state.safetensors; export_run rebuilds the folder from it."""
    from wnzoo.training import export_run

    torch.set_num_threads(1)
    full, lean = tmp_path / "full", tmp_path / "lean"
    train(_cfg(tiny_data), full, progress=False)
    summary = train(_cfg(tiny_data, eval_every=0), lean, progress=False, export=False)
    assert RunFolder(lean).contents() == ["state.safetensors"]
    assert "test_acc" not in summary and summary["status"] == "finished"
    exported = export_run(lean, data=tiny_data)
    for f in ("model.safetensors", "config.yaml", "metrics.jsonl", "summary.json", "curves.png"):
        assert (lean / f).is_file(), f
    a, b = _weights(full), _weights(lean)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (lean / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in ref]
    assert exported["test_acc"] == pytest.approx(ref[-1]["test_acc"], abs=1e-6)  # same weights, same test split
    assert exported["test_measured_by"] == "export_run"


def test_run_state_is_one_small_safetensors_file_with_momentum(tmp_path):
    """A ResNet-110 state (weights + momentum, float32) stays under 16 MiB and round-trips exactly."""
    from safetensors import safe_open

    from wnzoo import create_model
    from wnzoo.training import RunState
    from wnzoo.training.stack import stack_models
    from wnzoo.training.step import RunOptim, TrainStep

    model = create_model("wn_resnet110")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    momentum = {n: opt.state[p]["momentum_buffer"] for n, p in model.named_parameters()}
    path = tmp_path / "state.safetensors"
    row = dict(epoch=3, lr=0.1, train_loss=1.0, train_acc=50.0, epoch_time_s=1.0)
    RunState(3, dict(model="wn_resnet110"), [row], model.state_dict(), momentum).save(path)
    assert path.stat().st_size < 16 * 2**20, path.stat().st_size
    assert path.stat().st_size / 2**20 == pytest.approx(13.2, abs=0.1)
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format"] == "wnzoo.run-state.v1"
        assert sum(k.startswith("momentum.") for k in f.keys()) == len(list(model.parameters()))
    state = RunState.load(path)
    other = create_model("wn_resnet110").to(memory_format=torch.channels_last)  # as the loop trains it
    state.restore(other)
    assert state.epoch == 3 and state.history == [row]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert all(torch.equal(momentum[n], state.momentum[n]) for n in momentum)
    wd = {n: 0.0 for n, _ in other.named_parameters()}
    step = TrainStep(stack_models([other]), [RunOptim(0.9, False, wd)], state.momentum)
    for n, q in other.named_parameters():  # the step keeps each buffer in its parameter's layout
        assert step.momentum[n].stride() == q.stride() and torch.equal(step.momentum[n], momentum[n])
    with pytest.raises(StateError, match="do not fit CifarResNet"):
        state.restore(create_model("wn_resnet20"))


def test_a_failing_compiler_falls_back_to_the_eager_step(monkeypatch):
    import wnzoo.training.step as step_mod
    from wnzoo import create_model
    from wnzoo.training.stack import stack_models

    def broken_compile(fn, mode=None):
        def run(*a):  # fails after part of the step ran, as a compiler failing late would
            fn(*a)
            raise RuntimeError("backend exploded")
        return run

    monkeypatch.setattr(step_mod.torch, "compile", broken_compile)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8, 1))
    losses, stats = [], []
    for mode in ("none", "reduce-overhead"):
        torch.manual_seed(0)
        model = create_model("bn_resnet20")
        wd = {n: 1e-4 for n, _ in model.named_parameters()}
        step = step_mod.TrainStep(stack_models([model]), [step_mod.RunOptim(0.9, False, wd)], compile=mode)
        with pytest.warns(RuntimeWarning, match="backend exploded.*continuing eagerly") if mode != "none" else \
                contextlib.nullcontext():
            losses.append([step(x, y, torch.tensor([0.1]))[0].item() for _ in range(3)])
        assert step.mode == "none"
        stats.append(model.state_dict())
    assert losses[0] == losses[1]
    assert all(torch.equal(stats[0][k], stats[1][k]) for k in stats[0])  # weights and BN statistics: one step each


@pytest.mark.slow
def test_compiled_step_matches_eager_and_resumes_exactly(tiny_data, tmp_path):
    """torch.compile (on a GPU also CUDA graphs) computes the eager step's loss curve; resume stays exact."""
    torch.set_num_threads(1)
    eager = train(_cfg(tiny_data, epochs=2), tmp_path / "eager", progress=False)
    comp = train(_cfg(tiny_data, epochs=2, compile="reduce-overhead"), tmp_path / "comp", progress=False)
    assert comp["compile_used"] == "reduce-overhead" and eager["compile_used"] == "none"  # no fallback
    le = [json.loads(x)["train_loss"] for x in (tmp_path / "eager" / "metrics.jsonl").read_text().splitlines()]
    lc = [json.loads(x)["train_loss"] for x in (tmp_path / "comp" / "metrics.jsonl").read_text().splitlines()]
    assert lc == pytest.approx(le, rel=1e-4)
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "comp")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    assert comp["test_acc"] == pytest.approx(eager["test_acc"], abs=1.0)
    cfg = _cfg(tiny_data, epochs=2, compile="reduce-overhead")
    assert train(cfg, tmp_path / "split", progress=False, time_limit_s=1e-9)["status"] == "paused"
    train(cfg, tmp_path / "split", resume=True, progress=False)
    c = _weights(tmp_path / "split")
    assert all(torch.equal(b[k], c[k]) for k in b)


def _cli(*args, env=ENV, **kw):
    return subprocess.run([sys.executable, str(REPO / "train" / "train.py"), *args], env=env, capture_output=True,
                          text=True, **kw)


@pytest.mark.slow  # 25 s; bit-exact resume stays in the fast suite (test_resume_is_bit_exact)
def test_sigkill_then_resume_finishes_exactly(tiny_data, tmp_path):
    torch.set_num_threads(1)
    sets = ["--set", f"data={tiny_data}", "epochs=3", "batch_size=32", "lr=0.05", "warmup_epochs=1",
            "schedule=cosine", "log_every=5", "channels_last=false"]
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(REPO / "train" / "train.py"), *sets, "--out", str(run)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # well inside epoch 2 (20 steps of ~0.1-0.3 s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists()
    done = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["epoch"]
    assert done < 3, "the run finished before it was killed: the test needs slower epochs"
    r = _cli(*sets, "--out", str(run), "--resume")
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    ref = tmp_path / "ref"
    assert _cli(*sets, "--out", str(ref)).returncode == 0
    a, b = _weights(run), _weights(ref)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_divergence_stops_with_message_and_keeps_checkpoint(tiny_data, tmp_path, monkeypatch):
    # lr is fine in epoch 1 and absurd (x1e6) from epoch 2 on (no valid recipe does that: gamma <= 1)
    lr_at = LRSchedule.lr_at
    monkeypatch.setattr(LRSchedule, "lr_at", lambda self, s: lr_at(self, s) * (1e6 if s >= self.steps_per_epoch else 1))
    cfg = _cfg(tiny_data, epochs=2, warmup_epochs=0, schedule="constant")
    run = tmp_path / "div"
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at epoch 2, step \d+ \(lr 5e\+04\).*epoch 1\) is kept"):
        train(cfg, run, progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["survived"] is False and summary["diverged_at"]["epoch"] == 2
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert all(torch.isfinite(t).all() for t in _weights(run).values())
    r = _cli("--set", f"data={tiny_data}", "lr=1e5", "epochs=1", "batch_size=64", "--out", str(tmp_path / "d2"))
    assert r.returncode == 3 and "training diverged" in r.stderr and "no checkpoint" in r.stderr
    # a run that diverged before its first checkpoint may start again in the same folder
    train(_cfg(tiny_data, epochs=1, warmup_epochs=0), tmp_path / "d2", progress=False)


@pytest.mark.slow  # five processes, 17 s; the same refusals run in process (test_bad_input.py, test_data.py, above)
def test_cli_bad_input_is_a_message_not_a_traceback(tmp_path):
    r = _cli("--set", "optimizer=adam")
    assert r.returncode == 2 and "unknown config key(s) ['optimizer']" in r.stderr and "Traceback" not in r.stderr
    r = _cli("--set", f"data={tmp_path}", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "holds no cifar10 data" in r.stderr and "train.npz" in r.stderr
    r = _cli("--out", str(tmp_path / "none"), "--resume")
    assert r.returncode == 2 and "nothing to resume" in r.stderr
    if not torch.cuda.is_available():
        r = _cli("--set", "device=cuda", "--out", str(tmp_path / "gpu"))
        assert r.returncode == 2 and "no usable CUDA device" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "state.safetensors").write_bytes(b"not a state")
    r = _cli("--out", str(tmp_path / "bad"), "--resume")
    assert r.returncode == 2 and "not a readable run state" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # two processes and a rendezvous: 20 s on 2 cores
def test_torchrun_gloo_matches_single_process(tiny_data, tmp_path):
    sets = ["--set", f"data={tiny_data}", "epochs=1", "batch_size=64", "lr=0.05", "log_every=5",
            "channels_last=false", "device=cpu"]
    single = _cli(*sets, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(REPO / "train" / "train.py"), *sets, "--out", str(tmp_path / "two")], env=ENV,
                         capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    # Equal up to float summation order (DDP all-reduces per-rank gradients), which 10 SGD steps
    # amplify to ~1e-4 relative; a different batch order (seed) moves the weights far more.
    other = _cli(*sets, "seed=1", "--out", str(tmp_path / "seed1"))
    assert other.returncode == 0, other.stderr
    c = _weights(tmp_path / "seed1")
    rel = lambda x, y: max(((x[k] - y[k]).norm() / x[k].norm()).item() for k in x if x[k].norm() > 0)
    assert rel(a, b) < 2e-3 < 10 * 2e-3 < rel(a, c), (rel(a, b), rel(a, c))


@pytest.mark.parametrize("name", ["wn_resnet20", "bn_resnet20"])
def test_weight_decay_follows_the_model_and_the_recipe(name, tiny_data, monkeypatch):
    from wnzoo.registry import create_model
    from wnzoo.training.loop import weight_decay_of

    model = create_model(name)
    # the paper's recipe decays every parameter (the model exempts none)
    assert model.no_weight_decay() == set()
    wd = weight_decay_of(model, _cfg(tiny_data))
    assert list(wd) == [n for n, _ in model.named_parameters()] and set(wd.values()) == {1e-4}
    # the model's own list is what both recipes exempt; wd_on_gains_biases_bn: false adds every 1-d tensor
    monkeypatch.setattr(type(model), "no_weight_decay", lambda self: {"stem.bias", "fc.weight"})
    names = dict(model.named_parameters())
    wd = weight_decay_of(model, _cfg(tiny_data))
    assert {n for n in names if wd[n] == 0} == {"stem.bias", "fc.weight"}
    wd = weight_decay_of(model, _cfg(tiny_data, wd_on_gains_biases_bn=False))
    assert {n for n in names if wd[n] == 0} == {n for n, p in names.items() if p.ndim <= 1} | {"fc.weight"}


def test_resume_without_a_recipe_reads_the_runs_own_config_and_a_paused_run_has_curves(tiny_data, tmp_path, capsys):
    from wnzoo.training.cli import main

    torch.set_num_threads(1)
    out = tmp_path / "run"
    train(_cfg(tiny_data, eval_every=0), out, progress=False, time_limit_s=1e-3)
    assert json.loads((out / "summary.json").read_text())["status"] == "paused"
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"  # a paused run is plotted too
    assert main(["--out", str(out), "--resume", "-q"]) == 0  # no -c: the state's config
    assert "finished (2 epochs)" in capsys.readouterr().out
    assert main(["--resume", "-q"]) == 2 and "--resume needs the run's folder: --out DIR" in capsys.readouterr().err
    again = tmp_path / "again"  # paused with its files, then finished state-only: the old summary is not its
    train(_cfg(tiny_data, eval_every=0), again, progress=False, time_limit_s=1e-3)
    train(_cfg(tiny_data, eval_every=0), again, resume=True, progress=False, export=False)
    from wnzoo.publish import PublishError, Run
    with pytest.raises(PublishError, match=f"its state is finished: rebuild its files \\(python train/train.py "
                                           f"--export {again}\\)"):
        Run.read(again)
    # a resume of the finished run (as after a stop while it wrote its last files) writes them
    assert train(_cfg(tiny_data, eval_every=0), again, resume=True, progress=False)["status"] == "finished"
    assert Run.read(again).summary["status"] == "finished"
    assert main(["--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


@pytest.mark.slow
def test_the_documented_quick_run_trains(cifar10_dir, tmp_path):
    from wnzoo.training.cli import SMOKE

    out = tmp_path / "smoke"
    r = _cli("-c", str(REPO / "configs" / "wn_resnet20_c10_short.yaml"), "--set", *SMOKE.split(), f"data={cifar10_dir}",
             "--out", str(out), "-q", env=dict(ENV, OMP_NUM_THREADS="2"))
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and np.isfinite(summary["final"]["train_loss"]) and summary["test_acc"] > 10
    assert SMOKE in (REPO / "README.md").read_text().replace(" \\\n    ", " ")
