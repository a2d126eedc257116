"""wnzoo.evaluation and ``python eval/cifar.py``: numbers, the paper's table, exit codes, reproducibility."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import wnzoo
import wnzoo.evaluation
import wnzoo.hub
import wnzoo.published
from wnzoo._datasets import TAG_DATASET
from wnzoo.data import DeviceData, load_split
from wnzoo.evaluation import (card_mismatches, evaluate, exit_code, format_paper_table, format_table, inference_model,
                              predict, problems, reproduction_table)
from wnzoo.paper import PAPER_TABLE1, paper_row
from wnzoo.published import PublishedVariant
from wnzoo.registry import bn_twin

REPO = Path(__file__).resolve().parent.parent
CLI = REPO / "eval" / "cifar.py"
RELEASE_CKPT = REPO / "hub" / "wn_resnet20.c10" / "model.safetensors"

_spec = importlib.util.spec_from_file_location("eval_cifar", CLI)
eval_cifar = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_cifar)


@pytest.fixture
def nothing_published(monkeypatch):
    monkeypatch.setattr(wnzoo.published, "variants", lambda: {})


def fake_record(variant: str, ckpt: Path | None, top1: float) -> PublishedVariant:
    arch, tag = variant.split(".")
    return PublishedVariant(repo_id=f"wnzoo/{variant}", revision="0" * 40,
                            sha256=wnzoo.hub.sha256_file(ckpt) if ckpt else "f" * 64, dataset=TAG_DATASET[tag],
                            metrics={"top1": top1, "top5": 99.0}, recipe="configs/x.yaml", params=1, arch=arch,
                            tag=tag, epochs=1, size=1, eval={"n": 10_000})


def publish_as(monkeypatch, ckpt: Path | None, top1: float) -> None:
    """Make ``ckpt`` (or, with None, some other file) the published wn_resnet20.c10 with a card of ``top1``."""
    records = {"wn_resnet20.c10": fake_record("wn_resnet20.c10", ckpt, top1)}
    monkeypatch.setattr(wnzoo.published, "variants", lambda: records)


def save_checkpoint(arch: str, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_file(wnzoo.create_model(arch).state_dict(), str(path))
    return path


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """20 real-looking test images (random pixels) in the npz layout, enough to exercise the CLI quickly."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    folder.mkdir()
    np.savez(folder / "test.npz", images=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 20))
    return folder


def plain_top1(arch_or_model, ckpt: Path | None, data_dir: Path) -> float:
    """Top-1 with the straightforward path (unfused model, float NCHW batches) for comparison."""
    model = wnzoo.create_model(arch_or_model)
    if ckpt:
        model.load_state_dict(wnzoo._io.load_weights_file(ckpt))
    x, y = load_split(data_dir, "cifar10", "test")
    data = DeviceData.from_arrays(x, y, "cifar10")
    return evaluate(model, data, batch_size=7)["top1"]


# ---- the paper's table as data -------------------------------------------------------------------

def test_paper_table1_rows():
    assert len(PAPER_TABLE1) == 17
    expected = {"wn_resnet56.c10": 92.80, "bn_resnet56.c10": 93.03, "wn_resnet110.c10": 93.31,
                "bn_resnet110.c10": 93.39, "wn_wrn40_10.c10": 95.25, "bn_wrn40_10.c10": 96.47,
                "wn_resnet164.c100": 74.69, "bn_resnet164.c100": 74.48}
    assert {r.variant: r.top1 for r in PAPER_TABLE1 if r.variant} == expected
    for row in PAPER_TABLE1:
        if row.variant:  # every mapped variant exists in the zoo, on the row's dataset
            arch, tag = row.variant.split(".")
            assert arch in wnzoo.list_models() and TAG_DATASET[tag] == row.dataset
    assert paper_row("wn_resnet110.c10").method == "WN w/ proposed init + warmup"
    assert paper_row("wn_resnet110.c10").std == 0.11
    assert paper_row("wn_resnet20.c10") is None
    assert [r.error for r in PAPER_TABLE1 if r.architecture == "ResNet-110"] == [9.33, 7.71, 6.69, 7.46, 6.61]


def test_bn_twin():
    assert bn_twin("wn_resnet56.c10") == "bn_resnet56.c10"
    assert bn_twin("wn_wrn40_10.c100") == "bn_wrn40_10.c100"
    assert bn_twin("bn_resnet56.c10") is None


