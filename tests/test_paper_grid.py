"""The paper's grid (config/paper.yaml, config/paper_reasoning.yaml) and the
profiles, offline: Snakemake plans exactly models x methods x budgets x seeds
trainings (counted from the config by qtbench.config.expand_runs), one
evaluation each, one base evaluation per model and the aggregation, without
touching the network; every lm-eval task of the configs is in lm-eval's
registry; the SLURM profile names valid options and gives each rule its
resources.

The dry runs are started together when the module loads (each takes seconds:
the DAG has hundreds of jobs) and the lm-eval registry is indexed meanwhile.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from qtbench.config import REPO_ROOT, deep_merge, expand_runs, validate_config
from qtbench.methods.registry import SAMPLE_PRUNERS, parse_method

PAPER = REPO_ROOT / "config" / "paper.yaml"
REASONING = REPO_ROOT / "config" / "paper_reasoning.yaml"
DEFAULT = REPO_ROOT / "config" / "config.yaml"
SLURM = REPO_ROOT / "profiles" / "slurm"
WORKFLOW_PROFILE = REPO_ROOT / "profiles" / "default"

#: Environment of the dry runs: no hub, and any HTTP(S) attempt fails at once.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "WANDB_MODE": "disabled", "QTBENCH_NO_PROGRESS": "1"}
SLURM_ENV = {"QTBENCH_SLURM_PARTITION": "cpuq", "QTBENCH_SLURM_GPU_PARTITION": "gpuq"}

#: The paper's shots per benchmark (paper.md, "Set-up": ARC 0-shot, GSM8K 4-shot, SQuAD 2.0 and TriviaQA 0-shot).
PAPER_SHOTS = {"arc_easy": 0, "arc_challenge": 0, "gsm8k": 4, "squadv2": 0, "triviaqa": 0}


def standalone(path: Path) -> dict:
    return validate_config(yaml.safe_load(path.read_text()))


class DryRun:
    """``snakemake -n`` in a fresh folder, started now, awaited on first use."""

    def __init__(self, name: str, workdir: Path, *args: str, env: dict | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"{name}.out"
        cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO_ROOT / "Snakefile"),
               "--directory", str(workdir), *args]
        full_env = {**os.environ, **OFFLINE, **(env or {})}
        full_env.pop("SNAKEMAKE_PROFILE", None)
        with self.log.open("w") as handle:
            self.process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=full_env)
        self._text = None

    @property
    def text(self) -> str:
        if self._text is None:
            self.process.wait(timeout=300)
            self._text = self.log.read_text()
        return self._text

    @property
    def returncode(self) -> int:
        self.text  # noqa: B018 - wait
        return self.process.returncode


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_grid")
    runs = {
        # the command of the README, exactly
        "paper": DryRun("paper", root / "paper", "--cores", "4", "--configfile", str(PAPER)),
        # the same grid with this config alone (no merge over config/config.yaml)
        "paper_alone": DryRun("paper_alone", root / "alone", "--cores", "4", "--configfile", str(PAPER),
                              "--replace-workflow-config"),
        # the cluster command, on the reasoning grid
        "reasoning_slurm": DryRun("reasoning_slurm", root / "slurm", "--profile", str(SLURM), "--configfile",
                                  str(REASONING), "--replace-workflow-config", env=SLURM_ENV),
    }
    yield runs
    for run in runs.values():
        if run.process.poll() is None:
            run.process.kill()


@pytest.fixture(scope="module", autouse=True)
def _start_dry_runs_first(dry_runs):
    """Start the dry runs before the first test, so they overlap with indexing lm-eval's registry."""


def job_counts(text: str) -> Counter:
    """The dry run's "Job stats" table as {rule: count}."""
    counts, inside = Counter(), False
    for line in text.splitlines():
        if line.startswith("Job stats:"):
            inside, counts = True, Counter()
            continue
        if inside:
            parts = line.split()
            if parts and parts[0] == "total":
                break
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
    if not counts:
        raise AssertionError(f"no job stats in the dry run's output:\n{text[-3000:]}")
    return counts


def job_resources(text: str) -> dict[str, list[dict[str, str]]]:
    """Per rule, the ``resources:`` of each planned job (as strings)."""
    out: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in text.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line)
        if match:
            rule = match.group(1)
            continue
        stripped = line.strip()
        if rule and stripped.startswith("resources:"):
            pairs = [p.split("=", 1) for p in stripped[len("resources:"):].split(", ")]
            out.setdefault(rule, []).append({k.strip(): v.strip() for k, v in pairs if k.strip()})
            rule = None
    return out


