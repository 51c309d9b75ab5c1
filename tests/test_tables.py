"""Tables from hand-built evaluation records."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from qtbench.tables import aggregate, comparison_table, long_table, to_latex, to_markdown


def record(run_id, method, scores, budget="s0.25-t0.5", seed=0):
    return {"meta": {"run_id": run_id, "model": "tiny", "method": method, "budget": budget, "seed": seed},
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


def test_aggregate_writes_all_formats(tmp_path):
    paths = []
    for i, rec in enumerate(RECORDS):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(rec))
        paths.append(path)
    aggregate(paths, [{"name": "arc"}, {"name": "gsm"}], tmp_path / "tables")
    for stem in ("comparison", "long"):
        for ext in ("csv", "md", "tex"):
            assert (tmp_path / "tables" / f"{stem}.{ext}").stat().st_size > 0
    csv = pd.read_csv(tmp_path / "tables" / "comparison.csv")
    assert list(csv["avg"].round(2)) == [30.0, 42.5]


def test_truncated_record_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"meta": {"run_id": ')
    with pytest.raises(ValueError, match="broken.json"):
        aggregate([path], [{"name": "arc"}], tmp_path / "tables")
