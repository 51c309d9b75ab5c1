"""Budget and method labels: one family mapping, shared with the config."""

from __future__ import annotations

import pytest

from qtbench.config import ConfigError
from qtbench.methods.registry import method_family, registered_names
from qtbench.report.naming import GROUP_RANK, budget_label, method_group, percent, row_family, split_budget


def test_row_family_is_the_registry_family_plus_base_and_other():
    assert row_family("base") == "base"
    assert row_family("full") == "full"
    assert row_family("random") == "sample"
    assert row_family("random+rho1") == "pair"
    assert row_family("q_tuning") == "joint"
    assert row_family("a_method_nobody_registered") == "other"
    for names in registered_names().values():
        for name in names:
            assert row_family(name) == method_family(name), name


def test_pairs_and_joint_methods_share_the_bottom_group():
    assert [method_group(m) for m in ("base", "full", "random", "random+rho1", "q_tuning", "gone")] == [
        "base", "full", "sample", "joint", "joint", "other"]
    assert sorted(GROUP_RANK, key=GROUP_RANK.get) == ["base", "full", "sample", "token", "joint", "controls", "other"]


def test_budget_strings_are_exact_decimals():
    assert split_budget("s0.25-t0.5") == ("0.25", "0.5", "0.125")
    assert split_budget(None) is None and split_budget(float("nan")) is None and split_budget("") is None
    assert budget_label("s0.125-t1") == "12.5%×100%"
    assert percent("0.125") == "12.5%" and percent(None) == ""
    with pytest.raises(ConfigError, match="invalid budget"):
        split_budget("25%")
