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


def test_budget_shades_dark_to_light_per_method():
    frame = pd.DataFrame({"method": ["q_tuning", "q_tuning", "q_tuning", "full", "random"],
                          "budget": ["s0.5-t0.7", "s0.125-t0.5", "s0.25-t0.5", "s1-t1", "s0.125-t1"]})
    shades = plots.budget_shades(frame)
    # q_tuning #d62728 = (214, 39, 40): 12.5%x50% 35% towards black, 25%x50% 5% towards white, 50%x70% 45% towards white
    assert shades[("q_tuning", "s0.125-t0.5")] == "#8b191a"
    assert shades[("q_tuning", "s0.25-t0.5")] == "#d83233"
    assert shades[("q_tuning", "s0.5-t0.7")] == "#e88889"
    assert shades[("full", "s1-t1")] == "#000000"  # one budget: the method's own colour
    assert shades[("random", "s0.125-t1")] == plots.method_colors(["full", "q_tuning", "random"])["random"]


def test_every_record_label_has_a_marker_and_a_name():
    from qtbench.world.labels import RECORD_LABELS

    assert set(plots.LABEL_MARKERS) == set(RECORD_LABELS) == set(plots.LABEL_NAMES)
    assert len(set(plots.LABEL_MARKERS.values())) == len(RECORD_LABELS)  # markers tell labels apart
    assert plots.LABEL_NAMES["wrong_answer"] == "noise: wrong answer"


def test_noise_recall_gives_each_budget_of_a_method_its_own_entry():
    rows = []
    for method, budget in (("full", "s1-t1"), ("q_tuning", "s0.25-t0.5"), ("q_tuning", "s0.5-t0.25"),
                           ("random", "s0.125-t1"), ("q_tuning", "s0.5-t0.7")):
        total = {"s1-t1": "1", "s0.5-t0.7": "0.35"}.get(budget, "0.125")
        for label in ("random", "wrong_answer", "truncated", "duplicate", "clean", "any_noise"):
            rows.append({"model": "tiny", "group": "x", "method": method, "budget": budget, "total_budget": total,
                         "seed": 0, "epoch": "all", "label": label, "n_seen": 4, "n_dropped": 2, "drop_rate": 0.5,
                         "n_kept": 2, "kept_share": 0.1, "seen_share": 0.1, "n_unseen": 0})
    fig = plots.noise_recall_figure(pd.DataFrame(rows))
    entries = [text.get_text() for text in fig.legends[0].get_texts()]
    assert entries == ["full", "q_tuning 25%×50%", "q_tuning 50%×25%", "random 12.5%×100%", "q_tuning 50%×70%"]
    colors = {bars.get_label(): bars.patches[0].get_facecolor() for ax in fig.axes for bars in ax.containers}
    assert len({colors[name] for name in entries if name.startswith("q_tuning")}) == 3  # one shade per budget
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["tiny, total budget 12.5%", "tiny, total budget 35%"]
    # a bar per label the world planted: no refusal column when it planted none
    ticks = [tick.get_text() for tick in panels[0].get_xticklabels()]
    assert ticks == ["random", "wrong\nanswer", "truncated", "duplicate", "clean"]


def test_eu_plane_is_a_two_column_grid(tmp_path):
    from matplotlib.image import imread

    from qtbench.report.noise import load_meta
    from qtbench.report.runs import load_runs

    traces = {("q_tuning", "s0.25-t0.5", 0): Q_TRACE, ("q_tuning", "s0.5-t0.5", 0): Q_TRACE}
    experiment = build_experiment(tmp_path, trace_for=traces, world_meta=META)
    runs = load_runs(experiment["runs"])
    png = plots.eu_plane(runs, tmp_path / "eu", meta=load_meta(experiment["meta"]))[0]
    # two runs -> two rows of (plane, positions): 2 x 4.3 in wide, 2 x 3.7 + 1.4 in tall, at 150 dpi
    assert imread(png).shape[:2] == (1320, 1290)
