"""Stops that are not bad input: a scheduler's signal, a real full disk, a reader that closed our
output, a kill in the middle of a write. Each ends with the contract's exit code and one line, keeps
the last finished epoch, and says how to continue; nothing a user made is overwritten."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wnzoo import reproduce
from wnzoo._io import check_writable, is_temporary, remove_temporaries
from wnzoo.training import RunFolder, load_config, train
from wnzoo.training import cli as train_cli

REPO = Path(__file__).resolve().parent.parent
# The printed commands say `python`: this interpreter's.
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
RUN = ["model=wn_resnet20", "epochs=3", "batch_size=64", "lr=0.05", "warmup_epochs=0", "schedule=cosine",
       "channels_last=false", "log_every=1"]


def _script(path: str):
    spec = importlib.util.spec_from_file_location(f"faults_{Path(path).stem}", REPO / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", images=rng.integers(0, 256, (128, 32, 32, 3), dtype=np.uint8),
                 labels=(np.arange(128) % 10).astype(np.int64))
    return folder


@pytest.fixture(scope="module")
def paused(data, tmp_path_factory) -> Path:
    """A run that stopped after its first epoch, as a time limit leaves it."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "paused"
    train(load_config(None, RUN + [f"data={data}"]), out, progress=False, time_limit_s=1e-3)
    assert RunFolder(out).epochs_done() == 1
    return out


def _signalling(sig: int):
    """A stand-in for a command's work that receives ``sig`` while it runs."""
    def work(*args, **kwargs):
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler interrupts this at once
        raise AssertionError(f"{signal.Signals(sig).name} did not stop the command")
    return work


# Every command line, and the function where its work happens.
COMMANDS = {"train": ("wnzoo/training/cli.py", "train"), "eval": ("eval/cifar.py", "reproduction_table"),
            "publish": ("hub/publish.py", "publish"), "sigprop": ("eval/signal_propagation.py", "compare_inits"),
            "timebox": ("train/timebox.py", "run_queue"), "lr_robustness": ("eval/lr_robustness.py", None)}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_schedulers_signal_stops_every_command_as_ctrl_c_does(command, sig, data, paused, tmp_path, monkeypatch,
                                                                 capsys):
    path, work = COMMANDS[command]
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    run_dir = shutil.copytree(paused, tmp_path / "run")
    argv = {"train": ["--out", str(run_dir), "--resume", "-q"], "eval": ["--data", str(data)],
            "publish": [str(run_dir)], "sigprop": ["--out", str(tmp_path / "x.png")],
            "timebox": ["x.yaml", "--out", str(tmp_path / "job"), "--time-limit", "1"],
            "lr_robustness": ["--out", str(tmp_path / "sweep"), "--data", str(data), "--quiet"]}[command]
    if work is None:  # eval/<experiment>.py is reproduce.cli
        monkeypatch.setattr(reproduce, "run_experiment", _signalling(sig))

        def main(argv: list[str]) -> int:
            return reproduce.cli(Path(path).stem, argv, repo=REPO)
    else:
        module = train_cli if command == "train" else _script(path)
        monkeypatch.setattr(module, work, _signalling(sig))
        main = module.main
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"interrupted by {signal.Signals(sig).name}" in err and "Traceback" not in err, err
    if command == "train":
        assert f"the last finished epoch is saved in {run_dir}; continue with: python " in err
    if command == "publish":
        assert "a publish cut short is finished or undone by the next publish or load of pretrained weights" in err
    if command == "lr_robustness":
        assert f"every finished cell is kept in {tmp_path / 'sweep'}; continue with the same command" in err
    assert {s: signal.getsignal(s) for s in before} == before  # the caller's handlers are back


