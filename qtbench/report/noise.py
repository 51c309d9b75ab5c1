"""Noise recall: which planted problems of the synthetic world did a method drop?

The default world plants noise in the SFT set and says so in
``world/sft_meta.jsonl`` (one JSON per record, same order as ``sft.jsonl``:
``index``, ``family``, ``noise``: null | one of
:data:`qtbench.world.labels.NOISE_TYPES`, ``duplicate_of``: null | int,
``covered``).  The model never sees these labels; the trainer's per-sample
trace says what each method did with each record.  This module joins the two.

Per-sample decisions come from the trainer's ``trace.jsonl`` (one row per
micro-batch, :func:`qtbench.report.runs.trace_samples` turns them into one row per
decision):

* every micro-batch row carries ``samples``, column-wise: ``id`` (the record's
  index in the SFT file = ``index`` in ``sft_meta.jsonl``), ``kept`` (entered the
  backward pass), ``weight``, and the method's own values - Q-Tuning: ``ppl``,
  ``entropy`` and ``quadrant`` (``Q1``..``Q4`` under the micro-batch's final
  thresholds, ``mid`` between them, ``Q2+``/``Q4+`` for top-ups);
* a row of an epoch that an epoch-level pruner planned carries ``epoch_plan``:
  ``{"id": [the plan's record ids], "n_records": N}``.  Records a plan leaves out
  never reach a micro-batch; without ``epoch_plan`` they have no decision row
  and are counted as ``n_unseen``, not as dropped.

Definitions: a record is *dropped in an epoch* when any of its decision rows in
that epoch says ``kept: false``; it is *seen* in an epoch when it has any row
there (a run cut short by ``max_steps`` never sees some records).  Per label
(each noise type, ``any_noise``, ``duplicate`` - the
copy that names ``duplicate_of`` -, ``clean`` = neither), and per epoch and over
all epochs (``epoch = "all"``: every record-epoch decision counted once):

* ``drop_rate`` = dropped records with the label / seen records with the label
  (the noise *recall* of the drop decision);
* ``kept_share`` = kept records with the label / all kept records (for
  ``any_noise``: the share of what the method trained on that was noise);
* ``seen_share`` = seen records with the label / all seen records (the base rate).

A method blind to the labels drops every label at the same rate (1 - r_s); the
gap between a noise label's ``drop_rate`` and ``clean``'s is the signal.
"""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from qtbench.io import write_text_atomic
from qtbench.report.naming import GROUP_RANK, row_family, row_group, split_budget
from qtbench.report.render import TABLE_FORMATS, html_page, to_html, to_latex, to_markdown
from qtbench.report.runs import jsonl_frame
from qtbench.world.labels import NOISE_TYPES

LABELS = (*NOISE_TYPES, "any_noise", "duplicate", "clean")
QUADRANTS = ("Q1", "Q2", "Q3", "Q4", "Q2+", "Q4+", "mid")
#: Methods whose samples can be dropped (token-only methods never drop a sample).
RECALL_FAMILIES = ("full", "sample", "pair", "joint")

RUN_KEYS = ["model", "group", "method", "budget", "total_budget", "seed"]
RECALL_COLUMNS = [*RUN_KEYS, "epoch", "label", "n_seen", "n_dropped", "drop_rate", "n_kept", "kept_share", "seen_share",
                  "n_unseen"]
QUADRANT_COLUMNS = [*RUN_KEYS, "epoch", "label", "n", *[f"share_{q}" for q in QUADRANTS], "kept_rate"]


# --------------------------------------------------------------------------- ground truth


def load_meta(path: str | Path) -> pd.DataFrame:
    """``sft_meta.jsonl`` as a frame indexed by record index, with one boolean
    column per label (:data:`LABELS`) beside the raw ``noise``/``duplicate_of``/``family``."""
    meta = jsonl_frame(path)
    if meta.empty:
        raise ValueError(f"{path}: no records")
    missing = {"index", "noise", "duplicate_of"} - set(meta.columns)
    if missing:
        raise ValueError(f"{path}: missing field(s) {sorted(missing)} (expected the world's sft_meta.jsonl)")
    return label_meta(meta)


