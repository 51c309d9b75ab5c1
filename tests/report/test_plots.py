"""Every plot file is written and non-empty, with full data and with nothing to draw."""

from __future__ import annotations

import pandas as pd
import pytest

from qtbench.report import plots
from qtbench.report.noise import empty_recall
from qtbench.report.aggregate import aggregate
from tests.report.test_noise import EPOCH_TRACE, META, Q_TRACE
from tests.report.test_tables import TASKS, build_experiment

MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF"}


def check_files(folder):
    for name in plots.plot_files():
        path = folder / name
        assert path.is_file() and path.stat().st_size > 1000, name
        assert path.read_bytes()[:4] == MAGIC[path.suffix[1:]], name
    assert not list(folder.glob(".*.tmp"))


def test_every_plot_written(tmp_path):
    traces = {("q_tuning", "s0.25-t0.5", 0): Q_TRACE, ("q_tuning", "s0.25-t0.5", 1): Q_TRACE,
              ("q_tuning", "s0.5-t0.5", 0): Q_TRACE, ("random", "s0.125-t1", 0): EPOCH_TRACE}
    experiment = build_experiment(tmp_path, trace_for=traces, world_meta=META)
    aggregate(experiment["evals"], TASKS, tmp_path / "tables", run_dirs=experiment["runs"],
              world_meta=experiment["meta"], plots_dir=tmp_path / "plots", eu_epoch=1)
    check_files(tmp_path / "plots")


def test_plots_without_traces_or_truth(tmp_path):
    """No run folders, no per-sample decisions, no ground truth: placeholders, never a failure."""
    experiment = build_experiment(tmp_path)
    aggregate(experiment["evals"], TASKS, tmp_path / "tables", plots_dir=tmp_path / "plots")
    check_files(tmp_path / "plots")


def test_placeholders_for_empty_inputs(tmp_path):
    written = plots.plot_all(pd.DataFrame(), [], tmp_path, recall=empty_recall())
    assert sorted(p.name for p in written) == sorted(plots.plot_files())
    check_files(tmp_path)


def test_quadrant_step_shares():
    trace = pd.DataFrame([
        {"step": 0, "epoch": 0, "batch_size": 4, "n_q1": 1, "n_q2": 1, "n_q3": 1, "n_q4": 0, "n_topup": 0},
        {"step": 0, "epoch": 0, "batch_size": 4, "n_q1": 0, "n_q2": 2, "n_q3": 0, "n_q4": 1, "n_topup": 1},
        {"step": 1, "epoch": 1, "batch_size": 4, "n_q1": 4, "n_q2": 0, "n_q3": 0, "n_q4": 0, "n_topup": 1},
    ])
    shares = plots.quadrant_step_shares(trace).set_index("step")
    assert shares.loc[0, "Q2"] == pytest.approx(3 / 8) and shares.loc[0, "mid"] == pytest.approx(2 / 8)
    assert shares.loc[0, "topup"] == pytest.approx(1 / 8) and shares.loc[1, "Q1"] == pytest.approx(1.0)


def test_sample_labels_and_colors():
    from qtbench.report.noise import label_meta

    assert plots.sample_labels([0, 2, 3, 4, 9], label_meta(META)) == ["random", "wrong_answer", "truncated",
                                                                      "duplicate", "clean"]
    assert plots.sample_labels([0], None) == ["clean"]
    colors = plots.method_colors(["full", "random", "q_tuning", "rho1"])
    assert colors["q_tuning"] == "#d62728" and colors["full"] == "#000000" and colors["random"] != colors["rho1"]


def test_batch_ranks_match_quantile_thresholds():
    """A value lies above a micro-batch's linear quantile q exactly when its position exceeds q."""
    import numpy as np

    ppl = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0]
    rows = pd.DataFrame({"epoch": 0, "micro_batch": [0] * 8 + [1], "ppl": ppl + [6.0]})
    ranks = plots.batch_ranks(rows, "ppl")
    assert list(ranks[:8]) == pytest.approx([4 / 7, 0.0, 1.0, 2 / 7, 5 / 7, 1 / 7, 6 / 7, 3 / 7])
    assert ranks.iloc[8] == 0.5  # a micro-batch of one
    for q in (0.1, 0.25, 0.49, 0.51, 0.9):
        above = np.asarray(ppl) > np.quantile(ppl, q)
        assert list(above) == list(ranks[:8] > q)


def test_eu_plane_epoch_choice(tmp_path):
    experiment = build_experiment(tmp_path, trace_for={("q_tuning", "s0.25-t0.5", 0): Q_TRACE}, world_meta=META)
    from qtbench.report.noise import load_meta
    from qtbench.report.runs import load_runs

    runs = load_runs(experiment["runs"])
    for epoch in (0, 1, -1, -2, 7):  # 7: not in the trace -> the last epoch
        paths = plots.eu_plane(runs, tmp_path / f"eu{epoch}", meta=load_meta(experiment["meta"]), epoch=epoch)
        assert all(p.stat().st_size > 1000 for p in paths)