@pytest.mark.slow  # 11 s; every command's handling of the signal is in the fast suite (in process)
def test_sigterm_to_training_keeps_the_epoch_and_the_resume_is_exact(data, tmp_path):
    sets = ["--set", *RUN, f"data={data}", "batch_size=16", "-q"]
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "train" / "train.py"), *sets, "--out", str(run)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / RunFolder.METRICS).is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted by SIGTERM" in err and "continue with: python " in err and "Traceback" not in err, err
    assert RunFolder(run).epochs_done() < 3, "the run ended before the signal: the test needs slower epochs"
    resume = err.strip().splitlines()[-1].split("continue with: ", 1)[1]
    assert subprocess.run(resume, shell=True, cwd=REPO, env=ENV, capture_output=True).returncode == 0
    ref = tmp_path / "ref"
    assert subprocess.run([sys.executable, str(REPO / "train" / "train.py"), *sets, "--out", str(ref)], env=ENV,
                          capture_output=True).returncode == 0
    assert (run / RunFolder.WEIGHTS).read_bytes() == (ref / RunFolder.WEIGHTS).read_bytes()


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d; rmdir $d"
    return subprocess.run(["unshare", "-r", "-m", "sh", "-c", probe], capture_output=True).returncode == 0


@pytest.mark.slow  # 8 s; the fast suite has the simulated full disk (test_bad_input.py)
@pytest.mark.skipif(not _can_mount(), reason="mounting a small tmpfs needs user namespaces (unshare -r -m)")
def test_a_real_full_disk_keeps_the_last_epoch_and_the_resume_command_works(data, tmp_path):
    """A 5 MiB tmpfs holds a run's first epoch (2.1 MiB state, 1.0 MiB weights) but not the second
    state beside the first; after the disk grows, the printed command finishes the run."""
    mnt, out = tmp_path / "mnt", tmp_path / "mnt" / "run"
    mnt.mkdir()
    train_py = [sys.executable, str(REPO / "train" / "train.py"), "--set", *RUN, f"data={data}", "-q",
                "--out", str(out)]
    script = (f"mount -t tmpfs -o size=5m tmpfs {mnt} && cd {REPO} && "
              f"{' '.join(train_py)} 2> {tmp_path}/err1; echo $? > {tmp_path}/rc1; ls -a {out} > {tmp_path}/ls1; "
              f"mount -o remount,size=64m {mnt} && sh -c \"$(tail -1 {tmp_path}/err1 | sed 's/.*continue with: //')\" "
              f"> /dev/null 2> {tmp_path}/err2; echo $? > {tmp_path}/rc2; cp {out}/{RunFolder.SUMMARY} {tmp_path}/")
    subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], env=ENV, check=True, timeout=300)
    err = (tmp_path / "err1").read_text()
    assert (tmp_path / "rc1").read_text().strip() == "2", err
    assert f"error: {out / RunFolder.STATE}: No space left on device; free some space" in err, err
    assert "Traceback" not in err and f"the last finished epoch is saved in {out}; continue with" in err, err
    assert not [n for n in (tmp_path / "ls1").read_text().split() if is_temporary(n)]  # no half-written file
    assert (tmp_path / "rc2").read_text().strip() == "0", (tmp_path / "err2").read_text()
    assert json.loads((tmp_path / RunFolder.SUMMARY).read_text())["epochs_done"] == 3


def test_a_closed_output_pipe_stops_with_130_and_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, str(REPO / "eval" / "signal_propagation.py"), "--model", "wn_resnet20",
                             "--batch", "2", "--image-size", "16", "--out", str(tmp_path / "x.png")],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader went away (as `| head` does) before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, err
    assert err.strip() == "stopped: the program reading the output closed it", err


def test_temporary_files_of_a_killed_write_go_at_the_next_start(paused, data, tmp_path):
    run = shutil.copytree(paused, tmp_path / "run")
    (run / f".{RunFolder.STATE}.0badf00d.tmp").write_bytes(b"half a state")
    (run / ".notes.tmp").write_text("a user's file that only looks temporary\n")
    assert train_cli.main(["--out", str(run), "--resume", "-q"]) == 0
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == [".notes.tmp"]
    assert remove_temporaries(run) == []


