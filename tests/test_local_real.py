"""The real-data path end to end, as a user takes it: config/local_real.yaml as
shipped (real Alpaca-format records, a local Hugging Face model folder, lm-eval's
built-in arc_easy and gsm8k redirected to local copies of their test sets by
config/lm_eval_local/), shrunk by a second --configfile to a handful of steps
and items, on a tiny model the test builds.  Skips without ../shared/data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from qtbench.config import REPO_ROOT, expand_runs, merge_over_default
from tests.conftest import SHARED_DATA, build_tiny_model

LOCAL_REAL = REPO_ROOT / "config" / "local_real.yaml"
NEEDED = ("instruct_cherry_alpaca/cherry_alpaca_5_percent.json", "arc_hf/ARC-Easy/test.json", "gsm8k/test.jsonl",
          "gsm8k/train.jsonl")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all((SHARED_DATA / p).is_file() for p in NEEDED), reason="../shared/data is absent"),
]

#: A handful of steps and items; every path stays the shipped config's.
SHRINK = {
    "data": {"max_records": 48},
    "train": {"max_steps": 2, "max_length": 128, "micro_batch_size": 8, "threads": 1},
    "eval": {"limit": 3, "max_length": 256, "batch_size": 4, "device": "cpu",
             "tasks": [{"name": "arc_easy", "num_fewshot": 0, "metric": "acc,none"},
                       {"name": "gsm8k", "num_fewshot": 1, "metric": "exact_match,strict-match", "max_gen_toks": 8}]},
}


def layout(tmp_path: Path) -> Path:
    """A working directory laid out like a checkout: ./config (the project's),
    ../shared/data (the real data) and ./models/base (the tiny model)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "config").symlink_to(REPO_ROOT / "config")
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    build_tiny_model(work / "models" / "base")
    return work


def snakemake(work: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", QTBENCH_NO_PROGRESS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(work),
           "--configfile", str(LOCAL_REAL), str(work / "shrink.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=work)


def test_local_real_config_end_to_end(tmp_path):
    work = layout(tmp_path)
    (work / "shrink.yaml").write_text(yaml.safe_dump(SHRINK))
    done = snakemake(work, "--cores", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    cwd = Path.cwd()
    os.chdir(work)  # relative paths of the config are the working directory's
    try:
        cfg = merge_over_default(LOCAL_REAL, work / "shrink.yaml")
    finally:
        os.chdir(cwd)
    runs = expand_runs(cfg)
    assert [r.run_id for r in runs] == ["local/full/s1-t1/seed0", "local/q_tuning/s0.25-t0.5/seed0"]
    results = work / "results" / "local_real"
    for run in runs:
        record = json.loads((results / "evals" / f"{run.run_id}.json").read_text())
        configs = record["lm_eval"]["configs"]
        # lm-eval's own task definitions, read from the local copies
        assert configs["arc_easy"]["dataset_path"] == "json"
        assert configs["arc_easy"]["dataset_kwargs"]["data_files"]["test"] == "../shared/data/arc_hf/ARC-Easy/test.json"
        assert configs["arc_easy"]["doc_to_text"] == "Question: {{question}}\nAnswer:"
        assert [f["name"] for f in configs["gsm8k"]["filter_list"]] == ["strict-match", "flexible-extract"]
        assert record["lm_eval"]["versions"] == {"arc_easy": 1.0, "gsm8k": 3.0}
        assert record["lm_eval"]["n-samples"]["arc_easy"] == {"original": 2376, "effective": 3}
        assert record["lm_eval"]["n-samples"]["gsm8k"] == {"original": 1319, "effective": 3}
        items = [json.loads(line) for line in (results / "evals" / f"{run.run_id}.items.jsonl").read_text().splitlines()]
        arc = [i["metrics"]["acc"] for i in items if i["task"] == "arc_easy"]
        assert len(arc) == 3 and record["scores"]["arc_easy"]["acc,none"]["value"] == pytest.approx(sum(arc) / 3)
        assert len([i for i in items if i["task"] == "gsm8k"]) == 3 * 2  # two filters per document
        summary = json.loads((results / "runs" / run.run_id / "checkpoint" / "train_summary.json").read_text())
        assert summary["optimizer_steps"] == 2
        report = json.loads((results / "runs" / run.run_id / "checkpoint" / "data_report.json").read_text())
        assert report["source"].endswith("cherry_alpaca_5_percent.json") and report["kept"] == 48 and report["bad"] == 0
    table = pd.read_csv(results / "tables" / "comparison.csv", keep_default_na=False)  # one row per run group
    assert sorted(zip(table["model"], table["method"], table["budget"])) == sorted(
        [(r.model, r.method, r.budget) for r in runs] + [("local", "base", "")])


def test_validate_config_reports_the_missing_model_folder(tmp_path):
    """Without ./models/base the shipped config fails at once, naming the key."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "config").symlink_to(REPO_ROOT / "config")
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    done = subprocess.run([sys.executable, "-m", "qtbench.cli", "validate-config", str(LOCAL_REAL)], cwd=work,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 2
    assert "models.local.path" in done.stderr and "models/base does not exist" in done.stderr
    build_tiny_model(work / "models" / "base")
    done = subprocess.run([sys.executable, "-m", "qtbench.cli", "validate-config", str(LOCAL_REAL)], cwd=work,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr
    assert "2 training run(s), 3 evaluation(s)" in done.stdout
