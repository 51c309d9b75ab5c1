"""Config validation, budget protocol and run ids."""

from __future__ import annotations

import copy

import pytest
import yaml

from qtbench.config import (REPO_ROOT, ConfigError, RunSpec, budgets_for, expand_runs, load_config, multiply,
                            parse_budget, ratio_str, run_id, validate_config)

MINIMAL = {
    "experiment": "t",
    "models": {"tiny": {"path": "world"}},
    "methods": ["full"],
    "budgets": [{"r_s": 0.25, "r_t": 0.5}],
    "seeds": [0],
    "eval": {"tasks": [{"name": "world_arc_easy"}]},
}


def with_(**changes):
    cfg = copy.deepcopy(MINIMAL)
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize(
    "change, key",
    [
        ({"trian": {}}, "'trian'"),
        ({"train": {"lr": "fast"}}, "'train.lr'"),
        ({"train": {"epochs": 1.5}}, "'train.epochs'"),
        ({"train": {"micro_batch": 8}}, "'train.micro_batch'"),
        ({"budgets": [{"r_s": 1.5, "r_t": 0.5}]}, "'budgets[0].r_s'"),
        ({"budgets": [{"r_s": 0.5, "r_t": 0}]}, "'budgets[0].r_t'"),
        ({"budgets": [{"r_s": "-0.1", "r_t": 0.5}]}, "'budgets[0].r_s'"),
        ({"models": {"tiny": {"path": "world", "revison": "x"}}}, "'models.tiny.revison'"),
        ({"eval": {"tasks": [{"name": "a", "shots": 2}]}}, "'eval.tasks[0].shots'"),
        ({"wandb": {"mode": "sometimes"}}, "'wandb.mode'"),
        ({"methods": ["no_such_method"]}, "'methods[0]'"),
    ],
)
def test_bad_config_names_the_key(change, key):
    with pytest.raises(ConfigError) as err:
        validate_config(with_(**change))
    assert key in str(err.value)


def test_unknown_method_lists_registered_ones():
    with pytest.raises(ConfigError, match="registered methods: full"):
        validate_config(with_(methods=["nope"]))


def test_defaults_are_filled():
    cfg = validate_config(MINIMAL)
    assert cfg["train"]["micro_batch_size"] == 8
    assert cfg["wandb"]["mode"] == "offline"
    assert cfg["models"]["tiny"]["trust_remote_code"] is False
    assert cfg["eval"]["tasks"][0]["num_fewshot"] == 0


@pytest.mark.parametrize("value, text", [(0.5, "0.5"), ("0.50", "0.5"), (1, "1"), (1.0, "1"), ("0.125", "0.125")])
def test_ratio_strings(value, text):
    assert ratio_str(value) == text


def test_budget_arithmetic_is_decimal():
    assert multiply("0.1", "0.2") == "0.02"  # float: 0.020000000000000004
    assert multiply("0.125", "0.5") == "0.0625"
    assert parse_budget("s0.125-t0.7") == (0.125, 0.7)
    with pytest.raises(ConfigError):
        parse_budget("s1.5-t1")


def test_budget_protocol_per_family():
    pairs = [("0.25", "0.5"), ("0.5", "0.7")]
    assert budgets_for("full", pairs) == [("1", "1")]
    assert budgets_for("q_tuning", pairs) == pairs
    assert budgets_for("random+random", pairs) == pairs
    assert budgets_for("random", pairs) == [("0.125", "1"), ("0.35", "1")]
    assert budgets_for("none+ppl", pairs) == [("1", "0.125"), ("1", "0.35")]


def test_run_ids_are_sanitised():
    assert run_id("tiny", "infobatch+ppl", "s0.25-t0.5", 3) == "tiny/infobatch+ppl/s0.25-t0.5/seed3"
    for bad in [("../x", "full", "s1-t1", 0), ("tiny", "full/..", "s1-t1", 0), ("tiny", "full", "s1-t1", "0/../x")]:
        with pytest.raises(ConfigError):
            run_id(*bad)
    assert RunSpec("m", "q_tuning", "0.25", "0.5", 1).total == "0.125"


def test_expand_runs_counts():
    cfg = validate_config(with_(methods=["full", "q_tuning", "random+random", "random"], seeds=[0, 1],
                                budgets=[{"r_s": 0.25, "r_t": 0.5}, {"r_s": 0.5, "r_t": 0.5}]))
    runs = expand_runs(cfg)
    # full once; q_tuning and the pair at 2 budgets; random at 2 totals (0.125, 0.25); x 2 seeds
    assert len(runs) == (1 + 2 + 2 + 2) * 2
    assert len({r.run_id for r in runs}) == len(runs)


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "paper.yaml"])
def test_shipped_configs_validate(name):
    path = REPO_ROOT / "config" / name
    if not path.exists():
        pytest.skip(f"{name} not present")
    cfg = load_config(path) if name == "config.yaml" else validate_config(
        {**yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text()), **yaml.safe_load(path.read_text())})
    assert expand_runs(cfg)


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_method_budgets_replace_the_shared_pairs():
    cfg = validate_config(with_(methods=["full", "q_tuning", "random"],
                                method_budgets={"q_tuning": [{"r_s": 0.125, "r_t": 0.5}, {"r_s": 0.5, "r_t": 0.7}]}))
    budgets = {(r.method, r.budget) for r in expand_runs(cfg)}
    assert budgets == {("full", "s1-t1"), ("q_tuning", "s0.125-t0.5"), ("q_tuning", "s0.5-t0.7"),
                       ("random", "s0.125-t1")}
    # an entry for a method that is not run is inherited harmlessly (configs merge over the default)
    assert len(expand_runs(validate_config(with_(method_budgets={"ppl": [{"r_s": 0.5, "r_t": 0.5}]})))) == 1
    with pytest.raises(ConfigError, match=r"method_budgets.q_tuning\[0\].r_t"):
        validate_config(with_(methods=["q_tuning"], method_budgets={"q_tuning": [{"r_s": 0.5, "r_t": 2}]}))


def test_method_seeds_repeat_only_their_methods():
    """The paper averages random baselines over 5 repeats: `method_seeds`
    gives those methods their own seeds, everything else keeps `seeds`."""
    cfg = validate_config(with_(methods=["full", "q_tuning", "random+random"], seeds=[0],
                                budgets=[{"r_s": 0.25, "r_t": 0.5}, {"r_s": 0.5, "r_t": 0.5}],
                                method_seeds={"random+random": [0, 1, 2, 3, 4]}))
    runs = expand_runs(cfg)
    seeds = {}
    for run in runs:
        seeds.setdefault((run.method, run.budget), []).append(run.seed)
    assert seeds == {("full", "s1-t1"): [0], ("q_tuning", "s0.25-t0.5"): [0], ("q_tuning", "s0.5-t0.5"): [0],
                     ("random+random", "s0.25-t0.5"): [0, 1, 2, 3, 4], ("random+random", "s0.5-t0.5"): [0, 1, 2, 3, 4]}
    assert len(runs) == 1 + 2 + 2 * 5
    with pytest.raises(ConfigError, match=r"method_seeds.random\+random"):
        validate_config(with_(method_seeds={"random+random": [0, 0]}))
    with pytest.raises(ConfigError, match=r"method_seeds.random\+random\[0\]"):
        validate_config(with_(method_seeds={"random+random": [-1]}))
