"""Plots of a finished experiment (matplotlib, no display needed), PNG + PDF each.

* ``budget_curve``     average score vs nominal total budget r_s x r_t, one line per
  method (mean over seeds, error bars = std), full data as a line (band = std),
  zero-shot dashed; one panel per model;
* ``score_vs_flops``   average score vs training FLOPs relative to full data
  (``train_summary.json``: stats pass 2N + update 6N per token); one panel per model;
* ``eu_plane``         Q-Tuning's Error-Uncertainty plane: PPL (log) x entropy of
  every sample of one epoch, coloured by the quadrant the micro-batch's bisection
  put it in, the thresholds drawn (median over the epoch's micro-batches: each
  micro-batch has its own), and - given the world's ground truth - marked by
  noise type / duplicate; beside it the same samples at their position within
  their micro-batch, where every batch's quadrants are the same rectangles
  (bounds: median alpha and beta); one row of these two panels per model x
  budget (lowest seed), the last epoch by default, so the figure stays two
  panels wide however many budgets run;
* ``quadrant_shares``  share of each micro-batch's samples per quadrant (before
  top-up) over optimizer steps, stacked, with the top-up share; a rolling mean
  over ~1/40 of the run; one panel per model x budget (lowest seed);
* ``noise_recall``     share of each planted-noise label that each method dropped
  (over all epochs, mean over seeds); one panel per model x total budget; each
  budget of a method has its own shade of the method's colour and its own
  legend entry (:func:`budget_shades`).

Every file is always written: a panel without data says what is missing
(e.g. no per-sample decisions in the trace) instead of failing the report.
Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no global
backend switch), so this module is safe to import anywhere.
"""

from __future__ import annotations

import math
import os
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from qtbench.report.naming import budget_label, percent, split_budget
from qtbench.world.labels import NOISE_TYPES

PLOT_NAMES = ("budget_curve", "score_vs_flops", "eu_plane", "quadrant_shares", "noise_recall")
PLOT_FORMATS = ("png", "pdf")

QUADRANT_COLORS = {"Q1": "#d62728", "Q2": "#ff7f0e", "Q3": "#7f7f7f", "Q4": "#1f77b4", "Q2+": "#ffbb78",
                   "Q4+": "#aec7e8", "mid": "#d9d9d9"}
QUADRANT_NAMES = {"Q1": "Q1 harmful noise (drop)", "Q2": "Q2 misconception (keep, prune tokens)",
                  "Q3": "Q3 redundant (drop)", "Q4": "Q4 calibration (keep)", "Q2+": "topped up, Q2-like",
                  "Q4+": "topped up, Q4-like", "mid": "between thresholds"}
#: one marker per record label (qtbench.world.labels.RECORD_LABELS), clean first so noise is drawn on top
LABEL_MARKERS = {"clean": "o", "duplicate": "D", "random": "X", "wrong_answer": "^", "truncated": "s", "refusal": "P"}
LABEL_NAMES = {"clean": "clean", "duplicate": "duplicate",
               **{kind: "noise: " + kind.replace("_", " ") for kind in NOISE_TYPES}}
GROUP_STYLE = {"sample": "--", "token": ":", "joint": "-", "other": "-."}
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e", "#7f7f7f",
           "#aec7e8", "#98df8a", "#c5b0d5")
SUBJECT = "q_tuning"


def plot_files() -> list[str]:
    """File names (relative to the plots folder) that :func:`plot_all` writes."""
    return [f"{name}.{ext}" for name in PLOT_NAMES for ext in PLOT_FORMATS]


def plot_all(runs: pd.DataFrame, artifacts: Sequence[Any], plots_dir: str | Path, *, meta: pd.DataFrame | None = None,
             recall: pd.DataFrame | None = None, eu_epoch: int = -1, method: str = SUBJECT) -> list[Path]:
    """Write every plot of :data:`PLOT_NAMES` under ``plots_dir``.

    ``runs``: :func:`qtbench.report.tables.runs_table`; ``artifacts``:
    :func:`qtbench.report.runs.load_runs`; ``meta``: :func:`qtbench.report.noise.load_meta`;
    ``recall``: :func:`qtbench.report.noise.noise_recall_table`."""
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    paths += budget_curve(runs, plots_dir / "budget_curve")
    paths += score_vs_flops(runs, plots_dir / "score_vs_flops")
    paths += eu_plane(artifacts, plots_dir / "eu_plane", meta=meta, epoch=eu_epoch, method=method)
    paths += quadrant_shares(artifacts, plots_dir / "quadrant_shares", method=method)
    paths += noise_recall_plot(recall if recall is not None else pd.DataFrame(), plots_dir / "noise_recall")
    return paths


