"""The command lines' contract, row by row: every bad input (models, weights, data, configs, faults,
publishing) exits 2 with one line that names the fix, never a traceback, and leaves every file a
user made as it was. Interruptions exit 130 and say how to continue."""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from wnzoo._io import save_safetensors
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
    ("timebox", "train/timebox.py"))}}


def _npz(folder: Path, seed: int = 0, labels_dtype=np.int64, n: int = 128) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 labels=(np.arange(n) % 10).astype(labels_dtype))
    return folder


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
    p["bad_yaml"] = w / "bad.yaml"
    p["bad_yaml"].write_text("model: wn_resnet20\nlr: [0.1\n")
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
    ("data", "eval", "--model wn_resnet20.c10 --data {truncated_npz}", "is not a readable npz file"),
    ("data", "eval", "--model wn_resnet20.c10 --data {float_labels}", "labels must be integers"),
    ("data", "eval", "--model wn_resnet20.c10 --data {jpeg}", "image 0 is JPEG, not PNG"),
    ("data", "eval", "--model wn_resnet20.c10 --data {garbage}", "image 0 is not a readable PNG"),
    ("data", "train", "--set {run} data={data} val_split=true --out {tmp}/o", "holds out 5000 images"),
    ("data", "train", "--set {run} data={data} subset=1000 --out {tmp}/o", "subset=1000 exceeds the 128 training"),
    ("configs", "train", "-c {bad_yaml} --out {tmp}/o", "is not valid YAML"),
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
    ("configs", "sigprop", "--batch 0 --out {tmp}/x.png", "--batch must be at least 1"),
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