def _row(**kw) -> dict:
    row = dict(model="wn_resnet56.c10", weights="published", published=True, params=855_770, dataset="cifar10",
               n=10_000, full_test_split=True, top1=92.9, top5=99.7, loss=0.3, card_top1=92.8, paper_top1=92.8, bn_twin_top1=None,
               delta_card=0.1, images_per_s=1234.5, device="cpu")
    return row | kw


def test_format_table():
    rows = [_row(), _row(model="wn_resnet164.c100", dataset="cifar100", top1=74.5, top5=93.25, card_top1=74.2,
                         paper_top1=74.69, bn_twin_top1=74.4, delta_card=None, weights="runs/x/model.safetensors",
                         published=False)]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["model", "params", "dataset", "top-1", "top-5", "card", "paper", "BN", "twin",
                                "Δ", "card", "img/s"]
    assert lines[2].split() == ["wn_resnet56.c10", "0.86M", "cifar10", "92.90", "—", "92.80", "92.80", "—", "+0.10",
                                "1234"]
    # a checkpoint is named by its file, beside the published variant's card, with no difference to it
    assert lines[3].split() == ["runs/x/model.safetensors", "0.86M", "cifar100", "74.50", "93.25", "74.20", "74.69",
                                "74.40", "—", "1234"]
    assert len(lines) == 4
    lines = format_table(rows[:1]).splitlines()  # no CIFAR-100 row: no top-5 column, which would say "—" only
    assert lines[0].split() == ["model", "params", "dataset", "top-1", "card", "paper", "BN", "twin", "Δ", "card",
                                "img/s"]
    assert lines[2].split() == ["wn_resnet56.c10", "0.86M", "cifar10", "92.90", "92.80", "92.80", "—", "+0.10", "1234"]


def test_format_paper_table_puts_ours_beside_its_row_and_marks_rows_without_weights(monkeypatch):
    records = {"wn_resnet56.c10": fake_record("wn_resnet56.c10", None, 92.5)}
    monkeypatch.setattr(wnzoo.published, "variants", lambda: records)
    text = format_paper_table([_row(top1=92.5)])
    lines = [line for line in text.splitlines() if "ResNet-56" in line]
    assert len(lines) == 4
    assert re.search(r"WN w/ proposed init \+ warmup\s+7\.20 ± 0\.12\s+7\.50\s+wn_resnet56\.c10$", lines[2])
    assert re.search(r"BN \(He et al\.\)\s+6\.97\s+—\s+bn_resnet56\.c10 \(not published\)$", lines[3])
    assert re.search(r"WN w/ datadep init\s+9\.19 ± 0\.24\s+—\s+—$", lines[0])
    assert text.count("7.50") == 1  # nowhere else


def test_card_mismatches():
    rows = [_row(top1=92.85, card_top1=92.80), _row(top1=92.86, card_top1=92.80), _row(top1=92.70, card_top1=92.80),
            _row(top1=50.0, card_top1=92.80, published=False), _row(top1=50.0, full_test_split=False),
            _row(card_top1=None)]
    assert [r["top1"] for r in card_mismatches(rows)] == [92.86, 92.70]


def test_exit_policy_and_problems():
    """1 beats 2 beats 0; every problem is one line on stderr."""
    ok, off, partial = _row(top1=92.80, card_top1=92.80), _row(top1=90.0, card_top1=92.80), _row(full_test_split=False)
    broken = dict(model="bn_resnet56.c10", error="no data")
    assert [exit_code(rows) for rows in ([ok], [ok, broken], [off, broken], [])] == [0, 2, 1, 0]
    assert problems([ok]) == []
    assert problems([broken, partial, off]) == [
        "error: bn_resnet56.c10: no data",
        "note: wn_resnet56.c10 was measured on 10000 images, not the whole test split; not compared with its card",
        "error: wn_resnet56.c10 measures 90.00 % top-1, its card says 92.80 % (tolerance 0.05); the weights or the "
        "evaluation changed"]


# ---- the eval path on real data ------------------------------------------------------------------

def test_random_init_scores_chance(cifar10_dir):
    x, y = load_split(cifar10_dir, "cifar10", "test")
    data = DeviceData.from_arrays(x[:2000], y[:2000], "cifar10", channels_last=True)
    top1 = evaluate(inference_model(wnzoo.create_model("wn_resnet20")), data, batch_size=1000)["top1"]
    assert 5.0 < top1 < 15.0