# --------------------------------------------------------------------------- helpers


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """``stem``.png (150 dpi) and ``stem``.pdf, written to a temporary name and
    renamed (a killed job leaves no half-written plot)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in PLOT_FORMATS:
        path = stem.with_suffix(f".{ext}")
        tmp = path.with_name(f".{path.name}.tmp")
        metadata = {"CreationDate": None} if ext == "pdf" else {"Software": None}
        fig.savefig(tmp, format=ext, dpi=150, metadata=metadata)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _figure(n_rows: int, n_cols: int, width: float = 4.2, height: float = 3.4) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(max(1, n_cols) * width + 2.2, max(1, n_rows) * height), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(1, n_rows), max(1, n_cols), squeeze=False))
    return fig, axes


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=9, color="#555555",
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _placeholder(stem: Path, title: str, message: str) -> list[Path]:
    fig, axes = _figure(1, 1, 5.5, 3.0)
    _empty(axes[0, 0], message)
    axes[0, 0].set_title(title)
    return save_figure(fig, stem)


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """A stable colour per method: Q-Tuning red, full data black, others from a palette."""
    colors, i = {}, 0
    for method in dict.fromkeys(methods):
        if method == SUBJECT:
            colors[method] = "#d62728"
        elif method in ("full", "base"):
            colors[method] = "#000000"
        else:
            colors[method] = PALETTE[i % len(PALETTE)]
            i += 1
    return colors


def _pct_label(value: float) -> str:
    text = format(Decimal(repr(float(value))).normalize(), "f")
    return f"{text}%"


def _log_labels(axis: Any) -> None:
    """Plain numbers on a log axis: decades, plus 2x, 3x and 5x minor ticks over a narrow range."""
    def minor(value: float, _: Any) -> str:
        if value <= 0:
            return ""
        lead = round(value / 10 ** math.floor(math.log10(value)))
        return f"{value:g}" if lead in (2, 3, 5) else ""

    def major(value: float, _: Any) -> str:
        return f"{value:g}" if 1e-3 <= value < 1e5 else f"1e{round(math.log10(value))}"

    def minor_if_narrow(value: float, pos: Any) -> str:
        low, high = sorted(axis.get_view_interval())
        return minor(value, pos) if low > 0 and high / low < 30 else ""

    axis.set_major_formatter(FuncFormatter(major))
    axis.set_minor_formatter(FuncFormatter(minor_if_narrow))


def _legend(fig: Figure, handles: list[Any], title: str | None = None) -> None:
    if handles:
        fig.legend(handles=handles, loc="outside right center", fontsize=8, title=title, title_fontsize=8,
                   frameon=False)


# --------------------------------------------------------------------------- budget curve


def budget_curve(runs: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Average score vs nominal total budget (log2 x-axis), per model."""
    stem = Path(stem)
    if runs is None or runs.empty:
        return _placeholder(stem, "Average score vs budget", "no evaluation records")
    models = list(dict.fromkeys(runs["model"]))
    colors = method_colors(runs["method"])
    fig, axes = _figure(1, len(models))
    handles: dict[str, Any] = {}
    for ax, model in zip(axes[0], models):
        mine = runs[runs["model"] == model]
        ticks = []
        pruned = mine[~mine["group"].isin(["base", "full"])]
        for method, part in pruned.groupby("method", sort=False):
            stats = part.groupby("budget", sort=False).agg(total=("total_budget", "first"), mean=("avg", "mean"),
                                                           std=("avg", "std"), n=("avg", "size"))
            stats["x"] = stats["total"].map(lambda t: float(Decimal(t) * 100))
            stats = stats.sort_values("x")
            ticks += list(stats["x"])
            group = part["group"].iloc[0]
            subject = method == SUBJECT
            line = ax.errorbar(stats["x"], stats["mean"], yerr=stats["std"].fillna(0.0), label=method,
                               color=colors[method], linestyle=GROUP_STYLE.get(group, "-"),
                               marker="*" if subject else "o", markersize=9 if subject else 4,
                               linewidth=2.4 if subject else 1.2, capsize=2, zorder=3 if subject else 2)
            handles.setdefault(method, line)
        for kind, style in (("full", "-"), ("base", "--")):
            rows = mine[mine["group"] == kind]
            if rows.empty:
                continue
            mean, std = rows["avg"].mean(), rows["avg"].std()
            label = "full data" if kind == "full" else "zero-shot"
            line = ax.axhline(mean, color="black" if kind == "full" else "#777777", linestyle=style, linewidth=1.2,
                              label=label, zorder=1)
            if kind == "full" and not pd.isna(std):
                ax.axhspan(mean - std, mean + std, color="black", alpha=0.08, zorder=0)
            handles.setdefault(label, line)
        if ticks:
            ax.set_xscale("log", base=2)
            xs = sorted(set(ticks))
            ax.xaxis.set_major_locator(FixedLocator(xs))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _pct_label(v)))
            if len(xs) == 1:
                ax.set_xlim(xs[0] / 1.6, xs[0] * 1.6)
        else:
            ax.text(0.5, 0.5, "no pruned runs", ha="center", va="center", transform=ax.transAxes, color="#555555")
        ax.set_title(model)
        ax.set_xlabel("total budget r_s × r_t (nominal)")
        ax.set_ylabel("average score")
        ax.grid(alpha=0.3)
    _legend(fig, list(handles.values()))
    fig.suptitle("Average score vs budget (mean ± std over seeds)")
    return save_figure(fig, stem)


