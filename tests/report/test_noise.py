"""Noise recall against the world's ground truth, on hand-built per-sample traces."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from qtbench.report.noise import (
    epoch_decisions,
    label_meta,
    load_meta,
    noise_recall,
    noise_recall_table,
    quadrant_shares_by_label,
    recall_summary,
)
from qtbench.report.aggregate import aggregate
from qtbench.report.runs import trace_samples
from tests.report.test_tables import TASKS, build_experiment

#: Ten records: 0-1 random noise, 2 wrong answer, 3 truncated, 4 a duplicate of 5, 5-9 clean.
META = [{"index": i, "family": "math", "noise": n, "duplicate_of": d, "covered": True}
        for i, (n, d) in enumerate([("random", None), ("random", None), ("wrong_answer", None), ("truncated", None),
                                    (None, 5), (None, None), (None, None), (None, None), (None, None), (None, None)])]

#: Q-Tuning's label per record (as ``quadrants()`` writes them: top-ups are Q2+/Q4+, "mid" between thresholds)
QUADRANT_OF = {0: "Q1", 1: "Q1", 2: "Q1", 3: "Q1", 4: "Q3", 5: "Q2", 6: "Q4", 7: "mid", 8: "Q2", 9: "Q3"}


def trace_rows(epoch, kept, quadrants=None, step0=0, ids=range(10), batch=4, plan=None):
    """Micro-batch rows of one epoch in the trainer's ``trace.jsonl`` format: each
    carries its samples' decisions column-wise (and, with ``plan``, the first row
    the epoch's plan)."""
    ids = list(ids)
    rows = []
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        block = {"id": chunk, "kept": [i in kept for i in chunk], "weight": [1.0] * len(chunk)}
        if quadrants is not None:
            block.update({"ppl": [50.0 if i < 4 else 5.0 + i for i in chunk],
                          "entropy": [3.0 if i < 4 else 1.0 + i / 10 for i in chunk],
                          "quadrant": [("Q4+" if i == 7 and i in kept else quadrants[i]) for i in chunk]})
        step = step0 + start // batch
        rows.append({"step": step, "micro_batch": step, "epoch": epoch, "batch_size": len(chunk),
                     "samples_kept": sum(block["kept"]), "response_tokens": 10 * len(chunk),
                     "response_tokens_kept": 5 * sum(block["kept"]), "loss": 1.0, "samples": block})
    if plan is not None:
        rows[0]["epoch_plan"] = {"id": sorted(plan), "n_records": 10}
    return rows


#: Q-Tuning-like run: epoch 0 keeps {1, 5, 6, 7}; epoch 1 keeps {5, 6, 7, 8}.
Q_TRACE = trace_rows(0, {1, 5, 6, 7}, QUADRANT_OF) + trace_rows(1, {5, 6, 7, 8}, QUADRANT_OF, step0=3)

#: Epoch-level pruner with a second per-batch draw: the plan keeps {1, 5, 6, 7, 8},
#: the micro-batch then drops 8 -> kept {1, 5, 6, 7}.
PLAN = {1, 5, 6, 7, 8}
EPOCH_TRACE = trace_rows(0, {1, 5, 6, 7}, ids=sorted(PLAN), plan=PLAN)


def samples_of(rows):
    return trace_samples(pd.DataFrame(rows))


def recall_of(rows):
    return noise_recall(samples_of(rows), label_meta(META)).set_index(["epoch", "label"])


def test_labels():
    meta = label_meta(META)
    assert list(meta.index[meta["random"]]) == [0, 1]
    assert list(meta.index[meta["any_noise"]]) == [0, 1, 2, 3]
    assert list(meta.index[meta["duplicate"]]) == [4]
    assert list(meta.index[meta["clean"]]) == [5, 6, 7, 8, 9]


