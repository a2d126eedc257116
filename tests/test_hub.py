"""The Hub: publishing a run as a verified repo, and loading it online, offline, from a mirror and from
a fresh clone, all against a real Hub-compatible server (olah) on 127.0.0.1, never the internet.

A small fake run (a real wn_resnet20 with random weights, a 200-image random "test split") stands in for
a trained one, so every step runs in seconds; the published variants of the repository itself are
checked at the end (release copies, published records, MODEL_CARD.md).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file, save_file

import wnzoo
from wnzoo import hub, published
from wnzoo._io import save_safetensors
from wnzoo.data import DeviceData
from wnzoo.evaluation import evaluate
from wnzoo.model_card import MODEL_CARD, WNZOO_CITATION, variant_card, zoo_card
from wnzoo.registry import norm_of, twin_name
from wnzoo.publish import (REPO_ROOT, PublishError, Run, recipe_notes, commit_message, local_revision,
                           publish, recipe_for, refresh, verify_folder, write_derived)
from wnzoo.published import HubFolder, PublishedVariant, ReleaseDir
from wnzoo.training import RunState, load_config
from wnzoo.training.plots import plot_curves

RECIPE = REPO_ROOT / "configs" / "wn_resnet20_c10_short.yaml"
N_TEST = 200
NAME = "wn_resnet20.c10"


# fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mp_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory, mp_module) -> Path:
    """A CIFAR-10-shaped data folder whose test split has N_TEST random images (the full-split check is
    lowered to match)."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", N_TEST)):
        np.savez(d / f"{split}.npz", images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 labels=rng.integers(0, 10, n))
    mp_module.setattr(wnzoo.evaluation, "TEST_SPLIT_SIZE", N_TEST)
    return d


def _accuracy(model: torch.nn.Module, data: Path) -> float:
    x = np.load(data / "test.npz")
    return evaluate(model, DeviceData.from_arrays(x["images"], x["labels"], "cifar10"))["top1"]


def make_run(root: Path, data: Path, weights_seed: int = 0, logged_offset: float = 0.3, arch: str = "wn_resnet20",
             **overrides) -> Path:
    """A finished run folder as wnzoo/training/loop.py writes it, for ``arch`` on CIFAR-10 (its short recipe)."""
    recipe = RECIPE.with_name(f"{arch}_c10_short.yaml")
    run = root / recipe.stem
    run.mkdir(parents=True)
    torch.manual_seed(weights_seed)
    model = wnzoo.create_model(arch)
    cfg = load_config(recipe, dict(data=str(data), **overrides)).to_dict()
    save_safetensors(run / "model.safetensors", model.state_dict(), {"architecture": arch, "epoch": "15"})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    history = [dict(epoch=e, lr=0.1, train_loss=2.0, train_acc=10.0, test_acc=10.0, test_loss=2.3, epoch_time_s=1.0,
                    img_per_s=100.0) for e in range(1, cfg["epochs"] + 1)]
    # the loop evaluates unfused (bf16 on GPU), so its log may differ a little from the publish measurement
    history[-1]["test_acc"] = _accuracy(wnzoo.fuse(model), data) + logged_offset
    RunState(len(history), cfg, history, model.state_dict()).save(run / "state.safetensors")  # never published
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    plot_curves(history, run / "curves.png", f"{arch} on cifar10")
    (run / "summary.json").write_text(json.dumps(dict(
        model=arch, dataset="cifar10", eval_split="test", status="finished", epochs_done=cfg["epochs"],
        device="cpu", world_size=1, seconds_this_session=1200.0, test_acc=history[-1]["test_acc"], final=history[-1])))
    return run


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, fake_data):
    """A zoo published into temporary paths: the release dir, the published records and MODEL_CARD.md."""
    root = tmp_path_factory.mktemp("zoo")
    paths = dict(release_dir=root / "hub", published_json=root / "published.json", zoo_card_path=root / "MODEL_CARD.md")
    run = make_run(root / "runs", fake_data)
    rec, folder = publish(run, f"wnzoo/{NAME}", data=fake_data, **paths)
    return dict(root=root, run=run, rec=rec, folder=folder, **paths)


@pytest.fixture
def records(monkeypatch, tmp_path):
    """Point wnzoo at temporary published records and release dir; returns ``set(records, release_dir=None)``."""
    def set_records(recs: dict[str, PublishedVariant], release_dir: Path | None = None) -> None:
        path = tmp_path / f"published-{uuid.uuid4().hex[:6]}.json"
        published.save(recs, path)
        monkeypatch.setattr(published, "PUBLISHED_JSON", path)
        monkeypatch.setattr(hub, "RELEASE_DIR", release_dir or tmp_path / "no-release-copies")
        published.variants.cache_clear()

    yield set_records
    published.variants.cache_clear()


@pytest.fixture
def hub_env(olah_server, monkeypatch, tmp_path):
    """huggingface_hub pointed at olah (it reads HF_ENDPOINT at import time), with an empty cache."""
    import huggingface_hub.constants as c

    def set_endpoint(url: str) -> None:
        monkeypatch.setattr(c, "ENDPOINT", url)
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")

    set_endpoint(olah_server.url)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)

    def offline() -> None:
        """No network from here on: offline mode, and a dead endpoint to be sure."""
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
        set_endpoint("http://127.0.0.1:9")

    return dict(url=olah_server.url, cache=tmp_path / "hf-cache", offline=offline, set_endpoint=set_endpoint)


