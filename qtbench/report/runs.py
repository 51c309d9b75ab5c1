"""Reading what the rules wrote: evaluation records and training runs' checkpoint folders.

* evaluation records (``evals/...json``, :mod:`qtbench.evaluate`):
  :func:`load_eval_records`;
* a run's checkpoint folder: ``train_summary.json`` and ``trace.jsonl`` (one
  row per micro-batch, read through :func:`qtbench.io.read_jsonl`), whose rows
  carry the per-sample decisions (:func:`trace_samples`): :func:`load_run`;
* effective budget (:func:`effective_budget_table`): from ``train_summary.json``
  when present (``effective_sample_fraction`` = samples that entered a backward pass
  / (records x epochs), ``effective_token_fraction`` = response tokens that carried
  loss / (response tokens x epochs), ``flops_relative`` = (2N x scored tokens +
  6N x trained tokens) / (6N x all tokens x epochs)); otherwise from ``trace.jsonl``
  (:func:`effective_budget_from_trace`), without FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from qtbench.io import read_json, read_jsonl

#: The effective-budget columns of :func:`effective_budget_table` (one row per run).
EFFECTIVE_COLUMNS = ["eff_sample_fraction", "eff_token_fraction", "flops_relative", "optimizer_steps"]


def load_eval_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The evaluation records (``qtbench.evaluate``'s JSON files), in order."""
    return [read_json(p) for p in paths]


def jsonl_frame(path: str | Path) -> pd.DataFrame:
    """A JSON-lines file as a frame (empty frame for an empty file); a corrupt
    line is named by :func:`qtbench.io.read_jsonl`."""
    return pd.DataFrame(read_jsonl(path))


@dataclass
class RunArtifacts:
    """What a training run left in its checkpoint folder."""

    run_dir: Path
    summary: dict[str, Any]
    trace: pd.DataFrame
    samples: pd.DataFrame | None = None

    @property
    def run_id(self) -> str:
        return str(self.summary["run_id"])

    @property
    def method(self) -> str:
        return str(self.summary["method"])

    @property
    def model(self) -> str:
        return str(self.summary["model"])

    @property
    def budget(self) -> str:
        return str(self.summary["budget"])

    @property
    def seed(self) -> int:
        return int(self.summary["seed"])


