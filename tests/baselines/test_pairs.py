"""Composition of baselines as (sample method, token method) pairs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from qtbench.methods.base import BatchStats, Budget, DatasetInfo, PairMethod
from qtbench.methods.registry import build_method, parse_method

RESPONSE = [[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]
ATTENTION = [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
# response mean NLL: r0 (1+2+3)/3 = 2, r1 (4+4+4)/3 = 4, r2 (0.5*4)/4 = 0.5
NLL = [[0, 1, 2, 3, 0], [0, 0, 4, 4, 4], [0, 0.5, 0.5, 0.5, 0.5]]


def stats():
    return BatchStats.from_tensors(NLL, [[0.0] * 5] * 3, RESPONSE, ATTENTION, sample_ids=[0, 1, 2], step=1, epoch=1)


def spy(method):
    seen = []
    original = method.token.select_tokens

    def wrapped(s, candidates):
        seen.append(candidates.clone())
        return original(s, candidates)

    method.token.select_tokens = wrapped
    return seen


def test_token_pruner_sees_only_kept_samples_response_tokens():
    method = build_method("ppl_sample+loss", Budget(0.34, 0.5))
    assert isinstance(method, PairMethod) and method.required_stats == {"nll"}
    seen = spy(method)
    selection = method.select(stats())
    # K = max(1, round(3 * 0.34)) = 1 -> row 1 (mean 4); its candidates: positions 2, 3, 4
    assert selection.sample_keep.tolist() == [False, True, False]
    expected_candidates = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(seen[0], expected_candidates)
    # loss keeps max(1, round(1.5)) = 2 of row 1: ties (all 4.0) -> positions 2, 3
    assert selection.token_keep.tolist() == [[False] * 5, [False, False, True, True, False], [False] * 5]


def test_infobatch_plus_ppl():
    method = build_method("infobatch+ppl", Budget(0.5, 0.5), {"ppl": {"scope": "sample"}, "infobatch": {"anneal": 0.125}})
    assert method.name == "infobatch+ppl" and method.required_stats == {"nll"} and not method.static
    data = DatasetInfo([{"instruction": "q", "output": "a"}] * 3, [3, 3, 4])
    assert method.plan_epoch(0, 3, data).indices == [0, 1, 2]
    method.observe(torch.tensor([0, 1, 2]), torch.tensor([2.0, 4.0, 0.5]), 0)
    # mean 2.1667: below = {0, 2}; p = min(1, 0.5 * 3 / 2) = 0.75 -> round(1.5) = 2 pruned -> [1]
    assert method.plan_epoch(1, 3, data).indices == [1]
    seen = spy(method)
    selection = method.select(stats())
    assert selection.sample_keep.tolist() == [True, True, True]
    assert torch.equal(seen[0], stats().response_mask)
    # ppl drops the highest: r0 keeps p1 (1.0), p2 (2.0); r1 ties -> p2, p3; r2 ties -> p1, p2
    assert selection.token_keep.tolist() == [
        [False, True, True, False, False], [False, False, True, True, False], [False, True, True, False, False]]
    state = method.state_dict()
    assert state["sample"]["ids"] == [0, 1, 2]


def test_static_pair_and_options_routed_by_name():
    method = build_method("ifd+rho1", Budget(0.5, 0.5), {"ifd": {"threshold": None}, "rho1": {"scope": "sample"}})
    assert method.static and method.required_stats == {"nll", "ref_nll"}
    assert method.sample.threshold is None and method.token.scope == "sample"
    with pytest.raises(ValueError, match="'bogus'"):
        build_method("infobatch+ppl", Budget(0.5, 0.5), {"infobatch": {"bogus": 1}})


def test_lone_names_and_pairs_parse():
    assert parse_method("longest").family == "sample"
    assert parse_method("rho1").family == "token" and parse_method("rho1").sample == "none"
    assert parse_method("random").family == "sample"  # both kinds: alone it is the sample pruner
    spec = parse_method("none+random")
    assert (spec.family, spec.sample, spec.token) == ("token", "none", "random")
    spec = parse_method("infobatch+ppl")
    assert (spec.family, spec.sample, spec.token) == ("pair", "infobatch", "ppl")
    # a lone token method keeps every sample
    selection = build_method("fastv", Budget(1.0, 0.5)).select(
        BatchStats.from_tensors(NLL, [[0.0] * 5] * 3, RESPONSE, ATTENTION, attention_received=[[0.1] * 5] * 3))
    assert selection.sample_keep.all()


def test_unknown_names_list_registered_ones():
    with pytest.raises(ValueError) as info:
        parse_method("nope")
    for name in ("infobatch", "longest", "rho1", "fastv", "token_cleaning", "superfiltering"):
        assert name in str(info.value)
    with pytest.raises(ValueError) as info:
        parse_method("random+nope")
    assert "ppl" in str(info.value) and "rho1" in str(info.value)


def test_a_new_module_is_discovered(tmp_path):
    """The "one file" promise at registry level: a module dropped into a copy of
    ``baselines/`` registers itself and composes in a pair."""
    root = Path(__file__).resolve().parents[2]
    shutil.copytree(root / "baselines", tmp_path / "baselines", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "baselines" / "my_baseline.py").write_text(textwrap.dedent('''
        """A test baseline: keep the first sample of each micro-batch."""
        import torch
        from qtbench.methods.base import SamplePruner
        from qtbench.methods.registry import register_sample_pruner

        @register_sample_pruner("keep_first")
        class KeepFirst(SamplePruner):
            required_stats = frozenset({"nll"})

            def select_samples(self, stats):
                keep = torch.zeros(stats.batch_size, dtype=torch.bool)
                keep[0] = True
                return keep, torch.ones(stats.batch_size), {}
    '''))
    script = textwrap.dedent('''
        import baselines
        from qtbench.methods.base import Budget
        from qtbench.methods.registry import build_method, registered_names
        assert baselines.__file__.startswith(%r), baselines.__file__
        assert "keep_first" in registered_names()["sample"]
        m = build_method("keep_first+ppl", Budget(0.5, 0.5))
        print(type(m.sample).__name__, type(m.token).__name__)
    ''' % str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["KeepFirst", "PplTokens"]


def test_random_pair_reads_two_options_entries():
    """The sample pruner reads ``method_options.random``, the token pruner
    ``method_options.random_tokens``: neither sees the other's keys."""
    method = build_method("random+random", Budget(0.5, 0.5),
                          {"random": {"mode": "batch"}, "random_tokens": {"scope": "batch"}})
    assert method.sample.mode == "batch" and method.token.scope == "batch"
    s = stats()
    selection = method.select(s)
    # K = round(3 * 0.5) = 2 samples; batch scope keeps round(0.5 * n) of their response tokens
    assert int(selection.sample_keep.sum()) == 2
    n = int((s.response_mask & selection.sample_keep[:, None]).sum())
    assert int(selection.token_keep.sum()) == round(0.5 * n)
    # the token pruner alone reads random_tokens too
    assert build_method("none+random", Budget(1.0, 0.5), {"random_tokens": {"scope": "batch"}}).token.scope == "batch"