@pytest.mark.parametrize("arch", ["wn_resnet20", "bn_resnet20"])
def test_fast_path_predicts_like_the_plain_model(arch, cifar10_dir):
    """Fused + channels_last + big batches: same logits (allclose) and the same predictions."""
    x, y = load_split(cifar10_dir, "cifar10", "test")
    model = wnzoo.create_model(arch)
    if arch.startswith("bn"):  # non-trivial BN statistics, so folding them is really tested
        model.train()
        with torch.no_grad():
            model(DeviceData.from_arrays(x[:256], y[:256], "cifar10").images.float().div(255) - 0.5)
    model.eval()
    plain = predict(model, DeviceData.from_arrays(x[:300], y[:300], "cifar10"), batch_size=128)
    fast = predict(inference_model(model), DeviceData.from_arrays(x[:300], y[:300], "cifar10", channels_last=True),
                   batch_size=1000)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert torch.equal(fast.argmax(1), plain.argmax(1))


# ---- the CLI -------------------------------------------------------------------------------------

def test_cli_table_json_and_paper(tmp_path, tiny_data, capsys, nothing_published):
    ckpt = save_checkpoint("wn_resnet56", tmp_path / "model.safetensors")
    rc = eval_cifar.main(["--checkpoint", str(ckpt), "--model", "wn_resnet56", "--data", str(tiny_data),
                          "--batch-size", "8", "--paper", "--json", str(tmp_path / "out" / "rows.json")])
    out = capsys.readouterr().out
    assert rc == 0
    rows = json.loads((tmp_path / "out" / "rows.json").read_text())
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["dataset"], row["n"], row["published"]) == ("wn_resnet56.c10", "cifar10", 20, False)
    assert row["top1"] == round(plain_top1("wn_resnet56", ckpt, tiny_data), 2)
    assert row["params"] == sum(p.numel() for p in wnzoo.create_model("wn_resnet56").parameters())
    assert row["paper_top1"] == 92.80 and row["card_top1"] is None and row["images_per_s"] > 0
    assert row["weights"] == str(ckpt) and row["delta_card"] is None
    table_line = next(line for line in out.splitlines() if line.startswith(f"{ckpt} "))
    assert f"{row['top1']:.2f}" in table_line.split()
    paper_line = next(line for line in out.splitlines() if "ResNet-56" in line and "+ warmup" in line)
    assert paper_line.split()[-4:] == [f"{100 - row['top1']:.2f}", "wn_resnet56.c10", "(not", "published)"]


def test_cli_exit_status_follows_the_card(tmp_path, tiny_data, capsys, monkeypatch):
    ckpt = save_checkpoint("wn_resnet20", tmp_path / "model.safetensors")
    measured = round(plain_top1("wn_resnet20", ckpt, tiny_data), 2)
    published_weights = wnzoo.evaluation._build  # the release copy stands in for the verified download

    def build(name, checkpoint):
        return published_weights(name, checkpoint or ckpt)

    monkeypatch.setattr(wnzoo.evaluation, "_build", build)
    args = ["--model", "wn_resnet20.c10", "--data", str(tiny_data)]
    monkeypatch.setattr(wnzoo.evaluation, "TEST_SPLIT_SIZE", 20)  # let the 20 images stand for the whole split

    publish_as(monkeypatch, ckpt, measured)
    assert eval_cifar.main(args) == 0
    assert "+0.00" in capsys.readouterr().out

    publish_as(monkeypatch, ckpt, measured + 0.06)
    assert eval_cifar.main(args) == 1
    err = capsys.readouterr().err
    assert f"error: wn_resnet20.c10 measures {measured:.2f} % top-1, its card says {measured + 0.06:.2f} %" in err

    # the user's checkpoint is its own row, never held to the card, even when it is the published file
    for same_file in (True, False):
        publish_as(monkeypatch, ckpt if same_file else None, measured + 5)
        assert eval_cifar.main(args[:1] + ["wn_resnet20", "--checkpoint", str(ckpt)] + args[2:]) == 0
        captured = capsys.readouterr()
        line = next(ln for ln in captured.out.splitlines() if ln.startswith(str(ckpt)))
        assert line.split()[3:] == [f"{measured:.2f}", f"{measured + 5:.2f}", "—", "—", "—", line.split()[-1]]
        assert "wn_resnet20.c10" not in captured.out and "error" not in captured.err

    # a subset of the test split is not held to the card either, and the user is told
    publish_as(monkeypatch, ckpt, measured + 5)
    monkeypatch.setattr(wnzoo.evaluation, "TEST_SPLIT_SIZE", 10_000)
    assert eval_cifar.main(args) == 0
    assert "note: wn_resnet20.c10 was measured on 20 images, not the whole test split" in capsys.readouterr().err