def test_recall_per_epoch_and_overall():
    r = recall_of(Q_TRACE)
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
    decisions = epoch_decisions(samples_of(EPOCH_TRACE)).set_index("sample_id")["kept"]
    assert sorted(decisions.index[decisions]) == [1, 5, 6, 7]
    assert len(decisions) == 10  # records the plan dropped were seen (a decision was made)
    r = recall_of(EPOCH_TRACE)
    assert r.loc[("0", "random"), "drop_rate"] == pytest.approx(0.5)
    assert r.loc[("0", "clean"), "drop_rate"] == pytest.approx(0.4)       # 8 by the batch, 9 by the plan
    assert r.loc[("0", "any_noise"), "kept_share"] == pytest.approx(0.25)
    assert r.loc[("0", "clean"), "n_unseen"] == 0
    # without the plan, the records it left out have no decision: unseen, not dropped
    no_plan = [{k: v for k, v in row.items() if k != "epoch_plan"} for row in EPOCH_TRACE]
    r = recall_of(no_plan)
    assert r.loc[("0", "clean"), "n_seen"] == 4 and r.loc[("0", "clean"), "n_unseen"] == 1
    assert r.loc[("0", "clean"), "drop_rate"] == pytest.approx(0.25)  # 8, dropped in its micro-batch


def test_unseen_records_and_unknown_ids():
    partial = trace_rows(0, {5}, ids=range(6))  # a run cut short: 6..9 never seen
    r = recall_of(partial)
    assert r.loc[("0", "clean"), "n_seen"] == 1 and r.loc[("0", "clean"), "drop_rate"] == pytest.approx(0.0)
    assert r.loc[("0", "clean"), "n_unseen"] == 4 and r.loc[("all", "any_noise"), "n_unseen"] == 0
    with pytest.raises(ValueError, match="not in the world's meta"):
        recall_of(trace_rows(0, {99}, ids=[99]))
    assert noise_recall(None, label_meta(META)).empty
    assert trace_samples(pd.DataFrame([{k: v for k, v in row.items() if k != "samples"} for row in Q_TRACE])) is None


def test_quadrants_by_label():
    table = quadrant_shares_by_label(samples_of(Q_TRACE), label_meta(META)).set_index(["epoch", "label"])
    assert table.loc[("all", "any_noise"), "share_Q1"] == pytest.approx(1.0)
    assert table.loc[("all", "duplicate"), "share_Q3"] == pytest.approx(1.0)
    clean = table.loc[("0", "clean")]  # 5: Q2, 6: Q4, 7: Q4+ (topped up), 8: Q2, 9: Q3
    assert clean["share_Q2"] == pytest.approx(0.4) and clean["share_Q4+"] == pytest.approx(0.2)
    assert clean["share_mid"] == pytest.approx(0.0) and clean["kept_rate"] == pytest.approx(0.6) and clean["n"] == 5
    assert quadrant_shares_by_label(samples_of(EPOCH_TRACE), label_meta(META)).empty  # no quadrants


def test_trace_samples_columns():
    samples = samples_of(Q_TRACE + EPOCH_TRACE)
    assert list(samples.columns[:7]) == ["epoch", "stage", "step", "micro_batch", "sample_id", "kept", "weight"]
    batch = samples[samples.stage == "batch"]
    assert len(batch) == 20 + 5 and batch["ppl"].notna().sum() == 20  # the epoch-level run has no ppl
    assert (samples.stage == "epoch").sum() == 10
    assert samples.loc[(samples.stage == "batch") & (samples.sample_id == 7), "quadrant"].tolist()[:2] == ["Q4+", "Q4+"]


def test_recall_table_over_runs_and_written(tmp_path):
    traces = {("q_tuning", "s0.25-t0.5", 0): Q_TRACE, ("q_tuning", "s0.25-t0.5", 1): Q_TRACE,
              ("random", "s0.125-t1", 0): EPOCH_TRACE, ("rho1", "s1-t0.125", 0): trace_rows(0, set(range(10))),
              ("full", "s1-t1", 0): trace_rows(0, set(range(10)))}
    experiment = build_experiment(tmp_path, trace_for=traces, world_meta=META)
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
    assert full["no decision %"] == pytest.approx(0.0)
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