def new_repo_id() -> str:
    return f"t{uuid.uuid4().hex[:8]}/{NAME}"


def mirror(olah_server, rec: PublishedVariant, folder: Path) -> PublishedVariant:
    """Serve ``folder`` as a new repo on olah (a root commit, as the local pin is computed); returns its record."""
    rec = dataclasses.replace(rec, repo_id=new_repo_id())
    assert olah_server.add_commit(rec.repo_id, folder, commit_message(rec)) == rec.revision
    return rec


def other_weights(folder: Path, dest: Path, seed: int) -> tuple[Path, str]:
    """A copy of a Hub folder with other (valid) weights; returns it and their sha256."""
    shutil.copytree(folder, dest)
    torch.manual_seed(seed)
    save_file(wnzoo.create_model("wn_resnet20").state_dict(), dest / "model.safetensors")
    return dest, hub.sha256_file(dest / "model.safetensors")


def assert_weights(model: torch.nn.Module, file: Path) -> None:
    want = load_file(str(file))
    got = model.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


# loading through a real Hub server --------------------------------------------------------------------
def test_load_from_hub_then_offline_from_cache(zoo, olah_server, hub_env, records):
    rec = mirror(olah_server, zoo["rec"], zoo["folder"])  # the mirror serves exactly the pinned revision
    records({NAME: rec})  # no release copy: the weights can only come from the server
    model = wnzoo.create_model(NAME, pretrained=True)
    assert_weights(model, zoo["folder"] / "model.safetensors")
    snap = hub_env["cache"] / f"models--{rec.repo_id.replace('/', '--')}" / "snapshots" / rec.revision
    assert (snap / "model.safetensors").is_file()

    hub_env["offline"]()
    again = wnzoo.create_model(NAME, pretrained=True)
    assert_weights(again, zoo["folder"] / "model.safetensors")


def test_record_supersedes_the_repo_registered_at_import(zoo, olah_server, hub_env, records, monkeypatch):
    """timm's cfgs are built at import from the records then; the record read at load time wins."""
    rec = mirror(olah_server, zoo["rec"], zoo["folder"])
    records({NAME: rec})
    registered = timm.models._registry._model_pretrained_cfgs
    # as if imported when the published record named another repo
    monkeypatch.setitem(registered, NAME, dataclasses.replace(registered[NAME], hf_hub_id="wnzoo/moved-away"))
    model = wnzoo.create_model(NAME, pretrained=True)
    assert model.pretrained_cfg["hf_hub_id"] == "wnzoo/moved-away"
    assert_weights(model, zoo["folder"] / "model.safetensors")


def test_environment_variables_in_a_fresh_process(zoo, olah_server, tmp_path):
    """HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE as users set them: read by huggingface_hub at import."""
    rec = mirror(olah_server, zoo["rec"], zoo["folder"])
    code = ("import sys, wnzoo; from safetensors.torch import load_file; "
            f"m = wnzoo.create_model({NAME!r}, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=sys.argv[1])); "
            "w = load_file(sys.argv[2]); assert all((m.state_dict()[k] == v).all() for k, v in w.items())")
    args = [sys.executable, "-c", code, f"{rec.repo_id}@{rec.revision}", str(zoo["folder"] / "model.safetensors")]
    env = dict(os.environ, HF_ENDPOINT=olah_server.url, HF_HUB_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="0")
    subprocess.run(args, env=env, check=True, timeout=300)
    assert list((tmp_path / "cache").glob("models--*/snapshots/*/model.safetensors"))
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    subprocess.run(args, env=env, check=True, timeout=300)


def test_cache_dir_is_honoured(zoo, olah_server, hub_env, records, tmp_path):
    rec = mirror(olah_server, zoo["rec"], zoo["folder"])
    records({NAME: rec})
    wnzoo.create_model(NAME, pretrained=True, cache_dir=tmp_path / "mine")
    assert list((tmp_path / "mine").glob("models--*/snapshots/*/model.safetensors"))
    assert not hub_env["cache"].exists()


def test_timm_create_model_with_registry_name_and_hf_hub_prefix(zoo, olah_server, hub_env, records):
    rec = mirror(olah_server, zoo["rec"], zoo["folder"])
    records({NAME: rec})
    assert_weights(timm.create_model("wn_resnet20", pretrained=True), zoo["folder"] / "model.safetensors")
    # hf-hub: timm reads config.json from the repo, builds the arch it names, then wnzoo loads the weights
    model = timm.create_model(f"hf-hub:{rec.repo_id}", pretrained=True)
    assert_weights(model, zoo["folder"] / "model.safetensors")
    cfg = json.loads((zoo["folder"] / "config.json").read_text())
    assert model.pretrained_cfg["num_classes"] == 10 and model.num_classes == 10
    assert tuple(model.pretrained_cfg["mean"]) == tuple(cfg["pretrained_cfg"]["mean"])
    assert model.pretrained_cfg["hf_hub_id"] == rec.repo_id and model.pretrained_cfg["source"] == "hf-hub"


