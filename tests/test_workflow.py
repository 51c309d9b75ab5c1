"""The Snakefile end to end on the smoke config, in a temporary working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from qtbench.config import REPO_ROOT, deep_merge, expand_runs, validate_config

SMOKE = REPO_ROOT / "config" / "smoke.yaml"


def snakemake(workdir: Path, *args: str, config: Path = SMOKE, timeout: int = 600) -> subprocess.CompletedProcess:
    # drop W&B variables an earlier test's wandb service left in this process
    # (WANDB_SERVICE would make the jobs talk to that service, not their own)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", QTBENCH_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def smoke_config() -> dict:
    default = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    return validate_config(deep_merge(default, yaml.safe_load(SMOKE.read_text())))


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    done = snakemake(tmp_path, "--cores", "2")
    assert done.returncode == 0, done.stderr[-4000:]
    cfg = smoke_config()
    results = tmp_path / "results" / cfg["experiment"]
    runs = expand_runs(cfg)

    table = pd.read_csv(results / "tables" / "comparison.csv", keep_default_na=False)  # one row per run group
    assert sorted(zip(table["method"], table["budget"])) == sorted([(r.method, r.budget) for r in runs] + [("base", "")])
    tasks = [t["name"] for t in cfg["eval"]["tasks"]]
    for run in runs:
        record = json.loads((results / "evals" / run.model / run.method / run.budget / f"seed{run.seed}.json").read_text())
        row = table.set_index(["method", "budget"]).loc[(run.method, run.budget)]  # one seed: the run itself
        expected = {
            "world_arc_easy": record["scores"]["world_arc_easy"]["acc,none"]["value"],
            "world_gsm8k": record["scores"]["world_gsm8k"]["exact_match,strict-match"]["value"],
            "world_squad": record["scores"]["world_squad"]["f1,none"]["value"],
        }
        for task, value in expected.items():
            assert row[task] == pytest.approx(100 * value)
        assert row["avg"] == pytest.approx(row[tasks].mean())
        assert record["eval_config"]["limit"] == cfg["eval"]["limit"]
        summary = json.loads((results / "runs" / run.run_id / "checkpoint" / "train_summary.json").read_text())
        assert summary["optimizer_steps"] == cfg["train"]["max_steps"]
        assert summary["method"] == run.method

    # offline W&B: one run per training job and per evaluation (base models too), plus the summary run
    wandb_runs = list((results / "wandb" / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 * len(runs) + len(cfg["models"]) + 1
    assert all(any(run_dir.glob("*.wandb")) for run_dir in wandb_runs)

    again = snakemake(tmp_path, "-n", "--cores", "2")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_dry_run_plans_the_default_grid(tmp_path):
    done = snakemake(tmp_path, "-n", "--cores", "2", config=REPO_ROOT / "config" / "config.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = validate_config(yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text()))
    trainings = len(expand_runs(cfg))
    assert _count(done.stdout, "train") == trainings
    assert _count(done.stdout, "evaluate") == trainings
    assert _count(done.stdout, "evaluate_base") == len(cfg["models"])


def _count(text: str, rule: str) -> int:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == rule and parts[1].isdigit():
            return int(parts[1])
    raise AssertionError(f"rule {rule} not in the job stats:\n{text[-2000:]}")


def test_bad_config_fails_at_load_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: 0.1\n")
    done = snakemake(tmp_path, "-n", "--cores", "1", config=bad)
    assert done.returncode != 0
    assert "train.learning_rate" in done.stdout + done.stderr
