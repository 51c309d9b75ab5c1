"""The options every run of a shipped config receives, after Snakemake's merge.

``snakemake --configfile config/X.yaml`` merges X over config/config.yaml key
by key, so a method option that X leaves out takes the default world's value:
the default's ``infobatch: {anneal: 0.0}`` once reached the paper grids this
way.  These tests merge each shipped config exactly as the Snakefile does
(:func:`qtbench.config.merge_over_default`) and read, run by run, the options
each part of the run is handed (:func:`qtbench.methods.registry.part_options`).
"""

from __future__ import annotations

import pytest

from qtbench.config import REPO_ROOT, expand_runs, merge_over_default
from qtbench.methods.registry import part_options

CONFIGS = REPO_ROOT / "config"
PAPER_GRIDS = ["paper.yaml", "paper_reasoning.yaml"]

# InfoBatch as the Q-Tuning authors' code runs it (config/paper.yaml's comment)
PAPER_INFOBATCH = {"budget_forced": True, "anneal": 0.125, "prune_ratio": None, "double_prune": False}


def run_options(config_name: str) -> dict[str, dict[str, dict]]:
    """Method name -> role -> options, over every run of the merged config."""
    cfg = merge_over_default(CONFIGS / config_name)
    out: dict[str, dict[str, dict]] = {}
    for run in expand_runs(cfg):
        options = part_options(run.method, cfg["method_options"], cfg["variants"])
        assert out.setdefault(run.method, options) == options, f"{run.method}: runs of one method differ"
    return out


@pytest.mark.parametrize("config_name", PAPER_GRIDS)
def test_paper_grids_run_infobatch_as_the_authors_code_not_the_default_worlds(config_name):
    options = run_options(config_name)
    infobatch_runs = [name for name in options if name.startswith("infobatch+")]
    assert sorted(infobatch_runs) == ["infobatch+fastv", "infobatch+ppl", "infobatch+random", "infobatch+sparsevlm"]
    for name in infobatch_runs:
        assert options[name]["sample"] == PAPER_INFOBATCH, name


@pytest.mark.parametrize("config_name", PAPER_GRIDS)
def test_paper_grids_run_the_authors_q_tuning_and_per_epoch_random_subsets(config_name):
    options = run_options(config_name)
    assert options["q_tuning"] == {"joint": {"preset": "code", "lambda": 0.5}}
    assert options["random+ppl"]["sample"]["mode"] == "epoch"
    assert options["random+ppl"]["token"] == {"drop": "highest"}
    assert options["longest+random"]["sample"] == {"length_unit": "tokens", "double_prune": False}
    assert options["entropy+random"]["sample"] == {"entropy_over": "response"}


def test_the_default_worlds_infobatch_keeps_its_own_anneal():
    """The default world trains 2 epochs: its InfoBatch anneal is 0 (see config.yaml)."""
    assert run_options("config.yaml")["infobatch+ppl"]["sample"] == {"anneal": 0.0}


def test_paper_ablations_vary_one_option_each_over_the_authors_q_tuning():
    options = run_options("paper_ablations.yaml")
    base = {"preset": "code", "lambda": 0.5}
    assert options["q_tuning"] == {"joint": base}
    assert options["q_tuning_l0"] == {"joint": {**base, "lambda": 0.0}}
    assert options["q_tuning_l07"] == {"joint": {**base, "lambda": 0.7}}
    assert options["q_tuning_triage"] == {"joint": {**base, "stage": "triage_only"}}
    assert options["q_tuning_tokens"] == {"joint": {**base, "stage": "tokens_only"}}
    assert options["q_tuning_rho1"] == {"joint": {**base, "token_scorer": "rho1"}}
    assert options["q_tuning_reversed"] == {"joint": {**base, "token_scorer": "reversed"}}


def test_the_embedded_ablations_compare_the_paper_preset_with_the_code_default():
    options = run_options("ablations.yaml")
    assert options["q_tuning"] == {"joint": {}}
    assert options["q_tuning_paper"] == {"joint": {"preset": "paper_text"}}
    assert options["q_tuning_l03"] == {"joint": {"lambda": 0.3}}


def test_paper_grid_judges_and_less_are_its_own_not_the_default_worlds():
    """The default world names its tiny model as every judge (stand_in: true) and
    sizes LESS for it; the alignment grid states every one of those keys."""
    options = run_options("paper.yaml")
    alpagasus = options["alpagasus+random"]["sample"]
    assert alpagasus["judge"]["path"] == "meta-llama/Llama-3.1-8B-Instruct" and alpagasus["stand_in"] is False
    deita = options["deita+random"]["sample"]
    assert deita["complexity_scorer"]["path"] == "hkust-nlp/deita-complexity-scorer"
    assert deita["quality_scorer"]["path"] == "hkust-nlp/deita-quality-scorer" and deita["stand_in"] is False
    ds2 = options["ds2+random"]["sample"]
    assert ds2["rater"]["path"] == "meta-llama/Llama-3.1-8B-Instruct" and ds2["stand_in"] is False
    less = options["less+random"]["sample"]
    assert (less["lr"], less["batch_size"], less["lora_rank"], less["lora_alpha"], less["proj_dim"], less["max_length"]) == (
        2e-5, 128, 128, 512, 8192, 2048)
    # the random token pruner reads its own entry, never the sample pruner's `mode`
    assert options["alpagasus+random"]["token"] == {}
    assert options["random+sparsevlm"] == {"sample": {"mode": "epoch"}, "token": {}}


def test_the_default_worlds_judges_are_its_tiny_model_marked_as_a_stand_in():
    cfg = merge_over_default(CONFIGS / "config.yaml")
    assert cfg["method_options"]["alpagasus"] == {"judge": {"path": "world"}, "stand_in": True}
    assert cfg["method_options"]["ds2"]["rater"] == {"path": "world"}
