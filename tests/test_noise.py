"""Noise recall against the world's ground truth, on hand-built per-sample traces."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from qtbench.noise import (
    epoch_decisions,
    label_meta,
    load_meta,
    noise_recall,
    noise_recall_table,
    quadrant_shares_by_label,
    recall_summary,
)
from qtbench.tables import aggregate
from tests.test_tables import TASKS, build_experiment

#: Ten records: 0-1 random noise, 2 wrong answer, 3 truncated, 4 a duplicate of 5, 5-9 clean.
META = [{"index": i, "family": "math", "noise": n, "duplicate_of": d, "covered": True}
        for i, (n, d) in enumerate([("random", None), ("random", None), ("wrong_answer", None), ("truncated", None),
                                    (None, 5), (None, None), (None, None), (None, None), (None, None), (None, None)])]

QUADRANT_OF = {0: "Q1", 1: "Q1", 2: "Q1", 3: "Q1", 4: "Q3", 5: "Q2", 6: "Q4", 7: None, 8: "Q2", 9: "Q3"}


def batch_rows(epoch, kept, quadrants=None, step0=0):
    """Per-sample rows of one epoch in the trainer's proposed ``samples.jsonl`` format."""
    rows = []
    for i in range(10):
        row = {"epoch": epoch, "stage": "batch", "step": step0 + i // 4, "micro_batch": step0 + i // 4, "sample_id": i,
               "kept": i in kept, "response_tokens": 10, "response_tokens_kept": 5 if i in kept else 0, "weight": 1.0}
        if quadrants is not None:
            row.update({"ppl": 50.0 if i < 4 else 5.0 + i, "entropy": 3.0 if i < 4 else 1.0 + i / 10,
                        "quadrant": quadrants[i], "topup": i == 7 and i in kept, "q2_like": False})
        rows.append(row)
    return rows


#: Q-Tuning-like run: epoch 0 keeps {1, 5, 6, 7}; epoch 1 keeps {5, 6, 7, 8}.
Q_SAMPLES = batch_rows(0, {1, 5, 6, 7}, QUADRANT_OF) + batch_rows(1, {5, 6, 7, 8}, QUADRANT_OF, step0=3)

#: Epoch-level pruner with a second per-batch draw: the plan keeps {1, 5, 6, 7, 8},
#: the micro-batch then drops 8 -> kept {1, 5, 6, 7}.
PLAN = {1, 5, 6, 7, 8}
EPOCH_SAMPLES = ([{"epoch": 0, "stage": "epoch", "sample_id": i, "kept": i in PLAN} for i in range(10)]
                 + [{"epoch": 0, "stage": "batch", "step": 0, "micro_batch": 0, "sample_id": i, "kept": i != 8}
                    for i in sorted(PLAN)])


def recall_of(samples):
    return noise_recall(pd.DataFrame(samples), label_meta(META)).set_index(["epoch", "label"])


def test_labels():
    meta = label_meta(META)
    assert list(meta.index[meta["random"]]) == [0, 1]
    assert list(meta.index[meta["any_noise"]]) == [0, 1, 2, 3]
    assert list(meta.index[meta["duplicate"]]) == [4]
    assert list(meta.index[meta["clean"]]) == [5, 6, 7, 8, 9]


def test_recall_per_epoch_and_overall():
    r = recall_of(Q_SAMPLES)
    # epoch 0: kept {1, 5, 6, 7}
    assert r.loc[("0", "random"), "drop_rate"] == pytest.approx(0.5)        # 0 dropped, 1 kept
    assert r.loc[("0", "wrong_answer"), "drop_rate"] == pytest.approx(1.0)
    assert r.loc[("0", "truncated"), "drop_rate"] == pytest.approx(1.0)
    assert r.loc[("0", "any_noise"), "drop_rate"] == pytest.approx(0.75)
    assert r.loc[("0", "duplicate"), "drop_rate"] == pytest.approx(1.0)
    assert r.loc[("0", "clean"), "drop_rate"] == pytest.approx(0.4)         # 8, 9 of 5
    assert r.loc[("0", "any_noise"), "kept_share"] == pytest.approx(0.25)   # 1 of 4 kept was noise
    assert r.loc[("0", "any_noise"), "seen_share"] == pytest.approx(0.4)
    assert r.loc[("0", "clean"), "n_kept"] == 3 and r.loc[("0", "clean"), "n_seen"] == 5
    # epoch 1: kept {5, 6, 7, 8}
    assert r.loc[("1", "random"), "drop_rate"] == pytest.approx(1.0)
    assert r.loc[("1", "any_noise"), "kept_share"] == pytest.approx(0.0)
    assert r.loc[("1", "clean"), "drop_rate"] == pytest.approx(0.2)
    # all epochs: every record-epoch decision once
    assert r.loc[("all", "random"), "n_seen"] == 4 and r.loc[("all", "random"), "n_dropped"] == 3
    assert r.loc[("all", "any_noise"), "drop_rate"] == pytest.approx(7 / 8)
    assert r.loc[("all", "clean"), "drop_rate"] == pytest.approx(3 / 10)
    assert r.loc[("all", "any_noise"), "kept_share"] == pytest.approx(1 / 8)


