"""Every plot file is written and non-empty, with full data and with nothing to draw."""

from __future__ import annotations

import pandas as pd
import pytest

from qtbench import plots
from qtbench.noise import empty_recall
from qtbench.tables import aggregate
from tests.test_noise import EPOCH_SAMPLES, META, Q_SAMPLES
from tests.test_tables import TASKS, build_experiment

MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF"}


def check_files(folder):
    for name in plots.plot_files():
        path = folder / name
        assert path.is_file() and path.stat().st_size > 1000, name
        assert path.read_bytes()[:4] == MAGIC[path.suffix[1:]], name
    assert not list(folder.glob(".*.tmp"))


def test_every_plot_written(tmp_path):
    samples = {("q_tuning", "s0.25-t0.5", 0): Q_SAMPLES, ("q_tuning", "s0.25-t0.5", 1): Q_SAMPLES,
               ("q_tuning", "s0.5-t0.5", 0): Q_SAMPLES, ("random", "s0.125-t1", 0): EPOCH_SAMPLES}
    experiment = build_experiment(tmp_path, samples_for=samples, world_meta=META)
    aggregate(experiment["evals"], TASKS, tmp_path / "tables", run_dirs=experiment["runs"],
              world_meta=experiment["meta"], plots_dir=tmp_path / "plots", eu_epoch=1)
    check_files(tmp_path / "plots")


def test_plots_without_traces_or_truth(tmp_path):
    """No run folders, no samples.jsonl, no ground truth: placeholders, never a failure."""
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
    assert shares.loc[0, "Q2"] == pytest.approx(3 / 8) and shares.loc[0, "none"] == pytest.approx(2 / 8)
    assert shares.loc[0, "topup"] == pytest.approx(1 / 8) and shares.loc[1, "Q1"] == pytest.approx(1.0)


def test_sample_labels_and_colors():
    from qtbench.noise import label_meta

    assert plots.sample_labels([0, 2, 3, 4, 9], label_meta(META)) == ["random", "wrong_answer", "truncated",
                                                                      "duplicate", "clean"]
    assert plots.sample_labels([0], None) == ["clean"]
    colors = plots.method_colors(["full", "random", "q_tuning", "rho1"])
    assert colors["q_tuning"] == "#d62728" and colors["full"] == "#000000" and colors["random"] != colors["rho1"]