def expected_jobs(cfg: dict) -> Counter:
    """What a dry run of ``cfg`` must plan, computed from the config."""
    runs = expand_runs(cfg)
    static = {(run.model, parse_method(run.method).sample) for run in runs
              if parse_method(run.method).sample in SAMPLE_PRUNERS and SAMPLE_PRUNERS[parse_method(run.method).sample].static}
    expected = Counter({"train": len(runs), "evaluate": len(runs), "aggregate": 1, "all": 1})
    if cfg["eval"]["evaluate_base"]:
        expected["evaluate_base"] = len(cfg["models"])
    if static:
        expected["static_scores"] = len(static)
    less = {model for model, sample in static if sample == "less"}  # one LoRA warm-up per model (same options)
    if less:
        expected["less_warmup"] = len(less)
    return expected


# --------------------------------------------------------------------------- the configs


@lru_cache(maxsize=1)
def lm_eval_tasks() -> frozenset[str]:
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager().all_tasks)  # indexes the built-in YAMLs; no network


@pytest.mark.parametrize("path", [PAPER, REASONING], ids=["alignment", "reasoning"])
def test_every_eval_task_is_in_lm_evals_registry(path):
    cfg = standalone(path)
    names = [t["name"] for t in cfg["eval"]["tasks"]]
    missing = [name for name in names if name not in lm_eval_tasks()]
    assert not missing, f"{path.name}: not lm-eval 0.4 tasks: {missing}"
    assert len(set(names)) == len(names)


def test_alignment_grid_is_the_papers():
    cfg = standalone(PAPER)
    shots = {t["name"]: t["num_fewshot"] for t in cfg["eval"]["tasks"]}
    assert shots == PAPER_SHOTS
    assert cfg["eval"]["batch_size"] == "auto" and cfg["eval"]["device"] == "cuda"
    pairs = {(float(b["r_s"]), float(b["r_t"])) for b in cfg["budgets"]}
    assert pairs == {(r_s, r_t) for r_s in (0.125, 0.25, 0.5) for r_t in (0.5, 0.7)}
    train = cfg["train"]
    assert (train["epochs"], train["lr"], train["micro_batch_size"], train["grad_accum"], train["max_length"]) == (
        3, 1e-4, 8, 4, 2048)
    assert cfg["method_options"]["q_tuning"]["lambda"] == 0.5
    methods = set(cfg["methods"])
    crossed = {f"{s}+{t}" for s in ("random", "longest", "infobatch", "entropy")
               for t in ("random", "ppl", "fastv", "sparsevlm")}
    assert crossed | {"full", "q_tuning"} <= methods
    # Table 13: the static pruners with Random tokens, r_s 12.5% / 25% x r_t 50% / 100%
    table13 = {f"{s}+random" for s in ("alpagasus", "deita", "ds2", "less")}
    assert table13 <= methods
    for name in table13:
        assert {(b["r_s"], b["r_t"]) for b in cfg["method_budgets"][name]} == {
            (r_s, r_t) for r_s in (0.125, 0.25) for r_t in (0.5, 1)}, name
    assert {m["path"] for m in cfg["models"].values()} == {"meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-v0.1"}
    for name, model in cfg["models"].items():
        assert model["path"] != "world", name
    assert cfg["data"]["source"] != "world"


def test_reasoning_grid_is_the_papers():
    cfg = standalone(REASONING)
    assert {t["name"]: t["num_fewshot"] for t in cfg["eval"]["tasks"]} == {"gsm8k": 4, "minerva_math": 4}
    assert {(float(b["r_s"]), float(b["r_t"])) for b in cfg["budgets"]} == {(0.25, 0.5), (0.25, 0.7), (0.5, 0.7)}
    assert len(cfg["models"]) == 3 and "HuggingFaceTB/SmolLM2-1.7B" in {m["path"] for m in cfg["models"].values()}
    crossed = {f"{s}+{t}" for s in ("random", "longest", "infobatch", "entropy")
               for t in ("random", "ppl", "fastv", "sparsevlm")}
    assert crossed <= set(cfg["methods"])


@pytest.mark.parametrize("path", [PAPER, REASONING], ids=["alignment", "reasoning"])
def test_paper_configs_override_every_default_key_they_need(path):
    """Merged over config/config.yaml (what a plain `--configfile` does), the
    result equals the config alone except for the `models` mapping (the
    default's `tiny` merges in unless the workflow drops it), the inert
    world/pretrain/reference sections and `method_budgets` entries of methods
    the config does not run (the default's controls)."""
    alone = standalone(path)
    merged = validate_config(deep_merge(yaml.safe_load(DEFAULT.read_text()), yaml.safe_load(path.read_text())))
    for key in alone:
        if key in ("models", "world", "pretrain", "reference", "method_options", "method_budgets"):
            continue
        assert merged[key] == alone[key], key
    run = set(alone["methods"])
    assert ({k: v for k, v in merged["method_budgets"].items() if k in run}
            == {k: v for k, v in alone["method_budgets"].items() if k in run})
    assert {k: v for k, v in merged["models"].items() if k in alone["models"]} == alone["models"]
    assert {k: v for k, v in merged["method_options"].items() if k in alone["method_options"]} == alone["method_options"]


# --------------------------------------------------------------------------- the dry runs


