"""Tables from hand-built evaluation records and run folders: every number checked by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from qtbench.paper_numbers import ablation_reference
from qtbench.report.aggregate import TABLE_STEMS, aggregate, log_results, main_wide, table_files
from qtbench.report.naming import budget_label, percent, split_budget
from qtbench.report.render import TABLE_FORMATS, format_mean_std, to_latex, to_markdown
from qtbench.report.runs import effective_budget_from_trace, effective_budget_table, load_run
from qtbench.report.tables import (
    PAPER_REFERENCE,
    budget_table,
    comparison_table,
    long_table,
    main_display,
    main_table,
    paper_reference_table,
    runs_table,
)


#: Items per task in the fabricated per-item files: every score below is a multiple of 1 / N_ITEMS.
N_ITEMS = 100


def items_rows(rec, n_items=N_ITEMS):
    """Per-item rows reproducing a record's scores: for a metric scored v, the
    first round(v * n) documents score 1, the rest 0 (every task and metric)."""
    by_doc = {}
    for task, metrics in rec["scores"].items():
        for key, score in metrics.items():
            name, _, filt = key.partition(",")
            ones = round(score["value"] * n_items)
            assert abs(ones / n_items - score["value"]) < 1e-12, (task, key)
            for doc in range(n_items):
                by_doc.setdefault((task, filt, doc), {})[name] = 1.0 if doc < ones else 0.0
    return [{"task": t, "doc_id": d, "filter": f, "metrics": m} for (t, f, d), m in by_doc.items()]


def write_record(path: Path, rec, items=True, rows=None) -> Path:
    """An evaluation record and (unless ``items`` is false) its per-item file beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    if items:
        rows = items_rows(rec) if rows is None else rows
        path.with_name(path.name[:-len(".json")] + ".items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def record(run_id, method, scores, budget="s0.25-t0.5", seed=0, model="tiny"):
    return {"meta": {"run_id": run_id, "model": model, "method": method, "budget": budget, "seed": seed},
            "scores": {task: {metric: {"value": v, "stderr": None} for metric, v in metrics.items()}
                       for task, metrics in scores.items()}}


RECORDS = [
    record("tiny/full/s1-t1/seed0", "full", {"arc": {"acc,none": 0.50, "acc_norm,none": 0.55},
                                             "gsm": {"exact_match,strict-match": 0.10, "exact_match,flexible-extract": 0.2},
                                             "squad": {"exact_match,none": 0.3, "f1,none": 0.40}}, budget="s1-t1"),
    record("tiny/q_tuning/s0.25-t0.5/seed0", "q_tuning", {"arc": {"acc,none": 0.60, "acc_norm,none": 0.5},
                                                          "gsm": {"exact_match,strict-match": 0.25},
                                                          "squad": {"exact_match,none": 0.35, "f1,none": 0.5}}),
]


def test_long_table_rows():
    frame = long_table(RECORDS)
    assert len(frame) == 6 + 5  # full: 2 + 2 + 2 metrics, q_tuning: 2 + 1 + 2
    row = frame[(frame.method == "q_tuning") & (frame.metric == "f1,none")].iloc[0]
    assert row["value"] == 0.5 and row["task"] == "squad" and row["budget"] == "s0.25-t0.5"
    assert row["r_s"] == "0.25" and row["r_t"] == "0.5" and row["total_budget"] == "0.125"


def test_comparison_uses_primary_metrics_and_average():
    wide = comparison_table(long_table(RECORDS), ["arc", "gsm", "squad"]).set_index("method")
    # arc -> acc, gsm -> strict-match, squad -> f1 (no acc/strict-match there)
    assert wide.loc["full", "arc"] == pytest.approx(50.0)
    assert wide.loc["full", "gsm"] == pytest.approx(10.0)
    assert wide.loc["full", "squad"] == pytest.approx(40.0)
    assert wide.loc["full", "avg"] == pytest.approx((50 + 10 + 40) / 3)
    assert wide.loc["q_tuning", "avg"] == pytest.approx((60 + 25 + 50) / 3)


def test_chosen_metric_wins():
    wide = comparison_table(long_table(RECORDS), ["squad"], {"squad": "exact_match,none"}).set_index("method")
    assert wide.loc["q_tuning", "squad"] == pytest.approx(35.0)
    with pytest.raises(KeyError, match="not in the results"):
        comparison_table(long_table(RECORDS), ["squad"], {"squad": "bleu,none"})


def test_markdown_and_latex():
    frame = pd.DataFrame({"method": ["full", "q_tuning"], "avg": [33.333, 45.0]})
    assert to_markdown(frame) == "| method | avg |\n|---|---:|\n| full | 33.33 |\n| q_tuning | 45.00 |\n"
    tex = to_latex(frame, bold={"avg": 45.0})
    assert r"\toprule" in tex and r"q\_tuning & \textbf{45.00} \\" in tex and r"full & 33.33 \\" in tex


def test_budget_strings_are_exact():
    assert split_budget("s0.25-t0.5") == ("0.25", "0.5", "0.125")
    assert split_budget("s0.125-t0.7") == ("0.125", "0.7", "0.0875")
    assert split_budget(None) is None
    assert percent("0.0875") == "8.75%" and percent("1") == "100%"
    assert budget_label("s0.125-t0.5") == "12.5%×50%"
    assert format_mean_std(45.0, float("nan")) == "45.00"
    assert format_mean_std(45.0, 0.123) == "45.00 ± 0.12"


# --------------------------------------------------------------------------- a hand-built experiment

TASKS = [{"name": "arc"}, {"name": "gsm"}]


def two_task(arc, gsm):
    return {"arc": {"acc,none": arc}, "gsm": {"exact_match,strict-match": gsm}}


#: (method, budget, seed, arc, gsm) -> avg = (100 arc + 100 gsm) / 2
RUNS = [
    ("full", "s1-t1", 0, 0.50, 0.10),            # 30
    ("full", "s1-t1", 1, 0.60, 0.20),            # 40  -> full: avg 35 ± 7.0711, arc 55 ± 7.0711, gsm 15 ± 7.0711
    ("random", "s0.125-t1", 0, 0.52, 0.12),      # 32  -> -8.5714 %
    ("rho1", "s1-t0.125", 0, 0.68, 0.22),        # 45  -> +28.5714 %; arc 68 ties q_tuning's 68
    ("random+random", "s0.25-t0.5", 0, 0.55, 0.15),  # 35 -> 0 %
    ("q_tuning", "s0.25-t0.5", 0, 0.70, 0.30),   # 50
    ("q_tuning", "s0.25-t0.5", 1, 0.66, 0.30),   # 48  -> avg 49 ± 1.4142 (+40 %), arc 68 ± 2.8284, gsm 30 ± 0
    ("q_tuning", "s0.5-t0.5", 0, 0.70, 0.40),    # 55, alone in the 25 % block
]
BASE = record("tiny/base", "base", two_task(0.90, 0.05), budget=None, seed=None)  # arc 90: never bold

#: effective fractions written into each run's train_summary.json (seed-specific for q_tuning)
EFFECTIVE = {
    ("full", 0): (1.0, 1.0, 1.0), ("full", 1): (1.0, 1.0, 1.0),
    ("random", 0): (0.125, 0.125, 0.125),
    ("rho1", 0): (1.0, 0.125, 0.9),
    ("q_tuning", 0): (0.25, 0.12, 0.40), ("q_tuning", 1): (0.27, 0.14, 0.42),
}


def write_run(root: Path, method, budget, seed, *, summary_extra=None, trace=None, model="tiny") -> Path:
    run_dir = root / "runs" / model / method / budget / f"seed{seed}" / "checkpoint"
    run_dir.mkdir(parents=True)
    r_s, r_t, total = split_budget(budget)
    summary = {"run_id": f"{model}/{method}/{budget}/seed{seed}", "model": model, "method": method, "budget": budget,
               "seed": seed, "r_s": float(r_s), "r_t": float(r_t), "total_budget": float(total), "epochs": 1,
               "n_records": 8, "optimizer_steps": 2}
    summary.update(summary_extra or {})
    (run_dir / "train_summary.json").write_text(json.dumps(summary))
    (run_dir / "trace.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (trace or [])))
    return run_dir


#: A known trace (random+random, whose summary lacks the effective fields):
#: 3 of 8 records and 15 of 70 response tokens carried loss.
KNOWN_TRACE = [
    {"step": 0, "micro_batch": 0, "epoch": 0, "batch_size": 4, "samples_kept": 1, "response_tokens": 40,
     "response_tokens_kept": 5, "loss": 1.0},
    {"step": 1, "micro_batch": 1, "epoch": 0, "batch_size": 4, "samples_kept": 2, "response_tokens": 30,
     "response_tokens_kept": 10, "loss": 1.0},
]


def build_experiment(root: Path, trace_for=None, world_meta=None) -> dict:
    """Evaluation records and checkpoint folders of :data:`RUNS` under ``root``.
    ``trace_for`` maps (method, budget, seed) to the run's trace rows (with
    per-sample decisions) in place of the default trace."""
    root = Path(root)
    evals, run_dirs = [], []
    trace_for = trace_for or {}
    for method, budget, seed, arc, gsm in RUNS:
        path = root / "evals" / f"{method}-{budget}-{seed}.json"
        evals.append(write_record(path, record(f"tiny/{method}/{budget}/seed{seed}", method, two_task(arc, gsm), budget,
                                               seed)))
        extra, trace = None, None
        if (method, seed) in EFFECTIVE and not (method == "q_tuning" and budget == "s0.5-t0.5"):
            s, t, f = EFFECTIVE[(method, seed)]
            extra = {"effective_sample_fraction": s, "effective_token_fraction": t, "flops_relative": f}
        elif method == "q_tuning":
            extra = {"effective_sample_fraction": 0.5, "effective_token_fraction": 0.25, "flops_relative": 0.6}
        else:
            trace = KNOWN_TRACE
        if method == "q_tuning":
            trace = Q_TRACE
        trace = trace_for.get((method, budget, seed), trace)
        run_dirs.append(write_run(root, method, budget, seed, summary_extra=extra, trace=trace))
    evals.append(write_record(root / "evals" / "base.json", BASE))
    meta_path = None
    if world_meta is not None:
        meta_path = root / "world" / "sft_meta.jsonl"
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text("".join(json.dumps(m) + "\n" for m in world_meta))
    return {"evals": evals, "runs": run_dirs, "meta": meta_path}


#: Q-Tuning trace rows (two steps of one micro-batch of 4) with thresholds and quadrant counts.
Q_TRACE = [
    {"step": 0, "micro_batch": 0, "epoch": 0, "batch_size": 4, "samples_kept": 1, "response_tokens": 40,
     "response_tokens_kept": 6, "loss": 2.0, "alpha": 0.25, "beta": 0.25, "ppl_hi": 20.0, "ppl_lo": 5.0,
     "ent_lo": 1.0, "ent_hi": 2.0, "n_q1": 1, "n_q2": 1, "n_q3": 1, "n_q4": 0, "n_unassigned": 1, "n_topup": 0,
     "n_q2_like": 0, "token_budget": 6},
    {"step": 1, "micro_batch": 1, "epoch": 0, "batch_size": 4, "samples_kept": 1, "response_tokens": 30,
     "response_tokens_kept": 5, "loss": 1.8, "alpha": 0.25, "beta": 0.25, "ppl_hi": 30.0, "ppl_lo": 7.0,
     "ent_lo": 1.2, "ent_hi": 2.2, "n_q1": 2, "n_q2": 0, "n_q3": 1, "n_q4": 0, "n_unassigned": 1, "n_topup": 1,
     "n_q2_like": 1, "token_budget": 5},
]


@pytest.fixture()
def experiment(tmp_path):
    return build_experiment(tmp_path)


def cell(main, method, column, budget=None, total="0.125"):
    rows = main[(main.method == method) & (main.column == column) & (main.total_budget == total)]
    if budget is not None:
        rows = rows[rows.budget == budget]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_main_table_numbers(experiment, tmp_path):
    tables = aggregate(experiment["evals"], TASKS, tmp_path / "tables", run_dirs=experiment["runs"])
    main = tables["main"]
    # blocks: total 12.5 % and 25 %, each with zero-shot and full data
    assert list(dict.fromkeys(main.total_budget)) == ["0.125", "0.25"]
    block = main[main.total_budget == "0.125"]
    assert list(dict.fromkeys(block.method)) == ["base", "full", "random", "rho1", "random+random", "q_tuning"]
    assert list(dict.fromkeys(block.group)) == ["base", "full", "sample", "token", "joint"]
    # mean ± std over seeds (ddof=1)
    full = cell(main, "full", "avg")
    assert full["mean"] == pytest.approx(35.0) and full["std"] == pytest.approx(math.sqrt(50.0)) and full["n_seeds"] == 2
    q = cell(main, "q_tuning", "avg", "s0.25-t0.5")
    assert q["mean"] == pytest.approx(49.0) and q["std"] == pytest.approx(math.sqrt(2.0))
    assert cell(main, "q_tuning", "arc", "s0.25-t0.5")["std"] == pytest.approx(math.sqrt(8.0))
    assert cell(main, "q_tuning", "gsm", "s0.25-t0.5")["std"] == pytest.approx(0.0)
    # one seed: std undefined (blank)
    assert math.isnan(cell(main, "random+random", "avg")["std"])
    # relative change vs full data: (avg / avg_full - 1) * 100
    assert cell(main, "q_tuning", "rel_change", "s0.25-t0.5")["mean"] == pytest.approx(40.0)
    assert cell(main, "random", "rel_change")["mean"] == pytest.approx((32 / 35 - 1) * 100)
    assert cell(main, "rho1", "rel_change")["mean"] == pytest.approx((45 / 35 - 1) * 100)
    assert cell(main, "random+random", "rel_change")["mean"] == pytest.approx(0.0)
    assert cell(main, "full", "rel_change")["mean"] == pytest.approx(0.0)
    assert cell(main, "base", "rel_change")["mean"] == pytest.approx((47.5 / 35 - 1) * 100)
    assert cell(main, "q_tuning", "rel_change", "s0.5-t0.5", total="0.25")["mean"] == pytest.approx((55 / 35 - 1) * 100)
    # best per column: ties both bold (68.00 = 68.00), zero-shot's 90 never bold
    best = block[block.best]
    assert set(best[best.column == "arc"].method) == {"rho1", "q_tuning"}
    assert set(best[best.column == "gsm"].method) == {"q_tuning"}
    assert set(best[best.column == "avg"].method) == {"q_tuning"}
    assert set(best[best.column == "rel_change"].method) == {"q_tuning"}
    # a column where every trained row ties marks nothing
    runs = runs_table(comparison_table(long_table([record("a", "full", two_task(0.5, 0.0), "s1-t1"),
                                                   record("b", "rho1", two_task(0.6, 0.0), "s1-t0.5")]), ["arc", "gsm"]))
    tied = main_table(runs, ["arc", "gsm"])
    assert not tied[tied.column == "gsm"]["best"].any() and tied[tied.column == "arc"]["best"].sum() == 1
    block25 = main[(main.total_budget == "0.25") & main.best]
    assert set(block25[block25.column == "avg"].method) == {"q_tuning"}


def test_main_table_renderings(experiment, tmp_path):
    out = tmp_path / "tables"
    tables = aggregate(experiment["evals"], TASKS, out, run_dirs=experiment["runs"])
    main = tables["main"]

    def shown(method, column, budget="s0.25-t0.5"):
        r = cell(main, method, column, budget)
        return f"{r['mean']:.2f} [{r['low']:.1f}, {r['high']:.1f}]"

    md = (out / "main.md").read_text()
    assert "### tiny, total budget 12.5% (r_s × r_t)" in md
    head = ("| Group | Method | Budget | Effective % (samples / tokens / FLOPs) | arc | gsm | Avg | Δ vs full | "
            "Δ vs random+random |")
    assert head in md
    base = cell(main, "base", "avg", "")
    assert (f"| Zero-shot | base |  |  | {shown('base', 'arc', '')} | {shown('base', 'gsm', '')} | "
            f"{shown('base', 'avg', '')} | {base['delta_full']:+.2f} [{base['delta_full_low']:+.1f}, "
            f"{base['delta_full_high']:+.1f}]") in md
    assert (f"| Full data | full | 100%×100% | 100.0 / 100.0 / 100.0 | {shown('full', 'arc', 's1-t1')} | "
            f"{shown('full', 'gsm', 's1-t1')} | {shown('full', 'avg', 's1-t1')} |  |  |") in md
    assert shown("full", "avg", "s1-t1").startswith("35.00 [")
    # q_tuning: best in every column (bold), two seeds' effective budget averaged
    assert (f"|  | q_tuning | 25%×50% | 26.0 / 13.0 / 41.0 | **{shown('q_tuning', 'arc')}** | "
            f"**{shown('q_tuning', 'gsm')}** | **{shown('q_tuning', 'avg')}** |") in md
    assert shown("q_tuning", "avg").startswith("49.00 [")
    # random+random's trace-only budget (no FLOPs) is 3/8 of the samples, 15/70 of the tokens: +71% over 12.5%
    assert "| Sample + token | random+random | 25%×50% | 37.5 / 21.4 / – †1 | 55.00 [" in md
    assert "†1 tiny, random+random 25%×50%: effective token share 21.4% vs nominal 12.5% (+71%; samples 37.5%)." in md
    assert "|  | rho1 |" not in md and "| Token-level | rho1 | 100%×12.5% | 100.0 / 12.5 / 90.0 | **68.00 [" in md
    tex = (out / "main.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\multicolumn{9}{l}{\textit{tiny, total budget 12.5\%" in tex
    assert r"q\_tuning & 25\%$\times$50\% & 26.0 / 13.0 / 41.0 & \textbf{" + shown("q_tuning", "arc") + "}" in tex
    html = (out / "main.html").read_text()
    assert f"<b>{shown('q_tuning', 'avg')}</b>" in html
    tidy = pd.read_csv(out / "main.csv")
    assert set(tidy.columns) >= {"model", "total_budget", "group", "method", "budget", "column", "mean", "std", "best",
                                 "low", "high", "delta_full", "delta_full_low", "delta_full_high",
                                 "delta_full_significant", "delta_random", "eff_tokens_pct", "budget_flag"}
    assert len(tidy) == (6 + 3) * 4  # rows x (2 tasks + avg + rel_change)


def test_effective_budget_from_known_trace():
    eff = effective_budget_from_trace(KNOWN_TRACE, n_records=8, epochs=1)
    assert eff["sample_fraction"] == pytest.approx(3 / 8)
    assert eff["token_fraction"] == pytest.approx(15 / 70)  # denominators: what the trace saw
    assert eff["steps"] == 2 and eff["micro_batches"] == 2
    eff = effective_budget_from_trace(KNOWN_TRACE, n_records=8, response_tokens=100, epochs=2)
    assert eff["sample_fraction"] == pytest.approx(3 / 16) and eff["token_fraction"] == pytest.approx(15 / 200)
    assert effective_budget_from_trace(KNOWN_TRACE)["sample_fraction"] == pytest.approx(3 / 8)


def test_effective_budget_table_prefers_summary(experiment):
    runs = [load_run(d) for d in experiment["runs"]]
    table = effective_budget_table(runs).set_index("run_id")
    pair = table.loc["tiny/random+random/s0.25-t0.5/seed0"]
    assert pair["source"] == "trace" and pair["eff_sample_fraction"] == pytest.approx(3 / 8)
    assert pair["eff_token_fraction"] == pytest.approx(15 / 70) and math.isnan(pair["flops_relative"])
    q = table.loc["tiny/q_tuning/s0.25-t0.5/seed1"]
    assert q["source"] == "train_summary" and q["eff_token_fraction"] == pytest.approx(0.14)
    assert q["flops_relative"] == pytest.approx(0.42) and q["optimizer_steps"] == 2


def test_budget_table_numbers(experiment, tmp_path):
    tables = aggregate(experiment["evals"], TASKS, tmp_path / "tables", run_dirs=experiment["runs"])
    budget = tables["budget"]
    assert "base" not in set(budget.method)
    q = budget[(budget.method == "q_tuning") & (budget.budget == "s0.25-t0.5")].iloc[0]
    assert q["avg_mean"] == pytest.approx(49.0) and q["avg_std"] == pytest.approx(math.sqrt(2.0))
    assert q["eff_samples_pct"] == pytest.approx(26.0) and q["eff_tokens_pct"] == pytest.approx(13.0)
    assert q["flops_pct"] == pytest.approx(41.0) and q["n_seeds"] == 2 and q["total_budget"] == "0.125"
    rho = budget[budget.method == "rho1"].iloc[0]
    assert rho["eff_samples_pct"] == pytest.approx(100.0) and rho["eff_tokens_pct"] == pytest.approx(12.5)
    # ordered by total budget: full (1) last, the 25 % q_tuning before it
    assert list(budget.total_budget) == ["0.125"] * 4 + ["0.25", "1"]
    assert q["avg_low"] < 49.0 < q["avg_high"]
    md = (tmp_path / "tables" / "budget.md").read_text()
    delta_full = f"{q['delta_full']:+.2f} [{q['delta_full_low']:+.1f}, {q['delta_full_high']:+.1f}]"
    assert q["delta_full"] == pytest.approx(14.0) and q["delta_random"] == pytest.approx(14.0)
    assert (f"| tiny | Sample + token | q_tuning | 25%×50% | 12.5% | 2 | 49.00 [{q['avg_low']:.1f}, {q['avg_high']:.1f}] | "
            f"{delta_full}") in md
    assert "| 26.0 | 13.0 | 41.0 | 2 |" in md


def test_aggregate_writes_all_formats(tmp_path):
    paths = [write_record(tmp_path / f"{i}.json", rec) for i, rec in enumerate(RECORDS)]
    aggregate(paths, [{"name": "arc"}, {"name": "gsm"}], tmp_path / "tables")  # the old signature still works
    for stem in TABLE_STEMS:
        for ext in TABLE_FORMATS:
            assert (tmp_path / "tables" / f"{stem}.{ext}").stat().st_size > 0, (stem, ext)
    assert sorted(table_files()) == sorted(p.name for p in (tmp_path / "tables").iterdir())
    csv = pd.read_csv(tmp_path / "tables" / "comparison.csv")
    assert list(csv["avg"].round(2)) == [30.0, 42.5]
    assert "No ground truth" in (tmp_path / "tables" / "noise_recall.md").read_text()


def test_truncated_record_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"meta": {"run_id": ')
    with pytest.raises(ValueError, match="broken.json"):
        aggregate([path], [{"name": "arc"}], tmp_path / "tables")


def test_truncated_trace_is_named(tmp_path):
    run_dir = write_run(tmp_path, "full", "s1-t1", 0, trace=KNOWN_TRACE)
    with (run_dir / "trace.jsonl").open("a") as handle:
        handle.write('{"step": 2, "epo')
    with pytest.raises(ValueError, match=r"trace.jsonl: line 3"):
        load_run(run_dir)


def test_paper_reference_relative_change():
    table = paper_reference_table().set_index(["setting", "model", "method", "budget"])
    # the paper's headline "+38%": SmolLM2-1.7B, 12.87 / 9.31 - 1
    assert table.loc[("MathInstruct", "SmolLM2-1.7B", "q_tuning", "25%×50%"), "rel_change"] == pytest.approx(38.24, abs=0.01)
    assert (table.loc[("WizardLM", "LLaMA2-7B", "q_tuning", "12.5%×50%"), "rel_change"]
            == pytest.approx((37.74 / 35.36 - 1) * 100))
    # the ablation rows (averages only), relative to the main table's full-data row of the same model
    row = table.loc[("WizardLM", "Mistral-7B", "q_tuning_l0", "25%×50%")]
    assert row["source"] == "ablation" and row["avg"] == 45.92
    assert row["rel_change"] == pytest.approx((45.92 / 45.84 - 1) * 100)
    assert len(table) == len(PAPER_REFERENCE) + len(ablation_reference())


def test_runs_table_and_display_without_runs(tmp_path):
    frame = long_table(RECORDS)
    runs = runs_table(comparison_table(frame, ["arc"]))
    assert list(runs.group) == ["full", "joint"] and runs["eff_token_fraction"].isna().all()
    main = main_table(runs, ["arc"])
    (title, shown), = main_display(main, ["arc"], "plain")
    assert title.startswith("tiny, total budget 12.5%")
    assert list(shown["Method"]) == ["full", "q_tuning"]
    assert budget_table(runs)["eff_samples_pct"].isna().all()


class FakeTracker:
    def __init__(self):
        self.tables, self.images, self.values = {}, {}, {}

    def log_table(self, key, frame):
        self.tables[key] = frame

    def log_image(self, key, path):
        self.images[key] = Path(path)

    def summary(self, values):
        self.values.update(values)


def test_log_results(experiment, tmp_path):
    tables = aggregate(experiment["evals"], TASKS, tmp_path / "tables", run_dirs=experiment["runs"])
    png = tmp_path / "budget_curve.png"
    png.write_bytes(b"\x89PNG")
    tracker = FakeTracker()
    log_results(tracker, tables, [png, tmp_path / "budget_curve.pdf"])
    assert {"tables/main", "tables/budget", "tables/comparison", "tables/long"} <= set(tracker.tables)
    wide = tracker.tables["tables/main"]
    row = wide[(wide.method == "q_tuning") & (wide.budget == "s0.25-t0.5")].iloc[0]
    assert row["avg"] == pytest.approx(49.0) and row["avg_std"] == pytest.approx(math.sqrt(2.0))
    assert set(tracker.images) == {"plots/budget_curve"}
    assert tracker.values["avg/tiny/0.125/q_tuning/s0.25-t0.5"] == pytest.approx(49.0)
    assert len(main_wide(tables["main"])) == 9
