"""Time-boxed jobs: a queue of runs within a budget, state-only folders, resume across jobs, the probe."""
from __future__ import annotations

import importlib.util
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from filelock import FileLock
from safetensors.torch import load_file

from wnzoo.training import RunFolder, export_run, load_config, train
from wnzoo.training.timebox import exit_code, results_rows, run_queue

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A CIFAR-shaped training split of 256 images (no test split: a training machine may lack it)
    and two recipes, a WN ResNet-20 and its BN twin, for 2 epochs without evaluation."""
    d = tmp_path_factory.mktemp("timebox")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 256)
    np.savez(d / "train.npz", images=rng.integers(0, 256, (256, 32, 32, 3)).astype(np.uint8), labels=labels)
    for arch in ("wn", "bn"):
        (d / f"{arch}_tiny.yaml").write_text(yaml.safe_dump(dict(
            model=f"{arch}_resnet20", data=str(d), epochs=2, batch_size=64, lr=0.05, warmup_epochs=1,
            schedule="cosine", log_every=2, channels_last=False, eval_every=0)))
    return d


def _states_equal(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.slow  # 16 s; the fast suite keeps a job's devices and the recipe checks
def test_a_queue_trains_in_parallel_pauses_at_the_budget_and_resumes_exactly(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    configs = [tiny / "wn_tiny.yaml", tiny / "bn_tiny.yaml"]
    out, log = tmp_path / "job", io.StringIO()
    # A budget far below one epoch: each run pauses after its first epoch.
    runs = run_queue(configs, out, minutes=1e-3, parallel=2, min_start_s=0, echo=log)
    assert [(r.name, r.status, r.epochs_after) for r in runs] == [("wn_tiny", "paused", 1), ("bn_tiny", "paused", 1)]
    assert RunFolder(out / "wn_tiny").contents() == ["state.safetensors"]  # nothing else to carry
    assert "[wn_tiny] epoch=1" in log.getvalue() and "[bn_tiny] epoch=1" in log.getvalue()
    assert (out / "job.log").read_text().count("[job] start") == 2
    assert exit_code(runs) == 0
    rows = results_rows(runs)
    assert len(rows) == 2 and rows[0].startswith("| cpu | wn_tiny | 1 | none | 0 → 1 of 2 |")  # stack of 1, eager
    # The same command again continues both runs; a third time there is nothing left to do.
    runs = run_queue(configs, out, minutes=5, parallel=1, echo=None)
    assert [(r.status, r.epochs_before, r.epochs_after) for r in runs] == [("finished", 1, 2)] * 2
    again = run_queue(configs, out, minutes=5, echo=None)
    assert [r.returncode for r in again] == [None, None] and (out / "job.log").read_text().count("[job] start") == 4
    # Bit-exact with one uninterrupted run of the same recipe.
    ref = tmp_path / "ref"
    train(load_config(configs[0]), ref, progress=False, export=False)
    assert _states_equal(ref / "state.safetensors", out / "wn_tiny" / "state.safetensors")
    summary = export_run(out / "bn_tiny")
    assert summary["status"] == "finished" and "test_acc" not in summary  # the training folder has no test split
    assert (out / "bn_tiny" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_run_past_the_budget_is_stopped_and_a_diverged_run_does_not_stop_the_queue(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bad = tmp_path / "wn_diverges.yaml"
    bad.write_text(yaml.safe_dump(dict(yaml.safe_load((tiny / "wn_tiny.yaml").read_text()), lr=1e5,
                                       warmup_epochs=0)))
    runs = run_queue([bad, tiny / "bn_tiny.yaml"], tmp_path / "job", minutes=5, echo=None)
    assert [r.status for r in runs] == ["diverged", "finished"] and exit_code(runs) == 3
    assert "training diverged" in (tmp_path / "job" / "job.log").read_text()
    # No time at all to finish an epoch: the run is stopped after the grace period, with no state.
    runs = run_queue([tiny / "wn_tiny.yaml"], tmp_path / "late", minutes=0.01, grace_s=0.5, min_start_s=0, echo=None)
    assert runs[0].status == "stopped" and runs[0].epochs_after == 0
    assert not (tmp_path / "late" / "wn_tiny" / "state.safetensors").exists()


def test_cli_checks_every_recipe_before_starting(tiny, tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "train" / "timebox.py"), str(tiny / "wn_tiny.yaml"),
                        str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "job"), "--time-limit", "1"],
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "missing.yaml does not exist" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "job").exists()
    r = subprocess.run([sys.executable, str(REPO / "train" / "timebox.py"), str(tiny / "wn_tiny.yaml"),
                        "--out", str(tmp_path / "job"), "--time-limit", "0"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "positive number of minutes" in r.stderr


@pytest.mark.slow  # 9 s; every command's handling of SIGTERM is in the fast suite (tests/test_faults.py)
def test_a_job_ended_by_sigterm_stops_its_runs(tiny, tmp_path):
    """A scheduler's time limit sends SIGTERM to the job: its runs (in their own process groups)
    must stop with it, not train on unseen."""
    long = tmp_path / "wn_long.yaml"
    long.write_text(yaml.safe_dump(dict(yaml.safe_load((tiny / "wn_tiny.yaml").read_text()), epochs=10_000)))
    out = tmp_path / "job"
    job = subprocess.Popen([sys.executable, str(REPO / "train" / "timebox.py"), str(long), "--out", str(out),
                            "--time-limit", "30"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    lock = FileLock(out / "wn_long" / RunFolder.LOCK)
    try:
        deadline = time.time() + 120
        while not (out / "job.log").exists() or "[wn_long] epoch=1 " not in (out / "job.log").read_text():
            assert time.time() < deadline and job.poll() is None, "the run never finished an epoch"
            time.sleep(0.2)
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=30) == 130
        err = job.stderr.read()
        assert "interrupted" in err and "continue with the same command" in err and "Traceback" not in err
        lock.acquire(timeout=5)  # the run's process holds it while it lives
        lock.release()
        assert RunFolder(out / "wn_long").epochs_done() >= 1  # its finished epochs are kept
    finally:
        job.kill()
        subprocess.run(["pkill", "-f", str(out)], check=False)


def test_probe_compiles_every_recipe_before_the_runs_at_once():
    """A probe cut short by its budget must still have compiled (and cached) every recipe's step."""
    spec = importlib.util.spec_from_file_location("gpu_probe", REPO / "benchmarks" / "gpu_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.cases(["wn", "bn"], ["none", "reduce-overhead"], [1, 2, 4], [1, 2, 4]) == [
        ("wn", "none", 1, 1), ("wn", "reduce-overhead", 1, 1), ("bn", "none", 1, 1), ("bn", "reduce-overhead", 1, 1),
        ("wn", "reduce-overhead", 1, 2), ("wn", "reduce-overhead", 1, 4),
        ("wn", "reduce-overhead", 2, 1), ("wn", "reduce-overhead", 4, 1)]
    assert probe.cases(["wn"], ["none"], [2]) == [("wn", "none", 1, 1), ("wn", "none", 2, 1)]


