"""The ablation configs: config/paper_ablations.yaml (the paper's grid, GPU) and
config/ablations.yaml (the embedded world, CPU) - their run lists, Snakemake's
plan of them (offline dry runs), their agreement with config/paper.yaml, and
the paper's reference rows lining up with their runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qtbench.config import REPO_ROOT, deep_merge, expand_runs, validate_config
from qtbench.methods.registry import describe_variant, required_stats
from qtbench.paper_numbers import ablation_reference
from qtbench.report.naming import budget_label
from tests.test_paper_grid import OFFLINE, job_counts

DEFAULT = REPO_ROOT / "config" / "config.yaml"
PAPER = REPO_ROOT / "config" / "paper.yaml"
PAPER_ABLATIONS = REPO_ROOT / "config" / "paper_ablations.yaml"
ABLATIONS = REPO_ROOT / "config" / "ablations.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def merged(path: Path) -> dict:
    """As Snakemake sees it: merged over the default, models replaced (workflow/rules/common.smk)."""
    cfg = deep_merge(load(DEFAULT), load(path))
    cfg["models"] = load(path).get("models", load(DEFAULT)["models"])
    return validate_config(cfg)


def dry_run(tmp_path: Path, config: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--snakefile", str(REPO_ROOT / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(config), "-p"]
    env = {**os.environ, **OFFLINE}
    env.pop("SNAKEMAKE_PROFILE", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


PAPER_RUNS = [  # per model
    "full/s1-t1", "q_tuning/s0.125-t0.5", "q_tuning/s0.25-t0.5", "q_tuning_triage/s0.125-t1",
    "q_tuning_tokens/s1-t0.5", "q_tuning_q2q4/s0.125-t0.5", "q_tuning_rho1/s0.25-t0.5",
    "q_tuning_reversed/s0.25-t0.5", "q_tuning_l0/s0.25-t0.5", "q_tuning_l03/s0.25-t0.5",
    "q_tuning_l07/s0.25-t0.5", "q_tuning_l1/s0.25-t0.5",
]


def test_paper_ablation_grid():
    for cfg in (merged(PAPER_ABLATIONS), validate_config(load(PAPER_ABLATIONS))):  # merged, and alone
        runs = expand_runs(cfg)
        assert len(runs) == 24
        for model in ("llama2-7b", "mistral-7b"):
            assert sorted(r.run_id for r in runs if r.model == model) == sorted(
                f"{model}/{run}/seed0" for run in PAPER_RUNS)
        assert {r.method for r in runs if "ref_nll" in required_stats(r.method, cfg["method_options"],
                                                                         cfg["variants"])} == {"q_tuning_rho1"}
        assert describe_variant("q_tuning_l03", cfg) == ("q_tuning", {"lambda": 0.3})


def test_paper_ablations_share_the_paper_setting():
    paper, ablations = load(PAPER), load(PAPER_ABLATIONS)
    for key in ("models", "train", "eval", "resources", "wandb"):
        assert ablations[key] == paper[key], key
    assert {k: v for k, v in ablations["data"].items() if k != "reference_source"} == \
           {k: v for k, v in paper["data"].items() if k != "reference_source"}
    assert ablations["method_options"]["q_tuning"] == paper["method_options"]["q_tuning"]


def test_reference_rows_line_up_with_the_runs():
    cfg = merged(PAPER_ABLATIONS)
    names = {"LLaMA2-7B": "llama2-7b", "Mistral-7B": "mistral-7b"}
    planned = {(r.model, r.method, budget_label(r.budget)) for r in expand_runs(cfg)}
    rows = ablation_reference()
    assert len(rows) == 9 and all(set(row) == {"setting", "model", "budget", "method", "avg"} for row in rows)
    for row in rows:
        assert (names[row["model"]], row["method"], row["budget"]) in planned, row
    table5 = {row["method"]: row["avg"] for row in rows if row["model"] == "Mistral-7B" and row["budget"] == "25%×50%"}
    assert table5 == {"q_tuning": 46.79, "q_tuning_rho1": 45.03, "q_tuning_l0": 45.92, "q_tuning_reversed": 44.86}


def test_embedded_ablation_runs():
    cfg = merged(ABLATIONS)
    runs = [r for r in expand_runs(cfg) if r.seed == 0]
    assert [r.run_id.removeprefix("tiny/").removesuffix("/seed0") for r in runs] == [
        "full/s1-t1", "q_tuning/s0.25-t0.5", "q_tuning_paper/s0.25-t0.5", "q_tuning_l0/s0.25-t0.5",
        "q_tuning_l03/s0.25-t0.5", "q_tuning_l07/s0.25-t0.5", "q_tuning_l1/s0.25-t0.5",
        "q_tuning_triage/s0.125-t1", "q_tuning_tokens/s1-t0.125", "q_tuning_reversed/s0.25-t0.5",
        "q_tuning_rho1/s0.25-t0.5",
    ]
    assert cfg["seeds"] == load(DEFAULT)["seeds"] == [0, 1, 2]  # every variant over the default's seeds
    assert len(expand_runs(cfg)) == 33


@pytest.mark.parametrize("config, trainings, references", [(PAPER_ABLATIONS, 24, 2), (ABLATIONS, 33, 1)])
def test_snakemake_plans_the_ablation_configs(tmp_path, config, trainings, references):
    done = dry_run(tmp_path, config)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    counts = job_counts(done.stdout + done.stderr)
    assert counts["train"] == counts["evaluate"] == trainings
    assert counts["reference_model"] == references  # only the Rho-1 scorer's runs need one


def test_snakemake_names_a_bad_variant_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(ABLATIONS.read_text().replace("{lambda: 0.3}", "{lamda: 0.3}"))
    done = dry_run(tmp_path, bad)
    assert done.returncode != 0
    assert "variants.q_tuning_l03.options.lamda" in done.stdout + done.stderr


def test_a_static_pruners_variant_scores_with_its_own_options(tmp_path):
    cfg = tmp_path / "static.yaml"
    cfg.write_text("experiment: st\nvariants:\n  ifd_t09: {method: ifd, options: {threshold: 0.9}}\n"
                   "methods: [ifd, ifd_t09+ppl]\n")
    done = dry_run(tmp_path, cfg)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout + done.stderr
    assert job_counts(text)["static_scores"] == 2
    assert "results/st/static/tiny/ifd_t09.json" in text and "results/st/static/tiny/ifd.json" in text
    # both are scored by the registered `ifd`, each with its own options
    commands = [line for line in text.splitlines() if "score-static" in line]
    assert len(commands) == 2 and all("--method ifd " in line for line in commands)
    # (max_length: null = the default config's train.max_length, 256, filled in by the rule)
    assert sum("--options '{\"max_length\": 256, \"threshold\": 0.9}'" in line for line in commands) == 1