def label_meta(meta: pd.DataFrame | Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Add the boolean label columns to raw meta rows (see :func:`load_meta`)."""
    frame = meta.copy() if isinstance(meta, pd.DataFrame) else pd.DataFrame(list(meta))
    frame = frame.set_index(frame["index"].astype(int)).sort_index()
    noise = frame["noise"].astype(object).where(frame["noise"].notna(), None)
    for kind in NOISE_TYPES:
        frame[kind] = noise == kind
    frame["any_noise"] = noise.notna()
    frame["duplicate"] = frame["duplicate_of"].notna()
    frame["clean"] = ~frame["any_noise"] & ~frame["duplicate"]
    return frame


# --------------------------------------------------------------------------- decisions


def epoch_decisions(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per (epoch, sample_id) seen: ``kept`` = every decision row of the
    record in that epoch kept it."""
    if samples is None or samples.empty:
        return pd.DataFrame(columns=["epoch", "sample_id", "kept"])
    frame = samples[["epoch", "sample_id", "kept"]].copy()
    frame["kept"] = frame["kept"].astype(bool)
    out = frame.groupby(["epoch", "sample_id"], sort=True)["kept"].all().reset_index()
    out["epoch"] = out["epoch"].astype(int)
    out["sample_id"] = out["sample_id"].astype(int)
    return out


def noise_recall(samples: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Per epoch (and ``"all"``) and label: seen, dropped, drop rate, kept share,
    seen share - for one run's per-sample trace against labelled meta."""
    decisions = epoch_decisions(samples)
    columns = ["epoch", "label", "n_seen", "n_dropped", "drop_rate", "n_kept", "kept_share", "seen_share", "n_unseen"]
    if decisions.empty:
        return pd.DataFrame(columns=columns)
    unknown = set(decisions["sample_id"]) - set(meta.index)
    if unknown:
        raise ValueError(f"{len(unknown)} sample id(s) of the trace are not in the world's meta (e.g. {min(unknown)})")
    labels = meta.loc[decisions["sample_id"], list(LABELS)].reset_index(drop=True)
    joined = pd.concat([decisions.reset_index(drop=True), labels], axis=1)
    rows = []
    n_epochs = joined["epoch"].nunique()
    parts = [(str(e), part, 1) for e, part in joined.groupby("epoch", sort=True)] + [("all", joined, n_epochs)]
    for epoch, part, epochs in parts:
        kept = part["kept"]
        n_seen_all, n_kept_all = len(part), int(kept.sum())
        for label in LABELS:
            mask = part[label]
            n_seen = int(mask.sum())
            n_unseen = int(meta[label].sum()) * epochs - n_seen
            n_dropped = int((mask & ~kept).sum())
            n_kept = int((mask & kept).sum())
            rows.append({"epoch": epoch, "label": label, "n_seen": n_seen, "n_dropped": n_dropped,
                         "drop_rate": n_dropped / n_seen if n_seen else math.nan, "n_kept": n_kept,
                         "kept_share": n_kept / n_kept_all if n_kept_all else math.nan,
                         "seen_share": n_seen / n_seen_all if n_seen_all else math.nan, "n_unseen": n_unseen})
    return pd.DataFrame(rows, columns=columns)


def _run_keys(run: Any, variants: Mapping[str, Any] | None = None) -> dict[str, Any]:
    parts = split_budget(run.budget)
    family = row_family(run.method, variants)
    return {"model": run.model, "group": row_group(run.method, variants), "method": run.method, "budget": run.budget,
            "total_budget": parts[2] if parts else "", "seed": run.seed, "_family": family}


def empty_recall() -> pd.DataFrame:
    return pd.DataFrame(columns=RECALL_COLUMNS)


def empty_quadrants() -> pd.DataFrame:
    return pd.DataFrame(columns=QUADRANT_COLUMNS)


def noise_recall_table(runs: Iterable[Any], meta: pd.DataFrame, variants: Mapping[str, Any] | None = None
                       ) -> pd.DataFrame:
    """:func:`noise_recall` of every run that has a per-sample trace and whose
    method can drop samples (:data:`RECALL_FAMILIES`; ``full`` is the base-rate
    reference), tidy (:data:`RECALL_COLUMNS`); ``variants`` resolve variant names."""
    def recall(run: Any, family: str) -> pd.DataFrame | None:
        return noise_recall(run.samples, meta) if family in RECALL_FAMILIES else None

    return _per_run(runs, recall, variants, RECALL_COLUMNS)


def _per_run(runs: Iterable[Any], table_of: Any, variants: Mapping[str, Any] | None, columns: list[str]) -> pd.DataFrame:
    """``table_of(run, family)`` for every run with per-sample decisions (``None``
    or an empty frame skips the run), each row prefixed by the run's keys."""
    parts = []
    for run in runs:
        keys = _run_keys(run, variants)
        family = keys.pop("_family")
        table = table_of(run, family) if run.samples is not None else None
        if table is None or table.empty:
            continue
        for key, value in reversed(list(keys.items())):
            table.insert(0, key, value)
        parts.append(table)
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def quadrant_shares_by_label(samples: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Per epoch (and ``"all"``) and label: the share of the label's batch
    decisions in each quadrant (:data:`QUADRANTS`: ``mid`` = between the
    thresholds, ``Q2+``/``Q4+`` = topped up) and the share kept.  Empty when the
    trace carries no quadrants."""
    columns = ["epoch", "label", "n", *[f"share_{q}" for q in QUADRANTS], "kept_rate"]
    if samples is None or "quadrant" not in samples.columns or not samples["quadrant"].notna().any():
        return pd.DataFrame(columns=columns)
    rows_in = samples[samples["stage"] == "batch"] if "stage" in samples.columns else samples
    if rows_in.empty:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame({"epoch": rows_in["epoch"].astype(int).to_numpy(),
                          "quadrant": rows_in["quadrant"].astype(object).where(rows_in["quadrant"].notna(), "mid").to_numpy(),
                          "kept": rows_in["kept"].astype(bool).to_numpy()})
    labels = meta.loc[rows_in["sample_id"].astype(int), list(LABELS)].reset_index(drop=True)
    frame = pd.concat([frame, labels], axis=1)
    rows = []
    for epoch, part in [(str(e), p) for e, p in frame.groupby("epoch", sort=True)] + [("all", frame)]:
        for label in LABELS:
            sub = part[part[label]]
            n = len(sub)
            row = {"epoch": epoch, "label": label, "n": n}
            for q in QUADRANTS:
                row[f"share_{q}"] = float((sub["quadrant"] == q).sum()) / n if n else math.nan
            row["kept_rate"] = float(sub["kept"].sum()) / n if n else math.nan
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def quadrant_table(runs: Iterable[Any], meta: pd.DataFrame, variants: Mapping[str, Any] | None = None
                   ) -> pd.DataFrame:
    """:func:`quadrant_shares_by_label` of every run whose trace has quadrants (Q-Tuning)."""
    return _per_run(runs, lambda run, family: quadrant_shares_by_label(run.samples, meta), variants, QUADRANT_COLUMNS)


# --------------------------------------------------------------------------- display


def recall_summary(recall: pd.DataFrame) -> pd.DataFrame:
    """The display table: one row per (model, method, budget, epoch), means over
    seeds, in percent: drop rate of each label, and the noise (any type) and
    duplicate shares of the kept records and of the data."""
    columns = ["model", "group", "method", "budget", "total_budget", "epoch", "seeds",
               *[f"{label} dropped %" for label in LABELS],
               "noise in kept %", "noise in data %", "duplicate in kept %", "no decision %"]
    if recall.empty:
        return pd.DataFrame(columns=columns)
    keys = ["model", "group", "method", "budget", "total_budget", "epoch"]
    rows = []
    for key, part in recall.groupby(keys, sort=False):
        by = part.groupby("label")
        drop = by["drop_rate"].mean() * 100.0
        kept = by["kept_share"].mean() * 100.0
        seen = by["seen_share"].mean() * 100.0
        row = dict(zip(keys, key))
        row["seeds"] = int(part["seed"].nunique())
        for label in LABELS:
            row[f"{label} dropped %"] = drop.get(label, math.nan)
        row["noise in kept %"] = kept.get("any_noise", math.nan)
        row["noise in data %"] = seen.get("any_noise", math.nan)
        row["duplicate in kept %"] = kept.get("duplicate", math.nan)
        every = part[part["label"].isin(["any_noise", "duplicate", "clean"])]
        seen_total, unseen_total = every["n_seen"].sum(), every["n_unseen"].sum()
        row["no decision %"] = 100.0 * unseen_total / max(1, seen_total + unseen_total)
        rows.append(row)
    return _ordered(pd.DataFrame(rows, columns=columns))


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    first = {m: i for i, m in enumerate(dict.fromkeys(frame["method"]))}
    frame["_t"] = frame["total_budget"].map(lambda t: Decimal(t) if t else Decimal(1))
    frame["_g"] = frame["group"].map(GROUP_RANK)
    frame["_m"] = frame["method"].map(first)
    frame["_e"] = frame["epoch"].map(lambda e: 10**9 if e == "all" else int(e))
    return (frame.sort_values(["model", "_t", "_g", "_m", "budget", "_e"], kind="stable")
            .drop(columns=["_t", "_g", "_m", "_e"]).reset_index(drop=True))


RECALL_NOTE = ("Noise recall on the synthetic world (ground truth: world/sft_meta.jsonl). '<label> dropped %' = records "
               "with the label that the method dropped / such records it saw, per epoch and over all epochs ('all'); "
               "'noise in kept %' = noise records (any type) among the kept records; 'noise in data %' = the base rate. "
               "A method blind to the labels drops every label at the same rate: compare with 'clean dropped %'. "
               "Means over seeds. 'full' is the no-pruning reference. 'no decision %' = record-epochs without a decision in the "
               "trace (a run cut short by max_steps, or an epoch-level pruner's plan that the trace does not record): "
               "they count neither as dropped nor as kept.")
QUADRANT_NOTE = ("Q-Tuning's quadrants by ground-truth label (per-micro-batch decisions): share of each label's records "
                 "in Q1 (high PPL, high entropy: dropped as harmful noise), Q2 (high PPL, low entropy: kept, "
                 "token-pruned), Q3 (low PPL, low entropy: dropped as redundant), Q4 (low PPL, high entropy: kept "
                 "whole), Q2+/Q4+ (outside Q2 and Q4 but topped up to K, token-pruned like Q2 or kept whole like Q4), "
                 "mid (between the thresholds, dropped), and the share kept.")


def write_recall_table(recall: pd.DataFrame, stem: str | Path, has_truth: bool = True, has_samples: bool = True) -> list[Path]:
    """``noise_recall.csv`` (tidy, :data:`RECALL_COLUMNS`) and the summary as
    ``.md``/``.tex``/``.html``; a note instead of rows when there is no ground
    truth or no per-sample trace."""
    stem = Path(stem)
    paths = [stem.with_suffix(f".{ext}") for ext in TABLE_FORMATS]
    summary = recall_summary(recall)
    note = RECALL_NOTE
    if not has_truth:
        note = "No ground truth: noise recall needs the synthetic world's sft_meta.jsonl (data.source: world)."
    elif not has_samples:
        note = "No per-sample decisions in the checkpoints' trace.jsonl: noise recall needs the trainer's per-sample trace."
    write_text_atomic(paths[0], recall.to_csv(index=False))
    write_text_atomic(paths[1], f"{note}\n\n" + to_markdown(summary, floatfmt=".1f"))
    write_text_atomic(paths[2], to_latex(summary, floatfmt=".1f"))
    write_text_atomic(paths[3], html_page("Noise recall", to_html(summary, floatfmt=".1f"), note))
    return paths


def write_quadrant_table(table: pd.DataFrame, stem: str | Path) -> list[Path]:
    """``noise_quadrants.csv`` (tidy, :data:`QUADRANT_COLUMNS`) and the same rows in
    percent as ``.md``/``.tex``/``.html``."""
    stem = Path(stem)
    paths = [stem.with_suffix(f".{ext}") for ext in TABLE_FORMATS]
    shown = table.copy()
    if not shown.empty:
        for column in [*[f"share_{q}" for q in QUADRANTS], "kept_rate"]:
            shown[column] = shown[column].astype(float) * 100.0
        shown = shown.drop(columns=["group"]).rename(columns={f"share_{q}": f"{q} %" for q in QUADRANTS} | {"kept_rate": "kept %"})
    write_text_atomic(paths[0], table.to_csv(index=False))
    write_text_atomic(paths[1], f"{QUADRANT_NOTE}\n\n" + to_markdown(shown, floatfmt=".1f"))
    write_text_atomic(paths[2], to_latex(shown, floatfmt=".1f"))
    write_text_atomic(paths[3], html_page("Quadrants by label", to_html(shown, floatfmt=".1f"), QUADRANT_NOTE))
    return paths