def test_export_of_a_finished_run_keeps_its_summary_and_refuses_other_flags(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli.main(["--set", *RUN, "epochs=1", f"data={data}", "--out", str(run), "-q"]) == 0
    summary = (run / RunFolder.SUMMARY).read_bytes()
    assert {"compile_used", "seconds_this_session"} <= set(json.loads(summary))
    assert train_cli.main(["--export", str(run)]) == 0
    assert (run / RunFolder.SUMMARY).read_bytes() == summary
    for flags in (["--set", "lr=0.2"], ["--out", str(tmp_path / "x")], ["--resume"], ["-c", "configs/x.yaml"],
                  ["--time-limit", "5"], ["--state-only"]):
        with pytest.raises(SystemExit) as e:
            train_cli.main(["--export", str(run), *flags])
        assert e.value.code == 2 and "--export only writes a run's files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_cli.main(["--set", *RUN, "--data", str(data), "--out", str(tmp_path / "y")])
    assert "--data goes with --export; to train on a data folder, pass --set data=DIR" in capsys.readouterr().err


@pytest.mark.parametrize("command,flag", [("eval/cifar.py", "--json"), ("eval/signal_propagation.py", "--out")])
def test_a_users_file_is_replaced_only_with_force(command, flag, tmp_path, monkeypatch, capsys):
    mine = tmp_path / "mine"
    mine.write_text("a user's file\n")
    main = _script(command).main
    assert main([flag, str(mine), "--data", "/nonexistent"] if "cifar" in command else [flag, str(mine)]) == 2
    err = capsys.readouterr().err
    assert f"error: {mine}: the file exists; pass --force to replace it, or choose another path" in err, err
    assert mine.read_text() == "a user's file\n"
    assert check_writable(mine, overwrite=True) == mine  # what --force asks for


def test_a_broken_link_as_output_is_named_not_followed(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone" / "target")
    for path, folder in ((link, False), (link, True), (link / "sub" / "x.png", False)):
        with pytest.raises(FileNotFoundError, match="a broken symbolic link .*; remove it or choose another path"):
            check_writable(path, folder=folder)
    assert link.is_symlink() and not (tmp_path / "gone").exists()


def test_a_run_stopped_while_writing_its_last_files_gets_them_on_resume(paused, data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli.main(["--set", *RUN, "epochs=1", f"data={data}", "--out", str(run), "-q"]) == 0
    for name in (RunFolder.SUMMARY, RunFolder.CURVES):  # a stop after the last state, before these
        (run / name).unlink()
    assert train_cli.main(["--out", str(run), "--resume", "-q"]) == 0
    assert json.loads((run / RunFolder.SUMMARY).read_text())["status"] == "finished"
    assert (run / RunFolder.CURVES).is_file()


def test_a_time_boxed_jobs_log_keeps_every_line_when_the_terminal_reader_goes(tmp_path):
    import threading

    from wnzoo.training.timebox import _pump

    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    log = (tmp_path / "job.log").open("w")
    sinks = [Closed(), log]
    _pump(iter(["one\n", "two\n"]), "a", sinks, threading.Lock())
    log.close()
    assert (tmp_path / "job.log").read_text() == "[a] one\n[a] two\n" and sinks == [log]


def test_the_resume_command_of_a_time_boxed_run_is_one_that_runs(monkeypatch):
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", importlib.util.find_spec("wnzoo.training.cli"))
    assert train_cli._program() == ["-m", "wnzoo.training.cli"]
    assert train_cli._without_deadline(["-c", "a.yaml", "--until", "1.5", "--out", "x", "--until=2"]) == [
        "-c", "a.yaml", "--out", "x"]


@pytest.mark.parametrize("script", ["train/train.py", pytest.param("hub/publish.py", marks=pytest.mark.slow)])
def test_a_signal_while_a_command_starts_ends_it_with_130(script, tmp_path):
    # A finder that holds the import of wnzoo._cli (the scripts' first) open, so the signal surely lands in the
    # imports: a fixed sleep lost the race to a warm cache and --help finished first.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys, time\n"
        "class Hold:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'wnzoo._cli':\n"
        "            print('importing', file=sys.stderr, flush=True)\n"
        "            time.sleep(60)\n"
        "sys.meta_path.insert(0, Hold())\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path), ENV["PYTHONPATH"]])}
    proc = subprocess.Popen([sys.executable, str(REPO / script), "--help"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline() == "importing\n"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and err.strip() == "interrupted", err


@pytest.mark.parametrize("argv,message", [
    (["run", "--model-card"], "--model-card only regenerates MODEL_CARD.md; give it alone"),
    (["--model-card", "--dry-run"], "--model-card only regenerates MODEL_CARD.md; give it alone"),
    (["run", "--dry-run", "--push"], "--dry-run builds and verifies the folder only"),
    (["run", "--out", "x"], "--out is where --dry-run builds the folder"),
])
def test_publish_refuses_flags_it_would_ignore(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        _script("hub/publish.py").main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