def test_revision_pinning(zoo, olah_server, hub_env, records, tmp_path):
    rec_a = mirror(olah_server, zoo["rec"], zoo["folder"])
    folder_b, sha_b = other_weights(zoo["folder"], tmp_path / "b", seed=1)
    rev_b = olah_server.add_commit(rec_a.repo_id, folder_b, "second version", tag="v2")  # main moves to B
    records({NAME: rec_a})
    assert_weights(wnzoo.create_model(NAME, pretrained=True), zoo["folder"] / "model.safetensors")
    records({NAME: dataclasses.replace(rec_a, revision=rev_b, sha256=sha_b)})
    assert_weights(wnzoo.create_model(NAME, pretrained=True), folder_b / "model.safetensors")
    # a named revision of a published repo is honoured and, being the release tag, checked against the pin
    records({NAME: dataclasses.replace(rec_a, revision=rev_b, sha256=sha_b, hub_tag="v2")})
    model = timm.create_model(f"hf-hub:{rec_a.repo_id}@v2", pretrained=True)
    assert_weights(model, folder_b / "model.safetensors")


def test_wrong_hash_on_the_server_is_an_error(zoo, olah_server, hub_env, records, tmp_path):
    rec = mirror(olah_server, zoo["rec"], zoo["folder"])
    folder_b, _ = other_weights(zoo["folder"], tmp_path / "b", seed=1)
    rev_b = olah_server.add_commit(rec.repo_id, folder_b, "not the published weights")
    records({NAME: dataclasses.replace(rec, revision=rev_b)}, release_dir=zoo["release_dir"])  # a good release copy exists
    with pytest.raises(hub.WeightsError, match=r"sha256 mismatch .*expected " + rec.sha256):
        wnzoo.create_model(NAME, pretrained=True)


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_damaged_cache_is_an_error_that_says_what_to_delete(zoo, olah_server, hub_env, records, damage):
    rec = mirror(olah_server, zoo["rec"], zoo["folder"])
    records({NAME: rec})
    wnzoo.create_model(NAME, pretrained=True)
    blob = next((hub_env["cache"] / f"models--{rec.repo_id.replace('/', '--')}" / "blobs").iterdir())
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:100] + b"\0" * (len(data) - 100))
    for go_offline in (False, True):
        if go_offline:
            hub_env["offline"]()
        with pytest.raises(hub.WeightsError, match="sha256 mismatch") as e:
            wnzoo.create_model(NAME, pretrained=True)
        assert f"Delete the cached file {blob.resolve()}" in str(e.value)


def test_truncated_local_file_is_an_error(zoo, tmp_path):
    bad = tmp_path / "model.safetensors"
    data = (zoo["folder"] / "model.safetensors").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(hub.WeightsError, match="truncated or corrupted"):
        wnzoo.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(bad)))


def test_missing_repo_and_missing_file_are_clear_errors(zoo, olah_server, hub_env, records, tmp_path):
    rec = dataclasses.replace(zoo["rec"], repo_id=new_repo_id())  # never served
    records({NAME: rec})
    with pytest.raises(hub.WeightsError) as e:
        wnzoo.create_model(NAME, pretrained=True)
    msg = str(e.value)
    # olah answers a missing repo at a commit sha with EntryNotFound, the Hub with RepositoryNotFound
    assert f"could not get weights for {NAME} from {rec.repo_id}" in msg and "NotFoundError" in msg
    assert "release copy:" in msg and "not found" in msg and "HF_ENDPOINT" in msg

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copyfile(zoo["folder"] / "config.json", no_weights / "config.json")
    rev = olah_server.add_commit(rec.repo_id, no_weights, "config only")
    records({NAME: dataclasses.replace(rec, revision=rev)})
    with pytest.raises(hub.WeightsError, match=r"(EntryNotFound|RepositoryNotFound)Error"):
        wnzoo.create_model(NAME, pretrained=True)


def test_release_copy_when_the_hub_is_unreachable(zoo, hub_env, records):
    records({NAME: zoo["rec"]}, release_dir=zoo["release_dir"])
    hub_env["offline"]()  # empty cache, no network: a fresh clone on a plane
    assert_weights(wnzoo.create_model(NAME, pretrained=True), zoo["folder"] / "model.safetensors")
    (zoo["release_dir"] / NAME / "model.safetensors").rename(zoo["root"] / "moved.safetensors")
    try:
        with pytest.raises(hub.WeightsError, match="release copy: .* not found"):
            wnzoo.create_model(NAME, pretrained=True)
    finally:
        (zoo["root"] / "moved.safetensors").rename(zoo["release_dir"] / NAME / "model.safetensors")


def test_other_repo_is_loaded_unpinned(zoo, olah_server, hub_env, records, tmp_path):
    """A fork named by hf_hub_id (or hf-hub:) is the user's choice: read at main, no published hash applies."""
    folder_b, _ = other_weights(zoo["folder"], tmp_path / "b", seed=2)
    fork = new_repo_id()
    olah_server.add_commit(fork, folder_b, "fork")
    records({NAME: zoo["rec"]})
    model = wnzoo.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=fork))
    assert_weights(model, folder_b / "model.safetensors")


def test_num_classes_drops_the_classifier(zoo):
    model = wnzoo.create_model(NAME, pretrained=True, num_classes=7, pretrained_cfg_overlay=dict(file=str(zoo["folder"])))
    want = load_file(str(zoo["folder"] / "model.safetensors"))
    assert model.fc.out_features == 7
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))


def test_pickles_and_unpublished_variants_are_refused(zoo, records, tmp_path):
    pt = tmp_path / "model.pt"
    torch.save(load_file(str(zoo["folder"] / "model.safetensors")), pt)
    with pytest.raises(hub.WeightsError, match="never unpickles"):
        wnzoo.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(pt)))
    records({})
    with pytest.raises(hub.WeightsError, match="no published weights yet"):
        wnzoo.create_model("wn_resnet32.c100", pretrained=True)