def test_random_misplaced_or_unknown_option_names_method_and_key():
    # an old config's token key under `random` fails, naming where it belongs
    with pytest.raises(ValueError, match=r"option 'scope' of method 'random' .*method_options\.random_tokens"):
        build_method("random+random", Budget(0.5, 0.5), {"random": {"mode": "batch", "scope": "batch"}})
    with pytest.raises(ValueError, match=r"option 'mode' of method 'random' .*method_options\.random\b"):
        build_method("random+random", Budget(0.5, 0.5), {"random_tokens": {"mode": "batch"}})
    for entry in ("random", "random_tokens"):
        with pytest.raises(ValueError, match=r"unknown option 'bogus' for method 'random'"):
            build_method("random+random", Budget(0.5, 0.5), {entry: {"bogus": 1}})


def test_method_options_checked_at_config_validation():
    from qtbench.methods.registry import check_method_options

    check_method_options({"random": {"mode": "epoch"}, "random_tokens": {"scope": "batch"}, "ppl": {"drop": "lowest"}})
    with pytest.raises(ValueError, match=r"'method_options\.random\.scope': unknown option of method 'random' "
                                         r"\(an option of 'method_options\.random_tokens'\)"):
        check_method_options({"random": {"scope": "batch"}})
    with pytest.raises(ValueError, match=r"'method_options\.fastv\.bogus': unknown option of method 'fastv'"):
        check_method_options({"fastv": {"bogus": 1}})
    with pytest.raises(ValueError, match=r"'method_options\.radnom': no registered method reads these options"):
        check_method_options({"radnom": {}})
