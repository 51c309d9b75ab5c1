"""Snakemake resources of each job (GPUs, memory, time limit), from the config.

The config's ``resources`` section is the one place that sizes jobs, under
every profile: ``resources.<kind>.<rule>`` per rule, and
``resources.by_model.<model>.<kind>.<rule>`` for one model (a 70B model needs
more GPUs, memory and time than a 1B one).  ``resources.train_gpus_by_model``
is the older per-model shorthand for training GPUs.  Profiles and the command
line (``--set-resources train:gpu=4``) still override a value for a whole rule;
:func:`effective_gpus` sees those overrides, so the FSDP check below judges the
GPUs a job will really get.
"""

from __future__ import annotations

from typing import Any, Mapping

from qtbench.config import ConfigError

#: Every rule of the workflow that runs a job (``all`` runs nothing).
RULES = ("world", "base_model", "reference_model", "static_scores", "token_scores", "train", "evaluate", "evaluate_base",
         "aggregate")

#: The rules whose command is wrapped in the GPU launcher (qtbench.launch).
GPU_RULES = ("reference_model", "static_scores", "token_scores", "train", "evaluate", "evaluate_base")

#: Rules that train with ``train.fsdp`` (the reference model is a full-data fine-tune).
TRAINING_RULES = ("train", "reference_model")

KINDS = ("gpus", "mem_mb", "runtime")


def job_resource(config: Mapping[str, Any], kind: str, rule: str, model: str | None = None) -> int:
    """One job's ``kind`` (``gpus``, ``mem_mb`` or ``runtime`` in minutes):
    ``resources.by_model.<model>.<kind>.<rule>``, else (GPUs of training)
    ``resources.train_gpus_by_model.<model>``, else ``resources.<kind>.<rule>``
    (0 GPUs for a rule that runs on CPU only)."""
    if kind not in KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; expected one of {KINDS}")
    res = config["resources"]
    own = ((res.get("by_model") or {}).get(model) or {}).get(kind) or {}
    if rule in own:
        return int(own[rule])
    if kind == "gpus" and rule == "train" and model in (res.get("train_gpus_by_model") or {}):
        return int(res["train_gpus_by_model"][model])
    return int((res.get(kind) or {}).get(rule, 0))


def effective_gpus(config: Mapping[str, Any], rule: str, model: str | None,
                   overwrite: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """The GPUs a job gets: a ``--set-resources <rule>:gpu=N`` override (a
    profile's or the command line's) when it is a plain number, else the config's."""
    value = ((overwrite or {}).get(rule) or {}).get("gpu")
    try:
        return int(value) if value is not None else job_resource(config, "gpus", rule, model)
    except (TypeError, ValueError):  # an expression Snakemake evaluates per job: trust the config
        return job_resource(config, "gpus", rule, model)


def check_fsdp_gpus(config: Mapping[str, Any], needs_reference: Mapping[str, bool],
                    overwrite: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """``train.fsdp`` shards a model over the GPUs of one job; with fewer than
    two there is nothing to shard over and the trainer would quietly train
    unsharded.  Refuse such a config before any job runs, naming the model,
    the rule and the keys that set its GPUs.  ``needs_reference[model]`` says
    whether the model's grid trains a reference model (rule reference_model)."""
    if not config["train"].get("fsdp"):
        return
    for model in config["models"]:
        for rule in TRAINING_RULES:
            if rule == "reference_model" and not needs_reference.get(model):
                continue
            gpus = effective_gpus(config, rule, model, overwrite)
            if gpus < 2:
                raise ConfigError(
                    f"train.fsdp is true but a {rule} job of model {model!r} gets {gpus} GPU(s); FSDP shards a model "
                    f"over the GPUs of one job and needs at least 2. Set resources.by_model.{model}.gpus.{rule} "
                    f"(or resources.gpus.{rule}{', resources.train_gpus_by_model.' + model if rule == 'train' else ''}) "
                    "to 2 or more, or set train.fsdp: false")