# --------------------------------------------------------------------------- score vs FLOPs


def score_vs_flops(runs: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Average score vs training FLOPs relative to full data (log x-axis), per model."""
    stem = Path(stem)
    if runs is None or runs.empty or "flops_relative" not in runs or not runs["flops_relative"].notna().any():
        return _placeholder(stem, "Average score vs training FLOPs",
                            "no FLOPs: needs the runs' train_summary.json (aggregate --runs)")
    models = list(dict.fromkeys(runs["model"]))
    colors = method_colors(runs["method"])
    markers = {"full": "s", "sample": "v", "token": "^", "joint": "o", "other": "P"}
    fig, axes = _figure(1, len(models))
    handles: dict[str, Any] = {}
    for ax, model in zip(axes[0], models):
        mine = runs[(runs["model"] == model) & runs["flops_relative"].notna()]
        for (method, budget), part in mine.groupby(["method", "budget"], sort=False):
            x = part["flops_relative"].mean() * 100.0
            y, yerr = part["avg"].mean(), part["avg"].std()
            group = part["group"].iloc[0]
            subject = method == SUBJECT
            point = ax.errorbar([x], [y], yerr=[0.0 if pd.isna(yerr) else yerr], color=colors[method],
                                marker="*" if subject else markers.get(group, "o"), markersize=11 if subject else 6,
                                linestyle="none", capsize=2, label=method, zorder=3 if subject else 2)
            handles.setdefault(method, point)
        base = runs[(runs["model"] == model) & (runs["group"] == "base")]
        if not base.empty:
            handles.setdefault("zero-shot", ax.axhline(base["avg"].mean(), color="#777777", linestyle="--",
                                                       linewidth=1.0, label="zero-shot"))
        ax.set_xscale("log")
        _log_labels(ax.xaxis)
        ax.set_title(model)
        ax.set_xlabel("training FLOPs, % of full data (log)")
        ax.set_ylabel("average score")
        ax.grid(alpha=0.3, which="both")
    _legend(fig, list(handles.values()))
    fig.suptitle("Average score vs training compute (stats pass included)")
    return save_figure(fig, stem)


# --------------------------------------------------------------------------- EU plane


def _subject_runs(artifacts: Sequence[Any], method: str) -> list[Any]:
    """The lowest-seed run of ``method`` per (model, budget), ordered by model and total budget."""
    chosen: dict[tuple[str, str], Any] = {}
    for run in artifacts:
        if run.method != method:
            continue
        key = (run.model, run.budget)
        if key not in chosen or run.seed < chosen[key].seed:
            chosen[key] = run
    order = {m: i for i, m in enumerate(dict.fromkeys(r.model for r in artifacts))}
    return sorted(chosen.values(), key=lambda r: (order[r.model], Decimal(split_budget(r.budget)[2]), r.budget))


def _grid(runs: list[Any]) -> tuple[list[str], list[str]]:
    models = list(dict.fromkeys(r.model for r in runs))
    budgets = list(dict.fromkeys(r.budget for r in runs))
    return models, budgets


def sample_labels(sample_ids: Iterable[int], meta: pd.DataFrame | None) -> list[str]:
    """Ground-truth label per sample for the markers: a noise type, ``duplicate`` or ``clean``."""
    ids = list(sample_ids)
    if meta is None:
        return ["clean"] * len(ids)
    noise = meta["noise"].astype(object).where(meta["noise"].notna(), None)
    duplicate = meta["duplicate_of"].notna()
    out = []
    for i in ids:
        kind = noise.get(i)
        out.append(kind if kind else ("duplicate" if bool(duplicate.get(i, False)) else "clean"))
    return out


def batch_ranks(rows: pd.DataFrame, column: str) -> pd.Series:
    """Position of each sample's ``column`` within its micro-batch, in [0, 1]:
    ``(rank - 1) / (n - 1)`` (ties averaged; 0.5 for a batch of one).  Q-Tuning's
    thresholds are linear quantiles of the micro-batch, so a value lies above
    ``Quantile(x, q)`` exactly when its position exceeds ``q`` (distinct values):
    in these coordinates every micro-batch's quadrants are the same rectangles."""
    keys = ["epoch", "micro_batch"] if "micro_batch" in rows.columns else ["epoch", "step"]
    grouped = rows.groupby(keys, sort=False)[column]
    rank = grouped.rank(method="average")
    size = grouped.transform("size")
    return ((rank - 1) / (size - 1).where(size > 1)).fillna(0.5)


def eu_plane(artifacts: Sequence[Any], stem: str | Path, *, meta: pd.DataFrame | None = None, epoch: int = -1,
             method: str = SUBJECT) -> list[Path]:
    """One epoch's samples per Q-Tuning run on the EU plane, coloured by quadrant:
    left panel PPL (log) x entropy with the median thresholds, right panel the
    same samples at their position within their micro-batch (:func:`batch_ranks`)
    with the median alpha / beta bounds.  ``epoch``: an epoch number, or a
    negative index into the epochs the trace holds (-1: the last)."""
    stem = Path(stem)
    runs = _subject_runs(artifacts, method)
    if not runs:
        return _placeholder(stem, "EU plane", f"no {method} runs")
    fig = Figure(figsize=(2 * 4.3, len(runs) * 3.7 + 1.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(runs), 2, squeeze=False))
    used_labels: set[str] = set()
    used_quadrants: set[str] = set()
    for row_i, run in enumerate(runs):  # one row per run: the plane, then the positions
        ax, ax_rank = axes[row_i, 0], axes[row_i, 1]
        title = f"{run.model}, {method} {budget_label(run.budget)}, seed {run.seed}"
        samples = run.samples
        if samples is None or "ppl" not in samples.columns or not samples["ppl"].notna().any():
            _empty(ax, "no per-sample PPL/entropy\nin the checkpoint's trace.jsonl")
            ax.set_title(title, fontsize=9)
            ax_rank.set_visible(False)
            continue
        rows = samples[samples["ppl"].notna() & samples["entropy"].notna()]
        if "stage" in rows.columns:
            rows = rows[rows["stage"] == "batch"]
        epochs = sorted(int(e) for e in rows["epoch"].unique())
        shown = epochs[epoch] if -len(epochs) <= epoch < 0 else (epoch if epoch in epochs else epochs[-1])
        rows = rows[rows["epoch"] == shown].copy()
        # positions, jittered by up to 0.4 of the lattice spacing 1/(B-1) so that the B x B lattice shows its density
        keys = ["epoch", "micro_batch"] if "micro_batch" in rows.columns else ["epoch", "step"]
        spacing = 1.0 / (rows.groupby(keys, sort=False)["ppl"].transform("size") - 1).clip(lower=1)
        rng = np.random.default_rng(0)
        rows["ppl_rank"] = batch_ranks(rows, "ppl") + rng.uniform(-0.4, 0.4, len(rows)) * spacing
        rows["ent_rank"] = batch_ranks(rows, "entropy") + rng.uniform(-0.4, 0.4, len(rows)) * spacing
        quadrant = (rows["quadrant"].astype(object).where(rows["quadrant"].notna(), "mid")
                    if "quadrant" in rows.columns else pd.Series("mid", index=rows.index))
        labels = pd.Series(sample_labels(rows["sample_id"].astype(int), meta), index=rows.index)
        for label in LABEL_MARKERS:  # clean first, noise on top
            mask = labels == label
            if not mask.any():
                continue
            used_labels.add(label)
            colors = [QUADRANT_COLORS.get(q, QUADRANT_COLORS["mid"]) for q in quadrant[mask]]
            used_quadrants.update(quadrant[mask])
            style = dict(c=colors, marker=LABEL_MARKERS[label], s=6 if label == "clean" else 16,
                         alpha=0.5 if label == "clean" else 0.75, linewidths=0.3,
                         edgecolors="black" if label != "clean" else "none")
            ax.scatter(rows.loc[mask, "ppl"], rows.loc[mask, "entropy"], **style)
            ax_rank.scatter(rows.loc[mask, "ppl_rank"], rows.loc[mask, "ent_rank"], **style)
        _thresholds(ax, run.trace, shown)
        _rank_thresholds(ax_rank, run.trace, shown)
        ax.set_xscale("log")
        _log_labels(ax.xaxis)
        ax.set_xlabel("PPL (response)")
        ax.set_ylabel("mean entropy")
        ax.set_title(f"{title}, epoch {shown}", fontsize=9)
        ax.grid(alpha=0.25)
        ax_rank.set_xlim(-0.08, 1.08)
        ax_rank.set_ylim(-0.08, 1.08)
        ax_rank.set_xlabel("PPL position in its micro-batch")
        ax_rank.set_ylabel("entropy position in its micro-batch")
        ax_rank.set_title("position within its micro-batch (jittered)", fontsize=9)
    handles = [Patch(color=QUADRANT_COLORS[q], label=QUADRANT_NAMES[q]) for q in QUADRANT_COLORS if q in used_quadrants]
    if meta is not None:
        handles += [Line2D([], [], marker=LABEL_MARKERS[k], linestyle="none", color="white", markeredgecolor="black",
                           markersize=6, label=LABEL_NAMES[k]) for k in LABEL_MARKERS if k in used_labels]
    handles.append(Line2D([], [], color="black", linestyle="--", linewidth=0.8, label="thresholds (median)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    fig.suptitle("Error-Uncertainty plane: quadrants per micro-batch" +
                 (", marked by ground truth" if meta is not None else ""))
    return save_figure(fig, stem)


def _rank_thresholds(ax: Any, trace: pd.DataFrame, epoch: int) -> None:
    """Median alpha (PPL) and beta (entropy) of the epoch: the quadrant bounds in position space."""
    if trace is None or trace.empty or "epoch" not in trace.columns:
        return
    rows = trace[trace["epoch"] == epoch]
    for column, vertical in (("alpha", True), ("beta", False)):
        if column not in rows.columns:
            continue
        values = pd.to_numeric(rows[column], errors="coerce").dropna()
        if values.empty:
            continue
        value = float(values.median())
        for bound in (value, 1.0 - value):
            (ax.axvline if vertical else ax.axhline)(bound, color="black", linestyle="--", linewidth=0.8)


def _thresholds(ax: Any, trace: pd.DataFrame, epoch: int) -> None:
    """Median (over the epoch's micro-batches) of each threshold, as dashed lines."""
    if trace is None or trace.empty or "epoch" not in trace.columns:
        return
    rows = trace[trace["epoch"] == epoch]
    for column, vertical in (("ppl_lo", True), ("ppl_hi", True), ("ent_lo", False), ("ent_hi", False)):
        if column not in rows.columns:
            continue
        values = pd.to_numeric(rows[column], errors="coerce").dropna()
        if values.empty:
            continue
        value = float(values.median())
        if vertical:
            if value > 0:
                ax.axvline(value, color="black", linestyle="--", linewidth=0.8)
        else:
            ax.axhline(value, color="black", linestyle="--", linewidth=0.8)


# --------------------------------------------------------------------------- quadrant shares


def quadrant_step_shares(trace: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer step: share of the step's samples in Q1..Q4, between the
    thresholds (``mid``) and topped up, from the trace's quadrant counts."""
    counts = trace.copy()
    for q in ("n_q1", "n_q2", "n_q3", "n_q4", "n_topup"):
        counts[q] = pd.to_numeric(counts.get(q, 0), errors="coerce").fillna(0)
    if "n_unassigned" in counts.columns:
        counts["n_mid"] = pd.to_numeric(counts["n_unassigned"], errors="coerce").fillna(0)
    else:
        counts["n_mid"] = counts["batch_size"] - counts[["n_q1", "n_q2", "n_q3", "n_q4"]].sum(axis=1)
    by_step = counts.groupby("step", sort=True).agg(
        epoch=("epoch", "first"), batch=("batch_size", "sum"), Q1=("n_q1", "sum"), Q2=("n_q2", "sum"),
        Q3=("n_q3", "sum"), Q4=("n_q4", "sum"), mid=("n_mid", "sum"), topup=("n_topup", "sum"))
    for column in ("Q1", "Q2", "Q3", "Q4", "mid", "topup"):
        by_step[column] = by_step[column] / by_step["batch"].clip(lower=1)
    return by_step.reset_index()


def quadrant_shares(artifacts: Sequence[Any], stem: str | Path, *, method: str = SUBJECT) -> list[Path]:
    """Stacked quadrant shares over training steps per Q-Tuning run."""
    stem = Path(stem)
    runs = _subject_runs(artifacts, method)
    if not runs:
        return _placeholder(stem, "Quadrant shares over training", f"no {method} runs")
    models, budgets = _grid(runs)
    fig, axes = _figure(len(models), len(budgets), 4.4, 3.2)
    for run in runs:
        ax = axes[models.index(run.model), budgets.index(run.budget)]
        ax.set_title(f"{run.model}, {method} {budget_label(run.budget)}, seed {run.seed}", fontsize=9)
        trace = run.trace
        if trace is None or trace.empty or "n_q1" not in trace.columns:
            _empty(ax, "no quadrant counts in trace.jsonl")
            continue
        shares = quadrant_step_shares(trace)
        window = max(1, len(shares) // 40)
        smooth = shares[["Q1", "Q2", "Q3", "Q4", "mid", "topup"]].rolling(window, min_periods=1).mean()
        steps = shares["step"].to_numpy()
        order = ["Q2", "Q4", "Q1", "Q3", "mid"]
        ax.stackplot(steps, *[smooth[q].to_numpy() for q in order], colors=[QUADRANT_COLORS[q] for q in order],
                     alpha=0.85, linewidth=0)
        ax.plot(steps, smooth["topup"].to_numpy(), color="black", linewidth=1.0)
        for start in shares.groupby("epoch")["step"].min().iloc[1:]:
            ax.axvline(start, color="white", linestyle=":", linewidth=1.2)
        ax.set_ylim(0, 1)
        ax.set_xlim(steps.min(), max(steps.max(), steps.min() + 1))
        ax.set_xlabel("optimizer step" + (f" (rolling mean, {window} steps)" if window > 1 else ""))
        ax.set_ylabel("share of samples")
    for r, model in enumerate(models):
        for c, budget in enumerate(budgets):
            if not any(run.model == model and run.budget == budget for run in runs):
                axes[r, c].set_visible(False)
    handles = [Patch(color=QUADRANT_COLORS[q], label=QUADRANT_NAMES[q]) for q in ("Q2", "Q4", "Q1", "Q3", "mid")]
    handles.append(Line2D([], [], color="black", linewidth=1.0, label="topped up to K"))
    _legend(fig, handles)
    fig.suptitle("Quadrant shares per step (before top-up); dotted lines: epoch starts")
    return save_figure(fig, stem)


# --------------------------------------------------------------------------- noise recall


def shade(color: str, amount: float) -> str:
    """``color`` mixed towards black (``amount`` < 0) or white (> 0) by ``|amount|``."""
    rgb = np.array(to_rgb(color))
    target = np.zeros(3) if amount < 0 else np.ones(3)
    return to_hex(rgb + (target - rgb) * abs(amount))


def budget_shades(frame: pd.DataFrame) -> dict[tuple[str, str], str]:
    """A colour per (method, budget): the method's colour (:func:`method_colors`),
    its budgets ordered by total then r_s from dark (smallest, mixed 35% towards
    black) to light (largest, 45% towards white); a method with one budget keeps
    its own colour.  The same shade in every panel, so a budget reads the same
    wherever it appears."""
    pairs = list(dict.fromkeys(zip(frame["method"], frame["budget"])))
    base = method_colors(m for m, _ in pairs)
    out: dict[tuple[str, str], str] = {}
    for method in dict.fromkeys(m for m, _ in pairs):
        budgets = sorted({b for m, b in pairs if m == method}, key=_budget_key)
        for i, budget in enumerate(budgets):
            amount = 0.0 if len(budgets) == 1 else -0.35 + 0.8 * i / (len(budgets) - 1)
            out[(method, budget)] = shade(base[method], amount)
    return out


def _budget_key(budget: Any) -> tuple[Decimal, Decimal]:
    parts = split_budget(budget)
    return (Decimal(1), Decimal(1)) if parts is None else (Decimal(parts[2]), Decimal(parts[0]))



def noise_recall_plot(recall: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Bars: share of each label's records dropped (all epochs, mean over seeds),
    one bar per method, one panel per model x total budget."""
    stem = Path(stem)
    if recall is None or recall.empty:
        return _placeholder(stem, "Noise recall", "no noise recall: needs the world's ground truth\n"
                                                  "and the trainer's per-sample decisions (trace.jsonl)")
    return save_figure(noise_recall_figure(recall), stem)


def noise_recall_figure(recall: pd.DataFrame) -> Figure:
    """The figure of :func:`noise_recall_plot` (a non-empty recall table)."""
    data = recall[recall["epoch"] == "all"]
    # the labels the world planted (a noise type at rate 0 has no records and no bar)
    labels = [label for label in (*NOISE_TYPES, "duplicate", "clean") if (data["label"] == label).any()]
    panels = list(dict.fromkeys(zip(data["model"], data["total_budget"])))
    panels.sort(key=lambda p: (p[0], Decimal(p[1]) if p[1] else Decimal(1)))
    pruned_panels = [p for p in panels if p[1] not in ("", "1")] or panels
    colors = budget_shades(data)
    n_cols = min(2, len(pruned_panels))  # a grid two panels wide: readable on a laptop
    n_rows = math.ceil(len(pruned_panels) / n_cols)
    fig, axes = _figure(n_rows, n_cols, 6.0, 4.2)
    for ax in axes.flat[len(pruned_panels):]:
        ax.set_visible(False)
    handles: dict[str, Any] = {}
    for ax, (model, total) in zip(axes.flat, pruned_panels):
        part = data[(data["model"] == model) & ((data["total_budget"] == total) | (data["method"] == "full"))]
        series = list(dict.fromkeys(zip(part["method"], part["budget"])))
        width = 0.8 / max(1, len(series))
        x = np.arange(len(labels))
        for i, (method, budget) in enumerate(series):
            rows = part[(part["method"] == method) & (part["budget"] == budget)]
            means = rows.groupby("label")["drop_rate"].mean() * 100.0
            values = [means.get(label, math.nan) for label in labels]
            name = method if method == "full" else f"{method} {budget_label(budget)}"
            if "n_unseen" in rows.columns:
                every = rows[rows["label"].isin(["any_noise", "duplicate", "clean"])]
                unseen = float(every["n_unseen"].sum()) / max(1.0, float(every["n_unseen"].sum() + every["n_seen"].sum()))
                if unseen > 0.005:
                    name += f" ({unseen:.0%} without a decision)"
            bars = ax.bar(x - 0.4 + width * (i + 0.5), values, width, color=colors[(method, budget)], label=name,
                          edgecolor="black" if method == SUBJECT else "none", linewidth=0.8)
            handles.setdefault(name, bars)
        ax.set_xticks(x, [LABEL_NAMES[label].replace("noise: ", "").replace(" ", "\n") for label in labels], fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("records dropped, %")
        ax.set_title(f"{model}, total budget {percent(total)}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.legend(handles=list(handles.values()), loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle("Share of each planted label dropped (all epochs)")
    return fig