def test_epoch_plan_and_batch_drop_combine():
    decisions = epoch_decisions(pd.DataFrame(EPOCH_SAMPLES)).set_index("sample_id")["kept"]
    assert sorted(decisions.index[decisions]) == [1, 5, 6, 7]
    assert len(decisions) == 10  # records the plan dropped were seen (a decision was made)
    r = recall_of(EPOCH_SAMPLES)
    assert r.loc[("0", "random"), "drop_rate"] == pytest.approx(0.5)
    assert r.loc[("0", "clean"), "drop_rate"] == pytest.approx(0.4)       # 8 by the batch, 9 by the plan
    assert r.loc[("0", "any_noise"), "kept_share"] == pytest.approx(0.25)


def test_unseen_records_and_unknown_ids():
    partial = [row for row in batch_rows(0, {5}) if row["sample_id"] < 6]  # a run cut short: 6..9 never seen
    r = recall_of(partial)
    assert r.loc[("0", "clean"), "n_seen"] == 1 and r.loc[("0", "clean"), "drop_rate"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="not in the world's meta"):
        recall_of([{"epoch": 0, "stage": "batch", "sample_id": 99, "kept": True}])
    empty = noise_recall(pd.DataFrame(), label_meta(META))
    assert empty.empty


def test_quadrants_by_label():
    table = quadrant_shares_by_label(pd.DataFrame(Q_SAMPLES), label_meta(META)).set_index(["epoch", "label"])
    assert table.loc[("all", "any_noise"), "share_Q1"] == pytest.approx(1.0)
    assert table.loc[("all", "duplicate"), "share_Q3"] == pytest.approx(1.0)
    clean = table.loc[("0", "clean")]
    assert clean["share_Q2"] == pytest.approx(0.4) and clean["share_none"] == pytest.approx(0.2)
    assert clean["kept_rate"] == pytest.approx(0.6) and clean["n"] == 5
    assert quadrant_shares_by_label(pd.DataFrame(EPOCH_SAMPLES), label_meta(META)).empty  # no quadrants


def test_recall_table_over_runs_and_written(tmp_path):
    samples = {("q_tuning", "s0.25-t0.5", 0): Q_SAMPLES, ("q_tuning", "s0.25-t0.5", 1): Q_SAMPLES,
               ("random", "s0.125-t1", 0): EPOCH_SAMPLES, ("rho1", "s1-t0.125", 0): batch_rows(0, set(range(10))),
               ("full", "s1-t1", 0): batch_rows(0, set(range(10)))}
    experiment = build_experiment(tmp_path, samples_for=samples, world_meta=META)
    tables = aggregate(experiment["evals"], TASKS, tmp_path / "tables", run_dirs=experiment["runs"],
                       world_meta=experiment["meta"])
    recall = tables["noise_recall"]
    assert set(recall["method"]) == {"q_tuning", "random", "full"}  # token-only rho1 never drops a sample
    assert set(recall[recall.method == "q_tuning"]["seed"]) == {0, 1}
    summary = recall_summary(recall).set_index(["method", "budget", "epoch"])
    q = summary.loc[("q_tuning", "s0.25-t0.5", "all")]
    assert q["seeds"] == 2
    assert q["any_noise dropped %"] == pytest.approx(87.5) and q["clean dropped %"] == pytest.approx(30.0)
    assert q["noise in kept %"] == pytest.approx(12.5) and q["noise in data %"] == pytest.approx(40.0)
    full = summary.loc[("full", "s1-t1", "0")]
    assert full["any_noise dropped %"] == pytest.approx(0.0) and full["noise in kept %"] == pytest.approx(40.0)
    md = (tmp_path / "tables" / "noise_recall.md").read_text()
    assert "Noise recall on the synthetic world" in md and "| q_tuning |" in md
    quadrants = pd.read_csv(tmp_path / "tables" / "noise_quadrants.csv")
    assert set(quadrants["method"]) == {"q_tuning"}
    assert math.isclose(quadrants[(quadrants.label == "any_noise") & (quadrants.epoch == "all")]["share_Q1"].iloc[0], 1.0)


def test_load_meta_checks_fields(tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text('{"index": 0, "family": "math"}\n')
    with pytest.raises(ValueError, match="missing field"):
        load_meta(path)
    path.write_text("".join(__import__("json").dumps(m) + "\n" for m in META))
    assert len(load_meta(path)) == 10
    runs_without_samples = noise_recall_table([], label_meta(META))
    assert runs_without_samples.empty