def test_cli_reads_the_architecture_and_dataset_of_a_run_folder(tmp_path, tiny_data, capsys, nothing_published):
    """``--checkpoint`` of a training run needs no ``--model``: its config.yaml names the model and dataset."""
    run = tmp_path / "run"
    run.mkdir()
    for dataset, tag in (("cifar10", "c10"), ("cifar100", "c100")):
        save_file(wnzoo.create_model(f"wn_resnet20.{tag}").state_dict(), str(run / "model.safetensors"))
        (run / "config.yaml").write_text(f"model: wn_resnet20\ndataset: {dataset}\nepochs: 1\n")
        for args in (["--checkpoint", str(run / "model.safetensors")], ["--checkpoint", str(run), "--model",
                                                                         "wn_resnet20"]):
            assert eval_cifar.main(args + ["--data", str(tiny_data), "--json", str(tmp_path / "rows.json"),
                                           "--force"]) == 0, capsys.readouterr().err
            row = json.loads((tmp_path / "rows.json").read_text())[0]
            assert (row["model"], row["dataset"], row["published"]) == (f"wn_resnet20.{tag}", dataset, False)
    (run / "config.yaml").write_text("model: resnet50\ndataset: cifar10\n")
    capsys.readouterr()
    assert eval_cifar.main(["--checkpoint", str(run), "--data", str(tiny_data)]) == 2
    assert capsys.readouterr().err == (f"error: {run / 'config.yaml'} names model 'resnet50' on dataset 'cifar10', "
                                       f"not a zoo architecture on one of ['cifar10', 'cifar100']; pass --model ARCH\n")


def test_cli_nothing_published(capsys, nothing_published):
    assert eval_cifar.main(["--paper"]) == 0
    captured = capsys.readouterr()
    assert "no published variants yet" in captured.err
    assert "7.20 ± 0.12" in captured.out and "6.69 ± 0.11" in captured.out


@pytest.mark.parametrize("args, message", [
    (["--model", "wn_resnt20"], "error: unknown model 'wn_resnt20'. Did you mean wn_resnet20"),
    (["--checkpoint", "x.safetensors"], "error: weights file x.safetensors does not exist"),
    (["--checkpoint", "{ckpt}"], "error: {ckpt}: no --model, and no config.yaml of a training run beside it to name "
                                 "its architecture; pass --model ARCH (e.g. --model wn_resnet20)\n"),
    (["--checkpoint", "{ckpt}", "--model", "wn_resnet20", "bn_resnet20"],
     "error: a checkpoint needs exactly one architecture to load it into"),
    (["--model", "wn_resnet20"], "error: wn_resnet20: wn_resnet20.c10 has no published weights yet"),
    (["--model", "wn_resnet20", "--checkpoint", "missing.safetensors"],
     "error: wn_resnet20: pretrained file missing.safetensors does not exist"),
    (["--model", "wn_resnet20", "--checkpoint", "{ckpt}", "--data", "{tmp}/nowhere/to/be/found"],
     "error: wn_resnet20.c10: data path {tmp}/nowhere/to/be/found does not exist; pass a local folder (--data DIR"),
    (["--model", "wn_resnet20", "--checkpoint", "{ckpt}", "--device", "cuda:7"], "error: device 'cuda:7' is not available here"),
])
def test_cli_bad_input_is_a_message(args, message, tmp_path, capsys, nothing_published):
    ckpt = save_checkpoint("wn_resnet20", tmp_path / "model.safetensors")
    args = [a.format(ckpt=ckpt, tmp=tmp_path) for a in args]
    assert eval_cifar.main(args) == 2
    assert message.format(tmp=tmp_path, ckpt=ckpt) in capsys.readouterr().err


def test_missing_dataset_does_not_hide_the_other_rows(tmp_path, tiny_data, capsys, monkeypatch, nothing_published):
    """Offline with CIFAR-10 only (``--data`` a folder holding ``cifar10/``): the CIFAR-10 rows are
    measured, the CIFAR-100 one says why it is not. Weights: random, standing in for published ones."""
    root = tmp_path / "root"
    (root / "cifar10").mkdir(parents=True)
    (tiny_data / "test.npz").rename(root / "cifar10" / "test.npz")
    monkeypatch.setattr(wnzoo.evaluation, "_build", lambda name, ckpt: (wnzoo.create_model(name), name))
    assert eval_cifar.main(["--model", "wn_resnet20.c10", "wn_resnet20.c100", "--data", str(root)]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[2].split()[:4] == ["wn_resnet20.c10", "0.27M", "cifar10",
                                    f"{plain_top1('wn_resnet20', None, root / 'cifar10'):.2f}"]
    assert lines[3].split() == ["wn_resnet20.c100", "—", "—", "error"] + ["—"] * 5  # no top-5: no CIFAR-100 result
    assert f"error: wn_resnet20.c100: {root} holds no cifar100 data that wnzoo recognises" in captured.err


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLI), *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


