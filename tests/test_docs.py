"""What the docs tell a new user stays true: the README's status, the torch.hub docstrings, the
config keys in --help, the project docs the code cites, and no path of one developer's machine."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from wnzoo import published
from wnzoo.model_card import zoo_status
from wnzoo.paper import PAPER_TABLE1
from wnzoo.publish import STATUS_END, STATUS_START, write_readme_status
from wnzoo.training import TrainConfig, load_config
from wnzoo.training.cli import _parser

REPO = Path(__file__).resolve().parent.parent


def test_the_readme_says_what_is_published_as_the_records_do():
    readme = (REPO / "README.md").read_text()
    block = readme.split(STATUS_START)[1].split(STATUS_END)[0].strip()
    assert block == zoo_status(published.variants()), "regenerate it: python hub/publish.py --model-card"
    for name, rec in published.variants().items():
        assert f"`{name}` ({rec.top1:.2f} % top-1 after {rec.epochs} epochs)" in block
    for row in PAPER_TABLE1:
        if row.variant and row.variant not in published.variants():
            assert f"`{row.variant}`" in block.split("no weights yet")[0]


def test_the_readme_cites_the_zoo_as_its_cards_do():
    from wnzoo.model_card import WNZOO_CITATION

    assert WNZOO_CITATION in (REPO / "README.md").read_text()
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_the_status_follows_the_records(tmp_path):
    rec = next(iter(published.variants().values()))
    full = dataclasses.replace(rec, arch="wn_resnet110", epochs=182, metrics=dict(rec.metrics, top1=93.4))
    text = zoo_status({"wn_resnet110.c10": full})
    assert "`wn_resnet110.c10` (93.40 % top-1 after 182 epochs)." in text and "short runs" not in text
    assert "`wn_resnet110.c10`" not in text.split("The paper's variants")[1]  # no longer listed as missing
    assert zoo_status({}).startswith("**What exists today.** No published weights yet.")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{STATUS_START}\nold\n{STATUS_END}\nrest\n")
    write_readme_status(readme, "new")
    assert readme.read_text() == f"intro\n{STATUS_START}\nnew\n{STATUS_END}\nrest\n"


def test_torch_hub_docstrings_say_which_entries_have_weights():
    import hubconf

    for name in ("wn_resnet20", "wn_resnet110"):
        rec = published.get(f"{name}.c10")
        doc = getattr(hubconf, name).__doc__
        assert (f"pretrained weights: {name}.c10, {rec.top1:.2f} % top-1" in doc if rec
                else "no pretrained weights yet" in doc)


def test_the_readmes_torch_hub_line_loads_from_a_clone():
    import torch

    readme = (REPO / "README.md").read_text()
    line = next(x for x in readme.splitlines() if "torch.hub.load(" in x)
    assert 'torch.hub.load("path/to/wnzoo", ' in line and 'source="local"' in line  # a folder, not a GitHub repo
    scope = {"torch": torch}
    exec(line.replace("path/to/wnzoo", str(REPO)), scope)
    assert type(scope["model"]).__name__ == "CifarResNet" and scope["model"].default_cfg["architecture"] == "wn_resnet56"
    import hubconf

    assert "torch.hub.load('path/to/wnzoo', NAME, source='local'" in hubconf.__doc__


def test_train_help_lists_every_config_key_with_its_meaning():
    text = _parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        assert re.search(rf"^  {f.name} \(.*\)\s+{re.escape(f.metadata['help'])}$", text, re.M), f.name
    assert "Exit codes: 0 ok" in text and "A quick first run" in text


def test_recipes_name_no_data_path_and_load():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.data is None and cfg.recipe == str(path), path.name  # $WNZOO_DATA, else the Hub
    assert TrainConfig().data is None


def test_every_docs_reference_in_the_code_resolves():
    refs = set()
    code = [*REPO.glob("wnzoo/**/*.py"), *REPO.glob("*/*.py"), *REPO.glob("*.py")]  # *.py: the CLIs and tests
    for path in [*code, *REPO.glob("configs/*.yaml"), *REPO.glob("*.md")]:
        refs |= set(re.findall(r"(docs/[\w.-]+\.md)(?: §([\d.]+))?", path.read_text()))
    assert refs
    for doc, section in refs:
        assert (REPO / doc).is_file(), doc
        if section:
            assert re.search(rf"^#+ {re.escape(section)}\.? ", (REPO / doc).read_text(), re.M), f"{doc} §{section}"


@pytest.mark.parametrize("path", ["README.md", "DEVELOPERS.md", "hubconf.py", "eval/cifar.py", "hub/publish.py"])
def test_user_docs_point_at_no_development_tool(path):
    text = (REPO / path).read_text()
    assert "cifar10_chunks" not in text and "shared/tools" not in text
