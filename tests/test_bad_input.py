"""The command lines' contract, row by row: every bad input (models, weights, data, configs, faults,
publishing) exits 2 with one line that names the fix, never a traceback, and leaves every file a
user made as it was. Interruptions exit 130 and say how to continue."""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import os
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from wnzoo import create_model, reproduce
from wnzoo._io import read_metadata, save_safetensors
from wnzoo.training import RunFolder, RunState, load_config, train
from wnzoo.training import cli as train_cli

REPO = Path(__file__).resolve().parent.parent
# The recipe of every run here: tiny, so a run takes a second.
RUN = ["model=wn_resnet20", "epochs=2", "batch_size=64", "lr=0.05", "warmup_epochs=0", "schedule=cosine",
       "channels_last=false", "log_every=1"]


def _script(path: str):
    spec = importlib.util.spec_from_file_location(f"cli_{Path(path).stem}", REPO / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CLIS = {"train": train_cli, **{name: _script(path) for name, path in (
    ("eval", "eval/cifar.py"), ("publish", "hub/publish.py"), ("sigprop", "eval/signal_propagation.py"),
    ("timebox", "train/timebox.py"))},
    # eval/lr_robustness.py and its siblings are reproduce.cli with their experiment
    "lr_robustness": SimpleNamespace(main=lambda argv: reproduce.cli("lr_robustness", argv, repo=REPO))}


def _npz(folder: Path, seed: int = 0, labels_dtype=np.int64, n: int = 128, n_test: int | None = None) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split, m in (("train", n), ("test", n if n_test is None else n_test)):
        np.savez(folder / f"{split}.npz", images=rng.integers(0, 256, (m, 32, 32, 3), dtype=np.uint8),
                 labels=(np.arange(m) % 10).astype(labels_dtype))
    return folder


def _edited_state(source: Path, folder: Path, tensors: dict | None = None, **meta: str) -> Path:
    """A copy of the run folder ``source`` whose state has its metadata (or its tensors) replaced: a
    state that came back from another machine edited, or from another run."""
    state = shutil.copytree(source, folder) / RunFolder.STATE
    save_safetensors(state, load_file(state) if tensors is None else tensors, {**read_metadata(state), **meta})
    return folder


# A recipe that expands, through nested aliases, from 300 bytes to 9**10 strings (a "billion laughs").
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{m}'] * 9)}]\n" for m, n in zip("abcdefgh", "bcdefghi")) + "notes: *i\n"


def _parquet(folder: Path, blob: bytes) -> Path:
    sub = folder / "plain_text"
    sub.mkdir(parents=True)
    img = pa.array([{"bytes": blob, "path": None}], type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"img": img, "label": pa.array([0], pa.int64())}), sub / "test-00000-of-00001.parquet")
    return folder


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Everything the rows point at: data, damaged data, runs in every state, damaged files."""
    torch.set_num_threads(1)
    w = tmp_path_factory.mktemp("world")
    p = dict(data=_npz(w / "data"), other_data=_npz(w / "other_data", seed=1),
             float_labels=_npz(w / "float_labels", labels_dtype=np.float32),
             jpeg=_parquet(w / "jpeg", _jpeg()), garbage=_parquet(w / "garbage", b"not an image"))
    p["truncated_npz"] = shutil.copytree(p["data"], w / "truncated_npz")
    blob = (p["data"] / "test.npz").read_bytes()
    (p["truncated_npz"] / "test.npz").write_bytes(blob[:len(blob) // 2])
    cfg = load_config(None, RUN + [f"data={p['data']}"])
    train(cfg, w / "finished", progress=False)
    train(cfg, w / "paused", progress=False, export=False, time_limit_s=1e-3)
    assert RunFolder(w / "paused").epochs_done() == 1
    p.update(finished=w / "finished", paused=w / "paused")
    for name, edit in (("doctored", "state"), ("doctored_no_state", "summary")):
        d = p[name] = shutil.copytree(w / "finished", w / name)
        if edit == "summary":
            (d / RunFolder.STATE).unlink()
        (d / RunFolder.METRICS).write_text((d / RunFolder.METRICS).read_text().replace('"test_acc": ', '"test_acc": 9'))
    p["no_state"] = shutil.copytree(w / "finished", w / "no_state", ignore=shutil.ignore_patterns(RunFolder.STATE))
    p["release"] = shutil.copytree(REPO / "hub" / "wn_resnet20.c10", w / "release")
    p["foreign_state"] = w / "foreign"
    save_safetensors(p["foreign_state"] / RunFolder.STATE, {"x": torch.zeros(1)}, {"format": "someone-else"})
    p["partial_state"] = shutil.copytree(w / "paused", w / "partial")
    state = (p["partial_state"] / RunFolder.STATE).read_bytes()
    (p["partial_state"] / RunFolder.STATE).write_bytes(state[:len(state) // 2])
    p["truncated_weights"] = w / "truncated.safetensors"
    p["truncated_weights"].write_bytes((p["release"] / "model.safetensors").read_bytes()[:5000])
    p["pickle"] = w / "weights.pt"
    torch.save({"x": torch.zeros(1)}, p["pickle"])
    p["pickle_named_safetensors"] = w / "pickle.safetensors"
    torch.save({"x": torch.zeros(1)}, p["pickle_named_safetensors"])
    p["bad_yaml"] = w / "bad.yaml"
    p["bad_yaml"].write_text("model: wn_resnet20\nlr: [0.1\n")
    p["empty_yaml"] = w / "empty.yaml"
    p["empty_yaml"].write_text("# nothing yet\n")
    p["a_folder"] = w / "a_folder.yaml"
    p["a_folder"].mkdir()
    p["fifo"] = w / "fifo.yaml"
    os.mkfifo(p["fifo"])
    p["dup_yaml"] = w / "dup.yaml"
    p["dup_yaml"].write_text("model: wn_resnet20\nlr: 0.1\nlr: 0.2\n")
    p["laughs_yaml"] = w / "laughs.yaml"
    p["laughs_yaml"].write_text(LAUGHS)
    p["recipe"] = REPO / "configs" / "wn_resnet20_c10_short.yaml"
    p["empty_test"] = _npz(w / "empty_test", n_test=0)
    rows = RunFolder(p["paused"]).read_state(tensors=False).history
    for name, meta in (("history_null", {"history": "null"}), ("epoch_text", {"epoch": "1.5"}),
                       ("config_list", {"config": "[1]"}),
                       ("history_no_loss", {"history": json.dumps([{k: v for k, v in r.items() if k != "train_loss"}
                                                                   for r in rows])}),
                       ("history_stack_0", {"history": json.dumps([dict(r, stack=0) for r in rows])})):
        p[name] = _edited_state(p["paused"], w / name, **meta)
    momentum = {k: v for k, v in load_file(p["paused"] / RunFolder.STATE).items() if k.startswith("momentum.")}
    p["other_arch"] = _edited_state(p["paused"], w / "other_arch", {
        **{f"model.{k}": v for k, v in create_model("wn_resnet32").state_dict().items()}, **momentum})
    for name, file, text in (("bad_summary", RunFolder.SUMMARY, '{"status": '),
                             ("bad_metrics", RunFolder.METRICS, '{"epoch": 1}\n[2]\n'),
                             ("bad_config", RunFolder.CONFIG, "model: wn_resnet20\nmodel: wn_resnet32\n"),
                             ("summary_typed", RunFolder.SUMMARY, '{"status": "finished", "epochs_done": 2, '
                                                                  '"test_acc": "x"}')):
        p[name] = shutil.copytree(w / "finished", w / name)
        (p[name] / file).write_text(text)
    for name, first in (("journal_5", "5"), ("journal_list", "[]"), ("journal_other", '{"cells": []}')):
        p[name] = w / name
        p[name].mkdir()
        (p[name] / "journal.jsonl").write_text(first + "\n")
    p["a_file"] = w / "a_file"
    p["a_file"].write_text("a user's file\n")
    return p


def _snapshot(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def _call(cli: str, argv: list[str]) -> int:
    try:
        return CLIS[cli].main(argv)
    except SystemExit as e:  # argparse's usage errors
        return e.code


CUDA = torch.cuda.is_available()
ROWS = [  # (class, cli, arguments ({name} is a path of the world, {tmp} a new folder), what the message says)
    ("models", "eval", "--model wn_resnet21 --data {data}", "unknown model 'wn_resnet21'. Did you mean"),
    ("models", "eval", "--model wn_resnet20.c11 --data {data}", "unknown tag 'c11' for wn_resnet20; it has wn_resnet20.c10, wn_resnet20.c100\n"),
    ("models", "sigprop", "--model wn_resnet21 --out {tmp}/x.png", "unknown model 'wn_resnet21'"),
    ("weights", "eval", "--checkpoint {truncated_weights} --model wn_resnet20 --data {data}", "truncated or corrupted"),
    ("weights", "eval", "--checkpoint {pickle} --model wn_resnet20 --data {data}", "wnzoo never unpickles weights"),
    ("weights", "eval", "--checkpoint {pickle_named_safetensors} --model wn_resnet20 --data {data}",
     "is a PyTorch pickle (torch.save), not a safetensors file, whatever its name"),
    ("weights", "eval", "--checkpoint {finished}/model.safetensors --model bn_resnet20 --data {data}",
     "load it into the architecture it was trained as"),
    ("weights", "eval", "--checkpoint {finished}/model.safetensors --model wn_resnet20.c100 --data {data}",
     "its classifier has 10 classes: pass num_classes=10"),
    ("weights", "eval", "--checkpoint {tmp}/nope.safetensors --model wn_resnet20 --data {data}",
     "does not exist; pass the path of a model.safetensors file"),
    ("weights", "eval", "--model wn_resnet56.c10 --data {data}", "(eval/cifar.py: --checkpoint FILE --model ARCH)"),
    ("data", "eval", "--model wn_resnet20.c10 --data {truncated_npz}", "is not a readable npz file"),
    ("data", "eval", "--model wn_resnet20.c10 --data {float_labels}", "labels must be integers"),
    ("data", "eval", "--model wn_resnet20.c10 --data {jpeg}", "image 0 is JPEG, not PNG"),
    ("data", "eval", "--model wn_resnet20.c10 --data {garbage}", "image 0 is not a readable PNG"),
    ("data", "train", "--set {run} data={data} val_split=true --out {tmp}/o", "holds out 5000 images"),
    ("data", "train", "--set {run} data={data} subset=1000 --out {tmp}/o", "subset=1000 exceeds the 128 training"),
    ("configs", "train", "-c {bad_yaml} --out {tmp}/o", "is not valid YAML"),
    ("configs", "train", "-c {empty_yaml} --out {tmp}/o", "holds no config keys; a recipe sets at least its model"),
    ("configs", "train", "-c {a_folder} --out {tmp}/o", "is a folder; pass a recipe YAML"),
    ("configs", "train", "-c {fifo} --out {tmp}/o", "is not a regular file; pass a recipe YAML"),
    ("configs", "train", "--set {run} data={data} model=WN_RESNET20 --out {tmp}/o", "Did you mean wn_resnet20"),
    ("configs", "train", "--set lr=[1 --out {tmp}/o", "the value is not valid YAML"),
    ("configs", "train", "--set {run} data={data} gamma=-5 --out {tmp}/o", "gamma must be in (0, 1]"),
    ("configs", "train", "--set {run} data={data} momentum=5 --out {tmp}/o", "momentum must be in [0, 1)"),
    ("configs", "train", "--set {run} data={data} cutout=100 --out {tmp}/o", "cutout must be in [0, 32]"),
    ("configs", "train", "--set {run} data={data} label_smoothing=2 --out {tmp}/o", "label_smoothing must be in"),
    ("configs", "train", "--set {run} data={data} --time-limit 0 --out {tmp}/o", "positive number of minutes"),
    ("configs", "train", "--set {run} data={data} --time-limit nan --out {tmp}/o", "positive number of minutes"),
    ("configs", "train", "--set {run} data={data} --time-limit -1 --out {tmp}/o", "positive number of minutes"),
    ("configs", "train", "--set {run} data={data} --time-limit abc --out {tmp}/o", "positive number of minutes"),
    ("configs", "train", "--set {run} data={data} --until nan --out {tmp}/o", "a time in seconds since 1970"),
    ("configs", "timebox", "{bad_yaml} --out {tmp}/job --time-limit 0", "positive number of minutes"),
    ("configs", "sigprop", "--batch 0 --out {tmp}/x.png", "--batch must be"),
    ("configs", "train", "--set {run} data={data} lr= --out {tmp}/o", "lr needs a value, e.g. lr=0.1"),
    ("configs", "train", "--set {run} data={data} model= --out {tmp}/o", "model needs a value"),
    ("configs", "train", "--set {run} data={data} epochs= --out {tmp}/o", "epochs needs a value"),
    ("configs", "train", "--set {run} data={data} milestones=[0.5,a] --out {tmp}/o", "milestones must be increasing"),
    ("configs", "train", "--set {run} data={data} 'model_args={{widths: [0, 32, 64]}}' --out {tmp}/o",
     "model_args widths must be three channel counts >= 1"),
    ("configs", "train", "--set {run} data={data} 'model_args={{blocks: abc}}' --out {tmp}/o",
     "model_args blocks must be an integer >= 1"),
    ("configs", "train", "--set {run} data={data} 'model_args={{global_pool: abc}}' --out {tmp}/o",
     "model_args global_pool must be one of"),
    ("configs", "train", "--set {run} data={data} 'model_args={{drop_path_rate: 5}}' --out {tmp}/o",
     "model_args drop_path_rate must be a number in [0, 1)"),
    ("configs", "train", "--set {run} data={data} 'model_args={{1: 2, x: 3}}' --out {tmp}/o", "are not arguments"),
    ("configs", "train", "--set {run} data={data} model_args= --out {tmp}/o", "model_args needs a value"),
    ("configs", "train", "--set {run} data={data} 'init={{a: 1}}' --out {tmp}/o", "init must be a text"),
    ("configs", "train", "--set {run} data={data} seed=100000000000000000000000 --out {tmp}/o", "seed must be in [0, "),
    ("configs", "train", "--set {run} data={data} seed=-1 --out {tmp}/o", "seed must be in [0, 4294967295]"),
    ("configs", "train", "--set {run} data={data} epochs=1" + "0" * 400 + " --out {tmp}/o", "below 2**63"),
    ("configs", "train", "--set {run} data={data} lr=1" + "0" * 400 + " --out {tmp}/o", "lr must be a number"),
    ("configs", "train", "-c {dup_yaml} --out {tmp}/o", "dup.yaml, line 3: key 'lr' appears twice; keep one"),
    ("configs", "train", "--set {run} data={data} 'model_args={{blocks: 1, blocks: 2}}' --out {tmp}/o",
     "key 'blocks' appears twice"),
    ("configs", "train", "-c {laughs_yaml} --out {tmp}/o", "laughs.yaml, line 2: an alias (*a) stands for a value"),
    ("configs", "train", "--set {run} data={data} 'notes=[&a [x], *a]' --out {tmp}/o", "an alias (*a)"),
    ("configs", "timebox", "{dup_yaml} --out {tmp}/job --time-limit 1", "key 'lr' appears twice"),
    ("configs", "timebox", "{bad_yaml} --out {tmp}/job --time-limit inf", "positive number of minutes"),
    ("configs", "timebox", "{recipe} --out {tmp}/job --time-limit 1 --grace nan", "--grace must be a number of"),
    ("configs", "timebox", "{recipe} --out {tmp}/job --time-limit 1 --grace -1", "--grace must be a number of"),
    ("configs", "timebox", "{recipe} --out {tmp}/job --time-limit 1 --set lr=", "lr needs a value"),
    ("configs", "lr_robustness", "--set 'model_args={{widths: [0, 32, 64]}}' --out {tmp}/o", "model_args widths must"),
    ("configs", "lr_robustness", "-c {dup_yaml} --out {tmp}/o", "key 'lr' appears twice"),
    ("faults", "train", "--set {run} data={data} --out {finished}", "pass --resume to continue it"),
    ("faults", "train", "--set {run} data={data} --out {no_state}", "is not empty (config.yaml, curves.png, "),
    ("faults", "train", "--set {run} data={data} --out {release}", "training never writes over files"),
    ("faults", "train", "--set {run} data={data} --out {a_file}", "a folder is needed here"),
    ("faults", "train", "--set {run} data={data} --resume --out {foreign_state}", "is not a wnzoo run state"),
    ("faults", "train", "--set {run} data={data} --resume --out {partial_state}", "is not a readable run state"),
    ("faults", "train", "--set {run} data={other_data} --resume --out {paused}", "is not the data this run trained on"),
    ("faults", "eval", "--model wn_resnet20.c10 --data {data} --json {a_file}/rows.json", "a file stands where"),
    ("faults", "sigprop", "--model wn_resnet20 --out {a_file}/x.png", "a file stands where a folder is needed"),
    ("faults", "timebox", "{bad_yaml} --out {tmp}/job --time-limit 1 --results {a_file}/r.md", "a file stands where"),
    ("faults", "timebox", "{bad_yaml} --out {tmp}/job --time-limit 1 --log {tmp}", "it is a folder; choose another path"),
    ("faults", "timebox", "{bad_yaml} --out {a_file} --time-limit 1", "a folder is needed here"),
    ("configs", "timebox", "{recipe} --out {tmp}/job --time-limit 1e308", "at most 525600 (a year)"),
    ("configs", "lr_robustness", "--out {tmp}/s --data {data} --shard ''", "--shard takes i/n with 0 <= i < n"),
    ("configs", "lr_robustness", "--out {tmp}/s --data {data} --set data={other_data}", "--data and --set data=..."),
    ("configs", "lr_robustness", "--out {tmp}/s --data {data} --set model=bn_resnet20", "is a BN one; pass a WN model"),
    ("faults", "publish", "{summary_typed} --repo-id wnzoo/wn_resnet20.c10", "(test_acc of the wrong type)"),
    ("configs", "sigprop", "--model wn_resnet20 --image-size 64 --out {tmp}/x.png", "--image-size in [8, 32]"),
    ("faults", "train", "--set {run} data={data} --resume --out {history_null}",
     "state.safetensors is a damaged run state (its history is None, not a list of per-epoch rows); restore a copy"),
    ("faults", "train", "--resume --out {history_null}", "is a damaged run state (its history is None"),
    ("faults", "train", "--set {run} data={data} --resume --out {epoch_text}",
     "(its epoch '1.5' is not a whole number)"),
    ("faults", "train", "--set {run} data={data} --resume --out {config_list}", "(its config is [1], not a mapping"),
    ("faults", "train", "--set {run} data={data} --resume --out {history_no_loss}",
     "(row 1 of its history lacks, or has a wrong value for, train_loss); restore a copy"),
    ("faults", "train", "--export {history_stack_0}", "(row 1 of its history lacks, or has a wrong value for, stack)"),
    ("faults", "train", "--set {run} data={data} --resume --out {other_arch}",
     "state.safetensors: its weights do not fit CifarResNet (36 unexpected, e.g. 'stages.0.3.conv1.bias')"),
    ("faults", "publish", "{bad_summary} --repo-id wnzoo/wn_resnet20.c10",
     ("summary.json is damaged (not JSON: 'Expecting value: line 1 column 12 (char 11)'); rebuild it from the run's "
      "state with: python train/train.py --export ")),
    ("faults", "publish", "{bad_metrics} --repo-id wnzoo/wn_resnet20.c10",
     "metrics.jsonl is damaged (line 2 is not a JSON row of an epoch's metrics); rebuild it"),
    ("faults", "publish", "{bad_config} --repo-id wnzoo/wn_resnet20.c10",
     "config.yaml is damaged (not the YAML a run writes: key 'model' appears twice at line 2, column 1); rebuild"),
    ("faults", "lr_robustness", "--out {journal_5}", "journal.jsonl, line 1, is not a sweep's settings"),
    ("faults", "lr_robustness", "--out {journal_list}", "journal.jsonl, line 1, is not a sweep's settings"),
    ("faults", "lr_robustness", "--out {journal_other}", "journal.jsonl, line 1, is not a sweep's settings"),
    ("weights", "eval", "--checkpoint {paused}/state.safetensors --model wn_resnet20 --data {data}",
     ("a run's training state (state.safetensors) is not weights; pass the run's model.safetensors, or write it "
      "with python train/train.py --export ")),
    ("data", "eval", "--model wn_resnet20.c10 --data {empty_test}", "test.npz holds no images; write the split again"),
    ("data", "train", "--set {run} data={empty_test} --out {tmp}/o", "test.npz holds no images"),
    ("environment", "train", "--set {run} data={data} device=mps --out {tmp}/o",
     "device='mps' is not valid; choose one of ['auto', 'cpu', 'cuda'] (here: auto, cpu"),
    ("environment", "eval", "--model wn_resnet20.c10 --data {data} --device meta",
     "device 'meta' is not available here"),
    ("environment", "eval", "--model wn_resnet20.c10 --data {data} --device mps", "device 'mps' is not available here"),
    ("publishing", "publish", "{finished} --repo-id 'bad org name!!/wn_resnet20.c10'", "is not valid on the Hub"),
    ("publishing", "publish", "{doctored} --repo-id wnzoo/wn_resnet20.c10", "does not match the run's state"),
    ("publishing", "publish", "{doctored_no_state} --repo-id wnzoo/wn_resnet20.c10", "does not match the run's summary"),
    ("publishing", "publish", "{paused} --repo-id wnzoo/wn_resnet20.c10", "holds only its training state"),
    ("publishing", "publish", "{finished} --repo-id wnzoo/wn_resnet20.c10", "is already published (top-1 86.52 %"),
] + ([("environment", "train", "--set {run} data={data} device=cuda --out {tmp}/o", "no usable CUDA device"),
      ("environment", "eval", "--model wn_resnet20.c10 --data {data} --device cuda", "is not available here")]
     if not CUDA else [])


@pytest.mark.parametrize("kind,cli,args,message", ROWS, ids=[f"{r[0]}-{r[1]}-{i}" for i, r in enumerate(ROWS)])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(kind, cli, args, message, world, tmp_path, capsys):
    import shlex

    root = next(iter(world.values())).parent
    before = _snapshot(root)
    paths = {k: shlex.quote(str(v)) for k, v in dict(world, tmp=tmp_path).items()}
    assert _call(cli, shlex.split(args.format(run=" ".join(RUN), **paths))) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "continue with" not in err, err
    assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err
    assert _snapshot(root) == before  # nothing a user made is changed, or added


def test_a_second_run_into_a_busy_folder_fails_at_once(world, tmp_path, capsys):
    out = tmp_path / "busy"
    with RunFolder(out).claim():
        assert _call("train", ["--set", *RUN, f"data={world['data']}", "--out", str(out)]) == 2
    assert "is being written by another run" in capsys.readouterr().err
    assert RunFolder(out).contents() == []


def test_a_full_disk_keeps_the_last_epoch_and_says_how_to_continue(world, tmp_path, capsys, monkeypatch):
    save = RunState.save

    def full_after_one_epoch(self, path):
        if self.epoch > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        save(self, path)

    monkeypatch.setattr(RunState, "save", full_after_one_epoch)
    out = tmp_path / "run"
    argv = ["--set", *RUN, f"data={world['data']}", "--out", str(out)]
    assert _call("train", argv) == 2
    err = capsys.readouterr().err
    assert f"error: {out / RunFolder.STATE}: No space left on device; free some space" in err
    assert f"the last finished epoch is saved in {out}; continue with: python " in err and err.rstrip().endswith(
        "--resume")
    assert RunFolder(out).epochs_done() == 1
    monkeypatch.setattr(RunState, "save", save)
    assert _call("train", argv + ["--resume"]) == 0 and RunFolder(out).epochs_done() == 2


def test_ctrl_c_exits_130_with_the_resume_command(world, tmp_path, capsys, monkeypatch):
    out = shutil.copytree(world["paused"], tmp_path / "paused")
    monkeypatch.setattr(train_cli, "train", _interrupted)
    assert _call("train", ["--set", *RUN, f"data={world['data']}", "--out", str(out), "--resume"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "continue with: python " in err and "Traceback" not in err
    monkeypatch.setattr(CLIS["eval"], "reproduction_table", _interrupted)
    assert _call("eval", ["--data", str(world["data"])]) == 130


def test_resuming_a_finished_run_rewrites_nothing(world, tmp_path, capsys):
    out = shutil.copytree(world["finished"], tmp_path / "finished")
    before = _snapshot(out)
    assert _call("train", ["--set", *RUN, f"data={world['data']}", "--out", str(out), "--resume"]) == 0
    assert "already finished its 2 epochs; nothing to train" in capsys.readouterr().out
    assert _snapshot(out) == before


def test_a_run_stopped_in_its_first_epoch_leaves_nothing_so_the_same_command_starts_again(world, tmp_path, capsys,
                                                                                         monkeypatch):
    from wnzoo.training import loop

    epoch = loop._train_epoch
    monkeypatch.setattr(loop, "_train_epoch", _interrupted)
    out = tmp_path / "run"
    argv = ["--set", *RUN, f"data={world['data']}", "--out", str(out)]
    assert _call("train", argv) == 130
    assert "no epoch had finished, so there is no checkpoint to continue from" in capsys.readouterr().err
    assert RunFolder(out).contents() == []  # no TensorBoard folder, no summary
    monkeypatch.setattr(loop, "_train_epoch", epoch)
    assert _call("train", argv) == 0


def test_a_read_only_place_is_named_before_any_work(world, tmp_path, capsys, monkeypatch):
    import tempfile

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(Path(dir) / "tmpXYZ"))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    for cli, argv in (("train", ["--set", *RUN, f"data={world['data']}", "--out", str(tmp_path / "o")]),
                      ("sigprop", ["--out", str(tmp_path / "x.png")]),
                      ("eval", ["--data", "/nonexistent", "--json", str(tmp_path / "r.json")])):
        assert _call(cli, argv) == 2
        assert f"error: {tmp_path}: Read-only file system; choose a writable place" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("env,message", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not an integer >= 1"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' is not an integer >= 1"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set, but not RANK, MASTER_ADDR, MASTER_PORT: it was not set by torchrun"),
    ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK='5' is not an integer in [0, 2)"),
    ({"WORLD_SIZE": "2", "RANK": "x", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK='x' is not an integer in [0, 2)"),
    ({"WORLD_SIZE": "1", "RANK": "1"}, "RANK='1' is not an integer in [0, 1)"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK='-1' is not an integer >= 0"),
])
def test_stray_torchrun_variables_are_named_with_the_fix(env, message):
    from wnzoo.training.config import ConfigError, world_from_env

    with pytest.raises(ConfigError, match="unset it, or launch with torchrun") as e:
        world_from_env(env)
    assert message in str(e.value)


def test_torchrun_variables_give_the_process_its_place():
    from wnzoo.training.config import world_from_env

    assert world_from_env({}) == (0, 1, 0) and world_from_env({"RANK": "3"}) == (0, 1, 0)  # no launch: RANK is not ours
    assert world_from_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) == (0, 1, 0)
    launch = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    assert world_from_env(launch) == (3, 4, 1) and world_from_env(launch).world == 4


def test_an_empty_value_is_null_where_null_means_the_default():
    cfg = load_config(None, ["init=", "data=", "recipe=", "notes="])
    assert (cfg.init, cfg.data, cfg.recipe, cfg.notes) == (None, None, None, "")


def test_every_model_argument_has_its_check():
    import inspect

    from wnzoo.models.resnet import CifarResNet
    from wnzoo.training import config

    set_elsewhere = {"norm", "num_classes", "init", "init_batch", "in_chans"}  # by the model name or the recipe
    assert set(inspect.signature(CifarResNet).parameters) - set_elsewhere == set(config._MODEL_ARG_CHECKS)
    every = ("model_args={blocks: 2, widths: [8, 16, 32], stem_width: 8, stem_norm: false, final_norm: true, "
             "global_pool: max, drop_rate: 0.1, drop_path_rate: 0.0}")
    cfg = load_config(None, [every])
    assert cfg.model_args["widths"] == [8, 16, 32]


def test_a_message_never_prints_a_value_whole():
    import time

    from wnzoo.training.config import ConfigError, TrainConfig, shown

    laughs = ["x"] * 9
    for _ in range(9):  # what an alias-expanding recipe builds: 9**10 strings, shared
        laughs = [laughs] * 9
    t0 = time.perf_counter()
    assert len(shown(laughs)) <= 80 and len(shown("x" * 10**6)) <= 80 and time.perf_counter() - t0 < 0.1
    with pytest.raises(ConfigError) as e:
        TrainConfig(notes=laughs)
    assert len(str(e.value)) < 200


@pytest.mark.parametrize("lines,message", [
    (["5"], "line 1, is not a sweep's settings"),
    (['{"settings": 5}'], "line 1, is not a sweep's settings"),
    (["{SETTINGS}", "5"], "line 2, is 5, not a row (a mapping of init, seed, survived, seconds)"),
    (["{SETTINGS}", "[]"], "line 2, is [], not a row"),
    (["{SETTINGS}", "{}"], "line 2, lacks init, seed, survived, seconds"),
    (["{SETTINGS}", '{"init": "proposed", "seed": 0, "seconds": 1}'], "line 2, lacks survived"),
    (["{SETTINGS}", "{", '{"init": "proposed", "seed": 0, "survived": true, "seconds": 1}'], "line 2, is not JSON"),
    (["{SETTINGS}", '{"init": "proposed", "seed": 0, "survived": true, "seconds": null}'],
     "line 2, has seconds=None, of the wrong type"),
    (["{SETTINGS}", '{"init": "proposed", "seed": 0, "survived": "yes", "seconds": 1}'],
     "line 2, has survived='yes', of the wrong type"),
])
def test_a_journal_of_the_wrong_shape_names_its_line(lines, message, tmp_path):
    from wnzoo._cli import UserError
    from wnzoo.robustness import Journal

    settings = {"cells": [{"init": "proposed", "seed": 0}]}
    (tmp_path / Journal.FILE).write_text("\n".join(lines).replace("{SETTINGS}", json.dumps({"settings": settings}))
                                         + "\n")
    with pytest.raises(UserError, match="restore it,? or choose another --out") as e:
        Journal(tmp_path, settings, keys=("init", "seed", "survived", "seconds"))
    assert f"{tmp_path / Journal.FILE}, {message}" in str(e.value)


def test_a_damaged_file_of_a_folder_without_state_is_restored_not_rebuilt(world, tmp_path):
    from wnzoo.training import StateError

    folder = RunFolder(shutil.copytree(world["no_state"], tmp_path / "run"))
    (folder / RunFolder.SUMMARY).write_bytes(b"\xff\xfe")
    with pytest.raises(StateError, match=r"summary.json is damaged \(it is not UTF-8 text\); restore it from a copy"):
        folder.read_summary()
    (folder / RunFolder.CONFIG).write_text("- a list\n")
    with pytest.raises(StateError, match=r"config.yaml is damaged \(it holds \['a list'\], not a mapping"):
        folder.read_config()
    assert not folder.diverged_before_saving()  # a damaged summary is a ValueError to those who peek at it
