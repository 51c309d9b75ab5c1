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
from qtbench import preflight
from qtbench import resources as qresources
from qtbench.methods.registry import parse_method, pruner_options, required_stats, resolve_method, SAMPLE_PRUNERS
from qtbench.report.aggregate import TABLE_STEMS
from qtbench.report.plots import PLOT_FORMATS, PLOT_NAMES
from qtbench.report.render import TABLE_FORMATS
from qtbench.methods.registry import uses_ground_truth
from qtbench.methods.registry import needs_token_scores as method_needs_token_scores
from qtbench.models import reference_path
from qtbench.methods import static as qstatic

# `--configfile` merges mappings key by key, so a config that names its own models
# (config/paper.yaml) would also inherit the default's `tiny` world model: models
# given on the command line replace the default's instead.
# (qconfig.replace_models: `qtbench validate-config` merges the same way.)
qconfig.replace_models(config, workflow.config_settings.overwrite_config or {})
_resolved = qconfig.validate_config(config)
config.clear()
config.update(_resolved)

# Wrong paths, task names and GPU counts fail here, before any job has run.
preflight.check_config(config, overwrite_resources=workflow.resource_settings.overwrite_resources)

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
    """GPUs one job of ``rule`` uses (its ``gpu`` resource): qtbench.resources.job_resource."""
    return qresources.job_resource(config, "gpus", rule, model)


def job_mem_mb(rule, model=None):
    return qresources.job_resource(config, "mem_mb", rule, model)


def job_runtime(rule, model=None):
    return qresources.job_resource(config, "runtime", rule, model)


# Settings that change no output (W&B, threads, log and checkpoint intervals)
# reach the jobs as plain command-line words, never as `params` (the rerun
# trigger): qtbench.config.split_run_config.  The shell commands format these
# globals at run time; the "code" trigger sees only the `{NAME}` placeholders.
TRAIN_SETTINGS = as_arg({"train": {k: config["train"][k] for k in ("log_every", "checkpoint_every")},
                         "wandb": config["wandb"]})
REFERENCE_SETTINGS = as_arg({"train": {k: config["train"][k] for k in ("log_every", "checkpoint_every")},
                             "wandb": {**config["wandb"], "mode": "disabled"}})
WANDB = as_arg(config["wandb"])


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


# --------------------------------------------------------------------------- helpers of data.smk


#: A static method with a step of its own (a rule in workflow/rules/methods/<m>.smk)
#: registers here, by its registered name, a function of the static_scores job's
#: wildcards -> {"inputs": {name: path}, "values": {name: JSON value}}: the paths
#: become inputs of that job (so the step runs first), and both reach the
#: method's static_scores(..., inputs=...) through `qtbench score-static --inputs`.
STATIC_STEPS = {}


def static_step(wildcards):
    method = pruner_options(wildcards.sample_method, config["method_options"], config["variants"])[0]
    step = STATIC_STEPS.get(method)
    return step(wildcards) if step else {"inputs": {}, "values": {}}


def static_scores_inputs(wildcards):
    return {"base": base_model_input(wildcards.model), "data": sft_data_input(),
            **static_step(wildcards)["inputs"]}


def static_scores_step_arg(wildcards):
    step = static_step(wildcards)
    return as_arg({**step.get("values", {}), **step["inputs"]})


def reference_run_config(model):
    """The reference model is `full` SFT of the base model on the clean reference split."""
    run = qconfig.RunSpec(model, "full", "1", "1", 0).as_dict()
    run["run_id"] = f"{model}/reference"
    train = dict(config["train"], epochs=config["reference"]["epochs"], max_steps=None)
    if config["reference"]["lr"]:
        train["lr"] = config["reference"]["lr"]
    affecting, _ = qconfig.split_run_config({"experiment": EXP, "run": run, "model": model_entry(model),
                                             "data": dict(config["data"], max_records=None), "train": train,
                                             "method_options": {}})
    return affecting  # W&B (off for the reference), threads, intervals: REFERENCE_SETTINGS


def reference_input(model):
    """The reference model folder a job waits for: built by the reference_model
    rule when models.<m>.reference is null, else nothing (a configured path or id)."""
    return [] if reference_path(model_entry(model)) else [f"{R}/models/{model}/reference"]


def reference_arg(model):
    """The reference model a job loads: the configured one, else the reference_model rule's."""
    return reference_path(model_entry(model)) or f"{R}/models/{model}/reference"


def world_judge_path(model):
    """The model a judge path ``world`` names: the world's base model of
    ``model`` when it is a world model, else of the first world model (None: none)."""
    if config["models"][model]["path"] == "world":
        return base_model_path(model)
    worlds = [name for name, entry in config["models"].items() if entry["path"] == "world"]
    return base_model_path(worlds[0]) if worlds else None


def static_options(model, sample_method):
    """(registered pruner, options) of a static_scores job: a null ``max_length``
    is train.max_length (qtbench.methods.static.scoring_options), a judge-scored
    pruner's judge paths ``world`` are the world's base model folder
    (qtbench.methods.static.resolve_judge_paths)."""
    name, options = pruner_options(sample_method, config["method_options"], config["variants"])
    options = qstatic.scoring_options(name, options, config["train"]["max_length"])
    return name, qstatic.resolve_judge_paths(SAMPLE_PRUNERS[name], options, world_judge_path(model))


