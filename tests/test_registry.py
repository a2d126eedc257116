"""The names an unknown model's error suggests: the name the user meant comes first."""
from __future__ import annotations

import pytest

import wnzoo
from wnzoo.registry import did_you_mean, list_models


@pytest.mark.parametrize("typed, meant", [
    ("wn_resnet2O", "wn_resnet20"),    # letter O for zero: difflib's ratio alone ranks wn_resnet32 first
    ("wn_resnt110", "wn_resnet110"),   # a letter left out
    ("bn_wrn40_1O", "bn_wrn40_10"),
    ("wn_rsenet56", "wn_resnet56"),    # two letters swapped
    ("WN_ResNet20", "wn_resnet20"),    # capitals
])
def test_the_closest_name_is_suggested_first(typed, meant):
    with pytest.raises(ValueError, match=rf"unknown model '{typed}'\. Did you mean {meant}[,?]"):
        wnzoo.create_model(typed)


def test_suggestions_are_only_close_names():
    assert did_you_mean("xyz", list_models()) == ""
    assert did_you_mean("wn_resnet2O", ["wn_resnet20"], n=3) == " Did you mean wn_resnet20?"
    assert did_you_mean("wn_resnet2O", list_models(), n=2) == " Did you mean wn_resnet20, wn_resnet32?"
