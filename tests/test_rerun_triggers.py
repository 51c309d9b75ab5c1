"""A GPU-hour is spent only where it changes a number: on a finished smoke run,
settings that cannot change a weight or a score (W&B, threads, log and
checkpoint intervals, job resources, the command prefix) plan no job, and a
change that does (the learning rate, one method's options, the eval limit)
plans exactly the jobs it affects.  One smoke run (~2 min) serves the module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import yaml

from qtbench.config import REPO_ROOT, expand_runs, merge_over_default

SMOKE = REPO_ROOT / "config" / "smoke.yaml"

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, configs: tuple[Path, ...] = (), python: str = sys.executable,
              timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", QTBENCH_NO_PROGRESS="1")
    cmd = [python, "-m", "snakemake", "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(SMOKE), *map(str, configs), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def job_counts(text: str) -> Counter:
    """The "Job stats" table of a dry run as {rule: count}; empty when nothing is planned."""
    counts, inside = Counter(), False
    for line in text.splitlines():
        if line.startswith("Job stats:"):
            inside = True
            continue
        if inside:
            parts = line.split()
            if parts and parts[0] == "total":
                break
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("rerun")
    done = snakemake(workdir, "--cores", "2")
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir


def plan(workdir: Path, change: dict | None = None, python: str = sys.executable) -> Counter:
    configs = ()
    if change is not None:
        path = workdir / "change.yaml"
        path.write_text(yaml.safe_dump(change))
        configs = (path,)
    done = snakemake(workdir, "-n", "--cores", "2", configs=configs, python=python)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    counts = job_counts(done.stdout)
    assert counts or "Nothing to be done" in done.stdout + done.stderr
    return counts


def smoke_with(change: dict | None = None) -> dict:
    """The smoke config (with ``change``) as the Snakefile sees it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "change.yaml"
        path.write_text(yaml.safe_dump(change or {}))
        return merge_over_default(SMOKE, path)


def test_a_finished_run_plans_nothing(finished):
    assert plan(finished) == Counter()


@pytest.mark.parametrize("change", [
    {"wandb": {"mode": "disabled"}},
    {"wandb": {"mode": "online", "project": "elsewhere", "entity": "someone", "init_timeout": 60, "log_checkpoints": True}},
    {"train": {"threads": 2}},
    {"train": {"log_every": 7}},
    {"train": {"checkpoint_every": 50}},
    {"eval": {"threads": 2}},
    {"resources": {"gpus": {"evaluate": 0}, "mem_mb": {"train": 2000}, "runtime": {"evaluate": 5},
                   "by_model": {"tiny": {"runtime": {"train": 30}}}}},
], ids=["wandb-disabled", "wandb-elsewhere", "threads", "log-every", "checkpoint-every", "eval-threads", "resources"])
def test_settings_that_change_no_number_plan_no_job(finished, change):
    assert plan(finished, change) == Counter()


def test_another_command_prefix_plans_no_job(finished, tmp_path):
    """The jobs' command starts with the Python that runs Snakemake; another
    path to it (another environment, a moved checkout) retrains nothing."""
    other = tmp_path / "python-elsewhere"
    other.symlink_to(sys.executable)
    probe = subprocess.run([str(other), "-c", "import sys, snakemake; print(sys.executable)"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"a symlinked interpreter does not find its packages here: {probe.stderr[-300:]}")
    assert probe.stdout.strip() == str(other)
    assert plan(finished, python=str(other)) == Counter()


def test_a_new_learning_rate_retrains_every_run_and_the_reference(finished):
    cfg = smoke_with({"train": {"lr": 5.0e-4}})
    n = len(expand_runs(cfg))
    assert n == 8  # full, q_tuning at 3 budgets, infobatch+ppl, rho1, oracle, anti_oracle
    # the reference model of rho1 is fine-tuned at train.lr (reference.lr is null): it is redone too
    assert plan(finished, {"train": {"lr": 5.0e-4}}) == Counter(
        {"train": n, "evaluate": n, "reference_model": 1, "aggregate": 1, "all": 1})


def test_one_methods_options_retrain_that_method_only(finished):
    change = {"method_options": {"q_tuning": {"preset": "paper_text"}}}
    q_runs = [r for r in expand_runs(smoke_with(change)) if r.method == "q_tuning"]
    assert len(q_runs) == 3
    assert plan(finished, change) == Counter({"train": 3, "evaluate": 3, "aggregate": 1, "all": 1})


def test_a_new_eval_limit_reevaluates_without_retraining(finished):
    n = len(expand_runs(smoke_with()))
    assert plan(finished, {"eval": {"limit": 4}}) == Counter({"evaluate": n, "evaluate_base": 1, "aggregate": 1, "all": 1})


def test_the_finished_run_wrote_items_beside_every_record(finished):
    """Per-item records are outputs of the evaluation rules: one line per
    (task, document, filter), the task's score their mean."""
    cfg = smoke_with()
    evals = finished / "results" / cfg["experiment"] / "evals"
    records = sorted(evals.rglob("*.json"))
    assert len(records) == len(expand_runs(cfg)) + 1
    for path in records:
        record = json.loads(path.read_text())
        items = [json.loads(line) for line in path.with_name(path.stem + ".items.jsonl").read_text().splitlines()]
        values = [i["metrics"]["acc"] for i in items if i["task"] == "world_arc_easy" and i["filter"] == "none"]
        assert len(values) == cfg["eval"]["limit"]
        assert record["scores"]["world_arc_easy"]["acc,none"]["value"] == pytest.approx(sum(values) / len(values))
        assert set(record["lm_eval"]["configs"]) == {t["name"] for t in cfg["eval"]["tasks"]}