def test_dry_run_plans_exactly_the_grid(dry_runs):
    run = dry_runs["paper_alone"]
    assert run.returncode == 0, run.text[-4000:]
    assert job_counts(run.text) == expected_jobs(standalone(PAPER))


def test_readme_command_plans_exactly_the_grid(dry_runs):
    """`snakemake -n --configfile config/paper.yaml`, merged over the default config."""
    run = dry_runs["paper"]
    assert run.returncode == 0, run.text[-4000:]
    counts = job_counts(run.text)
    if counts.get("world") or "/tiny/" in run.text:
        pytest.xfail("the default config's `tiny` model merges into the paper's models: "
                     "workflow/rules/common.smk must let a --configfile's `models` replace the default's")
    assert counts == expected_jobs(standalone(PAPER))


def test_dry_runs_touch_no_network(dry_runs):
    for name, run in dry_runs.items():
        assert run.returncode == 0, (name, run.text[-3000:])
        for marker in ("huggingface.co", "Max retries exceeded", "ProxyError", "ConnectionError", "OfflineModeIsEnabled"):
            assert marker not in run.text, (name, marker)


def test_slurm_profile_dry_run_gives_each_rule_its_resources(dry_runs):
    run = dry_runs["reasoning_slurm"]
    assert run.returncode == 0, run.text[-4000:]
    assert job_counts(run.text) == expected_jobs(standalone(REASONING))
    resources = job_resources(run.text)
    for rule in ("train", "evaluate", "evaluate_base", "static_scores"):
        assert resources.get(rule), rule
        for job in resources[rule]:
            assert job["gpu"] == "1" and job["slurm_partition"] == "gpuq", (rule, job)
            assert int(job["runtime"]) >= 240 and int(job["mem_mb"]) >= 32000, (rule, job)
            assert int(job["cpus_per_task"]) >= 4
    for job in resources["aggregate"]:
        assert job["gpu"] == "0" and job["slurm_partition"] == "cpuq", job
    # an unset account is left to the plugin (an empty value: it guesses with sacctmgr)
    assert all(job["slurm_account"] == "" for jobs in resources.values() for job in jobs)


# --------------------------------------------------------------------------- the profiles


def profile(path: Path) -> dict:
    return yaml.safe_load((path / "config.yaml").read_text())


def snakemake_options() -> set[str]:
    from snakemake.cli import get_argument_parser

    return {option for action in get_argument_parser()._actions for option in action.option_strings}


def test_profiles_name_valid_snakemake_and_plugin_options():
    options = snakemake_options()
    for path in (SLURM, WORKFLOW_PROFILE):
        unknown = [key for key in profile(path) if f"--{key}" not in options]
        assert not unknown, f"{path}: not snakemake options: {unknown}"
    slurm = profile(SLURM)
    assert slurm["executor"] == "slurm" and slurm["retries"] >= 1 and slurm["rerun-incomplete"] is True
    assert slurm["slurm-requeue"] is True and slurm["jobs"] >= 1
    # GPUs, memory and time come from the config (resources.*), never from the
    # profile: a profile value would win over a model's own GPU count
    for rule, values in slurm["set-resources"].items():
        assert not {"gpu", "mem_mb", "runtime"} & set(values), rule
    assert slurm["set-resources"]["train"]["cpus_per_task"] >= 1


def test_workflow_profile_leaves_the_cluster_alone():
    """profiles/default is read on every run, the SLURM one included, and its
    keys override the --profile's one by one: a GPU cap or resources there
    would silently apply to the cluster."""
    keys = set(profile(WORKFLOW_PROFILE))
    assert not keys & {"resources", "default-resources", "set-resources", "jobs", "keep-going", "executor", "retries"}


def test_slurm_resource_expressions_read_the_environment(monkeypatch):
    """The account/partition expressions evaluate as Snakemake evaluates them
    (Python, after $VAR expansion): the environment's value, or '' when unset."""
    slurm = profile(SLURM)
    expressions = [slurm["default-resources"]["slurm_account"], slurm["default-resources"]["slurm_partition"],
                   slurm["set-resources"]["train"]["slurm_partition"]]
    for key in ("QTBENCH_SLURM_ACCOUNT", "QTBENCH_SLURM_PARTITION", "QTBENCH_SLURM_GPU_PARTITION"):
        monkeypatch.delenv(key, raising=False)
    assert [eval(os.path.expandvars(e), {}) for e in expressions] == ["", "", ""]
    monkeypatch.setenv("QTBENCH_SLURM_ACCOUNT", "acct")
    monkeypatch.setenv("QTBENCH_SLURM_PARTITION", "cpuq")
    assert [eval(os.path.expandvars(e), {}) for e in expressions] == ["acct", "cpuq", "cpuq"]
    monkeypatch.setenv("QTBENCH_SLURM_GPU_PARTITION", "gpuq")
    assert eval(os.path.expandvars(expressions[2]), {}) == "gpuq"
