"""Named method variants (config ``variants``): run ids, the options each run
receives, its decisions on one hand-built batch, and the errors at DAG build.

The batch is the one of ``test_q_tuning_ablations`` (B = 4, three response
tokens per row; sample 0 in Q2, sample 1 in Q4)."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from qtbench.config import REPO_ROOT, ConfigError, expand_runs, train_config, validate_config
from qtbench.methods.base import Budget
from qtbench.methods.registry import (
    build_method, check_variants, describe_variant, option_keys, part_options, pruner_options, required_stats,
    resolve_method,
)
from tests.methods.test_q_tuning_ablations import batch, rows

VARIANTS = {
    "q_tuning_l0": {"method": "q_tuning", "options": {"lambda": 0.0}},            # joint method
    "q_tuning_paper": {"method": "q_tuning", "options": {"preset": "paper_text"}},
    "random_batch": {"method": "random", "options": {"mode": "batch"}},          # sample pruner
    "ppl_lowest": {"method": "ppl", "options": {"drop": "lowest"}},              # token pruner
}
METHODS = ["full", "q_tuning", "q_tuning_l0", "q_tuning_paper", "random+ppl", "random_batch+ppl",
           "random+ppl_lowest", "ppl_lowest"]


def config(**changes) -> dict:
    base = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    base.update({"variants": copy.deepcopy(VARIANTS), "methods": list(METHODS),
                 "budgets": [{"r_s": 0.5, "r_t": 0.7}], "method_budgets": {}, "seeds": [0]})
    base.update(changes)
    return validate_config(base)


def test_run_ids_use_the_variant_names():
    assert [r.run_id for r in expand_runs(config())] == [
        "tiny/full/s1-t1/seed0",
        "tiny/q_tuning/s0.5-t0.7/seed0",
        "tiny/q_tuning_l0/s0.5-t0.7/seed0",
        "tiny/q_tuning_paper/s0.5-t0.7/seed0",
        "tiny/random+ppl/s0.5-t0.7/seed0",
        "tiny/random_batch+ppl/s0.5-t0.7/seed0",
        "tiny/random+ppl_lowest/s0.5-t0.7/seed0",
        "tiny/ppl_lowest/s1-t0.35/seed0",  # a token pruner's variant: the token-only budget r_s r_t
    ]


def test_options_each_part_receives():
    cfg = config(method_options={"q_tuning": {"neighbours": "attended"}, "random": {"mode": "epoch"},
                                 "ppl": {"scope": "batch"}})
    opts, variants = cfg["method_options"], cfg["variants"]
    # merge rule: {**method_options.<base>, **variant.options}
    assert part_options("q_tuning_paper", opts, variants) == {"joint": {"neighbours": "attended", "preset": "paper_text"}}
    assert part_options("random_batch+ppl", opts, variants) == {"sample": {"mode": "batch"}, "token": {"scope": "batch"}}
    assert part_options("random+ppl_lowest", opts, variants) == {"sample": {"mode": "epoch"},
                                                                 "token": {"scope": "batch", "drop": "lowest"}}
    assert pruner_options("random_batch", opts, variants) == ("random", {"mode": "batch"})
    # the explicit neighbours option beats the variant's preset (q_tuning's precedence)
    method = build_method("q_tuning_paper", Budget(0.5, 0.7), opts, variants=variants)
    assert method.options["neighbours"] == "attended" and method.options["entropy_over"] == "response"
    resolved = resolve_method("random+ppl_lowest", variants)
    assert (resolved.base, resolved.spec.family, dict(resolved.parts)) == (
        "random+ppl", "pair", {"sample": "random", "token": "ppl_lowest"})


def test_describe_variant_for_the_tables():
    cfg = config()
    assert describe_variant("q_tuning_l0", cfg) == ("q_tuning", {"lambda": 0.0})
    assert describe_variant("q_tuning_paper", cfg) == ("q_tuning", {"preset": "paper_text"})
    assert describe_variant("random+ppl_lowest", cfg) == ("random+ppl", {"ppl.drop": "lowest"})
    assert describe_variant("random_batch+ppl", cfg) == ("random+ppl", {"random.mode": "batch"})
    assert describe_variant("ppl_lowest", cfg) == ("ppl", {"drop": "lowest"})
    assert describe_variant("q_tuning", cfg) == ("q_tuning", {})
    # an option equal to the base's own value does not differ
    same = config(variants={**VARIANTS, "q_tuning_l5": {"method": "q_tuning", "options": {"lambda": 0.5}}},
                  methods=["q_tuning_l5"])
    assert describe_variant("q_tuning_l5", same) == ("q_tuning", {})


def test_decisions_on_one_batch():
    cfg = config()
    opts, variants = cfg["method_options"], cfg["variants"]
    stats = batch()

    def decide(name, budget):
        return build_method(name, budget, opts, seed=0, variants=variants).select(stats)

    # Q-Tuning at (0.5, 0.7): 2 response tokens of the Q2 row 0 are pruned (test_q_tuning_ablations)
    assert rows(decide("q_tuning", Budget(0.5, 0.7)).token_keep)[0] == [0, 0, 1]     # lam 0.5
    assert rows(decide("q_tuning_l0", Budget(0.5, 0.7)).token_keep)[0] == [0, 1, 0]  # lam 0
    # paper_text: per-sample budget floor(0.7 * 3) = 2 tokens of row 0; neighbours outside the
    # response count 0 (none here), so the lam 0.5 scores drop pos 1 (12.03)
    assert rows(decide("q_tuning_paper", Budget(0.5, 0.7)).token_keep)[0] == [1, 0, 1]
    # PPL token pruner at r_t = 0.5: each sample keeps round(0.5 * 3) = 2 tokens;
    # base `ppl` drops the highest NLL (row 0: 2.5 at pos 0), the variant the lowest (1.5 at pos 1)
    base = decide("random+ppl", Budget(0.5, 0.5))
    low = decide("random+ppl_lowest", Budget(0.5, 0.5))
    assert base.sample_keep.tolist() == low.sample_keep.tolist() == [True] * 4  # epoch-level random: per step all
    assert rows(base.token_keep)[0] == [0, 1, 1] and rows(low.token_keep)[0] == [1, 0, 1]
    assert [sum(r) for r in rows(low.token_keep)] == [2, 2, 2, 2]
    # the sample pruner's variant draws round(4 * 0.5) = 2 samples in every micro-batch
    drawn = decide("random_batch+ppl", Budget(0.5, 0.5))
    assert int(drawn.sample_keep.sum()) == 2
    assert not bool((drawn.token_keep & ~drawn.sample_keep[:, None]).any())
    # the token pruner's variant alone, at its token-only budget (1, 0.25): 1 token per row
    alone = decide("ppl_lowest", Budget(1.0, 0.25))
    assert rows(alone.token_keep)[0] == [1, 0, 0]


def test_a_variant_change_retrains_exactly_its_runs():
    def params(cfg):
        return {r.run_id: json.dumps(train_config(cfg, r), sort_keys=True) for r in expand_runs(cfg)}

    before = params(config())
    changed = copy.deepcopy(VARIANTS)
    changed["ppl_lowest"]["options"]["scope"] = "batch"
    after = params(config(variants=changed))
    assert sorted(k for k in before if before[k] != after[k]) == [
        "tiny/ppl_lowest/s1-t0.35/seed0", "tiny/random+ppl_lowest/s0.5-t0.7/seed0"]
    # runs without variants carry no `variants` key: their params are what they were before variants existed
    run = expand_runs(config())[1]
    assert "variants" not in train_config(config(), run)
    low = next(r for r in expand_runs(config()) if r.method == "random+ppl_lowest")
    assert train_config(config(), low)["variants"] == {"ppl_lowest": {"method": "ppl", "options": {"drop": "lowest"}}}


def test_required_stats_follow_the_variant_options():
    variants = {"q_tuning_rho1": {"method": "q_tuning", "options": {"token_scorer": "rho1"}},
                "q_tuning_triage": {"method": "q_tuning", "options": {"token_scorer": "rho1", "stage": "triage_only"}}}
    assert required_stats("q_tuning_rho1", {}, variants) == {"nll", "entropy", "ref_nll"}
    assert required_stats("q_tuning_triage", {}, variants) == {"nll", "entropy"}
    assert required_stats("random+ppl_lowest", {}, VARIANTS) == {"nll"}


@pytest.mark.parametrize("variants, methods, key", [
    ({"q_tuning_l0": {"method": "q_tuning", "options": {"lamda": 0.0}}}, ["q_tuning_l0"],
     "variants.q_tuning_l0.options.lamda"),
    ({"ppl_lowest": {"method": "ppl", "options": {"dorp": "lowest"}}}, ["full"], "variants.ppl_lowest.options.dorp"),
    ({"random_batch": {"method": "random", "options": {"mod": "batch"}}}, ["full"],
     "variants.random_batch.options.mod"),
    ({"rho1": {"method": "q_tuning", "options": {"token_scorer": "rho1"}}}, ["full"], "variants.rho1"),
    ({"q_tuning": {"method": "q_tuning"}}, ["full"], "variants.q_tuning"),
    ({"qt": {"method": "q_tunning"}}, ["full"], "variants.qt.method"),
    ({"qt": {"method": "random+ppl"}}, ["full"], "variants.qt.method"),
    ({"qt": {"method": "full"}}, ["full"], "variants.qt.method"),
    ({"qt": {"method": "q_tuning", "options": {"lambda": 1.5}}}, ["full"], "variants.qt.options"),
    ({"qt": {"method": "q_tuning", "option": {}}}, ["full"], "variants.qt.option"),
    ({"Bad": {"method": "q_tuning"}}, ["full"], "variants"),
    # a token pruner's variant on the sample side of a pair
    ({"ppl_lowest": {"method": "ppl", "options": {"drop": "lowest"}}}, ["ppl_lowest+random"], "methods[0]"),
])
def test_bad_variants_fail_at_validation_naming_the_key(variants, methods, key):
    with pytest.raises(ConfigError) as info:
        config(variants=variants, methods=methods)
    assert f"'{key}" in str(info.value)


def test_variant_options_under_method_options_are_an_error():
    with pytest.raises(ConfigError, match="method_options.ppl_lowest"):
        config(method_options={"ppl_lowest": {"drop": "lowest"}})


def test_option_keys_are_declared_by_every_registered_pruner():
    assert option_keys("ppl") == {"drop", "scope", "count_prompt", "special_tokens"}
    assert option_keys("random") == {"mode", "double_prune", "scope", "count_prompt", "special_tokens"}
    assert "lambda" in option_keys("q_tuning") and "stage" in option_keys("q_tuning")
    assert check_variants({"x_v": {"method": "ifd", "options": {"threshold": 0.9}}})["x_v"].method == "ifd"
