# Shared helpers: validated config, run list, paths. Everything about names and
# budgets comes from qtbench.config, the one place that defines them.
import copy
import json
import shlex
import sys
from pathlib import Path

REPO = Path(workflow.basedir).resolve()
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import qtbench
from qtbench import config as qconfig
from qtbench.methods.registry import parse_method, pruner_options, required_stats, resolve_method, SAMPLE_PRUNERS
from qtbench.methods.registry import uses_ground_truth

# `--configfile` merges mappings key by key, so a config that names its own models
# (config/paper.yaml) would also inherit the default's `tiny` world model: models
# given on the command line replace the default's instead.
_cli_config = workflow.config_settings.overwrite_config or {}
if "models" in _cli_config:
    config["models"] = copy.deepcopy(_cli_config["models"])
_resolved = qconfig.validate_config(config)
config.clear()
config.update(_resolved)

EXP = config["experiment"]
R = f"{config['results_dir']}/{EXP}"
RUNS = qconfig.expand_runs(config)
RUN_BY_ID = {run.run_id: run for run in RUNS}
# The qtbench of this tree, run by the Python that runs Snakemake.
QTBENCH = f"PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}} {shlex.quote(sys.executable)} -m qtbench.cli"
# A GPU rule's command: `{ON_GPUS} {resources.gpu} -- {QTBENCH_CMD} <verb> ...`.  The launcher
# pins the job to that many free GPUs of the machine (CUDA_VISIBLE_DEVICES; none for 0), so
# `--resources gpu=N` jobs never share a GPU; under SLURM the allocation's GPUs are used.
ON_GPUS = f"PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}} {shlex.quote(sys.executable)} -m qtbench.launch launch --gpus"
QTBENCH_CMD = f"{shlex.quote(sys.executable)} -m qtbench.cli"
USES_WORLD = qconfig.uses_world(config)


wildcard_constraints:
    model=qconfig.MODEL_PATTERN,
    method=qconfig.METHOD_PATTERN,
    budget=qconfig.BUDGET_PATTERN,
    seed=qconfig.SEED_PATTERN,


def as_arg(value):
    """A JSON value as one quoted shell word."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def run_of(wildcards):
    run_id = qconfig.run_id(wildcards.model, wildcards.method, wildcards.budget, wildcards.seed)
    if run_id not in RUN_BY_ID:
        raise ValueError(f"run {run_id} is not in the config's grid")
    return RUN_BY_ID[run_id]


def job_gpus(rule, model=None):
    """GPUs one job of ``rule`` uses: ``resources.gpus.<rule>``, for training
    overridden per model by ``resources.train_gpus_by_model``.  (A profile's or
    the command line's ``--set-resources <rule>:gpu=N`` overrides both.)"""
    by_model = config["resources"]["train_gpus_by_model"]
    if rule == "train" and model in by_model:
        return int(by_model[model])
    return int(config["resources"]["gpus"].get(rule, 0))


def model_entry(model):
    return {"name": model, **config["models"][model]}


def base_model_path(model):
    """The base model's folder (built by the base_model rule) or its Hugging Face id / path."""
    path = config["models"][model]["path"]
    return f"{R}/models/{model}/base" if path == "world" else path


def base_model_input(model):
    return [base_model_path(model)] if config["models"][model]["path"] == "world" else []


def sft_data_path():
    source = config["data"]["source"]
    return f"{R}/world/sft.jsonl" if source == "world" else source


def sft_data_input():
    source = config["data"]["source"]
    if source == "world":
        return [f"{R}/world/sft.jsonl"]
    return [source] if Path(source).exists() else []


def reference_data_path():
    return config["data"]["reference_source"] or f"{R}/world/reference.jsonl"


def reference_data_input():
    """The reference split as a file input: the world's, or a local file; a
    Hugging Face data set id (e.g. the SFT set itself, for a reference model
    that is an SFT'd copy of the base) is no file and is loaded by the job."""
    path = reference_data_path()
    return [path] if not config["data"]["reference_source"] or Path(path).exists() else []


def tasks_dir():
    return config["eval"]["include_path"] or (f"{R}/world/tasks" if USES_WORLD else None)


def eval_path(run):
    return f"{R}/evals/{run.model}/{run.method}/{run.budget}/seed{run.seed}.json"


def eval_paths():
    paths = [eval_path(run) for run in RUNS]
    if config["eval"]["evaluate_base"]:
        paths += [f"{R}/evals/{model}/base.json" for model in config["models"]]
    return paths


def table_paths():
    return [f"{R}/tables/{stem}.{ext}" for stem in ("comparison", "long") for ext in ("csv", "md", "tex")]