def judge_inputs(model, sample_method):
    """The judge models of a static_scores job that the DAG builds (the world's
    base model): inputs, so that the job waits for them and reruns when they change."""
    name, options = static_options(model, sample_method)
    built = {base_model_path(m) for m, entry in config["models"].items() if entry["path"] == "world"}
    return [path for path in qstatic.judge_paths(SAMPLE_PRUNERS[name], options) if path in built]


# --------------------------------------------------------------------------- helpers of train.smk


def train_inputs(wildcards):
    run = run_of(wildcards)
    resolved = resolve_method(run.method, config["variants"])
    spec = resolved.spec
    inputs = {"base": base_model_input(run.model), "data": sft_data_input()}
    if spec.sample != "none" and SAMPLE_PRUNERS[spec.sample].static:
        # named as written: a variant of a static pruner scores with its own options
        inputs["static"] = f"{R}/static/{run.model}/{resolved.parts['sample']}.json"
    if needs_reference(run) and reference_input(run.model):
        inputs["reference"] = reference_input(run.model)[0]
    if needs_token_scores(run):
        # TokenCleaning's global threshold: every response token scored once per model
        inputs["token_scores"] = token_scores_path(run.model)
    if uses_ground_truth(run.method, config["variants"]):
        # a control (oracle, anti_oracle): the world's labels; the config refuses it on other data
        inputs["meta"] = f"{R}/world/sft_meta.jsonl"
    return inputs


def needs_token_scores(run):
    """TokenCleaning with ``threshold: global`` (its default): read from the class and the run's options."""
    return method_needs_token_scores(run.method, config["method_options"], config["variants"])


def token_scores_path(model):
    return f"{R}/static/{model}/token_scores.npy"


def needs_reference(run):
    """Read from the classes and the run's options (e.g. q_tuning's token_scorer: rho1)."""
    return "ref_nll" in required_stats(run.method, config["method_options"], config["variants"])


def train_extra_args(wildcards, input):
    args = []
    if "static" in input.keys():
        args += ["--static-scores", input.static]
    run = run_of(wildcards)
    if needs_reference(run):
        args += ["--reference-model", reference_arg(run.model)]
    if "meta" in input.keys():
        args += ["--meta", input.meta]
    if "token_scores" in input.keys():
        args += ["--token-scores", input.token_scores]
    return " ".join(shlex.quote(a) for a in args)


def train_params(wildcards):
    """The run config less what cannot change a weight (qtbench.config.split_run_config)."""
    return as_arg(qconfig.split_run_config(qconfig.train_config(config, run_of(wildcards)))[0])


# --------------------------------------------------------------------------- helpers of evaluate.smk


def eval_inputs(checkpoint, model):
    """The model, and the task definitions: the world's (built by a rule) or the
    YAML files of eval.include_path (an edited task re-evaluates, by mtime)."""
    inputs = {"model": checkpoint}
    folder = config["eval"]["include_path"]
    if folder:
        inputs["tasks"] = sorted(str(p) for p in Path(folder).rglob("*.yaml"))
    elif USES_WORLD:
        inputs["tasks"] = f"{R}/world/tasks"
    return inputs


def tasks_arg():
    return f"--tasks-dir {shlex.quote(tasks_dir())}" if tasks_dir() else ""


def eval_record(stem):
    """An evaluation's record and, beside it, its per-item file (qtbench.evaluate.items_path)."""
    return {"record": f"{stem}.json", "per_item": f"{stem}.items.jsonl"}


def base_meta(model):
    return {"run_id": f"{model}/base", "model": model, "method": "base", "budget": None, "seed": None}


# --------------------------------------------------------------------------- helpers of report.smk


#: The epoch whose samples the EU-plane plot shows (0 = the first pass; -1 = the last epoch).


EU_EPOCH = -1


#: Tables shown in the report (their .html), in this order; the others are files only.


REPORT_TABLES = ("main", "budget", "noise_recall", "noise_quadrants", "comparison", "paper_reference")


def run_dirs():
    """The checkpoint folder of every run: train_summary.json, trace.jsonl."""
    return [f"{R}/runs/{run.model}/{run.method}/{run.budget}/seed{run.seed}/checkpoint" for run in RUNS]


def world_meta_input():
    """The world's ground truth (noise and duplicate labels), when the SFT data is the world's."""
    return [f"{R}/world/sft_meta.jsonl"] if config["data"]["source"] == "world" else []


def report_table_paths():
    paths = []
    for stem in TABLE_STEMS:
        for ext in TABLE_FORMATS:
            path = f"{R}/tables/{stem}.{ext}"
            if ext == "html" and stem in REPORT_TABLES:
                path = report(path, caption=f"../report/table_{stem}.rst", category="Tables",
                              labels={"table": stem.replace("_", " ")})
            paths.append(path)
    return paths


def report_plot_paths():
    paths = []
    for name in PLOT_NAMES:
        for ext in PLOT_FORMATS:
            path = f"{R}/plots/{name}.{ext}"
            if ext == "png":
                path = report(path, caption=f"../report/plot_{name}.rst", category="Plots",
                              labels={"plot": name.replace("_", " ")})
            paths.append(path)
    return paths


def aggregate_outputs():
    """Every file the aggregate rule writes (rule all can request exactly these)."""
    return [f"{R}/tables/{stem}.{ext}" for stem in TABLE_STEMS for ext in TABLE_FORMATS] + [
        f"{R}/plots/{name}.{ext}" for name in PLOT_NAMES for ext in PLOT_FORMATS
    ]