def test_local_dir_prefix_loads_the_hub_folder(zoo):
    model = timm.create_model(f"local-dir:{zoo['folder']}", pretrained=True)
    assert_weights(model, zoo["folder"] / "model.safetensors")


# publishing -------------------------------------------------------------------------------------------
def test_published_folder_is_complete_and_consistent(zoo):
    folder, rec = zoo["folder"], zoo["rec"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(HubFolder.FILES)  # no state, nothing else
    verify_folder(folder, rec)
    cfg = json.loads((folder / "config.json").read_text())
    assert (cfg["architecture"], cfg["num_classes"], cfg["num_features"]) == ("wn_resnet20", 10, 64)
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [3, 32, 32] and pc["crop_pct"] == 1.0 and pc["interpolation"] == "bilinear"
    assert (pc["classifier"], pc["first_conv"], pc["tag"]) == ("fc", "stem", "c10")
    assert "hf_hub_id" not in pc and "file" not in pc
    assert cfg["metrics"] == rec.metrics and cfg["recipe"] == "configs/wn_resnet20_c10_short.yaml"
    assert yaml.safe_load((folder / "recipe.yaml").read_text()) == yaml.safe_load((zoo["run"] / "config.yaml").read_text())
    # the weights are the run's, with the model's own keys
    assert_weights(wnzoo.create_model("wn_resnet20", pretrained=True, pretrained_cfg_overlay=dict(
        file=str(zoo["run"] / "model.safetensors"))), folder / "model.safetensors")
    assert set(rec.to_dict()) >= {"repo_id", "revision", "sha256", "dataset", "metrics", "recipe", "params"}
    assert re.fullmatch(r"[0-9a-f]{40}", rec.revision) and rec.params == 272_474 and not rec.pushed


def test_card_states_the_measured_number_and_how_to_reproduce(zoo, fake_data):
    rec, card = zoo["rec"], ModelCard.load(zoo["folder"] / "README.md")
    epochs, notes = load_config(RECIPE).epochs, recipe_notes(RECIPE)
    measured = round(_accuracy(wnzoo.fuse(wnzoo.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(
        file=str(zoo["folder"])))), fake_data), 2)
    logged = Run.read(zoo["run"]).logged_test_acc()
    assert rec.metrics["top1"] == measured != round(logged, 2)
    res = card.data.eval_results[0]
    assert (res.metric_type, res.metric_value, res.dataset_type, res.dataset_split) == (
        "accuracy", measured, "uoft-cs/cifar10", "test")
    assert (card.data.license, card.data.library_name) == ("mit", "timm") and "timm" in card.data.tags
    text = card.text
    assert f"**Top-1 accuracy: {measured:.2f} %**" in text and f"{logged:.2f}" not in text
    for needle in ("python train/train.py -c configs/wn_resnet20_c10_short.yaml", "python eval/cifar.py --model "
                   + NAME, 'timm.create_model("hf-hub:wnzoo/wn_resnet20.c10", pretrained=True)', "torch.hub.load(",
                   'wnzoo.create_model("wn_resnet20.c10", pretrained=True)', "arpit2019initialize", "@software{wnzoo",
                   "## Intended use", "## Limitations", "## Training", "## Evaluation protocol",
                   f"> {notes.splitlines()[0]}", "no row for resnet20 on CIFAR-10", f"only {epochs} epochs",
                   "BN twin `bn_resnet20.c10` | not published yet", "| mixed precision | none (fp32) |",
                   "Trained on cpu, 0 minutes of training epochs."):
        assert needle in text, needle
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert all((zoo["folder"] / ln).exists() for ln in links if "://" not in ln), links


def test_release_copy_records_and_zoo_card(zoo):
    rec = zoo["rec"]
    assert published.load(zoo["published_json"]) == {NAME: rec}
    release = zoo["release_dir"] / NAME
    assert sorted(p.name for p in release.iterdir()) == sorted(HubFolder.FILES)
    verify_folder(release, rec)
    # the pin of an unpushed variant is the deterministic commit of its release copy: recomputable by anyone
    assert local_revision(release, commit_message(rec)) == rec.revision
    assert zoo["zoo_card_path"].read_text() == zoo_card({NAME: rec})
    assert f"| `{NAME}` | CIFAR-10 | 0.27 M | 15 | **{rec.metrics['top1']:.2f}** |" in zoo["zoo_card_path"].read_text()


def twin_line(rec: PublishedVariant, twin: PublishedVariant | None) -> str:
    """The row of ``rec``'s card that names its twin, as the records say it must read."""
    name = twin_name(rec.name)
    return (f"| {norm_of(name).upper()} twin `{name}` | " +
            (f"{twin.top1:.2f} | wnzoo, {twin.epochs} epochs |" if twin else "not published yet | |"))


