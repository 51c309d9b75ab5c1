"""Place a whole data set on the Error-Uncertainty plane of a model.

One batched, no-grad pass gives every record's response perplexity and mean
predictive entropy (both ``entropy_over`` readings).  Quadrants are assigned two
ways:

* ``batch_quadrant`` - what Q-Tuning itself would decide in training: records
  are shuffled into micro-batches of the training size and each micro-batch is
  triaged by :func:`qtbench.methods.q_tuning.decide` at the given ``r_s`` (Q2/Q4 kept,
  top-ups marked ``Q2+``/``Q4+``, Q1/Q3 and the unassigned middle dropped);
* ``quadrant`` - the same bisection run once over the whole data set, a
  global picture of the plane.

With the world's ground truth (``sft_meta.jsonl``) the report cross-tabulates
the planted noise types and duplicates against the quadrants.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from qtbench.data.batches import collate, tokenize_records
from qtbench.methods.base import BatchStats, Budget
from qtbench.methods.q_tuning import bisect_thresholds, decide, quadrant_labels, quadrants
from qtbench.methods.stats import compute_batch_stats
from qtbench.world.labels import NOISE_TYPES

QUADRANT_ORDER = ["Q1", "Q2", "Q2+", "Q3", "Q4", "Q4+", "mid"]


def score_records(model: Any, tokenizer: Any, records: list[dict], micro_batch: int, max_length: int,
                  budget: Budget, options: Mapping[str, Any], seed: int = 0, chat_template: bool = False,
                  chunk_size: int = 128) -> pd.DataFrame:
    """Per-record PPL, entropy and quadrants; one pass in training-sized micro-batches."""
    examples = tokenize_records(records, tokenizer, max_length, chat_template)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(order), micro_batch):
        ids = order[start:start + micro_batch]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in ids], tokenizer.pad_token_id).items()}
        stats = compute_batch_stats(model, batch, {"nll", "entropy"}, torch.tensor(ids), chunk_size=chunk_size)
        stats = BatchStats(stats.nll.cpu(), stats.entropy.cpu(), stats.response_mask.cpu(),
                           stats.attention_mask.cpu(), stats.sample_ids)
        decision = decide(stats, budget, **options)
        labels = quadrants(decision)
        for row, index in enumerate(ids):
            rows.append({
                "index": index,
                "ppl": float(stats.sample_ppl()[row]),
                "entropy_all": float(stats.sample_mean_entropy("all")[row]),
                "entropy_response": float(stats.sample_mean_entropy("response")[row]),
                "response_tokens": int(stats.response_counts()[row]),
                "batch_quadrant": labels[row],
                "kept": bool(decision.selection.sample_keep[row]),
            })
    frame = pd.DataFrame(rows).sort_values("index").reset_index(drop=True)
    entropy_col = "entropy_all" if decision.options["entropy_over"] == "all" else "entropy_response"
    ppl, ent = torch.tensor(frame["ppl"].to_numpy(), dtype=torch.float64), torch.tensor(frame[entropy_col].to_numpy(), dtype=torch.float64)
    cut = bisect_thresholds(ppl, ent, budget.sample_ratio)
    frame["quadrant"] = quadrant_labels(ppl, ent, cut.ppl_hi, cut.ppl_lo, cut.ent_lo, cut.ent_hi)
    frame["entropy"] = frame[entropy_col]  # the triage's reading (options entropy_over)
    frame.attrs["entropy_over"] = decision.options["entropy_over"]
    frame.attrs["thresholds"] = {"ppl_hi": cut.ppl_hi, "ppl_lo": cut.ppl_lo, "ent_lo": cut.ent_lo, "ent_hi": cut.ent_hi}
    return frame


def truth_label(meta: Mapping[str, Any]) -> str:
    if meta.get("noise"):
        return f"noise:{meta['noise']}"
    if meta.get("duplicate_of") is not None:
        return "duplicate"
    return "clean"


#: The planted labels whose separability from clean records :func:`label_auroc` reports.
AUROC_LABELS = (*(f"noise:{kind}" for kind in NOISE_TYPES), "duplicate")


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve of a score that ranks ``positive`` above
    ``negative``: P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney U / (n1 n2));
    NaN when either side is empty.  0.5 = no separation; below 0.5 the label
    scores *lower* than clean records.  scikit-learn's ``roc_auc_score`` when
    installed, else scipy's ``mannwhitneyu``: the same number."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        from scipy.stats import mannwhitneyu

        return float(mannwhitneyu(pos, neg).statistic) / (len(pos) * len(neg))
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def label_auroc(frame: pd.DataFrame, columns: Sequence[str] = ("ppl", "entropy")) -> pd.DataFrame:
    """Per planted label (rows, :data:`AUROC_LABELS`; ``n`` its records): the AUROC
    of each per-sample score in ``columns`` for telling that label's records from
    the clean ones (the ``truth`` column).  How well the EU plane's axes under a
    model - the base model, for the world's calibration - see each kind of noise."""
    clean = frame[frame["truth"] == "clean"]
    rows = []
    for label in AUROC_LABELS:
        mine = frame[frame["truth"] == label]
        row = {"label": label, "n": len(mine)}
        for column in columns:
            row[f"AUROC {column}"] = auroc(mine[column], clean[column])
        rows.append(row)
    return pd.DataFrame(rows).set_index("label")


def crosstab(frame: pd.DataFrame, column: str = "batch_quadrant") -> pd.DataFrame:
    """Rows: ground-truth label; columns: quadrant; cells: share of the row (%)."""
    table = pd.crosstab(frame["truth"], frame[column], normalize="index") * 100
    columns = [q for q in QUADRANT_ORDER if q in table.columns]
    table = table[columns]
    table["n"] = frame["truth"].value_counts()
    return table.round(1)


def run(checkpoint: str, data: str, out: str | Path, *, r_s: float = 0.25, options: Mapping[str, Any] | None = None,
        micro_batch: int = 8, max_length: int = 256, meta: str | None = None, seed: int = 0,
        data_cfg: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Score ``data`` with ``checkpoint``; write a CSV (and print the truth crosstab)."""
    from qtbench.io import write_text_atomic
    from qtbench.models import load_model, load_tokenizer
    from qtbench.data.sources import load_sft_records
    from qtbench.io import iter_jsonl

    data_cfg = dict(data_cfg or {})
    records, report = load_sft_records(data, data_cfg.get("format", "auto"), on_bad_record="fail")
    tokenizer = load_tokenizer(checkpoint)
    model = load_model(checkpoint).eval()
    frame = score_records(model, tokenizer, records, micro_batch, max_length, Budget(r_s, 1.0), options or {}, seed)
    if meta:
        metas = list(iter_jsonl(Path(meta)))
        if len(metas) != len(frame):
            raise ValueError(f"{meta}: {len(metas)} metadata rows for {len(frame)} records of {data}")
        frame["truth"] = [truth_label(m) for m in metas]
        frame["family"] = [m.get("family") for m in metas]
    write_text_atomic(out, frame.to_csv(index=False))
    return frame
