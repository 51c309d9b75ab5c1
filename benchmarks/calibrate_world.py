"""Calibrate the synthetic world on the controls, random and full - never on a selection rule's score.

    python benchmarks/calibrate_world.py --overlay my_world.yaml --seeds 3            # run, then print a-d
    python benchmarks/calibrate_world.py --overlay my_world.yaml --seeds 3 --report-only
    python benchmarks/calibrate_world.py --overlay config/smoke.yaml --seeds 1 --no-auroc   # a seconds-long check

The overlay is a YAML file with the knobs to try (``world``, ``pretrain``,
``train``, ``eval``, ``models``, ``data`` sections, merged over
config/config.yaml as ``--configfile`` merges).  The script replaces the
methods, budgets and seeds by the calibration grid and runs it through
Snakemake into its own results folder (``--results-dir``, default
``results_calibration/<experiment>``), W&B off:

* ``full`` at r_s = 1 and the zero-shot base model;
* ``random+random`` at 25% x 50% (total 12.5%);
* ``oracle`` at r_s = 1 and at 12.5%, ``anti_oracle`` at 12.5%;

over ``--seeds`` training seeds (the world fixed).  It then prints the issue's
targets, each with its 95% interval from :mod:`qtbench.report.intervals`
(bootstrap over seeds and, within each task, items; paired over the items that
every group was scored on; per-item outcomes from the ``<stem>.items.jsonl``
beside each evaluation record, :mod:`qtbench.items`):

a. the share of full data's gain over zero-shot that random+random recovers,
   ``(R - Z) / (F - Z)`` on the average (target: 50-90%; the paper: 65-71%),
   its interval the set of shares ``s`` whose contrast ``R - Z - s (F - Z)``
   has an interval containing 0 (test inversion on one set of bootstrap draws);
b. ``oracle`` at full size minus ``full`` (target: above 0, resolved);
c. at 12.5%: ``oracle - random+random`` and ``random+random - anti_oracle``
   (target: both above 0, resolved);
d. reported, not targeted: per planted label, the AUROC of per-sample PPL and
   entropy under the base model for telling it from clean records
   (``qtbench eu-plane``).

Q-Tuning and the baselines are deliberately absent: the world is tuned only on
what these controls, random and full show, and whatever a selection rule then
scores is its result.  The table is also written to
``<results-dir>/<experiment>/calibration.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from qtbench.config import deep_merge, validate_config  # noqa: E402
from qtbench.io import write_json_atomic, write_text_atomic  # noqa: E402

#: (label, selector) of each group the targets read; budgets in run-id form.
FULL, BASE = "full@s1-t1", "base"
RANDOM = "random+random@s0.25-t0.5"
ORACLE_FULL, ORACLE, ANTI = "oracle@s1-t1", "oracle@s0.125-t1", "anti_oracle@s0.125-t1"
TARGET_BAND = (0.5, 0.9)
#: grid of shares for the test inversion of target a (percent resolution 0.5)
SHARE_GRID = np.round(np.arange(-0.5, 1.5001, 0.005), 3)


def calibration_config(overlay: dict[str, Any], seeds: int, experiment: str, results_dir: str) -> dict[str, Any]:
    """config/config.yaml, the overlay merged over it, then the calibration grid."""
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config = deep_merge(default, overlay)
    config.update({
        "experiment": experiment, "results_dir": results_dir,
        "methods": ["full", "random+random", "oracle", "anti_oracle"],
        "budgets": [{"r_s": 0.25, "r_t": 0.5}],
        "method_budgets": {"oracle": [{"r_s": 1, "r_t": 1}, {"r_s": 0.25, "r_t": 0.5}]},
        "method_seeds": {}, "seeds": list(range(seeds)), "variants": {},
    })
    config["eval"] = {**config["eval"], "evaluate_base": True}
    config["wandb"] = {**config.get("wandb", {}), "mode": "disabled"}
    if (config.get("data") or {}).get("source", "world") != "world":
        raise SystemExit("calibrate_world: the controls need the synthetic world (data.source: world)")
    validate_config(config)
    return config


def run_snakemake(config_path: Path, cores: int, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(Path.cwd()),
           "--configfile", str(config_path), "--cores", str(cores), *extra]
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, QTBENCH_NO_PROGRESS="1", WANDB_MODE="disabled")
    started = time.time()
    done = subprocess.run(cmd, env=env)
    if done.returncode != 0:
        raise SystemExit(f"calibrate_world: snakemake failed (exit {done.returncode})")
    print(f"snakemake: {time.time() - started:.0f} s wall", flush=True)


def load_scores(evals_dir: Path) -> dict[str, dict]:
    """Per group, its (seeds x items) matrices per task; a clear stop without per-item files."""
    from qtbench.io import read_json
    from qtbench.report.compare import find_records, load_group, parse_selector, resolve, task_metrics
    from qtbench.items import MissingItemsError

    records = find_records(evals_dir)
    groups = {label: resolve(parse_selector(label), records, evals_dir)
              for label in (BASE, FULL, RANDOM, ORACLE_FULL, ORACLE, ANTI)}
    first = next(iter(groups[FULL].records.values()))
    metrics = task_metrics(read_json(first), first)
    try:
        return {label: load_group(group, metrics) for label, group in groups.items()}
    except MissingItemsError as exc:
        raise MissingItemsError(
            "the evaluation records have no per-item outcomes (<stem>.items.jsonl beside each <stem>.json), which "
            "the paired intervals of targets a-c need; rebuild the evaluations (nothing is retrained): "
            f"snakemake --forcerun evaluate evaluate_base\n  {exc}") from None


def share_interval(scores: dict[str, dict], n_resamples: int, seed: int, confidence: float) -> dict[str, Any]:
    """Target a: the point share and the set of shares not rejected by the contrast R - Z - s (F - Z)."""
    from qtbench.report.intervals import AVG, contrast

    options = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence}
    gain_r = contrast([scores[RANDOM], scores[BASE]], [1.0, -1.0], **options).loc[AVG]
    gain_f = contrast([scores[FULL], scores[BASE]], [1.0, -1.0], **options).loc[AVG]
    point = gain_r["estimate"] / gain_f["estimate"] if gain_f["estimate"] else math.nan
    kept = [float(s) for s in SHARE_GRID
            if _contains_zero(contrast([scores[RANDOM], scores[FULL], scores[BASE]], [1.0, -s, s - 1.0], **options).loc[AVG])]
    low, high = (min(kept), max(kept)) if kept else (math.nan, math.nan)
    at_edge = bool(kept) and (low <= SHARE_GRID[0] or high >= SHARE_GRID[-1])
    return {"target": "a", "what": "share of full's gain over zero-shot recovered by random+random 25%x50%",
            "estimate": point, "low": low, "high": high, "interval_open": at_edge,
            "gain_random": gain_r["estimate"], "gain_full": gain_f["estimate"],
            "holds": bool(kept) and bool(TARGET_BAND[0] <= low and high <= TARGET_BAND[1])}


def _contains_zero(row) -> bool:
    return row["low"] <= 0.0 <= row["high"]


def difference(scores: dict[str, dict], a: str, b: str, target: str, n_resamples: int, seed: int,
               confidence: float) -> dict[str, Any]:
    from qtbench.report.intervals import AVG, paired_difference

    row = paired_difference(scores[a], scores[b], n_resamples=n_resamples, seed=seed, confidence=confidence).loc[AVG]
    return {"target": target, "what": f"{a} - {b} (average, points)", "estimate": float(row["delta"]),
            "low": float(row["low"]), "high": float(row["high"]), "holds": bool(row["low"] > 0)}


def auroc_table(results: Path, model: str = "tiny"):
    """Target d: qtbench eu-plane's AUROC table under the base model."""
    from qtbench.eu_plane import label_auroc, run

    frame = run(str(results / "models" / model / "base"), str(results / "world" / "sft.jsonl"),
                results / "calibration_eu_plane.csv", meta=str(results / "world" / "sft_meta.jsonl"))
    return label_auroc(frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlay", help="YAML with the world/pretrain/train/eval knobs to try (default: none)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per run (default 3)")
    parser.add_argument("--experiment", default="calibrate")
    parser.add_argument("--results-dir", default="results_calibration")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="do not run snakemake; read finished records")
    parser.add_argument("--no-auroc", action="store_true", help="skip target d (one scoring pass of the SFT set)")
    parser.add_argument("--n-resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--snakemake-args", default="", help="extra snakemake arguments, one string")
    args = parser.parse_args(argv)

    overlay = yaml.safe_load(Path(args.overlay).read_text()) if args.overlay else {}
    for key in ("methods", "budgets", "method_budgets", "seeds", "method_seeds", "variants", "experiment"):
        overlay.pop(key, None)  # the calibration grid is fixed
    config = calibration_config(overlay, args.seeds, args.experiment, args.results_dir)
    results = Path(args.results_dir) / args.experiment
    config_path = results / "calibration_config.yaml"
    if not args.report_only:
        results.mkdir(parents=True, exist_ok=True)
        write_text_atomic(config_path, yaml.safe_dump(config, sort_keys=False))
        run_snakemake(config_path, args.cores, args.snakemake_args.split())
    from qtbench.items import MissingItemsError

    print(f"\nCalibration of {results} ({args.seeds} seed(s); 95% intervals, bootstrap over seeds and items):")
    try:
        scores = load_scores(results / "evals")
    except MissingItemsError as exc:
        print(f"  a-c: not computed: {exc}")
        rows, status = [], 2
    else:
        options = (args.n_resamples, args.seed, 0.95)
        rows = [share_interval(scores, *options),
                difference(scores, ORACLE_FULL, FULL, "b", *options),
                difference(scores, ORACLE, RANDOM, "c", *options),
                difference(scores, RANDOM, ANTI, "c", *options)]
        status = 0
    for row in rows:
        if row["target"] == "a":
            value = (f"{row['estimate']:.0%} [{row['low']:.0%}, {row['high']:.0%}]"
                     + (" (interval reaches the grid's edge)" if row["interval_open"] else ""))
            band = f"target {TARGET_BAND[0]:.0%}-{TARGET_BAND[1]:.0%}"
        else:
            value, band = f"{row['estimate']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}]", "target > 0"
        print(f"  {row['target']}. {row['what']}: {value}  ({band}: {'holds' if row['holds'] else 'NOT met'})")
    report: dict[str, Any] = {"config": str(config_path), "seeds": args.seeds, "targets": rows}
    if not args.no_auroc:
        table = auroc_table(results)
        print("\n  d. AUROC vs clean records under the base model (0.5 = no separation):")
        print("     " + table.round(3).to_string().replace("\n", "\n     "))
        report["auroc"] = json.loads(table.reset_index().to_json(orient="records"))
    write_json_atomic(results / "calibration.json", report, default=lambda value: value.item())  # numpy scalars
    return status


if __name__ == "__main__":
    sys.exit(main())