def test_publishing_a_twin_regenerates_the_other_twins_card(zoo, fake_data, tmp_path):
    """The WN card names its BN twin's accuracy: publishing the twin rewrites it and re-pins the WN copy,
    in the same transaction; the WN weights and numbers stay as they were."""
    root = shutil.copytree(zoo["root"], tmp_path / "zoo", ignore=shutil.ignore_patterns("runs"))
    paths = dict(release_dir=root / "hub", published_json=root / "published.json", zoo_card_path=root / "MODEL_CARD.md")
    wn_before = published.load(paths["published_json"])[NAME]
    assert twin_line(wn_before, None) in (paths["release_dir"] / NAME / "README.md").read_text()
    bn, _ = publish(make_run(tmp_path / "runs", fake_data, arch="bn_resnet20"), data=fake_data, **paths)
    records = published.load(paths["published_json"])
    wn = records[NAME]
    assert records == {NAME: wn, bn.name: bn} and bn.name == twin_name(NAME)
    assert wn.revision != wn_before.revision and wn == dataclasses.replace(wn_before, revision=wn.revision)
    for rec, twin in ((wn, bn), (bn, wn)):
        release = paths["release_dir"] / rec.name
        verify_folder(release, rec)
        assert local_revision(release, commit_message(rec)) == rec.revision
        assert twin_line(rec, twin) in (release / "README.md").read_text()
    assert sorted(p.name for p in paths["release_dir"].iterdir()) == sorted([NAME, bn.name, ReleaseDir.LOCK])
    assert paths["zoo_card_path"].read_text() == zoo_card(records)
    assert refresh(NAME, **paths) == wn  # the copy is what the code writes: nothing to regenerate


def test_a_folder_published_before_config_json_said_where_it_trained_keeps_what_its_card_said(zoo, tmp_path):
    folder = shutil.copytree(zoo["folder"], tmp_path / NAME)
    config = json.loads((folder / "config.json").read_text())
    assert config.pop("trained_on") == {"hardware": ["cpu"], "world_size": 1}  # from the run's summary
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    card = (folder / "README.md").read_text()
    write_derived(folder, zoo["rec"], None)
    assert json.loads((folder / "config.json").read_text())["trained_on"] == {"hardware": ["cpu"], "world_size": 1}
    assert (folder / "README.md").read_text() == card and "Trained on cpu, 0 minutes of training epochs." in card


def test_dry_run_builds_and_verifies_only(zoo, fake_data, tmp_path):
    paths = dict(release_dir=tmp_path / "hub", published_json=tmp_path / "p.json", zoo_card_path=tmp_path / "M.md")
    rec, folder = publish(zoo["run"], f"wnzoo/{NAME}", data=fake_data, dry_run=True, out=tmp_path / "out", **paths)
    assert folder == tmp_path / "out" and rec.revision is None and rec.sha256 == zoo["rec"].sha256
    verify_folder(folder, rec)
    assert not any(p.exists() for p in paths.values())
    # the same run gives byte-identical files: publishing is reproducible
    assert all((folder / f).read_bytes() == (zoo["folder"] / f).read_bytes() for f in HubFolder.FILES)


