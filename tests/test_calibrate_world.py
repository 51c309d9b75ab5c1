"""``benchmarks/calibrate_world.py --report-only`` on a fabricated results folder.

0/1 items, doc ids 10 and 11 per task, one seed per group (so each interval
comes from the item draw alone; see tests/report/test_compare.py):

* base: arc [0, 0], gsm [0, 0] -> 0;  full: arc [1, 1], gsm [1, 1] -> 100;
* random+random 25%x50%: arc [1, 1], gsm [1, 0] -> 75;
* oracle at full size: as full; oracle at 12.5%: as full; anti_oracle at 12.5%: all 0.

a. share R / F = 0.75; the gsm draw g in {0, 1/2, 1} makes R - s F = (1 + g) / 2 - s,
   whose interval [1/2 - s, 1 - s] holds 0 for s in [0.5, 1.0]: outside the 50-90% band.
b. oracle - full = 0 [0, 0]: not above 0.
c. oracle - random = (1 - g) / 2 in {0, 25, 50} points: [0, 50], not resolved;
   random - anti_oracle = (1 + g) / 2 in {50, 75, 100}: [50, 100], holds.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.calibrate_world import main
from tests.report.test_compare import write_eval


@pytest.fixture()
def results(tmp_path):
    evals = tmp_path / "exp" / "evals" / "tiny"
    ones, zeros = {"world_arc_easy": [1, 1], "world_gsm8k": [1, 1]}, {"world_arc_easy": [0, 0], "world_gsm8k": [0, 0]}
    write_eval(evals / "base.json", zeros)
    write_eval(evals / "full" / "s1-t1" / "seed0.json", ones)
    write_eval(evals / "random+random" / "s0.25-t0.5" / "seed0.json", {"world_arc_easy": [1, 1], "world_gsm8k": [1, 0]})
    write_eval(evals / "oracle" / "s1-t1" / "seed0.json", ones)
    write_eval(evals / "oracle" / "s0.125-t1" / "seed0.json", ones)
    write_eval(evals / "anti_oracle" / "s0.125-t1" / "seed0.json", zeros)
    return tmp_path


def test_report_only_prints_the_hand_computed_targets(results, capsys):
    status = main(["--report-only", "--results-dir", str(results), "--experiment", "exp", "--no-auroc",
                   "--seeds", "1", "--n-resamples", "400"])
    assert status == 0
    report = json.loads((results / "exp" / "calibration.json").read_text())
    a, b, c_oracle, c_anti = report["targets"]
    assert a["estimate"] == pytest.approx(0.75)
    assert (a["low"], a["high"], a["holds"]) == (pytest.approx(0.5), pytest.approx(1.0), False)
    assert (b["estimate"], b["low"], b["high"], b["holds"]) == (0.0, 0.0, 0.0, False)
    assert (c_oracle["estimate"], c_oracle["low"], c_oracle["high"], c_oracle["holds"]) == (25.0, 0.0, 50.0, False)
    assert (c_anti["estimate"], c_anti["low"], c_anti["high"], c_anti["holds"]) == (75.0, 50.0, 100.0, True)
    out = capsys.readouterr().out
    assert "a. share of full's gain" in out and "75% [50%, 100%]" in out and "holds" in out


def test_report_only_without_items_says_what_is_missing(results, capsys):
    for items in (results / "exp" / "evals").rglob("*.items.jsonl"):
        items.unlink()
    status = main(["--report-only", "--results-dir", str(results), "--experiment", "exp", "--no-auroc", "--seeds", "1"])
    assert status == 2
    assert "a-c: not computed" in capsys.readouterr().out


NO_REFUSALS = {"random": 0.10, "wrong_answer": 0.10, "truncated": 0.05, "refusal": 0.0}


@pytest.mark.parametrize("name, epochs, eval_items, noise, duplicates", [
    ("epochs4", 4, 200, NO_REFUSALS, 0.15),
    ("epochs8", 8, 200, NO_REFUSALS, 0.15),
    ("eval300_epochs3", 3, 300, NO_REFUSALS, 0.15),
    ("wrong_answers_30", 2, 300, {**NO_REFUSALS, "wrong_answer": 0.30}, 0.15),
    ("refusals_15", 2, 200, {"random": 0.05, "wrong_answer": 0.05, "truncated": 0.05, "refusal": 0.15}, 0.05),
    ("refusals_10_with_default_noise", 2, 200, {**NO_REFUSALS, "refusal": 0.10}, 0.15),
    ("refusals_10_eval300", 2, 300, {"random": 0.05, "wrong_answer": 0.05, "truncated": 0.05, "refusal": 0.10}, 0.05),
])
def test_shipped_overlays_are_valid_calibration_configs(name, epochs, eval_items, noise, duplicates):
    """Each measured try in benchmarks/calibration/ (README, tries not adopted) merges
    over the default into a valid config on the calibration grid, with the world it was
    measured on (its noise mix pinned, whatever the default's is now) and the default
    regime (lr 3e-4, every fact in the corpus) otherwise."""
    import yaml

    from benchmarks.calibrate_world import REPO, calibration_config
    from qtbench.world.generate import resolve_config

    overlay = yaml.safe_load((REPO / "benchmarks" / "calibration" / f"{name}.yaml").read_text())
    config = calibration_config(overlay, 3, name, "results_calibration")
    assert config["methods"] == ["full", "random+random", "oracle", "anti_oracle"]
    assert config["seeds"] == [0, 1, 2]
    assert (config["train"]["epochs"], config["train"]["lr"]) == (epochs, 3.0e-4)
    world = resolve_config(config["world"])
    assert (world["n_eval_per_task"], world["noise"], world["duplicate_rate"], world["corpus_coverage"]) == \
        (eval_items, noise, duplicates, 1.0)
