"""Intervals, paired differences, effective-budget flags, variants and controls in the tables,
on a fabricated results folder whose intervals can be enumerated by hand.

Items are 0/1, two documents (doc ids 0 and 1) per task, tasks ``arc`` (acc) and
``gsm`` (strict-match exact match); model ``tiny``; every trained group has two
*identical* seeds, so the seed draw changes nothing and each interval comes from
the item draw alone.  A task's mean over two items x, y is then x, (x+y)/2 or y
with probabilities 1/4, 1/2, 1/4, and its 95% percentile interval is [min, max];
``avg`` = (arc + gsm) / 2 with the two tasks drawn independently.

=================== ========= ========= =====  ============================================
group               arc       gsm       avg    paired Δ of avg [95% interval]
=================== ========= ========= =====  ============================================
base                [0, 0]    [0, 0]      0    vs full: -50 [-100, 0]
full                [1, 0]    [1, 0]     50
random+random       [1, 0]    [0, 0]     25    vs full: -25 [-50, 0]
q_tuning            [1, 0]    [1, 1]     75    vs full: +25 [0, 50]; vs rr: +50 [50, 50] *
q_tuning_l0         [1, 0]    [1, 0]     50    vs full: 0 [0, 0]; vs rr: +25 [0, 50]
oracle (control)    [1, 1]    [1, 1]    100    vs full: +50 [0, 100]; vs rr: +75 [50, 100] *
=================== ========= ========= =====  ============================================

E.g. q_tuning - random+random: arc differs by [0, 0] (always 0), gsm by
[1, 1] (always 100), so avg is 50 in every replicate: [50, 50], which excludes 0.
oracle - random+random: arc [0, 1] -> {0, 50, 100}, gsm always 100, avg {50, 75,
100}: [50, 100].  oracle - full: arc and gsm both [0, 1], avg in {0, 25, 50, 75,
100} with P(0) = 1/16 > 2.5%: [0, 100], not marked.

Resolvable difference: the half-widths of the avg intervals above (vs full: 50,
25, 25, 0, 50; vs random+random: 0, 25, 25), median 25 points.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from qtbench.cli import main
from qtbench.methods import registry
from qtbench.methods.base import SamplePruner
from qtbench.report.aggregate import aggregate, log_results
from qtbench.items import MissingItemsError
from qtbench.report.naming import infobatch_form, row_group, row_options
from tests.report.test_tables import FakeTracker, write_record, write_run

TASKS = [{"name": "arc"}, {"name": "gsm"}]
METRICS = {"arc": "acc,none", "gsm": "exact_match,strict-match"}
VARIANTS = {"q_tuning_l0": {"method": "q_tuning", "options": {"lambda": 0.0}}}

#: (method, budget, arc items, gsm items), in the order the records are given
#: (the variant before its base method: the table must still put it under q_tuning).
GROUPS = [
    ("full", "s1-t1", [1, 0], [1, 0]),
    ("q_tuning_l0", "s0.25-t0.5", [1, 0], [1, 0]),
    ("random+random", "s0.25-t0.5", [1, 0], [0, 0]),
    ("oracle", "s0.25-t0.5", [1, 1], [1, 1]),
    ("q_tuning", "s0.25-t0.5", [1, 0], [1, 1]),
]

#: effective token share per (method, seed): q_tuning's mean 15% vs a nominal 12.5% is +20% (flagged);
#: random+random's 13.75% is +10% exactly (not flagged: the rule is "more than 10%").
TOKENS = {("q_tuning", 0): 0.14, ("q_tuning", 1): 0.16, ("random+random", 0): 0.1375, ("random+random", 1): 0.1375}


class FakeOracle(SamplePruner):
    """Stands in for the ``oracle`` control: a sample pruner that reads ground-truth labels."""

    uses_ground_truth = True


@pytest.fixture()
def oracle(monkeypatch):
    registry.load_registry()  # discovery first, so that a real ``oracle`` is registered before we stand in for it
    monkeypatch.setitem(registry.SAMPLE_PRUNERS, "oracle", FakeOracle)


def record(method, budget, seed, arc, gsm):
    meta = {"run_id": f"tiny/{method}/{budget}/seed{seed}" if method != "base" else "tiny/base", "model": "tiny",
            "method": method, "budget": budget, "seed": seed}
    scores = {"arc": {"acc,none": {"value": sum(arc) / 2, "stderr": None}},
              "gsm": {"exact_match,strict-match": {"value": sum(gsm) / 2, "stderr": None}}}
    rows = [{"task": "arc", "doc_id": d, "filter": "none", "metrics": {"acc": float(v)}} for d, v in enumerate(arc)]
    rows += [{"task": "gsm", "doc_id": d, "filter": "strict-match", "metrics": {"exact_match": float(v)}}
             for d, v in enumerate(gsm)]
    return {"meta": meta, "scores": scores}, rows


def build(root: Path, *, without_items: str | None = None) -> dict:
    evals, runs = [], []
    for method, budget, arc, gsm in GROUPS:
        for seed in (0, 1):
            rec, rows = record(method, budget, seed, arc, gsm)
            path = root / "evals" / f"{method}-{seed}.json"
            evals.append(write_record(path, rec, items=path.name != without_items, rows=rows))
            tokens = TOKENS.get((method, seed), 1.0 if method == "full" else 0.125)
            runs.append(write_run(root, method, budget, seed, summary_extra={
                "effective_sample_fraction": 0.25 if method != "full" else 1.0,
                "effective_token_fraction": tokens, "flops_relative": 0.3 if method != "full" else 1.0}))
    rec, rows = record("base", None, None, [0, 0], [0, 0])
    evals.append(write_record(root / "evals" / "base.json", rec, rows=rows))
    return {"evals": evals, "runs": runs}


@pytest.fixture()
def tables(tmp_path, oracle):
    experiment = build(tmp_path)
    out = tmp_path / "tables"
    result = aggregate(experiment["evals"], TASKS, out, run_dirs=experiment["runs"], variants=VARIANTS,
                       method_options={"q_tuning": {}})
    return result, out


def avg_row(main, method):
    rows = main[(main.method == method) & (main.column == "avg") & (main.total_budget == "0.125")]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_intervals_and_paired_differences_by_hand(tables):
    result, _ = tables
    main = result["main"]
    expected = {  # method: (mean, low, high, Δ full, low, high, significant, Δ rr, low, high, significant)
        "base": (0, 0, 0, -50, -100, 0, False, None),
        "random+random": (25, 0, 50, -25, -50, 0, False, None),
        "q_tuning": (75, 50, 100, 25, 0, 50, False, (50, 50, 50, True)),
        "q_tuning_l0": (50, 0, 100, 0, 0, 0, False, (25, 0, 50, False)),
        "oracle": (100, 100, 100, 50, 0, 100, False, (75, 50, 100, True)),
    }
    for method, (mean, low, high, d, dl, dh, sig, random) in expected.items():
        row = avg_row(main, method)
        assert (row["mean"], row["low"], row["high"]) == pytest.approx((mean, low, high)), method
        assert (row["delta_full"], row["delta_full_low"], row["delta_full_high"]) == pytest.approx((d, dl, dh)), method
        assert row["delta_full_significant"] is sig, method
        if random is None:
            assert pd.isna(row["delta_random"]), method
        else:
            got = (row["delta_random"], row["delta_random_low"], row["delta_random_high"])
            assert got == pytest.approx(random[:3]) and row["delta_random_significant"] is random[3], method
    full = avg_row(main, "full")
    assert pd.isna(full["delta_full"]) and pd.isna(full["delta_random"])
    # per task too: q_tuning's gsm is [1, 1] (no spread), its arc [1, 0] spans [0, 100]
    gsm = main[(main.method == "q_tuning") & (main.column == "gsm")].iloc[0]
    assert (gsm["mean"], gsm["low"], gsm["high"]) == pytest.approx((100, 100, 100))
    assert (gsm["delta_random"], gsm["delta_random_low"], gsm["delta_random_high"]) == pytest.approx((100, 100, 100))


def test_significance_marks_and_caption_in_every_format(tables):
    _, out = tables
    md = (out / "main.md").read_text()
    assert "| **75.00 [50.0, 100.0]** | +25.00 [+0.0, +50.0] | +50.00 [+50.0, +50.0] * |" in md
    assert "| +50.00 [+0.0, +100.0] | +75.00 [+50.0, +100.0] * |" in md  # oracle
    assert "| 25.00 [0.0, 50.0] | -25.00 [-50.0, +0.0] |  |" in md  # random+random: no mark, no self-comparison
    caption = "Smallest resolvable difference (half-width of the median paired interval on the average): 25.00 points."
    procedure = "bootstrap (2000 replicates) resampling seeds and, within each task, items"
    for name in ("main.md", "main.tex", "main.html", "budget.md", "budget.tex", "budget.html", "comparison.md",
                 "comparison.tex", "comparison.html"):
        text = (out / name).read_text()
        assert caption in text and procedure in text, name
    tex = (out / "main.tex").read_text()
    assert r"\caption{" in tex and r"+50.00 [+50.0, +50.0] * \\" in tex
    assert "+50.00 [+50.0, +50.0] *</td>" in (out / "main.html").read_text()
    csv = pd.read_csv(out / "budget.csv").set_index("method")
    assert csv.loc["q_tuning", "delta_random_significant"] == True  # noqa: E712 (numpy bool from the CSV)
    assert csv.loc["q_tuning", "avg_low"] == 50 and csv.loc["q_tuning", "avg_high"] == 100
    comparison = pd.read_csv(out / "comparison.csv").set_index("method")
    assert comparison.loc["oracle", "gsm_low"] == 100 and comparison.loc["base", "avg_high"] == 0


def test_effective_budget_flag(tables):
    result, out = tables
    q = avg_row(result["main"], "q_tuning")
    assert q["eff_tokens_pct"] == pytest.approx(15.0) and q["nominal_pct"] == pytest.approx(12.5)
    assert q["budget_deviation_pct"] == pytest.approx(20.0) and q["budget_flag"]
    rr = avg_row(result["main"], "random+random")
    assert rr["budget_deviation_pct"] == pytest.approx(10.0) and not rr["budget_flag"]
    note = "tiny, q_tuning 25%×50%: effective token share 15.0% vs nominal 12.5% (+20%; samples 25.0%; FLOPs 30.0%)."
    md = (out / "main.md").read_text()
    assert "| 25.0 / 15.0 / 30.0 †1 |" in md and f"†1 {note}" in md
    assert "| 25.0 / 13.8 / 30.0 |" in md  # random+random: not flagged
    assert f"†1 {note}" in (out / "main.html").read_text()
    assert r"\textsuperscript{\dag{}1} tiny, q\_tuning 25\%$\times$50\%: effective token share 15.0\% vs nominal 12.5\% (+20\%" \
        in (out / "main.tex").read_text()
    assert "| 15.0 †1 |" in (out / "budget.md").read_text()
    budget = pd.read_csv(out / "budget.csv").set_index("method")
    assert bool(budget.loc["q_tuning", "budget_flag"]) and not bool(budget.loc["random+random", "budget_flag"])
    assert budget.loc["q_tuning", "budget_deviation_pct"] == pytest.approx(20.0)


def test_variant_under_its_base_method_and_control_never_bold(tables):
    result, out = tables
    main = result["main"]
    block = main[(main.total_budget == "0.125") & (main.column == "avg")]
    # the variant's records came first, yet it sits right under q_tuning; the control has its own group, last
    assert list(block.method) == ["base", "full", "random+random", "q_tuning", "q_tuning_l0", "oracle"]
    assert list(block.group) == ["base", "full", "joint", "joint", "joint", "controls"]
    assert block.set_index("method").loc["q_tuning_l0", "options"] == "variant of q_tuning: lambda=0.0"
    # oracle's 100 is the highest avg, but a control is never best: q_tuning's 75 is
    assert set(block[block.best].method) == {"q_tuning"}
    assert not main[main.method == "oracle"]["best"].any()
    md = (out / "main.md").read_text()
    assert "| Sample + token | random+random |  | 25%×50% |" in md
    assert "|  | q_tuning_l0 | variant of q_tuning: lambda=0.0 | 25%×50% |" in md
    assert "| Controls (use ground-truth labels) | oracle |  | 25%×50% | 25.0 / 12.5 / 30.0 | 100.00 [100.0, 100.0] |" in md
    assert "| **100.00 [100.0, 100.0]** | **75.00 [50.0, 100.0]** |" in md  # q_tuning: best gsm and avg


def test_wandb_tables_carry_intervals_and_effective_budgets(tables):
    result, _ = tables
    tracker = FakeTracker()
    log_results(tracker, result)
    wide = tracker.tables["tables/main"]
    row = wide[(wide.method == "q_tuning") & (wide.total_budget == "0.125")].iloc[0]
    assert (row["avg"], row["avg_low"], row["avg_high"]) == pytest.approx((75, 50, 100))
    assert row["delta_random"] == pytest.approx(50) and row["delta_random_significant"] is True
    assert row["eff_tokens_pct"] == pytest.approx(15.0) and bool(row["budget_flag"])
    assert row["options"] == "" and "delta_full_low" in tracker.tables["tables/budget"].columns


def test_missing_items_file_is_named_with_the_rebuild_command(tmp_path, oracle, capsys):
    experiment = build(tmp_path, without_items="q_tuning-1.json")
    with pytest.raises(MissingItemsError, match=r"q_tuning-1\.items\.jsonl does not exist.*snakemake --forcerun evaluate"):
        aggregate(experiment["evals"], TASKS, tmp_path / "tables", run_dirs=experiment["runs"], variants=VARIANTS)
    assert not (tmp_path / "tables").exists()  # nothing written, nothing dropped
    code = main(["aggregate", "--evals", *map(str, experiment["evals"]), "--tasks", json.dumps(TASKS),
                 "--out", str(tmp_path / "tables"), "--variants", json.dumps(VARIANTS)])
    assert code == 2 and "q_tuning-1.items.jsonl does not exist" in capsys.readouterr().err


def test_bootstrap_is_reproducible_and_takes_its_replicates(tmp_path, oracle):
    experiment = build(tmp_path)
    kwargs = {"run_dirs": experiment["runs"], "variants": VARIANTS}
    first = aggregate(experiment["evals"], TASKS, tmp_path / "a", n_resamples=500, **kwargs)["intervals"]
    again = aggregate(experiment["evals"], TASKS, tmp_path / "b", n_resamples=500, **kwargs)["intervals"]
    pd.testing.assert_frame_equal(first, again)
    assert "bootstrap (500 replicates)" in (tmp_path / "a" / "main.md").read_text()
    assert (tmp_path / "a" / "main.md").read_text() == (tmp_path / "b" / "main.md").read_text()


def test_row_options_infobatch_form_and_controls_group(oracle):
    assert row_options("infobatch+ppl", {"infobatch": {"budget_forced": True}}) == "InfoBatch: budget forced"
    assert row_options("infobatch+ppl", {}) == "InfoBatch: paper form"
    assert infobatch_form("q_tuning") == "" and row_options("q_tuning") == ""
    variants = {"ib_forced": {"method": "infobatch", "options": {"budget_forced": True}}}
    assert row_options("ib_forced+ppl", {}, variants) == ("variant of infobatch+ppl: infobatch.budget_forced=true; "
                                                          "InfoBatch: budget forced")
    assert registry.uses_ground_truth("oracle") and registry.uses_ground_truth("oracle+rho1")
    assert not registry.uses_ground_truth("random+random") and not registry.uses_ground_truth("q_tuning")
    assert row_group("oracle") == "controls" and row_group("q_tuning_l0", VARIANTS) == "joint"


def test_items_that_do_not_reproduce_the_score_are_refused(tmp_path, oracle):
    experiment = build(tmp_path)
    record_path = experiment["evals"][0]  # full, seed 0: arc [1, 0] scored 0.5
    items = record_path.with_name(record_path.name.replace(".json", ".items.jsonl"))
    items.write_text(items.read_text().replace('"acc": 0.0', '"acc": 1.0'))
    with pytest.raises(ValueError, match=r"full-0\.json: task 'arc', metric 'acc,none': the mean over its 2 items is "
                                         r"100\.000000 points but the record says 50\.000000"):
        aggregate(experiment["evals"], TASKS, tmp_path / "tables", run_dirs=experiment["runs"], variants=VARIANTS)