@pytest.mark.slow
def test_probe_measures_each_mode_stacks_and_several_runs_at_once(tiny, tmp_path):
    results = tmp_path / "results.md"
    results.write_text("# results\n")
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_probe.py"), "-c", str(tiny / "wn_tiny.yaml"),
                        "--modes", "none", "--stacks", "1,2", "--runs", "1,2", "--seconds", "0.5",
                        "--set", "device=cpu", "--results", str(results)],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = results.read_text()
    assert text.startswith("# results\n") and "### Probe" in text
    rows = [ln.split(" | ") for ln in text.splitlines() if ln.startswith("| cpu | wn_resnet20 | 64 | none |")]
    assert [(c[4], c[5]) for c in rows] == [("1", "1"), ("2", "1"), ("1", "2")], text  # stack, processes
    assert rows[0][8] == "1.00×" and rows[0][9] == "1.00×" and "s in all" in text
    assert float(rows[1][6].replace(",", "")) == pytest.approx(2 * float(rows[1][7].replace(",", "")), rel=0.01)


def _queued(configs: list[Path], out: Path):
    from wnzoo.training.timebox import _prepare
    return _prepare(configs, out, [])


def _seeds(data: Path, folder: Path) -> list[Path]:
    """Three recipes of one architecture that differ in seed, init and lr: one stack."""
    paths = []
    for k, extra in enumerate([{}, dict(lr=0.1), dict(init="proposed_he")]):
        paths.append(folder / f"wn_s{k}.yaml")
        paths[-1].write_text(yaml.safe_dump(dict(dict(model="wn_resnet20", data=str(data), epochs=2, batch_size=64,
                                                      lr=0.05, warmup_epochs=1, schedule="cosine", log_every=5,
                                                      channels_last=False, eval_every=0, subset=256, seed=k),
                                                 **extra)))
    return paths