def load_run(run_dir: str | Path) -> RunArtifacts:
    """Read ``train_summary.json`` (required) and ``trace.jsonl`` (optional); the
    trace's per-sample decisions become :attr:`RunArtifacts.samples`
    (:func:`trace_samples`) and leave the trace frame."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "train_summary.json")
    trace = jsonl_frame(run_dir / "trace.jsonl") if (run_dir / "trace.jsonl").exists() else pd.DataFrame()
    samples = trace_samples(trace)
    trace = trace.drop(columns=[c for c in ("samples", "epoch_plan") if c in trace.columns])
    return RunArtifacts(run_dir, summary, trace, samples)


#: Per-sample values every decision row has; methods add their own (Q-Tuning: ppl, entropy, quadrant).
SAMPLE_COLUMNS = ["epoch", "stage", "step", "micro_batch", "sample_id", "kept", "weight"]


def trace_samples(trace: pd.DataFrame) -> pd.DataFrame | None:
    """One row per decision about one sample, from the trace (``None`` when the
    trace carries none):

    * ``stage = "batch"``: each micro-batch row's column-wise ``samples``
      (``id``, ``kept``, ``weight`` and the method's own values, e.g. Q-Tuning's
      ``ppl``, ``entropy``, ``quadrant``);
    * ``stage = "epoch"``: an ``epoch_plan`` (``{"id": [kept ids], "n_records": N}``)
      on a row of an epoch that an epoch-level pruner planned: every record of
      the data set, ``kept`` when the plan holds it."""
    if trace is None or trace.empty or "samples" not in trace.columns:
        return None
    columns: dict[str, list] = {c: [] for c in SAMPLE_COLUMNS}
    extra: dict[str, list] = {}
    count = 0
    for row in trace.itertuples(index=False):
        block = getattr(row, "samples")
        if isinstance(block, dict) and block.get("id"):
            n = len(block["id"])
            columns["epoch"] += [int(row.epoch)] * n
            columns["stage"] += ["batch"] * n
            columns["step"] += [int(row.step)] * n
            columns["micro_batch"] += [int(getattr(row, "micro_batch", -1))] * n
            columns["sample_id"] += [int(i) for i in block["id"]]
            columns["kept"] += [bool(k) for k in block["kept"]]
            columns["weight"] += list(block.get("weight", [1.0] * n))
            for name, values in block.items():
                if name in ("id", "kept", "weight"):
                    continue
                extra.setdefault(name, [None] * count).extend(values)
            count += n
            for values in extra.values():
                values.extend([None] * (count - len(values)))
        plan = getattr(row, "epoch_plan", None)
        if isinstance(plan, dict):
            kept = set(int(i) for i in plan["id"])
            n = int(plan["n_records"])
            columns["epoch"] += [int(row.epoch)] * n
            columns["stage"] += ["epoch"] * n
            columns["step"] += [None] * n
            columns["micro_batch"] += [None] * n
            columns["sample_id"] += list(range(n))
            columns["kept"] += [i in kept for i in range(n)]
            columns["weight"] += [None] * n
            count += n
            for values in extra.values():
                values.extend([None] * n)
    if not count:
        return None
    frame = pd.DataFrame(columns)
    for name, values in extra.items():
        frame[name] = pd.Series(values, dtype=object)
    for name in ("ppl", "entropy"):
        if name in frame.columns:
            frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame


def load_runs(run_dirs: Iterable[str | Path]) -> list[RunArtifacts]:
    """:func:`load_run` of each checkpoint folder, in order."""
    return [load_run(d) for d in run_dirs]


def effective_budget_from_trace(trace: pd.DataFrame | Sequence[Mapping[str, Any]], *, n_records: int | None = None,
                                response_tokens: int | None = None, epochs: int | None = None) -> dict[str, float]:
    """Effective budget of a run from its per-micro-batch trace rows.

    ``sample_fraction`` = sum(samples_kept) / (records x epochs) and
    ``token_fraction`` = sum(response_tokens_kept) / (response tokens x epochs).
    Without ``n_records``/``response_tokens`` the denominators are what the trace
    saw (sum of ``batch_size`` / ``response_tokens``), which equals the data set
    times the epochs for per-micro-batch methods but not for epoch-level pruners
    (they never show the samples they dropped): pass the data set's sizes then.
    ``epochs`` defaults to the number of distinct epochs in the trace."""
    rows = trace if isinstance(trace, pd.DataFrame) else pd.DataFrame(list(trace))
    if rows.empty:
        return {"sample_fraction": math.nan, "token_fraction": math.nan, "micro_batches": 0, "steps": 0}
    n_epochs = int(epochs) if epochs is not None else int(rows["epoch"].nunique())
    samples_den = n_records * n_epochs if n_records is not None else rows["batch_size"].sum()
    tokens_den = response_tokens * n_epochs if response_tokens is not None else rows["response_tokens"].sum()
    return {
        "sample_fraction": float(rows["samples_kept"].sum()) / max(1, float(samples_den)),
        "token_fraction": float(rows["response_tokens_kept"].sum()) / max(1, float(tokens_den)),
        "micro_batches": int(len(rows)),
        "steps": int(rows["step"].nunique()),
    }


def effective_budget_table(runs: Iterable[RunArtifacts]) -> pd.DataFrame:
    """One row per run: effective sample and token fractions, FLOPs relative to
    full data, optimizer steps, and where the numbers came from."""
    rows = []
    for run in runs:
        s = run.summary
        if "effective_sample_fraction" in s:
            row = {"eff_sample_fraction": s["effective_sample_fraction"], "eff_token_fraction": s["effective_token_fraction"],
                   "flops_relative": s.get("flops_relative", math.nan), "optimizer_steps": s.get("optimizer_steps"),
                   "source": "train_summary"}
        else:
            eff = effective_budget_from_trace(run.trace, n_records=s.get("n_records"), epochs=s.get("epochs"))
            row = {"eff_sample_fraction": eff["sample_fraction"], "eff_token_fraction": eff["token_fraction"],
                   "flops_relative": math.nan, "optimizer_steps": eff["steps"], "source": "trace"}
        rows.append({"run_id": run.run_id, **row})
    return pd.DataFrame(rows, columns=["run_id", *EFFECTIVE_COLUMNS, "source"])