# main() timed in a fresh process: huggingface_hub and datasets read HF_* when they are imported
_TIMED_MAIN = ("import importlib.util, sys, time\n"
               "spec = importlib.util.spec_from_file_location('eval_cifar', sys.argv[1])\n"
               "cli = importlib.util.module_from_spec(spec)\n"
               "spec.loader.exec_module(cli)\n"
               "start = time.perf_counter()\n"
               "code = cli.main(sys.argv[2:])\n"
               "print(code, round(time.perf_counter() - start, 2))\n")


@pytest.mark.parametrize("env, reason", [
    (dict(HF_HUB_OFFLINE="1"), "error: HF_HUB_OFFLINE is set and the datasets cache has no 'test' split of the HF "
                               "dataset 'uoft-cs/cifar10' ("),
    (dict(HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9"),  # nothing listens there
     "error: the HF dataset 'uoft-cs/cifar10' cannot be loaded: the Hub at http://127.0.0.1:9 cannot be reached "
     "(ConnectError: "),
], ids=["offline", "unreachable"])
def test_cli_hub_data_offline_fails_at_once(env, reason, tmp_path):
    """``python eval/cifar.py`` as a fresh clone runs it with no network: the published weights come from
    their release copies, and the default --data, the HF id, is one line that points at --data (and
    $WNZOO_DATA), in seconds, not after the retries of each download (72 s for the two variants)."""
    if not wnzoo.published.load():
        pytest.skip("nothing is published")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), **env)  # an empty cache
    env.pop("WNZOO_DATA", None)
    res = subprocess.run([sys.executable, "-c", _TIMED_MAIN, str(CLI)], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=env)
    code, seconds = res.stdout.split()
    assert code == "2" and res.stderr.startswith(reason) and len(res.stderr.splitlines()) == 1, res.stderr
    assert "pass a local folder (--data DIR; to train, --set data=DIR; or set WNZOO_DATA=DIR)" in res.stderr
    assert float(seconds) < 15, seconds  # models built from their release copies, the Hub asked once


def _quick_real_checkpoint(cifar10_dir: Path, path: Path) -> Path:
    """A wn_resnet20 whose classifier is fitted on 2,000 real training images (features frozen): a real,
    better-than-chance checkpoint in seconds, standing in until the release copy exists."""
    x, y = load_split(cifar10_dir, "cifar10", "train")
    model = wnzoo.create_model("wn_resnet20")
    body = inference_model(model, channels_last=True)
    body.fc = torch.nn.Identity()
    feats = predict(body, DeviceData.from_arrays(x[:2000], y[:2000], "cifar10", channels_last=True), 1000).clone()
    labels = torch.from_numpy(y[:2000])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64→10 layer: thread hand-offs would cost more than the maths on a busy CPU
    try:
        opt = torch.optim.Adam(model.fc.parameters(), lr=0.01)
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(model.fc(feats), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    save_file(model.state_dict(), str(path))
    return path


def test_real_checkpoint_reproduces_exactly(cifar10_dir, tmp_path, nothing_published):
    """The table's number for a checkpoint trained on real CIFAR-10 is the same on every run, in-process and
    through the CLI. Uses the release copy hub/wn_resnet20.c10/ once it exists (2,000 test images, for time)."""
    if RELEASE_CKPT.is_file():
        ckpt, floor = RELEASE_CKPT, 60.0
    else:
        ckpt, floor = _quick_real_checkpoint(cifar10_dir, tmp_path / "model.safetensors"), 20.0
    x, y = load_split(cifar10_dir, "cifar10", "test")
    data = tmp_path / "test2k"
    data.mkdir()
    np.savez(data / "test.npz", images=x[:2000], labels=y[:2000])

    first, second = (reproduction_table(["wn_resnet20"], ckpt, data, "cpu")[0] for _ in range(2))
    res = run_cli("--checkpoint", str(ckpt), "--model", "wn_resnet20", "--data", str(data), "--device", "cpu",
                  "--json", str(tmp_path / "rows.json"))
    assert res.returncode == 0, res.stderr
    third = json.loads((tmp_path / "rows.json").read_text())[0]
    keys = ("model", "n", "top1", "top5", "loss", "params")
    assert [first[k] for k in keys] == [second[k] for k in keys] == [third[k] for k in keys]
    assert first["n"] == 2000 and first["top1"] > floor
    assert f"{first['top1']:.2f}" in res.stdout
