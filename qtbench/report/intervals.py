"""Bootstrap intervals for scores and paired differences, from per-item outcomes.

Input of every function here: a run group's per-item scores, one matrix per
task with one row per seed (training run) and one column per evaluation item,
in points (the metric x 100).  A run's task score is the mean of its row; the
group's task score is the mean over seeds of that; ``avg`` is the unweighted
mean of the task scores (as in the tables).  Matrices may be given as arrays
(columns matched by position) or as ``pandas.DataFrame`` s whose columns are
the items' ``doc_id`` s (matched by label between the two sides of a paired
difference).

Procedure (:data:`PROCEDURE` states it in one sentence for table captions).
Two sources of noise are resampled, independently, in each of
``n_resamples`` bootstrap replicates (``scipy.stats.bootstrap``, one call for
all tasks and ``avg``, so that ``avg``'s interval carries every task's noise):

* **seeds** (training randomness): the group's seeds are drawn with
  replacement - for each side of a difference separately, since two methods'
  runs with the same seed number are different runs (``pair_seeds=True`` draws
  one set of seed indices for both sides instead, for designs where seed ``k``
  of both sides shares something, e.g. data order);
* **items** (which test questions were asked): within each task the items are
  drawn with replacement, and the *same* draw is used for every seed and for
  both sides of a difference - the items are crossed with seeds and shared by
  the two methods, which is what makes the difference *paired*.

A replicate's statistic is the seed- and item-weighted mean (weights = how
often each seed and item was drawn), so no matrix is copied per replicate.
The interval is the percentile interval of the replicates by default
(``method`` passes through to scipy: ``"BCa"`` and ``"basic"`` work too); the
point estimate is the plain mean of the data as observed.  With few seeds the
seed part of an interval is narrow (the bootstrap's plug-in variance of a mean
over S seeds is (S-1)/S of the usual estimate), so use three or more.  A side
with one seed or a task with one item has nothing to resample there: with one
seed per method the interval covers test-set noise only, not training noise.

A difference is ``significant`` when its interval excludes 0.  The *resolvable
difference* of a table (:func:`resolvable_difference`) is the half-width of its
median paired interval: differences well below it cannot be told from noise by
this experiment.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

#: The row that averages the tasks (as the tables' ``avg`` column).
AVG = "avg"

#: Default number of bootstrap replicates (the Monte-Carlo error of a 95%
#: percentile bound is then about 0.06 standard errors of the statistic).
N_RESAMPLES = 2000

#: The bootstrap procedure in one sentence, for table captions and the README.
PROCEDURE = ("{level:.0%} intervals: bootstrap ({n} replicates) resampling seeds and, within each task, items "
             "(the same items for both sides of a paired difference); * marks a difference whose interval excludes 0")


@dataclass(frozen=True)
class _Side:
    """One run group prepared for resampling: per task a float matrix (seeds x items)."""

    matrices: dict[str, np.ndarray]

    @property
    def n_seeds(self) -> int:
        return next(iter(self.matrices.values())).shape[0]


def group_interval(scores: Mapping[str, Any], *, confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                   seed: int = 0, method: str = "percentile") -> pd.DataFrame:
    """Mean over seeds of a run group's score per task and on ``avg``, with a bootstrap interval.

    ``scores`` maps each task to its (seeds x items) matrix in points.  Returns
    one row per task plus ``avg``, indexed by ``task``, with columns ``mean``,
    ``low``, ``high`` (the ``confidence`` interval), ``se`` (bootstrap standard
    error), ``n_seeds`` and ``n_items`` (``avg``: items over all tasks)."""
    side = _prepare(scores, "scores")
    stats = _bootstrap([side], [1.0], pair_seeds=False, confidence=confidence, n_resamples=n_resamples, seed=seed,
                       method=method)
    stats = stats.rename(columns={"estimate": "mean"})
    stats["n_seeds"] = side.n_seeds
    stats["n_items"] = _item_counts(side)
    return stats


def paired_difference(a: Mapping[str, Any], b: Mapping[str, Any], *, pair_seeds: bool = False,
                      confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0,
                      method: str = "percentile") -> pd.DataFrame:
    """Paired difference ``a - b`` of two run groups scored on the same items, per task and on ``avg``.

    ``a`` and ``b`` map the same tasks to (seeds x items) matrices in points;
    the seed counts may differ, the items must be the same (DataFrame columns
    are matched by doc id, arrays by position).  Returns one row per task plus
    ``avg``, indexed by ``task``, with columns ``delta`` (mean of ``a`` minus
    mean of ``b``), ``low``, ``high``, ``se``, ``significant`` (the interval
    excludes 0), ``mean_a``, ``mean_b``, ``n_seeds_a``, ``n_seeds_b``,
    ``n_items``."""
    side_a = _prepare(a, "a")
    side_b = _prepare(b, "b")
    side_a, side_b = _align(side_a, side_b, a, b, pair_seeds)
    stats = _bootstrap([side_a, side_b], [1.0, -1.0], pair_seeds=pair_seeds, confidence=confidence,
                       n_resamples=n_resamples, seed=seed, method=method)
    stats = stats.rename(columns={"estimate": "delta"})
    stats["significant"] = (stats["low"] > 0) | (stats["high"] < 0)
    stats["mean_a"] = _point(side_a)
    stats["mean_b"] = _point(side_b)
    stats["n_seeds_a"] = side_a.n_seeds
    stats["n_seeds_b"] = side_b.n_seeds
    stats["n_items"] = _item_counts(side_a)
    return stats


def contrast(groups: Sequence[Mapping[str, Any]], weights: Sequence[float], *, confidence: float = 0.95,
             n_resamples: int = N_RESAMPLES, seed: int = 0, method: str = "percentile") -> pd.DataFrame:
    """``sum(weight_g * mean_g)`` over run groups scored on the same items, per task and on ``avg``.

    The generalisation of :func:`paired_difference` (weights ``[1, -1]``) to any
    linear combination, e.g. ``R - 0.5 F - 0.5 Z`` (random recovers more than
    half of full's gain over zero-shot exactly when it is > 0).  Seeds are
    resampled per group, items once for all groups (every group aligned on the
    first's doc ids).  Columns: ``estimate``, ``low``, ``high``, ``se``,
    ``significant`` (the interval excludes 0)."""
    if len(groups) != len(weights) or not groups:
        raise ValueError(f"contrast needs one weight per group, got {len(groups)} groups and {len(weights)} weights")
    first = _prepare(groups[0], "group 0")
    sides = [first]
    for i, scores in enumerate(groups[1:], start=1):
        sides.append(_align(first, _prepare(scores, f"group {i}"), groups[0], scores, False)[1])
    stats = _bootstrap(sides, [float(w) for w in weights], pair_seeds=False, confidence=confidence,
                       n_resamples=n_resamples, seed=seed, method=method)
    stats["significant"] = (stats["low"] > 0) | (stats["high"] < 0)
    return stats


def resolvable_difference(intervals: pd.DataFrame | Iterable[pd.DataFrame], task: str | None = AVG, *,
                          low: str = "low", high: str = "high") -> float:
    """Half-width of the median paired interval: the smallest difference the experiment can resolve.

    ``intervals`` is one frame or several frames from :func:`paired_difference`
    (e.g. every row's "vs full" difference of a table), or any frame with the
    ``low`` and ``high`` columns named (e.g. :func:`interval_table`'s
    ``delta_full_low`` / ``delta_full_high``).  Only rows of ``task`` count
    (default ``avg``, the tables' headline column; ``None``: every row); the
    task is the ``task`` column when there is one, else the index.  Rows
    without an interval are skipped; NaN when none is left."""
    frames = [intervals] if isinstance(intervals, pd.DataFrame) else list(intervals)
    if not frames:
        return float("nan")
    frame = pd.concat(frames)
    if task is not None:
        names = frame["task"] if "task" in frame.columns else frame.index.to_series(index=frame.index)
        frame = frame[(names == task).to_numpy()]
    half = (frame[high].to_numpy(float) - frame[low].to_numpy(float)) / 2.0
    half = half[np.isfinite(half)]
    return float(np.median(half)) if half.size else float("nan")


def interval_table(groups: Mapping[Any, Mapping[str, Any]], references: Mapping[str, Mapping[Any, Any]] | None = None,
                   *, confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0,
                   method: str = "percentile") -> pd.DataFrame:
    """Every interval a results table shows, tidy: one row per (group, task or ``avg``).

    ``groups`` maps a group key (e.g. ``(model, method, budget)``) to its
    per-task scores (as :func:`group_interval` takes them).  ``references``
    maps a comparison name to ``{group key: reference group key or None}``,
    e.g. ``{"full": {key: full_key_of_that_model}, "random": {key:
    random_random_key_at_the_same_budget}}``.  Columns: ``group``, ``task``,
    ``mean``, ``low``, ``high``, ``n_seeds``, ``n_items`` and, per comparison
    ``name``, ``delta_<name>``, ``delta_<name>_low``, ``delta_<name>_high``,
    ``delta_<name>_significant`` (NaN / None where a group has no reference or
    is its own)."""
    options = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed, "method": method}
    parts = []
    for key, scores in groups.items():
        part = group_interval(scores, **options)[["mean", "low", "high", "n_seeds", "n_items"]].reset_index()
        part.insert(0, "group", [key] * len(part))
        for name, mapping in (references or {}).items():
            reference = mapping.get(key)
            columns = [f"delta_{name}", f"delta_{name}_low", f"delta_{name}_high", f"delta_{name}_significant"]
            if reference is None or reference == key:
                for column in columns[:3]:
                    part[column] = np.nan
                part[columns[3]] = None
                continue
            if reference not in groups:
                raise KeyError(f"reference {reference!r} of {key!r} ({name}) is not among the groups")
            diff = paired_difference(scores, groups[reference], **options)
            part[columns[0]] = diff["delta"].to_numpy()
            part[columns[1]] = diff["low"].to_numpy()
            part[columns[2]] = diff["high"].to_numpy()
            part[columns[3]] = diff["significant"].astype(object).to_numpy()
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def significance_mark(significant: Any, mark: str = "*") -> str:
    """``mark`` for a significant difference, ``""`` otherwise (and for a missing one)."""
    return mark if isinstance(significant, (bool, np.bool_)) and bool(significant) else ""


def resolvable_caption(value: float, n_resamples: int = N_RESAMPLES, confidence: float = 0.95) -> str:
    """The caption line of a table: the procedure and the resolvable difference (points)."""
    procedure = PROCEDURE.format(level=confidence, n=n_resamples)
    if not np.isfinite(value):
        return f"{procedure}."
    return (f"{procedure}. Smallest resolvable difference (half-width of the median paired interval on the "
            f"average): {value:.2f} points.")


# --------------------------------------------------------------------------- internals


def _prepare(scores: Mapping[str, Any], name: str) -> _Side:
    """Check a group's matrices: 2-D, finite, at least one seed and item, the same seeds for every task."""
    if not scores:
        raise ValueError(f"{name}: no tasks given")
    if AVG in scores:
        raise ValueError(f"{name}: {AVG!r} is reserved for the average over tasks, not a task name")
    matrices = {}
    for task, value in scores.items():
        matrix = np.asarray(value.to_numpy() if isinstance(value, pd.DataFrame) else value, dtype=float)
        if matrix.ndim != 2 or matrix.shape[0] < 1 or matrix.shape[1] < 1:
            raise ValueError(f"{name}, task {task!r}: expected a (seeds x items) matrix with at least one of each, "
                             f"got shape {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise ValueError(f"{name}, task {task!r}: scores must be finite")
        matrices[str(task)] = matrix
    seeds = {task: m.shape[0] for task, m in matrices.items()}
    if len(set(seeds.values())) > 1:
        raise ValueError(f"{name}: every task needs the same seeds (rows per task: {seeds})")
    return _Side(matrices)


def _align(side_a: _Side, side_b: _Side, a: Mapping[str, Any], b: Mapping[str, Any],
           pair_seeds: bool) -> tuple[_Side, _Side]:
    """Same tasks on both sides; ``b``'s items put in ``a``'s order (by doc id for frames), and
    with ``pair_seeds`` its seeds too (by the frames' index)."""
    if set(side_a.matrices) != set(side_b.matrices):
        raise ValueError(f"paired difference needs the same tasks on both sides: a has {sorted(side_a.matrices)}, "
                         f"b has {sorted(side_b.matrices)}")
    aligned = {}
    for task, matrix_a in side_a.matrices.items():
        matrix_b = side_b.matrices[task]
        frame_a, frame_b = a[task], b[task]
        if isinstance(frame_a, pd.DataFrame) and isinstance(frame_b, pd.DataFrame):
            only_a = frame_a.columns.difference(frame_b.columns)
            only_b = frame_b.columns.difference(frame_a.columns)
            if len(only_a) or len(only_b):
                raise ValueError(f"task {task!r}: the two sides were not scored on the same items "
                                 f"({len(only_a)} doc ids only in a, e.g. {list(only_a[:3])}; "
                                 f"{len(only_b)} only in b, e.g. {list(only_b[:3])})")
            rows = frame_b.index
            if pair_seeds:
                if set(frame_a.index) != set(frame_b.index):
                    raise ValueError(f"task {task!r}: pair_seeds needs the same seeds on both sides, a has "
                                     f"{list(frame_a.index)}, b has {list(frame_b.index)}")
                rows = frame_a.index
            matrix_b = frame_b.reindex(index=rows, columns=frame_a.columns).to_numpy(dtype=float)
        elif matrix_a.shape[1] != matrix_b.shape[1]:
            raise ValueError(f"task {task!r}: a has {matrix_a.shape[1]} items, b has {matrix_b.shape[1]}; "
                             f"a paired difference needs the same items")
        aligned[task] = matrix_b
    return side_a, _Side({task: aligned[task] for task in side_a.matrices})


def _point(side: _Side) -> list[float]:
    """Mean over seeds and items per task, then ``avg`` (the rows of the result frames)."""
    per_task = [float(m.mean()) for m in side.matrices.values()]
    return per_task + [float(np.mean(per_task))]


def _item_counts(side: _Side) -> list[int]:
    counts = [m.shape[1] for m in side.matrices.values()]
    return counts + [sum(counts)]


def _counts(indices: np.ndarray, size: int) -> np.ndarray:
    """How often each of ``size`` indices occurs in each row of ``indices`` (vectorised bincount)."""
    flat = indices.reshape(-1, indices.shape[-1]).astype(np.intp)
    rows = flat.shape[0]
    offsets = (np.arange(rows, dtype=np.intp) * size)[:, None]
    counts = np.bincount((flat + offsets).ravel(), minlength=rows * size)
    return counts.reshape(*indices.shape[:-1], size)


def _bootstrap(sides: Sequence[_Side], signs: Sequence[float], *, pair_seeds: bool, confidence: float,
               n_resamples: int, seed: int, method: str) -> pd.DataFrame:
    """Point estimate and interval of ``sum(sign * group mean)`` per task and on ``avg``.

    The samples handed to ``scipy.stats.bootstrap`` are index arrays - one per
    side's seeds (one shared by all sides with ``pair_seeds``) and one per
    task's items - which scipy resamples independently of one another; the
    statistic turns the drawn indices into weights."""
    from scipy import stats

    tasks = list(sides[0].matrices)
    data: list[np.ndarray] = []

    def slot(size: int) -> int | None:
        if size < 2:  # one seed or item: nothing to resample
            return None
        data.append(np.arange(size))
        return len(data) - 1

    if pair_seeds:
        counts = {side.n_seeds for side in sides}
        if len(counts) > 1:
            raise ValueError(f"pair_seeds needs the same number of seeds on both sides, got {[s.n_seeds for s in sides]}")
        shared = slot(sides[0].n_seeds)
        seed_slots = [shared] * len(sides)
    else:
        seed_slots = [slot(side.n_seeds) for side in sides]
    item_slots = [slot(sides[0].matrices[task].shape[1]) for task in tasks]
    if not data:
        raise ValueError("nothing to resample: every side has one seed and every task one item")

    def weights(indices: tuple[np.ndarray, ...], position: int | None, size: int, lead: tuple[int, ...]) -> np.ndarray:
        if position is None:
            return np.broadcast_to(np.full(size, 1.0 / size), (*lead, size))
        drawn = np.broadcast_to(indices[position], (*lead, indices[position].shape[-1]))
        return _counts(drawn, size) / drawn.shape[-1]

    def statistic(*indices: np.ndarray, axis: int = -1) -> np.ndarray:
        lead = np.broadcast_shapes(*(x.shape[:-1] for x in indices))
        seed_weights = [weights(indices, s, side.n_seeds, lead) for s, side in zip(seed_slots, sides)]
        per_task = []
        for task, item_slot in zip(tasks, item_slots):
            item_weights = weights(indices, item_slot, sides[0].matrices[task].shape[1], lead)
            value = 0.0
            for sign, side, seed_weight in zip(signs, sides, seed_weights):
                by_item = np.matmul(seed_weight, side.matrices[task])  # (..., items): seed-weighted row means
                value = value + sign * np.einsum("...i,...i->...", by_item, item_weights)
            per_task.append(np.asarray(value, dtype=float))
        per_task.append(np.mean(per_task, axis=0))
        return np.stack(per_task, axis=0)

    # the point estimate from plain means (the weighted statistic agrees up to rounding)
    estimate = np.sum([sign * np.asarray(_point(side)) for sign, side in zip(signs, sides)], axis=0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        # BCa on a constant bootstrap distribution divides 0 by 0: its NaN bounds are replaced below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(data, statistic, n_resamples=n_resamples, batch=min(n_resamples, 500),
                                 vectorized=True, paired=False, confidence_level=confidence, method=method,
                                 rng=np.random.default_rng(seed))
    low = np.asarray(result.confidence_interval.low, dtype=float)
    high = np.asarray(result.confidence_interval.high, dtype=float)
    degenerate = ~(np.isfinite(low) & np.isfinite(high))
    if degenerate.any():  # BCa on a constant bootstrap distribution: fall back to its percentiles
        alpha = (1.0 - confidence) / 2.0
        fallback = np.quantile(result.bootstrap_distribution, [alpha, 1.0 - alpha], axis=-1)
        low = np.where(degenerate, fallback[0], low)
        high = np.where(degenerate, fallback[1], high)
    frame = pd.DataFrame({"estimate": estimate, "low": low, "high": high,
                          "se": np.asarray(result.standard_error, dtype=float)},
                         index=pd.Index([*tasks, AVG], name="task"))
    return frame
