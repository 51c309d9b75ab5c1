"""``qtbench compare`` on a fabricated results folder whose intervals can be enumerated by hand.

Items are 0/1.  Layout (experiment ``exp``, model ``tiny``), doc ids 10 and 11 in
both tasks:

* ``q_tuning@s0.25-t0.5``, seeds 0 and 1 (identical): arc [1, 1], gsm [1, 1];
* ``random+random@s0.25-t0.5``, seeds 0 and 1 (identical): arc [1, 0], gsm [0, 0];
* ``full`` (s1-t1), seed 0: arc [1, 0], gsm [1, 0];
* ``base``: arc [0, 0], gsm [0, 0].

Identical seeds make the seed draw irrelevant, so each interval comes from the
item draw alone: a mean over two items x, y is x, (x+y)/2 or y with
probabilities 1/4, 1/2, 1/4 and its 95% percentile interval is [min, max].
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from qtbench.cli import main
from qtbench.report.compare import SelectorError, compare, find_records, parse_selector

TASKS = {"world_arc_easy": "acc,none", "world_gsm8k": "exact_match,strict-match"}
DOCS = (10, 11)


def write_eval(path: Path, outcomes: dict[str, list[float]], *, items: bool = True, score_shift: float = 0.0) -> None:
    """An evaluation record (as qtbench.evaluate writes it) and its items file."""
    scores, rows = {}, []
    for task, values in outcomes.items():
        metric, filt = TASKS[task].split(",")
        scores[task] = {TASKS[task]: {"value": sum(values) / len(values) + score_shift, "stderr": None},
                        f"other,{filt}": {"value": 0.5, "stderr": None}}
        rows += [{"task": task, "doc_id": d, "filter": filt, "metrics": {metric: v, "other": 0.5}}
                 for d, v in zip(DOCS, values)]
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"meta": {}, "scores": scores,
              "eval_config": {"tasks": [{"name": "world_arc_easy"},
                                        {"name": "world_gsm8k", "metric": "exact_match,strict-match"}]}}
    path.write_text(json.dumps(record))
    if items:
        path.with_name(path.name.replace(".json", ".items.jsonl")).write_text(
            "".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def results(tmp_path) -> Path:
    evals = tmp_path / "results" / "exp" / "evals" / "tiny"
    for seed in (0, 1):
        write_eval(evals / "q_tuning" / "s0.25-t0.5" / f"seed{seed}.json",
                   {"world_arc_easy": [1, 1], "world_gsm8k": [1, 1]})
        write_eval(evals / "random+random" / "s0.25-t0.5" / f"seed{seed}.json",
                   {"world_arc_easy": [1, 0], "world_gsm8k": [0, 0]})
    write_eval(evals / "full" / "s1-t1" / "seed0.json", {"world_arc_easy": [1, 0], "world_gsm8k": [1, 0]})
    write_eval(evals / "base.json", {"world_arc_easy": [0, 0], "world_gsm8k": [0, 0]})
    (evals / "q_tuning" / "s0.25-t0.5" / ".seed0.json.abc.tmp").write_text("{")  # a half-written file: ignored
    return tmp_path / "results"


EXPECTED = """\
| task | items | q_tuning@s0.25-t0.5 (2 seeds) | random+random@s0.25-t0.5 (2 seeds) | Δ random+random@s0.25-t0.5 − q_tuning@s0.25-t0.5 |
|---|---:|---:|---:|---:|
| world_arc_easy (acc,none) | 2 | 100.00 [100.00, 100.00] | 50.00 [0.00, 100.00] | -50.00 [-100.00, +0.00] |
| world_gsm8k (exact_match,strict-match) | 2 | 100.00 [100.00, 100.00] | 0.00 [0.00, 0.00] | -100.00 [-100.00, -100.00] * |
| average | 4 | 100.00 [100.00, 100.00] | 25.00 [0.00, 50.00] | -75.00 [-100.00, -50.00] * |
"""


def test_compare_cli_prints_the_hand_computed_table(results, capsys, tmp_path):
    csv = tmp_path / "cmp.csv"
    code = main(["compare", "--experiment", "exp", "--results-dir", str(results), "q_tuning@s0.25-t0.5",
                 "random+random@s0.25-t0.5", "--csv", str(csv)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(EXPECTED)
    # avg difference in [-100, -50]: half-width 25 is the resolvable difference
    assert "95% intervals: bootstrap (2000 replicates)" in out
    assert "Smallest resolvable difference (half-width of the median paired interval on the average): 25.00 points." in out
    assert "q_tuning@s0.25-t0.5: seeds 0, 1; random+random@s0.25-t0.5: seeds 0, 1" in out
    tidy = pd.read_csv(csv)
    row = tidy[(tidy["selector"] == "random+random@s0.25-t0.5") & (tidy["task"] == "avg")].iloc[0]
    assert (row["mean"], row["low"], row["high"]) == (25.0, 0.0, 50.0)
    assert (row["delta"], row["delta_low"], row["delta_high"], row["significant"]) == (-75.0, -100.0, -50.0, True)


def test_three_groups_each_against_the_first(results):
    out = compare(results, "exp", ["full", "q_tuning@s0.25-t0.5:tiny", "base"])
    assert [g.label for g in out.groups] == ["full", "q_tuning@s0.25-t0.5:tiny", "base"]
    q_vs_full, base_vs_full = out.differences
    # q_tuning - full: arc items [0, 1] -> 50 in [0, 100]; gsm items [0, 1] -> 50 in [0, 100]
    assert q_vs_full.loc["world_arc_easy", ["delta", "low", "high"]].tolist() == [50.0, 0.0, 100.0]
    assert not q_vs_full.loc["world_arc_easy", "significant"]
    # avg = mean of two independent {0, 50, 100} draws: 50, and its 2.5% quantile is 0 (1/16 of the mass)
    assert q_vs_full.loc["avg", ["delta", "low", "high"]].tolist() == [50.0, 0.0, 100.0]
    assert base_vs_full.loc["world_gsm8k", ["delta", "low", "high"]].tolist() == [-50.0, -100.0, 0.0]
    assert out.scores[0].loc["avg", "mean"] == 50.0 and out.scores[0].loc["avg", "n_seeds"] == 1
    text = out.to_markdown()
    assert "| full (1 seed) | q_tuning@s0.25-t0.5:tiny (2 seeds) | base (zero-shot) |" in text
    assert "One seed for full, base: those intervals cover test-item noise only" in text
    assert "Δ base − full" in text


def test_mean_over_seeds(tmp_path):
    evals = tmp_path / "exp" / "evals" / "tiny" / "q_tuning" / "s0.25-t0.5"
    for seed, arc in enumerate(([1, 1], [1, 0], [0, 0])):
        write_eval(evals / f"seed{seed}.json", {"world_arc_easy": arc, "world_gsm8k": [1, 0]})
    write_eval(tmp_path / "exp" / "evals" / "tiny" / "base.json", {"world_arc_easy": [0, 0], "world_gsm8k": [0, 0]})
    out = compare(tmp_path, "exp", ["q_tuning", "base"])
    assert out.scores[0].loc["world_arc_easy", "mean"] == 50.0  # (100 + 50 + 0) / 3
    assert out.scores[0].loc["avg", "mean"] == 50.0
    assert out.differences[0].loc["avg", "delta"] == -50.0  # base - q_tuning


def test_find_records(results):
    records = find_records(results / "exp" / "evals")
    assert set(map(tuple, records[["method", "budget", "seed"]].values.tolist())) == {
        ("base", None, None), ("full", "s1-t1", 0), ("q_tuning", "s0.25-t0.5", 0),
        ("q_tuning", "s0.25-t0.5", 1), ("random+random", "s0.25-t0.5", 0), ("random+random", "s0.25-t0.5", 1)}
    assert set(records["model"]) == {"tiny"}


def test_selector_syntax():
    assert parse_selector("q_tuning@s0.25-t0.5:tiny").text == "q_tuning@s0.25-t0.5:tiny"
    selector = parse_selector("random+random@s0.125-t1")
    assert (selector.method, selector.budget, selector.model) == ("random+random", "s0.125-t1", None)
    for bad in ("q_tuning@0.25", "Q@s1-t1", "q_tuning@s0.25-t0.5:", "base@s1-t1"):
        with pytest.raises(SelectorError, match=re.escape(bad)):
            parse_selector(bad)


def test_unknown_and_ambiguous_selectors_list_what_exists(results, capsys):
    code = main(["compare", "--experiment", "exp", "--results-dir", str(results), "q_tuning@s0.5-t0.5", "full"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no finished evaluation matches 'q_tuning@s0.5-t0.5'" in err
    assert ("available: base:tiny, full@s1-t1:tiny (1 seed), q_tuning@s0.25-t0.5:tiny (2 seeds), "
            "random+random@s0.25-t0.5:tiny (2 seeds)") in err
    write_eval(results / "exp" / "evals" / "tiny" / "q_tuning" / "s0.5-t0.5" / "seed0.json",
               {"world_arc_easy": [1, 1], "world_gsm8k": [1, 1]})
    with pytest.raises(SelectorError, match=r"'q_tuning' is ambiguous.*q_tuning@s0.25-t0.5:tiny \(2 seeds\), "
                                            r"q_tuning@s0.5-t0.5:tiny \(1 seed\)"):
        compare(results, "exp", ["q_tuning", "full"])
    with pytest.raises(SelectorError, match="at least two selectors"):
        compare(results, "exp", ["full"])
    with pytest.raises(FileNotFoundError, match="no finished evaluations"):
        compare(results, "nope", ["full", "base"])


def test_a_record_without_items_names_the_file_and_the_rebuild(results, capsys):
    record = results / "exp" / "evals" / "tiny" / "full" / "s1-t1" / "seed0.json"
    record.with_name("seed0.items.jsonl").unlink()
    code = main(["compare", "--experiment", "exp", "--results-dir", str(results), "full", "base"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{record.with_name('seed0.items.jsonl')} does not exist" in err
    assert "snakemake --forcerun evaluate evaluate_base" in err


def test_items_that_do_not_reproduce_the_score_are_refused(results):
    write_eval(results / "exp" / "evals" / "tiny" / "full" / "s1-t1" / "seed0.json",
               {"world_arc_easy": [1, 0], "world_gsm8k": [1, 0]}, score_shift=0.1)
    with pytest.raises(ValueError, match=r"seed0.json: task 'world_arc_easy', metric 'acc,none': the mean over its "
                                         r"2 items is 50.000000 points but the record says 60.000000"):
        compare(results, "exp", ["full", "base"])


def test_groups_scored_on_different_items_are_refused(results):
    items = results / "exp" / "evals" / "tiny" / "base.items.jsonl"
    items.write_text(items.read_text().replace('"doc_id": 11', '"doc_id": 12'))
    with pytest.raises(ValueError, match=r"task 'world_arc_easy': the two sides were not scored on the same items"):
        compare(results, "exp", ["full", "base"])


def test_task_subset_and_paired_seeds(results, capsys):
    code = main(["compare", "q_tuning@s0.25-t0.5", "random+random@s0.25-t0.5", "--experiment", "exp",
                 "--results-dir", str(results), "--tasks", "world_gsm8k", "--pair-seeds", "--n-resamples", "500"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| world_gsm8k (exact_match,strict-match) | 2 | 100.00 [100.00, 100.00] | 0.00 [0.00, 0.00] | " \
           "-100.00 [-100.00, -100.00] * |" in out
    assert "world_arc_easy" not in out
    assert "bootstrap (500 replicates)" in out


def test_item_scores_of_a_group_for_the_tables(results):
    from qtbench.report.compare import item_scores

    runs = results / "exp" / "evals" / "tiny" / "random+random" / "s0.25-t0.5"
    scores = item_scores({0: runs / "seed0.json", 1: runs / "seed1.json"}, TASKS)
    assert list(scores) == list(TASKS)
    arc = scores["world_arc_easy"]
    assert arc.index.tolist() == [0, 1] and arc.columns.tolist() == [10, 11]
    assert arc.values.tolist() == [[100.0, 0.0], [100.0, 0.0]]
    (runs / "seed1.items.jsonl").write_text((runs / "seed1.items.jsonl").read_text().replace('"doc_id": 11', '"doc_id": 12'))
    with pytest.raises(ValueError, match=r"random: the seeds' records were not scored on the same items of task "
                                         r"'world_arc_easy'"):
        item_scores({0: runs / "seed0.json", 1: runs / "seed1.json"}, TASKS, "random")