@pytest.mark.slow  # 15 s: a job, a stack trained again in this process, three exports and a publish
def test_runs_that_can_share_a_stack_train_as_one_and_publish_like_any_run(tiny_data, tiny, tmp_path, monkeypatch):
    import wnzoo.evaluation
    from wnzoo.publish import publish
    from wnzoo.training import train_stack
    from wnzoo.training.timebox import default_stack, plan_stacks

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    seeds = _seeds(tiny_data, tmp_path)
    out = tmp_path / "job"
    runs = run_queue([*seeds, tiny / "bn_tiny.yaml"], out, minutes=5, stack=8, echo=None)  # a CPU's default is 1
    log = (out / "job.log").read_text()
    assert log.count("[job] start") == 2 and "[job] start a stack of 3: wn_s0 at epoch 0/2, wn_s1 at epoch 0/2" in log
    assert "[wn_s0+2] [wn_s1] epoch=2" in log  # each run's own lines
    assert [r.status for r in runs] == ["finished"] * 4 and exit_code(runs) == 0
    rows = results_rows(runs)
    assert [r.split(" | ")[2] for r in rows] == ["3", "3", "3", "1"]
    # the same as the stack trained in this process: each run's state is its own
    cfgs = [load_config(p) for p in seeds]
    train_stack(cfgs, [tmp_path / f"ref{k}" for k in range(3)], progress=False, export=False)
    for k in range(3):
        assert _states_equal(tmp_path / f"ref{k}" / "state.safetensors", out / f"wn_s{k}" / "state.safetensors")
    # exported and published like any run, and nothing in them says they were trained in a stack but the history
    monkeypatch.setattr(wnzoo.evaluation, "TEST_SPLIT_SIZE", 200)
    summaries = [export_run(out / f"wn_s{k}", data=tiny_data) for k in range(3)]
    assert all(s["status"] == "finished" and "test_acc" in s for s in summaries)
    paths = dict(release_dir=tmp_path / "hub", published_json=tmp_path / "p.json", zoo_card_path=tmp_path / "M.md")
    rec, folder = publish(out / "wn_s1", "wnzoo/wn_resnet20.c10", data=tiny_data,
                          recipe=REPO / "configs" / "wn_resnet20_c10_short.yaml", **paths)
    assert rec.top1 == pytest.approx(summaries[1]["test_acc"], abs=0.5)
    assert set(load_file(folder / "model.safetensors")) == set(load_file(out / "wn_s1" / "model.safetensors"))
    # --stack 1: every run alone; the default stacks on GPUs only
    assert [len(u) for u in plan_stacks(_queued(seeds, tmp_path / "alone"), size=1)] == [1, 1, 1]
    assert [len(u) for u in plan_stacks(_queued(seeds, tmp_path / "two"), size=2)] == [2, 1]
    assert default_stack(runs, ["cuda:0", "cuda:1"]) == 8 and default_stack(runs, ["cpu"]) == 1
    assert default_stack(runs, [None]) == (8 if torch.cuda.is_available() else 1)  # device=auto


def test_a_job_spreads_its_processes_over_the_devices_it_is_given(tiny, tmp_path, monkeypatch):
    from wnzoo.training.timebox import _Job, parse_devices

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    configs = [tiny / "wn_tiny.yaml", tiny / "bn_tiny.yaml"]
    out = tmp_path / "job"
    runs = run_queue(configs, out, minutes=5, devices=["cpu", "cpu"], echo=None)
    log = (out / "job.log").read_text()
    assert [r.status for r in runs] == ["finished", "finished"]
    assert "wn_tiny at epoch 0/2 on cpu" in log and "bn_tiny at epoch 0/2 on cpu" in log
    starts = [ln for ln in log.splitlines() if ln.startswith("[job] start") or "epoch=1 " in ln]
    assert starts[1].startswith("[job] start"), starts  # both started before either finished an epoch
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    job = _Job([], 0, [], [], [None], tmp_path)
    assert job._env("cuda:1")["CUDA_VISIBLE_DEVICES"] == "5" and job._env("cpu") is job.env
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"] and parse_devices(None) == [None]
    with pytest.raises(ValueError, match="cpu or cuda:N"):
        parse_devices("gpu0")
    with pytest.raises(ValueError, match=r"names cuda:2, but this machine has 2 usable CUDA device\(s\); name those it "
                                         r"has \(cuda:0, cuda:1\)"):
        parse_devices("cuda:0,cuda:2")