def test_publish_refuses_what_it_cannot_stand_behind(zoo, fake_data, tmp_path):
    paths = dict(release_dir=tmp_path / "hub", published_json=tmp_path / "p.json", zoo_card_path=tmp_path / "M.md")

    def attempt(run: Path, repo_id: str = f"wnzoo/{NAME}", **kw):
        return publish(run, repo_id, data=fake_data, **{**paths, **kw})

    for repo_id, why in ((f"wnzoo/{NAME.replace('c10', 'c100')}", "pick the matching --repo-id"),
                         ("wnzoo/wn_resnet21.c10", "must be '<org>/<arch>.<tag>'"), ("wnzoo/wn_resnet20.c7", "tag")):
        with pytest.raises(PublishError, match=re.escape(why)):
            attempt(zoo["run"], repo_id)

    def variant(name: str) -> Path:
        run = tmp_path / name / "wn_resnet20_c10_short"
        shutil.copytree(zoo["run"], run)
        return run

    run = variant("running")
    (run / "summary.json").write_text(json.dumps({"status": "paused"}))
    with pytest.raises(PublishError, match="status 'paused', not 'finished'"):
        attempt(run)
    run = variant("prefixed")
    save_file({f"module.{k}": v for k, v in load_file(str(run / "model.safetensors")).items()}, run / "model.safetensors")
    with pytest.raises(PublishError, match="'module.' or '_orig_mod.' prefix"):
        attempt(run)
    run = variant("nan")
    state = load_file(str(run / "model.safetensors"))
    state["fc.weight"][0, 0] = float("nan")
    save_file(state, run / "model.safetensors")
    with pytest.raises(PublishError, match="non-finite"):
        attempt(run)
    run = variant("log")  # the log says something the weights do not reproduce
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps(dict(summary, test_acc=summary["test_acc"] + 5)))
    with pytest.raises(PublishError, match="but the run logged"):
        attempt(run)
    with pytest.raises(PublishError, match="official cifar10 test split"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(wnzoo.evaluation, "TEST_SPLIT_SIZE", 10_000)
            attempt(zoo["run"])
    with pytest.raises(PublishError, match="no recipe"):
        attempt(zoo["run"], recipe="configs/nope.yaml")
    with pytest.raises(PublishError, match="not the registered architecture"):
        attempt(make_run(tmp_path / "modified", fake_data, model_args={"drop_rate": 0.1}))
    assert not any(p.exists() for p in paths.values())


def test_recipe_overrides_become_set_flags(fake_data, tmp_path):
    run = Run.read(make_run(tmp_path, fake_data, seed=3, milestones=[0.3, 0.6]))
    rel, overrides = recipe_for(run)
    assert rel == "configs/wn_resnet20_c10_short.yaml"
    assert overrides == ["'milestones=[0.3, 0.6]'", "seed=3"]  # shell-quoted where needed
    assert load_config(RECIPE, [o.strip("'") for o in overrides]).to_dict() | {"data": run.config["data"]} == run.config


def test_push_then_load_end_to_end(zoo, fake_data, olah_server, hub_env, records, monkeypatch, tmp_path, caplog):
    """publish --push through HfApi to a write endpoint in front of olah, then load it back through olah."""
    from hub_write_server import HubWriteServer

    write = HubWriteServer(olah_server.mirrors, olah_server.url).start()
    try:
        monkeypatch.setenv("HF_TOKEN", write.token)
        repo_id = new_repo_id()
        paths = dict(release_dir=tmp_path / "hub", published_json=tmp_path / "published.json",
                     zoo_card_path=tmp_path / "MODEL_CARD.md")
        rec1, _ = publish(zoo["run"], repo_id, data=fake_data, push=True, endpoint=write.url, **paths)
        repo = olah_server.repo_dir(repo_id)
        assert rec1.pushed and rec1.hub_tag == "v1"
        assert rec1.revision == write.git(repo, "rev-parse", "HEAD") == write.git(repo, "rev-parse", "v1^{commit}")
        assert [r for r, _ in write.calls] == ["create", "validate", "preupload", "commit", "tag"]
        assert f"[{repo_id}](https://huggingface.co/{repo_id})" in paths["zoo_card_path"].read_text()

        run2 = make_run(tmp_path / "second", fake_data, weights_seed=5)
        logged = Run.read(run2).logged_test_acc()
        with pytest.raises(PublishError, match=rf"already published \(top-1 {rec1.top1:.2f} % after 15 epochs\); "
                                               rf"this run logged {logged:.2f} % after 15 epochs. Pass --replace"):
            publish(run2, repo_id, data=fake_data, push=True, endpoint=write.url, **paths)
        assert published.load(paths["published_json"])[NAME] == rec1 and len(write.calls) == 5  # nothing touched
        rec2, _ = publish(run2, repo_id, data=fake_data, push=True, endpoint=write.url, replace=True, **paths)
        assert rec2.hub_tag == "v2" and rec2.revision != rec1.revision and rec2.sha256 != rec1.sha256
        assert published.load(paths["published_json"])[NAME] == rec2

        records(published.load(paths["published_json"]))
        assert_weights(wnzoo.create_model(NAME, pretrained=True), paths["release_dir"] / NAME / "model.safetensors")
        records({NAME: rec1})  # the first release stays loadable at its pinned revision
        assert_weights(wnzoo.create_model(NAME, pretrained=True), zoo["folder"] / "model.safetensors")

        # the twin: the card of the variant on the Hub changes only with a push, which refresh makes
        bn_repo = f"{repo_id.split('/')[0]}/{twin_name(NAME)}"
        with caplog.at_level(logging.WARNING, logger="wnzoo.publish"):
            bn, _ = publish(make_run(tmp_path / "bn", fake_data, arch="bn_resnet20"), bn_repo, data=fake_data,
                            push=True, endpoint=write.url, **paths)
        assert f"refresh {NAME} --push" in caplog.text and published.load(paths["published_json"])[NAME] == rec2
        with pytest.raises(PublishError, match=f"{NAME} is on the Hub \\(v2\\), so its card changes only with a "
                                               f"new Hub commit: add --push"):
            refresh(NAME, **paths)
        rec3 = refresh(NAME, push=True, endpoint=write.url, **paths)
        assert (rec3.hub_tag, rec3.sha256) == ("v3", rec2.sha256) and rec3.revision == write.git(repo, "rev-parse", "v3^{commit}")
        assert published.load(paths["published_json"]) == {NAME: rec3, bn.name: bn}
        assert twin_line(rec3, bn) in (paths["release_dir"] / NAME / "README.md").read_text()
        assert refresh(NAME, push=True, endpoint=write.url, **paths) == rec3  # nothing changed: no commit
    finally:
        write.stop()


def test_push_needs_a_token(zoo, fake_data, olah_server, monkeypatch, tmp_path):
    from hub_write_server import HubWriteServer

    write = HubWriteServer(olah_server.mirrors, olah_server.url).start()
    try:
        monkeypatch.setenv("HF_TOKEN", "wrong")
        paths = dict(release_dir=tmp_path / "hub", published_json=tmp_path / "p.json", zoo_card_path=tmp_path / "M.md")
        with pytest.raises(PublishError, match="(?s)401 Unauthorized.*A write token is needed"):
            publish(zoo["run"], new_repo_id(), data=fake_data, push=True, endpoint=write.url, **paths)
        assert not any(p.exists() for p in paths.values())  # nothing recorded after a failed push
    finally:
        write.stop()


def test_cli_dry_run_and_errors(zoo, fake_data, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("publish_cli", REPO_ROOT / "hub" / "publish.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "out"
    assert cli.main([str(zoo["run"]), "--repo-id", f"wnzoo/{NAME}", "--data", str(fake_data), "--dry-run",
                     "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["sha256"] == zoo["rec"].sha256
    assert "built and verified (dry run)" in capsys.readouterr().out
    assert cli.main([str(tmp_path / "nope"), "--repo-id", f"wnzoo/{NAME}"]) == 2
    assert "is not a finished run folder" in capsys.readouterr().err
    assert cli.main(["--refresh", "wn_resnet1202.c10"]) == 2  # nothing written: it is not published
    assert capsys.readouterr().err.startswith("error: wn_resnet1202.c10 is not published (published: ")
    with pytest.raises(SystemExit) as e:
        cli.main(["--refresh", NAME, "--data", str(fake_data)])
    assert e.value.code == 2 and "it takes --push only" in capsys.readouterr().err


# model cards ------------------------------------------------------------------------------------------
def _record(name: str, top1: float, pushed: bool = False) -> PublishedVariant:
    arch, tag = name.split(".")
    return PublishedVariant(repo_id=f"wnzoo/{name}", revision="0" * 40, sha256="1" * 64, dataset="cifar10",
                metrics=dict(top1=top1, top5=99.0), recipe="configs/wn_resnet20_c10_short.yaml", params=855_770,
                arch=arch, tag=tag, epochs=200, size=3_500_000, eval=dict(n=10_000), pushed=pushed, hub_tag=None)


def test_zoo_card_compares_with_paper_and_twin():
    recs = {"wn_resnet56.c10": _record("wn_resnet56.c10", 92.61, pushed=True),
            "bn_resnet56.c10": _record("bn_resnet56.c10", 93.12)}
    text = zoo_card(recs)
    assert ("| `wn_resnet56.c10` | CIFAR-10 | 0.86 M | 200 | **92.61** | 92.80 ± 0.12 | bn_resnet56.c10: 93.12 "
            "| [configs/wn_resnet20_c10_short.yaml](configs/wn_resnet20_c10_short.yaml) "
            "| [wnzoo/wn_resnet56.c10](https://huggingface.co/wnzoo/wn_resnet56.c10) |") in text
    assert "| `bn_resnet56.c10` | CIFAR-10 | 0.86 M | 200 | **93.12** | 93.03 | wn_resnet56.c10: 92.61" in text
    assert "[release copy](hub/bn_resnet56.c10/) (not on the Hub yet)" in text
    assert "No variant is published yet" in zoo_card({})
    text = zoo_card({"wn_wrn40_10.c10": _record("wn_wrn40_10.c10", 95.0), "bn_resnet164.c100": dataclasses.replace(
        _record("bn_resnet164.c100", 74.0), dataset="cifar100")})
    assert "| **95.00** | 95.25 ± 0.08 |" in text and "| **74.00** | 74.48 ± 0.17 |" in text
    assert twin_name("wn_wrn40_10.c10") == "bn_wrn40_10.c10" and twin_name("bn_resnet20.c100") == "wn_resnet20.c100"


def test_variant_card_lists_the_files_it_has():
    cfg = load_config(RECIPE).to_dict()
    card = variant_card(_record("wn_resnet56.c10", 92.61), train_cfg=cfg, trained={}, history=[], reproduce="x",
                        recipe_notes="", files=["recipe.yaml"], twin=None)
    assert "Files: [`recipe.yaml`](recipe.yaml) (the resolved training config).\n" in card.text
    assert "one line per epoch" not in card.text and "no row for resnet56" not in card.text


def test_a_fork_with_its_own_tag_is_the_callers_repo():
    """A tag the zoo never registered (a fork's config.json) names the caller's repo; it is no error."""
    assert hub._requested_hub_id("wn_resnet20.ft", {"hf_hub_id": "someone/fork"}) == "someone/fork"
    assert hub._requested_hub_id("wn_resnet20.c10", {"hf_hub_id": "someone/fork"}) == "someone/fork"


def test_variant_card_shows_paper_and_twin_rows():
    rec = _record("wn_resnet56.c10", 92.61)
    cfg = load_config(RECIPE).to_dict()
    card = variant_card(rec, train_cfg=dict(cfg, epochs=200), trained={}, history=[], reproduce="python train/train.py -c X",
                        recipe_notes="", files=[], twin=_record("bn_resnet56.c10", 93.12))
    text = card.text
    assert "| paper, this recipe: WN w/ proposed init + warmup | 92.80 ± 0.12 |" in text
    assert "| paper, BN twin: BN (He et al.) | 93.03 |" in text and "| BN twin `bn_resnet56.c10` | 93.12 |" in text
    assert "only 200 epochs" not in text and "no row for" not in text and "curves.png" not in text


# the repository's own published variants (a fresh clone) ----------------------------------------------
def test_model_card_is_in_sync_with_the_records():
    assert MODEL_CARD.read_text() == zoo_card(published.load()), \
        "MODEL_CARD.md is stale: regenerate it with python hub/publish.py --model-card"
    links = re.findall(r"\]\(([^)#]+)\)", MODEL_CARD.read_text())
    assert all((REPO_ROOT / ln).exists() for ln in links if "://" not in ln), links


def test_published_records_schema():
    records = published.load()
    assert records == published.variants()
    for name, rec in records.items():
        assert name == f"{rec.arch}.{rec.tag}" and rec.repo_id.endswith("/" + name)
        assert re.fullmatch(r"[0-9a-f]{40}", rec.revision) and re.fullmatch(r"[0-9a-f]{64}", rec.sha256)
        assert set(rec.metrics) == {"top1", "top5"} and 0 < rec.metrics["top1"] <= 100
        assert (REPO_ROOT / rec.recipe).is_file() and isinstance(rec.params, int)
        assert name in wnzoo.list_models(pretrained=True)  # the import-time cfgs know it


@pytest.mark.parametrize("name", sorted(published.load()))
def test_committed_card_names_its_twin_as_the_records_do(name):
    records = published.load()
    rec, twin = records[name], records.get(twin_name(name))
    text = (hub.RELEASE_DIR / name / "README.md").read_text()
    assert twin_line(rec, twin) in text, f"{name}'s card is stale: python hub/publish.py --refresh {name}"
    assert WNZOO_CITATION in text


@pytest.mark.parametrize("name", sorted(published.load()))
def test_committed_release_copy_is_what_the_code_writes(name, tmp_path):
    """The card (twin, citation, recipe and its notes, reproduce command) and config.json as
    write_derived writes them today, and curves.png titled as it titles them."""
    records = published.load()
    release = hub.RELEASE_DIR / name
    again = shutil.copytree(release, tmp_path / name)
    write_derived(again, records[name], records.get(twin_name(name)))
    stale = f"is stale: regenerate it with python hub/publish.py --refresh {name}"
    for file in (HubFolder.CARD, HubFolder.CONFIG):
        assert (release / file).read_text() == (again / file).read_text(), f"{release / file} {stale}"
    title = Image.open(again / HubFolder.CURVES).text["Title"]
    assert Image.open(release / HubFolder.CURVES).text.get("Title") == title, f"{release / HubFolder.CURVES} {stale}"


@pytest.mark.parametrize("name", sorted(published.load()))
def test_fresh_clone_loads_every_variant_from_its_release_copy(name, hub_env):
    rec = published.load()[name]
    release = hub.RELEASE_DIR / name
    has_weights = (release / "model.safetensors").is_file()
    assert has_weights or rec.size > wnzoo.publish.RELEASE_MAX_BYTES
    verify_folder(release, rec, weights=has_weights)
    if not rec.pushed:
        assert local_revision(release, commit_message(rec)) == rec.revision
    if has_weights:
        hub_env["offline"]()  # empty cache, no network
        assert_weights(wnzoo.create_model(name, pretrained=True), release / "model.safetensors")
        arch, tag = name.split(".")
        model = torch.hub.load(str(REPO_ROOT), arch, source="local", pretrained=True, pretrained_cfg=tag)
        assert_weights(model, release / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(published.load()))
def test_release_copy_reproduces_its_card_number(name, cifar10_dir):
    rec = published.load()[name]
    if rec.dataset != "cifar10" or not (hub.RELEASE_DIR / name / "model.safetensors").is_file():
        pytest.skip("needs the release weights and the dataset")
    model = wnzoo.fuse(wnzoo.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(
        file=str(hub.RELEASE_DIR / name))))
    assert round(_accuracy(model, cifar10_dir), 2) == rec.metrics["top1"]



def test_hf_hub_and_local_dir_names_in_wnzoo_create_model(zoo, olah_server, hub_env, records, tmp_path):
    """``hf-hub:`` of a published repo resolves as the variant (pinned, release copy when offline); a
    fork of a zoo model is timm's path through the zoo's loader; any other architecture is refused."""
    folder_b, _ = other_weights(zoo["folder"], tmp_path / "b", seed=3)
    fork = new_repo_id()
    olah_server.add_commit(fork, folder_b, "fork")
    model = wnzoo.create_model(f"hf-hub:{fork}", pretrained=True, num_classes=4)
    assert model.num_classes == 4 and model.pretrained_cfg["hf_hub_id"] == fork
    assert torch.equal(model.stem.v, load_file(str(folder_b / "model.safetensors"))["stem.v"])

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"architecture": "resnet10t", "num_classes": 10}))
    torch.save({"conv1.weight": torch.zeros(1)}, foreign / "pytorch_model.bin")
    other = new_repo_id()
    olah_server.add_commit(other, foreign, "not a zoo model")
    for name in (f"hf-hub:{other}", f"local-dir:{foreign}"):
        with pytest.raises(ValueError, match="holds a resnet10t, not a wnzoo model; build it with timm.create_model"):
            wnzoo.create_model(name, pretrained=True)

    records({NAME: zoo["rec"]}, release_dir=zoo["release_dir"])
    hub_env["offline"]()
    model = wnzoo.create_model(f"hf-hub:{zoo['rec'].repo_id}", pretrained=True)
    assert_weights(model, zoo["folder"] / "model.safetensors")
    assert (model.pretrained_cfg["source"], model.pretrained_cfg["hf_hub_id"]) == ("hf-hub", zoo["rec"].repo_id)
    local = wnzoo.create_model(f"local-dir:{zoo['folder']}", pretrained=True)
    assert_weights(local, zoo["folder"] / "model.safetensors")


def test_publish_takes_the_repo_id_and_recipe_from_the_run(zoo, fake_data, tmp_path):
    run = shutil.copytree(zoo["run"], tmp_path / "any name")  # not named after its recipe
    paths = {k: zoo[k] for k in ("release_dir", "published_json", "zoo_card_path")}
    rec, _ = publish(run, data=fake_data, dry_run=True, out=tmp_path / "out", **paths)
    assert rec.repo_id == f"wnzoo/{NAME}" and rec.recipe == "configs/wn_resnet20_c10_short.yaml"
    cfg = yaml.safe_load((run / "config.yaml").read_text())  # trained on another machine: its path is not here
    (run / "config.yaml").write_text(yaml.safe_dump(dict(cfg, recipe="/elsewhere/configs/wn_resnet20_c10_short.yaml")))
    rec, _ = publish(run, data=fake_data, dry_run=True, out=tmp_path / "out2", **paths)
    assert rec.recipe == "configs/wn_resnet20_c10_short.yaml"


def test_publish_checks_the_readme_it_will_update_before_any_work(zoo, fake_data, tmp_path):
    paths = dict(release_dir=tmp_path / "hub", published_json=tmp_path / "p.json", zoo_card_path=tmp_path / "M.md")
    (tmp_path / "README.md").write_text("a README without the status lines\n")
    with pytest.raises(PublishError, match="README.md lacks the lines <!-- status"):
        publish(zoo["run"], f"wnzoo/{NAME}", data=fake_data, **paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]
